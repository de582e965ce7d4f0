//! The gRPC edge of the audit service: CloudTrail's LookupEvents and a
//! GetEvent/Subscribe pair, and EventBridge's rule and target operations.
//!
//! Every RPC asks the authorization call for its `cloudtrail:` or `events:`
//! action (identity policies; rules are resources
//! `arn:…:events:REGION:ACCOUNT:rule/NAME`). A caller sees only its own
//! account's events (untrusted external events are filed in the account of
//! the principal that sent them). Signing secrets of targets are write-only: they are not
//! returned, logged or put in audit events.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coffer_platform::authz::Caller;
use coffer_platform::call::CallContext;
use coffer_platform::error::{ApiError, ErrorCode};
use coffer_proto::audit::v1 as pb;
use pb::audit_server::Audit;
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use crate::core::AuditCore;
use crate::domain::pattern::EventPattern;
use crate::store::{
    LookupAttribute, LookupCursor, LookupQuery, RuleDeletion, RulePut, RuleRecord, StoreError,
    StoredEvent, TargetRecord,
};

const MAX_LOOKUP_RESULTS: i32 = 50;
/// A LookupEvents page stops before its records pass this many bytes (it
/// always holds at least one event, and an event is at most
/// `MAX_RECORD_BYTES`), so that the answer fits in one gRPC message.
const MAX_LOOKUP_PAGE_BYTES: usize = 512 * 1024;
/// The largest answer the service sends: a LookupEvents page with room to
/// spare for what surrounds its records. `limits.max_message_bytes` never
/// lowers the answers' limit below it.
pub(crate) const MAX_ANSWER_BYTES: usize = 2 * MAX_LOOKUP_PAGE_BYTES;
/// Rule names, name prefixes and target ids (EventBridge's limit).
const MAX_NAME_CHARS: usize = 64;
const MAX_DESCRIPTION_CHARS: usize = 512;
const MAX_LIST_LIMIT: i32 = 100;
const MAX_TARGETS_PER_RULE: usize = 5;
/// Entries in one PutTargets request (EventBridge's); more than a rule's
/// five in all is LimitExceededException, not a malformed request.
const MAX_TARGETS_PER_REQUEST: usize = 10;
const MAX_ENDPOINT_CHARS: usize = 2048;
const MIN_SECRET_BYTES: usize = 16;
const MAX_SECRET_BYTES: usize = 512;
const DEFAULT_RETRIES: i32 = 185;
const DEFAULT_EVENT_AGE_S: i32 = 86_400;
const RULE_RESOURCE_TYPE: &str = "AWS::Events::Rule";
/// Subscriptions open at once at most (each holds a task and a buffer).
const MAX_SUBSCRIPTIONS: usize = 256;
/// Subscriptions one account may hold open, so that no tenant can take
/// every slot.
pub const MAX_SUBSCRIPTIONS_PER_ACCOUNT: usize = 32;
/// EventBridge's quota of rules on an event bus (one bus per account here).
const MAX_RULES_PER_ACCOUNT: usize = 300;

pub struct AuditGrpc {
    core: Arc<AuditCore>,
    subscriptions: Arc<tokio::sync::Semaphore>,
    subscribed: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// One of an account's open subscriptions, given back when dropped.
struct AccountSubscription {
    subscribed: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    account: String,
}

impl AccountSubscription {
    /// `None` when `account` has as many open as it may.
    fn open(
        subscribed: &Arc<std::sync::Mutex<HashMap<String, usize>>>,
        account: &str,
    ) -> Option<Self> {
        let mut open = subscribed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(account.to_owned()).or_default();
        if *count >= MAX_SUBSCRIPTIONS_PER_ACCOUNT {
            return None;
        }
        *count += 1;
        Some(Self {
            subscribed: subscribed.clone(),
            account: account.to_owned(),
        })
    }
}

impl Drop for AccountSubscription {
    fn drop(&mut self) {
        let mut open = self
            .subscribed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.account) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.account);
            }
        }
    }
}

impl AuditGrpc {
    pub fn new(core: Arc<AuditCore>) -> Self {
        Self {
            core,
            subscriptions: Arc::new(tokio::sync::Semaphore::new(MAX_SUBSCRIPTIONS)),
            subscribed: Arc::default(),
        }
    }

    fn rule_arn(caller: &Caller, name: &str) -> String {
        caller
            .location()
            .arn("events", caller.account(), &format!("rule/{name}"))
    }
}

fn invalid(exception: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, exception, message)
}

fn validation(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::validation(field, message)
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::NotFound, "ResourceNotFoundException", message)
}

fn store_failed(error: &StoreError) -> ApiError {
    tracing::error!(%error, "audit store error");
    ApiError::internal()
}

/// The caller, allowed `action` on `resource` by its identity policies.
fn authorize(call: &CallContext, action: &str, resource: &str) -> Result<Caller, Status> {
    let Some(caller) = call.caller() else {
        return Err(call.fail(ApiError::new(
            ErrorCode::PermissionDenied,
            "AccessDeniedException",
            "a Coffer service must act for a caller to use the audit service",
        )));
    };
    let decision = caller.authorize_identity(&caller.request(action, resource));
    if decision.is_allowed() {
        Ok(caller)
    } else {
        Err(call.fail(caller.denied(action, resource, decision.effect)))
    }
}

fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn millis_of(time: &prost_types::Timestamp) -> i64 {
    time.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(time.nanos / 1_000_000))
}

/// A lookup's StartTime or EndTime, in nanoseconds since the epoch; a
/// Timestamp that is not one (nanos outside a second, or a time beyond what
/// milliseconds in an `i64` hold) is refused as CloudTrail refuses a time
/// outside the range of possible values.
fn lookup_time(time: Option<&prost_types::Timestamp>) -> Result<Option<i128>, ApiError> {
    let Some(time) = time else {
        return Ok(None);
    };
    let nanos = i128::from(time.seconds) * 1_000_000_000 + i128::from(time.nanos);
    let representable = i64::try_from(nanos.div_euclid(1_000_000)).is_ok()
        && i64::try_from((nanos + 999_999).div_euclid(1_000_000)).is_ok();
    if (0..1_000_000_000).contains(&time.nanos) && representable {
        Ok(Some(nanos))
    } else {
        Err(invalid(
            "InvalidTimeRangeException",
            "the time is outside the range of possible values",
        ))
    }
}

