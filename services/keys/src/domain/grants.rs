//! CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant.
//!
//! A grant is effective as soon as CreateGrant returns and stops as soon as
//! it is retired or revoked: authorization reads grants from the store, never
//! from a cache. Grant tokens therefore never need to be presented; a token
//! given in a request must have the form of one this service issues, and is
//! not looked up, since no decision depends on it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coffer_crypto::{EncryptionContext, HmacKey, MacAlgorithm, MacKeySpec};
use coffer_platform::authz::Caller;
use coffer_policy::DecisionEffect;
use serde_json::json;

use super::access::{Access, Reach, pairs_within, str_pairs};
use super::types::{KeyKind, KeyManager, KeyReference, KeySpec, KeyUsage};
use super::{KeyOperation, KeysDomain};
use crate::error::{KeysError, Result, dry_run_stops};
use crate::store::{
    ConstraintKind, GrantConstraint, GrantCreation, GrantRecord, KeyRecord, StoreError,
};

/// AWS's quota of grants on a customer managed key (a service-managed key
/// has none). AWS once also allowed only 500 of them for one grantee; it
/// no longer does.
pub const GRANTS_PER_KEY: u64 = 50_000;

/// A validated CreateGrant request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGrant {
    pub grantee_principal: String,
    pub retiring_principal: Option<String>,
    /// Deduplicated, in the order given.
    pub operations: Vec<String>,
    pub constraint: Option<GrantConstraint>,
    pub name: String,
}

/// One page of ListGrants or ListRetirableGrants.
#[derive(Debug, Clone)]
pub struct GrantPage {
    pub grants: Vec<GrantRecord>,
    pub next_after: Option<String>,
}

/// Which grant RetireGrant retires.
#[derive(Debug, Clone)]
pub enum RetireTarget {
    Token(GrantToken),
    Id { key: KeyReference, grant_id: String },
}

/// A grant token: the grant id, a nonce and an HMAC of both under the
/// grant's secret. Every CreateGrant issues a new one, even when a named
/// retry returns an existing grant (AWS: "the returned grant token is
/// unique with every CreateGrant request"); all tokens of a grant are
/// interchangeable. A token of the earlier form (the id and the secret
/// itself) is still accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantToken {
    pub grant_id: String,
    proof: TokenProof,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenProof {
    /// The grant's secret, as tokens carried it before.
    Secret(String),
    /// A nonce and its HMAC-SHA-256 under the grant's secret, hex.
    Mac { nonce: String, mac: String },
}

/// The MAC binding a nonce to a grant, or `None` when the stored secret is
/// not one this service made.
fn token_mac(grant_id: &str, nonce: &str, secret: &str) -> Option<Vec<u8>> {
    let key = HmacKey::from_bytes(MacKeySpec::Hmac256, secret.as_bytes()).ok()?;
    let message = format!("coffer grant token\0{grant_id}\0{nonce}");
    key.generate_mac(MacAlgorithm::HmacSha256, message.as_bytes())
        .ok()
}

impl GrantToken {
    /// A new token for `grant`, with a nonce of its own.
    pub fn issue(grant: &GrantRecord) -> Result<String> {
        let nonce = coffer_platform::hex_lower(&coffer_platform::random_id_bytes::<16>());
        let mac = token_mac(&grant.grant_id, &nonce, &grant.token_secret).ok_or_else(|| {
            KeysError::Store(StoreError::Corrupt(format!(
                "grant {} has a token secret of the wrong form",
                grant.grant_id
            )))
        })?;
        Ok(URL_SAFE_NO_PAD.encode(format!(
            "{}.{nonce}.{}",
            grant.grant_id,
            coffer_platform::hex_lower(&mac)
        )))
    }

    /// A token this service issued, or `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let hex = |part: &str, length: usize| {
            part.len() == length
                && part
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        };
        let parts: Vec<&str> = text.split('.').collect();
        let (grant_id, proof) = match parts[..] {
            [grant_id, secret] if hex(secret, 32) => {
                (grant_id, TokenProof::Secret(secret.to_owned()))
            }
            [grant_id, nonce, mac] if hex(nonce, 32) && hex(mac, 64) => (
                grant_id,
                TokenProof::Mac {
                    nonce: nonce.to_owned(),
                    mac: mac.to_owned(),
                },
            ),
            _ => return None,
        };
        hex(grant_id, 64).then(|| Self {
            grant_id: grant_id.to_owned(),
            proof,
        })
    }

    fn matches(&self, grant: &GrantRecord) -> bool {
        if self.grant_id != grant.grant_id {
            return false;
        }
        let (given, expected) = match &self.proof {
            TokenProof::Secret(secret) => (secret.clone(), grant.token_secret.clone()),
            TokenProof::Mac { nonce, mac } => {
                match token_mac(&grant.grant_id, nonce, &grant.token_secret) {
                    Some(expected) => (mac.clone(), coffer_platform::hex_lower(&expected)),
                    None => return false,
                }
            }
        };
        // Constant time in the contents.
        given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |difference, (a, b)| difference | (a ^ b))
                == 0
    }
}

