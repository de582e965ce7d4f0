//! Asymmetric and HMAC keys: GetPublicKey, Sign, Verify, GenerateMac,
//! VerifyMac, RSA Encrypt/Decrypt, GenerateDataKeyPair. RSA private-key
//! work runs on the bounded blocking pool; every private-key operation is
//! aws-lc-rs (never the `rsa` crate, RUSTSEC-2023-0071).

use std::sync::Arc;

use coffer_crypto::{
    AsymmetricKeySpec, AsymmetricPrivateKey, CryptoError, EncryptionContext, HmacKey, MacAlgorithm,
    MaterialId, MessageType, RsaEncryptionAlgorithm, SigningAlgorithm, Zeroizing,
};
use coffer_platform::authz::Caller;

use super::access::{
    Access, DATA_KEY_PAIR_SPEC, ENCRYPTION_ALGORITHM, MAC_ALGORITHM, MESSAGE_TYPE,
    SIGNING_ALGORITHM,
};

use super::KeysDomain;
use super::cache::LoadedMaterial;
use super::types::{
    EncryptionAlgorithm, KeyReference, KeyUsage, MacAlgorithmSpec, SigningAlgorithmSpec,
};
use crate::error::{KeysError, Result};
use crate::store::KeyRecord;

/// Largest message Sign, Verify, GenerateMac and VerifyMac accept.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// A data key pair: the private key in plaintext (wiped on drop) and
/// encrypted under a symmetric key, and the public key.
pub struct DataKeyPair {
    pub key: KeyRecord,
    /// The key's material the private key is encrypted under.
    pub material_id: MaterialId,
    pub private_key_plaintext: Zeroizing<Vec<u8>>,
    pub private_key_ciphertext_blob: Vec<u8>,
    pub public_key: Vec<u8>,
}

/// Crypto failures caused by the request, as KMS names them.
pub(crate) fn request_crypto_error(error: CryptoError) -> KeysError {
    match error {
        CryptoError::UnsupportedAlgorithm { .. } => KeysError::InvalidKeyUsage(error.to_string()),
        CryptoError::DigestLength { .. } => KeysError::validation("message", error.to_string()),
        CryptoError::PlaintextTooLarge { .. } => {
            KeysError::validation("plaintext", error.to_string())
        }
        CryptoError::InvalidCiphertext(_) => KeysError::InvalidCiphertext,
        other => KeysError::Crypto(other),
    }
}

impl KeysDomain {
    pub(super) fn wrong_usage(
        &self,
        key: &KeyRecord,
        operation: &str,
        needed: KeyUsage,
    ) -> KeysError {
        KeysError::InvalidKeyUsage(format!(
            "{operation} needs a key with key usage {needed}; {} is {} {}.",
            self.key_arn(&key.account, &key.key_id),
            key.key_spec,
            key.key_usage
        ))
    }

    /// The algorithm named `requested`, if Coffer implements it. KMS names
    /// algorithms no key spec of Coffer's supports (`ED25519_SHA_512`,
    /// `ML_DSA_SHAKE_256`, `SM2DSA`); like an implemented one that the key's
    /// spec does not support, they are not valid for this key.
    fn implemented<T>(
        &self,
        key: &KeyRecord,
        requested: &'static str,
        parse: fn(&str) -> Option<T>,
    ) -> Result<T> {
        parse(requested).ok_or_else(|| {
            request_crypto_error(CryptoError::UnsupportedAlgorithm {
                algorithm: requested,
                key_spec: key.key_spec.as_str(),
            })
        })
    }

    async fn private_key(
        &self,
        key: &KeyRecord,
        operation: &str,
    ) -> Result<Arc<AsymmetricPrivateKey>> {
        match self.current_material(key).await? {
            LoadedMaterial::Asymmetric(private) => Ok(private),
            LoadedMaterial::Symmetric(_) | LoadedMaterial::Hmac(_) => {
                Err(KeysError::Unsupported(format!(
                    "{operation} needs an asymmetric key; {} is {}.",
                    self.key_arn(&key.account, &key.key_id),
                    key.key_spec
                )))
            }
        }
    }

    async fn hmac_key(&self, key: &KeyRecord, operation: &str) -> Result<Arc<HmacKey>> {
        if key.key_usage != KeyUsage::GenerateVerifyMac {
            return Err(self.wrong_usage(key, operation, KeyUsage::GenerateVerifyMac));
        }
        match self.current_material(key).await? {
            LoadedMaterial::Hmac(hmac) => Ok(hmac),
            LoadedMaterial::Symmetric(_) | LoadedMaterial::Asymmetric(_) => {
                Err(self.wrong_usage(key, operation, KeyUsage::GenerateVerifyMac))
            }
        }
    }

