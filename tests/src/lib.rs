//! Helpers shared by the end-to-end tests in `tests/tests/`: run the real
//! `sightline` binary, bring labs up and always down again, and read a
//! collector's decoded events.
//!
//! The tests need root, a kernel with BTF and eBPF, and iproute2; without
//! root they print why and pass vacuously (`require_root`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sightline_collector::control::Subscription;

/// The `sightline` binary next to the test executable (built by
/// `cargo build --workspace`), or `$SIGHTLINE_BIN`.
#[must_use]
pub fn sightline_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SIGHTLINE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/sightline
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let bin = dir.join("sightline");
    assert!(bin.exists(), "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)", bin.display());
    bin
}

/// Checks that the test runs as root; it panics otherwise. Tests that
/// need root are marked `#[cfg_attr(not(sightline_root), ignore = …)]`
/// (`build-support/test_cfg.rs`), so without root they are reported as
/// ignored, with the reason; a test that runs without root anyway (run with
/// `--include-ignored`, as scripts/test.sh does under `CI=true`, or built as
/// root and run as another user) fails here — never a pass for work it did
/// not do. Returns `true`, for the `if !require_root() { return; }` at the
/// top of each test.
#[must_use]
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root, "this test needs root (network namespaces, eBPF)");
    root
}

/// Runs `sightline ARGS…` and returns its output.
pub fn sightline(args: &[&str]) -> Output {
    Command::new(sightline_bin()).args(args).output().expect("running sightline")
}

/// Runs `sightline ARGS…` and panics with its output unless it succeeds.
pub fn sightline_ok(args: &[&str]) -> String {
    let out = sightline(args);
    assert!(
        out.status.success(),
        "sightline {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of the network namespaces that exist now.
#[must_use]
pub fn netns_names() -> BTreeSet<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Names of the links in the host's own namespace.
#[must_use]
pub fn host_links() -> BTreeSet<String> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .collect()
}

/// PIDs of processes whose command line mentions `needle`.
#[must_use]
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let me = std::process::id();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && cmd.contains("sightline") {
            pids.push(pid);
        }
    }
    pids
}

/// A lab that is torn down when dropped, even if the test fails.
pub struct Lab {
    pub name: String,
}

