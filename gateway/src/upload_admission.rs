//! How many uploads may stream in at once: per gateway process (each holds about 6 MiB of
//! buffers on its way into GridFS, so this bounds the process's memory) and per user (so one
//! user cannot take every place). Checked before a byte of the body is read. The counts are
//! per process: behind a load balancer, N replicas admit N times as many, each within its
//! own memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tunewire_events::UserId;
use tunewire_service_runtime::ApiError;
use warp::http::StatusCode;

/// When a refused client should try again: about as long as a small upload takes.
const RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_process: usize,
    pub per_user: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits { per_process: 48, per_user: 8 };
}

pub struct UploadAdmission {
    limits: Limits,
    process: Arc<Semaphore>,
    users: Arc<Mutex<HashMap<UserId, usize>>>,
}

/// A place for one upload, given back when dropped.
pub struct UploadPlace {
    _process: OwnedSemaphorePermit,
    user: UserId,
    users: Arc<Mutex<HashMap<UserId, usize>>>,
}

impl Drop for UploadPlace {
    fn drop(&mut self) {
        let mut users = self.users.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = users.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                users.remove(&self.user);
            }
        }
    }
}

impl UploadAdmission {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            process: Arc::new(Semaphore::new(limits.per_process.max(1))),
            users: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn admit(&self, user: &UserId) -> Result<UploadPlace, ApiError> {
        let refused = |code: &'static str, message: String| {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message).retry_after(RETRY_AFTER)
        };
        let mut users = self.users.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = users.get(user).copied().unwrap_or(0);
        if count >= self.limits.per_user {
            return Err(refused(
                "too_many_uploads",
                format!(
                    "you have {count} uploads in flight, the most one user may have at once; send this one when one of them ends"
                ),
            ));
        }
        let process = self.process.clone().try_acquire_owned().map_err(|_| {
            refused(
                "server_busy",
                format!("this server is receiving {} uploads, its limit; try again shortly", self.limits.per_process),
            )
        })?;
        users.insert(*user, count + 1);
        Ok(UploadPlace { _process: process, user: *user, users: self.users.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_at_most_their_share_and_all_together_the_process_cap() {
        let admission = UploadAdmission::new(Limits { per_process: 3, per_user: 2 });
        let (ann, bob, cy) = (UserId::new(), UserId::new(), UserId::new());
        let ann_places: Vec<_> = (0..2).filter_map(|_| admission.admit(&ann).ok()).collect();
        assert_eq!(ann_places.len(), 2);
        let refused = admission.admit(&ann).err().map(|e| (e.status, e.code, e.retry_after_s));
        assert_eq!(refused, Some((StatusCode::TOO_MANY_REQUESTS, "too_many_uploads", Some(5))));
        let bob_place = admission.admit(&bob);
        assert!(bob_place.is_ok());
        assert_eq!(admission.admit(&cy).err().map(|e| e.code), Some("server_busy"), "the process is full");
        drop(ann_places);
        assert!(admission.admit(&ann).is_ok(), "places are given back");
        assert!(admission.users.lock().map(|u| u.len()).unwrap_or(0) <= 2, "users without uploads are forgotten");
    }
}
