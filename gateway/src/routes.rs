//! The public HTTP API (`/v1/...`): the filter tree, from each route to its handler (in
//! `job_routes`, `proxy`, `upload`, `download`, each described there for `openapi`), and the
//! raw upload's query.

use std::collections::HashMap;

use bytes::{Buf, Bytes};
use futures_util::TryStreamExt;
use tunewire_service_runtime::ApiError;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, Method, header};
use warp::{Filter, Rejection, Reply};

use crate::caller::Caller;
use crate::state::State;
use crate::upload::{self, Details, RawUpload};
use crate::{download, job_routes, proxy, session, tus};

type Response = warp::reply::Response;

fn with<T: Clone + Send + Sync + 'static>(
    value: T,
) -> impl Filter<Extract = (T,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || value.clone())
}

/// The caller, by bearer token or by the web app's session cookie.
fn caller(state: State) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    warp::method().and(warp::header::headers_cloned()).and(with(state)).and_then(
        |method: Method, headers: HeaderMap, state: State| async move {
            let authorization = session::authorization(&method, &headers).map_err(warp::reject::custom)?;
            state.verifier.authorize(authorization.as_deref()).await.map_err(warp::reject::custom)
        },
    )
}

/// What an upload's handler needs to answer before reading the body: the token, unchecked
/// (a refusal must still read some of the body first), and whether the client waits for
/// `100 Continue` before sending it.
fn upload_request() -> impl Filter<Extract = (upload::Door,), Error = Rejection> + Clone {
    warp::method()
        .and(warp::header::headers_cloned())
        .and(warp::header::optional::<String>("expect"))
        .and(warp::header::optional::<u64>("content-length"))
        .map(|method: Method, headers: HeaderMap, expect: Option<String>, content_length| upload::Door {
            authorization: session::authorization(&method, &headers),
            content_length,
            expects_continue: expect.is_some_and(|e| e.trim().eq_ignore_ascii_case("100-continue")),
        })
}

/// `true` for HEAD, `false` for GET.
pub(crate) fn get_or_head() -> impl Filter<Extract = (bool,), Error = Rejection> + Clone {
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
    let tus = tus_routes(&state);
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
    let sign_in = warp::path!("v1" / "session")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::content_length_limit(16 * 1024))
        .and(warp::body::bytes())
        .and(tunewire_service_runtime::server::peer())
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(with(state.clone()))
        .and_then(|headers, body: Bytes, remote, forwarded, state: State| async move {
            answer(session::sign_in(headers, body, remote, forwarded, state).await).await
        })
        .boxed();
    let sign_out = warp::path!("v1" / "session")
        .and(warp::delete())
        .and(with(state.clone()))
        .and_then(|state| async move { answer(session::sign_out(state).await).await })
        .boxed();
    let feed = warp::path!("v1" / "events")
        .and(warp::get())
        .and(caller(state.clone()))
        .and(with(state.clone()))
        .and_then(|caller, state| async move { answer(job_routes::job_feed(caller, state).await).await })
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
        .or(tus)
        .unify()
        .or(auth_proxy)
        .unify()
        .or(sign_in)
        .unify()
        .or(sign_out)
        .unify()
        .or(feed)
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

fn tus_request() -> impl Filter<Extract = (tus::TusRequest,), Error = std::convert::Infallible> + Clone {
    warp::method().and(warp::header::headers_cloned()).map(|method, headers| tus::TusRequest { method, headers })
}

fn body_bytes<B, S>(body: S) -> impl futures_util::Stream<Item = Result<Bytes, String>> + Unpin + Send + 'static
where
    B: Buf + Send,
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send + 'static,
{
    Box::pin(body.map_ok(|mut buf| buf.copy_to_bytes(buf.remaining())).map_err(|e| e.to_string()))
}

/// `/v1/tus/` (also without the slash) and `/v1/tus/{id}`, behind CORS when origins are
/// configured.
fn tus_routes(state: &State) -> BoxedFilter<(Response,)> {
    let collection = warp::path("v1").and(warp::path("tus")).and(warp::path::end());
    let one = warp::path!("v1" / "tus" / String);
    let options = collection
        .and(warp::options())
        .and(with(state.clone()))
        .map(|state: State| tus::options(&state))
        .or(one.and(warp::options()).and(with(state.clone())).map(|_, state: State| tus::options(&state)))
        .unify();
    let create = collection
        .and(warp::post())
        .and(tus_request())
        .and(warp::body::stream())
        .and(with(state.clone()))
        .then(|request, body, state| tus::create(request, body_bytes(body), state));
    let head = one.and(warp::head()).and(tus_request()).and(with(state.clone())).then(tus::head);
    let patch = one
        .and(warp::patch())
        .and(tus_request())
        .and(warp::body::stream())
        .and(with(state.clone()))
        .then(|id, request, body, state| tus::patch(id, request, body_bytes(body), state));
    let delete = one.and(warp::delete()).and(tus_request()).and(with(state.clone())).then(tus::delete);
    let routes = options.or(create).unify().or(head).unify().or(patch).unify().or(delete).unify();
    let origins = &state.config.cors_origins;
    if origins.is_empty() {
        return routes.boxed();
    }
    let cors = warp::cors()
        .allow_origins(origins.iter().map(String::as_str))
        .allow_methods(["POST", "HEAD", "PATCH", "DELETE", "OPTIONS"])
        .allow_headers(tus::ALLOWED_HEADERS)
        .expose_headers(tus::EXPOSED_HEADERS)
        .max_age(std::time::Duration::from_secs(3600));
    routes.with(cors).map(Reply::into_response).boxed()
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
    upload::raw(door, raw, details, body_bytes(body), state).await
}
