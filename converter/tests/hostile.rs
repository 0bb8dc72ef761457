//! Files made to attack the converter: playlists that point elsewhere, a length that lies,
//! a store that stops answering. Each must end as a reason for the uploader, touching
//! nothing but the bytes it was given.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use mongodb::bson::doc;
use tunewire_contract::Preset;
use tunewire_contract::TrackTags;
use tunewire_converter::transcode::{Request, TranscodeError, transcode, transcode_file};
use tunewire_media_store::{Bucket, MediaStore};
use tunewire_test_stack::proxy::{Proxy, host_port};
use tunewire_test_stack::{Sandbox, media};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("tw-hostile-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn request(overrides: &TrackTags, max_duration_s: f64, time_limit: Duration) -> Request<'_> {
    Request {
        preset: Preset::Cbr128,
        overrides,
        fallback_title: "hostile",
        max_duration_s,
        normalize_loudness: false,
        time_limit,
    }
}

/// Runs the conversion on a thread of its own: a conversion that opened the FIFO it was
/// pointed at would block for ever, and that must fail the test, not hang it.
fn convert_within(input: &Path, output: &Path, deadline: Duration) -> anyhow::Result<Result<(), TranscodeError>> {
    let (done, outcome) = mpsc::channel();
    let (input, output) = (input.to_path_buf(), output.to_path_buf());
    std::thread::spawn(move || {
        let overrides = TrackTags::default();
        let req = request(&overrides, 3600.0, Duration::from_secs(60));
        let _ = done.send(transcode_file(&req, &input, &output, &mut |_| {}).map(|_| ()));
    });
    outcome.recv_timeout(deadline).context("the conversion hung: it opened something it was pointed at")
}

#[test]
fn playlists_pointing_at_files_and_addresses_are_refused_unread() -> anyhow::Result<()> {
    let dir = Dir::new("playlists")?;
    // Anything FFmpeg fetched would connect here.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://127.0.0.1:{}/", listener.local_addr()?.port());
    // A FIFO with no writer: opening it for reading blocks, so a read attempt cannot pass unseen.
    let fifo = dir.0.join("trap.fifo");
    ensure!(std::process::Command::new("mkfifo").arg(&fifo).status()?.success(), "mkfifo failed");
    let fifo = fifo.display();
    let wav = dir.0.join("real.wav");
    media::ffmpeg(&["-f", "lavfi", "-i", "sine=d=2", wav.to_str().context("path")?])?;
    let wav = wav.display();
    let cases = [
        (
            "playlist.m3u8",
            format!(
                "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n\
                 #EXTINF:10.0,\nfile:{fifo}\n#EXTINF:10.0,\n/etc/passwd\n#EXTINF:10.0,\n{url}segment.ts\n\
                 #EXTINF:10.0,\n{wav}\n#EXT-X-ENDLIST\n"
            ),
        ),
        (
            "list.ffconcat",
            format!("ffconcat version 1.0\nfile '{fifo}'\nfile '/etc/passwd'\nfile '{url}a.wav'\nfile '{wav}'\n"),
        ),
    ];
    for (name, text) in cases {
        let input = dir.0.join(name);
        std::fs::write(&input, text)?;
        let outcome = convert_within(&input, &dir.0.join("out.mp3"), Duration::from_secs(60))?;
        match outcome {
            Err(TranscodeError::BadMedia(reason)) => {
                ensure!(reason.contains("not audio or video"), "{name}: unexpected reason {reason:?}");
            }
            other => bail!("{name} was not refused as media: {other:?}"),
        }
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Ok((_, peer)) => bail!("FFmpeg connected to the address in a playlist (from {peer})"),
        Err(e) => Err(e.into()),
    }
}

/// Sets a FLAC's STREAMINFO total-samples field (36 bits at bytes 21-25 of the file).
fn claim_samples(path: &Path, samples: u64) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    ensure!(bytes.starts_with(b"fLaC") && bytes.len() > 26, "not a FLAC file");
    bytes[21] = (bytes[21] & 0xF0) | ((samples >> 32) as u8 & 0x0F);
    bytes[22..26].copy_from_slice(&(samples as u32).to_be_bytes());
    std::fs::write(path, bytes)?;
    Ok(())
}

