//! Audit events (DESIGN §5): the CloudTrail-shaped record, the draft a handler
//! fills during a call, and the sink events are delivered to.
//!
//! The call layer ([`crate::call`]) creates one draft per API call and emits
//! exactly one event when the call ends, whatever the outcome. Handlers only
//! add what they alone know: allow-listed request parameters, response
//! elements, resources, and the AWS error code. Nothing else reaches an event,
//! so plaintext, secret values and key material cannot.
//!
//! Events leave the process as OTLP spans ([`otlp`]) through the
//! [`export::AuditExporter`], batched so that one export (one group commit at
//! the audit service) carries every event that is waiting. In `required`
//! mode a state change writes its event to the service's [`outbox`] in the
//! same transaction, and data-plane answers wait for the acknowledgement.

pub mod caps;
pub mod export;
pub mod otlp;
pub mod outbox;
pub mod service;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

/// The identity that made a call, as CloudTrail's `userIdentity`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UserIdentity {
    /// `IAMUser`, `AssumedRole`, `CofferService` or `Unknown`; none for a
    /// service's own change (an `AwsServiceEvent`), as in CloudTrail.
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub identity_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// The Coffer service that made the call on the principal's behalf.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoked_by: Option<String>,
}

/// A resource a call acted on.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditResource {
    #[serde(rename = "ARN")]
    pub arn: String,
    #[serde(rename = "accountId")]
    pub account_id: String,
    #[serde(rename = "type")]
    pub resource_type: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum EventCategory {
    Management,
    Data,
}

/// One audit event, serialized with CloudTrail's field names.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub event_version: &'static str,
    #[serde(rename = "eventID")]
    pub event_id: String,
    pub event_time: String,
    pub event_source: String,
    pub event_name: String,
    pub event_type: &'static str,
    pub aws_region: String,
    #[serde(rename = "sourceIPAddress")]
    pub source_ip_address: String,
    pub user_agent: String,
    pub user_identity: UserIdentity,
    pub request_parameters: Value,
    pub response_elements: Value,
    /// What the service adds that is neither asked nor answered (the grant
    /// a RetireGrant retired, which its token may be the only name of).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_event_data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// None for a service's own change, which no request asked for.
    #[serde(rename = "requestID", skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    pub read_only: bool,
    pub resources: Vec<AuditResource>,
    pub management_event: bool,
    pub event_category: EventCategory,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_account_id: Option<String>,
    /// What a service's own change (an `AwsServiceEvent`) was about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_event_details: Option<Value>,
    /// None for a service's own change, which is part of no trace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// Set on the event of a call whose answer was withheld because its
    /// first event was not acknowledged in time: that first event (a
    /// success) may still have been stored, and this one, under the same
    /// eventID, replaces it there, so the trail says what the caller got.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub answer_withheld: bool,
}

/// A new event id made at `now_ms` from ten random bytes: time-ordered (UUID
/// version 7), so the audit store's unique index on eventID grows at its
/// end instead of every insert dirtying a random page of it.
pub(crate) fn event_id_from(now_ms: i64, random: &[u8; 10]) -> uuid::Uuid {
    uuid::Builder::from_unix_timestamp_millis(u64::try_from(now_ms).unwrap_or(0), random)
        .into_uuid()
}

/// What an RPC is, for its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcKind {
    pub read_only: bool,
    pub category: EventCategory,
}

/// What a handler adds to its call's event.
#[derive(Debug, Default)]
pub(crate) struct AuditDraft {
    pub(crate) request_parameters: Option<Value>,
    pub(crate) response_elements: Option<Value>,
    pub(crate) additional_event_data: Option<Value>,
    pub(crate) resources: Vec<AuditResource>,
    pub(crate) error: Option<(String, String)>,
    /// The client reset the stream before its request was read whole.
    pub(crate) client_reset: bool,
}

