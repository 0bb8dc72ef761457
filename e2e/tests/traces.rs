//! One upload, one trace, through five services: the real binaries, each its own process
//! configured as in production by its environment (`OTEL_EXPORTER_OTLP_ENDPOINT` pointing at
//! an OTLP/HTTP receiver this test runs). A client sends its `traceparent` with its login and
//! its upload; every service's spans for that work carry its trace id, each hop a descendant
//! of the one that caused it, one of them logging only warnings; the client's `tracestate`
//! arrives at the end; and every log line naming the job names the trace.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tunewire_e2e::PIPELINE_DEADLINE;
use tunewire_media_store::access::Account;
use tunewire_test_stack::media::ffmpeg;
use tunewire_test_stack::{Sandbox, eventually, maildev};

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    trace_state: String,
    /// (trace id, span id) of each span this one links to.
    links: Vec<(String, String)>,
    name: String,
    start_ns: u64,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// What the client sends as its `tracestate`: it must come out at the far end.
const TRACESTATE: &str = "tunewire-test=kept";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// An OTLP/HTTP (protobuf) trace receiver, as a collector would be.
async fn otlp_receiver(spans: Spans, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    use warp::Filter;
    let route =
        warp::post().and(warp::path!("v1" / "traces")).and(warp::body::bytes()).map(move |body: bytes::Bytes| {
            let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                return warp::reply::with_status(Vec::new(), warp::http::StatusCode::BAD_REQUEST);
            };
            let mut received = spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for resource_spans in request.resource_spans {
                let resource = resource_spans.resource.unwrap_or_default();
                let service =
                    resource.attributes.iter().find(|a| a.key == "service.name").map(|a| text(a.value.as_ref()));
                for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                    received.push(Received {
                        service: service.clone().unwrap_or_default(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        trace_state: span.trace_state,
                        links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                        name: span.name,
                        start_ns: span.start_time_unix_nano,
                        attributes: span.attributes.iter().map(|a| (a.key.clone(), text(a.value.as_ref()))).collect(),
                    });
                }
            }
            warp::reply::with_status(ExportTraceServiceResponse::default().encode_to_vec(), warp::http::StatusCode::OK)
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(warp::serve(route).incoming(listener).graceful(shutdown.cancelled_owned()).run());
    Ok(addr)
}

/// A fresh W3C trace id (32 hex digits).
fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A `traceparent` in `trace`, from a client span of its own (16 hex digits), and that span.
fn traceparent(trace: &str) -> (String, String) {
    let span = new_trace_id()[..16].to_owned();
    (format!("00-{trace}-{span}-01"), span)
}

/// A port nothing listens on right now, for a service told where to listen.
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A service binary run as a process, its log lines (JSON) going to a file.
struct Service {
    name: &'static str,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _child: tokio::process::Child,
}

impl Service {
    fn spawn(
        name: &'static str,
        binary: &str,
        addr: SocketAddr,
        env: &[(&str, String)],
        scratch: &Path,
    ) -> anyhow::Result<Self> {
        let log = scratch.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(tunewire_test_stack::workspace_binary(binary)?);
        // Only this test's OpenTelemetry settings: none a developer's shell may hold.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        let child = command
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self { name, addr, log, _child: child })
    }

    async fn ready(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        eventually(&format!("{} ready", self.name), PIPELINE_DEADLINE, || async {
            let answer = http.get(format!("http://{}/readyz", self.addr)).send().await;
            Ok(answer.is_ok_and(|r| r.status() == 200).then_some(()))
        })
        .await
        .with_context(|| format!("its log: {}", self.log_text()))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

struct Five {
    services: Vec<Service>,
    gateway: String,
}

async fn start_services(
    sandbox: &Sandbox,
    otlp: SocketAddr,
    scratch: &Path,
    stop: &CancellationToken,
) -> anyhow::Result<Five> {
    let broker = |name: &str| -> anyhow::Result<String> {
        let service = tunewire_events::topology::SERVICES
            .iter()
            .find(|s| s.name() == name)
            .with_context(|| format!("no broker user for {name}"))?;
        Ok(sandbox.amqp_url_for(*service))
    };
    let mongo = |account| tunewire_test_stack::direct_connection(&sandbox.mongo_uri_for(account));
    let lastfm = tunewire_e2e::fake_lastfm(stop.clone()).await?;
    let [auth, gateway, catalog, converter, notifier] =
        [free_port()?, free_port()?, free_port()?, free_port()?, free_port()?];
    let link_secret = format!("link-secret-for-the-trace-test-{}", sandbox.name);
    let common = |mut env: Vec<(&'static str, String)>| {
        if !env.iter().any(|(name, _)| *name == "RUST_LOG") {
            env.push(("RUST_LOG", "info".to_string()));
        }
        env.extend([
            ("LOG_FORMAT", "json".to_string()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
            // Spans are sent every 200 ms rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_string()),
        ]);
        env
    };
    let stack = &sandbox.stack;
    let services = vec![
        Service::spawn(
            "auth",
            "tunewire-auth",
            auth,
            &common(vec![("AUTH_BIND", auth.to_string()), ("DATABASE_URL", sandbox.database_url_for("auth")?)]),
            scratch,
        )?,
        Service::spawn(
            "catalog-indexer",
            "tunewire-catalog-indexer",
            catalog,
            &common(vec![
                ("CATALOG_BIND", catalog.to_string()),
                ("DATABASE_URL", sandbox.database_url_for("catalog-indexer")?),
                ("AMQP_URL", broker("catalog-indexer")?),
                ("CATALOG_INDEX_DIR", scratch.join("index").display().to_string()),
                ("LASTFM_API_KEY", "test-key".into()),
                ("LASTFM_URL", format!("http://{lastfm}/2.0/")),
            ]),
            scratch,
        )?,
        Service::spawn(
            "gateway",
            "tunewire-gateway",
            gateway,
            &common(vec![
                ("GATEWAY_BIND", gateway.to_string()),
                ("DATABASE_URL", sandbox.database_url_for("gateway")?),
                ("AMQP_URL", broker("gateway")?),
                ("MONGODB_URI", mongo(Account::Gateway)),
                ("MONGODB_DATABASE_PREFIX", sandbox.mongo_prefix.clone()),
                ("AUTH_URL", format!("http://{auth}")),
                ("CATALOG_URL", format!("http://{catalog}")),
                ("LINK_SECRET", link_secret.clone()),
            ]),
            scratch,
        )?,
        Service::spawn(
            "converter",
            "tunewire-converter",
            converter,
            &common(vec![
                ("CONVERTER_HEALTH_BIND", converter.to_string()),
                // Logging only warnings, it still hands the trace on.
                ("RUST_LOG", "warn".to_string()),
                ("AMQP_URL", broker("converter")?),
                ("MONGODB_URI", mongo(Account::Converter)),
                ("MONGODB_DATABASE_PREFIX", sandbox.mongo_prefix.clone()),
            ]),
            scratch,
        )?,
        Service::spawn(
            "notifier",
            "tunewire-notifier",
            notifier,
            &common(vec![
                ("NOTIFIER_HEALTH_BIND", notifier.to_string()),
                ("DATABASE_URL", sandbox.database_url_for("notifier")?),
                ("AMQP_URL", broker("notifier")?),
                ("SMTP_HOST", stack.smtp_host.clone()),
                ("SMTP_PORT", stack.smtp_port.to_string()),
                ("LINK_SECRET", link_secret.clone()),
                ("PUBLIC_URL", format!("http://{gateway}")),
            ]),
            scratch,
        )?,
    ];
    Ok(Five { services, gateway: format!("http://{gateway}") })
}

/// The first span of `service` named `name` (`name@routing_key` for a delivery of that key).
fn find<'a>(spans: &'a [Received], service: &str, name: &str) -> Option<&'a Received> {
    let (name, key) = name.split_once('@').map_or((name, None), |(n, k)| (n, Some(k)));
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .filter(|s| key.is_none_or(|k| s.attributes.get("routing_key").is_some_and(|v| v == k)))
        .min_by_key(|s| s.start_ns)
}

/// Whether `later` descends from `earlier` through the parents recorded in `spans`.
fn descends(spans: &[Received], later: &Received, earlier: &Received) -> bool {
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut at = later;
    for _ in 0..spans.len() {
        if at.parent_span_id == earlier.span_id {
            return true;
        }
        match by_id.get(at.parent_span_id.as_str()) {
            Some(parent) => at = parent,
            None => return false,
        }
    }
    false
}

#[tokio::test]
async fn one_upload_is_one_trace_through_all_five_services() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let stop = CancellationToken::new();
    let scratch = std::env::temp_dir().join(format!("tw-traces-{}", sandbox.name));
    std::fs::create_dir_all(&scratch)?;
    let outcome = follow_one_upload(&sandbox, &scratch, &stop).await;
    stop.cancel();
    let _ = std::fs::remove_dir_all(&scratch);
    sandbox.cleanup().await?;
    outcome
}

