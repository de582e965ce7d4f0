//! The layer every API call passes through, in this order:
//!
//! 1. identity: the peer certificate's principal; a Coffer service may name
//!    the caller it acts for in `x-coffer-forwarded-for`, which is honoured
//!    only when the peer *is* a service and removed from every request;
//! 2. trace context from `traceparent`, or a new trace;
//! 3. the per-call deadline: the configured limit or the caller's
//!    `grpc-timeout`, whichever is shorter (DEADLINE_EXCEEDED);
//! 4. the concurrency limit, shedding excess calls with RESOURCE_EXHAUSTED;
//! 5. the handler, which reads its [`CallContext`] from the request and
//!    asks for an authorization decision ([`crate::authz`]); a handler that
//!    answers OK without one gets its answer replaced by InternalFailure;
//! 6. exactly one audit event, whatever happened above.
//!
//! Paths that are not API calls (health, reflection) pass straight through.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tokio::sync::Semaphore;
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::arn::Location;
use crate::audit::outbox::{OutboxSlot, SqlOutbox};
use crate::audit::{
    AuditEvent, AuditRecorder, AuditSink, CallCounter, Delivery, EventCategory, RpcKind,
    UserIdentity,
};
use crate::authz::{Authorizer, Caller, DecisionMark};
use crate::config::AuditMode;
use crate::error::{ApiError, ErrorCode, exception_for_code};
use crate::identity::{Principal, PrincipalKind, principal_from_spiffe_id};
use crate::service_prefix;
use crate::tls::PeerInfo;
use crate::trace::{TRACEPARENT_HEADER, TraceContext};

/// The caller a Coffer service acts for (its SPIFFE id).
pub const FORWARDED_FOR_HEADER: &str = "x-coffer-forwarded-for";
/// The original caller's address, as seen by the forwarding service.
pub const FORWARDED_SOURCE_IP_HEADER: &str = "x-coffer-forwarded-source-ip";
/// Returned on every API response.
pub const REQUEST_ID_HEADER: &str = "x-coffer-request-id";

const MAX_USER_AGENT_LEN: usize = 256;
/// How much of an operation's name an event keeps: all of any real one
/// (AWS's longest are under 50 characters), not all of whatever a caller
/// puts in a path.
const MAX_OPERATION_NAME_CHARS: usize = 128;

/// How long a call past its deadline may still run once it has begun
/// committing a change (its outbox row, a transaction's last write, is
/// written). Stopped then, the call would be recorded as failed whether or
/// not its change had committed.
const COMMIT_GRACE: Duration = Duration::from_secs(5);

/// How one gRPC service's calls are audited.
#[derive(Clone)]
pub struct ServiceCatalog {
    /// Fully qualified gRPC service name, e.g. `coffer.keys.v1.Keys`.
    pub grpc_service: &'static str,
    /// Short service name, e.g. `keys`.
    pub service_name: &'static str,
    /// Read-only flag and category of each RPC; `None` for unknown methods.
    pub rpc_kind: fn(&str) -> Option<RpcKind>,
}

/// Who is calling, and the handles a handler needs. Inserted into every API
/// request's extensions by the call layer.
#[derive(Debug, Clone)]
pub struct CallContext {
    principal: Arc<Principal>,
    invoked_by: Option<Arc<Principal>>,
    source_ip: IpAddr,
    request_id: Arc<str>,
    trace: TraceContext,
    audit: AuditRecorder,
    error_domain: Arc<str>,
    authorizer: Arc<Authorizer>,
    decision: DecisionMark,
}

impl CallContext {
    /// The context the call layer attached. Its absence is a wiring fault.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, tonic::Status> {
        request.extensions().get::<Self>().cloned().ok_or_else(|| {
            tracing::error!("api call reached a handler without a call context");
            ApiError::internal().into_status("coffer")
        })
    }

    /// The principal the call is made for (the forwarded caller when a
    /// service forwards one).
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The Coffer service that made the call on the principal's behalf.
    pub fn invoked_by(&self) -> Option<&Principal> {
        self.invoked_by.as_deref()
    }

    pub fn source_ip(&self) -> IpAddr {
        self.source_ip
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    pub fn trace(&self) -> TraceContext {
        self.trace
    }

    pub fn audit(&self) -> &AuditRecorder {
        &self.audit
    }

    /// The caller as authorization sees it; `None` when the principal has
    /// no account to act in (a Coffer service that forwarded nobody).
    pub fn caller(&self) -> Option<Caller> {
        Caller::new(
            &self.principal,
            self.invoked_by.as_deref(),
            self.source_ip,
            self.authorizer.clone(),
            self.decision.clone(),
            Some(self.audit.clone()),
        )
    }

    /// A context for unit tests of code that acts on a caller's behalf.
    #[cfg(test)]
    pub(crate) fn for_tests(principal: Principal, trace: TraceContext) -> Self {
        Self {
            principal: Arc::new(principal),
            invoked_by: None,
            source_ip: IpAddr::from([10, 1, 2, 3]),
            request_id: Arc::from("request-1"),
            trace,
            audit: AuditRecorder::default(),
            error_domain: Arc::from("kms.coffer.internal"),
            authorizer: Arc::new(Authorizer::new(
                Location {
                    partition: "coffer".into(),
                    region: "eu-west-1".into(),
                    dns_suffix: "coffer.internal".into(),
                },
                Arc::new(crate::authz::IdentityPolicies::new(Vec::new())),
                Arc::new(crate::clock::SystemClock),
            )),
            decision: DecisionMark::default(),
        }
    }

    /// Records the error on the call's audit event and renders it.
    pub fn fail(&self, error: ApiError) -> tonic::Status {
        self.audit.error(error.exception, &error.message);
        error.into_status(&self.error_domain)
    }

    /// `error` as this service answers it, without recording it in the
    /// call's event: for a status a stream ends with after the call.
    pub fn status_of(&self, error: ApiError) -> tonic::Status {
        error.into_status(&self.error_domain)
    }

    /// Answers `shown` (the same answer a missing resource gets) while the
    /// audit event records what really happened (`actual`, a denial).
    pub fn fail_concealed(&self, shown: ApiError, actual: &ApiError) -> tonic::Status {
        self.audit.error(actual.exception, &actual.message);
        shown.into_status(&self.error_domain)
    }
}

