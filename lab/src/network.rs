//! The lab's network models, as AKS offers them with Azure CNI powered by
//! Cilium (`lab up --network-model …`):
//!
//! - `overlay` (Azure CNI Overlay): pods take addresses from a cluster pod
//!   CIDR (`--pod-cidr`), a /24 block per node; the fabric (standing in for
//!   Azure's network) routes each node's block to it. Node addresses come
//!   from `--node-subnet`.
//! - `pod-subnet` (VNet with a dedicated pod subnet): nodes from
//!   `--node-subnet`, pods from `--pod-subnet`, handed to nodes in blocks of
//!   16 addresses as their pods arrive (as Azure allocates in batches), so a
//!   node's pods are not one contiguous range; the fabric routes each block.
//! - `node-subnet` (Azure CNI node subnet): pods and nodes share
//!   `--node-subnet`, again in blocks of 16 per node, with no per-node
//!   routes at all: each node answers ARP for its own pods on the shared
//!   segment (proxy ARP on its fabric interface).
//!
//! This module only plans addresses; `topology` makes the links and routes
//! and `cluster` records what was handed out.

use std::net::Ipv4Addr;
use std::str::FromStr;

use anyhow::{anyhow, bail};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Default cluster pod CIDR of `overlay` (AKS's default).
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
/// Default subnet of the nodes (and of the pods, in `node-subnet`).
pub const DEFAULT_NODE_SUBNET: &str = "10.243.0.0/16";
/// Default pod subnet of `pod-subnet`.
pub const DEFAULT_POD_SUBNET: &str = "10.241.0.0/16";
/// `overlay`: the size of each node's block (Cilium's cluster-pool default
/// mask size).
pub const NODE_BLOCK_PREFIX: u8 = 24;
/// `pod-subnet` and `node-subnet`: the blocks handed to a node at a time
/// (16 addresses, as Azure allocates pod IPs in batches of 16).
pub const BATCH_PREFIX: u8 = 28;
/// Service cluster IPs come from here; no pod or node range may overlap it.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// How pods get their addresses and how other nodes reach them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Model {
    /// Azure CNI Overlay: a /24 per node from the cluster pod CIDR, routed
    /// by the fabric.
    #[default]
    Overlay,
    /// A dedicated pod subnet, handed out in blocks of 16 as pods arrive,
    /// each block routed by the fabric.
    PodSubnet,
    /// Pods and nodes share one subnet; each node answers ARP for its pods.
    NodeSubnet,
}

impl Model {
    /// The name `--network-model` takes.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Model::Overlay => "overlay",
            Model::PodSubnet => "pod-subnet",
            Model::NodeSubnet => "node-subnet",
        }
    }

    /// Whether pods get their addresses in blocks handed out as they arrive.
    #[must_use]
    pub fn dynamic(self) -> bool {
        !matches!(self, Model::Overlay)
    }
}

/// Tunnel routing (Cilium's): pod traffic between nodes encapsulated, the
/// source's identity in the tunnel header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Tunnel {
    /// VXLAN on UDP 8472, the identity in the VNI.
    Vxlan,
    /// Geneve on UDP 6081, the identity in the VNI.
    Geneve,
}

impl Tunnel {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Tunnel::Vxlan => "vxlan",
            Tunnel::Geneve => "geneve",
        }
    }
}

/// The fabric's MTU (the nodes' `fab0`).
pub const FABRIC_MTU: u32 = 1500;
/// What the encapsulation takes from it: outer IPv4 (20), UDP (8), the
/// VXLAN or Geneve header without options (8) and the inner Ethernet
/// header (14).
pub const TUNNEL_OVERHEAD: u32 = sightline_collector::kubernetes::cni::TUNNEL_OVERHEAD;

/// What `lab up` was asked for; unset ranges take the defaults.
#[derive(Clone, Debug, Default)]
pub struct NetworkOptions {
    pub model: Model,
    pub pod_cidr: Option<Ipv4Net>,
    pub node_subnet: Option<Ipv4Net>,
    pub pod_subnet: Option<Ipv4Net>,
    pub tunnel: Option<Tunnel>,
}

