//! The audit service (DESIGN §5): CloudTrail-shaped event storage, lookup,
//! live subscriptions and EventBridge-style event rules.
//!
//! - [`ingest`] is the OTLP TraceService every Coffer service exports its
//!   events to, with the trust rules for who may submit them.
//! - [`core`] stores (group commit), publishes and routes events, and
//!   enforces retention.
//! - [`journal`] makes an export durable before it is stored, on SQLite.
//! - [`grpc`] is the `coffer.audit.v1.Audit` service.
//! - [`webhook`] makes signed HTTPS deliveries with retries.
//! - [`store`] keeps events, rules, targets and failed deliveries, on
//!   Postgres or SQLite.
//!
//! The audit service's own API calls are stored straight into its store
//! ([`LocalSink`]), not exported to itself. So are the events of the other
//! services in the same process ([`LocalTransport`]), unless
//! `audit.endpoint` names where they must go.

pub mod core;
pub mod domain;
pub mod export_guard;
pub mod grpc;
pub mod ingest;
pub mod journal;
pub mod store;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use coffer_platform::audit::export::ExportTransport;
use coffer_platform::audit::otlp::EncodedEvent;
use coffer_platform::audit::{
    AuditDeliveryError, AuditEvent, AuditSink, Delivery, EventCategory, RpcKind,
};
use coffer_platform::call::ServiceCatalog;
use coffer_platform::clock::Clock;
use coffer_platform::config::{DatabaseSettings, UntrustedSpans};
use coffer_platform::db::{DbError, DbPool, connect as connect_database};
use coffer_platform::server::ServiceRegistration;
use coffer_proto::audit::v1::audit_server::AuditServer;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;

pub use crate::core::AuditCore;

/// The fully qualified gRPC service name.
pub const GRPC_SERVICE: &str = "coffer.audit.v1.Audit";

/// Read-only flag and event category of each audit RPC.
pub fn rpc_kind(method: &str) -> Option<RpcKind> {
    let read_only = matches!(
        method,
        "LookupEvents"
            | "GetEvent"
            | "Subscribe"
            | "DescribeRule"
            | "ListRules"
            | "ListTargetsByRule"
            | "ListFailedDeliveries"
            | "TestEventPattern"
    );
    Some(RpcKind {
        read_only,
        category: EventCategory::Management,
    })
}

/// How the audit service runs.
pub struct AuditOptions {
    pub retention: Duration,
    pub untrusted_spans: UntrustedSpans,
    /// Where ordinary tracing spans from Coffer services are forwarded.
    pub forward_spans_to: Option<String>,
    /// The CAs webhook servers must chain to.
    pub webhook_roots: rustls::RootCertStore,
    /// Whether webhooks may reach non-public addresses.
    pub webhook_private_endpoints: bool,
    /// The first pause between webhook retries (then doubling).
    pub webhook_first_backoff: Duration,
}

/// The running audit service.
pub struct AuditService {
    pub core: Arc<AuditCore>,
    untrusted_spans: UntrustedSpans,
    forward: Option<ingest::SpanForwarder>,
}

/// How long a start waits for the ingest journal held by another holder
/// (the service it replaces in this process, still shutting down) before
/// it fails.
const JOURNAL_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens (and migrates) the audit database and loads the rules.
pub async fn connect(
    database: &DatabaseSettings,
    clock: Arc<dyn Clock>,
    options: AuditOptions,
) -> Result<(AuditService, DbPool), DbError> {
    let pool = connect_database(database, &store::MIGRATIONS).await?;
    let journal = match &pool {
        DbPool::Sqlite(sqlite) => {
            let path = journal::Journal::path_for(sqlite.connect_options().get_filename());
            Some(
                journal::Journal::open_when_free(&path, JOURNAL_LOCK_PATIENCE)
                    .await
                    .map_err(|error| {
                        DbError::Connect(sqlx::Error::Io(std::io::Error::other(error)))
                    })?,
            )
        }
        DbPool::Postgres(_) => None,
    };
    let store = store::audit_store(pool.clone());
    let dispatcher = Arc::new(webhook::Dispatcher::new(
        options.webhook_roots,
        options.webhook_private_endpoints,
        store.clone(),
        options.webhook_first_backoff,
    ));
    let core = AuditCore::start(store, clock, dispatcher, options.retention, journal);
    if let Err(error) = core.reload_rules().await {
        tracing::error!(%error, "event rules could not be loaded");
    }
    let forward =
        options
            .forward_spans_to
            .and_then(|endpoint| match ingest::SpanForwarder::new(&endpoint) {
                Ok(forwarder) => Some(forwarder),
                Err(error) => {
                    tracing::error!(%error, "audit.forward_spans_to is not a valid endpoint");
                    None
                }
            });
    Ok((
        AuditService {
            core,
            untrusted_spans: options.untrusted_spans,
            forward,
        },
        pool,
    ))
}

