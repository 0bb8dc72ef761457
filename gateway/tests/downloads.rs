//! Downloads against the real stack: what browsers and players rely on (ranges, validators,
//! HEAD, names), read back byte for byte from GridFS; signed links; who may download.

mod support;

use anyhow::Context;
use serde_json::Value;
use support::{Gateway, Options};
use tunewire_contract::FileId;
use tunewire_media_store::Bucket;
use tunewire_signed_links::{LinkClaims, LinkSigner};

/// A converted MP3 larger than one GridFS chunk (255 KiB): (owner, file id, its bytes).
async fn converted(g: &Gateway) -> anyhow::Result<(support::User, String, Vec<u8>)> {
    let user = g.user().await?;
    let tone = g.tone("Café déjà vu.wav", 20, 1)?;
    let id = g.accepted(&user.token, &tone, &[("preset", "cbr320")]).await?;
    let job = g.wait_for_state(&user.token, &id, "converted").await?;
    let file_id = job["output"]["file_id"].as_str().context("file id")?.to_string();
    let mut bytes = Vec::new();
    let path = g.scratch.join("expected.mp3");
    g.store.download_to(Bucket::Audio, &file_id.parse::<FileId>()?, &path).await?;
    bytes.extend(tokio::fs::read(&path).await?);
    assert!(bytes.len() > 600 * 1024, "the MP3 spans several chunks ({} bytes)", bytes.len());
    Ok((user, file_id, bytes))
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn downloads_honour_range_etag_head_and_name_the_file_after_the_original() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options { converter: true, ..Default::default() }).await?;
    let (user, file_id, mp3) = converted(&g).await?;
    let len = mp3.len();
    let url = g.at(&format!("/v1/files/{file_id}"));
    let get = |range: Option<&str>| {
        let mut request = g.http.get(&url).bearer_auth(&user.token);
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send()
    };

    let whole = get(None).await?;
    assert_eq!(whole.status(), 200);
    assert_eq!(header(&whole, "content-type"), Some("audio/mpeg"));
    assert_eq!(header(&whole, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&whole, "content-length"), Some(len.to_string().as_str()));
    let disposition = header(&whole, "content-disposition").context("content-disposition")?.to_string();
    assert!(disposition.contains("filename=\"Caf_ d_j_ vu.mp3\""), "{disposition}");
    assert!(disposition.contains("filename*=UTF-8''Caf%C3%A9%20d%C3%A9j%C3%A0%20vu.mp3"), "{disposition}");
    let etag = header(&whole, "etag").context("etag")?.to_string();
    assert_eq!(whole.bytes().await?.as_ref(), mp3.as_slice());

    // Ranges inside one chunk, across chunk boundaries, open-ended and suffix.
    let chunk = 255 * 1024;
    for (range, start, end) in [
        ("bytes=0-99".to_string(), 0, 99),
        (format!("bytes={}-{}", chunk - 10, chunk + 10), chunk - 10, chunk + 10),
        (format!("bytes={}-{}", 100, 2 * chunk + 5), 100, 2 * chunk + 5),
        (format!("bytes={}-", len - 1000), len - 1000, len - 1),
        ("bytes=-500".to_string(), len - 500, len - 1),
        (format!("bytes=10-{}", len * 2), 10, len - 1),
    ] {
        let r = get(Some(&range)).await?;
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(header(&r, "content-range"), Some(format!("bytes {start}-{end}/{len}").as_str()), "{range}");
        assert_eq!(header(&r, "content-length"), Some((end - start + 1).to_string().as_str()), "{range}");
        assert_eq!(r.bytes().await?.as_ref(), &mp3[start..=end], "{range}");
    }
    let r = get(Some(&format!("bytes={len}-"))).await?;
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), Some(format!("bytes */{len}").as_str()));
    assert_eq!(r.json::<Value>().await?["error"], "range_not_satisfiable");

    let r = g.http.get(&url).bearer_auth(&user.token).header("if-none-match", &etag).send().await?;
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await?.is_empty());
    let r = g.http.get(&url).bearer_auth(&user.token).header("if-none-match", "\"other\"").send().await?;
    assert_eq!(r.status(), 200);

    let r = g.http.head(&url).bearer_auth(&user.token).send().await?;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), Some(len.to_string().as_str()));
    assert_eq!(header(&r, "etag"), Some(etag.as_str()));
    assert!(r.bytes().await?.is_empty());
    g.stop().await
}

#[tokio::test]
async fn signed_links_work_without_login_and_say_why_when_refused() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options { converter: true, ..Default::default() }).await?;
    let (user, file_id, mp3) = converted(&g).await?;
    let signer = LinkSigner::new(g.link_secret.clone().into_bytes(), None);
    let (file, owner): (FileId, tunewire_contract::UserId) = (file_id.parse()?, user.id.parse()?);
    let claims = |exp| -> anyhow::Result<LinkClaims> { Ok(LinkClaims { file_id: file.clone(), owner, exp }) };
    let now = chrono::Utc::now().timestamp();
    let good = signer.sign(&claims(now + 3600)?);

    let r = g.http.get(g.at(&format!("/v1/downloads/{good}"))).header("range", "bytes=0-9").send().await?;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await?.as_ref(), &mp3[..10]);
    let r = g.http.head(g.at(&format!("/v1/downloads/{good}"))).send().await?;
    assert_eq!(r.status(), 200);

    let expired = signer.sign(&claims(now - 10)?);
    let r = g.http.get(g.at(&format!("/v1/downloads/{expired}"))).send().await?;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "link_expired");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("expired")), "{body}");

    // The signature's first character: it carries six whole bits, so any other letter still
    // decodes (the last one's spare bits must stay zero, or the link is merely malformed).
    let mut tampered = good.clone().into_bytes();
    let at = good.find('.').context("no signature")? + 1;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered)?;
    let r = g.http.get(g.at(&format!("/v1/downloads/{tampered}"))).send().await?;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await?["error"], "link_tampered");

    let forged = LinkSigner::new(b"someone else's secret".to_vec(), None).sign(&claims(now + 3600)?);
    let r = g.http.get(g.at(&format!("/v1/downloads/{forged}"))).send().await?;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await?["error"], "link_tampered");
    g.stop().await
}

#[tokio::test]
async fn only_the_owner_or_an_admin_downloads_a_file() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options { converter: true, ..Default::default() }).await?;
    let (_, file_id, mp3) = converted(&g).await?;
    let stranger = g.user().await?;
    let url = g.at(&format!("/v1/files/{file_id}"));
    let r = g.http.get(&url).bearer_auth(&stranger.token).send().await?;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await?["error"], "not_found");
    let r = g.http.get(&url).send().await?;
    assert_eq!(r.status(), 401);
    let r = g.http.get(&url).bearer_auth(&g.admin().await?).send().await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await?.len(), mp3.len());
    let r = g.http.get(g.at("/v1/files/not-an-id")).bearer_auth(&stranger.token).send().await?;
    assert_eq!(r.status(), 404);
    g.stop().await
}
