//! The fault suite's scenarios, but for bad input (`bad_input`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tunewire_e2e::{Options, PIPELINE_DEADLINE, Pipeline};
use tunewire_test_stack::eventually;
use tunewire_test_stack::proxy::Proxy;

use crate::Report;
use crate::accounting::{Accountant, explain, wait_readiness};
use crate::burst::{self, Upload};
use crate::process::{CRASH_AFTER_SEND_VAR, CRASH_IN_TRANSCODE_VAR, ServiceProcess};

/// From the end of a fault to every upload accounted for, at most.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(240);

/// The stack's view of one sandbox, all-in-one: every upload converted once, stored once,
/// catalogued once, emailed once, and nothing left in any queue.
fn require_clean(tally: &crate::accounting::Tally) -> anyhow::Result<()> {
    ensure!(tally.lost == 0 && tally.duplicated == 0 && tally.problems.is_empty(), "{}", explain(tally));
    Ok(())
}

#[derive(Clone, Copy)]
enum Dependency {
    Postgres,
    Rabbitmq,
    Mongodb,
    Smtp,
}

impl Dependency {
    /// As `/readyz` names it.
    fn name(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgres",
            Dependency::Rabbitmq => "rabbitmq",
            Dependency::Mongodb => "mongodb",
            Dependency::Smtp => "smtp",
        }
    }
}

fn proxy(p: &Pipeline, which: Dependency) -> &Proxy {
    match which {
        Dependency::Postgres => &p.faults.postgres,
        Dependency::Rabbitmq => &p.faults.rabbitmq,
        Dependency::Mongodb => &p.faults.mongodb,
        Dependency::Smtp => &p.faults.smtp,
    }
}

/// The services whose readiness depends on `which`.
fn dependents(p: &Pipeline, which: Dependency) -> Vec<(&'static str, SocketAddr)> {
    let h = &p.health;
    let all = [
        // RabbitMQ down only delays the gateway's events (the outbox holds them), and search
        // serves from its index alone: neither leaves its Service for it.
        ("gateway", &h.gateway, [true, false, true, false]),
        ("auth", &h.auth, [true, false, false, false]),
        ("catalog-indexer", &h.catalog, [false, false, false, false]),
        ("converter", &h.converter, [false, true, true, false]),
        ("notifier", &h.notifier, [true, true, false, true]),
    ];
    let column = match which {
        Dependency::Postgres => 0,
        Dependency::Rabbitmq => 1,
        Dependency::Mongodb => 2,
        Dependency::Smtp => 3,
    };
    all.into_iter()
        .filter(|(_, _, uses)| uses[column])
        .flat_map(|(name, replicas, _)| replicas.iter().map(move |addr| (name, *addr)))
        .collect()
}

/// How a dependency goes away.
#[derive(Clone, Copy)]
enum Break {
    /// Its proxy is cut: every connection closed, new ones refused (this sandbox only).
    Network,
    /// The real server is stopped, then started (`scripts/stack stop|start NAME`).
    Server(&'static str),
}

/// `scripts/stack ACTION COMPONENT`: the suite restarts the real servers of a stack that
/// script started (as CI's is).
async fn stack(action: &str, component: &str) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack");
    let status = tokio::process::Command::new("bash").arg(script).args([action, component]).status().await?;
    ensure!(status.success(), "scripts/stack {action} {component}: {status}");
    Ok(())
}

struct Outage {
    which: Dependency,
    how: Break,
    prefix: &'static str,
    uploads: usize,
    /// The dependency goes away once this many uploads are accepted.
    cut_after: usize,
    down_for: Duration,
    /// Every upload is answered 202 throughout: the dependency is not on the upload's path.
    uploads_never_refused: bool,
    /// Services that must stay ready throughout (and say what is missing in their notes).
    stay_ready: &'static [&'static str],
}

fn health_addrs<'a>(p: &'a Pipeline, name: &str) -> &'a [SocketAddr] {
    match name {
        "gateway" => &p.health.gateway,
        "catalog-indexer" => &p.health.catalog,
        _ => &[],
    }
}

