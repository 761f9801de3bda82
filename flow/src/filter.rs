//! Hubble's `FlowFilter`s (the `whitelist` and `blacklist` of
//! `GetFlowsRequest`), compiled once and matched on the compact [`Flow`]
//! record directly.
//!
//! [`FlowFilters::new`] checks and compiles every value of every filter (IP
//! addresses and CIDRs, ports, protocols, label selectors, node-name globs,
//! …) and names the first invalid one in its error
//! (`whitelist[0].source_ip: "10.0.0.0/33" is not an IP address or CIDR`);
//! [`FlowFilters::matches`] then decides one flow without parsing anything
//! and without allocating (except to spell the flow's UUID, and only when a
//! filter asks for UUIDs).
//!
//! This module must not build protobuf flows, read the store or talk to
//! clients; it must not panic on any input, however malformed.
//!
//! # Semantics
//!
//! The rule is Hubble's (pkg/hubble/filters): a flow is included when any
//! whitelist filter matches it (or the whitelist is empty) and no blacklist
//! filter does. Within one filter every field that is set must match (AND);
//! the values of one field are alternatives (OR); an empty repeated field is
//! unset; a filter with no field set matches every flow. Each field decides
//! what Hubble's filter would decide on the `flow.Flow` that
//! [`to_proto`](super::convert::to_proto) builds from the record, with
//! Sightline's cluster being Cilium's default cluster, `default`:
//!
//! - `uuid`: equal to [`flow_uuid`] of the flow's `seq`.
//! - `source_ip`, `destination_ip`: an address (equal) or a CIDR (contains;
//!   host bits may be set, as Go's parser allows), IPv4 or IPv6; addresses
//!   are compared parsed, not as strings. `source_ip_xlated` is checked the
//!   same way against the flow's `IP.source_xlated` (a service's reply
//!   translated back to the service address); a flow without one never
//!   matches.
//! - `source_pod`, `destination_pod`: `ns/prefix` (a pod of namespace `ns`
//!   whose name starts with `prefix`), `ns/` (any pod of `ns`), `/prefix`
//!   (any namespace, Cilium ≥ 1.15), `/` (any pod), and, as in Hubble (whose
//!   CLI says "if namespace is not provided, 'default' is used"), a value
//!   without `/` is a name prefix in namespace `default`. Text after a second
//!   `/` is ignored, as Hubble ignores it. An empty value is an error. A side
//!   without a pod never matches.
//! - `source_label`, `destination_label`: Kubernetes label selectors
//!   (`k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`, `k>1`,
//!   `k<1`, comma = AND), parsed here and validated as Kubernetes validates
//!   them (after Hubble's rewrite of `source:key` to `source.key`, with bare
//!   keys getting the `any` source). A key with a source prefix
//!   (`k8s:app`, `reserved:world`) matches labels of that source only; a bare
//!   key (or `any:key`) matches the key of any source, so `app` matches
//!   `k8s:app=web` and `world` matches `reserved:world`. The labels are the
//!   side's pod labels, or its identity labels when there is no pod (world,
//!   host, …), or none; labels are `source:key=value` (a missing `=value` is
//!   an empty value). As in Cilium, the first label with the key gives the
//!   value; `!=`, `notin` and `!k` match a side without the key. The empty
//!   selector matches every flow, as in Kubernetes.
//! - `source_service`, `destination_service`: checked like pod names,
//!   against the flow's service on that side (namespace and name); a side
//!   without a service never matches.
//! - `source_workload`, `destination_workload`: lab pods have no controllers,
//!   so a set field matches nothing.
//! - `source_cluster_name`, `destination_cluster_name`: exact names (empty is
//!   an error); a side with a pod is in cluster `default`, a side without one
//!   is in no cluster.
//! - `source_identity`, `destination_identity`: equal to the side's identity.
//! - `source_port`, `destination_port`: decimal 0–65535; only TCP, UDP and
//!   SCTP flows have ports (an ICMP flow does not match even `"0"`).
//! - `protocol`: case-insensitive `tcp`, `udp`, `sctp`, `icmpv4`, `icmpv6`,
//!   and `icmp`, which is either ICMP (as in Hubble); `vrrp` and `igmp` are
//!   accepted but Sightline does not decode them, and the L7 names `dns`,
//!   `http` and `kafka` are accepted but no flow is L7: all of these match
//!   nothing. Anything else is an error.
//! - `verdict`, `drop_reason_desc`, `traffic_direction`: the enum value.
//! - `event_type`: `type` 0 matches any type; `sub_type` only counts when
//!   `match_sub_type` is set.
//! - `reply`: the flow's `is_reply`. As in Hubble, a flow whose direction is
//!   unknown matches nothing, except a DROPPED flow, which counts as not a
//!   reply (Hubble's compatibility rule for clients such as Hubble UI that
//!   filter on `reply: false` and expect drops).
//! - `ip_version`: IPv4 = 1, IPv6 = 2, IP_NOT_USED = 0 for a flow of neither.
//! - `interface`: a flow has an interface when its ifindex is known; a
//!   non-zero `index` must equal it and a non-empty `name` must equal its
//!   name.
//! - `node_name`: Hubble's patterns on `cluster/node` (a node name without
//!   `/` is `default/<name>`). A pattern is `node` (any cluster) or
//!   `cluster/node`, either part possibly empty (anything); each part is
//!   trimmed, loses one trailing dot, is lowercased, and may hold
//!   `a-z 0-9 - _ .` and `*`, which matches any run of `a-z 0-9 - .`.
//!   Empty patterns, two slashes, two trailing dots and other characters are
//!   errors.
//! - `tcp_flags`: TCP flows only; every flag set in one `TCPFlags` value
//!   must be set in the flow. The datapath does not report NS, so (as Hubble
//!   would decide on the flow it is shown) a value asking for NS matches
//!   nothing.
//! - `trace_id`: flows carry no trace context, so only `""` matches (every
//!   flow, as in Hubble). `ip_trace_id`: no IP trace ids, nothing matches.
//! - `encrypted`: Sightline sees no encryption: `false` matches every flow,
//!   `true` none.
//! - `node_labels`: selectors as above, matched against the node's labels,
//!   which flows do not carry (none): `!k` matches, `k=v` does not.
//! - `source_fqdn`, `destination_fqdn` (checked as Hubble's FQDN patterns),
//!   `dns_query`, `http_path`, `http_url` (checked only for an empty pattern,
//!   unbalanced parentheses or brackets and a trailing backslash),
//!   `http_status_code` (`404` or a prefix like `4+`), `http_method`,
//!   `http_header`: no flow is L7, so a set field matches nothing. As in
//!   Hubble, the HTTP fields need an `event_type` filter that is empty or
//!   includes type 129 (L7).
//! - `experimental.cel_expression`: Sightline cannot evaluate CEL, and the
//!   proto says experimental filters are optional: a request using it is
//!   refused rather than answered wrongly.

use std::fmt;
use std::net::IpAddr;

use sightline_abi as abi;
use sightline_proto::flow::{self as pb, EventTypeFilter, FlowFilter, NetworkInterface, TcpFlags};

use crate::convert::flow_uuid;
use crate::numbers::VERDICT_DROPPED;
use crate::record::{Flow, Side};

pub use crate::numbers::CLUSTER_NAME;
/// `CiliumEventType.type` of L7 (access log) events.
const MESSAGE_TYPE_ACCESS_LOG: i32 = crate::numbers::MESSAGE_TYPE_ACCESS_LOG as i32;
/// The namespace of a pod filter value without one (Hubble's `default`).
const DEFAULT_NAMESPACE: &str = "default";

// ---------------------------------------------------------------------------
// Errors.

/// Where a filter value sits in a request: `whitelist[0].source_ip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// `whitelist` or `blacklist`.
    pub list: &'static str,
    /// The filter's position in its list.
    pub index: usize,
    /// The `FlowFilter` field, by its proto name.
    pub field: &'static str,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}].{}", self.list, self.index, self.field)
    }
}

/// Why a filter was refused; the message names the filter, the field and
/// the value.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{at}: {value:?} is not an IP address or CIDR")]
    Ip { at: Location, value: String },
    #[error("{at}: {value:?} is not a port number (0-65535)")]
    Port { at: Location, value: String },
    #[error(
        "{at}: unknown protocol {value:?} (expected tcp, udp, sctp, icmp, icmpv4, icmpv6, vrrp, igmp, dns, http or kafka)"
    )]
    Protocol { at: Location, value: String },
    #[error("{at}: empty name, expected [namespace/][name]")]
    EmptyName { at: Location },
    #[error("{at}: empty cluster name")]
    EmptyClusterName { at: Location },
    #[error("{at}: {value:?} is not a label selector: {reason}")]
    Selector { at: Location, value: String, reason: String },
    #[error("{at}: {value:?} is not a node name pattern: {reason}")]
    NodeName { at: Location, value: String, reason: String },
    #[error("{at}: {value:?} is not an FQDN pattern: {reason}")]
    Fqdn { at: Location, value: String, reason: String },
    #[error("{at}: {value:?} is not a regular expression: {reason}")]
    Regex { at: Location, value: String, reason: &'static str },
    #[error("{at}: {value:?} is not an HTTP status code (e.g. \"404\") or prefix (e.g. \"4+\")")]
    HttpStatusCode { at: Location, value: String },
    #[error("{at}: filtering on HTTP fields needs an event_type filter that is empty or matches L7 events (type 129)")]
    HttpEventType { at: Location },
    #[error("{at}: CEL expressions are not supported")]
    Cel { at: Location },
}

// ---------------------------------------------------------------------------
// The compiled filters.

/// A request's whitelist and blacklist, compiled.
#[derive(Debug, Default)]
pub struct FlowFilters {
    whitelist: Vec<Filter>,
    blacklist: Vec<Filter>,
}

impl FlowFilters {
    /// Checks and compiles `whitelist` and `blacklist`; the error names the
    /// first invalid value.
    pub fn new(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> Result<Self, FilterError> {
        let compile = |list: &'static str, filters: &[FlowFilter]| {
            filters.iter().enumerate().map(|(index, f)| Filter::new(f, list, index)).collect::<Result<Vec<_>, _>>()
        };
        Ok(Self { whitelist: compile("whitelist", whitelist)?, blacklist: compile("blacklist", blacklist)? })
    }

    /// Included if any whitelist filter matches (or the whitelist is empty) and no blacklist filter matches.
    #[must_use]
    pub fn matches(&self, flow: &Flow, node_name: &str) -> bool {
        self.matches_view(&Compact { flow, node_name })
    }

    /// The same decision on a `flow.Flow` protobuf (as the relay and the
    /// exporters receive flows): a protobuf built by
    /// [`to_proto`](crate::convert::to_proto) from a record is decided
    /// exactly as the record.
    #[must_use]
    pub fn matches_proto(&self, flow: &pb::Flow) -> bool {
        self.matches_view(flow)
    }

    /// Whether no filter is set (every flow passes).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.whitelist.is_empty() && self.blacklist.is_empty()
    }

    fn matches_view<F: FlowView>(&self, flow: &F) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|f| f.matches(flow)))
            && !self.blacklist.iter().any(|f| f.matches(flow))
    }
}

// ---------------------------------------------------------------------------
// What the filters read of a flow.

