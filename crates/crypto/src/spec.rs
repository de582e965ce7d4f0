//! The names KMS gives to asymmetric and HMAC key specs and to their
//! algorithms, with what each key spec supports.

use std::fmt;
use std::ops::RangeInclusive;

macro_rules! aws_name_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$variant_meta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$variant_meta])* $variant),+ }

        impl $name {
            /// Every value, in the order KMS lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The exact AWS name.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the exact (case-sensitive) AWS name.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(self.as_str())
            }
        }
    };
}

aws_name_enum!(
    /// The asymmetric key specs: of KMS keys (`KeySpec`) and of data key
    /// pairs (`KeyPairSpec`).
    AsymmetricKeySpec {
        Rsa2048 => "RSA_2048",
        Rsa3072 => "RSA_3072",
        Rsa4096 => "RSA_4096",
        EccNistP256 => "ECC_NIST_P256",
        EccNistP384 => "ECC_NIST_P384",
        EccNistP521 => "ECC_NIST_P521",
        EccSecgP256k1 => "ECC_SECG_P256K1",
    }
);

aws_name_enum!(
    /// Signing algorithms of Sign and Verify.
    SigningAlgorithm {
        RsassaPkcs1V15Sha256 => "RSASSA_PKCS1_V1_5_SHA_256",
        RsassaPkcs1V15Sha384 => "RSASSA_PKCS1_V1_5_SHA_384",
        RsassaPkcs1V15Sha512 => "RSASSA_PKCS1_V1_5_SHA_512",
        RsassaPssSha256 => "RSASSA_PSS_SHA_256",
        RsassaPssSha384 => "RSASSA_PSS_SHA_384",
        RsassaPssSha512 => "RSASSA_PSS_SHA_512",
        EcdsaSha256 => "ECDSA_SHA_256",
        EcdsaSha384 => "ECDSA_SHA_384",
        EcdsaSha512 => "ECDSA_SHA_512",
    }
);

aws_name_enum!(
    /// RSA encryption algorithms: OAEP with MGF1 over the same hash and an
    /// empty label.
    RsaEncryptionAlgorithm {
        OaepSha1 => "RSAES_OAEP_SHA_1",
        OaepSha256 => "RSAES_OAEP_SHA_256",
    }
);

aws_name_enum!(
    /// What the `Message` of Sign and Verify is.
    MessageType {
        /// The message itself; it is hashed with the algorithm's hash.
        Raw => "RAW",
        /// A digest the caller computed with the algorithm's hash.
        Digest => "DIGEST",
    }
);

aws_name_enum!(
    /// The HMAC key specs of KMS keys.
    MacKeySpec {
        Hmac224 => "HMAC_224",
        Hmac256 => "HMAC_256",
        Hmac384 => "HMAC_384",
        Hmac512 => "HMAC_512",
    }
);

aws_name_enum!(
    /// MAC algorithms of GenerateMac and VerifyMac.
    MacAlgorithm {
        HmacSha224 => "HMAC_SHA_224",
        HmacSha256 => "HMAC_SHA_256",
        HmacSha384 => "HMAC_SHA_384",
        HmacSha512 => "HMAC_SHA_512",
    }
);

const RSA_SIGNING_ALGORITHMS: &[SigningAlgorithm] = &[
    SigningAlgorithm::RsassaPkcs1V15Sha256,
    SigningAlgorithm::RsassaPkcs1V15Sha384,
    SigningAlgorithm::RsassaPkcs1V15Sha512,
    SigningAlgorithm::RsassaPssSha256,
    SigningAlgorithm::RsassaPssSha384,
    SigningAlgorithm::RsassaPssSha512,
];
const RSA_ENCRYPTION_ALGORITHMS: &[RsaEncryptionAlgorithm] = &[
    RsaEncryptionAlgorithm::OaepSha1,
    RsaEncryptionAlgorithm::OaepSha256,
];

impl AsymmetricKeySpec {
    /// The RSA modulus size in bits, or `None` for elliptic-curve specs.
    pub const fn rsa_modulus_bits(self) -> Option<usize> {
        match self {
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
            Self::EccNistP256 | Self::EccNistP384 | Self::EccNistP521 | Self::EccSecgP256k1 => None,
        }
    }

    pub const fn is_rsa(self) -> bool {
        self.rsa_modulus_bits().is_some()
    }