/// The whole milliseconds of a range's bound: a StartTime rounds up and an
/// EndTime down, so no event outside the range as given is listed.
fn bound_millis(nanos: i128, round_up: bool) -> i64 {
    let millis = if round_up {
        (nanos + 999_999).div_euclid(1_000_000)
    } else {
        nanos.div_euclid(1_000_000)
    };
    // [`lookup_time`] refused any time whose milliseconds do not fit.
    i64::try_from(millis).unwrap_or(if millis < 0 { i64::MIN } else { i64::MAX })
}

/// How many of `events`, from the first, fit in `budget` bytes of records
/// (at least one, when there is one).
fn events_within(events: &[StoredEvent], budget: usize) -> usize {
    let mut used = 0usize;
    let fitting = events
        .iter()
        .take_while(|event| {
            used = used.saturating_add(event.record.len());
            used <= budget
        })
        .count();
    fitting.max(events.len().min(1))
}

/// Ends at `at`; never, without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// An event as the API returns it.
fn event_of(stored: &StoredEvent) -> pb::Event {
    let record: Value = serde_json::from_str(&stored.record).unwrap_or(Value::Null);
    let resources = record
        .get("resources")
        .and_then(Value::as_array)
        .map(|resources| {
            resources
                .iter()
                .filter_map(|resource| {
                    Some(pb::Resource {
                        resource_type: resource.get("type")?.as_str()?.to_owned(),
                        resource_name: resource.get("ARN")?.as_str()?.to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    pb::Event {
        event_id: stored.event_id.clone(),
        event_name: stored.event_name.clone(),
        read_only: stored.read_only.to_string(),
        event_time: Some(timestamp(stored.event_time_ms)),
        event_source: stored.event_source.clone(),
        username: stored.username.clone().unwrap_or_default(),
        resources,
        cloud_trail_event: stored.record.clone(),
        access_key_id: String::new(),
    }
}

/// What a lookup's attributes ask for.
enum Wanted {
    Everything,
    Only(LookupAttribute),
    /// A CloudTrail key no Coffer event carries: AccessKeyId (Coffer
    /// issues no access keys). Valid, and matches nothing.
    Nothing,
}

fn lookup_attribute(attributes: &[pb::LookupAttribute]) -> Result<Wanted, ApiError> {
    let exception = "InvalidLookupAttributesException";
    let attribute = match attributes {
        [] => return Ok(Wanted::Everything),
        [attribute] => attribute,
        _ => {
            return Err(invalid(
                exception,
                "at most one lookup attribute may be given",
            ));
        }
    };
    let value = attribute.attribute_value.clone();
    // CloudTrail counts `_`, space, `,` and a line break twice.
    let length: usize = value
        .chars()
        .map(|c| {
            if matches!(c, '_' | ' ' | ',' | '\n') {
                2
            } else {
                1
            }
        })
        .sum();
    if value.is_empty() || length > 2000 {
        return Err(invalid(
            exception,
            "the attribute value must be 1 to 2000 characters (`_`, space, `,` and a line break count twice)",
        ));
    }
    Ok(Wanted::Only(match attribute.attribute_key.as_str() {
        "EventId" => LookupAttribute::EventId(value),
        "EventName" => LookupAttribute::EventName(value),
        "ReadOnly" => match value.as_str() {
            "true" => LookupAttribute::ReadOnly(true),
            "false" => LookupAttribute::ReadOnly(false),
            _ => return Err(invalid(exception, "ReadOnly is true or false")),
        },
        "Username" => LookupAttribute::Username(value),
        "ResourceType" => LookupAttribute::ResourceType(value),
        "ResourceName" => LookupAttribute::ResourceName(value),
        "EventSource" => LookupAttribute::EventSource(value),
        "AccessKeyId" => return Ok(Wanted::Nothing),
        other => {
            return Err(invalid(
                exception,
                format!(
                    "{other:?} is not a lookup attribute: EventId, EventName, ReadOnly, Username, ResourceType, ResourceName, EventSource or AccessKeyId"
                ),
            ));
        }
    }))
}

/// What a NextToken is bound to: the caller's account, and the lookup's
/// attribute, event category and time range as the caller gave them
/// ([`coffer_platform::scope_hash`]), so a token used by another account or
/// with other parameters answers InvalidNextTokenException, as CloudTrail's
/// does.
fn lookup_scope(message: &pb::LookupEventsRequest, account: &str) -> u64 {
    let bounds: Vec<String> = [&message.start_time, &message.end_time]
        .into_iter()
        .map(|bound| {
            format!(
                "{:?}",
                bound.as_ref().map(|time| (time.seconds, time.nanos))
            )
        })
        .collect();
    coffer_platform::scope_hash(
        std::iter::once(account)
            .chain(message.lookup_attributes.iter().flat_map(|attribute| {
                [
                    attribute.attribute_key.as_str(),
                    attribute.attribute_value.as_str(),
                ]
            }))
            .chain(std::iter::once(message.event_category.as_str()))
            .chain(bounds.iter().map(String::as_str))
            .map(str::as_bytes),
    )
}

/// A NextToken: the last event's time and id, then the scope.
fn encode_cursor(cursor: &LookupCursor, scope: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}.{}.{scope:016x}",
        cursor.event_time_ms, cursor.event_id
    ))
}

fn decode_cursor(token: &str, scope: u64) -> Result<Option<LookupCursor>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid("InvalidNextTokenException", "the NextToken is not valid");
    let text = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(bad)?;
    let (time, rest) = text.split_once('.').ok_or_else(bad)?;
    let (event_id, bound) = rest.rsplit_once('.').ok_or_else(bad)?;
    if bound != format!("{scope:016x}") {
        return Err(invalid(
            "InvalidNextTokenException",
            "the NextToken was issued for a lookup with other parameters",
        ));
    }
    // The scope is no secret, so a caller can put any cursor before it; one
    // that could not be an event's is not a token this service issued (and a
    // NUL in it would fail a Postgres query as an internal error).
    if !crate::domain::record::is_valid_event_id(event_id) {
        return Err(bad());
    }
    Ok(Some(LookupCursor {
        event_time_ms: time.parse().map_err(|_| bad())?,
        event_id: event_id.to_owned(),
    }))
}

/// What TestEventPattern's event must have, as EventBridge requires.
const ENVELOPE_FIELDS: [&str; 7] = [
    "id",
    "account",
    "source",
    "time",
    "region",
    "resources",
    "detail-type",
];

/// The rule state that also receives read-only management events.
const ALL_MANAGEMENT_EVENTS: &str = "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS";

fn rule_state(enabled: bool, read_only_events: bool) -> &'static str {
    match (enabled, read_only_events) {
        (false, _) => "DISABLED",
        (true, false) => "ENABLED",
        (true, true) => ALL_MANAGEMENT_EVENTS,
    }
}

/// A rule name, a rule name prefix or a target id, as EventBridge allows
/// them.
fn event_bridge_name(field: &str, name: &str) -> Result<(), ApiError> {
    let valid = (1..=MAX_NAME_CHARS).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if valid {
        Ok(())
    } else {
        Err(validation(
            field,
            format!("must be 1 to {MAX_NAME_CHARS} characters: letters, digits, '.', '-', '_'"),
        ))
    }
}

fn pattern(text: &str) -> Result<EventPattern, ApiError> {
    EventPattern::parse(text).map_err(|error| {
        invalid(
            "InvalidEventPatternException",
            format!("Event pattern is not valid: {error}"),
        )
    })
}

/// A list call's `Limit`: left out, the most; sent, 1 to the most (a 0 sent
/// is refused, as EventBridge refuses it).
fn list_limit(limit: Option<i32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(MAX_LIST_LIMIT.unsigned_abs()),
        Some(limit @ 1..=MAX_LIST_LIMIT) => Ok(limit.unsigned_abs()),
        _ => Err(validation(
            "limit",
            format!("must be 1 to {MAX_LIST_LIMIT}"),
        )),
    }
}

