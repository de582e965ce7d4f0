//! Changes a service makes on its own, for no caller: a key rotated on its
//! schedule, a key destroyed when its waiting period ends. CloudTrail
//! records them as `AwsServiceEvent`s (`RotateKey`, `DeleteKey`), with no
//! request (no requestID, no trace), the service as the one who acted
//! (`invokedBy`, with no identity type) and the resource's account as the
//! recipient.
//!
//! They are audited as a state-changing call is: in `required` mode the
//! event is written to the service's outbox in the transaction that makes
//! the change (the store's writes ask [`super::outbox::pending_row`] for it),
//! so a change that commits is never left unrecorded, even by a crash; then
//! it is handed to the exporter, which clears the row once the audit service
//! acknowledged it.

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;

use super::outbox::{OutboxSlot, SqlOutbox};
use super::{
    AuditEvent, AuditRecorder, AuditSink, Delivery, EventCategory, UserIdentity, event_id_from,
};
use crate::arn::Location;
use crate::clock::Clock;

/// CloudTrail's `eventType` of a change a service made on its own.
pub const SERVICE_EVENT_TYPE: &str = "AwsServiceEvent";

/// One change a service makes on its own.
#[derive(Debug, Clone)]
pub struct ServiceEvent {
    /// CloudTrail's name for it, e.g. `RotateKey`.
    pub name: &'static str,
    /// The account whose resource changed: the event's recipient.
    pub account: String,
    /// The resource's ARN and CloudTrail type (`AWS::KMS::Key`).
    pub resource_arn: String,
    pub resource_type: &'static str,
    /// CloudTrail's `serviceEventDetails`, e.g. `{"keyId": ...}`.
    pub details: Value,
}

/// Records one service's own changes (see the module docs).
#[derive(Clone)]
pub struct ServiceEvents {
    sink: Arc<dyn AuditSink>,
    outbox: Option<Arc<SqlOutbox>>,
    region: String,
    event_source: String,
    /// The service's clock: a change it makes on schedule happens at the
    /// time that clock says (a RotateKey event has its rotation's date).
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ServiceEvents {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ServiceEvents")
            .field("event_source", &self.event_source)
            .field("outbox", &self.outbox.is_some())
            .finish_non_exhaustive()
    }
}

impl ServiceEvents {
    /// The events of `service_name` (`keys`), delivered to `sink`; with an
    /// outbox (`required` mode) each is also written to it with its change.
    pub fn new(
        location: &Location,
        service_name: &str,
        sink: Arc<dyn AuditSink>,
        outbox: Option<Arc<SqlOutbox>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            sink,
            outbox,
            region: location.region.clone(),
            event_source: location.event_source(crate::service_prefix(service_name)),
            clock,
        }
    }

    pub(crate) fn event_of(&self, change: &ServiceEvent) -> AuditEvent {
        let now_ms = self.clock.now_millis();
        AuditEvent {
            event_version: "1.11",
            event_id: event_id_from(now_ms, &crate::random_id_bytes()).to_string(),
            event_time: crate::telemetry::rfc3339_at(now_ms.div_euclid(1000)),
            event_source: self.event_source.clone(),
            event_name: change.name.to_owned(),
            event_type: SERVICE_EVENT_TYPE,
            aws_region: self.region.clone(),
            source_ip_address: self.event_source.clone(),
            user_agent: self.event_source.clone(),
            user_identity: UserIdentity {
                identity_type: String::new(),
                principal_id: None,
                arn: None,
                account_id: Some(change.account.clone()),
                user_name: None,
                invoked_by: Some(self.event_source.clone()),
            },
            request_parameters: Value::Null,
            response_elements: Value::Null,
            additional_event_data: None,
            error_code: None,
            error_message: None,
            request_id: String::new(),
            read_only: false,
            resources: Vec::new(),
            management_event: true,
            event_category: EventCategory::Management,
            recipient_account_id: Some(change.account.clone()),
            service_event_details: Some(change.details.clone()),
            trace_id: String::new(),
            answer_withheld: false,
        }
    }

    /// Runs `work`, which makes the change in one transaction and returns
    /// `Some` if it made it (`None`: there was nothing to do, as when another
    /// process got there first). The event is recorded only for a change
    /// made; an error is returned as it came, with nothing recorded.
    pub async fn record<T, E>(
        &self,
        change: ServiceEvent,
        work: impl Future<Output = Result<Option<T>, E>>,
    ) -> Result<Option<T>, E> {
        let mut event = self.event_of(&change);
        let recorder = AuditRecorder::default();
        recorder.resource(
            change.resource_arn.clone(),
            change.account.clone(),
            change.resource_type,
        );
        let outcome = match &self.outbox {
            Some(outbox) => {
                let slot = Arc::new(OutboxSlot::new(
                    event.clone(),
                    recorder.clone(),
                    outbox.boot_id().clone(),
                ));
                slot.scope(work).await
            }
            None => work.await,
        };
        if matches!(outcome, Ok(Some(_))) {
            event.resources = recorder.take().resources;
            let delivery = match &self.outbox {
                Some(outbox) => Delivery::Outboxed(outbox.clone()),
                None => Delivery::Background,
            };
            if let Err(error) = self.sink.emit(&event, delivery).await {
                tracing::error!(%error, event = change.name, "service event not delivered");
            }
        }
        outcome
    }
}
