//! The desired state of one node's datapath, as a state source (the lab,
//! later the Kubernetes API) hands it to the collector.
//!
//! Everything here is plain data with serde derives: the lab computes it from
//! manifests and sends it over the control socket; the collector's `datapath`
//! module turns it into map entries. Identities are allocated by the source so
//! that every node of a cluster agrees on them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy::model::{NetworkPolicy, Protocol};

/// Everything one node's datapath must enforce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    /// The node's name (`node-1`, …).
    pub node_name: String,
    /// The node's pod CIDR, e.g. `10.244.1.0/24`.
    pub pod_cidr: String,
    /// The node's own address inside its namespace (the pods' gateway).
    pub node_ip: Ipv4Addr,
    /// Pods on this node.
    pub endpoints: Vec<Endpoint>,
    /// Every identity in use in the cluster.
    pub identities: Vec<Identity>,
    /// Every known address or prefix and its identity (pods of all nodes,
    /// nodes, CIDR identities). Reserved entries (world) are implied.
    pub ipcache: Vec<IpcacheEntry>,
    /// Every namespace of the cluster and its labels (including
    /// `kubernetes.io/metadata.name`), for namespace selectors.
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Every pod of the cluster, for pod selectors, ipBlocks and named ports.
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// Every NetworkPolicy of the cluster.
    #[serde(default)]
    pub policies: Vec<NetworkPolicy>,
    /// Every ClusterIP Service of the cluster; their backends are the
    /// `pods` the selector picks.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Report what policy would deny without dropping it (verdict AUDIT).
    #[serde(default)]
    pub policy_audit: bool,
    /// Tunnel routing: the node's collect-metadata tunnel device (one of
    /// [`TUNNEL_DEVICES`]) through which pod traffic to other nodes is
    /// encapsulated, to the `tunnel_endpoint` of its ipcache entry. `None`:
    /// the node's stack routes it.
    #[serde(default)]
    pub tunnel: Option<String>,
}

impl NodeState {
    /// Node `node_name` with its pod range and address, and nothing else:
    /// no endpoints, pods, identities, policies or services.
    #[must_use]
    pub fn empty(node_name: &str, pod_cidr: &str, node_ip: Ipv4Addr) -> Self {
        Self {
            node_name: node_name.to_owned(),
            pod_cidr: pod_cidr.to_owned(),
            node_ip,
            endpoints: Vec::new(),
            identities: Vec::new(),
            ipcache: Vec::new(),
            namespaces: BTreeMap::new(),
            pods: Vec::new(),
            policies: Vec::new(),
            services: Vec::new(),
            policy_audit: false,
            tunnel: None,
        }
    }
}

/// The names a tunnel device may have: the VXLAN and Geneve devices the
/// lab (or an installer) creates in the node's namespace.
pub const TUNNEL_DEVICES: [&str; 2] = ["sl_vxlan", "sl_geneve"];

/// A pod anywhere in the cluster, as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: String,
    pub identity: u32,
    pub labels: BTreeMap<String, String>,
    /// Declared container ports.
    pub ports: Vec<ContainerPort>,
}

/// A declared container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod on this node and how it is plugged in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Numeric endpoint ID, unique on the node, 1..=65535.
    pub id: u16,
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// The pod's `eth0` MAC, `aa:bb:…`.
    pub mac: String,
    /// Host-side veth name in the node's namespace (`lxc…`).
    pub host_ifname: String,
    /// The host-side veth's MAC.
    pub host_mac: String,
    /// The pod's network namespace, as a path (`/run/netns/…`).
    pub netns: PathBuf,
    pub identity: u32,
    pub labels: BTreeMap<String, String>,
}

/// A ClusterIP Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    /// Pods of the service's namespace with all these labels are its
    /// backends (through [`Service::endpoints`]); an empty selector selects
    /// none.
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    /// The backends, as the service's EndpointSlices list them (ready
    /// endpoints only, in address order). `None`: derived from the
    /// selector (see [`selected_endpoints`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<ServiceEndpoint>>,
}

/// One backend of a Service: an address and the ports it serves, each
/// named as the service port it backs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEndpoint {
    pub ip: Ipv4Addr,
    pub ports: Vec<EndpointPort>,
}

/// A port of a service endpoint (an EndpointSlice's `ports[]` entry).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointPort {
    /// The service port's name (`None` for a service's one unnamed port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

impl Service {
    /// The service's backends: its [`Service::endpoints`], or the ones its
    /// selector picks among `pods`.
    #[must_use]
    pub fn backends(&self, pods: &[Pod]) -> Vec<ServiceEndpoint> {
        self.endpoints.clone().unwrap_or_else(|| selected_endpoints(self, pods))
    }
}

/// What the EndpointSlice controller makes of a service: every pod of its
/// namespace that its selector picks (none for an empty selector), with
/// each service port resolved on that pod (a numbered target port as is; a
/// named one through the pod's container port of that name and protocol,
/// left out when the pod has none), in address order. The lab's
/// endpoints, and those of a state without EndpointSlices.
#[must_use]
pub fn selected_endpoints(svc: &Service, pods: &[Pod]) -> Vec<ServiceEndpoint> {
    let mut out: Vec<ServiceEndpoint> = pods
        .iter()
        .filter(|p| p.namespace == svc.namespace && !svc.selector.is_empty())
        .filter(|p| svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        .map(|pod| {
            let ports = svc
                .ports
                .iter()
                .filter_map(|sp| {
                    let port = match &sp.target_port {
                        TargetPort::Number(n) => *n,
                        TargetPort::Name(wanted) => {
                            pod.ports.iter().find(|c| c.name.as_deref() == Some(wanted.as_str()) && c.protocol == sp.protocol)?.port
                        }
                    };
                    Some(EndpointPort { name: sp.name.clone(), port, protocol: sp.protocol })
                })
                .collect();
            ServiceEndpoint { ip: pod.ip, ports }
        })
        .collect();
    out.sort();
    out
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// `spec.ports[].name` (required and unique when there are several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    /// The backend port: a number, or the name of a container port
    /// (resolved per pod; pods without it are not backends of this port).
    pub target_port: TargetPort,
}

/// A Service port's `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// A security identity: a number for a distinct (namespace, labels) set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub id: u32,
    /// Labels in Cilium's `source:key=value` form, sorted, e.g.
    /// `k8s:io.kubernetes.pod.namespace=x`, `k8s:pod=a`, `reserved:host`.
    pub labels: Vec<String>,
}

/// One ipcache entry: an address or prefix and the identity behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpcacheEntry {
    /// `a.b.c.d/len`.
    pub cidr: String,
    pub identity: u32,
    /// Tunnel routing: the node the prefix lives behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<Ipv4Addr>,
}
