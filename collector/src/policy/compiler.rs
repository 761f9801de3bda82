//! The NetworkPolicy compiler: Kubernetes NetworkPolicy (networking.k8s.io/v1) in, the
//! `POLICY` and `POLICY_CIDR` map entries of a node's local endpoints out.
//!
//! [`compile`] takes every namespace, every pod of the cluster and every policy, and returns a
//! [`PolicyPlan`]: for each local endpoint whether each direction is enforced (default deny),
//! and the LPM entries that allow traffic. The plan is plain data in `BTreeMap`s, so compiling
//! an unchanged state gives identical entries and the caller can diff two plans to write only
//! what changed.
//!
//! This module must not touch the kernel, the maps or the network, must not fail and must not
//! panic: any input, valid or not, gives a plan. What cannot be enforced exactly is dropped
//! (fails closed) and documented below.
//!
//! # How a policy becomes entries
//!
//! A policy selects a pod when they share a namespace and the policy's podSelector matches the
//! pod's labels. A direction of a local endpoint is enforced when a selecting policy has it in
//! `policyTypes`; only enforced directions get entries (the datapath allows everything in the
//! others). The allowed traffic is the union of every rule of that direction of every
//! selecting policy. For each rule:
//!
//! * the **ports** become the protocol/port part of `POLICY` keys: no ports = prefix 64 (any
//!   protocol, any port); a protocol alone = 72; a port = 88; a range `port..=endPort` = the
//!   fewest prefix blocks ([`port_range_prefixes`]); a named port resolves, for ingress,
//!   against the endpoint's own container ports, and for egress against each destination pod
//!   (below);
//! * the **peers** become the peer part: no peers = [`PEER_ANY`]; a selector peer = the
//!   identity of every pod it selects (one key per distinct identity); an ipBlock = a CIDR peer;
//! * the **match type** says which of peers and ports the rule has (`MATCH_ALL`,
//!   `MATCH_L4_ONLY`, `MATCH_L3_ONLY`, `MATCH_L3_L4`).
//!
//! CIDR peers go through `POLICY_CIDR`, per endpoint and direction. Every prefix involved (each
//! ipBlock's cidr and excepts, each /32 of an egress named port) gets an entry whose value is
//! the id of the set of CIDR peers that contain that prefix and have no except containing it
//! (0 when there is none, so an except overrides a shorter block). A longest-prefix match of
//! an address then yields exactly the peers that contain the address minus their excepts; the
//! `POLICY` entries of peer `PEER_CIDR_SET | set id` carry the union of those peers' ports.
//!
//! # Decisions beyond the Kubernetes API
//!
//! * **Match type of a key several rules produce**: the most specific wins, `MATCH_L3_L4` >
//!   `MATCH_L3_ONLY` > `MATCH_L4_ONLY` > `MATCH_ALL` (the verdict names the narrowest reason
//!   the traffic is allowed).
//! * **Policy sets**: a `POLICY` value's `policy_set` names every policy that allows its key,
//!   including the policies of broader entries with the same endpoint, direction and peer (the
//!   kernel only sees the longest match, but those policies allow the traffic too).
//! * **Ids**: CIDR-set ids and policy-set ids are FNV-1a hashes of the set's canonical content
//!   (31 bits, never 0); a collision takes the next free value, trying contents in sorted
//!   order, so ids are stable as long as nothing collides. A CIDR set's content is what it
//!   allows: (ports, match type, policy) triples. CIDR-set ids are unique per endpoint and
//!   direction, policy-set ids in the whole plan.
//! * **IPv6** ipBlocks are ignored: the datapath is IPv4 only. An ipBlock whose cidr or one of
//!   whose excepts does not parse as IPv4 is ignored as a whole (fails closed).
//! * **Named ports**: every container port of the pod with that name and protocol counts (a
//!   name may repeat across containers). For egress they resolve per destination pod, as a
//!   /32 CIDR peer of that pod with that port: addresses that are not pods never match a named
//!   port, and neither do pods that do not declare it.
//! * **Identities the datapath cannot use as a peer** (0, or with the [`PEER_CIDR_SET`] bit
//!   set) are not emitted as identity keys; a pod with such an identity is matched by its
//!   address instead (a /32 CIDR peer), so it keeps exactly the access the policy gives it.
//! * A **peer with both selectors and an ipBlock** (the API server rejects it) counts as both.
//! * A pod whose **namespace is missing** from [`PolicyInput::namespaces`] is taken to have
//!   the namespace labels Kubernetes always sets (`kubernetes.io/metadata.name=<namespace>`).
//! * An **endPort below port** (the API server rejects it) allows nothing.
//! * **Endpoint ids**: 0 is not an endpoint id (ignored); when several pods claim the same id
//!   the first one in [`PolicyInput::pods`] is the endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use sightline_abi::{
    DIR_EGRESS, DIR_INGRESS, MATCH_ALL, MATCH_L3_L4, MATCH_L3_ONLY, MATCH_L4_ONLY, PEER_ANY,
    PEER_CIDR_SET, POLICY_CIDR_PREFIX_FIXED, POLICY_PREFIX_FULL, POLICY_PREFIX_PEER,
    POLICY_PREFIX_PROTO, PolicyCidrKey, PolicyCidrValue, PolicyKey, PolicyValue,
};

use super::model::{
    NAMESPACE_NAME_LABEL, NetworkPolicy, PolicyType, PortRef, Protocol, Rule, parse_cidr,
};

// ---------------------------------------------------------------------------------------------
// Input and output
// ---------------------------------------------------------------------------------------------

/// A pod of the cluster as the compiler sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    pub identity: u32,
    /// The ports of all its containers (for named ports).
    pub ports: Vec<NamedPort>,
    /// `Some(endpoint id)` when the pod is on this node.
    pub endpoint_id: Option<u16>,
}

/// A container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

impl PodInfo {
    /// The numbers of the pod's container ports called `name` with `protocol`, in container
    /// order (every match: a name may repeat across containers).
    pub fn named_ports<'a>(
        &'a self,
        name: &'a str,
        protocol: Protocol,
    ) -> impl Iterator<Item = u16> + 'a {
        self.ports
            .iter()
            .filter(move |p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

/// Everything [`compile`] needs.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    /// Namespace name → its labels, already including `kubernetes.io/metadata.name`.
    pub namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// Every pod of the cluster; those with an `endpoint_id` are this node's endpoints.
    pub pods: &'a [PodInfo],
    /// Every NetworkPolicy of the cluster.
    pub policies: &'a [NetworkPolicy],
}

/// The compiled policy of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyPlan {
    /// Every local endpoint, enforced or not.
    pub endpoints: BTreeMap<u16, EndpointPolicy>,
    /// (prefix length, key) -> value, for the POLICY LPM map.
    pub policy: BTreeMap<(u32, PolicyKey), PolicyValue>,
    /// (prefix length, key) -> value, for the POLICY_CIDR LPM map.
    pub cidr: BTreeMap<(u32, PolicyCidrKey), PolicyCidrValue>,
    /// policy-set id -> the policies in it ("namespace/name", sorted, deduplicated).
    pub policy_sets: BTreeMap<u32, Vec<String>>,
}

/// What policy does to one local endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Ingress is default-deny: some selecting policy has `Ingress` in its policyTypes.
    pub ingress_enforced: bool,
    /// Egress is default-deny: some selecting policy has `Egress` in its policyTypes.
    pub egress_enforced: bool,
    /// The policies that select the endpoint and have `Ingress` in their policyTypes
    /// ("namespace/name", sorted, deduplicated).
    pub ingress_selected_by: Vec<String>,
    /// The policies that select the endpoint and have `Egress` in their policyTypes.
    pub egress_selected_by: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Compilation
// ---------------------------------------------------------------------------------------------

/// Compiles every policy for every local endpoint (pods with an `endpoint_id`).
pub fn compile(input: &PolicyInput<'_>) -> PolicyPlan {
    let world = World::new(input);
    let mut plan = PolicyPlan::default();
    // (key, match type, policy names) of every `POLICY` entry, before policy-set ids.
    let mut staged: Vec<Staged> = Vec::new();

    for endpoint in input.pods {
        let Some(endpoint_id) = endpoint.endpoint_id.filter(|id| *id != 0) else {
            continue;
        };
        if plan.endpoints.contains_key(&endpoint_id) {
            continue;
        }
        let selecting: Vec<(&NetworkPolicy, String)> = input
            .policies
            .iter()
            .filter(|p| p.selects(&endpoint.namespace, &endpoint.labels))
            .map(|p| (p, p.full_name()))
            .collect();
        let mut state = EndpointPolicy::default();
        for direction in [Direction::Ingress, Direction::Egress] {
            let applying: Vec<&(&NetworkPolicy, String)> = selecting
                .iter()
                .filter(|(p, _)| p.policy_types.contains(&direction.policy_type()))
                .collect();
            if applying.is_empty() {
                continue;
            }
            let names: Vec<String> = applying
                .iter()
                .map(|(_, name)| name.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            match direction {
                Direction::Ingress => {
                    state.ingress_enforced = true;
                    state.ingress_selected_by = names;
                }
                Direction::Egress => {
                    state.egress_enforced = true;
                    state.egress_selected_by = names;
                }
            }
            let mut build = DirectionBuild::default();
            for (policy, name) in applying {
                for rule in direction.rules(policy) {
                    compile_rule(&world, endpoint, policy, name, direction, rule, &mut build);
                }
            }
            build.finish(endpoint_id, direction.abi(), &mut plan.cidr, &mut staged);
        }
        plan.endpoints.insert(endpoint_id, state);
    }

    // Policy-set ids, assigned in the sorted order of the name lists.
    let distinct: BTreeSet<&Vec<String>> = staged.iter().map(|s| &s.names).collect();
    let mut ids: BTreeMap<&Vec<String>, u32> = BTreeMap::new();
    for names in distinct {
        let id = free_id(hash_names(names), |id| plan.policy_sets.contains_key(&id));
        plan.policy_sets.insert(id, names.clone());
        ids.insert(names, id);
    }
    for entry in &staged {
        let policy_set = ids.get(&entry.names).copied().unwrap_or_default();
        plan.policy.insert(
            entry.key,
            PolicyValue {
                match_type: entry.match_type,
                flags: 0,
                _pad: 0,
                policy_set,
            },
        );
    }
    plan
}

/// Splits the inclusive port range [lo, hi] into the fewest (value, prefix bits) blocks over
/// 16 bits: each block is the ports whose first `bits` bits equal `value`'s (the other bits of
/// `value` are 0). `lo > hi` gives no block; `0..=65535` gives `(0, 0)`.
pub fn port_range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut blocks = Vec::new();
    let end = u32::from(hi);
    let mut start = u32::from(lo);
    while start <= end {
        // The largest block aligned at `start` that does not pass `end` (greedy is optimal).
        let mut size_log = start.trailing_zeros().min(16);
        while size_log > 0 && start + (1_u32 << size_log) - 1 > end {
            size_log -= 1;
        }
        let Ok(value) = u16::try_from(start) else {
            break;
        };
        blocks.push((value, 16 - size_log));
        start += 1_u32 << size_log;
    }
    blocks
}

