//! The gRPC edge of the keys service: each RPC validates its request into
//! domain types (ValidationException naming the field, before any I/O), calls
//! the domain, converts the answer, and tells the call's audit event the
//! allow-listed request parameters and the resources touched. Plaintext,
//! data keys and random bytes never enter an audit event.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coffer_crypto::{EncryptionContext, MaterialId, Zeroizing};
use coffer_platform::arn::{AccountId, ArnParts};
use coffer_platform::authz::Caller;
use coffer_platform::call::CallContext;
use coffer_proto::keys::v1 as pb;
use pb::keys_server::Keys;
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::domain::access::{GRANT_OPERATIONS, UNCONSTRAINABLE_OPERATIONS, same_context_key};
use crate::domain::aliases::ListedAlias;
use crate::domain::grants::{GrantPage, GrantToken, NewGrant, RetireTarget};
use crate::domain::lifecycle::{KeyAlgorithms, NewKey};
use crate::domain::policies::DEFAULT_POLICY_NAME;
use crate::domain::types::{
    DataKeySpec, EncryptionAlgorithm, KeyId, KeyReference, KeySpec, KeyState, KeyUsage,
    MacAlgorithmSpec, SigningAlgorithmSpec, Tag,
};
use crate::domain::{KEY_RESOURCE_TYPE, KeysDomain, SERVICE_PREFIX};
use crate::error::{KeysError, Result, api_error, dry_run_stops};
use crate::store::{ConstraintKind, GrantConstraint, KeyRecord};

/// Largest plaintext Encrypt accepts (KMS's limit).
pub const MAX_PLAINTEXT_BYTES: usize = 4096;
/// Largest ciphertext blob any Coffer key produces, with room to spare.
const MAX_CIPHERTEXT_BYTES: usize = 6144;
const MAX_KEY_ID_CHARS: usize = 2048;
const MAX_DESCRIPTION_CHARS: usize = 8192;
const MAX_ENCRYPTION_CONTEXT_BYTES: usize = 8192;
const MAX_GRANT_TOKENS: usize = 10;
const MAX_GRANT_TOKEN_CHARS: usize = 8192;
const MAX_TAGS: usize = 50;
const MAX_RANDOM_BYTES: i32 = 1024;
const DEFAULT_LIST_LIMIT: i32 = 100;
const MAX_LIST_LIMIT: i32 = 1000;

const ALIAS_RESOURCE_TYPE: &str = "AWS::KMS::Alias";

/// The tonic service.
pub struct KeysGrpc {
    domain: Arc<KeysDomain>,
}

impl KeysGrpc {
    pub fn new(domain: Arc<KeysDomain>) -> Self {
        Self { domain }
    }

    fn partition(&self) -> &str {
        &self.domain.location().partition
    }

    fn record_key(&self, call: &CallContext, key: &KeyRecord) {
        call.audit().resource(
            self.domain.key_arn(&key.account, &key.key_id),
            key.account.to_string(),
            KEY_RESOURCE_TYPE,
        );
    }

    /// Names an alias of the caller's account in the call's event, first
    /// (before its key, as CloudTrail lists them) and before anything is
    /// written, so the outbox copy names it too.
    fn record_alias(&self, call: &CallContext, caller: &Caller, name: &str) {
        call.audit().resource(
            self.domain.alias_arn(caller.account(), name),
            caller.account().to_string(),
            ALIAS_RESOURCE_TYPE,
        );
    }

    fn fail(&self, call: &CallContext, error: &KeysError) -> Status {
        if let KeysError::Concealed { shown, denied } = error {
            tracing::info!(
                exception = "AccessDeniedException",
                request_id = call.request_id(),
                "keys request denied"
            );
            return call.fail_concealed(
                api_error(shown),
                &api_error(&KeysError::AccessDenied(denied.clone())),
            );
        }
        let api = api_error(error);
        if let KeysError::Disabled { key_arn }
        | KeysError::InvalidState { key_arn, .. }
        | KeysError::NotPendingDeletion { key_arn } = error
            && let Some(account) = ArnParts::parse(key_arn).map(|parts| parts.account.to_owned())
        {
            call.audit()
                .resource(key_arn.clone(), account, KEY_RESOURCE_TYPE);
        }
        if !matches!(
            error,
            KeysError::Store(_) | KeysError::Crypto(_) | KeysError::Internal(_)
        ) {
            tracing::info!(
                exception = api.exception,
                request_id = call.request_id(),
                "keys request rejected"
            );
        }
        call.fail(api)
    }

    fn metadata(&self, key: &KeyRecord) -> pb::KeyMetadata {
        let algorithms = KeyAlgorithms::of(key);
        pb::KeyMetadata {
            aws_account_id: key.account.to_string(),
            key_id: key.key_id.to_string(),
            arn: self.domain.key_arn(&key.account, &key.key_id),
            creation_date: Some(timestamp(key.created_at_ms)),
            enabled: key.key_state == KeyState::Enabled,
            description: key.description.clone(),
            key_usage: key.key_usage.to_string(),
            key_state: key.key_state.to_string(),
            deletion_date: key.deletion_date_ms.map(timestamp),
            origin: key.origin.to_string(),
            key_manager: key.key_manager.to_string(),
            key_spec: key.key_spec.to_string(),
            encryption_algorithms: algorithms.encryption,
            multi_region: key.multi_region,
            // AWS shows it only for a multi-Region primary waiting for its
            // replicas to go; a key pending deletion has DeletionDate.
            pending_deletion_window_in_days: key
                .pending_window_days
                .filter(|_| key.key_state == KeyState::PendingReplicaDeletion),
            signing_algorithms: algorithms.signing,
            mac_algorithms: algorithms.mac,
            customer_master_key_spec: key.key_spec.to_string(),
            current_key_material_id: key
                .current_material_id
                .filter(|_| key.key_spec == KeySpec::SymmetricDefault)
                .map(|material| material.to_hex())
                .unwrap_or_default(),
        }
    }
}

impl KeysGrpc {
    fn grant_page(
        &self,
        page: GrantPage,
        listing: Listing,
        scope: &[&str],
    ) -> pb::ListGrantsResponse {
        pb::ListGrantsResponse {
            grants: page
                .grants
                .iter()
                .map(|grant| pb::GrantListEntry {
                    key_id: self.domain.key_arn(&grant.key_account, &grant.key_id),
                    grant_id: grant.grant_id.clone(),
                    name: grant.name.clone(),
                    creation_date: Some(timestamp(grant.created_at_ms)),
                    grantee_principal: grant.grantee_principal.clone(),
                    retiring_principal: grant.retiring_principal.clone().unwrap_or_default(),
                    issuing_account: self.domain.location().account_root(&grant.issuing_account),
                    operations: grant.operations.clone(),
                    constraints: constraints_message(&grant.constraint),
                })
                .collect(),
            truncated: page.next_after.is_some(),
            next_marker: page
                .next_after
                .as_deref()
                .map(|item| encode_marker(listing, scope, item))
                .unwrap_or_default(),
        }
    }
}

fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// The caller as authorization sees it. Coffer services must forward a caller.
fn caller_of(call: &CallContext) -> Result<Caller> {
    call.caller().ok_or_else(|| {
        KeysError::AccessDenied("a Coffer service must act for a caller to use keys".into())
    })
}

fn key_reference(field: &'static str, text: &str) -> Result<KeyReference> {
    if text.is_empty() {
        return Err(KeysError::validation(field, "must not be empty"));
    }
    if text.chars().count() > MAX_KEY_ID_CHARS {
        return Err(KeysError::validation(
            field,
            format!("must be at most {MAX_KEY_ID_CHARS} characters"),
        ));
    }
    // No key id, ARN or alias name holds a control character (and
    // Postgres text cannot hold NUL): such a reference names nothing.
    if text.contains(char::is_control) {
        return Ok(KeyReference::Unknown(text.to_owned()));
    }
    if text.starts_with("alias/") {
        return Ok(KeyReference::Alias(text.to_owned()));
    }
    if let Some(parts) = ArnParts::parse(text) {
        let account = AccountId::parse(parts.account);
        let resource_key = parts.resource.strip_prefix("key/").and_then(KeyId::parse);
        return Ok(match (parts.service, account, resource_key) {
            (SERVICE_PREFIX, Some(account), Some(key_id)) => KeyReference::Arn {
                partition: parts.partition.to_owned(),
                region: parts.region.to_owned(),
                account,
                key_id,
            },
            (SERVICE_PREFIX, Some(_), None) if parts.resource.starts_with("alias/") => {
                KeyReference::Alias(text.to_owned())
            }
            _ => KeyReference::Unknown(text.to_owned()),
        });
    }
    Ok(KeyId::parse(text).map_or_else(|| KeyReference::Unknown(text.to_owned()), KeyReference::Id))
}

fn optional_key_reference(field: &'static str, text: &str) -> Result<Option<KeyReference>> {
    if text.is_empty() {
        return Ok(None);
    }
    key_reference(field, text).map(Some)
}

/// A request's encryption context, `field` (ReEncrypt has two).
fn encryption_context(
    field: &'static str,
    pairs: &std::collections::HashMap<String, String>,
) -> Result<EncryptionContext> {
    if pairs.keys().any(String::is_empty) {
        return Err(KeysError::validation(field, "keys must not be empty"));
    }
    let context: EncryptionContext = pairs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_ENCRYPTION_CONTEXT_BYTES {
        return Err(KeysError::validation(
            field,
            format!("must be at most {MAX_ENCRYPTION_CONTEXT_BYTES} bytes of keys and values"),
        ));
    }
    Ok(context)
}

/// A request's encryption algorithm, `field` (ReEncrypt has two).
fn encryption_algorithm(field: &'static str, text: &str) -> Result<EncryptionAlgorithm> {
    if text.is_empty() {
        return Ok(EncryptionAlgorithm::SymmetricDefault);
    }
    EncryptionAlgorithm::parse(text).ok_or_else(|| {
        KeysError::validation(
            field,
            format!("must be one of {}", EncryptionAlgorithm::names()),
        )
    })
}

