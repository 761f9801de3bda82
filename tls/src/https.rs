//! An HTTPS client for reqwest on Sightline's rustls (ring): the system's
//! trust anchors plus an optional CA file, TLS 1.2 or 1.3, no redirects.
//! The Azure sink and the relay's token keys (JWKS) use it.

use std::path::{Path, PathBuf};

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("reading the CA file {path}: {source}")]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {path} is not valid PEM: {source}")]
    ParseCaFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the CA file {path} holds no certificate")]
    EmptyCaFile { path: PathBuf },
    #[error("the CA certificate in {path} cannot be used: {source}")]
    AddCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// A reqwest client trusting the system's anchors and `ca_file`.
///
/// # Errors
///
/// [`HttpsError`] naming the CA file when it cannot be read or used.
pub fn client(ca_file: Option<&Path>) -> Result<reqwest::Client, HttpsError> {
    let mut roots = crate::pem::native_roots();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| HttpsError::ReadCaFile { path: path.to_owned(), source })?;
        let certs = crate::pem::certs(&pem, path, "CA file").map_err(|e| match e {
            crate::TlsError::Pem { source, .. } => HttpsError::ParseCaFile { path: path.to_owned(), source },
            _ => HttpsError::EmptyCaFile { path: path.to_owned() },
        })?;
        for cert in certs {
            roots.add(cert).map_err(|source| HttpsError::AddCa { path: path.to_owned(), source })?;
        }
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(crate::VERSIONS)
        .map_err(HttpsError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sightline/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(HttpsError::Client)
}
