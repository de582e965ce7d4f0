//! The key lifecycle over the network: states, deletion, aliases, tags,
//! rotation (driven by a clock the test moves), service-managed keys and
//! ReEncrypt. Every error is asserted with its exact code and exception.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coffer_platform::clock::ManualClock;
use coffer_tests::{
    ACCOUNT_A, ACCOUNT_B, Backend, Harness, assert_error, backend_tests, keys_pb as pb, wait_for,
};
use pb::keys_client::KeysClient;
use tonic::Code;
use tonic::transport::Channel;

backend_tests!(
    a_key_scheduled_for_deletion_behind_a_held_record_is_named_when_writes_are_refused,
    disabled_keys_refuse_use_until_enabled,
    scheduled_deletion_destroys_the_key_when_due,
    aliases_name_keys_wherever_a_key_id_goes,
    a_key_has_at_most_fifty_aliases,
    tags_are_managed_and_limited,
    rotation_keeps_old_ciphertexts_decrypting,
    enabling_rotation_again_keeps_its_schedule,
    service_managed_keys_are_created_on_first_use_and_protected,
    a_failed_first_use_leaves_no_service_managed_key_behind,
    re_encrypt_moves_ciphertext_between_keys,
    answers_and_events_name_the_key_material,
    a_key_the_scheduler_cannot_change_holds_up_no_other,
    an_account_at_its_key_quota_is_refused_another_key,
);

const DAY: Duration = Duration::from_secs(86_400);

/// The service events (`AwsServiceEvent`) named `name` about `key` (an ARN)
/// in the trail, after checking each has CloudTrail's shape: no request, no
/// response, the key's account as the recipient, the key id in
/// `serviceEventDetails`.
async fn service_events(
    harness: &Harness,
    name: &str,
    key: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let events: Vec<serde_json::Value> = harness
        .audit_events()
        .await?
        .into_iter()
        .filter(|event| event["eventName"] == name && event["resources"][0]["ARN"] == key)
        .collect();
    let key_id = key.rsplit('/').next().unwrap_or_default();
    for event in &events {
        assert_eq!(event["eventType"], "AwsServiceEvent", "{event:#}");
        assert_eq!(event["serviceEventDetails"]["keyId"], key_id, "{event:#}");
        assert_eq!(event["recipientAccountId"], ACCOUNT_A, "{event:#}");
        assert_eq!(event["userIdentity"]["accountId"], ACCOUNT_A, "{event:#}");
        assert_eq!(event["resources"][0]["type"], "AWS::KMS::Key", "{event:#}");
        assert!(event["requestParameters"].is_null(), "{event:#}");
        assert!(event["responseElements"].is_null(), "{event:#}");
        assert!(event.get("errorCode").is_none(), "{event:#}");
        assert_eq!(event["readOnly"], false, "{event:#}");
        // No one asked for it: no request id, no caller's identity type.
        assert!(event.get("requestID").is_none(), "{event:#}");
        assert!(event["userIdentity"].get("type").is_none(), "{event:#}");
        assert_eq!(
            event["userIdentity"]["invokedBy"], event["eventSource"],
            "{event:#}"
        );
    }
    Ok(events)
}

/// DescribeKey's metadata of `key_id`.
async fn describe(
    client: &mut KeysClient<Channel>,
    key_id: &str,
) -> anyhow::Result<pb::KeyMetadata> {
    client
        .describe_key(pb::DescribeKeyRequest {
            key_id: key_id.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))
}

async fn new_key(client: &mut KeysClient<Channel>) -> anyhow::Result<pb::KeyMetadata> {
    client
        .create_key(pb::CreateKeyRequest {
            description: "lifecycle".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))
}

async fn encrypt(
    client: &mut KeysClient<Channel>,
    key_id: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    client
        .encrypt(pb::EncryptRequest {
            key_id: key_id.into(),
            plaintext: plaintext.to_vec(),
            ..Default::default()
        })
        .await
        .map(|response| response.into_inner().ciphertext_blob)
}

async fn decrypt(client: &mut KeysClient<Channel>, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob.to_vec(),
            ..Default::default()
        })
        .await
        .map(|response| response.into_inner().plaintext)
}

