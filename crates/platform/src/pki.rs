//! A small certificate authority for operators, `coffer dev` and tests:
//! `init` makes a CA directory, `issue` mints an identity (a SPIFFE URI SAN,
//! optionally DNS names and IP addresses) signed by it. Keys are ECDSA P-256;
//! private keys are written with mode 0600.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// How long an issued identity is valid.
pub const IDENTITY_DAYS: u64 = 365;

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already holds a CA; refusing to overwrite it")]
    AlreadyExists(PathBuf),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0:?} is not a SPIFFE id (spiffe://trust-domain/path)")]
    SpiffeId(String),
    #[error(
        "{id:?} is not an identity Coffer accepts: {reason} (a lowercase trust domain, then /account/{{12 digits}}/user|role/{{name}} or /service/{{keys,secrets,parameters,certificates,audit}})"
    )]
    NotACofferIdentity { id: String, reason: String },
    #[error(
        "{0:?} cannot name an identity's files: use letters, digits, '.', '_' and '-', not starting with '.', and not \"ca\" (the CA's own files)"
    )]
    Name(String),
    #[error("{0} already exists; pass --force to replace it")]
    IdentityExists(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` whole: into a staging file beside it, made
/// anew under a name of its own (a private one readable by its owner only,
/// whatever was there before, and never through a link planted in its
/// place), synced, then renamed over `path` and the directory synced, so a
/// reader never sees half a file and a power loss never leaves an empty
/// one. Two writers of the same file each rename a whole one.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .ok_or_else(|| PkiError::Name(path.display().to_string()))?;
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(format!(".{}.staging", uuid::Uuid::new_v4().simple()));
    let staging = path.with_file_name(staging_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&staging).map_err(io_error(&staging))?;
    let written = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&staging);
        return Err(io_error(path)(error));
    }
    // Some file systems cannot sync a directory: the file is whole either
    // way.
    let _ = crate::sync_directory_of(path);
    Ok(())
}

/// Valid from an hour ago (some clock skew) until `not_after`.
fn validity(params: &mut CertificateParams, not_after: std::time::SystemTime) {
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::from(not_after);
}

fn days_from_now(days: u64) -> std::time::SystemTime {
    std::time::SystemTime::now() + std::time::Duration::from_secs(days * 24 * 60 * 60)
}

/// Creates `dir/ca.pem` and `dir/ca-key.pem`.
pub fn init_ca(dir: &Path, trust_domain: &str) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let cert_path = dir.join(CA_CERT_FILE);
    if cert_path.exists() {
        return Err(PkiError::AlreadyExists(dir.to_owned()));
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Coffer");
    name.push(DnType::CommonName, format!("Coffer CA ({trust_domain})"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days_from_now(3650));
    let key = KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    write_file(&dir.join(CA_KEY_FILE), &key.serialize_pem(), true)?;
    write_file(&cert_path, &certificate.pem(), false)
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct IssuedIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedIdentity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("IssuedIdentity")
            .finish_non_exhaustive()
    }
}

/// A loaded CA that can issue identities.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_error(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self { issuer, cert_pem })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A one-year certificate for `spiffe_id`, usable as client and server.
    pub fn issue(
        &self,
        spiffe_id: &str,
        dns_names: &[String],
        ip_addresses: &[IpAddr],
    ) -> Result<IssuedIdentity, PkiError> {
        self.issue_until(
            spiffe_id,
            dns_names,
            ip_addresses,
            days_from_now(IDENTITY_DAYS),
        )
    }

    /// As [`Self::issue`], valid until `not_after` (short-lived
    /// certificates, as a SPIFFE workload API hands out).
    pub fn issue_until(
        &self,
        spiffe_id: &str,
        dns_names: &[String],
        ip_addresses: &[IpAddr],
        not_after: std::time::SystemTime,
    ) -> Result<IssuedIdentity, PkiError> {
        let Some((_, path)) = domain_and_path(spiffe_id) else {
            return Err(PkiError::SpiffeId(spiffe_id.to_owned()));
        };
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        params.subject_alt_names.push(SanType::URI(
            spiffe_id
                .try_into()
                .map_err(|_| PkiError::SpiffeId(spiffe_id.to_owned()))?,
        ));
        params
            .subject_alt_names
            .extend(ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Coffer");
        name.push(
            DnType::CommonName,
            spiffe_id.rsplit('/').next().unwrap_or(spiffe_id),
        );
        params.distinguished_name = name;
        // A leaf, as SPIFFE's X509-SVID requires it to say; only a service
        // is a server, so no user's or role's certificate can stand in for
        // one, whatever names it is issued for.
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if path.starts_with("service/") {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, not_after);
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedIdentity {
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A SPIFFE id's trust domain and path, when it has both.
fn domain_and_path(spiffe_id: &str) -> Option<(&str, &str)> {
    spiffe_id
        .strip_prefix("spiffe://")?
        .split_once('/')
        .filter(|(domain, path)| !domain.is_empty() && !path.is_empty())
}

/// Refuses a SPIFFE id no Coffer server would take as a caller (`coffer pki
/// issue` checks before it issues): a trust domain that is not lowercase,
/// or a path that is not an account's user or role or a Coffer service.
pub fn check_coffer_identity(spiffe_id: &str) -> Result<(), PkiError> {
    let refused = |reason: &str| PkiError::NotACofferIdentity {
        id: spiffe_id.to_owned(),
        reason: reason.to_owned(),
    };
    let (domain, _) =
        domain_and_path(spiffe_id).ok_or_else(|| PkiError::SpiffeId(spiffe_id.to_owned()))?;
    // As a server's `trust_domain` must be.
    if !crate::config::is_dns_like(domain) {
        return Err(refused(
            "a trust domain is lowercase DNS labels separated by dots",
        ));
    }
    crate::identity::principal_from_spiffe_id(spiffe_id, domain)
        .map(drop)
        .map_err(|error| refused(&error.to_string()))
}

/// The paths of identity `name`'s files in `dir`: `{name}-cert.pem` and
/// `{name}-key.pem`. A name that would leave `dir` or reach the CA's own
/// key (`ca-key.pem`) is refused.
pub fn identity_paths(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        // Any case: on a case-insensitive file system `CA-key.pem` is the
        // CA's key.
        && !name.eq_ignore_ascii_case("ca")
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
    if !valid {
        return Err(PkiError::Name(name.to_owned()));
    }
    Ok((
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    ))
}

/// Writes `dir/{name}-cert.pem` and `dir/{name}-key.pem`; returns their
/// paths. Existing files are replaced only when `replace` is true, each by
/// a rename, so a server reloading them never reads half a file.
pub fn write_identity(
    dir: &Path,
    name: &str,
    identity: &IssuedIdentity,
    replace: bool,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let (cert_path, key_path) = identity_paths(dir, name)?;
    if !replace
        && let Some(existing) = [&cert_path, &key_path]
            .into_iter()
            .find(|path| path.exists())
    {
        return Err(PkiError::IdentityExists(existing.clone()));
    }
    write_file(&key_path, &identity.key_pem, true)?;
    write_file(&cert_path, &identity.cert_pem, false)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_identities_coffer_accepts_are_issued_by_the_command() {
        for good in [
            "spiffe://coffer.local/account/444455556666/user/bob",
            "spiffe://coffer.local/account/444455556666/role/app-1",
            "spiffe://example.org/service/keys",
        ] {
            assert!(check_coffer_identity(good).is_ok(), "{good}");
        }
        for bad in [
            "spiffe://coffer.local/account/4444/user/bob",
            "spiffe://Coffer.Local/account/444455556666/user/bob",
            "spiffe://coffer.local/service/kms",
            "spiffe://coffer.local/account/444455556666/user/a?b",
            "spiffe://coffer.local/account/444455556666/group/admins",
        ] {
            assert!(
                matches!(
                    check_coffer_identity(bad),
                    Err(PkiError::NotACofferIdentity { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            check_coffer_identity("https://coffer.local/service/keys"),
            Err(PkiError::SpiffeId(_))
        ));
    }

    /// Every certificate issued is a leaf; only a service's may serve.
    #[test]
    fn users_certificates_are_leaves_for_clients_only() -> Result<(), Box<dyn std::error::Error>> {
        use rustls_pki_types::pem::PemObject as _;
        let directory = tempfile::tempdir()?;
        init_ca(directory.path(), "coffer.test")?;
        let authority = Authority::load(directory.path())?;
        for (id, serves) in [
            ("spiffe://coffer.test/account/111122223333/user/bob", false),
            ("spiffe://coffer.test/account/111122223333/role/app", false),
            ("spiffe://coffer.test/service/keys", true),
        ] {
            let issued = authority.issue(id, &["localhost".to_owned()], &[])?;
            let der = rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())?;
            let (_, certificate) = x509_parser::parse_x509_certificate(&der)?;
            let constraints = certificate
                .basic_constraints()?
                .ok_or("no basicConstraints")?;
            assert!(!constraints.value.ca, "{id}");
            let usage = certificate
                .extended_key_usage()?
                .ok_or("no extendedKeyUsage")?;
            assert!(usage.value.client_auth, "{id}");
            assert_eq!(usage.value.server_auth, serves, "{id}");
        }
        Ok(())
    }

    /// A private key is written to a file of its own, readable by its owner
    /// only, whatever was at its path before: neither a readable leftover
    /// nor a link to somewhere else gets the key.
    #[cfg(unix)]
    #[test]
    fn keys_replace_what_was_at_their_path_and_are_private()
    -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir()?;
        let elsewhere = tempfile::tempdir()?;
        let decoy = elsewhere.path().join("decoy");
        std::fs::write(&decoy, "untouched")?;
        std::os::unix::fs::symlink(&decoy, directory.path().join(CA_KEY_FILE))?;
        init_ca(directory.path(), "coffer.test")?;
        assert_eq!(std::fs::read_to_string(&decoy)?, "untouched");
        let key = directory.path().join(CA_KEY_FILE);
        let metadata = std::fs::symlink_metadata(&key)?;
        assert!(metadata.is_file(), "the key went through the link");
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);

        let readable = directory.path().join("server-key.pem");
        std::fs::write(&readable, "left over")?;
        std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644))?;
        let identity = Authority::load(directory.path())?.issue(
            "spiffe://coffer.test/service/keys",
            &[],
            &[],
        )?;
        write_identity(directory.path(), "server", &identity, true)?;
        assert_eq!(std::fs::read_to_string(&readable)?, identity.key_pem);
        assert_eq!(
            std::fs::metadata(&readable)?.permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<String> = std::fs::read_dir(directory.path())?
            .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        assert!(
            names.iter().all(|name| !name.ends_with(".staging")),
            "{names:?}"
        );
        Ok(())
    }

    #[test]
    fn identity_files_stay_in_the_directory_and_off_the_ca()
    -> Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        init_ca(directory.path(), "coffer.test")?;
        let ca_key = std::fs::read(directory.path().join(CA_KEY_FILE))?;
        let authority = Authority::load(directory.path())?;
        let identity = authority.issue("spiffe://coffer.test/service/keys", &[], &[])?;
        for name in ["ca", "CA", "Ca", "", ".hidden", "../outside", "a/b", "a b"] {
            assert!(
                matches!(
                    write_identity(directory.path(), name, &identity, true),
                    Err(PkiError::Name(_))
                ),
                "{name:?}"
            );
        }
        assert_eq!(
            std::fs::read(directory.path().join(CA_KEY_FILE))?,
            ca_key,
            "the CA's key is untouched"
        );

        let (cert, key) = write_identity(directory.path(), "server", &identity, false)?;
        assert_eq!(std::fs::read_to_string(&key)?, identity.key_pem);
        // Not replaced unless asked to, then replaced whole.
        let renewed = authority.issue("spiffe://coffer.test/service/keys", &[], &[])?;
        assert!(matches!(
            write_identity(directory.path(), "server", &renewed, false),
            Err(PkiError::IdentityExists(path)) if path == cert
        ));
        assert_eq!(std::fs::read_to_string(&cert)?, identity.cert_pem);
        write_identity(directory.path(), "server", &renewed, true)?;
        assert_eq!(std::fs::read_to_string(&cert)?, renewed.cert_pem);
        assert_eq!(std::fs::read_to_string(&key)?, renewed.key_pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
        }
        Ok(())
    }
}
