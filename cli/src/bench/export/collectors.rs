//! The fake collectors: `observer.Observer` GetFlows with `follow` on
//! 127.0.0.1, flows paced by a ticker, each with a UUID that spells its
//! node, sequence number and time.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use sightline_flow::{Flow, PodMeta, Side, to_proto};
use sightline_proto::flow as pb;
use sightline_proto::observer::observer_server::{Observer, ObserverServer};
use sightline_proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse, GetFlowsRequest,
    GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse,
    ServerStatusRequest, ServerStatusResponse, get_flows_response::ResponseTypes,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

/// The fake collectors' pacing.
const TICK: Duration = Duration::from_millis(5);
/// Template flows per node (cloned, given a UUID and a time).
const TEMPLATES: usize = 1024;

/// A flow's UUID: node (16 bits), sequence number (48 bits), time in Unix
/// ns (64 bits), as hex in the 8-4-4-4-12 layout.
pub(super) fn flow_uuid(node: u16, seq: u64, time_ns: i64) -> String {
    let v = (u128::from(node) << 112) | (u128::from(seq & 0xffff_ffff_ffff) << 64) | u128::from(time_ns as u64);
    let h = format!("{v:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// (node, sequence number, time) of a UUID made by [`flow_uuid`].
pub(super) fn parse_uuid(s: &[u8]) -> Option<(u16, u64, i64)> {
    if s.len() != 36 {
        return None;
    }
    let mut v = 0u128;
    for &c in s {
        let d = match c {
            b'-' => continue,
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(((v >> 112) as u16, ((v >> 64) as u64) & 0xffff_ffff_ffff, v as u64 as i64))
}

pub(super) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// xorshift64*: deterministic flows, no randomness crate.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Flows as a collector of `node` serves them: pods of a 300-pod cluster
/// with their labels, varied addresses, ports, protocols, verdicts,
/// directions, policies and counters.
pub(super) fn templates(node: &str, index: u16) -> Vec<pb::Flow> {
    const PODS: u64 = 300;
    let pod = |i: u64| {
        let namespace = format!("ns{}", i % 10);
        let app = format!("app{}", i % 37);
        Arc::new(PodMeta {
            name: format!("{app}-5d8f9c{:04x}-x{i:04x}", i % 97),
            endpoint_id: (i % 100) as u16 + 1,
            identity: 256 + (i % 120) as u32,
            labels: Arc::from(vec![
                format!("k8s:app={app}"),
                format!("k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={namespace}"),
                "k8s:io.cilium.k8s.policy.cluster=default".to_owned(),
                format!("k8s:io.kubernetes.pod.namespace={namespace}"),
            ]),
            node: format!("node-{}", 1 + i % 3),
            namespace,
        })
    };
    let pods: Vec<Arc<PodMeta>> = (0..PODS).map(pod).collect();
    let ip = |i: u64| std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 244, (i / 200) as u8 + 1, (i % 200) as u8 + 2));
    let world: Arc<[String]> = Arc::from(vec!["reserved:world".to_owned()]);
    let interface: Arc<str> = Arc::from("lxc00042");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(index));
    (0..TEMPLATES)
        .map(|_| {
            let r = rng.next();
            let (s, d) = (r % PODS, (r >> 9) % PODS);
            let to_world = (r >> 18).is_multiple_of(20);
            let protocol = match (r >> 23) % 20 {
                0 => 1,
                1..=3 => 17,
                _ => 6,
            };
            let dropped = (r >> 36) % 20 < 2;
            let direction = 1 + ((r >> 49) % 2) as u8;
            let policies: Arc<[String]> = Arc::from(vec![format!("ns{}/allow-{}", s % 10, r % 40)]);
            let flow = Flow {
                source: Side {
                    ip: ip(s),
                    port: if protocol == 1 { 0 } else { 30_000 + (r >> 28) as u16 % 30_000 },
                    identity: pods[s as usize].identity,
                    pod: Some(Arc::clone(&pods[s as usize])),
                    identity_labels: None,
                },
                destination: if to_world {
                    Side {
                        ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, (r >> 30) as u8)),
                        port: 443,
                        identity: 2,
                        pod: None,
                        identity_labels: Some(Arc::clone(&world)),
                    }
                } else {
                    Side {
                        ip: ip(d),
                        port: [80, 443, 53, 8080, 5432][(r >> 33) as usize % 5],
                        identity: pods[d as usize].identity,
                        pod: Some(Arc::clone(&pods[d as usize])),
                        identity_labels: None,
                    }
                },
                verdict: if dropped { 2 } else { 1 },
                drop_reason: if dropped { 133 } else { 0 },
                event_type: if dropped { 1 } else { 4 },
                event_sub_type: if dropped { 133 } else { 3 },
                trace_observation_point: if dropped { 0 } else { 101 },
                trace_reason: [1, 2, 2, 3][(r >> 45) as usize % 4],
                is_reply: if dropped { None } else { Some((r >> 47).is_multiple_of(4)) },
                traffic_direction: direction,
                policy_match_type: if dropped { 0 } else { 2 },
                protocol,
                tcp_flags: if protocol == 6 { 0x18 } else { 0 },
                icmp_type: if protocol == 1 { 8 } else { 0 },
                ifindex: 42,
                interface: Some(Arc::clone(&interface)),
                allowed_by: (!dropped).then(|| Arc::clone(&policies)),
                denied_by: dropped.then(|| Arc::from(vec![format!("ns{}/default-deny", d % 10)])),
                counters: [r % 1000, r % 1_000_000, (r >> 10) % 1000, (r >> 10) % 1_000_000],
                ..sightline_flow::testing::flow()
            };
            to_proto(&flow, node, None)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Fake collectors.

/// One fake collector's state, shared with its follow streams.
pub(super) struct Node {
    pub(super) index: u16,
    pub(super) name: String,
    /// Flows per second; 0: paused.
    pub(super) rate: AtomicU64,
    /// The next sequence number (flows generated so far).
    pub(super) next_seq: AtomicU64,
    /// Follow streams open now, and ever opened.
    pub(super) following: AtomicUsize,
    pub(super) opened: AtomicUsize,
    /// The most flows a stream has been behind its schedule since the last
    /// reset (its sends waited: the relay did not read fast enough).
    pub(super) max_lag: AtomicU64,
    pub(super) templates: Vec<pb::Flow>,
}

#[derive(Clone)]
pub(super) struct FakeCollector(Arc<Node>);

pub(super) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Counts a follow stream while its generator lives.
pub(super) struct Following(Arc<Node>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.following.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Emits the node's flows into one follow stream at the node's rate: each
/// tick, the flows the schedule says are due (at most 100 ms worth), with
/// the current time and fresh sequence numbers.
pub(super) async fn generate(node: Arc<Node>, tx: mpsc::Sender<Result<GetFlowsResponse, Status>>) {
    node.following.fetch_add(1, Ordering::SeqCst);
    node.opened.fetch_add(1, Ordering::SeqCst);
    let _open = Following(Arc::clone(&node));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut rate, mut start, mut sent) = (0u64, Instant::now(), 0u64);
    loop {
        tick.tick().await;
        let r = node.rate.load(Ordering::SeqCst);
        if r != rate {
            (rate, start, sent) = (r, Instant::now(), 0);
        }
        if rate == 0 {
            if tx.is_closed() {
                return;
            }
            continue;
        }
        let due = u64::try_from(u128::from(rate) * start.elapsed().as_nanos() / 1_000_000_000).unwrap_or(u64::MAX);
        let n = due.saturating_sub(sent).min(rate / 10 + 1);
        node.max_lag.fetch_max(due.saturating_sub(sent + n), Ordering::Relaxed);
        let time = now_ns();
        let first = node.next_seq.fetch_add(n, Ordering::SeqCst);
        for seq in first..first + n {
            let mut flow = node.templates[(seq % TEMPLATES as u64) as usize].clone();
            flow.uuid = flow_uuid(node.index, seq, time);
            let ts = prost_types::Timestamp { seconds: time.div_euclid(1_000_000_000), nanos: time.rem_euclid(1_000_000_000) as i32 };
            flow.time = Some(ts);
            let item = GetFlowsResponse { response_types: Some(ResponseTypes::Flow(flow)), node_name: node.name.clone(), time: Some(ts) };
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        sent += n;
    }
}

#[tonic::async_trait]
impl Observer for FakeCollector {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    async fn get_flows(&self, request: tonic::Request<GetFlowsRequest>) -> Result<tonic::Response<Self::GetFlowsStream>, Status> {
        // Only new flows: the bench's flows exist from the moment they are
        // generated into a follow stream (no history to replay).
        if !request.get_ref().follow {
            return Ok(tonic::Response::new(Box::pin(tokio_stream::empty())));
        }
        let (tx, rx) = mpsc::channel(8192);
        tokio::spawn(generate(Arc::clone(&self.0), tx));
        Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_agent_events(
        &self,
        _: tonic::Request<GetAgentEventsRequest>,
    ) -> Result<tonic::Response<Self::GetAgentEventsStream>, Status> {
        Ok(tonic::Response::new(Box::pin(tokio_stream::empty())))
    }

    async fn get_debug_events(
        &self,
        _: tonic::Request<GetDebugEventsRequest>,
    ) -> Result<tonic::Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented("not a real collector"))
    }

    async fn get_nodes(&self, _: tonic::Request<GetNodesRequest>) -> Result<tonic::Response<GetNodesResponse>, Status> {
        Err(Status::unimplemented("not a real collector"))
    }

    async fn get_namespaces(&self, _: tonic::Request<GetNamespacesRequest>) -> Result<tonic::Response<GetNamespacesResponse>, Status> {
        Ok(tonic::Response::new(GetNamespacesResponse::default()))
    }

    async fn server_status(&self, _: tonic::Request<ServerStatusRequest>) -> Result<tonic::Response<ServerStatusResponse>, Status> {
        Ok(tonic::Response::new(ServerStatusResponse {
            seen_flows: self.0.next_seq.load(Ordering::Relaxed),
            version: "sightline bench fake collector".to_owned(),
            ..ServerStatusResponse::default()
        }))
    }
}

/// Starts a fake collector on 127.0.0.1.
pub(super) async fn start_node(index: u16) -> anyhow::Result<(Arc<Node>, SocketAddr)> {
    let name = format!("node-{}", index + 1);
    let node = Arc::new(Node {
        index,
        templates: templates(&name, index),
        name,
        rate: AtomicU64::new(0),
        next_seq: AtomicU64::new(0),
        following: AtomicUsize::new(0),
        opened: AtomicUsize::new(0),
        max_lag: AtomicU64::new(0),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.context("binding a fake collector")?;
    let addr = listener.local_addr()?;
    let service = ObserverServer::new(FakeCollector(Arc::clone(&node)));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((node, addr))
}

/// Every node's next sequence number: a phase is the flows between two marks.
pub(super) fn marks(nodes: &[Arc<Node>]) -> Vec<u64> {
    nodes.iter().map(|n| n.next_seq.load(Ordering::SeqCst)).collect()
}

pub(super) fn set_rate(nodes: &[Arc<Node>], total: u64) {
    let n = nodes.len() as u64;
    for (i, node) in nodes.iter().enumerate() {
        // Spread the remainder so the nodes add up to `total`.
        let share = total / n + u64::from((i as u64) < total % n);
        node.max_lag.store(0, Ordering::SeqCst);
        node.rate.store(share, Ordering::SeqCst);
    }
}

/// Stops the generators and returns the marks once no tick can still
/// take sequence numbers.
pub(super) async fn pause(nodes: &[Arc<Node>]) -> Vec<u64> {
    set_rate(nodes, 0);
    tokio::time::sleep(TICK * 10).await;
    marks(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_spell_node_sequence_and_time() {
        let u = flow_uuid(2, 123_456_789, 1_795_600_800_123_456_789);
        assert_eq!(u.len(), 36);
        assert_eq!(parse_uuid(u.as_bytes()), Some((2, 123_456_789, 1_795_600_800_123_456_789)));
        assert_eq!(parse_uuid(b"not a uuid"), None);
    }
}
