//! Two attempts at one job's output, against the real MongoDB-wire server: each writes under
//! its own id, the first whole file claims the job, and a dead attempt is swept without
//! touching the claimed output or a live attempt.

use std::time::Duration;

use bytes::Bytes;
use mongodb::bson::doc;
use tunewire_contract::JobId;
use tunewire_media_store::{Bucket, CHUNK_SIZE, Claim, FileInfo, MediaStore};
use tunewire_test_stack::Stack;

struct Store {
    store: MediaStore,
    client: mongodb::Client,
    prefix: String,
}

impl Store {
    async fn fresh() -> anyhow::Result<Self> {
        let stack = Stack::from_env();
        let prefix = format!("t_outputs_{}", uuid_like());
        let uri = tunewire_test_stack::direct_connection(&stack.mongo_uri);
        let store = MediaStore::connect(&uri, &prefix).await?;
        store.prepare().await?;
        Ok(Self { store, client: mongodb::Client::with_uri_str(&uri).await?, prefix })
    }

    async fn drop_database(self) -> anyhow::Result<()> {
        for bucket in [Bucket::Uploads, Bucket::Audio] {
            self.client.database(&bucket.database(&self.prefix)).drop().await?;
            self.client.database(&bucket.outputs_database(&self.prefix)).drop().await?;
        }
        Ok(())
    }
}

fn uuid_like() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos())
}

