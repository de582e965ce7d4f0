//! Who may do what with a key (DESIGN §2): the key policy, the caller's
//! identity policies and the key's grants, decided through the platform's
//! one authorization call.
//!
//! - A key policy must allow, directly or by trusting the account root
//!   (which defers to the caller's identity policies); a caller of another
//!   account also needs its own identity policies to allow.
//! - An explicit Deny in either policy is final. Otherwise a grant for the
//!   caller that names the operation, and whose encryption-context
//!   constraint the request meets, allows. Grants are read from the store on
//!   every such decision, so a retired or revoked grant stops at once.
//! - A caller who is refused and may not even describe the key gets the
//!   answer a missing key gets. The audit event records the denial when the
//!   key is of the caller's account, and that answer when it is another's
//!   (the caller's account may read its own trail).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use coffer_crypto::EncryptionContext;
use coffer_platform::arn::{AccountId, ArnParts};
use coffer_platform::authz::{AttachedPolicies, Caller, KeyFilter};
use coffer_policy::{DecisionEffect, Policy, RequestContext, foreign_partition_arn};
use serde_json::json;

use super::KeysDomain;
use super::types::{KeyId, KeyReference, Tag};
use crate::error::{KeysError, Result};
use crate::store::{ConstraintKind, GrantRecord, KeyRecord};

/// The operations a grant may allow (AWS's list).
pub const GRANT_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
];

/// Grant operations that take an encryption context, to which a grant's
/// constraint applies.
const CONTEXT_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
];

/// Grant operations a constraint cannot be combined with (AWS refuses them).
pub const UNCONSTRAINABLE_OPERATIONS: &[&str] =
    &["Sign", "Verify", "GetPublicKey", "GenerateMac", "VerifyMac"];

/// Operations a principal of another account may perform on a key whose
/// policy allows it; every other operation names keys of the caller's
/// account only.
const CROSS_ACCOUNT_ACTIONS: &[&str] = &[
    "CreateGrant",
    "Decrypt",
    "DescribeKey",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateMac",
    "GetKeyRotationStatus",
    "GetPublicKey",
    "ListGrants",
    "ReEncryptFrom",
    "ReEncryptTo",
    "RetireGrant",
    "RevokeGrant",
    "Sign",
    "Verify",
    "VerifyMac",
];

/// Of those, the operations whose KeyId names another account's key by key
/// ARN only; the others take an alias ARN too (AWS: "use the key ARN or
/// alias ARN").
const KEY_ARN_ONLY_ACROSS_ACCOUNTS: &[&str] = &[
    "CreateGrant",
    "GetKeyRotationStatus",
    "ListGrants",
    "RetireGrant",
    "RevokeGrant",
];

/// Which accounts' keys a KeyId may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// The caller's account only.
    Own,
    /// Another account's too, by key ARN.
    KeyArn,
    /// Another account's too, by key ARN or alias ARN.
    KeyOrAliasArn,
}

/// Condition keys of what a request asks for (KMS's names). A parameter
/// the request leaves out has its default value, as in KMS.
pub const ENCRYPTION_ALGORITHM: &str = "kms:EncryptionAlgorithm";
pub const SIGNING_ALGORITHM: &str = "kms:SigningAlgorithm";
pub const MESSAGE_TYPE: &str = "kms:MessageType";
pub const MAC_ALGORITHM: &str = "kms:MacAlgorithm";
pub const DATA_KEY_PAIR_SPEC: &str = "kms:DataKeyPairSpec";

/// The actions whose condition context has `kms:RequestAlias` when the
/// request names its key by an alias (KMS's cryptographic operations,
/// DescribeKey and GetPublicKey).
const REQUEST_ALIAS_ACTIONS: &[&str] = &[
    "Decrypt",
    "DescribeKey",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateMac",
    "GetPublicKey",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "VerifyMac",
];

/// One permission check on a key: the KMS action (`Encrypt`) and what the
/// request adds to the condition context.
#[derive(Debug, Clone)]
pub struct Access<'a> {
    action: &'static str,
    context: Option<&'a EncryptionContext>,
    /// Request values of a fixed vocabulary (`kms:EncryptionAlgorithm`): no
    /// allocation on the data plane for a check that does not read them. A
    /// request has at most two (Sign's algorithm and message type); any
    /// more would go to `extra`.
    fixed: [Option<(&'static str, &'static str)>; 2],
    extra: Vec<(&'static str, Vec<String>)>,
    /// `kms:RequestAlias`: the alias the request named its key by.
    request_alias: Option<String>,
    /// The tags a request adds: `aws:TagKeys` and `aws:RequestTag/<key>`.
    request_tags: Option<&'a [Tag]>,
    /// ReEncrypt's other key, for `kms:ReEncryptOnSameKey`: the destination
    /// key when the source is checked (`None` when the destination names no
    /// key), and the reverse.
    re_encrypt_with: Option<Option<(&'a AccountId, &'a KeyId)>>,
}

