//! Wire compatibility: a client generated from the upstream Hubble `.proto`
//! files (`../shared/reference/hubble-api`, when present) talks to a lab's
//! collector and relay over the lab's mutual TLS (the lab's CA and client
//! certificate, Hubble's server names): GetFlows, ServerStatus, GetNodes,
//! GetNamespaces, Peer.Notify.

#[cfg(not(upstream_hubble))]
#[test]
#[ignore = "../shared/reference/hubble-api not found (the upstream Hubble protos): nothing to compare against"]
fn upstream_hubble_client_works_against_the_collector() {
    panic!("../shared/reference/hubble-api not found (the upstream Hubble protos): nothing to compare against");
}

#[cfg(upstream_hubble)]
mod upstream {
    #![allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs, dead_code, reason = "generated from the upstream protos")]
    pub mod flow {
        tonic::include_proto!("flow");
    }
    pub mod relay {
        tonic::include_proto!("relay");
    }
    pub mod observer {
        tonic::include_proto!("observer");
    }
    pub mod peer {
        tonic::include_proto!("peer");
    }
}

#[cfg(upstream_hubble)]
#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn upstream_hubble_client_works_against_the_collector() {
    use std::time::Duration;

    use sightline_e2e::{Lab, require_root, xyz_manifests};
    use tokio_stream::StreamExt as _;
    use upstream::observer::observer_client::ObserverClient;
    use upstream::observer::{GetFlowsRequest, GetNamespacesRequest, GetNodesRequest, ServerStatusRequest};
    use upstream::peer::NotifyRequest;
    use upstream::peer::peer_client::PeerClient;

    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-hubble", &xyz_manifests(), &[]);
    assert!(lab.probe("x/a", "y/b", 80, "TCP"));
    lab.wait_flows("the probe's flows", &["--from-pod", "x/a", "--to-pod", "y/b"], |f| !f.is_empty());
    let lab_status = lab.status();
    let addr = lab_status["nodes"][0]["collector"]["grpc"].as_str().unwrap().to_owned();
    assert_eq!(lab_status["nodes"][0]["collector"]["tls_server_name"], "node-1.default.hubble-grpc.cilium.io");
    let access = lab.grpc();
    assert!(access.tls.is_some(), "the lab runs TLS by default");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = ObserverClient::new(access.channel(&addr).await);
        let status = c.server_status(ServerStatusRequest {}).await.unwrap().into_inner();
        assert_eq!(status.max_flows, 4095);
        assert!(status.seen_flows > 0 && status.num_flows > 0 && status.uptime_ns > 0);
        assert_eq!(status.num_connected_nodes, Some(1));

        let mut stream = c.get_flows(GetFlowsRequest { number: 50, ..Default::default() }).await.unwrap().into_inner();
        let mut flows = Vec::new();
        while let Some(r) = stream.next().await {
            let r = r.unwrap();
            assert!(r.time.is_some(), "GetFlowsResponse.time is set (the relay sorts on it)");
            assert_eq!(r.node_name, "node-1");
            if let Some(upstream::observer::get_flows_response::ResponseTypes::Flow(f)) = r.response_types {
                flows.push(f);
            }
        }
        assert!(!flows.is_empty());
        let f = flows.iter().find(|f| f.source.as_ref().is_some_and(|s| s.pod_name == "a")).expect("a flow of x/a");
        assert_eq!(f.source.as_ref().unwrap().namespace, "x");
        assert!(f.ip.as_ref().is_some_and(|ip| !ip.source.is_empty()));
        assert!(matches!(f.l4.as_ref().and_then(|l| l.protocol.as_ref()), Some(upstream::flow::layer4::Protocol::Tcp(_))));
        assert_eq!(f.r#type, upstream::flow::FlowType::L3L4 as i32);

        let nodes = c.get_nodes(GetNodesRequest {}).await.unwrap().into_inner().nodes;
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].name, "node-1");
        assert_eq!(nodes[0].state, upstream::relay::NodeState::NodeConnected as i32);

        let namespaces = c.get_namespaces(GetNamespacesRequest {}).await.unwrap().into_inner().namespaces;
        let names: Vec<&str> = namespaces.iter().map(|n| n.namespace.as_str()).collect();
        assert!(names.contains(&"x") && names.contains(&"y"), "{names:?}");

        let mut peers = PeerClient::new(access.channel(&addr).await);
        let mut notes = peers.notify(NotifyRequest {}).await.unwrap().into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), notes.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(first.name, "node-1");
        assert_eq!(first.r#type, upstream::peer::ChangeNotificationType::PeerAdded as i32);
        assert!(!first.address.is_empty());

        // The relay, with the same client: node status first, then the
        // node's flows; the status aggregated.
        let relay = lab_status["relay"]["grpc"].as_str().expect("relay");
        let mut r = ObserverClient::new(access.channel(relay).await);
        let mut stream = r.get_flows(GetFlowsRequest { number: 20, ..Default::default() }).await.unwrap().into_inner();
        let first = stream.next().await.expect("an item").unwrap();
        match first.response_types {
            Some(upstream::observer::get_flows_response::ResponseTypes::NodeStatus(s)) => {
                assert_eq!(s.state_change, upstream::relay::NodeState::NodeConnected as i32);
                assert_eq!(s.node_names, ["node-1"]);
            }
            other => panic!("the relay starts with the node status, not {other:?}"),
        }
        let mut relayed = 0;
        while let Some(item) = stream.next().await {
            if let Some(upstream::observer::get_flows_response::ResponseTypes::Flow(_)) = item.unwrap().response_types {
                relayed += 1;
            }
        }
        assert!(relayed > 0);
        let status = r.server_status(ServerStatusRequest {}).await.unwrap().into_inner();
        assert_eq!((status.num_connected_nodes, status.num_unavailable_nodes), (Some(1), Some(0)));
    });
}
