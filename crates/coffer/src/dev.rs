//! `coffer dev`: every built service in one process on one address, SQLite
//! under DIR, and a CA directory with the server, service and admin
//! identities. DIR is an ordinary `coffer pki` directory, so identities
//! minted there with `coffer pki issue` are trusted by the running instance.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use coffer_crypto::RootKey;
use coffer_platform::client::ClientTls;
use coffer_platform::clock::SystemClock;
use coffer_platform::{config, pki, telemetry};
use coffer_proto::keys::v1 as keys_pb;

use crate::BUILT_SERVICES;

/// The dev admin's account.
pub const DEV_ACCOUNT: &str = "111122223333";
pub const DEV_TRUST_DOMAIN: &str = "coffer.local";
pub const DEV_REGION: &str = "eu-west-1";
const DEMO_KEY_FILE: &str = "demo-key-id";
const DEMO_CIPHERTEXT_FILE: &str = "demo-ciphertext.b64";
const DEMO_PLAINTEXT: &[u8] = b"hello from coffer";

/// Paths of a dev directory.
#[derive(Debug, Clone)]
pub struct DevDir {
    pub dir: PathBuf,
}

impl DevDir {
    pub fn config(&self) -> PathBuf {
        self.dir.join("coffer.yaml")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join(pki::CA_CERT_FILE)
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-cert.pem"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }
    pub fn root_key(&self) -> PathBuf {
        self.dir.join("root-key")
    }
}

/// The identity the dev process presents, as server and as the client of
/// its own audit service: the keys service's.
const DEV_PROCESS_IDENTITY: &str = "service-keys";

pub fn admin_spiffe_id() -> String {
    format!("spiffe://{DEV_TRUST_DOMAIN}/account/{DEV_ACCOUNT}/user/admin")
}

fn issue_if_missing(
    layout: &DevDir,
    authority: &pki::Authority,
    name: &str,
    spiffe_id: &str,
    dns: &[String],
    ips: &[IpAddr],
) -> anyhow::Result<()> {
    // What the identity was issued for, by which CA and until when, beside
    // its files: one issued for other addresses (an earlier `--listen`), by
    // another CA (`ca.pem` was removed and made again) or near its end
    // (identities last a year) is issued again.
    let record = layout.dir.join(format!("{name}.issued"));
    let wanted = format!(
        "{spiffe_id} {dns:?} {ips:?} ca-sha256:{}",
        ca_fingerprint(layout)?
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let current = std::fs::read_to_string(&record).ok().and_then(|text| {
        let (until, issued_for) = text.trim_end().split_once(' ')?;
        let until: u64 = until.parse().ok()?;
        (issued_for == wanted && until > now + RENEW_BEFORE_SECONDS).then_some(())
    });
    if current.is_some() && layout.cert(name).exists() && layout.key(name).exists() {
        return Ok(());
    }
    let identity = authority.issue(spiffe_id, dns, ips)?;
    pki::write_identity(&layout.dir, name, &identity, true)?;
    let until = now + pki::IDENTITY_DAYS * 24 * 60 * 60;
    std::fs::write(&record, format!("{until} {wanted}\n"))
        .with_context(|| format!("writing {}", record.display()))?;
    Ok(())
}

/// The SHA-256 of the CA certificate file, in hex.
fn ca_fingerprint(layout: &DevDir) -> anyhow::Result<String> {
    let pem =
        std::fs::read(layout.ca()).with_context(|| format!("reading {}", layout.ca().display()))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &pem);
    Ok(digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// A dev identity is issued again when it has less than this left.
const RENEW_BEFORE_SECONDS: u64 = 30 * 24 * 60 * 60;

/// Creates what is missing in `dir` (CA, identities, root key) and writes the
/// configuration for `listen`. Returns the layout, with an absolute path.
pub fn prepare(dir: &Path, listen: SocketAddr) -> anyhow::Result<DevDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let layout = DevDir {
        dir: dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?,
    };
    if !layout.ca().exists() {
        pki::init_ca(&layout.dir, DEV_TRUST_DOMAIN)?;
    }
    let authority = pki::Authority::load(&layout.dir)?;
    let mut server_ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if !listen.ip().is_unspecified() && !server_ips.contains(&listen.ip()) {
        server_ips.push(listen.ip());
    }
    issue_if_missing(&layout, &authority, "admin", &admin_spiffe_id(), &[], &[])?;
    // Each service's identity; the process presents the keys service's (a
    // Coffer service identity is what makes its audit events trusted).
    for service in BUILT_SERVICES {
        issue_if_missing(
            &layout,
            &authority,
            &format!("service-{service}"),
            &format!("spiffe://{DEV_TRUST_DOMAIN}/service/{service}"),
            &["localhost".to_owned()],
            &server_ips,
        )?;
    }
    if !layout.root_key().exists() {
        write_private(
            &layout.root_key(),
            RootKey::generate()?.to_base64().as_bytes(),
        )?;
    }
    let mut services = String::new();
    for service in BUILT_SERVICES {
        services.push_str(&format!(
            "  {service}:\n    listen: \"{listen}\"\n    database:\n      url: {}\n",
            yaml_string(&sqlite_url(&layout.dir.join(format!("{service}.db"))))
        ));
    }
    let config_text = format!(
        "# Written by `coffer dev`; rewritten at every start.\n\
         region: {DEV_REGION}\n\
         trust_domain: {DEV_TRUST_DOMAIN}\n\
         tls:\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n\
         root_key:\n  file: {}\n\
         telemetry:\n  log_format: text\n  log_level: info\n\
         # Webhook receivers on this machine are reachable in development.\n\
         audit:\n  webhook_private_endpoints: true\n\
         # Identity policies (AWS IAM JSON, or the same as YAML). This file is\n\
         # watched: edits take effect within seconds, without a restart.\n\
         authorization:\n  identity_policies:\n\
         \x20   - name: dev-account-users\n\
         \x20     principals: [\"arn:coffer:iam::{DEV_ACCOUNT}:user/*\"]\n\
         \x20     policy: {{\"Version\": \"2012-10-17\", \"Statement\": [{{\"Effect\": \"Allow\", \"Action\": \"*\", \"Resource\": \"*\"}}]}}\n\
         services:\n{services}",
        yaml_string(&layout.cert(DEV_PROCESS_IDENTITY).display().to_string()),
        yaml_string(&layout.key(DEV_PROCESS_IDENTITY).display().to_string()),
        yaml_string(&layout.ca().display().to_string()),
        yaml_string(&layout.root_key().display().to_string()),
    );
    std::fs::write(layout.config(), config_text)
        .with_context(|| format!("writing {}", layout.config().display()))?;
    Ok(layout)
}

/// The overrides `coffer dev` applies, and the names of those it ignores:
/// the trust domain, TLS files and root key are its own (its certificates
/// are issued for them), whatever the shell exported for `coffer pki`.
pub(crate) fn dev_overrides(
    environment: Vec<(String, String)>,
) -> (Vec<(String, String)>, Vec<String>) {
    let (ignored, kept): (Vec<_>, Vec<_>) = environment.into_iter().partition(|(name, _)| {
        // The field an override sets is read without regard to case, and
        // may be the whole mapping (`COFFER_TLS`).
        let field = name
            .strip_prefix("COFFER_")
            .and_then(|path| path.split("__").next())
            .unwrap_or_default()
            .to_ascii_lowercase();
        ["trust_domain", "tls", "root_key"].contains(&field.as_str())
    });
    (kept, ignored.into_iter().map(|(name, _)| name).collect())
}

/// `text` as a YAML double-quoted scalar: JSON's string syntax is YAML's,
/// so quotes, backslashes and control characters in a path stay as they are.
fn yaml_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// The SQLite URL of `path`, whose `%`, `?` and `#` sqlx would otherwise
/// read as an escape, parameters or a fragment (it decodes the escapes).
fn sqlite_url(path: &Path) -> String {
    let escaped = path
        .display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23");
    format!("sqlite://{escaped}")
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}

/// What the bootstrap made, for the printed commands.
#[derive(Debug, Clone)]
pub struct Demo {
    pub key_id: String,
    pub ciphertext_base64: String,
}

/// As the admin, over the network: make sure the demo key exists and encrypt
/// a greeting with it, so every printed command works when pasted.
pub async fn bootstrap_demo(layout: &DevDir, addr: &str) -> anyhow::Result<Demo> {
    let tls = ClientTls::from_files(
        &layout.ca(),
        Some((&layout.cert("admin"), &layout.key("admin"))),
    )?;
    let channel = tls.connect(addr, "localhost").await?;
    let mut keys = keys_pb::keys_client::KeysClient::new(channel);
    let remembered = std::fs::read_to_string(layout.dir.join(DEMO_KEY_FILE)).ok();
    let mut key_id = None;
    if let Some(candidate) = remembered.map(|text| text.trim().to_owned()) {
        let described = keys
            .describe_key(keys_pb::DescribeKeyRequest {
                key_id: candidate.clone(),
                ..Default::default()
            })
            .await;
        // Kept only while it can still encrypt: one disabled or scheduled
        // for deletion since is replaced (and stays as it is).
        let usable = described
            .ok()
            .and_then(|answer| answer.into_inner().key_metadata)
            .is_some_and(|metadata| {
                metadata.key_state == "Enabled"
                    && metadata.key_usage == "ENCRYPT_DECRYPT"
                    && metadata.key_spec == "SYMMETRIC_DEFAULT"
            });
        if usable {
            key_id = Some(candidate);
        }
    }
    let key_id = match key_id {
        Some(key_id) => key_id,
        None => {
            let created = keys
                .create_key(keys_pb::CreateKeyRequest {
                    description: "coffer dev demo key".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let key_id = created
                .key_metadata
                .map(|metadata| metadata.key_id)
                .unwrap_or_default();
            std::fs::write(layout.dir.join(DEMO_KEY_FILE), &key_id)?;
            key_id
        }
    };
    let encrypted = keys
        .encrypt(keys_pb::EncryptRequest {
            key_id: key_id.clone(),
            plaintext: DEMO_PLAINTEXT.to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let ciphertext_base64 = STANDARD.encode(encrypted.ciphertext_blob);
    std::fs::write(layout.dir.join(DEMO_CIPHERTEXT_FILE), &ciphertext_base64)?;
    Ok(Demo {
        key_id,
        ciphertext_base64,
    })
}

/// The address clients should dial for `listen`.
pub fn dial_address(listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        format!("localhost:{}", listen.port())
    } else {
        listen.to_string()
    }
}

/// The ready-to-paste commands, for the region the services run in (the
/// configuration's, or `COFFER_REGION`'s).
pub fn instructions(layout: &DevDir, addr: &str, region: &str, demo: &Demo) -> String {
    let tls = format!(
        "-cacert {} -cert {} -key {}",
        layout.ca().display(),
        layout.cert("admin").display(),
        layout.key("admin").display()
    );
    let ghz_tls = format!(
        "--cacert {} --cert {} --key {}",
        layout.ca().display(),
        layout.cert("admin").display(),
        layout.key("admin").display()
    );
    let plaintext = STANDARD.encode(DEMO_PLAINTEXT);
    format!(
        "\nCoffer dev is serving {services} on {addr} (region {region}, account {DEV_ACCOUNT}).\n\
         State, CA and identities: {dir}\n\
         Mint more identities: coffer pki issue --dir {dir} --spiffe-id spiffe://{DEV_TRUST_DOMAIN}/account/{DEV_ACCOUNT}/user/alice --out alice\n\
         \n\
         grpcurl (server reflection is on):\n\
         \x20 grpcurl {tls} {addr} list\n\
         \x20 grpcurl {tls} -d '{{\"description\":\"my first key\"}}' {addr} coffer.keys.v1.Keys/CreateKey\n\
         \x20 grpcurl {tls} -d '{{\"key_id\":\"{key}\",\"plaintext\":\"{plaintext}\"}}' {addr} coffer.keys.v1.Keys/Encrypt\n\
         \x20 grpcurl {tls} -d '{{\"ciphertext_blob\":\"{blob}\"}}' {addr} coffer.keys.v1.Keys/Decrypt\n\
         \x20 grpcurl {tls} -d '{{\"key_id\":\"{key}\",\"key_spec\":\"AES_256\"}}' {addr} coffer.keys.v1.Keys/GenerateDataKey\n\
         \x20 grpcurl {tls} {addr} grpc.health.v1.Health/Check\n\
         \x20 grpcurl {tls} -d '{{\"max_results\":5}}' {addr} coffer.audit.v1.Audit/LookupEvents\n\
         \x20 grpcurl {tls} -d '{{\"event_pattern\":\"{{\\\"detail\\\":{{\\\"eventName\\\":[\\\"Decrypt\\\"]}}}}\"}}' {addr} coffer.audit.v1.Audit/Subscribe\n\
         \n\
         ghz (load test):\n\
         \x20 ghz {ghz_tls} --call coffer.keys.v1.Keys/Encrypt -d '{{\"key_id\":\"{key}\",\"plaintext\":\"{plaintext}\"}}' -c 64 -z 30s {addr}\n\
         \x20 ghz {ghz_tls} --call coffer.keys.v1.Keys/Decrypt -d '{{\"ciphertext_blob\":\"{blob}\"}}' -c 64 -z 30s {addr}\n",
        services = BUILT_SERVICES.join(", "),
        dir = layout.dir.display(),
        key = demo.key_id,
        blob = demo.ciphertext_base64,
    )
}

pub async fn run(dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let layout = prepare(dir, listen)?;
    let (environment, ignored) = dev_overrides(config::coffer_environment()?);
    for name in ignored {
        eprintln!("coffer dev ignores {name}: it sets that field itself");
    }
    let settings = config::load(Some(&layout.config()), environment)?;
    let _telemetry = telemetry::init(&settings.telemetry, "dev")?;
    let services: Vec<String> = BUILT_SERVICES
        .iter()
        .map(|name| (*name).to_owned())
        .collect();
    let instance = crate::launch(&settings, &services, Arc::new(SystemClock)).await?;
    let bound = instance
        .addr_of("keys")
        .context("the keys service did not start")?;
    let addr = dial_address(bound);
    let demo = bootstrap_demo(&layout, &addr)
        .await
        .context("creating the demo key")?;
    println!(
        "{}",
        instructions(&layout, &addr, &settings.location.region, &demo)
    );
    crate::cli::run_until_signalled(instance).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory whose name holds YAML's and URLs' special characters is
    /// written into the configuration as it is.
    #[tokio::test]
    async fn the_dev_configuration_holds_any_directory_name() -> anyhow::Result<()> {
        let parent = tempfile::tempdir()?;
        let directory = parent.path().join("a \"quoted\" \\ b\tc %41 ?x=1 #d");
        let layout = prepare(&directory, "127.0.0.1:0".parse()?)?;
        let settings = config::load(Some(&layout.config()), Vec::new())?;
        assert_eq!(settings.tls.cert_file, layout.cert(DEV_PROCESS_IDENTITY));
        assert!(
            matches!(&settings.root_key, coffer_crypto::RootKeySource::File(path) if *path == layout.root_key()),
            "{:?}",
            settings.root_key
        );
        // The services start on it: identity, root key and databases.
        let instance = crate::launch(
            &settings,
            &["keys".to_owned(), "audit".to_owned()],
            Arc::new(SystemClock),
        )
        .await?;
        instance.shutdown().await;
        assert!(layout.dir.join("keys.db").exists());
        assert!(layout.dir.join("audit.db").exists());
        Ok(())
    }

    /// Identities are issued again when the CA they were issued by is gone
    /// (its files removed and a new CA made), and only then.
    #[test]
    fn a_new_ca_issues_every_identity_again() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let listen = "127.0.0.1:0".parse()?;
        let layout = prepare(directory.path(), listen)?;
        let read = |name: &str| std::fs::read(layout.cert(name));
        let admin = read("admin")?;
        let server = read(DEV_PROCESS_IDENTITY)?;
        prepare(directory.path(), listen)?;
        assert_eq!(read("admin")?, admin, "the same CA: kept");
        std::fs::remove_file(layout.ca())?;
        std::fs::remove_file(layout.dir.join(pki::CA_KEY_FILE))?;
        prepare(directory.path(), listen)?;
        assert_ne!(read("admin")?, admin);
        assert_ne!(read(DEV_PROCESS_IDENTITY)?, server);
        // Issued by the new CA: the admin's certificate is accepted by a
        // client configuration built on it.
        ClientTls::from_files(
            &layout.ca(),
            Some((&layout.cert("admin"), &layout.key("admin"))),
        )?;
        Ok(())
    }

    /// A remembered demo key that can no longer encrypt (disabled since) is
    /// replaced, so `coffer dev` still starts.
    #[tokio::test]
    async fn a_demo_key_that_cannot_encrypt_is_replaced() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let layout = prepare(directory.path(), "127.0.0.1:0".parse()?)?;
        let settings = config::load(Some(&layout.config()), Vec::new())?;
        let instance = crate::launch(
            &settings,
            &["keys".to_owned(), "audit".to_owned()],
            Arc::new(SystemClock),
        )
        .await?;
        let addr = instance.addr_of("keys").context("keys")?.to_string();
        let first = bootstrap_demo(&layout, &addr).await?;
        assert_eq!(bootstrap_demo(&layout, &addr).await?.key_id, first.key_id);
        let tls = ClientTls::from_files(
            &layout.ca(),
            Some((&layout.cert("admin"), &layout.key("admin"))),
        )?;
        keys_pb::keys_client::KeysClient::new(tls.connect(&addr, "localhost").await?)
            .disable_key(keys_pb::DisableKeyRequest {
                key_id: first.key_id.clone(),
            })
            .await?;
        let second = bootstrap_demo(&layout, &addr).await?;
        assert_ne!(second.key_id, first.key_id);
        assert_eq!(
            std::fs::read_to_string(layout.dir.join(DEMO_KEY_FILE))?,
            second.key_id
        );
        instance.shutdown().await;
        Ok(())
    }

    /// Services on two addresses share one admin port, which answers for
    /// both of them.
    #[tokio::test]
    async fn the_admin_port_answers_for_every_server() -> anyhow::Result<()> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let directory = tempfile::tempdir()?;
        let layout = prepare(directory.path(), "127.0.0.1:0".parse()?)?;
        let environment = [
            ("COFFER_ADMIN_LISTEN", "127.0.0.1:0"),
            ("COFFER_SERVICES__AUDIT__LISTEN", "127.0.0.2:0"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        let settings = config::load(Some(&layout.config()), environment)?;
        let instance = crate::launch(
            &settings,
            &["keys".to_owned(), "audit".to_owned()],
            Arc::new(SystemClock),
        )
        .await?;
        assert_ne!(instance.addr_of("keys"), instance.addr_of("audit"));
        let admin = instance.admin_addr().context("no admin port")?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))?
            .connect()
            .await?;
        let mut health = HealthClient::new(channel);
        for service in ["", "coffer.keys.v1.Keys", "coffer.audit.v1.Audit"] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await?
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
        }
        instance.shutdown().await;
        Ok(())
    }

    /// The printed region is the one the services run in, `COFFER_REGION`
    /// included, not the one `coffer dev` writes into its file.
    #[test]
    fn the_instructions_name_the_region_in_use() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let layout = prepare(directory.path(), "127.0.0.1:0".parse()?)?;
        let (environment, _) = dev_overrides(vec![("COFFER_REGION".into(), "ap-south-2".into())]);
        let settings = config::load(Some(&layout.config()), environment)?;
        let demo = Demo {
            key_id: "k".into(),
            ciphertext_base64: "c".into(),
        };
        let text = instructions(&layout, "localhost:1", &settings.location.region, &demo);
        assert!(text.contains("(region ap-south-2, account"), "{text}");
        assert!(!text.contains(DEV_REGION), "{text}");
        Ok(())
    }

