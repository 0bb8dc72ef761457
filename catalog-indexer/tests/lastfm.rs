//! The catalog-indexer against the real stack and a fake Last.fm that answers in Last.fm's
//! real shapes, quirks and errors included, and that a test can turn down or hostile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tunewire_contract::{Event, JobId, UserId};
use tunewire_events::Bus;
use tunewire_events::topology::CATALOG_INDEXER_QUEUE;
mod support;

use tunewire_test_stack::{Sandbox, eventually};

const DEADLINE: Duration = Duration::from_secs(30);

const KEY: &str = "test-key-3f9a";

#[derive(Clone, Copy)]
#[repr(u8)]
enum Mode {
    Normal = 0,
    Down = 1,
    RateLimited = 2,
    BadKey = 3,
    /// 200 with a body that is not JSON, as a captive portal or a broken proxy answers.
    Garbage = 4,
}

struct FakeLastfm {
    url: String,
    mode: Arc<AtomicU8>,
    calls: Arc<AtomicUsize>,
}

/// Answers by track title, in the shapes Last.fm really uses.
fn answer(method: &str, track: &str) -> Value {
    match (method, track) {
        ("track.gettoptags", "Single") => json!({"toptags": {"tag": {"name": "Jazz", "count": "42"}, "@attr": {}}}),
        ("track.gettoptags", "Strings") => json!({"toptags": {"tag": [
            {"name": "Rock", "count": "100"}, {"name": "rock", "count": 90}, {"name": "seen live", "count": "80"},
            {"name": "Indie", "count": 55}, {"name": "rare", "count": "3"}
        ]}}),
        ("track.gettoptags", "Empty" | "Fallback") => json!({"toptags": {"tag": "", "@attr": {}}}),
        ("artist.gettoptags", "Fallback") => json!({"toptags": {"tag": [{"name": "Ambient", "count": 70}]}}),
        ("artist.gettoptags", "Empty") => json!({"toptags": ""}),
        (_, "Unknown") => json!({"error": 6, "message": "Track not found"}),
        _ => json!({"toptags": {"tag": [{"name": "Electronic", "count": 77}]}}),
    }
}

