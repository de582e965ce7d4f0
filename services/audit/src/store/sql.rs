//! The SQL behind [`EventStore`], written once for both backends (they
//! accept the same statements; only the multi-row inserts spell their
//! placeholders per backend, see [`Placeholders`]).

use std::borrow::Cow;

use async_trait::async_trait;
use sqlx::Row;

use super::{EventStore, LookupAttribute, LookupQuery, StoreError, StoredEvent};

const EVENT_COLUMNS: &str = "e.seq, e.event_id, e.event_time_ms, e.event_source, e.event_name, \
     e.read_only, e.username, e.account_id, e.trusted, e.trace_id, e.received_at_ms, e.record";

/// Rows per multi-row insert, at most (events take 11 parameters each,
/// resources 3: within both backends' parameter limits).
const INSERT_CHUNK: usize = 512;

/// The row counts a batch of `total` rows is inserted in: full chunks, then
/// powers of two. A batch of any size then uses one of a handful of
/// statements, which stay prepared in the connection's statement cache
/// instead of one new statement per batch size.
fn chunk_sizes(total: usize) -> impl Iterator<Item = usize> {
    let mut left = total;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let size = if left >= INSERT_CHUNK {
            INSERT_CHUNK
        } else {
            1 << left.ilog2()
        };
        left -= size;
        Some(size)
    })
}

/// Splits `rows` into chunks of the sizes [`chunk_sizes`] gives.
fn fixed_chunks<T>(rows: &[T]) -> impl Iterator<Item = (usize, &[T])> {
    let mut start = 0;
    chunk_sizes(rows.len()).map(move |size| {
        let chunk = (start, rows.get(start..start + size).unwrap_or_default());
        start += size;
        chunk
    })
}

/// How a backend spells the `n`th (1-based) placeholder of a statement.
///
/// SQLite gets anonymous `?`: sqlx looks every parameter's name up when it
/// binds, and SQLite finds a name by a linear scan, so numbered
/// placeholders make binding a multi-row insert quadratic in its size
/// (5 % of the audit service's CPU at 30 events a batch, and growing).
#[derive(Debug, Clone, Copy)]
enum Placeholders {
    Numbered,
    Anonymous,
}

/// Groups of `width` placeholders for `rows` rows: `($1, $2), ($3, $4)`.
fn value_rows(rows: usize, width: usize, style: Placeholders) -> String {
    let mut text = String::with_capacity(rows * width * 5);
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        text.push('(');
        for column in 0..width {
            if column > 0 {
                text.push_str(", ");
            }
            match style {
                Placeholders::Numbered => {
                    text.push_str(&format!("${}", row * width + column + 1));
                }
                Placeholders::Anonymous => text.push('?'),
            }
        }
        text.push(')');
    }
    text
}

/// Longest text a lookup column holds, in bytes. Postgres refuses a B-tree
/// index entry over about 2,700 bytes (a third of a page) that it cannot
/// compress, and an outsider names its own spans.
const MAX_COLUMN_BYTES: usize = 1024;

/// Text as the lookup columns hold it, in what is stored and in what is
/// looked up alike, on both backends; the record keeps the text whole.
/// One event a column refuses would fail every export it shares a write
/// with, so:
/// - a NUL, which Postgres' `text` cannot hold, is U+FFFD;
/// - text past [`MAX_COLUMN_BYTES`] is cut at the last character that fits
///   (a lookup by a longer value matches the events whose value begins
///   with the same [`MAX_COLUMN_BYTES`]).
fn column(text: &str) -> Cow<'_, str> {
    let kept = text
        .get(..coffer_platform::floor_char_boundary(text, MAX_COLUMN_BYTES))
        .unwrap_or_default();
    if kept.contains('\0') {
        Cow::Owned(kept.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(kept)
    }
}

fn insert_events_statement(rows: usize, style: Placeholders) -> String {
    format!(
        "INSERT INTO events (event_id, event_time_ms, event_source, event_name, read_only, \
         username, account_id, trusted, trace_id, received_at_ms, record) VALUES {} \
         ON CONFLICT (event_id) DO NOTHING RETURNING seq, event_id",
        value_rows(rows, 11, style)
    )
}

