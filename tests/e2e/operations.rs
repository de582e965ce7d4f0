//! Server behaviour under operations: health, graceful shutdown, load
//! shedding, deadlines and message size limits.

use std::time::Duration;

use coffer_tests::{
    ACCOUNT_A, Backend, Harness, Options, assert_error, backend_tests, keys_pb as pb, request_id_of,
};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

backend_tests!(
    health_is_served_on_both_ports,
    graceful_shutdown_completes_calls_in_flight,
    shutdown_waits_for_changes_their_callers_gave_up_on,
    excess_calls_are_shed_with_resource_exhausted,
    calls_past_their_deadline_fail_deadline_exceeded,
    a_change_committing_at_its_deadline_is_recorded_as_made,
    oversize_messages_are_refused_and_the_server_stays_up,
    undecodable_messages_are_refused_as_the_callers_fault,
    requests_tonic_turns_away_name_their_exception,
    abandoned_data_plane_calls_are_audited_once,
    calls_abandoned_before_their_message_are_audited_as_cancelled,
    connections_are_told_how_many_streams_they_may_open,
    a_connection_at_its_age_is_asked_to_go_away_then_closed,
    a_watch_on_the_admin_port_does_not_hold_up_a_shutdown,
);

/// A new symmetric key of `client`'s account.
async fn new_key(
    client: &mut pb::keys_client::KeysClient<tonic::transport::Channel>,
) -> anyhow::Result<pb::KeyMetadata> {
    client
        .create_key(pb::CreateKeyRequest::default())
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))
}

async fn plaintext_channel(
    addr: std::net::SocketAddr,
) -> anyhow::Result<tonic::transport::Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?,
    )
}

async fn admin_health(harness: &Harness, service: &str) -> anyhow::Result<i32> {
    let admin = harness.admin_addr()?;
    let mut client = HealthClient::new(plaintext_channel(admin).await?);
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(response.into_inner().status)
}

async fn health_is_served_on_both_ports(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    assert_eq!(
        admin_health(&harness, "").await?,
        ServingStatus::Serving as i32
    );
    assert_eq!(
        admin_health(&harness, "coffer.keys.v1.Keys").await?,
        ServingStatus::Serving as i32
    );
    let identity = harness.identity(&Harness::user_id(ACCOUNT_A, "alice"))?;
    let mut over_mtls = HealthClient::new(harness.channel_with(Some(&identity)).await?);
    let response = over_mtls
        .check(HealthCheckRequest {
            service: "coffer.keys.v1.Keys".into(),
        })
        .await?;
    assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);
    // Health checks are not API calls: no audit events.
    assert!(harness.audit_events().await?.is_empty());
    Ok(())
}

async fn graceful_shutdown_completes_calls_in_flight(backend: Backend) -> anyhow::Result<()> {
    let mut harness = Harness::start(backend).await?;
    let admin = harness.admin_addr()?;
    let mut admin_health = HealthClient::new(plaintext_channel(admin).await?);
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;

    let lock = harness.lock_keys_table().await?;
    let in_flight =
        tokio::spawn(async move { client.create_key(pb::CreateKeyRequest::default()).await });
    harness.wait_for_in_flight(1).await?;

    let instance = harness
        .take_instance()
        .ok_or_else(|| anyhow::anyhow!("not running"))?;
    let shutdown = tokio::spawn(instance.shutdown());
    // Health turns NOT_SERVING while the call is still held.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = admin_health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "health never turned NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the held call finished before its lock was released"
    );

    lock.release().await?;
    let created = in_flight.await??.into_inner();
    assert_eq!(
        created.key_metadata.map(|m| m.key_state).as_deref(),
        Some("Enabled")
    );
    tokio::time::timeout(Duration::from_secs(30), shutdown).await??;
    Ok(())
}

