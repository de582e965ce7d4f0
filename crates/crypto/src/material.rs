use std::fmt;

use zeroize::Zeroizing;

use crate::CryptoError;
use crate::random::random_array;

/// Length of a SYMMETRIC_DEFAULT backing key: AES-256.
pub(crate) const SYMMETRIC_KEY_LEN: usize = 32;

/// Identifies one version of a key's material (a backing key). Ciphertext
/// blobs name it, so rotated keys keep decrypting old blobs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaterialId([u8; 16]);

impl MaterialId {
    pub const LEN: usize = 16;

    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self(random_array()?))
    }

    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lowercase hex, the form stored in databases and bound into seals.
    pub fn to_hex(&self) -> String {
        let mut hex = String::with_capacity(32);
        for byte in self.0 {
            for nibble in [byte >> 4, byte & 0x0f] {
                hex.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
            }
        }
        hex
    }

    /// Parses the 32-character lowercase or uppercase hex form.
    pub fn from_hex(text: &str) -> Option<Self> {
        // `from_str_radix` alone would take a sign: "+a" is 0x0a.
        if text.len() != 32 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (index, slot) in bytes.iter_mut().enumerate() {
            let pair = text.get(index * 2..index * 2 + 2)?;
            *slot = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Debug for MaterialId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "MaterialId({})", self.to_hex())
    }
}

impl fmt::Display for MaterialId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_hex())
    }
}

/// A 256-bit AES-GCM backing key. Wiped on drop; never printed.
#[derive(Clone)]
pub struct SymmetricKeyMaterial(Zeroizing<[u8; SYMMETRIC_KEY_LEN]>);

impl SymmetricKeyMaterial {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = Zeroizing::new([0u8; SYMMETRIC_KEY_LEN]);
        aws_lc_rs::rand::fill(key.as_mut_slice()).map_err(|_| CryptoError::Random)?;
        Ok(Self(key))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; SYMMETRIC_KEY_LEN] =
            bytes.try_into().map_err(|_| CryptoError::MaterialLength {
                expected: SYMMETRIC_KEY_LEN,
                actual: bytes.len(),
            })?;
        Ok(Self(Zeroizing::new(array)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl fmt::Debug for SymmetricKeyMaterial {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("SymmetricKeyMaterial(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_id_hex_round_trips() {
        let id = MaterialId::from_bytes([0xab; 16]);
        assert_eq!(id.to_hex(), "ab".repeat(16));
        assert_eq!(MaterialId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(MaterialId::from_hex("zz"), None);
        assert_eq!(MaterialId::from_hex(&"g0".repeat(16)), None);
        // Hex digits only: no sign, though `u8::from_str_radix` takes one.
        assert_eq!(MaterialId::from_hex(&"+a".repeat(16)), None);
    }

    #[test]
    fn material_debug_hides_the_key() {
        let material = SymmetricKeyMaterial::from_bytes(&[7u8; 32]);
        assert!(matches!(material, Ok(ref m) if format!("{m:?}") == "SymmetricKeyMaterial(..)"));
        assert!(matches!(
            SymmetricKeyMaterial::from_bytes(&[1u8; 31]),
            Err(CryptoError::MaterialLength {
                expected: 32,
                actual: 31
            })
        ));
    }
}
