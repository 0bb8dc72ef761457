//! The converter: consumes `media.uploaded`, transcodes to MP3 in-process with FFmpeg, and
//! publishes `media.progress` and `media.converted` or `media.failed`. It owns GridFS bucket
//! `audio` and never writes to PostgreSQL.

pub mod config;
pub mod metrics;
pub mod transcode;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use tunewire_service_runtime::config::ExposeSecret;

use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunewire_events::Bus;
use tunewire_events::topology::{CONVERTER_LIFECYCLE_QUEUE, CONVERTER_QUEUE};
use tunewire_media_store::{ATTEMPT_HEARTBEAT, ATTEMPT_STALE_AFTER, Bucket, MediaStore};
use tunewire_service_runtime::{Dependencies, HealthRoutes, check_with, http_error, startup};
use warp::Filter;

pub use config::Config;
use metrics::ConversionMetrics;
use worker::Worker;

/// Seconds in-flight work gets after SIGTERM (a conversion in flight gets this long; after it, its message is redelivered); the Kubernetes
/// manifests set `terminationGracePeriodSeconds` a little above it.
pub const SHUTDOWN_DEADLINE_S: u64 = 60;

pub struct Running {
    pub health_addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// Removes the MP3s of attempts whose converter died (see `tunewire_media_store::outputs`).
/// Every replica sweeps; a sweep removes an attempt only once, whoever runs it.
async fn sweep_stale_attempts(store: MediaStore, shutdown: CancellationToken) {
    loop {
        match store.sweep_stale_attempts(Bucket::Audio, ATTEMPT_STALE_AFTER).await {
            Ok(0) => {}
            Ok(swept) => tracing::info!(swept, "removed the output of attempts whose converter died"),
            Err(e) => tracing::warn!(error = %e, code = e.code(), "could not sweep dead attempts"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ATTEMPT_HEARTBEAT * 2) => {}
        }
    }
}

pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    transcode::init()?;
    let store = startup::wait_for("mongodb", startup::DEPENDENCY_PATIENCE, || {
        MediaStore::connect(config.mongodb_uri.expose_secret(), &config.mongodb_database_prefix)
    })
    .await?;
    let bus = Arc::new(Bus::new(config.amqp_url.expose_secret(), "converter"));
    let worker = Arc::new(Worker {
        store: store.clone(),
        max_duration_s: config.max_duration_s,
        time_limit: std::time::Duration::from_secs(config.time_limit_s),
        metrics: ConversionMetrics::default(),
    });

    let listener = tokio::net::TcpListener::bind(config.health_bind).await?;
    let health_addr = listener.local_addr()?;
    let dependencies = Dependencies::new()
        .required("rabbitmq", check_with(bus.clone(), |bus| async move { bus.status() }))
        .required("mongodb", check_with(store.clone(), |store| async move { store.ping().await }));
    let mut registry = Registry::default();
    bus.register_metrics(&mut registry);
    worker.metrics.register(&mut registry);
    let health = HealthRoutes::new(Arc::new(dependencies), registry);
    let server = tunewire_service_runtime::spawn_server(
        listener,
        health.routes().recover(http_error::recover),
        shutdown.clone(),
    );

    let sweeper = tokio::spawn(sweep_stale_attempts(store.clone(), shutdown.clone()));
    let concurrency = config.concurrency;
    let forgetter = worker.clone();
    let deletions_bus = bus.clone();
    let deletions_shutdown = shutdown.clone();
    let deletions = tokio::spawn(async move {
        let handler = move |msg| forgetter.clone().forget(msg);
        deletions_bus.consume(CONVERTER_LIFECYCLE_QUEUE, 16, handler, deletions_shutdown).await;
    });
    let task = tokio::spawn(async move {
        let handler = move |msg| worker.clone().handle(msg);
        bus.consume(CONVERTER_QUEUE, concurrency, handler, shutdown).await;
        let _ = deletions.await;
        let _ = sweeper.await;
        let _ = server.await;
    });
    Ok(Running { health_addr, task })
}
