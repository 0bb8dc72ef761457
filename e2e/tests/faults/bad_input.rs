//! Scenario 8: bad input through the public API. Every case must end in a clear 4xx (with a
//! JSON `error` code whenever Tunewire, not the HTTP parser, answers) or in a job that ends
//! `failed` with a reason; never a 5xx, a dropped connection or a panic. Odd filenames on
//! good media may instead be accepted under a cleaned name, which is checked.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunewire_e2e::{Options, PIPELINE_DEADLINE, Pipeline};
use tunewire_test_stack::eventually;
use tunewire_test_stack::media::ffmpeg;

use crate::Report;

/// What a case may end in, besides a 4xx.
#[derive(Clone, Copy, PartialEq)]
enum Allowed {
    Only4xx,
    /// Or accepted, then `failed` with a reason.
    FailedJob,
    /// Or accepted and converted under a filename with no folders, controls or bad UTF-8.
    CleanedName,
    /// Or accepted and converted to what the file really holds (FFmpeg ignores the claim).
    Faithful,
}

struct Answer {
    status: u16,
    body: String,
}

struct Case {
    name: String,
    allowed: Allowed,
    answer: anyhow::Result<Answer>,
}

async fn answer(resp: reqwest::Result<reqwest::Response>) -> anyhow::Result<Answer> {
    let resp = resp?;
    Ok(Answer { status: resp.status().as_u16(), body: resp.text().await? })
}

/// Sends `request` as raw bytes (it asks for `Connection: close`) and reads the whole answer.
async fn raw(addr: &str, request: &[u8]) -> anyhow::Result<Answer> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut bytes)).await.context("no answer")??;
    let text = String::from_utf8_lossy(&bytes);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer: {:?}", text.chars().take(80).collect::<String>()))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok(Answer { status, body })
}

/// A canonical 44-byte-header WAV of one second, to be patched into nonsense.
fn wav(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = dir.join("canonical.wav");
    let spec = "sine=frequency=440:duration=1:sample_rate=8000";
    let out = path.to_str().context("path")?;
    ffmpeg(&["-y", "-f", "lavfi", "-i", spec, "-ac", "1", "-map_metadata", "-1", "-fflags", "+bitexact", out])?;
    let bytes = std::fs::read(&path)?;
    ensure!(&bytes[36..40] == b"data", "ffmpeg wrote a WAV header with extra chunks");
    Ok(bytes)
}

fn patched(wav: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut bytes = wav.to_vec();
    bytes[at..at + value.len()].copy_from_slice(value);
    bytes
}

fn made(dir: &Path, name: &str, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(name);
    let mut all: Vec<&str> = vec!["-y"];
    all.extend_from_slice(args);
    let out = path.to_str().context("path")?;
    all.push(out);
    ffmpeg(&all)?;
    Ok(std::fs::read(path)?)
}

/// `python3 -c script args...`: the zip and tar files, made by the standard library.
fn python(script: &str, args: &[&Path]) -> anyhow::Result<()> {
    let status = std::process::Command::new("python3").arg("-c").arg(script).args(args).status()?;
    ensure!(status.success(), "python3 failed: {status}");
    Ok(())
}

