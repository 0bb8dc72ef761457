//! The gateway: the only public door. Accepts uploads into GridFS bucket `uploads`, records
//! jobs and their events in PostgreSQL (schema `gateway`, transactional outbox), relays the
//! outbox to RabbitMQ, follows the pipeline's events to keep job state, serves downloads and
//! fronts auth and search. It never transcodes and never writes another service's tables.

pub mod caller;
pub mod config;
pub mod download;
pub mod job_events;
pub mod job_feed;
pub mod job_routes;
pub mod job_state;
pub mod job_view;
pub mod jobs;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod places;
pub mod probe;
pub mod proxy;
pub mod quotas;
pub mod retention;
pub mod routes;
pub mod session;
pub mod state;
pub mod tus;
pub mod upload;
pub mod upload_admission;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use tunewire_service_runtime::config::ExposeSecret;

use prometheus_client::registry::Registry;
use sqlx::postgres::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunewire_events::Bus;
use tunewire_events::topology::GATEWAY_QUEUE;
use tunewire_media_store::MediaStore;
use tunewire_service_runtime::{Dependencies, HealthRoutes, Workers, check_with, http_error, postgres, startup};
use tunewire_signed_links::LinkSigner;
use warp::Filter;

pub use config::Config;

/// This service's tables: schema `gateway`.
pub const SCHEMA: postgres::Schema =
    postgres::Schema { name: "gateway", migrations: || sqlx::migrate!("./migrations") };

pub async fn migrate(db: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    SCHEMA.migrate(db).await
}

/// Seconds in-flight work gets after SIGTERM (uploads in flight get this long to finish); the Kubernetes
/// manifests set `terminationGracePeriodSeconds` a little above it.
pub const SHUTDOWN_DEADLINE_S: u64 = 25;

pub struct Running {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let db = SCHEMA.connect(config.database_url.expose_secret(), 20).await?;
    let store = startup::wait_for("mongodb", startup::DEPENDENCY_PATIENCE, || {
        MediaStore::connect(config.mongodb_uri.expose_secret(), &config.mongodb_database_prefix)
    })
    .await?;
    let bus = Arc::new(Bus::new(config.amqp_url.expose_secret(), "gateway"));
    let http = reqwest::Client::builder().build()?;
    let verifier =
        caller::TokenVerifier::new(&config.auth_url, &config.token_issuer, &config.token_audience, http.clone());
    let links = LinkSigner::new(
        config.link_secret.expose_secret().as_bytes().to_vec(),
        config.link_secret_previous.as_ref().map(|s| s.expose_secret().as_bytes().to_vec()),
    );
    let outbox_wake = Arc::new(Notify::new());
    let job_events = Arc::new(job_events::JobEvents::new(config.stream_limits));
    let job_feed = Arc::new(job_feed::JobFeed::default());
    let mut registry = Registry::default();
    bus.register_metrics(&mut registry);
    let metrics = Arc::new(metrics::Metrics::register(&mut registry));
    let state = state::State {
        config: Arc::new(config.clone()),
        db: db.clone(),
        store: store.clone(),
        verifier: verifier.clone(),
        links,
        http,
        outbox_wake: outbox_wake.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        uploads: Arc::new(upload_admission::UploadAdmission::new(config.upload_limits)),
        job_events: job_events.clone(),
        job_feed: job_feed.clone(),
        drains: Arc::new(tokio::sync::Semaphore::new(upload::DRAINS_AT_ONCE)),
        probes: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map(std::num::NonZero::get).unwrap_or(2),
        )),
    };
    let relay_metrics = metrics.clone();
    let tus_metrics = metrics.clone();
    let workers = Workers::new();
    // Ready means uploads and downloads can be served: PostgreSQL and MongoDB. RabbitMQ down
    // only delays events (the outbox holds them), so it is a note, not a reason to leave the
    // Service.
    let dependencies = Dependencies::new()
        .required("postgres", postgres::check(&db))
        .required("mongodb", check_with(store.clone(), |store| async move { store.ping().await }))
        .optional("rabbitmq", check_with(bus.clone(), |bus| async move { bus.status() }))
        .notes({
            let workers = workers.clone();
            move || workers.notes()
        });
    let health = HealthRoutes::new(Arc::new(dependencies), registry);
    let api = routes::routes(state)
        .or(health.routes())
        .unify()
        .or(web::routes())
        .unify()
        .recover(http_error::recover)
        .with(warp::log::custom(move |info| metrics.observe(&info)));
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gateway listening");
    let server = tunewire_service_runtime::spawn_server(listener, api, shutdown.clone());
    tokio::spawn(verifier.clone().follow_revocations(shutdown.clone()));
    let (poll_db, poll_shutdown) = (db.clone(), shutdown.clone());
    tokio::spawn(async move { job_events.poll(poll_db, poll_shutdown).await });
    let (poll_db, poll_shutdown) = (db.clone(), shutdown.clone());
    tokio::spawn(async move { job_feed.poll(poll_db, poll_shutdown).await });
    tokio::spawn(tus::record::measure_open(db.clone(), tus_metrics, shutdown.clone()));
    let job_wake = outbox_wake.clone();
    let relay = {
        let (db, bus, shutdown) = (db.clone(), bus.clone(), shutdown.clone());
        workers.spawn("outbox_relay", shutdown.clone(), move |status| {
            outbox::run((db.clone(), bus.clone()), outbox_wake.clone(), relay_metrics.clone(), status, shutdown.clone())
        })
    };
    let retention = {
        let (db, store, policy, shutdown) = (db.clone(), store.clone(), config.retention, shutdown.clone());
        workers.spawn("retention", shutdown.clone(), move |status| {
            retention::run(db.clone(), store.clone(), policy, status, shutdown.clone())
        })
    };
    let task = tokio::spawn(async move {
        let handler = move |msg| job_state::handle(db.clone(), store.clone(), job_wake.clone(), msg);
        bus.consume(GATEWAY_QUEUE, 32, handler, shutdown).await;
        let _ = relay.await;
        let _ = retention.await;
        let _ = server.await;
    });
    Ok(Running { addr, task })
}