async fn follow_one_upload(sandbox: &Sandbox, scratch: &Path, stop: &CancellationToken) -> anyhow::Result<()> {
    let spans: Spans = Arc::default();
    let otlp = otlp_receiver(spans.clone(), stop.clone()).await?;
    let five = start_services(sandbox, otlp, scratch, stop).await?;
    let http = reqwest::Client::new();
    for service in &five.services {
        service.ready(&http).await?;
    }

    // The client's own trace: its login and its upload are both children of its span.
    let trace_id = new_trace_id();
    let (traceparent, client_span) = traceparent(&trace_id);
    let email = format!("traced-{}@example.com", uuid::Uuid::new_v4().simple());
    let creds = json!({"email": email, "password": "correct horse battery"});
    let r = http.post(format!("{}/v1/auth/register", five.gateway)).json(&creds).send().await?;
    ensure!(r.status() == 201, "register: {}", r.status());
    let r = http
        .post(format!("{}/v1/auth/login", five.gateway))
        .header("traceparent", &traceparent)
        .header("tracestate", TRACESTATE)
        .json(&creds)
        .send()
        .await?;
    let token = r.error_for_status()?.json::<Value>().await?["access_token"].as_str().context("no token")?.to_owned();

    let song = scratch.join("traced.wav");
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-c:a", "pcm_s16le", &song.display().to_string()])?;
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(std::fs::read(&song)?).file_name("traced.wav"));
    let r = http
        .post(format!("{}/v1/uploads", five.gateway))
        .bearer_auth(&token)
        .header("traceparent", &traceparent)
        .header("tracestate", TRACESTATE)
        .multipart(form)
        .send()
        .await?;
    ensure!(r.status() == 202, "upload: {} {}", r.status(), r.text().await?);
    let job_id = r.json::<Value>().await?["job_id"].as_str().context("no job id")?.to_owned();
    maildev::wait_for(&sandbox.stack.maildev_url, &email, 1, PIPELINE_DEADLINE).await?;

    let stages = [
        ("gateway", "POST /v1/uploads"),
        ("gateway", "media.uploaded publish"),
        ("converter", "converter.media-uploaded process"),
        ("catalog-indexer", "catalog-indexer.media-converted process"),
        ("gateway", "gateway.job-state process@media.converted"),
        ("gateway", "job.converted publish"),
        ("notifier", "notifier.outcomes process"),
    ];
    // Spans arrive in batches, each service's on its own schedule.
    let traced = eventually("every stage's span received", PIPELINE_DEADLINE, || async {
        let all = spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let traced: Vec<Received> = all.into_iter().filter(|s| s.trace_id == trace_id).collect();
        let complete = stages.iter().all(|(service, name)| find(&traced, service, name).is_some())
            && find(&traced, "auth", "POST /login").is_some();
        Ok(complete.then_some(traced))
    })
    .await
    .with_context(|| {
        let seen = spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let names: Vec<String> = seen.iter().map(|s| format!("{} {} {}", s.service, s.name, s.trace_id)).collect();
        format!("spans received: {names:#?}")
    })?;

    let services: std::collections::BTreeSet<&str> = traced.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        ["auth", "catalog-indexer", "converter", "gateway", "notifier"],
        "the five services' spans share the client's trace id"
    );
    let span = |(service, name): (&str, &str)| find(&traced, service, name).context(name.to_owned());
    let login = span(("auth", "POST /login"))?;
    let upload = span(stages[0])?;
    assert_eq!(upload.parent_span_id, client_span, "the upload continues the client's span");
    assert!(descends(&traced, login, &Received { span_id: client_span.to_owned(), ..login.clone() }));
    // Each stage descends from the one that caused it, and starts after it.
    let [upload, relayed, converted, catalogued, followed, announced, emailed] = stages.map(span);
    let (upload, relayed, converted, catalogued, followed, announced, emailed) =
        (upload?, relayed?, converted?, catalogued?, followed?, announced?, emailed?);
    let causes = [
        (relayed, upload),
        (converted, relayed),
        (catalogued, converted),
        (followed, converted),
        (announced, followed),
        (emailed, announced),
    ];
    for (effect, cause) in causes {
        assert!(
            descends(&traced, effect, cause),
            "{} ({}) does not descend from {} ({})",
            effect.name,
            effect.service,
            cause.name,
            cause.service
        );
        assert!(effect.start_ns >= cause.start_ns, "{} started before its cause {}", effect.name, cause.name);
    }
    for stage in [relayed, converted, catalogued, emailed] {
        assert_eq!(stage.attributes.get("job_id"), Some(&job_id), "{} names the job", stage.name);
        // The client's vendor state went through the outbox and the broker's headers too.
        assert_eq!(stage.trace_state, TRACESTATE, "{} carries the client's tracestate", stage.name);
    }

    // Every log line that names the job names the trace too.
    let mut lines_naming_the_job = 0;
    for service in &five.services {
        for line in service.log_text().lines().filter(|l| l.contains(&job_id)) {
            lines_naming_the_job += 1;
            ensure!(line.contains(&trace_id), "{} logged the job without its trace: {line}", service.name);
        }
    }
    ensure!(lines_naming_the_job >= 3, "only {lines_naming_the_job} log lines name the job");

    // Other bytes: the same ones would be the first upload's job again.
    let other = scratch.join("resumed.wav");
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=550:duration=3", "-c:a", "pcm_s16le", &other.display().to_string()])?;
    resumable_upload_links_its_creation(&five, &token, &other, &spans).await?;
    a_path_no_route_takes_is_one_name(&five, &token, &spans).await?;
    drop(five);
    Ok(())
}

