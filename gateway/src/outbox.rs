//! The outbox relay: publishes events committed with their jobs, then deletes them. Every
//! gateway runs one; they share the work by leasing rows in a short transaction, publish
//! outside it (a broker that blocks publishers holds no row lock and no transaction), and
//! delete what the broker confirmed. At least once: a crash between confirm and delete, or a
//! lease that ran out mid-publish, publishes an event again, which consumers absorb.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, warn};
use tunewire_events::Bus;
use tunewire_service_runtime::telemetry::TraceHeaders;
use tunewire_service_runtime::{Backoff, WorkerStatus};

use crate::metrics::Metrics;

const BATCH: i64 = 100;
/// A safety net: new rows also wake the relay at once through `Notify`.
const POLL: Duration = Duration::from_millis(500);
/// The longest one publish (the send and the broker's confirm) may take; a broker under a
/// memory or disk alarm blocks publishers without a word.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows stay with the relay that leased them this long. Above a batch's publishing time in
/// the ordinary case; past it another gateway may publish them again (at least once).
const LEASE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] tunewire_events::BusError),
    #[error("rabbitmq did not confirm a {routing_key} event within {}s", CONFIRM_TIMEOUT.as_secs())]
    ConfirmTimeout { routing_key: String },
}

/// One queued event.
#[derive(sqlx::FromRow)]
struct Row {
    id: uuid::Uuid,
    routing_key: String,
    payload: Vec<u8>,
    created_at: chrono::DateTime<chrono::Utc>,
    job_id: Option<uuid::Uuid>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Row {
    /// The span its publishing runs in: in the trace of the work that queued it.
    fn span(&self) -> tracing::Span {
        let span = tracing::info_span!(
            "relay",
            otel.name = format!("{} publish", self.routing_key),
            otel.kind = "producer",
            routing_key = %self.routing_key,
            job_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        if let Some(job_id) = self.job_id {
            span.record("job_id", tracing::field::display(job_id));
        }
        TraceHeaders::from_parts(self.traceparent.clone(), self.tracestate.clone()).continue_in(&span);
        span
    }
}

/// Leases up to a batch of rows nobody holds, oldest first.
async fn lease(db: &PgPool) -> Result<Vec<Row>, sqlx::Error> {
    let mut rows: Vec<Row> = sqlx::query_as(
        "UPDATE gateway.outbox SET leased_until = now() + make_interval(secs => $2)
         WHERE id IN (SELECT id FROM gateway.outbox WHERE leased_until IS NULL OR leased_until < now()
                      ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id, routing_key, payload, created_at, job_id, traceparent, tracestate",
    )
    .bind(BATCH)
    .bind(LEASE.as_secs_f64())
    .fetch_all(db)
    .await?;
    rows.sort_by_key(|row| row.created_at);
    Ok(rows)
}

/// Publishes one leased batch; returns how many rows it held. Confirmed rows are deleted even
/// when a later one fails; the rest are released for the next try.
async fn relay_batch(db: &PgPool, bus: &Bus) -> Result<usize, RelayError> {
    let rows = lease(db).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut confirmed = Vec::with_capacity(rows.len());
    let mut failure = None;
    match tokio::time::timeout(CONFIRM_TIMEOUT, bus.publisher()).await {
        Err(_) => failure = Some(RelayError::Bus(tunewire_events::BusError::ConnectTimeout)),
        Ok(Err(e)) => failure = Some(e.into()),
        Ok(Ok(publisher)) => {
            for row in &rows {
                let Row { id, routing_key, payload, .. } = row;
                let message_id = id.to_string();
                let publishing = publisher.publish_raw(routing_key, payload, &message_id);
                let published = tokio::time::timeout(CONFIRM_TIMEOUT, publishing).instrument(row.span()).await;
                match published {
                    Ok(Ok(())) => confirmed.push(*id),
                    Ok(Err(e)) => {
                        failure = Some(e.into());
                        break;
                    }
                    Err(_) => {
                        failure = Some(RelayError::ConfirmTimeout { routing_key: routing_key.clone() });
                        break;
                    }
                }
            }
        }
    }
    sqlx::query("DELETE FROM gateway.outbox WHERE id = ANY($1)").bind(&confirmed).execute(db).await?;
    if let Some(e) = failure {
        let unsent: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).filter(|id| !confirmed.contains(id)).collect();
        sqlx::query("UPDATE gateway.outbox SET leased_until = NULL WHERE id = ANY($1)")
            .bind(&unsent)
            .execute(db)
            .await?;
        return Err(e);
    }
    Ok(rows.len())
}

/// Outbox depth and the age of its oldest event, for `/metrics`.
async fn measure(db: &PgPool, metrics: &Metrics) -> Result<(), sqlx::Error> {
    let (depth, oldest_s): (i64, Option<f64>) =
        sqlx::query_as("SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM gateway.outbox")
            .fetch_one(db)
            .await?;
    metrics.outbox_depth.set(depth);
    metrics.outbox_oldest_age.set(oldest_s.unwrap_or(0.0).max(0.0));
    Ok(())
}

pub async fn run(
    (db, bus): (PgPool, Arc<Bus>),
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    status: WorkerStatus,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        if let Err(e) = measure(&db, &metrics).await {
            warn!(error = %e, "could not measure the outbox");
        }
        match relay_batch(&db, &bus).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => {
                failures = 0;
                status.ok();
            }
            Err(e) => {
                failures += 1;
                status.failed(&e);
                metrics.outbox_relay_failures.inc();
                warn!(error = %e, failures, "outbox relay failed; events stay queued in PostgreSQL");
            }
        }
        let pause = if failures == 0 { POLL } else { Backoff::DEPENDENCY.delay(failures) };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified(), if failures == 0 => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
