use std::net::SocketAddr;

use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{secret, var};

#[derive(Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub database_url: String,
    /// Ed25519 private key, PKCS#8 PEM (`openssl genpkey -algorithm ed25519`). Unset: a
    /// throwaway key per process, fine for one local instance only.
    pub signing_key_pem: Option<String>,
    pub issuer: String,
    pub audience: String,
    pub token_ttl_s: u64,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            bind: var("AUTH_BIND", SocketAddr::from(([0, 0, 0, 0], 8081)))?,
            database_url: secret("DATABASE_URL")?
                .unwrap_or_else(|| "postgres://tunewire:tunewire@127.0.0.1:5432/tunewire".into()),
            signing_key_pem: secret("AUTH_SIGNING_KEY")?,
            issuer: var("AUTH_ISSUER", "tunewire-auth".to_string())?,
            audience: var("AUTH_AUDIENCE", "tunewire".to_string())?,
            token_ttl_s: var("AUTH_TOKEN_TTL_S", 3600)?,
        })
    }
}
