//! The exporters' metrics (`sightline_export_*`, label `exporter`), as the
//! export contract names them:
//!
//! - `sightline_export_records_total{exporter,outcome}`: `sent` (the sink
//!   acknowledged them), `filtered` (left out by include/exclude, or past
//!   `end`), `dropped` (lost without being sent: the spool was full, or the
//!   exporter's queue overflowed), `rejected` (the sink refused them for
//!   good; dead-lettered);
//! - `sightline_export_requests_total{exporter,code}`: deliveries by the
//!   sink's answer (HTTP status, gRPC code, `write`, `error`);
//! - `sightline_export_retries_total{exporter}`: deliveries sent again;
//! - `sightline_export_spool_bytes{exporter}`, `sightline_export_spool_records{exporter}`:
//!   what waits in the spool (in flight included);
//! - `sightline_export_delay_seconds{exporter}`: flow time to
//!   acknowledgement, per record;
//!
//! and, for the configuration, `sightline_export_config_reloads_total{result}`
//! and `sightline_export_config_last_reload_successful`.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

type Count = Counter<u64, AtomicU64>;
type Level = Gauge<i64, AtomicI64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExporterLabel {
    exporter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    exporter: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    exporter: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// Delay buckets: 10 ms … about 40 min.
const DELAY_BUCKETS: [f64; 14] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 2400.0];

/// The registered families, shared by every exporter.
#[derive(Clone)]
pub struct ExportMetrics {
    records: Family<OutcomeLabels, Count>,
    requests: Family<CodeLabels, Count>,
    retries: Family<ExporterLabel, Count>,
    spool_bytes: Family<ExporterLabel, Level>,
    spool_records: Family<ExporterLabel, Level>,
    delay: Family<ExporterLabel, Histogram>,
    reloads: Family<ResultLabel, Count>,
    last_reload_ok: Level,
}

impl std::fmt::Debug for ExportMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportMetrics").finish_non_exhaustive()
    }
}

impl ExportMetrics {
    /// Registers the families under `sightline_export_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        let r = registry.sub_registry_with_prefix("sightline_export");
        r.register("records", "Export records by outcome: sent, filtered, dropped (lost before sending), rejected (dead-lettered)", m.records.clone());
        r.register("requests", "Deliveries to the sink, by the sink's answer", m.requests.clone());
        r.register("retries", "Deliveries sent again after a failure", m.retries.clone());
        r.register_with_unit("spool", "Bytes waiting in the exporter's spool", Unit::Bytes, m.spool_bytes.clone());
        r.register("spool_records", "Records waiting in the exporter's spool", m.spool_records.clone());
        r.register_with_unit("delay", "Time from a flow to the sink's acknowledgement of its record", Unit::Seconds, m.delay.clone());
        r.register("config_reloads", "Export configuration loads, by result", m.reloads.clone());
        r.register("config_last_reload_successful", "1 when the last export configuration load succeeded", m.last_reload_ok.clone());
        m
    }

    /// Families not exposed anywhere (tests, benchmarks).
    #[must_use]
    pub fn unregistered() -> Self {
        Self {
            records: Family::default(),
            requests: Family::default(),
            retries: Family::default(),
            spool_bytes: Family::default(),
            spool_records: Family::default(),
            delay: Family::new_with_constructor(|| Histogram::new(DELAY_BUCKETS)),
            reloads: Family::default(),
            last_reload_ok: Level::default(),
        }
    }

    /// The handles of one exporter.
    #[must_use]
    pub fn exporter(&self, name: &str) -> ExporterMetrics {
        let outcome = |o: &str| self.records.get_or_create(&OutcomeLabels { exporter: name.to_owned(), outcome: o.to_owned() }).clone();
        let label = ExporterLabel { exporter: name.to_owned() };
        ExporterMetrics {
            name: name.to_owned(),
            sent: outcome("sent"),
            filtered: outcome("filtered"),
            dropped: outcome("dropped"),
            rejected: outcome("rejected"),
            requests: self.requests.clone(),
            retries: self.retries.get_or_create(&label).clone(),
            spool_bytes: self.spool_bytes.get_or_create(&label).clone(),
            spool_records: self.spool_records.get_or_create(&label).clone(),
            delay: self.delay.get_or_create(&label).clone(),
        }
    }

    /// Forgets the series of an exporter that was removed.
    pub fn remove(&self, name: &str) {
        for o in ["sent", "filtered", "dropped", "rejected"] {
            self.records.remove(&OutcomeLabels { exporter: name.to_owned(), outcome: o.to_owned() });
        }
        let label = ExporterLabel { exporter: name.to_owned() };
        self.retries.remove(&label);
        self.spool_bytes.remove(&label);
        self.spool_records.remove(&label);
        self.delay.remove(&label);
    }

    /// Records the result of a configuration load.
    pub fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabel { result: if ok { "success" } else { "failure" }.to_owned() }).inc();
        self.last_reload_ok.set(i64::from(ok));
    }
}

/// One exporter's handles (labels resolved once).
#[derive(Clone)]
pub struct ExporterMetrics {
    name: String,
    pub sent: Count,
    pub filtered: Count,
    pub dropped: Count,
    pub rejected: Count,
    requests: Family<CodeLabels, Count>,
    pub retries: Count,
    pub spool_bytes: Level,
    pub spool_records: Level,
    pub delay: Histogram,
}

impl std::fmt::Debug for ExporterMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExporterMetrics").field("exporter", &self.name).finish_non_exhaustive()
    }
}

impl ExporterMetrics {
    /// Counts one delivery answered with `code`.
    pub fn request(&self, code: &str) {
        self.requests.get_or_create(&CodeLabels { exporter: self.name.clone(), code: code.to_owned() }).inc();
    }
}
