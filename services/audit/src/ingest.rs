//! The OTLP endpoint (`opentelemetry.proto.collector.trace.v1.TraceService
//! /Export`) on the audit service's mTLS listener.
//!
//! - A span in the `coffer.audit` scope carrying a record, sent by a Coffer
//!   service identity, is a trusted audit event.
//! - The same from anyone else, and any span at all from anyone else, is an
//!   untrusted external event (or rejected, as `audit.untrusted_spans`
//!   says): filed under eventSource and username `untrusted`, in the
//!   sender's account, with what it claimed kept as data, so it can never
//!   pass for a service's event or land in another account's trail. A
//!   client whose certificate names no Coffer identity is refused. A
//!   service's record naming another service's event source is rejected: a
//!   service speaks for itself only.
//! - Ordinary tracing spans from Coffer services are forwarded to the
//!   configured collector, or dropped.
//!
//! The answer is sent only once the export is durable: appended to the
//! ingest journal on SQLite ([`crate::journal`]), committed to the store on
//! Postgres. That is the acknowledgement `required` mode waits for.

use std::sync::Arc;

use coffer_platform::arn::AccountId;
use coffer_platform::audit::otlp::{AUDIT_SCOPE, RECORD_ATTRIBUTE};
use coffer_platform::config::UntrustedSpans;
use coffer_platform::identity::Principal;
use coffer_platform::service_prefix;
use coffer_platform::tls::PeerInfo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status};

use crate::core::AuditCore;
use crate::domain::record::{
    Sender, derived_id_bytes, stored_event, stored_event_from_text, version_8,
};

/// Spans one export may carry (a Coffer service sends at most
/// `audit.batch_limit`, 10,000, at once); those past it are rejected.
pub const MAX_SPANS_PER_EXPORT: usize = 10_000;
/// How much of an untrusted sender's `service.name` its events keep as the
/// claimed event source: the one value every span of an export repeats.
const MAX_CLAIMED_SERVICE_BYTES: usize = 256;

/// Forwards of ordinary spans that may wait for the collector at once;
/// past them a batch is dropped, so a collector that stops answering holds
/// a bounded amount of memory.
pub const MAX_FORWARDS_IN_FLIGHT: usize = 32;
/// How long a forward may take, connecting included.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends ordinary tracing spans on to an OTLP collector, in the background:
/// an export is never held up by the collector, and at most
/// [`MAX_FORWARDS_IN_FLIGHT`] forwards wait for it.
#[derive(Clone)]
pub struct SpanForwarder {
    client: TraceServiceClient<tonic::transport::Channel>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl SpanForwarder {
    /// A forwarder to `endpoint` (`http://` or `https://`), connecting on
    /// first use.
    pub fn new(endpoint: &str) -> Result<Self, tonic::transport::Error> {
        let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(FORWARD_TIMEOUT)
            .timeout(FORWARD_TIMEOUT);
        Ok(Self {
            client: TraceServiceClient::new(endpoint.connect_lazy()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS_IN_FLIGHT)),
        })
    }

    /// Starts forwarding `spans`; `false` when too many forwards already
    /// wait and they are dropped.
    pub fn forward(&self, spans: Vec<ResourceSpans>) -> bool {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::warn!("the span collector is not keeping up: spans dropped");
            return false;
        };
        let mut client = self.client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let request = ExportTraceServiceRequest {
                resource_spans: spans,
            };
            if let Err(status) = client.export(request).await {
                tracing::warn!(code = ?status.code(), "forwarding spans to the collector failed");
            }
        });
        true
    }
}

/// The TraceService the audit service serves.
pub struct OtlpIngest {
    core: Arc<AuditCore>,
    untrusted: UntrustedSpans,
    forward: Option<SpanForwarder>,
}

impl OtlpIngest {
    pub fn new(
        core: Arc<AuditCore>,
        untrusted: UntrustedSpans,
        forward: Option<SpanForwarder>,
    ) -> Self {
        Self {
            core,
            untrusted,
            forward,
        }
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref())
        .and_then(|value| value.value.as_ref())
}

fn json_of(value: &any_value::Value) -> Value {
    match value {
        any_value::Value::StringValue(text) => Value::String(text.clone()),
        any_value::Value::BoolValue(flag) => Value::Bool(*flag),
        any_value::Value::IntValue(number) => json!(number),
        any_value::Value::DoubleValue(number) => json!(number),
        any_value::Value::BytesValue(bytes) => json!(format!("<{} bytes>", bytes.len())),
        any_value::Value::ArrayValue(array) => Value::Array(
            array
                .values
                .iter()
                .filter_map(|value| value.value.as_ref().map(json_of))
                .collect(),
        ),
        any_value::Value::KvlistValue(list) => Value::Object(attributes_json(&list.values)),
        _ => Value::Null,
    }
}

