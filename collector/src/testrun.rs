//! The real probes on crafted packets, with `BPF_PROG_TEST_RUN` (aya's
//! [`TestRun`]): no interface, no namespace, nothing on the wire.
//!
//! A [`Harness`] loads the embedded probes privately (a pin directory of
//! its own, removed when it is dropped), lets the caller program their maps
//! directly, runs a tc program on a packet and returns its verdict, the
//! packet as the program left it and the kernel's time per run, and drains
//! the ring buffer through the consumer's own path (`RingBuf::next`, then
//! [`decoder::decode`]). The probe tests (`collector/tests/prog_test_run.rs`)
//! and the benchmarks (`bench`, `benches/pipeline`) share it. Needs root.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{MapData, RingBuf};
use aya::programs::{TestRun as _, TestRunOptions};
use sightline_abi as abi;
use sightline_abi::{Config, CtEntry, CtKey, EndpointInfo, EndpointKey, Event, IpcacheKey, IpcacheValue, ServiceKey, ServiceValue};

use crate::decoder;
use crate::loader::{self, LoaderError, ProbeOptions, Probes};
use crate::policy::compiler::{PolicyInput, PolicyPlan, compile};
use crate::policy::model::NetworkPolicy;

/// `TC_ACT_OK`: the packet goes on (to the node's stack).
pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_SHOT`: the packet is dropped.
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT`: the packet goes to the device the program chose.
pub const TC_ACT_REDIRECT: u32 = 7;

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("the probes have no ring buffer handle (already taken)")]
    NoRingBuffer,
    #[error("writing {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("BPF_PROG_TEST_RUN of {program}: {source}")]
    Run {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The program's return value (`TC_ACT_*`).
    pub verdict: u32,
    /// The kernel's mean time per run, in nanoseconds.
    pub mean_ns: u64,
    /// The packet as the program left it (after its rewrites).
    pub packet: Vec<u8>,
}

