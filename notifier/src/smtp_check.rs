//! `tunewire-notifier send-test-email --to ADDRESS`: sends one email with the configured SMTP
//! settings and, when it fails, says which setting is the likely culprit.

use lettre::message::Mailbox;
use lettre::{AsyncTransport, Message};

use crate::config::{Config, SmtpTls};

#[derive(Debug, thiserror::Error)]
#[error("{problem}\n  hint: {hint}")]
pub struct SmtpCheckError {
    pub problem: String,
    pub hint: String,
}

fn error(problem: impl Into<String>, hint: impl Into<String>) -> SmtpCheckError {
    SmtpCheckError { problem: problem.into(), hint: hint.into() }
}

fn io_kind(error: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = e.source();
    }
    None
}

/// What a failed send most likely means, in the terms of the settings.
pub fn explain(config: &Config, e: &lettre::transport::smtp::Error) -> SmtpCheckError {
    let at = format!("{}:{}", config.smtp_host, config.smtp_port);
    let code = e.status().map(|c| c.to_string());
    let tls_hint = match (config.smtp_tls, config.smtp_port) {
        (SmtpTls::Implicit, 587 | 25) => "port 587 and 25 usually want SMTP_TLS=starttls, not tls",
        (SmtpTls::StartTls, 465) => "port 465 usually wants SMTP_TLS=tls (implicit TLS), not starttls",
        (SmtpTls::None, 465) => "port 465 speaks TLS from the first byte: set SMTP_TLS=tls",
        _ => "check SMTP_TLS (none, starttls, tls) against what the server on this port speaks",
    };
    if let Some(kind) = io_kind(e) {
        match kind {
            std::io::ErrorKind::ConnectionRefused => {
                return error(
                    format!("nothing accepts connections at {at}"),
                    "check SMTP_HOST and SMTP_PORT, and that the SMTP server runs",
                );
            }
            std::io::ErrorKind::NotFound | std::io::ErrorKind::AddrNotAvailable => {
                return error(format!("{} does not resolve", config.smtp_host), "check SMTP_HOST");
            }
            _ => {}
        }
    }
    if e.is_timeout() {
        return error(
            format!("{at} did not answer within {} s", config.smtp_timeout_s),
            "a firewall may drop the connection, or the port expects TLS: ".to_string() + tls_hint,
        );
    }
    if e.is_tls() {
        return error(format!("TLS with {at} failed: {e}"), tls_hint);
    }
    match code.as_deref() {
        Some("530") => error(format!("{at} requires authentication: {e}"), "set SMTP_USERNAME and SMTP_PASSWORD"),
        Some("535" | "534" | "538") => {
            error(format!("{at} refused the credentials: {e}"), "check SMTP_USERNAME and SMTP_PASSWORD")
        }
        Some("550" | "551" | "553" | "554") => error(
            format!("{at} refused the message: {e}"),
            "the server may not relay for MAIL_FROM's domain, or refuses this recipient",
        ),
        _ if e.is_transient() => {
            error(format!("{at} deferred the message: {e}"), "try again later; the server is busy")
        }
        _ => error(format!("sending through {at} failed: {e}"), tls_hint),
    }
}

pub async fn send_test_email(config: &Config, to: &str) -> Result<(), SmtpCheckError> {
    let to: Mailbox =
        to.parse().map_err(|e| error(format!("{to:?} is not an email address: {e}"), "pass --to ADDRESS"))?;
    let from: Mailbox = config.mail_from.parse().map_err(|e| {
        error(format!("MAIL_FROM={:?} is not a mailbox: {e}", config.mail_from), "e.g. Tunewire <noreply@example.com>")
    })?;
    let mailer = crate::mailer(config)
        .map_err(|e| error(format!("SMTP settings are unusable: {e}"), "check SMTP_HOST and SMTP_TLS"))?;
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject("Tunewire test email")
        .body(format!(
            "This is a test from tunewire-notifier: {}:{} (SMTP_TLS {:?}) delivers mail.\n",
            config.smtp_host, config.smtp_port, config.smtp_tls
        ))
        .map_err(|e| error(format!("building the email failed: {e}"), "check MAIL_FROM"))?;
    mailer.send(message).await.map(drop).map_err(|e| explain(config, &e))
}
