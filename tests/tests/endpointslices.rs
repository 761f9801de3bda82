//! Endpoint slices shared through a real etcd (`lab up --kvstore`): every
//! pod in exactly one slice; creation, identity change and deletion reach
//! the other nodes; with the per-endpoint path off for remote pods, slices
//! alone carry them (a policy that admits one identity across nodes holds
//! only if the slices told the server's node who the client is); with etcd
//! killed, existing connectivity goes on and new pods still get across
//! through the per-endpoint path, the metrics say so; with etcd back, the
//! slices are re-synced.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use sightline_e2e::{Lab, http_get, require_root, sightline, sightline_ok, write_temp};

const ETCD: &str = "/usr/bin/etcd";

const PODS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{containerPort: 80, name: http}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec:
  nodeName: node-2
  containers: [{name: c, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec:
  nodeName: node-3
  containers: [{name: c, ports: [{containerPort: 80}]}]
";

/// x/b admits only pods labelled `pod: a`: across nodes, that holds only
/// when b's node knows the client's identity from its address.
const ONLY_A: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: a}}}]
";

fn pod(name: &str, node: &str, label: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{pod: {label}}}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, ports: [{{containerPort: 80}}]}}]\n"
    )
}

fn need_etcd() -> bool {
    if !require_root() {
        return false;
    }
    assert!(Path::new(ETCD).exists(), "{ETCD} is not installed (Debian's etcd-server; scripts/setup.sh installs it)");
    true
}

fn apply(lab: &Lab, file: &str, text: &str) {
    let f = write_temp(file, text);
    sightline_ok(&["lab", "apply", "--name", &lab.name, "-f", f.to_str().expect("utf-8 path")]);
}

fn delete(lab: &Lab, file: &str, text: &str) {
    let f = write_temp(file, text);
    sightline_ok(&["lab", "delete", "--name", &lab.name, "-f", f.to_str().expect("utf-8 path")]);
}

/// `lab endpointslices -o json`'s items.
fn slices(lab: &Lab) -> Vec<Value> {
    let v: Value = serde_json::from_str(&sightline_ok(&["lab", "endpointslices", "--name", &lab.name, "-o", "json"])).expect("slices JSON");
    v["items"].as_array().expect("items").clone()
}

/// `ns/name` → (slice name, node, identity), asserting that no pod is in
/// two slices and no slice holds more than 100.
fn slice_index(items: &[Value]) -> BTreeMap<String, (String, String, u64)> {
    let mut index = BTreeMap::new();
    for s in items {
        let eps = s["endpoints"].as_array().expect("endpoints");
        assert!(!eps.is_empty() && eps.len() <= 100, "slice {} holds {}", s["name"], eps.len());
        for e in eps {
            let key = format!("{}/{}", s["namespace"].as_str().unwrap(), e["name"].as_str().unwrap());
            let prev = index.insert(
                key.clone(),
                (s["name"].as_str().unwrap().to_owned(), s["node"].as_str().unwrap().to_owned(), s["identity"].as_u64().unwrap()),
            );
            assert!(prev.is_none(), "{key} is in two slices");
        }
    }
    index
}

/// Polls `check` until it is true or `what` times out (10 s).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within 10 s");
}

/// The slices name exactly the lab's pods, each on its node with its identity.
fn slices_match_pods(lab: &Lab) -> bool {
    let status = lab.status();
    let want: BTreeMap<String, (String, u64)> = status["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|p| {
            (
                format!("{}/{}", p["namespace"].as_str().unwrap(), p["name"].as_str().unwrap()),
                (p["node"].as_str().unwrap().to_owned(), p["identity"].as_u64().unwrap()),
            )
        })
        .collect();
    let have: BTreeMap<String, (String, u64)> = slice_index(&slices(lab)).into_iter().map(|(k, (_, n, i))| (k, (n, i))).collect();
    have == want
}

