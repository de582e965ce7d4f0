//! The audit outbox (`required` mode): no committed state change goes
//! unaudited, even across crashes.
//!
//! While a state-changing call runs, the call layer keeps an [`OutboxSlot`]
//! in a task-local. Each write transaction of the service's store asks
//! [`pending_row`] for the call's event and inserts it into `audit_outbox`
//! with [`INSERT_ROW`] before committing, so the change and its event commit
//! together. After the call the call layer queues the final event (with its
//! response elements) on the exporter, which removes the row once the audit
//! service acknowledged it. The [`spawn_relay`] task sends rows the live path
//! did not clear once they are older than `grace`, whichever process wrote
//! them: a row of another boot id may be a crashed process's, or a live
//! replica's on the same database, which clears it itself. The audit
//! service de-duplicates by event id, so a row sent twice is stored once.
//!
//! A row holds the event as it stood at commit. Domain code records what a
//! change's event says of it (resources, response elements) before it
//! writes, so the row is whole. When the live path leaves a queued event to
//! the relay (its queue is full), the row is brought up to the final event
//! first ([`SqlOutbox::complete`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::Row;

use super::otlp::EncodedEvent;
use super::{AuditEvent, AuditRecorder};
use crate::db::DbPool;

/// Inserts the current call's row: event id, boot id, creation time, record.
pub const INSERT_ROW: &str = "INSERT INTO audit_outbox (event_id, boot_id, created_at_ms, record) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING";

/// Rows older than the grace period, whichever process wrote them: replicas
/// share a Postgres schema, so another boot's row may be a live call's.
const SELECT_DUE: &str = "SELECT event_id, record FROM audit_outbox \
     WHERE created_at_ms < $1 ORDER BY created_at_ms, event_id LIMIT $2";

tokio::task_local! {
    static CURRENT: Arc<OutboxSlot>;
}

/// The event of the state-changing call in progress.
pub struct OutboxSlot {
    event: AuditEvent,
    recorder: AuditRecorder,
    boot_id: Arc<str>,
    written: AtomicBool,
}

impl OutboxSlot {
    pub(crate) fn new(event: AuditEvent, recorder: AuditRecorder, boot_id: Arc<str>) -> Self {
        Self {
            event,
            recorder,
            boot_id,
            written: AtomicBool::new(false),
        }
    }

    /// Whether a transaction wrote this call's row.
    pub(crate) fn written(&self) -> bool {
        self.written.load(Ordering::Acquire)
    }

    /// Runs `future` with this slot as the current call's.
    pub(crate) async fn scope<F: std::future::Future>(self: Arc<Self>, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }
}

/// A row of `audit_outbox`.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub event_id: String,
    pub boot_id: String,
    pub created_at_ms: i64,
    pub record: String,
}

/// The row a write transaction must insert ([`INSERT_ROW`]) before it
/// commits: the current call's event as a success, with what the handler
/// recorded so far. `None` outside a state-changing call in `required` mode.
pub fn pending_row() -> Option<OutboxRow> {
    CURRENT
        .try_with(|slot| {
            let draft = slot.recorder.snapshot();
            let mut event = slot.event.clone();
            // A call's event: the commit's time; the event the call then
            // emits carries the time it completed, a moment later. Both
            // copies have the same eventID and the store keeps whichever
            // arrives first. A service's own change has its time already.
            if event.event_time.is_empty() {
                event.event_time = crate::telemetry::now_rfc3339();
            }
            event.request_parameters = draft.request_parameters.unwrap_or_default();
            event.response_elements = draft.response_elements.unwrap_or_default();
            event.additional_event_data = draft.additional_event_data;
            event.resources = draft.resources;
            let record = super::caps::capped_record(&event).ok()?;
            slot.written.store(true, Ordering::Release);
            Some(OutboxRow {
                event_id: event.event_id,
                boot_id: slot.boot_id.to_string(),
                created_at_ms: now_ms(),
                record,
            })
        })
        .ok()
        .flatten()
}

fn now_ms() -> i64 {
    crate::clock::Clock::now_millis(&crate::clock::SystemClock)
}

