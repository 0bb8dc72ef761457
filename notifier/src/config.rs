use std::net::SocketAddr;

use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{SecretString, required_secret_key, secret, var};
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

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            health_bind: var("NOTIFIER_HEALTH_BIND", SocketAddr::from(([0, 0, 0, 0], 9102)))?,
            database_url: secret("DATABASE_URL")?
                .unwrap_or_else(|| "postgres://tunewire:tunewire@127.0.0.1:5432/tunewire".into()),
            amqp_url: secret("AMQP_URL")?.unwrap_or_else(|| "amqp://tunewire:tunewire@127.0.0.1:5672/%2f".into()),
            smtp_host: var("SMTP_HOST", "127.0.0.1".to_string())?,
            smtp_port: var("SMTP_PORT", 1025)?,
            smtp_tls: var("SMTP_TLS", SmtpTls::None)?,
            smtp_username: secret("SMTP_USERNAME")?,
            smtp_password: secret("SMTP_PASSWORD")?,
            smtp_timeout_s: var("SMTP_TIMEOUT_S", 15)?,
            smtp_pool_size: var("SMTP_POOL_SIZE", 4)?,
            mail_from: var("MAIL_FROM", "Tunewire <noreply@tunewire.local>".to_string())?,
            public_url: var("PUBLIC_URL", "http://127.0.0.1:8080".to_string())?,
            link_secret: required_secret_key("LINK_SECRET", MIN_SECRET_BYTES)?,
            link_ttl_h: var("LINK_TTL_H", 24)?,
            claim_lease_s: var("NOTIFIER_CLAIM_LEASE_S", 120)?,
        })
    }

    /// Defaults for the local stack with the given dependencies; tests start from it.
    pub fn local(
        database_url: String,
        amqp_url: String,
        smtp_host: String,
        smtp_port: u16,
        link_secret: String,
    ) -> Self {
        Self {
            health_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            amqp_url: amqp_url.into(),
            smtp_host,
            smtp_port,
            smtp_tls: SmtpTls::None,
            smtp_username: None,
            smtp_password: None,
            smtp_timeout_s: 15,
            smtp_pool_size: 4,
            mail_from: "Tunewire <noreply@tunewire.test>".into(),
            public_url: "http://127.0.0.1:8080".into(),
            link_secret: link_secret.into(),
            link_ttl_h: 24,
            claim_lease_s: 120,
        }
    }
}
