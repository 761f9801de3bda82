//! Event → [`Flow`]: the parser stage.
//!
//! [`FlowBuilder::build`] turns one decoded [`Event`] and the node's current
//! [`Metadata`] into a [`Flow`] with Hubble's numbering (event types, trace
//! observation points, trace reasons, verdicts, drop reasons, traffic
//! direction). It allocates no strings: pods and identity labels are `Arc`s
//! cloned out of `Metadata`, and so are the policy lists, interface names and
//! kernel drop reason names: every flow that names the same policies or
//! interface shares `Metadata`'s allocation, and a metadata update (a new
//! `Metadata`) is picked up at the next flow.
//!
//! A missing lookup leaves a field empty; nothing here fails or panics on any
//! event, including events of unknown kinds (they become flows of event type
//! 0 and verdict `VERDICT_UNKNOWN`).
//!
//! Traffic direction, per event kind:
//!
//! - policy verdicts and drops carry the direction the datapath decided in
//!   (`INGRESS`/`EGRESS` of the endpoint in `endpoint_id`); kernel drops carry
//!   none (`TRAFFIC_DIRECTION_UNKNOWN`);
//! - traces are derived as Hubble derives them (`decodeTrafficDirection`):
//!   the connection's direction seen from the endpoint that reported the
//!   trace. `from-endpoint` and `to-stack` are taken at the packet's source
//!   endpoint, `to-endpoint` at its destination; a packet of the original
//!   direction is `EGRESS` at its source and `INGRESS` at its destination, and
//!   a reply flips it (a reply leaving a server is that server's `INGRESS`
//!   connection). Traces without a conntrack state, or at another point,
//!   are `TRAFFIC_DIRECTION_UNKNOWN`.
//!
//! Services, as Hubble's parser sets them and where Sightline's datapath
//! says more:
//!
//! - Hubble's rule (`GetServiceByAddr`): a side whose address and port are
//!   a service port's (a TCP one before a UDP one, whatever the flow's
//!   protocol) names that service in `source_service`/`destination_service`.
//!   The datapath translates a packet to a service before any trace, so in
//!   Sightline this names services of packets it did not translate: drops
//!   of a service without backends (`SERVICE_BACKEND_NOT_FOUND`), a port of
//!   another protocol.
//! - Translated connections: the events of a connection the datapath sent
//!   to a service backend carry the service port's number
//!   (`Event::service_id`). In the original direction it is the flow's
//!   `destination_service` (the destination is the backend, as in Hubble,
//!   whose events after the translation carry no service at all); in the
//!   reply direction its `source_service`. These exist on the client's node
//!   only (where the translation is made): a backend on another node sees
//!   an ordinary connection.
//! - `IP.source_xlated`: Hubble's parser sets it on traces whose source the
//!   datapath translated (the trace's original address is then `IP.source`
//!   and the translated one `source_xlated`): the client's side of a
//!   service reply, given the service address as its source. In Sightline
//!   that is a reply of a translated connection at a `to-*` point (the
//!   translation follows the event): `source.ip` is the backend, and
//!   `source_xlated` the service address. The ports stay the backend's.
//!
//! This module must not format, allocate per flow beyond the record itself,
//! nor know about protobuf: that is `convert`'s job.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use sightline_abi as abi;
use sightline_abi::Event;
use sightline_flow::ServiceMeta;

use super::{Flow, Side};
use crate::metadata::{Frontend, Metadata};

pub use sightline_flow::numbers::{
    MESSAGE_TYPE_DROP, MESSAGE_TYPE_POLICY_VERDICT, MESSAGE_TYPE_TRACE, MESSAGE_TYPE_UNSPEC, OBSERVATION_POINT_TO_ENDPOINT,
    TRACE_REASON_ESTABLISHED, TRACE_REASON_NEW, TRACE_REASON_REPLY, TRACE_REASON_UNKNOWN, TRAFFIC_DIRECTION_EGRESS,
    TRAFFIC_DIRECTION_INGRESS, TRAFFIC_DIRECTION_UNKNOWN, VERDICT_AUDIT, VERDICT_DROPPED, VERDICT_FORWARDED,
    VERDICT_UNKNOWN,
};

/// Highest datapath trace point whose proto value equals it (`TO_CRYPTO`).
const OBSERVATION_POINT_MAX_EQUAL: u8 = 13;

