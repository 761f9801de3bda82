//! Filter flags → `flow.FlowFilter`s, with hubble's semantics.
//!
//! Every filter flag lands in one *tracker*: the whitelist's, or the
//! blacklist's when the flag was preceded by `--not`. A tracker holds two
//! filters, `left` and `right`, which the server ORs:
//!
//! - a directional flag (`--from-pod`, `--to-port`, `--verdict`, …) adds its
//!   value to **both**, so every flag ANDs with the others;
//! - a symmetric flag (`--pod`, `--ip`, `--port`, `-l`, …) adds the *source*
//!   form to `left` and the *destination* form to `right`: "source matches OR
//!   destination matches";
//! - namespaces (`--namespace`, `--from-namespace`, `--to-namespace`) are
//!   applied last, to the pod and service values (`ns/` + name, or `ns/`
//!   alone when no pod or service was named).
//!
//! When `left` and `right` end up equal, one filter is sent. Repeating a
//! flag ORs its values (they go into the same repeated field).
//!
//! Differences from hubble, all on the side of refusing early: values are
//! checked here (IPs and CIDRs, ports, verdicts, drop reasons, protocols,
//! directions, identities, IP versions, TCP flags, event types), case is
//! forgiven for enum names, and a pod or service name without a namespace is
//! sent as `default/NAME` — the meaning hubble's server gives it — so the
//! filter reads the same on any server.

use std::net::IpAddr;

use sightline_proto::flow::{
    DropReason, EventTypeFilter, FlowFilter, IpVersion, NetworkInterface, TcpFlags, TrafficDirection, Verdict, Workload,
};

/// A filter flag the `observe` command accepts.
#[derive(Debug, Clone, Copy)]
pub struct FlagSpec {
    /// Long name, without `--`.
    pub name: &'static str,
    pub short: Option<char>,
    /// `None` for switches (`-4`, `--not`, …).
    pub value_name: Option<&'static str>,
    pub help: &'static str,
}

const fn flag(name: &'static str, value_name: &'static str, help: &'static str) -> FlagSpec {
    FlagSpec { name, short: None, value_name: Some(value_name), help }
}

const fn short(name: &'static str, short: char, value_name: &'static str, help: &'static str) -> FlagSpec {
    FlagSpec { name, short: Some(short), value_name: Some(value_name), help }
}

const fn switch(name: &'static str, short: Option<char>, help: &'static str) -> FlagSpec {
    FlagSpec { name, short, value_name: None, help }
}

/// `--not`: the next filter flag goes to the blacklist.
pub const NOT: &str = "not";

/// Every filter flag, in the order `--help` lists them.
pub const FILTER_FLAGS: &[FlagSpec] = &[
    switch(NOT, None, "Negate the next filter flag: flows matching it are excluded (e.g. --not --to-port 53)"),
    flag(
        "pod",
        "[NS/]NAME",
        "Flows from or to pods whose name starts with NAME (namespace `default` when none is given)",
    ),
    flag("from-pod", "[NS/]NAME", "Flows from pods whose name starts with NAME"),
    flag("to-pod", "[NS/]NAME", "Flows to pods whose name starts with NAME"),
    short("namespace", 'n', "NS", "Flows from or to pods (or services) of namespace NS"),
    flag("from-namespace", "NS", "Flows from pods of namespace NS"),
    flag("to-namespace", "NS", "Flows to pods of namespace NS"),
    switch("all-namespaces", Some('A'), "Flows from or to pods of any namespace"),
    switch("from-all-namespaces", None, "Flows from pods of any namespace"),
    switch("to-all-namespaces", None, "Flows to pods of any namespace"),
    flag("ip", "IP|CIDR", "Flows from or to this address or prefix"),
    flag("from-ip", "IP|CIDR", "Flows from this address or prefix"),
    flag("to-ip", "IP|CIDR", "Flows to this address or prefix"),
    short(
        "label",
        'l',
        "SELECTOR",
        "Flows from or to endpoints matching this label selector (e.g. app=web, k8s:app=web, reserved:world)",
    ),
    flag("from-label", "SELECTOR", "Flows from endpoints matching this label selector"),
    flag("to-label", "SELECTOR", "Flows to endpoints matching this label selector"),
    flag("port", "PORT", "Flows with this source or destination port"),
    flag("from-port", "PORT", "Flows with this source port"),
    flag("to-port", "PORT", "Flows with this destination port"),
    flag("identity", "ID", "Flows from or to this security identity (a number, or host, world, …)"),
    flag("from-identity", "ID", "Flows from this security identity"),
    flag("to-identity", "ID", "Flows to this security identity"),
    flag("service", "[NS/]NAME", "Flows from or to this service"),
    flag("from-service", "[NS/]NAME", "Flows from this service"),
    flag("to-service", "[NS/]NAME", "Flows to this service"),
    flag("workload", "[KIND/]NAME", "Flows from or to endpoints of this workload (e.g. Deployment/web)"),
    flag("from-workload", "[KIND/]NAME", "Flows from endpoints of this workload"),
    flag("to-workload", "[KIND/]NAME", "Flows to endpoints of this workload"),
    flag("fqdn", "PATTERN", "Flows from or to this DNS name (e.g. *.example.com)"),
    flag("from-fqdn", "PATTERN", "Flows from this DNS name"),
    flag("to-fqdn", "PATTERN", "Flows to this DNS name"),
    flag(
        "verdict",
        "VERDICT",
        "Flows with this verdict: FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED",
    ),
    flag("drop-reason-desc", "REASON", "Dropped flows with this reason (e.g. POLICY_DENIED, POLICY_DENY)"),
    short(
        "type",
        't',
        "TYPE[:SUBTYPE]",
        "Events of this type: trace, drop, policy-verdict, capture, trace-sock, l7, or a number; \
         SUBTYPE is a trace point (to-endpoint, from-endpoint, to-stack, …), a drop reason, or a number",
    ),
    flag(
        "protocol",
        "PROTO",
        "Flows of this protocol: tcp, udp, sctp, icmp, icmpv4, icmpv6, vrrp, igmp, dns, http, kafka",
    ),
    flag("tcp-flags", "FLAGS", "TCP flows with all of these flags set, comma-separated (e.g. SYN or SYN,ACK)"),
    flag("traffic-direction", "DIR", "Flows in this direction: ingress or egress"),
    flag("node-name", "PATTERN", "Flows observed on nodes matching this name (wildcards allowed, e.g. node-*)"),
    flag("uuid", "UUID", "The flow with this unique identifier"),
    flag("ip-version", "VERSION", "Flows of this IP version: 4, 6, or none"),
    switch("ipv4", Some('4'), "IPv4 flows only"),
    switch("ipv6", Some('6'), "IPv6 flows only"),
    flag("interface", "NAME", "Flows observed at this network interface (e.g. lxc00001)"),
    flag("http-status", "CODE", "HTTP flows with this status code or prefix (e.g. 404, 5+)"),
    flag("http-method", "METHOD", "HTTP flows with this method (e.g. GET)"),
    flag("http-path", "REGEX", "HTTP flows whose path matches this regular expression"),
    flag("http-url", "REGEX", "HTTP flows whose URL matches this regular expression"),
];

