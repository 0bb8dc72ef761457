//! Converter benchmark on production-shaped input through the real path, printed as figures
//! (`scripts/bench converter`, which first makes the corpus with `scripts/bench-corpus`). Not a
//! test: it asserts no timing, but fails when a job ends `media.failed` or misses its deadline.
//!
//! Per corpus file and measured run: the ffmpeg CLI converting it from local disk
//! (`ffmpeg -v error -y -i IN -vn -ar 44100 -c:a libmp3lame -b:a 192k OUT.mp3`), then the real
//! path: a SecantusDB server of its own on an empty folder, a RabbitMQ vhost of its own, the file
//! in GridFS bucket `uploads`, the converter as its own release process
//! (`CONVERTER_CONCURRENCY=1`), timed from publishing `media.uploaded` to `media.converted`
//! arriving. Then two copies of the 720p video converted at once (`CONVERTER_CONCURRENCY=2`).
//!
//! Targets: stage/CLI ratio <= 1.10 on every file; one conversion's peak RSS (VmHWM) at most
//! 64 MiB over the idle converter's RSS; the two-at-once run's peak < 160 MiB.
//!
//! `TUNEWIRE_BENCH_RUNS=N` (default 1): N alternating runs per file, medians printed.
//! `TUNEWIRE_BENCH_FILES=a.mp4,b.wav`: only these corpus files.
//! `TUNEWIRE_BENCH_HEAPTRACK=DIR`: the converter runs under heaptrack, its profiles written to DIR
//! (its RSS, CPU and wall times then include heaptrack's own).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunewire_contract::{JobId, JobUpdate, MediaConverted, MediaUploaded, Preset, UserId};
use tunewire_contract::{Owner, SourceFile, TrackTags};
use tunewire_events::topology::{CONVERTER_QUEUE, GATEWAY_QUEUE};
use tunewire_events::{Bus, HandleError, Incoming};
use tunewire_media_store::{Bucket, MediaStore, StoredFile};
use tunewire_test_stack::bench::{FreshMongo, free_port, status_kib};
use tunewire_test_stack::{Sandbox, eventually, media};

const CONVERTER: &str = env!("CARGO_BIN_EXE_tunewire-converter");
const CORPUS: [&str; 4] = ["video-720p-10min.mp4", "podcast-2h.m4a", "wav-1gib.wav", "video-1080p-60s.mkv"];
const TWICE: &str = "video-720p-10min.mp4";
const RATIO_TARGET: f64 = 1.10;
const GROWTH_TARGET_MIB: f64 = 64.0;
const PAIR_PEAK_TARGET_MIB: f64 = 160.0;

fn media_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-media")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// CPU seconds per `/proc/*/stat` tick.
fn tick_s() -> f64 {
    let hz = Command::new("getconf").arg("CLK_TCK").output().ok().and_then(|o| {
        String::from_utf8(o.stdout).ok().and_then(|s| s.trim().parse::<f64>().ok()).filter(|hz| *hz > 0.0)
    });
    1.0 / hz.unwrap_or(100.0)
}

/// Ticks from `/proc/PID/stat` (`self` for this process): user + system of the process itself,
/// or of its children already waited for. CPU time is reported beside wall time because the
/// machine is shared: it shows whether a slow figure was work or waiting for a core.
fn cpu_ticks(pid: &str, children: bool) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces: field 3 (state) onwards.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let at = if children { 13 } else { 11 };
    Some(fields.get(at)?.parse::<u64>().ok()? + fields.get(at + 1)?.parse::<u64>().ok()?)
}

struct CliRun {
    wall: Duration,
    cpu_s: f64,
    duration_s: f64,
    channels: u64,
}

