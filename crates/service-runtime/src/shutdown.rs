//! Graceful shutdown: SIGTERM (Kubernetes) or Ctrl-C cancel one token that every task of the
//! service watches.

use tokio_util::sync::CancellationToken;

pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the service");
                    let _ = ctrl_c.await;
                    trigger.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}

/// Waits for the service's task to finish; once shutdown is requested, waits at most
/// `deadline` more (in-flight work gets that long; unacknowledged messages are redelivered
/// elsewhere). Kubernetes' `terminationGracePeriodSeconds` is set a little above it.
pub async fn drain(task: tokio::task::JoinHandle<()>, token: CancellationToken, deadline: std::time::Duration) {
    let mut task = task;
    tokio::select! {
        _ = &mut task => return,
        _ = token.cancelled() => {}
    }
    if tokio::time::timeout(deadline, task).await.is_err() {
        tracing::warn!(deadline_s = deadline.as_secs(), "shutdown deadline passed; exiting with work in flight");
    }
}
