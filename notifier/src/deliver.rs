//! Exactly one email per outcome, as nearly as SMTP allows. The ledger is checked before
//! sending and written after the server accepted; the one window left is a crash between
//! those two, which sends that email once more on redelivery.

use std::sync::Arc;

use chrono::Utc;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::PgPool;
use tracing::{info, warn};
use tunewire_events::{HandleError, HandleResultExt, Incoming, JobId, Outcome};
use tunewire_signed_links::{LinkClaims, LinkSigner};

use crate::config::Config;
use crate::email;

pub struct Notifier {
    pub db: PgPool,
    pub mailer: AsyncSmtpTransport<Tokio1Executor>,
    pub from: Mailbox,
    pub links: LinkSigner,
    pub config: Arc<Config>,
}

impl Notifier {
    async fn already_handled(&self, job: JobId, kind: &str) -> Result<bool, HandleError> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM notifier.deliveries WHERE job_id = $1 AND kind = $2")
                .bind(job.as_uuid())
                .bind(kind)
                .fetch_optional(&self.db)
                .await
                .or_retry("reading the delivery ledger")?;
        Ok(found.is_some())
    }

    async fn record(
        &self,
        job: JobId,
        kind: &str,
        to: &str,
        status: &str,
        detail: Option<String>,
    ) -> Result<(), HandleError> {
        sqlx::query(
            "INSERT INTO notifier.deliveries (job_id, kind, recipient, status, detail) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (job_id, kind) DO NOTHING",
        )
        .bind(job.as_uuid())
        .bind(kind)
        .bind(to)
        .bind(status)
        .bind(detail)
        .execute(&self.db)
        .await
        .or_retry("writing the delivery ledger")
        .map(|_| ())
    }

    pub async fn handle(self: Arc<Self>, msg: Incoming<Outcome>) -> Result<(), HandleError> {
        let (job, kind, owner) = match &msg.event {
            Outcome::Converted(c) => (c.job_id, "converted", &c.owner),
            Outcome::Failed(f) => (f.job_id, "failed", &f.owner),
        };
        if self.already_handled(job, kind).await? {
            info!(job_id = %job, kind, "email already sent; skipping the redelivery");
            return Ok(());
        }
        let content = match &msg.event {
            Outcome::Converted(c) => {
                let expires = Utc::now() + chrono::Duration::hours(self.config.link_ttl_h);
                let token = self.links.sign(&LinkClaims {
                    file_id: c.output.file_id.clone(),
                    owner: c.owner.id,
                    exp: expires.timestamp(),
                });
                let link = format!("{}/v1/downloads/{token}", self.config.public_url.trim_end_matches('/'));
                email::converted(c, &link, expires)
            }
            Outcome::Failed(f) => email::failed(f),
        };
        let to: Mailbox = match owner.email.as_str().parse() {
            Ok(to) => to,
            Err(e) => {
                warn!(job_id = %job, error = %e, "the recipient address is unusable; not sending");
                return self.record(job, kind, owner.email.as_str(), "rejected", Some(e.to_string())).await;
            }
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(content.subject)
            .multipart(MultiPart::alternative_plain_html(content.text, content.html))
            .or_abort("building the email")?;
        match self.mailer.send(message).await {
            Ok(_) => {
                info!(job_id = %job, kind, "email sent");
                self.record(job, kind, owner.email.as_str(), "sent", None).await
            }
            Err(e) if e.is_permanent() => {
                warn!(job_id = %job, kind, error = %e, "the SMTP server refused the email for good");
                self.record(job, kind, owner.email.as_str(), "rejected", Some(e.to_string())).await
            }
            Err(e) => Err(HandleError::Retry(format!("sending the email: {e}"))),
        }
    }
}
