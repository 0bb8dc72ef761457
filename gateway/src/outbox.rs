//! The outbox relay: publishes events committed with their jobs, then deletes them. At least
//! once: a crash between confirm and delete publishes an event again, which consumers absorb.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use tunewire_events::Bus;
use tunewire_events::consumer::retry_delay;

const BATCH: i64 = 100;
/// A safety net: new rows also wake the relay at once through `Notify`.
const POLL: Duration = Duration::from_millis(500);

async fn relay_batch(db: &PgPool, bus: &Bus) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    let rows: Vec<(uuid::Uuid, String, Vec<u8>)> = sqlx::query_as(
        "SELECT id, routing_key, payload FROM gateway.outbox ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let publisher = bus.publisher().await?;
    for (id, routing_key, payload) in &rows {
        publisher.publish_raw(routing_key, payload, &id.to_string()).await?;
        sqlx::query("DELETE FROM gateway.outbox WHERE id = $1").bind(id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

pub async fn run(db: PgPool, bus: Arc<Bus>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        match relay_batch(&db, &bus).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                warn!(error = %e, failures, "outbox relay failed; events stay queued in PostgreSQL");
            }
        }
        let pause = if failures == 0 { POLL } else { retry_delay(failures.min(5)) };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified(), if failures == 0 => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
