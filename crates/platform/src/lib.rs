//! The runtime every Coffer service shares.
//!
//! - [`config`]: one YAML file + `COFFER_*` environment overrides, validated
//!   into typed settings before any I/O.
//! - [`tls`] and [`identity`]: the mTLS listener whose certificates reload from
//!   disk, and the SPIFFE identity of every caller.
//! - [`call`]: the layer every API call passes through: identity, forwarded
//!   identity, trace context, deadline, load shedding and its one audit event.
//! - [`server`]: health, reflection, limits and graceful shutdown around a set
//!   of services; [`client`]: mTLS channels between services.
//! - [`background`]: scheduled work that starts again after a panic.
//! - [`error`], [`db`], [`telemetry`], [`audit`], [`pki`], [`arn`].

pub mod arn;
pub mod audit;
pub mod authz;
pub mod background;
pub mod call;
pub mod client;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod identity;
pub mod pki;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod trace;

/// The services Coffer is made of, by their short name.
pub const SERVICE_NAMES: &[&str] = &["keys", "secrets", "parameters", "certificates", "audit"];

/// Installs aws-lc-rs as rustls' process-wide crypto provider. Idempotent.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _already_installed = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The IAM prefix of a service by its short name (keys → kms, …), used in
/// ARNs, action names and event sources.
pub fn service_prefix(service_name: &str) -> &'static str {
    match service_name {
        "keys" => "kms",
        "secrets" => "secretsmanager",
        "parameters" => "ssm",
        "certificates" => "acm",
        "audit" => "cloudtrail",
        _ => "coffer",
    }
}

/// Random bytes for identifiers (request, event, trace and span ids) from
/// aws-lc's userspace DRBG: no system call per id.
pub fn random_id_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // The DRBG does not fail once seeded; fall back to the OS if it ever does.
        let fallback = uuid::Uuid::new_v4();
        for (slot, byte) in bytes.iter_mut().zip(fallback.as_bytes().iter().cycle()) {
            *slot = *byte;
        }
    }
    bytes
}

/// Lowercase hex without a formatter call per byte.
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// The largest index at most `at` that falls on a character boundary of
/// `text` (its length when `at` is past it): where to cut text to a byte
/// limit. `str::floor_char_boundary`, which needs a newer Rust than ours.
pub fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Syncs the directory that holds `path`, so a file created or renamed
/// there survives a power loss. Does nothing where directories cannot be
/// opened to be synced (not Unix).
pub fn sync_directory_of(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let directory = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        std::fs::File::open(directory)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// What a list marker or a lookup token is bound to: a 64-bit FNV-1a hash
/// of the request parameters it was issued for, each part ended by a byte
/// no UTF-8 text holds (so `["ab", "c"]` and `["a", "bc"]` differ). It is the
/// same in every process and release, which std's hasher does not promise.
/// It tells a token used with other parameters apart; it is no defence
/// against forgery, and needs none (a forged token only pages differently).
pub fn scope_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}
