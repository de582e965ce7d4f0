//! The keys service's in-memory cache, so the hot path (Encrypt, Decrypt,
//! GenerateDataKey) needs no database round trip.
//!
//! - Key records are kept for [`KEY_RECORD_TTL`]. A change made through this
//!   instance replaces its entry with the new version at once, and an
//!   older version read concurrently never replaces a newer one; a change
//!   made through another
//!   replica is seen within the TTL (AWS KMS is eventually consistent in the
//!   same way, typically within seconds).
//! - Unsealed material versions never change, so they are kept until their
//!   key is deleted here or the cache is full. They are wiped when dropped.
//!
//! Both maps are bounded; when one is full it is emptied rather than
//! evicting entry by entry, which keeps the hot path a single lookup (the
//! records map first drops only its expired entries, and is emptied when
//! too few are).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use coffer_crypto::{AsymmetricPrivateKey, HmacKey, MaterialId, SymmetricKeyMaterial};
use coffer_platform::arn::AccountId;

use super::types::KeyId;
use crate::store::KeyRecord;

pub const KEY_RECORD_TTL: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 10_000;

/// Unsealed, parsed material of one version of a key.
#[derive(Clone)]
pub(crate) enum LoadedMaterial {
    Symmetric(Arc<SymmetricKeyMaterial>),
    Asymmetric(Arc<AsymmetricPrivateKey>),
    Hmac(Arc<HmacKey>),
}

#[derive(Default)]
pub(crate) struct KeyCache {
    /// By key id (unique across accounts); the account is checked on read.
    records: RwLock<HashMap<KeyId, (Arc<KeyRecord>, Instant)>>,
    /// By material id (random 128-bit, unique across keys), with its key.
    materials: RwLock<HashMap<MaterialId, (KeyId, LoadedMaterial)>>,
}

impl KeyCache {
    pub(crate) fn record(&self, account: &AccountId, key_id: &KeyId) -> Option<Arc<KeyRecord>> {
        let records = self
            .records
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (record, fetched_at) = records.get(key_id)?;
        (record.account == *account && fetched_at.elapsed() < KEY_RECORD_TTL)
            .then(|| record.clone())
    }

    /// Caches `record`, unless the cache holds a later version of it: a
    /// read that started before a change committed here must not put the
    /// key back as it was (every change bumps the version).
    pub(crate) fn put_record(&self, record: &KeyRecord) {
        let mut records = self
            .records
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if records
            .get(&record.key_id)
            .is_some_and(|(cached, _)| cached.version > record.version)
        {
            return;
        }
        if records.len() >= MAX_ENTRIES {
            // Expired entries go first: a fresh one may be the newer
            // version that keeps a concurrent older read out. A cache still
            // nine tenths full of fresh entries is emptied instead, so that
            // the walk is not repeated every few misses.
            let now = Instant::now();
            records.retain(|_, (_, fetched_at)| now.duration_since(*fetched_at) < KEY_RECORD_TTL);
            if records.len() >= MAX_ENTRIES / 10 * 9 {
                records.clear();
            }
        }
        records.insert(
            record.key_id.clone(),
            (Arc::new(record.clone()), Instant::now()),
        );
    }

    /// Forgets a key's record (after any change to it).
    pub(crate) fn invalidate(&self, account: &AccountId, key_id: &KeyId) {
        let mut records = self
            .records
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if records
            .get(key_id)
            .is_some_and(|(record, _)| record.account == *account)
        {
            records.remove(key_id);
        }
    }

    /// Forgets a key entirely, material included (after deletion).
    pub(crate) fn forget_key(&self, account: &AccountId, key_id: &KeyId) {
        self.invalidate(account, key_id);
        self.forget_material(key_id);
    }

