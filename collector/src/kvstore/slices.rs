//! Endpoint slices: a node's local endpoints grouped by namespace and
//! security identity, at most [`MAX_PER_SLICE`] to a slice, as Cilium's
//! CiliumEndpointSlices. Everything here is pure (no etcd): the slicer that
//! keeps each endpoint in the slice it was put in, the difference between
//! what was written and what should be, and the remote endpoints a node
//! reads from everyone else's slices.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::state::{ContainerPort, NodeState};

/// Cilium's default: at most 100 endpoints in one slice.
pub const MAX_PER_SLICE: usize = 100;

/// Where slices live in etcd: `PREFIX<slice name>`.
pub const PREFIX: &str = "/sightline/endpointslices/";

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceEndpoint {
    /// The pod's name (its namespace is the slice's).
    pub name: String,
    pub ip: Ipv4Addr,
    /// Named container ports (unnamed ones are not published).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<ContainerPort>,
    /// When the publishing node first saw the endpoint as it is now (Unix
    /// time, ns): a new pod, a new address or a new identity. Receivers
    /// measure propagation from it.
    pub created_unix_ns: i64,
}

/// A slice: endpoints of one node, one namespace and one identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSlice {
    pub name: String,
    /// The node that owns (publishes, updates and deletes) the slice.
    pub node: String,
    pub namespace: String,
    pub identity: u32,
    pub endpoints: Vec<SliceEndpoint>,
}

impl EndpointSlice {
    /// Its etcd key.
    #[must_use]
    pub fn key(&self) -> String {
        key(&self.name)
    }
}

/// The etcd key of slice `name`.
#[must_use]
pub fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// A slice's name: stable and unique in the cluster (node, namespace,
/// identity and the slice's index within that group).
#[must_use]
pub fn slice_name(node: &str, namespace: &str, identity: u32, index: usize) -> String {
    format!("ces-{node}-{namespace}-{identity}-{index}")
}

/// An endpoint this node runs, as it is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub identity: u32,
    pub named_ports: Vec<ContainerPort>,
}

/// The endpoints of `state` that its node publishes: its own pods, with
/// their named ports (from the cluster's pod list).
#[must_use]
pub fn local_endpoints(state: &NodeState) -> Vec<LocalEndpoint> {
    state
        .endpoints
        .iter()
        .map(|e| LocalEndpoint {
            namespace: e.namespace.clone(),
            name: e.name.clone(),
            ip: e.ip,
            identity: e.identity,
            named_ports: state
                .pods
                .iter()
                .find(|p| p.namespace == e.namespace && p.name == e.name)
                .map(|p| p.ports.iter().filter(|c| c.name.is_some()).cloned().collect())
                .unwrap_or_default(),
        })
        .collect()
}

/// A node's slices, kept across updates: an endpoint stays in the slice it
/// was put in while its namespace and identity stay the same, so one new
/// pod rewrites one slice, not every slice after it.
#[derive(Clone, Debug)]
pub struct Slicer {
    node: String,
    max: usize,
    slices: BTreeMap<String, EndpointSlice>,
}

impl Slicer {
    #[must_use]
    pub fn new(node: &str) -> Self {
        Self::with_max(node, MAX_PER_SLICE)
    }

    /// A slicer with another slice size (tests).
    #[must_use]
    pub fn with_max(node: &str, max: usize) -> Self {
        Self { node: node.to_owned(), max: max.max(1), slices: BTreeMap::new() }
    }

    /// The slices as they should be in the kvstore.
    #[must_use]
    pub fn slices(&self) -> &BTreeMap<String, EndpointSlice> {
        &self.slices
    }

    /// Starts from slices this node published before (a restarted
    /// collector): their names and stamps are kept where nothing changed.
    /// Slices of other nodes are ignored.
    pub fn seed(&mut self, slices: impl IntoIterator<Item = EndpointSlice>) {
        for s in slices {
            if s.node == self.node && !s.endpoints.is_empty() {
                self.slices.insert(s.name.clone(), s);
            }
        }
    }

