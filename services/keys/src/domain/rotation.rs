//! Key rotation: automatic (on a schedule) and on demand. Every earlier
//! backing key is kept, so ciphertexts made before a rotation decrypt forever.

use coffer_crypto::MaterialId;
use coffer_platform::audit::service::ServiceEvents;
use coffer_platform::authz::Caller;

use super::access::Access;
use super::lifecycle::{DueWork, for_each_due_key};

use super::types::{KeyReference, KeySpec, KeyState, RotationType};
use super::{DAY_MS, KeyOperation, KeysDomain};
use crate::error::{KeysError, Result};
use crate::store::{KeyRecord, MaterialRecord, StoreError};

pub const DEFAULT_ROTATION_PERIOD_DAYS: i32 = 365;
pub const MIN_ROTATION_PERIOD_DAYS: i32 = 90;
pub const MAX_ROTATION_PERIOD_DAYS: i32 = 2560;
/// On-demand rotations allowed per key: AWS's quota as its developer
/// guide gives it now (the API reference still says 10).
pub const MAX_ON_DEMAND_ROTATIONS: usize = 25;

/// How soon before a key's automatic rotation an on-demand one is refused
/// (KMS's ConflictException: the two would rotate the key twice in a row).
pub const ON_DEMAND_CONFLICT_WINDOW_MS: i64 = 20 * 60 * 1000;

/// GetKeyRotationStatus.
#[derive(Debug, Clone)]
pub struct RotationStatus {
    pub key: KeyRecord,
    /// When the status was read.
    pub as_of_ms: i64,
}

impl RotationStatus {
    /// Automatic rotation as AWS reports it: off while the key is pending
    /// deletion (the key is not rotated then), and back as it was if the
    /// deletion is cancelled.
    pub fn rotation_enabled(&self) -> bool {
        self.key.rotation_enabled && self.key.key_state != KeyState::PendingDeletion
    }

    /// When the key rotates next, when it rotates automatically: a rotation
    /// that is due already happens now (at the scheduler's next run).
    pub fn next_rotation_ms(&self) -> Option<i64> {
        self.key
            .next_rotation_ms
            .filter(|_| self.rotation_enabled())
            .map(|due| due.max(self.as_of_ms))
    }
}

/// One page of ListKeyRotations.
#[derive(Debug, Clone)]
pub struct RotationPage {
    pub key: KeyRecord,
    pub rotations: Vec<MaterialRecord>,
    /// The last listed rotation's material when more follow.
    pub next_after: Option<MaterialId>,
}

/// When a key rotates next after EnableKeyRotation: one period from now
/// when rotation was off. Enabling it again keeps the schedule (a tool that
/// re-applies its settings every day must not put the rotation off for
/// ever); a new period counts from the last rotation (or from when rotation
/// was enabled), and a date that has passed already means rotating now. The
/// date is kept as it falls, past or not, so that a later change of period
/// still counts from the same start (kept as now, a second change before
/// the rotation ran would count from a start moved forward).
fn next_rotation_on_enable(key: &KeyRecord, period_days: i32, now_ms: i64) -> i64 {
    let period_ms = i64::from(period_days) * DAY_MS;
    match (
        key.rotation_enabled,
        key.rotation_period_days,
        key.next_rotation_ms,
    ) {
        (true, Some(current), Some(next)) if current == period_days => next,
        (true, Some(current), Some(next)) => {
            let since = next.saturating_sub(i64::from(current) * DAY_MS);
            since.saturating_add(period_ms)
        }
        _ => now_ms.saturating_add(period_ms),
    }
}

impl KeysDomain {
    fn ensure_rotatable(&self, key: &KeyRecord, operation: &str) -> Result<()> {
        if key.key_spec != KeySpec::SymmetricDefault {
            return Err(KeysError::Unsupported(format!(
                "{operation} is supported only for symmetric encryption keys; {} is {}.",
                self.key_arn(&key.account, &key.key_id),
                key.key_spec
            )));
        }
        Ok(())
    }

