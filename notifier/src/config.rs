use std::net::SocketAddr;

use tunewire_service_runtime::ConfigError;
use tunewire_service_runtime::config::{required_secret, secret, var};

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
    pub database_url: String,
    pub amqp_url: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_tls: SmtpTls,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<String>,
    pub mail_from: String,
    /// The gateway's public address, for links in emails.
    pub public_url: String,
    pub link_secret: String,
    pub link_ttl_h: i64,
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
            mail_from: var("MAIL_FROM", "Tunewire <noreply@tunewire.local>".to_string())?,
            public_url: var("PUBLIC_URL", "http://127.0.0.1:8080".to_string())?,
            link_secret: required_secret("LINK_SECRET")?,
            link_ttl_h: var("LINK_TTL_H", 24)?,
        })
    }
}
