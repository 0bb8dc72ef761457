//! Resumable uploads: tus 1.0.0 (tus.io) at `/v1/tus/`, with the extensions creation,
//! creation-with-upload, creation-defer-length, termination, expiration and checksum. Bytes go
//! into the GridFS file the upload becomes (`receive`); the upload's state lives in
//! PostgreSQL (`record`), so any replica continues what another began. The last byte makes
//! the job exactly as `POST /v1/uploads` does (probe, limits, quotas, dedupe, outbox), and
//! its id comes back in `Tunewire-Job-Id`. The client's `Upload-Metadata` is `metadata`;
//! `Upload-Checksum` is `checksum`.

mod checksum;
mod metadata;
mod receive;
pub mod record;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, TryStreamExt};
use mongodb::bson::{doc, oid::ObjectId};
use sha2::Digest;
use tracing::Instrument as _;
use tunewire_contract::{FileId, JobId};
use tunewire_media_store::{Bucket, CHUNK_SIZE, MediaStore, StoreError, StoredFile};
use tunewire_service_runtime::ApiError;
use tunewire_service_runtime::http_error::ErrorBody;
use uuid::Uuid;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::{Reply, reply::Response};

use crate::caller::Caller;
use crate::quotas::Usage;
use crate::state::State;
use crate::upload::{self, InFlight, Received, idle_limited, store_error};
use checksum::Checksum;
use receive::{Ended, Patch, Stored};
use record::{Claim, Upload};

pub const VERSION: &str = "1.0.0";
pub const EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,termination,expiration,checksum";
/// The one body type a PATCH (and creation-with-upload) carries.
pub const OFFSET_STREAM: &str = "application/offset+octet-stream";
/// The header naming the job the last byte made.
pub const JOB_ID_HEADER: &str = "tunewire-job-id";
/// What a browser client may read and send (CORS).
pub const EXPOSED_HEADERS: [&str; 10] = [
    "location",
    "upload-offset",
    "upload-length",
    "upload-expires",
    "upload-metadata",
    "upload-defer-length",
    "tus-resumable",
    "tus-version",
    "tus-max-size",
    JOB_ID_HEADER,
];
pub const ALLOWED_HEADERS: [&str; 9] = [
    "authorization",
    "content-type",
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-defer-length",
    "upload-checksum",
    "x-requested-with",
];

/// A tus request: its headers (the token among them) and, for PATCH and creation, its body.
pub struct TusRequest {
    pub method: Method,
    pub headers: HeaderMap,
}

impl TusRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every tus request but OPTIONS names the protocol version it speaks: the refusal if not.
    fn version_refused(&self) -> Option<Response> {
        if self.header("tus-resumable") == Some(VERSION) {
            return None;
        }
        let error = ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "unsupported_tus_version",
            format!("send Tus-Resumable: {VERSION}, the tus version this server speaks"),
        );
        let mut response = error.into_response();
        response.headers_mut().insert("tus-version", HeaderValue::from_static(VERSION));
        Some(finish(response))
    }

    async fn caller(&self, state: &State) -> Result<Caller, ApiError> {
        let authorization = crate::session::authorization(&self.method, &self.headers)?;
        state.verifier.authorize(authorization.as_deref()).await
    }

    fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.header(name)
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| {
                    ApiError::bad_request("invalid_header", format!("{name} must be a non-negative integer"))
                })
            })
            .transpose()
    }

    fn is_offset_stream(&self) -> bool {
        self.header("content-type").is_some_and(|ct| ct.trim().eq_ignore_ascii_case(OFFSET_STREAM))
    }
}

/// Every tus answer says which protocol it speaks and is never cached.
fn finish(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert("tus-resumable", HeaderValue::from_static(VERSION));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn answer(result: Result<Response, ApiError>) -> Response {
    finish(result.unwrap_or_else(Reply::into_response))
}

fn empty(status: StatusCode) -> Response {
    warp::reply::with_status(warp::reply(), status).into_response()
}

fn set(response: &mut Response, name: &'static str, value: &impl ToString) {
    if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
        response.headers_mut().insert(name, value);
    }
}

