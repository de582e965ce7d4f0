//! The audit service end to end: lookup and pagination, subscriptions,
//! OTLP trust rules and hygiene, event rules with signed webhook
//! deliveries, retention, and the `required` delivery guarantee when the
//! audit service goes away.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coffer_platform::audit::otlp::{AUDIT_SCOPE, RECORD_ATTRIBUTE, string_attribute};
use coffer_platform::client::ClientTls;
use coffer_proto::audit::v1 as audit_pb;
use coffer_tests::{
    ACCOUNT_A, ACCOUNT_B, Backend, Harness, Options, assert_error, backend_tests, exception_of,
    keys_pb as pb, request_id_of, wait_for,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::{Value, json};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::operations::unary_with_grpc_timeout;

backend_tests!(
    an_exporters_connection_does_not_outlive_its_certificate,
    lookup_pages_every_event_exactly_once_and_sees_only_its_account,
    lookup_rejects_bad_input_with_cloudtrail_exceptions,
    subscribe_streams_only_matching_events,
    a_subscription_ends_when_its_certificate_expires,
    a_subscription_ends_when_its_connection_reaches_its_age,
    a_subscription_ends_when_its_permission_is_reloaded_away,
    outbox_rows_left_by_a_required_run_are_sent_after_a_switch_to_best_effort,
    a_shutdown_ends_open_subscriptions,
    a_subscriber_that_stopped_reading_still_learns_of_a_shutdown,
    otlp_spans_from_non_services_are_untrusted_and_hostile_values_are_capped,
    an_oversized_request_is_audited_capped_and_stops_no_delivery,
    a_service_speaks_for_itself_only,
    a_caller_deadline_that_ends_the_wait_for_the_audit_service_is_audited,
    a_delivery_waiting_for_a_slot_stops_when_its_target_is_removed,
    a_delivery_waiting_while_its_target_changes_goes_where_it_points_now,
    a_delivery_waiting_while_its_rule_is_made_again_is_dropped,
    targets_removed_before_a_failure_are_no_longer_sent_to,
    otlp_outsiders_cannot_fail_a_shared_write_or_speak_for_another,
    otlp_exports_too_large_once_decoded_are_refused_unread,
    oversized_records_are_cut_and_lookups_page_by_size,
    a_small_message_limit_still_answers_large_events,
    a_lagging_subscriber_learns_nothing_of_other_accounts,
    rules_deliver_signed_webhooks_with_retries_and_record_failures,
    webhook_retries_wait_as_the_endpoint_asks,
    webhooks_reach_no_private_address_unless_allowed,
    rules_and_subscriptions_keep_to_eventbridge_limits,
    retention_removes_events_past_the_period,
    one_account_cannot_hold_unbounded_deliveries_and_failures_expire,
    required_mode_survives_the_audit_service_going_away,
    killed_keys_service_loses_no_events,
);

async fn encrypt(
    client: &mut coffer_proto::keys::v1::keys_client::KeysClient<tonic::transport::Channel>,
    key_id: &str,
) -> Result<tonic::Response<pb::EncryptResponse>, tonic::Status> {
    client
        .encrypt(pb::EncryptRequest {
            key_id: key_id.into(),
            plaintext: b"audit me".to_vec(),
            ..Default::default()
        })
        .await
}

async fn new_key(
    client: &mut coffer_proto::keys::v1::keys_client::KeysClient<tonic::transport::Channel>,
) -> anyhow::Result<String> {
    Ok(client
        .create_key(pb::CreateKeyRequest::default())
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?
        .arn)
}

async fn lookup_pages_every_event_exactly_once_and_sees_only_its_account(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut alice).await?;
    let mut request_ids = BTreeSet::new();
    for _ in 0..120 {
        let response = encrypt(&mut alice, &key).await?;
        request_ids.insert(request_id_of(response.metadata()));
    }
    let mut bob = harness.keys_for(ACCOUNT_B, "bob").await?;
    new_key(&mut bob).await?;
    harness.audit_events().await?;

    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut token = String::new();
    let mut pages = 0;
    let mut previous_time = i64::MAX;
    loop {
        let page = audit
            .lookup_events(audit_pb::LookupEventsRequest {
                lookup_attributes: vec![audit_pb::LookupAttribute {
                    attribute_key: "EventName".into(),
                    attribute_value: "Encrypt".into(),
                }],
                max_results: Some(50),
                next_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        pages += 1;
        assert!(page.events.len() <= 50);
        for event in &page.events {
            let record: Value = serde_json::from_str(&event.cloud_trail_event)?;
            assert_eq!(event.event_name, "Encrypt");
            assert_eq!(event.read_only, "true");
            assert_eq!(event.username, "alice");
            assert_eq!(record["eventID"], event.event_id.as_str());
            let time = event
                .event_time
                .as_ref()
                .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000));
            assert!(time <= previous_time, "newest first");
            previous_time = time;
            let request_id = record["requestID"].as_str().unwrap_or_default().to_owned();
            *seen.entry(request_id).or_default() += 1;
        }
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(pages, 3, "120 events in pages of 50");
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), request_ids);
    assert!(
        seen.values().all(|count| *count == 1),
        "every event exactly once"
    );

    // Account B's CreateKey is not visible to account A, by any attribute.
    let creates = events_by(&mut audit, "EventName", "CreateKey").await?;
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].username, "alice");
    let bobs = events_by(&mut audit, "Username", "bob").await?;
    assert!(bobs.is_empty());

    // GetEvent by id; another account's id is as good as missing.
    let mine = creates[0].event_id.clone();
    let fetched = audit
        .get_event(audit_pb::GetEventRequest {
            event_id: mine.clone(),
        })
        .await?
        .into_inner()
        .event
        .ok_or_else(|| anyhow::anyhow!("no event"))?;
    assert_eq!(fetched.event_id, mine);
    assert_eq!(fetched.resources.len(), 1);
    assert_eq!(fetched.resources[0].resource_name, key);
    let mut bob_audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_B, "bob"))
        .await?;
    assert_error(
        bob_audit
            .get_event(audit_pb::GetEventRequest { event_id: mine })
            .await,
        Code::NotFound,
        "ResourceNotFoundException",
    );
    Ok(())
}

