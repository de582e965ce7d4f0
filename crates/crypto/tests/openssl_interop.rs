//! Interoperability with the `openssl` command-line tool: the public keys
//! GetPublicKey returns, the private keys GenerateDataKeyPair returns, the
//! signatures Sign returns and the ciphertexts Decrypt accepts must all be
//! what standard tooling produces and expects.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use coffer_crypto::{
    AsymmetricKeySpec, AsymmetricPrivateKey, AsymmetricPublicKey, CryptoError, MessageType,
    RsaEncryptionAlgorithm, SigningAlgorithm, generate_key_pair,
};
use tempfile::TempDir;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const OPENSSL: &str = "/usr/bin/openssl";

/// One key per spec for this test binary, generated on first use (RSA-4096
/// generation is the slow part).
static KEYS: [OnceLock<Result<AsymmetricPrivateKey, String>>; AsymmetricKeySpec::ALL.len()] =
    [const { OnceLock::new() }; AsymmetricKeySpec::ALL.len()];

fn key(key_spec: AsymmetricKeySpec) -> TestResult<&'static AsymmetricPrivateKey> {
    let slot = AsymmetricKeySpec::ALL
        .iter()
        .position(|candidate| *candidate == key_spec)
        .and_then(|index| KEYS.get(index))
        .ok_or_else(|| format!("no fixture slot for {key_spec}"))?;
    let generated = slot.get_or_init(|| {
        AsymmetricPrivateKey::generate(key_spec).map_err(|error| error.to_string())
    });
    Ok(generated.as_ref().map_err(Clone::clone)?)
}

