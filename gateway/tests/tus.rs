//! Resumable uploads (tus 1.0.0) at `/v1/tus/`: the protocol by hand, where each rule is
//! checked on its own, and through real tus clients (tus-js-client run by Node, tuspy from
//! the stack's venv; `e2e/tus-clients/`) against the gateway, GridFS, PostgreSQL and the
//! converter.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{DEADLINE, Gateway, Options, User};
use tunewire_media_store::Bucket;
use tunewire_service_runtime::config::ExposeSecret;
use tunewire_test_stack::eventually;

const TUS: (&str, &str) = ("Tus-Resumable", "1.0.0");
const OFFSET_STREAM: &str = "application/offset+octet-stream";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

impl Gateway {
    async fn tus_create(&self, token: &str, length: u64, metadata: &str) -> anyhow::Result<String> {
        let r = self
            .http
            .post(self.at("/v1/tus/"))
            .bearer_auth(token)
            .header(TUS.0, TUS.1)
            .header("Upload-Length", length)
            .header("Upload-Metadata", metadata)
            .send()
            .await?;
        if r.status() != StatusCode::CREATED {
            bail!("create: {} {}", r.status(), r.text().await?);
        }
        let location = header(&r, "location").context("no Location")?;
        assert!(header(&r, "upload-expires").is_some_and(|e| e.ends_with(" GMT")), "{:?}", r.headers());
        Ok(self.at(&location))
    }

    async fn tus_patch(
        &self,
        token: &str,
        url: &str,
        offset: u64,
        body: Vec<u8>,
        checksum: Option<String>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .http
            .patch(url)
            .bearer_auth(token)
            .header(TUS.0, TUS.1)
            .header("Upload-Offset", offset)
            .header("Content-Type", OFFSET_STREAM);
        if let Some(checksum) = checksum {
            request = request.header("Upload-Checksum", checksum);
        }
        Ok(request.body(body).send().await?)
    }

    async fn tus_offset(&self, token: &str, url: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self.http.head(url).bearer_auth(token).header(TUS.0, TUS.1).send().await?)
    }

    /// The stored originals: (file id, SHA-256 of the bytes GridFS holds).
    async fn stored_originals(&self) -> anyhow::Result<Vec<(String, String)>> {
        let client = mongodb::Client::with_uri_str(&self.sandbox.stack.mongo_uri).await?;
        let files: Vec<Document> = client
            .database(&self.sandbox.mongo_database(Bucket::Uploads))
            .collection::<Document>("uploads.files")
            .find(doc! {})
            .await?
            .try_collect()
            .await?;
        let mut stored = Vec::new();
        for file in files {
            let id = file.get_object_id("_id")?.to_hex();
            let Some((_, download)) = self.store.open(Bucket::Uploads, &id.parse()?).await? else { continue };
            let mut hasher = Sha256::new();
            let mut reader = tokio_util::compat::FuturesAsyncReadCompatExt::compat(download);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = tokio::io::AsyncReadExt::read(&mut reader, &mut buf).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            stored.push((id, hex::encode(hasher.finalize())));
        }
        Ok(stored)
    }

    async fn chunks_in_uploads(&self) -> anyhow::Result<u64> {
        Ok(self.gridfs_counts(Bucket::Uploads).await?.1)
    }
}

/// A stream of what arrives on `rx`, for a request body sent piece by piece.
fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

