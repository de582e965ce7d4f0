//! A guard in front of the OTLP trace service's decoder.
//!
//! An export may be up to [`MAX_EXPORT_BYTES`] on the wire, but what prost
//! builds from it can be far larger: an empty span is 2 bytes on the wire
//! and a few hundred once decoded, so 16 MiB of empty spans would take
//! gigabytes before the handler could count them. The guard reads the
//! export's bytes first and walks their protobuf structure, adding up what
//! each message will take once decoded; an export over
//! [`MAX_DECODED_BYTES`] is refused with INVALID_ARGUMENT without being
//! decoded. The guard allocates nothing per field, only the bytes it was
//! sent.
//!
//! It also looks at who sends before it reads anything: a client that is no
//! Coffer identity is refused unread, and an export from outside Coffer (a
//! principal of an account, whose spans are untrusted events) is held to
//! [`MAX_OUTSIDER_EXPORT_BYTES`], and to [`OUTSIDER_EXPORTS_AT_ONCE`] being
//! received and stored at once, server-wide, of which one account may have
//! [`OUTSIDER_EXPORTS_PER_ACCOUNT`]: what outsiders' exports can hold in
//! memory is bounded, one account's exports that never finish arriving
//! cannot keep every other account's out, and the services' own exports
//! never wait for them.

use std::convert::Infallible;
use std::future::Future;
use std::mem::size_of;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use coffer_platform::arn::AccountId;
use coffer_platform::tls::PeerInfo;
use http_body_util::{BodyExt as _, Full, Limited};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use crate::ingest::{ExportSender, export_sender};

/// Largest OTLP export accepted on the wire: large enough for a batch of
/// events whose attributes are capped only after they arrive.
pub const MAX_EXPORT_BYTES: usize = 16 * 1024 * 1024;
/// Largest an export may be once decoded. Coffer's own exports take about
/// twice their wire size.
pub const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;
/// Largest export accepted on the wire from outside Coffer: the OTLP/gRPC
/// receivers' usual limit (the OpenTelemetry Collector's default).
pub const MAX_OUTSIDER_EXPORT_BYTES: usize = 4 * 1024 * 1024;
/// Largest an export from outside Coffer may be once decoded.
pub const MAX_OUTSIDER_DECODED_BYTES: usize = 16 * 1024 * 1024;
/// Exports from outside Coffer received and stored at once, server-wide.
pub const OUTSIDER_EXPORTS_AT_ONCE: usize = 4;
/// Of [`OUTSIDER_EXPORTS_AT_ONCE`], how many one account's exports may
/// take; one more waits (within [`OUTSIDER_TURN_WAIT`] in all) for one of
/// them to end.
pub const OUTSIDER_EXPORTS_PER_ACCOUNT: usize = 2;
/// How long an outsider's export waits for its turn before it is refused
/// with RESOURCE_EXHAUSTED (exporters retry it).
const OUTSIDER_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long any export's bytes may take to arrive.
const EXPORT_READ_TIME: std::time::Duration = std::time::Duration::from_secs(30);
/// Deeper nesting is refused (prost stops at 100 too).
const MAX_DEPTH: usize = 100;
/// What a string or bytes field may take besides its bytes (a repeated one
/// is a `String` in a `Vec` that may have doubled).
const FIELD_OVERHEAD: usize = 2 * size_of::<String>();

/// The messages of an OTLP trace export that hold other messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Request,
    ResourceSpans,
    Resource,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    EntityRef,
}

