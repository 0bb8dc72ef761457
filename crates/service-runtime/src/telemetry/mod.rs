//! Structured logs, one line per event: JSON when `LOG_FORMAT=json` (production), compact
//! text otherwise. Level filter from `RUST_LOG`.
//!
//! Traces: every span is an OpenTelemetry span, so a trace id exists (and reaches the next
//! service, see `propagation`) whether or not anything collects them; they are exported over
//! OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, with the SDK's other standard variables (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`...).

pub(crate) mod http;
pub mod propagation;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt as _, FilterFn, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{Env, Setting};

pub use propagation::TraceHeaders;

const LOG_FILTER: Setting = Setting::new("RUST_LOG", "info", "log level filter (`tunewire_gateway=debug,info`)");
const LOG_FORMAT: Setting = Setting::new("LOG_FORMAT", "text", "`json` for one JSON object per line");
const OTLP_ENDPOINT: Setting = Setting::optional(
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "an OTLP/HTTP (protobuf) collector (`http://otel-collector:4318`) that receives the spans; unset, none leave the process. The SDK's other `OTEL_*` variables apply",
);
const OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

/// What every service reads for its logs and traces.
pub const SETTINGS: &[Setting] = &[LOG_FILTER, LOG_FORMAT, OTLP_ENDPOINT];

/// The longest the last spans may take to leave at exit: within the grace period's margin
/// over the drain deadline (k8s/check.py's `GRACE_MARGIN_S`).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps the span exporter alive; dropping it sends what is still buffered.
#[must_use = "spans still buffered are sent when this is dropped: keep it until the process ends"]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(error = %e, "the last spans could not be sent");
        }
    }
}

fn set(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Whether the standard variables ask for spans to be exported.
fn export_asked() -> bool {
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none");
    !disabled && (set(OTLP_ENDPOINT.name).is_some() || set(OTLP_TRACES_ENDPOINT).is_some())
}

fn tracer_provider(service: &'static str) -> (SdkTracerProvider, Option<String>) {
    let mut resource =
        Resource::builder().with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    // The default detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours is the
    // fallback.
    let named = set("OTEL_SERVICE_NAME").is_some()
        || set("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|a| a.split(',').any(|kv| kv.trim().starts_with("service.name=")));
    if !named {
        resource = resource.with_service_name(service);
    }
    let builder = SdkTracerProvider::builder().with_resource(resource.build());
    if !export_asked() {
        return (builder.build(), None);
    }
    let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(other) = protocol.filter(|p| p != "http/protobuf") {
        return (builder.build(), Some(format!("OTLP protocol {other:?}: only http/protobuf is built in")));
    }
    match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
        Ok(exporter) => (builder.with_batch_exporter(exporter).build(), None),
        Err(e) => (builder.build(), Some(e.to_string())),
    }
}

/// The pipeline's own spans are always made, whatever `RUST_LOG` says of lines: a service
/// that logs only warnings still hands its trace on, and its warnings still name the trace.
fn our_spans() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    filter_fn(|metadata| metadata.is_span() && metadata.target().starts_with("tunewire"))
        .with_max_level_hint(tracing::level_filters::LevelFilter::INFO)
}

/// Installs the process's logger and tracer. A second call (tests start several services in
/// one process) keeps the first.
pub fn init(service: &'static str) -> Telemetry {
    let directives = LOG_FILTER.get::<String>(&Env).unwrap_or_else(|_| "info".into());
    let filter = || EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = LOG_FORMAT.get::<String>(&Env).is_ok_and(|v| v == "json");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (provider, export_error) = tracer_provider(service);
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_tracked_inactivity(false)
        .with_filter(filter().or(our_spans()));
    let lines = |json: bool| {
        let layer = tracing_subscriber::fmt::layer().with_target(false);
        let layer = if json {
            layer.json().flatten_event(true).with_current_span(false).boxed()
        } else {
            layer.compact().boxed()
        };
        layer.with_filter(filter().or(our_spans()))
    };
    let _ = tracing_subscriber::registry().with(spans).with(lines(json)).try_init();
    tracing::info!(service, version = env!("CARGO_PKG_VERSION"), exporting_spans = export_asked(), "starting");
    if let Some(error) = export_error {
        tracing::warn!(%error, "spans will not be exported: the OTLP exporter could not be set up");
    }
    Telemetry { provider }
}
