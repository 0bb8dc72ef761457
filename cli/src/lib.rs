//! `tunewire`, the command-line client of Tunewire's HTTP API: log in, upload with tus
//! (resuming across runs), follow conversions, list, download, search, delete.
//!
//! stdout carries only the result (one JSON document with `--json`); progress and messages
//! go to stderr; the exit code says what happened (`error::Exit`).

pub mod account;
pub mod api;
pub mod args;
pub mod config;
pub mod download;
pub mod error;
pub mod follow;
pub mod jobs;
pub mod output;
pub mod progress;
pub mod rate;
pub mod resume;
pub mod sse;
pub mod tus;
pub mod upload;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use serde_json::json;

use crate::api::Api;
use crate::args::{Cli, Command};
use crate::error::{CliError, Exit};
use crate::progress::{Mode, Progress};
use crate::upload::Outcome;

/// Parses the command line, runs the command, prints its error in one line (and as JSON with
/// `--json`), and says how to exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.global.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tunewire: cannot start: {e}");
            return Exit::Failed.into();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => exit.into(),
        Err(e) => {
            if json {
                // On one line: after `jobs --watch --json`'s lines, it is one more of them.
                let _ = output::json_line(&json!({ "error": e.code(), "message": e.to_string() }));
            }
            eprintln!("tunewire: {e}");
            e.exit().into()
        }
    }
}

