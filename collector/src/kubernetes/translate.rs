//! Kubernetes objects (k8s-openapi types) → the collector's model: the one
//! place that decides identity labels, identity numbers, NetworkPolicy
//! conversion and service ports. The lab keeps its manifests as these same
//! types and reads them through these functions ([`namespace_labels`],
//! [`container_ports`], [`service_ports`], [`network_policy`],
//! [`identity_labels`]), so both sources decide everything the same way.
//!
//! Pure functions: no I/O, no watcher, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::policy::model::{
    self, IpBlock, LabelSelector, NAMESPACE_NAME_LABEL, NetworkPolicy, Operator, Peer, PolicyPort, PolicyType, PortRef,
    Protocol, Requirement, Rule,
};
use crate::state::{self, IpcacheEntry, NodeState};

/// The identity label that names a pod's namespace.
pub const NAMESPACE_IDENTITY_LABEL: &str = "k8s:io.kubernetes.pod.namespace";
/// The prefix of the identity labels carrying the namespace's labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "k8s:io.cilium.k8s.namespace.labels.";

/// An object the translation cannot take, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct TranslateError {
    /// `NetworkPolicy x/deny`, `Node node-1`, …
    pub object: String,
    /// The field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub message: String,
}

/// The Cilium-style identity labels of a pod of `namespace` with
/// `pod_labels`, in a namespace with `namespace_labels`: `k8s:key=value`
/// for each pod label, `k8s:io.kubernetes.pod.namespace=<ns>`, and
/// `k8s:io.cilium.k8s.namespace.labels.<key>=<value>` for each namespace
/// label; sorted, without duplicates.
#[must_use]
pub fn identity_labels(
    namespace: &str,
    pod_labels: &BTreeMap<String, String>,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Vec<String> {
    let mut labels: Vec<String> = pod_labels.iter().map(|(k, v)| format!("k8s:{k}={v}")).collect();
    labels.push(format!("{NAMESPACE_IDENTITY_LABEL}={namespace}"));
    for (k, v) in namespace_labels.into_iter().flatten() {
        labels.push(format!("{NAMESPACE_LABELS_PREFIX}{k}={v}"));
    }
    labels.sort();
    labels.dedup();
    labels
}

/// The identity numbers the Kubernetes source hands out:
/// `IDENTITY_USER_MIN..=TUNNEL_IDENTITY_MASK` (they ride in a 24-bit VNI).
pub const IDENTITY_RANGE: (u32, u32) = (sightline_abi::IDENTITY_USER_MIN, sightline_abi::TUNNEL_IDENTITY_MASK);

/// The preferred number of a label set: FNV-1a (64 bits) of the labels,
/// each followed by a newline, folded into [`IDENTITY_RANGE`]. Stable
/// across builds, machines and processes.
#[must_use]
pub fn preferred_identity(labels: &[String]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for label in labels {
        for b in label.bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let (lo, hi) = IDENTITY_RANGE;
    lo + (h % u64::from(hi - lo + 1)) as u32
}

/// Numbers every label set so that any two nodes that see the same sets
/// agree, without talking to each other: each set takes its
/// [`preferred_identity`]; when two sets want the same number (a
/// collision), the sets are taken in their sorted order and a later one
/// takes the next free number above (wrapping within the range).
#[must_use]
pub fn number_identities(sets: &BTreeSet<Vec<String>>) -> BTreeMap<Vec<String>, u32> {
    let (lo, hi) = IDENTITY_RANGE;
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for labels in sets {
        let mut id = preferred_identity(labels);
        while !taken.insert(id) {
            id = if id == hi { lo } else { id + 1 };
        }
        out.insert(labels.clone(), id);
    }
    out
}

/// The policy types after the API server's defaulting: the given ones
/// (deduplicated, in order), or when none are given `Ingress`, plus
/// `Egress` when the policy has egress rules.
#[must_use]
pub fn default_policy_types(given: &[PolicyType], has_egress_rules: bool) -> Vec<PolicyType> {
    let mut types = Vec::new();
    for t in given {
        if !types.contains(t) {
            types.push(*t);
        }
    }
    if types.is_empty() {
        types.push(PolicyType::Ingress);
        if has_egress_rules {
            types.push(PolicyType::Egress);
        }
    }
    types
}

/// A service port's backend port: `targetPort` as a number or a container
/// port's name; absent, `0` or `""` mean the service port itself.
///
/// # Errors
///
/// A number outside 1..=65535, as a message for the field.
pub fn target_port(port: u16, target: Option<&IntOrString>) -> Result<state::TargetPort, String> {
    match target {
        None | Some(IntOrString::Int(0)) => Ok(state::TargetPort::Number(port)),
        Some(IntOrString::String(s)) if s.is_empty() => Ok(state::TargetPort::Number(port)),
        Some(IntOrString::Int(n)) => port_number(i64::from(*n)).map(state::TargetPort::Number),
        Some(IntOrString::String(s)) => Ok(state::TargetPort::Name(s.clone())),
    }
}

fn port_number(n: i64) -> Result<u16, String> {
    u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| format!("{n} is not a valid port number: must be between 1 and 65535"))
}

fn protocol(text: Option<&str>) -> Result<Protocol, String> {
    text.map_or(Ok(Protocol::Tcp), str::parse)
}

/// An object's labels (none when absent).
#[must_use]
pub fn labels_of(m: &meta::ObjectMeta) -> BTreeMap<String, String> {
    m.labels.clone().unwrap_or_default()
}

/// A namespace's labels, with `kubernetes.io/metadata.name` (which the API
/// server always sets).
#[must_use]
pub fn namespace_labels(ns: &Namespace) -> BTreeMap<String, String> {
    let mut labels = labels_of(&ns.metadata);
    let name = ns.metadata.name.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name);
    labels
}

