//! Serving a set of services on one mTLS address, with grpc.health.v1 and
//! reflection (v1 and v1alpha) beside them, health also on a plaintext admin
//! port for Kubernetes probes, and a graceful shutdown that reports
//! NOT_SERVING first and then drains the calls in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::audit::AuditSink;
use crate::audit::outbox::SqlOutbox;
use crate::call::{AuditedService, CallLayer, CallSettings, ServiceCatalog};
use crate::tls::{ServerTls, tls_incoming};

/// Streams one HTTP/2 connection may have open at once: as many as the
/// default `limits.max_concurrent_requests` of the whole server. Left unset,
/// tonic would tell hyper "no limit", and also lift h2's cap on streams the
/// server resets ([`MAX_LOCAL_RESET_STREAMS`]).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Streams the server may reset on one connection before it sends GOAWAY:
/// h2's own default, which guards against reset floods (RUSTSEC-2024-0003).
const MAX_LOCAL_RESET_STREAMS: usize = 1024;

/// How long, past a call's deadline, a connection asked to go away may
/// stay open for the calls still on it: their commit (5 s at most) and
/// answer.
const CONNECTION_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// The admin port is plaintext and unauthenticated. A peer has this long to
/// send its first bytes, and as on the mTLS port ([`crate::tls`]'s
/// handshakes) at most 1,024 connections wait for them at once, and once
/// more than 256 do, one host may hold no more than 128: silent
/// connections cannot pile up, and one host's cannot keep the kubelet's
/// probes out.
const ADMIN_FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// An admin connection is closed, streams and all, after this long: a
/// probe's connection lasts milliseconds, and a health `Watch` reconnects.
const ADMIN_CONNECTION_AGE: Duration = Duration::from_secs(5 * 60);
/// How long the admin port may take to close once the main port has (or
/// the grace has passed), at least.
const ADMIN_SHUTDOWN_WAIT: Duration = Duration::from_secs(1);
/// Connections open at most on the admin port (see [`admin_incoming`]).
const ADMIN_CONNECTIONS: usize = 512;
/// Streams one admin connection may have open at once.
const ADMIN_STREAMS_PER_CONNECTION: u32 = 16;

/// One service ready to be served: how its calls are audited, the encoded
/// descriptor set reflection serves for it, and how to add its routes given
/// the maximum message size.
pub struct ServiceRegistration {
    /// How the service's calls are audited; `None` only for the load
    /// generator's echo service, which is not an API.
    pub catalog: Option<ServiceCatalog>,
    pub descriptor_set: &'static [u8],
    pub install: InstallRoutes,
    /// Where this service's events go, when not the server's sink (the
    /// audit service stores its own straight away).
    pub audit_sink: Option<Arc<dyn AuditSink>>,
    /// The outbox its state changes write their events to.
    pub outbox: Option<Arc<SqlOutbox>>,
}

/// Adds a service's routes, given the maximum message size.
pub type InstallRoutes = Box<dyn FnOnce(&mut RoutesBuilder, usize) + Send>;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("cannot read the bound address: {0}")]
    Address(std::io::Error),
}

pub struct ServerParams {
    /// The mTLS listener, already bound (tests bind `127.0.0.1:0` first).
    pub listener: TcpListener,
    /// The plaintext health-only listener, if any.
    pub admin_listener: Option<TcpListener>,
    /// The statuses this server reports into and answers from. The servers
    /// of one process share them, so the admin port (on one of them)
    /// answers for every service the process serves. `None`: its own.
    pub health: Option<HealthReporter>,
    pub tls: Arc<ServerTls>,
    pub call: CallSettings,
    pub max_message_bytes: usize,
    pub shutdown_grace: Duration,
    /// How long a client connection is kept before it is asked to
    /// reconnect (`limits.max_connection_age_ms`).
    pub max_connection_age: Duration,
    pub services: Vec<ServiceRegistration>,
    /// Where events go, unless a registration says otherwise. Its health
    /// (the audit service being reachable) is the server's health.
    pub audit_sink: Arc<dyn AuditSink>,
    pub authorizer: Arc<crate::authz::Authorizer>,
}

