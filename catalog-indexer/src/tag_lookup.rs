//! Tags for a track: from the PostgreSQL cache when fresh, else from Last.fm (rate-limited),
//! and, when Last.fm cannot answer now, later: the track goes into `catalog.tag_backlog` and
//! a background round fills its tags in (catalog, index, `media.catalogued`) once it can.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, warn};
use tunewire_contract::{JobId, MediaCatalogued};
use tunewire_events::Bus;
use tunewire_service_runtime::Backoff;
use tunewire_service_runtime::telemetry::TraceHeaders;

use crate::catalog::{self, name_key};
use crate::lastfm::{Failure, Lastfm, Tag};
use crate::metrics::CatalogMetrics;
use crate::search_index::{SearchIndex, TrackDoc};

pub struct TagLookup {
    pub db: PgPool,
    pub lastfm: Option<Lastfm>,
    pub cache_ttl: Duration,
    pub metrics: CatalogMetrics,
}

/// What became of a lookup.
pub enum Tags {
    Found(Vec<Tag>, &'static str),
    /// Last.fm cannot answer now; the track should be put in the backlog.
    Later(String),
    None,
}

fn source_name(stored: &str) -> &'static str {
    match stored {
        "lastfm-track" => "lastfm-track",
        "lastfm-artist" => "lastfm-artist",
        _ => "file",
    }
}

impl TagLookup {
    pub fn key_rejected(&self) -> bool {
        self.lastfm.as_ref().is_some_and(Lastfm::key_rejected)
    }

    async fn cached(&self, lookup: &str) -> Result<Option<(Vec<Tag>, &'static str)>, sqlx::Error> {
        let row: Option<(serde_json::Value, String)> = sqlx::query_as(
            "SELECT tags, source FROM catalog.lastfm_cache
             WHERE lookup = $1 AND fetched_at > now() - make_interval(secs => $2)",
        )
        .bind(lookup)
        .bind(self.cache_ttl.as_secs_f64())
        .fetch_optional(&self.db)
        .await?;
        Ok(row.map(|(tags, source)| {
            let tags = tags
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|t| {
                            Some(Tag { name: t["name"].as_str()?.to_string(), weight: t["weight"].as_i64()? as i32 })
                        })
                        .collect()
                })
                .unwrap_or_default();
            (tags, source_name(&source))
        }))
    }

    async fn remember(&self, lookup: &str, tags: &[Tag], source: &str) -> Result<(), sqlx::Error> {
        let json: Vec<serde_json::Value> =
            tags.iter().map(|t| serde_json::json!({"name": t.name, "weight": t.weight})).collect();
        sqlx::query(
            "INSERT INTO catalog.lastfm_cache (lookup, tags, source) VALUES ($1, $2, $3)
             ON CONFLICT (lookup) DO UPDATE SET tags = EXCLUDED.tags, source = EXCLUDED.source, fetched_at = now()",
        )
        .bind(lookup)
        .bind(serde_json::Value::Array(json))
        .bind(source)
        .execute(&self.db)
        .await
        .map(drop)
    }

    pub async fn tags(&self, artist: &str, title: &str) -> Tags {
        let Some(lastfm) = &self.lastfm else { return Tags::None };
        let lookup = format!("{}\u{1f}{}", name_key(artist), name_key(title));
        match self.cached(&lookup).await {
            Ok(Some((tags, source))) => {
                self.metrics.lastfm_cache_hits.inc();
                return Tags::Found(tags, source);
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "the Last.fm cache is unreadable; asking Last.fm"),
        }
        let answer = lastfm.top_tags(artist, title).await;
        self.metrics.lastfm(match &answer {
            Ok(_) => "ok",
            Err(e) => match e.failure() {
                Failure::Transient => "transient",
                Failure::KeyRejected => "key_rejected",
                Failure::Permanent => "permanent",
            },
        });
        match answer {
            Ok((tags, source)) => {
                if let Err(e) = self.remember(&lookup, &tags, source).await {
                    warn!(error = %e, "could not cache Last.fm's answer");
                }
                Tags::Found(tags, source)
            }
            Err(e) => match e.failure() {
                Failure::Transient | Failure::KeyRejected => Tags::Later(e.to_string()),
                Failure::Permanent => {
                    warn!(error = %e, "Last.fm cannot tag this track");
                    Tags::None
                }
            },
        }
    }
}

/// Puts the track in the backlog, with the trace it is catalogued in.
pub async fn defer(db: &PgPool, job: JobId, artist: &str, title: &str, reason: &str) -> Result<(), sqlx::Error> {
    let trace = TraceHeaders::current();
    sqlx::query(
        "INSERT INTO catalog.tag_backlog (job_id, artist, title, last_error, traceparent, tracestate)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(job.as_uuid())
    .bind(artist)
    .bind(title)
    .bind(reason)
    .bind(trace.traceparent)
    .bind(trace.tracestate)
    .execute(db)
    .await
    .map(drop)
}

#[derive(Debug, thiserror::Error)]
enum BacklogError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("index: {0}")]
    Index(String),
    #[error("publishing: {0}")]
    Publish(String),
}

