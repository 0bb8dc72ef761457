//! The gateway in-process on a random port against a private sandbox of the real stack, with
//! a real auth (whose key the test knows, to forge tokens) and, when asked, a real converter.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use mongodb::bson::{Document, doc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tunewire_events::Bus;
use tunewire_media_store::access::Account;
use tunewire_media_store::{Bucket, MediaStore};
use tunewire_service_runtime::config::ExposeSecret;
use tunewire_test_stack::media::ffmpeg;
use tunewire_test_stack::{Sandbox, eventually};

pub const DEADLINE: Duration = Duration::from_secs(60);
pub const ADMIN: (&str, &str) = ("admin@tunewire.test", "admin password");

pub struct Options {
    pub converter: bool,
    /// Run catalog-indexer too, and front it (for `/v1/search`).
    pub catalog: bool,
    /// `host:port` of RabbitMQ as the gateway sees it (a proxy a test can cut).
    pub amqp_via: Option<String>,
    pub tweak: Box<dyn FnOnce(&mut tunewire_gateway::Config) + Send>,
    pub auth_tweak: Box<dyn FnOnce(&mut tunewire_auth::Config) + Send>,
}

impl Default for Options {
    fn default() -> Self {
        Self { converter: false, catalog: false, amqp_via: None, tweak: Box::new(|_| {}), auth_tweak: Box::new(|_| {}) }
    }
}

pub struct Gateway {
    pub sandbox: Sandbox,
    pub url: String,
    pub http: reqwest::Client,
    pub store: MediaStore,
    pub bus: Bus,
    pub signing_pem: String,
    pub link_secret: String,
    pub scratch: PathBuf,
    pub config: tunewire_gateway::Config,
    shutdown: CancellationToken,
}

pub struct User {
    pub id: String,
    pub email: String,
    pub token: String,
}

