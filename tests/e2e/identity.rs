//! mTLS and SPIFFE identity: who may connect, who a call runs as, and
//! certificate reload.

use std::sync::Arc;

use coffer_platform::pki::{self, Authority};
use coffer_proto::audit::v1 as audit_pb;
use coffer_tests::{
    ACCOUNT_A, ACCOUNT_B, Backend, Harness, TRUST_DOMAIN, assert_error, backend_tests,
    keys_pb as pb,
};
use pb::keys_client::KeysClient;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::Code;
use tonic::metadata::MetadataValue;

backend_tests!(
    callers_without_a_trusted_certificate_get_nothing,
    malformed_identities_are_unauthenticated,
    forwarded_identity_is_trusted_only_from_services,
    server_certificate_reloads_without_restart,
    client_certificate_reloads_without_restart,
    a_connection_does_not_outlive_its_certificate,
);

/// Connections that never start their TLS handshake hold a slot each for
/// the handshake's time limit: once the server is busy with them, one host
/// may hold only its share, a connection past it is closed at once, and
/// other hosts still get in.
///
/// It needs hundreds of file descriptors, and nothing of a database: it
/// runs once, on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_hold_every_handshake() -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let harness = Harness::start(Backend::Sqlite).await?;
    let addr: std::net::SocketAddr = harness.keys_addr()?.parse()?;
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "the keys service listens on {addr}"
    );
    let from = |host: [u8; 4]| {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::from((host, 0)))?;
        anyhow::Ok(socket.connect(addr))
    };
    use coffer_platform::tls::{BUSY_HANDSHAKES, MAX_HANDSHAKES_PER_HOST};
    // An idle server lets one host have more than its share.
    let mut idle = Vec::new();
    for _ in 0..BUSY_HANDSHAKES {
        idle.push(from([127, 0, 0, 3])?.await?);
    }
    // Now busy: this host gets its share and no more.
    for _ in 0..MAX_HANDSHAKES_PER_HOST {
        idle.push(from([127, 0, 0, 1])?.await?);
    }
    let mut refused = from([127, 0, 0, 1])?.await?;
    let mut byte = [0u8; 1];
    let answer =
        tokio::time::timeout(std::time::Duration::from_secs(5), refused.read(&mut byte)).await?;
    assert!(
        matches!(answer, Ok(0) | Err(_)),
        "a connection past the host's share was kept: {answer:?}"
    );
    // Another host's connection waits for its handshake, as any does.
    let mut other = from([127, 0, 0, 2])?.await?;
    let waiting =
        tokio::time::timeout(std::time::Duration::from_millis(500), other.read(&mut byte)).await;
    assert!(waiting.is_err(), "another host was refused: {waiting:?}");
    // Once the idle ones go (which the server sees a moment later), the
    // host is served again.
    drop(idle);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let served = match harness.keys_for(ACCOUNT_A, "alice").await {
            Ok(mut client) => client
                .list_keys(pb::ListKeysRequest::default())
                .await
                .is_ok(),
            Err(_) => false,
        };
        if served {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the host was not served again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A connection made with a certificate valid for 2 more seconds serves its
/// calls until then, and none after: each call checks the certificate's
/// validity again, so a connection kept open (keepalive) does not outlive
/// it.
async fn a_connection_does_not_outlive_its_certificate(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let identity = harness.short_lived_identity(
        &Harness::user_id(ACCOUNT_A, "alice"),
        std::time::Duration::from_secs(2),
    )?;
    let mut client = KeysClient::new(harness.channel_with(Some(&identity)).await?);
    client.list_keys(pb::ListKeysRequest::default()).await?;
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let status = client
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect_err("a call on an expired certificate's connection was served");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    Ok(())
}

/// A CA that the harness does not trust.
fn foreign_authority() -> anyhow::Result<(tempfile::TempDir, Authority)> {
    let directory = tempfile::tempdir()?;
    pki::init_ca(directory.path(), TRUST_DOMAIN)?;
    let authority = Authority::load(directory.path())?;
    Ok((directory, authority))
}

async fn call_describe(
    harness: &Harness,
    identity: Option<&pki::IssuedIdentity>,
) -> Result<(), String> {
    let channel = match harness.channel_with(identity).await {
        Ok(channel) => channel,
        Err(error) => return Err(format!("connect: {error}")),
    };
    let outcome = KeysClient::new(channel)
        .list_keys(pb::ListKeysRequest::default())
        .await;
    match outcome {
        Ok(_) => Ok(()),
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

async fn callers_without_a_trusted_certificate_get_nothing(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let (_foreign_dir, foreign) = foreign_authority()?;
    let before = harness.audit_events().await?.len();

    let no_certificate = call_describe(&harness, None).await;
    assert!(
        no_certificate.is_err(),
        "a caller without a certificate was served"
    );

    let untrusted_user = foreign.issue(&Harness::user_id(ACCOUNT_A, "alice"), &[], &[])?;
    assert!(
        call_describe(&harness, Some(&untrusted_user))
            .await
            .is_err(),
        "an untrusted CA was accepted"
    );

    let fake_service = foreign.issue(&Harness::service_id("secrets"), &[], &[])?;
    assert!(
        call_describe(&harness, Some(&fake_service)).await.is_err(),
        "a forged service certificate was accepted"
    );

    // None of these reached the API, so none produced an audit event.
    assert_eq!(harness.audit_events().await?.len(), before);

    // The same call with a trusted identity works.
    let trusted = harness.identity(&Harness::user_id(ACCOUNT_A, "alice"))?;
    assert_eq!(call_describe(&harness, Some(&trusted)).await, Ok(()));
    Ok(())
}

async fn malformed_identities_are_unauthenticated(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    for spiffe_id in [
        "spiffe://other.test/account/111122223333/user/alice",
        "spiffe://coffer.test/account/11112222333/user/alice",
        "spiffe://coffer.test/account/111122223333/user/a%2Fb",
        "spiffe://coffer.test/account/111122223333/admin/alice",
        "spiffe://coffer.test/service/nosuch",
    ] {
        let identity = harness.identity(spiffe_id)?;
        let mut client = KeysClient::new(harness.channel_with(Some(&identity)).await?);
        let outcome = client.list_keys(pb::ListKeysRequest::default()).await;
        let status = assert_error(
            outcome,
            Code::Unauthenticated,
            "UnrecognizedClientException",
        );
        let request_id = coffer_tests::request_id_of(status.metadata());
        let events = harness.audit_events_for(&request_id).await?;
        assert_eq!(events.len(), 1, "{spiffe_id}");
        assert_eq!(events[0]["errorCode"], "UnrecognizedClientException");
        assert_eq!(events[0]["userIdentity"]["type"], "Unknown");
        assert_eq!(events[0]["eventName"], "ListKeys");
    }
    Ok(())
}

/// A client that forwards `forwarded_for` from `source_ip`, if any.
fn forwarding_client(
    channel: tonic::transport::Channel,
    forwarded_for: &str,
    source_ip: Option<&str>,
) -> anyhow::Result<
    KeysClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            impl tonic::service::Interceptor,
        >,
    >,
> {
    let value: MetadataValue<_> = forwarded_for.parse()?;
    let source_ip: Option<MetadataValue<_>> = source_ip.map(str::parse).transpose()?;
    Ok(KeysClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("x-coffer-forwarded-for", value.clone());
            if let Some(source_ip) = &source_ip {
                request
                    .metadata_mut()
                    .insert("x-coffer-forwarded-source-ip", source_ip.clone());
            }
            Ok(request)
        },
    ))
}

async fn forwarded_identity_is_trusted_only_from_services(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let bob = Harness::user_id(ACCOUNT_B, "bob");

    // The secrets service acting for bob: the key lands in bob's account and
    // the event names both.
    let service = harness.identity(&Harness::service_id("secrets"))?;
    let mut as_service = forwarding_client(
        harness.channel_with(Some(&service)).await?,
        &bob,
        Some("203.0.113.9"),
    )?;
    let response = as_service
        .create_key(pb::CreateKeyRequest::default())
        .await?;
    let request_id = coffer_tests::request_id_of(response.metadata());
    let key = response
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    assert_eq!(key.aws_account_id, ACCOUNT_B);
    let events = harness.audit_events_for(&request_id).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["userIdentity"]["userName"], "bob");
    assert_eq!(events[0]["userIdentity"]["accountId"], ACCOUNT_B);
    assert_eq!(
        events[0]["userIdentity"]["invokedBy"],
        "secretsmanager.coffer.internal"
    );
    assert_eq!(events[0]["sourceIPAddress"], "203.0.113.9");

    // An ordinary user claiming to act for bob is ignored: the key is alice's.
    let alice = harness.identity(&Harness::user_id(ACCOUNT_A, "alice"))?;
    let mut as_alice = forwarding_client(
        harness.channel_with(Some(&alice)).await?,
        &bob,
        Some("203.0.113.9"),
    )?;
    let key = as_alice
        .create_key(pb::CreateKeyRequest::default())
        .await?
        .into_inner()
        .key_metadata
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    assert_eq!(key.aws_account_id, ACCOUNT_A);

    // Nor is a service that acts for no caller (the audit service): the
    // call is its own, which has no account to use keys in.
    let audit = harness.identity(&Harness::service_id("audit"))?;
    let mut as_audit = forwarding_client(
        harness.channel_with(Some(&audit)).await?,
        &bob,
        Some("203.0.113.9"),
    )?;
    assert_error(
        as_audit.create_key(pb::CreateKeyRequest::default()).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );

    // A service acting for nobody has no account to use keys in.
    let mut bare_service = KeysClient::new(harness.channel_with(Some(&service)).await?);
    let outcome = bare_service
        .create_key(pb::CreateKeyRequest {
            description: "bare-service-marker".into(),
            ..Default::default()
        })
        .await;
    let status = assert_error(outcome, Code::PermissionDenied, "AccessDeniedException");
    // Its event belongs to no account and carries what the call sent, so no
    // account may read it.
    let events = harness
        .audit_events_for(&coffer_tests::request_id_of(status.metadata()))
        .await?;
    assert_eq!(events.len(), 1);
    assert!(events[0]["recipientAccountId"].is_null(), "{}", events[0]);
    let event_id = events[0]["eventID"].as_str().unwrap_or_default().to_owned();
    for account in [ACCOUNT_A, ACCOUNT_B] {
        let mut audit = harness
            .audit_as(&Harness::user_id(account, "alice"))
            .await?;
        let found = audit
            .lookup_events(audit_pb::LookupEventsRequest {
                lookup_attributes: vec![audit_pb::LookupAttribute {
                    attribute_key: "EventId".into(),
                    attribute_value: event_id.clone(),
                }],
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(found.events.is_empty(), "{account} sees {:?}", found.events);
        let everything = audit
            .lookup_events(audit_pb::LookupEventsRequest::default())
            .await?
            .into_inner();
        assert!(
            everything
                .events
                .iter()
                .all(|event| !event.cloud_trail_event.contains("bare-service-marker")),
            "{account} sees the bare service's event"
        );
        assert_error(
            audit
                .get_event(audit_pb::GetEventRequest {
                    event_id: event_id.clone(),
                })
                .await,
            Code::NotFound,
            "ResourceNotFoundException",
        );
    }

    // A service forwarding garbage, or another service, is refused; so is
    // a caller without its source address, which would otherwise be taken
    // for the service's own (an internal address, in aws:SourceIp too).
    for (forwarded, source_ip) in [
        ("not a spiffe id", Some("203.0.113.9")),
        ("spiffe://coffer.test/service/keys", Some("203.0.113.9")),
        (
            "spiffe://evil.test/account/444455556666/user/bob",
            Some("203.0.113.9"),
        ),
        (bob.as_str(), None),
        (bob.as_str(), Some("not an address")),
    ] {
        let mut client = forwarding_client(
            harness.channel_with(Some(&service)).await?,
            forwarded,
            source_ip,
        )?;
        let outcome = client.list_keys(pb::ListKeysRequest::default()).await;
        assert_error(
            outcome,
            Code::Unauthenticated,
            "UnrecognizedClientException",
        );
    }
    Ok(())
}

/// The leaf certificate the server presents to a new connection.
async fn presented_certificate(harness: &Harness) -> anyhow::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&harness.ca_pem()?) {
        roots.add(certificate?)?;
    }
    let client = harness.identity(&Harness::user_id(ACCOUNT_A, "alice"))?;
    let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(harness.keys_addr()?).await?;
    let stream = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|certificate| certificate.to_vec())
        .ok_or_else(|| anyhow::anyhow!("server presented no certificate"))?;
    Ok(leaf)
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
}

