//! Endpoints the CNI plugin registers (`endpoint_add`, `endpoint_del` on the
//! control socket): how a pod is plumbed, without its identity or labels.
//!
//! A state source that knows pods but not their plumbing (the Kubernetes
//! source) sends `NodeState.pods` with no `endpoints`; [`merge`] gives each
//! pod of this node that has no endpoint in the state but has a
//! registration (same namespace and name) an endpoint built from the
//! registration, with the pod's identity and labels. Endpoints the source
//! sends (the lab) stay authoritative. Registered endpoints get ids from
//! the top of the range down ([`FIRST_ID`]), kept for as long as the
//! registration lives. Registrations live in memory: a restarted collector
//! knows none until the plugin registers again (the lab sends full
//! endpoints, so the lab does not depend on them).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::state::{Endpoint, NodeState};

/// The first id given to a registered endpoint; later ones count down.
pub const FIRST_ID: u16 = u16::MAX;

/// What `endpoint_add` carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub container_id: String,
    pub ifname: String,
    /// The pod's namespace and name (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub host_ifname: String,
    pub host_mac: String,
    pub netns: PathBuf,
}

/// A registration and the endpoint id it was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub id: u16,
    #[serde(flatten)]
    pub registration: Registration,
}

/// The registrations of one collector, by container id and interface.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    by_key: BTreeMap<(String, String), Registered>,
}

impl Registry {
    /// Adds or replaces a registration; the same container and interface
    /// keep their id. `None` when every id is taken.
    pub fn add(&mut self, r: Registration) -> Option<u16> {
        let key = (r.container_id.clone(), r.ifname.clone());
        let id = match self.by_key.get(&key) {
            Some(old) => old.id,
            None => (1..=FIRST_ID).rev().find(|id| !self.by_key.values().any(|x| x.id == *id))?,
        };
        self.by_key.insert(key, Registered { id, registration: r });
        Some(id)
    }

    /// Removes a registration; whether there was one.
    pub fn remove(&mut self, container_id: &str, ifname: &str) -> bool {
        self.by_key.remove(&(container_id.to_owned(), ifname.to_owned())).is_some()
    }

    /// Every registration, by container id and interface.
    pub fn iter(&self) -> impl Iterator<Item = &Registered> {
        self.by_key.values()
    }
}

/// `state` with an endpoint for each pod of this node that has none but a
/// registration; a registration whose id an endpoint of `state` uses is
/// left out (the source's endpoints win).
#[must_use]
pub fn merge(state: &NodeState, registry: &Registry) -> NodeState {
    let mut out = state.clone();
    for pod in state.pods.iter().filter(|p| p.node == state.node_name) {
        if state.endpoints.iter().any(|e| e.namespace == pod.namespace && e.name == pod.name) {
            continue;
        }
        let Some(reg) = registry.iter().find(|r| r.registration.namespace == pod.namespace && r.registration.name == pod.name) else {
            continue;
        };
        if out.endpoints.iter().any(|e| e.id == reg.id || e.host_ifname == reg.registration.host_ifname) {
            log::warn!("registered endpoint {} of {}/{} collides with an endpoint of the state; left out", reg.id, pod.namespace, pod.name);
            continue;
        }
        let r = &reg.registration;
        out.endpoints.push(Endpoint {
            id: reg.id,
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            ip: r.ip,
            mac: r.mac.clone(),
            host_ifname: r.host_ifname.clone(),
            host_mac: r.host_mac.clone(),
            netns: r.netns.clone(),
            identity: pod.identity,
            labels: pod.labels.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Pod;

    fn reg(c: &str, ns: &str, name: &str, ip: [u8; 4]) -> Registration {
        Registration {
            container_id: c.into(),
            ifname: "eth0".into(),
            namespace: ns.into(),
            name: name.into(),
            ip: ip.into(),
            mac: "02:00:0a:f4:01:05".into(),
            host_ifname: format!("lxc{c:0>12}"),
            host_mac: "06:00:0a:f4:01:05".into(),
            netns: format!("/run/netns/lab.{ns}.{name}").into(),
        }
    }

    fn pod(ns: &str, name: &str, node: &str, ip: [u8; 4]) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            ip: ip.into(),
            node: node.into(),
            identity: 300,
            labels: [("app".to_owned(), name.to_owned())].into(),
            ports: vec![],
        }
    }

    #[test]
    fn ids_are_allocated_from_the_top_and_stay() {
        let mut r = Registry::default();
        assert_eq!(r.add(reg("a", "x", "a", [10, 244, 1, 5])), Some(65535));
        assert_eq!(r.add(reg("b", "x", "b", [10, 244, 1, 6])), Some(65534));
        assert_eq!(r.add(reg("a", "x", "a", [10, 244, 1, 5])), Some(65535));
        assert!(r.remove("a", "eth0"));
        assert!(!r.remove("a", "eth0"));
        assert_eq!(r.add(reg("c", "x", "c", [10, 244, 1, 7])), Some(65535));
        assert_eq!(r.iter().count(), 2);
    }

    #[test]
    fn pods_without_endpoints_get_their_registration_and_the_source_wins() {
        let mut r = Registry::default();
        r.add(reg("a", "x", "a", [10, 244, 1, 5]));
        r.add(reg("b", "x", "b", [10, 244, 1, 6]));
        r.add(reg("c", "x", "c", [10, 244, 1, 7]));
        let mut state = NodeState {
            pods: vec![pod("x", "a", "node-1", [10, 244, 1, 5]), pod("x", "b", "node-1", [10, 244, 1, 6]), pod("x", "c", "node-2", [10, 244, 2, 7]), pod("x", "d", "node-1", [10, 244, 1, 8])],
            ..NodeState::empty("node-1", "10.244.1.0/24", [10, 244, 1, 1].into())
        };
        // The source gives b's endpoint itself.
        let mut b = merge(&state, &Registry::default()).endpoints;
        assert!(b.is_empty());
        let mut r_b = Registry::default();
        r_b.add(reg("b", "x", "b", [10, 244, 1, 6]));
        b = merge(&{ let mut s = state.clone(); s.pods.truncate(2); s }, &r_b).endpoints;
        assert_eq!(b.len(), 1);
        state.endpoints.push(Endpoint { id: 1, ..b[0].clone() });
        let merged = merge(&state, &r);
        let names: Vec<(&str, u16)> = merged.endpoints.iter().map(|e| (e.name.as_str(), e.id)).collect();
        // b from the source (id 1), a from its registration; c is another
        // node's pod, d has no registration.
        assert_eq!(names, [("b", 1), ("a", 65535)]);
        let a = &merged.endpoints[1];
        assert_eq!((a.identity, a.labels["app"].as_str(), a.ip), (300, "a", Ipv4Addr::new(10, 244, 1, 5)));
        assert_eq!(a.netns, PathBuf::from("/run/netns/lab.x.a"));
    }
}
