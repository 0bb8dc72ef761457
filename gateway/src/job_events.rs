//! `GET /v1/jobs/{id}/events`: Server-Sent Events with the job's state and progress until it
//! ends. One poller per process reads every followed job in one query and fans the changes
//! out, so a thousand streams cost the database what one does; reading the rows (not events
//! this replica consumed) lets any replica serve any job.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tunewire_contract::{JobId, UserId};
use tunewire_service_runtime::ApiError;
use warp::http::StatusCode;
use warp::sse::Event;

use crate::job_view::Job;
use crate::jobs;
use crate::places::{Full, Limits, Place, Places};

/// How often the followed jobs are read.
pub const POLL: Duration = Duration::from_millis(250);
/// When a refused client should try again: streams end when their jobs do.
const RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
enum Change {
    Job(Box<Job>),
    Deleted,
}

impl Change {
    /// When the row was last changed; `None` for a deleted job (nothing is newer).
    fn updated_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Change::Job(job) => Some(job.updated_at),
            Change::Deleted => None,
        }
    }

    fn is_last(&self) -> bool {
        match self {
            Change::Job(job) => job.state.is_final(),
            Change::Deleted => true,
        }
    }

    fn event(&self, id: JobId) -> Event {
        match self {
            Change::Job(job) => {
                Event::default().event("job").json_data(job).unwrap_or_else(|_| Event::default().event("job"))
            }
            Change::Deleted => Event::default().event("deleted").data(id.to_string()),
        }
    }
}

/// The jobs someone follows, each with the last version read.
pub struct JobEvents {
    places: Places,
    followed: Mutex<HashMap<JobId, watch::Sender<Change>>>,
}

impl JobEvents {
    pub fn new(limits: Limits) -> Self {
        Self { places: Places::new(limits), followed: Mutex::new(HashMap::new()) }
    }

    /// A place for one more stream of `user`'s, or the refusal to send.
    pub fn admit(&self, user: &UserId) -> Result<Place, ApiError> {
        self.places.take(user).map_err(|full| {
            let (code, message) = match full {
                Full::User(count) => (
                    "too_many_streams",
                    format!("you follow {count} jobs' events, the most one user may at once; close one first"),
                ),
                Full::Process(limit) => {
                    ("server_busy", format!("this server serves {limit} event streams, its limit; try again shortly"))
                }
            };
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message).retry_after(RETRY_AFTER)
        })
    }

    /// The event stream of a job the caller may see, whose row reads `first`; the first event
    /// is sent at once, the stream ends with the job (or with the server).
    pub fn follow(
        &self,
        id: JobId,
        first: Job,
        place: Place,
        shutdown: CancellationToken,
    ) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + Sync + 'static {
        let first = Change::Job(Box::new(first));
        let changes = if first.is_last() {
            watch::channel(first).1
        } else {
            let mut followed = self.followed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let changes = followed.entry(id).or_insert_with(|| watch::channel(first.clone()).0);
            // The row just read may be newer than the poller's last reading.
            changes.send_if_modified(|last| {
                let newer = first.updated_at() > last.updated_at();
                if newer {
                    *last = first;
                }
                newer
            });
            changes.subscribe()
        };
        // `None` once the last event is sent; the first event, whatever was last read, is sent
        // without waiting.
        let start = Some((changes, false, place));
        futures_util::stream::unfold(start, move |next| {
            let shutdown = shutdown.clone();
            async move {
                let (mut changes, waits, place) = next?;
                if waits {
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        changed = changes.changed() => changed.ok()?,
                    }
                }
                let change = changes.borrow_and_update().clone();
                let next = (!change.is_last()).then_some((changes, true, place));
                Some((Ok(change.event(id)), next))
            }
        })
    }

    /// Reads every followed job each `POLL` and tells its streams what changed, until
    /// `shutdown`; jobs no stream follows any more are forgotten.
    pub async fn poll(&self, db: PgPool, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            let ids: Vec<JobId> = {
                let mut followed = self.followed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                followed.retain(|_, changes| changes.receiver_count() > 0);
                followed.keys().copied().collect()
            };
            if ids.is_empty() {
                continue;
            }
            let rows = match jobs::get_many(&db, &ids).await {
                Ok(rows) => rows.into_iter().map(|job| (job.id, job)).collect::<HashMap<_, _>>(),
                // The database will be back; the streams stay open meanwhile.
                Err(e) => {
                    tracing::warn!(jobs = ids.len(), error = %e, "job events: reading the followed jobs failed");
                    continue;
                }
            };
            let mut followed = self.followed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in ids {
                let Some(changes) = followed.get(&id) else { continue };
                let change = rows.get(&id).map_or(Change::Deleted, |job| Change::Job(Box::new(job.clone())));
                changes.send_if_modified(|last| {
                    let modified = *last != change;
                    *last = change.clone();
                    modified
                });
                // Its streams end with it: dropping the sender lets them read this last change
                // and then stop.
                if change.is_last() {
                    followed.remove(&id);
                }
            }
        }
    }
}