/// A CiphertextBlob's length constraint (1 to 6144 bytes), a
/// ValidationException as AWS's request validation gives; what is inside is
/// judged by the decrypt (InvalidCiphertextException).
fn ciphertext_length(field: &'static str, blob: &[u8]) -> Result<()> {
    if blob.is_empty() || blob.len() > MAX_CIPHERTEXT_BYTES {
        return Err(KeysError::validation(
            field,
            format!("must be 1 to {MAX_CIPHERTEXT_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn grant_tokens(tokens: &[String]) -> Result<()> {
    if tokens.len() > MAX_GRANT_TOKENS {
        return Err(KeysError::validation(
            "grant_tokens",
            format!("at most {MAX_GRANT_TOKENS} tokens"),
        ));
    }
    if tokens
        .iter()
        .any(|token| token.is_empty() || token.chars().count() > MAX_GRANT_TOKEN_CHARS)
    {
        return Err(KeysError::validation(
            "grant_tokens",
            format!("each token must be 1 to {MAX_GRANT_TOKEN_CHARS} characters"),
        ));
    }
    // Grants take effect at once, so tokens are never needed; one given
    // must have the form of a token this service issues (it is not looked
    // up: no decision depends on it).
    if tokens
        .iter()
        .any(|token| GrantToken::parse(token).is_none())
    {
        return Err(KeysError::InvalidGrantToken);
    }
    Ok(())
}

const MAX_POLICY_NAME_CHARS: usize = 128;
const MAX_GRANT_NAME_CHARS: usize = 256;
const MAX_GRANT_ID_CHARS: usize = 128;
const MAX_PRINCIPAL_CHARS: usize = 256;

/// `default` when empty; otherwise letters, digits and `_` (AWS's pattern).
fn policy_name(text: &str) -> Result<String> {
    if text.is_empty() {
        return Ok(DEFAULT_POLICY_NAME.to_owned());
    }
    let valid = text.chars().count() <= MAX_POLICY_NAME_CHARS
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
    if !valid {
        return Err(KeysError::validation(
            "policy_name",
            format!("must be 1 to {MAX_POLICY_NAME_CHARS} letters, digits or underscores"),
        ));
    }
    Ok(text.to_owned())
}

/// A key policy document as given: present and at most 32 KiB; the policy
/// language itself is checked by the domain (one of nothing but white space
/// is within AWS's constraint, and a MalformedPolicyDocumentException).
fn policy_document(field: &'static str, text: &str) -> Result<()> {
    if text.is_empty() {
        return Err(KeysError::validation(field, "must not be empty"));
    }
    // AWS's pattern for a key policy: [\u0009\u000A\u000D\u0020-\u00FF]+.
    if let Some(refused) = text
        .chars()
        .find(|&c| !matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{ff}'))
    {
        return Err(KeysError::validation(
            field,
            format!(
                "may contain only tab, line feed, carriage return and the characters U+0020 to U+00FF, not U+{:04X}",
                u32::from(refused)
            ),
        ));
    }
    if text.len() > coffer_policy::MAX_POLICY_BYTES {
        return Err(KeysError::MalformedPolicy(format!(
            "The policy is {} bytes; a key policy can be at most {} bytes.",
            text.len(),
            coffer_policy::MAX_POLICY_BYTES
        )));
    }
    Ok(())
}

/// An IAM principal ARN (`arn:P:iam::ACCOUNT:root|user/N|role/N`), or a
/// Coffer service principal ARN, of this instance's partition `P`, with no
/// wildcards and no control characters. A principal of another partition
/// could never call here: a grant to it would silently allow nothing.
fn principal_arn(field: &'static str, text: &str, partition: &str) -> Result<String> {
    let invalid = || {
        KeysError::validation(
            field,
            format!("must be a principal ARN such as arn:{partition}:iam::111122223333:user/name"),
        )
    };
    if text.is_empty()
        || text.len() > MAX_PRINCIPAL_CHARS
        || text
            .chars()
            .any(|c| c.is_control() || c == '*' || c == '?' || c.is_whitespace())
    {
        return Err(invalid());
    }
    let parts = ArnParts::parse(text).ok_or_else(invalid)?;
    if parts.partition != partition {
        return Err(invalid());
    }
    let identity = parts.service == "iam"
        && parts.region.is_empty()
        && AccountId::parse(parts.account).is_some()
        && (parts.resource == "root"
            || parts
                .resource
                .strip_prefix("user/")
                .is_some_and(|n| !n.is_empty())
            || parts
                .resource
                .strip_prefix("role/")
                .is_some_and(|n| !n.is_empty()));
    // A Coffer service is no grantee: its calls carry the principal they
    // act for, so a grant to the service itself could never be used.
    if identity {
        Ok(text.to_owned())
    } else {
        Err(invalid())
    }
}

/// A grant ID: 1 to 128 characters (ValidationException otherwise, as KMS
/// checks the length before anything else), letters and digits
/// (InvalidGrantIdException otherwise).
fn grant_id(text: &str) -> Result<String> {
    if text.is_empty() || text.chars().count() > MAX_GRANT_ID_CHARS {
        return Err(KeysError::validation(
            "grant_id",
            format!("must be 1 to {MAX_GRANT_ID_CHARS} characters"),
        ));
    }
    let valid = text.bytes().all(|byte| byte.is_ascii_alphanumeric());
    if valid {
        Ok(text.to_owned())
    } else {
        // The text is not echoed: a grant token given where an ID belongs
        // is a credential, and this message is audited.
        Err(KeysError::InvalidGrantId(format!(
            "The grant ID is not valid: 1 to {MAX_GRANT_ID_CHARS} letters and digits."
        )))
    }
}

fn grant_operations(operations: &[String]) -> Result<Vec<String>> {
    if operations.is_empty() {
        return Err(KeysError::validation(
            "operations",
            "name at least one operation",
        ));
    }
    let mut unique: Vec<String> = Vec::with_capacity(operations.len());
    for operation in operations {
        if !GRANT_OPERATIONS.contains(&operation.as_str()) {
            return Err(KeysError::validation(
                "operations",
                format!(
                    "{operation:?} is not a grant operation; use {}",
                    GRANT_OPERATIONS.join(", ")
                ),
            ));
        }
        if !unique.contains(operation) {
            unique.push(operation.clone());
        }
    }
    Ok(unique)
}

/// AWS: "Each grant constraint value can include up to 8 encryption context
/// pairs. The encryption context value in each grant constraint cannot
/// exceed 384 characters."
const MAX_CONSTRAINT_PAIRS: usize = 8;
const MAX_CONSTRAINT_CHARS: usize = 384;

fn grant_constraint(
    constraints: Option<&pb::GrantConstraints>,
    operations: &[String],
) -> Result<Option<GrantConstraint>> {
    let Some(constraints) = constraints else {
        return Ok(None);
    };
    let (kind, pairs) = match (
        constraints.encryption_context_equals.is_empty(),
        constraints.encryption_context_subset.is_empty(),
    ) {
        // KMS counts an empty map it is sent as a constraint (an empty
        // EncryptionContextEquals allows only calls with no context); a
        // proto3 map has no presence, so an empty one is refused, never
        // taken as no constraint at all.
        (true, true) => {
            return Err(KeysError::validation(
                "constraints",
                "give encryption_context_equals or encryption_context_subset, with at least one pair",
            ));
        }
        (false, false) => {
            return Err(KeysError::validation(
                "constraints",
                "give encryption_context_equals or encryption_context_subset, not both",
            ));
        }
        (false, true) => (
            ConstraintKind::Equals,
            &constraints.encryption_context_equals,
        ),
        (true, false) => (
            ConstraintKind::Subset,
            &constraints.encryption_context_subset,
        ),
    };
    encryption_context("constraints", pairs)?;
    let characters: usize = pairs
        .iter()
        .map(|(key, value)| key.chars().count() + value.chars().count())
        .sum();
    if pairs.len() > MAX_CONSTRAINT_PAIRS || characters > MAX_CONSTRAINT_CHARS {
        return Err(KeysError::validation(
            "constraints",
            format!(
                "a grant constraint may have at most {MAX_CONSTRAINT_PAIRS} pairs of at most {MAX_CONSTRAINT_CHARS} characters in all"
            ),
        ));
    }
    // Checked on at most 8 keys, after the bound.
    let keys: Vec<&String> = pairs.keys().collect();
    if keys.iter().enumerate().any(|(index, key)| {
        keys[index + 1..]
            .iter()
            .any(|other| same_context_key(key, other))
    }) {
        return Err(KeysError::validation(
            "constraints",
            "a grant constraint's keys are not case sensitive: two of them differ only in case",
        ));
    }
    if let Some(operation) = operations
        .iter()
        .find(|operation| UNCONSTRAINABLE_OPERATIONS.contains(&operation.as_str()))
    {
        return Err(KeysError::validation(
            "constraints",
            format!("{operation} does not take an encryption context, so it cannot be constrained"),
        ));
    }
    let mut sorted: Vec<(String, String)> = pairs
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    sorted.sort();
    Ok(Some((kind, sorted)))
}

fn grant_name(text: &str) -> Result<String> {
    let valid = text.chars().count() <= MAX_GRANT_NAME_CHARS
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b":/_-".contains(&byte));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(KeysError::validation(
            "name",
            format!("must be at most {MAX_GRANT_NAME_CHARS} letters, digits, ':', '/', '_' or '-'"),
        ))
    }
}

fn constraints_message(constraint: &Option<GrantConstraint>) -> Option<pb::GrantConstraints> {
    constraint.as_ref().map(|(kind, pairs)| {
        let map: std::collections::HashMap<String, String> = pairs.iter().cloned().collect();
        match kind {
            ConstraintKind::Equals => pb::GrantConstraints {
                encryption_context_equals: map,
                encryption_context_subset: Default::default(),
            },
            ConstraintKind::Subset => pb::GrantConstraints {
                encryption_context_equals: Default::default(),
                encryption_context_subset: map,
            },
        }
    })
}

/// A key description: at most [`MAX_DESCRIPTION_CHARS`] characters, and
/// no NUL (which Postgres text cannot hold; SQLite would store it).
fn description(text: &str) -> Result<()> {
    if text.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(KeysError::validation(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    if text.contains('\0') {
        return Err(KeysError::validation(
            "description",
            "must not contain a NUL character",
        ));
    }
    Ok(())
}

fn tags(tags: &[coffer_proto::common::v1::Tag]) -> Result<Vec<Tag>> {
    // A quota, as when a request's tags and the key's together are too
    // many: LimitExceededException either way.
    if tags.len() > MAX_TAGS {
        return Err(KeysError::LimitExceeded(format!(
            "A key can have at most {MAX_TAGS} tags; the request has {}.",
            tags.len()
        )));
    }
    let mut validated: Vec<Tag> = Vec::with_capacity(tags.len());
    for tag in tags {
        // Lengths are the API's constraints (ValidationException, as
        // UntagResource's are); what KMS refuses of a tag's content is a
        // TagException.
        let key_length = tag.tag_key.chars().count();
        if !(1..=128).contains(&key_length) {
            return Err(KeysError::validation(
                "tags",
                "a TagKey must be 1 to 128 characters",
            ));
        }
        if tag.tag_value.chars().count() > 256 {
            return Err(KeysError::validation(
                "tags",
                "a TagValue must be at most 256 characters",
            ));
        }
        if tag.tag_key.contains(char::is_control) || tag.tag_value.contains(char::is_control) {
            return Err(KeysError::Tag(
                "TagKey and TagValue must not contain control characters.".into(),
            ));
        }
        if tag.tag_key.to_ascii_lowercase().starts_with("aws:") {
            return Err(KeysError::Tag(
                "TagKey must not begin with aws: (reserved).".into(),
            ));
        }
        if validated.iter().any(|existing| existing.key == tag.tag_key) {
            return Err(KeysError::Tag(format!(
                "TagKey {:?} appears more than once.",
                tag.tag_key
            )));
        }
        validated.push(Tag {
            key: tag.tag_key.clone(),
            value: tag.tag_value.clone(),
        });
    }
    Ok(validated)
}

fn data_key_length(number_of_bytes: Option<i32>, key_spec: &str) -> Result<usize> {
    match (number_of_bytes, key_spec.is_empty()) {
        (Some(_), false) => Err(KeysError::validation(
            "key_spec",
            "specify either key_spec or number_of_bytes, not both",
        )),
        (None, true) => Err(KeysError::validation(
            "key_spec",
            "key_spec or number_of_bytes is required",
        )),
        (Some(count), true) => random_length("number_of_bytes", count),
        (None, false) => DataKeySpec::parse(key_spec)
            .map(DataKeySpec::length)
            .ok_or_else(|| {
                KeysError::validation(
                    "key_spec",
                    format!("must be one of {}", DataKeySpec::names()),
                )
            }),
    }
}

fn random_length(field: &'static str, count: i32) -> Result<usize> {
    if !(1..=MAX_RANDOM_BYTES).contains(&count) {
        return Err(KeysError::validation(
            field,
            format!("must be 1 to {MAX_RANDOM_BYTES}"),
        ));
    }
    usize::try_from(count).map_err(|_| KeysError::validation(field, "must be positive"))
}

/// KMS's `MarkerType`: 1 to 1,024 characters, each U+0020 to U+00FF.
/// Every marker Coffer issues has that shape (the longest, for a tag key
/// of 128 four-byte characters, is 708 characters).
const MAX_MARKER_CHARS: usize = 1024;

/// A marker outside `MarkerType` is refused as any field outside its
/// constraint is (ValidationException naming it); InvalidMarkerException is
/// for one of the right shape that no list issued for this request.
fn check_marker_shape(marker: &str) -> Result<()> {
    let mut characters = 0_usize;
    for character in marker.chars() {
        characters += 1;
        if characters > MAX_MARKER_CHARS || !('\u{20}'..='\u{ff}').contains(&character) {
            return Err(KeysError::validation(
                "marker",
                format!("must be 1 to {MAX_MARKER_CHARS} characters from U+0020 to U+00FF"),
            ));
        }
    }
    Ok(())
}

fn list_marker(marker: &str) -> Result<Option<KeyId>> {
    check_marker_shape(marker)?;
    if marker.is_empty() {
        return Ok(None);
    }
    let decoded = URL_SAFE_NO_PAD
        .decode(marker)
        .map_err(|_| KeysError::InvalidMarker)?;
    let text = String::from_utf8(decoded).map_err(|_| KeysError::InvalidMarker)?;
    KeyId::parse(&text)
        .map(Some)
        .ok_or(KeysError::InvalidMarker)
}

/// A key material id as answers and ListKeyRotations give it; empty for
/// none (an asymmetric key's).
fn material_hex(material_id: Option<MaterialId>) -> String {
    material_id.map(|id| id.to_hex()).unwrap_or_default()
}

/// KMS's key material ids in an event's `additionalEventData`, those that
/// are known.
fn record_materials(call: &CallContext, materials: &[(&str, Option<MaterialId>)]) {
    let known: serde_json::Map<String, serde_json::Value> = materials
        .iter()
        .filter_map(|(name, id)| id.map(|id| ((*name).to_owned(), json!(id.to_hex()))))
        .collect();
    if !known.is_empty() {
        call.audit()
            .additional_event_data(serde_json::Value::Object(known));
    }
}

/// `dryRun` in an event's request parameters: recorded only when set.
fn dry_run_for_audit(dry_run: bool) -> Option<bool> {
    dry_run.then_some(true)
}

/// The encryption algorithm a request used: `SYMMETRIC_DEFAULT` when it
/// named none, as CloudTrail records it.
fn algorithm_for_audit(text: &str) -> &str {
    if text.is_empty() {
        EncryptionAlgorithm::SymmetricDefault.as_str()
    } else {
        text
    }
}

/// The whole context, values included: they may be sensitive to some
/// users, but AWS logs the whole context, and so do we.
fn context_for_audit(pairs: &std::collections::HashMap<String, String>) -> serde_json::Value {
    json!(pairs)
}

/// The list a marker belongs to. A marker carries its list's tag, its
/// request's scope and the last listed item's sort key, so a marker of
/// another list or key, or one that was never issued, answers
/// InvalidMarkerException instead of a silently partial page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Aliases,
    Tags,
    Grants,
    RetirableGrants,
    Rotations,
}

impl Listing {
    fn tag(self) -> &'static str {
        match self {
            Self::Aliases => "a",
            Self::Tags => "t",
            Self::Grants => "g",
            Self::RetirableGrants => "rg",
            Self::Rotations => "r",
        }
    }

    /// Whether `item` has the shape of this list's sort key: a marker
    /// rewritten to hold what no key of the list holds (a NUL, which
    /// Postgres refuses as text) is not ours.
    fn fits(self, item: &str) -> bool {
        match self {
            Self::Aliases => item.starts_with("alias/") && alias_name(item, true).is_ok(),
            Self::Tags => !item.is_empty() && !item.chars().any(char::is_control),
            Self::Grants | Self::RetirableGrants | Self::Rotations => {
                !item.is_empty() && item.bytes().all(|byte| byte.is_ascii_hexdigit())
            }
        }
    }
}

/// A list's marker: the list it came from, the request parameters it was
/// issued for ([`coffer_platform::scope_hash`] of `scope`) and the last item
/// returned. Given to another list, or with other parameters (another key),
/// it answers InvalidMarkerException.
fn encode_marker(listing: Listing, scope: &[&str], item: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}:{item}", listing.tag(), marker_scope(scope)))
}

/// How a marker writes the parameters it was issued for.
fn marker_scope(scope: &[&str]) -> String {
    let hash = coffer_platform::scope_hash(scope.iter().map(|part| part.as_bytes()));
    format!("{hash:016x}")
}

fn decode_marker(listing: Listing, scope: &[&str], marker: &str) -> Result<Option<String>> {
    check_marker_shape(marker)?;
    if marker.is_empty() {
        return Ok(None);
    }
    let decoded = URL_SAFE_NO_PAD
        .decode(marker)
        .map_err(|_| KeysError::InvalidMarker)?;
    let text = String::from_utf8(decoded).map_err(|_| KeysError::InvalidMarker)?;
    let expected = marker_scope(scope);
    text.strip_prefix(listing.tag())
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|rest| rest.split_once(':'))
        .filter(|(given, _)| *given == expected)
        .map(|(_, item)| item)
        .filter(|item| listing.fits(item))
        .map(|item| Some(item.to_owned()))
        .ok_or(KeysError::InvalidMarker)
}

/// A list call's `Limit`: left out, `default`; sent, 1 to `max` (a 0 sent
/// is refused, as KMS refuses it).
fn page_limit(field: &'static str, limit: Option<i32>, default: i32, max: i32) -> Result<u32> {
    match limit {
        None => Ok(default.unsigned_abs()),
        Some(value) if (1..=max).contains(&value) => Ok(value.unsigned_abs()),
        _ => Err(KeysError::validation(field, format!("must be 1 to {max}"))),
    }
}

/// `alias/` and then letters, digits, `/`, `_` and `-`; 256 characters at most.
/// As in KMS, a name outside the API's own constraint (1 to 256 of
/// `[a-zA-Z0-9:/_-]`, beginning with `alias/`) is a ValidationException;
/// one within it that KMS still refuses (nothing after `alias/`, a `:`, a
/// reserved prefix) is an InvalidAliasNameException.
fn alias_name(text: &str, allow_reserved: bool) -> Result<String> {
    let within_constraint = (1..=256).contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b':' | b'/' | b'_' | b'-'));
    if !within_constraint {
        return Err(KeysError::validation(
            "alias_name",
            "must be 1 to 256 characters, each a letter, digit, :, /, _ or -",
        ));
    }
    let Some(rest) = text.strip_prefix("alias/") else {
        return Err(KeysError::validation(
            "alias_name",
            "Alias must start with the prefix \"alias/\".",
        ));
    };
    if rest.is_empty() || rest.contains(':') {
        return Err(KeysError::InvalidAliasName(format!(
            "{text:?} is not a valid alias name: alias/ followed by 1 to 250 letters, digits, /, _ or -."
        )));
    }
    if !allow_reserved
        && crate::domain::aliases::RESERVED_ALIAS_PREFIXES
            .iter()
            .any(|prefix| text.starts_with(prefix))
    {
        return Err(KeysError::InvalidAliasName(format!(
            "{text:?} uses a reserved prefix (alias/aws/, alias/coffer/)."
        )));
    }
    Ok(text.to_owned())
}

