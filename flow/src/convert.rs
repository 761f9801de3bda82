//! [`Flow`] → Hubble's `flow.Flow` protobuf, with an optional field mask, and
//! `flow.LostEvent`.
//!
//! [`to_proto`] fills every field Sightline knows; [`FieldMask`] (a
//! `GetFlowsRequest.field_mask` or the exporter's field mask) limits the
//! result to the named fields and their subtrees, and fields the mask leaves
//! out are not even computed. Paths are validated as Hubble validates them
//! (`fieldmaskpb.New(&Flow{})`): each segment must be a field of the message
//! reached so far, by its proto name (`IP`, `l4`, `source`, `Type`, …), and a
//! repeated field may only be the last segment.
//!
//! Flow UUIDs are derived from a random boot id read once per process
//! (`/proc/sys/kernel/random/uuid`) and the flow's `seq`: stable for a flow,
//! unique across processes and nodes.
//!
//! This module must not decide anything about a flow (that was the builder's
//! job) nor filter flows: it only spells them in protobuf.
//!
//! Sub-paths into parts Sightline never fills (`ethernet`, `l7`, `tunnel`,
//! …) are accepted and keep nothing, since those parts are always empty.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use prost::Message as _;
use sightline_abi as abi;
use sightline_proto::FlowCounters;
use sightline_proto::flow as pb;

use crate::numbers::{TRAFFIC_DIRECTION_EGRESS, TRAFFIC_DIRECTION_INGRESS};
use crate::record::{Flow, ServiceMeta, Side};

/// `Emitter.name` of Sightline's flows.
pub const EMITTER_NAME: &str = "Sightline";
/// `Policy.kind` of the policies Sightline enforces.
pub const POLICY_KIND: &str = "NetworkPolicy";
/// The message field-mask paths start from.
const FLOW_MESSAGE: &str = "flow.Flow";

// ---------------------------------------------------------------------------
// Field masks.

/// Which fields of `flow.Flow` to keep. Built from proto paths
/// (`source.pod_name`, `IP`, `l4.TCP.flags`, …); a path keeps its field's
/// whole subtree. A mask without paths keeps everything (an inactive mask,
/// as in Hubble).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldMask {
    /// `None`: everything.
    root: Option<Fields>,
    /// What `root` says of each field [`to_proto`] fills, by [`Top`] index,
    /// resolved once so that converting a flow does no name lookups at the
    /// top level.
    top: Vec<Option<Node>>,
}

type Fields = BTreeMap<String, Node>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    /// The whole subtree.
    All,
    /// Only these sub-fields.
    Some(Fields),
}

/// The fields `hubble observe` asks for when it prints flows in its
/// compact, dict or table format with `--experimental-use-default-field-masks`:
/// everything those formats show.
pub const PRINTED_FIELDS: &[&str] = &[
    "time",
    "source.identity",
    "source.namespace",
    "source.pod_name",
    "destination.identity",
    "destination.namespace",
    "destination.pod_name",
    "source_service",
    "destination_service",
    "l4",
    "IP",
    "ethernet",
    "l7",
    "Type",
    "node_name",
    "is_reply",
    "event_type",
    "verdict",
    "drop_reason_desc",
    "traffic_direction",
    "policy_match_type",
    "trace_observation_point",
    "Summary",
];

impl FieldMask {
    /// A mask of `paths`, each checked against flow.proto; the error names
    /// the first invalid path and why.
    pub fn new<I, S>(paths: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut root: Option<Fields> = None;
        for path in paths {
            let path = path.as_ref();
            validate(path)?;
            insert(root.get_or_insert_with(Fields::new), path);
        }
        let top = match &root {
            None => Vec::new(),
            Some(fields) => TOP_NAMES.iter().map(|name| fields.get(*name).cloned()).collect(),
        };
        Ok(Self { root, top })
    }

    /// A mask from a protobuf `FieldMask` (`GetFlowsRequest.field_mask`).
    pub fn from_proto(mask: &prost_types::FieldMask) -> Result<Self, String> {
        Self::new(&mask.paths)
    }

    /// Whether the mask keeps everything (it has no paths).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// Limits a `flow.Flow` that is already built (as the relay and the
    /// exporters receive them) to the mask: a message field the mask names
    /// in part keeps only those parts, and stays present if it was, as
    /// Hubble's field-mask copy does. [`to_proto`] with the mask gives the
    /// same flow for a record.
    pub fn prune(&self, flow: &mut pb::Flow) {
        let Some(root) = &self.root else { return };
        let Ok(pool) = crate::json::pool() else { return };
        let Some(desc) = pool.get_message_by_name(FLOW_MESSAGE) else { return };
        // On the wire: copy the fields kept, prune the ones kept in part,
        // then decode once (a tenth of going through a dynamic message).
        let bytes = flow.encode_to_vec();
        let mut out = Vec::with_capacity(bytes.len());
        if prune_wire(&bytes, &desc, root, &mut out).is_some()
            && let Ok(pruned) = pb::Flow::decode(out.as_slice())
        {
            *flow = pruned;
        }
    }

    fn selection(&self) -> Selection<'_> {
        match &self.root {
            None => Selection::ALL,
            Some(_) => Selection { top: Some(&self.top) },
        }
    }
}

