//! The web app's session. At sign-in the gateway keeps the bearer token in an `HttpOnly`,
//! `Secure`, `SameSite=Strict` cookie, so no page script (nor anything injected into one)
//! can read it; every route then accepts that cookie where it accepts `Authorization`.
//!
//! A cookie is sent by the browser whoever made the page, so a request that changes
//! something and is signed in by the cookie must also carry `X-CSRF-Token`: a value derived
//! from the session token, handed to the page in a readable cookie. Another site can neither
//! read it nor (without a CORS preflight we never grant) set the header; `SameSite=Strict`
//! already keeps the cookie off its requests in current browsers, this holds in the others.
//! API clients that send `Authorization` are unaffected.

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tunewire_contract::{Credentials, Token};
use tunewire_service_runtime::ApiError;
use tunewire_service_runtime::http_error::ErrorBody;
use utoipa::ToSchema;
use warp::Reply;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::proxy;
use crate::state::State;

type Response = warp::reply::Response;

/// Holds the bearer token; `HttpOnly`.
pub const SESSION_COOKIE: &str = "tunewire_session";
/// Holds the CSRF token, readable by the page.
pub const CSRF_COOKIE: &str = "tunewire_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The CSRF token of a session: knowing it requires knowing the session token, so it needs
/// no key and no storage, and it changes with every sign-in.
pub fn csrf_token(session_token: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"tunewire csrf\0");
    hasher.update(session_token.as_bytes());
    URL_SAFE_NO_PAD.encode(hasher.finalize())
}

/// The value of cookie `name`, from every `Cookie` header of the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Authorization` a request is made with: its own header, or else the session cookie's
/// token, with the CSRF token required when the method changes something.
pub fn authorization(method: &Method, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
        return Ok(Some(value.to_owned()));
    }
    let Some(session) = cookie(headers, SESSION_COOKIE).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if changes {
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !same(sent.trim(), &csrf_token(session)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_failed",
                format!(
                    "a request signed in by cookie that changes something must carry {CSRF_HEADER} \
                     with the value of the {CSRF_COOKIE} cookie"
                ),
            ));
        }
    }
    Ok(Some(format!("Bearer {session}")))
}

/// What the page keeps after signing in.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// To send as `X-CSRF-Token` with every request that changes something (also in the
    /// `tunewire_csrf` cookie).
    pub csrf_token: String,
    /// Seconds until the session ends.
    pub expires_in: u64,
}

fn set_cookie(name: &str, value: &str, max_age: u64, http_only: bool, secure: bool) -> Option<HeaderValue> {
    let mut cookie = format!("{name}={value}; Path=/; Max-Age={max_age}; SameSite=Strict");
    if secure {
        cookie.push_str("; Secure");
    }
    if http_only {
        cookie.push_str("; HttpOnly");
    }
    HeaderValue::from_str(&cookie).ok()
}

/// Refuses a sign-in another site's page could have sent: a form cannot send JSON (its
/// content types need no CORS preflight; `application/json` does, and we grant none), and
/// browsers that say where a request comes from must say it is this site. Without this, a
/// page elsewhere could sign a visitor into the attacker's account (login CSRF).
fn from_this_site(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "sign in with a JSON body and Content-Type: application/json",
        ));
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).unwrap_or("same-origin");
    if !matches!(site, "same-origin" | "none") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site_request",
            format!("a sign-in from another site ({site}) is refused"),
        ));
    }
    Ok(())
}

/// Signs in with auth's login and keeps the token in the session cookie; auth's refusals
/// (wrong password, too many attempts with `Retry-After`) are passed on as they are.
#[utoipa::path(post, path = "/v1/session", operation_id = "sign_in", tag = "accounts",
    summary = "Sign the web app in: the token goes into an HttpOnly cookie",
    request_body = Credentials,
    responses(
        (status = 200, description = "Signed in; cookies `tunewire_session` (HttpOnly) and `tunewire_csrf` set",
            body = Session),
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 403, description = "Sent from another site's page: `cross_site_request`", body = ErrorBody),
        (status = 415, description = "Not sent as `application/json`", body = ErrorBody),
        (status = 429, description = "Too many failed logins", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, response = ErrorBody),
        (status = "default", response = ErrorBody),
    ))]
