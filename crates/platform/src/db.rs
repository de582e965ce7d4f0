//! Database pools and each service's embedded migrations.
//!
//! Postgres is the production backend: each service keeps its tables in its
//! own schema (created on first start) and migrations run under sqlx's
//! advisory lock, so replicas starting together apply them once. SQLite, one
//! file per service, is the embedded single-node default.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, PgPool, SqlitePool};
use thiserror::Error;

use crate::config::{DatabaseBackend, DatabaseSettings};

/// One migration file, embedded with `include_str!`.
#[derive(Debug, Clone, Copy)]
pub struct MigrationFile {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

/// A service's migrations for both backends.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    pub postgres: &'static [MigrationFile],
    pub sqlite: &'static [MigrationFile],
}

#[derive(Debug)]
struct Embedded(&'static [MigrationFile]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> futures_core_box::BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|file| {
                    Migration::new(
                        file.version,
                        file.description.into(),
                        MigrationType::Simple,
                        file.sql.into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

mod futures_core_box {
    pub(crate) type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;
}

#[derive(Debug, Error)]
pub enum DbError {
    #[error("database connection failed: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// A connected, migrated database.
#[derive(Debug, Clone)]
pub enum DbPool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl DbPool {
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}

pub async fn connect(
    settings: &DatabaseSettings,
    migrations: &Migrations,
) -> Result<DbPool, DbError> {
    match settings.backend {
        DatabaseBackend::Postgres => {
            let base = PgConnectOptions::from_str(&settings.url).map_err(DbError::Connect)?;
            create_schema(&base, &settings.schema).await?;
            let options = base.options([("search_path", settings.schema.as_str())]);
            let pool = PgPoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(DbError::Connect)?;
            let migrator = Migrator::new(Embedded(migrations.postgres))
                .await
                .map_err(DbError::Migrate)?;
            migrator.run(&pool).await.map_err(DbError::Migrate)?;
            Ok(DbPool::Postgres(pool))
        }
        DatabaseBackend::Sqlite => {
            let options = SqliteConnectOptions::from_str(&settings.url)
                .map_err(DbError::Connect)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(DbError::Connect)?;
            let migrator = Migrator::new(Embedded(migrations.sqlite))
                .await
                .map_err(DbError::Migrate)?;
            migrator.run(&pool).await.map_err(DbError::Migrate)?;
            Ok(DbPool::Sqlite(pool))
        }
    }
}

async fn create_schema(options: &PgConnectOptions, schema: &str) -> Result<(), DbError> {
    let mut connection = sqlx::PgConnection::connect_with(options)
        .await
        .map_err(DbError::Connect)?;
    // The schema name was validated as a lowercase identifier.
    let statement = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    let created = sqlx::query(&statement).execute(&mut connection).await;
    let _closed = connection.close().await;
    match created {
        Ok(_) => Ok(()),
        // Two replicas creating the schema at once: the other one won.
        Err(sqlx::Error::Database(error))
            if matches!(error.code().as_deref(), Some("23505" | "42P06")) =>
        {
            Ok(())
        }
        Err(error) => Err(DbError::Connect(error)),
    }
}

/// Helpers for test suites that run against both backends.
pub mod testing {
    use super::*;

    /// The Postgres used by tests: `COFFER_TEST_POSTGRES_URL`, by default the
    /// local `test` database. `None` when it cannot be reached, except under
    /// `CI=true`, where an unreachable Postgres fails the run instead of
    /// silently skipping half of the suite.
    pub async fn postgres_url() -> Option<String> {
        let url = std::env::var("COFFER_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let reachable = match PgConnectOptions::from_str(&url) {
            Ok(options) => {
                let attempt = tokio::time::timeout(
                    Duration::from_secs(5),
                    sqlx::PgConnection::connect_with(&options),
                )
                .await;
                matches!(attempt, Ok(Ok(_)))
            }
            Err(_) => false,
        };
        if reachable {
            return Some(url);
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Postgres at {url} is unreachable and CI=true: refusing to skip the Postgres tests"
        );
        eprintln!("note: Postgres at {url} is unreachable; Postgres variants are skipped");
        None
    }

    /// A fresh schema name, so concurrent tests never share tables.
    pub fn unique_schema(prefix: &str) -> String {
        format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
    }
}
