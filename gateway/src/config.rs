use std::net::SocketAddr;

use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{required_secret, secret, var};

#[derive(Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub database_url: String,
    pub amqp_url: String,
    pub mongodb_uri: String,
    pub mongodb_database: String,
    /// Where auth answers (register, login, JWKS).
    pub auth_url: String,
    /// Where catalog-indexer answers `/search`.
    pub catalog_url: String,
    pub token_issuer: String,
    pub token_audience: String,
    /// HMAC secret of download links, shared with the notifier; and the one before it.
    pub link_secret: String,
    pub link_secret_previous: Option<String>,
    pub max_upload_bytes: u64,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            bind: var("GATEWAY_BIND", SocketAddr::from(([0, 0, 0, 0], 8080)))?,
            database_url: secret("DATABASE_URL")?
                .unwrap_or_else(|| "postgres://tunewire:tunewire@127.0.0.1:5432/tunewire".into()),
            amqp_url: secret("AMQP_URL")?.unwrap_or_else(|| "amqp://tunewire:tunewire@127.0.0.1:5672/%2f".into()),
            mongodb_uri: secret("MONGODB_URI")?.unwrap_or_else(|| "mongodb://127.0.0.1:27017".into()),
            mongodb_database: var("MONGODB_DATABASE", "tunewire".to_string())?,
            auth_url: var("AUTH_URL", "http://127.0.0.1:8081".to_string())?,
            catalog_url: var("CATALOG_URL", "http://127.0.0.1:8082".to_string())?,
            token_issuer: var("AUTH_ISSUER", "tunewire-auth".to_string())?,
            token_audience: var("AUTH_AUDIENCE", "tunewire".to_string())?,
            link_secret: required_secret("LINK_SECRET")?,
            link_secret_previous: secret("LINK_SECRET_PREVIOUS")?,
            max_upload_bytes: var("MAX_UPLOAD_BYTES", 2u64 << 30)?,
        })
    }
}
