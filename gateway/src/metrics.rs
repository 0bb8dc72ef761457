//! The gateway's Prometheus metrics: requests by route and status, latency, bytes in and
//! out, uploads in flight. Routes are labelled by template (`/v1/jobs/{id}`), never by the
//! raw path, so the series stay few.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: &'static str,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UploadLabels {
    /// `multipart` (`POST /v1/uploads`) or `tus` (`/v1/tus/`, from its creation).
    pub protocol: &'static str,
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: LatencyFamily,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub uploads_in_flight: Gauge,
    pub upload_duration: Family<UploadLabels, Histogram, fn() -> Histogram>,
    pub tus_uploads_open: Gauge,
    pub outbox_depth: Gauge,
    pub outbox_oldest_age: Gauge<f64, AtomicU64>,
    pub outbox_relay_failures: Counter,
}

fn upload_histogram() -> Histogram {
    // 0.1 s to ~1.8 h: a resumable upload may be resumed hours later.
    Histogram::new(exponential_buckets(0.1, 2.0, 17))
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            uploads_in_flight: Gauge::default(),
            upload_duration: Family::new_with_constructor(upload_histogram as fn() -> Histogram),
            tus_uploads_open: Gauge::default(),
            outbox_depth: Gauge::default(),
            outbox_oldest_age: Gauge::default(),
            outbox_relay_failures: Counter::default(),
        };
        registry.register("http_requests", "HTTP requests answered", metrics.requests.clone());
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer (to the first byte of a streamed body)",
            Unit::Seconds,
            metrics.latency.clone(),
        );
        registry.register_with_unit("upload", "Upload bytes received", Unit::Bytes, metrics.bytes_in.clone());
        registry.register_with_unit("download", "Download bytes sent", Unit::Bytes, metrics.bytes_out.clone());
        registry.register("uploads_in_flight", "Uploads being received", metrics.uploads_in_flight.clone());
        registry.register_with_unit(
            "upload_duration",
            "From an upload's first byte awaited (a resumable one's creation) to its job, for uploads that made one",
            Unit::Seconds,
            metrics.upload_duration.clone(),
        );
        registry.register(
            "tus_uploads_open",
            "Resumable uploads begun and neither finished nor expired, all gateways' (from PostgreSQL)",
            metrics.tus_uploads_open.clone(),
        );
        registry.register(
            "outbox_events",
            "Events committed and not yet confirmed by RabbitMQ",
            metrics.outbox_depth.clone(),
        );
        registry.register_with_unit(
            "outbox_oldest_event_age",
            "Age of the oldest event waiting in the outbox",
            Unit::Seconds,
            metrics.outbox_oldest_age.clone(),
        );
        registry.register(
            "outbox_relay_failures",
            "Relay rounds that failed (RabbitMQ or PostgreSQL unavailable, a confirm timed out)",
            metrics.outbox_relay_failures.clone(),
        );
        metrics
    }

    pub fn observe(&self, info: &warp::log::Info<'_>) {
        let route = route_template(info.path());
        let method = info.method().to_string();
        self.requests
            .get_or_create(&RequestLabels { method: method.clone(), route, status: info.status().as_u16() })
            .inc();
        self.latency.get_or_create(&RouteLabels { method, route }).observe(info.elapsed().as_secs_f64());
    }
}

/// The documented route `path` matches (`/v1/jobs/{id}` for `/v1/jobs/8e0c...`), a health
/// route, or `other`.
pub fn route_template(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let matches = |route: &&crate::openapi::RouteTemplate| {
        route.segments.len() == segments.len()
            && route.segments.iter().zip(&segments).all(|(part, segment)| part.as_deref().is_none_or(|p| p == *segment))
    };
    if let Some(route) = crate::openapi::ROUTE_TEMPLATES.iter().find(matches) {
        return route.template.as_str();
    }
    match segments.as_slice() {
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["metrics"] => "/metrics",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_templates() {
        assert_eq!(route_template("/v1/jobs/8e0c5f9e-7a9b-4c1e-9d3a-0b1c2d3e4f50"), "/v1/jobs/{id}");
        assert_eq!(route_template("/v1/jobs/x/events"), "/v1/jobs/{id}/events");
        assert_eq!(route_template("/v1/downloads/abc.def"), "/v1/downloads/{token}");
        assert_eq!(route_template("/v1/auth/login"), "/v1/auth/login");
        assert_eq!(route_template("/v1/jobs"), "/v1/jobs");
        assert_eq!(route_template("/v1/tus/8e0c5f9e-7a9b-4c1e-9d3a-0b1c2d3e4f50"), "/v1/tus/{id}");
        assert_eq!(route_template("/v1/tus/"), "/v1/tus/");
        assert_eq!(route_template("/readyz"), "/readyz");
        assert_eq!(route_template("/wp-admin/login.php"), "other");
        assert_eq!(route_template("/v1/jobs/x/y/z"), "other");
    }
}
