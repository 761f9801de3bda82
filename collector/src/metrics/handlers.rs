//! The built-in handlers: which flows each one counts and with which label
//! values (Hubble's `pkg/hubble/metrics/<handler>/handler.go`).
//!
//! A handler decides from the compact [`Flow`] alone, builds its label
//! values on the stack (static strings, small [`Text`] buffers, and the
//! flow's context values borrowed from the [`View`]) and adds to its
//! [`Family`]. It must not allocate for a series that exists, and must not
//! decide anything about caps, encoding or pod deletion.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use sightline_abi as abi;

use super::context::{Text, View};
use super::names;
use super::options::{HandlerConfig, HandlerKind};
use super::series::Family;
use super::tally::{Keep, address};
use crate::flow::Flow;

/// More than any handler needs: 3 own labels + 11 `labelsContext` labels +
/// `source` + `destination`.
const MAX_LABELS: usize = 20;

/// Label values being assembled.
struct Labels<'a> {
    values: [&'a str; MAX_LABELS],
    len: usize,
}

impl<'a> Labels<'a> {
    fn new() -> Self {
        Self {
            values: [""; MAX_LABELS],
            len: 0,
        }
    }

    fn push(&mut self, value: &'a str) {
        if let Some(slot) = self.values.get_mut(self.len) {
            *slot = value;
            self.len += 1;
        }
    }

    fn set(&mut self, i: usize, value: &'a str) {
        if let Some(slot) = self.values.get_mut(i) {
            *slot = value;
        }
    }

    fn as_slice(&self) -> &[&'a str] {
        self.values.get(..self.len).unwrap_or(&[])
    }
}

/// A number as text, for enum values Hubble prints numerically.
type Number = Text<24>;

/// `table[value]`, or the number itself when the table has no entry (what
/// Go's protobuf `String()` prints for an unknown enum value).
fn name_or_number<'t>(table: &[&'static str], value: usize, buf: &'t mut Number) -> &'t str {
    match table.get(value) {
        Some(name) => name,
        None => {
            *buf = Number::format(format_args!("{value}"));
            buf.as_str()
        }
    }
}

/// The L4 protocol name when the flow has an L4 header Hubble knows.
fn l4_name(flow: &Flow) -> Option<&'static str> {
    match flow.protocol {
        abi::IPPROTO_TCP => Some(names::PROTO_TCP),
        abi::IPPROTO_UDP => Some(names::PROTO_UDP),
        abi::IPPROTO_SCTP => Some(names::PROTO_SCTP),
        abi::IPPROTO_ICMP => Some(names::PROTO_ICMPV4),
        abi::IPPROTO_ICMPV6 => Some(names::PROTO_ICMPV6),
        _ => None,
    }
}

/// `v1.FlowProtocol`.
fn flow_protocol(flow: &Flow) -> &'static str {
    match flow.event_type {
        names::MESSAGE_ACCESS_LOG => "Unknown L7",
        names::MESSAGE_DROP
        | names::MESSAGE_TRACE
        | names::MESSAGE_POLICY_VERDICT
        | names::MESSAGE_CAPTURE => l4_name(flow).unwrap_or(names::PROTO_UNKNOWN_L4),
        _ => names::PROTO_UNKNOWN_FLOW,
    }
}

/// The `IPVersion` name.
fn ip_family(flow: &Flow) -> &'static str {
    match flow.ip_version {
        4 => names::FAMILY_IPV4,
        6 => names::FAMILY_IPV6,
        _ => names::FAMILY_NONE,
    }
}

/// gopacket's `ICMPv{4,6}TypeCode.String()`.
fn icmp_type_code(v6: bool, t: u8, c: u8, buf: &mut Text<64>) -> &str {
    let known = if v6 {
        names::icmpv6_type(t)
    } else {
        names::icmpv4_type(t)
    };
    *buf = match known {
        None => Text::format(format_args!("{t}({c})")),
        Some((name, None)) if c == 0 => return name,
        Some((name, codes)) => {
            match codes.and_then(|codes| codes.iter().find(|(code, _)| *code == c)) {
                Some((_, code)) => Text::format(format_args!("{name}({code})")),
                None => Text::format(format_args!("{name}(Code: {c})")),
            }
        }
    };
    buf.as_str()
}

