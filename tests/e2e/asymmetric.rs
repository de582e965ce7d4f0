//! Asymmetric and HMAC keys over the network, checked against the openssl
//! command line: what Coffer signs, openssl verifies; what openssl encrypts
//! for a Coffer public key, Coffer decrypts; Coffer's public keys load in
//! openssl; a data key pair's private key matches its public key.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use coffer_tests::{ACCOUNT_A, Backend, Harness, assert_error, backend_tests, keys_pb as pb};
use pb::keys_client::KeysClient;
use proptest::prelude::*;
use tonic::Code;
use tonic::transport::Channel;

backend_tests!(
    signatures_verify_in_openssl,
    openssl_encrypts_and_coffer_decrypts,
    hmac_keys_generate_and_verify,
    data_key_pairs_match_in_openssl,
    asymmetric_bad_input_gets_exact_errors,
);

async fn create(
    client: &mut KeysClient<Channel>,
    key_spec: &str,
    key_usage: &str,
) -> anyhow::Result<pb::KeyMetadata> {
    client
        .create_key(pb::CreateKeyRequest {
            key_spec: key_spec.into(),
            key_usage: key_usage.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))
}

fn openssl(arguments: &[&str]) -> anyhow::Result<std::process::Output> {
    let output = Command::new("openssl").args(arguments).output()?;
    Ok(output)
}

/// Writes the DER SPKI as PEM (openssl dgst wants PEM) and checks it loads.
fn public_key_pem(directory: &Path, name: &str, spki_der: &[u8]) -> anyhow::Result<String> {
    let der_path = directory.join(format!("{name}.der"));
    let pem_path = directory.join(format!("{name}.pem"));
    std::fs::write(&der_path, spki_der)?;
    let output = openssl(&[
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        path(&der_path)?,
        "-out",
        path(&pem_path)?,
    ])?;
    anyhow::ensure!(
        output.status.success(),
        "openssl rejected the public key: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(pem_path.display().to_string())
}

fn path(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))
}

