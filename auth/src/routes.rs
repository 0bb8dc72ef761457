use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde_json::json;
use sqlx::PgPool;
use tunewire_contract::{Account, Credentials, Email, PasswordChange, Role, Token, TokenType, UserId};
use tunewire_service_runtime::ApiError;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::accounts::{self, AccountError};
use crate::attempt_limits::{AttemptLimits, Limit, Refused};
use crate::config::Config;
use crate::hashing::Hashing;
use crate::keys::SigningKeys;
use crate::metrics::AuthMetrics;
use crate::tokens;
use tunewire_service_runtime::admission::Busy;

#[derive(Clone)]
pub struct State {
    pub db: PgPool,
    pub keys: Arc<SigningKeys>,
    pub config: Arc<Config>,
    pub attempt_limits: Arc<AttemptLimits>,
    pub hashing: Arc<Hashing>,
    pub metrics: Arc<AuthMetrics>,
}

const MAX_JSON_BODY: u64 = 16 * 1024;

pub fn routes(
    state: State,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let with_state = warp::any().map(move || state.clone());
    let client = tunewire_service_runtime::server::peer()
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(with_state.clone())
        .map(|remote: Option<SocketAddr>, forwarded: Option<String>, s: State| {
            client_address(remote, forwarded.as_deref(), s.config.trusted_proxy_hops)
        });
    let register = warp::path!("register")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_JSON_BODY))
        .and(warp::body::json())
        .and(client.clone())
        .and(with_state.clone())
        .and_then(|c, client, s: State| async move {
            let metrics = s.metrics.clone();
            let answer = register(c, client, s).await;
            metrics.answered("register", &answer);
            answer.map_err(warp::reject::custom)
        });
    let login = warp::path!("login")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_JSON_BODY))
        .and(warp::body::json())
        .and(client.clone())
        .and(with_state.clone())
        .and_then(|c, client, s: State| async move {
            let metrics = s.metrics.clone();
            let answer = login(c, client, s).await;
            metrics.answered("login", &answer);
            answer.map_err(warp::reject::custom)
        });
    let password = warp::path!("password")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit(MAX_JSON_BODY))
        .and(warp::body::json())
        .and(client)
        .and(with_state.clone())
        .and_then(|authorization: Option<String>, change, client, s: State| async move {
            let metrics = s.metrics.clone();
            let answer = change_password(authorization, change, client, s).await;
            metrics.answered("password", &answer);
            answer.map_err(warp::reject::custom)
        });
    let jwks = warp::path!(".well-known" / "jwks.json")
        .and(warp::get())
        .and(with_state.clone())
        .map(|s: State| warp::reply::json(&s.keys.jwks).into_response());
    let revocations = warp::path!("revocations")
        .and(warp::get())
        .and(with_state)
        .and_then(|s| async move { revocations(s).await.map_err(warp::reject::custom) });
    register.or(login).unify().or(password).unify().or(jwks).unify().or(revocations).unify()
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

fn busy(b: Busy) -> ApiError {
    b.into_api_error("busy", "too many sign-ins at once; try again in a second")
}

fn refused(r: Refused) -> ApiError {
    let seconds = r.wait.as_secs().max(1);
    let message = match r.limit {
        Limit::Email => format!("too many failed logins for this account; try again in {seconds} s"),
        Limit::Address => format!("too many failed logins from your network; try again in {seconds} s"),
        Limit::Registrations => format!("too many registrations from your network; try again in {seconds} s"),
    };
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", message).retry_after(r.wait)
}

fn limits_error(e: sqlx::Error) -> ApiError {
    ApiError::unavailable("database_unavailable", e)
}

fn account_error(e: AccountError) -> ApiError {
    match e {
        AccountError::PasswordLength => ApiError::bad_request("invalid_password", e.to_string()),
        AccountError::Hashing(_) => ApiError::internal("hashing", e),
        AccountError::Database(_) => ApiError::unavailable("database_unavailable", e),
    }
}

async fn register(creds: Credentials, client: Option<IpAddr>, state: State) -> Result<warp::reply::Response, ApiError> {
    let email: Email = creds
        .email
        .parse()
        .map_err(|e: tunewire_contract::IdError| ApiError::bad_request("invalid_email", e.to_string()))?;
    accounts::check_password_length(&creds.password).map_err(account_error)?;
    let admitted = state.hashing.admit().map_err(busy)?;
    state.attempt_limits.begin_registration(client).await.map_err(limits_error)?.map_err(refused)?;
    let password = creds.password;
    let hash = admitted
        .run(move || accounts::hash_password(&password))
        .await
        .map_err(|e| ApiError::internal("hashing", e))?
        .map_err(account_error)?;
    let Some(id) = accounts::register(&state.db, &email, &hash).await.map_err(account_error)? else {
        return Err(ApiError::new(StatusCode::CONFLICT, "email_taken", format!("{email} is already registered")));
    };
    tracing::info!(user_id = %id, "registered");
    let body = warp::reply::json(&Account { id, email: email.to_string(), role: Role::User });
    Ok(warp::reply::with_status(body, StatusCode::CREATED).into_response())
}

