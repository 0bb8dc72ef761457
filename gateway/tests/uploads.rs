//! Uploads against the real stack: multipart and raw bodies, limits, FFmpeg's sniffing,
//! deduplication, and the outbox keeping uploads alive while RabbitMQ is away.

mod support;

use anyhow::Context;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{Gateway, Options};
use tunewire_media_store::Bucket;
use tunewire_test_stack::eventually;
use tunewire_test_stack::media::ffmpeg;
use tunewire_test_stack::proxy::{Proxy, host_port};

#[tokio::test]
async fn a_multipart_upload_is_stored_hashed_and_queued_with_its_details() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let user = g.user().await?;
    let tone = g.tone("tone.wav", 2, 1)?;
    let bytes = tokio::fs::read(&tone).await?;
    let fields = [("title", "Night Drive"), ("artist", "Kavinsky"), ("album", "OutRun"), ("preset", "v0")];
    let r = g.upload(&user.token, &tone, &fields).await?;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await?;
    let job_id = body["job_id"].as_str().context("job_id")?;
    assert_eq!(body["status_url"], format!("/v1/jobs/{job_id}"));
    assert_eq!(body["duplicate"], false);

    let job = g.job(&user.token, job_id).await?;
    assert_eq!(job["state"], "queued");
    assert_eq!(job["preset"], "v0");
    assert_eq!(job["source"]["filename"], "tone.wav");
    assert_eq!(job["source"]["size"], bytes.len());
    assert_eq!(job["source"]["sha256"], hex::encode(Sha256::digest(&bytes)));
    assert_eq!(g.gridfs_counts(Bucket::Uploads).await?.0, 1);

    // The event on the converter's queue carries the preset and the details.
    let queue = "converter.media-uploaded";
    let event = eventually("media.uploaded queued", support::DEADLINE, || async {
        Ok(g.sandbox.take(queue, 1).await?.into_iter().next())
    })
    .await?;
    assert_eq!(event["job_id"], job_id);
    assert_eq!(event["preset"], "v0");
    assert_eq!(event["overrides"]["title"], "Night Drive");
    assert_eq!(event["overrides"]["album"], "OutRun");
    g.stop().await
}

#[tokio::test]
async fn a_raw_body_upload_takes_its_name_from_a_header_and_details_from_the_query() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let user = g.user().await?;
    let bytes = tokio::fs::read(g.tone("tone.wav", 2, 2)?).await?;
    let r = g
        .http
        .put(g.at("/v1/uploads?preset=cbr320&title=Caf%C3%A9"))
        .bearer_auth(&user.token)
        .header("content-type", "audio/wav")
        .header("x-filename", "Caf%C3%A9%20live.wav")
        .body(bytes.clone())
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    let job = g.job(&user.token, r.json::<Value>().await?["job_id"].as_str().context("job_id")?).await?;
    assert_eq!(job["source"]["filename"], "Café live.wav");
    assert_eq!(job["preset"], "cbr320");

    let other = tokio::fs::read(g.tone("other.wav", 2, 3)?).await?;
    let r = g
        .http
        .post(g.at("/v1/uploads"))
        .bearer_auth(&user.token)
        .header("content-type", "application/octet-stream")
        .header("content-disposition", "attachment; filename=\"other.wav\"")
        .body(other.clone())
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    let job = g.job(&user.token, r.json::<Value>().await?["job_id"].as_str().context("job_id")?).await?;
    assert_eq!((job["source"]["filename"].as_str(), job["preset"].as_str()), (Some("other.wav"), Some("cbr192")));

    let r = g.http.post(g.at("/v1/uploads")).bearer_auth(&user.token).body(other).send().await?;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await?["error"], "missing_filename");
    g.stop().await
}