/// Whether a key of this spec and usage supports a grant operation. A
/// unit test checks every operation in `GRANT_OPERATIONS` is handled here.
fn key_supports(key_spec: KeySpec, key_usage: KeyUsage, operation: &str) -> bool {
    match operation {
        "CreateGrant" | "RetireGrant" | "DescribeKey" => true,
        "Encrypt" | "Decrypt" | "ReEncryptFrom" | "ReEncryptTo" => {
            key_usage == KeyUsage::EncryptDecrypt
        }
        "GenerateDataKey"
        | "GenerateDataKeyWithoutPlaintext"
        | "GenerateDataKeyPair"
        | "GenerateDataKeyPairWithoutPlaintext" => key_spec.kind() == KeyKind::SymmetricEncryption,
        "GetPublicKey" => key_spec.kind() == KeyKind::Asymmetric,
        "Sign" | "Verify" => key_usage == KeyUsage::SignVerify,
        "GenerateMac" | "VerifyMac" => key_usage == KeyUsage::GenerateVerifyMac,
        _ => false,
    }
}

/// AWS's rules for a grant on this key: every operation must be one the
/// key supports, and an encryption-context constraint needs a symmetric
/// encryption key (asymmetric and HMAC operations take no context).
fn ensure_grant_fits(key: &KeyRecord, request: &NewGrant) -> Result<()> {
    if let Some(operation) = request
        .operations
        .iter()
        .find(|operation| !key_supports(key.key_spec, key.key_usage, operation))
    {
        return Err(KeysError::validation(
            "operations",
            format!(
                "{operation} is not valid for a key with key spec {} and key usage {}",
                key.key_spec, key.key_usage
            ),
        ));
    }
    if request.constraint.is_some() && key.key_spec.kind() != KeyKind::SymmetricEncryption {
        return Err(KeysError::validation(
            "constraints",
            format!(
                "an encryption context constraint needs a symmetric encryption key, not {}",
                key.key_spec
            ),
        ));
    }
    Ok(())
}

