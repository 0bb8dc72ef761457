//! Writing a file into GridFS chunk by chunk as it is produced, from a blocking thread, with a
//! rewritable head: muxers write a header first and fill it in at the end (the MP3 muxer's
//! Xing/LAME frame holds the frame count and the encoder's padding), so the chunks that hold
//! the header stay in memory until `finish`, and every later chunk goes to the server as soon
//! as it is whole. Memory: the head, the chunk being written and `WRITE_AHEAD` chunks in
//! flight, whatever the file's length.

use std::collections::BTreeMap;
use std::io::{self, Seek, SeekFrom, Write};

use bytes::Bytes;
use mongodb::Collection;
use mongodb::bson::{Binary, Document, doc, spec::BinarySubtype};
use tokio::sync::mpsc;

use crate::{StoreError, oid};
use tunewire_contract::FileId;

/// GridFS's usual chunk size (the driver's default), so readers see nothing unusual.
pub const CHUNK_SIZE: u64 = 255 * 1024;
/// Whole chunks on their way to the server.
const WRITE_AHEAD: usize = 4;
/// Chunks sent in one insert when several are waiting.
const INSERT_BATCH: usize = 4;

/// The server side: inserts the chunks a `ChunkWriter` hands over, then the files document.
pub struct ChunkUpload {
    pub(crate) chunks: Collection<Document>,
    pub(crate) files: Collection<Document>,
    pub(crate) id: FileId,
}

impl ChunkUpload {
    /// Inserts chunks as they arrive until the writer is gone; returns how many.
    pub async fn run(&self, incoming: mpsc::Receiver<(u64, Bytes)>) -> Result<u64, StoreError> {
        self.run_until(incoming, std::future::pending()).await
    }

