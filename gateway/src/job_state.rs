//! Follows the pipeline's events to keep `gateway.jobs` current.
//!
//! An event is a claim, not proof: anything that can publish on the bus could send one. A
//! `media.converted` is applied only when the file it names is the output the store has
//! claimed for that job, so no event can point a job at another user's file; and an outcome
//! applied is passed on to the notifier as `job.*` with the job's own owner, so no event can
//! get a link mailed to an address it names.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;
use tunewire_contract::JobUpdate;
use tunewire_events::{HandleError, HandleResultExt, Incoming};
use tunewire_media_store::{Bucket, MediaStore};

pub async fn handle(
    db: PgPool,
    store: MediaStore,
    outbox_wake: Arc<Notify>,
    msg: Incoming<JobUpdate>,
) -> Result<(), HandleError> {
    if let JobUpdate::Converted(converted) = &msg.event {
        let claimed = store.output_of(Bucket::Audio, converted.job_id).await.or_retry("looking up the job's output")?;
        if claimed.as_ref() != Some(&converted.output.file_id) {
            tracing::warn!(
                job_id = %converted.job_id,
                named = %converted.output.file_id,
                claimed = ?claimed.map(|f| f.to_string()),
                "media.converted names a file that is not the job's output; ignored"
            );
            return Ok(());
        }
    }
    if crate::jobs::apply(&db, &msg.event).await.or_retry("updating the job")? {
        outbox_wake.notify_one();
    }
    Ok(())
}
