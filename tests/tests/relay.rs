//! The relay: one Observer API for every node of a lab, flows merged in time
//! order, node status reported, and a node that stops answering reported as
//! unavailable while the others' flows keep coming.

use std::time::Duration;

use sightline_e2e::{GrpcAccess, Lab, require_root, sightline};
use sightline_proto::flow::FlowFilter;
use sightline_proto::observer::observer_client::ObserverClient;
use sightline_proto::observer::{GetFlowsRequest, GetNodesRequest, ServerStatusRequest, get_flows_response::ResponseTypes};
use sightline_proto::relay::NodeState;

const APP: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec:
  nodeName: node-2
  containers: [{name: c, ports: [{containerPort: 80}]}]
";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// (node status events, (node, seconds, nanos) of each flow) of one request.
async fn get_flows(access: &GrpcAccess, relay: &str, req: GetFlowsRequest) -> (Vec<(i32, Vec<String>)>, Vec<(String, i64, i32)>) {
    let mut c = ObserverClient::new(access.channel(relay).await);
    let mut stream = c.get_flows(req).await.expect("GetFlows").into_inner();
    let (mut status, mut flows) = (Vec::new(), Vec::new());
    while let Some(r) = stream.message().await.expect("stream") {
        match r.response_types {
            Some(ResponseTypes::NodeStatus(s)) => status.push((s.state_change, s.node_names)),
            Some(ResponseTypes::Flow(_)) => {
                let t = r.time.expect("time");
                flows.push((r.node_name, t.seconds, t.nanos));
            }
            _ => {}
        }
    }
    (status, flows)
}

fn collector_pid(lab: &str, node: &str) -> u32 {
    let text = std::fs::read_to_string(format!("/run/sightline/labs/{lab}/state.json")).expect("lab state");
    let state: serde_json::Value = serde_json::from_str(&text).expect("state JSON");
    let nodes = state["nodes"].as_array().expect("nodes");
    let n = nodes.iter().find(|n| n["name"] == node).expect("node");
    u32::try_from(n["collector_pid"].as_u64().expect("pid")).expect("pid")
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn the_relay_merges_every_nodes_flows_and_reports_the_nodes() {
    if !require_root() {
        return;
    }
    // No supervisor: node-3's collector, killed below, must stay down.
    let lab = Lab::up("e2e-relay", APP, &["--nodes", "3", "--no-supervisor"]);
    let relay = lab.status()["relay"]["grpc"].as_str().expect("the lab reports its relay").to_owned();
    for _ in 0..3 {
        assert!(lab.probe("x/a", "x/b", 80, "TCP"));
    }
    // Both ends in their collectors' stores: node-1 (egress), node-2 (ingress).
    let between_pods = ["--from-pod", "x/a", "--to-pod", "x/b"];
    lab.wait_flows("node-1's and node-2's flows through the relay", &[&between_pods[..], &["--server", &relay]].concat(), |flows| {
        ["node-1", "node-2"].iter().all(|n| flows.iter().any(|f| f["node_name"] == *n))
    });
    let between = FlowFilter { source_pod: vec!["x/a".into()], destination_pod: vec!["x/b".into()], ..FlowFilter::default() };
    let access = lab.grpc();

    rt().block_on(async {
        let req = GetFlowsRequest { number: 1000, whitelist: vec![between.clone()], ..GetFlowsRequest::default() };
        let (status, flows) = get_flows(&access, &relay, req.clone()).await;
        assert_eq!(status, [(NodeState::NodeConnected as i32, vec!["node-1".to_owned(), "node-2".to_owned(), "node-3".to_owned()])]);
        // Both ends of the connections: node-1 (egress) and node-2 (ingress).
        for node in ["node-1", "node-2"] {
            assert!(flows.iter().any(|f| f.0 == node), "no flow from {node}");
        }
        // In time order across nodes.
        let times: Vec<(i64, i32)> = flows.iter().map(|f| (f.1, f.2)).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "flows out of order: {times:?}");

        let mut c = ObserverClient::new(access.channel(&relay).await);
        let s = c.server_status(ServerStatusRequest {}).await.expect("status").into_inner();
        assert_eq!((s.num_connected_nodes, s.num_unavailable_nodes), (Some(3), Some(0)));
        assert_eq!(s.max_flows, 3 * 4095);
        assert!(s.version.contains("relay"), "{}", s.version);
        let nodes = c.get_nodes(GetNodesRequest {}).await.expect("nodes").into_inner().nodes;
        assert_eq!(nodes.len(), 3);
        assert!(nodes.iter().all(|n| n.state == NodeState::NodeConnected as i32 && n.max_flows == 4095), "{nodes:?}");

        // A bad filter is refused by the nodes, and the client hears why.
        let bad = GetFlowsRequest {
            whitelist: vec![FlowFilter { source_ip: vec!["10.0.0.0/33".into()], ..FlowFilter::default() }],
            ..GetFlowsRequest::default()
        };
        let err = match c.get_flows(bad).await {
            Err(e) => e,
            Ok(r) => r.into_inner().message().await.expect_err("refused"),
        };
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

        // node-3's collector stops: it is reported unavailable, the others
        // still answer.
        let pid = collector_pid(&lab.name, "node-3");
        // SAFETY: plain kill(2) of a process this lab started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        sightline_e2e::wait_until("node-3's collector to be gone", Duration::from_secs(10), || {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            (state.is_empty() || state.contains(") Z ")).then_some(())
        });
        let (status, flows) = get_flows(&access, &relay, req).await;
        assert!(status.contains(&(NodeState::NodeUnavailable as i32, vec!["node-3".to_owned()])), "{status:?}");
        assert!(flows.iter().any(|f| f.0 == "node-2"));
        let s = c.server_status(ServerStatusRequest {}).await.expect("status").into_inner();
        assert_eq!((s.num_connected_nodes, s.num_unavailable_nodes), (Some(2), Some(1)));
        assert_eq!(s.unavailable_nodes, ["node-3"]);
    });

    // `sightline observe` reads the relay by default.
    let out = sightline(&["observe", "--lab", &lab.name, "--from-pod", "x/a", "--to-pod", "x/b", "--last", "100", "--print-node-name"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("[node-1]") && text.contains("[node-2]"), "{text}");
    // … and its agent events, of every node that answers, in time order.
    let out = sightline(&["observe", "agent-events", "--lab", &lab.name, "--all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for node in ["node-1", "node-2"] {
        assert!(text.contains(&format!("[{node}]: AGENT_STARTED")), "{text}");
    }
}
