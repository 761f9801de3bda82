//! The collector's own metrics (`sightline_*`): datapath counters read from
//! the probes' per-CPU counters (not from events, so they are exact even
//! when events are lost or aggregated), ring-buffer losses per CPU,
//! conntrack and endpoint counts, the flow store and the pipeline.
//!
//! Updated once a second by the agent from absolute values; counters only
//! ever grow by the difference.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Count = Counter<u64, AtomicU64>;
type Level = Gauge<i64, std::sync::atomic::AtomicI64>;

/// Registered handles.
pub struct AgentMetrics {
    forwarded: Count,
    dropped: Count,
    policy_denied: Count,
    kernel_drops: Count,
    events_written: Count,
    events_lost: Family<Vec<(String, String)>, Count>,
    events_decoded: Count,
    conntrack_entries: Level,
    conntrack_created: Count,
    endpoints: Level,
    flows_stored: Level,
    flows_seen: Count,
    store_overwritten: Count,
    grpc_clients: Level,
    policy_verdicts: Family<Vec<(String, String)>, Count>,
    policy_drops: Family<Vec<(String, String)>, Count>,
    endpoint_verdicts: Family<Vec<(String, String)>, Count>,
    last: Mutex<Last>,
}

#[derive(Default)]
struct Last {
    forwarded: u64,
    dropped: u64,
    policy_denied: u64,
    kernel_drops: u64,
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
    pub forwarded: u64,
    pub dropped: u64,
    pub policy_denied: u64,
    pub kernel_drops: u64,
    pub events_written: u64,
    pub events_lost_per_cpu: Vec<u64>,
    pub events_decoded: u64,
    pub ct_entries: u64,
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
            forwarded: Count::default(),
            dropped: Count::default(),
            policy_denied: Count::default(),
            kernel_drops: Count::default(),
            events_written: Count::default(),
            events_lost: Family::default(),
            events_decoded: Count::default(),
            conntrack_entries: Level::default(),
            conntrack_created: Count::default(),
            endpoints: Level::default(),
            flows_stored: Level::default(),
            flows_seen: Count::default(),
            store_overwritten: Count::default(),
            grpc_clients: Level::default(),
            policy_verdicts: Family::default(),
            policy_drops: Family::default(),
            endpoint_verdicts: Family::default(),
            last: Mutex::new(Last::default()),
        };
        r.register("datapath_forwarded_packets", "Packets the datapath forwarded (kernel counters)", m.forwarded.clone());
        r.register("datapath_dropped_packets", "Packets the datapath dropped, any reason (kernel counters)", m.dropped.clone());
        r.register("datapath_policy_denied_packets", "Packets dropped because NetworkPolicy denied them (kernel counters)", m.policy_denied.clone());
        r.register("datapath_kernel_drops", "Packets the kernel dropped in the lab's namespaces (kfree_skb)", m.kernel_drops.clone());
        r.register("ringbuf_events_written", "Events the probes wrote to the ring buffer", m.events_written.clone());
        r.register("ringbuf_events_lost", "Events the probes could not write (ring buffer full), per CPU", m.events_lost.clone());
        r.register("pipeline_events_decoded", "Events the collector decoded into flows", m.events_decoded.clone());
        r.register("conntrack_entries", "Connections in the conntrack map", m.conntrack_entries.clone());
        r.register("conntrack_created", "Connections the datapath created", m.conntrack_created.clone());
        r.register("endpoints", "Endpoints (pods) on this node", m.endpoints.clone());
        r.register("flow_store_flows", "Flows in the store", m.flows_stored.clone());
        r.register("flow_store_seen_flows", "Flows pushed into the store", m.flows_seen.clone());
        r.register("flow_store_overwritten_flows", "Flows readers found overwritten before they read them", m.store_overwritten.clone());
        r.register("grpc_flow_clients", "GetFlows streams being served", m.grpc_clients.clone());
        r.register(
            "policy_verdicts",
            "New connections decided by NetworkPolicy, per policy (allowed: the policies that allowed it; denied/audit: the policies selecting the endpoint)",
            m.policy_verdicts.clone(),
        );
        r.register("policy_dropped_packets", "Packets dropped by NetworkPolicy, per policy selecting the endpoint", m.policy_drops.clone());
        r.register("endpoint_policy_verdicts", "New connections decided by NetworkPolicy, per endpoint", m.endpoint_verdicts.clone());
        m
    }

    /// Per-policy and per-endpoint accounting of one flow (policy verdicts
    /// and policy drops only; other flows cost a comparison).
    pub fn observe_flow(&self, flow: &crate::flow::Flow) {
        const POLICY_VERDICT: u8 = 5;
        const DROP: u8 = 1;
        const POLICY_DENIED: u16 = 133;
        let is_verdict = flow.event_type == POLICY_VERDICT;
        let is_policy_drop = flow.event_type == DROP && flow.drop_reason == POLICY_DENIED;
        if !is_verdict && !is_policy_drop {
            return;
        }
        let direction = match flow.traffic_direction {
            1 => "ingress",
            2 => "egress",
            _ => "unknown",
        };
        // The endpoint whose policy decided: the destination for ingress,
        // the source for egress.
        let endpoint = if direction == "ingress" { &flow.destination } else { &flow.source };
        let endpoint = endpoint.pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)).unwrap_or_default();
        let split = |name: &str| {
            let (ns, n) = name.split_once('/').unwrap_or(("", name));
            (ns.to_owned(), n.to_owned())
        };
        if is_policy_drop {
            for p in flow.denied_by.iter().flat_map(|d| d.iter()) {
                let (ns, n) = split(p);
                self.policy_drops
                    .get_or_create(&vec![("policy".into(), n), ("namespace".into(), ns), ("direction".into(), direction.into())])
                    .inc();
            }
            return;
        }
        let action = match flow.verdict {
            1 => "allowed",
            2 => "denied",
            4 => "audit",
            _ => "unknown",
        };
        let matched = match flow.policy_match_type {
            1 => "l3-only",
            2 => "l3-l4",
            3 => "l4-only",
            4 => "all",
            _ => "none",
        };
        let names = if action == "allowed" { &flow.allowed_by } else { &flow.denied_by };
        for p in names.iter().flat_map(|d| d.iter()) {
            let (ns, n) = split(p);
            self.policy_verdicts
                .get_or_create(&vec![
                    ("policy".into(), n),
                    ("namespace".into(), ns),
                    ("direction".into(), direction.into()),
                    ("match".into(), matched.into()),
                    ("action".into(), action.into()),
                ])
                .inc();
        }
        if !endpoint.is_empty() {
            self.endpoint_verdicts
                .get_or_create(&vec![("endpoint".into(), endpoint), ("direction".into(), direction.into()), ("action".into(), action.into())])
                .inc();
        }
    }

    /// Brings every metric to `reading`.
    pub fn update(&self, reading: &Reading) {
        let mut last = self.last.lock().expect("agent metrics");
        let grow = |c: &Count, now: u64, prev: &mut u64| {
            c.inc_by(now.saturating_sub(*prev));
            *prev = (*prev).max(now);
        };
        grow(&self.forwarded, reading.forwarded, &mut last.forwarded);
        grow(&self.dropped, reading.dropped, &mut last.dropped);
        grow(&self.policy_denied, reading.policy_denied, &mut last.policy_denied);
        grow(&self.kernel_drops, reading.kernel_drops, &mut last.kernel_drops);
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
        let level = |g: &Level, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        level(&self.conntrack_entries, reading.ct_entries);
        level(&self.endpoints, reading.endpoints);
        level(&self.flows_stored, reading.flows_stored);
        level(&self.grpc_clients, reading.grpc_clients);
    }
}
