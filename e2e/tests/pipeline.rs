//! The whole pipeline, every hop real (see `tunewire_e2e::Pipeline`): the happy path, a
//! failure with its email, and who may see what. Faults have their own suite (tests/faults).

use anyhow::Context;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};
use tunewire_e2e::{Options, PIPELINE_DEADLINE, Pipeline};
use tunewire_test_stack::media::{self, ffmpeg, probe};
use tunewire_test_stack::{Sandbox, eventually, maildev};

/// The converter's limit here: low, so a failure the gateway's probe cannot catch is cheap to make.
const MAX_DURATION_S: f64 = 60.0;

/// The MP3 behind the one link in an email's text part (the link is the web app's page for
/// it).
fn download_link(email: &Value, gateway: &str) -> anyhow::Result<String> {
    let text = email["text"].as_str().context("email without text part")?;
    let page = text.split_whitespace().find(|w| w.contains("/d/")).context("no download link in the email")?;
    anyhow::ensure!(page.starts_with(gateway), "the link {page} is not under the gateway's address {gateway}");
    let token = tunewire_signed_links::token_of_page(page).context("a link page without a token")?;
    Ok(format!("{gateway}{}", tunewire_signed_links::download_path(token)))
}

#[tokio::test]
async fn an_upload_is_converted_emailed_downloadable_searchable_and_never_done_twice() -> anyhow::Result<()> {
    let p = Pipeline::start().await?;
    let (email, token) = p.user().await?;
    let source = p.scratch.join("song.mp4");
    media::h264_aac_mp4(&source, 30, &[("title", "Moonlight Serenade"), ("artist", "Glenn Miller")])?;

    let uploaded_at = std::time::Instant::now();
    let resp = p.upload(&token, &source, "song.mp4").await?;
    assert_eq!(resp.status(), 202);
    let accepted: Value = resp.json().await?;
    let job_id = accepted["job_id"].as_str().context("no job_id")?.to_string();
    assert_eq!(accepted["status_url"], format!("/v1/jobs/{job_id}"));

    let job = p.wait_for_state(&token, &job_id, "converted").await?;
    let file_id = job["output"]["file_id"].as_str().context("no output file")?.to_string();
    assert_eq!(job["source"]["filename"], "song.mp4");

    let mails = p.emails(&email, 1).await?;
    eprintln!("upload response to email: {:?}", uploaded_at.elapsed());
    assert!(mails[0]["subject"].as_str().unwrap_or_default().contains("Moonlight Serenade"));
    let link = download_link(&mails[0], &p.gateway)?;
    let mp3 = reqwest::get(&link).await?;
    assert_eq!(mp3.status(), 200, "the emailed link works without a token");
    assert_eq!(mp3.headers()["content-type"], "audio/mpeg");
    assert!(mp3.headers()["content-disposition"].to_str()?.contains("song.mp3"));
    let out = p.scratch.join("downloaded.mp3");
    tokio::fs::write(&out, mp3.bytes().await?).await?;
    let probed = probe(&out)?;
    assert_eq!(probed["streams"][0]["codec_name"], "mp3");
    assert_eq!(probed["streams"][0]["sample_rate"], "44100");
    assert_eq!(probed["streams"][0]["channels"], 2);
    let duration: f64 = probed["format"]["duration"].as_str().unwrap_or("0").parse()?;
    assert!((duration - 30.0).abs() <= 0.15, "duration {duration}");

    // The owner can fetch it with a token too.
    let owned = p.http.get(format!("{}/v1/files/{file_id}", p.gateway)).bearer_auth(&token).send().await?;
    assert_eq!(owned.status(), 200);

    // Found by a misspelled title, tagged by (fake) Last.fm.
    let hits = eventually("search hit", PIPELINE_DEADLINE, || async {
        let r: Value = p
            .http
            .get(format!("{}/v1/search", p.gateway))
            .query(&[("q", "moonligt serenade")])
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(r["hits"].as_array().filter(|h| !h.is_empty()).cloned())
    })
    .await?;
    assert_eq!(hits[0]["job_id"], job_id.as_str());
    assert_eq!(hits[0]["tags"], json!(["electronic"]));
    let tagged = eventually("job tags", PIPELINE_DEADLINE, || async {
        let job: Value = p.job(&token, &job_id).await?.json().await?;
        Ok((job["tags"] == json!(["electronic"])).then_some(job))
    })
    .await?;
    assert_eq!(tagged["state"], "converted");

    // The same media.uploaded delivered again: no second MP3, email or catalog row.
    let db = sqlx::PgPool::connect(&p.sandbox.database_url).await?;
    let (owner_id, source_file_id, size, sha256): (uuid::Uuid, String, i64, String) = sqlx::query_as(
        "SELECT owner_id, source_file_id, source_size, source_sha256 FROM gateway.jobs WHERE id = $1::uuid",
    )
    .bind(&job_id)
    .fetch_one(&db)
    .await?;
    let event = json!({
        "job_id": job_id, "preset": "cbr192", "overrides": {},
        "owner": {"id": owner_id, "email": email},
        "source": {"file_id": source_file_id, "filename": "song.mp4", "size": size, "sha256": sha256},
    });
    // The management figures lag by seconds: the first delivery's ack is counted before the
    // baseline is taken, or the barrier below could be met by it.
    let catalog_acks_before = eventually("the first media.converted's ack counted", PIPELINE_DEADLINE, || async {
        let acks = acked(&p.sandbox, "catalog-indexer.media-converted").await?;
        Ok((acks >= 1).then_some(acks))
    })
    .await?;
    p.publish_raw("media.uploaded", &serde_json::to_vec(&event)?).await?;
    // The converter announces its claimed MP3 again; the catalog has handled that once its ack
    // count moves on. The gateway got the same announcement: an outcome it passed on to the
    // notifier would sit in its outbox until relayed.
    eventually("the catalog to handle the announcement again", PIPELINE_DEADLINE, || async {
        Ok((acked(&p.sandbox, "catalog-indexer.media-converted").await? > catalog_acks_before).then_some(()))
    })
    .await?;
    eventually("the gateway's outbox relayed", PIPELINE_DEADLINE, || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway.outbox").fetch_one(&db).await?;
        Ok((rows == 0).then_some(()))
    })
    .await?;
    assert_eq!(maildev::messages_to(&p.sandbox.stack.maildev_url, &email).await?.len(), 1, "one email");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM catalog.tracks WHERE job_id = $1::uuid")
        .bind(&job_id)
        .fetch_one(&db)
        .await?;
    assert_eq!(rows, 1, "one catalog row");
    let mongo = mongodb::Client::with_uri_str(&p.sandbox.stack.mongo_uri).await?;
    let mp3s = mongo
        .database(&p.sandbox.mongo_database(tunewire_media_store::Bucket::Audio))
        .collection::<mongodb::bson::Document>("audio.files")
        .count_documents(mongodb::bson::doc! {"metadata.job_id": &job_id})
        .await?;
    assert_eq!(mp3s, 1, "one MP3");

    // Nothing left unacknowledged on the pipeline's queues.
    let queues = eventually("queues to drain", PIPELINE_DEADLINE, || async {
        let queues = p.sandbox.queues().await?;
        let busy = queues
            .iter()
            .any(|q| q["messages_unacknowledged"].as_u64().unwrap_or(0) > 0 || q["messages"].as_u64().unwrap_or(0) > 0);
        Ok((!busy && queues.len() >= 8).then_some(queues))
    })
    .await?;
    let names: Vec<&str> = queues.iter().filter_map(|q| q["name"].as_str()).collect();
    for expected in
        ["converter.media-uploaded", "catalog-indexer.media-converted", "notifier.outcomes", "gateway.job-state"]
    {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
        assert!(names.contains(&format!("{expected}.dead").as_str()), "{expected}.dead missing");
    }
    db.close().await;
    p.stop().await
}