    pub async fn get_public_key(
        &self,
        caller: &Caller,
        reference: &KeyReference,
    ) -> Result<(KeyRecord, Vec<u8>)> {
        let key = self
            .resolve(caller, reference, &Access::to("GetPublicKey"))
            .await?;
        self.ensure_usable(&key)?;
        let private = self.private_key(&key, "GetPublicKey").await?;
        Ok((key, private.public_key().spki_der().to_vec()))
    }

    pub async fn sign(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        requested: SigningAlgorithmSpec,
        message_type: MessageType,
        message: Vec<u8>,
    ) -> Result<(KeyRecord, Vec<u8>)> {
        let access = Access::to("Sign")
            .with_value(SIGNING_ALGORITHM, requested.as_str())
            .with_value(MESSAGE_TYPE, message_type.as_str());
        let key = self.resolve(caller, reference, &access).await?;
        self.ensure_usable(&key)?;
        if key.key_usage != KeyUsage::SignVerify {
            return Err(self.wrong_usage(&key, "Sign", KeyUsage::SignVerify));
        }
        let algorithm = self.implemented(&key, requested.as_str(), SigningAlgorithm::parse)?;
        let private = self.private_key(&key, "Sign").await?;
        let signature = if private.key_spec().is_rsa() {
            self.off_worker(move || private.sign(algorithm, message_type, &message))
                .await
                .map_err(|error| match error {
                    KeysError::Crypto(crypto) => request_crypto_error(crypto),
                    other => other,
                })?
        } else {
            private
                .sign(algorithm, message_type, &message)
                .map_err(request_crypto_error)?
        };
        Ok((key, signature))
    }

    /// Checks a signature; an invalid one is KMSInvalidSignatureException.
    pub async fn verify(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        requested: SigningAlgorithmSpec,
        message_type: MessageType,
        message: &[u8],
        signature: &[u8],
    ) -> Result<KeyRecord> {
        let access = Access::to("Verify")
            .with_value(SIGNING_ALGORITHM, requested.as_str())
            .with_value(MESSAGE_TYPE, message_type.as_str());
        let key = self.resolve(caller, reference, &access).await?;
        self.ensure_usable(&key)?;
        if key.key_usage != KeyUsage::SignVerify {
            return Err(self.wrong_usage(&key, "Verify", KeyUsage::SignVerify));
        }
        let algorithm = self.implemented(&key, requested.as_str(), SigningAlgorithm::parse)?;
        let private = self.private_key(&key, "Verify").await?;
        let valid = private
            .public_key()
            .verify(algorithm, message_type, message, signature)
            .map_err(request_crypto_error)?;
        if valid {
            Ok(key)
        } else {
            Err(KeysError::InvalidSignature)
        }
    }

    pub async fn generate_mac(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        requested: MacAlgorithmSpec,
        message: &[u8],
    ) -> Result<(KeyRecord, Vec<u8>)> {
        let access = Access::to("GenerateMac").with_value(MAC_ALGORITHM, requested.as_str());
        let key = self.resolve(caller, reference, &access).await?;
        self.ensure_usable(&key)?;
        let hmac = self.hmac_key(&key, "GenerateMac").await?;
        let algorithm = self.implemented(&key, requested.as_str(), MacAlgorithm::parse)?;
        let mac = hmac
            .generate_mac(algorithm, message)
            .map_err(request_crypto_error)?;
        Ok((key, mac))
    }

    /// Checks a MAC; an invalid one is KMSInvalidMacException.
    pub async fn verify_mac(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        requested: MacAlgorithmSpec,
        message: &[u8],
        mac: &[u8],
    ) -> Result<KeyRecord> {
        let access = Access::to("VerifyMac").with_value(MAC_ALGORITHM, requested.as_str());
        let key = self.resolve(caller, reference, &access).await?;
        self.ensure_usable(&key)?;
        let hmac = self.hmac_key(&key, "VerifyMac").await?;
        let algorithm = self.implemented(&key, requested.as_str(), MacAlgorithm::parse)?;
        let valid = hmac
            .verify_mac(algorithm, message, mac)
            .map_err(request_crypto_error)?;
        if valid {
            Ok(key)
        } else {
            Err(KeysError::InvalidMac)
        }
    }

