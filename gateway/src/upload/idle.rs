//! An upload whose client stops sending.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// Ends `body` with an error once it sends nothing for `idle` (and says so in `stalled`).
/// Only waits on the client count: while the store is busy writing, nothing is asked of it.
pub(crate) fn idle_limited<S>(
    body: S,
    idle: std::time::Duration,
    stalled: Arc<AtomicBool>,
) -> impl Stream<Item = Result<Bytes, String>> + Unpin + Send
where
    S: Stream<Item = Result<Bytes, String>> + Unpin + Send,
{
    Box::pin(futures_util::stream::unfold(Some(body), move |body| {
        let stalled = stalled.clone();
        async move {
            let mut body = body?;
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(item)) => Some((item, Some(body))),
                Ok(None) => None,
                Err(_) => {
                    stalled.store(true, Ordering::Relaxed);
                    Some((Err(format!("no data for {} s", idle.as_secs())), None))
                }
            }
        }
    }))
}
