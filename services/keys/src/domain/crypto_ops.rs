//! Encrypt, Decrypt, GenerateDataKey(WithoutPlaintext), GenerateRandom.

use std::sync::Arc;

use coffer_crypto::{
    AsymmetricKeySpec, EncryptionContext, MaterialId, SymmetricKeyMaterial, Zeroizing,
    encrypt_symmetric, parse_blob, random_bytes,
};
use coffer_platform::arn::AccountId;
use coffer_platform::authz::Caller;

use super::access::{Access, ENCRYPTION_ALGORITHM};

use super::KeysDomain;
use super::types::{EncryptionAlgorithm, KeyId, KeyReference, KeyUsage};
use crate::error::{KeysError, Result};
use crate::store::KeyRecord;

/// A data key: its plaintext (wiped on drop) and its ciphertext blob,
/// encrypted under the key's material `material_id`.
pub struct DataKey {
    pub key: KeyRecord,
    pub material_id: MaterialId,
    pub plaintext: Zeroizing<Vec<u8>>,
    pub ciphertext_blob: Vec<u8>,
}

/// What a Decrypt found: the key, the material that decrypted (for a
/// symmetric key; KMS's KeyMaterialId) and the plaintext (wiped on drop).
pub struct Decrypted {
    pub key: KeyRecord,
    pub material_id: Option<MaterialId>,
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// What a ReEncrypt did: the keys either side, the materials of the
/// symmetric ones, and the new blob.
pub struct ReEncrypted {
    pub source: KeyRecord,
    pub source_material_id: Option<MaterialId>,
    pub destination: KeyRecord,
    pub destination_material_id: Option<MaterialId>,
    pub ciphertext_blob: Vec<u8>,
}

/// The check of a Decrypt, or of ReEncrypt's source half (`ReEncryptFrom`,
/// with the key the destination names).
fn decrypt_access<'a>(
    action: &'static str,
    context: &'a EncryptionContext,
    algorithm: EncryptionAlgorithm,
    re_encrypt_to: Option<Option<(&'a AccountId, &'a KeyId)>>,
) -> Access<'a> {
    let access = Access::to(action)
        .with_context(context)
        .with_value(ENCRYPTION_ALGORITHM, algorithm.as_str());
    match re_encrypt_to {
        Some(destination) => access.re_encrypting_with(destination),
        None => access,
    }
}

impl KeysDomain {
    fn ensure_algorithm(&self, key: &KeyRecord, algorithm: EncryptionAlgorithm) -> Result<()> {
        if algorithm != EncryptionAlgorithm::SymmetricDefault {
            return Err(KeysError::InvalidKeyUsage(format!(
                "{algorithm} is not valid for {}; its only encryption algorithm is SYMMETRIC_DEFAULT.",
                self.key_arn(&key.account, &key.key_id)
            )));
        }
        Ok(())
    }

    /// The material a symmetric key encrypts under now, unsealed.
    pub(crate) async fn current_symmetric_material(
        &self,
        key: &KeyRecord,
    ) -> Result<(MaterialId, Arc<SymmetricKeyMaterial>)> {
        let material_id = key
            .current_material_id
            .ok_or_else(|| KeysError::InvalidState {
                key_arn: self.key_arn(&key.account, &key.key_id),
                state: key.key_state,
            })?;
        let material = self
            .symmetric_material(key, &material_id)
            .await?
            .ok_or_else(|| KeysError::Crypto(coffer_crypto::CryptoError::Unseal))?;
        Ok((material_id, material))
    }

