//! Principal matching in resource policies: the account root and its
//! delegation, look-alikes, partitions, services and NotPrincipal.

use coffer_policy::{
    DecisionEffect, PrincipalInfo, PrincipalMatch, RequestContext, ResourceDecision,
    evaluate_resource_policy,
};
use serde_json::{Value, json};

use crate::support::{ACCOUNT, KEY_ARN, OTHER_ACCOUNT, alice, resource};

fn key_policy_allowing(principal: Value) -> coffer_policy::Policy {
    resource(&json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "Grant",
            "Effect": "Allow",
            "Principal": principal,
            "Action": "kms:*",
            "Resource": "*"
        }]
    }))
}

fn decide(policy: &coffer_policy::Policy, caller: PrincipalInfo) -> ResourceDecision {
    evaluate_resource_policy(policy, &RequestContext::new(caller, "kms:Encrypt", KEY_ARN))
}

fn principal_match(
    policy: &coffer_policy::Policy,
    caller: PrincipalInfo,
) -> Option<PrincipalMatch> {
    let decision = decide(policy, caller);
    match decision.effect {
        DecisionEffect::Allowed => decision.principal_match,
        _ => None,
    }
}

#[test]
fn the_account_root_delegates_to_the_account() {
    for principal in [
        json!({"AWS": "arn:coffer:iam::111122223333:root"}),
        json!({"AWS": "111122223333"}),
        json!({"AWS": ["444455556666", "111122223333"]}),
    ] {
        let policy = key_policy_allowing(principal.clone());
        let via_root = decide(&policy, alice());
        assert!(via_root.allows_via_account_root(), "{principal}");
        assert!(!via_root.allows_directly());
        assert_eq!(
            via_root.statement.as_ref().unwrap().sid.as_deref(),
            Some("Grant")
        );
        assert_eq!(
            principal_match(&policy, PrincipalInfo::role("coffer", ACCOUNT, "ops")),
            Some(PrincipalMatch::ViaAccountRoot)
        );
        assert_eq!(
            principal_match(&policy, PrincipalInfo::account_root("coffer", ACCOUNT)),
            Some(PrincipalMatch::Direct)
        );
        let stranger = decide(
            &policy,
            PrincipalInfo::user("coffer", "999999999999", "alice"),
        );
        assert_eq!(stranger.effect, DecisionEffect::ImplicitDeny);
        assert_eq!(stranger.statement, None);
        assert_eq!(stranger.principal_match, None);
    }
}

#[test]
fn users_named_like_root_are_not_the_root() {
    let root_policy = key_policy_allowing(json!({"AWS": "arn:coffer:iam::111122223333:root"}));
    for name in ["root", "Root", "ROOT", " root", "root ", "admin/root"] {
        let user = PrincipalInfo::user("coffer", ACCOUNT, name);
        assert!(!user.is_root());
        assert_eq!(
            principal_match(&root_policy, user),
            Some(PrincipalMatch::ViaAccountRoot),
            "user {name:?} only reaches the account through delegation"
        );
    }
    // A statement naming user/root names that user only.
    let user_root_policy =
        key_policy_allowing(json!({"AWS": "arn:coffer:iam::111122223333:user/root"}));
    assert_eq!(
        principal_match(
            &user_root_policy,
            PrincipalInfo::user("coffer", ACCOUNT, "root")
        ),
        Some(PrincipalMatch::Direct)
    );
    assert_eq!(
        principal_match(
            &user_root_policy,
            PrincipalInfo::account_root("coffer", ACCOUNT)
        ),
        None
    );
    assert_eq!(principal_match(&user_root_policy, alice()), None);
    assert_eq!(
        principal_match(
            &user_root_policy,
            PrincipalInfo::user("coffer", ACCOUNT, "Root")
        ),
        None
    );
    assert_eq!(
        principal_match(
            &user_root_policy,
            PrincipalInfo::role("coffer", ACCOUNT, "root")
        ),
        None
    );
}

#[test]
fn named_principals_match_exactly() {
    let policy = key_policy_allowing(json!({"AWS": [
        "arn:coffer:iam::111122223333:user/alice",
        "arn:coffer:iam::444455556666:role/deploy"
    ]}));
    assert_eq!(
        principal_match(&policy, alice()),
        Some(PrincipalMatch::Direct)
    );
    assert_eq!(
        principal_match(
            &policy,
            PrincipalInfo::role("coffer", OTHER_ACCOUNT, "deploy")
        ),
        Some(PrincipalMatch::Direct)
    );
    assert_eq!(
        principal_match(&policy, PrincipalInfo::user("coffer", ACCOUNT, "Alice")),
        None
    );
    assert_eq!(
        principal_match(&policy, PrincipalInfo::user("coffer", ACCOUNT, "alice2")),
        None
    );
    assert_eq!(
        principal_match(&policy, PrincipalInfo::role("coffer", ACCOUNT, "alice")),
        None
    );
    assert_eq!(
        principal_match(
            &policy,
            PrincipalInfo::user("coffer", OTHER_ACCOUNT, "alice")
        ),
        None
    );
    assert_eq!(
        principal_match(&policy, PrincipalInfo::account_root("coffer", ACCOUNT)),
        None
    );
}

