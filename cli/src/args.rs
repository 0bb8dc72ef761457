//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tunewire_contract::Preset;
use tunewire_contract::jobs::JobState;

use crate::rate::Rate;

const EXAMPLES: &str = "\
Examples:
  tunewire register --server http://localhost:8080    # or `login` to an existing account
  tunewire upload ~/Videos/talks --wait            # every media file in the folder, 2 at a time
  tunewire upload concert.mp4 --title \"Live at the Roxy\" --artist Tunes --preset cbr256
  tunewire jobs --state failed
  tunewire download 0b0e...c1 -o ~/Music
  tunewire search \"moonlite serenade\" --tag jazz
  tunewire jobs --json | jq '.jobs[].state'

Exit codes: 0 ok, 1 a job failed or a request was refused, 2 usage, 3 not logged in or
token expired, 4 server unreachable.
Environment: TUNEWIRE_SERVER, TUNEWIRE_TOKEN (instead of `login`), TUNEWIRE_CONFIG_DIR.";

/// Upload videos and audio to Tunewire and get MP3s back.
#[derive(Debug, Parser)]
#[command(name = "tunewire", version, about, after_help = EXAMPLES, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The Tunewire server (default: the one you logged in to, else http://localhost:8080).
    #[arg(long, global = true, env = "TUNEWIRE_SERVER", hide_env = true)]
    pub server: Option<String>,
    /// Print one JSON document on stdout and nothing else (`jobs --watch`: one per line).
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress and no messages on stderr; errors still.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account, then log in as with `login`.
    Register {
        /// The account's email (asked for when left out).
        #[arg(long)]
        email: Option<String>,
        /// Read the password from stdin instead of asking on the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Log in and keep the token in your config folder (mode 0600).
    Login {
        /// Your account's email (asked for when left out).
        #[arg(long)]
        email: Option<String>,
        /// Read the password from stdin instead of asking on the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the stored token.
    Logout,
    /// Who you are logged in as, and your quotas.
    Whoami,
    /// Upload files, or every media file in folders; resumes where an earlier run stopped.
    Upload(Upload),
    /// List your jobs, newest first.
    Jobs {
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<JobState>,
        /// How many.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=100))]
        limit: u16,
        /// Then keep printing each change (Ctrl-C stops); with --json, one JSON object per line.
        #[arg(long)]
        watch: bool,
    },
    /// Show one job.
    Job { id: String },
    /// Delete jobs (their MP3 and original with them).
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Download converted jobs' MP3s, resuming a partial download.
    Download {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Into this folder.
        #[arg(long, short = 'o', default_value = ".")]
        output: PathBuf,
    },
    /// Fuzzy search over your tracks' titles, artists, albums and tags.
    Search {
        query: Option<String>,
        /// Only tracks with this Last.fm tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only tracks by this artist.
        #[arg(long)]
        artist: Option<String>,
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=100))]
        limit: u16,
    },
    /// Print a shell completion script (e.g. `tunewire completions bash > ~/.local/share/bash-completion/completions/tunewire`).
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
pub struct Upload {
    /// Files, or folders to search for media files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The MP3's encoding: cbr128, cbr192 (the default), cbr256, cbr320, v0 or v2.
    #[arg(long)]
    pub preset: Option<Preset>,
    /// The track's title (else the file's own tag, else its name).
    #[arg(long)]
    pub title: Option<String>,
    /// The track's artist.
    #[arg(long)]
    pub artist: Option<String>,
    /// The track's album.
    #[arg(long)]
    pub album: Option<String>,
    /// Normalise loudness (EBU R128).
    #[arg(long)]
    pub loudnorm: bool,
    /// Follow each conversion to its end; exit 1 if any failed.
    #[arg(long)]
    pub wait: bool,
    /// Files sent at once.
    #[arg(long, short = 'j', default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub jobs: u16,
    /// At most this many bytes per second in all (e.g. 20M).
    #[arg(long)]
    pub bwlimit: Option<Rate>,
}
