//! `coffer bench`: a load generator for the hot RPCs, a Rust stand-in for
//! ghz on machines without it. It prints ghz-style summaries and can write
//! them as JSON.
//!
//! By default it starts its own instance in-process (keys and audit, mTLS,
//! SQLite in a temporary directory, `required` audit mode) plus an echo
//! server with the same mTLS set-up, which measures the transport's
//! ceiling; `encrypt-best-effort` drives a second instance in `best_effort`
//! mode. After the run it checks that the audit service stored one Encrypt
//! event per Encrypt call the required-mode instance answered. With
//! `--addr` it drives a running instance instead (for example `coffer dev`,
//! using the identities in its `--dir`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use coffer_platform::client::ClientTls;
use coffer_platform::config::AuditMode;
use coffer_platform::server::{RunningServer, ServerParams, ServiceRegistration};
use coffer_platform::tls::ServerTls;
use coffer_proto::bench::v1 as bench_pb;
use coffer_proto::keys::v1 as keys_pb;
use serde::Serialize;
use tonic::transport::Channel;

/// Scenarios `coffer bench` knows.
pub const SCENARIOS: &[&str] = &[
    "echo",
    "health",
    "encrypt",
    "decrypt",
    "generate-data-key",
    "sign",
    "get-public-key",
    "encrypt-policy-50",
    "encrypt-best-effort",
];

/// Scenarios `--background` cannot run: it drives the keys service as the
/// admin over one connection of its own, and these need another target or
/// another identity.
const NOT_IN_BACKGROUND: &[&str] = &["echo", "encrypt-policy-50", "encrypt-best-effort"];

/// Statements in the key policy and in the identity policy that
/// `encrypt-policy-50` evaluates on every call.
pub const HEAVY_POLICY_STATEMENTS: usize = 50;
/// The user whose identity policy is the heavy one.
const HEAVY_USER: &str = "bench-heavy";

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Comma-separated scenarios, run one after the other.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "echo,encrypt,decrypt,generate-data-key"
    )]
    pub scenario: Vec<String>,
    /// Requests in flight at once (1 to 100,000).
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the requests are spread over (1 to 1,000, and
    /// at most --concurrency).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// How long each scenario runs (seconds), unless --total is given.
    #[arg(long, short = 'z', default_value_t = 10.0)]
    pub duration: f64,
    /// Stop each scenario after this many requests instead (not with
    /// --duration).
    #[arg(long, short = 'n', conflicts_with = "duration")]
    pub total: Option<u64>,
    /// Run the scenario list this many times, interleaved, and report each
    /// scenario's median requests/sec and its ratio to echo or, when echo
    /// did not run (not listed, or skipped against --addr), to health if it
    /// ran (noise on a shared machine then moves one sample, not the
    /// conclusion). Every second round runs the list in reverse order, so a
    /// machine that slows down or speeds up during a round does not always
    /// favour the same scenario.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Unmeasured warm-up before each scenario (seconds).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Plaintext / echo payload size in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Write the summaries as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Drive a running instance at this address instead of an in-process one.
    #[arg(long)]
    pub addr: Option<String>,
    /// With --addr: the `coffer dev` directory holding ca.pem and the admin identity.
    #[arg(long, default_value = "coffer-dev")]
    pub dir: PathBuf,
    /// Key spec of the signing key for `sign` and `get-public-key`
    /// (RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384,
    /// ECC_NIST_P521, ECC_SECG_P256K1).
    #[arg(long, default_value = "RSA_2048")]
    pub key_spec: String,
    /// A scenario that runs as background load while each measured one runs
    /// (for example `sign`, to see Encrypt's latency under RSA load).
    #[arg(long)]
    pub background: Option<String>,
    /// Concurrency of the background load (1 to 100,000).
    #[arg(long, default_value_t = 64)]
    pub background_concurrency: usize,
    /// Worker threads of the load generator's runtime. One keeps the
    /// generator's own CPU small on a small machine (the in-process target
    /// has a runtime of its own); raise it with many connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub loadgen_threads: u16,
    /// The in-process target's services export their audit events over
    /// OTLP/mTLS to its audit service, as services in separate processes
    /// do, instead of handing them over in-process.
    #[arg(long)]
    pub audit_over_otlp: bool,
}

/// One scenario's results, in ghz's terms: `count`, the rate and the
/// average are of every response, the other latencies (fastest, slowest,
/// percentiles) of the OK ones only, as ghz computes them; `status_codes`
/// counts every response by its gRPC code name (`OK`, `Unavailable`, ...).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    /// Which of the `--rounds` it was measured in, from 1.
    pub round: usize,
    pub concurrency: usize,
    pub connections: usize,
    pub payload_bytes: usize,
    pub count: u64,
    pub total_seconds: f64,
    pub requests_per_second: f64,
    pub average_ms: f64,
    pub fastest_ms: f64,
    pub slowest_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub status_codes: BTreeMap<String, u64>,
}

impl Summary {
    /// ghz's text layout.
    pub fn render(&self) -> String {
        let mut text = format!(
            "\n{} (c={}, connections={}, payload={} B)\nSummary:\n  Count:\t{}\n  Total:\t{:.2} s\n  Slowest:\t{:.3} ms\n  Fastest:\t{:.3} ms\n  Average:\t{:.3} ms\n  Requests/sec:\t{:.1}\n\nLatency distribution:\n  50 % in {:.3} ms\n  90 % in {:.3} ms\n  99 % in {:.3} ms\n\nStatus code distribution:\n",
            self.scenario,
            self.concurrency,
            self.connections,
            self.payload_bytes,
            self.count,
            self.total_seconds,
            self.slowest_ms,
            self.fastest_ms,
            self.average_ms,
            self.requests_per_second,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
        );
        for (code, count) in &self.status_codes {
            text.push_str(&format!("  [{code}]\t{count} responses\n"));
        }
        text
    }
}

