//! Per-packet cost of the datapath programs, measured in the kernel with
//! `BPF_PROG_TEST_RUN`: the loaded `from_container` program runs a crafted
//! packet many times and the kernel reports the mean time per run.
//!
//! The probes are loaded privately (their own pin directory), their maps
//! filled directly, and nothing is attached anywhere: no traffic moves.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::PathBuf;

use aya::maps::lpm_trie::Key as LpmKey;
use aya::programs::SchedClassifier;
use sightline_abi as abi;
use sightline_abi::{EndpointInfo, EndpointKey, IpcacheKey, IpcacheValue};

use crate::loader::{self, ProbeOptions, Probes};
use crate::policy::compiler::{NamedPort, PodInfo, PolicyInput, compile};
use crate::policy::model::{IpBlock, LabelSelector, NetworkPolicy, Peer, PolicyPort, PolicyType, PortRef, Protocol, Rule};

/// Mean cost of one run of `from_container`, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct PacketCost {
    /// Entries in `POLICY` and `POLICY_CIDR` for the server endpoint.
    pub policy_entries: usize,
    /// A SYN that policy denies: conntrack miss, three policy lookups, a
    /// drop and its events, every run.
    pub denied_syn_ns: f64,
    /// A packet of an allowed, established connection: conntrack hit, no
    /// policy lookup.
    pub established_ns: f64,
    /// The same established packet with no policy at all.
    pub no_policy_ns: f64,
}

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    #[error("writing {map}: {source}")]
    Map { map: &'static str, #[source] source: aya::maps::MapError },
    #[error("BPF_PROG_TEST_RUN: {0}")]
    TestRun(#[source] std::io::Error),
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);

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
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i as u32);
        ingress.push(Rule {
            peers: vec![Peer {
                pod_selector: None,
                namespace_selector: None,
                ip_block: Some(IpBlock { cidr: format!("{addr}/32"), except: Vec::new() }),
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

fn tcp_packet(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 14 + 20 + 20];
    p[12] = 0x08; // IPv4
    let ip = &mut p[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = abi::IPPROTO_TCP;
    ip[12..16].copy_from_slice(&CLIENT.octets());
    ip[16..20].copy_from_slice(&SERVER.octets());
    let tcp = &mut p[34..54];
    tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    p
}

/// `BPF_PROG_TEST_RUN` of a tc program: mean nanoseconds per run.
fn test_run(probes: &mut Probes, packet: &[u8], repeat: u32) -> Result<f64, BenchError> {
    let prog: &mut SchedClassifier = probes
        .program_mut(abi::programs::FROM_CONTAINER)
        .ok_or(loader::LoaderError::MissingProgram { name: abi::programs::FROM_CONTAINER })?;
    let fd = prog.fd().map_err(|e| BenchError::TestRun(std::io::Error::other(e)))?;
    let raw = fd.as_fd().as_raw_fd();
    let mut out = vec![0u8; packet.len() + 256];
    // struct bpf_attr for BPF_PROG_TEST_RUN (include/uapi/linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut attr = TestAttr {
        prog_fd: raw as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestAttr::default()
    };
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix for this
    // command, and the buffers it points to outlive the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestAttr, size_of::<TestAttr>() as u32)
    };
    if rc < 0 {
        return Err(BenchError::TestRun(std::io::Error::last_os_error()));
    }
    Ok(f64::from(attr.duration))
}

/// Measures `from_container` with a policy of `fillers` extra rules on the
/// server endpoint. Needs root; touches no interface.
pub fn packet_cost(fillers: usize, repeat: u32) -> Result<PacketCost, BenchError> {
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sightline/bench-{}", std::process::id()));
    let mut probes = Probes::load(&ProbeOptions {
        pin_dir: pin_dir.clone(),
        config: loader::default_config(abi::AGGREGATION_MEDIUM),
        kernel_offsets: None,
        node_netns: None,
        reload: crate::pins::Reload::None,
    })?;
    let result = measure_packet_cost(&mut probes, fillers, repeat);
    // Attached nowhere, pinned for nothing: remove it whatever happened.
    if let Err(e) = probes.uninstall() {
        log::warn!("removing the bench's probes: {e}");
    }
    if let Some(root) = pin_dir.parent() {
        let _ = std::fs::remove_dir(root);
    }
    result
}

fn measure_packet_cost(probes: &mut Probes, fillers: usize, repeat: u32) -> Result<PacketCost, BenchError> {
    // Test runs see the packet on the loopback device (ifindex 1).
    let client = EndpointInfo { ifindex: 1, identity: 300, mac: [2; 6], node_mac: [6; 6], endpoint_id: 1, flags: 0 };
    let server = EndpointInfo { ifindex: 1, identity: 301, mac: [2; 6], node_mac: [6; 6], endpoint_id: 2, flags: 0 };
    let map_err = |map| move |source| BenchError::Map { map, source };
    for (ip, ep) in [(CLIENT, client), (SERVER, server)] {
        probes.endpoints.insert(EndpointKey { addr: ip.octets() }, ep, 0).map_err(map_err(abi::maps::ENDPOINTS))?;
        probes
            .ipcache
            .insert(&LpmKey::new(32, IpcacheKey { addr: ip.octets() }), IpcacheValue { identity: ep.identity, tunnel_endpoint: [0; 4] }, 0)
            .map_err(map_err(abi::maps::IPCACHE))?;
    }
    let established = tcp_packet(40_000, 5201, abi::TCP_ACK);
    // Without policy: establish, then time the established packet.
    test_run(probes, &tcp_packet(40_000, 5201, abi::TCP_SYN), 1)?;
    let no_policy_ns = test_run(probes, &established, repeat)?;

    let pods = [
        PodInfo {
            namespace: "bench".into(),
            name: "client".into(),
            ip: CLIENT,
            labels: BTreeMap::from([("role".into(), "client".into())]),
            identity: client.identity,
            ports: Vec::new(),
            endpoint_id: Some(1),
        },
        PodInfo {
            namespace: "bench".into(),
            name: "server".into(),
            ip: SERVER,
            labels: BTreeMap::from([("role".into(), "server".into())]),
            identity: server.identity,
            ports: vec![NamedPort { name: None, port: 5201, protocol: Protocol::Tcp }],
            endpoint_id: Some(2),
        },
    ];
    let namespaces = BTreeMap::from([("bench".to_owned(), BTreeMap::new())]);
    let policies = [filler_policy(fillers)];
    let plan = compile(&PolicyInput { namespaces: &namespaces, pods: &pods, policies: &policies });
    for ((len, key), value) in &plan.policy {
        probes.policy.insert(&LpmKey::new(*len, *key), *value, 0).map_err(map_err(abi::maps::POLICY))?;
    }
    for ((len, key), value) in &plan.cidr {
        probes.policy_cidr.insert(&LpmKey::new(*len, *key), *value, 0).map_err(map_err(abi::maps::POLICY_CIDR))?;
    }
    let server = EndpointInfo { flags: abi::EP_POLICY_INGRESS, ..server };
    probes
        .endpoints
        .insert(EndpointKey { addr: SERVER.octets() }, server, 0)
        .map_err(map_err(abi::maps::ENDPOINTS))?;
    probes.bump_policy_revision()?;

    // The established connection is decided once more (new revision), then
    // runs on conntrack alone.
    test_run(probes, &established, 1)?;
    let established_ns = test_run(probes, &established, repeat)?;
    let denied_syn_ns = test_run(probes, &tcp_packet(40_001, 9999, abi::TCP_SYN), repeat)?;
    Ok(PacketCost { policy_entries: plan.policy.len() + plan.cidr.len(), denied_syn_ns, established_ns, no_policy_ns })
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

    use crate::decoder::{Metadata, PodMeta};
    use crate::flow::{FlowBuilder, Store};
    use crate::observer::{ObserverState, serve};

    let io = |e: std::io::Error| BenchError::TestRun(e);
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
    let store = std::sync::Arc::new(Store::new(65_535).map_err(|e| BenchError::TestRun(std::io::Error::other(e)))?);
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
                    .map_err(|e| BenchError::TestRun(std::io::Error::other(e)))?;
                tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| BenchError::TestRun(std::io::Error::other(e)))?
                    .connect_with_connector(connector)
                    .await
            }
            None => {
                tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| BenchError::TestRun(std::io::Error::other(e)))?
                    .connect()
                    .await
            }
        }
        .map_err(|e| BenchError::TestRun(std::io::Error::other(format!("{} client: {e}", t.name))))?;
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
                    .map_err(|e| BenchError::TestRun(std::io::Error::other(e)))?
                    .into_inner();
                let mut n = 0usize;
                while let Some(r) = stream.next().await {
                    r.map_err(|e| BenchError::TestRun(std::io::Error::other(e)))?;
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
