//! RabbitMQ: the topology, declared once by the administrator; a user per service whose
//! permissions come from `tunewire_events::topology::Service` (its own queues, its own
//! events); and a monitoring user that can read the management API's figures but no message.

use tunewire_events::topology::{self, EVENTS_EXCHANGE, Service};
use tunewire_service_runtime::config::ExposeSecret;

/// The management API and an administrator's login to it.
#[derive(Debug, Clone)]
pub struct Management {
    pub url: String,
    pub user: String,
    pub password: tunewire_service_runtime::config::SecretString,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerSetupError {
    #[error("declaring the topology: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("management API: {0}")]
    Http(#[from] reqwest::Error),
    #[error("management API refused {what}: HTTP {status}")]
    Refused { what: String, status: u16 },
}

/// Declares the topology on `vhost` (through `amqp_admin_url`, which names it), and sets up
/// each service's user, and the monitoring user's, with the given passwords.
pub async fn apply(
    amqp_admin_url: &str,
    management: &Management,
    vhost: &str,
    services: &[(Service, String)],
    monitor: Option<(&str, &str)>,
) -> Result<(), BrokerSetupError> {
    let connection = lapin::Connection::connect(amqp_admin_url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    topology::declare_all(&channel).await?;
    let _ = connection.close(200, "topology declared".into()).await;

    let api = Api { http: reqwest::Client::new(), management, vhost: encode(vhost) };
    for (service, password) in services {
        let p = service.permissions();
        api.put(&format!("users/{}", encode(service.user)), serde_json::json!({"password": password, "tags": ""}))
            .await?;
        api.put(
            &format!("permissions/{}/{}", api.vhost, encode(service.user)),
            serde_json::json!({"configure": p.configure, "write": p.write, "read": p.read}),
        )
        .await?;
        api.put(
            &format!("topic-permissions/{}/{}", api.vhost, encode(service.user)),
            serde_json::json!({"exchange": EVENTS_EXCHANGE, "write": p.events_write, "read": p.events_read}),
        )
        .await?;
    }
    if let Some((user, password)) = monitor {
        api.put(&format!("users/{}", encode(user)), serde_json::json!({"password": password, "tags": "monitoring"}))
            .await?;
        // Into the vhost (the management API shows it its queues), but no resource.
        api.put(
            &format!("permissions/{}/{}", api.vhost, encode(user)),
            serde_json::json!({"configure": "^$", "write": "^$", "read": "^$"}),
        )
        .await?;
    }
    Ok(())
}

struct Api<'a> {
    http: reqwest::Client,
    management: &'a Management,
    vhost: String,
}

impl Api<'_> {
    async fn put(&self, path: &str, body: serde_json::Value) -> Result<(), BrokerSetupError> {
        let response = self
            .http
            .put(format!("{}/api/{path}", self.management.url.trim_end_matches('/')))
            .basic_auth(&self.management.user, Some(self.management.password.expose_secret()))
            .json(&body)
            .send()
            .await?;
        if !response.status().is_success() {
            // The path names a user or a vhost, never a password.
            return Err(BrokerSetupError::Refused { what: path.to_string(), status: response.status().as_u16() });
        }
        Ok(())
    }
}

/// A path segment as the management API takes it (`/` is the default vhost's name).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(super::encode("/"), "%2F");
        assert_eq!(super::encode("tunewire-gateway"), "tunewire-gateway");
    }
}