impl Lab {
    /// `lab up --name NAME EXTRA… -f FILE` with the given manifest text.
    pub fn up(name: &str, manifests: &str, extra: &[&str]) -> Self {
        let _ = sightline(&["lab", "down", "--name", name]);
        let file = write_temp(&format!("{name}.yaml"), manifests);
        let lab = Self { name: name.to_owned() };
        let mut args = vec!["lab", "up", "--name", name, "-f", file.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        sightline_ok(&args);
        lab
    }

    /// `lab status -o json`.
    #[must_use]
    pub fn status(&self) -> Value {
        serde_json::from_str(&sightline_ok(&["lab", "status", "-o", "json", "--name", &self.name])).expect("status JSON")
    }

    /// The node side of pod `ns/name`'s veth, as the CNI plugin named it
    /// (`lab status`'s `pods[].host_ifname`).
    #[must_use]
    pub fn host_ifname(&self, pod: &str) -> String {
        let (ns, name) = pod.split_once('/').expect("ns/name");
        let status = self.status();
        let p = status["pods"].as_array().expect("pods").iter().find(|p| p["namespace"] == ns && p["name"] == name);
        let ifname = p.and_then(|p| p["host_ifname"].as_str()).unwrap_or_else(|| panic!("pod {pod} has no host_ifname: {status}"));
        assert!(ifname.starts_with("lxc") && ifname.len() == 15, "{ifname}: not the CNI plugin's naming");
        ifname.to_owned()
    }

    /// How to reach this lab's gRPC servers (its TLS files, if any).
    #[must_use]
    pub fn grpc(&self) -> GrpcAccess {
        GrpcAccess::from_status(&self.status())
    }

    /// One pod's entry of `lab status -o json`.
    fn pod_entry(&self, pod: &str) -> Value {
        let (ns, name) = pod.split_once('/').expect("ns/name");
        self.status()["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| p["namespace"] == ns && p["name"] == name)
            .unwrap_or_else(|| panic!("no pod {pod}"))
            .clone()
    }

    /// A pod's IP address.
    #[must_use]
    pub fn pod_ip(&self, pod: &str) -> String {
        self.pod_entry(pod)["ip"].as_str().expect("ip").to_owned()
    }

    /// A pod's identity.
    #[must_use]
    pub fn pod_identity(&self, pod: &str) -> u64 {
        self.pod_entry(pod)["identity"].as_u64().expect("identity")
    }

    /// Subscribes to node-1's decoded events.
    #[must_use]
    pub fn subscribe(&self) -> Subscription {
        let status = self.status();
        let socket = status["nodes"][0]["collector"]["control"].as_str().expect("control socket");
        Subscription::open(Path::new(socket)).expect("subscribe")
    }

    /// node-1's collector status (counters, conntrack entries).
    #[must_use]
    pub fn collector_status(&self) -> sightline_collector::control::Status {
        let status = self.status();
        let socket = status["nodes"][0]["collector"]["control"].as_str().expect("control socket");
        sightline_collector::control::status(Path::new(socket)).expect("collector status")
    }

    /// `lab probe FROM TO --port P --protocol PROTO`: true when connected.
    #[must_use]
    pub fn probe(&self, from: &str, to: &str, port: u16, protocol: &str) -> bool {
        let out = sightline(&[
            "lab", "probe", from, to, "--port", &port.to_string(), "--protocol", protocol, "--timeout-ms", "1000", "--name", &self.name,
        ]);
        match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("probe {from} → {to} errored: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    /// `lab exec POD -- ARGS…`.
    /// Connects from `from` to `ip:port` over TCP and returns the first
    /// line the responder wrote (its `namespace/name`), or `None` when the
    /// connection did not open within two seconds.
    #[must_use]
    pub fn who_answers(&self, from: &str, ip: &str, port: u16) -> Option<String> {
        let script = "exec 3<>/dev/tcp/$0/$1 && head -1 <&3";
        let out = self.exec(from, &["timeout", "2", "bash", "-c", script, ip, &port.to_string()]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.is_empty()).then_some(text)
    }

    pub fn exec(&self, pod: &str, args: &[&str]) -> Output {
        let mut all = vec!["lab", "exec", pod, "--name", &self.name, "--"];
        all.extend_from_slice(args);
        sightline(&all)
    }

    /// Waits until something in `pod` listens on TCP `port` (a server
    /// started in the background is ready).
    pub fn wait_listening(&self, pod: &str, port: u16) {
        let filter = format!("sport = :{port}");
        wait_until(&format!("a listener on {pod}:{port}"), Duration::from_secs(20), || {
            let out = self.exec(pod, &["ss", "-Hltn", &filter]);
            (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
        });
    }

    /// Waits until `pod` has an established TCP connection to port `port`
    /// (a client started in the background is transferring).
    pub fn wait_connected(&self, pod: &str, port: u16) {
        let filter = format!("dport = :{port}");
        wait_until(&format!("a connection from {pod} to port {port}"), Duration::from_secs(20), || {
            let out = self.exec(pod, &["ss", "-Htn", "state", "established", &filter]);
            (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
        });
    }

    /// The flows `sightline observe --lab NAME --all -o jsonpb ARGS…` prints
    /// (node-1's collector unless ARGS name a `--server`), one JSON object
    /// each.
    #[must_use]
    pub fn observed(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["observe", "--lab", &self.name, "--all", "-o", "jsonpb"];
        all.extend_from_slice(args);
        let out = sightline(&all);
        assert!(out.status.success(), "observe {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("observe printed {l:?}: {e}")))
            .collect()
    }

    /// Waits until the flows `observed(args)` returns satisfy `ok` (what
    /// the datapath saw has reached the flow store); returns them.
    pub fn wait_flows(&self, what: &str, args: &[&str], ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        wait_until(what, Duration::from_secs(20), || {
            let flows = self.observed(args);
            ok(&flows).then_some(flows)
        })
    }
}

/// Calls `check` every 50 ms until it returns a value, and returns it;
/// panics naming `what` when `timeout` passes first. What tests use instead
/// of a fixed sleep.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = sightline(&["lab", "down", "--name", &self.name]);
        if !out.status.success() {
            eprintln!("lab down {} failed: {}", self.name, String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// `GET path` on a loopback HTTP server (optionally with an `Accept`
/// header); (status code, body). Panics when the server cannot be reached.
#[must_use]
pub fn http_get(addr: &str, path: &str, accept: Option<&str>) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("read timeout");
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n").expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_owned())
}

/// A file under the temp dir, removed (with its folder, once empty) when
/// dropped.
#[derive(Debug)]
pub struct TempFile(PathBuf);

impl std::ops::Deref for TempFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            // Fails while other tests' files are there; the last one wins.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Writes `text` to a fresh file under the temp dir.
#[must_use]
pub fn write_temp(name: &str, text: &str) -> TempFile {
    let dir = std::env::temp_dir().join(format!("sightline-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    TempFile(path)
}

/// Three namespaces x, y, z with pods a, b, c each (labels `pod: a` …),
/// serving TCP and UDP on ports 80 and 81.
#[must_use]
pub fn xyz_manifests() -> String {
    xyz_manifests_on(1)
}

/// [`xyz_manifests`] with the pods spread over `nodes` nodes: pod a on
/// node-1, b on node-2, c on node-3 (wrapping around with fewer nodes; no
/// `nodeName` at all with one). The lab's own fixture, which its
/// differential test also runs.
#[must_use]
pub fn xyz_manifests_on(nodes: u32) -> String {
    sightline_lab::sample::xyz(nodes)
}

/// Two pods in one namespace, `t/a` and `t/b`, serving TCP and UDP on 80.
#[must_use]
pub fn two_pods() -> String {
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: t}\n---\n\
     apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: t, labels: {app: a}}\nspec:\n  containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]}]\n---\n\
     apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: t, labels: {app: b}}\nspec:\n  containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]}]\n"
        .to_owned()
}

/// How a test client reaches a lab's relay and collectors: with the lab's
/// CA and client certificate and each server's name, or in plaintext
/// (`lab up --no-tls`).
#[derive(Clone, Debug)]
pub struct GrpcAccess {
    /// (CA, client certificate, client key).
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// gRPC address → the name on its certificate.
    pub names: BTreeMap<String, String>,
}

impl GrpcAccess {
    /// From `lab status -o json`.
    #[must_use]
    pub fn from_status(status: &Value) -> Self {
        let path = |v: &Value| PathBuf::from(v.as_str().expect("a path"));
        let tls = status["tls"].as_object().map(|t| (path(&t["ca"]), path(&t["client_cert"]), path(&t["client_key"])));
        let mut names = BTreeMap::new();
        if let (Some(addr), Some(name)) = (status["relay"]["grpc"].as_str(), status["tls"]["server_name"].as_str()) {
            names.insert(addr.to_owned(), name.to_owned());
        }
        for n in status["nodes"].as_array().into_iter().flatten() {
            if let (Some(addr), Some(name)) = (n["collector"]["grpc"].as_str(), n["collector"]["tls_server_name"].as_str()) {
                names.insert(addr.to_owned(), name.to_owned());
            }
        }
        Self { tls, names }
    }