impl<'a> Access<'a> {
    pub fn to(action: &'static str) -> Self {
        Self {
            action,
            context: None,
            fixed: [None; 2],
            extra: Vec::new(),
            request_alias: None,
            request_tags: None,
            re_encrypt_with: None,
        }
    }

    /// A request value of a fixed vocabulary, as `kms:SigningAlgorithm`.
    pub fn with_value(mut self, key: &'static str, value: &'static str) -> Self {
        match self.fixed.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some((key, value)),
            None => self.extra.push((key, vec![value.to_owned()])),
        }
        self
    }

    /// The tags the request adds (TagResource).
    pub fn with_tags(mut self, tags: &'a [Tag]) -> Self {
        self.request_tags = Some(tags);
        self
    }

    /// ReEncrypt's other key (see `re_encrypt_with`).
    pub fn re_encrypting_with(mut self, other: Option<(&'a AccountId, &'a KeyId)>) -> Self {
        self.re_encrypt_with = Some(other);
        self
    }

    /// The same check with `kms:RequestAlias`, when `reference` is an alias
    /// and the action is one that reads it: the alias's name, from an alias
    /// ARN too (policies name aliases, never alias ARNs).
    pub(crate) fn requested_by(&self, reference: &KeyReference) -> Option<Self> {
        let KeyReference::Alias(text) = reference else {
            return None;
        };
        if !REQUEST_ALIAS_ACTIONS.contains(&self.action) {
            return None;
        }
        let name = ArnParts::parse(text).map_or(text.as_str(), |parts| parts.resource);
        let mut access = self.clone();
        access.request_alias = Some(name.to_owned());
        Some(access)
    }

    /// The DescribeKey check of the same request: whether its caller may
    /// know the key exists (by the alias it named, too).
    fn describing(&self) -> Access<'static> {
        let mut describe = Access::to("DescribeKey");
        describe.request_alias.clone_from(&self.request_alias);
        describe
    }

    /// The request's encryption context: `kms:EncryptionContext:*`
    /// condition keys, and what grant constraints are checked against.
    pub fn with_context(mut self, context: &'a EncryptionContext) -> Self {
        self.context = Some(context);
        self
    }

    pub fn with_values(mut self, key: &'static str, values: Vec<String>) -> Self {
        self.extra.push((key, values));
        self
    }

    pub fn action(&self) -> &'static str {
        self.action
    }

    pub(crate) fn crosses_accounts(&self) -> bool {
        CROSS_ACCOUNT_ACTIONS.contains(&self.action)
    }

    pub(crate) fn reach(&self) -> Reach {
        if !self.crosses_accounts() {
            Reach::Own
        } else if KEY_ARN_ONLY_ACROSS_ACCOUNTS.contains(&self.action) {
            Reach::KeyArn
        } else {
            Reach::KeyOrAliasArn
        }
    }

    fn iam_action(&self) -> String {
        format!("kms:{}", self.action)
    }
}

/// A key policy parsed once per document.
struct ParsedPolicy {
    document: String,
    policy: Arc<Policy>,
}

/// Parsed key policies by key id; an entry is reused while the key's
/// document is unchanged.
#[derive(Default)]
pub(crate) struct PolicyCache(Mutex<HashMap<KeyId, Arc<ParsedPolicy>>>);

const MAX_CACHED_POLICIES: usize = 100_000;

impl KeysDomain {
    /// The AWS default key policy: the account root may do everything,
    /// which lets the account's identity policies decide.
    pub fn default_key_policy(&self, account: &AccountId) -> String {
        let root = format!("arn:{}:iam::{account}:root", self.location.partition);
        json!({
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [{
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": root},
                "Action": "kms:*",
                "Resource": "*",
            }],
        })
        .to_string()
    }

