//! Labs of several nodes: pods on different nodes reach each other through
//! the fabric (routed, no encapsulation), each node's datapath enforces its
//! own pods' policy, services balance over backends on any node, each
//! collector reports its own node's flows, and `lab down` removes it all.

use std::time::Duration;

use serde_json::Value;
use sightline_e2e::{Lab, netns_names, require_root, sightline, write_temp};

const APP: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: client, pod: a}}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web, pod: b}}
spec:
  nodeName: node-2
  containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: web, pod: c}}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: x, labels: {app: other, pod: d}}
spec:
  nodeName: node-3
  containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  selector: {app: web}
  ports: [{port: 80}]
";

fn matrix(lab: &Lab, port: u16, protocol: &str) -> Vec<(String, String, bool)> {
    let out = sightline(&["lab", "matrix", "--port", &port.to_string(), "--protocol", protocol, "-o", "json", "--name", &lab.name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("matrix JSON");
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| (r["from"].as_str().unwrap().to_owned(), r["to"].as_str().unwrap().to_owned(), r["connected"].as_bool().unwrap()))
        .collect()
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn pods_on_three_nodes_reach_each_other_under_each_nodes_policy() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-multi", APP, &["--nodes", "3"]);
    let status = lab.status();
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for (pod, node) in [("x/a", "node-1"), ("x/b", "node-2"), ("x/d", "node-3")] {
        let entry = status["pods"].as_array().unwrap().iter().find(|p| format!("{}/{}", p["namespace"].as_str().unwrap(), p["name"].as_str().unwrap()) == pod).unwrap();
        assert_eq!(entry["node"], node, "{pod}");
    }

    // Every pair, across nodes, on TCP and UDP.
    for (port, protocol) in [(80, "TCP"), (53, "UDP")] {
        let results = matrix(&lab, port, protocol);
        assert_eq!(results.len(), 16);
        let blocked: Vec<_> = results.iter().filter(|r| !r.2).collect();
        assert!(blocked.is_empty(), "{protocol}: {blocked:?}");
    }

    // x/b (node-2) admits only x/a: its node enforces it, whichever node
    // the client is on.
    let policy = write_temp(
        "multi-only-a.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-a, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}}]\n",
    );
    let out = sightline(&["lab", "apply", "--name", &lab.name, "-f", policy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lab.probe("x/a", "x/b", 80, "TCP"), "node-1 → node-2, allowed");
    assert!(!lab.probe("x/c", "x/b", 80, "TCP"), "node-1 → node-2, denied");
    assert!(!lab.probe("x/d", "x/b", 80, "TCP"), "node-3 → node-2, denied");
    assert!(lab.probe("x/d", "x/a", 80, "TCP"), "node-3 → node-1, no policy");

    // The service has a backend on node-1 and one on node-2; from node-3
    // both answer (replies are translated back on the client's node).
    let ip = status["services"][0]["cluster_ip"].as_str().expect("cluster ip").to_owned();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..16 {
        if let Some(who) = lab.who_answers("x/a", &ip, 80) {
            seen.insert(who);
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["x/b", "x/c"]);

    // Each collector reports its own node's side: node-2's saw the denied
    // connection from x/c arrive; node-1's did not drop it.
    let grpc = |i: usize| nodes[i]["collector"]["grpc"].as_str().expect("grpc").to_owned();
    let drops = |server: &str| {
        let out = sightline(&["observe", "--server", server, "--from-pod", "x/c", "--to-pod", "x/b", "--verdict", "DROPPED", "--all", "-o", "jsonpb"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    sightline_e2e::wait_until("node-2's drop of x/c → x/b in its flows", Duration::from_secs(20), || (drops(&grpc(1)) > 0).then_some(()));
    assert_eq!(drops(&grpc(0)), 0, "node-1 forwarded it");

    let name = lab.name.clone();
    drop(lab);
    let left: Vec<String> = netns_names().into_iter().filter(|n| n.starts_with(&format!("{name}."))).collect();
    assert!(left.is_empty(), "lab down left {left:?}");
}