fn insert_resources_statement(rows: usize, style: Placeholders) -> String {
    format!(
        "INSERT INTO event_resources (seq, resource_type, resource_name) VALUES {}",
        value_rows(rows, 3, style)
    )
}

/// A correction replaces the record of the same service's event only.
const CORRECT_EVENT: &str =
    "UPDATE events SET record = $1 WHERE event_id = $2 AND trusted = $3 AND event_source = $4";

const DELETE_OLD: &str = "DELETE FROM events WHERE seq IN \
     (SELECT seq FROM events WHERE event_time_ms < $1 ORDER BY seq LIMIT $2)";

const DELETE_OLD_RESOURCES: &str = "DELETE FROM event_resources WHERE seq IN \
     (SELECT seq FROM events WHERE event_time_ms < $1 ORDER BY seq LIMIT $2)";

fn select_event() -> String {
    format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id = $1")
}

/// The lookup statement: time bounds $1/$2, cursor $3/$4, the account $5
/// (NULL: every account; otherwise that account's events only:
/// [`StoredEvent::visible_to`]), then the attribute (when there is one) and
/// the limit.
fn lookup_statement(attribute: Option<&LookupAttribute>, one_account: bool) -> String {
    let filter = match attribute {
        None => "",
        Some(LookupAttribute::EventId(_)) => " AND e.event_id = $6",
        Some(LookupAttribute::EventName(_)) => " AND e.event_name = $6",
        Some(LookupAttribute::ReadOnly(_)) => " AND e.read_only = $6",
        Some(LookupAttribute::Username(_)) => " AND e.username = $6",
        Some(LookupAttribute::EventSource(_)) => " AND e.event_source = $6",
        Some(LookupAttribute::ResourceType(_)) => {
            " AND EXISTS (SELECT 1 FROM event_resources r WHERE r.seq = e.seq AND r.resource_type = $6)"
        }
        Some(LookupAttribute::ResourceName(_)) => {
            " AND EXISTS (SELECT 1 FROM event_resources r WHERE r.seq = e.seq AND r.resource_name = $6)"
        }
    };
    let limit = if attribute.is_some() { "$7" } else { "$6" };
    // Spelled out rather than `($5 IS NULL OR ...)`, so that the planner can
    // use the indexes that lead with the account.
    let account = if one_account {
        "e.account_id = $5"
    } else {
        "$5 IS NULL"
    };
    // `e.event_time_ms <= $3` says again what the cursor's OR implies, so
    // that Postgres bounds its index scan at the cursor: without it, each
    // page walks every event newer than the cursor again (SQLite draws the
    // bound from the OR itself).
    format!(
        "SELECT {EVENT_COLUMNS} FROM events e \
         WHERE e.event_time_ms >= $1 AND e.event_time_ms <= $2 \
         AND e.event_time_ms <= $3 \
         AND (e.event_time_ms < $3 OR (e.event_time_ms = $3 AND e.event_id < $4)) \
         AND {account}{filter} \
         ORDER BY e.event_time_ms DESC, e.event_id DESC LIMIT {limit}"
    )
}

/// The pool event inserts go through.
///
/// On SQLite a connection that finds the database changed by another
/// connection discards its whole page cache, so inserts spread over a pool's
/// connections re-read every index path from the file on each batch. They go
/// through a pool of one connection of their own instead, whose cache stays
/// warm (reads keep the shared pool; the audit core already writes one batch
/// at a time). Postgres keeps one pool: its cache is shared.
fn sqlite_writer(pool: &sqlx::SqlitePool) -> sqlx::SqlitePool {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_lazy_with((*pool.connect_options()).clone())
}