    /// The policy of a service-managed key (AWS managed keys' shape): the
    /// account's principals may use it only through the named service, and
    /// the account may read its metadata.
    pub fn service_managed_key_policy(&self, account: &AccountId, service_prefix: &str) -> String {
        let location = &self.location;
        let root = format!("arn:{}:iam::{account}:root", location.partition);
        let via = format!(
            "{service_prefix}.{}.{}",
            location.region, location.dns_suffix
        );
        json!({
            "Version": "2012-10-17",
            "Id": format!("auto-{service_prefix}-1"),
            "Statement": [
                {
                    "Sid": "Allow access through the service for all principals in the account that are authorized to use it",
                    "Effect": "Allow",
                    "Principal": {"AWS": "*"},
                    "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:CreateGrant", "kms:DescribeKey"],
                    "Resource": "*",
                    "Condition": {"StringEquals": {"kms:CallerAccount": account.as_str(), "kms:ViaService": via}},
                },
                {
                    "Sid": "Allow direct access to key metadata to the account",
                    "Effect": "Allow",
                    "Principal": {"AWS": root},
                    "Action": ["kms:Describe*", "kms:Get*", "kms:List*", "kms:RevokeGrant"],
                    "Resource": "*",
                },
            ],
        })
        .to_string()
    }

    /// The document GetKeyPolicy returns.
    pub fn key_policy_document(&self, key: &KeyRecord) -> String {
        if key.policy.is_empty() {
            self.default_key_policy(&key.account)
        } else {
            key.policy.clone()
        }
    }

    /// A policy document as a key policy, or MalformedPolicyDocumentException.
    /// As KMS does, a `ForAllValues:` operator on an encryption-context or
    /// request-tag key is refused: those keys hold one value, and the
    /// condition would hold for a request without the pair or tag at all.
    ///
    /// A condition on the key's tags or aliases is refused: KMS evaluates
    /// those keys in identity policies only.
    ///
    /// A principal or resource ARN of another partition (`arn:aws:…` in a
    /// policy copied from AWS) is refused too: it can never match here, so
    /// a Deny naming it would silently never apply. AWS likewise refuses a
    /// principal it cannot see.
    pub fn parse_key_policy(&self, document: &str) -> Result<Policy> {
        let policy = Policy::parse_resource(document)
            .map_err(|error| KeysError::MalformedPolicy(error.to_string()))?;
        if let Some(arn) = foreign_partition_arn(document, &self.location.partition) {
            return Err(KeysError::MalformedPolicy(format!(
                "{arn:?} is not of this partition ({}): it can never match here.",
                self.location.partition
            )));
        }
        if let Some(key) = reads_tags_or_aliases(&policy) {
            return Err(KeysError::MalformedPolicy(format!(
                "The condition key {key} is evaluated in identity policies only, never in a \
                 key policy: a statement conditioned on it could never apply."
            )));
        }
        if let Some(key) = policy.for_all_values_keys().find(|key| {
            key.starts_with("kms:encryptioncontext:") || key.starts_with("aws:requesttag/")
        }) {
            let what = if key.starts_with("aws:") {
                "tag"
            } else {
                "encryption context"
            };
            return Err(KeysError::MalformedPolicy(format!(
                "OverlyPermissiveCondition: Using the ForAllValues set operator with a \
                 single-valued condition key matches requests without the specified {what} \
                 or with an unspecified {what}. To fix, remove ForAllValues."
            )));
        }
        Ok(policy)
    }

    fn key_policy(&self, key: &KeyRecord) -> Result<Arc<Policy>> {
        let mut cache = self
            .policies
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(parsed) = cache.get(&key.key_id)
            && parsed.document == key.policy
        {
            return Ok(parsed.policy.clone());
        }
        let document = self.key_policy_document(key);
        let policy = Arc::new(
            // Read as stored: a rule added for new policies (overly
            // permissive conditions, other partitions) must not make an old
            // one unreadable.
            Policy::parse_resource(&document).map_err(|error| {
                KeysError::Store(crate::store::StoreError::Corrupt(format!(
                    "the stored policy of {} does not parse: {error}",
                    key.key_id
                )))
            })?,
        );
        // One stored before such policies were refused keeps the meaning it
        // was written with (reading the key's tags or aliases): changing it
        // under its owner could widen as well as narrow it.
        if let Some(condition_key) = reads_tags_or_aliases(&policy) {
            tracing::warn!(key_id = %key.key_id, condition_key,
                "this key policy reads the key's tags or aliases, which KMS reads in identity policies only; it is evaluated as it was written, and a PutKeyPolicy keeping it will be refused");
        }
        if cache.len() >= MAX_CACHED_POLICIES {
            cache.clear();
        }
        cache.insert(
            key.key_id.clone(),
            Arc::new(ParsedPolicy {
                document: key.policy.clone(),
                policy: policy.clone(),
            }),
        );
        Ok(policy)
    }

    /// The condition keys `policy` and the caller's identity policies read.
    fn filter_for<'p>(caller: &'p Caller, policy: &'p Policy) -> KeyFilter<'p> {
        KeyFilter::of(
            std::iter::once(policy).chain(caller.identity_policies().iter().map(Arc::as_ref)),
        )
    }

    /// The condition keys `policy` and the caller's identity policies read,
    /// when they read any of a key's tags or aliases.
    pub(crate) fn facts_read_by<'p>(
        caller: &'p Caller,
        policy: &'p Policy,
    ) -> Option<KeyFilter<'p>> {
        let filter = Self::filter_for(caller, policy);
        (KeyFacts::wants_tags(&filter) || KeyFacts::wants_aliases(&filter)).then_some(filter)
    }

    /// The tags and aliases of `key` that `filter` reads, from the store.
    pub(crate) async fn key_facts(
        &self,
        key: &KeyRecord,
        filter: &KeyFilter<'_>,
    ) -> Result<KeyFacts> {
        let mut facts = KeyFacts::default();
        if KeyFacts::wants_tags(filter) {
            facts.tags = self.store.list_tags(&key.key_id).await?;
        }
        if KeyFacts::wants_aliases(filter) {
            facts.aliases = self
                .store
                .list_aliases(&key.account, Some(&key.key_id), None, MAX_RESOURCE_ALIASES)
                .await?
                .into_iter()
                .map(|alias| alias.alias_name)
                .collect();
        }
        Ok(facts)
    }

    /// The condition context of `access` on `key`, with only the keys that
    /// `filter` wants.
    fn request_on(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        access: &Access<'_>,
        filter: &KeyFilter<'_>,
        facts: &KeyFacts,
    ) -> RequestContext {
        let key_arn = self.key_arn(&key.account, &key.key_id);
        let mut request = caller.request_with(&access.iam_action(), &key_arn, filter);
        if filter.is_empty() {
            return request;
        }
        let multi_region = if key.multi_region { "true" } else { "false" };
        for (name, value) in [
            ("kms:KeySpec", key.key_spec.as_str()),
            ("kms:KeyUsage", key.key_usage.as_str()),
            ("kms:KeyOrigin", key.origin.as_str()),
            ("kms:KeyManager", key.key_manager.as_str()),
            ("kms:MultiRegion", multi_region),
            // Deprecated names AWS still honours.
            ("kms:CustomerMasterKeySpec", key.key_spec.as_str()),
            ("kms:CustomerMasterKeyUsage", key.key_usage.as_str()),
        ] {
            if filter.wants(name) {
                request.add_value(name, value);
            }
        }
        facts.add_to(&mut request, filter);
        if let Some(context) = access.context {
            if filter.wants_prefix("kms:encryptioncontext:") {
                for (name, value) in context.pairs() {
                    request.add_value(&format!("kms:EncryptionContext:{name}"), value.clone());
                }
            }
            if filter.wants("kms:EncryptionContextKeys") {
                request.set_values(
                    "kms:EncryptionContextKeys",
                    context.pairs().keys().cloned().collect::<Vec<_>>(),
                );
            }
        }
        for (name, value) in access.fixed.iter().flatten() {
            if filter.wants(name) {
                request.add_value(name, *value);
            }
        }
        for (name, values) in &access.extra {
            if filter.wants(name) {
                request.set_values(name, values.clone());
            }
        }
        if let Some(tags) = access.request_tags {
            if filter.wants("aws:TagKeys") {
                request.set_values("aws:TagKeys", tags.iter().map(|tag| tag.key.clone()));
            }
            if filter.wants_prefix("aws:requesttag/") {
                for tag in tags {
                    request.add_value(&format!("aws:RequestTag/{}", tag.key), tag.value.clone());
                }
            }
        }
        if let Some(alias) = &access.request_alias
            && filter.wants("kms:RequestAlias")
        {
            request.add_value("kms:RequestAlias", alias.clone());
        }
        if let Some(other) = access.re_encrypt_with
            && filter.wants("kms:ReEncryptOnSameKey")
        {
            let same = other == Some((&key.account, &key.key_id));
            request.add_value(
                "kms:ReEncryptOnSameKey",
                if same { "true" } else { "false" },
            );
        }
        request
    }

    /// Whether the caller may perform `access` on `key`; a refusal is
    /// AccessDeniedException, or `missing()` when the caller may not even
    /// describe the key.
    pub(crate) async fn authorize_key(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        access: &Access<'_>,
        missing: impl FnOnce() -> KeysError,
    ) -> Result<()> {
        let effect = self.policy_effect(caller, key, access).await?;
        if effect == DecisionEffect::Allowed {
            return Ok(());
        }
        if effect == DecisionEffect::ImplicitDeny && self.grant_allows(caller, key, access).await? {
            return Ok(());
        }
        Err(self.refusal(caller, key, access, effect, missing).await?)
    }

    /// The answer to a refused `access` on `key`: AccessDeniedException, or
    /// `missing()` when the caller may not even describe the key (audited as
    /// the denial it is when the key is of the caller's own account).
    pub(crate) async fn refusal(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        access: &Access<'_>,
        effect: DecisionEffect,
        missing: impl FnOnce() -> KeysError,
    ) -> Result<KeysError> {
        let key_arn = self.key_arn(&key.account, &key.key_id);
        let denied = caller
            .denied(&access.iam_action(), &key_arn, effect)
            .message;
        let visible = access.action != "DescribeKey" && {
            let describe = access.describing();
            match self.policy_effect(caller, key, &describe).await? {
                DecisionEffect::Allowed => true,
                DecisionEffect::ExplicitDeny => false,
                DecisionEffect::ImplicitDeny => self.grant_allows(caller, key, &describe).await?,
            }
        };
        Ok(if visible {
            KeysError::AccessDenied(denied)
        } else if key.account != *caller.account() {
            // The event goes to the caller's account, whose principals may
            // read it: there it must say what the caller was told, or the
            // trail would tell another account's key from a missing one.
            // (AWS files denied cross-account calls with the caller only.)
            missing()
        } else {
            KeysError::Concealed {
                shown: Box::new(missing()),
                denied,
            }
        })
    }

    /// Whether the policies alone (no grant) allow `access`.
    pub(crate) async fn policies_allow(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        access: &Access<'_>,
    ) -> Result<bool> {
        Ok(self.policy_effect(caller, key, access).await? == DecisionEffect::Allowed)
    }

    async fn policy_effect(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        access: &Access<'_>,
    ) -> Result<DecisionEffect> {
        let policy = self.key_policy(key)?;
        let filter = Self::filter_for(caller, &policy);
        let facts = self.key_facts(key, &filter).await?;
        let request = self.request_on(caller, key, access, &filter, &facts);
        Ok(decide(caller, &policy, request))
    }

    async fn grant_allows(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        access: &Access<'_>,
    ) -> Result<bool> {
        if !GRANT_OPERATIONS.contains(&access.action) {
            return Ok(false);
        }
        let grants = self.grants_reaching(caller, key, access).await?;
        Ok(grants
            .iter()
            .any(|grant| grant_covers(grant, access.action, access.context)))
    }

    /// The grants on `key` that reach the caller for `access`: those naming
    /// it, and those naming its account (the root) when the caller's
    /// identity policies allow `access` on the key. As with a key policy
    /// that trusts an account, such a grant is delegated by the account's
    /// own policies, never to all of its principals at once.
    pub(crate) async fn grants_reaching(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        access: &Access<'_>,
    ) -> Result<Vec<GrantRecord>> {
        let root = self.location.account_root(caller.account());
        let mut grants = self
            .store
            .grants_for_grantees(&key.key_id, &[caller.arn(), &root])
            .await?;
        if grants.iter().any(|grant| grant.grantee_principal == root)
            && self.identity_effect(caller, key, access).await? != DecisionEffect::Allowed
        {
            grants.retain(|grant| grant.grantee_principal != root);
        }
        Ok(grants)
    }

    /// What the caller's identity policies alone say of `access` on `key`,
    /// with the condition keys they read (the key's tags and aliases too).
    pub(crate) async fn identity_effect(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        access: &Access<'_>,
    ) -> Result<DecisionEffect> {
        let filter = KeyFilter::of(caller.identity_policies().iter().map(Arc::as_ref));
        let facts = self.key_facts(key, &filter).await?;
        let request = self.request_on(caller, key, access, &filter, &facts);
        Ok(caller.authorize_identity(&request).effect)
    }

    /// Actions with no resource (`kms:CreateKey`, `kms:ListKeys`, …): the
    /// caller's identity policies decide, on resource `*`.
    pub(crate) fn authorize_account(
        &self,
        caller: &Caller,
        action: &'static str,
        extra: &[(&str, Vec<String>)],
    ) -> Result<()> {
        self.authorize_identity_on(caller, action, "*", extra)
    }

    /// Whether the caller's identity policies allow `action` on `resource`:
    /// for actions with no resource (`*`), and for aliases, which have no
    /// policy of their own.
    pub(crate) fn authorize_identity_on(
        &self,
        caller: &Caller,
        action: &'static str,
        resource: &str,
        extra: &[(&str, Vec<String>)],
    ) -> Result<()> {
        let iam_action = format!("kms:{action}");
        let mut request = caller.request(&iam_action, resource);
        for (name, values) in extra {
            request.set_values(name, values.clone());
        }
        let decision = caller.authorize_identity(&request);
        if decision.is_allowed() {
            Ok(())
        } else {
            Err(KeysError::AccessDenied(
                caller
                    .denied(&iam_action, resource, decision.effect)
                    .message,
            ))
        }
    }

    /// AWS's lockout safety check: `policy` must let the caller change the
    /// key's policy again, by a PutKeyPolicy that does not bypass the check
    /// (so without `kms:BypassPolicyLockoutSafetyCheck`), the key having
    /// `facts` (read when [`Self::facts_read_by`] says the policies need
    /// them).
    pub(crate) fn check_lockout(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        policy: &Policy,
        facts: &KeyFacts,
    ) -> Result<()> {
        let filter = Self::filter_for(caller, policy);
        let request = self.request_on(caller, key, &Access::to("PutKeyPolicy"), &filter, facts);
        if caller.authorize(Some(policy), &request).is_allowed() {
            Ok(())
        } else {
            Err(KeysError::MalformedPolicy(
                "The new key policy will not allow you to update the key policy in the future."
                    .into(),
            ))
        }
    }
}

