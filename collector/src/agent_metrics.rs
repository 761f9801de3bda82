//! The collector's own metrics (`sightline_*`): datapath counters read from
//! the probes' per-CPU counters (not from events, so they are exact even
//! when events are lost or aggregated), ring-buffer losses per CPU,
//! conntrack and endpoint counts, the flow store and the pipeline.
//!
//! Updated once a second by the agent from absolute values; counters only
//! ever grow by the difference.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use std::ops::Deref;

use sightline_abi as abi;
use sightline_abi::{TrafficCount, TrafficKey};

use crate::flow::Flow;
use crate::loader::MapFill;
use crate::metrics::names::{
    self, DROP_POLICY_DENIED as POLICY_DENIED, MESSAGE_DROP as DROP, MESSAGE_POLICY_VERDICT as POLICY_VERDICT,
};
use crate::metrics::tally::{self, Keep, Tally, Target, address};

type Count = Counter<u64, AtomicU64>;
type Labels = Vec<(String, String)>;
type Level = Gauge<i64, std::sync::atomic::AtomicI64>;

/// Registered handles.
pub struct AgentMetrics {
    forwarded: Family<Labels, Count>,
    forwarded_bytes: Family<Labels, Count>,
    dropped: Family<Labels, Count>,
    dropped_bytes: Family<Labels, Count>,
    map_entries: Family<Labels, Level>,
    map_capacity: Family<Labels, Level>,
    identities: Level,
    policy_denied: Count,
    kernel_drops: Family<Labels, Count>,
    kernel_dropped_bytes: Family<Labels, Count>,
    events_written: Count,
    events_lost: Family<Labels, Count>,
    events_decoded: Count,
    conntrack_entries: Level,
    conntrack_created: Count,
    gc_deleted: Count,
    gc_seconds: Histogram,
    endpoints: Level,
    flows_stored: Level,
    flows_seen: Count,
    store_overwritten: Count,
    grpc_clients: Level,
    batch_seconds: Histogram,
    batch_events: Histogram,
    delay_seconds: Histogram,
    policy: Arc<PolicySeries>,
    last: Mutex<Last>,
}

#[derive(Default)]
struct Last {
    traffic: std::collections::HashMap<TrafficKey, TrafficCount>,
    policy_denied: u64,
    kernel_drops: std::collections::HashMap<String, TrafficCount>,
    written: u64,
    decoded: u64,
    ct_created: u64,
    flows_seen: u64,
    overwritten: u64,
    lost: Vec<u64>,
}

/// Absolute values read by the agent.
#[derive(Default)]
pub struct Reading {
    /// Packets and bytes forwarded and dropped per (reason, direction),
    /// from the probes' `TRAFFIC` map.
    pub traffic: Vec<(TrafficKey, TrafficCount)>,
    /// How full the maps are; empty when not read this time (walking the
    /// maps costs a system call per entry, so it is done less often).
    pub map_fill: Vec<MapFill>,
    pub identities: u64,
    pub policy_denied: u64,
    /// Packets and bytes the kernel dropped, by kernel drop reason name.
    pub kernel_drops: Vec<(String, TrafficCount)>,
    pub events_written: u64,
    pub events_lost_per_cpu: Vec<u64>,
    pub events_decoded: u64,
    /// `None` when not read this time (it comes with `map_fill`).
    pub ct_entries: Option<u64>,
    pub ct_created: u64,
    pub endpoints: u64,
    pub flows_stored: u64,
    pub flows_seen: u64,
    pub store_overwritten: u64,
    pub grpc_clients: u64,
}

