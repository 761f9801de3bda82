//! Flows: what the collector keeps of each datapath event and serves through
//! the Hubble-compatible API.
//!
//! The stages, in the order an event travels through them:
//!
//! - [`record`]: the compact [`Flow`] record (shared metadata, no owned
//!   strings);
//! - [`builder`]: decoded [`sightline_abi::Event`] + the node's
//!   [`Metadata`](crate::decoder::Metadata) → [`Flow`], with Hubble's
//!   numbering;
//! - [`store`]: the fixed-capacity ring of flows, one writer, many readers
//!   that detect what they missed (Hubble's `container/ring`);
//! - `filter`: Hubble's `FlowFilter`s, matched on the record directly;
//! - [`convert`]: [`Flow`] → `flow.Flow` protobuf (with an optional field
//!   mask), and `flow.LostEvent`.
//!
//! This module must not touch the kernel, sockets or gRPC: it is the pure
//! data path between the ring-buffer consumer and the API server, so that it
//! can be tested and benchmarked on its own.

pub mod builder;
pub mod convert;
pub mod filter;
pub mod record;
pub mod store;
#[cfg(test)]
pub(crate) mod tests_support;

pub use builder::FlowBuilder;
pub use convert::{FieldMask, PRINTED_FIELDS, lost_event, to_proto};
pub use record::{Flow, Side};
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
