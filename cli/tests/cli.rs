//! The `tunewire` binary against the whole pipeline (two gateways behind a balancer, the
//! converter, catalogue and notifier, the real stack): what a person or a script at a
//! terminal does with it.
// The client has no spans to carry into blocking work (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt;
use tunewire_e2e::{Options, PIPELINE_DEADLINE, Pipeline};
use tunewire_test_stack::eventually;
use tunewire_test_stack::media::ffmpeg;

const PASSWORD: &str = "correct horse battery";
/// Any one command's deadline: a stuck client fails the test instead of hanging it.
const COMMAND_DEADLINE: Duration = Duration::from_secs(300);

/// One user's `tunewire` with its own config folder.
struct Client {
    config: tempfile::TempDir,
    server: String,
}

impl Client {
    fn new(p: &Pipeline) -> anyhow::Result<Self> {
        Ok(Client { config: tempfile::tempdir()?, server: p.gateway.clone() })
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tunewire"));
        command
            .args(args)
            .env("TUNEWIRE_CONFIG_DIR", self.config.path())
            .env("TUNEWIRE_SERVER", &self.server)
            .env_remove("TUNEWIRE_TOKEN");
        command
    }

    /// Runs it to the end with `stdin`, stdout and stderr piped (assert_cmd, off the runtime
    /// the in-process services run on).
    async fn run(&self, args: &[&str], stdin: &str) -> anyhow::Result<Output> {
        let mut command = assert_cmd::Command::from_std(self.command(args));
        command.write_stdin(stdin.to_owned()).timeout(COMMAND_DEADLINE);
        let output = tokio::task::spawn_blocking(move || command.output()).await??;
        Ok(output)
    }

    /// `run`, expecting `code`; returns stdout.
    async fn expect(&self, args: &[&str], code: i32) -> anyhow::Result<String> {
        let output = self.run(args, "").await?;
        let stdout = String::from_utf8(output.stdout)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.code() == Some(code),
            "tunewire {args:?} exited {:?}, expected {code}\nstdout: {stdout}\nstderr: {stderr}",
            output.status.code()
        );
        Ok(stdout)
    }

    async fn json(&self, args: &[&str], code: i32) -> anyhow::Result<Value> {
        let mut args = args.to_vec();
        args.push("--json");
        let stdout = self.expect(&args, code).await?;
        serde_json::from_str(&stdout).with_context(|| format!("stdout of {args:?} is one JSON document: {stdout}"))
    }

    async fn login(&self, email: &str) -> anyhow::Result<()> {
        let output = self.run(&["login", "--email", email, "--password-stdin"], &format!("{PASSWORD}\n")).await?;
        ensure!(output.status.success(), "login: {}", String::from_utf8_lossy(&output.stderr));
        Ok(())
    }

    fn resume_entries(&self) -> anyhow::Result<Vec<String>> {
        let path = self.config.path().join("uploads.json");
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(vec![]) };
        let stored: Value = serde_json::from_str(&text)?;
        let urls =
            stored["uploads"].as_object().map(|o| o.values().filter_map(|e| e["url"].as_str().map(str::to_owned)));
        Ok(urls.into_iter().flatten().collect())
    }
}

