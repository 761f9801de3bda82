//! Sightline's flow model, shared by the collector (which builds flows from
//! datapath events), the relay (which merges and exports them) and the CLI.
//!
//! The stages, in the order a flow travels through them:
//!
//! - [`record`]: the compact [`Flow`] record (shared metadata, no owned
//!   strings), with Hubble's numbering ([`numbers`]);
//! - [`store`]: the fixed-capacity ring of flows, one writer, many readers
//!   that detect what they missed (Hubble's `container/ring`);
//! - [`filter`]: Hubble's `FlowFilter`s, compiled once and matched on any
//!   [`FlowView`](filter::FlowView): the compact record or a `flow.Flow`
//!   protobuf, with the same decisions;
//! - [`convert`]: [`Flow`] → `flow.Flow` protobuf (with an optional field
//!   mask, which also prunes a protobuf flow), and `flow.LostEvent`;
//! - [`json`]: proto3 JSON with Hubble's field names, as `hubble observe -o
//!   json` prints it and Hubble's exporter writes it.
//!
//! This crate must not touch the kernel, sockets or gRPC: it is the pure
//! data path between the ring-buffer consumer and the API servers and
//! exporters, so that it can be tested and benchmarked on its own.
#![forbid(unsafe_code)]

pub mod convert;
pub mod duration;
pub mod filter;
pub mod json;
pub mod json_fast;
pub mod k8s_names;
pub mod numbers;
pub mod record;
pub mod store;
#[doc(hidden)]
pub mod testing;

pub use convert::{FieldMask, PRINTED_FIELDS, lost_event, to_proto};
pub use filter::{FilterError, FlowFilters};
pub use record::{Flow, PodMeta, ServiceMeta, Side};
pub use store::{Entry, Reader, Start, Store, StoreError};

#[cfg(test)]
mod tests {
    /// The store keeps thousands of these: the record must stay compact.
    #[test]
    fn flow_record_is_compact() {
        let size = size_of::<super::Flow>();
        println!("size_of::<Flow>() = {size} bytes (Side: {} bytes)", size_of::<super::Side>());
        assert!(size <= 256, "Flow is {size} bytes, more than 256");
    }
}