fn rule_missing(name: &str) -> ApiError {
    not_found(format!("Rule {name} does not exist on EventBus default."))
}

fn page_token(token: &str) -> Result<String, ApiError> {
    if token.is_empty() {
        return Ok(String::new());
    }
    // What a token holds (a rule name, a target id, a number) has no
    // control character; NUL would fail a Postgres query as an internal
    // error where SQLite answers.
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|text| !text.contains(char::is_control))
        .ok_or_else(|| validation("next_token", "the NextToken is not valid"))
}

impl AuditGrpc {
    /// The time (ms) before which events are past retention: not shown, and
    /// deleted at the retention job's next run.
    fn retained_since(&self) -> i64 {
        let retention = i64::try_from(self.core.retention().as_millis()).unwrap_or(i64::MAX);
        self.core.clock().now_millis().saturating_sub(retention)
    }

    async fn existing_rule(&self, caller: &Caller, name: &str) -> Result<RuleRecord, ApiError> {
        self.core
            .store()
            .get_rule(caller.account().as_str(), name)
            .await
            .map_err(|error| store_failed(&error))?
            .ok_or_else(|| rule_missing(name))
    }

    /// Routes by the rules as they now stand. The change is already
    /// committed, so a reload that fails does not fail the call (which
    /// would tell the caller its change was not made): it is logged, and the
    /// periodic refresh makes it good.
    async fn rules_changed(&self) {
        if let Err(error) = self.core.reload_rules().await {
            tracing::error!(%error, "event rules could not be reloaded after a change");
        }
    }

    /// A rule-scoped call: validates the name, authorizes `action` on the
    /// rule and records it as the event's resource.
    fn rule_call(
        call: &CallContext,
        action: &str,
        field: &str,
        name: &str,
    ) -> Result<Caller, Status> {
        call.audit().request_parameters(json!({ field: name }));
        event_bridge_name(field, name).map_err(|error| call.fail(error))?;
        let caller = call
            .caller()
            .map(|caller| Self::rule_arn(&caller, name))
            .unwrap_or_default();
        let caller = authorize(call, action, &caller)?;
        call.audit().resource(
            Self::rule_arn(&caller, name),
            caller.account().to_string(),
            RULE_RESOURCE_TYPE,
        );
        Ok(caller)
    }
}

/// Events a subscription has buffered for its client (beyond what HTTP/2
/// holds in flight).
const SUBSCRIPTION_BUFFER: usize = 256;

/// A subscription's answer: the events forwarded to it, then the status it
/// ends with, if it ends for a reason (a shutdown, falling behind). The
/// status waits behind the events already buffered and is never lost to a
/// full buffer.
pub struct SubscribeStream {
    events: tokio::sync::mpsc::Receiver<Result<pb::SubscribeResponse, Status>>,
    ending: Option<tokio::sync::oneshot::Receiver<Status>>,
}

impl tokio_stream::Stream for SubscribeStream {
    type Item = Result<pb::SubscribeResponse, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        match self.events.poll_recv(context) {
            Poll::Ready(None) => {}
            other => return other,
        }
        // The forwarding task has ended: its status, if it left one.
        let Some(ending) = self.ending.as_mut() else {
            return Poll::Ready(None);
        };
        let status = std::task::ready!(std::pin::Pin::new(ending).poll(context));
        self.ending = None;
        Poll::Ready(status.ok().map(Err))
    }
}

