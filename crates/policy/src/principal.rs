//! The `Principal` and `NotPrincipal` elements of resource policies.
//!
//! The accepted forms and their meaning are documented on the crate
//! ("Principals").

use crate::context::{PrincipalInfo, is_account_id};
use crate::error::{PolicyError, quoted};
use crate::json::JsonValue;

/// How a statement's principal element matched the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalMatch {
    /// The statement names the caller itself (its ARN, its service name, `*`,
    /// or, for the account root, its account), or names no principal.
    Direct,
    /// The statement names the caller's account (`…:root` or the bare id):
    /// in an Allow this delegates to the account's identity policies.
    ViaAccountRoot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrincipalEntry {
    Everyone,
    AccountRoot {
        /// `None` for a bare account id: the instance's own partition.
        partition: Option<String>,
        account: String,
    },
    /// A user, role, assumed role or Coffer service, by exact ARN.
    Exact(String),
    /// A service principal name, lowercased.
    Service(String),
}

impl PrincipalEntry {
    fn match_caller(&self, caller: &PrincipalInfo) -> Option<PrincipalMatch> {
        match self {
            PrincipalEntry::Everyone => Some(PrincipalMatch::Direct),
            PrincipalEntry::AccountRoot { partition, account } => {
                if !self.names_account_of(caller, partition.as_deref(), account) {
                    return None;
                }
                if caller.is_root() {
                    Some(PrincipalMatch::Direct)
                } else {
                    Some(PrincipalMatch::ViaAccountRoot)
                }
            }
            PrincipalEntry::Exact(arn) => (arn == caller.arn()).then_some(PrincipalMatch::Direct),
            PrincipalEntry::Service(name) => (caller.service_principal() == Some(name.as_str()))
                .then_some(PrincipalMatch::Direct),
        }
    }

    fn names_account_of(
        &self,
        caller: &PrincipalInfo,
        partition: Option<&str>,
        account: &str,
    ) -> bool {
        let partition_matches = partition.is_none_or(|named| named == caller.partition());
        partition_matches && caller.account() == Some(account)
    }