    /// The signing algorithms a SIGN_VERIFY key of this spec accepts, in the
    /// order DescribeKey lists them.
    pub const fn signing_algorithms(self) -> &'static [SigningAlgorithm] {
        match self {
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => RSA_SIGNING_ALGORITHMS,
            Self::EccNistP256 | Self::EccSecgP256k1 => &[SigningAlgorithm::EcdsaSha256],
            Self::EccNistP384 => &[SigningAlgorithm::EcdsaSha384],
            Self::EccNistP521 => &[SigningAlgorithm::EcdsaSha512],
        }
    }

    /// The encryption algorithms an ENCRYPT_DECRYPT key of this spec accepts;
    /// empty for elliptic-curve specs, which cannot encrypt.
    pub const fn encryption_algorithms(self) -> &'static [RsaEncryptionAlgorithm] {
        if self.is_rsa() {
            RSA_ENCRYPTION_ALGORITHMS
        } else {
            &[]
        }
    }

    pub fn supports_signing_algorithm(self, algorithm: SigningAlgorithm) -> bool {
        self.signing_algorithms().contains(&algorithm)
    }

    pub fn supports_encryption_algorithm(self, algorithm: RsaEncryptionAlgorithm) -> bool {
        self.encryption_algorithms().contains(&algorithm)
    }

    /// The largest plaintext Encrypt accepts with this key spec and
    /// algorithm (`modulus bytes - 2 * hash length - 2`), or `None` when the
    /// spec cannot encrypt.
    pub const fn max_plaintext_len(self, algorithm: RsaEncryptionAlgorithm) -> Option<usize> {
        match self.rsa_modulus_bits() {
            Some(bits) => Some(bits / 8 - 2 * algorithm.hash_len() - 2),
            None => None,
        }
    }
}

impl SigningAlgorithm {
    /// Length of the algorithm's hash: what a DIGEST message must measure.
    pub const fn digest_len(self) -> usize {
        match self {
            Self::RsassaPkcs1V15Sha256 | Self::RsassaPssSha256 | Self::EcdsaSha256 => 32,
            Self::RsassaPkcs1V15Sha384 | Self::RsassaPssSha384 | Self::EcdsaSha384 => 48,
            Self::RsassaPkcs1V15Sha512 | Self::RsassaPssSha512 | Self::EcdsaSha512 => 64,
        }
    }
}

impl RsaEncryptionAlgorithm {
    /// Length of the OAEP (and MGF1) hash.
    pub const fn hash_len(self) -> usize {
        match self {
            Self::OaepSha1 => 20,
            Self::OaepSha256 => 32,
        }
    }
}

impl MacKeySpec {
    /// Length of the key material Coffer generates for this spec.
    pub const fn generated_key_len(self) -> usize {
        match self {
            Self::Hmac224 => 28,
            Self::Hmac256 => 32,
            Self::Hmac384 => 48,
            Self::Hmac512 => 64,
        }
    }

    /// Lengths KMS accepts for imported key material of this spec.
    pub const fn accepted_key_lens(self) -> RangeInclusive<usize> {
        match self {
            Self::Hmac224 => 28..=64,
            Self::Hmac256 => 32..=64,
            Self::Hmac384 => 48..=128,
            Self::Hmac512 => 64..=128,
        }
    }

    /// The one MAC algorithm a key of this spec computes.
    pub const fn mac_algorithm(self) -> MacAlgorithm {
        match self {
            Self::Hmac224 => MacAlgorithm::HmacSha224,
            Self::Hmac256 => MacAlgorithm::HmacSha256,
            Self::Hmac384 => MacAlgorithm::HmacSha384,
            Self::Hmac512 => MacAlgorithm::HmacSha512,
        }
    }

    /// The MAC algorithms a key of this spec accepts, as DescribeKey lists
    /// them.
    pub const fn mac_algorithms(self) -> &'static [MacAlgorithm] {
        match self {
            Self::Hmac224 => &[MacAlgorithm::HmacSha224],
            Self::Hmac256 => &[MacAlgorithm::HmacSha256],
            Self::Hmac384 => &[MacAlgorithm::HmacSha384],
            Self::Hmac512 => &[MacAlgorithm::HmacSha512],
        }
    }

    pub fn supports_mac_algorithm(self, algorithm: MacAlgorithm) -> bool {
        self.mac_algorithms().contains(&algorithm)
    }
}

