//! Exactly one email per outcome, as nearly as SMTP allows. The ledger is checked before
//! sending and written the moment the server accepted, with nothing in between. The one
//! window left is a crash after the SMTP server said 250 and before the ledger row is
//! committed (or PostgreSQL down for longer than the claim lease then): once the lease is
//! over, the redelivered event sends that email once more. Each
//! email carries a `Message-ID` derived from the job and outcome, so that rare second copy
//! has the same id as the first, and mail systems that deduplicate by id show one.
//!
//! Transient SMTP trouble (no connection, 4xx, or the server refusing our credentials,
//! which an operator fixes) is retried with backoff (in place, then requeued: see
//! `tunewire_events::consumer`) and ends in the dead-letter queue only after the delivery
//! limit, about 100 minutes of trying; a permanent refusal of this message (5xx, an address
//! that cannot be mailed) is recorded as `failed` and not retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::PgPool;
use tracing::{info, warn};
use tunewire_contract::{JobId, Outcome};
use tunewire_events::{HandleError, HandleResultExt, Incoming};
use tunewire_service_runtime::Backoff;
use tunewire_signed_links::{LinkClaims, LinkSigner};

use crate::config::Config;
use crate::email::Templates;

/// Between attempts to record a sent email: short, as the claim's lease runs meanwhile.
const LEDGER_BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

pub struct Notifier {
    pub db: PgPool,
    pub mailer: AsyncSmtpTransport<Tokio1Executor>,
    pub from: Mailbox,
    pub links: LinkSigner,
    pub templates: Templates,
    pub config: Arc<Config>,
    /// Held by one delivery at a time, from its claim until the ledger says how it ended: at
    /// most one email is ever accepted-but-unrecorded, so a crash sends at most one email
    /// twice. Concurrent sends finish together, and the fault suite saw a crash after one of
    /// four parallel sends double all four. It costs parallel SMTP conversations: a notifier
    /// sends one email at a time (a few ms to a local relay, about 100 ms to a remote one);
    /// more notifiers send more. It also keeps a claim's age to its own send, which the
    /// lease is measured against.
    pub one_at_a_time: tokio::sync::Mutex<()>,
    pub metrics: crate::metrics::EmailMetrics,
}

/// SMTP replies that mean "this message can never be delivered", as opposed to trouble an
/// operator or time will fix. Authentication failures (530, 534, 535, 538) are 5xx too, but
/// they are our configuration, not the message: those are retried.
pub fn refused_for_good(error: &lettre::transport::smtp::Error) -> bool {
    error.is_permanent() && !error.status().is_some_and(is_authentication_refusal)
}

fn is_authentication_refusal(code: lettre::transport::smtp::response::Code) -> bool {
    ["530", "534", "535", "538"].contains(&code.to_string().as_str())
}

/// How one attempt ended.
enum Sent {
    /// Sent (or failed for good) and in the ledger.
    Recorded,
    /// Nothing left: the claim is released so a retry can try again.
    Not(HandleError),
    /// The SMTP server accepted it, but the ledger could not say so.
    Unrecorded(HandleError),
}

/// Where a delivery stands when this copy of the event arrives.
enum Claim {
    /// Ours to send.
    Won,
    /// Sent or failed for good already: nothing to do.
    Done,
    /// Another copy is sending right now; look again later.
    Busy,
}

impl Notifier {
    fn claim_lease(&self) -> Duration {
        Duration::from_secs(self.config.claim_lease_s)
    }

