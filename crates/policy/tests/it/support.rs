use coffer_policy::{Policy, PolicyError, PrincipalInfo, RequestContext};
use serde_json::{Value, json};

pub(crate) const ACCOUNT: &str = "111122223333";
pub(crate) const OTHER_ACCOUNT: &str = "444455556666";
pub(crate) const KEY_ARN: &str = "arn:coffer:kms:eu-west-1:111122223333:key/1234abcd";
pub(crate) const OTHER_KEY_ARN: &str = "arn:coffer:kms:eu-west-1:111122223333:key/5678efgh";

pub(crate) fn alice() -> PrincipalInfo {
    PrincipalInfo::user("coffer", ACCOUNT, "alice")
}

pub(crate) fn identity(document: &Value) -> Policy {
    Policy::parse_identity(&document.to_string())
        .unwrap_or_else(|error| panic!("identity policy should parse: {error}\n{document:#}"))
}

pub(crate) fn resource(document: &Value) -> Policy {
    Policy::parse_resource(&document.to_string())
        .unwrap_or_else(|error| panic!("resource policy should parse: {error}\n{document:#}"))
}

pub(crate) fn identity_error(document: &str) -> PolicyError {
    match Policy::parse_identity(document) {
        Ok(policy) => panic!("expected an error, parsed {policy:?}\n{document}"),
        Err(error) => error,
    }
}

pub(crate) fn resource_error(document: &str) -> PolicyError {
    match Policy::parse_resource(document) {
        Ok(policy) => panic!("expected an error, parsed {policy:?}\n{document}"),
        Err(error) => error,
    }
}

/// A one-statement identity policy (Version 2012-10-17) from `statement`.
pub(crate) fn single_statement(statement: Value) -> Policy {
    identity(&json!({"Version": "2012-10-17", "Statement": [statement]}))
}

/// Alice calling kms:Encrypt on KEY_ARN with the given condition values.
pub(crate) fn context_with(values: &[(&str, &[&str])]) -> RequestContext {
    let mut context = RequestContext::new(alice(), "kms:Encrypt", KEY_ARN);
    for (key, key_values) in values {
        context.set_values(key, key_values.iter().copied());
    }
    context
}

/// Whether an Allow statement with `condition` allows a request carrying
/// `values`.
pub(crate) fn condition_holds(condition: Value, values: &[(&str, &[&str])]) -> bool {
    let policy = single_statement(json!({
        "Effect": "Allow",
        "Action": "kms:Encrypt",
        "Resource": "*",
        "Condition": condition,
    }));
    coffer_policy::evaluate(&[&policy], &context_with(values)).is_allowed()
}
