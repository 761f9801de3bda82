//! Decodes raw ring-buffer bytes into typed records.
//!
//! `decode` checks size and ABI version and copies the bytes into an
//! [`Event`]; [`Record::new`] turns an event and the flow the flow builder
//! made of it into a self-describing record: the flow's enrichment (pods,
//! policies, interfaces, kernel reasons; a missing lookup leaves a field
//! empty, it is never an error) with the event's datapath codes. Records are what `--debug-events` prints and
//! what control-socket subscribers receive, as JSON lines.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sightline_abi as abi;
use sightline_abi::Event;
use sightline_flow::Flow;

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event of {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
    #[error("event with ABI version {got}, this collector speaks {expected}")]
    Version { got: u8, expected: u8 },
}

/// Copies one ring-buffer record into an [`Event`].
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let expected = size_of::<Event>();
    if bytes.len() != expected {
        return Err(DecodeError::Size { got: bytes.len(), expected });
    }
    // SAFETY: the length matches and `Event` is `repr(C)` plain data for
    // which every bit pattern is valid; read_unaligned copes with alignment.
    let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if ev.version != abi::ABI_VERSION {
        return Err(DecodeError::Version { got: ev.version, expected: abi::ABI_VERSION });
    }
    Ok(ev)
}

/// One side of a record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub ip: String,
    pub port: u16,
    pub identity: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod: Option<String>,
}

/// Connection counters carried by an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    pub rev_packets: u64,
    pub rev_bytes: u64,
}

/// A decoded, enriched event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339 time of the event.
    pub time: String,
    /// Unix time in nanoseconds.
    pub time_ns: i64,
    pub node: String,
    /// `trace`, `drop`, `policy-verdict`, `kernel-drop`.
    pub kind: String,
    /// Hubble `TraceObservationPoint` name for traces (`to-endpoint`, …).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub observation_point: Option<String>,
    /// Hubble `TraceObservationPoint` value (TO_ENDPOINT = 101).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub observation_point_id: Option<u32>,
    /// Hubble drop reason for `drop`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub drop_reason: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub drop_reason_name: Option<String>,
    /// The kernel's `skb_drop_reason` for `kernel-drop`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kernel_reason: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kernel_reason_name: Option<String>,
    pub ifindex: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub interface: Option<String>,
    pub ip_version: u8,
    /// `TCP`, `UDP`, `ICMPv4`, `SCTP`, or the number.
    pub protocol: String,
    pub source: Peer,
    pub destination: Peer,
    pub tcp_flags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub icmp_code: Option<u8>,
    /// `new`, `established`, `reply`, or `none`.
    pub ct_state: String,
    pub is_reply: bool,
    /// `ingress`, `egress`, `unknown`.
    pub direction: String,
    /// For policy verdicts: `forwarded`, `dropped`, `audit`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub verdict: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub match_type: Option<String>,
    pub endpoint_id: u16,
    pub pkt_len: u32,
    pub counters: Counters,
    /// Policies that allowed the connection (policy verdicts), as
    /// `namespace/name`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub allowed_by: Vec<String>,
    /// Policies that select the endpoint whose policy denied it (denied or
    /// audited verdicts, policy drops).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub denied_by: Vec<String>,
}

/// Hubble name and proto value of a datapath trace point.
#[must_use]
pub fn observation_point(point: u8) -> (&'static str, u32) {
    let name = crate::metrics::names::TRACE_POINTS
        .get(usize::from(point))
        .copied()
        .unwrap_or("unknown");
    (name, u32::from(crate::flow::builder::observation_point(point)))
}

/// Hubble `DropReason` name of a datapath drop code.
#[must_use]
pub fn drop_reason_name(code: u8) -> &'static str {
    crate::metrics::names::drop_reason(u16::from(code)).unwrap_or("DROP_REASON_UNKNOWN")
}