/// A label selector.
///
/// # Errors
///
/// An unknown operator, In/NotIn without values, Exists/DoesNotExist with
/// values.
pub fn label_selector(sel: &meta::LabelSelector, err: &dyn Fn(String, String) -> TranslateError, path: &str) -> Result<LabelSelector, TranslateError> {
    let mut match_expressions = Vec::new();
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        let operator = match req.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => return Err(err(format!("{at}.operator"), format!("{other:?} is not a selector operator"))),
        };
        let values = req.values.clone().unwrap_or_default();
        let needs_values = matches!(operator, Operator::In | Operator::NotIn);
        if needs_values == values.is_empty() {
            return Err(err(format!("{at}.values"), format!("{} with values {values:?}", operator.as_str())));
        }
        match_expressions.push(Requirement { key: req.key.clone(), operator, values });
    }
    Ok(LabelSelector { match_labels: sel.match_labels.clone().unwrap_or_default(), match_expressions })
}

/// A NetworkPolicy in the collector's model.
///
/// # Errors
///
/// A field the model cannot hold (names the field).
pub fn network_policy(np: &net::NetworkPolicy) -> Result<NetworkPolicy, TranslateError> {
    let namespace = np.metadata.namespace.clone().unwrap_or_default();
    let name = np.metadata.name.clone().unwrap_or_default();
    let object = format!("NetworkPolicy {namespace}/{name}");
    let err = |field: String, message: String| TranslateError { object: object.clone(), field, message };
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = label_selector(&spec.pod_selector.unwrap_or_default(), &err, "spec.podSelector")?;
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        ingress.push(rule(&format!("spec.ingress[{i}]"), "from", r.from.as_deref(), r.ports.as_deref(), &err)?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        egress.push(rule(&format!("spec.egress[{i}]"), "to", r.to.as_deref(), r.ports.as_deref(), &err)?);
    }
    let mut given = Vec::new();
    for (i, t) in spec.policy_types.iter().flatten().enumerate() {
        given.push(match t.as_str() {
            "Ingress" => PolicyType::Ingress,
            "Egress" => PolicyType::Egress,
            other => return Err(err(format!("spec.policyTypes[{i}]"), format!("{other:?} is not Ingress or Egress"))),
        });
    }
    Ok(NetworkPolicy {
        namespace,
        name,
        pod_selector,
        policy_types: default_policy_types(&given, !egress.is_empty()),
        ingress,
        egress,
        origin: None,
    })
}

