//! TLS and authentication end to end, in labs (TLS on by default):
//!
//! - every server (each collector, the relay) refuses plaintext clients,
//!   clients without a certificate, with a certificate of another CA, and
//!   clients that do not trust the lab's CA; the lab's client works;
//!   `sightline observe`, `status` and `list` work without flags;
//! - relay ↔ collectors is mutual TLS: flows of both nodes arrive through
//!   the relay; a relay presenting another CA's certificate, or none, or
//!   plaintext, finds every collector unavailable;
//! - a relay with `--auth-*` (keys discovered and fetched over HTTPS from a
//!   local OpenID Connect issuer stand-in) refuses expired, wrong-audience,
//!   wrong-issuer and badly signed tokens with UNAUTHENTICATED, accepts a
//!   valid one, and a namespace-scoped token sees only its namespace;
//! - `lab up --no-tls` serves plaintext.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use sightline_e2e::{Lab, plain_channel, require_root, sightline, sightline_bin, tls_channel};
use sightline_proto::observer::observer_client::ObserverClient;
use sightline_proto::observer::{GetFlowsRequest, ServerStatusRequest, get_flows_response::ResponseTypes};
use sightline_standins::oidc::{OidcIssuer, SigningKey};
use sightline_standins::tls::TestCa;
use sightline_tls::ClientTlsFiles;
use tonic::Code;

const APP: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec: {nodeName: node-2, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: y}
spec: {nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y}
spec: {nodeName: node-2, containers: [{name: c, ports: [{containerPort: 80}]}]}
";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sightline-e2e-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

/// The lab's TLS folder and files.
struct LabFiles {
    dir: PathBuf,
    ca: PathBuf,
    client: (PathBuf, PathBuf),
    server_name: String,
}