/// A server that is accepting calls.
pub struct RunningServer {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    health: HealthReporter,
    call_layer: CallLayer,
    grpc_services: Vec<&'static str>,
    shutdown_grace: Duration,
    stop_senders: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    audit_health: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RunningServer")
            .field("local_addr", &self.local_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

fn stop_signal() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (sender, receiver) = oneshot::channel::<()>();
    (sender, async move {
        // A dropped sender also means stop.
        let _stopped = receiver.await;
    })
}

pub async fn start(params: ServerParams) -> Result<RunningServer, ServerError> {
    let local_addr = params.listener.local_addr().map_err(ServerError::Address)?;
    let health = params.health.unwrap_or_default();
    let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));

    let mut descriptor_sets: Vec<&'static [u8]> = vec![tonic_health::pb::FILE_DESCRIPTOR_SET];
    let mut routes = RoutesBuilder::default();
    let mut catalogs = Vec::new();
    let mut grpc_services = Vec::new();
    for service in params.services {
        if !descriptor_sets
            .iter()
            .any(|known| std::ptr::eq(*known, service.descriptor_set))
        {
            descriptor_sets.push(service.descriptor_set);
        }
        if let Some(catalog) = service.catalog {
            grpc_services.push(catalog.grpc_service);
            catalogs.push(AuditedService {
                catalog,
                sink: service
                    .audit_sink
                    .unwrap_or_else(|| params.audit_sink.clone()),
                outbox: service.outbox,
            });
        }
        (service.install)(&mut routes, params.max_message_bytes);
    }
    // Both reflection versions advertise both reflection services, so a
    // client speaking either one discovers everything.
    descriptor_sets.push(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET);
    descriptor_sets.push(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    let reflection_builder = || {
        descriptor_sets.iter().fold(
            tonic_reflection::server::Builder::configure().include_reflection_service(false),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
    };
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|error| ServerError::Reflection(error.to_string()))?;
    let reflection_v1 = reflection_builder()
        .build_v1()
        .map_err(|error| ServerError::Reflection(error.to_string()))?;
    routes
        .add_service(health_service.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    health.set_service_status("", ServingStatus::Serving).await;
    for name in &grpc_services {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }

    let call_layer = CallLayer::new(catalogs, params.call.clone(), params.authorizer);
    let audit_health = params.audit_sink.health().map(|watch| {
        tokio::spawn(follow_audit_health(
            watch,
            health.clone(),
            grpc_services.clone(),
        ))
    });
    let incoming = tls_incoming(
        params.listener,
        params.tls,
        params.call.trust_domain.clone(),
        params.max_connection_age,
        params.call.request_timeout + CONNECTION_CLOSE_GRACE,
    );
    let (stop_sender, stop) = stop_signal();
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // A connection is asked to go away (GOAWAY) after
        // `max_connection_age` (an hour unless configured otherwise; its
        // calls in flight finish, and an open Subscribe ends by itself), so
        // that a client certificate's CA leaving the trust bundle reaches
        // every client, not only new connections. Past the grace (a call's
        // longest run, with its commit) it is closed whatever is open: by
        // the connection itself (`TlsConnection`), as tonic given a grace
        // would close it then without asking it to go away first.
        .max_connection_age(params.max_connection_age)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_RESET_STREAMS))
        // Large enough for a whole audit export (hundreds of events) without
        // waiting for window updates.
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(8 * 1024 * 1024))
        .layer(call_layer.clone())
        .add_routes(routes.routes());
    let main_task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop));
    let mut stop_senders = vec![stop_sender];
    let mut tasks = vec![main_task];

    let mut admin_addr = None;
    if let Some(admin_listener) = params.admin_listener {
        admin_addr = Some(admin_listener.local_addr().map_err(ServerError::Address)?);
        let (admin_stop_sender, admin_stop) = stop_signal();
        let admin_incoming = admin_incoming(admin_listener);
        let admin = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .max_concurrent_streams(ADMIN_STREAMS_PER_CONNECTION)
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_RESET_STREAMS))
            // With a grace set, tonic closes a connection outright once
            // the age and the grace have passed (it sends no GOAWAY first).
            .max_connection_age(ADMIN_CONNECTION_AGE)
            .max_connection_age_grace(Duration::ZERO)
            .add_service(health_service)
            .serve_with_incoming_shutdown(admin_incoming, admin_stop);
        tasks.push(tokio::spawn(admin));
        stop_senders.push(admin_stop_sender);
    }

    Ok(RunningServer {
        local_addr,
        admin_addr,
        health,
        call_layer,
        grpc_services,
        shutdown_grace: params.shutdown_grace,
        stop_senders,
        tasks,
        audit_health,
    })
}

