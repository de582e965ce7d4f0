//! Every condition operator, with IfExists, set qualifiers and missing keys.

use coffer_policy::{DecisionEffect, PrincipalInfo, RequestContext};
use serde_json::{Value, json};

use crate::support::condition_holds;

const MISSING: &[(&str, &[&str])] = &[];

#[track_caller]
fn check(condition: Value, values: &[(&str, &[&str])], expected: bool) {
    let holds = condition_holds(condition.clone(), values);
    assert_eq!(
        holds, expected,
        "condition {condition} with request values {values:?} should be {expected}"
    );
}

#[test]
fn string_equals_is_exact_and_case_sensitive() {
    let condition =
        json!({"StringEquals": {"kms:ViaService": "secrets.eu-west-1.coffer.internal"}});
    check(
        condition.clone(),
        &[("kms:ViaService", &["secrets.eu-west-1.coffer.internal"])],
        true,
    );
    check(
        condition.clone(),
        &[("kms:ViaService", &["Secrets.eu-west-1.coffer.internal"])],
        false,
    );
    check(
        condition.clone(),
        &[("kms:ViaService", &["secrets.eu-west-1.coffer.internal "])],
        false,
    );
    check(condition, MISSING, false);
}

#[test]
fn string_equals_does_not_treat_wildcards_as_patterns() {
    let condition = json!({"StringEquals": {"x:k": "team-*"}});
    check(condition.clone(), &[("x:k", &["team-a"])], false);
    check(condition, &[("x:k", &["team-*"])], true);
    // Nor does a request value widen a literal.
    check(
        json!({"StringEquals": {"x:k": "team-a"}}),
        &[("x:k", &["*"])],
        false,
    );
}

#[test]
fn listed_values_are_alternatives() {
    let condition = json!({"StringEquals": {"x:k": ["a", "b"]}});
    check(condition.clone(), &[("x:k", &["b"])], true);
    check(condition.clone(), &[("x:k", &["c"])], false);
    // Several request values without a qualifier: any may match.
    check(condition, &[("x:k", &["c", "a"])], true);
}

#[test]
fn string_not_equals_requires_no_listed_value_to_match() {
    let condition = json!({"StringNotEquals": {"x:k": ["a", "b"]}});
    check(condition.clone(), &[("x:k", &["c"])], true);
    check(condition.clone(), &[("x:k", &["a"])], false);
    check(condition.clone(), &[("x:k", &["b"])], false);
    // Several request values: none may match.
    check(condition.clone(), &[("x:k", &["c", "a"])], false);
    check(condition.clone(), &[("x:k", &["c", "d"])], true);
    // AWS: a negated operator on a missing key is true.
    check(condition, MISSING, true);
}

#[test]
fn if_exists_on_positive_and_negated_operators() {
    let positive = json!({"StringEqualsIfExists": {"x:k": "a"}});
    check(positive.clone(), MISSING, true);
    check(positive.clone(), &[("x:k", &["a"])], true);
    check(positive, &[("x:k", &["b"])], false);
    let negated = json!({"StringNotEqualsIfExists": {"x:k": "a"}});
    check(negated.clone(), MISSING, true);
    check(negated.clone(), &[("x:k", &["a"])], false);
    check(negated, &[("x:k", &["b"])], true);
    // A key present with no values counts as missing.
    check(
        json!({"StringEqualsIfExists": {"x:k": "a"}}),
        &[("x:k", &[])],
        true,
    );
    check(
        json!({"StringEquals": {"x:k": "a"}}),
        &[("x:k", &[])],
        false,
    );
}

#[test]
fn string_equals_ignore_case() {
    let condition = json!({"StringEqualsIgnoreCase": {"aws:username": "Alice"}});
    // Alice's context carries aws:username = "alice".
    check(condition.clone(), MISSING, true);
    check(condition, &[("aws:username", &["ALICE"])], true);
    check(
        json!({"StringEqualsIgnoreCase": {"x:k": "Straße"}}),
        &[("x:k", &["STRAßE"])],
        true,
    );
    check(
        json!({"StringEqualsIgnoreCase": {"x:k": "a*"}}),
        &[("x:k", &["AB"])],
        false,
    );
    let negated = json!({"StringNotEqualsIgnoreCase": {"x:k": ["Alice", "Bob"]}});
    check(negated.clone(), &[("x:k", &["bOB"])], false);
    check(negated.clone(), &[("x:k", &["carol"])], true);
    check(negated, MISSING, true);
    check(
        json!({"StringEqualsIgnoreCaseIfExists": {"x:k": "a"}}),
        MISSING,
        true,
    );
    check(
        json!({"StringNotEqualsIgnoreCaseIfExists": {"x:k": "a"}}),
        &[("x:k", &["A"])],
        false,
    );
}