/// Copies to `out` the fields of the encoded message `bytes` (of `desc`)
/// that `keep` names: whole, or for a singular message field named in
/// part, that message pruned in turn (present, even if nothing of it is
/// left). `None` for bytes that are not a well-formed message.
fn prune_wire(mut bytes: &[u8], desc: &prost_reflect::MessageDescriptor, keep: &Fields, out: &mut Vec<u8>) -> Option<()> {
    use prost::encoding::{decode_varint, encode_varint};
    while !bytes.is_empty() {
        let start = bytes;
        let key = decode_varint(&mut bytes).ok()?;
        let payload = match key & 7 {
            0 => {
                decode_varint(&mut bytes).ok()?;
                None
            }
            1 => {
                bytes = bytes.get(8..)?;
                None
            }
            5 => {
                bytes = bytes.get(4..)?;
                None
            }
            2 => {
                let len = usize::try_from(decode_varint(&mut bytes).ok()?).ok()?;
                let payload = bytes.get(..len)?;
                bytes = &bytes[len..];
                Some(payload)
            }
            _ => return None,
        };
        let whole = &start[..start.len() - bytes.len()];
        let Some(field) = u32::try_from(key >> 3).ok().and_then(|n| desc.get_field(n)) else { continue };
        match keep.get(field.name()) {
            None => {}
            Some(Node::All) => out.extend_from_slice(whole),
            Some(Node::Some(children)) => match (field.kind(), payload) {
                (prost_reflect::Kind::Message(inner), Some(payload)) if !field.is_list() => {
                    let mut pruned = Vec::with_capacity(payload.len());
                    prune_wire(payload, &inner, children, &mut pruned)?;
                    encode_varint(key, out);
                    encode_varint(pruned.len() as u64, out);
                    out.extend_from_slice(&pruned);
                }
                _ => out.extend_from_slice(whole),
            },
        }
    }
    Some(())
}

/// The top-level fields of `flow.Flow` that [`to_proto`] fills.
#[derive(Clone, Copy, Debug)]
enum Top {
    Time,
    Uuid,
    Emitter,
    Verdict,
    DropReasonDesc,
    Ip,
    L4,
    Source,
    Destination,
    Type,
    NodeName,
    EventType,
    TrafficDirection,
    PolicyMatchType,
    TraceObservationPoint,
    TraceReason,
    IsReply,
    Interface,
    EgressAllowedBy,
    IngressAllowedBy,
    EgressDeniedBy,
    IngressDeniedBy,
    Extensions,
    DropReason,
    Reply,
    SourceService,
    DestinationService,
}

/// Proto names of [`Top`]'s fields, in its order.
const TOP_NAMES: [&str; 27] = [
    "time",
    "uuid",
    "emitter",
    "verdict",
    "drop_reason_desc",
    "IP",
    "l4",
    "source",
    "destination",
    "Type",
    "node_name",
    "event_type",
    "traffic_direction",
    "policy_match_type",
    "trace_observation_point",
    "trace_reason",
    "is_reply",
    "interface",
    "egress_allowed_by",
    "ingress_allowed_by",
    "egress_denied_by",
    "ingress_denied_by",
    "extensions",
    "drop_reason",
    "reply",
    "source_service",
    "destination_service",
];

/// What a mask keeps of `flow.Flow`'s top-level fields.
#[derive(Clone, Copy, Debug)]
struct Selection<'a> {
    /// `None`: everything.
    top: Option<&'a [Option<Node>]>,
}

impl<'a> Selection<'a> {
    const ALL: Selection<'static> = Selection { top: None };

    fn top(self, field: Top) -> Keep<'a> {
        let Some(top) = self.top else { return Keep::All };
        match top.get(field as usize) {
            Some(Some(Node::All)) => Keep::All,
            Some(Some(Node::Some(children))) => Keep::Some(children),
            _ => Keep::No,
        }
    }
}

fn insert(mut fields: &mut Fields, path: &str) {
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        if segments.peek().is_none() {
            fields.insert(segment.to_owned(), Node::All);
            return;
        }
        let node = fields.entry(segment.to_owned()).or_insert_with(|| Node::Some(Fields::new()));
        match node {
            // Already kept whole by a shorter path.
            Node::All => return,
            Node::Some(children) => fields = children,
        }
    }
}

/// Checks one path against the message descriptors of flow.proto.
fn validate(path: &str) -> Result<(), String> {
    let schema = schema()?;
    let mut message: Option<&str> = Some(FLOW_MESSAGE);
    let mut walked = String::new();
    for segment in path.split('.') {
        if segment.is_empty() {
            return Err(format!("invalid field mask path {path:?}: empty field name"));
        }
        let Some(current) = message else {
            return Err(format!(
                "invalid field mask path {path:?}: {walked:?} is a repeated or scalar field and has no sub-fields"
            ));
        };
        let Some(field) = schema.get(current).and_then(|fields| fields.get(segment)) else {
            return Err(format!("invalid field mask path {path:?}: {current} has no field {segment:?}"));
        };
        message = if field.repeated { None } else { field.message.as_deref() };
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(segment);
    }
    Ok(())
}

/// A field of a message, as the mask needs it.
#[derive(Debug)]
struct FieldInfo {
    /// Full name of its message type (`flow.IP`), if it is a message.
    message: Option<String>,
    repeated: bool,
}

/// Message full name → field name → field.
type Schema = HashMap<String, HashMap<String, FieldInfo>>;

fn schema() -> Result<&'static Schema, String> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA.get_or_init(load_schema).as_ref().map_err(Clone::clone)
}

