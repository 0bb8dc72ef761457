use tunewire_service_runtime::{health, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let config = tunewire_notifier::Config::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return Ok(health::healthcheck(config.health_bind.port()).await);
    }
    telemetry::init("notifier");
    let running = tunewire_notifier::start(config, shutdown::on_signal()).await?;
    running.task.await?;
    Ok(std::process::ExitCode::SUCCESS)
}
