//! The state of each resumable upload in PostgreSQL (`gateway.tus_uploads`), shared by every
//! gateway replica: what is durably stored, whose it is, when it expires, and the lease of
//! the one PATCH allowed to write it at a time.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, types::Json};
use tokio_util::sync::CancellationToken;
use tunewire_contract::{FileId, JobId, UserId};
use tunewire_service_runtime::telemetry::TraceHeaders;
use uuid::Uuid;

use crate::upload::Details;

/// How long a PATCH's claim lasts without renewal: how long an upload cut off by a gateway
/// that died stays busy (409) before another replica may continue it.
pub const LEASE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct Upload {
    pub id: Uuid,
    pub owner: UserId,
    pub file_id: FileId,
    /// `None` until a PATCH declares it (creation-defer-length).
    pub length: Option<u64>,
    /// Bytes durably stored: whole chunks in GridFS, then `tail`.
    pub received: u64,
    pub tail: Vec<u8>,
    /// The SHA-256 state after the whole chunks (`received - tail.len()` bytes).
    pub sha256_state: Vec<u8>,
    /// The `Upload-Metadata` header as created, echoed by HEAD.
    pub metadata: String,
    pub filename: String,
    pub details: Details,
    pub expires_at: DateTime<Utc>,
    pub job_id: Option<JobId>,
    /// When it was created: how long the whole upload took is measured from here.
    pub created_at: DateTime<Utc>,
    /// The trace of the request that created it.
    pub trace: TraceHeaders,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    owner_id: Uuid,
    file_id: String,
    length: Option<i64>,
    received: i64,
    tail: Vec<u8>,
    sha256_state: Vec<u8>,
    metadata: String,
    filename: String,
    details: Json<Details>,
    expires_at: DateTime<Utc>,
    job_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

macro_rules! columns {
    () => {
        "id, owner_id, file_id, length, received, tail, sha256_state, metadata, filename, details, expires_at, job_id, created_at, traceparent, tracestate"
    };
}

impl TryFrom<Row> for Upload {
    type Error = sqlx::Error;
    fn try_from(row: Row) -> Result<Self, sqlx::Error> {
        let decode = |e: tunewire_contract::IdError| sqlx::Error::Decode(Box::new(e));
        Ok(Upload {
            id: row.id,
            owner: UserId::from(row.owner_id),
            file_id: row.file_id.parse().map_err(decode)?,
            length: row.length.map(|l| l as u64),
            received: row.received as u64,
            tail: row.tail,
            sha256_state: row.sha256_state,
            metadata: row.metadata,
            filename: row.filename,
            details: row.details.0,
            expires_at: row.expires_at,
            job_id: row.job_id.map(JobId::from),
            created_at: row.created_at,
            trace: TraceHeaders::from_parts(row.traceparent, row.tracestate),
        })
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Records a new upload, unless its owner already has `open_limit` unfinished ones (`false`).
pub async fn create(db: &PgPool, upload: &Upload, ttl: Duration, open_limit: i64) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    // One creation per owner at a time, so two cannot both take the last place.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))")
        .bind(upload.owner.to_string())
        .execute(&mut *tx)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO gateway.tus_uploads
             (id, owner_id, file_id, length, sha256_state, metadata, filename, details, expires_at,
              traceparent, tracestate)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9), $11, $12
         WHERE (SELECT count(*) FROM gateway.tus_uploads WHERE owner_id = $2 AND job_id IS NULL) < $10",
    )
    .bind(upload.id)
    .bind(upload.owner.as_uuid())
    .bind(upload.file_id.as_str())
    .bind(upload.length.map(|l| l as i64))
    .bind(&upload.sha256_state)
    .bind(&upload.metadata)
    .bind(&upload.filename)
    .bind(Json(&upload.details))
    .bind(seconds(ttl))
    .bind(open_limit)
    .bind(&upload.trace.traceparent)
    .bind(&upload.trace.tracestate)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(inserted.rows_affected() == 1)
}

/// The upload, if `owner` has one by this id.
pub async fn find(db: &PgPool, id: Uuid, owner: UserId) -> Result<Option<Upload>, sqlx::Error> {
    let row: Option<Row> =
        sqlx::query_as(concat!("SELECT ", columns!(), " FROM gateway.tus_uploads WHERE id = $1 AND owner_id = $2"))
            .bind(id)
            .bind(owner.as_uuid())
            .fetch_optional(db)
            .await?;
    row.map(Upload::try_from).transpose()
}

pub enum Claim {
    Claimed(Box<Upload>),
    /// Another PATCH holds it.
    Busy,
    Missing,
}

