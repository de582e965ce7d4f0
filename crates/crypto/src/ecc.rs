//! ECDSA over NIST P-256, P-384 and P-521 and over secp256k1 through aws-lc-rs, with DER (ASN.1)
//! signatures as KMS returns them.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, EcdsaSigningAlgorithm, EcdsaVerificationAlgorithm, KeyPair,
};
use zeroize::Zeroizing;

use crate::asymmetric::{SigningInput, key_rejected};
use crate::{AsymmetricKeySpec, CryptoError, SigningAlgorithm};

const PKCS8: &str = "PKCS#8";
const SPKI: &str = "SubjectPublicKeyInfo";
/// Tag of a DER SEQUENCE: a SubjectPublicKeyInfo starts with it, a bare
/// SEC1 point (which aws-lc would also accept) does not.
const DER_SEQUENCE_TAG: u8 = 0x30;

pub(crate) struct EccPrivateKey(EcdsaKeyPair);

impl EccPrivateKey {
    pub(crate) fn generate(spec: AsymmetricKeySpec) -> Result<Self, CryptoError> {
        let Some((algorithm, _)) = curve_algorithms(spec) else {
            return Err(CryptoError::KeyGeneration);
        };
        EcdsaKeyPair::generate(algorithm)
            .map(Self)
            .map_err(|_| CryptoError::KeyGeneration)
    }

    pub(crate) fn from_pkcs8(spec: AsymmetricKeySpec, der: &[u8]) -> Result<Self, CryptoError> {
        let Some((algorithm, _)) = curve_algorithms(spec) else {
            return Err(CryptoError::KeyRejected {
                key_spec: spec.as_str(),
                encoding: PKCS8,
                reason: "not an elliptic-curve key spec",
            });
        };
        EcdsaKeyPair::from_pkcs8(algorithm, der)
            .map(Self)
            .map_err(|error| key_rejected(spec, PKCS8, error))
    }

    pub(crate) fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let document = self.0.to_pkcs8v1().map_err(|_| CryptoError::KeyEncoding)?;
        Ok(Zeroizing::new(document.as_ref().to_vec()))
    }

    pub(crate) fn public_key_spki(&self) -> Result<Vec<u8>, CryptoError> {
        let spki = self
            .0
            .public_key()
            .as_der()
            .map_err(|_| CryptoError::KeyEncoding)?;
        Ok(spki.as_ref().to_vec())
    }

    /// The key's curve fixes the algorithm; the caller has checked that
    /// `algorithm` belongs to the key spec.
    pub(crate) fn sign(&self, input: &SigningInput<'_>) -> Result<Vec<u8>, CryptoError> {
        let outcome = match input {
            SigningInput::Message(message) => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                self.0.sign(&rng, message)
            }
            SigningInput::Digest(digest) => self.0.sign_digest(digest),
        };
        let signature = outcome.map_err(|_| CryptoError::Sign)?;
        Ok(signature.as_ref().to_vec())
    }
}

/// Parses an EC SubjectPublicKeyInfo on the spec's curve and returns it
/// re-encoded canonically (named curve, uncompressed point).
pub(crate) fn canonical_public_key(
    spec: AsymmetricKeySpec,
    spki: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let Some((_, verification)) = curve_algorithms(spec) else {
        return Err(CryptoError::KeyRejected {
            key_spec: spec.as_str(),
            encoding: SPKI,
            reason: "not an elliptic-curve key spec",
        });
    };
    if spki.first() != Some(&DER_SEQUENCE_TAG) {
        return Err(CryptoError::KeyRejected {
            key_spec: spec.as_str(),
            encoding: SPKI,
            reason: "InvalidEncoding",
        });
    }
    let parsed = signature::UnparsedPublicKey::new(verification, spki)
        .parse()
        .map_err(|error| key_rejected(spec, SPKI, error))?;
    let canonical = parsed.as_der().map_err(|_| CryptoError::KeyEncoding)?;
    Ok(canonical.as_ref().to_vec())
}

/// `true` only for a valid DER signature; anything else is `false`.
pub(crate) fn verify(
    spec: AsymmetricKeySpec,
    spki: &[u8],
    algorithm: SigningAlgorithm,
    input: &SigningInput<'_>,
    signature_der: &[u8],
) -> bool {
    let Some((_, verification)) = curve_algorithms(spec) else {
        return false;
    };
    if !spec.supports_signing_algorithm(algorithm) {
        return false;
    }
    let public_key = signature::UnparsedPublicKey::new(verification, spki);
    let outcome = match input {
        SigningInput::Message(message) => public_key.verify(message, signature_der),
        SigningInput::Digest(digest) => public_key.verify_digest(digest, signature_der),
    };
    outcome.is_ok()
}

/// KMS pairs each curve with one hash: P-256 and secp256k1 with SHA-256,
/// P-384 with SHA-384, P-521 with SHA-512.
fn curve_algorithms(
    spec: AsymmetricKeySpec,
) -> Option<(
    &'static EcdsaSigningAlgorithm,
    &'static EcdsaVerificationAlgorithm,
)> {
    match spec {
        AsymmetricKeySpec::EccNistP256 => Some((
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &signature::ECDSA_P256_SHA256_ASN1,
        )),
        AsymmetricKeySpec::EccNistP384 => Some((
            &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            &signature::ECDSA_P384_SHA384_ASN1,
        )),
        AsymmetricKeySpec::EccNistP521 => Some((
            &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
            &signature::ECDSA_P521_SHA512_ASN1,
        )),
        AsymmetricKeySpec::EccSecgP256k1 => Some((
            &signature::ECDSA_P256K1_SHA256_ASN1_SIGNING,
            &signature::ECDSA_P256K1_SHA256_ASN1,
        )),
        AsymmetricKeySpec::Rsa2048 | AsymmetricKeySpec::Rsa3072 | AsymmetricKeySpec::Rsa4096 => {
            None
        }
    }
}
