//! The gateway's door under pressure: uploads in flight and event streams capped per user and
//! per process, and refusals that reach clients which send their whole body before reading the
//! answer.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use serde_json::Value;
use support::{Gateway, Options};
use tunewire_contract::MediaFailed;
use tunewire_contract::Owner;
use tunewire_gateway::places::Limits;
use tunewire_service_runtime::config::ExposeSecret;
use tunewire_test_stack::bench::MeasuredService;
use tunewire_test_stack::eventually;

/// Sends `head` and then `body` in full over a plain socket before reading a byte, as
/// Python's urllib does, and returns the status line and the body of the answer.
async fn send_all_then_read(addr: String, head: String, body: Vec<u8>) -> anyhow::Result<(String, String)> {
    tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || -> anyhow::Result<(String, String)> {
        let mut socket = std::net::TcpStream::connect(addr)?;
        socket.set_read_timeout(Some(Duration::from_secs(30)))?;
        socket.write_all(head.as_bytes())?;
        socket.write_all(&body)?;
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer)?;
        let answer = String::from_utf8_lossy(&answer).to_string();
        let status = answer.lines().next().unwrap_or_default().to_string();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        Ok((status, body))
    })
    .await?
}

fn host(g: &Gateway) -> String {
    g.url.trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn a_refused_upload_reaches_a_client_that_sends_its_whole_body_first() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let body = vec![b'x'; 8 << 20];
    let boundary = "tunewireboundary";
    let mut form = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n")
        .into_bytes();
    form.extend_from_slice(&body);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let cases = [
        (
            "raw",
            format!(
                "PUT /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\nX-Filename: a.wav\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body.clone(),
        ),
        (
            "multipart",
            format!(
                "POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                form.len()
            ),
            form,
        ),
    ];
    for (what, head, body) in cases {
        let (status, answer) = send_all_then_read(host(&g), head, body).await?;
        assert!(status.contains(" 401 "), "{what}: {status}");
        let answer: Value = serde_json::from_str(&answer).with_context(|| format!("{what}: {answer}"))?;
        assert_eq!(answer["error"], "unauthorized", "{what}");
    }
    g.stop().await
}

#[tokio::test]
async fn a_client_that_expects_100_continue_is_refused_before_it_sends_the_body() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let head = "PUT /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\nX-Filename: a.wav\r\nContent-Length: 104857600\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n";
    let (status, answer) = send_all_then_read(host(&g), head.to_string(), Vec::new()).await?;
    assert!(status.contains(" 401 "), "no 100 Continue, the refusal at once: {status}");
    assert_eq!(serde_json::from_str::<Value>(&answer)?["error"], "unauthorized");
    // A multipart form declaring more than the limit is refused before its body, too.
    let user = g.user().await?;
    let head = format!(
        "POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        user.token,
        g.config.max_upload_bytes + (8 << 20)
    );
    let (status, answer) = send_all_then_read(host(&g), head, Vec::new()).await?;
    assert!(status.contains(" 413 "), "{status}");
    assert_eq!(serde_json::from_str::<Value>(&answer)?["error"], "payload_too_large");
    g.stop().await
}

