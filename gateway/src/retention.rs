//! The retention sweep: originals and MP3s older than their configured age are removed from
//! GridFS; jobs whose MP3 went are `expired` (and `media.expired` goes out). It works from
//! GridFS's own upload dates, so files no job points to any more are removed too; the
//! original of a job still queued or converting is kept. Every replica may sweep: removing a
//! removed file is a no-op.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tunewire_media_store::{Bucket, MediaStore, StoreError};
use tunewire_service_runtime::WorkerStatus;

use crate::jobs;

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub originals: Duration,
    pub outputs: Duration,
    pub every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Files removed per bucket and sweep; the next sweep takes the rest.
const BATCH: i64 = 500;

pub async fn sweep(db: &PgPool, store: &MediaStore, policy: &Policy) -> Result<(usize, usize), SweepError> {
    let now = chrono::Utc::now();
    let age = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let old = store.stored_before(Bucket::Uploads, now - age(policy.originals), BATCH).await?;
    let ids: Vec<String> = old.iter().map(std::string::ToString::to_string).collect();
    let removable = jobs::removable_sources(db, &ids).await?;
    let originals: Vec<_> = old.into_iter().filter(|id| removable.contains(&id.to_string())).collect();
    for id in &originals {
        store.delete(Bucket::Uploads, id).await?;
    }
    jobs::sources_removed(db, &removable).await?;

    let outputs = store.stored_before(Bucket::Audio, now - age(policy.outputs), BATCH).await?;
    let ids: Vec<String> = outputs.iter().map(std::string::ToString::to_string).collect();
    // Expired first, so a download in between answers 410 rather than a missing file.
    jobs::outputs_expired(db, &ids).await?;
    for id in &outputs {
        store.delete(Bucket::Audio, id).await?;
    }
    Ok((originals.len(), outputs.len()))
}

/// Chunks of an upload cut off by a gateway that died mid-way (no files document) are removed
/// after this long: far above the time an upload may take.
const ORPHAN_GRACE: Duration = Duration::from_secs(6 * 3600);

pub async fn run(db: PgPool, store: MediaStore, policy: Policy, status: WorkerStatus, shutdown: CancellationToken) {
    loop {
        match crate::tus::sweep_expired(&db, &store).await {
            Ok(0) => {}
            Ok(uploads) => tracing::info!(uploads, "removed expired resumable uploads"),
            Err(e) => tracing::warn!(error = %e, "expired upload sweep failed; retrying next round"),
        }
        match crate::tus::record::unfinished_files(&db).await {
            Ok(live) => match store.sweep_orphan_chunks(Bucket::Uploads, ORPHAN_GRACE, &live).await {
                Ok(0) => {}
                Ok(files) => tracing::info!(files, "removed the chunks of uploads that were cut off"),
                Err(e) => tracing::warn!(error = %e, "orphan chunk sweep failed; retrying next round"),
            },
            Err(e) => tracing::warn!(error = %e, "orphan chunk sweep skipped: no list of resumable uploads"),
        }
        match sweep(&db, &store, &policy).await {
            Ok((originals, outputs)) => {
                status.ok();
                if originals + outputs > 0 {
                    tracing::info!(originals, outputs, "retention removed files");
                }
            }
            Err(e) => {
                status.failed(&e);
                tracing::warn!(error = %e, "retention sweep failed; retrying next round");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(policy.every) => {}
        }
    }
}
