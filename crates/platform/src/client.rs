//! mTLS channels from one Coffer service to another (and from tools and
//! tests to Coffer). A service presents its own certificate and forwards the
//! caller it acts for, plus the trace context, in metadata; the callee trusts
//! the forwarded caller only because the peer certificate is a service's.

use std::path::Path;

use thiserror::Error;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::call::{CallContext, FORWARDED_FOR_HEADER, FORWARDED_SOURCE_IP_HEADER};
use crate::trace::TRACEPARENT_HEADER;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid endpoint {endpoint}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The TLS side of a client: the CA it trusts and, normally, the identity it
/// presents.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: ClientTlsConfig,
}

impl ClientTls {
    /// Trust `ca_file`; present `cert_file` + `key_file` when given.
    pub fn from_files(
        ca_file: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Self, ClientError> {
        let ca = read(ca_file)?;
        let identity = match identity {
            Some((cert_file, key_file)) => Some((read(cert_file)?, read(key_file)?)),
            None => None,
        };
        Ok(Self::from_pem(
            &ca,
            identity
                .as_ref()
                .map(|(cert, key)| (cert.as_slice(), key.as_slice())),
        ))
    }

    pub fn from_pem(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Self {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some((cert_pem, key_pem)) = identity {
            config = config.identity(Identity::from_pem(cert_pem, key_pem));
        }
        Self { config }
    }

    fn endpoint(&self, addr: &str, server_name: &str) -> Result<Endpoint, ClientError> {
        let endpoint_text = format!("https://{addr}");
        Endpoint::from_shared(endpoint_text.clone())
            .and_then(|endpoint| {
                endpoint
                    .tcp_nodelay(true)
                    .tls_config(self.config.clone().domain_name(server_name))
            })
            .map_err(|error| ClientError::Endpoint {
                endpoint: endpoint_text,
                message: error.to_string(),
            })
    }

    /// Connects to `https://{addr}` verifying the server as `server_name`.
    pub async fn connect(&self, addr: &str, server_name: &str) -> Result<Channel, ClientError> {
        self.endpoint(addr, server_name)?
            .connect()
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
        // Exports of a few hundred events are hundreds of KiB: windows that
        // hold a whole one save flow-control round trips per export.
        Ok(self
            .endpoint(addr, server_name)?
            .connect_timeout(timeout)
            .timeout(timeout)
            .initial_stream_window_size(Some(4 * 1024 * 1024))
            .initial_connection_window_size(Some(8 * 1024 * 1024))
            .connect_lazy())
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
    use crate::trace::TraceContext;

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
