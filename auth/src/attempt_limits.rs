//! Limits on login and registration attempts, kept in PostgreSQL (`auth.attempt_limits`) so
//! every auth replica counts against the same numbers. An attempt is reserved before its
//! password is hashed, in one transaction holding the rows it counts against, so a
//! concurrent burst cannot slip past a limit between the check and the count.
//!
//! - Per email (the parsed address, so case and spaces do not make a new one): `per_email`
//!   failed logins per window, then 429 until the window ends. A successful login clears it.
//! - Per client network (an IPv4 address; an IPv6 /64, which one subscriber usually holds
//!   whole): `per_address` failed logins per window pass at once; from then on each attempt
//!   must wait a delay that doubles from 1 s up to `max_delay` after the one before. One
//!   address guessing passwords is slowed to a crawl, while the people behind the same NAT
//!   wait seconds, not a whole window.
//! - Registrations per client network: `registrations_per_address` per registration window.
//!
//! Written by hand: the well-known limiters (governor) keep counts in one process and count
//! every request, while these must be shared, count only failures, and say when to retry.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tunewire_contract::Email;

/// A limit's row, locked: key, window end, attempts, not before, and the database's clock.
type LimitRow = (String, DateTime<Utc>, i32, DateTime<Utc>, DateTime<Utc>);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_email: u32,
    pub per_address: u32,
    pub window: Duration,
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub registrations_per_address: u32,
    pub registration_window: Duration,
}

/// Why an attempt was refused, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub limit: Limit,
    pub wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Email,
    Address,
    Registrations,
}

/// How one counter behaves.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// `limit` attempts per window, then refused until the window ends.
    Window { limit: u32, window: Duration },
    /// `free` attempts per window at once, then each one a delay after the last, doubling
    /// from `first_delay` up to `max_delay`.
    Slowdown { free: u32, window: Duration, first_delay: Duration, max_delay: Duration },
}

/// One counter's row.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counter {
    window_ends: DateTime<Utc>,
    attempts: i32,
    not_before: DateTime<Utc>,
}

fn chrono(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
}

fn wait_until(then: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (then - now).to_std().unwrap_or_default()
}

impl Rule {
    /// The counter after one more attempt, or how long the attempt must wait.
    fn admit(self, counter: Counter, now: DateTime<Utc>) -> Result<Counter, Duration> {
        let window = match self {
            Rule::Window { window, .. } | Rule::Slowdown { window, .. } => window,
        };
        let mut next = if counter.window_ends <= now {
            Counter { window_ends: now + chrono(window), attempts: 0, not_before: counter.not_before }
        } else {
            counter
        };
        match self {
            Rule::Window { limit, .. } => {
                if next.attempts >= limit as i32 {
                    return Err(wait_until(next.window_ends, now));
                }
                next.attempts += 1;
            }
            Rule::Slowdown { free, first_delay, max_delay, .. } => {
                if next.not_before > now {
                    return Err(wait_until(next.not_before, now));
                }
                next.attempts += 1;
                if let Some(beyond) = (next.attempts as u32).checked_sub(free) {
                    let delay = first_delay.saturating_mul(1 << beyond.min(20)).min(max_delay);
                    next.not_before = now + chrono(delay);
                }
            }
        }
        Ok(next)
    }
}

/// The key a client's address counts under: IPv4 as is, IPv6 by its /64.
pub fn network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

/// An admitted login attempt: settle it with [`AttemptLimits::succeeded`] or leave it
/// counted as a failure.
pub struct LoginAttempt {
    email_key: Option<String>,
    address_key: Option<String>,
}

pub struct AttemptLimits {
    db: PgPool,
    limits: Limits,
}

impl AttemptLimits {
    pub fn new(db: PgPool, limits: Limits) -> Self {
        Self { db, limits }
    }

    fn login_rules(&self) -> (Rule, Rule) {
        let l = self.limits;
        (
            Rule::Window { limit: l.per_email, window: l.window },
            Rule::Slowdown {
                free: l.per_address,
                window: l.window,
                first_delay: l.first_delay,
                max_delay: l.max_delay,
            },
        )
    }

    /// Reserves a login attempt by `email` from `client`. An address that does not parse
    /// (`None`) names no account, so it counts against its client only.
    pub async fn begin_login(
        &self,
        email: Option<&Email>,
        client: Option<IpAddr>,
    ) -> Result<Result<LoginAttempt, Refused>, sqlx::Error> {
        let (per_email, per_address) = self.login_rules();
        let email_key = email.map(|email| format!("login-email:{email}"));
        let address_key = client.map(|ip| format!("login-address:{}", network(ip)));
        let counters = [email_key.clone().map(|key| (key, per_email, Limit::Email))]
            .into_iter()
            .chain([address_key.clone().map(|key| (key, per_address, Limit::Address))])
            .flatten()
            .collect();
        Ok(self.reserve(counters).await?.map(|()| LoginAttempt { email_key, address_key }))
    }

