//! The SQL behind [`KeyStore`], written once. Both backends accept `$n`
//! placeholders and the same statements, so one macro body is instantiated
//! for Postgres and for SQLite; only the pool type differs.

use async_trait::async_trait;
use coffer_crypto::MaterialId;
use coffer_platform::arn::AccountId;
use sqlx::Row;

use super::{
    AliasRecord, ConstraintKind, GrantCreation, GrantRecord, KeyCreation, KeyRecord, KeyStore,
    MaterialRecord, StoreError, convert_sqlx_error,
};
use crate::domain::types::{
    KeyId, KeyManager, KeySpec, KeyState, KeyUsage, Origin, RotationType, Tag,
};

const KEY_COLUMNS: &str = "key_id, account_id, description, key_usage, key_spec, origin, key_manager, \
     key_state, multi_region, current_material_id, created_at_ms, deletion_date_ms, version, \
     pending_window_days, rotation_enabled, rotation_period_days, next_rotation_ms, policy";

const LOCK_KEY_ACCOUNT: &str = "INSERT INTO key_accounts (account_id) VALUES ($1) \
     ON CONFLICT (account_id) DO UPDATE SET account_id = excluded.account_id";
const COUNT_KEYS_MANAGED_BY: &str =
    "SELECT COUNT(*) FROM keys WHERE account_id = $1 AND key_manager = $2";
const INSERT_KEY: &str = "INSERT INTO keys (key_id, account_id, description, key_usage, key_spec, origin, \
     key_manager, key_state, multi_region, current_material_id, created_at_ms, deletion_date_ms, updated_at_ms, \
     version, pending_window_days, rotation_enabled, rotation_period_days, next_rotation_ms, policy) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $11, 0, $13, $14, $15, $16, $17)";

const UPDATE_KEY: &str = "UPDATE keys SET description = $3, key_state = $4, deletion_date_ms = $5, \
     pending_window_days = $6, rotation_enabled = $7, rotation_period_days = $8, next_rotation_ms = $9, \
     current_material_id = $10, updated_at_ms = $11, policy = $12, version = version + 1 \
     WHERE key_id = $1 AND version = $2";

const INSERT_MATERIAL: &str = "INSERT INTO key_materials (key_id, material_id, sealed_material, origin, created_at_ms, rotation_type) \
     VALUES ($1, $2, $3, $4, $5, $6)";

const MATERIAL_COLUMNS: &str = "material_id, sealed_material, origin, created_at_ms, rotation_type";

const SELECT_MATERIALS: &str = "SELECT material_id, sealed_material, origin, created_at_ms, rotation_type \
     FROM key_materials WHERE key_id = $1 ORDER BY created_at_ms, material_id";

const DELETE_KEY: &str = "DELETE FROM keys WHERE key_id = $1 AND version = $2 AND key_state = $3";

const UPSERT_TAG: &str = "INSERT INTO key_tags (key_id, tag_key, tag_value) VALUES ($1, $2, $3) \
     ON CONFLICT (key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value";

/// Takes the key's row lock (a write that changes nothing), so that
/// concurrent tag writes to one key run one after another and each counts
/// the other's tags; a key pending deletion is not locked (nor written to).
const LOCK_KEY: &str = "UPDATE keys SET version = version WHERE key_id = $1 AND key_state <> $2";

const COUNT_ALIASES: &str = "SELECT COUNT(*) FROM aliases WHERE target_key_id = $1";

const COUNT_TAGS: &str = "SELECT COUNT(*) FROM key_tags WHERE key_id = $1";

const DELETE_TAG: &str = "DELETE FROM key_tags WHERE key_id = $1 AND tag_key = $2";

const ALIAS_COLUMNS: &str = "account_id, alias_name, target_key_id, created_at_ms, updated_at_ms";

const INSERT_ALIAS: &str = "INSERT INTO aliases (account_id, alias_name, target_key_id, created_at_ms, updated_at_ms) \
     VALUES ($1, $2, $3, $4, $5)";

const UPDATE_ALIAS: &str = "UPDATE aliases SET target_key_id = $4, updated_at_ms = $5 \
     WHERE account_id = $1 AND alias_name = $2 AND target_key_id = $3";

const DELETE_ALIAS: &str =
    "DELETE FROM aliases WHERE account_id = $1 AND alias_name = $2 AND target_key_id = $3";

const GRANT_COLUMNS: &str = "grant_id, key_id, key_account, name, grantee_principal, retiring_principal, issuing_account, \
     operations, constraint_kind, constraint_context, token_secret, created_at_ms";

const INSERT_GRANT: &str = "INSERT INTO grants (grant_id, key_id, key_account, name, grantee_principal, \
     retiring_principal, issuing_account, operations, constraint_kind, constraint_context, token_secret, created_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

const DELETE_GRANT: &str = "DELETE FROM grants WHERE grant_id = $1";

const COUNT_GRANTS: &str = "SELECT COUNT(*) FROM grants WHERE key_id = $1";

fn select_grant() -> String {
    format!("SELECT {GRANT_COLUMNS} FROM grants WHERE grant_id = $1")
}

