//! `/healthz` (the process is alive), `/readyz` (its dependencies answer) and `/metrics`
//! (Prometheus text), plus the `healthcheck` subcommand that probes them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// One dependency check: `Ok` when it answers, `Err` saying what is wrong.
pub type Check = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Every check of one `/readyz` answers within this, together (they run at once). Below
/// the readiness probes' `timeoutSeconds` in the manifests (k8s/check.py holds them to it),
/// so a slow dependency reads as "not ready", never as a probe timing out.
pub const READINESS_DEADLINE_MS: u64 = 1500;

/// What a service's readiness depends on: "ready" means it can serve its inbound traffic.
pub trait Readiness: Send + Sync + 'static {
    /// Dependencies without which the service cannot serve what it is routed.
    fn checks(&self) -> Vec<(&'static str, Check)>;

    /// Dependencies whose absence delays work but does not stop the serving (the gateway
    /// keeps taking uploads while RabbitMQ is down: the outbox holds their events). A
    /// failure is a note in `/readyz` and a metric, and leaves the service ready.
    fn optional_checks(&self) -> Vec<(&'static str, Check)> {
        Vec::new()
    }

    /// Degradations worth telling an operator that do not make the service unready (an
    /// optional dependency missing or refusing us), shown in `/readyz` as `notes`.
    fn notes(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

type CheckFn = Box<dyn Fn() -> Check + Send + Sync>;
type NotesFn = Box<dyn Fn() -> Vec<(&'static str, String)> + Send + Sync>;

/// A service's readiness, dependency by dependency: what every service's `/readyz` is made of.
#[derive(Default)]
pub struct Dependencies {
    required: Vec<(&'static str, CheckFn)>,
    optional: Vec<(&'static str, CheckFn)>,
    notes: Option<NotesFn>,
}

impl Dependencies {
    pub fn new() -> Self {
        Self::default()
    }

    /// A dependency without which the service is not ready.
    pub fn required(mut self, name: &'static str, check: impl Fn() -> Check + Send + Sync + 'static) -> Self {
        self.required.push((name, Box::new(check)));
        self
    }

    /// A dependency whose absence delays work but leaves the service ready (see
    /// [`Readiness::optional_checks`]).
    pub fn optional(mut self, name: &'static str, check: impl Fn() -> Check + Send + Sync + 'static) -> Self {
        self.optional.push((name, Box::new(check)));
        self
    }

    /// Degradations to show in `/readyz` (see [`Readiness::notes`]).
    pub fn notes(mut self, notes: impl Fn() -> Vec<(&'static str, String)> + Send + Sync + 'static) -> Self {
        self.notes = Some(Box::new(notes));
        self
    }
}

impl Readiness for Dependencies {
    fn checks(&self) -> Vec<(&'static str, Check)> {
        self.required.iter().map(|(name, check)| (*name, check())).collect()
    }

    fn optional_checks(&self) -> Vec<(&'static str, Check)> {
        self.optional.iter().map(|(name, check)| (*name, check())).collect()
    }

    fn notes(&self) -> Vec<(&'static str, String)> {
        self.notes.as_ref().map(|notes| notes()).unwrap_or_default()
    }
}

/// A check that makes `call` on a clone of `handle` (a pool, a client) each time.
pub fn check_with<H, F, Fut, E>(handle: H, call: F) -> impl Fn() -> Check + Send + Sync + 'static
where
    H: Clone + Send + Sync + 'static,
    F: Fn(H) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    move || {
        let answer = call(handle.clone());
        Box::pin(async move { answer.await.map_err(|e| e.to_string()) })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabel {
    dependency: String,
}

#[derive(Clone)]
pub struct HealthRoutes {
    readiness: Arc<dyn Readiness>,
    registry: Arc<Mutex<Registry>>,
    dependency_up: Family<DependencyLabel, Gauge>,
}

impl HealthRoutes {
    /// Registers `dependency_up` (1 when the dependency answered the last `/readyz`, 0 when
    /// not) in `registry`, which `/metrics` serves.
    pub fn new(readiness: Arc<dyn Readiness>, mut registry: Registry) -> Self {
        let dependency_up = Family::<DependencyLabel, Gauge>::default();
        registry.register(
            "dependency_up",
            "Whether the dependency answered the last readiness check (1) or not (0)",
            dependency_up.clone(),
        );
        Self { readiness, registry: Arc::new(Mutex::new(registry)), dependency_up }
    }

    pub fn routes(
        &self,
    ) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static {
        let healthz =
            warp::path!("healthz").and(warp::get()).map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
        let (readiness, gauge) = (self.readiness.clone(), self.dependency_up.clone());
        let readyz = warp::path!("readyz").and(warp::get()).then(move || {
            let (readiness, gauge) = (readiness.clone(), gauge.clone());
            async move { ready_response(readiness.as_ref(), &gauge).await }
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

async fn run_checks(checks: Vec<(&'static str, Check)>) -> Vec<(&'static str, Result<(), String>)> {
    let deadline = Duration::from_millis(READINESS_DEADLINE_MS);
    futures_util::future::join_all(checks.into_iter().map(|(name, check)| async move {
        let outcome = tokio::time::timeout(deadline, check)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {READINESS_DEADLINE_MS} ms")));
        (name, outcome)
    }))
    .await
}

async fn ready_response(readiness: &dyn Readiness, gauge: &Family<DependencyLabel, Gauge>) -> warp::reply::Response {
    let (required, optional) =
        futures_util::future::join(run_checks(readiness.checks()), run_checks(readiness.optional_checks())).await;
    let mut report = serde_json::Map::new();
    let mut notes = serde_json::Map::new();
    let mut ready = true;
    for (name, outcome) in &required {
        if let Err(e) = outcome {
            ready = false;
            tracing::warn!(dependency = name, error = %e, "not ready");
        }
    }
    for (name, outcome) in required.iter().chain(&optional) {
        gauge.get_or_create(&DependencyLabel { dependency: name.to_string() }).set(i64::from(outcome.is_ok()));
        report.insert(name.to_string(), json!(outcome.as_ref().err().map_or("ok", String::as_str)));
    }
    for (name, outcome) in &optional {
        if let Err(e) = outcome {
            tracing::warn!(dependency = name, error = %e, "an optional dependency is down; still ready");
            notes.insert(name.to_string(), json!(format!("unavailable, work waits for it: {e}")));
        }
    }
    notes.extend(readiness.notes().into_iter().map(|(name, note)| (name.to_string(), json!(note))));
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
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