/// A change whose caller went away runs on to its end: a shutdown waits
/// for it, within its grace period, instead of closing the databases under
/// it (the old way, the key was never made and its event never sent).
async fn shutdown_waits_for_changes_their_callers_gave_up_on(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let lock = harness.lock_keys_table().await?;
    let abandoned = tokio::spawn(async move {
        client
            .create_key(pb::CreateKeyRequest {
                description: "abandoned".into(),
                ..Default::default()
            })
            .await
    });
    harness.wait_for_in_flight(1).await?;
    // The caller gives up: its connection closes, the server has nothing
    // left to drain, and only the call's own task is still running.
    abandoned.abort();
    let instance = harness
        .take_instance()
        .ok_or_else(|| anyhow::anyhow!("not running"))?;
    let shutdown = tokio::spawn(instance.shutdown());
    // Long enough for a shutdown that does not wait to have closed the
    // databases; a shutdown that waits is still waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !shutdown.is_finished(),
        "the shutdown did not wait for the call"
    );
    lock.release().await?;
    tokio::time::timeout(Duration::from_secs(30), shutdown).await??;

    harness.restart().await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let keys = client
        .list_keys(pb::ListKeysRequest::default())
        .await?
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1);
    let created: Vec<_> = harness
        .audit_events()
        .await?
        .into_iter()
        .filter(|event| event["eventName"] == "CreateKey")
        .collect();
    assert_eq!(created.len(), 1, "{created:#?}");
    assert!(created[0].get("errorCode").is_none(), "{:#}", created[0]);
    assert_eq!(
        created[0]["responseElements"]["keyMetadata"]["keyId"],
        keys[0].key_id.as_str()
    );
    Ok(())
}

async fn excess_calls_are_shed_with_resource_exhausted(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(
        backend,
        Options {
            max_concurrent_requests: 1,
            ..Options::default()
        },
    )
    .await?;
    let mut first = harness.keys_for(ACCOUNT_A, "alice").await?;
    let mut second = harness.keys_for(ACCOUNT_A, "alice").await?;
    let lock = harness.lock_keys_table().await?;
    let held = tokio::spawn(async move { first.create_key(pb::CreateKeyRequest::default()).await });
    harness.wait_for_in_flight(1).await?;

    let shed = second.list_keys(pb::ListKeysRequest::default()).await;
    let status = assert_error(shed, Code::ResourceExhausted, "ThrottlingException");
    let events = harness
        .audit_events_for(&coffer_tests::request_id_of(status.metadata()))
        .await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["errorCode"], "ThrottlingException");

    lock.release().await?;
    held.await??;
    second.list_keys(pb::ListKeysRequest::default()).await?;
    Ok(())
}

