//! What an upload really is, from its bytes: FFmpeg's demuxer probe, never the file name or
//! the client's `Content-Type`, opened the way the converter opens it
//! (`tunewire_media_input`), so what the probe accepts the converter can read.
//!
//! FFmpeg parses hostile bytes here, so the probe runs in a child process (this binary's
//! `probe` subcommand) with resource limits, no environment and no way out but two pipes: it
//! asks for byte ranges of the upload and the gateway answers them from GridFS. The child
//! reads only what the demuxer asks for (the headers, and the index wherever the container
//! keeps it), nothing is copied to disk, and a crash or a hang in it costs one upload, not
//! the gateway's other requests.
//!
//! The pipes carry frames. Child to gateway: `R`, offset (u64 LE), length (u32 LE) asks
//! for bytes; `V`, kind (u8), name length (u8), name gives the verdict. Gateway to child: a
//! length (u32 LE) and that many bytes, fewer at the end of the file. When the store fails,
//! the gateway ends the child rather than answer.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunewire_media_store::{Bucket, FileInfo, MediaStore, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Media with at least one audio stream: worth converting.
    Audio { format: String },
    /// Media FFmpeg understands, but without sound (a silent video, an image).
    NoAudio { format: String },
    /// Not media FFmpeg will read with the accepted demuxers.
    NotMedia,
    /// The probe died or overran its limits on this file: what happened, for the uploader.
    Crashed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the probe could not be started ({0})")]
    Spawn(io::Error),
    /// The store did not answer the probe's reads in time: not the file's doing.
    #[error("the media store did not answer while the upload was probed")]
    StoreStalled,
}

/// Longer than any honest file's headers take to read.
const TIME_LIMIT: Duration = Duration::from_secs(10);
/// The child's heap and private mappings (`RLIMIT_DATA`): FFmpeg's probe buffers a few MiB
/// and the idle child about 32; this is well above that and well below the pod's limit.
const MEMORY_LIMIT: u64 = 128 << 20;
/// The largest range the child may ask for at once.
const MAX_READ: u32 = 1 << 20;
const READ: u8 = b'R';
const VERDICT: u8 = b'V';

fn kind_of(verdict: &Verdict) -> (u8, &str) {
    match verdict {
        Verdict::Audio { format } => (1, format),
        Verdict::NoAudio { format } => (2, format),
        Verdict::NotMedia | Verdict::Crashed(_) => (3, ""),
    }
}

fn verdict_of(kind: u8, format: String) -> Option<Verdict> {
    match kind {
        1 => Some(Verdict::Audio { format }),
        2 => Some(Verdict::NoAudio { format }),
        3 => Some(Verdict::NotMedia),
        _ => None,
    }
}

