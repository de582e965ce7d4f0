//! OTLP trace export: with `telemetry.otlp_endpoint` set, every API call's
//! span reaches an OpenTelemetry collector inside the caller's W3C trace.
//! A test binary of its own, because it installs the process-wide subscriber.
//! The log level (`warn` here) does not switch the export off.

use std::time::Duration;

use coffer_platform::config::{LogFormat, TelemetrySettings};
use coffer_tests::{ACCOUNT_A, Backend, Harness, keys_pb as pb};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::mpsc;

struct Collector(mpsc::UnboundedSender<Span>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    let _receiver_gone = self.0.send(span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_call_spans_join_the_callers_trace() -> anyhow::Result<()> {
    let (sender, mut spans) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let collector_addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(sender)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let telemetry = coffer_platform::telemetry::init(
        &TelemetrySettings {
            log_format: LogFormat::Json,
            // The log level filters log lines, not the exported spans: at
            // `warn` the calls' (info) spans still go out.
            log_level: "warn".into(),
            otlp_endpoint: Some(format!("http://{collector_addr}")),
        },
        "keys",
    )?;

    let harness = Harness::start(Backend::Sqlite).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(pb::ListKeysRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse()?,
    );
    client.list_keys(request).await?;
    drop(client);

    // Shutting the provider down flushes the batch to the collector.
    tokio::task::spawn_blocking(move || drop(telemetry)).await?;
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(span) = spans.recv().await {
            if span.name == "/coffer.keys.v1.Keys/ListKeys" {
                return Some(span);
            }
        }
        None
    })
    .await?;
    let span = found.ok_or_else(|| anyhow::anyhow!("the collector received no ListKeys span"))?;
    assert_eq!(hex(&span.trace_id), trace_id);
    assert_eq!(hex(&span.parent_span_id), caller_span);
    Ok(())
}
