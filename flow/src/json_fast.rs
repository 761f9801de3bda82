//! A fast writer of Hubble's JSON for flows: the same document that
//! [`to_json`](crate::json::to_json) produces through reflection (proto
//! field names, enums by name, 64-bit integers as strings, RFC 3339 times,
//! default values left out), written straight from the message into a
//! reused buffer, for exporters that spell every flow.
//!
//! It covers every field Sightline's flows carry and the common ones of
//! Hubble's; a flow with a field it does not spell (L7, Ethernet, tunnel,
//! trace context, file, aggregate, VRRP/IGMP, a foreign extension) is
//! written through reflection instead, so the output is always complete.
//! The test compares both writers field by field.

use sightline_proto::FlowCounters;
use sightline_proto::flow::{self as pb, layer4::Protocol};
use sightline_proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};

/// Appends `s` as a JSON string (quotes and escapes included).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends an unsigned integer.
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends a signed integer.
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

/// Appends a timestamp as proto3 JSON spells it: RFC 3339 in UTC with 0,
/// 3, 6 or 9 fractional digits (`2024-11-26T10:39:56.395Z`), quoted.
pub fn write_timestamp(out: &mut Vec<u8>, t: &prost_types::Timestamp) {
    out.push(b'"');
    write_rfc3339(out, t.seconds, t.nanos);
    out.push(b'"');
}

/// (year, month, day) of a day since 1970-01-01, by jiff; the last day
/// asked is remembered per thread (the flows of a batch share their day).
fn date_of_day(days: i64) -> (i64, i64, i64) {
    thread_local! {
        static LAST: std::cell::Cell<(i64, (i64, i64, i64))> = const { std::cell::Cell::new((0, (1970, 1, 1))) };
    }
    LAST.with(|last| {
        let (cached, date) = last.get();
        if cached == days {
            return date;
        }
        let d = jiff::Timestamp::from_second(days * 86_400)
            .map(|t| jiff::tz::Offset::UTC.to_datetime(t).date())
            .unwrap_or_default();
        let date = (i64::from(d.year()), i64::from(d.month()), i64::from(d.day()));
        last.set((days, date));
        date
    })
}