impl AgentMetrics {
    /// Registers every metric under the `sightline_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("sightline");
        let m = Self {
            forwarded: Family::default(),
            forwarded_bytes: Family::default(),
            dropped: Family::default(),
            dropped_bytes: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            identities: Level::default(),
            policy_denied: Count::default(),
            kernel_drops: Family::default(),
            kernel_dropped_bytes: Family::default(),
            events_written: Count::default(),
            events_lost: Family::default(),
            events_decoded: Count::default(),
            conntrack_entries: Level::default(),
            conntrack_created: Count::default(),
            gc_deleted: Count::default(),
            // 100 µs … 6.6 s.
            gc_seconds: Histogram::new(exponential_buckets(1e-4, 4.0, 9)),
            endpoints: Level::default(),
            flows_stored: Level::default(),
            flows_seen: Count::default(),
            store_overwritten: Count::default(),
            grpc_clients: Level::default(),
            // 10 µs … 2.6 s.
            batch_seconds: Histogram::new(exponential_buckets(1e-5, 4.0, 10)),
            // 1 … 65 536 events.
            batch_events: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            // 100 µs … 5.9 s (the probes hold events back up to 10 ms).
            delay_seconds: Histogram::new(exponential_buckets(1e-4, 3.0, 11)),
            policy: Arc::new(PolicySeries::default()),
            last: Mutex::new(Last::default()),
        };
        r.register("datapath_forwarded_packets", "Packets the datapath forwarded, by direction (kernel counters)", m.forwarded.clone());
        r.register_with_unit(
            "datapath_forwarded",
            "Bytes the datapath forwarded, by direction (kernel counters)",
            prometheus_client::registry::Unit::Bytes,
            m.forwarded_bytes.clone(),
        );
        r.register("datapath_dropped_packets", "Packets the datapath dropped, by reason and direction (kernel counters)", m.dropped.clone());
        r.register_with_unit(
            "datapath_dropped",
            "Bytes the datapath dropped, by reason and direction (kernel counters)",
            prometheus_client::registry::Unit::Bytes,
            m.dropped_bytes.clone(),
        );
        r.register("bpf_map_entries", "Entries in each eBPF map that can fill up", m.map_entries.clone());
        r.register("bpf_map_capacity", "Maximum entries of each eBPF map that can fill up", m.map_capacity.clone());
        r.register("identities", "Security identities known to this node", m.identities.clone());
        r.register("datapath_policy_denied_packets", "Packets dropped because NetworkPolicy denied them (kernel counters)", m.policy_denied.clone());
        r.register("datapath_kernel_drops", "Packets the kernel dropped in the lab's namespaces (kfree_skb), by kernel drop reason", m.kernel_drops.clone());
        r.register_with_unit(
            "datapath_kernel_dropped",
            "Bytes the kernel dropped in the lab's namespaces (kfree_skb), by kernel drop reason",
            prometheus_client::registry::Unit::Bytes,
            m.kernel_dropped_bytes.clone(),
        );
        r.register("ringbuf_events_written", "Events the probes wrote to the ring buffer", m.events_written.clone());
        r.register("ringbuf_events_lost", "Events the probes could not write (ring buffer full), per CPU", m.events_lost.clone());
        r.register("pipeline_events_decoded", "Events the collector decoded into flows", m.events_decoded.clone());
        r.register("conntrack_entries", "Connections in the conntrack map", m.conntrack_entries.clone());
        r.register("conntrack_created", "Connections the datapath created", m.conntrack_created.clone());
        r.register("conntrack_gc_deleted", "Expired connections garbage collection deleted", m.gc_deleted.clone());
        r.register_with_unit(
            "conntrack_gc_duration",
            "Time one conntrack garbage collection took",
            prometheus_client::registry::Unit::Seconds,
            m.gc_seconds.clone(),
        );
        r.register("endpoints", "Endpoints (pods) on this node", m.endpoints.clone());
        r.register("flow_store_flows", "Flows in the store", m.flows_stored.clone());
        r.register("flow_store_seen_flows", "Flows pushed into the store", m.flows_seen.clone());
        r.register("flow_store_overwritten_flows", "Flows readers found overwritten before they read them", m.store_overwritten.clone());
        r.register("grpc_flow_clients", "GetFlows streams being served", m.grpc_clients.clone());
        r.register_with_unit(
            "pipeline_batch_duration",
            "Time to decode, enrich, count and store one drain of the ring buffer",
            prometheus_client::registry::Unit::Seconds,
            m.batch_seconds.clone(),
        );
        r.register("pipeline_batch_events", "Events per drain of the ring buffer", m.batch_events.clone());
        r.register_with_unit(
            "pipeline_delay",
            "Age of the oldest event of a drain when its flow reached the store (datapath to store)",
            prometheus_client::registry::Unit::Seconds,
            m.delay_seconds.clone(),
        );
        r.register(
            "policy_verdicts",
            "New connections decided by NetworkPolicy, per policy and endpoint (allowed: the policies that allowed it; denied/audit: the policies selecting the endpoint)",
            m.policy.verdicts.clone(),
        );
        r.register("policy_dropped_packets", "Packets dropped by NetworkPolicy, per policy selecting the endpoint, and endpoint", m.policy.drops.clone());
        r.register("endpoint_policy_verdicts", "New connections decided by NetworkPolicy, per endpoint", m.policy.endpoints.clone());
        m
    }

    /// The per-policy and per-endpoint accounting, for the pipeline thread
    /// that owns it.
    #[must_use]
    pub fn policy_recorder(&self) -> PolicyRecorder {
        PolicyRecorder {
            tally: Tally::new(tally::DEFAULT_LIMIT),
            generation: self.policy.generation.load(Ordering::Acquire),
            series: Arc::clone(&self.policy),
        }
    }

    /// Caps each policy accounting family at `cap` series; observations
    /// that would create more count in `refused(metric)` instead (see
    /// [`crate::metrics::Metrics::series_limit`]). Once; later calls do
    /// nothing.
    pub fn limit_policy_series(&self, cap: usize, refused: impl Fn(&'static str) -> Count) {
        let _ = self.policy.limit.set(SeriesLimit { cap, refused: POLICY_METRICS.map(refused) });
    }

    /// Removes the policy accounting series that name the endpoint
    /// `namespace/pod`. Returns how many.
    pub fn delete_pod(&self, namespace: &str, pod: &str) -> usize {
        self.policy.delete_endpoint(&format!("{namespace}/{pod}"))
    }

    /// [`delete_pod`](Self::delete_pod) as a hook for
    /// [`crate::metrics::Metrics::on_pod_deletion`], so that a deleted
    /// pod's series go after the same grace period as its Hubble series.
    #[must_use]
    pub fn pod_deletion_hook(&self) -> crate::metrics::PodHook {
        let policy = Arc::clone(&self.policy);
        Box::new(move |namespace, pod| policy.delete_endpoint(&format!("{namespace}/{pod}")))
    }

    /// One drain of the ring buffer: how many events, how long they took
    /// from decoding to the store, and how old the oldest of them was when
    /// it got there (the datapath-to-store delay).
    pub fn observe_batch(&self, events: u64, took: Duration, oldest_delay: Duration) {
        if events == 0 {
            return;
        }
        self.batch_seconds.observe(took.as_secs_f64());
        self.batch_events.observe(events as f64);
        self.delay_seconds.observe(oldest_delay.as_secs_f64());
    }

    /// One conntrack garbage collection: what it deleted and how long it took.
    pub fn observe_gc(&self, deleted: usize, took: Duration) {
        self.gc_deleted.inc_by(deleted as u64);
        self.gc_seconds.observe(took.as_secs_f64());
    }

    /// Brings every metric to `reading`.
    pub fn update(&self, reading: &Reading) {
        let mut last = self.last.lock().expect("agent metrics");
        let grow = |c: &Count, now: u64, prev: &mut u64| {
            c.inc_by(now.saturating_sub(*prev));
            *prev = (*prev).max(now);
        };
        for (key, now) in &reading.traffic {
            let prev = last.traffic.entry(*key).or_default();
            let direction = direction_name(key.direction).to_owned();
            let (packets, bytes) = if key.reason == abi::REASON_FORWARDED {
                let labels = vec![("direction".to_owned(), direction)];
                (self.forwarded.get_or_create(&labels).clone(), self.forwarded_bytes.get_or_create(&labels).clone())
            } else {
                let labels = vec![("reason".to_owned(), drop_reason_name(key.reason)), ("direction".to_owned(), direction)];
                (self.dropped.get_or_create(&labels).clone(), self.dropped_bytes.get_or_create(&labels).clone())
            };
            grow(&packets, now.packets, &mut prev.packets);
            grow(&bytes, now.bytes, &mut prev.bytes);
        }
        for fill in &reading.map_fill {
            let labels = vec![("map".to_owned(), fill.map.to_owned())];
            level_of(self.map_entries.get_or_create(&labels).deref(), fill.entries);
            level_of(self.map_capacity.get_or_create(&labels).deref(), u64::from(fill.capacity));
        }
        grow(&self.policy_denied, reading.policy_denied, &mut last.policy_denied);
        for (reason, now) in &reading.kernel_drops {
            let prev = last.kernel_drops.entry(reason.clone()).or_default();
            let labels = vec![("reason".to_owned(), reason.clone())];
            grow(&self.kernel_drops.get_or_create(&labels), now.packets, &mut prev.packets);
            grow(&self.kernel_dropped_bytes.get_or_create(&labels), now.bytes, &mut prev.bytes);
        }
        grow(&self.events_written, reading.events_written, &mut last.written);
        grow(&self.events_decoded, reading.events_decoded, &mut last.decoded);
        grow(&self.conntrack_created, reading.ct_created, &mut last.ct_created);
        grow(&self.flows_seen, reading.flows_seen, &mut last.flows_seen);
        grow(&self.store_overwritten, reading.store_overwritten, &mut last.overwritten);
        if last.lost.len() < reading.events_lost_per_cpu.len() {
            last.lost.resize(reading.events_lost_per_cpu.len(), 0);
        }
        for (cpu, (&now, prev)) in reading.events_lost_per_cpu.iter().zip(last.lost.iter_mut()).enumerate() {
            let c = self.events_lost.get_or_create(&vec![("cpu".to_owned(), cpu.to_string())]);
            c.inc_by(now.saturating_sub(*prev));
            *prev = (*prev).max(now);
        }
        let level = level_of;
        if let Some(entries) = reading.ct_entries {
            level(&self.conntrack_entries, entries);
        }
        level(&self.identities, reading.identities);
        level(&self.endpoints, reading.endpoints);
        level(&self.flows_stored, reading.flows_stored);
        level(&self.grpc_clients, reading.grpc_clients);
    }
}

