//! Event rules, their webhook targets and failed deliveries, on both
//! backends from one set of statements.

use async_trait::async_trait;
use sqlx::Row;

use super::{PostgresEventStore, SqliteEventStore, StoreError};

/// An event rule of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRecord {
    pub account_id: String,
    pub name: String,
    pub event_pattern: String,
    pub enabled: bool,
    /// Whether the rule also receives read-only management events
    /// (ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS); kept while disabled.
    pub read_only_events: bool,
    pub description: String,
    pub created_by: String,
    pub created_at_ms: i64,
}

/// What PutRule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulePut {
    Written,
    /// The rule is new and the account already has its most rules: nothing
    /// was written.
    AccountFull,
}

/// What DeleteRule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleDeletion {
    Deleted,
    /// There was no such rule (which EventBridge answers with success).
    Missing,
    /// The rule has targets and they were not to go with it: nothing changed.
    HasTargets,
}

/// A webhook target of a rule.
#[derive(Clone, PartialEq, Eq)]
pub struct TargetRecord {
    pub account_id: String,
    pub rule_name: String,
    pub target_id: String,
    pub endpoint: String,
    /// The HMAC key of the signature header. Never returned by the API.
    pub signing_secret: Vec<u8>,
    pub max_retries: i32,
    pub max_event_age_s: i32,
}

