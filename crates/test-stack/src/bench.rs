//! What the benchmarks share: a MongoDB-wire server of their own per measured run, and a
//! process's figures from `/proc`.

#[cfg(feature = "media-store")]
use std::path::PathBuf;
#[cfg(feature = "media-store")]
use std::process::Stdio;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::Context;

use crate::eventually;

#[cfg(feature = "media-store")]
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...); `None` once the process is gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.split(':').next() == Some(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A SecantusDB server of its own on an empty storage folder: the Python server slows as
/// it serves more data, so every measured run starts from an empty store.
#[cfg(feature = "media-store")]
pub struct FreshMongo {
    child: Child,
    dir: PathBuf,
    pub uri: String,
}

#[cfg(feature = "media-store")]
impl FreshMongo {
    /// The server's process, for its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn start() -> anyhow::Result<Self> {
        // Where scripts/stack installs it, which honours the same variable.
        let stack =
            std::env::var_os("TUNEWIRE_STACK_DIR").map_or_else(|| workspace_root().join(".stack"), PathBuf::from);
        let server = stack.join("tools/venv/bin/secantusd-py");
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("tw-bench-mongo-{port}"));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(&server)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--cache-size", "256M", "--storage-path"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("{} (scripts/stack up installs it)", server.display()))?;
        // Owned from here, so a server that never answers is still stopped and its folder removed.
        let mongo = Self { child, dir, uri: format!("mongodb://127.0.0.1:{port}") };
        eventually("the fresh MongoDB-wire server answers", Duration::from_secs(60), || async {
            let client = mongodb::Client::with_uri_str(&mongo.uri).await?;
            Ok(client.database("admin").run_command(mongodb::bson::doc! {"ping": 1}).await.ok().map(|_| ()))
        })
        .await?;
        Ok(mongo)
    }
}

#[cfg(feature = "media-store")]
impl Drop for FreshMongo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A service's binary run as a process of its own on a free local port, so that its memory
/// can be read; killed when dropped.
pub struct MeasuredService {
    child: Child,
    pub url: String,
}

impl MeasuredService {
    /// Starts `program` with `bind_var` set to a free local port and `env` (logging errors
    /// only), and waits until its `/readyz` answers.
    pub async fn spawn(program: &str, bind_var: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new(program)
            .env(bind_var, format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "error")
            .envs(env.iter().copied())
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let service = Self { child, url: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::new();
        eventually(&format!("{program} ready"), Duration::from_secs(60), || async {
            let ready = http.get(format!("{}/readyz", service.url)).send().await.ok();
            Ok(ready.filter(|r| r.status().is_success()).map(|_| ()))
        })
        .await?;
        Ok(service)
    }

    /// The process's peak resident memory so far.
    pub fn peak_rss_mib(&self) -> anyhow::Result<u64> {
        Ok(status_kib(self.child.id(), "VmHWM").context("the process is gone")? / 1024)
    }
}

impl Drop for MeasuredService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
