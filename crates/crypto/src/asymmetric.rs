//! Asymmetric KMS keys and data key pairs: RSA_2048/3072/4096,
//! ECC_NIST_P256/P384/P521 and ECC_SECG_P256K1.
//!
//! Private keys travel as PKCS#8 DER in [`Zeroizing`] buffers (what the keys
//! service seals under the root key, and what GenerateDataKeyPair returns);
//! public keys as X.509 SubjectPublicKeyInfo DER (what GetPublicKey returns).
//!
//! Cost: RSA key generation takes tens of milliseconds for RSA-2048 and can
//! take seconds for RSA-4096, and every RSA private-key operation takes
//! about a millisecond or more. All functions here are synchronous; async
//! callers run them on a blocking pool (`tokio::task::spawn_blocking`).

use std::fmt;

use aws_lc_rs::digest;
use zeroize::Zeroizing;

use crate::ecc::{self, EccPrivateKey};
use crate::rsa::{self, RsaPrivateKey};
use crate::{
    AsymmetricKeySpec, CryptoError, MessageType, RsaEncryptionAlgorithm, SigningAlgorithm,
};

/// A freshly generated key pair as DER: CreateKey seals and stores the
/// private half, GenerateDataKeyPair returns both halves.
pub struct KeyPairDer {
    pub key_spec: AsymmetricKeySpec,
    /// PKCS#8 (v1) DER of the private key. Wiped on drop.
    pub private_key_pkcs8: Zeroizing<Vec<u8>>,
    /// X.509 SubjectPublicKeyInfo DER of the public key.
    pub public_key_spki: Vec<u8>,
}

impl fmt::Debug for KeyPairDer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("KeyPairDer")
            .field("key_spec", &self.key_spec)
            .finish_non_exhaustive()
    }
}

/// Generates a key pair of `key_spec` and returns it as DER (the
/// GenerateDataKeyPair primitive, and the material of CreateKey).
///
/// Synchronous and CPU-bound: RSA-4096 can take seconds. Run it on a
/// blocking pool.
pub fn generate_key_pair(key_spec: AsymmetricKeySpec) -> Result<KeyPairDer, CryptoError> {
    let private_key = AsymmetricPrivateKey::generate(key_spec)?;
    Ok(KeyPairDer {
        key_spec,
        private_key_pkcs8: private_key.to_pkcs8_der()?,
        public_key_spki: private_key.public_key().spki_der().to_vec(),
    })
}

/// What a signature covers: the message itself, or a digest the caller
/// computed with the algorithm's hash.
pub(crate) enum SigningInput<'a> {
    Message(&'a [u8]),
    Digest(digest::Digest),
}

impl<'a> SigningInput<'a> {
    fn new(
        algorithm: SigningAlgorithm,
        message_type: MessageType,
        message: &'a [u8],
    ) -> Result<Self, CryptoError> {
        match message_type {
            MessageType::Raw => Ok(Self::Message(message)),
            MessageType::Digest => {
                let length_error = CryptoError::DigestLength {
                    algorithm: algorithm.as_str(),
                    expected: algorithm.digest_len(),
                    actual: message.len(),
                };
                if message.len() != algorithm.digest_len() {
                    return Err(length_error);
                }
                digest::Digest::import_less_safe(message, digest_algorithm(algorithm))
                    .map(Self::Digest)
                    .map_err(|_| length_error)
            }
        }
    }
}

fn digest_algorithm(algorithm: SigningAlgorithm) -> &'static digest::Algorithm {
    match algorithm {
        SigningAlgorithm::RsassaPkcs1V15Sha256
        | SigningAlgorithm::RsassaPssSha256
        | SigningAlgorithm::EcdsaSha256 => &digest::SHA256,
        SigningAlgorithm::RsassaPkcs1V15Sha384
        | SigningAlgorithm::RsassaPssSha384
        | SigningAlgorithm::EcdsaSha384 => &digest::SHA384,
        SigningAlgorithm::RsassaPkcs1V15Sha512
        | SigningAlgorithm::RsassaPssSha512
        | SigningAlgorithm::EcdsaSha512 => &digest::SHA512,
    }
}

pub(crate) fn key_rejected(
    key_spec: AsymmetricKeySpec,
    encoding: &'static str,
    error: aws_lc_rs::error::KeyRejected,
) -> CryptoError {
    CryptoError::KeyRejected {
        key_spec: key_spec.as_str(),
        encoding,
        reason: error.description_(),
    }
}