    #[test]
    fn dev_keeps_its_own_identity_whatever_the_shell_exported() {
        let variable = |name: &str| (name.to_owned(), "x".to_owned());
        let (kept, ignored) = dev_overrides(vec![
            variable("COFFER_TRUST_DOMAIN"),
            variable("COFFER_TLS__CA_FILE"),
            variable("COFFER_ROOT_KEY__FILE"),
            variable("COFFER_LIMITS__REQUEST_TIMEOUT_MS"),
            variable("COFFER_ROOT_KEY"),
            variable("COFFER_TLS"),
            variable("COFFER_tls__key_file"),
            variable("COFFER_ROOT_KEY_MATERIAL"),
        ]);
        assert_eq!(
            kept,
            vec![
                variable("COFFER_LIMITS__REQUEST_TIMEOUT_MS"),
                variable("COFFER_ROOT_KEY_MATERIAL"),
            ]
        );
        assert_eq!(
            ignored,
            [
                "COFFER_TRUST_DOMAIN",
                "COFFER_TLS__CA_FILE",
                "COFFER_ROOT_KEY__FILE",
                "COFFER_ROOT_KEY",
                "COFFER_TLS",
                "COFFER_tls__key_file",
            ]
        );
    }

    /// A dev identity is issued again when it was issued for other
    /// addresses or is near its end, and kept otherwise.
    #[test]
    fn dev_identities_follow_the_listen_address_and_renew() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let cert = |layout: &DevDir| std::fs::read_to_string(layout.cert("service-keys"));
        let layout = prepare(directory.path(), "127.0.0.1:8443".parse()?)?;
        let first = cert(&layout)?;
        let admin = std::fs::read_to_string(layout.cert("admin"))?;
        let layout = prepare(directory.path(), "127.0.0.1:8443".parse()?)?;
        assert_eq!(cert(&layout)?, first, "kept while it fits");

        let layout = prepare(directory.path(), "10.1.2.3:8443".parse()?)?;
        let moved = cert(&layout)?;
        assert_ne!(moved, first, "issued again for a new address");
        assert_eq!(std::fs::read_to_string(layout.cert("admin"))?, admin);

        let record = layout.dir.join("service-keys.issued");
        let text = std::fs::read_to_string(&record)?;
        let (_, issued_for) = text.split_once(' ').context("a record has a space")?;
        std::fs::write(&record, format!("1 {issued_for}"))?;
        let layout = prepare(directory.path(), "10.1.2.3:8443".parse()?)?;
        assert_ne!(cert(&layout)?, moved, "issued again near its end");
        Ok(())
    }
}
