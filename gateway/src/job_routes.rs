//! The caller's account and jobs: `/v1/me` and `/v1/jobs...`.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use tunewire_contract::accounts::{Me, QuotaLimit, QuotaReport, QuotaUse};
use tunewire_contract::{Account, JobId, Role};
use tunewire_media_store::Bucket;
use tunewire_service_runtime::ApiError;
use utoipa::ToSchema;
use warp::Reply;
use warp::http::StatusCode;

use crate::caller::Caller;
use crate::job_view::{Job, JobPage, JobState};
use crate::jobs;
use crate::quotas::Usage;
use crate::state::State;
use tunewire_service_runtime::http_error::ErrorBody;

type Response = warp::reply::Response;

#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStreamEventKind {
    /// `data` is the job, as JSON.
    Job,
    /// `data` is the job's id: it is gone.
    Deleted,
}

/// One Server-Sent Event of a job's stream.
#[derive(ToSchema)]
#[expect(dead_code, reason = "describes what `job_events` sends")]
pub struct JobStreamEvent {
    event: JobStreamEventKind,
    data: String,
}

/// The caller, and where they stand against their quotas.
#[utoipa::path(get, path = "/v1/me", operation_id = "me", tag = "accounts", security(("bearer" = [])),
    summary = "Who you are, and your quotas",
    responses(
        (status = 200, body = Me),
        (status = 401, response = ErrorBody),
        (status = 503, response = ErrorBody),
        (status = "default", response = ErrorBody),
    ))]
pub async fn me(caller: Caller, state: State) -> Result<Response, ApiError> {
    let role = if caller.admin { Role::Admin } else { Role::User };
    let usage = Usage::of(&state.db, caller.id).await.map_err(|e| ApiError::unavailable("database_unavailable", e))?;
    let quotas = &state.config.quotas;
    let body = Me {
        account: Account { id: caller.id, email: caller.email.to_string(), role },
        quotas: QuotaReport {
            jobs_in_progress: QuotaUse { used: usage.jobs_in_progress, limit: quotas.jobs_in_progress },
            stored_bytes: QuotaUse { used: usage.stored_bytes, limit: quotas.stored_bytes },
            uploads_in_flight: QuotaLimit { limit: state.config.upload_limits.per_user },
            event_streams: QuotaLimit { limit: state.config.stream_limits.per_user },
        },
    };
    Ok(warp::reply::json(&body).into_response())
}

fn job_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("job"))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "get_job", tag = "jobs", security(("bearer" = [])),
    summary = "One of your jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, body = Job),
        (status = 401, response = ErrorBody),
        (status = 404, response = ErrorBody),
        (status = "default", response = ErrorBody),
    ))]
pub async fn get_job(id: String, caller: Caller, state: State) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    match jobs::get(&state.db, id, &caller).await.map_err(|e| ApiError::unavailable("database_unavailable", e))? {
        Some(job) => Ok(warp::reply::json(&job).into_response()),
        None => Err(ApiError::not_found("job")),
    }
}

#[utoipa::path(get, path = "/v1/jobs", operation_id = "list_jobs", tag = "jobs", security(("bearer" = [])),
    summary = "Your jobs, newest first (everyone's for an admin)",
    params(
        ("state" = Option<JobState>, Query, description = "Only jobs in this state"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Jobs per page (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the page before"),
    ),
    responses(
        (status = 200, body = JobPage),
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = "default", response = ErrorBody),
    ))]
pub async fn list_jobs(caller: Caller, query: HashMap<String, String>, state: State) -> Result<Response, ApiError> {
    let mut filter_state = None;
    let mut cursor = None;
    let mut limit = 20;
    for (key, value) in &query {
        match key.as_str() {
            "state" => {
                filter_state = Some(value.parse::<JobState>().map_err(|e| ApiError::bad_request("invalid_state", e))?);
            }
            "cursor" => {
                cursor = Some(jobs::Cursor::decode(value).ok_or_else(|| {
                    ApiError::bad_request("invalid_cursor", "the cursor is not one this API handed out")
                })?);
            }
            "limit" => {
                limit =
                    value.parse::<i64>().ok().filter(|l| (1..=100).contains(l)).ok_or_else(|| {
                        ApiError::bad_request("invalid_limit", "limit must be a number from 1 to 100")
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!("unexpected query parameter {other:?}"),
                ));
            }
        }
    }
    let (page, next) = jobs::list(&state.db, &caller, filter_state, cursor, limit)
        .await
        .map_err(|e| ApiError::unavailable("database_unavailable", e))?;
    Ok(warp::reply::json(&JobPage { jobs: page, next_cursor: next.map(|c| c.encode()) }).into_response())
}

