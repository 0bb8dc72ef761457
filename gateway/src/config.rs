use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{Env, SecretString, Setting, Source, Values, shared};
use tunewire_signed_links::MIN_SECRET_BYTES;

use crate::quotas::Quotas;

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
    pub tus: TusLimits,
    /// Browser origins allowed to call the API from another origin (CORS); none when empty.
    pub cors_origins: Vec<String>,
    /// The web app's session cookies are `Secure` (sent over HTTPS and to `localhost` only).
    pub session_cookie_secure: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct TusLimits {
    /// An unfinished resumable upload is removed this long after its last PATCH.
    pub expires_after: Duration,
    /// Unfinished resumable uploads one user may have.
    pub open_per_user: i64,
}

const BIND: Setting = Setting::new("GATEWAY_BIND", "0.0.0.0:8080", "where the API listens");
const AUTH_URL: Setting = Setting::new("AUTH_URL", "http://127.0.0.1:8081", "auth, for register, login and JWKS");
const CATALOG_URL: Setting = Setting::new("CATALOG_URL", "http://127.0.0.1:8082", "catalog-indexer, for search");
const LINK_SECRET_PREVIOUS: Setting = Setting::secret(
    "LINK_SECRET_PREVIOUS",
    tunewire_service_runtime::config::Fallback::Unset,
    "the download-link key before a rotation, still accepted; at least 32 bytes",
);
const MAX_UPLOAD_BYTES: Setting =
    Setting::new("MAX_UPLOAD_BYTES", "2147483648", "larger uploads get 413 and leave nothing behind");
const UPLOAD_IDLE_TIMEOUT_S: Setting = Setting::new(
    "UPLOAD_IDLE_TIMEOUT_S",
    "60",
    "an upload that sends nothing for this long gets 408 and leaves nothing behind",
);
const RETENTION_ORIGINALS_S: Setting =
    Setting::new("RETENTION_ORIGINALS_S", "86400", "originals older than this are removed (the MP3 stays)");
const RETENTION_OUTPUTS_S: Setting =
    Setting::new("RETENTION_OUTPUTS_S", "604800", "MP3s older than this are removed; the job becomes `expired`");
const RETENTION_SWEEP_S: Setting = Setting::new("RETENTION_SWEEP_S", "300", "how often retention runs");
const UPLOADS_IN_FLIGHT: Setting = Setting::new(
    "GATEWAY_UPLOADS_IN_FLIGHT",
    "48",
    "uploads streaming in at once per process (each holds about 6 MiB); beyond, 429 with `Retry-After`",
);
const UPLOADS_IN_FLIGHT_PER_USER: Setting = Setting::new(
    "GATEWAY_UPLOADS_IN_FLIGHT_PER_USER",
    "8",
    "uploads one user may stream in at once per process; beyond, 429 with `Retry-After`",
);
const EVENT_STREAMS: Setting = Setting::new(
    "GATEWAY_EVENT_STREAMS",
    "1024",
    "job event streams (`/v1/jobs/{id}/events`) open at once per process; beyond, 429 with `Retry-After`",
);
const EVENT_STREAMS_PER_USER: Setting = Setting::new(
    "GATEWAY_EVENT_STREAMS_PER_USER",
    "16",
    "job event streams one user may have open at once per process",
);
const QUOTA_JOBS_IN_PROGRESS: Setting = Setting::new(
    "GATEWAY_QUOTA_JOBS_IN_PROGRESS",
    "20",
    "per user, jobs queued or converting; beyond, 429 `job_quota` (a repeat of a live job too); in `GET /v1/me`",
);
const QUOTA_STORED_BYTES: Setting = Setting::new(
    "GATEWAY_QUOTA_STORED_BYTES",
    "21474836480",
    "per user, bytes of originals still stored, unfinished resumable uploads by their length; beyond, 507 `storage_quota`; in `GET /v1/me`",
);
const TUS_EXPIRES_AFTER_S: Setting = Setting::new(
    "GATEWAY_TUS_EXPIRES_AFTER_S",
    "86400",
    "an unfinished resumable upload (`/v1/tus/`) is removed with its bytes this long after its last PATCH",
);
const TUS_OPEN_PER_USER: Setting = Setting::new(
    "GATEWAY_TUS_OPEN_PER_USER",
    "16",
    "unfinished resumable uploads one user may have; beyond, 429 `too_many_open_uploads`",
);
const CORS_ORIGINS: Setting = Setting::optional(
    "GATEWAY_CORS_ORIGINS",
    "comma-separated browser origins (`https://host`) allowed to use `/v1/tus/` (CORS), the gateway's own public origin among them; unset: no CORS",
);

const SESSION_COOKIE_SECURE: Setting = Setting::new(
    "GATEWAY_SESSION_COOKIE_SECURE",
    "true",
    "the web app's session cookies are `Secure`; `false` only to serve it over plain HTTP to a host other than localhost",
);

