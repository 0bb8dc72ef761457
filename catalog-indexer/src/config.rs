use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{SecretString, secret, var};

#[derive(Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub database_url: SecretString,
    pub amqp_url: SecretString,
    /// The tantivy index; derived from PostgreSQL and rebuilt from it when missing.
    pub index_dir: PathBuf,
    /// No key, no tags.
    pub lastfm_api_key: Option<SecretString>,
    pub lastfm_url: String,
    /// Calls per second to Last.fm, process-wide (its terms ask for no more than 5).
    pub lastfm_rate_per_s: f64,
    /// How long an answer is reused for the same artist and title.
    pub lastfm_cache_ttl: Duration,
    /// The first wait before asking again for tracks Last.fm could not tag (then doubling).
    pub lastfm_retry_every: Duration,
    /// Searches run at once; more wait in a queue of `search_queue`, the rest get 503.
    pub search_slots: usize,
    pub search_queue: usize,
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

const DEFAULT_SEARCH_QUEUE: usize = 32;

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
            lastfm_rate_per_s: var("LASTFM_RATE_PER_S", 5.0)?,
            lastfm_cache_ttl: Duration::from_secs(var("LASTFM_CACHE_TTL_S", 7 * 24 * 3600)?),
            lastfm_retry_every: Duration::from_secs(var("LASTFM_RETRY_S", 60)?),
            search_slots: var("CATALOG_SEARCH_SLOTS", cpus())?,
            search_queue: var("CATALOG_SEARCH_QUEUE", DEFAULT_SEARCH_QUEUE)?,
        })
    }

    /// Defaults for the local stack with the given dependencies; tests start from it.
    pub fn local(database_url: String, amqp_url: String, index_dir: PathBuf) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            amqp_url: amqp_url.into(),
            index_dir,
            lastfm_api_key: None,
            lastfm_url: "https://ws.audioscrobbler.com/2.0/".into(),
            lastfm_rate_per_s: 5.0,
            lastfm_cache_ttl: Duration::from_secs(7 * 24 * 3600),
            lastfm_retry_every: Duration::from_secs(60),
            search_slots: cpus(),
            search_queue: DEFAULT_SEARCH_QUEUE,
        }
    }
}