    /// A connected channel to `addr` (`host:port`).
    ///
    /// # Panics
    ///
    /// When it cannot connect.
    pub async fn channel(&self, addr: &str) -> tonic::transport::Channel {
        self.try_channel(addr).await.unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
    }

    /// A connected channel to `addr`, or why not.
    ///
    /// # Errors
    ///
    /// The connection error.
    pub async fn try_channel(&self, addr: &str) -> Result<tonic::transport::Channel, String> {
        match &self.tls {
            Some((ca, cert, key)) => {
                let files = sightline_tls::ClientTlsFiles { ca: vec![ca.clone()], cert: Some(cert.clone()), key: Some(key.clone()) };
                tls_channel(addr, files, self.names.get(addr).map(String::as_str)).await
            }
            None => plain_channel(addr).await,
        }
    }
}

/// A plaintext channel to `addr`.
///
/// # Errors
///
/// The connection error.
pub async fn plain_channel(addr: &str) -> Result<tonic::transport::Channel, String> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// A TLS channel to `addr` with these files, checking `server_name` (or
/// the address's host).
///
/// # Errors
///
/// Bad files, or the connection (TLS handshake included) failed.
pub async fn tls_channel(
    addr: &str,
    files: sightline_tls::ClientTlsFiles,
    server_name: Option<&str>,
) -> Result<tonic::transport::Channel, String> {
    let tls = sightline_tls::ClientTls::new("test client", files).map_err(|e| e.to_string())?;
    let connector = sightline_tls::Connector::new(Arc::new(tls), server_name).map_err(|e| e.to_string())?;
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("{e:?}"))
}

/// x/y/z over three nodes plus a client on node-1 and a service whose two backends run on
/// node-2 and node-3 (`s/web`, port 80 to the named port `http`; every pod serves TCP 80).
#[must_use]
pub fn xyz_and_web_service_on_three_nodes() -> String {
    format!(
        "{}---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {{name: s}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: s, labels: {{app: client}}}}\nspec: {{nodeName: node-1, containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: web-2, namespace: s, labels: {{app: web}}}}\nspec: {{nodeName: node-2, containers: [{{name: c, ports: [{{containerPort: 80}}, {{containerPort: 8080, name: http}}]}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: web-3, namespace: s, labels: {{app: web}}}}\nspec: {{nodeName: node-3, containers: [{{name: c, ports: [{{containerPort: 80}}, {{containerPort: 8080, name: http}}]}}]}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: s}}\nspec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: http}}]}}\n",
        xyz_manifests_on(3)
    )
}

/// Every ordered pair of pods connects on TCP/80 (the matrix is all `connected`, 144 pairs).
pub fn all_pairs_connect(lab: &Lab) {
    let out = sightline(&["lab", "matrix", "--name", &lab.name, "--port", "80", "-o", "json", "--timeout-ms", "1000"]);
    assert!(out.status.success(), "lab matrix: {}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("matrix JSON");
    let results = doc["results"].as_array().expect("results");
    let blocked: Vec<String> =
        results.iter().filter(|r| r["connected"] != true).map(|r| format!("{} -> {}", r["from"], r["to"])).collect();
    assert_eq!(results.len(), 12 * 12, "{doc}");
    assert!(blocked.is_empty(), "{} pairs blocked across nodes: {blocked:?}", blocked.len());
}
