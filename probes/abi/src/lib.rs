//! The Sightline kernel/user ABI.
//!
//! This crate is the only place where the layout of an event or of a BPF map
//! key or value is defined. It is `no_std`, has no dependencies in the kernel
//! build, and every type is `#[repr(C)]` with explicit padding and a size
//! assertion, so the eBPF programs and the collector agree byte for byte.
//!
//! It must not contain logic beyond constructors and small accessors: anything
//! that decides what a packet means lives in the probes or in the collector.
//!
//! `docs/ABI.md` describes these layouts for readers; bump [`ABI_VERSION`]
//! whenever a layout or a constant's meaning changes.
#![no_std]

/// Version of every layout in this crate. Carried in each event.
pub const ABI_VERSION: u8 = 4;

// ---------------------------------------------------------------------------
// Event kinds and their sub-types (Hubble numbering where Hubble has one).

/// A packet dropped by a Sightline program; `sub_type` is the Hubble drop reason.
pub const EVENT_DROP: u8 = 1;
/// A packet seen at an observation point; `sub_type` is the datapath trace point.
pub const EVENT_TRACE: u8 = 4;
/// A policy decision for a new connection.
pub const EVENT_POLICY_VERDICT: u8 = 5;
/// A packet freed by the kernel with a drop reason (`skb:kfree_skb`);
/// `reason` is the kernel's `enum skb_drop_reason` value.
pub const EVENT_KERNEL_DROP: u8 = 200;

/// Datapath trace points (bpf/lib/trace.h numbering). Hubble's proto enum uses
/// the same numbers except `TRACE_TO_LXC` (0) which is `TO_ENDPOINT` (101).
pub const TRACE_TO_LXC: u8 = 0;
pub const TRACE_TO_PROXY: u8 = 1;
pub const TRACE_TO_HOST: u8 = 2;
pub const TRACE_TO_STACK: u8 = 3;
pub const TRACE_TO_OVERLAY: u8 = 4;
pub const TRACE_FROM_LXC: u8 = 5;
pub const TRACE_FROM_PROXY: u8 = 6;
pub const TRACE_FROM_HOST: u8 = 7;
pub const TRACE_FROM_STACK: u8 = 8;
pub const TRACE_FROM_OVERLAY: u8 = 9;
/// Not a trace: the sub-type of events that carry no observation point.
pub const TRACE_NONE: u8 = 0xff;

/// Hubble drop reasons used by the probes (flow.proto `DropReason`).
pub const DROP_INVALID_SOURCE_IP: u8 = 132;
pub const DROP_POLICY_DENIED: u8 = 133;
pub const DROP_INVALID_PACKET: u8 = 134;
pub const DROP_CT_INVALID_HEADER: u8 = 135;
pub const DROP_UNKNOWN_L4_PROTOCOL: u8 = 142;
pub const DROP_UNKNOWN_L3_TARGET: u8 = 150;
pub const DROP_CT_MAP_INSERTION_FAILED: u8 = 155;
pub const DROP_FRAG_NOT_SUPPORTED: u8 = 157;
/// A ClusterIP service with no backend (Hubble's `SERVICE_BACKEND_NOT_FOUND`).
pub const DROP_NO_SERVICE_BACKEND: u8 = 158;

/// Connection-tracking result carried by every event.
pub const CT_NONE: u8 = 0;
pub const CT_NEW: u8 = 1;
pub const CT_ESTABLISHED: u8 = 2;
pub const CT_REPLY: u8 = 3;

/// Traffic direction (Hubble `TrafficDirection` numbering).
pub const DIR_UNKNOWN: u8 = 0;
pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;

/// Policy verdicts carried by policy-verdict events.
pub const VERDICT_NONE: u8 = 0;
pub const VERDICT_FORWARDED: u8 = 1;
pub const VERDICT_DROPPED: u8 = 2;
pub const VERDICT_AUDIT: u8 = 4;

/// Policy match types (Cilium's `PolicyMatchType` bit numbering).
pub const MATCH_NONE: u8 = 0;
pub const MATCH_L3_ONLY: u8 = 1;
pub const MATCH_L3_L4: u8 = 2;
pub const MATCH_L4_ONLY: u8 = 3;
pub const MATCH_ALL: u8 = 4;

