//! A converter or notifier as a real process a scenario can SIGKILL: this test binary run
//! again with `TUNEWIRE_FAULTS_ROLE`, configured through the service's own environment
//! variables, printing `ready <health address>` once it is up.

use std::net::SocketAddr;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

pub const ROLE_VAR: &str = "TUNEWIRE_FAULTS_ROLE";
/// Set on a notifier process: it aborts right after the SMTP server accepts its first email.
pub const CRASH_AFTER_SEND_VAR: &str = "TUNEWIRE_FAULTS_CRASH_AFTER_SEND";

/// Set on a converter process: it aborts as each conversion starts, as FFmpeg would crash
/// inside a file that breaks it.
pub const CRASH_IN_TRANSCODE_VAR: &str = "TUNEWIRE_FAULTS_CRASH_IN_TRANSCODE";

/// Printed by a service process that panicked; the suite counts it with its own.
const PANIC_MARK: &str = "PANICKED: ";

pub fn run_role(role: &str) -> ExitCode {
    tunewire_test_stack::init_tracing();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        println!("{PANIC_MARK}{info}");
        default_hook(info);
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{role}: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{role}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(role: &str) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let (addr, task) = match role {
        "converter" => {
            if std::env::var_os(CRASH_IN_TRANSCODE_VAR).is_some() {
                fail::cfg("converter::transcode", "return").map_err(anyhow::Error::msg)?;
            }
            let running = tunewire_converter::start(tunewire_converter::Config::from_env()?, shutdown).await?;
            (running.health_addr, running.task)
        }
        "notifier" => {
            if std::env::var_os(CRASH_AFTER_SEND_VAR).is_some() {
                fail::cfg("notifier::after_smtp_send", "return").map_err(anyhow::Error::msg)?;
            }
            let running = tunewire_notifier::start(tunewire_notifier::Config::from_env()?, shutdown).await?;
            (running.health_addr, running.task)
        }
        other => bail!("unknown role {other}"),
    };
    println!("ready {addr}");
    task.await?;
    Ok(())
}

pub struct ServiceProcess {
    child: tokio::process::Child,
    pub health: SocketAddr,
}

impl ServiceProcess {
    pub async fn spawn(role: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .env(ROLE_VAR, role)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .with_context(|| format!("{role} did not start within 60 s"))??
            .with_context(|| format!("{role} exited before it was ready"))?;
        let health = first.strip_prefix("ready ").with_context(|| format!("{role} said {first:?}"))?.parse()?;
        // Its logs go on to the suite's output.
        let role = role.to_string();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with(PANIC_MARK) {
                    crate::PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                println!("  [{role}] {line}");
            }
        });
        Ok(Self { child, health })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, then reap it.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Waits, without limit, for the process to end on its own.
    pub async fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        Ok(self.child.wait().await?)
    }

    /// Waits for the process to end on its own.
    pub async fn exited(mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        Ok(tokio::time::timeout(within, self.child.wait()).await.context("the process did not exit")??)
    }
}
