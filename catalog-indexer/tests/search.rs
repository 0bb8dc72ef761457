//! Search over a catalogue of 1,000 tracks in the real PostgreSQL: misspellings, accents,
//! tag and artist filters, pages; the index rebuilt from the catalog when missing or
//! corrupt, and by the `reindex` command; a catalogued track searchable by the time the
//! gateway hears of it.

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tunewire_catalog_indexer::{Config, catalog, lastfm::Tag};
use tunewire_contract::UserId;
use tunewire_events::Bus;
mod support;

use tunewire_test_stack::{Sandbox, eventually};

const WORDS: [&str; 20] = [
    "river", "night", "golden", "electric", "silent", "summer", "broken", "neon", "paper", "ocean", "falling", "wild",
    "glass", "desert", "midnight", "velvet", "echo", "crimson", "winter", "signal",
];
const ARTISTS: [&str; 10] = [
    "The Lanterns",
    "Mira Sol",
    "Static Youth",
    "Northbound",
    "Delta Blue",
    "Kite",
    "Orbiter",
    "June",
    "Low Tide",
    "Paloma",
];

/// 1,000 generated tracks plus a few well-known ones, written straight into the catalog.
async fn fill(db: &PgPool, owner: UserId) -> anyhow::Result<()> {
    tunewire_catalog_indexer::migrate(db).await?;
    for i in 0..1000 {
        let title = format!("{} {} {i}", WORDS[i % 20], WORDS[(i / 20) % 20]);
        let artist = ARTISTS[i % 10];
        let tags = [Tag { name: ["indie", "pop", "jazz", "ambient"][i % 4].into(), weight: 50 }];
        catalog::upsert(db, &support::converted(owner, &title, artist, None)?, &title, &tags, "lastfm-track").await?;
    }
    for (title, artist, album, tag) in [
        ("Bohemian Rhapsody", "Queen", "A Night at the Opera", "classic rock"),
        ("Café del Mar", "José González", "Veneer", "chillout"),
        ("Hallelujah", "Leonard Cohen", "Various Positions", "folk"),
    ] {
        let tags = [Tag { name: tag.into(), weight: 90 }];
        catalog::upsert(db, &support::converted(owner, title, artist, Some(album))?, title, &tags, "lastfm-track")
            .await?;
    }
    Ok(())
}

struct Service {
    url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(config: &Config) -> anyhow::Result<Service> {
    let shutdown = CancellationToken::new();
    let running = tunewire_catalog_indexer::start(config.clone(), shutdown.clone()).await?;
    Ok(Service { url: format!("http://{}", running.addr), shutdown, task: running.task })
}

impl Service {
    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?;
        Ok(())
    }

    async fn search(&self, params: &[(&str, &str)]) -> anyhow::Result<Value> {
        let r = reqwest::Client::new().get(format!("{}/search", self.url)).query(params).send().await?;
        Ok(r.error_for_status()?.json().await?)
    }
}

fn titles(hits: &Value) -> Vec<String> {
    hits["hits"].as_array().into_iter().flatten().filter_map(|h| h["title"].as_str().map(str::to_string)).collect()
}

