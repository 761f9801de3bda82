//! `lab status`: what the lab is made of, as a table or as the JSON object
//! of the lab contract.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::cluster::LabState;

/// The `lab status -o json` object.
pub fn json(state: &LabState) -> Value {
    let nodes: Vec<Value> = state
        .nodes
        .iter()
        .map(|n| {
            json!({
                "name": n.name,
                "pod_cidr": n.pod_cidr,
                "node_ip": n.node_ip.to_string(),
                // The gRPC Observer and metrics endpoints are not served yet.
                "collector": {"grpc": Value::Null, "metrics": Value::Null,
                               "control": n.control_socket.display().to_string(),
                               "pid": n.collector_pid},
            })
        })
        .collect();
    let pods: Vec<Value> = state
        .pods
        .values()
        .map(|p| {
            json!({"namespace": p.namespace, "name": p.name, "ip": p.ip.to_string(), "node": p.node,
                   "identity": p.identity, "endpoint_id": p.endpoint_id, "ports": p.ports})
        })
        .collect();
    let services: Vec<Value> = state
        .objects
        .services
        .values()
        .map(|s| {
            let key = format!("{}/{}", s.namespace, s.name);
            json!({"namespace": s.namespace, "name": s.name,
                   "cluster_ip": state.service_ips.get(&key).map(ToString::to_string),
                   "ports": s.ports.iter().map(|p| p.port).collect::<Vec<_>>()})
        })
        .collect();
    let policies: Vec<Value> = state
        .objects
        .policies
        .values()
        .map(|p| json!({"namespace": p.namespace, "name": p.name}))
        .collect();
    json!({
        "name": state.name,
        "aggregation": state.aggregation,
        "nodes": nodes,
        "relay": Value::Null,
        "pods": pods,
        "services": services,
        "policies": policies,
    })
}

/// A human-readable summary.
pub fn table(state: &LabState) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "lab {} (aggregation {})", state.name, state.aggregation);
    let _ = writeln!(out, "\nNODE      POD CIDR          NODE IP        COLLECTOR");
    for n in &state.nodes {
        let _ = writeln!(out, "{:<9} {:<17} {:<14} pid {} ({})", n.name, n.pod_cidr, n.node_ip, n.collector_pid, n.control_socket.display());
    }
    let _ = writeln!(out, "\nPOD                            IP             NODE      IDENTITY  PORTS");
    for p in state.pods.values() {
        let _ = writeln!(
            out,
            "{:<30} {:<14} {:<9} {:<9} {}",
            format!("{}/{}", p.namespace, p.name),
            p.ip,
            p.node,
            p.identity,
            p.ports.join(",")
        );
    }
    if !state.objects.services.is_empty() {
        let _ = writeln!(out, "\nSERVICE                        CLUSTER IP     PORTS");
        for s in state.objects.services.values() {
            let key = format!("{}/{}", s.namespace, s.name);
            let ip = state.service_ips.get(&key).map(ToString::to_string).unwrap_or_default();
            let ports: Vec<String> = s.ports.iter().map(|p| p.port.to_string()).collect();
            let _ = writeln!(out, "{key:<30} {ip:<14} {}", ports.join(","));
        }
    }
    if !state.objects.policies.is_empty() {
        let _ = writeln!(out, "\nNETWORK POLICY");
        for p in state.objects.policies.values() {
            let _ = writeln!(out, "{}/{}", p.namespace, p.name);
        }
    }
    out
}