/// Everything the gateway reads.
pub const SETTINGS: &[Setting] = &[
    BIND,
    shared::DATABASE_URL,
    shared::AMQP_URL,
    shared::MONGODB_URI,
    shared::MONGODB_DATABASE_PREFIX,
    AUTH_URL,
    CATALOG_URL,
    shared::AUTH_ISSUER,
    shared::AUTH_AUDIENCE,
    shared::LINK_SECRET,
    LINK_SECRET_PREVIOUS,
    MAX_UPLOAD_BYTES,
    UPLOAD_IDLE_TIMEOUT_S,
    RETENTION_ORIGINALS_S,
    RETENTION_OUTPUTS_S,
    RETENTION_SWEEP_S,
    UPLOADS_IN_FLIGHT,
    UPLOADS_IN_FLIGHT_PER_USER,
    EVENT_STREAMS,
    EVENT_STREAMS_PER_USER,
    QUOTA_JOBS_IN_PROGRESS,
    QUOTA_STORED_BYTES,
    TUS_EXPIRES_AFTER_S,
    TUS_OPEN_PER_USER,
    CORS_ORIGINS,
    SESSION_COOKIE_SECURE,
];

fn this_program() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("tunewire-gateway"))
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env)
    }

    /// The defaults, listening on a free local port, with the given dependencies; tests
    /// start from it.
    pub fn local(database_url: String, amqp_url: String, mongodb_uri: String, mongodb_database_prefix: String) -> Self {
        Self::read(&Values::new([
            (BIND.name, "127.0.0.1:0".into()),
            (shared::DATABASE_URL.name, database_url),
            (shared::AMQP_URL.name, amqp_url),
            (shared::MONGODB_URI.name, mongodb_uri),
            (shared::MONGODB_DATABASE_PREFIX.name, mongodb_database_prefix),
            (shared::LINK_SECRET.name, shared::LOCAL_LINK_SECRET.into()),
        ]))
        .expect("the defaults parse (tested)")
    }

    fn read(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            bind: BIND.get(source)?,
            database_url: shared::DATABASE_URL.get_secret(source)?,
            amqp_url: shared::AMQP_URL.get_secret(source)?,
            mongodb_uri: shared::MONGODB_URI.get_secret(source)?,
            mongodb_database_prefix: shared::MONGODB_DATABASE_PREFIX.get(source)?,
            auth_url: AUTH_URL.get(source)?,
            catalog_url: CATALOG_URL.get(source)?,
            token_issuer: shared::AUTH_ISSUER.get(source)?,
            token_audience: shared::AUTH_AUDIENCE.get(source)?,
            link_secret: shared::LINK_SECRET.get_key(source, MIN_SECRET_BYTES)?,
            link_secret_previous: LINK_SECRET_PREVIOUS.get_key_opt(source, MIN_SECRET_BYTES)?,
            max_upload_bytes: MAX_UPLOAD_BYTES.get(source)?,
            upload_idle_timeout: UPLOAD_IDLE_TIMEOUT_S.get_seconds(source)?,
            probe_program: this_program(),
            retention: crate::retention::Policy {
                originals: RETENTION_ORIGINALS_S.get_seconds(source)?,
                outputs: RETENTION_OUTPUTS_S.get_seconds(source)?,
                every: RETENTION_SWEEP_S.get_seconds(source)?,
            },
            upload_limits: crate::upload_admission::Limits {
                per_process: UPLOADS_IN_FLIGHT.get(source)?,
                per_user: UPLOADS_IN_FLIGHT_PER_USER.get(source)?,
            },
            stream_limits: crate::places::Limits {
                per_process: EVENT_STREAMS.get(source)?,
                per_user: EVENT_STREAMS_PER_USER.get(source)?,
            },
            quotas: Quotas {
                jobs_in_progress: QUOTA_JOBS_IN_PROGRESS.get(source)?,
                stored_bytes: QUOTA_STORED_BYTES.get(source)?,
            },
            tus: TusLimits {
                expires_after: TUS_EXPIRES_AFTER_S.get_seconds(source)?,
                open_per_user: TUS_OPEN_PER_USER.get(source)?,
            },
            cors_origins: CORS_ORIGINS
                .get_opt::<String>(source)?
                .map(|origins| {
                    origins.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_string).collect()
                })
                .unwrap_or_default(),
            session_cookie_secure: SESSION_COOKIE_SECURE.get(source)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_parse() {
        let local = Config::local("postgres://x".into(), "amqp://x".into(), "mongodb://x".into(), "p".into());
        assert_eq!(local.bind.port(), 0);
        assert_eq!(local.max_upload_bytes, 2 << 30);
    }
}
