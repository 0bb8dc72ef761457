//! Settings from environment variables. Each service declares what it reads as [`Setting`]s
//! (name, default, meaning) in one list; its `from_env` and `local()` read through those,
//! and the README's configuration table and `k8s/settings.json` (which `k8s/check.py` reads)
//! are rendered from the same lists by `e2e/tests/configuration.rs`, so no default is
//! written twice. Secrets come from `NAME` or from the file named by `NAME_FILE` (how
//! Kubernetes mounts Secrets).

use std::collections::HashMap;
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

/// What a setting is when it is not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// This value, parsed as if it had been given.
    Value(&'static str),
    /// Worked out at start (the text says how), e.g. from the number of cores.
    Derived(&'static str),
    /// Nothing: the feature it enables is off.
    Unset,
    /// The service refuses to start without it.
    Required,
}

/// One environment variable a service reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub fallback: Fallback,
    /// Read from `NAME` or `NAME_FILE`, never logged.
    pub secret: bool,
    /// For the README's table: what it does, in a sentence or less.
    pub meaning: &'static str,
}

impl Setting {
    pub const fn new(name: &'static str, default: &'static str, meaning: &'static str) -> Self {
        Self { name, fallback: Fallback::Value(default), secret: false, meaning }
    }

    pub const fn derived(name: &'static str, how: &'static str, meaning: &'static str) -> Self {
        Self { name, fallback: Fallback::Derived(how), secret: false, meaning }
    }

    pub const fn optional(name: &'static str, meaning: &'static str) -> Self {
        Self { name, fallback: Fallback::Unset, secret: false, meaning }
    }

    pub const fn secret(name: &'static str, fallback: Fallback, meaning: &'static str) -> Self {
        Self { name, fallback, secret: true, meaning }
    }

    /// The given value, else the default, parsed as `T`.
    pub fn get<T>(&self, source: &impl Source) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get_opt(source)?.ok_or_else(|| self.missing())
    }

    /// A whole number of seconds (the `_S` settings).
    pub fn get_seconds(&self, source: &impl Source) -> Result<std::time::Duration, ConfigError> {
        Ok(std::time::Duration::from_secs(self.get(source)?))
    }

    /// The given value, else the default if it has one, parsed as `T`.
    pub fn get_opt<T>(&self, source: &impl Source) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        let given = if self.secret { source.secret(self.name)? } else { source.value(self.name) };
        let value = match (given, self.fallback) {
            (Some(value), _) => value,
            (None, Fallback::Value(default)) => default.to_string(),
            (None, Fallback::Required) => return Err(self.missing()),
            (None, Fallback::Derived(_) | Fallback::Unset) => return Ok(None),
        };
        value.parse().map(Some).map_err(|e: T::Err| ConfigError::Invalid {
            key: self.name.into(),
            value,
            reason: e.to_string(),
        })
    }

    /// A secret value, else its default. A `SecretString`: its `Debug` prints no value, so
    /// no config dump or error shows it.
    pub fn get_secret(&self, source: &impl Source) -> Result<SecretString, ConfigError> {
        self.get_secret_opt(source)?.ok_or_else(|| self.missing())
    }

    pub fn get_secret_opt(&self, source: &impl Source) -> Result<Option<SecretString>, ConfigError> {
        Ok(self.get_opt::<String>(source)?.map(SecretString::from))
    }

    /// A secret used as a key (HMAC, a password): refused when shorter than `min_bytes`, so
    /// an empty or placeholder file cannot become a guessable key.
    pub fn get_key(&self, source: &impl Source, min_bytes: usize) -> Result<SecretString, ConfigError> {
        self.get_key_opt(source, min_bytes)?.ok_or_else(|| self.missing())
    }

    pub fn get_key_opt(&self, source: &impl Source, min_bytes: usize) -> Result<Option<SecretString>, ConfigError> {
        match self.get_secret_opt(source)? {
            Some(value) if value.expose_secret().len() < min_bytes => {
                Err(ConfigError::TooShort { key: self.name.into(), length: value.expose_secret().len(), min_bytes })
            }
            other => Ok(other),
        }
    }

    pub fn missing(&self) -> ConfigError {
        ConfigError::Missing { key: self.name.into() }
    }
}

/// Settings more than one service reads, declared once.
pub mod shared {
    use super::{Fallback, Setting};

