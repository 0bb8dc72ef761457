use std::process::ExitCode;

use anyhow::Context;
use tunewire_service_runtime::{health, shutdown, telemetry};

const USAGE: &str = "usage: tunewire-auth [healthcheck | create-admin --email ADDRESS]";

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = tunewire_auth::Config::from_env()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => {}
        ["healthcheck"] => return Ok(health::healthcheck(config.bind.port()).await),
        ["create-admin", "--email", email] => {
            let email = email.parse().context("--email")?;
            tunewire_auth::create_admin(&config, &email).await?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {
            eprintln!("{USAGE}");
            return Ok(ExitCode::from(2));
        }
    }
    let _telemetry = telemetry::init("auth");
    let stop = shutdown::on_signal();
    let running = tunewire_auth::start(config, stop.clone()).await?;
    shutdown::drain(running.task, stop, std::time::Duration::from_secs(tunewire_auth::SHUTDOWN_DEADLINE_S)).await;
    Ok(ExitCode::SUCCESS)
}
