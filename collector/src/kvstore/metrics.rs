//! `sightline_kvstore_*`: what the collector published to and received from
//! the kvstore, how long an endpoint took to reach this node, errors, and
//! whether the per-endpoint path alone carries remote endpoints.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Count = Counter<u64, AtomicU64>;
type Level = Gauge<i64, AtomicI64>;

/// The kvstore metrics (cheap clones of shared series).
#[derive(Clone)]
pub struct KvstoreMetrics {
    pub slices_published: Count,
    pub slices_deleted: Count,
    pub endpoints_published: Count,
    pub bytes_published: Count,
    pub slices_received: Count,
    pub endpoints_received: Count,
    pub sync_latency: Histogram,
    pub errors: Family<Vec<(String, String)>, Count>,
    pub fallback: Level,
    pub remote_endpoints: Level,
    pub slices: Level,
}

impl Default for KvstoreMetrics {
    fn default() -> Self {
        Self {
            slices_published: Count::default(),
            slices_deleted: Count::default(),
            endpoints_published: Count::default(),
            bytes_published: Count::default(),
            slices_received: Count::default(),
            endpoints_received: Count::default(),
            // 1 ms … 65 s.
            sync_latency: Histogram::new(exponential_buckets(1e-3, 2.0, 17)),
            errors: Family::default(),
            fallback: Level::default(),
            remote_endpoints: Level::default(),
            slices: Level::default(),
        }
    }
}

/// The operations whose errors are counted.
pub const OPERATIONS: [&str; 6] = ["connect", "lease", "list", "watch", "put", "delete"];

impl KvstoreMetrics {
    /// Registers the series under `sightline_kvstore_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("sightline_kvstore");
        r.register("slices_published", "Endpoint slices this node wrote to the kvstore (created or updated)", m.slices_published.clone());
        r.register("slices_deleted", "Endpoint slices of this node deleted from the kvstore", m.slices_deleted.clone());
        r.register("endpoints_published", "Endpoints in the slices this node wrote", m.endpoints_published.clone());
        r.register_with_unit(
            "published",
            "Bytes of the slice values this node wrote",
            prometheus_client::registry::Unit::Bytes,
            m.bytes_published.clone(),
        );
        r.register("slices_received", "Endpoint slices of other nodes received (listed or watched, created or updated)", m.slices_received.clone());
        r.register("endpoints_received", "Endpoints of other nodes received new or changed in slices", m.endpoints_received.clone());
        r.register_with_unit(
            "sync_latency",
            "From an endpoint's creation (or change) on its node to its slice reaching this node",
            prometheus_client::registry::Unit::Seconds,
            m.sync_latency.clone(),
        );
        r.register("errors", "Failed kvstore operations, by operation (connect, lease, list, watch, put, delete)", m.errors.clone());
        r.register(
            "fallback",
            "1 while the kvstore is configured but not in sync (remote endpoints come from the per-endpoint path alone), else 0",
            m.fallback.clone(),
        );
        r.register("remote_endpoints", "Other nodes' endpoints in this node's ipcache that only the slices named", m.remote_endpoints.clone());
        r.register("slices", "Endpoint slices in the kvstore, as this node sees them (its own included)", m.slices.clone());
        for op in OPERATIONS {
            let _ = m.errors.get_or_create(&vec![("operation".to_owned(), op.to_owned())]);
        }
        m
    }

    /// Counts a failed operation.
    pub fn error(&self, operation: &str) {
        self.errors.get_or_create(&vec![("operation".to_owned(), operation.to_owned())]).inc();
    }
}
