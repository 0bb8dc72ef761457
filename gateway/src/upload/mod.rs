//! Receiving an upload, multipart or raw body: streamed into GridFS, then probed by FFmpeg
//! from there (`probe`); refused (and removed) when it is not media with sound; deduplicated
//! by SHA-256 per owner and preset; recorded as a job with its outbox event. What the client
//! says besides the bytes is `details`; the form's parts `form`; file names `filename`; what
//! a refused upload's body is read for `drain`; a client that stops sending `idle`.

mod details;
mod drain;
mod filename;
mod form;
mod idle;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use mongodb::bson::doc;
use serde::Serialize;
use tunewire_contract::{JobId, MediaUploaded, Owner, SourceFile};
use tunewire_media_store::{Bucket, StoreError, StoredFile};
use tunewire_service_runtime::ApiError;
use tunewire_service_runtime::http_error::ErrorBody;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::multipart::FormData;
use warp::{Reply, reply::Response};

pub use details::{Details, UploadForm};
pub use drain::DRAINS_AT_ONCE;
pub use filename::{clean_filename, raw_filename};

use crate::caller::Caller;
use crate::jobs::{self, CreateError, Created};
use crate::metrics::UploadLabels;
use crate::places::Place as UploadPlace;
use crate::probe::{self, ProbeError, Verdict};
use crate::quotas::Usage;
use crate::state::State;
use drain::{drain, drain_raw};
use form::parse_form;
pub(crate) use idle::idle_limited;

/// The answer to an upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub job_id: JobId,
    /// Where to follow it.
    pub status_url: String,
    /// The same bytes and preset were already uploaded by you: this is that job.
    pub duplicate: bool,
}

/// Multipart (`file` and optional details) or a raw body with a file name in `X-Filename`
/// (percent-encoded UTF-8) or `Content-Disposition`, its details in the query. The bytes are
/// probed with FFmpeg: not media, or no audio stream, is 415.
#[utoipa::path(method(post, put), path = "/v1/uploads", operation_id = "upload", tag = "uploads", security(("bearer" = [])),
    summary = "Upload a video or audio file to convert to MP3",
    params(Details, ("X-Filename" = Option<String>, Header, description = "A raw body's file name")),
    request_body(content(
        (UploadForm = "multipart/form-data"),
        (crate::openapi::Binary = "application/octet-stream"),
    )),
    responses(
        (status = 202, description = "Accepted: the job is queued", body = Accepted),
        (status = 200, description = "The same bytes and preset again: the existing job", body = Accepted),
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 408, response = ErrorBody),
        (status = 413, response = ErrorBody),
        (status = 415, response = ErrorBody),
        (status = 429, response = ErrorBody),
        (status = 507, response = ErrorBody),
        (status = "default", response = ErrorBody),
    ))]
#[expect(dead_code, reason = "documents the route `multipart` and `raw` serve")]
fn upload() {}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::TooLarge { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the file is larger than the upload limit of {limit} bytes ({})", human_size(limit)),
        ),
        StoreError::Source(reason) => {
            ApiError::bad_request("upload_interrupted", format!("the upload did not complete: {reason}"))
        }
        other => ApiError::unavailable(other.code(), other),
    }
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 { format!("{value:.0} {}", UNITS[unit]) } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Counts the upload as in flight for as long as it lives.
pub(crate) struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    pub(crate) fn new(state: &'a State) -> Self {
        state.metrics.uploads_in_flight.inc();
        Self(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.uploads_in_flight.dec();
    }
}

/// A stored, probed original. Removed from GridFS unless a job takes it over.
pub(crate) struct Received {
    pub stored: StoredFile,
    pub filename: String,
    /// When its first byte was awaited (a resumable upload: when it was created).
    pub began: chrono::DateTime<chrono::Utc>,
}

async fn discard(state: &State, received: &Received) {
    if let Err(e) = state.store.delete(Bucket::Uploads, &received.stored.id).await {
        tracing::warn!(file_id = %received.stored.id, error = %e, "could not remove a refused upload");
    }
}

async fn receive<S>(state: &State, caller: &Caller, filename: String, body: S) -> Result<Received, ApiError>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin + Send,
{
    let began = chrono::Utc::now();
    let metrics = state.metrics.clone();
    let stalled = Arc::new(AtomicBool::new(false));
    let body = idle_limited(body, state.config.upload_idle_timeout, stalled.clone()).inspect_ok(move |chunk| {
        metrics.bytes_in.inc_by(chunk.len() as u64);
    });
    let stored = state
        .store
        .store(
            Bucket::Uploads,
            None,
            &filename,
            doc! {"owner_id": caller.id.to_string()},
            body,
            state.config.max_upload_bytes,
        )
        .await
        .map_err(|e| match e {
            StoreError::Source(_) if stalled.load(Ordering::Relaxed) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "upload_stalled",
                format!(
                    "the upload sent nothing for {} s and was abandoned; nothing was kept",
                    state.config.upload_idle_timeout.as_secs()
                ),
            ),
            other => store_error(other),
        })?;
    judge(state, Received { stored, filename, began }).await
}