/// Grants that could be the same request again: by key and grantee, which
/// `grants_by_key_grantee` finds, then by name.
fn select_named_grants() -> String {
    format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE key_id = $1 AND grantee_principal = $2 AND name = $3"
    )
}

fn select_grants_page() -> String {
    format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE key_id = $1 AND grant_id > $2 ORDER BY grant_id LIMIT $3"
    )
}

fn select_grantee_grants() -> String {
    format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE key_id = $1 AND grantee_principal IN ($2, $3) \
         ORDER BY grant_id"
    )
}

fn select_retirable_grants_page() -> String {
    format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE retiring_principal = $1 AND grant_id > $2 \
         ORDER BY grant_id LIMIT $3"
    )
}

fn select_key_in_any_account() -> String {
    format!("SELECT {KEY_COLUMNS} FROM keys WHERE key_id = $1")
}

const INSERT_TAG: &str = "INSERT INTO key_tags (key_id, tag_key, tag_value) VALUES ($1, $2, $3)";

fn select_material() -> String {
    format!("SELECT {MATERIAL_COLUMNS} FROM key_materials WHERE key_id = $1 AND material_id = $2")
}

fn select_due_for_deletion() -> String {
    format!(
        "SELECT {KEY_COLUMNS} FROM keys WHERE key_state = 'PendingDeletion' AND deletion_date_ms <= $1 \
         ORDER BY deletion_date_ms LIMIT $2"
    )
}

fn select_due_for_rotation() -> String {
    format!(
        "SELECT {KEY_COLUMNS} FROM keys WHERE key_state = 'Enabled' AND rotation_enabled = $3 \
         AND next_rotation_ms <= $1 ORDER BY next_rotation_ms LIMIT $2"
    )
}

fn select_alias() -> String {
    format!("SELECT {ALIAS_COLUMNS} FROM aliases WHERE account_id = $1 AND alias_name = $2")
}

fn select_aliases_page() -> String {
    format!(
        "SELECT {ALIAS_COLUMNS} FROM aliases WHERE account_id = $1 AND alias_name > $2 \
         ORDER BY alias_name LIMIT $3"
    )
}

fn select_key_aliases_page() -> String {
    format!(
        "SELECT {ALIAS_COLUMNS} FROM aliases WHERE account_id = $1 AND alias_name > $2 AND target_key_id = $4 \
         ORDER BY alias_name LIMIT $3"
    )
}

const SELECT_TAG_KEYS: &str = "SELECT tag_key FROM key_tags WHERE key_id = $1";

const SELECT_TAGS: &str =
    "SELECT tag_key, tag_value FROM key_tags WHERE key_id = $1 ORDER BY tag_key";

fn select_key() -> String {
    format!("SELECT {KEY_COLUMNS} FROM keys WHERE account_id = $1 AND key_id = $2")
}

fn select_keys_page() -> String {
    format!(
        "SELECT {KEY_COLUMNS} FROM keys WHERE account_id = $1 AND key_id > $2 ORDER BY key_id LIMIT $3"
    )
}

fn corrupt(column: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("column {column} holds {value:?}"))
}

fn parse_column<T>(
    column: &str,
    value: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(value).ok_or_else(|| corrupt(column, value))
}

/// Column values of one `keys` row, read the same way on both backends.
struct KeyColumns {
    key_id: String,
    account_id: String,
    description: String,
    key_usage: String,
    key_spec: String,
    origin: String,
    key_manager: String,
    key_state: String,
    multi_region: bool,
    current_material_id: Option<String>,
    created_at_ms: i64,
    deletion_date_ms: Option<i64>,
    version: i64,
    pending_window_days: Option<i32>,
    rotation_enabled: bool,
    rotation_period_days: Option<i32>,
    next_rotation_ms: Option<i64>,
    policy: String,
}

/// Column values of one `grants` row.
struct GrantColumns {
    grant_id: String,
    key_id: String,
    key_account: String,
    name: String,
    grantee_principal: String,
    retiring_principal: Option<String>,
    issuing_account: String,
    operations: String,
    constraint_kind: Option<String>,
    constraint_context: Option<String>,
    token_secret: String,
    created_at_ms: i64,
}

impl GrantColumns {
    fn into_record(self) -> Result<GrantRecord, StoreError> {
        let constraint = match (self.constraint_kind, self.constraint_context) {
            (None, None) => None,
            (Some(kind), Some(context)) => {
                let kind = parse_column("constraint_kind", &kind, ConstraintKind::parse)?;
                let pairs: std::collections::BTreeMap<String, String> =
                    serde_json::from_str(&context)
                        .map_err(|_| corrupt("constraint_context", "(not a JSON object)"))?;
                Some((kind, pairs.into_iter().collect()))
            }
            _ => return Err(corrupt("constraint_kind", "(without its context)")),
        };
        Ok(GrantRecord {
            grant_id: self.grant_id,
            key_id: parse_column("key_id", &self.key_id, KeyId::parse)?,
            key_account: parse_column("key_account", &self.key_account, AccountId::parse)?,
            name: self.name,
            grantee_principal: self.grantee_principal,
            retiring_principal: self.retiring_principal,
            issuing_account: parse_column(
                "issuing_account",
                &self.issuing_account,
                AccountId::parse,
            )?,
            operations: self
                .operations
                .split(',')
                .filter(|operation| !operation.is_empty())
                .map(str::to_owned)
                .collect(),
            constraint,
            token_secret: self.token_secret,
            created_at_ms: self.created_at_ms,
        })
    }
}

