//! What can go wrong, each with the exit code scripts branch on and a stable machine code
//! (`--json` prints it) apart from the one-line message people read.

use std::process::ExitCode;

/// The documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// A job failed, a file was refused, or another error.
    Failed = 1,
    /// The command line is wrong (clap's own code for it).
    Usage = 2,
    /// Not logged in, or the token expired or was revoked.
    Auth = 3,
    /// The server could not be reached.
    Unreachable = 4,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("not logged in: run `tunewire login` (or set TUNEWIRE_TOKEN)")]
    NotLoggedIn,
    #[error("{message}: run `tunewire login`")]
    Unauthorized { message: String },
    /// The email or password given to `login` is wrong.
    #[error("{0}")]
    LoginRefused(String),
    #[error("cannot reach the server at {server} ({reason}): is it running? (`--server` or TUNEWIRE_SERVER)")]
    Unreachable { server: String, reason: String },
    /// A proxy answered for the server: no gateway is behind it now.
    #[error("the server's proxy answered {0}: no gateway is running behind it; try again later")]
    NoGateway(String),
    /// The server refused the request and said why.
    #[error("{message}")]
    Api { status: u16, code: String, message: String },
    #[error("the server answered something unexpected: {0}")]
    Protocol(String),
    #[error("{0}")]
    Usage(String),
    /// A file in the config folder is unreadable or not ours.
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// Some of the work failed; each failure was reported where it happened.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io { what: what.into(), source }
    }

    pub fn exit(&self) -> Exit {
        match self {
            CliError::NotLoggedIn | CliError::Unauthorized { .. } | CliError::LoginRefused(_) => Exit::Auth,
            CliError::Unreachable { .. } | CliError::NoGateway(_) => Exit::Unreachable,
            CliError::Usage(_) => Exit::Usage,
            CliError::Api { .. }
            | CliError::Protocol(_)
            | CliError::Io { .. }
            | CliError::Failed(_)
            | CliError::Config(_) => Exit::Failed,
        }
    }

    /// A stable name for the kind of failure: the server's own code for its refusals.
    pub fn code(&self) -> &str {
        match self {
            CliError::NotLoggedIn => "not_logged_in",
            CliError::Unauthorized { .. } => "unauthorized",
            CliError::LoginRefused(_) => "login_refused",
            CliError::Unreachable { .. } | CliError::NoGateway(_) => "server_unreachable",
            CliError::Api { code, .. } => code,
            CliError::Protocol(_) => "protocol_error",
            CliError::Usage(_) => "usage",
            CliError::Config(_) => "config_unreadable",
            CliError::Io { .. } => "io_error",
            CliError::Failed(_) => "failed",
        }
    }

    /// Worth trying again as it is: the server was unreachable or busy.
    pub fn transient(&self) -> bool {
        match self {
            CliError::Unreachable { .. } | CliError::NoGateway(_) => true,
            CliError::Api { status, .. } => matches!(status, 408 | 423 | 429 | 500..=599),
            _ => false,
        }
    }
}
