//! Upload benchmark, printed as figures (run with `scripts/bench`, not part of the tests):
//!
//! 1. One 1 GiB file through the gateway (a separate release process, raw `PUT`) and the same
//!    file straight into the same MongoDB-wire server with the `mongodb` driver's GridFS.
//!    Targets: gateway throughput >= 0.8x direct; gateway RSS growth < 32 MiB.
//! 2. The same file by tus (`/v1/tus/`, 8 MiB PATCHes, as tus-js-client sends them) against a
//!    raw `PUT`, alternating on one gateway process. Targets: tus throughput >= 0.9x the
//!    `PUT`; gateway RSS growth <= 32 MiB.
//! 3. 50 concurrent uploads of 20 MiB, each converted by a real converter: all 202, all
//!    converted, and the gateway's peak RSS. Each upload's time includes its probe (a child
//!    process reading the headers back from GridFS).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::io::AsyncWriteExt;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tunewire_test_stack::bench::{self, FreshMongo, free_port};
use tunewire_test_stack::media::ffmpeg;
use tunewire_test_stack::{Sandbox, eventually};

const MIB: u64 = 1 << 20;

fn media_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-media")
}

/// A stereo 48 kHz WAV of about `bytes` bytes, made once and reused.
fn wav_of(bytes: u64, name: &str) -> anyhow::Result<PathBuf> {
    let path = media_dir().join(name);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(media_dir())?;
    let seconds = bytes / 192_000;
    let spec = format!("sine=frequency=440:sample_rate=48000:duration={seconds}");
    ffmpeg(&["-f", "lavfi", "-i", &spec, "-ac", "2", "-c:a", "pcm_s16le", path.to_str().context("path")?])?;
    Ok(path)
}

fn rss_kib(pid: u32) -> Option<u64> {
    bench::status_kib(pid, "VmRSS")
}