    /// Brings the slices in line with `endpoints`; `now_ns` stamps what is
    /// new or changed.
    pub fn update(&mut self, endpoints: &[LocalEndpoint], now_ns: i64) {
        let wanted: BTreeMap<(&str, &str), &LocalEndpoint> =
            endpoints.iter().map(|e| ((e.namespace.as_str(), e.name.as_str()), e)).collect();
        let mut placed: BTreeSet<(String, String)> = BTreeSet::new();
        // Keep what stays in its group; update it in place.
        for slice in self.slices.values_mut() {
            slice.endpoints.retain_mut(|entry| {
                let Some(e) = wanted.get(&(slice.namespace.as_str(), entry.name.as_str())) else { return false };
                if e.identity != slice.identity || placed.contains(&(e.namespace.clone(), e.name.clone())) {
                    return false;
                }
                if entry.ip != e.ip {
                    entry.ip = e.ip;
                    entry.created_unix_ns = now_ns;
                }
                if entry.named_ports != e.named_ports {
                    entry.named_ports.clone_from(&e.named_ports);
                }
                placed.insert((e.namespace.clone(), e.name.clone()));
                true
            });
        }
        self.slices.retain(|_, s| !s.endpoints.is_empty());
        // Place the rest: the first slice of its group with room, else a
        // new one at the lowest free index.
        for e in endpoints {
            if placed.contains(&(e.namespace.clone(), e.name.clone())) {
                continue;
            }
            let entry = SliceEndpoint {
                name: e.name.clone(),
                ip: e.ip,
                named_ports: e.named_ports.clone(),
                created_unix_ns: now_ns,
            };
            let mut index = 0;
            loop {
                let name = slice_name(&self.node, &e.namespace, e.identity, index);
                match self.slices.get_mut(&name) {
                    Some(s) if s.endpoints.len() < self.max => {
                        s.endpoints.push(entry);
                        break;
                    }
                    Some(_) => index += 1,
                    None => {
                        self.slices.insert(
                            name.clone(),
                            EndpointSlice {
                                name,
                                node: self.node.clone(),
                                namespace: e.namespace.clone(),
                                identity: e.identity,
                                endpoints: vec![entry],
                            },
                        );
                        break;
                    }
                }
            }
            placed.insert((e.namespace.clone(), e.name.clone()));
        }
        for s in self.slices.values_mut() {
            s.endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
}

/// What to write to make `written` into `desired`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Slices new or changed.
    pub puts: Vec<EndpointSlice>,
    /// Names of slices no longer needed.
    pub deletes: Vec<String>,
}

impl Changes {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// The slices that differ between `written` and `desired`.
#[must_use]
pub fn diff(written: &BTreeMap<String, EndpointSlice>, desired: &BTreeMap<String, EndpointSlice>) -> Changes {
    Changes {
        puts: desired.values().filter(|s| written.get(&s.name) != Some(*s)).cloned().collect(),
        deletes: written.keys().filter(|n| !desired.contains_key(*n)).cloned().collect(),
    }
}

/// An endpoint of another node, as the slices tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub identity: u32,
    pub created_unix_ns: i64,
}

/// Remote endpoints by address.
pub type RemoteEndpoints = BTreeMap<Ipv4Addr, RemoteEndpoint>;

/// The endpoints of every slice not owned by `me`, by address. An address
/// in two slices (a pod moved and the old slice is not gone yet) goes to
/// the entry created last.
#[must_use]
pub fn remote_endpoints<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>, me: &str) -> RemoteEndpoints {
    let mut out: RemoteEndpoints = BTreeMap::new();
    for s in slices.into_iter().filter(|s| s.node != me) {
        for e in &s.endpoints {
            let r = RemoteEndpoint {
                namespace: s.namespace.clone(),
                name: e.name.clone(),
                node: s.node.clone(),
                identity: s.identity,
                created_unix_ns: e.created_unix_ns,
            };
            match out.get(&e.ip) {
                Some(old) if old.created_unix_ns > r.created_unix_ns => {}
                _ => {
                    out.insert(e.ip, r);
                }
            }
        }
    }
    out
}

/// The effective desired state of a node: what its state source sent (the
/// per-endpoint path) and, for other nodes' pods that it did not name,
/// an ipcache entry from the slices. The one place the two paths meet: the
/// source's entries win where both name an address, and a slice never
/// names this node's own pods.
#[must_use]
pub fn effective_state(source: &NodeState, remote: &RemoteEndpoints) -> NodeState {
    let mut state = source.clone();
    if remote.is_empty() {
        return state;
    }
    let mut known: BTreeSet<Ipv4Addr> = source.endpoints.iter().map(|e| e.ip).collect();
    for entry in &source.ipcache {
        if let Ok((addr, 32)) = crate::datapath::parse_cidr(&entry.cidr) {
            known.insert(addr);
        }
    }
    known.insert(source.node_ip);
    // Tunnel routing: a pod learnt from a slice goes through the tunnel to
    // the node its prefix lives behind (the source's pod-block entries).
    let tunnels: Vec<(u32, u32, Ipv4Addr)> = source
        .ipcache
        .iter()
        .filter_map(|e| {
            let (addr, len) = crate::datapath::parse_cidr(&e.cidr).ok()?;
            Some((u32::from(addr), len, e.tunnel_endpoint?))
        })
        .collect();
    let tunnel_for = |ip: Ipv4Addr| {
        tunnels
            .iter()
            .filter(|(addr, len, _)| *len == 0 || (u32::from(ip) >> (32 - len)) == (addr >> (32 - len)))
            .max_by_key(|(_, len, _)| *len)
            .map(|(_, _, endpoint)| *endpoint)
    };
    for (ip, r) in remote {
        if r.node == source.node_name || known.contains(ip) {
            continue;
        }
        state.ipcache.push(crate::state::IpcacheEntry {
            cidr: format!("{ip}/32"),
            identity: r.identity,
            tunnel_endpoint: tunnel_for(*ip),
        });
    }
    state
}

