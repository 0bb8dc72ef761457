//! The result of a command on stdout: one JSON document with `--json`, else lines for people.

use std::io::Write;

use serde::Serialize;
use tunewire_contract::jobs::Job;

use crate::error::CliError;

/// Writes `text` and a newline to stdout. A reader that went away (`tunewire jobs | head`)
/// ends the program quietly, as it would a shell tool; `println!` would panic.
pub fn line(text: impl std::fmt::Display) {
    write_all(format!("{text}\n").as_bytes());
}

/// Writes `bytes` to stdout as they are (see `line`).
pub fn write_all(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("tunewire: writing the output: {e}");
        std::process::exit(1);
    }
}

/// Prints `value` as the command's one JSON document.
pub fn json<T: Serialize>(value: &T) -> Result<(), CliError> {
    line(serde_json::to_string_pretty(value).map_err(|e| CliError::Protocol(e.to_string()))?);
    Ok(())
}

/// Prints `value` as one line of a JSON stream (`--watch --json`), or a document on one line.
pub fn json_line<T: Serialize>(value: &T) -> Result<(), CliError> {
    line(serde_json::to_string(value).map_err(|e| CliError::Protocol(e.to_string()))?);
    Ok(())
}

/// `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// `3:25`, `1:02:03`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 { format!("{h}:{m:02}:{s:02}") } else { format!("{m}:{s:02}") }
}

/// One line per job: id, state, name, size, when.
pub fn job_line(job: &Job) -> String {
    let state = match job.state {
        tunewire_contract::jobs::JobState::Converting => format!("converting {:.0}%", job.progress * 100.0),
        state => state.to_string(),
    };
    format!(
        "{}  {:<15} {:<40} {:>10}  {}",
        job.id,
        state,
        job.source.filename,
        bytes(u64::try_from(job.source.size).unwrap_or(0)),
        job.created_at.format("%Y-%m-%d %H:%M")
    )
}

/// Everything about one job, a field per line.
pub fn job_details(job: &Job) -> String {
    let mut lines = vec![
        format!("id:       {}", job.id),
        format!("file:     {} ({})", job.source.filename, bytes(u64::try_from(job.source.size).unwrap_or(0))),
        format!("state:    {}", job.state),
        format!("preset:   {}", job.preset),
        format!("created:  {}", job.created_at.to_rfc3339()),
        format!("updated:  {}", job.updated_at.to_rfc3339()),
    ];
    if let Some(error) = &job.error {
        lines.push(format!("error:    {error}"));
    }
    if let Some(output) = &job.output {
        lines.push(format!("mp3:      {}", output.file_id));
        if let Some(d) = output.duration_s {
            lines.push(format!("duration: {}", duration(d)));
        }
        if let Some(b) = output.bitrate {
            lines.push(format!("bitrate:  {} kb/s", b / 1000));
        }
    }
    if !job.tags.is_empty() {
        lines.push(format!("tags:     {}", job.tags.join(", ")));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(300 << 20), "300.0 MiB");
        assert_eq!(duration(205.4), "3:25");
        assert_eq!(duration(3723.0), "1:02:03");
    }
}
