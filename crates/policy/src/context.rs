//! What a request looks like to the evaluator: who calls, which action on
//! which resource, and the condition keys that describe it.

use std::collections::BTreeMap;

use crate::glob::VariableSource;

/// What kind of identity a caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// The account itself (`arn:{partition}:iam::{account}:root`).
    AccountRoot,
    /// An IAM-style user (`arn:{partition}:iam::{account}:user/{name}`).
    User,
    /// A role (`arn:{partition}:iam::{account}:role/{name}`).
    Role,
    /// A Coffer service calling on its own behalf
    /// (`arn:{partition}:coffer:::service/{name}`).
    Service,
}

/// The authenticated caller, as the evaluator sees it. Built only through
/// the constructors, so the ARN, account and kind always agree: only
/// [`PrincipalInfo::account_root`] is ever the account root, whatever a
/// user or role happens to be called (a user named `root` is
/// `…:user/root`, an ordinary user).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrincipalInfo {
    arn: String,
    partition: String,
    account: Option<String>,
    kind: PrincipalKind,
    name: String,
    service_principal: Option<String>,
}

impl PrincipalInfo {
    /// The account root of `account` (12 digits) in `partition`.
    pub fn account_root(partition: &str, account: &str) -> Self {
        debug_assert!(is_account_id(account), "account ids are 12 digits");
        Self {
            arn: format!("arn:{partition}:iam::{account}:root"),
            partition: partition.to_owned(),
            account: Some(account.to_owned()),
            kind: PrincipalKind::AccountRoot,
            name: String::new(),
            service_principal: None,
        }
    }

    /// User `name` (which may carry a path, `division/alice`) of `account`.
    pub fn user(partition: &str, account: &str, name: &str) -> Self {
        debug_assert!(is_account_id(account), "account ids are 12 digits");
        Self {
            arn: format!("arn:{partition}:iam::{account}:user/{name}"),
            partition: partition.to_owned(),
            account: Some(account.to_owned()),
            kind: PrincipalKind::User,
            name: name.to_owned(),
            service_principal: None,
        }
    }

    /// Role `name` of `account`.
    pub fn role(partition: &str, account: &str, name: &str) -> Self {
        debug_assert!(is_account_id(account), "account ids are 12 digits");
        Self {
            arn: format!("arn:{partition}:iam::{account}:role/{name}"),
            partition: partition.to_owned(),
            account: Some(account.to_owned()),
            kind: PrincipalKind::Role,
            name: name.to_owned(),
            service_principal: None,
        }
    }

    /// Coffer service `name` (ARN `arn:{partition}:coffer:::service/{name}`).
    /// `service_principal` is the name `"Principal": {"Service": …}` entries
    /// are compared with, case-insensitively (for example
    /// `secrets.coffer.internal`).
    pub fn service(partition: &str, name: &str, service_principal: &str) -> Self {
        Self {
            arn: format!("arn:{partition}:coffer:::service/{name}"),
            partition: partition.to_owned(),
            account: None,
            kind: PrincipalKind::Service,
            name: name.to_owned(),
            service_principal: Some(service_principal.to_ascii_lowercase()),
        }
    }

    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// The partition the caller's ARN is in: the instance's configured one.
    /// Principal ARNs in policies must be in the same partition to match.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// The caller's account; `None` for services, which belong to none.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    pub fn is_root(&self) -> bool {
        self.kind == PrincipalKind::AccountRoot
    }

    /// User or role name (with path), or service name; empty for the root.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lowercased service principal name, for services.
    pub fn service_principal(&self) -> Option<&str> {
        self.service_principal.as_deref()
    }
}

pub(crate) fn is_account_id(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// One request to authorize.
///
/// Condition keys are case-insensitive: they are stored lowercased, and every
/// accessor lowercases the key it is given. A key may hold several values
/// (multi-valued keys such as `aws:TagKeys`); a key present with no values is
/// treated as absent.
///
/// [`RequestContext::new`] fills in the global keys derived from the
/// principal: `aws:PrincipalArn`, `aws:PrincipalAccount` (when the principal
/// has an account) and `aws:username` (for users). Everything else
/// (`aws:SourceIp`, `aws:CurrentTime`, `kms:ViaService`,
/// `kms:EncryptionContext:…`, …) is the caller's to add.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestContext {
    principal: PrincipalInfo,
    action: String,
    resource: String,
    conditions: BTreeMap<String, Vec<String>>,
}

impl RequestContext {
    /// `action` is a full action name (`kms:Encrypt`); `resource` is the ARN
    /// of the resource acted on (or `*` for actions on no resource).
    pub fn new(principal: PrincipalInfo, action: &str, resource: &str) -> Self {
        let mut context = Self {
            principal,
            action: action.to_owned(),
            resource: resource.to_owned(),
            conditions: BTreeMap::new(),
        };
        let principal_arn = context.principal.arn.clone();
        context.set_values("aws:PrincipalArn", [principal_arn]);
        if let Some(account) = context.principal.account.clone() {
            context.set_values("aws:PrincipalAccount", [account]);
        }
        if context.principal.kind == PrincipalKind::User {
            let user_name = context.principal.name.clone();
            context.set_values("aws:username", [user_name]);
        }
        context
    }

    pub fn principal(&self) -> &PrincipalInfo {
        &self.principal
    }