impl std::fmt::Debug for TargetRecord {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TargetRecord")
            .field("rule_name", &self.rule_name)
            .field("target_id", &self.target_id)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A delivery that failed after every retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDeliveryRecord {
    pub seq: i64,
    pub account_id: String,
    pub rule_name: String,
    pub target_id: String,
    pub event_id: String,
    pub attempts: i32,
    pub last_error: String,
    pub failed_at_ms: i64,
}

#[async_trait]
pub trait RuleStore: Send + Sync + 'static {
    /// Creates the rule or replaces its pattern, state and description; a
    /// new rule only while its account has fewer than `max_per_account`.
    /// Decided under the account's lock, so concurrent calls cannot together
    /// pass the quota.
    async fn put_rule(
        &self,
        rule: &RuleRecord,
        max_per_account: usize,
    ) -> Result<RulePut, StoreError>;
    async fn get_rule(&self, account: &str, name: &str) -> Result<Option<RuleRecord>, StoreError>;
    /// Rules whose name starts with `prefix`, after `after`, by name.
    async fn list_rules(
        &self,
        account: &str,
        prefix: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<RuleRecord>, StoreError>;
    /// Every enabled rule of every account, with its targets.
    async fn enabled_rules(&self) -> Result<Vec<(RuleRecord, Vec<TargetRecord>)>, StoreError>;
    /// Deletes the rule with its targets and failed deliveries; a rule with
    /// targets only `with_targets`. Decided under the rule's lock, so a
    /// concurrent PutTargets cannot slip a target in to be deleted unseen.
    async fn delete_rule(
        &self,
        account: &str,
        name: &str,
        with_targets: bool,
    ) -> Result<RuleDeletion, StoreError>;
    async fn set_rule_enabled(
        &self,
        account: &str,
        name: &str,
        enabled: bool,
    ) -> Result<bool, StoreError>;
    /// Creates or replaces the targets of a rule, all or none, under the
    /// rule's lock: `None` when the rule does not exist; otherwise how many
    /// targets it has with them, and when that is more than `max_per_rule`
    /// nothing is written.
    async fn put_targets(
        &self,
        account: &str,
        rule: &str,
        targets: &[TargetRecord],
        max_per_rule: usize,
    ) -> Result<Option<usize>, StoreError>;
    async fn remove_target(
        &self,
        account: &str,
        rule: &str,
        target_id: &str,
    ) -> Result<bool, StoreError>;
    async fn list_targets(
        &self,
        account: &str,
        rule: &str,
    ) -> Result<Vec<TargetRecord>, StoreError>;
    async fn record_failed_delivery(
        &self,
        failure: &FailedDeliveryRecord,
    ) -> Result<(), StoreError>;
    /// Removes up to `limit` failed deliveries recorded before `cutoff_ms`.
    /// Returns how many.
    async fn delete_failures_before(&self, cutoff_ms: i64, limit: u32)
    -> Result<usize, StoreError>;
    /// Failed deliveries of a rule after `after_seq`, oldest first.
    async fn list_failed_deliveries(
        &self,
        account: &str,
        rule: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<FailedDeliveryRecord>, StoreError>;
}

const RULE_COLUMNS: &str = "account_id, name, event_pattern, enabled, read_only_events, \
     description, created_by, created_at_ms";
const TARGET_COLUMNS: &str = "account_id, rule_name, target_id, endpoint, signing_secret, \
     max_retries, max_event_age_s";

const UPSERT_RULE: &str = "INSERT INTO rules (account_id, name, event_pattern, enabled, description, \
     created_by, created_at_ms, read_only_events) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (account_id, name) DO UPDATE SET event_pattern = excluded.event_pattern, \
     enabled = excluded.enabled, description = excluded.description, \
     read_only_events = excluded.read_only_events";
const LOCK_RULE_ACCOUNT: &str = "INSERT INTO rule_accounts (account_id) VALUES ($1) \
     ON CONFLICT (account_id) DO UPDATE SET account_id = excluded.account_id";
const COUNT_RULES: &str = "SELECT COUNT(*) FROM rules WHERE account_id = $1";
const COUNT_RULE: &str = "SELECT COUNT(*) FROM rules WHERE account_id = $1 AND name = $2";
const DELETE_RULE: &str = "DELETE FROM rules WHERE account_id = $1 AND name = $2";
const DELETE_RULE_FAILURES: &str =
    "DELETE FROM failed_deliveries WHERE account_id = $1 AND rule_name = $2";
const DELETE_RULE_TARGETS: &str =
    "DELETE FROM rule_targets WHERE account_id = $1 AND rule_name = $2";
const LOCK_RULE: &str = "UPDATE rules SET enabled = enabled WHERE account_id = $1 AND name = $2";
const COUNT_TARGETS: &str =
    "SELECT COUNT(*) FROM rule_targets WHERE account_id = $1 AND rule_name = $2";
const SET_ENABLED: &str = "UPDATE rules SET enabled = $3 WHERE account_id = $1 AND name = $2";
const UPSERT_TARGET: &str = "INSERT INTO rule_targets (account_id, rule_name, target_id, endpoint, \
     signing_secret, max_retries, max_event_age_s) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (account_id, rule_name, target_id) DO UPDATE SET endpoint = excluded.endpoint, \
     signing_secret = excluded.signing_secret, max_retries = excluded.max_retries, \
     max_event_age_s = excluded.max_event_age_s";
const DELETE_TARGET: &str =
    "DELETE FROM rule_targets WHERE account_id = $1 AND rule_name = $2 AND target_id = $3";
/// Only while the target is on its rule, checked under the rule's lock (see
/// `record_failed_delivery`): a failure that comes in as the rule is deleted
/// is not left behind for a new rule of the same name.
const INSERT_FAILURE: &str = "INSERT INTO failed_deliveries (account_id, rule_name, target_id, \
     event_id, attempts, last_error, failed_at_ms) SELECT $1, $2, $3, $4, $5, $6, $7 \
     WHERE EXISTS (SELECT 1 FROM rule_targets WHERE account_id = $1 AND rule_name = $2 \
     AND target_id = $3)";
const DELETE_OLD_FAILURES: &str = "DELETE FROM failed_deliveries WHERE seq IN \
     (SELECT seq FROM failed_deliveries WHERE failed_at_ms < $1 ORDER BY failed_at_ms LIMIT $2)";

fn select_rule() -> String {
    format!("SELECT {RULE_COLUMNS} FROM rules WHERE account_id = $1 AND name = $2")
}

fn select_rules_page() -> String {
    // The prefix is compared with substr, so `%` and `_` in it are literal.
    format!(
        "SELECT {RULE_COLUMNS} FROM rules WHERE account_id = $1 \
         AND substr(name, 1, length($2)) = $2 AND name > $3 ORDER BY name LIMIT $4"
    )
}

fn select_enabled_rules() -> String {
    format!("SELECT {RULE_COLUMNS} FROM rules WHERE enabled = $1 ORDER BY account_id, name")
}

fn select_all_targets() -> String {
    format!("SELECT {TARGET_COLUMNS} FROM rule_targets ORDER BY account_id, rule_name, target_id")
}

fn select_targets() -> String {
    format!(
        "SELECT {TARGET_COLUMNS} FROM rule_targets WHERE account_id = $1 AND rule_name = $2 \
         ORDER BY target_id"
    )
}

const SELECT_FAILURES: &str = "SELECT seq, account_id, rule_name, target_id, event_id, attempts, \
     last_error, failed_at_ms FROM failed_deliveries WHERE account_id = $1 AND rule_name = $2 \
     AND seq > $3 ORDER BY seq LIMIT $4";

macro_rules! sql_rule_store {
    ($store:ident, $row:ty) => {
        impl $store {
            fn rule_from_row(row: &$row) -> Result<RuleRecord, StoreError> {
                let read = StoreError::Database;
                Ok(RuleRecord {
                    account_id: row.try_get("account_id").map_err(read)?,
                    name: row.try_get("name").map_err(read)?,
                    event_pattern: row.try_get("event_pattern").map_err(read)?,
                    enabled: row.try_get("enabled").map_err(read)?,
                    read_only_events: row.try_get("read_only_events").map_err(read)?,
                    description: row.try_get("description").map_err(read)?,
                    created_by: row.try_get("created_by").map_err(read)?,
                    created_at_ms: row.try_get("created_at_ms").map_err(read)?,
                })
            }

            /// Holds the rule's row until the transaction ends; `false` when
            /// there is no such rule.
            async fn lock_rule_in(
                transaction: &mut sqlx::Transaction<'_, <$row as sqlx::Row>::Database>,
                account: &str,
                name: &str,
            ) -> Result<bool, StoreError> {
                let outcome = sqlx::query(LOCK_RULE)
                    .bind(account)
                    .bind(name)
                    .execute(&mut **transaction)
                    .await
                    .map_err(StoreError::Database)?;
                Ok(outcome.rows_affected() > 0)
            }

            async fn targets_in(
                transaction: &mut sqlx::Transaction<'_, <$row as sqlx::Row>::Database>,
                account: &str,
                rule: &str,
            ) -> Result<usize, StoreError> {
                let count: i64 = sqlx::query_scalar(COUNT_TARGETS)
                    .bind(account)
                    .bind(rule)
                    .fetch_one(&mut **transaction)
                    .await
                    .map_err(StoreError::Database)?;
                usize::try_from(count)
                    .map_err(|_| StoreError::Corrupt("negative target count".into()))
            }

            fn target_from_row(row: &$row) -> Result<TargetRecord, StoreError> {
                let read = StoreError::Database;
                Ok(TargetRecord {
                    account_id: row.try_get("account_id").map_err(read)?,
                    rule_name: row.try_get("rule_name").map_err(read)?,
                    target_id: row.try_get("target_id").map_err(read)?,
                    endpoint: row.try_get("endpoint").map_err(read)?,
                    signing_secret: row.try_get("signing_secret").map_err(read)?,
                    max_retries: row.try_get("max_retries").map_err(read)?,
                    max_event_age_s: row.try_get("max_event_age_s").map_err(read)?,
                })
            }
        }

        #[async_trait]
        impl RuleStore for $store {
            async fn put_rule(
                &self,
                rule: &RuleRecord,
                max_per_account: usize,
            ) -> Result<RulePut, StoreError> {
                let mut transaction = self.pool().begin().await.map_err(StoreError::Database)?;
                sqlx::query(LOCK_RULE_ACCOUNT)
                    .bind(&rule.account_id)
                    .execute(&mut *transaction)
                    .await
                    .map_err(StoreError::Database)?;
                let exists: i64 = sqlx::query_scalar(COUNT_RULE)
                    .bind(&rule.account_id)
                    .bind(&rule.name)
                    .fetch_one(&mut *transaction)
                    .await
                    .map_err(StoreError::Database)?;
                if exists == 0 {
                    let rules: i64 = sqlx::query_scalar(COUNT_RULES)
                        .bind(&rule.account_id)
                        .fetch_one(&mut *transaction)
                        .await
                        .map_err(StoreError::Database)?;
                    // Replacing a rule adds none, so only a new one is refused.
                    if usize::try_from(rules).map_or(true, |rules| rules >= max_per_account) {
                        return Ok(RulePut::AccountFull);
                    }
                }
                sqlx::query(UPSERT_RULE)
                    .bind(&rule.account_id)
                    .bind(&rule.name)
                    .bind(&rule.event_pattern)
                    .bind(rule.enabled)
                    .bind(&rule.description)
                    .bind(&rule.created_by)
                    .bind(rule.created_at_ms)
                    .bind(rule.read_only_events)
                    .execute(&mut *transaction)
                    .await
                    .map_err(StoreError::Database)?;
                transaction.commit().await.map_err(StoreError::Database)?;
                Ok(RulePut::Written)
            }

            async fn get_rule(
                &self,
                account: &str,
                name: &str,
            ) -> Result<Option<RuleRecord>, StoreError> {
                let row = sqlx::query(&select_rule())
                    .bind(account)
                    .bind(name)
                    .fetch_optional(self.pool())
                    .await
                    .map_err(StoreError::Database)?;
                row.as_ref().map(Self::rule_from_row).transpose()
            }

            async fn list_rules(
                &self,
                account: &str,
                prefix: &str,
                after: &str,
                limit: u32,
            ) -> Result<Vec<RuleRecord>, StoreError> {
                let rows = sqlx::query(&select_rules_page())
                    .bind(account)
                    .bind(prefix)
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await
                    .map_err(StoreError::Database)?;
                rows.iter().map(Self::rule_from_row).collect()
            }

            async fn enabled_rules(
                &self,
            ) -> Result<Vec<(RuleRecord, Vec<TargetRecord>)>, StoreError> {
                let rules = sqlx::query(&select_enabled_rules())
                    .bind(true)
                    .fetch_all(self.pool())
                    .await
                    .map_err(StoreError::Database)?
                    .iter()
                    .map(Self::rule_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                let targets = sqlx::query(&select_all_targets())
                    .fetch_all(self.pool())
                    .await
                    .map_err(StoreError::Database)?
                    .iter()
                    .map(Self::target_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                // Grouped once, so that a reload (after every rule change)
                // costs rules plus targets, not their product.
                let mut by_rule: std::collections::HashMap<(String, String), Vec<TargetRecord>> =
                    std::collections::HashMap::new();
                for target in targets {
                    by_rule
                        .entry((target.account_id.clone(), target.rule_name.clone()))
                        .or_default()
                        .push(target);
                }
                Ok(rules
                    .into_iter()
                    .map(|rule| {
                        let own = by_rule
                            .remove(&(rule.account_id.clone(), rule.name.clone()))
                            .unwrap_or_default();
                        (rule, own)
                    })
                    .collect())
            }

            async fn delete_rule(
                &self,
                account: &str,
                name: &str,
                with_targets: bool,
            ) -> Result<RuleDeletion, StoreError> {
                let mut transaction = self.pool().begin().await.map_err(StoreError::Database)?;
                if !Self::lock_rule_in(&mut transaction, account, name).await? {
                    return Ok(RuleDeletion::Missing);
                }
                if !with_targets && Self::targets_in(&mut transaction, account, name).await? > 0 {
                    return Ok(RuleDeletion::HasTargets);
                }
                // Its targets and failed deliveries go with it, so a rule
                // made later under the name starts clean.
                for statement in [DELETE_RULE_TARGETS, DELETE_RULE_FAILURES, DELETE_RULE] {
                    sqlx::query(statement)
                        .bind(account)
                        .bind(name)
                        .execute(&mut *transaction)
                        .await
                        .map_err(StoreError::Database)?;
                }
                transaction.commit().await.map_err(StoreError::Database)?;
                Ok(RuleDeletion::Deleted)
            }

            async fn set_rule_enabled(
                &self,
                account: &str,
                name: &str,
                enabled: bool,
            ) -> Result<bool, StoreError> {
                let outcome = sqlx::query(SET_ENABLED)
                    .bind(account)
                    .bind(name)
                    .bind(enabled)
                    .execute(self.pool())
                    .await
                    .map_err(StoreError::Database)?;
                Ok(outcome.rows_affected() > 0)
            }

            async fn put_targets(
                &self,
                account: &str,
                rule: &str,
                targets: &[TargetRecord],
                max_per_rule: usize,
            ) -> Result<Option<usize>, StoreError> {
                let mut transaction = self.pool().begin().await.map_err(StoreError::Database)?;
                if !Self::lock_rule_in(&mut transaction, account, rule).await? {
                    return Ok(None);
                }
                for target in targets {
                    sqlx::query(UPSERT_TARGET)
                        .bind(account)
                        .bind(rule)
                        .bind(&target.target_id)
                        .bind(&target.endpoint)
                        .bind(target.signing_secret.as_slice())
                        .bind(target.max_retries)
                        .bind(target.max_event_age_s)
                        .execute(&mut *transaction)
                        .await
                        .map_err(StoreError::Database)?;
                }
                let count = Self::targets_in(&mut transaction, account, rule).await?;
                if count > max_per_rule {
                    // Dropping the transaction takes them out again.
                    return Ok(Some(count));
                }
                transaction.commit().await.map_err(StoreError::Database)?;
                Ok(Some(count))
            }

            async fn remove_target(
                &self,
                account: &str,
                rule: &str,
                target_id: &str,
            ) -> Result<bool, StoreError> {
                let outcome = sqlx::query(DELETE_TARGET)
                    .bind(account)
                    .bind(rule)
                    .bind(target_id)
                    .execute(self.pool())
                    .await
                    .map_err(StoreError::Database)?;
                Ok(outcome.rows_affected() > 0)
            }

            async fn list_targets(
                &self,
                account: &str,
                rule: &str,
            ) -> Result<Vec<TargetRecord>, StoreError> {
                let rows = sqlx::query(&select_targets())
                    .bind(account)
                    .bind(rule)
                    .fetch_all(self.pool())
                    .await
                    .map_err(StoreError::Database)?;
                rows.iter().map(Self::target_from_row).collect()
            }

            async fn record_failed_delivery(
                &self,
                failure: &FailedDeliveryRecord,
            ) -> Result<(), StoreError> {
                // The rule's lock first: on Postgres the insert's check
                // alone would still see the target a DeleteRule that has
                // not yet committed is removing, and leave its failure
                // behind once it has. Waiting for the lock, it finds the
                // rule gone.
                let mut transaction = self.pool().begin().await.map_err(StoreError::Database)?;
                if !Self::lock_rule_in(&mut transaction, &failure.account_id, &failure.rule_name)
                    .await?
                {
                    return Ok(());
                }
                sqlx::query(INSERT_FAILURE)
                    .bind(&failure.account_id)
                    .bind(&failure.rule_name)
                    .bind(&failure.target_id)
                    .bind(&failure.event_id)
                    .bind(failure.attempts)
                    .bind(&failure.last_error)
                    .bind(failure.failed_at_ms)
                    .execute(&mut *transaction)
                    .await
                    .map_err(StoreError::Database)?;
                transaction.commit().await.map_err(StoreError::Database)
            }

            async fn delete_failures_before(
                &self,
                cutoff_ms: i64,
                limit: u32,
            ) -> Result<usize, StoreError> {
                let outcome = sqlx::query(DELETE_OLD_FAILURES)
                    .bind(cutoff_ms)
                    .bind(i64::from(limit))
                    .execute(self.pool())
                    .await
                    .map_err(StoreError::Database)?;
                Ok(usize::try_from(outcome.rows_affected()).unwrap_or(usize::MAX))
            }

            async fn list_failed_deliveries(
                &self,
                account: &str,
                rule: &str,
                after_seq: i64,
                limit: u32,
            ) -> Result<Vec<FailedDeliveryRecord>, StoreError> {
                let rows = sqlx::query(SELECT_FAILURES)
                    .bind(account)
                    .bind(rule)
                    .bind(after_seq)
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await
                    .map_err(StoreError::Database)?;
                rows.iter()
                    .map(|row| {
                        let read = StoreError::Database;
                        Ok(FailedDeliveryRecord {
                            seq: row.try_get("seq").map_err(read)?,
                            account_id: row.try_get("account_id").map_err(read)?,
                            rule_name: row.try_get("rule_name").map_err(read)?,
                            target_id: row.try_get("target_id").map_err(read)?,
                            event_id: row.try_get("event_id").map_err(read)?,
                            attempts: row.try_get("attempts").map_err(read)?,
                            last_error: row.try_get("last_error").map_err(read)?,
                            failed_at_ms: row.try_get("failed_at_ms").map_err(read)?,
                        })
                    })
                    .collect()
            }
        }
    };
}

sql_rule_store!(PostgresEventStore, sqlx::postgres::PgRow);
sql_rule_store!(SqliteEventStore, sqlx::sqlite::SqliteRow);
