//! Benchmarks the CLI runs (`sightline bench …`).
//!
//! Per-packet cost of the datapath programs, measured in the kernel with
//! `BPF_PROG_TEST_RUN` (through [`crate::testrun`], the harness the probe
//! tests use): the loaded `from_container` program runs crafted packets and
//! the kernel reports the time of each run. Every run gets a packet of its
//! own from a set of many sources, identities and ports (so lookups are not
//! served from a warm cache line), the ring buffer is drained after every
//! run (so every event the datapath writes is written, as with a running
//! collector), and the baseline is measured in the same run with the same
//! keys.
//!
//! The probes are loaded privately (their own pin directory), their maps
//! filled directly, and nothing is attached anywhere: no traffic moves.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use sightline_abi as abi;
use sightline_abi::EndpointInfo;

use crate::policy::compiler::{NamedPort, PodInfo};
use crate::policy::model::{IpBlock, LabelSelector, NetworkPolicy, Peer, PolicyPort, PolicyType, PortRef, Protocol, Rule};
use crate::testrun::{self, Harness, TestRunError};

/// What one kind of packet cost, over many runs with varied keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunCost {
    /// Mean of the kernel's time per run, in nanoseconds (each run is one
    /// `BPF_PROG_TEST_RUN` of one packet; the kernel's clock reads around
    /// it are included, in the baseline as in every case).
    pub mean_ns: f64,
    /// Runs measured.
    pub runs: u64,
    /// Runs after which the ring buffer held at least one event.
    pub runs_with_event: u64,
    /// Events drained from the ring buffer.
    pub events: u64,
    /// Events the datapath could not write (ring buffer full): 0 when the
    /// drain keeps up, which it must for the figure to be whole.
    pub lost: u64,
}

impl RunCost {
    /// The fraction of runs that wrote at least one event.
    #[must_use]
    pub fn event_fraction(&self) -> f64 {
        if self.runs == 0 { 0.0 } else { self.runs_with_event as f64 / self.runs as f64 }
    }
}

/// Per-packet cost of `from_container` with a policy of some size.
#[derive(Clone, Copy, Debug)]
pub struct PacketCost {
    /// Entries in `POLICY` and `POLICY_CIDR` for the server endpoint.
    pub policy_entries: usize,
    /// Distinct sources (addresses, identities) per case; ports vary too.
    pub keys: usize,
    /// A SYN that policy denies, each from another pod (its own address
    /// and identity, in the range of the policy's /32 rules, so the CIDR
    /// lookup finds an entry) and port: conntrack miss, three policy
    /// lookups, a drop and its two events, every run.
    pub denied_syn: RunCost,
    /// A packet of one of `keys` allowed, established connections (each
    /// from its own pod and port): conntrack hit, no policy lookup.
    pub established: RunCost,
    /// The baseline, same run: the same established packets before any
    /// policy was written.
    pub no_policy: RunCost,
    /// For comparison, the old way: one denied SYN and one established
    /// packet, each run 50 times within one `BPF_PROG_TEST_RUN` (warm
    /// caches; the SYNs' 100 events, 12,000 bytes, stay under the
    /// `wakeup_bytes` that makes the probes wake the consumer, and are drained after each
    /// call), mean ns per run.
    pub denied_syn_one_key_ns: f64,
    pub established_one_key_ns: f64,
}

/// Errors of the benchmarks.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    TestRun(#[from] TestRunError),
    #[error("{0}")]
    Io(#[source] std::io::Error),
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
/// Identity of the pods labelled role=client (pods with the same labels
/// share an identity).
const CLIENT_IDENTITY: u32 = 300;
const SERVER_IDENTITY: u32 = 301;
/// Most sources of each kind: `ENDPOINTS` holds 4096 pods, and the bench
/// has two kinds plus the server.
pub const MAX_KEYS: usize = (abi::ENDPOINTS_MAP_SIZE as usize - 1) / 2;

/// A policy on the server that allows the client on port 5201 plus
/// `fillers` more rules, each a distinct /32 and port (each becomes its own
/// `POLICY_CIDR` entry and its own `POLICY` entry).
#[must_use]
pub fn filler_policy(fillers: usize) -> NetworkPolicy {
    let selector = |k: &str, v: &str| LabelSelector {
        match_labels: BTreeMap::from([(k.to_owned(), v.to_owned())]),
        match_expressions: Vec::new(),
    };
    let port = |p: u16| PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Number(p)), end_port: None };
    let mut ingress = vec![Rule {
        peers: vec![Peer { pod_selector: Some(selector("role", "client")), namespace_selector: None, ip_block: None }],
        ports: vec![port(5201)],
    }];
    for i in 0..fillers {
        ingress.push(Rule {
            peers: vec![Peer {
                pod_selector: None,
                namespace_selector: None,
                ip_block: Some(IpBlock { cidr: format!("{}/32", filler_addr(i)), except: Vec::new() }),
            }],
            ports: vec![port(10_000 + (i % 50_000) as u16)],
        });
    }
    NetworkPolicy {
        namespace: "bench".into(),
        name: "server".into(),
        pod_selector: selector("role", "server"),
        policy_types: vec![PolicyType::Ingress],
        ingress,
        egress: Vec::new(),
        origin: None,
    }
}

