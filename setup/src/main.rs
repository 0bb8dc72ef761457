//! `tunewire-setup`: run once per deployment (a Kubernetes Job, `scripts/run` locally) with
//! the administrators' credentials; the services then run with their own.

use anyhow::Context;
use tunewire_media_store::access::ACCOUNTS;
use tunewire_service_runtime::config::{Env, ExposeSecret, Setting, shared};
use tunewire_service_runtime::telemetry;
use tunewire_setup::broker::{self, Management};
use tunewire_setup::database::{self, OWNERS};
use tunewire_setup::media_store;
use tunewire_setup::settings::{
    AMQP_ADMIN_URL, AMQP_PASSWORDS, DATABASE_ADMIN_URL, DATABASE_PASSWORDS, MIN_PASSWORD_BYTES, MONGODB_ADMIN_URI,
    MONGODB_PASSWORDS, MONITOR_AMQP_PASSWORD, MONITOR_AMQP_USER, RABBITMQ_MANAGEMENT_URL, password_of,
};

/// `service`'s password from `passwords`.
fn password(passwords: &[(&str, Setting)], service: &str) -> anyhow::Result<String> {
    let setting = password_of(passwords, service).with_context(|| format!("no password setting for {service}"))?;
    Ok(setting.get_key(&Env, MIN_PASSWORD_BYTES)?.expose_secret().to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("setup");
    let database_admin_url = DATABASE_ADMIN_URL.get_secret(&Env)?;
    let amqp_admin_url = AMQP_ADMIN_URL.get_secret(&Env)?;
    let mongodb_admin_uri = MONGODB_ADMIN_URI.get_secret(&Env)?;
    let mongodb_prefix: String = shared::MONGODB_DATABASE_PREFIX.get(&Env)?;
    let mut roles = Vec::new();
    for owner in OWNERS {
        roles.push((owner, password(&DATABASE_PASSWORDS, owner.service)?));
    }
    let mut users = Vec::new();
    for service in tunewire_events::topology::SERVICES {
        users.push((service, password(&AMQP_PASSWORDS, service.name())?));
    }
    let mut accounts = Vec::new();
    for account in ACCOUNTS {
        accounts.push((account, password(&MONGODB_PASSWORDS, account.service())?));
    }
    // KEDA's and the management UI's read-only login; left alone when not given.
    let monitor_user: String = MONITOR_AMQP_USER.get(&Env)?;
    let monitor_password = MONITOR_AMQP_PASSWORD.get_key_opt(&Env, MIN_PASSWORD_BYTES)?;

    // The management API takes the same administrator as AMQP; the vhost is the URL's.
    let uri: lapin::uri::AMQPUri =
        amqp_admin_url.expose_secret().parse().map_err(|_| anyhow::anyhow!("AMQP_ADMIN_URL is not an AMQP URL"))?;
    let management = Management {
        url: RABBITMQ_MANAGEMENT_URL.get(&Env)?,
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
