//! Audit events (DESIGN §5): the CloudTrail-shaped record, the draft a handler
//! fills during a call, and the sink events are delivered to.
//!
//! The call layer ([`crate::call`]) creates one draft per API call and emits
//! exactly one event when the call ends, whatever the outcome. Handlers only
//! add what they alone know: allow-listed request parameters, response
//! elements, resources, and the AWS error code. Nothing else reaches an event,
//! so plaintext, secret values and key material cannot.
//!
//! Until the audit service exists, [`JsonLinesSink`] writes one JSON object per
//! line to a file or to standard output.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

/// The identity that made a call, as CloudTrail's `userIdentity`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UserIdentity {
    /// `IAMUser`, `AssumedRole`, `CofferService` or `Unknown`.
    #[serde(rename = "type")]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(rename = "requestID")]
    pub request_id: String,
    pub read_only: bool,
    pub resources: Vec<AuditResource>,
    pub management_event: bool,
    pub event_category: EventCategory,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_account_id: Option<String>,
    pub trace_id: String,
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
    pub(crate) resources: Vec<AuditResource>,
    pub(crate) error: Option<(String, String)>,
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

    /// The allow-listed request parameters of this call.
    pub fn request_parameters(&self, parameters: Value) {
        self.with(|draft| draft.request_parameters = Some(parameters));
    }

    /// The allow-listed response elements of a successful call.
    pub fn response_elements(&self, elements: Value) {
        self.with(|draft| draft.response_elements = Some(elements));
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

    pub(crate) fn take(&self) -> AuditDraft {
        self.with(std::mem::take)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("audit event could not be delivered: {0}")]
pub struct AuditDeliveryError(pub String);

/// Where events go.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Hands one event to the sink.
    async fn emit(&self, event: &AuditEvent) -> Result<(), AuditDeliveryError>;

    /// Returns once every event emitted so far is written.
    fn flush(&self) -> Result<(), AuditDeliveryError> {
        Ok(())
    }
}

/// One JSON object per line, to a file (appended) or standard output.
///
/// `emit` appends the line to a shared buffer and returns; a writer thread
/// writes whatever has accumulated every [`WRITE_INTERVAL`], in one system
/// call, so many events share a write and the hot path makes no system call
/// at all. `flush` (called at shutdown
/// and by tests) forces everything out. On a crash the events of the last
/// few milliseconds can be lost: this sink is the stand-in until the audit
/// service, whose `required` mode writes events transactionally.
pub struct JsonLinesSink {
    shared: Arc<SinkShared>,
}

struct SinkShared {
    pending: Mutex<Vec<u8>>,
    wake: std::sync::Condvar,
    target: Mutex<Box<dyn Write + Send>>,
    stopping: std::sync::atomic::AtomicBool,
}

impl SinkShared {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes everything pending now.
    fn write_pending(&self) -> std::io::Result<()> {
        let mut target = self
            .target
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let batch = std::mem::take(&mut *self.lock_pending());
        if batch.is_empty() {
            return Ok(());
        }
        target.write_all(&batch)?;
        target.flush()
    }
}

/// How often the writer thread writes out pending events.
pub const WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

impl JsonLinesSink {
    pub fn stdout() -> std::io::Result<Self> {
        Self::with_target(Box::new(std::io::stdout()))
    }

    pub fn file(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Self::with_target(Box::new(file))
    }

    fn with_target(target: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let shared = Arc::new(SinkShared {
            pending: Mutex::new(Vec::with_capacity(64 * 1024)),
            wake: std::sync::Condvar::new(),
            target: Mutex::new(target),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        let writer = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("coffer-audit-writer".into())
            .spawn(move || {
                loop {
                    let Some(shared) = writer.upgrade() else {
                        return;
                    };
                    {
                        let pending = shared.lock_pending();
                        let (_pending, _timed_out) = shared
                            .wake
                            .wait_timeout_while(
                                pending,
                                std::time::Duration::from_millis(100),
                                |pending| {
                                    pending.is_empty()
                                        && !shared
                                            .stopping
                                            .load(std::sync::atomic::Ordering::Relaxed)
                                },
                            )
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                    if let Err(error) = shared.write_pending() {
                        tracing::error!(%error, "audit events could not be written");
                    }
                    if shared.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                }
            })?;
        Ok(Self { shared })
    }
}

impl Drop for JsonLinesSink {
    fn drop(&mut self) {
        self.shared
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.shared.wake.notify_one();
        if let Err(error) = self.shared.write_pending() {
            tracing::error!(%error, "audit events could not be written at shutdown");
        }
    }
}

#[async_trait::async_trait]
impl AuditSink for JsonLinesSink {
    async fn emit(&self, event: &AuditEvent) -> Result<(), AuditDeliveryError> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(4096));
        }
        SCRATCH.with_borrow_mut(|line| {
            line.clear();
            serde_json::to_writer(&mut *line, event)
                .map_err(|error| AuditDeliveryError(error.to_string()))?;
            line.push(b'\n');
            self.shared.lock_pending().extend_from_slice(line);
            Ok(())
        })
    }

    fn flush(&self) -> Result<(), AuditDeliveryError> {
        self.shared
            .write_pending()
            .map_err(|error| AuditDeliveryError(error.to_string()))
    }
}