fn rule(
    path: &str,
    peers_field: &str,
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
    err: &dyn Fn(String, String) -> TranslateError,
) -> Result<Rule, TranslateError> {
    let mut out = Rule::default();
    for (j, p) in peers.into_iter().flatten().enumerate() {
        let at = format!("{path}.{peers_field}[{j}]");
        let pod_selector = p.pod_selector.as_ref().map(|s| label_selector(s, err, &format!("{at}.podSelector"))).transpose()?;
        let namespace_selector =
            p.namespace_selector.as_ref().map(|s| label_selector(s, err, &format!("{at}.namespaceSelector"))).transpose()?;
        let ip_block = p.ip_block.as_ref().map(|b| ip_block(b, err, &format!("{at}.ipBlock"))).transpose()?;
        if pod_selector.is_none() && namespace_selector.is_none() && ip_block.is_none() {
            return Err(err(at, "a peer selects nothing".into()));
        }
        out.peers.push(Peer { pod_selector, namespace_selector, ip_block });
    }
    for (j, p) in ports.into_iter().flatten().enumerate() {
        let at = format!("{path}.ports[{j}]");
        let protocol = protocol(p.protocol.as_deref()).map_err(|m| err(format!("{at}.protocol"), m))?;
        let port = match &p.port {
            None => None,
            Some(IntOrString::Int(n)) => Some(PortRef::Number(port_number(i64::from(*n)).map_err(|m| err(format!("{at}.port"), m))?)),
            Some(IntOrString::String(s)) => Some(PortRef::Name(s.clone())),
        };
        let end_port = match (p.end_port, &port) {
            (None, _) => None,
            (Some(end), Some(PortRef::Number(start))) => {
                let end = port_number(i64::from(end)).map_err(|m| err(format!("{at}.endPort"), m))?;
                if end < *start {
                    return Err(err(format!("{at}.endPort"), format!("{end} is below port {start}")));
                }
                Some(end)
            }
            (Some(_), _) => return Err(err(format!("{at}.endPort"), "only with a numeric port".into())),
        };
        out.ports.push(PolicyPort { protocol, port, end_port });
    }
    Ok(out)
}

fn ip_block(b: &net::IPBlock, err: &dyn Fn(String, String) -> TranslateError, path: &str) -> Result<IpBlock, TranslateError> {
    let canonical = |text: &str, field: String| {
        model::parse_cidr(text).map(|(ip, len)| format!("{ip}/{len}")).map_err(|m| err(field, m))
    };
    let cidr = canonical(&b.cidr, format!("{path}.cidr"))?;
    let except = b
        .except
        .iter()
        .flatten()
        .enumerate()
        .map(|(k, e)| canonical(e, format!("{path}.except[{k}]")))
        .collect::<Result<_, _>>()?;
    Ok(IpBlock { cidr, except })
}

/// A ClusterIP Service with an IPv4 cluster IP; `None` for every other
/// kind of service (headless, ExternalName, NodePort and LoadBalancer are
/// not load-balanced by the datapath yet).
///
/// # Errors
///
/// A port or protocol the model cannot hold.
pub fn service(svc: &Service) -> Result<Option<state::Service>, TranslateError> {
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let object = format!("Service {namespace}/{name}");
    let err = |field: String, message: String| TranslateError { object: object.clone(), field, message };
    let Some(spec) = &svc.spec else { return Ok(None) };
    if !matches!(spec.type_.as_deref(), None | Some("ClusterIP")) {
        return Ok(None);
    }
    let Some(cluster_ip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok()) else {
        return Ok(None);
    };
    let ports = service_ports(spec, &err)?;
    Ok(Some(state::Service { namespace, name, cluster_ip, selector: spec.selector.clone().unwrap_or_default(), ports, endpoints: None }))
}