pub async fn run() -> anyhow::Result<Report> {
    // A low duration limit, so that "absurdly long" is cheap to claim.
    let p = Pipeline::start_with(Options { max_duration_s: 600.0, ..Options::default() }).await?;
    let (_, token) = p.user().await?;
    let (_, other) = p.user().await?;
    let dir = p.scratch.clone();
    let gateway = p.gateway.trim_start_matches("http://").to_string();
    let uploads = format!("{}/v1/uploads", p.gateway);
    let wav = wav(&dir)?;

    // Media and non-media to upload as files.
    let html = b"<!doctype html><html><body>not a video</body></html>".to_vec();
    let random: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let png = made(&dir, "image.png", &["-f", "lavfi", "-i", "color=c=red:s=32x32", "-frames:v", "1"])?;
    let silent_video =
        made(&dir, "silent.mp4", &["-f", "lavfi", "-i", "testsrc=size=64x48:rate=5:duration=1", "-c:v", "mpeg4"])?;
    let mp4 = made(
        &dir,
        "whole.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=duration=5",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=5:duration=5",
            "-c:v",
            "mpeg4",
        ],
    )?;
    let (zip, nested, tgz) = (dir.join("a.zip"), dir.join("nested.zip"), dir.join("a.tar.gz"));
    let wav_path = dir.join("canonical.wav");
    python(
        "import sys, zipfile, tarfile\n\
         src, z, nested, tgz = sys.argv[1:5]\n\
         zipfile.ZipFile(z, 'w').write(src, 'song.wav')\n\
         with zipfile.ZipFile(nested, 'w') as outer: outer.write(z, 'inner.zip')\n\
         with tarfile.open(tgz, 'w:gz') as t: t.add(src, 'song.wav')",
        &[&wav_path, &zip, &nested, &tgz],
    )?;
    let files: Vec<(&str, Vec<u8>, &str, Allowed)> = vec![
        ("an empty file", Vec::new(), "empty.mp4", Allowed::Only4xx),
        ("an HTML page named .mp4", html.clone(), "page.mp4", Allowed::Only4xx),
        ("64 KiB of random bytes", random, "noise.mp3", Allowed::Only4xx),
        ("a ZIP holding a WAV, named .mp4", std::fs::read(&zip)?, "song.mp4", Allowed::Only4xx),
        ("a ZIP inside a ZIP", std::fs::read(&nested)?, "nested.zip", Allowed::Only4xx),
        ("a tar.gz holding a WAV", std::fs::read(&tgz)?, "song.tar.gz", Allowed::Only4xx),
        ("a PNG image", png, "cover.png", Allowed::Only4xx),
        ("a video without sound", silent_video, "silent.mp4", Allowed::Only4xx),
        ("an MP4 cut after 4 KiB", mp4[..4096.min(mp4.len())].to_vec(), "cut.mp4", Allowed::FailedJob),
        (
            "a WAV claiming 4 GB of samples (74 hours)",
            patched(&wav, 40, &0xFFFF_FFF0u32.to_le_bytes()),
            "long.wav",
            Allowed::Faithful,
        ),
        ("a WAV at 0 Hz", patched(&wav, 24, &0u32.to_le_bytes()), "zero-hz.wav", Allowed::FailedJob),
        (
            "a WAV at 1 Hz (hours from a second)",
            patched(&patched(&wav, 24, &1u32.to_le_bytes()), 28, &2u32.to_le_bytes()),
            "one-hz.wav",
            Allowed::FailedJob,
        ),
        ("a WAV at 4 GHz", patched(&wav, 24, &4_000_000_000u32.to_le_bytes()), "fast.wav", Allowed::FailedJob),
        ("a WAV with 0 channels", patched(&wav, 22, &0u16.to_le_bytes()), "no-channels.wav", Allowed::FailedJob),
        ("a WAV claiming 255 channels", patched(&wav, 22, &255u16.to_le_bytes()), "many.wav", Allowed::FailedJob),
        (
            "an ID3 tag claiming 256 MB, then nothing",
            [b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f".as_slice(), &[0; 100]].concat(),
            "tag.mp3",
            Allowed::FailedJob,
        ),
    ];
    let mut cases = Vec::new();
    let http = &p.http;
    for (name, bytes, filename, allowed) in files {
        let form = reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(bytes).file_name(filename.to_string()));
        let resp = http.post(&uploads).bearer_auth(&token).multipart(form).send().await;
        cases.push(Case { name: name.into(), allowed, answer: answer(resp).await });
    }

    // Good media under bad names.
    let names: Vec<(&str, &[u8])> = vec![
        ("a filename that climbs out (../../etc/passwd.wav)", b"../../etc/passwd.wav"),
        ("a filename of raw non-UTF-8 bytes", b"\xff\xfe\xfd.wav"),
        ("a percent-encoded filename that is not UTF-8 (%FF%FE.wav)", b"%FF%FE.wav"),
        ("a filename with NUL and newlines", b"a%00b%0A%0Dc.wav"),
        ("a Windows path as a filename", b"C:\\Users\\me\\song.wav"),
    ];
    for (i, (name, header)) in names.into_iter().enumerate() {
        // Each its own content, or the second would be a duplicate of the first.
        let body = patched(&wav, 44, &[i as u8 + 1]);
        let header = reqwest::header::HeaderValue::from_bytes(header)?;
        let resp = http.put(&uploads).bearer_auth(&token).header("x-filename", header).body(body).send().await;
        cases.push(Case { name: name.into(), allowed: Allowed::CleanedName, answer: answer(resp).await });
    }
    let long_name = format!("{}.wav", "n".repeat(5000));
    let resp = http
        .put(&uploads)
        .bearer_auth(&token)
        .header("x-filename", long_name)
        .body(patched(&wav, 44, &[9]))
        .send()
        .await;
    cases.push(Case {
        name: "a 5,000-character filename".into(),
        allowed: Allowed::CleanedName,
        answer: answer(resp).await,
    });

    // Broken requests.
    let auth_header = format!("Authorization: Bearer {token}\r\nConnection: close\r\n");
    let mut requests: Vec<(&str, Vec<u8>)> = vec![
        ("a raw upload with no body", format!("PUT /v1/uploads HTTP/1.1\r\nHost: x\r\n{auth_header}X-Filename: a.wav\r\nContent-Length: 0\r\n\r\n").into_bytes()),
        ("a 10 GB Content-Length", format!("PUT /v1/uploads HTTP/1.1\r\nHost: x\r\n{auth_header}X-Filename: a.wav\r\nContent-Length: 10000000000\r\n\r\n").into_bytes()),
        ("a declared 5 MB, 2 KB sent, then silence", [format!("PUT /v1/uploads HTTP/1.1\r\nHost: x\r\n{auth_header}X-Filename: b.wav\r\nContent-Length: 5000000\r\n\r\n").into_bytes(), wav[..2048].to_vec()].concat()),
        ("a multipart body with another boundary", [format!("POST /v1/uploads HTTP/1.1\r\nHost: x\r\n{auth_header}Content-Type: multipart/form-data; boundary=expected\r\nContent-Length: 120\r\n\r\n").into_bytes(), format!("{:<120}", "--actual\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--actual--\r\n").into_bytes()].concat()),
        ("a multipart Content-Type without a boundary", format!("POST /v1/uploads HTTP/1.1\r\nHost: x\r\n{auth_header}Content-Type: multipart/form-data\r\nContent-Length: 4\r\n\r\nRIFF").into_bytes()),
        ("a multipart body with no parts", format!("POST /v1/uploads HTTP/1.1\r\nHost: x\r\n{auth_header}Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 6\r\n\r\n--b--\r\n").into_bytes()),
        ("JSON posted as an upload", format!("POST /v1/uploads HTTP/1.1\r\nHost: x\r\n{auth_header}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes()),
        ("a 1 MiB header", format!("GET /v1/me HTTP/1.1\r\nHost: x\r\n{auth_header}X-Big: {}\r\n\r\n", "a".repeat(1 << 20)).into_bytes()),
        ("a garbage request line", b"HELLO THERE\r\n\r\n".to_vec()),
    ];
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    requests.push((
        "200 headers",
        format!("GET /v1/me HTTP/1.1\r\nHost: x\r\n{auth_header}{many_headers}\r\n").into_bytes(),
    ));
    for (name, request) in requests {
        cases.push(Case { name: name.into(), allowed: Allowed::Only4xx, answer: raw(&gateway, &request).await });
    }
    // A client that declares 5 MB, sends 2 KB and hangs up cannot be answered; it must leave
    // nothing behind.
    let db = sqlx::PgPool::connect(&p.sandbox.database_url).await?;
    let mongo = mongodb::Client::with_uri_str(&p.sandbox.stack.mongo_uri).await?;
    let originals = mongo
        .database(&p.sandbox.mongo_database(tunewire_media_store::Bucket::Uploads))
        .collection::<mongodb::bson::Document>("uploads.files");
    let count_jobs = || sqlx::query_scalar::<_, i64>("SELECT count(*) FROM gateway.jobs").fetch_one(&db);
    let (jobs_before, files_before) = (count_jobs().await?, originals.count_documents(mongodb::bson::doc! {}).await?);
    let mut stream = tokio::net::TcpStream::connect(&gateway).await?;
    let head = format!(
        "PUT /v1/uploads HTTP/1.1\r\nHost: x\r\n{auth_header}X-Filename: b.wav\r\nContent-Length: 5000000\r\n\r\n"
    );
    stream.write_all(&[head.as_bytes(), &wav[..2048]].concat()).await?;
    stream.shutdown().await?;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest)).await;
    eventually("the half-sent upload to leave nothing", PIPELINE_DEADLINE, || async {
        let files = originals.count_documents(mongodb::bson::doc! {}).await?;
        Ok((count_jobs().await? == jobs_before && files == files_before).then_some(()))
    })
    .await?;

    // Metadata fields.
    let form_with = |key: &str, value: String| {
        reqwest::multipart::Form::new()
            .text(key.to_string(), value)
            .part("file", reqwest::multipart::Part::bytes(patched(&wav, 44, &[42])).file_name("meta.wav"))
    };
    let bomb = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let fields: Vec<(&str, reqwest::multipart::Form)> = vec![
        ("a 1 MiB title", form_with("title", "t".repeat(1 << 20))),
        ("a JSON bomb (100,000 nested arrays) as the artist", form_with("artist", bomb.clone())),
        ("an unknown preset", form_with("preset", "flac-lossless-9000".into())),
        ("loudnorm=maybe", form_with("loudnorm", "maybe".into())),
    ];
    for (name, form) in fields {
        let resp = http.post(&uploads).bearer_auth(&token).multipart(form).send().await;
        cases.push(Case { name: name.into(), allowed: Allowed::Only4xx, answer: answer(resp).await });
    }
    let thousand_fields = (0..1000).fold(reqwest::multipart::Form::new(), |f, i| f.text(format!("f{i}"), "x"));
    let resp = http.post(&uploads).bearer_auth(&token).multipart(thousand_fields).send().await;
    cases.push(Case {
        name: "1,000 form fields and no file".into(),
        allowed: Allowed::Only4xx,
        answer: answer(resp).await,
    });
    let register = format!("{}/v1/auth/register", p.gateway);
    let resp = http.post(&register).header("content-type", "application/json").body(bomb).send().await;
    cases.push(Case {
        name: "a JSON bomb as a registration".into(),
        allowed: Allowed::Only4xx,
        answer: answer(resp).await,
    });
    let resp = http
        .post(&register)
        .json(&json!({"email": "not an address", "password": "correct horse battery"}))
        .send()
        .await;
    cases.push(Case {
        name: "a registration with no usable email".into(),
        allowed: Allowed::Only4xx,
        answer: answer(resp).await,
    });

    // Tokens and links.
    let me = format!("{}/v1/me", p.gateway);
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "someone", "exp": 4_000_000_000u64}))
    );
    let mut forged = token.clone();
    forged.truncate(token.len() - 4);
    forged.push_str("AAAA");
    for (name, bearer) in [
        ("no token", None),
        ("a token that is not a JWT", Some("not.a.token".to_string())),
        ("an unsigned (alg: none) token", Some(unsigned)),
        ("a token with a forged signature", Some(forged)),
    ] {
        let mut request = http.get(&me);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        cases.push(Case { name: name.into(), allowed: Allowed::Only4xx, answer: answer(request.send().await).await });
    }
    let links = tunewire_signed_links::LinkSigner::new(p.link_secret.clone().into_bytes(), None);
    let claims = |exp: i64| tunewire_signed_links::LinkClaims {
        file_id: tunewire_contract::FileId::from_bytes([7; 12]),
        owner: tunewire_contract::UserId::new(),
        exp,
    };
    let expired = links.sign(&claims(1));
    let mut tampered = links.sign(&claims(4_000_000_000));
    tampered.replace_range(0..1, if tampered.starts_with('e') { "f" } else { "e" });
    for (name, link) in [("an expired download link", expired), ("a tampered download link", tampered)] {
        let resp = http.get(format!("{}/v1/downloads/{link}", p.gateway)).send().await;
        cases.push(Case { name: name.into(), allowed: Allowed::Only4xx, answer: answer(resp).await });
    }
    let resp = http.get(format!("{}/v1/jobs/not-a-job-id", p.gateway)).bearer_auth(&token).send().await;
    cases.push(Case { name: "a job id that is not one".into(), allowed: Allowed::Only4xx, answer: answer(resp).await });

    // Judge every case; accepted ones are followed to their end.
    let mut failures = Vec::new();
    let mut summary = (0, 0, 0, 0);
    for case in &cases {
        match judge(&p, &token, &other, case).await {
            Ok(Verdict::Refused) => summary.0 += 1,
            Ok(Verdict::Failed) => summary.1 += 1,
            Ok(Verdict::Cleaned) => summary.2 += 1,
            Ok(Verdict::Faithful) => summary.3 += 1,
            Err(e) => failures.push(format!("{}: {e:#}", case.name)),
        }
    }
    // And the gateway is still whole.
    let health = http.get(format!("{}/healthz", p.gateway)).send().await?;
    ensure!(health.status() == 200, "the gateway is not healthy after the bad input");
    if !failures.is_empty() {
        bail!("{} of {} bad inputs were not handled well:\n  {}", failures.len(), cases.len(), failures.join("\n  "));
    }
    ensure!(cases.len() >= 30, "only {} kinds of bad input", cases.len());
    let report = Report {
        uploads: cases.len(),
        notes: format!(
            "{} kinds (and a client hanging up mid-body): {} refused with a 4xx, {} failed with a reason, {} converted under a cleaned name, {} converted as what the file really holds",
            cases.len(),
            summary.0,
            summary.1,
            summary.2,
            summary.3
        ),
        ..Report::default()
    };
    p.stop().await?;
    Ok(report)
}