impl Shape {
    /// What one message takes once decoded, twice over: a repeated field's
    /// `Vec` may have doubled its capacity.
    fn decoded_size(self) -> usize {
        2 * match self {
            Shape::Request => size_of::<ExportTraceServiceRequest>(),
            Shape::ResourceSpans => size_of::<ResourceSpans>(),
            Shape::Resource => size_of::<Resource>(),
            Shape::ScopeSpans => size_of::<ScopeSpans>(),
            Shape::Scope => size_of::<InstrumentationScope>(),
            Shape::Span => size_of::<Span>(),
            Shape::Event => size_of::<Event>(),
            Shape::Link => size_of::<Link>(),
            Shape::Status => size_of::<Status>(),
            Shape::KeyValue => size_of::<KeyValue>(),
            Shape::AnyValue => size_of::<AnyValue>(),
            Shape::ArrayValue => size_of::<ArrayValue>(),
            Shape::KeyValueList => size_of::<KeyValueList>(),
            Shape::EntityRef => size_of::<EntityRef>(),
        }
    }

    /// The message a length-delimited field holds; `None` for strings and
    /// bytes (and fields prost does not know, which it skips).
    fn field(self, tag: u64) -> Option<Shape> {
        Some(match (self, tag) {
            (Shape::Request, 1) => Shape::ResourceSpans,
            (Shape::ResourceSpans, 1) => Shape::Resource,
            (Shape::ResourceSpans, 2) => Shape::ScopeSpans,
            (Shape::Resource, 1) | (Shape::Scope, 3) | (Shape::Span, 9) => Shape::KeyValue,
            (Shape::Resource, 3) => Shape::EntityRef,
            (Shape::ScopeSpans, 1) => Shape::Scope,
            (Shape::ScopeSpans, 2) => Shape::Span,
            (Shape::Span, 11) => Shape::Event,
            (Shape::Span, 13) => Shape::Link,
            (Shape::Span, 15) => Shape::Status,
            (Shape::Event, 3) | (Shape::Link, 4) | (Shape::KeyValueList, 1) => Shape::KeyValue,
            (Shape::KeyValue, 2) | (Shape::ArrayValue, 1) => Shape::AnyValue,
            (Shape::AnyValue, 5) => Shape::ArrayValue,
            (Shape::AnyValue, 6) => Shape::KeyValueList,
            _ => return None,
        })
    }
}

/// Why an export was refused unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a protobuf message (or nested too deeply).
    Malformed,
    /// It would take more than [`MAX_DECODED_BYTES`] once decoded (than
    /// [`MAX_OUTSIDER_DECODED_BYTES`], from outside Coffer).
    TooLargeDecoded,
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, Refusal> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or(Refusal::Malformed)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Refusal::Malformed)
}

/// What `message` (an ExportTraceServiceRequest) takes once decoded, at
/// most; refused as soon as the sum passes [`MAX_DECODED_BYTES`].
pub fn decoded_estimate(message: &[u8]) -> Result<usize, Refusal> {
    let mut total = message.len();
    walk(message, Shape::Request, 0, &mut total)?;
    Ok(total)
}

/// What the messages of a gRPC request body (each frame a flag byte, a
/// 4-byte length and a message) take once decoded together, at most.
///
/// A unary call keeps its first message while the server decodes, and
/// drops, any that follow it, so every frame counts, not only the first.
/// The walk stops at the first frame the service would refuse without
/// decoding it: a compressed one (the service takes no compression) or
/// one cut short.
pub fn frames_estimate(mut body: &[u8]) -> Result<usize, Refusal> {
    let mut total = 0usize;
    while let Some((&0, rest)) = body.split_first()
        && let Some((length, rest)) = rest.split_first_chunk::<4>()
        && let Ok(length) = usize::try_from(u32::from_be_bytes(*length))
        && let Some((message, rest)) = rest.split_at_checked(length)
    {
        add(&mut total, decoded_estimate(message)?)?;
        body = rest;
    }
    Ok(total)
}