/// Runs per `BPF_PROG_TEST_RUN` call of the one-key comparison: few enough
/// that the pending events stay under `Config::wakeup_bytes` (past it,
/// every submit forces a wake-up until the consumer drains, a different
/// cost).
const ONE_KEY_REPEAT: u64 = 50;

fn filler_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i as u32)
}

/// Runs `program` on the packets in turn, `runs` times in all, draining the
/// ring buffer after every run.
fn measure(h: &mut Harness, packets: &[Vec<u8>], runs: u64) -> Result<RunCost, BenchError> {
    let lost_before = h.counter(abi::COUNTER_EVENTS_LOST);
    let mut cost = RunCost { runs, ..RunCost::default() };
    let mut total_ns = 0u64;
    for r in 0..runs {
        let packet = &packets[(r % packets.len() as u64) as usize];
        total_ns += h.run(abi::programs::FROM_CONTAINER, packet)?.mean_ns;
        let drained = h.drain_with(|bytes| {
            std::hint::black_box(bytes);
        }) as u64;
        cost.events += drained;
        cost.runs_with_event += u64::from(drained > 0);
    }
    cost.mean_ns = total_ns as f64 / runs.max(1) as f64;
    cost.lost = h.counter(abi::COUNTER_EVENTS_LOST) - lost_before;
    Ok(cost)
}

/// Runs every packet once, unmeasured, and drains what they wrote.
fn warm(h: &mut Harness, packets: &[Vec<u8>]) -> Result<(), BenchError> {
    for p in packets {
        h.run(abi::programs::FROM_CONTAINER, p)?;
        h.drain_with(|_| {});
    }
    Ok(())
}

/// Measures `from_container` with a policy of `fillers` extra rules on the
/// server endpoint: `runs` runs per case over `keys` sources of each kind
/// (at most [`MAX_KEYS`]). Needs root; touches no interface.
pub fn packet_cost(fillers: usize, keys: usize, runs: u64) -> Result<PacketCost, BenchError> {
    let keys = keys.clamp(1, MAX_KEYS);
    let mut h = Harness::load(testrun::config(abi::AGGREGATION_MEDIUM))?;
    // Test runs see the packet on the loopback device (ifindex 1).
    let ep = |identity, id| EndpointInfo { ifindex: 1, identity, mac: [2; 6], node_mac: [6; 6], endpoint_id: id, flags: 0 };
    h.add_endpoint(SERVER, ep(SERVER_IDENTITY, 1))?;
    // Allowed clients: role=client pods (one identity), one connection each.
    let clients: Vec<SocketAddrV4> = (0..keys)
        .map(|i| SocketAddrV4::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 201, 0, 0)) + i as u32), 20_000 + (i % 40_000) as u16))
        .collect();
    for (i, c) in clients.iter().enumerate() {
        h.add_endpoint(*c.ip(), ep(CLIENT_IDENTITY, 2 + i as u16))?;
    }
    // Denied sources: pods of their own identity, spread over the range of
    // the /32 rules.
    let stride = fillers.max(keys) / keys;
    let strangers: Vec<Ipv4Addr> = (0..keys).map(|i| filler_addr(i * stride)).collect();
    for (i, s) in strangers.iter().enumerate() {
        h.add_endpoint(*s, ep(1000 + i as u32, 2 + (keys + i) as u16))?;
    }
    let server = SocketAddrV4::new(SERVER, 5201);
    let established: Vec<Vec<u8>> = clients.iter().map(|c| testrun::tcp(*c, server, abi::TCP_ACK, b"")).collect();
    // Without policy: establish every connection, report its flags once,
    // then time the established packets.
    let syns: Vec<Vec<u8>> = clients.iter().map(|c| testrun::tcp(*c, server, abi::TCP_SYN, b"")).collect();
    warm(&mut h, &syns)?;
    warm(&mut h, &established)?;
    let no_policy = measure(&mut h, &established, runs)?;

    let pods = [
        PodInfo {
            namespace: "bench".into(),
            name: "client".into(),
            ip: CLIENT,
            labels: BTreeMap::from([("role".into(), "client".into())]),
            identity: CLIENT_IDENTITY,
            ports: Vec::new(),
            endpoint_id: None,
        },
        PodInfo {
            namespace: "bench".into(),
            name: "server".into(),
            ip: SERVER,
            labels: BTreeMap::from([("role".into(), "server".into())]),
            identity: SERVER_IDENTITY,
            ports: vec![NamedPort { name: None, port: 5201, protocol: Protocol::Tcp }],
            endpoint_id: Some(1),
        },
    ];
    let plan = h.apply_policy(&pods, &[filler_policy(fillers)])?;

    // Established connections are decided once more (new revision), then
    // run on conntrack alone.
    warm(&mut h, &established)?;
    let established_packets = established;
    let established = measure(&mut h, &established_packets, runs)?;
    // Denied SYNs: a new source port on every pass over the sources.
    let passes = runs.div_ceil(keys as u64) as usize;
    let mut denied = Vec::with_capacity(keys * passes.min(8));
    for pass in 0..passes.min(8) {
        for s in &strangers {
            let port = 30_000 + pass as u16;
            denied.push(testrun::tcp(SocketAddrV4::new(*s, port), server, abi::TCP_SYN, b""));
        }
    }
    let denied_syn = measure(&mut h, &denied, runs)?;
    let one_key = |h: &mut Harness, packet: &[u8]| -> Result<f64, BenchError> {
        let calls = (runs / ONE_KEY_REPEAT).max(1);
        let mut total = 0u64;
        for _ in 0..calls {
            total += h.run_with(abi::programs::FROM_CONTAINER, packet, None, ONE_KEY_REPEAT as u32)?.mean_ns;
            h.drain_with(|_| {});
        }
        Ok(total as f64 / calls as f64)
    };
    let denied_syn_one_key_ns = one_key(&mut h, &denied[0])?;
    let established_one_key_ns = one_key(&mut h, &established_packets[0])?;
    Ok(PacketCost {
        policy_entries: plan.policy.len() + plan.cidr.len(),
        keys,
        denied_syn,
        established,
        no_policy,
        denied_syn_one_key_ns,
        established_one_key_ns,
    })
}