#[tokio::test]
async fn bad_details_are_refused_and_leave_nothing_behind() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let user = g.user().await?;
    let bytes = tokio::fs::read(g.tone("tone.wav", 1, 4)?).await?;
    let long = "x".repeat(2000);
    for (fields, code) in [
        (vec![("preset", "cbr999")], "invalid_preset"),
        (vec![("loudnorm", "loud")], "invalid_loudnorm"),
        (vec![("colour", "blue")], "unknown_field"),
        (vec![("title", long.as_str())], "field_too_long"),
    ] {
        let r = g.upload_bytes(&user.token, bytes.clone(), "tone.wav", &fields).await?;
        assert_eq!(r.status(), 400, "{fields:?}");
        let body: Value = r.json().await?;
        assert_eq!(body["error"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let form = reqwest::multipart::Form::new().text("title", "no file");
    let r = g.http.post(g.at("/v1/uploads")).bearer_auth(&user.token).multipart(form).send().await?;
    assert_eq!((r.status().as_u16(), r.json::<Value>().await?["error"].clone()), (400, "missing_file".into()));
    let r = g
        .http
        .put(g.at("/v1/uploads?preset=loud"))
        .bearer_auth(&user.token)
        .header("x-filename", "a.wav")
        .body(bytes)
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    assert_eq!(g.gridfs_counts(Bucket::Uploads).await?, (0, 0));
    g.stop().await
}

#[tokio::test]
async fn an_upload_over_the_limit_is_413_naming_it_and_leaves_nothing_in_gridfs() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options { tweak: Box::new(|c| c.max_upload_bytes = 1 << 20), ..Default::default() })
        .await?;
    let user = g.user().await?;
    let big = vec![7u8; 3 << 20];
    let r = g.upload_bytes(&user.token, big.clone(), "big.wav", &[]).await?;
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "payload_too_large");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("1048576 bytes") && m.contains("1 MiB")), "{body}");

    // A raw body announcing its size is refused before it is read.
    let r = g
        .http
        .put(g.at("/v1/uploads"))
        .bearer_auth(&user.token)
        .header("x-filename", "big.wav")
        .body(big.clone())
        .send()
        .await?;
    assert_eq!(r.status(), 413);
    // Without a length (chunked), the limit holds while streaming.
    let stream = futures_util::stream::iter(
        big.chunks(64 * 1024).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
    );
    let r = g
        .http
        .put(g.at("/v1/uploads"))
        .bearer_auth(&user.token)
        .header("x-filename", "big.wav")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?;
    assert_eq!(r.status(), 413);
    assert_eq!(g.gridfs_counts(Bucket::Uploads).await?, (0, 0));
    g.stop().await
}

#[tokio::test]
async fn what_is_not_media_or_has_no_sound_is_415_saying_which() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let user = g.user().await?;
    let r = g.upload_bytes(&user.token, b"<html>not a song</html>".repeat(100), "song.mp3", &[]).await?;
    assert_eq!(r.status(), 415);
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "not_media");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("song.mp3")), "{body}");

    let silent = g.scratch.join("silent.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=duration=1:size=64x64:rate=5",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        silent.to_str().context("path")?,
    ])?;
    let r = g.upload(&user.token, &silent, &[]).await?;
    assert_eq!(r.status(), 415);
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "no_audio_stream");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("no audio stream")), "{body}");
    assert_eq!(g.gridfs_counts(Bucket::Uploads).await?, (0, 0));
    g.stop().await
}

#[tokio::test]
async fn the_same_bytes_and_preset_from_the_same_user_give_the_existing_job() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let (alice, bob) = (g.user().await?, g.user().await?);
    let tone = g.tone("tone.wav", 1, 5)?;
    let first = g.accepted(&alice.token, &tone, &[]).await?;
    let again = g.upload(&alice.token, &tone, &[("title", "renamed")]).await?;
    assert_eq!(again.status(), 200);
    let body: Value = again.json().await?;
    assert_eq!((body["job_id"].as_str(), body["duplicate"].as_bool()), (Some(first.as_str()), Some(true)));
    let other_preset = g.accepted(&alice.token, &tone, &[("preset", "v2")]).await?;
    assert_ne!(other_preset, first);
    let bobs = g.accepted(&bob.token, &tone, &[]).await?;
    assert_ne!(bobs, first);
    assert_eq!(g.gridfs_counts(Bucket::Uploads).await?.0, 3, "the duplicate's bytes are not kept");
    g.stop().await
}