/// One backlog entry whose tags arrived: catalog, index, then the gateway hears of them.
async fn fill(
    db: &PgPool,
    index: &Arc<SearchIndex>,
    bus: &Bus,
    job: uuid::Uuid,
    tags: &[Tag],
    source: &str,
) -> Result<(), BacklogError> {
    catalog::add_tags(db, job, tags, source).await?;
    if let Some(track) = catalog::track_doc(db, job).await? {
        let writer = index.clone();
        let tag_names = track.tags.clone();
        tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || {
            let doc = TrackDoc {
                job_id: job.to_string(),
                owner: track.owner.to_string(),
                title: &track.title,
                artist: track.artist.as_deref(),
                album: track.album.as_deref(),
                tags: track.tags,
            };
            writer.upsert(&doc)
        })
        .await
        .map_err(|e| BacklogError::Index(e.to_string()))?
        .map_err(|e| BacklogError::Index(e.to_string()))?;
        // A removal that committed after the track was read: take the document out again.
        if catalog::is_removed(db, job).await? {
            let index = index.clone();
            tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || index.remove(&job.to_string()))
                .await
                .map_err(|e| BacklogError::Index(e.to_string()))?
                .map_err(|e| BacklogError::Index(e.to_string()))?;
            return Ok(());
        }
        let publisher = bus.publisher().await.map_err(|e| BacklogError::Publish(e.to_string()))?;
        publisher
            .publish(&MediaCatalogued { job_id: JobId::from(job), tags: tag_names })
            .await
            .map_err(|e| BacklogError::Publish(e.to_string()))?;
    }
    sqlx::query("DELETE FROM catalog.tag_backlog WHERE job_id = $1").bind(job).execute(db).await?;
    Ok(())
}

/// A backlog entry whose next attempt is due.
#[derive(sqlx::FromRow)]
struct Due {
    job_id: uuid::Uuid,
    artist: String,
    title: String,
    attempts: i32,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Due {
    /// The late lookup's span, in the trace of the upload.
    fn span(&self) -> tracing::Span {
        let span = tracing::info_span!("late_tags", job_id = %self.job_id, trace_id = tracing::field::Empty);
        TraceHeaders::from_parts(self.traceparent.clone(), self.tracestate.clone()).continue_in(&span);
        span
    }
}

/// Puts an entry's next attempt off, longer each time.
async fn postpone(
    db: &PgPool,
    job: uuid::Uuid,
    attempts: i32,
    every: Duration,
    reason: &str,
) -> Result<(), sqlx::Error> {
    let backoff = Backoff::new(every, MAX_BACKOFF).delay(attempts.max(0) as u32).as_secs_f64();
    sqlx::query(
        "UPDATE catalog.tag_backlog SET attempts = attempts + 1, last_error = $2,
                next_attempt_at = now() + make_interval(secs => $3)
         WHERE job_id = $1",
    )
    .bind(job)
    .bind(reason)
    .bind(backoff)
    .execute(db)
    .await
    .map(drop)
}

/// Entries looked at per round.
const ROUND: i64 = 20;
/// The longest wait between two attempts for one track.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

async fn round(
    lookup: &TagLookup,
    index: &Arc<SearchIndex>,
    bus: &Bus,
    every: Duration,
) -> Result<usize, BacklogError> {
    let due: Vec<Due> = sqlx::query_as(
        "SELECT job_id, artist, title, attempts, traceparent, tracestate FROM catalog.tag_backlog
         WHERE next_attempt_at <= now() ORDER BY next_attempt_at LIMIT $1",
    )
    .bind(ROUND)
    .fetch_all(&lookup.db)
    .await?;
    let (waiting,): (i64,) = sqlx::query_as("SELECT count(*) FROM catalog.tag_backlog").fetch_one(&lookup.db).await?;
    lookup.metrics.lastfm_backlog.set(waiting);
    let mut filled = 0;
    for entry in due {
        if lookup.key_rejected() {
            break;
        }
        let span = entry.span();
        let Due { job_id: job, artist, title, attempts, .. } = entry;
        let attempt = async {
            match lookup.tags(&artist, &title).await {
                Tags::Found(tags, source) => {
                    fill(&lookup.db, index, bus, job, &tags, source).await?;
                    info!(job_id = %job, tags = tags.len(), attempts = attempts + 1, "late Last.fm tags filled in");
                    Ok::<_, BacklogError>(Some(1))
                }
                Tags::None => {
                    sqlx::query("DELETE FROM catalog.tag_backlog WHERE job_id = $1")
                        .bind(job)
                        .execute(&lookup.db)
                        .await?;
                    Ok(Some(0))
                }
                Tags::Later(reason) => {
                    postpone(&lookup.db, job, attempts, every, &reason).await?;
                    // Last.fm is down or refusing: the rest of the round would fail the same way.
                    Ok(None)
                }
            }
        };
        // A job's failure is logged in its span (with its job and trace); the rest of the
        // round waits for the next, as the failure (a dependency down) would repeat.
        let attempt = async { attempt.await.inspect_err(|e| warn!(error = %e, "filling in late Last.fm tags failed")) };
        match attempt.instrument(span).await {
            Ok(Some(n)) => filled += n,
            Ok(None) => break,
            Err(e) => {
                // Its turn comes again later, not first in the next round ahead of the others.
                let _ = postpone(&lookup.db, job, attempts, every, &e.to_string()).await;
                break;
            }
        }
    }
    Ok(filled)
}

pub async fn run_backlog(
    lookup: Arc<TagLookup>,
    index: Arc<SearchIndex>,
    bus: Arc<Bus>,
    every: Duration,
    shutdown: CancellationToken,
) {
    if lookup.lastfm.is_none() {
        return;
    }
    loop {
        if let Err(e) = round(&lookup, &index, &bus, every).await {
            warn!(error = %e, "the Last.fm backlog round failed; trying again next round");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