/// Writes `chunks` whole chunks under `id` and completes the file.
async fn write_file(store: &MediaStore, id: &tunewire_contract::FileId, chunks: u64) -> anyhow::Result<FileInfo> {
    let upload = store.chunk_upload(Bucket::Audio, id.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let feed = async move {
        for n in 0..chunks {
            tx.send((n, Bytes::from(vec![n as u8; CHUNK_SIZE as usize]))).await?;
        }
        anyhow::Ok(())
    };
    let (written, fed) = futures_util::future::join(upload.run(rx), feed).await;
    fed?;
    assert_eq!(written?, chunks);
    upload.complete(chunks * CHUNK_SIZE, "a.mp3", doc! {}).await?;
    store.info(Bucket::Audio, id).await?.ok_or_else(|| anyhow::anyhow!("the file is not there"))
}

#[tokio::test]
async fn the_first_whole_file_claims_the_job_and_the_loser_is_told_which() -> anyhow::Result<()> {
    let s = Store::fresh().await?;
    let job = JobId::new();
    let (first, second) =
        (s.store.begin_attempt(Bucket::Audio, job).await?, s.store.begin_attempt(Bucket::Audio, job).await?);
    assert_ne!(first, second, "two attempts share a file id");
    let info = write_file(&s.store, &second, 3).await?;
    assert!(s.store.is_whole(Bucket::Audio, &info).await?);
    assert_eq!(s.store.claim_output(Bucket::Audio, job, &second).await?, Claim::Won);
    write_file(&s.store, &first, 2).await?;
    assert_eq!(s.store.claim_output(Bucket::Audio, job, &first).await?, Claim::Lost(second.clone()));
    // Claiming again is idempotent for the winner.
    assert_eq!(s.store.claim_output(Bucket::Audio, job, &second).await?, Claim::Won);
    assert_eq!(s.store.output_of(Bucket::Audio, job).await?, Some(second.clone()));
    // The loser removing its own file leaves the winner whole.
    s.store.delete(Bucket::Audio, &first).await?;
    assert!(s.store.is_whole(Bucket::Audio, &info).await?);
    s.drop_database().await
}

#[tokio::test]
async fn a_file_with_a_missing_chunk_is_not_whole() -> anyhow::Result<()> {
    let s = Store::fresh().await?;
    let job = JobId::new();
    let id = s.store.begin_attempt(Bucket::Audio, job).await?;
    let info = write_file(&s.store, &id, 4).await?;
    let chunks =
        s.client.database(&Bucket::Audio.database(&s.prefix)).collection::<mongodb::bson::Document>("audio.chunks");
    let removed =
        chunks.delete_one(doc! {"files_id": mongodb::bson::oid::ObjectId::from_bytes(id.bytes()), "n": 2}).await?;
    assert_eq!(removed.deleted_count, 1);
    assert!(!s.store.is_whole(Bucket::Audio, &info).await?);
    s.drop_database().await
}

#[tokio::test]
async fn the_sweep_removes_dead_attempts_only() -> anyhow::Result<()> {
    let s = Store::fresh().await?;
    let (job, other_job) = (JobId::new(), JobId::new());
    let claimed = s.store.begin_attempt(Bucket::Audio, job).await?;
    write_file(&s.store, &claimed, 2).await?;
    assert_eq!(s.store.claim_output(Bucket::Audio, job, &claimed).await?, Claim::Won);
    let dead = s.store.begin_attempt(Bucket::Audio, job).await?;
    write_file(&s.store, &dead, 2).await?;
    let alive = s.store.begin_attempt(Bucket::Audio, other_job).await?;
    write_file(&s.store, &alive, 1).await?;

    tokio::time::sleep(Duration::from_secs(4)).await;
    // The live attempt says so; the other two (one of them claimed) went silent. The margins
    // leave 2 s between the renewal and the sweep for a busy machine.
    assert!(s.store.heartbeat(Bucket::Audio, &alive).await?);
    assert_eq!(s.store.sweep_stale_attempts(Bucket::Audio, Duration::from_secs(2)).await?, 2);

    assert!(s.store.info(Bucket::Audio, &dead).await?.is_none(), "the dead attempt's file survived the sweep");
    assert_eq!(s.store.chunk_count(Bucket::Audio, &dead).await?, 0);
    let claimed_info =
        s.store.info(Bucket::Audio, &claimed).await?.ok_or_else(|| anyhow::anyhow!("claimed file swept"))?;
    assert!(s.store.is_whole(Bucket::Audio, &claimed_info).await?);
    assert!(s.store.info(Bucket::Audio, &alive).await?.is_some(), "a live attempt was swept");
    // A swept attempt learns it at its next heartbeat.
    assert!(!s.store.heartbeat(Bucket::Audio, &dead).await?);
    s.drop_database().await
}

#[tokio::test]
async fn chunks_without_a_file_are_swept_after_the_grace_period_only() -> anyhow::Result<()> {
    use mongodb::bson::oid::ObjectId;
    let s = Store::fresh().await?;
    let hours_ago = |h: u64| {
        let at = std::time::SystemTime::now() - Duration::from_secs(h * 3600);
        let secs = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32);
        let mut bytes = ObjectId::new().bytes();
        bytes[..4].copy_from_slice(&secs.to_be_bytes());
        tunewire_contract::FileId::from_bytes(bytes)
    };
    let (cut_off, recent, whole, resumable) = (hours_ago(3), hours_ago(0), hours_ago(3), hours_ago(3));
    for id in [&cut_off, &recent, &resumable] {
        let upload = s.store.chunk_upload(Bucket::Uploads, id.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send((0, Bytes::from_static(b"partial"))).await?;
        drop(tx);
        upload.run(rx).await?;
    }
    let upload = s.store.chunk_upload(Bucket::Uploads, whole.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send((0, Bytes::from_static(b"whole"))).await?;
    drop(tx);
    upload.run(rx).await?;
    upload.complete(5, "w.wav", doc! {}).await?;

    let live = std::collections::HashSet::from([resumable.clone()]);
    assert_eq!(s.store.sweep_orphan_chunks(Bucket::Uploads, Duration::from_secs(3600), &live).await?, 1);
    assert_eq!(s.store.chunk_count(Bucket::Uploads, &resumable).await?, 1, "a resumable upload in progress was swept");
    assert_eq!(s.store.chunk_count(Bucket::Uploads, &cut_off).await?, 0, "the old orphan survived");
    assert_eq!(s.store.chunk_count(Bucket::Uploads, &recent).await?, 1, "an upload still being written was swept");
    assert_eq!(s.store.chunk_count(Bucket::Uploads, &whole).await?, 1, "a complete file lost its chunk");
    s.drop_database().await
}
