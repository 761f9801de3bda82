//! `sightline bench export`: flows exported through the real relay, as
//! users feel it.
//!
//! In this process: N fake collectors (tonic servers on 127.0.0.1 serving
//! `observer.Observer` GetFlows with `follow`, each emitting synthetic flows
//! at rate/N per second, paced by a 5 ms ticker) and a sink receiver on
//! loopback. As a child process: the relay binary (this executable's
//! `relay` subcommand) with an export configuration for that sink, its
//! spool in a temporary folder.
//!
//! Every flow carries a UUID that spells its node, its sequence number and
//! its time, so the receiver accounts for every flow (missing, duplicates)
//! and its export delay (arrival − flow time) without keeping records.
//!
//! Phases:
//!
//! 1. **healthy**: the rate for `--duration`, then until every flow has
//!    arrived: throughput, delay p50/p99 (receiver, and the relay's
//!    `sightline_export_delay_seconds`), relay CPU per flow (`/proc/PID/stat`)
//!    and RSS (`VmRSS`, every second);
//! 2. **outage** (`--outage`, 0 skips it; otlp and azure sinks): the rate
//!    goes on while the sink is down; RSS and spool size at the start,
//!    middle and end of the outage; then the sink comes back: time to the
//!    first delivery, time until every flow of the outage has arrived
//!    (while new flows keep coming), and none missing;
//! 3. **find-max** (`--find-max`): the highest rate with delay p99 ≤ 2 s
//!    and nothing missing.
//!
//! Sinks:
//!
//! - `otlp` (default): an OTLP/gRPC logs receiver written here for the
//!   bench: it answers `LogsService/Export` as a Collector does and only
//!   reads each record's `sightline.flow.uuid`, so that it keeps up with
//!   the relay on a shared machine. (`sightline_standins::otlp::OtlpReceiver`
//!   keeps every record it accepts, gigabytes at this rate, and no arrival
//!   times; the export crate's tests check the contract against it.)
//! - `azure`: Entra ID tokens from `sightline_standins::azure::AzureStandin`
//!   (client secret, HTTPS with a test CA); rows POSTed to a Logs Ingestion
//!   endpoint written here (HTTPS, same CA) that gunzips each request and
//!   reads each row's `UUID`, answering 204.
//! - `file`: the relay writes JSON lines to a file in the temporary folder
//!   (rotated at 256 MiB, one backup); a thread tails it. No outage phase.
//!
//! Everything listens on 127.0.0.1. The relay and the temporary folder are
//! removed on exit, on error and on Ctrl-C.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sightline_flow::{Flow, PodMeta, Side, to_proto};
use sightline_proto::flow as pb;
use sightline_proto::observer::observer_server::{Observer, ObserverServer};
use sightline_proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse, GetFlowsRequest,
    GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse,
    ServerStatusRequest, ServerStatusResponse, get_flows_response::ResponseTypes,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::Stream;
use tonic::Status;

/// The delay p99 a healthy relay must stay under.
const DELAY_TARGET: Duration = Duration::from_secs(2);
/// The fake collectors' pacing.
const TICK: Duration = Duration::from_millis(5);
/// Template flows per node (cloned, given a UUID and a time).
const TEMPLATES: usize = 1024;
/// The exporter's name in the relay's configuration and metrics.
const EXPORTER: &str = "bench";
/// gRPC path of OTLP logs.
const OTLP_EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
/// The attribute of an OTLP record that holds the flow's UUID.
const OTLP_UUID_KEY: &[u8] = b"sightline.flow.uuid";
/// How long to wait for the last flows of a phase once the rate stops.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    Otlp,
    Azure,
    File,
}

impl SinkKind {
    fn name(self) -> &'static str {
        match self {
            SinkKind::Otlp => "otlp",
            SinkKind::Azure => "azure",
            SinkKind::File => "file",
        }
    }
}

#[derive(Args)]
pub struct ExportArgs {
    /// Flows per second, all fake collectors together.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// How long the healthy phase runs at the rate.
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Fake collectors the relay follows.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// The sink: an OTLP/gRPC receiver, Azure Monitor Logs Ingestion over
    /// HTTPS, or a file.
    #[arg(long, value_enum, default_value = "otlp")]
    sink: SinkKind,
    /// How long the sink is down in the outage phase (0s: no outage phase;
    /// there is none for a file).
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    outage: Duration,
    /// Also look for the highest rate the relay sustains (delay p99 ≤ 2 s,
    /// nothing missing), in steps of 25 %.
    #[arg(long)]
    find_max: bool,
    /// Record the figures in this Markdown file (section "Export through
    /// the relay").
    #[arg(long)]
    write: Option<PathBuf>,
}