/// Probes a stored original: kept when it is media with sound, otherwise removed and refused.
pub(crate) async fn judge(state: &State, received: Received) -> Result<Received, ApiError> {
    match verdict(state, &received).await {
        Ok(()) => Ok(received),
        Err(refusal) => {
            discard(state, &received).await;
            Err(refusal)
        }
    }
}

/// FFmpeg's verdict on a stored original: `Ok` when it is media with sound. Removes nothing.
pub(crate) async fn verdict(state: &State, received: &Received) -> Result<(), ApiError> {
    // A few probes at a time: each is a process holding FFmpeg's probe buffers.
    let _permit = state.probes.acquire().await.map_err(|e| ApiError::internal("probe", e))?;
    let verdict = match state.store.info(Bucket::Uploads, &received.stored.id).await {
        Ok(Some(info)) => probe::probe(&state.store, &info, &state.config.probe_program).await,
        Ok(None) => Err(ProbeError::Store(StoreError::Corrupt {
            file_id: received.stored.id.clone(),
            what: "the upload vanished before it was probed".into(),
        })),
        Err(e) => Err(ProbeError::Store(e)),
    };
    Err(match verdict {
        Ok(Verdict::Audio { .. }) => return Ok(()),
        Ok(Verdict::NoAudio { format }) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "no_audio_stream",
            format!("{} is media ({format}) but has no audio stream to convert", received.filename),
        ),
        Ok(Verdict::NotMedia) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_media",
            format!("{} is not an audio or video file FFmpeg can read", received.filename),
        ),
        Ok(Verdict::Crashed(what)) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_media",
            format!("{} could not be read safely: {what}", received.filename),
        ),
        Err(ProbeError::Store(e)) => store_error(e),
        Err(e @ ProbeError::StoreStalled) => ApiError::unavailable("media_store_unavailable", e),
        Err(e @ ProbeError::Spawn(_)) => ApiError::internal("probe", e),
    })
}

/// Records the job (or finds the same one) and answers the client.
async fn accept(state: &State, caller: &Caller, received: Received, details: &Details) -> Result<Response, ApiError> {
    let (job_id, duplicate) = match record_job(state, caller, &received, details, JobId::new(), None).await {
        Ok(recorded) => recorded,
        Err(refusal) => {
            discard(state, &received).await;
            return Err(refusal);
        }
    };
    let status = if duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    let body = Accepted { job_id, status_url: format!("/v1/jobs/{job_id}"), duplicate };
    Ok(warp::reply::with_status(warp::reply::json(&body), status).into_response())
}

/// Records the job (`job_id`) for a judged original, or finds the live one with the same
/// bytes and preset (`true`: the original is removed), finishing the resumable upload it came
/// from in the same transaction. On a refusal the original stays: the caller decides.
pub(crate) async fn record_job(
    state: &State,
    caller: &Caller,
    received: &Received,
    details: &Details,
    job_id: JobId,
    finishing: Option<crate::tus::record::Finishing>,
) -> Result<(JobId, bool), ApiError> {
    let (tags, preset, normalize_loudness) = (details.tags()?, details.preset()?, details.loudnorm()?);
    let event = MediaUploaded {
        job_id,
        owner: Owner { id: caller.id, email: caller.email.clone() },
        source: SourceFile {
            file_id: received.stored.id.clone(),
            filename: received.filename.clone(),
            size: received.stored.size,
            sha256: received.stored.sha256.clone(),
        },
        preset,
        overrides: tags,
        normalize_loudness,
    };
    let finishing_tus = finishing.is_some();
    let created = jobs::create(&state.db, &event, &state.config.quotas, finishing).await.map_err(|e| match e {
        CreateError::Quota(exceeded) => exceeded.api_error(),
        CreateError::Database(e) => ApiError::unavailable("database_unavailable", e),
        CreateError::LeaseLost => ApiError::new(
            StatusCode::LOCKED,
            "upload_busy",
            "another request took this upload over; ask HEAD for its state",
        ),
    })?;
    Ok(match created {
        Created::New => {
            state.outbox_wake.notify_one();
            let protocol = if finishing_tus { "tus" } else { "multipart" };
            let took = (chrono::Utc::now() - received.began).to_std().unwrap_or_default();
            state.metrics.upload_duration.get_or_create(&UploadLabels { protocol }).observe(took.as_secs_f64());
            tracing::info!(job_id = %event.job_id, owner = %caller.id, size = received.stored.size, "upload accepted");
            (event.job_id, false)
        }
        Created::Existing(existing) => {
            discard(state, received).await;
            tracing::info!(job_id = %existing, owner = %caller.id, "same bytes and preset again: existing job");
            (existing, true)
        }
    })
}

