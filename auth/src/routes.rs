use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use jsonwebtoken::Header;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use tunewire_events::Email;
use tunewire_service_runtime::ApiError;
use warp::http::{StatusCode, header};
use warp::{Filter, Rejection, Reply};

use crate::accounts::{self, AccountError};
use crate::config::Config;
use crate::keys::SigningKeys;
use crate::login_limits::LoginLimits;

#[derive(Clone)]
pub struct State {
    pub db: PgPool,
    pub keys: Arc<SigningKeys>,
    pub config: Arc<Config>,
    pub login_limits: Arc<LoginLimits>,
}

#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

/// The access token's claims; the gateway reads the same names.
#[derive(Serialize)]
struct Claims<'a> {
    sub: String,
    email: &'a str,
    role: &'a str,
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

const MAX_JSON_BODY: u64 = 16 * 1024;

pub fn routes(
    state: State,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let with_state = warp::any().map(move || state.clone());
    let register = warp::path!("register")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_JSON_BODY))
        .and(warp::body::json())
        .and(with_state.clone())
        .and_then(|c, s| async move { register(c, s).await.map_err(warp::reject::custom) });
    let login = warp::path!("login")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_JSON_BODY))
        .and(warp::body::json())
        .and(warp::addr::remote())
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(with_state.clone())
        .and_then(|c, remote: Option<SocketAddr>, forwarded: Option<String>, s: State| async move {
            let client = client_address(remote, forwarded.as_deref(), s.config.trusted_proxy_hops);
            login(c, client, s).await.map_err(warp::reject::custom)
        });
    let jwks = warp::path!(".well-known" / "jwks.json")
        .and(warp::get())
        .and(with_state)
        .map(|s: State| warp::reply::json(&s.keys.jwks).into_response());
    register.or(login).unify().or(jwks).unify()
}

/// The client as the outermost trusted proxy saw it: `hops` entries from the right of
/// `X-Forwarded-For`, or the peer itself when no proxy is trusted or the header is short.
fn client_address(remote: Option<SocketAddr>, forwarded: Option<&str>, hops: usize) -> Option<IpAddr> {
    let peer = remote.map(|a| a.ip());
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = forwarded.map(|f| f.split(',').map(str::trim).collect()).unwrap_or_default();
    entries.len().checked_sub(hops).and_then(|i| entries[i].parse().ok()).or(peer)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal("hashing", e))
}

fn account_error(e: AccountError) -> ApiError {
    match e {
        AccountError::PasswordLength => ApiError::bad_request("invalid_password", e.to_string()),
        AccountError::Hashing(_) => ApiError::internal("hashing", e),
        AccountError::Database(_) => ApiError::unavailable("database_unavailable", e),
    }
}

async fn register(creds: Credentials, state: State) -> Result<warp::reply::Response, ApiError> {
    let email: Email = creds
        .email
        .parse()
        .map_err(|e: tunewire_events::IdError| ApiError::bad_request("invalid_email", e.to_string()))?;
    accounts::check_password_length(&creds.password).map_err(account_error)?;
    let password = creds.password;
    let hash = blocking(move || accounts::hash_password(&password)).await?.map_err(account_error)?;
    let Some(id) = accounts::register(&state.db, &email, &hash).await.map_err(account_error)? else {
        return Err(ApiError::new(StatusCode::CONFLICT, "email_taken", format!("{email} is already registered")));
    };
    tracing::info!(user_id = %id, "registered");
    let body = warp::reply::json(&json!({"id": id, "email": email, "role": "user"}));
    Ok(warp::reply::with_status(body, StatusCode::CREATED).into_response())
}

async fn login(creds: Credentials, client: Option<IpAddr>, state: State) -> Result<warp::reply::Response, ApiError> {
    let invalid = || ApiError::unauthorized("the email or password is wrong");
    if let Some(wait) = state.login_limits.blocked_for(&creds.email, client, Instant::now()) {
        let seconds = wait.as_secs().max(1);
        tracing::warn!(client = ?client, "login refused: too many failed attempts");
        let error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many failed logins; try again in {seconds} s"),
        );
        let mut response = error.into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        return Ok(response);
    }
    let account = match creds.email.parse::<Email>() {
        Ok(email) => accounts::find(&state.db, &email).await.map_err(account_error)?.map(|a| (email, a)),
        Err(_) => None,
    };
    let password = creds.password;
    // A missing account still costs one hash, so timing does not reveal which emails exist.
    let stored_hash = account.as_ref().map(|(_, a)| a.password_hash.clone());
    let verified = blocking(move || match stored_hash {
        Some(hash) => accounts::verify_password(&password, &hash),
        None => {
            let _ = accounts::hash_password("not-a-real-password");
            false
        }
    })
    .await?;
    let Some((email, account)) = account.filter(|_| verified) else {
        state.login_limits.record_failure(&creds.email, client, Instant::now());
        return Err(invalid());
    };
    state.login_limits.record_success(&creds.email);
    let now = chrono::Utc::now().timestamp();
    let ttl = state.config.token_ttl_s as i64;
    let claims = Claims {
        sub: account.id.to_string(),
        email: email.as_str(),
        role: &account.role,
        iss: &state.config.issuer,
        aud: &state.config.audience,
        iat: now,
        exp: now + ttl,
    };
    let key = &state.keys.current;
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(|e| ApiError::internal("signing", e))?;
    Ok(warp::reply::json(&json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_read_from_the_right_of_forwarded_for() {
        let peer = Some(SocketAddr::from(([10, 0, 0, 9], 5000)));
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        assert_eq!(client_address(peer, Some("1.2.3.4"), 1), ip("1.2.3.4"));
        assert_eq!(client_address(peer, Some("6.6.6.6, 1.2.3.4"), 1), ip("1.2.3.4"));
        assert_eq!(client_address(peer, Some("1.2.3.4, 10.1.1.1"), 2), ip("1.2.3.4"));
        assert_eq!(client_address(peer, None, 1), ip("10.0.0.9"));
        assert_eq!(client_address(peer, Some("1.2.3.4"), 0), ip("10.0.0.9"));
        assert_eq!(client_address(peer, Some("garbage"), 1), ip("10.0.0.9"));
    }
}
