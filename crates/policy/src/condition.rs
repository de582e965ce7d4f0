//! The `Condition` element: operators, typed values and their evaluation.
//!
//! The semantics are documented on the crate ("Conditions").

use crate::context::RequestContext;
use crate::error::{PolicyError, quoted};
use crate::glob::{CaseMode, Pattern, PatternSyntax, split_arn_components};
use crate::json::JsonValue;
use crate::policy::Effect;
use crate::scalar::{Cidr, Decimal, Instant, parse_instant, parse_request_address};

/// Condition keys (lowercase prefixes) that AWS gives one value, named
/// after a request's or resource's own keys, which are case-sensitive.
const SINGLE_VALUED_PREFIXES: &[&str] = &[
    "kms:encryptioncontext:",
    "aws:requesttag/",
    "aws:resourcetag/",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    String,
    StringIgnoreCase,
    StringLike,
    Arn,
    Bool,
    Numeric,
    Date,
    Ip,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

/// An operator without qualifier or suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BaseOperator {
    family: Family,
    relation: Relation,
    negated: bool,
}

const OPERATORS: &[(&str, Family, Relation, bool)] = &[
    ("StringEquals", Family::String, Relation::Equal, false),
    ("StringNotEquals", Family::String, Relation::Equal, true),
    (
        "StringEqualsIgnoreCase",
        Family::StringIgnoreCase,
        Relation::Equal,
        false,
    ),
    (
        "StringNotEqualsIgnoreCase",
        Family::StringIgnoreCase,
        Relation::Equal,
        true,
    ),
    ("StringLike", Family::StringLike, Relation::Equal, false),
    ("StringNotLike", Family::StringLike, Relation::Equal, true),
    ("ArnEquals", Family::Arn, Relation::Equal, false),
    ("ArnLike", Family::Arn, Relation::Equal, false),
    ("ArnNotEquals", Family::Arn, Relation::Equal, true),
    ("ArnNotLike", Family::Arn, Relation::Equal, true),
    ("Bool", Family::Bool, Relation::Equal, false),
    ("NumericEquals", Family::Numeric, Relation::Equal, false),
    ("NumericNotEquals", Family::Numeric, Relation::Equal, true),
    ("NumericLessThan", Family::Numeric, Relation::Less, false),
    (
        "NumericLessThanEquals",
        Family::Numeric,
        Relation::LessOrEqual,
        false,
    ),
    (
        "NumericGreaterThan",
        Family::Numeric,
        Relation::Greater,
        false,
    ),
    (
        "NumericGreaterThanEquals",
        Family::Numeric,
        Relation::GreaterOrEqual,
        false,
    ),
    ("DateEquals", Family::Date, Relation::Equal, false),
    ("DateNotEquals", Family::Date, Relation::Equal, true),
    ("DateLessThan", Family::Date, Relation::Less, false),
    (
        "DateLessThanEquals",
        Family::Date,
        Relation::LessOrEqual,
        false,
    ),
    ("DateGreaterThan", Family::Date, Relation::Greater, false),
    (
        "DateGreaterThanEquals",
        Family::Date,
        Relation::GreaterOrEqual,
        false,
    ),
    ("IpAddress", Family::Ip, Relation::Equal, false),
    ("NotIpAddress", Family::Ip, Relation::Equal, true),
    ("Null", Family::Null, Relation::Equal, false),
];