/// Whether the flow is forwarded (or redirected), the only verdicts the
/// `tcp` and `port-distribution` handlers count.
fn forwarded(flow: &Flow) -> bool {
    matches!(
        flow.verdict,
        names::VERDICT_FORWARDED | names::VERDICT_REDIRECTED
    )
}

/// Receives a family and the label values of one series to count in.
pub(crate) type Sink<'s> = dyn FnMut(&Family, &[&str]) + 's;

/// One enabled handler and its metric.
pub(crate) struct Handler {
    config: HandlerConfig,
    family: Arc<Family>,
}

impl Handler {
    pub(crate) fn new(config: &HandlerConfig, cap: usize, refused: Counter) -> Self {
        use names::*;
        // Help text, the handler's labels before the context labels, and after.
        let (help, before, after): (&str, &[&'static str], &[&'static str]) = match config.kind {
            HandlerKind::Flow => (
                FLOWS_PROCESSED_HELP,
                &[LABEL_PROTOCOL, LABEL_TYPE, LABEL_SUBTYPE, LABEL_VERDICT],
                &[],
            ),
            HandlerKind::Drop => (DROP_HELP, &[], &[LABEL_REASON, LABEL_PROTOCOL]),
            HandlerKind::Tcp => (TCP_FLAGS_HELP, &[LABEL_FLAG, LABEL_FAMILY], &[]),
            HandlerKind::PortDistribution => {
                (PORT_DISTRIBUTION_HELP, &[LABEL_PROTOCOL, LABEL_PORT], &[])
            }
            HandlerKind::Icmp => (ICMP_HELP, &[LABEL_FAMILY, LABEL_TYPE], &[]),
            HandlerKind::Policy => (
                POLICY_VERDICTS_HELP,
                &[LABEL_DIRECTION, LABEL_MATCH, LABEL_ACTION],
                &[],
            ),
            HandlerKind::FlowsToWorld if config.port => (
                FLOWS_TO_WORLD_HELP,
                &[LABEL_PROTOCOL, LABEL_VERDICT, LABEL_PORT],
                &[],
            ),
            HandlerKind::FlowsToWorld => {
                (FLOWS_TO_WORLD_HELP, &[LABEL_PROTOCOL, LABEL_VERDICT], &[])
            }
        };
        let metric = Self::metric_name(config.kind);
        let family = Family::new(metric, help, before, &config.context, after, cap, refused);
        Self {
            config: config.clone(),
            family: Arc::new(family),
        }
    }

