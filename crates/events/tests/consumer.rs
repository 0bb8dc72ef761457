//! The consumer loop against a real RabbitMQ (a private vhost per test): retries happen in
//! place without spending the queue's delivery limit, and a message being retried at
//! shutdown goes back to the queue.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tunewire_contract::{Event, JobFailed, MediaFailed};
use tunewire_events::topology::NOTIFIER_QUEUE;
use tunewire_events::{Bus, HandleError};
use tunewire_test_stack::{Sandbox, eventually};

const DEADLINE: Duration = Duration::from_secs(60);

async fn publish_one(bus: &Bus) -> anyhow::Result<()> {
    let event = json!({
        "job_id": uuid::Uuid::new_v4(),
        "owner": {"id": uuid::Uuid::new_v4(), "email": "ann@example.com"},
        "source_filename": "song.mp4",
        "reason": "no audio",
    });
    bus.publisher().await?.publish_raw(JobFailed::ROUTING_KEY, &serde_json::to_vec(&event)?, "m-1").await?;
    Ok(())
}

/// Messages ready plus unacknowledged in the notifier's queue, by the management API.
async fn in_queue(sandbox: &Sandbox) -> anyhow::Result<Option<u64>> {
    let queues = sandbox.queues().await?;
    Ok(queues.iter().find(|q| q["name"] == NOTIFIER_QUEUE.name).and_then(|q| q["messages"].as_u64()))
}

#[tokio::test]
async fn a_retried_message_is_retried_in_place_and_not_redelivered() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let bus = Arc::new(Bus::new(sandbox.amqp_url.clone(), "consumer-test"));
    bus.publisher().await?;
    publish_one(&bus).await?;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let shutdown = CancellationToken::new();
    let seen = attempts.clone();
    let handler = move |msg: tunewire_events::Incoming<MediaFailed>| {
        let seen = seen.clone();
        async move {
            let mut seen = seen.lock().map_err(|_| HandleError::Abort("poisoned".into()))?;
            seen.push(msg.attempt);
            if seen.len() < 3 { Err(HandleError::Retry("the database is down".into())) } else { Ok(()) }
        }
    };
    let consumer = tokio::spawn({
        let (bus, shutdown) = (bus.clone(), shutdown.clone());
        async move { bus.consume(NOTIFIER_QUEUE, 4, handler, shutdown).await }
    });
    eventually("the message handled", DEADLINE, || async {
        Ok((attempts.lock().map(|a| a.len()).unwrap_or(0) >= 3 && in_queue(&sandbox).await? == Some(0)).then_some(()))
    })
    .await?;
    assert_eq!(*attempts.lock().map_err(|_| anyhow::anyhow!("poisoned"))?, [0, 1, 2], "attempts counted in place");
    // In place: the broker never had it back, so the delivery limit is untouched.
    assert_eq!(sandbox.queue_stat(NOTIFIER_QUEUE.name, "redeliver").await?, 0);
    shutdown.cancel();
    consumer.await?;
    sandbox.cleanup().await
}

#[tokio::test]
async fn a_message_being_retried_at_shutdown_goes_back_to_the_queue() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let bus = Arc::new(Bus::new(sandbox.amqp_url.clone(), "consumer-test"));
    bus.publisher().await?;
    publish_one(&bus).await?;
    let tried = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let first_try = tried.clone();
    let handler = move |_: tunewire_events::Incoming<MediaFailed>| {
        let first_try = first_try.clone();
        async move {
            first_try.cancel();
            Err::<(), _>(HandleError::Retry("SMTP is down".into()))
        }
    };
    let consumer = tokio::spawn({
        let (bus, shutdown) = (bus.clone(), shutdown.clone());
        async move { bus.consume(NOTIFIER_QUEUE, 4, handler, shutdown).await }
    });
    tokio::time::timeout(DEADLINE, tried.cancelled()).await?;
    shutdown.cancel();
    // Returns without waiting out the backoff.
    tokio::time::timeout(Duration::from_secs(5), consumer).await??;
    let (user, pass) = &sandbox.stack.management_user;
    let url = format!("{}/api/queues/{}/{}", sandbox.stack.management_url, sandbox.vhost, NOTIFIER_QUEUE.name);
    eventually("the message back in the queue, ready", DEADLINE, || async {
        let queue: serde_json::Value =
            reqwest::Client::new().get(&url).basic_auth(user, Some(pass)).send().await?.json().await?;
        Ok((queue["messages_ready"] == 1 && queue["messages_unacknowledged"] == 0).then_some(()))
    })
    .await?;
    sandbox.cleanup().await
}
