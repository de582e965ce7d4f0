//! Sealing of key material at rest: AES-256-GCM under the root key, with the
//! key ARN and material id bound in as additional authenticated data, so a
//! sealed row copied onto another key or material version does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::random::random_array;
use crate::{CryptoError, RootKey};

const SEAL_FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const SEAL_DOMAIN: &[u8] = b"coffer/seal/v1";

/// What a sealed record is bound to.
#[derive(Debug, Clone, Copy)]
pub struct SealBinding<'a> {
    pub resource_arn: &'a str,
    pub material_id: &'a str,
}

impl SealBinding<'_> {
    fn associated_data(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(
            SEAL_DOMAIN.len() + 8 + self.resource_arn.len() + self.material_id.len(),
        );
        aad.extend_from_slice(SEAL_DOMAIN);
        for part in [self.resource_arn, self.material_id] {
            aad.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// `version(1) || nonce(12) || AES-256-GCM(ciphertext || tag)`.
pub fn seal(
    root_key: &RootKey,
    binding: &SealBinding<'_>,
    material: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher =
        Aes256Gcm::new_from_slice(root_key.as_bytes()).map_err(|_| CryptoError::Encrypt)?;
    let nonce: [u8; NONCE_LEN] = random_array()?;
    let aad = binding.associated_data();
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: material,
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Encrypt)?;
    let mut record = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    record.push(SEAL_FORMAT_V1);
    record.extend_from_slice(&nonce);
    record.extend_from_slice(&sealed);
    Ok(record)
}

pub fn unseal(
    root_key: &RootKey,
    binding: &SealBinding<'_>,
    record: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let Some((&SEAL_FORMAT_V1, rest)) = record.split_first() else {
        return Err(CryptoError::Unseal);
    };
    let Some((nonce, sealed)) = rest.split_at_checked(NONCE_LEN) else {
        return Err(CryptoError::Unseal);
    };
    let cipher = Aes256Gcm::new_from_slice(root_key.as_bytes()).map_err(|_| CryptoError::Unseal)?;
    let aad = binding.associated_data();
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Unseal)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BINDING: SealBinding<'static> = SealBinding {
        resource_arn: "arn:coffer:kms:eu-west-1:111122223333:key/k1",
        material_id: "00112233445566778899aabbccddeeff",
    };

    #[test]
    fn round_trip_and_binding() -> Result<(), CryptoError> {
        let root = RootKey::generate()?;
        let record = seal(&root, &BINDING, b"material")?;
        assert_eq!(unseal(&root, &BINDING, &record)?.as_slice(), b"material");

        let other_key = SealBinding {
            resource_arn: "arn:coffer:kms:eu-west-1:111122223333:key/k2",
            ..BINDING
        };
        assert!(matches!(
            unseal(&root, &other_key, &record),
            Err(CryptoError::Unseal)
        ));
        let other_material = SealBinding {
            material_id: "ffffffffffffffffffffffffffffffff",
            ..BINDING
        };
        assert!(matches!(
            unseal(&root, &other_material, &record),
            Err(CryptoError::Unseal)
        ));
        assert!(matches!(
            unseal(&RootKey::generate()?, &BINDING, &record),
            Err(CryptoError::Unseal)
        ));
        Ok(())
    }

    #[test]
    fn altered_or_short_records_fail() -> Result<(), CryptoError> {
        let root = RootKey::generate()?;
        let record = seal(&root, &BINDING, b"material")?;
        for cut in 0..record.len() {
            let truncated = record.get(..cut).unwrap_or_default();
            assert!(matches!(
                unseal(&root, &BINDING, truncated),
                Err(CryptoError::Unseal)
            ));
        }
        let mut flipped = record.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 1;
        }
        assert!(matches!(
            unseal(&root, &BINDING, &flipped),
            Err(CryptoError::Unseal)
        ));
        Ok(())
    }
}