fn attributes_json(attributes: &[KeyValue]) -> Map<String, Value> {
    attributes
        .iter()
        .map(|attribute| {
            (
                attribute.key.clone(),
                attribute
                    .value
                    .as_ref()
                    .and_then(|value: &AnyValue| value.value.as_ref())
                    .map_or(Value::Null, json_of),
            )
        })
        .collect()
}

fn rfc3339_of_nanos(nanos: u64) -> String {
    i128::from(nanos)
        .checked_mul(1)
        .and_then(|nanos| time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(coffer_platform::telemetry::now_rfc3339)
}

/// The service a resource's spans claim to come from (its `service.name`,
/// when a string), cut to [`MAX_CLAIMED_SERVICE_BYTES`]. Read once per
/// resource and cut before anything is copied: a name of megabytes shared
/// by ten thousand spans costs no more than a short one.
fn claimed_service(resource: &ResourceSpans) -> Option<&str> {
    let name = resource
        .resource
        .as_ref()
        .and_then(|resource| attribute(&resource.attributes, "service.name"))?;
    match name {
        any_value::Value::StringValue(name) => {
            name.get(..coffer_platform::floor_char_boundary(name, MAX_CLAIMED_SERVICE_BYTES))
        }
        _ => None,
    }
}

/// The CloudTrail-shaped record of an ordinary span from an untrusted
/// sender (of the service its resource claims, see [`claimed_service`]):
/// what it says, as data.
fn external_record(claimed_service: Option<&str>, span: &Span) -> Value {
    json!({
        "eventVersion": "1.11",
        // Of the span's ids, not random, so a retried export is the same
        // record again (and filed once).
        "eventID": version_8(derived_id_bytes(&[
            b"coffer external span\0",
            &u64::try_from(span.trace_id.len()).unwrap_or(u64::MAX).to_be_bytes(),
            &span.trace_id,
            &span.span_id,
        ])),
        "eventTime": rfc3339_of_nanos(span.start_time_unix_nano),
        "eventSource": claimed_service.unwrap_or("external"),
        "eventName": span.name,
        "eventType": "ExternalSpan",
        "requestParameters": Value::Object(attributes_json(&span.attributes)),
    })
}

/// Who sent an export, as its connection shows.
pub(crate) enum ExportSender {
    /// A Coffer service: its audit spans are trusted events.
    Service(Arc<Principal>),
    /// A principal of an account: its spans are filed there, untrusted.
    Outsider {
        principal: Arc<Principal>,
        account: AccountId,
    },
}

/// The sender of an export. Anyone but a Coffer service or a principal of
/// an account is refused, before the export is read
/// ([`crate::export_guard`]) and again here; so is one whose certificate
/// has expired since its connection was made (an exporter keeps its
/// connection open for as long as it runs).
pub(crate) fn export_sender(peer: Option<&PeerInfo>) -> Result<ExportSender, Status> {
    let principal = match peer {
        Some(peer) if peer.certificate_expired() => {
            return Err(Status::unauthenticated(
                "the client certificate of this connection has expired; reconnect with a valid one",
            ));
        }
        Some(peer) => peer.identity.clone().map_err(|error| {
            Status::unauthenticated(format!("the client is not a Coffer identity: {error}"))
        })?,
        None => {
            return Err(Status::unauthenticated(
                "no client certificate was presented",
            ));
        }
    };
    if principal.is_service() {
        return Ok(ExportSender::Service(principal));
    }
    match principal.account().cloned() {
        Some(account) => Ok(ExportSender::Outsider { principal, account }),
        None => Err(Status::permission_denied(
            "spans from a principal of no account are not accepted",
        )),
    }
}

#[tonic::async_trait]
impl TraceService for OtlpIngest {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let export_sender = export_sender(request.extensions().get::<PeerInfo>())?;
        // A service speaks for itself only: its events name its own event
        // source (`kms.…` for the keys service), never another service's.
        let (sender, own_source) = match &export_sender {
            ExportSender::Service(principal) => (
                Sender::Service,
                Some(format!("{}.", service_prefix(principal.name()))),
            ),
            ExportSender::Outsider { principal, account } => (
                Sender::Outsider {
                    received_ms: self.core.clock().now_millis(),
                    account: account.as_str(),
                    identity: principal.spiffe_id(),
                },
                None,
            ),
        };
        let trusted = own_source.is_some();
        let export = request.into_inner();
        let mut events = Vec::new();
        let mut rejected: i64 = 0;
        let mut first_error = String::new();
        let mut reject = |message: String| {
            rejected += 1;
            if first_error.is_empty() {
                first_error = message;
            }
        };
        let mut spans: usize = 0;
        let mut forward: Vec<ResourceSpans> = Vec::new();
        for resource_spans in &export.resource_spans {
            let claimed_service = claimed_service(resource_spans);
            let mut ordinary: Vec<ScopeSpans> = Vec::new();
            for scope_spans in &resource_spans.scope_spans {
                let is_audit = scope_spans
                    .scope
                    .as_ref()
                    .is_some_and(|scope| scope.name == AUDIT_SCOPE);
                if trusted && !is_audit {
                    ordinary.push(scope_spans.clone());
                    continue;
                }
                for span in &scope_spans.spans {
                    spans += 1;
                    if spans > MAX_SPANS_PER_EXPORT {
                        reject(format!(
                            "an export carries at most {MAX_SPANS_PER_EXPORT} spans"
                        ));
                        continue;
                    }
                    if !trusted && self.untrusted == UntrustedSpans::Reject {
                        reject(
                            "spans from identities that are not Coffer services are rejected"
                                .into(),
                        );
                        continue;
                    }
                    let record = match (is_audit, attribute(&span.attributes, RECORD_ATTRIBUTE)) {
                        (true, Some(any_value::Value::StringValue(text))) => {
                            match stored_event_from_text(text, sender) {
                                Ok(event)
                                    if own_source.as_ref().is_some_and(|own| {
                                        !event.event_source.starts_with(own.as_str())
                                    }) =>
                                {
                                    reject(format!(
                                        "a Coffer service's events name its own event source ({}…)",
                                        own_source.as_deref().unwrap_or_default()
                                    ));
                                }
                                Ok(event) => events.push(event),
                                Err(error) => reject(error.to_string()),
                            }
                            continue;
                        }
                        (true, _) if trusted => {
                            reject("an audit span carries no record".into());
                            continue;
                        }
                        _ => external_record(claimed_service, span),
                    };
                    match stored_event(record, sender) {
                        Ok(event) => events.push(event),
                        Err(error) => reject(error.to_string()),
                    }
                }
            }
            if !ordinary.is_empty() {
                forward.push(ResourceSpans {
                    resource: resource_spans.resource.clone(),
                    scope_spans: ordinary,
                    schema_url: resource_spans.schema_url.clone(),
                });
            }
        }
        if let (Some(forwarder), false) = (&self.forward, forward.is_empty()) {
            forwarder.forward(forward);
        }
        self.core.ingest(events).await.map_err(|error| {
            tracing::error!(%error, "audit events could not be stored");
            Status::unavailable("the audit store is unavailable")
        })?;
        let partial_success = (rejected > 0).then_some(ExportTracePartialSuccess {
            rejected_spans: rejected,
            error_message: first_error,
        });
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success,
        }))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, KeyValueList, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

    use super::{
        MAX_CLAIMED_SERVICE_BYTES, MAX_FORWARDS_IN_FLIGHT, SpanForwarder, claimed_service,
    };

    fn claiming(name: any_value::Value) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue { value: Some(name) }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The service a resource claims is a string, cut (on a character
    /// boundary) before it is copied; anything else claims none.
    #[test]
    fn a_claimed_service_is_a_string_cut_short() {
        // The 256th byte is the middle of the é.
        let long = format!("{}é{}", "s".repeat(255), "s".repeat(4 * 1024 * 1024));
        let resource = claiming(any_value::Value::StringValue(long.clone()));
        let claimed = claimed_service(&resource).unwrap_or_default();
        assert_eq!(claimed.len(), MAX_CLAIMED_SERVICE_BYTES - 1);
        assert!(long.starts_with(claimed));
        let resource = claiming(any_value::Value::StringValue("payments".into()));
        assert_eq!(claimed_service(&resource), Some("payments"));
        let resource = claiming(any_value::Value::KvlistValue(KeyValueList {
            values: vec![KeyValue::default(); 1000],
        }));
        assert_eq!(claimed_service(&resource), None);
        assert_eq!(claimed_service(&ResourceSpans::default()), None);
    }

    /// A collector that accepts connections and never answers holds at most
    /// [`MAX_FORWARDS_IN_FLIGHT`] forwards; the rest are dropped at once.
    #[tokio::test]
    async fn a_silent_collector_holds_a_bounded_number_of_forwards()
    -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let held = tokio::spawn(async move {
            let mut connections = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                connections.push(connection);
            }
        });
        let forwarder = SpanForwarder::new(&format!("http://{addr}"))?;
        let started = (0..100).filter(|_| forwarder.forward(Vec::new())).count();
        assert_eq!(started, MAX_FORWARDS_IN_FLIGHT);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(forwarder.in_flight.available_permits(), 0);
        held.abort();
        Ok(())
    }
}
