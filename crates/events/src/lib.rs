//! The transport of Tunewire's events over RabbitMQ: the topology they travel on, and the
//! rules for publishing (confirmed, persistent) and consuming (manual ack, retry with
//! backoff, dead-letter on give-up). The events themselves are `tunewire-contract`'s.
//!
//! The setup declares the whole topology; services only check it (passive declares), so an
//! event is never published to an exchange that has no queue bound for it yet.

pub mod bus;
pub mod consumer;
pub mod metrics;
pub mod topology;

pub use bus::{Bus, BusError, Publisher};
pub use consumer::{HandleError, HandleResultExt, Incoming};
