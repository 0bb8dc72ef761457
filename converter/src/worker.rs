//! Handling one `media.uploaded`: fetch the original, transcode on a blocking thread, store
//! the MP3, announce the outcome. Idempotent: the MP3's id is derived from the job id, so a
//! redelivered job finds its finished output (and republishes) or the debris of a crash
//! (and replaces it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{Document, doc};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};
use tunewire_events::contract::{AudioOutput, TrackTags};
use tunewire_events::{
    FileId, HandleError, HandleResultExt, Incoming, JobId, MediaConverted, MediaFailed, MediaProgress, MediaUploaded,
    Publisher,
};
use tunewire_media_store::{Bucket, FileInfo, MediaStore};

use crate::transcode::{self, TranscodeError};
use crate::work_dir::WorkDir;

/// Attempts at a conversion that fails inside FFmpeg before the job is failed.
const INTERNAL_ERROR_ATTEMPTS: u32 = 3;

/// The MP3 of a job always has the same GridFS id.
pub fn audio_file_id(job: JobId) -> FileId {
    let digest = Sha256::digest(format!("tunewire-audio:{job}").as_bytes());
    let mut bytes = [0u8; 12];
    bytes.copy_from_slice(&digest[..12]);
    FileId::from_bytes(bytes)
}

pub struct Worker {
    pub store: MediaStore,
    pub work_dir: WorkDir,
    pub max_duration_s: f64,
    pub time_limit: std::time::Duration,
}

/// A job's files in the work folder, removed however the handler ends (panics included).
struct WorkFiles {
    input: PathBuf,
    output: PathBuf,
}

impl WorkFiles {
    fn new(dir: &Path, job: JobId) -> Self {
        Self { input: dir.join(format!("{job}.source")), output: dir.join(format!("{job}.mp3")) }
    }
}

impl Drop for WorkFiles {
    fn drop(&mut self) {
        for path in [&self.input, &self.output] {
            if let Err(e) = std::fs::remove_file(path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(path = %path.display(), error = %e, "could not remove a work file");
            }
        }
    }
}

fn stem(filename: &str) -> &str {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => base,
    }
}

fn output_metadata(job: JobId, output: &AudioOutput, tags: &TrackTags) -> Document {
    let mut meta = doc! {
        "job_id": job.to_string(),
        "duration_s": output.duration_s,
        "bitrate": i64::from(output.bitrate),
        "sample_rate": i64::from(output.sample_rate),
        "channels": i32::from(output.channels),
    };
    for (key, value) in
        [("title", &tags.title), ("artist", &tags.artist), ("album", &tags.album), ("genre", &tags.genre)]
    {
        if let Some(v) = value {
            meta.insert(key, v.clone());
        }
    }
    meta
}

/// Rebuilds the `media.converted` of a finished output from what was stored with it.
fn converted_from_stored(event: &MediaUploaded, info: &FileInfo) -> Option<MediaConverted> {
    let meta = info.metadata.as_ref()?;
    let text = |k: &str| meta.get_str(k).ok().map(str::to_string);
    let int = |k: &str| meta.get_i64(k).ok().or_else(|| meta.get_i32(k).ok().map(i64::from));
    Some(MediaConverted {
        job_id: event.job_id,
        owner: event.owner.clone(),
        source_filename: event.source.filename.clone(),
        preset: event.preset,
        output: AudioOutput {
            file_id: info.id.clone(),
            size: info.length,
            duration_s: meta.get_f64("duration_s").ok()?,
            bitrate: u32::try_from(int("bitrate")?).ok()?,
            sample_rate: u32::try_from(int("sample_rate")?).ok()?,
            channels: u16::try_from(int("channels")?).ok()?,
        },
        tags: TrackTags { title: text("title"), artist: text("artist"), album: text("album"), genre: text("genre") },
        // Only the conversion itself learns these; a republished event goes without.
        source_facts: Default::default(),
    })
}

async fn fail(publisher: &Publisher, event: &MediaUploaded, reason: String) -> Result<(), HandleError> {
    info!(job_id = %event.job_id, %reason, "conversion failed for good");
    let failed = MediaFailed {
        job_id: event.job_id,
        owner: event.owner.clone(),
        source_filename: event.source.filename.clone(),
        reason,
    };
    publisher.publish(&failed).await.or_retry("publishing media.failed")
}

