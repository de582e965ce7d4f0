//! The keys service's rules: which key a request names, whether it may be
//! used, and the cryptography. No tonic and no sqlx here.

pub mod crypto_ops;
pub mod lifecycle;
pub mod types;

use std::sync::Arc;

use coffer_crypto::{MaterialId, RootKey, SealBinding, SymmetricKeyMaterial, unseal};
use coffer_platform::arn::{AccountId, Location};
use coffer_platform::clock::Clock;

use crate::error::{KeysError, Result};
use crate::store::{KeyRecord, KeyStore};
use types::{KeyId, KeyReference, KeySpec, KeyState, KeyUsage};

/// The IAM prefix of the keys service.
pub const SERVICE_PREFIX: &str = "kms";

/// Everything the keys operations need.
pub struct KeysDomain {
    store: Arc<dyn KeyStore>,
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
        Self {
            store,
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

    /// The seal binding of one material version: the key ARN and material id.
    fn seal_binding<'a>(key_arn: &'a str, material_hex: &'a str) -> SealBinding<'a> {
        SealBinding {
            resource_arn: key_arn,
            material_id: material_hex,
        }
    }

    /// The key a reference names, in the caller's account. A key that does
    /// not exist and a key of another account give the same answer.
    pub async fn resolve(&self, caller: &AccountId, reference: &KeyReference) -> Result<KeyRecord> {
        let not_found = |text: &str| KeysError::NotFound(format!("Key '{text}' does not exist"));
        let (key_id, named_as) = match reference {
            KeyReference::Id(key_id) => (key_id, self.key_arn(caller, key_id)),
            KeyReference::Arn {
                partition,
                region,
                account,
                key_id,
            } => {
                let arn =
                    format!("arn:{partition}:{SERVICE_PREFIX}:{region}:{account}:key/{key_id}");
                let here = *partition == self.location.partition && *region == self.location.region;
                if !here || account != caller {
                    return Err(not_found(&arn));
                }
                (key_id, arn)
            }
            KeyReference::Alias(name) => {
                return Err(KeysError::NotFound(format!(
                    "Alias '{name}' does not exist"
                )));
            }
            KeyReference::Unknown(text) => return Err(not_found(text)),
        };
        self.store
            .get_key(caller, key_id)
            .await?
            .ok_or_else(|| not_found(&named_as))
    }

    /// AWS's state rules for cryptographic operations: only Enabled keys
    /// work; Disabled gives DisabledException, every other state
    /// KMSInvalidStateException.
    pub(crate) fn ensure_usable(&self, key: &KeyRecord) -> Result<()> {
        let key_arn = self.key_arn(&key.account, &key.key_id);
        match key.key_state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KeysError::Disabled { key_arn }),
            state @ (KeyState::Creating
            | KeyState::PendingDeletion
            | KeyState::PendingImport
            | KeyState::PendingReplicaDeletion
            | KeyState::Unavailable
            | KeyState::Updating) => Err(KeysError::InvalidState { key_arn, state }),
        }
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

    /// Unseals one material version of a symmetric key.
    pub(crate) async fn symmetric_material(
        &self,
        key: &KeyRecord,
        material_id: &MaterialId,
    ) -> Result<Option<SymmetricKeyMaterial>> {
        let Some(record) = self.store.get_material(&key.key_id, material_id).await? else {
            return Ok(None);
        };
        let key_arn = self.key_arn(&key.account, &key.key_id);
        let material_hex = material_id.to_hex();
        let material = unseal(
            &self.root_key,
            &Self::seal_binding(&key_arn, &material_hex),
            &record.sealed_material,
        )?;
        Ok(Some(SymmetricKeyMaterial::from_bytes(&material)?))
    }
}