fn load_schema() -> Result<Schema, String> {
    use prost_types::field_descriptor_proto::{Label, Type};

    fn add(schema: &mut Schema, scope: &str, message: &prost_types::DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        let fields = message
            .field
            .iter()
            .map(|f| {
                let is_message = matches!(f.r#type(), Type::Message | Type::Group);
                let info = FieldInfo {
                    message: is_message.then(|| f.type_name().trim_start_matches('.').to_owned()),
                    repeated: f.label() == Label::Repeated,
                };
                (f.name().to_owned(), info)
            })
            .collect();
        for nested in &message.nested_type {
            add(schema, &name, nested);
        }
        schema.insert(name, fields);
    }

    let set = prost_types::FileDescriptorSet::decode(sightline_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("flow.proto descriptors do not decode: {e}"))?;
    let mut schema = Schema::new();
    for file in &set.file {
        for message in &file.message_type {
            add(&mut schema, file.package(), message);
        }
    }
    if schema.contains_key(FLOW_MESSAGE) {
        Ok(schema)
    } else {
        Err(format!("{FLOW_MESSAGE} is missing from the descriptors"))
    }
}

/// What to keep of one message.
#[derive(Clone, Copy, Debug)]
enum Keep<'a> {
    No,
    All,
    Some(&'a Fields),
}

impl<'a> Keep<'a> {
    fn field(self, name: &str) -> Keep<'a> {
        match self {
            Keep::No => Keep::No,
            Keep::All => Keep::All,
            Keep::Some(fields) => match fields.get(name) {
                None => Keep::No,
                Some(Node::All) => Keep::All,
                Some(Node::Some(children)) => Keep::Some(children),
            },
        }
    }

    fn has(self, name: &str) -> bool {
        !matches!(self.field(name), Keep::No)
    }

    fn any(self) -> bool {
        !matches!(self, Keep::No)
    }
}

// ---------------------------------------------------------------------------
// Conversion.

/// The protobuf of a flow seen on `node_name`, limited to `mask` when given.
#[must_use]
pub fn to_proto(flow: &Flow, node_name: &str, mask: Option<&FieldMask>) -> pb::Flow {
    let keep = mask.map_or(Selection::ALL, FieldMask::selection);
    let mut out = pb::Flow::default();
    let k = |field: Top| keep.top(field);

    if k(Top::Time).any() {
        out.time = Some(prune_timestamp(timestamp(flow.time_ns), k(Top::Time)));
    }
    if k(Top::Uuid).any() {
        out.uuid = flow_uuid(flow.seq);
    }
    if k(Top::Emitter).any() {
        let e = k(Top::Emitter);
        out.emitter = Some(pb::Emitter {
            name: if e.has("name") { EMITTER_NAME.to_owned() } else { String::new() },
            version: if e.has("version") { env!("CARGO_PKG_VERSION").to_owned() } else { String::new() },
        });
    }
    if k(Top::Verdict).any() {
        out.verdict = i32::from(flow.verdict);
    }
    if k(Top::DropReasonDesc).any() {
        out.drop_reason_desc = i32::from(flow.drop_reason);
    }
    if k(Top::Ip).any() {
        out.ip = Some(ip(flow, k(Top::Ip)));
    }
    if k(Top::L4).any() {
        out.l4 = l4(flow, k(Top::L4));
    }
    if k(Top::Source).any() {
        out.source = Some(endpoint(&flow.source, k(Top::Source)));
    }
    if k(Top::Destination).any() {
        out.destination = Some(endpoint(&flow.destination, k(Top::Destination)));
    }
    if let Some(s) = &flow.source_service
        && k(Top::SourceService).any()
    {
        out.source_service = Some(service(s, k(Top::SourceService)));
    }
    if let Some(s) = &flow.destination_service
        && k(Top::DestinationService).any()
    {
        out.destination_service = Some(service(s, k(Top::DestinationService)));
    }
    if k(Top::Type).any() {
        out.r#type = pb::FlowType::L3L4 as i32;
    }
    if k(Top::NodeName).any() {
        node_name.clone_into(&mut out.node_name);
    }
    if k(Top::EventType).any() {
        let e = k(Top::EventType);
        out.event_type = Some(pb::CiliumEventType {
            r#type: if e.has("type") { i32::from(flow.event_type) } else { 0 },
            sub_type: if e.has("sub_type") { i32::from(flow.event_sub_type) } else { 0 },
        });
    }
    if k(Top::TrafficDirection).any() {
        out.traffic_direction = i32::from(flow.traffic_direction);
    }
    if k(Top::PolicyMatchType).any() {
        out.policy_match_type = u32::from(flow.policy_match_type);
    }
    if k(Top::TraceObservationPoint).any() {
        out.trace_observation_point = i32::from(flow.trace_observation_point);
    }
    if k(Top::TraceReason).any() {
        out.trace_reason = i32::from(flow.trace_reason);
    }
    if k(Top::IsReply).any() && k(Top::IsReply).has("value") {
        out.is_reply = flow.is_reply;
    }
    if k(Top::Interface).any() && flow.ifindex != 0 {
        let i = k(Top::Interface);
        out.interface = Some(pb::NetworkInterface {
            index: if i.has("index") { flow.ifindex } else { 0 },
            name: match (&flow.interface, i.has("name")) {
                (Some(name), true) => String::from(&**name),
                _ => String::new(),
            },
        });
    }
    let egress = flow.traffic_direction == TRAFFIC_DIRECTION_EGRESS;
    let ingress = flow.traffic_direction == TRAFFIC_DIRECTION_INGRESS;
    if let Some(allowed) = &flow.allowed_by {
        if egress && k(Top::EgressAllowedBy).any() {
            out.egress_allowed_by = policies(allowed);
        }
        if ingress && k(Top::IngressAllowedBy).any() {
            out.ingress_allowed_by = policies(allowed);
        }
    }
    if let Some(denied) = &flow.denied_by {
        if egress && k(Top::EgressDeniedBy).any() {
            out.egress_denied_by = policies(denied);
        }
        if ingress && k(Top::IngressDeniedBy).any() {
            out.ingress_denied_by = policies(denied);
        }
    }
    if k(Top::Extensions).any() {
        let counters = FlowCounters {
            forward_packets: flow.counters[0],
            forward_bytes: flow.counters[1],
            reply_packets: flow.counters[2],
            reply_bytes: flow.counters[3],
            kernel_drop_reason: flow.kernel_drop_reason_name.as_deref().unwrap_or_default().to_owned(),
        };
        let mut any = counters.to_any();
        let e = k(Top::Extensions);
        if !e.has("type_url") {
            any.type_url.clear();
        }
        if !e.has("value") {
            any.value.clear();
        }
        out.extensions = Some(any);
    }
    set_deprecated(&mut out, flow, keep);
    out
}