/// Appends `seconds.nanos` since the Unix epoch as RFC 3339 UTC, unquoted.
pub fn write_rfc3339(out: &mut Vec<u8>, seconds: i64, nanos: i32) {
    // jiff's calendar; times outside its years (±9999) are clamped to them.
    let seconds = seconds.clamp(jiff::Timestamp::MIN.as_second(), jiff::Timestamp::MAX.as_second());
    let secs_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = date_of_day(seconds.div_euclid(86_400));
    let two = |out: &mut Vec<u8>, v: i64| {
        out.push(b'0' + (v / 10 % 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    };
    if (0..=9999).contains(&year) {
        let y = year;
        out.push(b'0' + (y / 1000) as u8);
        out.push(b'0' + (y / 100 % 10) as u8);
        two(out, y % 100);
    } else {
        write_i64(out, year);
    }
    out.push(b'-');
    two(out, month);
    out.push(b'-');
    two(out, day);
    out.push(b'T');
    two(out, secs_of_day / 3600);
    out.push(b':');
    two(out, secs_of_day / 60 % 60);
    out.push(b':');
    two(out, secs_of_day % 60);
    let nanos = nanos.clamp(0, 999_999_999) as u32;
    if nanos != 0 {
        let (digits, value) = if nanos.is_multiple_of(1_000_000) {
            (3, nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            (6, nanos / 1_000)
        } else {
            (9, nanos)
        };
        out.push(b'.');
        let mut buf = [b'0'; 9];
        let mut v = value;
        for i in (0..digits).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..digits]);
    }
    out.push(b'Z');
}


/// Whether the fast writer spells every field `flow` has.
#[must_use]
pub fn supported(flow: &pb::Flow) -> bool {
    flow.ethernet.is_none()
        && flow.l7.is_none()
        && flow.trace_context.is_none()
        && flow.file.is_none()
        && flow.tunnel.is_none()
        && flow.ip_trace_id.is_none()
        && flow.aggregate.is_none()
        && !matches!(
            flow.l4.as_ref().and_then(|l| l.protocol.as_ref()),
            Some(Protocol::Vrrp(_) | Protocol::Igmp(_))
        )
        && flow.extensions.as_ref().is_none_or(|a| a.type_url == sightline_proto::FLOW_COUNTERS_TYPE_URL)
}

/// Writes `flow` as Hubble's JSON object into `out`.
pub fn write_flow(out: &mut Vec<u8>, flow: &pb::Flow) {
    if !supported(flow) {
        match crate::json::to_json(flow) {
            Ok(text) => out.extend_from_slice(text.as_bytes()),
            Err(_) => out.extend_from_slice(b"{}"),
        }
        return;
    }
    let mut o = Obj::new(out);
    if let Some(t) = &flow.time {
        o.key("time");
        write_timestamp(o.out, t);
    }
    o.enum_field("verdict", flow.verdict, |v| pb::Verdict::try_from(v).ok().map(|e| e.as_str_name()));
    #[expect(deprecated, reason = "Hubble still fills the deprecated drop_reason field")]
    o.uint("drop_reason", u64::from(flow.drop_reason));
    if let Some(ip) = &flow.ip {
        o.key("IP");
        let mut i = Obj::new(o.out);
        i.string("source", &ip.source);
        i.string("destination", &ip.destination);
        i.enum_field("ipVersion", ip.ip_version, |v| pb::IpVersion::try_from(v).ok().map(|e| e.as_str_name()));
        i.boolean("encrypted", ip.encrypted);
        i.string("source_xlated", &ip.source_xlated);
        i.end();
    }
    if let Some(l4) = &flow.l4 {
        o.key("l4");
        let mut l = Obj::new(o.out);
        match &l4.protocol {
            Some(Protocol::Tcp(t)) => {
                l.key("TCP");
                let mut p = Obj::new(l.out);
                p.uint("source_port", u64::from(t.source_port));
                p.uint("destination_port", u64::from(t.destination_port));
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
            }
            Some(Protocol::Udp(u)) => ports(&mut l, "UDP", u.source_port, u.destination_port),
            Some(Protocol::Sctp(s)) => ports(&mut l, "SCTP", s.source_port, s.destination_port),
            Some(Protocol::IcmPv4(i)) => icmp(&mut l, "ICMPv4", i.r#type, i.code),
            Some(Protocol::IcmPv6(i)) => icmp(&mut l, "ICMPv6", i.r#type, i.code),
            _ => {}
        }
        l.end();
    }
    if let Some(e) = &flow.source {
        o.key("source");
        endpoint(o.out, e);
    }
    if let Some(e) = &flow.destination {
        o.key("destination");
        endpoint(o.out, e);
    }
    o.enum_field("Type", flow.r#type, |v| pb::FlowType::try_from(v).ok().map(|e| e.as_str_name()));
    o.string("node_name", &flow.node_name);
    o.strings("source_names", &flow.source_names);
    o.strings("destination_names", &flow.destination_names);
    #[expect(deprecated, reason = "Hubble still fills the deprecated reply field")]
    o.boolean("reply", flow.reply);
    if let Some(e) = &flow.event_type {
        o.key("event_type");
        let mut t = Obj::new(o.out);
        t.int("type", i64::from(e.r#type));
        t.int("sub_type", i64::from(e.sub_type));
        t.end();
    }
    for (name, service) in [("source_service", &flow.source_service), ("destination_service", &flow.destination_service)] {
        if let Some(s) = service {
            o.key(name);
            let mut v = Obj::new(o.out);
            v.string("name", &s.name);
            v.string("namespace", &s.namespace);
            v.end();
        }
    }
    o.enum_field("traffic_direction", flow.traffic_direction, |v| {
        pb::TrafficDirection::try_from(v).ok().map(|e| e.as_str_name())
    });
    o.uint("policy_match_type", u64::from(flow.policy_match_type));
    o.enum_field("trace_observation_point", flow.trace_observation_point, |v| {
        pb::TraceObservationPoint::try_from(v).ok().map(|e| e.as_str_name())
    });
    o.enum_field("drop_reason_desc", flow.drop_reason_desc, |v| {
        pb::DropReason::try_from(v).ok().map(|e| e.as_str_name())
    });
    if let Some(r) = flow.is_reply {
        o.key("is_reply");
        o.out.extend_from_slice(if r { b"true" } else { b"false" });
    }
    o.enum_field("debug_capture_point", flow.debug_capture_point, |v| {
        pb::DebugCapturePoint::try_from(v).ok().map(|e| e.as_str_name())
    });
    if let Some(i) = &flow.interface {
        o.key("interface");
        let mut n = Obj::new(o.out);
        n.uint("index", u64::from(i.index));
        n.string("name", &i.name);
        n.end();
    }
    o.uint("proxy_port", u64::from(flow.proxy_port));
    o.enum_field("sock_xlate_point", flow.sock_xlate_point, |v| {
        pb::SocketTranslationPoint::try_from(v).ok().map(|e| e.as_str_name())
    });
    o.uint64("socket_cookie", flow.socket_cookie);
    o.uint64("cgroup_id", flow.cgroup_id);
    o.string("uuid", &flow.uuid);
    o.enum_field("auth_type", flow.auth_type, |v| pb::AuthType::try_from(v).ok().map(|e| e.as_str_name()));
    o.enum_field("trace_reason", flow.trace_reason, |v| pb::TraceReason::try_from(v).ok().map(|e| e.as_str_name()));
    o.strings("node_labels", &flow.node_labels);
    if let Some(e) = &flow.emitter {
        o.key("emitter");
        let mut m = Obj::new(o.out);
        m.string("name", &e.name);
        m.string("version", &e.version);
        m.end();
    }
    for (name, list) in [
        ("egress_allowed_by", &flow.egress_allowed_by),
        ("ingress_allowed_by", &flow.ingress_allowed_by),
        ("egress_denied_by", &flow.egress_denied_by),
        ("ingress_denied_by", &flow.ingress_denied_by),
    ] {
        if !list.is_empty() {
            o.key(name);
            write_policies(o.out, list);
        }
    }
    o.strings("policy_log", &flow.policy_log);
    #[expect(deprecated, reason = "Hubble still fills the deprecated Summary field")]
    o.string("Summary", &flow.summary);
    if let Some(any) = &flow.extensions {
        o.key("extensions");
        let mut x = Obj::new(o.out);
        x.string("@type", &any.type_url);
        if let Ok(c) = <FlowCounters as prost::Message>::decode(any.value.as_slice()) {
            x.uint64("forward_packets", c.forward_packets);
            x.uint64("forward_bytes", c.forward_bytes);
            x.uint64("reply_packets", c.reply_packets);
            x.uint64("reply_bytes", c.reply_bytes);
            x.string("kernel_drop_reason", &c.kernel_drop_reason);
        }
        x.end();
    }
    o.end();
}

/// Writes a list of policies as a JSON array of Hubble's `Policy` objects.
pub fn write_policies(out: &mut Vec<u8>, list: &[pb::Policy]) {
    out.push(b'[');
    for (i, p) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut m = Obj::new(out);
        m.string("name", &p.name);
        m.string("namespace", &p.namespace);
        m.strings("labels", &p.labels);
        m.uint64("revision", p.revision);
        m.string("kind", &p.kind);
        m.end();
    }
    out.push(b']');
}

/// Writes a list of workloads as a JSON array of `{name, kind}`.
pub fn write_workloads(out: &mut Vec<u8>, list: &[pb::Workload]) {
    out.push(b'[');
    for (i, w) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut m = Obj::new(out);
        m.string("name", &w.name);
        m.string("kind", &w.kind);
        m.end();
    }
    out.push(b']');
}

fn ports(l: &mut Obj<'_>, name: &str, source: u32, destination: u32) {
    l.key(name);
    let mut p = Obj::new(l.out);
    p.uint("source_port", u64::from(source));
    p.uint("destination_port", u64::from(destination));
    p.end();
}

fn icmp(l: &mut Obj<'_>, name: &str, r#type: u32, code: u32) {
    l.key(name);
    let mut p = Obj::new(l.out);
    p.uint("type", u64::from(r#type));
    p.uint("code", u64::from(code));
    p.end();
}

fn endpoint(out: &mut Vec<u8>, e: &pb::Endpoint) {
    let mut o = Obj::new(out);
    o.uint("ID", u64::from(e.id));
    o.uint("identity", u64::from(e.identity));
    o.string("namespace", &e.namespace);
    o.strings("labels", &e.labels);
    o.string("pod_name", &e.pod_name);
    if !e.workloads.is_empty() {
        o.key("workloads");
        write_workloads(o.out, &e.workloads);
    }
    o.string("cluster_name", &e.cluster_name);
    o.end();
}

/// Writes a `GetFlowsResponse` as `hubble observe -o json` prints it (the
/// export file format): `{"flow":{…},"node_name":"…","time":"…"}`, or with
/// `node_status` / `lost_events` in place of `flow`.
pub fn write_response(out: &mut Vec<u8>, resp: &GetFlowsResponse) {
    match &resp.response_types {
        Some(ResponseTypes::Flow(flow)) => {
            out.extend_from_slice(b"{\"flow\":");
            write_flow(out, flow);
            let mut o = Obj { out, first: false };
            o.string("node_name", &resp.node_name);
            if let Some(t) = &resp.time {
                o.key("time");
                write_timestamp(o.out, t);
            }
            o.end();
        }
        _ => match crate::json::to_json(resp) {
            Ok(text) => out.extend_from_slice(text.as_bytes()),
            Err(_) => out.extend_from_slice(b"{}"),
        },
    }
}

/// An object being written: keys and commas, default values left out.
pub struct Obj<'a> {
    pub out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    /// Opens an object.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    /// Writes a key (and the comma before it).
    pub fn key(&mut self, name: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(self.out, name);
        self.out.push(b':');
    }

    /// A string, left out when empty.
    pub fn string(&mut self, name: &str, v: &str) {
        if !v.is_empty() {
            self.key(name);
            write_str(self.out, v);
        }
    }

    /// A 32-bit unsigned integer, left out when zero.
    pub fn uint(&mut self, name: &str, v: u64) {
        if v != 0 {
            self.key(name);
            write_u64(self.out, v);
        }
    }

    /// A 32-bit signed integer, left out when zero.
    pub fn int(&mut self, name: &str, v: i64) {
        if v != 0 {
            self.key(name);
            write_i64(self.out, v);
        }
    }

    /// A 64-bit unsigned integer, as a string, left out when zero.
    pub fn uint64(&mut self, name: &str, v: u64) {
        if v != 0 {
            self.key(name);
            self.out.push(b'"');
            write_u64(self.out, v);
            self.out.push(b'"');
        }
    }

    /// A boolean, left out when false.
    pub fn boolean(&mut self, name: &str, v: bool) {
        if v {
            self.key(name);
            self.out.extend_from_slice(b"true");
        }
    }

    /// A repeated string field, left out when empty.
    pub fn strings(&mut self, name: &str, v: &[String]) {
        if !v.is_empty() {
            self.key(name);
            self.out.push(b'[');
            for (i, s) in v.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                write_str(self.out, s);
            }
            self.out.push(b']');
        }
    }

    /// An enum by name (by number when the number is unknown), left out
    /// when zero.
    pub fn enum_field(&mut self, name: &str, v: i32, to_name: impl Fn(i32) -> Option<&'static str>) {
        if v != 0 {
            self.key(name);
            match to_name(v) {
                Some(n) => write_str(self.out, n),
                None => write_i64(self.out, i64::from(v)),
            }
        }
    }

    /// Closes the object.
    pub fn end(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Flow, PodMeta, Side, testing, to_proto};

    fn compare(resp: &GetFlowsResponse) {
        let mut fast = Vec::new();
        write_response(&mut fast, resp);
        let fast: serde_json::Value = serde_json::from_slice(&fast).expect("the fast writer writes JSON");
        let reference: serde_json::Value =
            serde_json::from_str(&crate::json::to_json(resp).expect("reflection")).expect("JSON");
        assert_eq!(fast, reference, "fast and reflective JSON differ");
    }

    fn response(flow: pb::Flow) -> GetFlowsResponse {
        GetFlowsResponse { node_name: "node-1".into(), time: flow.time, response_types: Some(ResponseTypes::Flow(flow)) }
    }

    #[test]
    fn the_fast_writer_spells_flows_as_reflection_does() {
        let pod = |ns: &str, name: &str| {
            Arc::new(PodMeta {
                namespace: ns.into(),
                name: name.into(),
                endpoint_id: 7,
                identity: 300,
                labels: Arc::from(vec!["k8s:app=web".to_owned(), "k8s:quote=\"x\\y\"\n".to_owned()]),
                node: "node-1".into(),
            })
        };
        let mut flows = Vec::new();
        for (i, protocol) in [6u8, 17, 132, 1, 58, 47].into_iter().enumerate() {
            let f = Flow {
                time_ns: 1_732_617_596_000_000_000 + i as i64 * 123_456_789 + [0, 1_000, 1_000_000, 7][i % 4],
                seq: i as u64,
                source: Side { pod: Some(pod("x", "a")), identity: 300, ..testing::side([10, 244, 1, 2], 40000) },
                destination: Side {
                    identity_labels: Some(Arc::from(vec!["reserved:world".to_owned()])),
                    identity: 2,
                    ..testing::side([1, 1, 1, 1], 53)
                },
                protocol,
                tcp_flags: 0x12,
                icmp_type: 8,
                verdict: [1, 2, 4][i % 3],
                drop_reason: if i % 3 == 1 { 133 } else { 0 },
                event_type: 5,
                event_sub_type: 1,
                trace_observation_point: 101,
                trace_reason: 1,
                is_reply: [None, Some(true), Some(false)][i % 3],
                traffic_direction: (i % 3) as u8,
                policy_match_type: 2,
                ip_version: 4,
                ifindex: 3,
                interface: Some(Arc::from("lxc00001")),
                allowed_by: Some(Arc::from(vec!["x/allow-web".to_owned()])),
                denied_by: Some(Arc::from(vec!["x/deny".to_owned(), "y/deny".to_owned()])),
                counters: [1, 2, 3, u64::MAX],
                kernel_drop_reason_name: Some(Arc::from("NO_SOCKET")),
                ..testing::flow()
            };
            flows.push(to_proto(&f, "node-1", None));
        }
        let mut extra = flows[0].clone();
        extra.source_names = vec!["a.example".into()];
        extra.source_service = Some(pb::Service { name: "web".into(), namespace: "x".into() });
        extra.node_labels = vec!["k=v".into()];
        extra.socket_cookie = 1 << 40;
        extra.r#type = 99; // unknown enum numbers are written as numbers
        if let Some(s) = extra.source.as_mut() {
            s.workloads = vec![pb::Workload { name: "web".into(), kind: "Deployment".into() }];
        }
        flows.push(extra);
        let mut l7 = flows[0].clone();
        l7.l7 = Some(pb::Layer7::default());
        flows.push(l7);
        flows.push(pb::Flow::default());
        for flow in flows {
            compare(&response(flow));
        }
        // Non-flow responses go through reflection.
        compare(&GetFlowsResponse {
            node_name: "relay".into(),
            time: None,
            response_types: Some(ResponseTypes::LostEvents(crate::lost_event(
                pb::LostEventSource::HubbleRingBuffer,
                3,
                0,
                0,
            ))),
        });
    }

    #[test]
    fn timestamps_cover_the_calendar() {
        for (secs, nanos) in [(0, 0), (951_782_400, 5), (4_107_542_399, 999_999_999), (-86_400, 0), (1_709_164_800, 120_000)] {
            let t = prost_types::Timestamp { seconds: secs, nanos };
            let mut fast = Vec::new();
            write_timestamp(&mut fast, &t);
            let reference = crate::json::to_json(&t).expect("reflection");
            assert_eq!(String::from_utf8(fast).expect("utf8"), reference, "{secs}.{nanos}");
        }
    }
}
