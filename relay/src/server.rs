//! The relay's `observer.Observer` service: every request goes to every
//! node's collector; flows come back merged in time order.
//!
//! With TLS to the collectors (`Config::tls`), each is dialled with the
//! relay's client certificate and its server certificate is checked for
//! Hubble's name `<node>.<cluster>.hubble-grpc.cilium.io`. With
//! authentication (`Relay::with_auth`), every Observer call carries a bearer
//! token; a token scoped to some namespaces sees only their flows (filtered
//! here, after the merge) and namespaces.
//!
//! A `follow` request outlives the nodes' restarts: when a node's stream
//! fails (or a node did not answer when the request came), the client is
//! told the node is `NODE_UNAVAILABLE` and the relay keeps trying it with
//! back-off ([`FOLLOW_RETRY_START`] doubling to [`FOLLOW_RETRY_MAX`]); once
//! it answers, the client is told `NODE_CONNECTED` and the node's flows
//! resume `since` the last one received from it (so nothing the node still
//! holds is skipped; flows of that very instant may come twice). The
//! client's stream never ends because a node restarted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;
use sightline_proto::observer::observer_client::ObserverClient;
use sightline_proto::observer::observer_server::{Observer, ObserverServer};
use sightline_proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse, GetFlowsRequest,
    GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse, Node,
    ServerStatusRequest, ServerStatusResponse, get_flows_response::ResponseTypes,
};
use sightline_proto::relay::{NodeState, NodeStatusEvent};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::auth::{Authenticator, Scope};
use crate::merge::SortBuffer;

/// A node's collector, as the relay reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// `host:port` of its gRPC API.
    pub address: String,
}

/// How the relay runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The relay's own name, on the node-status events it sends.
    pub name: String,
    pub peers: Vec<Peer>,
    /// Sort buffer size (Hubble's `sort-buffer-len-max`).
    pub sort_buffer: usize,
    /// How long an item may wait for older ones from other nodes (Hubble's
    /// `sort-buffer-drain-timeout`).
    pub drain_timeout: Duration,
    /// How long to wait for a node to answer before calling it unavailable.
    pub dial_timeout: Duration,
    /// TLS to the collectors (Hubble's `--tls-hubble-*` flags); `None`:
    /// plaintext (`--disable-client-tls`).
    pub tls: Option<Arc<sightline_tls::ClientTls>>,
    /// The cluster's name, in the server name checked on each collector.
    pub cluster: String,
}

impl Config {
    #[must_use]
    pub fn new(name: &str, peers: Vec<Peer>) -> Self {
        Self {
            name: name.to_owned(),
            peers,
            sort_buffer: crate::merge::DEFAULT_CAPACITY,
            drain_timeout: Duration::from_secs(1),
            dial_timeout: Duration::from_secs(2),
            tls: None,
            cluster: "default".to_owned(),
        }
    }
}

/// The name a node's certificate must carry (Hubble's).
pub use sightline_tls::hubble_server_name as peer_server_name;

/// A lazy channel to `address` (`host:port`; nothing is sent until first
/// use): with `tls`, checking the server's certificate for `server_name`;
/// else plaintext. The relay's one way of dialling a collector or the Peer
/// service.
///
/// # Errors
///
/// [`DialError::ServerName`] for a name that cannot be checked,
/// [`DialError::Address`] for an address that cannot be dialled.
pub fn dial(address: &str, tls: Option<&Arc<sightline_tls::ClientTls>>, server_name: &str, timeout: Duration) -> Result<Channel, DialError> {
    match tls {
        Some(tls) => {
            let connector = sightline_tls::Connector::new(Arc::clone(tls), Some(server_name)).map_err(DialError::ServerName)?;
            connector.lazy_channel(address, timeout).map_err(|e| DialError::Address(e.to_string()))
        }
        None => Ok(Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| DialError::Address(e.to_string()))?
            .connect_timeout(timeout)
            .connect_lazy()),
    }
}

