//! How many uploads may stream in at once: per gateway process (each holds about 6 MiB of
//! buffers on its way into GridFS, so this bounds the process's memory) and per user. Checked
//! before a byte of the body is read.

use std::time::Duration;

use tunewire_contract::UserId;
use tunewire_service_runtime::ApiError;
use warp::http::StatusCode;

pub use crate::places::Limits;
use crate::places::{Full, Place, Places};

/// When a refused client should try again: about as long as a small upload takes.
const RETRY_AFTER: Duration = Duration::from_secs(5);

pub struct UploadAdmission(Places);

impl UploadAdmission {
    pub fn new(limits: Limits) -> Self {
        Self(Places::new(limits))
    }

    pub fn admit(&self, user: &UserId) -> Result<Place, ApiError> {
        self.0.take(user).map_err(|full| {
            let (code, message) = match full {
                Full::User(count) => (
                    "too_many_uploads",
                    format!(
                        "you have {count} uploads in flight, the most one user may have at once; send this one when one of them ends"
                    ),
                ),
                Full::Process(limit) => {
                    ("server_busy", format!("this server is receiving {limit} uploads, its limit; try again shortly"))
                }
            };
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message).retry_after(RETRY_AFTER)
        })
    }
}
