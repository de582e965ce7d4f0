//! HMAC KMS keys (HMAC_224/256/384/512): GenerateMac and VerifyMac.

use std::fmt;

use aws_lc_rs::hmac;
use zeroize::Zeroizing;

use crate::{CryptoError, MacAlgorithm, MacKeySpec};

/// HMAC key material of one key spec. Wiped on drop; never printed.
#[derive(Clone)]
pub struct HmacKey {
    key_spec: MacKeySpec,
    material: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("HmacKey")
            .field("key_spec", &self.key_spec)
            .finish_non_exhaustive()
    }
}

impl HmacKey {
    /// Random key material as long as the spec's hash (32, 48 or 64 bytes),
    /// as KMS generates it.
    pub fn generate(key_spec: MacKeySpec) -> Result<Self, CryptoError> {
        let material = crate::random_bytes(key_spec.generated_key_len())?;
        Ok(Self { key_spec, material })
    }

    /// Key material stored earlier or imported: any length in
    /// [`MacKeySpec::accepted_key_lens`], else [`CryptoError::MacKeyLength`].
    pub fn from_bytes(key_spec: MacKeySpec, material: &[u8]) -> Result<Self, CryptoError> {
        let accepted = key_spec.accepted_key_lens();
        if !accepted.contains(&material.len()) {
            return Err(CryptoError::MacKeyLength {
                key_spec: key_spec.as_str(),
                min: *accepted.start(),
                max: *accepted.end(),
                actual: material.len(),
            });
        }
        Ok(Self {
            key_spec,
            material: Zeroizing::new(material.to_vec()),
        })
    }

    pub fn key_spec(&self) -> MacKeySpec {
        self.key_spec
    }

