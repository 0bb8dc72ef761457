//! The `auth.users` table: argon2id hashes, roles `user` and `admin`. Registering only ever
//! makes a `user`; an admin comes from configuration or the `create-admin` command.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sqlx::PgPool;
use tunewire_contract::accounts::PASSWORD_CHARS;
use tunewire_contract::{Email, Role, UserId};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the password must be {} to {} characters long", PASSWORD_CHARS.start(), PASSWORD_CHARS.end())]
    PasswordLength,
    #[error("hashing the password failed: {0}")]
    Hashing(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// argon2id at OWASP's first recommended setting (19 MiB, 2 passes, 1 lane).
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn check_password_length(password: &str) -> Result<(), AccountError> {
    let length = password.chars().count();
    if PASSWORD_CHARS.contains(&length) { Ok(()) } else { Err(AccountError::PasswordLength) }
}

/// CPU-bound: call from a blocking thread.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    check_password_length(password)?;
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hashing(e.to_string()))
}

/// CPU-bound: call from a blocking thread. Parameters come from the stored hash.
pub fn verify_password(password: &str, stored_hash: &str) -> bool {
    PasswordHash::new(stored_hash).is_ok_and(|h| hasher().verify_password(password.as_bytes(), &h).is_ok())
}

/// Creates a `user`; `None` when the email is taken.
pub async fn register(db: &PgPool, email: &Email, hash: &str) -> Result<Option<UserId>, AccountError> {
    let id = UserId::new();
    let inserted = sqlx::query(
        "INSERT INTO auth.users (id, email, password_hash) VALUES ($1, $2, $3) ON CONFLICT (email) DO NOTHING",
    )
    .bind(id.as_uuid())
    .bind(email.as_str())
    .bind(hash)
    .execute(db)
    .await?;
    Ok((inserted.rows_affected() == 1).then_some(id))
}

pub struct Account {
    pub id: UserId,
    pub email: Email,
    pub password_hash: String,
    pub role: Role,
    /// Tokens issued before this (unix seconds) are refused.
    pub tokens_not_before: i64,
}

type AccountRow = (uuid::Uuid, String, String, String, chrono::DateTime<chrono::Utc>);

fn account(row: AccountRow) -> Result<Account, AccountError> {
    let (id, email, password_hash, role, not_before) = row;
    let email = email.parse().map_err(|e| AccountError::Database(sqlx::Error::Decode(Box::new(e))))?;
    let role = role.parse().map_err(|e| AccountError::Database(sqlx::Error::Decode(Box::new(e))))?;
    Ok(Account { id: UserId::from(id), email, password_hash, role, tokens_not_before: not_before.timestamp() })
}

pub async fn find(db: &PgPool, email: &Email) -> Result<Option<Account>, AccountError> {
    let row: Option<AccountRow> =
        sqlx::query_as("SELECT id, email, password_hash, role, tokens_not_before FROM auth.users WHERE email = $1")
            .bind(email.as_str())
            .fetch_optional(db)
            .await?;
    row.map(account).transpose()
}

pub async fn find_by_id(db: &PgPool, id: UserId) -> Result<Option<Account>, AccountError> {
    let row: Option<AccountRow> =
        sqlx::query_as("SELECT id, email, password_hash, role, tokens_not_before FROM auth.users WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(db)
            .await?;
    row.map(account).transpose()
}

/// Replaces `old_hash` with `new_hash`; every token issued before the next whole second (and
/// after any earlier change's) is refused from then on. Returns that second (unix), from
/// which new tokens may be issued; `None` if the password changed meanwhile.
pub async fn change_password(
    db: &PgPool,
    id: UserId,
    old_hash: &str,
    new_hash: &str,
) -> Result<Option<i64>, AccountError> {
    let not_before: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "UPDATE auth.users SET password_hash = $3,
                tokens_not_before = GREATEST(date_trunc('second', clock_timestamp()) + interval '1 second',
                                             tokens_not_before + interval '1 second')
         WHERE id = $1 AND password_hash = $2 RETURNING tokens_not_before",
    )
    .bind(id.as_uuid())
    .bind(old_hash)
    .bind(new_hash)
    .fetch_optional(db)
    .await?;
    Ok(not_before.map(|at| at.timestamp()))
}

/// After a password was checked against `hash`: the account's `tokens_not_before` (unix) if
/// the password is still that one, `None` if it changed in between.
pub async fn still_current(db: &PgPool, id: UserId, hash: &str) -> Result<Option<i64>, AccountError> {
    let not_before: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT tokens_not_before FROM auth.users WHERE id = $1 AND password_hash = $2")
            .bind(id.as_uuid())
            .bind(hash)
            .fetch_optional(db)
            .await?;
    Ok(not_before.map(|at| at.timestamp()))
}

/// Accounts whose tokens from before some instant are refused, for those that changed
/// within `horizon_s` (older tokens have expired anyway): (id, unix seconds).
pub async fn revocations(db: &PgPool, horizon_s: i64) -> Result<Vec<(UserId, i64)>, AccountError> {
    let rows: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT id, tokens_not_before FROM auth.users WHERE tokens_not_before > now() - make_interval(secs => $1)",
    )
    .bind(horizon_s as f64)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(id, at)| (UserId::from(id), at.timestamp())).collect())
}

/// Makes `email` an admin with `password`, creating the account if needed. Idempotent, so
/// every replica may run it at start.
pub async fn provision_admin(db: &PgPool, email: &Email, password: &str) -> Result<UserId, AccountError> {
    let password = password.to_string();
    let hash = tunewire_service_runtime::telemetry::propagation::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| AccountError::Hashing(e.to_string()))??;
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO auth.users (id, email, password_hash, role) VALUES ($1, $2, $3, 'admin')
         ON CONFLICT (email) DO UPDATE SET password_hash = EXCLUDED.password_hash, role = 'admin'
         RETURNING id",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(email.as_str())
    .bind(&hash)
    .fetch_one(db)
    .await?;
    Ok(UserId::from(id))
}
