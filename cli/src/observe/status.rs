//! `sightline status`, `list nodes`, `list namespaces`: how their answers
//! are printed.

use sightline_proto::observer::{GetNamespacesResponse, GetNodesResponse, ServerStatusResponse};
use sightline_proto::relay::NodeState;

use super::printer::render_table;
use super::time::format_duration_secs;

/// `1234567` → `1,234,567`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(seen: u64, uptime_ns: u64) -> Option<f64> {
    let secs = uptime_ns as f64 / 1e9;
    (secs > 0.0).then(|| seen as f64 / secs)
}

/// The human-readable `status` (hubble's wording, plus uptime and version).
pub fn status_text(addr: &str, r: &ServerStatusResponse) -> String {
    let mut s = format!("Healthcheck (via {addr}): Ok\n");
    let ratio = if r.max_flows > 0 {
        format!(" ({:.2}%)", r.num_flows as f64 / r.max_flows as f64 * 100.0)
    } else {
        String::new()
    };
    s.push_str(&format!("Current/Max Flows: {}/{}{ratio}\n", grouped(r.num_flows), grouped(r.max_flows)));
    let flows_per_sec = if r.flows_rate > 0.0 {
        format!("{:.2}", r.flows_rate)
    } else {
        rate(r.seen_flows, r.uptime_ns).map_or_else(|| "N/A".to_owned(), |v| format!("{v:.2}"))
    };
    s.push_str(&format!("Flows/s: {flows_per_sec}\n"));
    if let Some(connected) = r.num_connected_nodes {
        let total = r.num_unavailable_nodes.map_or_else(String::new, |u| format!("/{}", u.saturating_add(connected)));
        s.push_str(&format!("Connected Nodes: {connected}{total}\n"));
    }
    if let Some(unavailable) = r.num_unavailable_nodes.filter(|n| *n > 0) {
        s.push_str(&format!("Unavailable Nodes: {unavailable}\n"));
        let mut names = r.unavailable_nodes.clone();
        names.sort();
        let listed = u32::try_from(names.len()).unwrap_or(u32::MAX);
        if unavailable > listed {
            names.push(format!("and {} more...", unavailable - listed));
        }
        for n in names {
            s.push_str(&format!("  - {}\n", n.replace(char::is_control, "?")));
        }
    }
    s.push_str(&format!("Uptime: {}\n", format_duration_secs(r.uptime_ns / 1_000_000_000)));
    if !r.version.is_empty() {
        s.push_str(&format!("Version: {}\n", r.version.replace(char::is_control, "?")));
    }
    s
}

fn state_name(state: i32) -> &'static str {
    match NodeState::try_from(state) {
        Ok(NodeState::NodeConnected) => "Connected",
        Ok(NodeState::NodeUnavailable) => "Unavailable",
        Ok(NodeState::NodeGone) => "Gone",
        Ok(NodeState::NodeError) => "Error",
        _ => "Unknown",
    }
}

/// `list nodes`: NAME STATUS AGE FLOWS/S CURRENT/MAX-FLOWS, by name.
pub fn nodes_table(r: &GetNodesResponse) -> String {
    let mut nodes = r.nodes.clone();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = vec![["NAME", "STATUS", "AGE", "FLOWS/S", "CURRENT/MAX-FLOWS"].map(str::to_owned).to_vec()];
    for n in &nodes {
        let age = if n.uptime_ns > 0 { format_duration_secs(n.uptime_ns / 1_000_000_000) } else { "N/A".to_owned() };
        let flows = rate(n.seen_flows, n.uptime_ns).map_or_else(|| "N/A".to_owned(), |v| format!("{v:.2}"));
        let current = if n.max_flows > 0 {
            format!(
                "{}/{} ({:.2}%)",
                grouped(n.num_flows),
                grouped(n.max_flows),
                n.num_flows as f64 / n.max_flows as f64 * 100.0
            )
        } else {
            "N/A".to_owned()
        };
        rows.push(vec![n.name.replace(char::is_control, "?"), state_name(n.state).to_owned(), age, flows, current]);
    }
    render_table(&rows)
}