    /// The raw key material, for sealing under the root key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.material
    }

    /// GenerateMac: the full-length HMAC of `message`.
    /// [`CryptoError::UnsupportedAlgorithm`] when the key spec does not offer
    /// `algorithm`.
    pub fn generate_mac(
        &self,
        algorithm: MacAlgorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let key = self.aws_lc_key(algorithm)?;
        Ok(hmac::sign(&key, message).as_ref().to_vec())
    }

    /// VerifyMac: `Ok(true)` only when `mac` is the HMAC of `message`,
    /// compared in constant time; any other bytes (wrong, truncated, empty)
    /// are `Ok(false)`.
    pub fn verify_mac(
        &self,
        algorithm: MacAlgorithm,
        message: &[u8],
        mac: &[u8],
    ) -> Result<bool, CryptoError> {
        let key = self.aws_lc_key(algorithm)?;
        Ok(hmac::verify(&key, message, mac).is_ok())
    }

    fn aws_lc_key(&self, algorithm: MacAlgorithm) -> Result<hmac::Key, CryptoError> {
        if !self.key_spec.supports_mac_algorithm(algorithm) {
            return Err(CryptoError::UnsupportedAlgorithm {
                algorithm: algorithm.as_str(),
                key_spec: self.key_spec.as_str(),
            });
        }
        let aws_lc_algorithm = match algorithm {
            MacAlgorithm::HmacSha224 => hmac::HMAC_SHA224,
            MacAlgorithm::HmacSha256 => hmac::HMAC_SHA256,
            MacAlgorithm::HmacSha384 => hmac::HMAC_SHA384,
            MacAlgorithm::HmacSha512 => hmac::HMAC_SHA512,
        };
        Ok(hmac::Key::new(aws_lc_algorithm, &self.material))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// RFC 4231 test case 1's message with its key byte repeated to the
    /// shortest length each spec takes (28 bytes for HMAC_224, 32 for
    /// HMAC_256); the expected values are from `openssl dgst -sha224` and
    /// `-sha256` with `-mac HMAC -macopt hexkey:0b0b...`.
    #[test]
    fn known_answers() -> Result<(), CryptoError> {
        for (spec, algorithm, key_len, expected_hex) in [
            (
                MacKeySpec::Hmac224,
                MacAlgorithm::HmacSha224,
                28,
                "1abbc7c42cf4ca9f9d7b624564cb72d7b0945ea0a615095904a0fd34",
            ),
            (
                MacKeySpec::Hmac256,
                MacAlgorithm::HmacSha256,
                32,
                "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7",
            ),
        ] {
            let key = HmacKey::from_bytes(spec, &vec![0x0b; key_len])?;
            let mac = key.generate_mac(algorithm, b"Hi There")?;
            let actual_hex: String = mac.iter().map(|byte| format!("{byte:02x}")).collect();
            assert_eq!(actual_hex, expected_hex, "{spec}");
        }
        Ok(())
    }

    #[test]
    fn round_trip_every_spec() -> Result<(), CryptoError> {
        for spec in MacKeySpec::ALL {
            let key = HmacKey::generate(*spec)?;
            assert_eq!(key.as_bytes().len(), spec.generated_key_len());
            let algorithm = spec.mac_algorithm();
            let mac = key.generate_mac(algorithm, b"message")?;
            assert_eq!(mac.len(), algorithm.mac_len());
            assert!(key.verify_mac(algorithm, b"message", &mac)?);
            assert!(!key.verify_mac(algorithm, b"messagE", &mac)?);

            let mut flipped = mac.clone();
            if let Some(first) = flipped.first_mut() {
                *first ^= 0x80;
            }
            assert!(!key.verify_mac(algorithm, b"message", &flipped)?);
            let truncated = mac.get(..mac.len() - 1).unwrap_or_default();
            assert!(!key.verify_mac(algorithm, b"message", truncated)?);
            assert!(!key.verify_mac(algorithm, b"message", &[])?);

            let other_key = HmacKey::generate(*spec)?;
            assert!(!other_key.verify_mac(algorithm, b"message", &mac)?);

            let restored = HmacKey::from_bytes(*spec, key.as_bytes())?;
            assert!(restored.verify_mac(algorithm, b"message", &mac)?);
        }
        Ok(())
    }

    #[test]
    fn wrong_algorithm_for_spec_is_rejected() -> Result<(), CryptoError> {
        let key = HmacKey::generate(MacKeySpec::Hmac512)?;
        let outcome = key.generate_mac(MacAlgorithm::HmacSha256, b"message");
        assert!(matches!(
            outcome,
            Err(CryptoError::UnsupportedAlgorithm {
                algorithm: "HMAC_SHA_256",
                key_spec: "HMAC_512"
            })
        ));
        assert!(matches!(
            key.verify_mac(MacAlgorithm::HmacSha384, b"message", &[0u8; 48]),
            Err(CryptoError::UnsupportedAlgorithm {
                algorithm: "HMAC_SHA_384",
                key_spec: "HMAC_512"
            })
        ));
        Ok(())
    }

    #[test]
    fn material_lengths_follow_kms_import_rules() {
        assert!(HmacKey::from_bytes(MacKeySpec::Hmac256, &[1u8; 64]).is_ok());
        assert!(matches!(
            HmacKey::from_bytes(MacKeySpec::Hmac256, &[1u8; 31]),
            Err(CryptoError::MacKeyLength {
                key_spec: "HMAC_256",
                min: 32,
                max: 64,
                actual: 31
            })
        ));
        assert!(matches!(
            HmacKey::from_bytes(MacKeySpec::Hmac224, &[1u8; 27]),
            Err(CryptoError::MacKeyLength {
                key_spec: "HMAC_224",
                min: 28,
                max: 64,
                actual: 27
            })
        ));
        assert!(matches!(
            HmacKey::from_bytes(MacKeySpec::Hmac512, &[1u8; 129]),
            Err(CryptoError::MacKeyLength {
                key_spec: "HMAC_512",
                min: 64,
                max: 128,
                actual: 129
            })
        ));
    }

    #[test]
    fn debug_hides_the_key() -> Result<(), CryptoError> {
        let key = HmacKey::from_bytes(MacKeySpec::Hmac256, &[0xab; 32])?;
        let printed = format!("{key:?}");
        assert_eq!(printed, "HmacKey { key_spec: Hmac256, .. }");
        Ok(())
    }

    proptest! {
        #[test]
        fn verify_never_panics_on_arbitrary_bytes(
            message in proptest::collection::vec(any::<u8>(), 0..256),
            mac in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let key = HmacKey::from_bytes(MacKeySpec::Hmac384, &[9u8; 48])
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            let verified = key.verify_mac(MacAlgorithm::HmacSha384, &message, &mac)
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert!(!verified);
        }
    }
}
