//! The differential test of the two state sources: for the manifests the
//! end-to-end suite and the demo apply, the `NodeState` the Kubernetes
//! source builds from the same objects (as the API server would hold them,
//! with the lab's pod addresses, nodes and cluster IPs) equals the lab's,
//! but for the endpoints (the API server does not know the veths) and the
//! identity numbers (compared through their label sets). No root needed.
//!
//! The manifests come from the sources themselves (read at compile time):
//! every string literal of `tests/` holding a whole manifest, every
//! `np(…)` policy of `tests/tests/netpol.rs` rendered with its template on
//! top of the xyz pods, the xyz fixture (`sample::xyz`, which the e2e suite uses) on one and
//! on three nodes, and the demo's sample app.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use sightline_collector::kubernetes::k8s_openapi::api::core::v1 as core;
use sightline_collector::kubernetes::k8s_openapi::api::networking::v1 as net;
use sightline_collector::kubernetes::translate::{self, Objects};
use sightline_collector::state::{NodeState, TargetPort};

use super::cluster::{self, LabState, Node, PodRuntime};
use super::manifest::{self, Named as _, ObjectStore};
use super::network::{Network, NetworkOptions};
use super::sample::xyz;

/// The lab as `lab up --nodes N` + `lab apply` would leave it, without
/// plugging anything in: the same allocation of addresses, endpoint ids,
/// identities and cluster IPs as `converge`.
fn lab_state(text: &str, nodes: u32) -> Result<LabState, String> {
    let objects = manifest::parse_manifests("test.yaml", text).map_err(|e| e.to_string())?;
    let mut store = ObjectStore::new();
    store.apply(objects).map_err(|e| e.to_string())?;
    let network = Network::plan(&NetworkOptions::default(), nodes).map_err(|e| e.to_string())?;
    let lab_nodes: Vec<Node> = (1..=nodes)
        .map(|i| {
            let block = network.node_block(i).expect("planned");
            Node {
                name: format!("node-{i}"),
                pod_cidr: block.to_string(),
                node_ip: Ipv4Addr::from(u32::from(block.network()) + 1),
                collector_pid: 0,
                control_socket: "/nonexistent".into(),
                grpc: None,
                metrics: None,
                collector_args: Vec::new(),
                collector_restarts: 0,
            }
        })
        .collect();
    let mut state = LabState {
        name: "diff".into(),
        aggregation: "medium".into(),
        datapath: true,
        policy_audit: false,
        prometheus: None,
        kvstore: None,
        endpoint_propagation: cluster::Propagation::Both,
        relay: None,
        tls: None,
        supervisor: None,
        network,
        nodes: lab_nodes,
        objects: store.clone(),
        pods: BTreeMap::new(),
        identities: BTreeMap::new(),
        service_ips: BTreeMap::new(),
    };
    let mut used = BTreeSet::new();
    let mut ids: BTreeMap<String, u16> = BTreeMap::new();
    let mut network = state.network.clone();
    for pod in store.pods.values() {
        let labels = cluster::identity_labels(&store, pod);
        let identity = cluster::allocate_identity(&mut state, &labels);
        let node_name = manifest::node_name(pod).unwrap_or("node-1").to_owned();
        let node = state.nodes.iter().find(|n| n.name == node_name).ok_or(format!("no node {node_name}"))?.clone();
        let ip = cluster::allocate_ip(&mut network, &node, nodes, &used).ok_or("no address")?;
        used.insert(ip);
        let id = ids.entry(node_name.clone()).or_default();
        *id += 1;
        state.pods.insert(
            format!("{}/{}", pod.namespace(), pod.name()),
            PodRuntime {
                namespace: pod.namespace().to_owned(),
                name: pod.name().to_owned(),
                node: node_name,
                ip,
                endpoint_id: *id,
                host_ifname: sightline_cni::host_ifname(&format!("{}.{}", pod.namespace(), pod.name()), "eth0"),
                identity,
                responder_pid: 0,
                ports: Vec::new(),
            },
        );
    }
    state.network = network;
    let mut next = 10u32;
    for svc in store.services.values() {
        let ip = manifest::requested_cluster_ip(svc).unwrap_or_else(|| {
            next += 1;
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + next)
        });
        state.service_ips.insert(format!("{}/{}", svc.namespace(), svc.name()), ip);
    }
    Ok(state)
}