fn level_of(gauge: &Level, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}

/// `ingress`, `egress`, or `unknown` (the datapath's and `flow.TrafficDirection`
/// numbering agree: 1 ingress, 2 egress).
fn direction_name(direction: u8) -> &'static str {
    names::TRAFFIC_DIRECTIONS.get(usize::from(direction)).copied().unwrap_or("unknown")
}

/// Hubble's name of a datapath drop reason (its number when unnamed).
fn drop_reason_name(reason: u8) -> String {
    names::drop_reason(u16::from(reason)).map_or_else(|| reason.to_string(), str::to_owned)
}

#[cfg(test)]
#[test]
fn every_datapath_drop_reason_has_a_hubble_name() {
    for code in [
        abi::DROP_INVALID_SOURCE_IP,
        abi::DROP_POLICY_DENIED,
        abi::DROP_INVALID_PACKET,
        abi::DROP_CT_INVALID_HEADER,
        abi::DROP_UNKNOWN_L4_PROTOCOL,
        abi::DROP_UNKNOWN_L3_TARGET,
        abi::DROP_CT_MAP_INSERTION_FAILED,
        abi::DROP_FRAG_NOT_SUPPORTED,
    ] {
        assert!(names::drop_reason(u16::from(code)).is_some(), "drop reason {code}");
    }
    assert_eq!(drop_reason_name(abi::DROP_POLICY_DENIED), "POLICY_DENIED");
}

