use tunewire_service_runtime::{health, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let config = tunewire_catalog_indexer::Config::from_env()?;
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("healthcheck") => return Ok(health::healthcheck(config.bind.port()).await),
        Some("reindex") => {
            let count = tunewire_catalog_indexer::reindex(&config).await?;
            println!("search index rebuilt: {count} tracks");
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Some(_) => {
            eprintln!("usage: tunewire-catalog-indexer [healthcheck | reindex]");
            return Ok(std::process::ExitCode::from(2));
        }
    }
    let _telemetry = telemetry::init("catalog-indexer");
    let stop = shutdown::on_signal();
    let running = tunewire_catalog_indexer::start(config, stop.clone()).await?;
    shutdown::drain(running.task, stop, std::time::Duration::from_secs(tunewire_catalog_indexer::SHUTDOWN_DEADLINE_S))
        .await;
    Ok(std::process::ExitCode::SUCCESS)
}