/// `bench export`.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    if args.rate == 0 || args.nodes == 0 || args.duration.is_zero() {
        bail!("--rate, --nodes and --duration must not be zero");
    }
    let work = TempDir::new()?;
    // Ctrl-C or SIGTERM: stop the relay and remove the folder, then exit.
    let relay_pid = Arc::new(AtomicI32::new(0));
    {
        let pid = Arc::clone(&relay_pid);
        let dir = work.path.clone();
        crate::interrupt::on_interrupt(move || {
            stop_pid(pid.load(Ordering::SeqCst));
            let _ = std::fs::remove_dir_all(&dir);
        })
        .context("installing the SIGINT/SIGTERM handler")?;
    }
    let rt = crate::runtime()?;
    let report = rt.block_on(run(args, &work, &relay_pid))?;
    print!("{}", report.table);
    if let Some(path) = &args.write {
        write_report(path, args, &report)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Flows and their UUIDs.

/// A flow's UUID: node (16 bits), sequence number (48 bits), time in Unix
/// ns (64 bits), as hex in the 8-4-4-4-12 layout.
fn flow_uuid(node: u16, seq: u64, time_ns: i64) -> String {
    let v = (u128::from(node) << 112) | (u128::from(seq & 0xffff_ffff_ffff) << 64) | u128::from(time_ns as u64);
    let h = format!("{v:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// (node, sequence number, time) of a UUID made by [`flow_uuid`].
fn parse_uuid(s: &[u8]) -> Option<(u16, u64, i64)> {
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

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// xorshift64*: deterministic flows, no randomness crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Flows as a collector of `node` serves them: pods of a 300-pod cluster
/// with their labels, varied addresses, ports, protocols, verdicts,
/// directions, policies and counters.
fn templates(node: &str, index: u16) -> Vec<pb::Flow> {
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
struct Node {
    index: u16,
    name: String,
    /// Flows per second; 0: paused.
    rate: AtomicU64,
    /// The next sequence number (flows generated so far).
    next_seq: AtomicU64,
    /// Follow streams open now, and ever opened.
    following: AtomicUsize,
    opened: AtomicUsize,
    /// The most flows a stream has been behind its schedule since the last
    /// reset (its sends waited: the relay did not read fast enough).
    max_lag: AtomicU64,
    templates: Vec<pb::Flow>,
}

#[derive(Clone)]
struct FakeCollector(Arc<Node>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Counts a follow stream while its generator lives.
struct Following(Arc<Node>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.following.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Emits the node's flows into one follow stream at the node's rate: each
/// tick, the flows the schedule says are due (at most 100 ms worth), with
/// the current time and fresh sequence numbers.
async fn generate(node: Arc<Node>, tx: mpsc::Sender<Result<GetFlowsResponse, Status>>) {
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
async fn start_node(index: u16) -> anyhow::Result<(Arc<Node>, SocketAddr)> {
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
fn marks(nodes: &[Arc<Node>]) -> Vec<u64> {
    nodes.iter().map(|n| n.next_seq.load(Ordering::SeqCst)).collect()
}

fn set_rate(nodes: &[Arc<Node>], total: u64) {
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
async fn pause(nodes: &[Arc<Node>]) -> Vec<u64> {
    set_rate(nodes, 0);
    tokio::time::sleep(TICK * 10).await;
    marks(nodes)
}

// ---------------------------------------------------------------------------
// What arrived.

const NOT_ARRIVED: u32 = u32::MAX;

/// Per node and sequence number, the export delay of the flow's first
/// arrival (µs), and counts.
#[derive(Default)]
struct Tally {
    delays: Mutex<Vec<Vec<u32>>>,
    received: AtomicU64,
    duplicates: AtomicU64,
    unknown: AtomicU64,
    last_arrival_ns: AtomicU64,
}

impl Tally {
    fn lock(&self) -> MutexGuard<'_, Vec<Vec<u32>>> {
        self.delays.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the arrival now of the flows whose UUIDs `uuids` yields.
    fn arrived<'a>(&self, uuids: impl Iterator<Item = &'a [u8]>) {
        let now = now_ns();
        let (mut received, mut duplicates, mut unknown) = (0, 0, 0);
        {
            let mut delays = self.lock();
            for uuid in uuids {
                let Some((node, seq, time)) = parse_uuid(uuid) else {
                    unknown += 1;
                    continue;
                };
                let node = usize::from(node);
                if delays.len() <= node {
                    delays.resize_with(node + 1, Vec::new);
                }
                let per = &mut delays[node];
                let seq = seq as usize;
                if per.len() <= seq {
                    per.resize((seq + 1).max(per.len() * 2).max(1 << 16), NOT_ARRIVED);
                }
                if per[seq] == NOT_ARRIVED {
                    per[seq] = u32::try_from((now - time).max(0) / 1000).unwrap_or(NOT_ARRIVED - 1);
                    received += 1;
                } else {
                    duplicates += 1;
                }
            }
        }
        self.received.fetch_add(received, Ordering::SeqCst);
        self.duplicates.fetch_add(duplicates, Ordering::SeqCst);
        self.unknown.fetch_add(unknown, Ordering::SeqCst);
        if received + duplicates > 0 {
            self.last_arrival_ns.store(now as u64, Ordering::SeqCst);
        }
    }

    /// Flows of the phase between marks `from` and `to` not arrived yet.
    fn missing(&self, from: &[u64], to: &[u64]) -> u64 {
        let delays = self.lock();
        let mut missing = 0;
        for (node, (&a, &b)) in from.iter().zip(to).enumerate() {
            let per = delays.get(node).map_or(&[][..], Vec::as_slice);
            for seq in a..b {
                if per.get(seq as usize).is_none_or(|&d| d == NOT_ARRIVED) {
                    missing += 1;
                }
            }
        }
        missing
    }

    /// Delays of the arrived flows of a phase, sorted (µs).
    fn delays(&self, from: &[u64], to: &[u64]) -> Vec<u32> {
        let delays = self.lock();
        let mut out = Vec::new();
        for (node, (&a, &b)) in from.iter().zip(to).enumerate() {
            if let Some(per) = delays.get(node) {
                out.extend(per.iter().take(b as usize).skip(a as usize).copied().filter(|&d| d != NOT_ARRIVED));
            }
        }
        out.sort_unstable();
        out
    }
}

fn percentile(sorted: &[u32], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(Duration::from_micros(u64::from(sorted[i.min(sorted.len() - 1)])))
}

/// Finds `needle` in `haystack` from `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= haystack.len() {
        let p = i + haystack[i..].iter().position(|&b| b == first)?;
        if haystack.get(p..p + needle.len()) == Some(needle) {
            return Some(p);
        }
        i = p + 1;
    }
    None
}

/// The 36-byte values following each `key` (e.g. `"UUID":"`) in JSON text.
fn json_uuids<'a>(text: &'a [u8], key: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut at = 0;
    std::iter::from_fn(move || {
        let p = find(text, key, at)? + key.len();
        at = p + 36;
        text.get(p..p + 36)
    })
}

// ---------------------------------------------------------------------------
// Protobuf, read without decoding (OTLP receiver).

/// One field of a protobuf message.
enum Field<'a> {
    Varint,
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Calls `f` with every field of a message; `None` if it does not parse.
fn fields<'a>(mut b: &'a [u8], mut f: impl FnMut(u64, Field<'a>)) -> Option<()> {
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let field = match key & 7 {
            0 => {
                varint(&mut b)?;
                Field::Varint
            }
            1 => {
                b = b.get(8..)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).ok()?;
                let (v, rest) = (b.get(..len)?, b.get(len..)?);
                b = rest;
                Field::Bytes(v)
            }
            5 => {
                b = b.get(4..)?;
                Field::Fixed
            }
            _ => return None,
        };
        f(key >> 3, field);
    }
    Some(())
}

/// The field `number` of a message, when it is length-delimited.
fn each_bytes<'a>(message: &'a [u8], number: u64, mut f: impl FnMut(&'a [u8])) -> Option<()> {
    fields(message, |n, field| {
        if let (true, Field::Bytes(v)) = (n == number, field) {
            f(v);
        }
    })
}

/// The `sightline.flow.uuid` of every log record of an
/// `ExportLogsServiceRequest` (resource_logs 1 → scope_logs 2 →
/// log_records 2 → attributes 6 → key 1 / value 2 → string_value 1).
fn otlp_uuids(request: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut bad = false;
    let top = each_bytes(request, 1, |resource_logs| {
        let r = each_bytes(resource_logs, 2, |scope_logs| {
            let r = each_bytes(scope_logs, 2, |record| {
                let mut uuid = None;
                let r = each_bytes(record, 6, |kv| {
                    let (mut key, mut value) = (None, None);
                    let _ = fields(kv, |n, f| match (n, f) {
                        (1, Field::Bytes(k)) => key = Some(k),
                        (2, Field::Bytes(v)) => value = Some(v),
                        _ => {}
                    });
                    if key == Some(OTLP_UUID_KEY)
                        && let Some(v) = value
                    {
                        let _ = each_bytes(v, 1, |s| uuid = Some(s));
                    }
                });
                bad |= r.is_none();
                out.push(uuid.unwrap_or_default());
            });
            bad |= r.is_none();
        });
        bad |= r.is_none();
    });
    (top.is_some() && !bad).then_some(out)
}

// ---------------------------------------------------------------------------
// Receivers.

/// An accept loop that can be taken down (listener and connections
/// closed) and brought back on the same port.
struct Server {
    addr: SocketAddr,
    running: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
    serve: Serve,
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Serves one accepted connection.
type Serve = Arc<dyn Fn(tokio::net::TcpStream) -> BoxFuture + Send + Sync>;

impl Server {
    async fn start(serve: Serve) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the sink receiver")?;
        let server = Self { addr: listener.local_addr()?, running: Mutex::new(None), serve };
        server.spawn(listener);
        Ok(server)
    }

    fn spawn(&self, listener: TcpListener) {
        let (stop, mut stopped) = oneshot::channel();
        let serve = Arc::clone(&self.serve);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => if let Ok((stream, _)) = accepted {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(serve(stream));
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            drop(listener);
            connections.shutdown().await;
        });
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some((stop, task));
    }

    async fn set_down(&self, down: bool) -> anyhow::Result<()> {
        if down {
            let running = self.running.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some((stop, task)) = running {
                let _ = stop.send(());
                let _ = task.await;
            }
        } else if self.running.lock().unwrap_or_else(PoisonError::into_inner).is_none() {
            let listener = TcpListener::bind(self.addr).await.with_context(|| format!("binding {} again", self.addr))?;
            self.spawn(listener);
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some((_, task)) = self.running.lock().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
    }
}

/// Serves one connection with hyper (HTTP/1.1 or HTTP/2, TLS or not).
async fn serve_http<I, F, Fut, B>(io: I, handle: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = hyper::service::service_fn(move |request| {
        let handle = handle.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(request).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), service).await;
}

type GrpcBody = StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>>;

fn grpc_response(status: tonic::Code, message: &str) -> Response<GrpcBody> {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", i32::from(status).into());
    if !message.is_empty()
        && let Ok(v) = message.parse()
    {
        trailers.insert("grpc-message", v);
    }
    let mut frames = Vec::with_capacity(2);
    if status == tonic::Code::Ok {
        // One empty ExportLogsServiceResponse, uncompressed.
        frames.push(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))));
    }
    frames.push(Ok(Frame::trailers(trailers)));
    let mut response = Response::new(StreamBody::new(tokio_stream::iter(frames)));
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/grpc"));
    response
}

/// OTLP/gRPC `LogsService/Export`.
async fn otlp_export(tally: Arc<Tally>, request: Request<Incoming>) -> Response<GrpcBody> {
    if request.uri().path() != OTLP_EXPORT_PATH {
        return grpc_response(tonic::Code::Unimplemented, "only LogsService/Export is served");
    }
    let Ok(body) = request.into_body().collect().await.map(http_body_util::Collected::to_bytes) else {
        return grpc_response(tonic::Code::Unavailable, "reading the request");
    };
    // gRPC messages: compressed flag, 4-byte length, message.
    let mut rest = &body[..];
    while !rest.is_empty() {
        let Some((&[flag, a, b, c, d], after)) = rest.split_first_chunk::<5>() else {
            return grpc_response(tonic::Code::InvalidArgument, "truncated gRPC frame");
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if flag != 0 || after.len() < len {
            return grpc_response(tonic::Code::InvalidArgument, "compressed or truncated message");
        }
        match otlp_uuids(&after[..len]) {
            Some(uuids) => tally.arrived(uuids.into_iter()),
            None => return grpc_response(tonic::Code::InvalidArgument, "not an ExportLogsServiceRequest"),
        }
        rest = &after[len..];
    }
    grpc_response(tonic::Code::Ok, "")
}

/// Logs Ingestion: gunzips the JSON array, reads each row's UUID, 204.
async fn azure_ingest(tally: Arc<Tally>, path_end: Arc<str>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let status = |s: StatusCode| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = s;
        r
    };
    if request.method() != hyper::Method::POST || !request.uri().path().ends_with(&*path_end) {
        return status(StatusCode::NOT_FOUND);
    }
    if !request.headers().get("authorization").is_some_and(|v| v.as_bytes().starts_with(b"Bearer ")) {
        return status(StatusCode::UNAUTHORIZED);
    }
    let gzip = request.headers().get("content-encoding").is_some_and(|v| v.as_bytes() == b"gzip");
    let Ok(body) = request.into_body().collect().await.map(http_body_util::Collected::to_bytes) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let text = if gzip {
        let mut plain = Vec::with_capacity(body.len() * 16);
        if flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain).is_err() {
            return status(StatusCode::BAD_REQUEST);
        }
        plain
    } else {
        body.to_vec()
    };
    tally.arrived(json_uuids(&text, b"\"UUID\":\""));
    status(StatusCode::NO_CONTENT)
}

