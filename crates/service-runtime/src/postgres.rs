//! A service's own PostgreSQL schema. Services share one database: each migrates only its
//! schema, and records its migrations in a table inside it, so none sees another's.

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgPoolOptions;

use crate::startup;

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("postgres: {0}")]
    Connect(#[from] sqlx::Error),
    #[error("migrating the schema: {0}")]
    Migrate(#[from] MigrateError),
}

/// A schema and the migrations that make it (`sqlx::migrate!` of the service's folder).
pub struct Schema {
    pub name: &'static str,
    pub migrations: fn() -> Migrator,
}

impl Schema {
    /// Brings the schema up to date, recording it in `<name>._sqlx_migrations`. Creates the
    /// schema only when it is missing: a service's own role owns its schema (made by
    /// `tunewire-setup`) but may not create schemas, not even `IF NOT EXISTS`.
    pub async fn migrate(&self, db: &PgPool) -> Result<(), MigrateError> {
        let mut migrator = (self.migrations)();
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(self.name)
            .fetch_one(db)
            .await?;
        if !exists {
            migrator.create_schema(self.name);
        }
        let table = format!("{}._sqlx_migrations", self.name);
        let applied: Vec<i64> = if exists && self.has_table(db, &table).await? {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT version FROM {table}"))).fetch_all(db).await?
        } else {
            Vec::new()
        };
        let newest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        // One this binary should know and does not: a migration file lost or renumbered.
        if let Some(lost) = applied.iter().find(|v| **v <= newest && !migrator.version_exists(**v)) {
            return Err(MigrateError::VersionMissing(*lost));
        }
        // During a rolling deploy (or a rollback) a replica of the previous version starts on
        // a schema a newer one has migrated further: migrations only add, so it carries on.
        migrator.set_ignore_missing(applied.iter().any(|v| *v > newest));
        migrator.dangerous_set_table_name(table);
        migrator.run(db).await
    }

    async fn has_table(&self, db: &PgPool, table: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(table).fetch_one(db).await
    }

    /// A starting service's pool, its schema migrated; waits for PostgreSQL as `startup` says.
    pub async fn connect(&self, url: &str, max_connections: u32) -> Result<PgPool, PostgresError> {
        startup::wait_for("postgres", startup::DEPENDENCY_PATIENCE, || async {
            let db = PgPoolOptions::new().max_connections(max_connections).connect(url).await?;
            self.migrate(&db).await?;
            Ok::<_, PostgresError>(db)
        })
        .await
    }
}

/// `/readyz`'s check of the pool: a `SELECT 1` answers.
pub fn check(db: &PgPool) -> impl Fn() -> crate::Check + Send + Sync + 'static {
    crate::health::check_with(db.clone(), |db| async move { sqlx::query("SELECT 1").execute(&db).await.map(|_| ()) })
}
