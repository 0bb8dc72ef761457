//! Accounting for every accepted upload, straight from the stack (not through the services,
//! which may be the thing at fault): its job row, its MP3 in GridFS, its catalog row, its
//! emails in MailDev, and what is left in the sandbox's queues and dead-letter queues.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::doc;
use serde_json::Value;
use tunewire_e2e::Pipeline;
use tunewire_test_stack::maildev;

use crate::burst::Upload;

/// The management API refreshes its queue figures about every 5 s: an account is final only
/// once it has held for longer than that.
const SETTLED_FOR: Duration = Duration::from_secs(7);

#[derive(Debug, Default)]
pub struct Tally {
    /// Uploads missing any of: state `converted`, an MP3, a catalog row, an email.
    pub lost: usize,
    /// Extra MP3s, catalog rows and emails beyond one each.
    pub duplicated: usize,
    pub extra_emails: usize,
    /// When everything was first in place (of the stretch that held).
    pub complete_at: Option<Instant>,
    /// What is wrong, per upload and per queue; empty when all is well.
    pub problems: Vec<String>,
}

#[derive(Debug, Default)]
struct Snapshot {
    /// Per upload: job state, whole MP3s, catalog rows, emails.
    per_upload: BTreeMap<String, (String, u64, i64, usize)>,
    /// MP3s whose chunks do not add up to their length.
    broken: Vec<String>,
    queues: Vec<String>,
}

impl Snapshot {
    fn complete(&self, dead_letters_expected: bool) -> bool {
        self.queues.iter().all(|q| dead_letters_expected && q.contains(".dead:"))
            && self
                .per_upload
                .values()
                .all(|(state, mp3s, rows, emails)| state == "converted" && *mp3s >= 1 && *rows >= 1 && *emails >= 1)
            && self.broken.is_empty()
    }
}

pub struct Accountant {
    db: sqlx::PgPool,
    mongo: mongodb::Client,
}

impl Accountant {
    pub async fn connect(p: &Pipeline) -> anyhow::Result<Self> {
        Ok(Self {
            db: sqlx::PgPool::connect(&p.sandbox.database_url).await?,
            mongo: mongodb::Client::with_uri_str(&p.sandbox.stack.mongo_uri).await?,
        })
    }

    async fn snapshot(&self, p: &Pipeline, email: &str, uploads: &[Upload]) -> anyhow::Result<Snapshot> {
        let mails = maildev::messages_to(&p.sandbox.stack.maildev_url, email).await?;
        let mongo = self.mongo.database(&p.sandbox.mongo_database(tunewire_media_store::Bucket::Audio));
        let files = mongo.collection::<mongodb::bson::Document>("audio.files");
        let chunks = mongo.collection::<mongodb::bson::Document>("audio.chunks");
        let mut snapshot = Snapshot::default();
        for upload in uploads {
            let state: Option<String> = sqlx::query_scalar("SELECT state FROM gateway.jobs WHERE id = $1::uuid")
                .bind(&upload.job_id)
                .fetch_optional(&self.db)
                .await?;
            // Whole ones only: every chunk its length needs is there.
            let mut mp3s = 0;
            for file in files.find(doc! {"metadata.job_id": &upload.job_id}).await?.try_collect::<Vec<_>>().await? {
                let length = file.get_i64("length").or_else(|_| file.get_i32("length").map(i64::from)).unwrap_or(0);
                let chunk_size = i64::from(file.get_i32("chunkSize").unwrap_or(255 * 1024).max(1));
                let expected = (length + chunk_size - 1) / chunk_size;
                let found =
                    chunks.count_documents(doc! {"files_id": file.get("_id").cloned(), "n": {"$lt": expected}}).await?;
                if found as i64 == expected {
                    mp3s += 1;
                } else {
                    snapshot.broken.push(format!("{}: an MP3 with {found} of its {expected} chunks", upload.title));
                }
            }
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM catalog.tracks WHERE job_id = $1::uuid")
                .bind(&upload.job_id)
                .fetch_one(&self.db)
                .await?;
            let suffix = format!(": {}", upload.title);
            let emails = mails.iter().filter(|m| m["subject"].as_str().is_some_and(|s| s.ends_with(&suffix))).count();
            snapshot
                .per_upload
                .insert(upload.title.clone(), (state.unwrap_or_else(|| "missing".into()), mp3s, rows, emails));
        }
        for queue in p.sandbox.queues().await? {
            let (ready, unacked) =
                (queue["messages_ready"].as_u64().unwrap_or(0), queue["messages_unacknowledged"].as_u64().unwrap_or(0));
            if ready + unacked > 0 {
                let name = queue["name"].as_str().unwrap_or("?");
                snapshot.queues.push(format!("{name}: {ready} ready, {unacked} unacked"));
            }
        }
        Ok(snapshot)
    }

