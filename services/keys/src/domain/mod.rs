//! The keys service's rules: which key a request names, whether it may be
//! used, and the cryptography. No gRPC types and no database driver here.

pub mod access;
pub mod aliases;
pub mod asymmetric;
pub mod cache;
pub mod crypto_ops;
mod crypto_pool;
pub mod grants;
pub mod lifecycle;
pub mod policies;
pub mod rotation;
pub mod tags;
pub mod types;

use std::sync::Arc;

use coffer_crypto::{
    AsymmetricKeySpec, AsymmetricPrivateKey, HmacKey, MacKeySpec, MaterialId, RootKey, SealBinding,
    SymmetricKeyMaterial, Zeroizing, unseal,
};
use coffer_platform::arn::{AccountId, Location};
use coffer_platform::authz::Caller;
use coffer_platform::clock::Clock;

use access::{Access, Reach};

use crate::error::{KeysError, Result};
use crate::store::{KeyRecord, KeyStore};
use types::{KeyId, KeyManager, KeyReference, KeySpec, KeyState, KeyUsage};

/// The IAM prefix of the keys service.
pub const SERVICE_PREFIX: &str = "kms";
/// The CloudTrail resource type of a key.
pub const KEY_RESOURCE_TYPE: &str = "AWS::KMS::Key";

pub(crate) const DAY_MS: i64 = 86_400_000;

/// What a request does to a key, for the key-state rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOperation {
    Cryptographic,
    Describe,
    EnableKey,
    DisableKey,
    UpdateDescription,
    ScheduleDeletion,
    CancelDeletion,
    Tag,
    ListTags,
    Alias,
    EnableRotation,
    DisableRotation,
    RotationStatus,
    RotateOnDemand,
    ListRotations,
    /// Reading or changing the key policy, listing, retiring and revoking
    /// grants: allowed in every state but never changes key material.
    Policy,
    CreateGrant,
}

/// Everything the keys operations need.
pub struct KeysDomain {
    store: Arc<dyn KeyStore>,
    cache: cache::KeyCache,
    policies: access::PolicyCache,
    /// Threads for slow crypto (RSA key generation and private-key
    /// operations), so it never runs on the async workers.
    heavy_crypto: crypto_pool::CryptoPool,
    /// RSA key pairs generated at once, at most: half the crypto threads
    /// (at least one), so a burst of RSA key generation (up to seconds
    /// each) leaves the other threads to signing and decryption.
    key_generation: tokio::sync::Semaphore,
    root_key: Arc<RootKey>,
    location: Location,
    clock: Arc<dyn Clock>,
}