async fn calls_past_their_deadline_fail_deadline_exceeded(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start_with(
        backend,
        Options {
            request_timeout_ms: 2_000,
            ..Options::default()
        },
    )
    .await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let lock = harness.lock_keys_table().await?;

    // The caller's own, shorter deadline: the server stops the call,
    // answering and recording why (sent by a client that keeps no timer of
    // its own, so the server's answer is what arrives).
    let status = unary_with_grpc_timeout(
        &harness,
        "/coffer.keys.v1.Keys/CreateKey",
        &prost::Message::encode_to_vec(&pb::CreateKeyRequest::default()),
        "200m",
    )
    .await?;
    assert_error(
        Err::<(), _>(status),
        Code::DeadlineExceeded,
        "RequestTimeoutException",
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let timed_out = harness
            .audit_events()
            .await?
            .iter()
            .filter(|event| {
                event["eventName"] == "CreateKey" && event["errorCode"] == "RequestTimeoutException"
            })
            .count();
        if timed_out == 1 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the server never recorded the caller's deadline"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The server's limit when the caller sets none.
    let outcome = client.create_key(pb::CreateKeyRequest::default()).await;
    assert_error(outcome, Code::DeadlineExceeded, "RequestTimeoutException");

    lock.release().await?;
    // The timed-out calls were rolled back: no key was created.
    assert!(
        client
            .list_keys(pb::ListKeysRequest::default())
            .await?
            .into_inner()
            .keys
            .is_empty()
    );
    Ok(())
}

/// A call whose deadline passes while its change commits is not cut off:
/// the change is made, and its one event says so (the old way, the event
/// said RequestTimeoutException of a key that then existed).
async fn a_change_committing_at_its_deadline_is_recorded_as_made(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    // Each commit of a change takes 600 ms more (Postgres only).
    if !harness.slow_keys_commits(600).await? {
        eprintln!("skipped on SQLite, which cannot slow a commit");
        return Ok(());
    }
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let request = pb::CreateKeyRequest {
        description: "committed late".into(),
        ..Default::default()
    };
    // The caller hears of its deadline when it passes, not once the change
    // has committed (before, tonic's timer answered CANCELLED with no
    // ErrorInfo).
    let status = unary_with_grpc_timeout(
        &harness,
        "/coffer.keys.v1.Keys/CreateKey",
        &prost::Message::encode_to_vec(&request),
        "200m",
    )
    .await?;
    let status = assert_error(
        Err::<(), _>(status),
        Code::DeadlineExceeded,
        "RequestTimeoutException",
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let event = loop {
        let creates: Vec<serde_json::Value> = harness
            .audit_events()
            .await?
            .into_iter()
            .filter(|event| event["eventName"] == "CreateKey")
            .collect();
        if let [event] = creates.as_slice() {
            break event.clone();
        }
        anyhow::ensure!(creates.len() < 2, "{creates:#?}");
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the late CreateKey was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let keys = client
        .list_keys(pb::ListKeysRequest::default())
        .await?
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1, "the key was created");
    assert!(event.get("errorCode").is_none(), "{event:#}");
    // The answer names the call its event records.
    assert_eq!(
        event["requestID"],
        request_id_of(status.metadata()).as_str()
    );
    assert_eq!(
        event["responseElements"]["keyMetadata"]["keyId"],
        keys[0].key_id.as_str()
    );
    Ok(())
}

async fn oversize_messages_are_refused_and_the_server_stays_up(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start_with(
        backend,
        Options {
            max_message_bytes: 16 * 1024,
            ..Options::default()
        },
    )
    .await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut client).await?;
    for size in [20_000, 1024 * 1024] {
        let outcome = client
            .encrypt(pb::EncryptRequest {
                key_id: key.key_id.clone(),
                plaintext: vec![0; size],
                ..Default::default()
            })
            .await;
        let status = assert_error(
            outcome,
            Code::ResourceExhausted,
            "RequestEntityTooLargeException",
        );
        let events = harness
            .audit_events_for(&coffer_tests::request_id_of(status.metadata()))
            .await?;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["errorCode"], "RequestEntityTooLargeException");
    }
    let encrypted = client
        .encrypt(pb::EncryptRequest {
            key_id: key.key_id,
            plaintext: vec![1; 64],
            ..Default::default()
        })
        .await?;
    assert!(!encrypted.into_inner().ciphertext_blob.is_empty());
    // The limit bounds what callers send, not what the service answers: a
    // ListKeys page of 160 keys (~20 KB) is answered, and audited as such.
    for _ in 0..159 {
        client.create_key(pb::CreateKeyRequest::default()).await?;
    }
    let listed = client
        .list_keys(pb::ListKeysRequest {
            limit: Some(1000),
            ..Default::default()
        })
        .await?;
    let request_id = coffer_tests::request_id_of(listed.metadata());
    assert_eq!(listed.into_inner().keys.len(), 160);
    let events = harness.audit_events_for(&request_id).await?;
    assert_eq!(events.len(), 1);
    assert!(events[0].get("errorCode").is_none(), "{:?}", events[0]);
    Ok(())
}

/// Data-plane calls run in the connection's task; one the client abandons
/// midway still gets exactly one event, recording the cancellation.
async fn abandoned_data_plane_calls_are_audited_once(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key_id = new_key(&mut client).await?.key_id;
    // RSA-4096 key generation takes long enough to abandon the call midway.
    let call = tokio::spawn(async move {
        client
            .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
                key_id,
                key_pair_spec: "RSA_4096".into(),
                ..Default::default()
            })
            .await
    });
    harness.wait_for_in_flight(1).await?;
    // In flight means its headers arrived; give its message time to follow
    // (a reset before it is the next test's case), far less than RSA-4096
    // generation takes (0.46 to 2.7 s in twelve runs of `openssl genrsa`).
    tokio::time::sleep(Duration::from_millis(100)).await;
    call.abort();
    let event = the_one_event(&harness, "GenerateDataKeyPair").await?;
    assert_eq!(event["errorCode"], "RequestCanceledException", "{event:#}");
    assert_eq!(event["userIdentity"]["userName"], "alice");
    assert_eq!(event["requestParameters"]["keyPairSpec"], "RSA_4096");
    Ok(())
}

