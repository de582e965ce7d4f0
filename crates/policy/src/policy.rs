//! Policy documents: the grammar, strict validation and compilation into
//! the form the evaluator runs.

use std::collections::BTreeSet;

use crate::condition::{ConditionClause, parse_condition_element};
use crate::context::RequestContext;
use crate::error::{PolicyError, quoted};
use crate::glob::{CaseMode, NoVariables, Pattern, PatternSyntax, split_arn_components};
use crate::json::{JsonValue, parse_strict};
use crate::principal::{PrincipalElement, parse_principal_entries};

/// The largest policy document accepted, in bytes (AWS KMS's key policy
/// limit).
pub const MAX_POLICY_BYTES: usize = 32 * 1024;

/// Where a policy is attached, which decides whether statements name a
/// principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Attached to a principal (from the config file): statements must not
    /// have `Principal`/`NotPrincipal`.
    Identity,
    /// Attached to a resource (key policy, secret resource policy, CA
    /// policy): every statement must have `Principal` or `NotPrincipal`.
    Resource,
}

/// The policy language version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyVersion {
    /// `2012-10-17`: policy variables (`${aws:username}`) are expanded in
    /// `Resource`/`NotResource` and in string and ARN condition values.
    V2012_10_17,
    /// `2008-10-17`, also the default when `Version` is absent (as in AWS):
    /// `${...}` is literal text.
    V2008_10_17,
}

impl PolicyVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyVersion::V2012_10_17 => "2012-10-17",
            PolicyVersion::V2008_10_17 => "2008-10-17",
        }
    }

    fn expands_variables(self) -> bool {
        self == PolicyVersion::V2012_10_17
    }
}

/// A statement's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    Allow,
    Deny,
}

/// A validated, compiled policy. Patterns are compiled once here so that
/// evaluation does no parsing and (outside policy variables in
/// `StringEqualsIgnoreCase`) no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    kind: PolicyKind,
    version: PolicyVersion,
    id: Option<String>,
    statements: Vec<Statement>,
    /// The condition keys the Condition blocks name (lowercased, sorted,
    /// unique); `None` when policy variables may read any key.
    condition_keys: Option<Vec<String>>,
}

/// Whether any string or member name of `value` holds `${`.
fn mentions_variables(value: &JsonValue) -> bool {
    match value {
        JsonValue::String(text) => text.contains("${"),
        JsonValue::Array(items) => items.iter().any(mentions_variables),
        JsonValue::Object(members) => members
            .iter()
            .any(|(name, member)| name.contains("${") || mentions_variables(member)),
        JsonValue::Null | JsonValue::Bool(_) | JsonValue::Number(_) => false,
    }
}

