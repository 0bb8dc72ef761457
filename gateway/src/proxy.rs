//! What the gateway fronts for other services: auth's account calls, and the catalog's
//! search with the caller's identity added.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tunewire_contract::SearchPage;
use tunewire_service_runtime::ApiError;
use warp::Reply;
use warp::http::{StatusCode, header};

use crate::caller::Caller;
use crate::state::State;

type Response = warp::reply::Response;

/// Register, login and password changes live in auth; a client only needs the gateway's
/// address. The client's address travels in `X-Forwarded-For` (auth limits attempts by it),
/// the bearer token of a password change in `Authorization`, and auth's `Retry-After`
/// comes back.
pub async fn auth_proxy(
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

/// Longest search parameter forwarded to the catalog.
const MAX_SEARCH_PARAMETER_BYTES: usize = 4096;

/// Fronts the catalog's search with the caller's identity: a user searches their own tracks.
pub async fn search(caller: Caller, query: HashMap<String, String>, state: State) -> Result<Response, ApiError> {
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
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let refusal: serde_json::Value = resp.json().await.map_err(unavailable)?;
    let mut response = warp::reply::with_status(warp::reply::json(&refusal), status).into_response();
    if let Some(value) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Ok(response)
}
