use std::process::ExitCode;

use tunewire_service_runtime::{health, shutdown, telemetry};

const USAGE: &str = "usage: tunewire-notifier [healthcheck | send-test-email --to ADDRESS]";

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = tunewire_notifier::Config::from_env()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => {}
        ["healthcheck"] => return Ok(health::healthcheck(config.health_bind.port()).await),
        ["send-test-email", "--to", to] => {
            return Ok(match tunewire_notifier::smtp_check::send_test_email(&config, to).await {
                Ok(()) => {
                    println!("sent a test email to {to} through {}:{}", config.smtp_host, config.smtp_port);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            });
        }
        _ => {
            eprintln!("{USAGE}");
            return Ok(ExitCode::from(2));
        }
    }
    let _telemetry = telemetry::init("notifier");
    let stop = shutdown::on_signal();
    let running = tunewire_notifier::start(config, stop.clone()).await?;
    shutdown::drain(running.task, stop, std::time::Duration::from_secs(tunewire_notifier::SHUTDOWN_DEADLINE_S)).await;
    Ok(ExitCode::SUCCESS)
}
