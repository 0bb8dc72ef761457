//! Media bytes in MongoDB GridFS: originals in bucket `uploads`, MP3s in bucket `audio`, each
//! in its own database (`<prefix>-uploads`, `<prefix>-audio`), and the bookkeeping of MP3
//! writers in a third (`<prefix>-audio-outputs`), so that each service's privileges can be
//! given per database (`access`). The setup makes the collections and indexes (`prepare`).
//! Everything streams; a file is never held whole in memory. Writes are journaled (`j: true`)
//! so an acknowledged file survives a server crash.

pub mod access;
mod outputs;
mod reader;
mod writer;

pub use outputs::{ATTEMPT_HEARTBEAT, ATTEMPT_STALE_AFTER, Claim};
pub use reader::ChunkReader;
pub use writer::{CHUNK_SIZE, ChunkUpload, ChunkWriter, WriteError};

use std::path::Path;

use bytes::Bytes;
use futures_util::io::AsyncWriteExt;
use futures_util::{Stream, StreamExt, TryStreamExt};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use mongodb::error::ErrorKind;
use mongodb::gridfs::{GridFsBucket, GridFsDownloadStream};
use mongodb::options::{CollectionOptions, GridFsBucketOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tunewire_contract::FileId;

/// One GridFS chunk (the driver's 255 KiB): each write to MongoDB inserts whole chunks.
/// Larger batches send fewer, bigger inserts but cost memory per concurrent upload.
const WRITE_BATCH: usize = 255 * 1024;
/// Batches received ahead of the one being written.
const WRITE_AHEAD: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Uploads,
    Audio,
}

impl Bucket {
    pub fn name(self) -> &'static str {
        match self {
            Bucket::Uploads => "uploads",
            Bucket::Audio => "audio",
        }
    }

    /// The database holding this bucket's files.
    pub fn database(self, prefix: &str) -> String {
        format!("{prefix}-{}", self.name())
    }

    /// The database holding the bookkeeping of its writers (`outputs`).
    pub fn outputs_database(self, prefix: &str) -> String {
        format!("{prefix}-{}-outputs", self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("the file is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("reading the source failed: {0}")]
    Source(String),
    #[error("local file: {0}")]
    Io(#[from] std::io::Error),
    #[error("file {file_id} is corrupt: {what}")]
    Corrupt { file_id: FileId, what: String },
    #[error("the write was stopped")]
    Stopped,
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Mongo(_) => "media_store_unavailable",
            StoreError::TooLarge { .. } => "payload_too_large",
            StoreError::Source(_) => "upload_interrupted",
            StoreError::Io(_) => "local_io",
            StoreError::Corrupt { .. } => "media_store_corrupt",
            StoreError::Stopped => "write_stopped",
        }
    }
}

/// What was stored: the id, and facts computed while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub id: FileId,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub struct FileInfo {
    pub id: FileId,
    pub length: u64,
    pub chunk_size: u32,
    pub filename: Option<String>,
    pub uploaded_at: chrono::DateTime<chrono::Utc>,
    pub metadata: Option<Document>,
}

#[derive(Clone)]
pub struct MediaStore {
    client: Client,
    prefix: String,
    // Kept, not rebuilt per call: each bucket checks its indexes once per instance.
    uploads: GridFsBucket,
    audio: GridFsBucket,
}

/// MongoDB's `NamespaceExists`: a setup running beside another made it first.
const NAMESPACE_EXISTS: i32 = 48;

pub(crate) fn oid(id: &FileId) -> Bson {
    Bson::ObjectId(ObjectId::from_bytes(id.bytes()))
}

impl MediaStore {
    /// Connects and logs in (a ping); `prefix` names the databases (`Bucket::database`).
    /// Changes nothing: the collections and indexes are `prepare`'s.
    pub async fn connect(uri: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = Client::with_uri_str(uri).await?;
        let bucket = |bucket: Bucket| {
            let options = GridFsBucketOptions::builder()
                .bucket_name(bucket.name().to_string())
                .write_concern(WriteConcern::builder().journal(true).build())
                .build();
            client.database(&bucket.database(prefix)).gridfs_bucket(options)
        };
        let store =
            Self { uploads: bucket(Bucket::Uploads), audio: bucket(Bucket::Audio), prefix: prefix.to_string(), client };
        store.ping().await?;
        Ok(store)
    }