#[tonic::async_trait]
impl Audit for AuditGrpc {
    async fn lookup_events(
        &self,
        request: Request<pb::LookupEventsRequest>,
    ) -> Result<Response<pb::LookupEventsResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        call.audit().request_parameters(json!({
            "lookupAttributes": message.lookup_attributes.iter().map(|attribute| json!({
                "attributeKey": attribute.attribute_key,
                "attributeValue": attribute.attribute_value,
            })).collect::<Vec<_>>(),
            "startTime": message.start_time.as_ref().map(millis_of),
            "endTime": message.end_time.as_ref().map(millis_of),
            "maxResults": message.max_results,
            "eventCategory": (!message.event_category.is_empty()).then_some(&message.event_category),
        }));
        let caller = authorize(&call, "cloudtrail:LookupEvents", "*")?;
        let scope = lookup_scope(&message, caller.account().as_str());
        let outcome = (|| {
            let (attribute, mut matchable) = match lookup_attribute(&message.lookup_attributes)? {
                Wanted::Everything => (None, true),
                Wanted::Only(attribute) => (Some(attribute), true),
                Wanted::Nothing => (None, false),
            };
            match message.event_category.as_str() {
                "" => {}
                // Insights events: Coffer records none.
                "insight" => matchable = false,
                other => {
                    return Err(invalid(
                        "InvalidEventCategoryException",
                        format!("{other:?} is not an event category: the only one is \"insight\""),
                    ));
                }
            }
            let limit = match message.max_results {
                None => MAX_LOOKUP_RESULTS,
                Some(value) if (1..=MAX_LOOKUP_RESULTS).contains(&value) => value,
                _ => {
                    return Err(invalid(
                        "InvalidMaxResultsException",
                        format!("MaxResults must be 1 to {MAX_LOOKUP_RESULTS}"),
                    ));
                }
            };
            let now = self.core.clock().now_millis();
            let start = lookup_time(message.start_time.as_ref())?;
            let end = lookup_time(message.end_time.as_ref())?;
            // Compared as given, to the nanosecond, before any rounding.
            if let Some(start) = start
                && start > end.unwrap_or(i128::from(now) * 1_000_000)
            {
                return Err(invalid(
                    "InvalidTimeRangeException",
                    "StartTime must not be after EndTime",
                ));
            }
            let end_ms = end.map_or(now, |end| bound_millis(end, false));
            // The range never begins before retention does, whether or not
            // a StartTime was given: an event past it is gone, as in
            // CloudTrail's 90 days, even before the hourly job deletes it.
            // An EndTime before that is a range with no events in it, not
            // an error of the caller's.
            let oldest = self.retained_since();
            if oldest > end_ms {
                matchable = false;
            }
            let start_ms = match start {
                Some(start) => {
                    let start_ms = bound_millis(start, true).max(oldest);
                    // Both bounds within one millisecond, with no whole
                    // millisecond between them: nothing can be in range.
                    if start_ms > end_ms {
                        matchable = false;
                    }
                    start_ms
                }
                None => oldest.min(end_ms),
            };
            let query = LookupQuery {
                attribute,
                start_ms,
                end_ms,
                after: decode_cursor(&message.next_token, scope)?,
                limit: limit.unsigned_abs() + 1,
                account: Some(caller.account().to_string()),
            };
            Ok((query, matchable))
        })();
        let (query, matchable) = outcome.map_err(|error| call.fail(error))?;
        let mut events = if matchable {
            self.core.settled().await;
            self.core
                .store()
                .lookup(&query)
                .await
                .map_err(|error| call.fail(store_failed(&error)))?
        } else {
            Vec::new()
        };
        let page = usize::try_from(query.limit - 1)
            .unwrap_or(usize::MAX)
            .min(events_within(&events, MAX_LOOKUP_PAGE_BYTES));
        let next_token = if events.len() > page {
            events.truncate(page);
            events
                .last()
                .map(|last| {
                    encode_cursor(
                        &LookupCursor {
                            event_time_ms: last.event_time_ms,
                            event_id: last.event_id.clone(),
                        },
                        scope,
                    )
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::LookupEventsResponse {
            events: events.iter().map(event_of).collect(),
            next_token,
        }))
    }