/// `namespace/name` → (`namespace`, `name`).
fn split(name: &str) -> (&str, &str) {
    name.split_once('/').unwrap_or(("", name))
}

/// Labels of one policy accounting series.
fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Everything of a flow the policy accounting reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct PolicySig {
    /// Event type, verdict, direction, match type, policy-denied drop.
    fields: u64,
    /// Address of the deciding endpoint's pod metadata.
    endpoint: usize,
    /// Address of the policy name list counted.
    names: usize,
}

/// Counts policy verdicts and policy drops per policy and per endpoint on
/// the pipeline thread ([`tally`]): the label strings of a kind of verdict
/// are built once. Counts reach the metrics on [`flush`](Self::flush).
pub struct PolicyRecorder {
    tally: Tally<PolicySig>,
    series: Arc<PolicySeries>,
    /// `series.generation` when the tally's targets were resolved.
    generation: u64,
}

/// Which policy accounting family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Verdicts,
    Drops,
    Endpoints,
}

/// The policy accounting's families, and which of their series name each
/// endpoint, so that a deleted pod's series can be removed.
#[derive(Default)]
struct PolicySeries {
    verdicts: Family<Labels, Count>,
    drops: Family<Labels, Count>,
    endpoints: Family<Labels, Count>,
    index: Mutex<SeriesIndex>,
    /// Bumped when series are removed: recorders then resolve again.
    generation: AtomicU64,
    /// The cap on series per family and where refusals are counted; none
    /// until [`AgentMetrics::limit_policy_series`].
    limit: std::sync::OnceLock<SeriesLimit>,
}

