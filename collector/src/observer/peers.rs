//! What `peer.Peer/Notify` announces: the cluster's collectors, by node
//! name, with the address of their gRPC API.
//!
//! A collector without a cluster view (the lab, the control socket) knows
//! only itself. With the Kubernetes source it knows every Node: each node's
//! collector is announced at the node's `InternalIP` and this collector's
//! own port (the agents of a DaemonSet all listen on the same one). A
//! relay started with `--peer-service` follows this directory.
//!
//! The stream replays the directory as `PEER_ADDED`, then sends the
//! differences as they happen (`PEER_ADDED`, `PEER_UPDATED`,
//! `PEER_DELETED`), as Hubble's Peer service does.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use sightline_proto::peer::{ChangeNotification, ChangeNotificationType, Tls};

/// One collector as announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    /// `host:port` of its gRPC API.
    pub address: String,
    /// The name its certificate carries, when it serves TLS.
    pub tls_server_name: Option<String>,
}

/// Node name → its collector.
pub type Directory = BTreeMap<String, Announced>;

/// The name a collector's certificate carries (Hubble's).
pub use sightline_tls::hubble_server_name as tls_server_name;

/// The directory of a cluster whose nodes have these addresses, every
/// collector listening on `port` (with TLS when `tls`).
#[must_use]
pub fn from_nodes(nodes: &BTreeMap<String, IpAddr>, port: u16, tls: bool, cluster: &str) -> Directory {
    nodes
        .iter()
        .map(|(name, ip)| {
            let announced = Announced {
                address: SocketAddr::new(*ip, port).to_string(),
                tls_server_name: tls.then(|| tls_server_name(name, cluster)),
            };
            (name.clone(), announced)
        })
        .collect()
}

fn notification(name: &str, peer: &Announced, kind: ChangeNotificationType) -> ChangeNotification {
    ChangeNotification {
        name: name.to_owned(),
        address: peer.address.clone(),
        r#type: kind as i32,
        tls: peer.tls_server_name.as_ref().map(|server_name| Tls { server_name: server_name.clone() }),
    }
}

/// Every collector of `directory` as `PEER_ADDED` (what a new subscriber
/// hears first).
#[must_use]
pub fn replay(directory: &Directory) -> Vec<ChangeNotification> {
    directory.iter().map(|(name, p)| notification(name, p, ChangeNotificationType::PeerAdded)).collect()
}

/// What changed from `old` to `new`: removals first, then additions and
/// updates, each in name order.
#[must_use]
pub fn changes(old: &Directory, new: &Directory) -> Vec<ChangeNotification> {
    let mut out: Vec<ChangeNotification> = old
        .iter()
        .filter(|(name, _)| !new.contains_key(*name))
        .map(|(name, p)| notification(name, p, ChangeNotificationType::PeerDeleted))
        .collect();
    for (name, p) in new {
        match old.get(name) {
            None => out.push(notification(name, p, ChangeNotificationType::PeerAdded)),
            Some(before) if before != p => out.push(notification(name, p, ChangeNotificationType::PeerUpdated)),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(entries: &[(&str, &str)]) -> Directory {
        entries
            .iter()
            .map(|(n, a)| ((*n).to_owned(), Announced { address: (*a).to_owned(), tls_server_name: None }))
            .collect()
    }

    fn summary(notes: &[ChangeNotification]) -> Vec<(String, String, i32)> {
        notes.iter().map(|n| (n.name.clone(), n.address.clone(), n.r#type)).collect()
    }

    #[test]
    fn a_subscriber_first_hears_every_collector_as_added() {
        let d = dir(&[("node-2", "10.0.0.2:4244"), ("node-1", "10.0.0.1:4244")]);
        let added = ChangeNotificationType::PeerAdded as i32;
        assert_eq!(
            summary(&replay(&d)),
            vec![("node-1".into(), "10.0.0.1:4244".into(), added), ("node-2".into(), "10.0.0.2:4244".into(), added)]
        );
        assert!(replay(&Directory::new()).is_empty());
    }

    #[test]
    fn changes_name_what_was_added_updated_and_deleted() {
        let old = dir(&[("a", "10.0.0.1:4244"), ("b", "10.0.0.2:4244"), ("c", "10.0.0.3:4244")]);
        let new = dir(&[("a", "10.0.0.1:4244"), ("c", "10.0.0.30:4244"), ("d", "10.0.0.4:4244")]);
        assert_eq!(
            summary(&changes(&old, &new)),
            vec![
                ("b".into(), "10.0.0.2:4244".into(), ChangeNotificationType::PeerDeleted as i32),
                ("c".into(), "10.0.0.30:4244".into(), ChangeNotificationType::PeerUpdated as i32),
                ("d".into(), "10.0.0.4:4244".into(), ChangeNotificationType::PeerAdded as i32),
            ]
        );
        assert!(changes(&new, &new).is_empty());
    }

    #[test]
    fn nodes_are_announced_on_the_collectors_port_with_their_certificate_name() {
        let nodes: BTreeMap<String, IpAddr> =
            [("aks-1".to_owned(), "10.224.0.4".parse().unwrap()), ("aks-2".to_owned(), "fd00::5".parse().unwrap())].into();
        let d = from_nodes(&nodes, 4244, true, "prod");
        assert_eq!(d["aks-1"].address, "10.224.0.4:4244");
        assert_eq!(d["aks-2"].address, "[fd00::5]:4244");
        assert_eq!(d["aks-1"].tls_server_name.as_deref(), Some("aks-1.prod.hubble-grpc.cilium.io"));
        let note = &replay(&d)[0];
        assert_eq!(note.tls.as_ref().map(|t| t.server_name.as_str()), Some("aks-1.prod.hubble-grpc.cilium.io"));
        let plain = from_nodes(&nodes, 4244, false, "prod");
        assert!(replay(&plain).iter().all(|n| n.tls.is_none()));
        assert_eq!(tls_server_name("prod/aks-1", "prod"), "aks-1.prod.hubble-grpc.cilium.io");
    }
}
