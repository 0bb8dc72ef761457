//! Dependencies that are not there yet at start. In Kubernetes every pod starts at once,
//! and a database may be restarting when a service does: a service waits for what it needs
//! (with backoff, saying so in its logs) instead of exiting into a crash loop. Past the
//! patience it gives up, and the orchestrator's restart policy takes over.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::Backoff;

/// How long a starting service waits for one dependency.
pub const DEPENDENCY_PATIENCE: Duration = Duration::from_secs(120);

/// Runs `attempt` until it succeeds or `patience` has passed, pausing as
/// [`Backoff::DEPENDENCY`] in between; returns the last error then.
pub async fn wait_for<T, E, F, Fut>(what: &'static str, patience: Duration, mut attempt: F) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut failures = 0;
    loop {
        let pause = Backoff::DEPENDENCY.delay(failures);
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if started.elapsed() + pause > patience => return Err(e),
            Err(e) => {
                tracing::warn!(dependency = what, error = %e, retry_in_s = pause.as_secs(), "waiting for a dependency");
                tokio::time::sleep(pause).await;
                failures += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_until_the_dependency_answers() {
        let calls = AtomicU32::new(0);
        let outcome: Result<u32, String> = wait_for("test", DEPENDENCY_PATIENCE, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n < 3 { Err(format!("down ({n})")) } else { Ok(n) }
        })
        .await;
        assert_eq!(outcome, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_its_patience_with_the_last_error() {
        let started = tokio::time::Instant::now();
        let outcome: Result<(), String> =
            wait_for("test", Duration::from_secs(30), || async { Err("still down".to_string()) }).await;
        assert_eq!(outcome, Err("still down".to_string()));
        assert!(started.elapsed() <= Duration::from_secs(30));
    }
}
