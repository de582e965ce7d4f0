//! Action and resource matching: wildcards, case rules, literal requests,
//! NotAction and NotResource.

use coffer_policy::{DecisionEffect, PrincipalInfo, RequestContext, evaluate};
use serde_json::json;

use crate::support::{ACCOUNT, KEY_ARN, OTHER_KEY_ARN, alice, single_statement};

fn allows(statement: serde_json::Value, action: &str, resource: &str) -> bool {
    let policy = single_statement(statement);
    let context = RequestContext::new(alice(), action, resource);
    evaluate(&[&policy], &context).is_allowed()
}

fn allow_action(action_pattern: &str, action: &str) -> bool {
    allows(
        json!({"Effect": "Allow", "Action": action_pattern, "Resource": "*"}),
        action,
        KEY_ARN,
    )
}

fn allow_resource(resource_pattern: &str, resource: &str) -> bool {
    allows(
        json!({"Effect": "Allow", "Action": "kms:Encrypt", "Resource": resource_pattern}),
        "kms:Encrypt",
        resource,
    )
}

#[test]
fn action_names_are_case_insensitive() {
    assert!(allow_action("kms:Encrypt", "kms:Encrypt"));
    assert!(allow_action("kms:Encrypt", "kms:encrypt"));
    assert!(allow_action("kms:encrypt", "KMS:ENCRYPT"));
    assert!(allow_action("KMS:*", "kms:Decrypt"));
    assert!(allow_action(
        "kms:Gen*",
        "kms:generatedatakeywithoutplaintext"
    ));
    assert!(allow_action("kms:gen*", "kms:GenerateDataKey"));
    assert!(allow_action("kms:?ncrypt", "kms:Encrypt"));
    assert!(allow_action("kms:*Key*", "kms:GenerateDataKeyPair"));
    assert!(allow_action("*", "secretsmanager:GetSecretValue"));
}

#[test]
fn action_patterns_do_not_overreach() {
    assert!(!allow_action("kms:Encrypt", "kms:EncryptMore"));
    assert!(!allow_action("kms:Encrypt", "kms:Encryp"));
    assert!(!allow_action("kms:*", "secretsmanager:GetSecretValue"));
    assert!(!allow_action("kms:Gen*", "kms:Encrypt"));
    assert!(!allow_action("kms:?ncrypt", "kms:ncrypt"));
    assert!(!allow_action("kms:Encrypt", "kmsx:Encrypt"));
}

#[test]
fn request_actions_are_literal() {
    for request in [
        "kms:*",
        "kms:Encrypt*",
        "kms:Encryp?",
        "kms:Encrypt\0",
        "*",
        "kms:Encrypt/../Decrypt",
        "kms%3AEncrypt",
    ] {
        assert!(
            !allow_action("kms:Encrypt", request),
            "{request:?} must not match kms:Encrypt"
        );
    }
}

#[test]
fn resources_are_case_sensitive_globs_over_the_whole_arn() {
    assert!(allow_resource(KEY_ARN, KEY_ARN));
    assert!(!allow_resource(KEY_ARN, &KEY_ARN.to_uppercase()));
    assert!(!allow_resource(
        "arn:coffer:kms:eu-west-1:111122223333:key/1234ABCD",
        KEY_ARN
    ));
    assert!(allow_resource("*", KEY_ARN));
    assert!(allow_resource("*", "*"));
    assert!(allow_resource(
        "arn:coffer:kms:*:111122223333:key/*",
        KEY_ARN
    ));
    assert!(allow_resource(
        "arn:coffer:kms:eu-west-?:111122223333:key/*",
        KEY_ARN
    ));
    // `*` crosses `/` and `:`.
    assert!(allow_resource(
        "arn:coffer:secretsmanager:*:*:*",
        "arn:coffer:secretsmanager:eu-west-1:111122223333:secret:a/b:c"
    ));
    assert!(!allow_resource(
        "arn:coffer:kms:*:444455556666:key/*",
        KEY_ARN
    ));
    assert!(!allow_resource(
        "arn:coffer:kms:eu-west-1:111122223333:key/*",
        "*"
    ));
    // Another partition's ARN does not match this instance's resources.
    assert!(!allow_resource(
        "arn:aws:kms:eu-west-1:111122223333:key/1234abcd",
        KEY_ARN
    ));
}

#[test]
fn request_resources_cannot_widen_a_match() {
    let policy = "arn:coffer:secretsmanager:eu-west-1:111122223333:secret:team-b/app";
    let prefix = "arn:coffer:secretsmanager:eu-west-1:111122223333:secret:team-b/*";
    let base = "arn:coffer:secretsmanager:eu-west-1:111122223333:secret:";
    for request_name in [
        "team-b/*",
        "team-b/???",
        "team-b/ap?",
        "team-*/app",
        "*",
        "team-b/app\0",
        "team-b/app\0x",
        "team-a/../team-b/app",
        "team-a%2F..%2Fteam-b%2Fapp",
        "team-b%2Fapp",
        "./team-b/app",
        "team-b//app",
    ] {
        let request = format!("{base}{request_name}");
        assert!(
            !allow_resource(policy, &request),
            "{request_name:?} must not match the exact resource"
        );
    }
    for request_name in [
        "team-a/../team-b/app",
        "team-a%2F..%2Fteam-b%2Fapp",
        "x/team-b/y",
    ] {
        let request = format!("{base}{request_name}");
        assert!(
            !allow_resource(prefix, &request),
            "{request_name:?} is not under team-b/ and must not match"
        );
    }
    // Literally under the prefix, whatever the characters: the star is the
    // policy's, so these do match, as their names begin with "team-b/".
    for request_name in ["team-b/../team-a/secret", "team-b/%2F..", "team-b/*"] {
        let request = format!("{base}{request_name}");
        assert!(allow_resource(prefix, &request), "{request_name:?}");
    }
}