/// A request a worker sends, over and over.
#[derive(Clone)]
enum Workload {
    Echo(Vec<u8>),
    Health,
    Encrypt {
        key_id: String,
        plaintext: Vec<u8>,
    },
    Decrypt {
        blob: Vec<u8>,
    },
    GenerateDataKey {
        key_id: String,
    },
    Sign {
        key_id: String,
        message: Vec<u8>,
        algorithm: &'static str,
    },
    GetPublicKey {
        key_id: String,
    },
}

async fn send(workload: &Workload, channel: Channel) -> tonic::Code {
    let outcome = match workload {
        Workload::Echo(payload) => bench_pb::echo_client::EchoClient::new(channel)
            .echo(bench_pb::EchoRequest {
                payload: payload.clone(),
            })
            .await
            .map(drop),
        Workload::Health => tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(drop),
        Workload::Encrypt { key_id, plaintext } => keys_pb::keys_client::KeysClient::new(channel)
            .encrypt(keys_pb::EncryptRequest {
                key_id: key_id.clone(),
                plaintext: plaintext.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        Workload::Decrypt { blob } => keys_pb::keys_client::KeysClient::new(channel)
            .decrypt(keys_pb::DecryptRequest {
                ciphertext_blob: blob.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        Workload::GenerateDataKey { key_id } => keys_pb::keys_client::KeysClient::new(channel)
            .generate_data_key(keys_pb::GenerateDataKeyRequest {
                key_id: key_id.clone(),
                key_spec: "AES_256".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        Workload::Sign {
            key_id,
            message,
            algorithm,
        } => keys_pb::keys_client::KeysClient::new(channel)
            .sign(keys_pb::SignRequest {
                key_id: key_id.clone(),
                message: message.clone(),
                signing_algorithm: (*algorithm).into(),
                ..Default::default()
            })
            .await
            .map(drop),
        Workload::GetPublicKey { key_id } => keys_pb::keys_client::KeysClient::new(channel)
            .get_public_key(keys_pb::GetPublicKeyRequest {
                key_id: key_id.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
    };
    match outcome {
        Ok(()) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// A gRPC code's name as ghz (and grpc-go) prints it.
fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Canceled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

/// Responses in `codes` that were not OK.
fn not_ok(codes: &BTreeMap<String, u64>) -> u64 {
    codes
        .iter()
        .filter(|(name, _)| name.as_str() != "OK")
        .map(|(_, count)| count)
        .sum()
}

/// How long a run lasts: a duration, a request count, or until a flag is
/// raised (a background load, for as long as the measured run lasts).
#[derive(Debug, Clone)]
pub enum Stop {
    After(Duration),
    Count(u64),
    Until(Arc<AtomicBool>),
}

/// How long one call may take before it counts as DeadlineExceeded and the
/// worker goes on (ghz's default `--timeout`), so a server that stops
/// answering ends the run rather than hanging it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection may take to open (ghz's `--connect-timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one run of a workload measured.
#[derive(Debug, Default)]
struct Driven {
    /// The latency of each OK response.
    ok_latencies_us: Vec<u32>,
    /// The latencies of every response, summed.
    all_latencies_us: u64,
    /// Every response, by its code's name.
    codes: BTreeMap<String, u64>,
    elapsed: Duration,
}

/// Drives `workload` with `concurrency` workers spread over `channels`.
async fn drive(
    workload: &Workload,
    channels: &[Channel],
    concurrency: usize,
    stop: Stop,
) -> Driven {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let channel = channels[worker % channels.len()].clone();
        let workload = workload.clone();
        let issued = issued.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::with_capacity(4096);
            let mut all_us: u64 = 0;
            let mut codes: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                let go_on = match &stop {
                    Stop::After(duration) => started.elapsed() < *duration,
                    Stop::Count(total) => issued.fetch_add(1, Ordering::Relaxed) < *total,
                    Stop::Until(raised) => !raised.load(Ordering::Relaxed),
                };
                if !go_on {
                    break;
                }
                let sent = Instant::now();
                let code = tokio::time::timeout(CALL_TIMEOUT, send(&workload, channel.clone()))
                    .await
                    .unwrap_or(tonic::Code::DeadlineExceeded);
                let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                all_us += u64::from(micros);
                if code == tonic::Code::Ok {
                    latencies_us.push(micros);
                }
                *codes.entry(code_name(code).to_owned()).or_default() += 1;
            }
            (latencies_us, all_us, codes)
        }));
    }
    let mut driven = Driven::default();
    for worker in workers {
        if let Ok((latencies, all_us, codes)) = worker.await {
            driven.ok_latencies_us.extend(latencies);
            driven.all_latencies_us += all_us;
            for (code, count) in codes {
                *driven.codes.entry(code).or_default() += count;
            }
        }
    }
    driven.elapsed = started.elapsed();
    driven
}

fn summarize(scenario: &str, args: &BenchArgs, round: usize, driven: Driven) -> Summary {
    let Driven {
        ok_latencies_us: mut latencies_us,
        all_latencies_us,
        codes: status_codes,
        elapsed,
    } = driven;
    latencies_us.sort_unstable();
    let count: u64 = status_codes.values().sum();
    let millis = |micros: u32| f64::from(micros) / 1000.0;
    let percentile = |fraction: f64| {
        if latencies_us.is_empty() {
            return 0.0;
        }
        let index = ((latencies_us.len() as f64 * fraction).ceil() as usize)
            .clamp(1, latencies_us.len())
            - 1;
        millis(latencies_us[index])
    };
    Summary {
        scenario: scenario.to_owned(),
        round,
        concurrency: args.concurrency,
        connections: args.connections,
        payload_bytes: args.payload,
        count,
        total_seconds: elapsed.as_secs_f64(),
        requests_per_second: count as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        average_ms: if count == 0 {
            0.0
        } else {
            all_latencies_us as f64 / count as f64 / 1000.0
        },
        fastest_ms: latencies_us.first().copied().map_or(0.0, millis),
        slowest_ms: latencies_us.last().copied().map_or(0.0, millis),
        p50_ms: percentile(0.50),
        p90_ms: percentile(0.90),
        p99_ms: percentile(0.99),
        status_codes,
    }
}

/// The echo service.
struct EchoService;

#[tonic::async_trait]
impl bench_pb::echo_server::Echo for EchoService {
    async fn echo(
        &self,
        request: tonic::Request<bench_pb::EchoRequest>,
    ) -> Result<tonic::Response<bench_pb::EchoResponse>, tonic::Status> {
        Ok(tonic::Response::new(bench_pb::EchoResponse {
            payload: request.into_inner().payload,
        }))
    }
}

/// What the bench runs against.
struct Target {
    keys_addr: String,
    echo_addr: Option<String>,
    tls: ClientTls,
    /// The identity with the 50-statement identity policy (in-process only).
    heavy_tls: Option<ClientTls>,
    /// The in-process audit service and exporter, and the runtime they run
    /// on (for the accounting check after the run).
    audit: Option<InProcessAudit>,
    _instance: Option<(Arc<crate::Instance>, RunningServer, tempfile::TempDir)>,
}

#[derive(Clone)]
struct InProcessAudit {
    instance: Arc<crate::Instance>,
    runtime: tokio::runtime::Handle,
}

impl InProcessAudit {
    /// Waits until every event emitted so far is stored, so one round's
    /// deferred audit work does not run inside the next round. Returns how
    /// long that took.
    async fn drain(&self) -> anyhow::Result<Duration> {
        let instance = self.instance.clone();
        let started = std::time::Instant::now();
        self.runtime
            .spawn(async move { instance.flush_audit(Duration::from_secs(120)).await })
            .await??;
        Ok(started.elapsed())
    }

    /// Flushes the exporter, then counts the stored events named `name`.
    async fn count_after_flush(&self, name: &'static str) -> anyhow::Result<i64> {
        self.drain().await?;
        let instance = self.instance.clone();
        self.runtime
            .spawn(async move {
                let core = instance
                    .audit_core()
                    .context("the audit service is not running")?;
                core.settled().await;
                Ok::<i64, anyhow::Error>(core.store().count_events(name).await?)
            })
            .await?
    }
}

/// Starts the in-process target on a runtime of its own (its own worker
/// threads), so the servers and the load generator are scheduled apart, as
/// they would be in two processes. With one runtime, where tokio happened to
/// place the two ends of the single connection made throughput bimodal.
fn in_process_target_on_own_runtime(mode: AuditMode, over_otlp: bool) -> anyhow::Result<Target> {
    let (ready, target) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("coffer-bench-target".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("coffer-target")
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ =
                        ready.send(Err(anyhow::anyhow!("starting the target runtime: {error}")));
                    return;
                }
            };
            runtime.block_on(async move {
                match in_process_target(mode, over_otlp).await {
                    Ok(target) => {
                        let _ = ready.send(Ok(target));
                        // Serve until the process ends.
                        std::future::pending::<()>().await;
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                    }
                }
            });
        })?;
    target.recv()?
}

async fn in_process_target(mode: AuditMode, over_otlp: bool) -> anyhow::Result<Target> {
    let directory = tempfile::tempdir()?;
    // Over OTLP the exporter needs the audit service's address before it
    // starts: a port is picked here instead of by the listener.
    let listen = if over_otlp {
        std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?
    } else {
        SocketAddr::from(([127, 0, 0, 1], 0))
    };
    let layout = crate::dev::prepare(directory.path(), listen)?;
    add_heavy_identity_policy(&layout)?;
    let heavy = coffer_platform::pki::Authority::load(&layout.dir)?.issue(
        &format!(
            "spiffe://{}/account/{}/user/{HEAVY_USER}",
            crate::dev::DEV_TRUST_DOMAIN,
            crate::dev::DEV_ACCOUNT
        ),
        &[],
        &[],
    )?;
    let heavy_tls = ClientTls::from_pem(
        &std::fs::read(layout.ca())?,
        Some((heavy.cert_pem.as_bytes(), heavy.key_pem.as_bytes())),
    )?;
    let mode_name = match mode {
        AuditMode::Required => "required",
        AuditMode::BestEffort => "best_effort",
    };
    // The environment's COFFER_* overrides apply (a Postgres database for
    // the audit service, say), except those `coffer dev` ignores too (its
    // certificates are issued for its own trust domain and files) and the
    // admin port (a second target would find it taken); the audit mode is
    // the scenario's.
    let endpoint = over_otlp.then(|| ("COFFER_AUDIT__ENDPOINT".to_owned(), listen.to_string()));
    let (environment, _ignored) =
        crate::dev::dev_overrides(coffer_platform::config::coffer_environment()?);
    let overrides = environment
        .into_iter()
        .filter(|(name, _)| name != "COFFER_AUDIT__MODE" && name != "COFFER_ADMIN_LISTEN")
        .chain([("COFFER_AUDIT__MODE".to_owned(), mode_name.to_owned())])
        .chain(endpoint);
    let settings = coffer_platform::config::load(Some(&layout.config()), overrides)?;
    let services: Vec<String> = crate::BUILT_SERVICES
        .iter()
        .map(|name| (*name).to_owned())
        .collect();
    let instance = Arc::new(
        crate::launch(
            &settings,
            &services,
            Arc::new(coffer_platform::clock::SystemClock),
        )
        .await?,
    );
    let keys_addr = instance
        .addr_of("keys")
        .context("keys did not start")?
        .to_string();
    let echo = coffer_platform::server::start(ServerParams {
        listener: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        admin_listener: None,
        health: None,
        tls: Arc::new(ServerTls::load(settings.tls.clone())?),
        call: coffer_platform::call::CallSettings {
            location: settings.location.clone(),
            trust_domain: settings.trust_domain.clone(),
            request_timeout: settings.limits.request_timeout,
            max_concurrent_requests: settings.limits.max_concurrent_requests,
            audit_mode: settings.audit.mode,
        },
        max_message_bytes: settings.limits.max_message_bytes,
        shutdown_grace: Duration::from_secs(5),
        max_connection_age: settings.limits.max_connection_age,
        services: vec![ServiceRegistration {
            catalog: None,
            descriptor_set: coffer_proto::FILE_DESCRIPTOR_SET,
            install: Box::new(|routes, max_message_bytes| {
                routes.add_service(
                    bench_pb::echo_server::EchoServer::new(EchoService)
                        .max_decoding_message_size(max_message_bytes),
                );
            }),
            audit_sink: None,
            outbox: None,
        }],
        audit_sink: Arc::new(NoApiCalls),
        authorizer: Arc::new(coffer_platform::authz::Authorizer::new(
            settings.location.clone(),
            Arc::new(coffer_platform::authz::IdentityPolicies::new(Vec::new())),
            Arc::new(coffer_platform::clock::SystemClock),
        )),
    })
    .await?;
    let echo_addr = echo.local_addr().to_string();
    let tls = ClientTls::from_files(
        &layout.ca(),
        Some((&layout.cert("admin"), &layout.key("admin"))),
    )?;
    Ok(Target {
        keys_addr,
        echo_addr: Some(echo_addr),
        tls,
        heavy_tls: Some(heavy_tls),
        audit: Some(InProcessAudit {
            instance: instance.clone(),
            runtime: tokio::runtime::Handle::current(),
        }),
        _instance: Some((instance, echo, directory)),
    })
}

/// A key policy of [`HEAVY_POLICY_STATEMENTS`] statements, as a large
/// organisation's might read: the account root, 47 other principals with
/// encryption-context conditions, a Deny that does not apply, and the bench
/// user last, so every statement is evaluated.
fn heavy_key_policy() -> String {
    let account = crate::dev::DEV_ACCOUNT;
    let mut statements = vec![serde_json::json!({
        "Sid": "Admin", "Effect": "Allow",
        "Principal": {"AWS": format!("arn:coffer:iam::{account}:root")},
        "Action": "kms:*", "Resource": "*",
    })];
    for index in 0..HEAVY_POLICY_STATEMENTS - 3 {
        statements.push(serde_json::json!({
            "Sid": format!("Service{index}"), "Effect": "Allow",
            "Principal": {"AWS": format!("arn:coffer:iam::{account}:role/service-{index}")},
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*",
            "Condition": {"StringEquals": {"kms:EncryptionContext:tenant": format!("tenant-{index}")}},
        }));
    }
    statements.push(serde_json::json!({
        "Sid": "OnlyFromLoopback", "Effect": "Deny", "Principal": "*",
        "Action": "kms:*", "Resource": "*",
        "Condition": {"NotIpAddress": {"aws:SourceIp": ["127.0.0.0/8", "::1/128"]}},
    }));
    statements.push(serde_json::json!({
        "Sid": "Bench", "Effect": "Allow",
        "Principal": {"AWS": format!("arn:coffer:iam::{account}:user/{HEAVY_USER}")},
        "Action": "kms:Encrypt", "Resource": "*",
    }));
    serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// Attaches an identity policy of [`HEAVY_POLICY_STATEMENTS`] statements to
/// the bench user in the dev config: 48 that do not apply, a Deny that does
/// not apply, and the Allow last.
fn add_heavy_identity_policy(layout: &crate::dev::DevDir) -> anyhow::Result<()> {
    let account = crate::dev::DEV_ACCOUNT;
    let mut statements: Vec<serde_json::Value> = (0..HEAVY_POLICY_STATEMENTS - 2)
        .map(|index| {
            serde_json::json!({
                "Sid": format!("Other{index}"), "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:ReEncrypt*", "kms:DescribeKey"],
                "Resource": format!("arn:coffer:kms:*:{account}:key/other-{index}-*"),
            })
        })
        .collect();
    statements.push(serde_json::json!({
        "Sid": "NoDeletion", "Effect": "Deny",
        "Action": ["kms:ScheduleKeyDeletion", "kms:PutKeyPolicy"], "Resource": "*",
    }));
    statements.push(serde_json::json!({
        "Sid": "Encrypt", "Effect": "Allow", "Action": "kms:Encrypt",
        "Resource": format!("arn:coffer:kms:*:{account}:key/*"),
    }));
    let document =
        serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string();
    let config = std::fs::read_to_string(layout.config())?;
    let entry = format!(
        "    - name: bench-heavy\n      principals: [\"arn:coffer:iam::{account}:user/{HEAVY_USER}\"]\n      policy: '{document}'\nservices:\n"
    );
    let updated = config.replacen("services:\n", &entry, 1);
    anyhow::ensure!(updated != config, "the dev config has no services block");
    std::fs::write(layout.config(), updated)?;
    Ok(())
}

async fn channels(tls: &ClientTls, addr: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(addr, "localhost"))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "connecting to {addr}: no TLS connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )
            })?;
        channels.push(connected?);
    }
    Ok(channels)
}