#[tokio::test]
async fn fifty_uploads_at_once_from_one_user_get_eight_places_and_the_rest_429() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options {
        tweak: Box::new(|c| {
            c.upload_limits = Limits { per_process: 48, per_user: 8 };
            // All fifty stay queued (no converter here): the jobs quota is not what is tested.
            c.quotas.jobs_in_progress = 100;
        }),
        ..Default::default()
    })
    .await?;
    let user = g.user().await?;
    let mut files = Vec::new();
    for seed in 0..50 {
        files.push(tokio::fs::read(g.tone(&format!("t{seed}.wav"), 1, seed)?).await?);
    }
    // Each body sends its file, then holds the upload open until the gate opens, so all
    // fifty are in flight together.
    let (open, gate) = tokio::sync::watch::channel(false);
    let upload = |bytes: Vec<u8>| {
        let mut gate = gate.clone();
        let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) }).chain(
            futures_util::stream::once(async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok(Vec::new())
            }),
        );
        g.http
            .put(g.at("/v1/uploads"))
            .bearer_auth(&user.token)
            .header("x-filename", "tone.wav")
            .body(reqwest::Body::wrap_stream(body))
            .send()
    };
    use futures_util::StreamExt;
    let mut answers: futures_util::stream::FuturesUnordered<_> =
        files.iter().cloned().enumerate().map(|(i, f)| async move { (i, upload(f).await) }).collect();
    let mut refused = Vec::new();
    while refused.len() < 42 {
        let (i, answer) = tokio::time::timeout(support::DEADLINE, answers.next())
            .await
            .context("the refusals never came")?
            .context("fewer answers than uploads")?;
        let r = answer?;
        assert_eq!(r.status(), 429, "upload {i} answered before the gate opened");
        let retry_after: u64 = r.headers().get("retry-after").context("Retry-After")?.to_str()?.parse()?;
        assert!(retry_after >= 1);
        let body: Value = r.json().await?;
        assert_eq!(body["error"], "too_many_uploads");
        assert_eq!(body["retry_after_s"], retry_after);
        refused.push(i);
    }
    open.send(true)?;
    while let Some((i, answer)) = answers.next().await {
        assert_eq!(answer?.status(), 202, "upload {i}, admitted, is accepted");
    }
    // Nothing of the refused ones was kept; sent again, they are all accepted.
    assert_eq!(g.gridfs_counts(tunewire_media_store::Bucket::Uploads).await?.0, 8);
    for i in refused {
        let r = g.upload_bytes(&user.token, files[i].clone(), "tone.wav", &[]).await?;
        assert_eq!(r.status(), 202, "upload {i} sent again");
    }
    assert_eq!(g.gridfs_counts(tunewire_media_store::Bucket::Uploads).await?.0, 50);
    drop(answers);
    g.stop().await
}

#[tokio::test]
async fn quotas_of_jobs_in_progress_and_stored_bytes_refuse_with_the_documented_body() -> anyhow::Result<()> {
    use tunewire_gateway::quotas::Quotas;
    // No converter: jobs stay queued, so each counts against the quota.
    let g = Gateway::start_with(Options {
        tweak: Box::new(|c| c.quotas = Quotas { jobs_in_progress: 2, stored_bytes: 200_000 }),
        ..Default::default()
    })
    .await?;
    let user = g.user().await?;
    let me = |token: String| {
        let r = g.http.get(g.at("/v1/me")).bearer_auth(token).send();
        async move { anyhow::Ok(r.await?.error_for_status()?.json::<Value>().await?) }
    };
    let quotas = me(user.token.clone()).await?["quotas"].clone();
    assert_eq!(quotas["jobs_in_progress"], serde_json::json!({"used": 0, "limit": 2}));
    assert_eq!(quotas["stored_bytes"], serde_json::json!({"used": 0, "limit": 200_000}));
    assert_eq!(quotas["uploads_in_flight"]["limit"], g.config.upload_limits.per_user);

    // A 1 s tone at 22.05 kHz mono is about 44 KB: two fit the bytes, a 5 s one does not.
    let big = g.tone("big.wav", 5, 9)?;
    let r = g.upload(&user.token, &big, &[]).await?;
    assert_eq!(r.status(), 507);
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "storage_quota");
    // Without a declared length the door cannot tell; the job's creation refuses it.
    let bytes = tokio::fs::read(&big).await?;
    let chunked = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
    let r = g
        .http
        .put(g.at("/v1/uploads"))
        .bearer_auth(&user.token)
        .header("x-filename", "big.wav")
        .body(reqwest::Body::wrap_stream(chunked))
        .send()
        .await?;
    assert_eq!(r.status(), 507);
    assert_eq!(r.json::<Value>().await?["error"], "storage_quota");
    assert_eq!(
        g.gridfs_counts(tunewire_media_store::Bucket::Uploads).await?,
        (0, 0),
        "a refused upload leaves nothing"
    );

    for seed in 0..2 {
        g.accepted(&user.token, &g.tone(&format!("t{seed}.wav"), 1, seed)?, &[]).await?;
    }
    let r = g.upload(&user.token, &g.tone("t3.wav", 1, 3)?, &[]).await?;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(r.json::<Value>().await?["error"], "job_quota");
    let quotas = me(user.token.clone()).await?["quotas"].clone();
    assert_eq!(quotas["jobs_in_progress"]["used"], 2);
    assert!(quotas["stored_bytes"]["used"].as_i64().is_some_and(|b| b > 80_000), "{quotas}");
    // Another user's quotas are their own. Four uploads at once without a declared length all
    // pass the door; the creation of their jobs, one at a time per owner, takes two.
    let other = g.user().await?;
    let mut sends = Vec::new();
    for seed in 10..14 {
        let bytes = tokio::fs::read(g.tone(&format!("o{seed}.wav"), 1, seed)?).await?;
        let chunked = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
        sends.push(
            g.http
                .put(g.at("/v1/uploads"))
                .bearer_auth(&other.token)
                .header("x-filename", "o.wav")
                .body(reqwest::Body::wrap_stream(chunked))
                .send(),
        );
    }
    let mut statuses = Vec::new();
    for answer in futures_util::future::join_all(sends).await {
        statuses.push(answer?.status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [202, 202, 429, 429]);
    g.stop().await
}