/// Settings of the call layer.
#[derive(Clone)]
pub struct CallSettings {
    pub location: Location,
    pub trust_domain: String,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub audit_mode: AuditMode,
}

/// How one service's calls are audited.
pub struct AuditedService {
    pub catalog: ServiceCatalog,
    /// Where its events go.
    pub sink: Arc<dyn AuditSink>,
    /// Its outbox, when its state changes are audited through one
    /// (`required` mode).
    pub outbox: Option<Arc<SqlOutbox>>,
}

struct CatalogEntry {
    catalog: ServiceCatalog,
    event_source: Arc<str>,
    sink: Arc<dyn AuditSink>,
    /// The sink's health (`false`: the audit service is unreachable).
    health: Option<tokio::sync::watch::Receiver<bool>>,
    outbox: Option<Arc<SqlOutbox>>,
}

impl CatalogEntry {
    fn audit_unreachable(&self) -> bool {
        self.health.as_ref().is_some_and(|health| !*health.borrow())
    }
}

struct Shared {
    catalogs: Vec<CatalogEntry>,
    settings: CallSettings,
    permits: Arc<Semaphore>,
    authorizer: Arc<Authorizer>,
    /// Calls running in their own task, to their end and their event,
    /// whether or not their caller still waits: a shutdown waits for them.
    detached: tokio::sync::watch::Sender<usize>,
}

/// Counts one detached call while it runs.
struct Detached(Arc<Shared>);

impl Detached {
    fn start(shared: &Arc<Shared>) -> Self {
        shared.detached.send_modify(|running| *running += 1);
        Self(shared.clone())
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        self.0.detached.send_modify(|running| *running -= 1);
    }
}

impl Shared {
    fn catalog_for<'p>(&self, path: &'p str) -> Option<(&CatalogEntry, &'p str)> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        self.catalogs
            .iter()
            .find(|entry| entry.catalog.grpc_service == service)
            .map(|entry| (entry, method))
    }
}

/// The tower layer; see the module documentation.
#[derive(Clone)]
pub struct CallLayer {
    shared: Arc<Shared>,
}

impl CallLayer {
    pub fn new(
        services: Vec<AuditedService>,
        settings: CallSettings,
        authorizer: Arc<Authorizer>,
    ) -> Self {
        let catalogs = services
            .into_iter()
            .map(|service| CatalogEntry {
                event_source: Arc::from(
                    settings
                        .location
                        .event_source(service_prefix(service.catalog.service_name)),
                ),
                catalog: service.catalog,
                health: service.sink.health(),
                sink: service.sink,
                outbox: service.outbox,
            })
            .collect();
        let permits = Arc::new(Semaphore::new(settings.max_concurrent_requests));
        Self {
            shared: Arc::new(Shared {
                catalogs,
                settings,
                permits,
                authorizer,
                detached: tokio::sync::watch::Sender::new(0),
            }),
        }
    }
}

impl CallLayer {
    /// API calls currently holding a concurrency permit.
    pub fn in_flight(&self) -> usize {
        self.shared.settings.max_concurrent_requests - self.shared.permits.available_permits()
    }

