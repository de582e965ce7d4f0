//! The symmetric ciphertext blob. Encrypt writes format v2; Decrypt reads
//! v2 and the v1 blobs made before it.
//!
//! ```text
//! version (1 byte: 0x02, or 0x01)
//! key id length L (1 byte, 1..=64)
//! key id (L bytes of printable ASCII)
//! material id (16 bytes)
//! salt (32 random bytes; v2 only)
//! nonce (12 random bytes)
//! AES-256-GCM ciphertext || tag (16 bytes)
//! ```
//!
//! Everything before the ciphertext is the header. The AEAD's additional
//! data is the header followed by the canonical encryption context, so
//! changing any header byte or the context makes decryption fail. Decrypt
//! needs no KeyId: the header names the key and the backing-key version.
//!
//! In v2 each blob is sealed under its own key, HKDF-SHA256 of the key
//! material with the blob's salt (as KMS derives a key per encryption). A
//! v1 blob is sealed under the material itself with a random 96-bit nonce,
//! which bounds how many blobs one material may safely seal (NIST SP
//! 800-38D: 2^32); with a fresh key per blob that bound no longer applies.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

use crate::random::random_array;
use crate::{CryptoError, EncryptionContext, InvalidCiphertext, MaterialId, SymmetricKeyMaterial};

/// Sealed under the key material itself (read, no longer written).
pub const BLOB_FORMAT_V1: u8 = 1;
/// Sealed under a key derived from the material and the blob's salt.
pub const BLOB_FORMAT_V2: u8 = 2;
const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const MAX_KEY_ID_LEN: usize = 64;
/// HKDF's info for the per-blob key: names the use, so no other derivation
/// from the same material can produce it.
const BLOB_KEY_INFO: &[u8] = b"coffer ciphertext blob v2 key";

/// A blob whose header parsed; its ciphertext is not yet authenticated.
#[derive(Debug, Clone, Copy)]
pub struct ParsedBlob<'a> {
    key_id: &'a str,
    material_id: MaterialId,
    /// The v2 salt; `None` for a v1 blob.
    salt: Option<&'a [u8]>,
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
        let cipher = match self.salt {
            Some(salt) => blob_cipher(material, salt).map_err(|_| InvalidCiphertext)?,
            None => {
                Aes256Gcm::new_from_slice(material.as_bytes()).map_err(|_| InvalidCiphertext)?
            }
        };
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

/// The cipher of one v2 blob: AES-256-GCM under HKDF-SHA256(material, salt).
fn blob_cipher(material: &SymmetricKeyMaterial, salt: &[u8]) -> Result<Aes256Gcm, CryptoError> {
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(material.as_bytes())
        .expand(&[BLOB_KEY_INFO], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(key.as_mut_slice()))
        .map_err(|_| CryptoError::Encrypt)?;
    Aes256Gcm::new_from_slice(key.as_slice()).map_err(|_| CryptoError::Encrypt)
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
    if version != BLOB_FORMAT_V1 && version != BLOB_FORMAT_V2 {
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
    let (salt, after_salt) = if version == BLOB_FORMAT_V2 {
        let (salt, rest) = after_material
            .split_at_checked(SALT_LEN)
            .ok_or(InvalidCiphertext)?;
        (Some(salt), rest)
    } else {
        (None, after_material)
    };
    let (nonce, sealed) = after_salt
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
        salt,
        header,
        nonce,
        sealed,
    })
}

/// Encrypts `plaintext` under one version of a key's material (format v2).
pub fn encrypt_symmetric(
    material: &SymmetricKeyMaterial,
    key_id: &str,
    material_id: MaterialId,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let salt: [u8; SALT_LEN] = random_array()?;
    let nonce: [u8; NONCE_LEN] = random_array()?;
    seal_v2(
        material,
        key_id,
        material_id,
        context,
        plaintext,
        &salt,
        &nonce,
    )
}

