//! The caller's account and jobs: `/v1/me` and `/v1/jobs...`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tunewire_contract::{JobId, Role};
use tunewire_media_store::Bucket;
use tunewire_service_runtime::ApiError;
use warp::Reply;
use warp::http::StatusCode;

use crate::caller::Caller;
use crate::jobs;
use crate::quotas::Usage;
use crate::state::State;

type Response = warp::reply::Response;

/// The caller, and where they stand against their quotas.
pub async fn me(caller: Caller, state: State) -> Result<Response, ApiError> {
    let role = if caller.admin { Role::Admin } else { Role::User };
    let usage = Usage::of(&state.db, caller.id).await.map_err(|e| ApiError::unavailable("database_unavailable", e))?;
    let mut quotas = usage.to_json(&state.config.quotas);
    quotas["uploads_in_flight"] = json!({"limit": state.config.upload_limits.per_user});
    quotas["event_streams"] = json!({"limit": state.config.stream_limits.per_user});
    let body = json!({"id": caller.id, "email": caller.email, "role": role, "quotas": quotas});
    Ok(warp::reply::json(&body).into_response())
}

fn job_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("job"))
}

pub async fn get_job(id: String, caller: Caller, state: State) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    match jobs::get(&state.db, id, &caller).await.map_err(|e| ApiError::unavailable("database_unavailable", e))? {
        Some(job) => Ok(warp::reply::json(&job).into_response()),
        None => Err(ApiError::not_found("job")),
    }
}

pub async fn list_jobs(caller: Caller, query: HashMap<String, String>, state: State) -> Result<Response, ApiError> {
    let mut filter_state = None;
    let mut cursor = None;
    let mut limit = 20;
    for (key, value) in &query {
        match key.as_str() {
            "state" if jobs::STATES.contains(&value.as_str()) => filter_state = Some(value.as_str()),
            "state" => {
                let states = jobs::STATES.join(", ");
                return Err(ApiError::bad_request("invalid_state", format!("state must be one of {states}")));
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
    Ok(warp::reply::json(&json!({"jobs": page, "next_cursor": next.map(|c| c.encode())})).into_response())
}

/// Deletes the job and queues `media.deleted` together (so no service keeps working on it,
/// whatever happens next), then removes its original and MP3 from GridFS. A file that cannot
/// be removed now is left to retention, which removes files no job points to.
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

pub async fn job_event_stream(id: String, caller: Caller, state: State) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    // Before the database: a refused stream costs it nothing.
    let place = state.job_events.admit(&caller.id)?;
    let first = jobs::get(&state.db, id, &caller)
        .await
        .map_err(|e| ApiError::unavailable("database_unavailable", e))?
        .ok_or_else(|| ApiError::not_found("job"))?;
    let stream = state.job_events.follow(id, first, place, state.shutdown.clone());
    Ok(warp::sse::reply(warp::sse::keep_alive().interval(Duration::from_secs(15)).stream(stream)).into_response())
}