/// RFC 9110's HTTP-date, as `Upload-Expires` wants it.
fn http_date(at: DateTime<Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn progress_headers(response: &mut Response, upload: &Upload, received: u64) {
    set(response, "upload-offset", &received);
    set(response, "upload-expires", &http_date(upload.expires_at));
}

fn not_found() -> ApiError {
    ApiError::not_found("upload")
}

fn gone() -> ApiError {
    ApiError::new(StatusCode::GONE, "upload_expired", "this upload expired and was removed; start a new one")
}

fn database(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable("database_unavailable", e)
}

fn lease_error(e: record::LeaseError) -> ApiError {
    match e {
        record::LeaseError::Lost => busy(),
        record::LeaseError::Database(e) => database(e),
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| not_found())
}

/// 423, as tusd answers: tus clients retry it (a 409 or any other 4xx on HEAD makes
/// tus-js-client start the upload over).
fn busy() -> ApiError {
    ApiError::new(
        StatusCode::LOCKED,
        "upload_busy",
        "another request is writing this upload; ask HEAD for the offset and continue from there",
    )
    .retry_after(std::time::Duration::from_secs(1))
}

/// `OPTIONS`: what this server supports.
pub fn options(state: &State) -> Response {
    let mut response = empty(StatusCode::NO_CONTENT);
    response.headers_mut().insert("tus-version", HeaderValue::from_static(VERSION));
    response.headers_mut().insert("tus-extension", HeaderValue::from_static(EXTENSIONS));
    response.headers_mut().insert("tus-checksum-algorithm", HeaderValue::from_static(checksum::ALGORITHMS));
    set(&mut response, "tus-max-size", &state.config.max_upload_bytes);
    finish(response)
}

/// `POST`: a new upload, with its first bytes when the body carries them.
pub async fn create<S>(request: TusRequest, body: S, state: State) -> Response
where
    S: Stream<Item = Result<Bytes, String>> + Unpin + Send + 'static,
{
    if let Some(refused) = request.version_refused() {
        return refused;
    }
    answer(create_upload(request, body, state).await)
}

async fn create_upload<S>(request: TusRequest, body: S, state: State) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin + Send + 'static,
{
    let caller = request.caller(&state).await?;
    let length = request.number("upload-length")?;
    let deferred = request.header("upload-defer-length").map(str::trim);
    match (length, deferred) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("invalid_header", "send Upload-Length or Upload-Defer-Length, not both"));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "missing_upload_length",
                "a new upload needs Upload-Length, or Upload-Defer-Length: 1",
            ));
        }
        (None, Some(value)) if value != "1" => {
            return Err(ApiError::bad_request("invalid_header", "Upload-Defer-Length must be 1"));
        }
        _ => {}
    }
    let limit = state.config.max_upload_bytes;
    if length.is_some_and(|l| l > limit) {
        return Err(store_error(StoreError::TooLarge { limit }));
    }
    if length == Some(0) {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_media", "an empty file is not media"));
    }
    let raw_metadata = request.header("upload-metadata").unwrap_or("").to_string();
    let metadata = metadata::parse(Some(&raw_metadata))?;
    let usage = Usage::of(&state.db, caller.id).await.map_err(database)?;
    let declared = length.unwrap_or(0) as i64;
    usage.admits(&state.config.quotas, declared, false).map_err(crate::quotas::Exceeded::api_error)?;
    let upload = Upload {
        id: Uuid::new_v4(),
        owner: caller.id,
        file_id: FileId::from_bytes(ObjectId::new().bytes()),
        length,
        received: 0,
        tail: Vec::new(),
        sha256_state: Stored::state_of(&sha2::Sha256::new()),
        metadata: raw_metadata,
        filename: metadata.filename,
        details: metadata.details,
        expires_at: Utc::now(),
        created_at: Utc::now(),
        trace: tunewire_service_runtime::telemetry::TraceHeaders::current(),
        job_id: None,
    };
    let limits = &state.config.tus;
    if !record::create(&state.db, &upload, limits.expires_after, limits.open_per_user).await.map_err(database)? {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_open_uploads",
            format!(
                "you have {} unfinished uploads, the most one user may have; finish or delete one (DELETE its URL) first",
                limits.open_per_user
            ),
        ));
    }
    tracing::info!(upload_id = %upload.id, owner = %caller.id, length = ?length, "resumable upload created");
    let location = format!("/v1/tus/{}", upload.id);
    let mut response = if request.is_offset_stream() {
        // Refused or not, the upload exists: the client continues it at Location.
        let mut request = request;
        // Creation-with-upload starts at 0 without saying so.
        request.headers.insert("upload-offset", HeaderValue::from_static("0"));
        let mut written = write(request, upload.id, body, state, caller).await;
        if written.status().is_success() {
            *written.status_mut() = StatusCode::CREATED;
        }
        written
    } else {
        let Some(created) = record::find(&state.db, upload.id, caller.id).await.map_err(database)? else {
            return Err(not_found());
        };
        let mut response = empty(StatusCode::CREATED);
        set(&mut response, "upload-expires", &http_date(created.expires_at));
        response
    };
    set(&mut response, "location", &location);
    Ok(response)
}

