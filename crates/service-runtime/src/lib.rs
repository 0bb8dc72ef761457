//! What every Tunewire service process has in common: typed configuration from the
//! environment, telemetry, the JSON error contract of its HTTP API, its health, readiness and
//! metrics endpoints, admission of costly work, waiting for dependencies at start, graceful shutdown and the
//! `healthcheck` subcommand.

pub mod admission;
pub mod backoff;
pub mod config;
pub mod health;
pub mod http_error;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod workers;

pub use backoff::Backoff;
pub use config::ConfigError;
pub use health::{Check, Dependencies, HealthRoutes, Readiness, check_with};
pub use http_error::ApiError;
pub use server::spawn_server;
pub use workers::{WorkerStatus, Workers};