    pub async fn enable_key_rotation(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        period_days: i32,
    ) -> Result<KeyRecord> {
        self.update_key_with(
            caller,
            reference,
            KeyOperation::EnableRotation,
            &Access::to("EnableKeyRotation")
                .with_values("kms:RotationPeriodInDays", vec![period_days.to_string()]),
            |key, now_ms| {
                self.ensure_rotatable(key, "EnableKeyRotation")?;
                self.ensure_customer_managed(key, "EnableKeyRotation")?;
                key.next_rotation_ms = Some(next_rotation_on_enable(key, period_days, now_ms));
                key.rotation_enabled = true;
                key.rotation_period_days = Some(period_days);
                self.record_key_response(caller, key);
                Ok(())
            },
        )
        .await
    }

    pub async fn disable_key_rotation(
        &self,
        caller: &Caller,
        reference: &KeyReference,
    ) -> Result<KeyRecord> {
        self.update_key_with(
            caller,
            reference,
            KeyOperation::DisableRotation,
            &Access::to("DisableKeyRotation"),
            |key, _now| {
                self.ensure_rotatable(key, "DisableKeyRotation")?;
                self.ensure_customer_managed(key, "DisableKeyRotation")?;
                key.rotation_enabled = false;
                key.rotation_period_days = None;
                key.next_rotation_ms = None;
                Ok(())
            },
        )
        .await
    }

    pub async fn get_key_rotation_status(
        &self,
        caller: &Caller,
        reference: &KeyReference,
    ) -> Result<RotationStatus> {
        let key = self
            .resolve(caller, reference, &Access::to("GetKeyRotationStatus"))
            .await?;
        self.check_state(&key, KeyOperation::RotationStatus)?;
        // A key that cannot rotate automatically (asymmetric, HMAC) is not
        // refused: its status is off, as KMS reports it.
        Ok(RotationStatus {
            key,
            as_of_ms: self.now_ms(),
        })
    }

    /// Makes new material current now. Limited to
    /// [`MAX_ON_DEMAND_ROTATIONS`] per key; the automatic schedule is unchanged.
    pub async fn rotate_key_on_demand(
        &self,
        caller: &Caller,
        reference: &KeyReference,
    ) -> Result<KeyRecord> {
        const ATTEMPTS: usize = 5;
        for _attempt in 0..ATTEMPTS {
            let key = self
                .resolve(caller, reference, &Access::to("RotateKeyOnDemand"))
                .await?;
            self.check_state(&key, KeyOperation::RotateOnDemand)?;
            self.ensure_rotatable(&key, "RotateKeyOnDemand")?;
            self.ensure_customer_managed(&key, "RotateKeyOnDemand")?;
            let materials = self.store.list_materials(&key.key_id).await?;
            let on_demand = materials
                .iter()
                .filter(|material| material.rotation_type == Some(RotationType::OnDemand))
                .count();
            if key.rotation_enabled
                && key.next_rotation_ms.is_some_and(|due| {
                    due <= self.now_ms().saturating_add(ON_DEMAND_CONFLICT_WINDOW_MS)
                })
            {
                return Err(KeysError::Conflict(format!(
                    "An automatic rotation of {} is due within 20 minutes; rotate it on demand after that one.",
                    self.key_arn(&key.account, &key.key_id)
                )));
            }
            if on_demand >= MAX_ON_DEMAND_ROTATIONS {
                return Err(KeysError::LimitExceeded(format!(
                    "{} has reached its limit of {MAX_ON_DEMAND_ROTATIONS} on-demand rotations.",
                    self.key_arn(&key.account, &key.key_id)
                )));
            }
            // The key id, as the call returns it (CloudTrail's example for
            // RotateKeyOnDemand), not the ARN of the calls that return none.
            caller.record_response(serde_json::json!({ "keyId": key.key_id.as_str() }));
            match self.rotate(key, RotationType::OnDemand, &materials).await {
                Err(KeysError::Store(StoreError::Conflict)) => continue,
                outcome => return outcome,
            }
        }
        Err(StoreError::Conflict.into())
    }