/// The gateway binary as a process of its own, on the support's sandbox and auth, so that its
/// memory can be read.
async fn gateway_process(g: &Gateway, env: &[(&str, &str)]) -> anyhow::Result<MeasuredService> {
    let c = &g.config;
    let mut all = vec![
        ("DATABASE_URL", c.database_url.expose_secret()),
        ("AMQP_URL", c.amqp_url.expose_secret()),
        ("MONGODB_URI", c.mongodb_uri.expose_secret()),
        ("MONGODB_DATABASE_PREFIX", c.mongodb_database_prefix.as_str()),
        ("AUTH_URL", c.auth_url.as_str()),
        ("LINK_SECRET", c.link_secret.expose_secret()),
    ];
    all.extend_from_slice(env);
    MeasuredService::spawn(env!("CARGO_BIN_EXE_tunewire-gateway"), "GATEWAY_BIND", &all).await
}

/// A thousand streams are a thousand sockets on each side (the child gateway inherits the
/// limit): the soft limit on open files goes up to the hard one, as a server's would be set.
fn raise_open_files_limit() -> anyhow::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on a struct of ours.
    unsafe {
        anyhow::ensure!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0, "getrlimit failed");
        limit.rlim_cur = limit.rlim_max;
        anyhow::ensure!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0, "setrlimit failed");
    }
    anyhow::ensure!(
        limit.rlim_cur >= 2500,
        "the hard limit on open files ({}) is below the test's 2,500",
        limit.rlim_cur
    );
    Ok(())
}

/// Sorts answers into streams kept open and refusals, checking each refusal's body.
async fn sort_answers(
    answers: Vec<reqwest::Result<reqwest::Response>>,
    refusal: &str,
) -> anyhow::Result<(Vec<reqwest::Response>, usize)> {
    let (mut streams, mut refused) = (Vec::new(), 0);
    for answer in answers {
        let r = answer?;
        match r.status().as_u16() {
            200 => streams.push(r),
            429 => {
                let retry_after: u64 = r.headers().get("retry-after").context("Retry-After")?.to_str()?.parse()?;
                let body: Value = r.json().await?;
                assert_eq!(body["error"], refusal, "{body}");
                assert_eq!(body["retry_after_s"], retry_after);
                refused += 1;
            }
            other => anyhow::bail!("a stream answered {other}: {}", r.text().await?),
        }
    }
    Ok((streams, refused))
}

