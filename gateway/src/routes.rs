//! The public HTTP API (`/v1/...`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::doc;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tunewire_events::contract::{Owner, SourceFile, TrackTags};
use tunewire_events::{FileId, JobId, MediaUploaded, Preset, UserId};
use tunewire_media_store::{Bucket, MediaStore, StoreError};
use tunewire_service_runtime::ApiError;
use tunewire_signed_links::LinkSigner;
use warp::http::{StatusCode, header};
use warp::multipart::FormData;
use warp::{Filter, Rejection, Reply};

use crate::caller::{Caller, TokenVerifier};
use crate::config::Config;
use crate::jobs;

#[derive(Clone)]
pub struct State {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub store: MediaStore,
    pub verifier: Arc<TokenVerifier>,
    pub links: LinkSigner,
    pub http: reqwest::Client,
    pub outbox_wake: Arc<Notify>,
}

type Response = warp::reply::Response;

fn with<T: Clone + Send + Sync + 'static>(
    value: T,
) -> impl Filter<Extract = (T,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || value.clone())
}

fn caller(state: State) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    warp::header::<String>("authorization").and(with(state)).and_then(|auth: String, state: State| async move {
        state.verifier.verify(&auth).await.map_err(warp::reject::custom)
    })
}

async fn answer(result: Result<Response, ApiError>) -> Result<Response, Rejection> {
    Ok(result.unwrap_or_else(Reply::into_response))
}

pub fn routes(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let auth_proxy = warp::path!("v1" / "auth" / String)
        .and(warp::post())
        .and(warp::body::content_length_limit(16 * 1024))
        .and(warp::body::bytes())
        .and(with(state.clone()))
        .and_then(|action: String, body: Bytes, state: State| async move {
            answer(auth_proxy(action, body, state).await).await
        });
    let upload = warp::path!("v1" / "uploads")
        .and(warp::post())
        .and(caller(state.clone()))
        .and(warp::multipart::form().max_length(None))
        .and(with(state.clone()))
        .and_then(|caller, form, state| async move { answer(upload(caller, form, state).await).await });
    let job = warp::path!("v1" / "jobs" / String)
        .and(warp::get())
        .and(caller(state.clone()))
        .and(with(state.clone()))
        .and_then(|id: String, caller, state| async move { answer(get_job(id, caller, state).await).await });
    let list = warp::path!("v1" / "jobs")
        .and(warp::get())
        .and(caller(state.clone()))
        .and(with(state.clone()))
        .and_then(|caller, state| async move { answer(list_jobs(caller, state).await).await });
    let file = warp::path!("v1" / "files" / String)
        .and(warp::get())
        .and(caller(state.clone()))
        .and(with(state.clone()))
        .and_then(|id: String, caller: Caller, state| async move {
            answer(download(id, caller.id, caller.admin, state).await).await
        });
    let signed = warp::path!("v1" / "downloads" / String)
        .and(warp::get())
        .and(with(state.clone()))
        .and_then(|token: String, state| async move { answer(signed_download(token, state).await).await });
    let search = warp::path!("v1" / "search")
        .and(warp::get())
        .and(caller(state.clone()))
        .and(warp::query::<SearchQuery>())
        .and(with(state))
        .and_then(|caller, query, state| async move { answer(search(caller, query, state).await).await });
    auth_proxy
        .or(upload)
        .unify()
        .or(job)
        .unify()
        .or(list)
        .unify()
        .or(file)
        .unify()
        .or(signed)
        .unify()
        .or(search)
        .unify()
}

/// Register and login live in auth; a client only needs the gateway's address.
async fn auth_proxy(action: String, body: Bytes, state: State) -> Result<Response, ApiError> {
    if action != "register" && action != "login" {
        return Err(ApiError::not_found("route"));
    }
    let url = format!("{}/{action}", state.config.auth_url.trim_end_matches('/'));
    let resp = state
        .http
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| ApiError::unavailable("auth_unavailable", e))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| ApiError::unavailable("auth_unavailable", e))?;
    Ok(warp::http::Response::builder()
        .status(status.as_u16())
        .header(header::CONTENT_TYPE, "application/json")
        .body(warp::hyper::body::Bytes::from(bytes))
        .map(Reply::into_response)
        .unwrap_or_else(|e| ApiError::internal("proxy", e).into_response()))
}

/// A file name safe to store and to show: no folders, no control characters, bounded.
fn clean_filename(raw: Option<&str>) -> String {
    let base = raw.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(200).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    if cleaned.is_empty() { "upload".into() } else { cleaned }
}