/// Pairs of flags that make no sense together, as hubble groups them (any
/// two flags of one group conflict).
const CONFLICTS: &[&[&str]] = &[
    &["from-fqdn", "from-ip", "ip", "fqdn", "from-namespace", "namespace", "from-all-namespaces", "all-namespaces"],
    &["from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"],
    &["to-fqdn", "to-ip", "ip", "fqdn", "to-namespace", "namespace", "to-all-namespaces", "all-namespaces"],
    &["to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"],
    &["to-pod", "namespace", "all-namespaces"],
    &["from-pod", "namespace", "all-namespaces"],
    &["to-service", "namespace", "all-namespaces"],
    &["from-service", "namespace", "all-namespaces"],
    &["label", "from-label"],
    &["label", "to-label"],
    &["service", "from-service"],
    &["service", "to-service"],
    &["port", "to-port"],
    &["port", "from-port"],
    &["identity", "to-identity"],
    &["identity", "from-identity"],
    &["workload", "to-workload"],
    &["workload", "from-workload"],
];

/// One filter flag or `--not` as it appeared on the command line, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The flag's long name.
    pub flag: &'static str,
    /// Its value (`""` for switches).
    pub value: String,
}

impl Token {
    /// A token for a known flag; `None` for an unknown name.
    #[cfg(test)]
    pub fn new(flag: &str, value: impl Into<String>) -> Option<Self> {
        let spec = FILTER_FLAGS.iter().find(|s| s.name == flag)?;
        Some(Self { flag: spec.name, value: value.into() })
    }
}

/// Why the filter flags were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A flag's value is malformed.
    #[error("--{flag} {value:?}: {reason}")]
    BadValue { flag: &'static str, value: String, reason: String },
    /// Two flags that hubble refuses to combine.
    #[error("filters --{a} and --{b} cannot be combined")]
    Conflict { a: &'static str, b: &'static str },
    /// A pod or service names another namespace than `--namespace`.
    #[error("namespace conflict: {name:?} is not in namespace {namespace:?}")]
    NamespaceConflict { namespace: String, name: String },
    /// `--not --not`.
    #[error("--not --not: each --not negates exactly one filter flag")]
    ConsecutiveNot,
    /// `--not` with no filter flag after it.
    #[error("--not must be followed by the filter flag it negates")]
    TrailingNot,
}

/// The whitelist and blacklist the filter flags make.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub whitelist: Vec<FlowFilter>,
    pub blacklist: Vec<FlowFilter>,
}

/// Translates the ordered filter flags into FlowFilters.
pub fn build(tokens: &[Token]) -> Result<Filters, FilterError> {
    let mut white = Tracker::default();
    let mut black = Tracker::default();
    let mut negate = false;
    for token in tokens {
        if token.flag == NOT {
            if negate {
                return Err(FilterError::ConsecutiveNot);
            }
            negate = true;
            continue;
        }
        let tracker = if negate { &mut black } else { &mut white };
        negate = false;
        tracker.set(token.flag, &token.value)?;
    }
    if negate {
        return Err(FilterError::TrailingNot);
    }
    Ok(Filters { whitelist: white.into_filters(), blacklist: black.into_filters() })
}

/// One side (whitelist or blacklist) under construction.
#[derive(Default)]
struct Tracker {
    left: Option<FlowFilter>,
    right: Option<FlowFilter>,
    ns: Vec<String>,
    src_ns: Vec<String>,
    dst_ns: Vec<String>,
    changed: Vec<&'static str>,
}

impl Tracker {
    fn both(&mut self, update: impl Fn(&mut FlowFilter)) {
        update(self.left.get_or_insert_with(FlowFilter::default));
        update(self.right.get_or_insert_with(FlowFilter::default));
    }

    fn split(&mut self, left: impl FnOnce(&mut FlowFilter), right: impl FnOnce(&mut FlowFilter)) {
        left(self.left.get_or_insert_with(FlowFilter::default));
        right(self.right.get_or_insert_with(FlowFilter::default));
    }

    fn check_conflicts(&self) -> Result<(), FilterError> {
        for group in CONFLICTS {
            for (i, a) in group.iter().enumerate() {
                if !self.changed.contains(a) {
                    continue;
                }
                for b in &group[i + 1..] {
                    if a != b && self.changed.contains(b) {
                        return Err(FilterError::Conflict { a, b });
                    }
                }
            }
        }
        Ok(())
    }