    /// Waits, up to `within`, until no call runs in its own task; whether
    /// none does. A call whose caller gave up (or whose connection closed)
    /// still runs there, so a server that stopped serving has not yet
    /// finished its calls, nor emitted their events.
    pub async fn detached_calls_ended(&self, within: Duration) -> bool {
        let mut running = self.shared.detached.subscribe();
        tokio::time::timeout(within, running.wait_for(|running| *running == 0))
            .await
            .is_ok_and(|ended| ended.is_ok())
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallService<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for CallService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone that was polled ready is the one that serves this call.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let shared = self.shared.clone();
        // The call's deadline counts from here, before tonic's own timer
        // for the caller's `grpc-timeout` starts (it does once this returns,
        // and it polls this future first): the call layer's deadline comes
        // first, so the call ends answering, and audited as,
        // RequestTimeoutException rather than being dropped by tonic.
        let arrived = tokio::time::Instant::now();
        let catalog = shared.catalog_for(request.uri().path());
        // Every random id a call of ours needs, from one call to the DRBG.
        let ids = catalog.is_some().then(CallIds::generate);
        // Calls that may change state run in their own task: a client that
        // cancels or disconnects drops only the wait below, never the call,
        // so the call still ends (or meets its deadline) and is audited with
        // its real outcome. Data-plane calls change nothing, so they run in
        // the stream's task (a spawn and a cross-task wake-up less per
        // call, about a sixth of Encrypt's cost); one abandoned midway is
        // audited by `CancelGuard` as RequestCanceledException.
        let inline = catalog
            .and_then(|(entry, method)| (entry.catalog.rpc_kind)(method))
            .is_some_and(|kind| kind.category == EventCategory::Data);
        if inline {
            return Box::pin(handle_call(shared, inner, request, arrived, ids));
        }
        // Past the caller's own deadline the wait ends here, answering
        // RequestTimeoutException, even while the call itself goes on (a
        // change committing, see COMMIT_GRACE); tonic's timer for
        // `grpc-timeout` would otherwise answer first, CANCELLED with no
        // ErrorInfo. It starts after this one, and polls this future first.
        let past_the_deadline = catalog
            .zip(ids.as_ref())
            .zip(parse_grpc_timeout(request.headers()))
            .map(|(((entry, _), ids), asked)| {
                (arrived + asked, entry.event_source.clone(), ids.request_id)
            });
        let detached = Detached::start(&shared);
        let call = tokio::spawn(async move {
            let _detached = detached;
            handle_call(shared, inner, request, arrived, ids).await
        });
        Box::pin(async move {
            let joined = match past_the_deadline {
                None => call.await,
                Some((deadline_at, domain, request_id)) => {
                    match tokio::time::timeout_at(deadline_at, call).await {
                        Ok(joined) => joined,
                        Err(_elapsed) => {
                            let mut answer = ApiError::deadline_exceeded()
                                .into_status(&domain)
                                .into_http::<Body>();
                            if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
                                answer.headers_mut().insert(REQUEST_ID_HEADER, value);
                            }
                            return Ok(answer);
                        }
                    }
                }
            };
            match joined {
                Ok(outcome) => outcome,
                Err(join_error) => {
                    tracing::error!(error = %join_error, "api call task failed");
                    Ok(ApiError::internal()
                        .into_status("coffer")
                        .into_http::<Body>())
                }
            }
        })
    }
}

/// The random identifiers of one call.
struct CallIds {
    request_id: uuid::Uuid,
    event_id: uuid::Uuid,
    /// The server span's id.
    span_id: [u8; 8],
    /// The trace to use when the caller sent none.
    root_trace: TraceContext,
}

impl CallIds {
    fn generate() -> Self {
        let bytes: [u8; 64] = crate::random_id_bytes();
        let take16 = |offset: usize| -> [u8; 16] {
            bytes
                .get(offset..offset + 16)
                .and_then(|slice| slice.try_into().ok())
                .unwrap_or([1; 16])
        };
        let take8 = |offset: usize| -> [u8; 8] {
            bytes
                .get(offset..offset + 8)
                .and_then(|slice| slice.try_into().ok())
                .unwrap_or([1; 8])
        };
        Self {
            request_id: uuid::Builder::from_random_bytes(take16(0)).into_uuid(),
            event_id: crate::audit::event_id_from(
                crate::clock::Clock::now_millis(&crate::clock::SystemClock),
                &take16(16)[..10].try_into().unwrap_or([1; 10]),
            ),
            span_id: take8(32),
            root_trace: TraceContext {
                trace_id: take16(40),
                span_id: take8(56),
                sampled: true,
            },
        }
    }
}

/// The identity a call runs as.
struct CallIdentity {
    principal: Arc<Principal>,
    invoked_by: Option<Arc<Principal>>,
    source_ip: IpAddr,
}

fn resolve_identity(
    peer: Option<&PeerInfo>,
    headers: &HeaderMap,
    trust_domain: &str,
) -> Result<CallIdentity, ApiError> {
    let peer =
        peer.ok_or_else(|| ApiError::unauthenticated("no client certificate was presented"))?;
    if peer.certificate_expired() {
        return Err(ApiError::unauthenticated(
            "the client certificate of this connection has expired; reconnect with a valid one",
        ));
    }
    let direct = peer
        .identity
        .clone()
        .map_err(|error| ApiError::unauthenticated(error.to_string()))?;
    let forwarded = headers.get(FORWARDED_FOR_HEADER);
    let may_forward = direct.is_service() && FORWARDING_SERVICES.contains(&direct.name());
    let Some(forwarded) = forwarded.filter(|_| may_forward) else {
        // An ordinary caller's forwarding headers are ignored, never trusted;
        // so are those of a service that acts for no caller (audit).
        return Ok(CallIdentity {
            principal: direct,
            invoked_by: None,
            source_ip: peer.remote_addr.ip(),
        });
    };
    let forwarded_principal = forwarded
        .to_str()
        .ok()
        .and_then(|text| principal_from_spiffe_id(text, trust_domain).ok())
        .filter(|principal| !principal.is_service())
        .ok_or_else(|| ApiError::unauthenticated("the forwarded caller identity is malformed"))?;
    // The caller's address, never the forwarding service's own: that would
    // put an internal address in `aws:SourceIp` and `sourceIPAddress`.
    let source_ip = headers
        .get(FORWARDED_SOURCE_IP_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            ApiError::unauthenticated(
                "the forwarded caller's source IP address is missing or malformed",
            )
        })?;
    Ok(CallIdentity {
        principal: Arc::new(forwarded_principal),
        invoked_by: Some(direct),
        source_ip,
    })
}