fn sha256_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let (mut hasher, mut buf) = (Sha256::new(), vec![0u8; 1 << 20]);
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hex::encode(hasher.finalize())),
            n => hasher.update(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn the_protocol_by_hand_offsets_checksums_owners_and_the_job_at_the_last_byte() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options { converter: true, ..Default::default() }).await?;
    let (alice, mallory) = (g.user().await?, g.user().await?);
    let tone = std::fs::read(g.tone("tone.wav", 20, 1)?)?;
    let length = tone.len() as u64;
    assert!(length > 3 * 255 * 1024, "the tone spans several chunks: {length}");

    let options = g.http.request(Method::OPTIONS, g.at("/v1/tus/")).send().await?;
    assert_eq!(options.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&options, "tus-version").as_deref(), Some("1.0.0"));
    let extensions = header(&options, "tus-extension").context("Tus-Extension")?;
    for extension in
        ["creation", "creation-with-upload", "creation-defer-length", "termination", "expiration", "checksum"]
    {
        assert!(extensions.split(',').any(|e| e == extension), "{extension} missing from {extensions}");
    }
    assert_eq!(header(&options, "tus-max-size"), Some(g.config.max_upload_bytes.to_string()));
    assert_eq!(header(&options, "tus-checksum-algorithm").as_deref(), Some("sha1,sha256"));

    let no_version = g.http.post(g.at("/v1/tus/")).bearer_auth(&alice.token).header("Upload-Length", 1).send().await?;
    assert_eq!(no_version.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(header(&no_version, "tus-version").as_deref(), Some("1.0.0"));

    let metadata = format!("filename {},title {},artist {}", b64("tone.wav"), b64("By Hand"), b64("Tester"));
    let url = g.tus_create(&alice.token, length, &metadata).await?;
    let head = g.tus_offset(&alice.token, &url).await?;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "upload-offset").as_deref(), Some("0"));
    assert_eq!(header(&head, "upload-length"), Some(length.to_string()));
    assert_eq!(header(&head, "upload-metadata"), Some(metadata.clone()));

    // Unaligned pieces: the tail of each PATCH waits for the next.
    let cuts = [100_000usize, 400_000, 700_001];
    let first = g.tus_patch(&alice.token, &url, 0, tone[..cuts[0]].to_vec(), None).await?;
    assert_eq!(first.status(), StatusCode::NO_CONTENT, "{:?}", first.text().await?);
    let stale = g.tus_patch(&alice.token, &url, 0, tone[..10].to_vec(), None).await?;
    assert_eq!(stale.status(), StatusCode::CONFLICT, "a PATCH at an old offset is refused");

    let wrong = format!("sha256 {}", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"other bytes")));
    let mismatch =
        g.tus_patch(&alice.token, &url, cuts[0] as u64, tone[cuts[0]..cuts[2]].to_vec(), Some(wrong)).await?;
    assert_eq!(mismatch.status().as_u16(), 460);
    assert_eq!(mismatch.json::<Value>().await?["error"], "checksum_mismatch");
    let head = g.tus_offset(&alice.token, &url).await?;
    assert_eq!(header(&head, "upload-offset"), Some(cuts[0].to_string()), "a refused body moved the offset");
    assert_eq!(g.chunks_in_uploads().await?, 0, "a refused body left chunks");

    let sha1 = {
        use sha1::Digest as _;
        format!(
            "sha1 {}",
            base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(&tone[cuts[0]..cuts[1]]))
        )
    };
    let good = g.tus_patch(&alice.token, &url, cuts[0] as u64, tone[cuts[0]..cuts[1]].to_vec(), Some(sha1)).await?;
    assert_eq!(good.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&good, "upload-offset"), Some(cuts[1].to_string()));

    for r in [
        g.tus_offset(&mallory.token, &url).await?,
        g.tus_patch(&mallory.token, &url, cuts[1] as u64, tone[cuts[1]..].to_vec(), None).await?,
        g.http.delete(&url).bearer_auth(&mallory.token).header(TUS.0, TUS.1).send().await?,
    ] {
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "another user reached the upload");
    }

    // A PATCH while another is still sending its body: one writer at a time.
    let (feed, body) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let slow = tokio::spawn({
        let request = g
            .http
            .patch(&url)
            .bearer_auth(&alice.token)
            .header(TUS.0, TUS.1)
            .header("Upload-Offset", cuts[1])
            .header("Content-Type", OFFSET_STREAM)
            .body(reqwest::Body::wrap_stream(tokio_stream_of(body)));
        async move { request.send().await }
    });
    feed.send(Ok(tone[cuts[1]..cuts[1] + 1000].to_vec())).await?;
    let db = sqlx::PgPool::connect(g.config.database_url.expose_secret()).await?;
    let id: uuid::Uuid = url.rsplit('/').next().context("id")?.parse()?;
    eventually("the first PATCH holds the upload", DEADLINE, || async {
        let leased: bool = sqlx::query_scalar("SELECT lease IS NOT NULL FROM gateway.tus_uploads WHERE id = $1")
            .bind(id)
            .fetch_one(&db)
            .await?;
        Ok(leased.then_some(()))
    })
    .await?;
    let second = g.tus_patch(&alice.token, &url, cuts[1] as u64, tone[cuts[1]..cuts[2]].to_vec(), None).await?;
    assert_eq!(second.status(), StatusCode::LOCKED);
    assert_eq!(second.json::<Value>().await?["error"], "upload_busy");
    feed.send(Ok(tone[cuts[1] + 1000..cuts[2]].to_vec())).await?;
    drop(feed);
    assert_eq!(slow.await??.status(), StatusCode::NO_CONTENT);
    let middle = g.tus_offset(&alice.token, &url).await?;
    assert_eq!(header(&middle, "upload-offset"), Some(cuts[2].to_string()));
    let middle = g.tus_patch(&alice.token, &url, cuts[2] as u64, Vec::new(), None).await?;
    assert_eq!(middle.status(), StatusCode::NO_CONTENT);
    let last = g.tus_patch(&alice.token, &url, cuts[2] as u64, tone[cuts[2]..].to_vec(), None).await?;
    assert_eq!(last.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&last, "upload-offset"), Some(length.to_string()));
    let job_id = header(&last, "tunewire-job-id").context("the last PATCH names no job")?;
    let head = g.tus_offset(&alice.token, &url).await?;
    assert_eq!(header(&head, "tunewire-job-id"), Some(job_id.clone()), "HEAD of a finished upload names its job");

    let job = g.wait_for_state(&alice.token, &job_id, "converted").await?;
    assert_eq!(job["source"]["filename"], "tone.wav");
    assert_eq!(job["source"]["size"], length);
    assert_eq!(job["source"]["sha256"], sha256_of(&tone));
    let listed: Value = g.http.get(g.at("/v1/jobs")).bearer_auth(&alice.token).send().await?.json().await?;
    assert!(listed["jobs"].as_array().context("jobs")?.iter().any(|j| j["id"] == job_id.as_str()), "{listed}");
    let stored = g.stored_originals().await?;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].1, sha256_of(&tone), "GridFS holds other bytes than were sent");
    g.stop().await
}

