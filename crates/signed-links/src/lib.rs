//! Download links that work without logging in: HMAC-SHA256 over the file, its owner and an
//! expiry. The notifier signs them, the gateway verifies them; both hold the secret. A
//! previous secret is still accepted so the secret can be rotated without breaking links.
//!
//! Token: `base64url(claims JSON) "." base64url(mac)`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tunewire_contract::{FileId, UserId};

type HmacSha256 = Hmac<Sha256>;

/// The shortest secret the services accept (`LINK_SECRET`, `LINK_SECRET_PREVIOUS`): as long
/// as the HMAC-SHA256 output, so the key is not the weak part.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where an emailed link points, under the gateway's public URL: the web app's page for the
/// track, which works signed out and plays and downloads through [`download_path`].
pub fn page_path(token: &str) -> String {
    format!("/d/{token}")
}

/// The API route that serves the MP3 a link names.
pub fn download_path(token: &str) -> String {
    format!("/v1/downloads/{token}")
}

/// The token of a link page's path or whole URL.
pub fn token_of_page(link: &str) -> Option<&str> {
    link.rsplit_once("/d/").map(|(_, token)| token).filter(|t| !t.is_empty() && !t.contains('/'))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    pub file_id: FileId,
    pub owner: UserId,
    /// Unix seconds.
    pub exp: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("the download link is malformed")]
    Malformed,
    #[error("the download link's signature is invalid (was it altered?)")]
    BadSignature,
    #[error("the download link expired at {0}")]
    Expired(DateTime<Utc>),
}

impl LinkError {
    pub fn code(&self) -> &'static str {
        match self {
            LinkError::Malformed => "link_malformed",
            LinkError::BadSignature => "link_tampered",
            LinkError::Expired(_) => "link_expired",
        }
    }
}

#[derive(Clone)]
pub struct LinkSigner {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl LinkSigner {
    pub fn new(current: impl Into<Vec<u8>>, previous: Option<Vec<u8>>) -> Self {
        Self { current: current.into(), previous }
    }

    fn mac(key: &[u8], payload: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length.
        let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(payload);
        mac
    }

    pub fn sign(&self, claims: &LinkClaims) -> String {
        // Claims are plain data; serialising them cannot fail.
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let tag = Self::mac(&self.current, &payload).finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(tag))
    }

    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<LinkClaims, LinkError> {
        let (payload_b64, tag_b64) = token.split_once('.').ok_or(LinkError::Malformed)?;
        let payload = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| LinkError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag_b64).map_err(|_| LinkError::Malformed)?;
        let valid = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .any(|key| Self::mac(key, &payload).verify_slice(&tag).is_ok());
        if !valid {
            return Err(LinkError::BadSignature);
        }
        let claims: LinkClaims = serde_json::from_slice(&payload).map_err(|_| LinkError::Malformed)?;
        let expires = DateTime::from_timestamp(claims.exp, 0).ok_or(LinkError::Malformed)?;
        if expires <= now {
            return Err(LinkError::Expired(expires));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> LinkClaims {
        LinkClaims { file_id: "65a1b2c3d4e5f60718293a4b".parse().unwrap(), owner: UserId::new(), exp }
    }

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let signer = LinkSigner::new(b"secret".to_vec(), None);
        let now = Utc::now();
        let c = claims(now.timestamp() + 60);
        let token = signer.sign(&c);
        assert_eq!(signer.verify(&token, now), Ok(c));
        assert!(matches!(signer.verify(&token, now + chrono::Duration::seconds(61)), Err(LinkError::Expired(_))));
    }

    #[test]
    fn tampering_is_detected() {
        let signer = LinkSigner::new(b"secret".to_vec(), None);
        let now = Utc::now();
        let token = signer.sign(&claims(now.timestamp() + 60));
        let (payload, tag) = token.split_once('.').unwrap();
        let mut forged_claims = claims(now.timestamp() + 1_000_000);
        forged_claims.file_id = "000000000000000000000000".parse().unwrap();
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap()));
        assert_eq!(signer.verify(&forged, now), Err(LinkError::BadSignature));
        assert_eq!(signer.verify(payload, now), Err(LinkError::Malformed));
        assert_eq!(signer.verify("x.y", now), Err(LinkError::Malformed));
    }

    #[test]
    fn rotation_keeps_old_links_working() {
        let old = LinkSigner::new(b"old".to_vec(), None);
        let rotated = LinkSigner::new(b"new".to_vec(), Some(b"old".to_vec()));
        let now = Utc::now();
        let token = old.sign(&claims(now.timestamp() + 60));
        assert!(rotated.verify(&token, now).is_ok());
        assert_eq!(LinkSigner::new(b"new".to_vec(), None).verify(&token, now), Err(LinkError::BadSignature));
    }
}
