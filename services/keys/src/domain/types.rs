//! The vocabulary of the keys service, as KMS names it.

use std::fmt;

use coffer_platform::arn::AccountId;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }

            pub fn names() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// What a key's material is.
    KeySpec {
        SymmetricDefault => "SYMMETRIC_DEFAULT",
        Rsa2048 => "RSA_2048",
        Rsa3072 => "RSA_3072",
        Rsa4096 => "RSA_4096",
        EccNistP256 => "ECC_NIST_P256",
        EccNistP384 => "ECC_NIST_P384",
        EccNistP521 => "ECC_NIST_P521",
        EccSecgP256k1 => "ECC_SECG_P256K1",
        Hmac224 => "HMAC_224",
        Hmac256 => "HMAC_256",
        Hmac384 => "HMAC_384",
        Hmac512 => "HMAC_512",
        Sm2 => "SM2",
        EccNistEdwards25519 => "ECC_NIST_EDWARDS25519",
        MlDsa44 => "ML_DSA_44",
        MlDsa65 => "ML_DSA_65",
        MlDsa87 => "ML_DSA_87",
    }
);

/// The three kinds of key KMS tells apart by key spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    SymmetricEncryption,
    Asymmetric,
    Hmac,
}

impl KeySpec {
    pub fn kind(self) -> KeyKind {
        match self {
            Self::SymmetricDefault => KeyKind::SymmetricEncryption,
            Self::Rsa2048
            | Self::Rsa3072
            | Self::Rsa4096
            | Self::EccNistP256
            | Self::EccNistP384
            | Self::EccNistP521
            | Self::EccSecgP256k1
            | Self::Sm2
            | Self::EccNistEdwards25519
            | Self::MlDsa44
            | Self::MlDsa65
            | Self::MlDsa87 => KeyKind::Asymmetric,
            Self::Hmac224 | Self::Hmac256 | Self::Hmac384 | Self::Hmac512 => KeyKind::Hmac,
        }
    }
}

string_enum!(
    /// What a key may be used for.
    KeyUsage {
        EncryptDecrypt => "ENCRYPT_DECRYPT",
        SignVerify => "SIGN_VERIFY",
        GenerateVerifyMac => "GENERATE_VERIFY_MAC",
        KeyAgreement => "KEY_AGREEMENT",
    }
);

string_enum!(
    /// The key states of KMS.
    KeyState {
        Creating => "Creating",
        Enabled => "Enabled",
        Disabled => "Disabled",
        PendingDeletion => "PendingDeletion",
        PendingImport => "PendingImport",
        PendingReplicaDeletion => "PendingReplicaDeletion",
        Unavailable => "Unavailable",
        Updating => "Updating",
    }
);

string_enum!(
    /// Where a key's material came from.
    Origin {
        AwsKms => "AWS_KMS",
        External => "EXTERNAL",
        AwsCloudhsm => "AWS_CLOUDHSM",
    }
);

string_enum!(
    /// Who manages a key: the customer, or Coffer itself (service-managed keys).
    KeyManager {
        Customer => "CUSTOMER",
        Aws => "AWS",
    }
);

string_enum!(
    /// Encryption algorithms.
    EncryptionAlgorithm {
        SymmetricDefault => "SYMMETRIC_DEFAULT",
        RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
        RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
        Sm2Pke => "SM2PKE",
    }
);

string_enum!(
    /// Every signing algorithm KMS names. Coffer's key specs support those
    /// `coffer_crypto::SigningAlgorithm` implements; a key refuses any other
    /// as one not valid for its key spec (InvalidKeyUsageException), as KMS
    /// refuses `ECDSA_SHA_512` for an `ECC_NIST_P256` key.
    SigningAlgorithmSpec {
        RsassaPssSha256 => "RSASSA_PSS_SHA_256",
        RsassaPssSha384 => "RSASSA_PSS_SHA_384",
        RsassaPssSha512 => "RSASSA_PSS_SHA_512",
        RsassaPkcs1V15Sha256 => "RSASSA_PKCS1_V1_5_SHA_256",
        RsassaPkcs1V15Sha384 => "RSASSA_PKCS1_V1_5_SHA_384",
        RsassaPkcs1V15Sha512 => "RSASSA_PKCS1_V1_5_SHA_512",
        EcdsaSha256 => "ECDSA_SHA_256",
        EcdsaSha384 => "ECDSA_SHA_384",
        EcdsaSha512 => "ECDSA_SHA_512",
        Sm2Dsa => "SM2DSA",
        MlDsaShake256 => "ML_DSA_SHAKE_256",
        Ed25519Sha512 => "ED25519_SHA_512",
        Ed25519PhSha512 => "ED25519_PH_SHA_512",
    }
);

string_enum!(
    /// Every MAC algorithm KMS names; as with signing algorithms, one that
    /// `coffer_crypto::MacAlgorithm` does not implement fits no key spec.
    MacAlgorithmSpec {
        HmacSha224 => "HMAC_SHA_224",
        HmacSha256 => "HMAC_SHA_256",
        HmacSha384 => "HMAC_SHA_384",
        HmacSha512 => "HMAC_SHA_512",
    }
);

string_enum!(
    /// How a material version came to be.
    RotationType {
        Automatic => "AUTOMATIC",
        OnDemand => "ON_DEMAND",
    }
);

string_enum!(
    /// Data key specs of GenerateDataKey.
    DataKeySpec {
        Aes256 => "AES_256",
        Aes128 => "AES_128",
    }
);

impl DataKeySpec {
    pub fn length(self) -> usize {
        match self {
            Self::Aes256 => 32,
            Self::Aes128 => 16,
        }
    }
}

/// A key id: a UUID, or `mrk-` and 32 hex digits for multi-Region keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn parse(text: &str) -> Option<Self> {
        let is_uuid = text.len() == 36
            && uuid::Uuid::try_parse(text).is_ok()
            && text.bytes().all(|byte| !byte.is_ascii_uppercase());
        let is_multi_region = text.strip_prefix("mrk-").is_some_and(|hex| {
            hex.len() == 32
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        (is_uuid || is_multi_region).then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// How a request names a key: by id, by key ARN, or by alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyReference {
    /// A bare key id, in the caller's account.
    Id(KeyId),
    /// A key ARN; its account and region must be checked against the caller.
    Arn {
        partition: String,
        region: String,
        account: AccountId,
        key_id: KeyId,
    },
    /// `alias/name` or an alias ARN.
    Alias(String),
    /// Well-formed but names nothing that can exist.
    Unknown(String),
}

/// A tag, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}