#[tokio::test]
async fn termination_and_expiry_remove_every_stored_chunk() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options {
        tweak: Box::new(|config| {
            config.tus.expires_after = Duration::from_secs(2);
            config.retention.every = Duration::from_millis(500);
        }),
        ..Default::default()
    })
    .await?;
    let user = g.user().await?;
    let bytes = vec![7u8; 600 * 1024];

    // Creation with upload, and a length given only later (creation-defer-length).
    let r = g
        .http
        .post(g.at("/v1/tus/"))
        .bearer_auth(&user.token)
        .header(TUS.0, TUS.1)
        .header("Upload-Defer-Length", 1)
        .header("Content-Type", OFFSET_STREAM)
        .body(bytes.clone())
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "upload-offset"), Some(bytes.len().to_string()));
    let url = g.at(&header(&r, "location").context("Location")?);
    assert_eq!(g.chunks_in_uploads().await?, 2, "two whole chunks stored, the rest waits");
    let head = g.tus_offset(&user.token, &url).await?;
    assert_eq!(header(&head, "upload-defer-length").as_deref(), Some("1"));
    let r = g
        .http
        .patch(&url)
        .bearer_auth(&user.token)
        .header(TUS.0, TUS.1)
        .header("Upload-Offset", bytes.len())
        .header("Upload-Length", 10 << 20)
        .header("Content-Type", OFFSET_STREAM)
        .body(vec![1u8; 1000])
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let head = g.tus_offset(&user.token, &url).await?;
    assert_eq!(header(&head, "upload-length"), Some((10 << 20).to_string()));
    assert_eq!(header(&head, "upload-offset"), Some((bytes.len() + 1000).to_string()));
    let r = g.http.delete(&url).bearer_auth(&user.token).header(TUS.0, TUS.1).send().await?;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(g.chunks_in_uploads().await?, 0, "termination left chunks");
    assert_eq!(g.tus_offset(&user.token, &url).await?.status(), StatusCode::NOT_FOUND);

    let url = g.tus_create(&user.token, 10 << 20, "").await?;
    assert_eq!(g.tus_patch(&user.token, &url, 0, bytes, None).await?.status(), StatusCode::NO_CONTENT);
    assert_eq!(g.chunks_in_uploads().await?, 2);
    eventually("the expired upload swept", DEADLINE, || async {
        let gone = g.tus_offset(&user.token, &url).await?.status() == StatusCode::NOT_FOUND;
        Ok((gone && g.chunks_in_uploads().await? == 0).then_some(()))
    })
    .await?;
    g.stop().await
}

