//! OpenTelemetry log records: one `LogRecord` per flow record,
//! protobuf-encoded (the OTLP sink turns spooled records into its
//! exporter's records).
//!
//! - `time_unix_nano`: the flow's time (an aggregate's window end);
//!   `observed_time_unix_nano`: when it was encoded;
//! - severity `WARN` for dropped flows, `INFO` otherwise;
//! - body: the flow as JSON (the file format's `flow` object);
//! - attributes: OpenTelemetry's semantic conventions where one exists
//!   (`source.address`, `source.port`, `destination.address`,
//!   `destination.port`, `network.transport`, `network.type`,
//!   `k8s.namespace.name` and `k8s.pod.name` of the source,
//!   `k8s.node.name`), and `sightline.*` for the rest.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use prost::Message as _;
use sightline_flow::json_fast;
use sightline_proto::FlowCounters;
use sightline_proto::flow::{self as pb, layer4::Protocol};

use super::Encoder;
use crate::record::{FlowRecord, Item, unix_nanos};

/// The OTLP encoder.
///
/// [`Encoder::encode`] writes the protobuf bytes straight from the flow
/// (no `LogRecord` is built); they are the bytes prost gives for
/// [`OtlpEncoder::log_record`], field for field and in the same order (a
/// test compares both).
#[derive(Debug, Default)]
pub struct OtlpEncoder {
    body: Vec<u8>,
}

impl Encoder for OtlpEncoder {
    fn encode(&mut self, item: &Item<'_>, out: &mut Vec<u8>) -> bool {
        match item {
            Item::Flow(r) => {
                self.write_record(r, observed_now(), out);
                true
            }
            Item::Other(_) => false,
        }
    }
}