impl LabFiles {
    fn of(status: &serde_json::Value) -> Self {
        let t = &status["tls"];
        let p = |k: &str| PathBuf::from(t[k].as_str().unwrap_or_else(|| panic!("lab status tls.{k}: {status}")));
        let ca = p("ca");
        Self {
            dir: ca.parent().expect("tls dir").to_owned(),
            client: (p("client_cert"), p("client_key")),
            server_name: t["server_name"].as_str().expect("server_name").to_owned(),
            ca,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn client_files(&self) -> ClientTlsFiles {
        ClientTlsFiles { ca: vec![self.ca.clone()], cert: Some(self.client.0.clone()), key: Some(self.client.1.clone()) }
    }
}

/// ServerStatus over a channel: Ok(number of connected nodes) or the
/// status code of the failure (a refused connection shows as Unavailable).
async fn status_over(channel: Result<tonic::transport::Channel, String>) -> Result<u32, String> {
    let channel = channel?;
    let mut c = ObserverClient::new(channel);
    match tokio::time::timeout(Duration::from_secs(5), c.server_status(ServerStatusRequest {})).await {
        Err(_) => Err("timeout".to_owned()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(r)) => Ok(r.into_inner().num_connected_nodes.unwrap_or(0)),
    }
}

/// A `sightline relay` this test started; killed when dropped.
struct RelayProc {
    child: Child,
    addr: String,
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Starts `sightline relay --listen … ARGS…` and waits for `ready`.
fn start_relay(args: &[String], log: &Path) -> RelayProc {
    let addr = free_port();
    let mut child = Command::new(sightline_bin())
        .args(["relay", "--listen", &addr, "--notify-ready", "--spool-dir"])
        .arg(log.with_extension("spool"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("starting the relay");
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let _ = out.read_line(&mut line);
    assert_eq!(line.trim(), "ready", "the relay did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
    RelayProc { child, addr }
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8").to_owned()
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn every_server_refuses_what_the_lab_did_not_sign_and_the_lab_client_works() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-tls", APP, &["--nodes", "2"]);
    let status = lab.status();
    let files = LabFiles::of(&status);
    assert!(files.server_name.ends_with(".hubble-relay.cilium.io"), "{}", files.server_name);
    for key in [&files.client.1, &files.file("relay-key.pem"), &files.file("relay-client-key.pem"), &files.file("collector-node-1-key.pem")] {
        let mode = std::fs::metadata(key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    let relay = status["relay"]["grpc"].as_str().expect("relay").to_owned();
    let mut servers = vec![(relay.clone(), files.server_name.clone())];
    for n in status["nodes"].as_array().expect("nodes") {
        servers.push((
            n["collector"]["grpc"].as_str().expect("grpc").to_owned(),
            n["collector"]["tls_server_name"].as_str().expect("tls_server_name").to_owned(),
        ));
    }
    assert_eq!(servers.len(), 3);
    for _ in 0..3 {
        assert!(lab.probe("x/a", "x/b", 80, "TCP"));
        assert!(lab.probe("y/a", "y/b", 80, "TCP"));
    }

    // Another CA, and certificates it signs for the relay's and the CLI's names.
    let dir = tmp_dir("foreign");
    let other = TestCa::new("not the lab's CA").expect("CA");
    let other_ca = other.write_ca(&dir).expect("CA file");
    let foreign = other.issue(&["relay.hubble-relay.cilium.io", "sightline-cli"]).expect("certificate");
    let (foreign_cert, foreign_key) = (dir.join("foreign.pem"), dir.join("foreign-key.pem"));
    std::fs::write(&foreign_cert, &foreign.cert_pem).expect("write");
    std::fs::write(&foreign_key, &foreign.key_pem).expect("write");

    let rt = rt();
    rt.block_on(async {
        for (addr, name) in &servers {
            let name = Some(name.as_str());
            let lab_client = status_over(tls_channel(addr, files.client_files(), name).await).await;
            assert!(lab_client.is_ok(), "{addr}: the lab's client: {lab_client:?}");
            let plain = status_over(plain_channel(addr).await).await;
            assert!(plain.is_err(), "{addr} answered a plaintext client: {plain:?}");
            let no_cert = ClientTlsFiles { ca: vec![files.ca.clone()], cert: None, key: None };
            let r = status_over(tls_channel(addr, no_cert, name).await).await;
            assert!(r.is_err(), "{addr} answered a client without a certificate: {r:?}");
            let foreign_client =
                ClientTlsFiles { ca: vec![files.ca.clone()], cert: Some(foreign_cert.clone()), key: Some(foreign_key.clone()) };
            let r = status_over(tls_channel(addr, foreign_client, name).await).await;
            assert!(r.is_err(), "{addr} answered a client certificate of another CA: {r:?}");
            let distrusting = ClientTlsFiles { ca: vec![other_ca.clone()], ..files.client_files() };
            let r = status_over(tls_channel(addr, distrusting, name).await).await;
            assert!(r.as_ref().is_err_and(|e| e.contains("UnknownIssuer")), "{addr}: a client that does not trust the lab's CA: {r:?}");
        }

        // Relay ↔ collectors: mutual TLS; both nodes' flows arrive.
        let mut c = ObserverClient::new(tls_channel(&relay, files.client_files(), Some(&files.server_name)).await.expect("relay"));
        let s = c.server_status(ServerStatusRequest {}).await.expect("status").into_inner();
        assert_eq!((s.num_connected_nodes, s.num_unavailable_nodes), (Some(2), Some(0)));
        let nodes = c.get_nodes(sightline_proto::observer::GetNodesRequest {}).await.expect("nodes").into_inner().nodes;
        assert_eq!(nodes.len(), 2, "{nodes:?}");
        assert!(nodes.iter().all(|n| n.tls.as_ref().is_some_and(|t| t.enabled && t.server_name.ends_with(".default.hubble-grpc.cilium.io"))), "{nodes:?}");
        let mut stream = c.get_flows(GetFlowsRequest { number: 100, ..GetFlowsRequest::default() }).await.expect("GetFlows").into_inner();
        let mut from = std::collections::BTreeSet::new();
        while let Some(r) = stream.message().await.expect("stream") {
            if let Some(ResponseTypes::Flow(_)) = r.response_types {
                from.insert(r.node_name);
            }
        }
        assert!(from.contains("node-1") && from.contains("node-2"), "{from:?}");
    });

    // A relay presenting another CA's certificate, none, or plaintext: every
    // collector refuses it.
    let peers: Vec<String> = servers[1..].iter().enumerate().map(|(i, (a, _))| format!("--peer=node-{}={a}", i + 1)).collect();
    let trust_lab = ["--tls-hubble-server-ca-files".to_owned(), s(&files.ca), "--disable-server-tls".to_owned()];
    let cases: [(&str, Vec<String>); 4] = [
        ("the lab's relay certificate", vec![
            "--tls-hubble-client-cert-file".into(), s(&files.file("relay-client.pem")),
            "--tls-hubble-client-key-file".into(), s(&files.file("relay-client-key.pem")),
        ]),
        ("another CA's certificate", vec![
            "--tls-hubble-client-cert-file".into(), s(&foreign_cert), "--tls-hubble-client-key-file".into(), s(&foreign_key),
        ]),
        ("no certificate", Vec::new()),
        ("plaintext", vec!["--disable-client-tls".into()]),
    ];
    for (i, (what, extra)) in cases.into_iter().enumerate() {
        let mut args = peers.clone();
        if what == "plaintext" {
            args.push("--disable-server-tls".into());
        } else {
            args.extend(trust_lab.iter().cloned());
        }
        args.extend(extra);
        let relay = start_relay(&args, &dir.join(format!("relay-{i}.log")));
        let connected = rt.block_on(async { status_over(plain_channel(&relay.addr).await).await }).expect("the test relay answers");
        let expected = if i == 0 { 2 } else { 0 };
        assert_eq!(connected, expected, "a relay with {what}: {connected} node(s) connected");
    }

    // The CLI finds the lab's files by itself: the relay by default, a
    // collector by its address.
    for args in [
        vec!["observe", "--lab", &lab.name, "--last", "5", "--print-node-name"],
        vec!["observe", "--server", &servers[2].0, "--last", "5", "--print-node-name"],
        vec!["status", "--lab", &lab.name],
        vec!["list", "nodes", "--lab", &lab.name],
    ] {
        let out = sightline(&args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stdout.is_empty(), "{args:?} printed nothing");
    }
    // Hubble's flags work as well, and plaintext is refused with a message.
    let out = sightline(&[
        "observe", "--server", &relay, "--tls", "--tls-ca-cert-files", &s(&files.ca), "--tls-client-cert-file", &s(&files.client.0),
        "--tls-client-key-file", &s(&files.client.1), "--tls-server-name", &files.server_name, "--last", "1",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = sightline(&["observe", "--server", &format!("http://{relay}"), "--last", "1", "--timeout", "2s"]);
    assert!(!out.status.success(), "a plaintext observe was answered");
    let _ = std::fs::remove_dir_all(&dir);
}

fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs()).expect("seconds")
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn the_relay_checks_bearer_tokens_and_scopes_them_to_namespaces() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-auth", APP, &["--nodes", "2"]);
    let status = lab.status();
    let files = LabFiles::of(&status);
    for _ in 0..3 {
        assert!(lab.probe("x/a", "x/b", 80, "TCP"));
        assert!(lab.probe("y/a", "y/b", 80, "TCP"));
    }
    let dir = tmp_dir("auth");
    let rt = rt();
    // The identity provider: its own CA (the relay trusts it with
    // --auth-ca-file), an RS256 key as Entra ID's, discovery and JWKS.
    let idp_ca = TestCa::new("identity provider CA").expect("CA");
    let idp_ca_file = idp_ca.write_ca(&dir).expect("CA file");
    let key = SigningKey::rs256("entra-2025", include_bytes!("../../relay/testdata/rsa-2048-a.pk8")).expect("key");
    let issuer = rt.block_on(OidcIssuer::start(&idp_ca, "tenant-e2e", vec![key.clone()])).expect("issuer");
    let namespaces = dir.join("namespaces.yaml");
    std::fs::write(&namespaces, "roles:\n  Flows.Reader: ['*']\n  Flows.X: [x]\n").expect("write");
    const AUD: &str = "api://sightline-e2e";

    let mut args: Vec<String> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| format!("--peer={}={}", n["name"].as_str().expect("name"), n["collector"]["grpc"].as_str().expect("grpc")))
        .collect();
    for (flag, file) in [
        ("--tls-relay-server-cert-file", "relay.pem"),
        ("--tls-relay-server-key-file", "relay-key.pem"),
        ("--tls-relay-client-ca-files", "ca.pem"),
        ("--tls-hubble-client-cert-file", "relay-client.pem"),
        ("--tls-hubble-client-key-file", "relay-client-key.pem"),
        ("--tls-hubble-server-ca-files", "ca.pem"),
    ] {
        args.extend([flag.to_owned(), s(&files.file(file))]);
    }
    args.extend([
        "--auth-issuer".to_owned(), issuer.issuer(),
        "--auth-audience".to_owned(), AUD.to_owned(),
        "--auth-ca-file".to_owned(), s(&idp_ca_file),
        "--auth-namespaces-file".to_owned(), s(&namespaces),
    ]);
    let relay = start_relay(&args, &dir.join("relay.log"));
    let claims = |extra: serde_json::Value| {
        let mut c = json!({"iss": issuer.issuer(), "aud": AUD, "sub": "e2e", "nbf": now() - 5, "exp": now() + 600,
                           "roles": ["Flows.Reader"]});
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        c
    };

    // (namespaces of the flows seen) or the refusal.
    let seen = |token: Option<String>| {
        let channel = tls_channel(&relay.addr, files.client_files(), Some(&files.server_name));
        rt.block_on(async move {
            let mut c = ObserverClient::new(channel.await.expect("TLS to the relay"));
            let mut req = tonic::Request::new(GetFlowsRequest { number: 200, ..GetFlowsRequest::default() });
            if let Some(t) = token {
                req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
            }
            let mut stream = c.get_flows(req).await?.into_inner();
            let mut namespaces = std::collections::BTreeSet::new();
            while let Some(r) = stream.message().await? {
                if let Some(ResponseTypes::Flow(f)) = r.response_types {
                    for ep in [f.source, f.destination].into_iter().flatten() {
                        namespaces.insert(ep.namespace);
                    }
                }
            }
            Ok::<_, tonic::Status>(namespaces)
        })
    };
    let refused = |token: Option<String>, why: &str| {
        let e = seen(token).expect_err("refused");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains(why), "{why}: {}", e.message());
    };
    refused(None, "no bearer token");
    refused(Some(key.sign(&claims(json!({"exp": now() - 3600}))).expect("sign")), "expired");
    refused(Some(key.sign(&claims(json!({"aud": "api://someone-else"}))).expect("sign")), "audience");
    refused(Some(key.sign(&claims(json!({"iss": "https://login.microsoftonline.com/evil/v2.0"}))).expect("sign")), "issuer");
    let forger = SigningKey::rs256("entra-2025", include_bytes!("../../relay/testdata/rsa-2048-b.pk8")).expect("key");
    refused(Some(forger.sign(&claims(json!({}))).expect("sign")), "signature");
    refused(Some("not.a.token".to_owned()), "malformed");

    let all = seen(Some(key.sign(&claims(json!({}))).expect("sign"))).expect("a valid token is accepted");
    assert!(all.contains("x") && all.contains("y"), "{all:?}");
    let only_x = seen(Some(key.sign(&claims(json!({"roles": ["Flows.X"]}))).expect("sign"))).expect("accepted");
    assert!(only_x.contains("x") && !only_x.contains("y"), "a token for x saw {only_x:?}");
    let nothing = seen(Some(key.sign(&claims(json!({"roles": ["Unrelated"]}))).expect("sign"))).expect("accepted");
    assert!(nothing.is_empty(), "a token with no mapped role saw {nothing:?}");

    // sightline observe --token-file, with Hubble's TLS flags.
    let token_file = dir.join("token");
    let tls_flags = [
        "--tls".to_owned(), "--tls-ca-cert-files".to_owned(), s(&files.ca),
        "--tls-client-cert-file".to_owned(), s(&files.client.0), "--tls-client-key-file".to_owned(), s(&files.client.1),
        "--tls-server-name".to_owned(), files.server_name.clone(),
    ];
    let observe = |extra: &[&str]| {
        let mut args = vec!["observe", "--server", &relay.addr, "--last", "50", "-o", "jsonpb"];
        args.extend(tls_flags.iter().map(String::as_str));
        args.extend_from_slice(extra);
        sightline(&args)
    };
    let out = observe(&[]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not authenticated"), "{out:?}");
    std::fs::write(&token_file, key.sign(&claims(json!({"roles": ["Flows.X"]}))).expect("sign")).expect("write");
    let out = observe(&["--token-file", &s(&token_file)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("\"namespace\":\"x\"") && !text.contains("\"namespace\":\"y\""), "{text}");
    // The file is read again for every call: an expired token now fails.
    std::fs::write(&token_file, key.sign(&claims(json!({"exp": now() - 600}))).expect("sign")).expect("write");
    let out = observe(&["--token-file", &s(&token_file)]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("expired"), "{out:?}");
    assert!(issuer.discovery_fetches() >= 1 && issuer.jwks_fetches() >= 1, "the relay discovered and fetched the keys");
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn lab_up_no_tls_serves_plaintext() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-notls", APP, &["--nodes", "2", "--no-tls"]);
    let status = lab.status();
    assert!(status["tls"].is_null(), "{status}");
    assert!(status["nodes"][0]["collector"]["tls_server_name"].is_null());
    assert!(lab.probe("x/a", "x/b", 80, "TCP"));
    let relay = status["relay"]["grpc"].as_str().expect("relay").to_owned();
    let collector = status["nodes"][0]["collector"]["grpc"].as_str().expect("grpc").to_owned();
    let rt = rt();
    rt.block_on(async {
        assert_eq!(status_over(plain_channel(&relay).await).await, Ok(2));
        assert_eq!(status_over(plain_channel(&collector).await).await, Ok(1));
    });
    let out = sightline(&["observe", "--lab", &lab.name, "--last", "5"]);
    assert!(out.status.success() && !out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = sightline(&["lab", "status", "--name", &lab.name]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("TLS       off"), "{table:?}");
}