#[test]
fn string_like_and_not_like() {
    let condition = json!({"StringLike": {"x:k": ["team-*", "svc-??"]}});
    check(condition.clone(), &[("x:k", &["team-a/b:c"])], true);
    check(condition.clone(), &[("x:k", &["svc-ab"])], true);
    check(condition.clone(), &[("x:k", &["svc-abc"])], false);
    check(condition.clone(), &[("x:k", &["Team-a"])], false);
    check(condition, MISSING, false);
    let negated = json!({"StringNotLike": {"x:k": "team-*"}});
    check(negated.clone(), &[("x:k", &["other"])], true);
    check(negated.clone(), &[("x:k", &["team-x"])], false);
    check(negated, MISSING, true);
    check(json!({"StringLikeIfExists": {"x:k": "a*"}}), MISSING, true);
    check(
        json!({"StringLikeIfExists": {"x:k": "a*"}}),
        &[("x:k", &["b"])],
        false,
    );
    check(
        json!({"StringNotLikeIfExists": {"x:k": "a*"}}),
        &[("x:k", &["ab"])],
        false,
    );
    // Request-side wildcards are literal.
    check(
        json!({"StringLike": {"x:k": "team-a"}}),
        &[("x:k", &["team-*"])],
        false,
    );
    check(
        json!({"StringLike": {"x:k": "team-?"}}),
        &[("x:k", &["team-??"])],
        false,
    );
}

#[test]
fn arn_operators_match_component_by_component() {
    let like = json!({"ArnLike": {"aws:SourceArn": "arn:coffer:kms:*:111122223333:key/*"}});
    check(
        like.clone(),
        &[(
            "aws:SourceArn",
            &["arn:coffer:kms:eu-west-1:111122223333:key/x"],
        )],
        true,
    );
    check(
        like.clone(),
        &[(
            "aws:SourceArn",
            &["arn:coffer:kms:eu-west-1:444455556666:key/x"],
        )],
        false,
    );
    // A whole-string glob would let the region's `*` swallow a colon; the
    // component-wise match does not.
    check(
        like.clone(),
        &[(
            "aws:SourceArn",
            &["arn:coffer:kms:eu:west:111122223333:key/x"],
        )],
        false,
    );
    check(like.clone(), &[("aws:SourceArn", &["key/x"])], false);
    check(
        like.clone(),
        &[(
            "aws:SourceArn",
            &["ARN:coffer:kms:eu-west-1:111122223333:key/x"],
        )],
        false,
    );
    check(like, MISSING, false);
    // ArnEquals accepts wildcards too (as in AWS), and the resource part
    // may contain colons.
    let equals = json!({"ArnEquals": {"aws:SourceArn": "arn:coffer:secretsmanager:eu-west-1:111122223333:secret:db-*"}});
    check(
        equals.clone(),
        &[(
            "aws:SourceArn",
            &["arn:coffer:secretsmanager:eu-west-1:111122223333:secret:db-main"],
        )],
        true,
    );
    check(
        equals,
        &[(
            "aws:SourceArn",
            &["arn:coffer:secretsmanager:eu-west-1:111122223333:secret:web"],
        )],
        false,
    );
    let not_like = json!({"ArnNotLike": {"aws:SourceArn": "arn:coffer:kms:*:111122223333:*"}});
    check(
        not_like.clone(),
        &[("aws:SourceArn", &["arn:coffer:kms:x:444455556666:key/y"])],
        true,
    );
    check(
        not_like.clone(),
        &[("aws:SourceArn", &["arn:coffer:kms:x:111122223333:key/y"])],
        false,
    );
    check(not_like.clone(), &[("aws:SourceArn", &["garbage"])], true);
    check(not_like, MISSING, true);
    let not_equals =
        json!({"ArnNotEquals": {"aws:SourceArn": "arn:coffer:kms:x:111122223333:key/y"}});
    check(
        not_equals.clone(),
        &[("aws:SourceArn", &["arn:coffer:kms:x:111122223333:key/y"])],
        false,
    );
    check(
        not_equals,
        &[("aws:SourceArn", &["arn:coffer:kms:x:111122223333:key/z"])],
        true,
    );
    check(
        json!({"ArnLike": {"aws:SourceArn": "*"}}),
        &[("aws:SourceArn", &["anything"])],
        true,
    );
    check(
        json!({"ArnLikeIfExists": {"aws:SourceArn": "arn:a:b:c:d:e"}}),
        MISSING,
        true,
    );
    check(
        json!({"ArnEqualsIfExists": {"aws:SourceArn": "arn:a:b:c:d:e"}}),
        &[("aws:SourceArn", &["arn:a:b:c:d:f"])],
        false,
    );
    check(
        json!({"ArnNotEqualsIfExists": {"aws:SourceArn": "arn:a:b:c:d:e"}}),
        MISSING,
        true,
    );
    check(
        json!({"ArnNotLikeIfExists": {"aws:SourceArn": "arn:a:b:c:d:*"}}),
        &[("aws:SourceArn", &["arn:a:b:c:d:x"])],
        false,
    );
}

