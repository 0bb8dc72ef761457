//! Consuming with manual acks. A handler says, for every failure, whether to try again
//! (`Retry`: backoff, then requeue; the broker dead-letters after the delivery limit) or to
//! give up now (`Abort`: dead-letter at once). A message that cannot be decoded, or whose
//! handler panics, is aborted: retrying cannot fix it.

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
use tracing::{error, info, warn};

use crate::bus::{Bus, BusError, Publisher};
use crate::contract::Message;
use crate::topology::QueueSpec;

/// A decoded delivery, with what a handler needs to answer it.
pub struct Incoming<E> {
    pub event: E,
    /// 0 on the first delivery; counted by the broker, so it survives consumer restarts.
    pub attempt: u32,
    pub publisher: Publisher,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandleError {
    /// Transient (a dependency is down): back off and redeliver.
    #[error("retry: {0}")]
    Retry(String),
    /// Permanent for this message: dead-letter it now.
    #[error("abort: {0}")]
    Abort(String),
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

/// Backoff before a retried message is handed back: 1 s doubling to 30 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(5)).min(Duration::from_secs(30))
}

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
                    let delay = retry_delay(failures.min(5));
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
        let connection = self.connect().await?;
        let channel = connection.create_channel().await?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let tag = format!("{}-{}", self.service_name(), uuid::Uuid::new_v4());
        let mut consumer = channel
            .basic_consume(spec.name.into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        info!(queue = spec.name, prefetch, "consuming");
        let mut in_flight = JoinSet::new();
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    break Ok(());
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        in_flight.spawn(handle_delivery(self.clone(), spec, delivery, handler.clone()));
                    }
                    Some(Err(e)) => break Err(BusError::from(e)),
                    None => break Err(BusError::ConsumerCancelled { queue: spec.name.into() }),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        };
        // Messages being handled finish (and are acked) before the connection goes.
        while in_flight.join_next().await.is_some() {}
        let _ = connection.close(200, "consumer stopped".into()).await;
        result
    }
}

async fn handle_delivery<E, H, Fut>(bus: Arc<Bus>, spec: QueueSpec, delivery: Delivery, handler: H)
where
    E: Message,
    H: Fn(Incoming<E>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandleError>> + Send + 'static,
{
    let attempt = delivery_count(delivery.properties.headers());
    let routing_key = delivery.routing_key.to_string();
    let outcome = match E::decode(&routing_key, &delivery.data) {
        Err(e) => Err(HandleError::Abort(format!("malformed {routing_key} message: {e}"))),
        Ok(event) => match bus.publisher().await {
            Err(e) => Err(HandleError::Retry(format!("no publishing session: {e}"))),
            // The handler runs in its own task so that a panic is contained and answered.
            Ok(publisher) => match tokio::spawn(handler(Incoming { event, attempt, publisher })).await {
                Ok(outcome) => outcome,
                Err(join) => Err(HandleError::Abort(format!("{routing_key} handler panicked: {join}"))),
            },
        },
    };
    let settled = match outcome {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(HandleError::Abort(reason)) => {
            error!(queue = spec.name, %routing_key, attempt, %reason, "giving up on message; dead-lettering it");
            delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await
        }
        Err(HandleError::Retry(reason)) => {
            let delay = retry_delay(attempt);
            warn!(queue = spec.name, %routing_key, attempt, %reason, retry_in_s = delay.as_secs(), "will retry message");
            tokio::time::sleep(delay).await;
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
    fn retry_delay_doubles_then_caps() {
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(8));
        assert_eq!(retry_delay(9), Duration::from_secs(30));
    }

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