/// `HEAD`: how much of the upload is stored.
pub async fn head(id: String, request: TusRequest, state: State) -> Response {
    if let Some(refused) = request.version_refused() {
        return refused;
    }
    answer(
        async {
            let caller = request.caller(&state).await?;
            let mut upload = find(&state, &id, &caller).await?;
            if upload.job_id.is_none() && Some(upload.received) == upload.length {
                // Every byte is in but the job was not made: a client that sees the whole
                // offset stops, so the job is made now, in a task of its own (a client that
                // hangs up does not cut it short). Anything but a verdict on the file is
                // "busy, ask again": any other refusal of a HEAD makes tus clients start over.
                let (state, caller, id) = (state.clone(), caller.clone(), upload.id);
                let finished = tokio::spawn(async move { finish_stored(&state, &caller, id).await }.in_current_span())
                    .await
                    .unwrap_or_else(|e| Err(ApiError::internal("tus_complete", e)));
                upload.job_id = Some(
                    finished.map_err(|e| if e.status == StatusCode::UNSUPPORTED_MEDIA_TYPE { e } else { busy() })?,
                );
            }
            let mut response = empty(StatusCode::OK);
            progress_headers(&mut response, &upload, upload.received);
            match upload.length {
                Some(length) => set(&mut response, "upload-length", &length),
                None => set(&mut response, "upload-defer-length", &1),
            }
            if !upload.metadata.is_empty() {
                set(&mut response, "upload-metadata", &upload.metadata);
            }
            if let Some(job) = upload.job_id {
                set(&mut response, JOB_ID_HEADER, &job);
            }
            Ok(response)
        }
        .await,
    )
}

/// `complete_stored` under the upload's lease, for a request that holds none (HEAD).
async fn finish_stored(state: &State, caller: &Caller, id: Uuid) -> Result<JobId, ApiError> {
    let lease = Uuid::new_v4();
    let upload = match record::claim(&state.db, id, caller.id, lease).await.map_err(database)? {
        Claim::Claimed(upload) => *upload,
        Claim::Busy => return Err(busy()),
        Claim::Missing => return Err(not_found()),
    };
    let finished = match upload.job_id {
        Some(job) => Ok(job),
        None => complete_stored(state, caller, &upload, lease).await,
    };
    if let Err(e) = record::release(&state.db, id, lease).await {
        tracing::warn!(upload_id = %id, error = %e, "could not release an upload's lease");
    }
    finished
}

async fn find(state: &State, id: &str, caller: &Caller) -> Result<Upload, ApiError> {
    let upload = record::find(&state.db, parse_id(id)?, caller.id).await.map_err(database)?.ok_or_else(not_found)?;
    if upload.expires_at < Utc::now() && upload.job_id.is_none() {
        return Err(gone());
    }
    Ok(upload)
}