async fn state_of(client: &mut KeysClient<Channel>, key_id: &str) -> anyhow::Result<String> {
    Ok(client
        .describe_key(pb::DescribeKeyRequest {
            key_id: key_id.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .map(|metadata| metadata.key_state)
        .unwrap_or_default())
}

fn key_id_request<T: Default>(make: impl FnOnce(String) -> T, key_id: &str) -> T {
    make(key_id.to_owned())
}

/// Every alias name ListAliases gives, read in pages of `limit`.
async fn alias_names_in_pages(
    client: &mut KeysClient<Channel>,
    limit: i32,
) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut marker = String::new();
    loop {
        let page = client
            .list_aliases(pb::ListAliasesRequest {
                limit: Some(limit),
                marker: marker.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        anyhow::ensure!(page.aliases.len() <= limit as usize, "an oversize page");
        names.extend(page.aliases.into_iter().map(|alias| alias.alias_name));
        if !page.truncated {
            anyhow::ensure!(page.next_marker.is_empty(), "a marker on the last page");
            return Ok(names);
        }
        marker = page.next_marker;
    }
}

async fn disabled_keys_refuse_use_until_enabled(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut client).await?;
    let blob = encrypt(&mut client, &key.key_id, b"kept").await?;

    client
        .disable_key(key_id_request(
            |key_id| pb::DisableKeyRequest { key_id },
            &key.key_id,
        ))
        .await?;
    // Disabling twice is fine, as in AWS.
    client
        .disable_key(key_id_request(
            |key_id| pb::DisableKeyRequest { key_id },
            &key.key_id,
        ))
        .await?;
    assert_eq!(state_of(&mut client, &key.key_id).await?, "Disabled");
    let status = assert_error(
        encrypt(&mut client, &key.key_id, b"x").await,
        Code::FailedPrecondition,
        "DisabledException",
    );
    assert!(status.message().contains(&key.arn), "{status:?}");
    assert_error(
        decrypt(&mut client, &blob).await,
        Code::FailedPrecondition,
        "DisabledException",
    );
    let data_key = client
        .generate_data_key(pb::GenerateDataKeyRequest {
            key_id: key.key_id.clone(),
            key_spec: "AES_256".into(),
            ..Default::default()
        })
        .await;
    assert_error(data_key, Code::FailedPrecondition, "DisabledException");
    let rotate = client
        .rotate_key_on_demand(pb::RotateKeyOnDemandRequest {
            key_id: key.key_id.clone(),
        })
        .await;
    assert_error(rotate, Code::FailedPrecondition, "DisabledException");
    let stop_rotation = client
        .disable_key_rotation(pb::DisableKeyRotationRequest {
            key_id: key.key_id.clone(),
        })
        .await;
    assert_error(stop_rotation, Code::FailedPrecondition, "DisabledException");
    let grant = client
        .create_grant(pb::CreateGrantRequest {
            key_id: key.key_id.clone(),
            grantee_principal: format!("arn:coffer:iam::{ACCOUNT_A}:user/bob"),
            operations: vec!["Encrypt".into()],
            ..Default::default()
        })
        .await;
    assert_error(grant, Code::FailedPrecondition, "DisabledException");
    // Management still works on a disabled key.
    client
        .update_key_description(pb::UpdateKeyDescriptionRequest {
            key_id: key.key_id.clone(),
            description: "renamed".into(),
        })
        .await?;

    client
        .enable_key(key_id_request(
            |key_id| pb::EnableKeyRequest { key_id },
            &key.key_id,
        ))
        .await?;
    assert_eq!(decrypt(&mut client, &blob).await?, b"kept");
    let described = describe(&mut client, &key.key_id).await?;
    assert_eq!(described.description, "renamed");
    assert!(described.enabled);
    let too_long = client
        .update_key_description(pb::UpdateKeyDescriptionRequest {
            key_id: key.key_id.clone(),
            description: "d".repeat(8193),
        })
        .await;
    assert_error(too_long, Code::InvalidArgument, "ValidationException");
    Ok(())
}

async fn scheduled_deletion_destroys_the_key_when_due(backend: Backend) -> anyhow::Result<()> {
    let (harness, clock) = Harness::start_with_clock(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let doomed = new_key(&mut client).await?;
    let saved = new_key(&mut client).await?;
    let doomed_blob = encrypt(&mut client, &doomed.key_id, b"doomed").await?;
    let saved_blob = encrypt(&mut client, &saved.key_id, b"saved").await?;

    for window in [6, 31, 0, -1] {
        let outcome = client
            .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
                key_id: doomed.key_id.clone(),
                pending_window_in_days: Some(window),
            })
            .await;
        assert_error(outcome, Code::InvalidArgument, "ValidationException");
    }
    client
        .enable_key_rotation(pb::EnableKeyRotationRequest {
            key_id: saved.key_id.clone(),
            rotation_period_in_days: None,
        })
        .await?;
    let default_window = client
        .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
            key_id: saved.key_id.clone(),
            pending_window_in_days: None,
        })
        .await?
        .into_inner();
    assert_eq!(default_window.pending_window_in_days, 30);
    assert_eq!(default_window.key_state, "PendingDeletion");
    let scheduled = client
        .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
            key_id: doomed.key_id.clone(),
            pending_window_in_days: Some(7),
        })
        .await?
        .into_inner();
    assert_eq!(scheduled.key_id, doomed.arn);
    assert_eq!(scheduled.pending_window_in_days, 7);
    let deletion_seconds = scheduled
        .deletion_date
        .map(|date| date.seconds)
        .unwrap_or_default();
    let expected = (clock_now_seconds(&clock)) + 7 * 86_400;
    assert!(
        (deletion_seconds - expected).abs() <= 1,
        "deletion date {deletion_seconds} vs {expected}"
    );

    // PendingDeletion refuses use and management with KMSInvalidStateException.
    let status = assert_error(
        encrypt(&mut client, &doomed.key_id, b"x").await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
    );
    // The key's ARN and its state in words, as KMS's message reads.
    assert_eq!(
        status.message(),
        format!("{} is pending deletion.", doomed.arn),
        "{status:?}"
    );
    assert_error(
        decrypt(&mut client, &doomed_blob).await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
    );
    let disable = client
        .disable_key(pb::DisableKeyRequest {
            key_id: doomed.key_id.clone(),
        })
        .await;
    assert_error(
        disable,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
    );
    let again = client
        .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
            key_id: doomed.key_id.clone(),
            pending_window_in_days: Some(7),
        })
        .await;
    assert_error(again, Code::FailedPrecondition, "KMSInvalidStateException");
    assert_eq!(
        state_of(&mut client, &doomed.key_id).await?,
        "PendingDeletion"
    );

    // While pending deletion, rotation reads as off (as in AWS) ...
    let rotation = rotation_status(&mut client, &saved.key_id).await?;
    assert!(!rotation.key_rotation_enabled, "{rotation:?}");
    assert_eq!(rotation.next_rotation_date, None);
    assert_eq!(rotation.rotation_period_in_days, None);
    // ... and DescribeKey shows the deletion date, not a window (AWS shows
    // PendingDeletionWindowInDays only for PendingReplicaDeletion).
    let pending = describe(&mut client, &saved.key_id).await?;
    assert!(pending.deletion_date.is_some());
    assert_eq!(pending.pending_deletion_window_in_days, None);

    // Cancelling makes the key Disabled, with rotation as it was;
    // cancelling again is invalid.
    client
        .cancel_key_deletion(pb::CancelKeyDeletionRequest {
            key_id: saved.key_id.clone(),
        })
        .await?;
    assert_eq!(state_of(&mut client, &saved.key_id).await?, "Disabled");
    let rotation = rotation_status(&mut client, &saved.key_id).await?;
    assert!(rotation.key_rotation_enabled, "{rotation:?}");
    assert!(rotation.next_rotation_date.is_some(), "{rotation:?}");
    assert_eq!(rotation.rotation_period_in_days, Some(365));
    let cancel_again = client
        .cancel_key_deletion(pb::CancelKeyDeletionRequest {
            key_id: saved.key_id.clone(),
        })
        .await;
    let status = assert_error(
        cancel_again,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
    );
    assert_eq!(
        status.message(),
        format!("{} is not pending deletion.", saved.arn),
        "{status:?}"
    );

    // Nothing happens before the date ...
    clock.advance(6 * DAY);
    harness.run_maintenance().await?;
    assert_eq!(
        state_of(&mut client, &doomed.key_id).await?,
        "PendingDeletion"
    );
    assert!(
        service_events(&harness, "DeleteKey", &doomed.arn)
            .await?
            .is_empty()
    );
    // ... past it, it is too late to cancel, even before the reaper runs ...
    clock.advance(DAY + Duration::from_secs(1));
    let late = client
        .cancel_key_deletion(pb::CancelKeyDeletionRequest {
            key_id: doomed.key_id.clone(),
        })
        .await;
    let status = assert_error(late, Code::FailedPrecondition, "KMSInvalidStateException");
    assert_eq!(
        status.message(),
        format!("{} is pending deletion.", doomed.arn)
    );
    // ... and the key and its material are gone after it.
    harness.run_maintenance().await?;
    let described = client
        .describe_key(pb::DescribeKeyRequest {
            key_id: doomed.key_id.clone(),
            ..Default::default()
        })
        .await;
    assert_error(described, Code::NotFound, "NotFoundException");
    assert_error(
        decrypt(&mut client, &doomed_blob).await,
        Code::InvalidArgument,
        "InvalidCiphertextException",
    );
    // The deletion is in the trail once, as KMS's DeleteKey service event;
    // the outbox row that carried it is cleared.
    harness.run_maintenance().await?;
    assert_eq!(
        service_events(&harness, "DeleteKey", &doomed.arn)
            .await?
            .len(),
        1
    );
    assert!(
        service_events(&harness, "DeleteKey", &saved.arn)
            .await?
            .is_empty()
    );
    wait_for(
        "the outbox kept a service event's row",
        Duration::from_secs(20),
        || async { Ok(harness.instance()?.outbox_rows().await? == 0) },
    )
    .await?;

    // The cancelled key survived and works once enabled.
    client
        .enable_key(pb::EnableKeyRequest {
            key_id: saved.key_id.clone(),
        })
        .await?;
    assert_eq!(decrypt(&mut client, &saved_blob).await?, b"saved");
    Ok(())
}

async fn rotation_status(
    client: &mut KeysClient<Channel>,
    key_id: &str,
) -> anyhow::Result<pb::GetKeyRotationStatusResponse> {
    Ok(client
        .get_key_rotation_status(pb::GetKeyRotationStatusRequest {
            key_id: key_id.into(),
        })
        .await?
        .into_inner())
}

fn clock_now_seconds(clock: &ManualClock) -> i64 {
    use coffer_platform::clock::Clock as _;
    clock.now_millis() / 1000
}

/// AWS's quota of 50 aliases per key, for CreateAlias and UpdateAlias
/// alike; a refused change leaves every alias where it was.
async fn a_key_has_at_most_fifty_aliases(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let full = new_key(&mut client).await?;
    let other = new_key(&mut client).await?;
    let create = |alias_name: String, target: &str| pb::CreateAliasRequest {
        alias_name,
        target_key_id: target.into(),
    };
    for n in 0..50 {
        client
            .create_alias(create(format!("alias/full-{n:02}"), &full.key_id))
            .await?;
    }
    let status = assert_error(
        client
            .create_alias(create("alias/full-50".into(), &full.key_id))
            .await,
        Code::ResourceExhausted,
        "LimitExceededException",
    );
    assert!(status.message().contains("50 aliases"), "{status:?}");
    client
        .create_alias(create("alias/elsewhere".into(), &other.key_id))
        .await?;
    assert_error(
        client
            .update_alias(pb::UpdateAliasRequest {
                alias_name: "alias/elsewhere".into(),
                target_key_id: full.key_id.clone(),
            })
            .await,
        Code::ResourceExhausted,
        "LimitExceededException",
    );
    let count_of = |key: &str| pb::ListAliasesRequest {
        key_id: key.into(),
        limit: Some(100),
        ..Default::default()
    };
    let on_full = client
        .list_aliases(count_of(&full.key_id))
        .await?
        .into_inner();
    assert_eq!(on_full.aliases.len(), 50);
    let on_other = client
        .list_aliases(count_of(&other.key_id))
        .await?
        .into_inner();
    assert_eq!(on_other.aliases.len(), 1);
    // One gone, there is room for one more.
    client
        .delete_alias(pb::DeleteAliasRequest {
            alias_name: "alias/full-00".into(),
        })
        .await?;
    client
        .update_alias(pb::UpdateAliasRequest {
            alias_name: "alias/elsewhere".into(),
            target_key_id: full.key_id.clone(),
        })
        .await?;
    Ok(())
}

