//! The gateway's door under pressure: uploads in flight capped per user, and refusals that
//! reach clients which send their whole body before reading the answer.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use support::{Gateway, Options};
use tunewire_gateway::upload_admission::Limits;

/// Sends `head` and then `body` in full over a plain socket before reading a byte, as
/// Python's urllib does, and returns the status line and the body of the answer.
async fn send_all_then_read(addr: String, head: String, body: Vec<u8>) -> anyhow::Result<(String, String)> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<(String, String)> {
        let mut socket = std::net::TcpStream::connect(addr)?;
        socket.set_read_timeout(Some(Duration::from_secs(30)))?;
        socket.write_all(head.as_bytes())?;
        socket.write_all(&body)?;
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer)?;
        let answer = String::from_utf8_lossy(&answer).to_string();
        let status = answer.lines().next().unwrap_or_default().to_string();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        Ok((status, body))
    })
    .await?
}

fn host(g: &Gateway) -> String {
    g.url.trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn a_refused_upload_reaches_a_client_that_sends_its_whole_body_first() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let body = vec![b'x'; 8 << 20];
    let boundary = "tunewireboundary";
    let mut form = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n")
        .into_bytes();
    form.extend_from_slice(&body);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let cases = [
        (
            "raw",
            format!(
                "PUT /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\nX-Filename: a.wav\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body.clone(),
        ),
        (
            "multipart",
            format!(
                "POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                form.len()
            ),
            form,
        ),
    ];
    for (what, head, body) in cases {
        let (status, answer) = send_all_then_read(host(&g), head, body).await?;
        assert!(status.contains(" 401 "), "{what}: {status}");
        let answer: Value = serde_json::from_str(&answer).with_context(|| format!("{what}: {answer}"))?;
        assert_eq!(answer["error"], "unauthorized", "{what}");
    }
    g.stop().await
}

#[tokio::test]
async fn a_client_that_expects_100_continue_is_refused_before_it_sends_the_body() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let head = "PUT /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\nX-Filename: a.wav\r\nContent-Length: 104857600\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n";
    let (status, answer) = send_all_then_read(host(&g), head.to_string(), Vec::new()).await?;
    assert!(status.contains(" 401 "), "no 100 Continue, the refusal at once: {status}");
    assert_eq!(serde_json::from_str::<Value>(&answer)?["error"], "unauthorized");
    // A multipart form declaring more than the limit is refused before its body, too.
    let user = g.user().await?;
    let head = format!(
        "POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        user.token,
        g.config.max_upload_bytes + (8 << 20)
    );
    let (status, answer) = send_all_then_read(host(&g), head, Vec::new()).await?;
    assert!(status.contains(" 413 "), "{status}");
    assert_eq!(serde_json::from_str::<Value>(&answer)?["error"], "payload_too_large");
    g.stop().await
}

#[tokio::test]
async fn fifty_uploads_at_once_from_one_user_get_eight_places_and_the_rest_429() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options {
        tweak: Box::new(|c| c.upload_limits = Limits { per_process: 48, per_user: 8 }),
        ..Default::default()
    })
    .await?;
    let user = g.user().await?;
    let mut files = Vec::new();
    for seed in 0..50 {
        files.push(tokio::fs::read(g.tone(&format!("t{seed}.wav"), 1, seed)?).await?);
    }
    // Each body sends its file, then holds the upload open until the gate opens, so all
    // fifty are in flight together.
    let (open, gate) = tokio::sync::watch::channel(false);
    let upload = |bytes: Vec<u8>| {
        let mut gate = gate.clone();
        let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) }).chain(
            futures_util::stream::once(async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok(Vec::new())
            }),
        );
        g.http
            .put(g.at("/v1/uploads"))
            .bearer_auth(&user.token)
            .header("x-filename", "tone.wav")
            .body(reqwest::Body::wrap_stream(body))
            .send()
    };
    use futures_util::StreamExt;
    let mut answers: futures_util::stream::FuturesUnordered<_> =
        files.iter().cloned().enumerate().map(|(i, f)| async move { (i, upload(f).await) }).collect();
    let mut refused = Vec::new();
    while refused.len() < 42 {
        let (i, answer) = tokio::time::timeout(support::DEADLINE, answers.next())
            .await
            .context("the refusals never came")?
            .context("fewer answers than uploads")?;
        let r = answer?;
        assert_eq!(r.status(), 429, "upload {i} answered before the gate opened");
        let retry_after: u64 = r.headers().get("retry-after").context("Retry-After")?.to_str()?.parse()?;
        assert!(retry_after >= 1);
        let body: Value = r.json().await?;
        assert_eq!(body["error"], "too_many_uploads");
        assert_eq!(body["retry_after_s"], retry_after);
        refused.push(i);
    }
    open.send(true)?;
    while let Some((i, answer)) = answers.next().await {
        assert_eq!(answer?.status(), 202, "upload {i}, admitted, is accepted");
    }
    // Nothing of the refused ones was kept; sent again, they are all accepted.
    assert_eq!(g.gridfs_counts("uploads").await?.0, 8);
    for i in refused {
        let r = g.upload_bytes(&user.token, files[i].clone(), "tone.wav", &[]).await?;
        assert_eq!(r.status(), 202, "upload {i} sent again");
    }
    assert_eq!(g.gridfs_counts("uploads").await?.0, 50);
    drop(answers);
    g.stop().await
}
