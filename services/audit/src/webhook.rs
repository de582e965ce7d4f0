//! Delivering matched events to HTTPS webhook targets.
//!
//! Each delivery is a POST of the event envelope (JSON) with
//! `X-Coffer-Timestamp` (unix seconds) and `X-Coffer-Signature:
//! v1=<hex HMAC-SHA256 of "{timestamp}.{body}" under the target's secret>`,
//! so a receiver can check both origin and freshness. As EventBridge does
//! for API destinations, an answer of 401, 407, 409, 429 or 5xx, a refused
//! connection or a timeout is retried with exponential backoff up to the
//! target's MaximumRetryAttempts and MaximumEventAgeInSeconds; any other
//! answer that is not 2xx (a 400 or a redirect, say) would be answered the
//! same again and is not retried. Each pause is the backoff less up to half
//! of it at random, so deliveries that failed together do not all come back
//! together; an endpoint that answers with `Retry-After` (seconds or an
//! HTTP date) is not called again before then, and when then is past the
//! event's maximum age, not at all. A delivery that fails for good is
//! recorded and listed by ListFailedDeliveries.
//!
//! What one account's rules can hold is bounded, so that no tenant's dead
//! or slow endpoints can exhaust the service or delay another's deliveries:
//! it has at most [`MAX_PENDING_PER_ACCOUNT`] deliveries pending (in an
//! attempt or waiting to retry), holding at most 16 MiB of bodies (an
//! event's record may be 256 KiB), and [`MAX_ATTEMPTS_PER_ACCOUNT`]
//! attempts in progress; the service holds at most 20,000 deliveries and
//! 256 MiB. A delivery beyond its account's (or the service's) bound is not
//! attempted: it is recorded as failed at once, as EventBridge sends what it
//! cannot deliver to the target's dead-letter queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use rustls_pki_types::ServerName;
use tokio::sync::{Semaphore, mpsc};

use crate::store::{AuditStore, FailedDeliveryRecord, TargetRecord};

/// Deliveries in progress at most; more wait their turn.
const MAX_CONCURRENT_DELIVERIES: usize = 64;
/// Attempts in progress at most for one account, of the
/// [`MAX_CONCURRENT_DELIVERIES`].
pub const MAX_ATTEMPTS_PER_ACCOUNT: usize = 16;
/// Deliveries pending at most for one account.
pub const MAX_PENDING_PER_ACCOUNT: usize = 1_000;
/// Deliveries pending at most across all accounts.
const MAX_PENDING: usize = 20_000;
/// Bytes of bodies one account's pending deliveries hold at most (a body
/// two targets share counts twice).
const MAX_PENDING_BYTES_PER_ACCOUNT: usize = 16 * 1024 * 1024;
/// Bytes of bodies all pending deliveries hold at most.
const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;
/// Failures waiting to be written, one at a time; beyond, they are logged.
const FAILURES_WAITING: usize = 1_024;
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub const SIGNATURE_HEADER: &str = "x-coffer-signature";
pub const TIMESTAMP_HEADER: &str = "x-coffer-timestamp";
pub const EVENT_ID_HEADER: &str = "x-coffer-event-id";

/// One event for one target.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub target: TargetRecord,
    /// When the target's rule was created (see [`Dispatcher::run`]).
    pub rule_created_at_ms: i64,
    pub event_id: String,
    pub body: Arc<str>,
}

/// The deliveries pending, by account.
#[derive(Default)]
struct Pending {
    total: usize,
    total_bytes: usize,
    accounts: HashMap<String, AccountDeliveries>,
}

struct AccountDeliveries {
    pending: usize,
    bytes: usize,
    attempts: Arc<Semaphore>,
}

pub struct Dispatcher {
    tls: tokio_rustls::TlsConnector,
    /// Whether an endpoint may resolve to a non-public address.
    private_endpoints: bool,
    store: Arc<dyn AuditStore>,
    permits: Arc<Semaphore>,
    first_backoff: Duration,
    pending: Mutex<Pending>,
    failures: mpsc::Sender<FailedDeliveryRecord>,
}