/// A 192 kHz stereo 32-bit float WAV of about `bytes` bytes (about 11.6 minutes per GiB):
/// a tone whose pitch steps each second, so no two seconds are the same bytes.
fn float_wav(path: &Path, bytes: u64) -> anyhow::Result<()> {
    use std::io::Write;
    const RATE: u32 = 192_000;
    let second = u64::from(RATE) * 2 * 4;
    let seconds = (bytes / second).max(1);
    let data = seconds * second;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    out.write_all(b"RIFF")?;
    out.write_all(&u32::try_from(36 + data)?.to_le_bytes())?;
    out.write_all(b"WAVEfmt ")?;
    out.write_all(&16u32.to_le_bytes())?;
    out.write_all(&3u16.to_le_bytes())?; // IEEE float
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&RATE.to_le_bytes())?;
    out.write_all(&(RATE * 8).to_le_bytes())?;
    out.write_all(&8u16.to_le_bytes())?;
    out.write_all(&32u16.to_le_bytes())?;
    out.write_all(b"data")?;
    out.write_all(&u32::try_from(data)?.to_le_bytes())?;
    let mut block = Vec::with_capacity(second as usize);
    for s in 0..seconds {
        block.clear();
        let step = std::f32::consts::TAU * (220.0 + (s % 64) as f32 * 5.0) / RATE as f32;
        for i in 0..RATE {
            let sample = ((i as f32) * step).sin() * 0.25;
            block.extend_from_slice(&sample.to_le_bytes());
            block.extend_from_slice(&sample.to_le_bytes());
        }
        out.write_all(&block)?;
    }
    out.flush()?;
    Ok(())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Clone, Copy, Debug)]
enum Client {
    /// tus-js-client, run by Node.
    Js,
    /// tuspy.
    Py,
}

/// Runs a real tus client (`e2e/tus-clients/`) to the end; its one line of JSON.
async fn run_client(client: Client, args: Value) -> anyhow::Result<Value> {
    let root = root();
    let mut command = match client {
        Client::Js => {
            let mut c = tokio::process::Command::new("node");
            c.arg(root.join("e2e/tus-clients/upload.mjs"));
            c
        }
        Client::Py => {
            let mut c = tokio::process::Command::new(root.join(".stack/tools/venv/bin/python"));
            c.arg(root.join("e2e/tus-clients/upload.py"));
            c
        }
    };
    let out = command
        .arg(args.to_string())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("{client:?} did not run: scripts/stack up installs the tus clients"))?;
    let stdout = String::from_utf8(out.stdout)?;
    let line = stdout.lines().last().with_context(|| format!("{client:?} printed nothing ({})", out.status))?;
    serde_json::from_str(line).with_context(|| format!("{client:?} printed {line:?}"))
}

/// Waits for a job to convert, however long a big file takes.
async fn converted(g: &Gateway, token: &str, job: &str, within: Duration) -> anyhow::Result<Value> {
    eventually(&format!("job {job} converted"), within, || async {
        let job = g.job(token, job).await?;
        match job["state"].as_str() {
            Some("converted") => Ok(Some(job)),
            Some("failed") => bail!("job failed: {}", job["error"]),
            _ => Ok(None),
        }
    })
    .await
}

fn token_args(g: &Gateway, user: &User, file: &Path, chunk: u64) -> Value {
    json!({
        "endpoint": g.at("/v1/tus/"),
        "token": user.token,
        "file": file,
        "chunkSize": chunk,
        "metadata": {"filename": file.file_name().and_then(|n| n.to_str()).unwrap_or("upload")},
    })
}

