//! Structured logs, one line per event: JSON when `LOG_FORMAT=json` (production), compact
//! text otherwise. Level filter from `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    // A second init (tests start several services in one process) keeps the first.
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.compact().try_init() };
    tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
}