#[tokio::test]
async fn a_thousand_tracks_are_found_despite_typos_and_accents_and_filtered_by_tag_and_artist() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let db = PgPool::connect(&sandbox.database_url).await?;
    let owner = UserId::new();
    fill(&db, owner).await?;
    let index_dir = std::env::temp_dir().join(format!("tw-search-{}", sandbox.name));
    let config = Config::local(sandbox.database_url.clone(), sandbox.amqp_url.clone(), index_dir.clone());
    // The index does not exist yet: the service builds it from the catalog at start.
    let service = start(&config).await?;
    let me = owner.to_string();
    let with_owner = |extra: &[(&'static str, &'static str)]| {
        let mut params = vec![("owner", me.as_str())];
        params.extend_from_slice(extra);
        params
    };

    for (query, expected) in [
        ("bohemain rapsody", "Bohemian Rhapsody"),
        ("halleluja", "Hallelujah"),
        ("cafe del mar", "Café del Mar"),
        ("jose gonzalez", "Café del Mar"),
        ("QUEEN", "Bohemian Rhapsody"),
        ("opera", "Bohemian Rhapsody"),
    ] {
        let hits = service.search(&with_owner(&[("q", query)])).await?;
        assert_eq!(titles(&hits).first().map(String::as_str), Some(expected), "{query}: {hits}");
    }
    let chill = service.search(&with_owner(&[("tag", "chillout")])).await?;
    assert_eq!(titles(&chill), ["Café del Mar"]);
    let jazz = service.search(&with_owner(&[("tag", "jazz"), ("limit", "100")])).await?;
    assert_eq!(jazz["total"], 250);
    let by_artist = service.search(&with_owner(&[("q", "river"), ("artist", "mira sol")])).await?;
    assert!(by_artist["total"].as_u64().is_some_and(|n| n > 0), "{by_artist}");
    for hit in by_artist["hits"].as_array().context("hits")? {
        assert_eq!(hit["artist"], "Mira Sol");
    }
    // Another owner sees none of it.
    let stranger = service.search(&[("q", "river"), ("owner", &UserId::new().to_string())]).await?;
    assert_eq!(stranger["total"], 0);

    // Pages: disjoint, complete, and the last one says so.
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut params = with_owner(&[("tag", "ambient"), ("limit", "100")]);
        let c;
        if let Some(next) = &cursor {
            c = next.clone();
            params.push(("cursor", c.as_str()));
        }
        let page = service.search(&params).await?;
        for hit in page["hits"].as_array().context("hits")? {
            assert!(seen.insert(hit["job_id"].as_str().unwrap_or_default().to_string()), "a job twice");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 250);
    let (long_query, long_word, long_tag) = ("love ".repeat(60), "a".repeat(33), "b".repeat(257));
    for (params, code) in [
        (vec![("limit", "0"), ("q", "x")], "invalid_limit"),
        (vec![("q", "  ")], "missing_query"),
        (vec![("q", long_query.as_str())], "query_too_long"),
        (vec![("q", long_word.as_str())], "term_too_long"),
        (vec![("tag", long_tag.as_str())], "query_too_long"),
    ] {
        let r = reqwest::Client::new().get(format!("{}/search", service.url)).query(&params).send().await?;
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await?["error"], code);
    }
    service.stop().await?;

    // A corrupt index is rebuilt at start.
    std::fs::write(index_dir.join("meta.json"), b"{ not json")?;
    let service = start(&config).await?;
    let hits = service.search(&with_owner(&[("q", "hallelujah")])).await?;
    assert_eq!(titles(&hits).first().map(String::as_str), Some("Hallelujah"));
    service.stop().await?;

    // And the command rebuilds it on demand.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunewire-catalog-indexer"))
        .arg("reindex")
        .env("DATABASE_URL", &sandbox.database_url)
        .env("CATALOG_INDEX_DIR", &index_dir)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1003 tracks"));
    db.close().await;
    let _ = std::fs::remove_dir_all(&index_dir);
    sandbox.cleanup().await
}

#[tokio::test]
async fn a_track_is_searchable_by_the_time_the_gateway_hears_it_is_catalogued() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let index_dir = std::env::temp_dir().join(format!("tw-fresh-{}", sandbox.name));
    let config = Config::local(sandbox.database_url.clone(), sandbox.amqp_url.clone(), index_dir.clone());
    let service = start(&config).await?;
    let owner = UserId::new();
    let converted = support::converted(owner, "Fresh Off The Press", "Newcomer", None)?;
    Bus::new(sandbox.amqp_url.clone(), "search-tests").publisher().await?.publish(&converted).await?;
    let catalogued = eventually("media.catalogued", Duration::from_secs(30), || async {
        // The queue carries media.converted too; media.catalogued is the one with a tag list.
        let messages = sandbox.take("gateway.job-state", 10).await?;
        Ok(messages.into_iter().find(|m| m["job_id"] == converted.job_id.to_string() && m["tags"].is_array()))
    })
    .await?;
    assert_eq!(catalogued["tags"], serde_json::json!([]));
    let hits = service.search(&[("q", "fresh press"), ("owner", &owner.to_string())]).await?;
    assert_eq!(titles(&hits), ["Fresh Off The Press"]);
    service.stop().await?;
    let _ = std::fs::remove_dir_all(&index_dir);
    sandbox.cleanup().await
}
