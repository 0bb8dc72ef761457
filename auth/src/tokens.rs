//! Access tokens: issuing one, and checking one auth issued itself (a password
//! change is made with the caller's token).

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use tunewire_contract::{AccessClaims, Email, Role, UserId};
use tunewire_service_runtime::ApiError;

use crate::config::Config;
use crate::keys::SigningKeys;

/// A token for this account, issued at `issued_at` (unix seconds); `None` only when the key
/// cannot sign, which is a bug.
pub fn issue(
    keys: &SigningKeys,
    config: &Config,
    (id, email, role): (UserId, &Email, Role),
    issued_at: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = AccessClaims {
        sub: id.to_string(),
        email: email.to_string(),
        role,
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        iat: issued_at,
        exp: issued_at + config.token_ttl_s as i64,
    };
    let key = &keys.current;
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.encoding)
}

/// The claims of `Authorization: Bearer <token>`, if auth signed it with a published key
/// and it is alive and meant for this audience.
pub fn verify(keys: &SigningKeys, config: &Config, authorization: Option<&str>) -> Result<AccessClaims, ApiError> {
    let invalid = || ApiError::unauthorized("a valid bearer token is required (Authorization: Bearer <token>)");
    let token = authorization
        .and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(invalid)?;
    let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid).ok_or_else(invalid)?;
    let jwk = keys.jwks.find(&kid).ok_or_else(invalid)?;
    let algorithm = jwk
        .common
        .key_algorithm
        .and_then(|a| Algorithm::try_from(a).ok())
        .filter(|a| matches!(a, Algorithm::EdDSA | Algorithm::RS256))
        .ok_or_else(invalid)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| invalid())?;
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 30;
    jsonwebtoken::decode::<AccessClaims>(token, &key, &validation).map(|data| data.claims).map_err(|_| invalid())
}
