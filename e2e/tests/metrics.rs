//! Each service's `/metrics` after a pipeline run: the counters moved by exactly what the run
//! did (one upload, one conversion, one email, one catalogue entry, no dead letter), and a
//! poison message shows up as one dead letter; an unfinished resumable upload is counted.

use std::net::SocketAddr;

use serde_json::Value;
use tunewire_e2e::{PIPELINE_DEADLINE, Pipeline};
use tunewire_test_stack::eventually;
use tunewire_test_stack::media::ffmpeg;

#[tokio::test]
async fn every_service_counts_what_a_run_did_and_a_poison_message_is_one_dead_letter() -> anyhow::Result<()> {
    let p = Pipeline::start().await?;
    let (email, token) = p.user().await?;
    let song = p.scratch.join("counted.wav");
    let path = song.to_str().unwrap_or_default();
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-c:a", "pcm_s16le", path])?;
    let size = std::fs::metadata(&song)?.len() as f64;

    let r = p.upload(&token, &song, "counted.wav").await?;
    anyhow::ensure!(r.status() == 202, "upload: {}", r.status());
    let job_id = r.json::<Value>().await?["job_id"].as_str().unwrap_or_default().to_owned();
    p.wait_for_state(&token, &job_id, "converted").await?;
    p.emails(&email, 1).await?;

    let h = &p.health;
    assert_eq!(p.metric(&h.gateway, "upload_bytes_total", "").await?, size, "the gateways received the file once");
    let expected: [(&[SocketAddr], &str, &str, f64); 8] = [
        (&h.auth, "account_requests_total", "action=\"register\",outcome=\"ok\"", 1.0),
        (&h.auth, "account_requests_total", "action=\"login\",outcome=\"ok\"", 1.0),
        (&h.auth, "password_hash_duration_seconds_count", "", 2.0),
        (&h.gateway, "upload_duration_seconds_count", "protocol=\"multipart\"", 1.0),
        (&h.converter, "conversions_total", "outcome=\"converted\"", 1.0),
        (&h.converter, "conversion_input_bytes_total", "", size),
        (&h.notifier, "emails_total", "outcome=\"sent\"", 1.0),
        (&h.catalog, "tracks_catalogued_total", "", 1.0),
    ];
    for (replicas, name, labels, wanted) in expected {
        // The email and the catalogue are seen before their own counters may be scraped.
        let got = eventually(&format!("{name}{{{labels}}} = {wanted}"), PIPELINE_DEADLINE, || async {
            let got = p.metric(replicas, name, labels).await?;
            Ok((got >= wanted).then_some(got))
        })
        .await?;
        assert_eq!(got, wanted, "{name}{{{labels}}}");
    }
    assert_eq!(p.metric(&h.converter, "conversions_total", "outcome=\"failed\"").await?, 0.0);
    assert!(p.metric(&h.converter, "messages_acked_total", "").await? >= 1.0, "the converter acked its delivery");
    assert!(p.metric(&h.converter, "message_handler_duration_seconds_count", "").await? >= 1.0, "and timed it");
    let everyone: Vec<SocketAddr> =
        [&h.gateway, &h.converter, &h.notifier, &h.catalog].into_iter().flatten().copied().collect();
    assert_eq!(p.metric(&everyone, "messages_dead_lettered_total", "").await?, 0.0, "no dead letter");
    for replicas in [&h.gateway, &h.auth, &h.converter, &h.notifier, &h.catalog] {
        for replica in replicas.iter() {
            p.http.get(format!("http://{replica}/readyz")).send().await?.error_for_status()?;
        }
        assert!(p.metric(replicas, "dependency_up", "").await? >= 1.0, "readiness is a gauge everywhere");
    }

    // A resumable upload begun and not finished is counted (all gateways see the same count).
    let begun = p
        .http
        .post(format!("{}/v1/tus/", p.gateway))
        .bearer_auth(&token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1000000")
        .header("Upload-Metadata", "filename dW5maW5pc2hlZC53YXY=")
        .send()
        .await?;
    assert_eq!(begun.status(), 201, "tus create");
    let open = eventually("tus_uploads_open counts it", PIPELINE_DEADLINE, || async {
        let open = p.metric(&h.gateway[..1], "tus_uploads_open", "").await?;
        Ok((open >= 1.0).then_some(open))
    })
    .await?;
    assert_eq!(open, 1.0, "one unfinished resumable upload");

    // A message no consumer can read: the converter gives up on it at once.
    p.publish_raw("media.uploaded", b"{\"not\": \"an upload\"}").await?;
    let dead = eventually("the poison message dead-lettered", PIPELINE_DEADLINE, || async {
        let dead = p.metric(&h.converter, "messages_dead_lettered_total", "queue=\"").await?;
        Ok((dead >= 1.0).then_some(dead))
    })
    .await?;
    assert_eq!(dead, 1.0, "one dead letter");
    p.stop().await
}
