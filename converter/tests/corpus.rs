//! The corpus: media of every shape people upload, made here with the ffmpeg CLI, each
//! converted by the converter's own code and checked by probing the MP3 (codec, rate,
//! channels, duration, tags, cover).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tunewire_contract::Preset;
use tunewire_contract::TrackTags;
use tunewire_converter::transcode::{Report, Request, TranscodeError, transcode_file};
use tunewire_test_stack::media::{ffmpeg, probe};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("tw-corpus-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn convert(input: &Path, output: &Path, preset: Preset) -> Result<Report, TranscodeError> {
    convert_with(input, output, preset, false)
}

fn convert_with(
    input: &Path,
    output: &Path,
    preset: Preset,
    normalize_loudness: bool,
) -> Result<Report, TranscodeError> {
    let overrides = TrackTags::default();
    let request = Request {
        preset,
        overrides: &overrides,
        fallback_title: "fallback",
        max_duration_s: 4.0 * 3600.0,
        normalize_loudness,
        time_limit: Duration::from_secs(600),
    };
    transcode_file(&request, input, output, &mut |_| {})
}

struct Expect {
    channels: u64,
    seconds: f64,
    cover: bool,
    title: &'static str,
}

/// Probes the MP3 and checks it against what the source was.
fn check(name: &str, mp3: &Path, report: &Report, expect: &Expect) -> anyhow::Result<()> {
    let json: Value = probe(mp3)?;
    let streams = json["streams"].as_array().context("streams")?;
    let audio = streams.iter().find(|s| s["codec_type"] == "audio").context("no audio stream")?;
    if audio["codec_name"] != "mp3" || audio["sample_rate"] != "44100" || audio["channels"] != expect.channels {
        bail!("{name}: {} {} Hz {} ch", audio["codec_name"], audio["sample_rate"], audio["channels"]);
    }
    let duration: f64 = json["format"]["duration"].as_str().context("duration")?.parse()?;
    if (duration - expect.seconds).abs() > 0.15 {
        bail!("{name}: {duration} s instead of {}", expect.seconds);
    }
    let tags = &json["format"]["tags"];
    if tags["title"] != expect.title {
        bail!("{name}: title {} instead of {}", tags["title"], expect.title);
    }
    if tags["encoded_by"] != "Tunewire" {
        bail!("{name}: encoded_by tag {}", tags["encoded_by"]);
    }
    let cover = streams.iter().any(|s| s["disposition"]["attached_pic"] == 1);
    if cover != expect.cover || report.source.has_cover != expect.cover {
        bail!("{name}: cover in MP3 {cover}, reported {}, expected {}", report.source.has_cover, expect.cover);
    }
    Ok(())
}

#[test]
fn every_common_container_and_codec_becomes_a_faithful_mp3() -> anyhow::Result<()> {
    let dir = Scratch::new("formats")?;
    let tone = "sine=frequency=440:sample_rate=48000:duration=6";
    let stereo = ["-ac", "2"];
    // (file, encoder options, channels out); none of these has a cover.
    let cases: Vec<(&str, Vec<&str>, u64)> = vec![
        ("aac.mp4", vec!["-c:a", "aac"], 2),
        ("opus.mkv", vec!["-c:a", "libopus"], 2),
        ("vorbis.webm", vec!["-c:a", "libvorbis"], 2),
        ("pcm.mov", vec!["-c:a", "pcm_s16le"], 2),
        ("mp3.avi", vec!["-c:a", "libmp3lame"], 2),
        ("aac.flv", vec!["-c:a", "aac"], 2),
        ("vorbis.ogg", vec!["-c:a", "libvorbis"], 2),
        ("plain.wav", vec!["-c:a", "pcm_s16le"], 2),
        ("hires.wav", vec!["-ar", "96000", "-c:a", "pcm_s24le"], 2),
    ];
    for (file, options, channels) in cases {
        let input = dir.path(file);
        let mut args = vec!["-f", "lavfi", "-i", tone];
        args.extend(stereo);
        args.extend(options);
        args.extend(["-metadata", "title=Corpus Tone", &input]);
        ffmpeg(&args)?;
        let output = dir.0.join(format!("{file}.mp3"));
        let report = convert(Path::new(&input), &output, Preset::Cbr192).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        check(file, &output, &report, &Expect { channels, seconds: 6.0, cover: false, title: "Corpus Tone" })?;
    }
    Ok(())
}

#[test]
fn covers_of_flac_and_m4a_become_an_apic_front_cover() -> anyhow::Result<()> {
    let dir = Scratch::new("covers")?;
    ffmpeg(&["-f", "lavfi", "-i", "color=c=red:s=64x64", "-frames:v", "1", &dir.path("cover.png")])?;
    ffmpeg(&["-f", "lavfi", "-i", "color=c=blue:s=64x64", "-frames:v", "1", &dir.path("cover.jpg")])?;
    for (file, cover, codec, picture) in
        [("cover.flac", "cover.png", "flac", "png"), ("cover.m4a", "cover.jpg", "aac", "mjpeg")]
    {
        let input = dir.path(file);
        let cover = dir.path(cover);
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=330:duration=5",
            "-i",
            &cover,
            "-map",
            "0:a",
            "-map",
            "1:v",
            "-c:a",
            codec,
            "-c:v",
            picture,
            "-disposition:v",
            "attached_pic",
            "-metadata",
            "title=With Cover",
            "-metadata",
            "album_artist=Various",
            "-metadata",
            "track=3",
            &input,
        ])?;
        let output = dir.0.join(format!("{file}.mp3"));
        let report = convert(Path::new(&input), &output, Preset::V2).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        check(file, &output, &report, &Expect { channels: 1, seconds: 5.0, cover: true, title: "With Cover" })?;
        let tags = probe(&output)?["format"]["tags"].clone();
        assert_eq!(tags["album_artist"], "Various", "{file}: {tags}");
        assert!(tags["track"].as_str().is_some_and(|t| t.starts_with('3')), "{file}: {tags}");
    }
    Ok(())
}

