//! A job as the API shows it: `GET /v1/jobs/{id}`, the pages of `GET /v1/jobs`, and each
//! event of the job streams. The gateway writes it, clients (the CLI) read it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{JobId, Preset};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobSource {
    pub filename: String,
    /// Bytes.
    pub size: i64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// The MP3, once converted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobOutput {
    /// For `GET /v1/files/{id}`.
    pub file_id: String,
    pub duration_s: Option<f64>,
    /// Bits per second.
    pub bitrate: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    pub id: JobId,
    /// Who uploaded it (admins see everyone's jobs).
    pub owner_email: String,
    pub state: JobState,
    /// Of the conversion, from 0 to 1.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1))]
    pub progress: f32,
    pub preset: Preset,
    pub source: JobSource,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub output: Option<JobOutput>,
    /// Last.fm's tags for the track, once catalogued.
    pub tags: Vec<String>,
    /// Why it failed, in words.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Passed back as `cursor` for the next page; `null` on the last.
    #[cfg_attr(feature = "openapi", schema(required = true))]
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
