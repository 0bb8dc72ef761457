//! Where password hashes run. Each argon2id hash allocates 19 MiB, so hashes are what bounds
//! auth's memory: `slots` threads of their own run them, `queue` more requests may wait for
//! one, and beyond that a request is refused at once (503 with `Retry-After`) rather than
//! piling up.
//!
//! glibc's allocator, after the first 19 MiB block is freed, raises its mmap threshold above
//! it and serves every later one from its heaps, which it then fails to give back: measured,
//! auth grew by 19 MiB per sequential login (212 MiB after ten) and to 744 MiB after a burst
//! of 200 through 4 slots. A fixed threshold keeps such blocks mapped on their own and
//! unmapped when freed (94 MiB peak for the same burst). A fixed set of threads, rather than
//! tokio's blocking pool, keeps the number of threads (and allocator arenas) at `slots`.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, mpsc};

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::oneshot;
use tunewire_service_runtime::admission::{Admission, Busy, Ticket};

/// Memory one hash holds (argon2id at m = 19 MiB), plus its thread's stack and allocator slack.
pub const MIB_PER_SLOT: u64 = 24;
/// What auth needs besides hashes: runtime, connection pool, buffers.
pub const BASE_MIB: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the hashing thread stopped before answering")]
pub struct Lost;

type Job = Box<dyn FnOnce() + Send>;

pub struct Hashing {
    admission: Admission,
    jobs: mpsc::Sender<Job>,
    duration: Histogram,
}

/// Allocations this large or larger are mapped on their own and given back when freed.
const MMAP_THRESHOLD: usize = 1024 * 1024;

fn give_large_blocks_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes the allocator's tuning; any value is valid here.
        ONCE.call_once(|| unsafe {
            if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) != 1 {
                tracing::warn!("mallopt(M_MMAP_THRESHOLD) refused: hashes may leave memory behind");
            }
        });
    }
}

impl Hashing {
    /// Starts `slots` hashing threads; they stop when this is dropped.
    pub fn new(slots: usize, queue: usize, duration: Histogram) -> Self {
        give_large_blocks_back();
        let slots = slots.max(1);
        let (jobs, waiting) = mpsc::channel::<Job>();
        let waiting = Arc::new(Mutex::new(waiting));
        for n in 0..slots {
            let waiting = waiting.clone();
            let spawned = std::thread::Builder::new().name(format!("hashing-{n}")).spawn(move || {
                loop {
                    let job = match waiting.lock() {
                        Ok(receiver) => receiver.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    // A panic drops the job's answer channel (the caller sees `Lost`); the
                    // thread carries on with the next.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "a hashing thread could not start");
            }
        }
        Self { admission: Admission::new(slots, queue), jobs, duration }
    }

    /// A place in the queue, or [`Busy`] at once when there is none: taken before anything
    /// else is spent on the request.
    pub fn admit(&self) -> Result<Admitted, Busy> {
        Ok(Admitted { ticket: self.admission.admit()?, jobs: self.jobs.clone(), duration: self.duration.clone() })
    }
}

pub struct Admitted {
    ticket: Ticket,
    jobs: mpsc::Sender<Job>,
    duration: Histogram,
}

impl Admitted {
    /// Runs `f` (CPU-bound) on a hashing thread once one is free. The place is held by the
    /// job, not by the caller: a request dropped while its hash waits or runs (the client hung
    /// up) still holds its place until the hash is done or skipped, so hanging up cannot
    /// queue hashes past the bound.
    pub async fn run<T: Send + 'static>(self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Lost> {
        let slot = self.ticket.slot().await;
        let (answer, answered) = oneshot::channel();
        // The hash stays in the request's span (its trace) on the hashing thread.
        let (span, duration) = (tracing::Span::current(), self.duration);
        self.jobs
            .send(Box::new(move || {
                let _entered = span.enter();
                let started = std::time::Instant::now();
                let outcome = (!answer.is_closed()).then(|| std::panic::catch_unwind(AssertUnwindSafe(f)));
                if outcome.is_some() {
                    duration.observe(started.elapsed().as_secs_f64());
                }
                // The place is free before the caller hears back, so its next request finds it.
                drop(slot);
                match outcome {
                    Some(Ok(value)) => {
                        let _ = answer.send(value);
                    }
                    Some(Err(panic)) => {
                        drop(answer);
                        std::panic::resume_unwind(panic);
                    }
                    None => {}
                }
            }))
            .map_err(|_| Lost)?;
        answered.await.map_err(|_| Lost)
    }
}

/// How many hashes fit in `limit_mib` of memory beside auth's own needs, at least one.
pub fn slots_for_memory(limit_mib: u64) -> usize {
    (limit_mib.saturating_sub(BASE_MIB) / MIB_PER_SLOT).max(1) as usize
}

/// This process's memory limit from cgroup v2 (`memory.max`), in MiB; `None` when unlimited
/// or not in a cgroup.
pub fn cgroup_memory_limit_mib() -> Option<u64> {
    let raw = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    raw.trim().parse::<u64>().ok().map(|bytes| bytes / (1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_memory_limit() {
        assert_eq!(slots_for_memory(256), 8);
        assert_eq!(slots_for_memory(100), 1);
        assert_eq!(slots_for_memory(16), 1);
    }

    #[tokio::test]
    async fn a_hash_that_panics_is_lost_and_its_thread_carries_on() {
        let hashing = Hashing::new(1, 0, Histogram::new([1.0].into_iter()));
        let panicked = hashing.admit().expect("a free place").run(|| -> bool { panic!("inside the hash") });
        assert_eq!(panicked.await, Err(Lost));
        let next = hashing.admit().expect("a free place").run(|| true);
        assert_eq!(next.await, Ok(true));
    }
}