/// What a filter reads of a flow, whatever its form. One implementation for
/// the compact record (with the node it was seen on), one for `flow.Flow`;
/// each method answers what the protobuf that `to_proto` builds says.
trait FlowView {
    fn uuid(&self) -> std::borrow::Cow<'_, str>;
    fn ip(&self, end: End) -> Option<IpAddr>;
    /// `IP.source_xlated`, when the flow has one.
    fn ip_xlated(&self) -> Option<IpAddr>;
    /// `(namespace, name)` of the side's service, when it has one.
    fn service(&self, end: End) -> Option<(&str, &str)>;
    /// `(namespace, pod name)` when the side is a pod.
    fn pod(&self, end: End) -> Option<(&str, &str)>;
    /// The labels the side is matched on: its pod's, else its identity's.
    fn labels(&self, end: End) -> &[String];
    fn cluster(&self, end: End) -> Option<&str>;
    fn identity(&self, end: End) -> u32;
    /// The side's port, for TCP, UDP and SCTP flows only.
    fn port(&self, end: End) -> Option<u16>;
    /// The IP protocol of the L4 header Sightline decodes, if any.
    fn protocol(&self) -> Option<u8>;
    fn verdict(&self) -> i32;
    fn drop_reason(&self) -> i32;
    /// `(type, sub_type)`.
    fn event_type(&self) -> (i32, i32);
    fn traffic_direction(&self) -> i32;
    fn is_reply(&self) -> Option<bool>;
    fn ip_version(&self) -> i32;
    /// `(index, name)` when the flow has an interface.
    fn interface(&self) -> Option<(u32, &str)>;
    fn node_name(&self) -> &str;
    /// Flag bits of a TCP flow.
    fn tcp_flags(&self) -> Option<u8>;
}

/// A compact record and the node it was seen on.
struct Compact<'a> {
    flow: &'a Flow,
    node_name: &'a str,
}

impl Compact<'_> {
    fn side(&self, end: End) -> &Side {
        match end {
            End::Source => &self.flow.source,
            End::Destination => &self.flow.destination,
        }
    }
}

impl FlowView for Compact<'_> {
    fn uuid(&self) -> std::borrow::Cow<'_, str> {
        flow_uuid(self.flow.seq).into()
    }
    fn ip(&self, end: End) -> Option<IpAddr> {
        Some(self.side(end).ip)
    }
    fn ip_xlated(&self) -> Option<IpAddr> {
        self.flow.source_xlated.map(IpAddr::V4)
    }
    fn service(&self, end: End) -> Option<(&str, &str)> {
        let service = match end {
            End::Source => &self.flow.source_service,
            End::Destination => &self.flow.destination_service,
        };
        service.as_deref().map(|s| (s.namespace.as_str(), s.name.as_str())).filter(|(ns, name)| !ns.is_empty() || !name.is_empty())
    }
    fn pod(&self, end: End) -> Option<(&str, &str)> {
        self.side(end).pod.as_deref().map(|p| (p.namespace.as_str(), p.name.as_str()))
    }
    fn labels(&self, end: End) -> &[String] {
        side_labels(self.side(end))
    }
    fn cluster(&self, end: End) -> Option<&str> {
        self.side(end).pod.is_some().then_some(CLUSTER_NAME)
    }
    fn identity(&self, end: End) -> u32 {
        self.side(end).identity
    }
    fn port(&self, end: End) -> Option<u16> {
        has_ports(self.flow).then(|| self.side(end).port)
    }
    fn protocol(&self) -> Option<u8> {
        matches!(
            self.flow.protocol,
            abi::IPPROTO_TCP | abi::IPPROTO_UDP | abi::IPPROTO_SCTP | abi::IPPROTO_ICMP | abi::IPPROTO_ICMPV6
        )
        .then_some(self.flow.protocol)
    }
    fn verdict(&self) -> i32 {
        i32::from(self.flow.verdict)
    }
    fn drop_reason(&self) -> i32 {
        i32::from(self.flow.drop_reason)
    }
    fn event_type(&self) -> (i32, i32) {
        (i32::from(self.flow.event_type), i32::from(self.flow.event_sub_type))
    }
    fn traffic_direction(&self) -> i32 {
        i32::from(self.flow.traffic_direction)
    }
    fn is_reply(&self) -> Option<bool> {
        self.flow.is_reply
    }
    fn ip_version(&self) -> i32 {
        ip_version(self.flow)
    }
    fn interface(&self) -> Option<(u32, &str)> {
        (self.flow.ifindex != 0).then(|| (self.flow.ifindex, self.flow.interface.as_deref().unwrap_or("")))
    }
    fn node_name(&self) -> &str {
        self.node_name
    }
    fn tcp_flags(&self) -> Option<u8> {
        (self.flow.protocol == abi::IPPROTO_TCP).then_some(self.flow.tcp_flags)
    }
}

fn endpoint(flow: &pb::Flow, end: End) -> Option<&pb::Endpoint> {
    match end {
        End::Source => flow.source.as_ref(),
        End::Destination => flow.destination.as_ref(),
    }
}

fn l4(flow: &pb::Flow) -> Option<&pb::layer4::Protocol> {
    flow.l4.as_ref().and_then(|l| l.protocol.as_ref())
}