/// Acknowledgements counted by the management API for one queue (0 before any).
async fn acked(sandbox: &Sandbox, queue: &str) -> anyhow::Result<u64> {
    sandbox.queue_stat(queue, "ack").await
}

#[tokio::test]
async fn not_media_is_refused_at_upload_and_too_long_media_fails_with_a_reason_and_an_email() -> anyhow::Result<()> {
    let p = Pipeline::start_with(Options { max_duration_s: MAX_DURATION_S, ..Options::default() }).await?;
    let (email, token) = p.user().await?;
    let notes = p.scratch.join("notes.mp4");
    tokio::fs::write(&notes, b"<html><body>this is not a video</body></html>").await?;
    let resp = p.upload(&token, &notes, "notes.mp4").await?;
    assert_eq!(resp.status(), 415);
    assert_eq!(resp.json::<Value>().await?["error"], "not_media");

    // Media the probe accepts but the converter refuses: longer than its limit.
    let long = p.scratch.join("long.wav");
    let spec = format!("sine=frequency=300:duration={}:sample_rate=8000", MAX_DURATION_S + 30.0);
    ffmpeg(&["-f", "lavfi", "-i", &spec, "-ac", "1", long.to_str().context("path")?])?;
    let resp = p.upload(&token, &long, "long.wav").await?;
    assert_eq!(resp.status(), 202);
    let job_id = resp.json::<Value>().await?["job_id"].as_str().context("no job id")?.to_string();
    let job = p.wait_for_state(&token, &job_id, "failed").await?;
    assert!(job["error"].as_str().is_some_and(|e| e.contains("longer than the 60 s limit")), "{job}");
    let mails = p.emails(&email, 1).await?;
    assert!(mails[0]["subject"].as_str().unwrap_or_default().contains("long.wav"));
    assert!(mails[0]["text"].as_str().unwrap_or_default().contains("longer than the 60 s limit"));
    p.stop().await
}

