//! Least privilege behind the services, set up once with the administrators' credentials:
//! a PostgreSQL role per service owning only its schema (`database`), a RabbitMQ user per
//! service allowed only its queues and its events, a read-only monitoring user, and the bus's
//! topology (`broker`), and a MongoDB user per service allowed only its part of the media
//! store (`media_store`). Idempotent: run at every deployment.

#[cfg(feature = "broker")]
pub mod broker;
pub mod database;
#[cfg(feature = "media-store")]
pub mod media_store;
pub mod settings;
