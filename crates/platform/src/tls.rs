//! mTLS on rustls with the aws-lc-rs provider.
//!
//! [`ServerTls`] holds the server configuration built from three PEM files
//! (certificate chain, key, client CA bundle). Before every handshake it
//! compares the files' modification stamps with the ones it loaded and
//! rebuilds the configuration when they changed, so a rotated certificate or
//! CA takes effect on the next connection without a restart. A half-written
//! or mismatched set is refused and the previous configuration stays in use.
//!
//! [`tls_incoming`] turns a TCP listener into a stream of [`TlsConnection`]s
//! carrying the peer's [`PeerInfo`], which tonic hands to every request.

use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::config::TlsSettings;
use crate::identity::{IdentityError, Principal, principal_from_certificate};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most. A handshake needs no certificate to
/// start, so without a bound a flood of connections would hold a task (and
/// a file descriptor) each for [`HANDSHAKE_TIMEOUT`]; past it, accepting
/// waits and new connections queue in the kernel's backlog.
const MAX_HANDSHAKES: usize = 1024;
/// Handshakes in progress at most from one host (an IPv4 address, or an
/// IPv6 /64, which one host is routinely given) once the server is busy
/// with more than [`BUSY_HANDSHAKES`]: one host holding every slot would
/// keep every other client out. A connection past it is closed at once.
/// Below that, a host may have more, so that a load generator or a proxy
/// opening many connections at once is not refused by an idle server.
pub const MAX_HANDSHAKES_PER_HOST: usize = MAX_HANDSHAKES / 8;
pub const BUSY_HANDSHAKES: usize = MAX_HANDSHAKES / 4;

/// What is in progress (handshakes, connections), by host: once more than
/// `busy` are in all, a host may hold no more than `per_host` of them.
struct HostShares {
    counts: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
    busy: usize,
    per_host: usize,
}

/// One handshake or connection counted against its host while it lasts.
pub(crate) struct HostSlot {
    hosts: Arc<HostShares>,
    host: IpAddr,
}

impl HostShares {
    fn new(busy: usize, per_host: usize) -> Self {
        Self {
            counts: std::sync::Mutex::default(),
            busy,
            per_host,
        }
    }

    /// The host a peer address counts as.
    fn host_of(address: IpAddr) -> IpAddr {
        match address {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(std::net::Ipv6Addr::from(prefix))
                }
            },
            v4 => v4,
        }
    }

    /// A slot for something from `address`, while `in_progress` are (this
    /// one included); none when the server is busy and the host has its
    /// share.
    fn enter(self: &Arc<Self>, address: IpAddr, in_progress: usize) -> Option<HostSlot> {
        let host = Self::host_of(address);
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(host).or_insert(0);
        if in_progress > self.busy && *count >= self.per_host {
            return None;
        }
        *count += 1;
        Some(HostSlot {
            hosts: self.clone(),
            host,
        })
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut counts = self
            .hosts
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.host) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.host);
            }
        }
    }
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds no PEM {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(String),
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certificates_from_pem(path, &read_file(path)?)
}

/// The certificates in `bytes`, read from `path` (named in errors only).
pub(crate) fn certificates_from_pem(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certificates)
}

pub(crate) fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    private_key_from_pem(path, &read_file(path)?)
}

/// The private key in `bytes`, read from `path` (named in errors only).
pub(crate) fn private_key_from_pem(
    path: &Path,
    bytes: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|error| TlsError::Pem {
        path: path.to_owned(),
        message: format!("no usable private key ({error})"),
    })
}

pub(crate) fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    root_store_from_pem(path, &read_file(path)?)
}

/// A trust store of the certificates in `bytes`, read from `path`.
pub(crate) fn root_store_from_pem(path: &Path, bytes: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates_from_pem(path, bytes)? {
        roots
            .add(certificate)
            .map_err(|error| TlsError::Rustls(format!("{}: {error}", path.display())))?;
    }
    Ok(roots)
}

