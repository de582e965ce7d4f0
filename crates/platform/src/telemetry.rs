//! Logs and traces: JSON (or text) logs through `tracing`, and OTLP/gRPC
//! trace export when an endpoint is configured. Every API call gets a span
//! whose OpenTelemetry parent is the caller's `traceparent`, so exported
//! spans join the caller's trace and carry the trace id the audit event has.

use std::sync::OnceLock;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use thiserror::Error;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetrySettings};
use crate::trace::TraceContext;

static OTLP_ENABLED: OnceLock<bool> = OnceLock::new();

#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("telemetry.log_level: {0}")]
    Filter(String),
    #[error("telemetry.otlp_endpoint: {0}")]
    Exporter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Flushes and stops trace export when dropped.
#[derive(Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace exporter shutdown: {error}");
        }
    }
}

/// Installs the process-wide subscriber. Call once, from `main`.
pub fn init(
    settings: &TelemetrySettings,
    service_name: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&settings.log_level)
        .map_err(|error| TelemetryError::Filter(error.to_string()))?;
    // The level filters the log lines only: the exported call spans (info)
    // go out whatever the level, and debug lines stay out of them.
    let log_layer = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let mut guard = TelemetryGuard::default();
    let otel_layer = match &settings.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(format!("coffer-{service_name}"))
                        .build(),
                )
                .build();
            let tracer = provider.tracer("coffer");
            guard.provider = Some(provider);
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(LevelFilter::INFO),
            )
        }
    };
    let _first = OTLP_ENABLED.set(otel_layer.is_some());
    tracing_subscriber::registry()
        .with(log_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(guard)
}

/// The span of one API call, exported over OTLP with `parent` as its
/// parent. Without OTLP export no span is made: log lines do not use it, and
/// creating one per call is measurable on the hot path.
pub(crate) fn rpc_span(path: &str, request_id: &str, parent: &TraceContext) -> tracing::Span {
    if !OTLP_ENABLED.get().copied().unwrap_or(false) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "rpc",
        otel.name = path,
        rpc.system = "grpc",
        request_id = request_id,
        trace_id = %parent.trace_id_hex(),
    );
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        if parent.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::default(),
    );
    if let Err(error) =
        span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
    {
        tracing::debug!(%error, "cannot attach the caller's trace context");
    }
    span
}

/// Now, as RFC 3339 UTC with seconds precision (CloudTrail's eventTime form).
pub fn now_rfc3339() -> String {
    rfc3339_at(time::OffsetDateTime::now_utc().unix_timestamp())
}

/// `unix_seconds` as RFC 3339 UTC (`2026-11-22T10:00:00Z`), formatted at
/// most once per second per thread: every audit event and authorization
/// request carries one.
pub fn rfc3339_at(unix_seconds: i64) -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    LAST.with_borrow_mut(|last| {
        if last.0 != unix_seconds {
            let text = time::OffsetDateTime::from_unix_timestamp(unix_seconds)
                .ok()
                .and_then(|time| {
                    time.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            *last = (unix_seconds, text);
        }
        last.1.clone()
    })
}
