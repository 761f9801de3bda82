//! The lab's own certificate authority: made by `lab up` (unless
//! `--no-tls`) under `/run/sightline/labs/<name>/tls/`, it signs
//!
//! - a server certificate per collector, with Hubble's names
//!   `<node>.<cluster>.hubble-grpc.cilium.io` and
//!   `*.<cluster>.hubble-grpc.cilium.io`, `localhost` and `127.0.0.1`;
//! - the relay's server certificate: `*.hubble-relay.cilium.io` (the lab's
//!   server name is `<lab>.hubble-relay.cilium.io`), `localhost`,
//!   `127.0.0.1`;
//! - the relay's client certificate, which the collectors require;
//! - a client certificate for the CLI (`sightline observe` and friends),
//!   which the relay and the collectors accept.
//!
//! Keys are ECDSA P-256, written 0600; the folder is 0700. The CA's key is
//! not kept: nothing else can be signed for the lab once it is up. The
//! certificates are valid for a year.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

/// The cluster name in the collectors' server names (the relay's
/// `--cluster-name` default).
pub const CLUSTER: &str = "default";

/// Why the lab's certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("making the certificate of {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The lab's TLS files, as its state remembers them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabTls {
    /// The folder holding every file.
    pub dir: PathBuf,
    /// The CA certificate every component trusts.
    pub ca: PathBuf,
    /// The CLI's client certificate and key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The name to check on the relay's certificate.
    pub server_name: String,
    /// The relay's server certificate and key.
    pub relay_cert: PathBuf,
    pub relay_key: PathBuf,
    /// The relay's client certificate and key (to the collectors).
    pub relay_client_cert: PathBuf,
    pub relay_client_key: PathBuf,
    /// Each node's collector: (certificate, key).
    pub collectors: BTreeMap<String, (PathBuf, PathBuf)>,
}

/// The name a node's collector certificate carries and clients check.
#[must_use]
pub fn collector_server_name(node: &str) -> String {
    sightline_tls::hubble_server_name(node, CLUSTER)
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
}

impl Ca {
    fn new(lab: &str) -> Result<(Self, String), PkiError> {
        let what = || format!("the CA of lab {lab}");
        let key = KeyPair::generate().map_err(|source| PkiError::Generate { what: what(), source })?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, format!("sightline lab {lab} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params);
        let cert = params.self_signed(&key).map_err(|source| PkiError::Generate { what: what(), source })?;
        Ok((Self { issuer: Issuer::new(params, key) }, cert.pem()))
    }

    /// (certificate PEM, key PEM) for `names` (DNS names; IP addresses are
    /// recognised), for servers or clients.
    fn issue(&self, what: &str, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Result<(String, String), PkiError> {
        let err = |source| PkiError::Generate { what: what.to_owned(), source };
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::default();
        for name in names {
            params.subject_alt_names.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().map_err(err)?),
            });
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        validity(&mut params);
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write { path: path.to_owned(), source };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().create_new(true).write(true).mode(mode).open(path).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

/// Makes the CA and every certificate of a lab with these nodes, under
/// `dir` (created 0700).
///
/// # Errors
///
/// [`PkiError`] naming the certificate or the file.
pub fn create(lab: &str, dir: &Path, nodes: &[String]) -> Result<LabTls, PkiError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Write { path: dir.to_owned(), source })?;
    let (ca, ca_pem) = Ca::new(lab)?;
    let ca_path = dir.join("ca.pem");
    write(&ca_path, &ca_pem, 0o644)?;
    let pair = |name: &str, (cert, key): (String, String)| -> Result<(PathBuf, PathBuf), PkiError> {
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        write(&c, &cert, 0o644)?;
        write(&k, &key, 0o600)?;
        Ok((c, k))
    };
    let mut collectors = BTreeMap::new();
    let wildcard = format!("*.{CLUSTER}.hubble-grpc.cilium.io");
    for node in nodes {
        let own = collector_server_name(node);
        let issued = ca.issue(
            &format!("the collector of {node}"),
            &own,
            &[own.as_str(), wildcard.as_str(), "localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        collectors.insert(node.clone(), pair(&format!("collector-{node}"), issued)?);
    }
    let server_name = format!("{lab}.hubble-relay.cilium.io");
    let (relay_cert, relay_key) = pair(
        "relay",
        ca.issue("the relay", &server_name, &["*.hubble-relay.cilium.io", "localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth)?,
    )?;
    let (relay_client_cert, relay_client_key) =
        pair("relay-client", ca.issue("the relay's client", "relay", &["relay.hubble-relay.cilium.io"], ExtendedKeyUsagePurpose::ClientAuth)?)?;
    let (client_cert, client_key) =
        pair("client", ca.issue("the CLI", "sightline-cli", &["sightline-cli"], ExtendedKeyUsagePurpose::ClientAuth)?)?;
    Ok(LabTls {
        dir: dir.to_owned(),
        ca: ca_path,
        client_cert,
        client_key,
        server_name,
        relay_cert,
        relay_key,
        relay_client_cert,
        relay_client_key,
        collectors,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn every_component_gets_a_certificate_that_fits_its_role() {
        let dir = std::env::temp_dir().join(format!("sightline-pki-{}", std::process::id()));
        let tls = create("lab1", &dir, &["node-1".to_owned(), "node-2".to_owned()]).expect("made");
        assert_eq!(tls.server_name, "lab1.hubble-relay.cilium.io");
        assert_eq!(std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o700);
        for key in [&tls.client_key, &tls.relay_key, &tls.relay_client_key, &tls.collectors["node-2"].1] {
            assert_eq!(std::fs::metadata(key).expect("key").permissions().mode() & 0o777, 0o600, "{}", key.display());
        }
        // The files make working TLS configurations, with the right names.
        let (cert, key) = tls.collectors["node-1"].clone();
        let server = sightline_tls::ServerTls::new(
            "collector",
            sightline_tls::ServerTlsFiles { cert, key, client_ca: vec![tls.ca.clone()] },
        )
        .expect("collector config");
        assert!(server.mutual());
        sightline_tls::ServerTls::new(
            "relay",
            sightline_tls::ServerTlsFiles { cert: tls.relay_cert.clone(), key: tls.relay_key.clone(), client_ca: vec![tls.ca.clone()] },
        )
        .expect("relay config");
        let client = Arc::new(
            sightline_tls::ClientTls::new(
                "relay client",
                sightline_tls::ClientTlsFiles {
                    ca: vec![tls.ca.clone()],
                    cert: Some(tls.relay_client_cert.clone()),
                    key: Some(tls.relay_client_key.clone()),
                },
            )
            .expect("client config"),
        );
        assert!(client.has_certificate());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let incoming = Arc::new(server).incoming(listener);
            tokio::spawn(async move {
                let mut incoming = Box::pin(incoming);
                while tokio_stream::StreamExt::next(&mut incoming).await.is_some() {}
            });
            for name in [collector_server_name("node-1"), collector_server_name("node-2"), "127.0.0.1".to_owned()] {
                let mut c = sightline_tls::Connector::new(Arc::clone(&client), Some(&name)).expect("connector");
                let uri: tonic::codegen::http::Uri = format!("http://{addr}").parse().expect("uri");
                tower_service::Service::call(&mut c, uri).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            let mut c = sightline_tls::Connector::new(Arc::clone(&client), Some("lab1.hubble-relay.cilium.io")).expect("connector");
            let uri: tonic::codegen::http::Uri = format!("http://{addr}").parse().expect("uri");
            assert!(tower_service::Service::call(&mut c, uri).await.is_err(), "a collector is not the relay");
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