    /// Makes the collections and indexes, chunk indexes unique (the driver's own are not).
    /// Run by the setup as the administrator, so that no service may change a database's
    /// shape (an index is a write: a TTL one removes documents). Idempotent.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        for bucket in [Bucket::Uploads, Bucket::Audio] {
            let chunks = self.db(bucket).collection::<Document>(&format!("{}.chunks", bucket.name()));
            let unique = IndexOptions::builder().unique(true).name("files_id_1_n_1".to_string()).build();
            chunks
                .create_index(IndexModel::builder().keys(doc! {"files_id": 1, "n": 1}).options(unique).build())
                .await?;
            let files = self.db(bucket).collection::<Document>(&format!("{}.files", bucket.name()));
            files.create_index(IndexModel::builder().keys(doc! {"filename": 1, "uploadDate": 1}).build()).await?;
        }
        // Only MP3s have several writers to keep apart.
        let outputs = self.outputs_db(Bucket::Audio);
        let existing = outputs.list_collection_names().await?;
        for name in outputs::collection_names(Bucket::Audio) {
            if !existing.contains(&name) {
                match outputs.create_collection(&name).await {
                    Err(e) if matches!(*e.kind, ErrorKind::Command(ref c) if c.code == NAMESPACE_EXISTS) => {}
                    other => other?,
                }
            }
        }
        Ok(())
    }

    fn db(&self, bucket: Bucket) -> Database {
        self.client.database(&bucket.database(&self.prefix))
    }

    fn outputs_db(&self, bucket: Bucket) -> Database {
        self.client.database(&bucket.outputs_database(&self.prefix))
    }

    fn bucket(&self, bucket: Bucket) -> GridFsBucket {
        match bucket {
            Bucket::Uploads => self.uploads.clone(),
            Bucket::Audio => self.audio.clone(),
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db(Bucket::Uploads).run_command(doc! {"ping": 1}).await?;
        Ok(())
    }

    /// Streams `source` into `bucket`, hashing as it goes. On any failure, or past `max_bytes`, the partial
    /// file is removed and nothing is left behind.
    pub async fn store<S, E>(
        &self,
        bucket: Bucket,
        id: Option<FileId>,
        filename: &str,
        metadata: Document,
        mut source: S,
        max_bytes: u64,
    ) -> Result<StoredFile, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let id = id.unwrap_or_else(|| FileId::from_bytes(ObjectId::new().bytes()));
        let mut upload = self.bucket(bucket).open_upload_stream(filename).id(oid(&id)).metadata(metadata).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        // Receiving (and hashing) and writing to MongoDB overlap: batches of whole chunks go
        // to the writer over a small channel, so the server always has the next insert ready
        // and the source keeps flowing. At most WRITE_AHEAD + 2 batches live per upload.
        let (batches, to_write) = tokio::sync::mpsc::channel::<Bytes>(WRITE_AHEAD);
        let receive = async {
            // Owned here: when receiving ends, the writer sees the channel close.
            let batches = batches;
            let mut batch = Vec::with_capacity(WRITE_BATCH);
            loop {
                let next = source.next().await.transpose().map_err(|e| StoreError::Source(e.to_string()))?;
                if let Some(chunk) = &next {
                    size += chunk.len() as u64;
                    if size > max_bytes {
                        return Err(StoreError::TooLarge { limit: max_bytes });
                    }
                    batch.extend_from_slice(chunk);
                }
                if batch.len() >= WRITE_BATCH || (next.is_none() && !batch.is_empty()) {
                    let full = Bytes::from(std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH)));
                    hasher.update(&full);
                    if batches.send(full).await.is_err() {
                        // The writer failed; its error is the one to report.
                        return Ok(());
                    }
                }
                if next.is_none() {
                    return Ok(());
                }
            }
        };
        let write = async {
            // Owned here: when writing fails, the receiver's next send fails.
            let mut to_write = to_write;
            while let Some(batch) = to_write.recv().await {
                upload.write_all(&batch).await?;
            }
            Ok::<(), StoreError>(())
        };
        let (received, written) = futures_util::future::join(receive, write).await;
        let outcome = match (received, written) {
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => upload.close().await.map_err(StoreError::from),
        };
        if let Err(e) = outcome {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(file_id = %id, error = %abort, "could not remove a partial upload");
            }
            return Err(e);
        }
        Ok(StoredFile { id, size, sha256: hex::encode(hasher.finalize()) })
    }

    /// Streams a local file into `bucket` under a chosen id.
    pub async fn store_path(
        &self,
        bucket: Bucket,
        id: FileId,
        filename: &str,
        metadata: Document,
        path: &Path,
    ) -> Result<StoredFile, StoreError> {
        let file = tokio::fs::File::open(path).await?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 255 * 1024);
        self.store(bucket, Some(id), filename, metadata, stream, u64::MAX).await
    }

    pub async fn info(&self, bucket: Bucket, id: &FileId) -> Result<Option<FileInfo>, StoreError> {
        let found = self.bucket(bucket).find_one(doc! {"_id": oid(id)}).await?;
        Ok(found.map(|f| FileInfo {
            id: id.clone(),
            length: f.length,
            chunk_size: f.chunk_size_bytes,
            filename: f.filename,
            uploaded_at: chrono::DateTime::from_timestamp_millis(f.upload_date.timestamp_millis()).unwrap_or_default(),
            metadata: f.metadata,
        }))
    }

    /// The file's bytes as an `AsyncRead`, or `None` when there is no such (complete) file.
    pub async fn open(
        &self,
        bucket: Bucket,
        id: &FileId,
    ) -> Result<Option<(FileInfo, GridFsDownloadStream)>, StoreError> {
        let Some(info) = self.info(bucket, id).await? else {
            return Ok(None);
        };
        let stream = self.bucket(bucket).open_download_stream(oid(id)).await?;
        Ok(Some((info, stream)))
    }

    /// The file as a blocking `Read + Seek` over its chunks (see `ChunkReader`), or `None`
    /// when there is no such (complete) file. Its fetches run on the current runtime.
    pub async fn reader(&self, bucket: Bucket, id: &FileId) -> Result<Option<ChunkReader>, StoreError> {
        let Some(info) = self.info(bucket, id).await? else {
            return Ok(None);
        };
        Ok(Some(ChunkReader::new(tokio::runtime::Handle::current(), self.chunks(bucket), info)))
    }

    /// Writes a file under `id` chunk by chunk: feed it from a `ChunkWriter`, then `complete`
    /// it. `id` must be fresh (see `begin_attempt`): nothing else may write under it.
    pub fn chunk_upload(&self, bucket: Bucket, id: FileId) -> ChunkUpload {
        ChunkUpload {
            chunks: self.chunks(bucket),
            files: self.db(bucket).collection_with_options(&format!("{}.files", bucket.name()), self.journaled()),
            id,
        }
    }

    fn chunks(&self, bucket: Bucket) -> Collection<Document> {
        self.db(bucket).collection_with_options(&format!("{}.chunks", bucket.name()), self.journaled())
    }

    fn journaled(&self) -> CollectionOptions {
        CollectionOptions::builder().write_concern(WriteConcern::builder().journal(true).build()).build()
    }

    /// Bytes `start..=end` of a stored file, read straight from the chunks that hold them
    /// (a few chunks in memory at a time). A missing or short chunk is an error, not silence.
    pub async fn read_range(
        &self,
        bucket: Bucket,
        info: &FileInfo,
        start: u64,
        end: u64,
    ) -> Result<impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static, StoreError> {
        let chunks = self.db(bucket).collection::<Document>(&format!("{}.chunks", bucket.name()));
        let chunk_size = u64::from(info.chunk_size.max(1));
        let (first, last) = (start / chunk_size, end / chunk_size);
        let filter = doc! {"files_id": oid(&info.id), "n": {"$gte": first as i64, "$lte": last as i64}};
        let cursor = chunks.find(filter).sort(doc! {"n": 1}).batch_size(4).await?;
        let file_id = info.id.clone();
        Ok(futures_util::stream::try_unfold((cursor, first), move |(mut cursor, n)| {
            let file_id = file_id.clone();
            async move {
                if n > last {
                    return Ok(None);
                }
                let corrupt = |what: String| StoreError::Corrupt { file_id, what };
                let Some(chunk) = cursor.try_next().await? else {
                    return Err(corrupt(format!("chunk {n} is missing")));
                };
                let found = chunk.get_i32("n").map(i64::from).or_else(|_| chunk.get_i64("n")).ok();
                if found != Some(n as i64) {
                    return Err(corrupt(format!("chunk {n} is missing (found {found:?})")));
                }
                let Some(Bson::Binary(data)) = chunk.get("data") else {
                    return Err(corrupt(format!("chunk {n} has no data")));
                };
                let offset = n * chunk_size;
                let from = start.saturating_sub(offset) as usize;
                let to = (end + 1 - offset).min(data.bytes.len() as u64) as usize;
                if from >= to {
                    return Err(corrupt(format!("chunk {n} is short")));
                }
                Ok(Some((Bytes::copy_from_slice(&data.bytes[from..to]), (cursor, n + 1))))
            }
        }))
    }

    /// Copies a stored file to a local path (bounded memory), returning its length.
    pub async fn download_to(&self, bucket: Bucket, id: &FileId, path: &Path) -> Result<Option<u64>, StoreError> {
        let Some((_, stream)) = self.open(bucket, id).await? else {
            return Ok(None);
        };
        let mut reader = stream.compat();
        let mut file = tokio::fs::File::create(path).await?;
        let copied = tokio::io::copy(&mut reader, &mut file).await?;
        file.flush().await?;
        Ok(Some(copied))
    }

    /// Up to `limit` files of `bucket` stored before `cutoff`, oldest first (retention).
    pub async fn stored_before(
        &self,
        bucket: Bucket,
        cutoff: chrono::DateTime<chrono::Utc>,
        limit: i64,
    ) -> Result<Vec<FileId>, StoreError> {
        let files = self.db(bucket).collection::<Document>(&format!("{}.files", bucket.name()));
        let cutoff = mongodb::bson::DateTime::from_millis(cutoff.timestamp_millis());
        let found: Vec<Document> = files
            .find(doc! {"uploadDate": {"$lt": cutoff}})
            .sort(doc! {"uploadDate": 1})
            .projection(doc! {"_id": 1})
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        Ok(found.iter().filter_map(|d| d.get_object_id("_id").ok()).map(|id| FileId::from_bytes(id.bytes())).collect())
    }

    /// Removes a file and its chunks; a file that is not there is not an error.
    pub async fn delete(&self, bucket: Bucket, id: &FileId) -> Result<(), StoreError> {
        self.delete_chunks(bucket, id).await?;
        let files = self.db(bucket).collection::<Document>(&format!("{}.files", bucket.name()));
        files.delete_one(doc! {"_id": oid(id)}).await?;
        Ok(())
    }

    /// Removes chunks that belong to no file and were written more than `grace` ago (by the
    /// creation time in their file's ObjectId): uploads cut off by a process that died
    /// mid-way. `grace` must exceed the longest a file can take to write; files still being
    /// written for longer (resumable uploads) are in `live`. Returns how many files' chunks
    /// went.
    pub async fn sweep_orphan_chunks(
        &self,
        bucket: Bucket,
        grace: std::time::Duration,
        live: &std::collections::HashSet<FileId>,
    ) -> Result<u64, StoreError> {
        let cutoff = std::time::SystemTime::now()
            .checked_sub(grace)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as u32);
        let mut newest_allowed = [0u8; 12];
        newest_allowed[..4].copy_from_slice(&cutoff.to_be_bytes());
        let old = doc! {"files_id": {"$lt": ObjectId::from_bytes(newest_allowed)}};
        let candidates: Vec<Bson> = self.chunks(bucket).distinct("files_id", old).await?;
        let files = self.db(bucket).collection::<Document>(&format!("{}.files", bucket.name()));
        let mut swept = 0;
        for id in candidates.into_iter().take(1000) {
            if let Bson::ObjectId(oid) = &id
                && live.contains(&FileId::from_bytes(oid.bytes()))
            {
                continue;
            }
            if files.find_one(doc! {"_id": id.clone()}).await?.is_none() {
                self.chunks(bucket).delete_many(doc! {"files_id": id}).await?;
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// How many chunks are stored under `id`.
    pub async fn chunk_count(&self, bucket: Bucket, id: &FileId) -> Result<u64, StoreError> {
        Ok(self.chunks(bucket).count_documents(doc! {"files_id": oid(id)}).await?)
    }

    /// Removes every chunk stored under `id`.
    async fn delete_chunks(&self, bucket: Bucket, id: &FileId) -> Result<u64, StoreError> {
        let chunks = self.db(bucket).collection::<Document>(&format!("{}.chunks", bucket.name()));
        Ok(chunks.delete_many(doc! {"files_id": oid(id)}).await?.deleted_count)
    }
}