/// How many aliases of a key `kms:ResourceAliases` holds at most (AWS
/// evaluates it for keys of up to 50 aliases).
const MAX_RESOURCE_ALIASES: u32 = 50;

/// What a policy may read of a key beyond its record: its tags
/// (`aws:ResourceTag/<key>`) and aliases (`kms:ResourceAliases`). They are
/// read from the store only when a policy in play reads them.
#[derive(Debug, Default, Clone)]
pub(crate) struct KeyFacts {
    pub(crate) tags: Vec<Tag>,
    pub(crate) aliases: Vec<String>,
}

impl KeyFacts {
    fn wants_tags(filter: &KeyFilter<'_>) -> bool {
        filter.wants_prefix("aws:resourcetag/")
    }

    fn wants_aliases(filter: &KeyFilter<'_>) -> bool {
        filter.wants("kms:ResourceAliases")
    }

    fn add_to(&self, request: &mut RequestContext, filter: &KeyFilter<'_>) {
        if Self::wants_tags(filter) {
            for tag in &self.tags {
                request.add_value(&format!("aws:ResourceTag/{}", tag.key), tag.value.clone());
            }
        }
        // A key of no alias has no value: ForAnyValue fails, ForAllValues
        // and Null hold, as AWS describes.
        if !self.aliases.is_empty() && Self::wants_aliases(filter) {
            request.set_values("kms:ResourceAliases", self.aliases.clone());
        }
    }
}