fn build_server_config(settings: &TlsSettings) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = Arc::new(root_store(&settings.ca_file)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|error| TlsError::Rustls(error.to_string()))?;
    let chain = read_certificates(&settings.cert_file)?;
    let key = read_private_key(&settings.key_file)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Rustls(error.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Rustls(error.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What identifies one version of a file on disk: modification time, size
/// and (on Unix) inode, so a file replaced by rename is always noticed.
pub(crate) type FileStamp = Option<(SystemTime, u64, u64)>;

pub(crate) fn stamp(path: &Path) -> FileStamp {
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Some((metadata.modified().ok()?, metadata.len(), inode))
}

/// A value built from three files (a TLS configuration), rebuilt when their
/// stamps change. A set that does not build is logged once and the previous
/// value kept; it is not tried again until a file changes again, or a broken
/// set would be re-read on every connection.
pub(crate) struct Reloading<T> {
    loaded: Mutex<([FileStamp; 3], T)>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the configuration: it holds a private key.
        formatter.write_str("Reloading")
    }
}

impl<T: Clone> Reloading<T> {
    pub(crate) fn new(stamps: [FileStamp; 3], value: T) -> Self {
        Self {
            loaded: Mutex::new((stamps, value)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ([FileStamp; 3], T)> {
        self.loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value, rebuilt first by `build` when `stamps` differ from the
    /// last ones seen; `file` names the set in the log.
    pub(crate) fn current(
        &self,
        stamps: [FileStamp; 3],
        file: &Path,
        build: impl FnOnce() -> Result<T, TlsError>,
    ) -> T {
        let mut loaded = self.lock();
        if loaded.0 != stamps {
            loaded.0 = stamps;
            match build() {
                Ok(value) => {
                    loaded.1 = value;
                    tracing::info!(file = %file.display(), "reloaded tls certificates");
                }
                Err(error) => {
                    tracing::error!(%error, file = %file.display(), "tls files changed but do not load; keeping the previous certificates");
                }
            }
        }
        loaded.1.clone()
    }

    /// The value as it is, for one built from no files.
    pub(crate) fn unchanged(&self) -> T {
        self.lock().1.clone()
    }
}

/// The server side of mTLS, reloading its files when they change.
pub struct ServerTls {
    settings: TlsSettings,
    acceptor: Reloading<TlsAcceptor>,
}

impl ServerTls {
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let stamps = Self::stamps_of(&settings);
        let acceptor = TlsAcceptor::from(Arc::new(build_server_config(&settings)?));
        Ok(Self {
            settings,
            acceptor: Reloading::new(stamps, acceptor),
        })
    }

    fn stamps_of(settings: &TlsSettings) -> [FileStamp; 3] {
        [
            stamp(&settings.cert_file),
            stamp(&settings.key_file),
            stamp(&settings.ca_file),
        ]
    }

    /// The acceptor for the next handshake, rebuilt first if a file changed.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.current(
            Self::stamps_of(&self.settings),
            &self.settings.cert_file,
            || {
                build_server_config(&self.settings)
                    .map(|config| TlsAcceptor::from(Arc::new(config)))
            },
        )
    }
}

/// Who is on the other end of a connection. The identity is parsed once per
/// connection; a certificate that verified but names no valid SPIFFE id is
/// kept as an error so each call can be refused with UNAUTHENTICATED.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
    pub identity: Result<Arc<Principal>, IdentityError>,
    /// When the client certificate stops being valid (Unix seconds). The
    /// handshake checked it once; every call checks it again, so a
    /// long-lived connection does not outlive its certificate.
    pub not_after: Option<i64>,
    /// When the server asks the connection to go away (its
    /// `limits.max_connection_age` from the handshake): a stream that would
    /// otherwise stay open (`Subscribe`) ends then, so the connection does.
    pub reconnect_by: Option<tokio::time::Instant>,
}

impl PeerInfo {
    /// Whether the client certificate has stopped being valid since the
    /// handshake checked it.
    pub fn certificate_expired(&self) -> bool {
        let now_seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs().cast_signed());
        self.not_after
            .is_some_and(|not_after| now_seconds > not_after)
    }
}

/// A server-side TLS connection and its peer.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: PeerInfo,
    /// When the connection is closed, whatever is still open on it: a while
    /// after the server asked it to go away ([`PeerInfo::reconnect_by`]),
    /// for a client that keeps a stream from ending (by never reading its
    /// answer, say). tonic cannot both ask a connection to go away and close
    /// it later: given a grace, it closes the connection at the age and the
    /// grace without asking first. Polled outside the task's budget: a
    /// read or write must not yield for its sake.
    close_at: Pin<Box<tokio::task::Unconstrained<tokio::time::Sleep>>>,
    /// Set once `close_at` has passed: every read and write fails.
    closed: bool,
}

impl TlsConnection {
    /// Whether `close_at` has passed; if not, the task is woken when it
    /// does. Checked by every read, write and flush, so that the connection
    /// is closed then whichever it is waiting on (a client that stops
    /// reading may leave it waiting to write).
    fn expired(&mut self, context: &mut Context<'_>) -> bool {
        if !self.closed {
            self.closed = self.close_at.as_mut().poll(context).is_ready();
        }
        self.closed
    }

