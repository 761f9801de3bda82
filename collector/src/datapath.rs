//! Turns a node's desired state into map entries and program attachments.
//!
//! `plan` validates the desired state and computes every entry before
//! anything is written, so bad input never half-applies; `apply` then writes
//! only what differs from what is there: additions and updates first (so new
//! pods are reachable before anything refers to them), removals last.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use aya::maps::lpm_trie::Key as LpmKey;
use sightline_abi as abi;
use sightline_abi::{EndpointInfo, EndpointKey, IpcacheKey, IpcacheValue, ServiceKey, ServiceValue};

use crate::metadata::{Frontend, Metadata, PodMeta, ServiceMeta};
use crate::loader::{LoaderError, Probes};
use crate::policy::compiler::{NamedPort, PodInfo, PolicyInput, PolicyPlan, compile};
use crate::policy::model::Protocol;
use crate::state::NodeState;

/// Why a desired state cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("invalid desired state: {0}")]
    Invalid(String),
    #[error("interface {ifname} of pod {pod} not found in the node's namespace: {source}")]
    Interface { ifname: String, pod: String, #[source] source: std::io::Error },
    #[error("network namespace {path} of pod {pod}: {source}")]
    PodNetns { path: String, pod: String, #[source] source: std::io::Error },
    #[error("writing {map}: {source}")]
    Map { map: &'static str, #[source] source: aya::maps::MapError },
    #[error(transparent)]
    Loader(#[from] LoaderError),
}

/// Everything the maps should hold for a desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub endpoints: BTreeMap<[u8; 4], EndpointInfo>,
    /// (prefix length, address) → identity and tunnel endpoint.
    pub ipcache: BTreeMap<(u32, [u8; 4]), IpcacheValue>,
    /// Tunnel routing: the tunnel device and its ifindex in the node's
    /// namespace (`Config::tunnel_ifindex`; the programs' ingress on it).
    pub tunnel: Option<(String, u32)>,
    /// Network-namespace inodes whose kernel drops are reported.
    pub netns: BTreeSet<u32>,
    /// Host-side interfaces (in the node's namespace) that carry the tc programs.
    pub interfaces: BTreeSet<String>,
    /// Compiled NetworkPolicy: entries of `POLICY` and `POLICY_CIDR`, and
    /// what selects each endpoint.
    pub policy: PolicyPlan,
    /// `SERVICES`: per service port, slot 0 with the number of backends and
    /// slots 1..=n with the backends.
    pub services: BTreeMap<ServiceKey, ServiceValue>,
}

/// The `SERVICES` entries of the cluster's services: backends are the
/// service's endpoints ([`crate::state::Service::backends`]: its
/// EndpointSlices', or the pods its selector picks) that serve the service
/// port (by its name and protocol), in address order. Only TCP and UDP
/// ports are load-balanced; SCTP would need its CRC32c recomputed on every
/// packet.
fn plan_services(desired: &NodeState) -> Result<BTreeMap<ServiceKey, ServiceValue>, String> {
    let mut entries = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for svc in &desired.services {
        let name = format!("service {}/{}", svc.namespace, svc.name);
        let endpoints = svc.backends(&desired.pods);
        for port in &svc.ports {
            let protocol = match port.protocol {
                Protocol::Tcp => abi::IPPROTO_TCP,
                Protocol::Udp => abi::IPPROTO_UDP,
                Protocol::Sctp => continue,
            };
            if !seen.insert((svc.cluster_ip, port.port, protocol)) {
                return Err(format!("{name}: {}:{}/{} is used twice", svc.cluster_ip, port.port, port.protocol.as_str()));
            }
            let backends: Vec<ServiceValue> = endpoints
                .iter()
                .filter_map(|e| {
                    let served = e.ports.iter().find(|p| p.name == port.name && p.protocol == port.protocol)?;
                    Some(ServiceValue { addr: e.ip.octets(), port: served.port, ..ServiceValue::default() })
                })
                .collect();
            let count = u16::try_from(backends.len()).map_err(|_| format!("{name}: more than 65535 backends"))?;
            let key = |slot: u16| ServiceKey {
                addr: svc.cluster_ip.octets(),
                port: port.port,
                protocol,
                _pad: 0,
                slot,
                _pad2: [0; 2],
            };
            entries.insert(key(0), ServiceValue { count, ..ServiceValue::default() });
            for (slot, backend) in (1..=count).zip(backends) {
                entries.insert(key(slot), backend);
            }
        }
    }
    number_services(&mut entries, &BTreeMap::new())?;
    Ok(entries)
}

/// Numbers the service ports (frontends) of `services` for events to name
/// them (`ServiceValue::service_id`, written in every slot): a frontend
/// that `prev` holds keeps its number, so that connections and events in
/// flight keep naming it across applies and collector restarts (`current`
/// reads the numbers back); a new one gets the first number after the
/// highest `prev` or this plan uses, wrapping around, never one `prev`
/// used, so a deleted service's number is not handed to another at once.
fn number_services(
    services: &mut BTreeMap<ServiceKey, ServiceValue>,
    prev: &BTreeMap<ServiceKey, ServiceValue>,
) -> Result<(), String> {
    let frontend = |k: &ServiceKey| ServiceKey { slot: 0, ..*k };
    let kept: BTreeMap<ServiceKey, u16> = services
        .keys()
        .filter(|k| k.slot == 0)
        .filter_map(|k| prev.get(k).filter(|v| v.service_id != 0).map(|v| (*k, v.service_id)))
        .collect();
    let mut used: BTreeSet<u16> =
        prev.iter().filter(|(k, v)| k.slot == 0 && v.service_id != 0).map(|(_, v)| v.service_id).collect();
    used.extend(kept.values());
    let mut last = used.last().copied().unwrap_or(0);
    let mut numbers = kept;
    for key in services.keys().filter(|k| k.slot == 0) {
        if numbers.contains_key(key) {
            continue;
        }
        let next = (1..=u16::MAX)
            .map(|step| ((u32::from(last) + u32::from(step) - 1) % u32::from(u16::MAX) + 1) as u16)
            .find(|n| !used.contains(n))
            .ok_or_else(|| "more than 65535 service ports".to_owned())?;
        used.insert(next);
        numbers.insert(*key, next);
        last = next;
    }
    for (key, value) in services.iter_mut() {
        value.service_id = numbers.get(&frontend(key)).copied().unwrap_or(0);
    }
    Ok(())
}

impl Plan {
    /// Renumbers this plan's service ports over `prev` (the plan in the
    /// maps), keeping the numbers of the frontends both have; call it before
    /// `apply` and `metadata`.
    pub fn keep_service_numbers(&mut self, prev: &Plan) -> Result<(), DatapathError> {
        number_services(&mut self.services, &prev.services).map_err(DatapathError::Invalid)
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address"));
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
    }
    Ok(mac)
}

/// Parses `a.b.c.d/len` (a bare address is a /32): the policy model's
/// parser, IPv4 only.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u32), String> {
    let text = if s.contains('/') { std::borrow::Cow::Borrowed(s) } else { std::borrow::Cow::Owned(format!("{s}/32")) };
    match crate::policy::model::parse_cidr(&text)? {
        (std::net::IpAddr::V4(addr), len) => Ok((addr, u32::from(len))),
        (std::net::IpAddr::V6(_), _) => Err(format!("{s:?} is not an IPv4 CIDR")),
    }
}

/// Validates `desired` and computes its entries. `ifindex` resolves a
/// host-side interface name in the node's namespace; `inode` gives a
/// namespace file's inode.
pub fn plan(
    desired: &NodeState,
    mut ifindex: impl FnMut(&str) -> std::io::Result<u32>,
    mut inode: impl FnMut(&Path) -> std::io::Result<u64>,
) -> Result<Plan, DatapathError> {
    let invalid = |m: String| DatapathError::Invalid(m);
    let mut plan = Plan::default();
    parse_cidr(&desired.pod_cidr).map_err(invalid)?;
    let mut ids = BTreeSet::new();
    for ep in &desired.endpoints {
        let pod = format!("{}/{}", ep.namespace, ep.name);
        if ep.id == 0 || !ids.insert(ep.id) {
            return Err(invalid(format!("pod {pod}: endpoint id {} is zero or used twice", ep.id)));
        }
        if ep.identity < abi::IDENTITY_USER_MIN {
            return Err(invalid(format!("pod {pod}: identity {} is reserved", ep.identity)));
        }
        let mac = parse_mac(&ep.mac).map_err(|m| invalid(format!("pod {pod}: {m}")))?;
        let node_mac = parse_mac(&ep.host_mac).map_err(|m| invalid(format!("pod {pod}: {m}")))?;
        let index = ifindex(&ep.host_ifname).map_err(|source| DatapathError::Interface {
            ifname: ep.host_ifname.clone(),
            pod: pod.clone(),
            source,
        })?;
        let ino = inode(&ep.netns).map_err(|source| DatapathError::PodNetns {
            path: ep.netns.display().to_string(),
            pod: pod.clone(),
            source,
        })?;
        let info = EndpointInfo { ifindex: index, identity: ep.identity, mac, node_mac, endpoint_id: ep.id, flags: 0 };
        if plan.endpoints.insert(ep.ip.octets(), info).is_some() {
            return Err(invalid(format!("pod {pod}: address {} is used twice", ep.ip)));
        }
        plan.ipcache.insert((32, ep.ip.octets()), IpcacheValue { identity: ep.identity, tunnel_endpoint: [0; 4] });
        plan.netns.insert(ino as u32);
        plan.interfaces.insert(ep.host_ifname.clone());
    }
    for entry in &desired.ipcache {
        let (addr, len) = parse_cidr(&entry.cidr).map_err(invalid)?;
        let tunnel_endpoint = match entry.tunnel_endpoint {
            Some(_) if desired.tunnel.is_none() => {
                return Err(invalid(format!("ipcache {}: a tunnel endpoint without a tunnel device", entry.cidr)));
            }
            Some(ep) if ep.is_unspecified() || ep.is_broadcast() || ep.is_multicast() || ep.is_loopback() => {
                return Err(invalid(format!("ipcache {}: tunnel endpoint {ep} is not a node address", entry.cidr)));
            }
            Some(ep) => ep.octets(),
            None => [0; 4],
        };
        plan.ipcache.entry((len, addr.octets())).or_insert(IpcacheValue { identity: entry.identity, tunnel_endpoint });
    }
    plan.ipcache.insert((32, desired.node_ip.octets()), IpcacheValue { identity: abi::IDENTITY_HOST, tunnel_endpoint: [0; 4] });
    if let Some(dev) = &desired.tunnel {
        let index = ifindex(dev).map_err(|source| DatapathError::Interface { ifname: dev.clone(), pod: "(tunnel)".into(), source })?;
        plan.tunnel = Some((dev.clone(), index));
    }

    // NetworkPolicy, compiled for the endpoints of this node.
    let local: BTreeMap<(&str, &str), u16> =
        desired.endpoints.iter().map(|e| ((e.namespace.as_str(), e.name.as_str()), e.id)).collect();
    let mut pods: Vec<PodInfo> = desired
        .pods
        .iter()
        .map(|p| PodInfo {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            ip: p.ip,
            labels: p.labels.clone(),
            identity: p.identity,
            ports: p.ports.iter().map(|c| NamedPort { name: c.name.clone(), port: c.port, protocol: c.protocol }).collect(),
            endpoint_id: local.get(&(p.namespace.as_str(), p.name.as_str())).copied(),
        })
        .collect();
    // Local endpoints the source did not list as pods still get a verdict.
    for ep in &desired.endpoints {
        if !pods.iter().any(|p| p.endpoint_id == Some(ep.id)) {
            pods.push(PodInfo {
                namespace: ep.namespace.clone(),
                name: ep.name.clone(),
                ip: ep.ip,
                labels: ep.labels.clone(),
                identity: ep.identity,
                ports: Vec::new(),
                endpoint_id: Some(ep.id),
            });
        }
    }
    plan.policy = compile(&PolicyInput { namespaces: &desired.namespaces, pods: &pods, policies: &desired.policies });
    plan.services = plan_services(desired).map_err(invalid)?;
    for ep in desired.endpoints.iter() {
        let Some(info) = plan.endpoints.get_mut(&ep.ip.octets()) else { continue };
        if let Some(p) = plan.policy.endpoints.get(&ep.id) {
            if p.ingress_enforced {
                info.flags |= abi::EP_POLICY_INGRESS;
            }
            if p.egress_enforced {
                info.flags |= abi::EP_POLICY_EGRESS;
            }
        }
        if desired.policy_audit {
            info.flags |= abi::EP_POLICY_AUDIT;
        }
    }
    Ok(plan)
}

/// Applies `next` over `prev` (the plan currently in the maps).
///
/// Order matters for policy: entries that `next` adds or changes are
/// written before endpoints switch to them (enforcement flags), and entries
/// only `prev` had are removed last, so at every instant each lookup answers
/// as `prev` or as `next` would — traffic both allow is never dropped and
/// traffic both deny is never allowed. Established connections are decided
/// again (revision bump) only once the maps hold exactly `next`.
pub fn apply(probes: &mut Probes, node_netns: &Path, prev: &Plan, next: &Plan) -> Result<(), DatapathError> {
    for ((len, key), value) in &next.policy.policy {
        if prev.policy.policy.get(&(*len, *key)) != Some(value) {
            probes
                .policy
                .insert(&LpmKey::new(*len, *key), *value, 0)
                .map_err(|source| DatapathError::Map { map: abi::maps::POLICY, source })?;
        }
    }
    for ((len, key), value) in &next.policy.cidr {
        if prev.policy.cidr.get(&(*len, *key)) != Some(value) {
            probes
                .policy_cidr
                .insert(&LpmKey::new(*len, *key), *value, 0)
                .map_err(|source| DatapathError::Map { map: abi::maps::POLICY_CIDR, source })?;
        }
    }
    for ((len, addr), value) in &next.ipcache {
        if prev.ipcache.get(&(*len, *addr)) != Some(value) {
            probes
                .ipcache
                .insert(&LpmKey::new(*len, IpcacheKey { addr: *addr }), *value, 0)
                .map_err(|source| DatapathError::Map { map: abi::maps::IPCACHE, source })?;
        }
    }
    for (addr, info) in &next.endpoints {
        if prev.endpoints.get(addr) != Some(info) {
            probes
                .endpoints
                .insert(EndpointKey { addr: *addr }, *info, 0)
                .map_err(|source| DatapathError::Map { map: abi::maps::ENDPOINTS, source })?;
        }
    }
    for ino in next.netns.difference(&prev.netns) {
        probes
            .lab_netns
            .insert(*ino, 1, 0)
            .map_err(|source| DatapathError::Map { map: abi::maps::LAB_NETNS, source })?;
    }
    for ifname in &next.interfaces {
        probes.attach(node_netns, ifname)?;
    }
    // The tunnel: receive first, then send (the ipcache's endpoints are
    // written above, the device's index last).
    if next.tunnel != prev.tunnel {
        if let Some((dev, index)) = &next.tunnel {
            probes.attach_ingress(node_netns, dev)?;
            probes.set_tunnel_ifindex(*index)?;
        } else {
            probes.set_tunnel_ifindex(0)?;
        }
        if let Some((old, _)) = &prev.tunnel
            && next.tunnel.as_ref().is_none_or(|(dev, _)| dev != old)
        {
            probes.detach(old);
        }
    }
    // Backends before the counts that make them reachable.
    for pass_counts in [false, true] {
        for (key, value) in next.services.iter().filter(|(k, _)| (k.slot == 0) == pass_counts) {
            if prev.services.get(key) != Some(value) {
                probes
                    .services
                    .insert(*key, *value, 0)
                    .map_err(|source| DatapathError::Map { map: abi::maps::SERVICES, source })?;
            }
        }
    }

    // Removals.
    for ifname in prev.interfaces.difference(&next.interfaces) {
        probes.detach(ifname);
    }
    for addr in prev.endpoints.keys().filter(|a| !next.endpoints.contains_key(*a)) {
        let _ = probes.endpoints.remove(&EndpointKey { addr: *addr });
    }
    for (len, addr) in prev.ipcache.keys().filter(|k| !next.ipcache.contains_key(*k)) {
        let _ = probes.ipcache.remove(&LpmKey::new(*len, IpcacheKey { addr: *addr }));
    }
    for ino in prev.netns.difference(&next.netns) {
        let _ = probes.lab_netns.remove(ino);
    }
    // Counts of removed services first, then backends no count reaches.
    for pass_counts in [true, false] {
        for key in prev.services.keys().filter(|k| (k.slot == 0) == pass_counts && !next.services.contains_key(*k)) {
            let _ = probes.services.remove(key);
        }
    }
    for (len, key) in prev.policy.cidr.keys().filter(|k| !next.policy.cidr.contains_key(*k)) {
        let _ = probes.policy_cidr.remove(&LpmKey::new(*len, *key));
    }
    for (len, key) in prev.policy.policy.keys().filter(|k| !next.policy.policy.contains_key(*k)) {
        let _ = probes.policy.remove(&LpmKey::new(*len, *key));
    }
    let flags = |p: &Plan| p.endpoints.values().map(|e| (e.endpoint_id, e.flags)).collect::<BTreeMap<_, _>>();
    if prev.policy.policy != next.policy.policy || prev.policy.cidr != next.policy.cidr || flags(prev) != flags(next) {
        probes.bump_policy_revision()?;
    }
    Ok(())
}

/// What the maps hold now, as a plan: the starting point of a collector
/// that adopted a pinned datapath, so that its first `apply` writes only
/// what differs from the desired state (nothing, when nothing changed while
/// it was away: no policy revision bump, conntrack untouched). `node_netns`
/// is the node's own namespace inode, which the collector registers itself
/// and is not part of any plan. Only the map entries are read back; the
/// policy's names and selections come with the next desired state.
#[must_use]
pub fn current(probes: &Probes, node_netns: u32) -> Plan {
    let mut plan = Plan::default();
    for (key, info) in probes.endpoints.iter().filter_map(Result::ok) {
        plan.endpoints.insert(key.addr, info);
    }
    for (key, value) in probes.ipcache.iter().filter_map(Result::ok) {
        plan.ipcache.insert((key.prefix_len(), key.data().addr), value);
    }
    plan.tunnel = probes.tunnel();
    for ino in probes.lab_netns.keys().filter_map(Result::ok) {
        if ino != node_netns {
            plan.netns.insert(ino);
        }
    }
    plan.interfaces = probes.attached_interfaces().map(str::to_owned).collect();
    for (key, value) in probes.policy.iter().filter_map(Result::ok) {
        plan.policy.policy.insert((key.prefix_len(), key.data()), value);
    }
    for (key, value) in probes.policy_cidr.iter().filter_map(Result::ok) {
        plan.policy.cidr.insert((key.prefix_len(), key.data()), value);
    }
    for (key, value) in probes.services.iter().filter_map(Result::ok) {
        plan.services.insert(key, value);
    }
    plan
}

/// Enrichment metadata for a desired state.
#[must_use]
pub fn metadata(desired: &NodeState, plan: &Plan, base: &Metadata) -> Metadata {
    let mut meta = Metadata {
        node_name: desired.node_name.clone(),
        kernel_reasons: base.kernel_reasons.clone(),
        mono_to_unix_ns: base.mono_to_unix_ns,
        ..Metadata::default()
    };
    for id in &desired.identities {
        meta.identities.insert(id.id, id.labels.clone().into());
    }
    let labels_of = |identity: u32| meta.identities.get(&identity).cloned().unwrap_or_else(|| Arc::from(Vec::new()));
    let mut pods = crate::metadata::Map::default();
    for pod in &desired.pods {
        pods.insert(
            pod.ip,
            Arc::new(PodMeta {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                endpoint_id: 0,
                identity: pod.identity,
                labels: labels_of(pod.identity),
                node: pod.node.clone(),
            }),
        );
    }
    for ep in &desired.endpoints {
        pods.insert(
            ep.ip,
            Arc::new(PodMeta {
                namespace: ep.namespace.clone(),
                name: ep.name.clone(),
                endpoint_id: ep.id,
                identity: ep.identity,
                labels: labels_of(ep.identity),
                node: desired.node_name.clone(),
            }),
        );
        if let Some(info) = plan.endpoints.get(&ep.ip.octets()) {
            meta.interfaces.insert(info.ifindex, Arc::from(ep.host_ifname.as_str()));
        }
    }
    // Drops and traces on the tunnel device name it.
    if let Some((dev, index)) = &plan.tunnel {
        meta.interfaces.insert(*index, Arc::from(dev.as_str()));
    }
    meta.pods = pods;
    // Service ports by their numbers, named after the desired services.
    let mut names: BTreeMap<(Ipv4Addr, u16, u8), Arc<ServiceMeta>> = BTreeMap::new();
    for svc in &desired.services {
        let shared = Arc::new(ServiceMeta { namespace: svc.namespace.clone(), name: svc.name.clone() });
        for port in &svc.ports {
            let protocol = match port.protocol {
                Protocol::Tcp => abi::IPPROTO_TCP,
                Protocol::Udp => abi::IPPROTO_UDP,
                Protocol::Sctp => abi::IPPROTO_SCTP,
            };
            names.insert((svc.cluster_ip, port.port, protocol), Arc::clone(&shared));
        }
    }
    for (key, value) in plan.services.iter().filter(|(k, v)| k.slot == 0 && v.service_id != 0) {
        let addr = Ipv4Addr::from(key.addr);
        let Some(service) = names.get(&(addr, key.port, key.protocol)) else { continue };
        let frontend = Frontend { service: Arc::clone(service), addr, port: key.port, protocol: key.protocol };
        meta.services.insert(value.service_id, frontend);
        let by_addr = meta.frontends.entry((addr, key.port)).or_insert(value.service_id);
        if key.protocol == abi::IPPROTO_TCP {
            *by_addr = value.service_id;
        }
    }
    meta.policy_sets = plan.policy.policy_sets.iter().map(|(id, names)| (*id, Arc::from(names.as_slice()))).collect();
    for (id, p) in &plan.policy.endpoints {
        meta.selected_by.insert((*id, abi::DIR_INGRESS), Arc::from(p.ingress_selected_by.as_slice()));
        meta.selected_by.insert((*id, abi::DIR_EGRESS), Arc::from(p.egress_selected_by.as_slice()));
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Endpoint, IpcacheEntry};

    fn state() -> NodeState {
        NodeState {
            node_name: "node-1".into(),
            pod_cidr: "10.244.1.0/24".into(),
            node_ip: Ipv4Addr::new(10, 244, 1, 1),
            endpoints: vec![Endpoint {
                id: 1,
                namespace: "x".into(),
                name: "a".into(),
                ip: Ipv4Addr::new(10, 244, 1, 2),
                mac: "02:00:0a:f4:01:02".into(),
                host_ifname: "lxc00001".into(),
                host_mac: "06:00:0a:f4:01:02".into(),
                netns: "/run/netns/t.x.a".into(),
                identity: 256,
                labels: BTreeMap::new(),
            }],
            identities: vec![],
            ipcache: vec![IpcacheEntry { cidr: "10.244.2.0/24".into(), identity: abi::IDENTITY_REMOTE_NODE, tunnel_endpoint: None }],
            namespaces: BTreeMap::new(),
            pods: vec![],
            policies: vec![],
            services: vec![],
            policy_audit: false,
            tunnel: None,
        }
    }

    #[test]
    fn plans_endpoints_and_ipcache() {
        let p = plan(&state(), |_| Ok(7), |_| Ok(4026531840)).unwrap();
        let ep = p.endpoints[&[10, 244, 1, 2]];
        assert_eq!(ep.ifindex, 7);
        assert_eq!(ep.mac, [2, 0, 10, 244, 1, 2]);
        assert_eq!(p.ipcache[&(32, [10, 244, 1, 2])].identity, 256);
        assert_eq!(p.ipcache[&(32, [10, 244, 1, 1])].identity, abi::IDENTITY_HOST);
        assert_eq!(p.ipcache[&(24, [10, 244, 2, 0])].identity, abi::IDENTITY_REMOTE_NODE);
        assert!(p.netns.contains(&(4026531840u64 as u32)));
    }

    #[test]
    fn service_numbers_are_kept_across_plans() {
        let key = |last: u8, port: u16, slot: u16| ServiceKey {
            addr: [10, 96, 0, last],
            port,
            protocol: abi::IPPROTO_TCP,
            slot,
            ..ServiceKey::default()
        };
        let frontend = |entries: &mut BTreeMap<ServiceKey, ServiceValue>, last: u8, port: u16| {
            entries.insert(key(last, port, 0), ServiceValue { count: 1, ..ServiceValue::default() });
            entries.insert(key(last, port, 1), ServiceValue { addr: [10, 244, 1, last], port, ..ServiceValue::default() });
        };
        let id = |entries: &BTreeMap<ServiceKey, ServiceValue>, last: u8, port: u16| {
            let id = entries[&key(last, port, 0)].service_id;
            assert_eq!(entries[&key(last, port, 1)].service_id, id, "every slot carries the number");
            id
        };
        let mut first = BTreeMap::new();
        frontend(&mut first, 1, 80);
        frontend(&mut first, 2, 80);
        frontend(&mut first, 3, 80);
        number_services(&mut first, &BTreeMap::new()).unwrap();
        assert_eq!([id(&first, 1, 80), id(&first, 2, 80), id(&first, 3, 80)], [1, 2, 3]);

        // 10.96.0.1 goes, 10.96.0.0 comes (before the others in key order):
        // the others keep theirs, the new one gets a number nobody had.
        let mut second = BTreeMap::new();
        frontend(&mut second, 0, 80);
        frontend(&mut second, 2, 80);
        frontend(&mut second, 3, 80);
        number_services(&mut second, &first).unwrap();
        assert_eq!([id(&second, 0, 80), id(&second, 2, 80), id(&second, 3, 80)], [4, 2, 3]);

        // Through the plan: a plan renumbered over the plan in force keeps
        // the numbers in force.
        let mut next = Plan { services: second.clone(), ..Plan::default() };
        number_services(&mut next.services, &BTreeMap::new()).unwrap();
        assert_eq!(id(&next.services, 0, 80), 1);
        next.keep_service_numbers(&Plan { services: second.clone(), ..Plan::default() }).unwrap();
        assert_eq!(next.services, second);

        // Wrapping around: after 65535 comes the lowest free number.
        let mut prev = BTreeMap::new();
        frontend(&mut prev, 9, 80);
        prev.get_mut(&key(9, 80, 0)).unwrap().service_id = u16::MAX;
        frontend(&mut prev, 8, 80);
        prev.get_mut(&key(8, 80, 0)).unwrap().service_id = 1;
        let mut next = prev.clone();
        frontend(&mut next, 7, 80);
        number_services(&mut next, &prev).unwrap();
        assert_eq!([id(&next, 7, 80), id(&next, 8, 80), id(&next, 9, 80)], [2, 1, u16::MAX]);
    }

    #[test]
    fn plans_service_backends_from_selected_pods() {
        use crate::state::{ContainerPort, EndpointPort, Pod, Service, ServiceEndpoint, ServicePort, TargetPort};
        let pod = |ns: &str, name: &str, ip: [u8; 4], app: &str, named: Option<u16>| Pod {
            namespace: ns.into(),
            name: name.into(),
            ip: Ipv4Addr::from(ip),
            node: "node-1".into(),
            identity: 300,
            labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
            ports: named
                .map(|port| vec![ContainerPort { name: Some("http".into()), port, protocol: Protocol::Tcp }])
                .unwrap_or_default(),
        };
        let mut s = state();
        s.pods = vec![
            pod("x", "web-2", [10, 244, 1, 12], "web", Some(8080)),
            pod("x", "web-1", [10, 244, 1, 11], "web", Some(8081)),
            pod("x", "web-3", [10, 244, 1, 13], "web", None),
            pod("y", "web-9", [10, 244, 1, 19], "web", Some(8080)),
            pod("x", "db", [10, 244, 1, 20], "db", Some(8080)),
        ];
        let port = |name: &str, port: u16, protocol: Protocol, target_port: TargetPort| ServicePort {
            name: Some(name.to_owned()),
            port,
            protocol,
            target_port,
        };
        s.services = vec![Service {
            namespace: "x".into(),
            name: "web".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            selector: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
            ports: vec![
                port("http", 80, Protocol::Tcp, TargetPort::Name("http".into())),
                port("dns", 53, Protocol::Udp, TargetPort::Number(5353)),
                port("discard", 9, Protocol::Sctp, TargetPort::Number(9)),
            ],
            endpoints: None,
        }];
        let p = plan(&s, |_| Ok(7), |_| Ok(1)).unwrap();
        let key = |port: u16, protocol: u8, slot: u16| ServiceKey { addr: [10, 96, 0, 10], port, protocol, _pad: 0, slot, _pad2: [0; 2] };
        // Frontends are numbered in key order: 53/UDP is 1, 80/TCP is 2.
        let value = |addr: [u8; 4], port: u16, service_id: u16| ServiceValue { addr, port, service_id, ..ServiceValue::default() };
        let count = |count: u16, service_id: u16| ServiceValue { count, service_id, ..ServiceValue::default() };
        let expected = BTreeMap::from([
            // The named port resolves per pod; web-3 has no such port.
            (key(80, abi::IPPROTO_TCP, 0), count(2, 2)),
            (key(80, abi::IPPROTO_TCP, 1), value([10, 244, 1, 11], 8081, 2)),
            (key(80, abi::IPPROTO_TCP, 2), value([10, 244, 1, 12], 8080, 2)),
            // A numbered port: every selected pod of the namespace.
            (key(53, abi::IPPROTO_UDP, 0), count(3, 1)),
            (key(53, abi::IPPROTO_UDP, 1), value([10, 244, 1, 11], 5353, 1)),
            (key(53, abi::IPPROTO_UDP, 2), value([10, 244, 1, 12], 5353, 1)),
            (key(53, abi::IPPROTO_UDP, 3), value([10, 244, 1, 13], 5353, 1)),
        ]);
        assert_eq!(p.services, expected);

        // The metadata names each frontend by its number and by address.
        let meta = metadata(&s, &p, &Metadata::default());
        let web = &meta.services[&2];
        assert_eq!((web.service.namespace.as_str(), web.service.name.as_str()), ("x", "web"));
        assert_eq!((web.addr, web.port, web.protocol), (Ipv4Addr::new(10, 96, 0, 10), 80, abi::IPPROTO_TCP));
        assert!(Arc::ptr_eq(&meta.services[&1].service, &web.service), "one service, shared by its ports");
        assert_eq!(meta.frontends.get(&(Ipv4Addr::new(10, 96, 0, 10), 80)), Some(&2));
        assert_eq!(meta.frontends.get(&(Ipv4Addr::new(10, 96, 0, 10), 53)), Some(&1));
        assert_eq!(meta.frontends.len(), 2, "SCTP ports are not load-balanced: {:?}", meta.frontends);

        // EndpointSlices' endpoints win over the selector; a port is served
        // by the endpoints that list it by name.
        let mut sliced = s.clone();
        sliced.services[0].endpoints = Some(vec![ServiceEndpoint {
            ip: Ipv4Addr::new(10, 244, 2, 50),
            ports: vec![EndpointPort { name: Some("http".into()), port: 9000, protocol: Protocol::Tcp }],
        }]);
        let p = plan(&sliced, |_| Ok(7), |_| Ok(1)).unwrap();
        assert_eq!(p.services[&key(80, abi::IPPROTO_TCP, 0)].count, 1);
        assert_eq!(p.services[&key(80, abi::IPPROTO_TCP, 1)], value([10, 244, 2, 50], 9000, 2));
        assert_eq!(p.services[&key(53, abi::IPPROTO_UDP, 0)].count, 0, "no endpoint serves dns");

        // An empty selector selects nothing: the service drops.
        s.services[0].selector.clear();
        let p = plan(&s, |_| Ok(7), |_| Ok(1)).unwrap();
        assert_eq!(p.services.get(&key(80, abi::IPPROTO_TCP, 0)).map(|v| v.count), Some(0));
        assert_eq!(p.services.len(), 2);

        // Two services on one address and port are refused.
        let mut twice = s.services[0].clone();
        twice.name = "other".into();
        s.services.push(twice);
        assert!(matches!(plan(&s, |_| Ok(7), |_| Ok(1)), Err(DatapathError::Invalid(m)) if m.contains("service x/other")));
    }

    #[test]
    fn rejects_bad_state_before_writing() {
        let mut s = state();
        s.endpoints[0].mac = "zz".into();
        assert!(matches!(plan(&s, |_| Ok(7), |_| Ok(1)), Err(DatapathError::Invalid(m)) if m.contains("x/a")));
        let mut s = state();
        s.endpoints.push(s.endpoints[0].clone());
        assert!(plan(&s, |_| Ok(7), |_| Ok(1)).is_err());
        let mut s = state();
        s.endpoints[0].identity = 2;
        assert!(plan(&s, |_| Ok(7), |_| Ok(1)).is_err());
        let s = state();
        let err = plan(&s, |_| Err(std::io::Error::other("gone")), |_| Ok(1)).unwrap_err();
        assert!(err.to_string().contains("lxc00001"));
    }

    #[test]
    fn parses_cidrs() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap(), (Ipv4Addr::new(10, 0, 0, 0), 8));
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap(), (Ipv4Addr::UNSPECIFIED, 0));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
    }
}
