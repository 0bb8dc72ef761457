//! Handling one `media.uploaded`: transcode on a blocking thread from the original's GridFS
//! chunks to the MP3's, as they are read and encoded, and announce the outcome. Idempotent
//! and safe with two converters on one job (see `tunewire_media_store::outputs`): each
//! attempt writes under a fresh id, the first whole MP3 claims the job, and a redelivered
//! job finds the claimed output and announces it again.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::ConversionMetrics;
use mongodb::bson::{Document, doc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, warn};
use tunewire_contract::{AudioOutput, TrackTags};
use tunewire_contract::{FileId, JobId, MediaConverted, MediaDeleted, MediaFailed, MediaProgress, MediaUploaded};
use tunewire_events::{HandleError, HandleResultExt, Incoming, Publisher};
use tunewire_media_store::{ATTEMPT_HEARTBEAT, Bucket, ChunkWriter, Claim, FileInfo, MediaStore};

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

pub struct Worker {
    pub store: MediaStore,
    pub max_duration_s: f64,
    pub time_limit: std::time::Duration,
    pub metrics: ConversionMetrics,
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

/// Publishes `media.failed`, unless the job is gone or another copy of its message already
/// stored an output (then that one is announced instead): a job fails only when no attempt
/// converted it.
async fn fail_unless_done(
    metrics: &ConversionMetrics,
    store: &MediaStore,
    publisher: &Publisher,
    event: &MediaUploaded,
    reason: String,
) -> Result<(), HandleError> {
    let job_id = event.job_id;
    if store.is_forgotten(Bucket::Audio, job_id).await.or_retry("checking for a deletion")? {
        return Ok(());
    }
    if let Some(winner) = store.output_of(Bucket::Audio, job_id).await.or_retry("looking for an output")? {
        info!(%job_id, file_id = %winner, %reason, "this attempt failed, but another converted the job");
        return Err(HandleError::Retry("another attempt converted this job; announcing its output".into()));
    }
    fail(metrics, publisher, event, reason).await
}

async fn fail(
    metrics: &ConversionMetrics,
    publisher: &Publisher,
    event: &MediaUploaded,
    reason: String,
) -> Result<(), HandleError> {
    info!(job_id = %event.job_id, %reason, "conversion failed for good");
    metrics.failed();
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

/// How one attempt at a job ended, when it did not fail in a way worth retrying.
// One per handled message, moved once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    /// Its MP3 is the job's output.
    Claimed(MediaConverted),
    /// The file cannot be converted; `media.failed` went out.
    Failed,
    /// Another attempt's MP3 was claimed first.
    Beaten(FileId),
    /// The job was deleted meanwhile; nothing of it is kept or announced.
    Forgotten,
}

/// Keeps the attempt's heartbeat until dropped; cancels `stop` if the attempt was swept
/// (taken for dead), so that it stops writing.
async fn keep_alive(store: MediaStore, attempt: FileId, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ATTEMPT_HEARTBEAT) => {}
        }
        match store.heartbeat(Bucket::Audio, &attempt).await {
            Ok(true) => {}
            Ok(false) => {
                warn!(file_id = %attempt, "this attempt was swept as dead; stopping it");
                stop.cancel();
                return;
            }
            Err(e) => warn!(file_id = %attempt, error = %e, "could not renew the attempt's heartbeat"),
        }
    }
}

impl Worker {
    /// Announces a claimed output again when it is whole; `false` when it is not (gone, or
    /// chunks missing).
    async fn announce_stored(
        &self,
        publisher: &Publisher,
        event: &MediaUploaded,
        file: &FileId,
    ) -> Result<bool, HandleError> {
        let Some(info) = self.store.info(Bucket::Audio, file).await.or_retry("looking for an earlier output")? else {
            return Ok(false);
        };
        if !self.store.is_whole(Bucket::Audio, &info).await.or_retry("checking the earlier output's chunks")? {
            return Ok(false);
        }
        let Some(converted) = converted_from_stored(event, &info) else { return Ok(false) };
        info!(job_id = %event.job_id, file_id = %file, "already converted; announcing it again");
        publisher.publish(&converted).await.or_retry("republishing media.converted")?;
        Ok(true)
    }

