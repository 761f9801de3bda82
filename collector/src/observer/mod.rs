//! The collector's gRPC server: Hubble's `observer.Observer` and
//! `peer.Peer`, `grpc.health.v1`, and server reflection, on one address,
//! over TLS (mutual when client CAs are given) unless TLS is disabled.
//!
//! The server only reads: flows from the store (each client reads at its own
//! pace and never slows the pipeline or other clients: a client that stops
//! reading only stalls its own stream), agent events from their log, and
//! counters. Requests are validated first; bad ones get INVALID_ARGUMENT with
//! a message that names what is wrong.

pub mod events;
mod flows;
pub mod peers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sightline_proto::observer::observer_server::{Observer, ObserverServer};
use sightline_proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse, GetFlowsRequest,
    GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse, Namespace, Node,
    ServerStatusRequest, ServerStatusResponse,
};
use sightline_proto::peer::peer_server::{Peer, PeerServer};
use sightline_proto::peer::{ChangeNotification, NotifyRequest};
use sightline_proto::relay::NodeState;
use sightline_proto::flow::{LostEvent, LostEventSource};
use tokio::sync::{broadcast, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::flow::store::Store;
use events::{AgentEventLog, now_ns, timestamp};

/// The version string reported to clients.
pub const VERSION: &str = concat!("sightline ", env!("CARGO_PKG_VERSION"));

/// Kernel losses kept for requests with `since`.
const RECENT_LOSSES: usize = 128;

/// Namespaces seen in flows within this long are listed by GetNamespaces.
const NAMESPACE_WINDOW_NS: i64 = 3600 * 1_000_000_000;

/// Everything the server reads, shared with the agent.
pub struct ObserverState {
    pub node_name: String,
    /// The address clients reach this server on (for Peer and GetNodes).
    pub address: SocketAddr,
    pub started: Instant,
    pub store: Arc<Store>,
    pub agent_events: AgentEventLog,
    /// Namespace → last time a flow involved it (Unix ns).
    pub namespaces: Mutex<BTreeMap<String, i64>>,
    /// Events the probes could not write (ring buffer full), per CPU, as
    /// last reported.
    ring_lost: Mutex<Vec<u64>>,
    /// Losses for followers (kernel ring buffer).
    pub losses: broadcast::Sender<LostEvent>,
    /// The last kernel losses reported, for requests with `since` (a
    /// follower that reconnects after a collector restart learns of the
    /// losses counted while no collector ran). Locked while a loss is sent,
    /// so a request sees each loss once: replayed or live.
    recent_losses: Mutex<std::collections::VecDeque<LostEvent>>,
    /// Total flows lost to a full kernel ring buffer.
    pub ring_lost_total: AtomicU64,
    /// GetFlows streams open now.
    pub flow_clients: Arc<AtomicU64>,
    /// For `flows_rate`: (time, seen) a while ago.
    rate_mark: Mutex<(Instant, u64)>,
    /// What `peer.Peer/Notify` announces: this collector alone until
    /// [`ObserverState::announce`] gives the cluster's; `None` while the
    /// cluster's view is awaited ([`ObserverState::await_cluster`]).
    peers: watch::Sender<Option<peers::Directory>>,
}

impl ObserverState {
    #[must_use]
    pub fn new(node_name: String, address: SocketAddr, store: Arc<Store>) -> Self {
        Self {
            address,
            started: Instant::now(),
            store,
            agent_events: AgentEventLog::new(1024),
            namespaces: Mutex::new(BTreeMap::new()),
            ring_lost: Mutex::new(Vec::new()),
            losses: broadcast::channel(256).0,
            recent_losses: Mutex::new(std::collections::VecDeque::new()),
            ring_lost_total: AtomicU64::new(0),
            flow_clients: Arc::new(AtomicU64::new(0)),
            rate_mark: Mutex::new((Instant::now(), 0)),
            peers: watch::Sender::new(Some(
                [(node_name.clone(), peers::Announced { address: address.to_string(), tls_server_name: None })].into(),
            )),
            node_name,
        }
    }

    /// Replaces what the Peer service announces (subscribers hear the
    /// differences).
    pub fn announce(&self, directory: peers::Directory) {
        self.peers.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&directory);
            *current = Some(directory);
            changed
        });
    }

    /// The cluster's collectors are coming ([`ObserverState::announce`]):
    /// until then Notify answers nothing, so that its replay is the whole
    /// cluster (a relay drops the peers a replay leaves out).
    pub fn await_cluster(&self) {
        self.peers.send_replace(None);
    }

    /// What the Peer service announces now (`None`: the cluster's view is
    /// awaited).
    #[must_use]
    pub fn announced(&self) -> Option<peers::Directory> {
        self.peers.borrow().clone()
    }

    /// Notes that a flow involved these namespaces (called by the pipeline).
    pub fn saw_namespaces<'a>(&self, names: impl IntoIterator<Item = &'a str>, time_ns: i64) {
        let mut map = self.namespaces.lock().expect("namespaces");
        for n in names {
            match map.get_mut(n) {
                Some(t) => *t = (*t).max(time_ns),
                None => {
                    map.insert(n.to_owned(), time_ns);
                }
            }
        }
    }

    /// Flows per second over the last interval (at least a second).
    fn flows_rate(&self) -> f64 {
        let seen = self.store.seen();
        let mut mark = self.rate_mark.lock().expect("rate mark");
        let elapsed = mark.0.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 { (seen - mark.1) as f64 / elapsed } else { 0.0 };
        if elapsed >= 1.0 {
            *mark = (Instant::now(), seen);
        }
        rate
    }

    fn uptime_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The Observer and Peer services over one state.