/// `value` without what a caller leaves out: CloudTrail records only the
/// parameters a request sent, and a protobuf field left unset arrives as
/// its default. Parameters that are null (an unset optional field), empty
/// strings or empty lists or maps are dropped, and within them, at any
/// depth, nulls and empty lists and maps (a message's unset fields). Strings
/// within a parameter are data (an encryption context's empty value), and
/// numbers and booleans may be what was sent (zero, false): they stay.
/// `None` when nothing is left.
fn sent_only(value: Value) -> Option<Value> {
    unset_dropped(value, 0)
}

/// [`sent_only`] of a value `depth` levels into the request: 0 is the
/// parameters, 1 one parameter, deeper is within a parameter.
fn unset_dropped(value: Value, depth: usize) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::String(text) if text.is_empty() && depth <= 1 => None,
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) => Some(Value::Array(
            items
                .into_iter()
                .map(|item| unset_dropped(item, depth + 1).unwrap_or(Value::Null))
                .collect(),
        )),
        Value::Object(fields) => {
            let kept: serde_json::Map<String, Value> = fields
                .into_iter()
                .filter_map(|(name, field)| {
                    unset_dropped(field, depth + 1).map(|field| (name, field))
                })
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        other => Some(other),
    }
}

/// A handle on the current call's draft, shared with the call layer.
#[derive(Debug, Clone, Default)]
pub struct AuditRecorder(Arc<Mutex<AuditDraft>>);

impl AuditRecorder {
    fn with<R>(&self, change: impl FnOnce(&mut AuditDraft) -> R) -> R {
        let mut draft = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut draft)
    }

    /// The allow-listed request parameters of this call, as CloudTrail
    /// records them: only what the caller sent (see [`sent_only`]).
    pub fn request_parameters(&self, parameters: Value) {
        self.request_parameters_keeping(parameters, &[]);
    }

    /// [`Self::request_parameters`], keeping the top-level fields `required`
    /// even when empty: a required parameter sent empty (a description
    /// cleared with `""`) is what the request asked for.
    pub fn request_parameters_keeping(&self, parameters: Value, required: &[&str]) {
        let mut kept = serde_json::Map::new();
        if let Value::Object(fields) = &parameters {
            for name in required {
                if let Some(field) = fields.get(*name) {
                    kept.insert((*name).to_owned(), field.clone());
                }
            }
        }
        let parameters = match sent_only(parameters) {
            Some(Value::Object(mut sent)) => {
                sent.extend(kept);
                Value::Object(sent)
            }
            None if !kept.is_empty() => Value::Object(kept),
            other => other.unwrap_or(Value::Null),
        };
        self.with(|draft| draft.request_parameters = Some(parameters));
    }

    /// The allow-listed response elements of a successful call.
    pub fn response_elements(&self, elements: Value) {
        self.with(|draft| draft.response_elements = Some(elements));
    }

    /// CloudTrail's `additionalEventData`, recorded whatever the outcome.
    pub fn additional_event_data(&self, data: Value) {
        self.with(|draft| draft.additional_event_data = Some(data));
    }

    pub fn resource(&self, arn: String, account_id: String, resource_type: &str) {
        self.with(|draft| {
            if !draft.resources.iter().any(|existing| existing.arn == arn) {
                draft.resources.push(AuditResource {
                    arn,
                    account_id,
                    resource_type: resource_type.to_owned(),
                });
            }
        });
    }

    pub(crate) fn error(&self, exception: &str, message: &str) {
        self.with(|draft| draft.error = Some((exception.to_owned(), message.to_owned())));
    }

    pub(crate) fn client_reset(&self) {
        self.with(|draft| draft.client_reset = true);
    }

    pub(crate) fn take(&self) -> AuditDraft {
        self.with(std::mem::take)
    }

    /// What the draft holds now, leaving it in place.
    pub(crate) fn snapshot(&self) -> AuditDraft {
        self.with(|draft| AuditDraft {
            request_parameters: draft.request_parameters.clone(),
            response_elements: draft.response_elements.clone(),
            additional_event_data: draft.additional_event_data.clone(),
            resources: draft.resources.clone(),
            error: draft.error.clone(),
            client_reset: draft.client_reset,
        })
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuditDeliveryError {
    /// The audit service did not acknowledge the event within the deadline,
    /// or is known to be unreachable.
    #[error("the audit service did not acknowledge the event in time")]
    Unacknowledged,
    #[error("audit event could not be delivered: {0}")]
    Failed(String),
}

/// How an event is to be delivered.
#[derive(Clone)]
pub enum Delivery {
    /// Queued; the call does not wait.
    Background,
    /// The call waits until the audit service acknowledged the event
    /// (`required` mode's data plane), at most until `by` (the call's
    /// deadline) and the audit deadline.
    Acknowledged { by: tokio::time::Instant },
    /// Queued; the event is also in this outbox, whose row is removed once
    /// the audit service acknowledged it.
    Outboxed(Arc<outbox::SqlOutbox>),
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Background => "Background",
            Self::Acknowledged { .. } => "Acknowledged",
            Self::Outboxed(_) => "Outboxed",
        })
    }
}

