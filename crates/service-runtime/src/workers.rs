//! A service's background loops (an outbox relay, a retention sweep): each runs supervised,
//! started again after a panic, and tells how its last round went, which `/readyz` shows in
//! its `notes` while the round fails. A failing worker delays work; it does not make the
//! service unready.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Backoff;

#[derive(Clone, Default)]
pub struct Workers {
    failing: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

/// What a worker reports through.
#[derive(Clone)]
pub struct WorkerStatus {
    name: &'static str,
    workers: Workers,
}

impl WorkerStatus {
    /// The last round did its work.
    pub fn ok(&self) {
        self.workers.lock().remove(self.name);
    }

    /// The last round failed; it is shown until a round succeeds.
    pub fn failed(&self, error: &impl std::fmt::Display) {
        self.workers.lock().insert(self.name, format!("failing, retrying: {error}"));
    }
}

impl Workers {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The failing workers, for `/readyz` notes.
    pub fn notes(&self) -> Vec<(&'static str, String)> {
        self.lock().iter().map(|(name, note)| (*name, note.clone())).collect()
    }

    /// Runs `worker` until it returns (at shutdown), starting it again after a panic, with
    /// [`Backoff::DEPENDENCY`] between starts.
    pub fn spawn<F, Fut>(&self, name: &'static str, shutdown: CancellationToken, worker: F) -> JoinHandle<()>
    where
        F: Fn(WorkerStatus) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let status = WorkerStatus { name, workers: self.clone() };
        tokio::spawn(async move {
            let mut panics = 0;
            loop {
                match tokio::spawn(worker(status.clone())).await {
                    Ok(()) => return,
                    Err(e) => {
                        let pause = Backoff::DEPENDENCY.delay(panics);
                        panics += 1;
                        tracing::error!(worker = name, error = %e, restart_in_s = pause.as_secs(), "a worker panicked");
                        status.failed(&format_args!("panicked ({e})"));
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_worker_is_noted_and_started_again_until_a_round_succeeds() {
        let workers = Workers::new();
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        let done = workers.spawn("sweep", CancellationToken::new(), move |status| {
            let start = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(start >= 2, "a worker that panics on its first two starts");
                status.ok();
            }
        });
        // Paused time: the two restarts' pauses pass at once, and the third start returns.
        done.await.expect("the supervisor ends when its worker returns");
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert!(workers.notes().is_empty(), "{:?}", workers.notes());
    }

    #[test]
    fn a_failed_round_is_a_note_until_one_succeeds() {
        let workers = Workers::new();
        let status = WorkerStatus { name: "relay", workers: workers.clone() };
        status.failed(&"database down");
        assert_eq!(workers.notes(), vec![("relay", "failing, retrying: database down".to_string())]);
        status.ok();
        assert!(workers.notes().is_empty());
    }
}
