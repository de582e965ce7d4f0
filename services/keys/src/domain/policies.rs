//! PutKeyPolicy, GetKeyPolicy, ListKeyPolicies. Every key has exactly one
//! policy, named `default`.

use coffer_platform::authz::Caller;

use super::access::{Access, KeyFacts};
use super::types::KeyReference;
use super::{KeyOperation, KeysDomain};
use crate::error::{KeysError, Result};
use crate::store::KeyRecord;

/// The one policy name a key has.
pub const DEFAULT_POLICY_NAME: &str = "default";

impl KeysDomain {
    /// Replaces a key's policy. Unless `bypass_lockout_check` is
    /// `Some(true)`, the new policy must let the caller change the policy
    /// again. `kms:BypassPolicyLockoutSafetyCheck` is in the request only
    /// when the parameter was sent, as AWS has it.
    pub async fn put_key_policy(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        document: &str,
        bypass_lockout_check: Option<bool>,
    ) -> Result<KeyRecord> {
        let policy = self.parse_key_policy(document)?;
        let mut access = Access::to("PutKeyPolicy");
        if let Some(bypass) = bypass_lockout_check {
            access = access.with_values(
                "kms:BypassPolicyLockoutSafetyCheck",
                vec![bypass.to_string()],
            );
        }
        let checked = bypass_lockout_check != Some(true);
        // The check reads the key's tags and aliases only when the new
        // policy or the caller's identity policies do.
        let facts = match Self::facts_read_by(caller, &policy) {
            Some(filter) if checked => {
                let key = self.resolve(caller, reference, &access).await?;
                self.key_facts(&key, &filter).await?
            }
            _ => KeyFacts::default(),
        };
        self.update_key_with(
            caller,
            reference,
            KeyOperation::Policy,
            &access,
            |key, _now| {
                self.ensure_customer_managed(key, "PutKeyPolicy")?;
                if checked {
                    self.check_lockout(caller, key, &policy, &facts)?;
                }
                document.clone_into(&mut key.policy);
                Ok(())
            },
        )
        .await
    }

    /// The key and its policy document.
    pub async fn get_key_policy(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        policy_name: &str,
    ) -> Result<(KeyRecord, String)> {
        let key = self
            .resolve(caller, reference, &Access::to("GetKeyPolicy"))
            .await?;
        self.check_state(&key, KeyOperation::Policy)?;
        if policy_name != DEFAULT_POLICY_NAME {
            return Err(KeysError::NotFound(format!(
                "Key policy '{policy_name}' does not exist for {}; the only policy is '{DEFAULT_POLICY_NAME}'.",
                self.key_arn(&key.account, &key.key_id)
            )));
        }
        let document = self.key_policy_document(&key);
        Ok((key, document))
    }

    pub async fn list_key_policies(
        &self,
        caller: &Caller,
        reference: &KeyReference,
    ) -> Result<KeyRecord> {
        let key = self
            .resolve(caller, reference, &Access::to("ListKeyPolicies"))
            .await?;
        self.check_state(&key, KeyOperation::Policy)?;
        Ok(key)
    }
}