impl Policy {
    /// Parses and validates `document` as a policy of `kind`.
    ///
    /// Strict: documents over [`MAX_POLICY_BYTES`], nested deeper than
    /// [`crate::MAX_NESTING_DEPTH`], with duplicate JSON keys at any level,
    /// unknown fields, unknown condition operators, or any malformed element
    /// are refused with a [`PolicyError`] naming the problem. Element and
    /// operator names are case-sensitive, as AWS spells them.
    pub fn parse(document: &str, kind: PolicyKind) -> Result<Self, PolicyError> {
        if document.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::DocumentTooLarge {
                size: document.len(),
                limit: MAX_POLICY_BYTES,
            });
        }
        let root = parse_strict(document)?;
        let mut policy = compile_document(&root, kind)?;
        // Policy variables can only come from `${` in a string, as decoded
        // (a JSON escape such as `\u0024{` spells one too): checking every
        // string errs on the side of reading conditions.
        let has_variables = mentions_variables(&root);
        let mut keys: Vec<String> = policy.named_condition_keys().map(str::to_owned).collect();
        keys.sort();
        keys.dedup();
        policy.condition_keys = (!has_variables).then_some(keys);
        Ok(policy)
    }

    /// The condition keys this policy's Condition blocks name, lowercased;
    /// `None` when it holds policy variables, which may read any key. A
    /// request needs only these keys for this policy to decide as if it
    /// carried every key.
    pub fn condition_keys(&self) -> Option<&[String]> {
        self.condition_keys.as_deref()
    }

    /// Every condition key (lowercased) a Condition block names, in
    /// document order, repeated as often as it is named.
    pub fn named_condition_keys(&self) -> impl Iterator<Item = &str> {
        self.clauses().map(ConditionClause::lowercase_key)
    }

    /// The keys (lowercased) of every policy variable the policy holds, in
    /// a `Resource`/`NotResource` or a condition value, as decoded from the
    /// JSON, repeated as often as they appear.
    pub fn variable_keys(&self) -> impl Iterator<Item = &str> {
        self.statements.iter().flat_map(|statement| {
            statement
                .resources
                .patterns
                .iter()
                .chain(statement.actions.patterns.iter())
                .chain(
                    statement
                        .conditions
                        .iter()
                        .flat_map(ConditionClause::patterns),
                )
                .flat_map(Pattern::variable_keys)
        })
    }

    /// The condition keys (lowercased) that a `ForAllValues:` operator
    /// reads, in document order, repeated as often as they are.
    pub fn for_all_values_keys(&self) -> impl Iterator<Item = &str> {
        self.clauses()
            .filter(|clause| clause.for_all_values())
            .map(ConditionClause::lowercase_key)
    }

    /// Every statement's condition clauses, in document order.
    fn clauses(&self) -> impl Iterator<Item = &ConditionClause> {
        self.statements
            .iter()
            .flat_map(|statement| statement.conditions.iter())
    }

    /// [`Policy::parse`] for an identity policy.
    pub fn parse_identity(document: &str) -> Result<Self, PolicyError> {
        Self::parse(document, PolicyKind::Identity)
    }

    /// [`Policy::parse`] for a resource policy (e.g. a key policy).
    pub fn parse_resource(document: &str) -> Result<Self, PolicyError> {
        Self::parse(document, PolicyKind::Resource)
    }

    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    pub fn version(&self) -> PolicyVersion {
        self.version
    }

    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }
}

/// One compiled statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    sid: Option<String>,
    effect: Effect,
    principal: Option<PrincipalElement>,
    actions: PatternElement,
    resources: PatternElement,
    conditions: Vec<ConditionClause>,
}

/// `Action`/`NotAction` or `Resource`/`NotResource`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PatternElement {
    negated: bool,
    patterns: Vec<Pattern>,
}

impl Statement {
    pub fn sid(&self) -> Option<&str> {
        self.sid.as_deref()
    }

    pub fn effect(&self) -> Effect {
        self.effect
    }

    pub(crate) fn principal(&self) -> Option<&PrincipalElement> {
        self.principal.as_ref()
    }

    /// Action names compare case-insensitively (`kms:encrypt` is
    /// `kms:Encrypt`). `NotAction` applies to every action it does not list.
    pub(crate) fn action_applies(&self, action: &str) -> bool {
        let listed = self
            .actions
            .patterns
            .iter()
            .any(|pattern| pattern.matches(action, CaseMode::AsciiInsensitive, &NoVariables));
        listed != self.actions.negated
    }

    /// Resource ARNs compare case-sensitively, the whole ARN against the
    /// pattern. `NotResource` applies to every resource it does not list;
    /// when it lists one through a policy variable the request cannot
    /// resolve, an Allow does not apply (the statement cannot be read, as
    /// AWS says) while a Deny does (the stricter reading).
    pub(crate) fn resource_applies(&self, context: &RequestContext) -> bool {
        let resource = context.resource();
        let patterns = &self.resources.patterns;
        let listed = patterns
            .iter()
            .any(|pattern| pattern.matches(resource, CaseMode::Sensitive, context));
        if self.resources.negated
            && !listed
            && self.effect == Effect::Allow
            && patterns.iter().any(|pattern| !pattern.resolves(context))
        {
            return false;
        }
        listed != self.resources.negated
    }

