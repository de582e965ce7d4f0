//! AWS's DryRun: a dry run fails exactly as the call would, or answers
//! DryRunOperationException where the call would have succeeded; it returns
//! nothing and changes nothing, and its event says so.

use crate::authz::create_key;
use coffer_tests::{
    ACCOUNT_A, Backend, Harness, Options, assert_error, backend_tests, keys_pb as pb, request_id_of,
};
use pb::keys_client::KeysClient;
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

backend_tests!(
    dry_runs_answer_as_the_call_would_and_do_nothing,
    dry_runs_of_grants_write_nothing,
);

const DRY_RUN_MESSAGE: &str = "The request would have succeeded, but the DryRun option is set.";

/// `user/admin` may do anything; `user/encrypter` only kms:Encrypt.
fn admin_and_encrypter() -> Options {
    let allow = |action: &str| {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"{action}","Resource":"*"}}]}}"#
        )
    };
    Options {
        authorization: format!(
            "authorization:\n  identity_policies:\n    - name: admins\n      principals: [\"arn:coffer:iam::*:user/admin\"]\n      policy: '{}'\n    - name: encrypter\n      principals: [\"arn:coffer:iam::*:user/encrypter\"]\n      policy: '{}'\n",
            allow("*"),
            allow("kms:Encrypt"),
        ),
        ..Options::default()
    }
}

