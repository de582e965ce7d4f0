//! Storage of keys, their sealed material versions and tags. One trait, a
//! Postgres and a SQLite implementation generated from the same statements
//! (see [`sql`]), and one contract test suite that runs against both.

#[cfg(test)]
mod contract_tests;
mod sql;

use async_trait::async_trait;
use coffer_crypto::MaterialId;
use coffer_platform::arn::AccountId;
use coffer_platform::db::{DbPool, MigrationFile, Migrations};
use thiserror::Error;

use crate::domain::types::{
    KeyId, KeyManager, KeySpec, KeyState, KeyUsage, Origin, RotationType, Tag,
};

pub use sql::{PostgresKeyStore, SqliteKeyStore};

pub const MIGRATIONS: Migrations = Migrations {
    postgres: &[
        MigrationFile {
            version: 1,
            description: "keys",
            sql: include_str!("../../migrations/postgres/0001_keys.sql"),
        },
        MigrationFile {
            version: 2,
            description: "lifecycle",
            sql: include_str!("../../migrations/postgres/0002_lifecycle.sql"),
        },
        MigrationFile {
            version: 3,
            description: "policies and grants",
            sql: include_str!("../../migrations/postgres/0003_policies_grants.sql"),
        },
        MigrationFile {
            version: 4,
            description: "audit outbox",
            sql: include_str!("../../migrations/postgres/0004_audit_outbox.sql"),
        },
        MigrationFile {
            version: 5,
            description: "aliases in byte order",
            sql: include_str!("../../migrations/postgres/0005_alias_order.sql"),
        },
        MigrationFile {
            version: 6,
            description: "key accounts",
            sql: include_str!("../../migrations/postgres/0006_key_accounts.sql"),
        },
    ],
    sqlite: &[
        MigrationFile {
            version: 1,
            description: "keys",
            sql: include_str!("../../migrations/sqlite/0001_keys.sql"),
        },
        MigrationFile {
            version: 2,
            description: "lifecycle",
            sql: include_str!("../../migrations/sqlite/0002_lifecycle.sql"),
        },
        MigrationFile {
            version: 3,
            description: "policies and grants",
            sql: include_str!("../../migrations/sqlite/0003_policies_grants.sql"),
        },
        MigrationFile {
            version: 4,
            description: "audit outbox",
            sql: include_str!("../../migrations/sqlite/0004_audit_outbox.sql"),
        },
        MigrationFile {
            version: 5,
            description: "key accounts",
            sql: include_str!("../../migrations/sqlite/0005_key_accounts.sql"),
        },
    ],
};

/// A key as stored. Its ARN is derived from the instance location, never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: KeyId,
    pub account: AccountId,
    pub description: String,
    pub key_usage: KeyUsage,
    pub key_spec: KeySpec,
    pub origin: Origin,
    pub key_manager: KeyManager,
    pub key_state: KeyState,
    pub multi_region: bool,
    pub current_material_id: Option<MaterialId>,
    pub created_at_ms: i64,
    pub deletion_date_ms: Option<i64>,
    /// Bumped by every update; an update from a stale copy is a conflict.
    pub version: i64,
    pub pending_window_days: Option<i32>,
    pub rotation_enabled: bool,
    pub rotation_period_days: Option<i32>,
    pub next_rotation_ms: Option<i64>,
    /// The key policy document; empty for the default key policy.
    pub policy: String,
}

#[cfg(test)]
impl KeyRecord {
    /// A customer managed symmetric key of account 111122223333 named
    /// `key_id` (a UUID), in `key_state`, at `version`: for unit tests.
    pub(crate) fn for_tests(key_id: &str, key_state: KeyState, version: i64) -> Self {
        Self {
            key_id: KeyId::parse(key_id).unwrap_or_else(|| panic!("{key_id} is not a key id")),
            account: AccountId::parse("111122223333").unwrap_or_else(|| panic!("an account")),
            description: String::new(),
            key_usage: KeyUsage::EncryptDecrypt,
            key_spec: KeySpec::SymmetricDefault,
            origin: Origin::AwsKms,
            key_manager: KeyManager::Customer,
            key_state,
            multi_region: false,
            current_material_id: None,
            created_at_ms: 0,
            deletion_date_ms: None,
            version,
            pending_window_days: None,
            rotation_enabled: false,
            rotation_period_days: None,
            next_rotation_ms: None,
            policy: String::new(),
        }
    }
}

