//! The public HTTP API (`/v1/...`): the filter tree and the small handlers; uploads,
//! downloads and job events live in their own modules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::TryStreamExt;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tunewire_contract::{JobId, Role, SearchPage};
use tunewire_media_store::{Bucket, MediaStore};
use tunewire_service_runtime::ApiError;
use tunewire_signed_links::LinkSigner;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode, header};
use warp::{Filter, Rejection, Reply};

use crate::caller::{Caller, TokenVerifier};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::quotas::Usage;
use crate::upload::{self, Details, RawUpload};
use crate::{download, job_events, jobs};

#[derive(Clone)]
pub struct State {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub store: MediaStore,
    pub verifier: Arc<TokenVerifier>,
    pub links: LinkSigner,
    pub http: reqwest::Client,
    pub outbox_wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub uploads: Arc<crate::upload_admission::UploadAdmission>,
    pub job_events: Arc<job_events::JobEvents>,
    /// Refused uploads whose bodies are being drained.
    pub drains: Arc<tokio::sync::Semaphore>,
    /// Probes running at once.
    pub probes: Arc<tokio::sync::Semaphore>,
}

type Response = warp::reply::Response;

pub const OPENAPI: &str = include_str!("../openapi.json");

fn with<T: Clone + Send + Sync + 'static>(
    value: T,
) -> impl Filter<Extract = (T,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || value.clone())
}

fn caller(state: State) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and(with(state)).and_then(
        |auth: Option<String>, state: State| async move {
            state.verifier.authorize(auth.as_deref()).await.map_err(warp::reject::custom)
        },
    )
}

/// What an upload's handler needs to answer before reading the body: the token, unchecked
/// (a refusal must still read some of the body first), and whether the client waits for
/// `100 Continue` before sending it.
fn upload_request() -> impl Filter<Extract = (upload::Door,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>("expect"))
        .and(warp::header::optional::<u64>("content-length"))
        .map(|authorization, expect: Option<String>, content_length| upload::Door {
            authorization,
            content_length,
            expects_continue: expect.is_some_and(|e| e.trim().eq_ignore_ascii_case("100-continue")),
        })
}

/// `true` for HEAD, `false` for GET.
fn get_or_head() -> impl Filter<Extract = (bool,), Error = Rejection> + Clone {
    warp::get().map(|| false).or(warp::head().map(|| true)).unify()
}

/// Passes only requests whose body is `multipart/form-data`.
fn multipart_body() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|content_type: Option<String>| async move {
            match content_type {
                Some(ct) if ct.trim().to_ascii_lowercase().starts_with("multipart/form-data") => Ok(()),
                _ => Err(warp::reject::not_found()),
            }
        })
        .untuple_one()
}

fn not_multipart_body() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|content_type: Option<String>| async move {
            match content_type {
                Some(ct) if ct.trim().to_ascii_lowercase().starts_with("multipart/") => Err(warp::reject::not_found()),
                _ => Ok(()),
            }
        })
        .untuple_one()
}

async fn answer(result: Result<Response, ApiError>) -> Result<Response, Rejection> {
    Ok(result.unwrap_or_else(Reply::into_response))
}

