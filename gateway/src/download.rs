//! Serving an MP3 the way browsers and players expect: `Range` (one range; 206 or 416),
//! `ETag` and `If-None-Match` (304), `HEAD`, `Content-Length`, `Accept-Ranges` and a
//! `Content-Disposition` named after the original. Bytes come straight from the GridFS chunks
//! that hold the range, a few at a time.
//!
//! The `Range` parser is ours: the `headers` crate's accepts starts past the end and treats
//! an oversized suffix as unsatisfiable, both against RFC 9110.

use bytes::Bytes;
use futures_util::StreamExt;
use tracing::Instrument as _;
use tunewire_contract::{FileId, UserId};
use tunewire_media_store::Bucket;
use tunewire_service_runtime::ApiError;
use tunewire_service_runtime::http_error::ErrorBody;
use utoipa::{IntoParams, IntoResponses};
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::jobs;
use crate::openapi::Binary;
use crate::state::State;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable `Range` header: the whole file.
    Whole,
    /// `start..=end`, within the file.
    Part {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// One `bytes=` range per RFC 9110 §14.1.2; several ranges or a malformed header are
/// ignored (the whole file), which the RFC allows.
pub fn parse_range(value: Option<&str>, length: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        (true, false) => match number(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if length == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Part { start: length - n.min(length), end: length - 1 },
            None => RangeRequest::Whole,
        },
        (false, _) => {
            let Some(start) = number(first) else { return RangeRequest::Whole };
            let end = if last.is_empty() { Some(u64::MAX) } else { number(last) };
            match end {
                Some(end) if end < start => RangeRequest::Whole,
                Some(_) if start >= length => RangeRequest::Unsatisfiable,
                Some(end) => RangeRequest::Part { start, end: end.min(length - 1) },
                None => RangeRequest::Whole,
            }
        }
        (true, true) => RangeRequest::Whole,
    }
}

/// Whether `If-None-Match` names `etag` (weak comparison, as RFC 9110 asks for GET/HEAD).
pub fn none_match(if_none_match: Option<&str>, etag: &str) -> bool {
    let Some(value) = if_none_match else { return false };
    value.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// `Content-Disposition` with an ASCII fallback and the exact UTF-8 name (RFC 6266).
pub fn content_disposition(source_filename: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    // RFC 5987 attr-char: ALPHA / DIGIT / "!#$&+-.^_`|~"; everything else is encoded.
    const ATTR: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    let stem = source_filename.rsplit_once('.').map_or(source_filename, |(s, _)| s);
    let name = format!("{stem}.mp3");
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{}", utf8_percent_encode(&name, ATTR))
}

pub struct Request {
    pub head: bool,
    pub headers: HeaderMap,
}

fn set(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// What a download may ask besides the whole file.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(dead_code, reason = "describes the headers `serve` reads")]
pub struct Conditions {
    #[param(rename = "Range", example = "bytes=0-1023")]
    range: Option<String>,
    #[param(rename = "If-None-Match")]
    if_none_match: Option<String>,
}

/// A download's answers: the MP3, a range of it, or why not.
#[derive(IntoResponses)]
pub enum Mp3Answer {
    /// The MP3
    #[response(status = 200, content_type = "audio/mpeg",
        headers(("ETag" = String), ("Accept-Ranges" = String), ("Content-Disposition" = String)))]
    Whole(Binary),
    /// The requested range
    #[response(status = 206, content_type = "audio/mpeg", headers(("Content-Range" = String)))]
    Part(Binary),
    /// The client's copy (If-None-Match) is current
    #[response(status = 304)]
    NotModified,
    #[response(status = 404)]
    NotFound(#[ref_response] ErrorBody<'static>),
    #[response(status = 410)]
    Expired(#[ref_response] ErrorBody<'static>),
    #[response(status = 416)]
    Unsatisfiable(#[ref_response] ErrorBody<'static>),
    #[response(status = "default")]
    Other(#[ref_response] ErrorBody<'static>),
}

#[utoipa::path(method(get, head), path = "/v1/files/{id}", operation_id = "download", tag = "files", security(("bearer" = [])),
    summary = "Download an MP3 you own",
    params(("id" = String, Path, description = "`output.file_id` of a job"), Conditions),
    responses(Mp3Answer, (status = 401, response = ErrorBody)))]
pub async fn serve(
    state: &State,
    id: &str,
    owner: UserId,
    admin: bool,
    request: Request,
) -> Result<Response, ApiError> {
    let file_id: FileId = id.parse().map_err(|_| ApiError::not_found("file"))?;
    let job = jobs::download(&state.db, file_id.as_str(), owner, admin)
        .await
        .map_err(|e| ApiError::unavailable("database_unavailable", e))?
        .ok_or_else(|| ApiError::not_found("file"))?;
    if job.expired {
        return Err(ApiError::new(StatusCode::GONE, "expired", "this MP3 was removed by the retention policy"));
    }
    let info = state
        .store
        .info(Bucket::Audio, &file_id)
        .await
        .map_err(|e| ApiError::unavailable(e.code(), e))?
        .ok_or_else(|| ApiError::not_found("file"))?;
    // A job's MP3 is written once under an id of its own and never changes: the id is a strong tag.
    let etag = format!("\"{file_id}\"");
    let header_str = |name| request.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let mut response = warp::Reply::into_response(warp::reply());
    set(&mut response, header::ETAG, &etag);
    set(&mut response, header::ACCEPT_RANGES, "bytes");
    set(&mut response, header::CACHE_CONTROL, "private, max-age=3600");
    if none_match(header_str(header::IF_NONE_MATCH), &etag) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(response);
    }
    let length = info.length;
    let (start, end) = match parse_range(header_str(header::RANGE), length) {
        RangeRequest::Whole => {
            *response.status_mut() = StatusCode::OK;
            (0, length.saturating_sub(1))
        }
        RangeRequest::Part { start, end } => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(&mut response, header::CONTENT_RANGE, &format!("bytes {start}-{end}/{length}"));
            (start, end)
        }
        RangeRequest::Unsatisfiable => {
            let error = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the range is outside the file's {length} bytes"),
            );
            let mut response = warp::Reply::into_response(error);
            set(&mut response, header::CONTENT_RANGE, &format!("bytes */{length}"));
            return Ok(response);
        }
    };
    let body_length = if length == 0 { 0 } else { end - start + 1 };
    set(&mut response, header::CONTENT_TYPE, "audio/mpeg");
    set(&mut response, header::CONTENT_LENGTH, &body_length.to_string());
    set(&mut response, header::CONTENT_DISPOSITION, &content_disposition(&job.source_filename));
    if request.head || body_length == 0 {
        return Ok(response);
    }
    let chunks = state
        .store
        .read_range(Bucket::Audio, &info, start, end)
        .await
        .map_err(|e| ApiError::unavailable(e.code(), e))?;
    // The chunk cursor is not Sync, which warp's body needs: hand chunks over a small channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let metrics = state.metrics.clone();
    tokio::spawn(
        async move {
            let mut chunks = std::pin::pin!(chunks);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| {
                    tracing::error!(%file_id, error = %e, "download broke off");
                    std::io::Error::other(e)
                });
                if let Ok(bytes) = &chunk {
                    metrics.bytes_out.inc_by(bytes.len() as u64);
                }
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        }
        .in_current_span(),
    );
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let (parts, _) = response.into_parts();
    let (_, body) = warp::Reply::into_response(warp::reply::stream(body)).into_parts();
    Ok(Response::from_parts(parts, body))
}

