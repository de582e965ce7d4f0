//! Boots real Coffer services in-process for end-to-end tests: services bind
//! `127.0.0.1:0`, speak mTLS with certificates minted by a per-test CA, and
//! store into SQLite or Postgres. Clients can be made for any principal.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use coffer::Instance;
use coffer_platform::client::ClientTls;
use coffer_platform::clock::{Clock, SystemClock};
use coffer_platform::config::{self, Settings};
use coffer_platform::db::testing;
use coffer_platform::pki::{self, Authority, IssuedIdentity};
use coffer_proto::keys::v1::keys_client::KeysClient;
use tonic::transport::Channel;

pub use coffer_proto::keys::v1 as keys_pb;

pub const TRUST_DOMAIN: &str = "coffer.test";
pub const ACCOUNT_A: &str = "111122223333";
pub const ACCOUNT_B: &str = "444455556666";

/// The source address a test's forwarding service says its caller has.
pub const FORWARDED_SOURCE_IP: &str = "198.51.100.7";

/// Adds `x-coffer-forwarded-for` (and the caller's source address,
/// [`FORWARDED_SOURCE_IP`]) to every request.
#[derive(Clone)]
pub struct ForwardFor(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for ForwardFor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert(coffer_platform::call::FORWARDED_FOR_HEADER, self.0.clone());
        request.metadata_mut().insert(
            coffer_platform::call::FORWARDED_SOURCE_IP_HEADER,
            tonic::metadata::MetadataValue::from_static(FORWARDED_SOURCE_IP),
        );
        Ok(request)
    }
}

/// A keys client that forwards a caller (see [`Harness::keys_via`]).
pub type ForwardingKeysClient =
    KeysClient<tonic::service::interceptor::InterceptedService<Channel, ForwardFor>>;

/// Where a test's services keep their state.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// A Postgres URL; each harness gets its own schema.
    Postgres(String),
}

/// The Postgres backend when reachable (a failure under CI=true).
pub async fn postgres_backend() -> Option<Backend> {
    testing::postgres_url().await.map(Backend::Postgres)
}

/// Limits a test may tighten.
#[derive(Debug, Clone)]
pub struct Options {
    pub max_message_bytes: usize,
    pub request_timeout_ms: u64,
    pub max_concurrent_requests: usize,
    pub shutdown_grace_ms: u64,
    /// `limits.max_connection_age_ms`.
    pub max_connection_age_ms: u64,
    /// A clock the test moves; the system clock when `None`.
    pub clock: Option<Arc<coffer_platform::clock::ManualClock>>,
    /// The `authorization:` block of the config file.
    pub authorization: String,
    /// `audit.mode`: `required` or `best_effort`.
    pub audit_mode: &'static str,
    /// `audit.deadline_ms`.
    pub audit_deadline_ms: u64,
    /// Further lines of the `audit:` block (two-space indented).
    pub audit_extra: String,
    /// Runs the audit service as its own instance on its own port, so a
    /// test can stop and restart it while keys keeps running.
    pub separate_audit: bool,
    /// `audit.webhook_private_endpoints`: on by default, as the tests'
    /// webhook receivers listen on loopback.
    pub webhook_private_endpoints: bool,
}

/// Every user of every account may do everything; roles get nothing. Tests
/// of authorization write their own block.
pub const DEFAULT_AUTHORIZATION: &str = "authorization:\n  identity_policies:\n    - name: test-users\n      principals: [\"arn:coffer:iam::*:user/*\"]\n      policy: '{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"*\",\"Resource\":\"*\"}]}'\n";

impl Default for Options {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 256,
            shutdown_grace_ms: 30_000,
            max_connection_age_ms: 3_600_000,
            clock: None,
            authorization: DEFAULT_AUTHORIZATION.to_owned(),
            audit_mode: "required",
            audit_deadline_ms: 5_000,
            audit_extra: String::new(),
            separate_audit: false,
            webhook_private_endpoints: true,
        }
    }
}

