//! The `gateway.jobs` table: created with its outbox event in one transaction, moved forward
//! (never backward) by the pipeline's events, read by owners.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tunewire_events::contract::JobUpdate;
use tunewire_events::{Event, JobId, MediaUploaded, UserId};

use crate::caller::Caller;

/// Creates the job and queues its `media.uploaded` in the outbox, atomically.
pub async fn create(db: &PgPool, event: &MediaUploaded) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_vec(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO gateway.jobs (id, owner_id, owner_email, state, preset, source_file_id, source_filename, source_size, source_sha256)
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8)",
    )
    .bind(event.job_id.as_uuid())
    .bind(event.owner.id.as_uuid())
    .bind(event.owner.email.as_str())
    .bind(event.preset.as_str())
    .bind(event.source.file_id.as_str())
    .bind(&event.source.filename)
    .bind(event.source.size as i64)
    .bind(&event.source.sha256)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO gateway.outbox (id, routing_key, payload) VALUES ($1, $2, $3)")
        .bind(uuid::Uuid::new_v4())
        .bind(MediaUploaded::ROUTING_KEY)
        .bind(payload)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

const COLUMNS: &str = "id, state, progress, preset, source_filename, source_size, source_sha256, output_file_id, \
     output_duration_s, output_bitrate, tags, error, created_at, updated_at";

fn to_json(row: &sqlx::postgres::PgRow) -> Result<Value, sqlx::Error> {
    let output_file_id: Option<String> = row.try_get("output_file_id")?;
    let output = output_file_id.map(|file_id| {
        json!({
            "file_id": file_id,
            "duration_s": row.try_get::<Option<f64>, _>("output_duration_s").ok().flatten(),
            "bitrate": row.try_get::<Option<i32>, _>("output_bitrate").ok().flatten(),
        })
    });
    Ok(json!({
        "id": row.try_get::<uuid::Uuid, _>("id")?,
        "state": row.try_get::<String, _>("state")?,
        "progress": row.try_get::<f32, _>("progress")?,
        "preset": row.try_get::<String, _>("preset")?,
        "source": {
            "filename": row.try_get::<String, _>("source_filename")?,
            "size": row.try_get::<i64, _>("source_size")?,
            "sha256": row.try_get::<String, _>("source_sha256")?,
        },
        "output": output,
        "tags": row.try_get::<Value, _>("tags")?,
        "error": row.try_get::<Option<String>, _>("error")?,
        "created_at": row.try_get::<DateTime<Utc>, _>("created_at")?,
        "updated_at": row.try_get::<DateTime<Utc>, _>("updated_at")?,
    }))
}

/// The job as its owner (or an admin) sees it; `None` for anyone else.
pub async fn get(db: &PgPool, id: JobId, caller: &Caller) -> Result<Option<Value>, sqlx::Error> {
    let sql =
        sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM gateway.jobs WHERE id = $1 AND (owner_id = $2 OR $3)"));
    let row =
        sqlx::query(sql).bind(id.as_uuid()).bind(caller.id.as_uuid()).bind(caller.admin).fetch_optional(db).await?;
    row.as_ref().map(to_json).transpose()
}

/// The caller's newest jobs.
pub async fn list(db: &PgPool, caller: &Caller, limit: i64) -> Result<Vec<Value>, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM gateway.jobs WHERE owner_id = $1 OR $2 ORDER BY created_at DESC LIMIT $3"
    ));
    let rows = sqlx::query(sql).bind(caller.id.as_uuid()).bind(caller.admin).bind(limit).fetch_all(db).await?;
    rows.iter().map(to_json).collect()
}

/// The original's filename of the job that produced `file_id`, if `owner` may download it.
pub async fn output_filename(
    db: &PgPool,
    file_id: &str,
    owner: UserId,
    admin: bool,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT source_filename FROM gateway.jobs WHERE output_file_id = $1 AND (owner_id = $2 OR $3)")
        .bind(file_id)
        .bind(owner.as_uuid())
        .bind(admin)
        .fetch_optional(db)
        .await
}

/// Applies a pipeline event. States only move forward, so redelivered or reordered events
/// change nothing they should not.
pub async fn apply(db: &PgPool, update: &JobUpdate) -> Result<(), sqlx::Error> {
    let query = match update {
        JobUpdate::Progress(p) => sqlx::query(
            "UPDATE gateway.jobs SET state = 'converting', progress = GREATEST(progress, $2), updated_at = now()
             WHERE id = $1 AND state IN ('queued', 'converting')",
        )
        .bind(p.job_id.as_uuid())
        .bind(p.progress.clamp(0.0, 1.0)),
        JobUpdate::Converted(c) => sqlx::query(
            "UPDATE gateway.jobs SET state = 'converted', progress = 1, output_file_id = $2, output_duration_s = $3,
                    output_bitrate = $4, error = NULL, updated_at = now()
             WHERE id = $1 AND state IN ('queued', 'converting')",
        )
        .bind(c.job_id.as_uuid())
        .bind(c.output.file_id.as_str())
        .bind(c.output.duration_s)
        .bind(c.output.bitrate as i32),
        JobUpdate::Failed(f) => sqlx::query(
            "UPDATE gateway.jobs SET state = 'failed', error = $2, updated_at = now()
             WHERE id = $1 AND state IN ('queued', 'converting')",
        )
        .bind(f.job_id.as_uuid())
        .bind(&f.reason),
        JobUpdate::Catalogued(c) => sqlx::query("UPDATE gateway.jobs SET tags = $2, updated_at = now() WHERE id = $1")
            .bind(c.job_id.as_uuid())
            .bind(json!(c.tags)),
    };
    query.execute(db).await.map(|_| ())
}
