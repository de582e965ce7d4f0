//! Coffer's cryptographic core: the instance root key, sealing of key
//! material at rest, and the self-describing ciphertext blob format.
//!
//! Everything here is pure computation over byte strings; storage and the
//! gRPC edge live elsewhere. Secrets are held in [`zeroize::Zeroizing`]
//! buffers and no `Debug` impl prints them.

mod blob;
mod context;
mod error;
mod material;
mod random;
mod root_key;
mod seal;

pub use blob::{BLOB_FORMAT_V1, ParsedBlob, encrypt_symmetric, parse_blob};
pub use context::EncryptionContext;
pub use error::{CryptoError, InvalidCiphertext};
pub use material::{MaterialId, SymmetricKeyMaterial};
pub use random::random_bytes;
pub use root_key::{RootKey, RootKeyError, RootKeySource};
pub use seal::{SealBinding, seal, unseal};
pub use zeroize::Zeroizing;
