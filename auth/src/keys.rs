//! The token signing key and the JWKS that publishes its public half, plus the public half of
//! the previous key, so tokens signed before a rotation stay valid until they expire.

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{which} is neither an Ed25519 nor an RSA private key in PEM (PKCS#8 or PKCS#1)")]
    Unreadable { which: &'static str },
    #[error("{which} cannot be published as a JWK: {source}")]
    Jwk { which: &'static str, source: jsonwebtoken::errors::Error },
}

pub struct SigningKey {
    pub encoding: EncodingKey,
    pub algorithm: Algorithm,
    pub kid: String,
}

pub struct SigningKeys {
    pub current: SigningKey,
    pub jwks: JwkSet,
}

/// PKCS#8 DER header of an Ed25519 private key; the 32-byte seed follows it.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// EdDSA for an Ed25519 key, RS256 for an RSA key: the key decides, never the token.
fn parse(pem: &str, which: &'static str) -> Result<(EncodingKey, Algorithm), KeyError> {
    if let Ok(key) = EncodingKey::from_ed_pem(pem.as_bytes()) {
        return Ok((key, Algorithm::EdDSA));
    }
    EncodingKey::from_rsa_pem(pem.as_bytes())
        .map(|key| (key, Algorithm::RS256))
        .map_err(|_| KeyError::Unreadable { which })
}

fn publish(encoding: &EncodingKey, algorithm: Algorithm, which: &'static str) -> Result<Jwk, KeyError> {
    let jwk_error = |source| KeyError::Jwk { which, source };
    let mut jwk = Jwk::from_encoding_key(encoding, algorithm).map_err(jwk_error)?;
    let kid = jwk.thumbprint(ThumbprintHash::SHA256).map_err(jwk_error)?;
    jwk.common.key_id = Some(kid);
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(jwk)
}

impl SigningKeys {
    /// `current` signs; `previous` (the key before the last rotation) is only published.
    pub fn load(current: Option<&str>, previous: Option<&str>) -> Result<Self, KeyError> {
        let (encoding, algorithm) = match current {
            Some(pem) => parse(pem, "AUTH_SIGNING_KEY")?,
            None => {
                tracing::warn!(
                    "AUTH_SIGNING_KEY is not set: signing with a throwaway key; tokens die with this process"
                );
                let mut der = ED25519_PKCS8_PREFIX.to_vec();
                let mut seed = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut seed);
                der.extend_from_slice(&seed);
                (EncodingKey::from_ed_der(&der), Algorithm::EdDSA)
            }
        };
        let jwk = publish(&encoding, algorithm, "AUTH_SIGNING_KEY")?;
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        let mut keys = vec![jwk];
        if let Some(pem) = previous {
            let (old, old_algorithm) = parse(pem, "AUTH_PREVIOUS_SIGNING_KEY")?;
            let old = publish(&old, old_algorithm, "AUTH_PREVIOUS_SIGNING_KEY")?;
            if old.common.key_id.as_deref() != Some(kid.as_str()) {
                keys.push(old);
            }
        }
        Ok(Self { current: SigningKey { encoding, algorithm, kid }, jwks: JwkSet { keys } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_is_not_pem_is_refused_with_its_name() {
        let error = SigningKeys::load(Some("not a key"), None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("AUTH_SIGNING_KEY"), "{error}");
    }

    #[test]
    fn a_throwaway_key_is_eddsa_and_published_under_its_thumbprint() -> Result<(), KeyError> {
        let keys = SigningKeys::load(None, None)?;
        assert_eq!(keys.current.algorithm, Algorithm::EdDSA);
        assert_eq!(keys.jwks.keys.len(), 1);
        assert!(keys.jwks.find(&keys.current.kid).is_some());
        Ok(())
    }
}