enum Verdict {
    Refused,
    Failed,
    Cleaned,
    Faithful,
}

async fn judge(p: &Pipeline, token: &str, other: &str, case: &Case) -> anyhow::Result<Verdict> {
    let answer = case.answer.as_ref().map_err(|e| anyhow::anyhow!("no HTTP answer: {e:#}"))?;
    if (400..500).contains(&answer.status) {
        // Tunewire's own answers say what is wrong; the HTTP parser's (431, a bad request
        // line) come before any of our code and have no body.
        if !answer.body.trim().is_empty() {
            let body: Value = serde_json::from_str(&answer.body)
                .with_context(|| format!("{} with a body that is not JSON: {}", answer.status, answer.body))?;
            ensure!(
                body["error"].is_string() && body["message"].is_string(),
                "{} without error and message: {body}",
                answer.status
            );
        }
        return Ok(Verdict::Refused);
    }
    ensure!(answer.status == 202 && case.allowed != Allowed::Only4xx, "answered {}: {}", answer.status, answer.body);
    let body: Value = serde_json::from_str(&answer.body)?;
    let job_id = body["job_id"].as_str().context("no job_id")?;
    // Not anybody's business but the uploader's.
    let peek = p.job(other, job_id).await?;
    ensure!(peek.status() == 404, "another user saw the job: {}", peek.status());
    let job = eventually(&format!("job {job_id} to finish"), PIPELINE_DEADLINE, || async {
        let job: Value = p.job(token, job_id).await?.error_for_status()?.json().await?;
        Ok(matches!(job["state"].as_str(), Some("converted" | "failed")).then_some(job))
    })
    .await?;
    match (job["state"].as_str(), case.allowed) {
        (Some("failed"), _) => {
            ensure!(job["error"].as_str().is_some_and(|e| !e.is_empty()), "failed without a reason: {job}");
            Ok(Verdict::Failed)
        }
        (Some("converted"), Allowed::Faithful) => {
            let duration = job["output"]["duration_s"].as_f64().context("no duration")?;
            ensure!(duration < 2.0, "converted to {duration} s from a 1 s file");
            Ok(Verdict::Faithful)
        }
        (Some("converted"), Allowed::CleanedName) => {
            let name = job["source"]["filename"].as_str().context("no filename")?;
            let clean = !name.is_empty()
                && !name.contains(['/', '\\'])
                && !name.chars().any(char::is_control)
                && !name.contains('\u{FFFD}')
                && name.len() <= 255;
            ensure!(clean, "converted under the filename {name:?}");
            Ok(Verdict::Cleaned)
        }
        _ => bail!("ended {}: {job}", job["state"]),
    }
}