/// Every policy accounting series, by the endpoint it names ("" for none).
#[derive(Default)]
struct SeriesIndex {
    by_endpoint: std::collections::HashMap<String, std::collections::HashSet<(Kind, Labels)>>,
    /// Series per family, indexed by `Kind as usize`.
    count: [usize; 3],
}

struct SeriesLimit {
    cap: usize,
    /// Refusal counters, indexed by `Kind as usize`.
    refused: [Count; 3],
}

/// Full names of the policy accounting families, indexed by `Kind as usize`
/// (the `metric` label of their refusals).
pub const POLICY_METRICS: [&str; 3] = [
    "sightline_policy_verdicts_total",
    "sightline_policy_dropped_packets_total",
    "sightline_endpoint_policy_verdicts_total",
];

impl PolicySeries {
    fn family(&self, kind: Kind) -> &Family<Labels, Count> {
        match kind {
            Kind::Verdicts => &self.verdicts,
            Kind::Drops => &self.drops,
            Kind::Endpoints => &self.endpoints,
        }
    }

    /// The series' counter, remembered under its endpoint; the refusal
    /// counter when the family is at its cap.
    fn counter(&self, kind: Kind, endpoint: &str, labels: Labels) -> Target {
        let mut index = self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let index = &mut *index;
        let series = index.by_endpoint.entry(endpoint.to_owned()).or_default();
        let key = (kind, labels);
        if !series.contains(&key) {
            let count = &mut index.count[kind as usize];
            if let Some(limit) = self.limit.get().filter(|l| *count >= l.cap) {
                return Target::Counter(limit.refused[kind as usize].clone());
            }
            *count += 1;
            series.insert(key.clone());
        }
        Target::Counter(self.family(kind).get_or_create(&key.1).clone())
    }

    fn delete_endpoint(&self, endpoint: &str) -> usize {
        let mut index = self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(series) = index.by_endpoint.remove(endpoint) else {
            return 0;
        };
        for (kind, labels) in &series {
            self.family(*kind).remove(labels);
            index.count[*kind as usize] -= 1;
        }
        drop(index);
        self.generation.fetch_add(1, Ordering::AcqRel);
        series.len()
    }
}

impl std::fmt::Debug for PolicyRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyRecorder").field("signatures", &self.tally.len()).finish_non_exhaustive()
    }
}

const INGRESS: u8 = abi::DIR_INGRESS;
const ALLOWED: u8 = names::VERDICT_FORWARDED;

