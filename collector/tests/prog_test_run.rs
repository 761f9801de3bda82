//! The real probes, packet by packet, with `BPF_PROG_TEST_RUN` (no lab, no
//! interface, nothing on the wire; needs root): maps programmed directly,
//! crafted packets run through `from_container` and `to_container`, and the
//! verdicts, conntrack entries, rewritten packets and ring-buffer events
//! checked. Every test loads its own copy of the probes in a pin directory
//! of its own (`sightline_collector::testrun::Harness`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use sightline_abi as abi;
use sightline_abi::{EndpointInfo, Event};
use sightline_collector::policy::compiler::{NamedPort, PodInfo};
use sightline_collector::policy::model::{LabelSelector, NetworkPolicy, Peer, PolicyPort, PolicyType, PortRef, Protocol, Rule};
use sightline_collector::testrun::{self, Harness, SkbContext, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, ct_key, parse, tcp, udp};

const FROM: &str = abi::programs::FROM_CONTAINER;
const TO: &str = abi::programs::TO_CONTAINER;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
/// A pod of another node (in the ipcache only).
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

const SERVER_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 3];
const NODE_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];

/// Identities and endpoint IDs: client 300/1, server 301/2, stranger 302/3.
fn endpoint(identity: u32, id: u16, mac: [u8; 6]) -> EndpointInfo {
    // ifindex 1: test runs see packets on the loopback device, where
    // `from_container` checks the source endpoint's interface.
    EndpointInfo { ifindex: 1, identity, mac, node_mac: NODE_MAC, endpoint_id: id, flags: 0 }
}

/// Probes with the client, the server and the stranger as local pods and
/// REMOTE as a pod of another node (identity 400).
fn node() -> Harness {
    let mut h = Harness::load(testrun::config(abi::AGGREGATION_MEDIUM)).expect("load the probes (root, bpffs)");
    h.add_endpoint(CLIENT, endpoint(300, 1, [0x02, 0xaa, 0, 0, 0, 2])).expect("client");
    h.add_endpoint(SERVER, endpoint(301, 2, SERVER_MAC)).expect("server");
    h.add_endpoint(STRANGER, endpoint(302, 3, [0x02, 0xaa, 0, 0, 0, 4])).expect("stranger");
    h.add_ipcache(REMOTE, 32, 400).expect("remote pod");
    h
}

fn pod(name: &str, ip: Ipv4Addr, identity: u32, id: u16) -> PodInfo {
    PodInfo {
        namespace: "t".into(),
        name: name.into(),
        ip,
        labels: BTreeMap::from([("role".into(), name.into())]),
        identity,
        ports: vec![NamedPort { name: None, port: 5201, protocol: Protocol::Tcp }],
        endpoint_id: Some(id),
    }
}

/// Ingress to the server: only pods labelled role=client, on TCP 5201.
fn server_policy(h: &mut Harness) {
    let selector = |v: &str| LabelSelector {
        match_labels: BTreeMap::from([("role".to_owned(), v.to_owned())]),
        match_expressions: Vec::new(),
    };
    let policy = NetworkPolicy {
        namespace: "t".into(),
        name: "server-ingress".into(),
        pod_selector: selector("server"),
        policy_types: vec![PolicyType::Ingress],
        ingress: vec![Rule {
            peers: vec![Peer { pod_selector: Some(selector("client")), namespace_selector: None, ip_block: None }],
            ports: vec![PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Number(5201)), end_port: None }],
        }],
        egress: Vec::new(),
        origin: None,
    };
    let mut pods = vec![pod("client", CLIENT, 300, 1), pod("server", SERVER, 301, 2), pod("stranger", STRANGER, 302, 3)];
    // The remote client (another node) is a role=client pod too.
    pods.push(PodInfo { endpoint_id: None, ..pod("client", REMOTE, 400, 0) });
    pods[3].name = "remote".into();
    let plan = h.apply_policy(&pods, &[policy]).expect("program the policy");
    assert!(plan.endpoints.get(&2).is_some_and(|e| e.ingress_enforced), "the server's ingress is enforced");
}

