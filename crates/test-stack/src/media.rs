//! Test media made with the ffmpeg CLI (installed by scripts/stack), and ffprobe's view of it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

pub fn ffmpeg(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("ffmpeg").args(["-hide_banner", "-loglevel", "error", "-y"]).args(args).status()?;
    if !status.success() {
        bail!("ffmpeg {args:?} failed");
    }
    Ok(())
}

/// An H.264/AAC MP4 (48 kHz stereo sine under a test pattern) with the given container tags.
pub fn h264_aac_mp4(path: &Path, seconds: u32, tags: &[(&str, &str)]) -> anyhow::Result<()> {
    let video = format!("testsrc=size=160x120:rate=10:duration={seconds}");
    let audio = format!("sine=frequency=440:sample_rate=48000:duration={seconds}");
    let tags: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec![
        "-f",
        "lavfi",
        "-i",
        &video,
        "-f",
        "lavfi",
        "-i",
        &audio,
        "-ac",
        "2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
    ];
    for tag in &tags {
        args.extend(["-metadata", tag.as_str()]);
    }
    args.push(path.to_str().context("non-UTF-8 path")?);
    ffmpeg(&args)
}

/// `ffprobe -show_streams -show_format` as JSON.
pub fn probe(path: &Path) -> anyhow::Result<Value> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json", "-show_streams", "-show_format"])
        .arg(path)
        .output()?;
    Ok(serde_json::from_slice(&out.stdout)?)
}