/// What an EncryptRequest is on the wire, but with its `key_id` (a string,
/// field 1) free to hold bytes that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawEncryptRequest {
    #[prost(bytes = "vec", tag = "1")]
    key_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    plaintext: Vec<u8>,
}

/// A message that is not valid protobuf for its request type is the
/// caller's fault, refused as AWS refuses a body it cannot read
/// (SerializationException), not answered INTERNAL as if the server had
/// failed; it has its one event, and the server goes on.
async fn undecodable_messages_are_refused_as_the_callers_fault(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let identity = harness.identity(&Harness::user_id(ACCOUNT_A, "alice"))?;
    let mut grpc = tonic::client::Grpc::new(harness.channel_with(Some(&identity)).await?);
    grpc.ready().await?;
    let outcome = grpc
        .unary::<_, pb::EncryptResponse, _>(
            tonic::Request::new(RawEncryptRequest {
                key_id: vec![b'k', 0xff, 0xfe],
                plaintext: vec![1; 16],
            }),
            http::uri::PathAndQuery::from_static("/coffer.keys.v1.Keys/Encrypt"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let status = assert_error(outcome, Code::InvalidArgument, "SerializationException");
    assert!(
        status.message().contains("EncryptRequest.key_id"),
        "{status:?}"
    );
    let events = harness
        .audit_events_for(&coffer_tests::request_id_of(status.metadata()))
        .await?;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["eventName"], "Encrypt");
    assert_eq!(events[0]["errorCode"], "SerializationException");
    // The same call, decodable, is answered.
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    let key = new_key(&mut client).await?;
    client
        .encrypt(pb::EncryptRequest {
            key_id: key.key_id,
            plaintext: vec![1; 16],
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// The other requests tonic turns away before a handler sees them: an
/// operation the service does not have, a compressed message, a call with
/// no message at all. Each answers with the exception naming the fault in
/// its ErrorInfo and has its one event.
async fn requests_tonic_turns_away_name_their_exception(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let identity = harness.identity(&Harness::user_id(ACCOUNT_A, "alice"))?;
    let mut grpc = tonic::client::Grpc::new(harness.channel_with(Some(&identity)).await?);
    let request = || pb::EncryptRequest {
        key_id: "alias/none".into(),
        plaintext: vec![1; 16],
        ..Default::default()
    };
    let one_event = |status: tonic::Status, exception: &'static str| {
        let harness = &harness;
        async move {
            let events = harness
                .audit_events_for(&coffer_tests::request_id_of(status.metadata()))
                .await?;
            anyhow::ensure!(events.len() == 1, "{events:#?}");
            anyhow::ensure!(events[0]["errorCode"] == exception, "{:#}", events[0]);
            anyhow::Ok(events.into_iter().next().unwrap_or_default())
        }
    };

    // An operation Keys does not have, with a name far longer than any.
    let long_name = format!("No{}", "Such".repeat(100));
    grpc.ready().await?;
    let unknown = grpc
        .unary::<_, pb::EncryptResponse, _>(
            tonic::Request::new(request()),
            http::uri::PathAndQuery::try_from(format!("/coffer.keys.v1.Keys/{long_name}"))?,
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let status = assert_error(unknown, Code::Unimplemented, "UnknownOperationException");
    let event = one_event(status, "UnknownOperationException").await?;
    assert_eq!(
        event["eventName"].as_str().map(str::len),
        Some(128),
        "{event:#}"
    );

    // A service this server does not serve: no service received the call,
    // so none records it, but the refusal is named as any other is.
    grpc.ready().await?;
    let nowhere = grpc
        .unary::<_, pb::EncryptResponse, _>(
            tonic::Request::new(request()),
            http::uri::PathAndQuery::from_static("/coffer.nothing.v1.Nothing/Encrypt"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let status = assert_error(nowhere, Code::Unimplemented, "UnknownOperationException");
    assert_eq!(
        status.message(),
        "/coffer.nothing.v1.Nothing/Encrypt is not an operation of this service"
    );

    // A message said to be compressed: Coffer accepts none.
    let mut compressed = tonic::Request::new(request());
    compressed.metadata_mut().insert(
        "grpc-encoding",
        tonic::metadata::MetadataValue::from_static("gzip"),
    );
    grpc.ready().await?;
    let outcome = grpc
        .unary::<_, pb::EncryptResponse, _>(
            compressed,
            http::uri::PathAndQuery::from_static("/coffer.keys.v1.Keys/Encrypt"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let status = assert_error(
        outcome,
        Code::Unimplemented,
        "UnsupportedOperationException",
    );
    one_event(status, "UnsupportedOperationException").await?;

    // A call whose client ends its stream without sending a message.
    grpc.ready().await?;
    let empty = grpc
        .client_streaming::<_, pb::EncryptRequest, pb::EncryptResponse, _>(
            tonic::Request::new(tokio_stream::empty()),
            http::uri::PathAndQuery::from_static("/coffer.keys.v1.Keys/Encrypt"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let status = assert_error(empty, Code::InvalidArgument, "SerializationException");
    one_event(status, "SerializationException").await?;
    Ok(())
}

/// A client that resets its stream after the headers but before the message
/// leaves tonic with no request ("Missing request message.", INTERNAL); the
/// call was abandoned, not failed, and its one event says so.
async fn calls_abandoned_before_their_message_are_audited_as_cancelled(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let identity = harness.identity(&Harness::user_id(ACCOUNT_A, "alice"))?;
    let mut grpc = tonic::client::Grpc::new(harness.channel_with(Some(&identity)).await?);
    let call = tokio::spawn(async move {
        grpc.ready().await?;
        grpc.client_streaming::<_, pb::EncryptRequest, pb::EncryptResponse, _>(
            tonic::Request::new(tokio_stream::pending()),
            http::uri::PathAndQuery::from_static("/coffer.keys.v1.Keys/Encrypt"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map_err(anyhow::Error::from)
    });
    harness.wait_for_in_flight(1).await?;
    call.abort();
    let event = the_one_event(&harness, "Encrypt").await?;
    assert_eq!(event["errorCode"], "RequestCanceledException", "{event:#}");
    assert_eq!(event["userIdentity"]["userName"], "alice");
    assert!(event["requestParameters"].is_null(), "{event:#}");
    Ok(())
}

/// The one event of `event_name`, waiting for it to arrive and then long
/// enough for a second one, which must not exist, to appear.
async fn the_one_event(harness: &Harness, event_name: &str) -> anyhow::Result<serde_json::Value> {
    let named = || async {
        anyhow::Ok(
            harness
                .audit_events()
                .await?
                .into_iter()
                .filter(|event| event["eventName"] == event_name)
                .collect::<Vec<serde_json::Value>>(),
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while named().await?.is_empty() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the abandoned {event_name} was never audited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut all = named().await?;
    anyhow::ensure!(all.len() == 1, "{all:#?}");
    Ok(all.remove(0))
}

/// Every connection is told how many streams it may have open at once, on
/// the mTLS port and on the plaintext admin port: left unset, there would be
/// no limit at all, and no cap on the streams the server resets either.
async fn connections_are_told_how_many_streams_they_may_open(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let tls = harness
        .raw_keys_connection(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    assert_eq!(
        advertised_streams(tls).await?,
        coffer_platform::server::MAX_STREAMS_PER_CONNECTION as usize
    );
    let admin = harness.admin_addr()?;
    assert_eq!(
        advertised_streams(tokio::net::TcpStream::connect(admin).await?).await?,
        16
    );
    Ok(())
}

/// A connection that reaches `limits.max_connection_age_ms` is asked to go
/// away (GOAWAY) and, with nothing open on it, closes then; one that keeps a
/// stream from ending (it never lets the answer through) stays for the
/// grace (its calls' deadline and ten seconds), then is closed. Before,
/// tonic (given that grace) sent no GOAWAY: the connection took new calls
/// until the age and the grace had passed, and was then cut under them.
async fn a_connection_at_its_age_is_asked_to_go_away_then_closed(
    backend: Backend,
) -> anyhow::Result<()> {
    let harness = Harness::start_with(
        backend,
        Options {
            max_connection_age_ms: 1_000,
            request_timeout_ms: 1_000,
            ..Options::default()
        },
    )
    .await?;
    let alice = Harness::user_id(ACCOUNT_A, "alice");
    // Its client keeps the connection: only the server ends it.
    let (_idle_client, _idle_answer, idle) = health_check_over(
        h2::client::Builder::new(),
        harness.raw_keys_connection(&alice).await?,
    )
    .await?;
    // A window of nothing: the answer's message never gets through.
    let mut stalled_builder = h2::client::Builder::new();
    stalled_builder.initial_window_size(0);
    let stalled = tokio::spawn(health_check_over(
        stalled_builder,
        harness.raw_keys_connection(&alice).await?,
    ));
    let started = tokio::time::Instant::now();
    let idle_ended = tokio::time::timeout(Duration::from_secs(8), idle)
        .await
        .map_err(|_| anyhow::anyhow!("the idle connection was not asked to go away"))??;
    assert!(
        idle_ended.is_ok(),
        "closed without a GOAWAY: {idle_ended:?}"
    );
    let (_stalled_client, _stalled_answer, stalled) = stalled.await??;
    tokio::time::sleep_until(started + Duration::from_secs(3)).await;
    if stalled.is_finished() {
        anyhow::bail!("a connection was cut at its age: {:?}", stalled.await);
    }
    tokio::time::timeout(Duration::from_secs(20), stalled)
        .await
        .map_err(|_| anyhow::anyhow!("the stalled connection was never closed"))??
        .ok();
    Ok(())
}

/// What [`health_check_over`] leaves open: the connection's client (the
/// connection lasts while it is held), the answer's body (its stream lasts
/// while it is held) and the task that drives the connection until it ends.
type HeldCheck = (
    h2::client::SendRequest<hyper::body::Bytes>,
    h2::RecvStream,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
);

/// Sends one health check over a new HTTP/2 connection on `io` made by
/// `builder` and waits for its answer's headers.
async fn health_check_over<T>(builder: h2::client::Builder, io: T) -> anyhow::Result<HeldCheck>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = builder.handshake(io).await?;
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await?;
    let request = http::Request::post("https://localhost/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let (response, mut body) = client.send_request(request, false)?;
    // One message, empty: a HealthCheckRequest for the server as a whole.
    body.send_data(hyper::body::Bytes::from_static(&[0; 5]), true)?;
    let response = response.await?;
    assert_eq!(response.status(), http::StatusCode::OK);
    Ok((client, response.into_body(), driver))
}

/// A health `Watch` left open on the admin port does not hold up a
/// shutdown: the admin port closes with the rest, the grace at the most
/// (before, the shutdown waited for the admin connection's five minutes).
async fn a_watch_on_the_admin_port_does_not_hold_up_a_shutdown(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut harness = Harness::start_with(
        backend,
        Options {
            shutdown_grace_ms: 1_000,
            ..Options::default()
        },
    )
    .await?;
    let admin = harness.admin_addr()?;
    let mut client = HealthClient::new(plaintext_channel(admin).await?);
    let mut watch = client
        .watch(HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        watch.message().await?.map(|answer| answer.status),
        Some(ServingStatus::Serving as i32)
    );
    let instance = harness
        .take_instance()
        .ok_or_else(|| anyhow::anyhow!("not running"))?;
    tokio::time::timeout(Duration::from_secs(10), instance.shutdown())
        .await
        .map_err(|_| anyhow::anyhow!("an open Watch held the shutdown"))?;
    Ok(())
}

/// How many streams the server lets `io`'s connection have open at once,
/// read once a health check has been answered (so its SETTINGS are in).
async fn advertised_streams<T>(io: T) -> anyhow::Result<usize>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, _answer, _connection) = health_check_over(h2::client::Builder::new(), io).await?;
    Ok(client.current_max_send_streams())
}

/// The admin port is plaintext and open to anyone who can reach it: a peer
/// that connects and sends nothing is closed after ten seconds, instead of
/// holding its connection (and a file descriptor) for ever.
#[tokio::test]
async fn a_silent_peer_on_the_admin_port_is_closed() -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let harness = Harness::start(Backend::Sqlite).await?;
    let admin = harness.admin_addr()?;
    let mut silent = tokio::net::TcpStream::connect(admin).await?;
    // Many more from another host (127.0.0.2) keep no probe out: a host
    // past its share has its next connection closed, and the others are
    // served meanwhile.
    let mut crowd = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.2:0".parse()?)?;
        crowd.push(socket.connect(admin).await?);
    }
    let probed = tokio::time::timeout(Duration::from_secs(5), admin_health(&harness, "")).await;
    assert_eq!(
        probed.map_err(|_| anyhow::anyhow!("the probe waited behind silent connections"))??,
        ServingStatus::Serving as i32
    );
    // Whatever the server says, the connection ends.
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buffer = [0u8; 256];
        while silent.read(&mut buffer).await.is_ok_and(|read| read > 0) {}
    })
    .await;
    assert!(closed.is_ok(), "the silent connection is still open");
    Ok(())
}

/// Peers that send a byte and no more hold their admin connections (for
/// the connection's five minutes): past its share, one host's next ones
/// are closed at once, and a probe from another host is still answered.
/// Before, every one was kept, however many.
#[tokio::test]
async fn one_host_cannot_hold_every_admin_connection() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let harness = Harness::start(Backend::Sqlite).await?;
    let admin = harness.admin_addr()?;
    let mut crowd = Vec::new();
    for _ in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.2:0".parse()?)?;
        let mut connection = socket.connect(admin).await?;
        connection.write_all(b"P").await?;
        crowd.push(connection);
    }
    // A connection served reads the server's SETTINGS; one refused, its end.
    let closed = crowd.into_iter().map(|mut connection| {
        tokio::spawn(async move {
            let mut buffer = [0u8; 64];
            tokio::time::timeout(Duration::from_secs(5), connection.read(&mut buffer))
                .await
                .is_ok_and(|read| read.map_or(true, |bytes| bytes == 0))
        })
    });
    let mut refused = 0;
    for closed in closed.collect::<Vec<_>>() {
        refused += usize::from(closed.await?);
    }
    assert!(refused >= 50, "only {refused} of 200 were closed");
    let probed = tokio::time::timeout(Duration::from_secs(5), admin_health(&harness, "")).await;
    assert_eq!(
        probed.map_err(|_| anyhow::anyhow!("the probe was kept out"))??,
        ServingStatus::Serving as i32
    );
    Ok(())
}

/// Calls `path` as alice with one message and a `grpc-timeout` header, over
/// a bare HTTP/2 connection that sets no deadline of its own, and returns
/// the answer's status (an `Ok` one when it succeeded).
pub(crate) async fn unary_with_grpc_timeout(
    harness: &Harness,
    path: &str,
    message: &[u8],
    timeout: &str,
) -> anyhow::Result<tonic::Status> {
    let tls = harness
        .raw_keys_connection(&Harness::user_id(ACCOUNT_A, "alice"))
        .await?;
    let (client, connection) = h2::client::handshake(tls).await?;
    tokio::spawn(connection);
    let mut client = client.ready().await?;
    let request = http::Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())?;
    let (response, mut body) = client.send_request(request, false)?;
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    framed.extend_from_slice(message);
    body.send_data(framed.into(), true)?;
    let response = response.await?;
    let no_status = || anyhow::anyhow!("an answer without a grpc-status");
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return Ok(status);
    }
    let mut answer = response.into_body();
    while answer.data().await.transpose()?.is_some() {}
    let trailers = answer.trailers().await?.ok_or_else(no_status)?;
    tonic::Status::from_header_map(&trailers).ok_or_else(no_status)
}
