//! What every request handler shares: configuration, clients, limits and the wake-ups of
//! the background workers.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tunewire_media_store::MediaStore;
use tunewire_signed_links::LinkSigner;

use crate::caller::TokenVerifier;
use crate::config::Config;
use crate::job_events;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct State {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub store: MediaStore,
    pub verifier: Arc<TokenVerifier>,
    pub links: LinkSigner,
    pub http: reqwest::Client,
    pub outbox_wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub uploads: Arc<crate::upload_admission::UploadAdmission>,
    pub job_events: Arc<job_events::JobEvents>,
    pub job_feed: Arc<crate::job_feed::JobFeed>,
    /// Refused uploads whose bodies are being drained.
    pub drains: Arc<tokio::sync::Semaphore>,
    /// Probes running at once.
    pub probes: Arc<tokio::sync::Semaphore>,
}