/// Deletes the job and queues `media.deleted` together (so no service keeps working on it,
/// whatever happens next), then removes its original and MP3 from GridFS. A file that cannot
/// be removed now is left to retention, which removes files no job points to.
#[utoipa::path(delete, path = "/v1/jobs/{id}", operation_id = "delete_job", tag = "jobs", security(("bearer" = [])),
    summary = "Delete a job, its original and its MP3",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = ErrorBody),
        (status = 404, response = ErrorBody),
        (status = "default", response = ErrorBody),
    ))]
pub async fn delete_job(id: String, caller: Caller, state: State) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let files = jobs::files(&state.db, id, &caller)
        .await
        .map_err(|e| ApiError::unavailable("database_unavailable", e))?
        .ok_or_else(|| ApiError::not_found("job"))?;
    jobs::delete(&state.db, id).await.map_err(|e| ApiError::unavailable("database_unavailable", e))?;
    state.outbox_wake.notify_one();
    let mut to_remove = vec![(Bucket::Uploads, files.source_file_id)];
    to_remove.extend(files.output_file_id.map(|f| (Bucket::Audio, f)));
    for (bucket, file_id) in to_remove {
        let Ok(file_id) = file_id.parse() else { continue };
        if let Err(e) = state.store.delete(bucket, &file_id).await {
            tracing::warn!(job_id = %id, %file_id, error = %e, "could not remove a deleted job's file; retention will");
        }
    }
    tracing::info!(job_id = %id, by = %caller.id, "job deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A `job` event with each job of the caller's (an admin's: everyone's) that changes after
/// the stream opens: load the list when it opens (and reopens), then apply these. The stream
/// ends when the token expires or is revoked by a password change; reopening then needs a new one.
#[utoipa::path(get, path = "/v1/events", operation_id = "job_feed", tag = "jobs", security(("bearer" = [])),
    summary = "Follow all your jobs: Server-Sent Events with each change",
    responses(
        (status = 200, description = "An event stream of `job` events (the job) and `deleted` events (its id), until the token expires or is revoked", content_type = "text/event-stream", body = Job),
        (status = 401, response = ErrorBody),
        (status = 429, description = "Too many event streams open: `too_many_streams` (yours, per gateway process) \
            or `server_busy` (the process's)", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = "default", response = ErrorBody),
    ))]
pub async fn job_feed(caller: Caller, state: State) -> Result<Response, ApiError> {
    let place = state.job_events.admit(&caller.id)?;
    let stream = state.job_feed.follow(&caller, place, state.shutdown.clone());
    let stream = stream.take_until(Box::pin(state.verifier.clone().lapsed(caller)));
    Ok(warp::sse::reply(warp::sse::keep_alive().interval(Duration::from_secs(15)).stream(stream)).into_response())
}

/// A `job` event with the job at once and at each change, until it ends (a `deleted` event
/// if it is deleted meanwhile).
#[utoipa::path(get, path = "/v1/jobs/{id}/events", operation_id = "job_events", tag = "jobs", security(("bearer" = [])),
    summary = "Follow a job: Server-Sent Events until it ends",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = JobStreamEvent),
        (status = 401, response = ErrorBody),
        (status = 404, response = ErrorBody),
        (status = 429, description = "Too many event streams open: `too_many_streams` (yours, per gateway process) \
            or `server_busy` (the process's)", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = "default", response = ErrorBody),
    ))]
pub async fn job_event_stream(id: String, caller: Caller, state: State) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    // Before the database: a refused stream costs it nothing.
    let place = state.job_events.admit(&caller.id)?;
    let first = jobs::get(&state.db, id, &caller)
        .await
        .map_err(|e| ApiError::unavailable("database_unavailable", e))?
        .ok_or_else(|| ApiError::not_found("job"))?;
    let stream = state.job_events.follow(id, first, place, state.shutdown.clone());
    let stream = stream.take_until(Box::pin(state.verifier.clone().lapsed(caller)));
    Ok(warp::sse::reply(warp::sse::keep_alive().interval(Duration::from_secs(15)).stream(stream)).into_response())
}