#[test]
fn a_flac_that_claims_ten_seconds_and_decodes_for_hours_fails_at_the_duration_limit() -> anyhow::Result<()> {
    let dir = Dir::new("flac")?;
    let flac = dir.0.join("long.flac");
    let path = flac.to_str().context("path")?;
    // Two hours of near-silence at 8 kHz compresses to a few hundred KiB.
    media::ffmpeg(&["-f", "lavfi", "-i", "anoisesrc=r=8000:a=0.0001:d=7200", "-ac", "1", "-c:a", "flac", path])?;
    claim_samples(&flac, 10 * 8000)?;
    let claimed = media::probe(&flac)?["format"]["duration"].as_str().unwrap_or_default().parse::<f64>()?;
    ensure!((claimed - 10.0).abs() < 0.5, "the patched FLAC claims {claimed} s, not 10");

    let overrides = TrackTags::default();
    let req = request(&overrides, 1800.0, Duration::from_secs(600));
    match transcode_file(&req, &flac, &dir.0.join("out.mp3"), &mut |_| {}) {
        Err(TranscodeError::BadMedia(reason)) => {
            ensure!(reason.contains("decodes to more than the 1800 s limit"), "unexpected reason {reason:?}");
            Ok(())
        }
        other => bail!("the lying FLAC was not stopped at the limit: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_blocks_ends_at_the_time_limit() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let dir = Dir::new("stall")?;
    let wav = dir.0.join("a.wav");
    media::ffmpeg(&["-f", "lavfi", "-i", "sine=d=30", wav.to_str().context("path")?])?;
    let proxy = Proxy::start(host_port(&sandbox.stack.mongo_uri)).await?;
    let store = MediaStore::connect(
        &tunewire_test_stack::direct_connection(&proxy.url_for(&sandbox.stack.mongo_uri)),
        &sandbox.mongo_prefix,
    )
    .await?;
    let file = tokio::fs::File::open(&wav).await?;
    let stored =
        store.store(Bucket::Uploads, None, "a.wav", doc! {}, tokio_util::io::ReaderStream::new(file), u64::MAX).await?;
    let reader = store.reader(Bucket::Uploads, &stored.id).await?.context("the stored file is not there")?;
    proxy.stall();

    let limit = Duration::from_secs(3);
    let output = std::fs::File::create(dir.0.join("out.mp3"))?;
    let started = Instant::now();
    let converting = tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || {
        let overrides = TrackTags::default();
        transcode(&request(&overrides, 3600.0, limit), reader, output, &mut |_| {}).map(|_| ())
    });
    // A broken interrupt must fail the test, not hang it.
    let outcome = tokio::time::timeout(Duration::from_secs(60), converting)
        .await
        .context("the stalled read was never interrupted")??;
    let took = started.elapsed();
    proxy.up();
    // The store's doing, not the file's: retried, never held against the upload.
    match outcome {
        Err(TranscodeError::Store(reason)) if reason.contains("stopped answering") => {}
        other => bail!("a stalled store did not end at the time limit as the store's fault: {other:?}"),
    }
    ensure!(took < limit + Duration::from_secs(2), "the stalled read ended {took:?} after the start, limit {limit:?}");
    sandbox.cleanup().await
}

/// A file that stops being readable halfway, as GridFS does when the store goes away.
struct FailsHalfway {
    file: std::fs::File,
    fail_at: u64,
}

impl std::io::Read for FailsHalfway {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Seek;
        let pos = self.file.stream_position()?;
        if pos >= self.fail_at {
            return Err(std::io::Error::other("connection reset by the store"));
        }
        let room = (self.fail_at - pos).min(buf.len() as u64) as usize;
        self.file.read(&mut buf[..room])
    }
}

impl std::io::Seek for FailsHalfway {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.file.seek(to)
    }
}

#[test]
fn a_source_that_fails_halfway_is_the_stores_fault_not_a_short_mp3() -> anyhow::Result<()> {
    let dir = Dir::new("halfway")?;
    // Ogg ends a stream quietly at a failed read: the fault must not pass for the end.
    for (name, codec) in [("a.opus", "libopus"), ("a.m4a", "aac")] {
        let input = dir.0.join(name);
        media::ffmpeg(&["-f", "lavfi", "-i", "sine=d=20", "-c:a", codec, input.to_str().context("path")?])?;
        let fail_at = std::fs::metadata(&input)?.len() / 2;
        let source = FailsHalfway { file: std::fs::File::open(&input)?, fail_at };
        let output = std::fs::File::create(dir.0.join("out.mp3"))?;
        let overrides = TrackTags::default();
        match transcode(&request(&overrides, 3600.0, Duration::from_secs(60)), source, output, &mut |_| {}) {
            Err(TranscodeError::Store(reason)) => {
                ensure!(reason.contains("connection reset by the store"), "{name}: unexpected reason {reason:?}");
            }
            other => bail!("{name}: a store failing halfway ended as {other:?}"),
        }
    }
    Ok(())
}