    async fn get_event(
        &self,
        request: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::GetEventResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        call.audit()
            .request_parameters(json!({ "eventId": message.event_id }));
        let caller = authorize(&call, "cloudtrail:GetEvent", "*")?;
        if message.event_id.is_empty() || message.event_id.len() > 128 {
            return Err(call.fail(validation("event_id", "must be 1 to 128 characters")));
        }
        self.core.settled().await;
        let stored = self
            .core
            .store()
            .get_event(&message.event_id)
            .await
            .map_err(|error| call.fail(store_failed(&error)))?
            .filter(|event| event.visible_to(caller.account().as_str()))
            // Past retention an event is gone, before the hourly job
            // deletes it too.
            .filter(|event| event.event_time_ms >= self.retained_since())
            .ok_or_else(|| {
                call.fail(not_found(format!(
                    "Event {} does not exist.",
                    message.event_id
                )))
            })?;
        Ok(Response::new(pb::GetEventResponse {
            event: Some(event_of(&stored)),
        }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let call = CallContext::of(&request)?;
        // The call was let in while the connection's client certificate was
        // valid; the subscription does not outlive it.
        let peer = request.extensions().get::<coffer_platform::tls::PeerInfo>();
        // Nor the connection: when the server asks it to go away, for the
        // client to reconnect (and its certificate to be checked against
        // the trust bundle again), the subscription ends.
        let reconnect_by = peer.and_then(|peer| peer.reconnect_by);
        let certificate_expires = peer.and_then(|peer| peer.not_after).map(|not_after| {
            let now =
                coffer_platform::clock::Clock::now_millis(&coffer_platform::clock::SystemClock);
            let left_ms = not_after.saturating_mul(1000).saturating_sub(now).max(0);
            tokio::time::Instant::now() + std::time::Duration::from_millis(left_ms.unsigned_abs())
        });
        let message = request.into_inner();
        call.audit()
            .request_parameters(json!({ "eventPattern": message.event_pattern }));
        let caller = authorize(&call, "cloudtrail:Subscribe", "*")?;
        let filter = if message.event_pattern.is_empty() {
            None
        } else {
            Some(pattern(&message.event_pattern).map_err(|error| call.fail(error))?)
        };
        let account = caller.account().to_string();
        let limited = |message: String| {
            call.fail(ApiError::new(
                ErrorCode::ResourceExhausted,
                "LimitExceededException",
                message,
            ))
        };
        let account_slot = AccountSubscription::open(&self.subscribed, &account).ok_or_else(|| {
            limited(format!(
                "an account may have at most {MAX_SUBSCRIPTIONS_PER_ACCOUNT} subscriptions open at once"
            ))
        })?;
        let permit = self
            .subscriptions
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                limited(format!(
                    "at most {MAX_SUBSCRIPTIONS} subscriptions may be open at once"
                ))
            })?;
        let mut live = self.core.subscribe();
        let closed = self.core.closed();
        // Decided again whenever the identity policies are reloaded: a
        // principal whose Subscribe permission is taken away is cut off.
        let subscriber = caller.detached();
        let mut policy_changes = subscriber.policy_changes();
        // A reload between the call's decision and this subscription would
        // count as seen: decide once more against what is in force now.
        policy_changes.mark_changed();
        let revoked_status = call.status_of(ApiError::new(
            ErrorCode::PermissionDenied,
            "AccessDeniedException",
            format!(
                "{} is no longer allowed cloudtrail:Subscribe: the identity policies were reloaded",
                subscriber.arn()
            ),
        ));
        // Every way a subscription ends with a status names its exception,
        // as any other refusal does.
        let lagged_status = call.status_of(ApiError::new(
            ErrorCode::ResourceExhausted,
            "ThrottlingException",
            "the subscriber fell behind and events were skipped; subscribe again and use LookupEvents for the gap",
        ));
        let closing_status = call.status_of(ApiError::new(
            ErrorCode::Unavailable,
            "ServiceUnavailableException",
            "the audit service is shutting down; subscribe again, and use LookupEvents for what was missed",
        ));
        let expired_status = call.status_of(ApiError::unauthenticated(
            "the client certificate of this connection has expired; subscribe again with a valid one",
        ));
        let aged_status = call.status_of(ApiError::new(
            ErrorCode::Unavailable,
            "ServiceUnavailableException",
            "the connection has reached its maximum age; subscribe again on a new one, and use LookupEvents for what was missed",
        ));
        let (sender, receiver) = tokio::sync::mpsc::channel(SUBSCRIPTION_BUFFER);
        let (ending, ended) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _permits = (permit, account_slot);
            // Events go to the client until it goes away or falls behind;
            // the latter ends the subscription with a status.
            let forwarding = async {
                loop {
                    // A client that went away frees its slot at once,
                    // whether or not anything it would see arrives.
                    let received = tokio::select! {
                        () = sender.closed() => return None,
                        received = live.recv() => received,
                    };
                    let event = match received {
                        Ok(event) => event,
                        // How many were skipped is not said: the live feed
                        // carries every account's events, and the count would
                        // tell one account how busy the others are.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            return Some(lagged_status);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    };
                    if !event.stored.visible_to(&account)
                        || filter
                            .as_ref()
                            .is_some_and(|filter| !filter.matches(&event.envelope))
                    {
                        continue;
                    }
                    let message = pb::SubscribeResponse {
                        event: Some(event_of(&event.stored)),
                    };
                    if sender.send(Ok(message)).await.is_err() {
                        return None;
                    }
                }
            };
            // A shutdown ends the subscription at once, even while a client
            // that stopped reading holds a send.
            let expired = sleep_until_some(certificate_expires);
            let aged = sleep_until_some(reconnect_by);
            let revoked = async {
                while policy_changes.changed().await.is_ok() {
                    if !subscriber.still_allowed("cloudtrail:Subscribe", "*") {
                        return;
                    }
                }
                std::future::pending().await
            };
            let status = tokio::select! {
                biased;
                () = closed => Some(closing_status),
                () = expired => Some(expired_status),
                () = aged => Some(aged_status),
                () = revoked => Some(revoked_status),
                status = forwarding => status,
            };
            if let Some(status) = status {
                let _gone = ending.send(status);
            }
        });
        Ok(Response::new(SubscribeStream {
            events: receiver,
            ending: Some(ended),
        }))
    }

    async fn put_rule(
        &self,
        request: Request<pb::PutRuleRequest>,
    ) -> Result<Response<pb::PutRuleResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        let caller = Self::rule_call(&call, "events:PutRule", "name", &message.name)?;
        call.audit().request_parameters(json!({
            "name": message.name,
            "eventPattern": message.event_pattern,
            "state": message.state,
            "description": message.description,
        }));
        let (enabled, read_only_events) = match message.state.as_str() {
            "" | "ENABLED" => (true, false),
            "DISABLED" => (false, false),
            ALL_MANAGEMENT_EVENTS => (true, true),
            _ => {
                return Err(call.fail(validation(
                    "state",
                    format!("must be ENABLED, DISABLED or {ALL_MANAGEMENT_EVENTS}"),
                )));
            }
        };
        if message.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(call.fail(validation(
                "description",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            )));
        }
        // Postgres text cannot hold NUL; refused on both backends alike.
        if message.description.contains('\0') {
            return Err(call.fail(validation(
                "description",
                "must not contain a NUL character",
            )));
        }
        if message.event_pattern.is_empty() {
            return Err(call.fail(validation("event_pattern", "must not be empty")));
        }
        pattern(&message.event_pattern).map_err(|error| call.fail(error))?;
        let rule = RuleRecord {
            account_id: caller.account().to_string(),
            name: message.name.clone(),
            event_pattern: message.event_pattern,
            enabled,
            read_only_events,
            description: message.description,
            created_by: caller.account().to_string(),
            created_at_ms: self.core.clock().now_millis(),
        };
        let put = self
            .core
            .store()
            .put_rule(&rule, MAX_RULES_PER_ACCOUNT)
            .await
            .map_err(|error| call.fail(store_failed(&error)))?;
        if put == RulePut::AccountFull {
            return Err(call.fail(ApiError::new(
                ErrorCode::ResourceExhausted,
                "LimitExceededException",
                format!("an account has at most {MAX_RULES_PER_ACCOUNT} rules"),
            )));
        }
        self.rules_changed().await;
        let rule_arn = Self::rule_arn(&caller, &message.name);
        call.audit()
            .response_elements(json!({ "ruleArn": rule_arn }));
        Ok(Response::new(pb::PutRuleResponse { rule_arn }))
    }

    async fn describe_rule(
        &self,
        request: Request<pb::DescribeRuleRequest>,
    ) -> Result<Response<pb::DescribeRuleResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        let caller = Self::rule_call(&call, "events:DescribeRule", "name", &message.name)?;
        let rule = self
            .existing_rule(&caller, &message.name)
            .await
            .map_err(|error| call.fail(error))?;
        Ok(Response::new(pb::DescribeRuleResponse {
            arn: Self::rule_arn(&caller, &rule.name),
            name: rule.name,
            event_pattern: rule.event_pattern,
            state: rule_state(rule.enabled, rule.read_only_events).to_owned(),
            description: rule.description,
            created_by: rule.created_by,
        }))
    }

    async fn list_rules(
        &self,
        request: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        call.audit().request_parameters(json!({
            "namePrefix": message.name_prefix,
        "limit": message.limit,
        }));
        // Checked before authorization, as rule names are.
        if !message.name_prefix.is_empty() {
            event_bridge_name("name_prefix", &message.name_prefix)
                .map_err(|error| call.fail(error))?;
        }
        let caller = authorize(&call, "events:ListRules", "*")?;
        let limit = list_limit(message.limit).map_err(|error| call.fail(error))?;
        let after = page_token(&message.next_token).map_err(|error| call.fail(error))?;
        let mut rules = self
            .core
            .store()
            .list_rules(
                caller.account().as_str(),
                &message.name_prefix,
                &after,
                limit + 1,
            )
            .await
            .map_err(|error| call.fail(store_failed(&error)))?;
        let next_token = if rules.len() > limit as usize {
            rules.truncate(limit as usize);
            rules
                .last()
                .map(|rule| URL_SAFE_NO_PAD.encode(&rule.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListRulesResponse {
            rules: rules
                .into_iter()
                .map(|rule| pb::Rule {
                    arn: Self::rule_arn(&caller, &rule.name),
                    name: rule.name,
                    event_pattern: rule.event_pattern,
                    state: rule_state(rule.enabled, rule.read_only_events).to_owned(),
                    description: rule.description,
                })
                .collect(),
            next_token,
        }))
    }

    async fn delete_rule(
        &self,
        request: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::DeleteRuleResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        let caller = Self::rule_call(&call, "events:DeleteRule", "name", &message.name)?;
        let account = caller.account().to_string();
        // As EventBridge: deleting a rule that does not exist succeeds.
        let deletion = self
            .core
            .store()
            .delete_rule(&account, &message.name, message.force)
            .await
            .map_err(|error| call.fail(store_failed(&error)))?;
        if deletion == RuleDeletion::HasTargets {
            return Err(call.fail(invalid(
                "ValidationException",
                "Rule can't be deleted since it has targets.",
            )));
        }
        self.rules_changed().await;
        Ok(Response::new(pb::DeleteRuleResponse {}))
    }

    async fn enable_rule(
        &self,
        request: Request<pb::EnableRuleRequest>,
    ) -> Result<Response<pb::EnableRuleResponse>, Status> {
        let call = CallContext::of(&request)?;
        let name = request.into_inner().name;
        self.set_enabled(&call, "events:EnableRule", &name, true)
            .await?;
        Ok(Response::new(pb::EnableRuleResponse {}))
    }

    async fn disable_rule(
        &self,
        request: Request<pb::DisableRuleRequest>,
    ) -> Result<Response<pb::DisableRuleResponse>, Status> {
        let call = CallContext::of(&request)?;
        let name = request.into_inner().name;
        self.set_enabled(&call, "events:DisableRule", &name, false)
            .await?;
        Ok(Response::new(pb::DisableRuleResponse {}))
    }

    async fn put_targets(
        &self,
        request: Request<pb::PutTargetsRequest>,
    ) -> Result<Response<pb::PutTargetsResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        let caller = Self::rule_call(&call, "events:PutTargets", "rule", &message.rule)?;
        // The signing secrets are left out on purpose.
        call.audit().request_parameters(json!({
            "rule": message.rule,
            "targets": message.targets.iter().map(|target| json!({
                "id": target.id,
                "endpoint": target.https.as_ref().map(|https| recorded_endpoint(&https.endpoint)),
            })).collect::<Vec<_>>(),
        }));
        if message.targets.is_empty() || message.targets.len() > MAX_TARGETS_PER_REQUEST {
            return Err(call.fail(validation(
                "targets",
                format!("must hold 1 to {MAX_TARGETS_PER_REQUEST} targets"),
            )));
        }
        let account = caller.account().to_string();
        self.existing_rule(&caller, &message.rule)
            .await
            .map_err(|error| call.fail(error))?;
        let mut records = Vec::new();
        for (index, target) in message.targets.into_iter().enumerate() {
            let record = target_record(&account, &message.rule, index, target)
                .map_err(|error| call.fail(error))?;
            if records
                .iter()
                .any(|known: &TargetRecord| known.target_id == record.target_id)
            {
                return Err(call.fail(validation(
                    &format!("targets[{index}].id"),
                    "target ids must be unique",
                )));
            }
            records.push(record);
        }
        let total = self
            .core
            .store()
            .put_targets(&account, &message.rule, &records, MAX_TARGETS_PER_RULE)
            .await
            .map_err(|error| call.fail(store_failed(&error)))?;
        match total {
            None => {
                return Err(call.fail(rule_missing(&message.rule)));
            }
            Some(total) if total > MAX_TARGETS_PER_RULE => {
                return Err(call.fail(ApiError::new(
                    ErrorCode::ResourceExhausted,
                    "LimitExceededException",
                    format!("a rule has at most {MAX_TARGETS_PER_RULE} targets"),
                )));
            }
            Some(_) => {}
        }
        self.rules_changed().await;
        Ok(Response::new(pb::PutTargetsResponse {
            failed_entry_count: 0,
            failed_entries: Vec::new(),
        }))
    }

    async fn remove_targets(
        &self,
        request: Request<pb::RemoveTargetsRequest>,
    ) -> Result<Response<pb::RemoveTargetsResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        let caller = Self::rule_call(&call, "events:RemoveTargets", "rule", &message.rule)?;
        call.audit()
            .request_parameters(json!({ "rule": message.rule, "ids": message.ids }));
        if message.ids.is_empty() || message.ids.len() > 100 {
            return Err(call.fail(validation("ids", "must hold 1 to 100 target ids")));
        }
        for (index, id) in message.ids.iter().enumerate() {
            event_bridge_name(&format!("ids[{index}]"), id).map_err(|error| call.fail(error))?;
        }
        let account = caller.account().to_string();
        self.existing_rule(&caller, &message.rule)
            .await
            .map_err(|error| call.fail(error))?;
        let mut failed_entries = Vec::new();
        for id in &message.ids {
            let removed = match self
                .core
                .store()
                .remove_target(&account, &message.rule, id)
                .await
            {
                Ok(removed) => removed,
                Err(error) => {
                    // The targets removed before it are gone: they are no
                    // longer routed to, though the call fails.
                    self.rules_changed().await;
                    return Err(call.fail(store_failed(&error)));
                }
            };
            if !removed {
                failed_entries.push(pb::FailedEntry {
                    target_id: id.clone(),
                    error_code: "ResourceNotFoundException".into(),
                    error_message: format!("Target {id} does not exist on rule {}.", message.rule),
                });
            }
        }
        self.rules_changed().await;
        Ok(Response::new(pb::RemoveTargetsResponse {
            failed_entry_count: i32::try_from(failed_entries.len()).unwrap_or(i32::MAX),
            failed_entries,
        }))
    }

    async fn list_targets_by_rule(
        &self,
        request: Request<pb::ListTargetsByRuleRequest>,
    ) -> Result<Response<pb::ListTargetsByRuleResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        let caller = Self::rule_call(&call, "events:ListTargetsByRule", "rule", &message.rule)?;
        let limit = list_limit(message.limit).map_err(|error| call.fail(error))? as usize;
        let after = page_token(&message.next_token).map_err(|error| call.fail(error))?;
        self.existing_rule(&caller, &message.rule)
            .await
            .map_err(|error| call.fail(error))?;
        let mut targets = self
            .core
            .store()
            .list_targets(caller.account().as_str(), &message.rule)
            .await
            .map_err(|error| call.fail(store_failed(&error)))?;
        // A rule has a handful of targets: paged here, by target id.
        targets.sort_by(|a, b| a.target_id.cmp(&b.target_id));
        targets.retain(|target| after.is_empty() || target.target_id > after);
        let next_token = if targets.len() > limit {
            targets.truncate(limit);
            targets
                .last()
                .map(|target| URL_SAFE_NO_PAD.encode(&target.target_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListTargetsByRuleResponse {
            targets: targets
                .into_iter()
                .map(|target| pb::TargetDescription {
                    id: target.target_id,
                    https: Some(pb::HttpsTarget {
                        endpoint: target.endpoint,
                    }),
                    retry_policy: Some(pb::RetryPolicy {
                        maximum_retry_attempts: Some(target.max_retries),
                        maximum_event_age_in_seconds: Some(target.max_event_age_s),
                    }),
                })
                .collect(),
            next_token,
        }))
    }

    async fn list_failed_deliveries(
        &self,
        request: Request<pb::ListFailedDeliveriesRequest>,
    ) -> Result<Response<pb::ListFailedDeliveriesResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        let caller = Self::rule_call(&call, "events:ListFailedDeliveries", "rule", &message.rule)?;
        let limit = list_limit(message.limit).map_err(|error| call.fail(error))?;
        let after: i64 = match page_token(&message.next_token).map_err(|error| call.fail(error))? {
            text if text.is_empty() => 0,
            text => text
                .parse()
                .map_err(|_| call.fail(validation("next_token", "the NextToken is not valid")))?,
        };
        self.existing_rule(&caller, &message.rule)
            .await
            .map_err(|error| call.fail(error))?;
        let mut failures = self
            .core
            .store()
            .list_failed_deliveries(caller.account().as_str(), &message.rule, after, limit + 1)
            .await
            .map_err(|error| call.fail(store_failed(&error)))?;
        let next_token = if failures.len() > limit as usize {
            failures.truncate(limit as usize);
            failures
                .last()
                .map(|failure| URL_SAFE_NO_PAD.encode(failure.seq.to_string()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListFailedDeliveriesResponse {
            failed_deliveries: failures
                .into_iter()
                .map(|failure| pb::FailedDelivery {
                    target_id: failure.target_id,
                    event_id: failure.event_id,
                    attempts: failure.attempts,
                    last_error: failure.last_error,
                    failed_at: Some(timestamp(failure.failed_at_ms)),
                })
                .collect(),
            next_token,
        }))
    }

    async fn test_event_pattern(
        &self,
        request: Request<pb::TestEventPatternRequest>,
    ) -> Result<Response<pb::TestEventPatternResponse>, Status> {
        let call = CallContext::of(&request)?;
        let message = request.into_inner();
        // The event under test may be anything; only the pattern is recorded.
        call.audit()
            .request_parameters(json!({ "eventPattern": message.event_pattern }));
        authorize(&call, "events:TestEventPattern", "*")?;
        let filter = pattern(&message.event_pattern).map_err(|error| call.fail(error))?;
        let event: Value = serde_json::from_str(&message.event)
            .map_err(|error| call.fail(validation("event", format!("is not JSON: {error}"))))?;
        if !event.is_object() {
            return Err(call.fail(validation("event", "must be a JSON object")));
        }
        // The envelope's fields EventBridge requires of a test event, so that
        // a test cannot pass on an event shaped unlike those rules see.
        let missing: Vec<&str> = ENVELOPE_FIELDS
            .iter()
            .copied()
            .filter(|field| event.get(field).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(call.fail(validation(
                "event",
                format!("is missing {}", missing.join(", ")),
            )));
        }
        Ok(Response::new(pb::TestEventPatternResponse {
            result: filter.matches(&event),
        }))
    }
}