/// A resumable upload created in one trace and finished in another: the job is the finishing
/// request's trace, whose span links to the creating request's.
async fn resumable_upload_links_its_creation(
    five: &Five,
    token: &str,
    song: &Path,
    spans: &Spans,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let bytes = std::fs::read(song)?;
    let (created_in, finished_in) = (new_trace_id(), new_trace_id());
    let parent = |trace: &str| traceparent(trace).0;
    let r = http
        .post(format!("{}/v1/tus/", five.gateway))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", bytes.len().to_string())
        .header("Upload-Metadata", "filename cmVzdW1lZC53YXY=")
        .header("traceparent", parent(&created_in))
        .send()
        .await?;
    ensure!(r.status() == 201, "tus create: {}", r.status());
    let location = r.headers().get("location").and_then(|l| l.to_str().ok()).context("no Location")?.to_owned();
    let url = if location.starts_with("http") { location } else { format!("{}{location}", five.gateway) };
    let r = http
        .patch(url)
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("traceparent", parent(&finished_in))
        .body(bytes)
        .send()
        .await?;
    ensure!(r.status() == 204, "tus patch: {} {}", r.status(), r.text().await?);
    let (creation, finish) = eventually("the resumable upload's spans received", PIPELINE_DEADLINE, || async {
        let all = spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let creation = all.iter().find(|s| s.trace_id == created_in && s.name == "POST /v1/tus/").cloned();
        let finish = all.iter().find(|s| s.trace_id == finished_in && s.name == "PATCH /v1/tus/{}").cloned();
        let converted = all.iter().any(|s| s.trace_id == finished_in && s.name == "converter.media-uploaded process");
        Ok(creation.zip(finish).filter(|_| converted))
    })
    .await
    .with_context(|| {
        let seen = spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let names: Vec<String> = seen
            .iter()
            .filter(|s| s.trace_id == created_in || s.trace_id == finished_in)
            .map(|s| format!("{} {} {}", s.service, s.name, s.trace_id))
            .collect();
        format!("spans of the two traces: {names:#?}")
    })?;
    assert!(
        finish.links.contains(&(creation.trace_id.clone(), creation.span_id.clone())),
        "the finishing PATCH links to the creating POST: {:?}",
        finish.links
    );
    Ok(())
}