#[test]
fn bool_operator() {
    let condition = json!({"Bool": {"aws:SecureTransport": "true"}});
    check(
        condition.clone(),
        &[("aws:SecureTransport", &["true"])],
        true,
    );
    check(
        condition.clone(),
        &[("aws:SecureTransport", &["TRUE"])],
        true,
    );
    check(
        condition.clone(),
        &[("aws:SecureTransport", &["false"])],
        false,
    );
    check(
        condition.clone(),
        &[("aws:SecureTransport", &["yes"])],
        false,
    );
    check(condition.clone(), &[("aws:SecureTransport", &["1"])], false);
    check(condition, MISSING, false);
    // JSON booleans are accepted as values.
    check(
        json!({"Bool": {"aws:SecureTransport": false}}),
        &[("aws:SecureTransport", &["false"])],
        true,
    );
    check(
        json!({"BoolIfExists": {"aws:SecureTransport": "true"}}),
        MISSING,
        true,
    );
    check(
        json!({"BoolIfExists": {"aws:SecureTransport": "true"}}),
        &[("aws:SecureTransport", &["false"])],
        false,
    );
}

#[test]
fn numeric_operators() {
    let cases: &[(&str, [bool; 3])] = &[
        // results for request 9, 10, 11 against policy 10
        ("NumericEquals", [false, true, false]),
        ("NumericNotEquals", [true, false, true]),
        ("NumericLessThan", [true, false, false]),
        ("NumericLessThanEquals", [true, true, false]),
        ("NumericGreaterThan", [false, false, true]),
        ("NumericGreaterThanEquals", [false, true, true]),
    ];
    for (operator, expected) in cases {
        for (request, wanted) in ["9", "10", "11"].iter().zip(expected) {
            check(
                json!({*operator: {"x:n": "10"}}),
                &[("x:n", &[request])],
                *wanted,
            );
            // A JSON number works as well as a string.
            check(
                json!({*operator: {"x:n": 10}}),
                &[("x:n", &[request])],
                *wanted,
            );
        }
        let negated = *operator == "NumericNotEquals";
        check(json!({*operator: {"x:n": "10"}}), MISSING, negated);
        check(
            json!({*operator: {"x:n": "10"}}),
            &[("x:n", &["ten"])],
            negated,
        );
        check(
            json!({format!("{operator}IfExists"): {"x:n": "10"}}),
            MISSING,
            true,
        );
    }
    check(
        json!({"NumericEquals": {"x:n": "1.50"}}),
        &[("x:n", &["1.5"])],
        true,
    );
    check(
        json!({"NumericLessThan": {"x:n": "-2.5"}}),
        &[("x:n", &["-3"])],
        true,
    );
    check(
        json!({"NumericLessThan": {"x:n": "9007199254740993"}}),
        &[("x:n", &["9007199254740992"])],
        true,
    );
    check(
        json!({"NumericEquals": {"x:n": ["1", "2"]}}),
        &[("x:n", &["2"])],
        true,
    );
    check(
        json!({"NumericNotEquals": {"x:n": ["1", "2"]}}),
        &[("x:n", &["2"])],
        false,
    );
    check(
        json!({"NumericGreaterThan": {"x:n": ["100", "5"]}}),
        &[("x:n", &["6"])],
        true,
    );
}

