//! Who is calling: a bearer token verified locally against auth's JWKS (cached; refetched
//! when a token names a key the cache does not have, at most every 10 s). The algorithm is
//! the one the JWKS publishes for the key (EdDSA or RS256), never the one the token claims.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;
use tunewire_events::{Email, UserId};
use tunewire_service_runtime::ApiError;

#[derive(Debug, Clone)]
pub struct Caller {
    pub id: UserId,
    pub email: Email,
    pub admin: bool,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    email: String,
    role: String,
}

pub struct TokenVerifier {
    jwks_url: String,
    issuer: String,
    audience: String,
    http: reqwest::Client,
    cache: RwLock<(JwkSet, Option<Instant>)>,
}

const REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(10);

impl TokenVerifier {
    pub fn new(auth_url: &str, issuer: &str, audience: &str, http: reqwest::Client) -> Arc<Self> {
        Arc::new(Self {
            jwks_url: format!("{}/.well-known/jwks.json", auth_url.trim_end_matches('/')),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            http,
            cache: RwLock::new((JwkSet { keys: vec![] }, None)),
        })
    }

    async fn key(&self, kid: &str) -> Result<Option<Jwk>, ApiError> {
        {
            let cache = self.cache.read().await;
            if let Some(jwk) = cache.0.find(kid) {
                return Ok(Some(jwk.clone()));
            }
            if cache.1.is_some_and(|at| at.elapsed() < REFRESH_AT_MOST_EVERY) {
                return Ok(None);
            }
        }
        let mut cache = self.cache.write().await;
        if let Some(jwk) = cache.0.find(kid) {
            return Ok(Some(jwk.clone()));
        }
        if cache.1.is_some_and(|at| at.elapsed() < REFRESH_AT_MOST_EVERY) {
            return Ok(None);
        }
        let fetched: JwkSet = self
            .http
            .get(&self.jwks_url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| ApiError::unavailable("auth_unavailable", e))?
            .json()
            .await
            .map_err(|e| ApiError::unavailable("auth_unavailable", e))?;
        *cache = (fetched, Some(Instant::now()));
        Ok(cache.0.find(kid).cloned())
    }

    /// Expiry, issuer, audience and subject checked, with 30 s of leeway for clock skew.
    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        validation
    }

    pub async fn verify(&self, authorization: &str) -> Result<Caller, ApiError> {
        let token = authorization
            .strip_prefix("Bearer ")
            .or_else(|| authorization.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?
            .trim();
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| ApiError::unauthorized("the token is malformed"))?;
        let kid = header.kid.ok_or_else(|| ApiError::unauthorized("the token names no key (kid)"))?;
        let jwk =
            self.key(&kid).await?.ok_or_else(|| ApiError::unauthorized("the token was signed by an unknown key"))?;
        let algorithm = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::try_from(a).ok())
            .filter(|a| matches!(a, Algorithm::EdDSA | Algorithm::RS256))
            .ok_or_else(|| ApiError::unauthorized("the token's key has no supported algorithm"))?;
        if header.alg != algorithm {
            return Err(ApiError::unauthorized("the token's algorithm does not match its key"));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| ApiError::unauthorized("the token's key is unusable"))?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation(algorithm)).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::unauthorized("the token has expired; log in again"),
                ErrorKind::InvalidAudience => ApiError::unauthorized("the token is not meant for this service"),
                _ => ApiError::unauthorized("the token is invalid"),
            }
        })?;
        let claims = data.claims;
        Ok(Caller {
            id: claims.sub.parse().map_err(|_| ApiError::unauthorized("the token's subject is invalid"))?,
            email: claims.email.parse().map_err(|_| ApiError::unauthorized("the token's email is invalid"))?,
            admin: claims.role == "admin",
        })
    }
}