    fn set(&mut self, flag: &'static str, value: &str) -> Result<(), FilterError> {
        if !self.changed.contains(&flag) {
            self.changed.push(flag);
        }
        self.check_conflicts()?;
        let bad = |reason: &str| FilterError::BadValue { flag, value: value.to_owned(), reason: reason.to_owned() };
        let v = value.to_owned();
        match flag {
            "pod" => {
                let v = nonempty(flag, value)?;
                let w = v.clone();
                self.split(|f| f.source_pod.push(v), |f| f.destination_pod.push(w));
            }
            "from-pod" => {
                let v = nonempty(flag, value)?;
                self.both(|f| f.source_pod.push(v.clone()));
            }
            "to-pod" => {
                let v = nonempty(flag, value)?;
                self.both(|f| f.destination_pod.push(v.clone()));
            }
            "namespace" => self.ns.push(namespace(flag, value)?),
            "from-namespace" => self.src_ns.push(namespace(flag, value)?),
            "to-namespace" => self.dst_ns.push(namespace(flag, value)?),
            "all-namespaces" => self.ns.push(String::new()),
            "from-all-namespaces" => self.src_ns.push(String::new()),
            "to-all-namespaces" => self.dst_ns.push(String::new()),
            "ip" => {
                let v = ip_or_cidr(flag, value)?;
                let w = v.clone();
                self.split(|f| f.source_ip.push(v), |f| f.destination_ip.push(w));
            }
            "from-ip" => {
                let v = ip_or_cidr(flag, value)?;
                self.both(|f| f.source_ip.push(v.clone()));
            }
            "to-ip" => {
                let v = ip_or_cidr(flag, value)?;
                self.both(|f| f.destination_ip.push(v.clone()));
            }
            "label" => {
                let v = nonempty(flag, value)?;
                let w = v.clone();
                self.split(|f| f.source_label.push(v), |f| f.destination_label.push(w));
            }
            "from-label" => {
                let v = nonempty(flag, value)?;
                self.both(|f| f.source_label.push(v.clone()));
            }
            "to-label" => {
                let v = nonempty(flag, value)?;
                self.both(|f| f.destination_label.push(v.clone()));
            }
            "port" => {
                let v = port(flag, value)?;
                let w = v.clone();
                self.split(|f| f.source_port.push(v), |f| f.destination_port.push(w));
            }
            "from-port" => {
                let v = port(flag, value)?;
                self.both(|f| f.source_port.push(v.clone()));
            }
            "to-port" => {
                let v = port(flag, value)?;
                self.both(|f| f.destination_port.push(v.clone()));
            }
            "identity" => {
                let id = identity(flag, value)?;
                self.split(|f| f.source_identity.push(id), |f| f.destination_identity.push(id));
            }
            "from-identity" => {
                let id = identity(flag, value)?;
                self.both(|f| f.source_identity.push(id));
            }
            "to-identity" => {
                let id = identity(flag, value)?;
                self.both(|f| f.destination_identity.push(id));
            }
            "service" => {
                let v = nonempty(flag, value)?;
                let w = v.clone();
                self.split(|f| f.source_service.push(v), |f| f.destination_service.push(w));
            }
            "from-service" => {
                let v = nonempty(flag, value)?;
                self.both(|f| f.source_service.push(v.clone()));
            }
            "to-service" => {
                let v = nonempty(flag, value)?;
                self.both(|f| f.destination_service.push(v.clone()));
            }
            "workload" => {
                let w = workload(flag, value)?;
                let x = w.clone();
                self.split(|f| f.source_workload.push(w), |f| f.destination_workload.push(x));
            }
            "from-workload" => {
                let w = workload(flag, value)?;
                self.both(|f| f.source_workload.push(w.clone()));
            }
            "to-workload" => {
                let w = workload(flag, value)?;
                self.both(|f| f.destination_workload.push(w.clone()));
            }
            "fqdn" => {
                let v = nonempty(flag, value)?;
                let w = v.clone();
                self.split(|f| f.source_fqdn.push(v), |f| f.destination_fqdn.push(w));
            }
            "from-fqdn" => {
                let v = nonempty(flag, value)?;
                self.both(|f| f.source_fqdn.push(v.clone()));
            }
            "to-fqdn" => {
                let v = nonempty(flag, value)?;
                self.both(|f| f.destination_fqdn.push(v.clone()));
            }
            "verdict" => {
                let verdict = Verdict::from_str_name(&value.trim().to_ascii_uppercase())
                    .filter(|v| *v != Verdict::Unknown)
                    .ok_or_else(|| bad("unknown verdict; expected FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED or TRANSLATED"))?;
                self.both(|f| f.verdict.push(verdict as i32));
            }
            "drop-reason-desc" => {
                let reason = drop_reason(value).ok_or_else(|| {
                    bad("unknown drop reason; expected a name from flow.proto's DropReason such as POLICY_DENIED, POLICY_DENY, CT_MAP_INSERTION_FAILED")
                })?;
                self.both(|f| f.drop_reason_desc.push(reason as i32));
            }
            "type" => {
                let filter = event_type(value).map_err(|reason| bad(&reason))?;
                self.both(|f| f.event_type.push(filter));
            }
            "protocol" => {
                let p = value.trim().to_ascii_lowercase();
                if !PROTOCOLS.contains(&p.as_str()) {
                    return Err(bad(&format!("unknown protocol; expected one of {}", PROTOCOLS.join(", "))));
                }
                self.both(|f| f.protocol.push(p.clone()));
            }
            "tcp-flags" => {
                let flags = tcp_flags(value).map_err(|reason| bad(&reason))?;
                self.both(|f| f.tcp_flags.push(flags));
            }
            "traffic-direction" => {
                let dir = match value.trim().to_ascii_lowercase().as_str() {
                    "ingress" => TrafficDirection::Ingress,
                    "egress" => TrafficDirection::Egress,
                    _ => return Err(bad("expected ingress or egress")),
                };
                self.both(|f| f.traffic_direction.push(dir as i32));
            }
            "node-name" => {
                let v = nonempty(flag, value)?;
                self.both(|f| f.node_name.push(v.clone()));
            }
            "uuid" => {
                let v = nonempty(flag, value)?;
                self.both(|f| f.uuid.push(v.clone()));
            }
            "ip-version" => {
                let version = match value.trim().to_ascii_lowercase().as_str() {
                    "4" | "v4" | "ipv4" | "ip4" => IpVersion::IPv4,
                    "6" | "v6" | "ipv6" | "ip6" => IpVersion::IPv6,
                    "none" | "0" => IpVersion::IpNotUsed,
                    _ => return Err(bad("expected 4, 6 or none")),
                };
                self.both(|f| f.ip_version.push(version as i32));
            }
            "ipv4" => self.both(|f| f.ip_version.push(IpVersion::IPv4 as i32)),
            "ipv6" => self.both(|f| f.ip_version.push(IpVersion::IPv6 as i32)),
            "interface" => {
                let name = nonempty(flag, value)?;
                self.both(|f| f.interface.push(NetworkInterface { index: 0, name: name.clone() }));
            }
            "http-status" => {
                let code = value.trim();
                let digits = code.strip_suffix('+').unwrap_or(code);
                if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("expected a status code or prefix such as 404, 40+ or 5+"));
                }
                self.both(|f| f.http_status_code.push(code.to_owned()));
            }
            "http-method" => {
                let v = nonempty(flag, value)?;
                self.both(|f| f.http_method.push(v.clone()));
            }
            "http-path" => self.both(|f| f.http_path.push(v.clone())),
            "http-url" => self.both(|f| f.http_url.push(v.clone())),
            other => {
                return Err(FilterError::BadValue {
                    flag,
                    value: value.to_owned(),
                    reason: format!("unknown filter --{other}"),
                });
            }
        }
        self.check_namespace_conflicts()
    }

    fn check_namespace_conflicts(&self) -> Result<(), FilterError> {
        for filter in [&self.left, &self.right].into_iter().flatten() {
            let checks: [(&[String], &[String]); 8] = [
                (&self.ns, &filter.source_pod),
                (&self.ns, &filter.source_service),
                (&self.ns, &filter.destination_pod),
                (&self.ns, &filter.destination_service),
                (&self.src_ns, &filter.source_pod),
                (&self.src_ns, &filter.source_service),
                (&self.dst_ns, &filter.destination_pod),
                (&self.dst_ns, &filter.destination_service),
            ];
            for (namespaces, names) in checks {
                for ns in namespaces {
                    for name in names {
                        if let Some((their_ns, _)) = name.split_once('/')
                            && !their_ns.is_empty()
                            && their_ns != ns
                        {
                            return Err(FilterError::NamespaceConflict { namespace: ns.clone(), name: name.clone() });
                        }
                    }
                }
            }
            for (pods, services) in
                [(&filter.source_pod, &filter.source_service), (&filter.destination_pod, &filter.destination_service)]
            {
                for pod in pods {
                    let Some((pod_ns, _)) = pod.split_once('/') else { continue };
                    for svc in services {
                        let svc_ns = svc.split_once('/').map_or("", |(ns, _)| ns);
                        if svc_ns != pod_ns {
                            return Err(FilterError::NamespaceConflict {
                                namespace: pod_ns.to_owned(),
                                name: svc.clone(),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn into_filters(mut self) -> Vec<FlowFilter> {
        if self.left.is_none()
            && self.right.is_none()
            && self.ns.is_empty()
            && self.src_ns.is_empty()
            && self.dst_ns.is_empty()
        {
            return Vec::new();
        }
        let mut left = self.left.take().unwrap_or_default();
        let mut right = self.right.take().unwrap_or_default();
        if !self.dst_ns.is_empty() {
            apply_dst_ns(&self.dst_ns, &mut left);
            apply_dst_ns(&self.dst_ns, &mut right);
        }
        if !self.src_ns.is_empty() {
            apply_src_ns(&self.src_ns, &mut left);
            apply_src_ns(&self.src_ns, &mut right);
        }
        if !self.ns.is_empty() {
            apply_src_ns(&self.ns, &mut left);
            apply_dst_ns(&self.ns, &mut right);
        }
        for f in [&mut left, &mut right] {
            for names in [&mut f.source_pod, &mut f.destination_pod, &mut f.source_service, &mut f.destination_service]
            {
                for name in names.iter_mut() {
                    if !name.contains('/') {
                        *name = format!("default/{name}");
                    }
                }
            }
        }
        if left == right { vec![left] } else { vec![left, right] }
    }
}

fn apply_src_ns(ns: &[String], f: &mut FlowFilter) {
    if f.source_pod.is_empty() && f.source_service.is_empty() {
        f.source_pod = vec![String::new()];
    }
    f.source_pod = with_namespaces(&f.source_pod, ns);
    f.source_service = with_namespaces(&f.source_service, ns);
}

fn apply_dst_ns(ns: &[String], f: &mut FlowFilter) {
    if f.destination_pod.is_empty() && f.destination_service.is_empty() {
        f.destination_pod = vec![String::new()];
    }
    f.destination_pod = with_namespaces(&f.destination_pod, ns);
    f.destination_service = with_namespaces(&f.destination_service, ns);
}

/// `name` → `ns/name` for each namespace; names that already carry a
/// namespace are kept as they are.
fn with_namespaces(names: &[String], namespaces: &[String]) -> Vec<String> {
    if names.is_empty() || namespaces.is_empty() {
        return names.to_vec();
    }
    let mut out = Vec::new();
    for name in names {
        if name.contains('/') {
            out.push(name.clone());
        } else {
            out.extend(namespaces.iter().map(|ns| format!("{ns}/{name}")));
        }
    }
    out
}

fn nonempty(flag: &'static str, value: &str) -> Result<String, FilterError> {
    if value.trim().is_empty() {
        return Err(FilterError::BadValue { flag, value: value.to_owned(), reason: "must not be empty".to_owned() });
    }
    Ok(value.to_owned())
}

fn namespace(flag: &'static str, value: &str) -> Result<String, FilterError> {
    let v = nonempty(flag, value)?;
    if v.contains('/') {
        return Err(FilterError::BadValue {
            flag,
            value: v,
            reason: "a namespace has no `/` (to select a pod use --pod NS/NAME)".to_owned(),
        });
    }
    Ok(v)
}

/// An address or a prefix, normalised (`10.0.0.1`, `10.0.0.0/8`, `fd00::/8`).
fn ip_or_cidr(flag: &'static str, value: &str) -> Result<String, FilterError> {
    let bad = |reason: &str| FilterError::BadValue { flag, value: value.to_owned(), reason: reason.to_owned() };
    let v = value.trim();
    match v.split_once('/') {
        None => v.parse::<IpAddr>().map(|ip| ip.to_string()).map_err(|_| bad("not an IP address or CIDR prefix")),
        Some((addr, len)) => {
            let ip: IpAddr = addr.parse().map_err(|_| bad("not an IP address or CIDR prefix"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| bad(&format!("the prefix length must be 0 to {max}")))?;
            Ok(format!("{ip}/{len}"))
        }
    }
}

fn port(flag: &'static str, value: &str) -> Result<String, FilterError> {
    let v = value.trim();
    match v.parse::<u32>() {
        Ok(p) if p <= 65535 && !v.starts_with('+') => Ok(p.to_string()),
        Ok(_) => {
            Err(FilterError::BadValue { flag, value: value.to_owned(), reason: "a port is 0 to 65535".to_owned() })
        }
        Err(_) => Err(FilterError::BadValue { flag, value: value.to_owned(), reason: "not a port number".to_owned() }),
    }
}

/// Reserved identities, by the names Cilium gives them.
pub const RESERVED_IDENTITIES: &[(&str, u32)] = &[
    ("unknown", 0),
    ("host", 1),
    ("world", 2),
    ("unmanaged", 3),
    ("health", 4),
    ("init", 5),
    ("remote-node", 6),
    ("kube-apiserver", 7),
    ("ingress", 8),
    ("world-ipv4", 9),
    ("world-ipv6", 10),
];

fn identity(flag: &'static str, value: &str) -> Result<u32, FilterError> {
    let v = value.trim();
    if let Some((_, id)) = RESERVED_IDENTITIES.iter().find(|(name, id)| *id != 0 && name.eq_ignore_ascii_case(v)) {
        return Ok(*id);
    }
    v.parse::<u32>().map_err(|_| {
        let names: Vec<&str> = RESERVED_IDENTITIES.iter().skip(1).map(|(n, _)| *n).collect();
        FilterError::BadValue {
            flag,
            value: value.to_owned(),
            reason: format!("expected a numeric identity or one of {}", names.join(", ")),
        }
    })
}

fn workload(flag: &'static str, value: &str) -> Result<Workload, FilterError> {
    let v = nonempty(flag, value)?;
    Ok(match v.split_once('/') {
        Some((kind, name)) => Workload { kind: kind.to_owned(), name: name.to_owned() },
        None => Workload { kind: String::new(), name: v },
    })
}

fn drop_reason(value: &str) -> Option<DropReason> {
    let v = value.trim();
    if let Ok(code) = v.parse::<i32>() {
        return DropReason::try_from(code).ok().filter(|r| *r != DropReason::Unknown);
    }
    DropReason::from_str_name(&v.to_ascii_uppercase()).filter(|r| *r != DropReason::Unknown)
}

/// Protocols the server's protocol filter knows.
pub const PROTOCOLS: &[&str] =
    &["tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6", "vrrp", "igmp", "dns", "http", "kafka"];

/// Monitor message types by CLI name (spec §2.6).
pub const EVENT_TYPES: &[(&str, i32)] = &[
    ("drop", 1),
    ("debug", 2),
    ("capture", 3),
    ("trace", 4),
    ("policy-verdict", 5),
    ("trace-sock", 7),
    ("l7", 129),
    ("agent", 130),
];

/// Trace observation points by CLI name, with the datapath's numbering (the
/// `sub_type` of trace events: 0 = to-endpoint).
pub const TRACE_POINTS: &[(&str, i32)] = &[
    ("to-endpoint", 0),
    ("to-proxy", 1),
    ("to-host", 2),
    ("to-stack", 3),
    ("to-overlay", 4),
    ("from-endpoint", 5),
    ("from-proxy", 6),
    ("from-host", 7),
    ("from-stack", 8),
    ("from-overlay", 9),
    ("from-network", 10),
    ("to-network", 11),
    ("from-crypto", 12),
    ("to-crypto", 13),
];

/// Agent event sub-types by CLI name (the monitor's `AgentNotify*` numbers).
const AGENT_SUBTYPES: &[(&str, i32)] = &[
    ("unspecified", 0),
    ("message", 1),
    ("agent-started", 2),
    ("endpoint-regenerate-success", 3),
    ("endpoint-regenerate-failure", 4),
    ("policy-updated", 5),
    ("policy-deleted", 6),
    ("endpoint-created", 7),
    ("endpoint-deleted", 8),
    ("ipcache-upserted", 9),
    ("ipcache-deleted", 10),
];

fn lookup(table: &[(&str, i32)], name: &str) -> Option<i32> {
    table.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
}

/// `TYPE[:SUBTYPE]` → EventTypeFilter.
fn event_type(value: &str) -> Result<EventTypeFilter, String> {
    let v = value.trim();
    let (ty, sub) = match v.split_once(':') {
        Some((t, s)) => (t, Some(s)),
        None => (v, None),
    };
    let names: Vec<&str> = EVENT_TYPES.iter().map(|(n, _)| *n).collect();
    let r#type = match lookup(EVENT_TYPES, ty) {
        Some(t) => t,
        None => match ty.parse::<u8>() {
            Ok(n) => i32::from(n),
            Err(_) => {
                return Err(format!("unknown event type {ty:?}; expected {} or a number 0-255", names.join(", ")));
            }
        },
    };
    let mut filter = EventTypeFilter { r#type, match_sub_type: false, sub_type: 0 };
    if let Some(sub) = sub {
        let named = match r#type {
            4 => lookup(TRACE_POINTS, sub),
            1 => drop_reason(sub).map(|r| r as i32),
            130 => lookup(AGENT_SUBTYPES, sub),
            _ => None,
        };
        let sub_type = match named {
            Some(s) => s,
            None => sub.parse::<u8>().map(i32::from).map_err(|_| {
                let hint = match r#type {
                    4 => format!(
                        " (trace points: {})",
                        TRACE_POINTS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                    1 => " (a drop reason such as POLICY_DENIED, or its code)".to_owned(),
                    _ => String::new(),
                };
                format!("unknown sub-type {sub:?}; expected a name or a number 0-255{hint}")
            })?,
        };
        filter.match_sub_type = true;
        filter.sub_type = sub_type;
    }
    Ok(filter)
}

fn tcp_flags(value: &str) -> Result<TcpFlags, String> {
    let mut flags = TcpFlags::default();
    for part in value.split(',') {
        match part.trim().to_ascii_uppercase().as_str() {
            "SYN" => flags.syn = true,
            "ACK" => flags.ack = true,
            "FIN" => flags.fin = true,
            "RST" => flags.rst = true,
            "PSH" => flags.psh = true,
            "URG" => flags.urg = true,
            "ECE" => flags.ece = true,
            "CWR" => flags.cwr = true,
            "NS" => flags.ns = true,
            "" => return Err("empty flag; expected a comma-separated list such as SYN,ACK".to_owned()),
            other => {
                return Err(format!(
                    "unknown TCP flag {other:?}; expected SYN, ACK, FIN, RST, PSH, URG, ECE, CWR or NS"
                ));
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(args: &[(&str, &str)]) -> Vec<Token> {
        args.iter().map(|(f, v)| Token::new(f, *v).unwrap_or_else(|| panic!("unknown flag {f}"))).collect()
    }

    fn build_ok(args: &[(&str, &str)]) -> Filters {
        build(&tokens(args)).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn err(args: &[(&str, &str)]) -> String {
        build(&tokens(args)).expect_err("should fail").to_string()
    }

    fn ff() -> FlowFilter {
        FlowFilter::default()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn no_flags_no_filters() {
        assert_eq!(build_ok(&[]), Filters::default());
    }

    #[test]
    fn directional_flags_and_together_in_one_filter() {
        let f = build_ok(&[("from-pod", "x/a"), ("to-pod", "x/b"), ("to-port", "80"), ("verdict", "dropped")]);
        assert_eq!(
            f.whitelist,
            vec![FlowFilter {
                source_pod: s(&["x/a"]),
                destination_pod: s(&["x/b"]),
                destination_port: s(&["80"]),
                verdict: vec![Verdict::Dropped as i32],
                ..ff()
            }]
        );
        assert!(f.blacklist.is_empty());
    }

    #[test]
    fn repeated_flags_or_their_values() {
        let f = build_ok(&[("from-pod", "x/a"), ("from-pod", "y/b"), ("verdict", "FORWARDED"), ("verdict", "DROPPED")]);
        assert_eq!(f.whitelist, vec![FlowFilter { source_pod: s(&["x/a", "y/b"]), verdict: vec![1, 2], ..ff() }]);
    }

    #[test]
    fn symmetric_flags_make_two_filters() {
        let cases: Vec<(&str, &str, FlowFilter, FlowFilter)> = vec![
            (
                "pod",
                "x/a",
                FlowFilter { source_pod: s(&["x/a"]), ..ff() },
                FlowFilter { destination_pod: s(&["x/a"]), ..ff() },
            ),
            (
                "ip",
                "10.244.1.2",
                FlowFilter { source_ip: s(&["10.244.1.2"]), ..ff() },
                FlowFilter { destination_ip: s(&["10.244.1.2"]), ..ff() },
            ),
            (
                "label",
                "app=web",
                FlowFilter { source_label: s(&["app=web"]), ..ff() },
                FlowFilter { destination_label: s(&["app=web"]), ..ff() },
            ),
            (
                "port",
                "80",
                FlowFilter { source_port: s(&["80"]), ..ff() },
                FlowFilter { destination_port: s(&["80"]), ..ff() },
            ),
            (
                "identity",
                "256",
                FlowFilter { source_identity: vec![256], ..ff() },
                FlowFilter { destination_identity: vec![256], ..ff() },
            ),
            (
                "service",
                "x/web",
                FlowFilter { source_service: s(&["x/web"]), ..ff() },
                FlowFilter { destination_service: s(&["x/web"]), ..ff() },
            ),
            (
                "workload",
                "Deployment/web",
                FlowFilter {
                    source_workload: vec![Workload { name: "web".into(), kind: "Deployment".into() }],
                    ..ff()
                },
                FlowFilter {
                    destination_workload: vec![Workload { name: "web".into(), kind: "Deployment".into() }],
                    ..ff()
                },
            ),
            (
                "fqdn",
                "*.example.com",
                FlowFilter { source_fqdn: s(&["*.example.com"]), ..ff() },
                FlowFilter { destination_fqdn: s(&["*.example.com"]), ..ff() },
            ),
            (
                "namespace",
                "x",
                FlowFilter { source_pod: s(&["x/"]), ..ff() },
                FlowFilter { destination_pod: s(&["x/"]), ..ff() },
            ),
        ];
        for (flag, value, left, right) in cases {
            let f = build_ok(&[(flag, value)]);
            assert_eq!(f.whitelist, vec![left, right], "--{flag} {value}");
        }
    }

    #[test]
    fn directional_forms_of_every_pair() {
        let cases: Vec<(&str, &str, FlowFilter)> = vec![
            ("from-pod", "x/a", FlowFilter { source_pod: s(&["x/a"]), ..ff() }),
            ("to-pod", "x/a", FlowFilter { destination_pod: s(&["x/a"]), ..ff() }),
            ("from-namespace", "x", FlowFilter { source_pod: s(&["x/"]), ..ff() }),
            ("to-namespace", "x", FlowFilter { destination_pod: s(&["x/"]), ..ff() }),
            ("from-ip", "10.0.0.0/8", FlowFilter { source_ip: s(&["10.0.0.0/8"]), ..ff() }),
            ("to-ip", "fd00::1", FlowFilter { destination_ip: s(&["fd00::1"]), ..ff() }),
            ("from-label", "k8s:app=a", FlowFilter { source_label: s(&["k8s:app=a"]), ..ff() }),
            ("to-label", "reserved:world", FlowFilter { destination_label: s(&["reserved:world"]), ..ff() }),
            ("from-port", "35702", FlowFilter { source_port: s(&["35702"]), ..ff() }),
            ("to-port", "0", FlowFilter { destination_port: s(&["0"]), ..ff() }),
            ("from-identity", "world", FlowFilter { source_identity: vec![2], ..ff() }),
            ("to-identity", "kube-apiserver", FlowFilter { destination_identity: vec![7], ..ff() }),
            ("from-service", "x/web", FlowFilter { source_service: s(&["x/web"]), ..ff() }),
            ("to-service", "x/web", FlowFilter { destination_service: s(&["x/web"]), ..ff() }),
            (
                "from-workload",
                "web",
                FlowFilter { source_workload: vec![Workload { name: "web".into(), kind: String::new() }], ..ff() },
            ),
            (
                "to-workload",
                "StatefulSet/db",
                FlowFilter {
                    destination_workload: vec![Workload { name: "db".into(), kind: "StatefulSet".into() }],
                    ..ff()
                },
            ),
            ("from-fqdn", "a.example.com", FlowFilter { source_fqdn: s(&["a.example.com"]), ..ff() }),
            ("to-fqdn", "b.example.com", FlowFilter { destination_fqdn: s(&["b.example.com"]), ..ff() }),
            ("verdict", "forwarded", FlowFilter { verdict: vec![1], ..ff() }),
            ("verdict", "AUDIT", FlowFilter { verdict: vec![4], ..ff() }),
            ("drop-reason-desc", "POLICY_DENIED", FlowFilter { drop_reason_desc: vec![133], ..ff() }),
            ("drop-reason-desc", "policy_deny", FlowFilter { drop_reason_desc: vec![181], ..ff() }),
            ("protocol", "TCP", FlowFilter { protocol: s(&["tcp"]), ..ff() }),
            (
                "tcp-flags",
                "SYN,ACK",
                FlowFilter { tcp_flags: vec![TcpFlags { syn: true, ack: true, ..TcpFlags::default() }], ..ff() },
            ),
            ("traffic-direction", "ingress", FlowFilter { traffic_direction: vec![1], ..ff() }),
            ("traffic-direction", "EGRESS", FlowFilter { traffic_direction: vec![2], ..ff() }),
            ("node-name", "node-*", FlowFilter { node_name: s(&["node-*"]), ..ff() }),
            ("uuid", "8a5d1f0e-1", FlowFilter { uuid: s(&["8a5d1f0e-1"]), ..ff() }),
            ("ip-version", "v6", FlowFilter { ip_version: vec![2], ..ff() }),
            ("ip-version", "none", FlowFilter { ip_version: vec![0], ..ff() }),
            ("ipv4", "", FlowFilter { ip_version: vec![1], ..ff() }),
            ("ipv6", "", FlowFilter { ip_version: vec![2], ..ff() }),
            (
                "interface",
                "lxc00001",
                FlowFilter { interface: vec![NetworkInterface { index: 0, name: "lxc00001".into() }], ..ff() },
            ),
            ("http-status", "5+", FlowFilter { http_status_code: s(&["5+"]), ..ff() }),
            ("http-method", "GET", FlowFilter { http_method: s(&["GET"]), ..ff() }),
            ("http-path", "/api/.*", FlowFilter { http_path: s(&["/api/.*"]), ..ff() }),
            ("http-url", "http://x/.*", FlowFilter { http_url: s(&["http://x/.*"]), ..ff() }),
            ("all-namespaces", "", FlowFilter { source_pod: s(&["/"]), ..ff() }),
        ];
        for (flag, value, want) in cases {
            let f = build_ok(&[(flag, value)]);
            let first = f.whitelist.first().cloned().unwrap_or_default();
            assert_eq!(first, want, "--{flag} {value}");
            if flag != "all-namespaces" {
                assert_eq!(f.whitelist.len(), 1, "--{flag} {value}");
            }
        }
    }

    #[test]
    fn event_types() {
        let cases: Vec<(&str, EventTypeFilter)> = vec![
            ("trace", EventTypeFilter { r#type: 4, match_sub_type: false, sub_type: 0 }),
            ("drop", EventTypeFilter { r#type: 1, match_sub_type: false, sub_type: 0 }),
            ("policy-verdict", EventTypeFilter { r#type: 5, match_sub_type: false, sub_type: 0 }),
            ("trace-sock", EventTypeFilter { r#type: 7, match_sub_type: false, sub_type: 0 }),
            ("l7", EventTypeFilter { r#type: 129, match_sub_type: false, sub_type: 0 }),
            ("capture", EventTypeFilter { r#type: 3, match_sub_type: false, sub_type: 0 }),
            ("trace:to-endpoint", EventTypeFilter { r#type: 4, match_sub_type: true, sub_type: 0 }),
            ("trace:from-endpoint", EventTypeFilter { r#type: 4, match_sub_type: true, sub_type: 5 }),
            ("trace:to-stack", EventTypeFilter { r#type: 4, match_sub_type: true, sub_type: 3 }),
            ("trace:to-crypto", EventTypeFilter { r#type: 4, match_sub_type: true, sub_type: 13 }),
            ("drop:POLICY_DENIED", EventTypeFilter { r#type: 1, match_sub_type: true, sub_type: 133 }),
            ("drop:181", EventTypeFilter { r#type: 1, match_sub_type: true, sub_type: 181 }),
            ("4:3", EventTypeFilter { r#type: 4, match_sub_type: true, sub_type: 3 }),
            ("agent:policy-updated", EventTypeFilter { r#type: 130, match_sub_type: true, sub_type: 5 }),
        ];
        for (value, want) in cases {
            let f = build_ok(&[("type", value)]);
            assert_eq!(f.whitelist, vec![FlowFilter { event_type: vec![want], ..ff() }], "-t {value}");
        }
        let f = build_ok(&[("type", "trace"), ("type", "drop")]);
        assert_eq!(f.whitelist[0].event_type.len(), 2);
    }

    #[test]
    fn not_sends_exactly_the_next_flag_to_the_blacklist() {
        let f = build_ok(&[("from-pod", "x/a"), ("not", ""), ("to-port", "53"), ("verdict", "DROPPED")]);
        assert_eq!(f.whitelist, vec![FlowFilter { source_pod: s(&["x/a"]), verdict: vec![2], ..ff() }]);
        assert_eq!(f.blacklist, vec![FlowFilter { destination_port: s(&["53"]), ..ff() }]);

        // Two negated flags of different kinds AND inside the blacklist filter.
        let f = build_ok(&[("not", ""), ("protocol", "udp"), ("not", ""), ("to-namespace", "kube-system")]);
        assert!(f.whitelist.is_empty());
        assert_eq!(
            f.blacklist,
            vec![FlowFilter { protocol: s(&["udp"]), destination_pod: s(&["kube-system/"]), ..ff() }]
        );

        // A negated symmetric flag: excluded when source OR destination matches.
        let f = build_ok(&[("not", ""), ("ip", "10.0.0.1")]);
        assert_eq!(
            f.blacklist,
            vec![
                FlowFilter { source_ip: s(&["10.0.0.1"]), ..ff() },
                FlowFilter { destination_ip: s(&["10.0.0.1"]), ..ff() }
            ]
        );
    }

    #[test]
    fn not_errors() {
        assert_eq!(build(&tokens(&[("not", ""), ("not", ""), ("pod", "a")])), Err(FilterError::ConsecutiveNot));
        assert_eq!(build(&tokens(&[("pod", "a"), ("not", "")])), Err(FilterError::TrailingNot));
    }

    #[test]
    fn namespaces_combine_with_pods_and_services() {
        // --namespace applies to the symmetric pod filter.
        let f = build_ok(&[("pod", "web"), ("namespace", "x")]);
        assert_eq!(
            f.whitelist,
            vec![
                FlowFilter { source_pod: s(&["x/web"]), ..ff() },
                FlowFilter { destination_pod: s(&["x/web"]), ..ff() }
            ]
        );
        // --from-namespace with --to-namespace: one filter.
        let f = build_ok(&[("from-namespace", "x"), ("to-namespace", "y")]);
        assert_eq!(f.whitelist, vec![FlowFilter { source_pod: s(&["x/"]), destination_pod: s(&["y/"]), ..ff() }]);
        // --from-namespace prefixes --from-pod.
        let f = build_ok(&[("from-namespace", "x"), ("from-pod", "a"), ("from-namespace", "y")]);
        assert_eq!(f.whitelist, vec![FlowFilter { source_pod: s(&["x/a", "y/a"]), ..ff() }]);
        // --to-namespace prefixes --to-service.
        let f = build_ok(&[("to-service", "web"), ("to-namespace", "x")]);
        assert_eq!(f.whitelist, vec![FlowFilter { destination_service: s(&["x/web"]), ..ff() }]);
        // -A: any namespace, on either side.
        let f = build_ok(&[("all-namespaces", "")]);
        assert_eq!(
            f.whitelist,
            vec![FlowFilter { source_pod: s(&["/"]), ..ff() }, FlowFilter { destination_pod: s(&["/"]), ..ff() }]
        );
        // Several namespaces OR.
        let f = build_ok(&[("to-namespace", "x"), ("to-namespace", "y")]);
        assert_eq!(f.whitelist, vec![FlowFilter { destination_pod: s(&["x/", "y/"]), ..ff() }]);
    }

    #[test]
    fn bare_pod_and_service_names_are_in_namespace_default() {
        let f = build_ok(&[("from-pod", "web"), ("to-service", "db")]);
        assert_eq!(
            f.whitelist,
            vec![FlowFilter { source_pod: s(&["default/web"]), destination_service: s(&["default/db"]), ..ff() }]
        );
        // "/name" means any namespace and is left alone.
        let f = build_ok(&[("to-pod", "/web")]);
        assert_eq!(f.whitelist, vec![FlowFilter { destination_pod: s(&["/web"]), ..ff() }]);
    }

    #[test]
    fn conflicts_are_refused_like_hubble() {
        assert_eq!(
            err(&[("from-ip", "1.1.1.1"), ("from-pod", "x/a")]),
            "filters --from-ip and --from-pod cannot be combined"
        );
        assert_eq!(err(&[("port", "80"), ("to-port", "80")]), "filters --port and --to-port cannot be combined");
        assert_eq!(
            err(&[("label", "a=b"), ("from-label", "c=d")]),
            "filters --label and --from-label cannot be combined"
        );
        assert_eq!(
            err(&[("to-pod", "x/a"), ("namespace", "x")]),
            "filters --to-pod and --namespace cannot be combined"
        );
        assert_eq!(
            err(&[("namespace", "x"), ("all-namespaces", "")]),
            "filters --namespace and --all-namespaces cannot be combined"
        );
        assert_eq!(
            err(&[("identity", "1"), ("from-identity", "2")]),
            "filters --identity and --from-identity cannot be combined"
        );
        // Conflicts are per list: a negated --from-ip does not clash with --from-pod.
        build_ok(&[("from-pod", "x/a"), ("not", ""), ("from-ip", "10.0.0.1")]);
        assert_eq!(err(&[("pod", "y/a"), ("namespace", "x")]), "namespace conflict: \"y/a\" is not in namespace \"x\"");
        assert_eq!(
            err(&[("from-pod", "x/a"), ("from-service", "y/web")]),
            "namespace conflict: \"y/web\" is not in namespace \"x\""
        );
    }

    #[test]
    fn bad_values_are_named_with_their_flag() {
        let cases: &[(&str, &str, &str)] = &[
            ("from-ip", "10.0.0.256", "--from-ip \"10.0.0.256\": not an IP address or CIDR prefix"),
            ("to-ip", "10.0.0.0/33", "--to-ip \"10.0.0.0/33\": the prefix length must be 0 to 32"),
            ("ip", "fd00::/129", "--ip \"fd00::/129\": the prefix length must be 0 to 128"),
            ("ip", "pod-a", "--ip \"pod-a\": not an IP address or CIDR prefix"),
            ("to-port", "65536", "--to-port \"65536\": a port is 0 to 65535"),
            ("port", "http", "--port \"http\": not a port number"),
            ("port", "-1", "--port \"-1\": not a port number"),
            (
                "verdict",
                "ALLOWED",
                "--verdict \"ALLOWED\": unknown verdict; expected FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED or TRANSLATED",
            ),
            ("verdict", "VERDICT_UNKNOWN", "unknown verdict"),
            ("drop-reason-desc", "NOPE", "--drop-reason-desc \"NOPE\": unknown drop reason"),
            ("protocol", "quic", "--protocol \"quic\": unknown protocol; expected one of tcp, udp"),
            ("traffic-direction", "both", "--traffic-direction \"both\": expected ingress or egress"),
            ("tcp-flags", "SYN,FOO", "--tcp-flags \"SYN,FOO\": unknown TCP flag \"FOO\""),
            ("tcp-flags", "SYN,", "--tcp-flags \"SYN,\": empty flag"),
            ("identity", "nobody", "--identity \"nobody\": expected a numeric identity or one of host, world"),
            ("identity", "unknown", "expected a numeric identity"),
            ("type", "bogus", "--type \"bogus\": unknown event type \"bogus\"; expected drop, debug"),
            ("type", "trace:to-moon", "--type \"trace:to-moon\": unknown sub-type \"to-moon\""),
            ("type", "trace:999", "unknown sub-type \"999\""),
            ("type", "300", "unknown event type \"300\""),
            ("ip-version", "5", "--ip-version \"5\": expected 4, 6 or none"),
            ("from-pod", "", "--from-pod \"\": must not be empty"),
            ("namespace", "x/y", "--namespace \"x/y\": a namespace has no `/`"),
            ("http-status", "abc", "--http-status \"abc\": expected a status code"),
        ];
        for (flag, value, want) in cases {
            let got = err(&[(flag, value)]);
            assert!(got.contains(want), "--{flag} {value}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn values_are_normalised() {
        let f = build_ok(&[("from-ip", " 10.0.0.1 "), ("to-port", "080")]);
        assert_eq!(f.whitelist[0].source_ip, s(&["10.0.0.1"]));
        assert_eq!(f.whitelist[0].destination_port, s(&["80"]));
        let f = build_ok(&[("to-ip", "FD00:0::1/64")]);
        assert_eq!(f.whitelist[0].destination_ip, s(&["fd00::1/64"]));
    }

    #[test]
    fn every_flag_in_the_table_is_handled() {
        for spec in FILTER_FLAGS {
            if spec.name == NOT {
                continue;
            }
            let value = match spec.name {
                n if n.contains("ip") && n != "ip-version" && !n.starts_with("ipv") => "10.0.0.1",
                n if n.contains("port") => "80",
                n if n.contains("identity") => "256",
                "verdict" => "DROPPED",
                "drop-reason-desc" => "POLICY_DENIED",
                "type" => "trace",
                "protocol" => "tcp",
                "tcp-flags" => "SYN",
                "traffic-direction" => "ingress",
                "ip-version" => "4",
                "http-status" => "200",
                n if spec.value_name.is_none() => {
                    let _ = n;
                    ""
                }
                _ => "x",
            };
            let result = build(&tokens(&[(spec.name, value)]));
            assert!(result.is_ok(), "--{} {value}: {result:?}", spec.name);
            assert!(!result.unwrap_or_default().whitelist.is_empty(), "--{} made no filter", spec.name);
        }
    }
}
