//! The lab's network models (`lab up --network-model`), each on three nodes: pods get
//! addresses from the model's ranges, every pod reaches every other across nodes, policy
//! holds across nodes, and services load-balance to backends on other nodes. Model by model
//! what differs: `overlay` routes a /24 per node, `pod-subnet` hands out blocks of 16 as pods
//! arrive (so a node's pods are not one range) and routes each block, `node-subnet` has no
//! per-node routes at all (nodes answer ARP for their pods).
//!
//! The full NetworkPolicy suite runs in each model too (`tests/netpol.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;

use serde_json::Value;
use sightline_e2e::{Lab, all_pairs_connect, require_root, sightline, write_temp, xyz_and_web_service_on_three_nodes};

fn cidr(s: &str) -> (u32, u32) {
    let (addr, len) = s.split_once('/').unwrap_or_else(|| panic!("not a CIDR: {s}"));
    let addr: Ipv4Addr = addr.parse().unwrap_or_else(|_| panic!("not a CIDR: {s}"));
    let len: u32 = len.parse().unwrap_or_else(|_| panic!("not a CIDR: {s}"));
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(addr) & mask, mask)
}

fn contains(net: &str, ip: &str) -> bool {
    let (base, mask) = cidr(net);
    let ip: Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("not an address: {ip}"));
    u32::from(ip) & mask == base
}

/// `ip -n NETNS ARGS…`, its output.
fn ip(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip").arg("-n").arg(netns).args(args).output().expect("running ip");
    assert!(out.status.success(), "ip -n {netns} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pod `ns/name` → (ip, node).
fn pods(status: &Value) -> BTreeMap<String, (String, String)> {
    status["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|p| {
            (
                format!("{}/{}", p["namespace"].as_str().expect("ns"), p["name"].as_str().expect("name")),
                (p["ip"].as_str().expect("ip").to_owned(), p["node"].as_str().expect("node").to_owned()),
            )
        })
        .collect()
}

fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"].as_array().expect("nodes").iter().find(|n| n["name"] == name).unwrap_or_else(|| panic!("no {name}"))
}

/// Ingress of ns y denied except from ns z: across nodes, x → y is blocked, z → y
/// connects, and x → z is untouched.
fn policy_holds_across_nodes(lab: &Lab) {
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-z, namespace: y}\n\
                  spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}\n";
    let file = write_temp(&format!("{}-policy.yaml", lab.name), policy);
    let out = sightline(&["lab", "apply", "--name", &lab.name, "-f", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "lab apply: {}", String::from_utf8_lossy(&out.stderr));
    let status = lab.status();
    let pods = pods(&status);
    // x/a (node-1) → y/b (node-2), x/c (node-3) → y/a (node-1): denied.
    for (from, to) in [("x/a", "y/b"), ("x/c", "y/a"), ("s/client", "y/c")] {
        assert_ne!(pods[from].1, pods[to].1, "{from} and {to} should be on different nodes");
        assert!(!lab.probe(from, to, 80, "TCP"), "{from} -> {to} connected through the policy");
    }
    // z → y across nodes, and traffic the policy does not select.
    for (from, to) in [("z/a", "y/b"), ("z/c", "y/a"), ("x/a", "z/b"), ("y/b", "x/c")] {
        assert!(lab.probe(from, to, 80, "TCP"), "{from} -> {to} blocked");
    }
    let out = sightline(&["lab", "delete", "--name", &lab.name, "-f", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "lab delete: {}", String::from_utf8_lossy(&out.stderr));
}

/// The service's backends both run on other nodes than the client; connections to the
/// cluster IP reach both of them.
fn service_balances_across_nodes(lab: &Lab) {
    let status = lab.status();
    let svc = status["services"].as_array().expect("services").iter().find(|s| s["name"] == "web").expect("web");
    let ip = svc["cluster_ip"].as_str().expect("cluster_ip").to_owned();
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        if let Some(who) = lab.who_answers("s/client", &ip, 80) {
            seen.insert(who);
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["s/web-2".to_owned(), "s/web-3".to_owned()]),
        "connections to {ip} from node-1 did not reach both backends on node-2 and node-3"
    );
}

