//! The event store: one trait, a Postgres and a SQLite implementation from
//! the same statements ([`sql`]), and one contract suite for both.
//!
//! Events are appended in arrival order (`seq`), de-duplicated by event id
//! (delivery is at least once), looked up newest first by time and one
//! CloudTrail lookup attribute, and removed by the retention job. Trail
//! delivery and digest chains (a later issue) will read them by `seq`.

#[cfg(test)]
mod contract_tests;
mod rules;
mod sql;

pub use rules::{FailedDeliveryRecord, RuleDeletion, RulePut, RuleRecord, RuleStore, TargetRecord};

use async_trait::async_trait;
use coffer_platform::db::{DbPool, MigrationFile, Migrations};
use thiserror::Error;

pub use sql::{PostgresEventStore, SqliteEventStore};

pub const MIGRATIONS: Migrations = Migrations {
    postgres: &[
        MigrationFile {
            version: 1,
            description: "events",
            sql: include_str!("../../migrations/postgres/0001_events.sql"),
        },
        MigrationFile {
            version: 2,
            description: "rules",
            sql: include_str!("../../migrations/postgres/0002_rules.sql"),
        },
        MigrationFile {
            version: 3,
            description: "resources trigger",
            sql: include_str!("../../migrations/postgres/0003_resources_trigger.sql"),
        },
        MigrationFile {
            version: 4,
            description: "resources by store",
            sql: include_str!("../../migrations/postgres/0004_resources_by_store.sql"),
        },
        MigrationFile {
            version: 5,
            description: "lookup by account",
            sql: include_str!("../../migrations/postgres/0005_lookup_by_account.sql"),
        },
        MigrationFile {
            version: 6,
            description: "rule read-only events",
            sql: include_str!("../../migrations/postgres/0006_rule_read_only_events.sql"),
        },
        MigrationFile {
            version: 7,
            description: "rule accounts",
            sql: include_str!("../../migrations/postgres/0007_rule_accounts.sql"),
        },
        MigrationFile {
            version: 8,
            description: "failures by time",
            sql: include_str!("../../migrations/postgres/0008_failures_by_time.sql"),
        },
    ],
    sqlite: &[
        MigrationFile {
            version: 1,
            description: "events",
            sql: include_str!("../../migrations/sqlite/0001_events.sql"),
        },
        MigrationFile {
            version: 2,
            description: "rules",
            sql: include_str!("../../migrations/sqlite/0002_rules.sql"),
        },
        MigrationFile {
            version: 3,
            description: "resources trigger",
            sql: include_str!("../../migrations/sqlite/0003_resources_trigger.sql"),
        },
        MigrationFile {
            version: 4,
            description: "resources by store",
            sql: include_str!("../../migrations/sqlite/0004_resources_by_store.sql"),
        },
        MigrationFile {
            version: 5,
            description: "lookup by account",
            sql: include_str!("../../migrations/sqlite/0005_lookup_by_account.sql"),
        },
        MigrationFile {
            version: 6,
            description: "rule read-only events",
            sql: include_str!("../../migrations/sqlite/0006_rule_read_only_events.sql"),
        },
        MigrationFile {
            version: 7,
            description: "rule accounts",
            sql: include_str!("../../migrations/sqlite/0007_rule_accounts.sql"),
        },
        MigrationFile {
            version: 8,
            description: "failures by time",
            sql: include_str!("../../migrations/sqlite/0008_failures_by_time.sql"),
        },
    ],
};

/// Everything the audit service stores: events, rules and their targets.
pub trait AuditStore: EventStore + RuleStore {}

impl<T: EventStore + RuleStore> AuditStore for T {}

/// One stored event: the columns lookups filter on and the whole record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Arrival order, assigned by the store (0 before insertion).
    pub seq: i64,
    pub event_id: String,
    pub event_time_ms: i64,
    pub event_source: String,
    pub event_name: String,
    pub read_only: bool,
    pub username: Option<String>,
    pub account_id: Option<String>,
    /// Submitted by a Coffer service identity; `false` for external spans.
    pub trusted: bool,
    /// A trusted record marked `answerWithheld`: the event of a call whose
    /// answer was withheld, sent again under the same eventID because the
    /// first (a success) was not acknowledged in time and may be stored.
    /// It replaces what is stored under its id; any other event is skipped
    /// when its id is already stored.
    pub corrects: bool,
    pub trace_id: Option<String>,
    pub received_at_ms: i64,
    /// The CloudTrail-shaped record, one JSON object.
    pub record: String,
    /// `(resource type, resource name)` pairs, as read from the record, for
    /// the envelopes rules and subscriptions match. The store indexes the
    /// record's own `resources` (migration 0003) and does not read these.
    pub resources: Vec<(String, String)>,
}

