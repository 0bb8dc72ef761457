//! Reading a job (`tunewire_contract::jobs`) from the database.

use std::fmt;

use sqlx::Row;
use tunewire_contract::JobId;
pub use tunewire_contract::jobs::{Job, JobOutput, JobPage, JobSource, JobState};

fn decode(column: &str, e: impl fmt::Display) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: column.into(), source: e.to_string().into() }
}

/// A job from a row of `jobs::COLUMNS`.
pub fn from_row(row: &sqlx::postgres::PgRow) -> Result<Job, sqlx::Error> {
    let output_file_id: Option<String> = row.try_get("output_file_id")?;
    let output = match output_file_id {
        Some(file_id) => Some(JobOutput {
            file_id,
            duration_s: row.try_get("output_duration_s")?,
            bitrate: row.try_get("output_bitrate")?,
        }),
        None => None,
    };
    let tags: sqlx::types::Json<Vec<String>> = row.try_get("tags")?;
    Ok(Job {
        id: JobId::from(row.try_get::<uuid::Uuid, _>("id")?),
        owner_email: row.try_get("owner_email")?,
        state: row.try_get::<String, _>("state")?.parse().map_err(|e| decode("state", e))?,
        progress: row.try_get("progress")?,
        preset: row.try_get::<String, _>("preset")?.parse().map_err(|e| decode("preset", e))?,
        source: JobSource {
            filename: row.try_get("source_filename")?,
            size: row.try_get("source_size")?,
            sha256: row.try_get("source_sha256")?,
        },
        output,
        tags: tags.0,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}
