//! TagResource, UntagResource, ListResourceTags.

use coffer_platform::authz::Caller;

use super::access::Access;

use super::types::{KeyReference, Tag};
use super::{KeyOperation, KeysDomain};
use crate::error::{KeysError, Result};

/// Tags a key may carry.
pub const MAX_TAGS_PER_KEY: usize = 50;

/// One page of ListResourceTags.
#[derive(Debug, Clone)]
pub struct TagPage {
    pub tags: Vec<Tag>,
    pub next_after: Option<String>,
}

impl KeysDomain {
    /// Adds or replaces tags; at most [`MAX_TAGS_PER_KEY`] in all.
    pub async fn tag_resource(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        tags: &[Tag],
    ) -> Result<()> {
        let key = self
            .resolve(
                caller,
                reference,
                &Access::to("TagResource").with_tags(tags),
            )
            .await?;
        self.check_state(&key, KeyOperation::Tag)?;
        self.ensure_customer_managed(&key, "TagResource")?;
        let count = self
            .store
            .put_tags(&key.key_id, tags, MAX_TAGS_PER_KEY)
            .await
            .map_err(self.write_refused(&key.account, &key.key_id))?;
        if count > MAX_TAGS_PER_KEY {
            return Err(KeysError::LimitExceeded(format!(
                "A key can have at most {MAX_TAGS_PER_KEY} tags; with these it would have {count}."
            )));
        }
        Ok(())
    }

    pub async fn untag_resource(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        tag_keys: &[String],
    ) -> Result<()> {
        let key = self
            .resolve(
                caller,
                reference,
                &Access::to("UntagResource").with_values("aws:TagKeys", tag_keys.to_vec()),
            )
            .await?;
        self.check_state(&key, KeyOperation::Tag)?;
        self.ensure_customer_managed(&key, "UntagResource")?;
        self.store
            .delete_tags(&key.key_id, tag_keys)
            .await
            .map_err(self.write_refused(&key.account, &key.key_id))
    }

    pub async fn list_resource_tags(
        &self,
        caller: &Caller,
        reference: &KeyReference,
        limit: usize,
        after: Option<&str>,
    ) -> Result<TagPage> {
        let key = self
            .resolve(caller, reference, &Access::to("ListResourceTags"))
            .await?;
        self.check_state(&key, KeyOperation::ListTags)?;
        // Byte order, the order markers compare in: a database's collation
        // may order "Zone" and "app" otherwise.
        let mut all = self.store.list_tags(&key.key_id).await?;
        all.sort_by(|a, b| a.key.cmp(&b.key));
        let mut tags: Vec<Tag> = all
            .into_iter()
            .filter(|tag| after.is_none_or(|marker| tag.key.as_str() > marker))
            .take(limit.saturating_add(1))
            .collect();
        let has_more = tags.len() > limit;
        tags.truncate(limit);
        let next_after = if has_more {
            tags.last().map(|tag| tag.key.clone())
        } else {
            None
        };
        Ok(TagPage { tags, next_after })
    }
}
