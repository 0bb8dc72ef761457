//! One PATCH's body into the upload's file: whole GridFS chunks inserted as they fill (the
//! previous PATCH's tail first), the rest kept as the new tail; what is durably stored is
//! recorded every `CHECKPOINT_EVERY` bytes and at the end, so a cut connection or a dead
//! gateway loses at most what was not yet recorded, and `Upload-Offset` never runs ahead of
//! the store. Memory: the chunk filling, `WRITE_AHEAD` on their way, whatever the length.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use sha2::Sha256;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tunewire_media_store::{CHUNK_SIZE, ChunkUpload, StoreError};
use uuid::Uuid;

use super::checksum::Checksum;
use super::record::{self, LeaseError, Progress};

const WRITE_AHEAD: usize = 4;
/// Chunks sent in one insert when several are waiting.
const INSERT_BATCH: usize = 4;
/// Without a checksum to verify first, progress is recorded this often.
const CHECKPOINT_EVERY: u64 = 8 << 20;

/// What is stored of an upload: `received` bytes, the last `tail.len()` of them in `tail`,
/// the others in whole chunks hashed into `hasher`.
pub struct Stored {
    pub received: u64,
    pub tail: BytesMut,
    pub hasher: Sha256,
}

impl Stored {
    pub fn restore(received: u64, tail: &[u8], sha256_state: &[u8]) -> Option<Self> {
        let state = SerializedState::<Sha256>::try_from(sha256_state).ok()?;
        let hasher = Sha256::deserialize(&state).ok()?;
        Some(Self { received, tail: BytesMut::from(tail), hasher })
    }

    pub fn state_of(hasher: &Sha256) -> Vec<u8> {
        hasher.serialize().to_vec()
    }

    /// The first chunk the next byte goes into.
    fn next_chunk(&self) -> u64 {
        (self.received - self.tail.len() as u64) / CHUNK_SIZE
    }
}

pub struct Patch<'a> {
    pub db: &'a PgPool,
    pub id: Uuid,
    pub lease: Uuid,
    pub chunks: &'a ChunkUpload,
    /// The upload expires this long after its last PATCH.
    pub ttl: Duration,
}

/// How the body ended.
pub enum Ended {
    Whole,
    /// The client's connection failed (or it stalled) mid-body.
    Cut(String),
    /// It carried more than the upload's length; the bytes past it were not kept.
    TooLong,
    /// Its checksum did not match; none of it was kept.
    Mismatch,
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Stores `body` after `start` (at most `room` bytes) and records the result. With a
/// `checksum`, nothing is recorded until the whole body matched it.
pub async fn receive<S>(
    patch: &Patch<'_>,
    start: Stored,
    body: S,
    room: u64,
    checksum: Option<Checksum>,
) -> Result<(Stored, Ended), PatchError>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin + Send,
{
    let first_chunk = start.next_chunk();
    // A PATCH cut off by a dead gateway may have stored chunks past what it recorded.
    patch.chunks.discard_from(first_chunk).await?;
    let checkpoints = checksum.is_none();
    let before = (start.received, start.tail.clone(), start.hasher.clone());
    let (to_write, mut incoming) = mpsc::channel::<(u64, Bytes)>(WRITE_AHEAD);
    let aligned = start.received - start.tail.len() as u64;
    let mut buffer = start.tail;
    buffer.reserve(CHUNK_SIZE as usize);
    let read = async {
        let (mut body, mut checksum, to_write) = (body, checksum, to_write);
        let (mut taken, mut next_chunk) = (0u64, first_chunk);
        let ended = 'body: loop {
            let piece = match body.next().await {
                None => break Ended::Whole,
                Some(Err(reason)) => break Ended::Cut(reason),
                Some(Ok(piece)) => piece,
            };
            let fits = (piece.len() as u64).min(room - taken) as usize;
            let too_long = fits < piece.len();
            let piece = &piece[..fits];
            taken += fits as u64;
            if let Some(checksum) = &mut checksum {
                checksum.update(piece);
            }
            buffer.extend_from_slice(piece);
            while buffer.len() as u64 >= CHUNK_SIZE {
                let chunk = buffer.split_to(CHUNK_SIZE as usize).freeze();
                if to_write.send((next_chunk, chunk)).await.is_err() {
                    // The writer failed; its error is the one reported. Nothing more is read.
                    break 'body Ended::Cut("the store failed".into());
                }
                next_chunk += 1;
            }
            if too_long {
                break Ended::TooLong;
            }
        };
        // A body checked by its digest is kept whole or not at all: cut short, or longer
        // than the upload (the digest covers bytes not taken), it cannot match.
        let ended = match (ended, checksum) {
            (Ended::Whole, Some(checksum)) if !checksum.matches() => Ended::Mismatch,
            (Ended::Cut(_) | Ended::TooLong, Some(_)) => Ended::Mismatch,
            (ended, _) => ended,
        };
        (ended, taken)
    };
    let write = async {
        let (mut hasher, mut stored, mut recorded) = (before.2.clone(), aligned, aligned);
        // The claim just took the lease.
        let mut renewed = Instant::now();
        let mut batch = Vec::with_capacity(INSERT_BATCH);
        while let Some(first) = incoming.recv().await {
            batch.push(first);
            while batch.len() < INSERT_BATCH {
                match incoming.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            for (_, chunk) in &batch {
                sha2::Digest::update(&mut hasher, chunk);
            }
            // Only the lease's holder writes: a lease renewed moments ago cannot have been
            // taken; an older one is renewed first, so a PATCH whose lease ran out stops here.
            if renewed.elapsed() > record::LEASE / 5 {
                record::renew(patch.db, patch.id, patch.lease).await?;
                renewed = Instant::now();
            }
            patch.chunks.insert(&batch).await?;
            stored += batch.len() as u64 * CHUNK_SIZE;
            batch.clear();
            if checkpoints && stored - recorded >= CHECKPOINT_EVERY {
                let state = Stored::state_of(&hasher);
                let progress = Progress { received: stored, tail: &[], sha256_state: &state };
                record::checkpoint(patch.db, patch.id, patch.lease, progress, patch.ttl).await?;
                (recorded, renewed) = (stored, Instant::now());
            }
        }
        Ok::<_, PatchError>(hasher)
    };
    let ((ended, taken), written) = tokio::select! {
        done = futures_util::future::join(read, write) => done,
        lost = record::keep(patch.db, patch.id, patch.lease) => return Err(PatchError::Lease(lost)),
    };
    let hasher = written?;
    if matches!(ended, Ended::Mismatch) {
        record::renew(patch.db, patch.id, patch.lease).await?;
        patch.chunks.discard_from(first_chunk).await?;
        let (received, tail, hasher) = before;
        return Ok((Stored { received, tail, hasher }, ended));
    }
    let state = Stored::state_of(&hasher);
    let received = before.0 + taken;
    let progress = Progress { received, tail: &buffer, sha256_state: &state };
    record::checkpoint(patch.db, patch.id, patch.lease, progress, patch.ttl).await?;
    Ok((Stored { received, tail: buffer, hasher }, ended))
}