#[test]
fn a_direct_match_is_preferred_over_account_delegation() {
    let policy = resource(&json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Account", "Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Action": "kms:*", "Resource": "*"},
            {"Sid": "Alice", "Effect": "Allow", "Principal": {"AWS": "arn:coffer:iam::111122223333:user/alice"}, "Action": "kms:Encrypt", "Resource": "*"}
        ]
    }));
    let decision = decide(&policy, alice());
    assert!(decision.allows_directly());
    let statement = decision.statement.unwrap();
    assert_eq!(statement.sid.as_deref(), Some("Alice"));
    assert_eq!(statement.statement_index, 1);
    assert_eq!(statement.policy_index, 0);
}

#[test]
fn partitions_are_compared_with_the_callers() {
    let aws_root = key_policy_allowing(json!({"AWS": "arn:aws:iam::111122223333:root"}));
    assert_eq!(principal_match(&aws_root, alice()), None);
    assert_eq!(
        principal_match(&aws_root, PrincipalInfo::user("aws", ACCOUNT, "alice")),
        Some(PrincipalMatch::ViaAccountRoot)
    );
    let aws_user = key_policy_allowing(json!({"AWS": "arn:aws:iam::111122223333:user/alice"}));
    assert_eq!(principal_match(&aws_user, alice()), None);
    assert_eq!(
        principal_match(&aws_user, PrincipalInfo::user("aws", ACCOUNT, "alice")),
        Some(PrincipalMatch::Direct)
    );
    // A bare account id is in whatever partition the instance uses.
    let bare = key_policy_allowing(json!({"AWS": "111122223333"}));
    assert_eq!(
        principal_match(&bare, PrincipalInfo::user("aws", ACCOUNT, "alice")),
        Some(PrincipalMatch::ViaAccountRoot)
    );
    assert_eq!(
        principal_match(&bare, alice()),
        Some(PrincipalMatch::ViaAccountRoot)
    );
}

#[test]
fn everyone_and_services() {
    for principal in [json!("*"), json!({"AWS": "*"})] {
        let policy = key_policy_allowing(principal);
        assert_eq!(
            principal_match(&policy, alice()),
            Some(PrincipalMatch::Direct)
        );
        assert_eq!(
            principal_match(
                &policy,
                PrincipalInfo::service("coffer", "secrets", "secrets.coffer.internal")
            ),
            Some(PrincipalMatch::Direct)
        );
    }
    let service_policy = key_policy_allowing(json!({"Service": ["Secrets.Coffer.Internal"]}));
    assert_eq!(
        principal_match(
            &service_policy,
            PrincipalInfo::service("coffer", "secrets", "secrets.coffer.internal")
        ),
        Some(PrincipalMatch::Direct)
    );
    assert_eq!(
        principal_match(
            &service_policy,
            PrincipalInfo::service("coffer", "audit", "audit.coffer.internal")
        ),
        None
    );
    assert_eq!(principal_match(&service_policy, alice()), None);
    let service_arn = key_policy_allowing(json!({"AWS": "arn:coffer:coffer:::service/secrets"}));
    assert_eq!(
        principal_match(
            &service_arn,
            PrincipalInfo::service("coffer", "secrets", "secrets.coffer.internal")
        ),
        Some(PrincipalMatch::Direct)
    );
}

#[test]
fn a_deny_naming_the_account_denies_all_its_principals() {
    let policy = resource(&json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "arn:coffer:iam::111122223333:user/alice"}, "Action": "kms:*", "Resource": "*"},
            {"Sid": "NoEncrypt", "Effect": "Deny", "Principal": {"AWS": "111122223333"}, "Action": "kms:Encrypt", "Resource": "*"}
        ]
    }));
    let decision = decide(&policy, alice());
    assert!(decision.is_explicit_deny());
    assert_eq!(
        decision.statement.unwrap().sid.as_deref(),
        Some("NoEncrypt")
    );
    assert!(decide(&policy, PrincipalInfo::account_root("coffer", ACCOUNT)).is_explicit_deny());
    assert_eq!(
        decide(
            &policy,
            PrincipalInfo::user("coffer", OTHER_ACCOUNT, "alice")
        )
        .effect,
        DecisionEffect::ImplicitDeny
    );
}

