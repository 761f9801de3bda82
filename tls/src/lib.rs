//! TLS for Sightline's gRPC servers and clients, and an HTTPS client for
//! reqwest: rustls with the ring provider everywhere, TLS 1.2 at least and
//! 1.3 preferred, ALPN `h2`.
//!
//! - [`server`]: a server's certificate and key and, for mutual TLS, the
//!   CAs its clients' certificates must chain to; an accept loop that does
//!   the handshakes and hands tonic the TLS streams;
//! - [`client`]: the CAs a client trusts (the system's by default), its own
//!   certificate for mutual TLS, and a tonic connector;
//! - [`watch`]: both re-read their files when they change (every few
//!   seconds, at the next handshake); a bad new file is refused with a log
//!   line and the previous configuration stays in use;
//! - [`pem`]: reading certificates and keys, with errors that name the file;
//! - [`https`]: a reqwest client on the same rustls (system roots plus a CA
//!   file), as the Azure sink and the relay's token keys use it.
#![forbid(unsafe_code)]

pub mod client;
pub mod https;
pub mod pem;
pub mod server;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;

pub use client::{ClientTls, ClientTlsFiles, Connector};
pub use server::{ServerTls, ServerTlsFiles};

/// The name a node's collector certificate carries and clients check
/// (Hubble's): `<node>.<cluster>.hubble-grpc.cilium.io`, with the node's
/// name without a `cluster/` prefix.
#[must_use]
pub fn hubble_server_name(node: &str, cluster: &str) -> String {
    let node = node.rsplit('/').next().unwrap_or(node);
    format!("{node}.{cluster}.hubble-grpc.cilium.io")
}

/// The ring crypto provider, the only one Sightline uses.
#[must_use]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 first, then 1.2 (the oldest Sightline accepts).
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// gRPC runs over HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration could not be built from its files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {path} is not valid PEM: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the {what} {path} holds no {expected}")]
    Empty { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("the CA certificate in {path} cannot be used: {source}")]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the TLS configuration from {files}: {source}")]
    Config {
        files: String,
        #[source]
        source: rustls::Error,
    },
    #[error("checking client certificates against {files}: {source}")]
    Verifier {
        files: String,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("no usable trust anchor: the system has none and no CA file was given")]
    NoRoots,
    #[error("{0} and {1} go together (mutual TLS needs both)")]
    Pair(&'static str, &'static str),
    #[error("{name:?} is not a valid TLS server name")]
    ServerName { name: String },
}

/// The files of a configuration, for messages: `a, b and c`.
pub(crate) fn list(paths: &[&std::path::Path]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}