/// Log lines of every harness in this process, so tests can prove that no
/// plaintext reaches a log.
pub fn captured_logs() -> String {
    let buffer = log_buffer()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    String::from_utf8_lossy(&buffer).into_owned()
}

fn log_buffer() -> &'static Mutex<Vec<u8>> {
    static BUFFER: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    BUFFER.get_or_init(|| Mutex::new(Vec::new()))
}

#[derive(Clone, Copy)]
struct CapturedWriter;

impl std::io::Write for CapturedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = log_buffer()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn install_log_capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter("debug,h2=info,hyper=info,tower=info,rustls=info,sqlx=warn")
            .with_writer(|| CapturedWriter)
            .finish();
        let _already_set = tracing::subscriber::set_global_default(subscriber);
    });
}

/// A running set of services and the CA that identifies their callers.
pub struct Harness {
    directory: tempfile::TempDir,
    authority: Authority,
    settings: Settings,
    services: Vec<String>,
    clock: Arc<dyn Clock>,
    instance: Option<Instance>,
    /// The audit service, when it runs apart ([`Options::separate_audit`]).
    audit_instance: Option<Instance>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Harness")
            .field("dir", &self.directory.path())
            .finish_non_exhaustive()
    }
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

impl Harness {
    pub async fn start(backend: Backend) -> anyhow::Result<Self> {
        Self::start_with(backend, Options::default()).await
    }

    /// A harness whose services all read the returned clock, which starts
    /// at the present and moves only when the test advances it.
    pub async fn start_with_clock(
        backend: Backend,
    ) -> anyhow::Result<(Self, Arc<coffer_platform::clock::ManualClock>)> {
        let clock = Arc::new(coffer_platform::clock::ManualClock::new(
            std::time::SystemTime::now(),
        ));
        let harness = Self::start_with(
            backend,
            Options {
                clock: Some(clock.clone()),
                ..Options::default()
            },
        )
        .await?;
        Ok((harness, clock))
    }

    pub async fn start_with(backend: Backend, options: Options) -> anyhow::Result<Self> {
        coffer_platform::install_crypto_provider();
        install_log_capture();
        let directory = tempfile::tempdir()?;
        let dir = directory.path();
        pki::init_ca(dir, TRUST_DOMAIN)?;
        let authority = Authority::load(dir)?;
        let server = authority.issue(
            &format!("spiffe://{TRUST_DOMAIN}/service/keys"),
            &["localhost".to_owned()],
            &["127.0.0.1".parse()?],
        )?;
        pki::write_identity(dir, "server", &server, false)?;
        write(
            &dir.join("root-key"),
            coffer_crypto::RootKey::generate()?.to_base64().as_str(),
        )?;
        let database = |service: &str| match &backend {
            Backend::Sqlite => format!(
                "url: \"sqlite://{}\"",
                dir.join(format!("{service}.db")).display()
            ),
            Backend::Postgres(url) => {
                format!(
                    "url: \"{url}\"\n      schema: {}",
                    testing::unique_schema(&format!("e2e_{service}"))
                )
            }
        };
        let (audit_listen, audit_endpoint) = if options.separate_audit {
            // A fixed port, so the audit service can be restarted on it.
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            (
                format!("127.0.0.1:{port}"),
                format!("  endpoint: \"127.0.0.1:{port}\"\n"),
            )
        } else {
            ("127.0.0.1:0".to_owned(), String::new())
        };
        let config_text = format!(
            "region: eu-west-1\n\
             trust_domain: {TRUST_DOMAIN}\n\
             tls:\n  cert_file: \"{dir}/server-cert.pem\"\n  key_file: \"{dir}/server-key.pem\"\n  ca_file: \"{dir}/ca.pem\"\n\
             root_key:\n  file: \"{dir}/root-key\"\n\
             admin_listen: \"127.0.0.1:0\"\n\
             limits:\n  max_message_bytes: {}\n  request_timeout_ms: {}\n  max_concurrent_requests: {}\n  shutdown_grace_ms: {}\n  max_connection_age_ms: {}\n\
             audit:\n  mode: {}\n  deadline_ms: {}\n  outbox_grace_ms: {}\n  webhook_private_endpoints: {}\n{audit_endpoint}{}\
             {authorization}\
             services:\n  keys:\n    listen: \"127.0.0.1:0\"\n    database:\n      {}\n\
             \x20 audit:\n    listen: \"{audit_listen}\"\n    database:\n      {}\n",
            options.max_message_bytes,
            options.request_timeout_ms,
            options.max_concurrent_requests,
            options.shutdown_grace_ms,
            options.max_connection_age_ms,
            options.audit_mode,
            options.audit_deadline_ms,
            options.audit_deadline_ms.max(3_000),
            options.webhook_private_endpoints,
            options.audit_extra,
            database("keys"),
            database("audit"),
            dir = dir.display(),
            authorization = options.authorization,
        );
        write(&dir.join("coffer.yaml"), &config_text)?;
        let settings = config::load(Some(&dir.join("coffer.yaml")), Vec::new())?;
        let clock: Arc<dyn Clock> = match options.clock.clone() {
            Some(manual) => manual,
            None => Arc::new(SystemClock),
        };
        let (services, audit_instance) = if options.separate_audit {
            let audit = coffer::launch(&settings, &["audit".to_owned()], clock.clone()).await?;
            (vec!["keys".to_owned()], Some(audit))
        } else {
            (vec!["keys".to_owned(), "audit".to_owned()], None)
        };
        let instance = coffer::launch(&settings, &services, clock.clone()).await?;
        Ok(Self {
            directory,
            authority,
            settings,
            services,
            clock,
            instance: Some(instance),
            audit_instance,
        })
    }

