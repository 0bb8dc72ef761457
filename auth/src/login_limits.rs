//! Failed-login limits per email and per client address, in fixed windows. A blocked caller
//! gets 429 with `Retry-After`; a successful login clears its email's count.
//!
//! Written by hand: the well-known limiters (governor) count every request, while this must
//! count only failures and answer "blocked until when" before the password is checked.
//! The counts live in this process; with several auth replicas each keeps its own, so the
//! effective limit is the per-replica limit times the replica count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_email: u32,
    pub per_address: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Email(String),
    Address(IpAddr),
}

struct Window {
    failures: u32,
    started: Instant,
}

/// Beyond this many tracked keys, expired windows are dropped before a new one is added,
/// so memory stays bounded by the number of callers failing within one window.
const PRUNE_ABOVE: usize = 10_000;

pub struct LoginLimits {
    limits: Limits,
    windows: Mutex<HashMap<Key, Window>>,
}

impl LoginLimits {
    pub fn new(limits: Limits) -> Self {
        Self { limits, windows: Mutex::new(HashMap::new()) }
    }

    fn keys(email: &str, address: Option<IpAddr>) -> impl Iterator<Item = Key> {
        [Some(Key::Email(email.to_ascii_lowercase())), address.map(Key::Address)].into_iter().flatten()
    }

    fn limit(&self, key: &Key) -> u32 {
        match key {
            Key::Email(_) => self.limits.per_email,
            Key::Address(_) => self.limits.per_address,
        }
    }

    /// How long the caller must wait, if either its email or its address is blocked.
    pub fn blocked_for(&self, email: &str, address: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Self::keys(email, address)
            .filter_map(|key| {
                let window = windows.get(&key)?;
                let ends = window.started + self.limits.window;
                (window.failures >= self.limit(&key) && ends > now).then(|| ends - now)
            })
            .max()
    }

    pub fn record_failure(&self, email: &str, address: Option<IpAddr>, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if windows.len() > PRUNE_ABOVE {
            let span = self.limits.window;
            windows.retain(|_, w| w.started + span > now);
        }
        for key in Self::keys(email, address) {
            let window = windows.entry(key).or_insert(Window { failures: 0, started: now });
            if window.started + self.limits.window <= now {
                *window = Window { failures: 0, started: now };
            }
            window.failures += 1;
        }
    }

    pub fn record_success(&self, email: &str) {
        let mut windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        windows.remove(&Key::Email(email.to_ascii_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits::new(Limits { per_email: 3, per_address: 5, window: Duration::from_secs(60) })
    }

    #[test]
    fn an_email_is_blocked_after_its_limit_until_the_window_ends() {
        let l = limits();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.blocked_for("a@x.test", None, t0), None);
            l.record_failure("a@x.test", None, t0);
        }
        assert_eq!(l.blocked_for("A@x.test", None, t0 + Duration::from_secs(10)), Some(Duration::from_secs(50)));
        assert_eq!(l.blocked_for("b@x.test", None, t0), None);
        assert_eq!(l.blocked_for("a@x.test", None, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn an_address_is_blocked_across_emails() {
        let l = limits();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        for i in 0..5 {
            l.record_failure(&format!("u{i}@x.test"), Some(ip), t0);
        }
        assert!(l.blocked_for("new@x.test", Some(ip), t0).is_some());
        assert!(l.blocked_for("new@x.test", Some([10, 0, 0, 2].into()), t0).is_none());
    }

    #[test]
    fn success_clears_the_email_count() {
        let l = limits();
        let t0 = Instant::now();
        for _ in 0..2 {
            l.record_failure("a@x.test", None, t0);
        }
        l.record_success("a@x.test");
        l.record_failure("a@x.test", None, t0);
        l.record_failure("a@x.test", None, t0);
        assert_eq!(l.blocked_for("a@x.test", None, t0), None);
    }
}
