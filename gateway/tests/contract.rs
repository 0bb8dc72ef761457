//! The API's contract: the OpenAPI document (generated from the handlers) describes routes
//! the gateway serves, schemathesis (from the stack's venv) fuzzes the running gateway and finds no 5xx and no response that breaks
//! the schema; `/metrics` counts what happened.

mod support;

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use serde_json::Value;
use support::{Gateway, Options};

#[tokio::test]
async fn every_operation_the_openapi_document_lists_is_served() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let doc: Value = g.http.get(g.at("/v1/openapi.json")).send().await?.error_for_status()?.json().await?;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for method in item.as_object().context("path item")?.keys() {
            operations += 1;
            // An unauthenticated call is never "no such route".
            let url = g.at(&path.replace("{id}", "x").replace("{token}", "x"));
            let r = g.http.request(method.to_uppercase().parse()?, url).send().await?;
            assert_ne!(r.status(), 404, "{method} {path}");
        }
    }
    // Uploads by POST and PUT, files and signed links by GET and HEAD; five for tus; the web
    // app's session (sign in, sign out) and job feed.
    assert_eq!(operations, 24, "{doc}");
    g.stop().await
}

fn schemathesis() -> PathBuf {
    std::env::var_os("SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.stack/tools/venv/bin/st"))
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_response_off_the_schema() -> anyhow::Result<()> {
    let g = Gateway::start_with(Options { converter: true, catalog: true, ..Default::default() }).await?;
    let user = g.user().await?;
    // Something real to find, so positive cases meet a converted job too.
    let seed = g.accepted(&user.token, &g.tone("seed.wav", 1, 1)?, &[]).await?;
    // Converted first: its event stream then ends at once instead of outliving a request.
    g.wait_for_state(&user.token, &seed, "converted").await?;

    let st = schemathesis();
    let binary = st.display().to_string();
    let out = tunewire_service_runtime::telemetry::propagation::spawn_blocking({
        let url = g.at("/v1/openapi.json");
        let auth = format!("Authorization: Bearer {}", user.token);
        move || {
            Command::new(&st)
                .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
                .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/tests"))
                .args(["run", &url, "--checks", "not_a_server_error,response_schema_conformance"])
                .args(["--header", &auth, "--max-examples", "25", "--seed", "1", "--workers", "1"])
                .args(["--phases", "examples,coverage,fuzzing", "--request-timeout", "60", "--no-color"])
                // The job feed streams for as long as it is open: a call never ends.
                .args(["--exclude-operation-id", "job_feed"])
                // No example database in the source tree; the seed makes runs repeatable.
                .args(["--generation-database", "none"])
                .output()
        }
    })
    .await?
    .with_context(|| format!("{binary} did not run: scripts/stack up installs it"))?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found problems:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    g.stop().await
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_latency_and_bytes() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let user = g.user().await?;
    let tone = g.tone("t.wav", 1, 1)?;
    let size = std::fs::metadata(&tone)?.len();
    g.accepted(&user.token, &tone, &[]).await?;
    let missing = uuid::Uuid::new_v4();
    g.http.get(g.at(&format!("/v1/jobs/{missing}"))).bearer_auth(&user.token).send().await?;
    let text = g.http.get(g.at("/metrics")).send().await?.text().await?;
    let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
    let counter = |prefix: &str| -> Option<f64> { line(prefix)?.rsplit(' ').next()?.parse().ok() };
    assert!(text.contains(r#"http_requests_total{method="GET",route="/v1/jobs/{id}",status="404"} 1"#), "{text}");
    assert!(text.contains(r#"http_requests_total{method="POST",route="/v1/uploads",status="202"} 1"#), "{text}");
    assert!(text.contains(r#"http_request_duration_seconds_bucket{"#), "{text}");
    assert!(counter("upload_bytes_total").is_some_and(|b| b >= size as f64), "{text}");
    assert_eq!(counter("uploads_in_flight"), Some(0.0), "{text}");
    assert!(line("download_bytes_total").is_some(), "{text}");
    g.stop().await
}
