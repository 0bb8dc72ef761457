//! `jobs`, `job`, `delete`, `search`: reading and removing what was uploaded.

use futures_util::StreamExt;
use reqwest::Method;
use tunewire_contract::SearchPage;
use tunewire_contract::jobs::{Job, JobPage, JobState};

use crate::api::{self, Api};
use crate::error::CliError;
use crate::sse;

/// A job id as given on the command line, checked before it goes into a path.
pub fn job_id(id: &str) -> Result<&str, CliError> {
    let id = id.trim();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(CliError::Usage(format!("{id:?} is not a job id (as `tunewire jobs` lists them)")));
    }
    Ok(id)
}

pub async fn list(api: &Api, state: Option<JobState>, limit: u16) -> Result<JobPage, CliError> {
    let mut request = api.request(Method::GET, "/v1/jobs")?.query(&[("limit", limit)]);
    if let Some(state) = state {
        request = request.query(&[("state", state.as_str())]);
    }
    api.json(request).await
}

pub async fn get(api: &Api, id: &str) -> Result<Job, CliError> {
    api.get(&format!("/v1/jobs/{}", job_id(id)?)).await
}

pub async fn delete(api: &Api, id: &str) -> Result<(), CliError> {
    let request = api.request(Method::DELETE, &format!("/v1/jobs/{}", job_id(id)?))?;
    api::ok(api.send(request).await?).await.map(drop)
}

pub async fn search(
    api: &Api,
    q: Option<String>,
    tag: Option<String>,
    artist: Option<String>,
    limit: u16,
) -> Result<SearchPage, CliError> {
    if q.is_none() && tag.is_none() && artist.is_none() {
        return Err(CliError::Usage("give words to search for, --tag or --artist".into()));
    }
    let filters: Vec<(&str, String)> =
        [("q", q), ("tag", tag), ("artist", artist)].into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
    api.json(api.request(Method::GET, "/v1/search")?.query(&filters).query(&[("limit", limit)])).await
}

/// Calls `on_change` with each change to the caller's jobs (`GET /v1/events`) until the
/// stream ends (the token lapsing, the server stopping).
pub async fn watch(
    api: &Api,
    opened: &dyn Fn(),
    on_change: &mut dyn FnMut(&Job) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let request = api.request(Method::GET, "/v1/events")?.header("accept", "text/event-stream");
    let response = api::ok(api.send(request).await?).await?;
    opened();
    let mut events = Box::pin(sse::events(response.bytes_stream()));
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| CliError::Unreachable { server: api.server.clone(), reason: e })?;
        if event.name == "job" {
            let job: Job = serde_json::from_str(&event.data).map_err(|e| CliError::Protocol(e.to_string()))?;
            on_change(&job)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_they_go_into_a_path() {
        assert!(job_id("../etc").is_err());
        assert!(job_id("0b0e2f6a-1c2d-4e5f-8a9b-0c1d2e3f4a5b").is_ok());
    }
}
