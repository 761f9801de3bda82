//! The relay against in-process fake collectors (no root, no lab): merge
//! order, node status events, status aggregation, refused requests,
//! unreachable nodes, follow streams that carry on while a node dies
//! and comes back on the same port, and peers learnt from a fake Peer
//! service as nodes join, move and leave.

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
use sightline_proto::peer::peer_server::{Peer as PeerService, PeerServer};
use sightline_proto::peer::{ChangeNotification, ChangeNotificationType, NotifyRequest};
use sightline_relay::discovery::{self, DiscoveryStatus};
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
    /// When set, a follow stream sends these flows on a schedule instead:
    /// (delay after the request, time in ms relative to its arrival).
    script: Vec<(Duration, i64)>,
}

impl FakeNode {
    /// The scripted follow stream (see [`FakeNode::script`]).
    fn scripted(&self) -> BoxStream<GetFlowsResponse> {
        let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (name, script) = (self.name.clone(), self.script.clone());
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for (delay, offset_ms) in script {
                tokio::time::sleep_until(start + delay).await;
                let ms = base + offset_ms;
                let time = Timestamp { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 };
                let flow = GetFlowsResponse {
                    response_types: Some(ResponseTypes::Flow(Flow { node_name: name.clone(), ..Flow::default() })),
                    node_name: name.clone(),
                    time: Some(time),
                };
                if tx.send(Ok(flow)).await.is_err() {
                    return;
                }
            }
            // Followed: the stream stays open.
            std::future::pending::<()>().await;
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
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
        if request.get_ref().follow && !self.script.is_empty() {
            return Ok(Response::new(self.scripted()));
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

/// Where a follow stream of [`LiveNode`] gets its new flows.
type Follower = tokio::sync::mpsc::UnboundedSender<Result<GetFlowsResponse, Status>>;

/// A collector whose followers get the flows `publish` sends; it honours
/// `since` and records every GetFlows request.
#[derive(Clone, Default)]
struct LiveNode {
    name: String,
    /// Flow times it holds when a request comes.
    stored: Vec<i64>,
    followers: Arc<std::sync::Mutex<Vec<Follower>>>,
    requests: Arc<std::sync::Mutex<Vec<GetFlowsRequest>>>,
}

fn flow_at(node: &str, seconds: i64) -> GetFlowsResponse {
    GetFlowsResponse {
        response_types: Some(ResponseTypes::Flow(Flow { node_name: node.into(), time: Some(Timestamp { seconds, nanos: 0 }), ..Flow::default() })),
        node_name: node.into(),
        time: Some(Timestamp { seconds, nanos: 0 }),
    }
}

impl LiveNode {
    fn new(name: &str, stored: Vec<i64>) -> Self {
        Self { name: name.into(), stored, ..Self::default() }
    }

    /// Sends a new flow to every follower.
    fn publish(&self, seconds: i64) {
        let mut followers = self.followers.lock().expect("followers");
        followers.retain(|f| f.send(Ok(flow_at(&self.name, seconds))).is_ok());
    }

    fn following(&self) -> usize {
        self.followers.lock().expect("followers").iter().filter(|f| !f.is_closed()).count()
    }
}

#[tonic::async_trait]
impl Observer for LiveNode {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    async fn get_flows(&self, request: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        let req = request.into_inner();
        self.requests.lock().expect("requests").push(req.clone());
        let since = req.since.map_or(i64::MIN, |t| t.seconds);
        let backlog: Vec<_> = self.stored.iter().filter(|t| **t >= since).map(|t| Ok(flow_at(&self.name, *t))).collect();
        if !req.follow {
            return Ok(Response::new(Box::pin(tokio_stream::iter(backlog))));
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.followers.lock().expect("followers").push(tx);
        Ok(Response::new(Box::pin(tokio_stream::iter(backlog).chain(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)))))
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
        Ok(Response::new(GetNamespacesResponse::default()))
    }

    async fn server_status(&self, _: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(Response::new(ServerStatusResponse { version: "live".into(), ..ServerStatusResponse::default() }))
    }
}

/// A fake collector "process": its server runs on a runtime of its own, so
/// that stopping it closes every connection at once, as a `kill -9` would.
struct NodeProcess {
    runtime: Option<tokio::runtime::Runtime>,
}

impl NodeProcess {
    /// Serves `node` on `addr` (a fixed port: the same one after a restart).
    fn start(node: LiveNode, addr: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        // The port may still be held by the last run's sockets for a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "binding {addr} again: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        listener.set_nonblocking(true).expect("non-blocking");
        let listener = {
            let _in = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("listener")
        };
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(ObserverServer::new(node))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Self { runtime: Some(runtime) }
    }

    fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// What a follow client of the relay saw, item by item.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Status(i32, Vec<String>),
    Flow(String, i64),
}

async fn next_seen(stream: &mut tonic::Streaming<GetFlowsResponse>) -> Seen {
    let r = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("the relay sent nothing for 20 s")
        .expect("the follow stream failed")
        .expect("the follow stream ended");
    match r.response_types {
        Some(ResponseTypes::NodeStatus(s)) => Seen::Status(s.state_change, s.node_names),
        Some(ResponseTypes::Flow(f)) => Seen::Flow(f.node_name, r.time.expect("time").seconds),
        other => panic!("unexpected item {other:?}"),
    }
}

/// Waits until `want` arrives; returns everything seen on the way.
async fn until_seen(stream: &mut tonic::Streaming<GetFlowsResponse>, want: &Seen) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        let s = next_seen(stream).await;
        let done = &s == want;
        seen.push(s);
        if done {
            return seen;
        }
    }
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_stream_carries_on_across_a_node_restart_and_resumes_since_its_last_flow() {
    let a_addr = closed_port();
    let first = LiveNode::new("node-a", vec![10, 11]);
    let a = NodeProcess::start(first.clone(), a_addr);
    let b_node = LiveNode::new("node-b", vec![]);
    let b = start(b_node.clone()).await;
    let mut c = relay(vec![("node-a", a_addr), ("node-b", b)]).await;
    let mut stream = c.get_flows(GetFlowsRequest { follow: true, ..GetFlowsRequest::default() }).await.expect("GetFlows").into_inner();
    let connected = NodeState::NodeConnected as i32;
    let unavailable = NodeState::NodeUnavailable as i32;
    assert_eq!(next_seen(&mut stream).await, Seen::Status(connected, vec!["node-a".into(), "node-b".into()]));
    assert_eq!(next_seen(&mut stream).await, Seen::Flow("node-a".into(), 10));
    assert_eq!(next_seen(&mut stream).await, Seen::Flow("node-a".into(), 11));
    wait_for("node-b's follower", || b_node.following() == 1).await;

    // node-a dies: the client hears it, and node-b's flows keep coming.
    a.kill();
    let seen = until_seen(&mut stream, &Seen::Status(unavailable, vec!["node-a".into()])).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    b_node.publish(20);
    assert_eq!(next_seen(&mut stream).await, Seen::Flow("node-b".into(), 20));

    // node-a comes back on the same port, holding what it recorded since.
    let second = LiveNode::new("node-a", vec![5, 11, 12, 13]);
    let _a = NodeProcess::start(second.clone(), a_addr);
    let seen = until_seen(&mut stream, &Seen::Flow("node-a".into(), 13)).await;
    assert_eq!(
        seen,
        [
            Seen::Status(connected, vec!["node-a".into()]),
            // Resumed since its last flow (11): that instant again, then what is new.
            Seen::Flow("node-a".into(), 11),
            Seen::Flow("node-a".into(), 12),
            Seen::Flow("node-a".into(), 13),
        ]
    );
    let resumed = second.requests.lock().expect("requests").last().cloned().expect("a request");
    assert!(resumed.follow && resumed.number == 0, "{resumed:?}");
    assert_eq!(resumed.since.map(|t| t.seconds), Some(11));
    // Live flows of both nodes after the restart.
    wait_for("node-a's follower", || second.following() == 1).await;
    second.publish(30);
    b_node.publish(31);
    let mut tail = vec![next_seen(&mut stream).await, next_seen(&mut stream).await];
    tail.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(tail, [Seen::Flow("node-a".into(), 30), Seen::Flow("node-b".into(), 31)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_when_a_follower_came_joins_its_stream_once_it_answers() {
    let a_addr = closed_port();
    let b_node = LiveNode::new("node-b", vec![1]);
    let b = start(b_node).await;
    let mut c = relay(vec![("node-a", a_addr), ("node-b", b)]).await;
    let mut stream = c.get_flows(GetFlowsRequest { follow: true, ..GetFlowsRequest::default() }).await.expect("GetFlows").into_inner();
    assert_eq!(next_seen(&mut stream).await, Seen::Status(NodeState::NodeConnected as i32, vec!["node-b".into()]));
    assert_eq!(next_seen(&mut stream).await, Seen::Status(NodeState::NodeUnavailable as i32, vec!["node-a".into()]));
    assert_eq!(next_seen(&mut stream).await, Seen::Flow("node-b".into(), 1));
    // node-a starts; flows from before the request are not replayed.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let a = LiveNode::new("node-a", vec![1, now + 1]);
    let _a = NodeProcess::start(a.clone(), a_addr);
    let seen = until_seen(&mut stream, &Seen::Flow("node-a".into(), now + 1)).await;
    assert_eq!(seen, [Seen::Status(NodeState::NodeConnected as i32, vec!["node-a".into()]), Seen::Flow("node-a".into(), now + 1)]);
    let since = a.requests.lock().expect("requests")[0].since.expect("since").seconds;
    assert!((now - 30..=now).contains(&since), "since {since}, now {now}");
}

/// A Peer service the test drives: each stream first replays `replay`,
/// then carries what [`FakePeerService::send`] sends until
/// [`FakePeerService::drop_streams`] ends it.
#[derive(Clone, Default)]
struct FakePeerService {
    replay: Arc<std::sync::Mutex<Vec<ChangeNotification>>>,
    streams: Arc<std::sync::Mutex<Vec<tokio::sync::mpsc::Sender<Result<ChangeNotification, Status>>>>>,
    opened: Arc<AtomicUsize>,
}

impl FakePeerService {
    fn send(&self, note: ChangeNotification) {
        for tx in self.streams.lock().unwrap().iter() {
            tx.try_send(Ok(note.clone())).expect("the relay reads its Notify stream");
        }
    }

    fn drop_streams(&self) {
        self.streams.lock().unwrap().clear();
    }
}

#[tonic::async_trait]
impl PeerService for FakePeerService {
    type NotifyStream = BoxStream<ChangeNotification>;

    async fn notify(&self, _: Request<NotifyRequest>) -> Result<Response<Self::NotifyStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        for note in self.replay.lock().unwrap().iter() {
            tx.try_send(Ok(note.clone())).expect("room for the replay");
        }
        self.streams.lock().unwrap().push(tx);
        self.opened.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

fn note(kind: ChangeNotificationType, name: &str, address: &str) -> ChangeNotification {
    ChangeNotification { name: name.into(), address: address.into(), r#type: kind as i32, tls: None }
}

/// A relay with no peers of its own, following `peers` (the Peer service)
/// through discovery; its API client and the relay itself.
async fn discovering_relay(peers: &FakePeerService) -> (ObserverClient<tonic::transport::Channel>, Relay) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let service_addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PeerServer::new(peers.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut config = Config::new("relay", Vec::new());
    config.dial_timeout = Duration::from_millis(500);
    config.drain_timeout = Duration::from_millis(100);
    let relay = Relay::new(config).expect("relay");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{service_addr}")).unwrap().connect_lazy();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    std::mem::forget(stop);
    tokio::spawn(discovery::run(relay.clone(), channel, Duration::from_secs(1), DiscoveryStatus::default(), stopped));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sightline_relay::serve(relay.clone(), listener, None, std::future::pending()));
    let client = ObserverClient::connect(format!("http://{addr}")).await.expect("connect to the relay");
    (client, relay)
}

fn peer_names(relay: &Relay) -> Vec<String> {
    relay.peers().iter().map(|p| p.peer.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_gets_the_nodes_the_peer_service_adds_moves_and_removes() {
    use ChangeNotificationType::{PeerAdded, PeerDeleted, PeerUpdated};
    let a = FakeNode { name: "node-a".into(), times: vec![1], ..FakeNode::default() };
    let a_following = Arc::clone(&a.following);
    let a_addr = start(a).await;
    let b = FakeNode { name: "node-b".into(), times: vec![2], ..FakeNode::default() };
    let b_following = Arc::clone(&b.following);
    let b_addr = start(b).await;

    let peers = FakePeerService::default();
    peers.replay.lock().unwrap().push(note(PeerAdded, "node-a", &a_addr.to_string()));
    let (mut client, relay) = discovering_relay(&peers).await;
    wait_for("node-a from the Peer service", || peer_names(&relay) == ["node-a"]).await;

    let mut stream = client.get_flows(GetFlowsRequest { follow: true, ..GetFlowsRequest::default() }).await.unwrap().into_inner();
    assert_eq!(next_seen(&mut stream).await, Seen::Status(NodeState::NodeConnected as i32, vec!["node-a".into()]));
    assert_eq!(next_seen(&mut stream).await, Seen::Flow("node-a".into(), 1));

    // A node joins: the follower is told once it answers, then gets its flows.
    peers.send(note(PeerAdded, "node-b", &b_addr.to_string()));
    let seen = until_seen(&mut stream, &Seen::Flow("node-b".into(), 2)).await;
    assert!(seen.contains(&Seen::Status(NodeState::NodeConnected as i32, vec!["node-b".into()])), "{seen:?}");
    let status = client.server_status(ServerStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.num_connected_nodes, Some(2));

    // It leaves: NODE_GONE, and its stream is closed.
    peers.send(note(PeerDeleted, "node-b", ""));
    until_seen(&mut stream, &Seen::Status(NodeState::NodeGone as i32, vec!["node-b".into()])).await;
    assert_eq!(peer_names(&relay), ["node-a"]);
    wait_for("node-b's stream closed", || b_following.load(Ordering::SeqCst) == 0).await;

    // node-a moves (its collector at another address, with another flow):
    // followed there, the old stream closed.
    let a2 = FakeNode { name: "node-a".into(), times: vec![3], ..FakeNode::default() };
    let a2_addr = start(a2).await;
    peers.send(note(PeerUpdated, "node-a", &a2_addr.to_string()));
    until_seen(&mut stream, &Seen::Flow("node-a".into(), 3)).await;
    wait_for("node-a's old stream closed", || a_following.load(Ordering::SeqCst) == 0).await;
    assert_eq!(relay.peers()[0].peer.address, a2_addr.to_string());

    // What cannot be dialled is refused and the stream goes on.
    peers.send(note(PeerAdded, "", "10.0.0.9:4244"));
    peers.send(note(PeerAdded, "node-x", "unix:///var/run/cilium/hubble.sock"));
    peers.send(note(PeerAdded, "node-c", "127.0.0.1"));
    wait_for("node-c", || peer_names(&relay) == ["node-a", "node-c"]).await;
    assert_eq!(relay.peers()[1].peer.address, "127.0.0.1:4244", "Hubble's port when none is named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_peer_service_drops_the_relay_keeps_its_peers_then_takes_the_replay() {
    use ChangeNotificationType::PeerAdded;
    let peers = FakePeerService::default();
    peers.replay.lock().unwrap().extend([note(PeerAdded, "node-a", "127.0.0.1:1"), note(PeerAdded, "node-b", "127.0.0.1:2")]);
    let (_client, relay) = discovering_relay(&peers).await;
    wait_for("both nodes", || peer_names(&relay) == ["node-a", "node-b"]).await;

    // The stream ends (the agent behind the Service restarts): the peers
    // stay; the next stream's replay is the whole cluster, and node-b is
    // not in it any more.
    *peers.replay.lock().unwrap() = vec![note(PeerAdded, "node-a", "127.0.0.1:1")];
    peers.drop_streams();
    assert_eq!(peer_names(&relay), ["node-a", "node-b"], "the peers went with the stream");
    wait_for("a second Notify stream", || peers.opened.load(Ordering::SeqCst) == 2).await;
    wait_for("node-b dropped after the replay", || peer_names(&relay) == ["node-a"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_gets_flows_that_arrive_out_of_order_within_the_window_in_time_order() {
    let ms = Duration::from_millis;
    // node-a sends its flows at once; node-b's, older, come later (within
    // the drain window): node-a's 300 and 500 must wait for node-b's 100
    // and 400. node-b's 200 comes last of all, still within the window.
    let a = start(FakeNode { name: "node-a".into(), script: vec![(ms(0), 300), (ms(0), 500)], ..FakeNode::default() }).await;
    let b = start(FakeNode { name: "node-b".into(), script: vec![(ms(150), 100), (ms(200), 400), (ms(300), 200)], ..FakeNode::default() }).await;
    let mut config = Config::new("relay", vec![Peer { name: "node-a".into(), address: a.to_string() }, Peer { name: "node-b".into(), address: b.to_string() }]);
    config.dial_timeout = Duration::from_millis(500);
    config.drain_timeout = Duration::from_secs(2);
    let relay = Relay::new(config).expect("relay");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sightline_relay::serve(relay, listener, None, std::future::pending()));
    let mut c = ObserverClient::connect(format!("http://{addr}")).await.expect("connect");

    let mut stream = c.get_flows(GetFlowsRequest { follow: true, ..GetFlowsRequest::default() }).await.unwrap().into_inner();
    assert_eq!(next_seen(&mut stream).await, Seen::Status(NodeState::NodeConnected as i32, vec!["node-a".into(), "node-b".into()]));
    let mut order = Vec::new();
    let mut times = Vec::new();
    while order.len() < 5 {
        let r = tokio::time::timeout(Duration::from_secs(20), stream.message()).await.expect("in time").expect("stream").expect("an item");
        if let Some(ResponseTypes::Flow(f)) = r.response_types {
            let t = r.time.expect("time");
            times.push((t.seconds, t.nanos));
            order.push(f.node_name);
        }
    }
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "out of time order: {times:?}");
    assert_eq!(order, ["node-b", "node-b", "node-a", "node-b", "node-a"], "{times:?}");
}
