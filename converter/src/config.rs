use std::net::SocketAddr;

use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{SecretString, secret, var};

#[derive(Debug, Clone)]
pub struct Config {
    /// `/healthz`, `/readyz`, `/metrics`.
    pub health_bind: SocketAddr,
    pub amqp_url: SecretString,
    pub mongodb_uri: SecretString,
    pub mongodb_database_prefix: String,
    /// Conversions at once (and the queue prefetch).
    pub concurrency: u16,
    /// Longer inputs fail with a reason instead of tying up a worker.
    pub max_duration_s: f64,
    /// Wall-clock seconds one conversion may take before it fails with the reason.
    pub time_limit_s: u64,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u16;
        Ok(Self {
            health_bind: var("CONVERTER_HEALTH_BIND", SocketAddr::from(([0, 0, 0, 0], 9101)))?,
            amqp_url: secret("AMQP_URL")?.unwrap_or_else(|| "amqp://tunewire:tunewire@127.0.0.1:5672/%2f".into()),
            mongodb_uri: secret("MONGODB_URI")?.unwrap_or_else(|| "mongodb://tunewire:tunewire@127.0.0.1:27017".into()),
            mongodb_database_prefix: var("MONGODB_DATABASE_PREFIX", "tunewire".to_string())?,
            concurrency: var("CONVERTER_CONCURRENCY", cores)?.max(1),
            max_duration_s: var("CONVERTER_MAX_DURATION_S", 4.0 * 3600.0)?,
            time_limit_s: var("CONVERTER_TIME_LIMIT_S", 1800)?,
        })
    }

    /// Defaults for the local stack with the given dependencies; tests start from it.
    pub fn local(amqp_url: String, mongodb_uri: String, mongodb_database_prefix: String) -> Self {
        Self {
            health_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            amqp_url: amqp_url.into(),
            mongodb_uri: mongodb_uri.into(),
            mongodb_database_prefix,
            concurrency: 2,
            max_duration_s: 4.0 * 3600.0,
            time_limit_s: 1800,
        }
    }
}