#[test]
fn date_operators() {
    let limit = "2024-06-01T00:00:00Z";
    let cases: &[(&str, [bool; 3])] = &[
        // results for request one second before, at, one second after
        ("DateEquals", [false, true, false]),
        ("DateNotEquals", [true, false, true]),
        ("DateLessThan", [true, false, false]),
        ("DateLessThanEquals", [true, true, false]),
        ("DateGreaterThan", [false, false, true]),
        ("DateGreaterThanEquals", [false, true, true]),
    ];
    let requests = [
        "2024-05-31T23:59:59Z",
        "2024-06-01T00:00:00Z",
        "2024-06-01T00:00:01Z",
    ];
    for (operator, expected) in cases {
        for (request, wanted) in requests.iter().zip(expected) {
            check(
                json!({*operator: {"aws:CurrentTime": limit}}),
                &[("aws:CurrentTime", &[request])],
                *wanted,
            );
        }
        let negated = *operator == "DateNotEquals";
        check(
            json!({*operator: {"aws:CurrentTime": limit}}),
            MISSING,
            negated,
        );
        check(
            json!({*operator: {"aws:CurrentTime": limit}}),
            &[("aws:CurrentTime", &["soon"])],
            negated,
        );
        check(
            json!({format!("{operator}IfExists"): {"aws:CurrentTime": limit}}),
            MISSING,
            true,
        );
    }
    // Epoch seconds and offsets on either side.
    check(
        json!({"DateEquals": {"aws:EpochTime": "1717200000"}}),
        &[("aws:EpochTime", &["2024-06-01T02:00:00+02:00"])],
        true,
    );
    check(
        json!({"DateEquals": {"aws:CurrentTime": "2024-06-01"}}),
        &[("aws:CurrentTime", &["1717200000"])],
        true,
    );
    check(
        json!({"DateLessThan": {"aws:CurrentTime": 1717200000}}),
        &[("aws:CurrentTime", &["2024-05-31T23:59:59.999Z"])],
        true,
    );
}

#[test]
fn ip_address_operators() {
    let condition = json!({"IpAddress": {"aws:SourceIp": ["203.0.113.0/24", "2001:DB8::/32"]}});
    check(
        condition.clone(),
        &[("aws:SourceIp", &["203.0.113.5"])],
        true,
    );
    check(
        condition.clone(),
        &[("aws:SourceIp", &["198.51.100.1"])],
        false,
    );
    check(
        condition.clone(),
        &[("aws:SourceIp", &["2001:db8::1"])],
        true,
    );
    check(
        condition.clone(),
        &[("aws:SourceIp", &["::ffff:203.0.113.5"])],
        true,
    );
    check(
        condition.clone(),
        &[("aws:SourceIp", &["203.0.113.5/32"])],
        false,
    );
    check(
        condition.clone(),
        &[("aws:SourceIp", &["not-an-ip"])],
        false,
    );
    check(condition, MISSING, false);
    let negated = json!({"NotIpAddress": {"aws:SourceIp": "203.0.113.0/24"}});
    check(
        negated.clone(),
        &[("aws:SourceIp", &["198.51.100.1"])],
        true,
    );
    check(
        negated.clone(),
        &[("aws:SourceIp", &["203.0.113.200"])],
        false,
    );
    check(negated.clone(), &[("aws:SourceIp", &["not-an-ip"])], true);
    check(negated, MISSING, true);
    check(
        json!({"IpAddress": {"aws:SourceIp": "192.0.2.7"}}),
        &[("aws:SourceIp", &["192.0.2.7"])],
        true,
    );
    check(
        json!({"IpAddressIfExists": {"aws:SourceIp": "192.0.2.0/24"}}),
        MISSING,
        true,
    );
    check(
        json!({"NotIpAddressIfExists": {"aws:SourceIp": "192.0.2.0/24"}}),
        &[("aws:SourceIp", &["192.0.2.1"])],
        false,
    );
}

#[test]
fn null_operator() {
    check(json!({"Null": {"x:k": "true"}}), MISSING, true);
    check(json!({"Null": {"x:k": "true"}}), &[("x:k", &["v"])], false);
    check(json!({"Null": {"x:k": "false"}}), &[("x:k", &["v"])], true);
    check(json!({"Null": {"x:k": "false"}}), MISSING, false);
    check(json!({"Null": {"x:k": true}}), &[("x:k", &[])], true);
    check(json!({"Null": {"x:k": ["true", "false"]}}), MISSING, true);
    check(
        json!({"Null": {"x:k": ["true", "false"]}}),
        &[("x:k", &["v"])],
        true,
    );
}

