use std::net::SocketAddr;

use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{Env, SecretString, Setting, Source, Values, shared};

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

const HEALTH_BIND: Setting =
    Setting::new("CONVERTER_HEALTH_BIND", "0.0.0.0:9101", "`/healthz`, `/readyz` and `/metrics`");
const CONCURRENCY: Setting =
    Setting::derived("CONVERTER_CONCURRENCY", "number of cores", "conversions at once (= prefetch)");
const MAX_DURATION_S: Setting = Setting::new(
    "CONVERTER_MAX_DURATION_S",
    "14400",
    "longer media fails with a reason, whether its header says so or its audio decodes for longer",
);
const TIME_LIMIT_S: Setting = Setting::new(
    "CONVERTER_TIME_LIMIT_S",
    "1800",
    "a conversion taking longer fails with a reason, even one blocked reading from the store",
);

/// Everything the converter reads.
pub const SETTINGS: &[Setting] = &[
    HEALTH_BIND,
    shared::AMQP_URL,
    shared::MONGODB_URI,
    shared::MONGODB_DATABASE_PREFIX,
    CONCURRENCY,
    MAX_DURATION_S,
    TIME_LIMIT_S,
];

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env)
    }

    /// The defaults, serving health on a free local port, two conversions at once, with the
    /// given dependencies; tests start from it.
    pub fn local(amqp_url: String, mongodb_uri: String, mongodb_database_prefix: String) -> Self {
        Self::read(&Values::new([
            (HEALTH_BIND.name, "127.0.0.1:0".into()),
            (shared::AMQP_URL.name, amqp_url),
            (shared::MONGODB_URI.name, mongodb_uri),
            (shared::MONGODB_DATABASE_PREFIX.name, mongodb_database_prefix),
            (CONCURRENCY.name, "2".into()),
        ]))
        .expect("the defaults parse (tested)")
    }

    fn read(source: &impl Source) -> Result<Self, ConfigError> {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Ok(Self {
            health_bind: HEALTH_BIND.get(source)?,
            amqp_url: shared::AMQP_URL.get_secret(source)?,
            mongodb_uri: shared::MONGODB_URI.get_secret(source)?,
            mongodb_database_prefix: shared::MONGODB_DATABASE_PREFIX.get(source)?,
            concurrency: CONCURRENCY.get_opt(source)?.unwrap_or(u16::try_from(cores).unwrap_or(u16::MAX)).max(1),
            max_duration_s: MAX_DURATION_S.get(source)?,
            time_limit_s: TIME_LIMIT_S.get(source)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_parse() {
        let local = Config::local("amqp://x".into(), "mongodb://x".into(), "p".into());
        assert_eq!(local.health_bind.port(), 0);
        assert_eq!(local.concurrency, 2);
    }
}