    /// The metric a handler kind exports.
    pub(crate) const fn metric_name(kind: HandlerKind) -> &'static str {
        match kind {
            HandlerKind::Flow => names::FLOWS_PROCESSED,
            HandlerKind::Drop => names::DROP,
            HandlerKind::Tcp => names::TCP_FLAGS,
            HandlerKind::PortDistribution => names::PORT_DISTRIBUTION,
            HandlerKind::Icmp => names::ICMP,
            HandlerKind::Policy => names::POLICY_VERDICTS,
            HandlerKind::FlowsToWorld => names::FLOWS_TO_WORLD,
        }
    }

    pub(crate) fn family(&self) -> &Arc<Family> {
        &self.family
    }

    /// Appends the context label values.
    fn push_context<'a>(&self, view: &View<'a>, labels: &mut Labels<'a>) {
        let c = &self.config.context;
        for &label in &c.labels {
            labels.push(view.label(label));
        }
        if !c.source.is_empty() {
            labels.push(view.source.first(&c.source));
        }
        if !c.destination.is_empty() {
            labels.push(view.destination.first(&c.destination));
        }
    }

    /// Passes the label values of every series the flow counts in (none
    /// when the handler is not interested in it) to `sink`.
    pub(crate) fn process(&self, view: &View<'_>, sink: &mut Sink<'_>) {
        let flow = view.flow;
        match self.config.kind {
            HandlerKind::Flow => self.flow(view, sink),
            HandlerKind::Drop => {
                // Dropped packets: drop events only. A denied policy
                // verdict describes the same packet as its drop event, so
                // counting both would count every policy drop twice and the
                // metric would no longer equal what the datapath dropped.
                if flow.verdict != names::VERDICT_DROPPED || flow.event_type == names::MESSAGE_POLICY_VERDICT {
                    return;
                }
                let number;
                let reason = match names::drop_reason(flow.drop_reason) {
                    Some(name) => name,
                    None => {
                        number = Number::format(format_args!("{}", flow.drop_reason));
                        number.as_str()
                    }
                };
                let mut labels = Labels::new();
                self.push_context(view, &mut labels);
                labels.push(reason);
                labels.push(flow_protocol(flow));
                sink(&self.family, labels.as_slice());
            }
            HandlerKind::Tcp => {
                if !forwarded(flow) || flow.protocol != abi::IPPROTO_TCP {
                    return;
                }
                let mut labels = Labels::new();
                labels.push("");
                labels.push(ip_family(flow));
                self.push_context(view, &mut labels);
                let bits = flow.tcp_flags;
                let mut count = |flag: &'static str| {
                    labels.set(0, flag);
                    sink(&self.family, labels.as_slice());
                };
                if bits & abi::TCP_FIN != 0 {
                    count(names::FLAG_FIN);
                }
                if bits & abi::TCP_SYN != 0 {
                    count(if bits & abi::TCP_ACK != 0 {
                        names::FLAG_SYN_ACK
                    } else {
                        names::FLAG_SYN
                    });
                }
                if bits & abi::TCP_RST != 0 {
                    count(names::FLAG_RST);
                }
            }
            HandlerKind::PortDistribution => {
                let Some(protocol) = l4_name(flow) else {
                    return;
                };
                if !forwarded(flow) || flow.is_reply != Some(false) {
                    return;
                }
                let port_text;
                let port = match flow.protocol {
                    abi::IPPROTO_ICMP | abi::IPPROTO_ICMPV6 => "0",
                    _ => {
                        port_text = Number::format(format_args!("{}", flow.destination.port));
                        port_text.as_str()
                    }
                };
                let mut labels = Labels::new();
                labels.push(protocol);
                labels.push(port);
                self.push_context(view, &mut labels);
                sink(&self.family, labels.as_slice());
            }
            HandlerKind::Icmp => {
                let (family, v6) = match flow.protocol {
                    abi::IPPROTO_ICMP => (names::FAMILY_IPV4, false),
                    // Hubble (up to at least v1.19) labels these "IPv4" by
                    // mistake; Sightline says what they are.
                    abi::IPPROTO_ICMPV6 => (names::FAMILY_IPV6, true),
                    _ => return,
                };
                let mut buf = Text::new();
                let mut labels = Labels::new();
                labels.push(family);
                labels.push(icmp_type_code(v6, flow.icmp_type, flow.icmp_code, &mut buf));
                self.push_context(view, &mut labels);
                sink(&self.family, labels.as_slice());
            }
            HandlerKind::Policy => {
                if flow.event_type != names::MESSAGE_POLICY_VERDICT
                    || flow.source.identity == names::IDENTITY_HOST
                {
                    return;
                }
                let (mut direction_text, mut action_text) = (Number::new(), Number::new());
                let direction = name_or_number(
                    &names::DIRECTIONS_LOWER,
                    usize::from(flow.traffic_direction),
                    &mut direction_text,
                );
                let matched = names::POLICY_MATCHES
                    .get(usize::from(flow.policy_match_type))
                    .copied()
                    .unwrap_or(names::POLICY_MATCH_UNKNOWN);
                let action = name_or_number(
                    &names::VERDICTS_LOWER,
                    usize::from(flow.verdict),
                    &mut action_text,
                );
                let mut labels = Labels::new();
                labels.push(direction);
                labels.push(matched);
                labels.push(action);
                self.push_context(view, &mut labels);
                sink(&self.family, labels.as_slice());
            }
            HandlerKind::FlowsToWorld => self.flows_to_world(view, sink),
        }
    }

    fn flow(&self, view: &View<'_>, sink: &mut Sink<'_>) {
        let flow = view.flow;
        let number;
        let (kind, subtype) = match flow.event_type {
            names::MESSAGE_ACCESS_LOG => (names::TYPE_L7, ""),
            names::MESSAGE_DROP => (names::TYPE_DROP, ""),
            names::MESSAGE_CAPTURE => (names::TYPE_CAPTURE, ""),
            names::MESSAGE_TRACE => (
                names::TYPE_TRACE,
                names::TRACE_POINTS
                    .get(usize::from(flow.event_sub_type))
                    .copied()
                    .unwrap_or(""),
            ),
            names::MESSAGE_POLICY_VERDICT => (names::TYPE_POLICY_VERDICT, ""),
            other => {
                number = Number::format(format_args!("{other}"));
                (names::TYPE_UNKNOWN, number.as_str())
            }
        };
        let mut verdict_text = Number::new();
        let verdict = name_or_number(
            &names::VERDICTS,
            usize::from(flow.verdict),
            &mut verdict_text,
        );
        let mut labels = Labels::new();
        labels.push(flow_protocol(flow));
        labels.push(kind);
        labels.push(subtype);
        labels.push(verdict);
        self.push_context(view, &mut labels);
        sink(&self.family, labels.as_slice());
    }

    fn flows_to_world(&self, view: &View<'_>, sink: &mut Sink<'_>) {
        let flow = view.flow;
        let to_world = flow.destination.identity == names::IDENTITY_WORLD
            || view
                .destination
                .labels
                .iter()
                .any(|l| l == names::LABEL_RESERVED_WORLD);
        if !to_world || l4_name(flow).is_none() {
            return;
        }
        let dropped = flow.verdict == names::VERDICT_DROPPED;
        if dropped && !self.config.any_drop && flow.drop_reason != names::DROP_POLICY_DENIED {
            return;
        }
        // Forwarded replies would count ephemeral ports.
        let reply = flow.is_reply == Some(true);
        if !dropped && reply {
            return;
        }
        let syn = flow.protocol == abi::IPPROTO_TCP && flow.tcp_flags & abi::TCP_SYN != 0;
        if self.config.syn_only && (!syn || reply) {
            return;
        }
        let mut verdict_text = Number::new();
        let verdict = name_or_number(
            &names::VERDICTS,
            usize::from(flow.verdict),
            &mut verdict_text,
        );
        let port_text;
        let mut labels = Labels::new();
        labels.push(flow_protocol(flow));
        labels.push(verdict);
        if self.config.port {
            labels.push(match flow.protocol {
                abi::IPPROTO_TCP | abi::IPPROTO_UDP | abi::IPPROTO_SCTP => {
                    port_text = Number::format(format_args!("{}", flow.destination.port));
                    port_text.as_str()
                }
                _ => "",
            });
        }
        self.push_context(view, &mut labels);
        sink(&self.family, labels.as_slice());
    }
}

