//! The caps every audit record is held to, applied where an event is
//! encoded (so that no event, however large the request it records, can
//! make an export too large to be accepted) and again where the audit
//! service stores what it received (where the sender may be anyone):
//!
//! - Every string value (and object key) is capped at [`MAX_STRING_BYTES`]
//!   on a character boundary, with a marker saying how much was cut.
//! - Nesting deeper than [`MAX_DEPTH`] and arrays or objects longer than
//!   [`MAX_ELEMENTS`] are cut the same way.
//! - A record still over [`MAX_RECORD_BYTES`] loses its largest fields
//!   (each replaced by a marker giving its size) until it fits; the
//!   identifying fields ([`KEPT_WHEN_CUT`]) always stay.

use serde::Serialize;
use serde_json::{Map, Value};

/// `event` as one JSON record within the caps. An event whose text is
/// within [`MAX_RECORD_BYTES`] (as a service's events almost always are)
/// is its text, with nothing rebuilt; a larger one is [`sanitize`]d and,
/// if still over, cut by [`cap_record`].
pub fn capped_record<T: Serialize>(event: &T) -> serde_json::Result<String> {
    let text = serde_json::to_string(event)?;
    if text.len() <= MAX_RECORD_BYTES {
        return Ok(text);
    }
    let Value::Object(mut fields) = sanitize(serde_json::to_value(event)?) else {
        return Ok(text);
    };
    let mut record = serde_json::to_string(&fields)?;
    if record.len() > MAX_RECORD_BYTES {
        cap_record(&mut fields, record.len());
        record = serde_json::to_string(&fields)?;
    }
    Ok(record)
}

/// Longest string value kept whole.
pub const MAX_STRING_BYTES: usize = 8 * 1024;
/// Deepest nesting kept.
pub const MAX_DEPTH: usize = 16;
/// Most elements kept in one array or object.
pub const MAX_ELEMENTS: usize = 256;
/// Largest stored record (its JSON text). A LookupEvents page is built to
/// fit in one gRPC message, so every event must fit with room to spare;
/// CloudTrail caps an event at 256 KB as well.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;
/// Fields a record over [`MAX_RECORD_BYTES`] keeps while each is at most
/// [`MAX_KEPT_FIELD_BYTES`] of JSON; a larger one is cut like any other.
const KEPT_WHEN_CUT: &[&str] = &[
    "eventVersion",
    "eventID",
    "eventTime",
    "eventName",
    "eventSource",
    "eventType",
    "eventCategory",
    "awsRegion",
    "readOnly",
    "recipientAccountId",
    "requestID",
    "errorCode",
    "trusted",
    "submittedBy",
    "traceId",
];
/// Largest value (as JSON text) of a field in [`KEPT_WHEN_CUT`] that a cut
/// keeps: all of them together stay far below the cap.
const MAX_KEPT_FIELD_BYTES: usize = 1024;
/// Longest field name kept, with a marker for its value, when a record is
/// cut; a longer one is removed with its value.
const MAX_MARKED_KEY_BYTES: usize = 128;

/// Caps strings, depth and sizes of a JSON value (see the module docs).
pub fn sanitize(value: Value) -> Value {
    sanitize_at(value, 0)
}

fn cap_string(text: String) -> String {
    if text.len() <= MAX_STRING_BYTES {
        return text;
    }
    let end = crate::floor_char_boundary(&text, MAX_STRING_BYTES);
    let cut = text.len() - end;
    let mut capped = text;
    capped.truncate(end);
    capped.push_str(&format!("…[{cut} bytes truncated]"));
    capped
}

fn sanitize_at(value: Value, depth: usize) -> Value {
    match value {
        Value::String(text) => Value::String(cap_string(text)),
        Value::Array(items) if depth >= MAX_DEPTH => Value::String(format!(
            "[array of {} elements cut at depth {MAX_DEPTH}]",
            items.len()
        )),
        Value::Object(fields) if depth >= MAX_DEPTH => Value::String(format!(
            "[object of {} fields cut at depth {MAX_DEPTH}]",
            fields.len()
        )),
        Value::Array(items) => {
            let total = items.len();
            let mut kept: Vec<Value> = items
                .into_iter()
                .take(MAX_ELEMENTS)
                .map(|item| sanitize_at(item, depth + 1))
                .collect();
            if total > MAX_ELEMENTS {
                kept.push(Value::String(format!(
                    "[{} more elements truncated]",
                    total - MAX_ELEMENTS
                )));
            }
            Value::Array(kept)
        }
        Value::Object(fields) => {
            let total = fields.len();
            let mut kept = Map::new();
            for (key, field) in fields.into_iter().take(MAX_ELEMENTS) {
                kept.insert(cap_string(key), sanitize_at(field, depth + 1));
            }
            if total > MAX_ELEMENTS {
                kept.insert("truncatedFields".into(), Value::from(total - MAX_ELEMENTS));
            }
            Value::Object(kept)
        }
        other => other,
    }
}

/// Length of `value` as JSON text.
fn json_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(0, |text| text.len())
}

/// Cuts the largest fields of a record over [`MAX_RECORD_BYTES`] until it
/// fits: each is replaced by a marker with its size (or removed, when its
/// name is long), and `recordTruncated` says how much was there.
pub fn cap_record(fields: &mut Map<String, Value>, total: usize) {
    let mut sizes: Vec<(String, usize)> = fields
        .iter()
        .map(|(name, value)| (name.clone(), name.len() + json_len(value)))
        .filter(|(name, size)| {
            !KEPT_WHEN_CUT.contains(&name.as_str()) || *size > name.len() + MAX_KEPT_FIELD_BYTES
        })
        .collect();
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    // Room for the markers and the note, generously.
    let mut remaining = total + 1024;
    let mut cut = 0usize;
    for (name, size) in sizes {
        if remaining <= MAX_RECORD_BYTES {
            break;
        }
        fields.remove(&name);
        cut += 1;
        remaining -= size;
        if name.len() <= MAX_MARKED_KEY_BYTES {
            let marker = Value::String(format!(
                "[{size} bytes cut: the record was over {MAX_RECORD_BYTES} bytes]"
            ));
            remaining += name.len() + json_len(&marker) + 4;
            fields.insert(name, marker);
        }
    }
    fields.insert(
        "recordTruncated".into(),
        serde_json::json!({ "originalBytes": total, "fieldsCut": cut }),
    );
}
