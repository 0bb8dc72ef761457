//! The notifier against the real stack: templates through MailDev, one email per outcome
//! however often the event comes, SMTP away and back, an address that cannot be mailed, and
//! the `send-test-email` command.

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tunewire_contract::{AudioOutput, Owner, TrackTags};
use tunewire_contract::{Event, FileId, JobConverted, JobFailed, JobId, MediaConverted, MediaFailed, Preset, UserId};
use tunewire_events::Bus;
use tunewire_events::topology::NOTIFIER_QUEUE;
use tunewire_signed_links::LinkSigner;
use tunewire_test_stack::proxy::Proxy;
use tunewire_test_stack::{Sandbox, eventually, maildev};

const DEADLINE: Duration = Duration::from_secs(60);

struct Notifier {
    sandbox: Sandbox,
    bus: Bus,
    db: PgPool,
    link_secret: String,
    shutdown: CancellationToken,
    health: std::net::SocketAddr,
}

impl Notifier {
    async fn start(smtp_port: Option<u16>) -> anyhow::Result<Self> {
        let sandbox = Sandbox::create().await?;
        let link_secret = format!("links-{}", sandbox.name);
        let stack = &sandbox.stack;
        let config = tunewire_notifier::Config::local(
            sandbox.database_url.clone(),
            sandbox.amqp_url.clone(),
            stack.smtp_host.clone(),
            smtp_port.unwrap_or(stack.smtp_port),
            link_secret.clone(),
        );
        let shutdown = CancellationToken::new();
        let running = tunewire_notifier::start(config, shutdown.clone()).await?;
        let bus = Bus::new(sandbox.amqp_url.clone(), "notifier-tests");
        let db = PgPool::connect(&sandbox.database_url).await?;
        Ok(Self { sandbox, bus, db, link_secret, shutdown, health: running.health_addr })
    }

    async fn publish<E: Event>(&self, event: &E) -> anyhow::Result<()> {
        Ok(self.bus.publisher().await?.publish(event).await?)
    }

    async fn emails(&self, to: &str, count: usize) -> anyhow::Result<Vec<Value>> {
        maildev::wait_for(&self.sandbox.stack.maildev_url, to, count, DEADLINE).await
    }

    async fn acked(&self, count: u64) -> anyhow::Result<()> {
        eventually(&format!("{count} deliveries acknowledged"), DEADLINE, || async {
            Ok((self.sandbox.queue_stat(NOTIFIER_QUEUE.name, "ack").await? >= count).then_some(()))
        })
        .await
    }

    async fn ledger(&self, job: JobId) -> anyhow::Result<Vec<(String, String)>> {
        Ok(sqlx::query_as("SELECT kind, status FROM notifier.deliveries WHERE job_id = $1")
            .bind(job.as_uuid())
            .fetch_all(&self.db)
            .await?)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.db.close().await;
        self.sandbox.cleanup().await
    }
}

fn recipient() -> String {
    format!("n-{}@example.com", uuid::Uuid::new_v4().simple())
}

fn converted(to: &str, title: &str) -> anyhow::Result<MediaConverted> {
    Ok(MediaConverted {
        job_id: JobId::new(),
        owner: Owner { id: UserId::new(), email: to.parse()? },
        source_filename: "Night Drive (live).mp4".into(),
        preset: Preset::default(),
        output: AudioOutput {
            file_id: FileId::from_bytes(*uuid::Uuid::new_v4().as_bytes().first_chunk().context("bytes")?),
            size: 4_404_019,
            duration_s: 183.4,
            bitrate: 192_000,
            sample_rate: 44_100,
            channels: 2,
        },
        tags: TrackTags { title: Some(title.into()), artist: Some("Kavinsky & Co".into()), album: None, genre: None },
        source_facts: Default::default(),
    })
}

#[tokio::test]
async fn both_emails_arrive_with_text_and_html_and_a_signed_expiring_link() -> anyhow::Result<()> {
    let n = Notifier::start(None).await?;
    let to = recipient();
    let event = converted(&to, "Nightcall")?;
    let expiry_day = || (chrono::Utc::now() + chrono::Duration::hours(24)).format("%Y-%m-%d").to_string();
    let expiry_before = expiry_day();
    n.publish(&JobConverted(event.clone())).await?;
    let mail = n.emails(&to, 1).await?.remove(0);
    assert_eq!(mail["subject"], "Your MP3 is ready: Nightcall");
    let text = mail["text"].as_str().context("text part")?;
    let html = mail["html"].as_str().context("html part")?;
    assert!(text.contains("Nightcall by Kavinsky & Co"), "{text}");
    assert!(text.contains("3:03 · 4.2 MB · preset cbr192"), "{text}");
    assert!(html.contains("Kavinsky &amp; Co"), "{html}");
    // Sent between the two readings of the clock, which may straddle midnight.
    let expiry_after = expiry_day();
    assert!(
        text.contains(&format!("until {expiry_before}")) || text.contains(&format!("until {expiry_after}")),
        "{text}"
    );

    let link = text.split_whitespace().find(|w| w.contains("/d/")).context("no link")?;
    assert!(link.starts_with("http://127.0.0.1:8080/d/"), "{link}");
    let token = tunewire_signed_links::token_of_page(link).context("token")?;
    // The HTML part links the same token (its slashes are entity-escaped in the attribute).
    assert!(html.contains("<a href=\"http:&#x2f;&#x2f;127.0.0.1:8080&#x2f;d&#x2f;") && html.contains(token), "{html}");
    let claims = LinkSigner::new(n.link_secret.clone().into_bytes(), None).verify(token, chrono::Utc::now())?;
    assert_eq!(claims.file_id, event.output.file_id);
    assert_eq!(claims.owner, event.owner.id);
    let ttl = claims.exp - chrono::Utc::now().timestamp();
    assert!((24 * 3600 - 120..=24 * 3600).contains(&ttl), "{ttl}");
    // The sink stores the email before it answers; the ledger says `sent` once it has answered.
    eventually("the ledger says sent", DEADLINE, || async {
        let ledger = n.ledger(event.job_id).await?;
        Ok((ledger == [("converted".to_string(), "sent".to_string())]).then_some(()))
    })
    .await?;

    let failed = MediaFailed {
        job_id: JobId::new(),
        owner: Owner { id: UserId::new(), email: to.parse()? },
        source_filename: "holiday.mp4".into(),
        reason: "no audio track was found in the file".into(),
    };
    n.publish(&JobFailed(failed.clone())).await?;
    let mails = n.emails(&to, 2).await?;
    let mail = mails.iter().find(|m| m["subject"] == "We could not convert holiday.mp4").context("failure email")?;
    let text = mail["text"].as_str().context("text part")?;
    assert!(text.contains("we could not convert holiday.mp4: no audio track was found in the file."), "{text}");
    assert!(mail["html"].as_str().is_some_and(|h| h.contains("<b>holiday.mp4</b>")));
    n.stop().await
}

