//! Configuration: one YAML file, `COFFER_*` environment overrides, and a few
//! flags, validated into [`Settings`] before any I/O.
//!
//! An environment variable `COFFER_A__B__C` overrides the field `a.b.c`; the
//! value is read as a YAML scalar. Only variables whose first segment names a
//! top-level field take part, so `COFFER_CONFIG` or a root key held in
//! `COFFER_ROOT_KEY_MATERIAL` are never mistaken for overrides.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use thiserror::Error;

use coffer_crypto::RootKeySource;

use crate::SERVICE_NAMES;
use crate::arn::Location;
use crate::authz::{AuthorizationSettings, IdentityPolicyAttachment};

/// A configuration problem, naming the field it is about.
#[derive(Debug, Error)]
#[error("invalid configuration: {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The file as written. Every block rejects unknown fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub region: Option<String>,
    #[serde(default = "default_partition")]
    pub partition: String,
    #[serde(default = "default_dns_suffix")]
    pub dns_suffix: String,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    pub tls: Option<TlsFile>,
    pub root_key: Option<RootKeyFile>,
    pub admin_listen: Option<String>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub audit: AuditFile,
    #[serde(default)]
    pub telemetry: TelemetryFile,
    #[serde(default)]
    pub authorization: AuthorizationFile,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceFile>,
}

const TOP_LEVEL_FIELDS: &[&str] = &[
    "region",
    "partition",
    "dns_suffix",
    "trust_domain",
    "tls",
    "root_key",
    "admin_listen",
    "limits",
    "audit",
    "telemetry",
    "authorization",
    "services",
];

/// Bounds of `limits.shutdown_grace_ms`: with less than a second, the
/// databases close under calls that were about to end; more than an hour
/// is no grace period but a hang.
const MIN_SHUTDOWN_GRACE_MS: u64 = 1_000;
const MAX_SHUTDOWN_GRACE_MS: u64 = 3_600_000;

/// Bounds of `limits.max_connection_age_ms`: a second (every call would
/// otherwise pay for a handshake) to a day.
const MIN_CONNECTION_AGE_MS: u64 = 1_000;
const MAX_CONNECTION_AGE_MS: u64 = 86_400_000;

/// Largest `limits.max_concurrent_requests` accepted.
pub const MAX_CONCURRENT_REQUESTS: usize = 1_000_000;

/// Bounds of `limits.max_message_bytes`: less would refuse KMS's own
/// largest requests (a 6 KiB ciphertext with context and tokens); more
/// would let a caller hold that much memory per call.
const MIN_MESSAGE_BYTES: usize = 16 * 1024;
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Longest `limits.request_timeout_ms`: an hour, as the shutdown grace.
const MAX_REQUEST_TIMEOUT_MS: u64 = 3_600_000;

/// Most connections a service's database pool may hold.
const MAX_DATABASE_CONNECTIONS: u32 = 10_000;

/// Whether two listeners would ask for the same port: the same port (not
/// 0, which the system picks) on the same address, or on any address.
fn same_socket(one: SocketAddr, other: SocketAddr) -> bool {
    one.port() != 0
        && one.port() == other.port()
        && (one.ip() == other.ip() || one.ip().is_unspecified() || other.ip().is_unspecified())
}

fn default_partition() -> String {
    "coffer".into()
}
fn default_dns_suffix() -> String {
    "coffer.internal".into()
}
fn default_trust_domain() -> String {
    "coffer.local".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chain this instance presents (server and client side).
    pub cert_file: PathBuf,
    /// PEM private key for `cert_file`.
    pub key_file: PathBuf,
    /// PEM bundle of CAs whose client certificates are accepted, and which
    /// sign the peers this instance calls.
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootKeyFile {
    /// A file holding the 32-byte root key, raw or base64.
    pub file: Option<PathBuf>,
    /// An environment variable holding the base64 root key.
    pub env: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    pub max_message_bytes: usize,
    pub request_timeout_ms: u64,
    pub max_concurrent_requests: usize,
    pub shutdown_grace_ms: u64,
    pub max_connection_age_ms: u64,
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 1024,
            shutdown_grace_ms: 30_000,
            max_connection_age_ms: 3_600_000,
        }
    }
}

/// Audit delivery (DESIGN §5) and the audit service's own settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditFile {
    /// `required` (default): state changes go through an outbox and
    /// data-plane answers wait for the audit service's acknowledgement;
    /// `best_effort`: events are sent in the background, losses counted.
    pub mode: String,
    /// `host:port` of the audit service's mTLS listener (OTLP). Unset: the
    /// audit service of this process, handed events in-process.
    pub endpoint: Option<String>,
    /// The name the audit service's certificate is checked against.
    pub server_name: String,
    /// How long a data-plane answer waits for its event's acknowledgement,
    /// and how long the audit service may stay unreachable before calls
    /// fail UNAVAILABLE and health says NOT_SERVING.
    pub deadline_ms: u64,
    /// Events held in memory for delivery at most; past it, best-effort
    /// events are dropped (and counted) and outboxed events left to the relay.
    pub queue_limit: usize,
    /// Most events in one export (one group commit at the audit service).
    pub batch_limit: usize,
    /// How long an export of a few events may wait for the events of calls
    /// that are still running, so that slow calls (RSA) share exports;
    /// 0: never.
    pub gather_ms: u64,
    /// How long an outbox row is left to the live delivery path before the
    /// relay sends it.
    pub outbox_grace_ms: u64,
    /// The audit service: days events are kept.
    pub retention_days: u32,
    /// The audit service: what to do with spans from identities that are not
    /// Coffer services: `store` them as untrusted events, or `reject` them.
    pub untrusted_spans: String,
    /// The audit service: where ordinary (non-audit) tracing spans from
    /// Coffer services are forwarded, e.g. `http://otel-collector:4317`.
    pub forward_spans_to: Option<String>,
    /// The audit service: a PEM bundle of CAs webhook targets' certificates
    /// may chain to. Unset: the `tls.ca_file` bundle.
    pub webhook_ca_file: Option<PathBuf>,
    /// The audit service: whether webhooks may reach loopback, private,
    /// link-local and other non-public addresses. Off, an account's
    /// principals cannot make the service call (or probe) its own network.
    pub webhook_private_endpoints: bool,
}