    /// Removes an attempt's own file and record (never another attempt's); what fails here
    /// is left to the sweep of stale attempts.
    async fn discard_attempt(&self, job_id: JobId, attempt: &FileId) {
        if let Err(e) = self.store.delete(Bucket::Audio, attempt).await {
            warn!(%job_id, file_id = %attempt, error = %e, "could not remove this attempt's output; the sweep will");
            return;
        }
        if let Err(e) = self.store.end_attempt(Bucket::Audio, attempt).await {
            warn!(%job_id, file_id = %attempt, error = %e, "could not close this attempt; the sweep will");
        }
    }

    /// `media.deleted`: the job's MP3 goes, and none is kept from a conversion still running.
    pub async fn forget(self: Arc<Self>, msg: Incoming<MediaDeleted>) -> Result<(), HandleError> {
        let job_id = msg.event.job_id;
        self.store.forget_job(Bucket::Audio, job_id).await.or_retry("forgetting a deleted job")?;
        info!(%job_id, "job deleted; its MP3 is removed and no conversion of it will be kept");
        Ok(())
    }

    pub async fn handle(self: Arc<Self>, msg: Incoming<MediaUploaded>) -> Result<(), HandleError> {
        let event = &msg.event;
        let job_id = event.job_id;
        if self.store.is_forgotten(Bucket::Audio, job_id).await.or_retry("checking for a deletion")? {
            // An earlier attempt may have claimed an output before it learnt of the deletion.
            self.store.forget_job(Bucket::Audio, job_id).await.or_retry("forgetting a deleted job")?;
            info!(%job_id, "the job was deleted; not converting it");
            return Ok(());
        }

        if let Some(existing) =
            self.store.output_of(Bucket::Audio, job_id).await.or_retry("looking for an earlier output")?
        {
            if self.announce_stored(&msg.publisher, event, &existing).await? {
                return Ok(());
            }
            warn!(%job_id, file_id = %existing, "the claimed output is gone or incomplete; converting again");
            self.store.release_output(Bucket::Audio, job_id, &existing).await.or_retry("releasing a broken output")?;
            self.store.delete(Bucket::Audio, &existing).await.or_retry("removing a broken output")?;
        }

        if msg.deliveries >= CRASH_DELIVERIES {
            let reason =
                format!("this file could not be converted (the converter stopped on it {} times)", msg.deliveries);
            return fail_unless_done(&self.metrics, &self.store, &msg.publisher, event, reason).await;
        }
        let Some(source) =
            self.store.reader(Bucket::Uploads, &event.source.file_id).await.or_retry("opening the original")?
        else {
            return fail_unless_done(
                &self.metrics,
                &self.store,
                &msg.publisher,
                event,
                "the uploaded file is no longer stored".into(),
            )
            .await;
        };

        let attempt = self.store.begin_attempt(Bucket::Audio, job_id).await.or_retry("registering the attempt")?;
        let outcome = self.convert(&msg, source, &attempt).await;
        if !matches!(outcome, Ok(Attempt::Claimed(_))) {
            // The job's output is never discarded, even when a later step failed: a copy of
            // the message may have announced it already. When that cannot be known, the
            // sweep (which spares a claimed file) decides later.
            match self.store.output_of(Bucket::Audio, job_id).await {
                Ok(claimed) if claimed.as_ref() != Some(&attempt) => self.discard_attempt(job_id, &attempt).await,
                Ok(_) => {}
                Err(e) => {
                    warn!(%job_id, error = %e, "could not tell whether this attempt is the job's output; leaving it to the sweep");
                }
            }
        }
        match outcome? {
            Attempt::Claimed(converted) => {
                msg.publisher.publish(&converted).await.or_retry("publishing media.converted")
            }
            Attempt::Failed | Attempt::Forgotten => Ok(()),
            Attempt::Beaten(winner) => match self.announce_stored(&msg.publisher, event, &winner).await? {
                true => Ok(()),
                false => Err(HandleError::Retry("the output another attempt claimed is not readable".into())),
            },
        }
    }