/// The same manifests as the API server would hold them (k8s-openapi's own
/// deserialization of the YAML, the server's namespace defaulting), with
/// the lab's pod addresses and nodes and cluster IPs, and a Node object per
/// lab node (its pod range, its addresses as InternalIPs).
fn api_objects(text: &str, lab: &LabState) -> Objects {
    use serde::Deserialize as _;
    let mut objects = Objects::default();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).expect("the lab parsed it");
        if value.is_null() {
            continue;
        }
        let mut value: serde_json::Value = serde_json::to_value(&value).expect("YAML maps to JSON");
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        if kind != "Namespace" && value["metadata"]["namespace"].as_str().is_none_or(str::is_empty) {
            value["metadata"]["namespace"] = "default".into();
        }
        match kind.as_str() {
            "Namespace" => objects.namespaces.push(Arc::new(serde_json::from_value(value).expect("a Namespace"))),
            "Pod" => {
                let mut pod: core::Pod = serde_json::from_value(value).expect("a Pod");
                let key = format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default());
                let rt = &lab.pods[&key];
                pod.spec.get_or_insert_with(Default::default).node_name = Some(rt.node.clone());
                pod.status = Some(core::PodStatus {
                    phase: Some("Running".into()),
                    pod_ip: Some(rt.ip.to_string()),
                    ..Default::default()
                });
                objects.pods.push(Arc::new(pod));
            }
            "Service" => {
                let mut svc: core::Service = serde_json::from_value(value).expect("a Service");
                let key = format!("{}/{}", svc.metadata.namespace.as_deref().unwrap_or_default(), svc.metadata.name.as_deref().unwrap_or_default());
                svc.spec.get_or_insert_with(Default::default).cluster_ip = Some(lab.service_ips[&key].to_string());
                objects.services.push(Arc::new(svc));
            }
            "NetworkPolicy" => objects.policies.push(Arc::new(serde_json::from_value::<net::NetworkPolicy>(value).expect("a NetworkPolicy"))),
            other => panic!("a manifest of kind {other}"),
        }
    }
    // The API server makes `default` (and the lab's store has it).
    if !objects.namespaces.iter().any(|n| n.metadata.name.as_deref() == Some("default")) {
        objects.namespaces.push(Arc::new(core::Namespace {
            metadata: sightline_collector::kubernetes::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        }));
    }
    // What the EndpointSlice controller would have written: per service,
    // one slice per set of ports, its endpoints ready.
    if let Some(first) = lab.nodes.first() {
        for svc in cluster::node_state(lab, first).services {
            let endpoints = svc.endpoints.clone().unwrap_or_default();
            let mut by_ports: BTreeMap<Vec<sightline_collector::state::EndpointPort>, Vec<String>> = BTreeMap::new();
            for e in endpoints {
                by_ports.entry(e.ports).or_default().push(e.ip.to_string());
            }
            for (i, (ports, addresses)) in by_ports.into_iter().enumerate() {
                let slice = serde_json::json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"namespace": svc.namespace, "name": format!("{}-{i}", svc.name), "labels": {translate::SERVICE_NAME_LABEL: svc.name}},
                    "addressType": "IPv4",
                    "endpoints": addresses.iter().map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>(),
                    "ports": ports.iter().map(|p| serde_json::json!({"name": p.name.clone().unwrap_or_default(), "port": p.port, "protocol": p.protocol})).collect::<Vec<_>>(),
                });
                objects.slices.push(Arc::new(serde_json::from_value(slice).expect("an EndpointSlice")));
            }
        }
    }
    for (i, node) in lab.nodes.iter().enumerate() {
        let mut addresses = vec![core::NodeAddress { type_: "InternalIP".into(), address: node.node_ip.to_string() }];
        if lab.nodes.len() > 1 {
            addresses.push(core::NodeAddress { type_: "InternalIP".into(), address: lab.network.fabric_ip(i as u32 + 1).to_string() });
        }
        objects.nodes.push(Arc::new(core::Node {
            metadata: sightline_collector::kubernetes::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(node.name.clone()),
                ..Default::default()
            },
            spec: Some(core::NodeSpec { pod_cidr: Some(node.pod_cidr.clone()), ..Default::default() }),
            status: Some(core::NodeStatus { addresses: Some(addresses), ..Default::default() }),
        }));
    }
    objects
}