/// Each route is boxed: the whole tree as one type overflows the compiler's recursion limit.
pub fn routes(state: State) -> BoxedFilter<(Response,)> {
    let openapi = warp::path!("v1" / "openapi.json")
        .and(warp::get())
        .map(|| warp::reply::with_header(OPENAPI, header::CONTENT_TYPE, "application/json").into_response())
        .boxed();
    let auth_proxy = warp::path!("v1" / "auth" / String)
        .and(warp::post())
        .and(warp::body::content_length_limit(16 * 1024))
        .and(warp::body::bytes())
        .and(tunewire_service_runtime::server::peer())
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(warp::header::optional::<String>("authorization"))
        .and(with(state.clone()))
        .and_then(|action: String, body: Bytes, remote, forwarded, authorization, state: State| async move {
            answer(auth_proxy(action, body, remote, (forwarded, authorization), state).await).await
        })
        .boxed();
    let me = warp::path!("v1" / "me")
        .and(warp::get())
        .and(caller(state.clone()))
        .and(with(state.clone()))
        .and_then(|caller, state| async move { answer(me(caller, state).await).await })
        .boxed();
    let upload_form = warp::path!("v1" / "uploads")
        .and(warp::post().or(warp::put()).unify())
        .and(multipart_body())
        .and(upload_request())
        .and(warp::multipart::form().max_length(None))
        .and(with(state.clone()))
        .and_then(|door, form, state| async move { answer(upload::multipart(door, form, state).await).await })
        .boxed();
    let upload_raw = warp::path!("v1" / "uploads")
        .and(warp::post().or(warp::put()).unify())
        .and(not_multipart_body())
        .and(upload_request())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with(state.clone()))
        .and_then(|door, query, headers, body, state| async move {
            answer(raw_upload(door, query, headers, body, state).await).await
        })
        .boxed();
    let list = warp::path!("v1" / "jobs")
        .and(warp::get())
        .and(caller(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and(with(state.clone()))
        .and_then(|caller, query, state| async move { answer(list_jobs(caller, query, state).await).await })
        .boxed();
    let job = warp::path!("v1" / "jobs" / String)
        .and(warp::get())
        .and(caller(state.clone()))
        .and(with(state.clone()))
        .and_then(|id: String, caller, state| async move { answer(get_job(id, caller, state).await).await })
        .boxed();
    let delete = warp::path!("v1" / "jobs" / String)
        .and(warp::delete())
        .and(caller(state.clone()))
        .and(with(state.clone()))
        .and_then(|id: String, caller, state| async move { answer(delete_job(id, caller, state).await).await })
        .boxed();
    let events = warp::path!("v1" / "jobs" / String / "events")
        .and(warp::get())
        .and(caller(state.clone()))
        .and(with(state.clone()))
        .and_then(|id: String, caller, state| async move { answer(job_events(id, caller, state).await).await })
        .boxed();
    let file = warp::path!("v1" / "files" / String)
        .and(get_or_head())
        .and(caller(state.clone()))
        .and(warp::header::headers_cloned())
        .and(with(state.clone()))
        .and_then(|id: String, head, caller: Caller, headers, state: State| async move {
            let request = download::Request { head, headers };
            answer(download::serve(&state, &id, caller.id, caller.admin, request).await).await
        })
        .boxed();
    let signed = warp::path!("v1" / "downloads" / String)
        .and(get_or_head())
        .and(warp::header::headers_cloned())
        .and(with(state.clone()))
        .and_then(|token: String, head, headers, state: State| async move {
            answer(signed_download(token, download::Request { head, headers }, state).await).await
        })
        .boxed();
    let search = warp::path!("v1" / "search")
        .and(warp::get())
        .and(caller(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and(with(state))
        .and_then(|caller, query, state| async move { answer(search(caller, query, state).await).await })
        .boxed();
    openapi
        .or(auth_proxy)
        .unify()
        .or(me)
        .unify()
        .or(upload_form)
        .unify()
        .or(upload_raw)
        .unify()
        .or(list)
        .unify()
        .or(job)
        .unify()
        .or(delete)
        .unify()
        .or(events)
        .unify()
        .or(file)
        .unify()
        .or(signed)
        .unify()
        .or(search)
        .unify()
        .boxed()
}

async fn raw_upload<B, S>(
    door: upload::Door,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: S,
    state: State,
) -> Result<Response, ApiError>
where
    B: Buf + Send,
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send + 'static,
{
    let details = details_from_query(query);
    let raw = RawUpload {
        filename: upload::raw_filename(
            headers.get("x-filename").map(warp::http::HeaderValue::as_bytes),
            headers.get(header::CONTENT_DISPOSITION).and_then(|v| v.to_str().ok()),
        ),
        content_length: headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()),
    };
    let body = Box::pin(body.map_ok(|mut buf| buf.copy_to_bytes(buf.remaining())).map_err(|e| e.to_string()));
    upload::raw(door, raw, details, body, state).await
}

/// Raw uploads take their details from the query string.
fn details_from_query(query: HashMap<String, String>) -> Result<Details, ApiError> {
    let mut details = Details::default();
    for (key, value) in query {
        match key.as_str() {
            "title" => details.title = Some(value),
            "artist" => details.artist = Some(value),
            "album" => details.album = Some(value),
            "preset" => details.preset = Some(value),
            "loudnorm" => details.loudnorm = Some(value),
            other => {
                return Err(ApiError::bad_request("unknown_field", format!("unexpected query parameter {other:?}")));
            }
        }
    }
    Ok(details)
}

/// Register, login and password changes live in auth; a client only needs the gateway's
/// address. The client's address travels in `X-Forwarded-For` (auth limits attempts by it),
/// the bearer token of a password change in `Authorization`, and auth's `Retry-After`
/// comes back.
async fn auth_proxy(
    action: String,
    body: Bytes,
    remote: Option<SocketAddr>,
    (forwarded, authorization): (Option<String>, Option<String>),
    state: State,
) -> Result<Response, ApiError> {
    if !["register", "login", "password"].contains(&action.as_str()) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route"));
    }
    let url = format!("{}/{action}", state.config.auth_url.trim_end_matches('/'));
    let mut request = state
        .http
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .timeout(Duration::from_secs(10));
    if let Some(remote) = remote {
        let chain = match forwarded {
            Some(f) if !f.trim().is_empty() => format!("{f}, {}", remote.ip()),
            _ => remote.ip().to_string(),
        };
        request = request.header("x-forwarded-for", chain);
    }
    if let Some(authorization) = authorization.filter(|_| action == "password") {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let resp = request.send().await.map_err(|e| ApiError::unavailable("auth_unavailable", e))?;
    let status = resp.status();
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let bytes = resp.bytes().await.map_err(|e| ApiError::unavailable("auth_unavailable", e))?;
    let mut response =
        warp::reply::with_header(bytes.to_vec(), header::CONTENT_TYPE, "application/json").into_response();
    *response.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if let Some(value) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Ok(response)
}

/// The caller, and where they stand against their quotas.
async fn me(caller: Caller, state: State) -> Result<Response, ApiError> {
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

async fn get_job(id: String, caller: Caller, state: State) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    match jobs::get(&state.db, id, &caller).await.map_err(|e| ApiError::unavailable("database_unavailable", e))? {
        Some(job) => Ok(warp::reply::json(&job).into_response()),
        None => Err(ApiError::not_found("job")),
    }
}

async fn list_jobs(caller: Caller, query: HashMap<String, String>, state: State) -> Result<Response, ApiError> {
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
async fn delete_job(id: String, caller: Caller, state: State) -> Result<Response, ApiError> {
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

async fn job_events(id: String, caller: Caller, state: State) -> Result<Response, ApiError> {
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

async fn signed_download(token: String, request: download::Request, state: State) -> Result<Response, ApiError> {
    let claims = state
        .links
        .verify(&token, chrono::Utc::now())
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.code(), e.to_string()))?;
    download::serve(&state, claims.file_id.as_str(), claims.owner, false, request).await
}

/// Longest search parameter forwarded to the catalog.
const MAX_SEARCH_PARAMETER_BYTES: usize = 4096;

/// Fronts the catalog's search with the caller's identity: a user searches their own tracks.
async fn search(caller: Caller, query: HashMap<String, String>, state: State) -> Result<Response, ApiError> {
    let mut params: Vec<(String, String)> = Vec::new();
    for (key, value) in query {
        match key.as_str() {
            // The catalog holds each to far less (400 with its own reason); this bounds what
            // is forwarded at all, as a URL too long for the catalog request could not be.
            _ if value.len() > MAX_SEARCH_PARAMETER_BYTES => {
                return Err(ApiError::bad_request(
                    "query_too_long",
                    format!("`{key}` is longer than {MAX_SEARCH_PARAMETER_BYTES} bytes"),
                ));
            }
            "q" | "tag" | "artist" | "limit" | "cursor" => params.push((key, value)),
            other => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!("unexpected query parameter {other:?}"),
                ));
            }
        }
    }
    if !caller.admin {
        params.push(("owner".into(), caller.id.to_string()));
    }
    let resp = state
        .http
        .get(format!("{}/search", state.config.catalog_url.trim_end_matches('/')))
        .query(&params)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| ApiError::unavailable("catalog_unavailable", e))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let unavailable = |e| ApiError::unavailable("catalog_unavailable", e);
    // A refusal (the catalog's own limits on a query) is passed on as the catalog words it.
    if status.is_success() {
        let page: SearchPage = resp.json().await.map_err(unavailable)?;
        return Ok(warp::reply::with_status(warp::reply::json(&page), status).into_response());
    }
    let refusal: serde_json::Value = resp.json().await.map_err(unavailable)?;
    Ok(warp::reply::with_status(warp::reply::json(&refusal), status).into_response())
}
