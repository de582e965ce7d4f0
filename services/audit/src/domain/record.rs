//! Turning a submitted CloudTrail-shaped record into a stored event:
//! hygiene (size caps, depth caps, one well-formed JSON object) and trust
//! (an event from anyone but a Coffer service can never pass for one).
//!
//! - The caps of [`coffer_platform::audit::caps`]: strings, nesting and
//!   element counts, and [`MAX_RECORD_BYTES`] for a whole record. A service
//!   applies them to its own events already; an outsider's are capped here.
//! - Control characters are kept as data: JSON serialisation escapes them
//!   (`\n`, `\u001b`), so a stored record is always one line and one object.
//! - An untrusted event keeps what it claimed under `claimed*` fields, but
//!   its lookup columns say `untrusted`, so a lookup by a Coffer service's
//!   event source or by a user never returns it.

use serde_json::{Map, Value};
use thiserror::Error;

use crate::store::StoredEvent;

pub use coffer_platform::audit::caps::{
    MAX_DEPTH, MAX_ELEMENTS, MAX_RECORD_BYTES, MAX_STRING_BYTES, cap_record, sanitize,
};

/// Longest event id accepted.
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// The event source and username columns of untrusted events.
pub const UNTRUSTED: &str = "untrusted";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("the record is not a JSON object")]
    NotAnObject,
    #[error("an audit record is not JSON")]
    NotJson,
    #[error("{field} is missing or is not a string")]
    MissingField { field: &'static str },
    #[error("eventID must be 1 to {MAX_EVENT_ID_BYTES} bytes of letters, digits, '-' or '_'")]
    BadEventId,
    #[error("eventTime is not an RFC 3339 time")]
    BadEventTime,
}

fn string_field<'a>(
    record: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, RecordError> {
    record
        .get(field)
        .and_then(Value::as_str)
        .ok_or(RecordError::MissingField { field })
}

/// Checks, without building it, that a JSON text is what [`sanitize`] and
/// serialisation would leave unchanged in meaning: one object, on one line,
/// nothing over a cap, no key twice in an object.
struct Unchanged {
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for Unchanged {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// An object key, borrowed from the text when it has no escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(key) => key,
            Key::Owned(key) => key,
        }
    }
}

struct KeyVisitor;

impl<'de> serde::de::Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
        Ok(Key::Borrowed(key))
    }

    fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
        Ok(Key::Owned(key.to_owned()))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Key<'de>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Unchanged {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value within the caps")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<(), E> {
        if text.len() > MAX_STRING_BYTES {
            return Err(E::custom("a string over the cap"));
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        use serde::de::Error;
        if self.depth >= MAX_DEPTH {
            return Err(A::Error::custom("nested too deep"));
        }
        let mut count = 0;
        while items
            .next_element_seed(Unchanged {
                depth: self.depth + 1,
            })?
            .is_some()
        {
            count += 1;
            if count > MAX_ELEMENTS {
                return Err(A::Error::custom("too many elements"));
            }
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut fields: A) -> Result<(), A::Error> {
        use serde::de::Error;
        if self.depth >= MAX_DEPTH {
            return Err(A::Error::custom("nested too deep"));
        }
        let mut keys: Vec<Key<'de>> = Vec::new();
        while let Some(key) = fields.next_key_seed(KeyVisitor)? {
            if key.as_str().len() > MAX_STRING_BYTES
                || keys.len() >= MAX_ELEMENTS
                || keys.iter().any(|seen| seen.as_str() == key.as_str())
            {
                return Err(A::Error::custom(
                    "a key over the cap, repeated, or too many",
                ));
            }
            keys.push(key);
            fields.next_value_seed(Unchanged {
                depth: self.depth + 1,
            })?;
        }
        Ok(())
    }
}

/// 1 to [`MAX_EVENT_ID_BYTES`] letters, digits, '-' or '_'.
pub(crate) fn is_valid_event_id(event_id: &str) -> bool {
    (1..=MAX_EVENT_ID_BYTES).contains(&event_id.len())
        && event_id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// An RFC 3339 eventTime as milliseconds since the epoch.
fn event_time_millis(event_time: &str) -> Option<i64> {
    time::OffsetDateTime::parse(event_time, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|time| i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
}

/// The columns of a record, read straight from its text.
#[derive(serde::Deserialize)]
struct Columns<'a> {
    #[serde(rename = "eventID", borrow)]
    event_id: std::borrow::Cow<'a, str>,
    #[serde(rename = "eventTime", borrow)]
    event_time: std::borrow::Cow<'a, str>,
    #[serde(rename = "eventName", borrow)]
    event_name: std::borrow::Cow<'a, str>,
    #[serde(rename = "eventSource", borrow)]
    event_source: std::borrow::Cow<'a, str>,
    #[serde(rename = "readOnly", default)]
    read_only: Option<bool>,
    #[serde(rename = "userIdentity", borrow, default)]
    user_identity: Option<IdentityColumns<'a>>,
    #[serde(rename = "recipientAccountId", borrow, default)]
    recipient_account_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "traceId", borrow, default)]
    trace_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    resources: Option<Vec<ResourceColumns<'a>>>,
    #[serde(rename = "answerWithheld", default)]
    answer_withheld: Option<bool>,
}

