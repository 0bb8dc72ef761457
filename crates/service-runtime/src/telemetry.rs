//! Structured logs, one line per event: JSON when `LOG_FORMAT=json` (production), compact
//! text otherwise. Level filter from `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::{Env, Setting};

const LOG_FILTER: Setting = Setting::new("RUST_LOG", "info", "log level filter (`tunewire_gateway=debug,info`)");
const LOG_FORMAT: Setting = Setting::new("LOG_FORMAT", "text", "`json` for one JSON object per line");

/// What every service reads for its logs.
pub const SETTINGS: &[Setting] = &[LOG_FILTER, LOG_FORMAT];

pub fn init(service: &'static str) {
    let directives = LOG_FILTER.get::<String>(&Env).unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = LOG_FORMAT.get::<String>(&Env).is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    // A second init (tests start several services in one process) keeps the first.
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.compact().try_init() };
    tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
}
