//! Coffer's cryptographic core: the instance root key, sealing of key
//! material at rest, the self-describing ciphertext blob format, and the
//! asymmetric (RSA, ECDSA) and HMAC primitives of the KMS key specs.
//!
//! Everything here is pure computation over byte strings; storage and the
//! gRPC edge live elsewhere. Secrets are held in [`zeroize::Zeroizing`]
//! buffers and no `Debug` impl prints them.

mod asymmetric;
mod blob;
mod context;
mod ecc;
mod error;
mod hmac;
mod material;
mod random;
mod root_key;
mod rsa;
mod seal;
mod spec;

pub use asymmetric::{AsymmetricPrivateKey, AsymmetricPublicKey, KeyPairDer, generate_key_pair};
pub use blob::{BLOB_FORMAT_V1, BLOB_FORMAT_V2, ParsedBlob, encrypt_symmetric, parse_blob};
pub use context::EncryptionContext;
pub use error::{CryptoError, InvalidCiphertext};
pub use hmac::HmacKey;
pub use material::{MaterialId, SymmetricKeyMaterial};
pub use random::random_bytes;
pub use root_key::{RootKey, RootKeyError, RootKeySource};
pub use seal::{SealBinding, seal, unseal};
pub use spec::{
    AsymmetricKeySpec, MacAlgorithm, MacKeySpec, MessageType, RsaEncryptionAlgorithm,
    SigningAlgorithm,
};
pub use zeroize::Zeroizing;