/// Why [`dial`] could not make a channel.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("server name: {0}")]
    ServerName(#[source] sightline_tls::TlsError),
    #[error("address: {0}")]
    Address(String),
}

/// Why the relay could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("peer {name}: {address:?} is not a host:port address")]
    PeerAddress { name: String, address: String },
    #[error("peer {name}: {source}")]
    PeerServerName {
        name: String,
        #[source]
        source: sightline_tls::TlsError,
    },
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("serving the relay on {address}")]
    Serve {
        address: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A node's collector with its channel (connected on first use).
#[derive(Debug)]
pub struct Connected {
    pub peer: Peer,
    pub channel: Channel,
    /// The name checked on its certificate, with TLS.
    pub server_name: Option<String>,
}

/// The peers as they are now, in name order.
pub type PeerSet = Arc<Vec<Arc<Connected>>>;

struct State {
    config: Config,
    /// The peers: the configured ones, then as the Peer service says
    /// (`crate::discovery`). Requests take a snapshot; followers and the
    /// export feed watch it.
    peers: watch::Sender<PeerSet>,
    started: SystemTime,
    auth: Option<Arc<Authenticator>>,
}

/// Dials `peer` as `config` says (lazily: nothing is sent until first
/// use); with TLS its certificate must carry `server_name`, or Hubble's
/// name for it.
fn connect(config: &Config, peer: &Peer, server_name: Option<&str>) -> Result<Connected, RelayError> {
    let bad = || RelayError::PeerAddress { name: peer.name.clone(), address: peer.address.clone() };
    if peer.name.is_empty() || !peer.address.contains(':') || peer.address.contains('/') {
        return Err(bad());
    }
    let server_name = config
        .tls
        .as_ref()
        .map(|_| server_name.map_or_else(|| peer_server_name(&peer.name, &config.cluster), str::to_owned));
    let channel = dial(&peer.address, config.tls.as_ref(), server_name.as_deref().unwrap_or_default(), config.dial_timeout)
        .map_err(|e| match e {
            DialError::ServerName(source) => RelayError::PeerServerName { name: peer.name.clone(), source },
            DialError::Address(_) => bad(),
        })?;
    Ok(Connected { peer: peer.clone(), channel, server_name })
}

fn now() -> Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0) }
}

fn minus(ts: &Timestamp, d: Duration) -> Timestamp {
    let total = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos) - i128::try_from(d.as_nanos()).unwrap_or(0);
    Timestamp {
        seconds: i64::try_from(total.div_euclid(1_000_000_000)).unwrap_or(0),
        nanos: i32::try_from(total.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

/// The first wait before a followed node that failed is tried again.
pub const FOLLOW_RETRY_START: Duration = Duration::from_millis(250);
/// The longest wait between two tries.
pub const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(5);

/// What a node's forwarder hands the merge.
enum NodeItem {
    /// A response of the node's stream.
    Item(Box<GetFlowsResponse>),
    /// The stream failed and the request does not follow: the node is
    /// done (`NODE_ERROR`).
    Failed(String, Status),
    /// The followed node went away; it is being tried again
    /// (`NODE_UNAVAILABLE`).
    Lost(String, String),
    /// The followed node answers again (`NODE_CONNECTED`).
    Back(String),
}

fn later(a: Option<Timestamp>, b: Option<&Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if (b.seconds, b.nanos) > (a.seconds, a.nanos) { *b } else { a }),
        (a, b) => a.or_else(|| b.copied()),
    }
}

