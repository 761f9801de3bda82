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
        pin_dir,
        config: loader::default_config(abi::AGGREGATION_MEDIUM),
        kernel_offsets: None,
    })?;
    // Test runs see the packet on the loopback device (ifindex 1).
    let client = EndpointInfo { ifindex: 1, identity: 300, mac: [2; 6], node_mac: [6; 6], endpoint_id: 1, flags: 0 };
    let server = EndpointInfo { ifindex: 1, identity: 301, mac: [2; 6], node_mac: [6; 6], endpoint_id: 2, flags: 0 };
    let map_err = |map| move |source| BenchError::Map { map, source };
    for (ip, ep) in [(CLIENT, client), (SERVER, server)] {
        probes.endpoints.insert(EndpointKey { addr: ip.octets() }, ep, 0).map_err(map_err(abi::maps::ENDPOINTS))?;
        probes
            .ipcache
            .insert(&LpmKey::new(32, IpcacheKey { addr: ip.octets() }), IpcacheValue { identity: ep.identity, flags: 0 }, 0)
            .map_err(map_err(abi::maps::IPCACHE))?;
    }
    let established = tcp_packet(40_000, 5201, abi::TCP_ACK);
    // Without policy: establish, then time the established packet.
    test_run(&mut probes, &tcp_packet(40_000, 5201, abi::TCP_SYN), 1)?;
    let no_policy_ns = test_run(&mut probes, &established, repeat)?;

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
    test_run(&mut probes, &established, 1)?;
    let established_ns = test_run(&mut probes, &established, repeat)?;
    let denied_syn_ns = test_run(&mut probes, &tcp_packet(40_001, 9999, abi::TCP_SYN), repeat)?;
    Ok(PacketCost { policy_entries: plan.policy.len() + plan.cidr.len(), denied_syn_ns, established_ns, no_policy_ns })
}
