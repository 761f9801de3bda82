//! The Sightline relay: merges every node's flows into one cluster-wide
//! stream and forwards it to Azure Monitor and OTLP.
//!
//! Not built yet: a lab has a single node and no relay (`lab status` reports
//! `"relay": null`). This crate must not depend on the collector; it speaks to
//! collectors only over their public gRPC API.
#![forbid(unsafe_code)]
