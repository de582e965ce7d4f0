//! Audit events as OTLP spans: the wire format between every Coffer service
//! and the audit service (`opentelemetry.proto.collector.trace.v1`).
//!
//! One event is one span in the instrumentation scope [`AUDIT_SCOPE`]: its
//! name is the event name, its trace id the call's, and the attribute
//! [`RECORD_ATTRIBUTE`] holds the whole CloudTrail-shaped record as one JSON
//! string. Spans in any other scope are ordinary tracing spans.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind};

/// The instrumentation scope of audit-event spans.
pub const AUDIT_SCOPE: &str = "coffer.audit";
/// The span attribute holding the record.
pub const RECORD_ATTRIBUTE: &str = "coffer.audit.record";
/// The span attribute holding the event id (also inside the record).
pub const EVENT_ID_ATTRIBUTE: &str = "coffer.audit.event_id";

/// One event ready to travel.
#[derive(Debug, Clone, Default)]
pub struct EncodedEvent {
    pub event_id: String,
    pub event_name: String,
    /// 32 lowercase hex digits, or empty.
    pub trace_id: String,
    /// The record, one JSON object.
    pub record: String,
}

pub fn string_attribute(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// An export request carrying `events`, sent as `service_name`.
pub fn export_request<'a>(
    service_name: &str,
    events: impl IntoIterator<Item = &'a EncodedEvent>,
    now_unix_nanos: u64,
) -> ExportTraceServiceRequest {
    let spans = events
        .into_iter()
        .map(|event| Span {
            trace_id: crate::trace::decode_hex::<16>(&event.trace_id)
                .unwrap_or_else(crate::random_id_bytes)
                .to_vec(),
            span_id: crate::random_id_bytes::<8>().to_vec(),
            name: event.event_name.clone(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: now_unix_nanos,
            end_time_unix_nano: now_unix_nanos,
            attributes: vec![
                string_attribute(EVENT_ID_ATTRIBUTE, event.event_id.clone()),
                string_attribute(RECORD_ATTRIBUTE, event.record.clone()),
            ],
            ..Span::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_attribute(
                    "service.name",
                    format!("coffer-{service_name}"),
                )],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: AUDIT_SCOPE.to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}