fn cli(input: &Path, output: &Path, tick: f64) -> anyhow::Result<CliRun> {
    let before = cpu_ticks("self", true).unwrap_or(0);
    let started = Instant::now();
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(input)
        .args(["-vn", "-ar", "44100", "-c:a", "libmp3lame", "-b:a", "192k"])
        .arg(output)
        .stdin(Stdio::null())
        .status()
        .context("running the ffmpeg CLI")?;
    let wall = started.elapsed();
    if !status.success() {
        bail!("ffmpeg CLI on {} failed: {status}", input.display());
    }
    let cpu_s = cpu_ticks("self", true).unwrap_or(0).saturating_sub(before) as f64 * tick;
    let probe = media::probe(output)?;
    let duration_s = probe["format"]["duration"].as_str().and_then(|d| d.parse().ok()).unwrap_or(f64::NAN);
    let channels = probe["streams"][0]["channels"].as_u64().unwrap_or(0);
    Ok(CliRun { wall, cpu_s, duration_s, channels })
}

/// The converter binary as its own process, stopped (SIGTERM) or killed when dropped.
struct ConverterProcess {
    child: Child,
    /// The converter's own process (under heaptrack, the wrapper's child).
    pid: u32,
    log: PathBuf,
}

impl ConverterProcess {
    fn spawn(sandbox: &Sandbox, mongo_uri: &str, concurrency: u16, scratch: &Path) -> anyhow::Result<Self> {
        let log = scratch.join("converter.log");
        let out = std::fs::File::create(&log)?;
        let mut command = match std::env::var_os("TUNEWIRE_BENCH_HEAPTRACK") {
            Some(dir) => {
                let mut c = Command::new("heaptrack");
                c.arg("-o").arg(PathBuf::from(dir).join(format!("converter-{}", sandbox.name))).arg(CONVERTER);
                c
            }
            None => Command::new(CONVERTER),
        };
        let child = command
            .env("AMQP_URL", &sandbox.amqp_url)
            .env("MONGODB_URI", mongo_uri)
            .env("MONGODB_DATABASE_PREFIX", &sandbox.mongo_prefix)
            .env("CONVERTER_HEALTH_BIND", format!("127.0.0.1:{}", free_port()?))
            .env("CONVERTER_CONCURRENCY", concurrency.to_string())
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {CONVERTER}"))?;
        let mut process = Self { pid: child.id(), child, log };
        if std::env::var_os("TUNEWIRE_BENCH_HEAPTRACK").is_some() {
            process.pid = wrapped_converter(process.child.id())?;
        }
        Ok(process)
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    /// VmRSS and VmHWM, until the process exits (a zombie has neither).
    fn memory_kib(&self) -> Option<(u64, u64)> {
        Some((status_kib(self.pid(), "VmRSS")?, status_kib(self.pid(), "VmHWM")?))
    }

    /// The timings of each "converted" line in its log: the whole handling, the transcode
    /// (the original read as it goes, the MP3 written as it comes), and of that the time spent
    /// waiting for the original's chunks.
    fn converted_lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(strip_ansi)
            .filter(|l| l.contains(" converted ") && l.contains("took_ms="))
            .map(|l| {
                let field = |key: &str| {
                    l.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or("?").trim_matches('"').to_string()
                };
                format!(
                    "handled in {} ms: transcode {} ms, of which waiting for the original {} ms",
                    field("took_ms="),
                    field("transcode_ms="),
                    field("source_wait_ms=")
                )
            })
            .collect()
    }

