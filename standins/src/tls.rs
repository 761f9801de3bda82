//! A throw-away certificate authority for tests: a CA, and server and
//! client certificates it signs, as PEM strings and as rustls
//! configurations (ring provider).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("building a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("reading PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A test CA.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl TestCa {
    /// A new CA named `name`.
    ///
    /// # Errors
    ///
    /// [`TlsError::Generate`] when rcgen fails.
    pub fn new(name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        Ok(Self { issuer: Issuer::new(params, key), cert_pem: cert.pem() })
    }

    /// The CA certificate, PEM.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by the
    /// CA, usable by servers and clients.
    ///
    /// # Errors
    ///
    /// [`TlsError::Generate`] when rcgen fails.
    pub fn issue(&self, names: &[&str]) -> Result<Pair, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("sightline"));
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns its path.
    ///
    /// # Errors
    ///
    /// [`TlsError::Write`].
    pub fn write_ca(&self, dir: &Path) -> Result<PathBuf, TlsError> {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.cert_pem).map_err(|source| TlsError::Write { path: path.clone(), source })?;
        Ok(path)
    }
}

/// The ring crypto provider, as every Sightline TLS configuration uses it.
#[must_use]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration presenting `pair` (no client
/// certificates asked for), TLS 1.2 and 1.3, with `alpn` protocols.
///
/// # Errors
///
/// [`TlsError`] when the PEM does not parse or rustls refuses it.
pub fn server_config(pair: &Pair, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_certificates_that_build_a_server_config() {
        let ca = TestCa::new("test CA").expect("CA");
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let pair = ca.issue(&["localhost", "127.0.0.1"]).expect("issue");
        server_config(&pair, &[b"h2", b"http/1.1"]).expect("server config");
    }
}
