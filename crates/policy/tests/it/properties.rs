//! Property tests: the parser never panics, glob matching agrees with a
//! reference implementation, and an applicable Deny always wins.

use coffer_policy::{
    DecisionEffect, Policy, PolicyKind, PrincipalInfo, RequestContext, authorize, evaluate,
    evaluate_resource_policy, wildcard_match,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::support::{ACCOUNT, alice};

// ---------------------------------------------------------------- parser

const WORDS: &[&str] = &[
    "Version",
    "Id",
    "Statement",
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
    "AWS",
    "Service",
    "Federated",
    "StringEquals",
    "StringNotEqualsIfExists",
    "ForAnyValue:StringLike",
    "ForAllValues:StringEquals",
    "Null",
    "NullIfExists",
    "DateLessThan",
    "IpAddress",
    "NotIpAddress",
    "ArnLike",
    "Bool",
    "NumericGreaterThanEquals",
    "aws:SourceIp",
    "kms:ViaService",
    "aws:CurrentTime",
    "aws:TagKeys",
    "*",
    "Allow",
    "Deny",
    "2012-10-17",
    "2008-10-17",
    "kms:*",
    "kms:Encrypt",
    "kms:Gen*",
    "arn:coffer:kms:eu-west-1:111122223333:key/*",
    "arn:coffer:kms:eu-west-1:111122223333:key/k",
    "111122223333",
    "arn:coffer:iam::111122223333:root",
    "arn:coffer:iam::111122223333:user/root",
    "arn:coffer:iam::111122223333:ROOT",
    "10.0.0.0/8",
    "::/0",
    "2024-01-01T00:00:00Z",
    "1700000000",
    "true",
    "false",
    "10",
    "-2.5",
    "${aws:username}",
    "${aws:username, 'x'}",
    "${",
    "${*}",
    "",
    "arn:",
    "arn:::::",
    "\u{0}",
    "é",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(WORDS).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        6 => word().prop_map(Value::String),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<i64>().prop_map(|number| json!(number)),
        1 => any::<f64>().prop_map(|number| json!(number)),
        1 => Just(Value::Null),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A document shaped like a policy, with random parts.
fn policy_like() -> impl Strategy<Value = Value> {
    let statement = prop::collection::vec((word(), json_value()), 0..8)
        .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>()));
    (
        prop::collection::vec(statement, 0..4),
        word(),
        any::<bool>(),
    )
        .prop_map(|(statements, version, single)| {
            let statement = if single && !statements.is_empty() {
                statements[0].clone()
            } else {
                Value::Array(statements)
            };
            json!({"Version": version, "Statement": statement})
        })
}

fn parse_and_evaluate_without_panicking(document: &str) {
    for kind in [PolicyKind::Identity, PolicyKind::Resource] {
        if let Ok(policy) = Policy::parse(document, kind) {
            let context = RequestContext::new(
                alice(),
                "kms:Encrypt",
                "arn:coffer:kms:eu-west-1:111122223333:key/k",
            )
            .with_values("aws:TagKeys", ["a", "b"])
            .with_value("aws:SourceIp", "10.1.2.3")
            .with_value("aws:CurrentTime", "2024-01-01T00:00:00Z");
            let _ = evaluate(&[&policy], &context);
            let _ = evaluate_resource_policy(&policy, &context);
            let _ = authorize(Some(&policy), &[&policy], &context);
        }
    }
}

