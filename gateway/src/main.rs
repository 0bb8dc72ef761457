use tunewire_service_runtime::{health, shutdown, telemetry};

fn main() -> anyhow::Result<std::process::ExitCode> {
    // The probe child parses untrusted bytes: it starts no runtime and reads no config.
    if std::env::args().nth(1).as_deref() == Some("probe") {
        return Ok(tunewire_gateway::probe::child_main(std::env::args().skip(2)));
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve())
}

async fn serve() -> anyhow::Result<std::process::ExitCode> {
    let config = tunewire_gateway::Config::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return Ok(health::healthcheck(config.bind.port()).await);
    }
    let _telemetry = telemetry::init("gateway");
    let stop = shutdown::on_signal();
    let running = tunewire_gateway::start(config, stop.clone()).await?;
    shutdown::drain(running.task, stop, std::time::Duration::from_secs(tunewire_gateway::SHUTDOWN_DEADLINE_S)).await;
    Ok(std::process::ExitCode::SUCCESS)
}
