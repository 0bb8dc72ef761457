//! Every service's HTTP server: warp's filters served by hyper with the limits warp's own
//! server lacks: at most `max_connections` are open at once (the rest wait in the kernel's
//! accept backlog); a new connection must have its first request's head in within
//! `head_timeout` (a client trickling headers, or sending nothing, holds a place that long at
//! most); a kept-alive connection idle for `idle_timeout` is closed. On shutdown open requests
//! are finished.
//!
//! Kept here rather than with hyper's `header_read_timeout`, whose clock also runs while a
//! kept-alive connection is idle: a short one closed idle connections under clients about to
//! reuse them. `idle_timeout` is longer than clients keep idle connections (reqwest 90 s,
//! nginx 60 s), so they give them up first. A request being handled, its response included,
//! has no deadline here: uploads have their own idle timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::Instrument as _;
use warp::{Filter, Reply};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    pub const DEFAULT: Limits =
        Limits { max_connections: 2048, head_timeout: Duration::from_secs(15), idle_timeout: Duration::from_secs(120) };
}

/// What a connection is doing, for its deadlines.
struct Activity {
    opened: Instant,
    /// Requests being handled, from their head until their response is sent.
    handling: AtomicUsize,
    /// Whether a request has come at all.
    served: AtomicBool,
    /// When the last response was sent (milliseconds since `opened`).
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            handling: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
        }
    }

    fn overdue(&self, limits: &Limits) -> bool {
        if self.handling.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let now = self.opened.elapsed();
        if self.served.load(Ordering::SeqCst) {
            now.saturating_sub(Duration::from_millis(self.idle_since.load(Ordering::SeqCst))) > limits.idle_timeout
        } else {
            now > limits.head_timeout
        }
    }
}

/// A response body that keeps its request counted as handled until it is sent (or dropped):
/// a connection streaming a download or events is not idle.
struct Guarded<B> {
    body: B,
    _handling: Handling,
}

impl<B: http_body::Body + Unpin> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Counts a request as handled from its head until its response is sent.
struct Handling(Arc<Activity>);

impl Handling {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.handling.fetch_add(1, Ordering::SeqCst);
        activity.served.store(true, Ordering::SeqCst);
        Self(activity.clone())
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        if self.0.handling.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle_since.store(self.0.opened.elapsed().as_millis() as u64, Ordering::SeqCst);
        }
    }
}

/// How often a connection's deadlines are checked: they are kept to within this.
const DEADLINE_CHECK_EVERY: Duration = Duration::from_millis(500);

/// The address a request came from (the TCP peer), for [`peer`].
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

/// The TCP peer of the request.
pub fn peer() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<Peer>().map(|peer: Option<Peer>| peer.map(|p| p.0))
}

/// Serves `routes` on `listener` until `shutdown` is cancelled, finishing open requests.
pub fn spawn_server<F>(
    listener: tokio::net::TcpListener,
    routes: F,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    F: Filter<Error = Infallible> + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    spawn_server_with(listener, routes, Limits::DEFAULT, shutdown)
}

pub fn spawn_server_with<F>(
    listener: tokio::net::TcpListener,
    routes: F,
    limits: Limits,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    F: Filter<Error = Infallible> + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    tokio::spawn(async move {
        let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let graceful = GracefulShutdown::new();
        loop {
            // The semaphore is never closed: acquiring only waits for a connection to end.
            let place = tokio::select! {
                _ = shutdown.cancelled() => break,
                place = connections.clone().acquire_owned() => place.ok(),
            };
            let (stream, remote) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait for some to be given back.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let filtered = warp::service(routes.clone());
            let activity = Arc::new(Activity::new());
            let handled = activity.clone();
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(Peer(remote));
                let handling = Handling::begin(&handled);
                let traced = crate::telemetry::http::request_span(&request);
                let response = traced.span.in_scope(|| filtered.clone().call(request));
                let span = traced.span.clone();
                async move {
                    let response = response.await;
                    if let Ok(response) = &response {
                        traced.answered(response);
                    }
                    response.map(|r| r.map(|body| Guarded { body, _handling: handling }))
                }
                .instrument(span)
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                let overdue = async {
                    loop {
                        tokio::time::sleep(DEADLINE_CHECK_EVERY).await;
                        if activity.overdue(&limits) {
                            return;
                        }
                    }
                };
                tokio::select! {
                    ended = connection => if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    },
                    // Dropping the connection closes the socket.
                    _ = overdue => tracing::debug!(%remote, "connection closed: no request head in time, or idle too long"),
                }
                drop(place);
            });
        }
        drop(listener);
        graceful.shutdown().await;
    })
}
