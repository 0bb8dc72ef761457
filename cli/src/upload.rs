//! `tunewire upload`: files (and the media files in folders) sent with tus, a few at a time,
//! each continued where the server's copy ends if an earlier run stopped; with `--wait`,
//! each followed to the end of its conversion.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tunewire_contract::jobs::{Job, JobState};

use crate::api::Api;
use crate::args;
use crate::error::{CliError, Exit};
use crate::follow::{self, End};
use crate::progress::{FileProgress, Progress};
use crate::rate::Rate;
use crate::resume::{Entry, FileKey, ResumeStore};
use crate::tus::{self, Metadata};

/// What a folder is searched for: the usual audio and video containers. Files named on the
/// command line are sent whatever their name; the server judges their content.
const MEDIA_EXTENSIONS: &[&str] = &[
    "aac", "aif", "aiff", "alac", "amr", "ape", "avi", "flac", "flv", "m4a", "m4b", "m4v", "mka", "mkv", "mov", "mp2",
    "mp3", "mp4", "mpeg", "mpg", "oga", "ogg", "ogv", "opus", "ts", "wav", "weba", "webm", "wma", "wmv",
];

/// Sends that failed for a reason that may pass (a dropped connection, a busy server) are
/// tried again this many times, waiting longer each time.
const ATTEMPTS: u32 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Sent whole; the job was not waited for.
    Uploaded,
    Converted,
    /// The conversion failed (or the job expired or was deleted while waited for).
    Failed,
    /// The server would not take the file.
    Refused,
    /// Something else went wrong with this file (the others went on).
    Error,
}

#[derive(Debug, Serialize)]
pub struct Refusal {
    pub error: String,
    pub message: String,
}

/// One file's result, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct FileResult {
    pub file: String,
    pub size: u64,
    pub outcome: Outcome,
    /// Bytes the server already had from an earlier run.
    pub resumed_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Refusal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
}

/// The files to send: named files as they are, folders walked for media files (hidden ones
/// skipped), in name order.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CliError> {
    let mut out = Vec::new();
    for path in paths {
        let metadata = std::fs::metadata(path).map_err(|e| CliError::io(format!("{}", path.display()), e))?;
        if metadata.is_dir() {
            walk(path, &mut out)?;
        } else {
            out.push(path.clone());
        }
    }
    // A file named twice (or inside a folder also named) is sent once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|path| seen.insert(std::fs::canonicalize(path).unwrap_or_else(|_| path.clone())));
    if out.is_empty() {
        return Err(CliError::Usage("no media files found there".into()));
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let read = std::fs::read_dir(dir).map_err(|e| CliError::io(format!("reading {}", dir.display()), e))?;
    // Entries' own types: a link to a folder is not followed (it could lead back up).
    let mut entries: Vec<(PathBuf, std::fs::FileType)> =
        read.filter_map(Result::ok).filter_map(|e| Some((e.path(), e.file_type().ok()?))).collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, kind) in entries {
        let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
        if hidden || (kind.is_symlink() && !path.is_file()) {
            continue;
        }
        if kind.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| MEDIA_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}

struct Context<'a> {
    api: &'a Api,
    store: &'a ResumeStore,
    options: &'a args::Upload,
    progress: &'a Progress,
    /// Each file's share of `--bwlimit`.
    rate: Option<Rate>,
    /// `--jobs` files are sent at once; a file waiting for its conversion holds no place.
    sending: Semaphore,
    following: Semaphore,
}

/// Conversions followed at once (each an event stream; the gateway allows a few per user).
const FOLLOWED_AT_ONCE: usize = 4;