/// Forwards progress at most once a second until the sender is dropped.
async fn forward_progress(job_id: JobId, mut progress: watch::Receiver<f32>, publisher: Publisher) {
    while progress.changed().await.is_ok() {
        let value = *progress.borrow_and_update();
        if value < 1.0
            && let Err(e) = publisher.publish(&MediaProgress { job_id, progress: value }).await
        {
            warn!(%job_id, error = %e, "could not publish progress");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Worker {
    pub async fn handle(self: Arc<Self>, msg: Incoming<MediaUploaded>) -> Result<(), HandleError> {
        let event = msg.event;
        let job_id = event.job_id;
        let audio_id = audio_file_id(job_id);

        if let Some(info) = self.store.info(Bucket::Audio, &audio_id).await.or_retry("looking for an earlier output")? {
            if let Some(converted) = converted_from_stored(&event, &info) {
                info!(%job_id, "already converted; announcing it again");
                return msg.publisher.publish(&converted).await.or_retry("republishing media.converted");
            }
            self.store.delete(Bucket::Audio, &audio_id).await.or_retry("removing an unreadable earlier output")?;
        }
        let discarded =
            self.store.discard_partial(Bucket::Audio, &audio_id).await.or_retry("clearing a partial output")?;
        if discarded > 0 {
            warn!(%job_id, chunks = discarded, "removed a half-written output left by a crash");
        }

        let files = WorkFiles::new(self.work_dir.path(), job_id);
        let fetched = self
            .store
            .download_to(Bucket::Uploads, &event.source.file_id, &files.input)
            .await
            .or_retry("fetching the original")?;
        if fetched.is_none() {
            return fail(&msg.publisher, &event, "the uploaded file is no longer stored".into()).await;
        }

        info!(%job_id, attempt = msg.attempt, "converting");
        let (progress_tx, progress_rx) = watch::channel(0f32);
        let forwarder = tokio::spawn(forward_progress(job_id, progress_rx, msg.publisher.clone()));
        let (input, output) = (files.input.clone(), files.output.clone());
        let (preset, overrides, max_duration_s) = (event.preset, event.overrides.clone(), self.max_duration_s);
        let time_limit = self.time_limit;
        let normalize_loudness = event.normalize_loudness;
        let fallback_title = stem(&event.source.filename).to_string();
        let started = std::time::Instant::now();
        let outcome = tokio::task::spawn_blocking(move || {
            let request = transcode::Request {
                input: &input,
                output: &output,
                preset,
                overrides: &overrides,
                fallback_title: &fallback_title,
                max_duration_s,
                normalize_loudness,
                time_limit,
            };
            transcode::transcode(&request, &mut |p| {
                progress_tx.send_replace(p);
            })
        })
        .await;
        forwarder.abort();
        let report = match outcome {
            Ok(Ok(report)) => report,
            Ok(Err(TranscodeError::BadMedia(reason))) => return fail(&msg.publisher, &event, reason).await,
            // Retried a few times (it may be the machine: a full disk), then the job fails with
            // the reason rather than waiting in a dead-letter queue.
            Ok(Err(TranscodeError::Internal(e))) if msg.attempt + 1 >= INTERNAL_ERROR_ATTEMPTS => {
                let reason = format!("this file could not be converted ({e}; tried {INTERNAL_ERROR_ATTEMPTS} times)");
                return fail(&msg.publisher, &event, reason).await;
            }
            Ok(Err(TranscodeError::Internal(e))) => return Err(HandleError::Retry(format!("transcoding: {e}"))),
            Err(panic) => {
                warn!(%job_id, error = %panic, "the transcoder panicked");
                return fail(&msg.publisher, &event, "this file could not be converted (internal error)".into()).await;
            }
        };

        let mut output = AudioOutput {
            file_id: audio_id.clone(),
            size: 0,
            duration_s: report.duration_s,
            bitrate: report.bitrate,
            sample_rate: report.sample_rate,
            channels: report.channels,
        };
        let name = format!("{}.mp3", stem(&event.source.filename));
        let stored = self
            .store
            .store_path(Bucket::Audio, audio_id, &name, output_metadata(job_id, &output, &report.tags), &files.output)
            .await
            .or_retry("storing the MP3")?;
        output.size = stored.size;
        if output.bitrate == 0 && output.duration_s > 0.0 {
            output.bitrate = (stored.size as f64 * 8.0 / output.duration_s) as u32;
        }
        info!(%job_id, duration_s = report.duration_s, took_ms = started.elapsed().as_millis() as u64, size = stored.size, "converted");
        let converted = MediaConverted {
            job_id,
            owner: event.owner.clone(),
            source_filename: event.source.filename.clone(),
            preset: event.preset,
            output,
            tags: report.tags,
            source_facts: report.source,
        };
        msg.publisher.publish(&converted).await.or_retry("publishing media.converted")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_id_is_stable_per_job_and_distinct_across_jobs() {
        let job = JobId::new();
        assert_eq!(audio_file_id(job), audio_file_id(job));
        assert_ne!(audio_file_id(job), audio_file_id(JobId::new()));
    }

    #[test]
    fn stem_strips_folders_and_extension() {
        assert_eq!(stem("holiday.mp4"), "holiday");
        assert_eq!(stem("../../etc/passwd"), "passwd");
        assert_eq!(stem("a.b.c.mkv"), "a.b.c");
        assert_eq!(stem(".hidden"), ".hidden");
    }
}
