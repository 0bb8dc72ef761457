use std::net::SocketAddr;
use std::time::Duration;

use tunewire_contract::Email;
use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{SecretString, secret, var, var_opt};

use crate::attempt_limits::Limits;
use crate::hashing;

#[derive(Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub database_url: SecretString,
    /// Ed25519 or RSA private key, PEM (`openssl genpkey -algorithm ed25519`, or
    /// `-algorithm rsa`). EdDSA or RS256 follows from the key. Unset: a throwaway Ed25519 key
    /// per process, fine for one local instance only.
    pub signing_key_pem: Option<SecretString>,
    /// The key before the last rotation: its public half stays in the JWKS so tokens it
    /// signed keep working until they expire.
    pub previous_signing_key_pem: Option<SecretString>,
    pub issuer: String,
    pub audience: String,
    pub token_ttl_s: u64,
    /// An admin account made (or promoted, with this password) at start.
    pub admin: Option<(Email, SecretString)>,
    pub attempt_limits: Limits,
    /// Password hashes at once; unset: as many as the cgroup memory limit allows
    /// ([`hashing::slots_for_memory`]), at most two per CPU.
    pub hash_slots: Option<usize>,
    /// Requests that may wait for a hashing slot before the rest get 503.
    pub hash_queue: usize,
    /// How many proxies in front of auth append to `X-Forwarded-For` (the gateway is one);
    /// the client is the entry that many places from the right.
    pub trusted_proxy_hops: usize,
}

const DEFAULT_HASH_QUEUE: usize = 32;

impl Config {
    /// The hashing slots this process runs with.
    pub fn hash_slots(&self) -> usize {
        self.hash_slots.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            hashing::cgroup_memory_limit_mib().map_or(cpus, hashing::slots_for_memory).min(2 * cpus).max(1)
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Limits::DEFAULT;
        let admin_email: Option<Email> = var_opt("AUTH_ADMIN_EMAIL")?;
        let admin_password = secret("AUTH_ADMIN_PASSWORD")?;
        let admin = match (admin_email, admin_password) {
            (Some(email), Some(password)) => Some((email, password)),
            (Some(_), None) => return Err(ConfigError::Missing { key: "AUTH_ADMIN_PASSWORD".into() }),
            // A password alone is for `create-admin --email`.
            (None, _) => None,
        };
        Ok(Self {
            bind: var("AUTH_BIND", SocketAddr::from(([0, 0, 0, 0], 8081)))?,
            database_url: secret("DATABASE_URL")?
                .unwrap_or_else(|| "postgres://tunewire:tunewire@127.0.0.1:5432/tunewire".into()),
            signing_key_pem: secret("AUTH_SIGNING_KEY")?,
            previous_signing_key_pem: secret("AUTH_PREVIOUS_SIGNING_KEY")?,
            issuer: var("AUTH_ISSUER", "tunewire-auth".to_string())?,
            audience: var("AUTH_AUDIENCE", "tunewire".to_string())?,
            token_ttl_s: var("AUTH_TOKEN_TTL_S", 3600)?,
            admin,
            attempt_limits: Limits {
                per_email: var("AUTH_LOGIN_FAILURES_PER_EMAIL", d.per_email)?,
                per_address: var("AUTH_LOGIN_FAILURES_PER_ADDRESS", d.per_address)?,
                window: Duration::from_secs(var("AUTH_LOGIN_WINDOW_S", d.window.as_secs())?),
                first_delay: Duration::from_secs(var("AUTH_LOGIN_FIRST_DELAY_S", d.first_delay.as_secs())?),
                max_delay: Duration::from_secs(var("AUTH_LOGIN_MAX_DELAY_S", d.max_delay.as_secs())?),
                registrations_per_address: var("AUTH_REGISTRATIONS_PER_ADDRESS", d.registrations_per_address)?,
                registration_window: Duration::from_secs(var(
                    "AUTH_REGISTRATION_WINDOW_S",
                    d.registration_window.as_secs(),
                )?),
            },
            hash_slots: var_opt("AUTH_HASH_SLOTS")?,
            hash_queue: var("AUTH_HASH_QUEUE", DEFAULT_HASH_QUEUE)?,
            trusted_proxy_hops: var("AUTH_TRUSTED_PROXY_HOPS", 1)?,
        })
    }

    /// Settings for the local stack with everything optional left out; tests start from it.
    pub fn local(database_url: String) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            signing_key_pem: None,
            previous_signing_key_pem: None,
            issuer: "tunewire-auth".into(),
            audience: "tunewire".into(),
            token_ttl_s: 3600,
            admin: None,
            attempt_limits: Limits::DEFAULT,
            hash_slots: None,
            hash_queue: DEFAULT_HASH_QUEUE,
            trusted_proxy_hops: 1,
        }
    }
}