/// The stored form of a grant's constraint context: a JSON object.
fn constraint_context_json(pairs: &[(String, String)]) -> String {
    let map: std::collections::BTreeMap<&str, &str> = pairs
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_owned())
}

/// Column values of one `key_materials` row.
struct MaterialColumns {
    material_id: String,
    sealed_material: Vec<u8>,
    origin: String,
    created_at_ms: i64,
    rotation_type: Option<String>,
}

impl MaterialColumns {
    fn into_record(self) -> Result<MaterialRecord, StoreError> {
        Ok(MaterialRecord {
            material_id: parse_column("material_id", &self.material_id, MaterialId::from_hex)?,
            sealed_material: self.sealed_material,
            origin: parse_column("origin", &self.origin, Origin::parse)?,
            created_at_ms: self.created_at_ms,
            rotation_type: self
                .rotation_type
                .map(|text| parse_column("rotation_type", &text, RotationType::parse))
                .transpose()?,
        })
    }
}

/// Column values of one `aliases` row.
struct AliasColumns {
    account_id: String,
    alias_name: String,
    target_key_id: String,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl AliasColumns {
    fn into_record(self) -> Result<AliasRecord, StoreError> {
        Ok(AliasRecord {
            account: parse_column("account_id", &self.account_id, AccountId::parse)?,
            alias_name: self.alias_name,
            target_key_id: parse_column("target_key_id", &self.target_key_id, KeyId::parse)?,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        })
    }
}

impl KeyColumns {
    fn into_record(self) -> Result<KeyRecord, StoreError> {
        Ok(KeyRecord {
            key_id: parse_column("key_id", &self.key_id, KeyId::parse)?,
            account: parse_column("account_id", &self.account_id, AccountId::parse)?,
            description: self.description,
            key_usage: parse_column("key_usage", &self.key_usage, KeyUsage::parse)?,
            key_spec: parse_column("key_spec", &self.key_spec, KeySpec::parse)?,
            origin: parse_column("origin", &self.origin, Origin::parse)?,
            key_manager: parse_column("key_manager", &self.key_manager, KeyManager::parse)?,
            key_state: parse_column("key_state", &self.key_state, KeyState::parse)?,
            multi_region: self.multi_region,
            current_material_id: self
                .current_material_id
                .map(|text| parse_column("current_material_id", &text, MaterialId::from_hex))
                .transpose()?,
            created_at_ms: self.created_at_ms,
            deletion_date_ms: self.deletion_date_ms,
            version: self.version,
            pending_window_days: self.pending_window_days,
            rotation_enabled: self.rotation_enabled,
            rotation_period_days: self.rotation_period_days,
            next_rotation_ms: self.next_rotation_ms,
            policy: self.policy,
        })
    }
}

macro_rules! sql_key_store {
    ($store:ident, $pool:ty, $row:ty) => {
        /// [`KeyStore`] on this backend.
        #[derive(Debug, Clone)]
        pub struct $store {
            pool: $pool,
        }

        impl $store {
            pub fn new(pool: $pool) -> Self {
                Self { pool }
            }

            fn key_from_row(row: &$row) -> Result<KeyRecord, StoreError> {
                let get = |column: &str| row.try_get(column).map_err(convert_sqlx_error);
                let get_i64 =
                    |column: &str| row.try_get::<i64, _>(column).map_err(convert_sqlx_error);
                let get_optional_i64 = |column: &str| {
                    row.try_get::<Option<i64>, _>(column)
                        .map_err(convert_sqlx_error)
                };
                let get_optional_i32 = |column: &str| {
                    row.try_get::<Option<i32>, _>(column)
                        .map_err(convert_sqlx_error)
                };
                let get_bool =
                    |column: &str| row.try_get::<bool, _>(column).map_err(convert_sqlx_error);
                KeyColumns {
                    key_id: get("key_id")?,
                    account_id: get("account_id")?,
                    description: get("description")?,
                    key_usage: get("key_usage")?,
                    key_spec: get("key_spec")?,
                    origin: get("origin")?,
                    key_manager: get("key_manager")?,
                    key_state: get("key_state")?,
                    multi_region: get_bool("multi_region")?,
                    current_material_id: row
                        .try_get("current_material_id")
                        .map_err(convert_sqlx_error)?,
                    created_at_ms: get_i64("created_at_ms")?,
                    deletion_date_ms: get_optional_i64("deletion_date_ms")?,
                    version: get_i64("version")?,
                    pending_window_days: get_optional_i32("pending_window_days")?,
                    rotation_enabled: get_bool("rotation_enabled")?,
                    rotation_period_days: get_optional_i32("rotation_period_days")?,
                    next_rotation_ms: get_optional_i64("next_rotation_ms")?,
                    policy: get("policy")?,
                }
                .into_record()
            }

            fn grant_from_row(row: &$row) -> Result<GrantRecord, StoreError> {
                GrantColumns {
                    grant_id: row.try_get("grant_id").map_err(convert_sqlx_error)?,
                    key_id: row.try_get("key_id").map_err(convert_sqlx_error)?,
                    key_account: row.try_get("key_account").map_err(convert_sqlx_error)?,
                    name: row.try_get("name").map_err(convert_sqlx_error)?,
                    grantee_principal: row
                        .try_get("grantee_principal")
                        .map_err(convert_sqlx_error)?,
                    retiring_principal: row
                        .try_get("retiring_principal")
                        .map_err(convert_sqlx_error)?,
                    issuing_account: row.try_get("issuing_account").map_err(convert_sqlx_error)?,
                    operations: row.try_get("operations").map_err(convert_sqlx_error)?,
                    constraint_kind: row.try_get("constraint_kind").map_err(convert_sqlx_error)?,
                    constraint_context: row
                        .try_get("constraint_context")
                        .map_err(convert_sqlx_error)?,
                    token_secret: row.try_get("token_secret").map_err(convert_sqlx_error)?,
                    created_at_ms: row.try_get("created_at_ms").map_err(convert_sqlx_error)?,
                }
                .into_record()
            }

            fn material_from_row(row: &$row) -> Result<MaterialRecord, StoreError> {
                MaterialColumns {
                    material_id: row.try_get("material_id").map_err(convert_sqlx_error)?,
                    sealed_material: row.try_get("sealed_material").map_err(convert_sqlx_error)?,
                    origin: row.try_get("origin").map_err(convert_sqlx_error)?,
                    created_at_ms: row.try_get("created_at_ms").map_err(convert_sqlx_error)?,
                    rotation_type: row.try_get("rotation_type").map_err(convert_sqlx_error)?,
                }
                .into_record()
            }

            fn alias_from_row(row: &$row) -> Result<AliasRecord, StoreError> {
                AliasColumns {
                    account_id: row.try_get("account_id").map_err(convert_sqlx_error)?,
                    alias_name: row.try_get("alias_name").map_err(convert_sqlx_error)?,
                    target_key_id: row.try_get("target_key_id").map_err(convert_sqlx_error)?,
                    created_at_ms: row.try_get("created_at_ms").map_err(convert_sqlx_error)?,
                    updated_at_ms: row.try_get("updated_at_ms").map_err(convert_sqlx_error)?,
                }
                .into_record()
            }

            async fn update_in<'c, E>(
                executor: E,
                key: &KeyRecord,
                now_ms: i64,
            ) -> Result<i64, StoreError>
            where
                E: sqlx::Executor<'c, Database = <$pool as PoolDatabase>::Database>,
            {
                let outcome = sqlx::query(UPDATE_KEY)
                    .bind(key.key_id.as_str())
                    .bind(key.version)
                    .bind(&key.description)
                    .bind(key.key_state.as_str())
                    .bind(key.deletion_date_ms)
                    .bind(key.pending_window_days)
                    .bind(key.rotation_enabled)
                    .bind(key.rotation_period_days)
                    .bind(key.next_rotation_ms)
                    .bind(key.current_material_id.map(|id| id.to_hex()))
                    .bind(now_ms)
                    .bind(&key.policy)
                    .execute(executor)
                    .await
                    .map_err(convert_sqlx_error)?;
                if outcome.rows_affected() == 1 {
                    Ok(key.version + 1)
                } else {
                    Err(StoreError::Conflict)
                }
            }

            /// Inserts the current call's audit outbox row (`required` mode)
            /// into the transaction about to commit a change.
            async fn outbox_in<'c, E>(executor: E) -> Result<(), StoreError>
            where
                E: sqlx::Executor<'c, Database = <$pool as PoolDatabase>::Database>,
            {
                let Some(row) = coffer_platform::audit::outbox::pending_row() else {
                    return Ok(());
                };
                sqlx::query(coffer_platform::audit::outbox::INSERT_ROW)
                    .bind(row.event_id)
                    .bind(row.boot_id)
                    .bind(row.created_at_ms)
                    .bind(row.record)
                    .execute(executor)
                    .await
                    .map_err(convert_sqlx_error)?;
                Ok(())
            }

            /// Holds the key's row until the transaction ends, so that
            /// counts of what belongs to it (tags, aliases) cannot race.
            /// Inserts a key with its first material version and tags.
            async fn insert_key_in(
                transaction: &mut sqlx::Transaction<'_, <$pool as PoolDatabase>::Database>,
                key: &KeyRecord,
                material: &MaterialRecord,
                tags: &[Tag],
            ) -> Result<(), StoreError> {
                sqlx::query(INSERT_KEY)
                    .bind(key.key_id.as_str())
                    .bind(key.account.as_str())
                    .bind(&key.description)
                    .bind(key.key_usage.as_str())
                    .bind(key.key_spec.as_str())
                    .bind(key.origin.as_str())
                    .bind(key.key_manager.as_str())
                    .bind(key.key_state.as_str())
                    .bind(key.multi_region)
                    .bind(key.current_material_id.map(|id| id.to_hex()))
                    .bind(key.created_at_ms)
                    .bind(key.deletion_date_ms)
                    .bind(key.pending_window_days)
                    .bind(key.rotation_enabled)
                    .bind(key.rotation_period_days)
                    .bind(key.next_rotation_ms)
                    .bind(&key.policy)
                    .execute(&mut **transaction)
                    .await
                    .map_err(convert_sqlx_error)?;
                Self::insert_material_in(&mut **transaction, &key.key_id, material).await?;
                for tag in tags {
                    sqlx::query(INSERT_TAG)
                        .bind(key.key_id.as_str())
                        .bind(&tag.key)
                        .bind(&tag.value)
                        .execute(&mut **transaction)
                        .await
                        .map_err(convert_sqlx_error)?;
                }
                Ok(())
            }

            async fn lock_key_in(
                transaction: &mut sqlx::Transaction<'_, <$pool as PoolDatabase>::Database>,
                key_id: &KeyId,
            ) -> Result<(), StoreError> {
                let locked = sqlx::query(LOCK_KEY)
                    .bind(key_id.as_str())
                    .bind(KeyState::PendingDeletion.as_str())
                    .execute(&mut **transaction)
                    .await
                    .map_err(convert_sqlx_error)?;
                if locked.rows_affected() == 0 {
                    return Err(StoreError::PendingDeletion);
                }
                Ok(())
            }

            /// What one of the key's `COUNT_*` statements counts, in the
            /// transaction (with what it wrote).
            async fn count_in(
                transaction: &mut sqlx::Transaction<'_, <$pool as PoolDatabase>::Database>,
                statement: &str,
                key_id: &KeyId,
            ) -> Result<usize, StoreError> {
                let count: i64 = sqlx::query_scalar(statement)
                    .bind(key_id.as_str())
                    .fetch_one(&mut **transaction)
                    .await
                    .map_err(convert_sqlx_error)?;
                usize::try_from(count).map_err(|_| StoreError::Corrupt("negative count".into()))
            }

            async fn insert_material_in<'c, E>(
                executor: E,
                key_id: &KeyId,
                material: &MaterialRecord,
            ) -> Result<(), StoreError>
            where
                E: sqlx::Executor<'c, Database = <$pool as PoolDatabase>::Database>,
            {
                sqlx::query(INSERT_MATERIAL)
                    .bind(key_id.as_str())
                    .bind(material.material_id.to_hex())
                    .bind(material.sealed_material.as_slice())
                    .bind(material.origin.as_str())
                    .bind(material.created_at_ms)
                    .bind(material.rotation_type.map(RotationType::as_str))
                    .execute(executor)
                    .await
                    .map_err(convert_sqlx_error)?;
                Ok(())
            }
        }