impl AuditGrpc {
    async fn set_enabled(
        &self,
        call: &CallContext,
        action: &str,
        name: &str,
        enabled: bool,
    ) -> Result<(), Status> {
        let caller = Self::rule_call(call, action, "name", name)?;
        let changed = self
            .core
            .store()
            .set_rule_enabled(caller.account().as_str(), name, enabled)
            .await
            .map_err(|error| call.fail(store_failed(&error)))?;
        if !changed {
            return Err(call.fail(rule_missing(name)));
        }
        self.rules_changed().await;
        Ok(())
    }
}

/// Whether `endpoint` is a webhook URL Coffer accepts: https, a host, no
/// credentials.
fn endpoint_valid(endpoint: &str) -> bool {
    endpoint.len() <= MAX_ENDPOINT_CHARS
        && endpoint.parse::<http::Uri>().is_ok_and(|uri| {
            uri.scheme_str() == Some("https")
                && uri.host().is_some_and(|host| !host.is_empty())
                && uri.authority().is_some_and(|authority| {
                    let text = authority.as_str();
                    let after_host = text.rsplit(']').next().unwrap_or(text);
                    // Credentials in a URL would be stored, listed and
                    // audited; a port must be a number.
                    !text.contains('@') && (!after_host.contains(':') || uri.port_u16().is_some())
                })
        })
}