/// Samples a process's RSS every 20 ms until dropped; `peak()` is the highest seen.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let stop = CancellationToken::new();
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.is_cancelled() {
                if let Some(now) = rss_kib(pid) {
                    p.fetch_max(now, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { peak, stop }
    }

    fn peak_mib(&self) -> f64 {
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct GatewayProcess {
    child: Child,
    url: String,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_gateway(sandbox: &Sandbox, mongo_uri: &str, auth_url: &str) -> anyhow::Result<GatewayProcess> {
    spawn_gateway_with(sandbox, mongo_uri, auth_url, &[]).await
}

async fn spawn_gateway_with(
    sandbox: &Sandbox,
    mongo_uri: &str,
    auth_url: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<GatewayProcess> {
    let port = free_port()?;
    let child = Command::new(env!("CARGO_BIN_EXE_tunewire-gateway"))
        .envs(env.iter().copied())
        .env("GATEWAY_BIND", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", &sandbox.database_url)
        .env("AMQP_URL", &sandbox.amqp_url)
        .env("MONGODB_URI", mongo_uri)
        .env("MONGODB_DATABASE_PREFIX", &sandbox.mongo_prefix)
        .env("AUTH_URL", auth_url)
        .env("LINK_SECRET", "bench-link-secret-as-long-as-a-real-one")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually("the gateway answers", Duration::from_secs(30), || async {
        Ok(http.get(format!("{url}/readyz")).send().await.ok().filter(|r| r.status() == 200).map(|_| ()))
    })
    .await?;
    Ok(GatewayProcess { child, url })
}

async fn login(http: &reqwest::Client, gateway: &str, email: &str) -> anyhow::Result<String> {
    let creds = json!({"email": email, "password": "bench password"});
    http.post(format!("{gateway}/v1/auth/register")).json(&creds).send().await?;
    let r = http.post(format!("{gateway}/v1/auth/login")).json(&creds).send().await?.error_for_status()?;
    Ok(r.json::<Value>().await?["access_token"].as_str().context("token")?.to_string())
}

async fn put_file(http: &reqwest::Client, gateway: &str, token: &str, path: &Path) -> anyhow::Result<(u16, Value)> {
    let file = tokio::fs::File::open(path).await?;
    let length = file.metadata().await?.len();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
    let name = path.file_name().and_then(|n| n.to_str()).context("name")?;
    let r = http
        .put(format!("{gateway}/v1/uploads"))
        .bearer_auth(token)
        .header("x-filename", name)
        .header("content-length", length)
        .body(body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

/// A tus upload of `path` in PATCHes of `chunk` bytes; returns the job id.
async fn tus_file(
    http: &reqwest::Client,
    gateway: &str,
    token: &str,
    path: &Path,
    chunk: usize,
) -> anyhow::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let length = file.metadata().await?.len();
    let r = http
        .post(format!("{gateway}/v1/tus/"))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", length)
        .header("upload-metadata", "filename MUdpQi53YXY=")
        .send()
        .await?;
    if r.status() != 201 {
        bail!("tus create: {} {}", r.status(), r.text().await?);
    }
    let url = format!("{gateway}{}", r.headers().get("location").context("location")?.to_str()?);
    let mut offset = 0u64;
    loop {
        let mut body = vec![0u8; chunk];
        let mut filled = 0;
        while filled < chunk {
            match file.read(&mut body[filled..]).await? {
                0 => break,
                n => filled += n,
            }
        }
        body.truncate(filled);
        let r = http
            .patch(&url)
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", offset)
            .header("content-type", "application/offset+octet-stream")
            .body(body)
            .send()
            .await?;
        if r.status() != 204 {
            bail!("tus PATCH at {offset}: {} {}", r.status(), r.text().await?);
        }
        offset += filled as u64;
        if offset == length {
            let job = r.headers().get("tunewire-job-id").context("no Tunewire-Job-Id")?;
            return Ok(job.to_str()?.to_string());
        }
    }
}

async fn direct_gridfs(sandbox: &Sandbox, mongo_uri: &str, path: &Path) -> anyhow::Result<Duration> {
    let client = mongodb::Client::with_uri_str(mongo_uri).await?;
    let bucket = client.database(&sandbox.mongo_prefix).gridfs_bucket(
        // The durability the product asks for (journaled writes), or the comparison lies.
        mongodb::options::GridFsBucketOptions::builder()
            .bucket_name("direct".to_string())
            .write_concern(mongodb::options::WriteConcern::builder().journal(true).build())
            .build(),
    );
    let started = Instant::now();
    let mut upload = bucket.open_upload_stream("direct.wav").await?;
    let mut file = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        upload.write_all(&buf[..n]).await?;
    }
    upload.close().await?;
    let elapsed = started.elapsed();
    bucket.drop().await?;
    Ok(elapsed)
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let shutdown = CancellationToken::new();
    let auth = tunewire_auth::start(
        {
            let mut config = tunewire_auth::Config::local(sandbox.database_url.clone());
            // Fifty bench users register from this one address.
            config.attempt_limits.registrations_per_address = 1_000;
            config
        },
        shutdown.clone(),
    )
    .await?;
    let auth_url = format!("http://{}", auth.addr);
    let http = reqwest::Client::new();
    let outcome = run(&sandbox, &auth_url, &http, &shutdown).await;
    shutdown.cancel();
    sandbox.cleanup().await?;
    outcome
}

async fn run(
    sandbox: &Sandbox,
    auth_url: &str,
    http: &reqwest::Client,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    println!("== 1 GiB: gateway vs the mongodb driver's GridFS, same server ==");
    let big = wav_of(1 << 30, "1GiB.wav")?;
    let size = std::fs::metadata(&big)?.len();
    let (mut direct_total, mut gateway_total) = (Duration::ZERO, Duration::ZERO);
    let (mut baseline, mut peak) = (f64::MAX, 0f64);
    for (run, through_gateway) in [false, true, false, true].into_iter().enumerate() {
        let mongo = FreshMongo::start().await?;
        tunewire_media_store::MediaStore::connect(&mongo.uri, &sandbox.mongo_prefix).await?.prepare().await?;
        if !through_gateway {
            let direct = direct_gridfs(sandbox, &mongo.uri, &big).await?;
            println!(
                "run {} direct GridFS: {:>6.1} s  {:>6.1} MiB/s",
                run + 1,
                direct.as_secs_f64(),
                mib_per_s(size, direct)
            );
            direct_total += direct;
            continue;
        }
        let gateway = spawn_gateway(sandbox, &mongo.uri, auth_url).await?;
        let token = login(http, &gateway.url, &format!("bench-{run}@tunewire.test")).await?;
        let pid = gateway.child.id();
        tokio::time::sleep(Duration::from_millis(300)).await;
        baseline = baseline.min(rss_kib(pid).unwrap_or(0) as f64 / 1024.0);
        let sampler = RssSampler::start(pid);
        let started = Instant::now();
        let (status, body) = put_file(http, &gateway.url, &token, &big).await?;
        let elapsed = started.elapsed();
        peak = peak.max(sampler.peak_mib());
        drop(sampler);
        if status != 202 {
            bail!("gateway answered {status}: {body}");
        }
        println!(
            "run {} gateway:       {:>6.1} s  {:>6.1} MiB/s",
            run + 1,
            elapsed.as_secs_f64(),
            mib_per_s(size, elapsed)
        );
        gateway_total += elapsed;
    }
    println!(
        "direct:         {:>6.1} MiB/s (mean of 2 runs, each on an empty server)",
        mib_per_s(2 * size, direct_total)
    );
    println!(
        "gateway:        {:>6.1} MiB/s (mean of 2 runs, each on an empty server)",
        mib_per_s(2 * size, gateway_total)
    );
    println!(
        "ratio:          {:.2}x direct (target >= 0.80)",
        direct_total.as_secs_f64() / gateway_total.as_secs_f64()
    );
    println!(
        "gateway RSS:    {baseline:.1} MiB before, {peak:.1} MiB peak, growth {:.1} MiB (target < 32)",
        peak - baseline
    );

    println!();
    println!("== 1 GiB: tus (8 MiB PATCHes) vs raw PUT, one gateway process ==");
    let (mut put_total, mut tus_total) = (Duration::ZERO, Duration::ZERO);
    let (mut put_growth, mut tus_growth) = (0f64, 0f64);
    for (run, by_tus) in [false, true, false, true].into_iter().enumerate() {
        let mongo = FreshMongo::start().await?;
        tunewire_media_store::MediaStore::connect(&mongo.uri, &sandbox.mongo_prefix).await?.prepare().await?;
        let gateway = spawn_gateway(sandbox, &mongo.uri, auth_url).await?;
        let token = login(http, &gateway.url, &format!("bench-tus-{run}@tunewire.test")).await?;
        let pid = gateway.child.id();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
        let sampler = RssSampler::start(pid);
        let started = Instant::now();
        if by_tus {
            tus_file(http, &gateway.url, &token, &big, 8 << 20).await?;
        } else {
            let (status, body) = put_file(http, &gateway.url, &token, &big).await?;
            if status != 202 {
                bail!("gateway answered {status}: {body}");
            }
        }
        let elapsed = started.elapsed();
        let growth = sampler.peak_mib() - before;
        let (what, total, most) =
            if by_tus { ("tus", &mut tus_total, &mut tus_growth) } else { ("PUT", &mut put_total, &mut put_growth) };
        *total += elapsed;
        *most = most.max(growth);
        println!(
            "run {} {what:>3}: {:>6.1} s  {:>6.1} MiB/s  RSS {before:.1} MiB + {growth:.1} MiB",
            run + 1,
            elapsed.as_secs_f64(),
            mib_per_s(size, elapsed)
        );
    }
    println!("PUT:            {:>6.1} MiB/s (mean of 2 runs)", mib_per_s(2 * size, put_total));
    println!("tus:            {:>6.1} MiB/s (mean of 2 runs)", mib_per_s(2 * size, tus_total));
    println!("ratio:          {:.2}x the PUT (target >= 0.90)", put_total.as_secs_f64() / tus_total.as_secs_f64());
    println!("RSS growth:     tus {tus_growth:.1} MiB, PUT {put_growth:.1} MiB (target <= 32)");

    println!();
    println!("== 50 concurrent uploads of 20 MiB, converted by a real converter (concurrency 2) ==");
    let small = wav_of(20 * MIB, "20MiB.wav")?;
    let mongo = FreshMongo::start().await?;
    tunewire_media_store::MediaStore::connect(&mongo.uri, &sandbox.mongo_prefix).await?.prepare().await?;
    tunewire_converter::start(
        tunewire_converter::Config {
            concurrency: 2,
            max_duration_s: 3600.0,
            ..tunewire_converter::Config::local(
                sandbox.amqp_url.clone(),
                mongo.uri.clone(),
                sandbox.mongo_prefix.clone(),
            )
        },
        shutdown.clone(),
    )
    .await?;
    // All 50 in flight at once: above the default limit of uploads in flight per process.
    let gateway = spawn_gateway_with(sandbox, &mongo.uri, auth_url, &[("GATEWAY_UPLOADS_IN_FLIGHT", "50")]).await?;
    let mut tokens = Vec::new();
    for i in 0..50 {
        // One user each: the same bytes from one user would be one job (deduplicated).
        tokens.push(login(http, &gateway.url, &format!("bench-{i}@tunewire.test")).await?);
    }
    let pid = gateway.child.id();
    let baseline = rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
    let sampler = RssSampler::start(pid);
    let started = Instant::now();
    let uploads = tokens.iter().map(|t| put_file(http, &gateway.url, t, &small));
    let answers = futures_util::future::join_all(uploads).await;
    let uploaded_in = started.elapsed();
    let mut jobs = Vec::new();
    for (answer, token) in answers.into_iter().zip(&tokens) {
        let (status, body) = answer?;
        if status != 202 {
            bail!("an upload answered {status}: {body}");
        }
        jobs.push((token.clone(), body["job_id"].as_str().context("job")?.to_string()));
    }
    println!(
        "all 50 answered 202 in {:.1} s ({:.1} MiB/s aggregate)",
        uploaded_in.as_secs_f64(),
        mib_per_s(50 * std::fs::metadata(&small)?.len(), uploaded_in)
    );
    for (token, job) in &jobs {
        eventually(&format!("job {job} converted"), Duration::from_secs(900), || async {
            let j: Value =
                http.get(format!("{}/v1/jobs/{job}", gateway.url)).bearer_auth(token).send().await?.json().await?;
            match j["state"].as_str() {
                Some("converted") => Ok(Some(())),
                Some("failed") => bail!("job failed: {}", j["error"]),
                _ => Ok(None),
            }
        })
        .await?;
    }
    println!("all 50 converted {:.1} s after the first byte", started.elapsed().as_secs_f64());
    println!("gateway RSS:    {baseline:.1} MiB before, {:.1} MiB peak", sampler.peak_mib());
    Ok(())
}