pub fn openssl_ed25519() -> anyhow::Result<String> {
    let out = std::process::Command::new("openssl").args(["genpkey", "-algorithm", "ed25519"]).output()?;
    if !out.status.success() {
        bail!("openssl: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

impl Gateway {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> anyhow::Result<Self> {
        let sandbox = Sandbox::create().await?;
        let shutdown = CancellationToken::new();
        let scratch = std::env::temp_dir().join(format!("tw-gateway-{}", sandbox.name));
        std::fs::create_dir_all(&scratch)?;
        let signing_pem = openssl_ed25519()?;
        let mut auth_config = tunewire_auth::Config::local(sandbox.database_url.clone());
        auth_config.signing_key_pem = Some(signing_pem.clone().into());
        auth_config.admin = Some((ADMIN.0.parse()?, ADMIN.1.into()));
        (options.auth_tweak)(&mut auth_config);
        let auth = tunewire_auth::start(auth_config, shutdown.clone()).await?;

        let amqp_url = match &options.amqp_via {
            Some(via) => {
                let direct = tunewire_test_stack::proxy::host_port(&sandbox.amqp_url);
                sandbox.amqp_url.replacen(&direct, via, 1)
            }
            None => sandbox.amqp_url.clone(),
        };
        let mut config = tunewire_gateway::Config::local(
            sandbox.database_url.clone(),
            amqp_url,
            sandbox.mongo_uri_for(Account::Gateway),
            sandbox.mongo_prefix.clone(),
        );
        config.auth_url = format!("http://{}", auth.addr);
        config.link_secret = format!("links-{}", sandbox.name).into();
        config.probe_program = env!("CARGO_BIN_EXE_tunewire-gateway").into();
        if options.catalog {
            let catalog = tunewire_catalog_indexer::start(
                tunewire_catalog_indexer::Config {
                    lastfm_api_key: None,
                    lastfm_url: "http://127.0.0.1:9/2.0/".into(),
                    ..tunewire_catalog_indexer::Config::local(
                        sandbox.database_url.clone(),
                        sandbox.amqp_url.clone(),
                        scratch.join("index"),
                    )
                },
                shutdown.clone(),
            )
            .await?;
            config.catalog_url = format!("http://{}", catalog.addr);
        }
        (options.tweak)(&mut config);
        let link_secret = config.link_secret.expose_secret().to_string();
        let gateway = tunewire_gateway::start(config.clone(), shutdown.clone()).await?;
        if options.converter {
            tunewire_converter::start(
                tunewire_converter::Config {
                    concurrency: 2,
                    max_duration_s: 3600.0,
                    ..tunewire_converter::Config::local(
                        sandbox.amqp_url.clone(),
                        sandbox.mongo_uri_for(Account::Converter),
                        sandbox.mongo_prefix.clone(),
                    )
                },
                shutdown.clone(),
            )
            .await?;
        }
        let store = MediaStore::connect(&sandbox.stack.mongo_uri, &sandbox.mongo_prefix).await?;
        let bus = Bus::new(sandbox.amqp_url.clone(), "gateway-tests");
        Ok(Self {
            url: format!("http://{}", gateway.addr),
            http: reqwest::Client::new(),
            store,
            bus,
            signing_pem,
            link_secret,
            scratch,
            config,
            sandbox,
            shutdown,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.scratch);
        self.sandbox.cleanup().await
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let creds = json!({"email": email, "password": password});
        let r = self.http.post(self.at("/v1/auth/login")).json(&creds).send().await?;
        let body: Value = r.error_for_status()?.json().await?;
        Ok(body["access_token"].as_str().context("no token")?.to_string())
    }

    pub async fn user(&self) -> anyhow::Result<User> {
        let email = format!("u-{}@example.com", uuid::Uuid::new_v4().simple());
        let creds = json!({"email": email, "password": "correct horse"});
        let r = self.http.post(self.at("/v1/auth/register")).json(&creds).send().await?;
        if r.status() != 201 {
            bail!("register: {} {}", r.status(), r.text().await?);
        }
        let token = self.login(&email, "correct horse").await?;
        let me: Value =
            self.http.get(self.at("/v1/me")).bearer_auth(&token).send().await?.error_for_status()?.json().await?;
        Ok(User { id: me["id"].as_str().context("id")?.to_string(), email, token })
    }

    pub async fn admin(&self) -> anyhow::Result<String> {
        self.login(ADMIN.0, ADMIN.1).await
    }

    pub async fn upload_bytes(
        &self,
        token: &str,
        bytes: Vec<u8>,
        name: &str,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()));
        Ok(self.http.post(self.at("/v1/uploads")).bearer_auth(token).multipart(form).send().await?)
    }

    pub async fn upload(&self, token: &str, path: &Path, fields: &[(&str, &str)]) -> anyhow::Result<reqwest::Response> {
        let name = path.file_name().and_then(|n| n.to_str()).context("name")?.to_string();
        self.upload_bytes(token, tokio::fs::read(path).await?, &name, fields).await
    }

    /// Uploads and expects 202, returning the job id.
    pub async fn accepted(&self, token: &str, path: &Path, fields: &[(&str, &str)]) -> anyhow::Result<String> {
        let r = self.upload(token, path, fields).await?;
        if r.status() != 202 {
            bail!("upload: {} {}", r.status(), r.text().await?);
        }
        Ok(r.json::<Value>().await?["job_id"].as_str().context("job_id")?.to_string())
    }

    pub async fn job(&self, token: &str, id: &str) -> anyhow::Result<Value> {
        let r = self.http.get(self.at(&format!("/v1/jobs/{id}"))).bearer_auth(token).send().await?;
        Ok(r.error_for_status()?.json().await?)
    }

    pub async fn wait_for_state(&self, token: &str, id: &str, wanted: &str) -> anyhow::Result<Value> {
        eventually(&format!("job {id} {wanted}"), DEADLINE, || async {
            let job = self.job(token, id).await?;
            match job["state"].as_str() {
                Some(s) if s == wanted => Ok(Some(job)),
                Some("failed") => bail!("job failed: {}", job["error"]),
                _ => Ok(None),
            }
        })
        .await
    }

    /// Files and chunks in a GridFS bucket of this sandbox.
    pub async fn gridfs_counts(&self, bucket: Bucket) -> anyhow::Result<(u64, u64)> {
        let client = mongodb::Client::with_uri_str(&self.sandbox.stack.mongo_uri).await?;
        let db = client.database(&self.sandbox.mongo_database(bucket));
        let name = bucket.name();
        let files = db.collection::<Document>(&format!("{name}.files")).count_documents(doc! {}).await?;
        let chunks = db.collection::<Document>(&format!("{name}.chunks")).count_documents(doc! {}).await?;
        Ok((files, chunks))
    }

    /// A short tone as WAV; `seed` makes the bytes unique.
    pub fn tone(&self, name: &str, seconds: u32, seed: u32) -> anyhow::Result<PathBuf> {
        let path = self.scratch.join(name);
        let spec = format!("sine=frequency={}:duration={seconds}:sample_rate=22050", 200 + seed);
        ffmpeg(&["-f", "lavfi", "-i", &spec, "-ac", "1", path.to_str().context("path")?])?;
        Ok(path)
    }
}

/// The `data:` of each `event: job` in an SSE body, until the stream ends.
pub async fn job_events(response: reqwest::Response) -> anyhow::Result<Vec<Value>> {
    use futures_util::StreamExt;
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, body.next()).await? {
        text.push_str(std::str::from_utf8(&chunk?)?);
    }
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut name = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                name = Some(n.trim().to_string());
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim());
            }
        }
        if name.as_deref() == Some("job") {
            events.push(serde_json::from_str(&data)?);
        }
    }
    Ok(events)
}