fn up(name: &str, extra: &[&str]) -> Lab {
    let mut args = vec!["--nodes", "3", "--no-tls"];
    args.extend_from_slice(extra);
    Lab::up(name, &xyz_and_web_service_on_three_nodes(), &args)
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn overlay_gives_each_node_a_24_of_the_pod_cidr_routed_by_the_fabric() {
    if !require_root() {
        return;
    }
    let lab = up("e2e-nm-overlay", &["--network-model", "overlay", "--pod-cidr", "192.168.0.0/16"]);
    let status = lab.status();
    assert_eq!(status["network"]["model"], "overlay");
    assert_eq!(status["network"]["pod_range"], "192.168.0.0/16");
    let pods = pods(&status);
    assert_eq!(pods.len(), 12);
    for (pod, (ip, node_name)) in &pods {
        let block = node(&status, node_name)["pod_cidr"].as_str().expect("pod_cidr").to_owned();
        assert!(block.ends_with("/24") && contains("192.168.0.0/16", &block.replace("/24", "")), "{node_name}: {block}");
        assert!(contains(&block, ip), "{pod} at {ip} is outside its node's {block}");
    }
    // Each other node's /24 is routed through that node's fabric address.
    let routes = ip("e2e-nm-overlay.node-2", &["route"]);
    for other in ["node-1", "node-3"] {
        let n = node(&status, other);
        let want = format!("{} via {}", n["pod_cidr"].as_str().expect("cidr"), n["fabric_ip"].as_str().expect("fabric ip"));
        assert!(routes.contains(&want), "node-2 lacks `{want}`:\n{routes}");
    }
    all_pairs_connect(&lab);
    policy_holds_across_nodes(&lab);
    service_balances_across_nodes(&lab);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn pod_subnet_hands_out_blocks_of_16_as_pods_arrive_and_routes_each() {
    if !require_root() {
        return;
    }
    let lab = up("e2e-nm-podsubnet", &["--network-model", "pod-subnet", "--pod-subnet", "10.241.0.0/16"]);
    let status = lab.status();
    assert_eq!(status["network"]["model"], "pod-subnet");
    // Node-1's first block is full after its gateway and a few pods; more pods on node-1
    // get a block handed out after the other nodes' first ones: not one range.
    let more: Vec<String> = (0..12)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: extra-{i}, namespace: s, labels: {{app: extra}}}}\n\
                 spec: {{nodeName: node-1, containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\n"
            )
        })
        .collect();
    let file = write_temp("e2e-nm-podsubnet-more.yaml", &more.join("---\n"));
    let out = sightline(&["lab", "apply", "--name", &lab.name, "-f", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "lab apply: {}", String::from_utf8_lossy(&out.stderr));
    let status = lab.status();
    let blocks = |n: &str| -> Vec<String> {
        node(&status, n)["pod_blocks"].as_array().expect("pod_blocks").iter().map(|b| b.as_str().expect("block").to_owned()).collect()
    };
    let node1 = blocks("node-1");
    assert!(node1.len() >= 2, "node-1 got no second block: {node1:?}");
    let (first, _) = cidr(&node1[0]);
    let (second, _) = cidr(&node1[1]);
    assert!(second > first + 16, "node-1's blocks {node1:?} are contiguous: others' blocks should lie between");
    let mut every_block = BTreeSet::new();
    for n in ["node-1", "node-2", "node-3"] {
        for b in blocks(n) {
            assert!(b.ends_with("/28") && contains("10.241.0.0/16", b.trim_end_matches("/28")), "{n}: {b}");
            assert!(every_block.insert(b.clone()), "{b} handed to two nodes");
        }
    }
    for (pod, (ip, node_name)) in pods(&status) {
        assert!(blocks(&node_name).iter().any(|b| contains(b, &ip)), "{pod} at {ip} is in none of {node_name}'s blocks");
    }
    // The new block is routed by the other nodes, and its pods are reachable from them.
    let routes = ip("e2e-nm-podsubnet.node-3", &["route"]);
    let via = node(&status, "node-1")["fabric_ip"].as_str().expect("fabric ip").to_owned();
    assert!(routes.contains(&format!("{} via {via}", node1[1])), "node-3 does not route {}:\n{routes}", node1[1]);
    let late = pods(&status)
        .into_iter()
        .find(|(_, (ip, _))| contains(&node1[1], ip))
        .map(|(pod, _)| pod)
        .expect("a pod in node-1's second block");
    assert!(lab.probe("z/c", &late, 80, "TCP"), "z/c (node-3) cannot reach {late} in node-1's second block");
    let out = sightline(&["lab", "delete", "--name", &lab.name, "-f", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "lab delete: {}", String::from_utf8_lossy(&out.stderr));

    all_pairs_connect(&lab);
    policy_holds_across_nodes(&lab);
    service_balances_across_nodes(&lab);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn node_subnet_pods_share_the_nodes_subnet_and_nodes_answer_arp_for_them() {
    if !require_root() {
        return;
    }
    let lab = up("e2e-nm-nodesubnet", &["--network-model", "node-subnet", "--node-subnet", "10.243.0.0/16"]);
    let status = lab.status();
    assert_eq!(status["network"]["model"], "node-subnet");
    assert_eq!(status["network"]["pod_range"], "10.243.0.0/16");
    let pods = pods(&status);
    let fabric: BTreeSet<String> =
        ["node-1", "node-2", "node-3"].iter().map(|n| node(&status, n)["fabric_ip"].as_str().expect("fabric").to_owned()).collect();
    for (pod, (ip, _)) in &pods {
        assert!(contains("10.243.0.0/16", ip), "{pod} at {ip} is outside the node subnet");
        assert!(!fabric.contains(ip), "{pod} has a node's address {ip}");
    }
    all_pairs_connect(&lab);
    // No node has a route for another node's pods: only the shared segment.
    for n in ["node-1", "node-2", "node-3"] {
        let routes = ip(&format!("e2e-nm-nodesubnet.{n}"), &["route"]);
        assert!(!routes.contains(" via "), "{n} routes pods through a gateway:\n{routes}");
    }
    // node-2 learnt x/a's address (a pod of node-1) as node-1's fabric MAC: node-1 answered.
    let (xa_ip, xa_node) = &pods["x/a"];
    assert_eq!(xa_node, "node-1");
    let node1_mac = ip("e2e-nm-nodesubnet.node-1", &["-br", "link", "show", "fab0"]);
    let node1_mac = node1_mac.split_whitespace().nth(2).expect("fab0's MAC").to_owned();
    let neigh = ip("e2e-nm-nodesubnet.node-2", &["neigh", "show", "dev", "fab0"]);
    assert!(
        neigh.lines().any(|l| l.starts_with(&format!("{xa_ip} ")) && l.contains(&node1_mac)),
        "node-2 has no ARP entry for {xa_ip} at node-1's {node1_mac}:\n{neigh}"
    );
    policy_holds_across_nodes(&lab);
    service_balances_across_nodes(&lab);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: `lab up` checks for root first")]
fn bad_network_flags_are_refused_before_anything_is_made() {
    if !require_root() {
        return;
    }
    for (args, says) in [
        (&["--network-model", "mesh"][..], "invalid value 'mesh'"),
        (&["--pod-cidr", "10.244.1.0/16"], "host bits"),
        (&["--network-model", "pod-subnet", "--pod-cidr", "10.244.0.0/16"], "--pod-cidr applies"),
        (&["--pod-cidr", "8.8.0.0/16"], "private range"),
        (&["--network-model", "node-subnet", "--node-subnet", "10.96.0.0/16"], "service range"),
    ] {
        let mut all = vec!["lab", "up", "--name", "e2e-nm-bad"];
        all.extend_from_slice(args);
        let out = sightline(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: expected {says:?} in: {stderr}");
        assert!(!std::path::Path::new("/run/sightline/labs/e2e-nm-bad").exists(), "{args:?} left a lab behind");
    }
}
