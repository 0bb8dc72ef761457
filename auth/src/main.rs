use tunewire_service_runtime::{health, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let config = tunewire_auth::Config::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return Ok(health::healthcheck(config.bind.port()).await);
    }
    telemetry::init("auth");
    let running = tunewire_auth::start(config, shutdown::on_signal()).await?;
    running.task.await?;
    Ok(std::process::ExitCode::SUCCESS)
}
