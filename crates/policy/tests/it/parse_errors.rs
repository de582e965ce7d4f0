//! Every refusal, with the exact error.

use coffer_policy::{
    MAX_NESTING_DEPTH, MAX_POLICY_BYTES, Policy, PolicyError, PolicyKind, PolicyVersion,
};

use coffer_policy::{DecisionEffect, RequestContext};
use serde_json::json;

use crate::support::{KEY_ARN, alice, identity_error, resource, resource_error};

/// An identity policy whose single statement is `{ALLOW, extra}`.
fn statement(extra: &str) -> String {
    format!(
        r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"{extra}}}]}}"#
    )
}

/// A statement with only the given fields.
fn bare_statement(fields: &str) -> String {
    format!(r#"{{"Version": "2012-10-17", "Statement": [{{{fields}}}]}}"#)
}

fn condition(block: &str) -> String {
    statement(&format!(r#", "Condition": {block}"#))
}

fn path(text: &str) -> String {
    text.to_owned()
}

#[test]
fn a_valid_policy_parses() {
    let policy = Policy::parse_identity(&statement("")).unwrap();
    assert_eq!(policy.kind(), PolicyKind::Identity);
    assert_eq!(policy.version(), PolicyVersion::V2012_10_17);
    assert_eq!(policy.statements().len(), 1);
    let with_id = Policy::parse_identity(
        r#"{"Id": "key-policy-1", "Statement": {"Sid": "One", "Effect": "Deny", "Action": ["kms:*"], "Resource": ["*"]}}"#,
    )
    .unwrap();
    assert_eq!(with_id.id(), Some("key-policy-1"));
    assert_eq!(with_id.version(), PolicyVersion::V2008_10_17);
    assert_eq!(with_id.statements()[0].sid(), Some("One"));
    assert_eq!(
        with_id.statements()[0].effect(),
        coffer_policy::Effect::Deny
    );
}

#[test]
fn documents_over_32_kib_are_refused() {
    let base = statement("");
    let padding = MAX_POLICY_BYTES - base.len();
    let at_limit = format!("{base}{}", " ".repeat(padding));
    assert_eq!(at_limit.len(), 32_768);
    assert!(Policy::parse_identity(&at_limit).is_ok());
    let over = format!("{at_limit} ");
    assert_eq!(
        identity_error(&over),
        PolicyError::DocumentTooLarge {
            size: 32_769,
            limit: 32_768
        }
    );
    // Bytes, not characters.
    let multibyte = format!("{base}{}", "é".repeat(padding / 2 + 1));
    assert!(matches!(
        identity_error(&multibyte),
        PolicyError::DocumentTooLarge { .. }
    ));
}

#[test]
fn invalid_json_is_refused() {
    for bad in [
        "",
        "not json",
        "{",
        r#"{"Statement": [}"#,
        "{} {}",
        r#"{"a": 1,}"#,
        "\u{feff}{}",
    ] {
        assert!(
            matches!(identity_error(bad), PolicyError::InvalidJson { .. }),
            "{bad:?}"
        );
    }
}

#[test]
fn deep_nesting_is_refused() {
    let deep = condition(r#"{"StringEquals": {"x:k": [[[["a"]]]]}}"#);
    assert_eq!(
        identity_error(&deep),
        PolicyError::NestingTooDeep {
            path: path("Statement[0].Condition.StringEquals.x:k[0][0][0]"),
            limit: MAX_NESTING_DEPTH,
        }
    );
    let hostile = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(matches!(
        identity_error(&hostile),
        PolicyError::NestingTooDeep { .. }
    ));
    // Depth 8 is structurally fine (and then refused for its shape).
    let eight = condition(r#"{"StringEquals": {"x:k": [["a"]]}}"#);
    assert_eq!(
        identity_error(&eight),
        PolicyError::WrongType {
            path: path("Statement[0].Condition.StringEquals.x:k[0]"),
            expected: "a string, number or boolean, or a list of them",
        }
    );
}

#[test]
fn duplicate_keys_are_refused_at_every_level() {
    let top = r#"{"Version": "2012-10-17", "Version": "2012-10-17", "Statement": []}"#;
    assert_eq!(
        identity_error(top),
        PolicyError::DuplicateKey {
            path: path("the policy document"),
            key: "Version".to_owned()
        }
    );
    let effect = bare_statement(
        r#""Effect": "Deny", "Action": "kms:*", "Resource": "*", "Effect": "Allow""#,
    );
    assert_eq!(
        identity_error(&effect),
        PolicyError::DuplicateKey {
            path: path("Statement[0]"),
            key: "Effect".to_owned()
        }
    );
    let operator = condition(r#"{"StringEquals": {"x:a": "1"}, "StringEquals": {"x:b": "2"}}"#);
    assert_eq!(
        identity_error(&operator),
        PolicyError::DuplicateKey {
            path: path("Statement[0].Condition"),
            key: "StringEquals".to_owned()
        }
    );
    let key = condition(r#"{"StringEquals": {"x:a": "1", "x:a": "2"}}"#);
    assert_eq!(
        identity_error(&key),
        PolicyError::DuplicateKey {
            path: path("Statement[0].Condition.StringEquals"),
            key: "x:a".to_owned()
        }
    );
    let principal = r#"{"Statement": {"Effect": "Allow", "Action": "kms:*", "Resource": "*",
        "Principal": {"AWS": "111122223333", "AWS": "444455556666"}}}"#;
    assert_eq!(
        resource_error(principal),
        PolicyError::DuplicateKey {
            path: path("Statement.Principal"),
            key: "AWS".to_owned()
        }
    );
}

#[test]
fn condition_keys_differing_only_in_case_are_duplicates() {
    let error = identity_error(&condition(
        r#"{"IpAddress": {"aws:SourceIp": "10.0.0.0/8", "AWS:SourceIP": "0.0.0.0/0"}}"#,
    ));
    assert_eq!(
        error,
        PolicyError::DuplicateConditionKey {
            path: path("Statement[0].Condition.IpAddress"),
            key: "AWS:SourceIP".to_owned()
        }
    );
}

#[test]
fn unknown_fields_are_refused() {
    assert_eq!(
        identity_error(r#"{"Version": "2012-10-17", "Statements": []}"#),
        PolicyError::UnknownField {
            path: path("the policy document"),
            field: "Statements".to_owned()
        }
    );
    for field in [
        "effect",
        "Actions",
        "Conditions",
        "Principals",
        "sid",
        "Resources",
        "Comment",
    ] {
        let error = identity_error(&statement(&format!(r#", "{field}": "x""#)));
        assert_eq!(
            error,
            PolicyError::UnknownField {
                path: path("Statement[0]"),
                field: field.to_owned()
            }
        );
    }
}

#[test]
fn wrong_types_are_refused() {
    let cases: &[(&str, &str, &str)] = &[
        ("[]", "the policy document", "a JSON object"),
        ("\"policy\"", "the policy document", "a JSON object"),
        (
            r#"{"Version": 2012, "Statement": []}"#,
            "Version",
            "a string",
        ),
        (r#"{"Id": 7, "Statement": []}"#, "Id", "a string"),
        (
            r#"{"Statement": "Allow"}"#,
            "Statement",
            "a statement object or a list of them",
        ),
        (r#"{"Statement": ["Allow"]}"#, "Statement[0]", "an object"),
        (
            r#"{"Statement": [{"Effect": ["Allow"], "Action": "kms:*", "Resource": "*"}]}"#,
            "Statement[0].Effect",
            "the string \"Allow\" or \"Deny\"",
        ),
        (
            r#"{"Statement": [{"Sid": 1, "Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}"#,
            "Statement[0].Sid",
            "a string",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Action": 5, "Resource": "*"}]}"#,
            "Statement[0].Action",
            "a string or a list of strings",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Action": ["kms:*", null], "Resource": "*"}]}"#,
            "Statement[0].Action[1]",
            "a string",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": {"arn": "x"}}]}"#,
            "Statement[0].Resource",
            "a string or a list of strings",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*", "Condition": []}]}"#,
            "Statement[0].Condition",
            "an object of condition operators",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*", "Condition": {"Bool": "true"}}]}"#,
            "Statement[0].Condition.Bool",
            "an object of condition keys",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*", "Condition": {"Bool": {"x:k": null}}}]}"#,
            "Statement[0].Condition.Bool.x:k",
            "a string, number or boolean, or a list of them",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*", "Condition": {"Bool": {"x:k": {"a": "b"}}}}]}"#,
            "Statement[0].Condition.Bool.x:k",
            "a string, number or boolean, or a list of them",
        ),
    ];
    for (document, wanted_path, expected) in cases {
        assert_eq!(
            identity_error(document),
            PolicyError::WrongType {
                path: path(wanted_path),
                expected
            },
            "{document}"
        );
    }
    let principal_string = r#"{"Statement": {"Effect": "Allow", "Action": "kms:*", "Resource": "*", "Principal": "arn:coffer:iam::111122223333:root"}}"#;
    assert_eq!(
        resource_error(principal_string),
        PolicyError::WrongType {
            path: path("Statement.Principal"),
            expected: "\"*\" or an object with \"AWS\" and/or \"Service\"",
        }
    );
    let principal_number = r#"{"Statement": {"Effect": "Allow", "Action": "kms:*", "Resource": "*", "Principal": {"AWS": 111122223333}}}"#;
    assert_eq!(
        resource_error(principal_number),
        PolicyError::WrongType {
            path: path("Statement.Principal.AWS"),
            expected: "a string or a list of strings",
        }
    );
}

#[test]
fn versions_other_than_the_two_aws_versions_are_refused() {
    for version in ["2012-10-18", "", "2012-10-17 ", "latest"] {
        assert_eq!(
            identity_error(&format!(r#"{{"Version": "{version}", "Statement": []}}"#)),
            PolicyError::UnsupportedVersion {
                version: version.to_owned()
            }
        );
    }
}

#[test]
fn statements_are_required_and_non_empty() {
    assert_eq!(
        identity_error(r#"{"Version": "2012-10-17"}"#),
        PolicyError::MissingStatement
    );
    assert_eq!(
        identity_error(r#"{"Statement": []}"#),
        PolicyError::EmptyElement {
            path: path("Statement")
        }
    );
}

#[test]
fn empty_lists_and_blocks_are_refused() {
    let cases = [
        (
            bare_statement(r#""Effect": "Allow", "Action": [], "Resource": "*""#),
            "Statement[0].Action",
        ),
        (
            bare_statement(r#""Effect": "Allow", "NotAction": [], "Resource": "*""#),
            "Statement[0].NotAction",
        ),
        (
            bare_statement(r#""Effect": "Allow", "Action": "kms:*", "Resource": []"#),
            "Statement[0].Resource",
        ),
        (
            condition(r#"{"StringEquals": {}}"#),
            "Statement[0].Condition.StringEquals",
        ),
        (
            condition(r#"{"StringEquals": {"x:k": []}}"#),
            "Statement[0].Condition.StringEquals.x:k",
        ),
    ];
    for (document, wanted) in cases {
        assert_eq!(
            identity_error(&document),
            PolicyError::EmptyElement { path: path(wanted) },
            "{document}"
        );
    }
    let empty_principal = r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*", "Principal": {}}]}"#;
    assert_eq!(
        resource_error(empty_principal),
        PolicyError::EmptyElement {
            path: path("Statement[0].Principal")
        }
    );
    let empty_aws = r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*", "Principal": {"AWS": []}}]}"#;
    assert_eq!(
        resource_error(empty_aws),
        PolicyError::EmptyElement {
            path: path("Statement[0].Principal.AWS")
        }
    );
}

#[test]
fn effect_must_be_allow_or_deny() {
    for effect in ["allow", "DENY", "Permit", "", " Allow"] {
        assert_eq!(
            identity_error(&bare_statement(&format!(
                r#""Effect": "{effect}", "Action": "kms:*", "Resource": "*""#
            ))),
            PolicyError::InvalidEffect {
                path: path("Statement[0]"),
                value: effect.to_owned()
            }
        );
    }
    assert_eq!(
        identity_error(&bare_statement(r#""Action": "kms:*", "Resource": "*""#)),
        PolicyError::MissingEffect {
            path: path("Statement[0]")
        }
    );
}

#[test]
fn conflicting_elements_are_refused() {
    assert_eq!(
        identity_error(&statement(r#", "NotAction": "kms:Decrypt""#)),
        PolicyError::ConflictingElements {
            path: path("Statement[0]"),
            first: "Action",
            second: "NotAction"
        }
    );
    assert_eq!(
        identity_error(&statement(r#", "NotResource": "*""#)),
        PolicyError::ConflictingElements {
            path: path("Statement[0]"),
            first: "Resource",
            second: "NotResource"
        }
    );
    let both_principals = r#"{"Statement": [{"Effect": "Deny", "Action": "kms:*", "Resource": "*",
        "Principal": "*", "NotPrincipal": {"AWS": "111122223333"}}]}"#;
    assert_eq!(
        resource_error(both_principals),
        PolicyError::ConflictingElements {
            path: path("Statement[0]"),
            first: "Principal",
            second: "NotPrincipal"
        }
    );
}

#[test]
fn missing_elements_are_refused() {
    assert_eq!(
        identity_error(&bare_statement(r#""Effect": "Allow", "Resource": "*""#)),
        PolicyError::MissingAction {
            path: path("Statement[0]")
        }
    );
    assert_eq!(
        identity_error(&bare_statement(r#""Effect": "Allow", "Action": "kms:*""#)),
        PolicyError::MissingResource {
            path: path("Statement[0]")
        }
    );
    assert_eq!(
        resource_error(&statement("")),
        PolicyError::MissingPrincipal {
            path: path("Statement[0]")
        }
    );
}

/// KMS: "If either of the required Resource or Action elements are missing
/// from a key policy statement, the policy statement has no effect", and
/// PutKeyPolicy succeeds.
#[test]
fn a_key_policy_statement_without_action_or_resource_has_no_effect() {
    let policy = resource(&json!({"Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "kms:Encrypt"},
        {"Effect": "Allow", "Principal": "*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "NotResource": "arn:coffer:kms:*:*:key/none"},
    ]}));
    let request = RequestContext::new(alice(), "kms:Encrypt", KEY_ARN);
    assert_eq!(
        coffer_policy::evaluate(&[&policy], &request).effect,
        DecisionEffect::ImplicitDeny
    );
}

#[test]
fn identity_policies_must_not_name_principals() {
    assert_eq!(
        identity_error(&statement(r#", "Principal": "*""#)),
        PolicyError::PrincipalNotAllowed {
            path: path("Statement[0]"),
            element: "Principal"
        }
    );
    assert_eq!(
        identity_error(&bare_statement(
            r#""Effect": "Deny", "Action": "kms:*", "Resource": "*", "NotPrincipal": {"AWS": "111122223333"}"#
        )),
        PolicyError::PrincipalNotAllowed {
            path: path("Statement[0]"),
            element: "NotPrincipal"
        }
    );
}

#[test]
fn not_principal_is_only_for_deny() {
    let document = r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*", "NotPrincipal": {"AWS": "111122223333"}}]}"#;
    assert_eq!(
        resource_error(document),
        PolicyError::NotPrincipalWithAllow {
            path: path("Statement[0]")
        }
    );
}

#[test]
fn sids_must_be_unique() {
    let document = r#"{"Statement": [
        {"Sid": "A", "Effect": "Allow", "Action": "kms:*", "Resource": "*"},
        {"Sid": "B", "Effect": "Allow", "Action": "kms:*", "Resource": "*"},
        {"Sid": "A", "Effect": "Deny", "Action": "kms:*", "Resource": "*"}
    ]}"#;
    assert_eq!(
        identity_error(document),
        PolicyError::DuplicateSid {
            sid: "A".to_owned()
        }
    );
    // Empty Sids (common in generated policies) may repeat; case differs.
    let empty = r#"{"Statement": [
        {"Sid": "", "Effect": "Allow", "Action": "kms:*", "Resource": "*"},
        {"Sid": "", "Effect": "Allow", "Action": "kms:*", "Resource": "*"},
        {"Sid": "a", "Effect": "Allow", "Action": "kms:*", "Resource": "*"},
        {"Sid": "A", "Effect": "Allow", "Action": "kms:*", "Resource": "*"}
    ]}"#;
    assert!(Policy::parse_identity(empty).is_ok());
}

#[test]
fn malformed_actions_are_refused() {
    for action in [
        "kms",
        "kms:",
        ":Encrypt",
        "*:Encrypt",
        "kms:Encrypt:Now",
        "kms: Encrypt",
        "kms:Enc\\u0000rypt",
        "",
    ] {
        let error = identity_error(&bare_statement(&format!(
            r#""Effect": "Allow", "Action": ["kms:Decrypt", "{action}"], "Resource": "*""#
        )));
        assert!(
            matches!(&error, PolicyError::InvalidAction { path, .. } if path == "Statement[0].Action[1]"),
            "{action:?}: {error:?}"
        );
    }
}

#[test]
fn malformed_resource_arns_are_refused() {
    let cases = [
        (
            "key/1234",
            "an ARN has six parts: arn:partition:service:region:account:resource",
        ),
        (
            "arn:coffer:kms:eu-west-1:111122223333",
            "an ARN has six parts: arn:partition:service:region:account:resource",
        ),
        (
            "ARN:coffer:kms:eu-west-1:111122223333:key/1",
            "an ARN starts with \"arn:\"",
        ),
        (
            "arn::kms:eu-west-1:111122223333:key/1",
            "the partition is empty",
        ),
        (
            "arn:coffer::eu-west-1:111122223333:key/1",
            "the service is empty",
        ),
        (
            "arn:coffer:*:eu-west-1:111122223333:key/1",
            "the service part of a resource ARN cannot contain wildcards",
        ),
        (
            "arn:coffer:kms:eu-west-1:111122223333:",
            "the resource part is empty",
        ),
        (
            "arn:coffer:kms:eu-west-1:111122223333:key/\\u0000",
            "a resource ARN must not contain control characters",
        ),
        (
            "",
            "an ARN has six parts: arn:partition:service:region:account:resource",
        ),
    ];
    for (resource, reason) in cases {
        let error = identity_error(&bare_statement(&format!(
            r#""Effect": "Allow", "Action": "kms:*", "NotResource": "{resource}""#
        )));
        let shown = resource.replace("\\u0000", "\0");
        assert_eq!(
            error,
            PolicyError::InvalidArn {
                path: path("Statement[0].NotResource"),
                value: shown,
                reason
            }
        );
    }
}

fn principal_error(principal: &str) -> PolicyError {
    resource_error(&format!(
        r#"{{"Statement": [{{"Effect": "Allow", "Action": "kms:*", "Resource": "*", "Principal": {principal}}}]}}"#
    ))
}

#[test]
fn malformed_principals_are_refused() {
    assert_eq!(
        principal_error(r#"{"AWS": "arn:coffer:iam::111122223333"}"#),
        PolicyError::InvalidArn {
            path: path("Statement[0].Principal.AWS"),
            value: "arn:coffer:iam::111122223333".to_owned(),
            reason: "an ARN has six parts: arn:partition:service:region:account:resource",
        }
    );
    for look_alike in ["ROOT", "Root", " root", "root ", "root/", "r00t", "user/"] {
        let value = format!("arn:coffer:iam::111122223333:{look_alike}");
        let error = principal_error(&format!(r#"{{"AWS": ["111122223333", "{value}"]}}"#));
        assert!(
            matches!(&error, PolicyError::InvalidPrincipal { path, value: shown, .. }
                if path == "Statement[0].Principal.AWS[1]" && *shown == value),
            "{look_alike:?}: {error:?}"
        );
    }
    for bad in [
        "alice",
        "11112222333",
        "arn:coffer:iam::111122223333:user/*",
        "arn:coffer:kms:eu-west-1:111122223333:key/x",
    ] {
        assert!(
            matches!(
                principal_error(&format!(r#"{{"AWS": "{bad}"}}"#)),
                PolicyError::InvalidPrincipal { .. }
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        principal_error(r#"{"Service": "*"}"#),
        PolicyError::InvalidPrincipal { .. }
    ));
    assert!(matches!(
        principal_error(r#""**""#),
        PolicyError::WrongType { .. }
    ));
}

#[test]
fn unsupported_principal_types_are_refused() {
    for principal_type in ["Federated", "CanonicalUser", "aws", "service"] {
        assert_eq!(
            principal_error(&format!(r#"{{"{principal_type}": "x"}}"#)),
            PolicyError::UnsupportedPrincipalType {
                path: path("Statement[0].Principal"),
                principal_type: principal_type.to_owned()
            }
        );
    }
}

#[test]
fn unknown_condition_operators_are_refused() {
    for operator in [
        "StringEqualz",
        "stringequals",
        "NullIfExists",
        "ForAnyValue:Null",
        "ForSomeValues:StringEquals",
        "BinaryEquals",
        "StringEquals:IfExists",
    ] {
        assert_eq!(
            identity_error(&condition(&format!(r#"{{"{operator}": {{"x:k": "v"}}}}"#))),
            PolicyError::UnknownConditionOperator {
                path: path("Statement[0].Condition"),
                operator: operator.to_owned()
            }
        );
    }
}

#[test]
fn malformed_condition_keys_are_refused() {
    for key in [
        "SourceIp",
        ":SourceIp",
        "aws:",
        "a ws:SourceIp",
        "aws:Source\\u0001Ip",
    ] {
        let error = identity_error(&condition(&format!(
            r#"{{"StringEquals": {{"{key}": "v"}}}}"#
        )));
        assert!(
            matches!(&error, PolicyError::InvalidConditionKey { path, .. } if path == "Statement[0].Condition.StringEquals"),
            "{key:?}: {error:?}"
        );
    }
}

#[test]
fn malformed_condition_values_are_refused() {
    let cases = [
        ("Bool", "yes"),
        ("BoolIfExists", "1"),
        ("NumericEquals", "ten"),
        ("NumericLessThan", "1e3"),
        ("ForAllValues:NumericGreaterThan", ""),
        ("DateLessThan", "tomorrow"),
        ("DateEquals", "2024-02-30"),
        ("IpAddress", "10.0.0.0/33"),
        ("NotIpAddress", "example.com"),
        ("Null", "maybe"),
        ("ArnLike", "not-an-arn"),
        ("ArnEquals", "urn:coffer:kms:x:y:z"),
    ];
    for (operator, value) in cases {
        let error = identity_error(&condition(&format!(
            r#"{{"{operator}": {{"x:k": ["{value}"]}}}}"#
        )));
        assert!(
            matches!(&error, PolicyError::InvalidConditionValue { path, operator: named, value: shown, .. }
                if *path == format!("Statement[0].Condition.{operator}.x:k")
                    && named == operator && shown == value),
            "{operator} {value:?}: {error:?}"
        );
    }
}

#[test]
fn malformed_policy_variables_are_refused_in_2012_documents() {
    let resource = "arn:coffer:secretsmanager:*:*:secret:${aws:username";
    let document = format!(
        r#"{{"Version": "2012-10-17", "Statement": {{"Effect": "Allow", "Action": "kms:*", "Resource": "{resource}"}}}}"#
    );
    assert!(matches!(
        identity_error(&document),
        PolicyError::InvalidPolicyVariable { path, .. } if path == "Statement.Resource"
    ));
    // In 2008-10-17 documents `${` is literal text.
    let old = document.replace("2012-10-17", "2008-10-17");
    assert!(Policy::parse_identity(&old).is_ok());
    let in_condition = condition(r#"{"StringLike": {"x:k": "${x:a, unquoted}"}}"#);
    assert!(matches!(
        identity_error(&in_condition),
        PolicyError::InvalidPolicyVariable { .. }
    ));
}

#[test]
fn messages_name_the_problem() {
    let error = identity_error(&condition(r#"{"StringEqualz": {"x:k": "v"}}"#));
    assert_eq!(
        error.to_string(),
        "Statement[0].Condition: unknown condition operator \"StringEqualz\""
    );
    let error = identity_error(&bare_statement(
        r#""Effect": "Allow", "Action": "kms:*", "NotAction": "kms:x", "Resource": "*""#,
    ));
    assert_eq!(
        error.to_string(),
        "Statement[0] has both Action and NotAction; a statement may use only one of them"
    );
    let error = identity_error(r#"{"Statement": [], "Statement": []}"#);
    assert_eq!(
        error.to_string(),
        "duplicate key \"Statement\" in the policy document"
    );
    // Long values are shortened when quoted back.
    let long_action = format!("kms:{}!", "A".repeat(500));
    let error = identity_error(&bare_statement(&format!(
        r#""Effect": "Allow", "Action": "{long_action}", "Resource": "*""#
    )));
    assert!(error.to_string().len() < 400, "{error}");
}
