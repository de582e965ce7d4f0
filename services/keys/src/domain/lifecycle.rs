//! CreateKey, DescribeKey, ListKeys, UpdateKeyDescription, EnableKey,
//! DisableKey, ScheduleKeyDeletion, CancelKeyDeletion, and the deletion reaper.

use std::collections::HashSet;

use coffer_platform::arn::AccountId;
use coffer_platform::audit::service::{ServiceEvent, ServiceEvents};
use coffer_platform::authz::Caller;
use coffer_platform::telemetry::rfc3339_at;
use serde_json::json;

use super::access::{Access, KeyFacts};
use super::types::{
    EncryptionAlgorithm, KeyId, KeyManager, KeyReference, KeySpec, KeyState, KeyUsage, Origin, Tag,
};
use super::{DAY_MS, KEY_RESOURCE_TYPE, KeyOperation, KeysDomain, SERVICE_PREFIX};
use crate::error::{KeysError, Result};
use crate::store::{KeyCreation, KeyRecord, StoreError};

/// AWS's quota of customer managed keys in an account (a Region here);
/// service-managed keys do not count, keys pending deletion do.
pub const CUSTOMER_KEYS_PER_ACCOUNT: u64 = 100_000;

/// Shortest and longest deletion windows, and the default (days).
pub const MIN_PENDING_WINDOW_DAYS: i32 = 7;
pub const MAX_PENDING_WINDOW_DAYS: i32 = 30;
pub const DEFAULT_PENDING_WINDOW_DAYS: i32 = 30;

/// What one run of the scheduler's deletions or rotations did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DueWork {
    /// Keys deleted or rotated.
    pub done: usize,
    /// Keys that could not be, left for the next run.
    pub failed: usize,
}

/// Runs `change` on each key `due(limit)` lists, batch by batch: `Ok(true)`
/// when it changed the key, `Ok(false)` when it found the key changed
/// meanwhile (left for the next run). A key whose change fails is logged,
/// counted once, and skipped for the rest of the run; each batch asks for
/// as many more keys as have failed, so failing keys that sort first never
/// hide the others. The run ends with a short batch, or one in which no key
/// changed or failed for the first time.
pub(super) async fn for_each_due_key<Due, Listed, Change, Changed>(
    verb: &str,
    due: Due,
    change: Change,
) -> Result<DueWork>
where
    Due: Fn(u32) -> Listed,
    Listed: Future<Output = std::result::Result<Vec<KeyRecord>, StoreError>>,
    Change: Fn(KeyRecord) -> Changed,
    Changed: Future<Output = Result<bool>>,
{
    const BATCH: u32 = 100;
    let mut done = 0;
    let mut failed = HashSet::new();
    loop {
        let limit = BATCH.saturating_add(u32::try_from(failed.len()).unwrap_or(u32::MAX));
        let keys = due(limit).await?;
        let listed = keys.len();
        let mut progressed = false;
        for key in keys {
            if failed.contains(&key.key_id) {
                continue;
            }
            let (key_id, account) = (key.key_id.clone(), key.account.clone());
            match change(key).await {
                Ok(true) => {
                    done += 1;
                    progressed = true;
                }
                Ok(false) => {}
                // The next batch reaches one key further.
                Err(error) => {
                    tracing::warn!(key_id = %key_id, %account, %error, "could not {verb} a key that is due; it is tried again at the next run");
                    failed.insert(key_id);
                    progressed = true;
                }
            }
        }
        if listed < limit as usize || !progressed {
            return Ok(DueWork {
                done,
                failed: failed.len(),
            });
        }
    }
}

/// A validated CreateKey request.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub description: String,
    pub key_usage: KeyUsage,
    pub key_spec: KeySpec,
    pub tags: Vec<Tag>,
    pub multi_region: bool,
    /// The key policy document; the default key policy when `None`.
    pub policy: Option<String>,
    /// `None` when the parameter was not sent.
    pub bypass_policy_lockout_safety_check: Option<bool>,
}