impl PolicyRecorder {
    /// Counts a policy verdict or policy drop; other flows cost a
    /// comparison.
    #[inline]
    pub fn record(&mut self, flow: &Flow) {
        let is_verdict = flow.event_type == POLICY_VERDICT;
        let is_policy_drop = flow.event_type == DROP && flow.drop_reason == POLICY_DENIED;
        if !is_verdict && !is_policy_drop {
            return;
        }
        let generation = self.series.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.tally.clear();
            self.generation = generation;
        }
        // Only what `resolve` reads: the endpoint that decided (the
        // destination for ingress, the source for egress) and the policy
        // names it counts.
        let endpoint = if flow.traffic_direction == INGRESS { &flow.destination } else { &flow.source };
        let names = if is_verdict && flow.verdict == ALLOWED { &flow.allowed_by } else { &flow.denied_by };
        let sig = PolicySig {
            fields: u64::from_le_bytes([
                flow.event_type,
                flow.verdict,
                flow.traffic_direction,
                flow.policy_match_type,
                u8::from(is_policy_drop),
                0,
                0,
                0,
            ]),
            endpoint: address(endpoint.pod.as_ref()),
            names: address(names.as_ref()),
        };
        if !self.tally.count(&sig) {
            let targets = self.resolve(flow, is_policy_drop);
            let keep = endpoint
                .pod
                .iter()
                .map(|p| Keep::Pod(Arc::clone(p)))
                .chain(names.iter().map(|n| Keep::Strings(Arc::clone(n))))
                .collect();
            self.tally.insert(sig, targets, keep);
        }
    }

    /// Adds the pending counts to the metrics.
    pub fn flush(&mut self) {
        self.tally.flush();
    }

    /// The series a kind of verdict counts in.
    fn resolve(&self, flow: &Flow, is_policy_drop: bool) -> Vec<Target> {
        let direction = direction_name(flow.traffic_direction);
        // The endpoint whose policy decided: the destination for ingress,
        // the source for egress.
        let side = if direction == "ingress" { &flow.destination } else { &flow.source };
        let endpoint = side.pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)).unwrap_or_default();
        let series = &self.series;
        let mut targets = Vec::new();
        if is_policy_drop {
            for p in flow.denied_by.iter().flat_map(|d| d.iter()) {
                let (ns, n) = split(p);
                let labels = labels(&[("policy", n), ("namespace", ns), ("direction", direction), ("endpoint", &endpoint)]);
                targets.push(series.counter(Kind::Drops, &endpoint, labels));
            }
            return targets;
        }
        let action = match flow.verdict {
            ALLOWED => "allowed",
            2 => "denied",
            4 => "audit",
            _ => "unknown",
        };
        let matched = names::POLICY_MATCHES.get(usize::from(flow.policy_match_type)).copied().unwrap_or("none");
        let names = if action == "allowed" { &flow.allowed_by } else { &flow.denied_by };
        for p in names.iter().flat_map(|d| d.iter()) {
            let (ns, n) = split(p);
            let labels = labels(&[
                ("policy", n),
                ("namespace", ns),
                ("direction", direction),
                ("match", matched),
                ("action", action),
                ("endpoint", &endpoint),
            ]);
            targets.push(series.counter(Kind::Verdicts, &endpoint, labels));
        }
        if !endpoint.is_empty() {
            let labels = labels(&[("endpoint", &endpoint), ("direction", direction), ("action", action)]);
            targets.push(series.counter(Kind::Endpoints, &endpoint, labels));
        }
        targets
    }
}

impl Drop for PolicyRecorder {
    fn drop(&mut self) {
        self.tally.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::PodMeta;
    use crate::flow::Side;
    use sightline_flow::testing::flow;

    fn side(pod: Option<Arc<PodMeta>>) -> Side {
        Side { pod, ..sightline_flow::testing::side([10, 0, 0, 1], 80) }
    }

    fn sorted(registry: &Registry) -> Vec<String> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        let mut lines: Vec<String> = out.lines().filter(|l| l.starts_with("sightline_policy") || l.starts_with("sightline_endpoint")).map(str::to_owned).collect();
        lines.sort();
        lines
    }

