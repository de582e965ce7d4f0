//! Command-line interface.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "coffer",
    version,
    about = "Self-hosted KMS, secrets, parameters, certificates and audit"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one or more services as the configuration file describes.
    Serve {
        /// The YAML configuration file.
        #[arg(long, env = "COFFER_CONFIG")]
        config: PathBuf,
        /// Override the configured region.
        #[arg(long, env = "COFFER_REGION")]
        region: Option<String>,
        /// Services to serve: keys, audit (each at most once).
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Every service in one process: SQLite, a generated CA and identities.
    Dev {
        /// Where state, certificates and the root key live.
        #[arg(long, env = "COFFER_DEV_DIR", default_value = "coffer-dev")]
        dir: PathBuf,
        /// The one address every service listens on.
        #[arg(long, env = "COFFER_DEV_LISTEN", default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
    },
    /// Load-test the hot RPCs and print ghz-style summaries.
    Bench(crate::bench::BenchArgs),
    /// A small CA for minting SPIFFE identities.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create DIR/ca.pem and DIR/ca-key.pem.
    Init {
        #[arg(long, env = "COFFER_PKI_DIR")]
        dir: PathBuf,
        #[arg(long, env = "COFFER_TRUST_DOMAIN", default_value = "coffer.local")]
        trust_domain: String,
    },
    /// Issue DIR/NAME-cert.pem and DIR/NAME-key.pem for a SPIFFE id.
    Issue {
        #[arg(long, env = "COFFER_PKI_DIR")]
        dir: PathBuf,
        /// e.g. spiffe://coffer.local/account/111122223333/user/alice
        #[arg(long)]
        spiffe_id: String,
        /// File name prefix.
        #[arg(long)]
        out: String,
        /// DNS names to include (for server certificates).
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses to include (for server certificates).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Replace the identity's files if they exist (to renew it).
        #[arg(long)]
        force: bool,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    use std::sync::Arc;

    use anyhow::Context as _;
    use coffer_platform::{clock::SystemClock, config, pki, telemetry};

    match cli.command {
        Command::Serve {
            config: path,
            region,
            services,
        } => {
            let mut environment = config::coffer_environment()?;
            if let Some(region) = region {
                environment.push(("COFFER_REGION".into(), region));
            }
            let settings = config::load(Some(&path), environment)?;
            let _telemetry = telemetry::init(&settings.telemetry, &services.join("+"))?;
            let instance = crate::launch(&settings, &services, Arc::new(SystemClock)).await?;
            run_until_signalled(instance).await;
            Ok(())
        }
        Command::Dev { dir, listen } => crate::dev::run(&dir, listen).await,
        Command::Bench(args) => crate::bench::run(&args).await.map(drop),
        Command::Pki {
            command: PkiCommand::Init { dir, trust_domain },
        } => {
            pki::init_ca(&dir, &trust_domain)?;
            println!(
                "created {} and {}",
                dir.join(pki::CA_CERT_FILE).display(),
                dir.join(pki::CA_KEY_FILE).display()
            );
            Ok(())
        }
        Command::Pki {
            command:
                PkiCommand::Issue {
                    dir,
                    spiffe_id,
                    out,
                    dns,
                    ip,
                    force,
                },
        } => {
            // Refused before anything is issued.
            pki::check_coffer_identity(&spiffe_id)?;
            pki::identity_paths(&dir, &out)?;
            let authority = pki::Authority::load(&dir)
                .context("loading the CA (run `coffer pki init` first)")?;
            let identity = authority.issue(&spiffe_id, &dns, &ip)?;
            let (cert, key) = pki::write_identity(&dir, &out, &identity, force)?;
            println!("issued {spiffe_id}: {} {}", cert.display(), key.display());
            Ok(())
        }
    }
}

/// Ctrl-C or SIGTERM.
/// Serves until SIGINT or SIGTERM, then shuts `instance` down gracefully;
/// a second signal exits at once.
pub async fn run_until_signalled(instance: crate::Instance) {
    shutdown_signal().await;
    tracing::info!("shutting down");
    tokio::select! {
        () = instance.shutdown() => {}
        () = shutdown_signal() => {
            // Audit events not yet acknowledged wait in the outbox
            // and are sent at the next start.
            tracing::warn!("a second signal: exiting without waiting for calls in flight");
            std::process::exit(130);
        }
    }
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
