//! The `gateway.jobs` table: created with its outbox event in one transaction, moved forward
//! (never backward) by the pipeline's events, read by owners.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgPool, Row};
use tunewire_contract::JobUpdate;
use tunewire_contract::Owner;
use tunewire_contract::{
    Event, JobConverted, JobFailed, JobId, MediaConverted, MediaDeleted, MediaExpired, MediaFailed, MediaUploaded,
    UserId,
};
use tunewire_service_runtime::telemetry::TraceHeaders;

use crate::caller::Caller;
use crate::job_view::{self, Job, JobState};
use crate::quotas::{Exceeded, Quotas, Usage};

pub enum Created {
    New,
    /// The same owner already has a live job for these bytes and this preset.
    Existing(JobId),
}

const LIVE_STATES: &str = "('queued', 'converting', 'converted')";

/// Queues `event` in the outbox, in the caller's transaction, with the trace of the work
/// that caused it (the relay publishes it in that trace).
async fn enqueue<E: Event>(tx: &mut sqlx::PgConnection, event: &E) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_vec(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let trace = TraceHeaders::current();
    sqlx::query(
        "INSERT INTO gateway.outbox (id, routing_key, payload, job_id, traceparent, tracestate)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(E::ROUTING_KEY)
    .bind(&payload)
    .bind(event.job_id().as_uuid())
    .bind(trace.traceparent)
    .bind(trace.tracestate)
    .execute(tx)
    .await
    .map(drop)
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("over a quota: {0:?}")]
    Quota(Exceeded),
    #[error("the resumable upload's lease was lost")]
    LeaseLost,
}

/// Creates the job and queues its `media.uploaded` in the outbox, atomically, if the owner's
/// quotas have room; or finds the live job with the same owner, SHA-256 and preset and
/// queues nothing. The resumable upload it came from, if any, is finished with it, atomically.
pub async fn create(
    db: &PgPool,
    event: &MediaUploaded,
    quotas: &Quotas,
    finishing: Option<crate::tus::record::Finishing>,
) -> Result<Created, CreateError> {
    // A live duplicate can stop being live (failed, expired) between the insert and the
    // lookup; then the insert is simply tried again.
    for _ in 0..3 {
        let mut tx = db.begin().await?;
        // One creation per owner at a time, so two cannot both fit the last of a quota.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(event.owner.id.to_string())
            .execute(&mut *tx)
            .await?;
        let inserted: Option<uuid::Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO gateway.jobs (id, owner_id, owner_email, state, preset, source_file_id, source_filename, source_size, source_sha256)
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8)
             ON CONFLICT (owner_id, source_sha256, preset) WHERE state IN {LIVE_STATES} DO NOTHING
             RETURNING id"
        )))
        .bind(event.job_id.as_uuid())
        .bind(event.owner.id.as_uuid())
        .bind(event.owner.email.as_str())
        .bind(event.preset.as_str())
        .bind(event.source.file_id.as_str())
        .bind(&event.source.filename)
        .bind(event.source.size as i64)
        .bind(&event.source.sha256)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_some() {
            // Finished first: an unfinished upload counts its length, and the job counts it now.
            if let Some(finishing) = finishing
                && !finishing.finish(&mut tx, event.job_id).await?
            {
                return Err(CreateError::LeaseLost);
            }
            let usage = Usage::of(&mut *tx, event.owner.id).await?;
            if let Err(exceeded) = usage.admits(quotas, event.source.size as i64, true) {
                tx.rollback().await?;
                return Err(CreateError::Quota(exceeded));
            }
            enqueue(&mut tx, event).await?;
            tx.commit().await?;
            return Ok(Created::New);
        }
        let existing: Option<uuid::Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM gateway.jobs WHERE owner_id = $1 AND source_sha256 = $2 AND preset = $3 AND state IN {LIVE_STATES}"
        )))
        .bind(event.owner.id.as_uuid())
        .bind(&event.source.sha256)
        .bind(event.preset.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(existing) = existing {
            if let Some(finishing) = finishing
                && !finishing.finish(&mut tx, JobId::from(existing)).await?
            {
                return Err(CreateError::LeaseLost);
            }
            tx.commit().await?;
            return Ok(Created::Existing(JobId::from(existing)));
        }
        tx.commit().await?;
    }
    Err(sqlx::Error::Protocol("the duplicate job kept changing state".into()).into())
}

