//! mTLS channels from one Coffer service to another (and from tools and
//! tests to Coffer). A service presents its own certificate and forwards the
//! caller it acts for, plus the trace context, in metadata; the callee trusts
//! the forwarded caller only because the peer certificate is a service's.
//!
//! A [`ClientTls`] made from files compares the files' stamps with the ones
//! it loaded before every new connection, as the server side does, so a
//! long-lived channel (the audit exporter's) presents a rotated certificate
//! when it reconnects instead of the one it started with.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::call::{CallContext, FORWARDED_FOR_HEADER, FORWARDED_SOURCE_IP_HEADER};
use crate::identity::principal_from_certificate;
use crate::tls::{
    FileStamp, Reloading, TlsError, read_certificates, read_file, read_private_key, stamp,
};
use crate::trace::TRACEPARENT_HEADER;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid endpoint {endpoint}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
}

/// Where a client's certificates come from.
#[derive(Debug, Clone)]
struct ClientFiles {
    ca_file: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    /// When set, the server must be a Coffer service of this trust domain.
    service_of: Option<String>,
}

impl ClientFiles {
    fn stamps(&self) -> [FileStamp; 3] {
        let (cert, key) = match &self.identity {
            Some((cert_file, key_file)) => (stamp(cert_file), stamp(key_file)),
            None => (None, None),
        };
        [stamp(&self.ca_file), cert, key]
    }

    fn load(&self) -> Result<rustls::ClientConfig, TlsError> {
        let ca = read_file(&self.ca_file)?;
        let identity = match &self.identity {
            Some((cert_file, key_file)) => {
                Some((read_certificates(cert_file)?, read_private_key(key_file)?))
            }
            None => None,
        };
        client_config(&self.ca_file, &ca, identity, self.service_of.as_deref())
    }
}

fn client_config(
    ca_source: &Path,
    ca_pem: &[u8],
    identity: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
    service_of: Option<&str>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = crate::tls::root_store_from_pem(ca_source, ca_pem)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Rustls(error.to_string()))?;
    let builder = match service_of {
        Some(trust_domain) => {
            let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| TlsError::Rustls(error.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ServiceVerifier {
                    chain,
                    trust_domain: trust_domain.to_owned(),
                }))
        }
        None => builder.with_root_certificates(roots),
    };
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|error| TlsError::Rustls(error.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The server check of a service calling another: the certificate must
/// chain to the CA and name the host, as for any client, and also name a
/// Coffer service of the trust domain by its SPIFFE id. The CA issues
/// certificates to users and roles too, and any of them may name any host;
/// without this check, whoever holds one and can redirect a service's
/// traffic would receive what the service sends (the audit trail).
#[derive(Debug)]
struct ServiceVerifier {
    chain: Arc<WebPkiServerVerifier>,
    trust_domain: String,
}

/// Why a server was refused by [`ServiceVerifier`].
#[derive(Error)]
#[error("the server's certificate does not name a Coffer service of {trust_domain}: {reason}")]
struct NotAService {
    trust_domain: String,
    reason: String,
}

/// rustls shows the error in its own text by `Debug`: the sentence.
impl std::fmt::Debug for NotAService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, formatter)
    }
}

impl ServerCertVerifier for ServiceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let reason = match principal_from_certificate(end_entity, &self.trust_domain) {
            Ok(certified) if certified.principal.is_service() => return Ok(verified),
            Ok(certified) => format!("it names {}", certified.principal.spiffe_id()),
            Err(error) => error.to_string(),
        };
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotAService {
                trust_domain: self.trust_domain.clone(),
                reason,
            }))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain
            .verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct Source {
    /// `None` for a client made from PEM given in memory: nothing to reload.
    files: Option<ClientFiles>,
    config: Reloading<Arc<rustls::ClientConfig>>,
}

/// The TLS side of a client: the CA it trusts and, normally, the identity it
/// presents.
#[derive(Debug, Clone)]
pub struct ClientTls {
    source: Arc<Source>,
}

