//! Flow-log aggregation, as Azure Container Networking Services aggregates
//! its flow logs: within each window, flows with equal verdict, reply flag,
//! drop reason, source and destination namespace, workload (or pod when
//! there is no workload), identity and cluster, destination port, L4
//! protocol, traffic direction, IP version and encryption, on the same node,
//! become one record that says how many flows it stands for (by direction);
//! its time is the window's end, and pod addresses, source ports and the
//! flow UUID are gone.
//!
//! Windows are aligned on the clock (a 30 s window ends at :00 and :30) and
//! are keyed by each flow's own time; a window is emitted once the clock
//! has passed its end by a grace period (flows reach the relay merged and
//! slightly late). A flow older than an emitted window opens that window
//! again and is emitted at the next tick, never dropped.
//!
//! This module must not encode or send: it only groups.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use prost_types::Timestamp;
use sightline_proto::flow::{self as pb, layer4::Protocol};

use crate::record::{Counts, unix_nanos};

/// Most groups one window may hold; beyond it the window is emitted early
/// (so a flood of distinct flows costs bounded memory, not lost flows).
pub const MAX_GROUPS: usize = 100_000;

/// One side of the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SideKey {
    namespace: String,
    /// The first workload's name, or the pod's name when it has none.
    workload: String,
    workload_kind: String,
    identity: u32,
    cluster: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    node: String,
    verdict: i32,
    reply: Option<bool>,
    drop_reason: i32,
    source: SideKey,
    destination: SideKey,
    /// 6, 17, 132, 1, 58; 0 when unknown.
    protocol: u8,
    destination_port: u32,
    direction: i32,
    ip_version: i32,
    encrypted: bool,
}

/// One emitted aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// The flow reduced to the key's fields.
    pub flow: pb::Flow,
    pub node_name: String,
    /// The window's end.
    pub time: Timestamp,
    pub counts: Counts,
}

/// Groups flows by window and key.
#[derive(Debug)]
pub struct Aggregator {
    window_ns: i64,
    grace_ns: i64,
    /// Window end (Unix ns) → groups.
    windows: BTreeMap<i64, HashMap<Key, Counts>>,
}

impl Aggregator {
    /// Windows of `window` (at least 1 s), emitted `grace` after they end.
    #[must_use]
    pub fn new(window: Duration, grace: Duration) -> Self {
        let window_ns = i64::try_from(window.as_nanos()).unwrap_or(i64::MAX).max(1_000_000_000);
        let grace_ns = i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX);
        Self { window_ns, grace_ns, windows: BTreeMap::new() }
    }

    /// Counts `flow` (seen on `node_name`); returns a window emitted early
    /// because it grew past [`MAX_GROUPS`].
    pub fn add(&mut self, flow: &pb::Flow, node_name: &str) -> Vec<Aggregate> {
        let time = flow.time.as_ref().map_or(0, unix_nanos);
        let end = time.div_euclid(self.window_ns).saturating_add(1).saturating_mul(self.window_ns);
        let key = key(flow, node_name);
        let groups = self.windows.entry(end).or_default();
        groups.entry(key).or_default().add(flow.traffic_direction, 1);
        if groups.len() >= MAX_GROUPS {
            let groups = self.windows.remove(&end).unwrap_or_default();
            return emit(end, groups);
        }
        Vec::new()
    }

    /// Every window whose end is `grace` or more before `now_ns`.
    pub fn due(&mut self, now_ns: i64) -> Vec<Aggregate> {
        let mut out = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            if entry.key().saturating_add(self.grace_ns) > now_ns {
                break;
            }
            let (end, groups) = entry.remove_entry();
            out.extend(emit(end, groups));
        }
        out
    }

    /// Every window, due or not (at shutdown).
    pub fn drain(&mut self) -> Vec<Aggregate> {
        std::mem::take(&mut self.windows).into_iter().flat_map(|(end, groups)| emit(end, groups)).collect()
    }

    /// The start (Unix ns) of the oldest window still open.
    #[must_use]
    pub fn oldest_start(&self) -> Option<i64> {
        self.windows.keys().next().map(|end| end - self.window_ns)
    }

    /// How many flows are waiting in open windows.
    #[must_use]
    pub fn pending(&self) -> u64 {
        self.windows.values().flat_map(HashMap::values).map(Counts::total).sum()
    }
}

