//! A job as the API shows it: `GET /v1/jobs/{id}`, the pages of `GET /v1/jobs`, and each
//! event of a job's stream.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use tunewire_contract::{JobId, Preset};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Converting,
    Converted,
    Failed,
    Expired,
}

impl JobState {
    pub const ALL: [JobState; 5] =
        [JobState::Queued, JobState::Converting, JobState::Converted, JobState::Failed, JobState::Expired];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Converting => "converting",
            JobState::Converted => "converted",
            JobState::Failed => "failed",
            JobState::Expired => "expired",
        }
    }

    /// No change follows.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Converted | JobState::Failed | JobState::Expired)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| {
            let states: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            format!("state must be one of {}", states.join(", "))
        })
    }
}

/// The uploaded file.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct JobSource {
    pub filename: String,
    /// Bytes.
    pub size: i64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// The MP3, once converted.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct JobOutput {
    /// For `GET /v1/files/{id}`.
    pub file_id: String,
    pub duration_s: Option<f64>,
    /// Bits per second.
    pub bitrate: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Job {
    pub id: JobId,
    /// Who uploaded it (admins see everyone's jobs).
    pub owner_email: String,
    pub state: JobState,
    /// Of the conversion, from 0 to 1.
    #[schema(minimum = 0, maximum = 1)]
    pub progress: f32,
    pub preset: Preset,
    pub source: JobSource,
    #[schema(required = true)]
    pub output: Option<JobOutput>,
    /// Last.fm's tags for the track, once catalogued.
    pub tags: Vec<String>,
    /// Why it failed, in words.
    #[schema(required = true)]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn decode(column: &str, e: impl fmt::Display) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: column.into(), source: e.to_string().into() }
}

impl Job {
    /// From a row of `jobs::COLUMNS`.
    pub fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
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
        Ok(Self {
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
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Passed back as `cursor` for the next page; `null` on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_from_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        assert!("done".parse::<JobState>().unwrap_err().contains("queued, converting"));
    }
}
