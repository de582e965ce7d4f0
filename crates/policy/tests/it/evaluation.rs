//! Decisions: explicit deny wins, then allow, then implicit deny; which
//! statement decided; the combined key-policy + identity-policy rule.

use coffer_policy::{
    AccessDecision, Decision, DecisionEffect, Policy, PrincipalInfo, PrincipalMatch,
    RequestContext, StatementRef, authorize, evaluate,
};
use serde_json::json;

use crate::support::{ACCOUNT, KEY_ARN, OTHER_ACCOUNT, alice, identity, resource};

fn encrypt(caller: PrincipalInfo) -> RequestContext {
    RequestContext::new(caller, "kms:Encrypt", KEY_ARN)
}

#[test]
fn explicit_deny_wins_over_allow_in_any_order_and_policy() {
    let allow = identity(
        &json!({"Statement": {"Sid": "Allow", "Effect": "Allow", "Action": "kms:*", "Resource": "*"}}),
    );
    let deny = identity(&json!({"Statement": [
        {"Sid": "Other", "Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"},
        {"Sid": "NoEncrypt", "Effect": "Deny", "Action": "kms:Encrypt", "Resource": KEY_ARN}
    ]}));
    for policies in [[&allow, &deny], [&deny, &allow]] {
        let decision = evaluate(&policies, &encrypt(alice()));
        assert_eq!(decision.effect, DecisionEffect::ExplicitDeny);
        let statement = decision.statement.unwrap();
        assert_eq!(statement.sid.as_deref(), Some("NoEncrypt"));
        assert_eq!(statement.statement_index, 1);
        assert_eq!(
            statement.policy_index,
            if std::ptr::eq(policies[0], &deny) {
                0
            } else {
                1
            }
        );
    }
}

#[test]
fn the_first_allowing_statement_is_reported() {
    let first = identity(&json!({"Statement": [
        {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}
    ]}));
    let second = identity(&json!({"Statement": [
        {"Effect": "Allow", "Action": "kms:Describe*", "Resource": "*"},
        {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"},
        {"Sid": "Later", "Effect": "Allow", "Action": "kms:*", "Resource": "*"}
    ]}));
    assert_eq!(
        evaluate(&[&first, &second], &encrypt(alice())),
        Decision {
            effect: DecisionEffect::Allowed,
            statement: Some(StatementRef {
                policy_index: 1,
                statement_index: 1,
                sid: None
            }),
        }
    );
}

#[test]
fn nothing_applicable_is_an_implicit_deny() {
    let policy = identity(&json!({"Statement": [
        {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"},
        {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "arn:coffer:kms:*:444455556666:key/*"},
        {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*", "Condition": {"Bool": {"x:never": "true"}}}
    ]}));
    let decision = evaluate(&[&policy], &encrypt(alice()));
    assert_eq!(
        decision,
        Decision {
            effect: DecisionEffect::ImplicitDeny,
            statement: None
        }
    );
    assert_eq!(
        evaluate(&[], &encrypt(alice())).effect,
        DecisionEffect::ImplicitDeny
    );
}

#[test]
fn a_deny_whose_condition_fails_does_not_apply() {
    let policy = identity(&json!({"Statement": [
        {"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "kms:*", "Resource": "*", "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
    ]}));
    let secure = encrypt(alice()).with_value("aws:SecureTransport", "true");
    assert!(evaluate(&[&policy], &secure).is_allowed());
    let insecure = encrypt(alice()).with_value("aws:SecureTransport", "false");
    assert_eq!(
        evaluate(&[&policy], &insecure).effect,
        DecisionEffect::ExplicitDeny
    );
}

#[test]
fn the_via_service_guard_denies_direct_calls() {
    // The usual KMS guard: deny unless the call comes through a service.
    // A direct call carries no kms:ViaService, and the negated operator on a
    // missing key is true, so the deny applies.
    let policy = identity(&json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"},
        {"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringNotEquals": {"kms:ViaService": "secrets.eu-west-1.coffer.internal"}}}
    ]}));
    let direct = RequestContext::new(alice(), "kms:Decrypt", KEY_ARN);
    assert_eq!(
        evaluate(&[&policy], &direct).effect,
        DecisionEffect::ExplicitDeny
    );
    let via_secrets = direct
        .clone()
        .with_value("kms:ViaService", "secrets.eu-west-1.coffer.internal");
    assert!(evaluate(&[&policy], &via_secrets).is_allowed());
    let via_other = direct.with_value("kms:ViaService", "parameters.eu-west-1.coffer.internal");
    assert_eq!(
        evaluate(&[&policy], &via_other).effect,
        DecisionEffect::ExplicitDeny
    );
}

fn default_key_policy() -> Policy {
    resource(&json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:coffer:iam::111122223333:root"},
            "Action": "kms:*",
            "Resource": "*"
        }]
    }))
}

fn alice_may_encrypt() -> Policy {
    identity(
        &json!({"Statement": {"Sid": "AliceEncrypt", "Effect": "Allow", "Action": "kms:Encrypt", "Resource": KEY_ARN}}),
    )
}

