//! The public HTTP API (`/v1/...`): the filter tree, from each route to its handler (in
//! `job_routes`, `proxy`, `upload`, `download`, each described there for `openapi`), and the
//! raw upload's query.

use std::collections::HashMap;

use bytes::{Buf, Bytes};
use futures_util::TryStreamExt;
use tunewire_service_runtime::ApiError;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, header};
use warp::{Filter, Rejection, Reply};

use crate::caller::Caller;
use crate::state::State;
use crate::upload::{self, Details, RawUpload};
use crate::{download, job_routes, proxy};

type Response = warp::reply::Response;

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
        .map(|| {
            let document = crate::openapi::DOCUMENT.as_str();
            warp::reply::with_header(document, header::CONTENT_TYPE, "application/json").into_response()
        })
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
            answer(proxy::auth_proxy(action, body, remote, (forwarded, authorization), state).await).await
        })
        .boxed();
    let me = warp::path!("v1" / "me")
        .and(warp::get())
        .and(caller(state.clone()))
        .and(with(state.clone()))
        .and_then(|caller, state| async move { answer(job_routes::me(caller, state).await).await })
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
        .and_then(|caller, query, state| async move { answer(job_routes::list_jobs(caller, query, state).await).await })
        .boxed();
    let job = warp::path!("v1" / "jobs" / String)
        .and(warp::get())
        .and(caller(state.clone()))
        .and(with(state.clone()))
        .and_then(|id: String, caller, state| async move { answer(job_routes::get_job(id, caller, state).await).await })
        .boxed();
    let delete = warp::path!("v1" / "jobs" / String)
        .and(warp::delete())
        .and(caller(state.clone()))
        .and(with(state.clone()))
        .and_then(
            |id: String, caller, state| async move { answer(job_routes::delete_job(id, caller, state).await).await },
        )
        .boxed();
    let events = warp::path!("v1" / "jobs" / String / "events")
        .and(warp::get())
        .and(caller(state.clone()))
        .and(with(state.clone()))
        .and_then(|id: String, caller, state| async move {
            answer(job_routes::job_event_stream(id, caller, state).await).await
        })
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
            answer(download::signed_download(token, download::Request { head, headers }, state).await).await
        })
        .boxed();
    let search = warp::path!("v1" / "search")
        .and(warp::get())
        .and(caller(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and(with(state))
        .and_then(|caller, query, state| async move { answer(proxy::search(caller, query, state).await).await })
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
    let details = Details::from_query(query);
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