/// `list namespaces`: NAMESPACE (with CLUSTER first when any is named).
pub fn namespaces_table(r: &GetNamespacesResponse) -> String {
    let with_cluster = r.namespaces.iter().any(|n| !n.cluster.is_empty());
    let mut rows: Vec<Vec<String>> = Vec::new();
    rows.push(if with_cluster { vec!["CLUSTER".into(), "NAMESPACE".into()] } else { vec!["NAMESPACE".into()] });
    let mut list = r.namespaces.clone();
    list.sort_by(|a, b| (&a.cluster, &a.namespace).cmp(&(&b.cluster, &b.namespace)));
    for n in list {
        let ns = n.namespace.replace(char::is_control, "?");
        rows.push(if with_cluster { vec![n.cluster.replace(char::is_control, "?"), ns] } else { vec![ns] });
    }
    render_table(&rows)
}

#[cfg(test)]
mod tests {
    use sightline_proto::observer::{Namespace, Node};

    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(4095), "4,095");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn status() {
        let r = ServerStatusResponse {
            num_flows: 1234,
            max_flows: 4095,
            seen_flows: 10_000,
            uptime_ns: 3_723_000_000_000,
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            version: "sightline 0.1.0".into(),
            flows_rate: 12.345,
            ..ServerStatusResponse::default()
        };
        assert_eq!(
            status_text("127.0.0.1:4245", &r),
            "Healthcheck (via 127.0.0.1:4245): Ok\nCurrent/Max Flows: 1,234/4,095 (30.13%)\nFlows/s: 12.35\nConnected Nodes: 1/1\nUptime: 1h2m3s\nVersion: sightline 0.1.0\n"
        );
        // No rate from the server: computed from seen flows and uptime.
        let r = ServerStatusResponse {
            seen_flows: 100,
            uptime_ns: 50_000_000_000,
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(3),
            unavailable_nodes: vec!["node-3".into(), "node-2".into()],
            ..ServerStatusResponse::default()
        };
        assert_eq!(
            status_text("x:1", &r),
            "Healthcheck (via x:1): Ok\nCurrent/Max Flows: 0/0\nFlows/s: 2.00\nConnected Nodes: 1/4\nUnavailable Nodes: 3\n  - node-2\n  - node-3\n  - and 1 more...\nUptime: 50s\n"
        );
    }

    #[test]
    fn nodes() {
        let r = GetNodesResponse {
            nodes: vec![
                Node { name: "node-2".into(), state: NodeState::NodeUnavailable as i32, ..Node::default() },
                Node {
                    name: "node-1".into(),
                    state: NodeState::NodeConnected as i32,
                    uptime_ns: 125_000_000_000,
                    num_flows: 1234,
                    max_flows: 4095,
                    seen_flows: 2500,
                    ..Node::default()
                },
            ],
        };
        assert_eq!(
            nodes_table(&r),
            "NAME     STATUS        AGE    FLOWS/S   CURRENT/MAX-FLOWS\n\
             node-1   Connected     2m5s   20.00     1,234/4,095 (30.13%)\n\
             node-2   Unavailable   N/A    N/A       N/A\n"
        );
    }

    #[test]
    fn namespaces() {
        let r = GetNamespacesResponse {
            namespaces: vec![
                Namespace { cluster: String::new(), namespace: "y".into() },
                Namespace { cluster: String::new(), namespace: "x".into() },
            ],
        };
        assert_eq!(namespaces_table(&r), "NAMESPACE\nx\ny\n");
        let r = GetNamespacesResponse { namespaces: vec![Namespace { cluster: "c1".into(), namespace: "x".into() }] };
        assert_eq!(namespaces_table(&r), "CLUSTER   NAMESPACE\nc1        x\n");
    }
}