/// `endpoint` as a PutTargets event records it: withheld when it has an
/// `@` anywhere, where a password may hide however the rest is mangled.
fn recorded_endpoint(endpoint: &str) -> String {
    if !endpoint.contains('@') {
        endpoint.to_owned()
    } else {
        "(withheld: it has an '@', where credentials may hide)".to_owned()
    }
}

fn target_record(
    account: &str,
    rule: &str,
    index: usize,
    target: pb::Target,
) -> Result<TargetRecord, ApiError> {
    let field = |name: &str| format!("targets[{index}].{name}");
    event_bridge_name(&field("id"), &target.id)?;
    let endpoint = target.https.map(|https| https.endpoint).unwrap_or_default();
    if !endpoint_valid(&endpoint) {
        return Err(validation(
            &field("https.endpoint"),
            "must be an https:// URL with a host and no user name or password",
        ));
    }
    if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&target.signing_secret.len()) {
        return Err(validation(
            &field("signing_secret"),
            format!("must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"),
        ));
    }
    // As in EventBridge, each field of a RetryPolicy left out takes its
    // default on its own: a policy with only the event age still retries.
    let policy = target.retry_policy.unwrap_or_default();
    let retries = policy.maximum_retry_attempts.unwrap_or(DEFAULT_RETRIES);
    if !(0..=DEFAULT_RETRIES).contains(&retries) {
        return Err(validation(
            &field("retry_policy.maximum_retry_attempts"),
            format!("must be 0 to {DEFAULT_RETRIES}"),
        ));
    }
    let age = policy
        .maximum_event_age_in_seconds
        .unwrap_or(DEFAULT_EVENT_AGE_S);
    if !(60..=DEFAULT_EVENT_AGE_S).contains(&age) {
        return Err(validation(
            &field("retry_policy.maximum_event_age_in_seconds"),
            format!("must be 60 to {DEFAULT_EVENT_AGE_S}"),
        ));
    }
    Ok(TargetRecord {
        account_id: account.to_owned(),
        rule_name: rule.to_owned(),
        target_id: target.id,
        endpoint,
        signing_secret: target.signing_secret,
        max_retries: retries,
        max_event_age_s: age,
    })
}