/// TCP flag bits as in the TCP header's flag byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// Reserved security identities, numbered as Cilium numbers them.
pub const IDENTITY_UNKNOWN: u32 = 0;
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;
pub const IDENTITY_UNMANAGED: u32 = 3;
pub const IDENTITY_HEALTH: u32 = 4;
pub const IDENTITY_INIT: u32 = 5;
pub const IDENTITY_REMOTE_NODE: u32 = 6;
pub const IDENTITY_KUBE_APISERVER: u32 = 7;
pub const IDENTITY_INGRESS: u32 = 8;
pub const IDENTITY_WORLD_IPV4: u32 = 9;
pub const IDENTITY_WORLD_IPV6: u32 = 10;
/// First identity handed out for workloads (cluster-local identities).
pub const IDENTITY_USER_MIN: u32 = 256;

// ---------------------------------------------------------------------------
// Events.

/// One event in the ring buffer. Every event has this layout; fields that do
/// not apply to a kind are zero. Addresses are in network byte order (IPv4 in
/// the first four bytes), ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the packet was seen.
    pub ts_ns: u64,
    /// Packets and bytes of the connection in its original direction,
    /// including this packet when it travels that way.
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    /// Packets and bytes of the connection in the reply direction.
    pub rev_packets: u64,
    pub rev_bytes: u64,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Interface the packet was seen on (in the node's network namespace for
    /// datapath events; the device's own namespace for kernel drops).
    pub ifindex: u32,
    /// Length of the packet on the wire.
    pub pkt_len: u32,
    /// Kernel drop reason (`EVENT_KERNEL_DROP`); the id of the set of
    /// policies that allowed the connection (`EVENT_POLICY_VERDICT`,
    /// `PolicyValue::policy_set`); 0 otherwise.
    pub reason: u32,
    /// Endpoint ID of the local endpoint the event belongs to, 0 if none.
    pub endpoint_id: u16,
    /// TCP/UDP/SCTP ports; ICMP echo identifier in `src_port`, and ICMP type
    /// and code in `icmp_type`/`icmp_code`.
    pub src_port: u16,
    pub dst_port: u16,
    /// One of the `EVENT_*` constants.
    pub kind: u8,
    /// Trace point (`TRACE_*`) for traces, drop reason (`DROP_*`) for drops.
    pub sub_type: u8,
    /// 4 or 6.
    pub ip_version: u8,
    pub protocol: u8,
    /// TCP flags of this packet.
    pub tcp_flags: u8,
    /// One of the `CT_*` constants.
    pub ct_state: u8,
    /// `DIR_*` for policy verdicts (and drops by policy).
    pub direction: u8,
    /// `VERDICT_*` for policy verdicts.
    pub verdict: u8,
    /// `MATCH_*` for policy verdicts.
    pub match_type: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// [`ABI_VERSION`] of the program that wrote the event.
    pub version: u8,
    /// The service frontend (`ServiceValue::service_id`) of a connection
    /// the datapath translated to a service backend, 0 for any other: in
    /// the original direction the service the client addressed (the
    /// event's destination is the backend), in the reply direction
    /// (`ct_state` `CT_REPLY`) the service whose address the reply is
    /// given as its source (the event's source is the backend).
    pub service_id: u16,
}
const _: () = assert!(core::mem::size_of::<Event>() == 112);
// The offsets documented in docs/ABI.md.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(Event, src_addr) == 40);
    assert!(offset_of!(Event, src_identity) == 72);
    assert!(offset_of!(Event, ifindex) == 80);
    assert!(offset_of!(Event, reason) == 88);
    assert!(offset_of!(Event, endpoint_id) == 92);
    assert!(offset_of!(Event, kind) == 98);
    assert!(offset_of!(Event, version) == 109);
    assert!(offset_of!(Event, service_id) == 110);
};

// ---------------------------------------------------------------------------
// Configuration (one entry of the `CONFIG` array map, written by the collector).

/// Monitor aggregation levels (Cilium numbering).
pub const AGGREGATION_NONE: u32 = 0;
pub const AGGREGATION_MEDIUM: u32 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `AGGREGATION_*`.
    pub aggregation: u32,
    /// Wake the consumer only when at least this many bytes are pending
    /// (0 = wake on every event).
    pub wakeup_bytes: u32,
    /// With aggregation, report an active connection at least this often.
    pub report_interval_ns: u64,
    /// Connection lifetimes after the last packet.
    pub ct_tcp_syn_timeout_ns: u64,
    pub ct_tcp_established_timeout_ns: u64,
    pub ct_tcp_closing_timeout_ns: u64,
    pub ct_other_timeout_ns: u64,
    /// Bumped by the collector after every policy change: a connection
    /// whose `CtEntry::policy_revision` differs is re-evaluated at its next
    /// packet (and cut if the policy now denies it).
    pub policy_revision: u32,
    /// Tunnel routing: the node's collect-metadata tunnel device (VXLAN or
    /// Geneve), where pod traffic to other nodes is encapsulated and from
    /// where it arrives; 0 = pod traffic is routed by the node's stack.
    pub tunnel_ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 56);

