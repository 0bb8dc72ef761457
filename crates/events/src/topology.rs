//! Exchanges and queues. One durable quorum queue per consuming service, each with its own
//! dead-letter queue; a message that keeps failing is dead-lettered by the broker once its
//! `x-delivery-limit` is exceeded, so nothing loops forever.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

/// Where every pipeline event is published (topic exchange, routing key = event type).
pub const EVENTS_EXCHANGE: &str = "tunewire.events";
/// Where queues send what they give up on (direct exchange, routing key = queue name).
pub const DEAD_LETTER_EXCHANGE: &str = "tunewire.dead-letter";

/// A consumer's queue: its name and the routing keys it is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: &'static str,
    pub routing_keys: &'static [&'static str],
}

impl QueueSpec {
    /// The queue that holds what this one dead-lettered, for an operator to inspect.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.name)
    }
}

pub const CONVERTER_QUEUE: QueueSpec =
    QueueSpec { name: "converter.media-uploaded", routing_keys: &["media.uploaded"] };
/// Deletions reach the converter on a queue of their own: on its work queue they would wait
/// behind the conversions they are meant to stop (prefetch is the converter's concurrency).
pub const CONVERTER_LIFECYCLE_QUEUE: QueueSpec =
    QueueSpec { name: "converter.media-deleted", routing_keys: &["media.deleted"] };
pub const CATALOG_INDEXER_QUEUE: QueueSpec = QueueSpec {
    name: "catalog-indexer.media-converted",
    routing_keys: &["media.converted", "media.deleted", "media.expired"],
};
pub const NOTIFIER_QUEUE: QueueSpec =
    QueueSpec { name: "notifier.outcomes", routing_keys: &["media.converted", "media.failed", "media.deleted"] };
pub const GATEWAY_QUEUE: QueueSpec = QueueSpec {
    name: "gateway.job-state",
    routing_keys: &["media.progress", "media.converted", "media.failed", "media.catalogued"],
};

pub const ALL_QUEUES: [QueueSpec; 5] =
    [CONVERTER_QUEUE, CONVERTER_LIFECYCLE_QUEUE, CATALOG_INDEXER_QUEUE, NOTIFIER_QUEUE, GATEWAY_QUEUE];

/// Deliveries before the broker dead-letters a message (first delivery included).
pub const DELIVERY_LIMIT: i64 = 10;

fn quorum_args(dead_letter: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    if let Some(queue) = dead_letter {
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from(DEAD_LETTER_EXCHANGE)));
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(LongString::from(queue)));
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
    }
    args
}

/// Declares every exchange and queue of the pipeline. Idempotent; cheap enough to run on
/// every (re)connection.
pub async fn declare_all(channel: &Channel) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(EVENTS_EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    channel.exchange_declare(DEAD_LETTER_EXCHANGE.into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
    let queue_opts = QueueDeclareOptions { durable: true, ..Default::default() };
    for spec in ALL_QUEUES {
        let dead = spec.dead_letter_queue();
        channel.queue_declare(dead.as_str().into(), queue_opts, quorum_args(None)).await?;
        channel
            .queue_bind(
                dead.as_str().into(),
                DEAD_LETTER_EXCHANGE.into(),
                spec.name.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel.queue_declare(spec.name.into(), queue_opts, quorum_args(Some(spec.name))).await?;
        for key in spec.routing_keys {
            channel
                .queue_bind(
                    spec.name.into(),
                    EVENTS_EXCHANGE.into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}