/// The message type a Sign or Verify event records: RAW when none was
/// given, as CloudTrail records the default.
fn message_type_for_audit(text: &str) -> &str {
    if text.is_empty() { "RAW" } else { text }
}

/// A key named by id or ARN, not by alias (CreateAlias, UpdateAlias).
fn target_key_reference(text: &str) -> Result<KeyReference> {
    match key_reference("target_key_id", text)? {
        KeyReference::Alias(_) => Err(KeysError::validation(
            "target_key_id",
            "must be a key id or key ARN, not an alias",
        )),
        reference => Ok(reference),
    }
}

fn bounded_days(
    field: &'static str,
    value: Option<i32>,
    default: i32,
    min: i32,
    max: i32,
) -> Result<i32> {
    let days = value.unwrap_or(default);
    if !(min..=max).contains(&days) {
        return Err(KeysError::validation(
            field,
            format!("must be {min} to {max}"),
        ));
    }
    Ok(days)
}

fn signing_algorithm(text: &str) -> Result<SigningAlgorithmSpec> {
    if text.is_empty() {
        return Err(KeysError::validation("signing_algorithm", "is required"));
    }
    SigningAlgorithmSpec::parse(text).ok_or_else(|| {
        KeysError::validation(
            "signing_algorithm",
            format!("must be one of {}", SigningAlgorithmSpec::names()),
        )
    })
}

fn message_type(text: &str) -> Result<coffer_crypto::MessageType> {
    if text.is_empty() {
        return Ok(coffer_crypto::MessageType::Raw);
    }
    coffer_crypto::MessageType::parse(text)
        .ok_or_else(|| KeysError::validation("message_type", "must be RAW or DIGEST"))
}

fn mac_algorithm(text: &str) -> Result<MacAlgorithmSpec> {
    MacAlgorithmSpec::parse(text).ok_or_else(|| {
        KeysError::validation(
            "mac_algorithm",
            format!("must be one of {}", MacAlgorithmSpec::names()),
        )
    })
}

