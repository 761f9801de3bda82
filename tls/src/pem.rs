//! Certificates, keys and trust anchors from PEM bytes, with errors that
//! name the file they came from.

use std::path::Path;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// Reads a file whole.
///
/// # Errors
///
/// [`TlsError::Read`].
pub fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })
}

/// Every certificate of a PEM file (a chain: leaf first).
///
/// # Errors
///
/// [`TlsError::Pem`] when the PEM is broken, [`TlsError::Empty`] when it
/// holds no certificate.
pub fn certs(pem: &[u8], path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_owned(), expected: "certificate" });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
///
/// [`TlsError::Pem`] when the PEM is broken, [`TlsError::Empty`] when it
/// holds no private key.
pub fn key(pem: &[u8], path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => {
            TlsError::Empty { what, path: path.to_owned(), expected: "private key" }
        }
        source => TlsError::Pem { what, path: path.to_owned(), source },
    })
}

/// Adds every certificate of a CA file to `roots`.
///
/// # Errors
///
/// As [`certs`], and [`TlsError::Ca`] for a certificate that cannot be a
/// trust anchor.
pub fn add_roots(roots: &mut rustls::RootCertStore, pem: &[u8], path: &Path) -> Result<(), TlsError> {
    for cert in certs(pem, path, "CA file")? {
        roots.add(cert).map_err(|source| TlsError::Ca { path: path.to_owned(), source })?;
    }
    Ok(())
}

/// The system's trust anchors (those that parse).
#[must_use]
pub fn native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        log::debug!("loading the system's trust anchors: {e}");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    log::debug!("{added} system trust anchors ({ignored} unusable)");
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_the_file_name() {
        let p = Path::new("/x/cert.pem");
        let e = certs(b"hello", p, "certificate").expect_err("no certificate");
        assert!(e.to_string().contains("/x/cert.pem holds no certificate"), "{e}");
        let e = certs(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n", p, "certificate")
            .expect_err("broken");
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
        let e = key(b"nothing here", Path::new("/x/key.pem"), "key").expect_err("no key");
        assert!(e.to_string().contains("/x/key.pem holds no private key"), "{e}");
        let mut roots = rustls::RootCertStore::empty();
        assert!(add_roots(&mut roots, b"", Path::new("/x/ca.pem")).is_err());
    }
}