    /// The end of its log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn fail(&self, what: &str) -> anyhow::Error {
        anyhow::anyhow!("{what}\n--- converter log ({}), last lines:\n{}", self.log.display(), self.log_tail())
    }

    /// SIGTERM, then the converter's own shutdown deadline to exit.
    async fn stop(&mut self) -> anyhow::Result<()> {
        Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().context("sending SIGTERM")?;
        let grace = Duration::from_secs(tunewire_converter::SHUTDOWN_DEADLINE_S + 10);
        let until = Instant::now() + grace;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > until {
                return Err(self.fail(&format!("the converter did not exit within {grace:?} of SIGTERM")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !status.success() {
            return Err(self.fail(&format!("the converter exited with {status} after SIGTERM")));
        }
        Ok(())
    }
}

impl Drop for ConverterProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Under a wrapper, the converter itself first: killing the wrapper would orphan it.
            if self.pid != self.child.id() {
                let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The converter's reader on the original with nothing else to do: what the store alone
/// costs a conversion.
async fn read_alone(store: &MediaStore, id: &tunewire_contract::FileId) -> anyhow::Result<(Duration, u64)> {
    use std::io::Read;
    let mut reader = store.reader(Bucket::Uploads, id).await?.context("the original is gone")?;
    tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || {
        let started = Instant::now();
        let mut buf = vec![0u8; 32 * 1024];
        let mut total = 0u64;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok((started.elapsed(), total)),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(anyhow::Error::from(e)),
            }
        }
    })
    .await?
}