#[tokio::test]
async fn tus_js_client_sends_a_gib_through_five_cut_connections_and_the_job_converts() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options { converter: true, ..Default::default() }).await?;
    let user = g.user().await?;
    let file = g.scratch.join("long.wav");
    float_wav(&file, 1 << 30)?;
    let mut args = token_args(&g, &user, &file, 8 << 20);
    args["cuts"] = json!(5);
    args["retryDelays"] = json!([0, 500, 1000, 2000]);
    let done = run_client(Client::Js, args).await?;
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(done["cuts"], 5, "{done}");
    // Each cut PATCH kept what reached the server: some resume starts mid-PATCH.
    let resumes: Vec<u64> = done["resumes"].as_array().context("resumes")?.iter().filter_map(Value::as_u64).collect();
    assert!(resumes.len() >= 5, "fewer than 5 resumes: {done}");
    assert!(resumes.iter().any(|offset| offset % (8 << 20) != 0), "every resume began at a PATCH's start: {done}");
    let job = done["jobId"].as_str().context("no job id")?;
    let job = converted(&g, &user.token, job, Duration::from_secs(600)).await?;
    let sha = sha256_file(&file)?;
    assert_eq!(job["source"]["sha256"], sha.as_str());
    let stored = g.stored_originals().await?;
    assert_eq!(stored.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(), [sha.as_str()], "GridFS holds other bytes");
    g.stop().await
}

#[tokio::test]
async fn tuspy_resumes_across_processes_with_checksums_and_a_non_media_file_gets_415() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options { converter: true, ..Default::default() }).await?;
    let user = g.user().await?;
    let tone = g.tone("tone.wav", 60, 2)?;
    let length = std::fs::metadata(&tone)?.len();
    // Unaligned with GridFS's chunks, so each PATCH leaves a tail for the next.
    let mut args = token_args(&g, &user, &tone, 300_001);
    args["checksum"] = json!(true);
    args["metadata"]["title"] = json!("Resumed");
    args["stopAt"] = json!(length / 2);
    let first = run_client(Client::Py, args.clone()).await?;
    assert_eq!((first["ok"].clone(), first["stopped"].clone()), (json!(true), json!(true)), "{first}");
    args["url"] = first["url"].clone();
    args.as_object_mut().context("args")?.remove("stopAt");
    let second = run_client(Client::Py, args).await?;
    assert_eq!(second["ok"], true, "{second}");
    let resumed_at = second["resumes"][0].as_u64().context("no resume")?;
    assert!(resumed_at >= length / 2 && resumed_at < length, "resumed at {resumed_at} of {length}");
    let job = converted(&g, &user.token, second["jobId"].as_str().context("no job id")?, DEADLINE).await?;
    assert_eq!(job["source"]["sha256"], sha256_file(&tone)?);

    let junk = g.scratch.join("notes.txt");
    std::fs::write(&junk, "not a sound at all\n".repeat(60_000))?;
    let chunks_before = g.chunks_in_uploads().await?;
    let refused = run_client(Client::Py, token_args(&g, &user, &junk, 1 << 20)).await?;
    assert_eq!((refused["ok"].clone(), refused["status"].clone()), (json!(false), json!(415)), "{refused}");
    assert!(refused["body"].as_str().is_some_and(|b| b.contains("not_media")), "{refused}");
    let url = refused["url"].as_str().context("no url")?;
    assert_eq!(g.tus_offset(&user.token, &g.at(url.trim_start_matches(&g.url))).await?.status(), StatusCode::NOT_FOUND);
    assert_eq!(g.chunks_in_uploads().await?, chunks_before, "a refused upload left chunks");
    g.stop().await
}

/// A gateway as its own process (the release path's binary), that a test can SIGKILL.
struct GatewayProcess {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl GatewayProcess {
    async fn spawn(g: &Gateway, addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let c = &g.config;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunewire-gateway"))
            .env("GATEWAY_BIND", addr.to_string())
            .env("DATABASE_URL", c.database_url.expose_secret())
            .env("AMQP_URL", c.amqp_url.expose_secret())
            .env("MONGODB_URI", c.mongodb_uri.expose_secret())
            .env("MONGODB_DATABASE_PREFIX", &c.mongodb_database_prefix)
            .env("AUTH_URL", &c.auth_url)
            .env("LINK_SECRET", c.link_secret.expose_secret())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let http = reqwest::Client::new();
        eventually("the gateway process ready", DEADLINE, || async {
            let ready = http.get(format!("http://{addr}/readyz")).send().await.is_ok_and(|r| r.status() == 200);
            Ok(ready.then_some(()))
        })
        .await?;
        Ok(Self { child, addr })
    }