/// Runs one command; `Ok` carries the exit code of a command that finished but found
/// failures (a refused file, a failed job), which it has already reported.
pub async fn run(cli: Cli) -> Result<Exit, CliError> {
    let global = cli.global;
    let dir = config::dir()?;
    let stored = config::load_credentials(&dir)?;
    let server = config::server(global.server.as_deref(), stored.as_ref());
    let api = Api::new(server.clone(), config::token(&server, stored.as_ref()))?;
    let mode = Mode::detect(global.quiet);
    let say = |line: String| {
        if !global.quiet {
            eprintln!("{line}");
        }
    };

    match cli.command {
        Command::Register { email, password_stdin } => {
            let body = account::ask(email, password_stdin)?;
            account::register(&api, &body).await?;
            let credentials = account::login(&api, &dir, body).await?;
            if global.json {
                output::json(&json!({ "server": credentials.server, "email": credentials.email }))?;
            } else {
                say(format!("Registered and logged in to {} as {}", credentials.server, credentials.email));
            }
        }
        Command::Login { email, password_stdin } => {
            let credentials = account::login(&api, &dir, account::ask(email, password_stdin)?).await?;
            if global.json {
                output::json(&json!({ "server": credentials.server, "email": credentials.email }))?;
            } else {
                say(format!("Logged in to {} as {}", credentials.server, credentials.email));
            }
        }
        Command::Logout => {
            let removed = config::forget_credentials(&dir)?;
            if global.json {
                output::json(&json!({ "logged_out": removed }))?;
            } else {
                say(if removed { "Logged out.".to_owned() } else { "Not logged in.".to_owned() });
            }
        }
        Command::Whoami => {
            let me = account::whoami(&api).await?;
            if global.json { output::json(&me)? } else { output::line(account::describe(&me)) }
        }
        Command::Upload(options) => {
            let store = resume::ResumeStore::new(&dir);
            let results = upload::run(&api, &store, &options, mode).await?;
            let failed = results
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Refused | Outcome::Failed | Outcome::Error))
                .count();
            if global.json {
                output::json(&json!({ "files": results }))?;
            } else {
                for r in &results {
                    let outcome = serde_json::to_value(r.outcome).unwrap_or_default();
                    let outcome = outcome.as_str().unwrap_or_default();
                    let detail = match (&r.reason, &r.job_id) {
                        (Some(reason), _) => reason.message.clone(),
                        (None, Some(id)) => format!("job {id}"),
                        (None, None) => String::new(),
                    };
                    output::line(format_args!("{:<10} {}  {detail}", outcome, r.file));
                }
            }
            if failed > 0 {
                say(format!("{failed} of {} files did not make it", results.len()));
                return Ok(Exit::Failed);
            }
        }
        Command::Jobs { state, limit, watch } => {
            let page = jobs::list(&api, state, limit).await?;
            if global.json && watch {
                for job in &page.jobs {
                    output::json_line(job)?;
                }
            } else if global.json {
                output::json(&page)?;
            } else {
                for job in &page.jobs {
                    output::line(output::job_line(job));
                }
                if page.next_cursor.is_some() {
                    say(format!("(the newest {limit}; --limit shows up to 100)"));
                }
            }
            if watch {
                let mut print = |job: &tunewire_contract::jobs::Job| {
                    if state.is_some_and(|s| s != job.state) {
                        return Ok(());
                    }
                    if global.json {
                        return output::json_line(job);
                    }
                    output::line(output::job_line(job));
                    Ok(())
                };
                loop {
                    let opened = || say("watching: each change follows (Ctrl-C stops)".into());
                    match jobs::watch(&api, &opened, &mut print).await {
                        Ok(()) => {}
                        Err(e) if e.exit() == Exit::Unreachable => {}
                        Err(e) => return Err(e),
                    }
                    // The stream ends when the token lapses (this says so) or a gateway stops
                    // (then another takes over).
                    account::whoami(&api).await?;
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
        Command::Job { id } => {
            let job = jobs::get(&api, &id).await?;
            if global.json { output::json(&job)? } else { output::line(output::job_details(&job)) }
        }
        Command::Delete { ids } => {
            let mut deleted = Vec::new();
            let mut errors = Vec::new();
            for id in &ids {
                match jobs::delete(&api, id).await {
                    Ok(()) => {
                        say(format!("deleted {id}"));
                        deleted.push(id.clone());
                    }
                    Err(e) if matches!(e.exit(), Exit::Auth | Exit::Unreachable) => return Err(e),
                    Err(e) => {
                        say(format!("{id}: {e}"));
                        errors.push(json!({ "job_id": id, "error": e.code(), "message": e.to_string() }));
                    }
                }
            }
            if global.json {
                output::json(&json!({ "deleted": deleted, "errors": errors }))?;
            }
            if !errors.is_empty() {
                return Ok(Exit::Failed);
            }
        }
        Command::Download { ids, output: dir } => {
            tokio::fs::create_dir_all(&dir).await.map_err(|e| CliError::io(format!("{}", dir.display()), e))?;
            let progress = Progress::new(mode, None);
            let mut downloaded = Vec::new();
            let mut errors = Vec::new();
            let mut taken = std::collections::HashSet::new();
            for id in &ids {
                match download::one(&api, id, &dir, &progress, &mut taken).await {
                    Ok(d) => downloaded.push(d),
                    Err(e) if matches!(e.exit(), Exit::Auth | Exit::Unreachable) => return Err(e),
                    Err(e) => {
                        progress.say(&format!("{id}: {e}"));
                        errors.push(json!({ "job_id": id, "error": e.code(), "message": e.to_string() }));
                    }
                }
            }
            if global.json {
                output::json(&json!({ "downloaded": downloaded, "errors": errors }))?;
            } else {
                for d in &downloaded {
                    output::line(d.path.display());
                }
            }
            if !errors.is_empty() {
                return Ok(Exit::Failed);
            }
        }
        Command::Search { query, tag, artist, limit } => {
            let page = jobs::search(&api, query, tag, artist, limit).await?;
            if global.json {
                output::json(&page)?;
            } else {
                for hit in &page.hits {
                    let artist = hit.artist.as_deref().map(|a| format!(" — {a}")).unwrap_or_default();
                    let tags = if hit.tags.is_empty() { String::new() } else { format!("  [{}]", hit.tags.join(", ")) };
                    output::line(format_args!("{}  {}{artist}{tags}", hit.job_id, hit.title));
                }
                say(format!("{} of {} matching", page.hits.len(), page.total));
            }
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tunewire", &mut script);
            output::write_all(&script);
        }
    }
    Ok(Exit::Ok)
}