/// The services that call others on their callers' behalf (as Secrets
/// Manager, Parameter Store and ACM call KMS): only their forwarding headers
/// are honoured. The audit service acts for no caller, and the keys service
/// calls no other for one.
const FORWARDING_SERVICES: [&str; 3] = ["secrets", "parameters", "certificates"];

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// The refusal of a request tonic turned away before its handler saw it,
/// with the code and exception any other refusal has (and so the ErrorInfo
/// that names the exception):
/// - an over-size message: tonic answers OUT_OF_RANGE; the gRPC
///   specification (and Coffer's closed set of codes) says
///   RESOURCE_EXHAUSTED, and AWS names it RequestEntityTooLargeException;
/// - a request that is not one valid protobuf message (a string field that
///   is not UTF-8, a field or frame cut short, no message at all, a bad
///   compressed-flag): tonic answers INTERNAL, as if the server had failed,
///   where AWS answers a body it cannot read with SerializationException,
///   the caller's fault;
/// - an operation the service does not have (UnknownOperationException) or
///   a compressed message (Coffer accepts none): UNIMPLEMENTED, gRPC's code
///   for both, which tonic gives without saying which.
fn refused_before_the_handler(
    code: tonic::Code,
    response: &Response<Body>,
    operation: &str,
) -> Option<ApiError> {
    /// How prost's decoding errors begin (tonic-prost passes them on).
    const UNDECODABLE: &str = "failed to decode Protobuf message: ";
    /// How tonic's own complaints about a request's framing begin.
    const MISFRAMED: [&str; 3] = [
        "Missing request message.",
        "Unexpected EOF decoding stream.",
        "protocol error: received message with",
    ];
    /// How tonic refuses a compression it has not been given.
    const COMPRESSED: &str = "Content is compressed with";
    match code {
        tonic::Code::OutOfRange => Some(ApiError::new(
            ErrorCode::ResourceExhausted,
            "RequestEntityTooLargeException",
            "the request message is larger than the server accepts",
        )),
        tonic::Code::Internal => {
            let status = tonic::Status::from_header_map(response.headers())?;
            let message = status.message();
            // What prost says names the message, the field and the fault,
            // never a value; what tonic says of the framing is fixed text.
            let detail = match message.strip_prefix(UNDECODABLE) {
                Some(detail) => detail,
                None if MISFRAMED.iter().any(|fault| message.starts_with(fault)) => message,
                None => return None,
            };
            Some(ApiError::new(
                ErrorCode::InvalidArgument,
                "SerializationException",
                format!(
                    "the request message could not be decoded: {}",
                    detail.chars().take(256).collect::<String>()
                ),
            ))
        }
        tonic::Code::Unimplemented => {
            let compressed = tonic::Status::from_header_map(response.headers())
                .is_some_and(|status| status.message().starts_with(COMPRESSED));
            Some(if compressed {
                ApiError::new(
                    ErrorCode::Unimplemented,
                    "UnsupportedOperationException",
                    "the request message is compressed; send it uncompressed (grpc-encoding identity)",
                )
            } else {
                ApiError::new(
                    ErrorCode::Unimplemented,
                    "UnknownOperationException",
                    format!("{operation} is not an operation of this service"),
                )
            })
        }
        _ => None,
    }
}

/// What a call outside Coffer's API (health, reflection, a service this
/// server does not have) is answered: as it was, but that the router's or
/// a service's bare UNIMPLEMENTED gets the ErrorInfo any other refusal has.
/// No service of Coffer's received it, so none records it.
fn outside_the_api(path: &str, response: Response<Body>) -> Response<Body> {
    let code = grpc_status_of(&response);
    if code != tonic::Code::Unimplemented
        || response.headers().contains_key("grpc-status-details-bin")
    {
        return response;
    }
    let named: String = path.chars().take(MAX_OPERATION_NAME_CHARS).collect();
    match refused_before_the_handler(code, &response, &named) {
        Some(refusal) => refusal.into_status("coffer").into_http::<Body>(),
        None => response,
    }
}

