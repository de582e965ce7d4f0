//! Accounts, regions and ARNs: `arn:{partition}:{prefix}:{region}:{account}:{resource}`.

use std::fmt;

/// A 12-digit account id, the tenant boundary.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 12 && text.bytes().all(|byte| byte.is_ascii_digit()))
            .then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Where this instance sits: partition and region, used to build ARNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub partition: String,
    pub region: String,
    pub dns_suffix: String,
}

impl Location {
    pub fn arn(&self, service_prefix: &str, account: &AccountId, resource: &str) -> String {
        format!(
            "arn:{}:{}:{}:{}:{}",
            self.partition, service_prefix, self.region, account, resource
        )
    }

    /// The ARN of an account's root principal (IAM ARNs have no region).
    pub fn account_root(&self, account: &AccountId) -> String {
        format!("arn:{}:iam::{account}:root", self.partition)
    }

    /// The endpoint name of a service, e.g. `kms.coffer.internal`, used as an
    /// audit event's eventSource and as the ErrorInfo domain.
    pub fn event_source(&self, service_prefix: &str) -> String {
        format!("{service_prefix}.{}", self.dns_suffix)
    }
}

/// The parts of an ARN, split without interpretation of the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArnParts<'a> {
    pub partition: &'a str,
    pub service: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    pub resource: &'a str,
}

impl<'a> ArnParts<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.splitn(6, ':');
        if parts.next()? != "arn" {
            return None;
        }
        Some(Self {
            partition: parts.next()?,
            service: parts.next()?,
            region: parts.next()?,
            account: parts.next()?,
            resource: parts.next()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_twelve_digits() {
        assert!(AccountId::parse("111122223333").is_some());
        for bad in [
            "",
            "11112222333",
            "1111222233334",
            "11112222333a",
            " 11112222333",
        ] {
            assert!(AccountId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn arn_round_trip() {
        let location = Location {
            partition: "coffer".into(),
            region: "eu-west-1".into(),
            dns_suffix: "coffer.internal".into(),
        };
        let account = AccountId::parse("111122223333").into_iter().next();
        let Some(account) = account else { return };
        let arn = location.arn("kms", &account, "key/abc");
        assert_eq!(arn, "arn:coffer:kms:eu-west-1:111122223333:key/abc");
        let parts = ArnParts::parse(&arn);
        assert_eq!(parts.map(|p| p.resource), Some("key/abc"));
        assert_eq!(ArnParts::parse("arn:coffer:kms"), None);
    }
}