/// A remembered policy decision. The decision is a pure function of the
/// key policy, the identity policies and the request (principal, action,
/// resource and the condition keys those policies read), so it is reused
/// for an equal request under the same policy objects. The entry holds the
/// policies, so their addresses cannot be reused by others while it lives;
/// a changed key policy or reloaded identity policies are new objects and
/// miss. Grants are never cached.
struct RememberedDecision {
    _key_policy: Arc<Policy>,
    _identity: AttachedPolicies,
    effect: DecisionEffect,
}

type DecisionKey = (usize, usize, RequestContext);

const MAX_REMEMBERED_DECISIONS: usize = 4096;

thread_local! {
    static DECISIONS: std::cell::RefCell<HashMap<DecisionKey, RememberedDecision>> =
        std::cell::RefCell::new(HashMap::new());
}

/// The policy decision for `request`, from this thread's memory when an
/// equal request was decided under the same policies.
/// Whether a condition key is one KMS evaluates in identity policies only:
/// "the aws:ResourceTag/tag-key condition key is supported only in IAM
/// policies", and `kms:ResourceAliases` likewise.
fn identity_policy_only(lowercase_key: &str) -> bool {
    lowercase_key.starts_with("aws:resourcetag/") || lowercase_key == "kms:resourcealiases"
}