/// Runs openssl; an unsuccessful exit is an error carrying its stderr.
fn openssl(arguments: &[&str]) -> TestResult<Vec<u8>> {
    let output = Command::new(OPENSSL).args(arguments).output()?;
    if !output.status.success() {
        return Err(format!(
            "openssl {} failed ({}): {}{}",
            arguments.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(output.stdout)
}

fn path_str(path: &Path) -> TestResult<&str> {
    Ok(path.to_str().ok_or("temporary path is not UTF-8")?)
}

struct Workspace {
    directory: TempDir,
}

impl Workspace {
    fn new() -> TestResult<Self> {
        Ok(Self {
            directory: tempfile::tempdir()?,
        })
    }

    fn write(&self, name: &str, contents: &[u8]) -> TestResult<PathBuf> {
        let path = self.directory.path().join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    /// Writes our SPKI DER and has openssl convert it to PEM, which also
    /// proves openssl parses it.
    fn public_key_pem(&self, public_key: &AsymmetricPublicKey) -> TestResult<PathBuf> {
        let der = self.write("public.der", public_key.spki_der())?;
        let pem = self.path("public.pem");
        openssl(&[
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            path_str(&der)?,
            "-out",
            path_str(&pem)?,
        ])?;
        Ok(pem)
    }
}

fn openssl_digest_name(algorithm: SigningAlgorithm) -> &'static str {
    match algorithm.digest_len() {
        32 => "-sha256",
        48 => "-sha384",
        _ => "-sha512",
    }
}

fn is_pss(algorithm: SigningAlgorithm) -> bool {
    matches!(
        algorithm,
        SigningAlgorithm::RsassaPssSha256
            | SigningAlgorithm::RsassaPssSha384
            | SigningAlgorithm::RsassaPssSha512
    )
}

/// `openssl dgst -shaN -verify public.pem -signature sig.bin message.bin`,
/// with the PSS options (salt length = digest length) where they apply.
fn openssl_verifies(
    workspace: &Workspace,
    public_pem: &Path,
    algorithm: SigningAlgorithm,
    message: &Path,
    signature: &[u8],
) -> TestResult<bool> {
    let signature_path = workspace.write("signature.bin", signature)?;
    let mut arguments = vec![
        "dgst",
        openssl_digest_name(algorithm),
        "-verify",
        path_str(public_pem)?,
        "-signature",
        path_str(&signature_path)?,
    ];
    if is_pss(algorithm) {
        arguments.extend([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
        ]);
    }
    arguments.push(path_str(message)?);
    let output = Command::new(OPENSSL).args(&arguments).output()?;
    let verified = output.status.success() && output.stdout.starts_with(b"Verified OK");
    Ok(verified)
}

fn sha(algorithm: SigningAlgorithm, message: &[u8]) -> TestResult<Vec<u8>> {
    let workspace = Workspace::new()?;
    let message_path = workspace.write("message.bin", message)?;
    let digest = openssl(&[
        "dgst",
        openssl_digest_name(algorithm),
        "-binary",
        path_str(&message_path)?,
    ])?;
    Ok(digest)
}

#[test]
fn public_keys_load_in_openssl() -> TestResult {
    for key_spec in AsymmetricKeySpec::ALL {
        let workspace = Workspace::new()?;
        let der = workspace.write("public.der", key(*key_spec)?.public_key().spki_der())?;
        openssl(&[
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            path_str(&der)?,
            "-noout",
        ])?;
        let text_output = openssl(&[
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            path_str(&der)?,
            "-noout",
            "-text_pub",
        ])?;
        let text = String::from_utf8_lossy(&text_output);
        let expected = match key_spec {
            AsymmetricKeySpec::Rsa2048 => "Public-Key: (2048 bit)",
            AsymmetricKeySpec::Rsa3072 => "Public-Key: (3072 bit)",
            AsymmetricKeySpec::Rsa4096 => "Public-Key: (4096 bit)",
            AsymmetricKeySpec::EccNistP256 => "NIST CURVE: P-256",
            AsymmetricKeySpec::EccNistP384 => "NIST CURVE: P-384",
            AsymmetricKeySpec::EccNistP521 => "NIST CURVE: P-521",
            AsymmetricKeySpec::EccSecgP256k1 => "ASN1 OID: secp256k1",
        };
        assert!(text.contains(expected), "{key_spec}: {text}");
    }
    Ok(())
}

#[test]
fn openssl_oaep_ciphertexts_decrypt() -> TestResult {
    for key_spec in [AsymmetricKeySpec::Rsa2048, AsymmetricKeySpec::Rsa3072] {
        let private_key = key(key_spec)?;
        let workspace = Workspace::new()?;
        let public_pem = workspace.public_key_pem(private_key.public_key())?;
        for (algorithm, openssl_md) in [
            (RsaEncryptionAlgorithm::OaepSha1, "sha1"),
            (RsaEncryptionAlgorithm::OaepSha256, "sha256"),
        ] {
            let max = key_spec
                .max_plaintext_len(algorithm)
                .ok_or("RSA specs encrypt")?;
            let largest: Vec<u8> = (0..max).map(|index| (index % 251) as u8).collect();
            for plaintext in [b"a 32-byte data key, for example".as_slice(), &largest] {
                let plaintext_path = workspace.write("plaintext.bin", plaintext)?;
                let oaep_md = format!("rsa_oaep_md:{openssl_md}");
                let mgf1_md = format!("rsa_mgf1_md:{openssl_md}");
                let ciphertext = openssl(&[
                    "pkeyutl",
                    "-encrypt",
                    "-pubin",
                    "-inkey",
                    path_str(&public_pem)?,
                    "-pkeyopt",
                    "rsa_padding_mode:oaep",
                    "-pkeyopt",
                    &oaep_md,
                    "-pkeyopt",
                    &mgf1_md,
                    "-in",
                    path_str(&plaintext_path)?,
                ])?;
                let decrypted = private_key.decrypt(algorithm, &ciphertext)?;
                assert_eq!(decrypted.as_slice(), plaintext, "{key_spec} {algorithm}");

                // The other OAEP hash must not decrypt it.
                let other_algorithm = match algorithm {
                    RsaEncryptionAlgorithm::OaepSha1 => RsaEncryptionAlgorithm::OaepSha256,
                    RsaEncryptionAlgorithm::OaepSha256 => RsaEncryptionAlgorithm::OaepSha1,
                };
                assert!(matches!(
                    private_key.decrypt(other_algorithm, &ciphertext),
                    Err(CryptoError::InvalidCiphertext(_))
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn our_oaep_ciphertexts_decrypt_in_openssl() -> TestResult {
    let key_spec = AsymmetricKeySpec::Rsa2048;
    let private_key = key(key_spec)?;
    let workspace = Workspace::new()?;
    let private_der = workspace.write("private.der", &private_key.to_pkcs8_der()?)?;
    for (algorithm, openssl_md) in [
        (RsaEncryptionAlgorithm::OaepSha1, "sha1"),
        (RsaEncryptionAlgorithm::OaepSha256, "sha256"),
    ] {
        let plaintext = b"plaintext for openssl";
        let ciphertext = private_key.public_key().encrypt(algorithm, plaintext)?;
        let ciphertext_path = workspace.write("ciphertext.bin", &ciphertext)?;
        let oaep_md = format!("rsa_oaep_md:{openssl_md}");
        let mgf1_md = format!("rsa_mgf1_md:{openssl_md}");
        let decrypted = openssl(&[
            "pkeyutl",
            "-decrypt",
            "-keyform",
            "DER",
            "-inkey",
            path_str(&private_der)?,
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &oaep_md,
            "-pkeyopt",
            &mgf1_md,
            "-in",
            path_str(&ciphertext_path)?,
        ])?;
        assert_eq!(decrypted.as_slice(), plaintext, "{algorithm}");
    }
    Ok(())
}

#[test]
fn our_signatures_verify_in_openssl() -> TestResult {
    let message = b"message signed by coffer and verified by openssl";
    for key_spec in [
        AsymmetricKeySpec::Rsa2048,
        AsymmetricKeySpec::Rsa3072,
        AsymmetricKeySpec::EccNistP256,
        AsymmetricKeySpec::EccNistP384,
        AsymmetricKeySpec::EccNistP521,
        AsymmetricKeySpec::EccSecgP256k1,
    ] {
        let private_key = key(key_spec)?;
        let workspace = Workspace::new()?;
        let public_pem = workspace.public_key_pem(private_key.public_key())?;
        let message_path = workspace.write("message.bin", message)?;
        for algorithm in key_spec.signing_algorithms() {
            let context = format!("{key_spec} {algorithm}");
            let raw_signature = private_key.sign(*algorithm, MessageType::Raw, message)?;
            assert!(
                openssl_verifies(
                    &workspace,
                    &public_pem,
                    *algorithm,
                    &message_path,
                    &raw_signature
                )?,
                "{context} RAW"
            );

            let digest = sha(*algorithm, message)?;
            let digest_signature = private_key.sign(*algorithm, MessageType::Digest, &digest)?;
            assert!(
                openssl_verifies(
                    &workspace,
                    &public_pem,
                    *algorithm,
                    &message_path,
                    &digest_signature
                )?,
                "{context} DIGEST"
            );

            // The harness is not vacuous: openssl rejects a damaged signature.
            let mut damaged = raw_signature.clone();
            if let Some(last) = damaged.last_mut() {
                *last ^= 0x01;
            }
            assert!(
                !openssl_verifies(&workspace, &public_pem, *algorithm, &message_path, &damaged)?,
                "{context} damaged"
            );
        }
    }
    Ok(())
}

#[test]
fn openssl_signatures_verify_with_us() -> TestResult {
    let message = b"message signed by openssl and verified by coffer";
    for key_spec in [
        AsymmetricKeySpec::Rsa2048,
        AsymmetricKeySpec::EccNistP384,
        AsymmetricKeySpec::EccNistP521,
        AsymmetricKeySpec::EccSecgP256k1,
    ] {
        let private_key = key(key_spec)?;
        let workspace = Workspace::new()?;
        let private_der = workspace.write("private.der", &private_key.to_pkcs8_der()?)?;
        let message_path = workspace.write("message.bin", message)?;
        for algorithm in key_spec.signing_algorithms() {
            let mut arguments = vec![
                "dgst",
                openssl_digest_name(*algorithm),
                "-keyform",
                "DER",
                "-sign",
                path_str(&private_der)?,
            ];
            if is_pss(*algorithm) {
                arguments.extend([
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:digest",
                ]);
            }
            arguments.push(path_str(&message_path)?);
            let signature = openssl(&arguments)?;
            let public_key = private_key.public_key();
            assert!(
                public_key.verify(*algorithm, MessageType::Raw, message, &signature)?,
                "{key_spec} {algorithm}"
            );
            let digest = sha(*algorithm, message)?;
            assert!(
                public_key.verify(*algorithm, MessageType::Digest, &digest, &signature)?,
                "{key_spec} {algorithm} DIGEST"
            );
        }
    }
    Ok(())
}

#[test]
fn data_key_pairs_match_in_openssl() -> TestResult {
    for key_spec in AsymmetricKeySpec::ALL {
        // RSA-4096 generation is slow: reuse the binary's one RSA-4096 key,
        // exported the way generate_key_pair exports it.
        let (private_key_pkcs8, public_key_spki) = if *key_spec == AsymmetricKeySpec::Rsa4096 {
            let private_key = key(*key_spec)?;
            (
                private_key.to_pkcs8_der()?,
                private_key.public_key().spki_der().to_vec(),
            )
        } else {
            let pair = generate_key_pair(*key_spec)?;
            assert_eq!(pair.key_spec, *key_spec);
            (pair.private_key_pkcs8, pair.public_key_spki)
        };
        let workspace = Workspace::new()?;
        let private_der = workspace.write("private.der", &private_key_pkcs8)?;
        openssl(&[
            "pkey",
            "-inform",
            "DER",
            "-in",
            path_str(&private_der)?,
            "-check",
            "-noout",
        ])?;
        let derived_public = workspace.path("derived-public.der");
        openssl(&[
            "pkey",
            "-inform",
            "DER",
            "-in",
            path_str(&private_der)?,
            "-pubout",
            "-outform",
            "DER",
            "-out",
            path_str(&derived_public)?,
        ])?;
        let derived = std::fs::read(&derived_public)?;
        assert_eq!(derived, public_key_spki, "{key_spec}");
        // PKCS#8 rather than a traditional encoding: an AlgorithmIdentifier
        // naming the key type, then the key in an OCTET STRING.
        let asn1_output = openssl(&[
            "asn1parse",
            "-inform",
            "DER",
            "-in",
            path_str(&private_der)?,
        ])?;
        let pkcs8_info = String::from_utf8_lossy(&asn1_output);
        let expected_oid = if key_spec.is_rsa() {
            "rsaEncryption"
        } else {
            "id-ecPublicKey"
        };
        assert!(
            pkcs8_info.contains(expected_oid),
            "{key_spec}: {pkcs8_info}"
        );
        assert!(
            pkcs8_info.contains("OCTET STRING"),
            "{key_spec}: {pkcs8_info}"
        );
    }
    Ok(())
}

#[test]
fn openssl_generated_pkcs8_keys_import() -> TestResult {
    for (key_spec, genpkey_arguments) in [
        (
            AsymmetricKeySpec::Rsa2048,
            ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            AsymmetricKeySpec::EccNistP256,
            ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        (
            AsymmetricKeySpec::EccNistP521,
            ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
        ),
        (
            AsymmetricKeySpec::EccSecgP256k1,
            [
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:secp256k1",
            ],
        ),
    ] {
        let workspace = Workspace::new()?;
        // OpenSSL 3.0 genpkey writes the traditional encoding (RSAPrivateKey,
        // ECPrivateKey) as DER; that is not PKCS#8 and is refused.
        let traditional_der = workspace.path("traditional.der");
        let mut arguments = vec!["genpkey"];
        arguments.extend(genpkey_arguments);
        arguments.extend(["-outform", "DER", "-out", path_str(&traditional_der)?]);
        openssl(&arguments)?;
        let traditional =
            AsymmetricPrivateKey::from_pkcs8_der(key_spec, &std::fs::read(&traditional_der)?);
        assert!(
            matches!(
                traditional,
                Err(CryptoError::KeyRejected {
                    encoding: "PKCS#8",
                    ..
                })
            ),
            "{key_spec}: {traditional:?}"
        );

        let private_der = workspace.path("private.der");
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-inform",
            "DER",
            "-in",
            path_str(&traditional_der)?,
            "-outform",
            "DER",
            "-out",
            path_str(&private_der)?,
        ])?;
        let private_key =
            AsymmetricPrivateKey::from_pkcs8_der(key_spec, &std::fs::read(&private_der)?)?;

        let derived_public = workspace.path("derived-public.der");
        openssl(&[
            "pkey",
            "-inform",
            "DER",
            "-in",
            path_str(&private_der)?,
            "-pubout",
            "-outform",
            "DER",
            "-out",
            path_str(&derived_public)?,
        ])?;
        assert_eq!(
            std::fs::read(&derived_public)?,
            private_key.public_key().spki_der(),
            "{key_spec}"
        );

        let public_pem = workspace.public_key_pem(private_key.public_key())?;
        let message_path = workspace.write("message.bin", b"imported")?;
        let algorithm = key_spec
            .signing_algorithms()
            .first()
            .copied()
            .ok_or("every spec signs")?;
        let signature = private_key.sign(algorithm, MessageType::Raw, b"imported")?;
        assert!(openssl_verifies(
            &workspace,
            &public_pem,
            algorithm,
            &message_path,
            &signature
        )?);

        // The same key claimed under another spec is refused.
        let other_spec = if key_spec.is_rsa() {
            AsymmetricKeySpec::Rsa4096
        } else {
            AsymmetricKeySpec::EccNistP384
        };
        assert!(matches!(
            AsymmetricPrivateKey::from_pkcs8_der(other_spec, &std::fs::read(&private_der)?),
            Err(CryptoError::KeyRejected { .. })
        ));
    }
    Ok(())
}

#[test]
fn pss_signatures_with_another_salt_length_do_not_verify() -> TestResult {
    // KMS PSS uses a salt as long as the hash; a maximal-salt signature over
    // the same message is a different scheme and must not verify.
    let private_key = key(AsymmetricKeySpec::Rsa2048)?;
    let workspace = Workspace::new()?;
    let private_der = workspace.write("private.der", &private_key.to_pkcs8_der()?)?;
    let message = b"salt length";
    let message_path = workspace.write("message.bin", message)?;
    let signature = openssl(&[
        "dgst",
        "-sha256",
        "-keyform",
        "DER",
        "-sign",
        path_str(&private_der)?,
        "-sigopt",
        "rsa_padding_mode:pss",
        "-sigopt",
        "rsa_pss_saltlen:max",
        path_str(&message_path)?,
    ])?;
    let verified = private_key.public_key().verify(
        SigningAlgorithm::RsassaPssSha256,
        MessageType::Raw,
        message,
        &signature,
    )?;
    assert!(!verified);
    Ok(())
}