fn grpc_status_of(response: &Response<Body>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

fn user_identity(identity: Option<&CallIdentity>, location: &Location) -> UserIdentity {
    let Some(identity) = identity else {
        return UserIdentity {
            identity_type: "Unknown".into(),
            principal_id: None,
            arn: None,
            account_id: None,
            user_name: None,
            invoked_by: None,
        };
    };
    let principal = &identity.principal;
    let identity_type = match principal.kind() {
        PrincipalKind::User => "IAMUser",
        PrincipalKind::Role => "AssumedRole",
        PrincipalKind::Service => "CofferService",
    };
    UserIdentity {
        identity_type: identity_type.into(),
        principal_id: Some(principal.spiffe_id().to_owned()),
        arn: Some(principal.arn(&location.partition)),
        account_id: principal.account().map(|account| account.to_string()),
        user_name: Some(principal.name().to_owned()),
        invoked_by: identity
            .invoked_by
            .as_ref()
            .map(|service| location.event_source(service_prefix(service.name()))),
    }
}

/// What a call's event holds that is known before its handler runs.
struct EventBase {
    event: AuditEvent,
}

impl EventBase {
    #[allow(clippy::too_many_arguments)]
    fn new(
        location: &Location,
        ids: &CallIds,
        event_source: &Arc<str>,
        event_name: &str,
        rpc_kind: RpcKind,
        identity: Option<&CallIdentity>,
        peer: Option<&PeerInfo>,
        user_agent: &str,
        request_id: &Arc<str>,
        trace: &TraceContext,
    ) -> Self {
        Self {
            event: AuditEvent {
                event_version: "1.11",
                event_id: ids.event_id.to_string(),
                // Set when the call completes (CloudTrail's eventTime).
                event_time: String::new(),
                event_source: event_source.to_string(),
                event_name: event_name.to_owned(),
                event_type: "AwsApiCall",
                aws_region: location.region.clone(),
                source_ip_address: identity
                    .map(|identity| identity.source_ip)
                    .or(peer.map(|peer| peer.remote_addr.ip()))
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
                user_agent: user_agent.to_owned(),
                user_identity: user_identity(identity, location),
                request_parameters: Value::Null,
                response_elements: Value::Null,
                additional_event_data: None,
                error_code: None,
                error_message: None,
                request_id: request_id.to_string(),
                read_only: rpc_kind.read_only,
                resources: Vec::new(),
                management_event: rpc_kind.category == EventCategory::Management,
                event_category: rpc_kind.category,
                recipient_account_id: identity.and_then(|identity| {
                    identity
                        .principal
                        .account()
                        .map(|account| account.to_string())
                }),
                service_event_details: None,
                trace_id: trace.trace_id_hex(),
                answer_withheld: false,
            },
        }
    }

    /// The event of a call that ended: `succeeded`, or failed with `error`.
    fn finish(
        self,
        succeeded: bool,
        error: Option<(String, String)>,
        draft: crate::audit::AuditDraft,
    ) -> AuditEvent {
        let mut event = self.event;
        event.event_time = crate::telemetry::now_rfc3339();
        event.request_parameters = draft.request_parameters.unwrap_or(Value::Null);
        event.response_elements = if succeeded {
            draft.response_elements.unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        if let Some((code, message)) = error {
            event.error_code = Some(code);
            event.error_message = Some(message);
        }
        event.additional_event_data = draft.additional_event_data;
        event.resources = draft.resources;
        event
    }
}

/// Emits the event of a call whose future was dropped before it finished
/// (the client cancelled or went away): exactly one event still, recording
/// that the call did not complete.
struct CancelGuard {
    event: Option<EventBase>,
    recorder: AuditRecorder,
    sink: Arc<dyn AuditSink>,
    /// Dropped past it, the call ran out of time (tonic's own timer for
    /// the caller's `grpc-timeout` ended it) rather than being cancelled.
    deadline_at: tokio::time::Instant,
}

/// The error recorded for a call the client abandoned.
pub const CANCELLED_EXCEPTION: &str = "RequestCanceledException";

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some(base) = self.event.take() else {
            return;
        };
        let error = if std::thread::panicking() {
            // Dropped by a panic, not by the client.
            let internal = ApiError::internal();
            (internal.exception.to_owned(), internal.message)
        } else if tokio::time::Instant::now() >= self.deadline_at {
            let timed_out = ApiError::deadline_exceeded();
            (timed_out.exception.to_owned(), timed_out.message)
        } else {
            (
                CANCELLED_EXCEPTION.to_owned(),
                "the client cancelled the call before it completed".to_owned(),
            )
        };
        let event = base.finish(false, Some(error), self.recorder.take());
        let sink = self.sink.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = sink.emit(&event, Delivery::Background).await {
                        tracing::error!(%error, request_id = %event.request_id, "audit event not delivered");
                    }
                });
            }
            Err(_) => tracing::error!(
                request_id = %event.request_id,
                "a cancelled call's audit event could not be emitted outside a runtime"
            ),
        }
    }
}

/// `request` with its body watched: a client that resets the stream before
/// its message is complete ends the body in an error (CANCELLED for a
/// CANCEL, INTERNAL or UNKNOWN for a reset with another reason), which the
/// recorder notes (only then: the watch costs nothing on a body that ends
/// well).
fn watching_for_reset(request: Request<Body>, recorder: &AuditRecorder) -> Request<Body> {
    let recorder = recorder.clone();
    request.map(|body| {
        Body::new(body.map_err(move |status: tonic::Status| {
            recorder.client_reset();
            status
        }))
    })
}

