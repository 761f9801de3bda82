//! On a Kubernetes node the agent writes the node's CNI configuration
//! (`--cni-conf FILE`, e.g. `/etc/cni/net.d/05-sightline.conflist`) from
//! its Node object, once the source has built a state and after every
//! change of the node's range: the container runtime finds the plugin
//! through it. The node stays without a CNI configuration (and so
//! `NotReady`) until the agent has its Node's `spec.podCIDR` and has
//! applied a state: pods are never plugged in before the datapath is.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use sightline_cni::conflist::{self, NodeConf};

use crate::state::NodeState;

/// Where the plugin keeps its address store on a node, unless configured.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/sightline/cni";
/// The pods' MTU unless configured (the plugin's default).
pub const DEFAULT_MTU: u32 = 1500;
/// What a tunnel's encapsulation takes from the pods' MTU (VXLAN and
/// Geneve over IPv4 without options).
pub const TUNNEL_OVERHEAD: u32 = 50;

/// Where and how the agent writes its node's conflist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniConfig {
    /// The conflist to write.
    pub path: PathBuf,
    /// The collector's control socket, as the plugin (on the node) sees it.
    pub control_socket: PathBuf,
    /// The plugin's address store (`ipam.dataDir`).
    pub data_dir: PathBuf,
    /// The node's MTU (the pods get it less a tunnel's overhead).
    pub mtu: u32,
    /// The node's network namespace, where the pods' gateway address is
    /// given to `lo` (`crate::gateway`); `None`: left to someone else.
    pub gateway_netns: Option<PathBuf>,
}

/// The plugin's configuration for the node `state` describes: its pod
/// range (less its network and broadcast addresses), its address as the
/// gateway, the collector's control socket.
///
/// # Errors
///
/// A node whose `pod_cidr` is not an IPv4 range.
pub fn node_conf(state: &NodeState, cfg: &CniConfig) -> Result<NodeConf, String> {
    let range: Ipv4Net = state
        .pod_cidr
        .parse()
        .map_err(|e| format!("node {}: pod range {:?}: {e}", state.node_name, state.pod_cidr))?;
    let range = range.trunc();
    let exclude = [range.network(), range.broadcast()]
        .into_iter()
        .filter(|_| range.prefix_len() < 31)
        .map(|ip: Ipv4Addr| Ipv4Net::new(ip, 32).expect("a /32"))
        .collect();
    let mtu = if state.tunnel.is_some() { cfg.mtu.saturating_sub(TUNNEL_OVERHEAD) } else { cfg.mtu };
    Ok(NodeConf {
        gateway: state.node_ip,
        mtu,
        control_socket: Some(cfg.control_socket.clone()),
        ranges: vec![range],
        exclude,
        data_dir: cfg.data_dir.clone(),
    })
}

/// Writes the conflist for `state` when it differs from the one on disk;
/// whether it was written.
///
/// # Errors
///
/// What could not be built or written, naming the file.
pub fn write(state: &NodeState, cfg: &CniConfig) -> Result<bool, String> {
    let conf = node_conf(state, cfg)?;
    let list = conflist::render(&conf).expect("one range");
    conflist::write(&cfg.path, &list).map_err(|e| format!("writing the CNI configuration {}: {e}", cfg.path.display()))
}

/// Gives the node the pods' gateway address of `state` (when
/// `cfg.gateway_netns` says where), taking `previous` off when the range
/// moved; the gateway now owned.
///
/// # Errors
///
/// The address could not be added (a previous one that cannot be removed
/// is only logged).
pub fn give_gateway(state: &NodeState, cfg: &CniConfig, previous: Option<Ipv4Addr>) -> Result<Option<Ipv4Addr>, String> {
    let Some(netns) = &cfg.gateway_netns else { return Ok(None) };
    let gateway = state.node_ip;
    if crate::gateway::ensure(netns, gateway).map_err(|e| format!("the pods' gateway: {e}"))? {
        log::info!("kubernetes: gave the node the pods' gateway address {gateway}/32 (lo)");
    }
    if let Some(old) = previous.filter(|old| *old != gateway) {
        match crate::gateway::remove(netns, old) {
            Ok(_) => log::info!("kubernetes: took the old gateway address {old}/32 off lo"),
            Err(e) => log::warn!("kubernetes: the old gateway address {old}: {e}"),
        }
    }
    Ok(Some(gateway))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(cidr: &str, tunnel: Option<&str>) -> NodeState {
        NodeState { tunnel: tunnel.map(Into::into), ..NodeState::empty("aks-1", cidr, Ipv4Addr::new(10, 244, 3, 1)) }
    }

    fn cfg() -> CniConfig {
        CniConfig {
            path: PathBuf::from("/etc/cni/net.d/05-sightline.conflist"),
            control_socket: PathBuf::from("/var/run/sightline/control.sock"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            mtu: DEFAULT_MTU,
            gateway_netns: None,
        }
    }

    #[test]
    fn the_node_range_becomes_the_plugin_configuration() {
        let conf = node_conf(&state("10.244.3.0/24", None), &cfg()).unwrap();
        assert_eq!(conf.ranges, vec!["10.244.3.0/24".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(conf.exclude, vec!["10.244.3.0/32".parse::<Ipv4Net>().unwrap(), "10.244.3.255/32".parse().unwrap()]);
        assert_eq!(conf.gateway, Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(conf.mtu, 1500);
        assert_eq!(conf.control_socket.as_deref(), Some(std::path::Path::new("/var/run/sightline/control.sock")));
        let plugin = conflist::first_plugin(&conflist::render(&conf).unwrap()).unwrap();
        let parsed = sightline_cni::NetConf::parse(&serde_json::to_vec(&plugin).unwrap()).unwrap();
        assert!(parsed.assignable(Ipv4Addr::new(10, 244, 3, 2)).is_ok());
        assert!(parsed.assignable(Ipv4Addr::new(10, 244, 3, 1)).is_err(), "the gateway");
        // A tunnel leaves room for its encapsulation.
        assert_eq!(node_conf(&state("10.244.3.0/24", Some("sl_vxlan")), &cfg()).unwrap().mtu, 1450);
        // Not a range: named.
        let err = node_conf(&state("fd00::/64", None), &cfg()).unwrap_err();
        assert!(err.contains("aks-1") && err.contains("fd00::/64"), "{err}");
    }
}