/// How many API calls have started and how many have handed their event to
/// the sink. The exporter reads it to let an export wait a moment for calls
/// that are still running ([`export`]'s gathering).
#[derive(Debug, Default)]
pub struct CallCounter {
    started: AtomicU64,
    finished: AtomicU64,
}

impl CallCounter {
    /// Counts a call as running until the returned mark is dropped, which
    /// the call layer does just before it emits the call's event.
    pub fn start(self: &Arc<Self>) -> RunningCall {
        self.started.fetch_add(1, Ordering::AcqRel);
        RunningCall(self.clone())
    }

    /// Calls started so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    /// Calls that have handed their event over (or ended without one).
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Acquire)
    }
}

/// A call whose event is not handed over yet; see [`CallCounter::start`].
#[derive(Debug)]
pub struct RunningCall(Arc<CallCounter>);

impl Drop for RunningCall {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
    }
}

/// Where events go: the exporter to the audit service, or (for the audit
/// service's own calls) its store.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Hands one event over as `delivery` says.
    async fn emit(&self, event: &AuditEvent, delivery: Delivery) -> Result<(), AuditDeliveryError>;

    /// Whether events are being acknowledged: `false` once the audit service
    /// has been unreachable past the deadline. `None` when the sink cannot
    /// become unreachable.
    fn health(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }

    /// Returns once every event handed over so far is acknowledged (or
    /// given up), or `timeout` passed.
    async fn flush(&self, timeout: std::time::Duration) -> Result<(), AuditDeliveryError>;

    /// The count of running calls this sink batches by, if it does.
    fn calls(&self) -> Option<&Arc<CallCounter>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::sent_only;

    #[test]
    fn only_what_a_request_sent_is_kept() {
        let sent = sent_only(json!({
            "keyId": "alias/x",
            "encryptionAlgorithm": "",
            "encryptionContext": {},
            "numberOfBytes": null,
            "limit": 0,
            "multiRegion": false,
            "constraints": {"encryptionContextEquals": {}, "encryptionContextSubset": {"a": ""}},
            "tags": [{"tagKey": "env", "tagValue": ""}],
            "operations": ["Encrypt", ""],
            "grantTokens": [],
        }));
        assert_eq!(
            sent,
            Some(json!({
                "keyId": "alias/x",
                "limit": 0,
                "multiRegion": false,
                "constraints": {"encryptionContextSubset": {"a": ""}},
                "tags": [{"tagKey": "env", "tagValue": ""}],
                "operations": ["Encrypt", ""],
            }))
        );
        assert_eq!(sent_only(json!({"marker": "", "keyId": null})), None);
    }
}
