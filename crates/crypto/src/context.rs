use std::collections::BTreeMap;

/// A KMS encryption context: string pairs bound to a ciphertext as
/// additional authenticated data. The order the caller sends them in does not
/// matter; the canonical form sorts by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    pub fn new(pairs: BTreeMap<String, String>) -> Self {
        Self(pairs)
    }

    pub fn pairs(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Unambiguous byte encoding: pair count, then each key and value with a
    /// 32-bit big-endian length prefix, keys in byte order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let payload: usize = self.0.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let mut out = Vec::with_capacity(4 + payload);
        out.extend_from_slice(&length_prefix(self.0.len()));
        for (key, value) in &self.0 {
            out.extend_from_slice(&length_prefix(key.len()));
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(&length_prefix(value.len()));
            out.extend_from_slice(value.as_bytes());
        }
        out
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for EncryptionContext {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

fn length_prefix(length: usize) -> [u8; 4] {
    // Contexts are bounded far below 4 GiB by the services; saturate rather
    // than wrap so an impossible size can never alias a small one.
    u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_of_insertion_does_not_matter() {
        let first: EncryptionContext = [("b", "2"), ("a", "1")].into_iter().collect();
        let second: EncryptionContext = [("a", "1"), ("b", "2")].into_iter().collect();
        assert_eq!(first.canonical_bytes(), second.canonical_bytes());
    }

    #[test]
    fn boundaries_cannot_be_shifted() {
        let joined: EncryptionContext = [("ab", "c")].into_iter().collect();
        let split: EncryptionContext = [("a", "bc")].into_iter().collect();
        assert_ne!(joined.canonical_bytes(), split.canonical_bytes());
        assert_ne!(
            EncryptionContext::default().canonical_bytes(),
            [("", "")]
                .into_iter()
                .collect::<EncryptionContext>()
                .canonical_bytes()
        );
    }
}