    pub fn dir(&self) -> &Path {
        self.directory.path()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn instance(&self) -> anyhow::Result<&Instance> {
        self.instance.as_ref().context("the harness is stopped")
    }

    /// `host:port` of the keys service.
    /// Where the plaintext admin port (health) listens.
    pub fn admin_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        self.instance()?
            .admin_addr()
            .context("the admin port is not served")
    }

    pub fn keys_addr(&self) -> anyhow::Result<String> {
        Ok(self
            .instance()?
            .addr_of("keys")
            .context("keys is not served")?
            .to_string())
    }

    pub fn ca_pem(&self) -> anyhow::Result<Vec<u8>> {
        Ok(std::fs::read(self.dir().join(pki::CA_CERT_FILE))?)
    }

    /// A certificate for `spiffe_id` from this harness's CA.
    pub fn identity(&self, spiffe_id: &str) -> anyhow::Result<IssuedIdentity> {
        Ok(self.authority.issue(spiffe_id, &[], &[])?)
    }

    /// A certificate from this harness's CA that expires `valid_for` from
    /// now.
    pub fn short_lived_identity(
        &self,
        spiffe_id: &str,
        valid_for: Duration,
    ) -> anyhow::Result<IssuedIdentity> {
        let not_after = std::time::SystemTime::now() + valid_for;
        Ok(self.authority.issue_until(spiffe_id, &[], &[], not_after)?)
    }

    /// A certificate for a server reachable as `localhost`, from this
    /// harness's CA (webhook receivers in tests).
    pub fn localhost_identity(&self) -> anyhow::Result<IssuedIdentity> {
        Ok(self.authority.issue(
            &format!("spiffe://{TRUST_DOMAIN}/service/webhook"),
            &["localhost".to_owned()],
            &[],
        )?)
    }

    pub fn user_id(account: &str, name: &str) -> String {
        format!("spiffe://{TRUST_DOMAIN}/account/{account}/user/{name}")
    }

    pub fn service_id(service: &str) -> String {
        format!("spiffe://{TRUST_DOMAIN}/service/{service}")
    }