#[test]
fn keys_within_a_block_and_blocks_are_anded() {
    let keys = json!({"StringEquals": {"x:a": "1", "x:b": "2"}});
    check(keys.clone(), &[("x:a", &["1"]), ("x:b", &["2"])], true);
    check(keys.clone(), &[("x:a", &["1"])], false);
    check(keys, &[("x:a", &["1"]), ("x:b", &["3"])], false);
    let blocks = json!({
        "StringEquals": {"x:a": "1"},
        "NumericLessThan": {"x:n": "5"},
        "Bool": {"x:flag": "true"}
    });
    check(
        blocks.clone(),
        &[("x:a", &["1"]), ("x:n", &["4"]), ("x:flag", &["true"])],
        true,
    );
    check(
        blocks,
        &[("x:a", &["1"]), ("x:n", &["6"]), ("x:flag", &["true"])],
        false,
    );
    check(json!({}), MISSING, true);
}

#[test]
fn condition_keys_are_case_insensitive() {
    check(
        json!({"StringEquals": {"KMS:VIASERVICE": "x"}}),
        &[("kms:viaservice", &["x"])],
        true,
    );
    check(
        json!({"StringEquals": {"kms:viaservice": "x"}}),
        &[("Kms:ViaService", &["x"])],
        true,
    );
    // The values are not.
    check(
        json!({"StringEquals": {"kms:ViaService": "x"}}),
        &[("kms:ViaService", &["X"])],
        false,
    );
}

#[test]
fn for_all_values() {
    let condition = json!({"ForAllValues:StringEquals": {"aws:TagKeys": ["a", "b"]}});
    check(condition.clone(), &[("aws:TagKeys", &["a"])], true);
    check(condition.clone(), &[("aws:TagKeys", &["b", "a"])], true);
    check(condition.clone(), &[("aws:TagKeys", &["a", "c"])], false);
    check(condition.clone(), &[("aws:TagKeys", &[])], true);
    check(condition, MISSING, true);
    let negated = json!({"ForAllValues:StringNotEquals": {"aws:TagKeys": ["a", "b"]}});
    check(negated.clone(), &[("aws:TagKeys", &["c", "d"])], true);
    check(negated.clone(), &[("aws:TagKeys", &["c", "a"])], false);
    check(negated, MISSING, true);
    let like = json!({"ForAllValues:StringLike": {"aws:TagKeys": "team-*"}});
    check(
        like.clone(),
        &[("aws:TagKeys", &["team-a", "team-b"])],
        true,
    );
    check(like, &[("aws:TagKeys", &["team-a", "other"])], false);
    check(
        json!({"ForAllValues:StringEqualsIfExists": {"aws:TagKeys": "a"}}),
        MISSING,
        true,
    );
    check(
        json!({"ForAllValues:NumericLessThan": {"x:n": "10"}}),
        &[("x:n", &["1", "2"])],
        true,
    );
    check(
        json!({"ForAllValues:NumericLessThan": {"x:n": "10"}}),
        &[("x:n", &["1", "20"])],
        false,
    );
}

#[test]
fn for_any_value() {
    let condition = json!({"ForAnyValue:StringEquals": {"aws:TagKeys": ["a", "b"]}});
    check(condition.clone(), &[("aws:TagKeys", &["c", "a"])], true);
    check(condition.clone(), &[("aws:TagKeys", &["c"])], false);
    check(condition.clone(), &[("aws:TagKeys", &[])], false);
    check(condition, MISSING, false);
    let negated = json!({"ForAnyValue:StringNotEquals": {"aws:TagKeys": ["a", "b"]}});
    check(negated.clone(), &[("aws:TagKeys", &["a", "c"])], true);
    check(negated.clone(), &[("aws:TagKeys", &["a", "b"])], false);
    check(negated, MISSING, false);
    // IfExists does not change a set qualifier's rule for a missing key.
    check(
        json!({"ForAnyValue:StringEqualsIfExists": {"aws:TagKeys": "a"}}),
        MISSING,
        false,
    );
    check(
        json!({"ForAnyValue:StringLike": {"aws:TagKeys": "team-*"}}),
        &[("aws:TagKeys", &["x", "team-q"])],
        true,
    );
    check(
        json!({"ForAnyValue:IpAddress": {"x:ips": "10.0.0.0/8"}}),
        &[("x:ips", &["192.0.2.1", "10.1.1.1"])],
        true,
    );
    check(
        json!({"ForAnyValue:Bool": {"x:flags": "true"}}),
        &[("x:flags", &["false", "true"])],
        true,
    );
}