/// Labels of Cilium's reserved identities, used when `Metadata.identities`
/// has no entry for them.
const RESERVED_LABELS: [(u32, &str); 3] = [
    (abi::IDENTITY_HOST, "reserved:host"),
    (abi::IDENTITY_WORLD, "reserved:world"),
    (abi::IDENTITY_REMOTE_NODE, "reserved:remote-node"),
];

/// Turns decoded events into flows. One per node, owned by the consumer that
/// drains the ring buffer: it numbers the flows (`seq`).
#[derive(Debug)]
pub struct FlowBuilder {
    /// `seq` of the next flow.
    next_seq: u64,
    /// Shared label lists of the reserved identities, by identity.
    reserved: Vec<(u32, Arc<[String]>)>,
}

impl Default for FlowBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowBuilder {
    /// A builder whose first flow has `seq` 1.
    #[must_use]
    pub fn new() -> Self {
        Self::starting_at(1)
    }

    /// A builder whose first flow has `seq` = `first_seq`.
    #[must_use]
    pub fn starting_at(first_seq: u64) -> Self {
        Self {
            next_seq: first_seq,
            reserved: RESERVED_LABELS.iter().map(|&(id, label)| (id, Arc::from([label.to_owned()]))).collect(),
        }
    }

    /// The `seq` the next flow will get.
    #[must_use]
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Builds the flow of one event, numbering it with the next `seq`.
    pub fn build(&mut self, ev: &Event, meta: &Metadata) -> Flow {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);

        let has_ports = matches!(ev.protocol, abi::IPPROTO_TCP | abi::IPPROTO_UDP | abi::IPPROTO_SCTP);
        let is_icmp = matches!(ev.protocol, abi::IPPROTO_ICMP | abi::IPPROTO_ICMPV6);
        let (src_port, dst_port) = if has_ports { (ev.src_port, ev.dst_port) } else { (0, 0) };
        let source = self.side(meta, address(ev.ip_version, &ev.src_addr), src_port, ev.src_identity);
        let destination = self.side(meta, address(ev.ip_version, &ev.dst_addr), dst_port, ev.dst_identity);

        let kind = ev.kind;
        let (event_type, event_sub_type) = match kind {
            abi::EVENT_TRACE => (MESSAGE_TYPE_TRACE, ev.sub_type),
            abi::EVENT_DROP => (MESSAGE_TYPE_DROP, ev.sub_type),
            abi::EVENT_POLICY_VERDICT => (MESSAGE_TYPE_POLICY_VERDICT, 0),
            abi::EVENT_KERNEL_DROP => (MESSAGE_TYPE_DROP, 0),
            _ => (MESSAGE_TYPE_UNSPEC, 0),
        };
        let verdict = match kind {
            abi::EVENT_TRACE => VERDICT_FORWARDED,
            abi::EVENT_DROP | abi::EVENT_KERNEL_DROP => VERDICT_DROPPED,
            abi::EVENT_POLICY_VERDICT => match ev.verdict {
                abi::VERDICT_FORWARDED => VERDICT_FORWARDED,
                abi::VERDICT_DROPPED => VERDICT_DROPPED,
                abi::VERDICT_AUDIT => VERDICT_AUDIT,
                _ => VERDICT_UNKNOWN,
            },
            _ => VERDICT_UNKNOWN,
        };
        let is_trace = kind == abi::EVENT_TRACE;
        let reply = match ev.ct_state {
            abi::CT_NEW | abi::CT_ESTABLISHED => Some(false),
            abi::CT_REPLY => Some(true),
            _ => None,
        };

        let allowed_by = if kind == abi::EVENT_POLICY_VERDICT && ev.verdict == abi::VERDICT_FORWARDED {
            non_empty(meta.policy_sets.get(&ev.reason))
        } else {
            None
        };
        let denied = match kind {
            abi::EVENT_POLICY_VERDICT => matches!(ev.verdict, abi::VERDICT_DROPPED | abi::VERDICT_AUDIT),
            abi::EVENT_DROP => ev.sub_type == abi::DROP_POLICY_DENIED,
            _ => false,
        };
        let denied_by = if denied {
            non_empty(meta.selected_by.get(&(ev.endpoint_id, ev.direction)))
        } else {
            None
        };