/// A direction of traffic relative to the local endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    const fn abi(self) -> u8 {
        match self {
            Self::Ingress => DIR_INGRESS,
            Self::Egress => DIR_EGRESS,
        }
    }

    const fn policy_type(self) -> PolicyType {
        match self {
            Self::Ingress => PolicyType::Ingress,
            Self::Egress => PolicyType::Egress,
        }
    }

    fn rules(self, policy: &NetworkPolicy) -> &[Rule] {
        match self {
            Self::Ingress => &policy.ingress,
            Self::Egress => &policy.egress,
        }
    }
}

/// The pods and namespaces of the cluster, for selector peers.
struct World<'a> {
    pods: &'a [PodInfo],
    namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// Labels for namespaces that pods name but `namespaces` lacks.
    implied: BTreeMap<&'a str, BTreeMap<String, String>>,
}

impl<'a> World<'a> {
    fn new(input: &PolicyInput<'a>) -> Self {
        let implied = input
            .pods
            .iter()
            .filter(|p| !input.namespaces.contains_key(&p.namespace))
            .map(|p| {
                let labels =
                    BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), p.namespace.clone())]);
                (p.namespace.as_str(), labels)
            })
            .collect();
        Self {
            pods: input.pods,
            namespaces: input.namespaces,
            implied,
        }
    }

    fn namespace_labels(&self, namespace: &str) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.namespaces
            .get(namespace)
            .or_else(|| self.implied.get(namespace))
            .unwrap_or(&NONE)
    }
}

/// One rule, ready to be applied to peers.
struct Grant<'r> {
    /// "namespace/name" of the rule's policy.
    policy: &'r str,
    match_type: u8,
    /// The protocol/port keys of the rule's ports (named ports resolved for ingress).
    l4: BTreeSet<L4>,
    /// Egress named ports, resolved per destination pod.
    named: Vec<(Protocol, &'r str)>,
}

fn compile_rule(
    world: &World<'_>,
    endpoint: &PodInfo,
    policy: &NetworkPolicy,
    name: &str,
    direction: Direction,
    rule: &Rule,
    build: &mut DirectionBuild,
) {
    let match_type = match (rule.peers.is_empty(), rule.ports.is_empty()) {
        (true, true) => MATCH_ALL,
        (true, false) => MATCH_L4_ONLY,
        (false, true) => MATCH_L3_ONLY,
        (false, false) => MATCH_L3_L4,
    };
    let mut grant = Grant {
        policy: name,
        match_type,
        l4: BTreeSet::new(),
        named: Vec::new(),
    };
    if rule.ports.is_empty() {
        grant.l4.insert(L4::ANY);
    }
    for port in &rule.ports {
        let protocol = port.protocol.ip_protocol();
        match (&port.port, port.end_port) {
            (None, _) => {
                grant.l4.insert(L4::protocol(protocol));
            }
            (Some(PortRef::Number(number)), None) => {
                grant.l4.insert(L4::port(protocol, *number));
            }
            (Some(PortRef::Number(number)), Some(end)) => {
                for (value, bits) in port_range_prefixes(*number, end) {
                    grant.l4.insert(L4::block(protocol, value, bits));
                }
            }
            (Some(PortRef::Name(port_name)), _) => match direction {
                Direction::Ingress => {
                    for number in endpoint.named_ports(port_name, port.protocol) {
                        grant.l4.insert(L4::port(protocol, number));
                    }
                }
                Direction::Egress => grant.named.push((port.protocol, port_name)),
            },
        }
    }

    if rule.peers.is_empty() {
        for l4 in &grant.l4 {
            build.allow(PEER_ANY, *l4, match_type, name);
        }
        if !grant.named.is_empty() {
            for pod in world.pods {
                build.named_ports_of(pod, &grant);
            }
        }
        return;
    }

    for peer in &rule.peers {
        if let Some(block) = &peer.ip_block {
            let net = Net::parse_v4(&block.cidr);
            let except: Option<Vec<Net>> = block.except.iter().map(|e| Net::parse_v4(e)).collect();
            if let (Some(net), Some(except)) = (net, except) {
                if !grant.named.is_empty() {
                    let inside = |ip: Ipv4Addr| {
                        net.contains_ip(ip) && !except.iter().any(|e| e.contains_ip(ip))
                    };
                    for pod in world.pods.iter().filter(|p| inside(p.ip)) {
                        build.named_ports_of(pod, &grant);
                    }
                }
                build.cidr_peer(net, except, &grant);
            }
        }
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            continue;
        }
        let mut identities = BTreeSet::new();
        for pod in world.pods {
            let namespace_ok = match &peer.namespace_selector {
                None => pod.namespace == policy.namespace,
                Some(selector) => selector.matches(world.namespace_labels(&pod.namespace)),
            };
            let pod_ok = peer
                .pod_selector
                .as_ref()
                .is_none_or(|selector| selector.matches(&pod.labels));
            if !namespace_ok || !pod_ok {
                continue;
            }
            if usable_identity(pod.identity) {
                identities.insert(pod.identity);
            } else {
                build.cidr_peer(Net::host(pod.ip), Vec::new(), &grant);
            }
            build.named_ports_of(pod, &grant);
        }
        for identity in identities {
            for l4 in &grant.l4 {
                build.allow(identity, *l4, match_type, name);
            }
        }
    }
}

/// Whether `identity` can be a `POLICY` peer (0 is `PEER_ANY`, the top bit marks CIDR sets).
const fn usable_identity(identity: u32) -> bool {
    identity != PEER_ANY && identity & PEER_CIDR_SET == 0
}

/// The protocol/port part of a `POLICY` key with its prefix length; `protocol` and `port`
/// are 0 beyond the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct L4 {
    prefix: u32,
    protocol: u8,
    port: u16,
}

impl L4 {
    const ANY: Self = Self {
        prefix: POLICY_PREFIX_PEER,
        protocol: 0,
        port: 0,
    };

    const fn protocol(protocol: u8) -> Self {
        Self {
            prefix: POLICY_PREFIX_PROTO,
            protocol,
            port: 0,
        }
    }

    const fn port(protocol: u8, port: u16) -> Self {
        Self {
            prefix: POLICY_PREFIX_FULL,
            protocol,
            port,
        }
    }

    fn block(protocol: u8, value: u16, bits: u32) -> Self {
        let bits = bits.min(16);
        Self {
            prefix: POLICY_PREFIX_PROTO + bits,
            protocol,
            port: value & port_mask(bits),
        }
    }

    /// Whether every packet matching `other` matches `self`.
    fn covers(self, other: Self) -> bool {
        if self.prefix > other.prefix {
            return false;
        }
        if self.prefix <= POLICY_PREFIX_PEER {
            return true;
        }
        let bits = self.prefix.saturating_sub(POLICY_PREFIX_PROTO);
        self.protocol == other.protocol && other.port & port_mask(bits) == self.port
    }

    fn key(self, endpoint_id: u16, direction: u8, peer: u32) -> (u32, PolicyKey) {
        (
            self.prefix,
            PolicyKey {
                endpoint_id,
                direction,
                _pad0: 0,
                peer,
                protocol: self.protocol,
                port_be: self.port.to_be_bytes(),
                _pad1: 0,
            },
        )
    }
}

/// The first `bits` bits of a port.
fn port_mask(bits: u32) -> u16 {
    u16::MAX
        .checked_shl(16_u32.saturating_sub(bits))
        .unwrap_or(0)
}

/// An IPv4 network; `addr` has no bits beyond `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Net {
    addr: u32,
    len: u8,
}

impl Net {
    fn new(addr: u32, len: u8) -> Self {
        let len = len.min(32);
        Self {
            addr: addr & net_mask(len),
            len,
        }
    }

    fn host(ip: Ipv4Addr) -> Self {
        Self::new(u32::from(ip), 32)
    }

    /// An IPv4 CIDR; `None` for IPv6 or text that is not a CIDR.
    fn parse_v4(text: &str) -> Option<Self> {
        match parse_cidr(text) {
            Ok((IpAddr::V4(addr), len)) => Some(Self::new(u32::from(addr), len)),
            _ => None,
        }
    }

    fn contains(self, other: Self) -> bool {
        other.len >= self.len && other.addr & net_mask(self.len) == self.addr
    }

    fn contains_ip(self, ip: Ipv4Addr) -> bool {
        self.contains(Self::host(ip))
    }
}

/// The first `len` bits of an IPv4 address.
fn net_mask(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32_u32.saturating_sub(u32::from(len)))
        .unwrap_or(0)
}

/// One thing a CIDR peer allows: a protocol/port key, the rule's match type, the policy.
type CidrGrant = (L4, u8, String);

/// A CIDR peer instance: an ipBlock of one rule (or the /32 of a pod).
struct CidrPeer {
    net: Net,
    except: Vec<Net>,
    grants: BTreeSet<CidrGrant>,
}

/// The best match type and the policies of one key, while a direction is compiled.
#[derive(Clone, Debug, Default)]
struct Allow {
    match_type: u8,
    policies: BTreeSet<String>,
}

/// How specific a match type is (see the module docs).
const fn specificity(match_type: u8) -> u8 {
    match match_type {
        MATCH_L3_L4 => 4,
        MATCH_L3_ONLY => 3,
        MATCH_L4_ONLY => 2,
        MATCH_ALL => 1,
        _ => 0,
    }
}

/// A `POLICY` entry before its policy-set id is known.
struct Staged {
    key: (u32, PolicyKey),
    match_type: u8,
    names: Vec<String>,
}

/// The entries of one endpoint and direction, while they are compiled.
#[derive(Default)]
struct DirectionBuild {
    /// (peer, protocol/port) -> what allows it.
    entries: BTreeMap<(u32, L4), Allow>,
    cidr_peers: Vec<CidrPeer>,
}

impl DirectionBuild {
    fn allow(&mut self, peer: u32, l4: L4, match_type: u8, policy: &str) {
        let allow = self.entries.entry((peer, l4)).or_default();
        if specificity(match_type) > specificity(allow.match_type) {
            allow.match_type = match_type;
        }
        allow.policies.insert(policy.to_owned());
    }