/// Flows per second that `GetFlows` streams to one client over loopback,
/// against copying the same number of raw event records (the cost of
/// draining the ring buffer without processing), in the same run.
#[derive(Clone, Debug)]
pub struct StreamFigures {
    /// The transport's name (plaintext, TLS, mutual TLS).
    pub transport: String,
    pub flows: usize,
    /// Full flows (no field mask).
    pub full_per_sec: f64,
    /// With the field mask `hubble observe` asks for by default.
    pub masked_per_sec: f64,
    /// Raw 112-byte records copied per second.
    pub raw_copy_per_sec: f64,
}

/// How the benchmark's client reaches the server.
#[derive(Clone, Debug)]
pub struct Transport {
    pub name: String,
    /// The server's TLS; `None`: plaintext.
    pub server: Option<std::sync::Arc<sightline_tls::ServerTls>>,
    /// The client's TLS and the server name it checks.
    pub client: Option<(std::sync::Arc<sightline_tls::ClientTls>, String)>,
}

/// Fills a store with `flows` synthetic flows (capacity 65535), serves it
/// on 127.0.0.1 once per transport, and times `GetFlows` streaming all of it
/// to one client, `repeat` times, the transports taking turns (median).
pub async fn stream_rate(flows: usize, repeat: u32, transports: &[Transport]) -> Result<Vec<StreamFigures>, BenchError> {
    use sightline_proto::observer::GetFlowsRequest;
    use sightline_proto::observer::observer_client::ObserverClient;
    use tokio_stream::StreamExt as _;

    use crate::metadata::{Metadata, PodMeta};
    use crate::flow::{FlowBuilder, Store};
    use crate::observer::{ObserverState, serve};

    let io = BenchError::Io;
    let flows = flows.clamp(1, 65_535);
    let mut meta = Metadata { node_name: "node-1".into(), mono_to_unix_ns: 1_700_000_000_000_000_000, ..Metadata::default() };
    for i in 0..200u32 {
        let ns = format!("ns{}", i % 8);
        let labels: std::sync::Arc<[String]> =
            std::sync::Arc::from([format!("k8s:app=app{}", i % 20), format!("k8s:io.kubernetes.pod.namespace={ns}")]);
        meta.identities.insert(256 + i, std::sync::Arc::clone(&labels));
        meta.pods.insert(
            Ipv4Addr::new(10, 244, 1, i as u8 + 2),
            std::sync::Arc::new(PodMeta {
                namespace: ns,
                name: format!("app{}-{i:05x}", i % 20),
                endpoint_id: i as u16 + 1,
                identity: 256 + i,
                labels,
                node: "node-1".into(),
            }),
        );
    }
    let store = std::sync::Arc::new(Store::new(65_535).map_err(|e| BenchError::Io(std::io::Error::other(e)))?);
    let mut builder = FlowBuilder::new();
    let mut raw = Vec::with_capacity(flows);
    for i in 0..flows {
        let mut ev = sightline_abi::Event {
            ts_ns: i as u64 * 1000,
            kind: abi::EVENT_TRACE,
            sub_type: abi::TRACE_TO_LXC,
            ip_version: 4,
            protocol: abi::IPPROTO_TCP,
            tcp_flags: abi::TCP_ACK,
            ct_state: abi::CT_ESTABLISHED,
            src_port: 40_000 + (i % 1000) as u16,
            dst_port: 80,
            src_identity: 256 + (i % 200) as u32,
            dst_identity: 256 + ((i + 1) % 200) as u32,
            fwd_packets: i as u64,
            version: abi::ABI_VERSION,
            ..sightline_abi::Event::default()
        };
        ev.src_addr[..4].copy_from_slice(&[10, 244, 1, (i % 200) as u8 + 2]);
        ev.dst_addr[..4].copy_from_slice(&[10, 244, 1, ((i + 1) % 200) as u8 + 2]);
        raw.push(ev);
        store.push(builder.build(&ev, &meta));
    }

    // The baseline: copying the raw records.
    let mut copies = Vec::new();
    for _ in 0..repeat.max(1) {
        let start = std::time::Instant::now();
        let mut sink: Vec<sightline_abi::Event> = Vec::with_capacity(raw.len());
        for ev in &raw {
            sink.push(*std::hint::black_box(ev));
        }
        std::hint::black_box(&sink);
        copies.push(raw.len() as f64 / start.elapsed().as_secs_f64());
    }

    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for t in transports {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
        let address = listener.local_addr().map_err(io)?;
        let state = std::sync::Arc::new(ObserverState::new("node-1".into(), address, std::sync::Arc::clone(&store)));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        servers.push((stop, tokio::spawn(serve(state, listener, t.server.clone(), async {
            let _ = stopped.await;
        }))));
        let channel = match &t.client {
            Some((tls, name)) => {
                let connector = sightline_tls::Connector::new(std::sync::Arc::clone(tls), Some(name))
                    .map_err(|e| BenchError::Io(std::io::Error::other(e)))?;
                tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| BenchError::Io(std::io::Error::other(e)))?
                    .connect_with_connector(connector)
                    .await
            }
            None => {
                tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| BenchError::Io(std::io::Error::other(e)))?
                    .connect()
                    .await
            }
        }
        .map_err(|e| BenchError::Io(std::io::Error::other(format!("{} client: {e}", t.name))))?;
        clients.push(ObserverClient::new(channel).max_decoding_message_size(64 << 20));
    }
    let mask = prost_types::FieldMask {
        paths: [
            "time", "source.identity", "source.namespace", "source.pod_name", "destination.identity",
            "destination.namespace", "destination.pod_name", "l4", "IP", "Type", "node_name", "is_reply", "event_type",
            "verdict", "drop_reason_desc", "traffic_direction", "policy_match_type", "trace_observation_point",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
    };
    let mut rates = vec![[Vec::new(), Vec::new()]; transports.len()];
    for _ in 0..repeat.max(1) {
        for (client, rates) in clients.iter_mut().zip(rates.iter_mut()) {
            for (i, field_mask) in [None, Some(mask.clone())].into_iter().enumerate() {
                let start = std::time::Instant::now();
                let mut stream = client
                    .get_flows(GetFlowsRequest { number: flows as u64, field_mask, ..GetFlowsRequest::default() })
                    .await
                    .map_err(|e| BenchError::Io(std::io::Error::other(e)))?
                    .into_inner();
                let mut n = 0usize;
                while let Some(r) = stream.next().await {
                    r.map_err(|e| BenchError::Io(std::io::Error::other(e)))?;
                    n += 1;
                }
                rates[i].push(n as f64 / start.elapsed().as_secs_f64());
            }
        }
    }
    drop(clients);
    for (stop, server) in servers {
        let _ = stop.send(());
        let _ = server.await;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let raw_copy_per_sec = median(copies);
    Ok(transports
        .iter()
        .zip(rates)
        .map(|(t, [full, masked])| StreamFigures {
            transport: t.name.clone(),
            flows,
            full_per_sec: median(full),
            masked_per_sec: median(masked),
            raw_copy_per_sec,
        })
        .collect())
}