        #[async_trait]
        impl KeyStore for $store {
            async fn create_key(
                &self,
                key: &KeyRecord,
                material: &MaterialRecord,
                tags: &[Tag],
                max_customer_keys: u64,
            ) -> Result<KeyCreation, StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
                if key.key_manager == KeyManager::Customer {
                    sqlx::query(LOCK_KEY_ACCOUNT)
                        .bind(key.account.as_str())
                        .execute(&mut *transaction)
                        .await
                        .map_err(convert_sqlx_error)?;
                    let keys: i64 = sqlx::query_scalar(COUNT_KEYS_MANAGED_BY)
                        .bind(key.account.as_str())
                        .bind(KeyManager::Customer.as_str())
                        .fetch_one(&mut *transaction)
                        .await
                        .map_err(convert_sqlx_error)?;
                    if u64::try_from(keys).map_or(true, |keys| keys >= max_customer_keys) {
                        return Ok(KeyCreation::OverQuota);
                    }
                }
                Self::insert_key_in(&mut transaction, key, material, tags).await?;
                Self::outbox_in(&mut *transaction).await?;
                transaction.commit().await.map_err(convert_sqlx_error)?;
                Ok(KeyCreation::Created)
            }

            async fn count_customer_keys(&self, account: &AccountId) -> Result<u64, StoreError> {
                let keys: i64 = sqlx::query_scalar(COUNT_KEYS_MANAGED_BY)
                    .bind(account.as_str())
                    .bind(KeyManager::Customer.as_str())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                Ok(u64::try_from(keys).unwrap_or(0))
            }

