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

impl Migrations {
    /// What differs between these migrations and the `postgres/` and
    /// `sqlite/` directories under `directory`: a file `NNNN_*.sql` with no
    /// registered migration of version NNNN and the same text, or a
    /// registered migration with no file. Empty when they agree; services
    /// check it in a test, so a migration file cannot be left unapplied.
    pub fn differences_from(&self, directory: &std::path::Path) -> Vec<String> {
        let mut differences = Vec::new();
        for (backend, registered) in [("postgres", self.postgres), ("sqlite", self.sqlite)] {
            let folder = directory.join(backend);
            let entries = match std::fs::read_dir(&folder) {
                Ok(entries) => entries,
                Err(error) => {
                    differences.push(format!("{}: {error}", folder.display()));
                    continue;
                }
            };
            let mut found = Vec::new();
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".sql") else {
                    continue;
                };
                let version = stem
                    .split('_')
                    .next()
                    .and_then(|digits| digits.parse().ok());
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let known = registered
                    .iter()
                    .any(|file| Some(file.version) == version && file.sql == text);
                if !known {
                    differences.push(format!("{backend}/{name} is not a registered migration"));
                }
                found.extend(version);
            }
            for file in registered {
                if !found.contains(&file.version) {
                    differences.push(format!("{backend} migration {} has no file", file.version));
                }
            }
        }
        differences
    }
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
                // Every commit is synced before it returns: an answered
                // CreateKey or RotateKeyOnDemand survives a power loss, not
                // only a crash of the process (`NORMAL` syncs at the next
                // checkpoint, and a data key wrapped under a rotation that
                // was then rolled back could never be unwrapped again).
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // Statement journals (a multi-row insert with a conflict
                // clause needs one) and sorts stay in memory instead of
                // temporary files written per statement.
                .pragma("temp_store", "memory")
                // 32 MiB of page cache per connection (the default is 2 MiB):
                // index pages of a growing table are otherwise re-read from
                // the OS on every insert.
                .pragma("cache_size", "-32768")
                // The log is copied back by a background checkpointer, not by
                // whichever commit happens to cross the size threshold (a
                // stall of tens of milliseconds in the middle of a write).
                .pragma("wal_autocheckpoint", "0")
                // A log that grew during a burst is cut back to 64 MiB when
                // it restarts.
                .pragma("journal_size_limit", "67108864");
            let pool = SqlitePoolOptions::new()
                .max_connections(settings.max_connections)
                // A file on this machine has no connection to go stale: the
                // ping before every acquire was a round trip to the
                // connection's thread per statement.
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(DbError::Connect)?;
            let migrator = Migrator::new(Embedded(migrations.sqlite))
                .await
                .map_err(DbError::Migrate)?;
            migrator.run(&pool).await.map_err(DbError::Migrate)?;
            spawn_checkpointer(pool.clone());
            Ok(DbPool::Sqlite(pool))
        }
    }
}

/// How often a SQLite database's write-ahead log is copied back into it.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Checkpoints the pool's database every [`CHECKPOINT_INTERVAL`] on a
/// connection of its own. A passive checkpoint never blocks writers, so the
/// copying happens beside the commits instead of inside one. Stops when the
/// pool is closed.
fn spawn_checkpointer(pool: SqlitePool) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(CHECKPOINT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if pool.is_closed() {
                return;
            }
            let outcome = checkpoint(&pool, RESTART_AFTER_FRAMES).await;
            if let Err(error) = outcome {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!(%error, "SQLite checkpoint failed");
            }
        }
    });
}

/// Frames in the log after a passive checkpoint above which the log is
/// restarted (64 MiB of 4 KiB pages).
const RESTART_AFTER_FRAMES: i64 = 16_384;

