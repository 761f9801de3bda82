//! The compact flow record kept in the store.
//!
//! One `Flow` per datapath event, built without allocating strings: pod and
//! identity metadata are shared `Arc`s owned by the collector's
//! `Metadata`, so a stored flow costs its own fixed size plus a few reference
//! counts. Protobuf messages are built from it only when a client asks
//! (`convert`), and filters run on it directly (`filter`).
//!
//! Numbering: every enum-like field holds the Hubble proto value (flow.proto)
//! so that conversion and filtering need no translation.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;


/// What is known about a pod, shared by every flow that involves it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    /// Endpoint id on this node; 0 for pods of other nodes.
    pub endpoint_id: u16,
    pub identity: u32,
    /// Identity labels in Cilium's `k8s:key=value` form, sorted.
    pub labels: Arc<[String]>,
    /// The node the pod runs on.
    pub node: String,
}

/// A Kubernetes Service a flow went through, shared by every flow that
/// names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceMeta {
    pub namespace: String,
    pub name: String,
}

/// One side of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub ip: IpAddr,
    /// TCP/UDP/SCTP port (0 when none).
    pub port: u16,
    /// Security identity.
    pub identity: u32,
    /// The pod behind the address, when it is one.
    pub pod: Option<Arc<PodMeta>>,
    /// Labels of the identity when no pod is known (e.g. `reserved:world`).
    pub identity_labels: Option<Arc<[String]>>,
}

/// A flow: what one datapath event says about one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Unix time in nanoseconds.
    pub time_ns: i64,
    /// Sequence number on this node (1, 2, …); with the node's boot id it
    /// makes the flow's UUID.
    pub seq: u64,
    pub source: Side,
    pub destination: Side,
    /// `flow.Verdict` value (FORWARDED 1, DROPPED 2, AUDIT 4, …).
    pub verdict: u8,
    /// `flow.DropReason` value (0 when not dropped by the datapath).
    pub drop_reason: u16,
    /// Kernel `skb_drop_reason` for drops reported by the kernel (0 otherwise)
    /// and its name (shared).
    pub kernel_drop_reason: u32,
    pub kernel_drop_reason_name: Option<Arc<str>>,
    /// `CiliumEventType.type`: 1 drop, 4 trace, 5 policy verdict; kernel drops
    /// are type 1 (drop) with `drop_reason` 0 and a kernel reason.
    pub event_type: u8,
    /// `CiliumEventType.sub_type`: trace point for traces, drop reason for drops.
    pub event_sub_type: u8,
    /// `flow.TraceObservationPoint` value (TO_ENDPOINT = 101, …; 0 unknown).
    pub trace_observation_point: u8,
    /// `flow.TraceReason` value (NEW 1, ESTABLISHED 2, REPLY 3; 0 unknown).
    pub trace_reason: u8,
    /// `is_reply`: None when unknown (drops before conntrack).
    pub is_reply: Option<bool>,
    /// `flow.TrafficDirection` value.
    pub traffic_direction: u8,
    /// `policy_match_type` (Cilium numbering: 0 none, 1 L3-only, 2 L3-L4,
    /// 3 L4-only, 4 all).
    pub policy_match_type: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMPv4, 58 ICMPv6, 132 SCTP).
    pub protocol: u8,
    /// TCP flag bits (FIN 0x01 … CWR 0x80).
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// Interface the event was seen on.
    pub ifindex: u32,
    pub interface: Option<Arc<str>>,
    /// Policies that allowed (`allowed_by`) or deny (`denied_by`) the flow,
    /// as `namespace/name`; which of egress/ingress they belong to follows
    /// `traffic_direction`.
    pub allowed_by: Option<Arc<[String]>>,
    pub denied_by: Option<Arc<[String]>>,
    /// Connection counters: forward packets, forward bytes, reply packets,
    /// reply bytes.
    pub counters: [u64; 4],
    /// The Service on each side (`source_service`, `destination_service`):
    /// the service a translated connection's client addressed (its
    /// destination, or in replies its source), or the service whose
    /// frontend the side's address and port are.
    pub source_service: Option<Arc<ServiceMeta>>,
    pub destination_service: Option<Arc<ServiceMeta>>,
    /// `IP.source_xlated`: the address the datapath gives the packet as its
    /// source right after the event (a service's reply translated back to
    /// the service address); `source.ip` is the address before. IPv4 only,
    /// as the datapath's translation is (and so that the record stays
    /// compact).
    pub source_xlated: Option<Ipv4Addr>,
}
