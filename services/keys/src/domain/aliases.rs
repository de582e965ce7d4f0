//! Aliases, and the service-managed keys behind `alias/coffer/…`.

use coffer_platform::arn::{AccountId, ArnParts};
use coffer_platform::authz::Caller;

use super::access::{Access, Reach};

use super::lifecycle::NewKey;
use super::types::{KeyId, KeyManager, KeyReference, KeySpec, KeyUsage};
use super::{KeyOperation, KeysDomain, SERVICE_PREFIX};
use crate::error::{KeysError, Result};
use crate::store::{AliasRecord, KeyRecord, StoreError};

/// Aliases callers may not create, change or delete.
pub const RESERVED_ALIAS_PREFIXES: &[&str] = &["alias/aws/", "alias/coffer/"];

/// Service-managed keys, created in an account the first time they are named.
pub const SERVICE_MANAGED_ALIASES: &[(&str, &str)] = &[
    ("alias/coffer/secretsmanager", "Secrets Manager"),
    ("alias/coffer/ssm", "Parameter Store"),
    ("alias/coffer/acm", "Certificate Manager"),
];

/// The predefined alias named `alias_name`, with its service's title.
fn predefined(alias_name: &str) -> Option<(&'static str, &'static str)> {
    SERVICE_MANAGED_ALIASES
        .iter()
        .copied()
        .find(|(name, _)| *name == alias_name)
}

/// AWS's quota of aliases per KMS key.
pub const MAX_ALIASES_PER_KEY: usize = 50;

/// How often UpdateAlias and DeleteAlias read an alias again after another
/// call changed it between their check and their write.
const ALIAS_CHANGE_ATTEMPTS: usize = 5;

/// One page of ListAliases.
#[derive(Debug, Clone)]
pub struct AliasPage {
    pub aliases: Vec<ListedAlias>,
    pub next_after: Option<String>,
}

/// An alias as ListAliases shows it.
#[derive(Debug, Clone)]
pub enum ListedAlias {
    Stored(AliasRecord),
    /// A service-managed key's alias before its key exists: AWS lists its
    /// predefined aliases from the start, without a target.
    Predefined(&'static str),
}

impl ListedAlias {
    pub fn name(&self) -> &str {
        match self {
            Self::Stored(alias) => &alias.alias_name,
            Self::Predefined(name) => name,
        }
    }
}

impl KeysDomain {
    pub fn alias_arn(&self, account: &AccountId, alias_name: &str) -> String {
        self.location.arn(SERVICE_PREFIX, account, alias_name)
    }

    /// The answer for an alias that does not exist (or is not the caller's).
    pub(crate) fn alias_not_found(&self, account: &AccountId, alias_name: &str) -> KeysError {
        KeysError::NotFound(format!(
            "Alias '{}' is not found.",
            self.alias_arn(account, alias_name)
        ))
    }

    /// The key behind `alias/name` (of the caller's account) or an alias
    /// ARN of this region: of the caller's account, or of another account
    /// when `other_accounts` (an operation whose KeyId AWS lets name another
    /// account's alias ARN; the key's policy then decides, as for a key ARN).
    pub(crate) async fn resolve_alias(
        &self,
        caller: &AccountId,
        text: &str,
        other_accounts: bool,
    ) -> Result<KeyRecord> {
        // The answer a refusal gets too (`missing`), so the two cannot be
        // told apart.
        let not_found = || self.missing(caller, &KeyReference::Alias(text.to_owned()));
        let (owner, alias_name) = self
            .alias_owner(caller, text, other_accounts)
            .ok_or_else(not_found)?;
        match self.store.get_alias(&owner, alias_name).await? {
            Some(alias) => self
                .store
                .get_key(&owner, &alias.target_key_id)
                .await?
                .ok_or_else(not_found),
            // Service-managed keys are created on first use in their own
            // account only, never from another account.
            None if owner == *caller && predefined(alias_name).is_some() => {
                self.service_managed_key(caller, alias_name).await
            }
            None => Err(not_found()),
        }
    }

