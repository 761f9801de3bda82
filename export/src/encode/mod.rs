//! Encoders: one record (a flow, or an aggregate of flows) → the bytes its
//! sink sends, made once, before the spool.

pub mod azure;