/// The audit service's own events, stored straight away.
pub struct LocalSink {
    core: Arc<AuditCore>,
}

impl LocalSink {
    pub fn new(core: Arc<AuditCore>) -> Self {
        Self { core }
    }
}

#[async_trait::async_trait]
impl AuditSink for LocalSink {
    async fn emit(
        &self,
        event: &AuditEvent,
        _delivery: Delivery,
    ) -> Result<(), AuditDeliveryError> {
        let record = serde_json::to_value(event)
            .map_err(|error| AuditDeliveryError::Failed(error.to_string()))?;
        let stored = domain::record::stored_event(record, domain::record::Sender::Service)
            .map_err(|error| AuditDeliveryError::Failed(error.to_string()))?;
        self.core
            .ingest(vec![stored])
            .await
            .map_err(|error| AuditDeliveryError::Failed(error.to_string()))
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), AuditDeliveryError> {
        Ok(())
    }
}

/// Delivers a co-located service's exports straight to this process's
/// audit service, for the exporter (group commit, acknowledgement and
/// retries stay the exporter's).
///
/// Over OTLP, the audit service trusts an export because mutual TLS shows it
/// comes from a Coffer service. Here both ends are the same process, holding
/// the same service identity: a TLS round trip to itself would prove nothing
/// and cost a call about as much as its own work (BENCHMARKS.md, session 10).
/// The records are read exactly as the OTLP endpoint reads trusted ones.
pub struct LocalTransport {
    core: Arc<AuditCore>,
}

impl LocalTransport {
    pub fn new(core: Arc<AuditCore>) -> Self {
        Self { core }
    }
}

#[async_trait::async_trait]
impl ExportTransport for LocalTransport {
    async fn export(&self, events: &[EncodedEvent]) -> Result<(), String> {
        let mut stored = Vec::with_capacity(events.len());
        for event in events {
            match domain::record::stored_event_from_text(
                &event.record,
                domain::record::Sender::Service,
            ) {
                Ok(record) => stored.push(record),
                // Refused again on a retry: logged, never retried, as the
                // OTLP endpoint's partial success is.
                Err(error) => tracing::error!(
                    event_id = %event.event_id,
                    %error,
                    "the audit service refused an audit event"
                ),
            }
        }
        self.core.ingest(stored).await.map_err(|error| {
            tracing::error!(%error, "audit events could not be stored");
            "the audit store is unavailable".to_owned()
        })
    }
}