    async fn claim(&self, job: JobId, kind: &str, to: &str) -> Result<Claim, HandleError> {
        let won = sqlx::query(
            "INSERT INTO notifier.deliveries (job_id, kind, recipient, status) VALUES ($1, $2, $3, 'sending')
             ON CONFLICT (job_id, kind) DO NOTHING",
        )
        .bind(job.as_uuid())
        .bind(kind)
        .bind(to)
        .execute(&self.db)
        .await
        .or_retry("claiming the delivery")?
        .rows_affected()
            == 1;
        if won {
            return Ok(Claim::Won);
        }
        let taken_over = sqlx::query(
            "UPDATE notifier.deliveries SET claimed_at = now()
             WHERE job_id = $1 AND kind = $2 AND status = 'sending'
               AND claimed_at < now() - make_interval(secs => $3)",
        )
        .bind(job.as_uuid())
        .bind(kind)
        .bind(self.config.claim_lease_s as f64)
        .execute(&self.db)
        .await
        .or_retry("taking over an abandoned delivery")?
        .rows_affected()
            == 1;
        if taken_over {
            warn!(job_id = %job, kind, "a previous attempt died mid-send; sending again");
            return Ok(Claim::Won);
        }
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM notifier.deliveries WHERE job_id = $1 AND kind = $2")
                .bind(job.as_uuid())
                .bind(kind)
                .fetch_optional(&self.db)
                .await
                .or_retry("reading the delivery ledger")?;
        Ok(match status.as_deref() {
            Some("sending") => Claim::Busy,
            Some(_) => Claim::Done,
            // Released between our insert and our read: try again shortly.
            None => Claim::Busy,
        })
    }

    async fn settle(&self, job: JobId, kind: &str, status: &str, detail: Option<String>) -> Result<(), HandleError> {
        // Only a claim still ours: a cancelled delivery stays cancelled.
        sqlx::query(
            "UPDATE notifier.deliveries SET status = $3, detail = $4 WHERE job_id = $1 AND kind = $2 AND status = 'sending'",
        )
            .bind(job.as_uuid())
            .bind(kind)
            .bind(status)
            .bind(detail)
            .execute(&self.db)
            .await
            .or_retry("writing the delivery ledger")
            .map(drop)
    }

    /// Gives the claim back after a transient failure, so the retry (this copy or another)
    /// can claim it again.
    async fn release(&self, job: JobId, kind: &str) {
        let released =
            sqlx::query("DELETE FROM notifier.deliveries WHERE job_id = $1 AND kind = $2 AND status = 'sending'")
                .bind(job.as_uuid())
                .bind(kind)
                .execute(&self.db)
                .await;
        if let Err(e) = released {
            // The lease expires on its own; the retry then takes over.
            warn!(job_id = %job, kind, error = %e, "could not release a delivery claim");
        }
    }

    /// A deleted job is mailed nothing more: its deliveries are settled as cancelled, so an
    /// outcome arriving later finds them done, and a send in progress that fails is not
    /// retried. One already in the SMTP conversation goes out (it cannot be recalled).
    async fn cancel(&self, job: JobId) -> Result<(), HandleError> {
        sqlx::query(
            "INSERT INTO notifier.deliveries (job_id, kind, recipient, status)
             SELECT $1, kind, '', 'cancelled' FROM unnest(ARRAY['converted', 'failed']) AS kind
             ON CONFLICT (job_id, kind) DO UPDATE SET status = 'cancelled'
             WHERE notifier.deliveries.status = 'sending'",
        )
        .bind(job.as_uuid())
        .execute(&self.db)
        .await
        .or_retry("cancelling the job's emails")?;
        info!(job_id = %job, "job deleted; no email will be sent for it");
        Ok(())
    }

    pub async fn handle(self: Arc<Self>, msg: Incoming<Outcome>) -> Result<(), HandleError> {
        let _one_at_a_time = self.one_at_a_time.lock().await;
        let (job, kind, owner) = match &msg.event {
            Outcome::Converted(c) => (c.job_id, "converted", &c.owner),
            Outcome::Failed(f) => (f.job_id, "failed", &f.owner),
            Outcome::Deleted(d) => return self.cancel(d.job_id).await,
            Outcome::Unvouched { routing_key } => {
                warn!(%routing_key, "an outcome the gateway has not checked; not mailed (rerun tunewire-setup to remove its binding)");
                return Ok(());
            }
        };
        match self.claim(job, kind, owner.email.as_str()).await? {
            Claim::Won => {}
            Claim::Done => {
                info!(job_id = %job, kind, "email already handled; skipping the redelivery");
                return Ok(());
            }
            // Retried in place by the consumer until the claim settles or its lease runs out.
            Claim::Busy => return Err(HandleError::Retry("another copy of this event is being emailed".into())),
        }
        match self.send(&msg.event, job, kind, owner).await {
            Sent::Recorded => Ok(()),
            Sent::Not(e) => {
                self.release(job, kind).await;
                Err(e)
            }
            // The claim stays: releasing it would invite a second copy of an email that left.
            Sent::Unrecorded(e) => Err(e),
        }
    }

