//! `GET /v1/events`: Server-Sent Events with every change to the caller's jobs (an admin's:
//! everyone's), for a live list: a `job` event with the job, or `deleted` with its id (read
//! from the deleted job's tombstone). One poller per process reads the rows changed since its
//! last reading, for every user someone follows, in one query; reading rows (not the events
//! this replica consumed) lets any replica serve any user.
//!
//! `updated_at` is when the changing transaction began, so a row can become visible with a
//! time older than the last reading: each reading looks back `OVERLAP` further, and what was
//! already sent (same row, same `updated_at`) is not sent twice. A stream that falls behind
//! ends; the client's reconnect reloads the list (which it does on every open).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tunewire_contract::{JobId, UserId};
use warp::sse::Event;

use crate::caller::Caller;
use crate::job_events::POLL;
use crate::job_view::Job;
use crate::jobs;
use crate::places::Place;

/// Longer than any transaction that changes a job takes between its start and its commit.
const OVERLAP: Duration = Duration::from_secs(10);
/// Changes one stream may be behind before it is ended.
const BACKLOG: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    Owner(UserId),
    Everyone,
}

impl Scope {
    fn of(caller: &Caller) -> Self {
        if caller.admin { Scope::Everyone } else { Scope::Owner(caller.id) }
    }
}

/// One change a feed passes on.
#[derive(Debug, Clone)]
enum Change {
    Job(Arc<Job>),
    Deleted(JobId),
}

#[derive(Default)]
pub struct JobFeed {
    followed: Mutex<HashMap<Scope, broadcast::Sender<Change>>>,
}

impl JobFeed {
    /// The changes to the jobs `caller` may see, from the next reading on, until the server
    /// stops or the stream falls `BACKLOG` behind.
    pub fn follow(
        &self,
        caller: &Caller,
        place: Place,
        shutdown: CancellationToken,
    ) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + Sync + 'static {
        let changes = {
            let mut followed = self.followed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            followed.entry(Scope::of(caller)).or_insert_with(|| broadcast::channel(BACKLOG).0).subscribe()
        };
        futures_util::stream::unfold((changes, place), move |(mut changes, place)| {
            let shutdown = shutdown.clone();
            async move {
                let change = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    change = changes.recv() => change.ok()?,
                };
                let event = match change {
                    Change::Job(job) => {
                        Event::default().event("job").json_data(&*job).unwrap_or_else(|_| Event::default())
                    }
                    Change::Deleted(id) => Event::default().event("deleted").data(id.to_string()),
                };
                Some((Ok(event), (changes, place)))
            }
        })
    }

    /// Reads what changed every `POLL` and hands each change to its owner's streams and to
    /// admins', until `shutdown`; users nobody follows any more are forgotten.
    pub async fn poll(&self, db: PgPool, shutdown: CancellationToken) {
        let mut since: Option<DateTime<Utc>> = None;
        let mut sent: HashMap<JobId, DateTime<Utc>> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            let (owners, everyone) = {
                let mut followed = self.followed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                followed.retain(|_, changes| changes.receiver_count() > 0);
                let owners: Vec<UserId> = followed
                    .keys()
                    .filter_map(|scope| match scope {
                        Scope::Owner(id) => Some(*id),
                        Scope::Everyone => None,
                    })
                    .collect();
                (owners, followed.contains_key(&Scope::Everyone))
            };
            if owners.is_empty() && !everyone {
                since = None;
                sent.clear();
                continue;
            }
            let overlap = chrono::Duration::from_std(OVERLAP).unwrap_or_default();
            // A first reading only sets where the next one starts.
            let Some(from) = since else {
                match jobs::database_now(&db).await {
                    Ok(now) => since = Some(now - overlap),
                    Err(e) => tracing::warn!(error = %e, "job feed: reading the database's clock failed"),
                }
                continue;
            };
            let jobs::Changes { jobs: changed, deleted, read_at } =
                match jobs::changed_since(&db, from, &owners, everyone).await {
                    Ok(read) => read,
                    // The database will be back; the streams stay open meanwhile.
                    Err(e) => {
                        tracing::warn!(error = %e, "job feed: reading the changed jobs failed");
                        continue;
                    }
                };
            since = Some(from.max(read_at - overlap));
            let followed = self.followed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (owner, job) in changed {
                if sent.get(&job.id) == Some(&job.updated_at) {
                    continue;
                }
                sent.insert(job.id, job.updated_at);
                let job = Change::Job(Arc::new(job));
                for scope in [Scope::Owner(owner), Scope::Everyone] {
                    if let Some(changes) = followed.get(&scope) {
                        // No receiver left: it is forgotten at the next reading.
                        let _ = changes.send(job.clone());
                    }
                }
            }
            for (owner, id, at) in deleted {
                if sent.insert(id, at) == Some(at) {
                    continue;
                }
                for scope in [Scope::Owner(owner), Scope::Everyone] {
                    if let Some(changes) = followed.get(&scope) {
                        let _ = changes.send(Change::Deleted(id));
                    }
                }
            }
            if let Some(since) = since {
                sent.retain(|_, updated_at| *updated_at > since);
            }
        }
    }
}