    /// Converts into the attempt's file and claims it.
    async fn convert(
        &self,
        msg: &Incoming<MediaUploaded>,
        source: tunewire_media_store::ChunkReader,
        attempt: &FileId,
    ) -> Result<Attempt, HandleError> {
        let event = &msg.event;
        let job_id = event.job_id;
        info!(%job_id, deliveries = msg.deliveries, file_id = %attempt, "converting");
        // Stops writing when the message can no longer be acked or the attempt was swept.
        let stop = msg.lost.child_token();
        let heartbeat = tokio::spawn(keep_alive(self.store.clone(), attempt.clone(), stop.clone()).in_current_span());
        let _stop_heartbeat = stop.clone().drop_guard();
        let (progress_tx, progress_rx) = watch::channel(0f32);
        let forwarder = tokio::spawn(forward_progress(job_id, progress_rx, msg.publisher.clone()).in_current_span());
        let (preset, overrides, max_duration_s) = (event.preset, event.overrides.clone(), self.max_duration_s);
        let time_limit = self.time_limit;
        let normalize_loudness = event.normalize_loudness;
        let fallback_title = stem(&event.source.filename).to_string();
        let upload = self.store.chunk_upload(Bucket::Audio, attempt.clone());
        let (chunks, incoming) = tokio::sync::mpsc::channel(ChunkWriter::CHANNEL);
        let started = std::time::Instant::now();
        let source_waited_us = source.waited_us();
        let converting = tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || {
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
            let outcome = transcode::transcode(&request, source, sink, &mut |p| {
                progress_tx.send_replace(p);
            });
            (outcome, started.elapsed())
        });
        // Stopping closes the channel (the transcoder's next write fails and it ends) once
        // the insert under way is answered, so nothing is written after the attempt is cleared.
        let writing = async {
            upload.run_until(incoming, stop.cancelled()).await.map_err(|e| match e {
                tunewire_media_store::StoreError::Stopped => {
                    "stopped: the job's message was handed back to the broker, or this attempt was taken for dead"
                        .to_string()
                }
                e => format!("storing the MP3: {e}"),
            })
        };
        let (inserted, outcome) = futures_util::future::join(writing, converting).await;
        let (outcome, transcoded_in) = match outcome {
            Ok((outcome, took)) => (Ok(outcome), took),
            Err(e) => (Err(e), started.elapsed()),
        };
        forwarder.abort();
        if stop.is_cancelled() {
            warn!(%job_id, file_id = %attempt, "stopped converting: the message went back to the broker or the attempt was taken for dead");
        }
        // The store failing, or the attempt stopped, explains whatever the transcoder made of it.
        inserted.map_err(HandleError::Retry)?;
        let report = match outcome {
            Ok(Ok(report)) => report,
            Ok(Err(TranscodeError::BadMedia(reason))) => {
                return fail_unless_done(&self.metrics, &self.store, &msg.publisher, event, reason)
                    .await
                    .map(|()| Attempt::Failed);
            }
            // The store's trouble, not the file's: retried like any outage, never counted
            // against the job.
            Ok(Err(TranscodeError::Store(e))) => return Err(HandleError::Retry(format!("transcoding: {e}"))),
            // Given back to the broker a few times (it may be this machine: memory, a store
            // that went away), then the job fails with the reason rather than waiting in a
            // dead-letter queue.
            Ok(Err(TranscodeError::Internal(e))) if msg.deliveries + 1 >= INTERNAL_ERROR_ATTEMPTS => {
                let reason = format!("this file could not be converted ({e}; tried {INTERNAL_ERROR_ATTEMPTS} times)");
                return fail_unless_done(&self.metrics, &self.store, &msg.publisher, event, reason)
                    .await
                    .map(|()| Attempt::Failed);
            }
            Ok(Err(TranscodeError::Internal(e))) => return Err(HandleError::Requeue(format!("transcoding: {e}"))),
            Err(panic) => {
                warn!(%job_id, error = %panic, "the transcoder panicked");
                let reason = "this file could not be converted (internal error)".to_string();
                return fail_unless_done(&self.metrics, &self.store, &msg.publisher, event, reason)
                    .await
                    .map(|()| Attempt::Failed);
            }
        };

