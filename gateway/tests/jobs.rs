//! Jobs against the real stack (with a real converter): pages, filters, live events,
//! deletion, and retention.

mod support;

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use support::{Gateway, Options};
use tunewire_contract::{AudioOutput, Owner, TrackTags};
use tunewire_contract::{FileId, MediaConverted, Preset};
use tunewire_events::topology::{GATEWAY_QUEUE, NOTIFIER_QUEUE};
use tunewire_media_store::Bucket;
use tunewire_test_stack::eventually;

#[tokio::test]
async fn jobs_are_paged_by_cursor_and_filtered_by_state() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options { converter: true, ..Default::default() }).await?;
    let (user, other) = (g.user().await?, g.user().await?);
    let mut ids = Vec::new();
    for seed in 0..5 {
        ids.push(g.accepted(&user.token, &g.tone(&format!("t{seed}.wav"), 1, seed)?, &[]).await?);
    }
    g.accepted(&other.token, &g.tone("theirs.wav", 1, 9)?, &[]).await?;
    for id in &ids {
        g.wait_for_state(&user.token, id, "converted").await?;
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = g.at("/v1/jobs?limit=2");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = g.http.get(url).bearer_auth(&user.token).send().await?.error_for_status()?.json().await?;
        pages += 1;
        let jobs = page["jobs"].as_array().context("jobs")?;
        assert!(jobs.len() <= 2);
        seen.extend(jobs.iter().filter_map(|j| j["id"].as_str().map(str::to_string)));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "every job once, newest first, none of another user's");

    let converted: Value =
        g.http.get(g.at("/v1/jobs?state=converted")).bearer_auth(&user.token).send().await?.json().await?;
    assert_eq!(converted["jobs"].as_array().map(Vec::len), Some(5));
    let failed: Value = g.http.get(g.at("/v1/jobs?state=failed")).bearer_auth(&user.token).send().await?.json().await?;
    assert_eq!(failed["jobs"].as_array().map(Vec::len), Some(0));
    let all: Value = g.http.get(g.at("/v1/jobs?limit=100")).bearer_auth(&g.admin().await?).send().await?.json().await?;
    assert_eq!(all["jobs"].as_array().map(Vec::len), Some(6), "an admin sees everyone's jobs");

    for (query, code) in [
        ("state=done", "invalid_state"),
        ("cursor=bm9wZQ", "invalid_cursor"),
        ("limit=0", "invalid_limit"),
        ("limit=101", "invalid_limit"),
        ("sort=asc", "unknown_parameter"),
    ] {
        let r = g.http.get(g.at(&format!("/v1/jobs?{query}"))).bearer_auth(&user.token).send().await?;
        assert_eq!(r.status(), 400, "{query}");
        assert_eq!(r.json::<Value>().await?["error"], code, "{query}");
    }

    let job = g.job(&user.token, &ids[0]).await?;
    for field in ["id", "state", "progress", "preset", "source", "output", "tags", "error", "created_at", "updated_at"]
    {
        assert!(job.get(field).is_some(), "{field} missing from {job}");
    }
    assert_eq!(job["progress"], 1.0);
    assert!(job["output"]["file_id"].is_string() && job["output"]["duration_s"].as_f64().is_some_and(|d| d > 0.9));
    g.stop().await
}

#[tokio::test]
async fn job_events_stream_state_and_progress_until_the_job_ends() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options { converter: true, ..Default::default() }).await?;
    let user = g.user().await?;
    let id = g.accepted(&user.token, &g.tone("long.wav", 120, 1)?, &[]).await?;
    let r = g.http.get(g.at(&format!("/v1/jobs/{id}/events"))).bearer_auth(&user.token).send().await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    let events = support::job_events(r).await?;
    let states: Vec<&str> = events.iter().filter_map(|e| e["state"].as_str()).collect();
    assert_eq!(states.last(), Some(&"converted"), "{states:?}");
    let progress: Vec<f64> = events.iter().filter_map(|e| e["progress"].as_f64()).collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress only grows: {progress:?}");
    assert!(events.len() >= 2, "at least the first state and the end: {states:?}");

    let stranger = g.user().await?;
    let r = g.http.get(g.at(&format!("/v1/jobs/{id}/events"))).bearer_auth(&stranger.token).send().await?;
    assert_eq!(r.status(), 404);
    g.stop().await
}