/// Runs in the child: limits it can set before any byte is parsed.
fn limit_child() -> io::Result<()> {
    let limits = [
        (libc::RLIMIT_DATA, MEMORY_LIMIT),
        (libc::RLIMIT_CPU, TIME_LIMIT.as_secs()),
        (libc::RLIMIT_FSIZE, 0),
        (libc::RLIMIT_CORE, 0),
        (libc::RLIMIT_NOFILE, 32),
    ];
    for (resource, value) in limits {
        let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
        // SAFETY: setrlimit is async-signal-safe and reads only the struct given.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Probes stored upload `info` in a child process running `program probe LENGTH`.
pub async fn probe(store: &MediaStore, info: &FileInfo, program: &Path) -> Result<Verdict, ProbeError> {
    let mut command = tokio::process::Command::new(program);
    command
        .arg("probe")
        .arg(info.length.to_string())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe.
    unsafe { command.pre_exec(limit_child) };
    let mut child = command.spawn().map_err(ProbeError::Spawn)?;
    let (Some(mut answers), Some(mut requests)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(ProbeError::Spawn(io::Error::other("the probe's pipes were not opened")));
    };
    let in_store = std::sync::atomic::AtomicBool::new(false);
    let serve = async {
        loop {
            let mut tag = [0u8; 1];
            if requests.read_exact(&mut tag).await.is_err() {
                return Ok((None, None));
            }
            match tag[0] {
                READ => {
                    let mut frame = [0u8; 12];
                    requests.read_exact(&mut frame).await?;
                    let offset = u64::from_le_bytes(frame[..8].try_into().unwrap_or_default());
                    let len = u32::from_le_bytes(frame[8..].try_into().unwrap_or_default()).min(MAX_READ);
                    let end = offset.saturating_add(u64::from(len)).min(info.length);
                    in_store.store(true, std::sync::atomic::Ordering::Relaxed);
                    let bytes =
                        if offset >= end { Ok(Vec::new()) } else { read_range(store, info, offset, end - 1).await };
                    in_store.store(false, std::sync::atomic::Ordering::Relaxed);
                    match bytes {
                        Ok(bytes) => {
                            answers.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
                            answers.write_all(&bytes).await?;
                        }
                        // FFmpeg may read on past a failed read; the verdict would be the
                        // store's, not the file's, so there is nothing more to ask it.
                        Err(e) => return Ok((None, Some(e))),
                    }
                    answers.flush().await?;
                }
                VERDICT => {
                    let mut frame = [0u8; 2];
                    requests.read_exact(&mut frame).await?;
                    let mut name = vec![0u8; usize::from(frame[1])];
                    requests.read_exact(&mut name).await?;
                    let verdict = verdict_of(frame[0], String::from_utf8_lossy(&name).into_owned());
                    return Ok((verdict, None));
                }
                _ => return Ok((None, None)),
            }
        }
    };
    let served: Result<io::Result<_>, _> = tokio::time::timeout(TIME_LIMIT, serve).await;
    let (verdict, store_failure) = match served {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => (None, None),
        Err(_) => {
            let _ = child.kill().await;
            if in_store.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(ProbeError::StoreStalled);
            }
            return Ok(Verdict::Crashed(format!("reading it took longer than {} s", TIME_LIMIT.as_secs())));
        }
    };
    if let Some(e) = store_failure {
        let _ = child.kill().await;
        return Err(ProbeError::Store(e));
    }
    let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
    match (verdict, status) {
        (Some(verdict), _) => Ok(verdict),
        (None, Ok(Ok(status))) => Ok(Verdict::Crashed(format!("FFmpeg stopped on it ({status})"))),
        (None, _) => {
            let _ = child.kill().await;
            Ok(Verdict::Crashed("FFmpeg stopped answering on it".into()))
        }
    }
}

async fn read_range(store: &MediaStore, info: &FileInfo, start: u64, end: u64) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::with_capacity((end + 1 - start) as usize);
    let mut parts = std::pin::pin!(store.read_range(Bucket::Uploads, info, start, end).await?);
    while let Some(part) = parts.try_next().await? {
        bytes.extend_from_slice(&part);
    }
    Ok(bytes)
}

/// The upload as the child sees it: bytes asked for over one pipe, answered over the other.
struct PipeSource<R, W> {
    answers: R,
    requests: W,
    pos: u64,
    length: u64,
}

impl<R: Read, W: Write> Read for PipeSource<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.length || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(u64::from(MAX_READ)).min(self.length - self.pos) as u32;
        let mut frame = [0u8; 13];
        frame[0] = READ;
        frame[1..9].copy_from_slice(&self.pos.to_le_bytes());
        frame[9..].copy_from_slice(&want.to_le_bytes());
        self.requests.write_all(&frame)?;
        self.requests.flush()?;
        let mut len = [0u8; 4];
        self.answers.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len);
        if len > want {
            return Err(io::Error::other("the gateway answered more than was asked"));
        }
        self.answers.read_exact(&mut buf[..len as usize])?;
        self.pos += u64::from(len);
        Ok(len as usize)
    }
}

impl<R, W> Seek for PipeSource<R, W> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.length.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// The `probe LENGTH` subcommand: judges the upload the gateway serves over stdin/stdout.
pub fn child_main(mut args: impl Iterator<Item = String>) -> ExitCode {
    let Some(length) = args.next().and_then(|a| a.parse::<u64>().ok()) else {
        eprintln!("usage: tunewire-gateway probe LENGTH (run by the gateway, not by hand)");
        return ExitCode::from(2);
    };
    if tunewire_media_input::init().is_err() {
        return ExitCode::from(1);
    }
    let source = PipeSource { answers: io::stdin(), requests: io::stdout(), pos: 0, length };
    let deadline = Instant::now() + TIME_LIMIT;
    let verdict = match tunewire_media_input::open(source, move || Instant::now() >= deadline) {
        Ok(input) => {
            let format = input.format().name().to_string();
            if input.streams().best(ffmpeg_next::media::Type::Audio).is_some() {
                Verdict::Audio { format }
            } else {
                Verdict::NoAudio { format }
            }
        }
        Err(_) => Verdict::NotMedia,
    };
    let (kind, format) = kind_of(&verdict);
    let name = &format.as_bytes()[..format.len().min(255)];
    let mut frame = vec![VERDICT, kind, name.len() as u8];
    frame.extend_from_slice(name);
    let mut out = io::stdout().lock();
    if out.write_all(&frame).and_then(|()| out.flush()).is_err() {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