async fn aliases_name_keys_wherever_a_key_id_goes(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let mut stranger = harness.keys_for(ACCOUNT_B, "mallory").await?;
    let first = new_key(&mut client).await?;
    let second = new_key(&mut client).await?;
    let create = |alias_name: &str, target: &str| pb::CreateAliasRequest {
        alias_name: alias_name.into(),
        target_key_id: target.into(),
    };

    client
        .create_alias(create("alias/app/payments", &first.key_id))
        .await?;
    let by_alias = encrypt(&mut client, "alias/app/payments", b"via alias").await?;
    let alias_arn = format!("arn:coffer:kms:eu-west-1:{ACCOUNT_A}:alias/app/payments");
    let by_alias_arn = encrypt(&mut client, &alias_arn, b"via alias arn").await?;
    assert_eq!(decrypt(&mut client, &by_alias).await?, b"via alias");
    assert_eq!(decrypt(&mut client, &by_alias_arn).await?, b"via alias arn");
    let with_alias_key = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: by_alias.clone(),
            key_id: "alias/app/payments".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(with_alias_key.into_inner().key_id, first.arn);

    assert_error(
        client
            .create_alias(create("alias/app/payments", &second.key_id))
            .await,
        Code::AlreadyExists,
        "AlreadyExistsException",
    );
    // Outside the API's constraint it is a ValidationException, as in KMS;
    // within it, a name KMS refuses is an InvalidAliasNameException.
    let too_long = format!("alias/{}", "a".repeat(251));
    for (bad, exception) in [
        ("app/payments", "ValidationException"),
        ("alias/has space", "ValidationException"),
        ("alias/ünïcode", "ValidationException"),
        (too_long.as_str(), "ValidationException"),
        ("", "ValidationException"),
        ("alias/", "InvalidAliasNameException"),
        ("alias/a:b", "InvalidAliasNameException"),
        ("alias/aws/ebs", "InvalidAliasNameException"),
        ("alias/coffer/mine", "InvalidAliasNameException"),
    ] {
        let status = assert_error(
            client.create_alias(create(bad, &first.key_id)).await,
            Code::InvalidArgument,
            exception,
        );
        assert!(!status.message().is_empty(), "{bad:?}");
    }
    let longest = format!("alias/{}", "a".repeat(250));
    client.create_alias(create(&longest, &first.key_id)).await?;
    client
        .delete_alias(pb::DeleteAliasRequest {
            alias_name: longest,
        })
        .await?;
    assert_error(
        client
            .create_alias(create("alias/x", "alias/app/payments"))
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert_error(
        client
            .create_alias(create("alias/x", &uuid::Uuid::new_v4().to_string()))
            .await,
        Code::NotFound,
        "NotFoundException",
    );

    // An alias names a key wherever a KeyId goes, management included (the
    // issue asks for it; KMS itself takes only ids and ARNs there).
    client
        .disable_key(pb::DisableKeyRequest {
            key_id: "alias/app/payments".into(),
        })
        .await?;
    assert_eq!(state_of(&mut client, &first.key_id).await?, "Disabled");
    client
        .enable_key(pb::EnableKeyRequest {
            key_id: alias_arn.clone(),
        })
        .await?;
    assert_eq!(state_of(&mut client, &first.key_id).await?, "Enabled");

    // Another account's alias of the same name is not ours, and ours is not theirs.
    assert_error(
        encrypt(&mut stranger, "alias/app/payments", b"x").await,
        Code::NotFound,
        "NotFoundException",
    );
    assert_error(
        encrypt(&mut stranger, &alias_arn, b"x").await,
        Code::NotFound,
        "NotFoundException",
    );
    assert_error(
        stranger
            .create_alias(create("alias/theirs", &first.key_id))
            .await,
        Code::NotFound,
        "NotFoundException",
    );

    client
        .update_alias(pb::UpdateAliasRequest {
            alias_name: "alias/app/payments".into(),
            target_key_id: second.key_id.clone(),
        })
        .await?;
    let now_second = client
        .encrypt(pb::EncryptRequest {
            key_id: "alias/app/payments".into(),
            plaintext: b"y".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(now_second.key_id, second.arn);
    let missing = client
        .update_alias(pb::UpdateAliasRequest {
            alias_name: "alias/absent".into(),
            target_key_id: second.key_id.clone(),
        })
        .await;
    assert_error(missing, Code::NotFound, "NotFoundException");

    client
        .create_alias(create("alias/zz-other", &first.key_id))
        .await?;
    let all = client
        .list_aliases(pb::ListAliasesRequest::default())
        .await?
        .into_inner();
    let names: Vec<&str> = all
        .aliases
        .iter()
        .map(|alias| alias.alias_name.as_str())
        .collect();
    // The service-managed keys' aliases are listed from the start, without
    // a target until their key exists, as AWS lists its predefined aliases.
    assert_eq!(
        names,
        [
            "alias/app/payments",
            "alias/coffer/acm",
            "alias/coffer/secretsmanager",
            "alias/coffer/ssm",
            "alias/zz-other"
        ]
    );
    let predefined = &all.aliases[1];
    assert_eq!(
        predefined.alias_arn,
        format!("arn:coffer:kms:eu-west-1:{ACCOUNT_A}:alias/coffer/acm")
    );
    assert!(predefined.target_key_id.is_empty() && predefined.creation_date.is_none());
    let of_first = client
        .list_aliases(pb::ListAliasesRequest {
            key_id: first.key_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(of_first.aliases.len(), 1);
    assert_eq!(
        of_first.aliases[0].alias_arn,
        format!("arn:coffer:kms:eu-west-1:{ACCOUNT_A}:alias/zz-other")
    );
    // Pages of two: stored and predefined aliases page together, each once.
    let paged = alias_names_in_pages(&mut client, 2).await?;
    assert_eq!(paged, names);

    client
        .delete_alias(pb::DeleteAliasRequest {
            alias_name: "alias/app/payments".into(),
        })
        .await?;
    assert_error(
        encrypt(&mut client, "alias/app/payments", b"x").await,
        Code::NotFound,
        "NotFoundException",
    );
    let deleted_again = client
        .delete_alias(pb::DeleteAliasRequest {
            alias_name: "alias/app/payments".into(),
        })
        .await;
    assert_error(deleted_again, Code::NotFound, "NotFoundException");
    // Blobs made through the alias still decrypt: they name the key, not the alias.
    assert_eq!(decrypt(&mut client, &by_alias).await?, b"via alias");
    Ok(())
}

/// A key scheduled for deletion while this instance holds its record (by
/// another replica; a record is trusted for 2 s) passes the state check on
/// that record, and is refused by the write's own: as the state check
/// refuses it, naming the key.
async fn a_key_scheduled_for_deletion_behind_a_held_record_is_named_when_writes_are_refused(
    backend: Backend,
) -> anyhow::Result<()> {
    use coffer_proto::common::v1::Tag;
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    // Past its freshness the record is read again, and the state check
    // answers the same: only a scenario run within it shows the write's
    // own check. A slow run is tried again with a new key.
    for _attempt in 0..3 {
        let key = new_key(&mut client).await?;
        let tags = |tag_key: &str| pb::TagResourceRequest {
            key_id: key.key_id.clone(),
            tags: vec![Tag {
                tag_key: tag_key.into(),
                tag_value: "v".into(),
            }],
        };
        // Read (and held) by this instance.
        client.tag_resource(tags("before")).await?;
        let held = std::time::Instant::now();
        harness
            .set_key_state_behind_the_service(&key.key_id, "PendingDeletion")
            .await?;
        let pending = format!("{} is pending deletion.", key.arn);
        let tagged = client.tag_resource(tags("after")).await;
        let status = assert_error(tagged, Code::FailedPrecondition, "KMSInvalidStateException");
        assert_eq!(status.message(), pending);
        let aliased = client
            .create_alias(pb::CreateAliasRequest {
                alias_name: format!("alias/behind-{}", key.key_id),
                target_key_id: key.key_id.clone(),
            })
            .await;
        let status = assert_error(
            aliased,
            Code::FailedPrecondition,
            "KMSInvalidStateException",
        );
        assert_eq!(status.message(), pending);
        if held.elapsed() < coffer_keys::domain::cache::KEY_RECORD_TTL {
            return Ok(());
        }
    }
    anyhow::bail!("no attempt ran within a held record's freshness")
}

async fn tags_are_managed_and_limited(backend: Backend) -> anyhow::Result<()> {
    use coffer_proto::common::v1::Tag;
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut client).await?;
    let tag = |key: &str, value: &str| Tag {
        tag_key: key.into(),
        tag_value: value.into(),
    };
    client
        .tag_resource(pb::TagResourceRequest {
            key_id: key.key_id.clone(),
            tags: vec![tag("env", "dev"), tag("team", "core")],
        })
        .await?;
    client
        .tag_resource(pb::TagResourceRequest {
            key_id: key.key_id.clone(),
            tags: vec![tag("env", "prod")],
        })
        .await?;
    let listed = client
        .list_resource_tags(pb::ListResourceTagsRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(listed.tags, vec![tag("env", "prod"), tag("team", "core")]);
    let first_page = client
        .list_resource_tags(pb::ListResourceTagsRequest {
            key_id: key.key_id.clone(),
            limit: Some(1),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(first_page.truncated);
    let second_page = client
        .list_resource_tags(pb::ListResourceTagsRequest {
            key_id: key.key_id.clone(),
            limit: Some(1),
            marker: first_page.next_marker.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(second_page.tags, vec![tag("team", "core")]);
    // A marker opens only the list that issued it.
    let elsewhere = client
        .list_aliases(pb::ListAliasesRequest {
            marker: first_page.next_marker.clone(),
            ..Default::default()
        })
        .await;
    assert_error(elsewhere, Code::InvalidArgument, "InvalidMarkerException");
    // And only for the key it was issued for.
    let other = new_key(&mut client).await?;
    let other_key = client
        .list_resource_tags(pb::ListResourceTagsRequest {
            key_id: other.key_id.clone(),
            limit: Some(1),
            marker: first_page.next_marker.clone(),
        })
        .await;
    assert_error(other_key, Code::InvalidArgument, "InvalidMarkerException");
    // One rewritten to hold what no tag key or alias name holds (Postgres
    // would refuse the NUL as text: an internal failure) is not ours.
    let aliases = client
        .list_aliases(pb::ListAliasesRequest {
            limit: Some(1),
            ..Default::default()
        })
        .await?
        .into_inner();
    for (marker, item) in [
        (&first_page.next_marker, "te\0am"),
        (&aliases.next_marker, "alias/\0"),
        (&aliases.next_marker, "alias/a b"),
    ] {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(marker)?)?;
        let (issued, _) = text
            .rsplit_once(':')
            .ok_or_else(|| anyhow::anyhow!("a marker without its parts"))?;
        let forged = URL_SAFE_NO_PAD.encode(format!("{issued}:{item}"));
        let outcome = if item.starts_with("alias/") {
            client
                .list_aliases(pb::ListAliasesRequest {
                    marker: forged,
                    ..Default::default()
                })
                .await
                .map(|_| ())
        } else {
            client
                .list_resource_tags(pb::ListResourceTagsRequest {
                    key_id: key.key_id.clone(),
                    marker: forged,
                    ..Default::default()
                })
                .await
                .map(|_| ())
        };
        assert_error(outcome, Code::InvalidArgument, "InvalidMarkerException");
    }
    // One longer than KMS's MarkerType allows (1,024 characters) is outside
    // the field's constraint.
    let oversize = client
        .list_resource_tags(pb::ListResourceTagsRequest {
            key_id: key.key_id.clone(),
            limit: Some(1),
            marker: "A".repeat(1025),
        })
        .await;
    assert_error(oversize, Code::InvalidArgument, "ValidationException");
    // Keys differing in case page in byte order on either database, whatever
    // its collation: every tag once.
    client
        .tag_resource(pb::TagResourceRequest {
            key_id: key.key_id.clone(),
            tags: vec![tag("Zone", "a"), tag("app", "b")],
        })
        .await?;
    let mut paged = Vec::new();
    let mut marker = String::new();
    loop {
        let page = client
            .list_resource_tags(pb::ListResourceTagsRequest {
                key_id: key.key_id.clone(),
                limit: Some(1),
                marker: marker.clone(),
            })
            .await?
            .into_inner();
        paged.extend(page.tags.into_iter().map(|tag| tag.tag_key));
        if !page.truncated {
            break;
        }
        marker = page.next_marker;
    }
    assert_eq!(paged, ["Zone", "app", "env", "team"]);
    client
        .untag_resource(pb::UntagResourceRequest {
            key_id: key.key_id.clone(),
            tag_keys: vec!["Zone".into(), "app".into()],
        })
        .await?;

    client
        .untag_resource(pb::UntagResourceRequest {
            key_id: key.key_id.clone(),
            tag_keys: vec!["team".into()],
        })
        .await?;
    // KMS sets no bound on the names one UntagResource lists: those the key
    // has no tag under are ignored.
    client
        .tag_resource(pb::TagResourceRequest {
            key_id: key.key_id.clone(),
            tags: vec![tag("gone", "soon")],
        })
        .await?;
    let mut many: Vec<String> = (0..60).map(|index| format!("absent{index}")).collect();
    many.extend(["gone".to_owned(), "gone".to_owned()]);
    client
        .untag_resource(pb::UntagResourceRequest {
            key_id: key.key_id.clone(),
            tag_keys: many,
        })
        .await?;
    let too_many: Vec<Tag> = (0..50)
        .map(|index| tag(&format!("k{index}"), "v"))
        .collect();
    let outcome = client
        .tag_resource(pb::TagResourceRequest {
            key_id: key.key_id.clone(),
            tags: too_many,
        })
        .await;
    assert_error(outcome, Code::ResourceExhausted, "LimitExceededException");
    // More than a key may have in one request: the same quota, the same
    // exception.
    let outcome = client
        .tag_resource(pb::TagResourceRequest {
            key_id: key.key_id.clone(),
            tags: (0..51)
                .map(|index| tag(&format!("k{index}"), "v"))
                .collect(),
        })
        .await;
    assert_error(outcome, Code::ResourceExhausted, "LimitExceededException");
    assert_error(
        client
            .untag_resource(pb::UntagResourceRequest {
                key_id: key.key_id.clone(),
                tag_keys: Vec::new(),
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    let reserved = client
        .tag_resource(pb::TagResourceRequest {
            key_id: key.key_id.clone(),
            tags: vec![tag("aws:x", "v")],
        })
        .await;
    assert_error(reserved, Code::InvalidArgument, "TagException");
    let listed = client
        .list_resource_tags(pb::ListResourceTagsRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        listed.tags,
        vec![tag("env", "prod")],
        "a refused request changed the tags"
    );
    Ok(())
}

async fn enabling_rotation_again_keeps_its_schedule(backend: Backend) -> anyhow::Result<()> {
    let (harness, clock) = Harness::start_with_clock(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut client).await?;
    let rotation_client = client.clone();
    let enable = |period: i32| {
        let mut client = rotation_client.clone();
        let key_id = key.key_id.clone();
        async move {
            client
                .enable_key_rotation(pb::EnableKeyRotationRequest {
                    key_id: key_id.clone(),
                    rotation_period_in_days: Some(period),
                })
                .await?;
            let status = client
                .get_key_rotation_status(pb::GetKeyRotationStatusRequest { key_id })
                .await?
                .into_inner();
            assert_eq!(status.rotation_period_in_days, Some(period));
            anyhow::Ok(
                status
                    .next_rotation_date
                    .map(|date| date.seconds)
                    .unwrap_or_default(),
            )
        }
    };
    let day = 86_400;
    let enabled_at = clock_now_seconds(&clock);
    assert!((enable(180).await? - (enabled_at + 180 * day)).abs() <= 1);
    // Thirty days on, enabling it again with the same period (as a tool
    // that re-applies its settings does) leaves the date alone.
    clock.advance(30 * DAY);
    assert!((enable(180).await? - (enabled_at + 180 * day)).abs() <= 1);
    // A new period counts from when rotation was enabled...
    assert!((enable(90).await? - (enabled_at + 90 * day)).abs() <= 1);
    // ...and a date already past means rotating at once.
    clock.advance(70 * DAY);
    assert!((enable(95).await? - clock_now_seconds(&clock)).abs() <= 1);
    // Changed again before that rotation ran, the period still counts from
    // when rotation was enabled (not from the moment the last change was
    // due).
    assert!((enable(180).await? - (enabled_at + 180 * day)).abs() <= 1);
    assert!((enable(95).await? - clock_now_seconds(&clock)).abs() <= 1);
    // An automatic rotation due (within 20 minutes) refuses one on demand,
    // as KMS does: the key would rotate twice in a row.
    let on_demand = || {
        let mut client = rotation_client.clone();
        let key_id = key.key_id.clone();
        async move {
            client
                .rotate_key_on_demand(pb::RotateKeyOnDemandRequest { key_id })
                .await
        }
    };
    let status = assert_error(
        on_demand().await,
        Code::FailedPrecondition,
        "ConflictException",
    );
    assert!(status.message().contains(&key.arn), "{status:?}");
    harness.run_maintenance().await?;
    let rotations = client
        .list_key_rotations(pb::ListKeyRotationsRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .rotations;
    assert_eq!(rotations.len(), 1, "{rotations:?}");
    // Rotated, the next one is 95 days off: on demand is fine now, and
    // again refused 19 minutes before the next.
    on_demand().await?;
    clock.advance(95 * DAY - Duration::from_secs(19 * 60));
    assert_error(
        on_demand().await,
        Code::FailedPrecondition,
        "ConflictException",
    );
    // Turned off and on again, the period starts over.
    client
        .disable_key_rotation(pb::DisableKeyRotationRequest {
            key_id: key.key_id.clone(),
        })
        .await?;
    assert!((enable(95).await? - (clock_now_seconds(&clock) + 95 * day)).abs() <= 1);
    Ok(())
}

/// The rotations ListKeyRotations lists of `key_id` (one page).
async fn rotations_of(
    client: &mut KeysClient<Channel>,
    key_id: &str,
) -> anyhow::Result<Vec<pb::RotationsListEntry>> {
    Ok(client
        .list_key_rotations(pb::ListKeyRotationsRequest {
            key_id: key_id.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .rotations)
}

/// What a maintenance run that failed reports.
async fn maintenance_error(harness: &Harness) -> anyhow::Result<String> {
    match harness.run_maintenance().await {
        Ok(()) => anyhow::bail!("a refused change went unreported"),
        Err(error) => Ok(error.to_string()),
    }
}

async fn assert_deleted(client: &mut KeysClient<Channel>, key_id: &str) -> anyhow::Result<()> {
    let described = client
        .describe_key(pb::DescribeKeyRequest {
            key_id: key_id.to_owned(),
            ..Default::default()
        })
        .await;
    assert_error(described, Code::NotFound, "NotFoundException");
    Ok(())
}

/// A key whose deletion or rotation keeps failing (here a trigger in the
/// database refuses it) is left for the next run, and the keys after it are
/// deleted and rotated all the same; the run reports the failures.
async fn a_key_the_scheduler_cannot_change_holds_up_no_other(
    backend: Backend,
) -> anyhow::Result<()> {
    let (harness, clock) = Harness::start_with_clock(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    // Each pair's stuck key is due first: scheduled, or enabled, a second
    // before the other.
    let mut keys = Vec::new();
    for _ in 0..4 {
        keys.push(new_key(&mut client).await?);
    }
    let [stuck_deletion, deletion, stuck_rotation, rotation] = keys.as_slice() else {
        anyhow::bail!("four keys");
    };
    for key in [stuck_deletion, deletion] {
        client
            .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
                key_id: key.key_id.clone(),
                pending_window_in_days: Some(7),
            })
            .await?;
        clock.advance(Duration::from_secs(1));
    }
    for key in [stuck_rotation, rotation] {
        client
            .enable_key_rotation(pb::EnableKeyRotationRequest {
                key_id: key.key_id.clone(),
                rotation_period_in_days: Some(90),
            })
            .await?;
        clock.advance(Duration::from_secs(1));
    }
    harness
        .refuse_key_writes("keys", "DELETE", &stuck_deletion.key_id)
        .await?;
    clock.advance(91 * DAY);
    assert_eq!(
        maintenance_error(&harness).await?,
        "keys maintenance: 1 deletions and 0 rotations failed (logged); the other keys' went through"
    );
    assert_eq!(
        state_of(&mut client, &stuck_deletion.key_id).await?,
        "PendingDeletion"
    );
    assert_deleted(&mut client, &deletion.key_id).await?;
    let lister = client.clone();
    let rotations_of = |key: &pb::KeyMetadata| {
        let mut client = lister.clone();
        let key_id = key.key_id.clone();
        async move { anyhow::Ok(rotations_of(&mut client, &key_id).await?.len()) }
    };
    assert_eq!(rotations_of(stuck_rotation).await?, 1);
    assert_eq!(rotations_of(rotation).await?, 1);
    harness.allow_key_writes("keys").await?;

    // Rotation: the stuck key's new material is refused (and the stuck
    // deletion, no longer refused, goes through).
    harness
        .refuse_key_writes("key_materials", "INSERT", &stuck_rotation.key_id)
        .await?;
    clock.advance(91 * DAY);
    assert_eq!(
        maintenance_error(&harness).await?,
        "keys maintenance: 0 deletions and 1 rotations failed (logged); the other keys' went through"
    );
    assert_eq!(rotations_of(stuck_rotation).await?, 1);
    assert_eq!(rotations_of(rotation).await?, 2);
    harness.allow_key_writes("key_materials").await?;

    // Once the fault is gone, the next run catches up.
    harness.run_maintenance().await?;
    assert_deleted(&mut client, &stuck_deletion.key_id).await?;
    assert_eq!(rotations_of(stuck_rotation).await?, 2);
    Ok(())
}

async fn rotation_keeps_old_ciphertexts_decrypting(backend: Backend) -> anyhow::Result<()> {
    let (harness, clock) = Harness::start_with_clock(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut client).await?;
    let status = client
        .get_key_rotation_status(pb::GetKeyRotationStatusRequest {
            key_id: key.key_id.clone(),
        })
        .await?
        .into_inner();
    assert!(!status.key_rotation_enabled);

    for period in [89, 2561] {
        let outcome = client
            .enable_key_rotation(pb::EnableKeyRotationRequest {
                key_id: key.key_id.clone(),
                rotation_period_in_days: Some(period),
            })
            .await;
        assert_error(outcome, Code::InvalidArgument, "ValidationException");
    }
    client
        .enable_key_rotation(pb::EnableKeyRotationRequest {
            key_id: key.key_id.clone(),
            rotation_period_in_days: None,
        })
        .await?;
    let status = client
        .get_key_rotation_status(pb::GetKeyRotationStatusRequest {
            key_id: key.key_id.clone(),
        })
        .await?
        .into_inner();
    assert!(status.key_rotation_enabled);
    assert_eq!(status.rotation_period_in_days, Some(365));
    let next = status
        .next_rotation_date
        .map(|date| date.seconds)
        .unwrap_or_default();
    assert!((next - (clock_now_seconds(&clock) + 365 * 86_400)).abs() <= 1);

    let before = encrypt(&mut client, &key.key_id, b"before rotation").await?;
    clock.advance(364 * DAY);
    harness.run_maintenance().await?;
    let rotations = |client: &mut KeysClient<Channel>| {
        let key_id = key.key_id.clone();
        let mut client = client.clone();
        async move { rotations_of(&mut client, &key_id).await }
    };
    assert!(
        rotations(&mut client).await?.is_empty(),
        "rotated before the period ended"
    );
    clock.advance(2 * DAY);
    harness.run_maintenance().await?;
    let after_automatic = rotations(&mut client).await?;
    assert_eq!(after_automatic.len(), 1);
    assert_eq!(after_automatic[0].rotation_type, "AUTOMATIC");
    assert_eq!(after_automatic[0].key_material_id.len(), 32);
    // DescribeKey names the material now current: the rotation's.
    let described = describe(&mut client, &key.key_id).await?;
    assert_eq!(
        described.current_key_material_id,
        after_automatic[0].key_material_id
    );
    assert_eq!(key.current_key_material_id.len(), 32);
    assert_ne!(
        key.current_key_material_id,
        described.current_key_material_id
    );
    assert_eq!(described.customer_master_key_spec, "SYMMETRIC_DEFAULT");
    // Running again at the same time does not rotate twice; the rotation
    // is in the trail once, as KMS's RotateKey service event.
    harness.run_maintenance().await?;
    assert_eq!(rotations(&mut client).await?.len(), 1);
    let rotated = service_events(&harness, "RotateKey", &key.arn).await?;
    assert_eq!(rotated.len(), 1);
    assert_eq!(
        rotated[0]["serviceEventDetails"]["rotationType"],
        "AUTOMATIC"
    );
    wait_for(
        "the outbox kept a service event's row",
        Duration::from_secs(20),
        || async { Ok(harness.instance()?.outbox_rows().await? == 0) },
    )
    .await?;

    let after = encrypt(&mut client, &key.key_id, b"after rotation").await?;
    assert_ne!(
        before[38..54],
        after[38..54],
        "the new blob must name the new material"
    );
    assert_eq!(decrypt(&mut client, &before).await?, b"before rotation");
    assert_eq!(decrypt(&mut client, &after).await?, b"after rotation");

    // On demand: 25 per key, then LimitExceededException.
    let mut blobs = vec![(before.clone(), b"before rotation".to_vec())];
    for round in 0..25 {
        let answer = client
            .rotate_key_on_demand(pb::RotateKeyOnDemandRequest {
                key_id: key.key_id.clone(),
            })
            .await?;
        if round == 0 {
            // The event records the key id the call returned, as
            // CloudTrail's RotateKeyOnDemand example does (not the ARN).
            let events = harness
                .audit_events_for(&coffer_tests::request_id_of(answer.metadata()))
                .await?;
            assert_eq!(answer.get_ref().key_id, key.key_id);
            assert_eq!(
                events[0]["responseElements"]["keyId"],
                key.key_id.as_str(),
                "{:#}",
                events[0]
            );
        }
        let plaintext = format!("round {round}").into_bytes();
        blobs.push((
            encrypt(&mut client, &key.key_id, &plaintext).await?,
            plaintext,
        ));
    }
    let twenty_sixth = client
        .rotate_key_on_demand(pb::RotateKeyOnDemandRequest {
            key_id: key.key_id.clone(),
        })
        .await;
    let status = assert_error(
        twenty_sixth,
        Code::ResourceExhausted,
        "LimitExceededException",
    );
    // A refused rotation's event has no response elements; a done one's
    // names the key, as CloudTrail's does.
    let refused = harness
        .audit_events_for(&coffer_tests::request_id_of(status.metadata()))
        .await?;
    assert!(refused[0]["responseElements"].is_null(), "{:#}", refused[0]);
    let all = rotations(&mut client).await?;
    assert_eq!(all.len(), 26);
    // Oldest first, though the clock stood still for all 25: the last is
    // the material the key uses now, and dates never go back.
    let current = describe(&mut client, &key.key_id)
        .await?
        .current_key_material_id;
    let last = all.last().ok_or_else(|| anyhow::anyhow!("no rotations"))?;
    assert_eq!(last.key_material_id, current);
    assert_eq!(last.key_material_state, "CURRENT");
    let dates: Vec<_> = all
        .iter()
        .map(|r| r.rotation_date.map(|d| (d.seconds, d.nanos)))
        .collect();
    assert!(dates.windows(2).all(|pair| pair[0] < pair[1]), "{dates:?}");
    let with_first = client
        .list_key_rotations(pb::ListKeyRotationsRequest {
            key_id: key.key_id.clone(),
            include_key_material: "ALL_KEY_MATERIAL".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .rotations;
    assert_eq!(with_first.len(), 27);
    assert_eq!(with_first[0].rotation_type, "", "{:?}", with_first[0]);
    assert_eq!(
        all.iter()
            .filter(|r| r.rotation_type == "ON_DEMAND")
            .count(),
        25
    );
    for (blob, plaintext) in &blobs {
        assert_eq!(&decrypt(&mut client, blob).await?, plaintext);
    }
    // Pages of four list the same rotations in the same order.
    let mut paged = Vec::new();
    let mut marker = String::new();
    loop {
        let page = client
            .list_key_rotations(pb::ListKeyRotationsRequest {
                key_id: key.key_id.clone(),
                limit: Some(4),
                marker: marker.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(page.rotations.len() <= 4);
        paged.extend(page.rotations);
        if !page.truncated {
            assert!(page.next_marker.is_empty());
            break;
        }
        marker = page.next_marker;
    }
    assert_eq!(paged, all);
    // A marker naming no rotation of this key is refused.
    let forged = client
        .list_key_rotations(pb::ListKeyRotationsRequest {
            key_id: key.key_id.clone(),
            limit: Some(4),
            marker: URL_SAFE_NO_PAD.encode(format!("r:{}", "ab".repeat(16))),
            ..Default::default()
        })
        .await;
    assert_error(forged, Code::InvalidArgument, "InvalidMarkerException");

    client
        .disable_key_rotation(pb::DisableKeyRotationRequest {
            key_id: key.key_id.clone(),
        })
        .await?;
    let status = client
        .get_key_rotation_status(pb::GetKeyRotationStatusRequest {
            key_id: key.key_id.clone(),
        })
        .await?
        .into_inner();
    assert!(!status.key_rotation_enabled && status.next_rotation_date.is_none());

    // A restart keeps every material version.
    let mut harness = harness;
    harness.restart().await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    for (blob, plaintext) in &blobs {
        assert_eq!(&decrypt(&mut client, blob).await?, plaintext);
    }
    Ok(())
}

async fn service_managed_keys_are_created_on_first_use_and_protected(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    // Its policy lets the account's principals use it only through the
    // service it belongs to (kms:ViaService from the service's certificate).
    let alice = Harness::user_id(ACCOUNT_A, "alice");
    let mut via_secrets = harness.keys_via("secrets", &alice).await?;
    let blob = via_secrets
        .encrypt(pb::EncryptRequest {
            key_id: "alias/coffer/secretsmanager".into(),
            plaintext: b"managed".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .ciphertext_blob;
    let plaintext = via_secrets
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, b"managed");
    let direct = client
        .encrypt(pb::EncryptRequest {
            key_id: "alias/coffer/secretsmanager".into(),
            plaintext: b"managed".to_vec(),
            ..Default::default()
        })
        .await;
    assert_error(direct, Code::PermissionDenied, "AccessDeniedException");
    let mut via_ssm = harness.keys_via("parameters", &alice).await?;
    let other_service = via_ssm
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob.clone(),
            ..Default::default()
        })
        .await;
    assert_error(
        other_service,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    let metadata = client
        .describe_key(pb::DescribeKeyRequest {
            key_id: "alias/coffer/secretsmanager".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    assert_eq!(metadata.key_manager, "AWS");
    // The same key on every later use.
    let again = client
        .describe_key(pb::DescribeKeyRequest {
            key_id: "alias/coffer/secretsmanager".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .map(|m| m.key_id);
    assert_eq!(again.as_deref(), Some(metadata.key_id.as_str()));
    let status = client
        .get_key_rotation_status(pb::GetKeyRotationStatusRequest {
            key_id: metadata.key_id.clone(),
        })
        .await?
        .into_inner();
    assert!(status.key_rotation_enabled);
    assert_eq!(status.rotation_period_in_days, Some(365));

    // Its policy grants callers no management; the keys service would
    // refuse it anyway (UnsupportedOperationException) for a service-managed key.
    let managed = metadata.key_id.clone();
    assert_error(
        client
            .disable_key(pb::DisableKeyRequest {
                key_id: managed.clone(),
            })
            .await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    let delete = client
        .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
            key_id: managed.clone(),
            pending_window_in_days: None,
        })
        .await;
    assert_error(delete, Code::PermissionDenied, "AccessDeniedException");
    let rotation_off = client
        .disable_key_rotation(pb::DisableKeyRotationRequest {
            key_id: managed.clone(),
        })
        .await;
    assert_error(
        rotation_off,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    let policy_change = client
        .put_key_policy(pb::PutKeyPolicyRequest {
            key_id: managed.clone(),
            policy: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"}]}"#.into(),
            bypass_policy_lockout_safety_check: Some(true),
            ..Default::default()
        })
        .await;
    assert_error(
        policy_change,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    let delete_alias = client
        .delete_alias(pb::DeleteAliasRequest {
            alias_name: "alias/coffer/secretsmanager".into(),
        })
        .await;
    assert_error(
        delete_alias,
        Code::InvalidArgument,
        "InvalidAliasNameException",
    );
    let listed = client
        .list_aliases(pb::ListAliasesRequest::default())
        .await?
        .into_inner();
    // Listed once, now with its key; the others still without one.
    let managed_aliases: Vec<(&str, &str)> = listed
        .aliases
        .iter()
        .filter(|alias| alias.alias_name.starts_with("alias/coffer/"))
        .map(|alias| (alias.alias_name.as_str(), alias.target_key_id.as_str()))
        .collect();
    assert_eq!(
        managed_aliases,
        [
            ("alias/coffer/acm", ""),
            ("alias/coffer/secretsmanager", managed.as_str()),
            ("alias/coffer/ssm", "")
        ]
    );
    // Unknown names under the reserved prefix are not created.
    assert_error(
        encrypt(&mut client, "alias/coffer/nothing", b"x").await,
        Code::NotFound,
        "NotFoundException",
    );
    // Listing by a predefined alias lists it, and creates no key: the
    // full listing still shows it without one.
    let by_alias = |name: &str| pb::ListAliasesRequest {
        key_id: name.into(),
        ..Default::default()
    };
    let ssm = client
        .list_aliases(by_alias("alias/coffer/ssm"))
        .await?
        .into_inner()
        .aliases;
    assert_eq!(ssm.len(), 1, "{ssm:?}");
    assert_eq!(
        (ssm[0].alias_name.as_str(), ssm[0].target_key_id.as_str()),
        ("alias/coffer/ssm", "")
    );
    let secrets = client
        .list_aliases(by_alias("alias/coffer/secretsmanager"))
        .await?
        .into_inner()
        .aliases;
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    assert_eq!(secrets[0].target_key_id, managed);
    assert_error(
        client.list_aliases(by_alias("alias/coffer/nothing")).await,
        Code::NotFound,
        "NotFoundException",
    );
    let still_keyless = client
        .list_aliases(pb::ListAliasesRequest::default())
        .await?
        .into_inner()
        .aliases
        .into_iter()
        .filter(|alias| alias.target_key_id.is_empty())
        .map(|alias| alias.alias_name)
        .collect::<Vec<_>>();
    assert_eq!(still_keyless, ["alias/coffer/acm", "alias/coffer/ssm"]);

    // Stored and predefined aliases list together in byte order, which a
    // database collation for people would not give ('Z' before 'c', '-'
    // before '/'), and page one at a time to the same list.
    let own = new_key(&mut client).await?;
    for name in ["alias/Zeta", "alias/coffer-x"] {
        client
            .create_alias(pb::CreateAliasRequest {
                alias_name: name.into(),
                target_key_id: own.key_id.clone(),
            })
            .await?;
    }
    let all: Vec<String> = client
        .list_aliases(pb::ListAliasesRequest::default())
        .await?
        .into_inner()
        .aliases
        .into_iter()
        .map(|alias| alias.alias_name)
        .collect();
    assert_eq!(
        all,
        [
            "alias/Zeta",
            "alias/coffer-x",
            "alias/coffer/acm",
            "alias/coffer/secretsmanager",
            "alias/coffer/ssm"
        ]
    );
    assert_eq!(alias_names_in_pages(&mut client, 1).await?, all);
    Ok(())
}

/// The first use of a service-managed alias makes the key and the alias
/// together: when the alias cannot be written, no key is left behind that
/// nothing names, that callers cannot delete, and that the next use would
/// duplicate.
async fn a_failed_first_use_leaves_no_service_managed_key_behind(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let alice = Harness::user_id(ACCOUNT_A, "alice");
    let mut via_secrets = harness.keys_via("secrets", &alice).await?;
    let managed = "alias/coffer/secretsmanager";
    harness
        .refuse_key_writes_where("aliases", "INSERT", "alias_name", managed)
        .await?;
    let request = |plaintext: &[u8]| pb::EncryptRequest {
        key_id: managed.into(),
        plaintext: plaintext.to_vec(),
        ..Default::default()
    };
    assert_error(
        via_secrets.encrypt(request(b"first")).await,
        Code::Internal,
        "KMSInternalException",
    );
    harness.allow_key_writes("aliases").await?;
    let blob = via_secrets
        .encrypt(request(b"second"))
        .await?
        .into_inner()
        .ciphertext_blob;
    let keys = client
        .list_keys(pb::ListKeysRequest::default())
        .await?
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let aliases = client
        .list_aliases(pb::ListAliasesRequest {
            key_id: managed.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .aliases;
    assert_eq!(aliases.len(), 1, "{aliases:?}");
    assert_eq!(aliases[0].target_key_id, keys[0].key_id);
    let plaintext = via_secrets
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            ..Default::default()
        })
        .await?
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, b"second");
    Ok(())
}

async fn re_encrypt_moves_ciphertext_between_keys(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let source = new_key(&mut client).await?;
    let destination = new_key(&mut client).await?;
    let source_context: HashMap<String, String> = [("stage".to_owned(), "old".to_owned())].into();
    let destination_context: HashMap<String, String> =
        [("stage".to_owned(), "new".to_owned())].into();
    let blob = client
        .encrypt(pb::EncryptRequest {
            key_id: source.key_id.clone(),
            plaintext: b"moving".to_vec(),
            encryption_context: source_context.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .ciphertext_blob;
    let moved = client
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob.clone(),
            source_encryption_context: source_context.clone(),
            destination_key_id: destination.key_id.clone(),
            destination_encryption_context: destination_context.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(moved.source_key_id, source.arn);
    assert_eq!(moved.key_id, destination.arn);
    let decrypted = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: moved.ciphertext_blob,
            encryption_context: destination_context,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(decrypted.plaintext, b"moving");
    assert_eq!(decrypted.key_id, destination.arn);

    let wrong_context = client
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob.clone(),
            destination_key_id: destination.key_id.clone(),
            ..Default::default()
        })
        .await;
    assert_error(
        wrong_context,
        Code::InvalidArgument,
        "InvalidCiphertextException",
    );
    let wrong_source = client
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob,
            source_encryption_context: source_context,
            source_key_id: destination.key_id.clone(),
            destination_key_id: destination.key_id,
            ..Default::default()
        })
        .await;
    assert_error(wrong_source, Code::InvalidArgument, "IncorrectKeyException");
    Ok(())
}

/// The `additionalEventData` of the one event of the call that answered
/// with `metadata`.
async fn additional_data(
    harness: &Harness,
    metadata: &tonic::metadata::MetadataMap,
) -> anyhow::Result<serde_json::Value> {
    let mut events = harness
        .audit_events_for(&coffer_tests::request_id_of(metadata))
        .await?;
    anyhow::ensure!(events.len() == 1, "{events:#?}");
    Ok(events.remove(0)["additionalEventData"].take())
}

async fn answers_and_events_name_the_key_material(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut client).await?;
    let first = key.current_key_material_id.clone();
    assert_eq!(first.len(), 32, "{first}");
    let list = |include: &str, marker: &str| pb::ListKeyRotationsRequest {
        key_id: key.key_id.clone(),
        include_key_material: include.into(),
        marker: marker.into(),
        ..Default::default()
    };

    // Before any rotation: no rotations, but the first material with all
    // of them, current, with no rotation date or type.
    let listed = client.list_key_rotations(list("", "")).await?.into_inner();
    assert!(listed.rotations.is_empty(), "{listed:?}");
    let all = client
        .list_key_rotations(list("ALL_KEY_MATERIAL", ""))
        .await?
        .into_inner()
        .rotations;
    assert_eq!(
        all,
        [pb::RotationsListEntry {
            key_id: key.key_id.clone(),
            key_material_id: first.clone(),
            rotation_date: None,
            rotation_type: String::new(),
            key_material_state: "CURRENT".into(),
        }]
    );
    assert_error(
        client.list_key_rotations(list("EVERYTHING", "")).await,
        Code::InvalidArgument,
        "ValidationException",
    );

    // A data key names the material it is encrypted under, in its answer
    // and in its event.
    let answer = client
        .generate_data_key(pb::GenerateDataKeyRequest {
            key_id: key.key_id.clone(),
            key_spec: "AES_256".into(),
            ..Default::default()
        })
        .await?;
    let data = additional_data(&harness, answer.metadata()).await?;
    assert_eq!(data, serde_json::json!({ "keyMaterialId": first }));
    let old_blob = answer.into_inner().ciphertext_blob;

    client
        .rotate_key_on_demand(pb::RotateKeyOnDemandRequest {
            key_id: key.key_id.clone(),
        })
        .await?;
    let second = client
        .describe_key(pb::DescribeKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .map(|metadata| metadata.current_key_material_id)
        .unwrap_or_default();
    assert_ne!(second, first);

    // Both materials listed, the new one current; a page of one, and a
    // marker that works only for the listing it came from.
    let page = client
        .list_key_rotations(pb::ListKeyRotationsRequest {
            limit: Some(1),
            ..list("ALL_KEY_MATERIAL", "")
        })
        .await?
        .into_inner();
    assert_eq!(page.rotations[0].key_material_id, first);
    assert_eq!(page.rotations[0].key_material_state, "NON_CURRENT");
    assert_error(
        client
            .list_key_rotations(list("ROTATIONS_ONLY", &page.next_marker))
            .await,
        Code::InvalidArgument,
        "InvalidMarkerException",
    );
    let rest = client
        .list_key_rotations(list("ALL_KEY_MATERIAL", &page.next_marker))
        .await?
        .into_inner()
        .rotations;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].key_material_id, second);
    assert_eq!(rest[0].key_material_state, "CURRENT");
    assert_eq!(rest[0].rotation_type, "ON_DEMAND");
    assert!(rest[0].rotation_date.is_some());
    let rotations_only = client
        .list_key_rotations(list("ROTATIONS_ONLY", ""))
        .await?
        .into_inner()
        .rotations;
    assert_eq!(rotations_only, rest);

    // Decrypt names the material that decrypted: the old one for the old
    // blob.
    let answer = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: old_blob.clone(),
            ..Default::default()
        })
        .await?;
    let data = additional_data(&harness, answer.metadata()).await?;
    assert_eq!(data, serde_json::json!({ "keyMaterialId": first }));
    assert_eq!(answer.into_inner().key_material_id, first);

    // ReEncrypt names both: the old material it decrypted with, the new
    // one it encrypted under.
    let answer = client
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: old_blob,
            destination_key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await?;
    let data = additional_data(&harness, answer.metadata()).await?;
    assert_eq!(
        data,
        serde_json::json!({ "sourceKeyMaterialId": first, "destinationKeyMaterialId": second })
    );
    let re_encrypted = answer.into_inner();
    assert_eq!(re_encrypted.source_key_material_id, first);
    assert_eq!(re_encrypted.destination_key_material_id, second);
    let decrypted = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: re_encrypted.ciphertext_blob,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(decrypted.key_material_id, second);
    // To another key: its material on the destination side.
    let other = new_key(&mut client).await?;
    let moving = encrypt(&mut client, &key.key_id, b"moving").await?;
    let answer = client
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: moving,
            destination_key_id: other.key_id.clone(),
            ..Default::default()
        })
        .await?;
    let data = additional_data(&harness, answer.metadata()).await?;
    assert_eq!(
        data,
        serde_json::json!({
            "sourceKeyMaterialId": second,
            "destinationKeyMaterialId": other.current_key_material_id,
        })
    );
    let moved = answer.into_inner();
    assert_eq!(moved.source_key_material_id, second);
    assert_eq!(
        moved.destination_key_material_id,
        other.current_key_material_id
    );

    // The other data key calls name the current material.
    let without = client
        .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
            key_id: key.key_id.clone(),
            number_of_bytes: Some(16),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(without.key_material_id, second);
    let pair = client
        .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
            key_id: key.key_id.clone(),
            key_pair_spec: "ECC_NIST_P256".into(),
            ..Default::default()
        })
        .await?;
    let data = additional_data(&harness, pair.metadata()).await?;
    assert_eq!(data, serde_json::json!({ "keyMaterialId": second }));
    assert_eq!(pair.into_inner().key_material_id, second);
    let pair = client
        .generate_data_key_pair_without_plaintext(pb::GenerateDataKeyPairWithoutPlaintextRequest {
            key_id: key.key_id.clone(),
            key_pair_spec: "ECC_NIST_P256".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(pair.key_material_id, second);

    // An RSA key names no material; GetPublicKey also gives the deprecated
    // CustomerMasterKeySpec, as KMS does.
    let rsa = client
        .create_key(pb::CreateKeyRequest {
            key_spec: "RSA_2048".into(),
            key_usage: "ENCRYPT_DECRYPT".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    let public = client
        .get_public_key(pb::GetPublicKeyRequest {
            key_id: rsa.key_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(public.customer_master_key_spec, "RSA_2048");
    let blob = client
        .encrypt(pb::EncryptRequest {
            key_id: rsa.key_id.clone(),
            plaintext: b"x".to_vec(),
            encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .ciphertext_blob;
    let answer = client
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            key_id: rsa.key_id.clone(),
            encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
            ..Default::default()
        })
        .await?;
    let data = additional_data(&harness, answer.metadata()).await?;
    assert!(data.is_null(), "{data}");
    assert_eq!(answer.into_inner().key_material_id, "");
    Ok(())
}

/// An account with 100,000 customer managed keys (AWS's quota; those pending
/// deletion count) is refused another, whatever its spec; another account
/// is not.
async fn an_account_at_its_key_quota_is_refused_another_key(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    new_key(&mut client).await?;
    harness.insert_placeholder_keys(ACCOUNT_A, 99_999).await?;
    for (key_spec, key_usage) in [
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
        ("RSA_4096", "SIGN_VERIFY"),
    ] {
        let refused = client
            .create_key(pb::CreateKeyRequest {
                key_spec: key_spec.into(),
                key_usage: key_usage.into(),
                ..Default::default()
            })
            .await;
        let status = assert_error(refused, Code::ResourceExhausted, "LimitExceededException");
        assert!(status.message().contains("100000"), "{status:?}");
    }
    let mut other = harness.keys_for(ACCOUNT_B, "bob").await?;
    new_key(&mut other).await?;
    Ok(())
}
