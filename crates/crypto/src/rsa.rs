//! RSA keys through aws-lc-rs: generation, PKCS#8 and SPKI DER, PKCS#1 v1.5
//! and PSS signatures, RSA-OAEP encryption. Every private-key operation runs
//! in aws-lc (never the `rsa` crate, RUSTSEC-2023-0071).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPrivateDecryptingKey,
    OaepPublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
};
use aws_lc_rs::signature::{self, KeyPair, RsaKeyPair, RsaParameters, RsaSignatureEncoding};
use zeroize::Zeroizing;

use crate::asymmetric::{SigningInput, key_rejected};
use crate::{
    AsymmetricKeySpec, CryptoError, InvalidCiphertext, RsaEncryptionAlgorithm, SigningAlgorithm,
};

const PKCS8: &str = "PKCS#8";
const SPKI: &str = "SubjectPublicKeyInfo";

/// An RSA private key parsed once for both of its uses.
pub(crate) struct RsaPrivateKey {
    signing: RsaKeyPair,
    decrypting: OaepPrivateDecryptingKey,
}

impl RsaPrivateKey {
    /// Slow: RSA-4096 generation can take seconds.
    pub(crate) fn generate(spec: AsymmetricKeySpec) -> Result<Self, CryptoError> {
        let key_size = match spec {
            AsymmetricKeySpec::Rsa2048 => KeySize::Rsa2048,
            AsymmetricKeySpec::Rsa3072 => KeySize::Rsa3072,
            AsymmetricKeySpec::Rsa4096 => KeySize::Rsa4096,
            AsymmetricKeySpec::EccNistP256
            | AsymmetricKeySpec::EccNistP384
            | AsymmetricKeySpec::EccNistP521
            | AsymmetricKeySpec::EccSecgP256k1 => {
                return Err(CryptoError::KeyGeneration);
            }
        };
        let signing = RsaKeyPair::generate(key_size).map_err(|_| CryptoError::KeyGeneration)?;
        let pkcs8 = signing.as_der().map_err(|_| CryptoError::KeyEncoding)?;
        let decrypting_key = PrivateDecryptingKey::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| CryptoError::KeyGeneration)?;
        let decrypting = OaepPrivateDecryptingKey::new(decrypting_key)
            .map_err(|_| CryptoError::KeyGeneration)?;
        Ok(Self {
            signing,
            decrypting,
        })
    }

    pub(crate) fn from_pkcs8(spec: AsymmetricKeySpec, der: &[u8]) -> Result<Self, CryptoError> {
        let decrypting_key = PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|error| key_rejected(spec, PKCS8, error))?;
        if Some(decrypting_key.key_size_bits()) != spec.rsa_modulus_bits() {
            return Err(CryptoError::KeyRejected {
                key_spec: spec.as_str(),
                encoding: PKCS8,
                reason: "wrong modulus size",
            });
        }
        let signing =
            RsaKeyPair::from_pkcs8(der).map_err(|error| key_rejected(spec, PKCS8, error))?;
        let decrypting = OaepPrivateDecryptingKey::new(decrypting_key).map_err(|_| {
            CryptoError::KeyRejected {
                key_spec: spec.as_str(),
                encoding: PKCS8,
                reason: "not usable for RSA-OAEP",
            }
        })?;
        Ok(Self {
            signing,
            decrypting,
        })
    }

    pub(crate) fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let document = self
            .signing
            .as_der()
            .map_err(|_| CryptoError::KeyEncoding)?;
        Ok(Zeroizing::new(document.as_ref().to_vec()))
    }

    pub(crate) fn public_key_spki(&self) -> Result<Vec<u8>, CryptoError> {
        let spki = self
            .signing
            .public_key()
            .as_der()
            .map_err(|_| CryptoError::KeyEncoding)?;
        Ok(spki.as_ref().to_vec())
    }

    pub(crate) fn sign(
        &self,
        algorithm: SigningAlgorithm,
        input: &SigningInput<'_>,
    ) -> Result<Vec<u8>, CryptoError> {
        let Some((encoding, _)) = rsa_signature_parameters(algorithm) else {
            return Err(CryptoError::Sign);
        };
        let mut signature = vec![0u8; self.signing.public_modulus_len()];
        let outcome = match input {
            SigningInput::Message(message) => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                self.signing.sign(encoding, &rng, message, &mut signature)
            }
            SigningInput::Digest(digest) => {
                self.signing.sign_digest(encoding, digest, &mut signature)
            }
        };
        outcome.map_err(|_| CryptoError::Sign)?;
        Ok(signature)
    }

    pub(crate) fn decrypt(
        &self,
        algorithm: RsaEncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, InvalidCiphertext> {
        let mut plaintext = Zeroizing::new(vec![0u8; self.decrypting.min_output_size()]);
        let plaintext_len = self
            .decrypting
            .decrypt(oaep_algorithm(algorithm), ciphertext, &mut plaintext, None)
            .map_err(|_| InvalidCiphertext)?
            .len();
        plaintext.truncate(plaintext_len);
        Ok(plaintext)
    }
}

