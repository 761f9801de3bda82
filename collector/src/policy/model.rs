//! The NetworkPolicy model: Kubernetes NetworkPolicy (networking.k8s.io/v1) as plain data,
//! with the label-selector and ipBlock semantics Kubernetes gives it.
//!
//! These types are what a state source (the lab's manifest parser, later the Kubernetes API)
//! produces and what [`super::compiler`] consumes. Values are expected to be valid already:
//! defaults filled in and validation done the way the API server does it (the lab's
//! `manifest.rs` does both). Methods here never fail or panic on invalid values; they treat
//! what they cannot read (an unparsable CIDR, say) as matching nothing.
//!
//! This module must not parse manifests, validate objects or produce error messages for
//! users, and must not know about maps or the datapath: that is the parser's and the
//! compiler's business.
//!
//! # Semantics kept exact
//!
//! * [`Rule::peers`] empty means `from`/`to` was omitted or empty: the rule matches **all**
//!   sources/destinations. A non-empty list matches any of its peers.
//! * [`Rule::ports`] empty means every port and protocol.
//! * [`NetworkPolicy::ingress`] empty with `Ingress` in [`NetworkPolicy::policy_types`] means
//!   all ingress to the selected pods is denied; likewise for egress.
//! * [`Peer::pod_selector`] / [`Peer::namespace_selector`]: `None` means the selector was
//!   absent, `Some(empty)` means "all".

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The label Kubernetes puts on every namespace, holding the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A Kubernetes port protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }

    /// The IP protocol number (`IPPROTO_*`).
    pub const fn ip_protocol(self) -> u8 {
        match self {
            Self::Tcp => sightline_abi::IPPROTO_TCP,
            Self::Udp => sightline_abi::IPPROTO_UDP,
            Self::Sctp => sightline_abi::IPPROTO_SCTP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            _ => Err(format!(
                "unknown protocol {s:?} (expected TCP, UDP or SCTP)"
            )),
        }
    }
}

/// Where a parsed object came from (a manifest file and the document in it), so that errors
/// about it can name the document. Plain data: this module never reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The source name the object was parsed from, usually the file path.
    pub source: String,
    /// The 1-based position of the document in the source (empty documents count).
    pub document: usize,
}

/// A NetworkPolicy (networking.k8s.io/v1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    /// The pods (in `namespace`) the policy applies to; empty selects all of them.
    pub pod_selector: LabelSelector,
    /// The directions the policy isolates, after the API server's defaulting; never empty,
    /// no duplicates.
    pub policy_types: Vec<PolicyType>,
    /// Ingress rules; only in force when `policy_types` contains `Ingress`.
    pub ingress: Vec<Rule>,
    /// Egress rules; only in force when `policy_types` contains `Egress`.
    pub egress: Vec<Rule>,
    /// Where the object was parsed from, for error messages; `None` for objects held in a
    /// store or built in code. Not serialized when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// A NetworkPolicy direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

impl PolicyType {
    /// As Kubernetes writes it: `Ingress` or `Egress`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "Ingress",
            Self::Egress => "Egress",
        }
    }
}

/// One ingress or egress rule. Traffic matches the rule when it matches one of `peers` (or
/// `peers` is empty) **and** one of `ports` (or `ports` is empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// `from` (ingress) or `to` (egress). **Empty means the field was omitted or empty, which in
    /// Kubernetes matches every source or destination.** Each peer present selects something.
    pub peers: Vec<Peer>,
    /// `ports`. Empty means all ports and protocols.
    pub ports: Vec<PolicyPort>,
}

/// A NetworkPolicyPeer: either selectors (one or both) or an ipBlock, never both, never none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// `None`: absent. `Some(empty)`: all pods (in the policy's namespace when
    /// `namespace_selector` is `None`).
    pub pod_selector: Option<LabelSelector>,
    /// `None`: absent. `Some(empty)`: all namespaces.
    pub namespace_selector: Option<LabelSelector>,
    pub ip_block: Option<IpBlock>,
}