pub async fn sign_in(
    headers: HeaderMap,
    body: Bytes,
    remote: Option<SocketAddr>,
    forwarded: Option<String>,
    state: State,
) -> Result<Response, ApiError> {
    from_this_site(&headers)?;
    let answer = proxy::to_auth("login", body, remote, forwarded, None, &state).await?;
    if answer.status != StatusCode::OK {
        return Ok(answer.into_response());
    }
    let token: Token =
        serde_json::from_slice(&answer.body).map_err(|e| ApiError::unavailable("auth_unavailable", e))?;
    let session = Session { csrf_token: csrf_token(&token.access_token), expires_in: token.expires_in };
    let secure = state.config.session_cookie_secure;
    let cookies = [
        set_cookie(SESSION_COOKIE, &token.access_token, token.expires_in, true, secure),
        set_cookie(CSRF_COOKIE, &session.csrf_token, token.expires_in, false, secure),
    ];
    let mut response = warp::reply::json(&session).into_response();
    for cookie in cookies {
        let cookie = cookie.ok_or_else(|| ApiError::unavailable("auth_unavailable", "auth sent an unusable token"))?;
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Ends the web app's session: both cookies are removed. The token itself stays valid until
/// it expires (tokens are not revocable one by one; a password change revokes them all).
#[utoipa::path(delete, path = "/v1/session", operation_id = "sign_out", tag = "accounts",
    summary = "Sign the web app out: its cookies are removed",
    responses((status = 204, description = "Signed out")))]
pub async fn sign_out(state: State) -> Result<Response, ApiError> {
    let secure = state.config.session_cookie_secure;
    let mut response = StatusCode::NO_CONTENT.into_response();
    for cookie in [set_cookie(SESSION_COOKIE, "", 0, true, secure), set_cookie(CSRF_COOKIE, "", 0, false, secure)]
        .into_iter()
        .flatten()
    {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("test header"));
        }
        map
    }

    #[test]
    fn the_authorization_header_wins_over_the_cookie() {
        let h = headers(&[("authorization", "Bearer a"), ("cookie", "tunewire_session=b")]);
        assert_eq!(authorization(&Method::DELETE, &h).expect("no csrf needed").as_deref(), Some("Bearer a"));
    }

    #[test]
    fn a_cookie_reads_freely_but_changes_only_with_its_csrf_token() {
        let session = "eyJ.payload.sig";
        let cookie = format!("theme=dark; {SESSION_COOKIE}={session}; other=1");
        let h = headers(&[("cookie", &cookie)]);
        assert_eq!(authorization(&Method::GET, &h).expect("reads").as_deref(), Some("Bearer eyJ.payload.sig"));
        let refused = authorization(&Method::PATCH, &h).expect_err("no csrf header");
        assert_eq!(refused.code, "csrf_failed");
        let wrong = headers(&[("cookie", &cookie), ("x-csrf-token", &csrf_token("another session"))]);
        assert!(authorization(&Method::POST, &wrong).is_err());
        let right = headers(&[("cookie", &cookie), ("x-csrf-token", &csrf_token(session))]);
        assert_eq!(authorization(&Method::POST, &right).expect("csrf").as_deref(), Some("Bearer eyJ.payload.sig"));
    }

    #[test]
    fn a_sign_in_must_be_json_from_this_site() {
        let json = [("content-type", "application/json; charset=utf-8")];
        assert!(from_this_site(&headers(&json)).is_ok(), "API clients send no Sec-Fetch-Site");
        let ours = [("content-type", "application/json"), ("sec-fetch-site", "same-origin")];
        assert!(from_this_site(&headers(&ours)).is_ok());
        for form in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            let refused = from_this_site(&headers(&[("content-type", form)])).expect_err(form);
            assert_eq!(refused.code, "unsupported_media_type");
        }
        assert!(from_this_site(&headers(&[])).is_err(), "no content type");
        for site in ["cross-site", "same-site"] {
            let refused = from_this_site(&headers(&[("content-type", "application/json"), ("sec-fetch-site", site)]))
                .expect_err(site);
            assert_eq!(refused.code, "cross_site_request");
        }
    }

    #[test]
    fn no_credentials_is_none() {
        assert_eq!(authorization(&Method::GET, &headers(&[("cookie", "a=b")])).expect("fine"), None);
    }

    #[test]
    fn cookies_are_read_across_headers() {
        let h = headers(&[("cookie", "a=1"), ("cookie", "tunewire_csrf=x; b=2")]);
        assert_eq!(cookie(&h, CSRF_COOKIE), Some("x"));
        assert_eq!(cookie(&h, "tunewire"), None);
    }
}