/// `DELETE` (termination): the upload and every stored byte of it go.
pub async fn delete(id: String, request: TusRequest, state: State) -> Response {
    if let Some(refused) = request.version_refused() {
        return refused;
    }
    answer(
        async {
            let caller = request.caller(&state).await?;
            let id = parse_id(&id)?;
            let upload = match record::claim(&state.db, id, caller.id, Uuid::new_v4()).await.map_err(database)? {
                Claim::Claimed(upload) => *upload,
                Claim::Busy => return Err(busy()),
                Claim::Missing => return Err(not_found()),
            };
            // A finished upload's file is its job's now.
            if upload.job_id.is_none() {
                state.store.delete(Bucket::Uploads, &upload.file_id).await.map_err(store_error)?;
            }
            record::remove(&state.db, id).await.map_err(database)?;
            tracing::info!(upload_id = %id, owner = %caller.id, "resumable upload terminated");
            Ok(empty(StatusCode::NO_CONTENT))
        }
        .await,
    )
}

/// `PATCH`: bytes at `Upload-Offset`.
pub async fn patch<S>(id: String, request: TusRequest, body: S, state: State) -> Response
where
    S: Stream<Item = Result<Bytes, String>> + Unpin + Send + 'static,
{
    if let Some(refused) = request.version_refused() {
        return refused;
    }
    let caller = match request.caller(&state).await {
        Ok(caller) => caller,
        Err(e) => return answer(Err(e)),
    };
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return answer(Err(e)),
    };
    finish(write(request, id, body, state, caller).await)
}

/// Receives a body into upload `id`. Runs as its own task: a client that goes away mid-body
/// ends the body, not the work, so what arrived is still recorded.
async fn write<S>(request: TusRequest, id: Uuid, body: S, state: State, caller: Caller) -> Response
where
    S: Stream<Item = Result<Bytes, String>> + Unpin + Send + 'static,
{
    let task = tokio::spawn(
        async move {
            let _admitted = match state.uploads.admit(&caller.id) {
                Ok(place) => place,
                Err(e) => return answer(Err(e)),
            };
            let _in_flight = InFlight::new(&state);
            let lease = Uuid::new_v4();
            let upload = match record::claim(&state.db, id, caller.id, lease).await {
                Ok(Claim::Claimed(upload)) => *upload,
                Ok(Claim::Busy) => return answer(Err(busy())),
                Ok(Claim::Missing) => return answer(Err(not_found())),
                Err(e) => return answer(Err(database(e))),
            };
            let response = answer(write_claimed(&request, &upload, lease, body, &state, &caller).await);
            if let Err(e) = record::release(&state.db, id, lease).await {
                // The lease runs out by itself.
                tracing::warn!(upload_id = %id, error = %e, "could not release an upload's lease");
            }
            response
        }
        .in_current_span(),
    );
    task.await.unwrap_or_else(|e| answer(Err(ApiError::internal("tus_patch", e))))
}