    /// Uploads it is receiving now (its `/metrics`).
    async fn uploads_in_flight(&self) -> anyhow::Result<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.addr)).await?.text().await?;
        let line = text.lines().find(|l| l.starts_with("uploads_in_flight ")).context("no uploads_in_flight")?;
        Ok(line.rsplit(' ').next().unwrap_or("0").parse()?)
    }
}

#[tokio::test]
async fn a_gateway_sigkilled_mid_upload_loses_nothing_acknowledged_and_another_replica_finishes_it()
-> anyhow::Result<()> {
    use tunewire_test_stack::balancer::{Balancer, Probe};
    let g = Gateway::start_with(Options { converter: true, ..Default::default() }).await?;
    let user = g.user().await?;
    let file = g.scratch.join("interrupted.wav");
    float_wav(&file, 256 << 20)?;
    let length = std::fs::metadata(&file)?.len();
    let free = || -> anyhow::Result<std::net::SocketAddr> {
        Ok(format!("127.0.0.1:{}", tunewire_test_stack::bench::free_port()?).parse()?)
    };
    let mut replicas = vec![GatewayProcess::spawn(&g, free()?).await?, GatewayProcess::spawn(&g, free()?).await?];
    let probe = Probe { period: Duration::from_millis(200), timeout: Duration::from_millis(500), failure_threshold: 1 };
    let balancer = Balancer::start(&[replicas[0].addr, replicas[1].addr], probe).await?;

    let mut args = token_args(&g, &user, &file, 8 << 20);
    args["endpoint"] = json!(format!("http://{}/v1/tus/", balancer.addr));
    // Long enough to outlast the dead gateway's lease on the upload.
    args["retryDelays"] = json!([0, 500, 1000, 2000, 4000, 4000, 4000, 4000, 4000, 4000]);
    let client = tokio::spawn(run_client(Client::Js, args));

    // The replica receiving it, once a third is stored.
    let offset_of = |url: String| {
        let (g, token) = (&g, user.token.clone());
        async move {
            let r = g.tus_offset(&token, &url).await?;
            anyhow::Ok(header(&r, "upload-offset").and_then(|o| o.parse::<u64>().ok()))
        }
    };
    let upload_url = eventually("the upload created", DEADLINE, || async {
        let pool = sqlx::PgPool::connect(g.config.database_url.expose_secret()).await?;
        let id: Option<uuid::Uuid> =
            sqlx::query_scalar("SELECT id FROM gateway.tus_uploads").fetch_optional(&pool).await?;
        Ok(id.map(|id| g.at(&format!("/v1/tus/{id}"))))
    })
    .await?;
    let receiving = eventually("a third stored", Duration::from_secs(120), || async {
        if offset_of(upload_url.clone()).await?.unwrap_or(0) < length / 3 {
            return Ok(None);
        }
        for (i, replica) in replicas.iter().enumerate() {
            if replica.uploads_in_flight().await? >= 1.0 {
                return Ok(Some(i));
            }
        }
        Ok(None)
    })
    .await?;
    let killed = replicas.remove(receiving);
    let addr = killed.addr;
    let mut child = killed.child;
    child.kill().await?;
    let acknowledged = offset_of(upload_url.clone()).await?.context("offset after the kill")?;

    // The other replica continues it; then the killed one comes back.
    eventually("the upload resumed elsewhere", Duration::from_secs(120), || async {
        Ok((offset_of(upload_url.clone()).await?.unwrap_or(0) > acknowledged).then_some(()))
    })
    .await?;
    replicas.push(GatewayProcess::spawn(&g, addr).await?);
    let done = client.await??;
    assert_eq!(done["ok"], true, "{done}");
    let job =
        converted(&g, &user.token, done["jobId"].as_str().context("no job id")?, Duration::from_secs(300)).await?;
    let sha = sha256_file(&file)?;
    assert_eq!(job["source"]["sha256"], sha.as_str());
    let stored = g.stored_originals().await?;
    assert_eq!(stored.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(), [sha.as_str()], "GridFS holds other bytes");
    drop(replicas);
    g.stop().await
}

