//! The relay against in-process fake collectors (no root, no lab): merge
//! order, node status events, status aggregation, refused requests and
//! unreachable nodes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prost_types::Timestamp;
use sightline_proto::flow::Flow;
use sightline_proto::observer::observer_client::ObserverClient;
use sightline_proto::observer::observer_server::{Observer, ObserverServer};
use sightline_proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse, GetFlowsRequest,
    GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse, Namespace,
    ServerStatusRequest, ServerStatusResponse, get_flows_response::ResponseTypes,
};
use sightline_proto::relay::NodeState;
use sightline_relay::{Config, Peer, Relay};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A collector that holds flows at fixed times and refuses requests with a
/// whitelist (as a bad filter would be refused).
#[derive(Clone, Default)]
struct FakeNode {
    name: String,
    times: Vec<i64>,
    /// Follow streams currently open (they never end by themselves).
    following: Arc<AtomicUsize>,
}

/// Counts an open follow stream while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl Observer for FakeNode {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    async fn get_flows(&self, request: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        if !request.get_ref().whitelist.is_empty() {
            return Err(Status::invalid_argument("whitelist[0]: no such filter"));
        }
        let items: Vec<Result<GetFlowsResponse, Status>> = self
            .times
            .iter()
            .map(|&seconds| {
                Ok(GetFlowsResponse {
                    response_types: Some(ResponseTypes::Flow(Flow { node_name: self.name.clone(), ..Flow::default() })),
                    node_name: self.name.clone(),
                    time: Some(Timestamp { seconds, nanos: 0 }),
                })
            })
            .collect();
        if request.get_ref().follow {
            let open = Open::new(&self.following);
            let rest = tokio_stream::pending().map(move |item| {
                let _held = &open;
                item
            });
            return Ok(Response::new(Box::pin(tokio_stream::iter(items).chain(rest))));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn get_agent_events(&self, _: Request<GetAgentEventsRequest>) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::iter(Vec::new()))))
    }

    async fn get_debug_events(&self, _: Request<GetDebugEventsRequest>) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented("no"))
    }

    async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        Err(Status::unimplemented("no"))
    }

    async fn get_namespaces(&self, _: Request<GetNamespacesRequest>) -> Result<Response<GetNamespacesResponse>, Status> {
        let namespaces = vec![Namespace { namespace: "shared".into(), ..Namespace::default() }, Namespace {
            namespace: self.name.clone(),
            ..Namespace::default()
        }];
        Ok(Response::new(GetNamespacesResponse { namespaces }))
    }

    async fn server_status(&self, _: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(Response::new(ServerStatusResponse {
            num_flows: self.times.len() as u64,
            max_flows: 4095,
            seen_flows: 100,
            uptime_ns: 5,
            version: "fake".into(),
            ..ServerStatusResponse::default()
        }))
    }
}

async fn start(service: impl Observer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ObserverServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// A loopback port nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

async fn relay(peers: Vec<(&str, SocketAddr)>) -> ObserverClient<tonic::transport::Channel> {
    let mut config = Config::new("relay", peers.into_iter().map(|(n, a)| Peer { name: n.into(), address: a.to_string() }).collect());
    config.dial_timeout = Duration::from_millis(500);
    config.drain_timeout = Duration::from_millis(100);
    let relay = Relay::new(config).expect("relay");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sightline_relay::serve(relay, listener, None, std::future::pending()));
    ObserverClient::connect(format!("http://{addr}")).await.expect("connect to the relay")
}

