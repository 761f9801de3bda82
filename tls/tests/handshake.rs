//! Servers and clients of this crate against each other over loopback:
//! mutual TLS accepted with the right certificates and refused without them
//! or with another CA's, and certificates rotated on disk picked up by the
//! next handshake (a bad new file keeps the old one).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use sightline_tls::{ClientTls, ClientTlsFiles, Connector, ServerTls, ServerTlsFiles};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;
use tower_service::Service as _;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).expect("self-signed").pem();
        Self { issuer: Issuer::new(params, key), pem }
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sightline-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    // Replaced as a rotation would: a new file renamed over the old one.
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &p).expect("rename");
    p
}

/// Serves `hello` on every connection whose handshake succeeds; the address.
async fn serve(tls: ServerTls) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut incoming = Box::pin(Arc::new(tls).incoming(listener));
    tokio::spawn(async move {
        while let Some(Ok(mut s)) = incoming.next().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"hello").await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// What the server said, or why nothing came.
async fn talk(client: ClientTls, addr: &str, name: Option<&str>) -> Result<String, String> {
    let mut connector = Connector::new(Arc::new(client), name).map_err(|e| e.to_string())?;
    let uri: tonic::codegen::http::Uri = format!("http://{addr}").parse().expect("uri");
    let io = tokio::time::timeout(Duration::from_secs(5), connector.call(uri))
        .await
        .map_err(|_| "timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut stream = io.into_inner();
    let mut buf = Vec::new();
    // TLS 1.3: a refused client certificate shows on the first read.
    match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await {
        Ok(Ok(_)) if !buf.is_empty() => Ok(String::from_utf8_lossy(&buf).into_owned()),
        Ok(Ok(_)) => Err("closed without a word".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("read timeout".to_owned()),
    }
}

fn client(ca: &Path, own: Option<(&Path, &Path)>) -> ClientTls {
    ClientTls::new(
        "test client",
        ClientTlsFiles { ca: vec![ca.to_owned()], cert: own.map(|o| o.0.to_owned()), key: own.map(|o| o.1.to_owned()) },
    )
    .expect("client config")
}

#[tokio::test]
async fn mutual_tls_needs_a_certificate_of_the_right_ca() {
    let d = dir("mutual");
    let (ca, other) = (Ca::new("lab CA"), Ca::new("another CA"));
    let ca_file = write(&d, "ca.pem", &ca.pem);
    let other_ca_file = write(&d, "other-ca.pem", &other.pem);
    let (cert, key) = ca.issue(&["node-1.default.hubble-grpc.cilium.io", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let server = ServerTls::new(
        "test server",
        ServerTlsFiles { cert: write(&d, "server.pem", &cert), key: write(&d, "server-key.pem", &key), client_ca: vec![ca_file.clone()] },
    )
    .expect("server config");
    assert!(server.mutual());
    let addr = serve(server).await;

    let (c, k) = ca.issue(&["relay"], ExtendedKeyUsagePurpose::ClientAuth);
    let (good_cert, good_key) = (write(&d, "client.pem", &c), write(&d, "client-key.pem", &k));
    let (c, k) = other.issue(&["relay"], ExtendedKeyUsagePurpose::ClientAuth);
    let (bad_cert, bad_key) = (write(&d, "bad.pem", &c), write(&d, "bad-key.pem", &k));

    // The right client certificate; the IP, or the Hubble-style name.
    assert_eq!(talk(client(&ca_file, Some((&good_cert, &good_key))), &addr, None).await, Ok("hello".to_owned()));
    assert_eq!(
        talk(client(&ca_file, Some((&good_cert, &good_key))), &addr, Some("node-1.default.hubble-grpc.cilium.io")).await,
        Ok("hello".to_owned())
    );
    // A name the certificate does not carry.
    let e = talk(client(&ca_file, Some((&good_cert, &good_key))), &addr, Some("node-2.other.hubble-grpc.cilium.io")).await;
    assert!(e.is_err(), "{e:?}");
    // No client certificate, or one of another CA.
    let e = talk(client(&ca_file, None), &addr, None).await;
    assert!(e.is_err(), "{e:?}");
    let e = talk(client(&ca_file, Some((&bad_cert, &bad_key))), &addr, None).await;
    assert!(e.is_err(), "{e:?}");
    // A client that does not trust the server's CA.
    let e = talk(client(&other_ca_file, Some((&good_cert, &good_key))), &addr, None).await;
    assert!(e.unwrap_err().contains("handshake"));
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn a_rotated_certificate_is_used_by_the_next_handshake() {
    let d = dir("rotate");
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let old_ca_file = write(&d, "old-ca.pem", &old_ca.pem);
    let new_ca_file = write(&d, "new-ca.pem", &new_ca.pem);
    let (cert, key) = old_ca.issue(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let files = ServerTlsFiles { cert: write(&d, "cert.pem", &cert), key: write(&d, "key.pem", &key), client_ca: Vec::new() };
    // Files looked at again at every handshake.
    let server = ServerTls::with_interval("rotating server", files, Duration::ZERO).expect("server");
    let addr = serve(server).await;
    assert_eq!(talk(client(&old_ca_file, None), &addr, None).await, Ok("hello".to_owned()));
    assert!(talk(client(&new_ca_file, None), &addr, None).await.is_err());

    // Rotation: key first, then the certificate (between the two, the pair
    // does not match and the old one stays in use).
    let (cert, key) = new_ca.issue(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    write(&d, "key.pem", &key);
    assert_eq!(talk(client(&old_ca_file, None), &addr, None).await, Ok("hello".to_owned()), "mismatched pair refused");
    write(&d, "cert.pem", &cert);
    assert_eq!(talk(client(&new_ca_file, None), &addr, None).await, Ok("hello".to_owned()));
    assert!(talk(client(&old_ca_file, None), &addr, None).await.is_err());

    // A broken file keeps the last good certificate.
    write(&d, "cert.pem", "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n");
    assert_eq!(talk(client(&new_ca_file, None), &addr, None).await, Ok("hello".to_owned()));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_files_are_errors_that_name_them() {
    let d = dir("bad");
    let garbage = write(&d, "garbage.pem", "not a certificate");
    let e = ServerTls::new("s", ServerTlsFiles { cert: garbage.clone(), key: garbage.clone(), client_ca: Vec::new() })
        .expect_err("refused");
    assert!(e.to_string().contains("garbage.pem holds no certificate"), "{e}");
    let e = ClientTls::new("c", ClientTlsFiles { ca: vec![d.join("missing.pem")], cert: None, key: None }).expect_err("refused");
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let e = ClientTls::new("c", ClientTlsFiles { ca: vec![garbage.clone()], cert: Some(garbage), key: None }).expect_err("refused");
    assert!(e.to_string().contains("go together"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}
