use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use tunewire_events::{Email, UserId};
use tunewire_service_runtime::ApiError;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::config::Config;
use crate::keys::SigningKeys;

#[derive(Clone)]
pub struct State {
    pub db: PgPool,
    pub keys: Arc<SigningKeys>,
    pub config: Arc<Config>,
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
        .and(with_state.clone())
        .and_then(|c, s| async move { login(c, s).await.map_err(warp::reject::custom) });
    let jwks = warp::path!(".well-known" / "jwks.json")
        .and(warp::get())
        .and(with_state)
        .map(|s: State| warp::reply::json(&s.keys.jwks).into_response());
    register.or(login).unify().or(jwks).unify()
}

fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal("hashing", e))
}

async fn register(creds: Credentials, state: State) -> Result<warp::reply::Response, ApiError> {
    let email: Email = creds
        .email
        .parse()
        .map_err(|e: tunewire_events::IdError| ApiError::bad_request("invalid_email", e.to_string()))?;
    let length = creds.password.chars().count();
    if !(8..=256).contains(&length) {
        return Err(ApiError::bad_request("invalid_password", "the password must be 8 to 256 characters long"));
    }
    let password = creds.password;
    let hash = blocking(move || hash_password(&password)).await?.map_err(|e| ApiError::internal("hashing", e))?;
    let id = UserId::new();
    let inserted = sqlx::query(
        "INSERT INTO auth.users (id, email, password_hash) VALUES ($1, $2, $3) ON CONFLICT (email) DO NOTHING",
    )
    .bind(id.as_uuid())
    .bind(email.as_str())
    .bind(&hash)
    .execute(&state.db)
    .await
    .map_err(|e| ApiError::unavailable("database_unavailable", e))?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::new(StatusCode::CONFLICT, "email_taken", format!("{email} is already registered")));
    }
    tracing::info!(user_id = %id, "registered");
    let body = warp::reply::json(&json!({"id": id, "email": email, "role": "user"}));
    Ok(warp::reply::with_status(body, StatusCode::CREATED).into_response())
}

async fn login(creds: Credentials, state: State) -> Result<warp::reply::Response, ApiError> {
    let invalid = || ApiError::unauthorized("the email or password is wrong");
    let email: Email = creds.email.parse().map_err(|_| invalid())?;
    let row: Option<(uuid::Uuid, String, String)> =
        sqlx::query_as("SELECT id, password_hash, role FROM auth.users WHERE email = $1")
            .bind(email.as_str())
            .fetch_optional(&state.db)
            .await
            .map_err(|e| ApiError::unavailable("database_unavailable", e))?;
    let Some((id, stored_hash, role)) = row else { return Err(invalid()) };
    let password = creds.password;
    let verified = blocking(move || {
        PasswordHash::new(&stored_hash)
            .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await?;
    if !verified {
        return Err(invalid());
    }
    let now = chrono::Utc::now().timestamp();
    let ttl = state.config.token_ttl_s as i64;
    let claims = Claims {
        sub: id.to_string(),
        email: email.as_str(),
        role: &role,
        iss: &state.config.issuer,
        aud: &state.config.audience,
        iat: now,
        exp: now + ttl,
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(state.keys.kid.clone());
    let token =
        jsonwebtoken::encode(&header, &claims, &state.keys.encoding).map_err(|e| ApiError::internal("signing", e))?;
    Ok(warp::reply::json(&json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl})).into_response())
}
