use tunewire_service_runtime::{health, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let config = tunewire_gateway::Config::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return Ok(health::healthcheck(config.bind.port()).await);
    }
    telemetry::init("gateway");
    let stop = shutdown::on_signal();
    let running = tunewire_gateway::start(config, stop.clone()).await?;
    shutdown::drain(running.task, stop, std::time::Duration::from_secs(tunewire_gateway::SHUTDOWN_DEADLINE_S)).await;
    Ok(std::process::ExitCode::SUCCESS)
}