/// Connections to the admin port, each yielded once its client has sent
/// something: one that sends nothing within [`ADMIN_FIRST_BYTES_TIMEOUT`] is
/// closed. Waiting connections are bounded as TLS handshakes are
/// ([`crate::tls::bounded_incoming`]), and open ones too (a peer that sent
/// a byte and no more holds its connection until [`ADMIN_CONNECTION_AGE`]):
/// [`ADMIN_CONNECTIONS`] at most, and once more than a quarter of that are
/// open, an eighth from one host. Stops when the returned stream is dropped.
fn admin_incoming(
    listener: TcpListener,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<crate::tls::Counted<tokio::net::TcpStream>, std::io::Error>,
> {
    let open = crate::tls::LiveConnections::new(
        ADMIN_CONNECTIONS,
        ADMIN_CONNECTIONS / 4,
        ADMIN_CONNECTIONS / 8,
    );
    crate::tls::bounded_incoming(listener, "silent admin connections", move |tcp, peer| {
        let open = open.clone();
        async move {
            let mut first = [0u8; 1];
            let spoke = tokio::time::timeout(ADMIN_FIRST_BYTES_TIMEOUT, tcp.peek(&mut first))
                .await
                .is_ok_and(|peeked| peeked.is_ok_and(|bytes| bytes > 0));
            if !spoke {
                return None;
            }
            let counted = open.count(tcp, peer.ip());
            if counted.is_none() {
                tracing::debug!(%peer, "too many admin connections open; connection closed");
            }
            counted
        }
    })
}

/// NOT_SERVING while the audit service is unreachable past the deadline
/// (`required` mode cannot answer data-plane calls then), SERVING again
/// once it is back.
async fn follow_audit_health(
    mut watch: tokio::sync::watch::Receiver<bool>,
    health: HealthReporter,
    services: Vec<&'static str>,
) {
    loop {
        let reachable = *watch.borrow_and_update();
        let status = if reachable {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        for name in &services {
            health.set_service_status(*name, status).await;
        }
        if watch.changed().await.is_err() {
            return;
        }
    }
}

impl RunningServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// API calls in progress right now.
    pub fn in_flight_calls(&self) -> usize {
        self.call_layer.in_flight()
    }

    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// Reports NOT_SERVING, stops accepting, and waits (up to the grace
    /// period) for the calls in flight to finish, those whose callers went
    /// away included. The admin port keeps answering health checks
    /// (NOT_SERVING) until the drain is over.
    pub async fn shutdown(self) {
        if let Some(follower) = &self.audit_health {
            follower.abort();
        }
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for name in &self.grpc_services {
            self.health
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        let mut stop_senders = self.stop_senders.into_iter();
        let mut tasks = self.tasks.into_iter();
        let main_stop = stop_senders.next();
        let main_task = tasks.next();
        if let Some(sender) = main_stop {
            let _already_stopped = sender.send(());
        }
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        if let Some(mut task) = main_task {
            let drained = tokio::time::timeout_at(deadline, &mut task).await;
            match drained {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::error!(%error, "server ended with an error"),
                Ok(Err(error)) => tracing::error!(%error, "server task failed"),
                Err(_) => {
                    tracing::warn!(grace = ?self.shutdown_grace, "calls still in flight after the grace period");
                    task.abort();
                }
            }
        }
        // Calls in their own task outlive a connection that closed: they
        // end, and are audited, within the same grace period.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !self.call_layer.detached_calls_ended(left).await {
            tracing::warn!(grace = ?self.shutdown_grace, "calls whose callers went away still run after the grace period");
        }
        for sender in stop_senders {
            let _already_stopped = sender.send(());
        }
        // The admin port serves health only; a connection left on it (an
        // open `Watch`, a peer that never finished its preface) does not
        // hold up the shutdown, and what follows it (the audit exporter's
        // last flush) past the grace.
        let admin_deadline = deadline.max(tokio::time::Instant::now() + ADMIN_SHUTDOWN_WAIT);
        for mut task in tasks {
            match tokio::time::timeout_at(admin_deadline, &mut task).await {
                Ok(Ok(Err(error))) => tracing::error!(%error, "admin server ended with an error"),
                Err(_) => task.abort(),
                Ok(_) => {}
            }
        }
    }
}
