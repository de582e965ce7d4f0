//! The symmetric ciphertext blob, format v1.
//!
//! ```text
//! version (1 byte, 0x01)
//! key id length L (1 byte, 1..=64)
//! key id (L bytes of printable ASCII)
//! material id (16 bytes)
//! nonce (12 bytes)
//! AES-256-GCM ciphertext || tag (16 bytes)
//! ```
//!
//! Everything before the ciphertext is the header. The AEAD's additional
//! data is the header followed by the canonical encryption context, so
//! changing any header byte or the context makes decryption fail. Decrypt
//! needs no KeyId: the header names the key and the backing-key version.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::random::random_array;
use crate::{CryptoError, EncryptionContext, InvalidCiphertext, MaterialId, SymmetricKeyMaterial};

pub const BLOB_FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const MAX_KEY_ID_LEN: usize = 64;

/// A blob whose header parsed; its ciphertext is not yet authenticated.
#[derive(Debug, Clone, Copy)]
pub struct ParsedBlob<'a> {
    key_id: &'a str,
    material_id: MaterialId,
    header: &'a [u8],
    nonce: &'a [u8],
    sealed: &'a [u8],
}

impl<'a> ParsedBlob<'a> {
    /// The key the blob claims to be made under (unauthenticated until
    /// [`ParsedBlob::decrypt`] succeeds).
    pub fn key_id(&self) -> &'a str {
        self.key_id
    }

    pub fn material_id(&self) -> MaterialId {
        self.material_id
    }

    pub fn decrypt(
        &self,
        material: &SymmetricKeyMaterial,
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, InvalidCiphertext> {
        let cipher =
            Aes256Gcm::new_from_slice(material.as_bytes()).map_err(|_| InvalidCiphertext)?;
        let aad = associated_data(self.header, context);
        cipher
            .decrypt(
                Nonce::from_slice(self.nonce),
                Payload {
                    msg: self.sealed,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| InvalidCiphertext)
    }
}

fn associated_data(header: &[u8], context: &EncryptionContext) -> Vec<u8> {
    let context_bytes = context.canonical_bytes();
    let mut aad = Vec::with_capacity(header.len() + context_bytes.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(&context_bytes);
    aad
}

fn valid_key_id(key_id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&key_id.len())
        && key_id.bytes().all(|byte| byte.is_ascii_graphic())
}

/// Splits a blob into its parts. Any structural fault is [`InvalidCiphertext`].
pub fn parse_blob(blob: &[u8]) -> Result<ParsedBlob<'_>, InvalidCiphertext> {
    let (&version, after_version) = blob.split_first().ok_or(InvalidCiphertext)?;
    if version != BLOB_FORMAT_V1 {
        return Err(InvalidCiphertext);
    }
    let (&key_id_len, after_len) = after_version.split_first().ok_or(InvalidCiphertext)?;
    let (key_id_bytes, after_key_id) = after_len
        .split_at_checked(usize::from(key_id_len))
        .ok_or(InvalidCiphertext)?;
    let key_id = std::str::from_utf8(key_id_bytes).map_err(|_| InvalidCiphertext)?;
    if !valid_key_id(key_id) {
        return Err(InvalidCiphertext);
    }
    let (material_bytes, after_material) = after_key_id
        .split_at_checked(MaterialId::LEN)
        .ok_or(InvalidCiphertext)?;
    let material_id =
        MaterialId::from_bytes(material_bytes.try_into().map_err(|_| InvalidCiphertext)?);
    let (nonce, sealed) = after_material
        .split_at_checked(NONCE_LEN)
        .ok_or(InvalidCiphertext)?;
    if sealed.len() < TAG_LEN {
        return Err(InvalidCiphertext);
    }
    let header_len = blob.len() - sealed.len();
    let header = blob.get(..header_len).ok_or(InvalidCiphertext)?;
    Ok(ParsedBlob {
        key_id,
        material_id,
        header,
        nonce,
        sealed,
    })
}

