//! Bearer tokens as the gateway checks them: signature by a key from auth's JWKS, the key's
//! own algorithm, expiry, issuer, audience; key rotation; the JWKS refresh and its limit;
//! `/v1/me`; login limits seen through the gateway.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{Gateway, Options, openssl_ed25519};
use tokio::sync::RwLock;
use tunewire_auth::keys::SigningKeys;
use tunewire_test_stack::eventually;

fn claims(sub: &str, aud: &str, iss: &str, exp_in: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": sub, "email": "x@example.com", "role": "user", "iss": iss, "aud": aud, "iat": now, "exp": now + exp_in})
}

fn sign(pem: &str, algorithm: Algorithm, kid: &str, claims: &Value) -> anyhow::Result<String> {
    let key = match algorithm {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes())?,
        _ => EncodingKey::from_rsa_pem(pem.as_bytes())?,
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_string());
    Ok(jsonwebtoken::encode(&header, claims, &key)?)
}

async fn me(g: &Gateway, token: &str) -> anyhow::Result<(u16, Value)> {
    let r = g.http.get(g.at("/v1/me")).bearer_auth(token).send().await?;
    Ok((r.status().as_u16(), r.json().await?))
}

#[tokio::test]
async fn tokens_are_refused_unless_signed_by_a_published_key_for_this_audience_and_alive() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let user = g.user().await?;
    let (status, body) = me(&g, &user.token).await?;
    assert_eq!(status, 200);
    assert_eq!((body["email"].as_str(), body["role"].as_str()), (Some(user.email.as_str()), Some("user")));
    let (_, admin) = me(&g, &g.admin().await?).await?;
    assert_eq!(admin["role"], "admin");

    let kid = SigningKeys::load(Some(&g.signing_pem), None)?.current.kid;
    let good = claims(&user.id, "tunewire", "tunewire-auth", 600);
    assert_eq!(me(&g, &sign(&g.signing_pem, Algorithm::EdDSA, &kid, &good)?).await?.0, 200, "the forge works");

    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "kid": kid})), b64(&good));
    let hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(b"public key as a secret"))?
    };
    let cases = [
        ("alg none", unsigned),
        ("HS256 under an EdDSA kid", hs256),
        ("another key under this kid", sign(&openssl_ed25519()?, Algorithm::EdDSA, &kid, &good)?),
        (
            "expired",
            sign(&g.signing_pem, Algorithm::EdDSA, &kid, &claims(&user.id, "tunewire", "tunewire-auth", -120))?,
        ),
        (
            "another audience",
            sign(&g.signing_pem, Algorithm::EdDSA, &kid, &claims(&user.id, "billing", "tunewire-auth", 600))?,
        ),
        ("another issuer", sign(&g.signing_pem, Algorithm::EdDSA, &kid, &claims(&user.id, "tunewire", "evil", 600))?),
        ("an unknown kid", sign(&g.signing_pem, Algorithm::EdDSA, "no-such-key", &good)?),
        ("garbage", "not.a.token".to_string()),
    ];
    for (what, token) in cases {
        let (status, body) = me(&g, &token).await?;
        assert_eq!(status, 401, "{what}");
        assert_eq!(body["error"], "unauthorized", "{what}");
    }
    let (_, body) =
        me(&g, &sign(&g.signing_pem, Algorithm::EdDSA, &kid, &claims(&user.id, "tunewire", "tunewire-auth", -120))?)
            .await?;
    assert!(body["message"].as_str().is_some_and(|m| m.contains("expired")), "{body}");
    let r = g.http.get(g.at("/v1/me")).send().await?;
    assert_eq!(r.status(), 401);
    g.stop().await
}

#[tokio::test]
async fn after_rotating_to_rs256_tokens_from_the_old_key_still_work() -> anyhow::Result<()> {
    let old = openssl_ed25519()?;
    let out = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()?;
    let new = String::from_utf8(out.stdout)?;
    let (old_for_auth, new_for_auth) = (old.clone(), new.clone());
    let g = Gateway::start_with(Options {
        auth_tweak: Box::new(move |c| {
            c.signing_key_pem = Some(new_for_auth.into());
            c.previous_signing_key_pem = Some(old_for_auth.into());
        }),
        ..Default::default()
    })
    .await?;
    let user = g.user().await?;
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(user.token.split('.').next().context("header")?)?,
    )?;
    assert_eq!(header["alg"], "RS256");
    assert_eq!(me(&g, &user.token).await?.0, 200);
    let old_kid = SigningKeys::load(Some(&old), None)?.current.kid;
    let from_before = sign(&old, Algorithm::EdDSA, &old_kid, &claims(&user.id, "tunewire", "tunewire-auth", 600))?;
    assert_eq!(me(&g, &from_before).await?.0, 200, "a token signed before the rotation");
    g.stop().await
}