    /// A channel presenting `identity` (or no certificate at all).
    pub async fn channel_with(&self, identity: Option<&IssuedIdentity>) -> anyhow::Result<Channel> {
        let tls = ClientTls::from_pem(
            &self.ca_pem()?,
            identity.map(|id| (id.cert_pem.as_bytes(), id.key_pem.as_bytes())),
        )?;
        Ok(tls.connect(&self.keys_addr()?, "localhost").await?)
    }

    pub async fn keys_as(&self, spiffe_id: &str) -> anyhow::Result<KeysClient<Channel>> {
        let identity = self.identity(spiffe_id)?;
        Ok(KeysClient::new(self.channel_with(Some(&identity)).await?))
    }

    /// A client presenting the certificate of Coffer service `service`
    /// that forwards the caller `forwarded_for` (a SPIFFE id), as services
    /// calling keys on a user's behalf do.
    pub async fn keys_via(
        &self,
        service: &str,
        forwarded_for: &str,
    ) -> anyhow::Result<ForwardingKeysClient> {
        let identity = self.identity(&Self::service_id(service))?;
        let channel = self.channel_with(Some(&identity)).await?;
        Ok(KeysClient::with_interceptor(
            channel,
            ForwardFor(forwarded_for.parse()?),
        ))
    }

    /// A user `name` of `account`.
    pub async fn keys_for(&self, account: &str, name: &str) -> anyhow::Result<KeysClient<Channel>> {
        self.keys_as(&Self::user_id(account, name)).await
    }

    /// The audit service's core (store, live feed), wherever it runs.
    pub fn audit_core(&self) -> anyhow::Result<&Arc<coffer_audit::AuditCore>> {
        self.audit_instance
            .as_ref()
            .or(self.instance.as_ref())
            .and_then(Instance::audit_core)
            .context("the audit service is not running")
    }

    /// `host:port` of the audit service.
    pub fn audit_addr(&self) -> anyhow::Result<String> {
        Ok(self
            .audit_instance
            .as_ref()
            .or(self.instance.as_ref())
            .and_then(|instance| instance.addr_of("audit"))
            .context("audit is not served")?
            .to_string())
    }

