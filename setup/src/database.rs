//! One PostgreSQL role per service, owning its schema and nothing else: it cannot read
//! another service's tables, create schemas, or use `public`.

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

/// A service's schema and the role that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaOwner {
    pub service: &'static str,
    pub schema: &'static str,
    pub role: &'static str,
}

pub const OWNERS: [SchemaOwner; 4] = [
    SchemaOwner { service: "auth", schema: "auth", role: "tunewire_auth" },
    SchemaOwner { service: "gateway", schema: "gateway", role: "tunewire_gateway" },
    SchemaOwner { service: "catalog-indexer", schema: "catalog", role: "tunewire_catalog" },
    SchemaOwner { service: "notifier", schema: "notifier", role: "tunewire_notifier" },
];

#[derive(Debug, thiserror::Error)]
pub enum DatabaseSetupError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
}

/// Creates (or updates the password of) each role, and gives it its schema in the database
/// `admin_url` names. Objects made in a schema before its role existed (by the administrator)
/// are handed over to the role.
pub async fn apply(admin_url: &str, roles: &[(SchemaOwner, String)]) -> Result<(), DatabaseSetupError> {
    // Roles are shared by every database of the server: setups running at once (the tests'
    // sandboxes, each in a database of its own) take turns, or PostgreSQL refuses their
    // concurrent catalog updates. Advisory locks are per database, so the turn is taken in
    // the maintenance database.
    let options: PgConnectOptions = admin_url.parse()?;
    let mut turn = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(TURN).execute(&mut turn).await?;
    let applied = apply_in_turn(&options, roles).await;
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(TURN).execute(&mut turn).await?;
    turn.close().await?;
    applied
}

/// The advisory lock setups take turns with.
const TURN: i64 = 0x7475_6e65_7769_7265; // "tunewire"

async fn apply_in_turn(options: &PgConnectOptions, roles: &[(SchemaOwner, String)]) -> Result<(), DatabaseSetupError> {
    let mut db = PgConnection::connect_with(options).await?;
    let mut tx = db.begin().await?;
    for (owner, password) in roles {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(owner.role)
            .fetch_one(&mut *tx)
            .await?;
        // Identifiers and literals quoted by PostgreSQL itself.
        let format = if exists {
            "SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1, $2)"
        } else {
            "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1, $2)"
        };
        let statement: String = sqlx::query_scalar(format).bind(owner.role).bind(password).fetch_one(&mut *tx).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *tx).await?;
        // The administrator acts as the role to give it its schema (a superuser need not).
        let grant: String = sqlx::query_scalar("SELECT format('GRANT %I TO CURRENT_USER', $1)")
            .bind(owner.role)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(grant)).execute(&mut *tx).await?;
    }
    sqlx::raw_sql(
        "DO $$ BEGIN
           EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
         END $$;
         REVOKE ALL ON SCHEMA public FROM PUBLIC;",
    )
    .execute(&mut *tx)
    .await?;
    for (owner, _) in roles {
        let script = format!(
            "DO $$
             DECLARE r record;
             BEGIN
               EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), '{role}');
               IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{schema}') THEN
                 EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', '{schema}', '{role}');
               END IF;
               EXECUTE format('ALTER SCHEMA %I OWNER TO %I', '{schema}', '{role}');
               FOR r IN SELECT c.oid::regclass AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                          AND pg_get_userbyid(c.relowner) <> '{role}'
               LOOP
                 EXECUTE format('ALTER TABLE %s OWNER TO %I', r.name, '{role}');
               END LOOP;
             END $$;",
            role = owner.role,
            schema = owner.schema,
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(script)).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    db.close().await?;
    Ok(())
}