const VALID: &str = r#"{"Version": "2012-10-17", "Statement": [{"Sid": "A", "Effect": "Allow",
"Principal": {"AWS": ["111122223333", "arn:coffer:iam::111122223333:user/alice"]},
"Action": ["kms:Encrypt", "kms:Gen*"], "Resource": "arn:coffer:kms:*:111122223333:key/*",
"Condition": {"StringEquals": {"kms:ViaService": "secrets.${aws:PrincipalAccount}"},
"ForAnyValue:StringLike": {"aws:TagKeys": ["a*", "b?"]}, "IpAddress": {"aws:SourceIp": "10.0.0.0/8"},
"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}, "Null": {"x:y": "true"}}}]}"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parser_never_panics_on_arbitrary_text(text in "\\PC*") {
        parse_and_evaluate_without_panicking(&text);
    }

    #[test]
    fn parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        parse_and_evaluate_without_panicking(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn parser_never_panics_on_arbitrary_json(value in json_value()) {
        parse_and_evaluate_without_panicking(&value.to_string());
    }

    #[test]
    fn parser_never_panics_on_policy_shaped_json(value in policy_like()) {
        parse_and_evaluate_without_panicking(&value.to_string());
    }

    #[test]
    fn parser_never_panics_on_mutated_policies(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0..3_u8, any::<char>()), 1..6)
    ) {
        let mut characters: Vec<char> = VALID.chars().collect();
        for (index, operation, character) in edits {
            if characters.is_empty() {
                break;
            }
            let position = index.index(characters.len());
            match operation {
                0 => { characters.remove(position); }
                1 => characters.insert(position, character),
                _ => characters[position] = character,
            }
        }
        let document: String = characters.into_iter().collect();
        parse_and_evaluate_without_panicking(&document);
    }
}

#[test]
fn the_mutation_seed_is_valid() {
    assert!(Policy::parse_resource(VALID).is_ok());
}

// ------------------------------------------------------------------ glob

/// The obvious recursive definition, over characters.
fn reference_match(pattern: &[char], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('*', rest)) => (0..=text.len()).any(|skip| reference_match(rest, &text[skip..])),
        Some(('?', rest)) => !text.is_empty() && reference_match(rest, &text[1..]),
        Some((literal, rest)) => text.first() == Some(literal) && reference_match(rest, &text[1..]),
    }
}

const GLOB_ALPHABET: &[char] = &['a', 'b', '/', ':', '*', '?', 'é', '%', '.', '\0', '$', '{'];

fn glob_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(GLOB_ALPHABET), 0..max)
        .prop_map(|characters| characters.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn glob_agrees_with_the_reference(pattern in glob_text(9), text in glob_text(14)) {
        let pattern_chars: Vec<char> = pattern.chars().collect();
        let text_chars: Vec<char> = text.chars().collect();
        prop_assert_eq!(
            wildcard_match(&pattern, &text),
            reference_match(&pattern_chars, &text_chars),
            "pattern {:?} text {:?}", pattern, text
        );
    }

    #[test]
    fn literal_patterns_match_only_themselves(pattern in glob_text(10), text in glob_text(10)) {
        let literal: String = pattern.chars().filter(|character| *character != '*' && *character != '?').collect();
        prop_assert_eq!(wildcard_match(&literal, &text), literal == text);
    }

    #[test]
    fn a_pattern_matches_itself_read_literally(pattern in glob_text(12)) {
        // Whatever metacharacters it contains, a request equal to the
        // pattern's text matches it (the policy's wildcards cover them).
        prop_assert!(wildcard_match(&pattern, &pattern));
    }
}

// ----------------------------------------------------------- deny wins

const ACTIONS: &[&str] = &[
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "secretsmanager:GetSecretValue",
    "ssm:GetParameter",
];
const RESOURCES: &[&str] = &[
    "arn:coffer:kms:eu-west-1:111122223333:key/k1",
    "arn:coffer:kms:eu-west-1:111122223333:key/k2",
    "arn:coffer:secretsmanager:eu-west-1:111122223333:secret:db",
    "arn:coffer:ssm:eu-west-1:111122223333:parameter/app/x",
];
const ACTION_PATTERNS: &[&str] = &[
    "*",
    "kms:*",
    "kms:Encrypt",
    "kms:Gen*",
    "secretsmanager:*",
    "ssm:Get?arameter",
    "kms:Decrypt",
];
const RESOURCE_PATTERNS: &[&str] = &[
    "*",
    "arn:coffer:kms:*:111122223333:key/*",
    "arn:coffer:kms:eu-west-1:111122223333:key/k1",
    "arn:coffer:secretsmanager:*:*:secret:*",
    "arn:coffer:ssm:eu-west-1:111122223333:parameter/*",
];

