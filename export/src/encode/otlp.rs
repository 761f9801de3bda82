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
#[derive(Debug, Default)]
pub struct OtlpEncoder {
    body: Vec<u8>,
}

impl Encoder for OtlpEncoder {
    fn encode(&mut self, item: &Item<'_>, out: &mut Vec<u8>) -> bool {
        match item {
            Item::Flow(r) => {
                let record = self.log_record(r);
                // Encoding into a Vec cannot fail.
                let _ = record.encode(out);
                true
            }
            Item::Other(_) => false,
        }
    }
}

fn string(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue { key: key.to_owned(), key_strindex: 0, value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }) }
}

fn int(key: &str, v: i64) -> KeyValue {
    KeyValue { key: key.to_owned(), key_strindex: 0, value: Some(AnyValue { value: Some(Value::IntValue(v)) }) }
}

fn boolean(key: &str, v: bool) -> KeyValue {
    KeyValue { key: key.to_owned(), key_strindex: 0, value: Some(AnyValue { value: Some(Value::BoolValue(v)) }) }
}

fn strings(key: &str, v: impl Iterator<Item = String>) -> KeyValue {
    let values = v.map(|s| AnyValue { value: Some(Value::StringValue(s)) }).collect();
    KeyValue { key: key.to_owned(), key_strindex: 0, value: Some(AnyValue { value: Some(Value::ArrayValue(ArrayValue { values })) }) }
}

fn name<E>(v: i32, to: impl Fn(i32) -> Option<E>, s: impl Fn(&E) -> &'static str) -> String {
    to(v).map_or_else(|| v.to_string(), |e| s(&e).to_owned())
}