/// Set in `skb->mark` by the overlay receive path: the low 24 bits carry
/// the source's security identity from the tunnel header to
/// `to_container`, which then uses it instead of an ipcache lookup.
pub const MARK_TUNNEL_IDENTITY: u32 = 0x5a00_0000;
pub const MARK_TUNNEL_MASK: u32 = 0xff00_0000;
/// The tunnel header carries identities up to 24 bits (the VNI).
pub const TUNNEL_IDENTITY_MASK: u32 = 0x00ff_ffff;

/// Offsets into kernel structures, read from BTF by the collector, used by
/// the `skb:kfree_skb` program to find the device and the packet headers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Non-zero once the collector has filled the offsets in.
    pub valid: u32,
    /// Offsets of the tracepoint's own fields (from its tracefs format).
    pub tp_skbaddr: u16,
    pub tp_protocol: u16,
    pub tp_reason: u16,
    /// `struct sk_buff`.
    pub skb_dev: u16,
    pub skb_head: u16,
    pub skb_network_header: u16,
    pub skb_len: u16,
    /// `struct net_device`.
    pub dev_ifindex: u16,
    pub dev_nd_net: u16,
    /// `struct net` → `ns.inum`.
    pub net_ns_inum: u16,
    /// Kernel drop reasons of packets dropped by tc programs
    /// (`TC_INGRESS`, `TC_EGRESS`): the datapath's own drops, already
    /// reported with their reason, so the kfree_skb program skips them.
    /// 0 when the kernel has no such reason.
    pub reason_tc_ingress: u16,
    pub reason_tc_egress: u16,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 28);

// ---------------------------------------------------------------------------
// Maps.

/// Key of `ENDPOINTS`: an IPv4 address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 4);

/// A local endpoint (pod) on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Host-side veth interface of the pod, in the node's namespace.
    pub ifindex: u32,
    pub identity: u32,
    /// The pod's own MAC address (its `eth0`).
    pub mac: [u8; 6],
    /// The MAC of the host side of the veth (the pod's gateway).
    pub node_mac: [u8; 6],
    pub endpoint_id: u16,
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 24);

/// Key of the `IPCACHE` LPM trie (the value of an aya `lpm_trie::Key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheKey {
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<IpcacheKey>() == 4);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheValue {
    pub identity: u32,
    /// Tunnel routing: the address of the node behind which the prefix
    /// lives (the outer destination); zeros = not through the tunnel.
    pub tunnel_endpoint: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<IpcacheValue>() == 8);

/// Key of `CT`, in the connection's original direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

impl CtKey {
    /// The key of the same connection seen from the other side.
    #[must_use]
    pub const fn reversed(&self) -> Self {
        Self {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }
}

/// TCP connection states kept in `CtEntry::tcp_state`.
pub const TCP_STATE_NONE: u8 = 0;
pub const TCP_STATE_SYN_SENT: u8 = 1;
pub const TCP_STATE_SYN_RECV: u8 = 2;
pub const TCP_STATE_ESTABLISHED: u8 = 3;
pub const TCP_STATE_CLOSING: u8 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub created_ns: u64,
    /// Monotonic time after which the entry is dead (collected by the
    /// collector's garbage collection, ignored by the datapath).
    pub expires_ns: u64,
    /// Last time a trace was reported for each direction (aggregation);
    /// 0 = never, so the first packet of each direction is reported.
    pub last_report_fwd_ns: u64,
    pub last_report_rev_ns: u64,
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    pub rev_packets: u64,
    pub rev_bytes: u64,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// TCP flags seen so far in each direction.
    pub fwd_flags: u8,
    pub rev_flags: u8,
    pub tcp_state: u8,
    /// `CT_FLAG_*` bits.
    pub flags: u8,
    /// `Config::policy_revision` the connection was last allowed under.
    pub policy_revision: u32,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 80);

/// `CtEntry::flags`: the connection was translated to a service backend,
/// so its replies must be translated back (`REV_NAT`).
pub const CT_FLAG_SERVICE: u8 = 0x1;

// ---------------------------------------------------------------------------
// Policy.

/// `EndpointInfo::flags`: ingress to this endpoint is default-deny (some
/// policy with Ingress in its policyTypes selects it).
pub const EP_POLICY_INGRESS: u16 = 0x1;
/// Egress from this endpoint is default-deny.
pub const EP_POLICY_EGRESS: u16 = 0x2;
/// Audit: denied connections are reported (verdict AUDIT) but pass.
pub const EP_POLICY_AUDIT: u16 = 0x4;

