//! The SQL behind [`KeyStore`], written once. Both backends accept `$n`
//! placeholders and the same statements, so one macro body is instantiated
//! for Postgres and for SQLite; only the pool type differs.

use async_trait::async_trait;
use coffer_crypto::MaterialId;
use coffer_platform::arn::AccountId;
use sqlx::Row;

use super::{KeyRecord, KeyStore, MaterialRecord, StoreError, convert_sqlx_error};
use crate::domain::types::{KeyId, KeyManager, KeySpec, KeyState, KeyUsage, Origin, Tag};

const KEY_COLUMNS: &str = "key_id, account_id, description, key_usage, key_spec, origin, key_manager, \
     key_state, multi_region, current_material_id, created_at_ms, deletion_date_ms";

const INSERT_KEY: &str = "INSERT INTO keys (key_id, account_id, description, key_usage, key_spec, origin, \
     key_manager, key_state, multi_region, current_material_id, created_at_ms, deletion_date_ms, updated_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $11)";

const INSERT_MATERIAL: &str = "INSERT INTO key_materials (key_id, material_id, sealed_material, origin, created_at_ms) \
     VALUES ($1, $2, $3, $4, $5)";

const INSERT_TAG: &str = "INSERT INTO key_tags (key_id, tag_key, tag_value) VALUES ($1, $2, $3)";

const SELECT_MATERIAL: &str = "SELECT material_id, sealed_material, origin, created_at_ms FROM key_materials \
     WHERE key_id = $1 AND material_id = $2";

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
                let columns = KeyColumns {
                    key_id: row.try_get("key_id").map_err(convert_sqlx_error)?,
                    account_id: row.try_get("account_id").map_err(convert_sqlx_error)?,
                    description: row.try_get("description").map_err(convert_sqlx_error)?,
                    key_usage: row.try_get("key_usage").map_err(convert_sqlx_error)?,
                    key_spec: row.try_get("key_spec").map_err(convert_sqlx_error)?,
                    origin: row.try_get("origin").map_err(convert_sqlx_error)?,
                    key_manager: row.try_get("key_manager").map_err(convert_sqlx_error)?,
                    key_state: row.try_get("key_state").map_err(convert_sqlx_error)?,
                    multi_region: row.try_get("multi_region").map_err(convert_sqlx_error)?,
                    current_material_id: row
                        .try_get("current_material_id")
                        .map_err(convert_sqlx_error)?,
                    created_at_ms: row.try_get("created_at_ms").map_err(convert_sqlx_error)?,
                    deletion_date_ms: row
                        .try_get("deletion_date_ms")
                        .map_err(convert_sqlx_error)?,
                };
                columns.into_record()
            }
        }

        #[async_trait]
        impl KeyStore for $store {
            async fn create_key(
                &self,
                key: &KeyRecord,
                material: &MaterialRecord,
                tags: &[Tag],
            ) -> Result<(), StoreError> {
                let mut transaction = self.pool.begin().await.map_err(convert_sqlx_error)?;
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
                    .execute(&mut *transaction)
                    .await
                    .map_err(convert_sqlx_error)?;
                sqlx::query(INSERT_MATERIAL)
                    .bind(key.key_id.as_str())
                    .bind(material.material_id.to_hex())
                    .bind(material.sealed_material.as_slice())
                    .bind(material.origin.as_str())
                    .bind(material.created_at_ms)
                    .execute(&mut *transaction)
                    .await
                    .map_err(convert_sqlx_error)?;
                for tag in tags {
                    sqlx::query(INSERT_TAG)
                        .bind(key.key_id.as_str())
                        .bind(&tag.key)
                        .bind(&tag.value)
                        .execute(&mut *transaction)
                        .await
                        .map_err(convert_sqlx_error)?;
                }
                transaction.commit().await.map_err(convert_sqlx_error)
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
                let row = sqlx::query(SELECT_MATERIAL)
                    .bind(key_id.as_str())
                    .bind(material_id.to_hex())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(convert_sqlx_error)?;
                let Some(row) = row else { return Ok(None) };
                let material_text: String =
                    row.try_get("material_id").map_err(convert_sqlx_error)?;
                let origin_text: String = row.try_get("origin").map_err(convert_sqlx_error)?;
                Ok(Some(MaterialRecord {
                    material_id: parse_column("material_id", &material_text, MaterialId::from_hex)?,
                    sealed_material: row.try_get("sealed_material").map_err(convert_sqlx_error)?,
                    origin: parse_column("origin", &origin_text, Origin::parse)?,
                    created_at_ms: row.try_get("created_at_ms").map_err(convert_sqlx_error)?,
                }))
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
        }
    };
}

sql_key_store!(PostgresKeyStore, sqlx::PgPool, sqlx::postgres::PgRow);
sql_key_store!(SqliteKeyStore, sqlx::SqlitePool, sqlx::sqlite::SqliteRow);