/// One checkpoint: passive, then, when the log has grown past
/// `restart_after_frames`, a restart. Returns the log's frames after the
/// passive checkpoint.
///
/// Under a steady write load a passive checkpoint never catches up with the
/// commits made while it copies, so SQLite never gets to start the log
/// again from its beginning and the file grows without bound (140 MB in
/// five seconds of the Encrypt bench), every frame a newly allocated page.
/// A restart checkpoint holds new writers back while it copies the few
/// frames the passive one left, then makes the next writer start at the
/// log's beginning.
async fn checkpoint(pool: &SqlitePool, restart_after_frames: i64) -> Result<i64, sqlx::Error> {
    let (_busy, log, _copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(pool)
        .await?;
    if log > restart_after_frames {
        sqlx::query("PRAGMA wal_checkpoint(RESTART)")
            .execute(pool)
            .await?;
    }
    Ok(log)
}

async fn create_schema(options: &PgConnectOptions, schema: &str) -> Result<(), DbError> {
    let mut connection = sqlx::PgConnection::connect_with(options)
        .await
        .map_err(DbError::Connect)?;
    // Postgres checks the right to create schemas before it looks for the
    // schema, so a role given its schema by an administrator (and no CREATE
    // on the database) is refused by `CREATE SCHEMA IF NOT EXISTS`.
    let found = sqlx::query("SELECT 1 FROM pg_namespace WHERE nspname = $1")
        .bind(schema)
        .fetch_optional(&mut connection)
        .await;
    let created = match found {
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            // The schema name was validated as a lowercase identifier.
            let statement = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
            sqlx::query(&statement)
                .execute(&mut connection)
                .await
                .map(drop)
        }
        Err(error) => Err(error),
    };
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

    /// Fails, listing them, on any [`Migrations::differences_from`] the
    /// crate's `migrations/` directory (`manifest_dir` is the crate's
    /// `CARGO_MANIFEST_DIR`).
    pub fn assert_migration_files_registered(migrations: &Migrations, manifest_dir: &str) {
        let directory = std::path::Path::new(manifest_dir).join("migrations");
        assert_eq!(
            migrations.differences_from(&directory),
            Vec::<String>::new()
        );
    }

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
            if let Ok(options) = PgConnectOptions::from_str(&url) {
                drop_stale_schemas(&options).await;
            }
            return Some(url);
        }
        let shown = where_postgres_is(&url);
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Postgres at {shown} is unreachable and CI=true: refusing to skip the Postgres tests"
        );
        eprintln!("note: Postgres at {shown} is unreachable; Postgres variants are skipped");
        None
    }

    /// Host, port and database of a Postgres URL, for messages: never its
    /// user or password (test logs end up in CI logs).
    pub fn where_postgres_is(url: &str) -> String {
        match PgConnectOptions::from_str(url) {
            Ok(options) => format!(
                "{}:{}/{}",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or_default()
            ),
            Err(_) => "(an unparsable COFFER_TEST_POSTGRES_URL)".to_owned(),
        }
    }

    /// A store's pool on a SQLite file `file` in `directory`, migrated.
    pub async fn sqlite_pool(
        directory: &std::path::Path,
        file: &str,
        migrations: &Migrations,
    ) -> Result<DbPool, DbError> {
        let settings = crate::config::DatabaseSettings {
            backend: crate::config::DatabaseBackend::Sqlite,
            url: format!("sqlite://{}", directory.join(file).display()),
            schema: "unused".into(),
            max_connections: 4,
        };
        connect(&settings, migrations).await
    }

    /// A store's pool on a fresh Postgres schema, migrated; `None` when
    /// Postgres is unreachable (see [`postgres_url`]).
    pub async fn postgres_pool(
        schema_prefix: &str,
        migrations: &Migrations,
    ) -> Result<Option<DbPool>, DbError> {
        let Some(url) = postgres_url().await else {
            return Ok(None);
        };
        let settings = crate::config::DatabaseSettings {
            backend: crate::config::DatabaseBackend::Postgres,
            url,
            schema: unique_schema(schema_prefix),
            max_connections: 4,
        };
        connect(&settings, migrations).await.map(Some)
    }

    /// Declares one store contract suite twice: module `sqlite` (always)
    /// and module `postgres` (when reachable). The calling module provides
    /// `sqlite_store(&tempfile::TempDir)` and `postgres_store()` returning
    /// the store, a `TestResult` type, and an `async fn` per listed test
    /// taking `&dyn` the store trait.
    #[macro_export]
    macro_rules! store_contract_tests {
        ($($name:ident),+ $(,)?) => {
            mod sqlite {
                $(
                    #[tokio::test]
                    async fn $name() -> super::TestResult {
                        let directory = tempfile::tempdir()?;
                        let store = super::sqlite_store(&directory).await?;
                        super::$name(store.as_ref()).await
                    }
                )+
            }
            mod postgres {
                $(
                    #[tokio::test]
                    async fn $name() -> super::TestResult {
                        match super::postgres_store().await? {
                            Some(store) => super::$name(store.as_ref()).await,
                            None => Ok(()),
                        }
                    }
                )+
            }
        };
    }

    /// A fresh schema name carrying its creation time
    /// (`ct_{prefix}_{unix seconds}_{uuid}`, at most 63 characters), so
    /// concurrent tests never share tables and stale schemas can be
    /// recognised and dropped without touching anyone else's.
    pub fn unique_schema(prefix: &str) -> String {
        debug_assert!(
            prefix.len() <= 16,
            "test schema prefix {prefix:?} is too long for Postgres"
        );
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        format!("ct_{prefix}_{created}_{}", uuid::Uuid::new_v4().simple())
    }

    /// Test schemas older than this are dropped.
    const STALE_AFTER_SECONDS: u64 = 3600;

    /// Whether a schema name made by [`unique_schema`] (or by its earlier,
    /// untimestamped form) is older than [`STALE_AFTER_SECONDS`].
    fn is_stale(name: &str, now_seconds: u64) -> bool {
        let Some((head, _uuid)) = name.rsplit_once('_') else {
            return false;
        };
        match head
            .rsplit_once('_')
            .map(|(_, created)| created.parse::<u64>())
        {
            Some(Ok(created)) => now_seconds.saturating_sub(created) > STALE_AFTER_SECONDS,
            // The earlier form had no timestamp: always stale.
            _ => true,
        }
    }

    /// Drops stale test schemas, once per process, so a machine that runs
    /// the suite again and again does not pile schemas up in the database.
    async fn drop_stale_schemas(options: &PgConnectOptions) {
        static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        CLEANED
            .get_or_init(|| async {
                let Ok(mut connection) = sqlx::PgConnection::connect_with(options).await else {
                    return;
                };
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT nspname FROM pg_namespace \
                     WHERE nspname ~ '^ct_[a-z_]+_[0-9]{10}_[0-9a-f]{32}$' \
                        OR nspname ~ '^(e2e_keys|keys_contract)_[0-9a-f]{32}$'",
                )
                .fetch_all(&mut connection)
                .await
                .unwrap_or_default();
                let now_seconds = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_secs());
                for name in names.iter().filter(|name| is_stale(name, now_seconds)) {
                    // Names matched the patterns above: lowercase, digits, underscores.
                    let statement = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
                    if let Err(error) = sqlx::query(&statement).execute(&mut connection).await {
                        eprintln!("note: could not drop stale test schema {name}: {error}");
                    }
                }
                let _closed = connection.close().await;
            })
            .await;
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn stale_schemas_are_recognised() {
            let now = 1_800_000_000;
            assert!(!is_stale(
                "ct_e2e_keys_1799999000_0123456789abcdef0123456789abcdef",
                now
            ));
            assert!(is_stale(
                "ct_e2e_keys_1799990000_0123456789abcdef0123456789abcdef",
                now
            ));
            assert!(is_stale(
                "keys_contract_0123456789abcdef0123456789abcdef",
                now
            ));
            let fresh = unique_schema("e2e_keys");
            let current = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            assert!(!is_stale(&fresh, current));
        }
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    /// A Postgres URL asks for TLS with `sslmode`: `require` encrypts, and
    /// `verify-full` refuses a server whose certificate its `sslrootcert`
    /// did not sign. (Skipped where Postgres is unreachable outside CI, or
    /// serves no TLS: `ssl` off, or reached over a Unix socket.)
    #[tokio::test]
    async fn postgres_connections_take_tls_as_the_url_asks() {
        let Some(url) = testing::postgres_url().await else {
            return;
        };
        let mut plain = sqlx::PgConnection::connect_with(
            &PgConnectOptions::from_str(&url).expect("the test URL parses"),
        )
        .await
        .expect("the test Postgres accepts a connection");
        let ssl: String = sqlx::query_scalar("SHOW ssl")
            .fetch_one(&mut plain)
            .await
            .expect("SHOW ssl answers");
        let over_a_socket: bool = sqlx::query_scalar("SELECT inet_server_addr() IS NULL")
            .fetch_one(&mut plain)
            .await
            .expect("inet_server_addr answers");
        if ssl != "on" || over_a_socket {
            eprintln!(
                "note: the test Postgres serves no TLS here (ssl={ssl}, over a Unix socket: {over_a_socket}); the TLS checks are skipped"
            );
            return;
        }
        let separator = if url.contains('?') { '&' } else { '?' };
        let required = PgConnectOptions::from_str(&format!("{url}{separator}sslmode=require"))
            .expect("the URL parses");
        let mut encrypted = sqlx::PgConnection::connect_with(&required)
            .await
            .expect("a TLS connection");
        let over_tls: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&mut encrypted)
                .await
                .expect("pg_stat_ssl answers");
        assert!(over_tls, "sslmode=require gave a plaintext connection");

        let directory = tempfile::tempdir().expect("a temporary directory");
        crate::pki::init_ca(directory.path(), "coffer.test").expect("a CA");
        let stranger = directory.path().join("stranger-ca.pem");
        std::fs::write(
            &stranger,
            crate::pki::Authority::load(directory.path())
                .expect("the CA loads")
                .cert_pem(),
        )
        .expect("the CA certificate is written");
        let verified = PgConnectOptions::from_str(&format!(
            "{url}{separator}sslmode=verify-full&sslrootcert={}",
            stranger.display()
        ))
        .expect("the URL parses");
        let refused = sqlx::PgConnection::connect_with(&verified)
            .await
            .map(|_| "connected");
        assert!(
            format!("{refused:?}").contains("InvalidCertificate(UnknownIssuer)"),
            "a server certificate no trusted CA signed was not refused as such: {refused:?}"
        );
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;

    /// Under writes that never pause, the log still starts over: each
    /// checkpoint finds only what was committed since the previous one.
    /// With passive checkpoints alone it holds every frame ever written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_restarts_under_a_steady_write_load() {
        const NO_MIGRATIONS: Migrations = Migrations {
            postgres: &[],
            sqlite: &[],
        };
        let directory = tempfile::tempdir().expect("a temporary directory");
        let DbPool::Sqlite(pool) = testing::sqlite_pool(directory.path(), "wal.db", &NO_MIGRATIONS)
            .await
            .expect("the database opens")
        else {
            panic!("a SQLite pool");
        };
        sqlx::query("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            .execute(&pool)
            .await
            .expect("the table is created");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = tokio::spawn({
            let pool = pool.clone();
            let stop = stop.clone();
            async move {
                let mut commits = 0_u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    sqlx::query("INSERT INTO rows (body) VALUES (?)")
                        .bind("x".repeat(3000))
                        .execute(&pool)
                        .await
                        .expect("a row is written");
                    commits += 1;
                }
                commits
            }
        });
        let mut logs = Vec::new();
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            logs.push(checkpoint(&pool, 0).await.expect("the checkpoint runs"));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let commits = writer.await.expect("the writer finishes");
        // Every commit writes at least one frame; the later checkpoints each
        // see a small part of them.
        let later_max = logs[20..].iter().copied().max().unwrap_or(0);
        assert!(commits > 200, "only {commits} commits were made");
        assert!(
            later_max < i64::from(commits) / 4,
            "the log kept growing: {logs:?} after {commits} commits"
        );
        pool.close().await;
    }
}