impl Dispatcher {
    /// Webhook servers must chain to one of `roots`, and resolve to public
    /// addresses unless `private_endpoints`. Starts the task that records
    /// failures in `store`, so it needs a runtime.
    pub fn new(
        roots: rustls::RootCertStore,
        private_endpoints: bool,
        store: Arc<dyn AuditStore>,
        first_backoff: Duration,
    ) -> Self {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (failures, mut waiting) = mpsc::channel::<FailedDeliveryRecord>(FAILURES_WAITING);
        let recorder = store.clone();
        tokio::spawn(async move {
            while let Some(failure) = waiting.recv().await {
                if let Err(error) = recorder.record_failed_delivery(&failure).await {
                    tracing::error!(%error, "a failed webhook delivery could not be recorded");
                }
            }
        });
        Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            private_endpoints,
            store,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_DELIVERIES)),
            first_backoff,
            pending: Mutex::new(Pending::default()),
            failures,
        }
    }

    /// Starts delivering `job` in the background, or records it as failed
    /// when its account (or the service) has as many pending as it may.
    pub fn deliver(self: &Arc<Self>, job: DeliveryJob) {
        let bytes = job.body.len();
        let admitted = {
            let mut pending = self.lock_pending();
            let Pending {
                total,
                total_bytes,
                accounts,
            } = &mut *pending;
            let account = accounts
                .entry(job.target.account_id.clone())
                .or_insert_with(|| AccountDeliveries {
                    pending: 0,
                    bytes: 0,
                    attempts: Arc::new(Semaphore::new(MAX_ATTEMPTS_PER_ACCOUNT)),
                });
            let refused = if account.pending >= MAX_PENDING_PER_ACCOUNT {
                Some(format!(
                    "not attempted: the account has {MAX_PENDING_PER_ACCOUNT} deliveries pending, the most it may"
                ))
            } else if account.bytes + bytes > MAX_PENDING_BYTES_PER_ACCOUNT {
                Some(format!(
                    "not attempted: the account's pending deliveries hold {} bytes; with this one's {bytes} that is more than the {MAX_PENDING_BYTES_PER_ACCOUNT} it may",
                    account.bytes
                ))
            } else if *total >= MAX_PENDING || *total_bytes + bytes > MAX_PENDING_BYTES {
                Some("not attempted: the service has as many deliveries pending as it may".into())
            } else {
                None
            };
            match refused {
                Some(reason) => {
                    if account.pending == 0 {
                        accounts.remove(&job.target.account_id);
                    }
                    Err(reason)
                }
                None => {
                    account.pending += 1;
                    account.bytes += bytes;
                    *total += 1;
                    *total_bytes += bytes;
                    Ok(account.attempts.clone())
                }
            }
        };
        match admitted {
            Ok(attempts) => {
                let dispatcher = self.clone();
                tokio::spawn(async move {
                    let _done = Done(&dispatcher, &job.target.account_id, bytes);
                    dispatcher.run(&job, &attempts).await;
                });
            }
            Err(reason) => self.record_failure(&job, 0, reason),
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `job`'s failure for the store; when too many are waiting, it
    /// is only logged.
    fn record_failure(&self, job: &DeliveryJob, attempts: u32, last_error: String) {
        let failure = FailedDeliveryRecord {
            seq: 0,
            account_id: job.target.account_id.clone(),
            rule_name: job.target.rule_name.clone(),
            target_id: job.target.target_id.clone(),
            event_id: job.event_id.clone(),
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
            last_error,
            failed_at_ms: now_ms(),
        };
        if self.failures.try_send(failure).is_err() {
            tracing::warn!(event_id = %job.event_id, target = %job.target.target_id, "too many failed webhook deliveries are waiting to be recorded; this one is not");
        }
    }

    async fn run(&self, job: &DeliveryJob, account_attempts: &Semaphore) {
        let started = tokio::time::Instant::now();
        let limits = |target: &TargetRecord| {
            (
                Duration::from_secs(u64::try_from(target.max_event_age_s).unwrap_or(0)),
                u32::try_from(target.max_retries).unwrap_or(0) + 1,
            )
        };
        let (mut max_age, mut attempts_allowed) = limits(&job.target);
        let mut backoff = self.first_backoff;
        let mut attempts = 0u32;
        let last_error = loop {
            attempts += 1;
            // A slot, the account's and then the service's, is waited for
            // no longer than the event may still be delivered.
            let slots = tokio::time::timeout(max_age.saturating_sub(started.elapsed()), async {
                let account = account_attempts.acquire().await;
                let service = self.permits.acquire().await;
                (account, service)
            })
            .await;
            let outcome = match slots {
                Ok(_slots) => {
                    // Read with the slots held, right before every attempt,
                    // the first included: a job may have waited for its
                    // slots, and was routed with the target as it then
                    // stood. A changed target (a rotated secret, a new
                    // endpoint, other retry limits) is called as it is now;
                    // a removed one, or one whose rule was disabled (or
                    // deleted, and perhaps made again), not at all.
                    let Some(target) = self.current_target(job).await else {
                        tracing::info!(event_id = %job.event_id, target = %job.target.target_id, attempts, "the target was removed or its rule disabled; its delivery stops");
                        return;
                    };
                    (max_age, attempts_allowed) = limits(&target);
                    tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt(job, &target))
                        .await
                        .unwrap_or_else(|_| Err("the request timed out".into()))
                }
                Err(_) => Err("no delivery slot came free before the event's maximum age".into()),
            };
            let (error, retryable, asked) = match outcome {
                Ok(()) => {
                    tracing::debug!(event_id = %job.event_id, target = %job.target.target_id, attempts, "webhook delivered");
                    return;
                }
                Err(Failure::Answered {
                    status,
                    retry_after,
                }) => (
                    format!("the endpoint answered HTTP {status}"),
                    retried_status(status),
                    retry_after,
                ),
                Err(Failure::Other(error)) => (error, true, None),
            };
            if !retryable || attempts >= attempts_allowed {
                break error;
            }
            let wait = pause(backoff, asked, random_fraction());
            if started.elapsed().saturating_add(wait) > max_age {
                break match asked {
                    Some(asked) if asked >= wait => format!(
                        "{error}, asking for a retry after {} s, past the event's maximum age",
                        asked.as_secs()
                    ),
                    _ => error,
                };
            }
            tracing::info!(event_id = %job.event_id, target = %job.target.target_id, attempts, %error, "webhook delivery failed; retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        tracing::warn!(event_id = %job.event_id, target = %job.target.target_id, attempts, error = %last_error, "webhook delivery failed for good");
        self.record_failure(job, attempts, last_error);
    }

    /// The target of `job`'s id as its rule holds it now, if the rule is
    /// still the one the job was routed by and enabled: an attempt goes
    /// nowhere the rule no longer sends to, and with the secret the target
    /// has now. When the store cannot say, the target as it was routed.
    async fn current_target(&self, job: &DeliveryJob) -> Option<TargetRecord> {
        let routed = &job.target;
        let (rule, targets) = tokio::join!(
            self.store.get_rule(&routed.account_id, &routed.rule_name),
            self.store
                .list_targets(&routed.account_id, &routed.rule_name),
        );
        match (rule, targets) {
            (Ok(rule), Ok(targets)) => rule
                .filter(|rule| rule.enabled && rule.created_at_ms == job.rule_created_at_ms)
                .and_then(|_| {
                    targets
                        .into_iter()
                        .find(|now| now.target_id == routed.target_id)
                }),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "could not check a webhook target before an attempt");
                Some(routed.clone())
            }
        }
    }

    /// Why a host with no address to call was not called: one answer
    /// whether the name is unknown or internal, so an account cannot map
    /// the internal DNS through its failures.
    fn unreachable(&self) -> String {
        if self.private_endpoints {
            "the endpoint's host does not resolve".to_owned()
        } else {
            "the endpoint's host resolves to no public address; non-public addresses \
             (loopback, private, link-local and others) are not called \
             (audit.webhook_private_endpoints)"
                .to_owned()
        }
    }

    async fn attempt(&self, job: &DeliveryJob, target: &TargetRecord) -> Result<(), Failure> {
        let uri: http::Uri = target
            .endpoint
            .parse()
            .map_err(|_| "the endpoint is not a URL")?;
        let host = uri.host().ok_or("the endpoint has no host")?.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        // The address is vetted, then connected to as vetted: a name that
        // resolves again to another address cannot slip past the check.
        let resolved: Vec<std::net::SocketAddr> =
            tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
                .await
                .map_err(|_| self.unreachable())?
                .collect();
        let allowed: Vec<std::net::SocketAddr> = resolved
            .iter()
            .copied()
            .filter(|address| self.private_endpoints || is_public(address.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(self.unreachable().into());
        }
        let tcp = tokio::net::TcpStream::connect(&allowed[..])
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let _nodelay = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|_| "the endpoint host is not a valid name")?;
        let tls = self
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(|error| format!("TLS: {error}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|error| format!("HTTP: {error}"))?;
        let driver = tokio::spawn(connection);
        let timestamp = now_ms() / 1000;
        let signature = sign(&target.signing_secret, timestamp, &job.body);
        let request = http::Request::post(request_target(&uri))
            .header(
                http::header::HOST,
                uri.authority().map_or(host.as_str(), |a| a.as_str()),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "coffer-events/1")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, format!("v1={signature}"))
            .header(EVENT_ID_HEADER, job.event_id.as_str())
            .body(Full::new(Bytes::from(job.body.as_bytes().to_vec())))
            .map_err(|error| format!("request: {error}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("HTTP: {error}"));
        driver.abort();
        let response = response?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure::Answered {
                status: status.as_u16(),
                retry_after: response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| retry_after(value, std::time::SystemTime::now())),
            })
        }
    }
}