impl KeysDomain {
    pub fn new(
        store: Arc<dyn KeyStore>,
        root_key: Arc<RootKey>,
        location: Location,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let crypto_threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self {
            store,
            cache: cache::KeyCache::default(),
            policies: access::PolicyCache::default(),
            heavy_crypto: crypto_pool::CryptoPool::new(crypto_threads),
            key_generation: tokio::sync::Semaphore::new((crypto_threads / 2).max(1)),
            root_key,
            location,
            clock,
        }
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn key_arn(&self, account: &AccountId, key_id: &KeyId) -> String {
        self.location
            .arn(SERVICE_PREFIX, account, &format!("key/{key_id}"))
    }

    /// What a failed write on `key_id`'s behalf tells the caller. A key the
    /// write's lock finds PendingDeletion was scheduled for deletion after
    /// this call read it (by another call, or another replica while this
    /// one's record was cached): refused as that state refuses the call,
    /// naming the key as the state check does.
    pub(crate) fn write_refused<'a>(
        &'a self,
        account: &'a AccountId,
        key_id: &'a KeyId,
    ) -> impl Fn(crate::store::StoreError) -> KeysError + 'a {
        move |error| match error {
            crate::store::StoreError::PendingDeletion => KeysError::InvalidState {
                key_arn: self.key_arn(account, key_id),
                state: KeyState::PendingDeletion,
            },
            other => other.into(),
        }
    }

    /// The seal binding of one material version: the key ARN and material id.
    fn seal_binding<'a>(key_arn: &'a str, material_hex: &'a str) -> SealBinding<'a> {
        SealBinding {
            resource_arn: key_arn,
            material_id: material_hex,
        }
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_millis()
    }

    /// The key a reference names, if the caller may perform `access` on
    /// it. Key ids and aliases name keys of the caller's account; a key ARN
    /// may name another account's key for the operations AWS allows across
    /// accounts. A key that does not exist, a key of another account named
    /// for anything else, and a key the caller may not even describe all
    /// give the same answer.
    pub async fn resolve(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        access: &Access<'_>,
    ) -> Result<KeyRecord> {
        let key = self
            .find_key(caller.account(), reference, access.reach())
            .await?;
        let by_alias = access.requested_by(reference);
        let access = by_alias.as_ref().unwrap_or(access);
        self.authorize_key(caller, &key, access, || {
            self.missing(caller.account(), reference)
        })
        .await?;
        self.record_key(caller, &key);
        Ok(key)
    }

    /// Names `key` in the call's audit event, before anything is written.
    pub(crate) fn record_key(&self, caller: &Caller, key: &KeyRecord) {
        caller.record_resource(
            self.key_arn(&key.account, &key.key_id),
            key.account.to_string(),
            KEY_RESOURCE_TYPE,
        );
    }

    /// Records the key's ARN as the event's `responseElements.keyId`, as
    /// CloudTrail does (since December 2022) for the calls that change a key
    /// or its aliases without returning it. Called before the store write,
    /// so the outbox copy of the event has it too.
    pub(crate) fn record_key_response(&self, caller: &Caller, key: &KeyRecord) {
        caller.record_response(
            serde_json::json!({ "keyId": self.key_arn(&key.account, &key.key_id) }),
        );
    }

    /// The answer for a reference that names no key the caller can see.
    pub(crate) fn missing(&self, caller: &AccountId, reference: &KeyReference) -> KeysError {
        match reference {
            KeyReference::Id(key_id) => KeysError::NotFound(format!(
                "Key '{}' does not exist",
                self.key_arn(caller, key_id)
            )),
            KeyReference::Arn {
                partition,
                region,
                account,
                key_id,
            } => KeysError::NotFound(format!(
                "Key 'arn:{partition}:{SERVICE_PREFIX}:{region}:{account}:key/{key_id}' does not exist"
            )),
            KeyReference::Alias(text) => match coffer_platform::arn::ArnParts::parse(text) {
                Some(_) => KeysError::NotFound(format!("Alias '{text}' is not found.")),
                None => self.alias_not_found(caller, text),
            },
            KeyReference::Unknown(text) => {
                KeysError::NotFound(format!("Key '{text}' does not exist"))
            }
        }
    }

    /// The key a reference names, before any permission check.
    pub(crate) async fn find_key(
        &self,
        caller: &AccountId,
        reference: &KeyReference,
        reach: Reach,
    ) -> Result<KeyRecord> {
        let owner = match reference {
            KeyReference::Id(_) => caller,
            KeyReference::Arn {
                partition,
                region,
                account,
                ..
            } => {
                let here = *partition == self.location.partition && *region == self.location.region;
                if !here || (account != caller && reach == Reach::Own) {
                    return Err(self.missing(caller, reference));
                }
                account
            }
            // The grant operations and GetKeyRotationStatus take a key ID or
            // key ARN only, as in KMS; nor is a service-managed key made for
            // an alias named there.
            KeyReference::Alias(text) if reach == Reach::KeyArn => {
                return Err(KeysError::NotFound(format!(
                    "Invalid keyId '{text}': this operation takes a key ID or key ARN, not an alias"
                )));
            }
            KeyReference::Alias(text) => {
                return self
                    .resolve_alias(caller, text, reach == Reach::KeyOrAliasArn)
                    .await;
            }
            KeyReference::Unknown(_) => return Err(self.missing(caller, reference)),
        };
        let (KeyReference::Id(key_id) | KeyReference::Arn { key_id, .. }) = reference else {
            return Err(self.missing(caller, reference));
        };
        self.key_by_id(owner, key_id)
            .await?
            .ok_or_else(|| self.missing(caller, reference))
    }

    /// The key a ciphertext names, in any account (cross-account Decrypt).
    pub(crate) async fn key_of_ciphertext(
        &self,
        caller: &AccountId,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>> {
        if let Some(key) = self.key_by_id(caller, key_id).await? {
            return Ok(Some(key));
        }
        Ok(self.store.find_key(key_id).await?)
    }

    /// A key of `account` by id, from the cache when fresh.
    pub(crate) async fn key_by_id(
        &self,
        account: &AccountId,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>> {
        if let Some(record) = self.cache.record(account, key_id) {
            return Ok(Some(KeyRecord::clone(&record)));
        }
        let record = self.store.get_key(account, key_id).await?;
        match &record {
            Some(record) => self.cache.put_record(record),
            // Deleted, perhaps by another replica's reaper: its material
            // leaves this replica's cache too.
            None => self.cache.forget_deleted(account, key_id),
        }
        Ok(record)
    }

    /// AWS's key-state rules: whether `operation` is allowed on `key` now.
    /// Disabled keys refuse use with DisabledException; every other
    /// refusal is KMSInvalidStateException, naming the state, or for
    /// CancelKeyDeletion saying the key is not pending deletion.
    pub(crate) fn check_state(&self, key: &KeyRecord, operation: KeyOperation) -> Result<()> {
        use KeyOperation as Op;
        let key_arn = self.key_arn(&key.account, &key.key_id);
        let invalid = |key_arn: String| KeysError::InvalidState {
            key_arn,
            state: key.key_state,
        };
        let read_only = matches!(
            operation,
            Op::Describe | Op::ListTags | Op::RotationStatus | Op::ListRotations | Op::Policy
        );
        match key.key_state {
            KeyState::Enabled => match operation {
                Op::CancelDeletion => Err(KeysError::NotPendingDeletion { key_arn }),
                _ => Ok(()),
            },
            KeyState::Disabled => match operation {
                Op::Cryptographic
                | Op::CreateGrant
                | Op::EnableRotation
                | Op::DisableRotation
                | Op::RotateOnDemand => Err(KeysError::Disabled { key_arn }),
                Op::CancelDeletion => Err(KeysError::NotPendingDeletion { key_arn }),
                _ => Ok(()),
            },
            KeyState::PendingDeletion => {
                if read_only || operation == Op::CancelDeletion {
                    Ok(())
                } else {
                    Err(invalid(key_arn))
                }
            }
            KeyState::Creating
            | KeyState::PendingImport
            | KeyState::PendingReplicaDeletion
            | KeyState::Unavailable
            | KeyState::Updating => {
                if read_only {
                    Ok(())
                } else if operation == Op::CancelDeletion {
                    Err(KeysError::NotPendingDeletion { key_arn })
                } else {
                    Err(invalid(key_arn))
                }
            }
        }
    }

    /// Cryptographic operations need an Enabled key.
    pub(crate) fn ensure_usable(&self, key: &KeyRecord) -> Result<()> {
        self.check_state(key, KeyOperation::Cryptographic)
    }

    /// Service-managed keys cannot be managed by callers.
    pub(crate) fn ensure_customer_managed(&self, key: &KeyRecord, operation: &str) -> Result<()> {
        if key.key_manager == KeyManager::Aws {
            return Err(KeysError::Unsupported(format!(
                "{operation} is not allowed on {}: it is a service-managed key.",
                self.key_arn(&key.account, &key.key_id)
            )));
        }
        Ok(())
    }

    /// Resolves, checks the state, applies `change` and saves, retrying when
    /// a concurrent update got there first.
    pub(crate) async fn update_key_with(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        operation: KeyOperation,
        access: &Access<'_>,
        change: impl Fn(&mut KeyRecord, i64) -> Result<()>,
    ) -> Result<KeyRecord> {
        const ATTEMPTS: usize = 5;
        for _attempt in 0..ATTEMPTS {
            let mut key = self.resolve(caller, reference, access).await?;
            self.check_state(&key, operation)?;
            let now_ms = self.now_ms();
            change(&mut key, now_ms)?;
            self.cache.invalidate(&key.account, &key.key_id);
            match self.store.update_key(&key, now_ms).await {
                Ok(version) => {
                    key.version = version;
                    self.cache.put_record(&key);
                    return Ok(key);
                }
                Err(crate::store::StoreError::Conflict) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(crate::store::StoreError::Conflict.into())
    }

    /// Runs slow crypto on the crypto pool, never on the async workers.
    pub(crate) async fn off_worker<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> std::result::Result<T, coffer_crypto::CryptoError> + Send + 'static,
    ) -> Result<T> {
        match self.heavy_crypto.run(work).await {
            Ok(outcome) => Ok(outcome?),
            Err(crypto_pool::PoolError::Busy) => Err(KeysError::Throttled),
            Err(failure) => Err(KeysError::Internal(failure.to_string())),
        }
    }

    /// A new key pair of `spec`, generated on the crypto pool; an RSA one
    /// once one of the [`KeysDomain::key_generation`] slots is free (an ECC
    /// pair takes microseconds, and waits for none).
    pub(crate) async fn generate_key_pair(
        &self,
        spec: AsymmetricKeySpec,
    ) -> Result<coffer_crypto::KeyPairDer> {
        let _slot =
            match spec.is_rsa() {
                true => Some(self.key_generation.acquire().await.map_err(|_| {
                    KeysError::Internal("the key generation slots are closed".into())
                })?),
                false => None,
            };
        self.off_worker(move || coffer_crypto::generate_key_pair(spec))
            .await
    }

    /// New material for a key of `key_spec`, sealed under the root key.
    /// Key pairs are generated on the crypto pool.
    pub(crate) async fn new_material(
        &self,
        account: &AccountId,
        key_id: &KeyId,
        key_spec: KeySpec,
        now_ms: i64,
        rotation_type: Option<types::RotationType>,
    ) -> Result<crate::store::MaterialRecord> {
        let material_id = MaterialId::generate()?;
        let raw: Zeroizing<Vec<u8>> =
            if let Some(asymmetric) = AsymmetricKeySpec::parse(key_spec.as_str()) {
                let pair = self.generate_key_pair(asymmetric).await?;
                pair.private_key_pkcs8
            } else if let Some(mac) = MacKeySpec::parse(key_spec.as_str()) {
                Zeroizing::new(HmacKey::generate(mac)?.as_bytes().to_vec())
            } else {
                Zeroizing::new(SymmetricKeyMaterial::generate()?.as_bytes().to_vec())
            };
        let key_arn = self.key_arn(account, key_id);
        let material_hex = material_id.to_hex();
        let sealed = coffer_crypto::seal(
            &self.root_key,
            &Self::seal_binding(&key_arn, &material_hex),
            &raw,
        )?;
        Ok(crate::store::MaterialRecord {
            material_id,
            sealed_material: sealed,
            origin: types::Origin::AwsKms,
            created_at_ms: now_ms,
            rotation_type,
        })
    }

    pub(crate) fn ensure_symmetric_encryption_key(
        &self,
        key: &KeyRecord,
        operation: &str,
    ) -> Result<()> {
        if key.key_usage != KeyUsage::EncryptDecrypt || key.key_spec != KeySpec::SymmetricDefault {
            return Err(KeysError::InvalidKeyUsage(format!(
                "{} key usage is {} and key spec is {}; {operation} needs a SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key.",
                self.key_arn(&key.account, &key.key_id),
                key.key_usage,
                key.key_spec
            )));
        }
        Ok(())
    }

    /// Unseals and parses one material version of a key (cached).
    pub(crate) async fn load_material(
        &self,
        key: &KeyRecord,
        material_id: &MaterialId,
    ) -> Result<Option<cache::LoadedMaterial>> {
        if let Some(material) = self.cache.material(&key.key_id, material_id) {
            return Ok(Some(material));
        }
        let Some(record) = self.store.get_material(&key.key_id, material_id).await? else {
            return Ok(None);
        };
        let key_arn = self.key_arn(&key.account, &key.key_id);
        let material_hex = material_id.to_hex();
        let raw = unseal(
            &self.root_key,
            &Self::seal_binding(&key_arn, &material_hex),
            &record.sealed_material,
        )?;
        let loaded = if let Some(asymmetric) = AsymmetricKeySpec::parse(key.key_spec.as_str()) {
            // Parsing checks the key's consistency (bignum work for RSA):
            // on the crypto pool, as its signatures are, not on a worker.
            let parsed = self
                .off_worker(move || AsymmetricPrivateKey::from_pkcs8_der(asymmetric, &raw))
                .await?;
            cache::LoadedMaterial::Asymmetric(Arc::new(parsed))
        } else if let Some(mac) = MacKeySpec::parse(key.key_spec.as_str()) {
            cache::LoadedMaterial::Hmac(Arc::new(HmacKey::from_bytes(mac, &raw)?))
        } else {
            cache::LoadedMaterial::Symmetric(Arc::new(SymmetricKeyMaterial::from_bytes(&raw)?))
        };
        self.cache
            .put_material(&key.key_id, *material_id, loaded.clone());
        Ok(Some(loaded))
    }

    /// The material a key uses now.
    pub(crate) async fn current_material(&self, key: &KeyRecord) -> Result<cache::LoadedMaterial> {
        let material_id = key
            .current_material_id
            .ok_or_else(|| KeysError::InvalidState {
                key_arn: self.key_arn(&key.account, &key.key_id),
                state: key.key_state,
            })?;
        self.load_material(key, &material_id)
            .await?
            .ok_or(KeysError::Crypto(coffer_crypto::CryptoError::Unseal))
    }

    /// One material version of a symmetric key.
    pub(crate) async fn symmetric_material(
        &self,
        key: &KeyRecord,
        material_id: &MaterialId,
    ) -> Result<Option<Arc<SymmetricKeyMaterial>>> {
        match self.load_material(key, material_id).await? {
            None => Ok(None),
            Some(cache::LoadedMaterial::Symmetric(material)) => Ok(Some(material)),
            Some(_) => Err(KeysError::InvalidKeyUsage(format!(
                "{} is not a symmetric key.",
                self.key_arn(&key.account, &key.key_id)
            ))),
        }
    }
}