    fn outlived() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the connection outlived its maximum age and grace",
        )
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(context) {
            return Poll::Ready(Err(Self::outlived()));
        }
        Pin::new(&mut self.stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.expired(context) {
            return Poll::Ready(Err(Self::outlived()));
        }
        Pin::new(&mut self.stream).poll_write(context, buffer)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.expired(context) {
            return Poll::Ready(Err(Self::outlived()));
        }
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.expired(context) {
            return Poll::Ready(Err(Self::outlived()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections, completes each TLS handshake on its own task, and
/// yields the ones that succeed, each to be asked to go away after
/// `max_connection_age` and closed `close_grace` after that. Stops when the
/// returned stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    trust_domain: String,
    max_connection_age: std::time::Duration,
    close_grace: std::time::Duration,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let trust_domain: Arc<str> = Arc::from(trust_domain);
    bounded_incoming(listener, "handshakes", move |tcp, remote_addr| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let acceptor = tls.acceptor();
        let trust_domain = trust_domain.clone();
        async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::info!(%remote_addr, %error, "tls handshake refused");
                    return None;
                }
                Err(_) => {
                    tracing::info!(%remote_addr, "tls handshake timed out");
                    return None;
                }
            };
            let certified = match stream.get_ref().1.peer_certificates() {
                Some([leaf, ..]) => principal_from_certificate(leaf, &trust_domain),
                _ => Err(IdentityError::NoCertificate),
            };
            let (identity, not_after) = match certified {
                Ok(certified) => (Ok(Arc::new(certified.principal)), Some(certified.not_after)),
                Err(error) => (Err(error), None),
            };
            let reconnect_by = tokio::time::Instant::now() + max_connection_age;
            Some(TlsConnection {
                stream,
                peer: PeerInfo {
                    remote_addr,
                    identity,
                    not_after,
                    reconnect_by: Some(reconnect_by),
                },
                close_at: Box::pin(tokio::task::unconstrained(tokio::time::sleep_until(
                    reconnect_by + close_grace,
                ))),
                closed: false,
            })
        }
    })
}

/// The connections open on a port: at most `max`, and once more than
/// `busy` are, at most `per_host` from one host, so that one host's
/// connections cannot keep another's out (the kubelet's probes, on the
/// admin port). Clones count the same connections.
#[derive(Clone)]
pub(crate) struct LiveConnections {
    open: Arc<tokio::sync::Semaphore>,
    max: usize,
    hosts: Arc<HostShares>,
}

impl LiveConnections {
    pub(crate) fn new(max: usize, busy: usize, per_host: usize) -> Self {
        Self {
            open: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            hosts: Arc::new(HostShares::new(busy, per_host)),
        }
    }

    /// `io`, from `address`, counted while it is open; `None` (and it is
    /// closed) when the port has its most, or is busy and the host has its
    /// share.
    pub(crate) fn count<T>(&self, io: T, address: IpAddr) -> Option<Counted<T>> {
        let permit = self.open.clone().try_acquire_owned().ok()?;
        let open = self.max - self.open.available_permits();
        let slot = self.hosts.enter(address, open)?;
        Some(Counted {
            io,
            _counted: (permit, slot),
        })
    }
}

/// A connection counted by [`LiveConnections`] while it is open.
pub(crate) struct Counted<T> {
    io: T,
    _counted: (tokio::sync::OwnedSemaphorePermit, HostSlot),
}

impl<T: Connected> Connected for Counted<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(context, buffer)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(context, buffer)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(context)
    }
}

/// Accepts TCP connections and has `admit` make each into a connection to
/// serve (or refuse it with `None`), each on a task of its own. While
/// [`MAX_HANDSHAKES`] are being admitted, accepting waits (new connections
/// queue in the kernel's backlog); once more than [`BUSY_HANDSHAKES`] are, a
/// host that has [`MAX_HANDSHAKES_PER_HOST`] of them has its next connection
/// closed at once. `what` names the admissions in logs. Stops when the
/// returned stream is dropped.
pub(crate) fn bounded_incoming<T, Admit, Admitted>(
    listener: TcpListener,
    what: &'static str,
    admit: Admit,
) -> ReceiverStream<Result<T, io::Error>>
where
    T: Send + 'static,
    Admit: Fn(TcpStream, SocketAddr) -> Admitted + Send + 'static,
    Admitted: std::future::Future<Output = Option<T>> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(256);
    let admitting = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let hosts = Arc::new(HostShares::new(BUSY_HANDSHAKES, MAX_HANDSHAKES_PER_HOST));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                () = sender.closed() => break,
                permit = admitting.clone().acquire_owned() => permit,
            };
            let Ok(permit) = permit else { break };
            let accepted = tokio::select! {
                () = sender.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let in_progress = MAX_HANDSHAKES - admitting.available_permits();
            let Some(host_slot) = hosts.enter(remote_addr.ip(), in_progress) else {
                tracing::debug!(%remote_addr, what, "too many in progress from this host; connection closed");
                continue;
            };
            let admitted = admit(tcp, remote_addr);
            let sender = sender.clone();
            tokio::spawn(async move {
                let admitted = admitted.await;
                drop((permit, host_slot));
                if let Some(connection) = admitted {
                    // The receiver is gone only when the server stopped.
                    let _server_stopped = sender.send(Ok(connection)).await;
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
