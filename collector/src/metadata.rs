//! What the collector knows about its node and cluster to enrich events:
//! pods by address, identities, interfaces, kernel drop reasons, policies
//! and services. Built by the datapath module from the desired state and
//! read by the flow builder (the one enrichment; the debug record is made
//! from its flows).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// What the collector knows about the node, for enrichment.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub node_name: String,
    /// Pods by IP (shared: flows keep an `Arc` instead of a copy).
    pub pods: BTreeMap<Ipv4Addr, Arc<PodMeta>>,
    /// Identity → its labels (`k8s:key=value`, `reserved:host`, …).
    pub identities: BTreeMap<u32, Arc<[String]>>,
    /// Interface names by ifindex (node namespace). Names, label and
    /// policy lists are `Arc`s: every flow that names one shares it.
    pub interfaces: BTreeMap<u32, Arc<str>>,
    /// Kernel drop reason names.
    pub kernel_reasons: BTreeMap<u32, Arc<str>>,
    /// Nanoseconds to add to a monotonic timestamp to get Unix time.
    pub mono_to_unix_ns: i64,
    /// Policy-set id → the policies in it (`namespace/name`).
    pub policy_sets: BTreeMap<u32, Arc<[String]>>,
    /// (endpoint id, direction) → the policies that select the endpoint.
    pub selected_by: BTreeMap<(u16, u8), Arc<[String]>>,
    /// Service ports (frontends) by their number (`Event::service_id`).
    pub services: BTreeMap<u16, Frontend>,
    /// Frontend numbers by address and port, a TCP port before a UDP one
    /// (Hubble's lookup of a flow's address).
    pub frontends: BTreeMap<(Ipv4Addr, u16), u16>,
}

pub use sightline_flow::{PodMeta, ServiceMeta};

/// One service port as the datapath load-balances it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// The service, shared by its ports and by the flows that name it.
    pub service: Arc<ServiceMeta>,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: u8,
}

