//! proto3 JSON with Hubble's field names, through prost-reflect and the
//! descriptors compiled into `sightline-proto`.
//!
//! Hubble's CLI marshals with the proto field names (`IP`, `l4`, `TCP`,
//! `source_port`, `node_name`, `Summary`, …), enums as names, 64-bit
//! integers as strings and timestamps in RFC 3339; this module does the same
//! so that scripts written against `hubble observe -o json` keep working.

use std::fmt;
use std::sync::OnceLock;

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use sightline_proto::flow::FlowFilter;

/// A message that could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError(String);

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JsonError {}

pub(crate) fn pool() -> Result<&'static DescriptorPool, JsonError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(sightline_proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| format!("the built-in descriptors: {e}"))
    })
    .as_ref()
    .map_err(|e| JsonError(e.clone()))
}

fn options() -> SerializeOptions {
    SerializeOptions::new().use_proto_field_name(true).stringify_64_bit_integers(true)
}

/// Serialises any generated message as one line of proto3 JSON.
pub fn to_json<M: Message + Name>(msg: &M) -> Result<String, JsonError> {
    let desc = pool()?
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| JsonError(format!("no descriptor for {}", M::full_name())))?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| JsonError(format!("re-decoding {}: {e}", M::full_name())))?;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    dynamic.serialize_with_options(&mut ser, &options()).map_err(|e| JsonError(format!("{}: {e}", M::full_name())))?;
    String::from_utf8(out).map_err(|e| JsonError(e.to_string()))
}

/// Parses one or more JSON FlowFilters (concatenated objects are allowed, as
/// hubble's `--allowlist` takes them).
pub fn flow_filters_from_json(text: &str) -> Result<Vec<FlowFilter>, String> {
    let desc = pool()
        .map_err(|e| e.to_string())?
        .get_message_by_name(&FlowFilter::full_name())
        .ok_or("no descriptor for flow.FlowFilter")?;
    let mut out = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
        let value = value.map_err(|e| format!("not JSON: {e}"))?;
        let dynamic = DynamicMessage::deserialize_with_options(desc.clone(), value, &DeserializeOptions::new())
            .map_err(|e| format!("not a FlowFilter: {e}"))?;
        out.push(dynamic.transcode_to::<FlowFilter>().map_err(|e| format!("not a FlowFilter: {e}"))?);
    }
    if out.is_empty() {
        return Err("no FlowFilter given".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use sightline_proto::flow::Flow;
    use sightline_proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};

    use super::*;

    #[test]
    fn flows_use_hubble_field_names() {
        use std::sync::Arc;

        let pod = Arc::new(crate::PodMeta { namespace: "x".into(), name: "a".into(), endpoint_id: 1, ..crate::PodMeta::default() });
        let compact = crate::Flow {
            time_ns: 1_732_617_596_395_000_000,
            source: crate::Side { pod: Some(pod), identity: 1, ..crate::testing::side([10, 244, 1, 2], 35702) },
            tcp_flags: 0x02,
            is_reply: Some(false),
            counters: [3, 0, 0, 0],
            ..crate::testing::flow()
        };
        let flow = Flow { socket_cookie: 1 << 40, ..crate::to_proto(&compact, "node-1", None) };
        let resp = GetFlowsResponse {
            node_name: "node-1".into(),
            time: flow.time,
            response_types: Some(ResponseTypes::Flow(flow)),
        };
        let text = to_json(&resp).expect("serialises");
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["time"], "2024-11-26T10:39:56.395Z");
        assert_eq!(v["node_name"], "node-1");
        let f = &v["flow"];
        assert_eq!(f["verdict"], "FORWARDED");
        assert_eq!(f["IP"]["source"], "10.244.1.2");
        assert_eq!(f["IP"]["ipVersion"], "IPv4");
        assert_eq!(f["l4"]["TCP"]["source_port"], 35702);
        assert_eq!(f["l4"]["TCP"]["flags"]["SYN"], true);
        assert_eq!(f["source"]["ID"], 1);
        assert_eq!(f["source"]["pod_name"], "a");
        assert_eq!(f["Type"], "L3_L4");
        assert_eq!(f["is_reply"], false);
        assert_eq!(f["socket_cookie"], "1099511627776");
        assert_eq!(f["extensions"]["@type"], "type.googleapis.com/sightline.v1.FlowCounters");
        assert_eq!(f["extensions"]["forward_packets"], "3");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn flow_filters_parse_from_hubble_json() {
        let got = flow_filters_from_json(r#"{"source_pod":["x/a"],"verdict":["DROPPED"],"event_type":[{"type":4}]}"#)
            .expect("parses");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].source_pod, vec!["x/a".to_owned()]);
        assert_eq!(got[0].verdict, vec![2]);
        assert_eq!(got[0].event_type[0].r#type, 4);
        assert!(flow_filters_from_json("").is_err());
        assert!(flow_filters_from_json(r#"{"no_such_field":1}"#).is_err());
    }
}