async fn handle_call<S>(
    shared: Arc<Shared>,
    mut inner: S,
    mut request: Request<Body>,
    arrived: tokio::time::Instant,
    ids: Option<CallIds>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send,
    S::Future: Send,
{
    let path = request.uri().path().to_owned();
    let (Some((entry, method)), Some(ids)) = (shared.catalog_for(&path), ids) else {
        let response = inner.call(request).await?;
        return Ok(outside_the_api(&path, response));
    };
    let rpc_kind = (entry.catalog.rpc_kind)(method).unwrap_or(RpcKind {
        read_only: false,
        category: EventCategory::Management,
    });
    // The operation as the caller named it, which may be one the service
    // does not have: cut to a length no real operation's name comes near.
    let event_name: String = method.chars().take(MAX_OPERATION_NAME_CHARS).collect();
    let event_source = entry.event_source.clone();
    let required = shared.settings.audit_mode == AuditMode::Required;
    // In `required` mode a data-plane answer is released only once its
    // event is acknowledged; a state change's event goes through the outbox.
    let acknowledged = required && rpc_kind.category == EventCategory::Data;
    let outbox = entry
        .outbox
        .clone()
        .filter(|_| required && rpc_kind.category == EventCategory::Management);
    let mut outbox_slot: Option<Arc<OutboxSlot>> = None;

    let request_id: Arc<str> = Arc::from(ids.request_id.to_string());
    let incoming_trace = request
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse_traceparent);
    let parent_trace = incoming_trace.unwrap_or(ids.root_trace);
    let trace = TraceContext {
        span_id: ids.span_id,
        ..parent_trace
    };
    let user_agent: String = request
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(MAX_USER_AGENT_LEN)
        .collect();
    let peer = request.extensions().get::<PeerInfo>().cloned();
    let identity = resolve_identity(
        peer.as_ref(),
        request.headers(),
        &shared.settings.trust_domain,
    );
    request.headers_mut().remove(FORWARDED_FOR_HEADER);
    request.headers_mut().remove(FORWARDED_SOURCE_IP_HEADER);

    // Until its event is handed over, the call counts as running: an export
    // may wait a moment to carry its event too (see `audit::export`).
    let running = entry.sink.calls().map(CallCounter::start);
    let recorder = AuditRecorder::default();
    let decision = DecisionMark::default();
    let span = crate::telemetry::rpc_span(&path, &request_id, &parent_trace);
    let mut prepared: Option<EventBase> = None;
    // The server's limit, until the caller's own is read (once it is
    // authenticated).
    let mut deadline_at = arrived + shared.settings.request_timeout;

    let (mut response, identity) = match identity {
        Err(error) => {
            recorder.error(error.exception, &error.message);
            (error.into_status(&event_source).into_http::<Body>(), None)
        }
        Ok(identity) => {
            let context = CallContext {
                principal: identity.principal.clone(),
                invoked_by: identity.invoked_by.clone(),
                source_ip: identity.source_ip,
                request_id: request_id.clone(),
                trace,
                audit: recorder.clone(),
                error_domain: event_source.clone(),
                authorizer: shared.authorizer.clone(),
                decision: decision.clone(),
            };
            request.extensions_mut().insert(context);
            let deadline = parse_grpc_timeout(request.headers())
                .map_or(shared.settings.request_timeout, |asked| {
                    asked.min(shared.settings.request_timeout)
                });
            deadline_at = arrived + deadline;
            let response = match shared.permits.clone().try_acquire_owned() {
                Err(_) => {
                    let error = ApiError::throttled();
                    recorder.error(error.exception, &error.message);
                    error.into_status(&event_source).into_http::<Body>()
                }
                Ok(_permit) if acknowledged && entry.audit_unreachable() => {
                    // Nothing is answered that could not be audited.
                    let error = audit_unavailable();
                    recorder.error(error.exception, &error.message);
                    error.into_status(&event_source).into_http::<Body>()
                }
                Ok(_permit) => {
                    // Data-plane calls run in the stream's own task; if
                    // the client goes away mid-call this guard still emits
                    // the call's one event (see `CallService::call`).
                    let mut guard = CancelGuard {
                        event: Some(EventBase::new(
                            &shared.settings.location,
                            &ids,
                            &event_source,
                            &event_name,
                            rpc_kind,
                            Some(&identity),
                            peer.as_ref(),
                            &user_agent,
                            &request_id,
                            &trace,
                        )),
                        recorder: recorder.clone(),
                        sink: entry.sink.clone(),
                        deadline_at,
                    };
                    // `None` once the handler panicked: the panic stays
                    // within its call, which answers, and is audited as,
                    // InternalFailure (uncaught, it would reset the stream
                    // with no gRPC status, and the call's event would say the
                    // client had cancelled it).
                    let handling = inner
                        .call(watching_for_reset(request, &recorder))
                        .instrument(span.clone());
                    let handler = async move { crate::background::unwound(handling).await.ok() };
                    let outcome = match (&outbox, &guard.event) {
                        (Some(outbox), Some(base)) => {
                            let slot = Arc::new(OutboxSlot::new(
                                base.event.clone(),
                                recorder.clone(),
                                outbox.boot_id().clone(),
                            ));
                            outbox_slot = Some(slot.clone());
                            let mut scoped = std::pin::pin!(slot.clone().scope(handler));
                            match tokio::time::timeout_at(deadline_at, scoped.as_mut()).await {
                                // Its change is committing, or committed: the
                                // call finishes, late, and its event says
                                // what happened (as CloudTrail records a call
                                // the service completed, whether or not its
                                // answer reached the caller in time).
                                Err(_elapsed) if slot.written() => {
                                    tokio::time::timeout(COMMIT_GRACE, scoped).await
                                }
                                outcome => outcome,
                            }
                        }
                        _ => tokio::time::timeout_at(deadline_at, handler).await,
                    };
                    prepared = guard.event.take();
                    match outcome {
                        Ok(Some(Ok(response))) => response,
                        Ok(Some(Err(error))) => return Err(error),
                        Ok(None) => {
                            tracing::error!(rpc = %path, request_id = %request_id, "the handler panicked; the call answers InternalFailure");
                            let error = ApiError::internal();
                            recorder.error(error.exception, &error.message);
                            error.into_status(&event_source).into_http::<Body>()
                        }
                        Err(_elapsed) => {
                            let error = ApiError::deadline_exceeded();
                            recorder.error(error.exception, &error.message);
                            error.into_status(&event_source).into_http::<Body>()
                        }
                    }
                }
            };
            (response, Some(identity))
        }
    };

    let mut code = grpc_status_of(&response);
    if code == tonic::Code::Ok && !decision.is_set() {
        // Every API call is authorized (DESIGN §2); a handler that succeeded
        // without asking is a defect, and its answer is withheld.
        tracing::error!(rpc = %path, "api call succeeded without an authorization decision");
        let error = ApiError::internal();
        recorder.error(error.exception, &error.message);
        response = error.into_status(&event_source).into_http::<Body>();
        code = tonic::Code::Internal;
    }
    let mut draft = recorder.take();
    if code != tonic::Code::Ok && draft.error.is_none() && draft.client_reset {
        // The client reset the stream before its whole message arrived:
        // tonic answers INTERNAL ("Missing request message."), but the call
        // was abandoned, as one dropped mid-way is (`CancelGuard`).
        draft.error = Some((
            CANCELLED_EXCEPTION.to_owned(),
            "the client cancelled the call before its request arrived".to_owned(),
        ));
    }
    if draft.error.is_none()
        && let Some(refusal) = refused_before_the_handler(code, &response, &event_name)
    {
        code = refusal.code.grpc_code();
        draft.error = Some((refusal.exception.to_owned(), refusal.message.clone()));
        // What tonic says it accepts (the encodings) still holds.
        let accepted = response.headers_mut().remove("grpc-accept-encoding");
        response = refusal.into_status(&event_source).into_http::<Body>();
        if let Some(accepted) = accepted {
            response
                .headers_mut()
                .insert("grpc-accept-encoding", accepted);
        }
    }
    let (error_code, error_message) = match (code, draft.error.take()) {
        (tonic::Code::Ok, _) => (None, None),
        (_, Some((exception, message))) => (Some(exception), Some(message)),
        (code, None) => {
            let message = response
                .headers()
                .get("grpc-message")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .chars()
                .take(512)
                .collect::<String>();
            (Some(exception_for_code(code).to_owned()), Some(message))
        }
    };
    let base = match prepared {
        Some(base) => base,
        None => EventBase::new(
            &shared.settings.location,
            &ids,
            &event_source,
            &event_name,
            rpc_kind,
            identity.as_ref(),
            peer.as_ref(),
            &user_agent,
            &request_id,
            &trace,
        ),
    };
    let mut event = base.finish(
        code == tonic::Code::Ok,
        error_code.zip(error_message),
        draft,
    );
    let delivery = match (&outbox, &outbox_slot) {
        (Some(outbox), Some(slot)) if slot.written() => Delivery::Outboxed(outbox.clone()),
        _ if acknowledged && event.error_code.is_none() => {
            Delivery::Acknowledged { by: deadline_at }
        }
        _ => Delivery::Background,
    };
    // A row written with a change says the call succeeded (it is written
    // before the commit); a call that then failed (its change made, as the
    // first use of a service-managed key is, before what it was asked was
    // refused) has its row say so before it answers, or a crash before its
    // event is delivered would leave the relay to store a success.
    if let (Delivery::Outboxed(outbox), Some(_)) = (&delivery, &event.error_code) {
        let completed = match crate::audit::caps::capped_record(&event) {
            Ok(record) => outbox
                .complete(&event.event_id, &record)
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = completed {
            tracing::warn!(%error, request_id = %request_id, "a failed call's outbox row still says it succeeded");
        }
    }
    let waited = matches!(delivery, Delivery::Acknowledged { .. });
    drop(running);
    match entry.sink.emit(&event, delivery).await {
        Ok(()) => {}
        Err(error) if waited => {
            // The answer is withheld; the event records what the caller got:
            // the call's deadline, when the wait ran into it.
            let unavailable = if tokio::time::Instant::now() >= deadline_at {
                ApiError::deadline_exceeded()
            } else {
                audit_unavailable()
            };
            tracing::warn!(%error, request_id = %request_id, "answer withheld: audit event not acknowledged");
            event.response_elements = Value::Null;
            event.error_code = Some(unavailable.exception.to_owned());
            event.error_message = Some(unavailable.message.clone());
            event.answer_withheld = true;
            response = unavailable.into_status(&event_source).into_http::<Body>();
            if let Err(error) = entry.sink.emit(&event, Delivery::Background).await {
                tracing::error!(%error, request_id = %request_id, "audit event not delivered");
            }
        }
        Err(error) => {
            tracing::error!(%error, request_id = %request_id, "audit event not delivered");
        }
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(response)
}

/// The answer of a data-plane call whose event the audit service could not
/// acknowledge in time.
fn audit_unavailable() -> ApiError {
    ApiError::new(
        crate::error::ErrorCode::Unavailable,
        "ServiceUnavailableException",
        "the audit service is unavailable; the call was not performed or its answer was withheld",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditDeliveryError;

    /// Keeps every event it is handed.
    #[derive(Default)]
    struct Kept(std::sync::Mutex<Vec<AuditEvent>>);

    impl Kept {
        fn errors(&self) -> Vec<(String, Option<String>)> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|event| (event.event_name.clone(), event.error_code.clone()))
                .collect()
        }
    }

    #[async_trait::async_trait]
    impl AuditSink for Kept {
        async fn emit(
            &self,
            event: &AuditEvent,
            _delivery: Delivery,
        ) -> Result<(), AuditDeliveryError> {
            self.0.lock().unwrap().push(event.clone());
            Ok(())
        }

        async fn flush(&self, _timeout: Duration) -> Result<(), AuditDeliveryError> {
            Ok(())
        }
    }

    /// A handler that panics, once it has awaited something, when the
    /// request asks it to, and otherwise answers NOT_FOUND.
    #[derive(Clone)]
    struct Handler;

    impl Service<Request<Body>> for Handler {
        type Response = Response<Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Result<Response<Body>, Self::Error>>;

        fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<Body>) -> Self::Future {
            let panics = request.headers().contains_key("x-test-panic");
            Box::pin(async move {
                tokio::task::yield_now().await;
                assert!(!panics, "a bug in the handler");
                Ok(tonic::Status::not_found("nothing here").into_http())
            })
        }
    }

    fn kind(method: &str) -> Option<RpcKind> {
        let category = match method {
            "Encrypt" => EventCategory::Data,
            _ => EventCategory::Management,
        };
        Some(RpcKind {
            read_only: false,
            category,
        })
    }

    async fn send(service: &mut CallService<Handler>, method: &str, panics: bool) -> String {
        let mut request = Request::builder()
            .uri(format!("/coffer.keys.v1.Keys/{method}"))
            .body(Body::empty())
            .unwrap();
        if panics {
            request
                .headers_mut()
                .insert("x-test-panic", HeaderValue::from_static("1"));
        }
        let alice = principal_from_spiffe_id(
            "spiffe://coffer.test/account/111122223333/user/alice",
            "coffer.test",
        )
        .unwrap();
        request.extensions_mut().insert(PeerInfo {
            remote_addr: "10.1.2.3:40000".parse().unwrap(),
            identity: Ok(Arc::new(alice)),
            not_after: None,
            reconnect_by: None,
        });
        std::future::poll_fn(|context| service.poll_ready(context))
            .await
            .unwrap();
        let response = service.call(request).await.unwrap();
        response.headers()["grpc-status"]
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// A handler's panic is its call's InternalFailure, answered and
    /// audited as such, whether the call ran in the stream's task (a
    /// data-plane call) or in its own; the service goes on serving.
    #[tokio::test]
    async fn a_panicking_handler_fails_its_call_only() {
        let location = Location {
            partition: "coffer".into(),
            region: "eu-west-1".into(),
            dns_suffix: "coffer.internal".into(),
        };
        let kept = Arc::new(Kept::default());
        let layer = CallLayer::new(
            vec![AuditedService {
                catalog: ServiceCatalog {
                    grpc_service: "coffer.keys.v1.Keys",
                    service_name: "keys",
                    rpc_kind: kind,
                },
                sink: kept.clone(),
                outbox: None,
            }],
            CallSettings {
                location: location.clone(),
                trust_domain: "coffer.test".into(),
                request_timeout: Duration::from_secs(10),
                max_concurrent_requests: 8,
                audit_mode: AuditMode::BestEffort,
            },
            Arc::new(Authorizer::new(
                location,
                Arc::new(crate::authz::IdentityPolicies::new(Vec::new())),
                Arc::new(crate::clock::SystemClock),
            )),
        );
        let mut service = layer.layer(Handler);
        let internal = (tonic::Code::Internal as i32).to_string();
        let not_found = (tonic::Code::NotFound as i32).to_string();
        for method in ["Encrypt", "CreateKey"] {
            assert_eq!(send(&mut service, method, true).await, internal, "{method}");
            assert_eq!(
                send(&mut service, method, false).await,
                not_found,
                "{method}"
            );
        }
        assert!(layer.detached_calls_ended(Duration::from_secs(5)).await);
        let internal_failure = Some("InternalFailure".to_owned());
        let not_found_exception = Some(exception_for_code(tonic::Code::NotFound).to_owned());
        assert_eq!(
            kept.errors(),
            [
                ("Encrypt".to_owned(), internal_failure.clone()),
                ("Encrypt".to_owned(), not_found_exception.clone()),
                ("CreateKey".to_owned(), internal_failure),
                ("CreateKey".to_owned(), not_found_exception),
            ]
        );
    }

    #[test]
    fn grpc_timeout_units() {
        let mut headers = HeaderMap::new();
        for (text, expected) in [
            ("5S", Some(Duration::from_secs(5))),
            ("250m", Some(Duration::from_millis(250))),
            ("1H", Some(Duration::from_secs(3600))),
            ("10u", Some(Duration::from_micros(10))),
            ("S", None),
            ("123456789S", None),
            ("5x", None),
        ] {
            headers.insert("grpc-timeout", HeaderValue::from_static(text));
            assert_eq!(parse_grpc_timeout(&headers), expected, "{text}");
        }
    }
}