fn emit(end: i64, groups: HashMap<Key, Counts>) -> Vec<Aggregate> {
    let time = Timestamp { seconds: end.div_euclid(1_000_000_000), nanos: end.rem_euclid(1_000_000_000) as i32 };
    let mut groups: Vec<(Key, Counts)> = groups.into_iter().collect();
    // Deterministic order (tests, diffs of exported files).
    groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    groups
        .into_iter()
        .map(|(key, counts)| Aggregate { flow: reduced(&key, time), node_name: key.node, time, counts })
        .collect()
}

fn side_key(e: Option<&pb::Endpoint>) -> SideKey {
    let Some(e) = e else {
        return SideKey { namespace: String::new(), workload: String::new(), workload_kind: String::new(), identity: 0, cluster: String::new() };
    };
    let (workload, workload_kind) = match e.workloads.first() {
        Some(w) => (w.name.clone(), w.kind.clone()),
        None => (e.pod_name.clone(), String::new()),
    };
    SideKey { namespace: e.namespace.clone(), workload, workload_kind, identity: e.identity, cluster: e.cluster_name.clone() }
}

fn key(flow: &pb::Flow, node_name: &str) -> Key {
    let (protocol, destination_port) = match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => (6, t.destination_port),
        Some(Protocol::Udp(u)) => (17, u.destination_port),
        Some(Protocol::Sctp(s)) => (132, s.destination_port),
        Some(Protocol::IcmPv4(_)) => (1, 0),
        Some(Protocol::IcmPv6(_)) => (58, 0),
        _ => (0, 0),
    };
    Key {
        node: if flow.node_name.is_empty() { node_name.to_owned() } else { flow.node_name.clone() },
        verdict: flow.verdict,
        reply: flow.is_reply,
        drop_reason: flow.drop_reason_desc,
        source: side_key(flow.source.as_ref()),
        destination: side_key(flow.destination.as_ref()),
        protocol,
        destination_port,
        direction: flow.traffic_direction,
        ip_version: flow.ip.as_ref().map_or(0, |ip| ip.ip_version),
        encrypted: flow.ip.as_ref().is_some_and(|ip| ip.encrypted),
    }
}

fn endpoint(k: &SideKey) -> pb::Endpoint {
    let (pod_name, workloads) = if k.workload_kind.is_empty() {
        (k.workload.clone(), Vec::new())
    } else {
        (String::new(), vec![pb::Workload { name: k.workload.clone(), kind: k.workload_kind.clone() }])
    };
    pb::Endpoint {
        identity: k.identity,
        namespace: k.namespace.clone(),
        pod_name,
        workloads,
        cluster_name: k.cluster.clone(),
        ..pb::Endpoint::default()
    }
}