    pub fn action(&self) -> &str {
        &self.action
    }

    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Adds one value to `key` (keeping any it already has); builder form.
    pub fn with_value(mut self, key: &str, value: impl Into<String>) -> Self {
        self.add_value(key, value);
        self
    }

    /// Replaces the values of `key`; builder form.
    pub fn with_values<I>(mut self, key: &str, values: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.set_values(key, values);
        self
    }

    /// Adds one value to `key`, keeping any it already has.
    pub fn add_value(&mut self, key: &str, value: impl Into<String>) {
        self.conditions
            .entry(key.to_lowercase())
            .or_default()
            .push(value.into());
    }

    /// Replaces the values of `key`. An empty list makes the key absent.
    pub fn set_values<I>(&mut self, key: &str, values: I)
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let owned_values: Vec<String> = values.into_iter().map(Into::into).collect();
        if owned_values.is_empty() {
            self.conditions.remove(&key.to_lowercase());
        } else {
            self.conditions.insert(key.to_lowercase(), owned_values);
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &str) {
        self.conditions.remove(&key.to_lowercase());
    }

    /// All values of `key`; empty when absent.
    pub fn values(&self, key: &str) -> &[String] {
        self.values_by_lowercase_key(&key.to_lowercase())
            .unwrap_or(&[])
    }

    /// The value of a single-valued key: `None` when absent or when the key
    /// holds several values.
    pub fn single_value(&self, key: &str) -> Option<&str> {
        single(self.values_by_lowercase_key(&key.to_lowercase()))
    }

    /// Every condition key (lowercased) with its values.
    pub fn conditions(&self) -> &BTreeMap<String, Vec<String>> {
        &self.conditions
    }

    /// Values of an already-lowercased key; `None` when absent or empty.
    pub(crate) fn values_by_lowercase_key(&self, lowercase_key: &str) -> Option<&[String]> {
        self.conditions
            .get(lowercase_key)
            .map(Vec::as_slice)
            .filter(|values| !values.is_empty())
    }
}

fn single(values: Option<&[String]>) -> Option<&str> {
    match values? {
        [only] => Some(only.as_str()),
        _ => None,
    }
}

impl VariableSource for RequestContext {
    /// Policy variables resolve only from single-valued keys, as in AWS.
    fn variable(&self, lowercase_key: &str) -> Option<&str> {
        single(self.values_by_lowercase_key(lowercase_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_build_consistent_principals() {
        let root = PrincipalInfo::account_root("coffer", "111122223333");
        assert_eq!(root.arn(), "arn:coffer:iam::111122223333:root");
        assert!(root.is_root());
        let user = PrincipalInfo::user("coffer", "111122223333", "root");
        assert_eq!(user.arn(), "arn:coffer:iam::111122223333:user/root");
        assert!(!user.is_root());
        assert_eq!(user.kind(), PrincipalKind::User);
        let role = PrincipalInfo::role("aws", "111122223333", "ops/admin");
        assert_eq!(role.arn(), "arn:aws:iam::111122223333:role/ops/admin");
        assert_eq!(role.partition(), "aws");
        let service = PrincipalInfo::service("coffer", "secrets", "Secrets.Coffer.Internal");
        assert_eq!(service.arn(), "arn:coffer:coffer:::service/secrets");
        assert_eq!(service.account(), None);
        assert_eq!(service.service_principal(), Some("secrets.coffer.internal"));
    }

    #[test]
    fn keys_are_case_insensitive_and_global_keys_are_filled_in() {
        let principal = PrincipalInfo::user("coffer", "111122223333", "alice");
        let mut context = RequestContext::new(principal, "kms:Encrypt", "*")
            .with_value("kms:ViaService", "secrets.eu-west-1.coffer.internal")
            .with_values("aws:TagKeys", ["a", "b"]);
        assert_eq!(
            context.single_value("AWS:PRINCIPALARN"),
            Some("arn:coffer:iam::111122223333:user/alice")
        );
        assert_eq!(
            context.single_value("aws:principalaccount"),
            Some("111122223333")
        );
        assert_eq!(context.single_value("aws:UserName"), Some("alice"));
        assert_eq!(
            context.single_value("KMS:viaservice"),
            Some("secrets.eu-west-1.coffer.internal")
        );
        assert_eq!(context.values("aws:tagkeys"), ["a", "b"]);
        assert_eq!(context.single_value("aws:TagKeys"), None);
        assert!(context.conditions().contains_key("aws:tagkeys"));
        context.add_value("AWS:TagKeys", "c");
        assert_eq!(context.values("aws:TagKeys").len(), 3);
        context.set_values("aws:TagKeys", Vec::<String>::new());
        assert!(context.values("aws:TagKeys").is_empty());
        context.add_value("x:y", "1");
        context.remove("X:Y");
        assert!(context.values("x:y").is_empty());
    }

    #[test]
    fn services_and_roles_have_no_username() {
        let service = PrincipalInfo::service("coffer", "secrets", "secrets.coffer.internal");
        let context = RequestContext::new(service, "kms:Decrypt", "*");
        assert_eq!(context.single_value("aws:username"), None);
        assert_eq!(context.single_value("aws:PrincipalAccount"), None);
        let role = PrincipalInfo::role("coffer", "111122223333", "ops");
        let context = RequestContext::new(role, "kms:Decrypt", "*");
        assert_eq!(context.single_value("aws:username"), None);
    }
}