#[test]
fn account_root_delegation_needs_an_identity_allow() {
    let key_policy = default_key_policy();
    let identity_policy = alice_may_encrypt();
    let allowed = authorize(Some(&key_policy), &[&identity_policy], &encrypt(alice()));
    assert!(allowed.is_allowed());
    assert_eq!(
        allowed.principal_match,
        Some(PrincipalMatch::ViaAccountRoot)
    );
    assert_eq!(
        allowed.resource_statement.unwrap().sid.as_deref(),
        Some("Enable IAM User Permissions")
    );
    assert_eq!(
        allowed.identity_statement.unwrap().sid.as_deref(),
        Some("AliceEncrypt")
    );
    let without_identity = authorize(Some(&key_policy), &[], &encrypt(alice()));
    assert_eq!(without_identity.effect, DecisionEffect::ImplicitDeny);
    // The identity policy alone does not reach a key whose policy does not
    // trust the account.
    let closed_key = resource(&json!({"Statement": {
        "Effect": "Allow", "Principal": {"AWS": "arn:coffer:iam::111122223333:user/bob"},
        "Action": "kms:*", "Resource": "*"
    }}));
    assert_eq!(
        authorize(Some(&closed_key), &[&identity_policy], &encrypt(alice())).effect,
        DecisionEffect::ImplicitDeny
    );
    // The root itself is allowed directly.
    let root = authorize(
        Some(&key_policy),
        &[],
        &encrypt(PrincipalInfo::account_root("coffer", ACCOUNT)),
    );
    assert!(root.is_allowed());
    assert_eq!(root.principal_match, Some(PrincipalMatch::Direct));
}

#[test]
fn a_direct_key_policy_allow_suffices_within_the_account() {
    let key_policy = resource(&json!({"Statement": {
        "Effect": "Allow", "Principal": {"AWS": "arn:coffer:iam::111122223333:user/alice"},
        "Action": "kms:Encrypt", "Resource": "*"
    }}));
    let decision = authorize(Some(&key_policy), &[], &encrypt(alice()));
    assert_eq!(
        decision,
        AccessDecision {
            effect: DecisionEffect::Allowed,
            resource_statement: Some(StatementRef {
                policy_index: 0,
                statement_index: 0,
                sid: None
            }),
            principal_match: Some(PrincipalMatch::Direct),
            identity_statement: None,
        }
    );
}

#[test]
fn cross_account_needs_both_sides() {
    let key_policy = resource(&json!({"Statement": [
        {"Sid": "Own", "Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Partner", "Effect": "Allow", "Principal": {"AWS": "444455556666"}, "Action": "kms:Encrypt", "Resource": "*"},
        {"Sid": "PartnerBot", "Effect": "Allow", "Principal": {"AWS": "arn:coffer:iam::444455556666:user/bot"}, "Action": "kms:Encrypt", "Resource": "*"}
    ]}));
    let partner_identity = identity(&json!({"Statement": {
        "Effect": "Allow", "Action": "kms:Encrypt", "Resource": "arn:coffer:kms:*:111122223333:key/*"
    }}));
    let carol = PrincipalInfo::user("coffer", OTHER_ACCOUNT, "carol");
    assert!(
        authorize(
            Some(&key_policy),
            &[&partner_identity],
            &encrypt(carol.clone())
        )
        .is_allowed()
    );
    assert_eq!(
        authorize(Some(&key_policy), &[], &encrypt(carol)).effect,
        DecisionEffect::ImplicitDeny
    );
    // Named directly, but from another account: still needs its own allow.
    let bot = PrincipalInfo::user("coffer", OTHER_ACCOUNT, "bot");
    assert_eq!(
        authorize(Some(&key_policy), &[], &encrypt(bot.clone())).effect,
        DecisionEffect::ImplicitDeny
    );
    let both = authorize(Some(&key_policy), &[&partner_identity], &encrypt(bot));
    assert!(both.is_allowed());
    assert_eq!(both.principal_match, Some(PrincipalMatch::Direct));
    assert!(both.identity_statement.is_some());
    // A third account is not trusted by the key policy at all.
    let stranger = PrincipalInfo::user("coffer", "999999999999", "eve");
    assert_eq!(
        authorize(Some(&key_policy), &[&partner_identity], &encrypt(stranger)).effect,
        DecisionEffect::ImplicitDeny
    );
}