fn walk(bytes: &[u8], shape: Shape, depth: usize, total: &mut usize) -> Result<(), Refusal> {
    if depth > MAX_DEPTH {
        return Err(Refusal::Malformed);
    }
    add(total, shape.decoded_size())?;
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let step = match key & 7 {
            0 => {
                varint(bytes, &mut at)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let length =
                    usize::try_from(varint(bytes, &mut at)?).map_err(|_| Refusal::Malformed)?;
                let end = at.checked_add(length).ok_or(Refusal::Malformed)?;
                let field = bytes.get(at..end).ok_or(Refusal::Malformed)?;
                match shape.field(key >> 3) {
                    Some(inner) => walk(field, inner, depth + 1, total)?,
                    None => add(total, FIELD_OVERHEAD)?,
                }
                length
            }
            _ => return Err(Refusal::Malformed),
        };
        at = at.checked_add(step).ok_or(Refusal::Malformed)?;
        if at > bytes.len() {
            return Err(Refusal::Malformed);
        }
    }
    Ok(())
}

fn add(total: &mut usize, bytes: usize) -> Result<(), Refusal> {
    *total = total.saturating_add(bytes);
    if *total > MAX_DECODED_BYTES {
        return Err(Refusal::TooLargeDecoded);
    }
    Ok(())
}

/// The OTLP trace service behind the guard.
#[derive(Debug, Clone)]
pub struct ExportGuard<S> {
    inner: S,
    /// The largest message read (the service's own decoding limit).
    max_message_bytes: usize,
    /// Turns of outsiders' exports, shared by every clone.
    outsider_turns: Arc<Semaphore>,
    /// The outsiders' exports in progress (waiting for a turn or holding
    /// one), by account.
    accounts: Arc<AccountExports>,
}

impl<S> ExportGuard<S> {
    pub fn new(inner: S, max_message_bytes: usize) -> Self {
        Self {
            inner,
            max_message_bytes,
            outsider_turns: Arc::new(Semaphore::new(OUTSIDER_EXPORTS_AT_ONCE)),
            accounts: Arc::default(),
        }
    }
}

/// The turns of each account with outsiders' exports in progress or
/// waiting.
#[derive(Debug, Default)]
struct AccountExports(std::sync::Mutex<std::collections::HashMap<AccountId, Arc<Semaphore>>>);