/// A service's ports in the model: `targetPort` defaulted to the port,
/// protocol to TCP.
///
/// # Errors
///
/// A port or protocol the model cannot hold (names the field).
pub fn service_ports(spec: &ServiceSpec, err: &dyn Fn(String, String) -> TranslateError) -> Result<Vec<state::ServicePort>, TranslateError> {
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let at = format!("spec.ports[{i}]");
        let port = port_number(i64::from(p.port)).map_err(|m| err(format!("{at}.port"), m))?;
        ports.push(state::ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port,
            protocol: protocol(p.protocol.as_deref()).map_err(|m| err(format!("{at}.protocol"), m))?,
            target_port: target_port(port, p.target_port.as_ref()).map_err(|m| err(format!("{at}.targetPort"), m))?,
        });
    }
    Ok(ports)
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The endpoints of service `namespace/name` as its IPv4 EndpointSlices
/// list them: every address of an endpoint that is not marked not-ready
/// (`conditions.ready` absent means ready, as kube-proxy reads it), with
/// the slice's ports; an address in several slices gets their ports
/// together. In address order; none without slices.
///
/// # Errors
///
/// A port the model cannot hold.
pub fn slice_endpoints(namespace: &str, name: &str, slices: &[Arc<EndpointSlice>]) -> Result<Vec<state::ServiceEndpoint>, TranslateError> {
    let mut by_ip: BTreeMap<Ipv4Addr, BTreeSet<state::EndpointPort>> = BTreeMap::new();
    for slice in slices {
        let meta = &slice.metadata;
        if meta.namespace.as_deref() != Some(namespace)
            || meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).map(String::as_str) != Some(name)
            || slice.address_type != "IPv4"
        {
            continue;
        }
        let object = format!("EndpointSlice {namespace}/{}", meta.name.as_deref().unwrap_or_default());
        let mut ports = Vec::new();
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            let err = |field: &str, message: String| TranslateError { object: object.clone(), field: format!("ports[{i}].{field}"), message };
            // A port without a number: every port of the backend (not load-balanced here).
            let Some(number) = p.port else { continue };
            ports.push(state::EndpointPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: port_number(i64::from(number)).map_err(|m| err("port", m))?,
                protocol: protocol(p.protocol.as_deref()).map_err(|m| err("protocol", m))?,
            });
        }
        for endpoint in &slice.endpoints {
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<Ipv4Addr>() {
                    by_ip.entry(ip).or_default().extend(ports.iter().cloned());
                }
            }
        }
    }
    Ok(by_ip.into_iter().map(|(ip, ports)| state::ServiceEndpoint { ip, ports: ports.into_iter().collect() }).collect())
}

/// A pod's IPv4 address and node, when it has both and its own network
/// namespace (host-network pods and finished pods are not endpoints).
fn pod_placement(pod: &Pod) -> Option<(Ipv4Addr, String)> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = status.pod_ip.as_deref()?.parse::<Ipv4Addr>().ok()?;
    Some((ip, spec.node_name.clone().filter(|n| !n.is_empty())?))
}

/// A pod's container ports (the ports of every container, in container
/// order then port order), named as Kubernetes resolves named ports.
///
/// # Errors
///
/// A port number or protocol the model cannot hold (names the field).
pub fn container_ports(pod: &Pod) -> Result<Vec<state::ContainerPort>, TranslateError> {
    let mut out = Vec::new();
    let key = format!("Pod {}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default());
    for (c, container) in pod.spec.iter().flat_map(|s| s.containers.iter()).enumerate() {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            let at = format!("spec.containers[{c}].ports[{p}]");
            let err = |field: &str, message: String| TranslateError { object: key.clone(), field: format!("{at}.{field}"), message };
            out.push(state::ContainerPort {
                name: port.name.clone().filter(|n| !n.is_empty()),
                port: port_number(i64::from(port.container_port)).map_err(|m| err("containerPort", m))?,
                protocol: protocol(port.protocol.as_deref()).map_err(|m| err("protocol", m))?,
            });
        }
    }
    Ok(out)
}

/// Everything the Kubernetes source read, as the API server has it.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub pods: Vec<Arc<Pod>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub services: Vec<Arc<Service>>,
    pub policies: Vec<Arc<net::NetworkPolicy>>,
    pub nodes: Vec<Arc<Node>>,
    /// Every EndpointSlice: the services' backends.
    pub slices: Vec<Arc<EndpointSlice>>,
}

