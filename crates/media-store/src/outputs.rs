//! Which stored file is a job's output, and the attempts at writing one. Two workers can hold
//! the same job (a broker hands a message whose channel dropped to another consumer while the
//! first keeps working), so no attempt may touch what another wrote:
//!
//! - each attempt writes under a fresh file id, registered in `attempts` with a heartbeat;
//! - the first attempt to finish a whole file claims the job (`outputs`, first writer wins);
//!   the others remove their own file and announce the winner's;
//! - an attempt whose heartbeat stopped (its worker died) is swept, chunks and all, unless it
//!   is the claimed output; a worker that finds its attempt swept stops writing.
//!
//! A deleted job is remembered (`deleted`): its claimed output is removed, and an attempt
//! that finishes later checks after claiming and removes its own file. Each side writes
//! before it reads the other's mark, so one of them always sees the other.
//!
//! A sweep first marks the attempt swept (only while its heartbeat is stale), then reads the
//! claim, removes the file unless it is claimed, and only then drops the record, so a sweep
//! cut short is finished by the next one. A worker renews its heartbeat (which fails once
//! the attempt is marked) after it claims; if that fails it gives the claim back and starts
//! again, since the sweep may have found no claim and removed the file.

use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc, oid::ObjectId};
use tunewire_contract::{FileId, JobId};

use crate::{Bucket, FileInfo, MediaStore, StoreError, oid};

/// How often a live attempt says so.
pub const ATTEMPT_HEARTBEAT: Duration = Duration::from_secs(5);
/// An attempt silent this long is taken for dead and swept. Several heartbeats, so that a
/// slow store does not get a live attempt swept.
pub const ATTEMPT_STALE_AFTER: Duration = Duration::from_secs(30);

/// What claiming a job's output came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This file is the job's output.
    Won,
    /// Another attempt's file was claimed first.
    Lost(FileId),
}

fn outputs_name(bucket: Bucket) -> String {
    format!("{}_outputs", bucket.name())
}

fn attempts_name(bucket: Bucket) -> String {
    format!("{}_attempts", bucket.name())
}

fn deleted_name(bucket: Bucket) -> String {
    format!("{}_deleted_jobs", bucket.name())
}

pub(crate) fn collection_names(bucket: Bucket) -> [String; 3] {
    [outputs_name(bucket), attempts_name(bucket), deleted_name(bucket)]
}

fn file_id_of(doc: &Document, key: &str) -> Option<FileId> {
    doc.get_object_id(key).ok().map(|id| FileId::from_bytes(id.bytes()))
}

impl MediaStore {
    fn outputs(&self, bucket: Bucket) -> mongodb::Collection<Document> {
        self.outputs_db(bucket).collection_with_options(&outputs_name(bucket), self.journaled())
    }

    fn attempts(&self, bucket: Bucket) -> mongodb::Collection<Document> {
        self.outputs_db(bucket).collection_with_options(&attempts_name(bucket), self.journaled())
    }

    fn deleted(&self, bucket: Bucket) -> mongodb::Collection<Document> {
        self.outputs_db(bucket).collection_with_options(&deleted_name(bucket), self.journaled())
    }

    /// Remembers that `job` was deleted, then removes its claimed output if there is one.
    pub async fn forget_job(&self, bucket: Bucket, job: JobId) -> Result<(), StoreError> {
        self.deleted(bucket)
            .update_one(
                doc! {"_id": job.to_string()},
                doc! {"$setOnInsert": {"deleted_at": mongodb::bson::DateTime::now()}},
            )
            .upsert(true)
            .await?;
        if let Some(file) = self.output_of(bucket, job).await? {
            self.delete(bucket, &file).await?;
            self.release_output(bucket, job, &file).await?;
        }
        Ok(())
    }

    /// Whether `job` was deleted: no output of it may be kept.
    pub async fn is_forgotten(&self, bucket: Bucket, job: JobId) -> Result<bool, StoreError> {
        Ok(self.deleted(bucket).find_one(doc! {"_id": job.to_string()}).await?.is_some())
    }

    /// Registers a new attempt at `job`'s output and returns the fresh id to write it under.
    pub async fn begin_attempt(&self, bucket: Bucket, job: JobId) -> Result<FileId, StoreError> {
        let id = FileId::from_bytes(ObjectId::new().bytes());
        self.attempts(bucket)
            .insert_one(doc! {"_id": oid(&id), "job_id": job.to_string(), "heartbeat": mongodb::bson::DateTime::now()})
            .await?;
        Ok(id)
    }

