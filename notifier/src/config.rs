use std::net::SocketAddr;

use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{Env, Fallback, SecretString, Setting, Source, Values, shared};
use tunewire_signed_links::MIN_SECRET_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    Implicit,
}

impl std::str::FromStr for SmtpTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(SmtpTls::None),
            "starttls" => Ok(SmtpTls::StartTls),
            "tls" => Ok(SmtpTls::Implicit),
            other => Err(format!("{other:?} is not one of none, starttls, tls")),
        }
    }
}

#[derive(Clone)]
pub struct Config {
    pub health_bind: SocketAddr,
    pub database_url: SecretString,
    pub amqp_url: SecretString,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_tls: SmtpTls,
    pub smtp_username: Option<SecretString>,
    pub smtp_password: Option<SecretString>,
    /// Per SMTP command; a stuck server fails the attempt instead of holding a consumer.
    pub smtp_timeout_s: u64,
    /// Open SMTP connections kept for reuse.
    pub smtp_pool_size: u32,
    pub mail_from: String,
    /// The gateway's public address, for links in emails.
    pub public_url: String,
    pub link_secret: SecretString,
    pub link_ttl_h: i64,
    /// A delivery claimed longer ago than this is from a notifier that died mid-send and may
    /// be taken over (sending that email again). Longer than one SMTP conversation can last.
    pub claim_lease_s: u64,
}

const HEALTH_BIND: Setting =
    Setting::new("NOTIFIER_HEALTH_BIND", "0.0.0.0:9102", "`/healthz`, `/readyz` and `/metrics`");
const SMTP_HOST: Setting = Setting::new("SMTP_HOST", "127.0.0.1", "the SMTP server");
const SMTP_PORT: Setting = Setting::new("SMTP_PORT", "1025", "its port");
const SMTP_TLS: Setting = Setting::new("SMTP_TLS", "none", "`none`, `starttls` or `tls`");
const SMTP_USERNAME: Setting = Setting::secret("SMTP_USERNAME", Fallback::Unset, "SMTP login, if the server asks");
const SMTP_PASSWORD: Setting = Setting::secret("SMTP_PASSWORD", Fallback::Unset, "its password");
const SMTP_TIMEOUT_S: Setting = Setting::new("SMTP_TIMEOUT_S", "15", "per SMTP command");
const SMTP_POOL_SIZE: Setting = Setting::new(
    "SMTP_POOL_SIZE",
    "4",
    "SMTP connections kept open (one email is sent at a time per notifier: see docs/reliability.md)",
);
const MAIL_FROM: Setting = Setting::new("MAIL_FROM", "Tunewire <noreply@tunewire.local>", "the emails' sender");
const PUBLIC_URL: Setting = Setting::new("PUBLIC_URL", "http://127.0.0.1:8080", "the gateway's address, for links");
const LINK_TTL_H: Setting = Setting::new("LINK_TTL_H", "24", "download links' lifetime, in hours");
const CLAIM_LEASE_S: Setting = Setting::new(
    "NOTIFIER_CLAIM_LEASE_S",
    "120",
    "a delivery claimed this long ago by a notifier that died may be sent again",
);

/// Everything the notifier reads.
pub const SETTINGS: &[Setting] = &[
    HEALTH_BIND,
    shared::DATABASE_URL,
    shared::AMQP_URL,
    SMTP_HOST,
    SMTP_PORT,
    SMTP_TLS,
    SMTP_USERNAME,
    SMTP_PASSWORD,
    SMTP_TIMEOUT_S,
    SMTP_POOL_SIZE,
    MAIL_FROM,
    PUBLIC_URL,
    shared::LINK_SECRET,
    LINK_TTL_H,
    CLAIM_LEASE_S,
];

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env)
    }

    /// The defaults, serving health on a free local port, with the given dependencies;
    /// tests start from it.
    pub fn local(
        database_url: String,
        amqp_url: String,
        smtp_host: String,
        smtp_port: u16,
        link_secret: String,
    ) -> Self {
        let config = Self::read(&Values::new([
            (HEALTH_BIND.name, "127.0.0.1:0".into()),
            (shared::DATABASE_URL.name, database_url),
            (shared::AMQP_URL.name, amqp_url),
            (SMTP_HOST.name, smtp_host),
            (SMTP_PORT.name, smtp_port.to_string()),
            (shared::LINK_SECRET.name, shared::LOCAL_LINK_SECRET.into()),
        ]))
        .expect("the defaults parse (tested)");
        // Tests' per-sandbox secrets need not be as long as a deployment's.
        Self { link_secret: link_secret.into(), ..config }
    }

    fn read(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            health_bind: HEALTH_BIND.get(source)?,
            database_url: shared::DATABASE_URL.get_secret(source)?,
            amqp_url: shared::AMQP_URL.get_secret(source)?,
            smtp_host: SMTP_HOST.get(source)?,
            smtp_port: SMTP_PORT.get(source)?,
            smtp_tls: SMTP_TLS.get(source)?,
            smtp_username: SMTP_USERNAME.get_secret_opt(source)?,
            smtp_password: SMTP_PASSWORD.get_secret_opt(source)?,
            smtp_timeout_s: SMTP_TIMEOUT_S.get(source)?,
            smtp_pool_size: SMTP_POOL_SIZE.get(source)?,
            mail_from: MAIL_FROM.get(source)?,
            public_url: PUBLIC_URL.get(source)?,
            link_secret: shared::LINK_SECRET.get_key(source, MIN_SECRET_BYTES)?,
            link_ttl_h: LINK_TTL_H.get(source)?,
            claim_lease_s: CLAIM_LEASE_S.get(source)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_parse() {
        let local = Config::local("postgres://x".into(), "amqp://x".into(), "127.0.0.1".into(), 25, "s".into());
        assert_eq!(local.health_bind.port(), 0);
        assert_eq!(local.smtp_tls, SmtpTls::None);
    }
}