    /// The attempt was right: the email's failures are forgotten, and the attempt is no
    /// longer counted against its network.
    pub async fn succeeded(&self, attempt: LoginAttempt) -> Result<(), sqlx::Error> {
        // Rows in key order (`login-address:` before `login-email:`), as `reserve` locks them,
        // and none deleted, so a reservation waiting on them still finds them.
        let mut tx = self.db.begin().await?;
        if let Some(key) = &attempt.address_key {
            sqlx::query("UPDATE auth.attempt_limits SET attempts = GREATEST(attempts - 1, 0) WHERE key = $1")
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(key) = &attempt.email_key {
            sqlx::query("UPDATE auth.attempt_limits SET attempts = 0 WHERE key = $1")
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Reserves a registration from `client`.
    pub async fn begin_registration(&self, client: Option<IpAddr>) -> Result<Result<(), Refused>, sqlx::Error> {
        let Some(ip) = client else { return Ok(Ok(())) };
        let rule =
            Rule::Window { limit: self.limits.registrations_per_address, window: self.limits.registration_window };
        self.reserve(vec![(format!("register-address:{}", network(ip)), rule, Limit::Registrations)]).await
    }

    /// Counts one attempt on every counter, or on none if any refuses it.
    async fn reserve(&self, mut counters: Vec<(String, Rule, Limit)>) -> Result<Result<(), Refused>, sqlx::Error> {
        // Rows are locked in key order, so two reservations never wait on each other in a cycle.
        counters.sort_by(|a, b| a.0.cmp(&b.0));
        // A row pruned between the insert and the lock is missing: try again (prune only
        // takes rows whose window and delay are over, so the second try finds them).
        for _ in 0..3 {
            if let Some(outcome) = self.try_reserve(&counters).await? {
                return Ok(outcome);
            }
        }
        Err(sqlx::Error::RowNotFound)
    }

    /// `None` when a counter's row vanished before it could be locked.
    async fn try_reserve(
        &self,
        counters: &[(String, Rule, Limit)],
    ) -> Result<Option<Result<(), Refused>>, sqlx::Error> {
        if counters.is_empty() {
            return Ok(Some(Ok(())));
        }
        let keys: Vec<&str> = counters.iter().map(|(k, ..)| k.as_str()).collect();
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT INTO auth.attempt_limits (key) SELECT unnest($1::text[]) ON CONFLICT (key) DO NOTHING")
            .bind(&keys)
            .execute(&mut *tx)
            .await?;
        let rows: Vec<LimitRow> = sqlx::query_as(
            "SELECT key, window_ends, attempts, not_before, clock_timestamp() FROM auth.attempt_limits
             WHERE key = ANY($1) ORDER BY key FOR UPDATE",
        )
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        if rows.len() != keys.len() {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut refused: Option<Refused> = None;
        let mut updated = Vec::with_capacity(rows.len());
        for (key, window_ends, attempts, not_before, now) in rows {
            let Some((_, rule, limit)) = counters.iter().find(|(k, ..)| *k == key) else { continue };
            match rule.admit(Counter { window_ends, attempts, not_before }, now) {
                Ok(next) => updated.push((key, next)),
                Err(wait) => {
                    if refused.is_none_or(|r| r.wait < wait) {
                        refused = Some(Refused { limit: *limit, wait });
                    }
                }
            }
        }
        if let Some(refused) = refused {
            tx.rollback().await?;
            return Ok(Some(Err(refused)));
        }
        for (key, next) in updated {
            sqlx::query(
                "UPDATE auth.attempt_limits SET window_ends = $2, attempts = $3, not_before = $4 WHERE key = $1",
            )
            .bind(key)
            .bind(next.window_ends)
            .bind(next.attempts)
            .bind(next.not_before)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(Ok(())))
    }

    /// Drops counters whose window and delay are both over, so the table holds only the
    /// callers of the last window.
    pub async fn prune(&self) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM auth.attempt_limits WHERE window_ends < now() AND not_before < now()")
            .execute(&self.db)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn fresh() -> Counter {
        Counter { window_ends: DateTime::<Utc>::MIN_UTC, attempts: 0, not_before: DateTime::<Utc>::MIN_UTC }
    }

    fn secs(s: i64) -> chrono::TimeDelta {
        chrono::TimeDelta::seconds(s)
    }

    #[test]
    fn a_window_refuses_beyond_its_limit_until_it_ends() {
        let rule = Rule::Window { limit: 3, window: Duration::from_secs(60) };
        let mut c = fresh();
        for _ in 0..3 {
            c = rule.admit(c, t0()).unwrap_or(c);
        }
        assert_eq!(rule.admit(c, t0() + secs(10)), Err(Duration::from_secs(50)));
        assert_eq!(rule.admit(c, t0() + secs(60)).map(|n| n.attempts), Ok(1));
    }

    #[test]
    fn a_slowdown_lets_the_free_attempts_through_then_doubles_the_wait() {
        let rule = Rule::Slowdown {
            free: 3,
            window: Duration::from_secs(900),
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
        };
        let mut c = fresh();
        let mut now = t0();
        for _ in 0..2 {
            c = rule.admit(c, now).unwrap_or(c);
            assert_eq!(c.not_before, DateTime::<Utc>::MIN_UTC);
        }
        let mut waits = vec![];
        for _ in 0..5 {
            c = rule.admit(c, now).unwrap_or(c);
            let wait = wait_until(c.not_before, now);
            assert_eq!(rule.admit(c, now), Err(wait), "the next attempt must wait");
            waits.push(wait.as_secs());
            now = c.not_before;
        }
        assert_eq!(waits, [1, 2, 4, 8, 8]);
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(network(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(network(ip("2001:db8:1:2:ffff:1:2:3")), network(ip("2001:db8:1:2::9")));
        assert_ne!(network(ip("2001:db8:1:3::1")), network(ip("2001:db8:1:2::1")));
        assert_eq!(network(ip("::ffff:203.0.113.7")), "203.0.113.7");
        assert_eq!(network(ip("203.0.113.7")), "203.0.113.7");
    }
}
