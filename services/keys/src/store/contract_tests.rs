//! One contract for every [`KeyStore`]: each test body runs against SQLite
//! always and against Postgres when it is reachable (required under CI=true).

use std::sync::Arc;

use coffer_crypto::MaterialId;
use coffer_platform::arn::AccountId;
use coffer_platform::config::{DatabaseBackend, DatabaseSettings};
use coffer_platform::db::{connect, testing};

use super::*;
use crate::domain::types::{KeyId, KeyManager, KeySpec, KeyState, KeyUsage, Origin, Tag};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn sqlite_store(
    directory: &tempfile::TempDir,
) -> Result<Arc<dyn KeyStore>, Box<dyn std::error::Error>> {
    let settings = DatabaseSettings {
        backend: DatabaseBackend::Sqlite,
        url: format!("sqlite://{}", directory.path().join("keys.db").display()),
        schema: "unused".into(),
        max_connections: 4,
    };
    Ok(key_store(connect(&settings, &MIGRATIONS).await?))
}

async fn postgres_store() -> Result<Option<Arc<dyn KeyStore>>, Box<dyn std::error::Error>> {
    let Some(url) = testing::postgres_url().await else {
        return Ok(None);
    };
    let settings = DatabaseSettings {
        backend: DatabaseBackend::Postgres,
        url,
        schema: testing::unique_schema("keys_contract"),
        max_connections: 4,
    };
    Ok(Some(key_store(connect(&settings, &MIGRATIONS).await?)))
}

macro_rules! contract_tests {
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

contract_tests!(
    create_then_get_round_trips,
    keys_are_invisible_to_other_accounts,
    duplicate_key_id_is_a_conflict_and_changes_nothing,
    list_pages_in_key_order,
    materials_are_found_by_id,
);

fn account(digits: &str) -> AccountId {
    AccountId::parse(digits).unwrap_or_else(|| panic!("bad account {digits}"))
}

fn new_key(owner: &AccountId, material_id: MaterialId) -> KeyRecord {
    KeyRecord {
        key_id: KeyId::generate(),
        account: owner.clone(),
        description: "contract".into(),
        key_usage: KeyUsage::EncryptDecrypt,
        key_spec: KeySpec::SymmetricDefault,
        origin: Origin::AwsKms,
        key_manager: KeyManager::Customer,
        key_state: KeyState::Enabled,
        multi_region: false,
        current_material_id: Some(material_id),
        created_at_ms: 1_700_000_000_123,
        deletion_date_ms: None,
    }
}

fn material(material_id: MaterialId) -> MaterialRecord {
    MaterialRecord {
        material_id,
        sealed_material: vec![1, 2, 3, 0, 255],
        origin: Origin::AwsKms,
        created_at_ms: 1_700_000_000_123,
    }
}

async fn create_then_get_round_trips(store: &dyn KeyStore) -> TestResult {
    let owner = account("111122223333");
    let material_id = MaterialId::generate()?;
    let key = new_key(&owner, material_id);
    let tags = vec![
        Tag {
            key: "team".into(),
            value: "payments".into(),
        },
        Tag {
            key: "env".into(),
            value: "".into(),
        },
    ];
    store
        .create_key(&key, &material(material_id), &tags)
        .await?;
    assert_eq!(store.get_key(&owner, &key.key_id).await?, Some(key.clone()));
    let stored_tags = store.list_tags(&key.key_id).await?;
    assert_eq!(
        stored_tags
            .iter()
            .map(|t| t.key.as_str())
            .collect::<Vec<_>>(),
        ["env", "team"]
    );
    Ok(())
}

async fn keys_are_invisible_to_other_accounts(store: &dyn KeyStore) -> TestResult {
    let owner = account("111122223333");
    let stranger = account("444455556666");
    let material_id = MaterialId::generate()?;
    let key = new_key(&owner, material_id);
    store.create_key(&key, &material(material_id), &[]).await?;
    assert_eq!(store.get_key(&stranger, &key.key_id).await?, None);
    assert!(store.list_keys(&stranger, None, 100).await?.is_empty());
    Ok(())
}

async fn duplicate_key_id_is_a_conflict_and_changes_nothing(store: &dyn KeyStore) -> TestResult {
    let owner = account("111122223333");
    let material_id = MaterialId::generate()?;
    let key = new_key(&owner, material_id);
    store.create_key(&key, &material(material_id), &[]).await?;
    let mut second = key.clone();
    second.description = "second".into();
    let outcome = store
        .create_key(&second, &material(MaterialId::generate()?), &[])
        .await;
    assert!(matches!(outcome, Err(StoreError::Conflict)), "{outcome:?}");
    assert_eq!(
        store
            .get_key(&owner, &key.key_id)
            .await?
            .map(|k| k.description),
        Some("contract".into())
    );
    Ok(())
}

async fn list_pages_in_key_order(store: &dyn KeyStore) -> TestResult {
    let owner = account("777788889999");
    let mut created = Vec::new();
    for _ in 0..5 {
        let material_id = MaterialId::generate()?;
        let key = new_key(&owner, material_id);
        store.create_key(&key, &material(material_id), &[]).await?;
        created.push(key.key_id);
    }
    created.sort();
    let first_page = store.list_keys(&owner, None, 2).await?;
    let second_page = store
        .list_keys(&owner, first_page.last().map(|k| &k.key_id), 10)
        .await?;
    let listed: Vec<KeyId> = first_page
        .iter()
        .chain(second_page.iter())
        .map(|k| k.key_id.clone())
        .collect();
    assert_eq!(first_page.len(), 2);
    assert_eq!(listed, created);
    Ok(())
}

async fn materials_are_found_by_id(store: &dyn KeyStore) -> TestResult {
    let owner = account("111122223333");
    let material_id = MaterialId::generate()?;
    let key = new_key(&owner, material_id);
    store.create_key(&key, &material(material_id), &[]).await?;
    assert_eq!(
        store.get_material(&key.key_id, &material_id).await?,
        Some(material(material_id))
    );
    assert_eq!(
        store
            .get_material(&key.key_id, &MaterialId::generate()?)
            .await?,
        None
    );
    Ok(())
}
