//! Exchanges and queues. One durable quorum queue per consuming service, each with its own
//! dead-letter queue; a message that keeps failing is dead-lettered by the broker once its
//! `x-delivery-limit` is exceeded, so nothing loops forever.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use tunewire_contract::{
    Event, JobConverted, JobFailed, MediaCatalogued, MediaConverted, MediaDeleted, MediaExpired, MediaFailed,
    MediaProgress, MediaUploaded,
};

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
/// The gateway's `job.*`, not the converter's `media.*`: only outcomes checked against their
/// job are mailed.
pub const NOTIFIER_QUEUE: QueueSpec =
    QueueSpec { name: "notifier.outcomes", routing_keys: &["job.converted", "job.failed", "media.deleted"] };
/// Bindings of earlier versions, removed from a broker that still has them.
const RETIRED_BINDINGS: [(&str, &str); 2] =
    [("notifier.outcomes", "media.converted"), ("notifier.outcomes", "media.failed")];
pub const GATEWAY_QUEUE: QueueSpec = QueueSpec {
    name: "gateway.job-state",
    routing_keys: &["media.progress", "media.converted", "media.failed", "media.catalogued"],
};

pub const ALL_QUEUES: [QueueSpec; 5] =
    [CONVERTER_QUEUE, CONVERTER_LIFECYCLE_QUEUE, CATALOG_INDEXER_QUEUE, NOTIFIER_QUEUE, GATEWAY_QUEUE];

/// A service's place on the bus: the queues it consumes and the events it publishes, from
/// which its broker permissions follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// Its RabbitMQ user.
    pub user: &'static str,
    pub consumes: &'static [QueueSpec],
    pub publishes: &'static [&'static str],
}

pub const GATEWAY: Service = Service {
    user: "tunewire-gateway",
    consumes: &[GATEWAY_QUEUE],
    publishes: &[
        MediaUploaded::ROUTING_KEY,
        MediaDeleted::ROUTING_KEY,
        MediaExpired::ROUTING_KEY,
        JobConverted::ROUTING_KEY,
        JobFailed::ROUTING_KEY,
    ],
};
pub const CONVERTER: Service = Service {
    user: "tunewire-converter",
    consumes: &[CONVERTER_QUEUE, CONVERTER_LIFECYCLE_QUEUE],
    publishes: &[MediaProgress::ROUTING_KEY, MediaConverted::ROUTING_KEY, MediaFailed::ROUTING_KEY],
};
pub const CATALOG_INDEXER: Service = Service {
    user: "tunewire-catalog-indexer",
    consumes: &[CATALOG_INDEXER_QUEUE],
    publishes: &[MediaCatalogued::ROUTING_KEY],
};
pub const NOTIFIER: Service = Service { user: "tunewire-notifier", consumes: &[NOTIFIER_QUEUE], publishes: &[] };

/// What every service's user name starts with.
const USER_PREFIX: &str = "tunewire-";

pub const SERVICES: [Service; 4] = [GATEWAY, CONVERTER, CATALOG_INDEXER, NOTIFIER];

/// Regular expressions over resource names, as RabbitMQ's permissions take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Declaring (and deleting) queues and exchanges.
    pub configure: String,
    /// Publishing to exchanges, binding queues.
    pub write: String,
    /// Consuming from queues, binding to exchanges.
    pub read: String,
    /// Routing keys it may publish under on `EVENTS_EXCHANGE` (a topic permission).
    pub events_write: String,
    /// Routing keys it may bind its queues to on `EVENTS_EXCHANGE`.
    pub events_read: String,
}

/// `^(a|b)$` with the names' dots escaped; `^$` (nothing) for none.
fn exactly<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.into_iter().map(|n| n.replace('.', "\\.")).collect();
    if names.is_empty() { "^$".into() } else { format!("^({})$", names.join("|")) }
}

impl Service {
    /// The service's name (`gateway`), as its settings are prefixed (`GATEWAY_...`).
    pub fn name(&self) -> &'static str {
        self.user.strip_prefix(USER_PREFIX).unwrap_or(self.user)
    }

    /// Consume its own queues and publish its own events, nothing more: the setup
    /// (`tunewire-setup`) declares and binds everything, so no service can delete, rebind or
    /// tap (through the dead-letter exchange) what another reads from.
    pub fn permissions(&self) -> Permissions {
        let publishes = if self.publishes.is_empty() { None } else { Some(EVENTS_EXCHANGE) };
        Permissions {
            configure: exactly([]),
            write: exactly(publishes),
            read: exactly(self.consumes.iter().map(|q| q.name)),
            events_write: exactly(self.publishes.iter().copied()),
            events_read: exactly([]),
        }
    }
}

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

/// Declares every exchange and queue of the pipeline, and removes retired bindings: the
/// setup's job, with the administrator's rights. Idempotent.
pub async fn declare_all(channel: &Channel) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(EVENTS_EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    channel.exchange_declare(DEAD_LETTER_EXCHANGE.into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
    for spec in ALL_QUEUES {
        declare_queue(channel, spec).await?;
    }
    for (queue, key) in RETIRED_BINDINGS {
        // Unbinding what is not bound is not an error.
        channel.queue_unbind(queue.into(), EVENTS_EXCHANGE.into(), key.into(), FieldTable::default()).await?;
    }
    Ok(())
}

/// Checks that the setup has declared the exchanges, and `consumes`' queue, without the right
/// to declare anything (a passive declare needs none).
pub async fn check_declared(channel: &Channel, consumes: Option<QueueSpec>) -> lapin::Result<()> {
    let passive = ExchangeDeclareOptions { passive: true, durable: true, ..Default::default() };
    channel.exchange_declare(EVENTS_EXCHANGE.into(), ExchangeKind::Topic, passive, FieldTable::default()).await?;
    channel.exchange_declare(DEAD_LETTER_EXCHANGE.into(), ExchangeKind::Direct, passive, FieldTable::default()).await?;
    if let Some(spec) = consumes {
        let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        channel.queue_declare(spec.name.into(), passive, FieldTable::default()).await?;
    }
    Ok(())
}

/// Declares a consumer's queue, its dead-letter queue and their bindings. Idempotent.
async fn declare_queue(channel: &Channel, spec: QueueSpec) -> lapin::Result<()> {
    let queue_opts = QueueDeclareOptions { durable: true, ..Default::default() };
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_may_configure_only_its_own_queues_and_publish_only_its_own_events() {
        let notifier = NOTIFIER.permissions();
        assert_eq!(notifier.configure, "^$", "the setup declares everything");
        assert_eq!(notifier.write, "^$", "it publishes nothing");
        assert_eq!(notifier.read, r"^(notifier\.outcomes)$", "not its dead letters, nor the dead-letter exchange");
        assert_eq!(notifier.events_write, "^$");
        let converter = CONVERTER.permissions();
        assert_eq!(converter.read, r"^(converter\.media-uploaded|converter\.media-deleted)$");
        assert_eq!(converter.write, r"^(tunewire\.events)$");
        assert_eq!(converter.events_write, r"^(media\.progress|media\.converted|media\.failed)$");
        // Every queue is some service's, and only one's.
        for queue in ALL_QUEUES {
            let owners = SERVICES.iter().filter(|s| s.consumes.contains(&queue)).count();
            assert_eq!(owners, 1, "{}", queue.name);
        }
    }

    #[test]
    fn a_service_s_name_is_its_user_without_the_prefix() {
        let names: Vec<&str> = SERVICES.iter().map(Service::name).collect();
        assert_eq!(names, ["gateway", "converter", "catalog-indexer", "notifier"]);
    }
}
