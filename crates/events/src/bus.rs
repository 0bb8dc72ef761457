//! A service's link to RabbitMQ: a lazily (re)connected publishing session with publisher
//! confirms, and consumers that reconnect by themselves (see `consumer`).

use std::sync::Arc;
use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::topology;
use tunewire_contract::Event;
use tunewire_service_runtime::telemetry::TraceHeaders;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("rabbitmq refused (nacked) a {routing_key} message")]
    Nacked { routing_key: String },
    #[error("no queue is bound for {routing_key}; the message was returned")]
    Unroutable { routing_key: String },
    #[error("could not encode the event: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("rabbitmq did not finish setting up a connection within {} s", SETUP_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error("rabbitmq did not confirm a {routing_key} message within {} s", CONFIRM_TIMEOUT.as_secs())]
    ConfirmTimeout { routing_key: String },
    #[error("the consumer of {queue} was cancelled by the broker")]
    ConsumerCancelled { queue: String },
    #[error("no connection to rabbitmq is up (consumers and the publisher reconnect by themselves)")]
    NotConnected,
    #[error("the AMQP URL is not valid (see AMQP_URL)")]
    BadUrl,
}

/// The largest AMQP frame this side asks for; longer messages go in several frames.
const FRAME_MAX: u32 = 16 * 1024;

impl BusError {
    /// A stable machine code for logs and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            BusError::Amqp(_) | BusError::ConnectTimeout | BusError::NotConnected => "amqp_unavailable",
            BusError::ConfirmTimeout { .. } => "amqp_confirm_timeout",
            BusError::Nacked { .. } => "amqp_nacked",
            BusError::Unroutable { .. } => "amqp_unroutable",
            BusError::Encode(_) => "event_encoding",
            BusError::ConsumerCancelled { .. } => "consumer_cancelled",
            BusError::BadUrl => "amqp_bad_url",
        }
    }
}

/// The longest a connection, its channel and its set-up (topology, confirms, consumer) may
/// take. A broker that is still booting can accept the TCP connection and never finish the
/// handshake; without a bound, a reconnect would wait for ever and hold everything behind it.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a publish waits for the broker's confirm: a connection that died under it, or
/// a broker that blocks publishers (a memory or disk alarm), fails it rather than hanging the
/// caller, who retries.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes persistent messages on the events exchange and waits for the broker's confirm.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    app_id: Arc<str>,
}

impl Publisher {
    async fn open(connection: &Connection, app_id: Arc<str>) -> Result<Self, BusError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { channel, app_id })
    }

    pub async fn publish<E: Event>(&self, event: &E) -> Result<(), BusError> {
        let payload = serde_json::to_vec(event)?;
        let message_id = uuid::Uuid::new_v4().to_string();
        self.publish_raw(E::ROUTING_KEY, &payload, &message_id).await
    }

    /// Publishes an already-encoded event (the gateway's outbox stores them encoded). The
    /// current span's trace context goes with it, in the W3C headers.
    pub async fn publish_raw(&self, routing_key: &str, payload: &[u8], message_id: &str) -> Result<(), BusError> {
        let mut headers = FieldTable::default();
        for (name, value) in TraceHeaders::current().pairs() {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message_id.into())
            .with_type(routing_key.into())
            .with_app_id(self.app_id.as_ref().into())
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
        let publishing = async {
            self.channel
                .basic_publish(
                    topology::EVENTS_EXCHANGE.into(),
                    routing_key.into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    payload,
                    properties,
                )
                .await?
                .await
        };
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, publishing)
            .await
            .map_err(|_| BusError::ConfirmTimeout { routing_key: routing_key.into() })??;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BusError::Unroutable { routing_key: routing_key.into() }),
            Confirmation::Nack(_) | Confirmation::NotRequested => {
                Err(BusError::Nacked { routing_key: routing_key.into() })
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }
}

struct Session {
    connection: Connection,
    publisher: Publisher,
}

/// One per service process. Cheap to share behind an `Arc`.
pub struct Bus {
    url: String,
    name: Arc<str>,
    session: Mutex<Option<Session>>,
    /// Consumer sessions connected right now.
    pub(crate) consuming: std::sync::atomic::AtomicUsize,
    pub(crate) metrics: crate::metrics::ConsumerMetrics,
}

impl Bus {
    /// Does not connect: the first publish or consume does, so a service starts (and says
    /// "not ready") while RabbitMQ is down.
    pub fn new(url: impl Into<String>, service_name: &str) -> Self {
        Self {
            url: url.into(),
            name: service_name.into(),
            session: Mutex::new(None),
            consuming: std::sync::atomic::AtomicUsize::new(0),
            metrics: crate::metrics::ConsumerMetrics::default(),
        }
    }

    /// Puts this bus's consumer metrics (per queue) into the registry `/metrics` serves.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    /// Opens a connection and checks that the exchanges, and the queue it will consume if any,
    /// are there: `tunewire-setup` declares them; a service may declare nothing (see
    /// `topology::Service`).
    pub(crate) async fn connect(&self, consumes: Option<topology::QueueSpec>) -> Result<Connection, BusError> {
        let props = ConnectionProperties::default().with_connection_name(self.name.as_ref().into());
        // The parser's message would quote the URL, password and all.
        let mut uri: lapin::uri::AMQPUri = self.url.parse().map_err(|_| BusError::BadUrl)?;
        // lapin keeps 32 frames of buffer each way per connection: at RabbitMQ's default
        // frame_max (128 KiB) that is 8 MiB per connection, for events of a few KiB.
        uri.query.frame_max.get_or_insert(FRAME_MAX);
        let connection = Connection::connect_uri(uri, props).await?;
        let channel = connection.create_channel().await?;
        topology::check_declared(&channel, consumes).await?;
        let _ = channel.close(200, "topology checked".into()).await;
        Ok(connection)
    }

    /// The shared publishing session, reconnected if it was lost.
    pub async fn publisher(&self) -> Result<Publisher, BusError> {
        let mut session = self.session.lock().await;
        if let Some(s) = session.as_ref()
            && s.connection.status().connected()
            && s.publisher.is_open()
        {
            return Ok(s.publisher.clone());
        }
        *session = None;
        let (connection, publisher) = tokio::time::timeout(SETUP_TIMEOUT, async {
            let connection = self.connect(None).await?;
            let publisher = Publisher::open(&connection, self.name.clone()).await?;
            Ok::<_, BusError>((connection, publisher))
        })
        .await
        .map_err(|_| BusError::ConnectTimeout)??;
        *session = Some(Session { connection, publisher: publisher.clone() });
        Ok(publisher)
    }

    /// Whether this process is connected to RabbitMQ right now (for `/readyz`): a consumer
    /// session, or the publishing session, is up. Never connects: a probe must not open a
    /// connection, and consumers and the publisher reconnect by themselves.
    pub fn status(&self) -> Result<(), BusError> {
        if self.consuming.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Ok(());
        }
        match self.session.try_lock() {
            Ok(session)
                if session.as_ref().is_some_and(|s| s.connection.status().connected() && s.publisher.is_open()) =>
            {
                Ok(())
            }
            _ => Err(BusError::NotConnected),
        }
    }

    pub(crate) fn service_name(&self) -> &str {
        &self.name
    }
}
