//! Every API call produces exactly one audit event, with the right content,
//! and no plaintext reaches an event or a log line.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use coffer_tests::{
    ACCOUNT_A, Backend, Harness, Options, backend_tests, keys_pb as pb, request_id_of,
};
use serde_json::{Value, json};

backend_tests!(
    every_rpc_emits_exactly_one_event,
    no_plaintext_in_events_or_logs,
    a_client_calling_in_sequence_never_waits_for_gathering,
    events_have_cloudtrail_shapes,
);

async fn single_event(harness: &Harness, request_id: &str) -> anyhow::Result<Value> {
    let mut events = harness.audit_events_for(request_id).await?;
    anyhow::ensure!(
        events.len() == 1,
        "request {request_id} has {} events",
        events.len()
    );
    Ok(events.remove(0))
}

async fn every_rpc_emits_exactly_one_event(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let caller_arn = format!("arn:coffer:iam::{ACCOUNT_A}:user/alice");
    // (request id, event name, read only, category, names the key)
    let mut expected: Vec<(String, &str, bool, &str, bool)> = Vec::new();

    let created = client.create_key(pb::CreateKeyRequest::default()).await?;
    expected.push((
        request_id_of(created.metadata()),
        "CreateKey",
        false,
        "Management",
        true,
    ));
    let key = created
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    let key_id = key.key_id.clone();

    let described = client
        .describe_key(pb::DescribeKeyRequest {
            key_id: key_id.clone(),
            ..Default::default()
        })
        .await?;
    expected.push((
        request_id_of(described.metadata()),
        "DescribeKey",
        true,
        "Management",
        true,
    ));
    let listed = client.list_keys(pb::ListKeysRequest::default()).await?;
    expected.push((
        request_id_of(listed.metadata()),
        "ListKeys",
        true,
        "Management",
        false,
    ));
    let encrypted = client
        .encrypt(pb::EncryptRequest {
            key_id: key_id.clone(),
            plaintext: b"x".to_vec(),
            ..Default::default()
        })
        .await?;
    expected.push((
        request_id_of(encrypted.metadata()),
        "Encrypt",
        true,
        "Data",
        true,
    ));
    let blob = encrypted.into_inner().ciphertext_blob;
    // ReEncrypt changes nothing stored: CloudTrail files it as read-only.
    let re_encrypted = client
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob.clone(),
            destination_key_id: key_id.clone(),
            ..Default::default()
        })
        .await?;
    expected.push((
        request_id_of(re_encrypted.metadata()),
        "ReEncrypt",
        true,
        "Data",
        true,
    ));
    let decrypted = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            ..Default::default()
        })
        .await?;
    expected.push((
        request_id_of(decrypted.metadata()),
        "Decrypt",
        true,
        "Data",
        true,
    ));
    let data_key = client
        .generate_data_key(pb::GenerateDataKeyRequest {
            key_id: key_id.clone(),
            key_spec: "AES_256".into(),
            ..Default::default()
        })
        .await?;
    expected.push((
        request_id_of(data_key.metadata()),
        "GenerateDataKey",
        true,
        "Data",
        true,
    ));
    let without = client
        .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
            key_id: key_id.clone(),
            number_of_bytes: Some(48),
            ..Default::default()
        })
        .await?;
    expected.push((
        request_id_of(without.metadata()),
        "GenerateDataKeyWithoutPlaintext",
        true,
        "Data",
        true,
    ));
    let random = client
        .generate_random(pb::GenerateRandomRequest { number_of_bytes: 8 })
        .await?;
    expected.push((
        request_id_of(random.metadata()),
        "GenerateRandom",
        true,
        "Data",
        false,
    ));

    for (request_id, name, read_only, category, names_key) in &expected {
        let event = single_event(&harness, request_id).await?;
        assert_eq!(event["eventName"], *name);
        assert_eq!(event["eventSource"], "kms.coffer.internal");
        assert_eq!(event["awsRegion"], "eu-west-1");
        assert_eq!(event["readOnly"], *read_only, "{name}");
        assert_eq!(event["eventCategory"], *category, "{name}");
        assert_eq!(event["userIdentity"]["arn"], caller_arn.as_str());
        assert_eq!(event["userIdentity"]["type"], "IAMUser");
        assert_eq!(event["recipientAccountId"], ACCOUNT_A);
        assert_eq!(event["sourceIPAddress"], "127.0.0.1");
        assert!(event.get("errorCode").is_none(), "{name}: {event}");
        assert_eq!(event["traceId"].as_str().map(str::len), Some(32));
        let resources = event["resources"].as_array().cloned().unwrap_or_default();
        if *names_key {
            assert_eq!(resources.len(), 1, "{name}");
            assert_eq!(resources[0]["ARN"], key.arn.as_str());
            assert_eq!(resources[0]["type"], "AWS::KMS::Key");
        } else {
            assert!(resources.is_empty(), "{name}");
        }
    }

    // Failures get exactly one event too, carrying the exception name.
    let failed = client
        .encrypt(pb::EncryptRequest {
            key_id: uuid::Uuid::new_v4().to_string(),
            plaintext: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("encrypt under a missing key succeeded"))?;
    let event = single_event(&harness, &request_id_of(failed.metadata())).await?;
    assert_eq!(event["errorCode"], "NotFoundException");
    assert_eq!(event["eventName"], "Encrypt");
    let garbage = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: vec![9; 40],
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("garbage decrypted"))?;
    let event = single_event(&harness, &request_id_of(garbage.metadata())).await?;
    assert_eq!(event["errorCode"], "InvalidCiphertextException");

    // And nothing else was written: one event per call made above.
    assert_eq!(harness.audit_events().await?.len(), expected.len() + 2);
    // A Decrypt that names no key, refused after its key was found and
    // allowed (the context is wrong), names that key.
    let blob = client
        .encrypt(pb::EncryptRequest {
            key_id: key.arn.clone(),
            plaintext: b"x".to_vec(),
            encryption_context: [("purpose".to_owned(), "test".to_owned())].into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .ciphertext_blob;
    let wrong_context = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("decrypted without its context"))?;
    let event = single_event(&harness, &request_id_of(wrong_context.metadata())).await?;
    assert_eq!(event["errorCode"], "InvalidCiphertextException");
    assert_eq!(event["resources"][0]["ARN"], key.arn.as_str(), "{event:#}");
    // A propagated trace context is recorded.
    let mut traced = tonic::Request::new(pb::ListKeysRequest::default());
    traced.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?,
    );
    let response = client.list_keys(traced).await?;
    let event = single_event(&harness, &request_id_of(response.metadata())).await?;
    assert_eq!(event["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    Ok(())
}

async fn no_plaintext_in_events_or_logs(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let marker = format!("PLAINTEXT-MARKER-{}", uuid::Uuid::new_v4().simple());
    let key_id = crate::keys::create_key(&mut client).await?.key_id;
    let blob = client
        .encrypt(pb::EncryptRequest {
            key_id: key_id.clone(),
            plaintext: marker.as_bytes().to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .ciphertext_blob;
    client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            ..Default::default()
        })
        .await?;
    // A rejected plaintext (too long) must not be echoed either.
    let long = format!("{marker}{}", "y".repeat(5000));
    let _rejected = client
        .encrypt(pb::EncryptRequest {
            key_id: key_id.clone(),
            plaintext: long.into_bytes(),
            ..Default::default()
        })
        .await;
    let data_key = client
        .generate_data_key(pb::GenerateDataKeyRequest {
            key_id,
            key_spec: "AES_256".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .plaintext;
    let random = client
        .generate_random(pb::GenerateRandomRequest {
            number_of_bytes: 32,
        })
        .await?
        .into_inner()
        .plaintext;

    // Everything the audit service stored, as stored.
    let events = harness
        .audit_events()
        .await?
        .iter()
        .map(serde_json::Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let logs = coffer_tests::captured_logs();
    assert!(!events.is_empty() && !logs.is_empty());
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    for (what, needle) in [
        ("plaintext", marker.clone()),
        ("plaintext base64", STANDARD.encode(marker.as_bytes())),
        ("data key base64", STANDARD.encode(&data_key)),
        ("data key hex", hex(&data_key)),
        ("random base64", STANDARD.encode(&random)),
        ("random hex", hex(&random)),
    ] {
        assert!(
            !events.contains(&needle),
            "{what} appears in an audit event"
        );
        assert!(!logs.contains(&needle), "{what} appears in a log line");
    }
    Ok(())
}

/// The exporter lets a small export wait for calls still running; a call's
/// own event must not wait for the call itself. With one client calling in
/// sequence no other call runs, so no export waits for the gathering time.
async fn a_client_calling_in_sequence_never_waits_for_gathering(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start_with(
        backend,
        Options {
            audit_extra: "  gather_ms: 100\n".into(),
            ..Options::default()
        },
    )
    .await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key_id = crate::keys::create_key(&mut client).await?.key_id;
    for _ in 0..5 {
        client
            .encrypt(pb::EncryptRequest {
                key_id: key_id.clone(),
                plaintext: b"x".to_vec(),
                ..Default::default()
            })
            .await?;
    }
    let counters = harness
        .instance()?
        .export_counters()
        .ok_or_else(|| anyhow::anyhow!("the harness exports no audit events"))?;
    assert_eq!(
        counters
            .gathers_timed_out
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "an export waited for the gathering time"
    );
    assert!(
        counters
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 6
    );
    Ok(())
}

/// Events hold what CloudTrail's records of the same calls hold: only the
/// parameters a request sent (an omitted encryption algorithm as the
/// `SYMMETRIC_DEFAULT` it means), an alias and its key as resources, and
/// the response elements KMS records.
async fn events_have_cloudtrail_shapes(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;

    let created = client.create_key(pb::CreateKeyRequest::default()).await?;
    let event = single_event(&harness, &request_id_of(created.metadata())).await?;
    let metadata = created
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    let key = metadata.arn.clone();
    let recorded = &event["responseElements"]["keyMetadata"];
    assert_eq!(recorded["aWSAccountId"], ACCOUNT_A, "{event:#}");
    assert_eq!(recorded["arn"], key.as_str());
    assert_eq!(recorded["enabled"], true);
    assert_eq!(recorded["keyManager"], "CUSTOMER");
    assert_eq!(recorded["customerMasterKeySpec"], "SYMMETRIC_DEFAULT");
    assert_eq!(
        recorded["encryptionAlgorithms"],
        json!(["SYMMETRIC_DEFAULT"])
    );
    assert!(recorded.get("signingAlgorithms").is_none(), "{event:#}");
    assert!(
        recorded["creationDate"]
            .as_str()
            .is_some_and(|date| date.ends_with('Z')),
        "{event:#}"
    );
    // Nothing was sent but the defaults: no request parameters but those.
    assert_eq!(
        event["requestParameters"],
        json!({"multiRegion": false}),
        "{event:#}"
    );

    let encrypted = client
        .encrypt(pb::EncryptRequest {
            key_id: key.clone(),
            plaintext: b"x".to_vec(),
            ..Default::default()
        })
        .await?;
    let event = single_event(&harness, &request_id_of(encrypted.metadata())).await?;
    assert_eq!(
        event["requestParameters"],
        json!({"keyId": key, "encryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
    );

    let listed = client
        .list_aliases(pb::ListAliasesRequest::default())
        .await?;
    let event = single_event(&harness, &request_id_of(listed.metadata())).await?;
    assert_eq!(event["requestParameters"], Value::Null, "{event:#}");

    // An alias and its key, the alias first.
    let key_id = metadata.key_id.clone();
    let alias_arn = key.replace(&format!("key/{key_id}"), "alias/shaped");
    let alias_created = client
        .create_alias(pb::CreateAliasRequest {
            alias_name: "alias/shaped".into(),
            target_key_id: key_id.clone(),
        })
        .await?;
    let deleted = client
        .delete_alias(pb::DeleteAliasRequest {
            alias_name: "alias/shaped".into(),
        })
        .await?;
    for response in [alias_created.metadata(), deleted.metadata()] {
        let event = single_event(&harness, &request_id_of(response)).await?;
        let resources: Vec<&str> = event["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|resource| resource["ARN"].as_str())
            .collect();
        assert_eq!(resources, [alias_arn.as_str(), key.as_str()], "{event:#}");
        // The key's ARN, as CloudTrail records it although the call does
        // not return it.
        assert_eq!(
            event["responseElements"],
            json!({"keyId": key}),
            "{event:#}"
        );
    }

    // A required parameter sent empty is recorded: the description cleared.
    let cleared = client
        .update_key_description(pb::UpdateKeyDescriptionRequest {
            key_id: key_id.clone(),
            description: String::new(),
        })
        .await?;
    let event = single_event(&harness, &request_id_of(cleared.metadata())).await?;
    assert_eq!(
        event["requestParameters"],
        json!({"keyId": key_id, "description": ""})
    );

    // ScheduleKeyDeletion's date as a date; CancelKeyDeletion's key.
    let scheduled = client
        .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
            key_id: key_id.clone(),
            pending_window_in_days: None,
        })
        .await?;
    let event = single_event(&harness, &request_id_of(scheduled.metadata())).await?;
    assert_eq!(event["requestParameters"], json!({"keyId": key_id}));
    assert_eq!(event["responseElements"]["keyState"], "PendingDeletion");
    assert!(
        event["responseElements"]["deletionDate"]
            .as_str()
            .is_some_and(|date| date.ends_with('Z')),
        "{event:#}"
    );
    let cancelled = client
        .cancel_key_deletion(pb::CancelKeyDeletionRequest {
            key_id: key_id.clone(),
        })
        .await?;
    let event = single_event(&harness, &request_id_of(cancelled.metadata())).await?;
    assert_eq!(event["responseElements"], json!({"keyId": key}));
    assert_eq!(
        single_event(&harness, &request_id_of(cleared.metadata())).await?["responseElements"],
        Value::Null,
        "UpdateKeyDescription records no response, as in CloudTrail"
    );

    // The other calls CloudTrail records the changed key's ARN for.
    let other = client
        .create_key(pb::CreateKeyRequest::default())
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    let enabled = client
        .enable_key(pb::EnableKeyRequest {
            key_id: key_id.clone(),
        })
        .await?;
    let rotating = client
        .enable_key_rotation(pb::EnableKeyRotationRequest {
            key_id: key_id.clone(),
            rotation_period_in_days: None,
        })
        .await?;
    let disabled = client
        .disable_key(pb::DisableKeyRequest {
            key_id: other.key_id.clone(),
        })
        .await?;
    client
        .create_alias(pb::CreateAliasRequest {
            alias_name: "alias/moved".into(),
            target_key_id: key_id.clone(),
        })
        .await?;
    let moved = client
        .update_alias(pb::UpdateAliasRequest {
            alias_name: "alias/moved".into(),
            target_key_id: other.key_id.clone(),
        })
        .await?;
    for (name, response, arn) in [
        ("EnableKey", enabled.metadata(), &key),
        ("EnableKeyRotation", rotating.metadata(), &key),
        ("DisableKey", disabled.metadata(), &other.arn),
        ("UpdateAlias", moved.metadata(), &other.arn),
    ] {
        let event = single_event(&harness, &request_id_of(response)).await?;
        assert_eq!(event["eventName"], name);
        assert_eq!(
            event["responseElements"],
            json!({"keyId": arn}),
            "{event:#}"
        );
    }
    Ok(())
}
