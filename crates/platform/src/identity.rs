//! Caller identity from the client certificate's SPIFFE URI SAN (DESIGN §2).
//!
//! - `spiffe://{trust_domain}/account/{account}/user/{name}` → an IAM user
//! - `spiffe://{trust_domain}/account/{account}/role/{name}` → a role
//! - `spiffe://{trust_domain}/service/{service}` → a Coffer service
//!
//! Anything else, or a certificate with no or several URI SANs, is not an
//! identity: its calls are refused with UNAUTHENTICATED.

use std::fmt;

use thiserror::Error;

use crate::SERVICE_NAMES;
use crate::arn::AccountId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    User,
    Role,
    Service,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    kind: PrincipalKind,
    account: Option<AccountId>,
    name: String,
    spiffe_id: String,
}

impl Principal {
    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    /// The caller's account; `None` for Coffer services, which belong to none.
    pub fn account(&self) -> Option<&AccountId> {
        self.account.as_ref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    pub fn is_service(&self) -> bool {
        self.kind == PrincipalKind::Service
    }

    /// `arn:{partition}:iam::{account}:user/{name}` (or `role/`); services are
    /// `arn:{partition}:coffer:::service/{name}`.
    pub fn arn(&self, partition: &str) -> String {
        match (&self.kind, &self.account) {
            (PrincipalKind::User, Some(account)) => {
                format!("arn:{partition}:iam::{account}:user/{}", self.name)
            }
            (PrincipalKind::Role, Some(account)) => {
                format!("arn:{partition}:iam::{account}:role/{}", self.name)
            }
            (PrincipalKind::Service, _) | (_, None) => {
                format!("arn:{partition}:coffer:::service/{}", self.name)
            }
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.spiffe_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("the client certificate could not be parsed")]
    Unparseable,
    #[error("the client certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("the client certificate has more than one URI SAN")]
    SeveralUris,
    #[error(
        "the SPIFFE id is not of the form spiffe://{{trust-domain}}/account/{{12 digits}}/user|role/{{name}} or /service/{{name}}"
    )]
    Malformed,
    #[error("the SPIFFE id belongs to another trust domain")]
    ForeignTrustDomain,
}

/// IAM user and role names: `[A-Za-z0-9+=,.@_-]`, 1 to 64 characters.
fn valid_iam_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.bytes().all(|byte| byte == b'.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"+=,.@_-".contains(&byte))
}

/// Parses a SPIFFE id into a principal of `trust_domain`.
pub fn principal_from_spiffe_id(
    spiffe_id: &str,
    trust_domain: &str,
) -> Result<Principal, IdentityError> {
    let rest = spiffe_id
        .strip_prefix("spiffe://")
        .ok_or(IdentityError::Malformed)?;
    let (domain, path) = rest.split_once('/').ok_or(IdentityError::Malformed)?;
    if domain != trust_domain {
        return Err(IdentityError::ForeignTrustDomain);
    }
    let segments: Vec<&str> = path.split('/').collect();
    let (kind, account, name) = match segments.as_slice() {
        ["account", account, "user", name] => (PrincipalKind::User, Some(*account), *name),
        ["account", account, "role", name] => (PrincipalKind::Role, Some(*account), *name),
        ["service", name] => (PrincipalKind::Service, None, *name),
        _ => return Err(IdentityError::Malformed),
    };
    let account = match account {
        Some(text) => Some(AccountId::parse(text).ok_or(IdentityError::Malformed)?),
        None => None,
    };
    let name_is_valid = match kind {
        PrincipalKind::Service => SERVICE_NAMES.contains(&name),
        PrincipalKind::User | PrincipalKind::Role => valid_iam_name(name),
    };
    if !name_is_valid {
        return Err(IdentityError::Malformed);
    }
    Ok(Principal {
        kind,
        account,
        name: name.to_owned(),
        spiffe_id: spiffe_id.to_owned(),
    })
}

/// What a verified client certificate says: who its holder is, and until
/// when (Unix seconds) the certificate is valid.
#[derive(Debug, Clone)]
pub struct CertifiedPrincipal {
    pub principal: Principal,
    pub not_after: i64,
}

/// The principal named by a DER certificate's single SPIFFE URI SAN, with
/// the certificate's expiry.
pub fn principal_from_certificate(
    der: &[u8],
    trust_domain: &str,
) -> Result<CertifiedPrincipal, IdentityError> {
    use x509_parser::extensions::GeneralName;

    let (_, certificate) =
        x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::Unparseable)?;
    let alternative_names = certificate
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparseable)?;
    let uris: Vec<&str> = alternative_names
        .map(|extension| {
            extension
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let principal = match uris.as_slice() {
        [] => Err(IdentityError::NoSpiffeId),
        [single] => principal_from_spiffe_id(single, trust_domain),
        _ => Err(IdentityError::SeveralUris),
    }?;
    Ok(CertifiedPrincipal {
        principal,
        not_after: certificate.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "coffer.test";

    #[test]
    fn parses_users_roles_and_services() -> Result<(), IdentityError> {
        let user =
            principal_from_spiffe_id("spiffe://coffer.test/account/111122223333/user/alice", TD)?;
        assert_eq!(user.kind(), PrincipalKind::User);
        assert_eq!(
            user.arn("coffer"),
            "arn:coffer:iam::111122223333:user/alice"
        );
        let role = principal_from_spiffe_id(
            "spiffe://coffer.test/account/111122223333/role/deployer",
            TD,
        )?;
        assert_eq!(
            role.arn("coffer"),
            "arn:coffer:iam::111122223333:role/deployer"
        );
        let service = principal_from_spiffe_id("spiffe://coffer.test/service/secrets", TD)?;
        assert!(service.is_service());
        assert_eq!(service.account(), None);
        Ok(())
    }

    #[test]
    fn rejects_malformed_ids() {
        let cases = [
            (
                "spiffe://other.test/account/111122223333/user/alice",
                IdentityError::ForeignTrustDomain,
            ),
            (
                "https://coffer.test/account/111122223333/user/alice",
                IdentityError::Malformed,
            ),
            (
                "spiffe://coffer.test/account/11112222333/user/alice",
                IdentityError::Malformed,
            ),
            (
                "spiffe://coffer.test/account/111122223333/user/",
                IdentityError::Malformed,
            ),
            (
                "spiffe://coffer.test/account/111122223333/user/a/b",
                IdentityError::Malformed,
            ),
            (
                "spiffe://coffer.test/account/111122223333/user/a%2Fb",
                IdentityError::Malformed,
            ),
            (
                "spiffe://coffer.test/account/111122223333/user/..",
                IdentityError::Malformed,
            ),
            (
                "spiffe://coffer.test/account/111122223333/group/alice",
                IdentityError::Malformed,
            ),
            (
                "spiffe://coffer.test/service/nosuch",
                IdentityError::Malformed,
            ),
            (
                "spiffe://coffer.test/service/keys/",
                IdentityError::Malformed,
            ),
            ("spiffe://coffer.test", IdentityError::Malformed),
        ];
        for (id, expected) in cases {
            assert_eq!(
                principal_from_spiffe_id(id, TD).err(),
                Some(expected),
                "{id}"
            );
        }
    }
}