/// `lab up`'s network flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct NetworkArgs {
    /// How pods get addresses and how nodes reach each other's pods:
    /// overlay (a /24 per node from --pod-cidr), pod-subnet (blocks of 16
    /// from --pod-subnet as pods arrive), node-subnet (pods share
    /// --node-subnet; nodes answer ARP for their pods).
    #[arg(long, value_enum, default_value_t = Model::Overlay)]
    pub network_model: Model,
    /// overlay: the cluster's pod CIDR [default: 10.244.0.0/16].
    #[arg(long, value_name = "CIDR")]
    pub pod_cidr: Option<String>,
    /// The nodes' subnet (and the pods', in node-subnet) [default: 10.243.0.0/16].
    #[arg(long, value_name = "CIDR")]
    pub node_subnet: Option<String>,
    /// pod-subnet: the pods' subnet [default: 10.241.0.0/16].
    #[arg(long, value_name = "CIDR")]
    pub pod_subnet: Option<String>,
    /// Encapsulate pod traffic between nodes (VXLAN or Geneve, the source's
    /// identity in the tunnel header) instead of routing it: the fabric
    /// sees only node addresses (overlay and pod-subnet).
    #[arg(long, value_enum)]
    pub tunnel: Option<Tunnel>,
}

impl NetworkArgs {
    /// The options these flags give, each range parsed and named in errors.
    pub fn options(&self) -> anyhow::Result<NetworkOptions> {
        let parse = |flag: &str, v: &Option<String>| v.as_deref().map(|v| parse_cidr(flag, v)).transpose();
        Ok(NetworkOptions {
            model: self.network_model,
            pod_cidr: parse("--pod-cidr", &self.pod_cidr)?,
            node_subnet: parse("--node-subnet", &self.node_subnet)?,
            pod_subnet: parse("--pod-subnet", &self.pod_subnet)?,
            tunnel: self.tunnel,
        })
    }
}

/// A block of pod addresses handed to a node (`pod-subnet`, `node-subnet`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub cidr: Ipv4Net,
    pub node: String,
}

/// A lab's network, as planned by [`Network::plan`] and kept in its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub model: Model,
    /// The nodes' subnet: node N's fabric address is its Nth address.
    pub node_subnet: Ipv4Net,
    /// Where pods' addresses come from: the cluster pod CIDR (`overlay`),
    /// the pod subnet (`pod-subnet`) or the node subnet (`node-subnet`).
    pub pod_range: Ipv4Net,
    /// Blocks handed to nodes so far, in the order they were handed out
    /// (`pod-subnet`, `node-subnet`; empty in `overlay`).
    #[serde(default)]
    pub blocks: Vec<Block>,
    /// Tunnel routing between nodes, if any.
    #[serde(default)]
    pub tunnel: Option<Tunnel>,
}

impl Default for Network {
    /// The network of a lab whose state predates network models: `overlay`
    /// with the defaults (and the /24 fabric it had).
    fn default() -> Self {
        Network {
            model: Model::Overlay,
            node_subnet: "10.243.0.0/24".parse().expect("a valid CIDR"),
            pod_range: DEFAULT_POD_CIDR.parse().expect("a valid CIDR"),
            blocks: Vec::new(),
            tunnel: None,
        }
    }
}

/// Parses a `--pod-cidr`/`--node-subnet`/`--pod-subnet` value: an IPv4
/// network in CIDR notation with no host bits set.
pub fn parse_cidr(flag: &str, value: &str) -> anyhow::Result<Ipv4Net> {
    let net = Ipv4Net::from_str(value.trim())
        .map_err(|_| anyhow!("{flag} {value:?}: not an IPv4 CIDR such as 10.244.0.0/16"))?;
    if net.trunc() != net {
        bail!("{flag} {value}: host bits are set (did you mean {}?)", net.trunc());
    }
    Ok(net)
}