/// The flow an aggregate stands for: the key's fields only.
fn reduced(k: &Key, time: Timestamp) -> pb::Flow {
    let protocol = match k.protocol {
        6 => Some(Protocol::Tcp(pb::Tcp { destination_port: k.destination_port, ..pb::Tcp::default() })),
        17 => Some(Protocol::Udp(pb::Udp { destination_port: k.destination_port, ..pb::Udp::default() })),
        132 => Some(Protocol::Sctp(pb::Sctp { destination_port: k.destination_port, ..pb::Sctp::default() })),
        1 => Some(Protocol::IcmPv4(pb::IcmPv4::default())),
        58 => Some(Protocol::IcmPv6(pb::IcmPv6::default())),
        _ => None,
    };
    pb::Flow {
        time: Some(time),
        verdict: k.verdict,
        drop_reason_desc: k.drop_reason,
        is_reply: k.reply,
        source: Some(endpoint(&k.source)),
        destination: Some(endpoint(&k.destination)),
        l4: protocol.map(|p| pb::Layer4 { protocol: Some(p) }),
        traffic_direction: k.direction,
        ip: Some(pb::Ip { ip_version: k.ip_version, encrypted: k.encrypted, ..pb::Ip::default() }),
        node_name: k.node.clone(),
        r#type: pb::FlowType::L3L4 as i32,
        ..pb::Flow::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(time_s: i64, src_pod: &str, sport: u32, dport: u32, direction: i32, verdict: i32) -> pb::Flow {
        pb::Flow {
            time: Some(Timestamp { seconds: time_s, nanos: 5 }),
            uuid: format!("u-{time_s}-{sport}"),
            verdict,
            traffic_direction: direction,
            is_reply: Some(false),
            source: Some(pb::Endpoint { namespace: "x".into(), pod_name: src_pod.into(), identity: 300, ..pb::Endpoint::default() }),
            destination: Some(pb::Endpoint {
                namespace: "y".into(),
                pod_name: "web-1".into(),
                identity: 400,
                workloads: vec![pb::Workload { name: "web".into(), kind: "Deployment".into() }],
                ..pb::Endpoint::default()
            }),
            ip: Some(pb::Ip { source: "10.0.0.1".into(), destination: "10.0.0.2".into(), ip_version: 1, ..pb::Ip::default() }),
            l4: Some(pb::Layer4 { protocol: Some(Protocol::Tcp(pb::Tcp { source_port: sport, destination_port: dport, flags: None })) }),
            ..pb::Flow::default()
        }
    }

    #[test]
    fn flows_with_the_same_key_become_one_record_per_window() {
        let mut a = Aggregator::new(Duration::from_secs(30), Duration::from_secs(2));
        for sport in 0..10 {
            assert!(a.add(&flow(100, "a", 40000 + sport, 80, 2, 1), "node-1").is_empty());
        }
        a.add(&flow(101, "a", 1, 80, 1, 1), "node-1"); // other direction
        a.add(&flow(102, "a", 1, 443, 2, 1), "node-1"); // other port
        a.add(&flow(103, "a", 1, 80, 2, 2), "node-1"); // dropped
        a.add(&flow(104, "b", 1, 80, 2, 1), "node-1"); // other pod
        a.add(&flow(105, "a", 1, 80, 2, 1), "node-2"); // other node
        a.add(&flow(125, "a", 1, 80, 2, 1), "node-1"); // next window [120, 150)
        assert_eq!(a.pending(), 16);
        assert!(a.due(119_000_000_000).is_empty(), "window [90,120) is not over");
        let first = a.due(122_000_000_000);
        assert_eq!(first.len(), 6);
        let total: u64 = first.iter().map(|r| r.counts.total()).sum();
        assert_eq!(total, 15);
        let big = first.iter().find(|r| r.counts.egress == 10).expect("the ten flows");
        assert_eq!(big.time, Timestamp { seconds: 120, nanos: 0 });
        assert_eq!(big.node_name, "node-1");
        let f = &big.flow;
        assert!(f.uuid.is_empty());
        assert_eq!(f.ip.as_ref().map(|ip| (ip.source.as_str(), ip.ip_version)), Some(("", 1)));
        assert_eq!(f.source.as_ref().map(|s| s.pod_name.as_str()), Some("a"));
        let d = f.destination.as_ref().unwrap();
        assert_eq!((d.pod_name.as_str(), d.workloads[0].name.as_str()), ("", "web"));
        let Some(Protocol::Tcp(t)) = f.l4.as_ref().and_then(|l| l.protocol.as_ref()) else { panic!("tcp") };
        assert_eq!((t.source_port, t.destination_port), (0, 80));
        assert_eq!(a.pending(), 1);
        // A late flow for a window already emitted comes out at the next tick.
        a.add(&flow(95, "a", 9, 80, 2, 1), "node-1");
        let late = a.due(123_000_000_000);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].time.seconds, 120);
        assert_eq!(a.drain().len(), 1);
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn a_window_past_its_group_limit_is_emitted_early() {
        let mut a = Aggregator::new(Duration::from_secs(30), Duration::from_secs(2));
        let mut emitted = Vec::new();
        for i in 0..MAX_GROUPS as u32 {
            emitted.extend(a.add(&flow(100, &format!("p{i}"), 1, 80, 2, 1), "n"));
        }
        assert_eq!(emitted.len(), MAX_GROUPS);
        assert_eq!(a.pending(), 0);
    }
}
