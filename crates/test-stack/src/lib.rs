//! Test support: where the local stack is, and a `Sandbox` per test (its own PostgreSQL
//! database, RabbitMQ vhost and MongoDB databases) so tests run in parallel without seeing
//! each other's jobs. Addresses come from the same variables the services read. The vhost
//! comes with the `broker` feature, the MongoDB databases with `media-store`: without them
//! a sandbox is a database only, and the crate compiles no broker or MongoDB client.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
#[cfg(feature = "broker")]
use serde_json::Value;
#[cfg(feature = "broker")]
use tunewire_events::topology::SERVICES;
#[cfg(feature = "media-store")]
use tunewire_media_store::Bucket;
#[cfg(feature = "media-store")]
use tunewire_media_store::access::{ACCOUNTS, Account};
use tunewire_setup::database::OWNERS;

pub mod balancer;
pub mod bench;
pub mod maildev;
pub mod media;
pub mod proxy;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

/// The local stack's addresses (defaults match `scripts/stack`).
#[derive(Debug, Clone)]
pub struct Stack {
    pub database_url: String,
    pub amqp_url: String,
    pub management_url: String,
    pub management_user: (String, String),
    pub monitor_user: (String, String),
    /// As the administrator, who may do anything: tests' own looks and changes.
    pub mongo_uri: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub maildev_url: String,
}

impl Stack {
    pub fn from_env() -> Self {
        Self {
            database_url: env_or("DATABASE_URL", "postgres://tunewire:tunewire@127.0.0.1:5432/tunewire"),
            amqp_url: env_or("AMQP_URL", "amqp://tunewire:tunewire@127.0.0.1:5672/%2f"),
            management_url: env_or("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672"),
            management_user: ("tunewire".into(), "tunewire".into()),
            monitor_user: ("monitor".into(), "monitor".into()),
            mongo_uri: env_or("MONGODB_URI", "mongodb://tunewire:tunewire@127.0.0.1:27017"),
            smtp_host: env_or("SMTP_HOST", "127.0.0.1"),
            smtp_port: env_or("SMTP_PORT", "1025").parse().unwrap_or(1025),
            maildev_url: env_or("MAILDEV_URL", "http://127.0.0.1:1080"),
        }
    }
}

/// One test's private corner of the stack.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub stack: Stack,
    pub name: String,
    pub database_url: String,
    pub amqp_url: String,
    pub vhost: String,
    /// Names the sandbox's media-store databases (`Bucket::database`).
    pub mongo_prefix: String,
}

impl Sandbox {
    pub async fn create() -> anyhow::Result<Self> {
        init_tracing();
        let stack = Stack::from_env();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());