fn seal_v2(
    material: &SymmetricKeyMaterial,
    key_id: &str,
    material_id: MaterialId,
    context: &EncryptionContext,
    plaintext: &[u8],
    salt: &[u8; SALT_LEN],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, CryptoError> {
    if !valid_key_id(key_id) {
        return Err(CryptoError::KeyIdFormat);
    }
    let key_id_len = u8::try_from(key_id.len()).map_err(|_| CryptoError::KeyIdFormat)?;

    let mut blob = Vec::with_capacity(
        2 + key_id.len() + MaterialId::LEN + SALT_LEN + NONCE_LEN + plaintext.len() + TAG_LEN,
    );
    blob.push(BLOB_FORMAT_V2);
    blob.push(key_id_len);
    blob.extend_from_slice(key_id.as_bytes());
    blob.extend_from_slice(material_id.as_bytes());
    blob.extend_from_slice(salt);
    blob.extend_from_slice(nonce);

    let cipher = blob_cipher(material, salt)?;
    let aad = associated_data(&blob, context);
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(nonce),
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

    /// Known answers computed independently (Python's `cryptography`:
    /// HKDF-SHA256, AESGCM) from material 00..1f, key id "kat-key",
    /// material id 10..1f, salt 11*32, nonce 22*12, context purpose=kat and
    /// plaintext "coffer".
    const KAT_V2: &str = "02076b61742d6b6579101112131415161718191a1b1c1d1e1f111111111111111111111111111111111111111111111111111111111111111122222222222222222222222225e82fc048326584846a695c8c163e56afaba17e021b";
    const KAT_V1: &str = "01076b61742d6b6579101112131415161718191a1b1c1d1e1f2222222222222222222222221e7b58a00b82dce60f788d7848af632dcf4ab07e3e09";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .filter_map(|at| text.get(at..at + 2))
            .filter_map(|pair| u8::from_str_radix(pair, 16).ok())
            .collect()
    }

    fn kat_inputs() -> Result<(SymmetricKeyMaterial, MaterialId, EncryptionContext), CryptoError> {
        let material: Vec<u8> = (0u8..32).collect();
        let mut material_id = [0u8; 16];
        for (byte, value) in material_id.iter_mut().zip(16u8..) {
            *byte = value;
        }
        Ok((
            SymmetricKeyMaterial::from_bytes(&material)?,
            MaterialId::from_bytes(material_id),
            [("purpose", "kat")].into_iter().collect(),
        ))
    }

    #[test]
    fn v2_seals_under_a_key_derived_from_the_salt() -> Result<(), Box<dyn std::error::Error>> {
        let (material, material_id, context) = kat_inputs()?;
        let blob = seal_v2(
            &material,
            "kat-key",
            material_id,
            &context,
            b"coffer",
            &[0x11; 32],
            &[0x22; 12],
        )?;
        assert_eq!(blob, hex(KAT_V2));
        let parsed = parse_blob(&blob)?;
        assert_eq!(parsed.decrypt(&material, &context)?.as_slice(), b"coffer");
        Ok(())
    }

    #[test]
    fn v1_blobs_made_before_v2_still_decrypt() -> Result<(), Box<dyn std::error::Error>> {
        let (material, material_id, context) = kat_inputs()?;
        let blob = hex(KAT_V1);
        let parsed = parse_blob(&blob)?;
        assert_eq!(parsed.key_id(), "kat-key");
        assert_eq!(parsed.material_id(), material_id);
        assert_eq!(parsed.decrypt(&material, &context)?.as_slice(), b"coffer");
        // Relabelled as v2 it is not a valid blob.
        let mut relabelled = blob.clone();
        if let Some(version) = relabelled.first_mut() {
            *version = BLOB_FORMAT_V2;
        }
        let outcome = parse_blob(&relabelled).and_then(|p| p.decrypt(&material, &context));
        assert_eq!(outcome, Err(InvalidCiphertext));
        Ok(())
    }

    #[test]
    fn each_blob_has_its_own_salt_and_nonce() -> Result<(), Box<dyn std::error::Error>> {
        let (material, material_id, context) = kat_inputs()?;
        let first = encrypt_symmetric(&material, "kat-key", material_id, &context, b"same")?;
        let second = encrypt_symmetric(&material, "kat-key", material_id, &context, b"same")?;
        assert_eq!(first.first(), Some(&BLOB_FORMAT_V2));
        let random = |blob: &[u8]| blob.get(25..25 + SALT_LEN + NONCE_LEN).map(<[u8]>::to_vec);
        assert_ne!(random(&first), random(&second));
        assert_ne!(first, second);
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
            for version in [BLOB_FORMAT_V1, BLOB_FORMAT_V2] {
                let mut blob = vec![version, KEY_ID.len() as u8];
                blob.extend_from_slice(KEY_ID.as_bytes());
                blob.extend_from_slice(&body);
                let outcome = parse_blob(&blob).and_then(|p| p.decrypt(&material, &EncryptionContext::default()));
                prop_assert_eq!(outcome, Err(InvalidCiphertext));
            }
        }
    }
}