#[derive(Clone)]
pub struct Service {
    state: Arc<ObserverState>,
}

impl Service {
    #[must_use]
    pub fn new(state: Arc<ObserverState>) -> Self {
        Self { state }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A stream counted in a gauge for as long as it lives.
struct Counted<S> {
    inner: S,
    gauge: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    fn new(inner: S, gauge: Arc<AtomicU64>) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self { inner, gauge }
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: Stream + Unpin> Stream for Counted<S> {
    type Item = S::Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

#[tonic::async_trait]
impl Observer for Service {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    async fn get_flows(&self, request: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        let stream = flows::get_flows(Arc::clone(&self.state), request.into_inner())?;
        Ok(Response::new(Box::pin(Counted::new(stream, Arc::clone(&self.state.flow_clients)))))
    }

    async fn get_agent_events(
        &self,
        request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        let req = request.into_inner();
        if req.first && req.follow {
            return Err(Status::invalid_argument("first cannot be combined with follow"));
        }
        let since = req.since.map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos));
        let until = req.until.map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos));
        let in_window = move |t: i64| since.is_none_or(|s| t >= s) && until.is_none_or(|u| t <= u);
        let mut backlog: Vec<_> = self.state.agent_events.recent().into_iter().filter(|r| in_window(r.time_ns)).collect();
        if req.number > 0 {
            let n = usize::try_from(req.number).unwrap_or(usize::MAX);
            if req.first {
                backlog.truncate(n);
            } else if backlog.len() > n {
                backlog.drain(..backlog.len() - n);
            }
        }
        let node = self.state.node_name.clone();
        let to_response = move |r: events::Recorded| GetAgentEventsResponse {
            agent_event: Some(r.event),
            node_name: node.clone(),
            time: Some(timestamp(r.time_ns)),
        };
        let live = req.follow.then(|| self.state.agent_events.subscribe());
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            for r in backlog {
                if tx.send(Ok(to_response(r))).await.is_err() {
                    return;
                }
            }
            if let Some(mut live) = live {
                loop {
                    match live.recv().await {
                        Ok(r) if in_window(r.time_ns) => {
                            if tx.send(Ok(to_response(r))).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_debug_events(
        &self,
        _request: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        // The probes emit no debug events: an empty stream, not an error.
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }

    async fn get_nodes(&self, _request: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        let s = &self.state;
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: s.node_name.clone(),
                version: VERSION.to_owned(),
                address: s.address.to_string(),
                state: NodeState::NodeConnected as i32,
                tls: None,
                uptime_ns: s.uptime_ns(),
                num_flows: s.store.len() as u64,
                max_flows: s.store.capacity() as u64,
                seen_flows: s.store.seen(),
            }],
        }))
    }

