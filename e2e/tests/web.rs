//! The web app in a real browser: Debian's chromium, driven by Playwright
//! (`e2e/web/run.mjs`, installed by `scripts/stack tools`), against the whole pipeline with
//! two gateway replicas: sign up and in, uploads (three at once, one refused; 200 MiB paused,
//! the page reloaded, resumed), the live job list, the player's seeks, downloads, search,
//! deletion, the emailed link signed out and tampered, an admin's view, the
//! Content-Security-Policy, an accessibility scan of every page, and screenshots at desktop
//! and phone widths into `docs/screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tunewire_e2e::{Options, Pipeline};
use tunewire_test_stack::media;

/// The whole browser run, with room for a slow machine: it ends itself well before.
const RUN_DEADLINE: Duration = Duration::from_secs(15 * 60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stack_tools() -> PathBuf {
    std::env::var_os("TUNEWIRE_STACK_DIR").map_or_else(|| root().join(".stack"), PathBuf::from).join("tools")
}

/// A WAV of a sine tone: real media whose length sets its size (192 000 bytes a second).
fn wav(path: &std::path::Path, seconds: u32, frequency: u32) -> anyhow::Result<()> {
    let source = format!("sine=frequency={frequency}:sample_rate=48000:duration={seconds}");
    let path = path.to_str().context("non-UTF-8 path")?;
    media::ffmpeg(&["-f", "lavfi", "-i", &source, "-ac", "2", "-c:a", "pcm_s16le", path])
}

#[tokio::test]
async fn the_web_app_serves_people_end_to_end_in_a_real_browser() -> anyhow::Result<()> {
    let admin = ("admin-web@example.com".to_owned(), "admin password for the web test".to_owned());
    let p = Pipeline::start_with(Options { admin: Some(admin.clone()), ..Options::default() }).await?;
    let fixtures = p.scratch.join("web");
    std::fs::create_dir_all(&fixtures)?;
    let (a, b, not_media, large) = (
        fixtures.join("moonlight.wav"),
        fixtures.join("aurora.wav"),
        fixtures.join("notes.txt"),
        fixtures.join("long-set.wav"),
    );
    // Five minutes: longer than the player buffers at first, so seeking near its end asks
    // for a Range inside the file.
    wav(&a, 300, 440)?;
    wav(&b, 20, 660)?;
    std::fs::write(&not_media, "these are notes, not media\n".repeat(200))?;
    // 200 MiB: 1 092 s of 48 kHz stereo 16-bit, the header aside.
    wav(&large, 1092, 330)?;
    let screenshots = root().join("docs/screenshots");
    std::fs::create_dir_all(&screenshots)?;
    // Secure cookies are kept for http://localhost (a trustworthy origin), not for an IP.
    let base = p.gateway.replace("127.0.0.1", "localhost");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(root().join("e2e/web/run.mjs"))
        .env("WEB_MODULES", stack_tools().join("web-tests/node_modules"))
        .env("BASE_URL", &base)
        .env("GATEWAYS", p.health.gateway.iter().map(|a| format!("http://{a}")).collect::<Vec<_>>().join(","))
        .env("MAILDEV_URL", &p.sandbox.stack.maildev_url)
        .env("CHROMIUM", "/usr/bin/chromium")
        .env("FIXTURE_A", &a)
        .env("FIXTURE_B", &b)
        .env("FIXTURE_NOT_MEDIA", &not_media)
        .env("FIXTURE_LARGE", &large)
        .env("SCREENSHOTS", &screenshots)
        .env("ADMIN_EMAIL", &admin.0)
        .env("ADMIN_PASSWORD", &admin.1)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let status =
        tokio::time::timeout(RUN_DEADLINE, command.status()).await.context("the browser run passed its deadline")??;
    anyhow::ensure!(status.success(), "the browser run failed ({status}); its log is above");
    p.stop().await
}