/// Tails the file sink's output (following rotation) until `stop`.
fn tail_file(path: &Path, tally: &Tally, stop: &AtomicBool) {
    use std::os::unix::fs::MetadataExt as _;
    let mut file: Option<std::fs::File> = None;
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Ordering::SeqCst) {
        let Some(f) = file.as_mut() else {
            file = std::fs::File::open(path).ok();
            if file.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        };
        match f.read(&mut buf) {
            Ok(0) | Err(_) => {
                // At the end: a rotation replaced the file? Then read the
                // new one (this one is complete).
                let rotated = match (f.metadata(), std::fs::metadata(path)) {
                    (Ok(a), Ok(b)) => a.ino() != b.ino(),
                    _ => false,
                };
                if rotated {
                    file = None;
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
                    tally.arrived(json_uuids(&pending[..end], b"\"uuid\":\""));
                    pending.drain(..=end);
                }
            }
        }
    }
}

/// The running sink.
enum Sink {
    Otlp(Server),
    Azure { server: Server, _standin: sightline_standins::azure::AzureStandin },
    File { stop: Arc<AtomicBool>, thread: Option<std::thread::JoinHandle<()>> },
}

impl Sink {
    async fn start(kind: SinkKind, dir: &Path, tally: &Arc<Tally>) -> anyhow::Result<(Self, String)> {
        match kind {
            SinkKind::Otlp => {
                let t = Arc::clone(tally);
                let server = Server::start(Arc::new(move |stream| -> BoxFuture {
                    let t = Arc::clone(&t);
                    Box::pin(serve_http(stream, move |r| otlp_export(Arc::clone(&t), r)))
                }))
                .await?;
                let config = format!("    otlp:\n      endpoint: http://{}\n      protocol: grpc\n", server.addr);
                Ok((Sink::Otlp(server), config))
            }
            SinkKind::Azure => {
                use sightline_standins::azure::{AzureStandin, ColumnKind, StandinOptions};
                let ca = sightline_standins::tls::TestCa::new("sightline bench CA")?;
                let ca_file = ca.write_ca(dir)?;
                let columns = sightline_export::encode::azure::COLUMNS
                    .iter()
                    .map(|(name, ty)| {
                        let kind = ColumnKind::from_arm_name(ty.arm_name()).ok_or_else(|| anyhow!("column type {}", ty.arm_name()))?;
                        Ok(((*name).to_owned(), kind))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let standin = AzureStandin::start(&ca, StandinOptions::new(columns)).await?;
                let opts = standin.options();
                let secret_file = dir.join("client-secret");
                std::fs::write(&secret_file, &opts.client_secret)?;
                let tls = sightline_standins::tls::server_config(&ca.issue(&["127.0.0.1", "localhost"])?, &[b"h2", b"http/1.1"])?;
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                let path_end: Arc<str> = Arc::from(format!("/dataCollectionRules/{}/streams/{}", opts.dcr_immutable_id, opts.stream));
                let t = Arc::clone(tally);
                let server = Server::start(Arc::new(move |stream| -> BoxFuture {
                    let (t, acceptor, path_end) = (Arc::clone(&t), acceptor.clone(), Arc::clone(&path_end));
                    Box::pin(async move {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            serve_http(tls, move |r| azure_ingest(Arc::clone(&t), Arc::clone(&path_end), r)).await;
                        }
                    })
                }))
                .await?;
                let config = format!(
                    "    azureMonitor:\n      endpoint: https://{}\n      dcrImmutableId: {}\n      stream: {}\n      caFile: {}\n      auth:\n        authorityHost: {}\n        clientSecret:\n          tenantId: {}\n          clientId: {}\n          secretFile: {}\n",
                    server.addr,
                    opts.dcr_immutable_id,
                    opts.stream,
                    ca_file.display(),
                    standin.authority_host(),
                    opts.tenant_id,
                    opts.client_id,
                    secret_file.display()
                );
                Ok((Sink::Azure { server, _standin: standin }, config))
            }
            SinkKind::File => {
                let path = dir.join("flows.log");
                let stop = Arc::new(AtomicBool::new(false));
                let (t, s, p) = (Arc::clone(tally), Arc::clone(&stop), path.clone());
                let thread = std::thread::Builder::new().name("tail".into()).spawn(move || tail_file(&p, &t, &s))?;
                let config = format!("    file:\n      path: {}\n      maxSizeMB: 256\n      maxBackups: 1\n", path.display());
                Ok((Sink::File { stop, thread: Some(thread) }, config))
            }
        }
    }

    fn server(&self) -> Option<&Server> {
        match self {
            Sink::Otlp(server) | Sink::Azure { server, .. } => Some(server),
            Sink::File { .. } => None,
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::File { stop, thread } = self {
            stop.store(true, Ordering::SeqCst);
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The relay process.

/// A temporary folder, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("sightline-bench-export-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// SIGTERM, then SIGKILL after 5 s.
fn stop_pid(pid: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) with a pid this process started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..100 {
        // SAFETY: waitpid(2) on our own child, no status wanted.
        if unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// The relay child; stopped on drop.
struct Relay {
    child: Child,
    pid_cell: Arc<AtomicI32>,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Relay {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        stop_pid(self.pid_cell.swap(0, Ordering::SeqCst));
        let _ = self.child.try_wait();
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn start_relay(dir: &Path, peers: &[(String, SocketAddr)], config: &Path, pid_cell: &Arc<AtomicI32>) -> anyhow::Result<Relay> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("finding this executable")?;
    let (listen, metrics) = (free_port()?, free_port()?);
    let log = dir.join("relay.log");
    let mut cmd = Command::new(exe);
    cmd.arg("relay").arg("--listen").arg(listen.to_string());
    for (name, addr) in peers {
        cmd.arg("--peer").arg(format!("{name}={addr}"));
    }
    cmd.arg("--export-config")
        .arg(config)
        .arg("--metrics-address")
        .arg(metrics.to_string())
        .arg("--spool-dir")
        .arg(dir.join("spool"))
        .env("SIGHTLINE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    // SAFETY: prctl(2) only, between fork and exec: the relay dies with
    // this process even if it is killed without a chance to clean up.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the relay")?;
    pid_cell.store(child.id() as i32, Ordering::SeqCst);
    Ok(Relay { child, pid_cell: Arc::clone(pid_cell), metrics, log })
}

/// `GET path` on the relay's metrics address: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(5), exchange).await.context("no answer in 5 s")??;
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned());
    // A chunked body keeps its chunk-size lines; the metrics parser skips them.
    Ok((status, body))
}

/// The relay's export metrics of the bench exporter.
#[derive(Clone, Debug, Default)]
struct RelayMetrics {
    spool_bytes: f64,
    dropped: f64,
    /// (upper bound in seconds, cumulative count).
    delay: Vec<(f64, f64)>,
}

fn parse_metrics(text: &str) -> RelayMetrics {
    let mut m = RelayMetrics::default();
    let label = format!("exporter=\"{EXPORTER}\"");
    for line in text.lines().filter(|l| l.contains(&label)) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        if name.starts_with("sightline_export_spool_bytes{") {
            m.spool_bytes = value;
        } else if name.starts_with("sightline_export_records_total{") && name.contains("outcome=\"dropped\"") {
            m.dropped = value;
        } else if name.starts_with("sightline_export_delay_seconds_bucket{") {
            let le = name.split("le=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("");
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
            m.delay.push((bound, value));
        }
    }
    m.delay.sort_by(|a, b| a.0.total_cmp(&b.0));
    m
}

async fn relay_metrics(relay: &Relay) -> RelayMetrics {
    match http_get(relay.metrics, "/metrics").await {
        Ok((200, body)) => parse_metrics(&body),
        _ => RelayMetrics::default(),
    }
}

/// The bucket bound under which fraction `p` of the delays observed
/// between two scrapes fall (the relay's histogram).
fn histogram_quantile(before: &RelayMetrics, after: &RelayMetrics, p: f64) -> Option<f64> {
    let counts: Vec<(f64, f64)> = after
        .delay
        .iter()
        .map(|&(le, c)| (le, c - before.delay.iter().find(|&&(b, _)| b == le).map_or(0.0, |&(_, c)| c)))
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    counts.iter().find(|&&(_, c)| c >= total * p).map(|&(le, _)| le)
}

/// Relay CPU time (user + system) and resident memory, from /proc.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// CPU of this process (the fake collectors and the receiver).
fn own_cpu_time() -> Option<Duration> {
    cpu_time(std::process::id())
}

// ---------------------------------------------------------------------------
// Phases.

/// What a healthy phase measured.
#[derive(Clone, Debug)]
struct Healthy {
    rate: u64,
    seconds: f64,
    generated: u64,
    received: u64,
    missing: u64,
    duplicates: u64,
    p50: Option<Duration>,
    p99: Option<Duration>,
    max: Option<Duration>,
    relay_p50: Option<f64>,
    relay_p99: Option<f64>,
    cpu_per_flow: Option<Duration>,
    own_cpu_per_flow: Option<Duration>,
    rss_min: u64,
    rss_max: u64,
    /// The most flows one fake collector was behind its schedule, and
    /// whether that was more than a second of its share of the rate (the
    /// relay did not read its streams fast enough).
    max_lag: u64,
    fell_behind: bool,
    dropped: f64,
}

impl Healthy {
    fn ok(&self) -> bool {
        self.missing == 0 && self.p99.is_some_and(|d| d <= DELAY_TARGET) && !self.fell_behind
    }
}

/// What the outage phase measured.
#[derive(Clone, Debug)]
struct Outage {
    down: Duration,
    rate: u64,
    rss: [u64; 3],
    spool: [f64; 3],
    rss_max: u64,
    backlog: u64,
    first_delivery: Option<Duration>,
    drain: Option<Duration>,
    generated: u64,
    missing: u64,
    duplicates: u64,
    dropped: f64,
}

struct Bench<'a> {
    nodes: &'a [Arc<Node>],
    tally: &'a Tally,
    relay: &'a Relay,
}

impl Bench<'_> {
    /// Waits until every flow between `from` and `to` has arrived, or
    /// `timeout` has passed; returns the time it took.
    async fn settle(&self, from: &[u64], to: &[u64], timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if self.tally.missing(from, to) == 0 {
                return Some(start.elapsed());
            }
            if start.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn check_relay(&self) -> anyhow::Result<u32> {
        let pid = self.relay.pid();
        if rss_bytes(pid).is_none() {
            bail!("the relay exited; its log ends with:\n{}", self.relay.log_tail());
        }
        Ok(pid)
    }

    async fn healthy(&self, rate: u64, duration: Duration) -> anyhow::Result<Healthy> {
        let pid = self.check_relay()?;
        let dups0 = self.tally.duplicates.load(Ordering::SeqCst);
        let m0 = relay_metrics(self.relay).await;
        let (cpu0, own0) = (cpu_time(pid), own_cpu_time());
        let from = marks(self.nodes);
        set_rate(self.nodes, rate);
        let start = Instant::now();
        let (mut rss_min, mut rss_max) = (u64::MAX, 0);
        while start.elapsed() < duration {
            tokio::time::sleep(Duration::from_secs(1).min(duration.saturating_sub(start.elapsed()))).await;
            let rss = rss_bytes(pid).ok_or_else(|| anyhow!("the relay exited; its log ends with:\n{}", self.relay.log_tail()))?;
            (rss_min, rss_max) = (rss_min.min(rss), rss_max.max(rss));
        }
        let max_lag = self.nodes.iter().map(|n| n.max_lag.load(Ordering::SeqCst)).max().unwrap_or(0);
        let to = pause(self.nodes).await;
        let seconds = start.elapsed().as_secs_f64();
        let _ = self.settle(&from, &to, SETTLE_TIMEOUT).await;
        let (cpu1, own1) = (cpu_time(pid), own_cpu_time());
        if let Some(rss) = rss_bytes(pid) {
            (rss_min, rss_max) = (rss_min.min(rss), rss_max.max(rss));
        }
        let m1 = relay_metrics(self.relay).await;
        let generated: u64 = from.iter().zip(&to).map(|(a, b)| b - a).sum();
        let delays = self.tally.delays(&from, &to);
        let per_flow = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) if generated > 0 => Some(b.saturating_sub(a) / u32::try_from(generated).unwrap_or(u32::MAX)),
            _ => None,
        };
        Ok(Healthy {
            rate,
            seconds,
            generated,
            received: delays.len() as u64,
            missing: self.tally.missing(&from, &to),
            duplicates: self.tally.duplicates.load(Ordering::SeqCst) - dups0,
            p50: percentile(&delays, 0.50),
            p99: percentile(&delays, 0.99),
            max: delays.last().map(|&d| Duration::from_micros(u64::from(d))),
            relay_p50: histogram_quantile(&m0, &m1, 0.50),
            relay_p99: histogram_quantile(&m0, &m1, 0.99),
            cpu_per_flow: per_flow(cpu0, cpu1),
            own_cpu_per_flow: per_flow(own0, own1),
            rss_min,
            rss_max,
            max_lag,
            fell_behind: max_lag > rate / self.nodes.len() as u64,
            dropped: m1.dropped - m0.dropped,
        })
    }

    async fn outage(&self, sink: &Server, rate: u64, down: Duration) -> anyhow::Result<Outage> {
        let pid = self.check_relay()?;
        let dups0 = self.tally.duplicates.load(Ordering::SeqCst);
        let dropped0 = relay_metrics(self.relay).await.dropped;
        let from = marks(self.nodes);
        set_rate(self.nodes, rate);
        tokio::time::sleep(Duration::from_secs(3)).await;
        sink.set_down(true).await?;
        let t_down = Instant::now();
        let sample = || async { (rss_bytes(pid).unwrap_or(0), relay_metrics(self.relay).await.spool_bytes) };
        // The relay's spool gauge is refreshed once a second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let start = sample().await;
        let mut rss_max = start.0;
        let mut mid = start;
        while t_down.elapsed() < down {
            tokio::time::sleep(Duration::from_secs(1).min(down.saturating_sub(t_down.elapsed()))).await;
            let s = sample().await;
            rss_max = rss_max.max(s.0);
            if t_down.elapsed() >= down / 2 && mid == start {
                mid = s;
            }
            if s.0 == 0 {
                bail!("the relay exited during the outage; its log ends with:\n{}", self.relay.log_tail());
            }
        }
        let end = sample().await;
        rss_max = rss_max.max(end.0);
        let backlog_marks = marks(self.nodes);
        let received_at_up = self.tally.received.load(Ordering::SeqCst);
        sink.set_down(false).await?;
        let t_up = Instant::now();
        let backlog = self.tally.missing(&from, &backlog_marks);
        // New flows keep coming while the backlog drains.
        let mut first_delivery = None;
        let drain = loop {
            if first_delivery.is_none() && self.tally.received.load(Ordering::SeqCst) > received_at_up {
                first_delivery = Some(t_up.elapsed());
            }
            if self.tally.missing(&from, &backlog_marks) == 0 {
                break Some(t_up.elapsed());
            }
            if t_up.elapsed() > down * 4 + SETTLE_TIMEOUT {
                break None;
            }
            if let Some(rss) = rss_bytes(pid) {
                rss_max = rss_max.max(rss);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let to = pause(self.nodes).await;
        let _ = self.settle(&from, &to, SETTLE_TIMEOUT).await;
        Ok(Outage {
            down,
            rate,
            rss: [start.0, mid.0, end.0],
            spool: [start.1, mid.1, end.1],
            rss_max,
            backlog,
            first_delivery,
            drain,
            generated: from.iter().zip(&to).map(|(a, b)| b - a).sum(),
            missing: self.tally.missing(&from, &to),
            duplicates: self.tally.duplicates.load(Ordering::SeqCst) - dups0,
            dropped: relay_metrics(self.relay).await.dropped - dropped0,
        })
    }
}

// ---------------------------------------------------------------------------
// The run and its report.

struct Report {
    table: String,
    /// The machine, as it was before the run.
    machine: String,
}

async fn run(args: &ExportArgs, work: &TempDir, pid_cell: &Arc<AtomicI32>) -> anyhow::Result<Report> {
    let machine = machine();
    let tally = Arc::new(Tally::default());
    let mut nodes = Vec::new();
    let mut peers = Vec::new();
    for i in 0..args.nodes {
        let (node, addr) = start_node(i).await?;
        peers.push((node.name.clone(), addr));
        nodes.push(node);
    }
    let (sink, sink_config) = Sink::start(args.sink, &work.path, &tally).await?;
    // Room for the whole outage at this rate (records of 1–2.5 KB), at
    // least the default 512 MiB.
    let spool_mb = (args.rate * (args.outage.as_secs() + 15) * 3 / 1024).max(512);
    let config = work.path.join("export.yaml");
    std::fs::write(
        &config,
        format!(
            "exporters:\n- name: {EXPORTER}\n  spool:\n    path: {}\n    maxSizeMB: {spool_mb}\n  sink:\n{sink_config}",
            work.path.join("spool").join(EXPORTER).display()
        ),
    )?;
    let relay = start_relay(&work.path, &peers, &config, pid_cell)?;
    eprintln!("bench: relay pid {} following {} fake collector(s), {} sink …", relay.pid(), args.nodes, args.sink.name());
    // Ready: /readyz, and every fake collector followed.
    let start = Instant::now();
    loop {
        let ready = matches!(http_get(relay.metrics, "/readyz").await, Ok((200, _)));
        if ready && nodes.iter().all(|n| n.following.load(Ordering::SeqCst) > 0) {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the relay was not ready after 30 s; its log ends with:\n{}", relay.log_tail());
        }
        if rss_bytes(relay.pid()).is_none() {
            bail!("the relay exited; its log ends with:\n{}", relay.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bench = Bench { nodes: &nodes, tally: &tally, relay: &relay };
    // A short warm-up: connections made, buffers grown, token fetched.
    let _ = bench.healthy(args.rate / 10, Duration::from_secs(2)).await?;

    eprintln!("bench: healthy sink, {} flows/s for {:?} …", args.rate, args.duration);
    let healthy = bench.healthy(args.rate, args.duration).await?;
    let outage = match sink.server() {
        Some(server) if !args.outage.is_zero() => {
            eprintln!("bench: sink down for {:?} at {} flows/s, then back …", args.outage, args.rate);
            Some(bench.outage(server, args.rate, args.outage).await?)
        }
        _ => None,
    };
    let max = if args.find_max {
        let step = args.duration.min(Duration::from_secs(15));
        let mut steps = Vec::new();
        let mut rate = args.rate;
        let mut best = None;
        let first_ok = healthy.ok();
        loop {
            eprintln!("bench: find-max: {rate} flows/s for {step:?} …");
            let h = bench.healthy(rate, step).await?;
            let ok = h.ok();
            steps.push(h);
            if ok {
                best = Some(best.map_or(rate, |b: u64| b.max(rate)));
            }
            if first_ok {
                if !ok || rate > 2_000_000 {
                    break;
                }
                rate = rate * 5 / 4;
            } else {
                if ok || rate < 2000 {
                    break;
                }
                rate = rate * 4 / 5;
            }
            // Let the relay catch up before the next step.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Some((best.unwrap_or(0), steps))
    } else {
        None
    };
    let unknown = tally.unknown.load(Ordering::SeqCst);
    if unknown > 0 {
        eprintln!("bench: warning: {unknown} records without a bench UUID arrived");
    }
    let reconnects: usize = nodes.iter().map(|n| n.opened.load(Ordering::SeqCst).saturating_sub(1)).sum();
    if reconnects > 0 {
        eprintln!("bench: warning: the relay reopened {reconnects} follow stream(s); flows in flight then count as missing");
    }
    drop(relay);
    drop(sink);
    let table = render(&healthy, outage.as_ref(), max.as_ref());
    Ok(Report { table, machine })
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("–".to_owned(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("not within the wait".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / f64::from(1 << 20))
}

fn le(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| if v.is_infinite() { "> 2400 s".to_owned() } else { format!("≤ {v} s") })
}

fn render(h: &Healthy, o: Option<&Outage>, max: Option<&(u64, Vec<Healthy>)>) -> String {
    let mut t = String::new();
    let met = |ok: bool| if ok { "met" } else { "**missed**" };
    let _ = writeln!(t, "| phase | figure | value |");
    let _ = writeln!(t, "|---|---|---|");
    let name = format!("healthy sink, {} flows/s for {:.0} s", h.rate, h.seconds);
    let rows: Vec<(String, String)> = vec![
        ("flows generated / received".into(), format!("{} / {} ({:.0} flows/s)", h.generated, h.received, h.received as f64 / h.seconds)),
        ("missing / duplicates / dropped by the relay".into(), format!("{} / {} / {}", h.missing, h.duplicates, h.dropped)),
        (
            "export delay p50 / p99 / max (receiver: arrival − flow time)".into(),
            format!("{} / {} / {} (p99 target < 2 s: {})", ms(h.p50), ms(h.p99), ms(h.max), met(h.p99.is_some_and(|d| d < DELAY_TARGET))),
        ),
        ("export delay p50 / p99 (relay's histogram, bucket bound)".into(), format!("{} / {}", le(h.relay_p50), le(h.relay_p99))),
        (
            "relay CPU per flow".into(),
            h.cpu_per_flow.map_or("–".into(), |c| {
                format!("{:.1} µs ({:.0} % of one core at this rate)", c.as_secs_f64() * 1e6, c.as_secs_f64() * h.rate as f64 * 100.0)
            }),
        ),
        (
            "bench process CPU per flow (fake collectors + receiver, same cores)".into(),
            h.own_cpu_per_flow.map_or("–".into(), |c| format!("{:.1} µs", c.as_secs_f64() * 1e6)),
        ),
        ("relay RSS (sampled every second) min / max".into(), format!("{} / {}", mib(h.rss_min), mib(h.rss_max))),
        (
            "most flows a fake collector was behind its schedule".into(),
            format!("{}{}", h.max_lag, if h.fell_behind { " (**the relay did not keep up**)" } else { "" }),
        ),
    ];
    for (i, (k, v)) in rows.into_iter().enumerate() {
        let _ = writeln!(t, "| {} | {k} | {v} |", if i == 0 { name.as_str() } else { "" });
    }
    if let Some(o) = o {
        let name = format!("sink down {:.0} s at {} flows/s", o.down.as_secs_f64(), o.rate);
        let flat = o.rss[2] as f64 <= o.rss[0] as f64 * 1.25 + f64::from(32 << 20);
        let rows: Vec<(String, String)> = vec![
            (
                "relay RSS at start / middle / end of the outage (max)".into(),
                format!("{} / {} / {} ({}) (flat: {})", mib(o.rss[0]), mib(o.rss[1]), mib(o.rss[2]), mib(o.rss_max), met(flat)),
            ),
            (
                "spool size at start / middle / end (relay metrics)".into(),
                format!("{} / {} / {}", mib(o.spool[0] as u64), mib(o.spool[1] as u64), mib(o.spool[2] as u64)),
            ),
            ("backlog when the sink came back".into(), format!("{} flows", o.backlog)),
            ("first delivery after the sink came back".into(), secs(o.first_delivery)),
            ("backlog delivered (drain time, new flows still coming)".into(), secs(o.drain)),
            ("flows generated / missing / duplicates / dropped".into(), format!("{} / {} / {} / {}", o.generated, o.missing, o.duplicates, o.dropped)),
        ];
        for (i, (k, v)) in rows.into_iter().enumerate() {
            let _ = writeln!(t, "| {} | {k} | {v} |", if i == 0 { name.as_str() } else { "" });
        }
    }
    if let Some((best, steps)) = max {
        let tried = steps
            .iter()
            .map(|s| format!("{}: p99 {}, missing {}, CPU {}", s.rate, ms(s.p99), s.missing, s.cpu_per_flow.map_or("–".into(), |c| format!("{:.1} µs", c.as_secs_f64() * 1e6))))
            .collect::<Vec<_>>()
            .join("; ");
        let _ = writeln!(t, "| highest sustained rate | p99 ≤ 2 s, nothing missing, steps of 25 % | **{best} flows/s** ({tried}) |");
    }
    t
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or(String::new(), |(_, m)| m.trim().to_owned());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    format!("{cores} CPUs ({cpu}), Linux {}, load average {load} before the run", kernel.trim())
}

fn today() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut out = Vec::new();
    sightline_flow::json_fast::write_rfc3339(&mut out, i64::try_from(secs).unwrap_or(0), 0);
    String::from_utf8_lossy(&out[..10.min(out.len())]).into_owned()
}

fn write_report(path: &Path, args: &ExportArgs, report: &Report) -> anyhow::Result<()> {
    let mut command = format!(
        "./target/release/sightline bench export --rate {} --duration {}s --nodes {} --sink {} --outage {}s",
        args.rate,
        args.duration.as_secs(),
        args.nodes,
        args.sink.name(),
        args.outage.as_secs()
    );
    if args.find_max {
        command.push_str(" --find-max");
    }
    command.push_str(&format!(" --write {}", path.display()));
    let name = format!("export-{}", args.sink.name());
    let section = format!(
        "<!-- bench:{name}:start -->\nMeasured on {} by `{command}` ({}), the relay a release build.\n\n{}<!-- bench:{name}:end -->",
        today(),
        report.machine,
        report.table
    );
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if !text.contains(&format!("<!-- bench:{name}:start -->")) && !text.contains("## Export through the relay") {
        std::fs::write(path, format!("{}\n## Export through the relay\n", text.trim_end()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    super::write_section(path, &name, &section)
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

    #[test]
    fn otlp_requests_are_read_without_decoding() {
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        use prost::Message as _;
        let kv = |k: &str, v: &str| KeyValue {
            key: k.to_owned(),
            value: Some(AnyValue { value: Some(Value::StringValue(v.to_owned())) }),
            ..KeyValue::default()
        };
        let uuids = [flow_uuid(0, 1, 5), flow_uuid(1, 2, 6)];
        let records = uuids
            .iter()
            .map(|u| LogRecord { time_unix_nano: 7, attributes: vec![kv("k8s.node.name", "n"), kv("sightline.flow.uuid", u)], ..LogRecord::default() })
            .collect();
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs { log_records: records, ..ScopeLogs::default() }],
                ..ResourceLogs::default()
            }],
        };
        let bytes = request.encode_to_vec();
        let found = otlp_uuids(&bytes).expect("parses");
        assert_eq!(found, vec![uuids[0].as_bytes(), uuids[1].as_bytes()]);
        assert!(otlp_uuids(&bytes[..bytes.len() - 3]).is_none());
    }

    #[test]
    fn json_rows_give_their_uuids() {
        let a = flow_uuid(0, 1, 2);
        let b = flow_uuid(0, 2, 3);
        let text = format!("[{{\"TimeGenerated\":\"x\",\"UUID\":\"{a}\"}},{{\"UUID\":\"{b}\",\"Verdict\":\"FORWARDED\"}}]");
        let found: Vec<&[u8]> = json_uuids(text.as_bytes(), b"\"UUID\":\"").collect();
        assert_eq!(found, vec![a.as_bytes(), b.as_bytes()]);
    }

    #[test]
    fn the_tally_counts_missing_and_duplicates() {
        let t = Tally::default();
        let time = now_ns();
        let u: Vec<String> = (0..4).map(|s| flow_uuid(1, s, time)).collect();
        t.arrived([u[0].as_bytes(), u[2].as_bytes(), u[2].as_bytes()].into_iter());
        assert_eq!(t.missing(&[0, 0], &[0, 4]), 2);
        assert_eq!(t.duplicates.load(Ordering::SeqCst), 1);
        assert_eq!(t.delays(&[0, 0], &[0, 4]).len(), 2);
    }

    #[test]
    fn relay_metrics_are_parsed() {
        let text = "# TYPE x\nsightline_export_spool_bytes{exporter=\"bench\"} 4096\n\
            sightline_export_records_total{exporter=\"bench\",outcome=\"dropped\"} 3\n\
            sightline_export_delay_seconds_bucket{exporter=\"bench\",le=\"0.1\"} 50\n\
            sightline_export_delay_seconds_bucket{exporter=\"bench\",le=\"1.0\"} 99\n\
            sightline_export_delay_seconds_bucket{exporter=\"bench\",le=\"+Inf\"} 100\n";
        let m = parse_metrics(text);
        assert_eq!((m.spool_bytes, m.dropped), (4096.0, 3.0));
        assert_eq!(histogram_quantile(&RelayMetrics::default(), &m, 0.5), Some(0.1));
        assert_eq!(histogram_quantile(&RelayMetrics::default(), &m, 0.99), Some(1.0));
    }
}