/// What [`job_view::from_row`] reads.
const COLUMNS: &str = "id, owner_email, state, progress, preset, source_filename, source_size, source_sha256, output_file_id, \
     output_duration_s, output_bitrate, tags, error, created_at, updated_at";

/// The job as its owner (or an admin) sees it; `None` for anyone else.
pub async fn get(db: &PgPool, id: JobId, caller: &Caller) -> Result<Option<Job>, sqlx::Error> {
    let sql =
        sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM gateway.jobs WHERE id = $1 AND (owner_id = $2 OR $3)"));
    let row =
        sqlx::query(sql).bind(id.as_uuid()).bind(caller.id.as_uuid()).bind(caller.admin).fetch_optional(db).await?;
    row.as_ref().map(job_view::from_row).transpose()
}

/// The jobs among `ids` that still exist, whoever owns them: for event streams whose caller
/// was checked when they began.
pub async fn get_many(db: &PgPool, ids: &[JobId]) -> Result<Vec<Job>, sqlx::Error> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(JobId::as_uuid).collect();
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM gateway.jobs WHERE id = ANY($1)"));
    let rows = sqlx::query(sql).bind(&ids).fetch_all(db).await?;
    rows.iter().map(job_view::from_row).collect()
}

/// Every job changed after `since` (by `updated_at`), of `owners` or of everyone, each
/// with its owner; and when the database read them, by its own clock.
pub async fn changed_since(
    db: &PgPool,
    since: DateTime<Utc>,
    owners: &[UserId],
    everyone: bool,
) -> Result<Changes, sqlx::Error> {
    let owners: Vec<uuid::Uuid> = owners.iter().map(UserId::as_uuid).collect();
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, owner_id, now() AS read_at FROM gateway.jobs
         WHERE updated_at > $1 AND ($2 OR owner_id = ANY($3)) ORDER BY updated_at"
    ));
    let rows = sqlx::query(sql).bind(since).bind(everyone).bind(&owners).fetch_all(db).await?;
    let read_at = match rows.first() {
        Some(row) => row.try_get("read_at")?,
        None => database_now(db).await?,
    };
    let jobs = rows
        .iter()
        .map(|row| Ok((UserId::from(row.try_get::<uuid::Uuid, _>("owner_id")?), job_view::from_row(row)?)))
        .collect::<Result<_, sqlx::Error>>()?;
    let deleted: Vec<(uuid::Uuid, uuid::Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT job_id, owner_id, deleted_at FROM gateway.job_tombstones
         WHERE deleted_at > $1 AND ($2 OR owner_id = ANY($3)) ORDER BY deleted_at",
    )
    .bind(since)
    .bind(everyone)
    .bind(&owners)
    .fetch_all(db)
    .await?;
    let deleted = deleted.into_iter().map(|(job, owner, at)| (UserId::from(owner), JobId::from(job), at)).collect();
    Ok(Changes { jobs, deleted, read_at })
}

/// What `changed_since` read: the jobs changed (with their owners), the jobs deleted (owner,
/// job, when), and the database's time of the reading.
pub struct Changes {
    pub jobs: Vec<(UserId, Job)>,
    pub deleted: Vec<(UserId, JobId, DateTime<Utc>)>,
    pub read_at: DateTime<Utc>,
}

/// The database's clock, which `updated_at` is read by.
pub async fn database_now(db: &PgPool) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(db).await
}

/// Where a page of `list` ends: the last job's creation time and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    created_at: DateTime<Utc>,
    id: uuid::Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        use base64::Engine;
        let raw = format!("{}.{}", self.created_at.timestamp_micros(), self.id);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(text: &str) -> Option<Self> {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
        let (micros, id) = std::str::from_utf8(&raw).ok()?.split_once('.')?;
        Some(Self { created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?, id: id.parse().ok()? })
    }
}

