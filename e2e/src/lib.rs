//! The whole pipeline, every hop real: the five services run in-process on random ports
//! against a private sandbox of the local stack; only Last.fm is a local fake. Production's
//! shape: two replicas of the gateway, the converter and the notifier, the gateways behind a
//! balancer that routes like a Kubernetes Service (to replicas whose readiness probe passes).
//! Every service reaches PostgreSQL, RabbitMQ, MongoDB and SMTP through a TCP proxy that a
//! test can cut (`Pipeline::faults`), while the test itself talks to the stack directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tunewire_media_store::access::{ACCOUNTS, Account};
use tunewire_test_stack::balancer::{Balancer, Probe};
use tunewire_test_stack::proxy::{Proxy, host_port};
use tunewire_test_stack::{Sandbox, eventually, maildev};

pub const PIPELINE_DEADLINE: Duration = Duration::from_secs(90);

/// The gateway's readiness probe as `k8s/base/gateway.yaml` states it (k8s/check.py holds
/// the two equal): the balancer judges replicas as a kubelet would.
pub const GATEWAY_READINESS_PROBE: Probe =
    Probe { period: Duration::from_secs(10), timeout: Duration::from_secs(2), failure_threshold: 2 };

/// What a test changes about the pipeline it starts.
#[derive(Debug, Clone)]
pub struct Options {
    /// The converter runs in-process; off when the test runs it as a process it can kill.
    pub converter: bool,
    /// Likewise for the notifier.
    pub notifier: bool,
    /// The converter's duration limit.
    pub max_duration_s: f64,
    pub notifier_claim_lease_s: u64,
    /// Every dependency is unreachable when the services start, and comes back after this long.
    pub down_at_start: Option<Duration>,
    /// Replicas of the gateway, and of the converter and notifier when they run in-process.
    pub replicas: usize,
    /// The gateways' retention policy, when a test needs a short one.
    pub retention: Option<tunewire_gateway::retention::Policy>,
    /// An admin account auth makes at start: (email, password).
    pub admin: Option<(String, String)>,
    /// How long auth's tokens last, when a test needs them to expire.
    pub token_ttl_s: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            converter: true,
            notifier: true,
            max_duration_s: 4.0 * 3600.0,
            notifier_claim_lease_s: 120,
            down_at_start: None,
            replicas: 2,
            retention: None,
            admin: None,
            token_ttl_s: None,
        }
    }
}

/// One proxy per dependency: `down()` is that dependency going away for every service.
pub struct Faults {
    pub postgres: Proxy,
    pub rabbitmq: Proxy,
    pub mongodb: Proxy,
    pub smtp: Proxy,
}

/// Where the services reach their dependencies (through the proxies), each with its own
/// login: the role and RabbitMQ and MongoDB users `tunewire-setup` gives it, as in production.
#[derive(Debug, Clone)]
pub struct ServiceUrls {
    databases: std::collections::BTreeMap<&'static str, String>,
    brokers: std::collections::BTreeMap<&'static str, String>,
    media_stores: Vec<(Account, String)>,
    pub smtp_host: String,
    pub smtp_port: u16,
}

impl ServiceUrls {
    /// PostgreSQL as `service`'s role (`auth`, `gateway`, `catalog-indexer`, `notifier`).
    pub fn database(&self, service: &str) -> String {
        self.databases.get(service).cloned().unwrap_or_default()
    }

    /// RabbitMQ as `service`'s user (`gateway`, `converter`, `catalog-indexer`, `notifier`).
    pub fn amqp(&self, service: &str) -> String {
        self.brokers.get(service).cloned().unwrap_or_default()
    }

    /// MongoDB as `account`'s user.
    pub fn mongo(&self, account: Account) -> String {
        self.media_stores.iter().find(|(a, _)| *a == account).map(|(_, uri)| uri.clone()).unwrap_or_default()
    }
}

/// Each service's HTTP addresses (one per replica), for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub gateway: Vec<SocketAddr>,
    pub auth: Vec<SocketAddr>,
    pub catalog: Vec<SocketAddr>,
    pub converter: Vec<SocketAddr>,
    pub notifier: Vec<SocketAddr>,
}

pub struct Pipeline {
    pub sandbox: Sandbox,
    /// The balancer's URL: what a client of the public API reaches.
    pub gateway: String,
    pub balancer: Balancer,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub scratch: PathBuf,
    pub faults: Faults,
    pub urls: ServiceUrls,
    pub link_secret: String,
    pub health: Health,
}

/// A stand-in for Last.fm's `track.getTopTags`: one tag, given as an object (a real quirk).
pub async fn fake_lastfm(shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    use warp::Filter;
    let route = warp::any()
        .map(|| warp::reply::json(&json!({"toptags": {"tag": {"name": "Electronic", "count": "77"}, "@attr": {}}})));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(warp::serve(route).incoming(listener).graceful(shutdown.cancelled_owned()).run());
    Ok(addr)
}