    /// A TLS connection to the keys service as `spiffe_id`, offering only
    /// HTTP/2, for tests that speak HTTP/2 themselves.
    pub async fn raw_keys_connection(
        &self,
        spiffe_id: &str,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        use rustls_pki_types::pem::PemObject as _;
        let identity = self.identity(spiffe_id)?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls_pki_types::CertificateDer::pem_slice_iter(&self.ca_pem()?) {
            roots.add(certificate?)?;
        }
        let chain = rustls_pki_types::CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())?;
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(self.keys_addr()?).await?;
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
            .await?)
    }

    /// An audit client for `spiffe_id`.
    pub async fn audit_as(
        &self,
        spiffe_id: &str,
    ) -> anyhow::Result<coffer_proto::audit::v1::audit_client::AuditClient<Channel>> {
        let identity = self.identity(spiffe_id)?;
        let tls = ClientTls::from_pem(
            &self.ca_pem()?,
            Some((identity.cert_pem.as_bytes(), identity.key_pem.as_bytes())),
        )?;
        let channel = tls.connect(&self.audit_addr()?, "localhost").await?;
        Ok(coffer_proto::audit::v1::audit_client::AuditClient::new(
            channel,
        ))
    }

    /// Every audit event stored so far, in arrival order, once everything
    /// the services emitted has been acknowledged.
    pub async fn audit_events(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        if let Some(instance) = &self.instance {
            instance
                .flush_audit(std::time::Duration::from_secs(20))
                .await?;
        }
        let core = self.audit_core()?;
        core.settled().await;
        let stored = core
            .store()
            .lookup(&coffer_audit::store::LookupQuery::everything(1_000_000))
            .await?;
        let mut stored = stored;
        stored.sort_by_key(|event| event.seq);
        stored
            .iter()
            .map(|event| {
                serde_json::from_str(&event.record)
                    .with_context(|| format!("stored record is not JSON: {}", event.record))
            })
            .collect()
    }

    /// The events of one request id.
    pub async fn audit_events_for(
        &self,
        request_id: &str,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(self
            .audit_events()
            .await?
            .into_iter()
            .filter(|event| event["requestID"] == request_id)
            .collect())
    }

    /// Stops the separately running audit service.
    pub async fn stop_audit(&mut self) -> anyhow::Result<()> {
        self.audit_instance
            .take()
            .context("the audit service does not run apart")?
            .shutdown()
            .await;
        Ok(())
    }

    /// Starts the separately running audit service again, on its port.
    pub async fn start_audit(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.audit_instance.is_none(),
            "the audit service is running"
        );
        self.audit_instance =
            Some(coffer::launch(&self.settings, &["audit".to_owned()], self.clock.clone()).await?);
        Ok(())
    }

    /// Runs the services' scheduled work (deletions, rotations) now.
    pub async fn run_maintenance(&self) -> anyhow::Result<()> {
        self.instance()?.run_maintenance().await
    }

    /// Graceful shutdown of the running services.
    pub async fn stop(&mut self) {
        if let Some(instance) = self.instance.take() {
            instance.shutdown().await;
        }
    }

    /// Takes the running instance out, for tests that drive shutdown.
    pub fn take_instance(&mut self) -> Option<Instance> {
        self.instance.take()
    }

    /// Replaces the `authorization:` block of the config file the services
    /// read their identity policies from (and reload them from, every
    /// `reload_interval_ms`) with `block`.
    pub fn rewrite_authorization(&self, block: &str) -> anyhow::Result<()> {
        let path = self.dir().join("coffer.yaml");
        let text = std::fs::read_to_string(&path)?;
        let start = text
            .find("authorization:")
            .context("the config file has no authorization block")?;
        let end = text
            .find("services:")
            .context("the config file has no services block")?;
        let mut updated = String::new();
        updated.push_str(&text[..start]);
        updated.push_str(block);
        updated.push_str(&text[end..]);
        std::fs::write(&path, updated)?;
        Ok(())
    }

    /// The settings the services start with, for a test that restarts
    /// them with others ([`Harness::restart`], [`Harness::start_audit`]).
    pub fn settings_mut(&mut self) -> &mut Settings {
        &mut self.settings
    }

    /// Starts the services again on the same state.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        self.instance =
            Some(coffer::launch(&self.settings, &self.services, self.clock.clone()).await?);
        Ok(())
    }
}

/// Polls `done` every 100 ms until it says true; fails with `what` after
/// `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await? {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The request id Coffer returned with a response or error.
pub fn request_id_of(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get(coffer_platform::call::REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The AWS exception name a status carries.
pub fn exception_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// Asserts a call failed with exactly this code and exception.
#[track_caller]
pub fn assert_error<T: std::fmt::Debug>(
    outcome: Result<T, tonic::Status>,
    code: tonic::Code,
    exception: &str,
) -> tonic::Status {
    match outcome {
        Ok(value) => panic!("expected {code:?} {exception}, got success {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "status: {status:?}");
            assert_eq!(exception_of(&status), exception, "status: {status:?}");
            status
        }
    }
}

/// Declares each listed `async fn name(backend: Backend) -> anyhow::Result<()>`
/// as a SQLite test and a Postgres test (the latter skipped when Postgres is
/// unreachable, and failing under CI=true).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    match $crate::postgres_backend().await {
                        Some(backend) => super::$name(backend).await,
                        None => Ok(()),
                    }
                }
            )+
        }
    };
}

/// A write lock on the keys table, taken from outside the service: calls
/// that write keys wait until it is released. Lets tests hold a call in
/// flight without sleeping.
pub enum TableLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Harness {
    fn keys_database(&self) -> anyhow::Result<&coffer_platform::config::DatabaseSettings> {
        self.database_of("keys")
    }

