//! Sightline's flow exporters: the relay's merged flow stream (or a
//! collector's own flows) delivered to files, Azure Monitor Logs Ingestion
//! and OpenTelemetry (OTLP), at least once, with nothing lost silently.
//!
//! One exporter is a chain of stages, each in its own module:
//!
//! - `config`: the `--export-config` file (schema in `docs/EXPORT.md`),
//!   checked as a whole, errors naming the line and the field;
//! - `pipeline`: FlowFilters (the flow crate's engine), field mask,
//!   optional aggregation (`aggregate`), the sink's encoder (`encode`),
//!   then the spool;
//! - [`spool`]: the bounded on-disk queue of encoded records; a record
//!   leaves it only when its sink acknowledged it;
//! - `deliver`: reads batches from the spool, sends them through the sink,
//!   retries with back-off, splits, dead-letters, counts;
//! - [`sink`]: the sinks themselves (`file`, `azure`, `otlp`).
//!
//! This crate must not block its caller: a slow or dead sink fills only its
//! own spool.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod config;
pub mod deliver;
pub mod encode;
pub mod manager;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod sink;
pub mod spool;

pub use config::{ConfigError, Context, ExportConfig};
pub use manager::{ApplyReport, Exporters, Identity, Items};
pub use metrics::ExportMetrics;
