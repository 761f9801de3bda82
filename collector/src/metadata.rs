//! What the collector knows about its node and cluster to enrich events:
//! pods by address, identities, interfaces, kernel drop reasons, policies
//! and services. Built by the datapath module from the desired state and
//! read by the flow builder (the one enrichment; the debug record is made
//! from its flows).

use std::net::Ipv4Addr;
use std::sync::Arc;

/// The maps the flow builder looks up on every event: hashed with the
/// word hasher ([`crate::hashing::Seeded`]), one probe per lookup whatever
/// the number of pods.
pub type Map<K, V> = std::collections::HashMap<K, V, crate::hashing::Seeded>;

/// What the collector knows about the node, for enrichment.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub node_name: String,
    /// Pods by IP (shared: flows keep an `Arc` instead of a copy).
    pub pods: Map<Ipv4Addr, Arc<PodMeta>>,
    /// Identity → its labels (`k8s:key=value`, `reserved:host`, …).
    pub identities: Map<u32, Arc<[String]>>,
    /// Interface names by ifindex (node namespace). Names, label and
    /// policy lists are `Arc`s: every flow that names one shares it.
    pub interfaces: Map<u32, Arc<str>>,
    /// Kernel drop reason names.
    pub kernel_reasons: Map<u32, Arc<str>>,
    /// Nanoseconds to add to a monotonic timestamp to get Unix time.
    pub mono_to_unix_ns: i64,
    /// Policy-set id → the policies in it (`namespace/name`).
    pub policy_sets: Map<u32, Arc<[String]>>,
    /// (endpoint id, direction) → the policies that select the endpoint.
    pub selected_by: Map<(u16, u8), Arc<[String]>>,
    /// Service ports (frontends) by their number (`Event::service_id`).
    pub services: Map<u16, Frontend>,
    /// Frontend numbers by address and port, a TCP port before a UDP one
    /// (Hubble's lookup of a flow's address).
    pub frontends: Map<(Ipv4Addr, u16), u16>,
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