/// The first identity-policy-only key a key policy reads, in a Condition
/// block or as a policy variable (`${aws:ResourceTag/team}`, however its
/// JSON spells it), lowercased.
fn reads_tags_or_aliases(policy: &Policy) -> Option<String> {
    policy
        .named_condition_keys()
        .chain(policy.variable_keys())
        .find(|key| identity_policy_only(key))
        .map(str::to_owned)
}

fn decide(caller: &Caller, policy: &Arc<Policy>, request: RequestContext) -> DecisionEffect {
    let identity = caller.identity_policies();
    let key: DecisionKey = (
        Arc::as_ptr(policy) as usize,
        Arc::as_ptr(identity).cast::<()>() as usize,
        request,
    );
    let remembered = DECISIONS.with(|decisions| {
        decisions
            .borrow()
            .get(&key)
            .map(|remembered| remembered.effect)
    });
    if let Some(effect) = remembered {
        caller.mark_decided();
        return effect;
    }
    let effect = caller.authorize(Some(policy), &key.2).effect;
    DECISIONS.with(|decisions| {
        let mut decisions = decisions.borrow_mut();
        if decisions.len() >= MAX_REMEMBERED_DECISIONS {
            decisions.clear();
        }
        decisions.insert(
            key,
            RememberedDecision {
                _key_policy: policy.clone(),
                _identity: identity.clone(),
                effect,
            },
        );
    });
    effect
}

