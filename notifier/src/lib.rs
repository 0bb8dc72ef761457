//! The notifier: consumes `media.converted` and `media.failed` and emails the uploader, once,
//! with a signed download link or the failure's reason. It owns schema `notifier` (the
//! delivery ledger) and never reads media.

pub mod config;
pub mod deliver;
pub mod email;
pub mod metrics;
pub mod smtp_check;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tunewire_service_runtime::config::ExposeSecret;

use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use prometheus_client::registry::Registry;
use sqlx::postgres::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunewire_events::Bus;
use tunewire_events::topology::NOTIFIER_QUEUE;
use tunewire_service_runtime::{Dependencies, HealthRoutes, check_with, http_error, postgres};
use tunewire_signed_links::LinkSigner;
use warp::Filter;

pub use config::{Config, SmtpTls};

pub fn mailer(config: &Config) -> Result<AsyncSmtpTransport<Tokio1Executor>, lettre::transport::smtp::Error> {
    let builder = match config.smtp_tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.smtp_host),
        SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.smtp_host)?,
        SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.smtp_host)?,
    };
    let pool = lettre::transport::smtp::PoolConfig::new().max_size(config.smtp_pool_size.max(1));
    let mut builder =
        builder.port(config.smtp_port).timeout(Some(Duration::from_secs(config.smtp_timeout_s))).pool_config(pool);
    if let (Some(user), Some(pass)) = (&config.smtp_username, &config.smtp_password) {
        builder =
            builder.credentials(Credentials::new(user.expose_secret().to_string(), pass.expose_secret().to_string()));
    }
    Ok(builder.build())
}

/// This service's tables: schema `notifier`.
pub const SCHEMA: postgres::Schema =
    postgres::Schema { name: "notifier", migrations: || sqlx::migrate!("./migrations") };

pub async fn migrate(db: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    SCHEMA.migrate(db).await
}

/// Seconds in-flight work gets after SIGTERM (one SMTP conversation (each command has its own timeout)); the Kubernetes
/// manifests set `terminationGracePeriodSeconds` a little above it.
pub const SHUTDOWN_DEADLINE_S: u64 = 20;

pub struct Running {
    pub health_addr: SocketAddr,
    pub task: JoinHandle<()>,
}

pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let db = SCHEMA.connect(config.database_url.expose_secret(), 10).await?;
    let mailer = mailer(&config)?;
    let bus = Arc::new(Bus::new(config.amqp_url.expose_secret(), "notifier"));
    let notifier = Arc::new(deliver::Notifier {
        db: db.clone(),
        mailer: mailer.clone(),
        from: config.mail_from.parse()?,
        links: LinkSigner::new(config.link_secret.expose_secret().as_bytes().to_vec(), None),
        templates: email::Templates::load()?,
        config: Arc::new(config.clone()),
        one_at_a_time: tokio::sync::Mutex::new(()),
        metrics: metrics::EmailMetrics::default(),
    });
    let listener = tokio::net::TcpListener::bind(config.health_bind).await?;
    let health_addr = listener.local_addr()?;
    let dependencies = Dependencies::new()
        .required("postgres", postgres::check(&db))
        .required("rabbitmq", check_with(bus.clone(), |bus| async move { bus.status() }))
        .required(
            "smtp",
            check_with(mailer, |mailer| async move {
                match mailer.test_connection().await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("the SMTP server did not answer NOOP".into()),
                    Err(e) => Err(e.to_string()),
                }
            }),
        );
    let mut registry = Registry::default();
    bus.register_metrics(&mut registry);
    notifier.metrics.register(&mut registry);
    let health = HealthRoutes::new(Arc::new(dependencies), registry);
    let server = tunewire_service_runtime::spawn_server(
        listener,
        health.routes().recover(http_error::recover),
        shutdown.clone(),
    );
    let task = tokio::spawn(async move {
        let handler = move |msg| notifier.clone().handle(msg);
        bus.consume(NOTIFIER_QUEUE, 8, handler, shutdown).await;
        let _ = server.await;
    });
    Ok(Running { health_addr, task })
}