#[tokio::test]
async fn tokens_and_ownership_are_enforced() -> anyhow::Result<()> {
    let p = Pipeline::start().await?;
    let (_, alice) = p.user().await?;
    let (_, bob) = p.user().await?;
    let clip = p.scratch.join("clip.wav");
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=500:duration=2", clip.to_str().context("path")?])?;
    let job_id = p.upload(&alice, &clip, "clip.wav").await?.json::<Value>().await?["job_id"]
        .as_str()
        .context("no job")?
        .to_string();
    let job = p.wait_for_state(&alice, &job_id, "converted").await?;
    let file_id = job["output"]["file_id"].as_str().context("no file")?.to_string();

    let no_token = p.http.get(format!("{}/v1/jobs/{job_id}", p.gateway)).send().await?;
    assert_eq!(no_token.status(), 401);
    let body: Value = no_token.json().await?;
    assert_eq!(body["error"], "unauthorized");
    let forged = p.http.get(format!("{}/v1/jobs/{job_id}", p.gateway)).bearer_auth(format!("{alice}x")).send().await?;
    assert_eq!(forged.status(), 401);
    let garbage = p.http.get(format!("{}/v1/jobs/{job_id}", p.gateway)).bearer_auth("not.a.token").send().await?;
    assert_eq!(garbage.status(), 401);
    assert_eq!(p.job(&bob, &job_id).await?.status(), 404, "bob cannot see alice's job");
    let bobs_try = p.http.get(format!("{}/v1/files/{file_id}", p.gateway)).bearer_auth(&bob).send().await?;
    assert_eq!(bobs_try.status(), 404, "bob cannot download alice's file");
    let list: Value = p.http.get(format!("{}/v1/jobs", p.gateway)).bearer_auth(&bob).send().await?.json().await?;
    assert_eq!(list["jobs"], json!([]));
    let tampered = p.http.get(format!("{}/v1/downloads/abc.def", p.gateway)).send().await?;
    assert_eq!(tampered.status(), 403);
    p.stop().await
}

/// Whether `result` is RabbitMQ's or PostgreSQL's refusal for want of a permission.
fn refused<T>(result: Result<T, impl std::fmt::Debug>) -> bool {
    match result {
        Ok(_) => false,
        Err(e) => {
            let text = format!("{e:?}");
            ["ACCESSREFUSED", "ACCESS_REFUSED", "42501", "Unauthorized"].iter().any(|code| text.contains(code))
        }
    }
}