impl ClientTls {
    /// Trust `ca_file`; present `cert_file` + `key_file` when given. The
    /// files are read again for a new connection after they change.
    pub fn from_files(
        ca_file: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Self, ClientError> {
        Self::from_files_checked(ca_file, identity, None)
    }

    /// As [`Self::from_files`], for a service calling another: the server
    /// must also present a Coffer service's certificate of `trust_domain`
    /// (`spiffe://{trust_domain}/service/{name}`), not a user's or role's.
    pub fn service_from_files(
        ca_file: &Path,
        identity: (&Path, &Path),
        trust_domain: &str,
    ) -> Result<Self, ClientError> {
        Self::from_files_checked(ca_file, Some(identity), Some(trust_domain))
    }

    fn from_files_checked(
        ca_file: &Path,
        identity: Option<(&Path, &Path)>,
        service_of: Option<&str>,
    ) -> Result<Self, ClientError> {
        let files = ClientFiles {
            ca_file: ca_file.to_owned(),
            identity: identity.map(|(cert, key)| (cert.to_owned(), key.to_owned())),
            service_of: service_of.map(str::to_owned),
        };
        let stamps = files.stamps();
        let config = Arc::new(files.load()?);
        Ok(Self::with_source(Some(files), stamps, config))
    }

    /// Trust `ca_pem`; present the PEM certificate chain and key when given.
    pub fn from_pem(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Self, ClientError> {
        Self::from_pem_checked(ca_pem, identity, None)
    }

    /// As [`Self::service_from_files`], from PEM given in memory.
    pub fn service_from_pem(
        ca_pem: &[u8],
        identity: (&[u8], &[u8]),
        trust_domain: &str,
    ) -> Result<Self, ClientError> {
        Self::from_pem_checked(ca_pem, Some(identity), Some(trust_domain))
    }

    fn from_pem_checked(
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
        service_of: Option<&str>,
    ) -> Result<Self, ClientError> {
        let source = Path::new("the CA certificate given");
        let identity = match identity {
            Some((cert_pem, key_pem)) => Some((
                crate::tls::certificates_from_pem(Path::new("the certificate given"), cert_pem)?,
                crate::tls::private_key_from_pem(Path::new("the key given"), key_pem)?,
            )),
            None => None,
        };
        let config = Arc::new(client_config(source, ca_pem, identity, service_of)?);
        Ok(Self::with_source(None, [None, None, None], config))
    }

    fn with_source(
        files: Option<ClientFiles>,
        stamps: [FileStamp; 3],
        config: Arc<rustls::ClientConfig>,
    ) -> Self {
        Self {
            source: Arc::new(Source {
                files,
                config: Reloading::new(stamps, config),
            }),
        }
    }

    /// The configuration for the next handshake, reloaded first if a file
    /// changed (as on the server side).
    fn current(&self) -> Arc<rustls::ClientConfig> {
        match &self.source.files {
            Some(files) => self
                .source
                .config
                .current(files.stamps(), &files.ca_file, || {
                    files.load().map(Arc::new)
                }),
            None => self.source.config.unchanged(),
        }
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, ClientError> {
        // The connector below does TLS itself; to tonic the connection is
        // plain HTTP/2.
        let endpoint_text = format!("http://{addr}");
        let endpoint = Endpoint::from_shared(endpoint_text.clone()).map_err(|error| {
            ClientError::Endpoint {
                endpoint: format!("https://{addr}"),
                message: error.to_string(),
            }
        })?;
        if endpoint.uri().port_u16().is_none() {
            return Err(ClientError::Endpoint {
                endpoint: format!("https://{addr}"),
                message: "no port".into(),
            });
        }
        Ok(endpoint)
    }

    fn connector(&self, server_name: &str, addr: &str) -> Result<TlsConnect, ClientError> {
        let server_name = ServerName::try_from(server_name.to_owned()).map_err(|error| {
            ClientError::Endpoint {
                endpoint: format!("https://{addr}"),
                message: format!("server name {server_name}: {error}"),
            }
        })?;
        Ok(TlsConnect {
            tls: self.clone(),
            server_name,
        })
    }

    /// Connects to `https://{addr}` verifying the server as `server_name`.
    pub async fn connect(&self, addr: &str, server_name: &str) -> Result<Channel, ClientError> {
        self.endpoint(addr)?
            .connect_with_connector(self.connector(server_name, addr)?)
            .await
            .map_err(|error| ClientError::Connect {
                endpoint: format!("https://{addr}"),
                message: error_chain(&error),
            })
    }

    /// A channel to `https://{addr}` that connects on first use and
    /// reconnects by itself after a failure.
    pub fn connect_lazy(
        &self,
        addr: &str,
        server_name: &str,
        timeout: std::time::Duration,
    ) -> Result<Channel, ClientError> {
        let connector = self.connector(server_name, addr)?;
        // Exports of a few hundred events are hundreds of KiB: windows that
        // hold a whole one save flow-control round trips per export.
        Ok(self
            .endpoint(addr)?
            .connect_timeout(timeout)
            .timeout(timeout)
            .initial_stream_window_size(Some(4 * 1024 * 1024))
            .initial_connection_window_size(Some(8 * 1024 * 1024))
            .connect_with_connector_lazy(connector))
    }
}

/// Opens TCP to the channel's authority and runs the TLS handshake with the
/// client's current configuration, insisting on HTTP/2 by ALPN.
#[derive(Clone)]
struct TlsConnect {
    tls: ClientTls,
    server_name: ServerName<'static>,
}

impl tower::Service<Uri> for TlsConnect {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.current();
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
            let tcp = TcpStream::connect(authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(config).connect(server_name, tcp).await?;
            // As tonic's own connector: a server that does not agree to h2
            // by ALPN is refused here, not later with an unclear error.
            match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Ok(TokioIo::new(stream)),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server did not agree to HTTP/2 (ALPN h2)",
                )),
            }
        })
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Adds the forwarded caller and the trace context of `context` to every
/// request made on its behalf.
#[derive(Debug, Clone)]
pub struct ForwardCaller {
    forwarded_for: String,
    source_ip: String,
    traceparent: String,
}