impl FlowView for pb::Flow {
    fn uuid(&self) -> std::borrow::Cow<'_, str> {
        self.uuid.as_str().into()
    }
    fn ip(&self, end: End) -> Option<IpAddr> {
        let ip = self.ip.as_ref()?;
        match end {
            End::Source => ip.source.parse().ok(),
            End::Destination => ip.destination.parse().ok(),
        }
    }
    fn ip_xlated(&self) -> Option<IpAddr> {
        self.ip.as_ref()?.source_xlated.parse().ok()
    }
    fn service(&self, end: End) -> Option<(&str, &str)> {
        let service = match end {
            End::Source => self.source_service.as_ref(),
            End::Destination => self.destination_service.as_ref(),
        };
        service.map(|s| (s.namespace.as_str(), s.name.as_str())).filter(|(ns, name)| !ns.is_empty() || !name.is_empty())
    }
    fn pod(&self, end: End) -> Option<(&str, &str)> {
        endpoint(self, end).filter(|e| !e.pod_name.is_empty()).map(|e| (e.namespace.as_str(), e.pod_name.as_str()))
    }
    fn labels(&self, end: End) -> &[String] {
        endpoint(self, end).map_or(&[], |e| e.labels.as_slice())
    }
    fn cluster(&self, end: End) -> Option<&str> {
        endpoint(self, end).map(|e| e.cluster_name.as_str()).filter(|c| !c.is_empty())
    }
    fn identity(&self, end: End) -> u32 {
        endpoint(self, end).map_or(0, |e| e.identity)
    }
    fn port(&self, end: End) -> Option<u16> {
        use pb::layer4::Protocol;
        let (source, destination) = match l4(self)? {
            Protocol::Tcp(t) => (t.source_port, t.destination_port),
            Protocol::Udp(u) => (u.source_port, u.destination_port),
            Protocol::Sctp(s) => (s.source_port, s.destination_port),
            _ => return None,
        };
        u16::try_from(match end {
            End::Source => source,
            End::Destination => destination,
        })
        .ok()
    }
    fn protocol(&self) -> Option<u8> {
        use pb::layer4::Protocol;
        Some(match l4(self)? {
            Protocol::Tcp(_) => abi::IPPROTO_TCP,
            Protocol::Udp(_) => abi::IPPROTO_UDP,
            Protocol::Sctp(_) => abi::IPPROTO_SCTP,
            Protocol::IcmPv4(_) => abi::IPPROTO_ICMP,
            Protocol::IcmPv6(_) => abi::IPPROTO_ICMPV6,
            _ => return None,
        })
    }
    fn verdict(&self) -> i32 {
        self.verdict
    }
    fn drop_reason(&self) -> i32 {
        self.drop_reason_desc
    }
    fn event_type(&self) -> (i32, i32) {
        self.event_type.as_ref().map_or((0, 0), |e| (e.r#type, e.sub_type))
    }
    fn traffic_direction(&self) -> i32 {
        self.traffic_direction
    }
    fn is_reply(&self) -> Option<bool> {
        self.is_reply
    }
    fn ip_version(&self) -> i32 {
        self.ip.as_ref().map_or(0, |ip| ip.ip_version)
    }
    fn interface(&self) -> Option<(u32, &str)> {
        self.interface.as_ref().map(|i| (i.index, i.name.as_str()))
    }
    fn node_name(&self) -> &str {
        &self.node_name
    }
    fn tcp_flags(&self) -> Option<u8> {
        let pb::layer4::Protocol::Tcp(tcp) = l4(self)? else { return None };
        Some(tcp.flags.as_ref().map_or(0, tcp_bits))
    }
}

/// The flag bits of a `TCPFlags` value (NS has no bit: the datapath never
/// reports it).
fn tcp_bits(f: &TcpFlags) -> u8 {
    [
        (f.fin, abi::TCP_FIN),
        (f.syn, abi::TCP_SYN),
        (f.rst, abi::TCP_RST),
        (f.psh, abi::TCP_PSH),
        (f.ack, abi::TCP_ACK),
        (f.urg, abi::TCP_URG),
        (f.ece, abi::TCP_ECE),
        (f.cwr, abi::TCP_CWR),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .fold(0, |mask, (_, bit)| mask | bit)
}

/// One `FlowFilter`: every check must pass (none: every flow passes).
#[derive(Debug)]
struct Filter {
    checks: Vec<Check>,
}

/// Which side of a flow a check looks at.
#[derive(Clone, Copy, Debug)]
enum End {
    Source,
    Destination,
}


/// One set field of a filter, compiled.
#[derive(Debug)]
enum Check {
    /// The field cannot match any flow Sightline produces.
    Never,
    Uuid(Vec<String>),
    Ip(End, Vec<IpNet>),
    /// `source_ip_xlated`.
    IpXlated(Vec<IpNet>),
    Pod(End, Vec<PodName>),
    Service(End, Vec<PodName>),
    Label(End, Vec<Selector>),
    /// `cluster_name` listing `default`: the side has a pod.
    InCluster(End),
    Identity(End, Vec<u32>),
    Port(End, Vec<u16>),
    Protocol(Vec<u8>),
    Verdict(Vec<i32>),
    DropReason(Vec<i32>),
    EventType(Vec<EventType>),
    TrafficDirection(Vec<i32>),
    Reply(Vec<bool>),
    IpVersion(Vec<i32>),
    Interface(Vec<Interface>),
    NodeName(Vec<NodePattern>),
    /// Masks of flags that must all be set.
    TcpFlags(Vec<u8>),
}

impl Filter {
    fn new(f: &FlowFilter, list: &'static str, index: usize) -> Result<Self, FilterError> {
        let at = |field: &'static str| Location { list, index, field };
        let mut checks = Vec::new();
        // Set when a field can never match: the filter matches nothing, but
        // every other field is still validated.
        let mut never = false;

        if !f.uuid.is_empty() {
            checks.push(Check::Uuid(f.uuid.clone()));
        }
        for (end, values, field) in
            [(End::Source, &f.source_ip, "source_ip"), (End::Destination, &f.destination_ip, "destination_ip")]
        {
            if !values.is_empty() {
                checks.push(Check::Ip(end, ips(values, at(field))?));
            }
        }
        if !f.source_ip_xlated.is_empty() {
            checks.push(Check::IpXlated(ips(&f.source_ip_xlated, at("source_ip_xlated"))?));
        }
        for (end, values, field) in
            [(End::Source, &f.source_pod, "source_pod"), (End::Destination, &f.destination_pod, "destination_pod")]
        {
            if !values.is_empty() {
                checks.push(Check::Pod(end, names(values, at(field))?));
            }
        }
        for (end, values, field) in [
            (End::Source, &f.source_service, "source_service"),
            (End::Destination, &f.destination_service, "destination_service"),
        ] {
            if !values.is_empty() {
                checks.push(Check::Service(end, names(values, at(field))?));
            }
        }
        for (end, values, field) in [
            (End::Source, &f.source_label, "source_label"),
            (End::Destination, &f.destination_label, "destination_label"),
        ] {
            if !values.is_empty() {
                checks.push(Check::Label(end, selectors(values, at(field))?));
            }
        }
        if !f.source_workload.is_empty() || !f.destination_workload.is_empty() {
            never = true;
        }
        for (end, values, field) in [
            (End::Source, &f.source_cluster_name, "source_cluster_name"),
            (End::Destination, &f.destination_cluster_name, "destination_cluster_name"),
        ] {
            if values.iter().any(String::is_empty) {
                return Err(FilterError::EmptyClusterName { at: at(field) });
            }
            if !values.is_empty() {
                if values.iter().any(|v| v == CLUSTER_NAME) {
                    checks.push(Check::InCluster(end));
                } else {
                    never = true;
                }
            }
        }
        for (end, values) in [(End::Source, &f.source_identity), (End::Destination, &f.destination_identity)] {
            if !values.is_empty() {
                checks.push(Check::Identity(end, values.clone()));
            }
        }
        for (end, values, field) in
            [(End::Source, &f.source_port, "source_port"), (End::Destination, &f.destination_port, "destination_port")]
        {
            if !values.is_empty() {
                checks.push(Check::Port(end, ports(values, at(field))?));
            }
        }
        if !f.protocol.is_empty() {
            checks.push(Check::Protocol(protocols(&f.protocol, at("protocol"))?));
        }
        if !f.verdict.is_empty() {
            checks.push(Check::Verdict(f.verdict.clone()));
        }
        if !f.drop_reason_desc.is_empty() {
            checks.push(Check::DropReason(f.drop_reason_desc.clone()));
        }
        if !f.event_type.is_empty() {
            checks.push(Check::EventType(f.event_type.iter().map(EventType::new).collect()));
        }
        if !f.traffic_direction.is_empty() {
            checks.push(Check::TrafficDirection(f.traffic_direction.clone()));
        }
        if !f.reply.is_empty() {
            checks.push(Check::Reply(f.reply.clone()));
        }
        if !f.ip_version.is_empty() {
            checks.push(Check::IpVersion(f.ip_version.clone()));
        }
        if !f.interface.is_empty() {
            checks.push(Check::Interface(f.interface.iter().map(Interface::new).collect()));
        }
        if !f.node_name.is_empty() {
            let patterns = f
                .node_name
                .iter()
                .map(|v| {
                    NodePattern::parse(v).map_err(|reason| FilterError::NodeName {
                        at: at("node_name"),
                        value: v.clone(),
                        reason,
                    })
                })
                .collect::<Result<_, _>>()?;
            checks.push(Check::NodeName(patterns));
        }
        if !f.tcp_flags.is_empty() {
            checks.push(Check::TcpFlags(f.tcp_flags.iter().filter_map(tcp_mask).collect()));
        }
        if !f.trace_id.is_empty() && !f.trace_id.iter().any(String::is_empty) {
            never = true;
        }
        if !f.ip_trace_id.is_empty() {
            never = true;
        }
        if !f.encrypted.is_empty() && !f.encrypted.contains(&false) {
            never = true;
        }
        if !f.node_labels.is_empty() && !selectors(&f.node_labels, at("node_labels"))?.iter().any(|s| s.matches(&[])) {
            never = true;
        }
        for (values, field) in [(&f.source_fqdn, "source_fqdn"), (&f.destination_fqdn, "destination_fqdn")] {
            for v in values {
                fqdn_pattern(v).map_err(|reason| FilterError::Fqdn { at: at(field), value: v.clone(), reason })?;
            }
            never |= !values.is_empty();
        }
        for (values, field) in [(&f.dns_query, "dns_query"), (&f.http_path, "http_path"), (&f.http_url, "http_url")] {
            for v in values {
                check_regex(v).map_err(|reason| FilterError::Regex { at: at(field), value: v.clone(), reason })?;
            }
            never |= !values.is_empty();
        }
        for v in &f.http_status_code {
            if !is_http_status(v) {
                return Err(FilterError::HttpStatusCode { at: at("http_status_code"), value: v.clone() });
            }
        }
        let l7_events = f.event_type.is_empty() || f.event_type.iter().any(|e| e.r#type == MESSAGE_TYPE_ACCESS_LOG);
        for (set, field) in [
            (!f.http_status_code.is_empty(), "http_status_code"),
            (!f.http_method.is_empty(), "http_method"),
            (!f.http_path.is_empty(), "http_path"),
            (!f.http_url.is_empty(), "http_url"),
        ] {
            if set && !l7_events {
                return Err(FilterError::HttpEventType { at: at(field) });
            }
            never |= set;
        }
        never |= !f.http_header.is_empty();
        if f.experimental.as_ref().is_some_and(|e| !e.cel_expression.is_empty()) {
            return Err(FilterError::Cel { at: at("experimental.cel_expression") });
        }

        if never {
            checks = vec![Check::Never];
        }
        Ok(Self { checks })
    }

    fn matches<F: FlowView>(&self, flow: &F) -> bool {
        self.checks.iter().all(|c| c.matches(flow))
    }
}

impl Check {
    fn matches<F: FlowView>(&self, flow: &F) -> bool {
        match self {
            Check::Never => false,
            Check::Uuid(ids) => {
                let id = flow.uuid();
                ids.iter().any(|i| *i == *id)
            }
            Check::Ip(end, nets) => flow.ip(*end).is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
            Check::IpXlated(nets) => flow.ip_xlated().is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
            Check::Pod(end, names) => {
                flow.pod(*end).is_some_and(|(namespace, name)| names.iter().any(|n| n.matches(namespace, name)))
            }
            Check::Service(end, names) => {
                flow.service(*end).is_some_and(|(namespace, name)| names.iter().any(|n| n.matches(namespace, name)))
            }
            Check::Label(end, selectors) => {
                let labels = flow.labels(*end);
                selectors.iter().any(|s| s.matches(labels))
            }
            Check::InCluster(end) => flow.cluster(*end) == Some(CLUSTER_NAME),
            Check::Identity(end, ids) => ids.contains(&flow.identity(*end)),
            Check::Port(end, ports) => flow.port(*end).is_some_and(|p| ports.contains(&p)),
            Check::Protocol(protocols) => flow.protocol().is_some_and(|p| protocols.contains(&p)),
            Check::Verdict(v) => v.contains(&flow.verdict()),
            Check::DropReason(v) => v.contains(&flow.drop_reason()),
            Check::EventType(types) => types.iter().any(|t| t.matches(flow.event_type())),
            Check::TrafficDirection(v) => v.contains(&flow.traffic_direction()),
            Check::Reply(values) => {
                let reply = match flow.is_reply() {
                    Some(reply) => reply,
                    None if flow.verdict() == i32::from(VERDICT_DROPPED) => false,
                    None => return false,
                };
                values.contains(&reply)
            }
            Check::IpVersion(v) => v.contains(&flow.ip_version()),
            Check::Interface(ifaces) => flow.interface().is_some_and(|i| ifaces.iter().any(|f| f.matches(i))),
            Check::NodeName(patterns) => patterns.iter().any(|p| p.matches(flow.node_name())),
            Check::TcpFlags(masks) => flow.tcp_flags().is_some_and(|bits| masks.iter().any(|&m| m & !bits == 0)),
        }
    }
}

/// The labels a side is matched on: its pod's, else its identity's, else none.
fn side_labels(side: &Side) -> &[String] {
    match (&side.pod, &side.identity_labels) {
        (Some(pod), _) => &pod.labels,
        (None, Some(labels)) => labels,
        (None, None) => &[],
    }
}

/// Whether the flow's L4 header has ports (TCP, UDP, SCTP).
fn has_ports(flow: &Flow) -> bool {
    matches!(flow.protocol, abi::IPPROTO_TCP | abi::IPPROTO_UDP | abi::IPPROTO_SCTP)
}

/// The flow's `IPVersion` value.
fn ip_version(flow: &Flow) -> i32 {
    match flow.ip_version {
        4 => 1,
        6 => 2,
        _ => 0,
    }
}

// ---------------------------------------------------------------------------
// Small fields.

#[derive(Debug)]
struct EventType {
    r#type: i32,
    sub_type: Option<i32>,
}

impl EventType {
    fn new(f: &EventTypeFilter) -> Self {
        Self { r#type: f.r#type, sub_type: f.match_sub_type.then_some(f.sub_type) }
    }

    fn matches(&self, (r#type, sub_type): (i32, i32)) -> bool {
        (self.r#type == 0 || self.r#type == r#type) && self.sub_type.is_none_or(|s| s == sub_type)
    }
}

#[derive(Debug)]
struct Interface {
    /// 0: any.
    index: u32,
    /// Empty: any.
    name: String,
}

impl Interface {
    fn new(i: &NetworkInterface) -> Self {
        Self { index: i.index, name: i.name.clone() }
    }

    fn matches(&self, (index, name): (u32, &str)) -> bool {
        (self.index == 0 || self.index == index) && (self.name.is_empty() || self.name == name)
    }
}

/// The mask of a `TCPFlags` value; `None` when it asks for NS, which no
/// flow carries.
fn tcp_mask(f: &TcpFlags) -> Option<u8> {
    if f.ns {
        return None;
    }
    let bits = [
        (f.fin, abi::TCP_FIN),
        (f.syn, abi::TCP_SYN),
        (f.rst, abi::TCP_RST),
        (f.psh, abi::TCP_PSH),
        (f.ack, abi::TCP_ACK),
        (f.urg, abi::TCP_URG),
        (f.ece, abi::TCP_ECE),
        (f.cwr, abi::TCP_CWR),
    ];
    Some(bits.iter().filter(|(set, _)| *set).fold(0, |mask, (_, bit)| mask | bit))
}

fn ports(values: &[String], at: Location) -> Result<Vec<u16>, FilterError> {
    values
        .iter()
        .map(|v| {
            // Digits only: Rust would also take "+80", Go's ParseUint does not.
            v.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| v.parse::<u16>().ok())
                .flatten()
                .ok_or_else(|| FilterError::Port { at, value: v.clone() })
        })
        .collect()
}

fn protocols(values: &[String], at: Location) -> Result<Vec<u8>, FilterError> {
    let mut out = Vec::new();
    for v in values {
        match v.to_ascii_lowercase().as_str() {
            "tcp" => out.push(abi::IPPROTO_TCP),
            "udp" => out.push(abi::IPPROTO_UDP),
            "sctp" => out.push(abi::IPPROTO_SCTP),
            "icmp" => out.extend([abi::IPPROTO_ICMP, abi::IPPROTO_ICMPV6]),
            "icmpv4" => out.push(abi::IPPROTO_ICMP),
            "icmpv6" => out.push(abi::IPPROTO_ICMPV6),
            // Known, but never in a Sightline flow.
            "vrrp" | "igmp" | "dns" | "http" | "kafka" => {}
            _ => return Err(FilterError::Protocol { at, value: v.clone() }),
        }
    }
    Ok(out)
}

fn is_http_status(v: &str) -> bool {
    let first = |b: u8| (b'1'..=b'5').contains(&b);
    match v.as_bytes() {
        [a, b'+'] => first(*a),
        [a, b, b'+'] => first(*a) && b.is_ascii_digit(),
        [a, b, c] => first(*a) && b.is_ascii_digit() && c.is_ascii_digit(),
        _ => false,
    }
}

/// The few regular-expression mistakes worth catching without a regex
/// engine: an empty pattern, a trailing backslash, unbalanced parentheses or
/// brackets.
fn check_regex(re: &str) -> Result<(), &'static str> {
    if re.is_empty() {
        return Err("empty pattern");
    }
    let mut depth = 0usize;
    let mut in_class = false;
    let mut chars = re.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next().ok_or("trailing backslash")?;
            }
            '[' if !in_class => {
                in_class = true;
                // `[]…]` and `[^]…]`: the first `]` is literal.
                if chars.peek() == Some(&'^') {
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    chars.next();
                }
            }
            ']' if in_class => in_class = false,
            '(' if !in_class => depth += 1,
            ')' if !in_class => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return Err("unmatched ')'"),
            },
            _ => {}
        }
    }
    if in_class {
        return Err("missing ']'");
    }
    if depth > 0 {
        return Err("missing ')'");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// IP addresses and CIDRs.

/// An address and prefix length (the full width for a single address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IpNet {
    addr: IpAddr,
    bits: u8,
}

impl IpNet {
    fn parse(s: &str) -> Option<Self> {
        let width = |a: IpAddr| if a.is_ipv4() { 32 } else { 128 };
        match s.split_once('/') {
            None => s.parse::<IpAddr>().ok().map(|addr| Self { addr, bits: width(addr) }),
            Some((addr, bits)) => {
                let addr = addr.parse::<IpAddr>().ok()?;
                if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let bits = bits.parse::<u8>().ok()?;
                (bits <= width(addr)).then_some(Self { addr, bits })
            }
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, width) = match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => (u128::from(u32::from(net)), u128::from(u32::from(ip)), 32),
            (IpAddr::V6(net), IpAddr::V6(ip)) => (u128::from(net), u128::from(ip), 128),
            _ => return false,
        };
        // A shift by the full width (prefix length 0) keeps nothing.
        (net ^ ip).checked_shr(width - u32::from(self.bits)).unwrap_or(0) == 0
    }
}

