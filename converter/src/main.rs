use tunewire_service_runtime::{health, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let config = tunewire_converter::Config::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return Ok(health::healthcheck(config.health_bind.port()).await);
    }
    let _telemetry = telemetry::init("converter");
    let stop = shutdown::on_signal();
    let running = tunewire_converter::start(config, stop.clone()).await?;
    shutdown::drain(running.task, stop, std::time::Duration::from_secs(tunewire_converter::SHUTDOWN_DEADLINE_S)).await;
    Ok(std::process::ExitCode::SUCCESS)
}
