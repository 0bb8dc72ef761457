//! Proves each component of the local stack is the real thing, over TCP, with the same
//! client crates the services use.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tunewire_media_store::{Bucket, MediaStore};
use tunewire_test_stack::{Sandbox, eventually, maildev};

#[tokio::test]
async fn postgres_runs_a_sqlx_migration_and_answers_queries() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let pool = sqlx::postgres::PgPool::connect(&sandbox.database_url).await?;
    sqlx::migrate!("tests/stack_migrations").run(&pool).await?;
    let note: String = sqlx::query_scalar("SELECT note FROM stack_probe WHERE id = 1").fetch_one(&pool).await?;
    assert_eq!(note, "migrated");
    // Applying it again is a no-op, not an error.
    sqlx::migrate!("tests/stack_migrations").run(&pool).await?;
    pool.close().await;
    sandbox.cleanup().await
}

#[tokio::test]
async fn rabbitmq_confirms_a_publish_and_redelivers_until_acked() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let conn = Connection::connect(&sandbox.amqp_url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let queue = "stack-probe";
    channel
        .queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await?;
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"hello",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    assert!(matches!(confirm, Confirmation::Ack(None)), "{confirm:?}");

    // First consumer takes the message and dies without acking: it must come back.
    let first = conn.create_channel().await?;
    let mut consumer = first
        .basic_consume(queue.into(), "first".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await?.context("no delivery")??;
    assert_eq!(delivery.data, b"hello");
    assert!(!delivery.redelivered);
    first.close(200, "bye".into()).await?;

    let second = conn.create_channel().await?;
    let mut consumer = second
        .basic_consume(queue.into(), "second".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await?.context("no redelivery")??;
    assert!(delivery.redelivered);
    delivery.ack(BasicAckOptions::default()).await?;
    conn.close(200, "done".into()).await?;
    sandbox.cleanup().await
}

#[tokio::test]
async fn gridfs_stores_and_streams_back_50_mib_intact() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let store = MediaStore::connect(&sandbox.stack.mongo_uri, &sandbox.mongo_prefix).await?;
    // 50 MiB of deterministic, incompressible-looking bytes, produced 1 MiB at a time.
    let mut expected = Sha256::new();
    let chunks: Vec<Bytes> = (0u32..50)
        .map(|i| {
            let mut state = 0x9E37_79B9u32 ^ i;
            let chunk: Vec<u8> = (0..1 << 20)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            expected.update(&chunk);
            Bytes::from(chunk)
        })
        .collect();
    let expected = hex::encode(expected.finalize());
    let source = stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let stored = store.store(Bucket::Uploads, None, "probe.bin", Default::default(), source, u64::MAX).await?;
    assert_eq!(stored.size, 50 << 20);
    assert_eq!(stored.sha256, expected);

    let (info, download) = store.open(Bucket::Uploads, &stored.id).await?.context("stored file not found")?;
    assert_eq!(info.length, 50 << 20);
    let mut reader = download.compat();
    let mut buf = vec![0u8; 256 * 1024];
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    assert_eq!(total, 50 << 20);
    assert_eq!(hex::encode(hasher.finalize()), expected);

    store.delete(Bucket::Uploads, &stored.id).await?;
    assert!(store.open(Bucket::Uploads, &stored.id).await?.is_none());
    sandbox.cleanup().await
}

#[tokio::test]
async fn smtp_sink_receives_a_lettre_email_readable_over_rest() -> anyhow::Result<()> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let stack = tunewire_test_stack::Stack::from_env();
    let to = format!("probe-{}@example.com", uuid::Uuid::new_v4().simple());
    let email = Message::builder()
        .from("Tunewire <noreply@tunewire.test>".parse()?)
        .to(to.parse()?)
        .subject("stack probe")
        .body(String::from("it works"))?;
    let mailer =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&stack.smtp_host).port(stack.smtp_port).build();
    mailer.send(email).await?;
    let messages = eventually("the email in MailDev", Duration::from_secs(10), || async {
        let found = maildev::messages_to(&stack.maildev_url, &to).await?;
        Ok((!found.is_empty()).then_some(found))
    })
    .await?;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["subject"], "stack probe");
    assert!(messages[0]["text"].as_str().unwrap_or_default().contains("it works"));
    Ok(())
}

#[tokio::test]
async fn management_api_lets_the_monitor_watch_but_not_delete() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let conn = Connection::connect(&sandbox.amqp_url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .queue_declare(
            "watched".into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let http = reqwest::Client::new();
    let (user, pass) = &sandbox.stack.monitor_user;
    let url = format!("{}/api/queues/{}", sandbox.stack.management_url, sandbox.vhost);
    let queues: Vec<serde_json::Value> =
        eventually("the queue in the management API", Duration::from_secs(10), || async {
            let list: Vec<serde_json::Value> =
                http.get(&url).basic_auth(user, Some(pass)).send().await?.error_for_status()?.json().await?;
            Ok(list.iter().any(|q| q["name"] == "watched").then_some(list))
        })
        .await?;
    assert!(queues.iter().any(|q| q["name"] == "watched"));

    let delete = http.delete(format!("{url}/watched")).basic_auth(user, Some(pass)).send().await?;
    assert!(matches!(delete.status().as_u16(), 401 | 403), "monitor deleted a queue: {}", delete.status());
    let still_there = http.get(format!("{url}/watched")).basic_auth(user, Some(pass)).send().await?;
    assert_eq!(still_there.status(), 200);
    conn.close(200, "done".into()).await?;
    sandbox.cleanup().await
}
