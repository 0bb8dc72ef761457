//! `tunewire-setup`: run once per deployment (a Kubernetes Job, `scripts/run` locally) with
//! the administrators' credentials; the services then run with their own.

use anyhow::Context;
use tunewire_media_store::access::ACCOUNTS;
use tunewire_service_runtime::config::{ExposeSecret, required_secret, required_secret_key, secret_key, var};
use tunewire_service_runtime::telemetry;
use tunewire_setup::broker::{self, Management};
use tunewire_setup::database::{self, OWNERS};
use tunewire_setup::media_store;

/// Shortest password a service's account may have.
const MIN_PASSWORD_BYTES: usize = 16;

/// `CATALOG_INDEXER` for `catalog-indexer`: the prefix of the service's settings.
fn prefix(service: &str) -> String {
    service.to_ascii_uppercase().replace('-', "_")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    telemetry::init("setup");
    let database_admin_url = required_secret("DATABASE_ADMIN_URL")?;
    let amqp_admin_url = required_secret("AMQP_ADMIN_URL")?;
    let mongodb_admin_uri = required_secret("MONGODB_ADMIN_URI")?;
    let mongodb_prefix: String = var("MONGODB_DATABASE_PREFIX", "tunewire".to_string())?;
    let mut roles = Vec::new();
    for owner in OWNERS {
        let password =
            required_secret_key(&format!("{}_DATABASE_PASSWORD", prefix(owner.service)), MIN_PASSWORD_BYTES)?;
        roles.push((owner, password.expose_secret().to_string()));
    }
    let mut users = Vec::new();
    for service in tunewire_events::topology::SERVICES {
        let name = service.name();
        let password = required_secret_key(&format!("{}_AMQP_PASSWORD", prefix(name)), MIN_PASSWORD_BYTES)?;
        users.push((service, password.expose_secret().to_string()));
    }
    let mut accounts = Vec::new();
    for account in ACCOUNTS {
        let password =
            required_secret_key(&format!("{}_MONGODB_PASSWORD", prefix(account.service())), MIN_PASSWORD_BYTES)?;
        accounts.push((account, password.expose_secret().to_string()));
    }
    // KEDA's and the management UI's read-only login; left alone when not given.
    let monitor_user: String = var("MONITOR_AMQP_USER", "monitor".to_string())?;
    let monitor_password = secret_key("MONITOR_AMQP_PASSWORD", MIN_PASSWORD_BYTES)?;

    // The management API takes the same administrator as AMQP; the vhost is the URL's.
    let uri: lapin::uri::AMQPUri =
        amqp_admin_url.expose_secret().parse().map_err(|_| anyhow::anyhow!("AMQP_ADMIN_URL is not an AMQP URL"))?;
    let management = Management {
        url: var("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672".to_string())?,
        user: uri.authority.userinfo.username.clone(),
        password: uri.authority.userinfo.password.clone().into(),
    };
    database::apply(database_admin_url.expose_secret(), &roles).await.context("PostgreSQL roles and schemas")?;
    tracing::info!(roles = roles.len(), "postgres: each service's role owns its schema");
    let monitor = monitor_password.as_ref().map(|p| (monitor_user.as_str(), p.expose_secret()));
    broker::apply(amqp_admin_url.expose_secret(), &management, &uri.vhost, &users, monitor)
        .await
        .context("RabbitMQ users, permissions and topology")?;
    tracing::info!(users = users.len(), vhost = %uri.vhost, "rabbitmq: topology declared, each service's user set up");
    media_store::apply(mongodb_admin_uri.expose_secret(), &mongodb_prefix, &accounts)
        .await
        .context("MongoDB users and roles")?;
    tracing::info!(users = accounts.len(), prefix = %mongodb_prefix, "mongodb: each service's user holds only its role");
    Ok(())
}
