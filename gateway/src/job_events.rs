//! `GET /v1/jobs/{id}/events`: Server-Sent Events with the job's state and progress until it
//! ends. Each stream polls the job's row (cheap, by primary key) and sends what changed, so
//! any gateway replica can serve any job whichever replica consumed its events.

use std::convert::Infallible;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tunewire_events::JobId;
use warp::sse::Event;

use crate::caller::Caller;
use crate::jobs;
use crate::routes::State;

const POLL: Duration = Duration::from_millis(250);
const TERMINAL: [&str; 3] = ["converted", "failed", "expired"];

fn event(name: &str, job: &Value) -> Event {
    Event::default().event(name).json_data(job).unwrap_or_else(|_| Event::default().event(name))
}

/// The event stream for a job the caller may see; the first event is sent at once.
pub fn follow(
    state: State,
    id: JobId,
    caller: Caller,
    first: Value,
    shutdown: CancellationToken,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + Sync + 'static {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(8);
    tokio::spawn(async move {
        let mut last = first;
        if tx.send(Ok(event("job", &last))).await.is_err() {
            return;
        }
        while !TERMINAL.contains(&last["state"].as_str().unwrap_or_default()) {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            match jobs::get(&state.db, id, &caller).await {
                Ok(Some(job)) if job != last => {
                    last = job;
                    if tx.send(Ok(event("job", &last))).await.is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    let _ = tx.send(Ok(Event::default().event("deleted").data(id.to_string()))).await;
                    return;
                }
                // The database will be back; the client keeps its stream meanwhile.
                Err(e) => tracing::warn!(job_id = %id, error = %e, "job events: reading the job failed"),
            }
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