#[test]
fn surround_is_downmixed_low_rates_stay_mono_and_two_hours_convert_whole() -> anyhow::Result<()> {
    let dir = Scratch::new("shapes")?;
    let surround = dir.path("surround.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000:duration=6",
        "-af",
        "pan=5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0",
        "-c:a",
        "aac",
        "-metadata",
        "title=Surround",
        &surround,
    ])?;
    let output = dir.0.join("surround.mp3");
    let report = convert(Path::new(&surround), &output, Preset::Cbr192)?;
    assert_eq!(report.source.channels, 6);
    check("5.1", &output, &report, &Expect { channels: 2, seconds: 6.0, cover: false, title: "Surround" })?;

    let phone = dir.path("phone.wav");
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=300:sample_rate=8000:duration=6", "-ac", "1", &phone])?;
    let output = dir.0.join("phone.mp3");
    let report = convert(Path::new(&phone), &output, Preset::Cbr128)?;
    check("8 kHz mono", &output, &report, &Expect { channels: 1, seconds: 6.0, cover: false, title: "fallback" })?;

    // Two hours, cheap to make and to decode (8-bit 8 kHz PCM): the length survives.
    let long = dir.path("long.wav");
    ffmpeg(&["-f", "lavfi", "-i", "anoisesrc=r=8000:a=0.1:d=7200", "-ac", "1", "-c:a", "pcm_u8", &long])?;
    let output = dir.0.join("long.mp3");
    let report = convert(Path::new(&long), &output, Preset::Cbr128)?;
    check("2 hours", &output, &report, &Expect { channels: 1, seconds: 7200.0, cover: false, title: "fallback" })?;
    assert!(report.source.warnings.is_empty(), "{:?}", report.source.warnings);
    Ok(())
}

#[test]
fn bad_inputs_fail_with_a_readable_reason() -> anyhow::Result<()> {
    let dir = Scratch::new("bad")?;
    let good = dir.path("good.mp4");
    ffmpeg(&["-f", "lavfi", "-i", "sine=duration=4", "-c:a", "aac", &good])?;
    let bytes = std::fs::read(&good)?;
    let mut zip = b"PK\\x03\\x04".to_vec();
    zip.extend(std::iter::repeat_n(0u8, 2000));
    let video_only = dir.path("video.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x64:rate=5:duration=2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        &video_only,
    ])?;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.mp4", Vec::new()),
        ("random.mp4", (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()),
        ("truncated.mp4", bytes[..bytes.len() / 3].to_vec()),
        ("page.mp4", b"<!doctype html><html><body>not a video</body></html>".to_vec()),
        ("archive.mp4", zip),
        ("video.mp4", std::fs::read(&video_only)?),
    ];
    for (name, content) in cases {
        let input = dir.0.join(format!("in-{name}"));
        std::fs::write(&input, content)?;
        let output = dir.0.join(format!("{name}.mp3"));
        match convert(&input, &output, Preset::Cbr192) {
            Err(TranscodeError::BadMedia(reason)) => {
                assert!(reason.len() > 10 && !reason.contains("panic"), "{name}: {reason}");
            }
            // A truncated MP4 whose index survived converts what is there; that is fine,
            // as long as it says the audio is shorter than claimed.
            Ok(report) if name == "truncated.mp4" => {
                assert!(!report.source.warnings.is_empty(), "{name}: converted without a warning");
            }
            other => bail!("{name}: expected a failure with a reason, got {other:?}"),
        }
    }
    Ok(())
}

/// Integrated loudness of a file, measured by the ffmpeg CLI's EBU R128 meter.
fn integrated_lufs(path: &Path) -> anyhow::Result<f64> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostats", "-hide_banner", "-i"])
        .arg(path)
        .args(["-af", "ebur128", "-f", "null", "-"])
        .output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log.lines().rev().find(|l| l.trim_start().starts_with("I:")).context("no integrated loudness")?;
    Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
}

#[test]
fn loudness_normalisation_brings_a_quiet_track_to_minus_14_lufs() -> anyhow::Result<()> {
    let dir = Scratch::new("loudness")?;
    let quiet = dir.path("quiet.wav");
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=440:duration=15", "-af", "volume=-30dB", "-ac", "2", &quiet])?;
    let (plain, normalised) = (dir.0.join("plain.mp3"), dir.0.join("normalised.mp3"));
    convert_with(Path::new(&quiet), &plain, Preset::Cbr192, false)?;
    let report = convert_with(Path::new(&quiet), &normalised, Preset::Cbr192, true)?;
    let (before, after) = (integrated_lufs(&plain)?, integrated_lufs(&normalised)?);
    assert!(before < -30.0, "the source is quiet: {before} LUFS");
    assert!((after - tunewire_converter::transcode::TARGET_LUFS).abs() < 1.5, "normalised to {after} LUFS");
    assert!((report.duration_s - 15.0).abs() < 0.15, "{}", report.duration_s);
    Ok(())
}
