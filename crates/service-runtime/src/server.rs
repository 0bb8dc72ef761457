//! Every service's HTTP server: warp's filters served by hyper with the limit warp's own
//! server lacks: at most `max_connections` are open at once (the rest wait in the kernel's
//! accept backlog). On shutdown open requests are finished.
//!
//! No header-read timeout yet: with hyper's (`header_read_timeout` and a timer), a
//! connection whose request was refused before its body was read was sometimes closed under
//! a client about to reuse it (the fault suite's bad-input scenario failed one run in two).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use warp::{Filter, Reply};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits { max_connections: 2048 };
}

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
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(Peer(remote));
                filtered.clone().call(request)
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(place);
            });
        }
        drop(listener);
        graceful.shutdown().await;
    })
}