/// An upload at the door: what is known of it before its body is read.
pub struct Door {
    /// The request's `Authorization`, from its header or its session cookie
    /// (`session::authorization`), or why the cookie was refused.
    pub authorization: Result<Option<String>, ApiError>,
    pub content_length: Option<u64>,
    /// The client sent `Expect: 100-continue`: it sends no body unless told to, so a refusal
    /// needs no draining (and draining would ask for the body).
    pub expects_continue: bool,
}

/// What a multipart body may carry besides its file (boundaries, part headers, fields).
const FORM_OVERHEAD: u64 = 1 << 20;

impl Door {
    /// Who is uploading, and their place among the uploads in flight; a declared length
    /// over the limit is refused here too.
    async fn admit(&self, state: &State) -> Result<(Caller, UploadPlace), ApiError> {
        let authorization = self.authorization.clone()?;
        let caller = state.verifier.authorize(authorization.as_deref()).await?;
        let limit = state.config.max_upload_bytes;
        if self.content_length.is_some_and(|length| length > limit.saturating_add(FORM_OVERHEAD)) {
            return Err(store_error(StoreError::TooLarge { limit }));
        }
        let place = state.uploads.admit(&caller.id)?;
        Ok((caller, place))
    }

    /// The caller's quotas as they stand, for a file of at least the declared length less
    /// `overhead` (what else the body carries). The job's creation checks them again for good,
    /// with the real size; a repeat of a live job is refused here too when a quota is full.
    async fn check_quotas(&self, state: &State, caller: &Caller, overhead: u64) -> Result<(), ApiError> {
        let usage =
            Usage::of(&state.db, caller.id).await.map_err(|e| ApiError::unavailable("database_unavailable", e))?;
        let declared = self.content_length.unwrap_or(0).saturating_sub(overhead).min(state.config.max_upload_bytes);
        usage.admits(&state.config.quotas, declared as i64, false).map_err(super::quotas::Exceeded::api_error)
    }

    /// `error`, after reading and dropping a bounded part of the body (`drained`) unless the
    /// client waits for `100 Continue` or too many refusals are being drained already.
    async fn refuse(&self, state: &State, error: ApiError, drained: impl std::future::Future<Output = ()>) -> ApiError {
        if !self.expects_continue
            && let Ok(_draining) = state.drains.try_acquire()
        {
            drained.await;
        }
        error
    }
}

pub async fn multipart(door: Door, mut form: FormData, state: State) -> Result<Response, ApiError> {
    let admitted = match door.admit(&state).await {
        Ok((caller, place)) => door.check_quotas(&state, &caller, FORM_OVERHEAD).await.map(|()| (caller, place)),
        Err(e) => Err(e),
    };
    let (caller, place) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => return Err(door.refuse(&state, e, drain(form)).await),
    };
    let _in_flight = InFlight::new(&state);
    let mut received = None;
    let mut details = Details::default();
    let parsed = parse_form(&mut form, &caller, &state, &mut received, &mut details).await;
    match (parsed, received) {
        (Ok(()), Some(received)) => accept(&state, &caller, received, &details).await,
        (Ok(()), None) => Err(ApiError::bad_request("missing_file", "the form has no `file` part")),
        (Err(e), received) => {
            if let Some(received) = received {
                discard(&state, &received).await;
            }
            drop(place);
            Err(door.refuse(&state, e, drain(form)).await)
        }
    }
}

pub struct RawUpload {
    pub filename: Option<String>,
    pub content_length: Option<u64>,
}

/// Everything a raw upload is refused for before its body is read.
async fn admit_raw(
    door: &Door,
    raw: RawUpload,
    details: Result<Details, ApiError>,
    state: &State,
) -> Result<(Caller, UploadPlace, String, Details), ApiError> {
    let (caller, place) = door.admit(state).await?;
    let details = details?;
    let Some(filename) = raw.filename else {
        return Err(ApiError::bad_request(
            "missing_filename",
            "a raw upload needs its file name in an X-Filename or Content-Disposition header",
        ));
    };
    let limit = state.config.max_upload_bytes;
    if raw.content_length.is_some_and(|length| length > limit) {
        return Err(store_error(StoreError::TooLarge { limit }));
    }
    details.tags()?;
    details.preset()?;
    details.loudnorm()?;
    door.check_quotas(state, &caller, 0).await?;
    Ok((caller, place, filename, details))
}

pub async fn raw<S>(
    door: Door,
    raw: RawUpload,
    details: Result<Details, ApiError>,
    body: S,
    state: State,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin + Send,
{
    let (caller, _place, filename, details) = match admit_raw(&door, raw, details, &state).await {
        Ok(admitted) => admitted,
        Err(e) => return Err(door.refuse(&state, e, drain_raw(body)).await),
    };
    let _in_flight = InFlight::new(&state);
    let received = receive(&state, &caller, clean_filename(Some(&filename)), body).await?;
    accept(&state, &caller, received, &details).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(2 << 30), "2 GiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(100), "100 B");
    }
}