/// Why an attempt did not deliver.
enum Failure {
    /// The endpoint answered with this status, not a 2xx one, and asked
    /// for the next attempt no sooner than `retry_after` from now.
    Answered {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer came: the reason, as recorded.
    Other(String),
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Failure::Other(reason)
    }
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Self {
        Failure::Other(reason.to_owned())
    }
}

/// Whether an answer of `status` is worth another attempt: the statuses
/// EventBridge retries for API destinations (401, 407, 409, 429 and 5xx).
/// Any other one says the request itself is refused and would be again.
fn retried_status(status: u16) -> bool {
    matches!(status, 401 | 407 | 409 | 429 | 500..=599)
}

/// The pause before the next attempt: `backoff` less up to half of it, by
/// `fraction` (0 to 1, drawn at random), or what the endpoint asked for when
/// that is longer.
fn pause(backoff: Duration, asked: Option<Duration>, fraction: f64) -> Duration {
    let jittered = backoff.mul_f64(1.0 - fraction.clamp(0.0, 1.0) / 2.0);
    asked.map_or(jittered, |asked| asked.max(jittered))
}

/// The request target of a POST to `uri`: its path, `/` when it has none
/// (`https://host?x=1` is posted to `/?x=1`), and its query.
fn request_target(uri: &http::Uri) -> String {
    match uri.query() {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_owned(),
    }
}

