//! Auth: accounts (schema `auth`, argon2id hashes) and access tokens (EdDSA JWTs with `kid`,
//! `iss`, `aud`, `exp`, `role`), with the JWKS the gateway verifies them against. It never
//! sees media and never touches another service's tables.

pub mod accounts;
pub mod attempt_limits;
pub mod config;
pub mod hashing;
pub mod keys;
pub mod metrics;
mod routes;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use tunewire_service_runtime::config::ExposeSecret;

use prometheus_client::registry::Registry;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunewire_service_runtime::{Dependencies, HealthRoutes, http_error, postgres};
use warp::Filter;

pub use config::Config;

/// `tunewire-auth create-admin --email ADDRESS`, the password from `AUTH_ADMIN_PASSWORD` or
/// `AUTH_ADMIN_PASSWORD_FILE`.
pub async fn create_admin(config: &Config, email: &tunewire_contract::Email) -> anyhow::Result<()> {
    let password = config::ADMIN_PASSWORD.get_secret(&tunewire_service_runtime::config::Env)?;
    let db = PgPoolOptions::new().max_connections(1).connect(config.database_url.expose_secret()).await?;
    migrate(&db).await?;
    let id = accounts::provision_admin(&db, email, password.expose_secret()).await?;
    println!("admin {email} ready (id {id})");
    Ok(())
}

/// Seconds in-flight work gets after SIGTERM (requests are short); the Kubernetes
/// manifests set `terminationGracePeriodSeconds` a little above it.
pub const SHUTDOWN_DEADLINE_S: u64 = 10;

pub struct Running {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// This service's tables: schema `auth`.
pub const SCHEMA: postgres::Schema = postgres::Schema { name: "auth", migrations: || sqlx::migrate!("./migrations") };

pub async fn migrate(db: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    SCHEMA.migrate(db).await
}

/// Expired attempt counters are dropped once a minute, by every replica (it is one DELETE).
async fn prune_counters(limits: Arc<attempt_limits::AttemptLimits>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = limits.prune().await {
            tracing::warn!(error = %e, "pruning attempt counters failed; the next round tries again");
        }
    }
}

pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let db = SCHEMA.connect(config.database_url.expose_secret(), 10).await?;
    let keys = Arc::new(keys::SigningKeys::load(
        config.signing_key_pem.as_ref().map(tunewire_service_runtime::config::ExposeSecret::expose_secret),
        config.previous_signing_key_pem.as_ref().map(tunewire_service_runtime::config::ExposeSecret::expose_secret),
    )?);
    if let Some((email, password)) = &config.admin {
        let id = accounts::provision_admin(&db, email, password.expose_secret()).await?;
        tracing::info!(user_id = %id, "admin account provisioned from AUTH_ADMIN_EMAIL");
    }
    let attempt_limits = Arc::new(attempt_limits::AttemptLimits::new(db.clone(), config.attempt_limits));
    let slots = config.hash_slots();
    tracing::info!(slots, queue = config.hash_queue, "password hashing");
    let mut registry = Registry::default();
    let metrics = Arc::new(metrics::AuthMetrics::register(&mut registry));
    let state = routes::State {
        db: db.clone(),
        keys,
        config: Arc::new(config.clone()),
        attempt_limits: attempt_limits.clone(),
        hashing: Arc::new(hashing::Hashing::new(slots, config.hash_queue, metrics.hash_duration.clone())),
        metrics,
    };
    tokio::spawn(prune_counters(attempt_limits, shutdown.clone()));
    let health = HealthRoutes::new(Arc::new(Dependencies::new().required("postgres", postgres::check(&db))), registry);
    let api = routes::routes(state).or(health.routes()).recover(http_error::recover);
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "auth listening");
    let task = tunewire_service_runtime::spawn_server(listener, api, shutdown);
    Ok(Running { addr, task })
}