/// A page of the caller's jobs (every job for an admin), newest first.
pub async fn list(
    db: &PgPool,
    caller: &Caller,
    state: Option<JobState>,
    after: Option<Cursor>,
    limit: i64,
) -> Result<(Vec<Job>, Option<Cursor>), sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM gateway.jobs
         WHERE (owner_id = $1 OR $2) AND ($3::text IS NULL OR state = $3)
           AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
         ORDER BY created_at DESC, id DESC LIMIT $6"
    ));
    let rows = sqlx::query(sql)
        .bind(caller.id.as_uuid())
        .bind(caller.admin)
        .bind(state.map(JobState::as_str))
        .bind(after.map(|c| c.created_at))
        .bind(after.map(|c| c.id))
        .bind(limit + 1)
        .fetch_all(db)
        .await?;
    let more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    let next = match page.last() {
        Some(row) if more => Some(Cursor { created_at: row.try_get("created_at")?, id: row.try_get("id")? }),
        _ => None,
    };
    Ok((page.iter().map(job_view::from_row).collect::<Result<_, _>>()?, next))
}

pub struct Download {
    pub source_filename: String,
    pub expired: bool,
}

/// The job that produced `file_id`, if `owner` (or an admin) may download it.
pub async fn download(db: &PgPool, file_id: &str, owner: UserId, admin: bool) -> Result<Option<Download>, sqlx::Error> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT source_filename, state FROM gateway.jobs WHERE output_file_id = $1 AND (owner_id = $2 OR $3)",
    )
    .bind(file_id)
    .bind(owner.as_uuid())
    .bind(admin)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(source_filename, state)| Download { source_filename, expired: state == "expired" }))
}

/// The GridFS files a job holds: its original and its MP3, if any.
pub struct JobFiles {
    pub source_file_id: String,
    pub output_file_id: Option<String>,
}

pub async fn files(db: &PgPool, id: JobId, caller: &Caller) -> Result<Option<JobFiles>, sqlx::Error> {
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT source_file_id, output_file_id FROM gateway.jobs WHERE id = $1 AND (owner_id = $2 OR $3)",
    )
    .bind(id.as_uuid())
    .bind(caller.id.as_uuid())
    .bind(caller.admin)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(source_file_id, output_file_id)| JobFiles { source_file_id, output_file_id }))
}