async fn write_claimed<S>(
    request: &TusRequest,
    upload: &Upload,
    lease: Uuid,
    body: S,
    state: &State,
    caller: &Caller,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin + Send + 'static,
{
    if upload.expires_at < Utc::now() && upload.job_id.is_none() {
        return Err(gone());
    }
    if !request.is_offset_stream() {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
            format!("a PATCH's body must be Content-Type: {OFFSET_STREAM}"),
        ));
    }
    let Some(offset) = request.number("upload-offset")? else {
        return Err(ApiError::bad_request("missing_upload_offset", "a PATCH needs Upload-Offset"));
    };
    if offset != upload.received {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "offset_mismatch",
            format!("Upload-Offset is {offset} but {} bytes are stored; continue from there", upload.received),
        ));
    }
    let checksum = request.header("upload-checksum").map(Checksum::parse).transpose()?;
    let finished = match upload.job_id {
        Some(job) => Some(job),
        None if Some(upload.received) == upload.length => Some(complete_stored(state, caller, upload, lease).await?),
        None => None,
    };
    if let Some(job) = finished {
        let mut response = empty(StatusCode::NO_CONTENT);
        progress_headers(&mut response, upload, upload.received);
        set(&mut response, JOB_ID_HEADER, &job);
        return Ok(response);
    }
    let limit = state.config.max_upload_bytes;
    let length = match (upload.length, request.number("upload-length")?) {
        (Some(known), Some(said)) if known != said => {
            return Err(ApiError::bad_request(
                "invalid_header",
                format!("this upload's length is {known}, not {said}"),
            ));
        }
        (None, Some(said)) if said > limit => return Err(store_error(StoreError::TooLarge { limit })),
        (None, Some(said)) if said < upload.received => {
            return Err(ApiError::bad_request(
                "invalid_header",
                format!("Upload-Length {said} is less than the {} bytes already stored", upload.received),
            ));
        }
        (None, Some(said)) => {
            let usage = Usage::of(&state.db, caller.id).await.map_err(database)?;
            // What is stored of it already counts.
            let more = (said - upload.received) as i64;
            usage.admits(&state.config.quotas, more, false).map_err(crate::quotas::Exceeded::api_error)?;
            record::set_length(&state.db, upload.id, lease, said).await.map_err(lease_error)?;
            Some(said)
        }
        (known, _) => known,
    };
    let room = length.unwrap_or(limit).saturating_sub(upload.received);
    let start = stored_of(upload)?;
    let stalled = Arc::new(AtomicBool::new(false));
    let metrics = state.metrics.clone();
    let body = idle_limited(body, state.config.upload_idle_timeout, stalled.clone()).inspect_ok(move |piece| {
        metrics.bytes_in.inc_by(piece.len() as u64);
    });
    let chunks = state.store.chunk_upload(Bucket::Uploads, upload.file_id.clone());
    let patch = Patch { db: &state.db, id: upload.id, lease, chunks: &chunks, ttl: state.config.tus.expires_after };
    let (stored, ended) = receive::receive(&patch, start, body, room, checksum).await.map_err(|e| match e {
        receive::PatchError::Lease(e) => lease_error(e),
        receive::PatchError::Store(e) => store_error(e),
    })?;
    let refused = |error: ApiError, received: u64| {
        let mut response = error.into_response();
        progress_headers(&mut response, upload, received);
        Ok(response)
    };
    match ended {
        Ended::Mismatch => return refused(checksum::mismatch(), stored.received),
        Ended::TooLong => {
            let error = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "upload_too_long",
                format!("the body goes past the upload's length; {} bytes are stored", stored.received),
            );
            return refused(error, stored.received);
        }
        Ended::Cut(reason) if Some(stored.received) != length => {
            let error = if stalled.load(Ordering::Relaxed) {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "upload_stalled",
                    format!(
                        "nothing came for {} s; resume from Upload-Offset",
                        state.config.upload_idle_timeout.as_secs()
                    ),
                )
            } else {
                ApiError::bad_request(
                    "upload_interrupted",
                    format!("the body was cut off ({reason}); resume from Upload-Offset"),
                )
            };
            return refused(error, stored.received);
        }
        Ended::Whole | Ended::Cut(_) => {}
    }
    let mut response = empty(StatusCode::NO_CONTENT);
    let mut upload = upload.clone();
    upload.expires_at = Utc::now() + chrono::Duration::from_std(state.config.tus.expires_after).unwrap_or_default();
    progress_headers(&mut response, &upload, stored.received);
    if Some(stored.received) == length {
        let job = complete(state, caller, &upload, lease, stored).await?;
        set(&mut response, JOB_ID_HEADER, &job);
    }
    Ok(response)
}

/// The last byte is stored: the file is made whole and judged, and becomes a job. A verdict
/// against it (not media, no sound) removes the upload with its bytes; any other failure (the
/// store, the database, a quota) leaves it complete and unfinished, for a retry (PATCH or
/// HEAD) to finish, or the expiry sweep to remove.
async fn complete(
    state: &State,
    caller: &Caller,
    upload: &Upload,
    lease: Uuid,
    stored: Stored,
) -> Result<JobId, ApiError> {
    // The probe may wait for a slot: the lease must outlive it.
    tokio::select! {
        done = complete_leased(state, caller, upload, lease, stored) => done,
        lost = record::keep(&state.db, upload.id, lease) => Err(lease_error(lost)),
    }
}