#[tokio::test]
async fn each_service_s_own_login_is_refused_on_another_s_schema_queues_and_bucket() -> anyhow::Result<()> {
    use lapin::options::{BasicGetOptions, QueueDeleteOptions};
    use tunewire_contract::{JobConverted, MediaProgress};
    use tunewire_contract::{Owner, TrackTags};
    use tunewire_events::Bus;
    use tunewire_events::topology::{self, ALL_QUEUES, SERVICES};

    // The services run with their own logins here, as in production: every schema is made.
    let p = Pipeline::start().await?;
    let tables = [
        ("auth", "auth.users"),
        ("gateway", "gateway.jobs"),
        ("catalog-indexer", "catalog.tracks"),
        ("notifier", "notifier.deliveries"),
    ];
    for (service, own) in tables {
        let db = sqlx::PgPool::connect(&p.sandbox.database_url_for(service)?).await?;
        let count = format!("SELECT count(*) FROM {own}");
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(count))
            .fetch_one(&db)
            .await
            .with_context(|| format!("{service} reads {own}"))?;
        for (_, theirs) in tables.iter().filter(|(other, _)| *other != service) {
            let count = format!("SELECT count(*) FROM {theirs}");
            let read = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(count)).fetch_one(&db).await;
            assert!(refused(read), "{service} read {theirs}");
        }
        assert!(refused(sqlx::query("CREATE SCHEMA intruder").execute(&db).await), "{service} made a schema");
        assert!(
            refused(sqlx::query("CREATE TABLE public.intruder (x int)").execute(&db).await),
            "{service} wrote public"
        );
        db.close().await;
    }

    for service in SERVICES {
        let connection = Connection::connect(&p.sandbox.amqp_url_for(service), ConnectionProperties::default()).await?;
        for queue in ALL_QUEUES.iter().filter(|q| !service.consumes.contains(q)) {
            let channel = connection.create_channel().await?;
            let got = channel.basic_get(queue.name.into(), BasicGetOptions { no_ack: true }).await;
            assert!(refused(got), "{} read {}", service.user, queue.name);
            let channel = connection.create_channel().await?;
            let deleted = channel.queue_delete(queue.name.into(), QueueDeleteOptions::default()).await;
            assert!(refused(deleted), "{} deleted {}", service.user, queue.name);
        }
        // Nor tap another's dead letters by binding its own queue to the dead-letter exchange.
        let channel = connection.create_channel().await?;
        let tapped = channel
            .queue_bind(
                service.consumes[0].name.into(),
                topology::DEAD_LETTER_EXCHANGE.into(),
                "gateway.job-state".into(),
                Default::default(),
                Default::default(),
            )
            .await;
        assert!(refused(tapped), "{} bound its queue to the dead letters", service.user);
        let channel = connection.create_channel().await?;
        let durable = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
        let declared = channel
            .exchange_declare(topology::EVENTS_EXCHANGE.into(), lapin::ExchangeKind::Topic, durable, Default::default())
            .await;
        assert!(refused(declared), "{} may redeclare (and so delete) the events exchange", service.user);
        let _ = connection.close(200, "done".into()).await;
    }

    // Only the gateway vouches for outcomes: the converter may say how far it got, not that a
    // job converted.
    let converter = Bus::new(p.sandbox.amqp_url_for(topology::CONVERTER), "intruder");
    let job_id = tunewire_contract::JobId::new();
    converter.publisher().await?.publish(&MediaProgress { job_id, progress: 0.5 }).await?;
    let outcome = JobConverted(tunewire_contract::MediaConverted {
        job_id,
        owner: Owner { id: tunewire_contract::UserId::new(), email: "someone@example.com".parse()? },
        source_filename: "x.wav".into(),
        preset: Default::default(),
        output: tunewire_contract::AudioOutput {
            file_id: tunewire_contract::FileId::from_bytes([9; 12]),
            size: 1,
            duration_s: 1.0,
            bitrate: 1,
            sample_rate: 1,
            channels: 1,
        },
        tags: TrackTags::default(),
        source_facts: Default::default(),
    });
    let forged = converter.publisher().await?.publish(&outcome).await;
    assert!(refused(forged), "the converter published job.converted");

    // The monitoring login sees the queues' figures, and no message.
    let (user, password) = &p.sandbox.stack.monitor_user;
    let queues: Vec<Value> = p
        .http
        .get(format!("{}/api/queues/{}", p.sandbox.stack.management_url, p.sandbox.vhost))
        .basic_auth(user, Some(password))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert!(queues.iter().any(|q| q["name"] == "gateway.job-state"), "{queues:?}");
    let monitor_url = p.sandbox.amqp_url.replacen(
        &format!("{}:{}@", p.sandbox.stack.management_user.0, p.sandbox.stack.management_user.1),
        &format!("{user}:{password}@"),
        1,
    );
    let connection = Connection::connect(&monitor_url, ConnectionProperties::default()).await?;
    let got = connection
        .create_channel()
        .await?
        .basic_get("gateway.job-state".into(), BasicGetOptions { no_ack: true })
        .await;
    assert!(refused(got), "the monitor read a message");
    let _ = connection.close(200, "done".into()).await;

    // The media store: the gateway writes originals and reads MP3s, the converter the other
    // way round and alone keeps the MP3s' bookkeeping; neither may make an index (a TTL one
    // removes documents) or reach another database, and nobody reads without a login.
    use mongodb::bson::{Document, doc};
    use tunewire_media_store::Bucket;
    use tunewire_media_store::access::Account;
    let sandbox = &p.sandbox;
    let collection = |uri: String, database: String, name: String| async move {
        anyhow::Ok(mongodb::Client::with_uri_str(uri).await?.database(&database).collection::<Document>(&name))
    };
    for (account, writes, reads) in
        [(Account::Gateway, Bucket::Uploads, Bucket::Audio), (Account::Converter, Bucket::Audio, Bucket::Uploads)]
    {
        let uri = sandbox.mongo_uri_for(account);
        let own = collection(uri.clone(), sandbox.mongo_database(writes), format!("{}.files", writes.name())).await?;
        own.insert_one(doc! {"by": account.service()})
            .await
            .with_context(|| format!("{account:?} writes {writes:?}"))?;
        own.delete_many(doc! {"by": account.service()}).await?;
        let files = collection(uri.clone(), sandbox.mongo_database(reads), format!("{}.files", reads.name())).await?;
        files.count_documents(doc! {}).await.with_context(|| format!("{account:?} reads {reads:?}"))?;
        assert!(refused(files.insert_one(doc! {"forged": true}).await), "{account:?} wrote {reads:?}");
        let chunks = collection(uri.clone(), sandbox.mongo_database(reads), format!("{}.chunks", reads.name())).await?;
        let changed = chunks.update_many(doc! {}, doc! {"$set": {"data": "forged"}}).await;
        assert!(refused(changed), "{account:?} changed {reads:?}");
        for bucket in [writes, reads] {
            let files =
                collection(uri.clone(), sandbox.mongo_database(bucket), format!("{}.files", bucket.name())).await?;
            let ttl = mongodb::options::IndexOptions::builder().expire_after(std::time::Duration::ZERO).build();
            let index = mongodb::IndexModel::builder().keys(doc! {"uploadDate": 1}).options(ttl).build();
            assert!(refused(files.create_index(index).await), "{account:?} made an index on {bucket:?}");
        }
        let elsewhere = collection(uri, format!("{}-intruder", sandbox.mongo_prefix), "x".into()).await?;
        assert!(refused(elsewhere.count_documents(doc! {}).await), "{account:?} read another database");
        assert!(refused(elsewhere.insert_one(doc! {}).await), "{account:?} wrote another database");
    }
    let uploads = sandbox.mongo_database(Bucket::Uploads);
    let originals =
        collection(sandbox.mongo_uri_for(Account::Converter), uploads.clone(), "uploads.files".into()).await?;
    assert!(refused(originals.delete_many(doc! {}).await), "the converter removed originals");
    let outputs = sandbox.mongo_outputs_database(Bucket::Audio);
    let claims = collection(sandbox.mongo_uri_for(Account::Gateway), outputs, "audio_outputs".into()).await?;
    claims.count_documents(doc! {}).await.context("the gateway reads which file is a job's MP3")?;
    assert!(refused(claims.delete_many(doc! {}).await), "the gateway removed the converter's claims");
    assert!(refused(claims.insert_one(doc! {"_id": "forged"}).await), "the gateway claimed an output");
    let (_, host) = sandbox.stack.mongo_uri.split_once('@').context("the stack's MongoDB URI has a login")?;
    let anonymous = collection(format!("mongodb://{host}"), uploads, "uploads.files".into()).await?;
    assert!(refused(anonymous.count_documents(doc! {}).await), "read without a login");
    p.stop().await
}