macro_rules! sql_event_store {
    ($store:ident, $pool:ty, $row:ty, $placeholders:expr, $writer:expr) => {
        /// [`EventStore`] on this backend.
        #[derive(Debug, Clone)]
        pub struct $store {
            pool: $pool,
            /// Where inserts go (see [`sqlite_writer`]).
            writer: $pool,
        }

        impl $store {
            pub fn new(pool: $pool) -> Self {
                let writer = $writer(&pool);
                Self { pool, writer }
            }

            pub(crate) fn pool(&self) -> &$pool {
                &self.pool
            }

            fn event_from_row(row: &$row) -> Result<StoredEvent, StoreError> {
                let read = |error: sqlx::Error| StoreError::Database(error);
                Ok(StoredEvent {
                    seq: row.try_get("seq").map_err(read)?,
                    event_id: row.try_get("event_id").map_err(read)?,
                    event_time_ms: row.try_get("event_time_ms").map_err(read)?,
                    event_source: row.try_get("event_source").map_err(read)?,
                    event_name: row.try_get("event_name").map_err(read)?,
                    read_only: row.try_get("read_only").map_err(read)?,
                    username: row.try_get("username").map_err(read)?,
                    account_id: row.try_get("account_id").map_err(read)?,
                    trusted: row.try_get("trusted").map_err(read)?,
                    corrects: false,
                    trace_id: row.try_get("trace_id").map_err(read)?,
                    received_at_ms: row.try_get("received_at_ms").map_err(read)?,
                    record: row.try_get("record").map_err(read)?,
                    resources: Vec::new(),
                })
            }
        }

        #[async_trait]
        impl EventStore for $store {
            async fn insert_events(
                &self,
                events: &[StoredEvent],
                now_ms: i64,
            ) -> Result<Vec<usize>, StoreError> {
                // One transaction: per chunk, a multi-row insert returning
                // the events that were new, then the resources of those
                // (only a trusted event names resources).
                let mut transaction = self.writer.begin().await.map_err(StoreError::Database)?;
                let mut inserted = Vec::new();
                let mut resources: Vec<(i64, &str, &str)> = Vec::new();
                for (offset, chunk) in fixed_chunks(events) {
                    let statement = insert_events_statement(chunk.len(), $placeholders);
                    let mut query = sqlx::query(&statement);
                    for event in chunk {
                        query = query
                            .bind(&event.event_id)
                            .bind(event.event_time_ms)
                            .bind(column(&event.event_source))
                            .bind(column(&event.event_name))
                            .bind(event.read_only)
                            .bind(event.username.as_deref().map(column))
                            .bind(event.account_id.as_deref().map(column))
                            .bind(event.trusted)
                            .bind(event.trace_id.as_deref().map(column))
                            .bind(now_ms)
                            .bind(&event.record);
                    }
                    let rows = query
                        .fetch_all(&mut *transaction)
                        .await
                        .map_err(StoreError::Database)?;
                    // The insert keeps the first copy of an id that occurs
                    // twice, so the position reported is the first one's.
                    let mut positions = std::collections::HashMap::<&str, usize>::new();
                    for (position, event) in chunk.iter().enumerate() {
                        positions
                            .entry(event.event_id.as_str())
                            .or_insert(offset + position);
                    }
                    for row in &rows {
                        let event_id: String =
                            row.try_get("event_id").map_err(StoreError::Database)?;
                        let seq: i64 = row.try_get("seq").map_err(StoreError::Database)?;
                        let Some(&position) = positions.get(event_id.as_str()) else {
                            continue;
                        };
                        inserted.push(position);
                        if let Some(event) = events.get(position)
                            && event.trusted
                        {
                            resources.extend(
                                event
                                    .resources
                                    .iter()
                                    .map(|(kind, name)| (seq, kind.as_str(), name.as_str())),
                            );
                        }
                    }
                }
                for (_, chunk) in fixed_chunks(&resources) {
                    let statement = insert_resources_statement(chunk.len(), $placeholders);
                    let mut query = sqlx::query(&statement);
                    for &(seq, kind, name) in chunk {
                        query = query.bind(seq).bind(column(kind)).bind(column(name));
                    }
                    query
                        .execute(&mut *transaction)
                        .await
                        .map_err(StoreError::Database)?;
                }
                // A correction replaces the record stored under its id (the
                // columns it is looked up by are the same).
                for event in events
                    .iter()
                    .filter(|event| event.corrects && event.trusted)
                {
                    sqlx::query(CORRECT_EVENT)
                        .bind(&event.record)
                        .bind(&event.event_id)
                        .bind(true)
                        .bind(column(&event.event_source))
                        .execute(&mut *transaction)
                        .await
                        .map_err(StoreError::Database)?;
                }
                transaction.commit().await.map_err(StoreError::Database)?;
                inserted.sort_unstable();
                Ok(inserted)
            }

            async fn get_event(&self, event_id: &str) -> Result<Option<StoredEvent>, StoreError> {
                let row = sqlx::query(&select_event())
                    .bind(column(event_id))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::Database)?;
                row.as_ref().map(Self::event_from_row).transpose()
            }

            async fn lookup(&self, query: &LookupQuery) -> Result<Vec<StoredEvent>, StoreError> {
                let statement = lookup_statement(query.attribute.as_ref(), query.account.is_some());
                // No cursor: every stored time is before i64::MAX.
                let (cursor_time, cursor_id) = match &query.after {
                    Some(cursor) => (cursor.event_time_ms, cursor.event_id.as_str()),
                    None => (i64::MAX, ""),
                };
                let mut sql_query = sqlx::query(&statement)
                    .bind(query.start_ms)
                    .bind(query.end_ms)
                    .bind(cursor_time)
                    .bind(cursor_id)
                    .bind(query.account.as_deref());
                sql_query = match &query.attribute {
                    None => sql_query,
                    Some(LookupAttribute::ReadOnly(value)) => sql_query.bind(*value),
                    Some(
                        LookupAttribute::EventId(text)
                        | LookupAttribute::EventName(text)
                        | LookupAttribute::Username(text)
                        | LookupAttribute::ResourceType(text)
                        | LookupAttribute::ResourceName(text)
                        | LookupAttribute::EventSource(text),
                    ) => sql_query.bind(column(text)),
                };
                let rows = sql_query
                    .bind(i64::from(query.limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(StoreError::Database)?;
                rows.iter().map(Self::event_from_row).collect()
            }

            async fn delete_older_than(
                &self,
                cutoff_ms: i64,
                limit: u32,
            ) -> Result<usize, StoreError> {
                let mut transaction = self.pool.begin().await.map_err(StoreError::Database)?;
                sqlx::query(DELETE_OLD_RESOURCES)
                    .bind(cutoff_ms)
                    .bind(i64::from(limit))
                    .execute(&mut *transaction)
                    .await
                    .map_err(StoreError::Database)?;
                let outcome = sqlx::query(DELETE_OLD)
                    .bind(cutoff_ms)
                    .bind(i64::from(limit))
                    .execute(&mut *transaction)
                    .await
                    .map_err(StoreError::Database)?;
                transaction.commit().await.map_err(StoreError::Database)?;
                Ok(usize::try_from(outcome.rows_affected()).unwrap_or(usize::MAX))
            }

            async fn count_events(&self, event_name: &str) -> Result<i64, StoreError> {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM events WHERE event_name = $1 AND trusted = $2",
                )
                .bind(event_name)
                .bind(true)
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::Database)
            }
        }
    };
}