/// Polls the `/readyz` of services that must stay ready until `until` is cancelled, every
/// 500 ms; returns how many times a replica said "not ready" (or did not answer) as many
/// times in a row as the probe's failure threshold, and whether any noted `dependency`
/// missing. Stricter than Kubernetes, whose probe comes every 10 s: a second of
/// unreadiness counts here, one slow answer alone does not.
async fn watch_ready(
    p: &Pipeline,
    names: &[&str],
    dependency: &str,
    until: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(usize, bool)> {
    let addrs: Vec<SocketAddr> = names.iter().flat_map(|n| health_addrs(p, n)).copied().collect();
    let (mut unready, mut noted) = (0, false);
    let mut in_a_row = vec![0u32; addrs.len()];
    while !until.is_cancelled() {
        for (addr, streak) in addrs.iter().zip(&mut in_a_row) {
            let (ready, report) =
                tunewire_e2e::readiness(&p.http, *addr).await.unwrap_or((false, serde_json::Value::Null));
            *streak = if ready { 0 } else { *streak + 1 };
            unready += usize::from(*streak == tunewire_e2e::GATEWAY_READINESS_PROBE.failure_threshold);
            noted |= report["notes"].get(dependency).is_some();
        }
        tokio::select! {
            _ = until.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    Ok((unready, noted))
}

/// Cuts one dependency mid-burst for a while, checks that the services that need it say
/// "not ready" meanwhile and "ready" after, and accounts for every upload.
async fn outage(o: Outage) -> anyhow::Result<Report> {
    let p = Pipeline::start().await?;
    let (email, token) = p.user().await?;
    let clips = burst::make_clips(&p, o.prefix, o.uploads, 3)?;
    // Sent once the outage is confirmed, for a dependency that is not on the upload's path:
    // proof that uploads are answered while it is really away.
    let during_clips =
        burst::make_clips(&p, &format!("{}-during", o.prefix), usize::from(o.uploads_never_refused) * 10, 3)?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let outage_over = tokio_util::sync::CancellationToken::new();
    let fault = async {
        eventually("uploads before the fault", PIPELINE_DEADLINE, || async {
            Ok((accepted.load(Ordering::SeqCst) >= o.cut_after).then_some(()))
        })
        .await?;
        match o.how {
            Break::Network => proxy(&p, o.which).down(),
            Break::Server(name) => stack("stop", name).await?,
        }
        let down_at = Instant::now();
        let watching = watch_ready(&p, o.stay_ready, o.which.name(), outage_over.clone());
        let noticed = async {
            let noticed = wait_readiness(&p, &dependents(&p, o.which), false, Duration::from_secs(20)).await;
            let during = burst::send(&p, &token, &during_clips, Arc::new(AtomicUsize::new(0))).await;
            let during_took = down_at.elapsed();
            tokio::time::sleep(o.down_for.saturating_sub(down_at.elapsed())).await;
            outage_over.cancel();
            (noticed, during, during_took)
        };
        let (watched, (noticed, during, during_took)) = tokio::join!(watching, noticed);
        match o.how {
            Break::Network => proxy(&p, o.which).up(),
            Break::Server(name) => stack("start", name).await?,
        }
        noticed?;
        let during = during?;
        ensure!(
            during_took < o.down_for,
            "the uploads sent during the outage took until {during_took:?}, past its {:?}",
            o.down_for
        );
        let (unready, noted) = watched?;
        ensure!(
            unready == 0,
            "{:?} said \"not ready\" often enough in a row to leave the Service {unready} time(s) while only {} was down",
            o.stay_ready,
            o.which.name()
        );
        ensure!(
            o.stay_ready.is_empty() || noted,
            "{:?} never noted {} missing in /readyz",
            o.stay_ready,
            o.which.name()
        );
        anyhow::Ok((Instant::now(), during))
    };
    let (sent, faulted) = tokio::join!(burst::send(&p, &token, &clips, accepted.clone()), fault);
    let (mut sent, (up_at, during)) = (sent?, faulted?);
    let sent_during = during.uploads.len();
    sent.refused_then_retried += during.refused_then_retried;
    sent.uploads.extend(during.uploads);
    ensure!(
        !o.uploads_never_refused || (sent.refused_then_retried == 0 && p.balancer.refused() == 0),
        "{} upload(s) were refused ({} connections found no ready gateway) while only {} was down",
        sent.refused_then_retried,
        p.balancer.refused(),
        o.which.name()
    );
    let accountant = Accountant::connect(&p).await?;
    let tally = accountant.settle(&p, &email, &sent.uploads, RECOVERY_DEADLINE, false).await?;
    require_clean(&tally)?;
    wait_readiness(&p, &dependents(&p, o.which), true, Duration::from_secs(60)).await?;
    let report = Report {
        uploads: sent.uploads.len(),
        refused_then_retried: sent.refused_then_retried,
        recovered_in: tally.complete_at.map(|at| at.saturating_duration_since(up_at)),
        notes: format!(
            "{}; balancer: connections per gateway {:?}, {} refused (no ready gateway)",
            match o.how {
                Break::Network => format!("network cut for {} s", o.down_for.as_secs()),
                Break::Server(name) => format!("{name} stopped for {} s, then started", o.down_for.as_secs()),
            } + &if sent_during > 0 {
                format!(" ({sent_during} uploads sent while it was confirmed down)")
            } else {
                String::new()
            },
            p.balancer.routed(),
            p.balancer.refused()
        ),
        ..Report::default()
    };
    p.stop().await?;
    Ok(report)
}

/// Waits until the gateway's outbox holds events the relay could not get confirmed, and
/// records the most seen.
async fn outbox_holds_events(p: &Pipeline, held: &AtomicUsize) -> anyhow::Result<()> {
    let db = sqlx::PgPool::connect(&p.sandbox.database_url).await?;
    eventually("events waiting in the outbox", Duration::from_secs(25), || async {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway.outbox").fetch_one(&db).await?;
        held.fetch_max(waiting as usize, Ordering::SeqCst);
        Ok((waiting > 0).then_some(()))
    })
    .await
}

pub async fn rabbitmq_blocks_publishers() -> anyhow::Result<Report> {
    const BLOCKED_FOR: Duration = Duration::from_secs(30);
    let p = Pipeline::start().await?;
    let (email, token) = p.user().await?;
    let clips = burst::make_clips(&p, "alarm", 20, 3)?;
    let before = burst::send(&p, &token, &clips[..5], Arc::new(AtomicUsize::new(0))).await?;
    stack("memory-alarm", "on").await?;
    let blocked_at = Instant::now();
    let outage_over = tokio_util::sync::CancellationToken::new();
    let held = AtomicUsize::new(0);
    let during = async {
        let sent = burst::send(&p, &token, &clips[5..], Arc::new(AtomicUsize::new(0))).await;
        // Every upload answered while publishing is blocked: their events wait in the outbox.
        let holding = outbox_holds_events(&p, &held).await;
        tokio::time::sleep(BLOCKED_FOR.saturating_sub(blocked_at.elapsed())).await;
        outage_over.cancel();
        (sent, holding)
    };
    let watching = watch_ready(&p, &["gateway", "catalog-indexer"], "rabbitmq", outage_over.clone());
    let ((during, holding), watched) = tokio::join!(during, watching);
    stack("memory-alarm", "off").await?;
    let up_at = Instant::now();
    let during = during?;
    holding?;
    let (unready, _) = watched?;
    ensure!(
        unready == 0,
        "the gateway or the indexer said \"not ready\" often enough in a row to leave the Service {unready} time(s) under the alarm"
    );
    let refused = before.refused_then_retried + during.refused_then_retried + p.balancer.refused();
    ensure!(refused == 0, "{refused} upload(s) were refused while the broker blocked publishers");
    let uploads: Vec<Upload> = before.uploads.into_iter().chain(during.uploads).collect();
    let accountant = Accountant::connect(&p).await?;
    let tally = accountant.settle(&p, &email, &uploads, RECOVERY_DEADLINE, false).await?;
    require_clean(&tally)?;
    let report = Report {
        uploads: uploads.len(),
        recovered_in: tally.complete_at.map(|at| at.saturating_duration_since(up_at)),
        notes: format!(
            "rabbitmq blocked publishers (memory alarm) for {} s; up to {} events waited in the outbox; 0 refused",
            BLOCKED_FOR.as_secs(),
            held.load(Ordering::SeqCst)
        ),
        ..Report::default()
    };
    p.stop().await?;
    Ok(report)
}

pub async fn rabbitmq_stopped() -> anyhow::Result<Report> {
    outage(Outage {
        which: Dependency::Rabbitmq,
        how: Break::Server("rabbitmq"),
        prefix: "mq",
        uploads: 50,
        cut_after: 10,
        down_for: Duration::from_secs(60),
        uploads_never_refused: true,
        stay_ready: &["gateway", "catalog-indexer"],
    })
    .await
}

pub async fn mongodb_restarted() -> anyhow::Result<Report> {
    outage(Outage {
        which: Dependency::Mongodb,
        how: Break::Server("mongo"),
        prefix: "mongo",
        uploads: 20,
        cut_after: 5,
        down_for: Duration::from_secs(20),
        uploads_never_refused: false,
        stay_ready: &[],
    })
    .await
}

pub async fn postgresql_restarted() -> anyhow::Result<Report> {
    outage(Outage {
        which: Dependency::Postgres,
        how: Break::Server("postgres"),
        prefix: "pg",
        uploads: 20,
        cut_after: 5,
        down_for: Duration::from_secs(20),
        uploads_never_refused: false,
        stay_ready: &[],
    })
    .await
}

pub async fn smtp_unreachable() -> anyhow::Result<Report> {
    outage(Outage {
        which: Dependency::Smtp,
        // MailDev keeps what it received in memory: stopping it would lose the evidence.
        how: Break::Network,
        prefix: "smtp",
        uploads: 20,
        cut_after: 5,
        down_for: Duration::from_secs(60),
        uploads_never_refused: true,
        stay_ready: &[],
    })
    .await
}

pub async fn dependencies_down_at_start() -> anyhow::Result<Report> {
    const OUTAGE: Duration = Duration::from_secs(15);
    let started = Instant::now();
    let p = Pipeline::start_with(Options { down_at_start: Some(OUTAGE), ..Options::default() }).await?;
    let up_after = started.elapsed();
    ensure!(up_after >= OUTAGE, "the services started in {up_after:?}, before their dependencies were there");
    let (email, token) = p.user().await?;
    let clips = burst::make_clips(&p, "cold", 5, 2)?;
    let sent = burst::send(&p, &token, &clips, Arc::new(AtomicUsize::new(0))).await?;
    let accountant = Accountant::connect(&p).await?;
    let tally = accountant.settle(&p, &email, &sent.uploads, RECOVERY_DEADLINE, false).await?;
    require_clean(&tally)?;
    let report = Report {
        uploads: sent.uploads.len(),
        recovered_in: Some(up_after.saturating_sub(OUTAGE)),
        notes: format!("all four dependencies unreachable for the first {} s; the services waited", OUTAGE.as_secs()),
        ..Report::default()
    };
    p.stop().await?;
    Ok(report)
}

fn converter_env(p: &Pipeline) -> Vec<(&'static str, String)> {
    vec![
        ("AMQP_URL", p.urls.amqp("converter")),
        ("MONGODB_URI", p.urls.mongo(tunewire_media_store::access::Account::Converter)),
        ("MONGODB_DATABASE_PREFIX", p.sandbox.mongo_prefix.clone()),
        ("CONVERTER_HEALTH_BIND", "127.0.0.1:0".into()),
        ("CONVERTER_CONCURRENCY", "2".into()),
    ]
}

/// The sandbox's MP3 chunks, and how many of them belong to no stored file.
async fn audio_chunks(p: &Pipeline) -> anyhow::Result<(u64, u64)> {
    use mongodb::bson::{Document, doc};
    let db = mongodb::Client::with_uri_str(&p.sandbox.stack.mongo_uri)
        .await?
        .database(&p.sandbox.mongo_database(tunewire_media_store::Bucket::Audio));
    let chunks = db.collection::<Document>("audio.chunks");
    let all = chunks.count_documents(doc! {}).await?;
    let files: Vec<mongodb::bson::Bson> = db.collection::<Document>("audio.files").distinct("_id", doc! {}).await?;
    let orphans = chunks.count_documents(doc! {"files_id": {"$nin": files}}).await?;
    Ok((all, orphans))
}

pub async fn converter_sigkilled() -> anyhow::Result<Report> {
    const KILLS: usize = 3;
    let p = Pipeline::start_with(Options { converter: false, ..Options::default() }).await?;
    let (email, token) = p.user().await?;
    // Ten minutes each: a few seconds of conversion, long enough to be killed in.
    let clips = burst::make_clips(&p, "kill", 6, 600)?;
    let sent = burst::send(&p, &token, &clips, Arc::new(AtomicUsize::new(0))).await?;
    for kill in 1..=KILLS {
        // MP3 chunks are stored as they are encoded: chunks that belong to no file yet mean
        // a conversion is under way.
        let (_, before) = audio_chunks(&p).await?;
        let converter = ServiceProcess::spawn("converter", &converter_env(&p)).await?;
        let pid = converter.pid().context("no pid")?;
        let what = format!("converter {kill} to be mid-conversion");
        let orphans = eventually(&what, PIPELINE_DEADLINE, || async {
            let (_, orphans) = audio_chunks(&p).await?;
            Ok::<_, anyhow::Error>((orphans > before).then_some(orphans))
        })
        .await?;
        converter.kill().await?;
        println!("  killed converter {kill} (pid {pid}) with {orphans} MP3 chunks written and no file yet");
    }
    let restarted_at = Instant::now();
    let converter = ServiceProcess::spawn("converter", &converter_env(&p)).await?;
    let accountant = Accountant::connect(&p).await?;
    let tally = accountant.settle(&p, &email, &sent.uploads, RECOVERY_DEADLINE, false).await?;
    require_clean(&tally)?;
    // Killed work was handed back by the broker, not lost with the process.
    let redelivered = p.sandbox.queue_stat("converter.media-uploaded", "redeliver").await?;
    ensure!(redelivered >= KILLS as u64, "only {redelivered} redeliveries after {KILLS} kills");
    // The dead converters' half-written MP3s are swept once their heartbeats go stale.
    wait_for_no_debris(&p).await?;
    ensure!(tunewire_e2e::readiness(&p.http, converter.health).await?.0, "the restarted converter is not ready");
    converter.kill().await?;
    let report = Report {
        uploads: sent.uploads.len(),
        recovered_in: tally.complete_at.map(|at| at.saturating_duration_since(restarted_at)),
        notes: format!("{KILLS} SIGKILLs mid-conversion; {redelivered} redeliveries"),
        ..Report::default()
    };
    p.stop().await?;
    Ok(report)
}

fn notifier_env(p: &Pipeline, lease_s: u64) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", p.urls.database("notifier")),
        ("AMQP_URL", p.urls.amqp("notifier")),
        ("SMTP_HOST", p.urls.smtp_host.clone()),
        ("SMTP_PORT", p.urls.smtp_port.to_string()),
        ("LINK_SECRET", p.link_secret.clone()),
        ("PUBLIC_URL", p.gateway.clone()),
        ("NOTIFIER_HEALTH_BIND", "127.0.0.1:0".into()),
        ("NOTIFIER_CLAIM_LEASE_S", lease_s.to_string()),
    ]
}

async fn all_converted(p: &Pipeline, uploads: &[Upload]) -> anyhow::Result<()> {
    let db = sqlx::PgPool::connect(&p.sandbox.database_url).await?;
    let ids: Vec<String> = uploads.iter().map(|u| u.job_id.clone()).collect();
    eventually("every job converted", PIPELINE_DEADLINE, || async {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM gateway.jobs WHERE id::text = ANY($1) AND state = 'converted'")
                .bind(&ids)
                .fetch_one(&db)
                .await?;
        Ok((done as usize == ids.len()).then_some(()))
    })
    .await?;
    db.close().await;
    Ok(())
}

/// A file FFmpeg crashes on: every converter that takes the job dies (a failpoint that calls
/// `abort()` where the transcode starts). The broker hands the job back each time, and the
/// job fails with a reason before the delivery limit would dead-letter it.
pub async fn converter_crashes_on_a_file() -> anyhow::Result<Report> {
    const MAX_CONVERTERS: usize = 10;
    let p = Pipeline::start_with(Options { converter: false, ..Options::default() }).await?;
    let (email, token) = p.user().await?;
    let clips = burst::make_clips(&p, "crash", 1, 2)?;
    let sent = burst::send(&p, &token, &clips, Arc::new(AtomicUsize::new(0))).await?;
    let job_id = sent.uploads.first().map(|u| u.job_id.clone()).context("no upload")?;
    let db = sqlx::PgPool::connect(&p.sandbox.database_url).await?;
    let job_state = || async {
        let row: (String, Option<String>) = sqlx::query_as("SELECT state, error FROM gateway.jobs WHERE id::text = $1")
            .bind(&job_id)
            .fetch_one(&db)
            .await?;
        Ok::<_, anyhow::Error>(row)
    };
    let mut env = converter_env(&p);
    env.push((CRASH_IN_TRANSCODE_VAR, "1".into()));
    let mut crashes = 0usize;
    let mut survivor = None;
    for _ in 0..MAX_CONVERTERS {
        let mut converter = ServiceProcess::spawn("converter", &env).await?;
        // It either dies on the job, or (once the job has been delivered often enough) fails
        // it without trying and lives on.
        let outcome = tokio::select! {
            status = converter.wait() => Some(status?),
            failed = eventually("the job to fail", PIPELINE_DEADLINE, || async {
                Ok(matches!(job_state().await?.0.as_str(), "failed").then_some(()))
            }) => { failed?; None }
        };
        match outcome {
            Some(status) => {
                ensure!(!status.success(), "a converter exited cleanly ({status}) instead of crashing");
                crashes += 1;
                println!("  converter {crashes} died on the job ({status})");
            }
            None => {
                survivor = Some(converter);
                break;
            }
        }
    }
    let converter = survivor.with_context(|| format!("the job was still not failed after {crashes} crashes"))?;
    let (state, reason) = job_state().await?;
    let reason = reason.unwrap_or_default();
    ensure!(state == "failed" && reason.contains("stopped on it"), "job ended {state}: {reason:?}");
    // Failed with a reason, not dead-lettered; and the uploader was told.
    let dead = p.depth("converter.media-uploaded.dead").await?.unwrap_or(0);
    ensure!(dead == 0, "{dead} messages dead-lettered instead of a failed job");
    p.emails(&email, 1).await?;
    ensure!(tunewire_e2e::readiness(&p.http, converter.health).await?.0, "the last converter is not ready");
    converter.kill().await?;
    db.close().await;
    let report = Report {
        uploads: sent.uploads.len(),
        notes: format!("{crashes} converters crashed on one file; the job failed with {reason:?}"),
        ..Report::default()
    };
    p.stop().await?;
    Ok(report)
}

pub async fn notifier_killed_after_send() -> anyhow::Result<Report> {
    const KILLS: usize = 3;
    const LEASE_S: u64 = 10;
    let p = Pipeline::start_with(Options { notifier: false, ..Options::default() }).await?;
    let (email, token) = p.user().await?;
    let clips = burst::make_clips(&p, "mail", 6, 2)?;
    let sent = burst::send(&p, &token, &clips, Arc::new(AtomicUsize::new(0))).await?;
    // Every outcome waits in the notifier's queue before any notifier runs.
    all_converted(&p, &sent.uploads).await?;
    let mut env = notifier_env(&p, LEASE_S);
    env.push((CRASH_AFTER_SEND_VAR, "1".into()));
    for kill in 1..=KILLS {
        let crashing = ServiceProcess::spawn("notifier", &env).await?;
        // Its first accepted email takes it down, before the ledger or the ack hear of it.
        let status = crashing.exited(PIPELINE_DEADLINE).await?;
        ensure!(!status.success(), "notifier {kill} exited cleanly ({status}) instead of crashing after a send");
        println!("  notifier {kill} died right after an SMTP send ({status})");
    }
    let restarted_at = Instant::now();
    let notifier = ServiceProcess::spawn("notifier", &notifier_env(&p, LEASE_S)).await?;
    let accountant = Accountant::connect(&p).await?;
    let tally = accountant.settle(&p, &email, &sent.uploads, RECOVERY_DEADLINE, false).await?;
    // Emails may be doubled (the crash is after the send), nothing else may.
    ensure!(tally.lost == 0, "{}", explain(&tally));
    ensure!(tally.duplicated == tally.extra_emails, "{}", explain(&tally));
    ensure!(
        tally.extra_emails <= KILLS,
        "{} duplicate emails from {KILLS} kills:\n  {}",
        tally.extra_emails,
        explain(&tally)
    );
    ensure!(tally.problems.iter().all(|p| p.contains("emails")), "{}", explain(&tally));
    ensure!(tunewire_e2e::readiness(&p.http, notifier.health).await?.0, "the restarted notifier is not ready");
    notifier.kill().await?;
    let report = Report {
        uploads: sent.uploads.len(),
        duplicated: tally.duplicated,
        recovered_in: tally.complete_at.map(|at| at.saturating_duration_since(restarted_at)),
        notes: format!("{KILLS} crashes after the SMTP 250, claim lease {LEASE_S} s; duplicates are emails only"),
        ..Report::default()
    };
    p.stop().await?;
    Ok(report)
}

pub async fn poison_messages() -> anyhow::Result<Report> {
    let p = Pipeline::start().await?;
    let publisher = tunewire_events::Bus::new(p.sandbox.amqp_url.clone(), "poison").publisher().await?;
    let bad: [&[u8]; 2] = [b"not json at all", br#"{"job_id": "nonsense", "preset": 42}"#];
    // `job.*` too: the notifier hears only those (the gateway's, checked against their jobs).
    for key in ["media.uploaded", "media.progress", "media.converted", "media.failed", "job.converted", "job.failed"] {
        for payload in bad {
            publisher.publish_raw(key, payload, &uuid::Uuid::new_v4().to_string()).await?;
        }
    }
    // Each queue's share: the routing keys it binds, two bad messages per key.
    let expected = [
        ("converter.media-uploaded", 2),
        ("catalog-indexer.media-converted", 2),
        ("notifier.outcomes", 4),
        ("gateway.job-state", 6),
    ];
    for (queue, count) in expected {
        let dead = format!("{queue}.dead");
        eventually(&format!("{count} in {dead}"), PIPELINE_DEADLINE, || async {
            Ok((p.depth(&dead).await? == Some(count) && p.depth(queue).await? == Some(0)).then_some(()))
        })
        .await?;
    }
    // Once each: nothing was put back to be tried again.
    for (queue, _) in expected {
        ensure!(p.sandbox.queue_stat(queue, "redeliver").await? == 0, "{queue} redelivered a bad message");
    }
    // And the consumers are still there: a real upload goes all the way.
    let (email, token) = p.user().await?;
    let clips = burst::make_clips(&p, "after-poison", 1, 2)?;
    let sent = burst::send(&p, &token, &clips, Arc::new(AtomicUsize::new(0))).await?;
    let accountant = Accountant::connect(&p).await?;
    let tally = accountant.settle(&p, &email, &sent.uploads, PIPELINE_DEADLINE, true).await?;
    // The dead-letter queues keep the bad messages for an operator: that is the point.
    let unexpected: Vec<&String> = tally.problems.iter().filter(|q| !q.contains(".dead:")).collect();
    ensure!(tally.lost == 0 && tally.duplicated == 0 && unexpected.is_empty(), "{}", explain(&tally));
    let report = Report {
        uploads: sent.uploads.len(),
        notes: "16 bad messages, each dead-lettered once; the pipeline kept working".into(),
        ..Report::default()
    };
    p.stop().await?;
    Ok(report)
}

fn one_at_a_time_converter_env(p: &Pipeline) -> Vec<(&'static str, String)> {
    let mut env = converter_env(p);
    env.retain(|(k, _)| *k != "CONVERTER_CONCURRENCY");
    env.push(("CONVERTER_CONCURRENCY", "1".into()));
    env
}

/// How many distinct MP3s are being written right now (chunks under an attempt's id).
async fn attempts_writing(p: &Pipeline) -> anyhow::Result<usize> {
    use mongodb::bson::{Document, doc};
    let mongo = mongodb::Client::with_uri_str(&p.sandbox.stack.mongo_uri).await?;
    let db = mongo.database(&p.sandbox.mongo_database(tunewire_media_store::Bucket::Audio));
    let outputs = mongo.database(&p.sandbox.mongo_outputs_database(tunewire_media_store::Bucket::Audio));
    let live: Vec<mongodb::bson::Bson> =
        outputs.collection::<Document>("audio_attempts").distinct("_id", doc! {}).await?;
    let writing: Vec<mongodb::bson::Bson> =
        db.collection::<Document>("audio.chunks").distinct("files_id", doc! {"files_id": {"$in": live}}).await?;
    Ok(writing.len())
}

/// Both converters subscribed to their queue (a converter says it is up before its consumer
/// is): with one message each in prefetch, a late one would leave the first to take both.
async fn both_consuming(p: &Pipeline) -> anyhow::Result<()> {
    eventually("two consumers on the converter's queue", PIPELINE_DEADLINE, || async {
        let queues = p.sandbox.queues().await?;
        let consumers = queues
            .iter()
            .find(|q| q["name"] == tunewire_events::topology::CONVERTER_QUEUE.name)
            .and_then(|q| q["consumers"].as_u64());
        Ok((consumers == Some(2)).then_some(()))
    })
    .await
}

/// Conversion attempts not yet ended, whatever they have written.
async fn attempts_open(p: &Pipeline) -> anyhow::Result<u64> {
    use mongodb::bson::{Document, doc};
    let db = mongodb::Client::with_uri_str(&p.sandbox.stack.mongo_uri)
        .await?
        .database(&p.sandbox.mongo_outputs_database(tunewire_media_store::Bucket::Audio));
    Ok(db.collection::<Document>("audio_attempts").count_documents(doc! {}).await?)
}

/// Downloads each upload's MP3 through the gateway and decodes it to the end: it must decode
/// without an error to within a second of `seconds`.
async fn mp3s_decode_whole(p: &Pipeline, token: &str, uploads: &[Upload], seconds: f64) -> anyhow::Result<()> {
    for upload in uploads {
        let job: serde_json::Value = p.job(token, &upload.job_id).await?.error_for_status()?.json().await?;
        let file_id = job["output"]["file_id"].as_str().with_context(|| format!("{}: no output", upload.title))?;
        let resp = p.http.get(format!("{}/v1/files/{file_id}", p.gateway)).bearer_auth(token).send().await?;
        ensure!(resp.status() == 200, "{}: download answered {}", upload.title, resp.status());
        let path = p.scratch.join(format!("{}.mp3", upload.job_id));
        tokio::fs::write(&path, resp.bytes().await?).await?;
        let decoded = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&path)
            .args(["-f", "null", "-"])
            .output()?;
        let errors = String::from_utf8_lossy(&decoded.stderr);
        ensure!(
            decoded.status.success() && errors.trim().is_empty(),
            "{}: the MP3 does not decode: {errors}",
            upload.title
        );
        let probed = tunewire_test_stack::media::probe(&path)?;
        let duration: f64 = probed["format"]["duration"].as_str().and_then(|d| d.parse().ok()).unwrap_or(0.0);
        ensure!((duration - seconds).abs() < 1.0, "{}: the MP3 lasts {duration} s, not {seconds} s", upload.title);
    }
    Ok(())
}

/// No attempt left registered, no chunk without a file: whatever the losers and the dead
/// wrote is gone (the sweep takes what a dead converter left, after its heartbeat went stale).
async fn wait_for_no_debris(p: &Pipeline) -> anyhow::Result<()> {
    eventually("no MP3 debris left", Duration::from_secs(90), || async {
        let (chunks, orphans) = audio_chunks(p).await?;
        let attempts = attempts_writing(p).await?;
        Ok((orphans == 0 && attempts == 0).then_some(chunks))
    })
    .await?;
    Ok(())
}

pub async fn one_job_delivered_to_two_converters() -> anyhow::Result<Report> {
    // Long enough that the second converter's consumer is up before the first one is done.
    const SECONDS: u32 = 1800;
    let p = Pipeline::start_with(Options { converter: false, ..Options::default() }).await?;
    let (email, token) = p.user().await?;
    let clips = burst::make_clips(&p, "twice", 1, SECONDS)?;
    let sent = burst::send(&p, &token, &clips, Arc::new(AtomicUsize::new(0))).await?;
    // The job's one message, taken off the queue and put back twice.
    let taken = eventually("the job's message in the converter's queue", PIPELINE_DEADLINE, || async {
        Ok(p.sandbox.take("converter.media-uploaded", 1).await?.pop())
    })
    .await?;
    let converters = [
        ServiceProcess::spawn("converter", &one_at_a_time_converter_env(&p)).await?,
        ServiceProcess::spawn("converter", &one_at_a_time_converter_env(&p)).await?,
    ];
    both_consuming(&p).await?;
    let publisher = tunewire_events::Bus::new(p.sandbox.amqp_url.clone(), "duplicator").publisher().await?;
    let payload = serde_json::to_vec(&taken)?;
    for _ in 0..2 {
        publisher.publish_raw("media.uploaded", &payload, &uuid::Uuid::new_v4().to_string()).await?;
    }
    eventually("both converters writing the job's MP3", PIPELINE_DEADLINE, || async {
        Ok((attempts_writing(&p).await? == 2).then_some(()))
    })
    .await?;
    let accountant = Accountant::connect(&p).await?;
    let tally = accountant.settle(&p, &email, &sent.uploads, RECOVERY_DEADLINE, false).await?;
    require_clean(&tally)?;
    mp3s_decode_whole(&p, &token, &sent.uploads, f64::from(SECONDS)).await?;
    wait_for_no_debris(&p).await?;
    for converter in converters {
        converter.kill().await?;
    }
    let report = Report {
        uploads: sent.uploads.len(),
        notes:
            "one message (a 30-minute input) delivered to two converters at once: both converted, one MP3 claimed the job, it decodes whole"
                .into(),
        ..Report::default()
    };
    p.stop().await?;
    Ok(report)
}

pub async fn rabbitmq_restarted_while_two_converters_work() -> anyhow::Result<Report> {
    const SECONDS: u32 = 600;
    let p = Pipeline::start_with(Options { converter: false, ..Options::default() }).await?;
    let (email, token) = p.user().await?;
    let converters = [
        ServiceProcess::spawn("converter", &one_at_a_time_converter_env(&p)).await?,
        ServiceProcess::spawn("converter", &one_at_a_time_converter_env(&p)).await?,
    ];
    both_consuming(&p).await?;
    let clips = burst::make_clips(&p, "held", 2, SECONDS)?;
    let sent = burst::send(&p, &token, &clips, Arc::new(AtomicUsize::new(0))).await?;
    eventually("both converters mid-conversion", PIPELINE_DEADLINE, || async {
        Ok((attempts_writing(&p).await? == 2).then_some(()))
    })
    .await?;
    // Cut at once (both still converting), then the server restarted behind the cut.
    p.faults.rabbitmq.down();
    let still_writing = attempts_writing(&p).await?;
    stack("stop", "rabbitmq").await?;
    stack("start", "rabbitmq").await?;
    p.faults.rabbitmq.up();
    let up_at = Instant::now();
    let accountant = Accountant::connect(&p).await?;
    let tally = accountant.settle(&p, &email, &sent.uploads, RECOVERY_DEADLINE, false).await?;
    require_clean(&tally)?;
    mp3s_decode_whole(&p, &token, &sent.uploads, f64::from(SECONDS)).await?;
    wait_for_no_debris(&p).await?;
    for converter in converters {
        converter.kill().await?;
    }
    let report = Report {
        uploads: sent.uploads.len(),
        recovered_in: tally.complete_at.map(|at| at.saturating_duration_since(up_at)),
        notes: format!(
            "rabbitmq cut and restarted while two converters converted 10-minute inputs ({still_writing} MP3s being written at the cut); every MP3 decodes whole"
        ),
        ..Report::default()
    };
    p.stop().await?;
    Ok(report)
}

/// What is left of a job anywhere in the pipeline: MP3 files and claims, catalog rows,
/// search hits (through the gateway), and emails about it.
async fn remains_of(p: &Pipeline, token: &str, email: &str, job_id: &str, title: &str) -> anyhow::Result<Vec<String>> {
    use mongodb::bson::{Document, doc};
    let mut remains = Vec::new();
    let mongo = mongodb::Client::with_uri_str(&p.sandbox.stack.mongo_uri).await?;
    let db = mongo.database(&p.sandbox.mongo_database(tunewire_media_store::Bucket::Audio));
    let outputs = mongo.database(&p.sandbox.mongo_outputs_database(tunewire_media_store::Bucket::Audio));
    let mp3s = db.collection::<Document>("audio.files").count_documents(doc! {"metadata.job_id": job_id}).await?;
    let claims = outputs.collection::<Document>("audio_outputs").count_documents(doc! {"_id": job_id}).await?;
    let pg = sqlx::PgPool::connect(&p.sandbox.database_url).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM catalog.tracks WHERE job_id = $1::uuid")
        .bind(job_id)
        .fetch_one(&pg)
        .await?;
    let hits: serde_json::Value = p
        .http
        .get(format!("{}/v1/search", p.gateway))
        .query(&[("q", title)])
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let hits = hits["hits"].as_array().map_or(0, |h| h.iter().filter(|h| h["job_id"] == job_id).count());
    let suffix = format!(": {title}");
    let mails = tunewire_test_stack::maildev::messages_to(&p.sandbox.stack.maildev_url, email).await?;
    let emails = mails.iter().filter(|m| m["subject"].as_str().is_some_and(|s| s.ends_with(&suffix))).count();
    for (what, n) in [
        ("MP3 files", mp3s),
        ("output claims", claims),
        ("catalog rows", rows as u64),
        ("search hits", hits as u64),
        ("emails", emails as u64),
    ] {
        if n > 0 {
            remains.push(format!("{title}: {n} {what}"));
        }
    }
    Ok(remains)
}

/// Whether every service has taken in the deletion of `job_id`: the converter's mark, the
/// catalog's, and the notifier's cancelled deliveries.
async fn deletion_seen(p: &Pipeline, job_id: &str) -> anyhow::Result<bool> {
    use mongodb::bson::{Document, doc};
    let db = mongodb::Client::with_uri_str(&p.sandbox.stack.mongo_uri)
        .await?
        .database(&p.sandbox.mongo_outputs_database(tunewire_media_store::Bucket::Audio));
    let converter = db.collection::<Document>("audio_deleted_jobs").count_documents(doc! {"_id": job_id}).await? == 1;
    let pg = sqlx::PgPool::connect(&p.sandbox.database_url).await?;
    let (catalog, notifier): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM catalog.removed_jobs WHERE job_id = $1::uuid),
                (SELECT count(*) = 2 FROM notifier.deliveries WHERE job_id = $1::uuid AND status = 'cancelled')",
    )
    .bind(job_id)
    .fetch_one(&pg)
    .await?;
    Ok(converter && catalog && notifier)
}