    /// As `run`, but when `stop` completes no more chunks are taken (the writer's next send
    /// fails) and it ends with `StoreError::Stopped` once the insert under way is answered:
    /// nothing of this upload reaches the server after it returns.
    pub async fn run_until(
        &self,
        mut incoming: mpsc::Receiver<(u64, Bytes)>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<u64, StoreError> {
        let mut count = 0u64;
        let mut batch = Vec::with_capacity(INSERT_BATCH);
        let mut stop = std::pin::pin!(stop);
        loop {
            let first = tokio::select! {
                biased;
                () = &mut stop => {
                    incoming.close();
                    return Err(StoreError::Stopped);
                }
                next = incoming.recv() => match next {
                    Some(first) => first,
                    None => break,
                },
            };
            batch.push(first);
            while batch.len() < INSERT_BATCH {
                match incoming.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            count += batch.len() as u64;
            self.insert(&batch).await?;
            batch.clear();
        }
        Ok(count)
    }

    /// Inserts `chunks` (index, bytes), journaled, in one request.
    pub async fn insert(&self, chunks: &[(u64, Bytes)]) -> Result<(), StoreError> {
        let docs = chunks.iter().map(|(n, data)| {
            doc! {
                "files_id": oid(&self.id),
                "n": *n as i32,
                "data": Binary { subtype: BinarySubtype::Generic, bytes: data.to_vec() },
            }
        });
        self.chunks.insert_many(docs).await?;
        Ok(())
    }

    /// Removes chunks `first..`: what a writer that died stored past the last point it
    /// recorded, before another writes them again.
    pub async fn discard_from(&self, first: u64) -> Result<(), StoreError> {
        self.chunks.delete_many(doc! {"files_id": oid(&self.id), "n": {"$gte": first as i64}}).await?;
        Ok(())
    }

    /// Makes the file visible: its files document, written once every chunk is in.
    pub async fn complete(&self, length: u64, filename: &str, metadata: Document) -> Result<(), StoreError> {
        let now = mongodb::bson::DateTime::now();
        self.files
            .insert_one(doc! {
                "_id": oid(&self.id),
                "length": length as i64,
                "chunkSize": CHUNK_SIZE as i32,
                "uploadDate": now,
                "filename": filename,
                "metadata": metadata,
            })
            .await?;
        Ok(())
    }

    /// Removes the files document a `complete` that is to run again may have written.
    pub async fn uncomplete(&self) -> Result<(), StoreError> {
        self.files.delete_one(doc! {"_id": oid(&self.id)}).await?;
        Ok(())
    }

    /// Removes whatever chunks were inserted.
    pub async fn abort(&self) -> Result<(), StoreError> {
        self.chunks.delete_many(doc! {"files_id": oid(&self.id)}).await?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the output passed the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("the header passed the {limit}-byte limit before any audio was written")]
    HeadTooLarge { limit: u64 },
    #[error("a write went back to byte {pos}, which was already stored")]
    Rewind { pos: u64 },
    #[error("the store stopped taking chunks")]
    Closed,
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> Self {
        let kind = match e {
            WriteError::TooLarge { .. } | WriteError::HeadTooLarge { .. } => io::ErrorKind::FileTooLarge,
            WriteError::Rewind { .. } => io::ErrorKind::Unsupported,
            WriteError::Closed => io::ErrorKind::BrokenPipe,
        };
        io::Error::new(kind, e)
    }
}

/// The blocking side, a `Write + Seek` for FFmpeg's custom I/O. Until `head_written`, every
/// byte is held; after it, chunks past the head are sent once whole and cannot be rewritten.
pub struct ChunkWriter {
    sender: Option<mpsc::Sender<(u64, Bytes)>>,
    /// Chunks not sent yet, by number.
    open: BTreeMap<u64, Vec<u8>>,
    pos: u64,
    len: u64,
    /// Chunks up to this one are the head; `None` while the head is still being written.
    head_last: Option<u64>,
    /// Chunks below this one have been sent.
    sent_below: u64,
    max_bytes: u64,
    max_head: u64,
}

impl ChunkWriter {
    pub fn new(sender: mpsc::Sender<(u64, Bytes)>, max_bytes: u64, max_head: u64) -> Self {
        Self {
            sender: Some(sender),
            open: BTreeMap::new(),
            pos: 0,
            len: 0,
            head_last: None,
            sent_below: 0,
            max_bytes,
            max_head,
        }
    }

    /// Capacity of the channel a `ChunkUpload` should read from.
    pub const CHANNEL: usize = WRITE_AHEAD;

    /// Everything written so far may still be rewritten; what follows is sent as it fills.
    pub fn head_written(&mut self) -> io::Result<()> {
        if self.head_last.is_none() {
            self.head_last = Some(self.len.saturating_sub(1) / CHUNK_SIZE);
            self.send_whole()?;
        }
        Ok(())
    }

    /// Sends every chunk still held (the head, the tail) and closes the channel; returns the
    /// file's length.
    pub fn finish(&mut self) -> io::Result<u64> {
        let open = std::mem::take(&mut self.open);
        for (n, data) in open {
            self.send(n, data)?;
        }
        self.sender = None;
        Ok(self.len)
    }

    fn send(&mut self, n: u64, data: Vec<u8>) -> io::Result<()> {
        let sender = self.sender.as_ref().ok_or(WriteError::Closed)?;
        sender.blocking_send((n, Bytes::from(data))).map_err(|_| WriteError::Closed)?;
        Ok(())
    }

    /// Sends the whole chunks behind the write position that are not part of the head.
    fn send_whole(&mut self) -> io::Result<()> {
        let Some(head_last) = self.head_last else {
            return Ok(());
        };
        let behind = self.pos / CHUNK_SIZE;
        if behind <= head_last + 1 {
            return Ok(());
        }
        let ready: Vec<u64> = self
            .open
            .range(head_last + 1..behind)
            .filter(|(_, data)| data.len() as u64 == CHUNK_SIZE)
            .map(|(n, _)| *n)
            .collect();
        for n in ready {
            if let Some(data) = self.open.remove(&n) {
                self.send(n, data)?;
                self.sent_below = self.sent_below.max(n + 1);
            }
        }
        Ok(())
    }

    fn is_sent(&self, n: u64) -> bool {
        self.head_last.is_some_and(|head| n > head && n < self.sent_below && !self.open.contains_key(&n))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let end = self.pos + buf.len() as u64;
        if end > self.max_bytes {
            return Err(WriteError::TooLarge { limit: self.max_bytes }.into());
        }
        if self.head_last.is_none() && end > self.max_head {
            return Err(WriteError::HeadTooLarge { limit: self.max_head }.into());
        }
        let mut written = 0usize;
        while written < buf.len() {
            let n = self.pos / CHUNK_SIZE;
            if self.is_sent(n) {
                return Err(WriteError::Rewind { pos: self.pos }.into());
            }
            let offset = (self.pos - n * CHUNK_SIZE) as usize;
            let take = (CHUNK_SIZE as usize - offset).min(buf.len() - written);
            let chunk = self.open.entry(n).or_default();
            if chunk.len() < offset {
                // A seek past the end leaves a gap of zeros, as a file would.
                chunk.resize(offset, 0);
            }
            let overlap = (chunk.len() - offset).min(take);
            chunk[offset..offset + overlap].copy_from_slice(&buf[written..written + overlap]);
            chunk.extend_from_slice(&buf[written + overlap..written + take]);
            written += take;
            self.pos += take as u64;
            self.len = self.len.max(self.pos);
        }
        self.send_whole()?;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for ChunkWriter {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let Some(target) = target else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the file"));
        };
        if target < self.len && self.is_sent(target / CHUNK_SIZE) {
            return Err(WriteError::Rewind { pos: target }.into());
        }
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(max_head: u64) -> (ChunkWriter, mpsc::Receiver<(u64, Bytes)>) {
        let (sender, receiver) = mpsc::channel(1024);
        (ChunkWriter::new(sender, u64::MAX, max_head), receiver)
    }

    fn drain(receiver: &mut mpsc::Receiver<(u64, Bytes)>) -> BTreeMap<u64, Bytes> {
        let mut got = BTreeMap::new();
        while let Ok((n, data)) = receiver.try_recv() {
            assert!(got.insert(n, data).is_none(), "chunk {n} sent twice");
        }
        got
    }

    #[test]
    fn the_head_is_rewritable_until_finish_and_the_rest_streams() -> io::Result<()> {
        let (mut w, mut rx) = writer(u64::MAX);
        w.write_all(&[1u8; 100])?;
        w.head_written()?;
        let body = vec![2u8; 3 * CHUNK_SIZE as usize];
        w.write_all(&body)?;
        let streamed = drain(&mut rx);
        // Chunk 0 holds the head; chunks 1 and 2 are whole and behind the write position.
        assert_eq!(streamed.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        w.seek(SeekFrom::Start(10))?;
        w.write_all(&[9u8; 5])?;
        w.seek(SeekFrom::End(0))?;
        w.write_all(&[3u8; 7])?;
        let len = w.finish()?;
        assert_eq!(len, 100 + 3 * CHUNK_SIZE + 7);
        let rest = drain(&mut rx);
        assert_eq!(rest.keys().copied().collect::<Vec<_>>(), vec![0, 3]);
        let mut file = Vec::new();
        for (_, data) in streamed.into_iter().chain(rest).collect::<BTreeMap<_, _>>() {
            file.extend_from_slice(&data);
        }
        let mut expected = vec![1u8; 100];
        expected[10..15].copy_from_slice(&[9u8; 5]);
        expected.extend_from_slice(&body);
        expected.extend_from_slice(&[3u8; 7]);
        assert_eq!(file, expected);
        Ok(())
    }

    #[test]
    fn rewriting_a_sent_chunk_is_refused() -> io::Result<()> {
        let (mut w, _rx) = writer(u64::MAX);
        w.write_all(&[0u8; 10])?;
        w.head_written()?;
        w.write_all(&vec![1u8; 3 * CHUNK_SIZE as usize])?;
        let err = w.seek(SeekFrom::Start(CHUNK_SIZE + 1)).err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::Unsupported));
        Ok(())
    }

    #[test]
    fn a_head_past_its_limit_is_refused() {
        let (mut w, _rx) = writer(1000);
        let err = w.write_all(&[0u8; 1001]).err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::FileTooLarge));
    }
}
