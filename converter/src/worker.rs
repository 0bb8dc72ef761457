//! Handling one `media.uploaded`: transcode on a blocking thread from the original's GridFS
//! chunks to the MP3's, as they are read and encoded, and announce the outcome. Idempotent:
//! the MP3's id is derived from the job id, so a redelivered job finds its finished output
//! (and republishes) or the debris of a crash (and replaces it).

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
use tunewire_media_store::{Bucket, ChunkWriter, FileInfo, MediaStore};

use crate::transcode::{self, TranscodeError};

/// Deliveries of a job whose conversion fails on our side (inside FFmpeg, or the converter
/// died on it) before the job is failed; each is a broker delivery, so a converter that
/// crashes on a file counts as surely as one that reports an error.
const INTERNAL_ERROR_ATTEMPTS: u32 = 3;
/// Deliveries after which a job is failed before it is even tried: converters kept dying on
/// it (a crash inside FFmpeg). Above INTERNAL_ERROR_ATTEMPTS, so that restarts and broker
/// outages that hand work back are not mistaken for crashes; below the queue's delivery
/// limit, so the job fails with a reason instead of being dead-lettered.
const CRASH_DELIVERIES: u32 = 6;

/// The MP3 of a job always has the same GridFS id.
pub fn audio_file_id(job: JobId) -> FileId {
    let digest = Sha256::digest(format!("tunewire-audio:{job}").as_bytes());
    let mut bytes = [0u8; 12];
    bytes.copy_from_slice(&digest[..12]);
    FileId::from_bytes(bytes)
}

pub struct Worker {
    pub store: MediaStore,
    pub max_duration_s: f64,
    pub time_limit: std::time::Duration,
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
            // Announced again only when it is whole: a files document can outlive its chunks.
            let chunks =
                self.store.chunk_count(Bucket::Audio, &audio_id).await.or_retry("counting the output's chunks")?;
            let whole = chunks == info.length.div_ceil(u64::from(info.chunk_size.max(1)));
            if let Some(converted) = converted_from_stored(&event, &info).filter(|_| whole) {
                info!(%job_id, "already converted; announcing it again");
                return msg.publisher.publish(&converted).await.or_retry("republishing media.converted");
            }
            warn!(%job_id, chunks, length = info.length, "an earlier output is unreadable or incomplete; converting again");
            self.store.delete(Bucket::Audio, &audio_id).await.or_retry("removing an unreadable earlier output")?;
        }
        let discarded =
            self.store.discard_partial(Bucket::Audio, &audio_id).await.or_retry("clearing a partial output")?;
        if discarded > 0 {
            warn!(%job_id, chunks = discarded, "removed a half-written output left by a crash");
        }

        if msg.deliveries >= CRASH_DELIVERIES {
            let reason =
                format!("this file could not be converted (the converter stopped on it {} times)", msg.deliveries);
            return fail(&msg.publisher, &event, reason).await;
        }
        let Some(source) =
            self.store.reader(Bucket::Uploads, &event.source.file_id).await.or_retry("opening the original")?
        else {
            return fail(&msg.publisher, &event, "the uploaded file is no longer stored".into()).await;
        };

        info!(%job_id, deliveries = msg.deliveries, "converting");
        let (progress_tx, progress_rx) = watch::channel(0f32);
        let forwarder = tokio::spawn(forward_progress(job_id, progress_rx, msg.publisher.clone()));
        let (preset, overrides, max_duration_s) = (event.preset, event.overrides.clone(), self.max_duration_s);
        let time_limit = self.time_limit;
        let normalize_loudness = event.normalize_loudness;
        let fallback_title = stem(&event.source.filename).to_string();
        let upload = self.store.chunk_upload(Bucket::Audio, audio_id.clone());
        let (chunks, incoming) = tokio::sync::mpsc::channel(ChunkWriter::CHANNEL);
        let started = std::time::Instant::now();
        let converting = tokio::task::spawn_blocking(move || {
            let request = transcode::Request {
                preset,
                overrides: &overrides,
                fallback_title: &fallback_title,
                max_duration_s,
                normalize_loudness,
                time_limit,
            };
            let sink = ChunkWriter::new(chunks, request.max_output_bytes(), transcode::MAX_HEADER_BYTES);
            fail::fail_point!("converter::transcode", |_| std::process::abort());
            transcode::transcode(&request, source, sink, &mut |p| {
                progress_tx.send_replace(p);
            })
        });
        let (inserted, outcome) = futures_util::future::join(upload.run(incoming), converting).await;
        forwarder.abort();
        if !matches!((&outcome, &inserted), (Ok(Ok(_)), Ok(_)))
            && let Err(e) = upload.abort().await
        {
            warn!(%job_id, error = %e, "could not remove a partial output");
        }
        // The store failing explains whatever the transcoder made of it.
        if let Err(e) = inserted {
            return Err(HandleError::Retry(format!("storing the MP3: {e}")));
        }
        let report = match outcome {
            Ok(Ok(report)) => report,
            Ok(Err(TranscodeError::BadMedia(reason))) => return fail(&msg.publisher, &event, reason).await,
            // The store's trouble, not the file's: retried like any outage, never counted
            // against the job.
            Ok(Err(TranscodeError::Store(e))) => return Err(HandleError::Retry(format!("transcoding: {e}"))),
            // Given back to the broker a few times (it may be this machine: memory, a store
            // that went away), then the job fails with the reason rather than waiting in a
            // dead-letter queue.
            Ok(Err(TranscodeError::Internal(e))) if msg.deliveries + 1 >= INTERNAL_ERROR_ATTEMPTS => {
                let reason = format!("this file could not be converted ({e}; tried {INTERNAL_ERROR_ATTEMPTS} times)");
                return fail(&msg.publisher, &event, reason).await;
            }
            Ok(Err(TranscodeError::Internal(e))) => return Err(HandleError::Requeue(format!("transcoding: {e}"))),
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
        output.size = report.size;
        if output.bitrate == 0 && output.duration_s > 0.0 {
            output.bitrate = (report.size as f64 * 8.0 / output.duration_s) as u32;
        }
        // Not aborted on failure: the files document may have been written without our
        // hearing of it, and the next attempt finds (and checks) it or replaces the chunks.
        upload
            .complete(report.size, &name, output_metadata(job_id, &output, &report.tags))
            .await
            .or_retry("storing the MP3")?;
        info!(%job_id, duration_s = report.duration_s, took_ms = started.elapsed().as_millis() as u64, size = report.size, "converted");
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
