//! The account calls' bodies: auth reads and writes them, the gateway passes them on to its
//! callers and describes them in its OpenAPI document.

use serde::{Deserialize, Serialize};

use crate::{Role, UserId};

/// How many characters a password may have (the schema attributes below say the same; the
/// gateway's tests compare them).
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=256;

/// `POST /v1/auth/register` and `/v1/auth/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Credentials {
    #[cfg_attr(feature = "openapi", schema(format = Email))]
    pub email: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 8, max_length = 256))]
    pub password: String,
}

/// `POST /v1/auth/password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PasswordChange {
    pub current_password: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 8, max_length = 256))]
    pub new_password: String,
}

/// A registered account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Account {
    pub id: UserId,
    pub email: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TokenType {
    Bearer,
}

/// An access token, from login or a password change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Token {
    pub access_token: String,
    pub token_type: TokenType,
    /// Seconds.
    pub expires_in: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaUse {
    pub used: i64,
    pub limit: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaLimit {
    pub limit: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaReport {
    /// Jobs queued or converting.
    pub jobs_in_progress: QuotaUse,
    /// Bytes of originals still stored (jobs not failed or expired whose original retention
    /// has not removed).
    pub stored_bytes: QuotaUse,
    /// Uploads one user may stream in at once (per gateway process).
    pub uploads_in_flight: QuotaLimit,
    /// Job event streams one user may have open at once (per gateway process).
    pub event_streams: QuotaLimit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
/// `GET /v1/me`: the caller, and where they stand against their quotas.
pub struct Me {
    #[serde(flatten)]
    pub account: Account,
    pub quotas: QuotaReport,
}