pub async fn jobs_deleted_before_and_while_converting() -> anyhow::Result<Report> {
    let p = Pipeline::start_with(Options { converter: false, ..Options::default() }).await?;
    let (email, token) = p.user().await?;
    let delete = |id: String| {
        let (http, url, token) = (p.http.clone(), format!("{}/v1/jobs/{id}", p.gateway), token.clone());
        async move {
            let status = http.delete(url).bearer_auth(token).send().await?.status();
            ensure!(status == 204, "DELETE answered {status}");
            anyhow::Ok(())
        }
    };
    let converting = |upload: Upload| {
        let (p, token) = (&p, token.clone());
        async move {
            eventually(&format!("{} converting", upload.title), PIPELINE_DEADLINE, || async {
                let state: serde_json::Value = p.job(&token, &upload.job_id).await?.json().await?;
                Ok((state["state"] == "converting" && attempts_writing(p).await? > 0).then_some(()))
            })
            .await
        }
    };
    // One deleted while it waits in the queue (no converter yet).
    let queued = burst::make_clips(&p, "gone-queued", 1, 2)?;
    let queued = burst::send(&p, &token, &queued, Arc::new(AtomicUsize::new(0))).await?.uploads.remove(0);
    delete(queued.job_id.clone()).await?;
    let converter = ServiceProcess::spawn("converter", &one_at_a_time_converter_env(&p)).await?;
    // One deleted through the API mid-conversion (its original goes with it).
    let clips = burst::make_clips(&p, "gone-converting", 2, 1800)?;
    let mid = burst::send(&p, &token, &clips[..1], Arc::new(AtomicUsize::new(0))).await?.uploads.remove(0);
    converting(mid.clone()).await?;
    delete(mid.job_id.clone()).await?;
    // And one whose deletion reaches the converter while the original is still there to read
    // (the event ahead of the gateway's removal of the files): it finishes, claims, and must
    // then keep nothing and announce nothing.
    let late = burst::send(&p, &token, &clips[1..], Arc::new(AtomicUsize::new(0))).await?.uploads.remove(0);
    converting(late.clone()).await?;
    let publisher = tunewire_events::Bus::new(p.sandbox.amqp_url.clone(), "deleter").publisher().await?;
    publisher.publish(&tunewire_contract::MediaDeleted { job_id: late.job_id.parse()? }).await?;
    let gone = [queued, mid, late];
    // Every service has taken in every deletion, and every attempt has ended: ending it is
    // the converter's last write, after its MP3 is removed.
    eventually("every deletion taken in, no attempt left", RECOVERY_DEADLINE, || async {
        for upload in &gone {
            if !deletion_seen(&p, &upload.job_id).await? {
                return Ok(None);
            }
        }
        Ok((attempts_open(&p).await? == 0).then_some(()))
    })
    .await?;
    let mut remains = Vec::new();
    for upload in &gone {
        remains.extend(remains_of(&p, &token, &email, &upload.job_id, &upload.title).await?);
    }
    ensure!(remains.is_empty(), "deleted jobs left things behind: {remains:?}");
    converter.kill().await?;
    let report = Report {
        uploads: gone.len(),
        notes: "deleted while queued, while converting, and by an event that reached the converter before the files went: no MP3, catalog row, search hit or email left".into(),
        ..Report::default()
    };
    p.stop().await?;
    Ok(report)
}