/// What a flow's signature is made of: every flow field any enabled
/// handler (or its context labels) reads. Two flows with equal signatures
/// get the same label values from every handler, which is what lets
/// [`super::tally`] count them without building labels. **A handler that
/// starts reading another field must add it here**; the `signatures` test
/// in `metrics/tests.rs` compares cached and uncached counting over random
/// flows to catch a forgotten one.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Reads {
    /// Port-distribution: the destination port of forwarded requests.
    port_distribution: bool,
    /// Flows-to-world with `port`: the destination port.
    world_port: bool,
    /// Context labels (or flows-to-world's `reserved:world` test) read the
    /// sides' metadata: pod, identity labels.
    sides: bool,
    /// Context labels read the sides' addresses.
    ips: bool,
}

/// A flow's signature (see [`Reads`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sig {
    /// Event type, sub-type, verdict, protocol, TCP flags, IP version,
    /// traffic direction, reply-ness.
    fields: u64,
    /// Drop reason, destination port (when read), ICMP type and code,
    /// policy match type, source-is-host and destination-is-world marks.
    more: u64,
    /// Addresses of the sides' pod metadata and identity labels, when read.
    sides: [usize; 4],
    /// The sides' addresses, when read.
    ips: Option<[std::net::IpAddr; 2]>,
}

impl std::hash::Hash for Sig {
    /// Only the parts in use: most configurations read no sides.
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.fields);
        h.write_u64(self.more);
        if self.sides != [0; 4] {
            for side in self.sides {
                h.write_usize(side);
            }
        }
        if let Some(ips) = &self.ips {
            ips.hash(h);
        }
    }
}

impl Reads {
    pub(crate) fn new(handlers: &[Handler], ips: bool) -> Self {
        let mut reads = Self {
            ips,
            ..Self::default()
        };
        for h in handlers {
            let c = &h.config.context;
            if !c.source.is_empty() || !c.destination.is_empty() || !c.labels.is_empty() {
                reads.sides = true;
            }
            match h.config.kind {
                HandlerKind::PortDistribution => reads.port_distribution = true,
                HandlerKind::FlowsToWorld => {
                    reads.sides = true;
                    reads.world_port |= h.config.port;
                }
                _ => {}
            }
        }
        reads
    }