fn wav(path: &Path, seconds: u32, frequency: u32, channels: u32) -> anyhow::Result<()> {
    let source = format!("sine=frequency={frequency}:sample_rate=48000:duration={seconds}");
    let path = path.to_str().context("non-UTF-8 path")?;
    ffmpeg(&["-f", "lavfi", "-i", &source, "-ac", &channels.to_string(), "-c:a", "pcm_s16le", path])
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The sum of a counter over every gateway replica.
async fn file_bytes(p: &Pipeline, token: &str, file_id: &str) -> anyhow::Result<Vec<u8>> {
    let r = p.http.get(format!("{}/v1/files/{file_id}", p.gateway)).bearer_auth(token).send().await?;
    Ok(r.error_for_status()?.bytes().await?.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_folder_goes_up_converts_and_comes_back_down() -> anyhow::Result<()> {
    let p = Pipeline::start().await?;
    let (email, token) = p.user().await?;
    let you = Client::new(&p)?;

    // Not logged in yet: exit 3 and what to do.
    let output = you.run(&["jobs"], "").await?;
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("tunewire login"));

    let wrong = you.run(&["login", "--email", &email, "--password-stdin"], "not the password\n").await?;
    assert_eq!(wrong.status.code(), Some(3), "a wrong password is an auth failure");
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains("wrong") && !said.contains("run `tunewire login`"), "{said}");
    you.login(&email).await?;
    let credentials = you.config.path().join("credentials.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&credentials)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "the token is for the user's eyes only");
    let me = you.json(&["whoami"], 0).await?;
    assert_eq!(me["email"], email.as_str());
    assert!(me["quotas"]["stored_bytes"]["limit"].as_i64().is_some_and(|l| l > 0), "{me}");

    // A folder: three media files, one that only looks like one, one that is skipped.
    let folder = p.scratch.join("cli-folder");
    std::fs::create_dir_all(folder.join("more"))?;
    wav(&folder.join("quixotic-sunrise.wav"), 4, 440, 2)?;
    wav(&folder.join("velvet-thunder.wav"), 3, 550, 1)?;
    let flac = folder.join("more/paper-lanterns.flac");
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=660:duration=3", "-c:a", "flac", flac.to_str().context("utf-8")?])?;
    std::fs::write(folder.join("broken.mp3"), "not really an mp3\n".repeat(100))?;
    std::fs::write(folder.join("notes.txt"), "not media, and not named like it")?;
    let folder_arg = folder.to_str().context("utf-8")?;

    // Someone watching the list sees each job change as it happens.
    let mut watch = tokio::process::Command::from(you.command(&["jobs", "--watch", "--json"]));
    watch.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut watcher = watch.spawn()?;
    let mut watch_err = tokio::io::BufReader::new(watcher.stderr.take().context("stderr")?).lines();
    let opened = tokio::time::timeout(PIPELINE_DEADLINE, watch_err.next_line()).await??;
    assert!(opened.is_some_and(|l| l.starts_with("watching")), "the watch opened its stream");
    let watched = tokio::spawn({
        let mut lines = tokio::io::BufReader::new(watcher.stdout.take().context("stdout")?).lines();
        async move {
            let mut seen: Vec<Value> = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                seen.push(serde_json::from_str(&line)?);
                let converted: std::collections::HashSet<&str> =
                    seen.iter().filter(|j| j["state"] == "converted").filter_map(|j| j["id"].as_str()).collect();
                if converted.len() == 3 {
                    return anyhow::Ok(seen);
                }
            }
            anyhow::bail!("the watch ended after {seen:?}")
        }
    });

    let report = you.json(&["upload", folder_arg, "--wait", "--jobs", "2"], 1).await?;
    let files = report["files"].as_array().context("files")?;
    assert_eq!(files.len(), 4, "the .txt is skipped: {report}");
    let by_name = |name: &str| files.iter().find(|f| f["file"].as_str().is_some_and(|f| f.ends_with(name)));
    let broken = by_name("broken.mp3").context("broken.mp3 reported")?;
    assert_eq!(broken["outcome"], "refused");
    assert_eq!(broken["reason"]["error"], "not_media", "{broken}");
    assert!(broken["reason"]["message"].as_str().is_some_and(|m| m.contains("broken.mp3")), "{broken}");
    let mut ids = Vec::new();
    for name in ["quixotic-sunrise.wav", "velvet-thunder.wav", "paper-lanterns.flac"] {
        let file = by_name(name).with_context(|| format!("{name} reported"))?;
        assert_eq!(file["outcome"], "converted", "{file}");
        assert_eq!(file["job"]["state"], "converted");
        ids.push(file["job_id"].as_str().context("job id")?.to_owned());
    }
    assert!(you.config.path().join("uploads.json").exists(), "the uploads were remembered while they ran");
    assert!(you.resume_entries()?.is_empty(), "finished uploads are forgotten");
    let seen = tokio::time::timeout(PIPELINE_DEADLINE, watched).await???;
    for id in &ids {
        let states: Vec<&str> =
            seen.iter().filter(|j| j["id"] == id.as_str()).filter_map(|j| j["state"].as_str()).collect();
        assert_eq!(states.last(), Some(&"converted"), "the watch saw {id} go {states:?}");
    }
    watcher.start_kill()?;

    // Jobs: all three, newest first; one by id.
    let page = you.json(&["jobs"], 0).await?;
    let listed: Vec<&str> = page["jobs"].as_array().context("jobs")?.iter().filter_map(|j| j["id"].as_str()).collect();
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} not in {listed:?}");
    }
    let converted = you.json(&["jobs", "--state", "converted"], 0).await?;
    assert_eq!(converted["jobs"].as_array().map(Vec::len), Some(3));
    let job = you.json(&["job", &ids[0]], 0).await?;
    let file_id = job["output"]["file_id"].as_str().context("file id")?.to_owned();

    // Download: the bytes the API serves, named after the original; a partial file resumes.
    let out = p.scratch.join("cli-downloads");
    let out_arg = out.to_str().context("utf-8")?;
    let got = you.json(&["download", &ids[0], "-o", out_arg], 0).await?;
    let path = PathBuf::from(got["downloaded"][0]["path"].as_str().context("path")?);
    assert_eq!(path, out.join("quixotic-sunrise.mp3"));
    let served = file_bytes(&p, &token, &file_id).await?;
    assert_eq!(sha256(&std::fs::read(&path)?), sha256(&served));
    let half = served.len() / 2;
    std::fs::remove_file(&path)?;
    std::fs::write(out.join(format!("quixotic-sunrise.mp3.{}.part", ids[0])), &served[..half])?;
    let resumed = you.json(&["download", &ids[0], "-o", out_arg], 0).await?;
    assert_eq!(resumed["downloaded"][0]["resumed_at"].as_u64(), Some(half as u64));
    assert_eq!(sha256(&std::fs::read(&path)?), sha256(&served), "a resumed download has the same bytes");

    // Search: the catalogue catches up on its own time.
    let hit = eventually("the search finds quixotic-sunrise", PIPELINE_DEADLINE, || async {
        let page = you.json(&["search", "quixotik sunrise"], 0).await?;
        Ok(page["hits"].as_array().and_then(|h| h.first()).cloned())
    })
    .await?;
    assert_eq!(hit["job_id"], ids[0].as_str());
    let human = you.expect(&["search", "velvet"], 0).await?;
    assert!(human.contains(&ids[1]), "{human}");

    // Delete: gone.
    let deleted = you.json(&["delete", &ids[1]], 0).await?;
    assert_eq!(deleted["deleted"][0], ids[1].as_str());
    let gone = you.json(&["job", &ids[1]], 1).await?;
    assert_eq!(gone["error"], "not_found");

    // Logout: the next command needs a login again; TUNEWIRE_TOKEN stands in for one.
    you.expect(&["logout"], 0).await?;
    assert!(!credentials.exists());
    let output = you.run(&["jobs"], "").await?;
    assert_eq!(output.status.code(), Some(3));
    let mut with_token = assert_cmd::Command::from_std(you.command(&["job", &ids[0], "--json"]));
    with_token.env("TUNEWIRE_TOKEN", &token).timeout(COMMAND_DEADLINE);
    let by_env = tokio::task::spawn_blocking(move || with_token.output()).await??;
    assert_eq!(by_env.status.code(), Some(0), "{}", String::from_utf8_lossy(&by_env.stderr));

    // Usage: exit 2; no server there: exit 4, with what to do.
    assert_eq!(you.run(&["jobs", "--state", "finished"], "").await?.status.code(), Some(2));
    let mut nowhere = assert_cmd::Command::from_std(you.command(&["whoami", "--server", "http://127.0.0.1:9"]));
    nowhere.env("TUNEWIRE_TOKEN", &token).timeout(COMMAND_DEADLINE);
    let nowhere = tokio::task::spawn_blocking(move || nowhere.output()).await??;
    assert_eq!(nowhere.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("is it running?"));
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_upload_resumes_where_the_server_stopped_and_converts() -> anyhow::Result<()> {
    let p = Pipeline::start().await?;
    let (email, _) = p.user().await?;
    let you = Client::new(&p)?;
    you.login(&email).await?;
    // 300 MiB: 1 638 s of 48 kHz stereo 16-bit, the header aside.
    let big = p.scratch.join("long-set.wav");
    wav(&big, 1638, 330, 2)?;
    let size = std::fs::metadata(&big)?.len();
    let big_arg = big.to_str().context("utf-8")?;
    let before = p.metric(&p.health.gateway, "upload_bytes_total", "").await?;

    // Paced so that the test sees it half-way; killed there, mid-request.
    let mut first = tokio::process::Command::from(you.command(&["upload", big_arg, "--bwlimit", "40M"]));
    first.stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    let mut child = first.spawn()?;
    let half = size / 2;
    let http = &p.http;
    let token_for_head = login_token(&p, &email).await?;
    eventually("the upload reaches half", PIPELINE_DEADLINE, || async {
        let Some(url) = you.resume_entries()?.into_iter().next() else { return Ok(None) };
        let r = http
            .head(format!("{}{url}", p.gateway))
            .bearer_auth(&token_for_head)
            .header("tus-resumable", "1.0.0")
            .send()
            .await?;
        let offset: u64 = r.headers().get("upload-offset").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
        Ok((offset >= half).then_some(offset))
    })
    .await?;
    child.start_kill()?;
    let status = child.wait().await?;
    assert!(!status.success(), "killed, not finished");
    assert_eq!(you.resume_entries()?.len(), 1, "the unfinished upload is remembered");

    let report = you.json(&["upload", big_arg, "--wait"], 0).await?;
    let file = &report["files"][0];
    assert_eq!(file["outcome"], "converted", "{report}");
    let resumed_at = file["resumed_at"].as_u64().context("resumed_at")?;
    assert!(resumed_at >= half && resumed_at < size, "resumed at {resumed_at} of {size}");
    let after = p.metric(&p.health.gateway, "upload_bytes_total", "").await?;
    eprintln!("{size} bytes: killed, resumed at {resumed_at}; the gateways received {} bytes", after - before);
    assert_eq!(after - before, size as f64, "the gateways received each byte once");
    p.stop().await
}