#[derive(serde::Deserialize)]
struct IdentityColumns<'a> {
    #[serde(rename = "userName", borrow, default)]
    user_name: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct ResourceColumns<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(rename = "ARN", borrow)]
    arn: std::borrow::Cow<'a, str>,
}

/// The stored form of a record submitted as JSON text. A trusted record
/// that sanitising would not change is stored as the text it came as,
/// without being rebuilt; anything else takes [`stored_event`]'s path, so
/// the outcome is the same either way.
pub fn stored_event_from_text(text: &str, sender: Sender<'_>) -> Result<StoredEvent, RecordError> {
    if sender == Sender::Service
        && let Some(event) = unchanged_event(text)
    {
        return Ok(event);
    }
    let record: Value = serde_json::from_str(text).map_err(|_| RecordError::NotJson)?;
    stored_event(record, sender)
}

/// `Some` when `text` is a trusted record sanitising leaves as it is, and
/// its columns read plainly (strings where strings are expected).
fn unchanged_event(text: &str) -> Option<StoredEvent> {
    use serde::de::DeserializeSeed;
    // One line: no control characters outside strings either (inside
    // strings JSON allows none).
    if !text.starts_with('{') || text.bytes().any(|byte| byte < 0x20) {
        return None;
    }
    // Over the cap, it is cut on the other path.
    if text.len() > MAX_RECORD_BYTES {
        return None;
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    Unchanged { depth: 0 }.deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    let columns: Columns<'_> = serde_json::from_str(text).ok()?;
    if !is_valid_event_id(&columns.event_id) {
        return None;
    }
    let event_id = columns.event_id.into_owned();
    let event_time_ms = event_time_millis(&columns.event_time)?;
    Some(StoredEvent {
        seq: 0,
        event_id,
        event_time_ms,
        event_source: columns.event_source.into_owned(),
        event_name: columns.event_name.into_owned(),
        read_only: columns.read_only.unwrap_or(false),
        username: columns
            .user_identity
            .and_then(|identity| identity.user_name)
            .map(std::borrow::Cow::into_owned),
        account_id: columns
            .recipient_account_id
            .map(std::borrow::Cow::into_owned),
        trusted: true,
        corrects: columns.answer_withheld == Some(true),
        trace_id: columns.trace_id.map(std::borrow::Cow::into_owned),
        received_at_ms: 0,
        record: text.to_owned(),
        resources: columns
            .resources
            .unwrap_or_default()
            .into_iter()
            .map(|resource| (resource.kind.into_owned(), resource.arn.into_owned()))
            .collect(),
    })
}

/// Who submitted a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender<'a> {
    /// A Coffer service identity: the record is trusted as it stands.
    Service,
    /// A principal of `account` (`identity` is its SPIFFE id), whose record
    /// arrived at `received_ms`. It is filed as untrusted, in the sender's
    /// account, as CloudTrail Lake files events an integration puts in the
    /// account that put them: whatever account it names, it could otherwise
    /// write into another tenant's trail, or be read by every tenant. It is
    /// filed at its arrival: a claimed time could otherwise put it first in
    /// every newest-first lookup, or out of retention's reach, for as long
    /// as its sender likes.
    Outsider {
        received_ms: i64,
        account: &'a str,
        identity: &'a str,
    },
}