/// Whether `grant` allows `operation` with the request's encryption context.
pub(crate) fn grant_covers(
    grant: &GrantRecord,
    operation: &str,
    context: Option<&EncryptionContext>,
) -> bool {
    if !grant.operations.iter().any(|allowed| allowed == operation) {
        return false;
    }
    let Some((kind, pairs)) = &grant.constraint else {
        return true;
    };
    if !CONTEXT_OPERATIONS.contains(&operation) {
        return true;
    }
    let empty = std::collections::BTreeMap::new();
    let request = context.map_or(&empty, EncryptionContext::pairs);
    // AWS: "in a grant constraint, the key in each key-value pair is not
    // case sensitive, but the value is case sensitive".
    let request_pairs = request
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()));
    let constraint_pairs = str_pairs(pairs);
    match kind {
        // A constraint's keys differ even ignoring case (CreateGrant
        // refuses others), a request's only exactly: with the counts equal,
        // no request pair such as `A` beside `a` is left over.
        ConstraintKind::Equals => {
            request.len() == pairs.len()
                && pairs_within(constraint_pairs.clone(), request_pairs.clone())
                && pairs_within(request_pairs, constraint_pairs)
        }
        ConstraintKind::Subset => pairs_within(constraint_pairs, request_pairs),
    }
}

/// A constraint's pairs, borrowed.
pub(crate) fn str_pairs(pairs: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> + Clone {
    pairs
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
}

/// Whether every pair of `wanted` is among `among`, keys compared as a
/// grant constraint compares them.
pub(crate) fn pairs_within<'a>(
    wanted: impl IntoIterator<Item = (&'a str, &'a str)>,
    among: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) -> bool {
    wanted.into_iter().all(|(name, value)| {
        among
            .clone()
            .any(|(key, given)| given == value && same_context_key(key, name))
    })
}