/// A uniformly drawn fraction, 0 to 1.
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    match aws_lc_rs::rand::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        // No randomness to be had: the whole backoff.
        Err(_) => 0.0,
    }
}

/// How long a `Retry-After` of `value` asks to wait from `now`: whole
/// seconds, or an HTTP date (RFC 9110); `None` for anything else.
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        // More digits than a u64 holds is a wait longer than any event's age.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether `address` is one on the public internet: not loopback, private
/// (RFC 1918, unique local), shared (RFC 6598), link-local (cloud metadata
/// services live there), unspecified, multicast, broadcast, documentation
/// or reserved, nor an IPv4 one of those mapped into IPv6.
fn is_public(address: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded = |high: u16, low: u16| {
                let [a, b] = high.to_be_bytes();
                let [c, d] = low.to_be_bytes();
                IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
            };
            // Forms that carry an IPv4 address are judged by it: mapped
            // (::ffff:a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4
            // (2002:aabb:ccdd::).
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            if segments[..6] == [0x0064, 0xff9b, 0, 0, 0, 0] {
                return is_public(embedded(segments[6], segments[7]));
            }
            if segments[0] == 0x2002 {
                return is_public(embedded(segments[1], segments[2]));
            }
            let first = segments[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // The deprecated IPv4-compatible ::a.b.c.d and IPv4-translated
                // ::ffff:0:a.b.c.d forms.
                || segments[..5] == [0; 5]
                || segments[..6] == [0, 0, 0, 0, 0xffff, 0]
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                // Site-local, deprecated but still routed where configured.
                || (first & 0xffc0) == 0xfec0
                // Discard-only (100::/64), Teredo (2001::/32), documentation.
                || segments[..4] == [0x0100, 0, 0, 0]
                || (first == 0x2001 && segments[1] == 0)
                || (first == 0x2001 && segments[1] == 0x0db8)
                // NAT64 for local use (64:ff9b:1::/48).
                || (first == 0x0064 && segments[1] == 0xff9b && segments[2] == 1))
        }
    }
}

