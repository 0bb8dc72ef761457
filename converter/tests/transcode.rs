//! The transcoder on media made by the ffmpeg CLI, checked by probing the output.

use std::path::{Path, PathBuf};

use tunewire_contract::Preset;
use tunewire_contract::TrackTags;
use tunewire_converter::transcode::{Report, Request, TranscodeError, transcode_file};
use tunewire_test_stack::media;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Dir {
    let dir = std::env::temp_dir().join(format!("tw-transcode-{}", uuid_like()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    Dir(dir)
}

fn uuid_like() -> String {
    format!("{}-{:?}", std::process::id(), std::thread::current().id()).replace(['(', ')'], "")
}

fn ffmpeg(args: &[&str]) {
    media::ffmpeg(args).expect("the ffmpeg CLI");
}

/// (codec, sample rate, channels, duration, title tag) of an MP3.
fn probe(path: &Path) -> (String, u32, u32, f64, String) {
    let json = media::probe(path).expect("ffprobe");
    let s = &json["streams"][0];
    (
        s["codec_name"].as_str().unwrap_or_default().to_string(),
        s["sample_rate"].as_str().unwrap_or("0").parse().expect("a sample rate"),
        s["channels"].as_u64().unwrap_or(0) as u32,
        json["format"]["duration"].as_str().unwrap_or("0").parse().expect("a duration"),
        json["format"]["tags"]["title"].as_str().unwrap_or_default().to_string(),
    )
}

fn run(input: &Path, output: &Path, overrides: &TrackTags) -> Result<Report, TranscodeError> {
    let request = Request {
        preset: Preset::Cbr192,
        overrides,
        fallback_title: "fallback",
        max_duration_s: 4.0 * 3600.0,
        normalize_loudness: false,
        time_limit: std::time::Duration::from_secs(600),
    };
    transcode_file(&request, input, output, &mut |_| {})
}

#[test]
fn h264_aac_mp4_becomes_a_tagged_stereo_mp3_of_the_same_length() {
    let dir = tempdir();
    let (input, output) = (dir.0.join("in.mp4"), dir.0.join("out.mp3"));
    // Upper-case keys, as MKV writes them: tag lookup must ignore case.
    media::h264_aac_mp4(&input, 30, &[("title", "Sine Song"), ("ARTIST", "Oscillator")]).unwrap();
    let report = run(&input, &output, &TrackTags::default()).unwrap();
    assert_eq!(report.tags.title.as_deref(), Some("Sine Song"));
    assert_eq!(report.tags.artist.as_deref(), Some("Oscillator"));
    let (codec, rate, channels, duration, title) = probe(&output);
    assert_eq!((codec.as_str(), rate, channels), ("mp3", 44_100, 2));
    assert!((duration - 30.0).abs() < 0.15, "duration {duration}");
    assert!((report.duration_s - 30.0).abs() < 0.15, "reported {}", report.duration_s);
    assert_eq!(title, "Sine Song");
}

#[test]
fn mono_wav_without_channel_mask_stays_mono_and_takes_the_uploaders_title() {
    let dir = tempdir();
    let (input, output) = (dir.0.join("in.wav"), dir.0.join("out.mp3"));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=300:sample_rate=8000:duration=5",
        "-ac",
        "1",
        input.to_str().unwrap(),
    ]);
    let overrides = TrackTags { title: Some("Given".into()), ..Default::default() };
    let report = run(&input, &output, &overrides).unwrap();
    let (codec, rate, channels, duration, title) = probe(&output);
    assert_eq!((codec.as_str(), rate, channels), ("mp3", 44_100, 1));
    assert!((duration - 5.0).abs() < 0.15, "duration {duration}");
    assert_eq!(title, "Given");
    assert_eq!(report.channels, 1);
}
