//! The `coffer` binary's wiring, as a library so tests boot exactly what
//! operators run: [`launch`] starts a set of services from [`Settings`];
//! [`dev`] prepares a self-contained development instance.

pub mod bench;
pub mod cli;
pub mod dev;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use coffer_crypto::RootKey;
use coffer_platform::audit::AuditSink;
use coffer_platform::audit::export::{
    AuditExporter, ExportSettings, ExportTransport, OtlpTransport,
};
use coffer_platform::audit::outbox::{SqlOutbox, spawn_relay};
use coffer_platform::audit::service::ServiceEvents;
use coffer_platform::authz::{self, Authorizer, IdentityPolicies};
use coffer_platform::background::every;
use coffer_platform::call::CallSettings;
use coffer_platform::client::ClientTls;
use coffer_platform::clock::Clock;
use coffer_platform::config::{AuditMode, Settings};
use coffer_platform::db::DbPool;
use coffer_platform::server::{RunningServer, ServerParams, ServiceRegistration, start};
use coffer_platform::tls::ServerTls;
use tokio::net::TcpListener;

/// The services this build of Coffer contains.
pub const BUILT_SERVICES: &[&str] = &["keys", "audit"];

/// How often each service's scheduled work (key deletions, rotations) runs.
pub const MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Running services: one server per distinct listen address.
pub struct Instance {
    exporter: Option<Arc<AuditExporter>>,
    servers: Vec<(Vec<String>, RunningServer)>,
    pools: Vec<DbPool>,
    /// The keys service, with where its scheduler's changes are recorded.
    keys: Option<(Arc<coffer_keys::KeysDomain>, ServiceEvents)>,
    audit: Option<Arc<coffer_audit::AuditCore>>,
    outboxes: Vec<Arc<SqlOutbox>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Instance")
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// The address a service is served on.
    pub fn addr_of(&self, service: &str) -> Option<SocketAddr> {
        self.servers
            .iter()
            .find(|(names, _)| names.iter().any(|name| name == service))
            .map(|(_, server)| server.local_addr())
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.servers
            .iter()
            .find_map(|(_, server)| server.admin_addr())
    }

    pub fn servers(&self) -> impl Iterator<Item = &RunningServer> {
        self.servers.iter().map(|(_, server)| server)
    }

    /// The audit service running in this instance, if it does.
    pub fn audit_core(&self) -> Option<&Arc<coffer_audit::AuditCore>> {
        self.audit.as_ref()
    }

    /// Audit events written to outboxes and not yet acknowledged.
    pub async fn outbox_rows(&self) -> anyhow::Result<i64> {
        let mut total = 0;
        for outbox in &self.outboxes {
            total += outbox.pending_rows().await?;
        }
        Ok(total)
    }

    /// The records of every service's outbox rows waiting, for tests.
    pub async fn outbox_records(&self) -> anyhow::Result<Vec<String>> {
        let mut records = Vec::new();
        for outbox in &self.outboxes {
            records.extend(outbox.pending_records().await?);
        }
        Ok(records)
    }

    /// Runs every service's due work now (what the scheduler does every
    /// [`MAINTENANCE_INTERVAL`]), against the instance's clock.
    /// Each service's work runs whatever another's did; the first failure
    /// is returned after all of them.
    pub async fn run_maintenance(&self) -> anyhow::Result<()> {
        let keys = match &self.keys {
            Some((keys, events)) => match keys.run_due_work(events).await {
                Ok((deleted, rotated)) if deleted.failed + rotated.failed > 0 => {
                    Err(anyhow::anyhow!(
                        "keys maintenance: {} deletions and {} rotations failed (logged); the other keys' went through",
                        deleted.failed,
                        rotated.failed
                    ))
                }
                Ok((deleted, rotated)) => {
                    tracing::debug!(?deleted, ?rotated, "keys maintenance ran");
                    Ok(())
                }
                Err(error) => Err(anyhow::anyhow!("keys maintenance: {error}")),
            },
            None => Ok(()),
        };
        let audit = match &self.audit {
            Some(audit) => match audit.enforce_retention().await {
                Ok(removed) => {
                    tracing::debug!(removed, "audit retention ran");
                    Ok(())
                }
                Err(error) => Err(anyhow::anyhow!("audit retention: {error}")),
            },
            None => Ok(()),
        };
        // The first failure, as documented: the keys service's runs first.
        keys.and(audit)
    }

    /// What the audit exporter has done, when this instance exports.
    pub fn export_counters(&self) -> Option<&coffer_platform::audit::export::ExportCounters> {
        self.exporter.as_ref().map(|exporter| exporter.counters())
    }

