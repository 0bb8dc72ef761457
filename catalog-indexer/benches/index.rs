//! Catalogue benchmark, printed as figures (`scripts/bench`; not a test): 100,000 generated
//! tracks written the way the consumer writes them (catalog rows in PostgreSQL, then the
//! index with group commits, 256 at once), then 1,000 fuzzy queries with a typo each.
//! Reports tracks/s, query latency (p50, p95, p99; target p95 < 20 ms), index size, RSS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use tunewire_catalog_indexer::lastfm::Tag;
use tunewire_catalog_indexer::search_index::{SearchIndex, SearchRequest, TrackDoc};
use tunewire_catalog_indexer::{catalog, migrate};
use tunewire_contract::{AudioOutput, Owner, TrackTags};
use tunewire_contract::{FileId, JobId, MediaConverted, Preset, UserId};
use tunewire_test_stack::Sandbox;

const TRACKS: usize = 100_000;
const QUERIES: usize = 1_000;
const WORDS: [&str; 40] = [
    "river",
    "night",
    "golden",
    "electric",
    "silent",
    "summer",
    "broken",
    "neon",
    "paper",
    "ocean",
    "falling",
    "wild",
    "glass",
    "desert",
    "midnight",
    "velvet",
    "echo",
    "crimson",
    "winter",
    "signal",
    "thunder",
    "lantern",
    "harbor",
    "shadow",
    "orbit",
    "canyon",
    "meadow",
    "static",
    "violet",
    "ember",
    "tidal",
    "hollow",
    "mirror",
    "radio",
    "satellite",
    "garden",
    "highway",
    "blossom",
    "copper",
    "horizon",
];
const TAGS: [&str; 8] = ["indie", "pop", "jazz", "ambient", "rock", "folk", "electronic", "soul"];

/// A cheap deterministic generator, so runs compare.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(32).connect(&sandbox.database_url).await?;
    migrate(&db).await?;
    let index_dir = std::env::temp_dir().join(format!("tw-bench-index-{}", sandbox.name));
    let index = Arc::new(SearchIndex::open(&index_dir)?);
    let owner = UserId::new();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let tracks: Vec<(String, String, &str)> = (0..TRACKS)
        .map(|i| {
            let title = format!("{} {} {}", WORDS[rng.next(40)], WORDS[rng.next(40)], WORDS[rng.next(40)]);
            let artist = format!("{} {}", WORDS[rng.next(40)], ["band", "trio", "collective", "orchestra"][i % 4]);
            (title, artist, TAGS[rng.next(8)])
        })
        .collect();

    println!("== indexing {TRACKS} tracks (PostgreSQL rows + index, 256 at once) ==");
    let started = Instant::now();
    let mut writes = futures_util::stream::iter(tracks.iter().map(|(title, artist, tag)| {
        let (db, index) = (db.clone(), index.clone());
        async move {
            let event = MediaConverted {
                job_id: JobId::new(),
                owner: Owner { id: owner, email: "bench@example.com".parse()? },
                source_filename: format!("{title}.mp4"),
                preset: Preset::default(),
                output: AudioOutput {
                    file_id: FileId::from_bytes([1; 12]),
                    size: 1,
                    duration_s: 200.0,
                    bitrate: 192_000,
                    sample_rate: 44_100,
                    channels: 2,
                },
                tags: TrackTags { title: Some(title.clone()), artist: Some(artist.clone()), album: None, genre: None },
                source_facts: Default::default(),
            };
            let tags = [Tag { name: (*tag).to_string(), weight: 50 }];
            catalog::upsert(&db, &event, title, &tags, "lastfm-track").await?;
            let (job, owner, title, artist, tag) =
                (event.job_id.to_string(), owner.to_string(), title.clone(), artist.clone(), tag.to_string());
            tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || {
                let doc =
                    TrackDoc { job_id: job, owner, title: &title, artist: Some(&artist), album: None, tags: vec![tag] };
                index.upsert(&doc)
            })
            .await??;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(256);
    while let Some(outcome) = writes.next().await {
        outcome?;
    }
    drop(writes);
    let took = started.elapsed();
    println!("indexed in {:.1} s: {:.0} tracks/s", took.as_secs_f64(), TRACKS as f64 / took.as_secs_f64());

    println!("== {QUERIES} fuzzy queries, one typo each, over {TRACKS} tracks ==");
    let me = owner.to_string();
    let mut latencies = Vec::with_capacity(QUERIES);
    let mut found = 0;
    for _ in 0..QUERIES {
        let word = WORDS[rng.next(40)];
        // Drop one letter: "midnigt", "velet".
        let cut = 1 + rng.next(word.len() - 1);
        let typo = format!("{}{}", &word[..cut], &word[cut + 1..]);
        let query = format!("{typo} {}", WORDS[rng.next(40)]);
        let started = Instant::now();
        let (hits, _) = index.search(&SearchRequest {
            text: &query,
            owner: Some(&me),
            tag: None,
            artist: None,
            limit: 20,
            offset: 0,
        })?;
        latencies.push(started.elapsed());
        found += usize::from(!hits.is_empty());
    }
    latencies.sort();
    println!(
        "latency: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms (target p95 < 20 ms); {found} of {QUERIES} found something",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99)
    );
    println!(
        "index size: {:.1} MiB; process RSS {:.0} MiB, peak {:.0} MiB",
        dir_size(&index_dir) as f64 / 1_048_576.0,
        rss_mib("VmRSS:"),
        rss_mib("VmHWM:")
    );
    drop(index);
    db.close().await;
    std::fs::remove_dir_all(&index_dir).context("removing the index")?;
    sandbox.cleanup().await
}