#[cfg(test)]
mod message_tests {
    /// What the test helper prints of an unreachable Postgres names where
    /// it is, never the password in its URL.
    #[test]
    fn a_postgres_url_is_shown_without_its_credentials() {
        let shown = super::testing::where_postgres_is("postgres://tester:hunter2@127.0.0.1:1/x");
        assert_eq!(shown, "127.0.0.1:1/x");
        assert!(!super::testing::where_postgres_is("not a url :// hunter2").contains("hunter2"));
    }
}

#[cfg(test)]
mod durability_tests {
    use super::*;
    use sqlx::ConnectOptions as _;

    const NO_MIGRATIONS: Migrations = Migrations {
        postgres: &[],
        sqlite: &[],
    };

    /// Every SQLite connection syncs a commit before it returns
    /// (`synchronous=FULL`, 2), so what was answered survives a power loss.
    #[tokio::test]
    async fn sqlite_commits_are_synced_before_they_return() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let DbPool::Sqlite(pool) = testing::sqlite_pool(directory.path(), "d.db", &NO_MIGRATIONS)
            .await
            .expect("the database opens")
        else {
            panic!("a SQLite pool");
        };
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut connection = pool.acquire().await.expect("a connection");
            let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut *connection)
                .await
                .expect("the pragma answers");
            assert_eq!(level, 2, "synchronous is not FULL on this connection");
            held.push(connection);
        }
        drop(held);
        pool.close().await;
    }

    /// A role that owns the schema an administrator made for it, and may not
    /// create schemas in the database, still connects and migrates.
    #[tokio::test]
    async fn postgres_takes_a_schema_made_for_a_role_without_create_rights() {
        let Some(url) = testing::postgres_url().await else {
            return;
        };
        let admin_options = PgConnectOptions::from_str(&url).expect("the test URL parses");
        let mut admin = sqlx::PgConnection::connect_with(&admin_options)
            .await
            .expect("the test Postgres accepts a connection");
        let schema = testing::unique_schema("e2e_keys");
        let role = format!("r_{}", &schema[schema.len() - 32..]);
        // Names: lowercase letters, digits and underscores. A new role has
        // no CREATE on the database (PUBLIC is never given it). It has a
        // password, for a server that asks for one.
        let password = uuid::Uuid::new_v4().simple().to_string();
        if let Err(error) = sqlx::query(&format!(
            "CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"
        ))
        .execute(&mut admin)
        .await
        {
            eprintln!("note: the test Postgres user cannot create roles ({error}); skipped");
            return;
        }
        sqlx::query(&format!(
            "CREATE SCHEMA \"{schema}\" AUTHORIZATION \"{role}\""
        ))
        .execute(&mut admin)
        .await
        .expect("the schema is made for the role");
        const ONE_TABLE: &[MigrationFile] = &[MigrationFile {
            version: 1,
            description: "one table",
            sql: "CREATE TABLE t (id BIGINT PRIMARY KEY)",
        }];
        let settings = DatabaseSettings {
            backend: DatabaseBackend::Postgres,
            url: admin_options
                .clone()
                .username(&role)
                .password(&password)
                .to_url_lossy()
                .to_string(),
            schema: schema.clone(),
            max_connections: 1,
        };
        let outcome = connect(
            &settings,
            &Migrations {
                postgres: ONE_TABLE,
                sqlite: &[],
            },
        )
        .await;
        if let Ok(pool) = &outcome {
            pool.close().await;
        }
        for statement in [
            format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
            format!("DROP ROLE IF EXISTS \"{role}\""),
        ] {
            let _ = sqlx::query(&statement).execute(&mut admin).await;
        }
        let _closed = admin.close().await;
        assert!(
            outcome.is_ok(),
            "the role could not use its schema: {outcome:?}"
        );
    }
}