#[test]
fn policy_variables_in_resources() {
    let statement = json!({
        "Effect": "Allow",
        "Action": "secretsmanager:GetSecretValue",
        "Resource": "arn:coffer:secretsmanager:*:${aws:PrincipalAccount}:secret:home/${aws:username}/*"
    });
    let own = "arn:coffer:secretsmanager:eu-west-1:111122223333:secret:home/alice/db";
    let other = "arn:coffer:secretsmanager:eu-west-1:111122223333:secret:home/bob/db";
    assert!(allows(
        statement.clone(),
        "secretsmanager:GetSecretValue",
        own
    ));
    assert!(!allows(
        statement.clone(),
        "secretsmanager:GetSecretValue",
        other
    ));
    // A role has no aws:username: the variable does not resolve and the
    // resource matches nothing.
    let policy = single_statement(statement);
    let role = PrincipalInfo::role("coffer", ACCOUNT, "alice");
    let context = RequestContext::new(role, "secretsmanager:GetSecretValue", own);
    assert!(!evaluate(&[&policy], &context).is_allowed());
}

#[test]
fn allow_with_not_action_allows_everything_else() {
    let statement = json!({"Effect": "Allow", "NotAction": ["kms:Delete*", "kms:ScheduleKeyDeletion"], "Resource": "*"});
    assert!(allows(statement.clone(), "kms:Encrypt", KEY_ARN));
    assert!(allows(
        statement.clone(),
        "secretsmanager:GetSecretValue",
        KEY_ARN
    ));
    assert!(!allows(statement.clone(), "kms:DeleteAlias", KEY_ARN));
    assert!(!allows(
        statement.clone(),
        "KMS:deleteimportedkeymaterial",
        KEY_ARN
    ));
    assert!(!allows(statement, "kms:ScheduleKeyDeletion", KEY_ARN));
}

#[test]
fn allow_with_not_resource_allows_every_other_resource() {
    let statement = json!({"Effect": "Allow", "Action": "kms:Encrypt", "NotResource": KEY_ARN});
    assert!(!allows(statement.clone(), "kms:Encrypt", KEY_ARN));
    assert!(allows(statement, "kms:Encrypt", OTHER_KEY_ARN));
}

#[test]
fn deny_with_not_resource_denies_every_other_resource() {
    let policy = crate::support::identity(&json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Everything", "Effect": "Allow", "Action": "kms:*", "Resource": "*"},
            {"Sid": "OnlyThisKey", "Effect": "Deny", "Action": "kms:*", "NotResource": KEY_ARN}
        ]
    }));
    let allowed = evaluate(
        &[&policy],
        &RequestContext::new(alice(), "kms:Encrypt", KEY_ARN),
    );
    assert_eq!(allowed.effect, DecisionEffect::Allowed);
    assert_eq!(
        allowed.statement.unwrap().sid.as_deref(),
        Some("Everything")
    );
    let denied = evaluate(
        &[&policy],
        &RequestContext::new(alice(), "kms:Encrypt", OTHER_KEY_ARN),
    );
    assert_eq!(denied.effect, DecisionEffect::ExplicitDeny);
    assert_eq!(
        denied.statement.unwrap().sid.as_deref(),
        Some("OnlyThisKey")
    );
}

#[test]
fn deny_with_not_action_denies_every_other_action() {
    let policy = crate::support::identity(&json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"},
            {"Effect": "Deny", "NotAction": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"}
        ]
    }));
    let encrypt = evaluate(
        &[&policy],
        &RequestContext::new(alice(), "kms:encrypt", KEY_ARN),
    );
    assert_eq!(encrypt.effect, DecisionEffect::Allowed);
    let delete = evaluate(
        &[&policy],
        &RequestContext::new(alice(), "kms:ScheduleKeyDeletion", KEY_ARN),
    );
    assert_eq!(delete.effect, DecisionEffect::ExplicitDeny);
    assert_eq!(delete.statement.unwrap().statement_index, 1);
}

#[test]
fn public_wildcard_match_follows_the_same_rules() {
    assert!(coffer_policy::wildcard_match(
        "user/team-*",
        "user/team-a/b"
    ));
    assert!(coffer_policy::wildcard_match("user/?", "user/é"));
    assert!(!coffer_policy::wildcard_match("user/alice", "user/*"));
    assert!(!coffer_policy::wildcard_match("user/Alice", "user/alice"));
}
