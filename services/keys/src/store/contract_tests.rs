//! One contract for every [`KeyStore`]: each test body runs against SQLite
//! always and against Postgres when it is reachable (required under CI=true).

use std::sync::Arc;

use coffer_crypto::MaterialId;
use coffer_platform::arn::AccountId;
use coffer_platform::db::testing;

use super::*;
use crate::domain::types::{
    KeyId, KeyManager, KeySpec, KeyState, KeyUsage, Origin, RotationType, Tag,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A quota no test reaches.
const UNLIMITED: u64 = u64::MAX;

async fn sqlite_store(
    directory: &tempfile::TempDir,
) -> Result<Arc<dyn KeyStore>, Box<dyn std::error::Error>> {
    Ok(key_store(
        testing::sqlite_pool(directory.path(), "keys.db", &MIGRATIONS).await?,
    ))
}

async fn postgres_store() -> Result<Option<Arc<dyn KeyStore>>, Box<dyn std::error::Error>> {
    Ok(testing::postgres_pool("keys_contract", &MIGRATIONS)
        .await?
        .map(key_store))
}

coffer_platform::store_contract_tests!(
    create_then_get_round_trips,
    keys_are_invisible_to_other_accounts,
    duplicate_key_id_is_a_conflict_and_changes_nothing,
    list_pages_in_key_order,
    materials_are_found_by_id,
    updates_are_versioned,
    added_material_becomes_current_atomically,
    deleting_a_key_removes_everything_it_owns,
    due_queries_find_only_due_keys,
    tags_are_upserted_and_removed,
    a_key_pending_deletion_takes_no_tags_or_aliases,
    aliases_are_unique_per_account,
    policies_are_stored_with_the_key_and_keys_are_found_in_any_account,
    grants_round_trip_and_are_found_by_key_grantee_and_retiring_principal,
    customer_keys_are_capped_per_account,
    a_service_managed_key_is_stored_with_its_alias_or_not_at_all,
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
        version: 0,
        pending_window_days: None,
        rotation_enabled: false,
        rotation_period_days: None,
        next_rotation_ms: None,
        policy: String::new(),
    }
}