/// Names of the TCP flags set in `flags`, in header order.
#[must_use]
pub fn tcp_flag_names(flags: u8) -> Vec<String> {
    const NAMES: [(u8, &str); 8] = [
        (abi::TCP_FIN, "FIN"),
        (abi::TCP_SYN, "SYN"),
        (abi::TCP_RST, "RST"),
        (abi::TCP_PSH, "PSH"),
        (abi::TCP_ACK, "ACK"),
        (abi::TCP_URG, "URG"),
        (abi::TCP_ECE, "ECE"),
        (abi::TCP_CWR, "CWR"),
    ];
    NAMES.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, n)| (*n).to_owned()).collect()
}

fn protocol_name(p: u8) -> String {
    match p {
        abi::IPPROTO_TCP => "TCP".into(),
        abi::IPPROTO_UDP => "UDP".into(),
        abi::IPPROTO_ICMP => "ICMPv4".into(),
        abi::IPPROTO_ICMPV6 => "ICMPv6".into(),
        abi::IPPROTO_SCTP => "SCTP".into(),
        0 => String::new(),
        n => n.to_string(),
    }
}


/// Formats Unix nanoseconds as RFC 3339 UTC with nanoseconds
/// (`2024-11-26T10:39:56.395123456Z`).
#[must_use]
pub fn rfc3339(unix_ns: i64) -> String {
    let t = jiff::Timestamp::from_nanosecond(i128::from(unix_ns)).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{}.{:09}Z", t.strftime("%Y-%m-%dT%H:%M:%S"), t.subsec_nanosecond())
}

impl Record {
    /// The record of one event: `flow` is what the flow builder made of it
    /// (every name, pod, policy and interface comes from there: one
    /// enrichment, not two that could disagree), `ev` adds the datapath's
    /// own codes (trace point, drop code, conntrack state, endpoint,
    /// length), `node` is this node's name.
    #[must_use]
    pub fn new(ev: &Event, flow: &Flow, node: &str) -> Self {
        let time_ns = flow.time_ns;
        let peer = |side: &sightline_flow::Side, port: u16| Peer {
            ip: side.ip.to_string(),
            port,
            identity: side.identity,
            namespace: side.pod.as_ref().map(|p| p.namespace.clone()),
            pod: side.pod.as_ref().map(|p| p.name.clone()),
        };
        let names = |list: &Option<Arc<[String]>>| list.as_deref().map(<[String]>::to_vec).unwrap_or_default();
        let mut r = Self {
            time: rfc3339(time_ns),
            time_ns,
            node: node.to_owned(),
            ifindex: ev.ifindex,
            interface: flow.interface.as_deref().map(str::to_owned),
            ip_version: ev.ip_version,
            protocol: protocol_name(ev.protocol),
            source: peer(&flow.source, ev.src_port),
            destination: peer(&flow.destination, ev.dst_port),
            tcp_flags: if ev.protocol == abi::IPPROTO_TCP { tcp_flag_names(ev.tcp_flags) } else { Vec::new() },
            ct_state: match ev.ct_state {
                abi::CT_NEW => "new",
                abi::CT_ESTABLISHED => "established",
                abi::CT_REPLY => "reply",
                _ => "none",
            }
            .into(),
            is_reply: ev.ct_state == abi::CT_REPLY,
            direction: match ev.direction {
                abi::DIR_INGRESS => "ingress",
                abi::DIR_EGRESS => "egress",
                _ => "unknown",
            }
            .into(),
            endpoint_id: ev.endpoint_id,
            pkt_len: ev.pkt_len,
            counters: Counters {
                fwd_packets: ev.fwd_packets,
                fwd_bytes: ev.fwd_bytes,
                rev_packets: ev.rev_packets,
                rev_bytes: ev.rev_bytes,
            },
            ..Self::default()
        };
        if matches!(ev.protocol, abi::IPPROTO_ICMP | abi::IPPROTO_ICMPV6) {
            r.icmp_type = Some(ev.icmp_type);
            r.icmp_code = Some(ev.icmp_code);
        }
        match ev.kind {
            abi::EVENT_TRACE => {
                let (name, id) = observation_point(ev.sub_type);
                r.kind = "trace".into();
                r.observation_point = Some(name.into());
                r.observation_point_id = Some(id);
            }
            abi::EVENT_DROP => {
                r.kind = "drop".into();
                r.drop_reason = Some(u32::from(ev.sub_type));
                r.drop_reason_name = Some(drop_reason_name(ev.sub_type).into());
                r.verdict = Some("dropped".into());
                r.denied_by = names(&flow.denied_by);
            }
            abi::EVENT_POLICY_VERDICT => {
                r.kind = "policy-verdict".into();
                r.verdict = Some(
                    match ev.verdict {
                        abi::VERDICT_FORWARDED => "forwarded",
                        abi::VERDICT_DROPPED => "dropped",
                        abi::VERDICT_AUDIT => "audit",
                        _ => "unknown",
                    }
                    .into(),
                );
                r.allowed_by = names(&flow.allowed_by);
                r.denied_by = names(&flow.denied_by);
                r.match_type = Some(
                    match ev.match_type {
                        abi::MATCH_L3_ONLY => "l3-only",
                        abi::MATCH_L3_L4 => "l3-l4",
                        abi::MATCH_L4_ONLY => "l4-only",
                        abi::MATCH_ALL => "all",
                        _ => "none",
                    }
                    .into(),
                );
            }
            abi::EVENT_KERNEL_DROP => {
                r.kind = "kernel-drop".into();
                r.kernel_reason = Some(ev.reason);
                r.kernel_reason_name =
                    Some(flow.kernel_drop_reason_name.as_deref().map_or_else(|| format!("UNKNOWN({})", ev.reason), str::to_owned));
                r.verdict = Some("dropped".into());
            }
            other => r.kind = format!("unknown({other})"),
        }
        r
    }