async fn lookup_rejects_bad_input_with_cloudtrail_exceptions(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    let attribute = |key: &str, value: &str| audit_pb::LookupAttribute {
        attribute_key: key.into(),
        attribute_value: value.into(),
    };
    let cases: Vec<(audit_pb::LookupEventsRequest, &str)> = vec![
        (
            audit_pb::LookupEventsRequest {
                max_results: Some(51),
                ..Default::default()
            },
            "InvalidMaxResultsException",
        ),
        (
            audit_pb::LookupEventsRequest {
                max_results: Some(-1),
                ..Default::default()
            },
            "InvalidMaxResultsException",
        ),
        (
            audit_pb::LookupEventsRequest {
                max_results: Some(0),
                ..Default::default()
            },
            "InvalidMaxResultsException",
        ),
        (
            audit_pb::LookupEventsRequest {
                lookup_attributes: vec![attribute("EventName", "A"), attribute("Username", "b")],
                ..Default::default()
            },
            "InvalidLookupAttributesException",
        ),
        (
            audit_pb::LookupEventsRequest {
                lookup_attributes: vec![attribute("SourceIPAddress", "x")],
                ..Default::default()
            },
            "InvalidLookupAttributesException",
        ),
        (
            audit_pb::LookupEventsRequest {
                lookup_attributes: vec![attribute("EventName", &"a_".repeat(667))],
                ..Default::default()
            },
            "InvalidLookupAttributesException",
        ),
        (
            audit_pb::LookupEventsRequest {
                lookup_attributes: vec![attribute("ReadOnly", "maybe")],
                ..Default::default()
            },
            "InvalidLookupAttributesException",
        ),
        (
            audit_pb::LookupEventsRequest {
                next_token: "not a token!".into(),
                ..Default::default()
            },
            "InvalidNextTokenException",
        ),
        (
            audit_pb::LookupEventsRequest {
                start_time: Some(prost_types::Timestamp {
                    seconds: 2_000,
                    nanos: 0,
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: 1_000,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "InvalidTimeRangeException",
        ),
        // StartTime after EndTime by less than a millisecond.
        (
            audit_pb::LookupEventsRequest {
                start_time: Some(prost_types::Timestamp {
                    seconds: 1_000,
                    nanos: 900_000,
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: 1_000,
                    nanos: 100_000,
                }),
                ..Default::default()
            },
            "InvalidTimeRangeException",
        ),
        (
            audit_pb::LookupEventsRequest {
                end_time: Some(prost_types::Timestamp {
                    seconds: 1_000,
                    nanos: 1_000_000_000,
                }),
                ..Default::default()
            },
            "InvalidTimeRangeException",
        ),
        (
            audit_pb::LookupEventsRequest {
                start_time: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "InvalidTimeRangeException",
        ),
        (
            audit_pb::LookupEventsRequest {
                event_category: "management".into(),
                ..Default::default()
            },
            "InvalidEventCategoryException",
        ),
    ];
    for (request, exception) in cases {
        let status = assert_error(
            audit.lookup_events(request).await,
            Code::InvalidArgument,
            exception,
        );
        let events = harness
            .audit_events_for(&request_id_of(status.metadata()))
            .await?;
        assert_eq!(events.len(), 1, "{exception}");
        assert_eq!(events[0]["errorCode"], exception);
        assert_eq!(events[0]["eventSource"], "cloudtrail.coffer.internal");
    }
    // An EndTime alone, older than retention, asks for a range with nothing
    // in it: an empty answer, as CloudTrail gives, not an error.
    let ancient = audit
        .lookup_events(audit_pb::LookupEventsRequest {
            end_time: Some(prost_types::Timestamp {
                seconds: 1_000,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(ancient.events.is_empty() && ancient.next_token.is_empty());
    // A NextToken works only with the parameters it was issued for.
    let first = audit
        .lookup_events(audit_pb::LookupEventsRequest {
            max_results: Some(1),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(!first.next_token.is_empty());
    audit
        .lookup_events(audit_pb::LookupEventsRequest {
            max_results: Some(1),
            next_token: first.next_token.clone(),
            ..Default::default()
        })
        .await?;
    for other in [
        audit_pb::LookupEventsRequest {
            lookup_attributes: vec![attribute("EventName", "LookupEvents")],
            next_token: first.next_token.clone(),
            ..Default::default()
        },
        audit_pb::LookupEventsRequest {
            start_time: Some(prost_types::Timestamp {
                seconds: 1_000,
                nanos: 0,
            }),
            next_token: first.next_token.clone(),
            ..Default::default()
        },
    ] {
        assert_error(
            audit.lookup_events(other).await,
            Code::InvalidArgument,
            "InvalidNextTokenException",
        );
    }
    // The scope in a token is no secret: a cursor made up in front of it is
    // still not a token this service issued.
    let issued = String::from_utf8(URL_SAFE_NO_PAD.decode(&first.next_token)?)?;
    let (time, rest) = issued.split_once('.').context("a token's time")?;
    let (_, scope) = rest.rsplit_once('.').context("a token's scope")?;
    for event_id in ["a\0b", "a'b", ""] {
        let forged = URL_SAFE_NO_PAD.encode(format!("{time}.{event_id}.{scope}"));
        assert_error(
            audit
                .lookup_events(audit_pb::LookupEventsRequest {
                    max_results: Some(1),
                    next_token: forged,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "InvalidNextTokenException",
        );
    }
    // ... and only for the account it was issued to.
    let mut bob_audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_B, "bob"))
        .await?;
    assert_error(
        bob_audit
            .lookup_events(audit_pb::LookupEventsRequest {
                max_results: Some(1),
                next_token: first.next_token.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "InvalidNextTokenException",
    );
    // Insights events: a valid category, and Coffer has none.
    let insights = audit
        .lookup_events(audit_pb::LookupEventsRequest {
            event_category: "insight".into(),
            ..Default::default()
        })
        .await?;
    let recorded = harness
        .audit_events_for(&request_id_of(insights.metadata()))
        .await?;
    assert_eq!(
        recorded[0]["requestParameters"]["eventCategory"], "insight",
        "{recorded:#?}"
    );
    let insights = insights.into_inner();
    assert!(insights.events.is_empty() && insights.next_token.is_empty());
    // AccessKeyId is a CloudTrail key; Coffer issues no access keys, so it
    // matches nothing.
    let none = audit
        .lookup_events(audit_pb::LookupEventsRequest {
            lookup_attributes: vec![attribute("AccessKeyId", "AKIAEXAMPLE")],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(none.events.is_empty() && none.next_token.is_empty());
    // 2,000 counted characters are allowed.
    audit
        .lookup_events(audit_pb::LookupEventsRequest {
            lookup_attributes: vec![attribute("EventName", &"a_".repeat(666))],
            ..Default::default()
        })
        .await?;
    // Literal values: a LIKE wildcard matches nothing.
    let none = audit
        .lookup_events(audit_pb::LookupEventsRequest {
            lookup_attributes: vec![attribute("EventName", "%")],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(none.events.is_empty());
    Ok(())
}

async fn subscribe_streams_only_matching_events(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut alice).await?;
    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    assert_error(
        audit
            .subscribe(audit_pb::SubscribeRequest {
                event_pattern: r#"{"detail":{"eventName":"Encrypt"}}"#.into(),
            })
            .await,
        Code::InvalidArgument,
        "InvalidEventPatternException",
    );
    let mut stream = audit
        .subscribe(audit_pb::SubscribeRequest {
            event_pattern: r#"{"source":["coffer.kms"],"detail":{"eventName":["Encrypt"]}}"#.into(),
        })
        .await?
        .into_inner();
    let mut bob = harness.keys_for(ACCOUNT_B, "bob").await?;
    let bob_key = new_key(&mut bob).await?;
    encrypt(&mut bob, &bob_key).await?;
    alice.list_keys(pb::ListKeysRequest::default()).await?;
    let encrypted = encrypt(&mut alice, &key).await?;
    let wanted = request_id_of(encrypted.metadata());
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await??
        .and_then(|message| message.event)
        .ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
    let record: Value = serde_json::from_str(&event.cloud_trail_event)?;
    // The first event through is alice's Encrypt: not her ListKeys, not
    // bob's Encrypt (another account).
    assert_eq!(record["requestID"], wanted.as_str());
    assert_eq!(event.event_name, "Encrypt");
    Ok(())
}

/// A subscription lasts no longer than the client certificate it was opened
/// with: the check at the start of a call is not the last.
async fn a_subscription_ends_when_its_certificate_expires(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let identity = harness.short_lived_identity(
        &Harness::user_id(ACCOUNT_A, "alice"),
        Duration::from_secs(3),
    )?;
    let tls = ClientTls::from_pem(
        &harness.ca_pem()?,
        Some((identity.cert_pem.as_bytes(), identity.key_pem.as_bytes())),
    )?;
    let channel = tls.connect(&harness.audit_addr()?, "localhost").await?;
    let mut stream = audit_pb::audit_client::AuditClient::new(channel)
        .subscribe(audit_pb::SubscribeRequest::default())
        .await?
        .into_inner();
    let started = std::time::Instant::now();
    let ended = status_ending(&mut stream, Duration::from_secs(15)).await?;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("expired"), "{ended:?}");
    assert_eq!(exception_of(&ended), "UnrecognizedClientException");
    assert!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}

/// A subscription lasts no longer than its connection, which the server
/// asks to go away at `limits.max_connection_age_ms`: the client then
/// reconnects, and its certificate is checked against the trust bundle of
/// the day (before, a Subscribe kept its connection open for as long as the
/// certificate was valid, past any CA's removal).
async fn a_subscription_ends_when_its_connection_reaches_its_age(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start_with(
        backend,
        Options {
            max_connection_age_ms: 2_000,
            ..Options::default()
        },
    )
    .await?;
    // Each a new connection.
    let subscribe = || async {
        anyhow::Ok(
            harness
                .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
                .await?
                .subscribe(audit_pb::SubscribeRequest::default())
                .await?
                .into_inner(),
        )
    };
    let mut stream = subscribe().await?;
    let started = std::time::Instant::now();
    let ended = status_ending(&mut stream, Duration::from_secs(15)).await?;
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert_eq!(exception_of(&ended), "ServiceUnavailableException");
    assert!(ended.message().contains("maximum age"), "{ended:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // On a new connection, the subscription goes on.
    let mut again = subscribe().await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    alice.list_keys(pb::ListKeysRequest::default()).await?;
    let next = tokio::time::timeout(Duration::from_secs(10), again.message()).await??;
    assert!(next.is_some_and(|message| message.event.is_some()));
    Ok(())
}

/// A subscription lasts no longer than the permission it was opened with:
/// once the identity policies are reloaded without alice's
/// cloudtrail:Subscribe, her open stream ends with AccessDeniedException
/// (there is no revocation list; a policy change is how an operator cuts a
/// still-valid certificate off). bob, still allowed, keeps his.
async fn a_subscription_ends_when_its_permission_is_reloaded_away(
    backend: Backend,
) -> anyhow::Result<()> {
    let policy = |users: &str| {
        format!(
            "authorization:\n  reload_interval_ms: 100\n  identity_policies:\n    - name: subscribers\n      principals: [{users}]\n      policy: '{{\"Version\":\"2012-10-17\",\"Statement\":[{{\"Effect\":\"Allow\",\"Action\":\"*\",\"Resource\":\"*\"}}]}}'\n"
        )
    };
    let harness = Harness::start_with(
        backend,
        Options {
            authorization: policy(
                r#""arn:coffer:iam::*:user/alice", "arn:coffer:iam::*:user/bob""#,
            ),
            ..Options::default()
        },
    )
    .await?;
    let mut streams = Vec::new();
    for (account, user) in [(ACCOUNT_A, "alice"), (ACCOUNT_B, "bob")] {
        let mut audit = harness.audit_as(&Harness::user_id(account, user)).await?;
        streams.push(
            audit
                .subscribe(audit_pb::SubscribeRequest::default())
                .await?
                .into_inner(),
        );
    }
    harness.rewrite_authorization(&policy(r#""arn:coffer:iam::*:user/bob""#))?;
    let status = status_ending(&mut streams[0], Duration::from_secs(10)).await?;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(exception_of(&status), "AccessDeniedException");
    assert!(status.message().contains("user/alice"), "{status:?}");
    // bob's stream still carries his events.
    let mut bob = harness.keys_for(ACCOUNT_B, "bob").await?;
    let created = bob.create_key(pb::CreateKeyRequest::default()).await?;
    let wanted = request_id_of(created.metadata());
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = streams[1].message().await? {
            let record: Value = serde_json::from_str(
                &message
                    .event
                    .map(|event| event.cloud_trail_event)
                    .unwrap_or_default(),
            )?;
            if record["requestID"] == wanted.as_str() {
                return anyhow::Ok(true);
            }
        }
        anyhow::Ok(false)
    })
    .await??;
    assert!(seen, "bob's subscription ended");
    Ok(())
}

/// An open subscription does not hold a shutdown for its grace period: it
/// ends with UNAVAILABLE, and the service stops at once.
async fn a_shutdown_ends_open_subscriptions(backend: Backend) -> anyhow::Result<()> {
    let mut harness = Harness::start(backend).await?;
    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    let mut stream = audit
        .subscribe(audit_pb::SubscribeRequest::default())
        .await?
        .into_inner();
    let instance = harness
        .take_instance()
        .ok_or_else(|| anyhow::anyhow!("not running"))?;
    // The grace period is 30 s; the shutdown ends well within it.
    tokio::time::timeout(Duration::from_secs(10), instance.shutdown())
        .await
        .map_err(|_| anyhow::anyhow!("an open subscription held the shutdown"))?;
    // Events stored before the end (the Subscribe call's own) come first.
    let status = status_ending(&mut stream, Duration::from_secs(5)).await?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(exception_of(&status), "ServiceUnavailableException");
    assert!(status.message().contains("subscribe again"), "{status:?}");
    Ok(())
}

/// A subscriber that stopped reading still learns why its subscription
/// ended: at a shutdown the status waits behind the events already
/// buffered for it, and is not lost to a full buffer.
async fn a_subscriber_that_stopped_reading_still_learns_of_a_shutdown(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut harness = Harness::start(backend).await?;
    let mut stream = alices_decrypt_subscription(&harness).await?;
    // More of alice's events than her stream buffers (the channel, and the
    // client's HTTP/2 window), fewer than the live feed holds.
    let mut service = otlp_client(&harness, &Harness::service_id("keys")).await?;
    let padding = json!({"padding": "p".repeat(4096)});
    let mine = (0..1000)
        .map(|index| record_span(claimed_record(&format!("unread-{index}"), padding.clone())));
    service
        .export(otlp_request("coffer-secrets", AUDIT_SCOPE, mine.collect()))
        .await?;
    harness.audit_core()?.settled().await;
    let instance = harness
        .take_instance()
        .ok_or_else(|| anyhow::anyhow!("not running"))?;
    let shutdown = tokio::spawn(instance.shutdown());
    // The subscription ends while its client still reads nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut received = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.message()).await? {
            Ok(Some(_)) => received += 1,
            Ok(None) => {
                anyhow::bail!("the stream ended without saying why after {received} events")
            }
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("subscribe again"), "{status:?}");
    // What the live feed still held was not forwarded after the end.
    assert!(received < 1000, "{received}");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .map_err(|_| anyhow::anyhow!("the shutdown did not end"))??;
    Ok(())
}

/// A subscriber that stops reading falls behind while another account's
/// events pour in; the error it gets says so, without a count (which would
/// tell it how busy other accounts are).
async fn a_lagging_subscriber_learns_nothing_of_other_accounts(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut stream = alices_decrypt_subscription(&harness).await?;
    let record = |account: &str, index: usize, padding: usize| {
        json!({
            "requestParameters": {"padding": "p".repeat(padding)},
            "eventVersion": "1.11",
            "eventID": format!("lag-{account}-{index}"),
            "eventTime": "2026-11-22T10:00:00Z",
            "eventSource": "kms.coffer.internal",
            "eventName": "Decrypt",
            "readOnly": true,
            "userIdentity": {"type": "IAMUser", "userName": "alice", "accountId": account},
            "recipientAccountId": account,
        })
        .to_string()
    };
    let mut service = otlp_client(&harness, &Harness::service_id("keys")).await?;
    // Enough of alice's to fill what her stream buffers (the channel, and
    // the client's HTTP/2 window), then more of another account's than the
    // live feed holds.
    let mine = (0..1000).map(|index| record_span(record(ACCOUNT_A, index, 4096)));
    service
        .export(otlp_request("coffer-secrets", AUDIT_SCOPE, mine.collect()))
        .await?;
    harness.audit_core()?.settled().await;
    for batch in 0..3 {
        let theirs = (0..2000).map(|index| record_span(record(ACCOUNT_B, batch * 2000 + index, 0)));
        service
            .export(otlp_request(
                "coffer-secrets",
                AUDIT_SCOPE,
                theirs.collect(),
            ))
            .await?;
    }
    harness.audit_core()?.settled().await;
    let status = status_ending(&mut stream, Duration::from_secs(10)).await?;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(exception_of(&status), "ThrottlingException");
    assert!(status.message().contains("fell behind"), "{status:?}");
    assert!(
        !status.message().chars().any(|c| c.is_ascii_digit()),
        "{status:?}"
    );
    Ok(())
}

/// An exporter keeps its connection open for as long as it runs; an
/// export on it after its certificate has expired is refused, as an API
/// call on such a connection is, and stores nothing.
async fn an_exporters_connection_does_not_outlive_its_certificate(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let identity = harness.short_lived_identity(
        &Harness::service_id("keys"),
        std::time::Duration::from_secs(4),
    )?;
    let mut exporter = otlp_client_of(&harness, &identity).await?;
    let export = |index: usize| {
        otlp_request(
            "coffer-keys",
            AUDIT_SCOPE,
            vec![record_span(claimed_record(
                &format!("expiring-{index}"),
                json!({}),
            ))],
        )
    };
    exporter.export(export(1)).await?;
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let status = exporter
        .export(export(2))
        .await
        .expect_err("an export on an expired certificate's connection was taken");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    harness.audit_core()?.settled().await;
    let stored: Vec<String> = harness
        .audit_core()?
        .store()
        .lookup(&coffer_audit::store::LookupQuery::everything(100))
        .await?
        .into_iter()
        .filter(|event| event.event_name == "Decrypt")
        .map(|event| event.event_id)
        .collect();
    assert_eq!(stored, ["expiring-1"]);
    Ok(())
}

fn otlp_request(service_name: &str, scope: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_attribute("service.name", service_name.to_owned())],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: scope.to_owned(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn claimed_record(event_id: &str, request_parameters: Value) -> String {
    json!({
        "eventVersion": "1.11",
        "eventID": event_id,
        "eventTime": "2026-11-22T10:00:00Z",
        "eventSource": "kms.coffer.internal",
        "eventName": "Decrypt",
        "readOnly": true,
        "userIdentity": {"type": "IAMUser", "userName": "alice", "accountId": ACCOUNT_A},
        "recipientAccountId": ACCOUNT_A,
        "requestParameters": request_parameters,
        "resources": [{"ARN": "arn:coffer:kms:eu-west-1:111122223333:key/k", "accountId": ACCOUNT_A, "type": "AWS::KMS::Key"}],
    })
    .to_string()
}

/// Alice's subscription to Decrypt events.
async fn alices_decrypt_subscription(
    harness: &Harness,
) -> anyhow::Result<tonic::Streaming<audit_pb::SubscribeResponse>> {
    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    Ok(audit
        .subscribe(audit_pb::SubscribeRequest {
            event_pattern: r#"{"detail":{"eventName":["Decrypt"]}}"#.into(),
        })
        .await?
        .into_inner())
}

/// The status a Subscribe stream ends with, past the events before it;
/// each message is waited for no longer than `wait`.
async fn status_ending(
    stream: &mut tonic::Streaming<audit_pb::SubscribeResponse>,
    wait: Duration,
) -> anyhow::Result<tonic::Status> {
    loop {
        match tokio::time::timeout(wait, stream.message()).await? {
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("the stream ended without saying why"),
            Err(status) => return Ok(status),
        }
    }
}

/// The first page of LookupEvents by one attribute.
async fn events_by(
    audit: &mut audit_pb::audit_client::AuditClient<tonic::transport::Channel>,
    attribute_key: &str,
    attribute_value: &str,
) -> anyhow::Result<Vec<audit_pb::Event>> {
    Ok(audit
        .lookup_events(audit_pb::LookupEventsRequest {
            lookup_attributes: vec![audit_pb::LookupAttribute {
                attribute_key: attribute_key.into(),
                attribute_value: attribute_value.into(),
            }],
            ..Default::default()
        })
        .await?
        .into_inner()
        .events)
}

/// A span carrying an audit record, as a Coffer service exports it.
fn record_span(record: String) -> Span {
    Span {
        trace_id: vec![7; 16],
        span_id: vec![8; 8],
        name: "Decrypt".into(),
        attributes: vec![string_attribute(RECORD_ATTRIBUTE, record)],
        ..Default::default()
    }
}

/// An ordinary library's tracing span, as any OTLP client sends.
fn plain_tracing_export() -> ExportTraceServiceRequest {
    otlp_request(
        "coffer-keys",
        "some.library",
        vec![Span {
            name: "GET /".into(),
            ..Default::default()
        }],
    )
}

async fn otlp_client(
    harness: &Harness,
    spiffe_id: &str,
) -> anyhow::Result<TraceServiceClient<tonic::transport::Channel>> {
    otlp_client_of(harness, &harness.identity(spiffe_id)?).await
}

/// An OTLP client presenting `identity`.
async fn otlp_client_of(
    harness: &Harness,
    identity: &coffer_platform::pki::IssuedIdentity,
) -> anyhow::Result<TraceServiceClient<tonic::transport::Channel>> {
    let tls = ClientTls::from_pem(
        &harness.ca_pem()?,
        Some((identity.cert_pem.as_bytes(), identity.key_pem.as_bytes())),
    )?;
    Ok(
        TraceServiceClient::new(tls.connect(&harness.audit_addr()?, "localhost").await?)
            .max_encoding_message_size(8 * 1024 * 1024),
    )
}

async fn otlp_exports_too_large_once_decoded_are_refused_unread(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut service = otlp_client(&harness, &Harness::service_id("keys")).await?;
    let mut client = otlp_client(&harness, &Harness::user_id(ACCOUNT_A, "mallory")).await?;
    // 2.5 million empty spans: 5 MB on the wire, over a gigabyte decoded
    // (from a service, whose exports may be 16 MiB on the wire).
    let flood = otlp_request(
        "coffer-keys",
        "some.library",
        vec![Span::default(); 2_500_000],
    );
    let status = service
        .export(flood)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a flood of empty spans was accepted"))?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("once decoded"), "{status:?}");
    // From outside Coffer, 5 MiB is over the 4 MiB an export may be on
    // the wire, and 100,000 empty spans (200 KB, ~40 MB decoded) over the
    // 16 MiB it may take decoded.
    let large = otlp_request(
        "app",
        "some.library",
        vec![Span {
            name: "x".repeat(5 << 20),
            ..Default::default()
        }],
    );
    let status = client
        .export(large)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an outsider's 5 MB export was accepted"))?;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("at most 4194304 bytes"),
        "{status:?}"
    );
    let status = client
        .export(otlp_request(
            "app",
            "some.library",
            vec![Span::default(); 100_000],
        ))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a flood of empty spans was accepted"))?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("more than 16777216 bytes once decoded"),
        "{status:?}"
    );
    // The service goes on taking ordinary exports.
    client.export(plain_tracing_export()).await?;
    let core = harness.audit_core()?;
    core.settled().await;
    let all = core
        .store()
        .lookup(&coffer_audit::store::LookupQuery::everything(10))
        .await?;
    assert_eq!(all.len(), 1, "{all:#?}");
    Ok(())
}

/// `limits.max_message_bytes` bounds what callers send; it cannot make the
/// audit service unable to answer with the events it stores (the old way,
/// a 16 KiB limit made every lookup of a larger event fail, for good).
async fn a_small_message_limit_still_answers_large_events(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(
        backend,
        Options {
            max_message_bytes: 16 * 1024,
            ..Options::default()
        },
    )
    .await?;
    let mut outsider = otlp_client(&harness, &Harness::user_id(ACCOUNT_A, "mallory")).await?;
    let parameters: serde_json::Map<String, Value> = (0..25)
        .map(|field| (format!("p{field}"), json!("x".repeat(4096))))
        .collect();
    outsider
        .export(otlp_request(
            "coffer-keys",
            AUDIT_SCOPE,
            vec![record_span(claimed_record(
                "large",
                Value::Object(parameters),
            ))],
        ))
        .await?;
    harness.audit_core()?.settled().await;
    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    let events = events_by(&mut audit, "EventSource", "untrusted").await?;
    assert_eq!(events.len(), 1);
    assert!(events[0].cloud_trail_event.len() > 100 * 1024);
    Ok(())
}

/// Outsider records: one of 1 MiB (256 parameters of 4 KiB) is stored cut
/// to the record cap; six of 200 KiB, kept whole, are more than one gRPC
/// message holds, and LookupEvents pages through them by size (before, the
/// first page failed, and no NextToken led past it).
async fn oversized_records_are_cut_and_lookups_page_by_size(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut outsider = otlp_client(&harness, &Harness::user_id(ACCOUNT_A, "mallory")).await?;
    let spans = (0..7)
        .map(|index| {
            let fields = if index == 0 { 256 } else { 50 };
            let parameters: serde_json::Map<String, Value> = (0..fields)
                .map(|field| (format!("p{field}"), json!(format!("{index}").repeat(4096))))
                .collect();
            record_span(claimed_record(
                &format!("wide-{index}"),
                Value::Object(parameters),
            ))
        })
        .collect();
    outsider
        .export(otlp_request("coffer-keys", AUDIT_SCOPE, spans))
        .await?;
    harness.audit_core()?.settled().await;

    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    let mut seen = Vec::new();
    let mut next_token = String::new();
    let mut pages = 0;
    loop {
        let page = audit
            .lookup_events(audit_pb::LookupEventsRequest {
                lookup_attributes: vec![audit_pb::LookupAttribute {
                    attribute_key: "EventSource".into(),
                    attribute_value: "untrusted".into(),
                }],
                next_token: next_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        pages += 1;
        assert!(!page.events.is_empty());
        for event in &page.events {
            assert!(
                event.cloud_trail_event.len() <= 256 * 1024,
                "{} bytes",
                event.cloud_trail_event.len()
            );
            let record: Value = serde_json::from_str(&event.cloud_trail_event)?;
            assert_eq!(record["claimedEventSource"], "kms.coffer.internal");
            if record["claimedEventID"] == "wide-0" {
                assert!(
                    record["recordTruncated"]["originalBytes"].as_u64() > Some(1024 * 1024),
                    "{record:.200}"
                );
            } else {
                assert!(record.get("recordTruncated").is_none());
                assert_eq!(
                    record["requestParameters"].as_object().map(|p| p.len()),
                    Some(50)
                );
            }
            seen.push(event.event_id.clone());
        }
        if page.next_token.is_empty() {
            break;
        }
        next_token = page.next_token;
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 7, "every event once");
    assert!(
        pages >= 3,
        "{pages} pages: at most two records of 200 KiB a page"
    );
    let one = audit
        .get_event(audit_pb::GetEventRequest {
            event_id: seen[0].clone(),
        })
        .await?
        .into_inner();
    assert!(one.event.is_some());
    Ok(())
}

async fn otlp_spans_from_non_services_are_untrusted_and_hostile_values_are_capped(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let before_ms = coffer_platform::clock::Clock::now_millis(&coffer_platform::clock::SystemClock);
    let hostile = json!({
        "big": "x".repeat(1024 * 1024),
        "escapes": "line\nbreak \"quoted\" \u{1b}[31mred\u{1b}[0m",
    });
    let forged_id = "forged-0001";
    // An ordinary client claims to be the keys service.
    let mut outsider = otlp_client(&harness, &Harness::user_id(ACCOUNT_A, "mallory")).await?;
    outsider
        .export(otlp_request(
            "coffer-keys",
            AUDIT_SCOPE,
            vec![record_span(claimed_record(forged_id, hostile.clone()))],
        ))
        .await?;
    // And sends a plain tracing span too.
    outsider
        .export(otlp_request(
            "coffer-keys",
            "some.library",
            vec![Span {
                name: "GET /".into(),
                start_time_unix_nano: 1_700_000_000_000_000_000,
                attributes: vec![string_attribute("http.target", "/\n\u{1b}[2J".into())],
                ..Default::default()
            }],
        ))
        .await?;
    // A Coffer service sends a record with the same (claimed) event id.
    let mut service = otlp_client(&harness, &Harness::service_id("keys")).await?;
    service
        .export(otlp_request(
            "coffer-secrets",
            AUDIT_SCOPE,
            vec![record_span(claimed_record(forged_id, hostile))],
        ))
        .await?;

    let core = harness.audit_core()?;
    core.settled().await;
    let store = core.store().clone();
    let all = store
        .lookup(&coffer_audit::store::LookupQuery::everything(100))
        .await?;
    assert_eq!(all.len(), 3, "{all:#?}");
    let untrusted: Vec<_> = all.iter().filter(|event| !event.trusted).collect();
    assert_eq!(untrusted.len(), 2);
    for event in &untrusted {
        assert_eq!(event.event_source, "untrusted");
        assert_eq!(event.username.as_deref(), Some("untrusted"));
        // Filed in the sender's account, whatever account it names.
        assert_eq!(event.account_id.as_deref(), Some(ACCOUNT_A));
        assert_ne!(
            event.event_id, forged_id,
            "an untrusted event never takes a claimed id"
        );
        assert!(!event.record.contains('\n'), "one line");
        let record: Value = serde_json::from_str(&event.record)?;
        assert_eq!(record["trusted"], false);
        // The resources it names are claims, not what the event acted on.
        assert!(record.get("resources").is_none(), "{record}");
        assert_eq!(record["recipientAccountId"], ACCOUNT_A);
        assert_eq!(
            record["submittedBy"],
            Harness::user_id(ACCOUNT_A, "mallory").as_str()
        );
        // Filed when it arrived (to the second), whatever time it claims.
        assert!(
            (before_ms / 1000 * 1000..=before_ms + 60_000).contains(&event.event_time_ms),
            "filed at {} (test began at {before_ms})",
            event.event_time_ms
        );
        assert!(
            ["2026-11-22T10:00:00Z", "2023-11-14T22:13:20Z"]
                .contains(&record["claimedEventTime"].as_str().unwrap_or_default()),
            "{record}"
        );
    }
    let claims = untrusted
        .iter()
        .filter_map(|event| serde_json::from_str::<Value>(&event.record).ok())
        .filter(|record| record["claimedResources"][0]["type"] == "AWS::KMS::Key")
        .count();
    assert_eq!(
        claims, 1,
        "the forged audit record's resources, kept as claims"
    );
    // The trusted one kept its id, and was not pre-empted by the forgery.
    let trusted = store
        .get_event(forged_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the service's event is missing"))?;
    assert!(trusted.trusted);
    assert_eq!(trusted.event_source, "kms.coffer.internal");
    for event in [&trusted, untrusted[0], untrusted[1]] {
        assert!(
            event.record.len() < 64 * 1024,
            "{} bytes",
            event.record.len()
        );
        assert!(
            !event.record.contains('\u{1b}'),
            "escape characters are escaped"
        );
    }
    let record: Value = serde_json::from_str(&trusted.record)?;
    let big = record["requestParameters"]["big"]
        .as_str()
        .unwrap_or_default();
    assert!(
        big.ends_with("bytes truncated]"),
        "capped: {} bytes",
        big.len()
    );
    assert_eq!(
        record["requestParameters"]["escapes"],
        "line\nbreak \"quoted\" \u{1b}[31mred\u{1b}[0m"
    );
    // Lookups by the claimed source or user never return the forgery.
    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    let by_source = events_by(&mut audit, "Username", "alice").await?;
    assert!(by_source.iter().all(|event| event.event_id == forged_id));
    let outsiders = audit
        .get_event(audit_pb::GetEventRequest {
            event_id: untrusted[0].event_id.clone(),
        })
        .await?
        .into_inner()
        .event
        .ok_or_else(|| anyhow::anyhow!("no event"))?;
    assert!(outsiders.resources.is_empty(), "{outsiders:?}");
    // Another account's principals never see what mallory sent.
    let mut other = harness
        .audit_as(&Harness::user_id(ACCOUNT_B, "alice"))
        .await?;
    let status = other
        .get_event(audit_pb::GetEventRequest {
            event_id: untrusted[0].event_id.clone(),
        })
        .await
        .expect_err("another account read an outsider's event");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let seen = events_by(&mut other, "EventSource", "untrusted").await?;
    assert!(seen.is_empty(), "{seen:?}");
    // A client whose certificate names no Coffer identity is refused.
    let mut stranger = otlp_client(
        &harness,
        &format!("spiffe://elsewhere.test/account/{ACCOUNT_A}/user/mallory"),
    )
    .await?;
    let status = stranger
        .export(plain_tracing_export())
        .await
        .expect_err("a stranger's spans were accepted");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("another trust domain"),
        "{status:?}"
    );
    core.settled().await;
    let outsiders = store
        .lookup(&coffer_audit::store::LookupQuery::everything(100))
        .await?
        .into_iter()
        .filter(|event| !event.trusted)
        .count();
    assert_eq!(outsiders, 2, "nothing of the stranger's was stored");

    // With `untrusted_spans: reject`, an outsider's spans are refused.
    let rejecting = Harness::start_with(
        Backend::Sqlite,
        Options {
            audit_extra: "  untrusted_spans: reject\n".into(),
            ..Options::default()
        },
    )
    .await?;
    let mut outsider = otlp_client(&rejecting, &Harness::user_id(ACCOUNT_A, "mallory")).await?;
    let answer = outsider
        .export(otlp_request(
            "coffer-keys",
            AUDIT_SCOPE,
            vec![record_span(claimed_record("forged-0002", json!({})))],
        ))
        .await?
        .into_inner();
    assert_eq!(answer.partial_success.map(|p| p.rejected_spans), Some(1));
    assert!(rejecting.audit_events().await?.is_empty());
    Ok(())
}

async fn otlp_outsiders_cannot_fail_a_shared_write_or_speak_for_another(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut outsider = otlp_client(&harness, &Harness::user_id(ACCOUNT_A, "mallory")).await?;
    // A NUL, which Postgres text cannot hold, in a span's name and in a
    // claimed record's event name and trace id: stored, not a failed write
    // (which would fail every export sharing it).
    let record = json!({
        "eventVersion": "1.11",
        "eventID": "claimed-nul",
        "eventTime": "2026-11-22T10:00:00Z",
        "eventSource": "kms.coffer.internal",
        "eventName": "De\u{0}crypt",
        "traceId": "t\u{0}",
        "userIdentity": {"type": "IAMUser", "userName": "alice", "accountId": ACCOUNT_A},
        "sourceIPAddress": "10.0.0.1",
        "userAgent": "aws-cli/2",
    })
    .to_string();
    let claimed = otlp_request(
        "coffer-keys",
        AUDIT_SCOPE,
        vec![Span {
            name: "Decrypt".into(),
            attributes: vec![string_attribute(RECORD_ATTRIBUTE, record)],
            ..Default::default()
        }],
    );
    let ordinary = otlp_request(
        &"s".repeat(1000),
        "some.library",
        vec![Span {
            name: "GET\u{0}/".into(),
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            ..Default::default()
        }],
    );
    // Each sent twice, as an exporter retries one whose answer it lost:
    // filed once (the lookups below find one of each).
    for request in [&claimed, &claimed, &ordinary, &ordinary] {
        outsider.export(request.clone()).await?;
    }
    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    let by_name = |name: &str| audit_pb::LookupEventsRequest {
        lookup_attributes: vec![audit_pb::LookupAttribute {
            attribute_key: "EventName".into(),
            attribute_value: name.into(),
        }],
        ..Default::default()
    };
    let found = audit
        .lookup_events(by_name("De\u{0}crypt"))
        .await?
        .into_inner()
        .events;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].event_name, "De\u{FFFD}crypt");
    let record: Value = serde_json::from_str(&found[0].cloud_trail_event)?;
    assert_eq!(record["eventName"], "De\u{0}crypt", "the record keeps it");
    // What it says of who called, and from where, are claims only.
    for field in ["userIdentity", "sourceIPAddress", "userAgent"] {
        assert!(record.get(field).is_none(), "{field}: {record}");
    }
    assert_eq!(record["claimedUserIdentity"]["userName"], "alice");
    assert_eq!(record["claimedSourceIPAddress"], "10.0.0.1");
    assert_eq!(record["claimedUserAgent"], "aws-cli/2");
    let span = audit
        .lookup_events(by_name("GET\u{0}/"))
        .await?
        .into_inner()
        .events;
    assert_eq!(span.len(), 1, "{span:?}");
    let record: Value = serde_json::from_str(&span[0].cloud_trail_event)?;
    assert_eq!(record["claimedEventSource"], "s".repeat(256));

    // A name that no compression shortens (1,900 random CJK characters,
    // 5,700 bytes): Postgres refuses an index entry over about 2,700 bytes,
    // which failed the write and every export sharing it. The lookup
    // columns hold its first 1,024 bytes, and a lookup by the whole name
    // still finds it.
    let mut state: u32 = 0x2545_f491;
    let wide_name: String = (0..1_900)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            char::from_u32(0x4e00 + (state >> 8) % 0x5000).unwrap_or('x')
        })
        .collect();
    outsider
        .export(otlp_request(
            "wide",
            "some.library",
            vec![Span {
                name: wide_name.clone(),
                ..Default::default()
            }],
        ))
        .await?;
    let wide = audit
        .lookup_events(by_name(&wide_name))
        .await?
        .into_inner()
        .events;
    assert_eq!(wide.len(), 1, "{wide:?}");
    assert!(
        wide_name.starts_with(&wide[0].event_name) && wide[0].event_name.len() == 1_023,
        "{} bytes",
        wide[0].event_name.len()
    );

    // An export carries at most 10,000 spans; the rest are rejected.
    let many = (0..10_001)
        .map(|n| Span {
            name: format!("span-{n}"),
            ..Default::default()
        })
        .collect();
    let answer = outsider
        .export(otlp_request("many", "some.library", many))
        .await?
        .into_inner()
        .partial_success
        .ok_or_else(|| anyhow::anyhow!("no partial success"))?;
    assert_eq!(answer.rejected_spans, 1);
    assert!(
        answer.error_message.contains("at most 10000 spans"),
        "{answer:?}"
    );
    let last = audit
        .lookup_events(by_name("span-9999"))
        .await?
        .into_inner()
        .events;
    assert_eq!(last.len(), 1);
    let past = audit
        .lookup_events(by_name("span-10000"))
        .await?
        .into_inner()
        .events;
    assert!(past.is_empty(), "{past:?}");
    Ok(())
}

/// A Coffer service's certificate makes its records trusted events, but
/// only as itself: a record naming another service's event source is
/// rejected, and a correction (`answerWithheld`) cannot rewrite another
/// service's event.
async fn a_service_speaks_for_itself_only(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut alice).await?;
    encrypt(&mut alice, &key).await?;
    let events = harness.audit_events().await?;
    let original = events
        .iter()
        .find(|event| event["eventName"] == "Encrypt")
        .context("no Encrypt event")?
        .clone();
    let event_id = original["eventID"].as_str().context("no eventID")?;

    let mut secrets = otlp_client(&harness, &Harness::service_id("secrets")).await?;
    let as_keys = secrets
        .export(otlp_request(
            "coffer-secrets",
            AUDIT_SCOPE,
            vec![record_span(claimed_record("as-keys", json!({})))],
        ))
        .await?
        .into_inner()
        .partial_success
        .context("the record was accepted")?;
    assert_eq!(as_keys.rejected_spans, 1);
    assert!(
        as_keys
            .error_message
            .contains("its own event source (secretsmanager.…)"),
        "{as_keys:?}"
    );
    let mut correction = original.clone();
    correction["eventSource"] = json!("secretsmanager.coffer.internal");
    correction["answerWithheld"] = json!(true);
    correction["errorCode"] = json!("ServiceUnavailableException");
    let answer = secrets
        .export(otlp_request(
            "coffer-secrets",
            AUDIT_SCOPE,
            vec![record_span(correction.to_string())],
        ))
        .await?
        .into_inner();
    assert_eq!(answer.partial_success, None);

    let after = harness.audit_events().await?;
    let stored = after
        .iter()
        .find(|event| event["eventID"] == event_id)
        .context("the event is gone")?;
    assert_eq!(stored, &original, "the keys service's event is unchanged");
    assert!(
        after.iter().all(|event| event["eventID"] != "as-keys"),
        "{after:?}"
    );
    Ok(())
}

/// Exports arriving together share one write (group commit). One the store
/// refuses fails alone: the others that shared its write are written again
/// on their own and acknowledged. Postgres only: on SQLite an export is
/// acknowledged once it is in the ingest journal, before the store sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_the_store_refuses_fails_alone_on_postgres() -> anyhow::Result<()> {
    match coffer_tests::postgres_backend().await {
        Some(backend) => an_export_the_store_refuses_fails_alone(backend).await,
        None => Ok(()),
    }
}

async fn an_export_the_store_refuses_fails_alone(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    harness
        .refuse_writes_where("audit", "events", "INSERT", "event_name", "poison")
        .await?;
    let outsider = otlp_client(&harness, &Harness::user_id(ACCOUNT_A, "mallory")).await?;
    let mut exports = tokio::task::JoinSet::new();
    for index in 0..32 {
        let mut outsider = outsider.clone();
        let name = if index == 16 {
            "poison".to_owned()
        } else {
            format!("fine-{index}")
        };
        exports.spawn(async move {
            let request = otlp_request(
                "many",
                "some.library",
                vec![Span {
                    name: name.clone(),
                    ..Default::default()
                }],
            );
            (name, outsider.export(request).await.map(drop))
        });
    }
    let mut outcomes = BTreeMap::new();
    while let Some(joined) = exports.join_next().await {
        let (name, outcome) = joined?;
        outcomes.insert(name, outcome.map_err(|status| status.code()));
    }
    let failed: Vec<(&String, &Result<(), Code>)> = outcomes
        .iter()
        .filter(|(_, outcome)| outcome.is_err())
        .collect();
    assert_eq!(
        failed,
        [(&"poison".to_owned(), &Err(Code::Unavailable))],
        "only the refused export fails"
    );
    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    let stored = audit
        .lookup_events(audit_pb::LookupEventsRequest {
            lookup_attributes: vec![audit_pb::LookupAttribute {
                attribute_key: "EventSource".into(),
                attribute_value: "untrusted".into(),
            }],
            max_results: Some(50),
            ..Default::default()
        })
        .await?
        .into_inner()
        .events;
    assert_eq!(stored.len(), 31, "{stored:?}");
    Ok(())
}

/// Of calls racing for the last place under a quota, exactly one gets it
/// and the others answer `LimitExceededException`.
async fn exactly_one_wins<T: Send + 'static>(
    mut racing: tokio::task::JoinSet<Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<()> {
    let mut outcomes = Vec::new();
    while let Some(outcome) = racing.join_next().await {
        outcomes.push(outcome?.map(drop));
    }
    assert_eq!(outcomes.iter().filter(|outcome| outcome.is_ok()).count(), 1);
    for outcome in outcomes.into_iter().filter(Result::is_err) {
        assert_error(outcome, Code::ResourceExhausted, "LimitExceededException");
    }
    Ok(())
}

/// Alice's audit client, once she has a rule `creates` matching her
/// CreateKey events.
async fn alice_with_creates_rule(
    harness: &Harness,
) -> anyhow::Result<audit_pb::audit_client::AuditClient<tonic::transport::Channel>> {
    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    audit
        .put_rule(audit_pb::PutRuleRequest {
            name: "creates".into(),
            event_pattern: r#"{"detail":{"eventName":["CreateKey"]}}"#.into(),
            ..Default::default()
        })
        .await?;
    Ok(audit)
}

/// The signing secret of the webhook targets of these tests.
const WEBHOOK_SECRET: &[u8] = b"0123456789abcdef-webhook-secret";

/// A webhook target calling `endpoint`, retried `retries` times within
/// `max_age_s` seconds.
fn webhook_target(id: &str, endpoint: String, retries: i32, max_age_s: i32) -> audit_pb::Target {
    audit_pb::Target {
        id: id.into(),
        https: Some(audit_pb::HttpsTarget { endpoint }),
        retry_policy: Some(audit_pb::RetryPolicy {
            maximum_retry_attempts: Some(retries),
            maximum_event_age_in_seconds: Some(max_age_s),
        }),
        signing_secret: WEBHOOK_SECRET.to_vec(),
    }
}

/// An HTTPS receiver that answers its `n`th request (from 0) with the status
/// `answer(n)`, recording what it received and when.
struct Receiver {
    addr: std::net::SocketAddr,
    received: Arc<std::sync::Mutex<Vec<(http::HeaderMap, String, u16)>>>,
    arrivals: Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
}

async fn start_receiver(harness: &Harness, answer: fn(usize) -> u16) -> anyhow::Result<Receiver> {
    start_receiver_asking(harness, answer, None).await
}

/// [`start_receiver`], answering every request it does not take with
/// `Retry-After: {retry_after}` when one is given.
async fn start_receiver_asking(
    harness: &Harness,
    answer: fn(usize) -> u16,
    retry_after: Option<&'static str>,
) -> anyhow::Result<Receiver> {
    use http_body_util::BodyExt as _;
    use rustls_pki_types::pem::PemObject as _;
    let identity = harness.localhost_identity()?;
    let certificates =
        rustls_pki_types::CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certificates, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = received.clone();
    let times = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let log = log.clone();
            let times = times.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        let times = times.clone();
                        async move {
                            times
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(std::time::Instant::now());
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                            let status = answer(log.len());
                            log.push((
                                parts.headers,
                                String::from_utf8_lossy(&body).into_owned(),
                                status,
                            ));
                            let mut response = http::Response::builder().status(status);
                            if let Some(wait) = retry_after.filter(|_| status >= 300) {
                                response = response.header(http::header::RETRY_AFTER, wait);
                            }
                            response.body(http_body_util::Full::new(hyper::body::Bytes::new()))
                        }
                    },
                );
                let _served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(Receiver {
        addr,
        received,
        arrivals,
    })
}

/// Every attempt slot of account A held by deliveries to the rule
/// "creates"'s target "stalled", whose endpoint takes connections and never
/// answers, until [`StalledSlots::release`].
struct StalledSlots {
    held: Arc<std::sync::Mutex<Option<Vec<tokio::net::TcpStream>>>>,
}

impl StalledSlots {
    /// Closes the held connections, and from then on every new one at once:
    /// the stalled deliveries fail, for good.
    fn release(&self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Puts "stalled" and `waiting` on the rule "creates", then creates 20 keys
/// as alice: the stalled target's first deliveries take every attempt slot
/// of the account, and the deliveries to `waiting` of the last events wait
/// for one.
async fn stall_every_slot(
    harness: &Harness,
    audit: &mut audit_pb::audit_client::AuditClient<tonic::transport::Channel>,
    waiting: audit_pb::Target,
) -> anyhow::Result<StalledSlots> {
    let stalling = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stalled_port = stalling.local_addr()?.port();
    let held = Arc::new(std::sync::Mutex::new(Some(Vec::new())));
    let holder = held.clone();
    tokio::spawn(async move {
        while let Ok((connection, _)) = stalling.accept().await {
            if let Some(connections) = holder.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                connections.push(connection);
            }
        }
    });
    audit
        .put_targets(audit_pb::PutTargetsRequest {
            rule: "creates".into(),
            targets: vec![
                webhook_target(
                    "stalled",
                    format!("https://localhost:{stalled_port}/hooks"),
                    0,
                    60,
                ),
                waiting,
            ],
        })
        .await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    for _ in 0..20 {
        new_key(&mut alice).await?;
    }
    let held_count = || {
        held.lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, Vec::len)
    };
    wait_for("every slot held", Duration::from_secs(10), || async {
        Ok(held_count() >= webhook_slots())
    })
    .await?;
    Ok(StalledSlots { held })
}

/// A delivery waiting for an attempt slot is dropped when its target is
/// removed meanwhile: every attempt, the first included, checks that its
/// target is still on its rule. Before, only retries did, and a first
/// attempt called the old endpoint with the old secret.
async fn a_delivery_waiting_for_a_slot_stops_when_its_target_is_removed(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut audit = alice_with_creates_rule(&harness).await?;
    let fresh = start_receiver(&harness, |_| 200).await?;
    let endpoint = format!("https://localhost:{}/hooks", fresh.addr.port());
    let stalled = stall_every_slot(
        &harness,
        &mut audit,
        webhook_target("fresh", endpoint, 0, 60),
    )
    .await?;
    let delivered = || fresh.received.lock().map(|log| log.len()).unwrap_or(0);
    let before = delivered();
    assert!(before < 20, "no delivery to the fresh target waited");
    audit
        .remove_targets(audit_pb::RemoveTargetsRequest {
            rule: "creates".into(),
            ids: vec!["fresh".into()],
        })
        .await?;
    stalled.release();
    wait_for(
        "the stalled deliveries' failures",
        Duration::from_secs(20),
        || {
            let mut audit = audit.clone();
            async move {
                Ok(audit
                    .list_failed_deliveries(audit_pb::ListFailedDeliveriesRequest {
                        rule: "creates".into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .failed_deliveries
                    .len()
                    >= 20)
            }
        },
    )
    .await?;
    assert_eq!(delivered(), before, "a removed target was called");
    Ok(())
}

/// The rule "creates" with every attempt slot held (see
/// [`stall_every_slot`]) and deliveries waiting for the target "moving",
/// which calls `old`; `new` is another receiver to move it to.
struct MovingTarget {
    harness: Harness,
    audit: audit_pb::audit_client::AuditClient<tonic::transport::Channel>,
    old: Receiver,
    new: Receiver,
    stalled: StalledSlots,
}

impl MovingTarget {
    async fn start(backend: Backend) -> anyhow::Result<Self> {
        let harness = Harness::start(backend).await?;
        let mut audit = alice_with_creates_rule(&harness).await?;
        let old = start_receiver(&harness, |_| 200).await?;
        let new = start_receiver(&harness, |_| 200).await?;
        let moving = webhook_target("moving", receiver_endpoint(&old), 0, 60);
        let stalled = stall_every_slot(&harness, &mut audit, moving).await?;
        Ok(Self {
            harness,
            audit,
            old,
            new,
            stalled,
        })
    }
}

/// Where `receiver` takes webhooks.
fn receiver_endpoint(receiver: &Receiver) -> String {
    format!("https://localhost:{}/hooks", receiver.addr.port())
}

/// How many requests `receiver` has had.
fn received_count(receiver: &Receiver) -> usize {
    receiver.received.lock().map(|log| log.len()).unwrap_or(0)
}

/// A delivery waiting for an attempt slot while its target is changed (a
/// new endpoint, a rotated secret) goes to the target as it is now, signed
/// with the new secret; before, it was dropped without a trace.
async fn a_delivery_waiting_while_its_target_changes_goes_where_it_points_now(
    backend: Backend,
) -> anyhow::Result<()> {
    let MovingTarget {
        harness: _harness,
        mut audit,
        old,
        new,
        stalled,
    } = MovingTarget::start(backend).await?;
    let before = received_count(&old);
    assert!(before < 20, "no delivery to the moving target waited");
    let rotated = b"a-rotated-webhook-signing-secret".to_vec();
    audit
        .put_targets(audit_pb::PutTargetsRequest {
            rule: "creates".into(),
            targets: vec![audit_pb::Target {
                signing_secret: rotated.clone(),
                ..webhook_target("moving", receiver_endpoint(&new), 1, 60)
            }],
        })
        .await?;
    stalled.release();
    wait_for(
        "the waiting deliveries, at the new endpoint",
        Duration::from_secs(20),
        || async { Ok(received_count(&new) >= 20 - before) },
    )
    .await?;
    assert_eq!(received_count(&new), 20 - before);
    assert_eq!(
        received_count(&old),
        before,
        "the old endpoint was called after the change"
    );
    for (headers, body, _) in new
        .received
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
    {
        let timestamp: i64 = headers[coffer_audit::webhook::TIMESTAMP_HEADER]
            .to_str()?
            .parse()?;
        assert_eq!(
            headers[coffer_audit::webhook::SIGNATURE_HEADER].to_str()?,
            format!(
                "v1={}",
                coffer_audit::webhook::sign(&rotated, timestamp, body)
            )
        );
    }
    Ok(())
}

/// A delivery waiting for an attempt slot while its rule is deleted and
/// made again under its name, with a target of the same id, is dropped:
/// the new rule is another rule, which never matched the event.
async fn a_delivery_waiting_while_its_rule_is_made_again_is_dropped(
    backend: Backend,
) -> anyhow::Result<()> {
    let MovingTarget {
        harness,
        mut audit,
        new,
        stalled,
        ..
    } = MovingTarget::start(backend).await?;
    audit
        .delete_rule(audit_pb::DeleteRuleRequest {
            name: "creates".into(),
            force: true,
        })
        .await?;
    let mut audit = alice_with_creates_rule(&harness).await?;
    audit
        .put_targets(audit_pb::PutTargetsRequest {
            rule: "creates".into(),
            targets: vec![webhook_target("moving", receiver_endpoint(&new), 0, 60)],
        })
        .await?;
    stalled.release();
    // The waiting deliveries are attempted (or not) at once; a moment for
    // any to land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        received_count(&new),
        0,
        "the new rule's target got the old rule's deliveries"
    );
    Ok(())
}

/// A RemoveTargets that fails partway (the store refuses the second
/// target) fails, but the target it did remove is no longer sent to.
async fn targets_removed_before_a_failure_are_no_longer_sent_to(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut audit = alice_with_creates_rule(&harness).await?;
    let removed = start_receiver(&harness, |_| 200).await?;
    let kept = start_receiver(&harness, |_| 200).await?;
    let endpoint =
        |receiver: &Receiver| format!("https://localhost:{}/hooks", receiver.addr.port());
    audit
        .put_targets(audit_pb::PutTargetsRequest {
            rule: "creates".into(),
            targets: vec![
                webhook_target("removed", endpoint(&removed), 0, 60),
                webhook_target("kept", endpoint(&kept), 0, 60),
            ],
        })
        .await?;
    harness
        .refuse_writes_where("audit", "rule_targets", "DELETE", "target_id", "kept")
        .await?;
    let outcome = audit
        .remove_targets(audit_pb::RemoveTargetsRequest {
            rule: "creates".into(),
            ids: vec!["removed".into(), "kept".into()],
        })
        .await;
    assert_error(outcome, Code::Internal, "InternalFailure");
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    new_key(&mut alice).await?;
    let count = |receiver: &Receiver| receiver.received.lock().map(|log| log.len()).unwrap_or(0);
    wait_for(
        "the kept target's delivery",
        Duration::from_secs(10),
        || async { Ok(count(&kept) == 1) },
    )
    .await?;
    // Both deliveries leave together; a moment for the other to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&removed), 0, "a removed target was sent to");
    Ok(())
}

/// Attempt slots an account has (`MAX_ATTEMPTS_PER_ACCOUNT`).
fn webhook_slots() -> usize {
    coffer_audit::webhook::MAX_ATTEMPTS_PER_ACCOUNT
}

/// A `Retry-After` answer is waited for: the next attempt comes no sooner,
/// and when the wait would outlast the event's maximum age there is none,
/// the failure saying why.
async fn webhook_retries_wait_as_the_endpoint_asks(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut audit = alice_with_creates_rule(&harness).await?;
    // Asks for a second, then takes the event.
    let patient =
        start_receiver_asking(&harness, |n| if n == 0 { 429 } else { 200 }, Some("1")).await?;
    // Asks for an hour, past the event's maximum age of a minute.
    let busy = start_receiver_asking(&harness, |_| 503, Some("3600")).await?;
    let target =
        |id: &str, port: u16| webhook_target(id, format!("https://localhost:{port}/hooks"), 3, 60);
    audit
        .put_targets(audit_pb::PutTargetsRequest {
            rule: "creates".into(),
            targets: vec![
                target("patient", patient.addr.port()),
                target("busy", busy.addr.port()),
            ],
        })
        .await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    new_key(&mut alice).await?;

    let arrivals = || {
        patient
            .arrivals
            .lock()
            .map(|times| times.clone())
            .unwrap_or_default()
    };
    wait_for("two deliveries", Duration::from_secs(20), || async {
        Ok(arrivals().len() >= 2)
    })
    .await?;
    let times = arrivals();
    assert!(
        times[1] - times[0] >= Duration::from_secs(1),
        "retried after {:?}",
        times[1] - times[0]
    );
    wait_for("the failure", Duration::from_secs(20), || {
        let mut audit = audit.clone();
        async move {
            Ok(!audit
                .list_failed_deliveries(audit_pb::ListFailedDeliveriesRequest {
                    rule: "creates".into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .failed_deliveries
                .is_empty())
        }
    })
    .await?;
    let failures = audit
        .list_failed_deliveries(audit_pb::ListFailedDeliveriesRequest {
            rule: "creates".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .failed_deliveries;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].target_id, "busy");
    assert_eq!(failures[0].attempts, 1);
    assert_eq!(
        failures[0].last_error,
        "the endpoint answered HTTP 503, asking for a retry after 3600 s, past the event's maximum age"
    );
    assert_eq!(busy.arrivals.lock().map(|times| times.len()).ok(), Some(1));
    Ok(())
}

/// With `audit.webhook_private_endpoints` off, a target whose host resolves
/// to loopback (or any non-public address) is never connected to: the
/// delivery fails at once with a message that says why, and the receiver
/// sees nothing. An account cannot make the service call its own network.
async fn webhooks_reach_no_private_address_unless_allowed(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(
        backend,
        Options {
            webhook_private_endpoints: false,
            ..Options::default()
        },
    )
    .await?;
    let receiver = start_receiver(&harness, |_| 200).await?;
    let mut audit = alice_with_creates_rule(&harness).await?;
    let port = receiver.addr.port();
    let target =
        |id: &str, host: &str| webhook_target(id, format!("https://{host}:{port}/hook"), 0, 60);
    audit
        .put_targets(audit_pb::PutTargetsRequest {
            rule: "creates".into(),
            targets: vec![
                target("by-name", "localhost"),
                target("by-address", "127.0.0.1"),
            ],
        })
        .await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    new_key(&mut alice).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let failures = loop {
        let failures = audit
            .list_failed_deliveries(audit_pb::ListFailedDeliveriesRequest {
                rule: "creates".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .failed_deliveries;
        if failures.len() >= 2 {
            break failures;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} failures recorded",
            failures.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut ids: Vec<&str> = failures.iter().map(|f| f.target_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["by-address", "by-name"]);
    for failure in &failures {
        assert!(
            failure.last_error.contains("non-public addresses")
                && failure
                    .last_error
                    .contains("audit.webhook_private_endpoints"),
            "{failure:?}"
        );
        assert_eq!(failure.attempts, 1, "{failure:?}");
    }
    assert!(
        receiver
            .received
            .lock()
            .map(|log| log.is_empty())
            .unwrap_or(false),
        "the receiver was reached"
    );
    Ok(())
}

async fn rules_deliver_signed_webhooks_with_retries_and_record_failures(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    // Bad patterns and names are refused with EventBridge's exceptions.
    assert_error(
        audit
            .put_rule(audit_pb::PutRuleRequest {
                name: "r1".into(),
                event_pattern: r#"{"detail":{"eventName":"Decrypt"}}"#.into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "InvalidEventPatternException",
    );
    assert_error(
        audit
            .put_rule(audit_pb::PutRuleRequest {
                name: "no spaces".into(),
                event_pattern: "{}".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert_error(
        audit
            .put_targets(audit_pb::PutTargetsRequest {
                rule: "missing".into(),
                targets: Vec::new(),
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    let rule_arn = audit
        .put_rule(audit_pb::PutRuleRequest {
            name: "decrypts".into(),
            event_pattern: r#"{"source":["coffer.kms"],"detail":{"eventName":["Decrypt"],"errorCode":[{"exists":false}]}}"#.into(),
            state: "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS".into(),
            description: "successful decrypts".into(),
        })
        .await?
        .into_inner()
        .rule_arn;
    assert_eq!(
        rule_arn,
        format!("arn:coffer:events:eu-west-1:{ACCOUNT_A}:rule/decrypts")
    );

    let described = audit
        .describe_rule(audit_pb::DescribeRuleRequest {
            name: "decrypts".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        described.state,
        "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS"
    );
    // A plain ENABLED rule leaves read-only management events (DescribeKey)
    // out, as in EventBridge; Coffer's cryptographic calls are data events.
    audit
        .put_rule(audit_pb::PutRuleRequest {
            name: "writes".into(),
            event_pattern: r#"{"detail":{"eventName":["CreateKey","DescribeKey","Decrypt"]}}"#
                .into(),
            ..Default::default()
        })
        .await?;
    let writes = start_receiver(&harness, |_| 200).await?;

    // Answers EventBridge retries, then success.
    let flaky = start_receiver(&harness, |n| [500, 429].get(n).copied().unwrap_or(200)).await?;
    // An answer it does not: the request itself is refused.
    let refusing = start_receiver(&harness, |_| 400).await?;
    let target = |id: &str, port: u16, retries: i32| {
        webhook_target(
            id,
            format!("https://localhost:{port}/hooks/coffer?x=1"),
            retries,
            600,
        )
    };
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    audit
        .put_targets(audit_pb::PutTargetsRequest {
            rule: "writes".into(),
            targets: vec![target("writes", writes.addr.port(), 0)],
        })
        .await?;
    audit
        .put_targets(audit_pb::PutTargetsRequest {
            rule: "decrypts".into(),
            targets: vec![
                target("flaky", flaky.addr.port(), 3),
                target("down", closed_port, 1),
                target("refusing", refusing.addr.port(), 3),
            ],
        })
        .await?;
    let listed = audit
        .list_targets_by_rule(audit_pb::ListTargetsByRuleRequest {
            rule: "decrypts".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .targets;
    assert_eq!(listed.len(), 3);
    assert_eq!(
        assert_error(
            audit
                .delete_rule(audit_pb::DeleteRuleRequest {
                    name: "decrypts".into(),
                    force: false
                })
                .await,
            Code::InvalidArgument,
            "ValidationException"
        )
        .message(),
        "Rule can't be deleted since it has targets."
    );

    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut alice).await?;
    alice
        .describe_key(pb::DescribeKeyRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await?;
    let blob = encrypt(&mut alice, &key)
        .await?
        .into_inner()
        .ciphertext_blob;
    let decrypted = alice
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            ..Default::default()
        })
        .await?;
    let decrypt_request = request_id_of(decrypted.metadata());

    // Two failures, then success: three attempts on the flaky target.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let count = flaky.received.lock().map(|log| log.len()).unwrap_or(0);
        if count >= 3 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {count} deliveries"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = flaky
        .received
        .lock()
        .map(|log| log.clone())
        .unwrap_or_default();
    assert_eq!(log.len(), 3, "no delivery after the success");
    let written: Vec<Value> = writes
        .received
        .lock()
        .map(|log| log.clone())
        .unwrap_or_default()
        .iter()
        .map(|(_, body, _)| serde_json::from_str(body))
        .collect::<Result<_, _>>()?;
    let written: BTreeSet<&str> = written
        .iter()
        .filter_map(|envelope| envelope["detail"]["eventName"].as_str())
        .collect();
    assert_eq!(written, BTreeSet::from(["CreateKey", "Decrypt"]));
    assert_eq!(
        log.iter().map(|(_, _, status)| *status).collect::<Vec<_>>(),
        vec![500, 429, 200]
    );
    for (headers, body, _) in &log {
        let envelope: Value = serde_json::from_str(body)?;
        assert_eq!(envelope["source"], "coffer.kms");
        assert_eq!(envelope["detail"]["eventName"], "Decrypt");
        assert_eq!(envelope["detail"]["requestID"], decrypt_request.as_str());
        let timestamp: i64 = headers[coffer_audit::webhook::TIMESTAMP_HEADER]
            .to_str()?
            .parse()?;
        let expected = format!(
            "v1={}",
            coffer_audit::webhook::sign(WEBHOOK_SECRET, timestamp, body)
        );
        assert_eq!(
            headers[coffer_audit::webhook::SIGNATURE_HEADER].to_str()?,
            expected
        );
        assert!(!body.contains("0123456789abcdef-webhook-secret"));
    }

    // The unreachable target: two attempts, then a recorded failure. The
    // refusing one: one attempt, as a 400 is not retried.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let failures = loop {
        let failures = audit
            .list_failed_deliveries(audit_pb::ListFailedDeliveriesRequest {
                rule: "decrypts".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .failed_deliveries;
        if failures.len() >= 2 {
            break failures;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} failures recorded",
            failures.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let decrypt_event = harness.audit_events_for(&decrypt_request).await?;
    let failed: BTreeMap<&str, (i32, &str, &str)> = failures
        .iter()
        .map(|failure| {
            (
                failure.target_id.as_str(),
                (
                    failure.attempts,
                    failure.last_error.as_str(),
                    failure.event_id.as_str(),
                ),
            )
        })
        .collect();
    assert_eq!(failed.len(), 2, "{failures:?}");
    let event_id = decrypt_event[0]["eventID"].as_str().unwrap_or_default();
    let (attempts, last_error, failed_event) = failed["down"];
    assert_eq!((attempts, failed_event), (2, event_id));
    assert!(last_error.starts_with("connect:"), "{last_error}");
    assert_eq!(
        failed["refusing"],
        (1, "the endpoint answered HTTP 400", event_id)
    );
    let refused = refusing
        .received
        .lock()
        .map(|log| log.len())
        .unwrap_or_default();
    assert_eq!(refused, 1);

    // No secret in the rule's audit events; disabling stops deliveries.
    let events = harness.audit_events().await?;
    let put_targets = events
        .iter()
        .find(|event| {
            event["eventName"] == "PutTargets"
                && event.get("errorCode").is_none()
                && event["resources"][0]["ARN"] == rule_arn.as_str()
        })
        .ok_or_else(|| anyhow::anyhow!("no PutTargets event"))?;
    assert!(!put_targets.to_string().contains("webhook-secret"));
    audit
        .disable_rule(audit_pb::DisableRuleRequest {
            name: "decrypts".into(),
        })
        .await?;
    let described = audit
        .describe_rule(audit_pb::DescribeRuleRequest {
            name: "decrypts".into(),
        })
        .await?
        .into_inner();
    assert_eq!(described.state, "DISABLED");
    assert_eq!(described.description, "successful decrypts");
    // Enabled again, it takes read-only events again.
    audit
        .enable_rule(audit_pb::EnableRuleRequest {
            name: "decrypts".into(),
        })
        .await?;
    let enabled = audit
        .describe_rule(audit_pb::DescribeRuleRequest {
            name: "decrypts".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        enabled.state,
        "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS"
    );
    audit
        .disable_rule(audit_pb::DisableRuleRequest {
            name: "decrypts".into(),
        })
        .await?;
    assert!(
        audit
            .test_event_pattern(audit_pb::TestEventPatternRequest {
                event_pattern: described.event_pattern.clone(),
                event: log[0].1.clone(),
            })
            .await?
            .into_inner()
            .result
    );
    // A test event must be shaped as the envelope rules see.
    let mut partial: Value = serde_json::from_str(&log[0].1)?;
    if let Some(envelope) = partial.as_object_mut() {
        envelope.remove("id");
        envelope.remove("detail-type");
    }
    let status = assert_error(
        audit
            .test_event_pattern(audit_pb::TestEventPatternRequest {
                event_pattern: described.event_pattern,
                event: partial.to_string(),
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(status.message().contains("id, detail-type"), "{status:?}");
    audit
        .delete_rule(audit_pb::DeleteRuleRequest {
            name: "decrypts".into(),
            force: true,
        })
        .await?;
    assert_error(
        audit
            .describe_rule(audit_pb::DescribeRuleRequest {
                name: "decrypts".into(),
            })
            .await,
        Code::NotFound,
        "ResourceNotFoundException",
    );
    // Its failures went with it: a new rule of the same name starts clean.
    audit
        .put_rule(audit_pb::PutRuleRequest {
            name: "decrypts".into(),
            event_pattern: r#"{"source":["coffer.kms"]}"#.into(),
            ..Default::default()
        })
        .await?;
    let failures = audit
        .list_failed_deliveries(audit_pb::ListFailedDeliveriesRequest {
            rule: "decrypts".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .failed_deliveries;
    assert!(failures.is_empty(), "{failures:?}");
    Ok(())
}

/// EventBridge's limits and idempotence: DeleteRule of a missing rule
/// succeeds; no credentials in a target URL (nor in the event of the call
/// refused for them); ListTargetsByRule pages; a removed target gets no
/// more retries; an account holds 300 rules; a subscriber that leaves frees
/// its slot at once, whatever it was waiting for.
async fn rules_and_subscriptions_keep_to_eventbridge_limits(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let alice = Harness::user_id(ACCOUNT_A, "alice");
    let mut audit = harness.audit_as(&alice).await?;
    for _ in 0..2 {
        audit
            .delete_rule(audit_pb::DeleteRuleRequest {
                name: "never-made".into(),
                force: false,
            })
            .await?;
    }
    let rule = |name: String, state: &str| audit_pb::PutRuleRequest {
        name,
        event_pattern: r#"{"source":["coffer.kms"]}"#.into(),
        state: state.into(),
        ..Default::default()
    };
    // NUL, which Postgres text cannot hold, is refused alike on both
    // backends (it was an internal error on Postgres only).
    let mut nul_description = rule("nul".into(), "ENABLED");
    nul_description.description = "a\0b".into();
    let status = assert_error(
        audit.put_rule(nul_description).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(status.message().contains("description"), "{status:?}");
    let nul_token = URL_SAFE_NO_PAD.encode("\0");
    let status = assert_error(
        audit
            .list_rules(audit_pb::ListRulesRequest {
                next_token: nul_token,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(status.message().contains("next_token"), "{status:?}");
    audit.put_rule(rule("hooks".into(), "ENABLED")).await?;
    // Three attempts within about 1.5 s (pauses of 0.25 to 0.5 s, then
    // 0.5 to 1 s), then a recorded failure.
    let target = |id: &str, endpoint: String| webhook_target(id, endpoint, 2, 600);
    let refused = assert_error(
        audit
            .put_targets(audit_pb::PutTargetsRequest {
                rule: "hooks".into(),
                targets: vec![target("creds", "https://user:s3cret@localhost:1/".into())],
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    let events = harness
        .audit_events_for(&request_id_of(refused.metadata()))
        .await?;
    anyhow::ensure!(events.len() == 1, "{events:#?}");
    let recorded = events[0]["requestParameters"]["targets"][0]["endpoint"].as_str();
    assert!(
        recorded.is_some_and(|endpoint| endpoint.starts_with("(withheld")),
        "{:#}",
        events[0]
    );
    assert!(!events[0].to_string().contains("s3cret"));

    // A RetryPolicy's fields are bounded as EventBridge bounds them, and
    // one left out takes its default alone.
    let with_policy = |retries: Option<i32>, age: Option<i32>| audit_pb::Target {
        retry_policy: Some(audit_pb::RetryPolicy {
            maximum_retry_attempts: retries,
            maximum_event_age_in_seconds: age,
        }),
        ..target("policy", "https://localhost:1/".into())
    };
    for (retries, age, field) in [
        (Some(186), None, "maximum_retry_attempts"),
        (Some(-1), None, "maximum_retry_attempts"),
        (None, Some(59), "maximum_event_age_in_seconds"),
        (None, Some(0), "maximum_event_age_in_seconds"),
        (None, Some(86_401), "maximum_event_age_in_seconds"),
    ] {
        let status = assert_error(
            audit
                .put_targets(audit_pb::PutTargetsRequest {
                    rule: "hooks".into(),
                    targets: vec![with_policy(retries, age)],
                })
                .await,
            Code::InvalidArgument,
            "ValidationException",
        );
        assert!(status.message().contains(field), "{status:?}");
    }
    for (retries, age, stored) in [(None, Some(600), (185, 600)), (Some(0), None, (0, 86_400))] {
        audit
            .put_targets(audit_pb::PutTargetsRequest {
                rule: "hooks".into(),
                targets: vec![with_policy(retries, age)],
            })
            .await?;
        let listed = audit
            .list_targets_by_rule(audit_pb::ListTargetsByRuleRequest {
                rule: "hooks".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .targets;
        let policy = listed.first().and_then(|target| target.retry_policy);
        assert_eq!(
            policy.map(|p| (p.maximum_retry_attempts, p.maximum_event_age_in_seconds)),
            Some((Some(stored.0), Some(stored.1)))
        );
    }
    audit
        .remove_targets(audit_pb::RemoveTargetsRequest {
            rule: "hooks".into(),
            ids: vec!["policy".into()],
        })
        .await?;

    // Two targets on a receiver that always fails, listed a page at a time.
    let failing = start_receiver(&harness, |_| 503).await?;
    let endpoint = format!("https://localhost:{}/hook", failing.addr.port());
    audit
        .put_targets(audit_pb::PutTargetsRequest {
            rule: "hooks".into(),
            targets: vec![target("b", endpoint.clone()), target("a", endpoint)],
        })
        .await?;
    for limit in [-1, 0, 101] {
        assert_error(
            audit
                .list_targets_by_rule(audit_pb::ListTargetsByRuleRequest {
                    rule: "hooks".into(),
                    limit: Some(limit),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "ValidationException",
        );
    }
    let mut pages = Vec::new();
    let mut next_token = String::new();
    loop {
        let page = audit
            .list_targets_by_rule(audit_pb::ListTargetsByRuleRequest {
                rule: "hooks".into(),
                limit: Some(1),
                next_token: next_token.clone(),
            })
            .await?
            .into_inner();
        pages.push(
            page.targets
                .iter()
                .map(|target| target.id.clone())
                .collect::<Vec<_>>(),
        );
        if page.next_token.is_empty() {
            break;
        }
        next_token = page.next_token;
    }
    assert_eq!(pages, [vec!["a".to_owned()], vec!["b".to_owned()]]);

    // Each target fails its first delivery; once they are removed, their
    // retries (0.5 and 1.5 s later) are not made, and no failure is
    // recorded for them.
    let mut keys = harness.keys_for(ACCOUNT_A, "alice").await?;
    new_key(&mut keys).await?;
    let received = || failing.received.lock().map(|log| log.len()).unwrap_or(0);
    wait_for("first deliveries", Duration::from_secs(20), || async {
        Ok(received() >= 2)
    })
    .await?;
    audit
        .remove_targets(audit_pb::RemoveTargetsRequest {
            rule: "hooks".into(),
            ids: vec!["a".into(), "b".into()],
        })
        .await?;
    // An id no target could have is malformed, not a failed entry.
    assert_error(
        audit
            .remove_targets(audit_pb::RemoveTargetsRequest {
                rule: "hooks".into(),
                ids: vec!["a".into(), "not an id".into()],
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    // Past any attempt already under way when they went.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_removal = received();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(received(), at_removal, "retried after the targets went");
    let failures = audit
        .list_failed_deliveries(audit_pb::ListFailedDeliveriesRequest {
            rule: "hooks".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .failed_deliveries;
    assert!(failures.is_empty(), "{failures:?}");

    // Five targets a rule: six, in one request or in all, break a quota
    // (LimitExceededException); more than ten in one request is malformed;
    // of two requests racing for the last places, one gets them.
    audit.put_rule(rule("capped".into(), "DISABLED")).await?;
    let targets = |prefix: &str, count: usize| audit_pb::PutTargetsRequest {
        rule: "capped".into(),
        targets: (0..count)
            .map(|n| target(&format!("{prefix}{n}"), "https://localhost:1/x".into()))
            .collect(),
    };
    assert_error(
        audit.put_targets(targets("six", 6)).await,
        Code::ResourceExhausted,
        "LimitExceededException",
    );
    assert_error(
        audit.put_targets(targets("eleven", 11)).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    let mut racing = tokio::task::JoinSet::new();
    for prefix in ["left", "right"] {
        let mut client = audit.clone();
        let request = targets(prefix, 3);
        racing.spawn(async move { client.put_targets(request).await });
    }
    exactly_one_wins(racing).await?;
    let kept = audit
        .list_targets_by_rule(audit_pb::ListTargetsByRuleRequest {
            rule: "capped".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .targets;
    assert_eq!(kept.len(), 3, "{kept:?}");
    audit
        .delete_rule(audit_pb::DeleteRuleRequest {
            name: "capped".into(),
            force: true,
        })
        .await?;

    // 300 rules an account (replacing one is not another).
    let mut making = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let mut client = audit.clone();
        making.spawn(async move {
            for n in (worker..299).step_by(4) {
                client
                    .put_rule(rule(format!("quiet-{n}"), "DISABLED"))
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(outcome) = making.join_next().await {
        outcome??;
    }
    let status = assert_error(
        audit
            .put_rule(rule("one-too-many".into(), "DISABLED"))
            .await,
        Code::ResourceExhausted,
        "LimitExceededException",
    );
    assert!(status.message().contains("300 rules"), "{status:?}");
    audit.put_rule(rule("quiet-7".into(), "ENABLED")).await?;
    // With one place free, of four new rules made at once one gets it.
    audit
        .delete_rule(audit_pb::DeleteRuleRequest {
            name: "quiet-0".into(),
            force: false,
        })
        .await?;
    let mut racing = tokio::task::JoinSet::new();
    for n in 0..4 {
        let mut client = audit.clone();
        racing.spawn(async move {
            client
                .put_rule(rule(format!("racer-{n}"), "DISABLED"))
                .await
        });
    }
    exactly_one_wins(racing).await?;
    let racers = audit
        .list_rules(audit_pb::ListRulesRequest {
            name_prefix: "racer-".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .rules;
    assert_eq!(racers.len(), 1, "{racers:?}");
    // A name prefix lists the rules it begins; one no rule name could
    // begin with is malformed.
    let listed = audit
        .list_rules(audit_pb::ListRulesRequest {
            name_prefix: "quiet-29".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .rules
        .into_iter()
        .map(|rule| rule.name)
        .collect::<Vec<_>>();
    let mut expected = vec!["quiet-29".to_owned()];
    expected.extend((290..299).map(|n| format!("quiet-{n}")));
    assert_eq!(listed, expected);
    for prefix in ["quiet 29", "quiet/", &"q".repeat(65)] {
        assert_error(
            audit
                .list_rules(audit_pb::ListRulesRequest {
                    name_prefix: prefix.to_owned(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "ValidationException",
        );
    }

    // An account holds at most 32 subscriptions open; 256 (eight accounts'
    // worth) waiting for events that never come fill every slot; dropped,
    // they free them.
    let never = audit_pb::SubscribeRequest {
        event_pattern: r#"{"source":["nothing-sends-this"]}"#.into(),
    };
    let mut open = Vec::new();
    for account in 0..8_u64 {
        let watcher = Harness::user_id(&(100_000_000_000 + account).to_string(), "watcher");
        let mut client = harness.audit_as(&watcher).await?;
        for _ in 0..coffer_audit::grpc::MAX_SUBSCRIPTIONS_PER_ACCOUNT {
            open.push(client.subscribe(never.clone()).await?.into_inner());
        }
        if account == 0 {
            let status = assert_error(
                client.subscribe(never.clone()).await,
                Code::ResourceExhausted,
                "LimitExceededException",
            );
            assert!(
                status.message().contains("an account may have at most 32"),
                "{status:?}"
            );
        }
    }
    let status = assert_error(
        audit.subscribe(never.clone()).await,
        Code::ResourceExhausted,
        "LimitExceededException",
    );
    assert!(status.message().contains("at most 256"), "{status:?}");
    drop(open);
    wait_for("slots freed", Duration::from_secs(10), || {
        let mut audit = audit.clone();
        let never = never.clone();
        async move { Ok(audit.subscribe(never).await.is_ok()) }
    })
    .await?;
    Ok(())
}

async fn retention_removes_events_past_the_period(backend: Backend) -> anyhow::Result<()> {
    let (harness, clock) = Harness::start_with_clock(backend).await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    new_key(&mut alice).await?;
    assert_eq!(harness.audit_events().await?.len(), 1);
    clock.advance(Duration::from_secs(89 * 86_400));
    harness.run_maintenance().await?;
    assert_eq!(harness.audit_events().await?.len(), 1, "kept for 90 days");
    let event_id = harness.audit_events().await?[0]["eventID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    clock.advance(Duration::from_secs(2 * 86_400));
    // Past the period, before the hourly job has deleted it, it is gone
    // from LookupEvents (even asked for from 1970) and GetEvent too.
    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    let found = audit
        .lookup_events(audit_pb::LookupEventsRequest {
            start_time: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(
        found
            .events
            .iter()
            .all(|event| event.event_name != "CreateKey"),
        "{:?}",
        found.events
    );
    assert_error(
        audit
            .get_event(audit_pb::GetEventRequest { event_id })
            .await,
        Code::NotFound,
        "ResourceNotFoundException",
    );
    harness.run_maintenance().await?;
    assert!(
        harness
            .audit_events()
            .await?
            .iter()
            .all(|event| event["eventName"] != "CreateKey"),
        "gone after 90 days"
    );
    Ok(())
}

/// An account's rules hold at most 1,000 deliveries pending: one more is
/// not attempted but recorded as failed at once (EventBridge's dead-letter
/// queue). Failed deliveries go with retention, as events do.
async fn one_account_cannot_hold_unbounded_deliveries_and_failures_expire(
    backend: Backend,
) -> anyhow::Result<()> {
    let (harness, clock) = Harness::start_with_clock(backend).await?;
    let mut audit = harness
        .audit_as(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    audit
        .put_rule(audit_pb::PutRuleRequest {
            name: "everything-untrusted".into(),
            event_pattern: r#"{"source":["untrusted"]}"#.into(),
            ..Default::default()
        })
        .await?;
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    audit
        .put_targets(audit_pb::PutTargetsRequest {
            rule: "everything-untrusted".into(),
            // Retried for an hour: every delivery stays pending.
            targets: vec![webhook_target(
                "down",
                format!("https://localhost:{closed_port}/"),
                185,
                3600,
            )],
        })
        .await?;
    let extra = 7;
    let pending = coffer_audit::webhook::MAX_PENDING_PER_ACCOUNT;
    let spans = (0..pending + extra)
        .map(|n| Span {
            name: format!("flood-{n}"),
            ..Default::default()
        })
        .collect();
    let mut outsider = otlp_client(&harness, &Harness::user_id(ACCOUNT_A, "mallory")).await?;
    outsider
        .export(otlp_request("flood", "some.library", spans))
        .await?;
    let failures = |audit: &mut audit_pb::audit_client::AuditClient<tonic::transport::Channel>| {
        let mut audit = audit.clone();
        async move {
            anyhow::Ok(
                audit
                    .list_failed_deliveries(audit_pb::ListFailedDeliveriesRequest {
                        rule: "everything-untrusted".into(),
                        limit: Some(100),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .failed_deliveries,
            )
        }
    };
    wait_for(
        "the refused deliveries recorded",
        Duration::from_secs(20),
        || {
            let failed = failures(&mut audit);
            async move { Ok(failed.await?.len() >= extra) }
        },
    )
    .await?;
    let failed = failures(&mut audit).await?;
    assert_eq!(failed.len(), extra, "{failed:?}");
    for failure in &failed {
        assert_eq!(failure.attempts, 0);
        assert!(
            failure.last_error.contains("1000 deliveries pending"),
            "{failure:?}"
        );
    }
    // Past retention, the failures are gone with the events.
    clock.advance(Duration::from_secs(91 * 86_400));
    harness.run_maintenance().await?;
    assert!(failures(&mut audit).await?.is_empty());
    Ok(())
}

async fn admin_health(admin: std::net::SocketAddr) -> anyhow::Result<i32> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))?
        .connect()
        .await?;
    Ok(HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "coffer.keys.v1.Keys".into(),
        })
        .await?
        .into_inner()
        .status)
}

/// A request far larger than an audit record may be (a 3 MiB key id of
/// control characters, 18 MiB once escaped as JSON) is recorded capped, so
/// its event travels to a separate audit service in an export it accepts.
/// Before, the export was refused as too large and retried for ever, and
/// every required-mode call after it waited for it and failed UNAVAILABLE.
async fn an_oversized_request_is_audited_capped_and_stops_no_delivery(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start_with(
        backend,
        Options {
            separate_audit: true,
            max_message_bytes: 4 * 1024 * 1024,
            audit_deadline_ms: 1_000,
            ..Options::default()
        },
    )
    .await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut alice).await?;
    let oversized = alice
        .encrypt(pb::EncryptRequest {
            key_id: "\u{1}".repeat(3 * 1024 * 1024),
            plaintext: b"x".to_vec(),
            ..Default::default()
        })
        .await;
    assert_error(oversized, Code::InvalidArgument, "ValidationException");
    // Answered and acknowledged within the deadline, by calls made one
    // after another: nothing waits behind a refused export.
    for _ in 0..3 {
        encrypt(&mut alice, &key).await?;
    }
    let events = harness.audit_events().await?;
    let refused: Vec<&Value> = events
        .iter()
        .filter(|event| {
            event["eventName"] == "Encrypt" && event["errorCode"] == "ValidationException"
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let recorded_key_id = refused[0]["requestParameters"]["keyId"]
        .as_str()
        .context("keyId is not a string")?;
    assert!(
        recorded_key_id.len() < 9 * 1024 && recorded_key_id.ends_with("bytes truncated]"),
        "{} bytes: {}",
        recorded_key_id.len(),
        recorded_key_id.get(..64).unwrap_or_default()
    );
    let answered = events
        .iter()
        .filter(|event| event["eventName"] == "Encrypt" && event["errorCode"].is_null())
        .count();
    assert_eq!(answered, 3);
    Ok(())
}

/// A state change committed while the audit service was down waits in the
/// outbox; if the operator then restarts in `best_effort` mode (which
/// writes no outbox rows), the relay still sends what the `required` run
/// left. Before, no relay ran in `best_effort` and the row stayed for ever.
async fn outbox_rows_left_by_a_required_run_are_sent_after_a_switch_to_best_effort(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut harness = Harness::start_with(
        backend,
        Options {
            separate_audit: true,
            // The outbox's grace is then 3 s.
            audit_deadline_ms: 1_000,
            ..Options::default()
        },
    )
    .await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    new_key(&mut alice).await?;
    harness.stop_audit().await?;
    let created = alice.create_key(pb::CreateKeyRequest::default()).await?;
    let created_request = request_id_of(created.metadata());
    assert!(harness.instance()?.outbox_rows().await? >= 1);

    harness.settings_mut().audit.mode = coffer_platform::config::AuditMode::BestEffort;
    harness.restart().await?;
    harness.start_audit().await?;
    wait_for(
        "the required run's outbox row was never sent",
        Duration::from_secs(30),
        || async { Ok(harness.audit_events_for(&created_request).await?.len() == 1) },
    )
    .await?;
    wait_for(
        "the outbox never drained",
        Duration::from_secs(20),
        || async { Ok(harness.instance()?.outbox_rows().await? == 0) },
    )
    .await?;
    Ok(())
}

/// A data-plane answer waits for its event's acknowledgement, but not past
/// the caller's deadline: the wait ends there, and the event records a
/// timeout (the answer withheld), not the success the caller never got.
/// Before, tonic's own timer for `grpc-timeout` dropped the call in the
/// middle of the wait and the success event was stored as it was.
async fn a_caller_deadline_that_ends_the_wait_for_the_audit_service_is_audited(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut harness = Harness::start_with(
        backend,
        Options {
            separate_audit: true,
            ..Options::default()
        },
    )
    .await?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut alice).await?;
    encrypt(&mut alice, &key).await?;
    harness.stop_audit().await?;
    // Sent by a client that keeps no timer of its own (tonic's would
    // cancel the call at the same moment), so what the server answers at
    // the deadline arrives.
    let request = pb::EncryptRequest {
        key_id: key.clone(),
        plaintext: b"too late".to_vec(),
        ..Default::default()
    };
    let status = unary_with_grpc_timeout(
        &harness,
        "/coffer.keys.v1.Keys/Encrypt",
        &prost::Message::encode_to_vec(&request),
        "300m",
    )
    .await?;
    assert_error(
        Err::<(), _>(status),
        Code::DeadlineExceeded,
        "RequestTimeoutException",
    );
    harness.start_audit().await?;
    let encrypts: Vec<Value> = harness
        .audit_events()
        .await?
        .into_iter()
        .filter(|event| event["eventName"] == "Encrypt")
        .collect();
    assert_eq!(encrypts.len(), 2, "{encrypts:#?}");
    assert!(encrypts[0].get("errorCode").is_none(), "{:?}", encrypts[0]);
    assert_eq!(encrypts[1]["errorCode"], "RequestTimeoutException");
    assert_eq!(encrypts[1]["answerWithheld"], true);
    assert_eq!(encrypts[1]["responseElements"], Value::Null);
    Ok(())
}

async fn required_mode_survives_the_audit_service_going_away(
    backend: Backend,
) -> anyhow::Result<()> {
    let clock = Arc::new(coffer_platform::clock::ManualClock::new(
        std::time::SystemTime::now(),
    ));
    let mut harness = Harness::start_with(
        backend,
        Options {
            separate_audit: true,
            audit_deadline_ms: 1_000,
            clock: Some(clock.clone()),
            ..Options::default()
        },
    )
    .await?;
    let admin = harness.admin_addr()?;
    let mut alice = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut alice).await?;
    encrypt(&mut alice, &key).await?;
    assert_eq!(admin_health(admin).await?, ServingStatus::Serving as i32);
    let doomed = new_key(&mut alice).await?;
    alice
        .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
            key_id: doomed.clone(),
            pending_window_in_days: Some(7),
        })
        .await?;

    harness.stop_audit().await?;
    // The scheduler's changes commit too, their events in the outbox.
    clock.advance(Duration::from_secs(8 * 86_400));
    harness.run_maintenance().await?;
    assert_error(
        alice
            .describe_key(pb::DescribeKeyRequest {
                key_id: doomed.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "NotFoundException",
    );
    // A state change still commits: its event waits in the outbox.
    let created = alice
        .create_key(pb::CreateKeyRequest {
            description: "while audit is down".into(),
            ..Default::default()
        })
        .await?;
    let created_request = request_id_of(created.metadata());
    let created_arn = created
        .into_inner()
        .key_metadata
        .map(|m| m.arn)
        .unwrap_or_default();
    // The outbox's copy of a change's event is whole: what the answer
    // reports, recorded before the commit.
    let grant = alice
        .create_grant(pb::CreateGrantRequest {
            key_id: created_arn.clone(),
            grantee_principal: format!("arn:coffer:iam::{ACCOUNT_A}:role/app"),
            operations: vec!["Encrypt".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    alice
        .retire_grant(pb::RetireGrantRequest {
            grant_token: grant.grant_token.clone(),
            ..Default::default()
        })
        .await?;
    alice
        .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
            key_id: created_arn.clone(),
            pending_window_in_days: Some(9),
        })
        .await?;
    // A call whose change commits (the first use of a service-managed key
    // creates it) and which is then refused: its row says what the caller
    // got, not the success it was written as before the commit.
    assert_error(
        alice
            .disable_key(pb::DisableKeyRequest {
                key_id: "alias/coffer/acm".into(),
            })
            .await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    let rows: Vec<Value> = harness
        .instance()?
        .outbox_records()
        .await?
        .iter()
        .map(|record| serde_json::from_str(record))
        .collect::<Result<_, _>>()?;
    // Rows of calls made while the audit service was up may be there too.
    let row = |name: &str| {
        rows.iter()
            .rev()
            .find(|row| row["eventName"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let created_row = row("CreateKey");
    let recorded = &created_row["responseElements"]["keyMetadata"];
    assert_eq!(recorded["arn"], created_arn.as_str(), "{created_row:#}");
    assert_eq!(recorded["description"], "while audit is down");
    assert_eq!(recorded["keyState"], "Enabled");
    assert_eq!(
        recorded["encryptionAlgorithms"],
        json!(["SYMMETRIC_DEFAULT"])
    );
    assert_eq!(
        row("CreateGrant")["responseElements"]["grantId"],
        grant.grant_id.as_str()
    );
    assert_eq!(
        row("RetireGrant")["additionalEventData"]["grantId"],
        grant.grant_id.as_str()
    );
    let refused = row("DisableKey");
    assert_eq!(refused["errorCode"], "AccessDeniedException", "{refused:#}");
    let scheduled = row("ScheduleKeyDeletion");
    assert_eq!(
        scheduled["responseElements"]["keyId"],
        created_arn.as_str(),
        "{scheduled:#}"
    );
    assert_eq!(scheduled["responseElements"]["pendingWindowInDays"], 9);
    assert_eq!(scheduled["responseElements"]["keyState"], "PendingDeletion");
    alice
        .cancel_key_deletion(pb::CancelKeyDeletionRequest {
            key_id: created_arn.clone(),
        })
        .await?;
    // A data-plane answer cannot be audited: UNAVAILABLE within the deadline.
    let started = tokio::time::Instant::now();
    let status = assert_error(
        encrypt(&mut alice, &key).await,
        Code::Unavailable,
        "ServiceUnavailableException",
    );
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        started.elapsed()
    );
    let failed_request = request_id_of(status.metadata());
    // Health follows: NOT_SERVING once the deadline has passed.
    wait_for(
        "health never said NOT_SERVING",
        Duration::from_secs(10),
        || async { Ok(admin_health(admin).await? == ServingStatus::NotServing as i32) },
    )
    .await?;
    // Now calls fail fast, without waiting.
    let started = tokio::time::Instant::now();
    let fast = assert_error(
        encrypt(&mut alice, &key).await,
        Code::Unavailable,
        "ServiceUnavailableException",
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let fast_request = request_id_of(fast.metadata());
    assert!(harness.instance()?.outbox_rows().await? >= 1);

    // The audit service returns: everything recovers by itself.
    harness.start_audit().await?;
    wait_for(
        "health never recovered",
        Duration::from_secs(20),
        || async { Ok(admin_health(admin).await? == ServingStatus::Serving as i32) },
    )
    .await?;
    let recovered = encrypt(&mut alice, &key).await?;
    let recovered_request = request_id_of(recovered.metadata());
    wait_for(
        "the outbox never drained",
        Duration::from_secs(20),
        || async { Ok(harness.instance()?.outbox_rows().await? == 0) },
    )
    .await?;
    let events = harness.audit_events_for(&created_request).await?;
    assert_eq!(
        events.len(),
        1,
        "the CreateKey made while audit was down: {events:?}"
    );
    assert_eq!(events[0]["eventName"], "CreateKey");
    assert_eq!(events[0]["resources"][0]["ARN"], created_arn.as_str());
    assert!(events[0].get("errorCode").is_none());
    for request in [&failed_request, &fast_request] {
        let events = harness.audit_events_for(request).await?;
        assert_eq!(events.len(), 1, "{request}");
        assert_eq!(events[0]["errorCode"], "ServiceUnavailableException");
        assert_eq!(events[0]["responseElements"], Value::Null);
    }
    assert_eq!(harness.audit_events_for(&recovered_request).await?.len(), 1);
    assert_eq!(exception_of(&status), "ServiceUnavailableException");
    let deletions: Vec<Value> = harness
        .audit_events()
        .await?
        .into_iter()
        .filter(|event| event["eventName"] == "DeleteKey")
        .collect();
    assert_eq!(deletions.len(), 1, "{deletions:#?}");
    assert_eq!(deletions[0]["eventType"], "AwsServiceEvent");
    assert!(
        doomed.ends_with(
            deletions[0]["serviceEventDetails"]["keyId"]
                .as_str()
                .unwrap_or("?")
        ),
        "{deletions:#?}"
    );
    Ok(())
}

/// Not a test by itself: the keys service process that
/// `killed_keys_service_loses_no_events` starts and kills with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by killed_keys_service_loses_no_events"]
async fn keys_child_process() -> anyhow::Result<()> {
    let (Ok(config_path), Ok(addr_file)) = (
        std::env::var("COFFER_TEST_CHILD_CONFIG"),
        std::env::var("COFFER_TEST_CHILD_ADDR"),
    ) else {
        return Ok(());
    };
    coffer_platform::install_crypto_provider();
    let _logging = tracing_subscriber::fmt()
        .with_env_filter("info,coffer_platform=debug")
        .with_writer(std::io::stderr)
        .try_init();
    let settings =
        coffer_platform::config::load(Some(std::path::Path::new(&config_path)), Vec::new())?;
    let instance = coffer::launch(
        &settings,
        &["keys".to_owned()],
        Arc::new(coffer_platform::clock::SystemClock),
    )
    .await?;
    let addr = instance
        .addr_of("keys")
        .ok_or_else(|| anyhow::anyhow!("keys is not served"))?;
    let partial = format!("{addr_file}.partial");
    std::fs::write(&partial, addr.to_string())?;
    std::fs::rename(&partial, &addr_file)?;
    std::future::pending::<()>().await;
    Ok(())
}

struct Child {
    process: std::process::Child,
    addr: String,
}

async fn start_child(harness: &Harness) -> anyhow::Result<Child> {
    let addr_file = harness.dir().join("child-addr");
    let _absent = std::fs::remove_file(&addr_file);
    let process = std::process::Command::new(std::env::current_exe()?)
        .args([
            "audit_service::keys_child_process",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(
            "COFFER_TEST_CHILD_CONFIG",
            harness.dir().join("coffer.yaml"),
        )
        .env("COFFER_TEST_CHILD_ADDR", &addr_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(harness.dir().join(format!(
                "child-{}.log",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos()
            )))?)
        .spawn()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            return Ok(Child { process, addr });
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the child never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn keys_client_at(
    harness: &Harness,
    addr: &str,
) -> anyhow::Result<coffer_proto::keys::v1::keys_client::KeysClient<tonic::transport::Channel>> {
    let identity = harness.identity(&Harness::user_id(ACCOUNT_A, "alice"))?;
    let tls = ClientTls::from_pem(
        &harness.ca_pem()?,
        Some((identity.cert_pem.as_bytes(), identity.key_pem.as_bytes())),
    )?;
    Ok(coffer_proto::keys::v1::keys_client::KeysClient::new(
        tls.connect(addr, "localhost").await?,
    ))
}

/// A keys service killed with SIGKILL in the middle of a write load
/// restarts, and every change it committed has exactly one event: the
/// outbox rows of the dead process are relayed by the new one.
async fn killed_keys_service_loses_no_events(backend: Backend) -> anyhow::Result<()> {
    let mut harness = Harness::start_with(
        backend,
        Options {
            separate_audit: true,
            ..Options::default()
        },
    )
    .await?;
    // The keys service runs as a child process from now on.
    harness.stop().await;
    let mut child = start_child(&harness).await?;
    let client = keys_client_at(&harness, &child.addr).await?;
    let mut writers = Vec::new();
    for _ in 0..8 {
        let mut client = client.clone();
        writers.push(tokio::spawn(async move {
            let mut created = Vec::new();
            while let Ok(response) = client.create_key(pb::CreateKeyRequest::default()).await {
                if let Some(metadata) = response.into_inner().key_metadata {
                    created.push(metadata.arn);
                }
            }
            created
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    child.process.kill()?;
    child.process.wait()?;
    let mut acknowledged = BTreeSet::new();
    for writer in writers {
        acknowledged.extend(writer.await?);
    }
    anyhow::ensure!(
        acknowledged.len() >= 10,
        "only {} keys before the kill",
        acknowledged.len()
    );

    let mut restarted = start_child(&harness).await?;
    let mut client = keys_client_at(&harness, &restarted.addr).await?;
    let mut committed = BTreeSet::new();
    let mut marker = String::new();
    loop {
        let page = client
            .list_keys(pb::ListKeysRequest {
                limit: Some(1000),
                marker: marker.clone(),
            })
            .await?
            .into_inner();
        committed.extend(page.keys.into_iter().map(|key| key.key_arn));
        if !page.truncated {
            break;
        }
        marker = page.next_marker;
    }
    assert!(
        acknowledged.is_subset(&committed),
        "a key the client saw created is missing"
    );

    let created_events = |events: Vec<Value>| -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for event in events {
            if event["eventName"] == "CreateKey" && event.get("errorCode").is_none() {
                let arn = event["resources"][0]["ARN"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                *counts.entry(arn).or_insert(0) += 1;
            }
        }
        counts
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let counts = created_events(harness.audit_events().await?);
        if counts.len() >= committed.len() || tokio::time::Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let audited: BTreeSet<String> = counts.keys().cloned().collect();
    assert_eq!(
        committed.difference(&audited).count(),
        0,
        "committed keys without an event"
    );
    assert_eq!(
        audited, committed,
        "events for keys that were never committed"
    );
    assert!(
        counts.values().all(|count| *count == 1),
        "every key exactly one event"
    );
    restarted.process.kill()?;
    restarted.process.wait()?;
    Ok(())
}