/// The algorithms a key supports, as KeyMetadata lists them: each list is
/// empty where the key's usage has no use for it.
#[derive(Debug, Clone, Default)]
pub struct KeyAlgorithms {
    pub encryption: Vec<String>,
    pub signing: Vec<String>,
    pub mac: Vec<String>,
}

impl KeyAlgorithms {
    pub fn of(key: &KeyRecord) -> Self {
        fn names<T: ToString>(algorithms: &[T]) -> Vec<String> {
            algorithms.iter().map(ToString::to_string).collect()
        }
        let asymmetric = coffer_crypto::AsymmetricKeySpec::parse(key.key_spec.as_str());
        let mac = coffer_crypto::MacKeySpec::parse(key.key_spec.as_str());
        let mut algorithms = Self::default();
        match (key.key_usage, asymmetric) {
            (KeyUsage::EncryptDecrypt, None) => {
                algorithms.encryption = vec![EncryptionAlgorithm::SymmetricDefault.to_string()];
            }
            (KeyUsage::EncryptDecrypt, Some(spec)) => {
                algorithms.encryption = names(spec.encryption_algorithms());
            }
            (KeyUsage::SignVerify, Some(spec)) => {
                algorithms.signing = names(spec.signing_algorithms());
            }
            _ => {}
        }
        if let Some(spec) = mac {
            algorithms.mac = names(spec.mac_algorithms());
        }
        algorithms
    }
}

/// One page of ListKeys.
#[derive(Debug, Clone)]
pub struct KeyPage {
    pub keys: Vec<KeyRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next_after: Option<KeyId>,
}

impl KeysDomain {
    pub async fn create_key(&self, caller: &Caller, request: NewKey) -> Result<KeyRecord> {
        let mut conditions = vec![
            ("kms:KeySpec", vec![request.key_spec.to_string()]),
            ("kms:KeyUsage", vec![request.key_usage.to_string()]),
            ("kms:KeyOrigin", vec!["AWS_KMS".to_owned()]),
            ("kms:MultiRegion", vec![request.multi_region.to_string()]),
            // Deprecated names AWS still honours.
            (
                "kms:CustomerMasterKeySpec",
                vec![request.key_spec.to_string()],
            ),
            (
                "kms:CustomerMasterKeyUsage",
                vec![request.key_usage.to_string()],
            ),
        ];
        // In the request only when the parameter was sent, as AWS has it.
        if let Some(bypass) = request.bypass_policy_lockout_safety_check {
            conditions.push((
                "kms:BypassPolicyLockoutSafetyCheck",
                vec![bypass.to_string()],
            ));
        }
        // Tags given at creation are also a TagResource, which the caller's
        // identity policies must allow on the account's keys, with the same
        // tag conditions. Condition names are case-insensitive and tag keys
        // are not: `Env` and `env` share one `aws:RequestTag/env` with both
        // values, and the policy engine judges each on its own (a Deny on
        // either applies; an Allow must hold for both).
        let mut request_tags: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        for tag in &request.tags {
            request_tags
                .entry(format!("aws:RequestTag/{}", tag.key.to_lowercase()))
                .or_default()
                .push(tag.value.clone());
        }
        let mut tag_conditions: Vec<(&str, Vec<String>)> = request_tags
            .iter()
            .map(|(name, values)| (name.as_str(), values.clone()))
            .collect();
        if !request.tags.is_empty() {
            tag_conditions.push((
                "aws:TagKeys",
                request.tags.iter().map(|tag| tag.key.clone()).collect(),
            ));
        }
        conditions.extend(tag_conditions.iter().cloned());
        self.authorize_account(caller, "CreateKey", &conditions)?;
        if !request.tags.is_empty() {
            let any_key = self.location.arn(SERVICE_PREFIX, caller.account(), "key/*");
            self.authorize_identity_on(caller, "TagResource", &any_key, &tag_conditions)?;
        }
        let policy = request
            .policy
            .as_deref()
            .map(|document| self.parse_key_policy(document))
            .transpose()?;
        match (request.key_spec, request.key_usage) {
            (KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt)
            | (
                KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096,
                KeyUsage::EncryptDecrypt | KeyUsage::SignVerify,
            )
            | (
                KeySpec::EccNistP256
                | KeySpec::EccNistP384
                | KeySpec::EccNistP521
                | KeySpec::EccSecgP256k1,
                KeyUsage::SignVerify,
            )
            | (
                KeySpec::Hmac224 | KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512,
                KeyUsage::GenerateVerifyMac,
            ) => {}
            // Combinations AWS allows that Coffer does not implement yet.
            (
                KeySpec::EccNistP256 | KeySpec::EccNistP384 | KeySpec::EccNistP521 | KeySpec::Sm2,
                KeyUsage::KeyAgreement,
            )
            | (KeySpec::Sm2, KeyUsage::EncryptDecrypt | KeyUsage::SignVerify)
            | (
                KeySpec::EccNistEdwards25519
                | KeySpec::MlDsa44
                | KeySpec::MlDsa65
                | KeySpec::MlDsa87,
                KeyUsage::SignVerify,
            ) => {
                return Err(KeysError::Unsupported(format!(
                    "KeySpec {} with KeyUsage {} is not supported by this release of Coffer.",
                    request.key_spec, request.key_usage
                )));
            }
            (key_spec, key_usage) => {
                return Err(KeysError::validation(
                    "key_usage",
                    format!("{key_usage} is not valid for KeySpec {key_spec}"),
                ));
            }
        }
        if request.multi_region {
            return Err(KeysError::Unsupported(
                "multi-Region keys are not supported by this release of Coffer.".into(),
            ));
        }
        // The new key has the request's tags and no alias yet.
        let facts = KeyFacts {
            tags: request.tags.clone(),
            aliases: Vec::new(),
        };
        let lockout_check = |key: &KeyRecord| {
            if let Some(policy) = &policy
                && request.bypass_policy_lockout_safety_check != Some(true)
            {
                self.check_lockout(caller, key, policy, &facts)?;
            }
            // Recorded before the commit, so that the outbox's copy of the
            // event (DESIGN §5) shows the new key as the answer does.
            self.record_key(caller, key);
            caller.record_response(json!({ "keyMetadata": self.metadata_for_audit(key) }));
            Ok(())
        };
        self.insert_new_key(
            caller.account(),
            request.clone(),
            KeyManager::Customer,
            lockout_check,
        )
        .await
    }

