use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::CryptoError;

const ROOT_KEY_LEN: usize = 32;

/// Where the instance root key comes from. It is never stored in the
/// database: a file (a mounted Kubernetes Secret) or an environment variable.
/// An HSM-backed provider (PKCS#11) comes later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootKeySource {
    /// A file holding either the 32 raw bytes or their base64 encoding.
    File(PathBuf),
    /// An environment variable holding the base64 encoding.
    Env(String),
}

#[derive(Debug, Error)]
pub enum RootKeyError {
    #[error("cannot read root key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("root key environment variable {0} is not set")]
    MissingEnv(String),
    #[error("root key from {origin} must be 32 bytes, raw or base64-encoded")]
    Format { origin: String },
    #[error(
        "root key from {origin} is 32 bytes of text, not a key: write 32 random bytes, raw or base64-encoded (head -c 32 /dev/urandom | base64)"
    )]
    Text { origin: String },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The 256-bit instance root key that seals all key material at rest.
pub struct RootKey(Zeroizing<[u8; ROOT_KEY_LEN]>);

impl RootKey {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = Zeroizing::new([0u8; ROOT_KEY_LEN]);
        aws_lc_rs::rand::fill(key.as_mut_slice()).map_err(|_| CryptoError::Random)?;
        Ok(Self(key))
    }

    pub fn load(source: &RootKeySource) -> Result<Self, RootKeyError> {
        match source {
            RootKeySource::File(path) => {
                let contents =
                    Zeroizing::new(std::fs::read(path).map_err(|source| RootKeyError::Read {
                        path: path.clone(),
                        source,
                    })?);
                Self::from_file_contents(&contents, &path.display().to_string())
            }
            RootKeySource::Env(variable) => {
                let value = Zeroizing::new(
                    std::env::var(variable)
                        .map_err(|_| RootKeyError::MissingEnv(variable.clone()))?,
                );
                Self::from_base64(value.trim(), &format!("${variable}"))
            }
        }
    }

    /// Raw 32 bytes, or base64 text (surrounding whitespace ignored). 32
    /// bytes that are all printable text (32 hex digits, a passphrase) are
    /// refused: random key bytes are that almost never (below 1 in 10^13),
    /// and taken as raw they would be a far weaker key than they look.
    pub fn from_file_contents(contents: &[u8], origin: &str) -> Result<Self, RootKeyError> {
        if contents.len() == ROOT_KEY_LEN {
            if contents
                .iter()
                .all(|byte| byte.is_ascii_graphic() || byte.is_ascii_whitespace())
            {
                return Err(RootKeyError::Text {
                    origin: origin.to_owned(),
                });
            }
            let mut raw = Zeroizing::new([0u8; ROOT_KEY_LEN]);
            raw.copy_from_slice(contents);
            return Ok(Self(raw));
        }
        let text = std::str::from_utf8(contents).map_err(|_| RootKeyError::Format {
            origin: origin.to_owned(),
        })?;
        Self::from_base64(text.trim(), origin)
    }

    fn from_base64(text: &str, origin: &str) -> Result<Self, RootKeyError> {
        let decoded = Zeroizing::new(STANDARD.decode(text).map_err(|_| RootKeyError::Format {
            origin: origin.to_owned(),
        })?);
        if decoded.len() != ROOT_KEY_LEN {
            return Err(RootKeyError::Format {
                origin: origin.to_owned(),
            });
        }
        let mut key = Zeroizing::new([0u8; ROOT_KEY_LEN]);
        key.copy_from_slice(&decoded);
        Ok(Self(key))
    }

    /// The base64 form, for writing a freshly generated key to a file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_slice()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("RootKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_raw_and_base64_files() -> Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let raw_path = directory.path().join("raw");
        std::fs::write(&raw_path, [0x9c_u8; 32])?;
        let raw = RootKey::load(&RootKeySource::File(raw_path))?;
        assert_eq!(raw.as_bytes(), &[0x9c_u8; 32]);

        let text_path = directory.path().join("b64");
        std::fs::write(&text_path, format!("{}\n", raw.to_base64().as_str()))?;
        let from_text = RootKey::load(&RootKeySource::File(text_path))?;
        assert_eq!(from_text.as_bytes(), raw.as_bytes());
        Ok(())
    }

    #[test]
    fn rejects_wrong_sizes_without_echoing_contents() -> Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("short");
        std::fs::write(&path, "c2hvcnQ=")?;
        let error = RootKey::load(&RootKeySource::File(path)).err();
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("must be 32 bytes"), "{message}");
        assert!(!message.contains("c2hvcnQ"), "{message}");
        Ok(())
    }

    #[test]
    fn thirty_two_bytes_of_text_are_not_taken_as_a_raw_key()
    -> Result<(), Box<dyn std::error::Error>> {
        // What `openssl rand -hex 16` prints, without its newline.
        let hex = "0123456789abcdef0123456789abcdef";
        let error = RootKey::from_file_contents(hex.as_bytes(), "key.txt").err();
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("32 bytes of text"), "{message}");
        assert!(!message.contains(hex), "{message}");
        // Raw bytes with one that is not text are still a key.
        let mut raw = [b'a'; 32];
        if let Some(byte) = raw.get_mut(7) {
            *byte = 0;
        }
        assert_eq!(RootKey::from_file_contents(&raw, "raw")?.as_bytes(), &raw);
        Ok(())
    }

    #[test]
    fn missing_env_is_named() {
        let error = RootKey::load(&RootKeySource::Env("COFFER_TEST_NO_SUCH_VAR".into())).err();
        assert!(
            matches!(error, Some(RootKeyError::MissingEnv(name)) if name == "COFFER_TEST_NO_SUCH_VAR")
        );
    }

    #[test]
    fn debug_hides_the_key() -> Result<(), CryptoError> {
        assert_eq!(format!("{:?}", RootKey::generate()?), "RootKey(..)");
        Ok(())
    }
}
