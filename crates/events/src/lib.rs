//! The contract between Tunewire's services: the ids they share, the events they exchange,
//! the RabbitMQ topology those events travel on, and the rules for publishing (confirmed,
//! persistent) and consuming (manual ack, retry with backoff, dead-letter on give-up).
//!
//! Every service declares the whole topology at connect time, so an event is never published
//! to an exchange that has no queue bound for it yet.

pub mod bus;
pub mod consumer;
pub mod contract;
pub mod ids;
pub mod topology;

pub use bus::{Bus, BusError, Publisher};
pub use consumer::{HandleError, HandleResultExt, Incoming};
pub use contract::{
    CatalogChange, Event, JobConverted, JobFailed, JobUpdate, MediaCatalogued, MediaConverted, MediaDeleted,
    MediaExpired, MediaFailed, MediaProgress, MediaUploaded, Message, Outcome, Preset,
};
pub use ids::{Email, FileId, IdError, JobId, UserId};
