//! A gRPC client's TLS: the CAs it trusts (the system's when none is
//! given), its own certificate for mutual TLS, re-read when the files
//! change; and a tonic connector that dials TCP and does the handshake with
//! the configuration current at that moment.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::watch::{DEFAULT_INTERVAL, Watched};
use crate::{ALPN_H2, TlsError, VERSIONS, pem};

/// The files of a client's TLS configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// CA certificates (PEM) to trust; empty: the system's trust anchors.
    pub ca: Vec<PathBuf>,
    /// The client certificate (mutual TLS), PEM.
    pub cert: Option<PathBuf>,
    /// Its key, PEM.
    pub key: Option<PathBuf>,
}

impl ClientTlsFiles {
    fn paths(&self) -> Vec<(PathBuf, &'static str)> {
        let mut all: Vec<(PathBuf, &'static str)> = self.ca.iter().map(|p| (p.clone(), "CA file")).collect();
        all.extend(self.cert.iter().map(|p| (p.clone(), "client certificate file")));
        all.extend(self.key.iter().map(|p| (p.clone(), "client key file")));
        all
    }
}

/// A client's TLS configuration, kept current with its files.
pub struct ClientTls {
    files: ClientTlsFiles,
    config: Watched<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the files and builds the configuration.
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file that cannot be read or used;
    /// [`TlsError::Pair`] for a certificate without a key or the reverse.
    pub fn new(label: &str, files: ClientTlsFiles) -> Result<Self, TlsError> {
        Self::with_interval(label, files, DEFAULT_INTERVAL)
    }

    /// As [`ClientTls::new`], looking at the files at most every `interval`.
    ///
    /// # Errors
    ///
    /// As [`ClientTls::new`].
    pub fn with_interval(label: &str, files: ClientTlsFiles, interval: Duration) -> Result<Self, TlsError> {
        if files.cert.is_some() != files.key.is_some() {
            return Err(TlsError::Pair("the client certificate", "its key"));
        }
        let for_build = files.clone();
        let config = Watched::new(label, files.paths(), interval, move |contents| build(&for_build, contents))?;
        Ok(Self { files, config })
    }

    /// The configuration to use for the next handshake.
    #[must_use]
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.config.current())
    }

    /// Looks at the files now; true when they changed and were accepted.
    pub fn reload_now(&self) -> bool {
        self.config.check_now()
    }

    /// Whether it presents a client certificate.
    #[must_use]
    pub fn has_certificate(&self) -> bool {
        self.files.cert.is_some()
    }
}

fn build(files: &ClientTlsFiles, contents: &[Vec<u8>]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let (ca_pems, own) = contents.split_at(files.ca.len().min(contents.len()));
    let roots = if files.ca.is_empty() {
        let roots = pem::native_roots();
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        roots
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for (path, pem) in files.ca.iter().zip(ca_pems) {
            pem::add_roots(&mut roots, pem, path)?;
        }
        roots
    };
    let builder = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Config { files: "the client configuration".to_owned(), source })?
        .with_root_certificates(roots);
    let mut config = match (&files.cert, &files.key, own) {
        (Some(cert_path), Some(key_path), [cert_pem, key_pem]) => {
            let certs = pem::certs(cert_pem, cert_path, "client certificate file")?;
            let key = pem::key(key_pem, key_path, "client key file")?;
            builder.with_client_auth_cert(certs, key).map_err(|source| TlsError::Config {
                files: crate::list(&[cert_path.as_path(), key_path.as_path()]),
                source,
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Dials TCP and does the TLS handshake, for
/// `Endpoint::connect_with_connector*` (give the endpoint an `http://` URI:
/// the TLS is this connector's).
#[derive(Clone)]
pub struct Connector {
    tls: Arc<ClientTls>,
    /// The name to verify instead of the URI's host.
    server_name: Option<ServerName<'static>>,
}

impl Connector {
    /// A connector verifying `server_name` (or, when `None`, the host of
    /// each URI: a DNS name or an IP address).
    ///
    /// # Errors
    ///
    /// [`TlsError::ServerName`] for a name that is not a DNS name or an IP.
    pub fn new(tls: Arc<ClientTls>, server_name: Option<&str>) -> Result<Self, TlsError> {
        let server_name = match server_name {
            Some(n) => Some(
                ServerName::try_from(n.to_owned()).map_err(|_| TlsError::ServerName { name: n.to_owned() })?,
            ),
            None => None,
        };
        Ok(Self { tls, server_name })
    }

    /// A channel to `address` (`host:port`) that connects on first use.
    ///
    /// # Errors
    ///
    /// [`tonic::transport::Error`] for an address that makes no URI.
    pub fn lazy_channel(&self, address: &str, connect_timeout: Duration) -> Result<Channel, tonic::transport::Error> {
        Ok(Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(connect_timeout)
            .connect_with_connector_lazy(self.clone()))
    }
}

/// Why a TLS connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{uri} has no host or port")]
    Address { uri: String },
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
    #[error("connecting to {address}: {source}")]
    Tcp {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {address}: {source}")]
    Handshake {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = Arc::clone(&self.tls);
        let fixed = self.server_name.clone();
        Box::pin(async move {
            let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
                return Err(ConnectError::Address { uri: uri.to_string() });
            };
            // `[::1]` in a URI; `::1` as a name and for the socket.
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let name = match fixed {
                Some(n) => n,
                None => ServerName::try_from(host.clone()).map_err(|_| ConnectError::ServerName { host: host.clone() })?,
            };
            let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|source| ConnectError::Tcp { address: address.clone(), source })?;
            let _ = tcp.set_nodelay(true);
            let stream = tokio_rustls::TlsConnector::from(tls.config())
                .connect(name, tcp)
                .await
                .map_err(|source| ConnectError::Handshake { address, source })?;
            Ok(TokioIo::new(stream))
        })
    }
}
