//! `lab status`: what the lab is made of, as a table or as the JSON object
//! of the lab contract.

use std::fmt::Write as _;

use serde_json::{Value, json};
use sightline_collector::control;

use super::cluster::LabState;
use super::manifest::{self, Named as _};

/// The `lab status -o json` object.
pub fn json(state: &LabState) -> Value {
    let nodes: Vec<Value> = state
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            json!({
                "name": n.name,
                "pod_cidr": n.pod_cidr,
                "pod_blocks": state.network.blocks_of(&n.name).map(|b| b.to_string()).collect::<Vec<_>>(),
                "node_ip": n.node_ip.to_string(),
                "cni_conf": Some(super::cni::conflist_path(&state.name, &n.name)).filter(|p| p.exists()).map(|p| p.display().to_string()),
                "fabric_ip": (state.nodes.len() > 1).then(|| state.network.fabric_ip(i as u32 + 1).to_string()),
                "collector": {"grpc": n.grpc, "metrics": n.metrics,
                               "control": n.control_socket.display().to_string(),
                               "tls_server_name": state.tls.as_ref().map(|_| super::pki::collector_server_name(&n.name)),
                               "running": state.datapath && super::cluster::collector_running(n),
                               "pid": n.collector_pid, "restarts": n.collector_restarts,
                               "stats": collector_stats(state, n)},
            })
        })
        .collect();
    let pods: Vec<Value> = state
        .pods
        .values()
        .map(|p| {
            json!({"namespace": p.namespace, "name": p.name, "ip": p.ip.to_string(), "node": p.node,
                   "identity": p.identity, "endpoint_id": p.endpoint_id, "host_ifname": p.host_ifname,
                   "container_id": super::cni::container_id(&state.name, &p.namespace, &p.name), "ports": p.ports})
        })
        .collect();
    let services: Vec<Value> = state
        .objects
        .services
        .values()
        .map(|s| {
            let key = format!("{}/{}", s.namespace(), s.name());
            json!({"namespace": s.namespace(), "name": s.name(),
                   "cluster_ip": state.service_ips.get(&key).map(ToString::to_string),
                   "ports": manifest::service_ports(s).iter().map(|p| p.port).collect::<Vec<_>>()})
        })
        .collect();
    let policies: Vec<Value> = state
        .objects
        .policies
        .values()
        .map(|p| json!({"namespace": p.namespace(), "name": p.name()}))
        .collect();
    json!({
        "name": state.name,
        "aggregation": state.aggregation,
        "network": {"model": state.network.model.as_str(), "node_subnet": state.network.node_subnet.to_string(),
                    "pod_range": state.network.pod_range.to_string(),
                    "tunnel": state.network.tunnel.map(|t| t.as_str()), "pod_mtu": state.network.pod_mtu()},
        "nodes": nodes,
        "relay": state.relay.as_ref().map(|r| json!({"grpc": r.grpc, "metrics": r.metrics, "pid": r.pid, "restarts": r.restarts,
                                                     "export_config": r.export_config.as_ref().map(|p| p.display().to_string())})),
        "supervisor": state.supervisor.as_ref().map(|s| json!({"pid": s.pid, "running": running(s.pid)})),
        "prometheus": state.prometheus.as_ref().map(|p| p.address.clone()),
        // The lab's etcd (`lab up --kvstore`); null without one.
        "kvstore": state.kvstore.as_ref().map(|k| json!({"endpoints": [k.client_url], "pid": k.pid, "restarts": k.restarts,
                                                          "running": super::cluster::kvstore_running(k),
                                                          "data_dir": k.data_dir.display().to_string()})),
        "endpoint_propagation": state.endpoint_propagation.as_str(),
        // What a client of the relay (or of a collector, with the node's
        // tls_server_name) needs; null with --no-tls.
        "tls": state.tls.as_ref().map(|t| json!({"ca": t.ca.display().to_string(),
                                                 "client_cert": t.client_cert.display().to_string(),
                                                 "client_key": t.client_key.display().to_string(),
                                                 "server_name": t.server_name})),
        "pods": pods,
        // Pods of the store not plugged in yet: their node's collector was
        // down when they were applied.
        "pending_pods": state.objects.pods.keys()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .filter(|key| !state.pods.contains_key(key))
            .collect::<Vec<_>>(),
        "services": services,
        "policies": policies,
    })
}

/// Whether `pid` runs (not a zombie).
fn running(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid != 0 && unsafe { libc::kill(pid as i32, 0) } == 0 && !super::cluster::is_zombie(pid)
}