/// Runs the scenarios and returns their summaries (also printed).
pub async fn run(args: &BenchArgs) -> anyhow::Result<Vec<Summary>> {
    for scenario in args.scenario.iter().chain(args.background.iter()) {
        if !SCENARIOS.contains(&scenario.as_str()) {
            bail!(
                "unknown scenario {scenario:?}; known: {}",
                SCENARIOS.join(", ")
            );
        }
    }
    if !(1..=100_000).contains(&args.concurrency) {
        bail!("--concurrency must be 1 to 100000");
    }
    if !(1..=1_000).contains(&args.connections) || args.connections > args.concurrency {
        bail!("--connections must be 1 to 1000, and at most --concurrency");
    }
    if args.background.is_some() && !(1..=100_000).contains(&args.background_concurrency) {
        bail!("--background-concurrency must be 1 to 100000");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if let Some(background) = &args.background
        && NOT_IN_BACKGROUND.contains(&background.as_str())
    {
        let possible: Vec<&str> = SCENARIOS
            .iter()
            .copied()
            .filter(|scenario| !NOT_IN_BACKGROUND.contains(scenario))
            .collect();
        bail!(
            "--background runs on one connection to the keys service as the admin: {}",
            possible.join(", ")
        );
    }
    for (flag, seconds) in [("--duration", args.duration), ("--warmup", args.warmup)] {
        let allowed = if flag == "--warmup" {
            seconds >= 0.0
        } else {
            seconds > 0.0
        };
        if !seconds.is_finite() || !allowed || seconds > 86_400.0 {
            bail!("{flag} must be a number of seconds up to a day (got {seconds})");
        }
    }
    if args.total == Some(0) {
        bail!("--total must be at least 1");
    }
    if args.audit_over_otlp && args.addr.is_some() {
        bail!(
            "--audit-over-otlp configures the in-process target; with --addr the instance's own configuration decides"
        );
    }
    if args.payload == 0 || args.payload > 4096 {
        bail!("--payload must be 1 to 4096 bytes (KMS's plaintext limit)");
    }
    let needs_signing_key = args
        .scenario
        .iter()
        .chain(args.background.iter())
        .any(|scenario| scenario == "sign" || scenario == "get-public-key");
    // Checked before anything starts, and only when a scenario signs.
    let signing_algorithm = match (needs_signing_key, args.key_spec.as_str()) {
        (false, _) => "",
        (true, "RSA_2048" | "RSA_3072" | "RSA_4096") => "RSASSA_PKCS1_V1_5_SHA_256",
        (true, "ECC_NIST_P256" | "ECC_SECG_P256K1") => "ECDSA_SHA_256",
        (true, "ECC_NIST_P384") => "ECDSA_SHA_384",
        (true, "ECC_NIST_P521") => "ECDSA_SHA_512",
        (true, other) => bail!(
            "--key-spec {other} is not a signing key spec \
             (RSA_2048/3072/4096, ECC_NIST_P256/P384/P521, ECC_SECG_P256K1)"
        ),
    };
    let wants_best_effort = args
        .scenario
        .iter()
        .any(|scenario| scenario == "encrypt-best-effort");
    let target = match &args.addr {
        None => in_process_target_on_own_runtime(AuditMode::Required, args.audit_over_otlp)?,
        Some(addr) => {
            let layout = crate::dev::DevDir {
                dir: args.dir.clone(),
            };
            Target {
                keys_addr: addr.clone(),
                echo_addr: None,
                tls: ClientTls::from_files(
                    &layout.ca(),
                    Some((&layout.cert("admin"), &layout.key("admin"))),
                )?,
                heavy_tls: None,
                audit: None,
                _instance: None,
            }
        }
    };
    // `encrypt-best-effort`: the same Encrypt against a second instance whose
    // audit mode is best_effort, for the cost of the required mode.
    let best_effort = match (wants_best_effort, &args.addr) {
        (false, _) => None,
        (true, Some(_)) => bail!("encrypt-best-effort needs the in-process target (no --addr)"),
        (true, None) => {
            let target =
                in_process_target_on_own_runtime(AuditMode::BestEffort, args.audit_over_otlp)?;
            let channels = channels(&target.tls, &target.keys_addr, args.connections).await?;
            let key_id = keys_pb::keys_client::KeysClient::new(channels[0].clone())
                .create_key(keys_pb::CreateKeyRequest::default())
                .await?
                .into_inner()
                .key_metadata
                .map(|metadata| metadata.key_id)
                .context("CreateKey returned no metadata")?;
            Some((target, channels, key_id))
        }
    };
    let stored_before = match &target.audit {
        Some(audit) => audit.count_after_flush("Encrypt").await?,
        None => 0,
    };
    let keys_channels = channels(&target.tls, &target.keys_addr, args.connections).await?;
    let mut setup = keys_pb::keys_client::KeysClient::new(keys_channels[0].clone());
    let key_id = setup
        .create_key(keys_pb::CreateKeyRequest {
            description: "coffer bench".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .map(|metadata| metadata.key_id)
        .context("CreateKey returned no metadata")?;
    let payload = vec![0x5a_u8; args.payload];
    let blob = setup
        .encrypt(keys_pb::EncryptRequest {
            key_id: key_id.clone(),
            plaintext: payload.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .ciphertext_blob;

    let needs_heavy_key = args
        .scenario
        .iter()
        .chain(args.background.iter())
        .any(|scenario| scenario == "encrypt-policy-50");
    let (heavy_key_id, heavy_channels) = match (&target.heavy_tls, needs_heavy_key) {
        (_, false) => (String::new(), Vec::new()),
        (None, true) => bail!("encrypt-policy-50 needs the in-process target (no --addr)"),
        (Some(heavy_tls), true) => {
            let key_id = setup
                .create_key(keys_pb::CreateKeyRequest {
                    description: "coffer bench: 50-statement key policy".into(),
                    policy: heavy_key_policy(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .key_metadata
                .map(|metadata| metadata.key_id)
                .context("CreateKey returned no metadata")?;
            let heavy_channels = channels(heavy_tls, &target.keys_addr, args.connections).await?;
            (key_id, heavy_channels)
        }
    };

    let signing_key_id = if needs_signing_key {
        setup
            .create_key(keys_pb::CreateKeyRequest {
                description: "coffer bench signing".into(),
                key_spec: args.key_spec.clone(),
                key_usage: "SIGN_VERIFY".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .key_metadata
            .map(|metadata| metadata.key_id)
            .context("CreateKey returned no metadata")?
    } else {
        String::new()
    };

    let stop = match args.total {
        Some(total) => Stop::Count(total),
        None => Stop::After(Duration::from_secs_f64(args.duration)),
    };
    let workload_for = |scenario: &str| -> anyhow::Result<Workload> {
        Ok(match scenario {
            "echo" => Workload::Echo(payload.clone()),
            "health" => Workload::Health,
            "encrypt" => Workload::Encrypt {
                key_id: key_id.clone(),
                plaintext: payload.clone(),
            },
            "decrypt" => Workload::Decrypt { blob: blob.clone() },
            "generate-data-key" => Workload::GenerateDataKey {
                key_id: key_id.clone(),
            },
            "sign" => Workload::Sign {
                key_id: signing_key_id.clone(),
                message: payload.clone(),
                algorithm: signing_algorithm,
            },
            "get-public-key" => Workload::GetPublicKey {
                key_id: signing_key_id.clone(),
            },
            "encrypt-policy-50" => Workload::Encrypt {
                key_id: heavy_key_id.clone(),
                plaintext: payload.clone(),
            },
            "encrypt-best-effort" => Workload::Encrypt {
                key_id: best_effort
                    .as_ref()
                    .map(|(_, _, key_id)| key_id.clone())
                    .unwrap_or_default(),
                plaintext: payload.clone(),
            },
            other => bail!("unknown scenario {other:?}"),
        })
    };
    let mut summaries = Vec::new();
    // Encrypt calls answered by the required-mode instance (the set-up
    // Encrypt included), for the accounting check.
    let mut encrypt_calls: u64 = 1;
    let mut encrypt_ok: u64 = 1;
    // Responses of the measured runs (background included), and those of
    // them that were not OK: the run fails if there were any.
    let mut measured_calls: u64 = 0;
    let mut failed_calls: u64 = 0;
    let rounds = args.rounds;
    let mut per_scenario: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        if rounds > 1 {
            println!("\n=== round {} of {rounds}", round + 1);
        }
        for scenario in round_order(&args.scenario, round) {
            let workload = workload_for(scenario)?;
            let scenario_channels = if scenario == "echo" {
                let Some(echo_addr) = &target.echo_addr else {
                    eprintln!("echo: skipped (only with the in-process target)");
                    continue;
                };
                channels(&target.tls, echo_addr, args.connections).await?
            } else if scenario == "encrypt-policy-50" {
                heavy_channels.clone()
            } else if scenario == "encrypt-best-effort" {
                best_effort
                    .as_ref()
                    .map(|(_, channels, _)| channels.clone())
                    .unwrap_or_default()
            } else {
                keys_channels.clone()
            };
            let audited_encrypts = matches!(scenario.as_str(), "encrypt" | "encrypt-policy-50");
            if args.warmup > 0.0 {
                let Driven { codes, .. } = drive(
                    &workload,
                    &scenario_channels,
                    args.concurrency,
                    Stop::After(Duration::from_secs_f64(args.warmup)),
                )
                .await;
                if audited_encrypts {
                    encrypt_calls += codes.values().sum::<u64>();
                    encrypt_ok += codes.get("OK").copied().unwrap_or(0);
                }
            }
            let background = match &args.background {
                None => None,
                Some(background) => {
                    let background_workload = workload_for(background)?;
                    let background_channels = channels(&target.tls, &target.keys_addr, 1).await?;
                    let concurrency = args.background_concurrency;
                    // It runs exactly as long as the measured run does.
                    let measured_done = Arc::new(AtomicBool::new(false));
                    let background_stop = Stop::Until(measured_done.clone());
                    Some((
                        measured_done,
                        tokio::spawn(async move {
                            drive(
                                &background_workload,
                                &background_channels,
                                concurrency,
                                background_stop,
                            )
                            .await
                        }),
                    ))
                }
            };
            let driven = drive(
                &workload,
                &scenario_channels,
                args.concurrency,
                stop.clone(),
            )
            .await;
            if let Some((measured_done, _)) = &background {
                measured_done.store(true, Ordering::Relaxed);
            }
            let codes = &driven.codes;
            if codes.is_empty() {
                bail!("{scenario}: no request completed in the run; give a longer --duration");
            }
            measured_calls += codes.values().sum::<u64>();
            failed_calls += not_ok(codes);
            if audited_encrypts {
                encrypt_calls += codes.values().sum::<u64>();
                encrypt_ok += codes.get("OK").copied().unwrap_or(0);
            }
            let summary = summarize(scenario, args, round + 1, driven);
            println!("{}", summary.render());
            let scenario_audit = if scenario == "encrypt-best-effort" {
                best_effort
                    .as_ref()
                    .and_then(|(target, _, _)| target.audit.as_ref())
            } else {
                target.audit.as_ref()
            };
            if let Some(audit) = scenario_audit {
                let drained = audit.drain().await?;
                if drained >= Duration::from_millis(1) {
                    println!(
                        "  audit backlog stored {:.1} ms after the round (not measured)",
                        drained.as_secs_f64() * 1e3
                    );
                }
            }
            per_scenario
                .entry(scenario.clone())
                .or_default()
                .push(summary.requests_per_second);
            summaries.push(summary);
            if let (Some((_, task)), Some(name)) = (background, &args.background) {
                let driven = task.await?;
                let codes = &driven.codes;
                measured_calls += codes.values().sum::<u64>();
                failed_calls += not_ok(codes);
                if name == "encrypt" {
                    encrypt_calls += codes.values().sum::<u64>();
                    encrypt_ok += codes.get("OK").copied().unwrap_or(0);
                }
                let background_args = BenchArgs {
                    concurrency: args.background_concurrency,
                    connections: 1,
                    ..args.clone()
                };
                let summary = summarize(
                    &format!("{name} (background)"),
                    &background_args,
                    round + 1,
                    driven,
                );
                println!("{}", summary.render());
                summaries.push(summary);
            }
        }
    }
    // Written before the accounting check, so a failed check leaves the
    // figures behind.
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&summaries)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if rounds > 1 {
        let reference =
            reference_scenario(&per_scenario).map(|(name, values)| (name, median(values)));
        println!("\nMedian of {rounds} rounds:");
        for (scenario, values) in &per_scenario {
            let rps = median(values);
            match reference {
                Some((name, reference_rps)) if reference_rps > 0.0 => {
                    println!(
                        "  {scenario:<20} {rps:>10.1} req/s  {:>5.1} % of {name}",
                        100.0 * rps / reference_rps
                    );
                }
                _ => println!("  {scenario:<20} {rps:>10.1} req/s"),
            }
        }
        // Each round runs the two modes back to back, so the ratio within a
        // round is less exposed to the machine's slower drifts than the
        // ratio of the two medians.
        if let (Some(required), Some(best_effort)) = (
            per_scenario.get("encrypt"),
            per_scenario.get("encrypt-best-effort"),
        ) {
            let ratios: Vec<f64> = required
                .iter()
                .zip(best_effort)
                .filter(|(_, best_effort)| **best_effort > 0.0)
                .map(|(required, best_effort)| 100.0 * required / best_effort)
                .collect();
            let listed: Vec<String> = ratios.iter().map(|ratio| format!("{ratio:.0}")).collect();
            println!(
                "  required / best_effort, median of the rounds' ratios: {:.1} % (rounds: {})",
                median(&ratios),
                listed.join(", ")
            );
        }
    }
    if let Some(audit) = &target.audit {
        // Only the events stored during this run: an audit database given
        // in the environment may hold earlier runs'.
        let stored = audit.count_after_flush("Encrypt").await? - stored_before;
        let verdict = if u64::try_from(stored).ok() == Some(encrypt_calls) {
            "equal"
        } else {
            "DIFFERENT"
        };
        println!(
            "\nAudit accounting (required mode): {encrypt_calls} Encrypt calls ({encrypt_ok} OK), {stored} Encrypt events stored: {verdict}"
        );
        if verdict != "equal" {
            bail!("the audit service stored {stored} Encrypt events for {encrypt_calls} calls");
        }
    }
    if failed_calls > 0 {
        bail!(
            "{failed_calls} of {measured_calls} measured calls were not OK (their codes are above); \
             the latencies above are of the OK calls only"
        );
    }
    Ok(summaries)
}

/// The median: the middle value, or the mean of the two middle ones.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match (sorted.len() % 2, sorted.get(middle)) {
        (_, None) => 0.0,
        (1, Some(value)) => *value,
        (_, Some(upper)) => (sorted[middle - 1] + upper) / 2.0,
    }
}

/// The scenarios of round `round` (from 0): the list as given, reversed in
/// every second round (A B, then B A), so that a drift of the machine's speed
/// within a round of two scenarios penalises each of them in turn.
fn round_order(scenarios: &[String], round: usize) -> Vec<&String> {
    let mut order: Vec<&String> = scenarios.iter().collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// The echo server's sink: echo is not an API, so no call reaches it.
struct NoApiCalls;

#[tonic::async_trait]
impl coffer_platform::audit::AuditSink for NoApiCalls {
    async fn emit(
        &self,
        _event: &coffer_platform::audit::AuditEvent,
        _delivery: coffer_platform::audit::Delivery,
    ) -> Result<(), coffer_platform::audit::AuditDeliveryError> {
        Err(coffer_platform::audit::AuditDeliveryError::Failed(
            "the echo server serves no API calls".into(),
        ))
    }

    async fn flush(
        &self,
        _timeout: Duration,
    ) -> Result<(), coffer_platform::audit::AuditDeliveryError> {
        Ok(())
    }
}

/// What the other scenarios of a run are reported as a share of: the echo
/// ceiling when it ran, else the health check when it ran, a call without
/// a payload that a running instance answers (against `--addr`, where echo
/// is skipped; ghz compares Encrypt with it against `coffer dev`).
fn reference_scenario<T>(per_scenario: &BTreeMap<String, T>) -> Option<(&'static str, &T)> {
    ["echo", "health"]
        .into_iter()
        .find_map(|name| Some((name, per_scenario.get(name)?)))
}

#[cfg(test)]
mod tests {
    use super::{median, reference_scenario, round_order};

    /// Arguments that cannot make a run are refused before anything starts.
    #[tokio::test]
    async fn bad_arguments_are_refused_up_front() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: super::BenchArgs,
        }
        for (arguments, message) in [
            (&["--duration=-1"][..], "--duration must be"),
            (&["-z", "NaN"], "--duration must be"),
            (&["--warmup=-0.5"], "--warmup must be"),
            (&["-n", "0"], "--total must be at least 1"),
            (
                &["--background", "echo"],
                "--background runs on one connection",
            ),
            (
                &["--background", "encrypt-best-effort"],
                "--background runs on one connection",
            ),
            (
                &["-c", "18446744073709551615"],
                "--concurrency must be 1 to",
            ),
            (&["-c", "2", "--connections", "8"], "at most --concurrency"),
            (&["--connections", "0"], "--connections must be 1 to"),
            (
                &["--background", "sign", "--background-concurrency", "0"],
                "--background-concurrency must be",
            ),
            (&["--rounds", "0"], "--rounds must be at least 1"),
            // Refused before any instance starts, and only when it signs.
            (
                &["--scenario", "sign", "--key-spec", "AES_128"],
                "not a signing key spec",
            ),
        ] {
            let command =
                Command::try_parse_from(std::iter::once("bench").chain(arguments.iter().copied()))
                    .unwrap();
            let error = super::run(&command.args).await.err().unwrap();
            assert!(
                error.to_string().contains(message),
                "{arguments:?}: {error}"
            );
        }
    }

    /// As ghz: the count, rate and average are of every response, the
    /// other latencies of the OK ones, and codes are named as grpc-go
    /// names them.
    #[test]
    fn latencies_are_of_the_ok_responses_and_codes_are_named_as_ghz_names_them() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: super::BenchArgs,
        }
        let args = Command::try_parse_from(["bench"]).unwrap().args;
        // A run is as long, or as many calls, never both.
        let both = Command::try_parse_from(["bench", "-z", "5", "-n", "10"]).err();
        assert_eq!(
            both.map(|error| error.kind()),
            Some(clap::error::ErrorKind::ArgumentConflict)
        );
        assert!(Command::try_parse_from(["bench", "-n", "10"]).is_ok());
        let codes: std::collections::BTreeMap<String, u64> = [
            (super::code_name(tonic::Code::Ok).to_owned(), 2),
            (
                super::code_name(tonic::Code::ResourceExhausted).to_owned(),
                2,
            ),
        ]
        .into();
        assert_eq!(super::not_ok(&codes), 2);
        // Two OK calls of 3 and 1 ms, two refused in 0.1 ms each.
        let summary = super::summarize(
            "encrypt",
            &args,
            1,
            super::Driven {
                ok_latencies_us: vec![3_000, 1_000],
                all_latencies_us: 4_200,
                codes,
                elapsed: std::time::Duration::from_secs(2),
            },
        );
        assert_eq!(summary.count, 4);
        assert!((summary.requests_per_second - 2.0).abs() < 1e-9);
        assert!((summary.fastest_ms - 1.0).abs() < 1e-9);
        // As ghz's: the average is of every response, the rest of the OK.
        assert!((summary.average_ms - 1.05).abs() < 1e-9);
        assert!((summary.p99_ms - 3.0).abs() < 1e-9);
        let rendered = summary.render();
        assert!(rendered.contains("[OK]\t2 responses"), "{rendered}");
        assert!(
            rendered.contains("[ResourceExhausted]\t2 responses"),
            "{rendered}"
        );
        assert_eq!(super::code_name(tonic::Code::Cancelled), "Canceled");
    }

    /// `tests/load/ghz/run.sh` fills in the demo key from the dev directory
    /// it is given, or `coffer-dev`, and passes the rest on to ghz (a stub
    /// here, which writes out what it was given).
    #[test]
    fn the_ghz_script_passes_flags_on_and_reads_the_dev_directory_it_is_given() -> anyhow::Result<()>
    {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/load/ghz/run.sh")
            .canonicalize()?;
        let work = tempfile::tempdir()?;
        let root = work.path();
        for (dir, key) in [("coffer-dev", "default-key"), ("elsewhere", "other-key")] {
            std::fs::create_dir(root.join(dir))?;
            std::fs::write(root.join(dir).join("demo-key-id"), key)?;
            std::fs::write(root.join(dir).join("demo-ciphertext.b64"), "Y2lwaGVy")?;
        }
        std::fs::create_dir(root.join("bin"))?;
        let stub = root.join("bin/ghz");
        // Its arguments, then the filled-in config.
        std::fs::write(&stub, "#!/bin/sh\necho \"$@\"\ncat \"$2\"\n")?;
        std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let path = format!("{}:{}", root.join("bin").display(), std::env::var("PATH")?);
        let run = |arguments: &[&str]| -> anyhow::Result<String> {
            let output = std::process::Command::new("bash")
                .arg(&script)
                .args(arguments)
                .current_dir(root)
                .env("PATH", &path)
                .output()?;
            anyhow::ensure!(
                output.status.success(),
                "{arguments:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            Ok(String::from_utf8(output.stdout)?)
        };
        // What ghz was given ends with `ending`, from a config for `key`.
        let check = |arguments: &[&str], ending: &str, key: &str| -> anyhow::Result<()> {
            let output = run(arguments)?;
            let given = output.lines().next().unwrap_or_default();
            assert!(given.ends_with(ending), "{arguments:?}: {output}");
            assert!(output.contains(key), "{arguments:?}: {output}");
            Ok(())
        };
        check(&["encrypt", "-n", "10"], " -n 10", "default-key")?;
        check(
            &["encrypt", "elsewhere", "-n", "10", "127.0.0.1:9443"],
            " -n 10 127.0.0.1:9443",
            "other-key",
        )?;
        check(&["health", "127.0.0.1:9443"], " 127.0.0.1:9443", "")?;
        Ok(())
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median(&[4.0, 1.0, 3.0, 2.0]) - 2.5).abs() < f64::EPSILON);
        assert!((median(&[10.0, 20.0]) - 15.0).abs() < f64::EPSILON);
        assert!((median(&[7.0]) - 7.0).abs() < f64::EPSILON);
        assert!(median(&[]).abs() < f64::EPSILON);
    }

    #[test]
    fn shares_are_of_echo_when_it_ran_else_of_the_health_check() {
        let run = |names: &[&str]| -> std::collections::BTreeMap<String, ()> {
            names.iter().map(|name| ((*name).to_owned(), ())).collect()
        };
        let reference = |names: &[&str]| reference_scenario(&run(names)).map(|(name, ())| name);
        assert_eq!(reference(&["encrypt", "echo", "health"]), Some("echo"));
        // Against --addr echo is skipped, so it never reaches the results.
        assert_eq!(reference(&["health", "encrypt"]), Some("health"));
        assert_eq!(reference(&["encrypt", "sign"]), None);
    }

    #[test]
    fn every_second_round_runs_the_scenarios_in_reverse() {
        let scenarios: Vec<String> = ["echo", "encrypt", "encrypt-best-effort"]
            .map(String::from)
            .to_vec();
        let names = |round| -> Vec<&str> {
            round_order(&scenarios, round)
                .into_iter()
                .map(String::as_str)
                .collect()
        };
        assert_eq!(names(0), ["echo", "encrypt", "encrypt-best-effort"]);
        assert_eq!(names(1), ["encrypt-best-effort", "encrypt", "echo"]);
        assert_eq!(names(2), ["echo", "encrypt", "encrypt-best-effort"]);
    }

    #[test]
    fn the_load_generator_runs_on_one_worker_unless_told_otherwise() {
        use clap::Parser as _;
        let parse = |flags: &[&str]| {
            crate::cli::Cli::try_parse_from(["coffer", "bench"].iter().chain(flags)).map(|cli| {
                match cli.command {
                    crate::cli::Command::Bench(args) => args.loadgen_threads,
                    _ => unreachable!("`coffer bench` parses as the bench command"),
                }
            })
        };
        assert_eq!(parse(&[]).expect("no flag"), 1);
        assert_eq!(parse(&["--loadgen-threads", "3"]).expect("3 threads"), 3);
        let zero = parse(&["--loadgen-threads", "0"]).expect_err("0 threads is refused");
        assert_eq!(zero.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