fn unsupported(algorithm: &'static str, key_spec: AsymmetricKeySpec) -> CryptoError {
    CryptoError::UnsupportedAlgorithm {
        algorithm,
        key_spec: key_spec.as_str(),
    }
}

enum PrivateKeyBackend {
    Rsa(RsaPrivateKey),
    Ecc(EccPrivateKey),
}

/// An asymmetric private key, parsed and ready to sign or decrypt. Never
/// printed. Parse it once per use (or cache it): parsing validates the key.
pub struct AsymmetricPrivateKey {
    backend: PrivateKeyBackend,
    public_key: AsymmetricPublicKey,
}

impl fmt::Debug for AsymmetricPrivateKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("AsymmetricPrivateKey")
            .field("key_spec", &self.key_spec())
            .finish_non_exhaustive()
    }
}

impl AsymmetricPrivateKey {
    /// Generates a new private key.
    ///
    /// Synchronous and CPU-bound: RSA-4096 can take seconds, RSA-2048 tens
    /// of milliseconds, ECC well under a millisecond. Run it on a blocking
    /// pool.
    pub fn generate(key_spec: AsymmetricKeySpec) -> Result<Self, CryptoError> {
        let backend = if key_spec.is_rsa() {
            PrivateKeyBackend::Rsa(RsaPrivateKey::generate(key_spec)?)
        } else {
            PrivateKeyBackend::Ecc(EccPrivateKey::generate(key_spec)?)
        };
        Self::with_public_key(key_spec, backend)
    }

    /// Parses an unencrypted PKCS#8 DER private key, which must be of
    /// `key_spec`: RSA with exactly the spec's modulus size, or EC on the
    /// spec's curve. Anything else is [`CryptoError::KeyRejected`].
    pub fn from_pkcs8_der(key_spec: AsymmetricKeySpec, der: &[u8]) -> Result<Self, CryptoError> {
        let backend = if key_spec.is_rsa() {
            PrivateKeyBackend::Rsa(RsaPrivateKey::from_pkcs8(key_spec, der)?)
        } else {
            PrivateKeyBackend::Ecc(EccPrivateKey::from_pkcs8(key_spec, der)?)
        };
        Self::with_public_key(key_spec, backend)
    }

    fn with_public_key(
        key_spec: AsymmetricKeySpec,
        backend: PrivateKeyBackend,
    ) -> Result<Self, CryptoError> {
        let spki_der = match &backend {
            PrivateKeyBackend::Rsa(key) => key.public_key_spki()?,
            PrivateKeyBackend::Ecc(key) => key.public_key_spki()?,
        };
        Ok(Self {
            backend,
            public_key: AsymmetricPublicKey { key_spec, spki_der },
        })
    }

    pub fn key_spec(&self) -> AsymmetricKeySpec {
        self.public_key.key_spec
    }

    /// PKCS#8 (v1) DER of the private key, in a buffer wiped on drop.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match &self.backend {
            PrivateKeyBackend::Rsa(key) => key.to_pkcs8(),
            PrivateKeyBackend::Ecc(key) => key.to_pkcs8(),
        }
    }

    pub fn public_key(&self) -> &AsymmetricPublicKey {
        &self.public_key
    }

    /// Signs as KMS Sign does. With [`MessageType::Digest`], `message` is the
    /// digest and must be exactly the algorithm's hash length. RSA signatures
    /// are as long as the modulus; ECDSA signatures are DER
    /// `Ecdsa-Sig-Value`. PSS uses a salt as long as the hash.
    ///
    /// Errors: [`CryptoError::UnsupportedAlgorithm`] when the key spec does
    /// not offer `algorithm`, [`CryptoError::DigestLength`] for a digest of
    /// the wrong length.
    pub fn sign(
        &self,
        algorithm: SigningAlgorithm,
        message_type: MessageType,
        message: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let key_spec = self.key_spec();
        if !key_spec.supports_signing_algorithm(algorithm) {
            return Err(unsupported(algorithm.as_str(), key_spec));
        }
        let input = SigningInput::new(algorithm, message_type, message)?;
        match &self.backend {
            PrivateKeyBackend::Rsa(key) => key.sign(algorithm, &input),
            PrivateKeyBackend::Ecc(key) => key.sign(&input),
        }
    }

    /// Verifies with the public half; see [`AsymmetricPublicKey::verify`].
    pub fn verify(
        &self,
        algorithm: SigningAlgorithm,
        message_type: MessageType,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, CryptoError> {
        self.public_key
            .verify(algorithm, message_type, message, signature)
    }

    /// Decrypts an RSA-OAEP ciphertext (MGF1 with the same hash, empty
    /// label). Any ciphertext that does not decrypt, whatever the reason, is
    /// [`CryptoError::InvalidCiphertext`]; an ECC key or an algorithm the
    /// spec does not offer is [`CryptoError::UnsupportedAlgorithm`].
    pub fn decrypt(
        &self,
        algorithm: RsaEncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let key_spec = self.key_spec();
        match &self.backend {
            PrivateKeyBackend::Rsa(key) if key_spec.supports_encryption_algorithm(algorithm) => {
                Ok(key.decrypt(algorithm, ciphertext)?)
            }
            PrivateKeyBackend::Rsa(_) | PrivateKeyBackend::Ecc(_) => {
                Err(unsupported(algorithm.as_str(), key_spec))
            }
        }
    }
}

