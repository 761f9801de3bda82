//! Rows for Azure Monitor Logs Ingestion, shaped like the
//! `ContainerNetworkLogs` table of Azure Container Networking Services, so
//! that its KQL and workbooks work against Sightline's custom table with
//! only the table name changed.

/// A column type, as a DCR stream declaration and a Log Analytics table
/// spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Int,
    Boolean,
    DateTime,
    Dynamic,
}

impl ColumnType {
    /// The name in ARM templates (`streamDeclarations` and table schemas).
    #[must_use]
    pub fn arm_name(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int => "int",
            ColumnType::Boolean => "boolean",
            ColumnType::DateTime => "datetime",
            ColumnType::Dynamic => "dynamic",
        }
    }
}

/// Every column a row carries, in the order the encoder writes them: the
/// columns of `ContainerNetworkLogs` that a client may send (Azure's
/// reserved `TenantId`, `Type`, `SourceSystem` and `_…` are never sent).
/// The custom table and the DCR in `dashboards/azure/` are checked against
/// this list.
pub const COLUMNS: &[(&str, ColumnType)] = &[
    ("TimeGenerated", ColumnType::DateTime),
    ("UUID", ColumnType::String),
    ("Verdict", ColumnType::String),
    ("DropReason", ColumnType::String),
    ("TrafficDirection", ColumnType::String),
    ("TraceObservationPoint", ColumnType::String),
    ("FlowType", ColumnType::String),
    ("NodeName", ColumnType::String),
    ("Reply", ColumnType::Boolean),
    ("SourceNamespace", ColumnType::String),
    ("SourcePodName", ColumnType::String),
    ("SourceIdentity", ColumnType::Int),
    ("SourceWorkloads", ColumnType::Dynamic),
    ("SourceClusterName", ColumnType::String),
    ("DestinationNamespace", ColumnType::String),
    ("DestinationPodName", ColumnType::String),
    ("DestinationIdentity", ColumnType::Int),
    ("DestinationWorkloads", ColumnType::Dynamic),
    ("DestinationClusterName", ColumnType::String),
    ("IP", ColumnType::Dynamic),
    ("Layer4", ColumnType::Dynamic),
    ("Layer7", ColumnType::Dynamic),
    ("EventType", ColumnType::Dynamic),
    ("Policies", ColumnType::Dynamic),
    ("Service", ColumnType::Dynamic),
    ("IngressFlowCount", ColumnType::Int),
    ("EgressFlowCount", ColumnType::Int),
    ("UnknownDirectionFlowCount", ColumnType::Int),
    ("AdditionalFlowData", ColumnType::Dynamic),
];

/// Names Azure reserves, never sent as columns.
pub const RESERVED: &[&str] = &[
    "TenantId",
    "Type",
    "SourceSystem",
    "_ResourceId",
    "id",
    "_SubscriptionId",
    "UniqueId",
    "Title",
];

use sightline_flow::json_fast::{self, Obj, write_str};
use sightline_proto::FlowCounters;
use sightline_proto::flow::{self as pb, layer4::Protocol};

use super::{Encoder, enum_name};
use crate::record::{FlowRecord, Item};

/// The Azure Monitor row encoder: one JSON object per flow record, every
/// column of [`COLUMNS`] present, in that order.
#[derive(Debug, Default)]
pub struct AzureEncoder;

impl Encoder for AzureEncoder {
    fn encode(&mut self, item: &Item<'_>, out: &mut Vec<u8>) -> bool {
        match item {
            Item::Flow(r) => {
                write_row(out, r);
                true
            }
            Item::Other(_) => false,
        }
    }
}