fn ips(values: &[String], at: Location) -> Result<Vec<IpNet>, FilterError> {
    values.iter().map(|v| IpNet::parse(v).ok_or_else(|| FilterError::Ip { at, value: v.clone() })).collect()
}

// ---------------------------------------------------------------------------
// Pod (and service) names.

#[derive(Debug, PartialEq, Eq)]
struct PodName {
    /// `None`: any namespace.
    namespace: Option<String>,
    /// Empty: any name.
    prefix: String,
}

impl PodName {
    fn parse(s: &str) -> Option<Self> {
        if s.is_empty() {
            return None;
        }
        let mut parts = s.split('/');
        let first = parts.next().unwrap_or_default();
        Some(match parts.next() {
            None => Self { namespace: Some(DEFAULT_NAMESPACE.to_owned()), prefix: first.to_owned() },
            Some(name) => Self { namespace: (!first.is_empty()).then(|| first.to_owned()), prefix: name.to_owned() },
        })
    }

    fn matches(&self, namespace: &str, name: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace) && name.starts_with(self.prefix.as_str())
    }
}

fn names(values: &[String], at: Location) -> Result<Vec<PodName>, FilterError> {
    values.iter().map(|v| PodName::parse(v).ok_or(FilterError::EmptyName { at })).collect()
}

// ---------------------------------------------------------------------------
// Label selectors.

/// A Kubernetes label selector: every requirement must hold.
#[derive(Debug)]
struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Debug)]
struct Requirement {
    key: LabelKey,
    op: Op,
}

#[derive(Debug)]
struct LabelKey {
    /// `None`: any source.
    source: Option<String>,
    name: String,
}

#[derive(Debug)]
enum Op {
    Exists,
    DoesNotExist,
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

impl Selector {
    fn matches(&self, labels: &[String]) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    fn matches(&self, labels: &[String]) -> bool {
        let value = self.key.lookup(labels);
        match (&self.op, value) {
            (Op::Exists, v) => v.is_some(),
            (Op::DoesNotExist, v) => v.is_none(),
            (Op::In(set), Some(v)) => set.iter().any(|s| s == v),
            (Op::NotIn(set), Some(v)) => !set.iter().any(|s| s == v),
            (Op::NotIn(_), None) => true,
            (Op::Gt(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v > *n),
            (Op::Lt(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v < *n),
            (Op::In(_) | Op::Gt(_) | Op::Lt(_), None) => false,
        }
    }
}

impl LabelKey {
    /// The value of the first label with this key.
    fn lookup<'a>(&self, labels: &'a [String]) -> Option<&'a str> {
        labels.iter().find_map(|label| {
            let (source, key, value) = split_label(label);
            (key == self.name && self.source.as_deref().is_none_or(|s| s == source)).then_some(value)
        })
    }
}

/// Cilium's `source:key=value` (no source: `unspec`; no value: empty).
fn split_label(label: &str) -> (&str, &str, &str) {
    let (source, rest) = label.split_once(':').unwrap_or(("unspec", label));
    let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
    (source, key, value)
}

fn selectors(values: &[String], at: Location) -> Result<Vec<Selector>, FilterError> {
    values
        .iter()
        .map(|v| parse_selector(v).map_err(|reason| FilterError::Selector { at, value: v.clone(), reason }))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token<'a> {
    Ident(&'a str),
    /// `!`
    Not,
    /// `=`
    Eq,
    /// `==`
    DoubleEq,
    /// `!=`
    NotEq,
    /// `>`
    Gt,
    /// `<`
    Lt,
    Open,
    Close,
    Comma,
}

/// Splits a selector as the Kubernetes lexer does: whitespace separates,
/// `! != = == > < ( ) ,` are symbols, anything else makes identifiers.
fn lex(s: &str) -> Vec<Token<'_>> {
    let bytes = s.as_bytes();
    let special = |b: u8| matches!(b, b'!' | b'=' | b'>' | b'<' | b'(' | b')' | b',' | b' ' | b'\t' | b'\r' | b'\n');
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let next_is_eq = bytes.get(i + 1) == Some(&b'=');
        let (token, len) = match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'!' if next_is_eq => (Token::NotEq, 2),
            b'!' => (Token::Not, 1),
            b'=' if next_is_eq => (Token::DoubleEq, 2),
            b'=' => (Token::Eq, 1),
            b'>' => (Token::Gt, 1),
            b'<' => (Token::Lt, 1),
            b'(' => (Token::Open, 1),
            b')' => (Token::Close, 1),
            b',' => (Token::Comma, 1),
            _ => {
                let rest = bytes.get(i..).unwrap_or_default();
                let len = rest.iter().position(|&b| special(b)).unwrap_or(rest.len());
                // Both ends are at ASCII bytes or the end: char boundaries.
                (Token::Ident(s.get(i..i + len).unwrap_or_default()), len)
            }
        };
        out.push(token);
        i += len;
    }
    out
}

fn describe(token: Option<Token<'_>>) -> String {
    let text = match token {
        None => return "the end".to_owned(),
        Some(Token::Ident(s)) => s,
        Some(Token::Not) => "!",
        Some(Token::Eq) => "=",
        Some(Token::DoubleEq) => "==",
        Some(Token::NotEq) => "!=",
        Some(Token::Gt) => ">",
        Some(Token::Lt) => "<",
        Some(Token::Open) => "(",
        Some(Token::Close) => ")",
        Some(Token::Comma) => ",",
    };
    format!("'{text}'")
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Token<'a>> {
        self.tokens.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<Token<'a>> {
        let t = self.peek();
        self.pos += 1;
        t
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        match self.next() {
            Some(Token::Not) => match self.next() {
                Some(Token::Ident(k)) => Ok(Requirement { key: parse_key(k)?, op: Op::DoesNotExist }),
                t => Err(format!("expected a label key after '!', found {}", describe(t))),
            },
            Some(Token::Ident(k)) => {
                let key = parse_key(k)?;
                let op = match self.peek() {
                    None | Some(Token::Comma) => return Ok(Requirement { key, op: Op::Exists }),
                    Some(Token::Eq | Token::DoubleEq) => {
                        self.next();
                        Op::In(vec![self.exact_value()?])
                    }
                    Some(Token::NotEq) => {
                        self.next();
                        Op::NotIn(vec![self.exact_value()?])
                    }
                    Some(Token::Ident("in")) => {
                        self.next();
                        Op::In(self.values()?)
                    }
                    Some(Token::Ident("notin")) => {
                        self.next();
                        Op::NotIn(self.values()?)
                    }
                    Some(Token::Gt) => {
                        self.next();
                        Op::Gt(self.integer()?)
                    }
                    Some(Token::Lt) => {
                        self.next();
                        Op::Lt(self.integer()?)
                    }
                    t => {
                        return Err(format!(
                            "expected an operator (=, ==, !=, in, notin, >, <), found {}",
                            describe(t)
                        ));
                    }
                };
                Ok(Requirement { key, op })
            }
            t => Err(format!("expected a label key or '!', found {}", describe(t))),
        }
    }

    /// The value after `=`, `==` or `!=`; nothing (before `,` or the end) is
    /// the empty value.
    fn exact_value(&mut self) -> Result<String, String> {
        match self.peek() {
            None | Some(Token::Comma) => Ok(String::new()),
            Some(Token::Ident(v)) => {
                self.next();
                check_value(v)?;
                Ok(v.to_owned())
            }
            t => Err(format!("expected a value, found {}", describe(t))),
        }
    }

    /// `( v, … )` after `in`/`notin`; as in Kubernetes an item may be empty
    /// (`()`, `(a,)`).
    fn values(&mut self) -> Result<Vec<String>, String> {
        match self.next() {
            Some(Token::Open) => {}
            t => return Err(format!("expected '(', found {}", describe(t))),
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Token::Ident(v)) => {
                    check_value(v)?;
                    values.push(v.to_owned());
                    match self.next() {
                        Some(Token::Comma) => {}
                        Some(Token::Close) => return Ok(values),
                        t => return Err(format!("expected ',' or ')', found {}", describe(t))),
                    }
                }
                Some(Token::Comma) => values.push(String::new()),
                Some(Token::Close) => {
                    values.push(String::new());
                    return Ok(values);
                }
                t => return Err(format!("expected a value or ')', found {}", describe(t))),
            }
        }
    }

    /// The integer after `>` or `<` (a label value, so not negative).
    fn integer(&mut self) -> Result<i64, String> {
        match self.next() {
            Some(Token::Ident(v)) => {
                check_value(v)?;
                v.parse().map_err(|_| format!("'>' and '<' need an integer, found '{v}'"))
            }
            t => Err(format!("expected an integer, found {}", describe(t))),
        }
    }
}