        let (kernel_drop_reason, kernel_drop_reason_name) = if kind == abi::EVENT_KERNEL_DROP {
            (ev.reason, meta.kernel_reasons.get(&ev.reason).cloned())
        } else {
            (0, None)
        };
        // A kernel drop's ifindex belongs to the device's own namespace, not
        // the node's, so the node's interface names do not apply to it.
        let (source_service, destination_service, source_xlated) = services(ev, meta, &source, &destination);
        let interface = if kind == abi::EVENT_KERNEL_DROP || ev.ifindex == 0 {
            None
        } else {
            meta.interfaces.get(&ev.ifindex).filter(|n| !n.is_empty()).cloned()
        };

        Flow {
            time_ns: i64::try_from(ev.ts_ns).unwrap_or(i64::MAX).saturating_add(meta.mono_to_unix_ns),
            seq,
            source,
            destination,
            verdict,
            // A denied policy verdict carries POLICY_DENIED, as in Hubble.
            drop_reason: match kind {
                abi::EVENT_DROP => u16::from(ev.sub_type),
                abi::EVENT_POLICY_VERDICT if ev.verdict == abi::VERDICT_DROPPED => u16::from(abi::DROP_POLICY_DENIED),
                _ => 0,
            },
            kernel_drop_reason,
            kernel_drop_reason_name,
            event_type,
            event_sub_type,
            trace_observation_point: if is_trace { observation_point(ev.sub_type) } else { 0 },
            trace_reason: if is_trace { trace_reason(ev.ct_state) } else { TRACE_REASON_UNKNOWN },
            // Hubble reports policy verdicts as not replies: they are taken
            // for new connections.
            is_reply: reply.or((kind == abi::EVENT_POLICY_VERDICT).then_some(false)),
            traffic_direction: traffic_direction(ev),
            policy_match_type: if kind == abi::EVENT_POLICY_VERDICT { ev.match_type } else { 0 },
            protocol: ev.protocol,
            tcp_flags: if ev.protocol == abi::IPPROTO_TCP { ev.tcp_flags } else { 0 },
            icmp_type: if is_icmp { ev.icmp_type } else { 0 },
            icmp_code: if is_icmp { ev.icmp_code } else { 0 },
            ip_version: ev.ip_version,
            ifindex: ev.ifindex,
            interface,
            allowed_by,
            denied_by,
            counters: [ev.fwd_packets, ev.fwd_bytes, ev.rev_packets, ev.rev_bytes],
            source_service,
            destination_service,
            source_xlated,
        }
    }

    /// One side of the flow: the pod behind the address, or else the labels
    /// of its identity.
    fn side(&self, meta: &Metadata, ip: IpAddr, port: u16, identity: u32) -> Side {
        let pod = match ip {
            IpAddr::V4(v4) => meta.pods.get(&v4).cloned(),
            IpAddr::V6(_) => None,
        };
        let identity_labels = if pod.is_some() {
            None
        } else {
            meta.identities.get(&identity).cloned().or_else(|| self.reserved_labels(identity))
        };
        Side { ip, port, identity, pod, identity_labels }
    }

    fn reserved_labels(&self, identity: u32) -> Option<Arc<[String]>> {
        self.reserved.iter().find(|(id, _)| *id == identity).map(|(_, labels)| Arc::clone(labels))
    }
}

/// `source_service`, `destination_service` and `IP.source_xlated` of an
/// event (see the module documentation). Costs nothing for a node without
/// services; otherwise a lookup per side that has a port.
fn services(
    ev: &Event,
    meta: &Metadata,
    source: &Side,
    destination: &Side,
) -> (Option<Arc<ServiceMeta>>, Option<Arc<ServiceMeta>>, Option<Ipv4Addr>) {
    if meta.services.is_empty() {
        return (None, None, None);
    }
    let by_addr = |side: &Side| -> Option<Arc<ServiceMeta>> {
        let IpAddr::V4(addr) = side.ip else { return None };
        if side.port == 0 {
            return None;
        }
        let id = meta.frontends.get(&(addr, side.port))?;
        meta.services.get(id).map(|f| Arc::clone(&f.service))
    };
    let translated: Option<&Frontend> = if ev.service_id == 0 { None } else { meta.services.get(&ev.service_id) };
    let reply = ev.ct_state == abi::CT_REPLY;
    match translated {
        Some(front) if reply => {
            let to_point = ev.kind == abi::EVENT_TRACE
                && matches!(ev.sub_type, abi::TRACE_TO_LXC | abi::TRACE_TO_STACK | abi::TRACE_TO_OVERLAY);
            let xlated = to_point.then_some(front.addr);
            (Some(Arc::clone(&front.service)), by_addr(destination), xlated)
        }
        Some(front) => (by_addr(source), Some(Arc::clone(&front.service)), None),
        None => (by_addr(source), by_addr(destination), None),
    }
}

