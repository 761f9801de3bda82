//! Encoders: one record (a flow, or an aggregate of flows) → the bytes its
//! sink sends, made once, before the spool.
//!
//! - [`file`]: Hubble's export JSON lines (`{"flow":{…},"node_name":…,"time":…}`);
//! - [`azure`]: one Logs Ingestion row shaped like `ContainerNetworkLogs`;
//! - [`otlp`]: one OpenTelemetry `LogRecord`, protobuf-encoded.
//!
//! An encoder must not fail or allocate per field: it appends to a reused
//! buffer, and says whether the item is one its sink takes.

use crate::record::Item;

pub mod azure;
pub mod file;
pub mod otlp;

/// Turns items into a sink's payloads.
pub trait Encoder: Send {
    /// Appends the payload of `item` to `out`; `false` (and nothing
    /// appended) when the sink does not take this kind of item.
    fn encode(&mut self, item: &Item<'_>, out: &mut Vec<u8>) -> bool;
}

/// Hubble's name of an enum value, or its number.
pub(crate) fn enum_name(value: i32, name: Option<&'static str>) -> std::borrow::Cow<'static, str> {
    match name {
        Some(n) => n.into(),
        None => value.to_string().into(),
    }
}
