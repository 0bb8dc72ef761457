//! Following a job to its end over its event stream (`GET /v1/jobs/{id}/events`), with no
//! polling: the stream sends the job at once and at each change, and ends with it.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use tunewire_contract::jobs::Job;

use crate::api::{self, Api};
use crate::error::CliError;
use crate::sse;

/// Reopenings of a stream that ended before its job did (a gateway restarting, a token
/// lapsing is an error instead).
const REOPENINGS: u32 = 10;

/// How a job ended.
pub enum End {
    Final(Box<Job>),
    Deleted,
}

/// Follows job `id` until it is converted, failed or expired; `on_change` sees each version.
pub async fn until_final(api: &Api, id: &str, on_change: &(dyn Fn(&Job) + Sync)) -> Result<End, CliError> {
    let mut reopened = 0;
    loop {
        let path = format!("/v1/jobs/{id}/events");
        let request = api.request(Method::GET, &path)?.header("accept", "text/event-stream");
        let response = api.send(request).await?;
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS && reopened < REOPENINGS {
            // Another of our streams is still open; its place comes free.
            reopened += 1;
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1u64);
            tokio::time::sleep(Duration::from_secs(wait.clamp(1, 30))).await;
            continue;
        }
        let response = api::ok(response).await?;
        let mut events = Box::pin(sse::events(response.bytes_stream()));
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            match event.name.as_str() {
                "job" => {
                    let job: Job = serde_json::from_str(&event.data)
                        .map_err(|e| CliError::Protocol(format!("a job event: {e}")))?;
                    on_change(&job);
                    if job.state.is_final() {
                        return Ok(End::Final(Box::new(job)));
                    }
                }
                "deleted" => return Ok(End::Deleted),
                _ => {}
            }
        }
        if reopened >= REOPENINGS {
            return Err(CliError::Protocol(format!("the event stream of job {id} kept ending before the job did")));
        }
        reopened += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
