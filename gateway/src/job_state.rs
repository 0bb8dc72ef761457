//! Follows the pipeline's events to keep `gateway.jobs` current.

use sqlx::PgPool;
use tunewire_events::{HandleError, HandleResultExt, Incoming, JobUpdate};

pub async fn handle(db: PgPool, msg: Incoming<JobUpdate>) -> Result<(), HandleError> {
    crate::jobs::apply(&db, &msg.event).await.or_retry("updating the job")
}