/// `PolicyKey::peer` that matches any remote (L4-only and allow-all rules).
pub const PEER_ANY: u32 = 0;
/// `PolicyKey::peer` values with this bit set are CIDR-set ids (from
/// `POLICY_CIDR`), not identities.
pub const PEER_CIDR_SET: u32 = 0x8000_0000;

/// Key of `POLICY`, an LPM trie. The fixed part (endpoint, direction,
/// peer) is always matched in full: 64 bits. `protocol` and `port` may be
/// wildcarded by a shorter prefix: 64 = any protocol and port, 72 = any
/// port of `protocol`, 72 + k = the first k bits of `port` (port ranges
/// become a few prefixes). `port` is big-endian so that prefixes work.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub endpoint_id: u16,
    /// `DIR_INGRESS` or `DIR_EGRESS`.
    pub direction: u8,
    pub _pad0: u8,
    /// An identity, `PEER_ANY`, or `PEER_CIDR_SET | set id`.
    pub peer: u32,
    pub protocol: u8,
    pub port_be: [u8; 2],
    pub _pad1: u8,
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

/// Prefix length that matches `PolicyKey`'s fixed part only.
pub const POLICY_PREFIX_PEER: u32 = 64;
/// Prefix length that matches the fixed part and the protocol.
pub const POLICY_PREFIX_PROTO: u32 = 72;
/// Prefix length of an exact port.
pub const POLICY_PREFIX_FULL: u32 = 88;

/// What a `POLICY` entry allows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// `MATCH_*` of the rule that produced the entry.
    pub match_type: u8,
    pub flags: u8,
    pub _pad: u16,
    /// Id of the set of policies that allow this (the collector maps it
    /// back to names); carried in policy-verdict events' `reason`.
    pub policy_set: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8);

/// Key of `POLICY_CIDR`, an LPM trie of remote addresses per endpoint and
/// direction: prefix length = 32 (fixed part) + the address prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyCidrKey {
    pub endpoint_id: u16,
    pub direction: u8,
    pub _pad: u8,
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<PolicyCidrKey>() == 8);

/// Prefix length of `PolicyCidrKey`'s fixed part.
pub const POLICY_CIDR_PREFIX_FIXED: u32 = 32;

/// The CIDR set a remote address belongs to, for one endpoint and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyCidrValue {
    /// Set id without the `PEER_CIDR_SET` bit; 0 = no set (an `except`).
    pub set_id: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyCidrValue>() == 4);

/// Per-CPU counters in the `COUNTERS` array, by index.
pub const COUNTER_EVENTS_LOST: u32 = 0;
pub const COUNTER_EVENTS_WRITTEN: u32 = 1;
pub const COUNTER_PACKETS_FORWARDED: u32 = 2;
pub const COUNTER_PACKETS_DROPPED: u32 = 3;
pub const COUNTER_CT_CREATED: u32 = 4;
pub const COUNTER_CT_INSERT_FAILED: u32 = 5;
pub const COUNTER_KERNEL_DROPS_SEEN: u32 = 6;
pub const COUNTER_POLICY_DENIED: u32 = 7;
pub const COUNTER_MAX: u32 = 8;

// ---------------------------------------------------------------------------
// Services.

/// Key of `SERVICES`: a ClusterIP service port and a slot. Slot 0 holds the
/// number of backends; slots 1..=count hold one backend each.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: [u8; 4],
    /// Service port, host byte order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
    pub slot: u16,
    pub _pad2: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 12);

/// Value of `SERVICES` (slot 0: `count` backends; other slots: a backend
/// address and port), of `SVC_CT` (the backend a client's connection to a
/// service went to) and of `REV_NAT` (the service address and port a
/// backend's replies must come from).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    pub addr: [u8; 4],
    /// Host byte order.
    pub port: u16,
    pub count: u16,
    /// The collector's number for the service port (frontend) the entry
    /// belongs to, 1..=65535, in every slot and in `SVC_CT` and `REV_NAT`
    /// values; carried in `Event::service_id`.
    pub service_id: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 12);

/// Key of the `TRAFFIC` per-CPU hash map: what the datapath did with
/// packets, per reason and direction. `reason` is [`REASON_FORWARDED`] for
/// forwarded packets, else the drop reason (`DROP_*`); `direction` is
/// [`DIR_INGRESS`] (towards a pod) or [`DIR_EGRESS`] (from a pod).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrafficKey {
    pub reason: u8,
    pub direction: u8,
    pub pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<TrafficKey>() == 4);

