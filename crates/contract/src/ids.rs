//! Domain ids, parsed once at the edge so the rest of the code cannot hold an invalid one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind}: {reason}")]
pub struct IdError {
    pub kind: &'static str,
    pub reason: String,
}

macro_rules! uuid_id {
    ($name:ident, $kind:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Uuid::parse_str(s).map(Self).map_err(|e| IdError { kind: $kind, reason: e.to_string() })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(JobId, "job id");
uuid_id!(UserId, "user id");

/// A GridFS file id: a MongoDB ObjectId in its 24-hex-digit form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileId(String);

impl FileId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 12 raw bytes of the ObjectId.
    pub fn bytes(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        for (i, byte) in out.iter_mut().enumerate() {
            // Validated at construction: 24 lowercase hex digits.
            *byte = u8::from_str_radix(&self.0[2 * i..2 * i + 2], 16).unwrap_or_default();
        }
        out
    }

    pub fn from_bytes(bytes: [u8; 12]) -> Self {
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl FromStr for FileId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(IdError { kind: "file id", reason: "expected 24 hexadecimal digits".into() })
        }
    }
}

impl TryFrom<String> for FileId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<FileId> for String {
    fn from(id: FileId) -> String {
        id.0
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address, syntax-checked and lower-cased so that one person is one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Email {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let trimmed = s.trim();
        if trimmed.len() > 254 {
            return Err(IdError { kind: "email", reason: "longer than 254 characters".into() });
        }
        let parsed = email_address::EmailAddress::from_str(trimmed)
            .map_err(|e| IdError { kind: "email", reason: e.to_string() })?;
        // Display names ("Ann <ann@x>") are not addresses; a bare domain needs a dot.
        if parsed.email() != trimmed || !parsed.domain().contains('.') {
            return Err(IdError { kind: "email", reason: "expected name@domain.tld".into() });
        }
        Ok(Self(trimmed.to_lowercase()))
    }
}

impl TryFrom<String> for Email {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_id_round_trips_through_bytes() {
        let id: FileId = "65A1b2c3d4e5f60718293a4b".parse().unwrap();
        assert_eq!(id.as_str(), "65a1b2c3d4e5f60718293a4b");
        assert_eq!(FileId::from_bytes(id.bytes()), id);
    }

    #[test]
    fn file_id_rejects_non_hex_and_wrong_length() {
        assert!("zz".repeat(12).parse::<FileId>().is_err());
        assert!("abc".parse::<FileId>().is_err());
    }

    #[test]
    fn email_is_normalised_and_validated() {
        assert_eq!(" Ann@Example.COM ".parse::<Email>().unwrap().as_str(), "ann@example.com");
        for bad in ["", "ann", "ann@", "@x.com", "ann@localhost", "Ann <ann@x.com>", "a b@x.com"] {
            assert!(bad.parse::<Email>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn job_id_parse_error_names_the_kind() {
        let err = "nope".parse::<JobId>().unwrap_err();
        assert_eq!(err.kind, "job id");
    }
}
