use std::net::SocketAddr;
use std::path::PathBuf;

use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{secret, var};

#[derive(Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub database_url: String,
    pub amqp_url: String,
    /// The tantivy index; derived from PostgreSQL and rebuilt from it when missing.
    pub index_dir: PathBuf,
    /// No key, no tags.
    pub lastfm_api_key: Option<String>,
    pub lastfm_url: String,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            bind: var("CATALOG_BIND", SocketAddr::from(([0, 0, 0, 0], 8082)))?,
            database_url: secret("DATABASE_URL")?
                .unwrap_or_else(|| "postgres://tunewire:tunewire@127.0.0.1:5432/tunewire".into()),
            amqp_url: secret("AMQP_URL")?.unwrap_or_else(|| "amqp://tunewire:tunewire@127.0.0.1:5672/%2f".into()),
            index_dir: var("CATALOG_INDEX_DIR", std::env::temp_dir().join("tunewire-index"))?,
            lastfm_api_key: secret("LASTFM_API_KEY")?,
            lastfm_url: var("LASTFM_URL", "https://ws.audioscrobbler.com/2.0/".to_string())?,
        })
    }
}