    fn database_of(
        &self,
        service: &str,
    ) -> anyhow::Result<&coffer_platform::config::DatabaseSettings> {
        Ok(&self
            .settings
            .services
            .get(service)
            .with_context(|| format!("{service} is not configured"))?
            .database)
    }

    /// Makes every commit of the keys service that writes an audit outbox
    /// row (a state change in `required` mode) take `millis` more, at commit
    /// time, after all its writes: a deferred trigger that sleeps. Postgres
    /// only; `false` (and nothing done) on SQLite, which cannot sleep.
    pub async fn slow_keys_commits(&self, millis: u32) -> anyhow::Result<bool> {
        use sqlx::Connection as _;
        let database = self.keys_database()?;
        if database.backend != coffer_platform::config::DatabaseBackend::Postgres {
            return Ok(false);
        }
        let schema = &database.schema;
        let seconds = f64::from(millis) / 1000.0;
        let mut connection = sqlx::PgConnection::connect(&database.url).await?;
        sqlx::query(&format!(
            "CREATE FUNCTION \"{schema}\".slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$"
        ))
        .execute(&mut connection)
        .await?;
        sqlx::query(&format!(
            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON \"{schema}\".audit_outbox \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION \"{schema}\".slow_commit()"
        ))
        .execute(&mut connection)
        .await?;
        connection.close().await?;
        Ok(true)
    }

    /// Makes the keys database refuse `operation` (`DELETE` or `INSERT`) on
    /// `table` for rows of `key_id`, with a trigger that raises: a fault in
    /// the store for one key, the others untouched. [`Self::allow_key_writes`]
    /// removes it.
    pub async fn refuse_key_writes(
        &self,
        table: &str,
        operation: &str,
        key_id: &str,
    ) -> anyhow::Result<()> {
        self.refuse_key_writes_where(table, operation, "key_id", key_id)
            .await
    }

    /// [`Self::refuse_key_writes`] for the rows whose `column` is `value`.
    pub async fn refuse_key_writes_where(
        &self,
        table: &str,
        operation: &str,
        column: &str,
        value: &str,
    ) -> anyhow::Result<()> {
        self.refuse_writes_where("keys", table, operation, column, value)
            .await
    }

    /// [`Self::refuse_key_writes_where`] in `service`'s database.
    pub async fn refuse_writes_where(
        &self,
        service: &str,
        table: &str,
        operation: &str,
        column: &str,
        value: &str,
    ) -> anyhow::Result<()> {
        let row = if operation == "DELETE" { "OLD" } else { "NEW" };
        let database = self.database_of(service)?;
        let statements = match database.backend {
            coffer_platform::config::DatabaseBackend::Sqlite => vec![format!(
                "CREATE TRIGGER refuse_key_writes BEFORE {operation} ON {table} \
                 WHEN {row}.{column} = '{value}' BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
            )],
            coffer_platform::config::DatabaseBackend::Postgres => {
                let schema = &database.schema;
                vec![
                    format!(
                        "CREATE FUNCTION \"{schema}\".refuse_key_writes() RETURNS trigger \
                         LANGUAGE plpgsql AS $$ BEGIN IF {row}.{column} = '{value}' THEN \
                         RAISE EXCEPTION 'injected fault'; END IF; RETURN {row}; END $$"
                    ),
                    format!(
                        "CREATE TRIGGER refuse_key_writes BEFORE {operation} ON \"{schema}\".{table} \
                         FOR EACH ROW EXECUTE FUNCTION \"{schema}\".refuse_key_writes()"
                    ),
                ]
            }
        };
        self.run_on_database(service, &statements).await
    }