pub async fn retention_against_a_queued_job() -> anyhow::Result<Report> {
    let retention = tunewire_gateway::retention::Policy {
        originals: Duration::from_secs(1),
        outputs: Duration::from_secs(24 * 3600),
        every: Duration::from_millis(200),
    };
    let p =
        Pipeline::start_with(Options { converter: false, retention: Some(retention), ..Options::default() }).await?;
    let (email, token) = p.user().await?;
    let clips = burst::make_clips(&p, "kept", 2, 3)?;
    let queued = burst::send(&p, &token, &clips[..1], Arc::new(AtomicUsize::new(0))).await?.uploads;
    let ended = burst::send(&p, &token, &clips[1..], Arc::new(AtomicUsize::new(0))).await?.uploads.remove(0);
    // The second job ends (failed, as a converter would say) while the first still waits:
    // once retention has removed the second one's original, it has looked at the first's,
    // which is older.
    let me: serde_json::Value =
        p.http.get(format!("{}/v1/me", p.gateway)).bearer_auth(&token).send().await?.error_for_status()?.json().await?;
    let owner =
        tunewire_contract::Owner { id: me["id"].as_str().context("no id in /v1/me")?.parse()?, email: email.parse()? };
    let publisher = tunewire_events::Bus::new(p.sandbox.amqp_url.clone(), "stand-in").publisher().await?;
    publisher
        .publish(&tunewire_contract::MediaFailed {
            job_id: ended.job_id.parse()?,
            owner,
            source_filename: "kept-01.wav".into(),
            reason: "a stand-in converter's verdict".into(),
        })
        .await?;
    let pg = sqlx::PgPool::connect(&p.sandbox.database_url).await?;
    eventually("retention removing the ended job's original", PIPELINE_DEADLINE, || async {
        let removed: bool =
            sqlx::query_scalar("SELECT source_removed_at IS NOT NULL FROM gateway.jobs WHERE id = $1::uuid")
                .bind(&ended.job_id)
                .fetch_one(&pg)
                .await?;
        Ok(removed.then_some(()))
    })
    .await?;
    let (state, removed): (String, bool) =
        sqlx::query_as("SELECT state, source_removed_at IS NOT NULL FROM gateway.jobs WHERE id = $1::uuid")
            .bind(&queued[0].job_id)
            .fetch_one(&pg)
            .await?;
    ensure!(state == "queued" && !removed, "the queued job is {state}; its original removed: {removed}");
    // A converter arriving late still finds the original and converts the job.
    let converter = ServiceProcess::spawn("converter", &converter_env(&p)).await?;
    let accountant = Accountant::connect(&p).await?;
    let tally = accountant.settle(&p, &email, &queued, RECOVERY_DEADLINE, false).await?;
    require_clean(&tally)?;
    converter.kill().await?;
    let report = Report {
        uploads: 2,
        notes: "retention (originals after 1 s) against a job still queued: its original kept, and it converted once a converter came; the ended job's original removed".into(),
        ..Report::default()
    };
    p.stop().await?;
    Ok(report)
}