/// An asymmetric public key: its key spec and canonical SubjectPublicKeyInfo
/// DER.
#[derive(Clone, PartialEq, Eq)]
pub struct AsymmetricPublicKey {
    key_spec: AsymmetricKeySpec,
    spki_der: Vec<u8>,
}

impl fmt::Debug for AsymmetricPublicKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("AsymmetricPublicKey")
            .field("key_spec", &self.key_spec)
            .field("spki_der_len", &self.spki_der.len())
            .finish()
    }
}

impl AsymmetricPublicKey {
    /// Parses SubjectPublicKeyInfo DER of `key_spec` (RSA of exactly the
    /// spec's modulus size, or EC on the spec's curve) and keeps it in
    /// canonical form. Anything else is [`CryptoError::KeyRejected`].
    pub fn from_spki_der(key_spec: AsymmetricKeySpec, der: &[u8]) -> Result<Self, CryptoError> {
        let spki_der = if key_spec.is_rsa() {
            rsa::canonical_public_key(key_spec, der)?
        } else {
            ecc::canonical_public_key(key_spec, der)?
        };
        Ok(Self { key_spec, spki_der })
    }

    pub fn key_spec(&self) -> AsymmetricKeySpec {
        self.key_spec
    }

    /// The SubjectPublicKeyInfo DER, as GetPublicKey returns it.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Verifies as KMS Verify does: `Ok(true)` for a valid signature,
    /// `Ok(false)` for any other signature bytes (wrong, truncated,
    /// malformed). Errors only for a request KMS rejects before verifying:
    /// [`CryptoError::UnsupportedAlgorithm`] or [`CryptoError::DigestLength`].
    pub fn verify(
        &self,
        algorithm: SigningAlgorithm,
        message_type: MessageType,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, CryptoError> {
        if !self.key_spec.supports_signing_algorithm(algorithm) {
            return Err(unsupported(algorithm.as_str(), self.key_spec));
        }
        let input = SigningInput::new(algorithm, message_type, message)?;
        let valid = if self.key_spec.is_rsa() {
            rsa::verify(&self.spki_der, algorithm, &input, signature)
        } else {
            ecc::verify(self.key_spec, &self.spki_der, algorithm, &input, signature)
        };
        Ok(valid)
    }

    /// Encrypts with RSA-OAEP (MGF1 with the same hash, empty label), as
    /// KMS Encrypt does with an RSA key; the result decrypts with
    /// [`AsymmetricPrivateKey::decrypt`] (and with any standard OAEP
    /// implementation). Errors: [`CryptoError::UnsupportedAlgorithm`] for
    /// an ECC key, [`CryptoError::PlaintextTooLarge`] past
    /// [`AsymmetricKeySpec::max_plaintext_len`].
    pub fn encrypt(
        &self,
        algorithm: RsaEncryptionAlgorithm,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if !self.key_spec.supports_encryption_algorithm(algorithm) {
            return Err(unsupported(algorithm.as_str(), self.key_spec));
        }
        rsa::encrypt(self.key_spec, &self.spki_der, algorithm, plaintext)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;
    use crate::InvalidCiphertext;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// One key per spec for the whole test binary: RSA-4096 generation is
    /// slow, so it happens once, on first use.
    static KEYS: [OnceLock<Result<AsymmetricPrivateKey, String>>; AsymmetricKeySpec::ALL.len()] =
        [const { OnceLock::new() }; AsymmetricKeySpec::ALL.len()];

    fn key(key_spec: AsymmetricKeySpec) -> Result<&'static AsymmetricPrivateKey, String> {
        let slot = AsymmetricKeySpec::ALL
            .iter()
            .position(|candidate| *candidate == key_spec)
            .and_then(|index| KEYS.get(index))
            .ok_or_else(|| format!("no fixture slot for {key_spec}"))?;
        slot.get_or_init(|| {
            AsymmetricPrivateKey::generate(key_spec).map_err(|error| error.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    fn sha(algorithm: SigningAlgorithm, message: &[u8]) -> Vec<u8> {
        digest::digest(digest_algorithm(algorithm), message)
            .as_ref()
            .to_vec()
    }

    fn flip_first_byte(bytes: &[u8]) -> Vec<u8> {
        let mut flipped = bytes.to_vec();
        if let Some(first) = flipped.first_mut() {
            *first ^= 0x01;
        }
        flipped
    }

    #[test]
    fn sign_and_verify_every_spec_algorithm_and_message_type() -> TestResult {
        let message = b"the quick brown fox";
        for key_spec in AsymmetricKeySpec::ALL {
            let private_key = key(*key_spec)?;
            let public_key = private_key.public_key();
            for algorithm in key_spec.signing_algorithms() {
                let digest = sha(*algorithm, message);
                let raw_signature = private_key.sign(*algorithm, MessageType::Raw, message)?;
                let digest_signature =
                    private_key.sign(*algorithm, MessageType::Digest, &digest)?;
                let context = format!("{key_spec} {algorithm}");

                if let Some(bits) = key_spec.rsa_modulus_bits() {
                    assert_eq!(raw_signature.len(), bits / 8, "{context}");
                } else {
                    assert_eq!(raw_signature.first(), Some(&0x30), "{context}: DER");
                }
                for signature in [&raw_signature, &digest_signature] {
                    assert!(
                        public_key.verify(*algorithm, MessageType::Raw, message, signature)?,
                        "{context}"
                    );
                    assert!(
                        public_key.verify(*algorithm, MessageType::Digest, &digest, signature)?,
                        "{context}"
                    );
                    assert!(
                        private_key.verify(*algorithm, MessageType::Raw, message, signature)?,
                        "{context}"
                    );
                    assert!(
                        !public_key.verify(*algorithm, MessageType::Raw, b"another", signature)?,
                        "{context}: other message"
                    );
                    let wrong_digest = flip_first_byte(&digest);
                    assert!(
                        !public_key.verify(
                            *algorithm,
                            MessageType::Digest,
                            &wrong_digest,
                            signature
                        )?,
                        "{context}: other digest"
                    );
                    let flipped = flip_first_byte(signature);
                    assert!(
                        !public_key.verify(*algorithm, MessageType::Raw, message, &flipped)?,
                        "{context}: flipped signature"
                    );
                    let truncated = signature.get(..signature.len() - 1).unwrap_or_default();
                    assert!(
                        !public_key.verify(*algorithm, MessageType::Raw, message, truncated)?,
                        "{context}: truncated signature"
                    );
                    assert!(
                        !public_key.verify(*algorithm, MessageType::Raw, message, &[])?,
                        "{context}: empty signature"
                    );
                }
                // Every other algorithm of the spec rejects the signature.
                for other in key_spec.signing_algorithms() {
                    if other != algorithm {
                        assert!(
                            !public_key.verify(
                                *other,
                                MessageType::Raw,
                                message,
                                &raw_signature
                            )?,
                            "{context} verified as {other}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn signatures_from_another_key_do_not_verify() -> TestResult {
        let rsa_key = key(AsymmetricKeySpec::Rsa2048)?;
        let other_rsa_key = AsymmetricPrivateKey::generate(AsymmetricKeySpec::Rsa2048)?;
        let ecc_key = key(AsymmetricKeySpec::EccNistP256)?;
        let other_ecc_key = AsymmetricPrivateKey::generate(AsymmetricKeySpec::EccNistP256)?;
        for (signer, verifier, algorithm) in [
            (rsa_key, &other_rsa_key, SigningAlgorithm::RsassaPssSha256),
            (
                rsa_key,
                &other_rsa_key,
                SigningAlgorithm::RsassaPkcs1V15Sha256,
            ),
            (ecc_key, &other_ecc_key, SigningAlgorithm::EcdsaSha256),
        ] {
            let signature = signer.sign(algorithm, MessageType::Raw, b"message")?;
            assert!(!verifier.verify(algorithm, MessageType::Raw, b"message", &signature)?);
        }
        Ok(())
    }

    #[test]
    fn ecdsa_and_pss_signatures_are_randomised() -> TestResult {
        for (key_spec, algorithm) in [
            (
                AsymmetricKeySpec::EccNistP384,
                SigningAlgorithm::EcdsaSha384,
            ),
            (
                AsymmetricKeySpec::Rsa2048,
                SigningAlgorithm::RsassaPssSha256,
            ),
        ] {
            let private_key = key(key_spec)?;
            let first = private_key.sign(algorithm, MessageType::Raw, b"message")?;
            let second = private_key.sign(algorithm, MessageType::Raw, b"message")?;
            assert_ne!(first, second, "{algorithm}");
        }
        let private_key = key(AsymmetricKeySpec::Rsa2048)?;
        let first = private_key.sign(
            SigningAlgorithm::RsassaPkcs1V15Sha384,
            MessageType::Raw,
            b"m",
        )?;
        let second = private_key.sign(
            SigningAlgorithm::RsassaPkcs1V15Sha384,
            MessageType::Raw,
            b"m",
        )?;
        assert_eq!(first, second, "PKCS#1 v1.5 is deterministic");
        Ok(())
    }

    #[test]
    fn algorithms_outside_the_spec_are_rejected() -> TestResult {
        let cases = [
            (
                AsymmetricKeySpec::Rsa2048,
                SigningAlgorithm::EcdsaSha256,
                "ECDSA_SHA_256",
                "RSA_2048",
            ),
            (
                AsymmetricKeySpec::EccNistP256,
                SigningAlgorithm::RsassaPssSha256,
                "RSASSA_PSS_SHA_256",
                "ECC_NIST_P256",
            ),
            (
                AsymmetricKeySpec::EccNistP256,
                SigningAlgorithm::EcdsaSha384,
                "ECDSA_SHA_384",
                "ECC_NIST_P256",
            ),
            (
                AsymmetricKeySpec::EccNistP384,
                SigningAlgorithm::EcdsaSha256,
                "ECDSA_SHA_256",
                "ECC_NIST_P384",
            ),
        ];
        for (key_spec, algorithm, expected_algorithm, expected_spec) in cases {
            let private_key = key(key_spec)?;
            let signed = private_key.sign(algorithm, MessageType::Raw, b"message");
            assert!(
                matches!(
                    signed,
                    Err(CryptoError::UnsupportedAlgorithm { algorithm: reported_algorithm, key_spec: reported_spec })
                        if reported_algorithm == expected_algorithm && reported_spec == expected_spec
                ),
                "{signed:?}"
            );
            let verified = private_key.public_key().verify(
                algorithm,
                MessageType::Raw,
                b"message",
                &[0u8; 64],
            );
            assert!(
                matches!(
                    verified,
                    Err(CryptoError::UnsupportedAlgorithm { algorithm: reported_algorithm, key_spec: reported_spec })
                        if reported_algorithm == expected_algorithm && reported_spec == expected_spec
                ),
                "{verified:?}"
            );
        }
        let ecc_key = key(AsymmetricKeySpec::EccNistP384)?;
        for algorithm in RsaEncryptionAlgorithm::ALL {
            assert!(matches!(
                ecc_key.public_key().encrypt(*algorithm, b"secret"),
                Err(CryptoError::UnsupportedAlgorithm {
                    key_spec: "ECC_NIST_P384",
                    ..
                })
            ));
            assert!(matches!(
                ecc_key.decrypt(*algorithm, &[0u8; 96]),
                Err(CryptoError::UnsupportedAlgorithm {
                    key_spec: "ECC_NIST_P384",
                    ..
                })
            ));
        }
        let unsupported = ecc_key.decrypt(RsaEncryptionAlgorithm::OaepSha256, &[]);
        assert_eq!(
            unsupported.map(|_| ()).map_err(|error| error.to_string()),
            Err("RSAES_OAEP_SHA_256 is not supported by key spec ECC_NIST_P384".to_owned())
        );
        Ok(())
    }

    #[test]
    fn digests_of_the_wrong_length_are_rejected() -> TestResult {
        let rsa_key = key(AsymmetricKeySpec::Rsa2048)?;
        let outcome = rsa_key.sign(
            SigningAlgorithm::RsassaPssSha384,
            MessageType::Digest,
            &[7u8; 32],
        );
        assert!(matches!(
            outcome,
            Err(CryptoError::DigestLength {
                algorithm: "RSASSA_PSS_SHA_384",
                expected: 48,
                actual: 32
            })
        ));
        let ecc_key = key(AsymmetricKeySpec::EccNistP256)?;
        let verified = ecc_key.public_key().verify(
            SigningAlgorithm::EcdsaSha256,
            MessageType::Digest,
            &[7u8; 33],
            &[0x30, 0x00],
        );
        assert!(matches!(
            verified,
            Err(CryptoError::DigestLength {
                algorithm: "ECDSA_SHA_256",
                expected: 32,
                actual: 33
            })
        ));
        let empty = ecc_key.sign(SigningAlgorithm::EcdsaSha256, MessageType::Digest, &[]);
        assert_eq!(
            empty.map(|_| ()).map_err(|error| error.to_string()),
            Err("a ECDSA_SHA_256 digest must be 32 bytes, got 0".to_owned())
        );
        Ok(())
    }

    #[test]
    fn rsa_oaep_round_trips_at_every_size_and_algorithm() -> TestResult {
        for key_spec in [
            AsymmetricKeySpec::Rsa2048,
            AsymmetricKeySpec::Rsa3072,
            AsymmetricKeySpec::Rsa4096,
        ] {
            let private_key = key(key_spec)?;
            let public_key = private_key.public_key();
            for algorithm in key_spec.encryption_algorithms() {
                let max = key_spec
                    .max_plaintext_len(*algorithm)
                    .ok_or("RSA specs encrypt")?;
                let largest = vec![0x5a; max];
                for plaintext in [
                    &b""[..],
                    b"x",
                    b"a data key of 32 bytes, say.....",
                    &largest,
                ] {
                    let ciphertext = public_key.encrypt(*algorithm, plaintext)?;
                    assert_eq!(Some(ciphertext.len() * 8), key_spec.rsa_modulus_bits());
                    let decrypted = private_key.decrypt(*algorithm, &ciphertext)?;
                    assert_eq!(decrypted.as_slice(), plaintext, "{key_spec} {algorithm}");
                }
                let too_large = vec![0x5a; max + 1];
                let outcome = public_key.encrypt(*algorithm, &too_large);
                assert!(
                    matches!(
                        outcome,
                        Err(CryptoError::PlaintextTooLarge { algorithm: name, key_spec: spec, max: reported })
                            if name == algorithm.as_str() && spec == key_spec.as_str() && reported == max
                    ),
                    "{outcome:?}"
                );
            }
        }
        let message = CryptoError::PlaintextTooLarge {
            algorithm: "RSAES_OAEP_SHA_1",
            key_spec: "RSA_2048",
            max: 214,
        }
        .to_string();
        assert_eq!(
            message,
            "RSAES_OAEP_SHA_1 with key spec RSA_2048 encrypts at most 214 bytes of plaintext"
        );
        Ok(())
    }

    #[test]
    fn bad_rsa_ciphertexts_are_invalid_ciphertext() -> TestResult {
        let private_key = key(AsymmetricKeySpec::Rsa2048)?;
        let other_key = key(AsymmetricKeySpec::Rsa3072)?;
        let ciphertext = private_key
            .public_key()
            .encrypt(RsaEncryptionAlgorithm::OaepSha256, b"secret")?;
        let other_algorithm = private_key
            .public_key()
            .encrypt(RsaEncryptionAlgorithm::OaepSha1, b"secret")?;
        let other_key_ciphertext = other_key
            .public_key()
            .encrypt(RsaEncryptionAlgorithm::OaepSha256, b"secret")?;

        let mut bad_ciphertexts = vec![
            Vec::new(),
            vec![0u8; 256],
            vec![0xff; 256],
            flip_first_byte(&ciphertext),
            ciphertext.get(1..).unwrap_or_default().to_vec(),
            [ciphertext.as_slice(), &[0]].concat(),
            other_algorithm,
            other_key_ciphertext,
        ];
        let mut last_byte_flipped = ciphertext.clone();
        if let Some(last) = last_byte_flipped.last_mut() {
            *last ^= 0x80;
        }
        bad_ciphertexts.push(last_byte_flipped);

        for bad in bad_ciphertexts {
            let outcome = private_key.decrypt(RsaEncryptionAlgorithm::OaepSha256, &bad);
            assert!(
                matches!(
                    outcome,
                    Err(CryptoError::InvalidCiphertext(InvalidCiphertext))
                ),
                "{outcome:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn pkcs8_and_spki_round_trip() -> TestResult {
        for key_spec in AsymmetricKeySpec::ALL {
            let private_key = key(*key_spec)?;
            let pkcs8 = private_key.to_pkcs8_der()?;
            let reloaded = AsymmetricPrivateKey::from_pkcs8_der(*key_spec, &pkcs8)?;
            assert_eq!(reloaded.public_key(), private_key.public_key());
            let spki = private_key.public_key().spki_der();
            let public_key = AsymmetricPublicKey::from_spki_der(*key_spec, spki)?;
            assert_eq!(&public_key, private_key.public_key());

            let algorithm = key_spec
                .signing_algorithms()
                .first()
                .copied()
                .ok_or("every spec signs")?;
            let signature = reloaded.sign(algorithm, MessageType::Raw, b"reloaded")?;
            assert!(public_key.verify(algorithm, MessageType::Raw, b"reloaded", &signature)?);
        }
        Ok(())
    }

    #[test]
    fn keys_of_another_spec_are_rejected() -> TestResult {
        let cases = [
            (
                AsymmetricKeySpec::Rsa2048,
                AsymmetricKeySpec::Rsa3072,
                "wrong modulus size",
            ),
            (
                AsymmetricKeySpec::Rsa3072,
                AsymmetricKeySpec::Rsa2048,
                "wrong modulus size",
            ),
            (
                AsymmetricKeySpec::Rsa2048,
                AsymmetricKeySpec::EccNistP256,
                "WrongAlgorithm",
            ),
            (
                AsymmetricKeySpec::EccNistP256,
                AsymmetricKeySpec::Rsa2048,
                "WrongAlgorithm",
            ),
            (
                AsymmetricKeySpec::EccNistP256,
                AsymmetricKeySpec::EccNistP384,
                "WrongAlgorithm",
            ),
            (
                AsymmetricKeySpec::EccNistP384,
                AsymmetricKeySpec::EccNistP256,
                "WrongAlgorithm",
            ),
            (
                AsymmetricKeySpec::EccNistP521,
                AsymmetricKeySpec::EccNistP384,
                "WrongAlgorithm",
            ),
            (
                AsymmetricKeySpec::EccSecgP256k1,
                AsymmetricKeySpec::EccNistP256,
                "WrongAlgorithm",
            ),
            (
                AsymmetricKeySpec::EccNistP256,
                AsymmetricKeySpec::EccSecgP256k1,
                "WrongAlgorithm",
            ),
        ];
        for (actual, claimed, expected_reason) in cases {
            let private_key = key(actual)?;
            let pkcs8 = private_key.to_pkcs8_der()?;
            let private_outcome = AsymmetricPrivateKey::from_pkcs8_der(claimed, &pkcs8);
            assert!(
                matches!(
                    private_outcome,
                    Err(CryptoError::KeyRejected { key_spec, encoding: "PKCS#8", reason })
                        if key_spec == claimed.as_str() && reason == expected_reason
                ),
                "{actual} as {claimed}: {private_outcome:?}"
            );
            let public_outcome =
                AsymmetricPublicKey::from_spki_der(claimed, private_key.public_key().spki_der());
            assert!(
                matches!(
                    public_outcome,
                    Err(CryptoError::KeyRejected { key_spec, encoding: "SubjectPublicKeyInfo", .. })
                        if key_spec == claimed.as_str()
                ),
                "{actual} as {claimed}: {public_outcome:?}"
            );
        }
        let garbage = AsymmetricPrivateKey::from_pkcs8_der(AsymmetricKeySpec::Rsa2048, b"not der");
        assert_eq!(
            garbage.map(|_| ()).map_err(|error| error.to_string()),
            Err("the key material is not a valid RSA_2048 PKCS#8 key (InvalidEncoding)".to_owned())
        );
        Ok(())
    }

    #[test]
    fn a_bare_ec_point_is_not_an_spki() -> TestResult {
        let spki = key(AsymmetricKeySpec::EccNistP256)?.public_key().spki_der();
        // The last 65 bytes of a P-256 SPKI are the uncompressed point.
        let point = spki.get(spki.len() - 65..).ok_or("short SPKI")?;
        assert_eq!(point.first(), Some(&0x04));
        let outcome = AsymmetricPublicKey::from_spki_der(AsymmetricKeySpec::EccNistP256, point);
        assert!(matches!(
            outcome,
            Err(CryptoError::KeyRejected {
                key_spec: "ECC_NIST_P256",
                encoding: "SubjectPublicKeyInfo",
                reason: "InvalidEncoding"
            })
        ));
        Ok(())
    }

    #[test]
    fn generated_key_pairs_have_matching_halves() -> TestResult {
        // RSA_3072 and RSA_4096 are left out: slow to generate, and the
        // same code as RSA_2048.
        for key_spec in AsymmetricKeySpec::ALL.iter().copied().filter(|spec| {
            !matches!(
                spec,
                AsymmetricKeySpec::Rsa3072 | AsymmetricKeySpec::Rsa4096
            )
        }) {
            let pair = generate_key_pair(key_spec)?;
            assert_eq!(pair.key_spec, key_spec);
            let private_key =
                AsymmetricPrivateKey::from_pkcs8_der(key_spec, &pair.private_key_pkcs8)?;
            assert_eq!(
                private_key.public_key().spki_der(),
                pair.public_key_spki.as_slice()
            );
            assert_eq!(
                format!("{pair:?}"),
                format!("KeyPairDer {{ key_spec: {key_spec:?}, .. }}")
            );
        }
        Ok(())
    }

    #[test]
    fn keys_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<AsymmetricPrivateKey>();
        assert_send_sync::<AsymmetricPublicKey>();
        assert_send_sync::<KeyPairDer>();
        assert_send_sync::<crate::HmacKey>();
        assert_send_sync::<CryptoError>();
    }

    #[test]
    fn debug_output_hides_private_keys() -> TestResult {
        let private_key = key(AsymmetricKeySpec::EccNistP256)?;
        assert_eq!(
            format!("{private_key:?}"),
            "AsymmetricPrivateKey { key_spec: EccNistP256, .. }"
        );
        Ok(())
    }

    fn arbitrary_rsa_algorithm() -> impl Strategy<Value = SigningAlgorithm> {
        proptest::sample::select(AsymmetricKeySpec::Rsa2048.signing_algorithms())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn rsa_verify_never_panics(
            algorithm in arbitrary_rsa_algorithm(),
            message in proptest::collection::vec(any::<u8>(), 0..64),
            signature in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..600),
                proptest::collection::vec(any::<u8>(), 256..=256),
            ],
        ) {
            let public_key = key(AsymmetricKeySpec::Rsa2048).map_err(TestCaseError::fail)?.public_key();
            let raw_verified = public_key.verify(algorithm, MessageType::Raw, &message, &signature);
            prop_assert!(matches!(raw_verified, Ok(false)));
            let digest = sha(algorithm, &message);
            let digest_verified = public_key.verify(algorithm, MessageType::Digest, &digest, &signature);
            prop_assert!(matches!(digest_verified, Ok(false)));
        }

        #[test]
        fn ecdsa_verify_never_panics(
            message in proptest::collection::vec(any::<u8>(), 0..64),
            signature in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..120),
                // DER-looking: SEQUENCE, length, then two INTEGER-ish halves.
                proptest::collection::vec(any::<u8>(), 66..=70).prop_map(|mut bytes| {
                    if let Some(tag) = bytes.first_mut() { *tag = 0x30; }
                    bytes
                }),
            ],
        ) {
            for (key_spec, algorithm) in [
                (AsymmetricKeySpec::EccNistP256, SigningAlgorithm::EcdsaSha256),
                (AsymmetricKeySpec::EccNistP384, SigningAlgorithm::EcdsaSha384),
                (AsymmetricKeySpec::EccNistP521, SigningAlgorithm::EcdsaSha512),
                (AsymmetricKeySpec::EccSecgP256k1, SigningAlgorithm::EcdsaSha256),
            ] {
                let public_key = key(key_spec).map_err(TestCaseError::fail)?.public_key();
                let verified = public_key.verify(algorithm, MessageType::Raw, &message, &signature);
                prop_assert!(matches!(verified, Ok(false)));
            }
        }

        #[test]
        fn rsa_decrypt_never_panics(
            ciphertext in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..600),
                proptest::collection::vec(any::<u8>(), 256..=256),
            ],
            algorithm in proptest::sample::select(RsaEncryptionAlgorithm::ALL),
        ) {
            let private_key = key(AsymmetricKeySpec::Rsa2048).map_err(TestCaseError::fail)?;
            let outcome = private_key.decrypt(algorithm, &ciphertext);
            prop_assert!(matches!(outcome, Err(CryptoError::InvalidCiphertext(InvalidCiphertext))));
        }

        #[test]
        fn arbitrary_key_bytes_are_rejected(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            key_spec in proptest::sample::select(AsymmetricKeySpec::ALL),
        ) {
            let private = AsymmetricPrivateKey::from_pkcs8_der(key_spec, &bytes);
            let private_rejected = matches!(private, Err(CryptoError::KeyRejected { .. }));
            prop_assert!(private_rejected);
            let public = AsymmetricPublicKey::from_spki_der(key_spec, &bytes);
            let public_rejected = matches!(public, Err(CryptoError::KeyRejected { .. }));
            prop_assert!(public_rejected);
        }
    }
}
