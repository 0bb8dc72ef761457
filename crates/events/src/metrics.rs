//! Every consumer's Prometheus metrics, per queue: what was delivered, and how each delivery
//! ended (acked, retried in place, requeued, dead-lettered), and how long its handler took.
//! Registered by each service into the registry its `/metrics` serves (`Bus::register_metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: &'static str,
}

type DurationFamily = Family<QueueLabels, Histogram, fn() -> Histogram>;

fn handler_histogram() -> Histogram {
    // 1 ms to about 9 minutes: an email to an hour-long conversion.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

#[derive(Clone)]
pub struct ConsumerMetrics {
    pub consumed: Family<QueueLabels, Counter>,
    pub acked: Family<QueueLabels, Counter>,
    pub retried: Family<QueueLabels, Counter>,
    pub requeued: Family<QueueLabels, Counter>,
    pub dead_lettered: Family<QueueLabels, Counter>,
    pub handler_duration: DurationFamily,
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self {
            consumed: Family::default(),
            acked: Family::default(),
            retried: Family::default(),
            requeued: Family::default(),
            dead_lettered: Family::default(),
            handler_duration: Family::new_with_constructor(handler_histogram as fn() -> Histogram),
        }
    }
}

impl ConsumerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("messages_consumed", "Deliveries taken from the queue", self.consumed.clone());
        registry.register("messages_acked", "Deliveries handled and acknowledged", self.acked.clone());
        registry.register(
            "messages_retried",
            "Handler runs retried in place after a transient failure",
            self.retried.clone(),
        );
        registry.register(
            "messages_requeued",
            "Deliveries given back to the broker (retry budget spent, or a failure on our side)",
            self.requeued.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Deliveries this consumer gave up on (malformed, refused for good, handler panicked)",
            self.dead_lettered.clone(),
        );
        registry.register_with_unit(
            "message_handler_duration",
            "From delivery to settlement, retries in place included",
            Unit::Seconds,
            self.handler_duration.clone(),
        );
    }
}
