//! What the web app stands on, against the real stack: its files and their headers, the
//! session cookie and its CSRF token on every kind of route, and the live job feed. The app
//! itself, in a real browser, is `e2e/tests/web.rs`.

mod support;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{DEADLINE, Gateway};

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

#[tokio::test]
async fn the_app_is_served_compressed_cached_and_under_a_strict_policy() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let page = g.http.get(g.at("/")).header("accept-encoding", "identity").send().await?;
    assert_eq!(page.status(), 200);
    let csp = header(&page, "content-security-policy").to_owned();
    for directive in ["script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "object-src 'none'"] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let html = page.text().await?;
    assert!(!html.contains("<script>") && !html.contains(" style="), "no inline script or style: {html}");
    let script = html
        .split('"')
        .find(|part| part.starts_with("/assets/") && part.ends_with(".js"))
        .context("index.html loads its script from /assets/")?
        .to_owned();

    // The script: brotli when accepted, immutable, and revalidated by its ETag.
    let js = g.http.get(g.at(&script)).header("accept-encoding", "gzip, br").send().await?;
    assert_eq!(js.status(), 200);
    assert_eq!(header(&js, "content-encoding"), "br");
    assert!(header(&js, "cache-control").contains("immutable"));
    assert!(header(&js, "content-type").starts_with("text/javascript"));
    let etag = header(&js, "etag").to_owned();
    let compressed = js.bytes().await?.len();
    let revalidate = |encodings: &'static str| {
        g.http.get(g.at(&script)).header("accept-encoding", encodings).header("if-none-match", &etag).send()
    };
    assert_eq!(revalidate("gzip, br").await?.status(), 304);
    // Another encoding is another representation: the brotli validator does not stand for it.
    let other = revalidate("identity").await?;
    assert_eq!(other.status(), 200);
    assert_ne!(header(&other, "etag"), etag);
    let gzip = g.http.get(g.at(&script)).header("accept-encoding", "gzip").send().await?;
    assert_eq!(header(&gzip, "content-encoding"), "gzip");
    let gzipped = gzip.bytes().await?.len();
    // The issue's budget for the whole page's JavaScript, compressed.
    assert!(gzipped < 150 * 1024, "the app's JavaScript is {gzipped} bytes gzipped");
    let plain = g.http.get(g.at(&script)).header("accept-encoding", "identity").send().await?;
    assert_eq!(header(&plain, "content-encoding"), "");
    assert!(plain.bytes().await?.len() > compressed, "the compressed form is smaller");

    // Each page of the app is its index; anything else is a JSON 404.
    for path in ["/sign-in", "/search", "/admin", "/d/some.token"] {
        let r = g.http.get(g.at(path)).send().await?;
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.text().await?.contains(&script), "{path}");
    }
    let missing = g.http.get(g.at("/nothing/here")).send().await?;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await?["error"], "not_found");
    // A browser gets the app, which says the page is not there.
    let missing = g.http.get(g.at("/nothing/here")).header("accept", "text/html").send().await?;
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await?.contains(&script));
    g.stop().await
}