    /// Forgets a key the store no longer has, when this cache knew it (an
    /// expired record of it is still here): its material is wiped. A key
    /// id never seen costs one lookup, not a walk over the material.
    pub(crate) fn forget_deleted(&self, account: &AccountId, key_id: &KeyId) {
        let known = self
            .records
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key_id)
            .is_some_and(|(record, _)| record.account == *account);
        if known {
            self.forget_key(account, key_id);
        }
    }

    /// The keys whose material is held, each once.
    pub(crate) fn keys_with_material(&self) -> Vec<KeyId> {
        let materials = self
            .materials
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let keys: std::collections::BTreeSet<&KeyId> =
            materials.values().map(|(key_id, _)| key_id).collect();
        keys.into_iter().cloned().collect()
    }

    /// Wipes the material held of one key.
    pub(crate) fn forget_material(&self, key_id: &KeyId) {
        self.materials
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|_, (cached_key, _)| cached_key != key_id);
    }

    pub(crate) fn material(
        &self,
        key_id: &KeyId,
        material_id: &MaterialId,
    ) -> Option<LoadedMaterial> {
        let materials = self
            .materials
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (cached_key, material) = materials.get(material_id)?;
        (cached_key == key_id).then(|| material.clone())
    }

    pub(crate) fn put_material(
        &self,
        key_id: &KeyId,
        material_id: MaterialId,
        material: LoadedMaterial,
    ) {
        let mut materials = self
            .materials
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if materials.len() >= MAX_ENTRIES {
            materials.clear();
        }
        materials.insert(material_id, (key_id.clone(), material));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::types::KeyState;

    fn record(version: i64, key_state: KeyState) -> KeyRecord {
        KeyRecord::for_tests("1234abcd-12ab-34cd-56ef-1234567890ab", key_state, version)
    }

    /// An Encrypt that read the key just before DisableKey committed puts
    /// its copy last: the disabled version stays.
    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let cache = KeyCache::default();
        let disabled = record(2, KeyState::Disabled);
        cache.put_record(&disabled);
        cache.put_record(&record(1, KeyState::Enabled));
        let cached = cache.record(&disabled.account, &disabled.key_id);
        assert_eq!(cached.map(|key| key.key_state), Some(KeyState::Disabled));
        // A later version still replaces it.
        cache.put_record(&record(3, KeyState::Enabled));
        let cached = cache.record(&disabled.account, &disabled.key_id);
        assert_eq!(cached.map(|key| key.version), Some(3));
    }

    /// A full cache makes room from its expired records, keeping a fresh
    /// one: the newer version still keeps an older read out.
    #[test]
    fn making_room_keeps_the_newer_version_guard() -> Result<(), Box<dyn std::error::Error>> {
        let cache = KeyCache::default();
        let disabled = record(2, KeyState::Disabled);
        cache.put_record(&disabled);
        let long_ago = Instant::now()
            .checked_sub(KEY_RECORD_TTL * 2)
            .ok_or("no instant that long ago")?;
        {
            let mut records = cache.records.write().map_err(|_| "poisoned")?;
            for index in 1..MAX_ENTRIES {
                let id = format!("00000000-0000-4000-8000-{index:012}");
                let stale = KeyRecord::for_tests(&id, KeyState::Enabled, 1);
                records.insert(stale.key_id.clone(), (Arc::new(stale), long_ago));
            }
            assert_eq!(records.len(), MAX_ENTRIES);
        }
        // Full: this one makes room.
        cache.put_record(&KeyRecord::for_tests(
            "ffffffff-0000-4000-8000-000000000000",
            KeyState::Enabled,
            1,
        ));
        cache.put_record(&record(1, KeyState::Enabled));
        let cached = cache.record(&disabled.account, &disabled.key_id);
        assert_eq!(cached.map(|key| key.key_state), Some(KeyState::Disabled));
        assert_eq!(cache.records.read().map_err(|_| "poisoned")?.len(), 2);
        Ok(())
    }

    /// A key found deleted (by another replica) leaves with its material,
    /// once its record is known here; another key's material stays.
    #[test]
    fn a_key_found_deleted_takes_its_material_along() -> Result<(), Box<dyn std::error::Error>> {
        let cache = KeyCache::default();
        let key = record(1, KeyState::Enabled);
        let material =
            |cache: &KeyCache, id: &MaterialId| cache.material(&key.key_id, id).is_some();
        let ours = MaterialId::generate()?;
        let loaded = || -> Result<LoadedMaterial, coffer_crypto::CryptoError> {
            Ok(LoadedMaterial::Symmetric(Arc::new(
                SymmetricKeyMaterial::from_bytes(&[7; 32])?,
            )))
        };
        cache.put_material(&key.key_id, ours, loaded()?);
        // Not known by its record: nothing is walked, nothing is dropped.
        cache.forget_deleted(&key.account, &key.key_id);
        assert!(material(&cache, &ours));
        cache.put_record(&key);
        let other =
            KeyId::parse("0000abcd-12ab-34cd-56ef-1234567890ab").ok_or("the key id parses")?;
        let theirs = MaterialId::generate()?;
        cache.put_material(&other, theirs, loaded()?);
        cache.forget_deleted(&key.account, &key.key_id);
        assert!(
            !material(&cache, &ours),
            "the deleted key's material stayed"
        );
        assert!(cache.material(&other, &theirs).is_some());
        Ok(())
    }
}