/// Value of the `TRAFFIC` map (per CPU): packets and their bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCount {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<TrafficCount>() == 16);

/// `TrafficKey::reason` of forwarded packets.
pub const REASON_FORWARDED: u8 = 0;

/// Map names, shared by the probes and the loader.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const IPCACHE: &str = "IPCACHE";
    pub const CT: &str = "CT";
    pub const KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";
    pub const LAB_NETNS: &str = "LAB_NETNS";
    pub const POLICY: &str = "POLICY";
    pub const POLICY_CIDR: &str = "POLICY_CIDR";
    pub const TRAFFIC: &str = "TRAFFIC";
    pub const KERNEL_DROPS: &str = "KERNEL_DROPS";
    pub const SERVICES: &str = "SERVICES";
    pub const SVC_CT: &str = "SVC_CT";
    pub const REV_NAT: &str = "REV_NAT";
    /// Per-CPU scratch space for a tunnel key (too large for the stack of
    /// `from_container`); holds nothing between runs and is not pinned.
    pub const TUNNEL_KEY: &str = "TUNNEL_KEY";
    /// Per-CPU: the service port number of the packet a tc program is
    /// handling (`Event::service_id`); holds nothing between runs and is
    /// not pinned.
    pub const PKT_SERVICE: &str = "PKT_SERVICE";
}

/// Program names, shared by the probes and the loader.
pub mod programs {
    pub const FROM_CONTAINER: &str = "from_container";
    pub const TO_CONTAINER: &str = "to_container";
    /// On the ingress of the node's tunnel device.
    pub const FROM_OVERLAY: &str = "from_overlay";
    pub const KFREE_SKB: &str = "kfree_skb";
    /// Conntrack garbage collection: never attached, run by the collector
    /// with `BPF_PROG_TEST_RUN` on a [`GC_PACKET_LEN`]-byte buffer.
    pub const CT_GC: &str = "ct_gc";
}

/// The buffer `ct_gc` runs on: the collector writes the monotonic time
/// before which an entry has expired at [`GC_NOW_OFFSET`] (u64, host order);
/// the program writes the entries it deleted at [`GC_DELETED_OFFSET`] and
/// the entries it left at [`GC_LEFT_OFFSET`] (u64 each). The first 14
/// bytes are an Ethernet header that `BPF_PROG_TEST_RUN` requires.
pub const GC_PACKET_LEN: usize = 40;
pub const GC_NOW_OFFSET: usize = 16;
pub const GC_DELETED_OFFSET: usize = 24;
pub const GC_LEFT_OFFSET: usize = 32;

/// Map capacities.
pub const CT_MAP_SIZE: u32 = 65536;
pub const ENDPOINTS_MAP_SIZE: u32 = 4096;
pub const IPCACHE_MAP_SIZE: u32 = 16384;
pub const LAB_NETNS_MAP_SIZE: u32 = 4096;
pub const EVENTS_RING_BYTES: u32 = 1 << 22;
pub const POLICY_MAP_SIZE: u32 = 65536;
pub const POLICY_CIDR_MAP_SIZE: u32 = 16384;
/// (reason, direction) pairs: 256 reasons × 3 directions fit.
pub const TRAFFIC_MAP_SIZE: u32 = 1024;
/// Service ports × (1 + backends).
pub const SERVICES_MAP_SIZE: u32 = 65536;
/// Client connections to services, and their reverse translations.
pub const SVC_CT_MAP_SIZE: u32 = 65536;
/// Kernel drop reasons (`enum skb_drop_reason` has about 130).
pub const KERNEL_DROPS_MAP_SIZE: u32 = 512;

#[cfg(feature = "user")]
mod user {
    use super::{
        Config, CtEntry, CtKey, EndpointInfo, EndpointKey, Event, IpcacheKey, IpcacheValue,
        KernelOffsets, PolicyCidrKey, PolicyCidrValue, PolicyKey, PolicyValue, ServiceKey,
        ServiceValue, TrafficCount, TrafficKey,
    };
    // SAFETY: every type is `repr(C)`, `Copy`, made of integers and byte
    // arrays with explicit padding, so any bit pattern is valid.
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for IpcacheKey {}
    unsafe impl aya::Pod for IpcacheValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for PolicyCidrKey {}
    unsafe impl aya::Pod for PolicyCidrValue {}
    unsafe impl aya::Pod for TrafficKey {}
    unsafe impl aya::Pod for TrafficCount {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
}
