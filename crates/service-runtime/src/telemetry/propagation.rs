//! W3C trace context (`traceparent`, `tracestate`) from one service to the next: in HTTP
//! headers, in the gateway's outbox rows, in AMQP message headers. A span that continues a
//! context records its trace id in its `trace_id` field, so that every log line inside it
//! names the trace.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The spec lets a hop drop a `tracestate` it will not carry; strangers send these.
const TRACESTATE_MAX: usize = 512;

/// A trace context as it travels: both values as W3C writes them, absent when there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// The context of `span`, to hand to the next hop (empty without a tracer installed).
    pub fn of(span: &Span) -> Self {
        let context = span.context();
        let mut headers = Self::default();
        if context.span().span_context().is_valid() {
            opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut headers));
        }
        headers
    }

    /// The context of the span this code runs in.
    pub fn current() -> Self {
        Self::of(&Span::current())
    }

    /// What a request carries; values that are not text are ignored.
    pub fn from_http(headers: &http::HeaderMap) -> Self {
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Self::from_parts(text(TRACEPARENT), text(TRACESTATE))
    }

    pub fn from_parts(traceparent: Option<String>, tracestate: Option<String>) -> Self {
        let tracestate = tracestate.filter(|s| !s.is_empty() && s.len() <= TRACESTATE_MAX);
        Self { traceparent: traceparent.filter(|s| !s.is_empty()), tracestate }
    }

    /// The headers to send, as (name, value).
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [(TRACEPARENT, &self.traceparent), (TRACESTATE, &self.tracestate)]
            .into_iter()
            .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
    }

    /// The headers for an outgoing request.
    pub fn http(&self) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for (name, value) in self.pairs() {
            if let Ok(value) = http::HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        headers
    }

    /// Makes `span` (created, not yet entered) continue this context, and records the trace
    /// id in its `trace_id` field. A missing or malformed context starts a new trace.
    pub fn continue_in(&self, span: &Span) {
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(self));
        if parent.span().span_context().is_valid() {
            // Fails only without a tracer installed, when there is nothing to continue.
            let _ = span.set_parent(parent);
        }
        record_trace_id(span);
    }

    /// Links `span` to this context: work that began in another trace (a resumable upload's
    /// creation) and that `span` carries on.
    pub fn link_from(&self, span: &Span) {
        let earlier = opentelemetry::global::get_text_map_propagator(|p| p.extract(self));
        let earlier = earlier.span().span_context().clone();
        // A creation that carried the whole upload finishes in its own span: no link to itself.
        if earlier.span_id() != span.context().span().span_context().span_id() {
            span.add_link(earlier);
        }
    }
}

/// Writes `span`'s trace id into its `trace_id` field (declared `Empty` where it is made).
pub fn record_trace_id(span: &Span) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
    }
}

impl Extractor for TraceHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.pairs().map(|(name, _)| name).collect()
    }
}

impl Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE => self.tracestate = Some(value).filter(|s| !s.is_empty()),
            _ => {}
        }
    }
}

/// `tokio::task::spawn_blocking` in the caller's span: FFmpeg, argon2 and tantivy work on
/// another thread stays in the trace and its log lines keep the job and trace ids.
pub fn spawn_blocking<F, R>(work: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = Span::current();
    #[allow(clippy::disallowed_methods)]
    tokio::task::spawn_blocking(move || span.in_scope(work))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Runs `f` under a subscriber with an OpenTelemetry layer (no exporter), as services do.
    fn traced<T>(f: impl FnOnce() -> T) -> T {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f)
    }

    #[test]
    fn a_context_is_continued_and_handed_on_with_a_new_span_id() {
        let incoming = TraceHeaders::from_parts(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            Some("vendor=opaque".into()),
        );
        let outgoing = traced(|| {
            let span = tracing::info_span!("work", trace_id = tracing::field::Empty);
            incoming.continue_in(&span);
            TraceHeaders::of(&span)
        });
        let traceparent = outgoing.traceparent.unwrap_or_default();
        assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{traceparent}");
        assert!(!traceparent.contains("00f067aa0ba902b7"), "the next hop's parent is this span, not the caller's");
        assert_eq!(outgoing.tracestate.as_deref(), Some("vendor=opaque"));
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        let incoming = TraceHeaders::from_parts(Some("00-not-a-trace-01".into()), None);
        let outgoing = traced(|| {
            let span = tracing::info_span!("work", trace_id = tracing::field::Empty);
            incoming.continue_in(&span);
            TraceHeaders::of(&span)
        });
        let traceparent = outgoing.traceparent.unwrap_or_default();
        assert_eq!(traceparent.len(), 55, "a fresh, valid context: {traceparent}");
    }

    #[test]
    fn without_a_tracer_there_is_nothing_to_hand_on() {
        let span = tracing::info_span!("work");
        assert_eq!(TraceHeaders::of(&span), TraceHeaders::default());
    }

    #[test]
    fn a_stranger_s_long_tracestate_is_dropped_and_blank_values_are_none() {
        let long = "k=".to_string() + &"v".repeat(TRACESTATE_MAX);
        let headers = TraceHeaders::from_parts(Some(String::new()), Some(long));
        assert_eq!(headers, TraceHeaders::default());
        assert_eq!(headers.pairs().count(), 0);
    }
}
