//! Auth read as an attacker would: login and registration limits shared through PostgreSQL,
//! and a burst of anonymous requests against one real auth process.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use serde_json::{Value, json};
use support::{Auth, email};
use tunewire_auth::Config;
use tunewire_auth::hashing::{BASE_MIB, MIB_PER_SLOT};
use tunewire_test_stack::bench::MeasuredService;
use tunewire_test_stack::{Sandbox, eventually};

/// A failed login for a made-up account from `address`.
async fn guess(auth: &Auth, address: &str) -> anyhow::Result<reqwest::Response> {
    auth.post("/login", json!({"email": email(), "password": "guess"}), Some(address)).await
}

fn retry_after(r: &reqwest::Response) -> anyhow::Result<u64> {
    Ok(r.headers().get("retry-after").context("no Retry-After")?.to_str()?.parse()?)
}

#[tokio::test]
async fn an_account_is_blocked_after_its_failures_and_an_address_slowed_not_locked_out() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let mut config = Config::local(sandbox.database_url.clone());
    config.attempt_limits.per_email = 3;
    config.attempt_limits.per_address = 5;
    // Long enough that a loaded machine's slow hash does not outlast it.
    config.attempt_limits.first_delay = Duration::from_secs(4);
    let auth = Auth::start(config).await?;
    let victim = email();
    auth.register(&victim, "correct horse").await?.error_for_status()?;

    for _ in 0..3 {
        assert_eq!(auth.login(&victim, "wrong horse").await?.status(), 401);
    }
    // Blocked now, even with the right password.
    let r = auth.login(&victim, "correct horse").await?;
    assert_eq!(r.status(), 429);
    let wait = retry_after(&r)?;
    assert!((1..=900).contains(&wait), "{wait}");
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "too_many_attempts");
    assert_eq!(body["retry_after_s"], wait);

    // One address guessing many emails is slowed down; another address is not.
    for _ in 0..5 {
        assert_eq!(guess(&auth, "203.0.113.7").await?.status(), 401);
    }
    let r = guess(&auth, "203.0.113.7").await?;
    assert_eq!(r.status(), 429);
    let first = retry_after(&r)?;
    assert!((1..=4).contains(&first), "the first delay beyond the free attempts is 4 s: {first}");
    assert_eq!(guess(&auth, "203.0.113.8").await?.status(), 401);
    // Not a lockout: once the delay is over, the address is heard again.
    eventually("the guessing address is heard again", Duration::from_secs(20), || async {
        Ok((guess(&auth, "203.0.113.7").await?.status() == 401).then_some(()))
    })
    .await?;
    let r = guess(&auth, "203.0.113.7").await?;
    assert_eq!(r.status(), 429);
    let second = retry_after(&r)?;
    assert!((5..=8).contains(&second), "each delay doubles: {second}");
    drop(auth);
    sandbox.cleanup().await
}

#[tokio::test]
async fn spellings_of_one_address_share_its_limit_across_two_replicas() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let mut config = Config::local(sandbox.database_url.clone());
    config.attempt_limits.per_email = 3;
    let replicas = [Auth::start(config.clone()).await?, Auth::start(config).await?];
    let victim = email();
    replicas[0].register(&victim, "correct horse").await?.error_for_status()?;
    let spellings =
        [format!("  {victim}  "), victim.to_uppercase(), format!("\t{}", victim.replace("example", "EXAMPLE"))];
    for (i, spelling) in spellings.iter().enumerate() {
        let r = replicas[i % 2].login(spelling, "wrong horse").await?;
        assert_eq!(r.status(), 401, "{spelling:?}");
    }
    for replica in &replicas {
        let r = replica.login(&victim, "correct horse").await?;
        assert_eq!(r.status(), 429, "both replicas count the same three failures");
    }
    drop(replicas);
    sandbox.cleanup().await
}

#[tokio::test]
async fn a_concurrent_burst_on_one_account_gets_no_more_tries_than_its_limit() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let mut config = Config::local(sandbox.database_url.clone());
    config.attempt_limits.per_email = 3;
    config.hash_queue = 64;
    let auth = Auth::start(config).await?;
    let victim = email();
    auth.register(&victim, "correct horse").await?.error_for_status()?;
    let answers = join_all((0..30).map(|_| auth.login(&victim, "wrong horse"))).await;
    let mut statuses = BTreeMap::new();
    for answer in answers {
        *statuses.entry(answer?.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(401, 3), (429, 27)]));
    drop(auth);
    sandbox.cleanup().await
}