    async fn send(&self, event: &Outcome, job: JobId, kind: &'static str, owner: &tunewire_contract::Owner) -> Sent {
        let content = match event {
            Outcome::Converted(c) => {
                let expires = Utc::now() + chrono::Duration::hours(self.config.link_ttl_h);
                let token = self.links.sign(&LinkClaims {
                    file_id: c.output.file_id.clone(),
                    owner: c.owner.id,
                    exp: expires.timestamp(),
                });
                let link = format!(
                    "{}{}",
                    self.config.public_url.trim_end_matches('/'),
                    tunewire_signed_links::page_path(&token)
                );
                self.templates.converted(c, &link, expires)
            }
            Outcome::Failed(f) => self.templates.failed(f),
            Outcome::Deleted(_) | Outcome::Unvouched { .. } => return Sent::Recorded,
        }
        .or_abort("rendering the email");
        let content = match content {
            Ok(content) => content,
            Err(e) => return Sent::Not(e),
        };
        let to: Mailbox = match owner.email.as_str().parse() {
            Ok(to) => to,
            Err(e) => {
                warn!(job_id = %job, error = %e, "the recipient address is unusable; not sending");
                return self
                    .settle(job, kind, "failed", Some(e.to_string()))
                    .await
                    .map_or_else(Sent::Not, |()| Sent::Recorded);
            }
        };
        let message = Message::builder()
            .message_id(Some(format!("<{job}.{kind}@tunewire>")))
            .from(self.from.clone())
            .to(to)
            .subject(content.subject)
            .multipart(MultiPart::alternative_plain_html(content.text, content.html))
            .or_abort("building the email");
        let message = match message {
            Ok(message) => message,
            Err(e) => return Sent::Not(e),
        };
        let sending = Instant::now();
        let sent = self.mailer.send(message).await;
        let outcome = match &sent {
            Ok(_) => "sent",
            Err(e) if refused_for_good(e) => "refused",
            Err(_) => "failed",
        };
        self.metrics.sent(outcome, sending.elapsed());
        match sent {
            Ok(_) => {
                info!(job_id = %job, kind, "email sent");
                fail::fail_point!("notifier::after_smtp_send", |_| std::process::abort());
                self.record_sent(job, kind).await
            }
            Err(e) if refused_for_good(&e) => {
                warn!(job_id = %job, kind, error = %e, "the SMTP server refused the email for good");
                self.settle(job, kind, "failed", Some(e.to_string())).await.map_or_else(Sent::Not, |()| Sent::Recorded)
            }
            Err(e) => Sent::Not(HandleError::Retry(format!("sending the email: {e}"))),
        }
    }

    /// The window that matters: the email left, and only the ledger can stop a redelivery
    /// from sending it again. The write is retried here, in place, for as long as the claim
    /// is ours (PostgreSQL restarting must not turn into a second email); past the lease a
    /// redelivered copy may take over, and holding on gains nothing.
    async fn record_sent(&self, job: JobId, kind: &str) -> Sent {
        let started = Instant::now();
        let mut failures = 0;
        loop {
            let pause = LEDGER_BACKOFF.delay(failures);
            match self.settle(job, kind, "sent", None).await {
                Ok(()) => return Sent::Recorded,
                Err(e) if started.elapsed() + pause >= self.claim_lease() => return Sent::Unrecorded(e),
                Err(e) => {
                    warn!(job_id = %job, kind, error = %e, retry_in_ms = pause.as_millis() as u64, "could not record a sent email; retrying");
                    tokio::time::sleep(pause).await;
                    failures += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use lettre::transport::smtp::response::{Category, Code, Detail, Severity};

    use super::*;

    #[test]
    fn authentication_refusals_are_told_apart_from_refused_messages() {
        let code = |category, detail| Code::new(Severity::PermanentNegativeCompletion, category, detail);
        assert!(is_authentication_refusal(code(Category::Unspecified3, Detail::Zero)));
        assert!(is_authentication_refusal(code(Category::Unspecified3, Detail::Five)));
        assert!(!is_authentication_refusal(code(Category::MailSystem, Detail::Zero)));
        assert!(!is_authentication_refusal(code(Category::MailSystem, Detail::Three)));
    }
}