/// The deprecated fields Hubble still fills: `drop_reason` (same code as
/// `drop_reason_desc`) and `reply`.
#[expect(deprecated, reason = "Hubble still fills the deprecated drop_reason and reply fields")]
fn set_deprecated(out: &mut pb::Flow, flow: &Flow, keep: Selection<'_>) {
    if keep.top(Top::DropReason).any() {
        out.drop_reason = u32::from(flow.drop_reason);
    }
    if keep.top(Top::Reply).any() {
        out.reply = flow.is_reply.unwrap_or(false);
    }
}

/// A protobuf timestamp of Unix nanoseconds.
#[must_use]
pub fn timestamp(unix_ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix_ns.div_euclid(1_000_000_000),
        // In 0..1e9, so it fits.
        nanos: unix_ns.rem_euclid(1_000_000_000) as i32,
    }
}

fn prune_timestamp(mut t: prost_types::Timestamp, keep: Keep<'_>) -> prost_types::Timestamp {
    if !keep.has("seconds") {
        t.seconds = 0;
    }
    if !keep.has("nanos") {
        t.nanos = 0;
    }
    t
}

fn ip(flow: &Flow, keep: Keep<'_>) -> pb::Ip {
    let version = match flow.ip_version {
        4 => pb::IpVersion::IPv4,
        6 => pb::IpVersion::IPv6,
        _ => pb::IpVersion::IpNotUsed,
    };
    pb::Ip {
        source: if keep.has("source") { flow.source.ip.to_string() } else { String::new() },
        destination: if keep.has("destination") { flow.destination.ip.to_string() } else { String::new() },
        ip_version: if keep.has("ipVersion") { version as i32 } else { 0 },
        encrypted: false,
        source_xlated: match flow.source_xlated {
            Some(ip) if keep.has("source_xlated") => ip.to_string(),
            _ => String::new(),
        },
    }
}

fn service(s: &ServiceMeta, keep: Keep<'_>) -> pb::Service {
    pb::Service {
        name: if keep.has("name") { s.name.clone() } else { String::new() },
        namespace: if keep.has("namespace") { s.namespace.clone() } else { String::new() },
    }
}