    pub(crate) fn conditions_hold(&self, context: &RequestContext) -> bool {
        self.conditions
            .iter()
            .all(|clause| clause.holds(context, self.effect))
    }
}

const TOP_LEVEL: &str = "the policy document";

fn compile_document(root: &JsonValue, kind: PolicyKind) -> Result<Policy, PolicyError> {
    let JsonValue::Object(fields) = root else {
        return Err(PolicyError::WrongType {
            path: TOP_LEVEL.to_owned(),
            expected: "a JSON object",
        });
    };
    let mut version_value = None;
    let mut id_value = None;
    let mut statement_value = None;
    for (field, value) in fields {
        match field.as_str() {
            "Version" => version_value = Some(value),
            "Id" => id_value = Some(value),
            "Statement" => statement_value = Some(value),
            _ => {
                return Err(PolicyError::UnknownField {
                    path: TOP_LEVEL.to_owned(),
                    field: quoted(field),
                });
            }
        }
    }
    let version = match version_value {
        None => PolicyVersion::V2008_10_17,
        Some(JsonValue::String(text)) => match text.as_str() {
            "2012-10-17" => PolicyVersion::V2012_10_17,
            "2008-10-17" => PolicyVersion::V2008_10_17,
            _ => {
                return Err(PolicyError::UnsupportedVersion {
                    version: quoted(text),
                });
            }
        },
        Some(_) => {
            return Err(PolicyError::WrongType {
                path: "Version".to_owned(),
                expected: "a string",
            });
        }
    };
    let id = match id_value {
        None => None,
        Some(JsonValue::String(text)) => Some(text.clone()),
        Some(_) => {
            return Err(PolicyError::WrongType {
                path: "Id".to_owned(),
                expected: "a string",
            });
        }
    };
    let statement_values: Vec<(String, &JsonValue)> = match statement_value {
        None => return Err(PolicyError::MissingStatement),
        Some(single @ JsonValue::Object(_)) => vec![("Statement".to_owned(), single)],
        Some(JsonValue::Array(items)) => {
            if items.is_empty() {
                return Err(PolicyError::EmptyElement {
                    path: "Statement".to_owned(),
                });
            }
            items
                .iter()
                .enumerate()
                .map(|(index, item)| (format!("Statement[{index}]"), item))
                .collect()
        }
        Some(_) => {
            return Err(PolicyError::WrongType {
                path: "Statement".to_owned(),
                expected: "a statement object or a list of them",
            });
        }
    };
    let mut statements = Vec::with_capacity(statement_values.len());
    let mut seen_sids: BTreeSet<&str> = BTreeSet::new();
    for (path, value) in statement_values {
        statements.push(compile_statement(value, &path, kind, version)?);
    }
    for statement in &statements {
        // Empty Sids are common in generated policies; only real ids must
        // be unique.
        if let Some(sid) = statement.sid.as_deref().filter(|sid| !sid.is_empty())
            && !seen_sids.insert(sid)
        {
            return Err(PolicyError::DuplicateSid { sid: quoted(sid) });
        }
    }
    Ok(Policy {
        kind,
        version,
        id,
        statements,
        condition_keys: None,
    })
}

#[derive(Default)]
struct RawStatement<'a> {
    sid: Option<&'a JsonValue>,
    effect: Option<&'a JsonValue>,
    principal: Option<&'a JsonValue>,
    not_principal: Option<&'a JsonValue>,
    action: Option<&'a JsonValue>,
    not_action: Option<&'a JsonValue>,
    resource: Option<&'a JsonValue>,
    not_resource: Option<&'a JsonValue>,
    condition: Option<&'a JsonValue>,
}