/// Forwards one node's stream of a `follow` request, for as long as the
/// client stays: when the stream fails, tries the node again with back-off
/// and resumes `since` the last flow it sent (`since` of the request, or
/// the moment the request came, when it sent none yet). `stream` is `None`
/// for a node that did not answer when the request came.
async fn follow_node(
    peer: String,
    channel: Channel,
    req: GetFlowsRequest,
    mut stream: Option<tonic::Streaming<GetFlowsResponse>>,
    opened_at: Timestamp,
    dial_timeout: Duration,
    tx: mpsc::Sender<NodeItem>,
) {
    let mut last: Option<Timestamp> = None;
    let mut backoff = FOLLOW_RETRY_START;
    loop {
        if let Some(mut s) = stream.take() {
            let why = loop {
                match s.message().await {
                    Ok(Some(r)) => {
                        if let Some(ResponseTypes::Flow(_)) = &r.response_types {
                            last = later(last, r.time.as_ref());
                        }
                        if tx.send(NodeItem::Item(Box::new(r))).await.is_err() {
                            return;
                        }
                    }
                    // A followed stream ends only at `until` or when the
                    // node stops.
                    Ok(None) if req.until.is_some() => return,
                    Ok(None) => break "the node ended its stream".to_owned(),
                    Err(status) => break status.message().to_owned(),
                }
            };
            log::info!("follow: node {peer} lost ({why}); trying it again");
            if tx.send(NodeItem::Lost(peer.clone(), why)).await.is_err() {
                return;
            }
            backoff = FOLLOW_RETRY_START;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(FOLLOW_RETRY_MAX);
        // The last flow's time; before any, what the request asked for.
        let since = last.or(req.since).or(Some(opened_at));
        let retry = GetFlowsRequest { number: 0, first: false, since, ..req.clone() };
        let mut client = ObserverClient::new(channel.clone());
        match tokio::time::timeout(dial_timeout, client.get_flows(retry)).await {
            Ok(Ok(response)) => {
                log::info!("follow: node {peer} is back");
                stream = Some(response.into_inner());
                if tx.send(NodeItem::Back(peer.clone())).await.is_err() {
                    return;
                }
            }
            // The node answered and refused: trying again will not help.
            Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                let _ = tx.send(NodeItem::Failed(peer, status)).await;
                return;
            }
            Ok(Err(status)) => log::debug!("follow: node {peer} still unavailable: {status}"),
            Err(_) => log::debug!("follow: node {peer} still unavailable: no answer in time"),
        }
    }
}

fn node_status(relay: &str, state: NodeState, nodes: Vec<String>, message: String) -> GetFlowsResponse {
    GetFlowsResponse {
        response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
            state_change: state as i32,
            node_names: nodes,
            message,
        })),
        node_name: relay.to_owned(),
        time: Some(now()),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The relay service.
#[derive(Clone)]
pub struct Relay {
    state: Arc<State>,
}

impl Relay {
    /// Prepares connections to the peers (made on first use). Call it
    /// inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`RelayError::PeerAddress`] for an address that is not `host:port`.
    pub fn new(config: Config) -> Result<Self, RelayError> {
        Self::with_auth(config, None)
    }

    /// As [`Relay::new`]; with `auth`, every Observer call must carry a
    /// bearer token that it accepts.
    ///
    /// # Errors
    ///
    /// As [`Relay::new`].
    pub fn with_auth(config: Config, auth: Option<Arc<Authenticator>>) -> Result<Self, RelayError> {
        let mut peers = Vec::new();
        for peer in &config.peers {
            peers.push(Arc::new(connect(&config, peer, None)?));
        }
        peers.sort_by(|a, b| a.peer.name.cmp(&b.peer.name));
        let peers = watch::Sender::new(Arc::new(peers));
        Ok(Self { state: Arc::new(State { config, peers, started: SystemTime::now(), auth }) })
    }

    /// Adds a peer, or replaces the one of that name when its address or
    /// certificate name differs (a request following it reconnects to the
    /// new address). `server_name`: the name its certificate carries, when
    /// the Peer service says (else Hubble's name for it). Returns whether
    /// anything changed.
    ///
    /// # Errors
    ///
    /// As [`Relay::new`], for this peer.
    pub fn upsert_peer(&self, peer: Peer, server_name: Option<&str>) -> Result<bool, RelayError> {
        let connected = Arc::new(connect(&self.state.config, &peer, server_name)?);
        Ok(self.state.peers.send_if_modified(|set| {
            if set.iter().any(|c| c.peer == connected.peer && c.server_name == connected.server_name) {
                return false;
            }
            let mut next: Vec<Arc<Connected>> = set.iter().filter(|c| c.peer.name != peer.name).cloned().collect();
            next.push(Arc::clone(&connected));
            next.sort_by(|a, b| a.peer.name.cmp(&b.peer.name));
            *set = Arc::new(next);
            true
        }))
    }

