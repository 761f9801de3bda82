//! A gRPC server's TLS: its certificate and key, optionally the CAs that
//! clients' certificates must chain to (mutual TLS), re-read when the files
//! change; and the accept loop that does the handshakes for tonic.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;

use crate::watch::{DEFAULT_INTERVAL, Watched};
use crate::{ALPN_H2, TlsError, VERSIONS, pem};

/// How long a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of a server's TLS configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The certificate chain (leaf first), PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; empty:
    /// no client certificate is asked for.
    pub client_ca: Vec<PathBuf>,
}

impl ServerTlsFiles {
    fn paths(&self) -> Vec<(PathBuf, &'static str)> {
        let mut all = vec![(self.cert.clone(), "certificate file"), (self.key.clone(), "key file")];
        all.extend(self.client_ca.iter().map(|p| (p.clone(), "client CA file")));
        all
    }
}

/// A server's TLS configuration, kept current with its files.
pub struct ServerTls {
    files: ServerTlsFiles,
    config: Watched<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files and builds the configuration.
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file that cannot be read or used.
    pub fn new(label: &str, files: ServerTlsFiles) -> Result<Self, TlsError> {
        Self::with_interval(label, files, DEFAULT_INTERVAL)
    }

    /// As [`ServerTls::new`], looking at the files at most every `interval`.
    ///
    /// # Errors
    ///
    /// As [`ServerTls::new`].
    pub fn with_interval(label: &str, files: ServerTlsFiles, interval: Duration) -> Result<Self, TlsError> {
        let for_build = files.clone();
        let config = Watched::new(label, files.paths(), interval, move |contents| build(&for_build, contents))?;
        Ok(Self { files, config })
    }

    /// The configuration to use for the next handshake.
    #[must_use]
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config.current())
    }

    /// Looks at the files now (tests, SIGHUP); true when they changed and
    /// were accepted.
    pub fn reload_now(&self) -> bool {
        self.config.check_now()
    }

    /// Whether clients must present a certificate.
    #[must_use]
    pub fn mutual(&self) -> bool {
        !self.files.client_ca.is_empty()
    }

    /// The files.
    #[must_use]
    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// Accepts connections on `listener` and yields those whose handshake
    /// succeeds, for `tonic::transport::Server::serve_with_incoming*`.
    /// Handshakes run concurrently, each bounded by [`HANDSHAKE_TIMEOUT`];
    /// a failed one (plaintext, an unknown CA, no client certificate) closes
    /// that connection and is logged at debug level. The loop stops when
    /// the stream is dropped.
    pub fn incoming(self: Arc<Self>, listener: TcpListener) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsStream<TcpStream>, std::io::Error>>(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: wait, go on.
                        log::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => log::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => log::debug!("TLS handshake with {peer}: no answer within {HANDSHAKE_TIMEOUT:?}"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

fn build(files: &ServerTlsFiles, contents: &[Vec<u8>]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let [cert_pem, key_pem, ca_pems @ ..] = contents else {
        return Err(TlsError::Empty { what: "certificate", path: files.cert.clone(), expected: "content" });
    };
    let certs = pem::certs(cert_pem, &files.cert, "certificate file")?;
    let key = pem::key(key_pem, &files.key, "key file")?;
    let describe = || crate::list(&[files.cert.as_path(), files.key.as_path()]);
    let builder = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Config { files: describe(), source })?;
    let builder = if files.client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for (path, pem) in files.client_ca.iter().zip(ca_pems) {
            pem::add_roots(&mut roots, pem, path)?;
        }
        let ca_files = || crate::list(&files.client_ca.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::provider())
            .build()
            .map_err(|source| TlsError::Verifier { files: ca_files(), source })?;
        builder.with_client_cert_verifier(verifier)
    };
    // Checks that the key matches the certificate.
    let mut config = builder.with_single_cert(certs, key).map_err(|source| TlsError::Config { files: describe(), source })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}