/// A row of Hubble enum names: the name, or "" for the zero value.
fn name_or_empty(value: i32, name: Option<&'static str>) -> std::borrow::Cow<'static, str> {
    if value == 0 { "".into() } else { enum_name(value, name) }
}

/// Writes the row of `r`.
pub fn write_row(out: &mut Vec<u8>, r: &FlowRecord<'_>) {
    let f = r.flow;
    let mut row = Row { out, first: true };
    row.key("TimeGenerated");
    json_fast::write_timestamp(row.out, &r.time);
    row.string("UUID", &f.uuid);
    row.string("Verdict", &enum_name(f.verdict, pb::Verdict::try_from(f.verdict).ok().map(|v| v.as_str_name())));
    row.string(
        "DropReason",
        &name_or_empty(f.drop_reason_desc, pb::DropReason::try_from(f.drop_reason_desc).ok().map(|v| v.as_str_name())),
    );
    row.string(
        "TrafficDirection",
        &enum_name(f.traffic_direction, pb::TrafficDirection::try_from(f.traffic_direction).ok().map(|v| v.as_str_name())),
    );
    row.string(
        "TraceObservationPoint",
        &enum_name(
            f.trace_observation_point,
            pb::TraceObservationPoint::try_from(f.trace_observation_point).ok().map(|v| v.as_str_name()),
        ),
    );
    row.string("FlowType", &enum_name(f.r#type, pb::FlowType::try_from(f.r#type).ok().map(|v| v.as_str_name())));
    row.string("NodeName", if f.node_name.is_empty() { r.node_name } else { &f.node_name });
    row.key("Reply");
    row.out.extend_from_slice(if f.is_reply.unwrap_or(false) { b"true" } else { b"false" });
    for (prefix, side) in [("Source", &f.source), ("Destination", &f.destination)] {
        let empty = pb::Endpoint::default();
        let e = side.as_ref().unwrap_or(&empty);
        row.string_named(prefix, "Namespace", &e.namespace);
        row.string_named(prefix, "PodName", &e.pod_name);
        row.key_named(prefix, "Identity");
        json_fast::write_u64(row.out, u64::from(e.identity));
        row.key_named(prefix, "Workloads");
        json_fast::write_workloads(row.out, &e.workloads);
        row.string_named(prefix, "ClusterName", &e.cluster_name);
    }
    row.key("IP");
    match &f.ip {
        Some(ip) => {
            let mut o = Obj::new(row.out);
            o.string("source", &ip.source);
            o.string("destination", &ip.destination);
            o.enum_field("ipVersion", ip.ip_version, |v| pb::IpVersion::try_from(v).ok().map(|e| e.as_str_name()));
            o.key("encrypted");
            o.out.extend_from_slice(if ip.encrypted { b"true" } else { b"false" });
            o.end();
        }
        None => row.out.extend_from_slice(b"null"),
    }
    row.key("Layer4");
    layer4(row.out, f.l4.as_ref().and_then(|l| l.protocol.as_ref()));
    row.key("Layer7");
    match &f.l7 {
        Some(l7) => match sightline_flow::json::to_json(l7) {
            Ok(text) => row.out.extend_from_slice(text.as_bytes()),
            Err(_) => row.out.extend_from_slice(b"null"),
        },
        None => row.out.extend_from_slice(b"null"),
    }
    row.key("EventType");
    {
        let (t, s) = f.event_type.as_ref().map_or((0, 0), |e| (e.r#type, e.sub_type));
        row.out.extend_from_slice(b"{\"type\":");
        json_fast::write_i64(row.out, i64::from(t));
        row.out.extend_from_slice(b",\"sub_type\":");
        json_fast::write_i64(row.out, i64::from(s));
        row.out.push(b'}');
    }
    row.key("Policies");
    {
        let mut o = Obj::new(row.out);
        for (name, list) in [
            ("ingress_allowed_by", &f.ingress_allowed_by),
            ("ingress_denied_by", &f.ingress_denied_by),
            ("egress_allowed_by", &f.egress_allowed_by),
            ("egress_denied_by", &f.egress_denied_by),
        ] {
            o.key(name);
            o.out.push(b'[');
            for (i, p) in list.iter().enumerate() {
                if i > 0 {
                    o.out.push(b',');
                }
                o.out.extend_from_slice(b"{\"name\":");
                write_str(o.out, &p.name);
                o.out.extend_from_slice(b",\"namespace\":");
                write_str(o.out, &p.namespace);
                o.out.extend_from_slice(b",\"kind\":");
                write_str(o.out, &p.kind);
                o.out.push(b'}');
            }
            o.out.push(b']');
        }
        o.end();
    }
    row.key("Service");
    if f.source_service.is_none() && f.destination_service.is_none() {
        row.out.extend_from_slice(b"null");
    } else {
        let mut o = Obj::new(row.out);
        for (name, s) in [("source", &f.source_service), ("destination", &f.destination_service)] {
            if let Some(s) = s {
                o.key(name);
                let mut v = Obj::new(o.out);
                v.string("name", &s.name);
                v.string("namespace", &s.namespace);
                v.end();
            }
        }
        o.end();
    }
    for (name, n) in [
        ("IngressFlowCount", r.counts.ingress),
        ("EgressFlowCount", r.counts.egress),
        ("UnknownDirectionFlowCount", r.counts.unknown),
    ] {
        row.key(name);
        json_fast::write_u64(row.out, n);
    }
    row.key("AdditionalFlowData");
    additional(row.out, f, r.aggregated);
    row.out.push(b'}');
}

/// `Layer4` as the flow's JSON spells `l4`.
fn layer4(out: &mut Vec<u8>, p: Option<&Protocol>) {
    let ports = |out: &mut Vec<u8>, name: &str, s: u32, d: u32| {
        let mut o = Obj::new(out);
        o.key(name);
        let mut p = Obj::new(o.out);
        p.key("source_port");
        json_fast::write_u64(p.out, u64::from(s));
        p.key("destination_port");
        json_fast::write_u64(p.out, u64::from(d));
        p.end();
        o.end();
    };
    match p {
        None => out.extend_from_slice(b"null"),
        Some(Protocol::Tcp(t)) => {
            let mut o = Obj::new(out);
            o.key("TCP");
            let mut p = Obj::new(o.out);
            p.key("source_port");
            json_fast::write_u64(p.out, u64::from(t.source_port));
            p.key("destination_port");
            json_fast::write_u64(p.out, u64::from(t.destination_port));
            if let Some(f) = &t.flags {
                p.key("flags");
                let mut g = Obj::new(p.out);
                for (name, set) in [
                    ("FIN", f.fin),
                    ("SYN", f.syn),
                    ("RST", f.rst),
                    ("PSH", f.psh),
                    ("ACK", f.ack),
                    ("URG", f.urg),
                    ("ECE", f.ece),
                    ("CWR", f.cwr),
                    ("NS", f.ns),
                ] {
                    g.boolean(name, set);
                }
                g.end();
            }
            p.end();
            o.end();
        }
        Some(Protocol::Udp(u)) => ports(out, "UDP", u.source_port, u.destination_port),
        Some(Protocol::Sctp(s)) => ports(out, "SCTP", s.source_port, s.destination_port),
        Some(Protocol::IcmPv4(i)) => {
            out.extend_from_slice(b"{\"ICMPv4\":{\"type\":");
            json_fast::write_u64(out, u64::from(i.r#type));
            out.extend_from_slice(b",\"code\":");
            json_fast::write_u64(out, u64::from(i.code));
            out.extend_from_slice(b"}}");
        }
        Some(Protocol::IcmPv6(i)) => {
            out.extend_from_slice(b"{\"ICMPv6\":{\"type\":");
            json_fast::write_u64(out, u64::from(i.r#type));
            out.extend_from_slice(b",\"code\":");
            json_fast::write_u64(out, u64::from(i.code));
            out.extend_from_slice(b"}}");
        }
        Some(Protocol::Vrrp(_)) => out.extend_from_slice(b"{\"VRRP\":{}}"),
        Some(Protocol::Igmp(_)) => out.extend_from_slice(b"{\"IGMP\":{}}"),
    }
}

/// `AdditionalFlowData`: what the flow carries beyond the columns
/// (Sightline's connection counters and kernel drop reason, the trace
/// reason, the interface, the policy match type, the emitter).
fn additional(out: &mut Vec<u8>, f: &pb::Flow, aggregated: bool) {
    let mut o = Obj::new(out);
    if let Some(any) = &f.extensions
        && any.type_url == sightline_proto::FLOW_COUNTERS_TYPE_URL
        && let Ok(c) = <FlowCounters as prost::Message>::decode(any.value.as_slice())
    {
        // Counters as numbers (dynamic columns keep them as long).
        for (name, v) in [
            ("forward_packets", c.forward_packets),
            ("forward_bytes", c.forward_bytes),
            ("reply_packets", c.reply_packets),
            ("reply_bytes", c.reply_bytes),
        ] {
            o.key(name);
            json_fast::write_u64(o.out, v);
        }
        o.string("kernel_drop_reason", &c.kernel_drop_reason);
    }
    o.enum_field("trace_reason", f.trace_reason, |v| pb::TraceReason::try_from(v).ok().map(|e| e.as_str_name()));
    o.uint("policy_match_type", u64::from(f.policy_match_type));
    if let Some(i) = &f.interface {
        o.key("interface");
        let mut n = Obj::new(o.out);
        n.uint("index", u64::from(i.index));
        n.string("name", &i.name);
        n.end();
    }
    if let Some(e) = &f.emitter {
        o.string("emitter", &e.name);
        o.string("emitter_version", &e.version);
    }
    o.boolean("aggregated", aggregated);
    o.end();
}

/// Writes keys and values of a row, every column present.
struct Row<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Row<'_> {
    fn key(&mut self, name: &str) {
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn key_named(&mut self, prefix: &str, name: &str) {
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(prefix.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn string(&mut self, name: &str, v: &str) {
        self.key(name);
        write_str(self.out, v);
    }

    fn string_named(&mut self, prefix: &str, name: &str, v: &str) {
        self.key_named(prefix, name);
        write_str(self.out, v);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sightline_flow::{Flow, PodMeta, Side, testing, to_proto};

    use super::*;
    use crate::record::Counts;

    fn sample() -> pb::Flow {
        let pod = Arc::new(PodMeta {
            namespace: "x".into(),
            name: "a".into(),
            endpoint_id: 3,
            identity: 300,
            labels: Arc::from(vec!["k8s:app=a".to_owned()]),
            node: "node-1".into(),
        });
        let f = Flow {
            time_ns: 1_732_617_596_395_000_000,
            seq: 9,
            source: Side { pod: Some(pod), identity: 300, ..testing::side([10, 244, 1, 2], 40000) },
            destination: testing::side([10, 244, 1, 3], 80),
            verdict: 2,
            drop_reason: 133,
            event_type: 5,
            traffic_direction: 2,
            tcp_flags: 0x02,
            is_reply: Some(false),
            denied_by: Some(Arc::from(vec!["x/deny-all".to_owned()])),
            counters: [1, 60, 0, 0],
            ..testing::flow()
        };
        to_proto(&f, "node-1", None)
    }

    #[test]
    fn rows_have_every_column_in_order_with_its_type() {
        let flow = sample();
        let r = FlowRecord { flow: &flow, node_name: "node-1", time: flow.time.unwrap(), counts: Counts::one(2), aggregated: false };
        let mut out = Vec::new();
        assert!(AzureEncoder.encode(&Item::Flow(r), &mut out));
        let text = String::from_utf8(out).unwrap();
        let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).expect("a JSON object");
        let keys: Vec<&str> = row.keys().map(String::as_str).collect();
        let expected: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        let mut sorted_keys = keys.clone();
        sorted_keys.sort_unstable();
        let mut sorted_expected = expected.clone();
        sorted_expected.sort_unstable();
        assert_eq!(sorted_keys, sorted_expected);
        // Written in COLUMNS order.
        let positions: Vec<usize> = expected.iter().map(|c| text.find(&format!("\"{c}\":")).unwrap()).collect();
        assert!(positions.is_sorted(), "columns out of order: {text}");
        for (name, ty) in COLUMNS {
            let v = &row[*name];
            let ok = match ty {
                ColumnType::String => v.is_string(),
                ColumnType::Int => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
                ColumnType::Boolean => v.is_boolean(),
                ColumnType::DateTime => v.as_str().is_some_and(|s| s.ends_with('Z') && s.contains('T')),
                ColumnType::Dynamic => true,
            };
            assert!(ok, "{name} = {v} is not a {ty:?}");
        }
        assert_eq!(row["TimeGenerated"], "2024-11-26T10:39:56.395Z");
        assert_eq!(row["Verdict"], "DROPPED");
        assert_eq!(row["DropReason"], "POLICY_DENIED");
        assert_eq!(row["TrafficDirection"], "EGRESS");
        assert_eq!(row["SourceNamespace"], "x");
        assert_eq!(row["SourcePodName"], "a");
        assert_eq!(row["SourceIdentity"], 300);
        assert_eq!(row["SourceClusterName"], "default");
        assert_eq!(row["DestinationPodName"], "");
        assert_eq!(row["IP"]["source"], "10.244.1.2");
        assert_eq!(row["IP"]["ipVersion"], "IPv4");
        assert_eq!(row["Layer4"]["TCP"]["destination_port"], 80);
        assert_eq!(row["Layer4"]["TCP"]["flags"]["SYN"], true);
        assert_eq!(row["Layer7"], serde_json::Value::Null);
        assert_eq!(row["EventType"]["type"], 5);
        assert_eq!(row["Policies"]["egress_denied_by"][0]["name"], "deny-all");
        assert_eq!(row["Policies"]["egress_denied_by"][0]["namespace"], "x");
        assert_eq!(row["Policies"]["ingress_denied_by"], serde_json::json!([]));
        assert_eq!(row["Service"], serde_json::Value::Null);
        assert_eq!((row["IngressFlowCount"].as_u64(), row["EgressFlowCount"].as_u64()), (Some(0), Some(1)));
        assert_eq!(row["AdditionalFlowData"]["forward_bytes"], 60);
        assert_eq!(row["UUID"], flow.uuid.as_str());
        for reserved in RESERVED {
            assert!(!row.contains_key(*reserved));
        }
    }

    #[test]
    fn other_items_are_not_rows() {
        let resp = sightline_proto::observer::GetFlowsResponse::default();
        let mut out = Vec::new();
        assert!(!AzureEncoder.encode(&Item::Other(&resp), &mut out));
        assert!(out.is_empty());
    }
}