async fn login_token(p: &Pipeline, email: &str) -> anyhow::Result<String> {
    let r = p
        .http
        .post(format!("{}/v1/auth/login", p.gateway))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    let body: Value = r.error_for_status()?.json().await?;
    Ok(body["access_token"].as_str().context("token")?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_bars_on_a_terminal_plain_lines_in_a_pipe_and_an_expired_token_says_what_to_do() -> anyhow::Result<()>
{
    // Tokens that expire soon (the gateway allows 30 s of clock skew past their 15 s).
    let p = Pipeline::start_with(Options { token_ttl_s: Some(15), ..Options::default() }).await?;
    let you = Client::new(&p)?;
    let email = format!("cli-{}@example.com", uuid::Uuid::new_v4().simple());
    let registered = you.run(&["register", "--email", &email, "--password-stdin"], &format!("{PASSWORD}\n")).await?;
    assert!(registered.status.success(), "{}", String::from_utf8_lossy(&registered.stderr));
    let again =
        you.run(&["register", "--email", &email, "--password-stdin", "--json"], &format!("{PASSWORD}\n")).await?;
    assert_eq!(again.status.code(), Some(1));
    let refusal: Value = serde_json::from_slice(&again.stdout)?;
    assert!(refusal["message"].as_str().is_some_and(|m| m.contains("already registered")), "{refusal}");
    let track = p.scratch.join("terminal.wav");
    wav(&track, 40, 440, 2)?;
    let track_arg = track.to_str().context("utf-8")?;
    let second = p.scratch.join("second.wav");
    wav(&second, 20, 550, 2)?;

    // On a pseudo-terminal (util-linux `script`): a bar per file and a total, drawn with
    // escape sequences.
    let line = format!(
        "stty cols 120 rows 40; {} upload {} {} --bwlimit 2M",
        env!("CARGO_BIN_EXE_tunewire"),
        shell_quote(track_arg),
        shell_quote(second.to_str().context("utf-8")?)
    );
    let mut script = std::process::Command::new("script");
    script
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env("TUNEWIRE_CONFIG_DIR", you.config.path())
        .env("TUNEWIRE_SERVER", &you.server)
        .env("TERM", "xterm-256color")
        .env("COLUMNS", "120")
        .stdin(Stdio::null());
    let mut script = assert_cmd::Command::from_std(script);
    script.timeout(COMMAND_DEADLINE);
    let on_terminal = tokio::task::spawn_blocking(move || script.output()).await??;
    let screen = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(on_terminal.status.success(), "{screen}");
    assert!(screen.contains("\u{1b}["), "the terminal got cursor movements: {screen:?}");
    assert!(screen.contains("terminal.wav") && screen.contains("MiB/s"), "a bar with its speed: {screen:?}");
    assert!(screen.contains("second.wav") && screen.contains("total"), "and the total's: {screen:?}");
    assert!(screen.contains("uploaded: job"), "{screen:?}");

    // In a pipe: plain lines on stderr, the result alone on stdout.
    let piped = you.run(&["upload", track_arg, "--bwlimit", "2M"], "").await?;
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    let stdout = String::from_utf8_lossy(&piped.stdout);
    assert!(!stderr.contains('\u{1b}') && !stdout.contains('\u{1b}'), "no escape sequences in a pipe: {stderr:?}");
    assert!(stderr.contains("terminal.wav: 50% sent"), "progress as lines: {stderr}");
    assert!(stdout.starts_with("uploaded "), "{stdout}");
    let quiet = you.run(&["upload", track_arg, "--quiet"], "").await?;
    assert!(quiet.status.success() && quiet.stderr.is_empty(), "{}", String::from_utf8_lossy(&quiet.stderr));

    // The stored token expires: exit 3, and the hint.
    let output = eventually("the token expires", PIPELINE_DEADLINE, || async {
        let output = you.run(&["whoami"], "").await?;
        Ok((output.status.code() != Some(0)).then_some(output))
    })
    .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("expired") && stderr.contains("run `tunewire login`"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    p.stop().await
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