fn parse_selector(s: &str) -> Result<Selector, String> {
    let mut p = Parser { tokens: lex(s), pos: 0 };
    let mut requirements = Vec::new();
    if p.peek().is_none() {
        return Ok(Selector { requirements });
    }
    loop {
        requirements.push(p.requirement()?);
        match p.next() {
            None => return Ok(Selector { requirements }),
            Some(Token::Comma) => {
                if !matches!(p.peek(), Some(Token::Ident(_) | Token::Not)) {
                    return Err(format!("expected a requirement after ',', found {}", describe(p.peek())));
                }
            }
            t => return Err(format!("expected ',' or the end, found {}", describe(t))),
        }
    }
}

/// A selector key: `source:key` or a bare key (any source). Validated as
/// Kubernetes validates the key Hubble rewrites it to (`source.key`,
/// `any.key`).
fn parse_key(k: &str) -> Result<LabelKey, String> {
    let (source, name) = k.split_once(':').unwrap_or(("any", k));
    check_qualified_name(&format!("{source}.{name}")).map_err(|why| format!("invalid label key '{k}': {why}"))?;
    Ok(LabelKey { source: (source != "any").then(|| source.to_owned()), name: name.to_owned() })
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// Kubernetes' qualified name: `[prefix/]name`, the prefix a DNS-1123
/// subdomain, the name at most 63 of `A-Za-z0-9-_.`, alphanumeric at both
/// ends.
fn check_qualified_name(s: &str) -> Result<(), &'static str> {
    let mut parts = s.split('/');
    let first = parts.next().unwrap_or_default();
    let (prefix, name) = match (parts.next(), parts.next()) {
        (None, _) => (None, first),
        (Some(name), None) => (Some(first), name),
        (Some(_), Some(_)) => return Err("more than one '/'"),
    };
    if let Some(prefix) = prefix {
        let lower_alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let label_ok = |l: &str| {
            let b = l.as_bytes();
            matches!((b.first(), b.last()), (Some(&f), Some(&l)) if lower_alnum(f) && lower_alnum(l))
                && b.iter().all(|&c| lower_alnum(c) || c == b'-')
        };
        if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(label_ok) {
            return Err("the prefix must be a lowercase DNS subdomain");
        }
    }
    if name.is_empty() || name.len() > 63 {
        return Err("the name must be 1 to 63 characters");
    }
    if !name_chars_ok(name) {
        return Err("the name must be alphanumeric, '-', '_' or '.', with an alphanumeric first and last character");
    }
    Ok(())
}

/// `A-Za-z0-9-_.`, alphanumeric at both ends (non-empty).
fn name_chars_ok(s: &str) -> bool {
    let b = s.as_bytes();
    matches!((b.first(), b.last()), (Some(&f), Some(&l)) if is_alnum(f) && is_alnum(l))
        && b.iter().all(|&c| is_alnum(c) || matches!(c, b'-' | b'_' | b'.'))
}

/// Kubernetes' label value: empty, or at most 63 of `A-Za-z0-9-_.`,
/// alphanumeric at both ends.
fn check_value(v: &str) -> Result<(), String> {
    if v.is_empty() || (v.len() <= 63 && name_chars_ok(v)) {
        Ok(())
    } else {
        Err(format!(
            "invalid value '{v}': at most 63 characters, alphanumeric, '-', '_' or '.', with an alphanumeric first and last character"
        ))
    }
}

// ---------------------------------------------------------------------------
// Node names and FQDN patterns.

/// `cluster/node`: each part a pattern, `None` meaning any FQDN-like name.
#[derive(Debug)]
struct NodePattern {
    cluster: Option<Glob>,
    node: Option<Glob>,
}

impl NodePattern {
    fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty pattern".to_owned());
        }
        let mut parts = s.split('/');
        let first = parts.next().unwrap_or_default();
        let (cluster, node) = match (parts.next(), parts.next()) {
            (None, _) => ("", first),
            (Some(node), None) => (first, node),
            (Some(_), Some(_)) => return Err("too many slashes".to_owned()),
        };
        let part = |p: &str| if p.is_empty() { Ok(None) } else { fqdn_pattern(p).map(Some) };
        Ok(Self { cluster: part(cluster)?, node: part(node)? })
    }

    fn matches(&self, node_name: &str) -> bool {
        if node_name.is_empty() {
            return false;
        }
        let (cluster, node) = node_name.split_once('/').unwrap_or((CLUSTER_NAME, node_name));
        let part = |pattern: &Option<Glob>, text: &str| match pattern {
            Some(glob) => glob.matches(text),
            None => is_fqdn(text),
        };
        part(&self.cluster, cluster) && part(&self.node, node)
    }
}

/// A canonical FQDN pattern: `a-z 0-9 - _ .` and `*`, which matches any run
/// of `a-z 0-9 - .` (Hubble's `[-.0-9a-z]*`).
#[derive(Debug, PartialEq, Eq)]
struct Glob(String);

/// Hubble's FQDN pattern: trimmed, one trailing dot dropped, lowercased.
fn fqdn_pattern(p: &str) -> Result<Glob, String> {
    let p = p.trim();
    let p = p.strip_suffix('.').unwrap_or(p).to_lowercase();
    if p.is_empty() {
        return Err("empty pattern".to_owned());
    }
    if p.ends_with('.') {
        return Err("multiple trailing dots".to_owned());
    }
    if let Some(c) = p.chars().find(|c| !matches!(c, '.' | '*' | '-' | '_' | '0'..='9' | 'a'..='z')) {
        return Err(format!("invalid character {c:?}"));
    }
    Ok(Glob(p))
}

/// What `*` matches.
fn in_star_class(b: u8) -> bool {
    matches!(b, b'-' | b'.' | b'0'..=b'9' | b'a'..=b'z')
}

/// Hubble's `[-0-9_a-z]+(\.[-0-9_a-z]+)*`.
fn is_fqdn(s: &str) -> bool {
    s.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| matches!(b, b'-' | b'_' | b'0'..=b'9' | b'a'..=b'z')))
}

impl Glob {
    fn matches(&self, text: &str) -> bool {
        // `*` matches everything a literal may be except `_`; so every `_`
        // of the text must meet a literal `_`, and between underscores the
        // stars match freely.
        if !text.bytes().all(|b| in_star_class(b) || b == b'_') {
            return false;
        }
        let mut patterns = self.0.split('_');
        let mut texts = text.split('_');
        loop {
            match (patterns.next(), texts.next()) {
                (None, None) => return true,
                (Some(p), Some(t)) if glob_segment(p.as_bytes(), t.as_bytes()) => {}
                _ => return false,
            }
        }
    }
}

