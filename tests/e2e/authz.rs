//! Authorization end to end: every RPC asks, identity policies reload from
//! the config file, key policies (with the lockout check), grants,
//! condition keys and cross-account access.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use coffer_proto::audit::v1 as audit_pb;
use coffer_tests::{
    ACCOUNT_A, ACCOUNT_B, Backend, Harness, Options, TRUST_DOMAIN, assert_error, backend_tests,
    captured_logs, exception_of, keys_pb as pb, request_id_of,
};
use pb::keys_client::KeysClient;
use prost::Message as _;
use tonic::Code;
use tonic::transport::Channel;

backend_tests!(
    every_rpc_refuses_a_principal_without_permissions,
    key_policies_are_managed_and_guard_against_lockout,
    identity_policies_reload_without_restart,
    grants_allow_exactly_what_they_say_and_stop_at_once,
    grants_follow_aws_rules_for_retiring_delegating_and_quotas,
    cross_account_use_needs_both_sides,
    root_look_alikes_never_gain_root,
    condition_keys_come_from_the_request_and_the_connection,
    condition_keys_name_what_a_request_asks_for,
    tags_and_aliases_are_authorized_as_resources,
    policies_read_a_keys_tags_and_aliases,
    the_lockout_check_asks_what_a_later_call_will_ask,
    grants_to_an_account_reach_its_principals_through_their_policies,
    grants_name_keys_and_principals_as_kms_does,
    list_retirable_grants_is_authorized_on_the_retiring_principal,
);

const ALLOW_ALL: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;

/// Only `user/admin` of each account has identity policies.
fn admins_only() -> Options {
    Options {
        authorization: format!(
            "authorization:\n  reload_interval_ms: 100\n  identity_policies:\n    - name: admins\n      principals: [\"arn:coffer:iam::*:user/admin\"]\n      policy: '{ALLOW_ALL}'\n"
        ),
        ..Options::default()
    }
}

/// As [`admins_only`], and `user/{user}` of each account has `policy`.
fn admins_and(user: &str, policy: &str) -> Options {
    Options {
        authorization: format!(
            "authorization:\n  reload_interval_ms: 100\n  identity_policies:\n    - name: admins\n      principals: [\"arn:coffer:iam::*:user/admin\"]\n      policy: '{ALLOW_ALL}'\n    - name: {user}\n      principals: [\"arn:coffer:iam::*:user/{user}\"]\n      policy: '{}'\n",
            policy.replace('\n', " ")
        ),
        ..Options::default()
    }
}