/// One version of a key's material, sealed under the root key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaterialRecord {
    pub material_id: MaterialId,
    pub sealed_material: Vec<u8>,
    pub origin: Origin,
    pub created_at_ms: i64,
    /// How this version came to be; `None` for the key's first material.
    pub rotation_type: Option<RotationType>,
}

/// How a grant constrains the encryption context of the requests it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    /// The request's context must be exactly the grant's pairs.
    Equals,
    /// The request's context must contain the grant's pairs.
    Subset,
}

impl ConstraintKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Equals => "EncryptionContextEquals",
            Self::Subset => "EncryptionContextSubset",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "EncryptionContextEquals" => Some(Self::Equals),
            "EncryptionContextSubset" => Some(Self::Subset),
            _ => None,
        }
    }
}

/// A grant's constraint: its kind and its pairs, sorted by key.
pub type GrantConstraint = (ConstraintKind, Vec<(String, String)>);

/// What CreateKey's write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCreation {
    Created,
    /// The account already has its most customer managed keys: nothing is
    /// written.
    OverQuota,
}

/// What CreateGrant's write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantCreation {
    Created,
    /// A grant of the same name and the same parameters was already there
    /// (CreateGrant's idempotency): it is the answer, and nothing is written.
    Existing(Box<GrantRecord>),
    /// The key already has its most grants: nothing is written.
    OverQuota,
}

/// A grant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// 64 lowercase hex digits, as AWS grant ids.
    pub grant_id: String,
    pub key_id: KeyId,
    /// The account of the key (grants may be for principals of others).
    pub key_account: AccountId,
    /// The idempotency name; empty when none was given.
    pub name: String,
    pub grantee_principal: String,
    pub retiring_principal: Option<String>,
    pub issuing_account: AccountId,
    /// AWS operation names (`Encrypt`, `ReEncryptFrom`, …).
    pub operations: Vec<String>,
    /// The constraint and its pairs, sorted by key.
    pub constraint: Option<GrantConstraint>,
    /// Hex secret a grant token carries beside the grant id.
    pub token_secret: String,
    pub created_at_ms: i64,
}

impl GrantRecord {
    /// Whether `other` asks for this grant again: the same name, issuer,
    /// principals, operations (in any order) and constraint.
    pub fn same_request_as(&self, other: &GrantRecord) -> bool {
        fn set(operations: &[String]) -> std::collections::BTreeSet<&str> {
            operations.iter().map(String::as_str).collect()
        }
        self.name == other.name
            && self.key_id == other.key_id
            && self.issuing_account == other.issuing_account
            && self.grantee_principal == other.grantee_principal
            && self.retiring_principal == other.retiring_principal
            && set(&self.operations) == set(&other.operations)
            && self.constraint == other.constraint
    }
}

/// An alias as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasRecord {
    pub account: AccountId,
    pub alias_name: String,
    pub target_key_id: KeyId,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("a record with this identity already exists")]
    Conflict,
    /// A write about a key (tags, aliases, grants) found the key pending
    /// deletion, or deleted, once it held the key's lock: a deletion was
    /// scheduled after the caller's copy of the key was read.
    #[error("the key is pending deletion")]
    PendingDeletion,
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

/// Maps database failures to store errors: the one place SQL error codes are read.
pub(crate) fn convert_sqlx_error(error: sqlx::Error) -> StoreError {
    let is_unique_violation = error.as_database_error().is_some_and(|database_error| {
        matches!(
            database_error.kind(),
            sqlx::error::ErrorKind::UniqueViolation
        )
    });
    if is_unique_violation {
        StoreError::Conflict
    } else {
        StoreError::Database(error)
    }
}