/// One service's `audit_outbox` table.
#[derive(Debug)]
pub struct SqlOutbox {
    pool: DbPool,
    boot_id: Arc<str>,
    /// Rows the relay handed to the exporter whose events it still holds
    /// (neither delivered nor given back): not handed over again until then,
    /// so an outage longer than the grace period does not queue them again
    /// and again.
    relayed: std::sync::Mutex<HashSet<String>>,
}

impl SqlOutbox {
    /// The outbox of `pool`, for this process (a fresh boot id).
    pub fn new(pool: DbPool) -> Self {
        Self {
            pool,
            boot_id: Arc::from(crate::hex_lower(&crate::random_id_bytes::<16>())),
            relayed: std::sync::Mutex::new(HashSet::new()),
        }
    }

    fn relayed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.relayed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks a row as handed to the exporter (by the relay, or by its call
    /// on the live path); `false` when it already is.
    pub(crate) fn mark_relayed(&self, event_id: &str) -> bool {
        self.relayed().insert(event_id.to_owned())
    }

    /// The exporter no longer holds these rows' events: delivered (and the
    /// rows removed, or left for the relay if that failed) or given back.
    pub(crate) fn release(&self, event_ids: &[String]) {
        let mut relayed = self.relayed();
        for event_id in event_ids {
            relayed.remove(event_id);
        }
    }

    pub fn boot_id(&self) -> &Arc<str> {
        &self.boot_id
    }

    /// Rows the relay should send: those older than `grace`, this
    /// process's or another's.
    pub async fn due(&self, grace: Duration, limit: u32) -> Result<Vec<EncodedEvent>, sqlx::Error> {
        let cutoff = now_ms().saturating_sub(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
        let limit = i64::from(limit);
        let rows: Vec<(String, String)> = match &self.pool {
            DbPool::Postgres(pool) => sqlx::query(SELECT_DUE)
                .bind(cutoff)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()?,
            DbPool::Sqlite(pool) => sqlx::query(SELECT_DUE)
                .bind(cutoff)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()?,
        };
        Ok(rows
            .into_iter()
            .map(|(event_id, record)| {
                let parsed: serde_json::Value = serde_json::from_str(&record).unwrap_or_default();
                let field = |name: &str| {
                    parsed
                        .get(name)
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                EncodedEvent {
                    event_name: field("eventName"),
                    trace_id: field("traceId"),
                    event_id,
                    record,
                }
            })
            .collect())
    }

    /// Puts the call's final event (what it recorded after its commit too)
    /// in its row, when the live path leaves it to the relay. A row that is
    /// not there is written: the call's write may have failed to commit
    /// after its row was prepared, and its event would otherwise be lost
    /// without a word; one delivered already is sent again, and the audit
    /// service keeps the copy it has (it de-duplicates by event id).
    pub async fn complete(&self, event_id: &str, record: &str) -> Result<(), sqlx::Error> {
        const COMPLETE: &str = "INSERT INTO audit_outbox (event_id, boot_id, created_at_ms, record) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO UPDATE SET record = excluded.record";
        let created_at_ms = now_ms();
        match &self.pool {
            DbPool::Postgres(pool) => {
                sqlx::query(COMPLETE)
                    .bind(event_id)
                    .bind(self.boot_id.as_ref())
                    .bind(created_at_ms)
                    .bind(record)
                    .execute(pool)
                    .await?;
            }
            DbPool::Sqlite(pool) => {
                sqlx::query(COMPLETE)
                    .bind(event_id)
                    .bind(self.boot_id.as_ref())
                    .bind(created_at_ms)
                    .bind(record)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Removes delivered rows.
    pub async fn remove(&self, event_ids: &[String]) -> Result<(), sqlx::Error> {
        for chunk in event_ids.chunks(500) {
            let placeholders = (1..=chunk.len())
                .map(|index| format!("${index}"))
                .collect::<Vec<_>>()
                .join(", ");
            let statement = format!("DELETE FROM audit_outbox WHERE event_id IN ({placeholders})");
            match &self.pool {
                DbPool::Postgres(pool) => {
                    let mut query = sqlx::query(&statement);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    query.execute(pool).await?;
                }
                DbPool::Sqlite(pool) => {
                    let mut query = sqlx::query(&statement);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    query.execute(pool).await?;
                }
            }
        }
        Ok(())
    }

    /// Rows waiting, for tests and metrics.
    pub async fn pending_rows(&self) -> Result<i64, sqlx::Error> {
        const COUNT: &str = "SELECT COUNT(*) FROM audit_outbox";
        match &self.pool {
            DbPool::Postgres(pool) => sqlx::query_scalar(COUNT).fetch_one(pool).await,
            DbPool::Sqlite(pool) => sqlx::query_scalar(COUNT).fetch_one(pool).await,
        }
    }

    /// The records of the rows waiting, oldest first, for tests.
    pub async fn pending_records(&self) -> Result<Vec<String>, sqlx::Error> {
        const RECORDS: &str = "SELECT record FROM audit_outbox ORDER BY created_at_ms, event_id";
        match &self.pool {
            DbPool::Postgres(pool) => sqlx::query_scalar(RECORDS).fetch_all(pool).await,
            DbPool::Sqlite(pool) => sqlx::query_scalar(RECORDS).fetch_all(pool).await,
        }
    }
}

/// How often the relay looks for rows.
pub const RELAY_INTERVAL: Duration = Duration::from_millis(500);

/// Sends due outbox rows through `exporter` every [`RELAY_INTERVAL`]. A row
/// is removed once the audit service acknowledged it. Started again should
/// it panic ([`crate::background::supervised`]).
pub fn spawn_relay(
    outbox: Arc<SqlOutbox>,
    exporter: Arc<super::export::AuditExporter>,
    grace: Duration,
) -> tokio::task::JoinHandle<()> {
    crate::background::supervised("outbox relay", RELAY_INTERVAL, move || {
        relay(outbox.clone(), exporter.clone(), grace)
    })
}

async fn relay(
    outbox: Arc<SqlOutbox>,
    exporter: Arc<super::export::AuditExporter>,
    grace: Duration,
) {
    let mut ticks = tokio::time::interval(RELAY_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A row whose event the exporter still holds is not handed over
    // again ([`SqlOutbox::release`]); one it gave back (its queue was
    // full) waits for `grace` to pass once more.
    let mut handed: std::collections::HashMap<String, std::time::Instant> =
        std::collections::HashMap::new();
    loop {
        ticks.tick().await;
        match outbox.due(grace, 1_000).await {
            Ok(rows) => {
                let now = std::time::Instant::now();
                handed.retain(|_, at| now.duration_since(*at) < grace);
                let mut sent = 0usize;
                for row in rows {
                    if handed.contains_key(&row.event_id) || !outbox.mark_relayed(&row.event_id) {
                        continue;
                    }
                    handed.insert(row.event_id.clone(), now);
                    exporter.enqueue_encoded(row, Some(outbox.clone()));
                    sent += 1;
                }
                if sent > 0 {
                    tracing::info!(events = sent, "outbox relay resent audit events");
                }
            }
            Err(error) => tracing::warn!(%error, "outbox relay could not read the outbox"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{MigrationFile, Migrations, testing};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const OUTBOX_TABLE: &[MigrationFile] = &[MigrationFile {
        version: 1,
        description: "audit outbox",
        sql: "CREATE TABLE audit_outbox (event_id TEXT PRIMARY KEY, boot_id TEXT NOT NULL, \
              created_at_ms BIGINT NOT NULL, record TEXT NOT NULL)",
    }];
    const MIGRATIONS: Migrations = Migrations {
        postgres: OUTBOX_TABLE,
        sqlite: OUTBOX_TABLE,
    };

    /// A CreateKey row of `outbox`'s, written `age_ms` ago.
    fn row_of(outbox: &SqlOutbox, event_id: &str, age_ms: i64) -> OutboxRow {
        OutboxRow {
            event_id: event_id.to_owned(),
            boot_id: outbox.boot_id().to_string(),
            created_at_ms: now_ms() - age_ms,
            record: r#"{"eventName":"CreateKey"}"#.to_owned(),
        }
    }

    async fn insert(pool: &DbPool, row: &OutboxRow) -> Result<(), sqlx::Error> {
        match pool {
            DbPool::Postgres(pool) => {
                sqlx::query(INSERT_ROW)
                    .bind(&row.event_id)
                    .bind(&row.boot_id)
                    .bind(row.created_at_ms)
                    .bind(&row.record)
                    .execute(pool)
                    .await?;
            }
            DbPool::Sqlite(pool) => {
                sqlx::query(INSERT_ROW)
                    .bind(&row.event_id)
                    .bind(&row.boot_id)
                    .bind(row.created_at_ms)
                    .bind(&row.record)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Replicas share one outbox table: a replica relays another's row only
    /// once it is as old as its own would have to be.
    async fn another_replicas_fresh_row_is_not_due(pool: DbPool) -> TestResult {
        let (one, other) = (SqlOutbox::new(pool.clone()), SqlOutbox::new(pool.clone()));
        let row = |event_id: &str, age_ms: i64| row_of(&one, event_id, age_ms);
        let grace = Duration::from_secs(15);
        insert(&pool, &row("fresh", 1_000)).await?;
        insert(&pool, &row("stale", 60_000)).await?;
        for outbox in [&one, &other] {
            let due: Vec<String> = outbox
                .due(grace, 10)
                .await?
                .into_iter()
                .map(|event| event.event_id)
                .collect();
            assert_eq!(due, ["stale"]);
        }
        Ok(())
    }

    /// A final event left to the relay replaces its row's record, and is
    /// written when its row is not there (the call's commit failed after
    /// the row was prepared): before, it was an update of no row, and the
    /// event was lost without a word.
    async fn a_final_event_left_to_the_relay_is_kept(pool: DbPool) -> TestResult {
        let outbox = SqlOutbox::new(pool.clone());
        insert(&pool, &row_of(&outbox, "committed", 60_000)).await?;
        outbox
            .complete("committed", r#"{"eventName":"CreateKey","final":1}"#)
            .await?;
        outbox
            .complete("never-committed", r#"{"eventName":"CreateKey","final":2}"#)
            .await?;
        // The written row is due, with no grace, once it is older than now.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut rows: Vec<(String, String)> = outbox
            .due(Duration::ZERO, 10)
            .await?
            .into_iter()
            .map(|event| (event.event_id, event.record))
            .collect();
        rows.sort();
        assert_eq!(
            rows,
            [
                (
                    "committed".to_owned(),
                    r#"{"eventName":"CreateKey","final":1}"#.to_owned()
                ),
                (
                    "never-committed".to_owned(),
                    r#"{"eventName":"CreateKey","final":2}"#.to_owned()
                ),
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_final_event_left_to_the_relay_is_kept_sqlite() -> TestResult {
        let directory = tempfile::tempdir()?;
        let pool = testing::sqlite_pool(directory.path(), "outbox.db", &MIGRATIONS).await?;
        a_final_event_left_to_the_relay_is_kept(pool).await
    }

    #[tokio::test]
    async fn a_final_event_left_to_the_relay_is_kept_postgres() -> TestResult {
        match testing::postgres_pool("outbox_final", &MIGRATIONS).await? {
            Some(pool) => a_final_event_left_to_the_relay_is_kept(pool).await,
            None => Ok(()),
        }
    }

    /// A call's own (live) event, still held by the exporter through an
    /// outage longer than the grace period, is not handed over a second
    /// time by the relay: before, every such row was queued twice, and the
    /// queue filled twice as fast, dropping events that have no outbox row.
    #[tokio::test]
    async fn the_relay_does_not_copy_a_live_event_the_exporter_holds() -> TestResult {
        use super::super::service::{ServiceEvent, ServiceEvents};
        use super::super::{AuditSink as _, Delivery};
        let directory = tempfile::tempdir()?;
        let pool = testing::sqlite_pool(directory.path(), "outbox.db", &MIGRATIONS).await?;
        let outbox = Arc::new(SqlOutbox::new(pool.clone()));
        let exporter = hanging_exporter();
        let events = ServiceEvents::new(
            &crate::arn::Location {
                partition: "coffer".into(),
                region: "eu-west-1".into(),
                dns_suffix: "coffer.internal".into(),
            },
            "keys",
            exporter.clone(),
            None,
            Arc::new(crate::clock::SystemClock),
        );
        // Two calls' rows, older than the grace period; the calls' own
        // events are in the exporter (the first in the export that hangs,
        // the second queued behind it).
        for index in 0..2 {
            let event_id = format!("live-{index}");
            insert(&pool, &row_of(&outbox, &event_id, 60_000)).await?;
            let mut event = events.event_of(&ServiceEvent {
                name: "RotateKey",
                account: "111122223333".to_owned(),
                resource_arn: "arn:coffer:kms:eu-west-1:111122223333:key/k".to_owned(),
                resource_type: "AWS::KMS::Key",
                details: serde_json::Value::Null,
            });
            event.event_id = event_id;
            exporter
                .emit(&event, Delivery::Outboxed(outbox.clone()))
                .await?;
        }
        let queued = exporter.queued();
        let relay = spawn_relay(outbox.clone(), exporter.clone(), Duration::from_millis(50));
        tokio::time::sleep(RELAY_INTERVAL * 3 + RELAY_INTERVAL / 2).await;
        relay.abort();
        assert_eq!(exporter.queued(), queued, "the relay queued a second copy");
        Ok(())
    }

    /// The audit service as it is in an outage that hangs: an export never
    /// ends.
    struct Hanging;

    /// A `required`-mode exporter to an audit service in such an outage.
    fn hanging_exporter() -> Arc<super::super::export::AuditExporter> {
        use super::super::export::{AuditExporter, ExportSettings};
        AuditExporter::start(
            Arc::new(Hanging),
            ExportSettings {
                mode: crate::config::AuditMode::Required,
                deadline: Duration::from_secs(5),
                queue_limit: 1_000,
                batch_limit: 100,
                gather: Duration::ZERO,
            },
        )
    }

    #[async_trait::async_trait]
    impl super::super::export::ExportTransport for Hanging {
        async fn export(&self, _events: &[EncodedEvent]) -> Result<(), String> {
            std::future::pending().await
        }
    }

    /// Through an outage longer than the grace period the relay hands each
    /// row over once: the exporter holds it until it is delivered. Before,
    /// every row was queued again at each grace period, and a long outage
    /// filled the queue with copies.
    #[tokio::test]
    async fn through_an_outage_each_row_is_handed_over_once() -> TestResult {
        let directory = tempfile::tempdir()?;
        let pool = testing::sqlite_pool(directory.path(), "outbox.db", &MIGRATIONS).await?;
        let outbox = Arc::new(SqlOutbox::new(pool.clone()));
        for index in 0..3 {
            insert(&pool, &row_of(&outbox, &format!("row-{index}"), 60_000)).await?;
        }
        let exporter = hanging_exporter();
        let relay = spawn_relay(outbox.clone(), exporter.clone(), Duration::from_millis(50));
        // Four ticks of the relay: the first hands the three rows over (an
        // export that hangs), the others find them still held.
        tokio::time::sleep(RELAY_INTERVAL * 3 + RELAY_INTERVAL / 2).await;
        relay.abort();
        assert_eq!(exporter.queued(), 0, "no row was queued a second time");
        Ok(())
    }

    #[tokio::test]
    async fn another_replicas_fresh_row_is_not_due_sqlite() -> TestResult {
        let directory = tempfile::tempdir()?;
        let pool = testing::sqlite_pool(directory.path(), "outbox.db", &MIGRATIONS).await?;
        another_replicas_fresh_row_is_not_due(pool).await
    }

    #[tokio::test]
    async fn another_replicas_fresh_row_is_not_due_postgres() -> TestResult {
        match testing::postgres_pool("outbox", &MIGRATIONS).await? {
            Some(pool) => another_replicas_fresh_row_is_not_due(pool).await,
            None => Ok(()),
        }
    }
}