async fn public_key(
    client: &mut KeysClient<Channel>,
    key_id: &str,
) -> anyhow::Result<pb::GetPublicKeyResponse> {
    Ok(client
        .get_public_key(pb::GetPublicKeyRequest {
            key_id: key_id.into(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// A signing algorithm, the openssl digest flag, and extra openssl options.
type SigningCase = (&'static str, &'static str, &'static [&'static str]);

async fn signatures_verify_in_openssl(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let directory = tempfile::tempdir()?;
    let message = b"the quick brown fox signs the lazy dog";
    let message_path = directory.path().join("message.bin");
    std::fs::write(&message_path, message)?;

    let cases: &[(&str, &[SigningCase])] = &[
        (
            "RSA_2048",
            &[
                ("RSASSA_PKCS1_V1_5_SHA_256", "-sha256", &[]),
                ("RSASSA_PKCS1_V1_5_SHA_384", "-sha384", &[]),
                ("RSASSA_PKCS1_V1_5_SHA_512", "-sha512", &[]),
                (
                    "RSASSA_PSS_SHA_256",
                    "-sha256",
                    &[
                        "-sigopt",
                        "rsa_padding_mode:pss",
                        "-sigopt",
                        "rsa_pss_saltlen:digest",
                    ],
                ),
                (
                    "RSASSA_PSS_SHA_384",
                    "-sha384",
                    &[
                        "-sigopt",
                        "rsa_padding_mode:pss",
                        "-sigopt",
                        "rsa_pss_saltlen:digest",
                    ],
                ),
                (
                    "RSASSA_PSS_SHA_512",
                    "-sha512",
                    &[
                        "-sigopt",
                        "rsa_padding_mode:pss",
                        "-sigopt",
                        "rsa_pss_saltlen:digest",
                    ],
                ),
            ],
        ),
        ("ECC_NIST_P256", &[("ECDSA_SHA_256", "-sha256", &[])]),
        ("ECC_NIST_P384", &[("ECDSA_SHA_384", "-sha384", &[])]),
        ("ECC_NIST_P521", &[("ECDSA_SHA_512", "-sha512", &[])]),
        ("ECC_SECG_P256K1", &[("ECDSA_SHA_256", "-sha256", &[])]),
    ];
    for (key_spec, algorithms) in cases {
        let key = create(&mut client, key_spec, "SIGN_VERIFY").await?;
        let public = public_key(&mut client, &key.key_id).await?;
        assert_eq!(public.key_spec, *key_spec);
        assert_eq!(public.key_usage, "SIGN_VERIFY");
        assert!(public.encryption_algorithms.is_empty());
        assert_eq!(public.signing_algorithms.len(), algorithms.len());
        let pem = public_key_pem(directory.path(), key_spec, &public.public_key)?;
        for (algorithm, digest, options) in *algorithms {
            let signed = client
                .sign(pb::SignRequest {
                    key_id: key.key_id.clone(),
                    message: message.to_vec(),
                    signing_algorithm: (*algorithm).into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            assert_eq!(signed.signing_algorithm, *algorithm);
            let signature_path = directory.path().join(format!("{algorithm}.sig"));
            std::fs::write(&signature_path, &signed.signature)?;
            let mut arguments = vec![
                "dgst",
                digest,
                "-verify",
                pem.as_str(),
                "-signature",
                path(&signature_path)?,
            ];
            arguments.extend_from_slice(options);
            arguments.push(path(&message_path)?);
            let output = openssl(&arguments)?;
            assert!(
                output.status.success(),
                "openssl did not verify {key_spec} {algorithm}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            // And Coffer verifies its own signature; a damaged one is refused.
            client
                .verify(pb::VerifyRequest {
                    key_id: key.key_id.clone(),
                    message: message.to_vec(),
                    signature: signed.signature.clone(),
                    signing_algorithm: (*algorithm).into(),
                    ..Default::default()
                })
                .await?;
            let mut damaged = signed.signature.clone();
            let middle = damaged.len() / 2;
            damaged[middle] ^= 0x40;
            let outcome = client
                .verify(pb::VerifyRequest {
                    key_id: key.key_id.clone(),
                    message: message.to_vec(),
                    signature: damaged,
                    signing_algorithm: (*algorithm).into(),
                    ..Default::default()
                })
                .await;
            assert_error(
                outcome,
                Code::InvalidArgument,
                "KMSInvalidSignatureException",
            );
        }
    }

    // DIGEST mode: the caller hashes, Coffer signs the digest.
    let key = create(&mut client, "RSA_2048", "SIGN_VERIFY").await?;
    // The event records the message type, RAW when none was given, and
    // neither the message nor the signature.
    for (message_type, recorded) in [("", "RAW"), ("DIGEST", "DIGEST")] {
        let answer = client
            .sign(pb::SignRequest {
                key_id: key.key_id.clone(),
                message: vec![7; 32],
                message_type: message_type.into(),
                signing_algorithm: "RSASSA_PKCS1_V1_5_SHA_256".into(),
                ..Default::default()
            })
            .await?;
        let events = harness
            .audit_events_for(&coffer_tests::request_id_of(answer.metadata()))
            .await?;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["requestParameters"]["messageType"], recorded);
        assert!(events[0]["requestParameters"].get("message").is_none());
        assert!(events[0]["responseElements"].is_null(), "{:#}", events[0]);
    }
    let digest = openssl(&["dgst", "-sha256", "-binary", path(&message_path)?])?.stdout;
    let signed = client
        .sign(pb::SignRequest {
            key_id: key.key_id.clone(),
            message: digest.clone(),
            message_type: "DIGEST".into(),
            signing_algorithm: "RSASSA_PKCS1_V1_5_SHA_256".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let pem = public_key_pem(
        directory.path(),
        "digest",
        &public_key(&mut client, &key.key_id).await?.public_key,
    )?;
    let signature_path = directory.path().join("digest.sig");
    std::fs::write(&signature_path, &signed.signature)?;
    let output = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        &pem,
        "-signature",
        path(&signature_path)?,
        path(&message_path)?,
    ])?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

async fn openssl_encrypts_and_coffer_decrypts(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let directory = tempfile::tempdir()?;
    let key = create(&mut client, "RSA_2048", "ENCRYPT_DECRYPT").await?;
    let public = public_key(&mut client, &key.key_id).await?;
    assert_eq!(
        public.encryption_algorithms,
        ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
    );
    let pem = public_key_pem(directory.path(), "rsa", &public.public_key)?;
    let plaintext_path = directory.path().join("plaintext.bin");
    std::fs::write(&plaintext_path, b"sealed for coffer")?;
    for (algorithm, digest) in [
        ("RSAES_OAEP_SHA_256", "sha256"),
        ("RSAES_OAEP_SHA_1", "sha1"),
    ] {
        let ciphertext_path = directory.path().join(format!("{algorithm}.bin"));
        let output = openssl(&[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            &pem,
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &format!("rsa_oaep_md:{digest}"),
            "-pkeyopt",
            &format!("rsa_mgf1_md:{digest}"),
            "-in",
            path(&plaintext_path)?,
            "-out",
            path(&ciphertext_path)?,
        ])?;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let ciphertext = std::fs::read(&ciphertext_path)?;
        let decrypted = client
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: ciphertext.clone(),
                key_id: key.key_id.clone(),
                encryption_algorithm: algorithm.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(decrypted.plaintext, b"sealed for coffer");
        assert_eq!(decrypted.encryption_algorithm, algorithm);
        // Without the KeyId the blob is not a Coffer symmetric blob.
        let outcome = client
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: ciphertext.clone(),
                encryption_algorithm: algorithm.into(),
                ..Default::default()
            })
            .await;
        assert_error(outcome, Code::InvalidArgument, "InvalidCiphertextException");
        let mut tampered = ciphertext;
        tampered[10] ^= 1;
        let outcome = client
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: tampered,
                key_id: key.key_id.clone(),
                encryption_algorithm: algorithm.into(),
                ..Default::default()
            })
            .await;
        assert_error(outcome, Code::InvalidArgument, "InvalidCiphertextException");
    }
    // Coffer's own RSA Encrypt round-trips too, and respects the size limit.
    let encrypted = client
        .encrypt(pb::EncryptRequest {
            key_id: key.key_id.clone(),
            plaintext: vec![7; 190],
            encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(encrypted.encryption_algorithm, "RSAES_OAEP_SHA_256");
    let decrypted = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: encrypted.ciphertext_blob,
            key_id: key.key_id.clone(),
            encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(decrypted.into_inner().plaintext, vec![7; 190]);
    let too_big = client
        .encrypt(pb::EncryptRequest {
            key_id: key.key_id.clone(),
            plaintext: vec![7; 191],
            encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
            ..Default::default()
        })
        .await;
    assert_error(too_big, Code::InvalidArgument, "ValidationException");
    let symmetric_algorithm = client
        .encrypt(pb::EncryptRequest {
            key_id: key.key_id.clone(),
            plaintext: vec![1],
            ..Default::default()
        })
        .await;
    assert_error(
        symmetric_algorithm,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );

    // ReEncrypt moves a ciphertext onto the RSA key and back, naming the
    // algorithms it used.
    let symmetric = create(&mut client, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await?;
    let blob = client
        .encrypt(pb::EncryptRequest {
            key_id: symmetric.key_id.clone(),
            plaintext: b"moved".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .ciphertext_blob;
    let onto_rsa = client
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob.clone(),
            destination_key_id: key.key_id.clone(),
            destination_encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(onto_rsa.source_encryption_algorithm, "SYMMETRIC_DEFAULT");
    assert_eq!(
        onto_rsa.destination_encryption_algorithm,
        "RSAES_OAEP_SHA_256"
    );
    assert_eq!(onto_rsa.key_id, key.arn);
    let back = client
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: onto_rsa.ciphertext_blob.clone(),
            source_key_id: key.key_id.clone(),
            source_encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
            destination_key_id: symmetric.key_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(back.source_encryption_algorithm, "RSAES_OAEP_SHA_256");
    assert_eq!(back.destination_encryption_algorithm, "SYMMETRIC_DEFAULT");
    assert_eq!(back.source_key_id, key.arn);
    let plaintext = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: back.ciphertext_blob,
            ..Default::default()
        })
        .await?
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, b"moved");
    let no_algorithm = client
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob,
            destination_key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await;
    assert_error(
        no_algorithm,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    let large = client
        .encrypt(pb::EncryptRequest {
            key_id: symmetric.key_id.clone(),
            plaintext: vec![7; 191],
            ..Default::default()
        })
        .await?
        .into_inner()
        .ciphertext_blob;
    let too_large = client
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: large,
            destination_key_id: key.key_id.clone(),
            destination_encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
            ..Default::default()
        })
        .await;
    let status = assert_error(too_large, Code::InvalidArgument, "ValidationException");
    assert!(status.message().contains("ciphertext_blob"), "{status:?}");
    // ReEncrypt has two contexts and two algorithms: an error names which.
    let context = HashMap::from([("purpose".to_owned(), "test".to_owned())]);
    for (request, field) in [
        (
            pb::ReEncryptRequest {
                ciphertext_blob: onto_rsa.ciphertext_blob.clone(),
                source_key_id: key.key_id.clone(),
                source_encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
                destination_key_id: key.key_id.clone(),
                destination_encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
                destination_encryption_context: context.clone(),
                ..Default::default()
            },
            "destination_encryption_context",
        ),
        (
            pb::ReEncryptRequest {
                ciphertext_blob: onto_rsa.ciphertext_blob.clone(),
                source_key_id: key.key_id.clone(),
                source_encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
                source_encryption_context: context.clone(),
                destination_key_id: symmetric.key_id.clone(),
                ..Default::default()
            },
            "source_encryption_context",
        ),
        (
            pb::ReEncryptRequest {
                ciphertext_blob: onto_rsa.ciphertext_blob.clone(),
                destination_key_id: symmetric.key_id.clone(),
                destination_encryption_context: HashMap::from([(String::new(), "v".to_owned())]),
                ..Default::default()
            },
            "destination_encryption_context",
        ),
        (
            pb::ReEncryptRequest {
                ciphertext_blob: onto_rsa.ciphertext_blob.clone(),
                destination_key_id: symmetric.key_id.clone(),
                source_encryption_algorithm: "RSAES_OAEP".into(),
                ..Default::default()
            },
            "source_encryption_algorithm",
        ),
    ] {
        let status = assert_error(
            client.re_encrypt(request).await,
            Code::InvalidArgument,
            "ValidationException",
        );
        assert!(status.message().starts_with(field), "{status:?}");
    }

    // An alias may move to another asymmetric key only if its usage is the
    // same.
    let signing = create(&mut client, "ECC_NIST_P256", "SIGN_VERIFY").await?;
    client
        .create_alias(pb::CreateAliasRequest {
            alias_name: "alias/rsa-encryption".into(),
            target_key_id: key.key_id.clone(),
        })
        .await?;
    let outcome = client
        .update_alias(pb::UpdateAliasRequest {
            alias_name: "alias/rsa-encryption".into(),
            target_key_id: signing.key_id.clone(),
        })
        .await;
    let status = assert_error(outcome, Code::InvalidArgument, "ValidationException");
    assert!(status.message().contains("ENCRYPT_DECRYPT"), "{status:?}");

    // Grants on an RSA encryption key: no data keys, no signing, and no
    // encryption context constraint (RSA operations take no context).
    client
        .create_grant(grant_to_bob(
            &key.key_id,
            &["Encrypt", "Decrypt", "GetPublicKey"],
        ))
        .await?;
    for operations in [&["GenerateDataKey"][..], &["Decrypt", "Sign"]] {
        let outcome = client
            .create_grant(grant_to_bob(&key.key_id, operations))
            .await;
        assert_error(outcome, Code::InvalidArgument, "ValidationException");
    }
    let constrained = client
        .create_grant(pb::CreateGrantRequest {
            constraints: Some(pb::GrantConstraints {
                encryption_context_equals: [("purpose".to_owned(), "test".to_owned())].into(),
                ..Default::default()
            }),
            ..grant_to_bob(&key.key_id, &["Decrypt"])
        })
        .await;
    let status = assert_error(constrained, Code::InvalidArgument, "ValidationException");
    assert!(status.message().contains("constraint"), "{status:?}");
    Ok(())
}

/// A grant on `key_id` to a user of the same account.
fn grant_to_bob(key_id: &str, operations: &[&str]) -> pb::CreateGrantRequest {
    pb::CreateGrantRequest {
        key_id: key_id.into(),
        grantee_principal: format!("arn:coffer:iam::{ACCOUNT_A}:user/bob"),
        operations: operations.iter().map(|op| (*op).to_owned()).collect(),
        ..Default::default()
    }
}

async fn hmac_keys_generate_and_verify(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let mut hmac_keys = Vec::new();
    for (key_spec, algorithm, length) in [
        ("HMAC_256", "HMAC_SHA_256", 32),
        ("HMAC_384", "HMAC_SHA_384", 48),
        ("HMAC_512", "HMAC_SHA_512", 64),
        ("HMAC_224", "HMAC_SHA_224", 28),
    ] {
        let key = create(&mut client, key_spec, "GENERATE_VERIFY_MAC").await?;
        hmac_keys.push(key.clone());
        assert_eq!(key.mac_algorithms, [algorithm]);
        let mac = client
            .generate_mac(pb::GenerateMacRequest {
                key_id: key.key_id.clone(),
                message: b"authentic".to_vec(),
                mac_algorithm: algorithm.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(mac.mac.len(), length);
        let verified = client
            .verify_mac(pb::VerifyMacRequest {
                key_id: key.key_id.clone(),
                message: b"authentic".to_vec(),
                mac_algorithm: algorithm.into(),
                mac: mac.mac.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(verified.mac_valid);
        let forged = client
            .verify_mac(pb::VerifyMacRequest {
                key_id: key.key_id.clone(),
                message: b"forged".to_vec(),
                mac_algorithm: algorithm.into(),
                mac: mac.mac,
                ..Default::default()
            })
            .await;
        assert_error(forged, Code::InvalidArgument, "KMSInvalidMacException");
        let sign_with_mac_key = client
            .sign(pb::SignRequest {
                key_id: key.key_id.clone(),
                message: b"m".to_vec(),
                signing_algorithm: "ECDSA_SHA_256".into(),
                ..Default::default()
            })
            .await;
        assert_error(
            sign_with_mac_key,
            Code::InvalidArgument,
            "InvalidKeyUsageException",
        );
        // A MAC key named for Decrypt is the wrong kind before any blob is read.
        let decrypt_with_mac_key = client
            .decrypt(pb::DecryptRequest {
                key_id: key.key_id.clone(),
                ciphertext_blob: vec![7; 64],
                ..Default::default()
            })
            .await;
        assert_error(
            decrypt_with_mac_key,
            Code::InvalidArgument,
            "InvalidKeyUsageException",
        );
        // A blob another key made is the wrong key for it first (AWS
        // answers IncorrectKeyException here), for ReEncrypt's source too.
        let symmetric = create(&mut client, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await?;
        let blob = client
            .encrypt(pb::EncryptRequest {
                key_id: symmetric.key_id.clone(),
                plaintext: b"p".to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .ciphertext_blob;
        let another_keys_blob = client
            .decrypt(pb::DecryptRequest {
                key_id: key.key_id.clone(),
                ciphertext_blob: blob.clone(),
                ..Default::default()
            })
            .await;
        assert_error(
            another_keys_blob,
            Code::InvalidArgument,
            "IncorrectKeyException",
        );
        let re_encrypted = client
            .re_encrypt(pb::ReEncryptRequest {
                ciphertext_blob: blob,
                source_key_id: key.key_id.clone(),
                destination_key_id: symmetric.key_id.clone(),
                ..Default::default()
            })
            .await;
        assert_error(re_encrypted, Code::InvalidArgument, "IncorrectKeyException");
    }
    // An algorithm the key's spec does not support is the wrong key usage
    // (HMAC_SHA_224 is HMAC_224's); a name KMS does not know is invalid.
    let wrong_algorithm_key = create(&mut client, "HMAC_256", "GENERATE_VERIFY_MAC").await?;
    for (algorithm, exception) in [
        ("HMAC_SHA_512", "InvalidKeyUsageException"),
        ("HMAC_SHA_224", "InvalidKeyUsageException"),
        ("HMAC_SHA_1", "ValidationException"),
    ] {
        let generated = client
            .generate_mac(pb::GenerateMacRequest {
                key_id: wrong_algorithm_key.key_id.clone(),
                message: b"m".to_vec(),
                mac_algorithm: algorithm.into(),
                ..Default::default()
            })
            .await;
        let status = assert_error(generated, Code::InvalidArgument, exception);
        if exception == "InvalidKeyUsageException" {
            assert!(status.message().contains(algorithm), "{status:?}");
        }
        let verified = client
            .verify_mac(pb::VerifyMacRequest {
                key_id: wrong_algorithm_key.key_id.clone(),
                message: b"m".to_vec(),
                mac_algorithm: algorithm.into(),
                mac: vec![0; 28],
                ..Default::default()
            })
            .await;
        assert_error(verified, Code::InvalidArgument, exception);
    }
    // No HMAC key rotates automatically; its status says so (as KMS answers
    // for every key it cannot rotate).
    let status = client
        .get_key_rotation_status(pb::GetKeyRotationStatusRequest {
            key_id: wrong_algorithm_key.arn.clone(),
        })
        .await?
        .into_inner();
    assert!(!status.key_rotation_enabled);
    assert_eq!(status.key_id, wrong_algorithm_key.arn);

    // An alias moves between HMAC keys of any spec (AWS's manual rotation),
    // never to a key of another kind.
    client
        .create_alias(pb::CreateAliasRequest {
            alias_name: "alias/mac".into(),
            target_key_id: hmac_keys[0].key_id.clone(),
        })
        .await?;
    client
        .update_alias(pb::UpdateAliasRequest {
            alias_name: "alias/mac".into(),
            target_key_id: hmac_keys[2].key_id.clone(),
        })
        .await?;
    let symmetric = create(&mut client, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await?;
    let outcome = client
        .update_alias(pb::UpdateAliasRequest {
            alias_name: "alias/mac".into(),
            target_key_id: symmetric.key_id.clone(),
        })
        .await;
    assert_error(outcome, Code::InvalidArgument, "ValidationException");
    let mac = client
        .generate_mac(pb::GenerateMacRequest {
            key_id: "alias/mac".into(),
            message: b"m".to_vec(),
            mac_algorithm: "HMAC_SHA_512".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(mac.key_id, hmac_keys[2].arn);

    // A grant names only operations the key supports.
    client
        .create_grant(grant_to_bob(
            &hmac_keys[0].key_id,
            &["GenerateMac", "VerifyMac", "DescribeKey"],
        ))
        .await?;
    for operations in [
        &["Encrypt"][..],
        &["GenerateMac", "Sign"],
        &["GetPublicKey"],
    ] {
        let outcome = client
            .create_grant(grant_to_bob(&hmac_keys[0].key_id, operations))
            .await;
        let status = assert_error(outcome, Code::InvalidArgument, "ValidationException");
        assert!(status.message().contains("HMAC_256"), "{status:?}");
    }
    for operations in [&["GenerateMac"][..], &["Sign"], &["GetPublicKey"]] {
        let outcome = client
            .create_grant(grant_to_bob(&symmetric.key_id, operations))
            .await;
        let status = assert_error(outcome, Code::InvalidArgument, "ValidationException");
        assert!(status.message().contains("SYMMETRIC_DEFAULT"), "{status:?}");
    }
    Ok(())
}

async fn data_key_pairs_match_in_openssl(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let directory = tempfile::tempdir()?;
    let wrapping = create(&mut client, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await?;
    for spec in [
        "RSA_2048",
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_SECG_P256K1",
    ] {
        let pair = client
            .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
                key_id: wrapping.key_id.clone(),
                key_pair_spec: spec.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(pair.key_pair_spec, spec);
        let private_path = directory.path().join(format!("{spec}.p8"));
        std::fs::write(&private_path, &pair.private_key_plaintext)?;
        let derived = openssl(&[
            "pkey",
            "-inform",
            "DER",
            "-in",
            path(&private_path)?,
            "-pubout",
            "-outform",
            "DER",
        ])?;
        assert!(
            derived.status.success(),
            "{}",
            String::from_utf8_lossy(&derived.stderr)
        );
        assert_eq!(
            derived.stdout, pair.public_key,
            "{spec}: private and public keys do not match"
        );
        // The encrypted private key decrypts to the same PKCS#8.
        let decrypted = client
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: pair.private_key_ciphertext_blob,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(decrypted.plaintext, pair.private_key_plaintext);
    }
    let without = client
        .generate_data_key_pair_without_plaintext(pb::GenerateDataKeyPairWithoutPlaintextRequest {
            key_id: wrapping.key_id.clone(),
            key_pair_spec: "ECC_NIST_P256".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let private = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: without.private_key_ciphertext_blob,
            ..Default::default()
        })
        .await?
        .into_inner()
        .plaintext;
    let private_path = directory.path().join("without.p8");
    std::fs::write(&private_path, &private)?;
    let derived = openssl(&[
        "pkey",
        "-inform",
        "DER",
        "-in",
        path(&private_path)?,
        "-pubout",
        "-outform",
        "DER",
    ])?;
    assert_eq!(derived.stdout, without.public_key);

    let asymmetric_wrapping = create(&mut client, "ECC_NIST_P256", "SIGN_VERIFY").await?;
    let outcome = client
        .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
            key_id: asymmetric_wrapping.key_id,
            key_pair_spec: "RSA_2048".into(),
            ..Default::default()
        })
        .await;
    assert_error(outcome, Code::InvalidArgument, "InvalidKeyUsageException");
    let bad_spec = client
        .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
            key_id: wrapping.key_id.clone(),
            key_pair_spec: "RSA_1024".into(),
            ..Default::default()
        })
        .await;
    assert_error(bad_spec, Code::InvalidArgument, "ValidationException");
    // KMS's pair specs that Coffer does not make yet are unsupported, as
    // CreateKey answers those key specs, not malformed.
    for key_pair_spec in ["SM2", "ECC_NIST_EDWARDS25519"] {
        let unsupported = client
            .generate_data_key_pair_without_plaintext(
                pb::GenerateDataKeyPairWithoutPlaintextRequest {
                    key_id: wrapping.key_id.clone(),
                    key_pair_spec: key_pair_spec.into(),
                    ..Default::default()
                },
            )
            .await;
        assert_error(
            unsupported,
            Code::InvalidArgument,
            "UnsupportedOperationException",
        );
    }
    Ok(())
}

async fn asymmetric_bad_input_gets_exact_errors(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    // A pair AWS refuses is invalid, even for a spec Coffer does not
    // implement yet; a pair AWS allows that Coffer does not implement is
    // unsupported.
    for (key_spec, key_usage, exception) in [
        ("ECC_NIST_P256", "ENCRYPT_DECRYPT", "ValidationException"),
        ("ECC_NIST_P521", "ENCRYPT_DECRYPT", "ValidationException"),
        ("ECC_SECG_P256K1", "KEY_AGREEMENT", "ValidationException"),
        ("SYMMETRIC_DEFAULT", "KEY_AGREEMENT", "ValidationException"),
        ("HMAC_224", "SIGN_VERIFY", "ValidationException"),
        (
            "ECC_NIST_P256",
            "KEY_AGREEMENT",
            "UnsupportedOperationException",
        ),
        ("SM2", "SIGN_VERIFY", "UnsupportedOperationException"),
        (
            "ECC_NIST_EDWARDS25519",
            "SIGN_VERIFY",
            "UnsupportedOperationException",
        ),
        ("ML_DSA_65", "SIGN_VERIFY", "UnsupportedOperationException"),
    ] {
        let outcome = client
            .create_key(pb::CreateKeyRequest {
                key_spec: key_spec.into(),
                key_usage: key_usage.into(),
                ..Default::default()
            })
            .await;
        assert_error(outcome, Code::InvalidArgument, exception);
    }

    let ecc = create(&mut client, "ECC_NIST_P256", "SIGN_VERIFY").await?;
    let sign = |algorithm: &str, message: Vec<u8>, message_type: &str| pb::SignRequest {
        key_id: ecc.key_id.clone(),
        message,
        message_type: message_type.into(),
        signing_algorithm: algorithm.into(),
        ..Default::default()
    };
    assert_error(
        client
            .sign(sign("RSASSA_PSS_SHA_256", b"m".to_vec(), ""))
            .await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    assert_error(
        client.sign(sign("", b"m".to_vec(), "")).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    // Algorithms KMS has that Coffer's key specs do not support (ECDSA_SHA_512
    // is P-521's, ED25519_SHA_512 Ed25519's) are not valid for this key,
    // when signing and when verifying; a name KMS does not have is invalid.
    for (algorithm, exception) in [
        ("ECDSA_SHA_512", "InvalidKeyUsageException"),
        ("ED25519_SHA_512", "InvalidKeyUsageException"),
        ("ML_DSA_SHAKE_256", "InvalidKeyUsageException"),
        ("ECDSA_SHA_1024", "ValidationException"),
    ] {
        let status = assert_error(
            client.sign(sign(algorithm, b"m".to_vec(), "")).await,
            Code::InvalidArgument,
            exception,
        );
        if exception == "InvalidKeyUsageException" {
            assert!(status.message().contains(algorithm), "{status:?}");
        }
        let verified = client
            .verify(pb::VerifyRequest {
                key_id: ecc.key_id.clone(),
                message: b"m".to_vec(),
                signature: vec![0; 64],
                signing_algorithm: algorithm.into(),
                ..Default::default()
            })
            .await;
        assert_error(verified, Code::InvalidArgument, exception);
    }
    assert_error(
        client.sign(sign("ECDSA_SHA_256", Vec::new(), "")).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert_error(
        client.sign(sign("ECDSA_SHA_256", vec![0; 4097], "")).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert_error(
        client
            .sign(sign("ECDSA_SHA_256", vec![0; 31], "DIGEST"))
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert_error(
        client
            .sign(sign("ECDSA_SHA_256", b"m".to_vec(), "HASHED"))
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );

    let symmetric = create(&mut client, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await?;
    let public = client
        .get_public_key(pb::GetPublicKeyRequest {
            key_id: symmetric.key_id.clone(),
            ..Default::default()
        })
        .await;
    assert_error(
        public,
        Code::InvalidArgument,
        "UnsupportedOperationException",
    );
    let sign_symmetric = client
        .sign(pb::SignRequest {
            key_id: symmetric.key_id,
            message: b"m".to_vec(),
            signing_algorithm: "ECDSA_SHA_256".into(),
            ..Default::default()
        })
        .await;
    assert_error(
        sign_symmetric,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    let rotate = client
        .enable_key_rotation(pb::EnableKeyRotationRequest {
            key_id: ecc.key_id.clone(),
            rotation_period_in_days: None,
        })
        .await;
    assert_error(
        rotate,
        Code::InvalidArgument,
        "UnsupportedOperationException",
    );
    // Its rotation status is off, with no period and no date.
    let status = client
        .get_key_rotation_status(pb::GetKeyRotationStatusRequest {
            key_id: ecc.arn.clone(),
        })
        .await?
        .into_inner();
    assert!(!status.key_rotation_enabled);
    assert_eq!(status.rotation_period_in_days, None);
    assert_eq!(status.next_rotation_date, None);

    let rsa = create(&mut client, "RSA_2048", "ENCRYPT_DECRYPT").await?;
    let with_context = client
        .encrypt(pb::EncryptRequest {
            key_id: rsa.key_id.clone(),
            plaintext: b"x".to_vec(),
            encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
            encryption_context: [("k".to_owned(), "v".to_owned())].into(),
            ..Default::default()
        })
        .await;
    assert_error(with_context, Code::InvalidArgument, "ValidationException");
    // Without an algorithm (SYMMETRIC_DEFAULT) the algorithm is what is
    // wrong, context or not.
    let default_algorithm = client
        .encrypt(pb::EncryptRequest {
            key_id: rsa.key_id.clone(),
            plaintext: b"x".to_vec(),
            encryption_context: [("k".to_owned(), "v".to_owned())].into(),
            ..Default::default()
        })
        .await;
    let status = assert_error(
        default_algorithm,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    assert!(status.message().contains("SYMMETRIC_DEFAULT"), "{status:?}");
    let sign_with_encryption_key = client
        .sign(pb::SignRequest {
            key_id: rsa.key_id,
            message: b"m".to_vec(),
            signing_algorithm: "RSASSA_PSS_SHA_256".into(),
            ..Default::default()
        })
        .await;
    assert_error(
        sign_with_encryption_key,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    Ok(())
}

/// Verify never panics and never accepts arbitrary signatures.
#[test]
fn verify_of_arbitrary_signatures_never_succeeds() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (harness, client, key_id) = runtime.block_on(async {
        let harness = Harness::start(Backend::Sqlite).await?;
        let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
        let key = create(&mut client, "ECC_NIST_P256", "SIGN_VERIFY").await?;
        anyhow::Ok((harness, client, key.key_id))
    })?;
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(message in proptest::collection::vec(any::<u8>(), 1..64), signature in proptest::collection::vec(any::<u8>(), 1..160))| {
        let mut client = client.clone();
        let key_id = key_id.clone();
        let outcome = runtime.block_on(async move {
            client
                .verify(pb::VerifyRequest { key_id, message, signature, signing_algorithm: "ECDSA_SHA_256".into(), ..Default::default() })
                .await
        });
        match outcome {
            Ok(_) => return Err(TestCaseError::fail("an arbitrary signature verified")),
            Err(status) => {
                prop_assert_eq!(status.code(), Code::InvalidArgument);
                prop_assert_eq!(coffer_tests::exception_of(&status), "KMSInvalidSignatureException");
            }
        }
    });
    runtime.block_on(async move {
        let mut harness = harness;
        harness.stop().await;
    });
    Ok(())
}

/// A burst of RSA key generation (up to seconds each) does not hold signing
/// back: key pairs are generated on at most half the crypto threads, so a
/// Sign sent behind four RSA_4096 pairs is answered while they are still
/// being generated. Before, they shared one queue and the Sign waited for
/// the first three (on 2 to 6 cores; with more, threads were left over). (Where there is a single core there is no other thread
/// to sign on, and nothing to check.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_is_not_queued_behind_key_generation() -> anyhow::Result<()> {
    if std::thread::available_parallelism().map_or(1, std::num::NonZero::get) < 2 {
        return Ok(());
    }
    let harness = Harness::start(Backend::Sqlite).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let signing = create(&mut client, "ECC_NIST_P256", "SIGN_VERIFY").await?;
    let wrapping = create(&mut client, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await?;
    let generated = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut generating = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut client = client.clone();
        let key_id = wrapping.key_id.clone();
        let generated = generated.clone();
        generating.spawn(async move {
            client
                .generate_data_key_pair_without_plaintext(
                    pb::GenerateDataKeyPairWithoutPlaintextRequest {
                        key_id,
                        key_pair_spec: "RSA_4096".into(),
                        ..Default::default()
                    },
                )
                .await?;
            generated.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            anyhow::Ok(())
        });
    }
    // The pairs are queued first.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    client
        .sign(pb::SignRequest {
            key_id: signing.key_id.clone(),
            message: b"not behind the key pairs".to_vec(),
            signing_algorithm: "ECDSA_SHA_256".into(),
            ..Default::default()
        })
        .await?;
    let done_before_the_signature = generated.load(std::sync::atomic::Ordering::SeqCst);
    while let Some(finished) = generating.join_next().await {
        finished??;
    }
    assert!(
        done_before_the_signature <= 1,
        "the Sign waited for {done_before_the_signature} of the 4 key pairs"
    );
    Ok(())
}