impl Default for AuditFile {
    fn default() -> Self {
        Self {
            mode: "required".into(),
            endpoint: None,
            server_name: "localhost".into(),
            deadline_ms: 5_000,
            queue_limit: 100_000,
            batch_limit: 1_024,
            gather_ms: 4,
            outbox_grace_ms: 15_000,
            retention_days: 90,
            untrusted_spans: "store".into(),
            forward_spans_to: None,
            webhook_ca_file: None,
            webhook_private_endpoints: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryFile {
    /// `json` (default) or `text`.
    pub log_format: String,
    /// A tracing filter, e.g. `info` or `coffer_keys=debug,info`.
    pub log_level: String,
    /// OTLP/gRPC collector endpoint for trace export, e.g. `http://otel:4317`.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryFile {
    fn default() -> Self {
        Self {
            log_format: "json".into(),
            log_level: "info".into(),
            otlp_endpoint: None,
        }
    }
}

/// Identity policies (DESIGN §2). The file is watched: a change to this
/// block takes effect without a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizationFile {
    pub identity_policies: Vec<IdentityPolicyFile>,
    /// How often the config file is checked for changed policies.
    pub reload_interval_ms: u64,
}

impl Default for AuthorizationFile {
    fn default() -> Self {
        Self {
            identity_policies: Vec::new(),
            reload_interval_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityPolicyFile {
    pub name: String,
    /// Principal ARNs, with `*` and `?` wildcards
    /// (`arn:coffer:iam::111122223333:user/*`), or `*` for every principal.
    pub principals: Vec<String>,
    /// The policy document: a mapping written in YAML, or JSON text.
    pub policy: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// `host:port` of the mTLS gRPC listener. Services given the same address
    /// share one server.
    pub listen: String,
    pub database: DatabaseFile,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseFile {
    /// `postgres://…` or `sqlite://path`.
    pub url: String,
    /// Postgres schema holding this service's tables (default `coffer_{service}`).
    pub schema: Option<String>,
    pub max_connections: Option<u32>,
}

/// Shown without the URL's password.
impl std::fmt::Debug for DatabaseFile {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DatabaseFile")
            .field("url", &shown_url(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// A database URL as it may be shown (logs, `Debug`): its password,
/// whether after the user name or in the query (`?password=`), replaced by
/// `***`, and the rest of the query left out. The user part ends at the
/// last `@`, since a password may hold `/`, `?` or `@`; text that is not a
/// URL at all is not shown.
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    // Only the user name is kept of what comes before the last `@`; when
    // there is more (a password, or a query holding an `@`), it is hidden.
    let (user, rest) = match rest.rsplit_once('@') {
        Some((user_part, rest)) => {
            let user = user_part.split([':', '/', '?']).next().unwrap_or_default();
            if user.len() == user_part.len() {
                (format!("{user}@"), rest)
            } else {
                (format!("{user}:***@"), rest)
            }
        }
        None => (String::new(), rest),
    };
    let rest = match rest.split_once('?') {
        Some((base, _query)) => format!("{base}?***"),
        None => rest.to_owned(),
    };
    format!("{scheme}://{user}{rest}")
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub location: Location,
    pub trust_domain: String,
    pub tls: TlsSettings,
    pub root_key: RootKeySource,
    pub admin_listen: Option<SocketAddr>,
    pub limits: Limits,
    pub audit: AuditSettings,
    pub telemetry: TelemetrySettings,
    pub authorization: AuthorizationSettings,
    pub services: BTreeMap<String, ServiceSettings>,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub shutdown_grace: Duration,
    /// How long a client connection is kept before it is asked to
    /// reconnect (and an open `Subscribe` on it ends), so that a CA taken
    /// out of the trust bundle reaches every client.
    pub max_connection_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditMode {
    Required,
    BestEffort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UntrustedSpans {
    Store,
    Reject,
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub mode: AuditMode,
    pub endpoint: Option<String>,
    pub server_name: String,
    pub deadline: Duration,
    pub queue_limit: usize,
    pub batch_limit: usize,
    pub gather: Duration,
    pub outbox_grace: Duration,
    pub retention: Duration,
    pub untrusted_spans: UntrustedSpans,
    pub forward_spans_to: Option<String>,
    pub webhook_ca_file: Option<PathBuf>,
    pub webhook_private_endpoints: bool,
}

fn audit_settings(file: AuditFile) -> Result<AuditSettings, ConfigError> {
    let mode = match file.mode.as_str() {
        "required" => AuditMode::Required,
        "best_effort" => AuditMode::BestEffort,
        other => {
            return Err(ConfigError::new(
                "audit.mode",
                format!("{other:?} is not a mode: required or best_effort"),
            ));
        }
    };
    let untrusted_spans = match file.untrusted_spans.as_str() {
        "store" => UntrustedSpans::Store,
        "reject" => UntrustedSpans::Reject,
        other => {
            return Err(ConfigError::new(
                "audit.untrusted_spans",
                format!("{other:?} is not a choice: store or reject"),
            ));
        }
    };
    if !(100..=600_000).contains(&file.deadline_ms) {
        return Err(ConfigError::new(
            "audit.deadline_ms",
            "must be 100 to 600000",
        ));
    }
    if file.queue_limit < 1_000 {
        return Err(ConfigError::new(
            "audit.queue_limit",
            "must be at least 1000",
        ));
    }
    if !(1..=10_000).contains(&file.batch_limit) {
        return Err(ConfigError::new("audit.batch_limit", "must be 1 to 10000"));
    }
    if file.gather_ms > 100 {
        return Err(ConfigError::new("audit.gather_ms", "must be 0 to 100"));
    }
    if !(1..=36_500).contains(&file.retention_days) {
        return Err(ConfigError::new(
            "audit.retention_days",
            "must be 1 to 36500",
        ));
    }
    if !(file.deadline_ms..=MAX_OUTBOX_GRACE_MS).contains(&file.outbox_grace_ms) {
        return Err(ConfigError::new(
            "audit.outbox_grace_ms",
            format!(
                "must be at least audit.deadline_ms and at most {MAX_OUTBOX_GRACE_MS} (an hour)"
            ),
        ));
    }
    // Not quoted: a URL may carry credentials.
    if let Some(endpoint) = &file.forward_spans_to
        && !is_collector_url(endpoint)
    {
        return Err(ConfigError::new(
            "audit.forward_spans_to",
            "must be an http:// URL with a host (https:// is not supported)",
        ));
    }
    if let Some(endpoint) = &file.endpoint
        && !is_host_port(endpoint)
    {
        return Err(ConfigError::new(
            "audit.endpoint",
            "is not host:port (no scheme: the connection is always mTLS)",
        ));
    }
    Ok(AuditSettings {
        mode,
        endpoint: file.endpoint,
        server_name: file.server_name,
        deadline: Duration::from_millis(file.deadline_ms),
        queue_limit: file.queue_limit,
        batch_limit: file.batch_limit,
        gather: Duration::from_millis(file.gather_ms),
        outbox_grace: Duration::from_millis(file.outbox_grace_ms),
        retention: Duration::from_secs(u64::from(file.retention_days) * 86_400),
        untrusted_spans,
        forward_spans_to: file.forward_spans_to,
        webhook_ca_file: file.webhook_ca_file,
        webhook_private_endpoints: file.webhook_private_endpoints,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_level: String,
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub listen: SocketAddr,
    pub database: DatabaseSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseBackend {
    Postgres,
    Sqlite,
}

#[derive(Clone)]
pub struct DatabaseSettings {
    pub backend: DatabaseBackend,
    pub url: String,
    pub schema: String,
    pub max_connections: u32,
}

/// Shown without the URL's password.
impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DatabaseSettings")
            .field("backend", &self.backend)
            .field("url", &shown_url(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// The process's `COFFER_*` variables, for [`load`]. No other variable is
/// read, whatever it holds; a `COFFER_*` one that is not UTF-8 is an error
/// that names it (reading them all as text would abort the process).
pub fn coffer_environment() -> Result<Vec<(String, String)>, ConfigError> {
    coffer_variables(std::env::vars_os())
}

fn coffer_variables(
    variables: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut found = Vec::new();
    for (name, value) in variables {
        let Some(name) = name.to_str().filter(|name| name.starts_with("COFFER_")) else {
            continue;
        };
        let value = value
            .into_string()
            .map_err(|_| ConfigError::new(name, "is not valid UTF-8"))?;
        found.push((name.to_owned(), value));
    }
    Ok(found)
}

/// Reads `path`, applies `COFFER_*` overrides from `environment`, and
/// validates. `environment` is passed in so tests need not touch the process.
pub fn load(
    path: Option<&Path>,
    environment: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let text = match path {
        Some(path) => std::fs::read_to_string(path).map_err(|error| {
            ConfigError::new("config", format!("cannot read {}: {error}", path.display()))
        })?,
        None => String::new(),
    };
    let mut settings = from_yaml(&text, environment)?;
    settings.authorization.source = path.map(Path::to_path_buf);
    settings.authorization.loaded_text = path.map(|_| text);
    Ok(settings)
}

/// The `COFFER_*` overrides a configuration was loaded with (flags such as
/// `--region` included), so a reload of the file applies the same ones.
/// Its `Debug` names the variables, never their values.
#[derive(Clone, Default)]
pub struct Overrides(Vec<(String, String)>);

impl Overrides {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, _)| name.as_str())
    }
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_list().entries(self.names()).finish()
    }
}

impl IntoIterator for Overrides {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

pub fn from_yaml(
    text: &str,
    environment: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let mut tree: Value = if text.trim().is_empty() {
        Value::Mapping(Default::default())
    } else {
        serde_yaml_ng::from_str(text)
            .map_err(|error| ConfigError::new("config", error.to_string()))?
    };
    if tree.is_null() {
        tree = Value::Mapping(Default::default());
    }
    // Each applied override with the dotted field it sets.
    let mut applied: Vec<(String, (String, String))> = Vec::new();
    // A variable setting a whole mapping (`COFFER_LIMITS`) goes before those
    // setting a field inside it, whatever order the process's environment
    // lists them in, so neither is lost; of the same depth, the later wins
    // (flags such as `--region` come last).
    let mut environment: Vec<(String, String)> = environment.into_iter().collect();
    environment.sort_by_key(|(name, _)| name.matches("__").count());
    for (name, value) in environment {
        if let Some(field) = apply_override(&mut tree, &name, &value)? {
            applied.push((field, (name, value)));
        }
    }
    // serde's messages, and some of `validate`'s, quote the value, and an
    // override's value may be a secret (a root key in a variable named like
    // an override): for a field an override set, name the variable instead.
    let redact = |error: ConfigError| -> ConfigError {
        let set_by = applied.iter().find(|(overridden, _)| {
            let field = error.field.as_str();
            field == overridden
                || field.starts_with(&format!("{overridden}."))
                || field.starts_with(&format!("{overridden}["))
                || overridden.starts_with(&format!("{field}."))
        });
        match set_by {
            Some((_, (name, _))) => ConfigError::new(
                error.field,
                format!("the value of {name} does not fit this field (its value is not shown)"),
            ),
            None => error,
        }
    };
    let file: ConfigFile = serde_path_to_error::deserialize(tree).map_err(|error| {
        let field = error.path().to_string();
        let message = without_quoted_text(&error.into_inner().to_string());
        redact(ConfigError::new(field, message))
    })?;
    let mut settings = validate(file).map_err(redact)?;
    settings.authorization.overrides =
        Overrides(applied.into_iter().map(|(_, variable)| variable).collect());
    Ok(settings)
}

/// serde's message with the text it quotes withheld: `invalid type: string
/// "postgres://coffer:hunter2@db", expected …` would put a password written
/// in the wrong place into the logs (a reload's error is logged).
fn without_quoted_text(message: &str) -> String {
    for kind in ["invalid type: string \"", "invalid value: string \""] {
        if let Some(start) = message.find(kind)
            && let Some(end) = message.rfind("\", expected")
            && end >= start + kind.len()
        {
            let label = &kind[..kind.len() - "string \"".len()];
            return format!(
                "{}{label}a string (not shown){}",
                &message[..start],
                &message[end + 1..]
            );
        }
    }
    message.to_owned()
}

/// Applies one `COFFER_*` variable to `tree`; the dotted field it set, or
/// `None` when the variable is not an override.
fn apply_override(
    tree: &mut Value,
    name: &str,
    value: &str,
) -> Result<Option<String>, ConfigError> {
    let Some(path) = name.strip_prefix("COFFER_") else {
        return Ok(None);
    };
    let segments: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
    let Some(first) = segments.first() else {
        return Ok(None);
    };
    if !TOP_LEVEL_FIELDS.contains(&first.as_str()) {
        return Ok(None);
    }
    let parsed: Value = serde_yaml_ng::from_str(value).unwrap_or(Value::String(value.to_owned()));
    let mut node = tree;
    for (depth, segment) in segments.iter().enumerate() {
        let Value::Mapping(mapping) = node else {
            return Err(ConfigError::new(
                segments.get(..depth).unwrap_or_default().join("."),
                format!("{name} overrides a field inside a value that is not a mapping"),
            ));
        };
        let key = Value::String(segment.clone());
        if depth + 1 == segments.len() {
            mapping.insert(key, parsed);
            return Ok(Some(segments.join(".")));
        }
        node = mapping
            .entry(key)
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
    Ok(None)
}

/// The longest `audit.outbox_grace_ms`: an outbox row waits for the live
/// path at most this long before the relay sends it.
const MAX_OUTBOX_GRACE_MS: u64 = 3_600_000;

/// Whether `text` is where an OTLP/gRPC collector listens: an `http://` URL
/// with a host (a typo is refused at start, not found when the first span
/// fails to leave). `https://` is refused: the trace exporters carry no TLS
/// set-up (a collector beside the service, or a sidecar, is reached in
/// plain gRPC), and would fail at start or at the first span.
fn is_collector_url(text: &str) -> bool {
    text.parse::<http::Uri>().is_ok_and(|uri| {
        uri.scheme_str() == Some("http") && uri.host().is_some_and(|host| !host.is_empty())
    })
}

/// `host:port` or `[v6]:port`: a host of DNS labels or an IP address and a
/// port from 1 to 65535.
fn is_host_port(text: &str) -> bool {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return address.port() != 0;
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let port_valid = port.parse::<u16>().is_ok_and(|port| port != 0);
    let host_valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        });
    port_valid && host_valid
}

/// Whether `value` is lowercase DNS labels separated by dots (a trust
/// domain, a region).
pub(crate) fn is_dns_like(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        })
}

fn validate_dns_like(field: &str, value: &str) -> Result<(), ConfigError> {
    if is_dns_like(value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{value:?} must be lowercase DNS labels separated by dots"),
        ))
    }
}

fn parse_socket_addr(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        ConfigError::new(
            field,
            format!("{text:?} is not an address of the form host-ip:port"),
        )
    })
}

/// `telemetry.log_level`: a level, or `target=level` directives. A bare word
/// that is not a level would be taken as a target to log at every level (so
/// `warning` logs nothing of Coffer's), and an empty filter as no filter:
/// both turn the logs off without a word, and are refused.
fn validate_log_level(level: &str) -> Result<(), ConfigError> {
    const FIELD: &str = "telemetry.log_level";
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    if level.trim().is_empty() {
        return Err(ConfigError::new(
            FIELD,
            "must not be empty; give a level (off, error, warn, info, debug, trace)",
        ));
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let is_level = LEVELS
            .iter()
            .any(|named| named.eq_ignore_ascii_case(directive));
        if !is_level && !directive.contains('=') && !directive.contains('[') {
            return Err(ConfigError::new(
                FIELD,
                format!(
                    "{directive:?} is not a level (off, error, warn, info, debug, trace) or a target=level directive"
                ),
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|error| ConfigError::new(FIELD, error.to_string()))
}

fn validate(file: ConfigFile) -> Result<Settings, ConfigError> {
    let region = file
        .region
        .ok_or_else(|| ConfigError::new("region", "is required (for example eu-west-1)"))?;
    let region_is_valid = (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if !region_is_valid {
        return Err(ConfigError::new(
            "region",
            format!("{region:?} must look like eu-west-1"),
        ));
    }
    let partition_is_valid = (1..=32).contains(&file.partition.len())
        && file
            .partition
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    if !partition_is_valid {
        return Err(ConfigError::new(
            "partition",
            "must be lowercase letters, digits and hyphens",
        ));
    }
    validate_dns_like("dns_suffix", &file.dns_suffix)?;
    validate_dns_like("trust_domain", &file.trust_domain)?;

    let tls = file
        .tls
        .ok_or_else(|| ConfigError::new("tls", "is required: cert_file, key_file and ca_file"))?;

    let root_key = match file.root_key {
        Some(RootKeyFile {
            file: Some(path),
            env: None,
        }) => RootKeySource::File(path),
        Some(RootKeyFile {
            file: None,
            env: Some(variable),
        }) => RootKeySource::Env(variable),
        Some(_) => {
            return Err(ConfigError::new(
                "root_key",
                "set exactly one of file or env",
            ));
        }
        None => return Err(ConfigError::new("root_key", "is required: file or env")),
    };

    let admin_listen = file
        .admin_listen
        .as_deref()
        .map(|text| parse_socket_addr("admin_listen", text))
        .transpose()?;

    let limits_file = file.limits;
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&limits_file.max_message_bytes) {
        return Err(ConfigError::new(
            "limits.max_message_bytes",
            format!("must be {MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES}"),
        ));
    }
    if !(MIN_SHUTDOWN_GRACE_MS..=MAX_SHUTDOWN_GRACE_MS).contains(&limits_file.shutdown_grace_ms) {
        return Err(ConfigError::new(
            "limits.shutdown_grace_ms",
            format!("must be {MIN_SHUTDOWN_GRACE_MS} to {MAX_SHUTDOWN_GRACE_MS}"),
        ));
    }
    if !(MIN_CONNECTION_AGE_MS..=MAX_CONNECTION_AGE_MS).contains(&limits_file.max_connection_age_ms)
    {
        return Err(ConfigError::new(
            "limits.max_connection_age_ms",
            format!("must be {MIN_CONNECTION_AGE_MS} to {MAX_CONNECTION_AGE_MS}"),
        ));
    }
    if !(1..=MAX_REQUEST_TIMEOUT_MS).contains(&limits_file.request_timeout_ms) {
        return Err(ConfigError::new(
            "limits.request_timeout_ms",
            format!("must be 1 to {MAX_REQUEST_TIMEOUT_MS}"),
        ));
    }
    // A semaphore holds at most `usize::MAX >> 3` permits; far fewer is
    // already more than one process serves.
    if !(1..=MAX_CONCURRENT_REQUESTS).contains(&limits_file.max_concurrent_requests) {
        return Err(ConfigError::new(
            "limits.max_concurrent_requests",
            format!("must be 1 to {MAX_CONCURRENT_REQUESTS}"),
        ));
    }
    let limits = Limits {
        max_message_bytes: limits_file.max_message_bytes,
        request_timeout: Duration::from_millis(limits_file.request_timeout_ms),
        max_concurrent_requests: limits_file.max_concurrent_requests,
        shutdown_grace: Duration::from_millis(limits_file.shutdown_grace_ms),
        max_connection_age: Duration::from_millis(limits_file.max_connection_age_ms),
    };

    let log_format = match file.telemetry.log_format.as_str() {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => {
            return Err(ConfigError::new(
                "telemetry.log_format",
                format!("{other:?} is not one of json, text"),
            ));
        }
    };
    validate_log_level(&file.telemetry.log_level)?;
    if let Some(endpoint) = &file.telemetry.otlp_endpoint
        && !is_collector_url(endpoint)
    {
        return Err(ConfigError::new(
            "telemetry.otlp_endpoint",
            "must be an http:// URL with a host (https:// is not supported)",
        ));
    }

    let authorization = authorization_settings(file.authorization, &file.partition)?;
    let audit = audit_settings(file.audit)?;

    let mut services = BTreeMap::new();
    for (name, service) in file.services {
        let field = format!("services.{name}");
        if !SERVICE_NAMES.contains(&name.as_str()) {
            return Err(ConfigError::new(
                field,
                format!(
                    "unknown service; expected one of {}",
                    SERVICE_NAMES.join(", ")
                ),
            ));
        }
        let listen = parse_socket_addr(&format!("{field}.listen"), &service.listen)?;
        if let Some(admin) = admin_listen
            && same_socket(admin, listen)
        {
            return Err(ConfigError::new(
                "admin_listen",
                format!("must not be {field}.listen's address ({listen})"),
            ));
        }
        let url = service.database.url;
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DatabaseBackend::Postgres
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            // SQLite opens an empty name, or `:memory:`, as a private
            // database for each connection, gone when the process ends.
            let file = rest.strip_prefix("//").unwrap_or(rest);
            let file = file.split_once('?').map_or(file, |(file, _)| file);
            if file.is_empty() || file == ":memory:" || url.contains("mode=memory") {
                return Err(ConfigError::new(
                    format!("{field}.database.url"),
                    "must name a database file (an empty name or an in-memory database is lost when the process ends)",
                ));
            }
            DatabaseBackend::Sqlite
        } else {
            return Err(ConfigError::new(
                format!("{field}.database.url"),
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        };
        let schema = service
            .database
            .schema
            .unwrap_or_else(|| format!("coffer_{name}"));
        let schema_is_valid = (1..=63).contains(&schema.len())
            && schema
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
            && schema
                .bytes()
                .next()
                .is_some_and(|byte| byte.is_ascii_lowercase());
        if !schema_is_valid {
            return Err(ConfigError::new(
                format!("{field}.database.schema"),
                "must be a lowercase identifier: letters, digits, underscores",
            ));
        }
        let max_connections = service.database.max_connections.unwrap_or(16);
        if !(1..=MAX_DATABASE_CONNECTIONS).contains(&max_connections) {
            return Err(ConfigError::new(
                format!("{field}.database.max_connections"),
                format!("must be 1 to {MAX_DATABASE_CONNECTIONS}"),
            ));
        }
        services.insert(
            name,
            ServiceSettings {
                listen,
                database: DatabaseSettings {
                    backend,
                    url,
                    schema,
                    max_connections,
                },
            },
        );
    }

    Ok(Settings {
        location: Location {
            partition: file.partition,
            region,
            dns_suffix: file.dns_suffix,
        },
        trust_domain: file.trust_domain,
        tls: TlsSettings {
            cert_file: tls.cert_file,
            key_file: tls.key_file,
            ca_file: tls.ca_file,
        },
        root_key,
        admin_listen,
        limits,
        audit,
        telemetry: TelemetrySettings {
            log_format,
            log_level: file.telemetry.log_level,
            otlp_endpoint: file.telemetry.otlp_endpoint,
        },
        authorization,
        services,
    })
}

const MAX_IDENTITY_POLICIES: usize = 1_000;

fn authorization_settings(
    file: AuthorizationFile,
    partition: &str,
) -> Result<AuthorizationSettings, ConfigError> {
    if file.reload_interval_ms < 100 {
        return Err(ConfigError::new(
            "authorization.reload_interval_ms",
            "must be at least 100",
        ));
    }
    if file.identity_policies.len() > MAX_IDENTITY_POLICIES {
        return Err(ConfigError::new(
            "authorization.identity_policies",
            format!("at most {MAX_IDENTITY_POLICIES} policies"),
        ));
    }
    let mut attachments = Vec::with_capacity(file.identity_policies.len());
    for (index, entry) in file.identity_policies.into_iter().enumerate() {
        let field = format!("authorization.identity_policies[{index}]");
        if entry.name.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{field}.name"),
                "must not be empty",
            ));
        }
        if entry.principals.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.principals"),
                "must name at least one principal pattern",
            ));
        }
        for (position, pattern) in entry.principals.iter().enumerate() {
            if !is_principal_pattern(pattern, partition) {
                return Err(ConfigError::new(
                    format!("{field}.principals[{position}]"),
                    format!(
                        "{pattern:?} is not a principal ARN pattern of this partition \
                         (arn:{partition}:iam::ACCOUNT:user/NAME, role/NAME) or *: \
                         it could never match a caller here"
                    ),
                ));
            }
        }
        let document = match &entry.policy {
            Value::String(text) => text.clone(),
            Value::Mapping(_) => serde_json::to_string(&entry.policy)
                .map_err(|error| ConfigError::new(format!("{field}.policy"), error.to_string()))?,
            _ => {
                return Err(ConfigError::new(
                    format!("{field}.policy"),
                    "must be a policy document (a mapping, or JSON text)",
                ));
            }
        };
        let policy = coffer_policy::Policy::parse_identity(&document)
            .map_err(|error| ConfigError::new(format!("{field}.policy"), error.to_string()))?;
        if let Some(arn) = coffer_policy::foreign_partition_arn(&document, partition) {
            return Err(ConfigError::new(
                format!("{field}.policy"),
                format!(
                    "{arn:?} is not of this partition ({partition}): a statement naming it could never apply here"
                ),
            ));
        }
        attachments.push(IdentityPolicyAttachment {
            name: entry.name,
            principals: entry.principals,
            policy: std::sync::Arc::new(policy),
        });
    }
    Ok(AuthorizationSettings {
        identity_policies: attachments,
        source: None,
        loaded_text: None,
        overrides: Overrides::default(),
        reload_interval: Duration::from_millis(file.reload_interval_ms),
    })
}

/// `*`, or a pattern of the IAM user and role ARNs callers have here
/// (`arn:PARTITION:iam::ACCOUNT:user/NAME` or `role/NAME`, wildcards
/// allowed). Another partition, `sts` session ARNs, `root` and groups are
/// never a caller's ARN here: a Deny naming them would silently never apply.
fn is_principal_pattern(pattern: &str, our_partition: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let mut parts = pattern.splitn(6, ':');
    let (Some("arn"), Some(partition), Some(service), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    (partition == our_partition || partition == "*")
        && service == "iam"
        && !account.is_empty()
        && (resource.starts_with("user/")
            || resource.starts_with("role/")
            || resource.starts_with('*'))
        && !pattern.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
region: eu-west-1
tls: { cert_file: c.pem, key_file: k.pem, ca_file: ca.pem }
root_key: { file: root-key }
services:
  keys:
    listen: 127.0.0.1:8443
    database: { url: "sqlite://keys.db" }
"#;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn minimal_file_validates() -> Result<(), ConfigError> {
        let settings = from_yaml(MINIMAL, no_env())?;
        assert_eq!(settings.location.region, "eu-west-1");
        assert_eq!(settings.location.partition, "coffer");
        let keys = settings
            .services
            .get("keys")
            .map(|s| s.database.schema.clone());
        assert_eq!(keys.as_deref(), Some("coffer_keys"));
        Ok(())
    }

    /// Loaded from a file, the settings keep its text (to see edits of the
    /// identity policies); shown, they do not show it.
    #[test]
    fn settings_loaded_from_a_file_are_shown_without_its_text()
    -> Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("coffer.yaml");
        std::fs::write(
            &path,
            MINIMAL.replace("sqlite://keys.db", "postgres://coffer:hunter2@db/coffer"),
        )?;
        let settings = load(Some(&path), Vec::new())?;
        assert!(settings.authorization.loaded_text.is_some());
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        Ok(())
    }

    #[test]
    fn settings_are_shown_without_database_passwords() -> Result<(), ConfigError> {
        let environment = vec![(
            "COFFER_SERVICES__KEYS__DATABASE__URL".to_owned(),
            "postgres://coffer:hunter2@db:5432/coffer?sslmode=verify-full".to_owned(),
        )];
        let settings = from_yaml(MINIMAL, environment)?;
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains(r#"url: "postgres://coffer:***@db:5432/coffer?***""#),
            "{shown}"
        );
        for (url, expected) in [
            ("postgres://u:p@h/d", "postgres://u:***@h/d"),
            ("postgres://u@h/d", "postgres://u@h/d"),
            ("postgres://h/d?password=p", "postgres://h/d?***"),
            ("postgres://u:p:q@h:1", "postgres://u:***@h:1"),
            ("sqlite://keys.db", "sqlite://keys.db"),
            ("postgres://u:1234/ss@h/d", "postgres://u:***@h/d"),
            (
                "postgres://u:12?34@h/d?sslmode=require",
                "postgres://u:***@h/d?***",
            ),
            ("host=h password=p", "***"),
            ("postgres://h/d?password=p@x", "postgres://h:***@x"),
        ] {
            assert_eq!(shown_url(url), expected, "{url}");
        }
        Ok(())
    }

    #[test]
    fn environment_overrides_nested_fields() -> Result<(), ConfigError> {
        let environment = vec![
            ("COFFER_REGION".to_owned(), "us-east-2".to_owned()),
            (
                "COFFER_SERVICES__KEYS__DATABASE__URL".to_owned(),
                "postgres://db/x".to_owned(),
            ),
            (
                "COFFER_LIMITS__MAX_CONCURRENT_REQUESTS".to_owned(),
                "7".to_owned(),
            ),
            ("COFFER_CONFIG".to_owned(), "/ignored.yaml".to_owned()),
            ("COFFER_ROOT_KEY_MATERIAL".to_owned(), "ignored".to_owned()),
        ];
        let settings = from_yaml(MINIMAL, environment)?;
        assert_eq!(settings.location.region, "us-east-2");
        assert_eq!(settings.limits.max_concurrent_requests, 7);
        let backend = settings
            .services
            .get("keys")
            .map(|s| s.database.backend.clone());
        assert_eq!(backend, Some(DatabaseBackend::Postgres));
        Ok(())
    }

    /// The overrides a file was loaded with are kept for a reload, and an
    /// override that does not fit its field is named, its value never shown.
    #[test]
    fn overrides_are_kept_and_their_values_never_shown() -> Result<(), ConfigError> {
        let without_region = MINIMAL.replace("region: eu-west-1\n", "");
        let settings = from_yaml(
            &without_region,
            vec![
                ("COFFER_REGION".to_owned(), "us-east-2".to_owned()),
                ("COFFER_CONFIG".to_owned(), "/ignored.yaml".to_owned()),
            ],
        )?;
        let overrides = settings.authorization.overrides;
        assert_eq!(overrides.names().collect::<Vec<_>>(), ["COFFER_REGION"]);
        assert_eq!(format!("{overrides:?}"), r#"["COFFER_REGION"]"#);
        let reloaded = from_yaml(&without_region, overrides)?;
        assert_eq!(reloaded.location.region, "us-east-2");

        let secret = "c2VjcmV0LXJvb3Qta2V5LW1hdGVyaWFsLWJhc2U2NA==";
        let error = from_yaml(
            &MINIMAL.replace(
                "root_key: { file: root-key }",
                "root_key: { env: COFFER_ROOT_KEY }",
            ),
            vec![("COFFER_ROOT_KEY".to_owned(), secret.to_owned())],
        )
        .err()
        .ok_or_else(|| ConfigError::new("test", "a root key string must not fit root_key"))?;
        assert_eq!(error.field, "root_key");
        let shown = error.to_string();
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("COFFER_ROOT_KEY"), "{shown}");
        // Inside a list, and in what validation (not parsing) refuses.
        for (name, value) in [
            (
                "COFFER_AUTHORIZATION__IDENTITY_POLICIES",
                format!(r#"[{{"name":"x","principals":"{secret}","policy":"{{}}"}}]"#),
            ),
            ("COFFER_REGION", secret.to_lowercase()),
            ("COFFER_AUDIT__ENDPOINT", format!("https://{secret}")),
        ] {
            let error = from_yaml(MINIMAL, vec![(name.to_owned(), value)])
                .err()
                .ok_or_else(|| ConfigError::new(name, "must not validate"))?;
            let shown = error.to_string();
            assert!(
                !shown.to_lowercase().contains(&secret.to_lowercase()) && shown.contains(name),
                "{shown}"
            );
        }
        Ok(())
    }

    /// Identity policies naming a principal or resource that can never be a
    /// caller's or a resource's here (another partition, sts sessions, root,
    /// groups) are refused: a Deny among them would silently never apply.
    #[test]
    fn identity_policies_of_another_partition_are_refused() {
        let with = |principal: &str, resource: &str| {
            format!(
                "{MINIMAL}authorization:\n  identity_policies:\n    - name: guard\n      principals: [\"{principal}\"]\n      policy: '{{\"Version\":\"2012-10-17\",\"Statement\":[{{\"Effect\":\"Deny\",\"Action\":\"kms:*\",\"Resource\":\"{resource}\"}}]}}'\n"
            )
        };
        let any_key = "arn:coffer:kms:*:*:key/*";
        for good in [
            "*",
            "arn:coffer:iam::111122223333:user/*",
            "arn:coffer:iam::*:role/app",
            "arn:*:iam::111122223333:*",
        ] {
            let outcome = from_yaml(&with(good, any_key), no_env());
            assert!(outcome.is_ok(), "{good}: {outcome:?}");
        }
        for bad in [
            "arn:aws:iam::111122223333:user/*",
            "arn:coffer:sts::111122223333:assumed-role/r/s",
            "arn:coffer:iam::111122223333:root",
            "arn:coffer:iam::111122223333:group/admins",
        ] {
            assert_eq!(
                error_field(&with(bad, any_key)),
                "authorization.identity_policies[0].principals[0]",
                "{bad}"
            );
        }
        assert_eq!(
            error_field(&with("*", "arn:aws:kms:*:*:key/*")),
            "authorization.identity_policies[0].policy"
        );
    }

    #[test]
    fn the_shutdown_grace_is_bounded_and_the_admin_port_is_its_own() {
        for (value, accepted) in [
            ("1000", true),
            ("3600000", true),
            ("0", false),
            ("999", false),
            ("3600001", false),
        ] {
            let outcome = from_yaml(
                MINIMAL,
                vec![(
                    "COFFER_LIMITS__SHUTDOWN_GRACE_MS".to_owned(),
                    value.to_owned(),
                )],
            );
            match outcome {
                Ok(_) => assert!(accepted, "{value}"),
                Err(error) => {
                    assert!(!accepted, "{value}: {error:?}");
                    assert_eq!(error.field, "limits.shutdown_grace_ms");
                }
            }
        }
        for (admin, accepted) in [
            ("127.0.0.1:9090", true),
            ("127.0.0.2:8443", true),
            ("127.0.0.1:8443", false),
            ("0.0.0.0:8443", false),
        ] {
            let text = format!("{MINIMAL}admin_listen: \"{admin}\"\n");
            if accepted {
                assert!(from_yaml(&text, no_env()).is_ok(), "{admin}");
            } else {
                assert_eq!(error_field(&text), "admin_listen", "{admin}");
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn only_coffer_variables_are_read_and_must_be_text() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt as _;
        let binary = || OsString::from_vec(vec![b'x', 0xff]);
        let found = coffer_variables([
            (OsString::from("PATH"), binary()),
            (OsString::from_vec(vec![b'C', 0xff]), OsString::from("v")),
            (OsString::from("COFFER_REGION"), OsString::from("eu-west-2")),
        ]);
        assert_eq!(
            found.ok(),
            Some(vec![("COFFER_REGION".to_owned(), "eu-west-2".to_owned())])
        );
        let refused = coffer_variables([(OsString::from("COFFER_REGION"), binary())]);
        assert_eq!(
            refused.err().map(|error| error.field).as_deref(),
            Some("COFFER_REGION")
        );
    }

    #[test]
    fn max_concurrent_requests_is_bounded() {
        for (value, accepted) in [
            ("1", true),
            ("1000000", true),
            ("0", false),
            ("1000001", false),
            ("2305843009213693952", false),
        ] {
            let outcome = from_yaml(
                MINIMAL,
                vec![(
                    "COFFER_LIMITS__MAX_CONCURRENT_REQUESTS".to_owned(),
                    value.to_owned(),
                )],
            );
            assert_eq!(outcome.is_ok(), accepted, "{value}: {outcome:?}");
        }
    }

    #[test]
    fn the_audit_endpoint_is_host_and_port() {
        let with = |endpoint: &str| format!("{MINIMAL}audit:\n  endpoint: \"{endpoint}\"\n");
        for good in [
            "audit.coffer:8443",
            "127.0.0.1:8443",
            "[::1]:8443",
            "Audit-1.svc:1",
        ] {
            assert!(from_yaml(&with(good), no_env()).is_ok(), "{good}");
        }
        for bad in [
            "https://audit.coffer:8443",
            "audit.coffer",
            "audit.coffer:",
            "audit.coffer:0",
            "audit.coffer:70000",
            ":8443",
            "audit coffer:8443",
        ] {
            assert_eq!(error_field(&with(bad)), "audit.endpoint", "{bad}");
        }
    }

    fn error_field(text: &str) -> String {
        from_yaml(text, no_env())
            .err()
            .map(|e| e.field)
            .unwrap_or_default()
    }

    #[test]
    fn log_levels_that_would_silence_the_logs_are_refused() {
        let with_level = |level: &str| format!("{MINIMAL}telemetry: {{ log_level: {level:?} }}\n");
        for level in ["warning", "inof", "", " ", "info,debg", "coffer=verbose"] {
            assert_eq!(
                error_field(&with_level(level)),
                "telemetry.log_level",
                "{level:?}"
            );
        }
        for level in ["warn", "INFO", "info,coffer_keys=debug", "h2=off", "trace"] {
            assert!(from_yaml(&with_level(level), no_env()).is_ok(), "{level:?}");
        }
    }

    #[test]
    fn a_sqlite_database_must_be_a_file() {
        for url in [
            "sqlite:",
            "sqlite://",
            "sqlite://?mode=rwc",
            "sqlite::memory:",
            "sqlite://keys.db?mode=memory",
        ] {
            assert_eq!(
                error_field(&MINIMAL.replace("sqlite://keys.db", url)),
                "services.keys.database.url",
                "{url}"
            );
        }
        for url in [
            "sqlite:keys.db",
            "sqlite:///var/lib/coffer/keys.db?mode=rwc",
        ] {
            assert!(
                from_yaml(&MINIMAL.replace("sqlite://keys.db", url), no_env()).is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn a_mapping_override_goes_before_the_fields_inside_it() -> Result<(), ConfigError> {
        for environment in [
            [
                ("COFFER_LIMITS__REQUEST_TIMEOUT_MS", "5000"),
                ("COFFER_LIMITS", "{max_concurrent_requests: 64}"),
            ],
            [
                ("COFFER_LIMITS", "{max_concurrent_requests: 64}"),
                ("COFFER_LIMITS__REQUEST_TIMEOUT_MS", "5000"),
            ],
        ] {
            let environment = environment.map(|(name, value)| (name.to_owned(), value.to_owned()));
            let settings = from_yaml(MINIMAL, environment)?;
            assert_eq!(settings.limits.request_timeout, Duration::from_secs(5));
            assert_eq!(settings.limits.max_concurrent_requests, 64);
        }
        Ok(())
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            error_field("tls: {cert_file: a, key_file: b, ca_file: c}"),
            "region"
        );
        assert_eq!(
            error_field(&MINIMAL.replace("eu-west-1", "EU West")),
            "region"
        );
        assert_eq!(error_field(&format!("{MINIMAL}\nbogus: 1\n")), "bogus");
        assert_eq!(
            error_field(&MINIMAL.replace("127.0.0.1:8443", "nowhere")),
            "services.keys.listen"
        );
        assert_eq!(
            error_field(&MINIMAL.replace("sqlite://keys.db", "mysql://x")),
            "services.keys.database.url"
        );
        assert_eq!(
            error_field(&MINIMAL.replace("keys:", "vault:")),
            "services.vault"
        );
        for limits in [
            "max_message_bytes: 1",
            "max_message_bytes: 18446744073709551615",
            "request_timeout_ms: 0",
            "request_timeout_ms: 3600001",
        ] {
            let field = limits.split(':').next().unwrap_or_default();
            assert_eq!(
                error_field(&format!("{MINIMAL}\nlimits: {{ {limits} }}\n")),
                format!("limits.{field}")
            );
        }
        for connections in [0, 10_001] {
            assert_eq!(
                error_field(&MINIMAL.replace(
                    r#"{ url: "sqlite://keys.db" }"#,
                    &format!(r#"{{ url: "sqlite://keys.db", max_connections: {connections} }}"#)
                )),
                "services.keys.database.max_connections"
            );
        }
        assert_eq!(
            error_field(&format!("{MINIMAL}\ntelemetry: {{ log_format: xml }}\n")),
            "telemetry.log_format"
        );
        assert_eq!(
            error_field(&format!("{MINIMAL}\naudit: {{ gather_ms: 101 }}\n")),
            "audit.gather_ms"
        );
        for grace in [4_999, 3_600_001] {
            assert_eq!(
                error_field(&format!(
                    "{MINIMAL}\naudit: {{ outbox_grace_ms: {grace} }}\n"
                )),
                "audit.outbox_grace_ms"
            );
        }
        for endpoint in [
            "otel-collector:4317",
            "grpc://collector:4317",
            "http://",
            "http:// x",
            "https://collector:4317",
        ] {
            assert_eq!(
                error_field(&format!(
                    "{MINIMAL}\naudit: {{ forward_spans_to: \"{endpoint}\" }}\n"
                )),
                "audit.forward_spans_to",
                "{endpoint}"
            );
            assert_eq!(
                error_field(&format!(
                    "{MINIMAL}\ntelemetry: {{ otlp_endpoint: \"{endpoint}\" }}\n"
                )),
                "telemetry.otlp_endpoint",
                "{endpoint}"
            );
        }
        let shown = from_yaml(
            &format!("{MINIMAL}\naudit: {{ forward_spans_to: \"grpc://u:hunter2@c:4317\" }}\n"),
            no_env(),
        )
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
        assert!(!shown.contains("hunter2"), "{shown}");
        for endpoint in ["http://otel-collector:4317", "http://10.0.0.5:4317"] {
            let settings = from_yaml(
                &format!(
                    "{MINIMAL}\naudit: {{ forward_spans_to: \"{endpoint}\", outbox_grace_ms: 3600000 }}\ntelemetry: {{ otlp_endpoint: \"{endpoint}\" }}\n"
                ),
                no_env(),
            );
            assert!(settings.is_ok(), "{endpoint}: {settings:?}");
        }
    }

    #[test]
    fn the_gathering_time_is_in_milliseconds_and_zero_turns_it_off() -> Result<(), ConfigError> {
        let default = from_yaml(MINIMAL, no_env())?;
        assert_eq!(default.audit.gather, Duration::from_millis(4));
        let off = from_yaml(&format!("{MINIMAL}\naudit: {{ gather_ms: 0 }}\n"), no_env())?;
        assert_eq!(off.audit.gather, Duration::ZERO);
        let most = from_yaml(
            &format!("{MINIMAL}\naudit: {{ gather_ms: 100 }}\n"),
            no_env(),
        )?;
        assert_eq!(most.audit.gather, Duration::from_millis(100));
        Ok(())
    }

    /// A value in the wrong place is refused without being quoted: it may
    /// be a secret (a database URL with its password).
    #[test]
    fn a_misplaced_value_is_not_quoted_in_the_error() {
        let text = MINIMAL.replace(
            r#"{ url: "sqlite://keys.db" }"#,
            r#""postgres://coffer:hunter2@db/coffer""#,
        );
        let error = from_yaml(&text, no_env()).err();
        let rendered = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(rendered.contains("services.keys.database"), "{rendered}");
        assert!(
            rendered.contains("invalid type: a string (not shown), expected"),
            "{rendered}"
        );
        assert!(!rendered.contains("hunter2"), "{rendered}");
        assert_eq!(
            without_quoted_text("invalid value: string \"x\", expected one of a, b"),
            "invalid value: a string (not shown), expected one of a, b"
        );
        assert_eq!(
            without_quoted_text("missing field `url`"),
            "missing field `url`"
        );
    }

    #[test]
    fn unknown_nested_field_is_named() {
        let text = MINIMAL.replace(
            "root_key: { file: root-key }",
            "root_key: { file: root-key, colour: red }",
        );
        let error = from_yaml(&text, no_env()).err();
        let rendered = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            rendered.contains("root_key") && rendered.contains("colour"),
            "{rendered}"
        );
    }
}
