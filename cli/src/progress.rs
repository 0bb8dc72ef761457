//! What a long command shows while it works, on stderr: progress bars on a terminal, plain
//! lines when the output goes to a pipe or a file (logs stay readable), nothing with
//! `--quiet`. Stdout is kept for the result (`--json` or the summary).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Lines,
    Quiet,
}

impl Mode {
    /// Bars only when both stdout and stderr are a terminal: a piped result means a script
    /// is reading, and it gets lines.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() && std::io::stdout().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

// About 80 columns before the message, which is written whole (a `wide_msg` would shrink
// to nothing on a narrow terminal).
const FILE_TEMPLATE: &str =
    "{prefix:20!} {bar:20.cyan/blue} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>11} {eta:>3} {msg}";
const TOTAL_TEMPLATE: &str =
    "{prefix:20!} {bar:20.green/blue} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>11} {eta:>3} {msg}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

/// The bars (or lines) of one command.
pub struct Progress {
    mode: Mode,
    multi: MultiProgress,
    total: Option<ProgressBar>,
}

impl Progress {
    /// `total`: the bytes of all files, for a total bar under the files' when there are several.
    pub fn new(mode: Mode, total: Option<u64>) -> Self {
        let multi = MultiProgress::with_draw_target(match mode {
            Mode::Bars => ProgressDrawTarget::stderr_with_hz(8),
            Mode::Lines | Mode::Quiet => ProgressDrawTarget::hidden(),
        });
        let total = total.filter(|_| mode == Mode::Bars).map(|bytes| {
            let bar = multi.add(ProgressBar::new(bytes).with_style(style(TOTAL_TEMPLATE)).with_prefix("total"));
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Progress { mode, multi, total }
    }

    /// A line above the bars, or on its own.
    pub fn say(&self, line: &str) {
        match self.mode {
            Mode::Bars => {
                let _ = self.multi.println(line);
            }
            Mode::Lines => eprintln!("{line}"),
            Mode::Quiet => {}
        }
    }

    /// A bar for one file of `size` bytes, above the total.
    pub fn file(&self, name: &str, size: u64) -> FileProgress<'_> {
        let bar = (self.mode == Mode::Bars).then(|| {
            let bar = ProgressBar::new(size).with_style(style(FILE_TEMPLATE)).with_prefix(name.to_owned());
            let bar = match &self.total {
                Some(total) => self.multi.insert_before(total, bar),
                None => self.multi.add(bar),
            };
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        FileProgress {
            progress: self,
            bar,
            name: name.to_owned(),
            size,
            last: Mutex::new((0, 0)),
            said: Mutex::default(),
        }
    }

    pub fn finish(&self) {
        if let Some(total) = &self.total {
            total.finish();
        }
    }
}

/// One file's bar; in line mode, a line at each quarter.
pub struct FileProgress<'a> {
    progress: &'a Progress,
    bar: Option<ProgressBar>,
    name: String,
    size: u64,
    /// The position last shown, and the last quarter announced.
    last: Mutex<(u64, u64)>,
    /// The first word of the last status line said.
    said: Mutex<String>,
}

impl FileProgress<'_> {
    /// `position` bytes of the file are done.
    pub fn at(&self, position: u64) {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (shown, quarter) = *last;
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        }
        if let Some(total) = &self.progress.total {
            if position >= shown {
                total.inc(position - shown);
            } else {
                total.set_position(total.position().saturating_sub(shown - position));
            }
        }
        let now = position.saturating_mul(4).checked_div(self.size).unwrap_or(4);
        if self.progress.mode == Mode::Lines && now > quarter && now < 4 {
            eprintln!("{}: {}% sent", self.name, now * 25);
        }
        *last = (position, now.max(quarter));
    }

    /// What is happening to the file now (shown beside its bar; as a line when what happens
    /// changes, so "converting 12%", "converting 40%"... is one line).
    pub fn status(&self, words: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(words.to_owned()),
            None => {
                let kind = words.split_whitespace().next().unwrap_or_default().to_owned();
                let mut said = self.said.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if *said != kind {
                    self.progress.say(&format!("{}: {words}", self.name));
                    *said = kind;
                }
            }
        }
    }

    /// Its last words; the bar stays, stopped.
    pub fn done(&self, words: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(words.to_owned()),
            None => self.progress.say(&format!("{}: {words}", self.name)),
        }
    }
}