/// The address in a 16-byte ABI field (IPv4 in the first four bytes).
fn address(ip_version: u8, a: &[u8; 16]) -> IpAddr {
    if ip_version == 6 {
        IpAddr::V6(Ipv6Addr::from(*a))
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

/// `flow.TraceObservationPoint` of a datapath trace point.
pub(crate) fn observation_point(point: u8) -> u8 {
    match point {
        abi::TRACE_TO_LXC => OBSERVATION_POINT_TO_ENDPOINT,
        p if p <= OBSERVATION_POINT_MAX_EQUAL => p,
        _ => 0,
    }
}

/// `flow.TraceReason` of a conntrack state.
fn trace_reason(ct_state: u8) -> u8 {
    match ct_state {
        abi::CT_NEW => TRACE_REASON_NEW,
        abi::CT_ESTABLISHED => TRACE_REASON_ESTABLISHED,
        abi::CT_REPLY => TRACE_REASON_REPLY,
        _ => TRACE_REASON_UNKNOWN,
    }
}

/// `flow.TrafficDirection` of an event (see the module documentation).
fn traffic_direction(ev: &Event) -> u8 {
    let carried = match ev.direction {
        abi::DIR_INGRESS => TRAFFIC_DIRECTION_INGRESS,
        abi::DIR_EGRESS => TRAFFIC_DIRECTION_EGRESS,
        _ => TRAFFIC_DIRECTION_UNKNOWN,
    };
    match ev.kind {
        abi::EVENT_POLICY_VERDICT | abi::EVENT_DROP | abi::EVENT_KERNEL_DROP => carried,
        abi::EVENT_TRACE => {
            let at_source = match ev.sub_type {
                abi::TRACE_FROM_LXC | abi::TRACE_TO_STACK => true,
                abi::TRACE_TO_LXC => false,
                _ => return TRAFFIC_DIRECTION_UNKNOWN,
            };
            let reply = match ev.ct_state {
                abi::CT_NEW | abi::CT_ESTABLISHED => false,
                abi::CT_REPLY => true,
                _ => return TRAFFIC_DIRECTION_UNKNOWN,
            };
            if at_source == reply { TRAFFIC_DIRECTION_INGRESS } else { TRAFFIC_DIRECTION_EGRESS }
        }
        _ => TRAFFIC_DIRECTION_UNKNOWN,
    }
}

fn non_empty(list: Option<&Arc<[String]>>) -> Option<Arc<[String]>> {
    list.filter(|l| !l.is_empty()).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::PodMeta;

    const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);

    fn meta() -> Metadata {
        let mut m = Metadata { node_name: "node-1".into(), mono_to_unix_ns: 1_000_000_000, ..Metadata::default() };
        for (ip, name, ep, id) in [(A, "a", 1, 256), (B, "b", 2, 257)] {
            m.pods.insert(
                ip,
                Arc::new(PodMeta {
                    namespace: "x".into(),
                    name: name.into(),
                    endpoint_id: ep,
                    identity: id,
                    labels: Arc::from([format!("k8s:app={name}"), "k8s:io.kubernetes.pod.namespace=x".to_owned()]),
                    node: "node-1".into(),
                }),
            );
        }
        m.identities.insert(300, Arc::from(["k8s:app=remote".to_owned()]));
        m.interfaces.insert(7, "lxc00001".into());
        m.interfaces.insert(8, "lxc00002".into());
        m.kernel_reasons.insert(2, "NOT_SPECIFIED".into());
        m.policy_sets.insert(5, Arc::from(vec!["x/allow-a".to_owned(), "x/allow-all".to_owned()]));
        m.selected_by.insert((2, abi::DIR_INGRESS), Arc::from(vec!["x/deny-b".to_owned()]));
        m
    }

    fn event(kind: u8, sub_type: u8, src: Ipv4Addr, dst: Ipv4Addr) -> Event {
        let mut ev = Event {
            ts_ns: 5,
            kind,
            sub_type,
            ip_version: 4,
            protocol: abi::IPPROTO_TCP,
            tcp_flags: abi::TCP_SYN,
            ct_state: abi::CT_NEW,
            src_port: 40000,
            dst_port: 80,
            src_identity: 256,
            dst_identity: 257,
            ifindex: 7,
            endpoint_id: 1,
            fwd_packets: 1,
            fwd_bytes: 74,
            version: abi::ABI_VERSION,
            ..Event::default()
        };
        ev.src_addr[..4].copy_from_slice(&src.octets());
        ev.dst_addr[..4].copy_from_slice(&dst.octets());
        ev
    }

    #[test]
    fn trace_maps_to_hubble_values_and_shares_metadata() {
        let m = meta();
        let mut b = FlowBuilder::new();
        let ev = event(abi::EVENT_TRACE, abi::TRACE_TO_LXC, A, B);
        let f = b.build(&ev, &m);
        assert_eq!(f.seq, 1);
        assert_eq!(f.time_ns, 1_000_000_005);
        assert_eq!((f.event_type, f.event_sub_type), (4, 0));
        assert_eq!(f.trace_observation_point, 101);
        assert_eq!(f.trace_reason, TRACE_REASON_NEW);
        assert_eq!(f.is_reply, Some(false));
        assert_eq!(f.verdict, VERDICT_FORWARDED);
        // to-endpoint of a new connection: the destination's ingress.
        assert_eq!(f.traffic_direction, TRAFFIC_DIRECTION_INGRESS);
        assert_eq!(f.source.ip, IpAddr::V4(A));
        assert_eq!((f.source.port, f.destination.port), (40000, 80));
        let pod = f.source.pod.as_ref().expect("source pod");
        assert!(Arc::ptr_eq(pod, &m.pods[&A]));
        assert_eq!(f.source.identity_labels, None);
        assert_eq!(f.interface.as_deref(), Some("lxc00001"));
        assert_eq!(f.tcp_flags, abi::TCP_SYN);
        assert_eq!(f.counters, [1, 74, 0, 0]);
        assert_eq!((f.allowed_by.as_ref(), f.denied_by.as_ref()), (None, None));

        let g = b.build(&ev, &m);
        assert_eq!(g.seq, 2);
        let (fi, gi) = (f.interface.expect("interface"), g.interface.expect("interface"));
        assert!(Arc::ptr_eq(&fi, &gi), "interface names are shared");
    }

    #[test]
    fn trace_directions() {
        let m = meta();
        let mut b = FlowBuilder::new();
        let dir = |b: &mut FlowBuilder, point, ct| {
            let mut ev = event(abi::EVENT_TRACE, point, A, B);
            ev.ct_state = ct;
            b.build(&ev, &m).traffic_direction
        };
        assert_eq!(dir(&mut b, abi::TRACE_FROM_LXC, abi::CT_NEW), TRAFFIC_DIRECTION_EGRESS);
        assert_eq!(dir(&mut b, abi::TRACE_TO_STACK, abi::CT_ESTABLISHED), TRAFFIC_DIRECTION_EGRESS);
        assert_eq!(dir(&mut b, abi::TRACE_TO_LXC, abi::CT_ESTABLISHED), TRAFFIC_DIRECTION_INGRESS);
        assert_eq!(dir(&mut b, abi::TRACE_FROM_LXC, abi::CT_REPLY), TRAFFIC_DIRECTION_INGRESS);
        assert_eq!(dir(&mut b, abi::TRACE_TO_LXC, abi::CT_REPLY), TRAFFIC_DIRECTION_EGRESS);
        assert_eq!(dir(&mut b, abi::TRACE_TO_LXC, abi::CT_NONE), TRAFFIC_DIRECTION_UNKNOWN);
        assert_eq!(dir(&mut b, abi::TRACE_FROM_HOST, abi::CT_NEW), TRAFFIC_DIRECTION_UNKNOWN);
        let mut ev = event(abi::EVENT_TRACE, abi::TRACE_FROM_STACK, A, B);
        ev.ct_state = abi::CT_REPLY;
        let f = b.build(&ev, &m);
        assert_eq!((f.trace_observation_point, f.trace_reason, f.is_reply), (8, TRACE_REASON_REPLY, Some(true)));
    }

    #[test]
    fn policy_verdicts_name_their_policies() {
        let m = meta();
        let mut b = FlowBuilder::new();
        let mut ev = event(abi::EVENT_POLICY_VERDICT, abi::TRACE_NONE, A, B);
        ev.verdict = abi::VERDICT_FORWARDED;
        ev.direction = abi::DIR_EGRESS;
        ev.match_type = abi::MATCH_L3_L4;
        ev.reason = 5;
        let f = b.build(&ev, &m);
        assert_eq!((f.event_type, f.event_sub_type, f.verdict), (5, 0, VERDICT_FORWARDED));
        assert_eq!(f.traffic_direction, TRAFFIC_DIRECTION_EGRESS);
        assert_eq!(f.policy_match_type, abi::MATCH_L3_L4);
        assert_eq!(f.trace_observation_point, 0);
        assert_eq!(f.is_reply, Some(false));
        let allowed = f.allowed_by.expect("allowed_by");
        assert_eq!(&allowed[..], ["x/allow-a", "x/allow-all"]);
        let again = b.build(&ev, &m).allowed_by.expect("allowed_by");
        assert!(Arc::ptr_eq(&allowed, &again), "policy lists are shared");

        // The metadata changes: the next flow sees the new list.
        let mut m2 = m.clone();
        m2.policy_sets.insert(5, Arc::from(vec!["x/other".to_owned()]));
        let changed = b.build(&ev, &m2).allowed_by.expect("allowed_by");
        assert_eq!(&changed[..], ["x/other"]);

        // Unknown policy set: empty, not an error.
        ev.reason = 99;
        assert_eq!(b.build(&ev, &m).allowed_by, None);

        for (verdict, expected) in [(abi::VERDICT_DROPPED, VERDICT_DROPPED), (abi::VERDICT_AUDIT, VERDICT_AUDIT)] {
            let mut ev = event(abi::EVENT_POLICY_VERDICT, abi::TRACE_NONE, A, B);
            ev.verdict = verdict;
            ev.direction = abi::DIR_INGRESS;
            ev.endpoint_id = 2;
            let f = b.build(&ev, &m);
            assert_eq!(f.verdict, expected);
            assert_eq!(f.traffic_direction, TRAFFIC_DIRECTION_INGRESS);
            assert_eq!(f.allowed_by, None);
            assert_eq!(f.denied_by.as_deref(), Some(&["x/deny-b".to_owned()][..]));
        }
    }

    #[test]
    fn drops_and_kernel_drops() {
        let m = meta();
        let mut b = FlowBuilder::new();
        let mut ev = event(abi::EVENT_DROP, abi::DROP_POLICY_DENIED, A, B);
        ev.direction = abi::DIR_INGRESS;
        ev.endpoint_id = 2;
        ev.ct_state = abi::CT_NONE;
        let f = b.build(&ev, &m);
        assert_eq!((f.event_type, f.event_sub_type, f.drop_reason), (1, 133, 133));
        assert_eq!(f.verdict, VERDICT_DROPPED);
        assert_eq!(f.is_reply, None);
        assert_eq!(f.traffic_direction, TRAFFIC_DIRECTION_INGRESS);
        assert_eq!(f.denied_by.as_deref(), Some(&["x/deny-b".to_owned()][..]));

        let mut ev = event(abi::EVENT_DROP, abi::DROP_INVALID_SOURCE_IP, A, B);
        ev.direction = abi::DIR_EGRESS;
        let f = b.build(&ev, &m);
        assert_eq!(f.drop_reason, 132);
        assert_eq!(f.denied_by, None);

        let mut ev = event(abi::EVENT_KERNEL_DROP, 0, A, B);
        ev.reason = 2;
        ev.ifindex = 7;
        let f = b.build(&ev, &m);
        assert_eq!((f.event_type, f.event_sub_type, f.drop_reason), (1, 0, 0));
        assert_eq!(f.verdict, VERDICT_DROPPED);
        assert_eq!(f.kernel_drop_reason, 2);
        assert_eq!(f.kernel_drop_reason_name.as_deref(), Some("NOT_SPECIFIED"));
        assert_eq!(f.interface, None, "kernel drops' ifindex is not the node's");
        assert_eq!(f.ifindex, 7);
        ev.reason = 12345;
        assert_eq!(b.build(&ev, &m).kernel_drop_reason_name, None);
    }

    #[test]
    fn identities_without_pods_get_labels() {
        let m = meta();
        let mut b = FlowBuilder::new();
        let world = Ipv4Addr::new(192, 0, 2, 1);
        let mut ev = event(abi::EVENT_TRACE, abi::TRACE_TO_STACK, A, world);
        ev.dst_identity = abi::IDENTITY_WORLD;
        let f = b.build(&ev, &m);
        assert_eq!(f.destination.pod, None);
        assert_eq!(f.destination.identity_labels.as_deref(), Some(&["reserved:world".to_owned()][..]));
        let g = b.build(&ev, &m);
        assert!(Arc::ptr_eq(
            f.destination.identity_labels.as_ref().expect("labels"),
            g.destination.identity_labels.as_ref().expect("labels")
        ));

        ev.dst_identity = 300;
        let f = b.build(&ev, &m);
        assert_eq!(f.destination.identity_labels.as_deref(), Some(&["k8s:app=remote".to_owned()][..]));
        ev.dst_identity = 0;
        assert_eq!(b.build(&ev, &m).destination.identity_labels, None);
        ev.dst_identity = abi::IDENTITY_HOST;
        assert_eq!(b.build(&ev, &m).destination.identity_labels.as_deref(), Some(&["reserved:host".to_owned()][..]));
        ev.dst_identity = abi::IDENTITY_REMOTE_NODE;
        let f = b.build(&ev, &m);
        assert_eq!(f.destination.identity_labels.as_deref(), Some(&["reserved:remote-node".to_owned()][..]));
    }

    /// `meta()` with service x/web: 10.96.0.10:80/TCP (number 7) and
    /// 10.96.0.10:53/UDP (number 8).
    fn meta_with_services() -> Metadata {
        use crate::metadata::{Frontend, ServiceMeta};
        let mut m = meta();
        let web = Arc::new(ServiceMeta { namespace: "x".into(), name: "web".into() });
        for (id, port, protocol) in [(7, 80, abi::IPPROTO_TCP), (8, 53, abi::IPPROTO_UDP)] {
            m.services.insert(id, Frontend { service: Arc::clone(&web), addr: SVC, port, protocol });
            m.frontends.insert((SVC, port), id);
        }
        m
    }

    const SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    fn service_names(f: &Flow) -> (Option<String>, Option<String>) {
        let name = |s: &Option<Arc<ServiceMeta>>| s.as_ref().map(|s| format!("{}/{}", s.namespace, s.name));
        (name(&f.source_service), name(&f.destination_service))
    }

    #[test]
    fn translated_connections_name_their_service() {
        let m = meta_with_services();
        let mut b = FlowBuilder::new();
        let web = Some("x/web".to_owned());

        // a → b, translated from the service: every event of the original
        // direction names it as the destination; the addresses are the
        // backend's.
        for (kind, sub_type) in [
            (abi::EVENT_TRACE, abi::TRACE_FROM_LXC),
            (abi::EVENT_TRACE, abi::TRACE_TO_LXC),
            (abi::EVENT_POLICY_VERDICT, abi::TRACE_NONE),
            (abi::EVENT_DROP, abi::DROP_POLICY_DENIED),
        ] {
            let mut ev = event(kind, sub_type, A, B);
            ev.service_id = 7;
            let f = b.build(&ev, &m);
            assert_eq!(service_names(&f), (None, web.clone()), "{kind}/{sub_type}");
            assert_eq!((f.destination.ip, f.source_xlated), (IpAddr::V4(B), None));
            let p = sightline_flow::to_proto(&f, "node-1", None);
            assert_eq!(p.destination_service.map(|s| (s.namespace, s.name)), Some(("x".into(), "web".into())));
            assert_eq!(p.ip.expect("IP").source_xlated, "");
        }

        // The reply b → a: the service is the source; where the datapath
        // gives it the service address (after a to-* trace), that address
        // is the translated source.
        for (point, xlated) in [
            (abi::TRACE_FROM_LXC, None),
            (abi::TRACE_TO_LXC, Some(SVC)),
            (abi::TRACE_TO_STACK, Some(SVC)),
            (abi::TRACE_TO_OVERLAY, Some(SVC)),
        ] {
            let mut ev = event(abi::EVENT_TRACE, point, B, A);
            (ev.src_port, ev.dst_port, ev.ct_state, ev.service_id) = (8080, 40000, abi::CT_REPLY, 7);
            let f = b.build(&ev, &m);
            assert_eq!(service_names(&f), (web.clone(), None), "{point}");
            assert_eq!(f.source_xlated, xlated, "{point}");
            assert_eq!(f.source.ip, IpAddr::V4(B), "the source stays the backend");
            let p = sightline_flow::to_proto(&f, "node-1", None);
            let ip = p.ip.expect("IP");
            assert_eq!((ip.source, ip.source_xlated), (B.to_string(), xlated.map(|a| a.to_string()).unwrap_or_default()));
        }
        // A reply dropped by the datapath is not translated.
        let mut ev = event(abi::EVENT_DROP, abi::DROP_POLICY_DENIED, B, A);
        (ev.ct_state, ev.service_id) = (abi::CT_REPLY, 7);
        let f = b.build(&ev, &m);
        assert_eq!((service_names(&f), f.source_xlated), ((web.clone(), None), None));

        // A number the metadata does not know (a service deleted since):
        // nothing, not an error.
        let mut ev = event(abi::EVENT_TRACE, abi::TRACE_TO_LXC, A, B);
        ev.service_id = 99;
        assert_eq!(service_names(&b.build(&ev, &m)), (None, None));
    }

    #[test]
    fn service_addresses_name_their_service_as_hubble_does() {
        let m = meta_with_services();
        let mut b = FlowBuilder::new();
        let web = Some("x/web".to_owned());
        // A packet to a service without backends, dropped before any
        // translation: the destination is the service's address and port.
        let mut ev = event(abi::EVENT_DROP, abi::DROP_NO_SERVICE_BACKEND, A, SVC);
        ev.ct_state = abi::CT_NONE;
        let f = b.build(&ev, &m);
        assert_eq!(service_names(&f), (None, web.clone()));
        assert_eq!(f.source_xlated, None);
        // A port the service does not have: no service.
        ev.dst_port = 81;
        assert_eq!(service_names(&b.build(&ev, &m)), (None, None));
        // By address and port, whatever the protocol (a TCP port before a
        // UDP one), as Hubble looks it up.
        let mut ev = event(abi::EVENT_TRACE, abi::TRACE_TO_STACK, A, SVC);
        ev.protocol = abi::IPPROTO_UDP;
        assert_eq!(service_names(&b.build(&ev, &m)), (None, web.clone()));
        // The source side too.
        let mut ev = event(abi::EVENT_TRACE, abi::TRACE_TO_LXC, SVC, A);
        (ev.src_port, ev.dst_port) = (53, 40000);
        ev.protocol = abi::IPPROTO_UDP;
        assert_eq!(service_names(&b.build(&ev, &m)), (web.clone(), None));
        // ICMP has no ports (its echo identifier is not a port).
        let mut ev = event(abi::EVENT_TRACE, abi::TRACE_TO_STACK, A, SVC);
        (ev.protocol, ev.src_port, ev.dst_port) = (abi::IPPROTO_ICMP, 80, 80);
        assert_eq!(service_names(&b.build(&ev, &m)), (None, None));
        // A node without services: nothing is looked up.
        let mut ev = event(abi::EVENT_DROP, abi::DROP_NO_SERVICE_BACKEND, A, SVC);
        ev.service_id = 7;
        assert_eq!(service_names(&b.build(&ev, &meta())), (None, None));
    }

    #[test]
    fn odd_events_never_fail() {
        let m = Metadata::default();
        let mut b = FlowBuilder::starting_at(u64::MAX);
        let ev = Event {
            ts_ns: u64::MAX,
            kind: 77,
            sub_type: 0xff,
            ip_version: 6,
            protocol: abi::IPPROTO_ICMPV6,
            icmp_type: 128,
            icmp_code: 0,
            src_port: 9,
            ct_state: 9,
            direction: 9,
            ..Event::default()
        };
        let f = b.build(&ev, &m);
        assert_eq!(f.seq, u64::MAX);
        assert_eq!(b.next_seq(), 0);
        assert_eq!(f.time_ns, i64::MAX);
        assert_eq!((f.event_type, f.verdict, f.traffic_direction), (0, VERDICT_UNKNOWN, 0));
        assert_eq!(f.source.ip, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!((f.source.port, f.icmp_type), (0, 128));
        assert_eq!(f.is_reply, None);

        let mut ev = Event { kind: abi::EVENT_TRACE, sub_type: 0xff, ..Event::default() };
        ev.ts_ns = 0;
        let m = Metadata { mono_to_unix_ns: i64::MIN, ..Metadata::default() };
        let f = b.build(&ev, &m);
        assert_eq!((f.trace_observation_point, f.time_ns), (0, i64::MIN));
    }
}