async fn complete_leased(
    state: &State,
    caller: &Caller,
    upload: &Upload,
    lease: Uuid,
    stored: Stored,
) -> Result<JobId, ApiError> {
    let Stored { received, tail, mut hasher } = stored;
    hasher.update(&tail);
    let sha256 = hex::encode(hasher.finalize());
    let chunks = state.store.chunk_upload(Bucket::Uploads, upload.file_id.clone());
    let last = (received - tail.len() as u64) / CHUNK_SIZE;
    // Each step can run again: a completion that failed half-way is simply repeated.
    async {
        chunks.uncomplete().await?;
        chunks.discard_from(last).await?;
        if !tail.is_empty() {
            chunks.insert(&[(last, tail.freeze())]).await?;
        }
        chunks.complete(received, &upload.filename, doc! {"owner_id": caller.id.to_string()}).await
    }
    .await
    .map_err(store_error)?;
    // The job is this request's trace; the upload began in the creating request's.
    upload.trace.link_from(&tracing::Span::current());
    let received = Received {
        stored: StoredFile { id: upload.file_id.clone(), size: received, sha256 },
        filename: upload.filename.clone(),
        began: upload.created_at,
    };
    let judged = upload::verdict(state, &received).await;
    let finishing = record::Finishing { id: upload.id, lease };
    let recorded = match judged {
        Ok(()) => upload::record_job(state, caller, &received, &upload.details, JobId::new(), Some(finishing)).await,
        Err(refusal) => Err(refusal),
    };
    match recorded {
        Ok((job, _)) => {
            tracing::info!(upload_id = %upload.id, job_id = %job, "resumable upload finished");
            Ok(job)
        }
        Err(refusal) if matches!(refusal.status, StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::BAD_REQUEST) => {
            forget(state, upload).await;
            Err(refusal)
        }
        Err(failure) => Err(failure),
    }
}

/// What is stored of `upload`, as `receive` continues it.
fn stored_of(upload: &Upload) -> Result<Stored, ApiError> {
    Stored::restore(upload.received, &upload.tail, &upload.sha256_state)
        .ok_or_else(|| ApiError::internal("tus_state", format!("upload {} has an unreadable hash state", upload.id)))
}

/// Finishes an upload whose bytes are all stored but whose job is not made yet (a completion
/// that failed for a moment), for the request holding its lease.
async fn complete_stored(state: &State, caller: &Caller, upload: &Upload, lease: Uuid) -> Result<JobId, ApiError> {
    complete(state, caller, upload, lease, stored_of(upload)?).await
}

/// Removes an upload refused at its end, bytes and record.
async fn forget(state: &State, upload: &Upload) {
    if let Err(e) = state.store.delete(Bucket::Uploads, &upload.file_id).await {
        tracing::warn!(upload_id = %upload.id, error = %e, "could not remove a refused upload's bytes");
    }
    if let Err(e) = record::remove(&state.db, upload.id).await {
        tracing::warn!(upload_id = %upload.id, error = %e, "could not remove a refused upload's record");
    }
}

/// Removes expired uploads that never finished, with their bytes. Any replica may sweep.
pub async fn sweep_expired(db: &sqlx::PgPool, store: &MediaStore) -> Result<usize, crate::retention::SweepError> {
    let files = record::take_expired(db, 500).await?;
    for file in &files {
        store.delete(Bucket::Uploads, file).await?;
    }
    Ok(files.len())
}

/// The described routes, for the OpenAPI document.
pub mod described {
    use super::*;