fn signed_message(message: &[u8]) -> Result<()> {
    if message.is_empty() || message.len() > crate::domain::asymmetric::MAX_MESSAGE_BYTES {
        return Err(KeysError::validation(
            "message",
            format!(
                "must be 1 to {} bytes",
                crate::domain::asymmetric::MAX_MESSAGE_BYTES
            ),
        ));
    }
    Ok(())
}

fn key_pair_spec(text: &str) -> Result<coffer_crypto::AsymmetricKeySpec> {
    if ["SM2", "ECC_NIST_EDWARDS25519"].contains(&text) {
        // KMS's names for pairs Coffer does not make yet, answered as
        // CreateKey answers those key specs: not malformed, unsupported.
        return Err(KeysError::Unsupported(format!(
            "KeyPairSpec {text} is not supported by this release of Coffer."
        )));
    }
    coffer_crypto::AsymmetricKeySpec::parse(text).ok_or_else(|| {
        let names: Vec<&str> = coffer_crypto::AsymmetricKeySpec::ALL
            .iter()
            .map(|a| a.as_str())
            .collect();
        KeysError::validation(
            "key_pair_spec",
            format!("must be one of {}", names.join(", ")),
        )
    })
}

/// The fields GenerateDataKey and GenerateDataKeyWithoutPlaintext share.
struct DataKeyFields<'a> {
    action: &'static str,
    key_id: &'a str,
    key_spec: &'a str,
    number_of_bytes: Option<i32>,
    encryption_context: &'a std::collections::HashMap<String, String>,
    grant_tokens: &'a [String],
    dry_run: bool,
}

impl<'a> DataKeyFields<'a> {
    fn of_plaintext(m: &'a pb::GenerateDataKeyRequest) -> Self {
        Self {
            action: "GenerateDataKey",
            key_id: &m.key_id,
            key_spec: &m.key_spec,
            number_of_bytes: m.number_of_bytes,
            encryption_context: &m.encryption_context,
            grant_tokens: &m.grant_tokens,
            dry_run: m.dry_run,
        }
    }

    fn of_ciphertext_only(m: &'a pb::GenerateDataKeyWithoutPlaintextRequest) -> Self {
        Self {
            action: "GenerateDataKeyWithoutPlaintext",
            key_id: &m.key_id,
            key_spec: &m.key_spec,
            number_of_bytes: m.number_of_bytes,
            encryption_context: &m.encryption_context,
            grant_tokens: &m.grant_tokens,
            dry_run: m.dry_run,
        }
    }

    fn audit_parameters(&self) -> serde_json::Value {
        json!({
            "keyId": self.key_id,
            "keySpec": self.key_spec,
            "numberOfBytes": self.number_of_bytes,
            "encryptionContext": context_for_audit(self.encryption_context),
            "dryRun": dry_run_for_audit(self.dry_run),
        })
    }
}

/// The fields GenerateDataKeyPair and its WithoutPlaintext form share.
struct KeyPairFields<'a> {
    action: &'static str,
    key_id: &'a str,
    key_pair_spec: &'a str,
    encryption_context: &'a std::collections::HashMap<String, String>,
    grant_tokens: &'a [String],
    dry_run: bool,
}

impl<'a> KeyPairFields<'a> {
    fn of_plaintext(m: &'a pb::GenerateDataKeyPairRequest) -> Self {
        Self {
            action: "GenerateDataKeyPair",
            key_id: &m.key_id,
            key_pair_spec: &m.key_pair_spec,
            encryption_context: &m.encryption_context,
            grant_tokens: &m.grant_tokens,
            dry_run: m.dry_run,
        }
    }

    fn of_ciphertext_only(m: &'a pb::GenerateDataKeyPairWithoutPlaintextRequest) -> Self {
        Self {
            action: "GenerateDataKeyPairWithoutPlaintext",
            key_id: &m.key_id,
            key_pair_spec: &m.key_pair_spec,
            encryption_context: &m.encryption_context,
            grant_tokens: &m.grant_tokens,
            dry_run: m.dry_run,
        }
    }

    fn audit_parameters(&self) -> serde_json::Value {
        json!({
            "keyId": self.key_id,
            "keyPairSpec": self.key_pair_spec,
            "encryptionContext": context_for_audit(self.encryption_context),
            "dryRun": dry_run_for_audit(self.dry_run),
        })
    }
}

impl KeysGrpc {
    async fn data_key(
        &self,
        call: &CallContext,
        caller: &Caller,
        fields: DataKeyFields<'_>,
    ) -> Result<crate::domain::crypto_ops::DataKey> {
        let reference = key_reference("key_id", fields.key_id)?;
        let length = data_key_length(fields.number_of_bytes, fields.key_spec)?;
        let context = encryption_context("encryption_context", fields.encryption_context)?;
        grant_tokens(fields.grant_tokens)?;
        let data_key = self
            .domain
            .generate_data_key(caller, &reference, fields.action, length, &context)
            .await?;
        self.record_key(call, &data_key.key);
        record_materials(call, &[("keyMaterialId", Some(data_key.material_id))]);
        dry_run_stops(fields.dry_run)?;
        Ok(data_key)
    }

    async fn key_pair(
        &self,
        call: &CallContext,
        caller: &Caller,
        fields: KeyPairFields<'_>,
    ) -> Result<(
        crate::domain::asymmetric::DataKeyPair,
        coffer_crypto::AsymmetricKeySpec,
    )> {
        let reference = key_reference("key_id", fields.key_id)?;
        let spec = key_pair_spec(fields.key_pair_spec)?;
        let context = encryption_context("encryption_context", fields.encryption_context)?;
        grant_tokens(fields.grant_tokens)?;
        let pair = self
            .domain
            .generate_data_key_pair(
                caller,
                &reference,
                fields.action,
                spec,
                &context,
                fields.dry_run,
            )
            .await?;
        self.record_key(call, &pair.key);
        record_materials(call, &[("keyMaterialId", Some(pair.material_id))]);
        Ok((pair, spec))
    }
}

impl KeysGrpc {
    /// The shape of every handler: record the allow-listed parameters, run
    /// the work as the caller's account, and turn errors into statuses.
    async fn run<M, T, Fut>(
        &self,
        request: Request<M>,
        parameters: impl FnOnce(&M) -> serde_json::Value,
        work: impl FnOnce(CallContext, Caller, M) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: Future<Output = Result<T>>,
    {
        self.run_keeping(request, &[], parameters, work).await
    }

    /// [`Self::run`], recording the request parameters `required` even when
    /// sent empty (see `AuditRecorder::request_parameters_keeping`).
    async fn run_keeping<M, T, Fut>(
        &self,
        request: Request<M>,
        required: &[&str],
        parameters: impl FnOnce(&M) -> serde_json::Value,
        work: impl FnOnce(CallContext, Caller, M) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: Future<Output = Result<T>>,
    {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        call.audit()
            .request_parameters_keeping(parameters(&message), required);
        let outcome = match caller_of(&call) {
            Ok(caller) => work(call.clone(), caller, message).await,
            Err(error) => Err(error),
        };
        outcome
            .map(Response::new)
            .map_err(|error| self.fail(&call, &error))
    }
}

#[tonic::async_trait]
impl Keys for KeysGrpc {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        call.audit().request_parameters(json!({
            "description": message.description,
            "keyUsage": message.key_usage,
            "keySpec": message.key_spec,
            "multiRegion": message.multi_region,
            "policy": message.policy,
            "bypassPolicyLockoutSafetyCheck": message.bypass_policy_lockout_safety_check,
            "tags": message.tags.iter().map(|t| json!({"tagKey": t.tag_key, "tagValue": t.tag_value})).collect::<Vec<_>>(),
        }));
        let outcome = async {
            let caller = caller_of(&call)?;
            description(&message.description)?;
            let key_usage = if message.key_usage.is_empty() {
                KeyUsage::EncryptDecrypt
            } else {
                KeyUsage::parse(&message.key_usage).ok_or_else(|| {
                    KeysError::validation(
                        "key_usage",
                        format!("must be one of {}", KeyUsage::names()),
                    )
                })?
            };
            let key_spec = if message.key_spec.is_empty() {
                KeySpec::SymmetricDefault
            } else {
                KeySpec::parse(&message.key_spec).ok_or_else(|| {
                    KeysError::validation(
                        "key_spec",
                        format!("must be one of {}", KeySpec::names()),
                    )
                })?
            };
            let policy = if message.policy.is_empty() {
                None
            } else {
                policy_document("policy", &message.policy)?;
                Some(message.policy.clone())
            };
            let new_key = NewKey {
                description: message.description.clone(),
                key_usage,
                key_spec,
                tags: tags(&message.tags)?,
                multi_region: message.multi_region,
                policy,
                bypass_policy_lockout_safety_check: message.bypass_policy_lockout_safety_check,
            };
            self.domain.create_key(&caller, new_key).await
        }
        .await;
        // The domain named the key in the event before its write.
        match outcome {
            Ok(key) => Ok(Response::new(pb::CreateKeyResponse {
                key_metadata: Some(self.metadata(&key)),
            })),
            Err(error) => Err(self.fail(&call, &error)),
        }
    }

    async fn describe_key(
        &self,
        request: Request<pb::DescribeKeyRequest>,
    ) -> Result<Response<pb::DescribeKeyResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        call.audit()
            .request_parameters(json!({"keyId": message.key_id}));
        let outcome = async {
            let caller = caller_of(&call)?;
            let reference = key_reference("key_id", &message.key_id)?;
            grant_tokens(&message.grant_tokens)?;
            self.domain.describe_key(&caller, &reference).await
        }
        .await;
        match outcome {
            Ok(key) => {
                self.record_key(&call, &key);
                Ok(Response::new(pb::DescribeKeyResponse {
                    key_metadata: Some(self.metadata(&key)),
                }))
            }
            Err(error) => Err(self.fail(&call, &error)),
        }
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        call.audit()
            .request_parameters(json!({"limit": message.limit, "marker": message.marker}));
        let outcome = async {
            let caller = caller_of(&call)?;
            let limit = page_limit("limit", message.limit, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)?;
            let after = list_marker(&message.marker)?;
            self.domain.list_keys(&caller, limit, after.as_ref()).await
        }
        .await;
        match outcome {
            Ok(page) => Ok(Response::new(pb::ListKeysResponse {
                keys: page
                    .keys
                    .iter()
                    .map(|key| pb::KeyListEntry {
                        key_id: key.key_id.to_string(),
                        key_arn: self.domain.key_arn(&key.account, &key.key_id),
                    })
                    .collect(),
                truncated: page.next_after.is_some(),
                next_marker: page
                    .next_after
                    .map(|key_id| URL_SAFE_NO_PAD.encode(key_id.as_str()))
                    .unwrap_or_default(),
            })),
            Err(error) => Err(self.fail(&call, &error)),
        }
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let call = CallContext::of(&request)?;
        let mut message = request.into_inner();
        let plaintext = Zeroizing::new(std::mem::take(&mut message.plaintext));
        call.audit().request_parameters(json!({
            "keyId": message.key_id,
            "encryptionAlgorithm": algorithm_for_audit(&message.encryption_algorithm),
            "encryptionContext": context_for_audit(&message.encryption_context),
            "dryRun": dry_run_for_audit(message.dry_run),
        }));
        let outcome = async {
            let caller = caller_of(&call)?;
            let reference = key_reference("key_id", &message.key_id)?;
            if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT_BYTES {
                return Err(KeysError::validation(
                    "plaintext",
                    format!("must be 1 to {MAX_PLAINTEXT_BYTES} bytes"),
                ));
            }
            let context = encryption_context("encryption_context", &message.encryption_context)?;
            let algorithm =
                encryption_algorithm("encryption_algorithm", &message.encryption_algorithm)?;
            grant_tokens(&message.grant_tokens)?;
            let (key, ciphertext_blob) = self
                .domain
                .encrypt(&caller, &reference, algorithm, &context, &plaintext)
                .await?;
            self.record_key(&call, &key);
            dry_run_stops(message.dry_run)?;
            Ok((key, ciphertext_blob))
        }
        .await;
        match outcome {
            Ok((key, ciphertext_blob)) => {
                Ok(Response::new(pb::EncryptResponse {
                    ciphertext_blob,
                    key_id: self.domain.key_arn(&key.account, &key.key_id),
                    // Validated before the call; the default when none was given.
                    encryption_algorithm: encryption_algorithm(
                        "encryption_algorithm",
                        &message.encryption_algorithm,
                    )
                    .unwrap_or(EncryptionAlgorithm::SymmetricDefault)
                    .to_string(),
                }))
            }
            Err(error) => Err(self.fail(&call, &error)),
        }
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        call.audit().request_parameters(json!({
            "keyId": message.key_id,
            "encryptionAlgorithm": algorithm_for_audit(&message.encryption_algorithm),
            "encryptionContext": context_for_audit(&message.encryption_context),
            "dryRun": dry_run_for_audit(message.dry_run),
        }));
        let outcome = async {
            let caller = caller_of(&call)?;
            let expected = optional_key_reference("key_id", &message.key_id)?;
            let context = encryption_context("encryption_context", &message.encryption_context)?;
            let algorithm =
                encryption_algorithm("encryption_algorithm", &message.encryption_algorithm)?;
            // Field lengths first (ValidationException), then the tokens.
            ciphertext_length("ciphertext_blob", &message.ciphertext_blob)?;
            grant_tokens(&message.grant_tokens)?;
            let decrypted = self
                .domain
                .decrypt(
                    &caller,
                    &message.ciphertext_blob,
                    expected.as_ref(),
                    algorithm,
                    &context,
                    "Decrypt",
                    None,
                )
                .await?;
            self.record_key(&call, &decrypted.key);
            record_materials(&call, &[("keyMaterialId", decrypted.material_id)]);
            dry_run_stops(message.dry_run)?;
            Ok(decrypted)
        }
        .await;
        match outcome {
            Ok(decrypted) => Ok(Response::new(pb::DecryptResponse {
                key_id: self
                    .domain
                    .key_arn(&decrypted.key.account, &decrypted.key.key_id),
                plaintext: decrypted.plaintext.to_vec(),
                encryption_algorithm: encryption_algorithm(
                    "encryption_algorithm",
                    &message.encryption_algorithm,
                )
                .unwrap_or(EncryptionAlgorithm::SymmetricDefault)
                .to_string(),
                key_material_id: material_hex(decrypted.material_id),
            })),
            Err(error) => Err(self.fail(&call, &error)),
        }
    }

