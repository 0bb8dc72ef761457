//! Costly work a stranger can start (a password hash, a fuzzy search), bounded: `slots` run
//! at once, `queue` more may wait for a slot, and the rest are refused at once (503 with
//! `Retry-After`) rather than piling up in memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::http::StatusCode;

use crate::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every slot is taken and the queue is full")]
pub struct Busy;

impl Busy {
    /// The refusal a client sees: 503, `code`, try again in a second.
    pub fn into_api_error(self, code: &'static str, message: &str) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(Duration::from_secs(1))
    }
}

pub struct Admission {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

/// A place in the queue.
pub struct Ticket {
    _admitted: OwnedSemaphorePermit,
    running: Arc<Semaphore>,
}

/// A slot: the work may run while this is held.
pub struct Slot {
    _admitted: OwnedSemaphorePermit,
    _running: Option<OwnedSemaphorePermit>,
}

impl Admission {
    pub fn new(slots: usize, queue: usize) -> Self {
        let slots = slots.max(1);
        Self { admitted: Arc::new(Semaphore::new(slots + queue)), running: Arc::new(Semaphore::new(slots)) }
    }

    /// A place in the queue, or [`Busy`] at once: take it before spending anything else on
    /// the request.
    pub fn admit(&self) -> Result<Ticket, Busy> {
        let admitted = self.admitted.clone().try_acquire_owned().map_err(|_| Busy)?;
        Ok(Ticket { _admitted: admitted, running: self.running.clone() })
    }
}

impl Ticket {
    /// Waits for a slot.
    pub async fn slot(self) -> Slot {
        // The semaphore is never closed, so acquiring only waits.
        let running = self.running.clone().acquire_owned().await.ok();
        Slot { _admitted: self._admitted, _running: running }
    }

    /// Runs `f` (CPU-bound) on tokio's blocking pool once a slot is free.
    pub async fn run_blocking<T: Send + 'static>(
        self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let slot = self.slot().await;
        crate::telemetry::propagation::spawn_blocking(move || {
            let out = f();
            drop(slot);
            out
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beyond_slots_and_queue_work_is_refused_at_once() {
        let admission = Admission::new(1, 1);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let first = admission.admit().map(|t| tokio::spawn(t.run_blocking(move || wait.recv().is_ok())));
        let second = admission.admit().map(|t| tokio::spawn(t.run_blocking(|| true)));
        assert_eq!(admission.admit().err(), Some(Busy));
        let _ = release.send(());
        for task in [first, second] {
            let task = task.expect("admitted while a place was free");
            assert!(matches!(task.await, Ok(Ok(true))));
        }
        assert!(admission.admit().is_ok(), "places are given back");
    }
}