#[tokio::test]
async fn flows_of_every_node_arrive_in_time_order_after_the_node_status() {
    let a = start(FakeNode { name: "node-a".into(), times: vec![1, 4, 5, 9], ..FakeNode::default() }).await;
    let b = start(FakeNode { name: "node-b".into(), times: vec![2, 3, 6, 7, 8], ..FakeNode::default() }).await;
    let mut c = relay(vec![("node-a", a), ("node-b", b), ("node-c", closed_port())]).await;

    let mut stream = c.get_flows(GetFlowsRequest::default()).await.expect("GetFlows").into_inner();
    let (mut status, mut times) = (Vec::new(), Vec::new());
    while let Some(r) = stream.message().await.expect("stream") {
        match r.response_types {
            Some(ResponseTypes::NodeStatus(s)) => {
                assert!(times.is_empty(), "node status comes first");
                status.push((s.state_change, s.node_names));
            }
            Some(ResponseTypes::Flow(f)) => {
                assert_eq!(f.node_name, r.node_name);
                times.push(r.time.expect("time").seconds);
            }
            _ => {}
        }
    }
    assert_eq!(
        status,
        [
            (NodeState::NodeConnected as i32, vec!["node-a".to_owned(), "node-b".to_owned()]),
            (NodeState::NodeUnavailable as i32, vec!["node-c".to_owned()]),
        ]
    );
    assert_eq!(times, [1, 2, 3, 4, 5, 6, 7, 8, 9]);

    let s = c.server_status(ServerStatusRequest {}).await.expect("status").into_inner();
    assert_eq!((s.num_connected_nodes, s.num_unavailable_nodes), (Some(2), Some(1)));
    assert_eq!(s.unavailable_nodes, ["node-c"]);
    assert_eq!((s.num_flows, s.max_flows, s.seen_flows, s.uptime_ns), (9, 8190, 200, 5));

    let nodes = c.get_nodes(GetNodesRequest {}).await.expect("nodes").into_inner().nodes;
    let states: Vec<(String, i32)> = nodes.iter().map(|n| (n.name.clone(), n.state)).collect();
    assert_eq!(
        states,
        [
            ("node-a".to_owned(), NodeState::NodeConnected as i32),
            ("node-b".to_owned(), NodeState::NodeConnected as i32),
            ("node-c".to_owned(), NodeState::NodeUnavailable as i32),
        ]
    );

    let namespaces = c.get_namespaces(GetNamespacesRequest {}).await.expect("namespaces").into_inner().namespaces;
    let names: Vec<&str> = namespaces.iter().map(|n| n.namespace.as_str()).collect();
    assert_eq!(names, ["node-a", "node-b", "shared"], "merged, without duplicates");
}

#[tokio::test]
async fn a_request_the_nodes_refuse_is_refused_with_their_reason() {
    let a = start(FakeNode { name: "node-a".into(), times: vec![1], ..FakeNode::default() }).await;
    let mut c = relay(vec![("node-a", a)]).await;
    let req = GetFlowsRequest { whitelist: vec![Default::default()], ..GetFlowsRequest::default() };
    let err = match c.get_flows(req).await {
        Err(e) => e,
        Ok(r) => r.into_inner().message().await.expect_err("refused"),
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("no such filter"), "{}", err.message());
}

#[tokio::test]
async fn a_follower_that_leaves_closes_the_node_streams() {
    let node = FakeNode { name: "node-a".into(), times: vec![1, 2], ..FakeNode::default() };
    let following = Arc::clone(&node.following);
    let a = start(node).await;
    let mut c = relay(vec![("node-a", a)]).await;
    let mut stream = c.get_flows(GetFlowsRequest { follow: true, ..GetFlowsRequest::default() }).await.expect("GetFlows").into_inner();
    // The node status, then both flows (drained after the 100 ms window).
    for _ in 0..3 {
        stream.message().await.expect("stream").expect("an item");
    }
    assert_eq!(following.load(Ordering::SeqCst), 1);
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while following.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(following.load(Ordering::SeqCst), 0, "the node's stream stays open after the client left");
}

#[test]
fn peers_need_host_port_addresses() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        for bad in ["nohost", "http://1.2.3.4:80"] {
            let config = Config::new("relay", vec![Peer { name: "n".into(), address: bad.into() }]);
            assert!(Relay::new(config).is_err(), "{bad}");
        }
    });
}