#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new key with its first material version and tags,
    /// atomically; a customer managed key only while its account has fewer
    /// than `max_customer_keys` of them (keys pending deletion count), decided
    /// under the account's lock so keys made at once cannot pass the quota.
    async fn create_key(
        &self,
        key: &KeyRecord,
        material: &MaterialRecord,
        tags: &[Tag],
        max_customer_keys: u64,
    ) -> Result<KeyCreation, StoreError>;

    /// How many customer managed keys `account` has (those pending deletion
    /// included), read outside any lock: a cheap early answer before a key
    /// is made; [`KeyStore::create_key`] decides under the lock.
    async fn count_customer_keys(&self, account: &AccountId) -> Result<u64, StoreError>;

    /// Stores a new service-managed key with its first material version and
    /// the alias that names it, atomically: `false`, and nothing written,
    /// when the account already has an alias of that name (another request
    /// made the key first). A failure leaves neither, so no key is ever left
    /// without its alias.
    async fn create_service_managed_key(
        &self,
        key: &KeyRecord,
        material: &MaterialRecord,
        alias: &AliasRecord,
    ) -> Result<bool, StoreError>;

    /// The key `key_id` of `account`; `None` when it does not exist there.
    async fn get_key(
        &self,
        account: &AccountId,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError>;

    async fn get_material(
        &self,
        key_id: &KeyId,
        material_id: &MaterialId,
    ) -> Result<Option<MaterialRecord>, StoreError>;

    /// Up to `limit` keys of `account` ordered by key id, after `after`.
    async fn list_keys(
        &self,
        account: &AccountId,
        after: Option<&KeyId>,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError>;

    async fn list_tags(&self, key_id: &KeyId) -> Result<Vec<Tag>, StoreError>;

    /// Writes the mutable fields of `key` if its stored version is still
    /// `key.version`, stamped `now_ms`; returns the new version. A stale
    /// copy is a `Conflict`.
    async fn update_key(&self, key: &KeyRecord, now_ms: i64) -> Result<i64, StoreError>;

    /// Adds a material version and updates the key (normally to make it
    /// current), in one transaction, under the same version check.
    async fn add_material(
        &self,
        key: &KeyRecord,
        material: &MaterialRecord,
    ) -> Result<i64, StoreError>;

    /// Every material version of a key, oldest first.
    async fn list_materials(&self, key_id: &KeyId) -> Result<Vec<MaterialRecord>, StoreError>;

    /// Removes a key with its materials, tags and aliases if its stored
    /// version is still `key.version` and it is stored pending deletion.
    /// `false` when it is absent or has changed since (a deletion cancelled
    /// meanwhile must not be lost), or is not pending deletion whatever
    /// `key` says: key material is destroyed only as scheduled.
    async fn delete_key(&self, key: &KeyRecord) -> Result<bool, StoreError>;

    /// Keys pending deletion whose date has come, across accounts.
    async fn keys_due_for_deletion(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError>;

    /// Enabled keys with automatic rotation whose next rotation has come.
    async fn keys_due_for_rotation(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError>;

    /// Inserts or replaces tags and returns how many the key then has.
    /// When that is more than `max_tags`, nothing is written. Concurrent
    /// calls for one key are serialized, so together they cannot exceed it.
    async fn put_tags(
        &self,
        key_id: &KeyId,
        tags: &[Tag],
        max_tags: usize,
    ) -> Result<usize, StoreError>;

    /// Removes the tags named `tag_keys` from the key; names it has no tag
    /// under are ignored, as many as there are.
    async fn delete_tags(&self, key_id: &KeyId, tag_keys: &[String]) -> Result<(), StoreError>;

    /// A new alias; `Conflict` when the name is taken in the account.
    /// Returns how many aliases its key has with it: more than
    /// `max_per_key`, and nothing is written.
    async fn create_alias(
        &self,
        alias: &AliasRecord,
        max_per_key: usize,
    ) -> Result<usize, StoreError>;

    /// Points an alias at `to` if it still points at `from`: `None` when it
    /// is gone or was pointed elsewhere in the meantime, so that a change
    /// authorized against one target never overwrites another. Otherwise how
    /// many aliases `to` has with it: more than `max_per_key`, and nothing
    /// is written.
    async fn update_alias(
        &self,
        account: &AccountId,
        alias_name: &str,
        from: &KeyId,
        to: &KeyId,
        now_ms: i64,
        max_per_key: usize,
    ) -> Result<Option<usize>, StoreError>;

    /// Deletes an alias if it still points at `target`; `false` otherwise.
    async fn delete_alias(
        &self,
        account: &AccountId,
        alias_name: &str,
        target: &KeyId,
    ) -> Result<bool, StoreError>;

    async fn get_alias(
        &self,
        account: &AccountId,
        alias_name: &str,
    ) -> Result<Option<AliasRecord>, StoreError>;

    /// The key `key_id` whatever its account (ciphertexts name keys by id).
    async fn find_key(&self, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// Stores a grant, unless one of the same name asks for the same (a
    /// named grant is created once however often it is asked for) or it
    /// would give its key more than `max_per_key` grants (`None`: no
    /// quota). Decided under the key's lock, so concurrent requests cannot
    /// both pass.
    async fn create_grant(
        &self,
        grant: &GrantRecord,
        max_per_key: Option<u64>,
    ) -> Result<GrantCreation, StoreError>;

    async fn get_grant(&self, grant_id: &str) -> Result<Option<GrantRecord>, StoreError>;

    /// Grants on a key ordered by grant id, after `after`.
    async fn list_grants(
        &self,
        key_id: &KeyId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<GrantRecord>, StoreError>;

    /// Every grant on a key for any of `grantees` (one or two principals:
    /// a caller and its account's root), ordered by grant id.
    async fn grants_for_grantees(
        &self,
        key_id: &KeyId,
        grantees: &[&str],
    ) -> Result<Vec<GrantRecord>, StoreError>;

    /// Grants a principal may retire, ordered by grant id, after `after`.
    async fn list_retirable_grants(
        &self,
        retiring_principal: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<GrantRecord>, StoreError>;

    /// Removes a grant; `false` when it did not exist.
    async fn delete_grant(&self, grant_id: &str) -> Result<bool, StoreError>;

    /// Aliases of an account (of one key when `target` is given), by name,
    /// after `after`.
    async fn list_aliases(
        &self,
        account: &AccountId,
        target: Option<&KeyId>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AliasRecord>, StoreError>;
}

/// The store for a connected pool.
pub fn key_store(pool: DbPool) -> std::sync::Arc<dyn KeyStore> {
    match pool {
        DbPool::Postgres(pool) => std::sync::Arc::new(PostgresKeyStore::new(pool)),
        DbPool::Sqlite(pool) => std::sync::Arc::new(SqliteKeyStore::new(pool)),
    }
}

/// Test support: writes `count` disabled customer managed keys of `account`
/// straight into the keys database behind `pool` (ids
/// `00000000-0000-4000-8000-…`, no material), an account brought to a
/// quota without calling CreateKey that often.
pub async fn insert_placeholder_keys(
    pool: &DbPool,
    account: &AccountId,
    count: u32,
) -> Result<(), StoreError> {
    let columns = "key_id, account_id, description, key_usage, key_spec, origin, key_manager, \
                   key_state, multi_region, created_at_ms, updated_at_ms";
    let values = "$1, '', 'ENCRYPT_DECRYPT', 'SYMMETRIC_DEFAULT', 'AWS_KMS', 'CUSTOMER', \
                  'Disabled', FALSE, 0, 0";
    match pool {
        DbPool::Sqlite(pool) => sqlx::query(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
             INSERT INTO keys ({columns}) \
             SELECT printf('00000000-0000-4000-8000-%012d', i), {values} FROM n"
        ))
        .bind(account.as_str())
        .bind(i64::from(count))
        .execute(pool)
        .await
        .map(|_| ()),
        DbPool::Postgres(pool) => sqlx::query(&format!(
            "INSERT INTO keys ({columns}) \
             SELECT '00000000-0000-4000-8000-' || lpad(i::text, 12, '0'), {values} \
             FROM generate_series(1, $2) AS i"
        ))
        .bind(account.as_str())
        .bind(i64::from(count))
        .execute(pool)
        .await
        .map(|_| ()),
    }
    .map_err(convert_sqlx_error)
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
