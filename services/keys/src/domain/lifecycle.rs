//! CreateKey, DescribeKey, ListKeys.

use coffer_crypto::{MaterialId, SymmetricKeyMaterial, seal};
use coffer_platform::arn::AccountId;

use super::KeysDomain;
use super::types::{KeyId, KeyManager, KeySpec, KeyState, KeyUsage, Origin, Tag};
use crate::error::{KeysError, Result};
use crate::store::{KeyRecord, MaterialRecord, StoreError};

/// A validated CreateKey request.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub description: String,
    pub key_usage: KeyUsage,
    pub key_spec: KeySpec,
    pub tags: Vec<Tag>,
    pub multi_region: bool,
}

/// One page of ListKeys.
#[derive(Debug, Clone)]
pub struct KeyPage {
    pub keys: Vec<KeyRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next_after: Option<KeyId>,
}

impl KeysDomain {
    pub async fn create_key(&self, caller: &AccountId, request: NewKey) -> Result<KeyRecord> {
        if request.key_spec != KeySpec::SymmetricDefault {
            return Err(KeysError::Unsupported(format!(
                "KeySpec {} is not supported by this release of Coffer; SYMMETRIC_DEFAULT is.",
                request.key_spec
            )));
        }
        if request.key_usage != KeyUsage::EncryptDecrypt {
            return Err(KeysError::validation(
                "key_usage",
                format!(
                    "{} is not valid for KeySpec SYMMETRIC_DEFAULT; use ENCRYPT_DECRYPT",
                    request.key_usage
                ),
            ));
        }
        if request.multi_region {
            return Err(KeysError::Unsupported(
                "multi-Region keys are not supported by this release of Coffer.".into(),
            ));
        }
        let now_ms = self.clock.now_millis();
        // A fresh UUID collides with an existing key id only by a fault of the
        // generator; retry once so such a fault cannot surface as a user error.
        for _attempt in 0..2 {
            let key_id = KeyId::generate();
            let material_id = MaterialId::generate()?;
            let material = SymmetricKeyMaterial::generate()?;
            let key_arn = self.key_arn(caller, &key_id);
            let material_hex = material_id.to_hex();
            let sealed = seal(
                &self.root_key,
                &Self::seal_binding(&key_arn, &material_hex),
                material.as_bytes(),
            )?;
            let key = KeyRecord {
                key_id,
                account: caller.clone(),
                description: request.description.clone(),
                key_usage: request.key_usage,
                key_spec: request.key_spec,
                origin: Origin::AwsKms,
                key_manager: KeyManager::Customer,
                key_state: KeyState::Enabled,
                multi_region: false,
                current_material_id: Some(material_id),
                created_at_ms: now_ms,
                deletion_date_ms: None,
            };
            let material_record = MaterialRecord {
                material_id,
                sealed_material: sealed,
                origin: Origin::AwsKms,
                created_at_ms: now_ms,
            };
            match self
                .store
                .create_key(&key, &material_record, &request.tags)
                .await
            {
                Ok(()) => return Ok(key),
                Err(StoreError::Conflict) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    pub async fn describe_key(
        &self,
        caller: &AccountId,
        reference: &super::types::KeyReference,
    ) -> Result<KeyRecord> {
        self.resolve(caller, reference).await
    }

    pub async fn list_keys(
        &self,
        caller: &AccountId,
        limit: u32,
        after: Option<&KeyId>,
    ) -> Result<KeyPage> {
        let mut keys = self
            .store
            .list_keys(caller, after, limit.saturating_add(1))
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
}