fn l4(flow: &Flow, keep: Keep<'_>) -> Option<pb::Layer4> {
    use pb::layer4::Protocol;
    let ports = |k: Keep<'_>| {
        (
            if k.has("source_port") { u32::from(flow.source.port) } else { 0 },
            if k.has("destination_port") { u32::from(flow.destination.port) } else { 0 },
        )
    };
    let icmp = |k: Keep<'_>| {
        (
            if k.has("type") { u32::from(flow.icmp_type) } else { 0 },
            if k.has("code") { u32::from(flow.icmp_code) } else { 0 },
        )
    };
    let protocol = match flow.protocol {
        abi::IPPROTO_TCP => {
            let k = keep.field("TCP");
            if !k.any() {
                // The mask names l4 but not this protocol: l4 stays, empty
                // (as Hubble's field-mask copy leaves it).
                return Some(pb::Layer4::default());
            }
            let (source_port, destination_port) = ports(k);
            let flags = k.field("flags");
            Protocol::Tcp(pb::Tcp {
                source_port,
                destination_port,
                flags: flags.any().then(|| tcp_flags(flow.tcp_flags, flags)),
            })
        }
        abi::IPPROTO_UDP => {
            let k = keep.field("UDP");
            if !k.any() {
                // The mask names l4 but not this protocol: l4 stays, empty
                // (as Hubble's field-mask copy leaves it).
                return Some(pb::Layer4::default());
            }
            let (source_port, destination_port) = ports(k);
            Protocol::Udp(pb::Udp { source_port, destination_port })
        }
        abi::IPPROTO_SCTP => {
            let k = keep.field("SCTP");
            if !k.any() {
                // The mask names l4 but not this protocol: l4 stays, empty
                // (as Hubble's field-mask copy leaves it).
                return Some(pb::Layer4::default());
            }
            let (source_port, destination_port) = ports(k);
            Protocol::Sctp(pb::Sctp { source_port, destination_port })
        }
        abi::IPPROTO_ICMP => {
            let k = keep.field("ICMPv4");
            if !k.any() {
                // The mask names l4 but not this protocol: l4 stays, empty
                // (as Hubble's field-mask copy leaves it).
                return Some(pb::Layer4::default());
            }
            let (r#type, code) = icmp(k);
            Protocol::IcmPv4(pb::IcmPv4 { r#type, code })
        }
        abi::IPPROTO_ICMPV6 => {
            let k = keep.field("ICMPv6");
            if !k.any() {
                // The mask names l4 but not this protocol: l4 stays, empty
                // (as Hubble's field-mask copy leaves it).
                return Some(pb::Layer4::default());
            }
            let (r#type, code) = icmp(k);
            Protocol::IcmPv6(pb::IcmPv6 { r#type, code })
        }
        _ => return None,
    };
    Some(pb::Layer4 { protocol: Some(protocol) })
}

fn tcp_flags(bits: u8, keep: Keep<'_>) -> pb::TcpFlags {
    let flag = |name: &str, bit: u8| keep.has(name) && bits & bit != 0;
    pb::TcpFlags {
        fin: flag("FIN", abi::TCP_FIN),
        syn: flag("SYN", abi::TCP_SYN),
        rst: flag("RST", abi::TCP_RST),
        psh: flag("PSH", abi::TCP_PSH),
        ack: flag("ACK", abi::TCP_ACK),
        urg: flag("URG", abi::TCP_URG),
        ece: flag("ECE", abi::TCP_ECE),
        cwr: flag("CWR", abi::TCP_CWR),
        ns: false,
    }
}

fn endpoint(side: &Side, keep: Keep<'_>) -> pb::Endpoint {
    let pod = side.pod.as_deref();
    let labels = pod.map(|p| &p.labels).or(side.identity_labels.as_ref());
    pb::Endpoint {
        id: match pod {
            Some(p) if keep.has("ID") => u32::from(p.endpoint_id),
            _ => 0,
        },
        identity: if keep.has("identity") { side.identity } else { 0 },
        namespace: match pod {
            Some(p) if keep.has("namespace") => p.namespace.clone(),
            _ => String::new(),
        },
        labels: match labels {
            Some(labels) if keep.has("labels") => sorted(labels),
            _ => Vec::new(),
        },
        pod_name: match pod {
            Some(p) if keep.has("pod_name") => p.name.clone(),
            _ => String::new(),
        },
        // Lab pods have no controllers.
        workloads: Vec::new(),
        // Pods are in Cilium's default cluster, as the filters take them.
        cluster_name: match pod {
            Some(_) if keep.has("cluster_name") => crate::numbers::CLUSTER_NAME.to_owned(),
            _ => String::new(),
        },
    }
}

fn sorted(labels: &Arc<[String]>) -> Vec<String> {
    let mut out = labels.to_vec();
    if !out.is_sorted() {
        out.sort_unstable();
    }
    out
}

/// `namespace/name` → `flow.Policy`.
fn policies(names: &[String]) -> Vec<pb::Policy> {
    names
        .iter()
        .map(|full| {
            let (namespace, name) = full.split_once('/').unwrap_or(("", full.as_str()));
            pb::Policy {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                labels: Vec::new(),
                revision: 0,
                kind: POLICY_KIND.to_owned(),
            }
        })
        .collect()
}

/// `flow.LostEvent` of `count` events lost at `source` between `first_ns`
/// and `last_ns` (Unix nanoseconds; 0 = unknown, left unset).
#[must_use]
pub fn lost_event(source: pb::LostEventSource, count: u64, first_ns: i64, last_ns: i64) -> pb::LostEvent {
    pb::LostEvent {
        source: source as i32,
        num_events_lost: count,
        cpu: None,
        first: (first_ns != 0).then(|| timestamp(first_ns)),
        last: (last_ns != 0).then(|| timestamp(last_ns)),
    }
}

// ---------------------------------------------------------------------------
// UUIDs.

/// The UUID of the flow numbered `seq` in this process: the boot id's first
/// half (with the version-4 nibble) and its second half plus `seq` (modulo
/// 2^62, keeping the RFC 4122 variant bits), so flows of one process never
/// collide and flows of different processes differ in the random bits.
#[must_use]
pub fn flow_uuid(seq: u64) -> String {
    const LOW: u64 = (1 << 62) - 1;
    let boot = boot_id();
    let mut bytes = *boot;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    let mut low_bytes = [0u8; 8];
    low_bytes.copy_from_slice(&boot[8..]);
    let low = (u64::from_be_bytes(low_bytes) & LOW).wrapping_add(seq) & LOW | (1 << 63);
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// This process's random boot id: the kernel's random UUID, read once, or
/// (if /proc is unreadable) bytes from std's randomly keyed hasher.
fn boot_id() -> &'static [u8; 16] {
    static BOOT_ID: OnceLock<[u8; 16]> = OnceLock::new();
    BOOT_ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .ok()
            .and_then(|s| parse_uuid(s.trim()))
            .unwrap_or_else(fallback_boot_id)
    })
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&c| c != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

fn fallback_boot_id() -> [u8; 16] {
    use std::hash::{BuildHasher as _, Hasher as _};
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(now);
        h.write_u32(std::process::id());
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::record::PodMeta;
    use pb::layer4::Protocol;

    fn pod(name: &str, ep: u16) -> Arc<PodMeta> {
        Arc::new(PodMeta {
            namespace: "x".into(),
            name: name.into(),
            endpoint_id: ep,
            identity: 256,
            labels: Arc::from(["k8s:io.kubernetes.pod.namespace=x".to_owned(), format!("k8s:app={name}")]),
            node: "node-1".into(),
        })
    }

    fn flow() -> Flow {
        Flow {
            time_ns: 1_700_000_000_123_456_789,
            seq: 42,
            source: Side {
                ip: IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2)),
                port: 40000,
                identity: 256,
                pod: Some(pod("a", 1)),
                identity_labels: None,
            },
            destination: Side {
                ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                port: 80,
                identity: 2,
                pod: None,
                // Unsorted on purpose.
                identity_labels: Some(Arc::from(["reserved:world".to_owned(), "cidr:192.0.2.0/24".to_owned()])),
            },
            verdict: 1,
            drop_reason: 0,
            kernel_drop_reason: 0,
            kernel_drop_reason_name: None,
            event_type: 5,
            event_sub_type: 0,
            trace_observation_point: 0,
            trace_reason: 0,
            is_reply: Some(false),
            traffic_direction: TRAFFIC_DIRECTION_EGRESS,
            policy_match_type: 2,
            protocol: abi::IPPROTO_TCP,
            tcp_flags: abi::TCP_SYN | abi::TCP_ACK,
            icmp_type: 0,
            icmp_code: 0,
            ip_version: 4,
            ifindex: 7,
            interface: Some(Arc::from("lxc00001")),
            allowed_by: Some(Arc::from(["x/allow-web".to_owned(), "cluster-wide".to_owned()])),
            denied_by: None,
            counters: [3, 180, 2, 120],
            source_service: None,
            destination_service: None,
            source_xlated: None,
        }
    }

    fn web() -> Arc<ServiceMeta> {
        Arc::new(ServiceMeta { namespace: "x".into(), name: "web".into() })
    }

    #[test]
    fn services_and_the_translated_source() {
        let plain = to_proto(&flow(), "node-1", None);
        assert_eq!((plain.source_service, plain.destination_service), (None, None));
        assert_eq!(plain.ip.expect("IP").source_xlated, "");

        let to_service = Flow { destination_service: Some(web()), ..flow() };
        let p = to_proto(&to_service, "node-1", None);
        assert_eq!(p.destination_service, Some(pb::Service { name: "web".into(), namespace: "x".into() }));
        assert_eq!(p.source_service, None);

        let reply = Flow {
            source_service: Some(web()),
            source_xlated: Some(Ipv4Addr::new(10, 96, 0, 10)),
            ..flow()
        };
        let p = to_proto(&reply, "node-1", None);
        assert_eq!(p.source_service, Some(pb::Service { name: "web".into(), namespace: "x".into() }));
        let ip = p.ip.expect("IP");
        assert_eq!((ip.source.as_str(), ip.source_xlated.as_str()), ("10.244.1.2", "10.96.0.10"));

        // Masks keep what they name.
        let mask = FieldMask::new(["destination_service.name", "IP.source_xlated"]).unwrap();
        let p = to_proto(&Flow { destination_service: Some(web()), ..reply.clone() }, "node-1", Some(&mask));
        assert_eq!(p.destination_service, Some(pb::Service { name: "web".into(), namespace: String::new() }));
        assert_eq!(p.source_service, None);
        let ip = p.ip.as_ref().expect("IP");
        assert_eq!((ip.source.as_str(), ip.source_xlated.as_str()), ("", "10.96.0.10"));
        // The same as pruning the whole protobuf.
        let mut whole = to_proto(&Flow { destination_service: Some(web()), ..reply }, "node-1", None);
        mask.prune(&mut whole);
        assert_eq!(whole, p);
    }

    #[test]
    #[expect(deprecated, reason = "checks the deprecated fields Hubble still fills")]
    fn fills_every_field_sightline_has() {
        let p = to_proto(&flow(), "node-1", None);
        assert_eq!(p.time, Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 123_456_789 }));
        assert_eq!(p.uuid, flow_uuid(42));
        assert_eq!(p.verdict, pb::Verdict::Forwarded as i32);
        assert_eq!((p.drop_reason, p.drop_reason_desc), (0, 0));
        let ip = p.ip.expect("IP");
        assert_eq!((ip.source.as_str(), ip.destination.as_str()), ("10.244.1.2", "192.0.2.1"));
        assert_eq!(ip.ip_version, pb::IpVersion::IPv4 as i32);
        let Some(pb::Layer4 { protocol: Some(Protocol::Tcp(tcp)) }) = p.l4 else { panic!("l4 is TCP: {:?}", p.l4) };
        assert_eq!((tcp.source_port, tcp.destination_port), (40000, 80));
        let flags = tcp.flags.expect("flags");
        assert!(flags.syn && flags.ack && !flags.fin && !flags.rst);
        let src = p.source.expect("source");
        assert_eq!((src.id, src.identity, src.namespace.as_str(), src.pod_name.as_str()), (1, 256, "x", "a"));
        assert_eq!(src.labels, ["k8s:app=a", "k8s:io.kubernetes.pod.namespace=x"]);
        let dst = p.destination.expect("destination");
        assert_eq!((dst.id, dst.identity, dst.pod_name.as_str()), (0, 2, ""));
        assert_eq!(dst.labels, ["cidr:192.0.2.0/24", "reserved:world"]);
        assert_eq!(p.r#type, pb::FlowType::L3L4 as i32);
        assert_eq!(p.node_name, "node-1");
        assert_eq!(p.event_type, Some(pb::CiliumEventType { r#type: 5, sub_type: 0 }));
        assert_eq!(p.traffic_direction, pb::TrafficDirection::Egress as i32);
        assert_eq!(p.policy_match_type, 2);
        assert_eq!(p.is_reply, Some(false));
        assert!(!p.reply);
        assert_eq!(p.interface, Some(pb::NetworkInterface { index: 7, name: "lxc00001".into() }));
        assert_eq!(p.egress_allowed_by.len(), 2);
        assert_eq!(
            (p.egress_allowed_by[0].namespace.as_str(), p.egress_allowed_by[0].name.as_str()),
            ("x", "allow-web")
        );
        assert_eq!(p.egress_allowed_by[0].kind, "NetworkPolicy");
        assert_eq!((p.egress_allowed_by[1].namespace.as_str(), p.egress_allowed_by[1].name.as_str()), ("", "cluster-wide"));
        assert!(p.ingress_allowed_by.is_empty() && p.egress_denied_by.is_empty() && p.ingress_denied_by.is_empty());
        let counters = FlowCounters::from_any(p.extensions.as_ref().expect("extensions")).expect("counters");
        assert_eq!(
            (counters.forward_packets, counters.forward_bytes, counters.reply_packets, counters.reply_bytes),
            (3, 180, 2, 120)
        );
        assert_eq!(p.emitter.map(|e| e.name), Some("Sightline".to_owned()));
        assert!(p.summary.is_empty());
        // Encodes and decodes.
        let again = pb::Flow::decode(to_proto(&flow(), "node-1", None).encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(again, to_proto(&flow(), "node-1", None));
    }

    #[test]
    fn drops_ingress_policies_and_other_protocols() {
        let mut f = flow();
        f.verdict = 2;
        f.drop_reason = 133;
        f.traffic_direction = TRAFFIC_DIRECTION_INGRESS;
        f.allowed_by = None;
        f.denied_by = Some(Arc::from(["x/deny".to_owned()]));
        f.protocol = abi::IPPROTO_ICMP;
        f.icmp_type = 8;
        f.is_reply = None;
        let p = to_proto(&f, "n", None);
        assert_eq!((p.verdict, p.drop_reason_desc), (2, 133));
        assert_eq!(p.ingress_denied_by.len(), 1);
        assert!(p.egress_denied_by.is_empty());
        assert_eq!(p.is_reply, None);
        assert_eq!(p.l4, Some(pb::Layer4 { protocol: Some(Protocol::IcmPv4(pb::IcmPv4 { r#type: 8, code: 0 })) }));
        for (proto, expect_udp) in [(abi::IPPROTO_UDP, true), (abi::IPPROTO_SCTP, false)] {
            f.protocol = proto;
            let l4 = to_proto(&f, "n", None).l4.and_then(|l| l.protocol);
            match l4 {
                Some(Protocol::Udp(u)) if expect_udp => assert_eq!(u.destination_port, 80),
                Some(Protocol::Sctp(s)) if !expect_udp => assert_eq!(s.source_port, 40000),
                other => panic!("unexpected l4 {other:?}"),
            }
        }
        f.protocol = 47;
        assert_eq!(to_proto(&f, "n", None).l4, None);
        f.ifindex = 0;
        assert_eq!(to_proto(&f, "n", None).interface, None);
    }

    #[test]
    fn field_mask_keeps_only_named_fields() {
        let mask = FieldMask::new(["source.pod_name", "IP", "l4.TCP.flags.SYN", "verdict", "time"]).expect("mask");
        let p = to_proto(&flow(), "node-1", Some(&mask));
        let src = p.source.expect("source");
        assert_eq!(src, pb::Endpoint { pod_name: "a".into(), ..pb::Endpoint::default() });
        assert_eq!(p.destination, None);
        assert_eq!(p.ip.expect("IP").source, "10.244.1.2");
        let Some(pb::Layer4 { protocol: Some(Protocol::Tcp(tcp)) }) = p.l4 else { panic!("l4") };
        assert_eq!((tcp.source_port, tcp.destination_port), (0, 0));
        let flags = tcp.flags.expect("flags");
        assert!(flags.syn && !flags.ack);
        assert_eq!(p.verdict, 1);
        assert!(p.time.is_some());
        assert!(p.uuid.is_empty() && p.node_name.is_empty() && p.extensions.is_none() && p.event_type.is_none());
        assert!(p.egress_allowed_by.is_empty() && p.interface.is_none() && p.r#type == 0);

        // A shorter path wins over a longer one, whatever the order.
        let a = FieldMask::new(["source.pod_name", "source"]).expect("mask");
        let b = FieldMask::new(["source", "source.pod_name"]).expect("mask");
        assert_eq!(a, b);
        assert_eq!(to_proto(&flow(), "n", Some(&a)).source, to_proto(&flow(), "n", None).source);

        // No paths: everything.
        let all = FieldMask::new(Vec::<String>::new()).expect("mask");
        assert!(all.is_empty());
        assert_eq!(to_proto(&flow(), "n", Some(&all)), to_proto(&flow(), "n", None));

        // From the protobuf message; a mask on l4.UDP keeps nothing of TCP.
        let udp = FieldMask::from_proto(&prost_types::FieldMask { paths: vec!["l4.UDP".into(), "egress_allowed_by".into()] })
            .expect("mask");
        let p = to_proto(&flow(), "n", Some(&udp));
        assert_eq!(p.l4, Some(pb::Layer4::default()));
        assert_eq!(p.egress_allowed_by.len(), 2);

        let ext = FieldMask::new(["extensions.type_url", "is_reply", "Type", "node_name"]).expect("mask");
        let p = to_proto(&flow(), "n", Some(&ext));
        let any = p.extensions.expect("extensions");
        assert_eq!((any.type_url.as_str(), any.value.len()), (sightline_proto::FLOW_COUNTERS_TYPE_URL, 0));
        assert_eq!((p.is_reply, p.r#type, p.node_name.as_str()), (Some(false), 1, "n"));
    }

    /// Pruning a full protobuf gives what `to_proto` builds with the mask.
    #[test]
    fn pruning_a_protobuf_equals_converting_with_the_mask() {
        let mut flows = vec![flow()];
        let mut udp = flow();
        udp.protocol = abi::IPPROTO_UDP;
        udp.ifindex = 0;
        udp.is_reply = None;
        flows.push(udp);
        let mut world = flow();
        world.destination.pod = None;
        world.destination.identity_labels = Some(Arc::from(vec!["reserved:world".to_owned()]));
        world.traffic_direction = TRAFFIC_DIRECTION_INGRESS;
        flows.push(world);
        let masks: &[&[&str]] = &[
            &["source.pod_name", "IP", "l4.TCP.flags.SYN", "verdict", "time"],
            &["l4.UDP", "egress_allowed_by"],
            &["extensions.type_url", "is_reply", "Type", "node_name"],
            &["time.seconds", "emitter.name", "interface.index", "destination.labels", "destination.cluster_name"],
            &["uuid", "IP.destination", "l4.UDP.destination_port", "ingress_allowed_by", "trace_observation_point"],
            PRINTED_FIELDS,
            &["source", "destination", "event_type.sub_type", "drop_reason_desc", "traffic_direction", "is_reply.value"],
        ];
        for paths in masks {
            let mask = FieldMask::new(*paths).expect("mask");
            for f in &flows {
                let mut pruned = to_proto(f, "node-1", None);
                mask.prune(&mut pruned);
                assert_eq!(pruned, to_proto(f, "node-1", Some(&mask)), "mask {paths:?}");
            }
        }
    }

    #[test]
    fn field_mask_rejects_unknown_paths_by_name() {
        for (path, needle) in [
            ("source.podname", "\"podname\""),
            ("ip", "\"ip\""),
            ("IP.source.x", "\"IP.source\""),
            ("source..pod_name", "empty"),
            ("", "empty"),
            ("egress_allowed_by.name", "\"egress_allowed_by\""),
            ("l4.TCP.flag", "\"flag\""),
        ] {
            let err = FieldMask::new(["verdict", path]).expect_err(path);
            assert!(err.contains(&format!("{path:?}")) && err.contains(needle), "{path}: {err}");
        }
        for ok in [
            "Type",
            "Summary",
            "l7.dns.query",
            "time.seconds",
            "is_reply.value",
            "source.workloads",
            "interface.name",
            "extensions",
            "egress_denied_by",
            "trace_context.parent.trace_id",
        ] {
            FieldMask::new([ok]).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn top_level_names_are_flow_fields() {
        for name in TOP_NAMES {
            validate(name).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(Top::DestinationService as usize, TOP_NAMES.len() - 1);
        assert_eq!(TOP_NAMES[Top::SourceService as usize], "source_service");
        assert_eq!(TOP_NAMES[Top::L4 as usize], "l4");
        assert_eq!(TOP_NAMES[Top::IngressDeniedBy as usize], "ingress_denied_by");
    }

    #[test]
    fn uuids_are_stable_well_formed_and_distinct() {
        let a = flow_uuid(1);
        assert_eq!(a, flow_uuid(1));
        assert_ne!(a, flow_uuid(2));
        assert_eq!(a.len(), 36);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(parts[2].starts_with('4'), "version 4: {a}");
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'), "RFC 4122 variant: {a}");
        assert_eq!(parse_uuid(&a).map(|b| b.len()), Some(16));
        assert_eq!(parse_uuid("not-a-uuid"), None);
        assert_eq!(parse_uuid("zz345678-1234-1234-1234-123456789012"), None);
        let ids: std::collections::HashSet<String> = (0..1000).chain([u64::MAX, u64::MAX - 1]).map(flow_uuid).collect();
        assert_eq!(ids.len(), 1002);
        assert_ne!(fallback_boot_id(), [0; 16]);
    }

    #[test]
    fn lost_events_and_timestamps() {
        let e = lost_event(pb::LostEventSource::HubbleRingBuffer, 27, 1_500_000_000, 0);
        assert_eq!(e.source, 3);
        assert_eq!(e.num_events_lost, 27);
        assert_eq!(e.first, Some(prost_types::Timestamp { seconds: 1, nanos: 500_000_000 }));
        assert_eq!((e.last, e.cpu), (None, None));
        assert_eq!(timestamp(-1), prost_types::Timestamp { seconds: -1, nanos: 999_999_999 });
        assert!(timestamp(i64::MIN).nanos >= 0);
    }
}