/// How many endpoints of `remote` the effective state takes from slices
/// (those the source did not name).
#[must_use]
pub fn from_slices(source: &NodeState, effective: &NodeState) -> usize {
    effective.ipcache.len().saturating_sub(source.ipcache.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Protocol;

    fn ep(ns: &str, name: &str, i: u32, identity: u32) -> LocalEndpoint {
        LocalEndpoint {
            namespace: ns.into(),
            name: name.into(),
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + i),
            identity,
            named_ports: Vec::new(),
        }
    }

    fn count(s: &Slicer) -> BTreeMap<(String, String), usize> {
        let mut seen = BTreeMap::new();
        for slice in s.slices().values() {
            for e in &slice.endpoints {
                *seen.entry((slice.namespace.clone(), e.name.clone())).or_insert(0) += 1;
            }
        }
        seen
    }

    #[test]
    fn every_endpoint_is_in_exactly_one_slice_of_at_most_100() {
        let mut eps = Vec::new();
        for i in 0..1234u32 {
            let ns = ["x", "y", "z"][(i % 3) as usize];
            eps.push(ep(ns, &format!("p{i}"), i, 256 + i % 7));
        }
        let mut s = Slicer::new("node-1");
        s.update(&eps, 1);
        let seen = count(&s);
        assert_eq!(seen.len(), eps.len());
        assert!(seen.values().all(|n| *n == 1));
        for slice in s.slices().values() {
            assert!(!slice.endpoints.is_empty() && slice.endpoints.len() <= MAX_PER_SLICE, "{}", slice.name);
            assert_eq!(slice.node, "node-1");
            for e in &slice.endpoints {
                let src = eps.iter().find(|x| x.name == e.name).unwrap();
                assert_eq!((src.namespace.as_str(), src.identity), (slice.namespace.as_str(), slice.identity), "grouped by namespace and identity");
            }
        }
        // 21 groups (3 namespaces × 7 identities, each ~58 pods): one slice each.
        assert_eq!(s.slices().len(), 21);
        // A group of 250 takes three slices.
        let big: Vec<_> = (0..250).map(|i| ep("big", &format!("b{i}"), 5000 + i, 300)).collect();
        let mut s = Slicer::new("node-1");
        s.update(&big, 1);
        let sizes: Vec<usize> = s.slices().values().map(|x| x.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    #[test]
    fn one_new_pod_rewrites_one_slice() {
        let mut eps: Vec<_> = (0..250).map(|i| ep("x", &format!("p{i:03}"), i, 300)).collect();
        let mut s = Slicer::new("node-1");
        s.update(&eps, 1);
        let before = s.slices().clone();
        // A name sorting first: a stable assignment changes only the slice it goes to.
        eps.push(ep("x", "a-new", 999, 300));
        s.update(&eps, 2);
        let changes = diff(&before, s.slices());
        assert_eq!(changes.puts.len(), 1, "{changes:?}");
        assert!(changes.deletes.is_empty());
        assert_eq!(changes.puts[0].endpoints.iter().find(|e| e.name == "a-new").unwrap().created_unix_ns, 2);
        // Unchanged input: nothing to write.
        let now = s.slices().clone();
        s.update(&eps, 3);
        assert!(diff(&now, s.slices()).is_empty());
    }

    #[test]
    fn a_restarted_node_keeps_its_slices() {
        let eps: Vec<_> = (0..150).map(|i| ep("x", &format!("p{i:03}"), i, 300)).collect();
        let mut first = Slicer::new("node-1");
        first.update(&eps, 1);
        let mut again = Slicer::new("node-1");
        again.seed(first.slices().values().cloned());
        again.seed(Slicer::new("node-2").slices().values().cloned());
        again.update(&eps, 2);
        assert!(diff(first.slices(), again.slices()).is_empty(), "same endpoints, same slices and stamps");
    }

    #[test]
    fn deletion_and_identity_change() {
        let mut s = Slicer::with_max("node-2", 2);
        let eps = vec![ep("x", "a", 1, 300), ep("x", "b", 2, 300), ep("x", "c", 3, 300)];
        s.update(&eps, 1);
        let names: Vec<&String> = s.slices().keys().collect();
        assert_eq!(names, ["ces-node-2-x-300-0", "ces-node-2-x-300-1"]);
        let before = s.slices().clone();
        // c leaves: its slice goes.
        s.update(&eps[..2], 2);
        let changes = diff(&before, s.slices());
        assert_eq!(changes.deletes, ["ces-node-2-x-300-1"]);
        assert!(changes.puts.is_empty());
        // b's labels change (identity 301): it moves, stamped anew.
        let before = s.slices().clone();
        s.update(&[ep("x", "a", 1, 300), ep("x", "b", 2, 301)], 3);
        let changes = diff(&before, s.slices());
        assert_eq!(changes.puts.len(), 2);
        let moved = &s.slices()["ces-node-2-x-301-0"];
        assert_eq!(moved.endpoints[0].name, "b");
        assert_eq!(moved.endpoints[0].created_unix_ns, 3);
        assert_eq!(count(&s).len(), 2);
        // Everything goes: every slice deleted.
        let before = s.slices().clone();
        s.update(&[], 4);
        assert!(s.slices().is_empty());
        assert_eq!(diff(&before, s.slices()).deletes.len(), 2);
    }

    #[test]
    fn remote_view_and_merge() {
        let mut n1 = Slicer::new("node-1");
        n1.update(&[ep("x", "a", 1, 300)], 10);
        let mut n2 = Slicer::new("node-2");
        let mut b = ep("x", "b", 2, 301);
        b.named_ports = vec![ContainerPort { name: Some("http".into()), port: 80, protocol: Protocol::Tcp }];
        n2.update(&[b, ep("x", "c", 3, 300)], 20);
        let all: Vec<EndpointSlice> = n1.slices().values().chain(n2.slices().values()).cloned().collect();
        let remote = remote_endpoints(&all, "node-1");
        assert_eq!(remote.len(), 2, "node-1 does not read its own slices");
        assert_eq!(remote[&Ipv4Addr::new(10, 244, 0, 2)].identity, 301);

        let source = NodeState {
            node_name: "node-1".into(),
            pod_cidr: "10.244.1.0/24".into(),
            node_ip: Ipv4Addr::new(10, 244, 1, 1),
            endpoints: Vec::new(),
            identities: Vec::new(),
            // The per-endpoint path names c with another identity: it wins.
            ipcache: vec![crate::state::IpcacheEntry { cidr: "10.244.0.3/32".into(), identity: 999, tunnel_endpoint: None }],
            namespaces: BTreeMap::new(),
            pods: Vec::new(),
            policies: Vec::new(),
            services: Vec::new(),
            policy_audit: false,
            tunnel: None,
        };
        let eff = effective_state(&source, &remote);
        assert_eq!(
            eff.ipcache,
            vec![
                crate::state::IpcacheEntry { cidr: "10.244.0.3/32".into(), identity: 999, tunnel_endpoint: None },
                crate::state::IpcacheEntry { cidr: "10.244.0.2/32".into(), identity: 301, tunnel_endpoint: None },
            ]
        );
        assert_eq!(from_slices(&source, &eff), 1);
        assert_eq!(effective_state(&source, &RemoteEndpoints::new()), source);
        // With a tunnel, a pod from a slice goes to the node its block lives behind.
        let mut tunnelled = source.clone();
        tunnelled.tunnel = Some("sl_vxlan".into());
        tunnelled.ipcache.push(crate::state::IpcacheEntry {
            cidr: "10.244.0.0/24".into(),
            identity: sightline_abi::IDENTITY_WORLD,
            tunnel_endpoint: Some(Ipv4Addr::new(10, 243, 0, 2)),
        });
        let eff = effective_state(&tunnelled, &remote);
        let b = eff.ipcache.iter().find(|e| e.cidr == "10.244.0.2/32").expect("b from its slice");
        assert_eq!(b.tunnel_endpoint, Some(Ipv4Addr::new(10, 243, 0, 2)));
        // An address in two slices: the newer entry wins.
        let mut moved = Slicer::new("node-3");
        moved.update(&[ep("x", "b2", 2, 302)], 30);
        let all: Vec<EndpointSlice> = all.into_iter().chain(moved.slices().values().cloned()).collect();
        assert_eq!(remote_endpoints(&all, "node-1")[&Ipv4Addr::new(10, 244, 0, 2)].identity, 302);
    }

    #[test]
    fn slices_round_trip_as_json() {
        let mut s = Slicer::new("node-1");
        s.update(&[ep("x", "a", 1, 300)], 10);
        let slice = s.slices().values().next().unwrap();
        let text = serde_json::to_string(slice).unwrap();
        assert_eq!(serde_json::from_str::<EndpointSlice>(&text).unwrap(), *slice);
        assert_eq!(slice.key(), "/sightline/endpointslices/ces-node-1-x-300-0");
    }
}