#[tokio::test]
async fn ipv6_clients_count_by_their_64() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let mut config = Config::local(sandbox.database_url.clone());
    config.attempt_limits.per_address = 3;
    let auth = Auth::start(config).await?;
    for address in ["2001:db8:5:6::1", "2001:db8:5:6::2", "2001:db8:5:6:abcd::3"] {
        assert_eq!(guess(&auth, address).await?.status(), 401, "{address}");
    }
    assert_eq!(guess(&auth, "2001:db8:5:6:ffff:ffff:ffff:ffff").await?.status(), 429, "same /64");
    assert_eq!(guess(&auth, "2001:db8:5:7::1").await?.status(), 401, "the next /64 is someone else");
    drop(auth);
    sandbox.cleanup().await
}

#[tokio::test]
async fn registrations_are_limited_per_address() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let mut config = Config::local(sandbox.database_url.clone());
    config.attempt_limits.registrations_per_address = 3;
    let auth = Auth::start(config).await?;
    let register =
        |address| auth.post("/register", json!({"email": email(), "password": "correct horse"}), Some(address));
    for _ in 0..3 {
        assert_eq!(register("198.51.100.1").await?.status(), 201);
    }
    let r = register("198.51.100.1").await?;
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r)? > 3000, "the registration window is an hour");
    assert_eq!(r.json::<Value>().await?["error"], "too_many_attempts");
    assert_eq!(register("198.51.100.2").await?.status(), 201);
    drop(auth);
    sandbox.cleanup().await
}

#[tokio::test]
async fn a_burst_of_anonymous_logins_and_registrations_stays_within_the_memory_bound() -> anyhow::Result<()> {
    const SLOTS: usize = 4;
    let sandbox = Sandbox::create().await?;
    let slots = SLOTS.to_string();
    let env = [("DATABASE_URL", sandbox.database_url.as_str()), ("AUTH_HASH_SLOTS", slots.as_str())];
    let auth = MeasuredService::spawn(env!("CARGO_BIN_EXE_tunewire-auth"), "AUTH_BIND", &env).await?;
    let http = reqwest::Client::new();
    let post = |path: &'static str, body: Value, address: String| {
        let request = http.post(format!("{}{path}", auth.url)).header("x-forwarded-for", address).json(&body);
        async move {
            let r = request.send().await?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.with_context(|| format!("{path}: a {status} without a JSON body"))?;
            anyhow::Ok((status, body))
        }
    };
    let user = email();
    let (status, _) =
        post("/register", json!({"email": user, "password": "correct horse"}), "192.0.2.1".into()).await?;
    assert_eq!(status, 201);

    // Every request from an address of its own, as a botnet's would be: no rate limit
    // helps, only the hashing slots bound the memory.
    let logins = (0..100).map(|i| {
        post("/login", json!({"email": email(), "password": "guess"}), format!("10.1.{}.{}", i / 200, i % 200 + 1))
    });
    let registrations = (0..100).map(|i| {
        post(
            "/register",
            json!({"email": email(), "password": "correct horse"}),
            format!("10.2.{}.{}", i / 200, i % 200 + 1),
        )
    });
    let (logins, registrations) = tokio::join!(join_all(logins), join_all(registrations));
    let mut statuses = BTreeMap::new();
    for (path, answers, expected) in [("login", logins, [401, 503]), ("register", registrations, [201, 503])] {
        for answer in answers {
            let (status, body) = answer?;
            assert!(expected.contains(&status) || status == 429, "{path}: {status} {body}");
            if status >= 400 {
                assert!(body["error"].is_string() && body["message"].is_string(), "{path}: {status} {body}");
            }
            *statuses.entry((path, status)).or_insert(0) += 1;
        }
    }
    let (status, body) =
        post("/login", json!({"email": user, "password": "correct horse"}), "192.0.2.1".into()).await?;
    assert_eq!(status, 200, "{body}");
    let served = statuses.iter().filter(|((_, status), _)| [201, 401].contains(status)).map(|(_, n)| n).sum::<usize>();
    assert!(served >= SLOTS, "the burst was refused whole: {statuses:?}");
    let peak = auth.peak_rss_mib()?;
    let bound = BASE_MIB + SLOTS as u64 * MIB_PER_SLOT;
    println!(
        "auth, {SLOTS} hashing slots, 100 logins + 100 registrations at once: peak RSS {peak} MiB (bound {bound}); answers {statuses:?}"
    );
    assert!(peak < bound, "peak RSS {peak} MiB over the bound of {bound} MiB");
    drop(auth);
    sandbox.cleanup().await
}