/// The names of all base condition operators, as AWS spells them.
#[cfg(test)]
fn condition_operator_names() -> impl Iterator<Item = &'static str> {
    OPERATORS.iter().map(|(name, ..)| *name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetQualifier {
    ForAnyValue,
    ForAllValues,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Operator {
    base: BaseOperator,
    qualifier: Option<SetQualifier>,
    if_exists: bool,
}

/// Reads an operator name such as `ForAnyValue:StringLikeIfExists`.
/// Operator names are case-sensitive, as AWS spells them.
fn parse_operator(text: &str) -> Option<Operator> {
    let (qualifier, rest) = if let Some(after_prefix) = text.strip_prefix("ForAnyValue:") {
        (Some(SetQualifier::ForAnyValue), after_prefix)
    } else if let Some(after_prefix) = text.strip_prefix("ForAllValues:") {
        (Some(SetQualifier::ForAllValues), after_prefix)
    } else {
        (None, text)
    };
    let (if_exists, base_name) = match rest.strip_suffix("IfExists") {
        Some(base_name) => (true, base_name),
        None => (false, rest),
    };
    let &(_, family, relation, negated) = OPERATORS.iter().find(|(name, ..)| *name == base_name)?;
    if family == Family::Null && (if_exists || qualifier.is_some()) {
        return None;
    }
    Some(Operator {
        base: BaseOperator {
            family,
            relation,
            negated,
        },
        qualifier,
        if_exists,
    })
}

/// An exact decimal owned by the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PolicyNumber(String);

impl PolicyNumber {
    fn decimal(&self) -> Option<Decimal<'_>> {
        Decimal::parse(&self.0)
    }
}

/// An ARN pattern matched component by component: a `*` in the region
/// cannot reach into the account, but the resource (the sixth component)
/// may itself contain colons.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ArnPattern {
    Anything,
    Components(Box<[Pattern; 6]>),
}