    async fn generate_data_key(
        &self,
        request: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        self.run(
            request,
            |m| DataKeyFields::of_plaintext(m).audit_parameters(),
            |call, caller, m| async move {
                let data_key = self
                    .data_key(&call, &caller, DataKeyFields::of_plaintext(&m))
                    .await?;
                Ok(pb::GenerateDataKeyResponse {
                    key_id: self
                        .domain
                        .key_arn(&data_key.key.account, &data_key.key.key_id),
                    plaintext: data_key.plaintext.to_vec(),
                    ciphertext_blob: data_key.ciphertext_blob,
                    key_material_id: data_key.material_id.to_hex(),
                })
            },
        )
        .await
    }

    async fn generate_data_key_without_plaintext(
        &self,
        request: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
        self.run(
            request,
            |m| DataKeyFields::of_ciphertext_only(m).audit_parameters(),
            |call, caller, m| async move {
                let data_key = self
                    .data_key(&call, &caller, DataKeyFields::of_ciphertext_only(&m))
                    .await?;
                Ok(pb::GenerateDataKeyWithoutPlaintextResponse {
                    key_id: self
                        .domain
                        .key_arn(&data_key.key.account, &data_key.key.key_id),
                    ciphertext_blob: data_key.ciphertext_blob,
                    key_material_id: data_key.material_id.to_hex(),
                })
            },
        )
        .await
    }