fn with_not_principal(not_principal: Value) -> coffer_policy::Policy {
    resource(&json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
            {"Sid": "OnlyAdmin", "Effect": "Deny", "NotPrincipal": not_principal, "Action": "kms:*", "Resource": "*"}
        ]
    }))
}

#[test]
fn not_principal_exempts_only_fully_listed_identities() {
    let admin = || PrincipalInfo::user("coffer", ACCOUNT, "admin");
    let root = || PrincipalInfo::account_root("coffer", ACCOUNT);

    // The user and its account are listed: only the admin (and the root) pass.
    let listed = with_not_principal(json!({"AWS": [
        "arn:coffer:iam::111122223333:user/admin",
        "arn:coffer:iam::111122223333:root"
    ]}));
    assert!(decide(&listed, admin()).allows_directly());
    assert!(decide(&listed, root()).allows_directly());
    assert!(decide(&listed, alice()).is_explicit_deny());
    assert!(
        decide(
            &listed,
            PrincipalInfo::user("coffer", OTHER_ACCOUNT, "admin")
        )
        .is_explicit_deny()
    );

    // Only the user listed: as in AWS, the account identity of the request
    // is not exempt, so the deny still applies to the admin.
    let user_only = with_not_principal(json!({"AWS": "arn:coffer:iam::111122223333:user/admin"}));
    assert!(decide(&user_only, admin()).is_explicit_deny());

    // Only the account listed: exempts the root, not the account's users.
    let account_only = with_not_principal(json!({"AWS": "111122223333"}));
    assert!(decide(&account_only, root()).allows_directly());
    assert!(decide(&account_only, admin()).is_explicit_deny());

    // Services have no account: listing the service is enough.
    let service = with_not_principal(json!({"Service": "secrets.coffer.internal"}));
    assert!(
        decide(
            &service,
            PrincipalInfo::service("coffer", "secrets", "secrets.coffer.internal")
        )
        .allows_directly()
    );
    assert!(decide(&service, alice()).is_explicit_deny());

    // NotPrincipal "*" exempts everyone.
    let everyone = with_not_principal(json!({"AWS": "*"}));
    assert!(decide(&everyone, alice()).allows_directly());
}

#[test]
fn statements_without_principals_never_allow_in_a_resource_evaluation() {
    // An identity policy passed as a resource policy by mistake.
    let identity = crate::support::identity(&json!({
        "Statement": [
            {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}
        ]
    }));
    assert_eq!(
        decide(&identity, alice()).effect,
        DecisionEffect::ImplicitDeny
    );
    let identity_deny = crate::support::identity(&json!({
        "Statement": [
            {"Effect": "Deny", "Action": "kms:*", "Resource": "*"}
        ]
    }));
    assert!(decide(&identity_deny, alice()).is_explicit_deny());
}

#[test]
fn resource_policies_passed_to_the_identity_evaluator_allow_only_direct_matches() {
    let policy = key_policy_allowing(json!({"AWS": "111122223333"}));
    let context = RequestContext::new(alice(), "kms:Encrypt", KEY_ARN);
    assert_eq!(
        coffer_policy::evaluate(&[&policy], &context).effect,
        DecisionEffect::ImplicitDeny
    );
    let direct = key_policy_allowing(json!({"AWS": "arn:coffer:iam::111122223333:user/alice"}));
    assert!(coffer_policy::evaluate(&[&direct], &context).is_allowed());
}

#[test]
fn caller_names_with_metacharacters_are_literal() {
    let policy = key_policy_allowing(json!({"AWS": [
        "arn:coffer:iam::111122223333:user/alice",
        "arn:coffer:iam::111122223333:role/ops/deploy"
    ]}));
    for name in [
        "*",
        "al?ce",
        "alic*",
        "alice\0",
        "alice/../alice",
        "ops/../alice",
        "alice%2F",
    ] {
        assert_eq!(
            principal_match(&policy, PrincipalInfo::user("coffer", ACCOUNT, name)),
            None,
            "user {name:?}"
        );
    }
    for name in ["ops/*", "ops/deplo?", "ops%2Fdeploy", "x/../ops/deploy"] {
        assert_eq!(
            principal_match(&policy, PrincipalInfo::role("coffer", ACCOUNT, name)),
            None,
            "role {name:?}"
        );
    }
}