    #[utoipa::path(options, path = "/v1/tus/", operation_id = "tus_options", tag = "resumable uploads",
        summary = "What this tus server supports (tus 1.0.0 discovery)",
        responses((status = 204, description = "Tus-Version, Tus-Extension, Tus-Max-Size and Tus-Checksum-Algorithm headers")))]
    #[expect(dead_code, reason = "documents `options`")]
    pub(crate) fn options() {}

    #[utoipa::path(post, path = "/v1/tus/", operation_id = "tus_create", tag = "resumable uploads", security(("bearer" = [])),
        summary = "Start a resumable upload (tus creation; the body may carry its first bytes)",
        params(
            ("Tus-Resumable" = String, Header, description = "1.0.0"),
            ("Upload-Length" = Option<u64>, Header, description = "The file's size in bytes"),
            ("Upload-Defer-Length" = Option<u8>, Header, description = "1: the size comes with a later PATCH"),
            ("Upload-Metadata" = Option<String>, Header, description = "`key base64`, comma-separated: filename, title, artist, album, preset, loudnorm"),
        ),
        request_body(content((crate::openapi::Binary = "application/offset+octet-stream")), description = "Optional first bytes"),
        responses(
            (status = 201, description = "Created; Location is the upload's URL, Upload-Expires when it is removed unless continued"),
            (status = 400, response = ErrorBody), (status = 401, response = ErrorBody), (status = 412, response = ErrorBody),
            (status = 413, response = ErrorBody), (status = 415, response = ErrorBody), (status = 429, response = ErrorBody),
            (status = 507, response = ErrorBody), (status = "default", response = ErrorBody),
        ))]
    #[expect(dead_code, reason = "documents `create`")]
    pub(crate) fn create() {}

    #[utoipa::path(head, path = "/v1/tus/{id}", operation_id = "tus_offset", tag = "resumable uploads", security(("bearer" = [])),
        summary = "How many bytes of the upload are stored (Upload-Offset)",
        params(("id" = Uuid, Path), ("Tus-Resumable" = String, Header, description = "1.0.0")),
        responses(
            (status = 200, description = "Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires; Tunewire-Job-Id once finished"),
            (status = 401, response = ErrorBody), (status = 404, response = ErrorBody), (status = 410, response = ErrorBody),
            (status = 412, response = ErrorBody), (status = "default", response = ErrorBody),
        ))]
    #[expect(dead_code, reason = "documents `head`")]
    pub(crate) fn head() {}

    #[utoipa::path(patch, path = "/v1/tus/{id}", operation_id = "tus_append", tag = "resumable uploads", security(("bearer" = [])),
        summary = "Append bytes at Upload-Offset; the last byte makes the job",
        params(
            ("id" = Uuid, Path), ("Tus-Resumable" = String, Header, description = "1.0.0"),
            ("Upload-Offset" = u64, Header, description = "Where these bytes go: the offset HEAD reports"),
            ("Upload-Length" = Option<u64>, Header, description = "For a deferred length"),
            ("Upload-Checksum" = Option<String>, Header, description = "`sha1 <base64>` or `sha256 <base64>` of this body"),
        ),
        request_body(content((crate::openapi::Binary = "application/offset+octet-stream"))),
        responses(
            (status = 204, description = "Stored; Upload-Offset is the new offset; Tunewire-Job-Id names the job after the last byte"),
            (status = 400, response = ErrorBody), (status = 401, response = ErrorBody), (status = 404, response = ErrorBody),
            (status = 408, response = ErrorBody), (status = 409, response = ErrorBody), (status = 410, response = ErrorBody),
            (status = 412, response = ErrorBody), (status = 413, response = ErrorBody), (status = 415, response = ErrorBody),
            (status = 429, response = ErrorBody), (status = 460, response = ErrorBody), (status = 507, response = ErrorBody),
            (status = "default", response = ErrorBody),
        ))]
    #[expect(dead_code, reason = "documents `patch`")]
    pub(crate) fn patch() {}

    #[utoipa::path(delete, path = "/v1/tus/{id}", operation_id = "tus_terminate", tag = "resumable uploads", security(("bearer" = [])),
        summary = "Abandon an upload: every stored byte of it goes (tus termination)",
        params(("id" = Uuid, Path), ("Tus-Resumable" = String, Header, description = "1.0.0")),
        responses(
            (status = 204, description = "Removed"),
            (status = 401, response = ErrorBody), (status = 404, response = ErrorBody), (status = 409, response = ErrorBody),
            (status = 412, response = ErrorBody), (status = "default", response = ErrorBody),
        ))]
    #[expect(dead_code, reason = "documents `delete`")]
    pub(crate) fn delete() {}
}