#[tokio::test]
async fn a_browser_on_an_allowed_origin_may_use_tus_and_read_its_headers() -> anyhow::Result<()> {
    const ORIGIN: &str = "https://tunewire.example";
    let g = Gateway::start_with(Options {
        tweak: Box::new(|config| config.cors_origins = vec![ORIGIN.to_string()]),
        ..Default::default()
    })
    .await?;
    let user = g.user().await?;
    let preflight = |origin: &'static str| {
        g.http
            .request(Method::OPTIONS, g.at("/v1/tus/"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "PATCH")
            .header("Access-Control-Request-Headers", "authorization,tus-resumable,upload-offset,content-type")
            .send()
    };
    let allowed = preflight(ORIGIN).await?;
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(header(&allowed, "access-control-allow-origin").as_deref(), Some(ORIGIN));
    let methods = header(&allowed, "access-control-allow-methods").context("allowed methods")?.to_lowercase();
    assert!(methods.contains("patch"), "{methods}");
    let refused = preflight("https://elsewhere.example").await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(refused.json::<Value>().await?["error"], "cors_forbidden");

    let created = g
        .http
        .post(g.at("/v1/tus/"))
        .bearer_auth(&user.token)
        .header("Origin", ORIGIN)
        .header(TUS.0, TUS.1)
        .header("Upload-Length", 10)
        .send()
        .await?;
    assert_eq!(created.status(), StatusCode::CREATED);
    let exposed = header(&created, "access-control-expose-headers").context("exposed headers")?.to_lowercase();
    for name in ["location", "upload-offset", "upload-expires", "tunewire-job-id"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    g.stop().await
}

#[tokio::test]
async fn the_api_guide_resumes_an_upload_by_hand_with_curl() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let user = g.user().await?;
    let readme = std::fs::read_to_string(root().join("docs/api.md"))?;
    let from = readme.find("ffmpeg -loglevel error -y -f lavfi -i sine=frequency=330").context("the session")?;
    let session = &readme[from..from + readme[from..].find("```").context("its end")?];
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", session])
        .env("GW", &g.url)
        .env("TOKEN", &user.token)
        .current_dir(&g.scratch)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let job = stdout.trim().rsplit(' ').next().context("no job id")?;
    let job = g.job(&user.token, job).await?;
    assert_eq!(job["source"]["filename"], "long.wav");
    assert_eq!(job["source"]["sha256"], sha256_file(&g.scratch.join("long.wav"))?);
    g.stop().await
}

#[tokio::test]
async fn unfinished_uploads_count_against_the_storage_quota_until_their_job_does() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options {
        converter: true,
        tweak: Box::new(|config| config.quotas.stored_bytes = 1 << 20),
        ..Default::default()
    })
    .await?;
    let user = g.user().await?;
    let tone = std::fs::read(g.tone("quota.wav", 10, 3)?)?;
    assert!(tone.len() > 400_000 && tone.len() < 600_000, "{}", tone.len());
    let first = g.tus_create(&user.token, tone.len() as u64, &format!("filename {}", b64("quota.wav"))).await?;
    let refused = g
        .http
        .post(g.at("/v1/tus/"))
        .bearer_auth(&user.token)
        .header(TUS.0, TUS.1)
        .header("Upload-Length", (1 << 20) - tone.len() + 1)
        .send()
        .await?;
    assert_eq!(refused.status(), StatusCode::INSUFFICIENT_STORAGE, "the unfinished upload did not count");
    assert_eq!(refused.json::<Value>().await?["error"], "storage_quota");
    // Its job takes its place in the count, not a second one.
    let last = g.tus_patch(&user.token, &first, 0, tone.clone(), None).await?;
    assert_eq!(last.status(), StatusCode::NO_CONTENT, "{:?}", last.text().await?);
    let me: Value = g.http.get(g.at("/v1/me")).bearer_auth(&user.token).send().await?.json().await?;
    assert_eq!(me["quotas"]["stored_bytes"]["used"], tone.len(), "{me}");
    g.stop().await
}