impl ArnPattern {
    fn matches(&self, request_components: Option<[&str; 6]>, context: &RequestContext) -> bool {
        match self {
            ArnPattern::Anything => true,
            ArnPattern::Components(patterns) => match request_components {
                Some(components) => patterns.iter().zip(components).all(|(pattern, component)| {
                    pattern.matches(component, CaseMode::Sensitive, context)
                }),
                None => false,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ConditionValues {
    /// StringEquals/StringLike (case-sensitive) patterns.
    Strings(Vec<Pattern>),
    /// StringEqualsIgnoreCase literals.
    StringsIgnoringCase(Vec<Pattern>),
    Arns(Vec<ArnPattern>),
    Bools(Vec<bool>),
    Numbers(Vec<PolicyNumber>),
    Dates(Vec<Instant>),
    Networks(Vec<Cidr>),
    /// Null: whether the key is expected to be absent.
    Absent(Vec<bool>),
}

/// One key under one operator: `"StringEquals": {"kms:ViaService": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConditionClause {
    operator: Operator,
    lowercase_key: String,
    values: ConditionValues,
}

impl ConditionClause {
    pub(crate) fn lowercase_key(&self) -> &str {
        &self.lowercase_key
    }

    /// The compiled patterns of this clause's values (string and ARN
    /// operators; the others hold no patterns).
    pub(crate) fn patterns(&self) -> impl Iterator<Item = &Pattern> {
        let (strings, arns): (&[Pattern], &[ArnPattern]) = match &self.values {
            ConditionValues::Strings(patterns) | ConditionValues::StringsIgnoringCase(patterns) => {
                (patterns, &[])
            }
            ConditionValues::Arns(arns) => (&[], arns),
            ConditionValues::Bools(_)
            | ConditionValues::Numbers(_)
            | ConditionValues::Dates(_)
            | ConditionValues::Networks(_)
            | ConditionValues::Absent(_) => (&[], &[]),
        };
        strings.iter().chain(arns.iter().flat_map(|arn| match arn {
            ArnPattern::Anything => [].iter(),
            ArnPattern::Components(components) => components.iter(),
        }))
    }

    /// Whether the operator is qualified with `ForAllValues:`.
    pub(crate) fn for_all_values(&self) -> bool {
        self.operator.qualifier == Some(SetQualifier::ForAllValues)
    }

    /// Whether this clause holds for the request, in a statement of
    /// `effect` (see the crate docs).
    pub(crate) fn holds(&self, context: &RequestContext, effect: Effect) -> bool {
        let request_values = context.values_by_lowercase_key(&self.lowercase_key);
        if let ConditionValues::Absent(expected) = &self.values {
            let is_absent = request_values.is_none();
            return expected.contains(&is_absent);
        }
        let negated = self.operator.base.negated;
        let satisfies = |value: &String| {
            let matched = self.any_listed_value_matches(value, context);
            if negated && !matched && effect == Effect::Allow && !self.resolves(context) {
                // A value this request cannot resolve is not known to
                // differ: the Allow does not apply (a Deny does).
                return false;
            }
            matched != negated
        };
        match (self.operator.qualifier, request_values) {
            (None, None) => self.operator.if_exists || negated,
            // One key spelled in several cases: each spelling on its own,
            // the stricter outcome for the statement's effect. A set
            // qualifier changes nothing here: the key has one value in AWS.
            (_, Some(values)) if values.len() > 1 && self.single_valued() => match effect {
                Effect::Deny => values.iter().any(satisfies),
                Effect::Allow => values.iter().all(satisfies),
            },
            (None, Some(values)) if negated => values.iter().all(satisfies),
            (None, Some(values)) => values.iter().any(satisfies),
            (Some(SetQualifier::ForAllValues), None) => true,
            (Some(SetQualifier::ForAllValues), Some(values)) => values.iter().all(satisfies),
            (Some(SetQualifier::ForAnyValue), None) => false,
            (Some(SetQualifier::ForAnyValue), Some(values)) => values.iter().any(satisfies),
        }
    }

    /// Whether every policy variable in the listed values resolves for the
    /// request.
    fn resolves(&self, context: &RequestContext) -> bool {
        self.patterns().all(|pattern| pattern.resolves(context))
    }

    /// Whether the key has one value per spelling of its name: several
    /// values mean several spellings of one name.
    fn single_valued(&self) -> bool {
        SINGLE_VALUED_PREFIXES
            .iter()
            .any(|prefix| self.lowercase_key.starts_with(prefix))
    }

    /// The positive test: does one request value match any listed value?
    fn any_listed_value_matches(&self, request_value: &str, context: &RequestContext) -> bool {
        let relation = self.operator.base.relation;
        match &self.values {
            ConditionValues::Strings(patterns) => patterns
                .iter()
                .any(|pattern| pattern.matches(request_value, CaseMode::Sensitive, context)),
            ConditionValues::StringsIgnoringCase(patterns) => patterns
                .iter()
                .any(|pattern| pattern.equals_ignoring_case(request_value, context)),
            ConditionValues::Arns(patterns) => {
                let components = request_arn_components(request_value);
                patterns
                    .iter()
                    .any(|pattern| pattern.matches(components, context))
            }
            ConditionValues::Bools(listed) => match parse_bool(request_value) {
                Some(value) => listed.contains(&value),
                None => false,
            },
            ConditionValues::Numbers(listed) => match Decimal::parse(request_value) {
                Some(value) => listed.iter().any(|number| {
                    number
                        .decimal()
                        .is_some_and(|limit| compare(relation, value.cmp(&limit)))
                }),
                None => false,
            },
            ConditionValues::Dates(listed) => match parse_instant(request_value) {
                Some(value) => listed
                    .iter()
                    .any(|limit| compare(relation, value.cmp(limit))),
                None => false,
            },
            ConditionValues::Networks(listed) => match parse_request_address(request_value) {
                Some(address) => listed.iter().any(|network| network.contains(address)),
                None => false,
            },
            ConditionValues::Absent(_) => false,
        }
    }
}

fn compare(relation: Relation, ordering: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match relation {
        Relation::Equal => ordering == Equal,
        Relation::Less => ordering == Less,
        Relation::LessOrEqual => ordering != Greater,
        Relation::Greater => ordering == Greater,
        Relation::GreaterOrEqual => ordering != Less,
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    if text.eq_ignore_ascii_case("true") {
        Some(true)
    } else if text.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn request_arn_components(text: &str) -> Option<[&str; 6]> {
    let mut parts = text.splitn(6, ':');
    let components = [
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    ];
    (components[0] == "arn").then_some(components)
}

/// Parses a whole `Condition` element at `path`.
pub(crate) fn parse_condition_element(
    value: &JsonValue,
    path: &str,
    variables_enabled: bool,
) -> Result<Vec<ConditionClause>, PolicyError> {
    let JsonValue::Object(blocks) = value else {
        return Err(PolicyError::WrongType {
            path: path.to_owned(),
            expected: "an object of condition operators",
        });
    };
    let mut clauses = Vec::new();
    for (operator_name, block) in blocks {
        let block_path = format!("{path}.{}", quoted(operator_name));
        let Some(operator) = parse_operator(operator_name) else {
            return Err(PolicyError::UnknownConditionOperator {
                path: path.to_owned(),
                operator: quoted(operator_name),
            });
        };
        let JsonValue::Object(entries) = block else {
            return Err(PolicyError::WrongType {
                path: block_path,
                expected: "an object of condition keys",
            });
        };
        if entries.is_empty() {
            return Err(PolicyError::EmptyElement { path: block_path });
        }
        let mut seen_keys: Vec<String> = Vec::with_capacity(entries.len());
        for (key, listed) in entries {
            let key_path = format!("{block_path}.{}", quoted(key));
            validate_condition_key(key, &block_path)?;
            let lowercase_key = key.to_lowercase();
            if seen_keys.contains(&lowercase_key) {
                return Err(PolicyError::DuplicateConditionKey {
                    path: block_path,
                    key: quoted(key),
                });
            }
            seen_keys.push(lowercase_key.clone());
            let texts = condition_value_texts(listed, &key_path)?;
            let values = compile_values(
                operator,
                operator_name,
                &texts,
                &key_path,
                variables_enabled,
            )?;
            clauses.push(ConditionClause {
                operator,
                lowercase_key,
                values,
            });
        }
    }
    Ok(clauses)
}

fn validate_condition_key(key: &str, block_path: &str) -> Result<(), PolicyError> {
    let invalid = |reason: &'static str| PolicyError::InvalidConditionKey {
        path: block_path.to_owned(),
        key: quoted(key),
        reason,
    };
    let Some((prefix, name)) = key.split_once(':') else {
        return Err(invalid(
            "a condition key is \"prefix:name\", e.g. \"aws:SourceIp\"",
        ));
    };
    if prefix.is_empty() || name.is_empty() {
        return Err(invalid(
            "a condition key is \"prefix:name\", e.g. \"aws:SourceIp\"",
        ));
    }
    if !prefix
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    {
        return Err(invalid(
            "the key prefix may contain only letters, digits and '-'",
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid(
            "a condition key must not contain control characters",
        ));
    }
    Ok(())
}

/// Condition values as text: a string, boolean or number, or a non-empty
/// list of them.
fn condition_value_texts(value: &JsonValue, path: &str) -> Result<Vec<String>, PolicyError> {
    const EXPECTED: &str = "a string, number or boolean, or a list of them";
    let scalar = |item: &JsonValue, item_path: &str| match item {
        JsonValue::String(text) | JsonValue::Number(text) => Ok(text.clone()),
        JsonValue::Bool(flag) => Ok(flag.to_string()),
        _ => Err(PolicyError::WrongType {
            path: item_path.to_owned(),
            expected: EXPECTED,
        }),
    };
    match value {
        JsonValue::Array(items) => {
            if items.is_empty() {
                return Err(PolicyError::EmptyElement {
                    path: path.to_owned(),
                });
            }
            items
                .iter()
                .enumerate()
                .map(|(index, item)| scalar(item, &format!("{path}[{index}]")))
                .collect()
        }
        other => Ok(vec![scalar(other, path)?]),
    }
}

fn compile_values(
    operator: Operator,
    operator_name: &str,
    texts: &[String],
    key_path: &str,
    variables_enabled: bool,
) -> Result<ConditionValues, PolicyError> {
    let invalid = |text: &str, reason: &'static str| PolicyError::InvalidConditionValue {
        path: key_path.to_owned(),
        operator: quoted(operator_name),
        value: quoted(text),
        reason,
    };
    let compile_pattern = |text: &str, wildcards: bool| {
        Pattern::compile(
            text,
            PatternSyntax {
                wildcards,
                variables: variables_enabled,
            },
        )
        .map_err(|error| PolicyError::InvalidPolicyVariable {
            path: key_path.to_owned(),
            value: quoted(text),
            reason: error.0,
        })
    };
    let values = match operator.base.family {
        Family::String => ConditionValues::Strings(
            texts
                .iter()
                .map(|text| compile_pattern(text, false))
                .collect::<Result<_, _>>()?,
        ),
        Family::StringLike => ConditionValues::Strings(
            texts
                .iter()
                .map(|text| compile_pattern(text, true))
                .collect::<Result<_, _>>()?,
        ),
        Family::StringIgnoreCase => ConditionValues::StringsIgnoringCase(
            texts
                .iter()
                .map(|text| compile_pattern(text, false))
                .collect::<Result<_, _>>()?,
        ),
        Family::Arn => {
            let mut patterns = Vec::with_capacity(texts.len());
            for text in texts {
                if text == "*" {
                    patterns.push(ArnPattern::Anything);
                    continue;
                }
                let Some(components) = split_arn_components(text, variables_enabled) else {
                    return Err(invalid(
                        text,
                        "expected an ARN: arn:partition:service:region:account:resource",
                    ));
                };
                if components[0] != "arn" {
                    return Err(invalid(text, "an ARN starts with \"arn:\""));
                }
                let compiled: Vec<Pattern> = components
                    .iter()
                    .map(|component| compile_pattern(component, true))
                    .collect::<Result<_, _>>()?;
                let Ok(six) = <[Pattern; 6]>::try_from(compiled) else {
                    return Err(invalid(text, "expected six ARN components"));
                };
                patterns.push(ArnPattern::Components(Box::new(six)));
            }
            ConditionValues::Arns(patterns)
        }
        Family::Bool => ConditionValues::Bools(
            texts
                .iter()
                .map(|text| parse_bool(text).ok_or_else(|| invalid(text, "expected \"true\" or \"false\"")))
                .collect::<Result<_, _>>()?,
        ),
        Family::Numeric => ConditionValues::Numbers(
            texts
                .iter()
                .map(|text| match Decimal::parse(text) {
                    Some(_) => Ok(PolicyNumber(text.clone())),
                    None => Err(invalid(text, "expected a decimal number such as 10 or -2.5")),
                })
                .collect::<Result<_, _>>()?,
        ),
        Family::Date => ConditionValues::Dates(
            texts
                .iter()
                .map(|text| {
                    parse_instant(text).ok_or_else(|| {
                        invalid(
                            text,
                            "expected an ISO 8601 date such as 2024-01-31T12:00:00Z, or epoch seconds",
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        Family::Ip => ConditionValues::Networks(
            texts
                .iter()
                .map(|text| {
                    Cidr::parse(text).ok_or_else(|| {
                        invalid(text, "expected an IP address or CIDR block such as 203.0.113.0/24")
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        Family::Null => ConditionValues::Absent(
            texts
                .iter()
                .map(|text| parse_bool(text).ok_or_else(|| invalid(text, "expected \"true\" or \"false\"")))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operator_parses_with_and_without_qualifiers_and_suffix() {
        for name in condition_operator_names() {
            let plain = parse_operator(name).unwrap();
            assert!(!plain.if_exists);
            assert_eq!(plain.qualifier, None);
            if name == "Null" {
                assert_eq!(parse_operator("NullIfExists"), None);
                assert_eq!(parse_operator("ForAnyValue:Null"), None);
                assert_eq!(parse_operator("ForAllValues:Null"), None);
                continue;
            }
            let suffixed = parse_operator(&format!("{name}IfExists")).unwrap();
            assert!(suffixed.if_exists);
            let any = parse_operator(&format!("ForAnyValue:{name}IfExists")).unwrap();
            assert_eq!(any.qualifier, Some(SetQualifier::ForAnyValue));
            let all = parse_operator(&format!("ForAllValues:{name}")).unwrap();
            assert_eq!(all.qualifier, Some(SetQualifier::ForAllValues));
        }
        assert_eq!(condition_operator_names().count(), 26);
    }

    #[test]
    fn operator_names_are_exact() {
        for bad in [
            "stringequals",
            "StringEqual",
            "StringEqualsIfexists",
            "ForAnyValues:StringEquals",
            "forallvalues:StringEquals",
            "ForAllValues:",
            "IfExists",
            "BinaryEquals",
            "StringEquals ",
            "ForAnyValue:ForAllValues:StringEquals",
            "StringEqualsIfExistsIfExists",
        ] {
            assert_eq!(parse_operator(bad), None, "{bad}");
        }
    }

    #[test]
    fn negation_flags() {
        let negated: Vec<&str> = OPERATORS
            .iter()
            .filter(|(_, _, _, negated)| *negated)
            .map(|(name, ..)| *name)
            .collect();
        assert_eq!(
            negated,
            [
                "StringNotEquals",
                "StringNotEqualsIgnoreCase",
                "StringNotLike",
                "ArnNotEquals",
                "ArnNotLike",
                "NumericNotEquals",
                "DateNotEquals",
                "NotIpAddress"
            ]
        );
    }
}