/// Takes the upload's lease for one PATCH (`lease` is that PATCH's own id).
pub async fn claim(db: &PgPool, id: Uuid, owner: UserId, lease: Uuid) -> Result<Claim, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(concat!(
        "UPDATE gateway.tus_uploads SET lease = $3, leased_until = now() + make_interval(secs => $4)
         WHERE id = $1 AND owner_id = $2 AND (leased_until IS NULL OR leased_until < now())
         RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(owner.as_uuid())
    .bind(lease)
    .bind(seconds(LEASE))
    .fetch_optional(db)
    .await?;
    match row {
        Some(row) => Ok(Claim::Claimed(Box::new(row.try_into()?))),
        None => Ok(if find(db, id, owner).await?.is_some() { Claim::Busy } else { Claim::Missing }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the upload's lease ran out and another request took it")]
    Lost,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

fn held(done: &sqlx::postgres::PgQueryResult) -> Result<(), LeaseError> {
    if done.rows_affected() == 1 { Ok(()) } else { Err(LeaseError::Lost) }
}

/// What is durably stored now; renews the lease and the expiry.
pub struct Progress<'a> {
    pub received: u64,
    pub tail: &'a [u8],
    pub sha256_state: &'a [u8],
}

pub async fn checkpoint(
    db: &PgPool,
    id: Uuid,
    lease: Uuid,
    progress: Progress<'_>,
    ttl: Duration,
) -> Result<(), LeaseError> {
    let done = sqlx::query(
        "UPDATE gateway.tus_uploads
         SET received = $3, tail = $4, sha256_state = $5,
             leased_until = now() + make_interval(secs => $6), expires_at = now() + make_interval(secs => $7)
         WHERE id = $1 AND lease = $2",
    )
    .bind(id)
    .bind(lease)
    .bind(progress.received as i64)
    .bind(progress.tail)
    .bind(progress.sha256_state)
    .bind(seconds(LEASE))
    .bind(seconds(ttl))
    .execute(db)
    .await?;
    held(&done)
}

pub async fn renew(db: &PgPool, id: Uuid, lease: Uuid) -> Result<(), LeaseError> {
    let done = sqlx::query(
        "UPDATE gateway.tus_uploads SET leased_until = now() + make_interval(secs => $3) WHERE id = $1 AND lease = $2",
    )
    .bind(id)
    .bind(lease)
    .bind(seconds(LEASE))
    .execute(db)
    .await?;
    held(&done)
}

/// Renews the lease every third of its length for as long as it is polled; ends only when
/// the lease is lost (or the database fails), so work raced against it stops then.
pub async fn keep(db: &PgPool, id: Uuid, lease: Uuid) -> LeaseError {
    loop {
        tokio::time::sleep(LEASE / 3).await;
        if let Err(lost) = renew(db, id, lease).await {
            return lost;
        }
    }
}

/// Declares a deferred length.
pub async fn set_length(db: &PgPool, id: Uuid, lease: Uuid, length: u64) -> Result<(), LeaseError> {
    let done = sqlx::query("UPDATE gateway.tus_uploads SET length = $3 WHERE id = $1 AND lease = $2")
        .bind(id)
        .bind(lease)
        .bind(length as i64)
        .execute(db)
        .await?;
    held(&done)
}

pub async fn release(db: &PgPool, id: Uuid, lease: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE gateway.tus_uploads SET lease = NULL, leased_until = NULL WHERE id = $1 AND lease = $2")
        .bind(id)
        .bind(lease)
        .execute(db)
        .await?;
    Ok(())
}

/// An upload whose job is being made, by the request holding its lease.
#[derive(Debug, Clone, Copy)]
pub struct Finishing {
    pub id: Uuid,
    pub lease: Uuid,
}

impl Finishing {
    /// In the transaction that makes `job`: the file is the job's now. `false` if the lease
    /// was lost (the transaction must not commit).
    pub async fn finish(self, tx: &mut sqlx::PgConnection, job: JobId) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE gateway.tus_uploads
             SET received = length, tail = '', job_id = $3, lease = NULL, leased_until = NULL
             WHERE id = $1 AND lease = $2",
        )
        .bind(self.id)
        .bind(self.lease)
        .bind(job.as_uuid())
        .execute(tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

pub async fn remove(db: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM gateway.tus_uploads WHERE id = $1").bind(id).execute(db).await?;
    Ok(())
}

/// Removes up to `limit` expired uploads no PATCH holds; returns the files of those that did
/// not finish (their chunks are to go too).
pub async fn take_expired(db: &PgPool, limit: i64) -> Result<Vec<FileId>, sqlx::Error> {
    let files: Vec<(String, Option<Uuid>)> = sqlx::query_as(
        "DELETE FROM gateway.tus_uploads WHERE id IN (
             SELECT id FROM gateway.tus_uploads
             WHERE expires_at < now() AND (leased_until IS NULL OR leased_until < now())
             LIMIT $1)
         RETURNING file_id, job_id",
    )
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(files.into_iter().filter(|(_, job)| job.is_none()).filter_map(|(file, _)| file.parse().ok()).collect())
}

/// The files of unfinished uploads: chunks without a files document that are not orphans.
pub async fn unfinished_files(db: &PgPool) -> Result<HashSet<FileId>, sqlx::Error> {
    let files: Vec<String> =
        sqlx::query_scalar("SELECT file_id FROM gateway.tus_uploads WHERE job_id IS NULL").fetch_all(db).await?;
    Ok(files.into_iter().filter_map(|f| f.parse().ok()).collect())
}

/// How often the count of unfinished uploads is taken, for `/metrics`.
const MEASURE_EVERY: Duration = Duration::from_secs(15);

/// Keeps `tus_uploads_open` up to date until `shutdown`.
pub async fn measure_open(db: PgPool, metrics: std::sync::Arc<crate::metrics::Metrics>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(MEASURE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let open = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM gateway.tus_uploads WHERE job_id IS NULL AND expires_at > now()",
        )
        .fetch_one(&db)
        .await;
        match open {
            Ok(open) => {
                metrics.tus_uploads_open.set(open);
            }
            // PostgreSQL's readiness is reported elsewhere; the gauge keeps its last value.
            Err(e) => tracing::debug!(error = %e, "could not count the open resumable uploads"),
        }
    }
}