/// Classic glob matching where `*` matches any run of bytes, with one
/// backtracking point (the last star).
fn glob_segment(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = text.get(t) {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&l) if l == c => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).is_some_and(|rest| rest.iter().all(|&b| b == b'*'))
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sightline_proto::flow::{HttpHeader, Workload, flow_filter::Experimental};

    use super::*;
    use crate::record::PodMeta;

    const NODE: &str = "kind-worker";

    fn pod(namespace: &str, name: &str, labels: &[&str]) -> Arc<PodMeta> {
        Arc::new(PodMeta {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            endpoint_id: 42,
            identity: 0,
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            node: NODE.to_owned(),
        })
    }

    fn side(ip: &str, port: u16, identity: u32, pod: Option<Arc<PodMeta>>) -> Side {
        Side { ip: ip.parse().unwrap(), port, identity, pod, identity_labels: None }
    }

    /// TCP SYN|ACK, default/client-abc:40000 → web/server-xyz:80, forwarded
    /// trace on eth0, egress, not a reply.
    fn flow() -> Flow {
        Flow {
            time_ns: 1_700_000_000_000_000_000,
            seq: 7,
            source: side(
                "10.0.0.1",
                40000,
                1234,
                Some(pod(
                    "default",
                    "client-abc",
                    &["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default", "k8s:tier=3"],
                )),
            ),
            destination: side(
                "10.0.1.2",
                80,
                5678,
                Some(pod("web", "server-xyz", &["k8s:app=server", "k8s:io.kubernetes.pod.namespace=web"])),
            ),
            trace_observation_point: 101,
            trace_reason: 2,
            is_reply: Some(false),
            traffic_direction: 2,
            tcp_flags: abi::TCP_SYN | abi::TCP_ACK,
            ifindex: 5,
            interface: Some(Arc::from("eth0")),
            ..crate::testing::flow()
        }
    }

    /// A UDP flow from the client to the world (1.1.1.1:53), dropped by
    /// policy before conntrack (`is_reply` unknown), on no known interface.
    fn world_flow() -> Flow {
        let mut f = flow();
        f.destination = Side {
            ip: "1.1.1.1".parse().unwrap(),
            port: 53,
            identity: 2,
            pod: None,
            identity_labels: Some(Arc::from(vec!["reserved:world".to_owned()])),
        };
        f.protocol = abi::IPPROTO_UDP;
        f.tcp_flags = 0;
        f.verdict = 2;
        f.drop_reason = 133;
        f.event_type = 1;
        f.event_sub_type = 133;
        f.is_reply = None;
        f.ifindex = 0;
        f.interface = None;
        f
    }

    /// An ICMPv6 echo between two addresses without pods or labels.
    fn icmp6_flow() -> Flow {
        let mut f = flow();
        f.source = side("fd00::1", 0, 2, None);
        f.destination = side("fd00::2", 0, 2, None);
        f.protocol = abi::IPPROTO_ICMPV6;
        f.tcp_flags = 0;
        f.icmp_type = 128;
        f.ip_version = 6;
        f
    }

    fn ff(set: impl FnOnce(&mut FlowFilter)) -> FlowFilter {
        let mut f = FlowFilter::default();
        set(&mut f);
        f
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    /// Whether the single whitelist filter `f` selects `flow` on `NODE`.
    fn selects(f: &FlowFilter, flow: &Flow) -> bool {
        decide(&FlowFilters::new(std::slice::from_ref(f), &[]).unwrap(), flow, NODE)
    }

    /// The filters' decision on the record, checked to be the decision on
    /// the protobuf of the record too (one engine, two views).
    fn decide(filters: &FlowFilters, flow: &Flow, node: &str) -> bool {
        let compact = filters.matches(flow, node);
        let proto = filters.matches_proto(&crate::to_proto(flow, node, None));
        assert_eq!(compact, proto, "the record and its protobuf are decided differently: {flow:?}");
        compact
    }

    /// The error of a single whitelist filter.
    fn error(f: &FlowFilter) -> String {
        FlowFilters::new(std::slice::from_ref(f), &[]).unwrap_err().to_string()
    }

    // -- combination ---------------------------------------------------------

    #[test]
    fn no_filters_and_empty_filter_match_everything() {
        let all = FlowFilters::new(&[], &[]).unwrap();
        assert!(decide(&all, &flow(), NODE));
        assert!(decide(&all, &world_flow(), ""));
        assert!(selects(&FlowFilter::default(), &flow()));
        assert!(decide(&FlowFilters::default(), &flow(), NODE));
    }

    #[test]
    fn fields_are_anded_values_are_ored() {
        let both = ff(|f| {
            f.protocol = strings(&["tcp"]);
            f.destination_port = strings(&["80"]);
        });
        assert!(selects(&both, &flow()));
        let wrong_port = ff(|f| {
            f.protocol = strings(&["tcp"]);
            f.destination_port = strings(&["443"]);
        });
        assert!(!selects(&wrong_port, &flow()));
        let either_port = ff(|f| f.destination_port = strings(&["443", "80"]));
        assert!(selects(&either_port, &flow()));
    }

    #[test]
    fn whitelist_filters_are_ored_and_blacklist_subtracts() {
        let tcp = ff(|f| f.protocol = strings(&["tcp"]));
        let udp = ff(|f| f.protocol = strings(&["udp"]));
        let to_world = ff(|f| f.destination_identity = vec![2]);
        let either = FlowFilters::new(&[tcp.clone(), udp.clone()], &[]).unwrap();
        assert!(decide(&either, &flow(), NODE));
        assert!(decide(&either, &world_flow(), NODE));
        assert!(!decide(&either, &icmp6_flow(), NODE));

        let minus_world = FlowFilters::new(&[tcp.clone(), udp], std::slice::from_ref(&to_world)).unwrap();
        assert!(decide(&minus_world, &flow(), NODE));
        assert!(!decide(&minus_world, &world_flow(), NODE));

        // Blacklist only: everything but what it matches.
        let not_tcp = FlowFilters::new(&[], &[tcp]).unwrap();
        assert!(!decide(&not_tcp, &flow(), NODE));
        assert!(decide(&not_tcp, &world_flow(), NODE));
        assert!(decide(&not_tcp, &icmp6_flow(), NODE));
    }

    #[test]
    fn errors_name_list_index_and_field() {
        let ok = FlowFilter::default();
        let bad = ff(|f| f.destination_ip = strings(&["1.2.3.4", "nope"]));
        let e = FlowFilters::new(std::slice::from_ref(&ok), &[ok.clone(), bad]).unwrap_err();
        assert_eq!(e.to_string(), r#"blacklist[1].destination_ip: "nope" is not an IP address or CIDR"#);
    }

    // -- uuid ----------------------------------------------------------------

    #[test]
    fn uuid() {
        let f = flow();
        assert!(selects(&ff(|x| x.uuid = vec!["x".to_owned(), flow_uuid(f.seq)]), &f));
        assert!(!selects(&ff(|x| x.uuid = vec![flow_uuid(f.seq + 1)]), &f));
    }

    // -- IP ------------------------------------------------------------------

    #[test]
    fn ip_addresses_and_cidrs() {
        let src = |v: &[&str]| ff(|f| f.source_ip = strings(v));
        let dst = |v: &[&str]| ff(|f| f.destination_ip = strings(v));
        assert!(selects(&src(&["10.0.0.1"]), &flow()));
        assert!(!selects(&src(&["10.0.0.2"]), &flow()));
        assert!(selects(&src(&["10.0.0.0/24"]), &flow()));
        assert!(!selects(&dst(&["10.0.0.0/24"]), &flow()));
        assert!(selects(&dst(&["10.0.0.0/16"]), &flow()));
        // Host bits set, as Go's parser allows.
        assert!(selects(&dst(&["10.0.9.9/16"]), &flow()));
        assert!(selects(&dst(&["0.0.0.0/0"]), &flow()));
        assert!(selects(&dst(&["192.168.0.0/16", "1.1.1.1"]), &world_flow()));
        // Families do not mix.
        assert!(!selects(&src(&["::/0"]), &flow()));
        assert!(!selects(&src(&["0.0.0.0/0"]), &icmp6_flow()));
        assert!(selects(&src(&["fd00::1"]), &icmp6_flow()));
        assert!(selects(&src(&["fd00:0:0::0001"]), &icmp6_flow()));
        assert!(selects(&dst(&["fd00::/64"]), &icmp6_flow()));
        assert!(selects(&dst(&["fd00::2/128"]), &icmp6_flow()));
        assert!(!selects(&dst(&["fd00::1/128"]), &icmp6_flow()));
    }

    #[test]
    fn ip_errors() {
        for bad in
            ["10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/+8", "10.0.0/8", "", "host", "1.2.3.4/8/8", "10.0.0.0/-1"]
        {
            let e = error(&ff(|f| f.source_ip = strings(&[bad])));
            assert_eq!(e, format!("whitelist[0].source_ip: {bad:?} is not an IP address or CIDR"));
        }
        assert_eq!(
            error(&ff(|f| f.source_ip = strings(&["10.0.0.0/33"]))),
            r#"whitelist[0].source_ip: "10.0.0.0/33" is not an IP address or CIDR"#
        );
    }

    #[test]
    fn ip_xlated() {
        let xlated = |v: &[&str]| ff(|f| f.source_ip_xlated = strings(v));
        // A flow without a translated source never matches.
        assert!(!selects(&xlated(&["0.0.0.0/0"]), &flow()));
        let reply = Flow { source_xlated: Some("10.96.0.10".parse().unwrap()), ..flow() };
        assert!(selects(&xlated(&["10.96.0.10"]), &reply));
        assert!(selects(&xlated(&["10.96.0.0/16", "fd00::/8"]), &reply));
        assert!(!selects(&xlated(&["10.96.0.11"]), &reply));
        // The untranslated source is not the translated one.
        assert!(!selects(&xlated(&["10.0.0.1"]), &reply));
        assert_eq!(
            error(&ff(|f| f.source_ip_xlated = strings(&["x"]))),
            r#"whitelist[0].source_ip_xlated: "x" is not an IP address or CIDR"#
        );
    }

    // -- pods, services, workloads, clusters ---------------------------------

    #[test]
    fn pod_names() {
        let src = |v: &[&str]| ff(|f| f.source_pod = strings(v));
        let dst = |v: &[&str]| ff(|f| f.destination_pod = strings(v));
        assert!(selects(&src(&["default/client"]), &flow()));
        assert!(selects(&src(&["default/client-abc"]), &flow()));
        assert!(!selects(&src(&["default/client-abcd"]), &flow()));
        assert!(selects(&src(&["default/"]), &flow()));
        assert!(selects(&src(&["/client"]), &flow()));
        assert!(selects(&src(&["/"]), &flow()));
        // No namespace: `default`.
        assert!(selects(&src(&["client"]), &flow()));
        assert!(!selects(&dst(&["server"]), &flow()));
        assert!(selects(&dst(&["web/server"]), &flow()));
        assert!(selects(&dst(&["/server"]), &flow()));
        assert!(!selects(&dst(&["default/"]), &flow()));
        assert!(!selects(&src(&["kube-system/client"]), &flow()));
        assert!(selects(&src(&["kube-system/", "default/cl"]), &flow()));
        // Text after a second slash is ignored, as in Hubble.
        assert!(selects(&dst(&["web/server/anything"]), &flow()));
        // A side without a pod never matches.
        assert!(!selects(&dst(&["/"]), &world_flow()));
        assert_eq!(
            error(&ff(|f| f.destination_pod = strings(&["a/b", ""]))),
            "whitelist[0].destination_pod: empty name, expected [namespace/][name]"
        );
    }

    #[test]
    fn services() {
        let service = |namespace: &str, name: &str| {
            Some(Arc::new(crate::record::ServiceMeta { namespace: namespace.into(), name: name.into() }))
        };
        let src = |v: &[&str]| ff(|f| f.source_service = strings(v));
        let dst = |v: &[&str]| ff(|f| f.destination_service = strings(v));
        // A flow without services never matches.
        assert!(!selects(&src(&["default/"]), &flow()));
        assert!(!selects(&dst(&["/"]), &flow()));
        let to_web = Flow { destination_service: service("web", "frontend"), ..flow() };
        assert!(selects(&dst(&["web/frontend"]), &to_web));
        assert!(selects(&dst(&["web/front"]), &to_web));
        assert!(selects(&dst(&["web/"]), &to_web));
        assert!(selects(&dst(&["/front"]), &to_web));
        assert!(selects(&dst(&["/"]), &to_web));
        assert!(selects(&dst(&["other/", "web/f"]), &to_web));
        assert!(!selects(&dst(&["web/backend"]), &to_web));
        assert!(!selects(&dst(&["default/frontend"]), &to_web));
        // No namespace: `default`, as for pods.
        assert!(!selects(&dst(&["frontend"]), &to_web));
        let in_default = Flow { source_service: service("default", "kubernetes"), ..flow() };
        assert!(selects(&src(&["kubernetes"]), &in_default));
        // Each side is its own.
        assert!(!selects(&src(&["web/"]), &to_web));
        assert!(!selects(&dst(&["default/"]), &in_default));
        // A blacklist removes flows to a service.
        let filters = FlowFilters::new(&[], &[dst(&["web/frontend"])]).unwrap();
        assert!(!decide(&filters, &to_web, NODE));
        assert!(decide(&filters, &flow(), NODE));
    }

    #[test]
    fn service_names_are_checked_and_workloads_match_nothing() {
        assert_eq!(
            error(&ff(|f| f.source_service = strings(&[""]))),
            "whitelist[0].source_service: empty name, expected [namespace/][name]"
        );
        let any = Workload { name: String::new(), kind: String::new() };
        assert!(!selects(&ff(|f| f.source_workload = vec![any.clone()]), &flow()));
        assert!(!selects(&ff(|f| f.destination_workload = vec![any]), &flow()));
    }

    #[test]
    fn cluster_names() {
        assert!(selects(&ff(|f| f.source_cluster_name = strings(&["other", "default"])), &flow()));
        assert!(!selects(&ff(|f| f.source_cluster_name = strings(&["other"])), &flow()));
        assert!(selects(&ff(|f| f.destination_cluster_name = strings(&["default"])), &flow()));
        // The world is in no cluster.
        assert!(!selects(&ff(|f| f.destination_cluster_name = strings(&["default"])), &world_flow()));
        assert_eq!(
            error(&ff(|f| f.destination_cluster_name = strings(&["default", ""]))),
            "whitelist[0].destination_cluster_name: empty cluster name"
        );
    }

    // -- labels --------------------------------------------------------------

    fn src_label(v: &str) -> FlowFilter {
        ff(|f| f.source_label = strings(&[v]))
    }

    fn dst_label(v: &str) -> FlowFilter {
        ff(|f| f.destination_label = strings(&[v]))
    }

    #[test]
    fn label_selector_operators() {
        let yes = |s: &str| assert!(selects(&src_label(s), &flow()), "{s} should match");
        let no = |s: &str| assert!(!selects(&src_label(s), &flow()), "{s} should not match");
        yes("app=client");
        yes("app==client");
        yes(" app = client ");
        no("app=server");
        yes("app!=server");
        no("app!=client");
        yes("app in (server, client)");
        no("app in (server)");
        yes("app notin (server)");
        no("app notin (server,client)");
        yes("app");
        no("missing");
        yes("!missing");
        no("!app");
        yes("app=client,io.kubernetes.pod.namespace=default");
        no("app=client,io.kubernetes.pod.namespace=web");
        yes("tier>2");
        no("tier>3");
        yes("tier<4");
        no("app>1");
        // `!=`/`notin` hold for a missing key.
        yes("missing!=x");
        yes("missing notin (x)");
        no("missing in (x)");
        // `=` with nothing: the empty value.
        no("app=");
        // Source prefixes.
        yes("k8s:app=client");
        yes("any:app=client");
        no("container:app=client");
        yes("k8s:io.kubernetes.pod.namespace=default");
        // The empty selector selects everything.
        yes("");
        assert!(selects(&src_label(""), &icmp6_flow()));
    }

    #[test]
    fn labels_of_identities_without_pods() {
        let world = world_flow();
        assert!(selects(&dst_label("reserved:world"), &world));
        assert!(selects(&dst_label("world"), &world));
        assert!(!selects(&dst_label("k8s:world"), &world));
        assert!(selects(&dst_label("!app"), &world));
        assert!(!selects(&dst_label("reserved:world"), &flow()));
        // No labels at all.
        assert!(selects(&dst_label("!app"), &icmp6_flow()));
        assert!(!selects(&dst_label("app"), &icmp6_flow()));
    }

    #[test]
    fn label_selectors_are_ored_within_the_field() {
        let f = ff(|f| f.destination_label = strings(&["app=nope", "app=server"]));
        assert!(selects(&f, &flow()));
    }

    #[test]
    fn label_selector_errors() {
        let e = error(&src_label("a in ("));
        assert_eq!(
            e,
            r#"whitelist[0].source_label: "a in (" is not a label selector: expected a value or ')', found the end"#
        );
        for bad in [
            "a in",
            "a in (x",
            "a in (x y)",
            "a notin x",
            "=a",
            "a b",
            "a,",
            ",a",
            "!",
            "!a=b",
            "a=b c",
            "a=b=c",
            "a > x",
            "a < -1",
            "a >",
            "Bad Key",
            "a=-b-",
            ":app",
            "k8s:",
            "a:b:c",
            "UPPER.case/x=y",
            "a/b/c",
            "a-.io/x",
            "-a.io/x",
            "a..io/x",
            "/x",
            "a=(",
            ")",
            "a=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ] {
            let e = error(&dst_label(bad));
            assert!(
                e.starts_with(&format!("whitelist[0].destination_label: {bad:?} is not a label selector: ")),
                "{bad}: {e}"
            );
        }
        // Kubernetes accepts empty items inside the parentheses.
        for ok in [
            "a in ()",
            "a in (x,)",
            "a in (,x)",
            "a in (x,,y)",
            "x.y/z-1=V_2.a",
            "a==",
            "a!=",
            "app.kubernetes.io/name=web",
            "k8s:app.kubernetes.io/name in (a, b)",
            "cidr:10.0.0.0/8",
            "!reserved:host",
        ] {
            FlowFilters::new(&[dst_label(ok)], &[]).unwrap();
        }
    }

    #[test]
    fn node_labels_match_a_node_without_labels() {
        assert!(selects(&ff(|f| f.node_labels = strings(&["!node-role.kubernetes.io/control-plane"])), &flow()));
        assert!(!selects(&ff(|f| f.node_labels = strings(&["kubernetes.io/hostname=kind-worker"])), &flow()));
        assert!(error(&ff(|f| f.node_labels = strings(&["a in ("]))).starts_with("whitelist[0].node_labels: "));
    }

    // -- identities, ports, protocols ----------------------------------------

    #[test]
    fn identities() {
        assert!(selects(&ff(|f| f.source_identity = vec![1, 1234]), &flow()));
        assert!(!selects(&ff(|f| f.source_identity = vec![5678]), &flow()));
        assert!(selects(&ff(|f| f.destination_identity = vec![5678]), &flow()));
        assert!(selects(&ff(|f| f.destination_identity = vec![2]), &world_flow()));
    }

    #[test]
    fn ports() {
        assert!(selects(&ff(|f| f.source_port = strings(&["40000"])), &flow()));
        assert!(selects(&ff(|f| f.destination_port = strings(&["0080"])), &flow()));
        assert!(!selects(&ff(|f| f.destination_port = strings(&["40000"])), &flow()));
        assert!(selects(&ff(|f| f.destination_port = strings(&["53"])), &world_flow()));
        // ICMP has no ports, not even 0.
        assert!(!selects(&ff(|f| f.source_port = strings(&["0"])), &icmp6_flow()));
        let mut sctp = flow();
        sctp.protocol = abi::IPPROTO_SCTP;
        assert!(selects(&ff(|f| f.destination_port = strings(&["80"])), &sctp));
        for bad in ["65536", "-1", "+80", "", "http", " 80", "1e3", "99999999999999999999"] {
            assert_eq!(
                error(&ff(|f| f.destination_port = strings(&[bad]))),
                format!("whitelist[0].destination_port: {bad:?} is not a port number (0-65535)")
            );
        }
    }

    #[test]
    fn protocols() {
        let p = |v: &[&str]| ff(|f| f.protocol = strings(v));
        let mut icmp4 = world_flow();
        icmp4.protocol = abi::IPPROTO_ICMP;
        assert!(selects(&p(&["tcp"]), &flow()));
        assert!(selects(&p(&["TCP"]), &flow()));
        assert!(!selects(&p(&["udp"]), &flow()));
        assert!(selects(&p(&["udp"]), &world_flow()));
        assert!(selects(&p(&["icmp"]), &icmp4));
        assert!(selects(&p(&["icmp"]), &icmp6_flow()));
        assert!(selects(&p(&["ICMPv4"]), &icmp4));
        assert!(!selects(&p(&["icmpv4"]), &icmp6_flow()));
        assert!(selects(&p(&["icmpv6"]), &icmp6_flow()));
        assert!(!selects(&p(&["icmpv6"]), &icmp4));
        let mut sctp = flow();
        sctp.protocol = abi::IPPROTO_SCTP;
        assert!(selects(&p(&["sctp"]), &sctp));
        for nothing in ["http", "dns", "kafka", "vrrp", "igmp"] {
            assert!(!selects(&p(&[nothing]), &flow()));
        }
        assert!(selects(&p(&["http", "tcp"]), &flow()));
        assert_eq!(
            error(&p(&["tcp", "quic"])),
            "whitelist[0].protocol: unknown protocol \"quic\" (expected tcp, udp, sctp, icmp, icmpv4, icmpv6, vrrp, igmp, dns, http or kafka)"
        );
    }

    // -- enums ---------------------------------------------------------------

    #[test]
    fn verdicts_drop_reasons_directions() {
        assert!(selects(&ff(|f| f.verdict = vec![1]), &flow()));
        assert!(!selects(&ff(|f| f.verdict = vec![2]), &flow()));
        assert!(selects(&ff(|f| f.verdict = vec![1, 2]), &world_flow()));
        assert!(selects(&ff(|f| f.drop_reason_desc = vec![133]), &world_flow()));
        assert!(!selects(&ff(|f| f.drop_reason_desc = vec![181]), &world_flow()));
        assert!(!selects(&ff(|f| f.drop_reason_desc = vec![133]), &flow()));
        assert!(selects(&ff(|f| f.traffic_direction = vec![2]), &flow()));
        assert!(!selects(&ff(|f| f.traffic_direction = vec![1]), &flow()));
    }

    #[test]
    fn event_types() {
        let et = |t: i32, m: bool, s: i32| EventTypeFilter { r#type: t, match_sub_type: m, sub_type: s };
        let f = |v: Vec<EventTypeFilter>| ff(|f| f.event_type = v);
        assert!(selects(&f(vec![et(4, false, 99)]), &flow()));
        assert!(!selects(&f(vec![et(1, false, 0)]), &flow()));
        assert!(selects(&f(vec![et(1, false, 0), et(4, false, 0)]), &flow()));
        assert!(selects(&f(vec![et(1, true, 133)]), &world_flow()));
        assert!(!selects(&f(vec![et(1, true, 130)]), &world_flow()));
        // Type 0: any type.
        assert!(selects(&f(vec![et(0, false, 0)]), &world_flow()));
        assert!(selects(&f(vec![et(0, true, 0)]), &flow()));
        assert!(!selects(&f(vec![et(0, true, 1)]), &flow()));
    }

    #[test]
    fn reply() {
        let r = |v: Vec<bool>| ff(|f| f.reply = v);
        assert!(selects(&r(vec![false]), &flow()));
        assert!(!selects(&r(vec![true]), &flow()));
        let mut reply = flow();
        reply.is_reply = Some(true);
        assert!(selects(&r(vec![true]), &reply));
        assert!(selects(&r(vec![true, false]), &reply));
        // Unknown: no match, except a drop, which counts as not a reply.
        let mut unknown = flow();
        unknown.is_reply = None;
        assert!(!selects(&r(vec![false]), &unknown));
        assert!(!selects(&r(vec![true]), &unknown));
        assert!(selects(&r(vec![false]), &world_flow()));
        assert!(!selects(&r(vec![true]), &world_flow()));
    }

    #[test]
    fn ip_versions() {
        assert!(selects(&ff(|f| f.ip_version = vec![1]), &flow()));
        assert!(!selects(&ff(|f| f.ip_version = vec![2]), &flow()));
        assert!(selects(&ff(|f| f.ip_version = vec![2]), &icmp6_flow()));
        let mut none = flow();
        none.ip_version = 0;
        assert!(selects(&ff(|f| f.ip_version = vec![0]), &none));
        assert!(!selects(&ff(|f| f.ip_version = vec![0]), &flow()));
    }

    #[test]
    fn interfaces() {
        let i = |index: u32, name: &str| NetworkInterface { index, name: name.to_owned() };
        let f = |v: Vec<NetworkInterface>| ff(|f| f.interface = v);
        assert!(selects(&f(vec![i(5, "")]), &flow()));
        assert!(selects(&f(vec![i(0, "eth0")]), &flow()));
        assert!(selects(&f(vec![i(5, "eth0")]), &flow()));
        assert!(selects(&f(vec![i(0, "")]), &flow()));
        assert!(!selects(&f(vec![i(6, "")]), &flow()));
        assert!(!selects(&f(vec![i(5, "eth1")]), &flow()));
        assert!(selects(&f(vec![i(5, "eth1"), i(0, "eth0")]), &flow()));
        // A flow without a known interface matches nothing.
        assert!(!selects(&f(vec![i(0, "")]), &world_flow()));
        let mut unnamed = flow();
        unnamed.interface = None;
        assert!(selects(&f(vec![i(5, "")]), &unnamed));
        assert!(!selects(&f(vec![i(0, "eth0")]), &unnamed));
    }

    // -- node names ----------------------------------------------------------

    fn on_node(patterns: &[&str], node: &str) -> bool {
        decide(&FlowFilters::new(&[ff(|f| f.node_name = strings(patterns))], &[]).unwrap(), &flow(), node)
    }

    #[test]
    fn node_names() {
        assert!(on_node(&["kind-worker"], NODE));
        assert!(!on_node(&["kind-worker2"], NODE));
        assert!(on_node(&["kind-*"], NODE));
        assert!(on_node(&["*"], NODE));
        assert!(on_node(&["*-worker"], NODE));
        assert!(on_node(&["k*d-w*r"], NODE));
        assert!(!on_node(&["kind-control-plane", "*-master"], NODE));
        assert!(on_node(&["KIND-*"], NODE));
        assert!(on_node(&[" kind-worker. "], NODE));
        // Cluster forms: the node is in `default`.
        assert!(on_node(&["default/kind-*"], NODE));
        assert!(on_node(&["default/"], NODE));
        assert!(on_node(&["/kind-worker"], NODE));
        assert!(on_node(&["/"], NODE));
        assert!(on_node(&["def*/*"], NODE));
        assert!(!on_node(&["other/*"], NODE));
        assert!(!on_node(&["other/"], NODE));
        // A node name that names its cluster.
        assert!(on_node(&["c1/*"], "c1/n1"));
        assert!(!on_node(&["default/*"], "c1/n1"));
        assert!(on_node(&["n1"], "c1/n1"));
        // `*` spans dots but not `_` or `/`.
        assert!(on_node(&["*.example.com"], "n1.eu.example.com"));
        assert!(!on_node(&["*"], "node_1"));
        assert!(on_node(&["node_*"], "node_1"));
        assert!(on_node(&["*_*"], "a_b"));
        assert!(!on_node(&["*_*"], "a_b_c"));
        assert!(on_node(&["*_*_*"], "a_b_c"));
        assert!(!on_node(&["*"], "a/b/c"));
        assert!(!on_node(&["*"], "Upper"));
        // Unknown node: nothing.
        assert!(!on_node(&["*"], ""));
    }

    #[test]
    fn node_name_errors() {
        let e = |v: &str| error(&ff(|f| f.node_name = strings(&[v])));
        assert_eq!(e(""), r#"whitelist[0].node_name: "" is not a node name pattern: empty pattern"#);
        assert_eq!(e("a/b/c"), r#"whitelist[0].node_name: "a/b/c" is not a node name pattern: too many slashes"#);
        assert_eq!(e("node!"), r#"whitelist[0].node_name: "node!" is not a node name pattern: invalid character '!'"#);
        assert_eq!(
            e("node.."),
            r#"whitelist[0].node_name: "node.." is not a node name pattern: multiple trailing dots"#
        );
        assert_eq!(e("c/ "), r#"whitelist[0].node_name: "c/ " is not a node name pattern: empty pattern"#);
    }

    // -- TCP flags -----------------------------------------------------------

    #[test]
    fn tcp_flags() {
        let syn = TcpFlags { syn: true, ..TcpFlags::default() };
        let syn_ack = TcpFlags { syn: true, ack: true, ..TcpFlags::default() };
        let fin = TcpFlags { fin: true, ..TcpFlags::default() };
        let ns = TcpFlags { syn: true, ns: true, ..TcpFlags::default() };
        let f = |v: Vec<TcpFlags>| ff(|f| f.tcp_flags = v);
        assert!(selects(&f(vec![syn]), &flow()));
        assert!(selects(&f(vec![syn_ack]), &flow()));
        assert!(!selects(&f(vec![fin]), &flow()));
        assert!(selects(&f(vec![fin, syn]), &flow()));
        assert!(selects(&f(vec![TcpFlags::default()]), &flow()));
        // NS is never reported.
        assert!(!selects(&f(vec![ns]), &flow()));
        // TCP only.
        assert!(!selects(&f(vec![TcpFlags::default()]), &world_flow()));
        let all = TcpFlags {
            fin: true,
            syn: true,
            rst: true,
            psh: true,
            ack: true,
            urg: true,
            ece: true,
            cwr: true,
            ns: false,
        };
        let mut every = flow();
        every.tcp_flags = 0xff;
        assert!(selects(&f(vec![all]), &every));
        assert!(!selects(&f(vec![all]), &flow()));
    }

    // -- fields no L3/L4 flow has ---------------------------------------------

    #[test]
    fn l7_fields_match_nothing() {
        let header = HttpHeader { key: "a".to_owned(), value: "b".to_owned() };
        for f in [
            ff(|f| f.source_fqdn = strings(&["*.example.com"])),
            ff(|f| f.destination_fqdn = strings(&["example.com."])),
            ff(|f| f.dns_query = strings(&[".*"])),
            ff(|f| f.http_path = strings(&["/api/(v1|v2)/[a-z]+"])),
            ff(|f| f.http_url = strings(&[r"^https?://x\.y/"])),
            ff(|f| f.http_status_code = strings(&["404"])),
            ff(|f| f.http_status_code = strings(&["5+", "20+"])),
            ff(|f| f.http_method = strings(&["GET"])),
            ff(|f| f.http_header = vec![header.clone()]),
            ff(|f| f.ip_trace_id = vec![0]),
            ff(|f| f.trace_id = strings(&["abc"])),
            ff(|f| f.encrypted = vec![true]),
            ff(|f| {
                f.http_method = strings(&["GET"]);
                f.event_type = vec![EventTypeFilter { r#type: 129, match_sub_type: false, sub_type: 0 }];
            }),
        ] {
            assert!(!selects(&f, &flow()), "{f:?}");
            // In a blacklist it excludes nothing.
            assert!(decide(&FlowFilters::new(&[], &[f]).unwrap(), &flow(), NODE));
        }
    }

    #[test]
    fn trace_id_and_encrypted_match_what_flows_lack() {
        assert!(selects(&ff(|f| f.trace_id = strings(&["abc", ""])), &flow()));
        assert!(selects(&ff(|f| f.encrypted = vec![false]), &flow()));
        assert!(selects(&ff(|f| f.encrypted = vec![true, false]), &world_flow()));
    }

    #[test]
    fn l7_field_errors() {
        assert_eq!(
            error(&ff(|f| f.dns_query = strings(&[""]))),
            r#"whitelist[0].dns_query: "" is not a regular expression: empty pattern"#
        );
        assert_eq!(
            error(&ff(|f| f.http_path = strings(&["/a/(b"]))),
            r#"whitelist[0].http_path: "/a/(b" is not a regular expression: missing ')'"#
        );
        assert_eq!(
            error(&ff(|f| f.http_url = strings(&["a)"]))),
            r#"whitelist[0].http_url: "a)" is not a regular expression: unmatched ')'"#
        );
        assert_eq!(
            error(&ff(|f| f.http_url = strings(&["[a-z"]))),
            r#"whitelist[0].http_url: "[a-z" is not a regular expression: missing ']'"#
        );
        assert_eq!(
            error(&ff(|f| f.dns_query = strings(&["a\\"]))),
            r#"whitelist[0].dns_query: "a\\" is not a regular expression: trailing backslash"#
        );
        // Parentheses inside a class and escaped ones are literal.
        for ok in ["[(]", r"\(", "[]()]", "[^]]", "a(b)c"] {
            FlowFilters::new(&[ff(|f| f.http_path = strings(&[ok]))], &[]).unwrap();
        }
        for bad in ["600", "4++", "+", "40", "4040", "0+", "4x", ""] {
            assert_eq!(
                error(&ff(|f| f.http_status_code = strings(&[bad]))),
                format!(
                    "whitelist[0].http_status_code: {bad:?} is not an HTTP status code (e.g. \"404\") or prefix (e.g. \"4+\")"
                )
            );
        }
        assert_eq!(
            error(&ff(|f| {
                f.http_method = strings(&["GET"]);
                f.event_type = vec![EventTypeFilter { r#type: 4, match_sub_type: false, sub_type: 0 }];
            })),
            "whitelist[0].http_method: filtering on HTTP fields needs an event_type filter that is empty or matches L7 events (type 129)"
        );
        assert_eq!(
            error(&ff(|f| f.source_fqdn = strings(&["a..", "x"]))),
            r#"whitelist[0].source_fqdn: "a.." is not an FQDN pattern: multiple trailing dots"#
        );
        assert_eq!(
            error(&ff(|f| f.destination_fqdn = strings(&["a b"]))),
            r#"whitelist[0].destination_fqdn: "a b" is not an FQDN pattern: invalid character ' '"#
        );
        assert_eq!(
            error(&ff(|f| f.destination_fqdn = strings(&["."]))),
            r#"whitelist[0].destination_fqdn: "." is not an FQDN pattern: empty pattern"#
        );
    }

    #[test]
    fn cel_is_refused() {
        let cel = ff(|f| f.experimental = Some(Experimental { cel_expression: strings(&["true"]) }));
        assert_eq!(error(&cel), "whitelist[0].experimental.cel_expression: CEL expressions are not supported");
        // An empty experimental message is no filter.
        assert!(selects(&ff(|f| f.experimental = Some(Experimental::default())), &flow()));
    }

    #[test]
    fn a_never_field_still_gets_validated() {
        let f = ff(|f| {
            f.source_workload = vec![Workload::default()];
            f.destination_port = strings(&["x"]);
        });
        assert_eq!(error(&f), r#"whitelist[0].destination_port: "x" is not a port number (0-65535)"#);
    }

    // -- robustness ----------------------------------------------------------

    #[test]
    fn malformed_input_never_panics() {
        let inputs = [
            "",
            " ",
            "!",
            "!!",
            "!=",
            "==",
            "(",
            ")",
            ",",
            ",,",
            "((",
            "a in ((",
            "a in )",
            "é",
            "é=ü",
            "a=é",
            "\u{0}",
            "a\u{0}=b",
            "ĸ:é",
            "a in (é)",
            "/",
            "//",
            "a/",
            "/a",
            ":",
            "a:",
            "*",
            "**",
            "_",
            "\\",
            "[",
            "]",
            "[]",
            "[^",
            "🙂",
            "a=🙂",
            "🙂 in (🙂)",
            "1.2.3.4/999",
            "::/",
            "/24",
            "…",
            "a > 99999999999999999999",
        ];
        for s in inputs {
            let v = vec![s.to_owned()];
            let filters = [
                ff(|f| f.source_label = v.clone()),
                ff(|f| f.node_labels = v.clone()),
                ff(|f| f.source_ip = v.clone()),
                ff(|f| f.source_pod = v.clone()),
                ff(|f| f.source_port = v.clone()),
                ff(|f| f.protocol = v.clone()),
                ff(|f| f.node_name = v.clone()),
                ff(|f| f.source_fqdn = v.clone()),
                ff(|f| f.dns_query = v.clone()),
                ff(|f| f.http_status_code = v.clone()),
                ff(|f| f.source_cluster_name = v.clone()),
                ff(|f| f.uuid = v.clone()),
            ];
            for f in filters {
                if let Ok(compiled) = FlowFilters::new(&[f], &[]) {
                    for flow in [flow(), world_flow(), icmp6_flow()] {
                        let _ = compiled.matches(&flow, s);
                        let _ = decide(&compiled, &flow, NODE);
                    }
                }
            }
        }
    }

    #[test]
    fn glob_segments() {
        assert!(glob_segment(b"", b""));
        assert!(glob_segment(b"*", b""));
        assert!(glob_segment(b"**", b"abc"));
        assert!(!glob_segment(b"", b"a"));
        assert!(glob_segment(b"a*b*c", b"aXbYbZc"));
        assert!(!glob_segment(b"a*b*c", b"aXbYbZ"));
        assert!(glob_segment(b"*aab", b"aaaab"));
        assert!(!glob_segment(b"abc", b"ab"));
    }
}