/// A state with identities replaced by their label sets, lists sorted and
/// endpoints left out: what both sources must agree on.
fn normalized(state: &NodeState) -> serde_json::Value {
    let labels: BTreeMap<u32, Vec<String>> = state.identities.iter().map(|i| (i.id, i.labels.clone())).collect();
    let name = |id: u32| -> serde_json::Value {
        if id < sightline_abi::IDENTITY_USER_MIN { serde_json::json!(id) } else { serde_json::json!(labels.get(&id)) }
    };
    let mut pods: Vec<serde_json::Value> = state
        .pods
        .iter()
        .map(|p| serde_json::json!([p.namespace, p.name, p.ip, p.node, name(p.identity), p.labels, p.ports]))
        .collect();
    pods.sort_by_key(|v| v.to_string());
    let mut ipcache: Vec<serde_json::Value> =
        state.ipcache.iter().map(|e| serde_json::json!([e.cidr, name(e.identity), e.tunnel_endpoint])).collect();
    ipcache.sort_by_key(|v| v.to_string());
    let identities: BTreeSet<&Vec<String>> = state.identities.iter().map(|i| &i.labels).collect();
    let mut policies = state.policies.clone();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut services = state.services.clone();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    serde_json::json!({
        "node_name": state.node_name,
        "pod_cidr": state.pod_cidr,
        "node_ip": state.node_ip,
        "identities": identities,
        "ipcache": ipcache,
        "namespaces": state.namespaces,
        "pods": pods,
        "policies": policies,
        "services": services,
        "policy_audit": state.policy_audit,
        "tunnel": state.tunnel,
    })
}

/// Compares both sources on every node for one set of manifests.
fn check(what: &str, text: &str, nodes: u32) {
    let lab = lab_state(text, nodes).unwrap_or_else(|e| panic!("{what}: the lab refused it: {e}"));
    let objects = api_objects(text, &lab);
    for node in &lab.nodes {
        let from_lab = cluster::node_state(&lab, node);
        let from_api = translate::node_state(&node.name, &objects).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(from_api.endpoints.is_empty());
        let (a, b) = (normalized(&from_lab), normalized(&from_api));
        assert!(
            a == b,
            "{what} on {}: the sources differ\nlab:        {}\nkubernetes: {}",
            node.name,
            serde_json::to_string_pretty(&a).unwrap(),
            serde_json::to_string_pretty(&b).unwrap()
        );
        // Every service port as both sides see it (also inside the above).
        for svc in &from_api.services {
            assert!(svc.ports.iter().all(|p| matches!(&p.target_port, TargetPort::Number(n) if *n > 0) || matches!(&p.target_port, TargetPort::Name(_))));
        }
    }
}

/// The string literals of a Rust source: plain ones (escapes and line
/// continuations resolved) and raw ones.
fn literals(source: &str) -> Vec<String> {
    let b = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        // Comments and char literals are skipped.
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            i += if b[i + 1] == b'\\' { 4 } else { 3 };
            continue;
        }
        if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) == Some(&b'"') {
                let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                let start = j + 1;
                if let Some(end) = b[start..].windows(close.len()).position(|w| w == close.as_slice()) {
                    out.push(String::from_utf8_lossy(&b[start..start + end]).into_owned());
                    i = start + end + close.len();
                    continue;
                }
            }
        }
        if b[i] == b'"' {
            let mut s = Vec::new();
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                if b[j] == b'\\' && j + 1 < b.len() {
                    match b[j + 1] {
                        b'n' => s.push(b'\n'),
                        b't' => s.push(b'\t'),
                        b'\n' => {
                            j += 2;
                            while j < b.len() && b[j].is_ascii_whitespace() {
                                j += 1;
                            }
                            continue;
                        }
                        c => s.push(c),
                    }
                    j += 2;
                } else {
                    s.push(b[j]);
                    j += 1;
                }
            }
            out.push(String::from_utf8_lossy(&s).into_owned());
            i = j + 1;
            continue;
        }
        i += 1;
    }
    out
}

const E2E_SOURCES: &[(&str, &str)] = &[
    ("tests/src/lib.rs", include_str!("../../tests/src/lib.rs")),
    ("tests/tests/control.rs", include_str!("../../tests/tests/control.rs")),
    ("tests/tests/demo.rs", include_str!("../../tests/tests/demo.rs")),
    ("tests/tests/endpointslices.rs", include_str!("../../tests/tests/endpointslices.rs")),
    ("tests/tests/events.rs", include_str!("../../tests/tests/events.rs")),
    ("tests/tests/export.rs", include_str!("../../tests/tests/export.rs")),
    ("tests/tests/flows.rs", include_str!("../../tests/tests/flows.rs")),
    ("tests/tests/hubble_compat.rs", include_str!("../../tests/tests/hubble_compat.rs")),
    ("tests/tests/lab.rs", include_str!("../../tests/tests/lab.rs")),
    ("tests/tests/metrics.rs", include_str!("../../tests/tests/metrics.rs")),
    ("tests/tests/multinode.rs", include_str!("../../tests/tests/multinode.rs")),
    ("tests/tests/netpol.rs", include_str!("../../tests/tests/netpol.rs")),
    ("tests/tests/network_models.rs", include_str!("../../tests/tests/network_models.rs")),
    ("tests/tests/policy.rs", include_str!("../../tests/tests/policy.rs")),
    ("tests/tests/relay.rs", include_str!("../../tests/tests/relay.rs")),
    ("tests/tests/restart.rs", include_str!("../../tests/tests/restart.rs")),
    ("tests/tests/services.rs", include_str!("../../tests/tests/services.rs")),
    ("tests/tests/supervision.rs", include_str!("../../tests/tests/supervision.rs")),
    ("tests/tests/tls.rs", include_str!("../../tests/tests/tls.rs")),
    ("tests/tests/tunnel.rs", include_str!("../../tests/tests/tunnel.rs")),
];