/// Parses an RSA SubjectPublicKeyInfo of exactly the spec's modulus size
/// and returns it re-encoded canonically.
pub(crate) fn canonical_public_key(
    spec: AsymmetricKeySpec,
    spki: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let public_key =
        PublicEncryptingKey::from_der(spki).map_err(|error| key_rejected(spec, SPKI, error))?;
    if Some(public_key.key_size_bits()) != spec.rsa_modulus_bits() {
        return Err(CryptoError::KeyRejected {
            key_spec: spec.as_str(),
            encoding: SPKI,
            reason: "wrong modulus size",
        });
    }
    let canonical = public_key.as_der().map_err(|_| CryptoError::KeyEncoding)?;
    Ok(canonical.as_ref().to_vec())
}

/// `true` only for a valid signature; any malformed signature is `false`.
pub(crate) fn verify(
    spki: &[u8],
    algorithm: SigningAlgorithm,
    input: &SigningInput<'_>,
    signature: &[u8],
) -> bool {
    let Some((_, parameters)) = rsa_signature_parameters(algorithm) else {
        return false;
    };
    let public_key = signature::UnparsedPublicKey::new(parameters, spki);
    let outcome = match input {
        SigningInput::Message(message) => public_key.verify(message, signature),
        SigningInput::Digest(digest) => public_key.verify_digest(digest, signature),
    };
    outcome.is_ok()
}

pub(crate) fn encrypt(
    spec: AsymmetricKeySpec,
    spki: &[u8],
    algorithm: RsaEncryptionAlgorithm,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let public_key =
        PublicEncryptingKey::from_der(spki).map_err(|error| key_rejected(spec, SPKI, error))?;
    let oaep_key = OaepPublicEncryptingKey::new(public_key).map_err(|_| CryptoError::Encrypt)?;
    let oaep = oaep_algorithm(algorithm);
    let max = oaep_key.max_plaintext_size(oaep);
    debug_assert_eq!(Some(max), spec.max_plaintext_len(algorithm));
    if plaintext.len() > max {
        return Err(CryptoError::PlaintextTooLarge {
            algorithm: algorithm.as_str(),
            key_spec: spec.as_str(),
            max,
        });
    }
    let mut ciphertext = vec![0u8; oaep_key.ciphertext_size()];
    let ciphertext_len = oaep_key
        .encrypt(oaep, plaintext, &mut ciphertext, None)
        .map_err(|_| CryptoError::Encrypt)?
        .len();
    ciphertext.truncate(ciphertext_len);
    Ok(ciphertext)
}

fn oaep_algorithm(algorithm: RsaEncryptionAlgorithm) -> &'static OaepAlgorithm {
    match algorithm {
        RsaEncryptionAlgorithm::OaepSha1 => &OAEP_SHA1_MGF1SHA1,
        RsaEncryptionAlgorithm::OaepSha256 => &OAEP_SHA256_MGF1SHA256,
    }
}

/// Signing encoding and verification parameters. PSS uses a salt as long as
/// the hash on both sides, as KMS does; verification accepts 2048- to
/// 8192-bit moduli (the key spec pins the exact size at load).
fn rsa_signature_parameters(
    algorithm: SigningAlgorithm,
) -> Option<(&'static RsaSignatureEncoding, &'static RsaParameters)> {
    match algorithm {
        SigningAlgorithm::RsassaPkcs1V15Sha256 => Some((
            &signature::RSA_PKCS1_SHA256,
            &signature::RSA_PKCS1_2048_8192_SHA256,
        )),
        SigningAlgorithm::RsassaPkcs1V15Sha384 => Some((
            &signature::RSA_PKCS1_SHA384,
            &signature::RSA_PKCS1_2048_8192_SHA384,
        )),
        SigningAlgorithm::RsassaPkcs1V15Sha512 => Some((
            &signature::RSA_PKCS1_SHA512,
            &signature::RSA_PKCS1_2048_8192_SHA512,
        )),
        SigningAlgorithm::RsassaPssSha256 => Some((
            &signature::RSA_PSS_SHA256,
            &signature::RSA_PSS_2048_8192_SHA256,
        )),
        SigningAlgorithm::RsassaPssSha384 => Some((
            &signature::RSA_PSS_SHA384,
            &signature::RSA_PSS_2048_8192_SHA384,
        )),
        SigningAlgorithm::RsassaPssSha512 => Some((
            &signature::RSA_PSS_SHA512,
            &signature::RSA_PSS_2048_8192_SHA512,
        )),
        SigningAlgorithm::EcdsaSha256
        | SigningAlgorithm::EcdsaSha384
        | SigningAlgorithm::EcdsaSha512 => None,
    }
}