    /// The account and name an alias reference (a name, or an alias ARN of
    /// this partition and region) names, if the caller may name it.
    fn alias_owner<'t>(
        &self,
        caller: &AccountId,
        text: &'t str,
        other_accounts: bool,
    ) -> Option<(AccountId, &'t str)> {
        match ArnParts::parse(text) {
            Some(parts) => {
                let here = parts.partition == self.location.partition
                    && parts.region == self.location.region;
                let owner = AccountId::parse(parts.account)
                    .filter(|owner| here && (owner == caller || other_accounts))?;
                Some((owner, parts.resource))
            }
            None => Some((caller.clone(), text)),
        }
    }

    /// The account and id of the key `reference` names, if it names one,
    /// found without authorizing anything or creating a service-managed key:
    /// for condition values that compare keys (`kms:ReEncryptOnSameKey`).
    pub(crate) async fn key_named(
        &self,
        caller: &AccountId,
        reference: &KeyReference,
    ) -> Result<Option<(AccountId, KeyId)>> {
        match reference {
            KeyReference::Id(key_id) => Ok(Some((caller.clone(), key_id.clone()))),
            KeyReference::Arn {
                account, key_id, ..
            } => Ok(Some((account.clone(), key_id.clone()))),
            KeyReference::Alias(text) => {
                let Some((owner, alias_name)) = self.alias_owner(caller, text, true) else {
                    return Ok(None);
                };
                let alias = self.store.get_alias(&owner, alias_name).await?;
                Ok(alias.map(|alias| (owner, alias.target_key_id)))
            }
            KeyReference::Unknown(_) => Ok(None),
        }
    }