/// The stored form of a record submitted by `sender`.
pub fn stored_event(record: Value, sender: Sender<'_>) -> Result<StoredEvent, RecordError> {
    let trusted = sender == Sender::Service;
    let Value::Object(mut fields) = sanitize(record) else {
        return Err(RecordError::NotAnObject);
    };
    // What an outsider sent, as its id is made of (a map serializes the
    // same way each time it is parsed from the same text).
    let sent = matches!(sender, Sender::Outsider { .. })
        .then(|| serde_json::to_vec(&fields).unwrap_or_default());
    let event_id = string_field(&fields, "eventID")?.to_owned();
    if !is_valid_event_id(&event_id) {
        return Err(RecordError::BadEventId);
    }
    let event_time_ms =
        event_time_millis(string_field(&fields, "eventTime")?).ok_or(RecordError::BadEventTime)?;
    let event_name = string_field(&fields, "eventName")?.to_owned();
    let claimed_source = string_field(&fields, "eventSource")?.to_owned();
    let read_only = fields
        .get("readOnly")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // Only a service's word replaces a stored record; an outsider's claim
    // to is kept as data (below).
    let corrects = trusted && fields.get("answerWithheld") == Some(&Value::Bool(true));
    let identity = fields.get("userIdentity");
    let claimed_username = identity
        .and_then(|identity| identity.get("userName"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let account_id = fields
        .get("recipientAccountId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let trace_id = fields
        .get("traceId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let resources = fields
        .get("resources")
        .and_then(Value::as_array)
        .map(|resources| {
            resources
                .iter()
                .filter_map(|resource| {
                    Some((
                        resource.get("type")?.as_str()?.to_owned(),
                        resource.get("ARN")?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();

    let (event_id, event_source, username, account_id, event_time_ms) = if let Sender::Outsider {
        received_ms,
        account,
        identity,
    } = sender
    {
        // Whatever it claims, it is filed as untrusted, under an id of its
        // own: a claimed id could otherwise pre-empt (and, by
        // de-duplication, suppress) the trusted event that carries it.
        let own_id = outsider_event_id(identity, &sent.unwrap_or_default());
        fields.insert("claimedEventID".into(), Value::String(event_id));
        fields.insert("eventID".into(), Value::String(own_id.clone()));
        fields.insert("claimedEventSource".into(), Value::String(claimed_source));
        fields.insert("eventSource".into(), Value::String(UNTRUSTED.into()));
        if let Some(name) = claimed_username {
            fields.insert("claimedUserName".into(), Value::String(name));
        }
        // Nothing it names is taken as a resource the event acted on, nor
        // as who made the call or from where: a reader of `userIdentity`
        // would otherwise take the sender's word for whose action it was.
        for (field, claimed_as) in [
            ("resources", "claimedResources"),
            ("userIdentity", "claimedUserIdentity"),
            ("sourceIPAddress", "claimedSourceIPAddress"),
            ("userAgent", "claimedUserAgent"),
            ("answerWithheld", "claimedAnswerWithheld"),
        ] {
            if let Some(claimed) = fields.remove(field) {
                fields.insert(claimed_as.into(), claimed);
            }
        }
        fields.insert("trusted".into(), Value::Bool(false));
        if let Some(claimed) = fields.remove("recipientAccountId") {
            fields.insert("claimedRecipientAccountId".into(), claimed);
        }
        fields.insert("recipientAccountId".into(), Value::String(account.into()));
        fields.insert("submittedBy".into(), Value::String(identity.into()));
        let seconds = received_ms.div_euclid(1000);
        if let Some(claimed) = fields.remove("eventTime") {
            fields.insert("claimedEventTime".into(), claimed);
        }
        fields.insert(
            "eventTime".into(),
            Value::String(coffer_platform::telemetry::rfc3339_at(seconds)),
        );
        (
            own_id,
            UNTRUSTED.to_owned(),
            Some(UNTRUSTED.to_owned()),
            Some(account.to_owned()),
            seconds * 1000,
        )
    } else {
        (
            event_id,
            claimed_source,
            claimed_username,
            account_id,
            event_time_ms,
        )
    };
    let mut record = serde_json::to_string(&fields).unwrap_or_default();
    if record.len() > MAX_RECORD_BYTES {
        cap_record(&mut fields, record.len());
        record = serde_json::to_string(&fields).unwrap_or_default();
    }
    Ok(StoredEvent {
        seq: 0,
        event_id,
        event_time_ms,
        event_source,
        event_name,
        read_only,
        username,
        account_id,
        trusted,
        corrects,
        trace_id,
        received_at_ms: 0,
        record,
        resources: if trusted { resources } else { Vec::new() },
    })
}

/// The error a refused call is filed with. AWS files a cross-account call
/// that access control refused in the caller's account only.
const ACCESS_DENIED: &str = "AccessDeniedException";

/// `events`, each followed by a copy for every other account whose resource
/// it acted on: CloudTrail files a cross-account call in the caller's
/// account and in each resource owner's, so a key's owner sees who used its
/// key. The copies and the caller's event carry the caller's eventID as
/// `sharedEventID`; a copy's own eventID and `recipientAccountId` are its
/// owner's. A copy's id is derived from the call's, so a redelivered event
/// yields the same copies and de-duplication holds for them too. A call
/// access control refused stays the caller's alone, and so does anything an
/// outsider sent (its resources were never read).
pub fn with_owner_copies(events: Vec<StoredEvent>) -> Vec<StoredEvent> {
    let mut filed = Vec::with_capacity(events.len());
    for event in events {
        let owners = other_owners(&event);
        if owners.is_empty() {
            filed.push(event);
        } else {
            filed.extend(share(event, &owners));
        }
    }
    filed
}

/// The accounts, other than its recipient's, that own a resource `event`
/// names.
fn other_owners(event: &StoredEvent) -> Vec<String> {
    let Some(recipient) = event.account_id.as_deref().filter(|_| event.trusted) else {
        return Vec::new();
    };
    let mut owners: Vec<String> = Vec::new();
    for (_, arn) in &event.resources {
        if let Some(parts) = coffer_platform::arn::ArnParts::parse(arn)
            && !parts.account.is_empty()
            && parts.account != recipient
            && !owners.iter().any(|owner| owner == parts.account)
        {
            owners.push(parts.account.to_owned());
        }
    }
    owners
}

/// `event`, marked as shared, and its copies for `owners`.
fn share(mut event: StoredEvent, owners: &[String]) -> Vec<StoredEvent> {
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(&event.record) else {
        return vec![event];
    };
    if fields.get("errorCode").and_then(Value::as_str) == Some(ACCESS_DENIED) {
        return vec![event];
    }
    fields.insert(
        "sharedEventID".into(),
        Value::String(event.event_id.clone()),
    );
    let mut copies = Vec::with_capacity(owners.len() + 1);
    for owner in owners {
        let event_id = owner_event_id(&event.event_id, owner);
        let mut copy = fields.clone();
        copy.insert("eventID".into(), Value::String(event_id.clone()));
        copy.insert("recipientAccountId".into(), Value::String(owner.clone()));
        copies.push(StoredEvent {
            event_id,
            account_id: Some(owner.clone()),
            record: Value::Object(copy).to_string(),
            ..event.clone()
        });
    }
    event.record = Value::Object(fields).to_string();
    copies.insert(0, event);
    copies
}

/// The eventID of `owner`'s copy of the event `event_id`: a UUID (version
/// 8) of their SHA-256, so every delivery of the event derives the same one.
/// It keeps the time prefix of a version 7 event id (what Coffer services
/// issue), so copies, like the events they copy, are added at the end of
/// the event id index rather than scattered through it.
fn owner_event_id(event_id: &str, owner: &str) -> String {
    // The bytes hashed are those copies have always been derived from, so
    // an event delivered again after an upgrade gets the same copy ids.
    let mut bytes = derived_id_bytes(&[
        b"coffer owner copy\0",
        event_id.as_bytes(),
        b"\0",
        owner.as_bytes(),
    ]);
    if let Ok(original) = uuid::Uuid::parse_str(event_id)
        && original.get_version_num() == 7
    {
        bytes[..6].copy_from_slice(&original.as_bytes()[..6]);
    }
    version_8(bytes)
}

/// The eventID under which an outsider's record is filed: a UUID (version
/// 8) of the sender and what it sent, so a retried export (the same record
/// from the same sender) is filed once, and one sender's records can never
/// take the id of another's, nor of a trusted event.
fn outsider_event_id(identity: &str, sent: &[u8]) -> String {
    // A SPIFFE id holds no NUL, so the separator is unambiguous.
    version_8(derived_id_bytes(&[
        b"coffer outsider record\0",
        identity.as_bytes(),
        b"\0",
        sent,
    ]))
}

/// The first 16 bytes of the SHA-256 of `parts`, one after another: the
/// caller separates them so that no two inputs run together alike.
pub(crate) fn derived_id_bytes(parts: &[&[u8]]) -> [u8; 16] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    let digest = context.finish();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    bytes
}

/// `bytes` marked as a UUID of version 8 (custom) and RFC 4122's variant.
pub(crate) fn version_8(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const OUTSIDER: Sender<'static> = Sender::Outsider {
        received_ms: 1_900_000_000_250,
        account: "444455556666",
        identity: "spiffe://coffer.test/account/444455556666/user/mallory",
    };

    fn record() -> Value {
        json!({
            "eventID": "0b6e-4c1d",
            "eventTime": "2026-11-22T10:00:00Z",
            "eventSource": "kms.coffer.internal",
            "eventName": "Encrypt",
            "readOnly": true,
            "userIdentity": {"type": "IAMUser", "userName": "alice"},
            "recipientAccountId": "111122223333",
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
            "resources": [{"ARN": "arn:coffer:kms:eu-west-1:111122223333:key/k", "accountId": "111122223333", "type": "AWS::KMS::Key"}],
        })
    }

    #[test]
    fn trusted_records_keep_their_columns() {
        let stored = stored_event(record(), Sender::Service).unwrap();
        assert_eq!(stored.event_id, "0b6e-4c1d");
        assert_eq!(stored.event_time_ms, 1_795_341_600_000);
        assert_eq!(stored.event_source, "kms.coffer.internal");
        assert_eq!(stored.username.as_deref(), Some("alice"));
        assert!(stored.read_only);
        assert_eq!(
            stored.resources,
            vec![(
                "AWS::KMS::Key".to_owned(),
                "arn:coffer:kms:eu-west-1:111122223333:key/k".to_owned()
            )]
        );
    }

    /// `record()` as account 444455556666 calling with a key of
    /// 111122223333 (and, when `two`, a key of 777788889999 too).
    fn cross_account(error: Option<&str>, two: bool) -> Value {
        let mut event = record();
        event["recipientAccountId"] = json!("444455556666");
        if let Some(error) = error {
            event["errorCode"] = json!(error);
        }
        if two {
            event["resources"].as_array_mut().unwrap().push(json!({
                "ARN": "arn:coffer:kms:eu-west-1:777788889999:key/m",
                "accountId": "777788889999",
                "type": "AWS::KMS::Key",
            }));
        }
        event
    }

    #[test]
    fn a_cross_account_call_is_filed_for_each_owner_too() {
        let own = stored_event(record(), Sender::Service).unwrap();
        assert_eq!(with_owner_copies(vec![own.clone()]), vec![own]);

        let call = stored_event(cross_account(None, true), Sender::Service).unwrap();
        let filed = with_owner_copies(vec![call.clone()]);
        let accounts: Vec<_> = filed.iter().map(|e| e.account_id.as_deref()).collect();
        assert_eq!(
            accounts,
            [
                Some("444455556666"),
                Some("111122223333"),
                Some("777788889999")
            ]
        );
        let records: Vec<Value> = filed
            .iter()
            .map(|e| serde_json::from_str(&e.record).unwrap())
            .collect();
        assert_eq!(filed[0].event_id, "0b6e-4c1d");
        for (stored, record) in filed.iter().zip(&records) {
            assert_eq!(record["sharedEventID"], "0b6e-4c1d");
            assert_eq!(record["eventID"], stored.event_id.as_str());
            assert_eq!(
                record["recipientAccountId"],
                stored.account_id.as_deref().unwrap()
            );
            assert_eq!(record["userIdentity"]["userName"], "alice");
            assert_eq!(stored.resources, call.resources);
            assert!(stored.trusted);
        }
        assert_ne!(filed[1].event_id, filed[2].event_id);
        assert!(filed[1..].iter().all(|e| is_valid_event_id(&e.event_id)));
        // A redelivery derives the same copies, so the store keeps one each.
        assert_eq!(with_owner_copies(vec![call]), filed);

        // Refused, or sent by an outsider: the caller's alone.
        let refused = stored_event(
            cross_account(Some("AccessDeniedException"), false),
            Sender::Service,
        )
        .unwrap();
        assert_eq!(with_owner_copies(vec![refused.clone()]), vec![refused]);
        let outsider = stored_event(cross_account(None, false), OUTSIDER).unwrap();
        assert_eq!(with_owner_copies(vec![outsider.clone()]), vec![outsider]);
        // A copy of a version 7 id keeps its time prefix.
        let mut timed = cross_account(None, false);
        timed["eventID"] = json!("01936b2e-8f00-7abc-8def-0123456789ab");
        let timed = stored_event(timed, Sender::Service).unwrap();
        let copies = with_owner_copies(vec![timed]);
        // Derived as copies always were (SHA-256 of "coffer owner copy\0",
        // the id, NUL, the owner), so a redelivery after an upgrade finds it.
        assert_eq!(copies[1].event_id, "01936b2e-8f00-8ead-961c-8301b036077e");
        // Failing for another reason, it is the owner's business too.
        let disabled = stored_event(
            cross_account(Some("DisabledException"), false),
            Sender::Service,
        )
        .unwrap();
        assert_eq!(with_owner_copies(vec![disabled]).len(), 2);
    }

    #[test]
    fn untrusted_records_cannot_pass_for_a_service() {
        let stored = stored_event(record(), OUTSIDER).unwrap();
        assert!(!stored.trusted);
        assert_eq!(stored.event_source, UNTRUSTED);
        assert_eq!(stored.username.as_deref(), Some(UNTRUSTED));
        // Filed in its sender's account, not the one it names.
        assert_eq!(stored.account_id.as_deref(), Some("444455556666"));
        assert!(stored.visible_to("444455556666"));
        assert!(!stored.visible_to("111122223333"));
        assert!(stored.resources.is_empty());
        assert!(with_owner_copies(vec![stored.clone()]).len() == 1);
        let record: Value = serde_json::from_str(&stored.record).unwrap();
        assert_eq!(record["eventSource"], UNTRUSTED);
        assert_eq!(record["claimedEventSource"], "kms.coffer.internal");
        assert_eq!(record["claimedUserName"], "alice");
        assert_eq!(record["recipientAccountId"], "444455556666");
        assert_eq!(record["claimedRecipientAccountId"], "111122223333");
        assert_eq!(
            record["submittedBy"],
            "spiffe://coffer.test/account/444455556666/user/mallory"
        );
        assert_eq!(record["trusted"], false);
        // Its claimed id is kept as data; it is filed under its own id, so
        // it cannot take (and suppress) the id of a trusted event.
        assert_eq!(record["claimedEventID"], "0b6e-4c1d");
        assert_ne!(stored.event_id, "0b6e-4c1d");
        assert_eq!(record["eventID"], stored.event_id.as_str());
        // Filed at its arrival (to the second), its claimed time kept.
        assert_eq!(stored.event_time_ms, 1_900_000_000_000);
        assert_eq!(record["eventTime"], "2030-03-17T17:46:40Z");
        assert_eq!(record["claimedEventTime"], "2026-11-22T10:00:00Z");
    }

    /// 256 parameters of 8 KiB (2 MiB) and 200 top-level fields with 8 KiB
    /// names: each stored record fits in [`MAX_RECORD_BYTES`], keeps what
    /// identifies it, and says what was cut.
    #[test]
    fn a_record_over_the_size_cap_loses_its_largest_fields() {
        let mut wide = record();
        wide["requestParameters"] = Value::Object(
            (0..256)
                .map(|index| (format!("p{index}"), json!("v".repeat(MAX_STRING_BYTES))))
                .collect(),
        );
        wide["responseElements"] = json!({ "small": "kept" });
        let mut long_names = record();
        for index in 0..200 {
            long_names[format!("{index:0>8192}")] = json!(index);
        }
        // Fields always kept are kept only while small: as objects, or
        // strings of control characters (six bytes each once escaped).
        let mut wide_kept = record();
        let big: Map<String, Value> = (0..256)
            .map(|index| (format!("k{index}"), json!("v".repeat(MAX_STRING_BYTES))))
            .collect();
        wide_kept["eventType"] = Value::Object(big.clone());
        wide_kept["traceId"] = Value::Object(big);
        for field in ["eventVersion", "awsRegion", "requestID", "errorCode"] {
            wide_kept[field] = json!("\u{1}".repeat(MAX_STRING_BYTES));
        }
        for (case, submitted) in [
            ("wide", wide),
            ("long names", long_names),
            ("wide kept fields", wide_kept),
        ] {
            for sender in [Sender::Service, OUTSIDER] {
                // As a value and as the text a service sends.
                let stored = stored_event(submitted.clone(), sender).unwrap();
                let from_text = stored_event_from_text(&submitted.to_string(), sender).unwrap();
                assert!(
                    from_text.record.len() <= MAX_RECORD_BYTES,
                    "{case}, from text: {} bytes",
                    from_text.record.len()
                );
                assert!(
                    stored.record.len() <= MAX_RECORD_BYTES,
                    "{case}: {} bytes",
                    stored.record.len()
                );
                let kept: Value = serde_json::from_str(&stored.record).unwrap();
                assert_eq!(kept["eventID"], stored.event_id.as_str(), "{case}");
                assert_eq!(kept["eventName"], "Encrypt", "{case}");
                assert!(
                    kept["recordTruncated"]["originalBytes"].as_u64().unwrap()
                        > MAX_RECORD_BYTES as u64,
                    "{case}"
                );
                if case == "wide" {
                    assert!(
                        kept["requestParameters"]
                            .as_str()
                            .unwrap()
                            .contains("bytes cut"),
                        "{case}"
                    );
                    assert_eq!(kept["responseElements"]["small"], "kept");
                }
            }
        }
        // A record under the cap is stored as it came.
        let stored = stored_event(record(), Sender::Service).unwrap();
        assert!(!stored.record.contains("recordTruncated"));
    }

    #[test]
    fn only_a_service_can_mark_a_record_as_a_correction() {
        let mut withheld = record();
        withheld["errorCode"] = json!("ServiceUnavailableException");
        withheld["answerWithheld"] = json!(true);
        let text = withheld.to_string();
        assert!(
            stored_event_from_text(&text, Sender::Service)
                .unwrap()
                .corrects
        );
        assert!(
            stored_event(withheld.clone(), Sender::Service)
                .unwrap()
                .corrects
        );
        assert!(!stored_event(record(), Sender::Service).unwrap().corrects);
        let claimed = stored_event_from_text(&text, OUTSIDER).unwrap();
        assert!(!claimed.corrects);
        let kept: Value = serde_json::from_str(&claimed.record).unwrap();
        assert_eq!(kept["claimedAnswerWithheld"], true);
        assert!(kept.get("answerWithheld").is_none());
    }

    #[test]
    fn an_outsider_record_sent_again_is_filed_under_the_same_id() {
        let first = stored_event(record(), OUTSIDER).unwrap();
        // Retried a second later: the same id, so the store keeps one.
        let retried = Sender::Outsider {
            received_ms: 1_900_000_001_250,
            account: "444455556666",
            identity: "spiffe://coffer.test/account/444455556666/user/mallory",
        };
        assert_eq!(
            stored_event(record(), retried).unwrap().event_id,
            first.event_id
        );
        // The same record from another sender, or another record from the
        // same one, is another event.
        let other_sender = Sender::Outsider {
            received_ms: 1_900_000_000_250,
            account: "444455556666",
            identity: "spiffe://coffer.test/account/444455556666/user/trent",
        };
        assert_ne!(
            stored_event(record(), other_sender).unwrap().event_id,
            first.event_id
        );
        let mut changed = record();
        changed["eventName"] = json!("Decrypt");
        assert_ne!(
            stored_event(changed, OUTSIDER).unwrap().event_id,
            first.event_id
        );
        assert!(is_valid_event_id(&first.event_id));
    }

    #[test]
    fn hostile_values_are_capped_and_stay_one_json_line() {
        let mut hostile = record();
        hostile["requestParameters"] = json!({
            "big": "x".repeat(1024 * 1024),
            "escapes": "line\nbreak \"quote\" \u{1b}[31mred\u{1b}[0m \u{0}",
            "wide": "é".repeat(MAX_STRING_BYTES),
        });
        let stored = stored_event(hostile, Sender::Service).unwrap();
        assert!(!stored.record.contains('\n'), "one line");
        assert!(
            stored.record.len() < 64 * 1024,
            "{} bytes",
            stored.record.len()
        );
        let parsed: Value = serde_json::from_str(&stored.record).unwrap();
        let big = parsed["requestParameters"]["big"].as_str().unwrap();
        assert!(big.ends_with(&format!(
            "…[{} bytes truncated]",
            1024 * 1024 - MAX_STRING_BYTES
        )));
        assert_eq!(
            parsed["requestParameters"]["escapes"],
            "line\nbreak \"quote\" \u{1b}[31mred\u{1b}[0m \u{0}"
        );
        assert!(
            stored.record.contains("\\u001b[31m"),
            "control characters escaped"
        );
        let wide = parsed["requestParameters"]["wide"].as_str().unwrap();
        assert!(wide.starts_with('é') && wide.contains("bytes truncated"));
    }

    #[test]
    fn deep_and_long_values_are_cut() {
        let mut deep = json!("leaf");
        for _ in 0..40 {
            deep = json!({"next": deep});
        }
        let long: Vec<u32> = (0..1000).collect();
        let mut hostile = record();
        hostile["requestParameters"] = json!({"deep": deep, "long": long});
        let stored = stored_event(hostile, Sender::Service).unwrap();
        let parsed: Value = serde_json::from_str(&stored.record).unwrap();
        assert_eq!(
            parsed["requestParameters"]["long"]
                .as_array()
                .unwrap()
                .len(),
            MAX_ELEMENTS + 1
        );
        assert!(stored.record.contains("cut at depth"));
    }

    #[test]
    fn malformed_records_are_refused() {
        assert_eq!(
            stored_event(json!([1]), Sender::Service),
            Err(RecordError::NotAnObject)
        );
        let mut no_id = record();
        no_id.as_object_mut().unwrap().remove("eventID");
        assert_eq!(
            stored_event(no_id, Sender::Service),
            Err(RecordError::MissingField { field: "eventID" })
        );
        for bad in ["", "a b", "../x", "%2F", "x\u{0}"] {
            let mut bad_id = record();
            bad_id["eventID"] = json!(bad);
            assert_eq!(
                stored_event(bad_id, Sender::Service),
                Err(RecordError::BadEventId),
                "{bad:?}"
            );
        }
        let mut bad_time = record();
        bad_time["eventTime"] = json!("yesterday");
        assert_eq!(
            stored_event(bad_time, Sender::Service),
            Err(RecordError::BadEventTime)
        );
    }

    /// The columns and meaning the slow path gives, for comparison.
    fn by_value(text: &str) -> Result<StoredEvent, RecordError> {
        stored_event(
            serde_json::from_str(text).map_err(|_| RecordError::NotJson)?,
            Sender::Service,
        )
    }

    fn same_meaning(left: &StoredEvent, right: &StoredEvent) {
        let parsed =
            |event: &StoredEvent| -> Value { serde_json::from_str(&event.record).unwrap() };
        assert_eq!(parsed(left), parsed(right));
        let columns = |event: &StoredEvent| StoredEvent {
            record: String::new(),
            ..event.clone()
        };
        assert_eq!(columns(left), columns(right));
    }

    #[test]
    fn a_trusted_record_within_the_caps_is_stored_as_it_came() {
        let text = record().to_string();
        let stored = stored_event_from_text(&text, Sender::Service).unwrap();
        assert_eq!(stored.record, text, "stored as sent, not rebuilt");
        same_meaning(&stored, &by_value(&text).unwrap());
    }

    #[test]
    fn records_sanitising_would_change_take_the_sanitising_path() {
        let mut long = record();
        long["requestParameters"] = json!({ "x": "a".repeat(MAX_STRING_BYTES + 1) });
        let mut deep = json!("leaf");
        for _ in 0..=MAX_DEPTH {
            deep = json!([deep]);
        }
        let mut nested = record();
        nested["requestParameters"] = deep;
        let mut wide = record();
        wide["requestParameters"] = Value::Array((0..=MAX_ELEMENTS).map(Value::from).collect());
        let escaped = record().to_string().replacen(
            "\"eventName\":\"Encrypt\"",
            "\"eventName\":\"Encrypt\",\"note\":\"\\u001b[31m\"",
            1,
        );
        let cases = [
            long.to_string(),
            nested.to_string(),
            wide.to_string(),
            // A repeated key: the record keeps the last one, as parsed.
            record()
                .to_string()
                .replacen('{', "{\"eventName\":\"Forged\",", 1),
            record()
                .to_string()
                .replacen('{', "{\"userAgent\":\"a\",\"userAgent\":\"b\",", 1),
            // Pretty-printed: stored on one line.
            serde_json::to_string_pretty(&record()).unwrap(),
        ];
        for text in cases {
            let stored = stored_event_from_text(&text, Sender::Service).unwrap();
            let expected = by_value(&text).unwrap();
            assert_eq!(stored.record, expected.record, "{text:.120}");
            assert_eq!(stored, expected);
            assert!(!stored.record.contains('\n'));
        }
        // A control character arrives escaped, and stays so as it came.
        let stored = stored_event_from_text(&escaped, Sender::Service).unwrap();
        assert_eq!(stored.record, escaped);
        same_meaning(&stored, &by_value(&escaped).unwrap());
    }

    #[test]
    fn untrusted_and_malformed_records_get_what_the_slow_path_gives() {
        let text = record().to_string();
        let untrusted = stored_event_from_text(&text, OUTSIDER).unwrap();
        assert_eq!(untrusted.event_source, UNTRUSTED);
        assert_ne!(untrusted.event_id, "0b6e-4c1d");
        assert_eq!(
            stored_event_from_text("{\"eventID\":", Sender::Service),
            Err(RecordError::NotJson)
        );
        assert_eq!(
            stored_event_from_text("[1]", Sender::Service),
            Err(RecordError::NotAnObject)
        );
        let mut no_name = record();
        no_name.as_object_mut().unwrap().remove("eventName");
        assert_eq!(
            stored_event_from_text(&no_name.to_string(), Sender::Service),
            Err(RecordError::MissingField { field: "eventName" })
        );
        let mut odd = record();
        odd["readOnly"] = json!("yes");
        odd["resources"] = json!([{"type": "AWS::KMS::Key"}, 7]);
        odd["userIdentity"] = json!("root");
        let text = odd.to_string();
        same_meaning(
            &stored_event_from_text(&text, Sender::Service).unwrap(),
            &by_value(&text).unwrap(),
        );
    }
}
