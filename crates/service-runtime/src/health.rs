//! `/healthz` (the process is alive), `/readyz` (its dependencies answer) and `/metrics`
//! (Prometheus text), plus the `healthcheck` subcommand that probes them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde_json::json;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// One dependency check: `Ok` when it answers, `Err` saying what is wrong.
pub type Check = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What a service's readiness depends on.
pub trait Readiness: Send + Sync + 'static {
    fn checks(&self) -> Vec<(&'static str, Check)>;

    /// Degradations worth telling an operator that do not make the service unready (an
    /// optional dependency missing or refusing us), shown in `/readyz` as `notes`.
    fn notes(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

#[derive(Clone)]
pub struct HealthRoutes {
    readiness: Arc<dyn Readiness>,
    registry: Arc<Mutex<Registry>>,
}

impl HealthRoutes {
    pub fn new(readiness: Arc<dyn Readiness>, registry: Registry) -> Self {
        Self { readiness, registry: Arc::new(Mutex::new(registry)) }
    }

    pub fn routes(
        &self,
    ) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static {
        let healthz =
            warp::path!("healthz").and(warp::get()).map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
        let readiness = self.readiness.clone();
        let readyz = warp::path!("readyz").and(warp::get()).then(move || {
            let readiness = readiness.clone();
            async move { ready_response(readiness.as_ref()).await }
        });
        let registry = self.registry.clone();
        let metrics = warp::path!("metrics").and(warp::get()).map(move || {
            let mut text = String::new();
            let encoded = registry
                .lock()
                .map_err(|_| std::fmt::Error)
                .and_then(|r| prometheus_client::encoding::text::encode(&mut text, &r));
            match encoded {
                Ok(()) => warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response(),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        });
        healthz.or(readyz).unify().or(metrics).unify()
    }
}

async fn ready_response(readiness: &dyn Readiness) -> warp::reply::Response {
    let mut report = serde_json::Map::new();
    let mut ready = true;
    for (name, check) in readiness.checks() {
        let outcome = tokio::time::timeout(Duration::from_secs(3), check)
            .await
            .unwrap_or_else(|_| Err("no answer within 3 s".into()));
        if let Err(e) = &outcome {
            ready = false;
            tracing::warn!(dependency = name, error = %e, "not ready");
        }
        report.insert(name.into(), json!(outcome.err().unwrap_or_else(|| "ok".into())));
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let notes: serde_json::Map<String, serde_json::Value> =
        readiness.notes().into_iter().map(|(name, note)| (name.to_string(), json!(note))).collect();
    let body = json!({"status": if ready { "ready" } else { "not ready" }, "checks": report, "notes": notes});
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// The `healthcheck` subcommand (for container probes without curl): 0 when `/healthz` on
/// the given local port answers 200, 1 otherwise.
pub async fn healthcheck(port: u16) -> std::process::ExitCode {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build();
    let outcome = match client {
        Ok(client) => client.get(&url).send().await.map(|r| r.status()),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(status) if status.is_success() => std::process::ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{url} answered {status}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves `routes` on `listener` until `shutdown` is cancelled, finishing open requests.
pub fn spawn_server<F>(
    listener: tokio::net::TcpListener,
    routes: F,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    F: Filter<Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    tokio::spawn(warp::serve(routes).incoming(listener).graceful(shutdown.cancelled_owned()).run())
}
