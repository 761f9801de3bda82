//! Datapath events, decoded and checked field by field, from the real probes
//! through the collector's control socket.

use std::time::Duration;

use sightline_collector::decoder::Record;
use sightline_e2e::{Lab, require_root, sightline, two_pods};

/// Events of the connection between `a` and `b` (either direction) on `port`.
fn conversation<'a>(events: &'a [Record], a: &str, b: &str, port: u16) -> Vec<&'a Record> {
    events
        .iter()
        .filter(|r| {
            (r.source.ip == a && r.destination.ip == b && r.destination.port == port)
                || (r.source.ip == b && r.destination.ip == a && r.source.port == port)
        })
        .collect()
}

/// A TCP segment that closes its connection.
fn closes(r: &Record) -> bool {
    r.tcp_flags.iter().any(|f| f == "FIN" || f == "RST")
}

/// Long enough for any event of a finished exchange to reach a subscriber.
const EVENTS_WITHIN: Duration = Duration::from_secs(10);

fn find<'a>(events: &[&'a Record], what: &str, pred: impl Fn(&Record) -> bool) -> &'a Record {
    events.iter().copied().find(|r| pred(r)).unwrap_or_else(|| {
        let all: Vec<String> = events.iter().map(|r| r.summary()).collect();
        panic!("no event for {what}; events:\n{}", all.join("\n"))
    })
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn tcp_connection_and_udp_exchange_field_by_field() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-events", &two_pods(), &["--aggregation", "none"]);
    let (ip_a, ip_b) = (lab.pod_ip("t/a"), lab.pod_ip("t/b"));
    let (id_a, id_b) = (u32::try_from(lab.pod_identity("t/a")).unwrap(), u32::try_from(lab.pod_identity("t/b")).unwrap());
    let (if_a, if_b) = (lab.host_ifname("t/a"), lab.host_ifname("t/b"));
    let mut sub = lab.subscribe();

    assert!(lab.probe("t/a", "t/b", 80, "TCP"));
    assert!(lab.probe("t/a", "t/b", 80, "UDP"));
    // Until the TCP connection is closed and the UDP reply has reached a.
    let events = sub
        .collect_until(EVENTS_WITHIN, |events| {
            let of = conversation(events, &ip_a, &ip_b, 80);
            of.iter().any(|r| r.protocol == "TCP" && closes(r))
                && of.iter().any(|r| r.protocol == "UDP" && r.is_reply && r.observation_point.as_deref() == Some("to-endpoint"))
        })
        .unwrap();
    for r in &events {
        assert_eq!(r.node, "node-1");
        assert!(r.time.ends_with('Z') && r.time_ns > 1_600_000_000_000_000_000, "{}", r.time);
    }

    // --- TCP ---
    let tcp: Vec<&Record> = conversation(&events, &ip_a, &ip_b, 80).into_iter().filter(|r| r.protocol == "TCP").collect();
    let syn = find(&tcp, "SYN from-endpoint", |r| r.kind == "trace" && r.observation_point.as_deref() == Some("from-endpoint") && r.tcp_flags == ["SYN"]);
    assert_eq!(syn.observation_point_id, Some(5));
    assert_eq!(syn.interface.as_deref(), Some(if_a.as_str()));
    assert_eq!((syn.source.identity, syn.destination.identity), (id_a, id_b));
    assert_eq!((syn.source.namespace.as_deref(), syn.source.pod.as_deref()), (Some("t"), Some("a")));
    assert_eq!(syn.destination.pod.as_deref(), Some("b"));
    assert_eq!(syn.ct_state, "new");
    assert!(!syn.is_reply);
    assert_eq!(syn.ip_version, 4);
    assert_eq!((syn.counters.fwd_packets, syn.counters.rev_packets), (1, 0));
    assert_eq!(syn.counters.fwd_bytes, u64::from(syn.pkt_len));
    let client_port = syn.source.port;
    assert!(client_port > 1024);

    let syn_to = find(&tcp, "SYN to-endpoint", |r| r.kind == "trace" && r.observation_point.as_deref() == Some("to-endpoint") && r.tcp_flags == ["SYN"]);
    assert_eq!(syn_to.observation_point_id, Some(101));
    assert_eq!(syn_to.interface.as_deref(), Some(if_b.as_str()));
    assert_eq!(syn_to.ct_state, "new");

    let egress = find(&tcp, "egress policy verdict", |r| r.kind == "policy-verdict" && r.direction == "egress");
    assert_eq!(egress.verdict.as_deref(), Some("forwarded"));
    assert_eq!(egress.interface.as_deref(), Some(if_a.as_str()));
    assert_eq!((egress.source.identity, egress.destination.identity), (id_a, id_b));
    let ingress = find(&tcp, "ingress policy verdict", |r| r.kind == "policy-verdict" && r.direction == "ingress");
    assert_eq!(ingress.interface.as_deref(), Some(if_b.as_str()));
    assert_eq!(tcp.iter().filter(|r| r.kind == "policy-verdict").count(), 2, "verdicts only for the new connection");

    let synack = find(&tcp, "SYN-ACK", |r| r.kind == "trace" && r.observation_point.as_deref() == Some("from-endpoint") && r.tcp_flags == ["SYN", "ACK"]);
    assert_eq!(synack.source.ip, ip_b);
    assert_eq!(synack.destination.port, client_port);
    assert_eq!(synack.ct_state, "reply");
    assert!(synack.is_reply);
    assert_eq!(synack.interface.as_deref(), Some(if_b.as_str()));
    assert_eq!((synack.source.identity, synack.destination.identity), (id_b, id_a));
    assert_eq!((synack.counters.fwd_packets, synack.counters.rev_packets), (1, 1));
    assert_eq!(synack.counters.rev_bytes, u64::from(synack.pkt_len));

    let ack = find(&tcp, "handshake ACK", |r| r.kind == "trace" && r.observation_point.as_deref() == Some("from-endpoint") && r.tcp_flags == ["ACK"] && !r.is_reply);
    assert_eq!(ack.ct_state, "established");
    assert_eq!(ack.counters.fwd_packets, 2);

    // The responder writes "t/b\n" and closes: data and FIN from b.
    let data = find(&tcp, "response data", |r| r.kind == "trace" && r.is_reply && r.tcp_flags.contains(&"PSH".to_owned()));
    assert_eq!(data.pkt_len, 14 + 20 + 32 + 4, "Ethernet + IPv4 + TCP with timestamps + \"t/b\\n\"");
    assert!(tcp.iter().any(|r| r.tcp_flags.iter().any(|f| f == "FIN" || f == "RST")), "the connection is closed");
    // Counters only grow, and the last one counts every from-endpoint packet.
    let from: Vec<&&Record> = tcp.iter().filter(|r| r.observation_point.as_deref() == Some("from-endpoint")).collect();
    let fwd = from.iter().filter(|r| !r.is_reply).count() as u64;
    let rev = from.iter().filter(|r| r.is_reply).count() as u64;
    let last = from.last().unwrap();
    assert_eq!((last.counters.fwd_packets, last.counters.rev_packets), (fwd, rev));
    assert!(from.windows(2).all(|w| w[0].counters.fwd_packets <= w[1].counters.fwd_packets));

    // --- UDP ---
    let udp: Vec<&Record> = conversation(&events, &ip_a, &ip_b, 80).into_iter().filter(|r| r.protocol == "UDP").collect();
    let req = find(&udp, "UDP request", |r| r.kind == "trace" && r.observation_point.as_deref() == Some("from-endpoint") && !r.is_reply);
    assert_eq!(req.ct_state, "new");
    assert!(req.tcp_flags.is_empty());
    assert_eq!((req.counters.fwd_packets, req.counters.rev_packets), (1, 0));
    assert_eq!((req.source.identity, req.destination.identity), (id_a, id_b));
    let reply = find(&udp, "UDP reply", |r| r.kind == "trace" && r.observation_point.as_deref() == Some("from-endpoint") && r.is_reply);
    assert_eq!(reply.ct_state, "reply");
    assert_eq!(reply.pkt_len, 14 + 20 + 8 + 4, "Ethernet + IPv4 + UDP + \"t/b\\n\"");
    assert_eq!((reply.counters.fwd_packets, reply.counters.rev_packets), (1, 1));
    assert_eq!(reply.counters.rev_bytes, 46);
    assert_eq!(reply.counters.fwd_bytes, req.counters.fwd_bytes);
    let reply_to = find(&udp, "UDP reply to-endpoint", |r| r.observation_point.as_deref() == Some("to-endpoint") && r.is_reply);
    assert_eq!(reply_to.interface.as_deref(), Some(if_a.as_str()));
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn kernel_drops_carry_the_kernel_reason() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-kdrop", &two_pods(), &[]);
    let (ip_a, ip_b) = (lab.pod_ip("t/a"), lab.pod_ip("t/b"));
    let mut sub = lab.subscribe();
    // Nobody listens on 9999 in t/b: its kernel drops the SYN (and answers RST).
    assert!(!lab.probe("t/a", "t/b", 9999, "TCP"));
    let events = sub
        .collect_until(EVENTS_WITHIN, |events| events.iter().any(|r| r.kind == "kernel-drop" && r.destination.port == 9999))
        .unwrap();
    let drops: Vec<&Record> = events.iter().filter(|r| r.kind == "kernel-drop").collect();
    let drop = find(&drops, "kernel drop of the SYN to 9999", |r| r.destination.ip == ip_b && r.destination.port == 9999);
    assert_eq!(drop.kernel_reason_name.as_deref(), Some("NO_SOCKET"), "{drop:?}");
    assert_eq!(drop.source.ip, ip_a);
    assert_eq!(drop.protocol, "TCP");
    assert_eq!(drop.tcp_flags, ["SYN"]);
    assert_eq!(drop.verdict.as_deref(), Some("dropped"));
    assert_eq!(drop.source.identity, u32::try_from(lab.pod_identity("t/a")).unwrap());
    assert_eq!(drop.destination.identity, u32::try_from(lab.pod_identity("t/b")).unwrap());
    // The flow API carries the kernel's reason too (in Sightline's flow
    // extension), and `sightline observe` prints it.
    let out = sightline(&["observe", "--lab", &lab.name, "-t", "drop", "--to-port", "9999", "--last", "5"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("Kernel drop: NO_SOCKET DROPPED"), "{text}{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs a 30 MB iperf3 transfer from t/a to t/b and returns the events of
/// the data port.
fn long_transfer(aggregation: &str, lab_name: &str) -> (Vec<Record>, String, String) {
    let lab = Lab::up(lab_name, &two_pods(), &["--aggregation", aggregation]);
    let (ip_a, ip_b) = (lab.pod_ip("t/a"), lab.pod_ip("t/b"));
    let server = lab.exec("t/b", &["iperf3", "-s", "-1", "-D", "-p", "5201"]);
    assert!(server.status.success(), "iperf3 server: {}", String::from_utf8_lossy(&server.stderr));
    lab.wait_listening("t/b", 5201);
    let mut sub = lab.subscribe();
    let client = lab.exec("t/a", &["iperf3", "-c", &ip_b, "-p", "5201", "-n", "30M"]);
    assert!(client.status.success(), "iperf3 client: {}", String::from_utf8_lossy(&client.stdout));
    // Until both connections iperf3 opens (control and data) are closed.
    let events = sub
        .collect_until(EVENTS_WITHIN, |events| {
            let of = conversation(events, &ip_a, &ip_b, 5201);
            let opened: Vec<u16> = of.iter().filter(|r| r.tcp_flags == ["SYN"]).map(|r| r.source.port).collect();
            opened.len() >= 2
                && opened.iter().all(|port| of.iter().any(|r| (r.source.port == *port || r.destination.port == *port) && closes(r)))
        })
        .unwrap();
    let events = conversation(&events, &ip_a, &ip_b, 5201).into_iter().cloned().collect();
    (events, ip_a, ip_b)
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn medium_aggregation_emits_far_fewer_events_and_keeps_first_packets() {
    if !require_root() {
        return;
    }
    let (none, _, _) = long_transfer("none", "e2e-aggr-none");
    let (medium, ip_a, _) = long_transfer("medium", "e2e-aggr-med");
    let none_traces = none.iter().filter(|r| r.kind == "trace").count();
    let medium_traces = medium.iter().filter(|r| r.kind == "trace").count();
    assert!(none_traces > 200, "a long transfer makes many traces without aggregation ({none_traces})");
    assert!(medium_traces * 10 < none_traces, "medium {medium_traces} vs none {none_traces}");
    // No from-endpoint traces at medium, like Cilium.
    assert!(!medium.is_empty() && medium.iter().all(|r| r.observation_point.as_deref() != Some("from-endpoint")));
    // The first packets of every connection are there: SYN, SYN-ACK, ACK.
    let syns: Vec<&Record> = medium.iter().filter(|r| r.kind == "trace" && r.tcp_flags == ["SYN"]).collect();
    assert!(syns.len() >= 2, "iperf3 opens a control and a data connection");
    for syn in syns {
        assert_eq!(syn.source.ip, ip_a);
        assert_eq!(syn.ct_state, "new");
        let port = syn.source.port;
        let of_conn: Vec<&Record> = medium.iter().filter(|r| r.source.port == port || r.destination.port == port).collect();
        assert!(of_conn.iter().any(|r| r.tcp_flags == ["SYN", "ACK"] && r.is_reply), "SYN-ACK of {port}");
        assert!(of_conn.iter().any(|r| r.tcp_flags == ["ACK"] && !r.is_reply && r.ct_state == "established"), "ACK of {port}");
        assert!(of_conn.iter().any(|r| r.tcp_flags.iter().any(|f| f == "FIN" || f == "RST")), "close of {port}");
    }
    // Drops and verdicts are never aggregated: both verdicts per connection.
    assert!(medium.iter().filter(|r| r.kind == "policy-verdict").count() >= 4);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn icmp_echo_is_tracked_and_connections_expire() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-ct", &two_pods(), &["--aggregation", "none", "--ct-timeouts", "other=1s,closing=1s", "--ct-gc-interval", "300ms"]);
    let (ip_a, ip_b) = (lab.pod_ip("t/a"), lab.pod_ip("t/b"));
    assert_eq!(lab.collector_status().ct_entries, 0);

    // Two echo requests with one identifier: one connection.
    let mut sub = lab.subscribe();
    let out = lab.exec("t/a", &["ping", "-c", "2", "-i", "0.2", "-W", "1", &ip_b]);
    assert!(out.status.success(), "ping: {}", String::from_utf8_lossy(&out.stdout));
    let from_endpoint_icmp = |r: &Record| r.protocol == "ICMPv4" && r.kind == "trace" && r.observation_point.as_deref() == Some("from-endpoint");
    let events = sub.collect_until(EVENTS_WITHIN, |events| events.iter().filter(|r| from_endpoint_icmp(r)).count() >= 4).unwrap();
    let icmp: Vec<&Record> = events
        .iter()
        .filter(|r| from_endpoint_icmp(r))
        .collect();
    let states: Vec<(Option<u8>, &str, &str)> = icmp.iter().map(|r| (r.icmp_type, r.ct_state.as_str(), r.source.ip.as_str())).collect();
    assert_eq!(
        states,
        [
            (Some(8), "new", ip_a.as_str()),
            (Some(0), "reply", ip_b.as_str()),
            (Some(8), "established", ip_a.as_str()),
            (Some(0), "reply", ip_b.as_str())
        ],
        "{icmp:?}"
    );
    assert_eq!((icmp[3].counters.fwd_packets, icmp[3].counters.rev_packets), (2, 2));
    assert!(lab.collector_status().ct_entries >= 1);

    // After the lifetime, garbage collection removes it…
    sightline_e2e::wait_until("expired connections to be collected", Duration::from_secs(20), || {
        (lab.collector_status().ct_entries == 0).then_some(())
    });
    // …and a flow that resumes after its lifetime starts over as new.
    let mut sub = lab.subscribe();
    let out = lab.exec("t/a", &["ping", "-c", "2", "-i", "1.6", "-W", "1", &ip_b]);
    assert!(out.status.success());
    let request = |r: &Record| r.protocol == "ICMPv4" && r.icmp_type == Some(8) && r.observation_point.as_deref() == Some("from-endpoint");
    let events = sub.collect_until(EVENTS_WITHIN, |events| events.iter().filter(|r| request(r)).count() >= 2).unwrap();
    let requests: Vec<&Record> = events.iter().filter(|r| request(r)).collect();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.ct_state == "new" && r.counters.fwd_packets == 1), "{requests:?}");
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn medium_aggregation_reports_the_first_packet_of_each_direction() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-aggr-udp", &two_pods(), &["--aggregation", "medium"]);
    let (ip_a, ip_b) = (lab.pod_ip("t/a"), lab.pod_ip("t/b"));
    let mut sub = lab.subscribe();
    assert!(lab.probe("t/a", "t/b", 80, "UDP"));
    let events = sub
        .collect_until(EVENTS_WITHIN, |events| {
            conversation(events, &ip_a, &ip_b, 80).iter().any(|r| r.kind == "trace" && r.ct_state == "reply")
        })
        .unwrap();
    let udp: Vec<&Record> = conversation(&events, &ip_a, &ip_b, 80).into_iter().filter(|r| r.kind == "trace").collect();
    let seen: Vec<(&str, &str)> = udp.iter().map(|r| (r.observation_point.as_deref().unwrap(), r.ct_state.as_str())).collect();
    assert_eq!(seen, [("to-endpoint", "new"), ("to-endpoint", "reply")], "{udp:?}");
}