    /// Makes new material current; `materials` are the key's as read with
    /// `key` (a concurrent rotation fails the versioned write).
    async fn rotate(
        &self,
        mut key: KeyRecord,
        rotation_type: RotationType,
        materials: &[MaterialRecord],
    ) -> Result<KeyRecord> {
        let now_ms = self.now_ms();
        // A key's materials are listed by their dates, so a new one is dated
        // after every earlier one: a millisecond later than the last when
        // rotations come faster than the clock (or a clock stepped back).
        let latest_ms = materials
            .iter()
            .map(|material| material.created_at_ms)
            .max();
        let dated_ms = latest_ms.map_or(now_ms, |latest| now_ms.max(latest.saturating_add(1)));
        let material = self
            .new_material(
                &key.account,
                &key.key_id,
                key.key_spec,
                dated_ms,
                Some(rotation_type),
            )
            .await?;
        key.current_material_id = Some(material.material_id);
        if rotation_type == RotationType::Automatic {
            let period = key
                .rotation_period_days
                .unwrap_or(DEFAULT_ROTATION_PERIOD_DAYS);
            key.next_rotation_ms = Some(now_ms + i64::from(period) * DAY_MS);
        }
        self.cache.invalidate(&key.account, &key.key_id);
        key.version = self.store.add_material(&key, &material).await?;
        self.cache.put_record(&key);
        Ok(key)
    }

    /// Rotates every key whose automatic rotation is due, each recorded as a
    /// `RotateKey` service event. A key updated concurrently is left for the
    /// next run; one that cannot be rotated is logged and counted, and left
    /// for the next run too.
    pub async fn rotate_due_keys(&self, events: &ServiceEvents) -> Result<DueWork> {
        for_each_due_key(
            "rotate",
            |limit| self.store.keys_due_for_rotation(self.now_ms(), limit),
            |key| async move {
                let key_id = key.key_id.clone();
                let mut change = self.service_event("RotateKey", &key);
                change.details["rotationType"] = RotationType::Automatic.as_str().into();
                let rotation = async {
                    let materials = self.store.list_materials(&key.key_id).await?;
                    match self.rotate(key, RotationType::Automatic, &materials).await {
                        Ok(key) => Ok(Some(key)),
                        Err(KeysError::Store(StoreError::Conflict)) => Ok(None),
                        Err(other) => Err(other),
                    }
                };
                let rotated = events.record(change, rotation).await?.is_some();
                if rotated {
                    tracing::info!(key_id = %key_id, "rotated key material on schedule");
                }
                Ok(rotated)
            },
        )
        .await
    }

    /// Rotations (material versions after the first), oldest first; with
    /// `first_material`, the key's first material before them.
    pub async fn list_key_rotations(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        first_material: bool,
        limit: usize,
        after: Option<&str>,
    ) -> Result<RotationPage> {
        let key = self
            .resolve(caller, reference, &Access::to("ListKeyRotations"))
            .await?;
        self.check_state(&key, KeyOperation::ListRotations)?;
        self.ensure_rotatable(&key, "ListKeyRotations")?;
        let rotations: Vec<MaterialRecord> = self
            .store
            .list_materials(&key.key_id)
            .await?
            .into_iter()
            .filter(|material| first_material || material.rotation_type.is_some())
            .collect();
        let start = match after {
            None => 0,
            Some(marker) => {
                rotations
                    .iter()
                    .position(|material| material.material_id.to_hex() == marker)
                    .ok_or(KeysError::InvalidMarker)?
                    + 1
            }
        };
        let total = rotations.len();
        let page: Vec<MaterialRecord> = rotations.into_iter().skip(start).take(limit).collect();
        let next_after = (start + page.len() < total)
            .then(|| page.last().map(|material| material.material_id))
            .flatten();
        Ok(RotationPage {
            key,
            rotations: page,
            next_after,
        })
    }
}
