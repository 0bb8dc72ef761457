//! The fault suite: bursts of uploads through the public API while something breaks, then
//! an account of every upload (job state, MP3, catalog row, emails, queues). Scenarios run
//! one at a time, so that time-to-recover figures mean something on a small machine, and
//! the report table is printed at the end (docs/reliability.md keeps the measured one).
//!
//! Its own harness (`harness = false`): it re-executes itself as a converter or notifier
//! process (`TUNEWIRE_FAULTS_ROLE`) so that a scenario can SIGKILL a real process. Arguments
//! that are not flags filter scenarios by name, as libtest's do; `--list` lists them.

mod accounting;
mod bad_input;
mod burst;
mod process;
mod scenarios;

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Panics anywhere in the process (services included): a fault must never cause one.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// One row of the report.
#[derive(Debug, Default)]
pub struct Report {
    pub uploads: usize,
    /// Uploads the API refused while a dependency was down (503), retried by the client.
    pub refused_then_retried: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// From the fault's end (dependency back, process restarted) to every upload accounted for.
    pub recovered_in: Option<Duration>,
    pub notes: String,
}

type ScenarioFn = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Report>>>>;

const SCENARIOS: &[(&str, ScenarioFn)] = &[
    ("converter_sigkilled_mid_conversion_three_times", || Box::pin(scenarios::converter_sigkilled())),
    ("converter_crashes_on_a_file", || Box::pin(scenarios::converter_crashes_on_a_file())),
    ("rabbitmq_stopped_60s_during_a_burst_of_50", || Box::pin(scenarios::rabbitmq_stopped())),
    ("jobs_deleted_before_and_while_converting", || Box::pin(scenarios::jobs_deleted_before_and_while_converting())),
    ("retention_against_a_queued_job", || Box::pin(scenarios::retention_against_a_queued_job())),
    ("rabbitmq_blocks_publishers_30s_memory_alarm", || Box::pin(scenarios::rabbitmq_blocks_publishers())),
    ("one_job_delivered_to_two_converters_at_once", || Box::pin(scenarios::one_job_delivered_to_two_converters())),
    ("rabbitmq_restarted_while_two_converters_work", || {
        Box::pin(scenarios::rabbitmq_restarted_while_two_converters_work())
    }),
    ("mongodb_stopped_and_restarted_during_a_burst", || Box::pin(scenarios::mongodb_restarted())),
    ("postgresql_restarted_during_a_burst", || Box::pin(scenarios::postgresql_restarted())),
    ("smtp_unreachable_60s", || Box::pin(scenarios::smtp_unreachable())),
    ("notifier_killed_between_smtp_send_and_ack", || Box::pin(scenarios::notifier_killed_after_send())),
    ("services_started_before_their_dependencies", || Box::pin(scenarios::dependencies_down_at_start())),
    ("poison_and_malformed_messages_on_every_queue", || Box::pin(scenarios::poison_messages())),
    ("bad_input_through_the_api", || Box::pin(bad_input::run())),
];

fn main() -> ExitCode {
    if let Ok(role) = std::env::var(process::ROLE_VAR) {
        return process::run_role(&role);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in SCENARIOS {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let chosen: Vec<_> = SCENARIOS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();

    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("\nrunning {} fault scenarios, one at a time", chosen.len());
    let mut rows = Vec::new();
    let mut failed = 0;
    for (name, scenario) in chosen {
        let started = Instant::now();
        let panics_before = PANICS.load(Ordering::SeqCst);
        let outcome = runtime.block_on(scenario());
        let panics = PANICS.load(Ordering::SeqCst) - panics_before;
        let outcome = match outcome {
            Ok(_) if panics > 0 => Err(anyhow::anyhow!("{panics} panic(s) during the scenario")),
            other => other,
        };
        match outcome {
            Ok(report) => {
                println!("scenario {name} ... ok ({:.0?})", started.elapsed());
                rows.push((name, report));
            }
            Err(e) => {
                failed += 1;
                println!("scenario {name} ... FAILED ({:.0?})\n{e:#}", started.elapsed());
            }
        }
    }
    println!("\n| scenario | uploads | refused (503), retried | lost | duplicated | time to recover | notes |");
    println!("|---|---|---|---|---|---|---|");
    for (name, r) in &rows {
        let recovered = r.recovered_in.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
        println!(
            "| {name} | {} | {} | {} | {} | {recovered} | {} |",
            r.uploads, r.refused_then_retried, r.lost, r.duplicated, r.notes
        );
    }
    println!("\nfault suite: {} passed, {failed} failed", rows.len());
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