impl ForwardCaller {
    pub fn new(context: &CallContext) -> Self {
        Self {
            forwarded_for: context.principal().spiffe_id().to_owned(),
            source_ip: context.source_ip().to_string(),
            traceparent: context.trace().traceparent(),
        }
    }
}

impl Interceptor for ForwardCaller {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        for (name, value) in [
            (FORWARDED_FOR_HEADER, &self.forwarded_for),
            (FORWARDED_SOURCE_IP_HEADER, &self.source_ip),
            (TRACEPARENT_HEADER, &self.traceparent),
        ] {
            let value: MetadataValue<_> = value.parse().map_err(|_| {
                tonic::Status::internal("forwarded metadata is not a valid header value")
            })?;
            metadata.insert(name, value);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::principal_from_spiffe_id;
    use crate::pki::{Authority, IssuedIdentity};
    use crate::trace::TraceContext;

    const TD: &str = "coffer.test";

    /// A loopback TLS server (h2 by ALPN) presenting `identity`; `host:port`.
    async fn serve_tls(identity: &IssuedIdentity) -> Result<String, Box<dyn std::error::Error>> {
        let chain =
            crate::tls::certificates_from_pem(Path::new("cert"), identity.cert_pem.as_bytes())?;
        let key = crate::tls::private_key_from_pem(Path::new("key"), identity.key_pem.as_bytes())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let stream = acceptor.accept(tcp).await;
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    drop(stream);
                });
            }
        });
        Ok(addr)
    }

    /// Runs the client's TLS handshake with `addr` as `localhost`.
    async fn handshake(tls: &ClientTls, addr: &str) -> Result<(), String> {
        let mut connect = tls
            .connector("localhost", addr)
            .map_err(|error| error.to_string())?;
        let uri: Uri = format!("http://{addr}")
            .parse()
            .map_err(|error: http::uri::InvalidUri| error.to_string())?;
        tower::Service::call(&mut connect, uri)
            .await
            .map(drop)
            .map_err(|error| error.to_string())
    }

    #[tokio::test]
    async fn a_service_client_takes_only_a_services_certificate()
    -> Result<(), Box<dyn std::error::Error>> {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir()?;
        crate::pki::init_ca(dir.path(), TD)?;
        let authority = Authority::load(dir.path())?;
        let localhost = ["localhost".to_owned()];
        let issue = |spiffe_id: &str| authority.issue(spiffe_id, &localhost, &[]);
        let ca = authority.cert_pem().as_bytes();
        let client = issue("spiffe://coffer.test/service/keys")?;
        let client_identity = (client.cert_pem.as_bytes(), client.key_pem.as_bytes());
        let service_client = ClientTls::service_from_pem(ca, client_identity, TD)?;
        let any_client = ClientTls::from_pem(ca, Some(client_identity))?;

        // A server certificate from the same CA, naming the same host, of
        // something that is not a Coffer service.
        let impostor = serve_tls(&issue("spiffe://coffer.test/service/webhook")?).await?;
        let refusal = handshake(&service_client, &impostor)
            .await
            .err()
            .ok_or("a webhook's certificate was taken for a service's")?;
        assert!(
            refusal.contains("does not name a Coffer service of coffer.test"),
            "{refusal}"
        );
        // A user's certificate serves to no client: it is not issued for
        // server authentication.
        let user = serve_tls(&issue(
            "spiffe://coffer.test/account/111122223333/user/mallory",
        )?)
        .await?;
        for client in [&service_client, &any_client] {
            let refusal = handshake(client, &user)
                .await
                .err()
                .ok_or("a user's certificate served")?;
            assert!(
                refusal.contains("does not allow extended key usage for server authentication"),
                "{refusal}"
            );
        }

        // The audit service's certificate, or another service's when one
        // process serves several.
        for service in ["audit", "keys"] {
            let server =
                serve_tls(&issue(&format!("spiffe://coffer.test/service/{service}"))?).await?;
            handshake(&service_client, &server).await?;
        }
        Ok(())
    }

    #[test]
    fn forwards_caller_source_and_trace() -> Result<(), Box<dyn std::error::Error>> {
        let caller = principal_from_spiffe_id(
            "spiffe://coffer.test/account/111122223333/user/alice",
            "coffer.test",
        )?;
        let trace = TraceContext::parse_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .ok_or("bad traceparent")?;
        let context = CallContext::for_tests(caller, trace);
        let request = ForwardCaller::new(&context).call(tonic::Request::new(()))?;
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header(FORWARDED_FOR_HEADER).as_deref(),
            Some("spiffe://coffer.test/account/111122223333/user/alice")
        );
        assert_eq!(
            header(FORWARDED_SOURCE_IP_HEADER).as_deref(),
            Some("10.1.2.3")
        );
        assert_eq!(
            header(TRACEPARENT_HEADER).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        Ok(())
    }
}
