//! Settings from environment variables. Every setting has a default that works against the
//! local stack (`scripts/stack up`); secrets come from `NAME` or from the file named by
//! `NAME_FILE` (how Kubernetes mounts Secrets).

use std::fmt::Display;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}={value:?} is invalid: {reason}")]
    Invalid { key: String, value: String, reason: String },
    #[error("{key}_FILE={path:?} cannot be read: {source}")]
    SecretFile { key: String, path: String, source: std::io::Error },
    #[error("{key} (or {key}_FILE) must be set")]
    Missing { key: String },
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

/// A secret from `key`, or from the file `key_FILE` names (trailing newline trimmed).
pub fn secret(key: &str) -> Result<Option<String>, ConfigError> {
    let file_key = format!("{key}_FILE");
    if let Some(path) = var_opt::<String>(&file_key)? {
        return std::fs::read_to_string(&path)
            .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|source| ConfigError::SecretFile { key: key.into(), path, source });
    }
    var_opt(key)
}

/// Like [`secret`], but the service cannot run without it.
pub fn required_secret(key: &str) -> Result<String, ConfigError> {
    secret(key)?.ok_or_else(|| ConfigError::Missing { key: key.into() })
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
        assert_eq!(secret("TW_TEST_SECRET").unwrap().as_deref(), Some("s3cret"));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(secret("TW_TEST_SECRET"), Err(ConfigError::SecretFile { .. })));
        assert!(matches!(required_secret("TW_TEST_NOPE"), Err(ConfigError::Missing { .. })));
    }
}