/// Access for CreateGrant, ListGrants or RevokeGrant, which carry
/// kms:GrantIsForAWSResource: whether a Coffer service called for the caller.
fn grant_access(action: &'static str, caller: &Caller) -> Access<'static> {
    Access::to(action).with_values(
        "kms:GrantIsForAWSResource",
        vec![caller.via_service().is_some().to_string()],
    )
}

fn grant_not_found(grant_id: &str) -> KeysError {
    KeysError::NotFound(format!("Grant ID {grant_id} was not found."))
}

impl KeysDomain {
    /// Creates a grant on a key. A retry with the same name and the same
    /// parameters returns the grant the first call created.
    pub async fn create_grant(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        request: NewGrant,
        dry_run: bool,
    ) -> Result<(KeyRecord, GrantRecord, String)> {
        let mut access = grant_access("CreateGrant", caller)
            .with_values("kms:GrantOperations", request.operations.clone())
            .with_values(
                "kms:GranteePrincipal",
                vec![request.grantee_principal.clone()],
            );
        if let Some(retiring) = &request.retiring_principal {
            access = access.with_values("kms:RetiringPrincipal", vec![retiring.clone()]);
        }
        // AWS evaluates `kms:EncryptionContext:*` and
        // `kms:EncryptionContextKeys` in a CreateGrant request against the
        // pairs of its encryption context constraint.
        let constraint_context = request
            .constraint
            .as_ref()
            .map(|(_, pairs)| EncryptionContext::new(pairs.iter().cloned().collect()));
        if let Some((kind, _)) = &request.constraint {
            access = access.with_values("kms:GrantConstraintType", vec![kind.as_str().to_owned()]);
        }
        if let Some(context) = &constraint_context {
            access = access.with_context(context);
        }
        let key = self.resolve(caller, reference, &access).await?;
        self.check_state(&key, KeyOperation::CreateGrant)?;
        if !self.policies_allow(caller, &key, &access).await? {
            // The caller may create grants only through a grant of its own
            // (AWS's rule): the new grant may not allow more than that one.
            let parents = self.grants_reaching(caller, &key, &access).await?;
            let covered = parents.iter().any(|parent| {
                parent.operations.iter().any(|op| op == "CreateGrant")
                    && request
                        .operations
                        .iter()
                        .all(|wanted| parent.operations.contains(wanted))
                    && no_looser(parent.constraint.as_ref(), request.constraint.as_ref())
            });
            if !covered {
                return Err(KeysError::AccessDenied(format!(
                    "User: {} is not authorized to perform: kms:CreateGrant on resource: {} with operations or constraints beyond those of its own grant",
                    caller.arn(),
                    self.key_arn(&key.account, &key.key_id)
                )));
            }
        }
        // After authorization, so only a caller allowed to create grants
        // learns the key's spec and usage from the refusal.
        ensure_grant_fits(&key, &request)?;
        if dry_run {
            // Not checked against the quotas: they are counted as the grant
            // is written.
            self.record_key(caller, &key);
            return Err(KeysError::DryRun);
        }
        let grant = GrantRecord {
            grant_id: coffer_platform::hex_lower(&coffer_platform::random_id_bytes::<32>()),
            key_id: key.key_id.clone(),
            key_account: key.account.clone(),
            name: request.name,
            grantee_principal: request.grantee_principal,
            retiring_principal: request.retiring_principal,
            issuing_account: caller.account().clone(),
            operations: request.operations,
            constraint: request.constraint,
            token_secret: coffer_platform::hex_lower(&coffer_platform::random_id_bytes::<16>()),
            created_at_ms: self.now_ms(),
        };
        // In the event the grant's write commits with (DESIGN §5).
        caller.record_response(json!({ "grantId": grant.grant_id }));
        let max_per_key = (key.key_manager == KeyManager::Customer).then_some(GRANTS_PER_KEY);
        match self
            .store
            .create_grant(&grant, max_per_key)
            .await
            .map_err(self.write_refused(&key.account, &key.key_id))?
        {
            GrantCreation::Created => {}
            GrantCreation::Existing(existing) => {
                // Asked for again by name: the grant made the first time.
                caller.record_response(json!({ "grantId": existing.grant_id }));
                let token = GrantToken::issue(&existing)?;
                return Ok((key, *existing, token));
            }
            GrantCreation::OverQuota => {
                return Err(KeysError::LimitExceeded(format!(
                    "Key {} already has {GRANTS_PER_KEY} grants, the most a key may have",
                    self.key_arn(&key.account, &key.key_id)
                )));
            }
        }
        let token = GrantToken::issue(&grant)?;
        Ok((key, grant, token))
    }

    /// Grants on a key, optionally only one grant or one grantee's.
    pub async fn list_grants(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        grant_id: Option<&str>,
        grantee: Option<&str>,
        limit: u32,
        after: Option<&str>,
    ) -> Result<(KeyRecord, GrantPage)> {
        let key = self
            .resolve(caller, reference, &grant_access("ListGrants", caller))
            .await?;
        self.check_state(&key, KeyOperation::Policy)?;
        let mut grants = match (grant_id, grantee) {
            (Some(grant_id), _) => self
                .store
                .get_grant(grant_id)
                .await?
                .filter(|grant| grant.key_id == key.key_id)
                .into_iter()
                .collect(),
            (None, Some(grantee)) => {
                self.store
                    .grants_for_grantees(&key.key_id, &[grantee])
                    .await?
            }
            (None, None) => {
                self.store
                    .list_grants(&key.key_id, after, limit.saturating_add(1))
                    .await?
            }
        };
        grants.retain(|grant| {
            grantee.is_none_or(|wanted| grant.grantee_principal == wanted)
                && after.is_none_or(|marker| grant.grant_id.as_str() > marker)
        });
        Ok((key, page_of(grants, limit)))
    }

    /// Grants whose retiring principal is `retiring_principal`, which must
    /// be of the caller's account. As in KMS, the resource authorized is
    /// that principal, so an identity policy can allow the listing for some
    /// principals and deny it for others.
    pub async fn list_retirable_grants(
        &self,
        caller: &Caller,
        retiring_principal: &str,
        limit: u32,
        after: Option<&str>,
    ) -> Result<GrantPage> {
        self.authorize_identity_on(caller, "ListRetirableGrants", retiring_principal, &[])?;
        let account_of = retiring_principal.split(':').nth(4).unwrap_or_default();
        if account_of != caller.account().as_str() {
            return Err(KeysError::AccessDenied(format!(
                "User: {} is not authorized to perform: kms:ListRetirableGrants for principals of another account",
                caller.arn()
            )));
        }
        let grants = self
            .store
            .list_retirable_grants(retiring_principal, after, limit.saturating_add(1))
            .await?;
        Ok(page_of(grants, limit))
    }

    /// Retires a grant and returns its id. Its retiring principal may, and
    /// its grantee when the grant includes RetireGrant; the accounts that
    /// created it, own its key, are its retiring principal or its grantee
    /// (with RetireGrant) may delegate it
    /// (kms:RetireGrant in an identity policy). An explicit deny of
    /// kms:RetireGrant in the caller's identity policies stops anyone.
    pub async fn retire_grant(
        &self,
        caller: &Caller,
        target: RetireTarget,
        dry_run: bool,
    ) -> Result<String> {
        let (grant, missing) = match &target {
            RetireTarget::Token(token) => {
                let grant = self
                    .store
                    .get_grant(&token.grant_id)
                    .await?
                    .filter(|grant| token.matches(grant))
                    .ok_or(KeysError::InvalidGrantToken)?;
                (grant, KeysError::InvalidGrantToken)
            }
            RetireTarget::Id { key, grant_id } => {
                // No authorization runs before this lookup, so a key that
                // does not exist answers as a grant that does not: the
                // answer tells nothing about another account's keys.
                // The grant is read whether the key exists or not, so the
                // time taken does not tell either.
                let named = self.find_key(caller.account(), key, Reach::KeyArn).await;
                let grant = self.store.get_grant(grant_id).await?;
                let named = named.map_err(|error| match error {
                    KeysError::NotFound(_) => grant_not_found(grant_id),
                    other => other,
                })?;
                let grant = grant
                    .filter(|grant| grant.key_id == named.key_id)
                    .ok_or_else(|| grant_not_found(grant_id))?;
                (grant, grant_not_found(grant_id))
            }
        };
        let key = self
            .store
            .find_key(&grant.key_id)
            .await?
            .ok_or_else(|| grant_not_found(&grant.grant_id))?;
        self.authorize_retire(caller, &key, &grant, missing).await?;
        // Named in the event (and so filed with the key's owner too, when
        // that is another account), as AWS names the key of a RetireGrant,
        // with the grant in additionalEventData, before the write.
        self.record_key(caller, &key);
        caller.record_additional_data(json!({ "grantId": grant.grant_id }));
        dry_run_stops(dry_run)?;
        if self.store.delete_grant(&grant.grant_id).await? {
            Ok(grant.grant_id)
        } else {
            Err(grant_not_found(&grant.grant_id))
        }
    }

    /// Who may retire a grant (AWS's rules; the key policy has no say:
    /// kms:RetireGrant "is not effective in a key policy"). The principals
    /// the grant names may without any policy; the account that created
    /// the grant, the key's owner, an account named as retiring principal
    /// and an account granted RetireGrant delegate it to their principals
    /// through identity policies.
    async fn authorize_retire(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        grant: &GrantRecord,
        missing: KeysError,
    ) -> Result<()> {
        let key_arn = self.key_arn(&key.account, &key.key_id);
        let identity = self
            .identity_effect(caller, key, &Access::to("RetireGrant"))
            .await?;
        let retires = grant
            .operations
            .iter()
            .any(|operation| operation == "RetireGrant");
        let named = grant.retiring_principal.as_deref() == Some(caller.arn())
            || (grant.grantee_principal == caller.arn() && retires);
        let account_root = self.location.account_root(caller.account());
        // An account named as retiring principal, or as grantee of a grant
        // that includes RetireGrant, passes the right on to its principals
        // through their policies, as it does the grant's other operations.
        let delegating = grant.issuing_account == *caller.account()
            || key.account == *caller.account()
            || grant.retiring_principal.as_deref() == Some(account_root.as_str())
            || (retires && grant.grantee_principal == account_root);
        let effect = match identity {
            // The grant names the caller, so it knows of the grant and is
            // told plainly.
            DecisionEffect::ExplicitDeny if named => {
                return Err(KeysError::AccessDenied(
                    caller
                        .denied("kms:RetireGrant", &key_arn, DecisionEffect::ExplicitDeny)
                        .message,
                ));
            }
            DecisionEffect::ExplicitDeny => DecisionEffect::ExplicitDeny,
            _ if named => return Ok(()),
            DecisionEffect::Allowed if delegating => return Ok(()),
            _ => DecisionEffect::ImplicitDeny,
        };
        Err(self
            .refusal(caller, key, &Access::to("RetireGrant"), effect, || missing)
            .await?)
    }

    /// Revokes a grant of a key; needs kms:RevokeGrant on the key.
    pub async fn revoke_grant(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        grant_id: &str,
        dry_run: bool,
    ) -> Result<KeyRecord> {
        let key = self
            .resolve(caller, reference, &grant_access("RevokeGrant", caller))
            .await?;
        let grant = self
            .store
            .get_grant(grant_id)
            .await?
            .filter(|grant| grant.key_id == key.key_id)
            .ok_or_else(|| grant_not_found(grant_id))?;
        self.record_key(caller, &key);
        dry_run_stops(dry_run)?;
        match self.store.delete_grant(&grant.grant_id).await {
            Ok(true) => Ok(key),
            Ok(false) => Err(grant_not_found(grant_id)),
            Err(StoreError::Conflict) => Err(grant_not_found(grant_id)),
            Err(other) => Err(other.into()),
        }
    }
}

fn page_of(mut grants: Vec<GrantRecord>, limit: u32) -> GrantPage {
    let limit = limit as usize;
    let has_more = grants.len() > limit;
    grants.truncate(limit);
    let next_after = if has_more {
        grants.last().map(|grant| grant.grant_id.clone())
    } else {
        None
    };
    GrantPage { grants, next_after }
}

/// Whether a child grant's constraint is at least as strict as its parent's
/// (AWS: it "can add pairs to an EncryptionContextSubset constraint … but it
/// cannot remove them", and can turn Subset into Equals, not the reverse).
/// Keys compare without regard to case, as constraints compare them.
fn no_looser(parent: Option<&GrantConstraint>, child: Option<&GrantConstraint>) -> bool {
    let Some((parent_kind, parent_pairs)) = parent else {
        return true;
    };
    let Some((child_kind, child_pairs)) = child else {
        return false;
    };
    let parent = str_pairs(parent_pairs);
    let child = str_pairs(child_pairs);
    let keeps_parent = pairs_within(parent.clone(), child.clone());
    match parent_kind {
        ConstraintKind::Equals => {
            *child_kind == ConstraintKind::Equals && keeps_parent && pairs_within(child, parent)
        }
        ConstraintKind::Subset => keeps_parent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::access::GRANT_OPERATIONS;
    use crate::domain::types::KeyId;
    use coffer_platform::arn::AccountId;

    #[test]
    fn every_grant_operation_fits_some_key_and_none_fits_every_key() {
        for operation in GRANT_OPERATIONS {
            let fitting = KeySpec::ALL
                .iter()
                .flat_map(|spec| KeyUsage::ALL.iter().map(move |usage| (*spec, *usage)))
                .filter(|(spec, usage)| key_supports(*spec, *usage, operation))
                .count();
            let general = matches!(*operation, "CreateGrant" | "RetireGrant" | "DescribeKey");
            let all = KeySpec::ALL.len() * KeyUsage::ALL.len();
            assert!(fitting > 0, "{operation} fits no key");
            assert_eq!(fitting == all, general, "{operation}");
        }
        assert!(!key_supports(
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            "Sign"
        ));
        assert!(!key_supports(
            KeySpec::Rsa2048,
            KeyUsage::EncryptDecrypt,
            "GenerateDataKey"
        ));
        assert!(key_supports(
            KeySpec::Rsa2048,
            KeyUsage::EncryptDecrypt,
            "GetPublicKey"
        ));
    }

    #[test]
    fn child_grant_constraints_may_only_tighten_their_parents() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect()
        };
        let subset: GrantConstraint = (ConstraintKind::Subset, pairs(&[("a", "1")]));
        let equals: GrantConstraint = (ConstraintKind::Equals, pairs(&[("a", "1")]));
        let wider_subset = (ConstraintKind::Subset, pairs(&[("a", "1"), ("b", "2")]));
        let wider_equals = (ConstraintKind::Equals, pairs(&[("A", "1"), ("b", "2")]));
        let other_value = (ConstraintKind::Subset, pairs(&[("a", "2")]));
        assert!(no_looser(None, None));
        assert!(no_looser(None, Some(&subset)));
        assert!(!no_looser(Some(&subset), None), "dropping the constraint");
        assert!(no_looser(Some(&subset), Some(&subset)));
        assert!(
            no_looser(Some(&subset), Some(&wider_subset)),
            "adding pairs"
        );
        assert!(no_looser(Some(&subset), Some(&equals)), "Subset to Equals");
        assert!(no_looser(Some(&subset), Some(&wider_equals)));
        assert!(!no_looser(Some(&subset), Some(&other_value)));
        assert!(
            !no_looser(Some(&wider_subset), Some(&subset)),
            "removing pairs"
        );
        assert!(!no_looser(Some(&equals), Some(&subset)), "Equals to Subset");
        assert!(no_looser(Some(&equals), Some(&equals)));
        assert!(
            !no_looser(Some(&equals), Some(&wider_equals)),
            "Equals admits no other pairs"
        );
        let twin = (ConstraintKind::Equals, pairs(&[("a", "1"), ("A", "1")]));
        let other_pair = (ConstraintKind::Equals, pairs(&[("a", "1"), ("x", "9")]));
        assert!(!no_looser(Some(&twin), Some(&other_pair)));
    }

    #[test]
    fn grant_tokens_round_trip_and_reject_forgeries() {
        let grant = GrantRecord {
            grant_id: "ab".repeat(32),
            key_id: KeyId::generate(),
            key_account: AccountId::parse("111122223333").unwrap(),
            name: String::new(),
            grantee_principal: "arn:coffer:iam::111122223333:user/app".into(),
            retiring_principal: None,
            issuing_account: AccountId::parse("111122223333").unwrap(),
            operations: vec!["Decrypt".into()],
            constraint: None,
            token_secret: "cd".repeat(16),
            created_at_ms: 0,
        };
        let issued = GrantToken::issue(&grant).unwrap();
        let token = GrantToken::parse(&issued).unwrap();
        assert!(token.matches(&grant));
        // Each token is new, and each one works.
        let again = GrantToken::issue(&grant).unwrap();
        assert_ne!(again, issued);
        assert!(GrantToken::parse(&again).unwrap().matches(&grant));
        // A token of the earlier form (the secret itself) still works.
        let earlier = URL_SAFE_NO_PAD.encode(format!("{}.{}", grant.grant_id, grant.token_secret));
        assert!(GrantToken::parse(&earlier).unwrap().matches(&grant));

        let mut other = grant.clone();
        other.token_secret = "ce".repeat(16);
        assert!(!token.matches(&other));
        assert!(!GrantToken::parse(&earlier).unwrap().matches(&other));
        // A MAC moved to another nonce, or to another grant, fails.
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(&issued).unwrap()).unwrap();
        let (id, rest) = text.split_once('.').unwrap();
        let (_, mac) = rest.split_once('.').unwrap();
        let moved = URL_SAFE_NO_PAD.encode(format!("{id}.{}.{mac}", "0".repeat(32)));
        assert!(!GrantToken::parse(&moved).unwrap().matches(&grant));
        let mut renamed = grant.clone();
        renamed.grant_id = "ef".repeat(32);
        let elsewhere = URL_SAFE_NO_PAD.encode(format!("{}.{rest}", renamed.grant_id));
        assert!(!GrantToken::parse(&elsewhere).unwrap().matches(&renamed));
        for bad in [
            "",
            "not-a-token",
            &URL_SAFE_NO_PAD.encode(format!("{}.{}", "AB".repeat(32), "cd".repeat(16))),
            &URL_SAFE_NO_PAD.encode(format!("{}.{}", "ab".repeat(32), "cd".repeat(15))),
            &URL_SAFE_NO_PAD.encode("ab".repeat(48)),
            &URL_SAFE_NO_PAD.encode(format!(
                "{}.{}.{}",
                "ab".repeat(32),
                "cd".repeat(16),
                "ef".repeat(31)
            )),
            &URL_SAFE_NO_PAD.encode(format!(
                "{}.{}.{}.x",
                "ab".repeat(32),
                "cd".repeat(16),
                "ef".repeat(32)
            )),
        ] {
            assert_eq!(GrantToken::parse(bad), None, "{bad}");
        }
    }
}
