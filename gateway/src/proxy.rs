//! What the gateway fronts for other services: auth's account calls, and the catalog's
//! search with the caller's identity added.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tunewire_contract::{Account, Credentials, PasswordChange, SearchPage, Token};
use tunewire_service_runtime::ApiError;
use tunewire_service_runtime::http_error::ErrorBody;
use tunewire_service_runtime::telemetry::TraceHeaders;
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
    let authorization = authorization.filter(|_| action == "password");
    Ok(to_auth(&action, body, remote, forwarded, authorization, &state).await?.into_response())
}

/// What auth answered, to pass on as it is.
pub struct AuthAnswer {
    pub status: StatusCode,
    pub retry_after: Option<warp::http::HeaderValue>,
    pub body: Bytes,
}

impl AuthAnswer {
    pub fn into_response(self) -> Response {
        let mut response =
            warp::reply::with_header(self.body.to_vec(), header::CONTENT_TYPE, "application/json").into_response();
        *response.status_mut() = self.status;
        if let Some(value) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// One call to auth's `action` with the client's address added to `X-Forwarded-For`.
pub async fn to_auth(
    action: &str,
    body: Bytes,
    remote: Option<SocketAddr>,
    forwarded: Option<String>,
    authorization: Option<String>,
    state: &State,
) -> Result<AuthAnswer, ApiError> {
    let url = format!("{}/{action}", state.config.auth_url.trim_end_matches('/'));
    let mut request = state
        .http
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .headers(TraceHeaders::current().http())
        .body(body)
        .timeout(Duration::from_secs(10));
    if let Some(remote) = remote {
        let chain = match forwarded {
            Some(f) if !f.trim().is_empty() => format!("{f}, {}", remote.ip()),
            _ => remote.ip().to_string(),
        };
        request = request.header("x-forwarded-for", chain);
    }
    if let Some(authorization) = authorization {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let resp = request.send().await.map_err(|e| ApiError::unavailable("auth_unavailable", e))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let body = resp.bytes().await.map_err(|e| ApiError::unavailable("auth_unavailable", e))?;
    Ok(AuthAnswer { status, retry_after, body })
}

// Auth's calls as the gateway serves them: `auth_proxy` forwards all three.
#[utoipa::path(post, path = "/v1/auth/register", operation_id = "register", tag = "accounts",
    summary = "Create an account (role user)",
    request_body = Credentials,
    responses(
        (status = 201, description = "Created", body = Account),
        (status = 400, response = ErrorBody),
        (status = 409, response = ErrorBody),
        (status = 429, response = ErrorBody),
        (status = 503, response = ErrorBody),
        (status = "default", response = ErrorBody),
    ))]
#[expect(dead_code, reason = "documents a route auth_proxy serves")]
fn register() {}

#[utoipa::path(post, path = "/v1/auth/login", operation_id = "login", tag = "accounts",
    summary = "Get an access token",
    request_body = Credentials,
    responses(
        (status = 200, description = "A bearer token", body = Token),
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 429, description = "Too many failed logins", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, response = ErrorBody),
        (status = "default", response = ErrorBody),
    ))]
#[expect(dead_code, reason = "documents a route auth_proxy serves")]
fn login() {}

/// Needs the current password and a bearer token. Every token issued before the change is
/// refused from then on (within seconds at the gateway); the answer carries a new one.
#[utoipa::path(post, path = "/v1/auth/password", operation_id = "change_password", tag = "accounts", security(("bearer" = [])),
    summary = "Change your password",
    request_body = PasswordChange,
    responses(
        (status = 200, description = "Changed; a new bearer token", body = Token),
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 403, response = ErrorBody),
        (status = 429, description = "Too many failed logins", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, response = ErrorBody),
        (status = "default", response = ErrorBody),
    ))]
#[expect(dead_code, reason = "documents a route auth_proxy serves")]
fn change_password() {}

/// Longest search parameter forwarded to the catalog.
const MAX_SEARCH_PARAMETER_BYTES: usize = 4096;

/// Fronts the catalog's search with the caller's identity: a user searches their own tracks.
#[utoipa::path(get, path = "/v1/search", operation_id = "search", tag = "search", security(("bearer" = [])),
    summary = "Fuzzy search over your tracks' title, artist, album and tags, with filters",
    params(
        ("q" = Option<String>, Query, description = "Search text; may be left out when tag or artist is given"),
        ("tag" = Option<String>, Query, description = "Only tracks with this tag"),
        ("artist" = Option<String>, Query, description = "Only tracks whose artist has these words (case and accents ignored)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Hits per page (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the page before"),
    ),
    responses(
        (status = 200, description = "Hits, best first", body = SearchPage),
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 503, response = ErrorBody),
        (status = "default", response = ErrorBody),
    ))]
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
        .headers(TraceHeaders::current().http())
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