    /// Whether any handler reads the destination port of this flow. Only
    /// then is it in the signature: replies to many clients would otherwise
    /// make one signature per ephemeral port.
    fn reads_port(&self, flow: &Flow) -> bool {
        let l4 = matches!(
            flow.protocol,
            abi::IPPROTO_TCP | abi::IPPROTO_UDP | abi::IPPROTO_SCTP
        );
        (self.port_distribution && l4 && forwarded(flow) && flow.is_reply == Some(false))
            || (self.world_port && l4)
    }

    /// Whether signatures read only the flow's own fields (no sides), as
    /// in most configurations, the default one included: they are then
    /// just [`Reads::words`].
    #[inline]
    pub(crate) fn plain(&self) -> bool {
        !self.sides && !self.ips
    }

    /// The flow's own fields every handler reads, in two words.
    #[inline]
    pub(crate) fn words(&self, flow: &Flow) -> (u64, u64) {
        let reply = match flow.is_reply {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        };
        let fields = u64::from_le_bytes([
            flow.event_type,
            flow.event_sub_type,
            flow.verdict,
            flow.protocol,
            flow.tcp_flags,
            flow.ip_version,
            flow.traffic_direction,
            reply,
        ]);
        let port = if self.reads_port(flow) {
            flow.destination.port
        } else {
            0
        };
        let marks = u64::from(flow.source.identity == names::IDENTITY_HOST)
            | u64::from(flow.destination.identity == names::IDENTITY_WORLD) << 1;
        let more = u64::from(flow.drop_reason)
            | u64::from(port) << 16
            | u64::from(flow.icmp_type) << 32
            | u64::from(flow.icmp_code) << 40
            | u64::from(flow.policy_match_type) << 48
            | marks << 56;
        (fields, more)
    }

    /// The full signature, for configurations that read the sides.
    pub(crate) fn signature(&self, flow: &Flow) -> Sig {
        let (fields, more) = self.words(flow);
        let sides = if self.sides {
            let (s, d) = (&flow.source, &flow.destination);
            [
                address(s.pod.as_ref()),
                address(s.identity_labels.as_ref()),
                address(d.pod.as_ref()),
                address(d.identity_labels.as_ref()),
            ]
        } else {
            [0; 4]
        };
        let ips = self.ips.then_some([flow.source.ip, flow.destination.ip]);
        Sig {
            fields,
            more,
            sides,
            ips,
        }
    }

    /// The metadata a signature holds the address of, to keep it alive.
    pub(crate) fn keep(&self, flow: &Flow) -> Vec<Keep> {
        if !self.sides {
            return Vec::new();
        }
        let mut keep = Vec::new();
        for side in [&flow.source, &flow.destination] {
            if let Some(pod) = &side.pod {
                keep.push(Keep::Pod(Arc::clone(pod)));
            }
            if let Some(labels) = &side.identity_labels {
                keep.push(Keep::Strings(Arc::clone(labels)));
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_type_codes_read_like_gopacket() {
        let mut buf = Text::new();
        let mut s = |v6, t, c| icmp_type_code(v6, t, c, &mut buf).to_owned();
        assert_eq!(s(false, 8, 0), "EchoRequest");
        assert_eq!(s(false, 0, 0), "EchoReply");
        assert_eq!(s(false, 8, 3), "EchoRequest(Code: 3)");
        assert_eq!(s(false, 3, 3), "DestinationUnreachable(Port)");
        assert_eq!(s(false, 3, 99), "DestinationUnreachable(Code: 99)");
        assert_eq!(s(false, 5, 3), "Redirect(TOS+Host)");
        assert_eq!(
            s(false, 11, 1),
            "TimeExceeded(FragmentReassemblyTimeExceeded)"
        );
        assert_eq!(s(false, 200, 7), "200(7)");
        assert_eq!(s(true, 128, 0), "EchoRequest");
        assert_eq!(s(true, 1, 4), "DestinationUnreachable(PortUnreachable)");
        assert_eq!(s(true, 4, 2), "ParameterProblem(UnrecognizedIPv6Option)");
        assert_eq!(s(true, 135, 0), "NeighborSolicitation");
        assert_eq!(s(true, 8, 0), "8(0)");
    }

    #[test]
    fn labels_never_overflow() {
        let mut l = Labels::new();
        for _ in 0..MAX_LABELS + 5 {
            l.push("x");
        }
        l.set(MAX_LABELS + 1, "y");
        assert_eq!(l.as_slice().len(), MAX_LABELS);
    }
}