/// Private ranges a lab's pods and nodes may use (RFC 1918 and the shared
/// address space of RFC 6598, as Azure virtual networks allow).
fn private(net: &Ipv4Net) -> bool {
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"]
        .iter()
        .any(|r| r.parse::<Ipv4Net>().expect("a valid CIDR").contains(net))
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl Network {
    /// Checks `opts` for a lab of `nodes` nodes and plans its ranges. Flags
    /// that do not apply to the model are refused rather than ignored.
    pub fn plan(opts: &NetworkOptions, nodes: u32) -> anyhow::Result<Network> {
        let model = opts.model;
        let name = model.as_str();
        match model {
            Model::Overlay if opts.pod_subnet.is_some() => {
                bail!("--pod-subnet applies to --network-model pod-subnet, not {name} (use --pod-cidr)")
            }
            Model::PodSubnet if opts.pod_cidr.is_some() => {
                bail!("--pod-cidr applies to --network-model overlay, not {name} (use --pod-subnet)")
            }
            Model::NodeSubnet if opts.pod_cidr.is_some() || opts.pod_subnet.is_some() => {
                bail!("--network-model node-subnet gives pods addresses from --node-subnet: --pod-cidr and --pod-subnet do not apply")
            }
            _ => {}
        }
        let node_subnet = opts.node_subnet.unwrap_or_else(|| DEFAULT_NODE_SUBNET.parse().expect("a valid CIDR"));
        let pod_range = match model {
            Model::Overlay => opts.pod_cidr.unwrap_or_else(|| DEFAULT_POD_CIDR.parse().expect("a valid CIDR")),
            Model::PodSubnet => opts.pod_subnet.unwrap_or_else(|| DEFAULT_POD_SUBNET.parse().expect("a valid CIDR")),
            Model::NodeSubnet => node_subnet,
        };
        let pod_flag = match model {
            Model::Overlay => "--pod-cidr",
            Model::PodSubnet => "--pod-subnet",
            Model::NodeSubnet => "--node-subnet",
        };
        let service: Ipv4Net = SERVICE_CIDR.parse().expect("a valid CIDR");
        for (flag, net) in [("--node-subnet", &node_subnet), (pod_flag, &pod_range)] {
            if !private(net) {
                bail!("{flag} {net}: use a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10)");
            }
            if overlaps(net, &service) {
                bail!("{flag} {net} overlaps the service range {SERVICE_CIDR}");
            }
        }
        if model != Model::NodeSubnet && overlaps(&node_subnet, &pod_range) {
            bail!("--node-subnet {node_subnet} overlaps {pod_flag} {pod_range}: pods and nodes need separate ranges in {name}");
        }
        // Node N is the subnet's Nth address; the last one is broadcast.
        if u64::from(nodes) + 2 > 1u64 << (32 - u32::from(node_subnet.prefix_len())) {
            bail!("--node-subnet {node_subnet} has no room for {nodes} nodes");
        }
        if model == Model::NodeSubnet && opts.tunnel.is_some() {
            bail!("--tunnel does not apply to --network-model node-subnet: pods share the nodes' segment, there is nothing to encapsulate");
        }
        let network = Network { model, node_subnet, pod_range, blocks: Vec::new(), tunnel: opts.tunnel };
        match model {
            Model::Overlay => {
                if pod_range.prefix_len() > NODE_BLOCK_PREFIX || network.node_block(nodes).is_none() {
                    bail!(
                        "--pod-cidr {pod_range}: too small for {nodes} node(s): node N takes the Nth /{NODE_BLOCK_PREFIX}, so it needs {} blocks",
                        nodes + 1
                    );
                }
            }
            Model::PodSubnet | Model::NodeSubnet => {
                if pod_range.prefix_len() > 26 {
                    bail!("{pod_flag} {pod_range}: too small for pods in blocks of 16 (use a /26 or larger)");
                }
            }
        }
        Ok(network)
    }

    /// The pods' MTU: the fabric's, less the encapsulation with a tunnel.
    #[must_use]
    pub fn pod_mtu(&self) -> u32 {
        if self.tunnel.is_some() { FABRIC_MTU - TUNNEL_OVERHEAD } else { FABRIC_MTU }
    }

    /// Node `index`'s (1-based) address on the fabric.
    #[must_use]
    pub fn fabric_ip(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.node_subnet.network()) + index)
    }

    /// `overlay`: node `index`'s (1-based) block of the pod CIDR (block 0
    /// is not used, so that node N's block of 10.244.0.0/16 is
    /// 10.244.N.0/24).
    #[must_use]
    pub fn node_block(&self, index: u32) -> Option<Ipv4Net> {
        self.pod_range.subnets(NODE_BLOCK_PREFIX).ok()?.nth(index as usize)
    }

    /// Whether `ip` may go to a pod (or be a node's gateway address) in a
    /// block of the dynamic models: not the range's first four or last
    /// address (which Azure reserves in every subnet), and not a node's
    /// fabric address.
    #[must_use]
    pub fn usable(&self, ip: Ipv4Addr, nodes: u32) -> bool {
        let (first, last) = (u32::from(self.pod_range.network()), u32::from(self.pod_range.broadcast()));
        let a = u32::from(ip);
        let node = u32::from(self.node_subnet.network());
        a > first + 3 && a < last && !(a > node && a <= node + nodes) && self.pod_range.contains(&ip)
    }

    /// The blocks handed to `node`, in order.
    pub fn blocks_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = Ipv4Net> + 'a {
        self.blocks.iter().filter(move |b| b.node == node).map(|b| b.cidr)
    }

    /// Hands the next free block of the pod range to `node` and returns it,
    /// or `None` when the range is used up. Blocks holding no usable
    /// address (the nodes' own, in `node-subnet`) are skipped.
    pub fn allocate_block(&mut self, node: &str, nodes: u32) -> Option<Ipv4Net> {
        let block = self.pod_range.subnets(BATCH_PREFIX).ok()?.find(|b| {
            !self.blocks.iter().any(|x| x.cidr == *b) && b.hosts().chain([b.network(), b.broadcast()]).any(|ip| self.usable(ip, nodes))
        })?;
        self.blocks.push(Block { cidr: block, node: node.to_owned() });
        Some(block)
    }

    /// The usable addresses of a block, in order.
    pub fn addresses(&self, block: Ipv4Net, nodes: u32) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let (first, last) = (u32::from(block.network()), u32::from(block.broadcast()));
        (first..=last).map(Ipv4Addr::from).filter(move |ip| self.usable(*ip, nodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn plan(model: Model, nodes: u32) -> Network {
        Network::plan(&NetworkOptions { model, ..NetworkOptions::default() }, nodes).unwrap()
    }

    #[test]
    fn overlay_defaults_keep_a_24_per_node_from_10_244() {
        let n = plan(Model::Overlay, 3);
        assert_eq!(n.node_block(1), Some(net("10.244.1.0/24")));
        assert_eq!(n.node_block(3), Some(net("10.244.3.0/24")));
        assert_eq!(n.fabric_ip(2), Ipv4Addr::new(10, 243, 0, 2));
        let custom = Network::plan(
            &NetworkOptions { pod_cidr: Some(net("192.168.0.0/16")), ..NetworkOptions::default() },
            2,
        )
        .unwrap();
        assert_eq!(custom.node_block(2), Some(net("192.168.2.0/24")));
    }

    #[test]
    fn pod_subnet_hands_out_blocks_of_16_in_turn() {
        let mut n = plan(Model::PodSubnet, 2);
        let a = n.allocate_block("node-1", 2).unwrap();
        let b = n.allocate_block("node-2", 2).unwrap();
        let c = n.allocate_block("node-1", 2).unwrap();
        assert_eq!((a, b, c), (net("10.241.0.0/28"), net("10.241.0.16/28"), net("10.241.0.32/28")));
        assert_eq!(n.blocks_of("node-1").collect::<Vec<_>>(), [a, c]);
        // The subnet's first four addresses are Azure's.
        assert_eq!(n.addresses(a, 2).next(), Some(Ipv4Addr::new(10, 241, 0, 4)));
        assert_eq!(n.addresses(b, 2).count(), 16);
    }

    #[test]
    fn node_subnet_pods_skip_the_nodes_and_reserved_addresses() {
        let mut n = plan(Model::NodeSubnet, 3);
        assert_eq!(n.pod_range, n.node_subnet);
        let a = n.allocate_block("node-1", 3).unwrap();
        let first: Vec<Ipv4Addr> = n.addresses(a, 3).take(2).collect();
        // .1-.3 are reserved and the nodes' own; .4 would be, too (node 3 is
        // .3): the first pod address is .4.
        assert_eq!(first, [Ipv4Addr::new(10, 243, 0, 4), Ipv4Addr::new(10, 243, 0, 5)]);
        for ip in n.addresses(a, 3) {
            assert!(!(1..=3).any(|i| n.fabric_ip(i) == ip), "{ip} is a node's");
        }
    }

    #[test]
    fn a_used_up_range_gives_no_block() {
        let mut n = Network::plan(
            &NetworkOptions { model: Model::PodSubnet, pod_subnet: Some(net("10.241.0.0/26")), ..NetworkOptions::default() },
            1,
        )
        .unwrap();
        for _ in 0..4 {
            assert!(n.allocate_block("node-1", 1).is_some());
        }
        assert_eq!(n.allocate_block("node-1", 1), None);
    }

    #[test]
    fn bad_ranges_and_flags_are_refused_with_the_flag_named() {
        let err = |o: NetworkOptions, nodes| Network::plan(&o, nodes).unwrap_err().to_string();
        let o = NetworkOptions::default;
        assert!(err(NetworkOptions { pod_subnet: Some(net("10.241.0.0/16")), ..o() }, 1).contains("--pod-subnet applies"));
        assert!(
            err(NetworkOptions { model: Model::PodSubnet, pod_cidr: Some(net("10.244.0.0/16")), ..o() }, 1)
                .contains("--pod-cidr applies")
        );
        assert!(err(NetworkOptions { model: Model::NodeSubnet, pod_cidr: Some(net("10.9.0.0/16")), ..o() }, 1).contains("do not apply"));
        assert!(err(NetworkOptions { pod_cidr: Some(net("8.8.0.0/16")), ..o() }, 1).contains("private range"));
        assert!(err(NetworkOptions { pod_cidr: Some(net("10.96.0.0/12")), ..o() }, 1).contains("service range"));
        assert!(err(NetworkOptions { pod_cidr: Some(net("10.243.0.0/16")), ..o() }, 1).contains("overlaps --pod-cidr"));
        assert!(err(NetworkOptions { pod_cidr: Some(net("10.244.0.0/23")), ..o() }, 2).contains("needs 3 blocks"));
        assert!(err(NetworkOptions { node_subnet: Some(net("10.243.0.0/30")), ..o() }, 3).contains("no room for 3 nodes"));
        assert!(
            err(NetworkOptions { model: Model::PodSubnet, pod_subnet: Some(net("10.241.0.0/27")), ..o() }, 1)
                .contains("too small")
        );
        assert!(
            err(NetworkOptions { model: Model::NodeSubnet, tunnel: Some(Tunnel::Vxlan), ..o() }, 2).contains("--tunnel does not apply")
        );
        assert!(parse_cidr("--pod-cidr", "10.244.1.0/16").unwrap_err().to_string().contains("host bits"));
        assert!(parse_cidr("--pod-cidr", "banana").unwrap_err().to_string().contains("--pod-cidr \"banana\""));
    }

    #[test]
    fn a_state_without_a_network_reads_as_the_old_overlay() {
        let n = Network::default();
        assert_eq!(n.node_block(1), Some(net("10.244.1.0/24")));
        assert_eq!(n.node_subnet.prefix_len(), 24);
    }
}