impl OtlpEncoder {
    /// The log record of a flow record.
    #[must_use]
    pub fn log_record(&mut self, r: &FlowRecord<'_>) -> LogRecord {
        let f = r.flow;
        self.body.clear();
        json_fast::write_flow(&mut self.body, f);
        let dropped = f.verdict == pb::Verdict::Dropped as i32;
        let mut a = Vec::with_capacity(32);
        if let Some(ip) = &f.ip {
            if !ip.source.is_empty() {
                a.push(string("source.address", ip.source.as_str()));
            }
            if !ip.destination.is_empty() {
                a.push(string("destination.address", ip.destination.as_str()));
            }
            match pb::IpVersion::try_from(ip.ip_version) {
                Ok(pb::IpVersion::IPv4) => a.push(string("network.type", "ipv4")),
                Ok(pb::IpVersion::IPv6) => a.push(string("network.type", "ipv6")),
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
            a.push(string("network.transport", transport));
            if !r.aggregated {
                a.push(int("source.port", i64::from(source)));
            }
            a.push(int("destination.port", i64::from(destination)));
        }
        match protocol {
            Some(Protocol::IcmPv4(i)) => {
                a.push(string("network.transport", "icmp"));
                a.push(int("sightline.icmp.type", i64::from(i.r#type)));
                a.push(int("sightline.icmp.code", i64::from(i.code)));
            }
            Some(Protocol::IcmPv6(i)) => {
                a.push(string("network.transport", "icmpv6"));
                a.push(int("sightline.icmp.type", i64::from(i.r#type)));
                a.push(int("sightline.icmp.code", i64::from(i.code)));
            }
            Some(Protocol::Tcp(t)) => {
                if let Some(flags) = &t.flags {
                    let set: Vec<&str> = [
                        ("SYN", flags.syn),
                        ("ACK", flags.ack),
                        ("FIN", flags.fin),
                        ("RST", flags.rst),
                        ("PSH", flags.psh),
                        ("URG", flags.urg),
                        ("ECE", flags.ece),
                        ("CWR", flags.cwr),
                        ("NS", flags.ns),
                    ]
                    .into_iter()
                    .filter_map(|(n, s)| s.then_some(n))
                    .collect();
                    if !set.is_empty() {
                        a.push(string("sightline.tcp.flags", set.join(",")));
                    }
                }
            }
            _ => {}
        }
        let node = if f.node_name.is_empty() { r.node_name } else { &f.node_name };
        a.push(string("k8s.node.name", node));
        if let Some(s) = &f.source {
            if !s.namespace.is_empty() {
                a.push(string("k8s.namespace.name", s.namespace.as_str()));
            }
            if !s.pod_name.is_empty() {
                a.push(string("k8s.pod.name", s.pod_name.as_str()));
            }
        }
        for (side, e) in [("source", &f.source), ("destination", &f.destination)] {
            let Some(e) = e else { continue };
            if side == "destination" {
                if !e.namespace.is_empty() {
                    a.push(string("sightline.destination.namespace", e.namespace.as_str()));
                }
                if !e.pod_name.is_empty() {
                    a.push(string("sightline.destination.pod", e.pod_name.as_str()));
                }
            }
            a.push(int(&format!("sightline.{side}.identity"), i64::from(e.identity)));
            if let Some(w) = e.workloads.first() {
                a.push(string(&format!("sightline.{side}.workload"), w.name.as_str()));
                a.push(string(&format!("sightline.{side}.workload_kind"), w.kind.as_str()));
            }
            if !e.labels.is_empty() {
                a.push(strings(&format!("sightline.{side}.labels"), e.labels.iter().cloned()));
            }
        }
        a.push(string("sightline.verdict", name(f.verdict, |v| pb::Verdict::try_from(v).ok(), pb::Verdict::as_str_name)));
        if f.drop_reason_desc != 0 {
            a.push(string(
                "sightline.drop_reason",
                name(f.drop_reason_desc, |v| pb::DropReason::try_from(v).ok(), pb::DropReason::as_str_name),
            ));
        }
        a.push(string(
            "sightline.traffic_direction",
            name(f.traffic_direction, |v| pb::TrafficDirection::try_from(v).ok(), pb::TrafficDirection::as_str_name),
        ));
        if f.trace_observation_point != 0 {
            a.push(string(
                "sightline.trace_observation_point",
                name(f.trace_observation_point, |v| pb::TraceObservationPoint::try_from(v).ok(), pb::TraceObservationPoint::as_str_name),
            ));
        }
        if let Some(e) = &f.event_type {
            a.push(int("sightline.event_type", i64::from(e.r#type)));
            a.push(int("sightline.event_sub_type", i64::from(e.sub_type)));
        }
        if let Some(reply) = f.is_reply {
            a.push(boolean("sightline.reply", reply));
        }
        if !f.uuid.is_empty() {
            a.push(string("sightline.flow.uuid", f.uuid.as_str()));
        }
        for (key, list) in [
            ("sightline.policies.ingress_allowed_by", &f.ingress_allowed_by),
            ("sightline.policies.ingress_denied_by", &f.ingress_denied_by),
            ("sightline.policies.egress_allowed_by", &f.egress_allowed_by),
            ("sightline.policies.egress_denied_by", &f.egress_denied_by),
        ] {
            if !list.is_empty() {
                a.push(strings(key, list.iter().map(|p| format!("{}/{}", p.namespace, p.name))));
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
                a.push(int(key, i64::try_from(v).unwrap_or(i64::MAX)));
            }
            if !c.kernel_drop_reason.is_empty() {
                a.push(string("sightline.kernel_drop_reason", c.kernel_drop_reason));
            }
        }
        for (key, n) in [
            ("sightline.flow.count.ingress", r.counts.ingress),
            ("sightline.flow.count.egress", r.counts.egress),
            ("sightline.flow.count.unknown", r.counts.unknown),
        ] {
            a.push(int(key, i64::try_from(n).unwrap_or(i64::MAX)));
        }
        if r.aggregated {
            a.push(boolean("sightline.aggregated", true));
        }
        let observed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
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
}

#[cfg(test)]
mod tests {
    use sightline_flow::{Flow, testing, to_proto};

    use super::*;
    use crate::record::Counts;

    fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a Value> {
        r.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
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