/// A JWKS the test controls, counting how often the gateway fetches it; every fetch after
/// the first answers only after `later_fetches_take`.
struct JwksServer {
    published: Arc<RwLock<jsonwebtoken::jwk::JwkSet>>,
    fetches: Arc<AtomicUsize>,
    addr: std::net::SocketAddr,
}

impl JwksServer {
    async fn start(keys: &SigningKeys, later_fetches_take: Duration) -> anyhow::Result<Self> {
        use warp::Filter;
        let published = Arc::new(RwLock::new(keys.jwks.clone()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (published.clone(), fetches.clone());
        let route = warp::path!(".well-known" / "jwks.json").then(move || {
            let (served, counted) = (served.clone(), counted.clone());
            async move {
                if counted.fetch_add(1, Ordering::SeqCst) > 0 {
                    tokio::time::sleep(later_fetches_take).await;
                }
                warp::reply::json(&*served.read().await)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Ok(Self { published, fetches, addr })
    }

    async fn gateway(&self) -> anyhow::Result<Gateway> {
        let addr = self.addr;
        Gateway::start_with(Options {
            tweak: Box::new(move |c| c.auth_url = format!("http://{addr}")),
            ..Default::default()
        })
        .await
    }
}

#[tokio::test]
async fn an_unknown_kid_refreshes_the_jwks_at_most_every_ten_seconds() -> anyhow::Result<()> {
    let (first, second) = (openssl_ed25519()?, openssl_ed25519()?);
    let first_keys = SigningKeys::load(Some(&first), None)?;
    let second_keys = SigningKeys::load(Some(&second), None)?;
    let jwks = JwksServer::start(&first_keys, Duration::ZERO).await?;
    let (published, fetches) = (jwks.published.clone(), jwks.fetches.clone());
    let g = jwks.gateway().await?;
    let sub = uuid::Uuid::new_v4().to_string();
    let token_1 =
        sign(&first, Algorithm::EdDSA, &first_keys.current.kid, &claims(&sub, "tunewire", "tunewire-auth", 600))?;
    let token_2 =
        sign(&second, Algorithm::EdDSA, &second_keys.current.kid, &claims(&sub, "tunewire", "tunewire-auth", 600))?;
    assert_eq!(me(&g, &token_1).await?.0, 200);
    assert_eq!(me(&g, &token_2).await?.0, 401, "not published yet");
    // A flood of unknown kids does not become a flood of fetches.
    for _ in 0..20 {
        assert_eq!(me(&g, &token_2).await?.0, 401);
    }
    assert!(fetches.load(Ordering::SeqCst) <= 2, "{} fetches", fetches.load(Ordering::SeqCst));
    // Auth rotates: the new key is published, and the gateway picks it up on its own.
    published.write().await.keys.extend(second_keys.jwks.keys.clone());
    eventually("the new key is accepted", Duration::from_secs(20), || async {
        Ok((me(&g, &token_2).await?.0 == 200).then_some(()))
    })
    .await?;
    assert_eq!(me(&g, &token_1).await?.0, 200);
    assert!(fetches.load(Ordering::SeqCst) <= 4, "{} fetches", fetches.load(Ordering::SeqCst));
    g.stop().await
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99).div_ceil(100) - 1]
}

/// A valid user's calls, one started every 50 ms whether or not the last one has answered
/// (a call stuck behind another is counted as long as it waits), timed.
async fn timed_calls(g: &Gateway, token: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let start = tokio::time::Instant::now();
    let calls = (0..n).map(|i| {
        let at = start + Duration::from_millis(50) * i as u32;
        async move {
            tokio::time::sleep_until(at).await;
            let started = std::time::Instant::now();
            let (status, _) = me(g, token).await?;
            anyhow::ensure!(status == 200, "a valid token got {status}");
            Ok(started.elapsed())
        }
    });
    futures_util::future::join_all(calls).await.into_iter().collect()
}

#[tokio::test]
async fn a_flood_of_made_up_kids_does_not_slow_a_valid_user() -> anyhow::Result<()> {
    let signer = openssl_ed25519()?;
    let keys = SigningKeys::load(Some(&signer), None)?;
    // Every refetch is slow, as when auth struggles: a fetch must hold up only its own callers.
    let jwks = JwksServer::start(&keys, Duration::from_secs(3)).await?;
    let g = jwks.gateway().await?;
    let sub = uuid::Uuid::new_v4().to_string();
    let valid = sign(&signer, Algorithm::EdDSA, &keys.current.kid, &claims(&sub, "tunewire", "tunewire-auth", 600))?;
    assert_eq!(me(&g, &valid).await?.0, 200, "the first call caches the key");
    let quiet = p99(timed_calls(&g, &valid, 100).await?);

    // 1,000 tokens naming made-up keys over 10 s, 25 at a time every 250 ms.
    let made_up: Vec<String> = (0..1000)
        .map(|_| {
            let kid = uuid::Uuid::new_v4().to_string();
            sign(&signer, Algorithm::EdDSA, &kid, &claims(&sub, "tunewire", "tunewire-auth", 600))
        })
        .collect::<anyhow::Result<_>>()?;
    let flood = async {
        let mut answers = Vec::new();
        for batch in made_up.chunks(25) {
            let calls = batch.iter().map(|token| async { anyhow::Ok(me(&g, token).await?.0) });
            answers.extend(futures_util::future::join_all(calls).await);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        answers
    };
    let flood_started = std::time::Instant::now();
    let (answers, during) = tokio::join!(flood, timed_calls(&g, &valid, 240));
    let flood_took = flood_started.elapsed();
    let during = p99(during?);
    for answer in answers {
        assert!([401, 503].contains(&answer?), "a made-up kid is refused");
    }
    // Below 100 ms a p99 is the noise of a shared 2-core machine running other tests; what a
    // lock held across the fetch does is seconds.
    let floor = Duration::from_millis(100);
    let ratio = during.as_secs_f64() / quiet.max(floor).as_secs_f64();
    println!(
        "valid user's p99: quiet {quiet:?}, during 1,000 made-up kids {during:?}, ratio {ratio:.2} (floor {floor:?}); {} JWKS fetches",
        jwks.fetches.load(Ordering::SeqCst)
    );
    assert!(ratio <= 2.0, "p99 {during:?} during the flood against {quiet:?} quiet");
    // The first fetch, then at most one per 10 s started (and one more already under way).
    let allowed = 2 + (flood_took.as_secs() / 10) as usize + 1;
    assert!(jwks.fetches.load(Ordering::SeqCst) <= allowed, "refetches are limited to one per 10 s");
    g.stop().await
}

#[tokio::test]
async fn after_a_password_change_tokens_from_before_are_refused() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let user = g.user().await?;
    let change = |token: &str, current: &str, new: &str| {
        g.http
            .post(g.at("/v1/auth/password"))
            .bearer_auth(token)
            .json(&json!({"current_password": current, "new_password": new}))
            .send()
    };
    let r = change(&user.token, "wrong horse", "battery staple").await?;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await?["error"], "wrong_password");
    let r = change("not-a-token", "correct horse", "battery staple").await?;
    assert_eq!(r.status(), 401);
    assert_eq!(me(&g, &user.token).await?.0, 200, "a refused change changes nothing");

    let r = change(&user.token, "correct horse", "battery staple").await?;
    assert_eq!(r.status(), 200);
    let fresh = r.json::<Value>().await?["access_token"].as_str().context("a new token")?.to_string();
    let (status, body) = eventually("the old token refused", Duration::from_secs(20), || async {
        let (status, body) = me(&g, &user.token).await?;
        Ok((status == 401).then_some((status, body)))
    })
    .await?;
    assert_eq!(status, 401);
    assert!(body["message"].as_str().is_some_and(|m| m.contains("password was changed")), "{body}");
    assert_eq!(me(&g, &fresh).await?.0, 200, "the token from the change works");
    let r = change(&user.token, "battery staple", "third horse").await?;
    assert_eq!(r.status(), 401, "auth refuses the old token too");
    let r = g
        .http
        .post(g.at("/v1/auth/login"))
        .json(&json!({"email": user.email, "password": "correct horse"}))
        .send()
        .await?;
    assert_eq!(r.status(), 401, "the old password is gone");
    let token = g.login(&user.email, "battery staple").await?;
    assert_eq!(me(&g, &token).await?.0, 200);
    g.stop().await
}

#[tokio::test]
async fn failed_logins_through_the_gateway_end_in_429_with_retry_after() -> anyhow::Result<()> {
    let g =
        Gateway::start_with(Options { auth_tweak: Box::new(|c| c.attempt_limits.per_email = 2), ..Default::default() })
            .await?;
    let user = g.user().await?;
    let wrong = json!({"email": user.email, "password": "wrong horse"});
    for _ in 0..2 {
        let r = g.http.post(g.at("/v1/auth/login")).json(&wrong).send().await?;
        assert_eq!(r.status(), 401);
    }
    let r = g.http.post(g.at("/v1/auth/login")).json(&wrong).send().await?;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(r.json::<Value>().await?["error"], "too_many_attempts");
    let r = g.http.post(g.at("/v1/auth/logout")).json(&wrong).send().await?;
    assert_eq!(r.status(), 404);
    let r = g.http.post(g.at("/v1/auth/login")).body("{not json").send().await?;
    assert_eq!(r.status(), 400);
    g.stop().await
}