        let mut output = AudioOutput {
            file_id: attempt.clone(),
            size: report.size,
            duration_s: report.duration_s,
            bitrate: report.bitrate,
            sample_rate: report.sample_rate,
            channels: report.channels,
        };
        let name = format!("{}.mp3", stem(&event.source.filename));
        if output.bitrate == 0 && output.duration_s > 0.0 {
            output.bitrate = (report.size as f64 * 8.0 / output.duration_s) as u32;
        }
        upload
            .complete(report.size, &name, output_metadata(job_id, &output, &report.tags))
            .await
            .or_retry("storing the MP3")?;
        // Claimed only while this attempt is alive (a sweep spares a fresh heartbeat) and its
        // file is whole.
        heartbeat.abort();
        if !self.store.heartbeat(Bucket::Audio, attempt).await.or_retry("renewing the attempt")? {
            return Err(HandleError::Retry("this attempt was taken for dead while it finished".into()));
        }
        let info = self.store.info(Bucket::Audio, attempt).await.or_retry("reading the stored MP3")?;
        let whole = match &info {
            Some(info) => self.store.is_whole(Bucket::Audio, info).await.or_retry("checking the stored MP3")?,
            None => false,
        };
        if !whole {
            return Err(HandleError::Retry("the stored MP3 is missing chunks".into()));
        }
        match self.store.claim_output(Bucket::Audio, job_id, attempt).await.or_retry("claiming the job's output")? {
            Claim::Won => {}
            Claim::Lost(winner) => {
                info!(%job_id, file_id = %winner, "another attempt finished this job first");
                return Ok(Attempt::Beaten(winner));
            }
        }
        // Swept between the renewal above and the claim (a store that stalled for longer than
        // the heartbeat allows): the sweep may have found no claim and removed the file, so the
        // claim goes back and the job is converted again.
        if !self.store.heartbeat(Bucket::Audio, attempt).await.or_retry("renewing the attempt")? {
            self.store.release_output(Bucket::Audio, job_id, attempt).await.or_retry("giving back the claim")?;
            return Err(HandleError::Retry("this attempt was taken for dead while it claimed the job".into()));
        }
        // A deletion that came while this attempt worked: it may have found nothing to
        // remove yet, so the file is removed here (the claim is made before this check, the
        // deletion's mark before its look at the claim: one of the two sees the other).
        if self.store.is_forgotten(Bucket::Audio, job_id).await.or_retry("checking for a deletion")? {
            self.store
                .release_output(Bucket::Audio, job_id, attempt)
                .await
                .or_retry("releasing a deleted job's output")?;
            info!(%job_id, "the job was deleted while it converted; its MP3 is not kept");
            return Ok(Attempt::Forgotten);
        }
        if let Err(e) = self.store.end_attempt(Bucket::Audio, attempt).await {
            warn!(%job_id, error = %e, "could not close the attempt; the sweep will");
        }
        info!(
            %job_id,
            duration_s = report.duration_s,
            size = report.size,
            took_ms = started.elapsed().as_millis() as u64,
            transcode_ms = transcoded_in.as_millis() as u64,
            source_wait_ms = source_waited_us.load(std::sync::atomic::Ordering::Relaxed) / 1000,
            "converted"
        );
        self.metrics.converted(started.elapsed(), report.duration_s, event.source.size, report.size);
        Ok(Attempt::Claimed(MediaConverted {
            job_id,
            owner: event.owner.clone(),
            source_filename: event.source.filename.clone(),
            preset: event.preset,
            output,
            tags: report.tags,
            source_facts: report.source,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stem_strips_folders_and_extension() {
        assert_eq!(stem("holiday.mp4"), "holiday");
        assert_eq!(stem("../../etc/passwd"), "passwd");
        assert_eq!(stem("a.b.c.mkv"), "a.b.c");
        assert_eq!(stem(".hidden"), ".hidden");
    }
}