/// Asserts a dry run was answered DryRunOperationException, with KMS's
/// message, and audited as such naming `key_arns` and `dryRun`.
async fn assert_dry_run<T: std::fmt::Debug>(
    harness: &Harness,
    outcome: Result<T, tonic::Status>,
    event_name: &str,
    key_arns: &[&str],
) -> anyhow::Result<Value> {
    let status = assert_error(
        outcome,
        Code::FailedPrecondition,
        "DryRunOperationException",
    );
    assert_eq!(status.message(), DRY_RUN_MESSAGE, "{event_name}");
    let mut events = harness
        .audit_events_for(&request_id_of(status.metadata()))
        .await?;
    anyhow::ensure!(events.len() == 1, "{event_name}: {} events", events.len());
    let event = events.remove(0);
    assert_eq!(event["eventName"], event_name, "{event:#}");
    assert_eq!(event["errorCode"], "DryRunOperationException", "{event:#}");
    assert_eq!(event["errorMessage"], DRY_RUN_MESSAGE, "{event:#}");
    assert_eq!(event["requestParameters"]["dryRun"], true, "{event:#}");
    assert!(
        event.get("responseElements").is_none_or(Value::is_null),
        "{event:#}"
    );
    let named: Vec<&str> = event["resources"]
        .as_array()
        .map(|resources| {
            resources
                .iter()
                .filter_map(|resource| resource["ARN"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(named, key_arns, "{event:#}");
    Ok(event)
}

async fn dry_runs_answer_as_the_call_would_and_do_nothing(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(backend, admin_and_encrypter()).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let mut encrypter = harness.keys_for(ACCOUNT_A, "encrypter").await?;
    let key = create_key(&mut admin, "", "").await?;
    let other = create_key(&mut admin, "", "").await?;
    let signing = create_key(&mut admin, "ECC_NIST_P256", "SIGN_VERIFY").await?;
    let mac = create_key(&mut admin, "HMAC_256", "GENERATE_VERIFY_MAC").await?;
    let context: std::collections::HashMap<String, String> =
        [("purpose".to_owned(), "dry".to_owned())].into();

    // Encrypt: a dry run that would succeed, and ones that would not, each
    // with the error the call gets.
    let encrypt = |key_id: &str, plaintext: Vec<u8>| pb::EncryptRequest {
        key_id: key_id.into(),
        plaintext,
        encryption_context: context.clone(),
        dry_run: true,
        ..Default::default()
    };
    let event = assert_dry_run(
        &harness,
        admin.encrypt(encrypt(&key, b"secret".to_vec())).await,
        "Encrypt",
        &[&key],
    )
    .await?;
    assert_eq!(event["requestParameters"]["keyId"], key.as_str());
    assert_dry_run(
        &harness,
        encrypter.encrypt(encrypt(&key, b"secret".to_vec())).await,
        "Encrypt",
        &[&key],
    )
    .await?;
    // Refused as without DryRun: a caller that may not describe the key is
    // told it does not exist (README), and the event records the denial.
    for dry_run in [true, false] {
        let status = assert_error(
            encrypter
                .generate_data_key(pb::GenerateDataKeyRequest {
                    key_id: key.clone(),
                    key_spec: "AES_256".into(),
                    dry_run,
                    ..Default::default()
                })
                .await,
            Code::NotFound,
            "NotFoundException",
        );
        let events = harness
            .audit_events_for(&request_id_of(status.metadata()))
            .await?;
        anyhow::ensure!(events.len() == 1, "{events:#?}");
        assert_eq!(
            events[0]["errorCode"], "AccessDeniedException",
            "{events:#?}"
        );
    }
    assert_error(
        admin.encrypt(encrypt(&key, vec![0; 4097])).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert_error(
        admin.encrypt(encrypt(&signing, b"x".to_vec())).await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );

    // Decrypt and ReEncrypt check the ciphertext as the call does.
    let blob = admin
        .encrypt(pb::EncryptRequest {
            dry_run: false,
            ..encrypt(&key, b"secret".to_vec())
        })
        .await?
        .into_inner()
        .ciphertext_blob;
    let decrypt = |encryption_context| pb::DecryptRequest {
        ciphertext_blob: blob.clone(),
        encryption_context,
        dry_run: true,
        ..Default::default()
    };
    // The event names the key material, as the call's would.
    let material = admin
        .describe_key(pb::DescribeKeyRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .map(|metadata| metadata.current_key_material_id)
        .unwrap_or_default();
    let event = assert_dry_run(
        &harness,
        admin.decrypt(decrypt(context.clone())).await,
        "Decrypt",
        &[&key],
    )
    .await?;
    assert_eq!(
        event["additionalEventData"]["keyMaterialId"],
        material.as_str()
    );
    assert_error(
        admin.decrypt(decrypt(Default::default())).await,
        Code::InvalidArgument,
        "InvalidCiphertextException",
    );
    assert_dry_run(
        &harness,
        admin
            .re_encrypt(pb::ReEncryptRequest {
                ciphertext_blob: blob.clone(),
                source_encryption_context: context.clone(),
                destination_key_id: other.clone(),
                dry_run: true,
                ..Default::default()
            })
            .await,
        "ReEncrypt",
        &[&key, &other],
    )
    .await?;

    // Data keys and key pairs.
    assert_dry_run(
        &harness,
        admin
            .generate_data_key(pb::GenerateDataKeyRequest {
                key_id: key.clone(),
                key_spec: "AES_256".into(),
                dry_run: true,
                ..Default::default()
            })
            .await,
        "GenerateDataKey",
        &[&key],
    )
    .await?;
    assert_dry_run(
        &harness,
        admin
            .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
                key_id: key.clone(),
                number_of_bytes: Some(32),
                dry_run: true,
                ..Default::default()
            })
            .await,
        "GenerateDataKeyWithoutPlaintext",
        &[&key],
    )
    .await?;
    let event = assert_dry_run(
        &harness,
        admin
            .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
                key_id: key.clone(),
                key_pair_spec: "RSA_4096".into(),
                dry_run: true,
                ..Default::default()
            })
            .await,
        "GenerateDataKeyPair",
        &[&key],
    )
    .await?;
    assert_eq!(
        event["additionalEventData"]["keyMaterialId"],
        material.as_str()
    );
    assert_dry_run(
        &harness,
        admin
            .generate_data_key_pair_without_plaintext(
                pb::GenerateDataKeyPairWithoutPlaintextRequest {
                    key_id: key.clone(),
                    key_pair_spec: "ECC_NIST_P256".into(),
                    dry_run: true,
                    ..Default::default()
                },
            )
            .await,
        "GenerateDataKeyPairWithoutPlaintext",
        &[&key],
    )
    .await?;
    assert_error(
        admin
            .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
                key_id: signing.clone(),
                key_pair_spec: "RSA_2048".into(),
                dry_run: true,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );

    // Sign and Verify; a dry Verify of a wrong signature is refused as the
    // call would refuse it.
    let signature = admin
        .sign(pb::SignRequest {
            key_id: signing.clone(),
            message: b"message".to_vec(),
            signing_algorithm: "ECDSA_SHA_256".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .signature;
    assert_dry_run(
        &harness,
        admin
            .sign(pb::SignRequest {
                key_id: signing.clone(),
                message: b"message".to_vec(),
                signing_algorithm: "ECDSA_SHA_256".into(),
                dry_run: true,
                ..Default::default()
            })
            .await,
        "Sign",
        &[&signing],
    )
    .await?;
    assert_error(
        admin
            .sign(pb::SignRequest {
                key_id: signing.clone(),
                message: b"message".to_vec(),
                signing_algorithm: "RSASSA_PSS_SHA_256".into(),
                dry_run: true,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    let verify = |signature: Vec<u8>| pb::VerifyRequest {
        key_id: signing.clone(),
        message: b"message".to_vec(),
        signature,
        signing_algorithm: "ECDSA_SHA_256".into(),
        dry_run: true,
        ..Default::default()
    };
    assert_dry_run(
        &harness,
        admin.verify(verify(signature.clone())).await,
        "Verify",
        &[&signing],
    )
    .await?;
    let mut forged = signature;
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_error(
        admin.verify(verify(forged)).await,
        Code::InvalidArgument,
        "KMSInvalidSignatureException",
    );

    // GenerateMac and VerifyMac.
    let tag = admin
        .generate_mac(pb::GenerateMacRequest {
            key_id: mac.clone(),
            message: b"message".to_vec(),
            mac_algorithm: "HMAC_SHA_256".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .mac;
    assert_dry_run(
        &harness,
        admin
            .generate_mac(pb::GenerateMacRequest {
                key_id: mac.clone(),
                message: b"message".to_vec(),
                mac_algorithm: "HMAC_SHA_256".into(),
                dry_run: true,
                ..Default::default()
            })
            .await,
        "GenerateMac",
        &[&mac],
    )
    .await?;
    let verify_mac = |tag: Vec<u8>| pb::VerifyMacRequest {
        key_id: mac.clone(),
        message: b"message".to_vec(),
        mac: tag,
        mac_algorithm: "HMAC_SHA_256".into(),
        dry_run: true,
        ..Default::default()
    };
    assert_dry_run(
        &harness,
        admin.verify_mac(verify_mac(tag.clone())).await,
        "VerifyMac",
        &[&mac],
    )
    .await?;
    assert_error(
        admin.verify_mac(verify_mac(vec![0; tag.len()])).await,
        Code::InvalidArgument,
        "KMSInvalidMacException",
    );

    // A disabled key refuses a dry run as it refuses the call.
    admin
        .disable_key(pb::DisableKeyRequest {
            key_id: key.clone(),
        })
        .await?;
    assert_error(
        admin.encrypt(encrypt(&key, b"secret".to_vec())).await,
        Code::FailedPrecondition,
        "DisabledException",
    );
    assert_error(
        admin
            .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
                key_id: key.clone(),
                key_pair_spec: "RSA_2048".into(),
                dry_run: true,
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "DisabledException",
    );

    // A call without DryRun records none.
    let events = harness.audit_events().await?;
    let plain_encrypt = events
        .iter()
        .find(|event| event["eventName"] == "Encrypt" && event.get("errorCode").is_none())
        .ok_or_else(|| anyhow::anyhow!("no successful Encrypt event"))?;
    assert!(
        plain_encrypt["requestParameters"].get("dryRun").is_none(),
        "{plain_encrypt:#}"
    );
    Ok(())
}

async fn grant_ids(client: &mut KeysClient<Channel>, key: &str) -> anyhow::Result<Vec<String>> {
    Ok(client
        .list_grants(pb::ListGrantsRequest {
            key_id: key.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .grants
        .into_iter()
        .map(|grant| grant.grant_id)
        .collect())
}

async fn dry_runs_of_grants_write_nothing(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(backend, admin_and_encrypter()).await?;
    let mut admin = harness.keys_for(ACCOUNT_A, "admin").await?;
    let mut encrypter = harness.keys_for(ACCOUNT_A, "encrypter").await?;
    let key = create_key(&mut admin, "", "").await?;
    let grantee = format!("arn:coffer:iam::{ACCOUNT_A}:user/grantee");
    let create = |dry_run: bool| pb::CreateGrantRequest {
        key_id: key.clone(),
        grantee_principal: grantee.clone(),
        retiring_principal: grantee.clone(),
        operations: vec!["Decrypt".into()],
        name: "named".into(),
        dry_run,
        ..Default::default()
    };

    // CreateGrant: refused as the call would be, or a dry run that writes
    // no grant.
    assert_error(
        encrypter.create_grant(create(true)).await,
        Code::NotFound,
        "NotFoundException",
    );
    assert_error(
        admin
            .create_grant(pb::CreateGrantRequest {
                operations: vec!["Sign".into()],
                ..create(true)
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    let event = assert_dry_run(
        &harness,
        admin.create_grant(create(true)).await,
        "CreateGrant",
        &[&key],
    )
    .await?;
    assert_eq!(event["requestParameters"]["name"], "named");
    assert!(grant_ids(&mut admin, &key).await?.is_empty());

    // A real grant, which dry runs of RevokeGrant and RetireGrant leave.
    let created = admin.create_grant(create(false)).await?.into_inner();
    assert_eq!(
        grant_ids(&mut admin, &key).await?,
        [created.grant_id.as_str()]
    );
    assert_dry_run(
        &harness,
        admin
            .revoke_grant(pb::RevokeGrantRequest {
                key_id: key.clone(),
                grant_id: created.grant_id.clone(),
                dry_run: true,
            })
            .await,
        "RevokeGrant",
        &[&key],
    )
    .await?;
    let mut grantee_client = harness.keys_for(ACCOUNT_A, "grantee").await?;
    let event = assert_dry_run(
        &harness,
        grantee_client
            .retire_grant(pb::RetireGrantRequest {
                grant_token: created.grant_token.clone(),
                dry_run: true,
                ..Default::default()
            })
            .await,
        "RetireGrant",
        &[&key],
    )
    .await?;
    assert_eq!(
        event["additionalEventData"]["grantId"],
        created.grant_id.as_str()
    );
    assert_eq!(
        grant_ids(&mut admin, &key).await?,
        [created.grant_id.as_str()]
    );
    // A grant that is not there is not found, dry run or not.
    assert_error(
        admin
            .revoke_grant(pb::RevokeGrantRequest {
                key_id: key.clone(),
                grant_id: "0".repeat(64),
                dry_run: true,
            })
            .await,
        Code::NotFound,
        "NotFoundException",
    );

    // The grant still works, and then retires for real.
    grantee_client
        .retire_grant(pb::RetireGrantRequest {
            grant_token: created.grant_token,
            ..Default::default()
        })
        .await?;
    assert!(grant_ids(&mut admin, &key).await?.is_empty());
    Ok(())
}