/// Marks one of an account's deliveries (its body of `.2` bytes) done when
/// dropped (its task ended, however it ended).
struct Done<'a>(&'a Dispatcher, &'a str, usize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        let mut pending = self.0.lock_pending();
        pending.total = pending.total.saturating_sub(1);
        pending.total_bytes = pending.total_bytes.saturating_sub(self.2);
        if let Some(account) = pending.accounts.get_mut(self.1) {
            account.pending = account.pending.saturating_sub(1);
            account.bytes = account.bytes.saturating_sub(self.2);
            if account.pending == 0 {
                pending.accounts.remove(self.1);
            }
        }
    }
}

/// Lowercase hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn sign(secret: &[u8], timestamp: i64, body: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut context = aws_lc_rs::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body.as_bytes());
    coffer_platform::hex_lower(context.sign().as_ref())
}

fn now_ms() -> i64 {
    coffer_platform::clock::Clock::now_millis(&coffer_platform::clock::SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an account's pending deliveries hold is bounded in bytes too:
    /// bodies of 1 MiB to an endpoint that is down, retried for an hour,
    /// fill the account's 16 MiB and the next is refused, while another
    /// account's still go out; one that ends frees its bytes.
    #[tokio::test]
    async fn pending_deliveries_are_bounded_in_bytes_per_account() {
        const NO_MIGRATIONS: coffer_platform::db::Migrations = coffer_platform::db::Migrations {
            postgres: &[],
            sqlite: &[],
        };
        let directory = tempfile::tempdir().expect("a temporary directory");
        let pool =
            coffer_platform::db::testing::sqlite_pool(directory.path(), "a.db", &NO_MIGRATIONS)
                .await
                .expect("a database");
        let dispatcher = Arc::new(Dispatcher::new(
            rustls::RootCertStore::empty(),
            true,
            crate::store::audit_store(pool),
            Duration::from_secs(60),
        ));
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let body: Arc<str> = "x".repeat(1024 * 1024).into();
        let job = |account: &str, n: usize| DeliveryJob {
            rule_created_at_ms: 0,
            target: TargetRecord {
                account_id: account.to_owned(),
                rule_name: "r".into(),
                target_id: "t".into(),
                endpoint: format!("https://localhost:{closed_port}/"),
                signing_secret: vec![1; 32],
                max_retries: 185,
                max_event_age_s: 3600,
            },
            event_id: format!("e{n}"),
            body: body.clone(),
        };
        let held = |account: &str| {
            let pending = dispatcher.lock_pending();
            pending
                .accounts
                .get(account)
                .map_or((0, 0), |held| (held.pending, held.bytes))
        };
        for n in 0..20 {
            dispatcher.deliver(job("111122223333", n));
        }
        assert_eq!(held("111122223333"), (16, 16 * 1024 * 1024));
        dispatcher.deliver(job("444455556666", 0));
        assert_eq!(held("444455556666"), (1, 1024 * 1024));
        assert_eq!(dispatcher.lock_pending().total_bytes, 17 * 1024 * 1024);
        // A delivery that ends frees its count and its bytes: the next is
        // taken.
        drop(Done(&dispatcher, "111122223333", 1024 * 1024));
        assert_eq!(held("111122223333"), (15, 15 * 1024 * 1024));
        dispatcher.deliver(job("111122223333", 20));
        assert_eq!(held("111122223333"), (16, 16 * 1024 * 1024));
    }

    #[test]
    fn only_public_addresses_are_public() {
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "64:ff9b:1::808:808",
            "::7f00:1",
            "::a9fe:a9fe",
            "::ffff:0:a00:1",
            "2002:a9fe:a9fe::",
            "2002:7f00:1::1",
            "2001:0:4136:e378::1",
            "fec0::1",
            "100::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }

    #[test]
    fn only_the_statuses_eventbridge_retries_are_retried() {
        for retried in [401, 407, 409, 429, 500, 502, 503, 504, 599] {
            assert!(super::retried_status(retried), "{retried}");
        }
        for final_answer in [100, 204, 301, 302, 304, 400, 403, 404, 405, 410, 413, 422] {
            assert!(!super::retried_status(final_answer), "{final_answer}");
        }
    }

    #[test]
    fn pauses_take_up_to_half_the_backoff_off_and_wait_as_asked() {
        let backoff = Duration::from_secs(8);
        assert_eq!(pause(backoff, None, 0.0), backoff);
        assert_eq!(pause(backoff, None, 0.5), Duration::from_secs(6));
        assert_eq!(pause(backoff, None, 1.0), Duration::from_secs(4));
        // An asked-for wait longer than the pause is kept, a shorter one is not.
        let asked = Some(Duration::from_secs(30));
        assert_eq!(pause(backoff, asked, 0.5), Duration::from_secs(30));
        assert_eq!(
            pause(backoff, Some(Duration::from_secs(1)), 1.0),
            Duration::from_secs(4)
        );
        let drawn: Vec<f64> = (0..64).map(|_| random_fraction()).collect();
        assert!(drawn.iter().all(|fraction| (0.0..=1.0).contains(fraction)));
        assert!(drawn.iter().any(|fraction| *fraction != drawn[0]));
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        // 1994-11-06T08:49:37Z is 784111777 s after the epoch.
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-5", "1.5", "soon", "Sun, 06 Nov 1994"] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
    }

    /// An endpoint with a query and no path is posted to `/` with its
    /// query: `?x=1` alone is no request target.
    #[test]
    fn the_request_target_always_has_a_path() -> Result<(), Box<dyn std::error::Error>> {
        for (endpoint, expected) in [
            ("https://hooks.example?token=abc", "/?token=abc"),
            ("https://hooks.example", "/"),
            (
                "https://hooks.example:8443/in/coffer?x=1&y=2",
                "/in/coffer?x=1&y=2",
            ),
            ("https://hooks.example/in", "/in"),
        ] {
            let target = request_target(&endpoint.parse()?);
            assert_eq!(target, expected, "{endpoint}");
            http::Request::post(target).body(())?;
        }
        Ok(())
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // From `printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key`.
        assert_eq!(
            sign(b"key", 1_700_000_000, "{\"a\":1}"),
            "a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
    }
}
