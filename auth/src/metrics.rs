//! Auth's Prometheus metrics: account requests by action and outcome (the error code, or
//! `ok`), and how long password hashes take on their threads.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tunewire_service_runtime::ApiError;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `register`, `login` or `password`.
    pub action: &'static str,
    /// `ok`, or the refusal's stable code (`too_many_attempts`, `unauthorized`, `busy`...).
    pub outcome: &'static str,
}

#[derive(Clone)]
pub struct AuthMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub hash_duration: Histogram,
}

impl AuthMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            // 10 ms to about 5 s.
            hash_duration: Histogram::new(exponential_buckets(0.01, 2.0, 10)),
        };
        registry.register(
            "account_requests",
            "Registrations, logins and password changes answered, by outcome",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "password_hash_duration",
            "Time an argon2 hash or verification took on its thread",
            Unit::Seconds,
            metrics.hash_duration.clone(),
        );
        metrics
    }

    pub fn answered<T>(&self, action: &'static str, outcome: &Result<T, ApiError>) {
        let outcome = match outcome {
            Ok(_) => "ok",
            Err(e) => e.code,
        };
        self.requests.get_or_create(&RequestLabels { action, outcome }).inc();
    }
}