/// The cookies a response sets, by name: (value, attributes).
fn cookies(r: &reqwest::Response) -> Vec<(String, String, String)> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (pair, attributes) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=')?;
            Some((name.to_owned(), value.to_owned(), attributes.to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn a_session_cookie_stands_for_the_token_and_changes_need_its_csrf_token() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let user = g.user().await?;
    let wrong =
        g.http.post(g.at("/v1/session")).json(&json!({"email": user.email, "password": "not it"})).send().await?;
    assert_eq!(wrong.status(), 401, "auth's refusal is passed on");
    assert!(cookies(&wrong).is_empty());
    // What another site's page can send: a form (no JSON content type), or JSON with the
    // browser saying it comes from elsewhere. Neither signs the visitor in.
    let credentials = json!({"email": user.email, "password": "correct horse"}).to_string();
    let form = g.http.post(g.at("/v1/session")).header("content-type", "text/plain").body(credentials.clone());
    let cross_site = g
        .http
        .post(g.at("/v1/session"))
        .header("content-type", "application/json")
        .header("sec-fetch-site", "cross-site")
        .body(credentials);
    for (request, status, code) in [(form, 415, "unsupported_media_type"), (cross_site, 403, "cross_site_request")] {
        let r = request.send().await?;
        assert_eq!(r.status(), status);
        assert!(cookies(&r).is_empty(), "no session from a refused sign-in");
        assert_eq!(r.json::<Value>().await?["error"], code);
    }

    let r = g
        .http
        .post(g.at("/v1/session"))
        .json(&json!({"email": user.email, "password": "correct horse"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let set = cookies(&r);
    let body: Value = r.json().await?;
    let (_, session, attributes) = set.iter().find(|c| c.0 == "tunewire_session").context("session cookie")?;
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(attribute), "{attributes}");
    }
    let (_, csrf, csrf_attributes) = set.iter().find(|c| c.0 == "tunewire_csrf").context("csrf cookie")?;
    assert!(!csrf_attributes.contains("HttpOnly"), "the page reads it");
    assert_eq!(body["csrf_token"].as_str(), Some(csrf.as_str()));
    assert!(!body.to_string().contains(session.as_str()), "the token itself is never in the body");
    let cookie = format!("tunewire_session={session}; tunewire_csrf={csrf}");

    // Reads by cookie alone.
    let me = g.http.get(g.at("/v1/me")).header("cookie", &cookie).send().await?;
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await?["email"], user.email.as_str());

    // Changes: refused without the CSRF token, or with another, on each kind of route.
    let id = g.accepted(&user.token, &g.tone("a.wav", 1, 1)?, &[]).await?;
    let delete = |csrf: Option<&str>| {
        let mut request = g.http.delete(g.at(&format!("/v1/jobs/{id}"))).header("cookie", &cookie);
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.send()
    };
    for refused in [delete(None).await?, delete(Some("made-up")).await?] {
        assert_eq!(refused.status(), 403);
        assert_eq!(refused.json::<Value>().await?["error"], "csrf_failed");
    }
    let tone = tokio::fs::read(g.tone("b.wav", 1, 2)?).await?;
    let raw = g.http.post(g.at("/v1/uploads")).header("cookie", &cookie).body(tone.clone()).send().await?;
    assert_eq!(raw.status(), 403, "uploads too");
    let tus_create = |csrf: Option<&str>| {
        let mut request = g
            .http
            .post(g.at("/v1/tus/"))
            .header("cookie", &cookie)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", "10");
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.send()
    };
    assert_eq!(tus_create(None).await?.status(), 403, "resumable uploads too");
    assert_eq!(g.job(&user.token, &id).await?["id"], id.as_str(), "nothing refused was done");

    // With it, they go through.
    assert_eq!(delete(Some(csrf)).await?.status(), 204);
    let raw = g
        .http
        .post(g.at("/v1/uploads"))
        .header("cookie", &cookie)
        .header("x-csrf-token", csrf.as_str())
        .header("x-filename", "b.wav")
        .body(tone)
        .send()
        .await?;
    assert_eq!(raw.status(), 202, "{}", raw.text().await?);
    assert_eq!(tus_create(Some(csrf)).await?.status(), 201);

    // Sign-out removes both cookies.
    let out = g.http.delete(g.at("/v1/session")).header("cookie", &cookie).send().await?;
    assert_eq!(out.status(), 204);
    let removed = cookies(&out);
    for name in ["tunewire_session", "tunewire_csrf"] {
        let (_, value, attributes) = removed.iter().find(|c| c.0 == name).context("cookie removed")?;
        assert!(value.is_empty() && attributes.contains("Max-Age=0"), "{name}: {value} {attributes}");
    }
    g.stop().await
}

/// Reads `job` events off a feed until `wanted` is met, or fails at the deadline with what came.
async fn until_event(
    feed: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
    wanted: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        while let Some(end) = seen.find("\n\n") {
            let block: String = seen.drain(..end + 2).collect();
            let data: String = block.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
            if block.lines().any(|l| l.trim() == "event:job") || block.contains("event: job") {
                let job: Value = serde_json::from_str(&data)?;
                if wanted(&job) {
                    return Ok(job);
                }
            }
            // A deletion is told as `{"deleted": id}` here.
            if block.lines().any(|l| l.trim() == "event:deleted") || block.contains("event: deleted") {
                let gone = serde_json::json!({ "deleted": data });
                if wanted(&gone) {
                    return Ok(gone);
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, feed.next())
            .await
            .with_context(|| format!("no such event before the deadline; the feed sent: {seen}"))?
            .context("the feed ended")??;
        seen.push_str(std::str::from_utf8(&chunk)?);
    }
}

#[tokio::test]
async fn the_job_feed_tells_each_user_of_their_jobs_and_admins_of_all() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let (ann, bob, admin) = (g.user().await?, g.user().await?, g.admin().await?);
    let open = |token: String| {
        let request = g.http.get(g.at("/v1/events")).bearer_auth(token);
        async move {
            let r = request.send().await?;
            anyhow::ensure!(r.status() == 200, "feed: {}", r.status());
            anyhow::Ok(r.bytes_stream())
        }
    };
    let (mut ann_feed, mut bob_feed, mut admin_feed) =
        (open(ann.token.clone()).await?, open(bob.token.clone()).await?, open(admin.clone()).await?);
    let (mut ann_seen, mut bob_seen, mut admin_seen) = (String::new(), String::new(), String::new());
    // The poller starts reading at its first reading after a feed opens.
    tokio::time::sleep(tunewire_gateway::job_events::POLL * 2).await;

    let ann_job = g.accepted(&ann.token, &g.tone("ann.wav", 1, 1)?, &[]).await?;
    let bob_job = g.accepted(&bob.token, &g.tone("bob.wav", 1, 2)?, &[]).await?;
    let is = |id: &str| {
        let id = id.to_owned();
        move |job: &Value| job["id"] == id.as_str()
    };
    let seen = until_event(&mut ann_feed, &mut ann_seen, is(&ann_job)).await?;
    assert_eq!(seen["state"], "queued");
    assert_eq!(seen["owner_email"], ann.email.as_str());
    // Bob's first event is his own job: Ann's, made before it, never reached him.
    let first = until_event(&mut bob_feed, &mut bob_seen, |_| true).await?;
    assert_eq!(first["id"], bob_job.as_str(), "bob's feed showed another user's job: {first}");
    until_event(&mut admin_feed, &mut admin_seen, is(&ann_job)).await?;
    until_event(&mut admin_feed, &mut admin_seen, is(&bob_job)).await?;

    // A deletion reaches the owner's feeds and admins', wherever it was made.
    let r = g.http.delete(g.at(&format!("/v1/jobs/{ann_job}"))).bearer_auth(&ann.token).send().await?;
    assert_eq!(r.status(), 204);
    let gone = |id: &str| {
        let id = id.to_owned();
        move |event: &Value| event["deleted"] == id.as_str()
    };
    until_event(&mut ann_feed, &mut ann_seen, gone(&ann_job)).await?;
    until_event(&mut admin_feed, &mut admin_seen, gone(&ann_job)).await?;

    let unauthenticated = g.http.get(g.at("/v1/events")).send().await?;
    assert_eq!(unauthenticated.status(), 401);
    g.stop().await
}

#[tokio::test]
async fn a_feed_ends_when_its_token_is_revoked() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let user = g.user().await?;
    let r = g.http.get(g.at("/v1/events")).bearer_auth(&user.token).send().await?;
    assert_eq!(r.status(), 200);
    let mut feed = r.bytes_stream();
    let r = g
        .http
        .post(g.at("/v1/auth/password"))
        .bearer_auth(&user.token)
        .json(&json!({"current_password": "correct horse", "new_password": "battery staple"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, feed.next()).await.context("the feed outlived its token")? {
            None => break,
            Some(chunk) => drop(chunk?),
        }
    }
    let reopened = g.http.get(g.at("/v1/events")).bearer_auth(&user.token).send().await?;
    assert_eq!(reopened.status(), 401, "and the old token cannot reopen it");
    g.stop().await
}