/// Whether two encryption context keys are the same in a grant constraint,
/// which compares keys without regard to case.
pub(crate) fn same_context_key(a: &str, b: &str) -> bool {
    a == b
        || a.chars()
            .flat_map(char::to_lowercase)
            .eq(b.chars().flat_map(char::to_lowercase))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn grant(kind: ConstraintKind, pairs: &[(&str, &str)]) -> GrantRecord {
        GrantRecord {
            grant_id: "0".repeat(64),
            key_id: KeyId::generate(),
            key_account: AccountId::parse("111122223333").unwrap(),
            name: String::new(),
            grantee_principal: "arn:coffer:iam::111122223333:user/app".into(),
            retiring_principal: None,
            issuing_account: AccountId::parse("111122223333").unwrap(),
            operations: vec!["Decrypt".into(), "DescribeKey".into()],
            constraint: Some((
                kind,
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )),
            token_secret: String::new(),
            created_at_ms: 0,
        }
    }

    fn context(pairs: &[(&str, &str)]) -> EncryptionContext {
        EncryptionContext::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn key_policies_reading_tags_or_aliases_are_found() {
        let found =
            |document: &str| reads_tags_or_aliases(&Policy::parse_resource(document).unwrap());
        let statement = |condition: &str| {
            format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*","Condition":{condition}}}]}}"#
            )
        };
        assert_eq!(
            found(&statement(
                r#"{"StringEquals":{"aws:ResourceTag/Team":"blue"}}"#
            ))
            .as_deref(),
            Some("aws:resourcetag/team")
        );
        assert_eq!(
            found(&statement(
                r#"{"ForAnyValue:StringEquals":{"KMS:ResourceAliases":"alias/a"}}"#
            ))
            .as_deref(),
            Some("kms:resourcealiases")
        );
        assert_eq!(
            found(&statement(
                r#"{"StringEquals":{"aws:PrincipalTag/team":"${aws:ResourceTag/team}"}}"#
            ))
            .as_deref(),
            Some("aws:resourcetag/team")
        );
        assert_eq!(
            found(&statement(
                r#"{"StringEquals":{"aws:PrincipalArn":"${kms:ResourceAliases, 'none'}"}}"#
            ))
            .as_deref(),
            Some("kms:resourcealiases")
        );
        // JSON escapes spell the same variables: the policy reads what the
        // JSON decodes to, and so does this check.
        for escaped in [
            r#"{"StringEquals":{"aws:PrincipalArn":"\u0024{aws:ResourceTag/owner}"}}"#,
            r#"{"StringEquals":{"aws:PrincipalArn":"$\u007baws:\u0052esourceTag/owner}"}}"#,
            r#"{"StringLike":{"kms:EncryptionContext:owner":"*\u0024{aws:ResourceTag/owner}"}}"#,
        ] {
            assert_eq!(
                found(&statement(escaped)).as_deref(),
                Some("aws:resourcetag/owner"),
                "{escaped}"
            );
        }
        let in_resource = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"arn:coffer:kms:*:*:key/\u0024{kms:ResourceAliases}"}]}"#;
        assert_eq!(found(in_resource).as_deref(), Some("kms:resourcealiases"));
        for innocent in [
            r#"{"StringEquals":{"aws:RequestTag/Team":"blue"}}"#,
            r#"{"StringEquals":{"aws:PrincipalArn":"${aws:username}"}}"#,
            r#"{"StringEquals":{"kms:EncryptionContext:aws:ResourceTag":"x"}}"#,
        ] {
            assert_eq!(found(&statement(innocent)), None, "{innocent}");
        }
    }

    #[test]
    fn equals_constraints_need_exactly_the_same_pairs_in_any_order() {
        let equals = grant(ConstraintKind::Equals, &[("a", "1"), ("b", "2")]);
        let same = context(&[("b", "2"), ("a", "1")]);
        assert!(grant_covers(&equals, "Decrypt", Some(&same)));
        assert!(!grant_covers(&equals, "Decrypt", None), "missing context");
        assert!(!grant_covers(
            &equals,
            "Decrypt",
            Some(&context(&[("a", "1")]))
        ));
        assert!(
            !grant_covers(
                &equals,
                "Decrypt",
                Some(&context(&[("a", "1"), ("b", "2"), ("c", "3")]))
            ),
            "extra pair"
        );
        assert!(
            grant_covers(
                &equals,
                "Decrypt",
                Some(&context(&[("A", "1"), ("b", "2")]))
            ),
            "a constraint's keys are not case sensitive"
        );
        assert!(
            !grant_covers(
                &equals,
                "Decrypt",
                Some(&context(&[("a", "1"), ("A", "1"), ("b", "2")]))
            ),
            "an extra pair whose key differs only in case"
        );
        assert!(
            !grant_covers(
                &equals,
                "Decrypt",
                Some(&context(&[("a", "1"), ("b", "X")]))
            ),
            "another value"
        );
        let lettered = grant(ConstraintKind::Equals, &[("Stage", "Prod")]);
        assert!(grant_covers(
            &lettered,
            "Decrypt",
            Some(&context(&[("sTAGE", "Prod")]))
        ));
        assert!(
            !grant_covers(&lettered, "Decrypt", Some(&context(&[("Stage", "prod")]))),
            "its values are"
        );
        // Two keys alike but for case (refused at CreateGrant) never let an
        // unnamed pair through.
        let twin = grant(ConstraintKind::Equals, &[("a", "1"), ("A", "1")]);
        assert!(!grant_covers(
            &twin,
            "Decrypt",
            Some(&context(&[("a", "1"), ("x", "9")]))
        ));
        assert!(
            !grant_covers(&equals, "Encrypt", Some(&same)),
            "not granted"
        );
        assert!(
            grant_covers(&equals, "DescribeKey", None),
            "constraints do not apply to operations without a context"
        );
    }

    #[test]
    fn subset_constraints_allow_extra_pairs() {
        let subset = grant(ConstraintKind::Subset, &[("a", "1")]);
        assert!(grant_covers(
            &subset,
            "Decrypt",
            Some(&context(&[("a", "1"), ("b", "2")]))
        ));
        assert!(!grant_covers(
            &subset,
            "Decrypt",
            Some(&context(&[("b", "2")]))
        ));
        assert!(!grant_covers(&subset, "Decrypt", None));
    }
}