            async fn create_service_managed_key(
                &self,
                key: &KeyRecord,
                material: &MaterialRecord,
                alias: &AliasRecord,
            ) -> Result<bool, StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
                Self::insert_key_in(&mut transaction, key, material, &[]).await?;
                let named = sqlx::query(INSERT_ALIAS)
                    .bind(alias.account.as_str())
                    .bind(&alias.alias_name)
                    .bind(alias.target_key_id.as_str())
                    .bind(alias.created_at_ms)
                    .bind(alias.updated_at_ms)
                    .execute(&mut *transaction)
                    .await
                    .map_err(convert_sqlx_error);
                match named {
                    // Dropping the transaction takes the key out again.
                    Err(StoreError::Conflict) => return Ok(false),
                    other => {
                        other?;
                    }
                }
                Self::outbox_in(&mut *transaction).await?;
                transaction.commit().await.map_err(convert_sqlx_error)?;
                Ok(true)
            }

            async fn get_key(
                &self,
                account: &AccountId,
                key_id: &KeyId,
            ) -> Result<Option<KeyRecord>, StoreError> {
                let row = sqlx::query(&select_key())
                    .bind(account.as_str())
                    .bind(key_id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                row.as_ref().map(Self::key_from_row).transpose()
            }

            async fn get_material(
                &self,
                key_id: &KeyId,
                material_id: &MaterialId,
            ) -> Result<Option<MaterialRecord>, StoreError> {
                let row = sqlx::query(&select_material())
                    .bind(key_id.as_str())
                    .bind(material_id.to_hex())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                row.as_ref().map(Self::material_from_row).transpose()
            }

            async fn list_keys(
                &self,
                account: &AccountId,
                after: Option<&KeyId>,
                limit: u32,
            ) -> Result<Vec<KeyRecord>, StoreError> {
                let rows = sqlx::query(&select_keys_page())
                    .bind(account.as_str())
                    .bind(after.map_or("", KeyId::as_str))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                rows.iter().map(Self::key_from_row).collect()
            }

            async fn list_tags(&self, key_id: &KeyId) -> Result<Vec<Tag>, StoreError> {
                let rows = sqlx::query(SELECT_TAGS)
                    .bind(key_id.as_str())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                rows.iter()
                    .map(|row| {
                        Ok(Tag {
                            key: row.try_get("tag_key").map_err(convert_sqlx_error)?,
                            value: row.try_get("tag_value").map_err(convert_sqlx_error)?,
                        })
                    })
                    .collect()
            }

            async fn update_key(&self, key: &KeyRecord, now_ms: i64) -> Result<i64, StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
                let version = Self::update_in(&mut *transaction, key, now_ms).await?;
                Self::outbox_in(&mut *transaction).await?;
                transaction.commit().await.map_err(convert_sqlx_error)?;
                Ok(version)
            }

            async fn add_material(
                &self,
                key: &KeyRecord,
                material: &MaterialRecord,
            ) -> Result<i64, StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
                let version =
                    Self::update_in(&mut *transaction, key, material.created_at_ms).await?;
                Self::insert_material_in(&mut *transaction, &key.key_id, material).await?;
                Self::outbox_in(&mut *transaction).await?;
                transaction.commit().await.map_err(convert_sqlx_error)?;
                Ok(version)
            }

            async fn list_materials(
                &self,
                key_id: &KeyId,
            ) -> Result<Vec<MaterialRecord>, StoreError> {
                let rows = sqlx::query(SELECT_MATERIALS)
                    .bind(key_id.as_str())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                rows.iter().map(Self::material_from_row).collect()
            }

            async fn delete_key(&self, key: &KeyRecord) -> Result<bool, StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
                let outcome = sqlx::query(DELETE_KEY)
                    .bind(key.key_id.as_str())
                    .bind(key.version)
                    .bind(KeyState::PendingDeletion.as_str())
                    .execute(&mut *transaction)
                    .await
                    .map_err(convert_sqlx_error)?;
                if outcome.rows_affected() == 0 {
                    return Ok(false);
                }
                Self::outbox_in(&mut *transaction).await?;
                transaction.commit().await.map_err(convert_sqlx_error)?;
                Ok(true)
            }

            async fn keys_due_for_deletion(
                &self,
                now_ms: i64,
                limit: u32,
            ) -> Result<Vec<KeyRecord>, StoreError> {
                let rows = sqlx::query(&select_due_for_deletion())
                    .bind(now_ms)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                rows.iter().map(Self::key_from_row).collect()
            }

            async fn keys_due_for_rotation(
                &self,
                now_ms: i64,
                limit: u32,
            ) -> Result<Vec<KeyRecord>, StoreError> {
                let rows = sqlx::query(&select_due_for_rotation())
                    .bind(now_ms)
                    .bind(i64::from(limit))
                    .bind(true)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                rows.iter().map(Self::key_from_row).collect()
            }

            async fn put_tags(
                &self,
                key_id: &KeyId,
                tags: &[Tag],
                max_tags: usize,
            ) -> Result<usize, StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
                Self::lock_key_in(&mut transaction, key_id).await?;
                for tag in tags {
                    sqlx::query(UPSERT_TAG)
                        .bind(key_id.as_str())
                        .bind(&tag.key)
                        .bind(&tag.value)
                        .execute(&mut *transaction)
                        .await
                        .map_err(convert_sqlx_error)?;
                }
                let count = Self::count_in(&mut transaction, COUNT_TAGS, key_id).await?;
                if count > max_tags {
                    // Dropping the transaction rolls the tags back.
                    return Ok(count);
                }
                Self::outbox_in(&mut *transaction).await?;
                transaction.commit().await.map_err(convert_sqlx_error)?;
                Ok(count)
            }

            async fn delete_tags(
                &self,
                key_id: &KeyId,
                tag_keys: &[String],
            ) -> Result<(), StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
                Self::lock_key_in(&mut transaction, key_id).await?;
                // Only what the key holds (50 tags at most) is deleted, one
                // statement each, however many names the request lists.
                let held: Vec<String> = sqlx::query_scalar(SELECT_TAG_KEYS)
                    .bind(key_id.as_str())
                    .fetch_all(&mut *transaction)
                    .await
                    .map_err(convert_sqlx_error)?;
                let asked: std::collections::HashSet<&str> =
                    tag_keys.iter().map(String::as_str).collect();
                for tag_key in held.iter().filter(|held| asked.contains(held.as_str())) {
                    sqlx::query(DELETE_TAG)
                        .bind(key_id.as_str())
                        .bind(tag_key)
                        .execute(&mut *transaction)
                        .await
                        .map_err(convert_sqlx_error)?;
                }
                Self::outbox_in(&mut *transaction).await?;
                transaction.commit().await.map_err(convert_sqlx_error)
            }

            async fn create_alias(
                &self,
                alias: &AliasRecord,
                max_per_key: usize,
            ) -> Result<usize, StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
                Self::lock_key_in(&mut transaction, &alias.target_key_id).await?;
                sqlx::query(INSERT_ALIAS)
                    .bind(alias.account.as_str())
                    .bind(&alias.alias_name)
                    .bind(alias.target_key_id.as_str())
                    .bind(alias.created_at_ms)
                    .bind(alias.updated_at_ms)
                    .execute(&mut *transaction)
                    .await
                    .map_err(convert_sqlx_error)?;
                let count =
                    Self::count_in(&mut transaction, COUNT_ALIASES, &alias.target_key_id).await?;
                if count > max_per_key {
                    // Dropping the transaction takes the alias out again.
                    return Ok(count);
                }
                Self::outbox_in(&mut *transaction).await?;
                transaction.commit().await.map_err(convert_sqlx_error)?;
                Ok(count)
            }

            async fn update_alias(
                &self,
                account: &AccountId,
                alias_name: &str,
                from: &KeyId,
                to: &KeyId,
                now_ms: i64,
                max_per_key: usize,
            ) -> Result<Option<usize>, StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
                Self::lock_key_in(&mut transaction, to).await?;
                let outcome = sqlx::query(UPDATE_ALIAS)
                    .bind(account.as_str())
                    .bind(alias_name)
                    .bind(from.as_str())
                    .bind(to.as_str())
                    .bind(now_ms)
                    .execute(&mut *transaction)
                    .await
                    .map_err(convert_sqlx_error)?;
                if outcome.rows_affected() == 0 {
                    return Ok(None);
                }
                let count = Self::count_in(&mut transaction, COUNT_ALIASES, to).await?;
                if count > max_per_key {
                    return Ok(Some(count));
                }
                Self::outbox_in(&mut *transaction).await?;
                transaction.commit().await.map_err(convert_sqlx_error)?;
                Ok(Some(count))
            }

            async fn delete_alias(
                &self,
                account: &AccountId,
                alias_name: &str,
                target: &KeyId,
            ) -> Result<bool, StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
                let outcome = sqlx::query(DELETE_ALIAS)
                    .bind(account.as_str())
                    .bind(alias_name)
                    .bind(target.as_str())
                    .execute(&mut *transaction)
                    .await
                    .map_err(convert_sqlx_error)?;
                if outcome.rows_affected() == 0 {
                    return Ok(false);
                }
                Self::outbox_in(&mut *transaction).await?;
                transaction.commit().await.map_err(convert_sqlx_error)?;
                Ok(true)
            }

            async fn get_alias(
                &self,
                account: &AccountId,
                alias_name: &str,
            ) -> Result<Option<AliasRecord>, StoreError> {
                let row = sqlx::query(&select_alias())
                    .bind(account.as_str())
                    .bind(alias_name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                row.as_ref().map(Self::alias_from_row).transpose()
            }

            async fn find_key(&self, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
                let row = sqlx::query(&select_key_in_any_account())
                    .bind(key_id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                row.as_ref().map(Self::key_from_row).transpose()
            }

            async fn create_grant(
                &self,
                grant: &GrantRecord,
                max_per_key: Option<u64>,
            ) -> Result<GrantCreation, StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
                Self::lock_key_in(&mut transaction, &grant.key_id).await?;
                if !grant.name.is_empty() {
                    let rows = sqlx::query(&select_named_grants())
                        .bind(grant.key_id.as_str())
                        .bind(&grant.grantee_principal)
                        .bind(&grant.name)
                        .fetch_all(&mut *transaction)
                        .await
                        .map_err(convert_sqlx_error)?;
                    for row in &rows {
                        let existing = Self::grant_from_row(row)?;
                        if existing.same_request_as(grant) {
                            return Ok(GrantCreation::Existing(Box::new(existing)));
                        }
                    }
                }
                sqlx::query(INSERT_GRANT)
                    .bind(&grant.grant_id)
                    .bind(grant.key_id.as_str())
                    .bind(grant.key_account.as_str())
                    .bind(&grant.name)
                    .bind(&grant.grantee_principal)
                    .bind(grant.retiring_principal.as_deref())
                    .bind(grant.issuing_account.as_str())
                    .bind(grant.operations.join(","))
                    .bind(grant.constraint.as_ref().map(|(kind, _)| kind.as_str()))
                    .bind(
                        grant
                            .constraint
                            .as_ref()
                            .map(|(_, pairs)| constraint_context_json(pairs)),
                    )
                    .bind(&grant.token_secret)
                    .bind(grant.created_at_ms)
                    .execute(&mut *transaction)
                    .await
                    .map_err(convert_sqlx_error)?;
                // Counted with the new grant in, under the key's lock, as
                // tags are: dropping the transaction takes it out again.
                if let Some(max_per_key) = max_per_key {
                    let on_key: i64 = sqlx::query_scalar(COUNT_GRANTS)
                        .bind(grant.key_id.as_str())
                        .fetch_one(&mut *transaction)
                        .await
                        .map_err(convert_sqlx_error)?;
                    if u64::try_from(on_key).unwrap_or(0) > max_per_key {
                        return Ok(GrantCreation::OverQuota);
                    }
                }
                Self::outbox_in(&mut *transaction).await?;
                transaction.commit().await.map_err(convert_sqlx_error)?;
                Ok(GrantCreation::Created)
            }

            async fn get_grant(&self, grant_id: &str) -> Result<Option<GrantRecord>, StoreError> {
                let row = sqlx::query(&select_grant())
                    .bind(grant_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                row.as_ref().map(Self::grant_from_row).transpose()
            }

            async fn list_grants(
                &self,
                key_id: &KeyId,
                after: Option<&str>,
                limit: u32,
            ) -> Result<Vec<GrantRecord>, StoreError> {
                let rows = sqlx::query(&select_grants_page())
                    .bind(key_id.as_str())
                    .bind(after.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                rows.iter().map(Self::grant_from_row).collect()
            }

            async fn grants_for_grantees(
                &self,
                key_id: &KeyId,
                grantees: &[&str],
            ) -> Result<Vec<GrantRecord>, StoreError> {
                let (first, second) = match grantees {
                    [] => return Ok(Vec::new()),
                    [one] => (*one, *one),
                    [one, two] => (*one, *two),
                    _ => {
                        return Err(StoreError::Corrupt(
                            "grants are looked up for at most two grantees".into(),
                        ));
                    }
                };
                let rows = sqlx::query(&select_grantee_grants())
                    .bind(key_id.as_str())
                    .bind(first)
                    .bind(second)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                rows.iter().map(Self::grant_from_row).collect()
            }

            async fn list_retirable_grants(
                &self,
                retiring_principal: &str,
                after: Option<&str>,
                limit: u32,
            ) -> Result<Vec<GrantRecord>, StoreError> {
                let rows = sqlx::query(&select_retirable_grants_page())
                    .bind(retiring_principal)
                    .bind(after.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                rows.iter().map(Self::grant_from_row).collect()
            }

            async fn delete_grant(&self, grant_id: &str) -> Result<bool, StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
                let outcome = sqlx::query(DELETE_GRANT)
                    .bind(grant_id)
                    .execute(&mut *transaction)
                    .await
                    .map_err(convert_sqlx_error)?;
                if outcome.rows_affected() == 0 {
                    return Ok(false);
                }
                Self::outbox_in(&mut *transaction).await?;
                transaction.commit().await.map_err(convert_sqlx_error)?;
                Ok(true)
            }

            async fn list_aliases(
                &self,
                account: &AccountId,
                target: Option<&KeyId>,
                after: Option<&str>,
                limit: u32,
            ) -> Result<Vec<AliasRecord>, StoreError> {
                let query_text = if target.is_some() {
                    select_key_aliases_page()
                } else {
                    select_aliases_page()
                };
                let mut query = sqlx::query(&query_text)
                    .bind(account.as_str())
                    .bind(after.unwrap_or(""))
                    .bind(i64::from(limit));
                if let Some(target) = target {
                    query = query.bind(target.as_str());
                }
                let rows = query
                    .fetch_all(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                rows.iter().map(Self::alias_from_row).collect()
            }
        }
    };
}

/// The database type behind a pool type, for the executor bounds above.
trait PoolDatabase {
    type Database: sqlx::Database;
}

impl<DB: sqlx::Database> PoolDatabase for sqlx::Pool<DB> {
    type Database = DB;
}

sql_key_store!(PostgresKeyStore, sqlx::PgPool, sqlx::postgres::PgRow);
sql_key_store!(SqliteKeyStore, sqlx::SqlitePool, sqlx::sqlite::SqliteRow);
