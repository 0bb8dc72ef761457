//! How every loop that tries again waits between attempts: a pause doubling from `first` up
//! to `cap`. The cap bounds how long work waits once what failed is back; each retry costs
//! one failed call.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// Reconnecting to a dependency, retrying a handler in place, waiting for a dependency at
    /// start: 1 s doubling to 10 s.
    pub const DEPENDENCY: Backoff = Backoff { first: Duration::from_secs(1), cap: Duration::from_secs(10) };

    pub const fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap }
    }

    /// The pause before retry `attempt` (0 before the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.first.saturating_mul(1u32 << attempt.min(31)).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let b = Backoff::DEPENDENCY;
        assert_eq!(b.delay(0), Duration::from_secs(1));
        assert_eq!(b.delay(3), Duration::from_secs(8));
        assert_eq!(b.delay(4), Duration::from_secs(10));
        assert_eq!(b.delay(40), Duration::from_secs(10));
        let hours = Backoff::new(Duration::from_secs(60), Duration::from_secs(6 * 3600));
        assert_eq!(hours.delay(2), Duration::from_secs(240));
        assert_eq!(hours.delay(u32::MAX), Duration::from_secs(6 * 3600));
    }
}