impl FakeLastfm {
    async fn start(shutdown: CancellationToken) -> anyhow::Result<Self> {
        use warp::Filter;
        use warp::http::StatusCode;
        let (mode, calls) = (Arc::new(AtomicU8::new(Mode::Normal as u8)), Arc::new(AtomicUsize::new(0)));
        let (m, c) = (mode.clone(), calls.clone());
        use warp::Reply;
        let route = warp::query::<std::collections::HashMap<String, String>>().map(
            move |q: std::collections::HashMap<String, String>| {
                c.fetch_add(1, Ordering::SeqCst);
                let method = q.get("method").map(String::as_str).unwrap_or_default().to_lowercase();
                // The artist's lookup says which track it is for through the artist's name.
                let track = q.get("track").or_else(|| q.get("artist")).cloned().unwrap_or_default();
                let (status, body) = match m.load(Ordering::SeqCst) {
                    1 => (StatusCode::SERVICE_UNAVAILABLE, json!({"message": "down"})),
                    2 => (StatusCode::OK, json!({"error": 29, "message": "Rate limit exceeded"})),
                    3 => (StatusCode::FORBIDDEN, json!({"error": 10, "message": "Invalid API key"})),
                    4 => return warp::reply::with_status("<html>sign in</html>", StatusCode::OK).into_response(),
                    _ => (StatusCode::OK, answer(&method, &track)),
                };
                warp::reply::with_status(warp::reply::json(&body), status).into_response()
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/2.0/", listener.local_addr()?);
        tokio::spawn(warp::serve(route).incoming(listener).graceful(shutdown.cancelled_owned()).run());
        Ok(Self { url, mode, calls })
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

struct Catalog {
    sandbox: Sandbox,
    url: String,
    lastfm: FakeLastfm,
    bus: Bus,
    db: PgPool,
    http: reqwest::Client,
    shutdown: CancellationToken,
    index_dir: std::path::PathBuf,
}

impl Catalog {
    async fn start() -> anyhow::Result<Self> {
        let sandbox = Sandbox::create().await?;
        let shutdown = CancellationToken::new();
        let lastfm = FakeLastfm::start(shutdown.clone()).await?;
        let index_dir = std::env::temp_dir().join(format!("tw-catalog-{}", sandbox.name));
        let mut config = tunewire_catalog_indexer::Config::local(
            sandbox.database_url.clone(),
            sandbox.amqp_url.clone(),
            index_dir.clone(),
        );
        config.lastfm_api_key = Some(KEY.into());
        config.lastfm_url = lastfm.url.clone();
        config.lastfm_rate_per_s = 50.0;
        config.lastfm_retry_every = Duration::from_millis(200);
        let running = tunewire_catalog_indexer::start(config, shutdown.clone()).await?;
        let bus = Bus::new(sandbox.amqp_url.clone(), "catalog-tests");
        let db = PgPool::connect(&sandbox.database_url).await?;
        Ok(Self {
            url: format!("http://{}", running.addr),
            sandbox,
            lastfm,
            bus,
            db,
            http: reqwest::Client::new(),
            shutdown,
            index_dir,
        })
    }

    async fn publish<E: Event>(&self, event: &E) -> anyhow::Result<()> {
        Ok(self.bus.publisher().await?.publish(event).await?)
    }

    async fn convert(&self, owner: UserId, title: &str, artist: &str) -> anyhow::Result<JobId> {
        let event = support::converted(owner, title, artist, None)?;
        self.publish(&event).await?;
        Ok(event.job_id)
    }

    /// The track's tag names once it is catalogued.
    async fn tags(&self, job: JobId) -> anyhow::Result<Option<Vec<String>>> {
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM catalog.tracks WHERE job_id = $1")
            .bind(job.as_uuid())
            .fetch_optional(&self.db)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let tags: Vec<String> = sqlx::query_scalar(
            "SELECT g.name FROM catalog.track_tags tt JOIN catalog.tags g ON g.id = tt.tag_id
             WHERE tt.job_id = $1 ORDER BY tt.weight DESC",
        )
        .bind(job.as_uuid())
        .fetch_all(&self.db)
        .await?;
        Ok(Some(tags))
    }

    async fn catalogued(&self, job: JobId) -> anyhow::Result<Vec<String>> {
        eventually(&format!("{job} catalogued"), DEADLINE, || self.tags(job)).await
    }

    async fn search(&self, owner: UserId, q: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}/search", self.url))
            .query(&[("q", q), ("owner", &owner.to_string())])
            .send()
            .await?;
        Ok(r.error_for_status()?.json().await?)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.db.close().await;
        let _ = std::fs::remove_dir_all(&self.index_dir);
        self.sandbox.cleanup().await
    }
}

#[tokio::test]
async fn last_fm_quirks_become_clean_tags() -> anyhow::Result<()> {
    let c = Catalog::start().await?;
    let owner = UserId::new();
    let cases = [
        ("Single", vec!["jazz"]),
        ("Strings", vec!["rock", "indie"]),
        ("Empty", vec![]),
        ("Fallback", vec!["ambient"]),
        ("Unknown", vec![]),
    ];
    for (title, expected) in cases {
        let job = c.convert(owner, title, title).await?;
        assert_eq!(c.catalogued(job).await?, expected, "{title}");
    }
    eventually("a misspelt title found", DEADLINE, || async {
        Ok((c.search(owner, "strngs").await?["hits"][0]["title"] == "Strings").then_some(()))
    })
    .await?;
    c.stop().await
}

#[tokio::test]
async fn when_last_fm_is_down_or_rate_limits_tracks_are_searchable_at_once_and_tagged_later() -> anyhow::Result<()> {
    let c = Catalog::start().await?;
    let owner = UserId::new();
    for (mode, title) in [(Mode::Down, "Outage Song"), (Mode::RateLimited, "Busy Song")] {
        c.lastfm.set(mode);
        let job = c.convert(owner, title, "Some Artist").await?;
        assert_eq!(c.catalogued(job).await?, Vec::<String>::new(), "catalogued at once, untagged");
        // Searchable without its tags (the index commits within a fraction of a second).
        eventually("searchable untagged", DEADLINE, || async {
            Ok((c.search(owner, title).await?["hits"][0]["title"] == title).then_some(()))
        })
        .await?;
        c.lastfm.set(Mode::Normal);
        let tags = eventually("the late tags", DEADLINE, || async { Ok(c.tags(job).await?.filter(|t| !t.is_empty())) })
            .await?;
        assert_eq!(tags, ["electronic"]);
        // The index has them too: searching by the tag finds the track.
        eventually("the tag is searchable", DEADLINE, || async {
            let hits = c.search(owner, "electronic").await?;
            let titles: Vec<String> = hits["hits"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h["title"].as_str().map(str::to_string))
                .collect();
            Ok(titles.contains(&title.to_string()).then_some(()))
        })
        .await?;
    }
    // The entry leaves the backlog only after the gateway has been told, a moment after the
    // index has the tags.
    eventually("the backlog drains", DEADLINE, || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM catalog.tag_backlog").fetch_one(&c.db).await?;
        Ok((left == 0).then_some(()))
    })
    .await?;
    c.stop().await
}

#[tokio::test]
async fn the_api_key_never_reaches_the_backlog_s_errors() -> anyhow::Result<()> {
    let c = Catalog::start().await?;
    c.lastfm.set(Mode::Garbage);
    let job = c.convert(UserId::new(), "Portal Song", "Some Artist").await?;
    let error = eventually("the failed lookup is in the backlog", DEADLINE, || async {
        let error: Option<Option<String>> =
            sqlx::query_scalar("SELECT last_error FROM catalog.tag_backlog WHERE job_id = $1")
                .bind(job.as_uuid())
                .fetch_optional(&c.db)
                .await?;
        Ok(error.flatten())
    })
    .await?;
    assert!(error.contains("HTTP 200"), "{error}");
    assert!(!error.contains(KEY), "the key leaked: {error}");
    c.stop().await
}

#[tokio::test]
async fn a_rejected_key_stops_the_calls_and_readiness_says_so() -> anyhow::Result<()> {
    let c = Catalog::start().await?;
    let owner = UserId::new();
    c.lastfm.set(Mode::BadKey);
    let first = c.convert(owner, "Keyless", "Artist").await?;
    assert_eq!(c.catalogued(first).await?, Vec::<String>::new());
    let calls = c.lastfm.calls.load(Ordering::SeqCst);
    let second = c.convert(owner, "Keyless Two", "Artist").await?;
    assert_eq!(c.catalogued(second).await?, Vec::<String>::new());
    assert_eq!(c.lastfm.calls.load(Ordering::SeqCst), calls, "no call after the key was rejected");
    let ready: Value = c.http.get(format!("{}/readyz", c.url)).send().await?.json().await?;
    assert_eq!(ready["status"], "ready", "search still works: {ready}");
    assert!(ready["notes"]["lastfm"].as_str().is_some_and(|n| n.contains("rejected")), "{ready}");
    c.stop().await
}

#[tokio::test]
async fn answers_are_cached_and_a_repeated_event_changes_nothing() -> anyhow::Result<()> {
    let c = Catalog::start().await?;
    let owner = UserId::new();
    let first = c.convert(owner, "Cached", "Artist").await?;
    c.catalogued(first).await?;
    let calls = c.lastfm.calls.load(Ordering::SeqCst);
    let again = c.convert(owner, "Cached", "Artist").await?;
    assert_eq!(c.catalogued(again).await?, ["electronic"]);
    assert_eq!(c.lastfm.calls.load(Ordering::SeqCst), calls, "the same artist and title come from the cache");

    let event = support::converted(owner, "Twice", "Artist", None)?;
    c.publish(&event).await?;
    c.publish(&event).await?;
    eventually("both copies handled", DEADLINE, || async {
        Ok((c.sandbox.queue_stat(CATALOG_INDEXER_QUEUE.name, "ack").await? >= 4).then_some(()))
    })
    .await?;
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM catalog.tracks WHERE title = 'Twice'").fetch_one(&c.db).await?;
    assert_eq!(rows, 1);
    let hits = c.search(owner, "Twice").await?;
    assert_eq!(hits["total"], 1, "{hits}");
    c.stop().await
}
