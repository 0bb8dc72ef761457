//! The notifier's Prometheus metrics: emails by outcome (sent, refused for good by the SMTP
//! server, failed and to be retried) and how long the SMTP conversation took.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone)]
pub struct EmailMetrics {
    emails: Family<OutcomeLabels, Counter>,
    smtp_duration: Histogram,
}

impl Default for EmailMetrics {
    fn default() -> Self {
        // 1 ms to about 65 s.
        Self { emails: Family::default(), smtp_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)) }
    }
}

impl EmailMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "emails",
            "Emails by outcome: sent, refused (for good, by the SMTP server), failed (to be retried)",
            self.emails.clone(),
        );
        registry.register_with_unit(
            "smtp_send_duration",
            "Time the SMTP server took to take (or refuse) one email",
            Unit::Seconds,
            self.smtp_duration.clone(),
        );
    }

    pub fn sent(&self, outcome: &'static str, took: std::time::Duration) {
        self.emails.get_or_create(&OutcomeLabels { outcome }).inc();
        self.smtp_duration.observe(took.as_secs_f64());
    }
}