/// Writes `contents` next to `path` and renames it into place, as
/// cert-manager and kubelet do.
fn replace_file(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, contents)?;
    std::fs::rename(&staging, path)?;
    Ok(())
}

async fn server_certificate_reloads_without_restart(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let original = std::fs::read_to_string(harness.dir().join("server-cert.pem"))?;
    assert_eq!(
        presented_certificate(&harness).await?,
        pem_to_der(&original)?
    );

    let authority = Authority::load(harness.dir())?;
    let renewed = authority.issue(
        &Harness::service_id("keys"),
        &["localhost".to_owned()],
        &["127.0.0.1".parse()?],
    )?;
    replace_file(&harness.dir().join("server-key.pem"), &renewed.key_pem)?;
    replace_file(&harness.dir().join("server-cert.pem"), &renewed.cert_pem)?;

    assert_eq!(
        presented_certificate(&harness).await?,
        pem_to_der(&renewed.cert_pem)?
    );
    // And calls over new connections work with it, without a restart.
    let mut client = harness.keys_for(ACCOUNT_A, "alice").await?;
    client.list_keys(pb::ListKeysRequest::default()).await?;

    // A broken replacement is refused and the renewed certificate stays;
    // it is read once, not again on every new connection.
    let cert_file = harness.dir().join("server-cert.pem");
    replace_file(&cert_file, "not a certificate")?;
    for _ in 0..3 {
        assert_eq!(
            presented_certificate(&harness).await?,
            pem_to_der(&renewed.cert_pem)?
        );
    }
    let refusals = coffer_tests::captured_logs()
        .lines()
        .filter(|line| {
            line.contains("do not load") && line.contains(&cert_file.display().to_string())
        })
        .count();
    assert_eq!(refusals, 1);
    Ok(())
}