    /// Removes the peer of that name; whether there was one.
    pub fn remove_peer(&self, name: &str) -> bool {
        self.state.peers.send_if_modified(|set| {
            if !set.iter().any(|c| c.peer.name == name) {
                return false;
            }
            *set = Arc::new(set.iter().filter(|c| c.peer.name != name).cloned().collect());
            true
        })
    }

    /// The peers now, in name order.
    #[must_use]
    pub fn peers(&self) -> PeerSet {
        Arc::clone(&self.state.peers.borrow())
    }

    /// The peers, now and as they change (the export feed follows them).
    #[must_use]
    pub fn watch_peers(&self) -> watch::Receiver<PeerSet> {
        self.state.peers.subscribe()
    }

    /// Who may call, and what they may see: everything without
    /// authentication; else the token's scope, or why it is refused.
    async fn authenticate<T>(&self, request: &Request<T>) -> Result<Scope, Status> {
        let Some(auth) = &self.state.auth else { return Ok(Scope::All) };
        let from = request.remote_addr().map_or_else(|| "?".to_owned(), |a| a.to_string());
        match auth.authenticate(request.metadata()).await {
            Ok(principal) => {
                log::debug!("request from {from} by {} ({:?})", principal.who, principal.scope);
                Ok(principal.scope)
            }
            Err(e) => {
                log::info!("refused a request from {from}: {e}");
                Err(e.into())
            }
        }
    }

    /// Calls every peer of `peers` concurrently, each call bounded by the
    /// dial timeout: (peer, answer or why not), in peer order.
    async fn ask_all<T, F, Fut>(&self, peers: &PeerSet, call: F) -> Vec<(Arc<Connected>, Result<T, Status>)>
    where
        T: Send + 'static,
        F: Fn(ObserverClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
    {
        let wait = self.state.config.dial_timeout;
        let mut set = JoinSet::new();
        for (i, peer) in peers.iter().enumerate() {
            let answer = call(ObserverClient::new(peer.channel.clone()));
            set.spawn(async move {
                (i, match tokio::time::timeout(wait, answer).await {
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(status)) => Err(status),
                    Err(_) => Err(Status::unavailable("no answer in time")),
                })
            });
        }
        let mut out = Vec::new();
        while let Some(Ok(item)) = set.join_next().await {
            out.push(item);
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(i, r)| (Arc::clone(&peers[i]), r)).collect()
    }

    /// Every peer's status: (peer, status or why not).
    async fn statuses(&self) -> Vec<(Arc<Connected>, Result<ServerStatusResponse, Status>)> {
        self.ask_all(&self.peers(), |mut c| async move { c.server_status(ServerStatusRequest {}).await }).await
    }
}

/// Hubble's cap on the unavailable nodes a status lists.
const UNAVAILABLE_LISTED: usize = 10;