    /// [`coffer_keys::store::insert_placeholder_keys`] in this instance's
    /// keys database.
    pub async fn insert_placeholder_keys(&self, account: &str, count: u32) -> anyhow::Result<()> {
        let account = coffer_platform::arn::AccountId::parse(account)
            .with_context(|| format!("{account} is not an account"))?;
        let pool =
            coffer_platform::db::connect(self.keys_database()?, &coffer_keys::store::MIGRATIONS)
                .await?;
        let inserted = coffer_keys::store::insert_placeholder_keys(&pool, &account, count).await;
        pool.close().await;
        Ok(inserted?)
    }

    /// Puts `key_id` in `state` straight in the keys database, behind the
    /// service's back, as another replica's change would be made while
    /// this instance holds the key's record.
    pub async fn set_key_state_behind_the_service(
        &self,
        key_id: &str,
        state: &str,
    ) -> anyhow::Result<()> {
        let database = self.keys_database()?;
        let table = match database.backend {
            coffer_platform::config::DatabaseBackend::Sqlite => "keys".to_owned(),
            coffer_platform::config::DatabaseBackend::Postgres => {
                format!("\"{}\".keys", database.schema)
            }
        };
        self.run_on_database(
            "keys",
            &[format!(
                "UPDATE {table} SET key_state = '{state}' WHERE key_id = '{key_id}'"
            )],
        )
        .await
    }

    /// Removes the trigger of [`Self::refuse_key_writes`] on `table`.
    pub async fn allow_key_writes(&self, table: &str) -> anyhow::Result<()> {
        let statements = match self.keys_database()?.backend {
            coffer_platform::config::DatabaseBackend::Sqlite => {
                vec!["DROP TRIGGER refuse_key_writes".to_owned()]
            }
            coffer_platform::config::DatabaseBackend::Postgres => {
                let schema = &self.keys_database()?.schema;
                vec![
                    format!("DROP TRIGGER refuse_key_writes ON \"{schema}\".{table}"),
                    format!("DROP FUNCTION \"{schema}\".refuse_key_writes()"),
                ]
            }
        };
        self.run_on_database("keys", &statements).await
    }

    async fn run_on_database(&self, service: &str, statements: &[String]) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let database = self.database_of(service)?;
        match database.backend {
            coffer_platform::config::DatabaseBackend::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(&database.url).await?;
                for statement in statements {
                    sqlx::query(statement).execute(&mut connection).await?;
                }
                connection.close().await?;
            }
            coffer_platform::config::DatabaseBackend::Postgres => {
                let mut connection = sqlx::PgConnection::connect(&database.url).await?;
                for statement in statements {
                    sqlx::query(statement).execute(&mut connection).await?;
                }
                connection.close().await?;
            }
        }
        Ok(())
    }

    pub async fn lock_keys_table(&self) -> anyhow::Result<TableLock> {
        use sqlx::Connection as _;
        let database = self.keys_database()?;
        match database.backend {
            coffer_platform::config::DatabaseBackend::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(&database.url).await?;
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut connection)
                    .await?;
                Ok(TableLock::Sqlite(connection))
            }
            coffer_platform::config::DatabaseBackend::Postgres => {
                let mut connection = sqlx::PgConnection::connect(&database.url).await?;
                sqlx::query("BEGIN").execute(&mut connection).await?;
                sqlx::query(&format!(
                    "LOCK TABLE \"{}\".keys IN EXCLUSIVE MODE",
                    database.schema
                ))
                .execute(&mut connection)
                .await?;
                Ok(TableLock::Postgres(connection))
            }
        }
    }

    /// Waits (polling, bounded) until `count` API calls are in flight.
    pub async fn wait_for_in_flight(&self, count: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let in_flight: usize = self
                .instance()?
                .servers()
                .map(|server| server.in_flight_calls())
                .sum();
            if in_flight >= count {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "only {in_flight} calls in flight after 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

impl TableLock {
    pub async fn release(self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(mut connection) => {
                sqlx::query("COMMIT").execute(&mut connection).await?;
            }
            Self::Postgres(mut connection) => {
                sqlx::query("COMMIT").execute(&mut connection).await?;
            }
        }
        Ok(())
    }
}