const MAX_FIELD_BYTES: usize = 1024;

async fn read_field(part: warp::multipart::Part) -> Result<String, ApiError> {
    let name = part.name().to_string();
    let mut bytes = Vec::new();
    let mut stream = part.stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("invalid_multipart", e.to_string()))?;
        bytes.extend_from_slice(chunk.chunk());
        if bytes.len() > MAX_FIELD_BYTES {
            return Err(ApiError::bad_request(
                "field_too_long",
                format!("field {name:?} is longer than {MAX_FIELD_BYTES} bytes"),
            ));
        }
    }
    String::from_utf8(bytes)
        .map(|s| s.trim().to_string())
        .map_err(|_| ApiError::bad_request("invalid_field", format!("field {name:?} is not UTF-8 text")))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::TooLarge { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the file is larger than the {limit}-byte upload limit"),
        ),
        StoreError::Source(reason) => {
            ApiError::bad_request("upload_interrupted", format!("the upload did not complete: {reason}"))
        }
        other => ApiError::unavailable(other.code(), other),
    }
}

struct Parsed {
    file: Option<(tunewire_media_store::StoredFile, String)>,
    tags: TrackTags,
    preset: Preset,
}

async fn parse_form(mut form: FormData, caller: &Caller, state: &State, parsed: &mut Parsed) -> Result<(), ApiError> {
    while let Some(part) = form.next().await {
        let part = part.map_err(|e| ApiError::bad_request("invalid_multipart", e.to_string()))?;
        match part.name() {
            "file" => {
                if parsed.file.is_some() {
                    return Err(ApiError::bad_request("too_many_files", "send one `file` part per upload"));
                }
                let filename = clean_filename(part.filename());
                let body =
                    part.stream().map_ok(|mut buf| buf.copy_to_bytes(buf.remaining())).map_err(|e| e.to_string());
                let metadata = doc! {"owner_id": caller.id.to_string()};
                let stored = state
                    .store
                    .store(Bucket::Uploads, None, &filename, metadata, Box::pin(body), state.config.max_upload_bytes)
                    .await
                    .map_err(store_error)?;
                parsed.file = Some((stored, filename));
            }
            "title" => parsed.tags.title = Some(read_field(part).await?).filter(|s| !s.is_empty()),
            "artist" => parsed.tags.artist = Some(read_field(part).await?).filter(|s| !s.is_empty()),
            "album" => parsed.tags.album = Some(read_field(part).await?).filter(|s| !s.is_empty()),
            "preset" => {
                let value = read_field(part).await?;
                parsed.preset = value.parse().map_err(|e: String| ApiError::bad_request("invalid_preset", e))?;
            }
            other => {
                let other = other.to_string();
                return Err(ApiError::bad_request("unknown_field", format!("unexpected form field {other:?}")));
            }
        }
    }
    Ok(())
}

async fn upload(caller: Caller, form: FormData, state: State) -> Result<Response, ApiError> {
    let mut parsed = Parsed { file: None, tags: TrackTags::default(), preset: Preset::default() };
    let outcome = parse_form(form, &caller, &state, &mut parsed).await;
    let result = match (outcome, parsed.file.take()) {
        (Err(e), file) => Err((e, file)),
        (Ok(()), None) => Err((ApiError::bad_request("missing_file", "the form has no `file` part"), None)),
        (Ok(()), Some((stored, filename))) => {
            let event = MediaUploaded {
                job_id: JobId::new(),
                owner: Owner { id: caller.id, email: caller.email.clone() },
                source: SourceFile {
                    file_id: stored.id.clone(),
                    filename: filename.clone(),
                    size: stored.size,
                    sha256: stored.sha256.clone(),
                },
                preset: parsed.preset,
                overrides: parsed.tags,
            };
            match jobs::create(&state.db, &event).await {
                Ok(()) => Ok(event.job_id),
                Err(e) => Err((ApiError::unavailable("database_unavailable", e), Some((stored, filename)))),
            }
        }
    };
    match result {
        Ok(job_id) => {
            state.outbox_wake.notify_one();
            tracing::info!(%job_id, owner = %caller.id, "upload accepted");
            let body = json!({"job_id": job_id, "status_url": format!("/v1/jobs/{job_id}")});
            Ok(warp::reply::with_status(warp::reply::json(&body), StatusCode::ACCEPTED).into_response())
        }
        Err((error, stored)) => {
            // Nothing is kept for an upload that was not accepted.
            if let Some((stored, _)) = stored {
                if let Err(e) = state.store.delete(Bucket::Uploads, &stored.id).await {
                    tracing::warn!(file_id = %stored.id, error = %e, "could not remove a rejected upload");
                }
            }
            Err(error)
        }
    }
}

