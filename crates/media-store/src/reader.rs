//! A stored file as a blocking `Read + Seek`, for FFmpeg's custom I/O: it reads straight
//! from the chunks, fetched ahead by a task on the async runtime, so a conversion starts on
//! the first chunk and never copies the file anywhere. Memory is bounded by the read-ahead
//! whatever the file's size.
//!
//! Reads block the calling thread (run it on a blocking thread, never on the runtime). A read
//! that waits longer than `WAIT_SLICE` returns `ErrorKind::Interrupted` with nothing read,
//! so the caller can look at its clock or cancellation and call again: FFmpeg's custom I/O
//! does exactly that between attempts.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::TryStreamExt;
use mongodb::Collection;
use mongodb::bson::{Bson, Document, doc};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::{FileInfo, StoreError, oid};

/// Chunks fetched ahead of the one being read (255 KiB each).
const READ_AHEAD: usize = 4;
/// Chunks per server round trip.
const BATCH: u32 = 8;
/// A forward seek within this many chunks reads on through the chunks in flight rather than
/// asking the server again: demuxers skip the streams they discard that way, a few hundred KiB
/// at a time.
const SKIP_WINDOW: u64 = 32;
/// How long one `read` waits for a chunk before it returns `Interrupted`.
const WAIT_SLICE: Duration = Duration::from_millis(200);

type Fetched = Result<(u64, Bytes), StoreError>;

/// Chunks `next..` arriving in order from a fetch task; the task ends when this is dropped.
struct Ahead {
    next: u64,
    chunks: mpsc::Receiver<Fetched>,
    task: AbortHandle,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct ChunkReader {
    runtime: Handle,
    chunks: Collection<Document>,
    info: FileInfo,
    chunk_size: u64,
    pos: u64,
    current: Option<(u64, Bytes)>,
    ahead: Option<Ahead>,
    waited_us: Arc<AtomicU64>,
}

fn corrupt(info: &FileInfo, what: String) -> io::Error {
    io::Error::other(StoreError::Corrupt { file_id: info.id.clone(), what })
}

async fn fetch(chunks: Collection<Document>, info: FileInfo, from: u64, sender: mpsc::Sender<Fetched>) {
    let result = async {
        let filter = doc! {"files_id": oid(&info.id), "n": {"$gte": from as i64}};
        let mut cursor = chunks.find(filter).sort(doc! {"n": 1}).batch_size(BATCH).await?;
        while let Some(mut chunk) = cursor.try_next().await? {
            let n = chunk.get_i32("n").map(i64::from).or_else(|_| chunk.get_i64("n")).unwrap_or(-1);
            let data = match chunk.remove("data") {
                Some(Bson::Binary(binary)) => Bytes::from(binary.bytes),
                _ => Bytes::new(),
            };
            if sender.send(Ok((n.max(0) as u64, data))).await.is_err() {
                return Ok(());
            }
        }
        Ok::<(), StoreError>(())
    }
    .await;
    if let Err(e) = result {
        let _ = sender.send(Err(e)).await;
    }
}

impl ChunkReader {
    pub(crate) fn new(runtime: Handle, chunks: Collection<Document>, info: FileInfo) -> Self {
        let chunk_size = u64::from(info.chunk_size.max(1));
        Self { runtime, chunks, info, chunk_size, pos: 0, current: None, ahead: None, waited_us: Arc::default() }
    }

    pub fn info(&self) -> &FileInfo {
        &self.info
    }

    /// Microseconds the reader has spent waiting for chunks, readable while it is in use
    /// elsewhere: what the store cost the conversion.
    pub fn waited_us(&self) -> Arc<AtomicU64> {
        self.waited_us.clone()
    }

    fn start_fetch(&mut self, from: u64) {
        let (sender, receiver) = mpsc::channel(READ_AHEAD);
        let task = self.runtime.spawn(fetch(self.chunks.clone(), self.info.clone(), from, sender));
        self.ahead = Some(Ahead { next: from, chunks: receiver, task: task.abort_handle() });
    }

    /// The length chunk `n` must have: full, but for the last one.
    fn expected_len(&self, n: u64) -> u64 {
        (self.info.length - n * self.chunk_size).min(self.chunk_size)
    }

    /// Makes chunk `n` current, waiting at most `WAIT_SLICE` for it.
    fn load(&mut self, n: u64) -> io::Result<()> {
        let reusable = self.ahead.as_ref().is_some_and(|a| a.next <= n && n < a.next + SKIP_WINDOW);
        if !reusable {
            self.start_fetch(n);
        }
        let Some(ahead) = self.ahead.as_mut() else {
            return Err(io::Error::other("no chunk fetch is running"));
        };
        // One slice for the whole call, skipped chunks included, so the caller hears back in time.
        let until = tokio::time::Instant::now() + WAIT_SLICE;
        loop {
            let received = self.runtime.block_on(async { tokio::time::timeout_at(until, ahead.chunks.recv()).await });
            let fetched = match received {
                Err(_) => return Err(io::ErrorKind::Interrupted.into()),
                Ok(None) => {
                    let what = format!("chunk {} is missing", ahead.next);
                    self.ahead = None;
                    return Err(corrupt(&self.info, what));
                }
                Ok(Some(fetched)) => fetched,
            };
            let (got, data) = match fetched {
                Ok(chunk) => chunk,
                Err(e) => {
                    self.ahead = None;
                    return Err(io::Error::other(e));
                }
            };
            if got != ahead.next {
                let what = format!("chunk {} is missing (found {got})", ahead.next);
                self.ahead = None;
                return Err(corrupt(&self.info, what));
            }
            ahead.next += 1;
            if got == n {
                if data.len() as u64 != self.expected_len(n) {
                    let what = format!("chunk {n} holds {} bytes, not {}", data.len(), self.expected_len(n));
                    return Err(corrupt(&self.info, what));
                }
                self.current = Some((n, data));
                return Ok(());
            }
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.info.length || buf.is_empty() {
            return Ok(0);
        }
        let n = self.pos / self.chunk_size;
        if self.current.as_ref().is_none_or(|(current, _)| *current != n) {
            let started = Instant::now();
            let loaded = self.load(n);
            self.waited_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            loaded?;
        }
        let Some((_, data)) = &self.current else {
            return Err(io::Error::other("no chunk loaded"));
        };
        let offset = (self.pos - n * self.chunk_size) as usize;
        let count = (data.len() - offset).min(buf.len());
        buf[..count].copy_from_slice(&data[offset..offset + count]);
        self.pos += count as u64;
        Ok(count)
    }
}

impl Seek for ChunkReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.info.length.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let Some(target) = target else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the file"));
        };
        self.pos = target;
        Ok(target)
    }
}