fn observed_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn name<E>(v: i32, to: impl Fn(i32) -> Option<E>, s: impl Fn(&E) -> &'static str) -> Cow<'static, str> {
    to(v).map_or_else(|| v.to_string().into(), |e| s(&e).into())
}

/// Where the attributes of a record go: `KeyValue`s, or protobuf bytes.
trait Attributes {
    fn string(&mut self, key: &str, v: &str);
    fn int(&mut self, key: &str, v: i64);
    fn boolean(&mut self, key: &str, v: bool);
    fn strings(&mut self, key: &str, v: &[&str]);
}

impl Attributes for Vec<KeyValue> {
    fn string(&mut self, key: &str, v: &str) {
        self.push(key_value(key, Value::StringValue(v.to_owned())));
    }

    fn int(&mut self, key: &str, v: i64) {
        self.push(key_value(key, Value::IntValue(v)));
    }

    fn boolean(&mut self, key: &str, v: bool) {
        self.push(key_value(key, Value::BoolValue(v)));
    }

    fn strings(&mut self, key: &str, v: &[&str]) {
        let values = v.iter().map(|s| AnyValue { value: Some(Value::StringValue((*s).to_owned())) }).collect();
        self.push(key_value(key, Value::ArrayValue(ArrayValue { values })));
    }
}

fn key_value(key: &str, v: Value) -> KeyValue {
    KeyValue { key: key.to_owned(), key_strindex: 0, value: Some(AnyValue { value: Some(v) }) }
}

/// Protobuf wire format, as prost writes it.
mod wire {
    pub const LEN: u8 = 2;

    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn varint_len(v: u64) -> usize {
        // 1 byte per 7 bits, at least one.
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    /// The (one-byte) key of a field numbered below 16.
    pub fn key(out: &mut Vec<u8>, field: u8, wire_type: u8) {
        out.push((field << 3) | wire_type);
    }

    /// The length of a length-delimited field of `len` bytes (its key
    /// being one byte).
    pub fn field_len(len: usize) -> usize {
        1 + varint_len(len as u64) + len
    }

    pub fn bytes(out: &mut Vec<u8>, field: u8, v: &[u8]) {
        key(out, field, LEN);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

/// `AnyValue` lengths and bytes (`string_value` 1, `bool_value` 2,
/// `int_value` 3, `array_value` 5 of `values` 1).
fn string_value_len(v: &str) -> usize {
    wire::field_len(v.len())
}

fn write_string_value(out: &mut Vec<u8>, v: &str) {
    wire::bytes(out, 1, v.as_bytes());
}

/// Writes `KeyValue`s as field 6 of a `LogRecord`.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    /// The key-value's key, then the key of its `AnyValue` of `value_len`.
    fn head(&mut self, key: &str, value_len: usize) {
        let kv_len = wire::field_len(key.len()) + wire::field_len(value_len);
        wire::key(self.0, 6, wire::LEN);
        wire::varint(self.0, kv_len as u64);
        wire::bytes(self.0, 1, key.as_bytes());
        wire::key(self.0, 2, wire::LEN);
        wire::varint(self.0, value_len as u64);
    }
}

impl Attributes for Writer<'_> {
    fn string(&mut self, key: &str, v: &str) {
        self.head(key, string_value_len(v));
        write_string_value(self.0, v);
    }

    fn int(&mut self, key: &str, v: i64) {
        self.head(key, 1 + wire::varint_len(v as u64));
        wire::key(self.0, 3, 0);
        wire::varint(self.0, v as u64);
    }

    fn boolean(&mut self, key: &str, v: bool) {
        self.head(key, 2);
        wire::key(self.0, 2, 0);
        self.0.push(u8::from(v));
    }

    fn strings(&mut self, key: &str, v: &[&str]) {
        let array_len: usize = v.iter().map(|s| wire::field_len(string_value_len(s))).sum();
        self.head(key, wire::field_len(array_len));
        wire::key(self.0, 5, wire::LEN);
        wire::varint(self.0, array_len as u64);
        for s in v {
            wire::key(self.0, 1, wire::LEN);
            wire::varint(self.0, string_value_len(s) as u64);
            write_string_value(self.0, s);
        }
    }
}

/// The attributes of a flow record, in order.
fn attributes(r: &FlowRecord<'_>, a: &mut impl Attributes) {
    let f = r.flow;
    if let Some(ip) = &f.ip {
        if !ip.source.is_empty() {
            a.string("source.address", &ip.source);
        }
        if !ip.destination.is_empty() {
            a.string("destination.address", &ip.destination);
        }
        match pb::IpVersion::try_from(ip.ip_version) {
            Ok(pb::IpVersion::IPv4) => a.string("network.type", "ipv4"),
            Ok(pb::IpVersion::IPv6) => a.string("network.type", "ipv6"),
            _ => {}
        }
    }
    let protocol = f.l4.as_ref().and_then(|l| l.protocol.as_ref());
    let ports = match protocol {
        Some(Protocol::Tcp(t)) => Some(("tcp", t.source_port, t.destination_port)),
        Some(Protocol::Udp(u)) => Some(("udp", u.source_port, u.destination_port)),
        Some(Protocol::Sctp(s)) => Some(("sctp", s.source_port, s.destination_port)),
        _ => None,
    };
    if let Some((transport, source, destination)) = ports {
        a.string("network.transport", transport);
        if !r.aggregated {
            a.int("source.port", i64::from(source));
        }
        a.int("destination.port", i64::from(destination));
    }
    match protocol {
        Some(Protocol::IcmPv4(i)) => {
            a.string("network.transport", "icmp");
            a.int("sightline.icmp.type", i64::from(i.r#type));
            a.int("sightline.icmp.code", i64::from(i.code));
        }
        Some(Protocol::IcmPv6(i)) => {
            a.string("network.transport", "icmpv6");
            a.int("sightline.icmp.type", i64::from(i.r#type));
            a.int("sightline.icmp.code", i64::from(i.code));
        }
        Some(Protocol::Tcp(t)) => {
            if let Some(flags) = &t.flags {
                let mut set = String::new();
                for (n, on) in [
                    ("SYN", flags.syn),
                    ("ACK", flags.ack),
                    ("FIN", flags.fin),
                    ("RST", flags.rst),
                    ("PSH", flags.psh),
                    ("URG", flags.urg),
                    ("ECE", flags.ece),
                    ("CWR", flags.cwr),
                    ("NS", flags.ns),
                ] {
                    if on {
                        if !set.is_empty() {
                            set.push(',');
                        }
                        set.push_str(n);
                    }
                }
                if !set.is_empty() {
                    a.string("sightline.tcp.flags", &set);
                }
            }
        }
        _ => {}
    }
    let node = if f.node_name.is_empty() { r.node_name } else { &f.node_name };
    a.string("k8s.node.name", node);
    if let Some(s) = &f.source {
        if !s.namespace.is_empty() {
            a.string("k8s.namespace.name", &s.namespace);
        }
        if !s.pod_name.is_empty() {
            a.string("k8s.pod.name", &s.pod_name);
        }
    }
    for (side, e) in [("source", &f.source), ("destination", &f.destination)] {
        let Some(e) = e else { continue };
        let source = side == "source";
        if !source {
            if !e.namespace.is_empty() {
                a.string("sightline.destination.namespace", &e.namespace);
            }
            if !e.pod_name.is_empty() {
                a.string("sightline.destination.pod", &e.pod_name);
            }
        }
        a.int(if source { "sightline.source.identity" } else { "sightline.destination.identity" }, i64::from(e.identity));
        if let Some(w) = e.workloads.first() {
            a.string(if source { "sightline.source.workload" } else { "sightline.destination.workload" }, &w.name);
            a.string(if source { "sightline.source.workload_kind" } else { "sightline.destination.workload_kind" }, &w.kind);
        }
        if !e.labels.is_empty() {
            let labels: Vec<&str> = e.labels.iter().map(String::as_str).collect();
            a.strings(if source { "sightline.source.labels" } else { "sightline.destination.labels" }, &labels);
        }
    }
    a.string("sightline.verdict", &name(f.verdict, |v| pb::Verdict::try_from(v).ok(), pb::Verdict::as_str_name));
    if f.drop_reason_desc != 0 {
        a.string(
            "sightline.drop_reason",
            &name(f.drop_reason_desc, |v| pb::DropReason::try_from(v).ok(), pb::DropReason::as_str_name),
        );
    }
    a.string(
        "sightline.traffic_direction",
        &name(f.traffic_direction, |v| pb::TrafficDirection::try_from(v).ok(), pb::TrafficDirection::as_str_name),
    );
    if f.trace_observation_point != 0 {
        a.string(
            "sightline.trace_observation_point",
            &name(f.trace_observation_point, |v| pb::TraceObservationPoint::try_from(v).ok(), pb::TraceObservationPoint::as_str_name),
        );
    }
    if let Some(e) = &f.event_type {
        a.int("sightline.event_type", i64::from(e.r#type));
        a.int("sightline.event_sub_type", i64::from(e.sub_type));
    }
    if let Some(reply) = f.is_reply {
        a.boolean("sightline.reply", reply);
    }
    if !f.uuid.is_empty() {
        a.string("sightline.flow.uuid", &f.uuid);
    }
    for (key, list) in [
        ("sightline.policies.ingress_allowed_by", &f.ingress_allowed_by),
        ("sightline.policies.ingress_denied_by", &f.ingress_denied_by),
        ("sightline.policies.egress_allowed_by", &f.egress_allowed_by),
        ("sightline.policies.egress_denied_by", &f.egress_denied_by),
    ] {
        if !list.is_empty() {
            let names: Vec<String> = list.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            a.strings(key, &names);
        }
    }
    if let Some(any) = &f.extensions
        && any.type_url == sightline_proto::FLOW_COUNTERS_TYPE_URL
        && let Ok(c) = FlowCounters::decode(any.value.as_slice())
    {
        for (key, v) in [
            ("sightline.flow.forward_packets", c.forward_packets),
            ("sightline.flow.forward_bytes", c.forward_bytes),
            ("sightline.flow.reply_packets", c.reply_packets),
            ("sightline.flow.reply_bytes", c.reply_bytes),
        ] {
            a.int(key, i64::try_from(v).unwrap_or(i64::MAX));
        }
        if !c.kernel_drop_reason.is_empty() {
            a.string("sightline.kernel_drop_reason", &c.kernel_drop_reason);
        }
    }
    for (key, n) in [
        ("sightline.flow.count.ingress", r.counts.ingress),
        ("sightline.flow.count.egress", r.counts.egress),
        ("sightline.flow.count.unknown", r.counts.unknown),
    ] {
        a.int(key, i64::try_from(n).unwrap_or(i64::MAX));
    }
    if r.aggregated {
        a.boolean("sightline.aggregated", true);
    }
}

fn dropped(r: &FlowRecord<'_>) -> bool {
    r.flow.verdict == pb::Verdict::Dropped as i32
}

impl OtlpEncoder {
    /// The log record of a flow record.
    #[must_use]
    pub fn log_record(&mut self, r: &FlowRecord<'_>) -> LogRecord {
        self.log_record_at(r, observed_now())
    }

    fn log_record_at(&mut self, r: &FlowRecord<'_>, observed: u64) -> LogRecord {
        self.body.clear();
        json_fast::write_flow(&mut self.body, r.flow);
        let dropped = dropped(r);
        let mut a = Vec::with_capacity(32);
        attributes(r, &mut a);
        LogRecord {
            time_unix_nano: u64::try_from(unix_nanos(&r.time)).unwrap_or(0),
            observed_time_unix_nano: observed,
            severity_number: if dropped { SeverityNumber::Warn as i32 } else { SeverityNumber::Info as i32 },
            severity_text: if dropped { "WARN".to_owned() } else { "INFO".to_owned() },
            body: Some(AnyValue { value: Some(Value::StringValue(String::from_utf8_lossy(&self.body).into_owned())) }),
            attributes: a,
            ..LogRecord::default()
        }
    }

    /// Appends the bytes of [`OtlpEncoder::log_record`] (observed at
    /// `observed`) to `out`, without building it: the fields in prost's
    /// order, by number (time 1, severity 2 and 3, body 5, attributes 6,
    /// observed time 11), default values left out.
    fn write_record(&mut self, r: &FlowRecord<'_>, observed: u64, out: &mut Vec<u8>) {
        let time = u64::try_from(unix_nanos(&r.time)).unwrap_or(0);
        if time != 0 {
            wire::key(out, 1, 1);
            out.extend_from_slice(&time.to_le_bytes());
        }
        let dropped = dropped(r);
        wire::key(out, 2, 0);
        wire::varint(out, if dropped { SeverityNumber::Warn as u64 } else { SeverityNumber::Info as u64 });
        wire::bytes(out, 3, if dropped { b"WARN" } else { b"INFO" });
        self.body.clear();
        json_fast::write_flow(&mut self.body, r.flow);
        // The writer writes UTF-8 only; anything else would be replaced as
        // `log_record` does.
        let body = String::from_utf8_lossy(&self.body);
        wire::key(out, 5, wire::LEN);
        wire::varint(out, string_value_len(&body) as u64);
        write_string_value(out, &body);
        attributes(r, &mut Writer(out));
        if observed != 0 {
            wire::key(out, 11, 1);
            out.extend_from_slice(&observed.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use sightline_flow::{Flow, testing, to_proto};

    use super::*;
    use crate::record::Counts;

    fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a Value> {
        r.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
    }

    /// Flows with every kind of attribute: pods with labels and workloads,
    /// policies of every list, counters and a kernel drop reason, TCP, UDP,
    /// ICMP, aggregates, names from the flow or from the record.
    fn varied() -> Vec<(pb::Flow, bool)> {
        use std::sync::Arc;

        use sightline_flow::{PodMeta, Side};
        let pod = |ns: &str, name: &str| {
            Arc::new(PodMeta {
                namespace: ns.into(),
                name: name.into(),
                endpoint_id: 7,
                identity: 4242,
                labels: Arc::from(vec!["k8s:app=a".to_owned(), "k8s:io.kubernetes.pod.namespace=x".to_owned()]),
                node: "node-2".into(),
            })
        };
        let mut out = Vec::new();
        for i in 0..24u32 {
            let f = Flow {
                time_ns: 1_700_000_000_000_000_000 + i64::from(i) * 1_234_567,
                seq: u64::from(i) + 1,
                source: Side { pod: Some(pod("x", "client-1")), identity: 4242, ..testing::side([10, 0, 0, 1], 40000) },
                destination: Side {
                    pod: (i % 3 != 0).then(|| pod("y", "server-0")),
                    identity: 2 + i * 1000,
                    ..testing::side([10, 0, 1, 2], [80, 443, 53][i as usize % 3])
                },
                verdict: [1, 2, 4][i as usize % 3],
                drop_reason: if i % 3 == 1 { 133 } else { 0 },
                kernel_drop_reason: if i % 5 == 0 { 77 } else { 0 },
                kernel_drop_reason_name: (i % 5 == 0).then(|| Arc::from("SKB_DROP_REASON_NETFILTER_DROP")),
                traffic_direction: [0, 1, 2][i as usize % 3] as u8,
                trace_observation_point: [0, 101, 3][i as usize % 3],
                is_reply: [None, Some(true), Some(false)][i as usize % 3],
                protocol: [6, 17, 1, 6][i as usize % 4],
                tcp_flags: [0, 0x12, 0x18, 0x01][i as usize % 4],
                icmp_type: 8,
                allowed_by: (i % 2 == 0).then(|| Arc::from(vec!["x/allow-a".to_owned(), "y/allow-b".to_owned()])),
                denied_by: (i % 2 == 1).then(|| Arc::from(vec!["x/deny".to_owned()])),
                counters: [u64::from(i), u64::MAX - u64::from(i), 3, 1 << 40],
                ..testing::flow()
            };
            let mut flow = to_proto(&f, if i % 4 == 0 { "" } else { "node-1" }, None);
            if i % 6 == 0
                && let Some(e) = flow.destination.as_mut()
            {
                e.workloads.push(pb::Workload { name: "server".into(), kind: "Deployment".into() });
                flow.ingress_denied_by.push(pb::Policy { name: "z".into(), namespace: "w".into(), ..pb::Policy::default() });
            }
            out.push((flow, i % 7 == 3));
        }
        out
    }

    #[test]
    fn written_bytes_are_the_log_records_bytes() {
        let mut a = OtlpEncoder::default();
        let mut b = OtlpEncoder::default();
        for (flow, aggregated) in varied() {
            let counts = if aggregated { Counts { ingress: 3, egress: 1 << 40, unknown: 0 } } else { Counts::one(flow.traffic_direction) };
            let r = FlowRecord { flow: &flow, node_name: "node-r", time: flow.time.unwrap_or_default(), counts, aggregated };
            for observed in [0, 1_700_000_000_987_654_321] {
                let expected = a.log_record_at(&r, observed).encode_to_vec();
                let mut written = vec![0xee];
                b.write_record(&r, observed, &mut written);
                assert_eq!(&written[1..], &expected[..], "flow {}", flow.uuid);
            }
        }
    }

    #[test]
    fn flows_become_log_records_with_semantic_attributes() {
        let f = Flow { time_ns: 1_700_000_000_123_456_789, verdict: 2, drop_reason: 133, traffic_direction: 1, is_reply: Some(false), ..testing::flow() };
        let flow = to_proto(&f, "node-1", None);
        let rec = FlowRecord { flow: &flow, node_name: "node-1", time: flow.time.unwrap(), counts: Counts::one(1), aggregated: false };
        let mut out = Vec::new();
        assert!(OtlpEncoder::default().encode(&Item::Flow(rec), &mut out));
        let r = LogRecord::decode(out.as_slice()).expect("a LogRecord");
        assert_eq!(r.time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(r.severity_number, SeverityNumber::Warn as i32);
        let Some(Value::StringValue(body)) = r.body.and_then(|b| b.value) else { panic!("body") };
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(body["verdict"], "DROPPED");
        let r = LogRecord::decode(out.as_slice()).unwrap();
        assert_eq!(attr(&r, "source.address"), Some(&Value::StringValue("10.0.0.1".into())));
        assert_eq!(attr(&r, "source.port"), Some(&Value::IntValue(40000)));
        assert_eq!(attr(&r, "destination.port"), Some(&Value::IntValue(80)));
        assert_eq!(attr(&r, "network.transport"), Some(&Value::StringValue("tcp".into())));
        assert_eq!(attr(&r, "network.type"), Some(&Value::StringValue("ipv4".into())));
        assert_eq!(attr(&r, "k8s.node.name"), Some(&Value::StringValue("node-1".into())));
        assert_eq!(attr(&r, "sightline.verdict"), Some(&Value::StringValue("DROPPED".into())));
        assert_eq!(attr(&r, "sightline.drop_reason"), Some(&Value::StringValue("POLICY_DENIED".into())));
        assert_eq!(attr(&r, "sightline.traffic_direction"), Some(&Value::StringValue("INGRESS".into())));
        assert_eq!(attr(&r, "sightline.reply"), Some(&Value::BoolValue(false)));
        assert_eq!(attr(&r, "sightline.flow.uuid"), Some(&Value::StringValue(flow.uuid.clone())));
        assert_eq!(attr(&r, "sightline.flow.count.ingress"), Some(&Value::IntValue(1)));
    }
}
