//! Flows: what the collector keeps of each datapath event and serves through
//! the Hubble-compatible API.
//!
//! The flow model itself (record, store, filters, protobuf and JSON) lives
//! in the `sightline-flow` crate, shared with the relay and the CLI, and is
//! re-exported here; this module adds the collector's own stage:
//!
//! - [`builder`]: decoded [`sightline_abi::Event`] + the node's
//!   [`Metadata`](crate::metadata::Metadata) → [`Flow`], with Hubble's
//!   numbering.

pub mod builder;

pub use builder::FlowBuilder;
pub use sightline_flow::{
    Entry, FieldMask, Flow, PRINTED_FIELDS, Reader, Side, Start, Store, StoreError, convert, filter, lost_event,
    record, store, to_proto,
};