    /// Says the attempt is alive; `false` when it was swept (taken for dead): stop writing.
    pub async fn heartbeat(&self, bucket: Bucket, attempt: &FileId) -> Result<bool, StoreError> {
        let updated = self
            .attempts(bucket)
            .update_one(
                doc! {"_id": oid(attempt), "swept": {"$ne": true}},
                doc! {"$set": {"heartbeat": mongodb::bson::DateTime::now()}},
            )
            .await?;
        Ok(updated.matched_count == 1)
    }

    /// The attempt is over: claimed, or its file removed.
    pub async fn end_attempt(&self, bucket: Bucket, attempt: &FileId) -> Result<(), StoreError> {
        self.attempts(bucket).delete_one(doc! {"_id": oid(attempt)}).await?;
        Ok(())
    }

    /// The file claimed as `job`'s output, if any.
    pub async fn output_of(&self, bucket: Bucket, job: JobId) -> Result<Option<FileId>, StoreError> {
        let found = self.outputs(bucket).find_one(doc! {"_id": job.to_string()}).await?;
        Ok(found.as_ref().and_then(|d| file_id_of(d, "file_id")))
    }

    /// Makes `file` (complete and whole) `job`'s output, unless another file was first.
    pub async fn claim_output(&self, bucket: Bucket, job: JobId, file: &FileId) -> Result<Claim, StoreError> {
        let inserted = self
            .outputs(bucket)
            .insert_one(
                doc! {"_id": job.to_string(), "file_id": oid(file), "claimed_at": mongodb::bson::DateTime::now()},
            )
            .await;
        // A duplicate key, or an insert whose answer was lost: the stored claim says who won.
        match (self.output_of(bucket, job).await?, inserted) {
            (Some(winner), _) if &winner == file => Ok(Claim::Won),
            (Some(winner), _) => Ok(Claim::Lost(winner)),
            (None, Err(e)) => Err(e.into()),
            (None, Ok(_)) => Err(StoreError::Corrupt { file_id: file.clone(), what: "the claim vanished".into() }),
        }
    }

    /// Drops `job`'s claim if it still names `file` (an output found broken or removed).
    pub async fn release_output(&self, bucket: Bucket, job: JobId, file: &FileId) -> Result<(), StoreError> {
        self.outputs(bucket).delete_one(doc! {"_id": job.to_string(), "file_id": oid(file)}).await?;
        Ok(())
    }

    /// Whether every chunk of a stored file is there: as many as its length needs, each
    /// numbered below that count (the chunk index is unique per file and number).
    pub async fn is_whole(&self, bucket: Bucket, info: &FileInfo) -> Result<bool, StoreError> {
        let expected = info.length.div_ceil(u64::from(info.chunk_size.max(1)));
        let found = self
            .chunks(bucket)
            .count_documents(doc! {"files_id": oid(&info.id), "n": {"$lt": expected as i64}})
            .await?;
        Ok(found == expected)
    }

    /// Removes the files of attempts whose heartbeat stopped more than `stale` ago, except
    /// a claimed output; returns how many attempts were swept.
    pub async fn sweep_stale_attempts(&self, bucket: Bucket, stale: Duration) -> Result<u64, StoreError> {
        let cutoff = chrono::Utc::now() - chrono::Duration::from_std(stale).unwrap_or(chrono::Duration::MAX);
        let cutoff = mongodb::bson::DateTime::from_millis(cutoff.timestamp_millis());
        let stale_attempts: Vec<Document> =
            self.attempts(bucket).find(doc! {"heartbeat": {"$lt": cutoff}}).limit(100).await?.try_collect().await?;
        let mut swept = 0;
        for attempt in stale_attempts {
            let (Some(file), Ok(job)) = (file_id_of(&attempt, "_id"), attempt.get_str("job_id")) else { continue };
            // Only while still stale: a worker that renewed it meanwhile keeps it.
            let marked = attempt.get_bool("swept").unwrap_or(false)
                || self
                    .attempts(bucket)
                    .update_one(
                        doc! {"_id": oid(&file), "heartbeat": {"$lt": cutoff}, "swept": {"$ne": true}},
                        doc! {"$set": {"swept": true}},
                    )
                    .await?
                    .modified_count
                    == 1;
            if !marked {
                continue;
            }
            let claimed = self.outputs(bucket).find_one(doc! {"_id": job, "file_id": oid(&file)}).await?;
            if claimed.is_none() {
                self.delete(bucket, &file).await?;
            }
            self.attempts(bucket).delete_one(doc! {"_id": oid(&file)}).await?;
            swept += 1;
        }
        Ok(swept)
    }
}
