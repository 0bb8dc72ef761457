//! The token signing key and the JWKS that publishes its public half.

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
#[error("AUTH_SIGNING_KEY is not a usable Ed25519 PKCS#8 PEM key: {0}")]
pub struct KeyError(#[from] jsonwebtoken::errors::Error);

pub struct SigningKeys {
    pub encoding: EncodingKey,
    pub kid: String,
    pub jwks: JwkSet,
}

/// PKCS#8 DER header of an Ed25519 private key; the 32-byte seed follows it.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

impl SigningKeys {
    pub fn load(pem: Option<&str>) -> Result<Self, KeyError> {
        let encoding = match pem {
            Some(pem) => EncodingKey::from_ed_pem(pem.as_bytes())?,
            None => {
                tracing::warn!(
                    "AUTH_SIGNING_KEY is not set: signing with a throwaway key; tokens die with this process"
                );
                let mut der = ED25519_PKCS8_PREFIX.to_vec();
                let mut seed = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut seed);
                der.extend_from_slice(&seed);
                EncodingKey::from_ed_der(&der)
            }
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::EdDSA)?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256)?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Self { encoding, kid, jwks: JwkSet { keys: vec![jwk] } })
    }
}
