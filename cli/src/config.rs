//! Where the client keeps what outlives a run: the server and token from `tunewire login`
//! (`credentials.json`) and the unfinished uploads (`uploads.json`), in the user's config
//! folder (`~/.config/tunewire` on Linux), both mode 0600. `TUNEWIRE_CONFIG_DIR` moves the
//! folder; `TUNEWIRE_SERVER` and `TUNEWIRE_TOKEN` override what is stored.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::CliError;

pub const CONFIG_DIR_ENV: &str = "TUNEWIRE_CONFIG_DIR";
pub const SERVER_ENV: &str = "TUNEWIRE_SERVER";
pub const TOKEN_ENV: &str = "TUNEWIRE_TOKEN";
pub const DEFAULT_SERVER: &str = "http://localhost:8080";

/// The config folder.
pub fn dir() -> Result<PathBuf, CliError> {
    if let Some(dir) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("", "", "tunewire")
        .map(|dirs| dirs.config_dir().to_path_buf())
        .ok_or_else(|| CliError::Config(format!("no home folder to keep the login in; set {CONFIG_DIR_ENV}")))
}

/// A bearer token; never printed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    pub fn new(token: String) -> Self {
        Token(token)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

/// What `tunewire login` stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub server: String,
    pub email: String,
    pub token: Token,
}

/// The server a command talks to: `--server`, else TUNEWIRE_SERVER, else the login's, else
/// the local default.
pub fn server(flag: Option<&str>, stored: Option<&Credentials>) -> String {
    let chosen = flag
        .map(str::to_owned)
        .or_else(|| std::env::var(SERVER_ENV).ok().filter(|s| !s.is_empty()))
        .or_else(|| stored.map(|c| c.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    chosen.trim_end_matches('/').to_owned()
}

/// The token: TUNEWIRE_TOKEN, else the login's when it was made for this server.
pub fn token(server: &str, stored: Option<&Credentials>) -> Option<Token> {
    if let Some(token) = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()) {
        return Some(Token(token));
    }
    stored.filter(|c| c.server == server).map(|c| c.token.clone())
}

pub fn credentials_path(dir: &Path) -> PathBuf {
    dir.join("credentials.json")
}

pub fn load_credentials(dir: &Path) -> Result<Option<Credentials>, CliError> {
    read_json(&credentials_path(dir))
}

pub fn save_credentials(dir: &Path, credentials: &Credentials) -> Result<(), CliError> {
    write_json(&credentials_path(dir), credentials)
}

/// Removes the stored login; whether there was one.
pub fn forget_credentials(dir: &Path) -> Result<bool, CliError> {
    let path = credentials_path(dir);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CliError::io(format!("removing {}", path.display()), e)),
    }
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, CliError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        CliError::Config(format!("{} is not what tunewire wrote ({e}); remove it and try again", path.display()))
    })
}

/// Writes `value` whole or not at all (a temporary file renamed over the old one), readable
/// by the user only.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), CliError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let what = || format!("writing {}", path.display());
    create_private_dir(dir).map_err(|e| CliError::io(what(), e))?;
    // tempfile creates the file with mode 0600.
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| CliError::io(what(), e))?;
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| CliError::Protocol(e.to_string()))?;
    file.write_all(&bytes).map_err(|e| CliError::io(what(), e))?;
    file.persist(path).map_err(|e| CliError::io(what(), e.error))?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_private_and_the_token_is_never_printed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let credentials = Credentials {
            server: "http://h:1".into(),
            email: "a@b.c".into(),
            token: Token::new("secret-token".into()),
        };
        save_credentials(dir.path(), &credentials).expect("saved");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(credentials_path(dir.path())).expect("exists").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let back = load_credentials(dir.path()).expect("read").expect("there");
        assert_eq!(back.token.expose(), "secret-token");
        assert!(!format!("{back:?}").contains("secret-token"));
        assert!(forget_credentials(dir.path()).expect("removed"));
        assert!(load_credentials(dir.path()).expect("read").is_none());
    }
}