/// A plain string literal at the start of `s` (after whitespace and one
/// optional comma): its value and where it ends.
fn literal_at(s: &str) -> Option<(String, usize)> {
    let start = s.len() - s.trim_start_matches(|c: char| c.is_whitespace() || c == ',').len();
    if !s[start..].starts_with('"') {
        return None;
    }
    let value = literals(&s[start..]).into_iter().next()?;
    // Its end: the first unescaped quote after the opening one.
    let b = s.as_bytes();
    let mut j = start + 1;
    while j < b.len() && b[j] != b'"' {
        j += if b[j] == b'\\' { 2 } else { 1 };
    }
    Some((value, j + 1))
}

/// Every `np("ns", "name", "spec")` of netpol.rs whose three arguments are
/// literals.
fn netpol_policies(source: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (at, _) in source.match_indices("np(\"") {
        let rest = &source[at + 3..];
        let Some((ns, a)) = literal_at(rest) else { continue };
        let Some((name, b)) = literal_at(&rest[a..]) else { continue };
        let Some((spec, c)) = literal_at(&rest[a + b..]) else { continue };
        if rest[a + b + c..].trim_start().starts_with(')') {
            out.push((ns, name, spec));
        }
    }
    out
}

#[test]
fn the_kubernetes_source_builds_the_labs_state_from_the_same_objects() {
    let mut checked = 0;
    // The demo's sample app.
    check("the demo's sample app", crate::sample::DEMO_APP, 1);
    checked += 1;
    // The xyz fixture (the one the e2e suite uses), on one node and on three.
    check("xyz on one node", &xyz(1), 1);
    check("xyz on three nodes", &xyz(3), 3);
    checked += 2;
    // Every whole manifest literal of the e2e sources.
    for (file, source) in E2E_SOURCES {
        for (n, text) in literals(source).into_iter().enumerate() {
            if !text.contains("kind:") || text.contains("{}") || text.contains('@') {
                continue;
            }
            // Format strings: `{{` is a brace; ones with placeholders are
            // templates (rendered below where they are policies).
            if text.contains('{') && text.contains("{{") == false && manifest::parse_manifests("t", &text).is_err() {
                continue;
            }
            let text = text.replace("{{", "{").replace("}}", "}");
            let Ok(objects) = manifest::parse_manifests("t", &text) else { continue };
            if objects.is_empty() {
                continue;
            }
            // Manifests that name pods of xyz or policies go on top of xyz.
            let only_policies = objects.iter().all(|o| matches!(o.object, manifest::Object::NetworkPolicy(_)));
            let text = if only_policies { format!("{}---\n{text}", xyz(3)) } else { text };
            let nodes = if text.contains("node-3") { 3 } else if text.contains("node-2") { 2 } else { 1 };
            if lab_state(&text, nodes).is_err() {
                continue;
            }
            check(&format!("{file} literal {n}"), &text, nodes);
            checked += 1;
        }
    }
    // Every NetworkPolicy of the conformance suite, on top of xyz over
    // three nodes (`@ip(ns/pod)` and `@podcidr` as the suite resolves them).
    let policies = netpol_policies(E2E_SOURCES.iter().find(|(f, _)| *f == "tests/tests/netpol.rs").expect("listed").1);
    assert!(policies.len() >= 30, "netpol.rs has {} np(…) policies", policies.len());
    let base = lab_state(&xyz(3), 3).expect("xyz");
    for (ns, name, spec) in &policies {
        let mut spec = spec.replace("@podcidr", &base.network.pod_range.to_string());
        while let Some(at) = spec.find("@ip(") {
            let end = at + spec[at..].find(')').expect("@ip(…) closes");
            let ip = base.pods[&spec[at + 4..end]].ip;
            spec.replace_range(at..=end, &ip.to_string());
        }
        let doc = format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: \"{ns}\"\nspec: {spec}\n");
        check(&format!("netpol.rs policy {ns}/{name}"), &format!("{}---\n{doc}", xyz(3)), 3);
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} manifests compared");
    eprintln!("{checked} manifest sets compared");
}