/// A metric's value on a node's collector (the sum of its series).
fn metric(lab: &Lab, node: usize, name: &str) -> f64 {
    let addr = lab.status()["nodes"][node]["collector"]["metrics"].as_str().expect("metrics address").to_owned();
    let (code, body) = http_get(&addr, "/metrics", None);
    assert_eq!(code, 200);
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn kill_etcd(lab: &Lab) {
    let pid = lab.status()["kvstore"]["pid"].as_i64().expect("kvstore pid");
    // SAFETY: plain kill(2) of the lab's etcd.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0, "killing etcd {pid}");
    eventually("etcd gone", || !lab.status()["kvstore"]["running"].as_bool().unwrap_or(true));
}

#[test]
#[cfg_attr(
    not(all(sightline_root, sightline_etcd)),
    ignore = "needs root (network namespaces, eBPF) and Debian's etcd-server (scripts/setup.sh installs it)"
)]
fn slices_alone_carry_remote_endpoints() {
    if !need_etcd() {
        return;
    }
    let lab = Lab::up("e2e-kv-only", PODS, &["--nodes", "3", "--kvstore", "--endpoint-propagation", "kvstore"]);
    let status = lab.status();
    assert_eq!(status["endpoint_propagation"], "kvstore");
    let url = status["kvstore"]["endpoints"][0].as_str().expect("kvstore endpoint").to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "etcd on loopback only: {url}");
    let data_dir = status["kvstore"]["data_dir"].as_str().expect("data dir").to_owned();
    assert!(data_dir.starts_with("/run/sightline/labs/e2e-kv-only/"), "{data_dir}");

    // Every pod in exactly one slice, on its node, with its identity; the
    // table lists them too.
    eventually("slices name every pod", || slices_match_pods(&lab));
    let table = sightline_ok(&["lab", "endpointslices", "--name", &lab.name]);
    assert!(table.contains("NAMESPACE") && table.contains("ces-node-1-x-") && table.contains("a=10.244.1."), "{table}");
    let items = slices(&lab);
    let a = items.iter().find(|s| s["node"] == "node-1").expect("node-1's slice");
    assert_eq!(a["endpoints"][0]["named_ports"][0]["name"], "http", "named ports are published");

    // Each node learned the two other nodes' pods from slices alone.
    for node in 0..3 {
        eventually("remote endpoints from slices", || metric(&lab, node, "sightline_kvstore_remote_endpoints") == 2.0);
        assert_eq!(metric(&lab, node, "sightline_kvstore_fallback"), 0.0);
        assert!(metric(&lab, node, "sightline_kvstore_sync_latency_seconds_count") >= 2.0);
        assert!(metric(&lab, node, "sightline_kvstore_slices_published_total") >= 1.0);
    }
    let out = sightline(&["lab", "matrix", "--port", "80", "-o", "json", "--name", &lab.name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: Value = serde_json::from_slice(&out.stdout).expect("matrix JSON");
    let blocked: Vec<&Value> = m["results"].as_array().unwrap().iter().filter(|r| r["connected"] != true).collect();
    assert_eq!(m["results"].as_array().unwrap().len(), 9);
    assert!(blocked.is_empty(), "{blocked:?}");

    // Identity across nodes: b (node-2) admits a (node-1) only because
    // node-2's ipcache has a's identity, from a's slice.
    apply(&lab, "kv-only-a.yaml", ONLY_A);
    assert!(lab.probe("x/a", "x/b", 80, "TCP"), "node-1 → node-2, allowed by identity");
    assert!(!lab.probe("x/c", "x/b", 80, "TCP"), "node-3 → node-2, denied");

    // Creation: d (node-1, labelled like a) gets across once its slice does.
    apply(&lab, "kv-d.yaml", &pod("d", "node-1", "a"));
    eventually("d's slice", || slices_match_pods(&lab));
    eventually("d → b allowed", || lab.probe("x/d", "x/b", 80, "TCP"));
    // Identity change: d's labels change; its new identity reaches node-2.
    apply(&lab, "kv-d.yaml", &pod("d", "node-1", "z"));
    eventually("d moved to a slice of its new identity", || slices_match_pods(&lab));
    eventually("d → b denied under its new identity", || !lab.probe("x/d", "x/b", 80, "TCP"));
    // Deletion: d's slice entry goes.
    delete(&lab, "kv-d.yaml", &pod("d", "node-1", "z"));
    eventually("d gone from the slices", || slices_match_pods(&lab));
    assert!(!slice_index(&slices(&lab)).contains_key("x/d"));

    // The control experiment: without etcd, a new pod labelled like a is
    // unknown to node-2 (nothing else tells it in this mode): denied. With
    // etcd back, its slice gets across and it is allowed.
    kill_etcd(&lab);
    eventually("node-1 in fallback", || metric(&lab, 0, "sightline_kvstore_fallback") == 1.0);
    apply(&lab, "kv-e.yaml", &pod("e", "node-1", "a"));
    assert!(!lab.probe("x/e", "x/b", 80, "TCP"), "e is unknown to node-2 without the kvstore");
    assert!(lab.probe("x/a", "x/b", 80, "TCP"), "what node-2 knew stays in force while etcd is down");
    sightline_ok(&["lab", "restart", "kvstore", "--name", &lab.name]);
    eventually("e's slice after the re-sync", || slices_match_pods(&lab));
    eventually("e → b allowed once its slice got across", || lab.probe("x/e", "x/b", 80, "TCP"));
    for node in 0..3 {
        eventually("fallback over", || metric(&lab, node, "sightline_kvstore_fallback") == 0.0);
    }
    assert!(metric(&lab, 0, "sightline_kvstore_errors_total") >= 1.0);
}

#[test]
#[cfg_attr(
    not(all(sightline_root, sightline_etcd)),
    ignore = "needs root (network namespaces, eBPF) and Debian's etcd-server (scripts/setup.sh installs it)"
)]
fn the_per_endpoint_path_carries_endpoints_while_etcd_is_down() {
    if !need_etcd() {
        return;
    }
    let lab = Lab::up("e2e-kv-both", PODS, &["--nodes", "3", "--kvstore"]);
    assert_eq!(lab.status()["endpoint_propagation"], "both");
    eventually("slices name every pod", || slices_match_pods(&lab));
    apply(&lab, "kv-both-only-a.yaml", ONLY_A);
    assert!(lab.probe("x/a", "x/b", 80, "TCP"));

    // etcd dies: every node falls back; connectivity and policy go on.
    kill_etcd(&lab);
    for node in 0..3 {
        eventually("fallback on", || metric(&lab, node, "sightline_kvstore_fallback") == 1.0);
    }
    assert!(lab.probe("x/a", "x/b", 80, "TCP"), "existing connectivity without etcd");
    assert!(!lab.probe("x/c", "x/b", 80, "TCP"), "policy without etcd");
    assert!(metric(&lab, 1, "sightline_kvstore_errors_total") >= 1.0);
    // A new pod gets across through the per-endpoint path alone.
    apply(&lab, "kv-f.yaml", &pod("f", "node-3", "a"));
    assert!(lab.probe("x/f", "x/b", 80, "TCP"), "a new pod reaches another node while etcd is down");

    // etcd back on the same port and data: re-synced, f's slice published.
    let before = lab.status()["kvstore"]["endpoints"].clone();
    let out = sightline_ok(&["lab", "restart", "kvstore", "--name", &lab.name]);
    assert!(out.contains("restarted"), "{out}");
    assert_eq!(lab.status()["kvstore"]["endpoints"], before, "same client URL");
    assert_eq!(lab.status()["kvstore"]["restarts"], 1);
    for node in 0..3 {
        eventually("fallback over", || metric(&lab, node, "sightline_kvstore_fallback") == 0.0);
    }
    eventually("slices re-synced", || slices_match_pods(&lab));
    assert!(lab.probe("x/f", "x/b", 80, "TCP"));

    let name = lab.name.clone();
    let data_dir = lab.status()["kvstore"]["data_dir"].as_str().expect("data dir").to_owned();
    let pid = lab.status()["kvstore"]["pid"].as_i64().expect("pid");
    drop(lab);
    assert!(!Path::new(&data_dir).exists(), "lab down removes etcd's data");
    // SAFETY: signal 0 only checks existence.
    let alive = unsafe { libc::kill(pid as i32, 0) } == 0
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z");
    assert!(!alive, "lab down {name} stops etcd");
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: lab commands")]
fn kvstore_flags_are_checked_before_anything_is_made() {
    if !require_root() {
        return;
    }
    let out = sightline(&["lab", "up", "--name", "e2e-kv-flags", "--nodes", "2", "--endpoint-propagation", "kvstore"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--endpoint-propagation kvstore needs --kvstore"), "{err}");
    let out = sightline(&["lab", "up", "--name", "e2e-kv-flags", "--kvstore", "--no-datapath"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kvstore needs the datapath"));
    let out = sightline(&["lab", "up", "--name", "e2e-kv-flags", "--endpoint-propagation", "slices"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--endpoint-propagation"));
    assert!(!Path::new("/run/sightline/labs/e2e-kv-flags/state.json").exists(), "nothing was made");
    let out = sightline(&["lab", "endpointslices", "--name", "e2e-kv-flags"]);
    assert!(!out.status.success());
    let out = sightline(&[
        "collector", "--node", "node-1", "--netns", "/run/netns/e2e-kv-flags.node-1", "--control-socket", "/tmp/none.sock",
        "--pin-dir", "/sys/fs/bpf/sightline/e2e-kv-flags/node-1", "--kvstore-endpoints", "127.0.0.1:2379",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kvstore-endpoints") && err.contains("http://"), "{err}");
}
