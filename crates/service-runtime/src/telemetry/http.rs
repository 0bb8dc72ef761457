//! A span per HTTP request a service serves, continuing the caller's trace.

use opentelemetry::trace::TraceContextExt as _;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::propagation::TraceHeaders;

/// Probes and scrapes, every few seconds from every kubelet and Prometheus: not traced.
const UNTRACED: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// A request's span, with what it is named after.
pub(crate) struct RequestSpan {
    pub(crate) span: Span,
    method: &'static str,
    route: String,
}

/// The request's span: `otel.name` is the method and the path with its variable parts
/// (ids, download tokens) replaced by `{}`, so that neither secrets nor unbounded values
/// reach logs or the collector.
pub(crate) fn request_span<B>(request: &http::Request<B>) -> RequestSpan {
    let path = request.uri().path();
    let method = method(request.method());
    if UNTRACED.contains(&path.trim_end_matches('/')) {
        return RequestSpan { span: Span::none(), method, route: String::new() };
    }
    let route = route(path);
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    TraceHeaders::from_http(request.headers()).continue_in(&span);
    RequestSpan { span, method, route }
}

/// A path that matched no route: its span is named this, so that strangers' made-up paths do
/// not each make a span name of their own.
pub(crate) const UNMATCHED: &str = "unmatched";

/// Put on a response by `http_error::recover` when no route took the request (as opposed to a
/// route answering 404 for a job that is not there).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unmatched;

/// The most segments a route keeps; the rest are `...`.
const MAX_SEGMENTS: usize = 8;

/// The standard methods by name; any other (a stranger may send a long one) is `_OTHER`, as
/// OpenTelemetry's HTTP conventions say.
fn method(method: &http::Method) -> &'static str {
    const KNOWN: [http::Method; 9] = [
        http::Method::GET,
        http::Method::HEAD,
        http::Method::POST,
        http::Method::PUT,
        http::Method::PATCH,
        http::Method::DELETE,
        http::Method::OPTIONS,
        http::Method::TRACE,
        http::Method::CONNECT,
    ];
    KNOWN.iter().find(|known| *known == method).map_or("_OTHER", http::Method::as_str)
}

impl RequestSpan {
    /// Records, once answered, the route that took the request; a request no route took
    /// gets its span renamed.
    pub(crate) fn answered<B>(&self, response: &http::Response<B>) {
        let span = &self.span;
        span.record("http.response.status_code", response.status().as_u16());
        if response.extensions().get::<Unmatched>().is_none() {
            span.record("http.route", self.route.as_str());
            return;
        }
        let name = format!("{} {UNMATCHED}", self.method);
        // The OpenTelemetry span is already started (its trace id was read): renamed through it.
        span.context().span().update_name(name.clone());
        span.record("otel.name", name);
        span.record("http.route", UNMATCHED);
    }
}

/// `/v1/jobs/5f0c.../events` -> `/v1/jobs/{}/events`.
fn route(path: &str) -> String {
    let kept = |segment: &str| {
        let word = segment.len() <= 32 && segment.bytes().all(|b| b.is_ascii_lowercase() || b"-_.".contains(&b));
        let short = segment.len() <= 3 && segment.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        word || short
    };
    let mut segments: Vec<&str> =
        path.split('/').take(MAX_SEGMENTS + 1).map(|segment| if kept(segment) { segment } else { "{}" }).collect();
    if path.split('/').nth(MAX_SEGMENTS + 1).is_some() {
        segments.push("...");
    }
    segments.join("/")
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn routes_keep_words_and_hide_ids_and_tokens() {
        assert_eq!(route("/v1/jobs/0b6e4a70-1f7e-4f5e-9a53-5d2b8f0c1d2e/events"), "/v1/jobs/{}/events");
        assert_eq!(route("/d/eyJqb2IiOiJ4In0.c2lnbmF0dXJl/song.mp3"), "/d/{}/{}");
        assert_eq!(route("/.well-known/jwks.json"), "/.well-known/jwks.json");
        assert_eq!(route("/v1/tus/AbC123"), "/v1/tus/{}");
        assert_eq!(route(&"/a".repeat(1000)), "/a/a/a/a/a/a/a/a/...");
    }

    #[test]
    fn methods_outside_the_standard_ones_are_other() {
        assert_eq!(super::method(&http::Method::PATCH), "PATCH");
        let made_up = http::Method::from_bytes(&[b'X'; 4096]).unwrap();
        assert_eq!(super::method(&made_up), "_OTHER");
    }
}