    #[test]
    fn garbage_collections_are_counted_with_what_they_deleted_and_their_time() {
        let mut registry = Registry::default();
        let m = AgentMetrics::register(&mut registry);
        m.observe_gc(3, Duration::from_millis(2));
        m.observe_gc(0, Duration::from_micros(50));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        let value = |name: &str| out.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' '))).map(str::to_owned);
        assert_eq!(value("sightline_conntrack_gc_deleted_total").as_deref(), Some("3"), "{out}");
        assert_eq!(value("sightline_conntrack_gc_duration_seconds_count").as_deref(), Some("2"), "{out}");
        let sum: f64 = value("sightline_conntrack_gc_duration_seconds_sum").unwrap().parse().unwrap();
        assert!((sum - 0.00205).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn a_deleted_pods_policy_series_go_and_come_back_when_it_does() {
        let mut registry = Registry::default();
        let m = AgentMetrics::register(&mut registry);
        let web = Arc::new(PodMeta { namespace: "x".into(), name: "web".into(), ..PodMeta::default() });
        let db = Arc::new(PodMeta { namespace: "x".into(), name: "db".into(), ..PodMeta::default() });
        let denied: Arc<[String]> = Arc::from(vec!["x/deny-all".to_owned()]);
        let flow = |pod: &Arc<PodMeta>, event_type: u8| Flow {
            event_type,
            verdict: 2,
            drop_reason: if event_type == DROP { POLICY_DENIED } else { 0 },
            traffic_direction: INGRESS,
            destination: side(Some(Arc::clone(pod))),
            denied_by: Some(Arc::clone(&denied)),
            ..flow()
        };
        let mut recorder = m.policy_recorder();
        for pod in [&web, &db] {
            recorder.record(&flow(pod, POLICY_VERDICT));
            recorder.record(&flow(pod, DROP));
        }
        recorder.flush();
        let lines = |r: &Registry| sorted(r).into_iter().filter(|l| !l.starts_with('#')).collect::<Vec<_>>();
        let before = lines(&registry);
        assert_eq!(before.iter().filter(|l| l.contains("endpoint=\"x/web\"")).count(), 3, "{before:#?}");
        assert!(before.iter().any(|l| l.starts_with("sightline_policy_dropped_packets_total{") && l.contains("endpoint=\"x/web\"")));
        assert_eq!(m.delete_pod("x", "web"), 3);
        assert_eq!(m.delete_pod("x", "web"), 0);
        let after = lines(&registry);
        assert!(after.iter().all(|l| !l.contains("x/web")), "{after:#?}");
        assert_eq!(after.iter().filter(|l| l.contains("endpoint=\"x/db\"")).count(), 3);
        // The recorder forgets its handles: the pod's next verdict counts anew.
        recorder.record(&flow(&web, POLICY_VERDICT));
        recorder.flush();
        let again = lines(&registry);
        assert!(again.iter().any(|l| l.starts_with("sightline_endpoint_policy_verdicts_total{") && l.contains("x/web") && l.ends_with(" 1")), "{again:#?}");
    }

    #[test]
    fn policy_series_are_capped_and_refusals_counted() {
        let mut registry = Registry::default();
        let m = AgentMetrics::register(&mut registry);
        let refused: Vec<Count> = (0..3).map(|_| Count::default()).collect();
        m.limit_policy_series(2, |metric| refused[POLICY_METRICS.iter().position(|n| *n == metric).unwrap()].clone());
        let denied: Arc<[String]> = Arc::from(vec!["x/deny-all".to_owned()]);
        let pods: Vec<Arc<PodMeta>> = (0..4)
            .map(|i| Arc::new(PodMeta { namespace: "x".into(), name: format!("p{i}"), ..PodMeta::default() }))
            .collect();
        let mut recorder = m.policy_recorder();
        for _ in 0..2 {
            for pod in &pods {
                recorder.record(&Flow {
                    event_type: POLICY_VERDICT,
                    verdict: 2,
                    traffic_direction: INGRESS,
                    destination: side(Some(Arc::clone(pod))),
                    denied_by: Some(Arc::clone(&denied)),
                    ..flow()
                });
            }
        }
        recorder.flush();
        let lines = sorted(&registry);
        let series = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(series("sightline_policy_verdicts_total{"), 2, "{lines:#?}");
        assert_eq!(series("sightline_endpoint_policy_verdicts_total{"), 2);
        // Two pods beyond the cap, two flows each, in both families.
        assert_eq!(refused[0].get(), 4);
        assert_eq!(refused[2].get(), 4);
        assert_eq!(refused[1].get(), 0);
        // Deleting a pod's series makes room.
        assert_eq!(m.delete_pod("x", "p0"), 2);
        recorder.record(&Flow {
            event_type: POLICY_VERDICT,
            verdict: 2,
            traffic_direction: INGRESS,
            destination: side(Some(Arc::clone(&pods[3]))),
            denied_by: Some(Arc::clone(&denied)),
            ..flow()
        });
        recorder.flush();
        assert!(sorted(&registry).iter().any(|l| l.contains("endpoint=\"x/p3\"")));
    }

    /// Every field the accounting reads, varied one at a time around a few
    /// base flows: the recorder (signatures, pending counts) must count
    /// exactly what resolving every flow counts.
    #[test]
    fn the_policy_recorder_counts_exactly_what_resolving_every_flow_counts() {
        let pods: Vec<Arc<PodMeta>> = (0..4)
            .map(|i| Arc::new(PodMeta { namespace: format!("ns{i}"), name: format!("p{i}"), ..PodMeta::default() }))
            .collect();
        let sets: Vec<Arc<[String]>> = vec![
            Arc::from(vec!["ns0/allow-a".to_owned()]),
            Arc::from(vec!["ns1/allow-b".to_owned(), "ns0/allow-c".to_owned()]),
            Arc::from(vec!["deny-all".to_owned()]),
        ];
        let mut state = 0x1234_5678_9abc_def1_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut base: Vec<Flow> = Vec::new();
        let mut flows = Vec::new();
        for i in 0..6000 {
            let r = next();
            let mut f = if i < 12 {
                Flow { event_type: 5, traffic_direction: 1, policy_match_type: 2, ..flow() }
            } else {
                base[i % base.len()].clone()
            };
            let pod = || Some(Arc::clone(&pods[(r >> 8) as usize % pods.len()]));
            let set = || Some(Arc::clone(&sets[(r >> 16) as usize % sets.len()]));
            match if i < 12 { 99 } else { r % 10 } {
                0 => f.event_type = [1, 4, 5][(r >> 4) as usize % 3],
                1 => f.verdict = [1, 2, 4, 5][(r >> 4) as usize % 4],
                2 => f.drop_reason = [0, 133, 181][(r >> 4) as usize % 3],
                3 => f.traffic_direction = (r >> 4) as u8 % 3,
                4 => f.policy_match_type = (r >> 4) as u8 % 6,
                5 => f.source.pod = pod(),
                6 => f.destination.pod = pod(),
                7 => f.allowed_by = set(),
                8 => f.denied_by = set(),
                _ => {
                    f.source.pod = pod();
                    f.destination.pod = Some(Arc::clone(&pods[(r >> 24) as usize % pods.len()]));
                    f.allowed_by = set();
                    f.denied_by = Some(Arc::clone(&sets[(r >> 32) as usize % sets.len()]));
                    f.event_type = [1, 5][(r >> 40) as usize % 2];
                    f.drop_reason = if f.event_type == 1 { 133 } else { 0 };
                    f.verdict = [1, 2, 4][(r >> 44) as usize % 3];
                    f.traffic_direction = [1, 2][(r >> 48) as usize % 2];
                }
            }
            if i < 12 {
                base.push(f.clone());
            }
            flows.push(f);
        }
        let (mut cached_registry, mut reference_registry) = (Registry::default(), Registry::default());
        let (cached, reference) = (AgentMetrics::register(&mut cached_registry), AgentMetrics::register(&mut reference_registry));
        let mut recorder = cached.policy_recorder();
        let resolver = reference.policy_recorder();
        for (i, f) in flows.iter().enumerate() {
            recorder.record(f);
            if i % 500 == 0 {
                recorder.flush();
            }
            let is_verdict = f.event_type == POLICY_VERDICT;
            let is_drop = f.event_type == DROP && f.drop_reason == POLICY_DENIED;
            if is_verdict || is_drop {
                for target in resolver.resolve(f, is_drop) {
                    target.add(1);
                }
            }
        }
        drop(recorder);
        let (got, want) = (sorted(&cached_registry), sorted(&reference_registry));
        assert!(want.len() > 20, "{want:#?}");
        assert_eq!(got, want);
    }
}