fn compile_statement(
    value: &JsonValue,
    path: &str,
    kind: PolicyKind,
    version: PolicyVersion,
) -> Result<Statement, PolicyError> {
    let JsonValue::Object(fields) = value else {
        return Err(PolicyError::WrongType {
            path: path.to_owned(),
            expected: "an object",
        });
    };
    let mut raw = RawStatement::default();
    for (field, field_value) in fields {
        let slot = match field.as_str() {
            "Sid" => &mut raw.sid,
            "Effect" => &mut raw.effect,
            "Principal" => &mut raw.principal,
            "NotPrincipal" => &mut raw.not_principal,
            "Action" => &mut raw.action,
            "NotAction" => &mut raw.not_action,
            "Resource" => &mut raw.resource,
            "NotResource" => &mut raw.not_resource,
            "Condition" => &mut raw.condition,
            _ => {
                return Err(PolicyError::UnknownField {
                    path: path.to_owned(),
                    field: quoted(field),
                });
            }
        };
        *slot = Some(field_value);
    }

    let sid = match raw.sid {
        None => None,
        Some(JsonValue::String(text)) => Some(text.clone()),
        Some(_) => {
            return Err(PolicyError::WrongType {
                path: format!("{path}.Sid"),
                expected: "a string",
            });
        }
    };
    let effect = match raw.effect {
        None => {
            return Err(PolicyError::MissingEffect {
                path: path.to_owned(),
            });
        }
        Some(JsonValue::String(text)) => match text.as_str() {
            "Allow" => Effect::Allow,
            "Deny" => Effect::Deny,
            _ => {
                return Err(PolicyError::InvalidEffect {
                    path: path.to_owned(),
                    value: quoted(text),
                });
            }
        },
        Some(_) => {
            return Err(PolicyError::WrongType {
                path: format!("{path}.Effect"),
                expected: "the string \"Allow\" or \"Deny\"",
            });
        }
    };
    let conflicting =
        |first: &'static str, second: &'static str| PolicyError::ConflictingElements {
            path: path.to_owned(),
            first,
            second,
        };
    if raw.principal.is_some() && raw.not_principal.is_some() {
        return Err(conflicting("Principal", "NotPrincipal"));
    }
    if raw.action.is_some() && raw.not_action.is_some() {
        return Err(conflicting("Action", "NotAction"));
    }
    if raw.resource.is_some() && raw.not_resource.is_some() {
        return Err(conflicting("Resource", "NotResource"));
    }

    let principal = compile_principal(&raw, path, kind, effect)?;

    // KMS accepts a key policy statement without Action or without Resource,
    // and gives it no effect ("the policy statement has no effect"); an
    // identity policy must have both.
    let matches_nothing = || PatternElement {
        negated: false,
        patterns: Vec::new(),
    };
    let actions = match (raw.action, raw.not_action) {
        (Some(listed), None) => compile_actions(listed, &format!("{path}.Action"), false)?,
        (None, Some(listed)) => compile_actions(listed, &format!("{path}.NotAction"), true)?,
        _ if kind == PolicyKind::Resource => matches_nothing(),
        _ => {
            return Err(PolicyError::MissingAction {
                path: path.to_owned(),
            });
        }
    };
    let resources = match (raw.resource, raw.not_resource) {
        (Some(listed), None) => {
            compile_resources(listed, &format!("{path}.Resource"), false, version)?
        }
        (None, Some(listed)) => {
            compile_resources(listed, &format!("{path}.NotResource"), true, version)?
        }
        _ if kind == PolicyKind::Resource => matches_nothing(),
        _ => {
            return Err(PolicyError::MissingResource {
                path: path.to_owned(),
            });
        }
    };
    let conditions = match raw.condition {
        None => Vec::new(),
        Some(condition) => parse_condition_element(
            condition,
            &format!("{path}.Condition"),
            version.expands_variables(),
        )?,
    };
    Ok(Statement {
        sid,
        effect,
        principal,
        actions,
        resources,
        conditions,
    })
}