/// Takes messages off `queue` (standing in for its consumer) until one equals `expected`.
async fn wait_for_message(g: &Gateway, queue: &str, expected: Value) -> anyhow::Result<()> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    eventually(&format!("{expected} in {queue}"), support::DEADLINE, || {
        let (seen, more, expected) = (seen.clone(), g.sandbox.take(queue, 10), expected.clone());
        async move {
            let more = more.await?;
            let mut all = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            all.extend(more);
            Ok(all.contains(&expected).then_some(()))
        }
    })
    .await
}

#[tokio::test]
async fn deleting_a_job_removes_its_original_and_its_mp3() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options { converter: true, ..Default::default() }).await?;
    let (user, stranger) = (g.user().await?, g.user().await?);
    let id = g.accepted(&user.token, &g.tone("t.wav", 2, 1)?, &[]).await?;
    g.wait_for_state(&user.token, &id, "converted").await?;
    assert_eq!((g.gridfs_counts(Bucket::Uploads).await?.0, g.gridfs_counts(Bucket::Audio).await?.0), (1, 1));

    let r = g.http.delete(g.at(&format!("/v1/jobs/{id}"))).bearer_auth(&stranger.token).send().await?;
    assert_eq!(r.status(), 404, "another user's job is not theirs to delete");
    let r = g.http.delete(g.at(&format!("/v1/jobs/{id}"))).bearer_auth(&user.token).send().await?;
    assert_eq!(r.status(), 204);
    assert_eq!(g.gridfs_counts(Bucket::Uploads).await?, (0, 0));
    assert_eq!(g.gridfs_counts(Bucket::Audio).await?, (0, 0));
    let r = g.http.get(g.at(&format!("/v1/jobs/{id}"))).bearer_auth(&user.token).send().await?;
    assert_eq!(r.status(), 404);
    let r = g.http.delete(g.at(&format!("/v1/jobs/{id}"))).bearer_auth(&user.token).send().await?;
    assert_eq!(r.status(), 404);
    // The pipeline hears of it (the notifier's and the catalog's queues; the converter's own
    // is consumed by the converter running here).
    for queue in ["notifier.outcomes", "catalog-indexer.media-converted"] {
        wait_for_message(&g, queue, serde_json::json!({"job_id": id})).await?;
    }
    g.stop().await
}

/// A `media.converted` for `job` naming `file`, as the converter would send it.
fn converted_event(job: &str, owner: &support::User, file: &FileId) -> anyhow::Result<MediaConverted> {
    Ok(MediaConverted {
        job_id: job.parse()?,
        owner: Owner { id: owner.id.parse()?, email: owner.email.parse()? },
        source_filename: "t.wav".into(),
        preset: Preset::default(),
        output: AudioOutput {
            file_id: file.clone(),
            size: 1000,
            duration_s: 1.0,
            bitrate: 192_000,
            sample_rate: 44_100,
            channels: 1,
        },
        tags: TrackTags::default(),
        source_facts: Default::default(),
    })
}

/// Waits until the gateway has acknowledged `count` events and relayed every row of its
/// outbox, then takes what reached the notifier's queue: `job.*` outcomes the gateway vouches
/// for (no notifier runs here).
async fn outcomes_after(g: &Gateway, count: u64) -> anyhow::Result<Vec<Value>> {
    eventually("the gateway has handled the events", support::DEADLINE, || async {
        Ok((g.sandbox.queue_stat(GATEWAY_QUEUE.name, "ack").await? >= count).then_some(()))
    })
    .await?;
    // An outcome is queued in the same transaction as the job's change, before the ack.
    let db = sqlx::PgPool::connect(&g.sandbox.database_url).await?;
    eventually("the outbox relayed", support::DEADLINE, || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway.outbox").fetch_one(&db).await?;
        Ok((rows == 0).then_some(()))
    })
    .await?;
    db.close().await;
    g.sandbox.take(NOTIFIER_QUEUE.name, 100).await
}