        let admin = sqlx::postgres::PgPool::connect(&stack.database_url)
            .await
            .context("PostgreSQL is not reachable: run scripts/stack up")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await?;
        admin.close().await;
        let database_url = replace_path(&stack.database_url, &name);
        // Each service's role, as `tunewire-setup` makes it; tests that do not ask for a
        // service's own credentials use the administrator's.
        let roles: Vec<_> = OWNERS.iter().map(|o| (*o, local_password(o.role))).collect();
        tunewire_setup::database::apply(&database_url, &roles).await.context("setting up the sandbox's roles")?;
        #[cfg(feature = "broker")]
        Self::create_vhost(&stack, &name).await?;
        #[cfg(feature = "media-store")]
        {
            let accounts: Vec<_> = ACCOUNTS.iter().map(|a| (*a, local_password(&a.user(&name)))).collect();
            tunewire_setup::media_store::apply(&stack.mongo_uri, &name, &accounts)
                .await
                .context("setting up the sandbox's media-store users: is MongoDB up (scripts/stack up)?")?;
        }
        let amqp_url = replace_path(&stack.amqp_url, &name);
        Ok(Self { database_url, amqp_url, vhost: name.clone(), mongo_prefix: name.clone(), name, stack })
    }

    /// The sandbox's vhost with each service's RabbitMQ user, as `tunewire-setup` makes them.
    #[cfg(feature = "broker")]
    async fn create_vhost(stack: &Stack, name: &str) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let (user, pass) = &stack.management_user;
        let vhost_url = format!("{}/api/vhosts/{name}", stack.management_url);
        let put = http
            .put(&vhost_url)
            .basic_auth(user, Some(pass))
            .json(&serde_json::json!({}))
            .send()
            .await
            .context("RabbitMQ management API is not reachable: run scripts/stack up")?;
        if !put.status().is_success() {
            bail!("creating vhost {name}: {}", put.status());
        }
        let url = format!("{}/api/permissions/{name}/{user}", stack.management_url);
        let body = serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"});
        let resp = http.put(&url).basic_auth(user, Some(pass)).json(&body).send().await?;
        if !resp.status().is_success() {
            bail!("granting {user} on vhost {name}: {}", resp.status());
        }
        let amqp_url = replace_path(&stack.amqp_url, name);
        let users: Vec<_> = SERVICES.iter().map(|s| (*s, local_password(s.user))).collect();
        let management = tunewire_setup::broker::Management {
            url: stack.management_url.clone(),
            user: user.clone(),
            password: pass.clone().into(),
        };
        let monitor = Some((stack.monitor_user.0.as_str(), stack.monitor_user.1.as_str()));
        tunewire_setup::broker::apply(&amqp_url, &management, name, &users, monitor)
            .await
            .context("setting up the sandbox's broker")
    }

    /// The sandbox's database as `service`'s own role (`tunewire_setup::database::OWNERS`).
    pub fn database_url_for(&self, service: &str) -> anyhow::Result<String> {
        let owner = OWNERS.iter().find(|o| o.service == service).with_context(|| format!("no schema for {service}"))?;
        Ok(with_login(&self.database_url, owner.role, &local_password(owner.role)))
    }

    /// The sandbox's vhost as `service`'s own RabbitMQ user.
    #[cfg(feature = "broker")]
    pub fn amqp_url_for(&self, service: tunewire_events::topology::Service) -> String {
        with_login(&self.amqp_url, service.user, &local_password(service.user))
    }

    /// The sandbox's media store as `account`'s own user.
    #[cfg(feature = "media-store")]
    pub fn mongo_uri_for(&self, account: Account) -> String {
        let user = account.user(&self.mongo_prefix);
        with_login(&self.stack.mongo_uri, &user, &local_password(&user))
    }

    /// The name of the sandbox's database holding `bucket`.
    #[cfg(feature = "media-store")]
    pub fn mongo_database(&self, bucket: Bucket) -> String {
        bucket.database(&self.mongo_prefix)
    }

    /// The name of the sandbox's database holding the bookkeeping of `bucket`'s writers.
    #[cfg(feature = "media-store")]
    pub fn mongo_outputs_database(&self, bucket: Bucket) -> String {
        bucket.outputs_database(&self.mongo_prefix)
    }

    /// Drops what `create` made. Tests call it at the end; a failed test leaves its sandbox
    /// behind for inspection (removed by `scripts/stack reset`).
    pub async fn cleanup(self) -> anyhow::Result<()> {
        let admin = sqlx::postgres::PgPool::connect(&self.stack.database_url).await?;
        // FORCE may not end an autovacuum worker busy in the database (the roles' setup leaves
        // it catalog work): that refusal passes once the worker is done.
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        eventually("the sandbox's database dropped", Duration::from_secs(30), || async {
            match sqlx::query(sqlx::AssertSqlSafe(drop.clone())).execute(&admin).await {
                Ok(_) => Ok(Some(())),
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        #[cfg(feature = "broker")]
        {
            let (user, pass) = &self.stack.management_user;
            reqwest::Client::new()
                .delete(format!("{}/api/vhosts/{}", self.stack.management_url, self.vhost))
                .basic_auth(user, Some(pass))
                .send()
                .await?;
        }
        #[cfg(feature = "media-store")]
        {
            tunewire_setup::media_store::remove(&self.stack.mongo_uri, &self.mongo_prefix, &ACCOUNTS).await?;
            let mongo = mongodb::Client::with_uri_str(&self.stack.mongo_uri).await?;
            for bucket in [Bucket::Uploads, Bucket::Audio] {
                mongo.database(&self.mongo_database(bucket)).drop().await?;
                mongo.database(&bucket.outputs_database(&self.mongo_prefix)).drop().await?;
            }
        }
        Ok(())
    }

    /// The management API's view of this sandbox's queues.
    #[cfg(feature = "broker")]
    pub async fn queues(&self) -> anyhow::Result<Vec<Value>> {
        let (user, pass) = &self.stack.management_user;
        let resp = reqwest::Client::new()
            .get(format!("{}/api/queues/{}", self.stack.management_url, self.vhost))
            .basic_auth(user, Some(pass))
            .send()
            .await?
            .error_for_status()?;
        Ok(resp.json().await?)
    }
}

#[cfg(feature = "broker")]
impl Sandbox {
    /// A counter of the management API's `message_stats` for one queue (`ack`, `redeliver`,
    /// ...), 0 before any. The API refreshes its figures every few seconds: poll it.
    pub async fn queue_stat(&self, queue: &str, stat: &str) -> anyhow::Result<u64> {
        let queues = self.queues().await?;
        Ok(queues.iter().find(|q| q["name"] == queue).and_then(|q| q["message_stats"][stat].as_u64()).unwrap_or(0))
    }

    /// Takes (and acknowledges) up to `max` messages waiting in `queue` of this sandbox,
    /// decoded as JSON: the test stands where the queue's consumer would.
    pub async fn take(&self, queue: &str, max: usize) -> anyhow::Result<Vec<Value>> {
        use lapin::options::BasicGetOptions;
        let conn = lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(msg) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await? else { break };
            taken.push(serde_json::from_slice(&msg.delivery.data)?);
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(taken)
    }
}

/// The password of a service's account on the local stack (and in tests): local only.
pub fn local_password(account: &str) -> String {
    format!("local-{account}-password")
}

/// `url` (`scheme://user:password@host...`) with another login.
fn with_login(url: &str, user: &str, password: &str) -> String {
    let start = url.find("://").map(|i| i + 3).unwrap_or(0);
    let host = url[start..].find('@').map(|i| start + i + 1).unwrap_or(start);
    format!("{}{user}:{password}@{}", &url[..start], &url[host..])
}

/// Replaces the path of a URL (`scheme://auth@host:port/path`) with `path`.
fn replace_path(url: &str, path: &str) -> String {
    let start = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[start..].find('/') {
        Some(i) => format!("{}/{path}", &url[..start + i]),
        None => format!("{url}/{path}"),
    }
}

/// `mongo_uri` with `directConnection=true`: SecantusDB announces itself as a one-member
/// replica set at its own address, which a driver would follow around a proxy.
pub fn direct_connection(mongo_uri: &str) -> String {
    let separator = match (mongo_uri.contains('?'), mongo_uri.trim_start_matches("mongodb://").contains('/')) {
        (true, _) => "&",
        (false, true) => "?",
        (false, false) => "/?",
    };
    format!("{mongo_uri}{separator}directConnection=true")
}

/// A binary of the workspace, built beside the running test (`cargo test --workspace`
/// builds every service's binary): for code that starts one as a child, such as the
/// gateway's probe.
pub fn workspace_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(|deps| deps.parent()).ok_or_else(|| anyhow::anyhow!("no target folder"))?;
    let path = dir.join(name);
    anyhow::ensure!(path.exists(), "{} is not built: run `cargo build --workspace` first", path.display());
    Ok(path)
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// Polls `probe` until it yields `Some`, or fails after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => bail!("{what}: not within {timeout:?}; last error: {e:#}"),
                None => bail!("{what}: not within {timeout:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_path_swaps_the_database_or_vhost() {
        assert_eq!(replace_path("postgres://u:p@h:5432/tunewire", "t_1"), "postgres://u:p@h:5432/t_1");
        assert_eq!(replace_path("amqp://u:p@h:5672/%2f", "t_1"), "amqp://u:p@h:5672/t_1");
        assert_eq!(replace_path("amqp://h:5672", "v"), "amqp://h:5672/v");
    }
}