    /// One human-readable line, for `--debug-events` and the demo.
    #[must_use]
    pub fn summary(&self) -> String {
        let side = |p: &Peer| match (&p.namespace, &p.pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}:{} ({})", p.port, p.identity),
            _ => format!("{}:{} ({})", p.ip, p.port, p.identity),
        };
        let what = match self.kind.as_str() {
            "trace" => format!("trace {}", self.observation_point.as_deref().unwrap_or("?")),
            "drop" => format!("DROP {}", self.drop_reason_name.as_deref().unwrap_or("?")),
            "kernel-drop" => format!("KERNEL-DROP {}", self.kernel_reason_name.as_deref().unwrap_or("?")),
            "policy-verdict" => format!(
                "policy-verdict {} {} ({})",
                self.direction,
                self.verdict.as_deref().unwrap_or("?"),
                self.match_type.as_deref().unwrap_or("?")
            ),
            k => k.to_owned(),
        };
        let mut flags = if self.tcp_flags.is_empty() { String::new() } else { format!(" [{}]", self.tcp_flags.join(",")) };
        if !self.allowed_by.is_empty() {
            flags.push_str(&format!(" allowed-by={}", self.allowed_by.join(",")));
        }
        if !self.denied_by.is_empty() {
            flags.push_str(&format!(" denied-by={}", self.denied_by.join(",")));
        }
        let time = self.time.get(11..23).unwrap_or(&self.time);
        format!(
            "{time} {} {what}: {} -> {} {}{flags} ct={} pkts={}/{} bytes={}/{}",
            self.node,
            side(&self.source),
            side(&self.destination),
            self.protocol,
            self.ct_state,
            self.counters.fwd_packets,
            self.counters.rev_packets,
            self.counters.fwd_bytes,
            self.counters.rev_bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Metadata, PodMeta};
    use std::net::Ipv4Addr;