#[test]
fn unqualified_operators_on_multi_valued_keys() {
    check(
        json!({"StringEquals": {"aws:TagKeys": "a"}}),
        &[("aws:TagKeys", &["b", "a"])],
        true,
    );
    check(
        json!({"StringNotEquals": {"aws:TagKeys": "a"}}),
        &[("aws:TagKeys", &["b", "a"])],
        false,
    );
    check(
        json!({"StringNotEquals": {"aws:TagKeys": "a"}}),
        &[("aws:TagKeys", &["b", "c"])],
        true,
    );
}

#[test]
fn policy_variables_in_condition_values() {
    let condition = json!({"StringEquals": {
        "aws:PrincipalArn": "arn:coffer:iam::${aws:PrincipalAccount}:user/${aws:username}"
    }});
    check(condition, MISSING, true);
    let like = json!({"StringLike": {"x:path": "home/${aws:username}/*"}});
    check(like.clone(), &[("x:path", &["home/alice/notes"])], true);
    check(like.clone(), &[("x:path", &["home/bob/notes"])], false);
    // An unresolvable variable matches nothing: the positive operator is
    // false. The negated one is not known to hold, so an Allow holding it
    // does not apply (and a Deny does: see the test below).
    check(
        json!({"StringEquals": {"x:k": "${x:absent}"}}),
        &[("x:k", &[""])],
        false,
    );
    check(
        json!({"StringNotEquals": {"x:k": "${x:absent}"}}),
        &[("x:k", &["v"])],
        false,
    );
    check(
        json!({"StringNotEquals": {"x:k": ["${x:absent}", "v"]}}),
        &[("x:k", &["v"])],
        false,
    );
    check(
        json!({"ArnNotLike": {"aws:SourceArn": "arn:coffer:kms:*:${x:absent}:key/*"}}),
        &[(
            "aws:SourceArn",
            &["arn:coffer:kms:eu-west-1:111122223333:key/x"],
        )],
        false,
    );
    check(
        json!({"StringNotEquals": {"x:k": "${x:absent, 'v'}"}}),
        &[("x:k", &["w"])],
        true,
    );
    check(
        json!({"StringEquals": {"x:k": "${x:absent, 'fallback'}"}}),
        &[("x:k", &["fallback"])],
        true,
    );
    // A multi-valued key does not resolve.
    check(
        json!({"StringEquals": {"x:k": "${x:many}"}}),
        &[("x:k", &["a"]), ("x:many", &["a", "b"])],
        false,
    );
    // Variables work in ARN operators and ignore-case too.
    check(
        json!({"ArnLike": {"aws:SourceArn": "arn:coffer:kms:*:${aws:PrincipalAccount}:key/*"}}),
        &[(
            "aws:SourceArn",
            &["arn:coffer:kms:eu-west-1:111122223333:key/x"],
        )],
        true,
    );
    check(
        json!({"StringEqualsIgnoreCase": {"x:k": "${aws:username}"}}),
        &[("x:k", &["ALICE"])],
        true,
    );
}

