use thiserror::Error;

/// Why a policy document was refused. Every variant maps to AWS's
/// `MalformedPolicyDocumentException`; the message names the element that is
/// wrong (a path such as `Statement[2].Condition.StringEquals`) so the author
/// can fix it. Values quoted back are shortened to [`MAX_QUOTED_CHARS`].
///
/// The messages describe the document the caller submitted, never another
/// policy, so they are safe to return to that caller.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("the policy document is {size} bytes; the limit is {limit} bytes")]
    DocumentTooLarge { size: usize, limit: usize },

    #[error("the policy document is not valid JSON: {message} (line {line}, column {column})")]
    InvalidJson {
        message: String,
        line: usize,
        column: usize,
    },

    #[error("the policy document nests deeper than {limit} levels at {path}")]
    NestingTooDeep { path: String, limit: usize },

    #[error("duplicate key \"{key}\" in {path}")]
    DuplicateKey { path: String, key: String },

    #[error("{path} must be {expected}")]
    WrongType {
        path: String,
        expected: &'static str,
    },

    #[error("unknown field \"{field}\" in {path}")]
    UnknownField { path: String, field: String },

    #[error("unsupported policy Version \"{version}\"; use \"2012-10-17\" or \"2008-10-17\"")]
    UnsupportedVersion { version: String },

    #[error("the policy document has no Statement")]
    MissingStatement,

    #[error("{path} must not be empty")]
    EmptyElement { path: String },

    #[error("{path}: Effect must be \"Allow\" or \"Deny\", not \"{value}\"")]
    InvalidEffect { path: String, value: String },

    #[error("{path} has no Effect")]
    MissingEffect { path: String },

    #[error("{path} has both {first} and {second}; a statement may use only one of them")]
    ConflictingElements {
        path: String,
        first: &'static str,
        second: &'static str,
    },

    #[error("{path} has no Action or NotAction")]
    MissingAction { path: String },

    #[error("{path} has no Resource or NotResource")]
    MissingResource { path: String },

    #[error(
        "{path} has no Principal or NotPrincipal; every statement of a resource policy must name whom it applies to"
    )]
    MissingPrincipal { path: String },

    #[error(
        "{path} has a {element} element; identity policies apply to the principal they are attached to and must not name one"
    )]
    PrincipalNotAllowed { path: String, element: &'static str },

    #[error(
        "{path} combines NotPrincipal with Effect Allow; NotPrincipal is only accepted with Deny"
    )]
    NotPrincipalWithAllow { path: String },

    #[error("duplicate Sid \"{sid}\"; statement ids must be unique within a policy")]
    DuplicateSid { sid: String },

    #[error("{path}: invalid action \"{value}\": {reason}")]
    InvalidAction {
        path: String,
        value: String,
        reason: &'static str,
    },

    #[error("{path}: invalid ARN \"{value}\": {reason}")]
    InvalidArn {
        path: String,
        value: String,
        reason: &'static str,
    },

    #[error("{path}: invalid principal \"{value}\": {reason}")]
    InvalidPrincipal {
        path: String,
        value: String,
        reason: &'static str,
    },

    #[error("{path}: unsupported principal type \"{principal_type}\"; use \"AWS\" or \"Service\"")]
    UnsupportedPrincipalType {
        path: String,
        principal_type: String,
    },

    #[error("{path}: unknown condition operator \"{operator}\"")]
    UnknownConditionOperator { path: String, operator: String },

    #[error("{path}: invalid condition key \"{key}\": {reason}")]
    InvalidConditionKey {
        path: String,
        key: String,
        reason: &'static str,
    },

    #[error(
        "{path}: condition key \"{key}\" appears more than once (condition keys are case-insensitive)"
    )]
    DuplicateConditionKey { path: String, key: String },

    #[error("{path}: invalid value \"{value}\" for {operator}: {reason}")]
    InvalidConditionValue {
        path: String,
        operator: String,
        value: String,
        reason: &'static str,
    },

    #[error(
        "{path}: the number has more than 15 significant digits or is 2^53 or more, and would not be kept exactly; write it as a string"
    )]
    ImpreciseNumber { path: String },

    #[error("{path}: malformed policy variable in \"{value}\": {reason}")]
    InvalidPolicyVariable {
        path: String,
        value: String,
        reason: &'static str,
    },
}

/// Values quoted back in error messages are cut to this many characters.
pub const MAX_QUOTED_CHARS: usize = 128;

/// A caller-supplied value, shortened for quoting in an error message.
pub(crate) fn quoted(value: &str) -> String {
    let mut characters = value.char_indices();
    match characters.nth(MAX_QUOTED_CHARS) {
        None => value.to_owned(),
        Some((cut, _)) => {
            let head = value.get(..cut).unwrap_or(value);
            format!("{head}…")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_shortened_on_a_character_boundary() {
        let long = "é".repeat(MAX_QUOTED_CHARS + 10);
        let shortened = quoted(&long);
        assert_eq!(shortened.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(shortened.ends_with('…'));
        assert_eq!(quoted("short"), "short");
        assert_eq!(
            quoted(&"a".repeat(MAX_QUOTED_CHARS)),
            "a".repeat(MAX_QUOTED_CHARS)
        );
    }
}