    pub const DATABASE_URL: Setting = Setting::secret(
        "DATABASE_URL",
        Fallback::Value("postgres://tunewire:tunewire@127.0.0.1:5432/tunewire"),
        "PostgreSQL, as the service's own role (`tunewire_auth`, `tunewire_gateway`, `tunewire_catalog`, \
         `tunewire_notifier`: `scripts/run` and `k8s/` give each its own); each service migrates its own \
         schema, which `tunewire-setup` made it the owner of",
    );
    pub const AMQP_URL: Setting = Setting::secret(
        "AMQP_URL",
        Fallback::Value("amqp://tunewire:tunewire@127.0.0.1:5672/%2f"),
        "RabbitMQ, as the service's own user (`tunewire-gateway`, ...); `tunewire-setup` declares the \
         exchanges and queues, the service only checks they are there",
    );
    pub const MONGODB_URI: Setting = Setting::secret(
        "MONGODB_URI",
        Fallback::Value("mongodb://tunewire:tunewire@127.0.0.1:27017"),
        "GridFS server, as the service's own user (`tunewire-gateway`, `tunewire-converter`, made by \
         `tunewire-setup` in `admin`)",
    );
    pub const MONGODB_DATABASE_PREFIX: Setting = Setting::new(
        "MONGODB_DATABASE_PREFIX",
        "tunewire",
        "the media store's databases: `<prefix>-uploads` (originals), `<prefix>-audio` (MP3s), \
         `<prefix>-audio-outputs` (the converter's bookkeeping)",
    );
    pub const AUTH_ISSUER: Setting = Setting::new("AUTH_ISSUER", "tunewire-auth", "access tokens' `iss`");
    pub const AUTH_AUDIENCE: Setting = Setting::new("AUTH_AUDIENCE", "tunewire", "access tokens' `aud`");
    /// The link key `local()` configurations sign with.
    pub const LOCAL_LINK_SECRET: &str = "local-link-secret-of-thirty-two-bytes";
    pub const LINK_SECRET: Setting = Setting::secret(
        "LINK_SECRET",
        Fallback::Required,
        "HMAC key of download links, at least 32 bytes (`openssl rand -base64 48`)",
    );
}

/// Where settings' values come from.
pub trait Source {
    /// A plain setting's value, trimmed; `None` when unset or blank.
    fn value(&self, name: &str) -> Option<String>;
    /// A secret's value, from `NAME_FILE` before `NAME`.
    fn secret(&self, name: &str) -> Result<Option<String>, ConfigError>;
}

/// The process environment.
pub struct Env;

impl Source for Env {
    fn value(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }

    fn secret(&self, name: &str) -> Result<Option<String>, ConfigError> {
        if let Some(path) = self.value(&format!("{name}_FILE")) {
            // Only a trailing newline is trimmed: the file holds the secret byte for byte.
            return std::fs::read_to_string(&path)
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|source| ConfigError::SecretFile { key: name.into(), path, source });
        }
        Ok(self.value(name))
    }
}