impl MacAlgorithm {
    /// Length of the MAC the algorithm produces.
    pub const fn mac_len(self) -> usize {
        match self {
            Self::HmacSha224 => 28,
            Self::HmacSha256 => 32,
            Self::HmacSha384 => 48,
            Self::HmacSha512 => 64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for spec in AsymmetricKeySpec::ALL {
            assert_eq!(AsymmetricKeySpec::parse(spec.as_str()), Some(*spec));
        }
        for algorithm in SigningAlgorithm::ALL {
            assert_eq!(
                SigningAlgorithm::parse(algorithm.as_str()),
                Some(*algorithm)
            );
        }
        for algorithm in RsaEncryptionAlgorithm::ALL {
            assert_eq!(
                RsaEncryptionAlgorithm::parse(algorithm.as_str()),
                Some(*algorithm)
            );
        }
        for message_type in MessageType::ALL {
            assert_eq!(
                MessageType::parse(message_type.as_str()),
                Some(*message_type)
            );
        }
        for spec in MacKeySpec::ALL {
            assert_eq!(MacKeySpec::parse(spec.as_str()), Some(*spec));
        }
        for algorithm in MacAlgorithm::ALL {
            assert_eq!(MacAlgorithm::parse(algorithm.as_str()), Some(*algorithm));
        }
        assert_eq!(SigningAlgorithm::parse("rsassa_pss_sha_256"), None);
        assert_eq!(AsymmetricKeySpec::parse("SM2"), None);
        assert_eq!(AsymmetricKeySpec::parse("ecc_nist_p521"), None);
        assert_eq!(
            SigningAlgorithm::RsassaPssSha256.to_string(),
            "RSASSA_PSS_SHA_256"
        );
        assert_eq!(SigningAlgorithm::EcdsaSha384.as_str(), "ECDSA_SHA_384");
        assert_eq!(MacAlgorithm::HmacSha512.as_str(), "HMAC_SHA_512");
        assert_eq!(
            RsaEncryptionAlgorithm::OaepSha256.as_str(),
            "RSAES_OAEP_SHA_256"
        );
        assert_eq!(
            SigningAlgorithm::RsassaPkcs1V15Sha384.as_str(),
            "RSASSA_PKCS1_V1_5_SHA_384"
        );
    }

    #[test]
    fn max_plaintext_lengths_match_kms() {
        use AsymmetricKeySpec::*;
        use RsaEncryptionAlgorithm::*;
        let expected = [
            (Rsa2048, OaepSha1, 214),
            (Rsa3072, OaepSha1, 342),
            (Rsa4096, OaepSha1, 470),
            (Rsa2048, OaepSha256, 190),
            (Rsa3072, OaepSha256, 318),
            (Rsa4096, OaepSha256, 446),
        ];
        for (spec, algorithm, max) in expected {
            assert_eq!(
                spec.max_plaintext_len(algorithm),
                Some(max),
                "{spec} {algorithm}"
            );
        }
        assert_eq!(EccNistP256.max_plaintext_len(OaepSha256), None);
    }

    #[test]
    fn supported_algorithms_per_spec() {
        assert!(
            AsymmetricKeySpec::Rsa3072
                .supports_signing_algorithm(SigningAlgorithm::RsassaPssSha512)
        );
        assert!(
            !AsymmetricKeySpec::Rsa3072.supports_signing_algorithm(SigningAlgorithm::EcdsaSha256)
        );
        assert_eq!(
            AsymmetricKeySpec::EccNistP256.signing_algorithms(),
            &[SigningAlgorithm::EcdsaSha256]
        );
        assert!(
            !AsymmetricKeySpec::EccNistP384
                .supports_signing_algorithm(SigningAlgorithm::EcdsaSha256)
        );
        assert!(
            AsymmetricKeySpec::EccNistP384
                .encryption_algorithms()
                .is_empty()
        );
        assert!(
            AsymmetricKeySpec::Rsa2048
                .supports_encryption_algorithm(RsaEncryptionAlgorithm::OaepSha1)
        );
        assert!(MacKeySpec::Hmac384.supports_mac_algorithm(MacAlgorithm::HmacSha384));
        assert!(!MacKeySpec::Hmac384.supports_mac_algorithm(MacAlgorithm::HmacSha256));
        for spec in MacKeySpec::ALL {
            assert!(spec.accepted_key_lens().contains(&spec.generated_key_len()));
            assert_eq!(spec.mac_algorithm().mac_len(), spec.generated_key_len());
        }
    }
}