    /// The service-managed key behind `alias_name` in `account`, created on
    /// first use: symmetric, rotated yearly, not manageable by callers.
    pub async fn service_managed_key(
        &self,
        account: &AccountId,
        alias_name: &str,
    ) -> Result<KeyRecord> {
        let Some((_, service_title)) = predefined(alias_name) else {
            return Err(self.alias_not_found(account, alias_name));
        };
        if let Some(alias) = self.store.get_alias(account, alias_name).await?
            && let Some(key) = self.store.get_key(account, &alias.target_key_id).await?
        {
            return Ok(key);
        }
        let service_prefix = alias_name.rsplit('/').next().unwrap_or_default();
        let request = NewKey {
            description: format!(
                "Default key that protects my {service_title} data when no other key is defined"
            ),
            key_usage: KeyUsage::EncryptDecrypt,
            key_spec: KeySpec::SymmetricDefault,
            tags: Vec::new(),
            multi_region: false,
            policy: Some(self.service_managed_key_policy(account, service_prefix)),
            bypass_policy_lockout_safety_check: Some(true),
        };
        // The key and its alias are written in one transaction, so a
        // failure between them cannot leave a key no alias names (which
        // callers could neither use through the alias nor delete).
        for _attempt in 0..2 {
            let (key, material) = self
                .new_key_record(account, &request, KeyManager::Aws, |_| Ok(()))
                .await?;
            let alias = AliasRecord {
                account: account.clone(),
                alias_name: alias_name.to_owned(),
                target_key_id: key.key_id.clone(),
                created_at_ms: key.created_at_ms,
                updated_at_ms: key.created_at_ms,
            };
            match self
                .store
                .create_service_managed_key(&key, &material, &alias)
                .await
            {
                Ok(true) => return Ok(key),
                // Another request created it first: use theirs.
                Ok(false) => {
                    let existing = self
                        .store
                        .get_alias(account, alias_name)
                        .await?
                        .ok_or_else(|| {
                            KeysError::Store(StoreError::Corrupt(
                                "service-managed alias vanished".into(),
                            ))
                        })?;
                    return self
                        .store
                        .get_key(account, &existing.target_key_id)
                        .await?
                        .ok_or_else(|| {
                            KeysError::Store(StoreError::Corrupt(
                                "service-managed key vanished".into(),
                            ))
                        });
                }
                // A key id taken already: a fault of the generator, tried once more.
                Err(StoreError::Conflict) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    fn ensure_alias_target(&self, key: &KeyRecord, operation: &str) -> Result<()> {
        self.check_state(key, KeyOperation::Alias)?;
        self.ensure_customer_managed(key, operation)
    }

    pub async fn create_alias(
        &self,
        caller: &Caller,
        alias_name: &str,
        target: &KeyReference,
    ) -> Result<()> {
        // Both the alias (by the caller's identity policies) and the key
        // must allow it, as in KMS.
        let alias_arn = self.alias_arn(caller.account(), alias_name);
        self.authorize_identity_on(caller, "CreateAlias", &alias_arn, &[])?;
        let key = self
            .resolve(caller, target, &Access::to("CreateAlias"))
            .await?;
        self.ensure_alias_target(&key, "CreateAlias")?;
        self.record_key_response(caller, &key);
        let now_ms = self.now_ms();
        let caller = caller.account();
        let alias = AliasRecord {
            account: caller.clone(),
            alias_name: alias_name.to_owned(),
            target_key_id: key.key_id,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        };
        match self.store.create_alias(&alias, MAX_ALIASES_PER_KEY).await {
            Ok(count) if count > MAX_ALIASES_PER_KEY => {
                Err(self.too_many_aliases(caller, &alias.target_key_id))
            }
            Ok(_) => Ok(()),
            Err(StoreError::Conflict) => Err(KeysError::AlreadyExists(format!(
                "An alias with the name {} already exists.",
                self.alias_arn(caller, alias_name)
            ))),
            Err(other) => Err(self.write_refused(&alias.account, &alias.target_key_id)(
                other,
            )),
        }
    }

    fn too_many_aliases(&self, account: &AccountId, key_id: &KeyId) -> KeysError {
        KeysError::LimitExceeded(format!(
            "{} already has {MAX_ALIASES_PER_KEY} aliases, the most a key may have.",
            self.key_arn(account, key_id)
        ))
    }

    /// An alias of the caller's account and the key it points at now, which
    /// must allow `access`; NotFoundException for the alias otherwise, so a
    /// refusal tells nothing of the key.
    async fn alias_and_target(
        &self,
        principal: &Caller,
        alias_name: &str,
        access: &Access<'_>,
    ) -> Result<(AliasRecord, Option<KeyRecord>)> {
        let caller = principal.account();
        let not_found = || self.alias_not_found(caller, alias_name);
        let alias = self
            .store
            .get_alias(caller, alias_name)
            .await?
            .ok_or_else(not_found)?;
        let key = self.store.get_key(caller, &alias.target_key_id).await?;
        if let Some(key) = &key {
            self.authorize_key(principal, key, access, not_found)
                .await?;
        }
        Ok((alias, key))
    }

    /// Points an alias at another key of the same kind and key usage.
    pub async fn update_alias(
        &self,
        caller: &Caller,
        alias_name: &str,
        target: &KeyReference,
    ) -> Result<()> {
        let principal = caller;
        let caller = principal.account();
        // The alias, its current key and its new key must all allow it; the
        // alias first, so a caller it refuses cannot learn which aliases exist.
        let alias_arn = self.alias_arn(caller, alias_name);
        self.authorize_identity_on(principal, "UpdateAlias", &alias_arn, &[])?;
        let access = Access::to("UpdateAlias");
        for _attempt in 0..ALIAS_CHANGE_ATTEMPTS {
            let (alias, current) = self
                .alias_and_target(principal, alias_name, &access)
                .await?;
            let new_key = self.resolve(principal, target, &access).await?;
            self.ensure_alias_target(&new_key, "UpdateAlias")?;
            if let Some(current) = &current
                && (current.key_spec.kind() != new_key.key_spec.kind()
                    || current.key_usage != new_key.key_usage)
            {
                // AWS's rule: the same kind of key (symmetric encryption,
                // asymmetric or HMAC) with the same usage; the spec may differ.
                return Err(KeysError::validation(
                    "target_key_id",
                    format!(
                        "the new key must be of the same kind and key usage as the current one ({} {})",
                        current.key_spec, current.key_usage
                    ),
                ));
            }
            self.record_key_response(principal, &new_key);
            match self
                .store
                .update_alias(
                    caller,
                    alias_name,
                    &alias.target_key_id,
                    &new_key.key_id,
                    self.now_ms(),
                    MAX_ALIASES_PER_KEY,
                )
                .await
                .map_err(self.write_refused(&new_key.account, &new_key.key_id))?
            {
                Some(count) if count > MAX_ALIASES_PER_KEY => {
                    return Err(self.too_many_aliases(caller, &new_key.key_id));
                }
                Some(_) => return Ok(()),
                None => {}
            }
            // Deleted or pointed elsewhere since it was read: what was
            // authorized no longer holds, so decide again on what it is now.
        }
        Err(StoreError::Conflict.into())
    }

    pub async fn delete_alias(&self, caller: &Caller, alias_name: &str) -> Result<()> {
        let principal = caller;
        let caller = principal.account();
        let alias_arn = self.alias_arn(caller, alias_name);
        self.authorize_identity_on(principal, "DeleteAlias", &alias_arn, &[])?;
        let access = Access::to("DeleteAlias");
        for _attempt in 0..ALIAS_CHANGE_ATTEMPTS {
            let (alias, key) = self
                .alias_and_target(principal, alias_name, &access)
                .await?;
            match &key {
                Some(key) => {
                    self.record_key(principal, key);
                    self.record_key_response(principal, key);
                }
                // An earlier attempt's key is not this one's.
                None => principal.record_response(serde_json::Value::Null),
            }
            if self
                .store
                .delete_alias(caller, alias_name, &alias.target_key_id)
                .await?
            {
                return Ok(());
            }
        }
        Err(StoreError::Conflict.into())
    }

    pub async fn list_aliases(
        &self,
        caller: &Caller,
        key: Option<&KeyReference>,
        limit: u32,
        after: Option<&str>,
    ) -> Result<AliasPage> {
        self.authorize_account(caller, "ListAliases", &[])?;
        let caller = caller.account();
        let key_id: Option<KeyId> = match key {
            // An alias names its key without creating a service-managed
            // one (a list call writes nothing): a predefined alias whose
            // key does not exist yet lists itself alone, without a target,
            // as it does among all the account's aliases.
            Some(reference @ KeyReference::Alias(text)) => {
                let (owner, alias_name) = self
                    .alias_owner(caller, text, false)
                    .ok_or_else(|| self.missing(caller, reference))?;
                match self.store.get_alias(&owner, alias_name).await? {
                    Some(alias) => Some(alias.target_key_id),
                    None => {
                        let Some((name, _)) = predefined(alias_name) else {
                            return Err(self.missing(caller, reference));
                        };
                        let aliases = if after.is_none_or(|after| name > after) {
                            vec![ListedAlias::Predefined(name)]
                        } else {
                            Vec::new()
                        };
                        return Ok(AliasPage {
                            aliases,
                            next_after: None,
                        });
                    }
                }
            }
            Some(reference) => Some(self.find_key(caller, reference, Reach::Own).await?.key_id),
            None => None,
        };
        let stored = self
            .store
            .list_aliases(caller, key_id.as_ref(), after, limit.saturating_add(1))
            .await?;
        let mut aliases: Vec<ListedAlias> = stored.into_iter().map(ListedAlias::Stored).collect();
        if key_id.is_none() {
            // The predefined aliases past the marker whose keys do not exist
            // yet. One missing from the stored rows may still be stored past
            // them, but then it sorts after every row read, past this page.
            for (name, _) in SERVICE_MANAGED_ALIASES {
                if after.is_none_or(|after| *name > after)
                    && !aliases.iter().any(|alias| alias.name() == *name)
                {
                    aliases.push(ListedAlias::Predefined(name));
                }
            }
            // Byte order, the order the database reads aliases in (their
            // names are ASCII, and Postgres compares them with the "C"
            // collation) and markers compare in.
            aliases.sort_by(|a, b| a.name().cmp(b.name()));
        }
        let has_more = aliases.len() > limit as usize;
        aliases.truncate(limit as usize);
        let next_after = if has_more {
            aliases.last().map(|alias| alias.name().to_owned())
        } else {
            None
        };
        Ok(AliasPage {
            aliases,
            next_after,
        })
    }
}
