use thiserror::Error;

/// The one answer to any ciphertext that cannot be decrypted: malformed,
/// truncated, tampered, made under another key or with another encryption
/// context. It deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the ciphertext is invalid or does not belong to this key and encryption context")]
pub struct InvalidCiphertext;

/// Failures of the crypto core other than a bad ciphertext.
#[derive(Debug, Error)]
pub enum CryptoError {
    /// The system random generator failed.
    #[error("the random generator failed")]
    Random,
    /// Key material has the wrong length for its algorithm.
    #[error("key material must be {expected} bytes, got {actual}")]
    MaterialLength { expected: usize, actual: usize },
    /// A sealed record did not open under the root key: the database row was
    /// altered, or it was sealed under another root key or binding.
    #[error("sealed key material failed authentication (wrong root key or altered record)")]
    Unseal,
    /// A key id does not fit in the blob header.
    #[error("key id must be 1 to 64 printable ASCII characters")]
    KeyIdFormat,
    /// The AEAD refused to encrypt (input larger than the algorithm allows).
    #[error("encryption failed")]
    Encrypt,
}