    async fn get_namespaces(
        &self,
        _request: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let cutoff = now_ns() - NAMESPACE_WINDOW_NS;
        let map = self.state.namespaces.lock().expect("namespaces");
        // Sorted by cluster, then namespace (one cluster: "default").
        let namespaces = map
            .iter()
            .filter(|(_, t)| **t >= cutoff)
            .map(|(n, _)| Namespace { cluster: "default".to_owned(), namespace: n.clone() })
            .collect();
        Ok(Response::new(GetNamespacesResponse { namespaces }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let s = &self.state;
        Ok(Response::new(ServerStatusResponse {
            num_flows: s.store.len() as u64,
            max_flows: s.store.capacity() as u64,
            seen_flows: s.store.seen(),
            uptime_ns: s.uptime_ns(),
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            unavailable_nodes: Vec::new(),
            version: VERSION.to_owned(),
            flows_rate: s.flows_rate(),
        }))
    }
}

#[tonic::async_trait]
impl Peer for Service {
    type NotifyStream = BoxStream<ChangeNotification>;

    /// Every collector the directory holds as `PEER_ADDED`, then its
    /// changes as they happen, until the client goes away (Hubble's
    /// replay-then-diff).
    async fn notify(&self, _request: Request<NotifyRequest>) -> Result<Response<Self::NotifyStream>, Status> {
        let rx = self.state.peers.subscribe();
        // The first item: the replay, once the directory is known; then
        // the differences from the last one sent.
        let notes = futures::stream::unfold((rx, None::<peers::Directory>), |(mut rx, last)| async move {
            if last.is_some() {
                rx.changed().await.ok()?;
            }
            let now = rx.wait_for(Option::is_some).await.ok()?.clone().unwrap_or_default();
            let notes = match &last {
                None => peers::replay(&now),
                Some(last) => peers::changes(last, &now),
            };
            let next = (rx, Some(now));
            Some((tokio_stream::iter(notes.into_iter().map(Ok)), next))
        });
        let stream = futures::StreamExt::chain(futures::StreamExt::flatten(notes), futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding the gRPC address {address}: {source}")]
    Bind { address: SocketAddr, #[source] source: std::io::Error },
    #[error("gRPC server reflection: {0}")]
    Reflection(String),
    #[error("gRPC server on {address}: {source}")]
    Serve { address: SocketAddr, #[source] source: tonic::transport::Error },
}

/// Serves on `listener` until `shutdown` resolves; over TLS when `tls` is
/// given (its files re-read when they change).
pub async fn serve(
    state: Arc<ObserverState>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<sightline_tls::ServerTls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let address = state.address;
    let service = Service::new(state);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ObserverServer<Service>>().await;
    health.set_serving::<PeerServer<Service>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sightline_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ObserverServer::new(service.clone()))
        .add_service(PeerServer::new(service));
    match tls {
        Some(tls) => router.serve_with_incoming_shutdown(tls.incoming(listener), shutdown).await,
        None => router.serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown).await,
    }
    .map_err(|source| ServeError::Serve { address, source })
}

impl ObserverState {
    /// Starts the per-CPU lost-event counts from what earlier collectors of
    /// the same pinned counters already reported, so that only what came
    /// after (the losses while no collector ran, then live ones) is reported.
    pub fn seed_ring_losses(&self, per_cpu: &[u64]) {
        *self.ring_lost.lock().expect("ring losses") = per_cpu.to_vec();
    }

    /// Reports the probes' per-CPU lost-event counters: what grew since the
    /// last report goes to following clients as `LostEvent`s
    /// (PERF_EVENT_RING_BUFFER, with the CPU).
    pub fn report_ring_losses(&self, per_cpu: &[u64]) {
        let mut last = self.ring_lost.lock().expect("ring losses");
        if last.len() < per_cpu.len() {
            last.resize(per_cpu.len(), 0);
        }
        let now = now_ns();
        for (cpu, (&total, seen)) in per_cpu.iter().zip(last.iter_mut()).enumerate() {
            let new = total.saturating_sub(*seen);
            *seen = total;
            if new > 0 {
                self.ring_lost_total.fetch_add(new, Ordering::Relaxed);
                let mut lost = crate::flow::convert::lost_event(LostEventSource::PerfEventRingBuffer, new, now, now);
                lost.cpu = i32::try_from(cpu).ok();
                let mut recent = self.recent_losses.lock().expect("recent losses");
                if recent.len() == RECENT_LOSSES {
                    recent.pop_front();
                }
                recent.push_back(lost);
                let _ = self.losses.send(lost);
            }
        }
    }

    /// Kernel losses reported at `since` or later (and not after `until`),
    /// and, with `follow`, a subscription to the losses reported after them.
    pub(crate) fn losses_since(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        follow: bool,
    ) -> (Vec<LostEvent>, Option<broadcast::Receiver<LostEvent>>) {
        let recent = self.recent_losses.lock().expect("recent losses");
        let at = |l: &LostEvent| l.last.as_ref().map_or(0, |t| t.seconds.saturating_mul(1_000_000_000).saturating_add(i64::from(t.nanos)));
        let replay = match since {
            Some(since) => recent.iter().filter(|l| at(l) >= since && until.is_none_or(|u| at(l) <= u)).cloned().collect(),
            None => Vec::new(),
        };
        (replay, follow.then(|| self.losses.subscribe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_streams_are_counted_while_they_live() {
        let gauge = Arc::new(AtomicU64::new(0));
        let a = Counted::new(tokio_stream::empty::<()>(), Arc::clone(&gauge));
        let b = Counted::new(tokio_stream::empty::<()>(), Arc::clone(&gauge));
        assert_eq!(gauge.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(gauge.load(Ordering::Relaxed), 1);
        drop(b);
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
    }
}