/// One of an account's turns, held while its export is in progress.
struct AccountExport {
    accounts: Arc<AccountExports>,
    account: AccountId,
    turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl AccountExports {
    fn turns(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<AccountId, Arc<Semaphore>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One of `account`'s [`OUTSIDER_EXPORTS_PER_ACCOUNT`] turns, once one
    /// is free.
    async fn enter(self: Arc<Self>, account: AccountId) -> Option<AccountExport> {
        let turns = self
            .turns()
            .entry(account.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(OUTSIDER_EXPORTS_PER_ACCOUNT)))
            .clone();
        let turn = turns.acquire_owned().await.ok()?;
        Some(AccountExport {
            accounts: self,
            account,
            turn: Some(turn),
        })
    }
}

impl Drop for AccountExport {
    /// Gives the turn back, and forgets the account once no export of it
    /// holds or waits for one.
    fn drop(&mut self) {
        let mut turns = self.accounts.turns();
        drop(self.turn.take());
        if turns
            .get(&self.account)
            .is_some_and(|turns| Arc::strong_count(turns) == 1)
        {
            turns.remove(&self.account);
        }
    }
}

impl<S: NamedService> NamedService for ExportGuard<S> {
    const NAME: &'static str = S::NAME;
}

type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for ExportGuard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone is the one made ready; `self` keeps a fresh one.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let max_message_bytes = self.max_message_bytes;
        let outsider_turns = self.outsider_turns.clone();
        let accounts = self.accounts.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let outsider = match export_sender(parts.extensions.get::<PeerInfo>()) {
                Ok(ExportSender::Service(_)) => None,
                Ok(ExportSender::Outsider { account, .. }) => Some(account),
                Err(status) => return Ok(status.into_http()),
            };
            let (max_export_bytes, max_decoded_bytes, _turn) = if let Some(account) = outsider {
                let turns = async {
                    let account_turn = accounts.enter(account).await?;
                    let turn = outsider_turns.acquire_owned().await.ok()?;
                    Some((turn, account_turn))
                };
                let Ok(Some(turns)) = tokio::time::timeout(OUTSIDER_TURN_WAIT, turns).await else {
                    return Ok(tonic::Status::resource_exhausted(
                        "too many exports from outside Coffer are being received; retry later",
                    )
                    .into_http());
                };
                (
                    max_message_bytes.min(MAX_OUTSIDER_EXPORT_BYTES),
                    MAX_OUTSIDER_DECODED_BYTES,
                    Some(turns),
                )
            } else {
                (max_message_bytes, MAX_DECODED_BYTES, None)
            };
            // One gRPC frame: a flag byte, a 4-byte length, the message. The
            // answer past the limit is the one the decoder would give.
            let collecting = Limited::new(body, max_export_bytes.saturating_add(5)).collect();
            let collected = match tokio::time::timeout(EXPORT_READ_TIME, collecting).await {
                Ok(Ok(collected)) => collected,
                Ok(Err(_)) => {
                    return Ok(tonic::Status::out_of_range(format!(
                        "an export is at most {max_export_bytes} bytes"
                    ))
                    .into_http());
                }
                Err(_) => {
                    return Ok(tonic::Status::deadline_exceeded(format!(
                        "the export did not arrive within {} s",
                        EXPORT_READ_TIME.as_secs()
                    ))
                    .into_http());
                }
            };
            let bytes = collected.to_bytes();
            let refused = match frames_estimate(&bytes) {
                Ok(estimate) if estimate > max_decoded_bytes => Some(Refusal::TooLargeDecoded),
                Ok(_) => None,
                Err(refusal) => Some(refusal),
            };
            if let Some(refusal) = refused {
                let message = match refusal {
                    Refusal::Malformed => "the export is not a valid OTLP trace export".to_owned(),
                    Refusal::TooLargeDecoded => format!(
                        "the export would take more than {max_decoded_bytes} bytes once decoded; send fewer spans or attributes an export"
                    ),
                };
                return Ok(tonic::Status::invalid_argument(message).into_http());
            }
            inner
                .call(http::Request::from_parts(
                    parts,
                    Body::new(Full::new(bytes)),
                ))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::Message as _;