    fn rsa_algorithm(
        &self,
        key: &KeyRecord,
        algorithm: EncryptionAlgorithm,
        context: &EncryptionContext,
        context_field: &'static str,
    ) -> Result<RsaEncryptionAlgorithm> {
        // The algorithm first: a call that left it out (SYMMETRIC_DEFAULT)
        // learns that, whatever else it sent, as KMS answers it.
        let parsed = RsaEncryptionAlgorithm::parse(algorithm.as_str()).ok_or_else(|| {
            KeysError::InvalidKeyUsage(format!(
                "{algorithm} is not valid for {} ({}); use RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256.",
                self.key_arn(&key.account, &key.key_id),
                key.key_spec
            ))
        })?;
        if !context.is_empty() {
            return Err(KeysError::validation(
                context_field,
                "asymmetric keys do not support an encryption context",
            ));
        }
        Ok(parsed)
    }

    /// RSA-OAEP encryption with the key's public key, for `operation`
    /// (Encrypt, or ReEncrypt, whose plaintext is what its source
    /// ciphertext blob held).
    pub(crate) async fn rsa_encrypt(
        &self,
        key: &KeyRecord,
        algorithm: EncryptionAlgorithm,
        context: &EncryptionContext,
        plaintext: &[u8],
        operation: &str,
    ) -> Result<Vec<u8>> {
        let context_field = match operation {
            "Encrypt" => "encryption_context",
            _ => "destination_encryption_context",
        };
        let rsa_algorithm = self.rsa_algorithm(key, algorithm, context, context_field)?;
        let private = self.private_key(key, operation).await?;
        private
            .public_key()
            .encrypt(rsa_algorithm, plaintext)
            .map_err(|error| match error {
                CryptoError::PlaintextTooLarge { .. } if operation != "Encrypt" => {
                    KeysError::validation("ciphertext_blob", error.to_string())
                }
                other => request_crypto_error(other),
            })
    }

    /// RSA decryption, on the blocking pool, for `action` (Decrypt, or
    /// ReEncryptFrom). Any failure is InvalidCiphertext.
    pub(crate) async fn rsa_decrypt(
        &self,
        key: &KeyRecord,
        algorithm: EncryptionAlgorithm,
        context: &EncryptionContext,
        ciphertext: Vec<u8>,
        action: &str,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let context_field = match action {
            "Decrypt" => "encryption_context",
            _ => "source_encryption_context",
        };
        let rsa_algorithm = self.rsa_algorithm(key, algorithm, context, context_field)?;
        let private = self.private_key(key, "Decrypt").await?;
        self.off_worker(move || private.decrypt(rsa_algorithm, &ciphertext))
            .await
            .map_err(|error| match error {
                KeysError::Crypto(crypto) => request_crypto_error(crypto),
                other => other,
            })
    }

    /// A new key pair whose private key is encrypted under a symmetric key.
    pub async fn generate_data_key_pair(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        action: &'static str,
        pair_spec: AsymmetricKeySpec,
        context: &EncryptionContext,
        dry_run: bool,
    ) -> Result<DataKeyPair> {
        let access = Access::to(action)
            .with_context(context)
            .with_value(
                ENCRYPTION_ALGORITHM,
                EncryptionAlgorithm::SymmetricDefault.as_str(),
            )
            .with_value(DATA_KEY_PAIR_SPEC, pair_spec.as_str());
        let key = self.resolve(caller, reference, &access).await?;
        self.ensure_usable(&key)?;
        self.ensure_symmetric_encryption_key(&key, "GenerateDataKeyPair")?;
        if dry_run {
            // Generating the pair cannot fail, and is not done for nothing;
            // the key's material is loaded as the call would load it.
            let (material_id, _) = self.current_symmetric_material(&key).await?;
            self.record_key(caller, &key);
            caller.record_additional_data(
                serde_json::json!({ "keyMaterialId": material_id.to_hex() }),
            );
            return Err(KeysError::DryRun);
        }
        let pair = self.generate_key_pair(pair_spec).await?;
        let (material_id, private_key_ciphertext_blob) = self
            .encrypt_under(&key, context, &pair.private_key_pkcs8)
            .await?;
        Ok(DataKeyPair {
            key,
            material_id,
            private_key_plaintext: pair.private_key_pkcs8,
            private_key_ciphertext_blob,
            public_key: pair.public_key_spki,
        })
    }
}