fn of_kind(events: &[Event], kind: u8) -> Vec<&Event> {
    events.iter().filter(|e| e.kind == kind).collect()
}

fn v4(addr: [u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: loads the eBPF probes and runs them with BPF_PROG_TEST_RUN")]
fn a_tcp_handshake_between_local_pods_is_redirected_and_tracked() {
    let mut h = node();
    let c = SocketAddrV4::new(CLIENT, 40_000);
    let s = SocketAddrV4::new(SERVER, 5201);
    let key = ct_key(c, s, abi::IPPROTO_TCP);

    let syn = h.run(FROM, &tcp(c, s, abi::TCP_SYN, b"")).expect("SYN");
    assert_eq!(syn.verdict, TC_ACT_REDIRECT, "a packet for a local pod goes straight to its device");
    assert_eq!(&syn.packet[0..6], &SERVER_MAC, "destination MAC: the server pod's");
    assert_eq!(&syn.packet[6..12], &NODE_MAC, "source MAC: the node side of the veth");
    let entry = h.ct(&key).expect("a conntrack entry after the SYN");
    assert_eq!(entry.tcp_state, abi::TCP_STATE_SYN_SENT);
    assert_eq!((entry.src_identity, entry.dst_identity), (300, 301));

    let syn_ack = h.run(FROM, &tcp(s, c, abi::TCP_SYN | abi::TCP_ACK, b"")).expect("SYN-ACK");
    assert_eq!(syn_ack.verdict, TC_ACT_REDIRECT);
    assert_eq!(h.ct(&key).expect("entry").tcp_state, abi::TCP_STATE_SYN_RECV);
    assert!(h.ct(&ct_key(s, c, abi::IPPROTO_TCP)).is_none(), "the reply is tracked under the original direction");

    let ack = h.run(FROM, &tcp(c, s, abi::TCP_ACK, b"")).expect("ACK");
    assert_eq!(ack.verdict, TC_ACT_REDIRECT);
    let entry = h.ct(&key).expect("entry");
    assert_eq!(entry.tcp_state, abi::TCP_STATE_ESTABLISHED);
    assert_eq!((entry.fwd_packets, entry.rev_packets), (2, 1));
    assert_eq!(entry.fwd_flags, abi::TCP_SYN | abi::TCP_ACK);
    assert_eq!(entry.rev_flags, abi::TCP_SYN | abi::TCP_ACK);

    // A data packet of the established connection: nothing new to report.
    let data = h.run(FROM, &tcp(c, s, abi::TCP_ACK | abi::TCP_PSH, b"ping")).expect("data");
    assert_eq!(data.verdict, TC_ACT_REDIRECT);

    let events = h.events();
    let traces: Vec<_> = of_kind(&events, abi::EVENT_TRACE)
        .into_iter()
        .map(|e| (e.sub_type, e.ct_state, e.tcp_flags, v4(e.src_addr), e.src_port, e.ifindex, e.endpoint_id))
        .collect();
    assert_eq!(
        traces,
        vec![
            (abi::TRACE_TO_LXC, abi::CT_NEW, abi::TCP_SYN, CLIENT, 40_000, 1, 2),
            (abi::TRACE_TO_LXC, abi::CT_REPLY, abi::TCP_SYN | abi::TCP_ACK, SERVER, 5201, 1, 1),
            (abi::TRACE_TO_LXC, abi::CT_ESTABLISHED, abi::TCP_ACK, CLIENT, 40_000, 1, 2),
            // PSH is a flag the connection had not shown yet (medium
            // aggregation reports newly seen flags).
            (abi::TRACE_TO_LXC, abi::CT_ESTABLISHED, abi::TCP_ACK | abi::TCP_PSH, CLIENT, 40_000, 1, 2),
        ],
        "medium aggregation: a trace for the new connection and for each newly seen flag"
    );
    assert!(of_kind(&events, abi::EVENT_DROP).is_empty(), "nothing dropped: {events:?}");
    assert!(events.iter().all(|e| e.version == abi::ABI_VERSION));
    assert_eq!(h.counter(abi::COUNTER_EVENTS_LOST), 0);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: loads the eBPF probes and runs them with BPF_PROG_TEST_RUN")]
fn policy_drops_a_denied_syn_with_its_reason_and_keeps_no_connection() {
    let mut h = node();
    server_policy(&mut h);
    let s = SocketAddrV4::new(SERVER, 5201);

    // The stranger is not allowed: dropped, and no conntrack entry left.
    let x = SocketAddrV4::new(STRANGER, 41_000);
    let denied = h.run(FROM, &tcp(x, s, abi::TCP_SYN, b"")).expect("stranger's SYN");
    assert_eq!(denied.verdict, TC_ACT_SHOT);
    assert!(h.ct(&ct_key(x, s, abi::IPPROTO_TCP)).is_none(), "a denied connection is forgotten");
    let events = h.events();
    let verdicts = of_kind(&events, abi::EVENT_POLICY_VERDICT);
    let ingress: Vec<_> = verdicts.iter().filter(|e| e.direction == abi::DIR_INGRESS).collect();
    assert_eq!(ingress.len(), 1, "{events:?}");
    assert_eq!((ingress[0].verdict, ingress[0].endpoint_id), (abi::VERDICT_DROPPED, 2));
    let drops = of_kind(&events, abi::EVENT_DROP);
    assert_eq!(drops.len(), 1, "{events:?}");
    let d = drops[0];
    assert_eq!((d.sub_type, d.direction, d.endpoint_id), (abi::DROP_POLICY_DENIED, abi::DIR_INGRESS, 2));
    assert_eq!((d.src_identity, d.dst_identity), (302, 301));
    assert_eq!((v4(d.src_addr), d.src_port, v4(d.dst_addr), d.dst_port), (STRANGER, 41_000, SERVER, 5201));
    assert_eq!(h.counter(abi::COUNTER_POLICY_DENIED), 1);

    // The client is: redirected, tracked, its verdict forwarded.
    let c = SocketAddrV4::new(CLIENT, 40_000);
    let allowed = h.run(FROM, &tcp(c, s, abi::TCP_SYN, b"")).expect("client's SYN");
    assert_eq!(allowed.verdict, TC_ACT_REDIRECT);
    let entry = h.ct(&ct_key(c, s, abi::IPPROTO_TCP)).expect("the allowed connection is tracked");
    assert_eq!(entry.tcp_state, abi::TCP_STATE_SYN_SENT);
    let events = h.events();
    let ingress: Vec<_> =
        of_kind(&events, abi::EVENT_POLICY_VERDICT).into_iter().filter(|e| e.direction == abi::DIR_INGRESS).collect();
    assert_eq!(ingress.len(), 1, "{events:?}");
    assert_eq!(ingress[0].verdict, abi::VERDICT_FORWARDED);
    assert_eq!(ingress[0].match_type, abi::MATCH_L3_L4, "allowed by a peer and a port");
    assert!(of_kind(&events, abi::EVENT_DROP).is_empty());

    // The client on a port the policy does not open: dropped.
    let other = SocketAddrV4::new(SERVER, 9999);
    let wrong_port = h.run(FROM, &tcp(SocketAddrV4::new(CLIENT, 40_001), other, abi::TCP_SYN, b"")).expect("SYN to 9999");
    assert_eq!(wrong_port.verdict, TC_ACT_SHOT);
    let drops: Vec<_> = h.events().into_iter().filter(|e| e.kind == abi::EVENT_DROP).collect();
    assert_eq!(drops.len(), 1);
    assert_eq!(drops[0].sub_type, abi::DROP_POLICY_DENIED);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: loads the eBPF probes and runs them with BPF_PROG_TEST_RUN")]
fn to_container_decides_traffic_from_another_node_by_ipcache_or_tunnel_identity() {
    let mut h = node();
    server_policy(&mut h);
    let s = SocketAddrV4::new(SERVER, 5201);
    let r = SocketAddrV4::new(REMOTE, 42_000);

    // The remote pod's identity (400, from the ipcache) is a role=client pod's.
    let allowed = h.run(TO, &tcp(r, s, abi::TCP_SYN, b"")).expect("remote SYN");
    assert_eq!(allowed.verdict, TC_ACT_OK, "to_container hands allowed packets on");
    let entry = h.ct(&ct_key(r, s, abi::IPPROTO_TCP)).expect("tracked");
    assert_eq!((entry.src_identity, entry.dst_identity), (400, 301));

    // The same packet arriving through the tunnel with the stranger's
    // identity in the mark is decided on that identity, not the ipcache's.
    let r2 = SocketAddrV4::new(REMOTE, 42_001);
    let mark = SkbContext { mark: abi::MARK_TUNNEL_IDENTITY | 302 };
    let denied = h.run_with(TO, &tcp(r2, s, abi::TCP_SYN, b""), Some(&mark), 1).expect("tunnelled SYN");
    assert_eq!(denied.verdict, TC_ACT_SHOT);
    let drops: Vec<_> = h.events().into_iter().filter(|e| e.kind == abi::EVENT_DROP).collect();
    assert_eq!(drops.len(), 1);
    assert_eq!((drops[0].sub_type, drops[0].src_identity, drops[0].src_port), (abi::DROP_POLICY_DENIED, 302, 42_001));

    // Not for a pod of this node: dropped as an unknown target.
    let stray = h.run(TO, &tcp(r, SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 99), 80), abi::TCP_SYN, b"")).expect("stray");
    assert_eq!(stray.verdict, TC_ACT_SHOT);
    let drops: Vec<_> = h.events().into_iter().filter(|e| e.kind == abi::EVENT_DROP).collect();
    assert_eq!(drops.len(), 1);
    assert_eq!(drops[0].sub_type, abi::DROP_UNKNOWN_L3_TARGET);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: loads the eBPF probes and runs them with BPF_PROG_TEST_RUN")]
fn a_service_connection_is_translated_both_ways_with_valid_checksums() {
    let mut h = node();
    let front = SocketAddrV4::new(SERVICE, 80);
    let backend = SocketAddrV4::new(SERVER, 8080);
    h.add_service(front, abi::IPPROTO_TCP, 7, &[backend]).expect("TCP service");
    let c = SocketAddrV4::new(CLIENT, 40_000);

    let syn = h.run(FROM, &tcp(c, front, abi::TCP_SYN, b"")).expect("SYN to the service");
    assert_eq!(syn.verdict, TC_ACT_REDIRECT, "the backend is a local pod");
    let p = parse(&syn.packet).expect("rewritten packet parses");
    assert_eq!((p.src, p.dst), (c, backend), "destination rewritten to the backend");
    assert!(p.ip_checksum_ok, "IP checksum after the rewrite");
    assert!(p.l4_checksum_ok, "TCP checksum after the rewrite");
    let entry = h.ct(&ct_key(c, backend, abi::IPPROTO_TCP)).expect("the translated connection is tracked");
    assert_ne!(entry.flags & abi::CT_FLAG_SERVICE, 0, "marked as translated");

    // The backend's reply leaves with the service as its source.
    let reply = h.run(FROM, &tcp(backend, c, abi::TCP_SYN | abi::TCP_ACK, b"")).expect("SYN-ACK");
    assert_eq!(reply.verdict, TC_ACT_REDIRECT);
    let p = parse(&reply.packet).expect("parses");
    assert_eq!((p.src, p.dst), (front, c), "source rewritten back to the service");
    assert!(p.ip_checksum_ok && p.l4_checksum_ok, "{p:?}");
    // Events name the backend (policy and flows see it, as in Kubernetes).
    let traces: Vec<_> = h.events().into_iter().filter(|e| e.kind == abi::EVENT_TRACE).collect();
    assert_eq!(traces.len(), 2);
    assert_eq!((v4(traces[0].dst_addr), traces[0].dst_port), (SERVER, 8080));
    assert_eq!((v4(traces[1].src_addr), traces[1].src_port, traces[1].ct_state), (SERVER, 8080, abi::CT_REPLY));
    // Both directions name the service port they went through.
    assert_eq!((traces[0].service_id, traces[1].service_id), (7, 7), "events carry the service's number");

    // UDP with a payload of odd length, and its checksum.
    let dns = SocketAddrV4::new(SERVICE, 53);
    let dns_backend = SocketAddrV4::new(SERVER, 5353);
    h.add_service(dns, abi::IPPROTO_UDP, 8, &[dns_backend]).expect("UDP service");
    let q = SocketAddrV4::new(CLIENT, 50_000);
    let query = h.run(FROM, &udp(q, dns, b"query")).expect("UDP to the service");
    assert_eq!(query.verdict, TC_ACT_REDIRECT);
    let p = parse(&query.packet).expect("parses");
    assert_eq!((p.src, p.dst), (q, dns_backend));
    assert!(p.ip_checksum_ok && p.l4_checksum_ok, "{p:?}");
    let answer = h.run(FROM, &udp(dns_backend, q, b"answer!")).expect("UDP reply");
    let p = parse(&answer.packet).expect("parses");
    assert_eq!((p.src, p.dst), (dns, q));
    assert!(p.ip_checksum_ok && p.l4_checksum_ok, "{p:?}");
    let ids: Vec<_> = h.events().into_iter().filter(|e| e.kind == abi::EVENT_TRACE).map(|e| e.service_id).collect();
    assert_eq!(ids, [8, 8], "the UDP service's number, both ways");
    // Traffic between pods, not through a service, carries none.
    h.run(FROM, &udp(SocketAddrV4::new(CLIENT, 50_001), SocketAddrV4::new(SERVER, 5353), b"direct")).expect("direct UDP");
    let ids: Vec<_> = h.events().into_iter().filter(|e| e.kind == abi::EVENT_TRACE).map(|e| e.service_id).collect();
    assert_eq!(ids, [0], "no service on a direct flow");

    // A service without backends: dropped with its reason.
    let empty = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80);
    h.add_service(empty, abi::IPPROTO_TCP, 9, &[]).expect("service without backends");
    let lost = h.run(FROM, &tcp(SocketAddrV4::new(CLIENT, 40_002), empty, abi::TCP_SYN, b"")).expect("SYN");
    assert_eq!(lost.verdict, TC_ACT_SHOT);
    let drops: Vec<_> = h.events().into_iter().filter(|e| e.kind == abi::EVENT_DROP).collect();
    assert_eq!(drops.len(), 1);
    assert_eq!((drops[0].sub_type, v4(drops[0].dst_addr)), (abi::DROP_NO_SERVICE_BACKEND, Ipv4Addr::new(10, 96, 0, 11)));
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: loads the eBPF probes and runs them with BPF_PROG_TEST_RUN")]
fn spoofed_sources_are_dropped_and_traffic_off_the_node_goes_to_the_stack() {
    let mut h = node();
    // A source that is no pod of this node.
    let spoofed = h
        .run(FROM, &tcp(SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 200), 1234), SocketAddrV4::new(SERVER, 5201), abi::TCP_SYN, b""))
        .expect("spoofed");
    assert_eq!(spoofed.verdict, TC_ACT_SHOT);
    let drops: Vec<_> = h.events().into_iter().filter(|e| e.kind == abi::EVENT_DROP).collect();
    assert_eq!(drops.len(), 1);
    assert_eq!((drops[0].sub_type, drops[0].direction), (abi::DROP_INVALID_SOURCE_IP, abi::DIR_EGRESS));

    // To a pod of another node (no tunnel): the node's stack routes it.
    let out = h.run(FROM, &tcp(SocketAddrV4::new(CLIENT, 40_000), SocketAddrV4::new(REMOTE, 80), abi::TCP_SYN, b"")).expect("off-node");
    assert_eq!(out.verdict, TC_ACT_OK);
    let traces: Vec<_> = h.events().into_iter().filter(|e| e.kind == abi::EVENT_TRACE).collect();
    assert_eq!(traces.len(), 1);
    assert_eq!((traces[0].sub_type, traces[0].dst_identity), (abi::TRACE_TO_STACK, 400));

    // A fragment, which the datapath does not reassemble: dropped with
    // its reason, whatever the program.
    let mut fragment = tcp(SocketAddrV4::new(CLIENT, 1), SocketAddrV4::new(SERVER, 2), abi::TCP_SYN, b"");
    fragment[14 + 6] = 0x20; // more fragments (the IP checksum no longer matters)
    for program in [FROM, TO] {
        let r = h.run(program, &fragment).expect("fragment");
        assert_eq!(r.verdict, TC_ACT_SHOT, "{program}");
    }
    let drops: Vec<_> = h.events().into_iter().filter(|e| e.kind == abi::EVENT_DROP).collect();
    let reasons: Vec<_> = drops.iter().map(|d| (d.sub_type, d.direction)).collect();
    assert_eq!(
        reasons,
        vec![(abi::DROP_FRAG_NOT_SUPPORTED, abi::DIR_EGRESS), (abi::DROP_FRAG_NOT_SUPPORTED, abi::DIR_INGRESS)]
    );
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: loads the eBPF probes and runs them with BPF_PROG_TEST_RUN")]
fn garbage_collection_in_the_kernel_deletes_expired_connections_and_counts_the_rest() {
    let mut h = node();
    assert!(h.probes().gc_in_kernel(), "ct_gc loads on this kernel (bpf_for_each_map_elem, Linux ≥ 5.13)");
    let entry = |expires_ns: u64| abi::CtEntry { created_ns: 1, expires_ns, ..abi::CtEntry::default() };
    let key = |port: u16| ct_key(SocketAddrV4::new(CLIENT, port), SocketAddrV4::new(SERVER, 80), abi::IPPROTO_UDP);
    // 3,000 connections: every third expired at 1,000 ns (before the
    // collection at 5,000 ns), the others alive until 9,000 ns; one
    // expires exactly at the collection's time (expired, as the datapath
    // treats it: alive only while `expires_ns > now`).
    for port in 1..=3000u16 {
        let expires = if port % 3 == 0 { 1_000 } else { 9_000 };
        h.probes().ct.insert(key(port), entry(expires), 0).expect("insert");
    }
    h.probes().ct.insert(key(4000), entry(5_000), 0).expect("insert");

    // The program on its own: the counts come back in the buffer.
    let mut packet = vec![0u8; abi::GC_PACKET_LEN];
    packet[abi::GC_NOW_OFFSET..abi::GC_NOW_OFFSET + 8].copy_from_slice(&5_000u64.to_ne_bytes());
    let run = h.run(abi::programs::CT_GC, &packet).expect("run ct_gc");
    assert_eq!(run.verdict, TC_ACT_OK);
    let field = |at: usize| u64::from_ne_bytes(run.packet[at..at + 8].try_into().unwrap());
    assert_eq!((field(abi::GC_DELETED_OFFSET), field(abi::GC_LEFT_OFFSET)), (1001, 2000));
    for port in [3, 2997, 3000, 4000] {
        assert!(h.ct(&key(port)).is_none(), "expired connection {port} deleted");
    }
    for port in [1, 2, 2999] {
        assert!(h.ct(&key(port)).is_some(), "live connection {port} kept");
    }

    // Through the collector's call, later: the rest expire; the map-fill
    // figure takes the count the collection made.
    assert_eq!(h.probes().ct_collect(8_999), (2000, 0));
    assert_eq!(h.probes().ct_collect(9_000), (0, 2000));
    let fill = h.probes().map_fill();
    assert_eq!(fill.iter().find(|f| f.map == abi::maps::CT).map(|f| f.entries), Some(0));
    assert_eq!(h.probes().ct_entries(), 0);
}