    /// A key's metadata as a CloudTrail record shows it (CreateKey's
    /// response elements): dates as RFC 3339, lists only where they apply.
    pub(crate) fn metadata_for_audit(&self, key: &KeyRecord) -> serde_json::Value {
        let mut recorded = json!({
            "aWSAccountId": key.account.to_string(),
            "keyId": key.key_id.to_string(),
            "arn": self.key_arn(&key.account, &key.key_id),
            "creationDate": rfc3339_at(key.created_at_ms.div_euclid(1000)),
            "enabled": key.key_state == KeyState::Enabled,
            "description": key.description,
            "keyUsage": key.key_usage.to_string(),
            "keyState": key.key_state.to_string(),
            "origin": key.origin.to_string(),
            "keyManager": key.key_manager.to_string(),
            "keySpec": key.key_spec.to_string(),
            "customerMasterKeySpec": key.key_spec.to_string(),
            "multiRegion": key.multi_region,
        });
        let algorithms = KeyAlgorithms::of(key);
        for (field, values) in [
            ("encryptionAlgorithms", algorithms.encryption),
            ("signingAlgorithms", algorithms.signing),
            ("macAlgorithms", algorithms.mac),
        ] {
            if !values.is_empty() {
                recorded[field] = json!(values);
            }
        }
        recorded
    }

