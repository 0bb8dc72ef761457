//! A span per HTTP request a service serves, continuing the caller's trace.

use tracing::Span;

use super::propagation::TraceHeaders;

/// Probes and scrapes, every few seconds from every kubelet and Prometheus: not traced.
const UNTRACED: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The request's span: `otel.name` is the method and the path with its variable parts
/// (ids, download tokens) replaced by `{}`, so that neither secrets nor unbounded values
/// reach logs or the collector.
pub(crate) fn request_span<B>(request: &http::Request<B>) -> Span {
    let path = request.uri().path();
    if UNTRACED.contains(&path) {
        return Span::none();
    }
    let route = route(path);
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    TraceHeaders::from_http(request.headers()).continue_in(&span);
    span
}

/// `/v1/jobs/5f0c.../events` -> `/v1/jobs/{}/events`.
fn route(path: &str) -> String {
    let kept = |segment: &str| {
        let word = segment.len() <= 32 && segment.bytes().all(|b| b.is_ascii_lowercase() || b"-_.".contains(&b));
        let short = segment.len() <= 3 && segment.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        word || short
    };
    path.split('/').map(|segment| if kept(segment) { segment } else { "{}" }).collect::<Vec<_>>().join("/")
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
    }
}
