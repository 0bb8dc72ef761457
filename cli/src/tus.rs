//! The tus 1.0 core protocol (tus.io) against the gateway's `/v1/tus/`: create, ask the
//! offset, send the rest. Written here rather than taken from a crate: the Rust tus clients
//! on crates.io are blocking or unmaintained, and the protocol the gateway speaks is three
//! requests over the HTTP client we already have.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::api::{self, Api};
use crate::error::CliError;
use crate::rate::{Pace, Rate};

const TUS_VERSION: &str = "1.0.0";
const JOB_ID_HEADER: &str = "tunewire-job-id";
/// Read from the file this much at a time: the unit of progress and pacing.
const PIECE: usize = 256 * 1024;

/// `Upload-Metadata`: each key with its base64 value.
#[derive(Debug, Default, Clone)]
pub struct Metadata(Vec<(&'static str, String)>);

impl Metadata {
    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.0.push((key, value.into()));
        self
    }

    /// The `Upload-Metadata` value (also what tells one run's options from another's).
    pub fn header(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k} {}", STANDARD.encode(v))).collect::<Vec<_>>().join(",")
    }
}

/// Where an upload stands on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub offset: u64,
    /// The job it became, once whole.
    pub job_id: Option<String>,
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn job_id(headers: &HeaderMap) -> Option<String> {
    headers.get(JOB_ID_HEADER)?.to_str().ok().map(str::to_owned)
}

/// Creates an upload of `length` bytes; returns its address.
pub async fn create(api: &Api, length: u64, metadata: &Metadata) -> Result<String, CliError> {
    let request = api
        .request(Method::POST, "/v1/tus/")?
        .header("tus-resumable", TUS_VERSION)
        .header("upload-length", length)
        .header("upload-metadata", metadata.header());
    let response = api::ok(api.send(request).await?).await?;
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| CliError::Protocol("the upload was created without a Location".into()))
}

/// How much of the upload the server holds; `None` if it no longer knows it (expired,
/// removed, or another account's).
pub async fn stored(api: &Api, url: &str) -> Result<Option<Stored>, CliError> {
    let request = api.request(Method::HEAD, url)?.header("tus-resumable", TUS_VERSION);
    let response = api.send(request).await?;
    match response.status() {
        StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::FORBIDDEN => return Ok(None),
        _ => {}
    }
    let response = api::ok(response).await?;
    let offset = header_u64(response.headers(), "upload-offset")
        .ok_or_else(|| CliError::Protocol("HEAD without Upload-Offset".into()))?;
    Ok(Some(Stored { offset, job_id: job_id(response.headers()) }))
}

/// Removes an upload the client gave up (tus termination); a failure is left to the server's
/// expiry of unfinished uploads.
pub async fn terminate(api: &Api, url: &str) {
    if let Ok(request) = api.request(Method::DELETE, url) {
        let _ = api.send(request.header("tus-resumable", TUS_VERSION)).await;
    }
}

/// Called with the bytes handed to the connection so far, from `offset` on.
pub type OnSent = Arc<dyn Fn(u64) + Send + Sync>;

/// Sends `len` bytes of `path` from `offset` (the rest of the upload) in one `PATCH`, paced
/// to `rate`. The server keeps what arrives even when the connection drops, so a failed send
/// is continued from the offset `stored` then reports.
pub async fn send(
    api: &Api,
    url: &str,
    path: &Path,
    (offset, len): (u64, u64),
    rate: Option<Rate>,
    on_sent: OnSent,
) -> Result<Stored, CliError> {
    let body = file_body(path.to_path_buf(), (offset, len), rate, on_sent).await?;
    let request = api
        .request(Method::PATCH, url)?
        .header("tus-resumable", TUS_VERSION)
        .header("upload-offset", offset)
        .header("content-type", "application/offset+octet-stream")
        .body(body);
    let response = api::ok(api.send(request).await?).await?;
    let offset = header_u64(response.headers(), "upload-offset")
        .ok_or_else(|| CliError::Protocol("PATCH answered without Upload-Offset".into()))?;
    Ok(Stored { offset, job_id: job_id(response.headers()) })
}

async fn file_body(
    path: PathBuf,
    (offset, len): (u64, u64),
    rate: Option<Rate>,
    on_sent: OnSent,
) -> Result<reqwest::Body, CliError> {
    let what = || format!("reading {}", path.display());
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| CliError::io(what(), e))?;
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| CliError::io(what(), e))?;
    // Never more than the upload's length, should the file have grown.
    let file = file.take(len);
    let mut pace = rate.map(Pace::new);
    let mut sent = 0u64;
    let pieces = tokio_util::io::ReaderStream::with_capacity(file, PIECE).then(move |piece| {
        let wait = match (&piece, pace.as_mut()) {
            (Ok(bytes), Some(pace)) => pace.after(bytes.len() as u64),
            _ => std::time::Duration::ZERO,
        };
        if let Ok(bytes) = &piece {
            sent += bytes.len() as u64;
            on_sent(sent);
        }
        async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            piece
        }
    });
    Ok(reqwest::Body::wrap_stream(pieces))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_values_are_base64() {
        let m = Metadata::default().with("filename", "a b.wav").with("loudnorm", "true");
        assert_eq!(m.header(), "filename YSBiLndhdg==,loudnorm dHJ1ZQ==");
    }
}