    /// Stores a new symmetric key with fresh material.
    pub(crate) async fn insert_new_key(
        &self,
        caller: &AccountId,
        request: NewKey,
        key_manager: KeyManager,
        check: impl Fn(&KeyRecord) -> Result<()>,
    ) -> Result<KeyRecord> {
        let over_quota = || {
            KeysError::LimitExceeded(format!(
                "Account {caller} already has {CUSTOMER_KEYS_PER_ACCOUNT} customer managed \
                 keys, the most an account may have"
            ))
        };
        // Asked before the key's material is made (an RSA key pair can take
        // seconds of a crypto thread), so that an account at its quota
        // cannot have that work done for nothing; the store decides for
        // certain under the account's lock.
        if key_manager == KeyManager::Customer
            && self.store.count_customer_keys(caller).await? >= CUSTOMER_KEYS_PER_ACCOUNT
        {
            return Err(over_quota());
        }
        // A fresh UUID collides with an existing key id only by a fault of the
        // generator; retry once so such a fault cannot surface as a user error.
        for _attempt in 0..2 {
            let (key, material) = self
                .new_key_record(caller, &request, key_manager, &check)
                .await?;
            match self
                .store
                .create_key(&key, &material, &request.tags, CUSTOMER_KEYS_PER_ACCOUNT)
                .await
            {
                Ok(KeyCreation::Created) => return Ok(key),
                Ok(KeyCreation::OverQuota) => return Err(over_quota()),
                Err(StoreError::Conflict) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    /// A new key of `request` with a fresh id, and its first material
    /// version, not yet stored. `check` sees the key before its material is
    /// made (an RSA key pair can take a while).
    pub(crate) async fn new_key_record(
        &self,
        caller: &AccountId,
        request: &NewKey,
        key_manager: KeyManager,
        check: impl Fn(&KeyRecord) -> Result<()>,
    ) -> Result<(KeyRecord, crate::store::MaterialRecord)> {
        let now_ms = self.now_ms();
        let rotates = key_manager == KeyManager::Aws;
        let mut key = KeyRecord {
            key_id: KeyId::generate(),
            account: caller.clone(),
            description: request.description.clone(),
            key_usage: request.key_usage,
            key_spec: request.key_spec,
            origin: Origin::AwsKms,
            key_manager,
            key_state: KeyState::Enabled,
            multi_region: false,
            current_material_id: None,
            created_at_ms: now_ms,
            deletion_date_ms: None,
            version: 0,
            pending_window_days: None,
            rotation_enabled: rotates,
            rotation_period_days: rotates.then_some(super::rotation::DEFAULT_ROTATION_PERIOD_DAYS),
            next_rotation_ms: rotates.then(|| {
                now_ms + i64::from(super::rotation::DEFAULT_ROTATION_PERIOD_DAYS) * DAY_MS
            }),
            policy: request.policy.clone().unwrap_or_default(),
        };
        check(&key)?;
        let material = self
            .new_material(caller, &key.key_id, request.key_spec, now_ms, None)
            .await?;
        key.current_material_id = Some(material.material_id);
        Ok((key, material))
    }

    pub async fn describe_key(
        &self,
        caller: &Caller,
        reference: &KeyReference,
    ) -> Result<KeyRecord> {
        let key = self
            .resolve(caller, reference, &Access::to("DescribeKey"))
            .await?;
        self.check_state(&key, KeyOperation::Describe)?;
        Ok(key)
    }

    pub async fn list_keys(
        &self,
        caller: &Caller,
        limit: u32,
        after: Option<&KeyId>,
    ) -> Result<KeyPage> {
        self.authorize_account(caller, "ListKeys", &[])?;
        let mut keys = self
            .store
            .list_keys(caller.account(), after, limit.saturating_add(1))
            .await?;
        let has_more = keys.len() > limit as usize;
        keys.truncate(limit as usize);
        let next_after = if has_more {
            keys.last().map(|key| key.key_id.clone())
        } else {
            None
        };
        Ok(KeyPage { keys, next_after })
    }

    pub async fn update_key_description(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        description: &str,
    ) -> Result<KeyRecord> {
        self.update_key_with(
            caller,
            reference,
            KeyOperation::UpdateDescription,
            &Access::to("UpdateKeyDescription"),
            |key, _now| {
                self.ensure_customer_managed(key, "UpdateKeyDescription")?;
                key.description = description.to_owned();
                Ok(())
            },
        )
        .await
    }

    pub async fn enable_key(&self, caller: &Caller, reference: &KeyReference) -> Result<KeyRecord> {
        self.update_key_with(
            caller,
            reference,
            KeyOperation::EnableKey,
            &Access::to("EnableKey"),
            |key, _now| {
                self.ensure_customer_managed(key, "EnableKey")?;
                key.key_state = KeyState::Enabled;
                self.record_key_response(caller, key);
                Ok(())
            },
        )
        .await
    }

    pub async fn disable_key(
        &self,
        caller: &Caller,
        reference: &KeyReference,
    ) -> Result<KeyRecord> {
        self.update_key_with(
            caller,
            reference,
            KeyOperation::DisableKey,
            &Access::to("DisableKey"),
            |key, _now| {
                self.ensure_customer_managed(key, "DisableKey")?;
                key.key_state = KeyState::Disabled;
                self.record_key_response(caller, key);
                Ok(())
            },
        )
        .await
    }

    /// Puts the key in PendingDeletion for `window_days` (7 to 30, checked
    /// at the edge); the reaper destroys it when the date comes.
    pub async fn schedule_key_deletion(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        window_days: i32,
    ) -> Result<KeyRecord> {
        debug_assert!((MIN_PENDING_WINDOW_DAYS..=MAX_PENDING_WINDOW_DAYS).contains(&window_days));
        self.update_key_with(
            caller,
            reference,
            KeyOperation::ScheduleDeletion,
            &Access::to("ScheduleKeyDeletion").with_values(
                "kms:ScheduleKeyDeletionPendingWindowInDays",
                vec![window_days.to_string()],
            ),
            |key, now_ms| {
                self.ensure_customer_managed(key, "ScheduleKeyDeletion")?;
                key.key_state = KeyState::PendingDeletion;
                let deletion_ms = now_ms + i64::from(window_days) * DAY_MS;
                key.deletion_date_ms = Some(deletion_ms);
                key.pending_window_days = Some(window_days);
                // In the event the change commits with (DESIGN §5).
                caller.record_response(json!({
                    "keyId": self.key_arn(&key.account, &key.key_id),
                    "keyState": key.key_state.as_str(),
                    "deletionDate": rfc3339_at(deletion_ms.div_euclid(1000)),
                    "pendingWindowInDays": window_days,
                }));
                Ok(())
            },
        )
        .await
    }

    /// Cancels a scheduled deletion; the key becomes Disabled, as in AWS.
    pub async fn cancel_key_deletion(
        &self,
        caller: &Caller,
        reference: &KeyReference,
    ) -> Result<KeyRecord> {
        self.update_key_with(
            caller,
            reference,
            KeyOperation::CancelDeletion,
            &Access::to("CancelKeyDeletion"),
            |key, now| {
                // Past its deletion date the key is as good as deleted (the
                // reaper's next run, or one that keeps failing, has not
                // destroyed it yet): too late to cancel, as in KMS.
                if key.deletion_date_ms.is_some_and(|due| due <= now) {
                    return Err(KeysError::InvalidState {
                        key_arn: self.key_arn(&key.account, &key.key_id),
                        state: key.key_state,
                    });
                }
                key.key_state = KeyState::Disabled;
                key.deletion_date_ms = None;
                key.pending_window_days = None;
                self.record_key_response(caller, key);
                Ok(())
            },
        )
        .await
    }

    /// Destroys every key whose deletion date has come, with its material,
    /// tags and aliases, each recorded as a `DeleteKey` service event. A key
    /// that cannot be destroyed is logged and counted, and left for the next
    /// run; the others are destroyed all the same.
    pub async fn delete_due_keys(&self, events: &ServiceEvents) -> Result<DueWork> {
        for_each_due_key(
            "delete",
            |limit| self.store.keys_due_for_deletion(self.now_ms(), limit),
            |key| async move {
                self.cache.forget_key(&key.account, &key.key_id);
                let change = self.service_event("DeleteKey", &key);
                let deletion =
                    async { Ok::<_, KeysError>(self.store.delete_key(&key).await?.then_some(())) };
                let deleted = events.record(change, deletion).await?.is_some();
                if deleted {
                    // Again: a read between the first forget and the commit
                    // may have cached the key as it was.
                    self.cache.forget_key(&key.account, &key.key_id);
                    tracing::info!(key_id = %key.key_id, account = %key.account, "deleted key whose deletion date passed");
                }
                Ok(deleted)
            },
        )
        .await
    }

    /// The scheduler's work: deletions and automatic rotations that are due,
    /// recorded in `events`. Rotations run even when deletions could not be
    /// listed; the first error is returned after both.
    pub async fn run_due_work(&self, events: &ServiceEvents) -> Result<(DueWork, DueWork)> {
        let deleted = self.delete_due_keys(events).await;
        let rotated = self.rotate_due_keys(events).await;
        if let Err(error) = self.forget_material_of_unusable_keys().await {
            tracing::warn!(%error, "cannot check which cached key material is still usable");
        }
        Ok((deleted?, rotated?))
    }

    /// Wipes the cached material of every key that is gone (deleted by
    /// another instance, whose reaper won) or pending deletion (no call
    /// uses its material until the deletion is cancelled, when it is read
    /// again). Without this, an instance that had used a key held its
    /// material until the cache filled or the process ended.
    async fn forget_material_of_unusable_keys(&self) -> Result<()> {
        for key_id in self.cache.keys_with_material() {
            let usable = self
                .store
                .find_key(&key_id)
                .await?
                .is_some_and(|key| key.key_state != KeyState::PendingDeletion);
            if !usable {
                self.cache.forget_material(&key_id);
            }
        }
        Ok(())
    }

    /// The service event of a change the scheduler makes to `key`.
    pub(super) fn service_event(&self, name: &'static str, key: &KeyRecord) -> ServiceEvent {
        ServiceEvent {
            name,
            account: key.account.to_string(),
            resource_arn: self.key_arn(&key.account, &key.key_id),
            resource_type: KEY_RESOURCE_TYPE,
            details: serde_json::json!({ "keyId": key.key_id.as_str() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A domain on a SQLite store in `directory`, with a fresh root key and
    /// the system clock, its pool, and the account the tests use.
    async fn sqlite_domain(
        directory: &std::path::Path,
    ) -> std::result::Result<
        (KeysDomain, coffer_platform::db::DbPool, AccountId),
        Box<dyn std::error::Error>,
    > {
        let pool = coffer_platform::db::testing::sqlite_pool(
            directory,
            "keys.db",
            &crate::store::MIGRATIONS,
        )
        .await?;
        let account = AccountId::parse("111122223333").ok_or("an account")?;
        let domain = KeysDomain::new(
            crate::store::key_store(pool.clone()),
            Arc::new(coffer_crypto::RootKey::generate()?),
            coffer_platform::arn::Location {
                partition: "coffer".into(),
                region: "eu-west-1".into(),
                dns_suffix: "coffer.internal".into(),
            },
            Arc::new(coffer_platform::clock::SystemClock),
        );
        Ok((domain, pool, account))
    }

    /// An account at its quota is refused before anything of the new key
    /// is made: its first check (the policy lockout check, which runs
    /// before the material is generated) is never reached.
    #[tokio::test]
    async fn an_account_at_its_quota_is_refused_before_the_material_is_made()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let (domain, pool, account) = sqlite_domain(directory.path()).await?;
        crate::store::insert_placeholder_keys(
            &pool,
            &account,
            u32::try_from(CUSTOMER_KEYS_PER_ACCOUNT)?,
        )
        .await?;
        let checked = AtomicUsize::new(0);
        let request = NewKey {
            description: String::new(),
            key_usage: KeyUsage::SignVerify,
            key_spec: KeySpec::Rsa4096,
            tags: Vec::new(),
            multi_region: false,
            policy: None,
            bypass_policy_lockout_safety_check: None,
        };
        let outcome = domain
            .insert_new_key(&account, request, KeyManager::Customer, |_| {
                checked.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await;
        assert!(
            matches!(outcome, Err(KeysError::LimitExceeded(_))),
            "{outcome:?}"
        );
        assert_eq!(checked.load(Ordering::SeqCst), 0, "the key was made first");
        Ok(())
    }

    /// The material of a key another instance deleted, or of one pending
    /// deletion, is wiped from this instance's cache at its next run of the
    /// scheduled work; an enabled key's stays.
    #[tokio::test]
    async fn cached_material_of_keys_gone_elsewhere_is_wiped()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let (domain, _pool, account) = sqlite_domain(directory.path()).await?;
        let mut keys = Vec::new();
        for _ in 0..3 {
            let request = NewKey {
                description: String::new(),
                key_usage: KeyUsage::EncryptDecrypt,
                key_spec: KeySpec::SymmetricDefault,
                tags: Vec::new(),
                multi_region: false,
                policy: None,
                bypass_policy_lockout_safety_check: None,
            };
            let key = domain
                .insert_new_key(&account, request, KeyManager::Customer, |_| Ok(()))
                .await?;
            let material = key.current_material_id.ok_or("no material")?;
            domain.load_material(&key, &material).await?;
            assert!(domain.cache.material(&key.key_id, &material).is_some());
            keys.push((key, material));
        }
        let [
            (kept, kept_material),
            (deleted, deleted_material),
            (pending, pending_material),
        ] = <[_; 3]>::try_from(keys).map_err(|_| "three keys")?;
        // Another instance's reaper deletes one, and a caller schedules
        // another's deletion there, while this instance's cache holds them.
        for key in [&deleted, &pending] {
            let mut scheduled = key.clone();
            scheduled.key_state = KeyState::PendingDeletion;
            scheduled.version = domain.store.update_key(&scheduled, domain.now_ms()).await?;
            if key.key_id == deleted.key_id {
                assert!(domain.store.delete_key(&scheduled).await?, "not deleted");
            }
        }

        domain.forget_material_of_unusable_keys().await?;
        assert!(
            domain
                .cache
                .material(&deleted.key_id, &deleted_material)
                .is_none()
        );
        assert!(
            domain
                .cache
                .material(&pending.key_id, &pending_material)
                .is_none()
        );
        assert!(
            domain
                .cache
                .material(&kept.key_id, &kept_material)
                .is_some()
        );
        Ok(())
    }

    fn due_key(index: usize) -> KeyRecord {
        KeyRecord::for_tests(
            &format!("00000000-0000-4000-8000-{index:012}"),
            KeyState::PendingDeletion,
            1,
        )
    }

    /// More failing keys than a batch, all due first: every other key is
    /// still reached in the same run, and each failing key counts once.
    #[tokio::test]
    async fn keys_that_keep_failing_hide_no_others() -> Result<()> {
        let failing = 150;
        let due = Mutex::new((0..250).map(due_key).collect::<Vec<_>>());
        let listed = |limit: u32| {
            let keys = due
                .lock()
                .map(|keys| keys.iter().take(limit as usize).cloned().collect());
            async move { keys.map_err(|_| StoreError::Corrupt("poisoned".into())) }
        };
        let work = for_each_due_key("delete", listed, |key| {
            let index = due
                .lock()
                .ok()
                .and_then(|keys| keys.iter().position(|due| due.key_id == key.key_id));
            let outcome = match index {
                Some(_) if key.key_id < due_key(failing).key_id => {
                    Err(KeysError::Store(StoreError::Corrupt("refused".into())))
                }
                Some(index) => {
                    if let Ok(mut keys) = due.lock() {
                        keys.remove(index);
                    }
                    Ok(true)
                }
                None => Ok(false),
            };
            async move { outcome }
        })
        .await?;
        assert_eq!(
            work,
            DueWork {
                done: 100,
                failed: failing
            }
        );
        assert_eq!(due.lock().map(|keys| keys.len()).ok(), Some(failing));
        Ok(())
    }
}
