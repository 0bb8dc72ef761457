//! Who is calling: a bearer token verified locally against auth's JWKS (cached; refetched
//! when a token names a key the cache does not have, at most every 10 s whether the fetch
//! worked or not). The algorithm is the one the JWKS publishes for the key (EdDSA or RS256),
//! never the one the token claims.
//!
//! Tokens naming made-up keys are free to send, so they must not cost anyone else: the cache
//! is read without waiting on a fetch, one fetch runs at a time (callers with unknown keys
//! arriving meanwhile wait for its result), and the cache is only locked to swap in what
//! was fetched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tracing::Instrument as _;
use tunewire_contract::{AccessClaims, Email, Role, UserId};
use tunewire_service_runtime::ApiError;
use tunewire_service_runtime::telemetry::TraceHeaders;

#[derive(Debug, Clone)]
pub struct Caller {
    pub id: UserId,
    pub email: Email,
    pub admin: bool,
    /// When the token was issued and when it expires (unix s), for streams that outlive a request.
    pub issued_at: i64,
    pub expires_at: i64,
}

/// How often the gateway asks auth which accounts changed their password: a token issued
/// before a change is refused within this long.
pub const REVOCATIONS_EVERY: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct Revocations {
    not_before: HashMap<UserId, i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// Started and not finished (its task always finishes, within the fetch's timeout).
    Running,
    Worked,
    Failed,
}

pub struct TokenVerifier {
    jwks_url: String,
    revocations_url: String,
    /// Per account that changed its password lately: tokens issued before (unix s) are refused.
    not_before: std::sync::RwLock<HashMap<UserId, i64>>,
    issuer: String,
    audience: String,
    http: reqwest::Client,
    keys: std::sync::RwLock<JwkSet>,
    /// When the last fetch started and whether it worked; written by the fetch itself, so a
    /// caller that gives up waiting cannot leave it half-told.
    last_fetch: std::sync::Mutex<Option<(Instant, Fetch)>>,
    /// Held while one fetch is under way, so there is only ever one.
    fetching: tokio::sync::Mutex<()>,
}

const REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(10);
/// How far past `exp` a token is still taken, for clock skew (streams end there too).
const LEEWAY_S: i64 = 30;