/// Every node's name and address: its first `InternalIP`, IPv4 before
/// IPv6 (nodes without one are left out). The Peer service announces each
/// node's collector there.
#[must_use]
pub fn cluster_nodes(nodes: &[Arc<Node>]) -> BTreeMap<String, IpAddr> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let Some(name) = &n.metadata.name else { continue };
        let internal: Vec<IpAddr> = n
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        if let Some(ip) = internal.iter().find(|ip| ip.is_ipv4()).or_else(|| internal.first()) {
            out.insert(name.clone(), *ip);
        }
    }
    out
}

/// The first address of a node's pod CIDR: the pods' gateway.
fn gateway(cidr: &str) -> Option<Ipv4Addr> {
    let (ip, len) = model::parse_cidr(cidr).ok()?;
    match ip {
        IpAddr::V4(v4) if len < 31 => Some(Ipv4Addr::from(u32::from(v4) + 1)),
        _ => None,
    }
}

/// The desired state of node `node` from the cluster's objects: every pod
/// with an address (in `pods` and the ipcache), identities numbered by
/// [`number_identities`], every namespace, NetworkPolicy and ClusterIP
/// Service, and every node's InternalIP addresses (`host` for this node,
/// `remote-node` for the others). `endpoints` stays empty: how a pod is
/// plugged in is not known to the API server (CNI registration fills it).
///
/// # Errors
///
/// This node is unknown or has no IPv4 `spec.podCIDR`, or an object cannot
/// be translated (named with its field): nothing is half-built.
pub fn node_state(node: &str, objects: &Objects) -> Result<NodeState, TranslateError> {
    let node_err = |field: &str, message: String| TranslateError { object: format!("Node {node}"), field: field.into(), message };
    let this = objects
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node))
        .ok_or_else(|| node_err("metadata.name", "no such node in the API server".into()))?;
    let pod_cidr = this
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.clone())
        .ok_or_else(|| node_err("spec.podCIDR", "not set: the node has no pod range".into()))?;
    let node_ip = gateway(&pod_cidr).ok_or_else(|| node_err("spec.podCIDR", format!("{pod_cidr:?} is not an IPv4 range")))?;

    let namespaces: BTreeMap<String, BTreeMap<String, String>> = objects
        .namespaces
        .iter()
        .filter_map(|ns| Some((ns.metadata.name.clone()?, namespace_labels(ns))))
        .collect();

    // Pods with an address, by (namespace, name).
    let mut placed = BTreeMap::new();
    for pod in &objects.pods {
        let (Some(ns), Some(name)) = (pod.metadata.namespace.clone(), pod.metadata.name.clone()) else { continue };
        let Some((ip, pod_node)) = pod_placement(pod) else { continue };
        let labels = labels_of(&pod.metadata);
        let identity = identity_labels(&ns, &labels, namespaces.get(&ns));
        placed.insert((ns, name), (ip, pod_node, labels, identity, container_ports(pod)?));
    }
    let sets: BTreeSet<Vec<String>> = placed.values().map(|p| p.3.clone()).collect();
    let numbers = number_identities(&sets);

    let mut ipcache = Vec::new();
    let mut pods = Vec::new();
    for ((namespace, name), (ip, pod_node, labels, identity, ports)) in placed {
        let identity = numbers[&identity];
        ipcache.push(IpcacheEntry { cidr: format!("{ip}/32"), identity, tunnel_endpoint: None });
        pods.push(state::Pod { namespace, name, ip, node: pod_node, identity, labels, ports });
    }
    for n in &objects.nodes {
        let identity =
            if n.metadata.name.as_deref() == Some(node) { sightline_abi::IDENTITY_HOST } else { sightline_abi::IDENTITY_REMOTE_NODE };
        for a in n.status.iter().flat_map(|s| s.addresses.iter().flatten()) {
            if a.type_ == "InternalIP"
                && let Ok(ip) = a.address.parse::<Ipv4Addr>()
            {
                ipcache.push(IpcacheEntry { cidr: format!("{ip}/32"), identity, tunnel_endpoint: None });
            }
        }
    }
    let mut policies = objects.policies.iter().map(|p| network_policy(p)).collect::<Result<Vec<_>, _>>()?;
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut services = Vec::new();
    for svc in &objects.services {
        if let Some(mut s) = service(svc)? {
            s.endpoints = Some(slice_endpoints(&s.namespace, &s.name, &objects.slices)?);
            services.push(s);
        }
    }
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(NodeState {
        node_name: node.to_owned(),
        pod_cidr,
        node_ip,
        endpoints: Vec::new(),
        identities: numbers.into_iter().map(|(labels, id)| state::Identity { id, labels }).collect(),
        ipcache,
        namespaces,
        pods,
        policies,
        services,
        policy_audit: false,
        tunnel: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_numbers_are_stable_and_collisions_probe_in_sorted_order() {
        let a = vec!["k8s:app=a".to_owned(), "k8s:io.kubernetes.pod.namespace=x".to_owned()];
        let n = preferred_identity(&a);
        assert!((IDENTITY_RANGE.0..=IDENTITY_RANGE.1).contains(&n));
        assert_eq!(n, preferred_identity(&a.clone()), "the same labels give the same number");
        // Two sets forced onto one slot: the sorted-first keeps it, the
        // other takes the next number, whichever order they are given in.
        let mut taken = BTreeSet::new();
        let sets: BTreeSet<Vec<String>> = (0..5000).map(|i| vec![format!("k8s:i={i}")]).collect();
        let numbers = number_identities(&sets);
        for id in numbers.values() {
            assert!(taken.insert(*id), "identity {id} given twice");
        }
        assert_eq!(numbers, number_identities(&sets.iter().rev().cloned().collect()));
    }

    #[test]
    fn target_port_defaults_to_the_service_port() {
        assert_eq!(target_port(80, None), Ok(state::TargetPort::Number(80)));
        assert_eq!(target_port(80, Some(&IntOrString::Int(0))), Ok(state::TargetPort::Number(80)));
        assert_eq!(target_port(80, Some(&IntOrString::String(String::new()))), Ok(state::TargetPort::Number(80)));
        assert_eq!(target_port(80, Some(&IntOrString::Int(8080))), Ok(state::TargetPort::Number(8080)));
        assert_eq!(target_port(80, Some(&IntOrString::String("http".into()))), Ok(state::TargetPort::Name("http".into())));
        assert!(target_port(80, Some(&IntOrString::Int(70_000))).is_err());
    }

    #[test]
    fn policy_types_default_as_the_api_server_does() {
        assert_eq!(default_policy_types(&[], false), vec![PolicyType::Ingress]);
        assert_eq!(default_policy_types(&[], true), vec![PolicyType::Ingress, PolicyType::Egress]);
        assert_eq!(default_policy_types(&[PolicyType::Egress, PolicyType::Egress], false), vec![PolicyType::Egress]);
    }

    #[test]
    fn cluster_nodes_are_named_with_their_first_internal_ipv4() {
        use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
        let node = |name: &str, addresses: &[(&str, &str)]| {
            Arc::new(Node {
                metadata: meta::ObjectMeta { name: Some(name.to_owned()), ..Default::default() },
                status: Some(NodeStatus {
                    addresses: Some(
                        addresses
                            .iter()
                            .map(|(t, a)| NodeAddress { type_: (*t).to_owned(), address: (*a).to_owned() })
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let nodes = vec![
            node("a", &[("Hostname", "a"), ("InternalIP", "fd00::1"), ("InternalIP", "10.0.0.1")]),
            node("b", &[("InternalIP", "fd00::2")]),
            node("c", &[("ExternalIP", "203.0.113.3")]),
        ];
        let got = cluster_nodes(&nodes);
        assert_eq!(got.len(), 2, "a node without an InternalIP is left out: {got:?}");
        assert_eq!(got["a"], "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(got["b"], "fd00::2".parse::<IpAddr>().unwrap());
    }
}
