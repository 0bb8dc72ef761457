use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{SecretString, required_secret_key, secret, secret_key, var};
use tunewire_signed_links::MIN_SECRET_BYTES;

use crate::job_events::DEFAULT_LIMITS as STREAM_LIMITS;
use crate::quotas::Quotas;
use crate::upload_admission::DEFAULT_LIMITS as UPLOAD_LIMITS;

#[derive(Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub database_url: SecretString,
    pub amqp_url: SecretString,
    pub mongodb_uri: SecretString,
    pub mongodb_database_prefix: String,
    /// Where auth answers (register, login, JWKS).
    pub auth_url: String,
    /// Where catalog-indexer answers `/search`.
    pub catalog_url: String,
    pub token_issuer: String,
    pub token_audience: String,
    /// HMAC secret of download links, shared with the notifier; and the one before it.
    pub link_secret: SecretString,
    pub link_secret_previous: Option<SecretString>,
    pub max_upload_bytes: u64,
    /// An upload that sends nothing for this long is refused (408) and its partial file
    /// removed: a client that declares more than it sends must not hold them forever.
    pub upload_idle_timeout: Duration,
    /// The program whose `probe` subcommand judges uploads: this binary (tests point it at
    /// the built gateway).
    pub probe_program: PathBuf,
    pub retention: crate::retention::Policy,
    pub upload_limits: crate::upload_admission::Limits,
    /// Job event streams open at once, per process and per user.
    pub stream_limits: crate::places::Limits,
    pub quotas: crate::quotas::Quotas,
}

fn this_program() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("tunewire-gateway"))
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            bind: var("GATEWAY_BIND", SocketAddr::from(([0, 0, 0, 0], 8080)))?,
            database_url: secret("DATABASE_URL")?
                .unwrap_or_else(|| "postgres://tunewire:tunewire@127.0.0.1:5432/tunewire".into()),
            amqp_url: secret("AMQP_URL")?.unwrap_or_else(|| "amqp://tunewire:tunewire@127.0.0.1:5672/%2f".into()),
            mongodb_uri: secret("MONGODB_URI")?.unwrap_or_else(|| "mongodb://tunewire:tunewire@127.0.0.1:27017".into()),
            mongodb_database_prefix: var("MONGODB_DATABASE_PREFIX", "tunewire".to_string())?,
            auth_url: var("AUTH_URL", "http://127.0.0.1:8081".to_string())?,
            catalog_url: var("CATALOG_URL", "http://127.0.0.1:8082".to_string())?,
            token_issuer: var("AUTH_ISSUER", "tunewire-auth".to_string())?,
            token_audience: var("AUTH_AUDIENCE", "tunewire".to_string())?,
            link_secret: required_secret_key("LINK_SECRET", MIN_SECRET_BYTES)?,
            link_secret_previous: secret_key("LINK_SECRET_PREVIOUS", MIN_SECRET_BYTES)?,
            max_upload_bytes: var("MAX_UPLOAD_BYTES", 2u64 << 30)?,
            upload_idle_timeout: Duration::from_secs(var("UPLOAD_IDLE_TIMEOUT_S", 60)?),
            probe_program: this_program(),
            retention: crate::retention::Policy {
                originals: Duration::from_secs(var("RETENTION_ORIGINALS_S", 24 * 3600)?),
                outputs: Duration::from_secs(var("RETENTION_OUTPUTS_S", 7 * 24 * 3600)?),
                every: Duration::from_secs(var("RETENTION_SWEEP_S", 300)?),
            },
            upload_limits: crate::upload_admission::Limits {
                per_process: var("GATEWAY_UPLOADS_IN_FLIGHT", UPLOAD_LIMITS.per_process)?,
                per_user: var("GATEWAY_UPLOADS_IN_FLIGHT_PER_USER", UPLOAD_LIMITS.per_user)?,
            },
            stream_limits: crate::places::Limits {
                per_process: var("GATEWAY_EVENT_STREAMS", STREAM_LIMITS.per_process)?,
                per_user: var("GATEWAY_EVENT_STREAMS_PER_USER", STREAM_LIMITS.per_user)?,
            },
            quotas: Quotas {
                jobs_in_progress: var("GATEWAY_QUOTA_JOBS_IN_PROGRESS", Quotas::DEFAULT.jobs_in_progress)?,
                stored_bytes: var("GATEWAY_QUOTA_STORED_BYTES", Quotas::DEFAULT.stored_bytes)?,
            },
        })
    }

    /// Defaults for the local stack with the given dependencies; tests start from it.
    pub fn local(database_url: String, amqp_url: String, mongodb_uri: String, mongodb_database_prefix: String) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            amqp_url: amqp_url.into(),
            mongodb_uri: mongodb_uri.into(),
            mongodb_database_prefix,
            auth_url: "http://127.0.0.1:8081".into(),
            catalog_url: "http://127.0.0.1:8082".into(),
            token_issuer: "tunewire-auth".into(),
            token_audience: "tunewire".into(),
            link_secret: "local-link-secret-of-thirty-two-bytes".into(),
            link_secret_previous: None,
            max_upload_bytes: 2 << 30,
            upload_idle_timeout: Duration::from_secs(60),
            probe_program: this_program(),
            retention: crate::retention::Policy {
                originals: Duration::from_secs(24 * 3600),
                outputs: Duration::from_secs(7 * 24 * 3600),
                every: Duration::from_secs(300),
            },
            upload_limits: UPLOAD_LIMITS,
            stream_limits: STREAM_LIMITS,
            quotas: Quotas::DEFAULT,
        }
    }
}