impl Pipeline {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> anyhow::Result<Self> {
        let sandbox = Sandbox::create().await?;
        let shutdown = CancellationToken::new();
        let scratch = std::env::temp_dir().join(format!("tw-e2e-{}", sandbox.name));
        std::fs::create_dir_all(&scratch)?;
        let link_secret = format!("link-secret-{}", sandbox.name);
        let lastfm = fake_lastfm(shutdown.clone()).await?;
        let stack = &sandbox.stack;
        let faults = Faults {
            postgres: Proxy::start(host_port(&sandbox.database_url)).await?,
            rabbitmq: Proxy::start(host_port(&sandbox.amqp_url)).await?,
            mongodb: Proxy::start(host_port(&stack.mongo_uri)).await?,
            smtp: Proxy::start(format!("{}:{}", stack.smtp_host, stack.smtp_port)).await?,
        };
        let mut databases = std::collections::BTreeMap::new();
        for owner in tunewire_setup::database::OWNERS {
            databases.insert(owner.service, faults.postgres.url_for(&sandbox.database_url_for(owner.service)?));
        }
        let brokers = tunewire_events::topology::SERVICES
            .iter()
            .map(|s| (s.name(), faults.rabbitmq.url_for(&sandbox.amqp_url_for(*s))))
            .collect();
        let urls = ServiceUrls {
            databases,
            brokers,
            media_stores: ACCOUNTS
                .iter()
                .map(|a| {
                    let uri = faults.mongodb.url_for(&sandbox.mongo_uri_for(*a));
                    (*a, tunewire_test_stack::direct_connection(&uri))
                })
                .collect(),
            smtp_host: faults.smtp.addr.ip().to_string(),
            smtp_port: faults.smtp.addr.port(),
        };
        if let Some(outage) = options.down_at_start {
            let proxies =
                [&faults.postgres, &faults.rabbitmq, &faults.mongodb, &faults.smtp].map(std::clone::Clone::clone);
            proxies.iter().for_each(Proxy::down);
            tokio::spawn(async move {
                tokio::time::sleep(outage).await;
                proxies.iter().for_each(Proxy::up);
            });
        }
        let mut health = Health::default();

        let mut auth_config = tunewire_auth::Config::local(urls.database("auth"));
        if let Some((email, password)) = &options.admin {
            let email = email.parse().map_err(|e| anyhow::anyhow!("admin email {email:?}: {e}"))?;
            auth_config.admin = Some((email, password.clone().into()));
        }
        if let Some(ttl) = options.token_ttl_s {
            auth_config.token_ttl_s = ttl;
        }
        let auth = tunewire_auth::start(auth_config, shutdown.clone()).await?;
        health.auth.push(auth.addr);
        let catalog = tunewire_catalog_indexer::start(
            tunewire_catalog_indexer::Config {
                lastfm_api_key: Some("test-key".into()),
                lastfm_url: format!("http://{lastfm}/2.0/"),
                ..tunewire_catalog_indexer::Config::local(
                    urls.database("catalog-indexer"),
                    urls.amqp("catalog-indexer"),
                    scratch.join("index"),
                )
            },
            shutdown.clone(),
        )
        .await?;
        health.catalog.push(catalog.addr);
        let mut gateway_config = tunewire_gateway::Config::local(
            urls.database("gateway"),
            urls.amqp("gateway"),
            urls.mongo(Account::Gateway),
            sandbox.mongo_prefix.clone(),
        );
        gateway_config.auth_url = format!("http://{}", auth.addr);
        gateway_config.catalog_url = format!("http://{}", catalog.addr);
        gateway_config.link_secret = link_secret.clone().into();
        gateway_config.probe_program = tunewire_test_stack::workspace_binary("tunewire-gateway")?;
        gateway_config.max_upload_bytes = 512 << 20;
        // Short, so that the fault suite's stalling client is answered quickly.
        gateway_config.upload_idle_timeout = Duration::from_secs(5);
        // The fault suite's bursts (up to 60 clips from one user, queued while RabbitMQ is
        // away) are the load under test, not an abuse to refuse.
        gateway_config.quotas = tunewire_gateway::quotas::Quotas { jobs_in_progress: 1_000, stored_bytes: i64::MAX };
        if let Some(retention) = options.retention {
            gateway_config.retention = retention;
        }
        for _ in 0..options.replicas.max(1) {
            let gateway = tunewire_gateway::start(gateway_config.clone(), shutdown.clone()).await?;
            health.gateway.push(gateway.addr);
        }
        let balancer = Balancer::start(&health.gateway, GATEWAY_READINESS_PROBE).await?;
        let gateway_url = format!("http://{}", balancer.addr);
        for _ in 0..options.replicas.max(1) * usize::from(options.converter) {
            let converter = tunewire_converter::start(
                tunewire_converter::Config {
                    concurrency: 2,
                    max_duration_s: options.max_duration_s,
                    ..tunewire_converter::Config::local(
                        urls.amqp("converter"),
                        urls.mongo(Account::Converter),
                        sandbox.mongo_prefix.clone(),
                    )
                },
                shutdown.clone(),
            )
            .await?;
            health.converter.push(converter.health_addr);
        }
        for _ in 0..options.replicas.max(1) * usize::from(options.notifier) {
            let mut notifier_config = tunewire_notifier::Config::local(
                urls.database("notifier"),
                urls.amqp("notifier"),
                urls.smtp_host.clone(),
                urls.smtp_port,
                link_secret.clone(),
            );
            notifier_config.public_url = gateway_url.clone();
            notifier_config.claim_lease_s = options.notifier_claim_lease_s;
            let notifier = tunewire_notifier::start(notifier_config, shutdown.clone()).await?;
            health.notifier.push(notifier.health_addr);
        }
        Ok(Self {
            sandbox,
            gateway: gateway_url,
            balancer,
            http: reqwest::Client::new(),
            shutdown,
            scratch,
            faults,
            urls,
            link_secret,
            health,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.scratch);
        self.sandbox.cleanup().await
    }