/// Encrypts `plaintext` under one version of a key's material.
pub fn encrypt_symmetric(
    material: &SymmetricKeyMaterial,
    key_id: &str,
    material_id: MaterialId,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if !valid_key_id(key_id) {
        return Err(CryptoError::KeyIdFormat);
    }
    let key_id_len = u8::try_from(key_id.len()).map_err(|_| CryptoError::KeyIdFormat)?;
    let nonce: [u8; NONCE_LEN] = random_array()?;

    let mut blob = Vec::with_capacity(
        2 + key_id.len() + MaterialId::LEN + NONCE_LEN + plaintext.len() + TAG_LEN,
    );
    blob.push(BLOB_FORMAT_V1);
    blob.push(key_id_len);
    blob.extend_from_slice(key_id.as_bytes());
    blob.extend_from_slice(material_id.as_bytes());
    blob.extend_from_slice(&nonce);

    let cipher =
        Aes256Gcm::new_from_slice(material.as_bytes()).map_err(|_| CryptoError::Encrypt)?;
    let aad = associated_data(&blob, context);
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Encrypt)?;
    blob.extend_from_slice(&sealed);
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const KEY_ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    fn fixture()
    -> Result<(SymmetricKeyMaterial, MaterialId, EncryptionContext, Vec<u8>), CryptoError> {
        let material = SymmetricKeyMaterial::generate()?;
        let material_id = MaterialId::generate()?;
        let context: EncryptionContext =
            [("purpose", "test"), ("tenant", "a")].into_iter().collect();
        let blob = encrypt_symmetric(&material, KEY_ID, material_id, &context, b"hello")?;
        Ok((material, material_id, context, blob))
    }

    #[test]
    fn round_trip_names_key_and_material() -> Result<(), Box<dyn std::error::Error>> {
        let (material, material_id, context, blob) = fixture()?;
        let parsed = parse_blob(&blob)?;
        assert_eq!(parsed.key_id(), KEY_ID);
        assert_eq!(parsed.material_id(), material_id);
        assert_eq!(parsed.decrypt(&material, &context)?.as_slice(), b"hello");
        Ok(())
    }

    #[test]
    fn wrong_context_or_key_fails() -> Result<(), Box<dyn std::error::Error>> {
        let (material, _, context, blob) = fixture()?;
        let parsed = parse_blob(&blob)?;
        assert_eq!(
            parsed.decrypt(&material, &EncryptionContext::default()),
            Err(InvalidCiphertext)
        );
        let extra: EncryptionContext = context
            .pairs()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain([("extra".to_owned(), "1".to_owned())])
            .collect();
        assert_eq!(parsed.decrypt(&material, &extra), Err(InvalidCiphertext));
        let other = SymmetricKeyMaterial::generate()?;
        assert_eq!(parsed.decrypt(&other, &context), Err(InvalidCiphertext));
        Ok(())
    }

    #[test]
    fn every_single_bit_flip_and_truncation_fails() -> Result<(), Box<dyn std::error::Error>> {
        let (material, _, context, blob) = fixture()?;
        for index in 0..blob.len() {
            for bit in 0..8 {
                let mut tampered = blob.clone();
                if let Some(byte) = tampered.get_mut(index) {
                    *byte ^= 1 << bit;
                }
                let outcome = parse_blob(&tampered).and_then(|p| p.decrypt(&material, &context));
                assert_eq!(
                    outcome,
                    Err(InvalidCiphertext),
                    "flip byte {index} bit {bit}"
                );
            }
        }
        for cut in 0..blob.len() {
            let truncated = blob.get(..cut).unwrap_or_default();
            let outcome = parse_blob(truncated).and_then(|p| p.decrypt(&material, &context));
            assert_eq!(outcome, Err(InvalidCiphertext), "truncated to {cut}");
        }
        Ok(())
    }

    #[test]
    fn rejects_bad_key_ids_on_encrypt() -> Result<(), CryptoError> {
        let material = SymmetricKeyMaterial::generate()?;
        let id = MaterialId::generate()?;
        let empty = EncryptionContext::default();
        for key_id in ["", "has space", &"x".repeat(65)] {
            assert!(matches!(
                encrypt_symmetric(&material, key_id, id, &empty, b"p"),
                Err(CryptoError::KeyIdFormat)
            ));
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let material = SymmetricKeyMaterial::from_bytes(&[3u8; 32]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let outcome = parse_blob(&bytes).and_then(|p| p.decrypt(&material, &EncryptionContext::default()));
            prop_assert_eq!(outcome, Err(InvalidCiphertext));
        }

        #[test]
        fn well_formed_header_with_random_body_fails(body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let material = SymmetricKeyMaterial::from_bytes(&[3u8; 32]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut blob = vec![BLOB_FORMAT_V1, KEY_ID.len() as u8];
            blob.extend_from_slice(KEY_ID.as_bytes());
            blob.extend_from_slice(&body);
            let outcome = parse_blob(&blob).and_then(|p| p.decrypt(&material, &EncryptionContext::default()));
            prop_assert_eq!(outcome, Err(InvalidCiphertext));
        }
    }
}