/// Ways to write a deny that certainly covers `action` / `resource`.
fn covering_action(action: &str, form: u8) -> String {
    let service = action.split(':').next().unwrap_or("*");
    match form % 5 {
        0 => action.to_owned(),
        1 => action.to_ascii_uppercase(),
        2 => "*".to_owned(),
        3 => format!("{service}:*"),
        _ => format!("{}*", &action[..action.len() - 2]),
    }
}

fn covering_resource(resource: &str, form: u8) -> String {
    match form % 3 {
        0 => resource.to_owned(),
        1 => "*".to_owned(),
        _ => format!("{}*", &resource[..resource.len() - 1]),
    }
}

fn allow_statement() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(prop::sample::select(ACTION_PATTERNS), 1..3),
        prop::collection::vec(prop::sample::select(RESOURCE_PATTERNS), 1..3),
    )
        .prop_map(|(actions, resources)| json!({"Effect": "Allow", "Action": actions, "Resource": resources}))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_applicable_deny_always_wins(
        action in prop::sample::select(ACTIONS),
        resource in prop::sample::select(RESOURCES),
        allows in prop::collection::vec(allow_statement(), 0..12),
        deny_position in any::<prop::sample::Index>(),
        action_form in any::<u8>(),
        resource_form in any::<u8>(),
        with_condition in any::<bool>(),
    ) {
        let mut deny = json!({
            "Sid": "TheDeny",
            "Effect": "Deny",
            "Action": covering_action(action, action_form),
            "Resource": covering_resource(resource, resource_form),
        });
        if with_condition {
            // A condition that holds for this request.
            deny["Condition"] = json!({"StringNotEquals": {"kms:ViaService": "never"}});
        }
        let mut statements = allows.clone();
        let position = deny_position.index(statements.len() + 1);
        statements.insert(position, deny.clone());

        let identity_policy = crate::support::identity(&json!({"Statement": statements}));
        let context = RequestContext::new(alice(), action, resource);
        let decision = evaluate(&[&identity_policy], &context);
        prop_assert_eq!(decision.effect, DecisionEffect::ExplicitDeny);
        prop_assert_eq!(decision.statement.unwrap().statement_index, position);

        // The same in a resource policy, whatever the allows' principals.
        let with_principals: Vec<Value> = statements
            .into_iter()
            .enumerate()
            .map(|(index, mut statement)| {
                statement["Principal"] = match index % 3 {
                    // The deny names everyone or the whole account, so it
                    // covers the root as well as alice.
                    _ if index == position && action_form % 2 == 0 => json!("*"),
                    _ if index == position => json!({"AWS": ACCOUNT}),
                    0 => json!("*"),
                    1 => json!({"AWS": ACCOUNT}),
                    _ => json!({"AWS": "arn:coffer:iam::111122223333:user/alice"}),
                };
                statement
            })
            .collect();
        let resource_policy = crate::support::resource(&json!({"Statement": with_principals}));
        prop_assert!(evaluate_resource_policy(&resource_policy, &context).is_explicit_deny());
        let everything = crate::support::identity(&json!({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}));
        prop_assert_eq!(
            authorize(Some(&resource_policy), &[&everything], &context).effect,
            DecisionEffect::ExplicitDeny
        );
        let root = RequestContext::new(PrincipalInfo::account_root("coffer", ACCOUNT), action, resource);
        prop_assert!(evaluate_resource_policy(&resource_policy, &root).is_explicit_deny());
    }

    #[test]
    fn allow_only_policies_never_deny_explicitly(
        action in prop::sample::select(ACTIONS),
        resource in prop::sample::select(RESOURCES),
        allows in prop::collection::vec(allow_statement(), 1..10),
    ) {
        let policy = crate::support::identity(&json!({"Statement": allows}));
        let decision = evaluate(&[&policy], &RequestContext::new(alice(), action, resource));
        prop_assert_ne!(decision.effect, DecisionEffect::ExplicitDeny);
        prop_assert_eq!(decision.statement.is_some(), decision.effect == DecisionEffect::Allowed);
    }
}