#[cfg(test)]
mod tests {
    use super::{Status, SubscribeStream, endpoint_valid, pb, recorded_endpoint};

    /// The status a subscription ends with comes after every event already
    /// buffered for its client, however full the buffer was.
    #[tokio::test]
    async fn a_subscription_ends_with_its_status_behind_a_full_buffer() {
        use tokio_stream::StreamExt as _;
        let (sender, events) = tokio::sync::mpsc::channel(1);
        let (ending, ended) = tokio::sync::oneshot::channel();
        let mut stream = SubscribeStream {
            events,
            ending: Some(ended),
        };
        sender
            .try_send(Ok(pb::SubscribeResponse::default()))
            .expect("room for one");
        assert!(
            sender
                .try_send(Ok(pb::SubscribeResponse::default()))
                .is_err()
        );
        ending
            .send(Status::unavailable("shutting down"))
            .expect("the stream waits");
        drop(sender);
        assert!(matches!(stream.next().await, Some(Ok(_))));
        let status = stream.next().await.and_then(Result::err);
        assert_eq!(
            status.map(|status| status.code()),
            Some(tonic::Code::Unavailable)
        );
        assert!(stream.next().await.is_none());
    }

    #[test]
    fn webhook_endpoints_are_https_with_a_host_a_numeric_port_and_no_credentials() {
        for valid in [
            "https://hooks.example/a?b=c",
            "https://hooks.example:8443/a",
            "https://[::1]:8443/a",
            "https://[::1]/a",
        ] {
            assert!(endpoint_valid(valid), "{valid}");
        }
        for invalid in [
            "http://hooks.example/a",
            "https://u:p@hooks.example/a",
            "https://user:pa/ss@hooks.example",
            "https://hooks.example:port/a",
            "hooks.example/a",
        ] {
            assert!(!endpoint_valid(invalid), "{invalid}");
        }
    }

    #[test]
    fn endpoints_that_may_hold_credentials_are_not_recorded() {
        for (given, recorded) in [
            ("https://hooks.example/a", Some("https://hooks.example/a")),
            ("https://hooks.example/path@x", None),
            ("http://hooks.example/a", Some("http://hooks.example/a")),
            ("https://u:p@hooks.example:8443/a", None),
            ("u:p@hooks.example", None),
            ("https://user:pa/ss@hooks.example", None),
            ("https://u:p#x@hooks.example", None),
        ] {
            let shown = recorded_endpoint(given);
            match recorded {
                Some(recorded) => assert_eq!(shown, recorded, "{given}"),
                None => assert!(shown.starts_with("(withheld"), "{given}: {shown}"),
            }
        }
    }
}
