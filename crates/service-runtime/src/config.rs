//! Settings from environment variables. Every setting has a default that works against the
//! local stack (`scripts/stack up`); secrets come from `NAME` or from the file named by
//! `NAME_FILE` (how Kubernetes mounts Secrets).

use std::fmt::Display;
use std::str::FromStr;

pub use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}={value:?} is invalid: {reason}")]
    Invalid { key: String, value: String, reason: String },
    #[error("{key}_FILE={path:?} cannot be read: {source}")]
    SecretFile { key: String, path: String, source: std::io::Error },
    #[error("{key} (or {key}_FILE) must be set")]
    Missing { key: String },
    #[error("{key} is {length} bytes long; a key must have at least {min_bytes} (e.g. `openssl rand -base64 48`)")]
    TooShort { key: String, length: usize, min_bytes: usize },
}

/// `key` parsed as `T`, or `default` when unset or empty.
pub fn var<T>(key: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    Ok(var_opt(key)?.unwrap_or(default))
}

/// `key` parsed as `T`, or `None` when unset or empty.
pub fn var_opt<T>(key: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var(key) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|e: T::Err| ConfigError::Invalid { key: key.into(), value, reason: e.to_string() }),
        _ => Ok(None),
    }
}

/// A secret from `key`, or from the file `key_FILE` names (trailing newline trimmed). A
/// `SecretString`: its `Debug` prints no value, so no config dump or error shows it.
pub fn secret(key: &str) -> Result<Option<SecretString>, ConfigError> {
    let file_key = format!("{key}_FILE");
    if let Some(path) = var_opt::<String>(&file_key)? {
        return std::fs::read_to_string(&path)
            .map(|s| Some(SecretString::from(s.trim_end_matches(['\n', '\r']))))
            .map_err(|source| ConfigError::SecretFile { key: key.into(), path, source });
    }
    Ok(std::env::var(key).ok().filter(|v| !v.trim().is_empty()).map(|v| SecretString::from(v.trim())))
}

/// Like [`secret`], but the service cannot run without it.
pub fn required_secret(key: &str) -> Result<SecretString, ConfigError> {
    secret(key)?.ok_or_else(|| ConfigError::Missing { key: key.into() })
}

/// A secret used as a key (HMAC, encryption): refused when shorter than `min_bytes`, so an
/// empty or placeholder file cannot become a guessable key.
pub fn secret_key(key: &str, min_bytes: usize) -> Result<Option<SecretString>, ConfigError> {
    match secret(key)? {
        Some(value) if value.expose_secret().len() < min_bytes => {
            Err(ConfigError::TooShort { key: key.into(), length: value.expose_secret().len(), min_bytes })
        }
        other => Ok(other),
    }
}

/// Like [`secret_key`], but the service cannot run without it.
pub fn required_secret_key(key: &str, min_bytes: usize) -> Result<SecretString, ConfigError> {
    secret_key(key, min_bytes)?.ok_or_else(|| ConfigError::Missing { key: key.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test uses its own variable names: tests run in parallel in one process.
    #[test]
    fn var_parses_or_defaults() {
        unsafe { std::env::set_var("TW_TEST_PORT", "9000") };
        assert_eq!(var("TW_TEST_PORT", 1u16).unwrap(), 9000);
        assert_eq!(var("TW_TEST_UNSET", 7u16).unwrap(), 7);
        unsafe { std::env::set_var("TW_TEST_BAD", "nine") };
        let err = var("TW_TEST_BAD", 1u16).unwrap_err().to_string();
        assert!(err.contains("TW_TEST_BAD") && err.contains("nine"), "{err}");
    }

    #[test]
    fn secret_prefers_the_file() {
        let path = std::env::temp_dir().join(format!("tw-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        unsafe {
            std::env::set_var("TW_TEST_SECRET", "inline");
            std::env::set_var("TW_TEST_SECRET_FILE", &path);
        }
        let read = secret("TW_TEST_SECRET").unwrap().unwrap();
        assert_eq!(read.expose_secret(), "s3cret");
        assert!(!format!("{read:?}").contains("s3cret"), "a secret's Debug shows its value");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(secret("TW_TEST_SECRET"), Err(ConfigError::SecretFile { .. })));
        assert!(matches!(required_secret("TW_TEST_NOPE"), Err(ConfigError::Missing { .. })));
    }

    #[test]
    fn a_key_from_an_empty_file_or_too_short_is_refused_by_name() {
        let path = std::env::temp_dir().join(format!("tw-key-{}", std::process::id()));
        std::fs::write(&path, "\n").unwrap();
        unsafe { std::env::set_var("TW_TEST_KEY_FILE", &path) };
        let err = required_secret_key("TW_TEST_KEY", 32).unwrap_err().to_string();
        assert!(err.contains("TW_TEST_KEY") && err.contains("0 bytes"), "{err}");
        std::fs::write(&path, "x".repeat(32)).unwrap();
        assert_eq!(required_secret_key("TW_TEST_KEY", 32).unwrap().expose_secret().len(), 32);
        std::fs::remove_file(&path).unwrap();
        assert!(secret_key("TW_TEST_KEY_UNSET", 32).unwrap().is_none());
    }
}