/// Loaded probes in a private pin directory, with their ring buffer.
pub struct Harness {
    probes: Option<Probes>,
    events: RingBuf<MapData>,
    pin_dir: PathBuf,
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Harness {
    /// Loads the probes with `config` under a pin directory of their own.
    /// Attaches nothing.
    pub fn load(config: Config) -> Result<Self, TestRunError> {
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/sightline/testrun-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        let mut probes = Probes::load(&ProbeOptions {
            pin_dir: pin_dir.clone(),
            config,
            kernel_offsets: None,
            node_netns: None,
            reload: crate::pins::Reload::None,
        })?;
        let Some(events) = probes.take_events() else {
            let _ = probes.uninstall();
            return Err(TestRunError::NoRingBuffer);
        };
        Ok(Self { probes: Some(probes), events, pin_dir })
    }

    /// The probes and their maps.
    pub fn probes(&mut self) -> &mut Probes {
        self.probes.as_mut().expect("present until dropped")
    }

    /// A local endpoint at `addr`: `ENDPOINTS` and its identity in `IPCACHE`.
    /// Test runs see packets on the loopback device, so an endpoint whose
    /// packets `from_container` must accept has `ifindex` 1.
    pub fn add_endpoint(&mut self, addr: Ipv4Addr, info: EndpointInfo) -> Result<(), TestRunError> {
        let probes = self.probes();
        probes
            .endpoints
            .insert(EndpointKey { addr: addr.octets() }, info, 0)
            .map_err(|source| TestRunError::Map { map: abi::maps::ENDPOINTS, source })?;
        self.add_ipcache(addr, 32, info.identity)
    }

    /// An `IPCACHE` prefix with its identity (a pod of another node, or the world).
    pub fn add_ipcache(&mut self, addr: Ipv4Addr, prefix: u32, identity: u32) -> Result<(), TestRunError> {
        self.probes()
            .ipcache
            .insert(&LpmKey::new(prefix, IpcacheKey { addr: addr.octets() }), IpcacheValue { identity, tunnel_endpoint: [0; 4] }, 0)
            .map_err(|source| TestRunError::Map { map: abi::maps::IPCACHE, source })
    }

    /// A ClusterIP service port with its backends (`SERVICES` slot 0 holds
    /// the count, slots 1..=n the backends), numbered `service_id` as the
    /// collector numbers service ports (carried in `Event::service_id`).
    pub fn add_service(&mut self, front: SocketAddrV4, protocol: u8, service_id: u16, backends: &[SocketAddrV4]) -> Result<(), TestRunError> {
        let key = |slot: u16| ServiceKey { addr: front.ip().octets(), port: front.port(), protocol, _pad: 0, slot, _pad2: [0; 2] };
        let count = u16::try_from(backends.len()).expect("fewer than 65536 backends");
        let services = &mut self.probes().services;
        let err = |source| TestRunError::Map { map: abi::maps::SERVICES, source };
        for (i, b) in backends.iter().enumerate() {
            let value = ServiceValue { addr: b.ip().octets(), port: b.port(), service_id, ..ServiceValue::default() };
            services.insert(key(i as u16 + 1), value, 0).map_err(err)?;
        }
        services.insert(key(0), ServiceValue { count, service_id, ..ServiceValue::default() }, 0).map_err(err)
    }

    /// Compiles `policies` over `pods` with the collector's policy compiler,
    /// writes its `POLICY`/`POLICY_CIDR` entries, sets the enforcement flags
    /// of the endpoints it names (looked up by the pods' addresses) and
    /// bumps the policy revision, as `datapath::apply` does.
    pub fn apply_policy(
        &mut self,
        pods: &[crate::policy::compiler::PodInfo],
        policies: &[NetworkPolicy],
    ) -> Result<PolicyPlan, TestRunError> {
        let namespaces: BTreeMap<String, BTreeMap<String, String>> =
            pods.iter().map(|p| (p.namespace.clone(), BTreeMap::new())).collect();
        let plan = compile(&PolicyInput { namespaces: &namespaces, pods, policies });
        let probes = self.probes();
        for ((len, key), value) in &plan.policy {
            probes
                .policy
                .insert(&LpmKey::new(*len, *key), *value, 0)
                .map_err(|source| TestRunError::Map { map: abi::maps::POLICY, source })?;
        }
        for ((len, key), value) in &plan.cidr {
            probes
                .policy_cidr
                .insert(&LpmKey::new(*len, *key), *value, 0)
                .map_err(|source| TestRunError::Map { map: abi::maps::POLICY_CIDR, source })?;
        }
        for pod in pods {
            let Some(id) = pod.endpoint_id else { continue };
            let Some(ep) = plan.endpoints.get(&id) else { continue };
            let key = EndpointKey { addr: pod.ip.octets() };
            let Ok(mut info) = probes.endpoints.get(&key, 0) else { continue };
            info.flags &= !(abi::EP_POLICY_INGRESS | abi::EP_POLICY_EGRESS);
            if ep.ingress_enforced {
                info.flags |= abi::EP_POLICY_INGRESS;
            }
            if ep.egress_enforced {
                info.flags |= abi::EP_POLICY_EGRESS;
            }
            probes.endpoints.insert(key, info, 0).map_err(|source| TestRunError::Map { map: abi::maps::ENDPOINTS, source })?;
        }
        probes.bump_policy_revision()?;
        Ok(plan)
    }

    /// Runs the tc program `program` once on `packet`.
    pub fn run(&mut self, program: &'static str, packet: &[u8]) -> Result<Outcome, TestRunError> {
        self.run_with(program, packet, None, 1)
    }

    /// Runs `program` `repeat` times on `packet` (the kernel reports the
    /// mean time per run), with the `__sk_buff` fields `ctx` sets (its
    /// `mark`, for a packet from the tunnel).
    pub fn run_with(
        &mut self,
        program: &'static str,
        packet: &[u8],
        ctx: Option<&SkbContext>,
        repeat: u32,
    ) -> Result<Outcome, TestRunError> {
        let prog = self.probes().program_mut(program).ok_or(LoaderError::MissingProgram { name: program })?;
        // Room for what a program may add (none of ours grows the packet).
        let mut out = vec![0u8; packet.len() + 256];
        let ctx_bytes = ctx.map(SkbContext::bytes);
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ctx_in: ctx_bytes.as_ref().map(|b| &b[..]),
                repeat: repeat.max(1),
                ..TestRunOptions::default()
            })
            .map_err(|source| TestRunError::Run { program, source })?;
        out.truncate(result.data_size_out as usize);
        Ok(Outcome { verdict: result.return_value, mean_ns: result.duration.as_nanos() as u64, packet: out })
    }

    /// Drains every pending ring-buffer record through `f` (the consumer's
    /// `RingBuf::next`); returns how many there were.
    pub fn drain_with(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            f(&item);
            n += 1;
        }
        n
    }

    /// Drains and decodes every pending event (`decoder::decode`, as the
    /// agent does); a record that does not decode panics the caller's test.
    pub fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.drain_with(|bytes| out.push(decoder::decode(bytes).expect("a record the probes wrote decodes")));
        out
    }

    /// The ring buffer itself (for a consumer of the caller's own).
    pub fn ring(&mut self) -> &mut RingBuf<MapData> {
        &mut self.events
    }

    /// The conntrack entry of `key` (original direction), if any.
    pub fn ct(&mut self, key: &CtKey) -> Option<CtEntry> {
        self.probes().ct.get(key, 0).ok()
    }

    /// A `COUNTERS` value summed over CPUs.
    pub fn counter(&mut self, index: u32) -> u64 {
        self.probes().counter(index)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(probes) = self.probes.take() {
            if let Err(e) = probes.uninstall() {
                log::warn!("removing the test run's probes at {}: {e}", self.pin_dir.display());
            }
        }
        if let Some(root) = self.pin_dir.parent() {
            // Only if empty: other users may have pinned there.
            let _ = std::fs::remove_dir(root);
        }
    }
}

/// The `__sk_buff` fields a test run may set (the rest stay zero, as the
/// kernel requires).
#[derive(Clone, Copy, Debug, Default)]
pub struct SkbContext {
    pub mark: u32,
}