fn compile_principal(
    raw: &RawStatement<'_>,
    path: &str,
    kind: PolicyKind,
    effect: Effect,
) -> Result<Option<PrincipalElement>, PolicyError> {
    match kind {
        PolicyKind::Identity => {
            let element = if raw.principal.is_some() {
                Some("Principal")
            } else if raw.not_principal.is_some() {
                Some("NotPrincipal")
            } else {
                None
            };
            match element {
                Some(element) => Err(PolicyError::PrincipalNotAllowed {
                    path: path.to_owned(),
                    element,
                }),
                None => Ok(None),
            }
        }
        PolicyKind::Resource => match (raw.principal, raw.not_principal) {
            (Some(value), _) => Ok(Some(PrincipalElement::Principal(parse_principal_entries(
                value,
                &format!("{path}.Principal"),
            )?))),
            (None, Some(value)) => {
                if effect == Effect::Allow {
                    return Err(PolicyError::NotPrincipalWithAllow {
                        path: path.to_owned(),
                    });
                }
                Ok(Some(PrincipalElement::NotPrincipal(
                    parse_principal_entries(value, &format!("{path}.NotPrincipal"))?,
                )))
            }
            (None, None) => Err(PolicyError::MissingPrincipal {
                path: path.to_owned(),
            }),
        },
    }
}

/// A string or a non-empty list of strings, with the path of each.
fn string_list<'a>(
    value: &'a JsonValue,
    path: &str,
) -> Result<Vec<(String, &'a str)>, PolicyError> {
    match value {
        JsonValue::String(text) => Ok(vec![(path.to_owned(), text.as_str())]),
        JsonValue::Array(items) => {
            if items.is_empty() {
                return Err(PolicyError::EmptyElement {
                    path: path.to_owned(),
                });
            }
            items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    let item_path = format!("{path}[{index}]");
                    match item {
                        JsonValue::String(text) => Ok((item_path, text.as_str())),
                        _ => Err(PolicyError::WrongType {
                            path: item_path,
                            expected: "a string",
                        }),
                    }
                })
                .collect()
        }
        _ => Err(PolicyError::WrongType {
            path: path.to_owned(),
            expected: "a string or a list of strings",
        }),
    }
}

const ACTION_SYNTAX: PatternSyntax = PatternSyntax {
    wildcards: true,
    variables: false,
};

fn compile_actions(
    value: &JsonValue,
    path: &str,
    negated: bool,
) -> Result<PatternElement, PolicyError> {
    let mut patterns = Vec::new();
    for (item_path, text) in string_list(value, path)? {
        if let Err(reason) = validate_action(text) {
            return Err(PolicyError::InvalidAction {
                path: item_path,
                value: quoted(text),
                reason,
            });
        }
        let pattern =
            Pattern::compile(text, ACTION_SYNTAX).map_err(|error| PolicyError::InvalidAction {
                path: item_path.clone(),
                value: quoted(text),
                reason: error.0,
            })?;
        patterns.push(pattern);
    }
    Ok(PatternElement { negated, patterns })
}

/// `*`, or `prefix:name` where the service prefix is letters, digits and
/// `-` (no wildcards) and the name is letters, digits, `-`, `_` and the
/// wildcards `*` and `?`.
fn validate_action(text: &str) -> Result<(), &'static str> {
    if text == "*" {
        return Ok(());
    }
    let Some((prefix, name)) = text.split_once(':') else {
        return Err("an action is \"service:ActionName\" (e.g. \"kms:Encrypt\") or \"*\"");
    };
    if prefix.is_empty()
        || !prefix
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    {
        return Err("the service prefix must be letters, digits and '-', without wildcards");
    }
    if name.is_empty() {
        return Err("the action name is empty");
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'*' | b'?'))
    {
        return Err("an action name may contain only letters, digits, '-', '_', '*' and '?'");
    }
    Ok(())
}

fn compile_resources(
    value: &JsonValue,
    path: &str,
    negated: bool,
    version: PolicyVersion,
) -> Result<PatternElement, PolicyError> {
    let mut patterns = Vec::new();
    let syntax = PatternSyntax {
        wildcards: true,
        variables: version.expands_variables(),
    };
    for (item_path, text) in string_list(value, path)? {
        if let Err(reason) = validate_resource(text, syntax.variables) {
            return Err(PolicyError::InvalidArn {
                path: item_path,
                value: quoted(text),
                reason,
            });
        }
        let pattern =
            Pattern::compile(text, syntax).map_err(|error| PolicyError::InvalidPolicyVariable {
                path: item_path.clone(),
                value: quoted(text),
                reason: error.0,
            })?;
        patterns.push(pattern);
    }
    Ok(PatternElement { negated, patterns })
}