#[tokio::test]
async fn uploads_are_accepted_while_rabbitmq_is_away_and_flow_when_it_returns() -> anyhow::Result<()> {
    let target = host_port(&tunewire_test_stack::Stack::from_env().amqp_url);
    let proxy = Proxy::start(target).await?;
    let g = Gateway::start_with(Options { amqp_via: Some(proxy.addr.to_string()), ..Default::default() }).await?;
    let user = g.user().await?;
    // The topology exists (the gateway declared it on its first connection); now cut RabbitMQ off.
    eventually("topology declared", support::DEADLINE, || async {
        Ok(g.sandbox.queues().await?.iter().any(|q| q["name"] == "converter.media-uploaded").then_some(()))
    })
    .await?;
    proxy.down();
    let mut jobs = Vec::new();
    for seed in 0..3 {
        let tone = g.tone(&format!("t{seed}.wav"), 1, 10 + seed)?;
        jobs.push(g.accepted(&user.token, &tone, &[]).await?);
    }
    // Every accepted upload waits in the outbox, committed with its job.
    let db = sqlx::PgPool::connect(&g.sandbox.database_url).await?;
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway.outbox").fetch_one(&db).await?;
    assert_eq!(waiting, 3);
    // And the gateway stays in its Service: ready, saying what is missing.
    let ready = g.http.get(g.at("/readyz")).send().await?;
    assert_eq!(ready.status(), 200);
    let report: Value = ready.json().await?;
    assert!(report["notes"]["rabbitmq"].is_string(), "no rabbitmq note in {report}");
    assert_ne!(report["checks"]["rabbitmq"], "ok");
    eventually("the outbox's depth in /metrics", support::DEADLINE, || async {
        let text = g.http.get(g.at("/metrics")).send().await?.text().await?;
        Ok(text.lines().any(|l| l == "outbox_events 3").then_some(()))
    })
    .await?;
    proxy.up();
    let delivered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    eventually("the outbox drained", support::DEADLINE, || {
        let delivered = delivered.clone();
        let taken = g.sandbox.take("converter.media-uploaded", 10);
        async move {
            let taken = taken.await?;
            let mut all = delivered.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            all.extend(taken);
            Ok((all.len() >= 3).then_some(()))
        }
    })
    .await?;
    let delivered = delivered.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    // The relay deletes its batch once every confirm is in, a moment after the last delivery.
    eventually("the outbox emptied", support::DEADLINE, || async {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway.outbox").fetch_one(&db).await?;
        Ok((waiting == 0).then_some(()))
    })
    .await?;
    let mut ids: Vec<&str> = delivered.iter().filter_map(|m| m["job_id"].as_str()).collect();
    ids.sort();
    let mut expected: Vec<&str> = jobs.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(ids, expected);
    g.stop().await
}

/// FFmpeg dying inside a hostile file (simulated: a probe program that aborts on uploads of
/// one size and is the real probe otherwise) costs that upload a 415, and an upload in
/// flight at the same moment goes on to be accepted.
#[tokio::test]
async fn a_probe_that_crashes_costs_its_upload_and_nothing_else() -> anyhow::Result<()> {
    const CRASHING_LEN: usize = 4321;
    let dir = std::env::temp_dir().join(format!("tw-probe-crash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let program = dir.join("probe-that-crashes");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\nif [ \"$2\" = \"{CRASHING_LEN}\" ]; then kill -ABRT $$; fi\nexec '{}' \"$@\"\n",
            env!("CARGO_BIN_EXE_tunewire-gateway")
        ),
    )?;
    std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let probe_program = program.clone();
    let g = Gateway::start_with(Options {
        tweak: Box::new(move |c| c.probe_program = probe_program),
        ..Options::default()
    })
    .await?;
    let user = g.user().await?;

    // A real upload, half sent when the other one crashes its probe.
    let tone = tokio::fs::read(g.tone("in-flight.wav", 4, 11)?).await?;
    let (half, rest) = tone.split_at(tone.len() / 2);
    let (feed, body) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let body = futures_util::stream::unfold(body, |mut body| async move { body.recv().await.map(|item| (item, body)) });
    let in_flight = tokio::spawn(
        g.http
            .put(g.at("/v1/uploads"))
            .bearer_auth(&user.token)
            .header("content-type", "application/octet-stream")
            .header("x-filename", "in-flight.wav")
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    feed.send(Ok(half.to_vec())).await?;

    let r = g.upload_bytes(&user.token, vec![7u8; CRASHING_LEN], "hostile.mp4", &[]).await?;
    assert_eq!(r.status(), 415);
    let refusal: Value = r.json().await?;
    assert_eq!(refusal["error"], "not_media");
    let message = refusal["message"].as_str().unwrap_or_default();
    assert!(message.contains("could not be read safely"), "{message}");

    feed.send(Ok(rest.to_vec())).await?;
    drop(feed);
    let r = in_flight.await??;
    assert_eq!(r.status(), 202, "{}", r.text().await?);
    // The crashed upload left nothing behind: one original, the one accepted.
    assert_eq!(g.gridfs_counts(Bucket::Uploads).await?.0, 1);
    let _ = std::fs::remove_dir_all(&dir);
    g.stop().await
}