impl TokenVerifier {
    pub fn new(auth_url: &str, issuer: &str, audience: &str, http: reqwest::Client) -> Arc<Self> {
        Arc::new(Self {
            jwks_url: format!("{}/.well-known/jwks.json", auth_url.trim_end_matches('/')),
            revocations_url: format!("{}/revocations", auth_url.trim_end_matches('/')),
            not_before: std::sync::RwLock::new(HashMap::new()),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            http,
            keys: std::sync::RwLock::new(JwkSet { keys: vec![] }),
            last_fetch: std::sync::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Fetches which accounts refuse tokens from before when; returns how many.
    pub async fn refresh_revocations(&self) -> Result<usize, reqwest::Error> {
        let fetched: Revocations = self
            .http
            .get(&self.revocations_url)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let count = fetched.not_before.len();
        *self.not_before.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fetched.not_before;
        Ok(count)
    }

    /// Keeps the revocations fresh until `shutdown`; a failed fetch keeps the last list.
    pub async fn follow_revocations(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(REVOCATIONS_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            if let Err(e) = self.refresh_revocations().await {
                tracing::warn!(error = %e.without_url(), "fetching token revocations from auth failed; keeping the last list");
            }
        }
    }

    fn cached(&self, kid: &str) -> Option<Jwk> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).find(kid).cloned()
    }

    /// Fetches the JWKS and records the outcome, whether or not anyone still waits for it.
    async fn fetch(self: Arc<Self>) {
        let started = Instant::now();
        let fetched: Result<JwkSet, reqwest::Error> = async {
            let request = self.http.get(&self.jwks_url).headers(TraceHeaders::current().http());
            request.timeout(Duration::from_secs(5)).send().await?.error_for_status()?.json().await
        }
        .await;
        let outcome = match fetched {
            Ok(keys) => {
                *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
                Fetch::Worked
            }
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "fetching auth's JWKS failed");
                Fetch::Failed
            }
        };
        *self.last_fetch.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((started, outcome));
    }

    async fn key(self: &Arc<Self>, kid: &str) -> Result<Option<Jwk>, ApiError> {
        if let Some(jwk) = self.cached(kid) {
            return Ok(Some(jwk));
        }
        let _fetching = self.fetching.lock().await;
        // The fetch this caller waited for may have brought the key.
        if let Some(jwk) = self.cached(kid) {
            return Ok(Some(jwk));
        }
        let last_fetch = *self.last_fetch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match last_fetch {
            // A fetch left running by a caller that gave up counts as the one allowed.
            Some((at, Fetch::Worked | Fetch::Running)) if at.elapsed() < REFRESH_AT_MOST_EVERY => return Ok(None),
            Some((at, Fetch::Failed)) if at.elapsed() < REFRESH_AT_MOST_EVERY => {
                let error = ApiError::new(
                    warp::http::StatusCode::SERVICE_UNAVAILABLE,
                    "auth_unavailable",
                    "the token's key cannot be checked: auth is unavailable; try again shortly",
                );
                return Err(error.retry_after(REFRESH_AT_MOST_EVERY - at.elapsed()));
            }
            _ => {}
        }
        // Its own task: the fetch finishes and is recorded even if this caller is dropped.
        *self.last_fetch.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), Fetch::Running));
        let fetched = tokio::spawn(self.clone().fetch().in_current_span()).await;
        let outcome = *self.last_fetch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let worked = fetched.is_ok() && outcome.is_some_and(|(_, fetch)| fetch == Fetch::Worked);
        if !worked {
            return Err(ApiError::unavailable("auth_unavailable", "the JWKS could not be fetched"));
        }
        Ok(self.cached(kid))
    }

    /// Expiry, issuer, audience and subject checked, with 30 s of leeway for clock skew.
    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_S.unsigned_abs();
        validation
    }

    /// The caller of a request with this `Authorization` header, if any.
    pub async fn authorize(self: &Arc<Self>, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let authorization = authorization
            .ok_or_else(|| ApiError::unauthorized("a bearer token is required (Authorization: Bearer <token>)"))?;
        self.verify(authorization).await
    }

    pub async fn verify(self: &Arc<Self>, authorization: &str) -> Result<Caller, ApiError> {
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
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key, &self.validation(algorithm)).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::unauthorized("the token has expired; log in again"),
                ErrorKind::InvalidAudience => ApiError::unauthorized("the token is not meant for this service"),
                _ => ApiError::unauthorized("the token is invalid"),
            }
        })?;
        let claims = data.claims;
        let id: UserId = claims.sub.parse().map_err(|_| ApiError::unauthorized("the token's subject is invalid"))?;
        if self.revoked(id, claims.iat) {
            return Err(ApiError::unauthorized("the password was changed after this token was issued; log in again"));
        }
        Ok(Caller {
            id,
            email: claims.email.parse().map_err(|_| ApiError::unauthorized("the token's email is invalid"))?,
            admin: claims.role == Role::Admin,
            issued_at: claims.iat,
            expires_at: claims.exp,
        })
    }

    fn revoked(&self, id: UserId, issued_at: i64) -> bool {
        let not_before = self.not_before.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).copied();
        not_before.is_some_and(|at| issued_at < at)
    }

    /// Returns when `caller`'s token stops being accepted: at its expiry (and leeway), or within
    /// `REVOCATIONS_EVERY` of a password change. A response that streams for longer than a
    /// request ends with it.
    pub async fn lapsed(self: Arc<Self>, caller: Caller) {
        loop {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let expires = caller.expires_at.saturating_add(LEEWAY_S);
            if now >= expires || self.revoked(caller.id, caller.issued_at) {
                return;
            }
            let left = Duration::from_secs(u64::try_from(expires - now).unwrap_or(0));
            tokio::time::sleep(left.min(REVOCATIONS_EVERY)).await;
        }
    }
}