    /// Registers a fresh user and returns (email, bearer token).
    pub async fn user(&self) -> anyhow::Result<(String, String)> {
        let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
        let creds = json!({"email": email, "password": "correct horse battery"});
        let r = self.http.post(format!("{}/v1/auth/register", self.gateway)).json(&creds).send().await?;
        if r.status() != 201 {
            bail!("register: {} {}", r.status(), r.text().await?);
        }
        let r = self.http.post(format!("{}/v1/auth/login", self.gateway)).json(&creds).send().await?;
        let body: Value = r.error_for_status()?.json().await?;
        Ok((email, body["access_token"].as_str().context("no token")?.to_string()))
    }

    /// A multipart upload of `path` under `name`, with extra form fields.
    pub async fn upload_with(
        &self,
        token: &str,
        path: &Path,
        name: &str,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        let bytes = tokio::fs::read(path).await?;
        let mut form = reqwest::multipart::Form::new();
        for (key, value) in fields {
            form = form.text(key.to_string(), value.to_string());
        }
        let form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()));
        Ok(self.http.post(format!("{}/v1/uploads", self.gateway)).bearer_auth(token).multipart(form).send().await?)
    }

    pub async fn upload(&self, token: &str, path: &Path, name: &str) -> anyhow::Result<reqwest::Response> {
        self.upload_with(token, path, name, &[]).await
    }

    pub async fn job(&self, token: &str, id: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self.http.get(format!("{}/v1/jobs/{id}", self.gateway)).bearer_auth(token).send().await?)
    }

    pub async fn wait_for_state(&self, token: &str, id: &str, wanted: &str) -> anyhow::Result<Value> {
        eventually(&format!("job {id} {wanted}"), PIPELINE_DEADLINE, || async {
            let job: Value = self.job(token, id).await?.error_for_status()?.json().await?;
            match job["state"].as_str() {
                Some(s) if s == wanted => Ok(Some(job)),
                Some("failed") if wanted != "failed" => bail!("job failed: {}", job["error"]),
                _ => Ok(None),
            }
        })
        .await
    }

    /// Publishes `body` on the events exchange as any service would (persistent, confirmed),
    /// past every service's checks: how a test delivers a duplicate or a poison message.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) -> anyhow::Result<()> {
        use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
        let conn = lapin::Connection::connect(&self.sandbox.amqp_url, lapin::ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let properties = lapin::BasicProperties::default().with_delivery_mode(2);
        let options = BasicPublishOptions::default();
        channel.basic_publish("tunewire.events".into(), routing_key.into(), options, body, properties).await?.await?;
        conn.close(200, "published".into()).await?;
        Ok(())
    }

    /// The sum of every series of `name` whose labels contain `labels`, over `replicas`'
    /// `/metrics` (0 when none has it yet).
    pub async fn metric(&self, replicas: &[SocketAddr], name: &str, labels: &str) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for replica in replicas {
            let text =
                self.http.get(format!("http://{replica}/metrics")).send().await?.error_for_status()?.text().await?;
            for line in text.lines() {
                let Some(rest) = line.strip_prefix(name) else { continue };
                let (series, value) = rest.rsplit_once(' ').unwrap_or_default();
                let bare = series.is_empty() && labels.is_empty();
                if bare || (series.starts_with('{') && series.contains(labels)) {
                    total += value.parse::<f64>()?;
                }
            }
        }
        Ok(total)
    }

    pub async fn emails(&self, to: &str, count: usize) -> anyhow::Result<Vec<Value>> {
        maildev::wait_for(&self.sandbox.stack.maildev_url, to, count, PIPELINE_DEADLINE).await
    }

    /// Messages waiting in one queue of this sandbox, by the management API (refreshed every
    /// few seconds: poll it).
    pub async fn depth(&self, queue: &str) -> anyhow::Result<Option<u64>> {
        Ok(self.sandbox.queues().await?.iter().find(|q| q["name"] == queue).and_then(|q| q["messages"].as_u64()))
    }
}

/// `/readyz` of a service: whether it said ready (200), and its report.
pub async fn readiness(http: &reqwest::Client, addr: SocketAddr) -> anyhow::Result<(bool, Value)> {
    let resp = http.get(format!("http://{addr}/readyz")).timeout(Duration::from_secs(10)).send().await?;
    let ready = resp.status() == 200;
    Ok((ready, resp.json().await?))
}
