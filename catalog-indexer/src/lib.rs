//! The catalog indexer: consumes `media.converted`, writes the catalog (schema `catalog`,
//! the source of truth) with Last.fm tags, keeps the tantivy search index (derived; one
//! writer, this process) and serves `GET /search`. It never reads media.

pub mod catalog;
pub mod config;
pub mod indexer;
pub mod lastfm;
pub mod metrics;
pub mod search_index;
pub mod tag_lookup;

use std::net::SocketAddr;
use std::sync::Arc;
use tunewire_service_runtime::config::ExposeSecret;

use prometheus_client::registry::Registry;
use serde::Deserialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunewire_contract::SearchPage;
use tunewire_events::Bus;
use tunewire_events::topology::CATALOG_INDEXER_QUEUE;
use tunewire_service_runtime::admission::Admission;
use tunewire_service_runtime::{ApiError, Dependencies, HealthRoutes, check_with, http_error, postgres};
use warp::{Filter, Reply};

pub use config::Config;
use search_index::SearchIndex;

/// Last.fm is optional: without it tracks are catalogued untagged, which an operator should
/// know, but search still works.
fn lastfm_notes(tags: &tag_lookup::TagLookup) -> Vec<(&'static str, String)> {
    if tags.lastfm.is_none() {
        vec![("lastfm", "LASTFM_API_KEY is not set: tracks get no Last.fm tags".into())]
    } else if tags.key_rejected() {
        vec![("lastfm", "Last.fm rejected LASTFM_API_KEY (invalid or suspended): no tags until it is fixed".into())]
    } else {
        vec![]
    }
}

/// This service's tables: schema `catalog`.
pub const SCHEMA: postgres::Schema =
    postgres::Schema { name: "catalog", migrations: || sqlx::migrate!("./migrations") };

pub async fn migrate(db: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    SCHEMA.migrate(db).await
}

#[derive(Deserialize)]
struct SearchParams {
    q: Option<String>,
    /// Restricts hits to one owner's tracks (the gateway always sets it for non-admins).
    owner: Option<String>,
    tag: Option<String>,
    artist: Option<String>,
    limit: Option<String>,
    /// Where the previous page ended (its `next_cursor`).
    cursor: Option<String>,
}

/// The longest `q`, `tag` or `artist` a search takes, in characters.
pub const MAX_QUERY_CHARS: usize = 256;
/// The longest word in `q`: each becomes a fuzzy automaton, whose cost grows with it.
pub const MAX_TERM_CHARS: usize = 32;

fn too_long(params: &SearchParams) -> Option<ApiError> {
    for (name, value) in [("q", &params.q), ("tag", &params.tag), ("artist", &params.artist)] {
        if value.as_deref().is_some_and(|v| v.chars().count() > MAX_QUERY_CHARS) {
            return Some(ApiError::bad_request(
                "query_too_long",
                format!("`{name}` is longer than {MAX_QUERY_CHARS} characters"),
            ));
        }
    }
    let longest = params.q.as_deref().unwrap_or_default().split_whitespace().map(|w| w.chars().count()).max();
    longest.filter(|&n| n > MAX_TERM_CHARS).map(|_| {
        ApiError::bad_request("term_too_long", format!("a word in `q` is longer than {MAX_TERM_CHARS} characters"))
    })
}

async fn search(
    params: SearchParams,
    index: Arc<SearchIndex>,
    searches: Arc<Admission>,
    duration: prometheus_client::metrics::histogram::Histogram,
) -> Result<warp::reply::Response, std::convert::Infallible> {
    if let Some(error) = too_long(&params) {
        return Ok(error.into_response());
    }
    let ticket = match searches.admit() {
        Ok(ticket) => ticket,
        Err(busy) => {
            return Ok(busy
                .into_api_error("search_busy", "too many searches at once; try again in a second")
                .into_response());
        }
    };
    let q = params.q.unwrap_or_default();
    let filtered = params.tag.is_some() || params.artist.is_some();
    if q.trim().is_empty() && !filtered {
        return Ok(
            ApiError::bad_request("missing_query", "give a search text in `q`, or a `tag` or `artist`").into_response()
        );
    }
    let limit = match params.limit.as_deref().map(str::parse::<usize>) {
        None => 20,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => {
            return Ok(ApiError::bad_request("invalid_limit", "limit must be a number from 1 to 100").into_response());
        }
    };
    let offset = match params.cursor.as_deref().map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) if n <= 10_000 => n,
        Some(_) => {
            return Ok(
                ApiError::bad_request("invalid_cursor", "the cursor is not one this API handed out").into_response()
            );
        }
    };
    let started = std::time::Instant::now();
    let outcome = ticket
        .run_blocking(move || {
            let request = search_index::SearchRequest {
                text: &q,
                owner: params.owner.as_deref(),
                tag: params.tag.as_deref(),
                artist: params.artist.as_deref(),
                limit,
                offset,
            };
            index.search(&request)
        })
        .await;
    duration.observe(started.elapsed().as_secs_f64());
    Ok(match outcome {
        Ok(Ok((hits, total))) => {
            let next = (offset + hits.len() < total).then(|| (offset + hits.len()).to_string());
            warp::reply::json(&SearchPage { total, hits, next_cursor: next }).into_response()
        }
        Ok(Err(e)) => ApiError::internal("search_failed", e).into_response(),
        Err(e) => ApiError::internal("search_failed", e).into_response(),
    })
}