    /// Whether this entry names the account identity of `caller` (for
    /// NotPrincipal's "every identity in the chain" rule).
    fn names_callers_account(&self, caller: &PrincipalInfo) -> bool {
        match self {
            PrincipalEntry::Everyone => true,
            PrincipalEntry::AccountRoot { partition, account } => {
                self.names_account_of(caller, partition.as_deref(), account)
            }
            PrincipalEntry::Exact(_) | PrincipalEntry::Service(_) => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrincipalElement {
    Principal(Vec<PrincipalEntry>),
    NotPrincipal(Vec<PrincipalEntry>),
}

impl PrincipalElement {
    /// How the element matches `caller`, or `None` when the statement does
    /// not apply to the caller.
    ///
    /// `NotPrincipal` follows AWS: a request is made by every identity in
    /// its chain (the caller and, unless the caller is the root, its
    /// account), and the statement stops applying only when all of them are
    /// listed. So `NotPrincipal` with just a user's ARN still applies to that
    /// user; list the user and its account to exempt the user.
    pub(crate) fn match_caller(&self, caller: &PrincipalInfo) -> Option<PrincipalMatch> {
        match self {
            PrincipalElement::Principal(entries) => entries
                .iter()
                .filter_map(|entry| entry.match_caller(caller))
                .min(),
            PrincipalElement::NotPrincipal(entries) => {
                let caller_listed = entries
                    .iter()
                    .any(|entry| entry.match_caller(caller) == Some(PrincipalMatch::Direct));
                let account_listed_or_not_needed = caller.is_root()
                    || caller.account().is_none()
                    || entries
                        .iter()
                        .any(|entry| entry.names_callers_account(caller));
                if caller_listed && account_listed_or_not_needed {
                    None
                } else {
                    Some(PrincipalMatch::Direct)
                }
            }
        }
    }
}

const PRINCIPAL_SHAPE: &str = "\"*\" or an object with \"AWS\" and/or \"Service\"";

/// Parses the value of a `Principal` or `NotPrincipal` element.
pub(crate) fn parse_principal_entries(
    value: &JsonValue,
    path: &str,
) -> Result<Vec<PrincipalEntry>, PolicyError> {
    match value {
        JsonValue::String(text) if text == "*" => Ok(vec![PrincipalEntry::Everyone]),
        JsonValue::Object(types) => {
            if types.is_empty() {
                return Err(PolicyError::EmptyElement {
                    path: path.to_owned(),
                });
            }
            let mut entries = Vec::new();
            for (principal_type, names_value) in types {
                let type_path = format!("{path}.{}", quoted(principal_type));
                let names = principal_names(names_value, &type_path)?;
                match principal_type.as_str() {
                    "AWS" => {
                        for (index, name) in names.iter().enumerate() {
                            let name_path = indexed_path(&type_path, index, names.len());
                            entries.push(parse_aws_principal(name, &name_path)?);
                        }
                    }
                    "Service" => {
                        for (index, name) in names.iter().enumerate() {
                            let name_path = indexed_path(&type_path, index, names.len());
                            entries.push(parse_service_principal(name, &name_path)?);
                        }
                    }
                    _ => {
                        return Err(PolicyError::UnsupportedPrincipalType {
                            path: path.to_owned(),
                            principal_type: quoted(principal_type),
                        });
                    }
                }
            }
            Ok(entries)
        }
        _ => Err(PolicyError::WrongType {
            path: path.to_owned(),
            expected: PRINCIPAL_SHAPE,
        }),
    }
}

fn indexed_path(path: &str, index: usize, count: usize) -> String {
    if count == 1 {
        path.to_owned()
    } else {
        format!("{path}[{index}]")
    }
}

fn principal_names<'a>(value: &'a JsonValue, path: &str) -> Result<Vec<&'a str>, PolicyError> {
    const EXPECTED: &str = "a string or a list of strings";
    match value {
        JsonValue::String(text) => Ok(vec![text.as_str()]),
        JsonValue::Array(items) => {
            if items.is_empty() {
                return Err(PolicyError::EmptyElement {
                    path: path.to_owned(),
                });
            }
            items
                .iter()
                .enumerate()
                .map(|(index, item)| match item {
                    JsonValue::String(text) => Ok(text.as_str()),
                    _ => Err(PolicyError::WrongType {
                        path: format!("{path}[{index}]"),
                        expected: "a string",
                    }),
                })
                .collect()
        }
        _ => Err(PolicyError::WrongType {
            path: path.to_owned(),
            expected: EXPECTED,
        }),
    }
}

fn parse_aws_principal(text: &str, path: &str) -> Result<PrincipalEntry, PolicyError> {
    let invalid = |reason: &'static str| PolicyError::InvalidPrincipal {
        path: path.to_owned(),
        value: quoted(text),
        reason,
    };
    let invalid_arn = |reason: &'static str| PolicyError::InvalidArn {
        path: path.to_owned(),
        value: quoted(text),
        reason,
    };
    if text == "*" {
        return Ok(PrincipalEntry::Everyone);
    }
    if is_account_id(text) {
        return Ok(PrincipalEntry::AccountRoot {
            partition: None,
            account: text.to_owned(),
        });
    }
    if !text.starts_with("arn:") {
        return Err(invalid(
            "expected \"*\", a 12-digit account id or a principal ARN",
        ));
    }
    if text
        .chars()
        .any(|character| character.is_whitespace() || character.is_control())
    {
        return Err(invalid(
            "a principal ARN must not contain whitespace or control characters",
        ));
    }
    if text.contains(['*', '?']) {
        return Err(invalid(
            "wildcards are not allowed in principal ARNs; use \"*\" with a condition on aws:PrincipalArn",
        ));
    }
    let mut parts = text.splitn(6, ':');
    let (Some(_arn), Some(partition), Some(service), Some(region), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(invalid_arn(
            "an ARN has six parts: arn:partition:service:region:account:resource",
        ));
    };
    if !is_partition(partition) {
        return Err(invalid_arn(
            "the partition must be lowercase letters, digits and '-' (e.g. coffer or aws)",
        ));
    }
    match service {
        "iam" => {
            if !region.is_empty() {
                return Err(invalid("IAM principal ARNs have an empty region"));
            }
            if !is_account_id(account) {
                return Err(invalid("the account must be 12 digits"));
            }
            if resource == "root" {
                return Ok(PrincipalEntry::AccountRoot {
                    partition: Some(partition.to_owned()),
                    account: account.to_owned(),
                });
            }
            let named = ["user/", "role/"]
                .iter()
                .any(|kind| resource.strip_prefix(kind).is_some_and(is_principal_name));
            if !named {
                return Err(invalid(
                    "an IAM principal is \"root\" (exactly), \"user/NAME\" or \"role/NAME\"",
                ));
            }
            Ok(PrincipalEntry::Exact(text.to_owned()))
        }
        "sts" => {
            let named = resource
                .strip_prefix("assumed-role/")
                .is_some_and(is_principal_name);
            if !region.is_empty() || !is_account_id(account) || !named {
                return Err(invalid(
                    "an STS principal is arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE/SESSION",
                ));
            }
            Ok(PrincipalEntry::Exact(text.to_owned()))
        }
        "coffer" => {
            let named = resource
                .strip_prefix("service/")
                .is_some_and(is_principal_name);
            if !region.is_empty() || !account.is_empty() || !named {
                return Err(invalid(
                    "a Coffer service principal is arn:PARTITION:coffer:::service/NAME",
                ));
            }
            Ok(PrincipalEntry::Exact(text.to_owned()))
        }
        _ => Err(invalid(
            "principal ARNs must be IAM users, roles or account roots, STS assumed roles or Coffer services",
        )),
    }
}