/// A download by signed link (the email's): the link names the file and its owner.
#[utoipa::path(method(get, head), path = "/v1/downloads/{token}", operation_id = "signed_download", tag = "files",
    summary = "Download an MP3 by signed link",
    params(("token" = String, Path, description = "The signed link from the email"), Conditions),
    responses(Mp3Answer, (status = 403, response = ErrorBody)))]
pub async fn signed_download(token: String, request: Request, state: State) -> Result<Response, ApiError> {
    let claims = state
        .links
        .verify(&token, chrono::Utc::now())
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.code(), e.to_string()))?;
    serve(&state, claims.file_id.as_str(), claims.owner, false, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeRequest::*;
        let r = |v: &str| parse_range(Some(v), 1000);
        assert_eq!(parse_range(None, 1000), Whole);
        assert_eq!(r("bytes=0-99"), Part { start: 0, end: 99 });
        assert_eq!(r("bytes=900-"), Part { start: 900, end: 999 });
        assert_eq!(r("bytes=900-5000"), Part { start: 900, end: 999 });
        assert_eq!(r("bytes=-100"), Part { start: 900, end: 999 });
        assert_eq!(r("bytes=-5000"), Part { start: 0, end: 999 });
        assert_eq!(r("bytes=1000-"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        assert_eq!(r("bytes=5-1"), Whole);
        assert_eq!(r("bytes=0-1,5-6"), Whole);
        assert_eq!(r("items=0-1"), Whole);
        assert_eq!(r("bytes=abc"), Whole);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_star() {
        assert!(none_match(Some("\"abc\""), "\"abc\""));
        assert!(none_match(Some("W/\"abc\", \"x\""), "\"abc\""));
        assert!(none_match(Some("*"), "\"abc\""));
        assert!(!none_match(Some("\"abd\""), "\"abc\""));
        assert!(!none_match(None, "\"abc\""));
    }

    #[test]
    fn content_disposition_keeps_non_ascii_names() {
        let value = content_disposition("Café déjà.mp4");
        assert!(value.starts_with("attachment; filename=\"Caf_ d_j_.mp3\""), "{value}");
        assert!(value.ends_with("filename*=UTF-8''Caf%C3%A9%20d%C3%A9j%C3%A0.mp3"), "{value}");
    }
}