    /// Waits until every audit event emitted so far is acknowledged by the
    /// audit service and, when it runs here, in its store.
    pub async fn flush_audit(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        if let Some(exporter) = &self.exporter {
            exporter
                .flush(timeout)
                .await
                .map_err(|error| anyhow::anyhow!("{error}"))?;
        }
        if let Some(audit) = &self.audit {
            audit.settled().await;
        }
        Ok(())
    }

    /// Graceful shutdown of every server, then the database pools.
    pub async fn shutdown(self) {
        // Open subscriptions end (UNAVAILABLE: subscribe again) rather than
        // hold the drain for its whole grace period.
        if let Some(audit) = &self.audit {
            audit.close_subscriptions();
        }
        // Every server stops accepting at once and drains within the same
        // grace period, not one grace period after another.
        let mut draining = tokio::task::JoinSet::new();
        for (_, server) in self.servers {
            draining.spawn(server.shutdown());
        }
        while let Some(drained) = draining.join_next().await {
            if let Err(error) = drained {
                tracing::error!(%error, "a server's shutdown failed");
            }
        }
        // Scheduled work stops only now: a deletion or rotation it was
        // making while the calls drained is not cut off between its commit
        // and its event.
        for task in &self.background {
            task.abort();
        }
        if let Some(exporter) = &self.exporter
            && let Err(error) = exporter.flush(std::time::Duration::from_secs(5)).await
        {
            tracing::warn!(%error, "audit events still queued at shutdown; outboxed ones are resent at the next start");
        }
        // A call still running past the grace period holds a connection,
        // and closing waits for it: not for ever.
        for pool in self.pools {
            if tokio::time::timeout(POOL_CLOSE_PATIENCE, pool.close())
                .await
                .is_err()
            {
                tracing::warn!(patience = ?POOL_CLOSE_PATIENCE, "a database pool still had connections in use; closed without them");
            }
        }
    }
}