/// A client made from files (as the audit exporter is) presents the
/// certificate on disk when it next connects, not the one it started with.
async fn client_certificate_reloads_without_restart(backend: Backend) -> anyhow::Result<()> {
    let harness = Harness::start(backend).await?;
    let files = tempfile::tempdir()?;
    let (ca_file, cert_file, key_file) = (
        files.path().join("ca.pem"),
        files.path().join("cert.pem"),
        files.path().join("key.pem"),
    );
    std::fs::write(&ca_file, harness.ca_pem()?)?;
    let install = |spiffe_id: &str| -> anyhow::Result<()> {
        let identity = harness.identity(spiffe_id)?;
        replace_file(&key_file, &identity.key_pem)?;
        replace_file(&cert_file, &identity.cert_pem)?;
        Ok(())
    };
    let created_in = |tls: coffer_platform::client::ClientTls| {
        let addr = harness.keys_addr();
        async move {
            let channel = tls.connect(&addr?, "localhost").await?;
            let key = KeysClient::new(channel)
                .create_key(pb::CreateKeyRequest::default())
                .await?
                .into_inner()
                .key_metadata
                .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
            anyhow::Ok(key.aws_account_id)
        }
    };
    install(&Harness::user_id(ACCOUNT_A, "alice"))?;
    let tls =
        coffer_platform::client::ClientTls::from_files(&ca_file, Some((&cert_file, &key_file)))?;
    assert_eq!(created_in(tls.clone()).await?, ACCOUNT_A);

    install(&Harness::user_id(ACCOUNT_B, "bob"))?;
    assert_eq!(created_in(tls.clone()).await?, ACCOUNT_B);

    // A broken replacement is refused once and the last good set stays.
    replace_file(&cert_file, "not a certificate")?;
    for _ in 0..2 {
        assert_eq!(created_in(tls.clone()).await?, ACCOUNT_B);
    }
    let refusals = coffer_tests::captured_logs()
        .lines()
        .filter(|line| {
            line.contains("do not load") && line.contains(&ca_file.display().to_string())
        })
        .count();
    assert_eq!(refusals, 1);
    Ok(())
}
