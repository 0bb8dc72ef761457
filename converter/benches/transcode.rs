//! Converter benchmark, printed as figures (`scripts/bench`; not a test):
//!
//! 1. A 10-minute H.264/AAC MP4 to 192 kb/s MP3: the converter's code path against
//!    `ffmpeg -i in.mp4 -vn -ar 44100 -c:a libmp3lame -b:a 192k`, alternating, 5 runs each;
//!    both medians and their ratio (target <= 1.05).
//! 2. What loudness normalisation costs on the same file.
//! 3. 20 one-minute jobs on 1 worker and on 2: the throughput ratio.
//! 4. Peak RSS of one conversion.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tunewire_converter::transcode::{Request, transcode};
use tunewire_events::Preset;
use tunewire_events::contract::TrackTags;
use tunewire_test_stack::media::h264_aac_mp4;

fn media_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-media")
}

fn mp4_of(seconds: u32) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(media_dir())?;
    let path = media_dir().join(format!("h264-aac-{seconds}s.mp4"));
    if !path.exists() {
        h264_aac_mp4(&path, seconds, &[("title", "Bench")])?;
    }
    Ok(path)
}

fn ours(input: &Path, output: &Path, normalize_loudness: bool) -> anyhow::Result<Duration> {
    let overrides = TrackTags::default();
    let request = Request {
        input,
        output,
        preset: Preset::Cbr192,
        overrides: &overrides,
        fallback_title: "bench",
        max_duration_s: 4.0 * 3600.0,
        normalize_loudness,
        time_limit: Duration::from_secs(3600),
    };
    let started = Instant::now();
    transcode(&request, &mut |_| {}).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(started.elapsed())
}

fn cli(input: &Path, output: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(input)
        .args(["-vn", "-ar", "44100", "-c:a", "libmp3lame", "-b:a", "192k"])
        .arg(output)
        .status()?;
    if !status.success() {
        bail!("ffmpeg failed");
    }
    Ok(started.elapsed())
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    tunewire_converter::transcode::init().map_err(|e| anyhow::anyhow!("{e}"))?;
    let work = std::env::temp_dir().join(format!("tw-bench-convert-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let long = mp4_of(600)?;
    let minute = mp4_of(60)?;

    // First, while the process is fresh: the peak memory one conversion adds.
    let before = peak_rss_kib().unwrap_or(0);
    ours(&long, &work.join("rss.mp3"), false)?;
    let after = peak_rss_kib().unwrap_or(0);
    println!(
        "peak RSS of one 10-minute conversion: +{:.1} MiB (process peak {:.1} MiB)",
        (after.saturating_sub(before)) as f64 / 1024.0,
        after as f64 / 1024.0
    );

    println!("== 10-minute H.264/AAC MP4 -> 192 kb/s MP3, 5 runs each, alternating ==");
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for run in 1..=5 {
        let a = ours(&long, &work.join("ours.mp3"), false)?;
        let b = cli(&long, &work.join("cli.mp3"))?;
        println!("run {run}: converter {:>6.2} s   ffmpeg CLI {:>6.2} s", a.as_secs_f64(), b.as_secs_f64());
        mine.push(a);
        theirs.push(b);
    }
    let (m, t) = (median(mine), median(theirs));
    println!(
        "median: converter {:.2} s, ffmpeg CLI {:.2} s, ratio {:.3} (target <= 1.05)",
        m.as_secs_f64(),
        t.as_secs_f64(),
        m.as_secs_f64() / t.as_secs_f64()
    );

    let loud: Vec<Duration> =
        (0..3).map(|_| ours(&long, &work.join("loud.mp3"), true)).collect::<anyhow::Result<_>>()?;
    let l = median(loud);
    println!(
        "loudness normalisation: {:.2} s median of 3, {:.2}x plain",
        l.as_secs_f64(),
        l.as_secs_f64() / m.as_secs_f64()
    );

    println!("== 20 one-minute jobs ==");
    let jobs = 20;
    let mut throughput = Vec::new();
    for workers in [1usize, 2] {
        let started = Instant::now();
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let (minute, work) = (&minute, &work);
                    scope.spawn(move || -> anyhow::Result<()> {
                        for job in (w..jobs).step_by(workers) {
                            ours(minute, &work.join(format!("job-{job}.mp3")), false)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for handle in handles {
                handle.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
            }
            Ok(())
        })?;
        let elapsed = started.elapsed();
        let per_minute = jobs as f64 / elapsed.as_secs_f64() * 60.0;
        println!("{workers} worker(s): {:.1} s, {per_minute:.0} jobs/min", elapsed.as_secs_f64());
        throughput.push(per_minute);
    }
    println!("2 workers vs 1: {:.2}x throughput (2 cores)", throughput[1] / throughput[0]);
    std::fs::remove_dir_all(&work).context("removing the work folder")?;
    Ok(())
}