/// Uploads every file; refusals, failed jobs and one file's errors are results, a lost login
/// or an unreachable server ends the command.
pub async fn run(
    api: &Api,
    store: &ResumeStore,
    options: &args::Upload,
    progress_mode: crate::progress::Mode,
) -> Result<Vec<FileResult>, CliError> {
    let files = files(&options.paths)?;
    let mut sizes = Vec::with_capacity(files.len());
    for file in &files {
        let metadata = std::fs::metadata(file).map_err(|e| CliError::io(format!("{}", file.display()), e))?;
        sizes.push(metadata.len());
    }
    let total = (files.len() > 1).then(|| sizes.iter().sum());
    let progress = Progress::new(progress_mode, total);
    let parallel = usize::from(options.jobs).min(files.len()).max(1);
    let rate = options.bwlimit.map(|r| Rate((r.0 / parallel as u64).max(1)));
    let context = Context {
        api,
        store,
        options,
        progress: &progress,
        rate,
        sending: Semaphore::new(parallel),
        following: Semaphore::new(FOLLOWED_AT_ONCE),
    };
    let outcomes =
        futures_util::future::join_all(files.iter().zip(&sizes).map(|(file, &size)| one(&context, file, size))).await;
    progress.finish();
    let mut results = Vec::with_capacity(outcomes.len());
    for ((file, size), outcome) in files.iter().zip(sizes).zip(outcomes) {
        match outcome {
            Ok(result) => results.push(result),
            Err(e) if matches!(e.exit(), Exit::Auth | Exit::Unreachable) => return Err(e),
            Err(e) => results.push(FileResult {
                file: file.display().to_string(),
                size,
                outcome: Outcome::Error,
                resumed_at: 0,
                job_id: None,
                reason: Some(Refusal { error: e.code().to_owned(), message: e.to_string() }),
                job: None,
            }),
        }
    }
    Ok(results)
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn upload_metadata(file: &Path, options: &args::Upload) -> Metadata {
    let mut m = Metadata::default().with("filename", display_name(file));
    if let Some(preset) = options.preset {
        m = m.with("preset", preset.as_str());
    }
    for (key, value) in [("title", &options.title), ("artist", &options.artist), ("album", &options.album)] {
        if let Some(value) = value {
            m = m.with(key, value.clone());
        }
    }
    if options.loudnorm {
        m = m.with("loudnorm", "true");
    }
    m
}

/// How sending a file ended.
enum Sent {
    Whole { job_id: String, resumed_at: u64 },
    Refused { reason: Refusal, resumed_at: u64 },
}

async fn one(context: &Context<'_>, file: &Path, size: u64) -> Result<FileResult, CliError> {
    let name = file.display().to_string();
    let result = |outcome, resumed_at, job_id, reason, job| FileResult {
        file: name.clone(),
        size,
        outcome,
        resumed_at,
        job_id,
        reason,
        job,
    };
    let place = context.sending.acquire().await.map_err(|e| CliError::Protocol(e.to_string()))?;
    let bar = context.progress.file(&display_name(file), size);
    let sent = send(context, file, size, &bar).await;
    drop(place);
    let (job_id, resumed_at) = match sent {
        Ok(Sent::Whole { job_id, resumed_at }) => (job_id, resumed_at),
        Ok(Sent::Refused { reason, resumed_at }) => {
            bar.done(&format!("refused: {}", reason.message));
            return Ok(result(Outcome::Refused, resumed_at, None, Some(reason), None));
        }
        Err(e) => {
            bar.done(&format!("error: {e}"));
            return Err(e);
        }
    };
    if !context.options.wait {
        bar.done(&format!("uploaded: job {job_id}"));
        return Ok(result(Outcome::Uploaded, resumed_at, Some(job_id), None, None));
    }

    bar.status("queued");
    let _following = context.following.acquire().await.map_err(|e| CliError::Protocol(e.to_string()))?;
    let on_change = |job: &Job| match job.state {
        JobState::Converting => bar.status(&format!("converting {:.0}%", job.progress * 100.0)),
        state => bar.status(state.as_str()),
    };
    let end = match follow::until_final(context.api, &job_id, &on_change).await {
        Ok(end) => end,
        Err(e) if matches!(e.exit(), Exit::Auth | Exit::Unreachable) => {
            bar.done(&format!("error: {e}"));
            return Err(e);
        }
        // The job exists: say which it is.
        Err(e) => {
            bar.done(&format!("error: {e}"));
            let reason = Refusal { error: e.code().to_owned(), message: e.to_string() };
            return Ok(result(Outcome::Error, resumed_at, Some(job_id), Some(reason), None));
        }
    };
    match end {
        End::Final(job) if job.state == JobState::Converted => {
            bar.done("converted");
            Ok(result(Outcome::Converted, resumed_at, Some(job_id), None, Some(*job)))
        }
        End::Final(job) => {
            let message = job.error.clone().unwrap_or_else(|| format!("the job is {}", job.state));
            bar.done(&format!("{}: {message}", job.state));
            let reason = Refusal { error: format!("job_{}", job.state), message };
            Ok(result(Outcome::Failed, resumed_at, Some(job_id), Some(reason), Some(*job)))
        }
        End::Deleted => {
            bar.done("deleted while converting");
            let reason = Refusal { error: "job_deleted".into(), message: "the job was deleted".into() };
            Ok(result(Outcome::Failed, resumed_at, Some(job_id), Some(reason), None))
        }
    }
}

/// Creates the upload and remembers it (dropping, on the server too, the uploads of this
/// path's earlier versions or other options).
async fn create(
    context: &Context<'_>,
    key: &FileKey,
    size: u64,
    options: &Metadata,
) -> Result<Result<String, Refusal>, CliError> {
    let api = context.api;
    match tus::create(api, size, options).await {
        Ok(url) => {
            let entry = Entry { server: api.server.clone(), url: url.clone(), options: options.header() };
            for old in context.store.put(key, entry)? {
                tus::terminate(api, &old.url).await;
            }
            Ok(Ok(url))
        }
        Err(CliError::Api { code, message, status }) if !retryable(status, &code) => {
            Ok(Err(Refusal { error: code, message }))
        }
        Err(e) => Err(e),
    }
}

/// Sends the file whole, continuing an earlier run's upload if the server still has it.
async fn send(context: &Context<'_>, file: &Path, size: u64, bar: &FileProgress<'_>) -> Result<Sent, CliError> {
    let api = context.api;
    let name = file.display().to_string();
    let metadata = std::fs::metadata(file).map_err(|e| CliError::io(name.clone(), e))?;
    if metadata.len() != size {
        return Err(CliError::Failed(format!("{name} changed before it was sent; run again")));
    }
    let key = FileKey::of(file, &metadata);
    let options = upload_metadata(file, context.options);

    let mut resumed = None;
    if let Some(entry) = context.store.get(&key, &api.server)? {
        // Another --title or --preset is another upload (an entry from before options were
        // kept has none, and is taken as it is).
        if (entry.options.is_empty() || entry.options == options.header())
            && let Some(stored) = tus::stored(api, &entry.url).await?
        {
            resumed = Some((entry.url, stored));
        }
    }
    let (mut url, mut stored) = match resumed {
        Some((url, stored)) => {
            bar.status(&format!("resuming at {}", crate::output::bytes(stored.offset)));
            (url, stored)
        }
        None => match create(context, &key, size, &options).await? {
            Ok(url) => (url, tus::Stored { offset: 0, job_id: None }),
            Err(reason) => return Ok(Sent::Refused { reason, resumed_at: 0 }),
        },
    };
    let resumed_at = stored.offset;
    bar.at(stored.offset);

    let mut attempt = 0;
    while stored.job_id.is_none() {
        if !unchanged(file, &key) {
            tus::terminate(api, &url).await;
            context.store.remove(&key)?;
            return Err(CliError::Failed(format!("{name} changed while it was being sent; run again")));
        }
        bar.status("sending");
        let from = stored.offset;
        let outcome = send_showing_progress(context, &url, file, from, size.saturating_sub(from), bar).await;
        let failure = match outcome {
            Ok(now) => {
                let progressed = now.offset > from || now.job_id.is_some();
                stored = now;
                if progressed {
                    attempt = 0;
                    bar.at(stored.offset);
                    continue;
                }
                CliError::Protocol(format!("the server took none of {name}'s bytes"))
            }
            // The server no longer has it (expired, removed): start over.
            Err(CliError::Api { status: 404 | 410, .. }) => {
                match create(context, &key, size, &options).await? {
                    Ok(fresh) => (url, stored) = (fresh, tus::Stored { offset: 0, job_id: None }),
                    Err(reason) => return Ok(Sent::Refused { reason, resumed_at }),
                }
                CliError::Protocol(format!("the server lost {name}'s upload"))
            }
            Err(CliError::Api { code, message, status }) if !retryable(status, &code) => {
                tus::terminate(api, &url).await;
                context.store.remove(&key)?;
                return Ok(Sent::Refused { reason: Refusal { error: code, message }, resumed_at });
            }
            Err(e) if e.transient() || matches!(e, CliError::Api { .. }) => e,
            Err(e) => return Err(e),
        };
        attempt += 1;
        if attempt >= ATTEMPTS {
            return Err(failure);
        }
        // A conflict needs no pause, only the server's offset.
        if !matches!(failure, CliError::Api { status: 409, .. }) {
            let wait = Duration::from_secs(1 << attempt.min(4));
            bar.status(&format!("{failure}; trying again in {} s", wait.as_secs()));
            tokio::time::sleep(wait).await;
        }
        // What reached the server is kept: continue from there.
        match tus::stored(api, &url).await {
            Ok(Some(now)) => stored = now,
            Ok(None) => match create(context, &key, size, &options).await? {
                Ok(fresh) => (url, stored) = (fresh, tus::Stored { offset: 0, job_id: None }),
                Err(reason) => return Ok(Sent::Refused { reason, resumed_at }),
            },
            Err(e) if e.transient() => {}
            Err(e) => return Err(e),
        }
        bar.at(stored.offset);
    }
    context.store.remove(&key)?;
    Ok(Sent::Whole { job_id: stored.job_id.unwrap_or_default(), resumed_at })
}

/// Whether the file is still the one the upload was made for.
fn unchanged(file: &Path, key: &FileKey) -> bool {
    std::fs::metadata(file).is_ok_and(|m| FileKey::of(file, &m) == *key)
}

/// A refusal that another try can not change (the file is not media, too large, over quota).
fn retryable(status: u16, code: &str) -> bool {
    matches!(status, 408 | 409 | 423 | 429 | 500..=599) || code == "upload_interrupted"
}

/// Sends the rest of `file` from `from`, moving the bar as the bytes leave.
async fn send_showing_progress(
    context: &Context<'_>,
    url: &str,
    file: &Path,
    from: u64,
    len: u64,
    bar: &FileProgress<'_>,
) -> Result<tus::Stored, CliError> {
    let position = Arc::new(AtomicU64::new(from));
    let on_sent: tus::OnSent = {
        let position = position.clone();
        Arc::new(move |sent| position.store(from + sent, Ordering::Relaxed))
    };
    let send = tus::send(context.api, url, file, (from, len), context.rate, on_sent);
    tokio::pin!(send);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            outcome = &mut send => return outcome,
            _ = tick.tick() => bar.at(position.load(Ordering::Relaxed)),
        }
    }
}