#[tonic::async_trait]
impl Observer for Relay {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    async fn get_flows(&self, request: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        let scope = self.authenticate(&request).await?;
        let req = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<GetFlowsResponse, Status>>(256);
        let relay = self.clone();
        tokio::spawn(async move { relay.merge_flows(req, scope, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Every node's agent events: the stored ones in time order, then (with
    /// `follow`) new ones as they come. Nodes that do not answer are left out.
    async fn get_agent_events(
        &self,
        request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        if !self.authenticate(&request).await?.is_all() {
            return Err(Status::permission_denied(
                "agent events concern every namespace: this token may read only some namespaces' flows",
            ));
        }
        let req = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<GetAgentEventsResponse, Status>>(256);
        let relay = self.clone();
        tokio::spawn(async move { relay.merge_agent_events(req, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_debug_events(
        &self,
        request: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        self.authenticate(&request).await?;
        Err(Status::unimplemented("GetDebugEvents is served by each node's collector, not by the relay"))
    }

    async fn get_nodes(&self, request: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        self.authenticate(&request).await?;
        let nodes = self
            .statuses()
            .await
            .into_iter()
            .map(|(connected, status)| {
                let peer = &connected.peer;
                let tls = connected.server_name.as_ref().map(|name| sightline_proto::observer::Tls {
                    enabled: true,
                    server_name: name.clone(),
                });
                let base = Node { name: peer.name.clone(), address: peer.address.clone(), tls, ..Node::default() };
                match status {
                    Ok(s) => Node {
                        version: s.version,
                        state: NodeState::NodeConnected as i32,
                        uptime_ns: s.uptime_ns,
                        num_flows: s.num_flows,
                        max_flows: s.max_flows,
                        seen_flows: s.seen_flows,
                        ..base
                    },
                    Err(_) => Node { state: NodeState::NodeUnavailable as i32, ..base },
                }
            })
            .collect();
        Ok(Response::new(GetNodesResponse { nodes }))
    }

    async fn get_namespaces(
        &self,
        request: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let scope = self.authenticate(&request).await?;
        let req = request.into_inner();
        let answers = self
            .ask_all(&self.peers(), |mut c| {
                async move { c.get_namespaces(req).await }
            })
            .await;
        let mut all: Vec<_> = answers
            .into_iter()
            .filter_map(|(_, a)| a.ok())
            .flat_map(|r| r.namespaces)
            .filter(|n| scope.allows_namespace(&n.namespace))
            .collect();
        all.sort_by(|a, b| (&a.cluster, &a.namespace).cmp(&(&b.cluster, &b.namespace)));
        all.dedup_by(|a, b| a.cluster == b.cluster && a.namespace == b.namespace);
        Ok(Response::new(GetNamespacesResponse { namespaces: all }))
    }

    async fn server_status(
        &self,
        request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        self.authenticate(&request).await?;
        let mut out = ServerStatusResponse { version: crate::version(), ..ServerStatusResponse::default() };
        let (mut connected, mut unavailable) = (0u32, 0u32);
        for (peer, status) in self.statuses().await {
            match status {
                Ok(s) => {
                    connected += 1;
                    out.num_flows += s.num_flows;
                    out.max_flows += s.max_flows;
                    out.seen_flows += s.seen_flows;
                    out.uptime_ns = out.uptime_ns.max(s.uptime_ns);
                    out.flows_rate += s.flows_rate;
                }
                Err(_) => {
                    unavailable += 1;
                    if out.unavailable_nodes.len() < UNAVAILABLE_LISTED {
                        out.unavailable_nodes.push(peer.peer.name.clone());
                    }
                }
            }
        }
        if connected == 0 {
            out.uptime_ns = u64::try_from(self.state.started.elapsed().unwrap_or_default().as_nanos()).unwrap_or(u64::MAX);
        }
        out.num_connected_nodes = Some(connected);
        out.num_unavailable_nodes = Some(unavailable);
        Ok(Response::new(out))
    }
}

impl Relay {
    async fn merge_agent_events(&self, req: GetAgentEventsRequest, tx: mpsc::Sender<Result<GetAgentEventsResponse, Status>>) {
        let opened = self
            .ask_all(&self.peers(), |mut c| {
                async move { c.get_agent_events(req).await }
            })
            .await;
        let (items_tx, mut items) = mpsc::channel::<GetAgentEventsResponse>(1024);
        // Held until this returns: dropping it stops the forwarders (and so
        // the node streams) when the client goes away.
        let mut forwarders = JoinSet::new();
        for (_, stream) in opened {
            let Ok(mut stream) = stream else { continue };
            let items_tx = items_tx.clone();
            forwarders.spawn(async move {
                while let Ok(Some(r)) = stream.message().await {
                    if items_tx.send(r).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(items_tx);
        let key = |r: &GetAgentEventsResponse| r.time.as_ref().map_or((0, 0), |t| (t.seconds, t.nanos));
        if !req.follow {
            let mut all = Vec::new();
            while let Some(r) = items.recv().await {
                all.push(r);
            }
            all.sort_by_key(key);
            for r in all {
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
            return;
        }
        while let Some(r) = items.recv().await {
            if tx.send(Ok(r)).await.is_err() {
                return;
            }
        }
    }

    /// Forwards `req` to every peer and sends the merged responses to
    /// `tx`: first which nodes take part (`NODE_CONNECTED`) and which do
    /// not (`NODE_UNAVAILABLE`), then the items in time order, with a
    /// `NODE_ERROR` event for a node whose stream fails — or, with
    /// `follow`, `NODE_UNAVAILABLE` and later `NODE_CONNECTED` when it is
    /// back (see the module docs). A follower also gets the nodes that join
    /// while it follows (`NODE_CONNECTED` once they answer) and hears of
    /// those that leave (`NODE_GONE`). Flows outside `scope` are left out.
    async fn merge_flows(&self, req: GetFlowsRequest, scope: Scope, tx: mpsc::Sender<Result<GetFlowsResponse, Status>>) {
        let config = &self.state.config;
        let opened_at = now();
        // Watched from before the snapshot: no change falls between them.
        let mut peer_changes = self.watch_peers();
        let peers = Arc::clone(&peer_changes.borrow_and_update());
        let opened = self
            .ask_all(&peers, |mut c| {
                let req = req.clone();
                async move { c.get_flows(req).await }
            })
            .await;
        let mut streams = Vec::new();
        let (mut connected, mut unavailable, mut refused) = (Vec::new(), Vec::new(), Vec::new());
        for (peer, opened) in opened {
            let name = peer.peer.name.clone();
            match opened {
                Ok(stream) => {
                    connected.push(name);
                    streams.push((peer, Some(stream)));
                }
                // The node answered and refused the request (a bad filter):
                // the client must hear why.
                Err(status) if status.code() == tonic::Code::InvalidArgument => refused.push(status),
                Err(status) => {
                    log::debug!("peer {name} unavailable: {status}");
                    unavailable.push(name);
                    // A follower gets the node once it answers.
                    if req.follow {
                        streams.push((peer, None));
                    }
                }
            }
        }
        if let Some(status) = refused.into_iter().next() {
            let _ = tx.send(Err(status)).await;
            return;
        }
        connected.sort();
        unavailable.sort();
        let node_count = connected.len();
        for (state, nodes) in [(NodeState::NodeConnected, connected), (NodeState::NodeUnavailable, unavailable)] {
            if !nodes.is_empty() && tx.send(Ok(node_status(&config.name, state, nodes, String::new()))).await.is_err() {
                return;
            }
        }

        let (items_tx, mut items) = mpsc::channel::<NodeItem>(1024);
        // Held until this returns: when the client goes away, dropping it
        // stops the forwarders and closes the node streams at once (a quiet
        // followed stream would otherwise stay open until its next flow).
        let mut forwarders = JoinSet::new();
        // Followed nodes: the peer followed and its forwarder.
        let mut followed: BTreeMap<String, (Arc<Connected>, tokio::task::AbortHandle)> = BTreeMap::new();
        for (peer, stream) in streams {
            let items_tx = items_tx.clone();
            let name = peer.peer.name.clone();
            if req.follow {
                let follower = follow_node(name.clone(), peer.channel.clone(), req.clone(), stream, opened_at, config.dial_timeout, items_tx);
                followed.insert(name, (peer, forwarders.spawn(follower)));
                continue;
            }
            let Some(mut stream) = stream else { continue };
            forwarders.spawn(async move {
                loop {
                    let next = match stream.message().await {
                        Ok(Some(r)) => NodeItem::Item(Box::new(r)),
                        Ok(None) => break,
                        Err(status) => NodeItem::Failed(name.clone(), status),
                    };
                    let failed = matches!(next, NodeItem::Failed(..));
                    if items_tx.send(next).await.is_err() || failed {
                        break;
                    }
                }
            });
        }
        // A follower keeps a sender for the nodes that join later (one that
        // ends at `until` follows the nodes it started with).
        let joiners = (req.follow && req.until.is_none()).then(|| items_tx.clone());
        drop(items_tx);

        let mut buffer = SortBuffer::new(config.sort_buffer, req.number, node_count);
        let mut tick = tokio::time::interval(config.drain_timeout);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ready = tokio::select! {
                item = items.recv() => match item {
                    Some(NodeItem::Item(r)) => buffer.push(*r).into_iter().collect(),
                    Some(NodeItem::Failed(peer, status)) => {
                        vec![node_status(&config.name, NodeState::NodeError, vec![peer], status.message().to_owned())]
                    }
                    Some(NodeItem::Lost(peer, why)) => {
                        vec![node_status(&config.name, NodeState::NodeUnavailable, vec![peer], why)]
                    }
                    Some(NodeItem::Back(peer)) => {
                        vec![node_status(&config.name, NodeState::NodeConnected, vec![peer], String::new())]
                    }
                    None => {
                        for r in buffer.drain().into_iter().filter(|r| visible(&scope, r)) {
                            if tx.send(Ok(r)).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                },
                changed = peer_changes.changed(), if joiners.is_some() => {
                    if changed.is_err() {
                        // The relay is going away; what is followed goes on.
                        Vec::new()
                    } else {
                        let now_peers = Arc::clone(&peer_changes.borrow_and_update());
                        let joiners = joiners.as_ref().expect("a follower");
                        let mut events = Vec::new();
                        let gone: Vec<String> = followed
                            .keys()
                            .filter(|name| !now_peers.iter().any(|p| &p.peer.name == *name))
                            .cloned()
                            .collect();
                        for name in &gone {
                            if let Some((_, forwarder)) = followed.remove(name) {
                                forwarder.abort();
                            }
                        }
                        if !gone.is_empty() {
                            log::info!("follow: node(s) {gone:?} left the cluster");
                            events.push(node_status(&config.name, NodeState::NodeGone, gone, String::new()));
                        }
                        for peer in now_peers.iter() {
                            let name = &peer.peer.name;
                            if followed.get(name).is_some_and(|(p, _)| Arc::ptr_eq(p, peer)) {
                                continue;
                            }
                            // New, or moved: (re)connect, from the request's
                            // start (a moved node's flows of the meantime may
                            // come twice, none are skipped).
                            if let Some((_, forwarder)) = followed.remove(name) {
                                forwarder.abort();
                            }
                            log::info!("follow: node {name} joined at {}", peer.peer.address);
                            let follower = follow_node(
                                name.clone(),
                                peer.channel.clone(),
                                req.clone(),
                                None,
                                opened_at,
                                config.dial_timeout,
                                joiners.clone(),
                            );
                            followed.insert(name.clone(), (Arc::clone(peer), forwarders.spawn(follower)));
                        }
                        events
                    }
                }
                _ = tick.tick() => buffer.older_than(&minus(&now(), config.drain_timeout)),
                () = tx.closed() => return,
            };
            for r in ready.into_iter().filter(|r| visible(&scope, r)) {
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Whether a merged item may go to a client of this scope: flows by their
/// namespaces; node status and lost events always.
fn visible(scope: &Scope, r: &GetFlowsResponse) -> bool {
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => scope.allows_flow(f),
        _ => true,
    }
}

/// Serves the relay on `listener` until `shutdown` resolves, over TLS when
/// `tls` is given (the handshake checks client certificates when it names
/// client CAs).
///
/// # Errors
///
/// [`RelayError::Serve`] when the server fails.
pub async fn serve(
    relay: Relay,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<sightline_tls::ServerTls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    let address = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ObserverServer<Relay>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sightline_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RelayError::Reflection(e.to_string()))?;
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ObserverServer::new(relay));
    match tls {
        Some(tls) => router.serve_with_incoming_shutdown(tls.incoming(listener), shutdown).await,
        None => router.serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown).await,
    }
    .map_err(|source| RelayError::Serve { address, source })
}