/// The collector's own counters (events, losses, conntrack), or null when
/// the lab runs without a datapath or the collector does not answer.
fn collector_stats(state: &LabState, node: &super::cluster::Node) -> Value {
    if !state.datapath {
        return Value::Null;
    }
    match control::status(&node.control_socket) {
        Ok(s) => serde_json::to_value(s).unwrap_or(Value::Null),
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// A human-readable summary.
pub fn table(state: &LabState) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lab {} (aggregation {}; network model {}, pods from {}, nodes in {})",
        state.name,
        state.aggregation,
        state.network.model.as_str(),
        state.network.pod_range,
        state.network.node_subnet
    );
    let mut rows = vec![cells(&["NODE", "POD CIDR", "NODE IP", "COLLECTOR"])];
    let mut details = Vec::new();
    for n in &state.nodes {
        rows.push(vec![
            n.name.clone(),
            n.pod_cidr.clone(),
            n.node_ip.to_string(),
            format!("pid {}, {} restart(s) ({})", n.collector_pid, n.collector_restarts, n.control_socket.display()),
        ]);
        let detail = if state.datapath {
            match control::status(&n.control_socket) {
                Ok(s) => {
                    let lost: u64 = s.events_lost_per_cpu.iter().sum();
                    format!(
                        "events {} decoded, {} lost (ring buffer full); {} connections tracked; {} packets forwarded, {} dropped; kernel drops {}",
                        s.events_decoded,
                        lost,
                        s.ct_entries,
                        s.packets_forwarded,
                        s.packets_dropped,
                        if s.kernel_drops_enabled { format!("{} seen", s.kernel_drops_seen) } else { "not reported (no BTF/tracefs)".into() },
                    )
                }
                Err(e) => format!("collector does not answer: {e}"),
            }
        } else {
            "no datapath (lab started with --no-datapath)".to_owned()
        };
        details.push(format!("{}: {detail}", n.name));
    }
    let _ = write!(out, "\n{}", crate::table::render(&rows));
    for d in details {
        let _ = writeln!(out, "  {d}");
    }
    if let Some(r) = &state.relay {
        let _ = writeln!(
            out,
            "\nRELAY     {} (pid {}, {} restart(s)): every node's flows, `sightline observe` reads it",
            r.grpc, r.pid, r.restarts
        );
        if let Some(m) = &r.metrics {
            let _ = writeln!(out, "          metrics http://{m}/metrics");
        }
        if let Some(c) = &r.export_config {
            let _ = writeln!(out, "          exporting as {} says", c.display());
        }
    }
    match &state.tls {
        Some(t) => {
            let _ = writeln!(out, "\nTLS       mutual TLS between every component; CA {}", t.ca.display());
            let _ = writeln!(
                out,
                "          clients: --tls --tls-ca-cert-files {} --tls-client-cert-file {} --tls-client-key-file {} --tls-server-name {} (sightline observe uses them by itself)",
                t.ca.display(),
                t.client_cert.display(),
                t.client_key.display(),
                t.server_name
            );
        }
        None if state.datapath => {
            let _ = writeln!(out, "\nTLS       off (lab up --no-tls): every gRPC API is plaintext");
        }
        None => {}
    }
    match &state.supervisor {
        Some(s) => {
            let _ = writeln!(
                out,
                "\nSUPERVISOR pid {}{}: restarts a collector or the relay that exits",
                s.pid,
                if running(s.pid) { "" } else { " (not running)" }
            );
        }
        None if state.datapath => {
            let _ = writeln!(out, "\nSUPERVISOR none: a collector or the relay that exits stays down");
        }
        None => {}
    }
    let mut rows = vec![cells(&["POD", "IP", "NODE", "IDENTITY", "PORTS"])];
    for p in state.pods.values() {
        rows.push(vec![format!("{}/{}", p.namespace, p.name), p.ip.to_string(), p.node.clone(), p.identity.to_string(), p.ports.join(",")]);
    }
    let _ = write!(out, "\n{}", crate::table::render(&rows));
    if !state.objects.services.is_empty() {
        let mut rows = vec![cells(&["SERVICE", "CLUSTER IP", "PORTS"])];
        for s in state.objects.services.values() {
            let key = format!("{}/{}", s.namespace(), s.name());
            let ip = state.service_ips.get(&key).map(ToString::to_string).unwrap_or_default();
            let ports: Vec<String> = manifest::service_ports(s).iter().map(|p| p.port.to_string()).collect();
            rows.push(vec![key, ip, ports.join(",")]);
        }
        let _ = write!(out, "\n{}", crate::table::render(&rows));
    }
    if !state.objects.policies.is_empty() {
        let _ = writeln!(out, "\nNETWORK POLICY");
        for p in state.objects.policies.values() {
            let _ = writeln!(out, "{}/{}", p.namespace(), p.name());
        }
    }
    out
}

/// `lab endpointslices`: one row per slice, as `kubectl get
/// ciliumendpointslices -A` prints them, with the owner and the endpoints.
#[must_use]
pub fn endpointslices_table(slices: &[sightline_collector::kvstore::EndpointSlice]) -> String {
    let mut rows = vec![cells(&["NAMESPACE", "NAME", "IDENTITY", "NODE", "COUNT", "ENDPOINTS"])];
    for s in slices {
        let names: Vec<String> = s.endpoints.iter().map(|e| format!("{}={}", e.name, e.ip)).collect();
        rows.push(vec![
            s.namespace.clone(),
            s.name.clone(),
            s.identity.to_string(),
            s.node.clone(),
            s.endpoints.len().to_string(),
            names.join(","),
        ]);
    }
    crate::table::render(&rows)
}

fn cells(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}