async fn get_job(id: String, caller: Caller, state: State) -> Result<Response, ApiError> {
    let id: JobId = id.parse().map_err(|_| ApiError::not_found("job"))?;
    match jobs::get(&state.db, id, &caller).await.map_err(|e| ApiError::unavailable("database_unavailable", e))? {
        Some(job) => Ok(warp::reply::json(&job).into_response()),
        None => Err(ApiError::not_found("job")),
    }
}

async fn list_jobs(caller: Caller, state: State) -> Result<Response, ApiError> {
    let jobs =
        jobs::list(&state.db, &caller, 100).await.map_err(|e| ApiError::unavailable("database_unavailable", e))?;
    Ok(warp::reply::json(&json!({"jobs": jobs})).into_response())
}

/// `Content-Disposition` with an ASCII fallback and the exact UTF-8 name (RFC 6266).
fn content_disposition(source_filename: &str) -> String {
    let stem = source_filename.rsplit_once('.').map_or(source_filename, |(s, _)| s);
    let name = format!("{stem}.mp3");
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

async fn download(id: String, owner: UserId, admin: bool, state: State) -> Result<Response, ApiError> {
    let file_id: FileId = id.parse().map_err(|_| ApiError::not_found("file"))?;
    let filename = jobs::output_filename(&state.db, file_id.as_str(), owner, admin)
        .await
        .map_err(|e| ApiError::unavailable("database_unavailable", e))?
        .ok_or_else(|| ApiError::not_found("file"))?;
    let (info, download) = state
        .store
        .open(Bucket::Audio, &file_id)
        .await
        .map_err(|e| ApiError::unavailable(e.code(), e))?
        .ok_or_else(|| ApiError::not_found("file"))?;
    // The GridFS stream is not Sync, which warp's body needs: hand chunks over a small channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut reader = download.compat();
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            match reader.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut response = warp::reply::stream(body).into_response();
    let headers = response.headers_mut();
    let insert = |headers: &mut warp::http::HeaderMap, name, value: String| {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    insert(headers, header::CONTENT_TYPE, "audio/mpeg".into());
    insert(headers, header::CONTENT_LENGTH, info.length.to_string());
    insert(headers, header::ETAG, format!("\"{file_id}\""));
    insert(headers, header::CONTENT_DISPOSITION, content_disposition(&filename));
    Ok(response)
}

async fn signed_download(token: String, state: State) -> Result<Response, ApiError> {
    let claims = state
        .links
        .verify(&token, chrono::Utc::now())
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.code(), e.to_string()))?;
    download(claims.file_id.to_string(), claims.owner, false, state).await
}

#[derive(Deserialize)]
struct SearchQuery {
    q: Option<String>,
}

/// Fronts the catalog's search with the caller's identity: a user searches their own tracks.
async fn search(caller: Caller, query: SearchQuery, state: State) -> Result<Response, ApiError> {
    let mut params = vec![("q", query.q.unwrap_or_default())];
    if !caller.admin {
        params.push(("owner", caller.id.to_string()));
    }
    let resp = state
        .http
        .get(format!("{}/search", state.config.catalog_url.trim_end_matches('/')))
        .query(&params)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| ApiError::unavailable("catalog_unavailable", e))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.map_err(|e| ApiError::unavailable("catalog_unavailable", e))?;
    Ok(warp::reply::with_status(
        warp::reply::json(&body),
        StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
    )
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_folders_and_control_characters() {
        assert_eq!(clean_filename(Some("../../etc/passwd")), "passwd");
        assert_eq!(clean_filename(Some("C:\\music\\song.mp4")), "song.mp4");
        assert_eq!(clean_filename(Some("a\u{0}b\nc.mkv")), "abc.mkv");
        assert_eq!(clean_filename(None), "upload");
        assert_eq!(clean_filename(Some("..")), "upload");
    }

    #[test]
    fn content_disposition_keeps_non_ascii_names() {
        let value = content_disposition("Café déjà.mp4");
        assert!(value.starts_with("attachment; filename=\"Caf_ d_j_.mp3\""), "{value}");
        assert!(value.ends_with("filename*=UTF-8''Caf%C3%A9%20d%C3%A9j%C3%A0.mp3"), "{value}");
    }
}