/// Deletes the job and queues `media.deleted`, atomically: every service drops what it holds
/// of the job, and work still running on it keeps nothing.
pub async fn delete(db: &PgPool, id: JobId) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    let owner: Option<uuid::Uuid> = sqlx::query_scalar("DELETE FROM gateway.jobs WHERE id = $1 RETURNING owner_id")
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(owner) = owner {
        enqueue(&mut tx, &MediaDeleted { job_id: id }).await?;
        sqlx::query("DELETE FROM gateway.job_tombstones WHERE deleted_at < now() - interval '1 hour'")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO gateway.job_tombstones (job_id, owner_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(id.as_uuid())
            .bind(owner)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Of these originals, those retention may remove: their job is over (converted, failed,
/// expired) or there is no job for them. A queued or converting job keeps its original.
pub async fn removable_sources(db: &PgPool, file_ids: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT f.file_id FROM unnest($1::text[]) AS f (file_id)
         WHERE NOT EXISTS (SELECT 1 FROM gateway.jobs j
                           WHERE j.source_file_id = f.file_id AND j.state IN ('queued', 'converting'))",
    )
    .bind(file_ids)
    .fetch_all(db)
    .await
}

/// Retention removed these originals.
pub async fn sources_removed(db: &PgPool, file_ids: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE gateway.jobs SET source_removed_at = now() WHERE source_file_id = ANY($1)")
        .bind(file_ids)
        .execute(db)
        .await
        .map(drop)
}

/// Retention removes these MP3s: their jobs are `expired`, and `media.expired` tells the
/// catalog to forget their tracks.
pub async fn outputs_expired(db: &PgPool, file_ids: &[String]) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    let expired: Vec<uuid::Uuid> = sqlx::query_scalar(
        "UPDATE gateway.jobs SET state = 'expired', updated_at = now() WHERE output_file_id = ANY($1) AND state = 'converted'
         RETURNING id",
    )
    .bind(file_ids)
    .fetch_all(&mut *tx)
    .await?;
    for job in &expired {
        enqueue(&mut tx, &MediaExpired { job_id: JobId::from(*job) }).await?;
    }
    tx.commit().await?;
    Ok(expired.len() as u64)
}

/// Applies a pipeline event. States only move forward, so redelivered or reordered events
/// change nothing they should not; an outcome naming another owner than the job's changes
/// nothing either. An outcome that moves its job on is queued again as
/// `job.converted` or `job.failed` with the job's own owner and source name, in the same
/// transaction; returns whether it was.
pub async fn apply(db: &PgPool, update: &JobUpdate) -> Result<bool, sqlx::Error> {
    const RETURNING: &str = "RETURNING owner_id, owner_email, source_filename";
    let mut tx = db.begin().await?;
    let ended: Option<(uuid::Uuid, String, String)> = match update {
        JobUpdate::Progress(p) => {
            sqlx::query(
                "UPDATE gateway.jobs SET state = 'converting', progress = GREATEST(progress, $2), updated_at = now()
                 WHERE id = $1 AND state IN ('queued', 'converting')",
            )
            .bind(p.job_id.as_uuid())
            .bind(p.progress.clamp(0.0, 1.0))
            .execute(&mut *tx)
            .await?;
            None
        }
        JobUpdate::Converted(c) => {
            let sql = sqlx::AssertSqlSafe(format!(
                "UPDATE gateway.jobs SET state = 'converted', progress = 1, output_file_id = $2, output_duration_s = $3,
                        output_bitrate = $4, error = NULL, updated_at = now()
                 WHERE id = $1 AND state IN ('queued', 'converting') AND owner_id = $5 AND owner_email = $6 {RETURNING}"
            ));
            sqlx::query_as(sql)
                .bind(c.job_id.as_uuid())
                .bind(c.output.file_id.as_str())
                .bind(c.output.duration_s)
                .bind(c.output.bitrate as i32)
                .bind(c.owner.id.as_uuid())
                .bind(c.owner.email.as_str())
                .fetch_optional(&mut *tx)
                .await?
        }
        JobUpdate::Failed(f) => {
            let sql = sqlx::AssertSqlSafe(format!(
                "UPDATE gateway.jobs SET state = 'failed', error = $2, updated_at = now()
                 WHERE id = $1 AND state IN ('queued', 'converting') AND owner_id = $3 AND owner_email = $4 {RETURNING}"
            ));
            sqlx::query_as(sql)
                .bind(f.job_id.as_uuid())
                .bind(&f.reason)
                .bind(f.owner.id.as_uuid())
                .bind(f.owner.email.as_str())
                .fetch_optional(&mut *tx)
                .await?
        }
        JobUpdate::Catalogued(c) => {
            sqlx::query("UPDATE gateway.jobs SET tags = $2, updated_at = now() WHERE id = $1")
                .bind(c.job_id.as_uuid())
                .bind(json!(c.tags))
                .execute(&mut *tx)
                .await?;
            None
        }
    };
    let Some((owner_id, owner_email, source_filename)) = ended else {
        tx.commit().await?;
        return Ok(false);
    };
    let owner =
        Owner { id: UserId::from(owner_id), email: owner_email.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))? };
    match update {
        JobUpdate::Converted(c) => {
            enqueue(&mut tx, &JobConverted(MediaConverted { owner, source_filename, ..c.clone() })).await?;
        }
        JobUpdate::Failed(f) => {
            enqueue(&mut tx, &JobFailed(MediaFailed { owner, source_filename, ..f.clone() })).await?;
        }
        JobUpdate::Progress(_) | JobUpdate::Catalogued(_) => {}
    }
    tx.commit().await?;
    Ok(true)
}