#[test]
fn explicit_denies_on_either_side_win() {
    let key_policy = resource(&json!({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:coffer:iam::111122223333:user/alice"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "KeyDeny", "Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
         "Condition": {"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}
    ]}));
    let identity_deny = identity(
        &json!({"Statement": {"Sid": "IdentityDeny", "Effect": "Deny", "Action": "kms:Encrypt", "Resource": "*"}}),
    );
    let outside = encrypt(alice()).with_value("aws:SourceIp", "192.0.2.1");
    let decision = authorize(Some(&key_policy), &[], &outside);
    assert_eq!(decision.effect, DecisionEffect::ExplicitDeny);
    assert_eq!(
        decision.resource_statement.unwrap().sid.as_deref(),
        Some("KeyDeny")
    );
    let inside = encrypt(alice()).with_value("aws:SourceIp", "10.1.2.3");
    assert!(authorize(Some(&key_policy), &[], &inside).is_allowed());
    let denied_by_identity = authorize(Some(&key_policy), &[&identity_deny], &inside);
    assert_eq!(denied_by_identity.effect, DecisionEffect::ExplicitDeny);
    assert_eq!(
        denied_by_identity
            .identity_statement
            .unwrap()
            .sid
            .as_deref(),
        Some("IdentityDeny")
    );
    assert_eq!(denied_by_identity.resource_statement, None);
}

#[test]
fn without_a_resource_policy_identity_policies_decide_within_the_account() {
    let secret = "arn:coffer:secretsmanager:eu-west-1:111122223333:secret:db";
    let policy = identity(
        &json!({"Statement": {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": secret}}),
    );
    let own = RequestContext::new(alice(), "secretsmanager:GetSecretValue", secret);
    let decision = authorize(None, &[&policy], &own);
    assert!(decision.is_allowed());
    assert_eq!(decision.resource_statement, None);
    assert!(decision.identity_statement.is_some());
    let foreign = RequestContext::new(
        PrincipalInfo::user("coffer", OTHER_ACCOUNT, "carol"),
        "secretsmanager:GetSecretValue",
        secret,
    );
    assert_eq!(
        authorize(None, &[&policy], &foreign).effect,
        DecisionEffect::ImplicitDeny
    );
    assert_eq!(
        authorize(None, &[], &own).effect,
        DecisionEffect::ImplicitDeny
    );
}

#[test]
fn services_are_allowed_by_the_resource_policy_alone() {
    let key_policy = resource(&json!({"Statement": {
        "Effect": "Allow", "Principal": {"Service": "audit.coffer.internal"},
        "Action": "kms:GenerateDataKey", "Resource": "*"
    }}));
    let audit = PrincipalInfo::service("coffer", "audit", "audit.coffer.internal");
    let context = RequestContext::new(audit, "kms:GenerateDataKey", KEY_ARN);
    assert!(authorize(Some(&key_policy), &[], &context).is_allowed());
}

#[test]
fn a_fifty_statement_policy_evaluates_correctly_many_times() {
    // Not a timing test: it checks that evaluation of a large, realistic
    // policy is correct for many requests, using patterns of every shape.
    let mut statements = Vec::new();
    for index in 0..49 {
        statements.push(json!({
            "Sid": format!("S{index}"),
            "Effect": "Allow",
            "Action": [format!("svc{index}:Get*"), format!("svc{index}:List?tems"), format!("svc{index}:Describe")],
            "Resource": [format!("arn:coffer:svc{index}:eu-west-1:111122223333:thing/*"), format!("arn:coffer:svc{index}:*:*:x-*-y")],
            "Condition": {
                "StringEquals": {"aws:PrincipalAccount": "111122223333"},
                "IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.168.0.0/16"]},
                "DateLessThan": {"aws:CurrentTime": "2100-01-01T00:00:00Z"}
            }
        }));
    }
    statements.push(json!({
        "Sid": "DenyDeletes", "Effect": "Deny", "Action": "svc7:Delete*", "Resource": "*"
    }));
    let policy = identity(&json!({"Version": "2012-10-17", "Statement": statements}));
    assert_eq!(policy.statements().len(), 50);
    for round in 0..200 {
        let service = round % 49;
        let context = RequestContext::new(
            alice(),
            &format!("svc{service}:GetThing"),
            &format!("arn:coffer:svc{service}:eu-west-1:111122223333:thing/{round}"),
        )
        .with_value("aws:SourceIp", "10.9.8.7")
        .with_value("aws:CurrentTime", "2030-01-01T00:00:00Z");
        let decision = evaluate(&[&policy], &context);
        assert_eq!(decision.effect, DecisionEffect::Allowed, "round {round}");
        assert_eq!(decision.statement.unwrap().statement_index, service);
        let outside = context.clone().with_values("aws:SourceIp", ["172.16.0.1"]);
        assert_eq!(
            evaluate(&[&policy], &outside).effect,
            DecisionEffect::ImplicitDeny
        );
        let wrong_service = RequestContext::new(
            alice(),
            &format!("svc{}:GetThing", (service + 1) % 49),
            &format!("arn:coffer:svc{service}:eu-west-1:111122223333:thing/{round}"),
        );
        assert_eq!(
            evaluate(&[&policy], &wrong_service).effect,
            DecisionEffect::ImplicitDeny
        );
    }
    let delete = RequestContext::new(
        alice(),
        "svc7:DeleteThing",
        "arn:coffer:svc7:eu-west-1:111122223333:thing/1",
    );
    let decision = evaluate(&[&policy], &delete);
    assert_eq!(decision.effect, DecisionEffect::ExplicitDeny);
    assert_eq!(
        decision.statement.unwrap().sid.as_deref(),
        Some("DenyDeletes")
    );
}