/// The converter started by a wrapper process (heaptrack runs it as a child).
fn wrapped_converter(wrapper: u32) -> anyhow::Result<u32> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let children = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.starts_with("tunewire-conver") {
                return Ok(child);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no converter process under the wrapper {wrapper}")
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct StageRun {
    /// From the first publish to the last `media.converted`.
    wall: Duration,
    /// Each job's own time from the first publish, in arrival order.
    each: Vec<Duration>,
    cpu_s: f64,
    idle_kib: u64,
    peak_kib: u64,
    outputs: Vec<MediaConverted>,
    /// Per job, from the converter's own "converted" line: where its time went.
    breakdown: Vec<String>,
}

fn file_name(path: &Path) -> anyhow::Result<&str> {
    path.file_name().and_then(|n| n.to_str()).with_context(|| format!("no file name in {}", path.display()))
}

async fn store_original(store: &MediaStore, path: &Path) -> anyhow::Result<StoredFile> {
    let file = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    let source = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    let metadata = mongodb::bson::doc! {"owner_id": UserId::new().to_string()};
    Ok(store.store(Bucket::Uploads, None, file_name(path)?, metadata, source, u64::MAX).await?)
}

/// The real path for `inputs` (converted at once when more than one), on a server, a vhost
/// and a converter process of their own.
async fn stage(inputs: &[&Path], concurrency: u16, deadline: Duration, tick: f64) -> anyhow::Result<StageRun> {
    let mongo = FreshMongo::start().await?;
    let sandbox = Sandbox::create().await?;
    let scratch = std::env::temp_dir().join(format!("tw-bench-converter-{}", sandbox.name));
    std::fs::create_dir_all(&scratch)?;
    let outcome = stage_in(&sandbox, &mongo, &scratch, inputs, concurrency, deadline, tick).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let cleaned = sandbox.cleanup().await;
    let run = outcome?;
    cleaned.context("removing the bench's sandbox")?;
    Ok(run)
}

async fn stage_in(
    sandbox: &Sandbox,
    mongo: &FreshMongo,
    scratch: &Path,
    inputs: &[&Path],
    concurrency: u16,
    deadline: Duration,
    tick: f64,
) -> anyhow::Result<StageRun> {
    let bus = Arc::new(Bus::new(sandbox.amqp_url.clone(), "bench"));
    // The sandbox's setup declared the topology, so the converter's queue exists before we publish.
    let publisher = bus.publisher().await?;
    // The bench stands where the gateway would: its queue gets the converter's outcomes, and
    // nothing else consumes it in this vhost.
    let (arrived, mut outcomes) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let _stop_listening = stop.clone().drop_guard();
    tokio::spawn({
        let bus = bus.clone();
        let handler = move |msg: Incoming<JobUpdate>| {
            let arrived = arrived.clone();
            async move {
                let _ = arrived.send((Instant::now(), msg.event));
                Ok::<(), HandleError>(())
            }
        };
        async move { bus.consume(GATEWAY_QUEUE, 16, handler, stop).await }
    });

    let store = MediaStore::connect(&mongo.uri, &sandbox.mongo_prefix).await?;
    store.prepare().await?;
    let mut originals = Vec::new();
    for path in inputs {
        originals.push((file_name(path)?.to_string(), store_original(&store, path).await?));
    }
    let first_original = originals.first().map(|(_, o)| o.id.clone()).context("no input")?;

    let mut converter = ConverterProcess::spawn(sandbox, &mongo.uri, concurrency, scratch)?;
    let consuming = eventually("the converter consumes its queue", Duration::from_secs(120), || async {
        if converter.memory_kib().is_none() {
            bail!("the converter exited");
        }
        let queues = sandbox.queues().await?;
        let consumers = queues.iter().find(|q| q["name"] == CONVERTER_QUEUE.name).and_then(|q| q["consumers"].as_u64());
        Ok(consumers.filter(|n| *n > 0).map(|_| ()))
    })
    .await;
    consuming.map_err(|e| converter.fail(&format!("{e:#}")))?;
    let (idle_kib, mut peak_kib) = converter.memory_kib().ok_or_else(|| converter.fail("the converter exited"))?;
    let pid = converter.pid().to_string();
    let cpu_before = cpu_ticks(&pid, false).unwrap_or(0);
    let store_pid = mongo.pid().to_string();
    let store_cpu_before = cpu_ticks(&store_pid, false).unwrap_or(0);

    let owner = Owner { id: UserId::new(), email: "bench@tunewire.test".parse()? };
    let mut waiting = HashMap::new();
    let started = Instant::now();
    for (filename, original) in originals {
        let event = MediaUploaded {
            job_id: JobId::new(),
            owner: owner.clone(),
            source: SourceFile {
                file_id: original.id,
                filename: filename.clone(),
                size: original.size,
                sha256: original.sha256,
            },
            preset: Preset::Cbr192,
            overrides: TrackTags::default(),
            normalize_loudness: false,
        };
        publisher.publish(&event).await?;
        waiting.insert(event.job_id, filename);
    }

    let (mut each, mut outputs) = (Vec::new(), Vec::new());
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    while !waiting.is_empty() {
        tokio::select! {
            next = outcomes.recv() => match next {
                Some((at, JobUpdate::Converted(done))) => {
                    // A redelivered job announces itself again: count each job once.
                    if waiting.remove(&done.job_id).is_some() {
                        each.push(at - started);
                        outputs.push(done);
                    }
                }
                Some((_, JobUpdate::Failed(failed))) => {
                    let name = waiting.get(&failed.job_id).map_or("?", String::as_str);
                    return Err(converter.fail(&format!("{name}: media.failed: {}", failed.reason)));
                }
                Some((_, JobUpdate::Progress(_) | JobUpdate::Catalogued(_))) => {}
                None => bail!("the outcome listener stopped"),
            },
            _ = poll.tick() => {
                let Some((_, hwm)) = converter.memory_kib() else {
                    return Err(converter.fail("the converter exited during the conversion"));
                };
                peak_kib = peak_kib.max(hwm);
                if started.elapsed() > deadline {
                    let names: Vec<&String> = waiting.values().collect();
                    return Err(converter.fail(&format!("{names:?}: no media.converted within {deadline:?}")));
                }
            }
        }
    }
    let cpu_s = cpu_ticks(&pid, false).unwrap_or(0).saturating_sub(cpu_before) as f64 * tick;
    let store_cpu_s = cpu_ticks(&store_pid, false).unwrap_or(0).saturating_sub(store_cpu_before) as f64 * tick;
    // The high-water mark just before the process goes: nothing it did is missed.
    if let Some((_, hwm)) = converter.memory_kib() {
        peak_kib = peak_kib.max(hwm);
    }
    converter.stop().await?;
    let mut breakdown = converter.converted_lines();
    breakdown.push(format!("the MongoDB-wire server's CPU meanwhile: {store_cpu_s:.2} s"));
    let read = read_alone(&store, &first_original).await?;
    breakdown.push(format!(
        "the same reader alone, after: {:.2} s for the original ({:.0} MiB/s)",
        secs(read.0),
        read.1 as f64 / 1048576.0 / secs(read.0)
    ));
    let wall = each.iter().copied().max().unwrap_or_default();
    Ok(StageRun { wall, each, cpu_s, idle_kib, peak_kib, outputs, breakdown })
}

/// A job may take this long before the bench gives up on it: far beyond any plausible
/// slowness, short of waiting forever on a hung converter.
fn deadline_for(cli: Duration, jobs: u32) -> Duration {
    (cli * 20 * jobs).max(Duration::from_secs(300))
}

struct FileFigures {
    name: &'static str,
    stage: Vec<f64>,
    cli: Vec<f64>,
    stage_cpu: Vec<f64>,
    cli_cpu: Vec<f64>,
    idle_kib: u64,
    peak_kib: u64,
    growth_kib: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench_started = Instant::now();
    if !CONVERTER.contains("/release/") {
        bail!("{CONVERTER} is not a release build: run this with `cargo bench` (scripts/bench converter)");
    }
    let runs: usize = match std::env::var("TUNEWIRE_BENCH_RUNS") {
        Ok(n) => n.parse().ok().filter(|n| *n > 0).context("TUNEWIRE_BENCH_RUNS: a positive number")?,
        Err(_) => 1,
    };
    let only = std::env::var("TUNEWIRE_BENCH_FILES").ok();
    let selected: Vec<&'static str> = CORPUS
        .into_iter()
        .filter(|name| only.as_deref().is_none_or(|o| o.split(',').any(|s| s.trim() == *name)))
        .collect();
    let mut inputs = Vec::new();
    for name in &selected {
        let path = media_dir().join(name);
        if !path.is_file() {
            bail!("{} is missing: run scripts/bench-corpus first", path.display());
        }
        inputs.push((*name, path));
    }
    let scratch = std::env::temp_dir().join(format!("tw-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let cli_out = scratch.join("out.mp3");
    let tick = tick_s();
    println!("converter: {CONVERTER}");
    println!(
        "load average at start: {} (2 shared cores: CPU seconds are printed beside wall times)",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );

    println!("== each file through the real path (CONVERTER_CONCURRENCY=1) vs the ffmpeg CLI, {runs} run(s) ==");
    let mut figures = Vec::new();
    for (name, path) in &inputs {
        let mut f = FileFigures {
            name,
            stage: vec![],
            cli: vec![],
            stage_cpu: vec![],
            cli_cpu: vec![],
            idle_kib: 0,
            peak_kib: 0,
            growth_kib: 0,
        };
        for run in 1..=runs {
            let (p, o) = (path.clone(), cli_out.clone());
            let c =
                tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || cli(&p, &o, tick)).await??;
            let s =
                stage(&[path.as_path()], 1, deadline_for(c.wall, 1), tick).await.with_context(|| name.to_string())?;
            let out = s.outputs.first().context("no output")?;
            println!(
                "run {run} {name:<22} stage {:>7.2} s  CLI {:>7.2} s  ratio {:.3} | CPU: converter {:>7.2} s, CLI {:>7.2} s | RSS idle {:.1} MiB, peak {:.1} MiB (+{:.1}) | MP3 {:.1} s, {} ch, {:.1} MiB (CLI's {:.1} s, {} ch)",
                secs(s.wall),
                secs(c.wall),
                secs(s.wall) / secs(c.wall),
                s.cpu_s,
                c.cpu_s,
                mib(s.idle_kib),
                mib(s.peak_kib),
                mib(s.peak_kib.saturating_sub(s.idle_kib)),
                out.output.duration_s,
                out.output.channels,
                out.output.size as f64 / 1048576.0,
                c.duration_s,
                c.channels,
            );
            for line in &s.breakdown {
                println!("  converter: {line}");
            }
            // Not the same work, so the ratio would mislead: say so beside it.
            if (out.output.duration_s - c.duration_s).abs() > 2.0 || u64::from(out.output.channels) != c.channels {
                println!("  note: the converter's MP3 and the CLI's differ in duration (> 2 s) or channels");
            }
            f.stage.push(secs(s.wall));
            f.cli.push(secs(c.wall));
            f.stage_cpu.push(s.cpu_s);
            f.cli_cpu.push(c.cpu_s);
            if s.peak_kib.saturating_sub(s.idle_kib) >= f.growth_kib {
                (f.idle_kib, f.peak_kib, f.growth_kib) =
                    (s.idle_kib, s.peak_kib, s.peak_kib.saturating_sub(s.idle_kib));
            }
        }
        figures.push(f);
    }

    println!();
    println!(
        "{:<22} {:>9} {:>9} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "median of runs", "stage s", "CLI s", "ratio", "conv CPU", "CLI CPU", "idle MiB", "peak MiB", "+MiB"
    );
    for f in &figures {
        let ratio = median(&f.stage) / median(&f.cli);
        let growth = mib(f.growth_kib);
        println!(
            "{:<22} {:>9.2} {:>9.2} {:>7.3} {:>8.2} {:>8.2} {:>9.1} {:>9.1} {:>9.1}  ratio {} <= {RATIO_TARGET:.2}, growth {} <= {GROWTH_TARGET_MIB:.0} MiB",
            f.name,
            median(&f.stage),
            median(&f.cli),
            ratio,
            median(&f.stage_cpu),
            median(&f.cli_cpu),
            mib(f.idle_kib),
            mib(f.peak_kib),
            growth,
            if ratio <= RATIO_TARGET { "meets" } else { "MISSES" },
            if growth <= GROWTH_TARGET_MIB { "meets" } else { "MISSES" },
        );
    }
    println!("(peak and growth: the run with the largest growth)");

    if let Some((_, path)) = inputs.iter().find(|(name, _)| *name == TWICE) {
        println!();
        println!("== two copies of {TWICE} at once (CONVERTER_CONCURRENCY=2, two uploads, two jobs) ==");
        let one_cli = match figures.iter().find(|f| f.name == TWICE) {
            Some(f) => median(&f.cli),
            None => {
                let (p, o) = (path.clone(), cli_out.clone());
                secs(
                    tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || cli(&p, &o, tick))
                        .await??
                        .wall,
                )
            }
        };
        let pair = [path.as_path(), path.as_path()];
        let deadline = deadline_for(Duration::from_secs_f64(one_cli), 2);
        let s = stage(&pair, 2, deadline, tick).await.context("two at once")?;
        let each: Vec<String> = s.each.iter().map(|d| format!("{:.2} s", secs(*d))).collect();
        println!(
            "wall {:.2} s (jobs done at {}; one CLI conversion {:.2} s) | CPU: converter {:.2} s",
            secs(s.wall),
            each.join(", "),
            one_cli,
            s.cpu_s
        );
        println!(
            "RSS idle {:.1} MiB, peak {:.1} MiB (+{:.1}): peak {} < {PAIR_PEAK_TARGET_MIB:.0} MiB",
            mib(s.idle_kib),
            mib(s.peak_kib),
            mib(s.peak_kib.saturating_sub(s.idle_kib)),
            if mib(s.peak_kib) < PAIR_PEAK_TARGET_MIB { "meets" } else { "MISSES" }
        );
        for line in &s.breakdown {
            println!("  converter: {line}");
        }
    } else {
        println!("(two at once skipped: {TWICE} is not among TUNEWIRE_BENCH_FILES)");
    }
    std::fs::remove_dir_all(&scratch).context("removing the CLI's scratch folder")?;
    println!("converter bench: {:.1} s", secs(bench_started.elapsed()));
    Ok(())
}
