//! Per-user quotas: jobs waiting or converting, and bytes of originals still stored (of jobs
//! not failed or expired, and not yet removed by retention, and of resumable uploads not yet
//! finished, by their declared length). Checked in the transaction that creates a job, serialised per
//! owner, so uploads finishing together cannot pass a quota together; checked again at the
//! door with the declared length, so most refusals come before the body is read. Shown in
//! `GET /v1/me`.

use std::time::Duration;

use tunewire_contract::UserId;
use tunewire_service_runtime::ApiError;
use warp::http::StatusCode;

#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    pub jobs_in_progress: i64,
    pub stored_bytes: i64,
}

/// When a user at the jobs quota should look again: about when a short job converts.
const JOBS_RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub jobs_in_progress: i64,
    pub stored_bytes: i64,
}

impl Usage {
    pub async fn of<'e>(db: impl sqlx::PgExecutor<'e>, owner: UserId) -> Result<Usage, sqlx::Error> {
        let (jobs_in_progress, stored_bytes): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state IN ('queued', 'converting')),
                    (COALESCE(sum(source_size) FILTER (WHERE state IN ('queued', 'converting', 'converted')
                                                         AND source_removed_at IS NULL), 0)
                     + COALESCE((SELECT sum(COALESCE(length, received)) FROM gateway.tus_uploads
                                 WHERE owner_id = $1 AND job_id IS NULL), 0))::bigint
             FROM gateway.jobs WHERE owner_id = $1",
        )
        .bind(owner.as_uuid())
        .fetch_one(db)
        .await?;
        Ok(Usage { jobs_in_progress, stored_bytes })
    }

    /// Whether one more job of `size` bytes fits; `size` is already counted when the job
    /// has been inserted (`counted`).
    pub fn admits(&self, quotas: &Quotas, size: i64, counted: bool) -> Result<(), Exceeded> {
        let (jobs, bytes) = if counted {
            (self.jobs_in_progress, self.stored_bytes)
        } else {
            (self.jobs_in_progress + 1, self.stored_bytes.saturating_add(size))
        };
        if jobs > quotas.jobs_in_progress {
            return Err(Exceeded::Jobs { limit: quotas.jobs_in_progress });
        }
        if bytes > quotas.stored_bytes {
            return Err(Exceeded::Bytes { limit: quotas.stored_bytes, used: bytes - size });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Jobs { limit: i64 },
    Bytes { limit: i64, used: i64 },
}

impl Exceeded {
    pub fn api_error(self) -> ApiError {
        match self {
            Exceeded::Jobs { limit } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "job_quota",
                format!("you have {limit} jobs waiting or converting, your quota; send more when some are done"),
            )
            .retry_after(JOBS_RETRY_AFTER),
            Exceeded::Bytes { limit, used } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_quota",
                format!(
                    "this upload does not fit your storage quota of {} ({} in use); delete some jobs first",
                    crate::upload::human_size(limit as u64),
                    crate::upload::human_size(used.max(0) as u64)
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_fits_until_either_quota_is_reached() {
        let quotas = Quotas { jobs_in_progress: 2, stored_bytes: 1000 };
        let usage = Usage { jobs_in_progress: 1, stored_bytes: 600 };
        assert_eq!(usage.admits(&quotas, 400, false), Ok(()));
        assert_eq!(usage.admits(&quotas, 401, false), Err(Exceeded::Bytes { limit: 1000, used: 600 }));
        let full = Usage { jobs_in_progress: 2, stored_bytes: 0 };
        assert_eq!(full.admits(&quotas, 1, false), Err(Exceeded::Jobs { limit: 2 }));
        assert_eq!(full.admits(&quotas, 0, true), Ok(()), "an inserted job counts itself");
        let error = Exceeded::Bytes { limit: 1000, used: 600 }.api_error();
        assert_eq!((error.status, error.code), (StatusCode::INSUFFICIENT_STORAGE, "storage_quota"));
    }
}