/// Strangers' made-up paths share one span name; a route's own 404 keeps its route.
async fn a_path_no_route_takes_is_one_name(five: &Five, token: &str, spans: &Spans) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let (made_up, missing_job) = (new_trace_id(), new_trace_id());
    let parent = |trace: &str| traceparent(trace).0;
    let r = http.get(format!("{}/wp-admin/setup-config.php", five.gateway)).header("traceparent", parent(&made_up));
    ensure!(r.send().await?.status() == 404);
    let r = http
        .get(format!("{}/v1/jobs/{}", five.gateway, uuid::Uuid::new_v4()))
        .bearer_auth(token)
        .header("traceparent", parent(&missing_job));
    ensure!(r.send().await?.status() == 404);
    let names = eventually("both 404s' spans received", PIPELINE_DEADLINE, || async {
        let all = spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let name = |trace: &str| all.iter().find(|s| s.trace_id == trace && s.service == "gateway").cloned();
        Ok(name(&made_up).zip(name(&missing_job)))
    })
    .await?;
    assert_eq!(names.0.name, "GET unmatched");
    assert_eq!(names.0.attributes.get("http.route").map(String::as_str), Some("unmatched"));
    assert_eq!(names.1.name, "GET /v1/jobs/{}");
    assert_eq!(names.1.attributes.get("http.route").map(String::as_str), Some("/v1/jobs/{}"));
    Ok(())
}
