//! Reading a refused upload's body before answering, bounded in bytes and time.

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use warp::multipart::FormData;

/// Refused uploads whose bodies are being read at once; beyond, a refusal is answered at
/// once (a client sending its body first may then see a reset instead).
pub const DRAINS_AT_ONCE: usize = 32;

/// What is read of a refused upload before answering: a client still sending when the
/// connection closes sees a reset instead of our 4xx (Python's urllib sends the whole body
/// before it reads a byte of the answer). Read and dropped, so it costs time and bandwidth,
/// never memory; a client sending more than this should send `Expect: 100-continue` (curl
/// does above 1 MiB).
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and drops what `sizes` measures, up to `DRAIN_BYTES` or `DRAIN_TIME`.
async fn drain_sizes(sizes: impl Stream<Item = usize>) {
    let drained = async {
        let mut sizes = std::pin::pin!(sizes);
        let mut left = DRAIN_BYTES;
        while let Some(size) = sizes.next().await {
            left = left.saturating_sub(size);
            if left == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drained).await;
}

/// Until the first error: a broken body has nothing more to read.
fn until_error<T, E>(item: &Result<T, E>) -> std::future::Ready<bool> {
    std::future::ready(item.is_ok())
}

pub(super) async fn drain(form: FormData) {
    let parts = form.take_while(until_error).filter_map(|part| std::future::ready(part.ok()));
    let sizes = parts.flat_map(|part| {
        part.stream().take_while(until_error).filter_map(|chunk| std::future::ready(chunk.ok().map(|c| c.remaining())))
    });
    drain_sizes(sizes).await;
}

pub(super) async fn drain_raw<S>(body: S)
where
    S: Stream<Item = Result<Bytes, String>> + Unpin,
{
    drain_sizes(body.take_while(until_error).filter_map(|chunk| std::future::ready(chunk.ok().map(|c| c.len())))).await;
}
