//! The keys slice over the network: round trips, validation, tenancy.

use std::collections::HashMap;

use coffer_tests::{
    ACCOUNT_A, ACCOUNT_B, Backend, Harness, assert_error, backend_tests, keys_pb as pb,
};
use tonic::Code;

backend_tests!(
    create_encrypt_decrypt_round_trip,
    encryption_context_is_bound,
    data_keys_and_random,
    list_keys_pages_through_everything,
    another_account_sees_nothing,
    bad_input_gets_exact_errors,
    restart_loses_nothing,
    serve_refuses_unknown_and_repeated_services,
);

pub(crate) async fn create_key(
    client: &mut pb::keys_client::KeysClient<tonic::transport::Channel>,
) -> anyhow::Result<pb::KeyMetadata> {
    let response = client
        .create_key(pb::CreateKeyRequest {
            description: "e2e".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    response
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("CreateKey returned no metadata"))
}

async fn create_encrypt_decrypt_round_trip(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = create_key(&mut client).await?;
    assert_eq!(key.key_state, "Enabled");
    assert_eq!(key.key_spec, "SYMMETRIC_DEFAULT");
    assert_eq!(key.key_usage, "ENCRYPT_DECRYPT");
    assert_eq!(
        key.arn,
        format!("arn:coffer:kms:eu-west-1:{ACCOUNT_A}:key/{}", key.key_id)
    );
    assert_eq!(key.aws_account_id, ACCOUNT_A);
    assert!(key.enabled);

    let encrypted = client
        .encrypt(pb::EncryptRequest {
            key_id: key.key_id.clone(),
            plaintext: b"attack at dawn".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(encrypted.key_id, key.arn);
    assert_eq!(encrypted.encryption_algorithm, "SYMMETRIC_DEFAULT");

    let decrypted = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: encrypted.ciphertext_blob.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(decrypted.plaintext, b"attack at dawn");
    assert_eq!(decrypted.key_id, key.arn);

    // The key can be named by ARN too, on Decrypt and DescribeKey.
    let by_arn = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: encrypted.ciphertext_blob,
            key_id: key.arn.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(by_arn.plaintext, b"attack at dawn");
    let described = client
        .describe_key(pb::DescribeKeyRequest {
            key_id: key.arn.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(described.key_metadata.map(|m| m.key_id), Some(key.key_id));
    Ok(())
}

async fn encryption_context_is_bound(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = create_key(&mut client).await?;
    let context: HashMap<String, String> = [
        ("tenant".to_owned(), "blue".to_owned()),
        ("purpose".to_owned(), "backup".to_owned()),
    ]
    .into();
    let blob = client
        .encrypt(pb::EncryptRequest {
            key_id: key.key_id.clone(),
            plaintext: b"with context".to_vec(),
            encryption_context: context.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .ciphertext_blob;

    let decrypted = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob.clone(),
            encryption_context: context.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(decrypted.plaintext, b"with context");

    let mut missing_pair = context.clone();
    missing_pair.remove("purpose");
    let mut extra_pair = context.clone();
    extra_pair.insert("extra".into(), "1".into());
    let mut other_case = HashMap::new();
    other_case.insert("Tenant".to_owned(), "blue".to_owned());
    other_case.insert("purpose".to_owned(), "backup".to_owned());
    for wrong in [HashMap::new(), missing_pair, extra_pair, other_case] {
        let outcome = client
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: blob.clone(),
                encryption_context: wrong,
                ..Default::default()
            })
            .await;
        assert_error(outcome, Code::InvalidArgument, "InvalidCiphertextException");
    }
    Ok(())
}

async fn data_keys_and_random(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = create_key(&mut client).await?;

    for (key_spec, number_of_bytes, expected_len) in [
        ("AES_256", None, 32),
        ("AES_128", None, 16),
        ("", Some(1), 1),
        ("", Some(1024), 1024),
    ] {
        let data_key = client
            .generate_data_key(pb::GenerateDataKeyRequest {
                key_id: key.key_id.clone(),
                key_spec: key_spec.into(),
                number_of_bytes,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(data_key.plaintext.len(), expected_len);
        assert_eq!(data_key.key_id, key.arn);
        let decrypted = client
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: data_key.ciphertext_blob,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(decrypted.plaintext, data_key.plaintext);
    }

    let without = client
        .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
            key_id: key.key_id.clone(),
            key_spec: "AES_256".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let recovered = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: without.ciphertext_blob,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(recovered.plaintext.len(), 32);

    let first = client
        .generate_random(pb::GenerateRandomRequest {
            number_of_bytes: 64,
        })
        .await?
        .into_inner();
    let second = client
        .generate_random(pb::GenerateRandomRequest {
            number_of_bytes: 64,
        })
        .await?
        .into_inner();
    assert_eq!(first.plaintext.len(), 64);
    assert_ne!(first.plaintext, second.plaintext);
    Ok(())
}

async fn list_keys_pages_through_everything(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(create_key(&mut client).await?.key_id);
    }
    created.sort();
    let mut listed = Vec::new();
    let mut marker = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_keys(pb::ListKeysRequest {
                limit: Some(2),
                marker: marker.clone(),
            })
            .await?
            .into_inner();
        pages += 1;
        listed.extend(page.keys.iter().map(|entry| entry.key_id.clone()));
        if !page.truncated {
            assert!(page.next_marker.is_empty());
            break;
        }
        marker = page.next_marker;
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, created);

    let outcome = client
        .list_keys(pb::ListKeysRequest {
            limit: Some(2),
            marker: "forged".into(),
        })
        .await;
    assert_error(outcome, Code::InvalidArgument, "InvalidMarkerException");
    // A limit sent is 1 to the most; a 0 sent is refused, not read as
    // left out (proto3 `optional`, as AWS's JSON tells the two apart).
    for limit in [1001, 0, -1] {
        let outcome = client
            .list_keys(pb::ListKeysRequest {
                limit: Some(limit),
                marker: String::new(),
            })
            .await;
        let status = assert_error(outcome, Code::InvalidArgument, "ValidationException");
        assert!(status.message().contains("limit"), "{status:?}");
    }
    let key_id = created[0].clone();
    for outcome in [
        client
            .list_aliases(pb::ListAliasesRequest {
                limit: Some(0),
                ..Default::default()
            })
            .await
            .map(drop),
        client
            .list_grants(pb::ListGrantsRequest {
                key_id: key_id.clone(),
                limit: Some(0),
                ..Default::default()
            })
            .await
            .map(drop),
        client
            .list_resource_tags(pb::ListResourceTagsRequest {
                key_id: key_id.clone(),
                limit: Some(0),
                ..Default::default()
            })
            .await
            .map(drop),
        client
            .list_key_policies(pb::ListKeyPoliciesRequest {
                key_id: key_id.clone(),
                limit: Some(0),
                ..Default::default()
            })
            .await
            .map(drop),
        client
            .list_key_rotations(pb::ListKeyRotationsRequest {
                key_id: key_id.clone(),
                limit: Some(0),
                ..Default::default()
            })
            .await
            .map(drop),
    ] {
        assert_error(outcome, Code::InvalidArgument, "ValidationException");
    }
    Ok(())
}

async fn another_account_sees_nothing(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut owner = harness.keys_for(ACCOUNT_A, "alice").await?;
    let mut stranger = harness.keys_for(ACCOUNT_B, "mallory").await?;
    let key = create_key(&mut owner).await?;
    let blob = owner
        .encrypt(pb::EncryptRequest {
            key_id: key.key_id.clone(),
            plaintext: b"secret".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .ciphertext_blob;

    // A key of another account answers exactly as a key that does not exist.
    let missing_id = uuid::Uuid::new_v4().to_string();
    let existing = stranger
        .describe_key(pb::DescribeKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await;
    let missing = stranger
        .describe_key(pb::DescribeKeyRequest {
            key_id: missing_id.clone(),
            ..Default::default()
        })
        .await;
    let existing = assert_error(existing, Code::NotFound, "NotFoundException");
    let missing = assert_error(missing, Code::NotFound, "NotFoundException");
    assert_eq!(
        existing.message().replace(&key.key_id, "ID"),
        missing.message().replace(&missing_id, "ID")
    );

    let existing_arn = stranger
        .encrypt(pb::EncryptRequest {
            key_id: key.arn.clone(),
            plaintext: b"x".to_vec(),
            ..Default::default()
        })
        .await;
    let missing_arn = stranger
        .encrypt(pb::EncryptRequest {
            key_id: key.arn.replace(&key.key_id, &missing_id),
            plaintext: b"x".to_vec(),
            ..Default::default()
        })
        .await;
    let existing_arn = assert_error(existing_arn, Code::NotFound, "NotFoundException");
    let missing_arn = assert_error(missing_arn, Code::NotFound, "NotFoundException");
    assert_eq!(
        existing_arn.message().replace(&key.key_id, "ID"),
        missing_arn.message().replace(&missing_id, "ID")
    );

    let decrypt = stranger
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            ..Default::default()
        })
        .await;
    assert_error(decrypt, Code::InvalidArgument, "InvalidCiphertextException");
    let listed = stranger
        .list_keys(pb::ListKeysRequest::default())
        .await?
        .into_inner();
    assert!(listed.keys.is_empty());
    Ok(())
}

async fn bad_input_gets_exact_errors(backend: Backend) -> anyhow::Result<()> {
    use tonic_types::StatusExt as _;

    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = create_key(&mut client).await?;
    let encrypt = |plaintext: Vec<u8>, key_id: &str| pb::EncryptRequest {
        key_id: key_id.to_owned(),
        plaintext,
        ..Default::default()
    };

    let too_big = client.encrypt(encrypt(vec![7; 4097], &key.key_id)).await;
    let status = assert_error(too_big, Code::InvalidArgument, "ValidationException");
    let fields: Vec<String> = status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(fields, ["plaintext"]);
    client.encrypt(encrypt(vec![7; 4096], &key.key_id)).await?;
    assert_error(
        client.encrypt(encrypt(Vec::new(), &key.key_id)).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert_error(
        client.encrypt(encrypt(vec![1], "")).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert_error(
        client.encrypt(encrypt(vec![1], "not-a-key")).await,
        Code::NotFound,
        "NotFoundException",
    );
    assert_error(
        client.encrypt(encrypt(vec![1], "alias/nothing")).await,
        Code::NotFound,
        "NotFoundException",
    );
    let other_region = key.arn.replace("eu-west-1", "us-east-1");
    assert_error(
        client.encrypt(encrypt(vec![1], &other_region)).await,
        Code::NotFound,
        "NotFoundException",
    );

    let wrong_algorithm = client
        .encrypt(pb::EncryptRequest {
            encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
            ..encrypt(vec![1], &key.key_id)
        })
        .await;
    assert_error(
        wrong_algorithm,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    let unknown_algorithm = client
        .encrypt(pb::EncryptRequest {
            encryption_algorithm: "ROT13".into(),
            ..encrypt(vec![1], &key.key_id)
        })
        .await;
    assert_error(
        unknown_algorithm,
        Code::InvalidArgument,
        "ValidationException",
    );
    let too_many_tokens = client
        .encrypt(pb::EncryptRequest {
            grant_tokens: vec!["t".into(); 11],
            ..encrypt(vec![1], &key.key_id)
        })
        .await;
    assert_error(
        too_many_tokens,
        Code::InvalidArgument,
        "ValidationException",
    );

    // Decrypt naming a different key than the blob's.
    let other_key = create_key(&mut client).await?;
    let blob = client
        .encrypt(encrypt(b"x".to_vec(), &key.key_id))
        .await?
        .into_inner()
        .ciphertext_blob;
    let incorrect = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            key_id: other_key.key_id,
            ..Default::default()
        })
        .await;
    assert_error(incorrect, Code::InvalidArgument, "IncorrectKeyException");

    let both = client
        .generate_data_key(pb::GenerateDataKeyRequest {
            key_id: key.key_id.clone(),
            key_spec: "AES_256".into(),
            number_of_bytes: Some(32),
            ..Default::default()
        })
        .await;
    assert_error(both, Code::InvalidArgument, "ValidationException");
    for count in [0, 1025, -1] {
        let outcome = client
            .generate_random(pb::GenerateRandomRequest {
                number_of_bytes: count,
            })
            .await;
        assert_error(outcome, Code::InvalidArgument, "ValidationException");
    }

    let unsupported = client
        .create_key(pb::CreateKeyRequest {
            key_spec: "ML_DSA_44".into(),
            key_usage: "SIGN_VERIFY".into(),
            ..Default::default()
        })
        .await;
    assert_error(
        unsupported,
        Code::InvalidArgument,
        "UnsupportedOperationException",
    );
    let bad_spec = client
        .create_key(pb::CreateKeyRequest {
            key_spec: "AES".into(),
            ..Default::default()
        })
        .await;
    assert_error(bad_spec, Code::InvalidArgument, "ValidationException");
    let reserved_tag = client
        .create_key(pb::CreateKeyRequest {
            tags: vec![coffer_proto::common::v1::Tag {
                tag_key: "aws:owner".into(),
                tag_value: "x".into(),
            }],
            ..Default::default()
        })
        .await;
    assert_error(reserved_tag, Code::InvalidArgument, "TagException");
    let long_description = client
        .create_key(pb::CreateKeyRequest {
            description: "d".repeat(8193),
            ..Default::default()
        })
        .await;
    assert_error(
        long_description,
        Code::InvalidArgument,
        "ValidationException",
    );

    // NUL, which Postgres text cannot hold, gets the same answer on both
    // backends (it was KMSInternalException on Postgres, stored on SQLite),
    // and nothing is stored.
    let key = create_key(&mut client).await?;
    let nul_description = client
        .update_key_description(pb::UpdateKeyDescriptionRequest {
            key_id: key.key_id.clone(),
            description: "before\0after".into(),
        })
        .await;
    let status = assert_error(
        nul_description,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(status.message().contains("description"), "{status:?}");
    for (tag_key, tag_value) in [("team\0", "x"), ("team", "a\0b"), ("team", "a\u{7}b")] {
        let nul_tag = client
            .tag_resource(pb::TagResourceRequest {
                key_id: key.key_id.clone(),
                tags: vec![coffer_proto::common::v1::Tag {
                    tag_key: tag_key.into(),
                    tag_value: tag_value.into(),
                }],
            })
            .await;
        assert_error(nul_tag, Code::InvalidArgument, "TagException");
    }
    // Lengths are the API's constraints, as UntagResource's are.
    for (tag_key, tag_value) in [
        (String::new(), String::new()),
        ("k".repeat(129), String::new()),
        ("team".to_owned(), "v".repeat(257)),
    ] {
        let too_long = client
            .tag_resource(pb::TagResourceRequest {
                key_id: key.key_id.clone(),
                tags: vec![coffer_proto::common::v1::Tag { tag_key, tag_value }],
            })
            .await;
        let status = assert_error(too_long, Code::InvalidArgument, "ValidationException");
        assert!(status.message().contains("tags"), "{status:?}");
    }
    let longest = client
        .tag_resource(pb::TagResourceRequest {
            key_id: key.key_id.clone(),
            tags: vec![coffer_proto::common::v1::Tag {
                tag_key: "é".repeat(128),
                tag_value: "é".repeat(256),
            }],
        })
        .await;
    assert!(longest.is_ok(), "{longest:?}");
    client
        .untag_resource(pb::UntagResourceRequest {
            key_id: key.key_id.clone(),
            tag_keys: vec!["é".repeat(128)],
        })
        .await?;
    let nul_untag = client
        .untag_resource(pb::UntagResourceRequest {
            key_id: key.key_id.clone(),
            tag_keys: vec!["team\0".into()],
        })
        .await;
    assert_error(nul_untag, Code::InvalidArgument, "ValidationException");
    for key_id in ["alias/x\0", "alias/\0", &format!("{}\0", key.arn)] {
        let nul_reference = client
            .encrypt(pb::EncryptRequest {
                key_id: key_id.into(),
                plaintext: b"p".to_vec(),
                ..Default::default()
            })
            .await;
        assert_error(nul_reference, Code::NotFound, "NotFoundException");
    }
    let described = client
        .describe_key(pb::DescribeKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    assert_eq!(described.description, "e2e");
    let tags = client
        .list_resource_tags(pb::ListResourceTagsRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .tags;
    assert!(tags.is_empty(), "{tags:?}");

    // A grantee of another partition could never call here.
    for principal in [
        "arn:aws:iam::111122223333:user/app".to_owned(),
        format!("arn:aws:iam::{ACCOUNT_A}:role/app"),
    ] {
        let foreign = client
            .create_grant(pb::CreateGrantRequest {
                key_id: key.key_id.clone(),
                grantee_principal: principal.clone(),
                operations: vec!["Encrypt".into()],
                ..Default::default()
            })
            .await;
        let status = assert_error(foreign, Code::InvalidArgument, "ValidationException");
        assert!(status.message().contains("grantee_principal"), "{status:?}");
    }
    Ok(())
}

async fn restart_loses_nothing(backend: Backend) -> anyhow::Result<()> {
    let mut harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = create_key(&mut client).await?;
    let blob = client
        .encrypt(pb::EncryptRequest {
            key_id: key.key_id.clone(),
            plaintext: b"durable".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .ciphertext_blob;
    harness.restart().await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let decrypted = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(decrypted.plaintext, b"durable");
    let described = client
        .describe_key(pb::DescribeKeyRequest {
            key_id: key.key_id,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        described.key_metadata.map(|m| m.description),
        Some("e2e".to_owned())
    );
    Ok(())
}

/// `coffer serve` with a service named twice, or one this build does not
/// serve, stops with a message instead of opening a store twice.
async fn serve_refuses_unknown_and_repeated_services(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let clock: std::sync::Arc<dyn coffer_platform::clock::Clock> =
        std::sync::Arc::new(coffer_platform::clock::SystemClock);
    for (services, message) in [
        (&["keys", "keys"][..], "the service keys is named twice"),
        (
            &["secrets"][..],
            "\"secrets\" is not a service this build serves",
        ),
    ] {
        let names: Vec<String> = services.iter().map(|name| (*name).to_owned()).collect();
        match coffer::launch(harness.settings(), &names, clock.clone()).await {
            Ok(_) => anyhow::bail!("{services:?} was served"),
            Err(error) => assert!(error.to_string().contains(message), "{error:#}"),
        }
    }
    // An admin address in use stops the start before any store is opened:
    // the databases named here are never created.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut settings = harness.settings().clone();
    settings.admin_listen = Some(taken.local_addr()?);
    let mut unopened = Vec::new();
    for (name, service) in &mut settings.services {
        let path = harness.dir().join(format!("never-opened-{name}.db"));
        service.listen = "127.0.0.1:0".parse()?;
        service.database.backend = coffer_platform::config::DatabaseBackend::Sqlite;
        service.database.url = format!("sqlite://{}", path.display());
        unopened.push(path);
    }
    let both = ["keys".to_owned(), "audit".to_owned()];
    match coffer::launch(&settings, &both, clock).await {
        Ok(_) => anyhow::bail!("served with the admin address in use"),
        Err(error) => assert!(
            error.to_string().contains("binding admin address"),
            "{error:#}"
        ),
    }
    for path in unopened {
        assert!(!path.exists(), "{} was opened", path.display());
    }
    Ok(())
}