    /// Waits (up to `deadline`) until every upload is converted, stored, catalogued and
    /// emailed and every queue is empty, then counts what is missing or doubled.
    /// `dead_letters_expected`: the scenario put messages there on purpose.
    pub async fn settle(
        &self,
        p: &Pipeline,
        email: &str,
        uploads: &[Upload],
        deadline: Duration,
        dead_letters_expected: bool,
    ) -> anyhow::Result<Tally> {
        let give_up = Instant::now() + deadline;
        // When everything was first there (the recovery time), and since when nothing has
        // changed (the wait): a transient such as a losing attempt's MP3 about to be
        // discarded or an email on its way restarts the wait, not the recovery.
        let mut complete_since: Option<Instant> = None;
        let mut unchanged_since: Option<Instant> = None;
        let mut previous = None;
        let snapshot = loop {
            // A server that was just restarted may still be refusing: look again.
            let snapshot = match self.snapshot(p, email, uploads).await {
                Ok(snapshot) => snapshot,
                Err(e) if Instant::now() >= give_up => return Err(e),
                Err(_) => {
                    (complete_since, unchanged_since) = (None, None);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let now = Instant::now();
            if previous.as_ref().is_some_and(|before| *before != snapshot.per_upload) {
                unchanged_since = None;
            }
            previous = Some(snapshot.per_upload.clone());
            if snapshot.complete(dead_letters_expected) {
                complete_since.get_or_insert(now);
                let since = *unchanged_since.get_or_insert(now);
                if now - since >= SETTLED_FOR {
                    break snapshot;
                }
            } else {
                (complete_since, unchanged_since) = (None, None);
            }
            if now >= give_up {
                break snapshot;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let mut tally = Tally { complete_at: complete_since, ..Tally::default() };
        tally.problems.extend(snapshot.broken.iter().cloned());
        for (title, (state, mp3s, rows, emails)) in &snapshot.per_upload {
            if state != "converted" || *mp3s == 0 || *rows == 0 || *emails == 0 {
                tally.lost += 1;
                tally
                    .problems
                    .push(format!("{title}: state {state}, {mp3s} MP3, {rows} catalog rows, {emails} emails"));
            }
            let extra = |n: usize| n.saturating_sub(1);
            tally.extra_emails += extra(*emails);
            tally.duplicated += extra(*mp3s as usize) + extra(*rows as usize) + extra(*emails);
            if *mp3s > 1 || *rows > 1 || *emails > 1 {
                tally.problems.push(format!("{title}: {mp3s} MP3s, {rows} catalog rows, {emails} emails"));
            }
        }
        tally.problems.extend(snapshot.queues.iter().map(|q| format!("left in queue {q}")));
        Ok(tally)
    }
}

/// A readable list of what went wrong, for assertion messages.
pub fn explain(tally: &Tally) -> String {
    if tally.problems.is_empty() { "nothing wrong".into() } else { tally.problems.join("\n  ") }
}

/// Every `/readyz` in `addrs` answers as `ready`, within `deadline` (readiness is polled).
pub async fn wait_readiness(
    p: &Pipeline,
    addrs: &[(&str, std::net::SocketAddr)],
    ready: bool,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for (name, addr) in addrs {
        let what = format!("{name} /readyz to say {}", if ready { "ready" } else { "not ready" });
        tunewire_test_stack::eventually(&what, deadline, || async {
            let (now_ready, _): (bool, Value) = tunewire_e2e::readiness(&p.http, *addr).await?;
            Ok((now_ready == ready).then_some(()))
        })
        .await?;
    }
    Ok(started.elapsed())
}
