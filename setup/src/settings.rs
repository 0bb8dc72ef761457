//! What `tunewire-setup` reads: the administrators' credentials and each service's
//! password, which it gives the service's accounts.

use tunewire_service_runtime::config::{Fallback, Setting, shared};

/// Shortest password a service's account may have.
pub const MIN_PASSWORD_BYTES: usize = 16;

pub const DATABASE_ADMIN_URL: Setting = Setting::secret(
    "DATABASE_ADMIN_URL",
    Fallback::Required,
    "a PostgreSQL administrator, to make each service's role and schema",
);
pub const AMQP_ADMIN_URL: Setting = Setting::secret(
    "AMQP_ADMIN_URL",
    Fallback::Required,
    "a RabbitMQ administrator (the management API takes its login; the vhost is its URL's)",
);
pub const MONGODB_ADMIN_URI: Setting = Setting::secret(
    "MONGODB_ADMIN_URI",
    Fallback::Required,
    "a MongoDB user that may create roles and users in `admin`",
);
pub const RABBITMQ_MANAGEMENT_URL: Setting = Setting::new(
    "RABBITMQ_MANAGEMENT_URL",
    "http://127.0.0.1:15672",
    "RabbitMQ's management API, for users and permissions",
);
pub const MONITOR_AMQP_USER: Setting = Setting::new(
    "MONITOR_AMQP_USER",
    "monitor",
    "the read-only monitoring login (management API figures, no message) for KEDA and operators",
);
pub const MONITOR_AMQP_PASSWORD: Setting = Setting::secret(
    "MONITOR_AMQP_PASSWORD",
    Fallback::Unset,
    "its password, at least 16 bytes; no password, the monitoring login is left alone",
);

const fn password(name: &'static str, meaning: &'static str) -> Setting {
    Setting::secret(name, Fallback::Required, meaning)
}

/// Each PostgreSQL schema owner's password, by service.
pub const DATABASE_PASSWORDS: [(&str, Setting); 4] = [
    ("auth", password("AUTH_DATABASE_PASSWORD", "auth's PostgreSQL password, at least 16 bytes")),
    ("gateway", password("GATEWAY_DATABASE_PASSWORD", "the gateway's PostgreSQL password")),
    ("catalog-indexer", password("CATALOG_INDEXER_DATABASE_PASSWORD", "catalog-indexer's PostgreSQL password")),
    ("notifier", password("NOTIFIER_DATABASE_PASSWORD", "the notifier's PostgreSQL password")),
];

/// Each RabbitMQ user's password, by service.
pub const AMQP_PASSWORDS: [(&str, Setting); 4] = [
    ("gateway", password("GATEWAY_AMQP_PASSWORD", "the gateway's RabbitMQ password, at least 16 bytes")),
    ("converter", password("CONVERTER_AMQP_PASSWORD", "the converter's RabbitMQ password")),
    ("catalog-indexer", password("CATALOG_INDEXER_AMQP_PASSWORD", "catalog-indexer's RabbitMQ password")),
    ("notifier", password("NOTIFIER_AMQP_PASSWORD", "the notifier's RabbitMQ password")),
];

/// Each MongoDB user's password, by service.
pub const MONGODB_PASSWORDS: [(&str, Setting); 2] = [
    ("gateway", password("GATEWAY_MONGODB_PASSWORD", "the gateway's MongoDB password, at least 16 bytes")),
    ("converter", password("CONVERTER_MONGODB_PASSWORD", "the converter's MongoDB password")),
];

/// The setting holding `service`'s password in `passwords`.
pub fn password_of(passwords: &[(&str, Setting)], service: &str) -> Option<Setting> {
    passwords.iter().find(|(s, _)| *s == service).map(|(_, setting)| *setting)
}

/// Everything `tunewire-setup` reads.
pub const SETTINGS: &[Setting] = &[
    DATABASE_ADMIN_URL,
    AMQP_ADMIN_URL,
    MONGODB_ADMIN_URI,
    shared::MONGODB_DATABASE_PREFIX,
    RABBITMQ_MANAGEMENT_URL,
    MONITOR_AMQP_USER,
    MONITOR_AMQP_PASSWORD,
    DATABASE_PASSWORDS[0].1,
    DATABASE_PASSWORDS[1].1,
    DATABASE_PASSWORDS[2].1,
    DATABASE_PASSWORDS[3].1,
    AMQP_PASSWORDS[0].1,
    AMQP_PASSWORDS[1].1,
    AMQP_PASSWORDS[2].1,
    AMQP_PASSWORDS[3].1,
    MONGODB_PASSWORDS[0].1,
    MONGODB_PASSWORDS[1].1,
];

#[cfg(all(test, feature = "broker", feature = "media-store"))]
mod tests {
    use super::*;

    #[test]
    fn every_account_setup_makes_has_a_password_setting() {
        for owner in crate::database::OWNERS {
            assert!(password_of(&DATABASE_PASSWORDS, owner.service).is_some(), "{}", owner.service);
        }
        for service in tunewire_events::topology::SERVICES {
            assert!(password_of(&AMQP_PASSWORDS, service.name()).is_some(), "{}", service.name());
        }
        for account in tunewire_media_store::access::ACCOUNTS {
            assert!(password_of(&MONGODB_PASSWORDS, account.service()).is_some(), "{}", account.service());
        }
    }
}