/// An ipBlock. Both `cidr` and `except` are validated and stored in canonical form
/// (host bits cleared, e.g. `10.0.0.7/8` becomes `10.0.0.0/8`); every `except` lies strictly
/// inside `cidr` and has the same address family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpBlock {
    pub cidr: String,
    pub except: Vec<String>,
}

/// A NetworkPolicyPort.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPort {
    /// TCP by default.
    pub protocol: Protocol,
    /// `None`: every port of `protocol`.
    pub port: Option<PortRef>,
    /// The end of a port range `port..=end_port`; only with a numeric `port`, and `>= port`.
    pub end_port: Option<u16>,
}

/// A port given by number or by a container port's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// A Kubernetes LabelSelector. All of `match_labels` and all of `match_expressions` must hold;
/// an empty selector matches every label set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Non-empty for In/NotIn, empty for Exists/DoesNotExist.
    pub values: Vec<String>,
}

/// A label selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl NetworkPolicy {
    /// Whether the policy isolates the selected pods for ingress.
    pub fn isolates_ingress(&self) -> bool {
        self.policy_types.contains(&PolicyType::Ingress)
    }

    /// Whether the policy isolates the selected pods for egress.
    pub fn isolates_egress(&self) -> bool {
        self.policy_types.contains(&PolicyType::Egress)
    }

    /// `namespace/name`, the way policies are named in policy sets and reports.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the policy applies to a pod of `namespace` with `labels`.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace == namespace && self.pod_selector.matches(labels)
    }
}

impl LabelSelector {
    /// Whether the selector has no requirements (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy every requirement. An empty selector matches everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    /// Kubernetes semantics: `In` needs the key with one of the values; `NotIn` matches when the
    /// key is absent or has another value; `Exists` / `DoesNotExist` test the key only.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl Operator {
    /// The Kubernetes spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
        }
    }
}

impl IpBlock {
    /// Whether `ip` is inside `cidr` and outside every `except`. A CIDR that does not parse
    /// contains nothing.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let inside = |text: &str| parse_cidr(text).is_ok_and(|net| cidr_contains(net, ip));
        inside(&self.cidr) && !self.except.iter().any(|e| inside(e))
    }
}

/// Parses `address/prefix` (IPv4 or IPv6); returns the network address (host bits cleared)
/// and the prefix length. The error says what is wrong, for validation messages. The
/// network arithmetic is `ipnet`'s; this is the project's one CIDR parser.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let Some((addr, prefix)) = text.split_once('/') else {
        return Err(format!(
            "{text:?} is not a CIDR: expected address/prefix, e.g. 10.0.0.0/16"
        ));
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?} is not a CIDR: {addr:?} is not an IPv4 or IPv6 address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let net = (!prefix.is_empty() && prefix.len() <= 3 && prefix.bytes().all(|b| b.is_ascii_digit()))
        .then(|| prefix.parse::<u8>().ok())
        .flatten()
        .and_then(|len| ipnet::IpNet::new(ip, len).ok())
        .ok_or_else(|| format!("{text:?} is not a CIDR: the prefix length must be between 0 and {max}"))?;
    Ok((net.network(), net.prefix_len()))
}

/// `ip` with every bit after the first `len` cleared (`len` beyond the address size keeps
/// every bit).
pub fn mask(ip: IpAddr, len: u8) -> IpAddr {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    ipnet::IpNet::new(ip, len.min(max)).map_or(ip, |n| n.network())
}

/// Whether the network `net` (as [`parse_cidr`] returns it) contains `ip`; never across
/// address families.
pub fn cidr_contains(net: (IpAddr, u8), ip: IpAddr) -> bool {
    net.0.is_ipv4() == ip.is_ipv4() && mask(ip, net.1) == net.0
}