/// A key of this spec and usage (empty for the defaults); its ARN.
pub(crate) async fn create_key(
    client: &mut KeysClient<Channel>,
    spec: &str,
    usage: &str,
) -> anyhow::Result<String> {
    Ok(client
        .create_key(pb::CreateKeyRequest {
            key_spec: spec.into(),
            key_usage: usage.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?
        .arn)
}

fn context(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn encrypt_with(
    client: &mut KeysClient<Channel>,
    key_id: &str,
    pairs: &[(&str, &str)],
    grant_tokens: Vec<String>,
) -> Result<Vec<u8>, tonic::Status> {
    client
        .encrypt(pb::EncryptRequest {
            key_id: key_id.into(),
            plaintext: b"secret".to_vec(),
            encryption_context: context(pairs),
            grant_tokens,
            ..Default::default()
        })
        .await
        .map(|response| response.into_inner().ciphertext_blob)
}

/// The audit event of a failed call must record the denial itself.
async fn assert_audited_denial(
    harness: &Harness,
    status: &tonic::Status,
    what: &str,
) -> anyhow::Result<()> {
    assert_audited_as(harness, status, "AccessDeniedException", what).await?;
    Ok(())
}

/// The call of `status` left one event, with `exception` as its errorCode;
/// returns the event.
async fn assert_audited_as(
    harness: &Harness,
    status: &tonic::Status,
    exception: &str,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    let request_id = request_id_of(status.metadata());
    let mut events = harness.audit_events_for(&request_id).await?;
    anyhow::ensure!(events.len() == 1, "{what}: {} events", events.len());
    let first = events.remove(0);
    anyhow::ensure!(
        first["errorCode"] == exception,
        "{what}: audited as {} ({status:?})",
        first["errorCode"]
    );
    Ok(first)
}

/// Every RPC of every Coffer gRPC service in the descriptor set, called
/// by a principal with no permissions on a key that exists, is refused
/// with AccessDenied (or the answer a missing key gets, when the caller may
/// not even describe the key), and audited as a denial.
async fn every_rpc_refuses_a_principal_without_permissions(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(backend, admins_only()).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let symmetric = create_key(&mut admin, "", "").await?;
    let grant = admin
        .create_grant(pb::CreateGrantRequest {
            key_id: symmetric.clone(),
            grantee_principal: format!("arn:coffer:iam::{ACCOUNT_A}:user/someone"),
            operations: vec!["Encrypt".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let blob = encrypt_with(&mut admin, &symmetric, &[], Vec::new()).await?;
    admin
        .create_alias(pb::CreateAliasRequest {
            alias_name: "alias/admin".into(),
            target_key_id: symmetric.clone(),
        })
        .await?;

    let mut audit_admin = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "admin"))
        .await?;
    audit_admin
        .put_rule(audit_pb::PutRuleRequest {
            name: "admin-rule".into(),
            event_pattern: r#"{"source":["coffer.kms"]}"#.into(),
            ..Default::default()
        })
        .await?;

    let descriptors = prost_types::FileDescriptorSet::decode(coffer_proto::FILE_DESCRIPTOR_SET)?;
    let mut methods = Vec::new();
    let mut audit_methods = Vec::new();
    for file in &descriptors.file {
        let package = file.package();
        if !package.starts_with("coffer.") || package.starts_with("coffer.bench.") {
            continue;
        }
        for service in &file.service {
            let full_name = format!("{package}.{}", service.name());
            let names = service.method.iter().map(|m| m.name().to_owned());
            match full_name.as_str() {
                "coffer.keys.v1.Keys" => methods.extend(names),
                "coffer.audit.v1.Audit" => audit_methods.extend(names),
                _ => anyhow::bail!("{full_name} has no entry in this test: add its RPCs"),
            }
        }
    }
    anyhow::ensure!(methods.len() >= 40, "only {} methods found", methods.len());
    anyhow::ensure!(
        audit_methods.len() >= 14,
        "only {} audit methods found",
        audit_methods.len()
    );
    let nobody_id = format!("spiffe://{TRUST_DOMAIN}/account/{ACCOUNT_A}/role/nobody");
    let mut audit_nobody = harness.audit_as(&nobody_id).await?;
    for method in &audit_methods {
        let rule = || "admin-rule".to_owned();
        let outcome: Result<(), tonic::Status> = match method.as_str() {
            "LookupEvents" => audit_nobody
                .lookup_events(audit_pb::LookupEventsRequest::default())
                .await
                .map(drop),
            "GetEvent" => audit_nobody
                .get_event(audit_pb::GetEventRequest {
                    event_id: "e-1".into(),
                })
                .await
                .map(drop),
            "Subscribe" => audit_nobody
                .subscribe(audit_pb::SubscribeRequest::default())
                .await
                .map(drop),
            "PutRule" => audit_nobody
                .put_rule(audit_pb::PutRuleRequest {
                    name: rule(),
                    event_pattern: "{}".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "DescribeRule" => audit_nobody
                .describe_rule(audit_pb::DescribeRuleRequest { name: rule() })
                .await
                .map(drop),
            "ListRules" => audit_nobody
                .list_rules(audit_pb::ListRulesRequest::default())
                .await
                .map(drop),
            "DeleteRule" => audit_nobody
                .delete_rule(audit_pb::DeleteRuleRequest {
                    name: rule(),
                    force: true,
                })
                .await
                .map(drop),
            "EnableRule" => audit_nobody
                .enable_rule(audit_pb::EnableRuleRequest { name: rule() })
                .await
                .map(drop),
            "DisableRule" => audit_nobody
                .disable_rule(audit_pb::DisableRuleRequest { name: rule() })
                .await
                .map(drop),
            "PutTargets" => audit_nobody
                .put_targets(audit_pb::PutTargetsRequest {
                    rule: rule(),
                    targets: vec![audit_pb::Target {
                        id: "t".into(),
                        https: Some(audit_pb::HttpsTarget {
                            endpoint: "https://localhost:1/hook".into(),
                        }),
                        signing_secret: vec![7; 32],
                        ..Default::default()
                    }],
                })
                .await
                .map(drop),
            "RemoveTargets" => audit_nobody
                .remove_targets(audit_pb::RemoveTargetsRequest {
                    rule: rule(),
                    ids: vec!["t".into()],
                })
                .await
                .map(drop),
            "ListTargetsByRule" => audit_nobody
                .list_targets_by_rule(audit_pb::ListTargetsByRuleRequest {
                    rule: rule(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "ListFailedDeliveries" => audit_nobody
                .list_failed_deliveries(audit_pb::ListFailedDeliveriesRequest {
                    rule: rule(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "TestEventPattern" => audit_nobody
                .test_event_pattern(audit_pb::TestEventPatternRequest {
                    event_pattern: "{}".into(),
                    event: "{}".into(),
                })
                .await
                .map(drop),
            other => anyhow::bail!("RPC {other} has no request in this test: add one"),
        };
        let status = match outcome {
            Ok(()) => anyhow::bail!("{method} succeeded for a principal without permissions"),
            Err(status) => status,
        };
        anyhow::ensure!(
            status.code() == Code::PermissionDenied
                && exception_of(&status) == "AccessDeniedException",
            "{method}: unexpected {status:?}"
        );
        assert_audited_denial(&harness, &status, method).await?;
    }
    // The rule is untouched.
    let rule = audit_admin
        .describe_rule(audit_pb::DescribeRuleRequest {
            name: "admin-rule".into(),
        })
        .await?
        .into_inner();
    assert_eq!(rule.state, "ENABLED");
    assert_eq!(rule.event_pattern, r#"{"source":["coffer.kms"]}"#);

    let mut nobody = harness
        .keys_as(&format!(
            "spiffe://{TRUST_DOMAIN}/account/{ACCOUNT_A}/role/nobody"
        ))
        .await?;
    let key = symmetric.clone();
    for method in &methods {
        let k = key.clone();
        let outcome: Result<(), tonic::Status> = match method.as_str() {
            "CreateKey" => nobody
                .create_key(pb::CreateKeyRequest::default())
                .await
                .map(drop),
            "DescribeKey" => nobody
                .describe_key(pb::DescribeKeyRequest {
                    key_id: k,
                    ..Default::default()
                })
                .await
                .map(drop),
            "ListKeys" => nobody
                .list_keys(pb::ListKeysRequest::default())
                .await
                .map(drop),
            "Encrypt" => encrypt_with(&mut nobody, &k, &[], Vec::new())
                .await
                .map(drop),
            "Decrypt" => nobody
                .decrypt(pb::DecryptRequest {
                    ciphertext_blob: blob.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "GenerateDataKey" => nobody
                .generate_data_key(pb::GenerateDataKeyRequest {
                    key_id: k,
                    key_spec: "AES_256".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "GenerateDataKeyWithoutPlaintext" => nobody
                .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
                    key_id: k,
                    key_spec: "AES_256".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "GenerateRandom" => nobody
                .generate_random(pb::GenerateRandomRequest {
                    number_of_bytes: 16,
                })
                .await
                .map(drop),
            "ReEncrypt" => nobody
                .re_encrypt(pb::ReEncryptRequest {
                    ciphertext_blob: blob.clone(),
                    destination_key_id: k,
                    ..Default::default()
                })
                .await
                .map(drop),
            "UpdateKeyDescription" => nobody
                .update_key_description(pb::UpdateKeyDescriptionRequest {
                    key_id: k,
                    description: "x".into(),
                })
                .await
                .map(drop),
            "EnableKey" => nobody
                .enable_key(pb::EnableKeyRequest { key_id: k })
                .await
                .map(drop),
            "DisableKey" => nobody
                .disable_key(pb::DisableKeyRequest { key_id: k })
                .await
                .map(drop),
            "ScheduleKeyDeletion" => nobody
                .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
                    key_id: k,
                    pending_window_in_days: None,
                })
                .await
                .map(drop),
            "CancelKeyDeletion" => nobody
                .cancel_key_deletion(pb::CancelKeyDeletionRequest { key_id: k })
                .await
                .map(drop),
            "CreateAlias" => nobody
                .create_alias(pb::CreateAliasRequest {
                    alias_name: "alias/nobody".into(),
                    target_key_id: k,
                })
                .await
                .map(drop),
            "UpdateAlias" => nobody
                .update_alias(pb::UpdateAliasRequest {
                    alias_name: "alias/admin".into(),
                    target_key_id: k,
                })
                .await
                .map(drop),
            "DeleteAlias" => nobody
                .delete_alias(pb::DeleteAliasRequest {
                    alias_name: "alias/admin".into(),
                })
                .await
                .map(drop),
            "ListAliases" => nobody
                .list_aliases(pb::ListAliasesRequest::default())
                .await
                .map(drop),
            "TagResource" => nobody
                .tag_resource(pb::TagResourceRequest {
                    key_id: k,
                    tags: vec![coffer_proto::common::v1::Tag {
                        tag_key: "a".into(),
                        tag_value: "b".into(),
                    }],
                })
                .await
                .map(drop),
            "UntagResource" => nobody
                .untag_resource(pb::UntagResourceRequest {
                    key_id: k,
                    tag_keys: vec!["a".into()],
                })
                .await
                .map(drop),
            "ListResourceTags" => nobody
                .list_resource_tags(pb::ListResourceTagsRequest {
                    key_id: k,
                    ..Default::default()
                })
                .await
                .map(drop),
            "EnableKeyRotation" => nobody
                .enable_key_rotation(pb::EnableKeyRotationRequest {
                    key_id: k,
                    rotation_period_in_days: None,
                })
                .await
                .map(drop),
            "DisableKeyRotation" => nobody
                .disable_key_rotation(pb::DisableKeyRotationRequest { key_id: k })
                .await
                .map(drop),
            "GetKeyRotationStatus" => nobody
                .get_key_rotation_status(pb::GetKeyRotationStatusRequest { key_id: k })
                .await
                .map(drop),
            "RotateKeyOnDemand" => nobody
                .rotate_key_on_demand(pb::RotateKeyOnDemandRequest { key_id: k })
                .await
                .map(drop),
            "ListKeyRotations" => nobody
                .list_key_rotations(pb::ListKeyRotationsRequest {
                    key_id: k,
                    ..Default::default()
                })
                .await
                .map(drop),
            "GetPublicKey" => nobody
                .get_public_key(pb::GetPublicKeyRequest {
                    key_id: k,
                    ..Default::default()
                })
                .await
                .map(drop),
            "Sign" => nobody
                .sign(pb::SignRequest {
                    key_id: k,
                    message: b"m".to_vec(),
                    signing_algorithm: "ECDSA_SHA_256".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "Verify" => nobody
                .verify(pb::VerifyRequest {
                    key_id: k,
                    message: b"m".to_vec(),
                    signature: vec![1],
                    signing_algorithm: "ECDSA_SHA_256".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "GenerateMac" => nobody
                .generate_mac(pb::GenerateMacRequest {
                    key_id: k,
                    message: b"m".to_vec(),
                    mac_algorithm: "HMAC_SHA_256".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "VerifyMac" => nobody
                .verify_mac(pb::VerifyMacRequest {
                    key_id: k,
                    message: b"m".to_vec(),
                    mac: vec![1],
                    mac_algorithm: "HMAC_SHA_256".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "GenerateDataKeyPair" => nobody
                .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
                    key_id: k,
                    key_pair_spec: "ECC_NIST_P256".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "GenerateDataKeyPairWithoutPlaintext" => nobody
                .generate_data_key_pair_without_plaintext(
                    pb::GenerateDataKeyPairWithoutPlaintextRequest {
                        key_id: k,
                        key_pair_spec: "ECC_NIST_P256".into(),
                        ..Default::default()
                    },
                )
                .await
                .map(drop),
            "PutKeyPolicy" => nobody
                .put_key_policy(pb::PutKeyPolicyRequest {
                    key_id: k,
                    policy: ALLOW_ALL.replace("\"Action\"", "\"Principal\":\"*\",\"Action\""),
                    bypass_policy_lockout_safety_check: Some(true),
                    ..Default::default()
                })
                .await
                .map(drop),
            "GetKeyPolicy" => nobody
                .get_key_policy(pb::GetKeyPolicyRequest {
                    key_id: k,
                    ..Default::default()
                })
                .await
                .map(drop),
            "ListKeyPolicies" => nobody
                .list_key_policies(pb::ListKeyPoliciesRequest {
                    key_id: k,
                    ..Default::default()
                })
                .await
                .map(drop),
            "CreateGrant" => nobody
                .create_grant(pb::CreateGrantRequest {
                    key_id: k,
                    grantee_principal: format!("arn:coffer:iam::{ACCOUNT_A}:role/nobody"),
                    operations: vec!["Decrypt".into()],
                    ..Default::default()
                })
                .await
                .map(drop),
            "ListGrants" => nobody
                .list_grants(pb::ListGrantsRequest {
                    key_id: k,
                    ..Default::default()
                })
                .await
                .map(drop),
            "ListRetirableGrants" => nobody
                .list_retirable_grants(pb::ListRetirableGrantsRequest {
                    retiring_principal: format!("arn:coffer:iam::{ACCOUNT_A}:role/nobody"),
                    ..Default::default()
                })
                .await
                .map(drop),
            "RetireGrant" => nobody
                .retire_grant(pb::RetireGrantRequest {
                    key_id: k,
                    grant_id: grant.grant_id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "RevokeGrant" => nobody
                .revoke_grant(pb::RevokeGrantRequest {
                    key_id: k,
                    grant_id: grant.grant_id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            other => anyhow::bail!("RPC {other} has no request in this test: add one"),
        };
        let status = match outcome {
            Ok(()) => anyhow::bail!("{method} succeeded for a principal without permissions"),
            Err(status) => status,
        };
        let refused = matches!(
            (status.code(), exception_of(&status).as_str()),
            (Code::PermissionDenied, "AccessDeniedException")
                | (Code::NotFound, "NotFoundException")
                | (Code::InvalidArgument, "InvalidCiphertextException")
        );
        anyhow::ensure!(refused, "{method}: unexpected {status:?}");
        assert_audited_denial(&harness, &status, method).await?;
    }

    // The key is untouched, and the admin still uses it.
    let described = admin
        .describe_key(pb::DescribeKeyRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    assert_eq!(described.key_state, "Enabled");
    assert_eq!(described.description, "");
    encrypt_with(&mut admin, &key, &[], Vec::new()).await?;
    Ok(())
}

async fn key_policies_are_managed_and_guard_against_lockout(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start_with(backend, admins_only()).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let key = create_key(&mut admin, "", "").await?;

    // The default policy trusts the account, which defers to identity policies.
    let policy = admin
        .get_key_policy(pb::GetKeyPolicyRequest {
            key_id: key.clone(),
            policy_name: "default".into(),
        })
        .await?
        .into_inner();
    assert_eq!(policy.policy_name, "default");
    let document: serde_json::Value = serde_json::from_str(&policy.policy)?;
    assert_eq!(
        document["Statement"][0]["Principal"]["AWS"],
        format!("arn:coffer:iam::{ACCOUNT_A}:root")
    );
    assert_eq!(document["Statement"][0]["Action"], "kms:*");
    let names = admin
        .list_key_policies(pb::ListKeyPoliciesRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(names.policy_names, vec!["default".to_owned()]);
    assert_error(
        admin
            .get_key_policy(pb::GetKeyPolicyRequest {
                key_id: key.clone(),
                policy_name: "other".into(),
            })
            .await,
        Code::NotFound,
        "NotFoundException",
    );

    // A policy that would lock the caller out is refused unless bypassed.
    let app_only = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"arn:coffer:iam::{ACCOUNT_A}:role/app"}},"Action":["kms:Encrypt","kms:DescribeKey"],"Resource":"*"}}]}}"#
    );
    let refused = assert_error(
        admin
            .put_key_policy(pb::PutKeyPolicyRequest {
                key_id: key.clone(),
                policy: app_only.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "MalformedPolicyDocumentException",
    );
    assert!(
        refused
            .message()
            .contains("will not allow you to update the key policy")
    );
    assert_error(
        admin
            .create_key(pb::CreateKeyRequest {
                policy: app_only.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "MalformedPolicyDocumentException",
    );
    // Unchanged after the refusal.
    let unchanged = admin
        .get_key_policy(pb::GetKeyPolicyRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(unchanged.policy, policy.policy);

    // Malformed documents name the problem.
    for (bad, fragment) in [
        ("{", ""),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#,
            "Principal",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Bogus":1}]}"#,
            "Bogus",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringEqualz":{"a":"b"}}}]}"#,
            "StringEqualz",
        ),
        (
            r#"{"Version":"2012-10-17","Version":"2012-10-17","Statement":[]}"#,
            "Version",
        ),
        // KMS refuses ForAllValues on single-valued keys it would let pass
        // a request without them.
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*","Condition":{"ForAllValues:StringEquals":{"kms:EncryptionContext:Purpose":"backup"}}}]}"#,
            "OverlyPermissiveCondition: Using the ForAllValues set operator with a single-valued condition key matches requests without the specified encryption context",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:TagResource","Resource":"*","Condition":{"ForAllValues:StringLike":{"aws:RequestTag/team":"blue"}}}]}"#,
            "without the specified tag",
        ),
        // A policy copied from AWS names principals and keys no Coffer
        // request can match: a Deny in it would never apply.
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":{"AWS":["arn:coffer:iam::111122223333:user/a","arn:aws:iam::111122223333:user/mallory"]},"Action":"kms:*","Resource":"*"}]}"#,
            r#""arn:aws:iam::111122223333:user/mallory" is not of this partition (coffer)"#,
        ),
        (
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","NotResource":"arn:aws-cn:kms:*:*:key/*"}}"#,
            "arn:aws-cn:kms",
        ),
        // Within AWS's constraint on the field, not a policy.
        (" \n\t", "not valid JSON"),
    ] {
        let status = assert_error(
            admin
                .put_key_policy(pb::PutKeyPolicyRequest {
                    key_id: key.clone(),
                    policy: bad.into(),
                    bypass_policy_lockout_safety_check: Some(true),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "MalformedPolicyDocumentException",
        );
        assert!(
            status.message().contains(fragment),
            "{bad}: {}",
            status.message()
        );
    }
    let oversized = format!(
        r#"{{"Version":"2012-10-17","Id":"{}","Statement":[]}}"#,
        "x".repeat(33 * 1024)
    );
    assert_error(
        admin
            .put_key_policy(pb::PutKeyPolicyRequest {
                key_id: key.clone(),
                policy: oversized,
                bypass_policy_lockout_safety_check: Some(true),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "MalformedPolicyDocumentException",
    );
    // AWS's pattern for a policy: tab, line feed, carriage return and the
    // characters from U+0020 to U+00FF.
    for (policy, character) in [
        (
            r#"{"Version":"2012-10-17","Id":"签名","Statement":[]}"#,
            "U+7B7E",
        ),
        (
            "{\"Version\":\"2012-10-17\",\u{7}\"Statement\":[]}",
            "U+0007",
        ),
    ] {
        let status = assert_error(
            admin
                .put_key_policy(pb::PutKeyPolicyRequest {
                    key_id: key.clone(),
                    policy: policy.into(),
                    bypass_policy_lockout_safety_check: Some(true),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "ValidationException",
        );
        assert!(status.message().contains(character), "{status:?}");
    }

    // With the bypass the lockout takes effect: the admin can no longer
    // manage the key, and the role the policy names may use it directly
    // (no identity policy needed in the key's own account).
    admin
        .put_key_policy(pb::PutKeyPolicyRequest {
            key_id: key.clone(),
            policy: app_only.clone(),
            bypass_policy_lockout_safety_check: Some(true),
            ..Default::default()
        })
        .await?;
    let stored = harness
        .keys_for(ACCOUNT_A, "admin")
        .await?
        .get_key_policy(pb::GetKeyPolicyRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await;
    let status = assert_error(stored, Code::NotFound, "NotFoundException");
    assert_audited_denial(&harness, &status, "GetKeyPolicy after lockout").await?;
    let mut app = harness
        .keys_as(&format!(
            "spiffe://{TRUST_DOMAIN}/account/{ACCOUNT_A}/role/app"
        ))
        .await?;
    encrypt_with(&mut app, &key, &[], Vec::new()).await?;
    let status = assert_error(
        app.disable_key(pb::DisableKeyRequest {
            key_id: key.clone(),
        })
        .await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    assert!(
        status.message().contains(&format!(
            "role/app is not authorized to perform: kms:DisableKey on resource: {key}"
        )),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains("Statement"),
        "denials never quote the policy"
    );
    Ok(())
}

async fn identity_policies_reload_without_restart(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(backend, admins_only()).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let key = create_key(&mut admin, "", "").await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    assert_error(
        encrypt_with(&mut alice, &key, &[], Vec::new()).await,
        Code::NotFound,
        "NotFoundException",
    );

    let encrypt_only = format!(
        "authorization:\n  reload_interval_ms: 100\n  identity_policies:\n    - name: admins\n      principals: [\"arn:coffer:iam::*:user/admin\"]\n      policy: '{ALLOW_ALL}'\n    - name: alice\n      principals: [\"arn:coffer:iam::{ACCOUNT_A}:user/alice\"]\n      policy:\n        Version: \"2012-10-17\"\n        Statement:\n          - Effect: Allow\n            Action: [\"kms:Encrypt\", \"kms:DescribeKey\"]\n            Resource: \"arn:coffer:kms:eu-west-1:{ACCOUNT_A}:key/*\"\n"
    );
    harness.rewrite_authorization(&encrypt_only)?;
    let mut reloaded = false;
    for _ in 0..100 {
        if encrypt_with(&mut alice, &key, &[], Vec::new())
            .await
            .is_ok()
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(reloaded, "the new identity policy never took effect");
    assert_error(
        alice
            .disable_key(pb::DisableKeyRequest {
                key_id: key.clone(),
            })
            .await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );

    // An invalid document keeps the policies in force and says why.
    let broken = format!(
        "authorization:\n  reload_interval_ms: 100\n  identity_policies:\n    - name: alice\n      principals: [\"arn:coffer:iam::{ACCOUNT_A}:user/alice\"]\n      policy: '{{\"Statement\":[{{\"Effect\":\"Allow\",\"Action\":\"kms:*\",\"Resource\":\"*\",\"Surprise\":true}}]}}'\n"
    );
    harness.rewrite_authorization(&broken)?;
    let mut logged = false;
    for _ in 0..100 {
        if captured_logs().contains("the previous identity policies stay in force") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(logged, "no error was logged for the invalid policy file");
    encrypt_with(&mut alice, &key, &[], Vec::new()).await?;
    admin
        .describe_key(pb::DescribeKeyRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn grants_allow_exactly_what_they_say_and_stop_at_once(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start_with(backend, admins_only()).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let key = create_key(&mut admin, "", "").await?;
    let app_arn = format!("arn:coffer:iam::{ACCOUNT_A}:role/app");
    let retirer_arn = format!("arn:coffer:iam::{ACCOUNT_A}:role/retirer");
    let mut app = harness
        .keys_as(&format!(
            "spiffe://{TRUST_DOMAIN}/account/{ACCOUNT_A}/role/app"
        ))
        .await?;
    let mut retirer = harness
        .keys_as(&format!(
            "spiffe://{TRUST_DOMAIN}/account/{ACCOUNT_A}/role/retirer"
        ))
        .await?;
    assert_error(
        encrypt_with(&mut app, &key, &[("a", "1"), ("b", "2")], Vec::new()).await,
        Code::NotFound,
        "NotFoundException",
    );

    let request = pb::CreateGrantRequest {
        key_id: key.clone(),
        grantee_principal: app_arn.clone(),
        retiring_principal: retirer_arn.clone(),
        operations: vec!["Encrypt".into(), "Decrypt".into(), "DescribeKey".into()],
        constraints: Some(pb::GrantConstraints {
            encryption_context_equals: context(&[("a", "1"), ("b", "2")]),
            ..Default::default()
        }),
        name: "app-access".into(),
        ..Default::default()
    };
    let created = admin.create_grant(request.clone()).await?.into_inner();
    assert_eq!(created.grant_id.len(), 64);
    // Same name and parameters: the same grant, with a token of its own
    // (AWS: unique with every CreateGrant request); either token names it.
    let again = admin.create_grant(request.clone()).await?.into_inner();
    assert_eq!(again.grant_id, created.grant_id);
    assert_ne!(again.grant_token, created.grant_token);
    for token in [&created.grant_token, &again.grant_token] {
        // A dry run answers as the real call would, without retiring.
        assert_error(
            admin
                .retire_grant(pb::RetireGrantRequest {
                    grant_token: token.clone(),
                    dry_run: true,
                    ..Default::default()
                })
                .await,
            Code::FailedPrecondition,
            "DryRunOperationException",
        );
    }
    // The operations are a set: the same ones in another order are the same grant.
    let mut reordered = request.clone();
    reordered.operations.reverse();
    let again = admin.create_grant(reordered).await?.into_inner();
    assert_eq!(again.grant_id, created.grant_id);
    // Retries that overlap (an SDK's, say) still make one grant.
    let mut burst = request.clone();
    burst.name = "burst".into();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut admin = admin.clone();
        let burst = burst.clone();
        calls.spawn(async move { admin.create_grant(burst).await });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(answer) = calls.join_next().await {
        ids.insert(answer??.into_inner().grant_id);
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let listed = admin
        .list_grants(pb::ListGrantsRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .grants;
    assert_eq!(
        listed.iter().filter(|grant| grant.name == "burst").count(),
        1
    );
    for grant_id in ids {
        admin
            .revoke_grant(pb::RevokeGrantRequest {
                key_id: key.clone(),
                grant_id,
                ..Default::default()
            })
            .await?;
    }

    // Effective at once, with or without the token; the same pairs in any
    // order pass, and keys in another case (a constraint's keys are not case
    // sensitive, its values are); a missing, extra or other value does not.
    let blob = encrypt_with(
        &mut app,
        &key,
        &[("b", "2"), ("a", "1")],
        vec![created.grant_token.clone()],
    )
    .await?;
    encrypt_with(&mut app, &key, &[("a", "1"), ("b", "2")], Vec::new()).await?;
    encrypt_with(&mut app, &key, &[("A", "1"), ("b", "2")], Vec::new()).await?;
    for pairs in [
        &[][..],
        &[("a", "1")][..],
        &[("a", "1"), ("b", "2"), ("c", "3")][..],
        &[("a", "1"), ("b", "2 ")][..],
    ] {
        let status = assert_error(
            encrypt_with(&mut app, &key, pairs, Vec::new()).await,
            Code::PermissionDenied,
            "AccessDeniedException",
        );
        assert_audited_denial(&harness, &status, "constraint").await?;
    }
    let plaintext = app
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob.clone(),
            encryption_context: context(&[("a", "1"), ("b", "2")]),
            ..Default::default()
        })
        .await?
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, b"secret");
    // Operations the grant does not name stay denied.
    assert_error(
        app.disable_key(pb::DisableKeyRequest {
            key_id: key.clone(),
        })
        .await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    // A token this service did not issue is refused.
    assert_error(
        encrypt_with(
            &mut app,
            &key,
            &[("a", "1"), ("b", "2")],
            vec!["forged-token".into()],
        )
        .await,
        Code::InvalidArgument,
        "InvalidGrantTokenException",
    );

    let listed = admin
        .list_grants(pb::ListGrantsRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(listed.grants.len(), 1);
    let entry = listed
        .grants
        .first()
        .ok_or_else(|| anyhow::anyhow!("no grant"))?;
    assert_eq!(entry.grantee_principal, app_arn);
    assert_eq!(entry.retiring_principal, retirer_arn);
    assert_eq!(
        entry.issuing_account,
        format!("arn:coffer:iam::{ACCOUNT_A}:root")
    );
    assert_eq!(entry.key_id, key);
    let retirable = retirer
        .list_retirable_grants(pb::ListRetirableGrantsRequest {
            retiring_principal: retirer_arn.clone(),
            ..Default::default()
        })
        .await;
    // The retirer has no identity policy for ListRetirableGrants.
    assert_error(retirable, Code::PermissionDenied, "AccessDeniedException");
    let retirable = admin
        .list_retirable_grants(pb::ListRetirableGrantsRequest {
            retiring_principal: retirer_arn.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(retirable.grants.len(), 1);

    // The retiring principal retires it; it stops working at once.
    retirer
        .retire_grant(pb::RetireGrantRequest {
            key_id: key.clone(),
            grant_id: created.grant_id.clone(),
            ..Default::default()
        })
        .await?;
    assert_error(
        encrypt_with(&mut app, &key, &[("a", "1"), ("b", "2")], Vec::new()).await,
        Code::NotFound,
        "NotFoundException",
    );
    assert_error(
        retirer
            .retire_grant(pb::RetireGrantRequest {
                grant_token: created.grant_token.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "InvalidGrantTokenException",
    );

    // Besides the principals a grant names, only the account that created
    // it retires it, through its principals' identity policies: a key
    // policy that gives kms:* (RetireGrant included) is not enough.
    let guarded_policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":["arn:coffer:iam::{ACCOUNT_A}:root","arn:coffer:iam::{ACCOUNT_A}:role/keyadmin"]}},"Action":"kms:*","Resource":"*"}}]}}"#
    );
    let guarded = admin
        .create_key(pb::CreateKeyRequest {
            policy: guarded_policy,
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?
        .key_id;
    let guarded_grant = admin
        .create_grant(pb::CreateGrantRequest {
            key_id: guarded.clone(),
            grantee_principal: app_arn.clone(),
            operations: vec!["Encrypt".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut keyadmin = harness
        .keys_as(&format!(
            "spiffe://{TRUST_DOMAIN}/account/{ACCOUNT_A}/role/keyadmin"
        ))
        .await?;
    let retire_guarded = pb::RetireGrantRequest {
        key_id: guarded.clone(),
        grant_id: guarded_grant.grant_id.clone(),
        ..Default::default()
    };
    let status = assert_error(
        keyadmin.retire_grant(retire_guarded.clone()).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    assert!(status.message().contains("kms:RetireGrant"), "{status:?}");
    admin.retire_grant(retire_guarded.clone()).await?;
    assert_error(
        admin.retire_grant(retire_guarded).await,
        Code::NotFound,
        "NotFoundException",
    );

    // Revocation by a key administrator, equally immediate.
    let second = admin
        .create_grant(pb::CreateGrantRequest {
            key_id: key.clone(),
            grantee_principal: app_arn.clone(),
            operations: vec!["Encrypt".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    encrypt_with(&mut app, &key, &[], Vec::new()).await?;
    admin
        .revoke_grant(pb::RevokeGrantRequest {
            key_id: key.clone(),
            grant_id: second.grant_id.clone(),
            ..Default::default()
        })
        .await?;
    assert_error(
        encrypt_with(&mut app, &key, &[], Vec::new()).await,
        Code::NotFound,
        "NotFoundException",
    );
    assert_error(
        admin
            .revoke_grant(pb::RevokeGrantRequest {
                key_id: key.clone(),
                grant_id: second.grant_id.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "NotFoundException",
    );

    // A grantee allowed to create grants by its grant may pass on no more
    // than it holds.
    let delegating = admin
        .create_grant(pb::CreateGrantRequest {
            key_id: key.clone(),
            grantee_principal: app_arn.clone(),
            operations: vec!["Encrypt".into(), "CreateGrant".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let narrower = app
        .create_grant(pb::CreateGrantRequest {
            key_id: key.clone(),
            grantee_principal: retirer_arn.clone(),
            operations: vec!["Encrypt".into()],
            ..Default::default()
        })
        .await?;
    assert_eq!(narrower.into_inner().grant_id.len(), 64);
    let wider = app
        .create_grant(pb::CreateGrantRequest {
            key_id: key.clone(),
            grantee_principal: retirer_arn.clone(),
            operations: vec!["Encrypt".into(), "Decrypt".into()],
            ..Default::default()
        })
        .await;
    assert_error(wider, Code::PermissionDenied, "AccessDeniedException");
    admin
        .revoke_grant(pb::RevokeGrantRequest {
            key_id: key.clone(),
            grant_id: delegating.grant_id,
            ..Default::default()
        })
        .await?;

    // Bad grant requests.
    let bad = |change: fn(&mut pb::CreateGrantRequest)| {
        let mut request = pb::CreateGrantRequest {
            key_id: key.clone(),
            grantee_principal: app_arn.clone(),
            operations: vec!["Encrypt".into()],
            ..Default::default()
        };
        change(&mut request);
        request
    };
    for (request, field) in [
        (bad(|r| r.operations = vec![]), "operations"),
        (bad(|r| r.operations = vec!["encrypt".into()]), "operations"),
        (
            bad(|r| r.grantee_principal = "arn:coffer:iam::111122223333:user/*".into()),
            "grantee_principal",
        ),
        (
            bad(|r| r.grantee_principal = "alice".into()),
            "grantee_principal",
        ),
        (
            bad(|r| {
                r.operations = vec!["Sign".into()];
                r.constraints = Some(pb::GrantConstraints {
                    encryption_context_subset: [("a".to_owned(), "1".to_owned())].into(),
                    ..Default::default()
                });
            }),
            "constraints",
        ),
        (
            bad(|r| {
                r.constraints = Some(pb::GrantConstraints {
                    encryption_context_subset: [("a".to_owned(), "1".to_owned())].into(),
                    encryption_context_equals: [("a".to_owned(), "1".to_owned())].into(),
                })
            }),
            "constraints",
        ),
        // A constraint with no pairs: KMS takes an empty map as a
        // constraint, which proto3 cannot tell from an absent one; it is
        // refused rather than granted for every context.
        (
            bad(|r| r.constraints = Some(pb::GrantConstraints::default())),
            "constraints",
        ),
    ] {
        let status = assert_error(
            admin.create_grant(request).await,
            Code::InvalidArgument,
            "ValidationException",
        );
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    assert_error(
        admin
            .revoke_grant(pb::RevokeGrantRequest {
                key_id: key.clone(),
                grant_id: "../x".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "InvalidGrantIdException",
    );
    // Lengths past KMS's limits are ValidationExceptions naming the field,
    // before the text is looked at.
    let status = assert_error(
        admin
            .revoke_grant(pb::RevokeGrantRequest {
                key_id: key.clone(),
                grant_id: "a".repeat(129),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(status.message().starts_with("grant_id"), "{status:?}");
    let status = assert_error(
        admin
            .retire_grant(pb::RetireGrantRequest {
                grant_token: "A".repeat(8193),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(status.message().starts_with("grant_token"), "{status:?}");
    Ok(())
}

/// AWS's rules for retiring, delegating and counting grants: an explicit
/// deny of kms:RetireGrant stops even the retiring principal; the
/// constraints of a grant made through a grant may only tighten its
/// parent's; kms:GrantIsForAWSResource is set for ListGrants and
/// RevokeGrant too; constraints are bounded; a key holds at most 500 grants
/// for one grantee; RetireGrant's event names the grant it retired.
async fn grants_follow_aws_rules_for_retiring_delegating_and_quotas(
    backend: Backend,
) -> anyhow::Result<()> {
    let deny_retire = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"kms:RetireGrant","Resource":"*"}]}"#;
    let harness = Harness::start_with(
        backend,
        Options {
            authorization: format!(
                "authorization:\n  identity_policies:\n    - name: admins\n      principals: [\"arn:coffer:iam::*:user/admin\"]\n      policy: '{ALLOW_ALL}'\n    - name: no-retiring\n      principals: [\"arn:coffer:iam::*:role/retirer\"]\n      policy: '{deny_retire}'\n"
            ),
            ..Options::default()
        },
    )
    .await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let role = |name: &str| format!("arn:coffer:iam::{ACCOUNT_A}:role/{name}");
    let role_id = |name: &str| format!("spiffe://{TRUST_DOMAIN}/account/{ACCOUNT_A}/role/{name}");
    let mut app = harness.keys_as(&role_id("app")).await?;
    let mut retirer = harness.keys_as(&role_id("retirer")).await?;
    // The key policy also lets the app list and revoke grants when no
    // Coffer service calls for it.
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Effect":"Allow","Principal":{{"AWS":"arn:coffer:iam::{ACCOUNT_A}:root"}},"Action":"kms:*","Resource":"*"}},
            {{"Effect":"Allow","Principal":{{"AWS":"{app}"}},"Action":["kms:ListGrants","kms:RevokeGrant"],"Resource":"*","Condition":{{"Bool":{{"kms:GrantIsForAWSResource":"false"}}}}}}]}}"#,
        app = role("app")
    );
    let key = admin
        .create_key(pb::CreateKeyRequest {
            policy,
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?
        .arn;
    let grant = |grantee: &str, operations: &[&str]| pb::CreateGrantRequest {
        key_id: key.clone(),
        grantee_principal: grantee.to_owned(),
        operations: operations.iter().map(|op| (*op).to_owned()).collect(),
        ..Default::default()
    };

    // The retiring principal is stopped by its explicit deny.
    let denied_retire = admin
        .create_grant(pb::CreateGrantRequest {
            retiring_principal: role("retirer"),
            ..grant(&role("app"), &["Encrypt"])
        })
        .await?
        .into_inner();
    let status = assert_error(
        retirer
            .retire_grant(pb::RetireGrantRequest {
                grant_token: denied_retire.grant_token.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    assert!(status.message().contains("explicit deny"), "{status:?}");
    assert_audited_denial(&harness, &status, "denied retire").await?;
    // The account that issued it retires it, by token: the event records no
    // parameters (a token is a credential) and names the grant.
    let retired = admin
        .retire_grant(pb::RetireGrantRequest {
            grant_token: denied_retire.grant_token.clone(),
            ..Default::default()
        })
        .await?;
    let events = harness
        .audit_events_for(&request_id_of(retired.metadata()))
        .await?;
    anyhow::ensure!(events.len() == 1, "{events:#?}");
    assert!(events[0]["requestParameters"].is_null(), "{:#}", events[0]);
    assert_eq!(
        events[0]["additionalEventData"]["grantId"], denied_retire.grant_id,
        "{:#}",
        events[0]
    );

    // A token given where a grant ID belongs is refused without being
    // echoed: the message is audited, and a token is a credential. It is
    // longer than a grant ID may be, which KMS checks first.
    for operation in ["RetireGrant", "RevokeGrant", "ListGrants"] {
        let grant_id = denied_retire.grant_token.clone();
        let outcome = match operation {
            "RetireGrant" => admin
                .retire_grant(pb::RetireGrantRequest {
                    key_id: key.clone(),
                    grant_id,
                    ..Default::default()
                })
                .await
                .map(drop),
            "RevokeGrant" => admin
                .revoke_grant(pb::RevokeGrantRequest {
                    key_id: key.clone(),
                    grant_id,
                    ..Default::default()
                })
                .await
                .map(drop),
            _ => admin
                .list_grants(pb::ListGrantsRequest {
                    key_id: key.clone(),
                    grant_id,
                    ..Default::default()
                })
                .await
                .map(drop),
        };
        let status = assert_error(outcome, Code::InvalidArgument, "ValidationException");
        assert!(status.message().starts_with("grant_id"), "{status:?}");
        assert!(
            !status.message().contains(&denied_retire.grant_token),
            "{status:?}"
        );
        let events = harness
            .audit_events_for(&request_id_of(status.metadata()))
            .await?;
        anyhow::ensure!(events.len() == 1, "{events:#?}");
        let token = &denied_retire.grant_token;
        let secret = token.get(token.len().saturating_sub(40)..).unwrap_or(token);
        assert!(
            !events[0].to_string().contains(secret),
            "{operation}: {:#}",
            events[0]
        );
    }

    // kms:GrantIsForAWSResource is "false" for a direct ListGrants and
    // RevokeGrant, so the conditioned statement allows them.
    let revocable = admin
        .create_grant(grant(&role("other"), &["Encrypt"]))
        .await?
        .into_inner();
    let listed = app
        .list_grants(pb::ListGrantsRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(listed.grants.len(), 1);
    app.revoke_grant(pb::RevokeGrantRequest {
        key_id: key.clone(),
        grant_id: revocable.grant_id.clone(),
        ..Default::default()
    })
    .await?;

    // A grant made through a grant: more pairs, or Subset made Equals, is
    // as strict or stricter; fewer pairs or no constraint is not.
    let subset = |pairs: &[(&str, &str)]| {
        Some(pb::GrantConstraints {
            encryption_context_subset: context(pairs),
            ..Default::default()
        })
    };
    let equals = |pairs: &[(&str, &str)]| {
        Some(pb::GrantConstraints {
            encryption_context_equals: context(pairs),
            ..Default::default()
        })
    };
    admin
        .create_grant(pb::CreateGrantRequest {
            constraints: subset(&[("a", "1")]),
            ..grant(&role("app"), &["Encrypt", "CreateGrant"])
        })
        .await?;
    for constraints in [
        subset(&[("a", "1"), ("b", "2")]),
        equals(&[("A", "1")]),
        subset(&[("a", "1")]),
    ] {
        app.create_grant(pb::CreateGrantRequest {
            constraints,
            ..grant(&role("child"), &["Encrypt"])
        })
        .await?;
    }
    for constraints in [None, subset(&[("b", "2")]), subset(&[("a", "2")])] {
        let status = assert_error(
            app.create_grant(pb::CreateGrantRequest {
                constraints,
                ..grant(&role("child"), &["Encrypt"])
            })
            .await,
            Code::PermissionDenied,
            "AccessDeniedException",
        );
        assert!(status.message().contains("kms:CreateGrant"), "{status:?}");
    }

    // Constraints hold at most 8 pairs of at most 384 characters in all,
    // and no two keys that differ only in case.
    let pairs: Vec<(String, String)> = (0..9).map(|n| (format!("k{n}"), "v".into())).collect();
    let constrained = |pairs: Vec<(String, String)>| pb::CreateGrantRequest {
        constraints: Some(pb::GrantConstraints {
            encryption_context_subset: pairs.into_iter().collect(),
            ..Default::default()
        }),
        ..grant(&role("app"), &["Encrypt"])
    };
    admin.create_grant(constrained(pairs[..8].to_vec())).await?;
    let long = vec![("k".to_owned(), "v".repeat(383))];
    admin.create_grant(constrained(long)).await?;
    for too_much in [
        pairs.clone(),
        vec![("k".to_owned(), "v".repeat(384))],
        vec![
            ("Stage".to_owned(), "a".into()),
            ("stage".to_owned(), "b".into()),
        ],
    ] {
        let status = assert_error(
            admin.create_grant(constrained(too_much)).await,
            Code::InvalidArgument,
            "ValidationException",
        );
        assert!(status.message().starts_with("constraints"), "{status:?}");
    }

    // 500 grants for one grantee on a key, and more: AWS no longer limits
    // a grantee's grants below the key's 50,000.
    let crowded = create_key(&mut admin, "", "").await?;
    let crowd = pb::CreateGrantRequest {
        key_id: crowded.clone(),
        ..grant(&role("crowd"), &["Encrypt"])
    };
    let mut made = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = admin.clone();
        let request = crowd.clone();
        made.spawn(async move {
            for _ in 0..500 / 8 {
                client.create_grant(request.clone()).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(outcome) = made.join_next().await {
        outcome??;
    }
    for _ in 0..500 % 8 {
        admin.create_grant(crowd.clone()).await?;
    }
    // The 501st.
    admin.create_grant(crowd.clone()).await?;
    // Other grantees are not held back by the crowd.
    admin
        .create_grant(pb::CreateGrantRequest {
            key_id: crowded.clone(),
            ..grant(&role("app"), &["Encrypt"])
        })
        .await?;
    Ok(())
}

async fn cross_account_use_needs_both_sides(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(backend, admins_only()).await?;
    let mut admin_a = harness.keys_for(ACCOUNT_A, "admin").await?;
    let mut admin_b = harness.keys_for(ACCOUNT_B, "admin").await?;
    let mut carol_b = harness.keys_for(ACCOUNT_B, "carol").await?;
    let key = create_key(&mut admin_a, "", "").await?;
    let key_id = key.rsplit('/').next().unwrap_or_default().to_owned();
    admin_a
        .create_alias(pb::CreateAliasRequest {
            alias_name: "alias/shared".into(),
            target_key_id: key.clone(),
        })
        .await?;

    // A's key policy does not mention B: B's admin sees nothing, exactly
    // as for a key that does not exist.
    let missing =
        format!("arn:coffer:kms:eu-west-1:{ACCOUNT_A}:key/00000000-0000-4000-8000-000000000000");
    let absent = assert_error(
        encrypt_with(&mut admin_b, &missing, &[], Vec::new()).await,
        Code::NotFound,
        "NotFoundException",
    );
    let hidden = assert_error(
        encrypt_with(&mut admin_b, &key, &[], Vec::new()).await,
        Code::NotFound,
        "NotFoundException",
    );
    assert_eq!(
        hidden.message().replace(&key_id, "ID"),
        absent
            .message()
            .replace("00000000-0000-4000-8000-000000000000", "ID")
    );
    // B's own trail, which B may read, tells the two apart no better: both
    // calls are filed as what B was told (AWS files denied cross-account
    // calls with the caller only).
    let absent_event = assert_audited_as(&harness, &absent, "NotFoundException", "missing").await?;
    let hidden_event = assert_audited_as(
        &harness,
        &hidden,
        "NotFoundException",
        "cross-account without policy",
    )
    .await?;
    assert_eq!(
        hidden_event["errorMessage"]
            .as_str()
            .map(|message| message.replace(&key_id, "ID")),
        absent_event["errorMessage"]
            .as_str()
            .map(|message| message.replace("00000000-0000-4000-8000-000000000000", "ID"))
    );
    assert_eq!(hidden_event["resources"], absent_event["resources"]);

    // A trusts account B for Encrypt and DescribeKey.
    let shared = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Sid":"Admin","Effect":"Allow","Principal":{{"AWS":"arn:coffer:iam::{ACCOUNT_A}:root"}},"Action":"kms:*","Resource":"*"}},
            {{"Sid":"AccountB","Effect":"Allow","Principal":{{"AWS":"{ACCOUNT_B}"}},"Action":["kms:Encrypt","kms:DescribeKey","kms:DisableKey"],"Resource":"*"}}]}}"#
    );
    admin_a
        .put_key_policy(pb::PutKeyPolicyRequest {
            key_id: key.clone(),
            policy: shared,
            ..Default::default()
        })
        .await?;
    // Both sides allow: B's admin may use the key by its ARN.
    encrypt_with(&mut admin_b, &key, &[], Vec::new()).await?;
    // B's side missing: carol has no identity policy.
    let status = assert_error(
        encrypt_with(&mut carol_b, &key, &[], Vec::new()).await,
        Code::NotFound,
        "NotFoundException",
    );
    assert_audited_as(
        &harness,
        &status,
        "NotFoundException",
        "cross-account without identity policy",
    )
    .await?;
    // A key id or an alias name always names a key of the caller's own
    // account; an alias ARN, like a key ARN, may name another account's.
    assert_error(
        encrypt_with(&mut admin_b, &key_id, &[], Vec::new()).await,
        Code::NotFound,
        "NotFoundException",
    );
    assert_error(
        encrypt_with(&mut admin_b, "alias/shared", &[], Vec::new()).await,
        Code::NotFound,
        "NotFoundException",
    );
    let alias_arn = format!("arn:coffer:kms:eu-west-1:{ACCOUNT_A}:alias/shared");
    let by_alias = encrypt_with(&mut admin_b, &alias_arn, &[], Vec::new()).await?;
    let decrypted = admin_a
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: by_alias,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(decrypted.key_id, key);
    // Still both sides: carol's identity policies allow nothing, and an
    // alias that does not exist gets the same answer.
    let hidden = assert_error(
        encrypt_with(&mut carol_b, &alias_arn, &[], Vec::new()).await,
        Code::NotFound,
        "NotFoundException",
    );
    let absent = assert_error(
        encrypt_with(
            &mut carol_b,
            &alias_arn.replace("shared", "nothing"),
            &[],
            Vec::new(),
        )
        .await,
        Code::NotFound,
        "NotFoundException",
    );
    assert_eq!(
        hidden.message(),
        absent.message().replace("nothing", "shared")
    );
    // Management never crosses accounts, by alias ARN either.
    assert_error(
        admin_b
            .disable_key(pb::DisableKeyRequest {
                key_id: alias_arn.clone(),
            })
            .await,
        Code::NotFound,
        "NotFoundException",
    );
    // Management never crosses accounts, even when the policy says so.
    assert_error(
        admin_b
            .disable_key(pb::DisableKeyRequest {
                key_id: key.clone(),
            })
            .await,
        Code::NotFound,
        "NotFoundException",
    );
    // Decrypt was not shared.
    let blob = encrypt_with(&mut admin_b, &key, &[], Vec::new()).await?;
    assert_error(
        admin_b
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: blob.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    // A grant of A's key cannot be revoked or retired from B.
    let grant = admin_a
        .create_grant(pb::CreateGrantRequest {
            key_id: key.clone(),
            grantee_principal: format!("arn:coffer:iam::{ACCOUNT_A}:user/admin"),
            operations: vec!["Decrypt".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_error(
        admin_b
            .revoke_grant(pb::RevokeGrantRequest {
                key_id: key.clone(),
                grant_id: grant.grant_id.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    assert_error(
        admin_b
            .retire_grant(pb::RetireGrantRequest {
                key_id: key.clone(),
                grant_id: grant.grant_id.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    let own_key = create_key(&mut admin_b, "", "").await?;
    assert_error(
        admin_b
            .revoke_grant(pb::RevokeGrantRequest {
                key_id: own_key,
                grant_id: grant.grant_id.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "NotFoundException",
    );
    let still = admin_a
        .list_grants(pb::ListGrantsRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(still.grants.len(), 1);

    // Grants across accounts, on a key of A's whose policy lets B create
    // them (and nothing about retiring them).
    let granting = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Sid":"Admin","Effect":"Allow","Principal":{{"AWS":"arn:coffer:iam::{ACCOUNT_A}:root"}},"Action":"kms:*","Resource":"*"}},
            {{"Sid":"AccountB","Effect":"Allow","Principal":{{"AWS":"{ACCOUNT_B}"}},"Action":["kms:CreateGrant","kms:DescribeKey"],"Resource":"*"}}]}}"#
    );
    let granted_key = admin_a
        .create_key(pb::CreateKeyRequest {
            policy: granting,
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .context("no metadata")?
        .arn;
    admin_a
        .create_alias(pb::CreateAliasRequest {
            alias_name: "alias/granting".into(),
            target_key_id: granted_key.clone(),
        })
        .await?;
    let grant_for_carol = |key_id: &str| pb::CreateGrantRequest {
        key_id: key_id.to_owned(),
        grantee_principal: format!("arn:coffer:iam::{ACCOUNT_B}:user/carol"),
        operations: vec!["Encrypt".into()],
        ..Default::default()
    };
    // The grant operations take another account's key by key ARN only.
    assert_error(
        admin_b
            .create_grant(grant_for_carol(&format!(
                "arn:coffer:kms:eu-west-1:{ACCOUNT_A}:alias/granting"
            )))
            .await,
        Code::NotFound,
        "NotFoundException",
    );
    // B issued these grants, so B's principals retire them through their
    // identity policies, though A's key policy says nothing of RetireGrant;
    // and the key's owner delegates retiring the grants on its key the same
    // way: A's admin retires one B issued.
    for mut retirer in [admin_b.clone(), admin_a.clone()] {
        let issued_by_b = admin_b
            .create_grant(grant_for_carol(&granted_key))
            .await?
            .into_inner();
        retirer
            .retire_grant(pb::RetireGrantRequest {
                key_id: granted_key.clone(),
                grant_id: issued_by_b.grant_id.clone(),
                ..Default::default()
            })
            .await?;
    }
    // A issued this one and named B's root its retiring principal: B's
    // admin retires it (by identity policy), carol (without one) may not.
    let retired_by_b = admin_a
        .create_grant(pb::CreateGrantRequest {
            retiring_principal: format!("arn:coffer:iam::{ACCOUNT_B}:root"),
            ..grant_for_carol(&granted_key)
        })
        .await?
        .into_inner();
    let retire = pb::RetireGrantRequest {
        key_id: granted_key.clone(),
        grant_id: retired_by_b.grant_id.clone(),
        ..Default::default()
    };
    assert_error(
        carol_b.retire_grant(retire.clone()).await,
        Code::NotFound,
        "NotFoundException",
    );
    admin_b.retire_grant(retire).await?;
    // A issued this one with no retiring principal: not B's to retire.
    let kept = admin_a
        .create_grant(grant_for_carol(&granted_key))
        .await?
        .into_inner();
    assert_error(
        admin_b
            .retire_grant(pb::RetireGrantRequest {
                key_id: granted_key.clone(),
                grant_id: kept.grant_id.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    // A key that does not exist answers as a grant that does not, so the
    // answer tells B nothing of which keys A has.
    let (prefix, _) = granted_key
        .rsplit_once('/')
        .context("a key ARN has a slash")?;
    let mut answers = Vec::new();
    for key_id in [
        granted_key.clone(),
        format!("{prefix}/00000000-0000-4000-8000-000000000000"),
    ] {
        let status = assert_error(
            admin_b
                .retire_grant(pb::RetireGrantRequest {
                    key_id,
                    grant_id: "0".repeat(64),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
            "NotFoundException",
        );
        answers.push(status.message().to_owned());
    }
    assert_eq!(answers[0], answers[1]);
    let left = admin_a
        .list_grants(pb::ListGrantsRequest {
            key_id: granted_key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        left.grants
            .iter()
            .map(|grant| grant.grant_id.as_str())
            .collect::<Vec<_>>(),
        [kept.grant_id.as_str()]
    );

    // A's trail has B's three Encrypts with A's key, as copies of B's own
    // events; none of B's refused attempts (CloudTrail files a refused
    // cross-account call in the caller's account only).
    harness.audit_events().await?;
    let uses_in = |events: Vec<audit_pb::Event>| -> anyhow::Result<Vec<serde_json::Value>> {
        let mut uses = Vec::new();
        for event in events {
            let record: serde_json::Value = serde_json::from_str(&event.cloud_trail_event)?;
            if record["userIdentity"]["accountId"] == ACCOUNT_B && record["eventName"] == "Encrypt"
            {
                uses.push(record);
            }
        }
        Ok(uses)
    };
    let by_key_of = |key: &str| audit_pb::LookupEventsRequest {
        lookup_attributes: vec![audit_pb::LookupAttribute {
            attribute_key: "ResourceName".into(),
            attribute_value: key.to_owned(),
        }],
        max_results: Some(50),
        ..Default::default()
    };
    let mut audit_a = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "admin"))
        .await?;
    let mut audit_b = harness
        .audit_as(&Harness::user_id(ACCOUNT_B, "admin"))
        .await?;
    let in_a = audit_a
        .lookup_events(by_key_of(&key))
        .await?
        .into_inner()
        .events;
    let in_b = audit_b
        .lookup_events(by_key_of(&key))
        .await?
        .into_inner()
        .events;
    assert!(
        in_a.iter()
            .chain(&in_b)
            .all(|event| event.event_id.len() == 36)
    );
    let (seen_by_a, seen_by_b) = (uses_in(in_a)?, uses_in(in_b)?);
    assert_eq!(seen_by_a.len(), 3, "{seen_by_a:#?}");
    assert_eq!(seen_by_b.len(), 3, "{seen_by_b:#?}");
    for owner in &seen_by_a {
        let caller = seen_by_b
            .iter()
            .find(|caller| caller["eventID"] == owner["sharedEventID"])
            .context("the caller's event of a shared one")?;
        assert_eq!(owner["recipientAccountId"], ACCOUNT_A);
        assert_eq!(caller["recipientAccountId"], ACCOUNT_B);
        assert_eq!(owner["sharedEventID"], caller["eventID"]);
        assert_eq!(caller["sharedEventID"], caller["eventID"]);
        assert_ne!(owner["eventID"], caller["eventID"]);
        assert_eq!(owner["requestID"], caller["requestID"]);
        assert!(owner.get("errorCode").is_none());
    }
    // B's grant calls on A's other key: the two grants B created and the
    // two it retired reach A's trail; the retirements refused do not.
    let mut grant_calls = Vec::new();
    for event in audit_a
        .lookup_events(by_key_of(&granted_key))
        .await?
        .into_inner()
        .events
    {
        let record: serde_json::Value = serde_json::from_str(&event.cloud_trail_event)?;
        if record["userIdentity"]["accountId"] == ACCOUNT_B {
            assert!(record.get("errorCode").is_none(), "{record:#}");
            grant_calls.push(record["eventName"].as_str().unwrap_or_default().to_owned());
        }
    }
    grant_calls.sort();
    assert_eq!(
        grant_calls,
        ["CreateGrant", "CreateGrant", "RetireGrant", "RetireGrant"]
    );
    Ok(())
}

async fn root_look_alikes_never_gain_root(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(backend, admins_only()).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let key = create_key(&mut admin, "", "").await?;
    // The default policy allows the account root; users named like it are
    // ordinary users whose (absent) identity policies decide.
    for name in ["root", "Root", "ROOT", "root.", "r00t"] {
        let mut client = harness.keys_for(ACCOUNT_A, name).await?;
        let status = assert_error(
            encrypt_with(&mut client, &key, &[], Vec::new()).await,
            Code::NotFound,
            "NotFoundException",
        );
        assert_audited_denial(&harness, &status, name).await?;
    }
    // Policies cannot name look-alikes as the root either.
    for principal in ["ROOT", "Root", " root", "root "] {
        let document = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"arn:coffer:iam::{ACCOUNT_A}:{principal}"}},"Action":"kms:*","Resource":"*"}}]}}"#
        );
        assert_error(
            admin
                .put_key_policy(pb::PutKeyPolicyRequest {
                    key_id: key.clone(),
                    policy: document,
                    bypass_policy_lockout_safety_check: Some(true),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "MalformedPolicyDocumentException",
        );
    }
    Ok(())
}

async fn condition_keys_come_from_the_request_and_the_connection(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start_with(backend, admins_only()).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let key = create_key(&mut admin, "", "").await?;
    let app_spiffe = format!("spiffe://{TRUST_DOMAIN}/account/{ACCOUNT_A}/role/app");
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Sid":"Admin","Effect":"Allow","Principal":{{"AWS":"arn:coffer:iam::{ACCOUNT_A}:root"}},"Action":"kms:*","Resource":"*"}},
            {{"Sid":"TenantOnly","Effect":"Allow","Principal":{{"AWS":"arn:coffer:iam::{ACCOUNT_A}:role/app"}},"Action":"kms:Encrypt","Resource":"*",
              "Condition":{{"StringEquals":{{"kms:EncryptionContext:tenant":"acme","kms:CallerAccount":"{ACCOUNT_A}"}},
                           "ForAllValues:StringEquals":{{"kms:EncryptionContextKeys":["tenant","purpose"]}},
                           "IpAddress":{{"aws:SourceIp":"127.0.0.0/8"}},
                           "StringEqualsIfExists":{{"aws:PrincipalTag/none":"x"}}}}}},
            {{"Sid":"SecretsOnly","Effect":"Allow","Principal":{{"AWS":"arn:coffer:iam::{ACCOUNT_A}:role/app"}},"Action":"kms:Decrypt","Resource":"*",
              "Condition":{{"StringEquals":{{"kms:ViaService":"secretsmanager.eu-west-1.coffer.internal"}}}}}},
            {{"Sid":"NoLateNight","Effect":"Deny","Principal":"*","Action":"kms:Encrypt","Resource":"*",
              "Condition":{{"DateLessThan":{{"aws:CurrentTime":"2000-01-01T00:00:00Z"}}}}}},
            {{"Sid":"DirectOnlyFromTheOffice","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*",
              "Condition":{{"NotIpAddress":{{"aws:SourceIp":"10.0.0.0/8"}},"Bool":{{"aws:ViaAWSService":"false"}},
                           "BoolIfExists":{{"aws:PrincipalIsAWSService":"false"}}}}}}]}}"#
    );
    admin
        .put_key_policy(pb::PutKeyPolicyRequest {
            key_id: key.clone(),
            policy,
            ..Default::default()
        })
        .await?;
    let mut app = harness.keys_as(&app_spiffe).await?;
    let blob = encrypt_with(&mut app, &key, &[("tenant", "acme")], Vec::new()).await?;
    encrypt_with(
        &mut app,
        &key,
        &[("tenant", "acme"), ("purpose", "x")],
        Vec::new(),
    )
    .await?;
    for pairs in [
        &[][..],
        &[("tenant", "other")][..],
        &[("Tenant", "acme")][..],
        &[("tenant", "acme"), ("extra", "1")][..],
    ] {
        assert_error(
            encrypt_with(&mut app, &key, pairs, Vec::new()).await,
            Code::NotFound,
            "NotFoundException",
        );
    }
    // kms:ViaService comes only from a service certificate: the role's own
    // connection (even with a forwarding header) is not "via" anything.
    let direct = app
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob.clone(),
            encryption_context: context(&[("tenant", "acme")]),
            ..Default::default()
        })
        .await;
    assert_error(direct, Code::InvalidArgument, "InvalidCiphertextException");
    let mut spoofing = KeysClient::with_interceptor(
        harness
            .channel_with(Some(&harness.identity(&app_spiffe)?))
            .await?,
        |mut request: tonic::Request<()>| {
            request.metadata_mut().insert(
                "x-coffer-forwarded-for",
                tonic::metadata::MetadataValue::from_static("spiffe://coffer.test/service/secrets"),
            );
            Ok(request)
        },
    );
    assert_error(
        spoofing
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: blob.clone(),
                encryption_context: context(&[("tenant", "acme")]),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "InvalidCiphertextException",
    );
    let mut via_secrets = harness.keys_via("secrets", &app_spiffe).await?;
    let plaintext = via_secrets
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob.clone(),
            encryption_context: context(&[("tenant", "acme")]),
            ..Default::default()
        })
        .await?
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, b"secret");
    // aws:ViaAWSService is in every request: false on a direct call, so the
    // usual guardrail (deny direct calls from outside the office) stops even
    // the key's administrator, and true on a forwarded one (above).
    let status = assert_error(
        admin
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: blob,
                encryption_context: context(&[("tenant", "acme")]),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    assert!(status.message().contains("explicit deny"), "{status:?}");
    Ok(())
}

/// A refusal of `action` (`kms:Encrypt`), naming it.
fn denied<T: std::fmt::Debug>(outcome: Result<T, tonic::Status>, action: &str) {
    let status = assert_error(outcome, Code::PermissionDenied, "AccessDeniedException");
    assert!(status.message().contains(action), "{action}: {status:?}");
}

/// A key of `spec` and `usage` made by `admin` with `policy`, whose
/// statements `{root}` and `{alice}` name account A's root and user alice.
async fn key_with_policy(
    admin: &mut KeysClient<Channel>,
    spec: &str,
    usage: &str,
    statements: &str,
) -> anyhow::Result<String> {
    let root = format!("arn:coffer:iam::{ACCOUNT_A}:root");
    let alice = format!("arn:coffer:iam::{ACCOUNT_A}:user/alice");
    let statements = statements.replace("{alice}", &alice);
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Sid":"Admin","Effect":"Allow","Principal":{{"AWS":"{root}"}},"Action":"kms:*","Resource":"*"}},
            {statements}]}}"#
    );
    Ok(admin
        .create_key(pb::CreateKeyRequest {
            key_spec: spec.into(),
            key_usage: usage.into(),
            policy,
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .context("no metadata")?
        .arn)
}

/// The condition keys of what a request asks for (an algorithm, a key pair
/// spec, a rotation period, a waiting period, the alias it named, whether a
/// ReEncrypt keeps its key) hold the request's values, or the parameter's
/// default when the request leaves it out, so a policy can allow or deny by
/// them.
async fn condition_keys_name_what_a_request_asks_for(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(backend, admins_only()).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    let symmetric = r#"
        {"Effect":"Allow","Principal":{"AWS":"{alice}"},"Resource":"*",
         "Action":["kms:DescribeKey","kms:Decrypt","kms:ReEncrypt*","kms:EnableKeyRotation","kms:ScheduleKeyDeletion"]},
        {"Effect":"Allow","Principal":{"AWS":"{alice}"},"Action":"kms:Encrypt","Resource":"*",
         "Condition":{"StringEquals":{"kms:EncryptionAlgorithm":"SYMMETRIC_DEFAULT","kms:RequestAlias":"alias/approved"}}},
        {"Effect":"Allow","Principal":{"AWS":"{alice}"},"Action":"kms:GenerateDataKeyPair","Resource":"*",
         "Condition":{"StringEquals":{"kms:DataKeyPairSpec":"ECC_NIST_P256","kms:EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}}},
        {"Effect":"Deny","Principal":"*","Action":"kms:EnableKeyRotation","Resource":"*",
         "Condition":{"NumericLessThan":{"kms:RotationPeriodInDays":"180"}}},
        {"Effect":"Deny","Principal":"*","Action":"kms:ScheduleKeyDeletion","Resource":"*",
         "Condition":{"NumericLessThan":{"kms:ScheduleKeyDeletionPendingWindowInDays":"30"}}},
        {"Effect":"Deny","Principal":"*","Action":"kms:{half}","Resource":"*",
         "Condition":{"Bool":{"kms:ReEncryptOnSameKey":"true"}}}"#;
    // One key refuses a ReEncrypt onto itself on its source half, the other
    // on its destination half.
    let key = key_with_policy(
        &mut admin,
        "",
        "",
        &symmetric.replace("{half}", "ReEncryptFrom"),
    )
    .await?;
    let other_key = key_with_policy(
        &mut admin,
        "",
        "",
        &symmetric.replace("{half}", "ReEncryptTo"),
    )
    .await?;
    for alias in ["alias/approved", "alias/other"] {
        admin
            .create_alias(pb::CreateAliasRequest {
                alias_name: alias.into(),
                target_key_id: key.clone(),
            })
            .await?;
    }
    let key_id = key.rsplit('/').next().context("a key id")?;
    let alias_arn = key.replace(&format!("key/{key_id}"), "alias/approved");

    // Encrypt only through alias/approved (its name or its ARN), with the
    // default algorithm it never named.
    let blob = encrypt_with(&mut alice, "alias/approved", &[], Vec::new()).await?;
    encrypt_with(&mut alice, &alias_arn, &[], Vec::new()).await?;
    denied(
        encrypt_with(&mut alice, &key, &[], Vec::new()).await,
        "kms:Encrypt",
    );
    denied(
        encrypt_with(&mut alice, "alias/other", &[], Vec::new()).await,
        "kms:Encrypt",
    );

    // Data key pairs of one spec only.
    let pair = |spec: &str| pb::GenerateDataKeyPairRequest {
        key_id: key.clone(),
        key_pair_spec: spec.into(),
        ..Default::default()
    };
    alice.generate_data_key_pair(pair("ECC_NIST_P256")).await?;
    denied(
        alice.generate_data_key_pair(pair("RSA_2048")).await,
        "kms:GenerateDataKeyPair",
    );

    // A ReEncrypt onto the same key, however the destination names it, is
    // refused by the source key's half; onto another key it is not, and the
    // other key's destination half refuses only a ReEncrypt onto itself.
    let re_encrypt = |blob: &[u8], destination: &str| pb::ReEncryptRequest {
        ciphertext_blob: blob.to_vec(),
        destination_key_id: destination.into(),
        ..Default::default()
    };
    for destination in [key.as_str(), key_id, "alias/approved", alias_arn.as_str()] {
        denied(
            alice.re_encrypt(re_encrypt(&blob, destination)).await,
            "kms:ReEncryptFrom",
        );
    }
    let moved = alice
        .re_encrypt(re_encrypt(&blob, &other_key))
        .await?
        .into_inner();
    assert_eq!(moved.key_id, other_key);
    denied(
        alice
            .re_encrypt(re_encrypt(&moved.ciphertext_blob, &other_key))
            .await,
        "kms:ReEncryptTo",
    );
    let back = alice
        .re_encrypt(re_encrypt(&moved.ciphertext_blob, "alias/other"))
        .await?
        .into_inner();
    assert_eq!(back.key_id, key);

    // A rotation period and a waiting period below the policy's floors are
    // refused; the defaults (365 and 30 days) pass.
    let rotation = |days: Option<i32>| pb::EnableKeyRotationRequest {
        key_id: key.clone(),
        rotation_period_in_days: days,
    };
    denied(
        alice.enable_key_rotation(rotation(Some(90))).await,
        "kms:EnableKeyRotation",
    );
    alice.enable_key_rotation(rotation(Some(180))).await?;
    alice.enable_key_rotation(rotation(None)).await?;
    let deletion = |days: Option<i32>| pb::ScheduleKeyDeletionRequest {
        key_id: key.clone(),
        pending_window_in_days: days,
    };
    denied(
        alice.schedule_key_deletion(deletion(Some(7))).await,
        "kms:ScheduleKeyDeletion",
    );
    let scheduled = alice
        .schedule_key_deletion(deletion(None))
        .await?
        .into_inner();
    assert_eq!(scheduled.pending_window_in_days, 30);

    // Sign with one algorithm on raw messages only; RAW is the default.
    // Alice may know of the key only by its alias: a refusal by any other
    // name answers as a missing key does.
    let signing = key_with_policy(
        &mut admin,
        "RSA_2048",
        "SIGN_VERIFY",
        r#"{"Effect":"Allow","Principal":{"AWS":"{alice}"},"Action":"kms:DescribeKey","Resource":"*",
            "Condition":{"StringEquals":{"kms:RequestAlias":"alias/signer"}}},
           {"Effect":"Allow","Principal":{"AWS":"{alice}"},"Action":"kms:Sign","Resource":"*",
            "Condition":{"StringEquals":{"kms:SigningAlgorithm":"RSASSA_PSS_SHA_256","kms:MessageType":"RAW"}}}"#,
    )
    .await?;
    admin
        .create_alias(pb::CreateAliasRequest {
            alias_name: "alias/signer".into(),
            target_key_id: signing.clone(),
        })
        .await?;
    let sign = |algorithm: &str, message_type: &str, message: Vec<u8>| pb::SignRequest {
        key_id: "alias/signer".into(),
        message,
        message_type: message_type.into(),
        signing_algorithm: algorithm.into(),
        ..Default::default()
    };
    alice
        .sign(sign("RSASSA_PSS_SHA_256", "", b"m".to_vec()))
        .await?;
    alice
        .sign(sign("RSASSA_PSS_SHA_256", "RAW", b"m".to_vec()))
        .await?;
    denied(
        alice
            .sign(sign("RSASSA_PKCS1_V1_5_SHA_256", "", b"m".to_vec()))
            .await,
        "kms:Sign",
    );
    denied(
        alice
            .sign(sign("RSASSA_PSS_SHA_256", "DIGEST", vec![7; 32]))
            .await,
        "kms:Sign",
    );
    let by_arn = pb::SignRequest {
        key_id: signing.clone(),
        ..sign("RSASSA_PKCS1_V1_5_SHA_256", "", b"m".to_vec())
    };
    assert_error(
        alice.sign(by_arn).await,
        Code::NotFound,
        "NotFoundException",
    );

    // A MAC algorithm the policy denies is refused before the key's spec is
    // looked at.
    let mac_key = key_with_policy(
        &mut admin,
        "HMAC_256",
        "GENERATE_VERIFY_MAC",
        r#"{"Effect":"Allow","Principal":{"AWS":"{alice}"},"Action":["kms:DescribeKey","kms:GenerateMac"],"Resource":"*"},
           {"Effect":"Deny","Principal":"*","Action":"kms:GenerateMac","Resource":"*",
            "Condition":{"StringEquals":{"kms:MacAlgorithm":"HMAC_SHA_224"}}}"#,
    )
    .await?;
    let mac = |algorithm: &str| pb::GenerateMacRequest {
        key_id: mac_key.clone(),
        message: b"m".to_vec(),
        mac_algorithm: algorithm.into(),
        ..Default::default()
    };
    alice.generate_mac(mac("HMAC_SHA_256")).await?;
    denied(
        alice.generate_mac(mac("HMAC_SHA_224")).await,
        "kms:GenerateMac",
    );

    // In CreateGrant, the encryption context keys are the pairs of the
    // grant's constraint: a policy can require a grant to be constrained.
    let granting = key_with_policy(
        &mut admin,
        "",
        "",
        r#"{"Effect":"Allow","Principal":{"AWS":"{alice}"},"Action":"kms:DescribeKey","Resource":"*"},
           {"Effect":"Allow","Principal":{"AWS":"{alice}"},"Action":"kms:CreateGrant","Resource":"*",
            "Condition":{"StringEquals":{"kms:EncryptionContext:Stage":"prod"}}},
           {"Effect":"Deny","Principal":"*","Action":"kms:CreateGrant","Resource":"*",
            "Condition":{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"Forbidden"}}}"#,
    )
    .await?;
    let constrained = |pairs: &[(&str, &str)]| pb::CreateGrantRequest {
        key_id: granting.clone(),
        grantee_principal: format!("arn:coffer:iam::{ACCOUNT_A}:role/app"),
        operations: vec!["Decrypt".into()],
        constraints: (!pairs.is_empty()).then(|| pb::GrantConstraints {
            encryption_context_subset: context(pairs),
            ..Default::default()
        }),
        ..Default::default()
    };
    alice
        .create_grant(constrained(&[("Stage", "prod")]))
        .await?;
    for refused in [
        &[][..],
        &[("Stage", "dev")],
        &[("Stage", "prod"), ("Forbidden", "x")],
    ] {
        denied(
            alice.create_grant(constrained(refused)).await,
            "kms:CreateGrant",
        );
    }
    Ok(())
}

/// Tags and aliases are authorized as AWS authorizes them: tags given to
/// CreateKey need `kms:TagResource` too, TagResource and UntagResource see
/// `aws:RequestTag/*` and `aws:TagKeys`, and the alias operations need the
/// caller's identity policies to allow them on the alias itself.
async fn tags_and_aliases_are_authorized_as_resources(backend: Backend) -> anyhow::Result<()> {
    let creator = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":["kms:CreateKey","kms:DescribeKey"],"Resource":"*"}]}"#;
    let tagger = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":["kms:CreateKey","kms:DescribeKey"],"Resource":"*"},
        {"Effect":"Allow","Action":["kms:TagResource","kms:UntagResource"],"Resource":"arn:coffer:kms:*:*:key/*"},
        {"Effect":"Deny","Action":"kms:TagResource","Resource":"*",
         "Condition":{"StringEquals":{"aws:RequestTag/env":"prod"}}},
        {"Effect":"Deny","Action":"kms:UntagResource","Resource":"*",
         "Condition":{"ForAnyValue:StringEquals":{"aws:TagKeys":["owner"]}}},
        {"Effect":"Allow","Action":["kms:CreateAlias","kms:UpdateAlias","kms:DeleteAlias"],
         "Resource":["arn:coffer:kms:*:*:alias/team-*","arn:coffer:kms:*:*:key/*"]}]}"#;
    let yaml = |name: &str, user: &str, policy: &str| {
        format!(
            "    - name: {name}\n      principals: [\"arn:coffer:iam::*:user/{user}\"]\n      policy: '{}'\n",
            policy.replace('\n', " ")
        )
    };
    let options = Options {
        authorization: format!(
            "authorization:\n  reload_interval_ms: 100\n  identity_policies:\n{}{}{}",
            yaml("admins", "admin", ALLOW_ALL),
            yaml("creator", "creator", creator),
            yaml("tagger", "tagger", tagger),
        ),
        ..Options::default()
    };
    let harness = Harness::start_with(backend, options).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let mut creator = harness.keys_for(ACCOUNT_A, "creator").await?;
    let mut tagger = harness.keys_for(ACCOUNT_A, "tagger").await?;
    let tag = |key: &str, value: &str| coffer_proto::common::v1::Tag {
        tag_key: key.into(),
        tag_value: value.into(),
    };
    let create_tagged = |tags: Vec<coffer_proto::common::v1::Tag>| pb::CreateKeyRequest {
        tags,
        ..Default::default()
    };

    // Tags at creation are a TagResource too.
    creator.create_key(create_tagged(Vec::new())).await?;
    denied(
        creator
            .create_key(create_tagged(vec![tag("env", "dev")]))
            .await,
        "kms:TagResource",
    );
    let key = tagger
        .create_key(create_tagged(vec![tag("env", "dev")]))
        .await?
        .into_inner()
        .key_metadata
        .context("no metadata")?
        .arn;
    // Tag keys differing only in case both count for the condition.
    for tags in [
        vec![tag("env", "prod")],
        vec![tag("Env", "prod"), tag("env", "dev")],
    ] {
        denied(
            tagger.create_key(create_tagged(tags)).await,
            "kms:TagResource",
        );
    }

    // TagResource by the tags it adds, UntagResource by the keys it removes.
    let tag_key = |tags: Vec<coffer_proto::common::v1::Tag>| pb::TagResourceRequest {
        key_id: key.clone(),
        tags,
    };
    denied(
        tagger.tag_resource(tag_key(vec![tag("env", "prod")])).await,
        "kms:TagResource",
    );
    tagger
        .tag_resource(tag_key(vec![tag("owner", "team"), tag("env", "test")]))
        .await?;
    let untag = |keys: &[&str]| pb::UntagResourceRequest {
        key_id: key.clone(),
        tag_keys: keys.iter().map(|key| (*key).to_owned()).collect(),
    };
    denied(
        tagger.untag_resource(untag(&["env", "owner"])).await,
        "kms:UntagResource",
    );
    tagger.untag_resource(untag(&["env"])).await?;

    // Aliases by their names: team-* only.
    let other_key = create_key(&mut admin, "", "").await?;
    let create_alias = |name: &str, target: &str| pb::CreateAliasRequest {
        alias_name: name.into(),
        target_key_id: target.into(),
    };
    tagger
        .create_alias(create_alias("alias/team-x", &key))
        .await?;
    denied(
        tagger.create_alias(create_alias("alias/other", &key)).await,
        "kms:CreateAlias",
    );
    admin
        .create_alias(create_alias("alias/other", &key))
        .await?;
    tagger
        .update_alias(pb::UpdateAliasRequest {
            alias_name: "alias/team-x".into(),
            target_key_id: other_key.clone(),
        })
        .await?;
    denied(
        tagger
            .update_alias(pb::UpdateAliasRequest {
                alias_name: "alias/other".into(),
                target_key_id: other_key.clone(),
            })
            .await,
        "kms:UpdateAlias",
    );
    // Refused on the alias whether or not it exists: the answer does not
    // tell which aliases there are.
    for name in ["alias/other", "alias/never"] {
        denied(
            tagger
                .delete_alias(pb::DeleteAliasRequest {
                    alias_name: name.into(),
                })
                .await,
            "kms:DeleteAlias",
        );
    }
    tagger
        .delete_alias(pb::DeleteAliasRequest {
            alias_name: "alias/team-x".into(),
        })
        .await?;
    // What stands is what the refusals left.
    let aliases = admin
        .list_aliases(pb::ListAliasesRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .aliases;
    assert_eq!(
        aliases
            .iter()
            .map(|alias| alias.alias_name.as_str())
            .collect::<Vec<_>>(),
        ["alias/other"]
    );
    let tags = admin
        .list_resource_tags(pb::ListResourceTagsRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .tags;
    assert_eq!(tags, [tag("owner", "team")]);
    Ok(())
}

/// Tags `key` with `name` = `value`.
async fn tag_key(
    client: &mut KeysClient<Channel>,
    key: &str,
    name: &str,
    value: &str,
) -> anyhow::Result<()> {
    client
        .tag_resource(pb::TagResourceRequest {
            key_id: key.to_owned(),
            tags: vec![coffer_proto::common::v1::Tag {
                tag_key: name.into(),
                tag_value: value.into(),
            }],
        })
        .await?;
    Ok(())
}

/// `aws:ResourceTag/<key>` and `kms:ResourceAliases` are the key's tags and
/// aliases as they stand at each call (attribute-based access in identity
/// policies; a key policy may not read them), and the deprecated
/// `kms:CustomerMasterKeySpec` and `kms:MultiRegion` are set on every key
/// operation.
async fn policies_read_a_keys_tags_and_aliases(backend: Backend) -> anyhow::Result<()> {
    let abac = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":"kms:DescribeKey","Resource":"*"},
        {"Effect":"Allow","Action":"kms:Encrypt","Resource":"arn:coffer:kms:*:*:key/*",
         "Condition":{"StringEquals":{"aws:ResourceTag/Team":"blue"}}},
        {"Effect":"Allow","Action":"kms:GenerateDataKey","Resource":"arn:coffer:kms:*:*:key/*",
         "Condition":{"ForAnyValue:StringEquals":{"kms:ResourceAliases":"alias/finance"}}}]}"#;
    let harness = Harness::start_with(backend, admins_and("abac", abac)).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let mut abac = harness.keys_for(ACCOUNT_A, "abac").await?;
    let generate = |key: &str| pb::GenerateDataKeyRequest {
        key_id: key.to_owned(),
        key_spec: "AES_256".into(),
        ..Default::default()
    };

    // Identity policies by the key's tags, read at each call.
    let key = create_key(&mut admin, "", "").await?;
    denied(
        encrypt_with(&mut abac, &key, &[], Vec::new()).await,
        "kms:Encrypt",
    );
    tag_key(&mut admin, &key, "Team", "blue").await?;
    encrypt_with(&mut abac, &key, &[], Vec::new()).await?;
    tag_key(&mut admin, &key, "Team", "red").await?;
    denied(
        encrypt_with(&mut abac, &key, &[], Vec::new()).await,
        "kms:Encrypt",
    );

    // By its aliases, whatever the request names the key by.
    denied(
        abac.generate_data_key(generate(&key)).await,
        "kms:GenerateDataKey",
    );
    admin
        .create_alias(pb::CreateAliasRequest {
            alias_name: "alias/finance".into(),
            target_key_id: key.clone(),
        })
        .await?;
    abac.generate_data_key(generate(&key)).await?;
    abac.generate_data_key(generate("alias/finance")).await?;
    admin
        .delete_alias(pb::DeleteAliasRequest {
            alias_name: "alias/finance".into(),
        })
        .await?;
    denied(
        abac.generate_data_key(generate(&key)).await,
        "kms:GenerateDataKey",
    );

    // KMS reads a key's tags and aliases in identity policies only: a key
    // policy conditioned on them is refused (it could never apply), so
    // tagging a key cannot widen its policy.
    for (statement, key_name) in [
        (
            r#"{"Effect":"Deny","Principal":"*","Action":"kms:Encrypt","Resource":"*",
                "Condition":{"StringEquals":{"aws:ResourceTag/frozen":"true"}}}"#,
            "aws:resourcetag/frozen",
        ),
        (
            r#"{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*",
                "Condition":{"ForAnyValue:StringEquals":{"kms:ResourceAliases":"alias/open"}}}"#,
            "kms:resourcealiases",
        ),
        (
            r#"{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*",
                "Condition":{"StringEquals":{"aws:PrincipalArn":"${aws:ResourceTag/owner}"}}}"#,
            "aws:resourcetag/owner",
        ),
    ] {
        let root = format!("arn:coffer:iam::{ACCOUNT_A}:root");
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[
                {{"Effect":"Allow","Principal":{{"AWS":"{root}"}},"Action":"kms:*","Resource":"*"}},
                {statement}]}}"#
        );
        let status = assert_error(
            admin
                .create_key(pb::CreateKeyRequest {
                    policy,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "MalformedPolicyDocumentException",
        );
        assert!(
            status.message().contains(key_name)
                && status.message().contains("identity policies only"),
            "{status:?}"
        );
    }

    // The deprecated and multi-Region keys are there for a key policy to
    // read.
    let guarded = key_with_policy(
        &mut admin,
        "",
        "",
        r#"{"Effect":"Deny","Principal":"*","Action":"kms:GenerateDataKey","Resource":"*",
            "Condition":{"StringEquals":{"kms:CustomerMasterKeySpec":"SYMMETRIC_DEFAULT"}}},
           {"Effect":"Deny","Principal":"*","Action":"kms:GenerateDataKeyWithoutPlaintext","Resource":"*",
            "Condition":{"Bool":{"kms:MultiRegion":"false"}}}"#,
    )
    .await?;
    encrypt_with(&mut admin, &guarded, &[], Vec::new()).await?;
    denied(
        admin.generate_data_key(generate(&guarded)).await,
        "kms:GenerateDataKey",
    );
    denied(
        admin
            .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
                key_id: guarded.clone(),
                key_spec: "AES_256".into(),
                ..Default::default()
            })
            .await,
        "kms:GenerateDataKeyWithoutPlaintext",
    );
    Ok(())
}

/// The lockout safety check asks what a later PutKeyPolicy will ask: one
/// that does not send BypassPolicyLockoutSafetyCheck, so the condition key
/// is absent, as in AWS's documented `Null` statement. A policy that allows
/// PutKeyPolicy only without the parameter passes the check and lets its
/// principal change the policy again; a call that sends the parameter,
/// either way, is not allowed by it.
async fn the_lockout_check_asks_what_a_later_call_will_ask(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(backend, admins_only()).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let keeper_id = format!("spiffe://{TRUST_DOMAIN}/account/{ACCOUNT_A}/role/keeper");
    let mut keeper = harness.keys_as(&keeper_id).await?;
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Effect":"Allow","Principal":{{"AWS":"arn:coffer:iam::{ACCOUNT_A}:user/admin"}},"Action":"kms:*","Resource":"*"}},
            {{"Effect":"Allow","Principal":{{"AWS":"arn:coffer:iam::{ACCOUNT_A}:role/keeper"}},"Action":["kms:PutKeyPolicy","kms:DescribeKey"],"Resource":"*",
             "Condition":{{"Null":{{"kms:BypassPolicyLockoutSafetyCheck":"true"}}}}}}]}}"#
    );
    let key = admin
        .create_key(pb::CreateKeyRequest {
            policy: policy.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .context("no metadata")?
        .arn;
    let put = |bypass: Option<bool>| pb::PutKeyPolicyRequest {
        key_id: key.clone(),
        policy: policy.clone(),
        bypass_policy_lockout_safety_check: bypass,
        ..Default::default()
    };
    // Without the parameter: the check passes, and so does the next call.
    keeper.put_key_policy(put(None)).await?;
    let answer = keeper.put_key_policy(put(None)).await?;
    let events = harness
        .audit_events_for(&request_id_of(answer.metadata()))
        .await?;
    anyhow::ensure!(events.len() == 1, "{events:#?}");
    assert!(
        events[0]["requestParameters"]
            .get("bypassPolicyLockoutSafetyCheck")
            .is_none(),
        "{:#}",
        events[0]
    );
    assert_eq!(events[0]["requestParameters"]["policyName"], "default");
    // With it, either way, the Null statement does not allow the call.
    for bypass in [false, true] {
        denied(
            keeper.put_key_policy(put(Some(bypass))).await,
            "kms:PutKeyPolicy",
        );
    }
    // A policy that leaves the keeper nothing is refused without the
    // parameter (and taken with it set).
    let lockout = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Effect":"Allow","Principal":{{"AWS":"arn:coffer:iam::{ACCOUNT_A}:user/admin"}},"Action":"kms:*","Resource":"*"}}]}}"#
    );
    let status = assert_error(
        keeper
            .put_key_policy(pb::PutKeyPolicyRequest {
                policy: lockout,
                ..put(None)
            })
            .await,
        Code::InvalidArgument,
        "MalformedPolicyDocumentException",
    );
    assert!(
        status.message().contains("will not allow you to update"),
        "{status:?}"
    );
    Ok(())
}

/// A grant whose grantee is an account (its root) reaches that account's
/// principals whose identity policies allow the operation on the key, as a
/// key policy that trusts an account does: in the key's own account and
/// from another, never a principal its account's policies leave out.
async fn grants_to_an_account_reach_its_principals_through_their_policies(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":["kms:Encrypt","kms:DescribeKey"],"Resource":"*"}]}"#;
    let harness = Harness::start_with(backend, admins_and("app", app)).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    // The key's policy trusts only its admin, not the account.
    let key = admin
        .create_key(pb::CreateKeyRequest {
            policy: format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"arn:coffer:iam::{ACCOUNT_A}:user/admin"}},"Action":"kms:*","Resource":"*"}}]}}"#
            ),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .context("no metadata")?
        .arn;
    let role = |account: &str| format!("spiffe://{TRUST_DOMAIN}/account/{account}/role/bare");
    for account in [ACCOUNT_A, ACCOUNT_B] {
        let mut app = harness.keys_for(account, "app").await?;
        let mut bare = harness.keys_as(&role(account)).await?;
        assert_error(
            encrypt_with(&mut app, &key, &[], Vec::new()).await,
            Code::NotFound,
            "NotFoundException",
        );
        admin
            .create_grant(pb::CreateGrantRequest {
                key_id: key.clone(),
                grantee_principal: format!("arn:coffer:iam::{account}:root"),
                operations: vec!["Encrypt".into(), "DescribeKey".into()],
                ..Default::default()
            })
            .await?;
        encrypt_with(&mut app, &key, &[], Vec::new()).await?;
        // A principal of the account its policies leave out gets nothing.
        assert_error(
            encrypt_with(&mut bare, &key, &[], Vec::new()).await,
            Code::NotFound,
            "NotFoundException",
        );
        // Nor does the grant reach beyond its operations.
        denied(
            app.generate_data_key(pb::GenerateDataKeyRequest {
                key_id: key.clone(),
                key_spec: "AES_256".into(),
                ..Default::default()
            })
            .await,
            "kms:GenerateDataKey",
        );
    }
    Ok(())
}

/// The grant operations take a key ID or key ARN, never an alias (the old
/// way, RetireGrant even made the service-managed key an alias names, for
/// a caller with no permission at all); a grantee is an account, user or
/// role, never a Coffer service, which could not use it; and an account
/// granted RetireGrant passes it on to its principals, as it does the
/// grant's other operations.
async fn grants_name_keys_and_principals_as_kms_does(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(backend, admins_only()).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let key = create_key(&mut admin, "", "").await?;
    admin
        .create_alias(pb::CreateAliasRequest {
            alias_name: "alias/granted".into(),
            target_key_id: key.clone(),
        })
        .await?;
    let grant = |key_id: &str, grantee: &str, retiring: &str| pb::CreateGrantRequest {
        key_id: key_id.into(),
        grantee_principal: grantee.into(),
        retiring_principal: retiring.into(),
        operations: vec!["Decrypt".into(), "RetireGrant".into()],
        ..Default::default()
    };
    let bob = format!("arn:coffer:iam::{ACCOUNT_A}:user/bob");
    for alias in [
        "alias/granted",
        &format!("arn:coffer:kms:eu-west-1:{ACCOUNT_A}:alias/granted"),
    ] {
        let status = assert_error(
            admin.create_grant(grant(alias, &bob, "")).await,
            Code::NotFound,
            "NotFoundException",
        );
        assert!(status.message().contains("not an alias"), "{status:?}");
        assert_error(
            admin
                .list_grants(pb::ListGrantsRequest {
                    key_id: alias.into(),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
            "NotFoundException",
        );
    }
    let service = "arn:coffer:coffer:::service/secrets";
    for (grantee, retiring, field) in [
        (service, "", "grantee_principal"),
        (bob.as_str(), service, "retiring_principal"),
    ] {
        let status = assert_error(
            admin.create_grant(grant(&key, grantee, retiring)).await,
            Code::InvalidArgument,
            "ValidationException",
        );
        assert!(status.message().contains(field), "{status:?}");
    }
    let status = assert_error(
        admin
            .create_grant(pb::CreateGrantRequest {
                constraints: Some(pb::GrantConstraints {
                    encryption_context_subset: HashMap::from([(String::new(), "v".into())]),
                    ..Default::default()
                }),
                ..grant(&key, &bob, "")
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(
        status.message().contains("keys must not be empty"),
        "{status:?}"
    );

    // Naming an alias makes no service-managed key, whoever asks.
    let mut mallory = harness.keys_for(ACCOUNT_A, "mallory").await?;
    let status = assert_error(
        mallory
            .retire_grant(pb::RetireGrantRequest {
                key_id: "alias/coffer/ssm".into(),
                grant_id: "a".repeat(64),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "NotFoundException",
    );
    assert!(!status.message().contains("ssm"), "{status:?}");
    let keys = admin
        .list_keys(pb::ListKeysRequest::default())
        .await?
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1, "{keys:?}");

    // Granted to account B with RetireGrant: B's principals retire it as
    // their policies allow.
    let to_b = admin
        .create_grant(grant(
            &key,
            &format!("arn:coffer:iam::{ACCOUNT_B}:root"),
            "",
        ))
        .await?
        .into_inner()
        .grant_id;
    let mut outsider = harness.keys_for(ACCOUNT_B, "mallory").await?;
    let retire = |grant_id: &str| pb::RetireGrantRequest {
        key_id: key.clone(),
        grant_id: grant_id.into(),
        ..Default::default()
    };
    assert!(outsider.retire_grant(retire(&to_b)).await.is_err());
    let mut b_admin = harness.keys_for(ACCOUNT_B, "admin").await?;
    b_admin.retire_grant(retire(&to_b)).await?;
    let left = admin
        .list_grants(pb::ListGrantsRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .grants;
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

/// ListRetirableGrants is authorized on the retiring principal the request
/// names, as in KMS: an identity policy can allow it for some principals
/// and deny it for others.
async fn list_retirable_grants_is_authorized_on_the_retiring_principal(
    backend: Backend,
) -> anyhow::Result<()> {
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Effect":"Allow","Action":"kms:ListRetirableGrants","Resource":"arn:coffer:iam::{ACCOUNT_A}:user/*"}},
            {{"Effect":"Deny","Action":"kms:ListRetirableGrants","Resource":"arn:coffer:iam::{ACCOUNT_A}:user/vault"}}]}}"#
    );
    let harness = Harness::start_with(backend, admins_and("auditor", &policy)).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let key = create_key(&mut admin, "", "").await?;
    for retirer in ["retirer", "vault"] {
        admin
            .create_grant(pb::CreateGrantRequest {
                key_id: key.clone(),
                grantee_principal: format!("arn:coffer:iam::{ACCOUNT_A}:user/app"),
                retiring_principal: format!("arn:coffer:iam::{ACCOUNT_A}:user/{retirer}"),
                operations: vec!["Encrypt".into()],
                ..Default::default()
            })
            .await?;
    }
    let mut auditor = harness.keys_for(ACCOUNT_A, "auditor").await?;
    let retirable = |name: &str| pb::ListRetirableGrantsRequest {
        retiring_principal: format!("arn:coffer:iam::{ACCOUNT_A}:user/{name}"),
        ..Default::default()
    };
    let listed = auditor
        .list_retirable_grants(retirable("retirer"))
        .await?
        .into_inner()
        .grants;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0].retiring_principal,
        format!("arn:coffer:iam::{ACCOUNT_A}:user/retirer")
    );
    let status = assert_error(
        auditor.list_retirable_grants(retirable("vault")).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    assert!(
        status
            .message()
            .contains(&format!("arn:coffer:iam::{ACCOUNT_A}:user/vault")),
        "{status:?}"
    );
    assert_audited_denial(&harness, &status, "the denied principal").await?;
    Ok(())
}