impl AuditService {
    /// The Audit service and the OTLP TraceService, ready for the server
    /// builder.
    pub fn registration(&self) -> ServiceRegistration {
        let core = self.core.clone();
        let ingest = ingest::OtlpIngest::new(
            self.core.clone(),
            self.untrusted_spans,
            self.forward.clone(),
        );
        ServiceRegistration {
            catalog: Some(ServiceCatalog {
                grpc_service: GRPC_SERVICE,
                service_name: "audit",
                rpc_kind,
            }),
            descriptor_set: coffer_proto::FILE_DESCRIPTOR_SET,
            install: Box::new(move |routes, max_message_bytes| {
                // What callers send is bounded by the setting; what the
                // service answers is not made smaller than its largest
                // answer, or a large stored event could never be read.
                routes.add_service(
                    AuditServer::new(grpc::AuditGrpc::new(core))
                        .max_decoding_message_size(max_message_bytes)
                        .max_encoding_message_size(max_message_bytes.max(grpc::MAX_ANSWER_BYTES)),
                );
                let max_export_bytes = export_guard::MAX_EXPORT_BYTES.max(max_message_bytes);
                routes.add_service(export_guard::ExportGuard::new(
                    TraceServiceServer::new(ingest).max_decoding_message_size(max_export_bytes),
                    max_export_bytes,
                ));
            }),
            audit_sink: Some(Arc::new(LocalSink::new(self.core.clone()))),
            outbox: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;
    use crate::store::{LookupQuery, StoredEvent};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn event(id: &str) -> StoredEvent {
        StoredEvent {
            seq: 0,
            event_id: id.to_owned(),
            event_time_ms: 1_700_000_000_000,
            event_source: "kms.coffer.internal".into(),
            event_name: "Encrypt".into(),
            read_only: false,
            username: Some("alice".into()),
            account_id: Some("111122223333".into()),
            trusted: true,
            corrects: false,
            trace_id: None,
            received_at_ms: 0,
            record: format!(r#"{{"eventID":"{id}","eventName":"Encrypt"}}"#),
            resources: Vec::new(),
        }
    }

    fn options() -> AuditOptions {
        AuditOptions {
            retention: Duration::from_secs(90 * 86_400),
            untrusted_spans: UntrustedSpans::Store,
            forward_spans_to: None,
            webhook_roots: rustls::RootCertStore::empty(),
            webhook_private_endpoints: true,
            webhook_first_backoff: Duration::from_millis(10),
        }
    }

    /// An SQLite audit database `audit.db` in `directory`.
    fn sqlite_database(directory: &std::path::Path) -> DatabaseSettings {
        DatabaseSettings {
            backend: coffer_platform::config::DatabaseBackend::Sqlite,
            url: format!("sqlite://{}", directory.join("audit.db").display()),
            schema: "unused".into(),
            max_connections: 4,
        }
    }

    async fn stored_ids(core: &AuditCore) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        core.settled().await;
        let mut ids: Vec<String> = core
            .store()
            .lookup(&LookupQuery::everything(100))
            .await?
            .into_iter()
            .map(|event| event.event_id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Acknowledged events that were only in the journal when the process
    /// died are stored at the next start, once each, even where the crash
    /// came after the store had them.
    #[tokio::test]
    async fn events_left_in_the_journal_are_stored_at_the_next_start() -> TestResult {
        let directory = tempfile::tempdir()?;
        let database = sqlite_database(directory.path());
        let clock: Arc<dyn Clock> = Arc::new(coffer_platform::clock::SystemClock);
        {
            let (service, pool) = connect(&database, clock.clone(), options()).await?;
            service.core.ingest(vec![event("stored-before")]).await?;
            assert_eq!(stored_ids(&service.core).await?, ["stored-before"]);
            drop(service);
            pool.close().await;
        }
        // What a crash between the append and the indexer leaves: the
        // journal holds an event already stored and two that are not.
        let journal_path = Journal::path_for(&directory.path().join("audit.db"));
        assert_eq!(
            std::fs::metadata(&journal_path)?.len(),
            0,
            "emptied once stored"
        );
        {
            // Free once the stopped service's indexer task has ended.
            let journal = Journal::open_when_free(&journal_path, JOURNAL_LOCK_PATIENCE).await?;
            journal
                .append(vec![event("stored-before"), event("journaled-1")])
                .await?;
            journal.append(vec![event("journaled-2")]).await?;
        }

        let (service, _pool) = connect(&database, clock, options()).await?;
        assert_eq!(
            stored_ids(&service.core).await?,
            ["journaled-1", "journaled-2", "stored-before"]
        );
        assert_eq!(std::fs::metadata(&journal_path)?.len(), 0);
        Ok(())
    }

    /// A clock that panics the first time it is read once armed: a fault
    /// in the middle of the indexer's storing of a batch.
    struct PanicsOnce {
        armed: std::sync::atomic::AtomicBool,
    }

    impl Clock for PanicsOnce {
        fn now(&self) -> std::time::SystemTime {
            if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                panic!("a fault while storing");
            }
            std::time::SystemTime::now()
        }
    }

    /// A panic while the indexer stores a batch neither ends the indexer
    /// nor loses the batch, which was acknowledged: it is stored on the
    /// retry, and what is exported after it is stored too.
    #[tokio::test]
    async fn a_panic_while_storing_journaled_events_loses_nothing() -> TestResult {
        let directory = tempfile::tempdir()?;
        let database = sqlite_database(directory.path());
        let clock = Arc::new(PanicsOnce {
            armed: std::sync::atomic::AtomicBool::new(false),
        });
        let (service, _pool) = connect(&database, clock.clone(), options()).await?;
        service.core.ingest(vec![event("before")]).await?;
        assert_eq!(stored_ids(&service.core).await?, ["before"]);
        clock.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        service.core.ingest(vec![event("during")]).await?;
        assert_eq!(stored_ids(&service.core).await?, ["before", "during"]);
        assert!(
            !clock.armed.load(std::sync::atomic::Ordering::SeqCst),
            "the fault never struck"
        );
        service.core.ingest(vec![event("after")]).await?;
        assert_eq!(
            stored_ids(&service.core).await?,
            ["after", "before", "during"]
        );
        Ok(())
    }

    /// The core puts what the journal takes on the disk by itself, soon
    /// after the answer and without waiting for the indexer.
    #[tokio::test]
    async fn the_journal_is_synced_soon_after_an_export() -> TestResult {
        let directory = tempfile::tempdir()?;
        let database = sqlite_database(directory.path());
        let clock: Arc<dyn Clock> = Arc::new(coffer_platform::clock::SystemClock);
        let (service, _pool) = connect(&database, clock, options()).await?;
        let journal = service.core.journal().ok_or("no journal on SQLite")?;
        service.core.ingest(vec![event("synced-1")]).await?;
        let synced = tokio::time::timeout(Duration::from_secs(5), async {
            while journal.unsynced() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(synced.is_ok(), "the journal was never synced");
        Ok(())
    }

    /// A co-located service's export: every record that reads is stored as
    /// trusted; one that does not is refused alone (logged) and the export
    /// still succeeds, as the OTLP endpoint's partial success does.
    #[tokio::test]
    async fn the_local_transport_stores_trusted_records_and_refuses_unreadable_ones() -> TestResult
    {
        let directory = tempfile::tempdir()?;
        let database = sqlite_database(directory.path());
        let clock: Arc<dyn Clock> = Arc::new(coffer_platform::clock::SystemClock);
        let (service, _pool) = connect(&database, clock, options()).await?;
        let transport = LocalTransport::new(service.core.clone());
        let record = serde_json::json!({
            "eventVersion": "1.11",
            "eventID": "local-1",
            "eventTime": "2026-11-23T08:00:00Z",
            "eventSource": "kms.coffer.internal",
            "eventName": "Encrypt",
            "readOnly": false,
            "userIdentity": {"type": "AssumedRole", "accountId": "111122223333"},
        });
        let encoded = |event_id: &str, record: String| EncodedEvent {
            event_id: event_id.to_owned(),
            event_name: "Encrypt".into(),
            trace_id: String::new(),
            record,
        };
        transport
            .export(&[
                encoded("local-1", record.to_string()),
                encoded("local-2", "not a record".into()),
            ])
            .await?;
        service.core.settled().await;
        let stored = service
            .core
            .store()
            .lookup(&LookupQuery::everything(100))
            .await?;
        let stored: Vec<(&str, bool)> = stored
            .iter()
            .map(|event| (event.event_id.as_str(), event.trusted))
            .collect();
        assert_eq!(stored, [("local-1", true)]);
        Ok(())
    }
}
