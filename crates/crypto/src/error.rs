use thiserror::Error;

/// The one answer to any ciphertext that cannot be decrypted: malformed,
/// truncated, tampered, made under another key or with another encryption
/// context. It deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the ciphertext is invalid or does not belong to this key and encryption context")]
pub struct InvalidCiphertext;

/// Failures of the crypto core. The symmetric blob reports a bad ciphertext
/// as [`InvalidCiphertext`] alone; the asymmetric operations report it as
/// [`CryptoError::InvalidCiphertext`]. No message carries key material,
/// plaintext or digests.
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
    /// The key spec does not support the requested algorithm (an ECC key
    /// asked to encrypt, `ECDSA_SHA_256` with a P-384 key, `HMAC_SHA_256`
    /// with an `HMAC_512` key, ...).
    #[error("{algorithm} is not supported by key spec {key_spec}")]
    UnsupportedAlgorithm {
        algorithm: &'static str,
        key_spec: &'static str,
    },
    /// A DIGEST message is not exactly as long as the algorithm's hash.
    #[error("a {algorithm} digest must be {expected} bytes, got {actual}")]
    DigestLength {
        algorithm: &'static str,
        expected: usize,
        actual: usize,
    },
    /// The plaintext is larger than RSA-OAEP can encrypt with this key.
    #[error("{algorithm} with key spec {key_spec} encrypts at most {max} bytes of plaintext")]
    PlaintextTooLarge {
        algorithm: &'static str,
        key_spec: &'static str,
        max: usize,
    },
    /// Key material does not parse as the stated key spec (wrong encoding,
    /// key type, curve or modulus size).
    #[error("the key material is not a valid {key_spec} {encoding} key ({reason})")]
    KeyRejected {
        key_spec: &'static str,
        encoding: &'static str,
        reason: &'static str,
    },
    /// HMAC key material has a length the key spec does not accept.
    #[error("{key_spec} key material must be {min} to {max} bytes, got {actual}")]
    MacKeyLength {
        key_spec: &'static str,
        min: usize,
        max: usize,
        actual: usize,
    },
    /// An asymmetric ciphertext did not decrypt (malformed, wrong length,
    /// made under another key or with another algorithm).
    #[error(transparent)]
    InvalidCiphertext(#[from] InvalidCiphertext),
    /// The library failed to generate a key pair.
    #[error("key generation failed")]
    KeyGeneration,
    /// The library failed to sign with a valid key and input.
    #[error("signing failed")]
    Sign,
    /// The library failed to serialise a key to DER.
    #[error("key encoding failed")]
    KeyEncoding,
}
