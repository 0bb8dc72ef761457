use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{Env, Fallback, SecretString, Setting, Source, Values, shared};

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

const BIND: Setting = Setting::new("CATALOG_BIND", "0.0.0.0:8082", "where search listens");
const INDEX_DIR: Setting = Setting::derived(
    "CATALOG_INDEX_DIR",
    "`$TMPDIR/tunewire-index`",
    "the tantivy index, rebuilt from PostgreSQL when missing",
);
const LASTFM_API_KEY: Setting = Setting::secret("LASTFM_API_KEY", Fallback::Unset, "no key, no tags");
const LASTFM_URL: Setting = Setting::new("LASTFM_URL", "https://ws.audioscrobbler.com/2.0/", "Last.fm's API");
const LASTFM_RATE_PER_S: Setting =
    Setting::new("LASTFM_RATE_PER_S", "5", "calls per second to Last.fm, per process (its terms ask for 5 at most)");
const LASTFM_CACHE_TTL_S: Setting =
    Setting::new("LASTFM_CACHE_TTL_S", "604800", "how long an answer is reused for the same artist and title");
const LASTFM_RETRY_S: Setting = Setting::new(
    "LASTFM_RETRY_S",
    "60",
    "first wait before asking again for tracks Last.fm could not tag (doubling, at most 6 h)",
);
const SEARCH_SLOTS: Setting = Setting::derived("CATALOG_SEARCH_SLOTS", "number of cores", "searches at once");
const SEARCH_QUEUE: Setting =
    Setting::new("CATALOG_SEARCH_QUEUE", "32", "searches waiting for a slot; beyond, 503 with `Retry-After`");

/// Everything the catalog indexer reads.
pub const SETTINGS: &[Setting] = &[
    BIND,
    shared::DATABASE_URL,
    shared::AMQP_URL,
    INDEX_DIR,
    LASTFM_API_KEY,
    LASTFM_URL,
    LASTFM_RATE_PER_S,
    LASTFM_CACHE_TTL_S,
    LASTFM_RETRY_S,
    SEARCH_SLOTS,
    SEARCH_QUEUE,
];

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env)
    }

    /// The defaults, listening on a free local port, with the given dependencies and index
    /// folder; tests start from it.
    pub fn local(database_url: String, amqp_url: String, index_dir: PathBuf) -> Self {
        let config = Self::read(&Values::new([
            (BIND.name, "127.0.0.1:0".into()),
            (shared::DATABASE_URL.name, database_url),
            (shared::AMQP_URL.name, amqp_url),
        ]))
        .expect("the defaults parse (tested)");
        Self { index_dir, ..config }
    }

    fn read(source: &impl Source) -> Result<Self, ConfigError> {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Ok(Self {
            bind: BIND.get(source)?,
            database_url: shared::DATABASE_URL.get_secret(source)?,
            amqp_url: shared::AMQP_URL.get_secret(source)?,
            index_dir: INDEX_DIR.get_opt(source)?.unwrap_or_else(|| std::env::temp_dir().join("tunewire-index")),
            lastfm_api_key: LASTFM_API_KEY.get_secret_opt(source)?,
            lastfm_url: LASTFM_URL.get(source)?,
            lastfm_rate_per_s: LASTFM_RATE_PER_S.get(source)?,
            lastfm_cache_ttl: LASTFM_CACHE_TTL_S.get_seconds(source)?,
            lastfm_retry_every: LASTFM_RETRY_S.get_seconds(source)?,
            search_slots: SEARCH_SLOTS.get_opt(source)?.unwrap_or(cpus),
            search_queue: SEARCH_QUEUE.get(source)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_parse() {
        let local = Config::local("postgres://x".into(), "amqp://x".into(), "/tmp/i".into());
        assert_eq!(local.bind.port(), 0);
        assert_eq!(local.index_dir, PathBuf::from("/tmp/i"));
    }
}