sql_event_store!(
    PostgresEventStore,
    sqlx::PgPool,
    sqlx::postgres::PgRow,
    Placeholders::Numbered,
    sqlx::PgPool::clone
);
sql_event_store!(
    SqliteEventStore,
    sqlx::SqlitePool,
    sqlx::sqlite::SqliteRow,
    Placeholders::Anonymous,
    sqlite_writer
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_of_any_size_use_a_handful_of_statement_sizes() {
        let mut sizes = std::collections::BTreeSet::new();
        for total in 0..=3 * INSERT_CHUNK + 7 {
            let chunks: Vec<usize> = chunk_sizes(total).collect();
            assert_eq!(chunks.iter().sum::<usize>(), total, "{total}");
            assert!(chunks.iter().all(|&size| size > 0 && size <= INSERT_CHUNK));
            sizes.extend(chunks);
        }
        // 512 and the powers of two below it.
        assert_eq!(sizes.len(), 10, "{sizes:?}");

        let rows: Vec<usize> = (0..1_300).collect();
        let mut seen = Vec::new();
        for (offset, chunk) in fixed_chunks(&rows) {
            assert_eq!(chunk.first(), Some(&offset));
            seen.extend_from_slice(chunk);
        }
        assert_eq!(seen, rows);
    }
}
