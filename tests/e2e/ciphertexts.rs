//! Every ciphertext that is not exactly what Coffer produced for this key
//! and encryption context gets the same InvalidCiphertextException.

use std::collections::HashMap;

use coffer_tests::{ACCOUNT_A, Backend, Harness, assert_error, backend_tests, keys_pb as pb};
use proptest::prelude::*;
use tonic::Code;

backend_tests!(tampered_truncated_empty_random_and_wrong_context);

async fn encrypted_blob(
    client: &mut pb::keys_client::KeysClient<tonic::transport::Channel>,
    context: HashMap<String, String>,
) -> anyhow::Result<Vec<u8>> {
    let key = client
        .create_key(pb::CreateKeyRequest::default())
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    Ok(client
        .encrypt(pb::EncryptRequest {
            key_id: key.key_id,
            plaintext: b"0123456789abcdef".to_vec(),
            encryption_context: context,
            ..Default::default()
        })
        .await?
        .into_inner()
        .ciphertext_blob)
}

async fn tampered_truncated_empty_random_and_wrong_context(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let context: HashMap<String, String> = [("k".to_owned(), "v".to_owned())].into();
    let blob = encrypted_blob(&mut client, context.clone()).await?;

    let mut candidates: Vec<(String, Vec<u8>, HashMap<String, String>)> = Vec::new();
    for index in [0, 1, 5, 40, 60, blob.len() / 2, blob.len() - 1] {
        let mut tampered = blob.clone();
        tampered[index] ^= 0x01;
        candidates.push((format!("bit flipped at {index}"), tampered, context.clone()));
    }
    for length in [1, 2, 20, 54, 66, 90, blob.len() - 1] {
        candidates.push((
            format!("truncated to {length}"),
            blob[..length].to_vec(),
            context.clone(),
        ));
    }
    let mut extended = blob.clone();
    extended.push(0);
    candidates.push(("one byte appended".into(), extended, context.clone()));
    candidates.push((
        "random".into(),
        (0..blob.len()).map(|i| (i * 31 % 251) as u8).collect(),
        context.clone(),
    ));
    candidates.push(("at the size limit".into(), vec![1u8; 6144], context.clone()));
    candidates.push(("no context".into(), blob.clone(), HashMap::new()));
    candidates.push((
        "other context".into(),
        blob.clone(),
        [("k".to_owned(), "w".to_owned())].into(),
    ));

    for (label, ciphertext_blob, encryption_context) in candidates {
        let outcome = client
            .decrypt(pb::DecryptRequest {
                ciphertext_blob,
                encryption_context,
                ..Default::default()
            })
            .await;
        let status = assert_error(outcome, Code::InvalidArgument, "InvalidCiphertextException");
        assert!(
            !status.message().contains("0123456789abcdef"),
            "{label}: {status:?}"
        );
    }

    // Outside CiphertextBlob's length constraint (1 to 6144 bytes) the
    // request itself is invalid, as AWS's validation answers it.
    // Lengths are checked before any grant token is looked at, by Decrypt
    // and ReEncrypt alike.
    for (label, ciphertext_blob) in [("empty", Vec::new()), ("oversized", vec![1u8; 6145])] {
        for grant_tokens in [Vec::new(), vec!["not-a-grant-token".to_owned()]] {
            let decrypted = client
                .decrypt(pb::DecryptRequest {
                    ciphertext_blob: ciphertext_blob.clone(),
                    encryption_context: context.clone(),
                    grant_tokens: grant_tokens.clone(),
                    ..Default::default()
                })
                .await;
            let re_encrypted = client
                .re_encrypt(pb::ReEncryptRequest {
                    ciphertext_blob: ciphertext_blob.clone(),
                    source_encryption_context: context.clone(),
                    destination_key_id: "alias/any".into(),
                    grant_tokens,
                    ..Default::default()
                })
                .await;
            for status in [
                assert_error(decrypted, Code::InvalidArgument, "ValidationException"),
                assert_error(re_encrypted, Code::InvalidArgument, "ValidationException"),
            ] {
                assert!(
                    status.message().contains("ciphertext_blob"),
                    "{label}: {status:?}"
                );
                assert!(
                    status.message().contains("1 to 6144 bytes"),
                    "{label}: {status:?}"
                );
            }
        }
    }

    // The untouched blob still decrypts: nothing above corrupted anything.
    let decrypted = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            encryption_context: context,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(decrypted.plaintext, b"0123456789abcdef");
    Ok(())
}

/// Arbitrary byte strings, and arbitrary damage to a real blob, sent over
/// the network: the answer is always InvalidCiphertextException (for any
/// length the request may have: 1 to 6144 bytes).
#[test]
fn decrypt_of_arbitrary_bytes_is_always_invalid_ciphertext() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (harness, client, blob) = runtime.block_on(async {
        let harness = Harness::start(Backend::Sqlite).await?;
        let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
        let blob = encrypted_blob(&mut client, HashMap::new()).await?;
        anyhow::Ok((harness, client, blob))
    })?;

    let decrypt = |bytes: Vec<u8>| {
        let mut client = client.clone();
        runtime.block_on(async move {
            client
                .decrypt(pb::DecryptRequest {
                    ciphertext_blob: bytes,
                    ..Default::default()
                })
                .await
        })
    };
    let check = |outcome: Result<tonic::Response<pb::DecryptResponse>, tonic::Status>| -> Result<(), TestCaseError> {
        match outcome {
            Ok(_) => Err(TestCaseError::fail("arbitrary bytes decrypted")),
            Err(status) => {
                prop_assert_eq!(status.code(), Code::InvalidArgument);
                prop_assert_eq!(coffer_tests::exception_of(&status), "InvalidCiphertextException");
                Ok(())
            }
        }
    };

    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(bytes in proptest::collection::vec(any::<u8>(), 1..512))| {
        check(decrypt(bytes))?;
    });
    proptest!(config, |(position in any::<prop::sample::Index>(), mask in 1u8..=255, cut in any::<prop::sample::Index>(), tail in proptest::collection::vec(any::<u8>(), 0..8))| {
        let mut damaged = blob.clone();
        let at = position.index(damaged.len());
        damaged[at] ^= mask;
        check(decrypt(damaged))?;
        let mut shortened = blob[..cut.index(blob.len())].to_vec();
        shortened.extend_from_slice(&tail);
        if shortened != blob && !shortened.is_empty() {
            check(decrypt(shortened))?;
        }
    });
    drop(client);
    runtime.block_on(async move {
        let mut harness = harness;
        harness.stop().await;
    });
    Ok(())
}
