//! Consuming with manual acks. A handler says, for every failure, whether to try again
//! (`Retry`) or to give up now (`Abort`: dead-letter at once). A message that cannot be
//! decoded, or whose handler panics, is aborted: retrying cannot fix it.
//!
//! A retry happens in place: the message stays unacknowledged with this consumer and the
//! handler runs again after a backoff, for up to `IN_PLACE_RETRY_BUDGET`. Only then is it
//! requeued, which the broker counts against the queue's delivery limit. Requeueing at
//! every retry would let an outage of a few minutes (PostgreSQL failing over, SMTP down)
//! spend the delivery limit, which exists for consumers that crash on a message, and
//! dead-letter work that only had to wait. Held messages also stop new ones from being taken
//! (prefetch), which is the backpressure an outage calls for.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, Span, error, info, warn};

use crate::bus::{Bus, BusError, Publisher, SETUP_TIMEOUT};
use crate::topology::QueueSpec;
use tunewire_contract::Message;
use tunewire_service_runtime::Backoff;
use tunewire_service_runtime::telemetry::TraceHeaders;
use tunewire_service_runtime::telemetry::propagation::{TRACEPARENT, TRACESTATE};

use crate::metrics::QueueLabels;

/// A decoded delivery, with what a handler needs to answer it.
pub struct Incoming<E> {
    pub event: E,
    /// Earlier attempts at this message: 0 the first time. Deliveries are counted by the
    /// broker (so they survive consumer restarts), plus retries in place of this one.
    pub attempt: u32,
    /// Earlier deliveries of this message, as the broker counts them (`x-delivery-count`):
    /// consumers that crashed or gave it back, not retries in place.
    pub deliveries: u32,
    pub publisher: Publisher,
    /// Cancelled when the channel this message came on is gone: the broker has put the
    /// message back (another consumer may hold it already) and this one can no longer be
    /// acknowledged, so long work on it should stop.
    pub lost: CancellationToken,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandleError {
    /// Transient (a dependency is down): back off and redeliver.
    #[error("retry: {0}")]
    Retry(String),
    /// Permanent for this message: dead-letter it now.
    #[error("abort: {0}")]
    Abort(String),
    /// Something about this message failed on our side: give it back to the broker now (it
    /// counts against the delivery limit), so the next attempt may be another consumer's.
    #[error("requeue: {0}")]
    Requeue(String),
}

/// States at each `?` what a failure means for the message.
pub trait HandleResultExt<T> {
    fn or_retry(self, doing: &str) -> Result<T, HandleError>;
    fn or_abort(self, doing: &str) -> Result<T, HandleError>;
}

impl<T, E: Display> HandleResultExt<T> for Result<T, E> {
    fn or_retry(self, doing: &str) -> Result<T, HandleError> {
        self.map_err(|e| HandleError::Retry(format!("{doing}: {e}")))
    }
    fn or_abort(self, doing: &str) -> Result<T, HandleError> {
        self.map_err(|e| HandleError::Abort(format!("{doing}: {e}")))
    }
}

/// How long one delivery is retried in place before it is requeued. Well under RabbitMQ's
/// `consumer_timeout` (30 min), past which the broker closes a channel holding a message.
pub const IN_PLACE_RETRY_BUDGET: Duration = Duration::from_secs(10 * 60);

fn delivery_count(headers: &Option<FieldTable>) -> u32 {
    let value = headers.as_ref().and_then(|h| h.inner().get("x-delivery-count").cloned());
    match value {
        Some(AMQPValue::LongLongInt(n)) => n.max(0) as u32,
        Some(AMQPValue::LongInt(n)) => n.max(0) as u32,
        Some(AMQPValue::LongUInt(n)) => n,
        Some(AMQPValue::ShortInt(n)) => n.max(0) as u32,
        Some(AMQPValue::ShortUInt(n)) => u32::from(n),
        _ => 0,
    }
}

impl Bus {
    /// Consumes `spec`'s queue until `shutdown` is cancelled, reconnecting with backoff when
    /// the broker goes away. In-flight messages finish before it returns.
    pub async fn consume<E, H, Fut>(
        self: &Arc<Self>,
        spec: QueueSpec,
        prefetch: u16,
        handler: H,
        shutdown: CancellationToken,
    ) where
        E: Message,
        H: Fn(Incoming<E>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandleError>> + Send + 'static,
    {
        let mut failures = 0u32;
        loop {
            match self.consume_session(spec, prefetch, handler.clone(), &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    failures += 1;
                    let delay = Backoff::DEPENDENCY.delay(failures);
                    warn!(queue = spec.name, error = %e, code = e.code(), retry_in_s = delay.as_secs(), "consumer lost its connection");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn consume_session<E, H, Fut>(
        self: &Arc<Self>,
        spec: QueueSpec,
        prefetch: u16,
        handler: H,
        shutdown: &CancellationToken,
    ) -> Result<(), BusError>
    where
        E: Message,
        H: Fn(Incoming<E>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandleError>> + Send + 'static,
    {
        let tag = format!("{}-{}", self.service_name(), uuid::Uuid::new_v4());
        let (connection, channel, mut consumer) = tokio::time::timeout(SETUP_TIMEOUT, async {
            let connection = self.connect(Some(spec)).await?;
            let channel = connection.create_channel().await?;
            channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
            let consumer = channel
                .basic_consume(
                    spec.name.into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, BusError>((connection, channel, consumer))
        })
        .await
        .map_err(|_| BusError::ConnectTimeout)??;
        info!(queue = spec.name, prefetch, "consuming");
        let connected = Connected::count(&self.consuming);
        let lost = CancellationToken::new();
        let mut in_flight = JoinSet::new();
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    break Ok(());
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let context = DeliveryContext {
                            bus: self.clone(),
                            spec,
                            channel: channel.clone(),
                            shutdown: shutdown.clone(),
                            lost: lost.clone(),
                        };
                        in_flight.spawn(handle_delivery(context, delivery, handler.clone()));
                    }
                    Some(Err(e)) => break Err(BusError::from(e)),
                    None => break Err(BusError::ConsumerCancelled { queue: spec.name.into() }),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        };
        drop(connected);
        if result.is_err() {
            lost.cancel();
        }
        // Messages being handled finish (and are acked) before the connection goes.
        while in_flight.join_next().await.is_some() {}
        let _ = connection.close(200, "consumer stopped".into()).await;
        result
    }
}

/// Counts a consumer session as connected for as long as it lives.
struct Connected<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Connected<'a> {
    fn count(counter: &'a std::sync::atomic::AtomicUsize) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What handling one delivery needs to know about its consumer.
struct DeliveryContext {
    bus: Arc<Bus>,
    spec: QueueSpec,
    channel: lapin::Channel,
    shutdown: CancellationToken,
    lost: CancellationToken,
}

/// Decodes the delivery and runs the handler once; `attempt` counts earlier attempts.
async fn attempt_once<E, H, Fut>(
    bus: &Bus,
    delivery: &Delivery,
    (attempt, deliveries): (u32, u32),
    (lost, span): (&CancellationToken, &Span),
    handler: &H,
) -> Result<(), HandleError>
where
    E: Message,
    H: Fn(Incoming<E>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandleError>> + Send + 'static,
{
    let routing_key = delivery.routing_key.as_str();
    let event = E::decode(routing_key, &delivery.data)
        .map_err(|e| HandleError::Abort(format!("malformed {routing_key} message: {e}")))?;
    if let Some(job_id) = event.job_id() {
        span.record("job_id", tracing::field::display(job_id));
    }
    let publisher = bus.publisher().await.map_err(|e| HandleError::Retry(format!("no publishing session: {e}")))?;
    let incoming = Incoming { event, attempt, deliveries, publisher, lost: lost.clone() };
    // The handler runs in its own task so that a panic is contained and answered.
    match tokio::spawn(handler(incoming).instrument(span.clone())).await {
        Ok(outcome) => outcome,
        Err(join) => Err(HandleError::Abort(format!("{routing_key} handler panicked: {join}"))),
    }
}

/// The span of one delivery, continuing the trace its publisher sent along; `job_id` is
/// recorded once the message is decoded.
fn delivery_span(spec: QueueSpec, delivery: &Delivery) -> Span {
    let header = |name: &str| match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok().map(str::to_owned),
        _ => None,
    };
    let span = tracing::info_span!(
        "consume",
        otel.name = format!("{} process", spec.name),
        otel.kind = "consumer",
        messaging.destination.name = spec.name,
        routing_key = %delivery.routing_key,
        job_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    TraceHeaders::from_parts(header(TRACEPARENT), header(TRACESTATE)).continue_in(&span);
    span
}

async fn handle_delivery<E, H, Fut>(context: DeliveryContext, delivery: Delivery, handler: H)
where
    E: Message,
    H: Fn(Incoming<E>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandleError>> + Send + 'static,
{
    let span = delivery_span(context.spec, &delivery);
    settle_delivery(context, delivery, handler, span.clone()).instrument(span).await;
}

async fn settle_delivery<E, H, Fut>(context: DeliveryContext, delivery: Delivery, handler: H, span: Span)
where
    E: Message,
    H: Fn(Incoming<E>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandleError>> + Send + 'static,
{
    let DeliveryContext { bus, spec, channel, shutdown, lost } = context;
    let labels = QueueLabels { queue: spec.name };
    bus.metrics.consumed.get_or_create(&labels).inc();
    let deliveries = delivery_count(delivery.properties.headers());
    let routing_key = delivery.routing_key.to_string();
    let first_try = std::time::Instant::now();
    let mut attempt = deliveries;
    let outcome = loop {
        let outcome = attempt_once(&bus, &delivery, (attempt, deliveries), (&lost, &span), &handler).await;
        let Err(HandleError::Retry(reason)) = &outcome else { break outcome };
        let delay = Backoff::DEPENDENCY.delay(attempt);
        // Past the budget, at shutdown, or with the channel gone (the broker has already put
        // the message back), holding on gains nothing.
        if first_try.elapsed() + delay > IN_PLACE_RETRY_BUDGET
            || shutdown.is_cancelled()
            || !channel.status().connected()
        {
            break outcome;
        }
        warn!(queue = spec.name, %routing_key, attempt, %reason, retry_in_s = delay.as_secs(), "will retry message");
        bus.metrics.retried.get_or_create(&labels).inc();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break outcome,
        }
        attempt += 1;
    };
    bus.metrics.handler_duration.get_or_create(&labels).observe(first_try.elapsed().as_secs_f64());
    let settled = match outcome {
        Ok(()) => {
            bus.metrics.acked.get_or_create(&labels).inc();
            delivery.ack(BasicAckOptions::default()).await
        }
        Err(HandleError::Abort(reason)) => {
            error!(queue = spec.name, %routing_key, attempt, %reason, "giving up on message; dead-lettering it");
            bus.metrics.dead_lettered.get_or_create(&labels).inc();
            delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await
        }
        Err(HandleError::Retry(reason) | HandleError::Requeue(reason)) => {
            warn!(queue = spec.name, %routing_key, attempt, deliveries, %reason, "requeueing message");
            bus.metrics.requeued.get_or_create(&labels).inc();
            delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
        }
    };
    if let Err(e) = settled {
        // The channel is gone; the broker redelivers the message to the next consumer.
        warn!(queue = spec.name, error = %e, "could not settle message; it will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_count_reads_the_quorum_header() {
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        assert_eq!(delivery_count(&Some(headers)), 3);
        assert_eq!(delivery_count(&None), 0);
    }

    #[test]
    fn result_ext_states_the_retry_behaviour() {
        let r: Result<(), &str> = Err("db down");
        assert_eq!(r.or_retry("saving"), Err(HandleError::Retry("saving: db down".into())));
        let r: Result<(), &str> = Err("bad");
        assert!(matches!(r.or_abort("decoding"), Err(HandleError::Abort(_))));
    }
}