    fn span_with_record(record: &str) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "Encrypt".into(),
            attributes: vec![KeyValue {
                key: "coffer.audit.record".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(record.into())),
                }),
                ..KeyValue::default()
            }],
            ..Span::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    #[test]
    fn an_ordinary_export_is_estimated_near_its_decoded_size() -> Result<(), Refusal> {
        let record = "x".repeat(1_000);
        let export = request((0..10_000).map(|_| span_with_record(&record)).collect());
        let wire = export.encode_to_vec();
        let estimate = decoded_estimate(&wire)?;
        // At least what the spans and their strings take, and within the
        // bound for a full batch of 1 KB records.
        assert!(
            estimate >= 10_000 * (size_of::<Span>() + 1_000),
            "{estimate}"
        );
        assert!(
            estimate < 3 * wire.len(),
            "{estimate} for {} on the wire",
            wire.len()
        );
        Ok(())
    }

    #[test]
    fn empty_spans_are_refused_long_before_the_wire_limit() {
        // 4 MiB of empty spans: 2 bytes each on the wire, about 2 million.
        let export = request(vec![Span::default(); 2_000_000]);
        let wire = export.encode_to_vec();
        assert!(wire.len() < MAX_EXPORT_BYTES);
        assert_eq!(decoded_estimate(&wire), Err(Refusal::TooLargeDecoded));
    }

    #[test]
    fn deeply_nested_values_and_bad_wire_data_are_malformed() {
        let mut value = AnyValue::default();
        for _ in 0..120 {
            value = AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue {
                    values: vec![value],
                })),
            };
        }
        let mut span = Span::default();
        span.attributes.push(KeyValue {
            key: "deep".into(),
            value: Some(value),
            ..KeyValue::default()
        });
        let wire = request(vec![span]).encode_to_vec();
        assert_eq!(decoded_estimate(&wire), Err(Refusal::Malformed));
        // A length that runs past the end, a varint that never ends, a group.
        assert_eq!(decoded_estimate(&[0x0a, 0x05, 1]), Err(Refusal::Malformed));
        assert_eq!(
            decoded_estimate(&[0x08, 0xff, 0xff]),
            Err(Refusal::Malformed)
        );
        assert_eq!(decoded_estimate(&[0x0b]), Err(Refusal::Malformed));
        assert_eq!(decoded_estimate(&[]), Ok(Shape::Request.decoded_size()));
    }

    /// The service behind the guard in these tests: counts the requests
    /// that reach it.
    #[derive(Clone, Default)]
    struct Counter(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl Service<http::Request<Body>> for Counter {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok(http::Response::new(Body::empty())))
        }
    }

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend_from_slice(
            &u32::try_from(message.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        framed.extend_from_slice(message);
        framed
    }

    /// The gRPC status of the guard's answer to `body`, or None when it
    /// passed the body on.
    async fn guard(body: Vec<u8>) -> (Option<tonic::Code>, usize) {
        let counter = Counter::default();
        let mut guard = ExportGuard::new(counter.clone(), MAX_EXPORT_BYTES);
        let code = guarded(&mut guard, body, Some("spiffe://coffer.test/service/keys")).await;
        (code, counter.0.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// The gRPC status of `guard`'s answer to `body` sent by `sender` (no
    /// client certificate: `None`), or None when it passed the body on.
    /// The connection of a client whose certificate names `spiffe_id`.
    fn peer(spiffe_id: &str) -> PeerInfo {
        PeerInfo {
            remote_addr: ([127, 0, 0, 1], 4000).into(),
            identity: coffer_platform::identity::principal_from_spiffe_id(spiffe_id, "coffer.test")
                .map(Arc::new),
            not_after: None,
            reconnect_by: None,
        }
    }

    async fn guarded(
        guard: &mut ExportGuard<Counter>,
        body: Vec<u8>,
        sender: Option<&str>,
    ) -> Option<tonic::Code> {
        let mut request =
            http::Request::new(Body::new(Full::new(tonic::codegen::Bytes::from(body))));
        if let Some(spiffe_id) = sender {
            request.extensions_mut().insert(peer(spiffe_id));
        }
        let Ok(answer) = guard.call(request).await;
        answer
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<i32>().ok())
            .map(tonic::Code::from)
    }

    const OUTSIDER: &str = "spiffe://coffer.test/account/111122223333/user/app";

    #[tokio::test]
    async fn who_sends_is_known_before_anything_is_read() {
        let counter = Counter::default();
        let mut guard = ExportGuard::new(counter.clone(), MAX_EXPORT_BYTES);
        let plain = frame(&request(vec![span_with_record("{}")]).encode_to_vec());
        let large = frame(&request(vec![span_with_record(&"x".repeat(5 << 20))]).encode_to_vec());
        let calls = || counter.0.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            guarded(&mut guard, plain.clone(), None).await,
            Some(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            guarded(
                &mut guard,
                plain.clone(),
                Some("spiffe://elsewhere.test/service/keys")
            )
            .await,
            Some(tonic::Code::Unauthenticated)
        );
        assert_eq!(calls(), 0);
        // 5 MiB: over an outsider's 4 MiB, within a service's 16 MiB.
        assert_eq!(
            guarded(&mut guard, large.clone(), Some(OUTSIDER)).await,
            Some(tonic::Code::OutOfRange)
        );
        assert_eq!(calls(), 0);
        assert_eq!(
            guarded(&mut guard, large, Some("spiffe://coffer.test/service/keys")).await,
            None
        );
        assert_eq!(guarded(&mut guard, plain, Some(OUTSIDER)).await, None);
        assert_eq!(calls(), 2);
    }

    #[tokio::test]
    async fn outsiders_exports_wait_for_a_turn_and_services_do_not() {
        let counter = Counter::default();
        let guard = ExportGuard::new(counter.clone(), MAX_EXPORT_BYTES);
        let plain = frame(&request(vec![span_with_record("{}")]).encode_to_vec());
        let turns = guard
            .outsider_turns
            .clone()
            .acquire_many_owned(u32::try_from(OUTSIDER_EXPORTS_AT_ONCE).unwrap_or(u32::MAX))
            .await
            .expect("the semaphore is open");
        let waiting = {
            let mut guard = guard.clone();
            let plain = plain.clone();
            tokio::spawn(async move { guarded(&mut guard, plain, Some(OUTSIDER)).await })
        };
        let mut service_guard = guard.clone();
        assert_eq!(
            guarded(
                &mut service_guard,
                plain,
                Some("spiffe://coffer.test/service/keys")
            )
            .await,
            None,
            "a service's export does not wait"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the outsider's export waits");
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop(turns);
        assert_eq!(waiting.await.ok(), Some(None));
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// One account's exports that never finish arriving take no more than
    /// their share of the outsiders' turns: its next one waits for one of
    /// them to end, while another account's is received at once.
    #[tokio::test]
    async fn one_account_cannot_hold_every_outsider_turn() {
        let counter = Counter::default();
        let guard = ExportGuard::new(counter.clone(), MAX_EXPORT_BYTES);
        let stalled = || {
            let mut request = http::Request::new(Body::new(http_body_util::StreamBody::new(
                tokio_stream::pending::<
                    Result<hyper::body::Frame<tonic::codegen::Bytes>, Infallible>,
                >(),
            )));
            request.extensions_mut().insert(peer(OUTSIDER));
            let mut guard = guard.clone();
            tokio::spawn(async move { guard.call(request).await })
        };
        let held: Vec<_> = (0..OUTSIDER_EXPORTS_PER_ACCOUNT)
            .map(|_| stalled())
            .collect();
        while guard.outsider_turns.available_permits()
            > OUTSIDER_EXPORTS_AT_ONCE - OUTSIDER_EXPORTS_PER_ACCOUNT
        {
            tokio::task::yield_now().await;
        }
        let plain = frame(&request(vec![span_with_record("{}")]).encode_to_vec());
        let third = {
            let mut guard = guard.clone();
            let plain = plain.clone();
            tokio::spawn(async move { guarded(&mut guard, plain, Some(OUTSIDER)).await })
        };
        assert_eq!(
            guarded(
                &mut guard.clone(),
                plain,
                Some("spiffe://coffer.test/account/444455556666/user/app")
            )
            .await,
            None
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !third.is_finished(),
            "a third export of the account went ahead"
        );
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        for export in held {
            export.abort();
        }
        assert_eq!(third.await.ok(), Some(None));
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(
            guard.accounts.turns().is_empty(),
            "an account with nothing in progress is kept"
        );
    }

    #[tokio::test]
    async fn a_flood_in_the_first_of_two_frames_is_refused_unread() {
        // A unary server decodes every frame of the body, so a flood in the
        // first frame is decoded whatever follows it: here an empty frame.
        let flood = request(vec![Span::default(); 2_000_000]).encode_to_vec();
        let mut body = frame(&flood);
        body.extend(frame(&[]));
        assert_eq!(guard(body).await, (Some(tonic::Code::InvalidArgument), 0));
        // ... or a byte of a frame cut short.
        let mut body = frame(&flood);
        body.push(0);
        assert_eq!(guard(body).await, (Some(tonic::Code::InvalidArgument), 0));
        // Two ordinary frames pass, for the service to refuse as it does.
        let plain = request(vec![span_with_record("{}")]).encode_to_vec();
        let mut body = frame(&plain);
        body.extend(frame(&plain));
        assert_eq!(guard(body).await, (None, 1));
        // So does a compressed frame, which the service refuses undecoded.
        let mut body = frame(&flood);
        body[0] = 1;
        assert_eq!(guard(body).await, (None, 1));
    }
}