#[tokio::test]
async fn the_same_event_three_times_sends_one_email() -> anyhow::Result<()> {
    let n = Notifier::start(None).await?;
    let to = recipient();
    let event = converted(&to, "Once")?;
    for _ in 0..3 {
        n.publish(&JobConverted(event.clone())).await?;
    }
    n.acked(3).await?;
    assert_eq!(maildev::messages_to(&n.sandbox.stack.maildev_url, &to).await?.len(), 1);
    assert_eq!(n.ledger(event.job_id).await?.len(), 1);
    n.stop().await
}

#[tokio::test]
async fn emails_wait_while_smtp_is_away_and_all_arrive_once_when_it_returns() -> anyhow::Result<()> {
    let stack = tunewire_test_stack::Stack::from_env();
    let proxy = Proxy::start(format!("{}:{}", stack.smtp_host, stack.smtp_port)).await?;
    proxy.down();
    let n = Notifier::start(Some(proxy.addr.port())).await?;
    let to = recipient();
    for i in 0..3 {
        n.publish(&JobConverted(converted(&to, &format!("Track {i}"))?)).await?;
    }
    // Held, not dropped: the three wait unacknowledged with the notifier (which retries in
    // place), and it says it is not ready while SMTP is away.
    eventually("the notifier to hold the three while SMTP is away", DEADLINE, || async {
        let queues = n.sandbox.queues().await?;
        let held = queues
            .iter()
            .find(|q| q["name"] == NOTIFIER_QUEUE.name)
            .and_then(|q| q["messages_unacknowledged"].as_u64());
        let readyz = reqwest::get(format!("http://{}/readyz", n.health)).await?;
        Ok((held == Some(3) && readyz.status() == 503).then_some(()))
    })
    .await?;
    assert!(maildev::messages_to(&n.sandbox.stack.maildev_url, &to).await?.is_empty());
    proxy.up();
    n.emails(&to, 3).await?;
    n.acked(3).await?;
    let mails = maildev::messages_to(&n.sandbox.stack.maildev_url, &to).await?;
    let mut subjects: Vec<&str> = mails.iter().filter_map(|m| m["subject"].as_str()).collect();
    subjects.sort();
    assert_eq!(subjects, ["Your MP3 is ready: Track 0", "Your MP3 is ready: Track 1", "Your MP3 is ready: Track 2"]);
    n.stop().await
}

#[tokio::test]
async fn an_address_that_cannot_be_mailed_is_recorded_as_failed_and_not_retried() -> anyhow::Result<()> {
    let n = Notifier::start(None).await?;
    // Valid for an account, refused by SMTP syntax (quoted local part with a space).
    let event = converted("\"ann smith\"@example.com", "Nowhere")?;
    n.publish(&JobConverted(event.clone())).await?;
    n.acked(1).await?;
    assert_eq!(n.ledger(event.job_id).await?, vec![("converted".to_string(), "failed".to_string())]);
    // Done for good: nothing waits to be tried again (a transient hiccup before the verdict,
    // such as a slow broker connection, may retry once; the verdict itself is never retried).
    eventually("the queue is empty", DEADLINE, || async {
        let queues = n.sandbox.queues().await?;
        let depth = queues.iter().find(|q| q["name"] == NOTIFIER_QUEUE.name).and_then(|q| q["messages"].as_u64());
        Ok((depth == Some(0)).then_some(()))
    })
    .await?;
    assert!(n.sandbox.take(&NOTIFIER_QUEUE.dead_letter_queue(), 1).await?.is_empty());
    n.stop().await
}

#[tokio::test]
async fn send_test_email_reports_success_or_what_to_fix() -> anyhow::Result<()> {
    let stack = tunewire_test_stack::Stack::from_env();
    let to = recipient();
    let run = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tunewire-notifier"))
            .args(["send-test-email", "--to", &to])
            .env("SMTP_HOST", &stack.smtp_host)
            .env("SMTP_PORT", port.to_string())
            .env("LINK_SECRET", "unused-but-as-long-as-a-real-one-32")
            .output()
    };
    let ok = run(stack.smtp_port)?;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let mails = maildev::messages_to(&stack.maildev_url, &to).await?;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["subject"], "Tunewire test email");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let bad = run(closed)?;
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("nothing accepts connections") && stderr.contains("SMTP_PORT"), "{stderr}");
    Ok(())
}