/// A negated match on a variable the request cannot resolve: an Allow
/// does not apply, a Deny does. A role carries no `aws:username`.
#[test]
fn an_unresolved_variable_in_a_negated_match_widens_no_allow() {
    let role = || PrincipalInfo::role("coffer", "111122223333", "ops");
    let key = "arn:coffer:kms:eu-west-1:111122223333:key/k1";
    let decide = |statement: Value| {
        let policy = crate::support::single_statement(statement);
        coffer_policy::evaluate(&[&policy], &RequestContext::new(role(), "kms:Decrypt", key))
    };
    let not_resource = json!({
        "Effect": "Allow", "Action": "kms:Decrypt",
        "NotResource": "arn:coffer:kms:*:*:key/${aws:username}"
    });
    assert!(!decide(not_resource).is_allowed());
    let not_equals = json!({
        "Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*",
        "Condition": {"StringNotEquals": {"aws:PrincipalArn": "${aws:username}"}}
    });
    assert!(!decide(not_equals).is_allowed());
    let policy = crate::support::identity(&json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "kms:Decrypt",
             "NotResource": "arn:coffer:kms:*:*:key/${aws:username}"},
            {"Effect": "Deny", "Action": "kms:Encrypt", "Resource": "*",
             "Condition": {"StringNotEquals": {"aws:PrincipalArn": "${aws:username}"}}}
        ]
    }));
    for action in ["kms:Decrypt", "kms:Encrypt"] {
        let context = RequestContext::new(role(), action, key);
        assert_eq!(
            coffer_policy::evaluate(&[&policy], &context).effect,
            DecisionEffect::ExplicitDeny,
            "{action}"
        );
    }
    let context = RequestContext::new(role(), "kms:GenerateDataKey", key);
    assert!(coffer_policy::evaluate(&[&policy], &context).is_allowed());
}

#[test]
fn version_2008_keeps_dollar_braces_literal() {
    let policy = crate::support::identity(&json!({
        "Version": "2008-10-17",
        "Statement": {
            "Effect": "Allow",
            "Action": "kms:Encrypt",
            "Resource": "*",
            "Condition": {"StringEquals": {"x:k": "${aws:username}"}}
        }
    }));
    let literal = crate::support::context_with(&[("x:k", &["${aws:username}"])]);
    assert!(coffer_policy::evaluate(&[&policy], &literal).is_allowed());
    let substituted = crate::support::context_with(&[("x:k", &["alice"])]);
    assert!(!coffer_policy::evaluate(&[&policy], &substituted).is_allowed());
}

/// A request that spells one tag or encryption-context key in two cases
/// (`env` and `Env`) carries two values for the one condition key; each is
/// judged on its own, the stricter way for the statement's effect.
#[test]
fn a_key_spelled_in_two_cases_cannot_slip_past_a_condition() {
    use coffer_policy::{DecisionEffect, evaluate};

    use crate::support::{context_with, single_statement};
    let two_spellings: &[(&str, &[&str])] = &[("aws:RequestTag/env", &["dev", "prod"])];
    let allow_all = single_statement(json!({"Effect": "Allow", "Action": "*", "Resource": "*"}));
    let deny_unless_dev = single_statement(json!({
        "Effect": "Deny", "Action": "*", "Resource": "*",
        "Condition": {"StringNotEquals": {"aws:RequestTag/env": "dev"}},
    }));
    assert_eq!(
        evaluate(
            &[&allow_all, &deny_unless_dev],
            &context_with(two_spellings)
        )
        .effect,
        DecisionEffect::ExplicitDeny
    );
    // One spelling with an allowed value passes the same guard.
    assert!(
        evaluate(
            &[&allow_all, &deny_unless_dev],
            &context_with(&[("aws:RequestTag/env", &["dev"])])
        )
        .is_allowed()
    );
    // An Allow needs every spelling to qualify.
    let tenant_a = json!({"StringEquals": {"kms:EncryptionContext:tenant": "A"}});
    check(
        tenant_a.clone(),
        &[("kms:EncryptionContext:tenant", &["A", "B"])],
        false,
    );
    check(tenant_a, &[("kms:EncryptionContext:tenant", &["A"])], true);
    // A set qualifier does not loosen it: the key has one value in AWS.
    let not_secret =
        json!({"ForAnyValue:StringNotEquals": {"kms:EncryptionContext:env": "secret"}});
    check(
        not_secret.clone(),
        &[("kms:EncryptionContext:env", &["secret", "x"])],
        false,
    );
    check(not_secret, &[("kms:EncryptionContext:env", &["x"])], true);
    let deny_all_unless_dev = single_statement(json!({
        "Effect": "Deny", "Action": "*", "Resource": "*",
        "Condition": {"ForAllValues:StringNotEquals": {"aws:RequestTag/env": "dev"}},
    }));
    assert_eq!(
        evaluate(
            &[&allow_all, &deny_all_unless_dev],
            &context_with(two_spellings)
        )
        .effect,
        DecisionEffect::ExplicitDeny
    );
    // Keys that are multi-valued keep AWS's rule: any value matches.
    check(
        json!({"StringEquals": {"aws:TagKeys": "env"}}),
        &[("aws:TagKeys", &["env", "Env"])],
        true,
    );
}