fn is_partition(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
}

/// A user, role or service name (possibly with a path): non-empty, not
/// ending in `/`, with no empty path segment.
fn is_principal_name(name: &str) -> bool {
    !name.is_empty() && name.split('/').all(|segment| !segment.is_empty())
}

fn parse_service_principal(text: &str, path: &str) -> Result<PrincipalEntry, PolicyError> {
    let valid = !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-');
    if !valid {
        return Err(PolicyError::InvalidPrincipal {
            path: path.to_owned(),
            value: quoted(text),
            reason: "a service principal is a DNS-style name such as secrets.coffer.internal; wildcards are not allowed",
        });
    }
    Ok(PrincipalEntry::Service(text.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> Result<PrincipalEntry, PolicyError> {
        parse_aws_principal(text, "Principal.AWS")
    }

    #[test]
    fn account_forms() {
        assert_eq!(
            entry("111122223333").unwrap(),
            PrincipalEntry::AccountRoot {
                partition: None,
                account: "111122223333".to_owned()
            }
        );
        assert_eq!(
            entry("arn:aws:iam::111122223333:root").unwrap(),
            PrincipalEntry::AccountRoot {
                partition: Some("aws".to_owned()),
                account: "111122223333".to_owned()
            }
        );
        assert_eq!(entry("*").unwrap(), PrincipalEntry::Everyone);
    }

    #[test]
    fn root_look_alikes_are_refused_or_ordinary() {
        for bad in [
            "arn:coffer:iam::111122223333:ROOT",
            "arn:coffer:iam::111122223333:Root",
            "arn:coffer:iam::111122223333: root",
            "arn:coffer:iam::111122223333:root ",
            "arn:coffer:iam::111122223333:root/",
            "arn:coffer:iam::111122223333:root\u{0}",
            "arn:coffer:iam::11112222333:root",
            "arn:coffer:iam::1111222233334:root",
            "arn:coffer:iam:eu-west-1:111122223333:root",
            " 111122223333",
            "111122223333 ",
            "11112222333a",
        ] {
            assert!(
                matches!(entry(bad), Err(PolicyError::InvalidPrincipal { .. })),
                "{bad:?} should be refused, got {:?}",
                entry(bad)
            );
        }
        for ordinary in [
            "arn:coffer:iam::111122223333:user/root",
            "arn:coffer:iam::111122223333:user/Root",
            "arn:coffer:iam::111122223333:user/ROOT",
            "arn:coffer:iam::111122223333:role/root",
        ] {
            assert_eq!(
                entry(ordinary).unwrap(),
                PrincipalEntry::Exact(ordinary.to_owned())
            );
        }
    }

    #[test]
    fn malformed_principal_arns() {
        assert!(matches!(
            entry("arn:coffer:iam::111122223333"),
            Err(PolicyError::InvalidArn { .. })
        ));
        assert!(matches!(
            entry("arn:COFFER:iam::111122223333:root"),
            Err(PolicyError::InvalidArn { .. })
        ));
        assert!(matches!(
            entry("arn::iam::111122223333:root"),
            Err(PolicyError::InvalidArn { .. })
        ));
        for bad in [
            "arn:coffer:iam::111122223333:user/*",
            "arn:coffer:iam::*:root",
            "arn:coffer:iam::111122223333:user/al?ce",
            "arn:coffer:iam::111122223333:user/",
            "arn:coffer:iam::111122223333:user//x",
            "arn:coffer:iam::111122223333:group/admins",
            "arn:coffer:kms:eu-west-1:111122223333:key/abc",
            "arn:coffer:coffer:::service/",
            "arn:coffer:coffer::111122223333:service/keys",
            "arn:coffer:sts::111122223333:role/x",
            "user/alice",
            "alice",
            "",
        ] {
            assert!(
                matches!(entry(bad), Err(PolicyError::InvalidPrincipal { .. })),
                "{bad:?} should be refused, got {:?}",
                entry(bad)
            );
        }
    }

    #[test]
    fn service_principals() {
        assert_eq!(
            parse_service_principal("Secrets.Coffer.Internal", "p").unwrap(),
            PrincipalEntry::Service("secrets.coffer.internal".to_owned())
        );
        for bad in ["", "*", "secrets.*", "a b", "a/b"] {
            assert!(parse_service_principal(bad, "p").is_err(), "{bad:?}");
        }
    }
}