impl StoredEvent {
    /// Whether a caller of `account` may read the event: its own account's
    /// events only, untrusted ones its principals sent among them. An event
    /// of no account (a call that failed before it had a caller, or an
    /// untrusted one stored before they were filed by sender) is for
    /// operators only: it may carry what the call sent.
    pub fn visible_to(&self, account: &str) -> bool {
        self.account_id.as_deref() == Some(account)
    }
}

/// CloudTrail's lookup attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupAttribute {
    EventId(String),
    EventName(String),
    ReadOnly(bool),
    Username(String),
    ResourceType(String),
    ResourceName(String),
    EventSource(String),
}

/// Where a page of a lookup starts: after this event, newest first (ties
/// in time in descending event id order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupCursor {
    pub event_time_ms: i64,
    pub event_id: String,
}

/// A LookupEvents query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupQuery {
    pub attribute: Option<LookupAttribute>,
    /// Inclusive bounds on the event time.
    pub start_ms: i64,
    pub end_ms: i64,
    pub after: Option<LookupCursor>,
    pub limit: u32,
    /// Only this account's events; `None`: every event, of any account or
    /// of none (operators and tests).
    pub account: Option<String>,
}

impl LookupQuery {
    /// Every event of every account, newest first, up to `limit`.
    pub fn everything(limit: u32) -> Self {
        Self {
            attribute: None,
            start_ms: i64::MIN,
            end_ms: i64::MAX,
            after: None,
            limit,
            account: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A write that shared its transaction with others, which failed.
    #[error("the shared write failed: {0}")]
    Batch(String),
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends events, each whole with its resources (the trusted record's
    /// `resources`, indexed by the database) or not at all; an event whose id
    /// is already stored is skipped. Returns the positions of the new ones.
    /// A failure may leave some of the events stored: delivery is at least
    /// once, and the retry skips them.
    async fn insert_events(
        &self,
        events: &[StoredEvent],
        now_ms: i64,
    ) -> Result<Vec<usize>, StoreError>;

    async fn get_event(&self, event_id: &str) -> Result<Option<StoredEvent>, StoreError>;

    /// Events matching `query`, newest first: by event time, then by event
    /// id, descending (ids are unique, so no two events tie).
    async fn lookup(&self, query: &LookupQuery) -> Result<Vec<StoredEvent>, StoreError>;

    /// Removes up to `limit` events older than `cutoff_ms`, oldest first,
    /// with their resources. Returns how many were removed.
    async fn delete_older_than(&self, cutoff_ms: i64, limit: u32) -> Result<usize, StoreError>;

    /// How many trusted events named `event_name` are stored (accounting
    /// checks).
    async fn count_events(&self, event_name: &str) -> Result<i64, StoreError>;
}

/// The store for a connected pool.
pub fn audit_store(pool: DbPool) -> std::sync::Arc<dyn AuditStore> {
    match pool {
        DbPool::Postgres(pool) => std::sync::Arc::new(PostgresEventStore::new(pool)),
        DbPool::Sqlite(pool) => std::sync::Arc::new(SqliteEventStore::new(pool)),
    }
}

/// The event store for a connected pool.
pub fn event_store(pool: DbPool) -> std::sync::Arc<dyn EventStore> {
    match pool {
        DbPool::Postgres(pool) => std::sync::Arc::new(PostgresEventStore::new(pool)),
        DbPool::Sqlite(pool) => std::sync::Arc::new(SqliteEventStore::new(pool)),
    }
}

#[cfg(test)]
mod migration_files {
    #[test]
    fn every_migration_file_is_registered() {
        let manifest = env!("CARGO_MANIFEST_DIR");
        coffer_platform::db::testing::assert_migration_files_registered(
            &super::MIGRATIONS,
            manifest,
        );
    }
}