async fn login(creds: Credentials, client: Option<IpAddr>, state: State) -> Result<warp::reply::Response, ApiError> {
    let invalid = || ApiError::unauthorized("the email or password is wrong");
    let admitted = state.hashing.admit().map_err(busy)?;
    let parsed = creds.email.parse::<Email>().ok();
    let attempt =
        state.attempt_limits.begin_login(parsed.as_ref(), client).await.map_err(limits_error)?.map_err(|r| {
            tracing::warn!(client = ?client, limit = ?r.limit, "login refused: too many failed attempts");
            refused(r)
        })?;
    let account = match parsed {
        Some(email) => accounts::find(&state.db, &email).await.map_err(account_error)?,
        None => None,
    };
    let password = creds.password;
    // A missing account still costs one hash, so timing does not reveal which emails exist.
    let stored_hash = account.as_ref().map(|a| a.password_hash.clone());
    let verified = admitted
        .run(move || match stored_hash {
            Some(hash) => accounts::verify_password(&password, &hash),
            None => {
                let _ = accounts::hash_password("not-a-real-password");
                false
            }
        })
        .await
        .map_err(|e| ApiError::internal("hashing", e))?;
    // A failed attempt stays counted: its reservation is the failure.
    let Some(account) = account.filter(|_| verified) else {
        return Err(invalid());
    };
    // A password change may have landed while the hash ran: the old password gets no token.
    let Some(not_before) =
        accounts::still_current(&state.db, account.id, &account.password_hash).await.map_err(account_error)?
    else {
        return Err(invalid());
    };
    let account = accounts::Account { tokens_not_before: not_before, ..account };
    if let Err(e) = state.attempt_limits.succeeded(attempt).await {
        tracing::warn!(user_id = %account.id, error = %e, "clearing the account's failed logins failed; they expire with their window");
    }
    token_reply(&state, &account)
}

/// A fresh token for `account`, never dated before its password's last change.
fn token_reply(state: &State, account: &accounts::Account) -> Result<warp::reply::Response, ApiError> {
    let issued_at = chrono::Utc::now().timestamp().max(account.tokens_not_before);
    let token = tokens::issue(&state.keys, &state.config, (account.id, &account.email, account.role), issued_at)
        .map_err(|e| ApiError::internal("signing", e))?;
    let ttl = state.config.token_ttl_s;
    Ok(warp::reply::json(&Token { access_token: token, token_type: TokenType::Bearer, expires_in: ttl })
        .into_response())
}

/// A new password, given the current one and a token; every token issued before is refused
/// from then on (the gateway learns it from `/revocations` within seconds), and the answer
/// carries a new one.
async fn change_password(
    authorization: Option<String>,
    change: PasswordChange,
    client: Option<IpAddr>,
    state: State,
) -> Result<warp::reply::Response, ApiError> {
    let claims = tokens::verify(&state.keys, &state.config, authorization.as_deref())?;
    let id: UserId = claims.sub.parse().map_err(|_| ApiError::unauthorized("the token's subject is invalid"))?;
    accounts::check_password_length(&change.new_password).map_err(account_error)?;
    let admitted = state.hashing.admit().map_err(busy)?;
    let account = accounts::find_by_id(&state.db, id)
        .await
        .map_err(account_error)?
        .filter(|a| claims.iat >= a.tokens_not_before)
        .ok_or_else(|| ApiError::unauthorized("the token is no longer valid; log in again"))?;
    let attempt =
        state.attempt_limits.begin_login(Some(&account.email), client).await.map_err(limits_error)?.map_err(refused)?;
    let (stored, current, new) = (account.password_hash.clone(), change.current_password, change.new_password);
    let new_hash = admitted
        .run(move || accounts::verify_password(&current, &stored).then(|| accounts::hash_password(&new)))
        .await
        .map_err(|e| ApiError::internal("hashing", e))?;
    // A wrong current password stays counted against the account, as a failed login.
    let new_hash = new_hash
        .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "wrong_password", "the current password is wrong"))?
        .map_err(account_error)?;
    let not_before = accounts::change_password(&state.db, id, &account.password_hash, &new_hash)
        .await
        .map_err(account_error)?
        .ok_or_else(|| ApiError::unauthorized("the password was changed meanwhile; log in again"))?;
    if let Err(e) = state.attempt_limits.succeeded(attempt).await {
        tracing::warn!(user_id = %id, error = %e, "clearing the account's failed logins failed; they expire with their window");
    }
    tracing::info!(user_id = %id, "password changed; earlier tokens refused");
    token_reply(&state, &accounts::Account { tokens_not_before: not_before, ..account })
}

/// For the gateway: which accounts refuse tokens issued before when. Only changes within a
/// token's lifetime (and its leeway) matter; anything older has expired anyway.
async fn revocations(state: State) -> Result<warp::reply::Response, ApiError> {
    let horizon = state.config.token_ttl_s as i64 + 60;
    let changed = accounts::revocations(&state.db, horizon).await.map_err(account_error)?;
    let not_before: serde_json::Map<String, serde_json::Value> =
        changed.into_iter().map(|(id, at)| (id.to_string(), json!(at))).collect();
    Ok(warp::reply::json(&json!({ "not_before": not_before })).into_response())
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
