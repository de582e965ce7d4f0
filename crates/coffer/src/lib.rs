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
use coffer_platform::audit::{AuditSink, JsonLinesSink};
use coffer_platform::authz::{self, Authorizer, IdentityPolicies};
use coffer_platform::call::CallSettings;
use coffer_platform::clock::Clock;
use coffer_platform::config::Settings;
use coffer_platform::db::DbPool;
use coffer_platform::server::{RunningServer, ServerParams, ServiceRegistration, start};
use coffer_platform::tls::ServerTls;
use tokio::net::TcpListener;

/// The services this build of Coffer contains.
pub const BUILT_SERVICES: &[&str] = &["keys"];

/// How often each service's scheduled work (key deletions, rotations) runs.
pub const MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Running services: one server per distinct listen address.
pub struct Instance {
    audit_sink: Arc<dyn AuditSink>,
    servers: Vec<(Vec<String>, RunningServer)>,
    pools: Vec<DbPool>,
    keys: Option<Arc<coffer_keys::KeysDomain>>,
    maintenance: Option<tokio::task::JoinHandle<()>>,
    policy_reloader: Option<tokio::task::JoinHandle<()>>,
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

    /// Runs every service's due work now (what the scheduler does every
    /// [`MAINTENANCE_INTERVAL`]), against the instance's clock.
    pub async fn run_maintenance(&self) -> anyhow::Result<()> {
        if let Some(keys) = &self.keys {
            let (deleted, rotated) = keys
                .run_due_work()
                .await
                .map_err(|error| anyhow::anyhow!("keys maintenance: {error}"))?;
            tracing::debug!(deleted, rotated, "keys maintenance ran");
        }
        Ok(())
    }

    /// Writes out every audit event emitted so far.
    pub fn flush_audit(&self) -> anyhow::Result<()> {
        self.audit_sink
            .flush()
            .map_err(|error| anyhow::anyhow!("{error}"))
    }

    /// Graceful shutdown of every server, then the database pools.
    pub async fn shutdown(self) {
        if let Some(maintenance) = &self.maintenance {
            maintenance.abort();
        }
        if let Some(reloader) = &self.policy_reloader {
            reloader.abort();
        }
        for (_, server) in self.servers {
            server.shutdown().await;
        }
        for pool in self.pools {
            pool.close().await;
        }
        if let Err(error) = self.audit_sink.flush() {
            tracing::error!(%error, "audit events could not be written at shutdown");
        }
    }
}

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
    let root_key = Arc::new(RootKey::load(&settings.root_key).context("loading the root key")?);
    let tls = Arc::new(ServerTls::load(settings.tls.clone()).context("loading TLS certificates")?);
    let audit_sink: Arc<dyn AuditSink> = match &settings.audit.log_file {
        Some(path) => Arc::new(
            JsonLinesSink::file(path)
                .with_context(|| format!("opening audit log {}", path.display()))?,
        ),
        None => Arc::new(JsonLinesSink::stdout().context("starting the audit writer")?),
    };

    let identity_policies = Arc::new(IdentityPolicies::new(
        settings.authorization.identity_policies.clone(),
    ));
    let authorizer = Arc::new(Authorizer::new(
        settings.location.clone(),
        identity_policies.clone(),
        clock.clone(),
    ));
    let policy_reloader = settings.authorization.source.clone().map(|source| {
        authz::spawn_reloader(
            identity_policies,
            source,
            settings.authorization.reload_interval,
        )
    });

    let mut groups: BTreeMap<SocketAddr, Vec<(String, ServiceRegistration)>> = BTreeMap::new();
    let mut pools = Vec::new();
    let mut keys_domain = None;
    for name in service_names {
        let service = settings
            .services
            .get(name)
            .with_context(|| format!("services.{name} is not configured"))?;
        let registration = match name.as_str() {
            "keys" => {
                let (domain, pool) = coffer_keys::connect(
                    &service.database,
                    root_key.clone(),
                    settings.location.clone(),
                    clock.clone(),
                )
                .await
                .with_context(|| format!("opening the {name} database"))?;
                pools.push(pool);
                keys_domain = Some(domain.clone());
                coffer_keys::registration(domain)
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

    let mut admin_listen = settings.admin_listen;
    let mut servers = Vec::new();
    for (addr, members) in groups {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let admin_listener = match admin_listen.take() {
            Some(admin) => Some(
                TcpListener::bind(admin)
                    .await
                    .with_context(|| format!("binding admin address {admin}"))?,
            ),
            None => None,
        };
        let (names, registrations): (Vec<String>, Vec<ServiceRegistration>) =
            members.into_iter().unzip();
        let server = start(ServerParams {
            listener,
            admin_listener,
            tls: tls.clone(),
            call: CallSettings {
                location: settings.location.clone(),
                trust_domain: settings.trust_domain.clone(),
                request_timeout: settings.limits.request_timeout,
                max_concurrent_requests: settings.limits.max_concurrent_requests,
            },
            max_message_bytes: settings.limits.max_message_bytes,
            shutdown_grace: settings.limits.shutdown_grace,
            services: registrations,
            audit_sink: audit_sink.clone(),
            authorizer: authorizer.clone(),
        })
        .await?;
        tracing::info!(addr = %server.local_addr(), services = ?names, "serving");
        servers.push((names, server));
    }
    let maintenance = keys_domain.clone().map(|keys| {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(MAINTENANCE_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(error) = keys.run_due_work().await {
                    tracing::error!(%error, "keys maintenance failed");
                }
            }
        })
    });
    Ok(Instance {
        audit_sink,
        servers,
        pools,
        keys: keys_domain,
        maintenance,
        policy_reloader,
    })
}
