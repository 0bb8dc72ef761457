use std::net::SocketAddr;

use tunewire_contract::Email;
use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{Env, Fallback, SecretString, Setting, Source, Values, shared};

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

const BIND: Setting = Setting::new("AUTH_BIND", "0.0.0.0:8081", "where auth listens");
const SIGNING_KEY: Setting = Setting::secret(
    "AUTH_SIGNING_KEY",
    Fallback::Derived("a throwaway key per process"),
    "Ed25519 (EdDSA) or RSA (RS256) private key, PEM (`openssl genpkey -algorithm ed25519`)",
);
const PREVIOUS_SIGNING_KEY: Setting = Setting::secret(
    "AUTH_PREVIOUS_SIGNING_KEY",
    Fallback::Unset,
    "the key before a rotation; still in the JWKS so its tokens live out their time",
);
const TOKEN_TTL_S: Setting = Setting::new("AUTH_TOKEN_TTL_S", "3600", "access tokens' lifetime");
const ADMIN_EMAIL: Setting =
    Setting::optional("AUTH_ADMIN_EMAIL", "an admin made (or promoted) at start, with `AUTH_ADMIN_PASSWORD`");
/// Also read by `tunewire-auth create-admin`.
pub const ADMIN_PASSWORD: Setting =
    Setting::secret("AUTH_ADMIN_PASSWORD", Fallback::Unset, "the password of `AUTH_ADMIN_EMAIL`");
const LOGIN_FAILURES_PER_EMAIL: Setting = Setting::new(
    "AUTH_LOGIN_FAILURES_PER_EMAIL",
    "5",
    "failed logins per account per window; then 429 until the window ends",
);
const LOGIN_FAILURES_PER_ADDRESS: Setting = Setting::new(
    "AUTH_LOGIN_FAILURES_PER_ADDRESS",
    "20",
    "failed logins per client network (IPv4 address, IPv6 /64) per window that pass at once; then each \
     waits a delay doubling from the first up to the maximum",
);
const LOGIN_WINDOW_S: Setting = Setting::new("AUTH_LOGIN_WINDOW_S", "900", "the failed-login window");
const LOGIN_FIRST_DELAY_S: Setting =
    Setting::new("AUTH_LOGIN_FIRST_DELAY_S", "1", "the first delay past the per-network failures");
const LOGIN_MAX_DELAY_S: Setting = Setting::new("AUTH_LOGIN_MAX_DELAY_S", "60", "the longest such delay");
const REGISTRATIONS_PER_ADDRESS: Setting =
    Setting::new("AUTH_REGISTRATIONS_PER_ADDRESS", "10", "registrations per client network per window");
const REGISTRATION_WINDOW_S: Setting = Setting::new("AUTH_REGISTRATION_WINDOW_S", "3600", "the registration window");
const HASH_SLOTS: Setting = Setting::derived(
    "AUTH_HASH_SLOTS",
    "from the cgroup memory limit, at most 2 per core",
    "password hashes at once (19 MiB each); beyond the queue, 503 with `Retry-After`",
);
const HASH_QUEUE: Setting = Setting::new("AUTH_HASH_QUEUE", "32", "requests waiting for a hashing slot");
const TRUSTED_PROXY_HOPS: Setting =
    Setting::new("AUTH_TRUSTED_PROXY_HOPS", "1", "proxies (the gateway, an ingress) appending to `X-Forwarded-For`");

/// Everything auth reads.
pub const SETTINGS: &[Setting] = &[
    BIND,
    shared::DATABASE_URL,
    SIGNING_KEY,
    PREVIOUS_SIGNING_KEY,
    shared::AUTH_ISSUER,
    shared::AUTH_AUDIENCE,
    TOKEN_TTL_S,
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    LOGIN_FAILURES_PER_EMAIL,
    LOGIN_FAILURES_PER_ADDRESS,
    LOGIN_WINDOW_S,
    LOGIN_FIRST_DELAY_S,
    LOGIN_MAX_DELAY_S,
    REGISTRATIONS_PER_ADDRESS,
    REGISTRATION_WINDOW_S,
    HASH_SLOTS,
    HASH_QUEUE,
    TRUSTED_PROXY_HOPS,
];

impl Config {
    /// The hashing slots this process runs with.
    pub fn hash_slots(&self) -> usize {
        self.hash_slots.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            hashing::cgroup_memory_limit_mib().map_or(cpus, hashing::slots_for_memory).min(2 * cpus).max(1)
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env)
    }

    /// The defaults, listening on a free local port, with a throwaway signing key and no
    /// admin; tests start from it.
    pub fn local(database_url: String) -> Self {
        Self::read(&Values::new([(BIND.name, "127.0.0.1:0".into()), (shared::DATABASE_URL.name, database_url)]))
            .expect("the defaults parse (tested)")
    }

    fn read(source: &impl Source) -> Result<Self, ConfigError> {
        let admin_email: Option<Email> = ADMIN_EMAIL.get_opt(source)?;
        let admin = match (admin_email, ADMIN_PASSWORD.get_secret_opt(source)?) {
            (Some(email), Some(password)) => Some((email, password)),
            (Some(_), None) => return Err(ADMIN_PASSWORD.missing()),
            // A password alone is for `create-admin --email`.
            (None, _) => None,
        };
        Ok(Self {
            bind: BIND.get(source)?,
            database_url: shared::DATABASE_URL.get_secret(source)?,
            signing_key_pem: SIGNING_KEY.get_secret_opt(source)?,
            previous_signing_key_pem: PREVIOUS_SIGNING_KEY.get_secret_opt(source)?,
            issuer: shared::AUTH_ISSUER.get(source)?,
            audience: shared::AUTH_AUDIENCE.get(source)?,
            token_ttl_s: TOKEN_TTL_S.get(source)?,
            admin,
            attempt_limits: Limits {
                per_email: LOGIN_FAILURES_PER_EMAIL.get(source)?,
                per_address: LOGIN_FAILURES_PER_ADDRESS.get(source)?,
                window: LOGIN_WINDOW_S.get_seconds(source)?,
                first_delay: LOGIN_FIRST_DELAY_S.get_seconds(source)?,
                max_delay: LOGIN_MAX_DELAY_S.get_seconds(source)?,
                registrations_per_address: REGISTRATIONS_PER_ADDRESS.get(source)?,
                registration_window: REGISTRATION_WINDOW_S.get_seconds(source)?,
            },
            hash_slots: HASH_SLOTS.get_opt(source)?,
            hash_queue: HASH_QUEUE.get(source)?,
            trusted_proxy_hops: TRUSTED_PROXY_HOPS.get(source)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_parse() {
        let local = Config::local("postgres://x".into());
        assert_eq!(local.bind.port(), 0);
        assert_eq!(local.attempt_limits.per_email, 5);
    }
}