    pub(crate) async fn encrypt_under(
        &self,
        key: &KeyRecord,
        context: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<(MaterialId, Vec<u8>)> {
        let (material_id, material) = self.current_symmetric_material(key).await?;
        let blob = encrypt_symmetric(
            &material,
            key.key_id.as_str(),
            material_id,
            context,
            plaintext,
        )?;
        Ok((material_id, blob))
    }

    pub async fn encrypt(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        algorithm: EncryptionAlgorithm,
        context: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<(KeyRecord, Vec<u8>)> {
        let key = self
            .resolve(
                caller,
                reference,
                &Access::to("Encrypt")
                    .with_context(context)
                    .with_value(ENCRYPTION_ALGORITHM, algorithm.as_str()),
            )
            .await?;
        self.ensure_usable(&key)?;
        let (_, blob) = self
            .encrypt_by_kind(&key, algorithm, context, plaintext, "Encrypt")
            .await?;
        Ok((key, blob))
    }

    /// Encrypts under an ENCRYPT_DECRYPT key of either kind: RSA-OAEP for an
    /// asymmetric key, AES-GCM for a symmetric one (with the material used).
    async fn encrypt_by_kind(
        &self,
        key: &KeyRecord,
        algorithm: EncryptionAlgorithm,
        context: &EncryptionContext,
        plaintext: &[u8],
        operation: &str,
    ) -> Result<(Option<MaterialId>, Vec<u8>)> {
        if key.key_usage != KeyUsage::EncryptDecrypt {
            return Err(self.wrong_usage(key, operation, KeyUsage::EncryptDecrypt));
        }
        if AsymmetricKeySpec::parse(key.key_spec.as_str()).is_some() {
            let blob = self
                .rsa_encrypt(key, algorithm, context, plaintext, operation)
                .await?;
            return Ok((None, blob));
        }
        self.ensure_symmetric_encryption_key(key, operation)?;
        self.ensure_algorithm(key, algorithm)?;
        let (material_id, blob) = self.encrypt_under(key, context, plaintext).await?;
        Ok((Some(material_id), blob))
    }

    /// Decrypts a blob. The blob names its key (of any account; the key's
    /// policy decides); when the caller also names one, it must be the same
    /// key. Any blob that is malformed, names a key the caller cannot see,
    /// names an unknown material version, or fails authentication is
    /// `InvalidCiphertext`. `action` is `Decrypt`, or `ReEncryptFrom` for the
    /// source half of ReEncrypt, whose `re_encrypt_to` is the key its
    /// destination names (if it names one).
    #[allow(clippy::too_many_arguments)]
    pub async fn decrypt(
        &self,
        caller: &Caller,
        blob: &[u8],
        expected_key: Option<&KeyReference>,
        algorithm: EncryptionAlgorithm,
        context: &EncryptionContext,
        action: &'static str,
        re_encrypt_to: Option<Option<(&AccountId, &KeyId)>>,
    ) -> Result<Decrypted> {
        let access = decrypt_access(action, context, algorithm, re_encrypt_to);
        let named = match expected_key {
            Some(reference) => Some(self.resolve(caller, reference, &access).await?),
            None => None,
        };
        if let Some(key) = &named
            && key.key_usage != KeyUsage::EncryptDecrypt
        {
            // A signing or MAC key is the wrong kind whatever the blob holds;
            // but a blob that names another key is first of all the wrong
            // key for it, as AWS answers.
            self.ensure_usable(key)?;
            let names_another = parse_blob(blob).is_ok_and(|parsed| {
                KeyId::parse(parsed.key_id()).is_some_and(|id| id != key.key_id)
            });
            if names_another {
                return Err(KeysError::IncorrectKey);
            }
            return Err(self.wrong_usage(key, action, KeyUsage::EncryptDecrypt));
        }
        if let Some(key) = &named
            && AsymmetricKeySpec::parse(key.key_spec.as_str()).is_some()
        {
            self.ensure_usable(key)?;
            let plaintext = self
                .rsa_decrypt(key, algorithm, context, blob.to_vec(), action)
                .await?;
            return Ok(Decrypted {
                key: key.clone(),
                material_id: None,
                plaintext,
            });
        }
        let parsed = parse_blob(blob).map_err(|_| KeysError::InvalidCiphertext)?;
        let blob_key_id = KeyId::parse(parsed.key_id()).ok_or(KeysError::InvalidCiphertext)?;
        let key = match named {
            Some(key) => {
                if key.key_id != blob_key_id {
                    return Err(KeysError::IncorrectKey);
                }
                key
            }
            None => {
                let key = self
                    .key_of_ciphertext(caller.account(), &blob_key_id)
                    .await?
                    .ok_or(KeysError::InvalidCiphertext)?;
                self.authorize_key(caller, &key, &access, || KeysError::InvalidCiphertext)
                    .await?;
                // Named in the event from here on, so a failure after the
                // check (a wrong context, say) names the key it was
                // against, and its owner's trail gets the copy; and a
                // ReEncrypt lists the source before the destination.
                self.record_key(caller, &key);
                key
            }
        };
        self.ensure_usable(&key)?;
        self.ensure_symmetric_encryption_key(&key, "Decrypt")?;
        self.ensure_algorithm(&key, algorithm)?;
        let material = self
            .symmetric_material(&key, &parsed.material_id())
            .await?
            .ok_or(KeysError::InvalidCiphertext)?;
        let plaintext = parsed
            .decrypt(&material, context)
            .map_err(|_| KeysError::InvalidCiphertext)?;
        Ok(Decrypted {
            key,
            material_id: Some(parsed.material_id()),
            plaintext,
        })
    }

    pub async fn generate_data_key(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        action: &'static str,
        length: usize,
        context: &EncryptionContext,
    ) -> Result<DataKey> {
        let access = Access::to(action).with_context(context).with_value(
            ENCRYPTION_ALGORITHM,
            EncryptionAlgorithm::SymmetricDefault.as_str(),
        );
        let key = self.resolve(caller, reference, &access).await?;
        self.ensure_usable(&key)?;
        self.ensure_symmetric_encryption_key(&key, "GenerateDataKey")?;
        let plaintext = random_bytes(length)?;
        let (material_id, ciphertext_blob) = self.encrypt_under(&key, context, &plaintext).await?;
        Ok(DataKey {
            key,
            material_id,
            plaintext,
            ciphertext_blob,
        })
    }

    /// Decrypts under the source key and encrypts under the destination key
    /// without the plaintext ever leaving the service.
    #[allow(clippy::too_many_arguments)]
    pub async fn re_encrypt(
        &self,
        caller: &Caller,
        blob: &[u8],
        source_key: Option<&KeyReference>,
        source_algorithm: EncryptionAlgorithm,
        source_context: &EncryptionContext,
        destination_key: &KeyReference,
        destination_algorithm: EncryptionAlgorithm,
        destination_context: &EncryptionContext,
    ) -> Result<ReEncrypted> {
        // The destination's key, for `kms:ReEncryptOnSameKey` when the source
        // is checked; looked up without being created or authorized.
        let named_destination = self.key_named(caller.account(), destination_key).await?;
        let decrypted = self
            .decrypt(
                caller,
                blob,
                source_key,
                source_algorithm,
                source_context,
                "ReEncryptFrom",
                Some(
                    named_destination
                        .as_ref()
                        .map(|(account, key_id)| (account, key_id)),
                ),
            )
            .await?;
        let source = decrypted.key;
        let destination = self
            .resolve(
                caller,
                destination_key,
                &Access::to("ReEncryptTo")
                    .with_context(destination_context)
                    .with_value(ENCRYPTION_ALGORITHM, destination_algorithm.as_str())
                    .re_encrypting_with(Some((&source.account, &source.key_id))),
            )
            .await?;
        let resolved = Some((&destination.account, &destination.key_id));
        if resolved
            != named_destination
                .as_ref()
                .map(|(account, key_id)| (account, key_id))
        {
            // The destination's alias moved between the two lookups: the
            // source is checked again, against the key the data will go to.
            let mut access = decrypt_access(
                "ReEncryptFrom",
                source_context,
                source_algorithm,
                Some(resolved),
            );
            let by_alias = source_key.and_then(|reference| access.requested_by(reference));
            if let Some(by_alias) = by_alias {
                access = by_alias;
            }
            self.authorize_key(caller, &source, &access, || KeysError::InvalidCiphertext)
                .await?;
        }
        self.ensure_usable(&destination)?;
        let (destination_material_id, ciphertext_blob) = self
            .encrypt_by_kind(
                &destination,
                destination_algorithm,
                destination_context,
                &decrypted.plaintext,
                "ReEncrypt",
            )
            .await?;
        Ok(ReEncrypted {
            source,
            source_material_id: decrypted.material_id,
            destination,
            destination_material_id,
            ciphertext_blob,
        })
    }

    pub fn generate_random(&self, caller: &Caller, length: usize) -> Result<Zeroizing<Vec<u8>>> {
        self.authorize_account(caller, "GenerateRandom", &[])?;
        Ok(random_bytes(length)?)
    }
}