fn material(material_id: MaterialId) -> MaterialRecord {
    MaterialRecord {
        material_id,
        sealed_material: vec![1, 2, 3, 0, 255],
        origin: Origin::AwsKms,
        created_at_ms: 1_700_000_000_123,
        rotation_type: None,
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
        .create_key(&key, &material(material_id), &tags, UNLIMITED)
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
    store
        .create_key(&key, &material(material_id), &[], UNLIMITED)
        .await?;
    assert_eq!(store.get_key(&stranger, &key.key_id).await?, None);
    assert!(store.list_keys(&stranger, None, 100).await?.is_empty());
    Ok(())
}

async fn duplicate_key_id_is_a_conflict_and_changes_nothing(store: &dyn KeyStore) -> TestResult {
    let owner = account("111122223333");
    let material_id = MaterialId::generate()?;
    let key = new_key(&owner, material_id);
    store
        .create_key(&key, &material(material_id), &[], UNLIMITED)
        .await?;
    let mut second = key.clone();
    second.description = "second".into();
    let outcome = store
        .create_key(&second, &material(MaterialId::generate()?), &[], UNLIMITED)
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
        store
            .create_key(&key, &material(material_id), &[], UNLIMITED)
            .await?;
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
    store
        .create_key(&key, &material(material_id), &[], UNLIMITED)
        .await?;
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

async fn customer_keys_are_capped_per_account(store: &dyn KeyStore) -> TestResult {
    let owner = account("111122223333");
    let create = |key: KeyRecord, quota: u64| async move {
        let material_id = key.current_material_id.ok_or("no material")?;
        let outcome = store
            .create_key(&key, &material(material_id), &[], quota)
            .await?;
        Ok::<_, Box<dyn std::error::Error>>((key, outcome))
    };
    // A key pending deletion still counts.
    let mut pending = new_key(&owner, MaterialId::generate()?);
    pending.key_state = KeyState::PendingDeletion;
    pending.deletion_date_ms = Some(1_800_000_000_000);
    assert_eq!(create(pending, 2).await?.1, KeyCreation::Created);
    assert_eq!(
        create(new_key(&owner, MaterialId::generate()?), 2).await?.1,
        KeyCreation::Created
    );
    let (refused, outcome) = create(new_key(&owner, MaterialId::generate()?), 2).await?;
    assert_eq!(outcome, KeyCreation::OverQuota);
    assert_eq!(store.get_key(&owner, &refused.key_id).await?, None);
    assert_eq!(store.list_keys(&owner, None, 100).await?.len(), 2);
    // Service-managed keys are not counted or refused; another account has
    // its own count.
    let mut managed = new_key(&owner, MaterialId::generate()?);
    managed.key_manager = KeyManager::Aws;
    assert_eq!(create(managed, 2).await?.1, KeyCreation::Created);
    // The count read ahead of the lock sees the same keys.
    assert_eq!(store.count_customer_keys(&owner).await?, 2);
    let other = account("444455556666");
    assert_eq!(store.count_customer_keys(&other).await?, 0);
    assert_eq!(
        create(new_key(&other, MaterialId::generate()?), 2).await?.1,
        KeyCreation::Created
    );
    // Of four keys made at once for the last two places, two are made.
    let racer = || Ok::<_, Box<dyn std::error::Error>>(new_key(&other, MaterialId::generate()?));
    let (a, b, c, d) = tokio::join!(
        create(racer()?, 3),
        create(racer()?, 3),
        create(racer()?, 3),
        create(racer()?, 3)
    );
    let created = [a?, b?, c?, d?]
        .iter()
        .filter(|(_, outcome)| *outcome == KeyCreation::Created)
        .count();
    assert_eq!(created, 2);
    assert_eq!(store.list_keys(&other, None, 100).await?.len(), 3);
    Ok(())
}

async fn stored(
    store: &dyn KeyStore,
    owner: &AccountId,
) -> Result<KeyRecord, Box<dyn std::error::Error>> {
    let material_id = MaterialId::generate()?;
    let key = new_key(owner, material_id);
    store
        .create_key(&key, &material(material_id), &[], UNLIMITED)
        .await?;
    Ok(key)
}

async fn updates_are_versioned(store: &dyn KeyStore) -> TestResult {
    let owner = account("111122223333");
    let mut key = stored(store, &owner).await?;
    let stale = key.clone();
    key.key_state = KeyState::Disabled;
    key.description = "changed".into();
    key.version = store.update_key(&key, 1_700_000_000_500).await?;
    assert_eq!(key.version, 1);
    assert_eq!(store.get_key(&owner, &key.key_id).await?, Some(key.clone()));

    let mut lost_update = stale;
    lost_update.description = "stale".into();
    let outcome = store.update_key(&lost_update, 1_700_000_000_600).await;
    assert!(matches!(outcome, Err(StoreError::Conflict)), "{outcome:?}");
    assert_eq!(
        store
            .get_key(&owner, &key.key_id)
            .await?
            .map(|k| k.description),
        Some("changed".into())
    );
    Ok(())
}

async fn added_material_becomes_current_atomically(store: &dyn KeyStore) -> TestResult {
    let owner = account("111122223333");
    let mut key = stored(store, &owner).await?;
    let first = key.current_material_id;
    let rotated_id = MaterialId::generate()?;
    let mut rotated = material(rotated_id);
    rotated.created_at_ms += 1000;
    rotated.rotation_type = Some(RotationType::OnDemand);
    key.current_material_id = Some(rotated_id);
    key.version = store.add_material(&key, &rotated).await?;
    assert_eq!(
        store
            .get_key(&owner, &key.key_id)
            .await?
            .and_then(|k| k.current_material_id),
        Some(rotated_id)
    );
    let materials = store.list_materials(&key.key_id).await?;
    assert_eq!(
        materials
            .iter()
            .map(|m| Some(m.material_id))
            .collect::<Vec<_>>(),
        [first, Some(rotated_id)]
    );
    assert_eq!(
        materials.get(1).and_then(|m| m.rotation_type),
        Some(RotationType::OnDemand)
    );

    // A stale key version writes neither the key nor the material.
    let mut stale = key.clone();
    stale.version -= 1;
    let orphan_id = MaterialId::generate()?;
    stale.current_material_id = Some(orphan_id);
    assert!(matches!(
        store.add_material(&stale, &material(orphan_id)).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.get_material(&key.key_id, &orphan_id).await?, None);
    Ok(())
}

async fn deleting_a_key_removes_everything_it_owns(store: &dyn KeyStore) -> TestResult {
    let owner = account("111122223333");
    let key = stored(store, &owner).await?;
    store
        .put_tags(
            &key.key_id,
            &[Tag {
                key: "a".into(),
                value: "b".into(),
            }],
            50,
        )
        .await?;
    let alias_name = format!("alias/doomed-{}", key.key_id);
    store
        .create_alias(
            &AliasRecord {
                account: owner.clone(),
                alias_name: alias_name.clone(),
                target_key_id: key.key_id.clone(),
                created_at_ms: 1,
                updated_at_ms: 1,
            },
            50,
        )
        .await?;
    let schedule = |key: &KeyRecord| {
        let mut pending = key.clone();
        pending.key_state = KeyState::PendingDeletion;
        pending.deletion_date_ms = Some(1_800_000_000_000);
        pending
    };
    let mut pending = schedule(&key);
    pending.version = store.update_key(&pending, 2).await?;
    // A copy older than what is stored (a deletion cancelled since) deletes
    // nothing.
    let mut cancelled = pending.clone();
    cancelled.key_state = KeyState::Disabled;
    cancelled.deletion_date_ms = None;
    cancelled.version = store.update_key(&cancelled, 3).await?;
    assert!(!store.delete_key(&pending).await?);
    // Nor does a copy of the stored version that says it is pending
    // deletion when the store says otherwise.
    assert!(!store.delete_key(&schedule(&cancelled)).await?);
    assert!(store.get_key(&owner, &key.key_id).await?.is_some());
    let mut pending = schedule(&cancelled);
    pending.version = store.update_key(&pending, 4).await?;
    assert!(store.delete_key(&pending).await?);
    assert!(!store.delete_key(&pending).await?);
    assert_eq!(store.get_key(&owner, &key.key_id).await?, None);
    assert!(store.list_materials(&key.key_id).await?.is_empty());
    assert!(store.list_tags(&key.key_id).await?.is_empty());
    assert_eq!(store.get_alias(&owner, &alias_name).await?, None);
    Ok(())
}

async fn due_queries_find_only_due_keys(store: &dyn KeyStore) -> TestResult {
    let owner = account("121212121212");
    let mut doomed = stored(store, &owner).await?;
    doomed.key_state = KeyState::PendingDeletion;
    doomed.deletion_date_ms = Some(5_000);
    doomed.version = store.update_key(&doomed, 1).await?;
    let mut later = stored(store, &owner).await?;
    later.key_state = KeyState::PendingDeletion;
    later.deletion_date_ms = Some(9_000);
    later.version = store.update_key(&later, 1).await?;
    let due: Vec<KeyId> = store
        .keys_due_for_deletion(6_000, 100)
        .await?
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    assert!(due.contains(&doomed.key_id) && !due.contains(&later.key_id));

    let mut rotating = stored(store, &owner).await?;
    rotating.rotation_enabled = true;
    rotating.rotation_period_days = Some(90);
    rotating.next_rotation_ms = Some(7_000);
    rotating.version = store.update_key(&rotating, 1).await?;
    let mut disabled = stored(store, &owner).await?;
    disabled.rotation_enabled = true;
    disabled.next_rotation_ms = Some(7_000);
    disabled.key_state = KeyState::Disabled;
    disabled.version = store.update_key(&disabled, 1).await?;
    let due: Vec<KeyId> = store
        .keys_due_for_rotation(8_000, 100)
        .await?
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    assert!(
        due.contains(&rotating.key_id),
        "an enabled key due for rotation was missed"
    );
    assert!(
        !due.contains(&disabled.key_id),
        "a disabled key was offered for rotation"
    );
    assert!(
        !store
            .keys_due_for_rotation(6_000, 100)
            .await?
            .iter()
            .any(|k| k.key_id == rotating.key_id)
    );
    Ok(())
}

/// Writes decided on a copy of the key read before its deletion was
/// scheduled are refused once they hold the key, and change nothing.
async fn a_key_pending_deletion_takes_no_tags_or_aliases(store: &dyn KeyStore) -> TestResult {
    let owner = account("151515151515");
    let mut key = stored(store, &owner).await?;
    let other = stored(store, &owner).await?;
    let tag = Tag {
        key: "env".into(),
        value: "dev".into(),
    };
    store
        .put_tags(&key.key_id, std::slice::from_ref(&tag), 50)
        .await?;
    let alias = |name: &str, target: &KeyId| AliasRecord {
        account: owner.clone(),
        alias_name: name.into(),
        target_key_id: target.clone(),
        created_at_ms: 10,
        updated_at_ms: 10,
    };
    store
        .create_alias(&alias("alias/elsewhere", &other.key_id), 50)
        .await?;
    key.key_state = KeyState::PendingDeletion;
    key.deletion_date_ms = Some(1_800_000_000_000);
    key.version = store.update_key(&key, 1_700_000_000_500).await?;

    fn refused<T>(outcome: &Result<T, StoreError>) -> bool {
        matches!(outcome, Err(StoreError::PendingDeletion))
    }
    let new_tag = Tag {
        key: "late".into(),
        value: "x".into(),
    };
    assert!(refused(&store.put_tags(&key.key_id, &[new_tag], 50).await));
    assert!(refused(
        &store.delete_tags(&key.key_id, &["env".to_owned()]).await
    ));
    assert_eq!(store.list_tags(&key.key_id).await?, vec![tag]);
    assert!(refused(
        &store
            .create_alias(&alias("alias/late", &key.key_id), 50)
            .await
    ));
    assert!(refused(
        &store
            .update_alias(
                &owner,
                "alias/elsewhere",
                &other.key_id,
                &key.key_id,
                20,
                50
            )
            .await
    ));
    assert_eq!(store.get_alias(&owner, "alias/late").await?, None);
    assert_eq!(
        store
            .get_alias(&owner, "alias/elsewhere")
            .await?
            .map(|alias| alias.target_key_id),
        Some(other.key_id.clone())
    );
    Ok(())
}

async fn tags_are_upserted_and_removed(store: &dyn KeyStore) -> TestResult {
    let owner = account("111122223333");
    let key = stored(store, &owner).await?;
    store
        .put_tags(
            &key.key_id,
            &[
                Tag {
                    key: "env".into(),
                    value: "dev".into(),
                },
                Tag {
                    key: "team".into(),
                    value: "a".into(),
                },
            ],
            50,
        )
        .await?;
    store
        .put_tags(
            &key.key_id,
            &[Tag {
                key: "env".into(),
                value: "prod".into(),
            }],
            50,
        )
        .await?;
    let tags = store.list_tags(&key.key_id).await?;
    assert_eq!(
        tags,
        [
            Tag {
                key: "env".into(),
                value: "prod".into()
            },
            Tag {
                key: "team".into(),
                value: "a".into()
            }
        ]
    );
    store
        .delete_tags(&key.key_id, &["team".into(), "absent".into()])
        .await?;
    assert_eq!(store.list_tags(&key.key_id).await?.len(), 1);

    // Over the cap nothing is written, and two writes at once cannot pass
    // it together.
    let numbered = |from: usize, count: usize| -> Vec<Tag> {
        (from..from + count)
            .map(|n| Tag {
                key: format!("k{n}"),
                value: String::new(),
            })
            .collect()
    };
    assert_eq!(store.put_tags(&key.key_id, &numbered(0, 5), 5).await?, 6);
    assert_eq!(store.list_tags(&key.key_id).await?.len(), 1);
    let (low, high) = (numbered(0, 30), numbered(30, 30));
    let (first, second) = tokio::join!(
        store.put_tags(&key.key_id, &low, 50),
        store.put_tags(&key.key_id, &high, 50),
    );
    let mut counts = [first?, second?];
    counts.sort_unstable();
    assert_eq!(counts, [31, 61], "one write fits, the other would pass 50");
    assert_eq!(store.list_tags(&key.key_id).await?.len(), 31);
    Ok(())
}

async fn a_service_managed_key_is_stored_with_its_alias_or_not_at_all(
    store: &dyn KeyStore,
) -> TestResult {
    let owner = account("151515151515");
    let managed = |material_id| KeyRecord {
        key_manager: KeyManager::Aws,
        ..new_key(&owner, material_id)
    };
    let alias = |target: &KeyId| AliasRecord {
        account: owner.clone(),
        alias_name: "alias/coffer/ssm".into(),
        target_key_id: target.clone(),
        created_at_ms: 10,
        updated_at_ms: 10,
    };
    let first_material = MaterialId::generate()?;
    let first = managed(first_material);
    assert!(
        store
            .create_service_managed_key(&first, &material(first_material), &alias(&first.key_id))
            .await?
    );
    assert_eq!(
        store.get_key(&owner, &first.key_id).await?,
        Some(first.clone())
    );
    // A second key for the same alias: refused, and nothing of it stays.
    let second_material = MaterialId::generate()?;
    let second = managed(second_material);
    assert!(
        !store
            .create_service_managed_key(&second, &material(second_material), &alias(&second.key_id))
            .await?
    );
    assert_eq!(store.get_key(&owner, &second.key_id).await?, None);
    assert!(store.list_materials(&second.key_id).await?.is_empty());
    assert_eq!(
        store
            .get_alias(&owner, "alias/coffer/ssm")
            .await?
            .map(|alias| alias.target_key_id),
        Some(first.key_id.clone())
    );
    assert_eq!(store.list_keys(&owner, None, 10).await?, [first]);
    Ok(())
}

async fn aliases_are_unique_per_account(store: &dyn KeyStore) -> TestResult {
    let owner = account("131313131313");
    let other = account("141414141414");
    let first = stored(store, &owner).await?;
    let second = stored(store, &owner).await?;
    let foreign = stored(store, &other).await?;
    let alias = |account: &AccountId, target: &KeyId| AliasRecord {
        account: account.clone(),
        alias_name: "alias/app".into(),
        target_key_id: target.clone(),
        created_at_ms: 10,
        updated_at_ms: 10,
    };
    store
        .create_alias(&alias(&owner, &first.key_id), 50)
        .await?;
    assert!(matches!(
        store.create_alias(&alias(&owner, &second.key_id), 50).await,
        Err(StoreError::Conflict)
    ));
    // The same name in another account is another alias.
    store
        .create_alias(&alias(&other, &foreign.key_id), 50)
        .await?;
    // A change decided against one target never lands on another.
    assert!(
        store
            .update_alias(&owner, "alias/app", &second.key_id, &first.key_id, 15, 50)
            .await?
            .is_none()
    );
    assert!(
        !store
            .delete_alias(&owner, "alias/app", &second.key_id)
            .await?
    );
    assert_eq!(
        store
            .get_alias(&owner, "alias/app")
            .await?
            .map(|a| (a.target_key_id, a.updated_at_ms)),
        Some((first.key_id.clone(), 10))
    );
    assert_eq!(
        store
            .update_alias(&owner, "alias/app", &first.key_id, &second.key_id, 20, 50)
            .await?,
        Some(1)
    );
    let stored_alias = store.get_alias(&owner, "alias/app").await?;
    assert_eq!(
        stored_alias.as_ref().map(|a| &a.target_key_id),
        Some(&second.key_id)
    );
    assert_eq!(stored_alias.map(|a| a.updated_at_ms), Some(20));
    assert!(
        store
            .update_alias(
                &owner,
                "alias/absent",
                &first.key_id,
                &second.key_id,
                20,
                50
            )
            .await?
            .is_none()
    );
    assert_eq!(
        store
            .list_aliases(&owner, Some(&first.key_id), None, 10)
            .await?
            .len(),
        0
    );
    assert_eq!(
        store
            .list_aliases(&owner, Some(&second.key_id), None, 10)
            .await?
            .len(),
        1
    );
    assert_eq!(store.list_aliases(&owner, None, None, 10).await?.len(), 1);
    // A key's alias quota: over it, nothing is written.
    let named = |name: &str, target: &KeyId| AliasRecord {
        alias_name: name.into(),
        ..alias(&owner, target)
    };
    assert_eq!(
        store
            .create_alias(&named("alias/b", &second.key_id), 2)
            .await?,
        2
    );
    assert_eq!(
        store
            .create_alias(&named("alias/c", &second.key_id), 2)
            .await?,
        3
    );
    assert!(store.get_alias(&owner, "alias/c").await?.is_none());
    store
        .create_alias(&named("alias/c", &first.key_id), 2)
        .await?;
    assert_eq!(
        store
            .update_alias(&owner, "alias/c", &first.key_id, &second.key_id, 30, 2)
            .await?,
        Some(3)
    );
    assert_eq!(
        store
            .get_alias(&owner, "alias/c")
            .await?
            .map(|a| a.target_key_id),
        Some(first.key_id.clone())
    );
    for (name, target) in [("alias/b", &second.key_id), ("alias/c", &first.key_id)] {
        assert!(store.delete_alias(&owner, name, target).await?);
    }
    assert!(
        store
            .delete_alias(&owner, "alias/app", &second.key_id)
            .await?
    );
    assert!(
        !store
            .delete_alias(&owner, "alias/app", &second.key_id)
            .await?
    );
    assert_eq!(
        store
            .get_alias(&other, "alias/app")
            .await?
            .map(|a| a.target_key_id),
        Some(foreign.key_id)
    );
    Ok(())
}

async fn policies_are_stored_with_the_key_and_keys_are_found_in_any_account(
    store: &dyn KeyStore,
) -> TestResult {
    let owner = account("111122223333");
    let material_id = MaterialId::generate()?;
    let mut key = new_key(&owner, material_id);
    key.policy = r#"{"Version":"2012-10-17","Statement":[]}"#.into();
    store
        .create_key(&key, &material(material_id), &[], UNLIMITED)
        .await?;
    let found = store.find_key(&key.key_id).await?.ok_or("key not found")?;
    assert_eq!(found, key);
    assert_eq!(store.find_key(&KeyId::generate()).await?, None);

    let mut changed = found.clone();
    changed.policy = "{\"Statement\":[{\"Effect\":\"Deny\"}]} \u{1F512}".into();
    changed.version = store.update_key(&changed, 1_700_000_000_999).await?;
    let stored = store
        .get_key(&owner, &key.key_id)
        .await?
        .ok_or("key not found")?;
    assert_eq!(stored.policy, changed.policy);
    assert_eq!(stored.version, changed.version);
    Ok(())
}

fn grant(key: &KeyRecord, grant_id: &str, grantee: &str, retiring: Option<&str>) -> GrantRecord {
    GrantRecord {
        grant_id: grant_id.to_owned(),
        key_id: key.key_id.clone(),
        key_account: key.account.clone(),
        name: "payments-app".into(),
        grantee_principal: grantee.to_owned(),
        retiring_principal: retiring.map(str::to_owned),
        issuing_account: account("444455556666"),
        operations: vec!["Encrypt".into(), "Decrypt".into()],
        constraint: Some((
            ConstraintKind::Subset,
            vec![
                ("a".into(), "1".into()),
                ("quote\"d".into(), "line\nbreak".into()),
            ],
        )),
        token_secret: "cd".repeat(16),
        created_at_ms: 1_700_000_000_123,
    }
}

async fn grants_round_trip_and_are_found_by_key_grantee_and_retiring_principal(
    store: &dyn KeyStore,
) -> TestResult {
    let owner = account("111122223333");
    let material_id = MaterialId::generate()?;
    let key = new_key(&owner, material_id);
    store
        .create_key(&key, &material(material_id), &[], UNLIMITED)
        .await?;
    let alice = "arn:coffer:iam::111122223333:user/alice";
    let bob = "arn:coffer:iam::444455556666:user/bob";
    let first = grant(&key, &"a".repeat(64), alice, Some(bob));
    let mut second = grant(&key, &"b".repeat(64), bob, None);
    second.constraint = None;
    second.name = String::new();
    let roomy = Some(10);
    assert_eq!(
        store.create_grant(&second, roomy).await?,
        GrantCreation::Created
    );
    assert_eq!(
        store.create_grant(&first, roomy).await?,
        GrantCreation::Created
    );
    // The same name and parameters again: the grant already there, under
    // its own id, and nothing new.
    let mut again = first.clone();
    again.grant_id = "f".repeat(64);
    again.operations.reverse();
    assert_eq!(
        store.create_grant(&again, roomy).await?,
        GrantCreation::Existing(Box::new(first.clone()))
    );
    assert_eq!(store.get_grant(&again.grant_id).await?, None);
    // The same name with other parameters is another grant (removed again
    // below); the same id is a conflict.
    let mut renamed = first.clone();
    renamed.grant_id = "9".repeat(64);
    renamed.operations = vec!["Encrypt".into()];
    assert_eq!(
        store.create_grant(&renamed, roomy).await?,
        GrantCreation::Created
    );
    store.delete_grant(&renamed.grant_id).await?;
    let mut same_id = second.clone();
    same_id.name = "other".into();
    assert!(matches!(
        store.create_grant(&same_id, roomy).await,
        Err(StoreError::Conflict)
    ));
    // A grant past the key's quota is not stored; with none, it is. Many
    // grants for one grantee are no quota of their own.
    let third = grant(&key, &"d".repeat(64), alice, None);
    assert_eq!(
        store.create_grant(&third, Some(2)).await?,
        GrantCreation::OverQuota
    );
    assert_eq!(store.get_grant(&third.grant_id).await?, None);
    assert_eq!(
        store.create_grant(&third, None).await?,
        GrantCreation::Created
    );
    assert!(store.delete_grant(&third.grant_id).await?);

    assert_eq!(store.get_grant(&first.grant_id).await?, Some(first.clone()));
    assert_eq!(store.get_grant(&"c".repeat(64)).await?, None);
    let all = store.list_grants(&key.key_id, None, 10).await?;
    assert_eq!(all, vec![first.clone(), second.clone()]);
    let after_first = store
        .list_grants(&key.key_id, Some(&first.grant_id), 10)
        .await?;
    assert_eq!(after_first, vec![second.clone()]);
    assert_eq!(store.list_grants(&key.key_id, None, 1).await?.len(), 1);
    assert_eq!(
        store.grants_for_grantees(&key.key_id, &[alice]).await?,
        vec![first.clone()]
    );
    assert_eq!(
        store
            .grants_for_grantees(&key.key_id, &[alice, &second.grantee_principal])
            .await?
            .len(),
        2
    );
    assert_eq!(
        store.list_retirable_grants(bob, None, 10).await?,
        vec![first.clone()]
    );
    assert!(
        store
            .list_retirable_grants(alice, None, 10)
            .await?
            .is_empty()
    );

    assert!(store.delete_grant(&first.grant_id).await?);
    assert!(!store.delete_grant(&first.grant_id).await?);
    assert_eq!(store.get_grant(&first.grant_id).await?, None);

    // Deleting the key takes its grants with it.
    let mut pending = key.clone();
    pending.key_state = KeyState::PendingDeletion;
    pending.deletion_date_ms = Some(1_800_000_000_000);
    pending.version = store.update_key(&pending, 2).await?;
    assert!(store.delete_key(&pending).await?);
    assert_eq!(store.get_grant(&second.grant_id).await?, None);
    Ok(())
}