/// The search index from the catalog: every track, committed once.
pub async fn rebuild(db: &PgPool, index: &Arc<SearchIndex>) -> anyhow::Result<usize> {
    let tracks = catalog::all_track_docs(db).await?;
    let count = tracks.len();
    let index = index.clone();
    tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || {
        let docs: Vec<search_index::TrackDoc<'_>> = tracks
            .iter()
            .map(|(job, t)| search_index::TrackDoc {
                job_id: job.to_string(),
                owner: t.owner.to_string(),
                title: &t.title,
                artist: t.artist.as_deref(),
                album: t.album.as_deref(),
                tags: t.tags.clone(),
            })
            .collect();
        index.rebuild(&docs)
    })
    .await??;
    Ok(count)
}

/// Opens the index; one that cannot be opened (corrupt, or from another schema) is
/// replaced by an empty one. Either way, an empty index over a non-empty catalog is rebuilt.
async fn open_index(db: &PgPool, dir: &std::path::Path) -> anyhow::Result<Arc<SearchIndex>> {
    let index = match SearchIndex::open(dir) {
        Ok(index) => index,
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "the search index is unusable; rebuilding it from the catalog");
            std::fs::remove_dir_all(dir)?;
            SearchIndex::open(dir)?
        }
    };
    let index = Arc::new(index);
    if index.is_empty() {
        let count = rebuild(db, &index).await?;
        if count > 0 {
            tracing::info!(tracks = count, "search index rebuilt from the catalog");
        }
    }
    Ok(index)
}

/// `tunewire-catalog-indexer reindex`: rebuilds the index from PostgreSQL. The service
/// must be stopped (the index has one writer).
pub async fn reindex(config: &Config) -> anyhow::Result<usize> {
    let db = PgPoolOptions::new().max_connections(2).connect(config.database_url.expose_secret()).await?;
    migrate(&db).await?;
    let index = Arc::new(SearchIndex::open(&config.index_dir).map_err(|e| {
        anyhow::anyhow!("cannot open the index at {} (is the service still running?): {e}", config.index_dir.display())
    })?);
    rebuild(&db, &index).await
}

/// Seconds in-flight work gets after SIGTERM (one Last.fm lookup and one index commit); the Kubernetes
/// manifests set `terminationGracePeriodSeconds` a little above it.
pub const SHUTDOWN_DEADLINE_S: u64 = 20;

pub struct Running {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let db = SCHEMA.connect(config.database_url.expose_secret(), 10).await?;
    let index = open_index(&db, &config.index_dir).await?;
    let bus = Arc::new(Bus::new(config.amqp_url.expose_secret(), "catalog-indexer"));
    let http = reqwest::Client::builder().build()?;
    let lastfm = config.lastfm_api_key.clone().map(|api_key| {
        lastfm::Lastfm::new(
            config.lastfm_url.clone(),
            api_key.expose_secret().to_string(),
            http,
            config.lastfm_rate_per_s,
        )
    });
    if lastfm.is_none() {
        tracing::warn!("LASTFM_API_KEY is not set: tracks are catalogued without Last.fm tags");
    }
    let metrics = metrics::CatalogMetrics::default();
    let tags = Arc::new(tag_lookup::TagLookup {
        db: db.clone(),
        lastfm,
        cache_ttl: config.lastfm_cache_ttl,
        metrics: metrics.clone(),
    });
    let indexer = Arc::new(indexer::Indexer { db: db.clone(), index: index.clone(), tags: tags.clone() });
    let backlog = tokio::spawn(tag_lookup::run_backlog(
        tags.clone(),
        index.clone(),
        bus.clone(),
        config.lastfm_retry_every,
        shutdown.clone(),
    ));

    let search_index = index.clone();
    let search_duration = metrics.search_duration.clone();
    let searches = Arc::new(Admission::new(config.search_slots, config.search_queue));
    let search_route = warp::path!("search")
        .and(warp::get())
        .and(warp::query::<SearchParams>())
        .and(warp::any().map(move || search_index.clone()))
        .and(warp::any().map(move || searches.clone()))
        .and(warp::any().map(move || search_duration.clone()))
        .and_then(search);
    // Ready means search answers: that takes the index alone. PostgreSQL and RabbitMQ feed
    // the catalog; without them new tracks wait, and search still serves what is indexed.
    let dependencies = Dependencies::new()
        .required(
            "search_index",
            check_with(index.clone(), |index| async move {
                tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || index.check())
                    .await
                    .map_err(|e| e.to_string())?
            }),
        )
        .optional("postgres", postgres::check(&db))
        .optional("rabbitmq", check_with(bus.clone(), |bus| async move { bus.status() }))
        .notes(move || lastfm_notes(&tags));
    let mut registry = Registry::default();
    bus.register_metrics(&mut registry);
    metrics.register(&mut registry);
    let health = HealthRoutes::new(Arc::new(dependencies), registry);
    let routes = search_route.or(health.routes()).unify().recover(http_error::recover);
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "catalog-indexer listening");
    let server = tunewire_service_runtime::spawn_server(listener, routes, shutdown.clone());
    let task = tokio::spawn(async move {
        let handler = move |msg| indexer.clone().handle(msg);
        // Many in flight: they overlap Last.fm calls and share the index's group commits.
        bus.consume(CATALOG_INDEXER_QUEUE, 32, handler, shutdown).await;
        let _ = backlog.await;
        let _ = server.await;
    });
    Ok(Running { addr, task })
}