    async fn generate_random(
        &self,
        request: Request<pb::GenerateRandomRequest>,
    ) -> Result<Response<pb::GenerateRandomResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        call.audit()
            .request_parameters(json!({"numberOfBytes": message.number_of_bytes}));
        let outcome = async {
            let caller = caller_of(&call)?;
            let length = random_length("number_of_bytes", message.number_of_bytes)?;
            self.domain.generate_random(&caller, length)
        }
        .await;
        match outcome {
            Ok(bytes) => Ok(Response::new(pb::GenerateRandomResponse {
                plaintext: bytes.to_vec(),
            })),
            Err(error) => Err(self.fail(&call, &error)),
        }
    }

    async fn re_encrypt(
        &self,
        request: Request<pb::ReEncryptRequest>,
    ) -> Result<Response<pb::ReEncryptResponse>, Status> {
        self.run(
            request,
            |m| json!({
                "sourceKeyId": m.source_key_id, "destinationKeyId": m.destination_key_id,
                "sourceEncryptionAlgorithm": algorithm_for_audit(&m.source_encryption_algorithm),
                "destinationEncryptionAlgorithm": algorithm_for_audit(&m.destination_encryption_algorithm),
                "sourceEncryptionContext": context_for_audit(&m.source_encryption_context),
                "destinationEncryptionContext": context_for_audit(&m.destination_encryption_context),
                "dryRun": dry_run_for_audit(m.dry_run),
            }),
            |call, caller, m| async move {
                let source = optional_key_reference("source_key_id", &m.source_key_id)?;
                let destination = key_reference("destination_key_id", &m.destination_key_id)?;
                let source_context = encryption_context("source_encryption_context", &m.source_encryption_context)?;
                let destination_context = encryption_context("destination_encryption_context", &m.destination_encryption_context)?;
                let source_algorithm = encryption_algorithm("source_encryption_algorithm", &m.source_encryption_algorithm)?;
                let destination_algorithm = encryption_algorithm("destination_encryption_algorithm", &m.destination_encryption_algorithm)?;
                ciphertext_length("ciphertext_blob", &m.ciphertext_blob)?;
                grant_tokens(&m.grant_tokens)?;
                let done = self
                    .domain
                    .re_encrypt(
                        &caller,
                        &m.ciphertext_blob,
                        source.as_ref(),
                        source_algorithm,
                        &source_context,
                        &destination,
                        destination_algorithm,
                        &destination_context,
                    )
                    .await?;
                self.record_key(&call, &done.source);
                self.record_key(&call, &done.destination);
                record_materials(&call, &[
                    ("sourceKeyMaterialId", done.source_material_id),
                    ("destinationKeyMaterialId", done.destination_material_id),
                ]);
                dry_run_stops(m.dry_run)?;
                Ok(pb::ReEncryptResponse {
                    ciphertext_blob: done.ciphertext_blob,
                    source_key_id: self.domain.key_arn(&done.source.account, &done.source.key_id),
                    key_id: self.domain.key_arn(&done.destination.account, &done.destination.key_id),
                    source_encryption_algorithm: source_algorithm.to_string(),
                    destination_encryption_algorithm: destination_algorithm.to_string(),
                    source_key_material_id: material_hex(done.source_material_id),
                    destination_key_material_id: material_hex(done.destination_material_id),
                })
            },
        )
        .await
    }

    async fn update_key_description(
        &self,
        request: Request<pb::UpdateKeyDescriptionRequest>,
    ) -> Result<Response<pb::UpdateKeyDescriptionResponse>, Status> {
        // The description is required: sent empty, it clears.
        self.run_keeping(
            request,
            &["description"],
            |m| json!({"keyId": m.key_id, "description": m.description}),
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                description(&m.description)?;
                let key = self
                    .domain
                    .update_key_description(&caller, &reference, &m.description)
                    .await?;
                self.record_key(&call, &key);
                Ok(pb::UpdateKeyDescriptionResponse {})
            },
        )
        .await
    }

    async fn enable_key(
        &self,
        request: Request<pb::EnableKeyRequest>,
    ) -> Result<Response<pb::EnableKeyResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id}),
            |call, caller, m| async move {
                let key = self
                    .domain
                    .enable_key(&caller, &key_reference("key_id", &m.key_id)?)
                    .await?;
                self.record_key(&call, &key);
                Ok(pb::EnableKeyResponse {})
            },
        )
        .await
    }

    async fn disable_key(
        &self,
        request: Request<pb::DisableKeyRequest>,
    ) -> Result<Response<pb::DisableKeyResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id}),
            |call, caller, m| async move {
                let key = self
                    .domain
                    .disable_key(&caller, &key_reference("key_id", &m.key_id)?)
                    .await?;
                self.record_key(&call, &key);
                Ok(pb::DisableKeyResponse {})
            },
        )
        .await
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> Result<Response<pb::ScheduleKeyDeletionResponse>, Status> {
        use crate::domain::lifecycle::{
            DEFAULT_PENDING_WINDOW_DAYS, MAX_PENDING_WINDOW_DAYS, MIN_PENDING_WINDOW_DAYS,
        };
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "pendingWindowInDays": m.pending_window_in_days}),
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                let window = bounded_days(
                    "pending_window_in_days",
                    m.pending_window_in_days,
                    DEFAULT_PENDING_WINDOW_DAYS,
                    MIN_PENDING_WINDOW_DAYS,
                    MAX_PENDING_WINDOW_DAYS,
                )?;
                let key = self
                    .domain
                    .schedule_key_deletion(&caller, &reference, window)
                    .await?;
                self.record_key(&call, &key);
                let arn = self.domain.key_arn(&key.account, &key.key_id);
                Ok(pb::ScheduleKeyDeletionResponse {
                    key_id: arn,
                    deletion_date: key.deletion_date_ms.map(timestamp),
                    key_state: key.key_state.to_string(),
                    pending_window_in_days: window,
                })
            },
        )
        .await
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<pb::CancelKeyDeletionRequest>,
    ) -> Result<Response<pb::CancelKeyDeletionResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id}),
            |call, caller, m| async move {
                let key = self
                    .domain
                    .cancel_key_deletion(&caller, &key_reference("key_id", &m.key_id)?)
                    .await?;
                self.record_key(&call, &key);
                let arn = self.domain.key_arn(&key.account, &key.key_id);
                Ok(pb::CancelKeyDeletionResponse { key_id: arn })
            },
        )
        .await
    }

    async fn create_alias(
        &self,
        request: Request<pb::CreateAliasRequest>,
    ) -> Result<Response<pb::CreateAliasResponse>, Status> {
        self.run(
            request,
            |m| json!({"aliasName": m.alias_name, "targetKeyId": m.target_key_id}),
            |call, caller, m| async move {
                let name = alias_name(&m.alias_name, false)?;
                let target = target_key_reference(&m.target_key_id)?;
                self.record_alias(&call, &caller, &name);
                self.domain.create_alias(&caller, &name, &target).await?;
                Ok(pb::CreateAliasResponse {})
            },
        )
        .await
    }

    async fn update_alias(
        &self,
        request: Request<pb::UpdateAliasRequest>,
    ) -> Result<Response<pb::UpdateAliasResponse>, Status> {
        self.run(
            request,
            |m| json!({"aliasName": m.alias_name, "targetKeyId": m.target_key_id}),
            |call, caller, m| async move {
                let name = alias_name(&m.alias_name, false)?;
                let target = target_key_reference(&m.target_key_id)?;
                self.record_alias(&call, &caller, &name);
                self.domain.update_alias(&caller, &name, &target).await?;
                Ok(pb::UpdateAliasResponse {})
            },
        )
        .await
    }

    async fn delete_alias(
        &self,
        request: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        self.run(
            request,
            |m| json!({"aliasName": m.alias_name}),
            |call, caller, m| async move {
                let name = alias_name(&m.alias_name, false)?;
                self.record_alias(&call, &caller, &name);
                self.domain.delete_alias(&caller, &name).await?;
                Ok(pb::DeleteAliasResponse {})
            },
        )
        .await
    }

    async fn list_aliases(
        &self,
        request: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "limit": m.limit, "marker": m.marker}),
            |_call, caller, m| async move {
                let key = optional_key_reference("key_id", &m.key_id)?;
                let limit = page_limit("limit", m.limit, 50, 100)?;
                let scope = [m.key_id.as_str()];
                let after = decode_marker(Listing::Aliases, &scope, &m.marker)?;
                let page = self
                    .domain
                    .list_aliases(&caller, key.as_ref(), limit, after.as_deref())
                    .await?;
                Ok(pb::ListAliasesResponse {
                    aliases: page
                        .aliases
                        .iter()
                        .map(|listed| match listed {
                            ListedAlias::Stored(alias) => pb::AliasListEntry {
                                alias_name: alias.alias_name.clone(),
                                alias_arn: self.domain.alias_arn(&alias.account, &alias.alias_name),
                                target_key_id: alias.target_key_id.to_string(),
                                creation_date: Some(timestamp(alias.created_at_ms)),
                                last_updated_date: Some(timestamp(alias.updated_at_ms)),
                            },
                            ListedAlias::Predefined(name) => pb::AliasListEntry {
                                alias_name: (*name).to_owned(),
                                alias_arn: self.domain.alias_arn(caller.account(), name),
                                ..Default::default()
                            },
                        })
                        .collect(),
                    truncated: page.next_after.is_some(),
                    next_marker: page
                        .next_after
                        .as_deref()
                        .map(|item| encode_marker(Listing::Aliases, &scope, item))
                        .unwrap_or_default(),
                })
            },
        )
        .await
    }

    async fn tag_resource(
        &self,
        request: Request<pb::TagResourceRequest>,
    ) -> Result<Response<pb::TagResourceResponse>, Status> {
        self.run(
            request,
            |m| json!({
                "keyId": m.key_id,
                "tags": m.tags.iter().map(|t| json!({"tagKey": t.tag_key, "tagValue": t.tag_value})).collect::<Vec<_>>(),
            }),
            |_call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                let validated = tags(&m.tags)?;
                self.domain.tag_resource(&caller, &reference, &validated).await?;
                Ok(pb::TagResourceResponse {})
            },
        )
        .await
    }

    async fn untag_resource(
        &self,
        request: Request<pb::UntagResourceRequest>,
    ) -> Result<Response<pb::UntagResourceResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "tagKeys": m.tag_keys}),
            |_call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                // KMS sets no bound on how many keys one call names (a key
                // holds 50 tags at most; the others are ignored).
                if m.tag_keys.is_empty()
                    || m.tag_keys.iter().any(|key| {
                        !(1..=128).contains(&key.chars().count()) || key.contains(char::is_control)
                    })
                {
                    return Err(KeysError::validation(
                        "tag_keys",
                        "1 or more keys of 1 to 128 characters, none a control character",
                    ));
                }
                self.domain
                    .untag_resource(&caller, &reference, &m.tag_keys)
                    .await?;
                Ok(pb::UntagResourceResponse {})
            },
        )
        .await
    }

    async fn list_resource_tags(
        &self,
        request: Request<pb::ListResourceTagsRequest>,
    ) -> Result<Response<pb::ListResourceTagsResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "limit": m.limit, "marker": m.marker}),
            |_call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                let limit = page_limit("limit", m.limit, 50, 50)?;
                let scope = [m.key_id.as_str()];
                let after = decode_marker(Listing::Tags, &scope, &m.marker)?;
                let page = self
                    .domain
                    .list_resource_tags(&caller, &reference, limit as usize, after.as_deref())
                    .await?;
                Ok(pb::ListResourceTagsResponse {
                    tags: page
                        .tags
                        .into_iter()
                        .map(|tag| coffer_proto::common::v1::Tag {
                            tag_key: tag.key,
                            tag_value: tag.value,
                        })
                        .collect(),
                    truncated: page.next_after.is_some(),
                    next_marker: page
                        .next_after
                        .as_deref()
                        .map(|item| encode_marker(Listing::Tags, &scope, item))
                        .unwrap_or_default(),
                })
            },
        )
        .await
    }

    async fn enable_key_rotation(
        &self,
        request: Request<pb::EnableKeyRotationRequest>,
    ) -> Result<Response<pb::EnableKeyRotationResponse>, Status> {
        use crate::domain::rotation::{
            DEFAULT_ROTATION_PERIOD_DAYS, MAX_ROTATION_PERIOD_DAYS, MIN_ROTATION_PERIOD_DAYS,
        };
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "rotationPeriodInDays": m.rotation_period_in_days}),
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                let period = bounded_days(
                    "rotation_period_in_days",
                    m.rotation_period_in_days,
                    DEFAULT_ROTATION_PERIOD_DAYS,
                    MIN_ROTATION_PERIOD_DAYS,
                    MAX_ROTATION_PERIOD_DAYS,
                )?;
                let key = self
                    .domain
                    .enable_key_rotation(&caller, &reference, period)
                    .await?;
                self.record_key(&call, &key);
                Ok(pb::EnableKeyRotationResponse {})
            },
        )
        .await
    }

    async fn disable_key_rotation(
        &self,
        request: Request<pb::DisableKeyRotationRequest>,
    ) -> Result<Response<pb::DisableKeyRotationResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id}),
            |call, caller, m| async move {
                let key = self
                    .domain
                    .disable_key_rotation(&caller, &key_reference("key_id", &m.key_id)?)
                    .await?;
                self.record_key(&call, &key);
                Ok(pb::DisableKeyRotationResponse {})
            },
        )
        .await
    }

    async fn get_key_rotation_status(
        &self,
        request: Request<pb::GetKeyRotationStatusRequest>,
    ) -> Result<Response<pb::GetKeyRotationStatusResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id}),
            |call, caller, m| async move {
                let status = self
                    .domain
                    .get_key_rotation_status(&caller, &key_reference("key_id", &m.key_id)?)
                    .await?;
                let rotation_enabled = status.rotation_enabled();
                let next_rotation_ms = status.next_rotation_ms();
                let key = status.key;
                self.record_key(&call, &key);
                Ok(pb::GetKeyRotationStatusResponse {
                    key_rotation_enabled: rotation_enabled,
                    key_id: self.domain.key_arn(&key.account, &key.key_id),
                    rotation_period_in_days: key.rotation_period_days.filter(|_| rotation_enabled),
                    next_rotation_date: next_rotation_ms.map(timestamp),
                    on_demand_rotation_start_date: None,
                })
            },
        )
        .await
    }

    async fn rotate_key_on_demand(
        &self,
        request: Request<pb::RotateKeyOnDemandRequest>,
    ) -> Result<Response<pb::RotateKeyOnDemandResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id}),
            |call, caller, m| async move {
                let key = self
                    .domain
                    .rotate_key_on_demand(&caller, &key_reference("key_id", &m.key_id)?)
                    .await?;
                self.record_key(&call, &key);
                Ok(pb::RotateKeyOnDemandResponse {
                    key_id: key.key_id.to_string(),
                })
            },
        )
        .await
    }

    async fn list_key_rotations(
        &self,
        request: Request<pb::ListKeyRotationsRequest>,
    ) -> Result<Response<pb::ListKeyRotationsResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "limit": m.limit, "marker": m.marker, "includeKeyMaterial": m.include_key_material}),
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                let limit = page_limit("limit", m.limit, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)?;
                let (first_material, listing) = match m.include_key_material.as_str() {
                    "" | "ROTATIONS_ONLY" => (false, "ROTATIONS_ONLY"),
                    "ALL_KEY_MATERIAL" => (true, "ALL_KEY_MATERIAL"),
                    _ => {
                        return Err(KeysError::validation(
                            "include_key_material",
                            "must be ALL_KEY_MATERIAL or ROTATIONS_ONLY",
                        ));
                    }
                };
                let scope = [m.key_id.as_str(), listing];
                let after = decode_marker(Listing::Rotations, &scope, &m.marker)?;
                let page = self
                    .domain
                    .list_key_rotations(
                        &caller,
                        &reference,
                        first_material,
                        limit as usize,
                        after.as_deref(),
                    )
                    .await?;
                self.record_key(&call, &page.key);
                Ok(pb::ListKeyRotationsResponse {
                    rotations: page
                        .rotations
                        .iter()
                        .map(|material| pb::RotationsListEntry {
                            key_id: page.key.key_id.to_string(),
                            key_material_id: material.material_id.to_hex(),
                            rotation_date: material
                                .rotation_type
                                .map(|_| timestamp(material.created_at_ms)),
                            rotation_type: material
                                .rotation_type
                                .map(|t| t.to_string())
                                .unwrap_or_default(),
                            key_material_state: if page.key.current_material_id
                                == Some(material.material_id)
                            {
                                "CURRENT"
                            } else {
                                "NON_CURRENT"
                            }
                            .to_owned(),
                        })
                        .collect(),
                    truncated: page.next_after.is_some(),
                    next_marker: page
                        .next_after
                        .map(|material| {
                            encode_marker(Listing::Rotations, &scope, &material.to_hex())
                        })
                        .unwrap_or_default(),
                })
            },
        )
        .await
    }

    async fn get_public_key(
        &self,
        request: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id}),
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                grant_tokens(&m.grant_tokens)?;
                let (key, public_key) = self.domain.get_public_key(&caller, &reference).await?;
                self.record_key(&call, &key);
                let metadata = self.metadata(&key);
                Ok(pb::GetPublicKeyResponse {
                    key_id: metadata.arn,
                    public_key,
                    key_spec: metadata.key_spec,
                    key_usage: metadata.key_usage,
                    encryption_algorithms: metadata.encryption_algorithms,
                    signing_algorithms: metadata.signing_algorithms,
                    customer_master_key_spec: metadata.customer_master_key_spec,
                })
            },
        )
        .await
    }

    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "messageType": message_type_for_audit(&m.message_type), "signingAlgorithm": m.signing_algorithm, "dryRun": dry_run_for_audit(m.dry_run)}),
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                signed_message(&m.message)?;
                let algorithm = signing_algorithm(&m.signing_algorithm)?;
                let kind = message_type(&m.message_type)?;
                grant_tokens(&m.grant_tokens)?;
                let (key, signature) = self.domain.sign(&caller, &reference, algorithm, kind, m.message).await?;
                self.record_key(&call, &key);
                dry_run_stops(m.dry_run)?;
                Ok(pb::SignResponse {
                    key_id: self.domain.key_arn(&key.account, &key.key_id),
                    signature,
                    signing_algorithm: algorithm.to_string(),
                })
            },
        )
        .await
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "messageType": message_type_for_audit(&m.message_type), "signingAlgorithm": m.signing_algorithm, "dryRun": dry_run_for_audit(m.dry_run)}),
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                signed_message(&m.message)?;
                if m.signature.is_empty() || m.signature.len() > 6144 {
                    return Err(KeysError::validation("signature", "must be 1 to 6144 bytes"));
                }
                let algorithm = signing_algorithm(&m.signing_algorithm)?;
                let kind = message_type(&m.message_type)?;
                grant_tokens(&m.grant_tokens)?;
                let key = self
                    .domain
                    .verify(&caller, &reference, algorithm, kind, &m.message, &m.signature)
                    .await?;
                self.record_key(&call, &key);
                dry_run_stops(m.dry_run)?;
                Ok(pb::VerifyResponse {
                    key_id: self.domain.key_arn(&key.account, &key.key_id),
                    signature_valid: true,
                    signing_algorithm: algorithm.to_string(),
                })
            },
        )
        .await
    }

    async fn generate_mac(
        &self,
        request: Request<pb::GenerateMacRequest>,
    ) -> Result<Response<pb::GenerateMacResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "macAlgorithm": m.mac_algorithm, "dryRun": dry_run_for_audit(m.dry_run)}),
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                signed_message(&m.message)?;
                let algorithm = mac_algorithm(&m.mac_algorithm)?;
                grant_tokens(&m.grant_tokens)?;
                let (key, mac) = self
                    .domain
                    .generate_mac(&caller, &reference, algorithm, &m.message)
                    .await?;
                self.record_key(&call, &key);
                dry_run_stops(m.dry_run)?;
                Ok(pb::GenerateMacResponse {
                    mac,
                    mac_algorithm: algorithm.to_string(),
                    key_id: self.domain.key_arn(&key.account, &key.key_id),
                })
            },
        )
        .await
    }

    async fn verify_mac(
        &self,
        request: Request<pb::VerifyMacRequest>,
    ) -> Result<Response<pb::VerifyMacResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "macAlgorithm": m.mac_algorithm, "dryRun": dry_run_for_audit(m.dry_run)}),
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                signed_message(&m.message)?;
                if m.mac.is_empty() || m.mac.len() > 6144 {
                    return Err(KeysError::validation("mac", "must be 1 to 6144 bytes"));
                }
                let algorithm = mac_algorithm(&m.mac_algorithm)?;
                grant_tokens(&m.grant_tokens)?;
                let key = self
                    .domain
                    .verify_mac(&caller, &reference, algorithm, &m.message, &m.mac)
                    .await?;
                self.record_key(&call, &key);
                dry_run_stops(m.dry_run)?;
                Ok(pb::VerifyMacResponse {
                    key_id: self.domain.key_arn(&key.account, &key.key_id),
                    mac_valid: true,
                    mac_algorithm: algorithm.to_string(),
                })
            },
        )
        .await
    }

    async fn generate_data_key_pair(
        &self,
        request: Request<pb::GenerateDataKeyPairRequest>,
    ) -> Result<Response<pb::GenerateDataKeyPairResponse>, Status> {
        self.run(
            request,
            |m| KeyPairFields::of_plaintext(m).audit_parameters(),
            |call, caller, m| async move {
                let (pair, spec) = self
                    .key_pair(&call, &caller, KeyPairFields::of_plaintext(&m))
                    .await?;
                Ok(pb::GenerateDataKeyPairResponse {
                    private_key_ciphertext_blob: pair.private_key_ciphertext_blob,
                    private_key_plaintext: pair.private_key_plaintext.to_vec(),
                    public_key: pair.public_key,
                    key_id: self.domain.key_arn(&pair.key.account, &pair.key.key_id),
                    key_pair_spec: spec.to_string(),
                    key_material_id: pair.material_id.to_hex(),
                })
            },
        )
        .await
    }

    async fn put_key_policy(
        &self,
        request: Request<pb::PutKeyPolicyRequest>,
    ) -> Result<Response<pb::PutKeyPolicyResponse>, Status> {
        self.run(
            request,
            |m| {
                let policy_name = if m.policy_name.is_empty() {
                    DEFAULT_POLICY_NAME
                } else {
                    m.policy_name.as_str()
                };
                json!({
                    "keyId": m.key_id, "policyName": policy_name, "policy": m.policy,
                    "bypassPolicyLockoutSafetyCheck": m.bypass_policy_lockout_safety_check,
                })
            },
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                if policy_name(&m.policy_name)? != DEFAULT_POLICY_NAME {
                    return Err(KeysError::validation(
                        "policy_name",
                        format!("a key has one policy, named {DEFAULT_POLICY_NAME}"),
                    ));
                }
                policy_document("policy", &m.policy)?;
                let key = self
                    .domain
                    .put_key_policy(
                        &caller,
                        &reference,
                        &m.policy,
                        m.bypass_policy_lockout_safety_check,
                    )
                    .await?;
                self.record_key(&call, &key);
                Ok(pb::PutKeyPolicyResponse {})
            },
        )
        .await
    }

    async fn get_key_policy(
        &self,
        request: Request<pb::GetKeyPolicyRequest>,
    ) -> Result<Response<pb::GetKeyPolicyResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "policyName": m.policy_name}),
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                let name = policy_name(&m.policy_name)?;
                let (key, policy) = self
                    .domain
                    .get_key_policy(&caller, &reference, &name)
                    .await?;
                self.record_key(&call, &key);
                Ok(pb::GetKeyPolicyResponse {
                    policy,
                    policy_name: name,
                })
            },
        )
        .await
    }

    async fn list_key_policies(
        &self,
        request: Request<pb::ListKeyPoliciesRequest>,
    ) -> Result<Response<pb::ListKeyPoliciesResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "limit": m.limit, "marker": m.marker}),
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                page_limit("limit", m.limit, 100, 1000)?;
                check_marker_shape(&m.marker)?;
                if !m.marker.is_empty() {
                    return Err(KeysError::InvalidMarker);
                }
                let key = self.domain.list_key_policies(&caller, &reference).await?;
                self.record_key(&call, &key);
                Ok(pb::ListKeyPoliciesResponse {
                    policy_names: vec![DEFAULT_POLICY_NAME.to_owned()],
                    next_marker: String::new(),
                    truncated: false,
                })
            },
        )
        .await
    }

    async fn create_grant(
        &self,
        request: Request<pb::CreateGrantRequest>,
    ) -> Result<Response<pb::CreateGrantResponse>, Status> {
        self.run(
            request,
            |m| {
                json!({
                    "keyId": m.key_id, "granteePrincipal": m.grantee_principal,
                    "retiringPrincipal": m.retiring_principal, "operations": m.operations,
                    "constraints": m.constraints.as_ref().map(|c| json!({
                        "encryptionContextEquals": c.encryption_context_equals,
                        "encryptionContextSubset": c.encryption_context_subset,
                    })),
                    "name": m.name,
                    "dryRun": dry_run_for_audit(m.dry_run),
                })
            },
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                let grantee =
                    principal_arn("grantee_principal", &m.grantee_principal, self.partition())?;
                let retiring = if m.retiring_principal.is_empty() {
                    None
                } else {
                    Some(principal_arn(
                        "retiring_principal",
                        &m.retiring_principal,
                        self.partition(),
                    )?)
                };
                let operations = grant_operations(&m.operations)?;
                let constraint = grant_constraint(m.constraints.as_ref(), &operations)?;
                let name = grant_name(&m.name)?;
                grant_tokens(&m.grant_tokens)?;
                let (key, grant, grant_token) = self
                    .domain
                    .create_grant(
                        &caller,
                        &reference,
                        NewGrant {
                            grantee_principal: grantee,
                            retiring_principal: retiring,
                            operations,
                            constraint,
                            name,
                        },
                        m.dry_run,
                    )
                    .await?;
                self.record_key(&call, &key);
                Ok(pb::CreateGrantResponse {
                    grant_token,
                    grant_id: grant.grant_id,
                })
            },
        )
        .await
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        self.run(
            request,
            |m| {
                json!({
                    "keyId": m.key_id, "limit": m.limit, "marker": m.marker,
                    "grantId": grant_id(&m.grant_id).ok(), "granteePrincipal": m.grantee_principal,
                })
            },
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                let limit = page_limit("limit", m.limit, 50, 100)?;
                let scope = [
                    m.key_id.as_str(),
                    m.grant_id.as_str(),
                    m.grantee_principal.as_str(),
                ];
                let after = decode_marker(Listing::Grants, &scope, &m.marker)?;
                let wanted_grant = if m.grant_id.is_empty() {
                    None
                } else {
                    Some(grant_id(&m.grant_id)?)
                };
                let grantee = if m.grantee_principal.is_empty() {
                    None
                } else {
                    Some(principal_arn(
                        "grantee_principal",
                        &m.grantee_principal,
                        self.partition(),
                    )?)
                };
                let (key, page) = self
                    .domain
                    .list_grants(
                        &caller,
                        &reference,
                        wanted_grant.as_deref(),
                        grantee.as_deref(),
                        limit,
                        after.as_deref(),
                    )
                    .await?;
                self.record_key(&call, &key);
                Ok(self.grant_page(page, Listing::Grants, &scope))
            },
        )
        .await
    }

    async fn list_retirable_grants(
        &self,
        request: Request<pb::ListRetirableGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        self.run(
            request,
            |m| json!({"retiringPrincipal": m.retiring_principal, "limit": m.limit, "marker": m.marker}),
            |_call, caller, m| async move {
                let retiring = principal_arn("retiring_principal", &m.retiring_principal, self.partition())?;
                let limit = page_limit("limit", m.limit, 50, 100)?;
                let scope = [m.retiring_principal.as_str()];
                let after = decode_marker(Listing::RetirableGrants, &scope, &m.marker)?;
                let page = self
                    .domain
                    .list_retirable_grants(&caller, &retiring, limit, after.as_deref())
                    .await?;
                Ok(self.grant_page(page, Listing::RetirableGrants, &scope))
            },
        )
        .await
    }

    async fn retire_grant(
        &self,
        request: Request<pb::RetireGrantRequest>,
    ) -> Result<Response<pb::RetireGrantResponse>, Status> {
        // As CloudTrail records it: no request parameters (a token is a
        // credential) but dryRun, the grant retired in additionalEventData.
        self.run(
            request,
            |m| json!({"dryRun": dry_run_for_audit(m.dry_run)}),
            |call, caller, m| async move {
                let target = match (
                    m.grant_token.is_empty(),
                    m.key_id.is_empty(),
                    m.grant_id.is_empty(),
                ) {
                    (false, true, true)
                        if m.grant_token.chars().count() > MAX_GRANT_TOKEN_CHARS =>
                    {
                        return Err(KeysError::validation(
                            "grant_token",
                            format!("must be 1 to {MAX_GRANT_TOKEN_CHARS} characters"),
                        ));
                    }
                    (false, true, true) => RetireTarget::Token(
                        GrantToken::parse(&m.grant_token).ok_or(KeysError::InvalidGrantToken)?,
                    ),
                    (true, false, false) => RetireTarget::Id {
                        key: key_reference("key_id", &m.key_id)?,
                        grant_id: grant_id(&m.grant_id)?,
                    },
                    _ => {
                        return Err(KeysError::validation(
                            "grant_token",
                            "give either grant_token, or key_id and grant_id",
                        ));
                    }
                };
                // Named even when the retiring is refused.
                if let RetireTarget::Id { grant_id, .. } = &target {
                    call.audit()
                        .additional_event_data(json!({ "grantId": grant_id }));
                }
                self.domain.retire_grant(&caller, target, m.dry_run).await?;
                Ok(pb::RetireGrantResponse {})
            },
        )
        .await
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::RevokeGrantResponse>, Status> {
        self.run(
            request,
            |m| json!({"keyId": m.key_id, "grantId": grant_id(&m.grant_id).ok(), "dryRun": dry_run_for_audit(m.dry_run)}),
            |call, caller, m| async move {
                let reference = key_reference("key_id", &m.key_id)?;
                let grant = grant_id(&m.grant_id)?;
                let key = self
                    .domain
                    .revoke_grant(&caller, &reference, &grant, m.dry_run)
                    .await?;
                self.record_key(&call, &key);
                Ok(pb::RevokeGrantResponse {})
            },
        )
        .await
    }

    async fn generate_data_key_pair_without_plaintext(
        &self,
        request: Request<pb::GenerateDataKeyPairWithoutPlaintextRequest>,
    ) -> Result<Response<pb::GenerateDataKeyPairWithoutPlaintextResponse>, Status> {
        self.run(
            request,
            |m| KeyPairFields::of_ciphertext_only(m).audit_parameters(),
            |call, caller, m| async move {
                let (pair, spec) = self
                    .key_pair(&call, &caller, KeyPairFields::of_ciphertext_only(&m))
                    .await?;
                Ok(pb::GenerateDataKeyPairWithoutPlaintextResponse {
                    private_key_ciphertext_blob: pair.private_key_ciphertext_blob,
                    public_key: pair.public_key,
                    key_id: self.domain.key_arn(&pair.key.account, &pair.key.key_id),
                    key_pair_spec: spec.to_string(),
                    key_material_id: pair.material_id.to_hex(),
                })
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_references() -> Result<()> {
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        assert!(matches!(key_reference("key_id", id)?, KeyReference::Id(_)));
        let arn = format!("arn:coffer:kms:eu-west-1:111122223333:key/{id}");
        assert!(matches!(
            key_reference("key_id", &arn)?,
            KeyReference::Arn { .. }
        ));
        assert!(matches!(
            key_reference("key_id", "alias/x")?,
            KeyReference::Alias(_)
        ));
        assert!(matches!(
            key_reference("key_id", "not-a-key")?,
            KeyReference::Unknown(_)
        ));
        assert!(matches!(
            key_reference("key_id", &id.to_uppercase())?,
            KeyReference::Unknown(_)
        ));
        assert!(matches!(
            key_reference("key_id", ""),
            Err(KeysError::Validation {
                field: "key_id",
                ..
            })
        ));
        assert!(matches!(
            key_reference("key_id", &"a".repeat(2049)),
            Err(KeysError::Validation {
                field: "key_id",
                ..
            })
        ));
        Ok(())
    }

    /// The longest items a list can end a page on give markers of
    /// `MarkerType`'s shape, which decode back to them; a marker outside
    /// that shape is a ValidationException, one inside it that no list
    /// issued an InvalidMarkerException.
    #[test]
    fn markers_keep_to_the_marker_type() -> Result<()> {
        let scope = ["1234abcd-12ab-34cd-56ef-1234567890ab"];
        let alias = format!("alias/{}", "a".repeat(250));
        let tag_key = "\u{1F511}".repeat(128);
        for (listing, item) in [
            (Listing::Aliases, alias.as_str()),
            (Listing::Tags, &tag_key),
        ] {
            let marker = encode_marker(listing, &scope, item);
            assert!(
                marker.chars().count() <= MAX_MARKER_CHARS,
                "{}",
                marker.len()
            );
            check_marker_shape(&marker)?;
            assert_eq!(
                decode_marker(listing, &scope, &marker)?.as_deref(),
                Some(item)
            );
        }
        for outside in [
            "x".repeat(MAX_MARKER_CHARS + 1),
            "a\u{7}b".into(),
            "\u{100}".into(),
        ] {
            assert!(matches!(
                decode_marker(Listing::Tags, &scope, &outside),
                Err(KeysError::Validation {
                    field: "marker",
                    ..
                })
            ));
            assert!(matches!(
                list_marker(&outside),
                Err(KeysError::Validation {
                    field: "marker",
                    ..
                })
            ));
        }
        let latin = "\u{ff}".repeat(MAX_MARKER_CHARS);
        assert!(matches!(
            decode_marker(Listing::Tags, &scope, &latin),
            Err(KeysError::InvalidMarker)
        ));
        assert!(matches!(
            list_marker("not a marker"),
            Err(KeysError::InvalidMarker)
        ));
        Ok(())
    }

    #[test]
    fn data_key_length_rules() {
        assert!(matches!(data_key_length(None, "AES_256"), Ok(32)));
        assert!(matches!(data_key_length(None, "AES_128"), Ok(16)));
        assert!(matches!(data_key_length(Some(64), ""), Ok(64)));
        assert!(matches!(
            data_key_length(Some(64), "AES_256"),
            Err(KeysError::Validation {
                field: "key_spec",
                ..
            })
        ));
        assert!(matches!(
            data_key_length(None, ""),
            Err(KeysError::Validation {
                field: "key_spec",
                ..
            })
        ));
        assert!(matches!(
            data_key_length(Some(0), ""),
            Err(KeysError::Validation {
                field: "number_of_bytes",
                ..
            })
        ));
        assert!(matches!(
            data_key_length(Some(1025), ""),
            Err(KeysError::Validation {
                field: "number_of_bytes",
                ..
            })
        ));
        assert!(matches!(
            data_key_length(None, "AES_512"),
            Err(KeysError::Validation {
                field: "key_spec",
                ..
            })
        ));
    }

    #[test]
    fn markers_must_be_ours() {
        assert!(matches!(list_marker("!!"), Err(KeysError::InvalidMarker)));
        assert!(matches!(
            list_marker(&URL_SAFE_NO_PAD.encode("nope")),
            Err(KeysError::InvalidMarker)
        ));
        assert!(matches!(list_marker(""), Ok(None)));
    }

    #[test]
    fn a_marker_opens_only_its_own_list() {
        let alias = encode_marker(Listing::Aliases, &[""], "alias/app");
        assert_eq!(
            decode_marker(Listing::Aliases, &[""], &alias)
                .ok()
                .flatten()
                .as_deref(),
            Some("alias/app")
        );
        let grant = encode_marker(Listing::Grants, &["k", "", ""], &"ab".repeat(32));
        for (listing, scope, marker) in [
            (Listing::Tags, &[""][..], &alias),
            (Listing::Aliases, &[""][..], &grant),
            (Listing::Rotations, &[""][..], &alias),
            // The same list with other parameters: another key, another filter.
            (Listing::Aliases, &["other-key"][..], &alias),
            (Listing::Grants, &["other-key", "", ""][..], &grant),
            (
                Listing::Grants,
                &["k", "", "arn:coffer:iam::1:user/x"][..],
                &grant,
            ),
            (Listing::Grants, &["k", ""][..], &grant),
        ] {
            assert!(matches!(
                decode_marker(listing, scope, marker),
                Err(KeysError::InvalidMarker)
            ));
        }
        // Shapes that no list issues: no tag, no scope, a bad sort key, a
        // ListKeys marker.
        let scope = marker_scope(&[""]);
        for text in [
            "alias/app".to_owned(),
            "a:app".to_owned(),
            "a:alias/app".to_owned(),
            format!("g:{scope}:not-hex"),
            format!("r:{scope}:"),
            format!("t:{scope}:"),
            format!("a:{scope}:app"),
            format!("a:{scope}:alias/\0"),
            format!("a:{scope}:alias/a b"),
            format!("a:{scope}:alias/{}", "a".repeat(251)),
            format!("t:{scope}:te\0am"),
        ] {
            let forged = URL_SAFE_NO_PAD.encode(text);
            for listing in [
                Listing::Aliases,
                Listing::Grants,
                Listing::Rotations,
                Listing::Tags,
            ] {
                assert!(matches!(
                    decode_marker(listing, &[""], &forged),
                    Err(KeysError::InvalidMarker)
                ));
            }
        }
        assert!(matches!(decode_marker(Listing::Tags, &[""], ""), Ok(None)));
    }
}