#[tokio::test]
async fn a_published_event_naming_another_job_s_file_or_another_address_changes_nothing_and_mails_no_one()
-> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let (victim, attacker) = (g.user().await?, g.user().await?);
    let theirs = g.accepted(&victim.token, &g.tone("v.wav", 1, 1)?, &[]).await?;
    let mine = g.accepted(&attacker.token, &g.tone("a.wav", 1, 2)?, &[]).await?;
    let (their_file, my_file) = (FileId::from_bytes([1; 12]), FileId::from_bytes([2; 12]));
    g.store.claim_output(Bucket::Audio, theirs.parse()?, &their_file).await?;
    let publisher = g.bus.publisher().await?;
    // The attacker's job pointed at the victim's MP3: not the output the store holds for it.
    publisher.publish(&converted_event(&mine, &attacker, &their_file)?).await?;
    // The victim's job, with its real output, but the attacker's address as the owner's.
    let mut redirected = converted_event(&theirs, &victim, &their_file)?;
    redirected.owner.email = attacker.email.parse()?;
    publisher.publish(&redirected).await?;
    assert_eq!(outcomes_after(&g, 2).await?, Vec::<Value>::new(), "a forged event was passed on to the notifier");
    assert_eq!(g.job(&attacker.token, &mine).await?["state"], "queued", "the forged event changed the job");
    assert_eq!(g.job(&victim.token, &theirs).await?["state"], "queued", "the redirected event changed the job");

    // Then the converter's real event for the attacker's job: applied, and passed on with the
    // job's own owner.
    g.store.claim_output(Bucket::Audio, mine.parse()?, &my_file).await?;
    publisher.publish(&converted_event(&mine, &attacker, &my_file)?).await?;
    let job = g.wait_for_state(&attacker.token, &mine, "converted").await?;
    assert_eq!(job["output"]["file_id"], my_file.to_string());
    let outcomes = outcomes_after(&g, 3).await?;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0]["job_id"], mine);
    assert_eq!(outcomes[0]["owner"]["email"], attacker.email);
    assert_eq!(outcomes[0]["output"]["file_id"], my_file.to_string());
    // Announced again (a redelivered job), it is passed on no second time.
    publisher.publish(&converted_event(&mine, &attacker, &my_file)?).await?;
    assert_eq!(outcomes_after(&g, 4).await?, Vec::<Value>::new(), "a repeated outcome was passed on again");
    assert_eq!(g.job(&victim.token, &theirs).await?["state"], "queued");
    g.stop().await
}

#[tokio::test]
async fn retention_removes_old_originals_and_mp3s_and_the_job_says_expired() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options {
        tweak: Box::new(|c| {
            c.retention.originals = Duration::from_secs(1);
            c.retention.outputs = Duration::from_secs(2);
            c.retention.every = Duration::from_millis(200);
        }),
        ..Default::default()
    })
    .await?;
    let user = g.user().await?;
    let id = g.accepted(&user.token, &g.tone("t.wav", 1, 1)?, &[]).await?;
    // No converter here: this one stays queued, and retention must leave its original alone.
    let queued = g.accepted(&user.token, &g.tone("q.wav", 1, 2)?, &[]).await?;
    // Stand in for the converter: its `media.converted`, then the MP3 in the audio bucket. In
    // that order, so the MP3 cannot reach its age limit before the job says `converted`.
    let job_id = id.parse()?;
    let file_id = FileId::from_bytes([7; 12]);
    let mp3_size = 1000;
    let event = converted_event(&id, &user, &file_id)?;
    g.store.claim_output(Bucket::Audio, job_id, &file_id).await?;
    g.bus.publisher().await?.publish(&event).await?;
    g.wait_for_state(&user.token, &id, "converted").await?;
    let mp3 = g.scratch.join("out.mp3");
    tokio::fs::write(&mp3, vec![0u8; mp3_size as usize]).await?;
    g.store.store_path(Bucket::Audio, file_id, "t.mp3", Default::default(), &mp3).await?;
    let job = g.wait_for_state(&user.token, &id, "expired").await?;
    eventually("the converted job's original and MP3 removed", support::DEADLINE, || async {
        let (uploads, audio) = (g.gridfs_counts(Bucket::Uploads).await?, g.gridfs_counts(Bucket::Audio).await?);
        Ok((uploads.0 == 1 && audio == (0, 0)).then_some(()))
    })
    .await?;
    let still_queued = g.job(&user.token, &queued).await?;
    assert_eq!(still_queued["state"], "queued");
    let db = sqlx::PgPool::connect(&g.sandbox.database_url).await?;
    let original: String = sqlx::query_scalar("SELECT source_file_id FROM gateway.jobs WHERE id = $1::uuid")
        .bind(&queued)
        .fetch_one(&db)
        .await?;
    let kept = g.store.info(Bucket::Uploads, &original.parse()?).await?;
    assert!(kept.is_some(), "retention removed the original of a job still queued");
    // The catalog is told the expired track is gone.
    wait_for_message(&g, "catalog-indexer.media-converted", serde_json::json!({"job_id": id})).await?;
    let file = job["output"]["file_id"].as_str().context("file id")?;
    let r = g.http.get(g.at(&format!("/v1/files/{file}"))).bearer_auth(&user.token).send().await?;
    assert_eq!(r.status(), 410);
    assert_eq!(r.json::<Value>().await?["error"], "expired");
    g.stop().await
}