/// How long a shutdown waits for a database pool's connections to come
/// back before it goes on without them.
const POOL_CLOSE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts `service_names` as `settings` configures them. Services that share
/// a listen address share one server.
pub async fn launch(
    settings: &Settings,
    service_names: &[String],
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Instance> {
    coffer_platform::install_crypto_provider();
    if service_names.is_empty() {
        bail!(
            "name at least one service to serve ({})",
            BUILT_SERVICES.join(", ")
        );
    }
    for (index, name) in service_names.iter().enumerate() {
        if !BUILT_SERVICES.contains(&name.as_str()) {
            bail!(
                "{name:?} is not a service this build serves ({})",
                BUILT_SERVICES.join(", ")
            );
        }
        if service_names[..index].contains(name) {
            bail!("the service {name} is named twice");
        }
    }
    let tls = Arc::new(ServerTls::load(settings.tls.clone()).context("loading TLS certificates")?);

    // Every listener (the admin port's too) is bound first, so an address
    // in use fails the start before any store is opened or migrated.
    let mut listeners: BTreeMap<SocketAddr, TcpListener> = BTreeMap::new();
    for name in service_names {
        let service = settings
            .services
            .get(name)
            .with_context(|| format!("services.{name} is not configured"))?;
        if let std::collections::btree_map::Entry::Vacant(slot) = listeners.entry(service.listen) {
            let listener = TcpListener::bind(service.listen)
                .await
                .with_context(|| format!("binding {}", service.listen))?;
            slot.insert(listener);
        }
    }
    let mut admin_listener = match settings.admin_listen {
        Some(admin) => Some(
            TcpListener::bind(admin)
                .await
                .with_context(|| format!("binding admin address {admin}"))?,
        ),
        None => None,
    };
    // The audit service opens first: a co-located service's exporter
    // delivers to it directly.
    let mut audit_service = if service_names.iter().any(|name| name == "audit") {
        Some(open_audit(settings, clock.clone()).await?)
    } else {
        None
    };
    let exports = service_names.iter().any(|name| name != "audit");
    let exporter = if exports {
        let exporting: Vec<&str> = service_names
            .iter()
            .map(String::as_str)
            .filter(|name| *name != "audit")
            .collect();
        let transport: Arc<dyn ExportTransport> = match (&settings.audit.endpoint, &audit_service) {
            (Some(endpoint), _) => {
                let client_tls = ClientTls::service_from_files(
                    &settings.tls.ca_file,
                    (&settings.tls.cert_file, &settings.tls.key_file),
                    &settings.trust_domain,
                )
                .context("loading the audit client identity")?;
                let channel = client_tls
                    .connect_lazy(
                        endpoint,
                        &settings.audit.server_name,
                        settings.audit.deadline,
                    )
                    .context("the audit endpoint")?;
                Arc::new(OtlpTransport::new(
                    channel,
                    &exporting.join("+"),
                    settings.audit.deadline,
                    settings.audit.mode,
                ))
            }
            (None, Some((audit, _))) => {
                Arc::new(coffer_audit::LocalTransport::new(audit.core.clone()))
            }
            (None, None) => bail!(
                "audit.endpoint must name the audit service's address when this process does not serve it"
            ),
        };
        Some(AuditExporter::start(
            transport,
            ExportSettings {
                mode: settings.audit.mode,
                deadline: settings.audit.deadline,
                queue_limit: settings.audit.queue_limit,
                batch_limit: settings.audit.batch_limit,
                gather: settings.audit.gather,
            },
        ))
    } else {
        None
    };

    let identity_policies = Arc::new(IdentityPolicies::new(
        settings.authorization.identity_policies.clone(),
    ));
    let authorizer = Arc::new(Authorizer::new(
        settings.location.clone(),
        identity_policies.clone(),
        clock.clone(),
    ));
    let policy_reloader = authz::spawn_reloader(identity_policies, &settings.authorization);

    let mut groups: BTreeMap<SocketAddr, Vec<(String, ServiceRegistration)>> = BTreeMap::new();
    let mut pools = Vec::new();
    let mut keys_domain = None;
    let mut keys_outbox = None;
    let mut audit_core = None;
    let mut outboxes = Vec::new();
    let mut background = Vec::new();
    let required = settings.audit.mode == AuditMode::Required;
    for name in service_names {
        let service = settings
            .services
            .get(name)
            .with_context(|| format!("services.{name} is not configured"))?;
        let registration = match name.as_str() {
            "keys" => {
                let root_key =
                    Arc::new(RootKey::load(&settings.root_key).context("loading the root key")?);
                let (domain, pool) = coffer_keys::connect(
                    &service.database,
                    root_key,
                    settings.location.clone(),
                    clock.clone(),
                )
                .await
                .with_context(|| format!("opening the {name} database"))?;
                // The relay runs in either mode: rows a `required` run left
                // behind (the audit service was down when it stopped) are
                // still sent after a switch to `best_effort`, which writes
                // no new ones.
                let outbox = exporter.as_ref().map(|exporter| {
                    let outbox = Arc::new(SqlOutbox::new(pool.clone()));
                    background.push(spawn_relay(
                        outbox.clone(),
                        exporter.clone(),
                        settings.audit.outbox_grace,
                    ));
                    outboxes.push(outbox.clone());
                    outbox
                });
                let outbox = outbox.filter(|_| required);
                pools.push(pool);
                keys_domain = Some(domain.clone());
                keys_outbox.clone_from(&outbox);
                coffer_keys::registration(domain, outbox)
            }
            "audit" => {
                let (audit, pool) = audit_service
                    .take()
                    .context("the audit service is named more than once")?;
                pools.push(pool);
                background.extend(coffer_audit::core::spawn_upkeep(audit.core.clone()));
                audit_core = Some(audit.core.clone());
                audit.registration()
            }
            other => bail!(
                "service {other} is not part of this build (built: {})",
                BUILT_SERVICES.join(", ")
            ),
        };
        groups
            .entry(service.listen)
            .or_default()
            .push((name.clone(), registration));
    }
    // The sink for calls whose service names none of its own: the exporter,
    // or (a process serving only the audit service) its store.
    let default_sink: Arc<dyn AuditSink> = match (&exporter, &audit_core) {
        (Some(exporter), _) => exporter.clone(),
        (None, Some(core)) => Arc::new(coffer_audit::LocalSink::new(core.clone())),
        (None, None) => bail!("no audit sink: serve the audit service or name audit.endpoint"),
    };

    // One set of statuses for the whole process: the admin port is served
    // by one server but answers for the services of all of them.
    let health = tonic_health::server::HealthReporter::new();
    let mut servers = Vec::new();
    for (addr, members) in groups {
        let listener = listeners
            .remove(&addr)
            .with_context(|| format!("no listener bound for {addr}"))?;
        let admin_listener = admin_listener.take();
        let (names, registrations): (Vec<String>, Vec<ServiceRegistration>) =
            members.into_iter().unzip();
        let server = start(ServerParams {
            listener,
            admin_listener,
            health: Some(health.clone()),
            tls: tls.clone(),
            call: CallSettings {
                location: settings.location.clone(),
                trust_domain: settings.trust_domain.clone(),
                request_timeout: settings.limits.request_timeout,
                max_concurrent_requests: settings.limits.max_concurrent_requests,
                audit_mode: settings.audit.mode,
            },
            max_message_bytes: settings.limits.max_message_bytes,
            shutdown_grace: settings.limits.shutdown_grace,
            max_connection_age: settings.limits.max_connection_age,
            services: registrations,
            audit_sink: default_sink.clone(),
            authorizer: authorizer.clone(),
        })
        .await?;
        tracing::info!(addr = %server.local_addr(), services = ?names, "serving");
        servers.push((names, server));
    }
    // The scheduler's own changes (rotations, deletions) are audited as the
    // keys service's calls are: to the same sink, through the same outbox.
    let keys = keys_domain.map(|domain| {
        let events = ServiceEvents::new(
            &settings.location,
            "keys",
            default_sink.clone(),
            keys_outbox,
            clock.clone(),
        );
        (domain, events)
    });
    if let Some((keys, events)) = keys.clone() {
        background.push(every("keys maintenance", MAINTENANCE_INTERVAL, move || {
            run_keys_maintenance(keys.clone(), events.clone())
        }));
    }
    background.extend(policy_reloader);
    Ok(Instance {
        exporter,
        servers,
        pools,
        keys,
        audit: audit_core,
        outboxes,
        background,
    })
}

/// One run of the keys service's due work (every [`MAINTENANCE_INTERVAL`]).
async fn run_keys_maintenance(keys: Arc<coffer_keys::KeysDomain>, events: ServiceEvents) {
    match keys.run_due_work(&events).await {
        Ok((deleted, rotated)) if deleted.failed + rotated.failed > 0 => {
            tracing::error!(
                deletions_failed = deleted.failed,
                rotations_failed = rotated.failed,
                "keys maintenance could not change some keys (each logged); they are tried again at the next run"
            );
        }
        Ok(_) => {}
        Err(error) => tracing::error!(%error, "keys maintenance failed"),
    }
}

/// Opens the audit service's store and starts its core.
async fn open_audit(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(coffer_audit::AuditService, DbPool)> {
    let service = settings
        .services
        .get("audit")
        .context("services.audit is not configured")?;
    coffer_audit::connect(
        &service.database,
        clock,
        coffer_audit::AuditOptions {
            retention: settings.audit.retention,
            untrusted_spans: settings.audit.untrusted_spans,
            forward_spans_to: settings.audit.forward_spans_to.clone(),
            webhook_roots: webhook_roots(settings)?,
            webhook_private_endpoints: settings.audit.webhook_private_endpoints,
            webhook_first_backoff: std::time::Duration::from_millis(500),
        },
    )
    .await
    .context("opening the audit database")
}

/// The CAs webhook servers must chain to: `audit.webhook_ca_file`, or the
/// `tls.ca_file` bundle.
fn webhook_roots(settings: &Settings) -> anyhow::Result<rustls::RootCertStore> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let path = settings
        .audit
        .webhook_ca_file
        .as_ref()
        .unwrap_or(&settings.tls.ca_file);
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate =
            certificate.with_context(|| format!("a certificate in {}", path.display()))?;
        roots
            .add(certificate)
            .with_context(|| format!("a CA certificate in {}", path.display()))?;
    }
    // An empty store would be accepted, and every webhook refused.
    anyhow::ensure!(
        !roots.is_empty(),
        "{} holds no PEM certificate for webhook servers to chain to",
        path.display()
    );
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_ca_file_without_a_certificate_is_refused() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let not_pem = directory.path().join("ca.der");
        std::fs::write(&not_pem, b"\x30\x82 not a PEM file")?;
        let config = format!(
            "region: eu-west-1\n\
             tls: {{ cert_file: c.pem, key_file: k.pem, ca_file: {not_pem:?} }}\n\
             root_key: {{ file: root-key }}\n\
             services:\n  audit:\n    listen: 127.0.0.1:8443\n    database: {{ url: \"sqlite://a.db\" }}\n"
        );
        let settings = coffer_platform::config::from_yaml(&config, Vec::new())?;
        let error = webhook_roots(&settings)
            .err()
            .ok_or_else(|| anyhow::anyhow!("a file with no certificate was taken as the CAs"))?;
        assert!(
            error.to_string().contains("holds no PEM certificate"),
            "{error:#}"
        );
        Ok(())
    }
}