    /// A CIDR peer with the rule's ports (none: the rule allows nothing through it).
    fn cidr_peer(&mut self, net: Net, except: Vec<Net>, grant: &Grant<'_>) {
        if grant.l4.is_empty() {
            return;
        }
        let grants = grant
            .l4
            .iter()
            .map(|l4| (*l4, grant.match_type, grant.policy.to_owned()))
            .collect();
        self.cidr_peers.push(CidrPeer {
            net,
            except,
            grants,
        });
    }

    /// The egress named ports of `grant` that `pod` declares, as a /32 CIDR peer.
    fn named_ports_of(&mut self, pod: &PodInfo, grant: &Grant<'_>) {
        let mut grants = BTreeSet::new();
        for (protocol, name) in &grant.named {
            for number in pod.named_ports(name, *protocol) {
                let l4 = L4::port(protocol.ip_protocol(), number);
                grants.insert((l4, grant.match_type, grant.policy.to_owned()));
            }
        }
        if !grants.is_empty() {
            self.cidr_peers.push(CidrPeer {
                net: Net::host(pod.ip),
                except: Vec::new(),
                grants,
            });
        }
    }

    /// Resolves the CIDR peers into `POLICY_CIDR` entries and CIDR-set peers, then stages
    /// every `POLICY` entry with the policies of the entries that cover it.
    fn finish(
        mut self,
        endpoint_id: u16,
        direction: u8,
        cidr: &mut BTreeMap<(u32, PolicyCidrKey), PolicyCidrValue>,
        staged: &mut Vec<Staged>,
    ) {
        let peers = std::mem::take(&mut self.cidr_peers);
        let prefixes: BTreeSet<Net> = peers
            .iter()
            .flat_map(|p| std::iter::once(p.net).chain(p.except.iter().copied()))
            .collect();
        // Each prefix and what the peers containing it (minus excepts) allow.
        let sets: Vec<(Net, BTreeSet<&CidrGrant>)> = prefixes
            .into_iter()
            .map(|x| {
                let content = peers
                    .iter()
                    .filter(|p| p.net.contains(x) && !p.except.iter().any(|e| e.contains(x)))
                    .flat_map(|p| p.grants.iter())
                    .collect();
                (x, content)
            })
            .collect();
        let distinct: BTreeSet<&BTreeSet<&CidrGrant>> = sets
            .iter()
            .map(|(_, content)| content)
            .filter(|content| !content.is_empty())
            .collect();
        let mut ids: BTreeMap<&BTreeSet<&CidrGrant>, u32> = BTreeMap::new();
        let mut used = BTreeSet::new();
        for content in distinct {
            let id = free_id(hash_grants(content), |id| used.contains(&id));
            used.insert(id);
            ids.insert(content, id);
        }
        for (x, content) in &sets {
            let set_id = ids.get(content).copied().unwrap_or(0);
            let key = PolicyCidrKey {
                endpoint_id,
                direction,
                _pad: 0,
                addr: x.addr.to_be_bytes(),
            };
            cidr.insert(
                (POLICY_CIDR_PREFIX_FIXED + u32::from(x.len), key),
                PolicyCidrValue { set_id },
            );
        }
        for (content, id) in &ids {
            for (l4, match_type, policy) in content.iter().copied() {
                self.allow(PEER_CIDR_SET | id, *l4, *match_type, policy);
            }
        }

        // Group by peer; each key also names the policies of the entries covering it.
        let mut by_peer: BTreeMap<u32, Vec<(L4, &Allow)>> = BTreeMap::new();
        for ((peer, l4), allow) in &self.entries {
            by_peer.entry(*peer).or_default().push((*l4, allow));
        }
        for (peer, group) in &by_peer {
            for (l4, allow) in group {
                let mut names: BTreeSet<&String> = allow.policies.iter().collect();
                for (other, other_allow) in group {
                    if other != l4 && other.covers(*l4) {
                        names.extend(other_allow.policies.iter());
                    }
                }
                staged.push(Staged {
                    key: l4.key(endpoint_id, direction, *peer),
                    match_type: allow.match_type,
                    names: names.into_iter().cloned().collect(),
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------------

/// Set ids (CIDR sets and policy sets) are 31 bits and never 0.
const ID_MASK: u32 = 0x7fff_ffff;

/// FNV-1a, 32 bits: stable across platforms and Rust versions (unlike `std`'s hashers).
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The hash of a sorted policy-name list (each name followed by a 0xff byte, which UTF-8
/// text never contains).
fn hash_names(names: &[String]) -> u32 {
    fnv1a(
        names
            .iter()
            .flat_map(|n| n.bytes().chain(std::iter::once(0xff))),
    )
}

/// The hash of a CIDR set's content.
fn hash_grants(content: &BTreeSet<&CidrGrant>) -> u32 {
    let mut bytes = Vec::new();
    for (l4, match_type, policy) in content {
        bytes.extend_from_slice(&l4.prefix.to_be_bytes());
        bytes.push(l4.protocol);
        bytes.extend_from_slice(&l4.port.to_be_bytes());
        bytes.push(*match_type);
        bytes.extend_from_slice(policy.as_bytes());
        bytes.push(0xff);
    }
    fnv1a(bytes)
}

/// `hash` masked to an id, or the next id that `taken` does not claim.
fn free_id(hash: u32, taken: impl Fn(u32) -> bool) -> u32 {
    let mut id = hash & ID_MASK;
    if id == 0 {
        id = 1;
    }
    while taken(id) {
        id = if id >= ID_MASK { 1 } else { id + 1 };
    }
    id
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use sightline_abi::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

    use super::*;
    use crate::policy::model::{IpBlock, LabelSelector, Operator, Peer, PolicyPort, Requirement};

    // --- building inputs ---------------------------------------------------------------------

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: labels(pairs),
            match_expressions: vec![],
        }
    }

    fn all() -> LabelSelector {
        LabelSelector::default()
    }

    fn expr(key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Requirement {
                key: key.to_owned(),
                operator,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            }],
        }
    }

    fn pods(selector: LabelSelector) -> Peer {
        Peer {
            pod_selector: Some(selector),
            ..Peer::default()
        }
    }

    fn namespaces(selector: LabelSelector) -> Peer {
        Peer {
            namespace_selector: Some(selector),
            ..Peer::default()
        }
    }

    fn both(ns: LabelSelector, pod: LabelSelector) -> Peer {
        Peer {
            pod_selector: Some(pod),
            namespace_selector: Some(ns),
            ip_block: None,
        }
    }

    fn block(cidr: &str, except: &[&str]) -> Peer {
        Peer {
            ip_block: Some(IpBlock {
                cidr: cidr.to_owned(),
                except: except.iter().map(|e| (*e).to_owned()).collect(),
            }),
            ..Peer::default()
        }
    }

    fn port(protocol: Protocol, number: u16) -> PolicyPort {
        PolicyPort {
            protocol,
            port: Some(PortRef::Number(number)),
            end_port: None,
        }
    }

    fn tcp(number: u16) -> PolicyPort {
        port(Protocol::Tcp, number)
    }

    fn range(protocol: Protocol, number: u16, end: u16) -> PolicyPort {
        PolicyPort {
            protocol,
            port: Some(PortRef::Number(number)),
            end_port: Some(end),
        }
    }

    fn named(protocol: Protocol, name: &str) -> PolicyPort {
        PolicyPort {
            protocol,
            port: Some(PortRef::Name(name.to_owned())),
            end_port: None,
        }
    }

    fn any_port(protocol: Protocol) -> PolicyPort {
        PolicyPort {
            protocol,
            port: None,
            end_port: None,
        }
    }

    fn rule(peers: Vec<Peer>, ports: Vec<PolicyPort>) -> Rule {
        Rule { peers, ports }
    }

    fn policy(
        namespace: &str,
        name: &str,
        selector: LabelSelector,
        types: &[PolicyType],
        ingress: Vec<Rule>,
        egress: Vec<Rule>,
    ) -> NetworkPolicy {
        NetworkPolicy {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            pod_selector: selector,
            policy_types: types.to_vec(),
            ingress,
            egress,
            origin: None,
        }
    }

    fn ingress(
        namespace: &str,
        name: &str,
        selector: LabelSelector,
        rules: Vec<Rule>,
    ) -> NetworkPolicy {
        policy(
            namespace,
            name,
            selector,
            &[PolicyType::Ingress],
            rules,
            vec![],
        )
    }

    fn egress(
        namespace: &str,
        name: &str,
        selector: LabelSelector,
        rules: Vec<Rule>,
    ) -> NetworkPolicy {
        policy(
            namespace,
            name,
            selector,
            &[PolicyType::Egress],
            vec![],
            rules,
        )
    }

    /// The x/y/z, a/b/c world: namespaces x (env=prod), y (env=dev), z (env=prod); in each,
    /// pods a, b, c labelled `pod=<name>` (b also `app=web`). x/a serves `http` on TCP 80, x/b
    /// `http` on TCP 8080 and `dns` on UDP 53, y/a `http` on TCP 8000, z/b `dns` on UDP 5353;
    /// the c pods declare no ports. Pods of x are local (endpoints 1, 2, 3).
    struct World {
        namespaces: BTreeMap<String, BTreeMap<String, String>>,
        pods: Vec<PodInfo>,
    }

    const NS: [&str; 3] = ["x", "y", "z"];
    const PODS: [&str; 3] = ["a", "b", "c"];

    fn ip(ns: &str, pod: &str) -> Ipv4Addr {
        let n = NS.iter().position(|x| *x == ns).unwrap_or(9);
        let p = PODS.iter().position(|x| *x == pod).unwrap_or(9);
        Ipv4Addr::new(10, 244, (n + 1) as u8, (p + 2) as u8)
    }

    fn identity(ns: &str, pod: &str) -> u32 {
        let n = NS.iter().position(|x| *x == ns).unwrap_or(9);
        let p = PODS.iter().position(|x| *x == pod).unwrap_or(9);
        256 + (n * 3 + p) as u32
    }

    fn endpoint(pod: &str) -> u16 {
        PODS.iter()
            .position(|x| *x == pod)
            .map_or(99, |p| p as u16 + 1)
    }

    fn container(name: &str, number: u16, protocol: Protocol) -> NamedPort {
        NamedPort {
            name: Some(name.to_owned()),
            port: number,
            protocol,
        }
    }

    fn world() -> World {
        let mut namespaces = BTreeMap::new();
        for (ns, env) in [("x", "prod"), ("y", "dev"), ("z", "prod")] {
            namespaces.insert(
                ns.to_owned(),
                labels(&[(NAMESPACE_NAME_LABEL, ns), ("env", env)]),
            );
        }
        let mut pods = Vec::new();
        for ns in NS {
            for pod in PODS {
                let mut pod_labels = labels(&[("pod", pod)]);
                if pod == "b" {
                    pod_labels.insert("app".into(), "web".into());
                }
                let ports = match (ns, pod) {
                    ("x", "a") => vec![container("http", 80, Protocol::Tcp)],
                    ("x", "b") => vec![
                        container("http", 8080, Protocol::Tcp),
                        container("dns", 53, Protocol::Udp),
                    ],
                    ("y", "a") => vec![container("http", 8000, Protocol::Tcp)],
                    ("z", "b") => vec![container("dns", 5353, Protocol::Udp)],
                    _ => vec![],
                };
                pods.push(PodInfo {
                    namespace: ns.into(),
                    name: pod.into(),
                    ip: ip(ns, pod),
                    labels: pod_labels,
                    identity: identity(ns, pod),
                    ports,
                    endpoint_id: (ns == "x").then(|| endpoint(pod)),
                });
            }
        }
        World { namespaces, pods }
    }

    fn run(world: &World, policies: &[NetworkPolicy]) -> PolicyPlan {
        let plan = compile(&PolicyInput {
            namespaces: &world.namespaces,
            pods: &world.pods,
            policies,
        });
        check_invariants(&plan);
        plan
    }

    /// What must hold for every plan.
    fn check_invariants(plan: &PolicyPlan) {
        for ((len, key), value) in &plan.policy {
            assert!(
                (POLICY_PREFIX_PEER..=POLICY_PREFIX_FULL).contains(len),
                "{len}"
            );
            assert_eq!(
                (key._pad0, key._pad1, value.flags, value._pad),
                (0, 0, 0, 0)
            );
            assert!(key.direction == DIR_INGRESS || key.direction == DIR_EGRESS);
            assert!(plan.endpoints.contains_key(&key.endpoint_id));
            // No bits beyond the prefix.
            let bits = key_bits(key);
            for i in *len as usize..96 {
                assert!(!bit(&bits, i), "bit {i} set beyond /{len} in {key:?}");
            }
            assert!(
                plan.policy_sets.contains_key(&value.policy_set),
                "{value:?} names an unknown set"
            );
            assert!(value.policy_set != 0 && value.policy_set <= ID_MASK);
            if key.peer & PEER_CIDR_SET != 0 {
                let set = key.peer & !PEER_CIDR_SET;
                assert!(
                    plan.cidr
                        .iter()
                        .any(|((_, k), v)| k.endpoint_id == key.endpoint_id
                            && k.direction == key.direction
                            && v.set_id == set),
                    "CIDR set {set} is never the result of a POLICY_CIDR lookup"
                );
            }
        }
        for ((len, key), value) in &plan.cidr {
            assert!((POLICY_CIDR_PREFIX_FIXED..=64).contains(len));
            assert_eq!(key._pad, 0);
            assert!(value.set_id <= ID_MASK);
            let addr = u32::from_be_bytes(key.addr);
            assert_eq!(
                addr & !net_mask((len - 32) as u8),
                0,
                "host bits in {key:?}/{len}"
            );
        }
        for names in plan.policy_sets.values() {
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(&sorted, names);
            assert!(!names.is_empty());
        }
    }

    // --- the kernel's lookups, simulated ----------------------------------------------------

    fn key_bits(key: &PolicyKey) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&key.endpoint_id.to_ne_bytes());
        bytes.push(key.direction);
        bytes.push(key._pad0);
        bytes.extend_from_slice(&key.peer.to_ne_bytes());
        bytes.push(key.protocol);
        bytes.extend_from_slice(&key.port_be);
        bytes.push(key._pad1);
        bytes
    }

    fn cidr_bits(key: &PolicyCidrKey) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&key.endpoint_id.to_ne_bytes());
        bytes.push(key.direction);
        bytes.push(key._pad);
        bytes.extend_from_slice(&key.addr);
        bytes
    }

    fn bit(bytes: &[u8], i: usize) -> bool {
        bytes.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
    }

    /// Whether the first `len` bits of `entry` and `lookup` agree (an LPM trie match).
    fn prefix_matches(entry: &[u8], lookup: &[u8], len: u32) -> bool {
        (0..len as usize).all(|i| bit(entry, i) == bit(lookup, i))
    }

    /// The longest-prefix match of `POLICY` for a packet.
    fn lookup_policy(
        plan: &PolicyPlan,
        endpoint_id: u16,
        direction: u8,
        peer: u32,
        protocol: u8,
        port: u16,
    ) -> Option<PolicyValue> {
        let lookup = key_bits(&PolicyKey {
            endpoint_id,
            direction,
            peer,
            protocol,
            port_be: port.to_be_bytes(),
            ..PolicyKey::default()
        });
        plan.policy
            .iter()
            .filter(|((len, key), _)| prefix_matches(&key_bits(key), &lookup, *len))
            .max_by_key(|((len, _), _)| *len)
            .map(|(_, value)| *value)
    }

    /// The longest-prefix match of `POLICY_CIDR` for a remote address: the set id.
    fn lookup_cidr(
        plan: &PolicyPlan,
        endpoint_id: u16,
        direction: u8,
        ip: Ipv4Addr,
    ) -> Option<u32> {
        let lookup = cidr_bits(&PolicyCidrKey {
            endpoint_id,
            direction,
            _pad: 0,
            addr: ip.octets(),
        });
        plan.cidr
            .iter()
            .filter(|((len, key), _)| prefix_matches(&cidr_bits(key), &lookup, *len))
            .max_by_key(|((len, _), _)| *len)
            .map(|(_, value)| value.set_id)
    }

    /// Every `POLICY` value that allows the packet (identity, any, CIDR set); `None` when the
    /// direction is not enforced.
    fn verdicts(
        plan: &PolicyPlan,
        endpoint_id: u16,
        direction: u8,
        remote_identity: u32,
        remote_ip: Ipv4Addr,
        protocol: u8,
        port: u16,
    ) -> Option<Vec<PolicyValue>> {
        let state = plan.endpoints.get(&endpoint_id)?;
        let enforced = if direction == DIR_INGRESS {
            state.ingress_enforced
        } else {
            state.egress_enforced
        };
        if !enforced {
            return None;
        }
        let mut found = Vec::new();
        if usable_identity(remote_identity) {
            found.extend(lookup_policy(
                plan,
                endpoint_id,
                direction,
                remote_identity,
                protocol,
                port,
            ));
        }
        found.extend(lookup_policy(
            plan,
            endpoint_id,
            direction,
            PEER_ANY,
            protocol,
            port,
        ));
        if let Some(set) = lookup_cidr(plan, endpoint_id, direction, remote_ip).filter(|s| *s != 0)
        {
            found.extend(lookup_policy(
                plan,
                endpoint_id,
                direction,
                PEER_CIDR_SET | set,
                protocol,
                port,
            ));
        }
        Some(found)
    }

    fn allowed(
        plan: &PolicyPlan,
        endpoint_id: u16,
        direction: u8,
        remote_identity: u32,
        remote_ip: Ipv4Addr,
        protocol: u8,
        port: u16,
    ) -> bool {
        verdicts(
            plan,
            endpoint_id,
            direction,
            remote_identity,
            remote_ip,
            protocol,
            port,
        )
        .is_none_or(|found| !found.is_empty())
    }

    /// Ingress to x/`to` from `ns`/`from`.
    fn ingress_ok(
        plan: &PolicyPlan,
        from: (&str, &str),
        to: &str,
        protocol: u8,
        port: u16,
    ) -> bool {
        allowed(
            plan,
            endpoint(to),
            DIR_INGRESS,
            identity(from.0, from.1),
            ip(from.0, from.1),
            protocol,
            port,
        )
    }

    /// Egress from x/`from` to `ns`/`to`.
    fn egress_ok(plan: &PolicyPlan, from: &str, to: (&str, &str), protocol: u8, port: u16) -> bool {
        allowed(
            plan,
            endpoint(from),
            DIR_EGRESS,
            identity(to.0, to.1),
            ip(to.0, to.1),
            protocol,
            port,
        )
    }

    /// The remote pods that may reach x/`to` on TCP `port`, as `ns/pod`.
    fn sources(plan: &PolicyPlan, to: &str, port: u16) -> Vec<String> {
        let mut out = Vec::new();
        for ns in NS {
            for pod in PODS {
                if ingress_ok(plan, (ns, pod), to, IPPROTO_TCP, port) {
                    out.push(format!("{ns}/{pod}"));
                }
            }
        }
        out
    }

    /// The policy names the kernel would report for a packet (union over the lookups).
    fn reported(
        plan: &PolicyPlan,
        endpoint_id: u16,
        direction: u8,
        remote: (&str, &str),
        protocol: u8,
        port: u16,
    ) -> Vec<String> {
        let found = verdicts(
            plan,
            endpoint_id,
            direction,
            identity(remote.0, remote.1),
            ip(remote.0, remote.1),
            protocol,
            port,
        )
        .unwrap_or_default();
        let names: BTreeSet<String> = found
            .iter()
            .filter_map(|v| plan.policy_sets.get(&v.policy_set))
            .flatten()
            .cloned()
            .collect();
        names.into_iter().collect()
    }

    fn entries_for(plan: &PolicyPlan, endpoint_id: u16, direction: u8) -> Vec<(u32, PolicyKey)> {
        plan.policy
            .keys()
            .filter(|(_, k)| k.endpoint_id == endpoint_id && k.direction == direction)
            .copied()
            .collect()
    }

    fn addr(text: &str) -> Ipv4Addr {
        text.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    // --- port ranges ------------------------------------------------------------------------

    fn check_blocks(lo: u16, hi: u16) {
        let blocks = port_range_prefixes(lo, hi);
        let mut covered = vec![0_u8; 65536];
        for (value, bits) in &blocks {
            assert!(*bits <= 16);
            let mask = port_mask(*bits);
            assert_eq!(
                value & !mask,
                0,
                "{value}/{bits} has bits beyond its prefix"
            );
            let size = 1_usize << (16 - bits);
            for slot in covered.iter_mut().skip(usize::from(*value)).take(size) {
                *slot += 1;
            }
        }
        for (p, count) in covered.iter().enumerate() {
            let inside = (usize::from(lo)..=usize::from(hi)).contains(&p);
            assert_eq!(
                *count,
                u8::from(inside),
                "port {p} for [{lo}, {hi}]: {blocks:?}"
            );
        }
        // Fewest blocks: two neighbours of equal size never form an aligned block of double
        // size, and there are at most 2 * 16 - 2 blocks.
        assert!(blocks.len() <= 30, "{blocks:?}");
        for pair in blocks.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.1 == b.1 && a.1 > 0 {
                let double = port_mask(a.1 - 1);
                assert!(
                    a.0 & double != a.0 || b.0 & double != a.0,
                    "{a:?} {b:?} could merge"
                );
            }
        }
    }

    #[test]
    fn port_range_single_and_full() {
        assert_eq!(port_range_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_range_prefixes(0, 0), vec![(0, 16)]);
        assert_eq!(port_range_prefixes(65535, 65535), vec![(65535, 16)]);
        assert_eq!(port_range_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_range_prefixes(80, 81), vec![(80, 15)]);
        assert_eq!(port_range_prefixes(81, 82), vec![(81, 16), (82, 16)]);
        assert_eq!(port_range_prefixes(32768, 65535), vec![(32768, 1)]);
        assert_eq!(port_range_prefixes(81, 80), vec![]);
        let from_one = port_range_prefixes(1, 65535);
        assert_eq!(from_one.len(), 16);
        assert_eq!(from_one.first(), Some(&(1, 16)));
        assert_eq!(from_one.last(), Some(&(32768, 1)));
        check_blocks(1, 65535);
        check_blocks(0, 65535);
        check_blocks(1024, 65535);
        check_blocks(80, 8080);
    }

    #[test]
    fn port_range_random_by_brute_force() {
        // A fixed linear congruential sequence: the same ranges on every run.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u16
        };
        for i in 0..300 {
            let (a, b) = (next(), next());
            // Some short ranges too.
            let (a, b) = if i % 3 == 0 {
                (a, a.saturating_add(b % 300))
            } else {
                (a, b)
            };
            check_blocks(a.min(b), a.max(b));
        }
    }

    // --- enforcement ------------------------------------------------------------------------

    #[test]
    fn no_policy_no_enforcement() {
        let w = world();
        let plan = run(&w, &[]);
        assert_eq!(
            plan.endpoints.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(
            plan.endpoints
                .values()
                .all(|e| *e == EndpointPolicy::default())
        );
        assert!(plan.policy.is_empty() && plan.cidr.is_empty() && plan.policy_sets.is_empty());
        assert!(ingress_ok(&plan, ("z", "c"), "a", IPPROTO_TCP, 1));
    }

    #[test]
    fn deny_all_ingress() {
        let w = world();
        let plan = run(&w, &[ingress("x", "deny-all", all(), vec![])]);
        for id in [1, 2, 3] {
            let state = plan.endpoints.get(&id).cloned().unwrap_or_default();
            assert!(state.ingress_enforced && !state.egress_enforced);
            assert_eq!(state.ingress_selected_by, vec!["x/deny-all".to_owned()]);
            assert!(state.egress_selected_by.is_empty());
        }
        assert!(plan.policy.is_empty() && plan.cidr.is_empty());
        assert!(!ingress_ok(&plan, ("x", "b"), "a", IPPROTO_TCP, 80));
        assert!(egress_ok(&plan, "a", ("z", "c"), IPPROTO_UDP, 53));
        // A policy in another namespace selects nothing here.
        let plan = run(&w, &[ingress("y", "deny-all", all(), vec![])]);
        assert!(plan.endpoints.values().all(|e| !e.ingress_enforced));
    }

    #[test]
    fn only_selected_pods_are_enforced() {
        let w = world();
        let plan = run(&w, &[ingress("x", "web", sel(&[("app", "web")]), vec![])]);
        let enforced: Vec<u16> = plan
            .endpoints
            .iter()
            .filter(|(_, e)| e.ingress_enforced)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(enforced, vec![endpoint("b")]);
    }

    #[test]
    fn allow_from_pod_selector_one_key_per_identity() {
        let mut w = world();
        // A second pod with x/b's identity (same labels, same namespace).
        let mut twin = w.pods[1].clone();
        twin.name = "b2".into();
        twin.ip = addr("10.244.1.20");
        twin.endpoint_id = None;
        w.pods.push(twin);
        let p = ingress(
            "x",
            "from-web",
            sel(&[("pod", "a")]),
            vec![rule(vec![pods(sel(&[("app", "web")]))], vec![])],
        );
        let plan = run(&w, &[p]);
        let keys = entries_for(&plan, endpoint("a"), DIR_INGRESS);
        assert_eq!(keys.len(), 1, "{keys:?}");
        let (len, key) = keys[0];
        assert_eq!(
            (len, key.peer, key.protocol, key.port_be),
            (64, identity("x", "b"), 0, [0, 0])
        );
        let value = plan.policy.get(&(len, key)).copied().unwrap_or_default();
        assert_eq!(value.match_type, MATCH_L3_ONLY);
        assert_eq!(
            plan.policy_sets.get(&value.policy_set),
            Some(&vec!["x/from-web".to_owned()])
        );
        // Only x/b: a pod selector alone stays in the policy's namespace.
        assert_eq!(sources(&plan, "a", 80), vec!["x/b"]);
        // Other endpoints are not selected.
        assert!(entries_for(&plan, endpoint("b"), DIR_INGRESS).is_empty());
        assert!(ingress_ok(&plan, ("z", "c"), "b", IPPROTO_TCP, 80));
    }

    #[test]
    fn namespace_selector_alone() {
        let w = world();
        let p = ingress(
            "x",
            "prod",
            all(),
            vec![rule(vec![namespaces(sel(&[("env", "prod")]))], vec![])],
        );
        let plan = run(&w, &[p]);
        assert_eq!(
            sources(&plan, "a", 80),
            vec!["x/a", "x/b", "x/c", "z/a", "z/b", "z/c"]
        );
        assert_eq!(entries_for(&plan, endpoint("a"), DIR_INGRESS).len(), 6);
        // An empty namespace selector: every pod of the cluster.
        let p = ingress(
            "x",
            "everyone",
            all(),
            vec![rule(vec![namespaces(all())], vec![])],
        );
        let plan = run(&w, &[p]);
        assert_eq!(sources(&plan, "c", 80).len(), 9);
        // An address that is no pod is not allowed by selectors.
        assert!(!allowed(
            &plan,
            3,
            DIR_INGRESS,
            2,
            addr("192.0.2.1"),
            IPPROTO_TCP,
            80
        ));
    }

    #[test]
    fn namespace_and_pod_selector_in_one_peer_and_as_two_peers() {
        let w = world();
        let one = ingress(
            "x",
            "and",
            all(),
            vec![rule(
                vec![both(sel(&[("env", "prod")]), sel(&[("app", "web")]))],
                vec![],
            )],
        );
        assert_eq!(sources(&run(&w, &[one]), "a", 80), vec!["x/b", "z/b"]);
        let two = ingress(
            "x",
            "or",
            all(),
            vec![rule(
                vec![
                    namespaces(sel(&[("env", "dev")])),
                    pods(sel(&[("app", "web")])),
                ],
                vec![],
            )],
        );
        assert_eq!(
            sources(&run(&w, &[two]), "a", 80),
            vec!["x/b", "y/a", "y/b", "y/c"]
        );
        // Selecting by the name label Kubernetes puts on every namespace.
        let named_ns = ingress(
            "x",
            "by-name",
            all(),
            vec![rule(
                vec![namespaces(sel(&[(NAMESPACE_NAME_LABEL, "z")]))],
                vec![],
            )],
        );
        assert_eq!(
            sources(&run(&w, &[named_ns]), "a", 80),
            vec!["z/a", "z/b", "z/c"]
        );
    }

    #[test]
    fn match_expressions_operators() {
        let w = world();
        let from = |selector: LabelSelector| {
            let p = ingress(
                "x",
                "p",
                all(),
                vec![rule(vec![both(all(), selector)], vec![])],
            );
            sources(&run(&w, &[p]), "a", 80)
        };
        assert_eq!(from(expr("pod", Operator::In, &["a", "c"])).len(), 6);
        assert_eq!(
            from(expr("pod", Operator::NotIn, &["a", "c"])),
            vec!["x/b", "y/b", "z/b"]
        );
        assert_eq!(
            from(expr("app", Operator::Exists, &[])),
            vec!["x/b", "y/b", "z/b"]
        );
        assert_eq!(from(expr("app", Operator::DoesNotExist, &[])).len(), 6);
        // NotIn matches pods without the key.
        assert_eq!(from(expr("app", Operator::NotIn, &["db"])).len(), 9);
        // On namespaces too.
        let p = ingress(
            "x",
            "p",
            all(),
            vec![rule(
                vec![namespaces(expr("env", Operator::NotIn, &["prod"]))],
                vec![],
            )],
        );
        assert_eq!(sources(&run(&w, &[p]), "a", 80), vec!["y/a", "y/b", "y/c"]);
        // Nothing matched: no entries, still enforced.
        let p = ingress(
            "x",
            "p",
            all(),
            vec![rule(vec![pods(sel(&[("pod", "nope")]))], vec![])],
        );
        let plan = run(&w, &[p]);
        assert!(plan.policy.is_empty() && plan.endpoints.values().all(|e| e.ingress_enforced));
    }

    // --- ipBlocks ---------------------------------------------------------------------------

    #[test]
    fn ip_block_with_except_covering_pod_ips() {
        let w = world();
        // All pods of y (10.244.2.0/24) but y/b (10.244.2.3).
        let p = ingress(
            "x",
            "block",
            sel(&[("pod", "a")]),
            vec![rule(
                vec![block("10.244.0.0/16", &["10.244.2.3/32", "10.244.3.0/24"])],
                vec![],
            )],
        );
        let plan = run(&w, &[p]);
        let ep = endpoint("a");
        let cidr: Vec<(u32, [u8; 4], u32)> = plan
            .cidr
            .iter()
            .map(|((len, k), v)| (*len, k.addr, v.set_id))
            .collect();
        assert_eq!(cidr.len(), 3, "{cidr:?}");
        let set = lookup_cidr(&plan, ep, DIR_INGRESS, addr("10.244.1.2")).unwrap_or(0);
        assert_ne!(set, 0);
        assert!(cidr.contains(&(48, [10, 244, 0, 0], set)));
        assert!(cidr.contains(&(64, [10, 244, 2, 3], 0)));
        assert!(cidr.contains(&(56, [10, 244, 3, 0], 0)));
        assert_eq!(
            lookup_cidr(&plan, ep, DIR_INGRESS, addr("10.244.2.3")),
            Some(0)
        );
        assert_eq!(
            lookup_cidr(&plan, ep, DIR_INGRESS, addr("10.244.3.77")),
            Some(0)
        );
        assert_eq!(
            lookup_cidr(&plan, ep, DIR_INGRESS, addr("10.245.0.1")),
            None
        );
        // Entries: one for the set, any port.
        let keys = entries_for(&plan, ep, DIR_INGRESS);
        assert_eq!(
            keys,
            vec![(
                64,
                PolicyKey {
                    endpoint_id: ep,
                    direction: DIR_INGRESS,
                    peer: PEER_CIDR_SET | set,
                    ..PolicyKey::default()
                }
            )]
        );
        assert_eq!(
            plan.policy.values().next().map(|v| v.match_type),
            Some(MATCH_L3_ONLY)
        );
        assert_eq!(
            sources(&plan, "a", 80),
            vec!["x/a", "x/b", "x/c", "y/a", "y/c"]
        );
        // Non-pod addresses in the block are allowed too, by address alone.
        assert!(allowed(
            &plan,
            ep,
            DIR_INGRESS,
            2,
            addr("10.244.200.1"),
            IPPROTO_UDP,
            9
        ));
        assert!(!allowed(
            &plan,
            ep,
            DIR_INGRESS,
            2,
            addr("10.245.0.1"),
            IPPROTO_UDP,
            9
        ));
    }

    #[test]
    fn overlapping_ip_blocks_from_two_policies() {
        let w = world();
        let wide = ingress(
            "x",
            "wide",
            all(),
            vec![rule(
                vec![block("10.0.0.0/8", &["10.244.2.0/24"])],
                vec![tcp(80)],
            )],
        );
        let narrow = ingress(
            "x",
            "narrow",
            all(),
            vec![rule(vec![block("10.244.0.0/16", &[])], vec![tcp(443)])],
        );
        let plan = run(&w, &[wide, narrow]);
        let ep = endpoint("c");
        let at = |text: &str| lookup_cidr(&plan, ep, DIR_INGRESS, addr(text)).unwrap_or(0);
        let (only_wide, both_sets, only_narrow) =
            (at("10.1.2.3"), at("10.244.1.2"), at("10.244.2.2"));
        assert!(only_wide != 0 && both_sets != 0 && only_narrow != 0);
        assert!(only_wide != both_sets && both_sets != only_narrow && only_wide != only_narrow);
        assert_eq!(at("11.0.0.1"), 0);
        let ok = |text: &str, port: u16| {
            allowed(&plan, ep, DIR_INGRESS, 2, addr(text), IPPROTO_TCP, port)
        };
        assert!(ok("10.1.2.3", 80) && !ok("10.1.2.3", 443));
        assert!(ok("10.244.1.2", 80) && ok("10.244.1.2", 443));
        // Inside the except of the wide block: only the narrow policy's port.
        assert!(!ok("10.244.2.2", 80) && ok("10.244.2.2", 443));
        // The union set's entries name their own policy.
        let names = |text: &str, port: u16| {
            let set = at(text);
            lookup_policy(
                &plan,
                ep,
                DIR_INGRESS,
                PEER_CIDR_SET | set,
                IPPROTO_TCP,
                port,
            )
            .and_then(|v| plan.policy_sets.get(&v.policy_set).cloned())
        };
        assert_eq!(names("10.244.1.2", 80), Some(vec!["x/wide".to_owned()]));
        assert_eq!(names("10.244.1.2", 443), Some(vec!["x/narrow".to_owned()]));
        // Same blocks from two policies with the same ports: one set, both names.
        let a = ingress(
            "x",
            "a",
            all(),
            vec![rule(vec![block("192.168.0.0/16", &[])], vec![tcp(22)])],
        );
        let b = ingress(
            "x",
            "b",
            all(),
            vec![rule(vec![block("192.168.0.0/16", &[])], vec![tcp(22)])],
        );
        let plan = run(&w, &[a, b]);
        let set = lookup_cidr(&plan, ep, DIR_INGRESS, addr("192.168.1.1")).unwrap_or(0);
        let value = lookup_policy(&plan, ep, DIR_INGRESS, PEER_CIDR_SET | set, IPPROTO_TCP, 22);
        assert_eq!(
            value.and_then(|v| plan.policy_sets.get(&v.policy_set).cloned()),
            Some(vec!["x/a".to_owned(), "x/b".to_owned()])
        );
    }

    #[test]
    fn nested_excepts_and_blocks() {
        let w = world();
        // 10/8 minus 10.1/16, and 10.1.1/24 again from another peer; 0/0 minus 10/8 elsewhere.
        let p = ingress(
            "x",
            "nested",
            all(),
            vec![
                rule(
                    vec![
                        block("10.0.0.0/8", &["10.1.0.0/16"]),
                        block("10.1.1.0/24", &[]),
                    ],
                    vec![tcp(80)],
                ),
                rule(vec![block("0.0.0.0/0", &["10.0.0.0/8"])], vec![tcp(443)]),
            ],
        );
        let plan = run(&w, &[p]);
        let ok = |text: &str, port: u16| {
            allowed(&plan, 1, DIR_INGRESS, 2, addr(text), IPPROTO_TCP, port)
        };
        assert!(ok("10.2.0.1", 80) && !ok("10.2.0.1", 443));
        assert!(!ok("10.1.2.1", 80) && !ok("10.1.2.1", 443));
        assert!(ok("10.1.1.9", 80) && !ok("10.1.1.9", 443));
        assert!(!ok("8.8.8.8", 80) && ok("8.8.8.8", 443));
        assert!(plan.cidr.contains_key(&(
            32,
            PolicyCidrKey {
                endpoint_id: 1,
                direction: DIR_INGRESS,
                _pad: 0,
                addr: [0; 4]
            }
        )));
    }

    #[test]
    fn ipv6_and_invalid_ip_blocks_are_ignored() {
        let w = world();
        let p = ingress(
            "x",
            "v6",
            all(),
            vec![rule(
                vec![
                    block("fd00::/8", &[]),
                    block("10.0.0.0/8", &["fd00::/16"]),
                    block("nonsense", &[]),
                ],
                vec![],
            )],
        );
        let plan = run(&w, &[p]);
        assert!(plan.policy.is_empty() && plan.cidr.is_empty());
        assert!(plan.endpoints.values().all(|e| e.ingress_enforced));
        assert!(!allowed(
            &plan,
            1,
            DIR_INGRESS,
            2,
            addr("10.1.1.1"),
            IPPROTO_TCP,
            80
        ));
    }

    // --- ports ------------------------------------------------------------------------------

    #[test]
    fn ports_and_protocols() {
        let w = world();
        let p = ingress(
            "x",
            "ports",
            sel(&[("pod", "a")]),
            vec![rule(
                vec![],
                vec![tcp(80), any_port(Protocol::Udp), port(Protocol::Sctp, 9)],
            )],
        );
        let plan = run(&w, &[p]);
        let ep = endpoint("a");
        let keys = entries_for(&plan, ep, DIR_INGRESS);
        assert_eq!(keys.len(), 3);
        assert!(keys.iter().all(|(_, k)| k.peer == PEER_ANY));
        assert!(keys.contains(&(
            72,
            PolicyKey {
                endpoint_id: ep,
                direction: DIR_INGRESS,
                protocol: IPPROTO_UDP,
                ..PolicyKey::default()
            }
        )));
        assert!(keys.contains(&(
            88,
            PolicyKey {
                endpoint_id: ep,
                direction: DIR_INGRESS,
                protocol: IPPROTO_TCP,
                port_be: 80_u16.to_be_bytes(),
                ..PolicyKey::default()
            }
        )));
        assert!(plan.policy.values().all(|v| v.match_type == MATCH_L4_ONLY));
        assert!(ingress_ok(&plan, ("z", "c"), "a", IPPROTO_TCP, 80));
        assert!(!ingress_ok(&plan, ("z", "c"), "a", IPPROTO_TCP, 81));
        assert!(ingress_ok(&plan, ("z", "c"), "a", IPPROTO_UDP, 12345));
        assert!(ingress_ok(&plan, ("z", "c"), "a", IPPROTO_SCTP, 9));
        assert!(!ingress_ok(&plan, ("z", "c"), "a", IPPROTO_SCTP, 80));
        // Allow all: one key at /64, MATCH_ALL.
        let plan = run(
            &w,
            &[ingress("x", "all", all(), vec![rule(vec![], vec![])])],
        );
        assert_eq!(
            entries_for(&plan, 1, DIR_INGRESS)
                .first()
                .map(|(len, k)| (*len, k.peer)),
            Some((64, PEER_ANY))
        );
        assert!(plan.policy.values().all(|v| v.match_type == MATCH_ALL));
        assert!(ingress_ok(&plan, ("y", "b"), "a", IPPROTO_UDP, 1));
    }

    #[test]
    fn end_port_ranges() {
        let w = world();
        let p = ingress(
            "x",
            "range",
            sel(&[("pod", "a")]),
            vec![rule(
                vec![pods(all())],
                vec![
                    range(Protocol::Tcp, 8000, 8100),
                    range(Protocol::Udp, 1, 65535),
                ],
            )],
        );
        let plan = run(&w, &[p]);
        let ep = endpoint("a");
        let tcp_keys = entries_for(&plan, ep, DIR_INGRESS)
            .into_iter()
            .filter(|(_, k)| k.peer == identity("x", "b") && k.protocol == IPPROTO_TCP)
            .count();
        assert_eq!(tcp_keys, port_range_prefixes(8000, 8100).len());
        for (port, expected) in [
            (7999, false),
            (8000, true),
            (8050, true),
            (8100, true),
            (8101, false),
        ] {
            assert_eq!(
                ingress_ok(&plan, ("x", "b"), "a", IPPROTO_TCP, port),
                expected,
                "{port}"
            );
        }
        assert!(!allowed(
            &plan,
            ep,
            DIR_INGRESS,
            identity("x", "b"),
            ip("x", "b"),
            IPPROTO_UDP,
            0
        ));
        assert!(allowed(
            &plan,
            ep,
            DIR_INGRESS,
            identity("x", "b"),
            ip("x", "b"),
            IPPROTO_UDP,
            65535
        ));
        assert!(plan.policy.values().all(|v| v.match_type == MATCH_L3_L4));
        // An inverted range allows nothing.
        let p = ingress(
            "x",
            "bad",
            all(),
            vec![rule(vec![], vec![range(Protocol::Tcp, 90, 80)])],
        );
        assert!(run(&w, &[p]).policy.is_empty());
    }

    #[test]
    fn named_ports_ingress() {
        let w = world();
        let p = ingress(
            "x",
            "http",
            all(),
            vec![rule(
                vec![namespaces(all())],
                vec![named(Protocol::Tcp, "http")],
            )],
        );
        let plan = run(&w, &[p]);
        // x/a serves http on 80, x/b on 8080, x/c has no such port: nothing.
        assert!(ingress_ok(&plan, ("z", "c"), "a", IPPROTO_TCP, 80));
        assert!(!ingress_ok(&plan, ("z", "c"), "a", IPPROTO_TCP, 8080));
        assert!(ingress_ok(&plan, ("z", "c"), "b", IPPROTO_TCP, 8080));
        assert!(!ingress_ok(&plan, ("z", "c"), "b", IPPROTO_TCP, 80));
        assert!(entries_for(&plan, endpoint("c"), DIR_INGRESS).is_empty());
        assert!(
            plan.endpoints
                .get(&endpoint("c"))
                .is_some_and(|e| e.ingress_enforced)
        );
        // The protocol must match too.
        let p = ingress(
            "x",
            "udp-http",
            all(),
            vec![rule(vec![], vec![named(Protocol::Udp, "http")])],
        );
        assert!(run(&w, &[p]).policy.is_empty());
        let p = ingress(
            "x",
            "dns",
            all(),
            vec![rule(vec![], vec![named(Protocol::Udp, "dns")])],
        );
        let plan = run(&w, &[p]);
        assert!(ingress_ok(&plan, ("y", "a"), "b", IPPROTO_UDP, 53));
        assert_eq!(entries_for(&plan, endpoint("b"), DIR_INGRESS).len(), 1);
    }

    #[test]
    fn named_ports_egress_per_destination_pod() {
        let w = world();
        // From x/c to any pod's "http" (TCP).
        let p = egress(
            "x",
            "to-http",
            sel(&[("pod", "c")]),
            vec![rule(
                vec![namespaces(all())],
                vec![named(Protocol::Tcp, "http")],
            )],
        );
        let plan = run(&w, &[p]);
        let ep = endpoint("c");
        assert!(egress_ok(&plan, "c", ("x", "a"), IPPROTO_TCP, 80));
        assert!(egress_ok(&plan, "c", ("x", "b"), IPPROTO_TCP, 8080));
        assert!(egress_ok(&plan, "c", ("y", "a"), IPPROTO_TCP, 8000));
        // Not another pod's number, not a pod without the name.
        assert!(!egress_ok(&plan, "c", ("x", "a"), IPPROTO_TCP, 8080));
        assert!(!egress_ok(&plan, "c", ("y", "b"), IPPROTO_TCP, 8000));
        assert!(!egress_ok(&plan, "c", ("z", "c"), IPPROTO_TCP, 80));
        // One /32 per destination pod declaring the port.
        let hosts: Vec<[u8; 4]> = plan
            .cidr
            .keys()
            .filter(|(len, _)| *len == 64)
            .map(|(_, k)| k.addr)
            .collect();
        assert_eq!(
            hosts,
            vec![
                ip("x", "a").octets(),
                ip("x", "b").octets(),
                ip("y", "a").octets()
            ]
        );
        assert!(
            plan.policy
                .keys()
                .all(|(len, k)| *len == 88 && k.peer & PEER_CIDR_SET != 0)
        );
        assert!(plan.policy.values().all(|v| v.match_type == MATCH_L3_L4));
        // Egress with no peers: every pod declaring the port, but never other addresses.
        let p = egress(
            "x",
            "any-dns",
            sel(&[("pod", "c")]),
            vec![rule(vec![], vec![named(Protocol::Udp, "dns")])],
        );
        let plan = run(&w, &[p]);
        assert!(egress_ok(&plan, "c", ("x", "b"), IPPROTO_UDP, 53));
        assert!(egress_ok(&plan, "c", ("z", "b"), IPPROTO_UDP, 5353));
        assert!(!egress_ok(&plan, "c", ("z", "b"), IPPROTO_UDP, 53));
        assert!(!allowed(
            &plan,
            ep,
            DIR_EGRESS,
            2,
            addr("8.8.8.8"),
            IPPROTO_UDP,
            53
        ));
        assert!(plan.policy.values().all(|v| v.match_type == MATCH_L4_ONLY));
        // Egress to an ipBlock with a named port: the pods inside it (minus excepts).
        let p = egress(
            "x",
            "block-http",
            sel(&[("pod", "c")]),
            vec![rule(
                vec![block("10.244.0.0/16", &["10.244.2.0/24"])],
                vec![named(Protocol::Tcp, "http"), tcp(443)],
            )],
        );
        let plan = run(&w, &[p]);
        assert!(egress_ok(&plan, "c", ("x", "a"), IPPROTO_TCP, 80));
        assert!(!egress_ok(&plan, "c", ("y", "a"), IPPROTO_TCP, 8000));
        assert!(egress_ok(&plan, "c", ("z", "a"), IPPROTO_TCP, 443));
        assert!(!egress_ok(&plan, "c", ("y", "a"), IPPROTO_TCP, 443));
        assert!(!allowed(
            &plan,
            ep,
            DIR_EGRESS,
            2,
            addr("10.244.9.9"),
            IPPROTO_TCP,
            80
        ));
        assert!(allowed(
            &plan,
            ep,
            DIR_EGRESS,
            2,
            addr("10.244.9.9"),
            IPPROTO_TCP,
            443
        ));
    }

    // --- policy types and directions --------------------------------------------------------

    #[test]
    fn policy_types_decide_what_is_enforced() {
        let w = world();
        let allow_b = || vec![rule(vec![pods(sel(&[("pod", "b")]))], vec![])];
        // Egress only: ingress rules are ignored and ingress is not enforced.
        let p = policy(
            "x",
            "egress-only",
            all(),
            &[PolicyType::Egress],
            allow_b(),
            vec![],
        );
        let plan = run(&w, &[p]);
        let state = plan.endpoints.get(&1).cloned().unwrap_or_default();
        assert!(!state.ingress_enforced && state.egress_enforced);
        assert!(state.ingress_selected_by.is_empty());
        assert_eq!(state.egress_selected_by, vec!["x/egress-only".to_owned()]);
        assert!(plan.policy.is_empty());
        assert!(ingress_ok(&plan, ("z", "c"), "a", IPPROTO_TCP, 80));
        assert!(!egress_ok(&plan, "a", ("x", "b"), IPPROTO_TCP, 80));
        // Ingress only (the default when policyTypes is omitted): egress rules are ignored.
        let p = policy(
            "x",
            "ingress-only",
            all(),
            &[PolicyType::Ingress],
            allow_b(),
            allow_b(),
        );
        let plan = run(&w, &[p]);
        assert!(plan.policy.keys().all(|(_, k)| k.direction == DIR_INGRESS));
        assert!(egress_ok(&plan, "a", ("z", "c"), IPPROTO_TCP, 80));
        assert!(ingress_ok(&plan, ("x", "b"), "a", IPPROTO_TCP, 80));
        assert!(!ingress_ok(&plan, ("x", "c"), "a", IPPROTO_TCP, 80));
        // Both (the default when there are egress rules).
        let p = policy(
            "x",
            "both",
            all(),
            &[PolicyType::Ingress, PolicyType::Egress],
            allow_b(),
            allow_b(),
        );
        let plan = run(&w, &[p]);
        assert!(
            plan.endpoints
                .values()
                .all(|e| e.ingress_enforced && e.egress_enforced)
        );
        assert!(egress_ok(&plan, "a", ("x", "b"), IPPROTO_TCP, 80));
        assert!(!egress_ok(&plan, "a", ("x", "c"), IPPROTO_TCP, 80));
        // An empty policyTypes list (invalid after defaulting) enforces nothing.
        let p = policy("x", "none", all(), &[], allow_b(), allow_b());
        let plan = run(&w, &[p]);
        assert!(
            plan.endpoints
                .values()
                .all(|e| *e == EndpointPolicy::default())
        );
    }

    #[test]
    fn egress_enforced() {
        let w = world();
        let p = egress(
            "x",
            "dns-and-web",
            sel(&[("pod", "a")]),
            vec![
                rule(
                    vec![namespaces(sel(&[("env", "prod")]))],
                    vec![port(Protocol::Udp, 53)],
                ),
                rule(vec![both(all(), sel(&[("app", "web")]))], vec![tcp(80)]),
            ],
        );
        let plan = run(&w, &[p]);
        assert!(egress_ok(&plan, "a", ("z", "c"), IPPROTO_UDP, 53));
        assert!(!egress_ok(&plan, "a", ("y", "c"), IPPROTO_UDP, 53));
        assert!(egress_ok(&plan, "a", ("y", "b"), IPPROTO_TCP, 80));
        assert!(!egress_ok(&plan, "a", ("y", "b"), IPPROTO_TCP, 443));
        assert!(!egress_ok(&plan, "a", ("y", "a"), IPPROTO_TCP, 80));
        assert!(
            egress_ok(&plan, "b", ("y", "a"), IPPROTO_TCP, 80),
            "x/b is not selected"
        );
        assert!(
            plan.policy
                .keys()
                .all(|(_, k)| k.direction == DIR_EGRESS && k.endpoint_id == 1)
        );
    }

    #[test]
    fn several_policies_union() {
        let w = world();
        let p1 = ingress(
            "x",
            "p1",
            sel(&[("pod", "a")]),
            vec![rule(vec![pods(sel(&[("pod", "b")]))], vec![tcp(80)])],
        );
        let p2 = ingress(
            "x",
            "p2",
            all(),
            vec![rule(vec![pods(sel(&[("pod", "c")]))], vec![tcp(443)])],
        );
        let plan = run(&w, &[p1, p2]);
        let state = plan.endpoints.get(&1).cloned().unwrap_or_default();
        assert_eq!(
            state.ingress_selected_by,
            vec!["x/p1".to_owned(), "x/p2".to_owned()]
        );
        assert!(ingress_ok(&plan, ("x", "b"), "a", IPPROTO_TCP, 80));
        assert!(ingress_ok(&plan, ("x", "c"), "a", IPPROTO_TCP, 443));
        assert!(!ingress_ok(&plan, ("x", "b"), "a", IPPROTO_TCP, 443));
        assert!(!ingress_ok(&plan, ("x", "b"), "b", IPPROTO_TCP, 80));
        assert!(ingress_ok(&plan, ("x", "c"), "b", IPPROTO_TCP, 443));
    }

    #[test]
    fn policy_set_names_include_covering_entries() {
        let w = world();
        let broad = ingress(
            "x",
            "broad",
            all(),
            vec![rule(vec![pods(sel(&[("pod", "b")]))], vec![])],
        );
        let tcp_any = ingress(
            "x",
            "tcp-any",
            all(),
            vec![rule(
                vec![pods(sel(&[("pod", "b")]))],
                vec![any_port(Protocol::Tcp)],
            )],
        );
        let exact = ingress(
            "x",
            "exact",
            all(),
            vec![rule(vec![pods(sel(&[("pod", "b")]))], vec![tcp(80)])],
        );
        let plan = run(&w, &[exact, broad, tcp_any]);
        let ep = endpoint("a");
        let names =
            |protocol: u8, port: u16| reported(&plan, ep, DIR_INGRESS, ("x", "b"), protocol, port);
        assert_eq!(
            names(IPPROTO_TCP, 80),
            vec!["x/broad", "x/exact", "x/tcp-any"]
        );
        assert_eq!(names(IPPROTO_TCP, 81), vec!["x/broad", "x/tcp-any"]);
        assert_eq!(names(IPPROTO_UDP, 80), vec!["x/broad"]);
        // The same for ranges: a block inside another block.
        let r1 = ingress(
            "x",
            "r1",
            all(),
            vec![rule(vec![], vec![range(Protocol::Tcp, 0, 1023)])],
        );
        let r2 = ingress(
            "x",
            "r2",
            all(),
            vec![rule(vec![], vec![range(Protocol::Tcp, 512, 767)])],
        );
        let plan = run(&w, &[r1, r2]);
        let names = |port: u16| reported(&plan, ep, DIR_INGRESS, ("z", "c"), IPPROTO_TCP, port);
        assert_eq!(names(600), vec!["x/r1", "x/r2"]);
        assert_eq!(names(100), vec!["x/r1"]);
        assert!(names(1024).is_empty());
        // Every id of the plan is in policy_sets, with its names.
        assert!(
            plan.policy
                .values()
                .all(|v| plan.policy_sets.contains_key(&v.policy_set))
        );
    }

    #[test]
    fn match_type_prefers_the_most_specific() {
        let w = world();
        // MATCH_L4_ONLY (egress named port with no peers) and MATCH_L3_L4 (the same pod's port
        // through an ipBlock) on one key.
        let l4 = egress(
            "x",
            "l4",
            sel(&[("pod", "c")]),
            vec![rule(vec![], vec![named(Protocol::Tcp, "http")])],
        );
        let l3l4 = egress(
            "x",
            "l3l4",
            sel(&[("pod", "c")]),
            vec![rule(vec![block("10.244.1.2/32", &[])], vec![tcp(80)])],
        );
        let plan = run(&w, &[l4, l3l4]);
        let ep = endpoint("c");
        let set = lookup_cidr(&plan, ep, DIR_EGRESS, ip("x", "a")).unwrap_or(0);
        let value = lookup_policy(&plan, ep, DIR_EGRESS, PEER_CIDR_SET | set, IPPROTO_TCP, 80);
        assert_eq!(value.map(|v| v.match_type), Some(MATCH_L3_L4));
        assert_eq!(
            value.and_then(|v| plan.policy_sets.get(&v.policy_set).cloned()),
            Some(vec!["x/l3l4".to_owned(), "x/l4".to_owned()])
        );
        assert_eq!(specificity(MATCH_L3_L4), 4);
        assert!(specificity(MATCH_L3_ONLY) > specificity(MATCH_L4_ONLY));
        assert!(specificity(MATCH_L4_ONLY) > specificity(MATCH_ALL));
    }

    #[test]
    fn unusable_identities_fall_back_to_the_address() {
        let mut w = world();
        for pod in &mut w.pods {
            if pod.namespace == "y" && pod.name == "a" {
                pod.identity = 0;
            }
            if pod.namespace == "y" && pod.name == "b" {
                pod.identity = PEER_CIDR_SET | 5;
            }
        }
        let p = ingress(
            "x",
            "from-y",
            all(),
            vec![rule(
                vec![namespaces(sel(&[("env", "dev")]))],
                vec![tcp(80)],
            )],
        );
        let plan = run(&w, &[p]);
        assert!(plan.policy.keys().all(|(_, k)| k.peer != PEER_ANY));
        assert!(allowed(
            &plan,
            1,
            DIR_INGRESS,
            0,
            ip("y", "a"),
            IPPROTO_TCP,
            80
        ));
        assert!(allowed(
            &plan,
            1,
            DIR_INGRESS,
            0,
            ip("y", "b"),
            IPPROTO_TCP,
            80
        ));
        assert!(!allowed(
            &plan,
            1,
            DIR_INGRESS,
            0,
            ip("y", "a"),
            IPPROTO_TCP,
            81
        ));
        assert!(!allowed(
            &plan,
            1,
            DIR_INGRESS,
            0,
            ip("z", "a"),
            IPPROTO_TCP,
            80
        ));
        assert!(ingress_ok(&plan, ("y", "c"), "a", IPPROTO_TCP, 80));
    }

    #[test]
    fn endpoint_ids_and_missing_namespaces() {
        let mut w = world();
        // A pod claiming endpoint 1 again, one with id 0, one in a namespace nobody listed.
        let mut dup = w.pods[4].clone();
        dup.endpoint_id = Some(1);
        let mut zero = w.pods[5].clone();
        zero.endpoint_id = Some(0);
        w.pods.push(dup);
        w.pods.push(zero);
        w.pods.push(PodInfo {
            namespace: "ghost".into(),
            name: "g".into(),
            ip: addr("10.244.9.9"),
            labels: BTreeMap::new(),
            identity: 900,
            ports: vec![],
            endpoint_id: Some(7),
        });
        let deny = ingress("x", "deny", all(), vec![]);
        let from_ghost = ingress(
            "ghost",
            "p",
            all(),
            vec![rule(
                vec![namespaces(sel(&[(NAMESPACE_NAME_LABEL, "ghost")]))],
                vec![],
            )],
        );
        let plan = run(&w, &[deny, from_ghost]);
        assert_eq!(
            plan.endpoints.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3, 7]
        );
        assert!(
            plan.endpoints.get(&1).is_some_and(|e| e.ingress_enforced),
            "x/a keeps id 1"
        );
        assert!(allowed(
            &plan,
            7,
            DIR_INGRESS,
            900,
            addr("10.244.9.9"),
            IPPROTO_TCP,
            1
        ));
        assert!(!allowed(
            &plan,
            7,
            DIR_INGRESS,
            identity("x", "a"),
            ip("x", "a"),
            IPPROTO_TCP,
            1
        ));
    }

    #[test]
    fn deterministic() {
        let w = world();
        let policies = vec![
            ingress(
                "x",
                "a",
                all(),
                vec![rule(
                    vec![block("10.0.0.0/8", &["10.244.2.0/24"])],
                    vec![tcp(80)],
                )],
            ),
            ingress(
                "x",
                "b",
                sel(&[("pod", "a")]),
                vec![rule(
                    vec![namespaces(all())],
                    vec![named(Protocol::Tcp, "http")],
                )],
            ),
            egress(
                "x",
                "c",
                all(),
                vec![
                    rule(vec![], vec![named(Protocol::Udp, "dns")]),
                    rule(vec![pods(all())], vec![range(Protocol::Tcp, 1000, 2000)]),
                ],
            ),
        ];
        let first = run(&w, &policies);
        assert!(!first.policy.is_empty() && !first.cidr.is_empty());
        assert_eq!(run(&w, &policies), first);
        let mut reversed = policies.clone();
        reversed.reverse();
        assert_eq!(run(&w, &reversed), first, "policy order does not matter");
        // Ids are fixed values: a hash of the content, not of the run.
        let set = first
            .policy_sets
            .iter()
            .find(|(_, names)| *names == &vec!["x/b".to_owned()])
            .map(|(id, _)| *id);
        assert_eq!(
            set,
            Some(free_id(hash_names(&["x/b".to_owned()]), |_| false))
        );
    }

    #[test]
    fn ids_are_31_bits_non_zero_and_probe_on_collision() {
        assert_eq!(free_id(0, |_| false), 1);
        assert_eq!(free_id(PEER_CIDR_SET, |_| false), 1);
        assert_eq!(free_id(0xffff_ffff, |_| false), ID_MASK);
        assert_eq!(free_id(0xffff_ffff, |id| id == ID_MASK), 1);
        assert_eq!(free_id(41, |id| id == 41 || id == 42), 43);
        // FNV-1a reference values.
        assert_eq!(fnv1a(*b""), 0x811c_9dc5);
        assert_eq!(fnv1a(*b"a"), 0xe40c_292c);
        assert_ne!(
            hash_names(&["a/b".to_owned()]),
            hash_names(&["a".to_owned(), "b".to_owned()])
        );
    }

    #[test]
    fn end_to_end_matrix() {
        let w = world();
        // x/a: ingress from the web pods of prod namespaces on http, and from y on anything.
        // x/b: default deny both ways, egress to DNS (z/b's named port) only.
        // x/c: unselected.
        let policies = vec![
            ingress(
                "x",
                "a-in",
                sel(&[("pod", "a")]),
                vec![
                    rule(
                        vec![both(sel(&[("env", "prod")]), sel(&[("app", "web")]))],
                        vec![named(Protocol::Tcp, "http")],
                    ),
                    rule(vec![namespaces(sel(&[("env", "dev")]))], vec![]),
                ],
            ),
            policy(
                "x",
                "b-lockdown",
                sel(&[("pod", "b")]),
                &[PolicyType::Ingress, PolicyType::Egress],
                vec![],
                vec![rule(
                    vec![namespaces(all())],
                    vec![named(Protocol::Udp, "dns")],
                )],
            ),
        ];
        let plan = run(&w, &policies);
        let mut matrix = Vec::new();
        for ns in NS {
            for pod in PODS {
                for to in PODS {
                    for port in [80_u16, 8080] {
                        if ingress_ok(&plan, (ns, pod), to, IPPROTO_TCP, port) {
                            matrix.push(format!("{ns}/{pod}->x/{to}:{port}"));
                        }
                    }
                }
            }
        }
        let expected_a = [
            "x/b->x/a:80",
            "y/a->x/a:80",
            "y/a->x/a:8080",
            "y/b->x/a:80",
            "y/b->x/a:8080",
            "y/c->x/a:80",
            "y/c->x/a:8080",
            "z/b->x/a:80",
        ];
        let into_a: Vec<&String> = matrix.iter().filter(|m| m.contains("->x/a:")).collect();
        assert_eq!(into_a, expected_a.iter().collect::<Vec<_>>());
        assert!(
            !matrix.iter().any(|m| m.contains("->x/b:")),
            "x/b denies all ingress"
        );
        assert_eq!(
            matrix.iter().filter(|m| m.contains("->x/c:")).count(),
            18,
            "x/c is open"
        );
        // Egress of x/b: only DNS of pods declaring it.
        assert!(egress_ok(&plan, "b", ("z", "b"), IPPROTO_UDP, 5353));
        assert!(egress_ok(&plan, "b", ("x", "b"), IPPROTO_UDP, 53));
        assert!(!egress_ok(&plan, "b", ("z", "b"), IPPROTO_UDP, 53));
        assert!(!egress_ok(&plan, "b", ("x", "a"), IPPROTO_TCP, 80));
        assert!(
            egress_ok(&plan, "a", ("z", "c"), IPPROTO_TCP, 1),
            "x/a's egress is open"
        );
        // What the verdict would report.
        assert_eq!(
            reported(&plan, 1, DIR_INGRESS, ("y", "c"), IPPROTO_TCP, 80),
            vec!["x/a-in"]
        );
        assert_eq!(
            reported(&plan, 2, DIR_EGRESS, ("z", "b"), IPPROTO_UDP, 5353),
            vec!["x/b-lockdown"]
        );
    }
}