impl SkbContext {
    /// `struct __sk_buff` (include/uapi/linux/bpf.h): 192 bytes, `mark` at 8.
    fn bytes(&self) -> [u8; 192] {
        let mut b = [0u8; 192];
        b[8..12].copy_from_slice(&self.mark.to_ne_bytes());
        b
    }
}

/// The conntrack key of a TCP or UDP connection from `src` to `dst`.
#[must_use]
pub fn ct_key(src: SocketAddrV4, dst: SocketAddrV4, protocol: u8) -> CtKey {
    CtKey {
        src_addr: src.ip().octets(),
        dst_addr: dst.ip().octets(),
        src_port: src.port(),
        dst_port: dst.port(),
        protocol,
        _pad: [0; 3],
    }
}

// ---------------------------------------------------------------------------
// Packets.

const ETH: usize = 14;
const IP: usize = 20;

/// An Ethernet + IPv4 + TCP packet (no options) with `payload`, its IP and
/// TCP checksums valid.
#[must_use]
pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; 20];
    l4[0..2].copy_from_slice(&src.port().to_be_bytes());
    l4[2..4].copy_from_slice(&dst.port().to_be_bytes());
    l4[4..8].copy_from_slice(&1u32.to_be_bytes());
    l4[12] = 5 << 4;
    l4[13] = flags;
    l4[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    l4.extend_from_slice(payload);
    ipv4(*src.ip(), *dst.ip(), abi::IPPROTO_TCP, l4)
}

/// An Ethernet + IPv4 + UDP packet with `payload`, its checksums valid.
#[must_use]
pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; 8];
    l4[0..2].copy_from_slice(&src.port().to_be_bytes());
    l4[2..4].copy_from_slice(&dst.port().to_be_bytes());
    l4[4..6].copy_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    l4.extend_from_slice(payload);
    ipv4(*src.ip(), *dst.ip(), abi::IPPROTO_UDP, l4)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, mut l4: Vec<u8>) -> Vec<u8> {
    let mut p = vec![0u8; ETH + IP];
    p[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    p[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut p[ETH..ETH + IP];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IP + l4.len()) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&[ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let off = if protocol == abi::IPPROTO_TCP { 16 } else { 6 };
    let sum = l4_checksum(src, dst, protocol, &l4);
    // UDP sends an all-ones checksum for a computed zero (0 means none).
    let sum = if protocol == abi::IPPROTO_UDP && sum == 0 { 0xffff } else { sum };
    l4[off..off + 2].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&l4);
    p
}

/// The Internet checksum over `parts` (concatenated).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(hi) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = protocol;
    pseudo[10..12].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    checksum(&[&pseudo, l4])
}

/// What a test reads back from an IPv4 TCP/UDP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub protocol: u8,
    /// The IPv4 header checksum verifies.
    pub ip_checksum_ok: bool,
    /// The TCP or UDP checksum (with the pseudo-header) verifies (a UDP
    /// checksum of 0, "none", counts as valid).
    pub l4_checksum_ok: bool,
}

/// Parses a packet made by [`tcp`] or [`udp`] (and rewritten by a program).
/// `None` when it is not IPv4 TCP/UDP without IP options.
#[must_use]
pub fn parse(p: &[u8]) -> Option<Parsed> {
    if p.len() < ETH + IP || p[12..14] != [0x08, 0x00] || p[ETH] != 0x45 {
        return None;
    }
    let ip = &p[ETH..ETH + IP];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = p.get(ETH + IP..ETH + total)?;
    let protocol = ip[9];
    if l4.len() < 8 || (protocol != abi::IPPROTO_TCP && protocol != abi::IPPROTO_UDP) {
        return None;
    }
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    let udp_none = protocol == abi::IPPROTO_UDP && port(6) == 0;
    Some(Parsed {
        src: SocketAddrV4::new(src_ip, port(0)),
        dst: SocketAddrV4::new(dst_ip, port(2)),
        protocol,
        ip_checksum_ok: checksum(&[ip]) == 0,
        l4_checksum_ok: udp_none || l4_checksum(src_ip, dst_ip, protocol, l4) == 0,
    })
}

/// The datapath configuration tests and benchmarks start from.
#[must_use]
pub fn config(aggregation: u32) -> Config {
    loader::default_config(aggregation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_packets_carry_valid_checksums_and_parse_back() {
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 40_000);
        let b = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
        for p in [tcp(a, b, abi::TCP_SYN, b""), tcp(a, b, abi::TCP_ACK, b"hello"), udp(a, b, b"odd")] {
            let parsed = parse(&p).expect("parses");
            assert_eq!((parsed.src, parsed.dst), (a, b));
            assert!(parsed.ip_checksum_ok && parsed.l4_checksum_ok, "{parsed:?}");
        }
        // A flipped address bit without a checksum update is caught.
        let mut p = tcp(a, b, abi::TCP_SYN, b"");
        p[ETH + 19] ^= 1;
        let parsed = parse(&p).expect("parses");
        assert!(!parsed.ip_checksum_ok && !parsed.l4_checksum_ok);
    }
}