/// Given values and nothing from the environment: `local()` configurations for tests and
/// benchmarks are the defaults plus these.
#[derive(Default)]
pub struct Values(HashMap<&'static str, String>);

impl Values {
    pub fn new<const N: usize>(pairs: [(&'static str, String); N]) -> Self {
        Self(HashMap::from(pairs))
    }
}

impl Source for Values {
    fn value(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    fn secret(&self, name: &str) -> Result<Option<String>, ConfigError> {
        Ok(self.value(name))
    }
}

/// The settings of every program, for the README's table and `k8s/settings.json`.
pub struct Reference<'a> {
    programs: &'a [(&'a str, &'a [Setting])],
}

impl<'a> Reference<'a> {
    /// Refuses a name two programs declare differently: a shared setting is declared once
    /// (in [`shared`]) and used by each.
    pub fn new(programs: &'a [(&'a str, &'a [Setting])]) -> Result<Self, String> {
        let mut seen: HashMap<&str, (&str, &Setting)> = HashMap::new();
        for (program, settings) in programs {
            for setting in *settings {
                match seen.get(setting.name) {
                    Some((first, earlier)) if *earlier != setting => {
                        return Err(format!("{} is declared differently by {first} and {program}", setting.name));
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(setting.name, (program, setting));
                    }
                }
            }
        }
        Ok(Self { programs })
    }

    /// One row per setting, in the order programs declare them, naming every program that
    /// reads it.
    pub fn markdown(&self) -> String {
        let mut rows: Vec<(&Setting, Vec<&str>)> = Vec::new();
        for (program, settings) in self.programs {
            for setting in *settings {
                match rows.iter_mut().find(|(s, _)| s.name == setting.name) {
                    Some((_, readers)) => readers.push(program),
                    None => rows.push((setting, vec![program])),
                }
            }
        }
        let mut out = String::from("| variable | read by | default | meaning |\n|---|---|---|---|\n");
        for (setting, readers) in rows {
            let kind = match (setting.secret, setting.fallback) {
                (true, Fallback::Required) => " (secret, required)",
                (false, Fallback::Required) => " (required)",
                (true, _) => " (secret)",
                (false, _) => "",
            };
            let default = match setting.fallback {
                Fallback::Value(value) => format!("`{value}`"),
                Fallback::Derived(how) => how.to_string(),
                Fallback::Unset | Fallback::Required => "—".to_string(),
            };
            out.push_str(&format!(
                "| `{}`{kind} | {} | {default} | {} |\n",
                setting.name,
                readers.join(", "),
                setting.meaning
            ));
        }
        out
    }

    /// What `k8s/check.py` needs: per program, each setting with its default (`null` when
    /// none or worked out at start), and whether it is secret or required.
    pub fn json(&self) -> serde_json::Value {
        let programs = self.programs.iter().map(|(program, settings)| {
            let settings = settings.iter().map(|s| {
                let default = match s.fallback {
                    Fallback::Value(value) => serde_json::Value::from(value),
                    _ => serde_json::Value::Null,
                };
                let required = s.fallback == Fallback::Required;
                (s.name.to_string(), serde_json::json!({"default": default, "secret": s.secret, "required": required}))
            });
            (program.to_string(), serde_json::Value::Object(settings.collect()))
        });
        serde_json::Value::Object(programs.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: Setting = Setting::new("TW_TEST_PORT", "7", "");
    const PORT_UNSET: Setting = Setting::new("TW_TEST_UNSET", "7", "");
    const BAD: Setting = Setting::new("TW_TEST_BAD", "1", "");

    // Each test uses its own variable names: tests run in parallel in one process.
    #[test]
    fn a_setting_parses_its_value_or_its_default() {
        unsafe { std::env::set_var("TW_TEST_PORT", " 9000 ") };
        assert_eq!(PORT.get::<u16>(&Env).unwrap(), 9000);
        assert_eq!(PORT_UNSET.get::<u16>(&Env).unwrap(), 7);
        unsafe { std::env::set_var("TW_TEST_BAD", "nine") };
        let err = BAD.get::<u16>(&Env).unwrap_err().to_string();
        assert!(err.contains("TW_TEST_BAD") && err.contains("nine"), "{err}");
        assert_eq!(PORT.get::<u16>(&Values::new([("TW_TEST_PORT", "80".into())])).unwrap(), 80);
        assert_eq!(PORT.get::<u16>(&Values::default()).unwrap(), 7, "Values must not read the environment");
    }

    #[test]
    fn a_secret_prefers_the_file() {
        const SECRET: Setting = Setting::secret("TW_TEST_SECRET", Fallback::Unset, "");
        const NOPE: Setting = Setting::secret("TW_TEST_NOPE", Fallback::Required, "");
        let path = std::env::temp_dir().join(format!("tw-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        unsafe {
            std::env::set_var("TW_TEST_SECRET", "inline");
            std::env::set_var("TW_TEST_SECRET_FILE", &path);
        }
        let read = SECRET.get_secret(&Env).unwrap();
        assert_eq!(read.expose_secret(), "s3cret");
        assert!(!format!("{read:?}").contains("s3cret"), "a secret's Debug shows its value");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(SECRET.get_secret_opt(&Env), Err(ConfigError::SecretFile { .. })));
        assert!(matches!(NOPE.get_secret_opt(&Env), Err(ConfigError::Missing { .. })));
    }

    #[test]
    fn a_key_from_an_empty_file_or_too_short_is_refused_by_name() {
        const KEY: Setting = Setting::secret("TW_TEST_KEY", Fallback::Required, "");
        const UNSET: Setting = Setting::secret("TW_TEST_KEY_UNSET", Fallback::Unset, "");
        let path = std::env::temp_dir().join(format!("tw-key-{}", std::process::id()));
        std::fs::write(&path, "\n").unwrap();
        unsafe { std::env::set_var("TW_TEST_KEY_FILE", &path) };
        let err = KEY.get_key(&Env, 32).unwrap_err().to_string();
        assert!(err.contains("TW_TEST_KEY") && err.contains("0 bytes"), "{err}");
        std::fs::write(&path, "x".repeat(32)).unwrap();
        assert_eq!(KEY.get_key(&Env, 32).unwrap().expose_secret().len(), 32);
        std::fs::remove_file(&path).unwrap();
        assert!(UNSET.get_key_opt(&Env, 32).unwrap().is_none());
    }
}