    fn bytes_of(ev: &Event) -> Vec<u8> {
        // SAFETY: Event is repr(C) plain data.
        unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), size_of::<Event>()) }.to_vec()
    }

    #[test]
    fn decodes_a_trace_event() {
        let mut ev = Event {
            ts_ns: 1_000,
            kind: abi::EVENT_TRACE,
            sub_type: abi::TRACE_TO_LXC,
            ip_version: 4,
            protocol: abi::IPPROTO_TCP,
            tcp_flags: abi::TCP_SYN | abi::TCP_ACK,
            ct_state: abi::CT_REPLY,
            src_port: 80,
            dst_port: 40000,
            src_identity: 256,
            dst_identity: 257,
            version: abi::ABI_VERSION,
            ..Event::default()
        };
        ev.src_addr[..4].copy_from_slice(&[10, 244, 1, 2]);
        ev.dst_addr[..4].copy_from_slice(&[10, 244, 1, 3]);
        let decoded = decode(&bytes_of(&ev)).unwrap();
        assert_eq!(decoded, ev);
        let mut meta = Metadata { node_name: "node-1".into(), mono_to_unix_ns: 1_700_000_000_000_000_000, ..Metadata::default() };
        meta.pods.insert(
            Ipv4Addr::new(10, 244, 1, 2),
            Arc::new(PodMeta { namespace: "x".into(), name: "a".into(), endpoint_id: 1, ..PodMeta::default() }),
        );
        let flow = crate::flow::FlowBuilder::new().build(&decoded, &meta);
        let r = Record::new(&decoded, &flow, &meta.node_name);
        assert_eq!(r.kind, "trace");
        assert_eq!(r.observation_point.as_deref(), Some("to-endpoint"));
        assert_eq!(r.observation_point_id, Some(101));
        assert_eq!(r.tcp_flags, vec!["SYN", "ACK"]);
        assert!(r.is_reply);
        assert_eq!(r.source.pod.as_deref(), Some("a"));
        assert_eq!(r.destination.pod, None);
        assert_eq!(r.destination.ip, "10.244.1.3");
        assert_eq!(r.time, "2023-11-14T22:13:20.000001000Z");
    }

    #[test]
    fn records_carry_the_flows_policies_and_kernel_reasons() {
        let mut meta = Metadata { node_name: "node-1".into(), ..Metadata::default() };
        meta.policy_sets.insert(7, Arc::from(vec!["x/allow-web".to_owned()]));
        meta.selected_by.insert((3, abi::DIR_INGRESS), Arc::from(vec!["x/deny-all".to_owned()]));
        meta.kernel_reasons.insert(2, "NOT_SPECIFIED".into());
        let mut builder = crate::flow::FlowBuilder::new();
        let mut record = |ev: Event| {
            let flow = builder.build(&ev, &meta);
            let r = Record::new(&ev, &flow, "node-1");
            (flow, r)
        };
        let base = Event { version: abi::ABI_VERSION, ip_version: 4, protocol: abi::IPPROTO_TCP, endpoint_id: 3, direction: abi::DIR_INGRESS, ..Event::default() };
        let (flow, r) = record(Event { kind: abi::EVENT_POLICY_VERDICT, verdict: abi::VERDICT_FORWARDED, reason: 7, ..base });
        assert_eq!(r.allowed_by, ["x/allow-web"]);
        assert_eq!(flow.allowed_by.as_deref(), Some(&["x/allow-web".to_owned()][..]));
        let (_, r) = record(Event { kind: abi::EVENT_DROP, sub_type: abi::DROP_POLICY_DENIED, ..base });
        assert_eq!((r.kind.as_str(), r.denied_by.as_slice()), ("drop", &["x/deny-all".to_owned()][..]));
        let (_, r) = record(Event { kind: abi::EVENT_KERNEL_DROP, reason: 2, ..base });
        assert_eq!(r.kernel_reason_name.as_deref(), Some("NOT_SPECIFIED"));
        let (_, r) = record(Event { kind: abi::EVENT_KERNEL_DROP, reason: 99, ..base });
        assert_eq!(r.kernel_reason_name.as_deref(), Some("UNKNOWN(99)"));
    }

    #[test]
    fn rejects_wrong_size_and_version() {
        assert_eq!(decode(&[0; 8]), Err(DecodeError::Size { got: 8, expected: size_of::<Event>() }));
        let ev = Event { version: abi::ABI_VERSION + 1, ..Event::default() };
        assert!(matches!(decode(&bytes_of(&ev)), Err(DecodeError::Version { .. })));
    }

    #[test]
    fn rfc3339_formats_epoch() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000000000Z");
    }
}