/// `*`, or an ARN `arn:partition:service:region:account:resource` whose
/// partition, service and resource are not empty and whose service has no
/// wildcard (AWS refuses those too). Wildcards elsewhere are fine.
fn validate_resource(text: &str, variables: bool) -> Result<(), &'static str> {
    if text == "*" {
        return Ok(());
    }
    if text.chars().any(char::is_control) {
        return Err("a resource ARN must not contain control characters");
    }
    let Some([prefix, partition, service, _region, _account, resource]) =
        split_arn_components(text, variables)
    else {
        return Err("an ARN has six parts: arn:partition:service:region:account:resource");
    };
    if prefix != "arn" {
        return Err("an ARN starts with \"arn:\"");
    }
    if partition.is_empty() {
        return Err("the partition is empty");
    }
    if service.is_empty() {
        return Err("the service is empty");
    }
    if service.contains(['*', '?']) {
        return Err("the service part of a resource ARN cannot contain wildcards");
    }
    if resource.is_empty() {
        return Err("the resource part is empty");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        for good in [
            "*",
            "kms:Encrypt",
            "kms:*",
            "kms:Gen*",
            "kms:?ncrypt",
            "secretsmanager:Get*Value",
            "acm-pca:Issue_Certificate",
        ] {
            assert_eq!(validate_action(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "kms",
            "kms:",
            ":Encrypt",
            "*:Encrypt",
            "k*s:Encrypt",
            "kms:Encrypt:x",
            "kms: Encrypt",
            "kms:Enc\0rypt",
            "kms:Encrypt/x",
            "**",
        ] {
            assert!(validate_action(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resources() {
        for good in [
            "*",
            "arn:coffer:kms:eu-west-1:111122223333:key/abc",
            "arn:aws:kms:*:111122223333:key/*",
            "arn:aws:s3:::bucket/*",
            "arn:coffer:kms:eu-west-1:111122223333:key/a:b",
            "arn:*:kms:*:*:*",
        ] {
            assert_eq!(validate_resource(good, true), Ok(()), "{good}");
        }
        for bad in [
            "",
            "**",
            "key/abc",
            "arn:coffer:kms:eu-west-1:111122223333",
            "arn:coffer:kms:eu-west-1:111122223333:",
            "arn::kms:eu-west-1:111122223333:key/a",
            "arn:coffer::eu-west-1:111122223333:key/a",
            "arn:coffer:*:eu-west-1:111122223333:key/a",
            "arn:coffer:k?s:eu-west-1:111122223333:key/a",
            "ARN:coffer:kms:eu-west-1:111122223333:key/a",
            "arn:coffer:kms:eu-west-1:111122223333:key/a\0",
        ] {
            assert!(validate_resource(bad, true).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn policies_say_whether_they_read_condition_keys() {
        let plain = Policy::parse_identity(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#,
        )
        .unwrap();
        let conditional = Policy::parse_identity(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"true"}}}]}"#,
        )
        .unwrap();
        assert_eq!(
            conditional.condition_keys(),
            Some(&["aws:securetransport".to_owned()][..])
        );
        assert_eq!(plain.condition_keys(), Some(&[][..]));
        let variable = Policy::parse_identity(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"arn:coffer:kms:*:*:key/${aws:username}"}]}"#,
        )
        .unwrap();
        assert_eq!(variable.condition_keys(), None);
        // A variable spelled with a JSON escape is a variable all the same.
        let escaped = Policy::parse_identity(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"kms:*","Resource":"*","Condition":{"StringNotEquals":{"aws:PrincipalAccount":"\u0024{kms:CallerAccount}"}}}]}"#,
        )
        .unwrap();
        assert_eq!(escaped.condition_keys(), None);
    }
}