#[tokio::test]
async fn a_thousand_event_streams_get_their_share_and_the_rest_429_in_bounded_memory() -> anyhow::Result<()> {
    const PER_USER: usize = 16;
    const PER_PROCESS: usize = 24;
    /// The gateway's pod limit is 512 MiB; an idle debug gateway takes about 40.
    const BOUND_MIB: u64 = 160;
    raise_open_files_limit()?;
    let g = Gateway::start().await?;
    let gateway = gateway_process(
        &g,
        &[
            ("GATEWAY_EVENT_STREAMS", &PER_PROCESS.to_string()),
            ("GATEWAY_EVENT_STREAMS_PER_USER", &PER_USER.to_string()),
        ],
    )
    .await?;
    let (ann, bob) = (g.user().await?, g.user().await?);
    // No converter here: both jobs stay queued, so their streams stay open.
    let ann_job = g.accepted(&ann.token, &g.tone("a.wav", 1, 1)?, &[]).await?;
    let bob_job = g.accepted(&bob.token, &g.tone("b.wav", 1, 2)?, &[]).await?;
    let idle = gateway.peak_rss_mib()?;
    let http = reqwest::Client::new();
    let open =
        |token: &str, job: &str| http.get(format!("{}/v1/jobs/{job}/events", gateway.url)).bearer_auth(token).send();

    let answers = join_all((0..1000).map(|_| open(&ann.token, &ann_job))).await;
    let (ann_streams, refused) = sort_answers(answers, "too_many_streams").await?;
    assert_eq!((ann_streams.len(), refused), (PER_USER, 1000 - PER_USER));
    // The process has PER_PROCESS - PER_USER places left for everyone else.
    let answers = join_all((0..10).map(|_| open(&bob.token, &bob_job))).await;
    let (bob_streams, refused) = sort_answers(answers, "server_busy").await?;
    assert_eq!((bob_streams.len(), refused), (PER_PROCESS - PER_USER, 10 - (PER_PROCESS - PER_USER)));
    let peak = gateway.peak_rss_mib()?;

    // Every one of Ann's streams hears her job end, and then ends.
    let failed = MediaFailed {
        job_id: ann_job.parse()?,
        owner: Owner { id: ann.id.parse()?, email: ann.email.parse()? },
        source_filename: "a.wav".into(),
        reason: "stands in for a converter".into(),
    };
    g.bus.publisher().await?.publish(&failed).await?;
    for jobs in join_all(ann_streams.into_iter().map(support::job_events)).await {
        let jobs = jobs?;
        assert_eq!(jobs.first().map(|j| j["state"].clone()), Some("queued".into()));
        assert_eq!(jobs.last().map(|j| j["state"].clone()), Some("failed".into()), "{jobs:?}");
    }
    // Their places are given back: Bob, refused before, is served now.
    eventually("a place for Bob", support::DEADLINE, || async {
        Ok((open(&bob.token, &bob_job).await?.status() == 200).then_some(()))
    })
    .await?;
    println!("gateway peak RSS: {idle} MiB idle, {peak} MiB after 1010 event streams asked for ({BOUND_MIB} bound)");
    assert!(peak < BOUND_MIB, "peak RSS {peak} MiB");
    drop(bob_streams);
    g.stop().await
}

#[tokio::test]
async fn a_hundred_thousand_character_search_is_refused_in_bounded_memory() -> anyhow::Result<()> {
    /// As for event streams: an idle debug gateway takes about 40 MiB.
    const BOUND_MIB: u64 = 160;
    const ASKERS: usize = 100;
    let g = Gateway::start().await?;
    let gateway = gateway_process(&g, &[]).await?;
    let ann = g.user().await?;
    let idle = gateway.peak_rss_mib()?;
    let search =
        |q: String| g.http.get(format!("{}/v1/search", gateway.url)).query(&[("q", q)]).bearer_auth(&ann.token).send();

    // Under the HTTP layer's limit on a request line, the gateway refuses the parameter itself.
    let r = search("moonlight ".repeat(500)).await?;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "query_too_long", "{body}");

    // A request line over 64 KiB is answered 414 by hyper before any handler runs.
    let addr = gateway.url.trim_start_matches("http://").to_string();
    let head = format!(
        "GET /v1/search?q={} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        "moonlight+".repeat(10_000),
        ann.token
    );
    for answer in join_all((0..ASKERS).map(|_| send_all_then_read(addr.clone(), head.clone(), Vec::new()))).await {
        let (status, _) = answer?;
        assert!(status.starts_with("HTTP/1.1 414"), "{status}");
    }
    let peak = gateway.peak_rss_mib()?;

    // The gateway still serves the same user.
    let r = g.http.get(format!("{}/v1/jobs", gateway.url)).bearer_auth(&ann.token).send().await?;
    assert_eq!(r.status(), 200, "{}", r.text().await?);
    println!(
        "gateway peak RSS: {idle} MiB idle, {peak} MiB after {ASKERS} searches of 100,000 characters ({BOUND_MIB} bound)"
    );
    assert!(peak < BOUND_MIB, "peak RSS {peak} MiB");
    g.stop().await
}
