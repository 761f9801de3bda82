//! End-to-end tests of the handlers on hand-built flows: metric names,
//! label names in order and label values, read back from the OpenMetrics
//! output exactly as Prometheus would scrape it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use sightline_abi as abi;
use sightline_proto::flow::LostEventSource;

use super::*;
use crate::metadata::PodMeta;
use crate::flow::Side;

// ---------------------------------------------------------------------------
// Allocation counting, to check that `observe` allocates nothing for
// existing series. Counts only the current thread.

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// ---------------------------------------------------------------------------
// Flows.

fn labels(l: &[&str]) -> Arc<[String]> {
    l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>().into()
}

fn pod(namespace: &str, name: &str, app_labels: &[&str]) -> Arc<PodMeta> {
    let mut l = vec![format!("k8s:io.kubernetes.pod.namespace={namespace}")];
    l.extend(app_labels.iter().map(|s| (*s).to_owned()));
    Arc::new(PodMeta {
        namespace: namespace.into(),
        name: name.into(),
        endpoint_id: 1,
        identity: 1000,
        labels: l.into(),
        node: "node-1".into(),
    })
}

fn side(ip: [u8; 4], port: u16, identity: u32, pod: Option<Arc<PodMeta>>) -> Side {
    Side {
        ip: IpAddr::V4(Ipv4Addr::from(ip)),
        port,
        identity,
        pod,
        identity_labels: None,
    }
}

fn world(ip: [u8; 4], port: u16) -> Side {
    Side {
        identity_labels: Some(labels(&["reserved:world", "cidr:192.0.2.0/24"])),
        ..side(ip, port, abi::IDENTITY_WORLD, None)
    }
}

/// A forwarded TCP SYN traced to-endpoint, from `x/client-…` to `y/server-…`.
fn flow() -> Flow {
    Flow {
        time_ns: 1_700_000_000_000_000_000,
        seq: 1,
        source: side(
            [10, 244, 1, 2],
            40000,
            1000,
            Some(pod("x", "client-7d4b9c8f6-x2x9z", &["k8s:app=client"])),
        ),
        destination: side(
            [10, 244, 1, 3],
            8080,
            1001,
            Some(pod("y", "server-0", &["k8s:k8s-app=server"])),
        ),
        verdict: 1,
        drop_reason: 0,
        kernel_drop_reason: 0,
        kernel_drop_reason_name: None,
        event_type: 4,
        event_sub_type: abi::TRACE_TO_LXC,
        trace_observation_point: 101,
        trace_reason: 1,
        is_reply: Some(false),
        traffic_direction: 2,
        policy_match_type: 0,
        protocol: abi::IPPROTO_TCP,
        tcp_flags: abi::TCP_SYN,
        icmp_type: 0,
        icmp_code: 0,
        ip_version: 4,
        ifindex: 7,
        interface: None,
        allowed_by: None,
        denied_by: None,
        counters: [0; 4],
        source_service: None,
        destination_service: None,
        source_xlated: None,
    }
}

fn drop_flow(reason: u16) -> Flow {
    Flow {
        verdict: 2,
        drop_reason: reason,
        event_type: 1,
        event_sub_type: reason as u8,
        is_reply: None,
        ..flow()
    }
}

fn policy_flow(direction: u8, matched: u8, verdict: u8) -> Flow {
    Flow {
        event_type: 5,
        event_sub_type: 0,
        traffic_direction: direction,
        policy_match_type: matched,
        verdict,
        ..flow()
    }
}

fn icmp_flow(v6: bool, t: u8, c: u8) -> Flow {
    let mut f = Flow {
        protocol: if v6 {
            abi::IPPROTO_ICMPV6
        } else {
            abi::IPPROTO_ICMP
        },
        icmp_type: t,
        icmp_code: c,
        tcp_flags: 0,
        ..flow()
    };
    f.source.port = 0;
    f.destination.port = 0;
    if v6 {
        f.ip_version = 6;
        f.source.ip = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
        f.destination.ip = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3));
    }
    f
}

// ---------------------------------------------------------------------------
// Reading the output.

fn metrics(list: &str) -> Metrics {
    Metrics::new(
        &MetricsConfig::parse(list).unwrap(),
        DEFAULT_MAX_SERIES_PER_METRIC,
    )
    .unwrap()
}

/// The sample lines of one metric (`name{…} value`), sorted.
fn samples(m: &Metrics, metric: &str) -> Vec<String> {
    let text = m.encode();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn observe_all(m: &Metrics, flows: &[Flow]) {
    for f in flows {
        m.observe(f);
    }
}

// ---------------------------------------------------------------------------
// Handlers.

#[test]
fn flow_counts_every_flow_by_protocol_type_subtype_verdict() {
    let m = metrics("flow");
    let mut unknown = Flow {
        event_type: 0,
        verdict: 9,
        ..flow()
    };
    unknown.protocol = 47;
    observe_all(
        &m,
        &[
            flow(),
            flow(),
            Flow {
                event_sub_type: abi::TRACE_FROM_LXC,
                ..flow()
            },
            Flow {
                event_sub_type: 200,
                ..flow()
            },
            Flow {
                protocol: abi::IPPROTO_UDP,
                ..flow()
            },
            Flow {
                protocol: 47,
                ..flow()
            },
            drop_flow(133),
            policy_flow(2, 2, 4),
            icmp_flow(true, 128, 0),
            unknown,
        ],
    );
    assert_eq!(
        m.label_names(names::FLOWS_PROCESSED).unwrap(),
        ["protocol", "type", "subtype", "verdict"]
    );
    assert_eq!(
        samples(&m, names::FLOWS_PROCESSED),
        [
            r#"hubble_flows_processed_total{protocol="ICMPv6",type="Trace",subtype="to-endpoint",verdict="FORWARDED"} 1"#,
            r#"hubble_flows_processed_total{protocol="TCP",type="Drop",subtype="",verdict="DROPPED"} 1"#,
            r#"hubble_flows_processed_total{protocol="TCP",type="PolicyVerdict",subtype="",verdict="AUDIT"} 1"#,
            r#"hubble_flows_processed_total{protocol="TCP",type="Trace",subtype="",verdict="FORWARDED"} 1"#,
            r#"hubble_flows_processed_total{protocol="TCP",type="Trace",subtype="from-endpoint",verdict="FORWARDED"} 1"#,
            r#"hubble_flows_processed_total{protocol="TCP",type="Trace",subtype="to-endpoint",verdict="FORWARDED"} 2"#,
            r#"hubble_flows_processed_total{protocol="UDP",type="Trace",subtype="to-endpoint",verdict="FORWARDED"} 1"#,
            r#"hubble_flows_processed_total{protocol="Unknown L4",type="Trace",subtype="to-endpoint",verdict="FORWARDED"} 1"#,
            r#"hubble_flows_processed_total{protocol="Unknown flow",type="Unknown",subtype="0",verdict="9"} 1"#,
        ]
    );
}

#[test]
fn drop_counts_drops_by_reason_and_protocol() {
    let m = metrics("drop:sourceContext=pod");
    let kernel = Flow {
        kernel_drop_reason: 2,
        kernel_drop_reason_name: Some(Arc::from("NOT_SPECIFIED")),
        ..drop_flow(0)
    };
    observe_all(
        &m,
        &[
            drop_flow(133),
            drop_flow(133),
            drop_flow(181),
            kernel,
            drop_flow(1),
            flow(),
        ],
    );
    assert_eq!(
        m.label_names(names::DROP).unwrap(),
        ["source", "reason", "protocol"]
    );
    assert_eq!(
        samples(&m, names::DROP),
        [
            r#"hubble_drop_total{source="x/client-7d4b9c8f6-x2x9z",reason="1",protocol="TCP"} 1"#,
            r#"hubble_drop_total{source="x/client-7d4b9c8f6-x2x9z",reason="DROP_REASON_UNKNOWN",protocol="TCP"} 1"#,
            r#"hubble_drop_total{source="x/client-7d4b9c8f6-x2x9z",reason="POLICY_DENIED",protocol="TCP"} 2"#,
            r#"hubble_drop_total{source="x/client-7d4b9c8f6-x2x9z",reason="POLICY_DENY",protocol="TCP"} 1"#,
        ]
    );
}

#[test]
fn tcp_counts_flags_of_forwarded_tcp() {
    let m = metrics("tcp:destinationContext=namespace");
    let v6 = Flow {
        ip_version: 6,
        ..flow()
    };
    observe_all(
        &m,
        &[
            flow(),
            Flow {
                tcp_flags: abi::TCP_SYN | abi::TCP_ACK,
                is_reply: Some(true),
                ..flow()
            },
            Flow {
                tcp_flags: abi::TCP_FIN | abi::TCP_ACK | abi::TCP_RST,
                ..flow()
            },
            Flow {
                tcp_flags: abi::TCP_ACK,
                ..flow()
            },
            Flow {
                verdict: 5,
                ..flow()
            },
            v6,
            Flow {
                tcp_flags: abi::TCP_SYN,
                ..drop_flow(133)
            },
            Flow {
                protocol: abi::IPPROTO_UDP,
                ..flow()
            },
        ],
    );
    assert_eq!(
        m.label_names(names::TCP_FLAGS).unwrap(),
        ["flag", "family", "destination"]
    );
    assert_eq!(
        samples(&m, names::TCP_FLAGS),
        [
            r#"hubble_tcp_flags_total{flag="FIN",family="IPv4",destination="y"} 1"#,
            r#"hubble_tcp_flags_total{flag="RST",family="IPv4",destination="y"} 1"#,
            r#"hubble_tcp_flags_total{flag="SYN",family="IPv4",destination="y"} 2"#,
            r#"hubble_tcp_flags_total{flag="SYN",family="IPv6",destination="y"} 1"#,
            r#"hubble_tcp_flags_total{flag="SYN-ACK",family="IPv4",destination="y"} 1"#,
        ]
    );
}

#[test]
fn port_distribution_counts_forwarded_requests_by_destination_port() {
    let m = metrics("port-distribution");
    observe_all(
        &m,
        &[
            flow(),
            Flow {
                is_reply: Some(true),
                ..flow()
            },
            Flow {
                is_reply: None,
                ..flow()
            },
            drop_flow(133),
            Flow {
                protocol: abi::IPPROTO_UDP,
                ..flow()
            },
            Flow {
                protocol: abi::IPPROTO_SCTP,
                verdict: 5,
                ..flow()
            },
            Flow {
                protocol: 47,
                ..flow()
            },
            icmp_flow(false, 8, 0),
            icmp_flow(true, 128, 0),
        ],
    );
    assert_eq!(
        m.label_names(names::PORT_DISTRIBUTION).unwrap(),
        ["protocol", "port"]
    );
    assert_eq!(
        samples(&m, names::PORT_DISTRIBUTION),
        [
            r#"hubble_port_distribution_total{protocol="ICMPv4",port="0"} 1"#,
            r#"hubble_port_distribution_total{protocol="ICMPv6",port="0"} 1"#,
            r#"hubble_port_distribution_total{protocol="SCTP",port="8080"} 1"#,
            r#"hubble_port_distribution_total{protocol="TCP",port="8080"} 1"#,
            r#"hubble_port_distribution_total{protocol="UDP",port="8080"} 1"#,
        ]
    );
}

#[test]
fn icmp_counts_messages_by_family_and_type() {
    let m = metrics("icmp");
    observe_all(
        &m,
        &[
            icmp_flow(false, 8, 0),
            icmp_flow(false, 3, 3),
            Flow {
                verdict: 2,
                ..icmp_flow(false, 0, 0)
            },
            icmp_flow(true, 129, 0),
            flow(),
        ],
    );
    assert_eq!(m.label_names(names::ICMP).unwrap(), ["family", "type"]);
    assert_eq!(
        samples(&m, names::ICMP),
        [
            r#"hubble_icmp_total{family="IPv4",type="DestinationUnreachable(Port)"} 1"#,
            r#"hubble_icmp_total{family="IPv4",type="EchoReply"} 1"#,
            r#"hubble_icmp_total{family="IPv4",type="EchoRequest"} 1"#,
            r#"hubble_icmp_total{family="IPv6",type="EchoReply"} 1"#,
        ]
    );
}

#[test]
fn policy_counts_policy_verdicts_except_from_host() {
    let m = metrics("policy:sourceContext=namespace");
    let mut from_host = policy_flow(1, 1, 1);
    from_host.source = side([10, 0, 0, 1], 0, abi::IDENTITY_HOST, None);
    observe_all(
        &m,
        &[
            policy_flow(2, 2, 1),
            policy_flow(1, 0, 2),
            policy_flow(1, 1, 4),
            policy_flow(0, 3, 1),
            policy_flow(2, 4, 1),
            policy_flow(2, 9, 1),
            from_host,
            flow(),
            drop_flow(133),
        ],
    );
    assert_eq!(
        m.label_names(names::POLICY_VERDICTS).unwrap(),
        ["direction", "match", "action", "source"]
    );
    assert_eq!(
        samples(&m, names::POLICY_VERDICTS),
        [
            r#"hubble_policy_verdicts_total{direction="egress",match="all",action="forwarded",source="x"} 1"#,
            r#"hubble_policy_verdicts_total{direction="egress",match="l3-l4",action="forwarded",source="x"} 1"#,
            r#"hubble_policy_verdicts_total{direction="egress",match="unknown",action="forwarded",source="x"} 1"#,
            r#"hubble_policy_verdicts_total{direction="ingress",match="l3-only",action="audit",source="x"} 1"#,
            r#"hubble_policy_verdicts_total{direction="ingress",match="none",action="dropped",source="x"} 1"#,
            r#"hubble_policy_verdicts_total{direction="traffic_direction_unknown",match="l4-only",action="forwarded",source="x"} 1"#,
        ]
    );
}

#[test]
fn flows_to_world_counts_new_flows_to_reserved_world() {
    let to_world = |f: Flow| Flow {
        destination: world([192, 0, 2, 1], 443),
        ..f
    };
    let m = metrics("flows-to-world");
    observe_all(
        &m,
        &[
            to_world(flow()),
            to_world(Flow {
                tcp_flags: abi::TCP_ACK,
                ..flow()
            }),
            to_world(Flow {
                is_reply: Some(true),
                ..flow()
            }),
            to_world(drop_flow(133)),
            to_world(drop_flow(181)),
            to_world(Flow {
                protocol: abi::IPPROTO_UDP,
                ..flow()
            }),
            to_world(Flow {
                protocol: 47,
                ..flow()
            }),
            flow(),
        ],
    );
    assert_eq!(
        m.label_names(names::FLOWS_TO_WORLD).unwrap(),
        ["protocol", "verdict"]
    );
    assert_eq!(
        samples(&m, names::FLOWS_TO_WORLD),
        [
            r#"hubble_flows_to_world_total{protocol="TCP",verdict="DROPPED"} 1"#,
            r#"hubble_flows_to_world_total{protocol="TCP",verdict="FORWARDED"} 2"#,
            r#"hubble_flows_to_world_total{protocol="UDP",verdict="FORWARDED"} 1"#,
        ]
    );

    // any-drop, port, syn-only; world by identity alone or by label alone.
    let m =
        metrics("flows-to-world:any-drop;port;syn-only;destinationContext=reserved-identity|ip");
    let mut by_identity = flow();
    by_identity.destination = side([198, 51, 100, 7], 80, abi::IDENTITY_WORLD, None);
    let mut by_label = flow();
    by_label.destination = Side {
        identity: 16_777_217,
        ..world([192, 0, 2, 9], 443)
    };
    observe_all(
        &m,
        &[
            to_world(flow()),
            to_world(Flow {
                tcp_flags: abi::TCP_ACK,
                ..flow()
            }),
            to_world(Flow {
                protocol: abi::IPPROTO_UDP,
                tcp_flags: 0,
                ..flow()
            }),
            to_world(Flow {
                tcp_flags: abi::TCP_SYN,
                ..drop_flow(181)
            }),
            by_identity,
            by_label,
        ],
    );
    assert_eq!(
        m.label_names(names::FLOWS_TO_WORLD).unwrap(),
        ["protocol", "verdict", "port", "destination"]
    );
    assert_eq!(
        samples(&m, names::FLOWS_TO_WORLD),
        [
            r#"hubble_flows_to_world_total{protocol="TCP",verdict="DROPPED",port="443",destination="reserved:world"} 1"#,
            r#"hubble_flows_to_world_total{protocol="TCP",verdict="FORWARDED",port="443",destination="reserved:world"} 2"#,
            r#"hubble_flows_to_world_total{protocol="TCP",verdict="FORWARDED",port="80",destination="198.51.100.7"} 1"#,
        ]
    );
}

// ---------------------------------------------------------------------------
// Contexts.

#[test]
fn source_and_destination_contexts() {
    let cases = [
        ("pod", "pod", "x/client-7d4b9c8f6-x2x9z", "y/server-0"),
        ("pod-short", "pod-short", "x/client", "y/server"),
        ("pod-name", "namespace", "client-7d4b9c8f6-x2x9z", "y"),
        ("app", "app", "client", "server"),
        (
            "identity",
            "ip",
            "k8s:app=client,k8s:io.kubernetes.pod.namespace=x",
            "10.244.1.3",
        ),
        (
            "dns|workload|reserved-identity",
            "dns|workload-name",
            "",
            "",
        ),
        ("dns|ip", "workload|pod", "10.244.1.2", "y/server-0"),
    ];
    for (source, destination, want_source, want_destination) in cases {
        let m = metrics(&format!(
            "drop:sourceContext={source};destinationContext={destination}"
        ));
        m.observe(&drop_flow(133));
        assert_eq!(
            samples(&m, names::DROP),
            [format!(
                r#"hubble_drop_total{{source="{want_source}",destination="{want_destination}",reason="POLICY_DENIED",protocol="TCP"}} 1"#
            )],
            "sourceContext={source};destinationContext={destination}"
        );
    }

    // Non-pod endpoints: reserved identity, identity labels sorted, the
    // first non-empty context.
    let m = metrics("drop:sourceContext=pod|reserved-identity;destinationContext=identity");
    let mut f = drop_flow(133);
    f.source = world([192, 0, 2, 1], 1234);
    f.destination = Side {
        identity_labels: Some(labels(&["reserved:host", "reserved:kube-apiserver"])),
        ..f.destination
    };
    f.destination.pod = None;
    m.observe(&f);
    f.source.identity_labels = Some(labels(&["reserved:world", "reserved:kube-apiserver"]));
    m.observe(&f);
    assert_eq!(
        samples(&m, names::DROP),
        [
            r#"hubble_drop_total{source="reserved:kube-apiserver",destination="reserved:host,reserved:kube-apiserver",reason="POLICY_DENIED",protocol="TCP"} 1"#,
            r#"hubble_drop_total{source="reserved:world",destination="reserved:host,reserved:kube-apiserver",reason="POLICY_DENIED",protocol="TCP"} 1"#,
        ]
    );
}

#[test]
fn labels_context_in_the_fixed_order_then_source_and_destination() {
    let all = "traffic_direction,destination_app,destination_workload,destination_namespace,destination_pod,\
               destination_ip,source_app,source_workload,source_namespace,source_pod,source_ip";
    let m = metrics(&format!(
        "flow:destinationContext=pod-short;labelsContext={all};sourceContext=namespace"
    ));
    m.observe(&flow());
    assert_eq!(
        m.label_names(names::FLOWS_PROCESSED).unwrap(),
        [
            "protocol",
            "type",
            "subtype",
            "verdict",
            "source_ip",
            "source_pod",
            "source_namespace",
            "source_workload",
            "source_app",
            "destination_ip",
            "destination_pod",
            "destination_namespace",
            "destination_workload",
            "destination_app",
            "traffic_direction",
            "source",
            "destination",
        ]
    );
    assert_eq!(
        samples(&m, names::FLOWS_PROCESSED),
        [concat!(
            r#"hubble_flows_processed_total{protocol="TCP",type="Trace",subtype="to-endpoint",verdict="FORWARDED","#,
            r#"source_ip="10.244.1.2",source_pod="client-7d4b9c8f6-x2x9z",source_namespace="x",source_workload="",source_app="client","#,
            r#"destination_ip="10.244.1.3",destination_pod="server-0",destination_namespace="y",destination_workload="",destination_app="server","#,
            r#"traffic_direction="egress",source="x",destination="y/server"} 1"#
        )]
    );

    // traffic_direction of an unknown direction.
    let m = metrics("drop:labelsContext=traffic_direction");
    m.observe(&Flow {
        traffic_direction: 0,
        ..drop_flow(133)
    });
    m.observe(&Flow {
        traffic_direction: 1,
        ..drop_flow(133)
    });
    assert_eq!(
        samples(&m, names::DROP),
        [
            r#"hubble_drop_total{traffic_direction="ingress",reason="POLICY_DENIED",protocol="TCP"} 1"#,
            r#"hubble_drop_total{traffic_direction="unknown",reason="POLICY_DENIED",protocol="TCP"} 1"#,
        ]
    );
}

#[test]
fn label_values_are_escaped() {
    let m = metrics("drop:sourceContext=identity");
    let mut f = drop_flow(133);
    f.source.pod = None;
    f.source.identity_labels = Some(labels(&["k8s:a=\"quoted\"\\", "k8s:b=line\nbreak"]));
    m.observe(&f);
    assert_eq!(
        samples(&m, names::DROP),
        [
            r#"hubble_drop_total{source="k8s:a=\"quoted\"\\,k8s:b=line\nbreak",reason="POLICY_DENIED",protocol="TCP"} 1"#
        ]
    );
}

// ---------------------------------------------------------------------------
// Cardinality, deletion, lost events, output format.

#[test]
fn series_cap_refuses_and_counts() {
    let config = MetricsConfig::parse("flow:sourceContext=pod drop").unwrap();
    let m = Metrics::new(&config, 2).unwrap();
    for i in 0..5 {
        let mut f = flow();
        f.source.pod = Some(pod("x", &format!("p{i}"), &[]));
        m.observe(&f);
    }
    m.observe(&flow());
    assert_eq!(m.series_count(names::FLOWS_PROCESSED), Some(2));
    assert_eq!(
        samples(&m, names::SERIES_REFUSED),
        [
            r#"sightline_metrics_series_refused_total{metric="hubble_drop_total"} 0"#,
            r#"sightline_metrics_series_refused_total{metric="hubble_flows_processed_total"} 4"#,
        ]
    );
    assert!(matches!(
        Metrics::new(&config, 0),
        Err(MetricsError::ZeroSeriesCap)
    ));
}

#[test]
fn delete_pod_removes_the_series_that_name_it() {
    let m = metrics(
        "flow:sourceContext=pod;destinationContext=pod drop:labelsContext=source_pod,source_namespace \
         tcp:sourceContext=namespace",
    );
    observe_all(&m, &[flow(), drop_flow(133)]);
    let mut other = flow();
    other.source.pod = Some(pod("x", "other", &[]));
    m.observe(&other);
    // flow: client trace, client drop, other trace.
    assert_eq!(m.series_count(names::FLOWS_PROCESSED), Some(3));
    assert_eq!(m.delete_pod("x", "client-7d4b9c8f6-x2x9z"), 3); // 2 flow + 1 drop
    assert_eq!(m.series_count(names::FLOWS_PROCESSED), Some(1));
    assert_eq!(m.series_count(names::DROP), Some(0));
    assert_eq!(
        m.series_count(names::TCP_FLAGS),
        Some(1),
        "a namespace context names no pod"
    );
    // As destination.
    assert_eq!(m.delete_pod("y", "server-0"), 1);
    assert_eq!(m.series_count(names::FLOWS_PROCESSED), Some(0));
    assert_eq!(m.delete_pod("nope", "nope"), 0);
}

#[test]
fn pod_deletion_hooks_run_with_the_hubble_deletions() {
    let mut m = metrics("flow:sourceContext=pod");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    m.on_pod_deletion(Box::new(move |namespace, pod| {
        log.lock().unwrap().push(format!("{namespace}/{pod}"));
        2
    }));
    m.observe(&flow());
    assert_eq!(m.delete_pod("x", "client-7d4b9c8f6-x2x9z"), 1 + 2);
    assert_eq!(m.delete_pod("x", "gone"), 2);
    assert_eq!(*seen.lock().unwrap(), ["x/client-7d4b9c8f6-x2x9z", "x/gone"]);
}

#[test]
fn lost_events_are_always_registered() {
    let m = metrics("drop");
    m.lost_events("perf_event_ring_buffer", 3);
    m.lost_events("HUBBLE_RING_BUFFER", 2);
    m.lost(LostEventSource::ObserverEventsQueue, 1);
    assert_eq!(
        samples(&m, names::LOST_EVENTS),
        [
            r#"hubble_lost_events_total{source="hubble_ring_buffer"} 2"#,
            r#"hubble_lost_events_total{source="observer_events_queue"} 1"#,
            r#"hubble_lost_events_total{source="perf_event_ring_buffer"} 3"#,
        ]
    );
    m.lost_events("bogus", 1);
    assert!(
        samples(&m, names::LOST_EVENTS).contains(
            &r#"hubble_lost_events_total{source="unknown_lost_event_source"} 1"#.to_owned()
        )
    );
}

#[test]
fn default_handlers_and_the_agents_own_metrics_share_the_output() {
    let mut m = Metrics::new(&MetricsConfig::default(), DEFAULT_MAX_SERIES_PER_METRIC).unwrap();
    let own = prometheus_client::metrics::counter::Counter::<u64>::default();
    m.registry_mut()
        .register("sightline_flows_stored", "Flows stored", own.clone());
    own.inc();
    let text = m.encode();
    assert!(text.ends_with("# EOF\n"), "{text}");
    for metric in [
        names::DROP,
        names::TCP_FLAGS,
        names::FLOWS_PROCESSED,
        names::PORT_DISTRIBUTION,
        names::ICMP,
    ] {
        assert!(
            text.contains(&format!("# TYPE {} counter\n", names::family_name(metric))),
            "{metric}: {text}"
        );
    }
    assert!(!text.contains("hubble_policy"), "{text}");
    assert!(text.contains("sightline_flows_stored_total 1\n"), "{text}");
}

#[test]
#[cfg_attr(not(sightline_promtool), ignore = "needs promtool (Debian's prometheus; scripts/setup.sh installs it)")]
fn output_passes_promtool() {
    let promtool = std::path::Path::new("/usr/bin/promtool");
    assert!(promtool.exists(), "/usr/bin/promtool is not installed");
    let m = metrics(
        "flow:sourceContext=pod;destinationContext=pod-short;labelsContext=source_namespace,traffic_direction \
         drop:sourceContext=identity tcp port-distribution icmp policy flows-to-world:port;any-drop",
    );
    let mut f = drop_flow(133);
    f.source.identity_labels = Some(labels(&["k8s:a=\"q\"", "k8s:b=x\ny"]));
    f.source.pod = None;
    observe_all(
        &m,
        &[
            flow(),
            f,
            policy_flow(2, 2, 1),
            icmp_flow(true, 128, 0),
            icmp_flow(false, 3, 3),
        ],
    );
    m.lost_events("hubble_ring_buffer", 1);
    let text = m.encode();
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "promtool check metrics: {}\n{}{}\n--- input ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 1 is a parse error; 3 means lint findings. promtool lints with
    // the Prometheus *text* parser, which does not know that an OpenMetrics
    // counter family `x` (the one with `# HELP x`) has `x_total` samples,
    // so it reports "x_total no help text" for every counter: that finding,
    // for families that do have help, is the only one allowed.
    match out.status.code() {
        Some(0) => {}
        Some(3) => {
            for line in String::from_utf8_lossy(&out.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&out.stderr).lines())
            {
                let family = line.strip_suffix("_total no help text");
                assert!(
                    family.is_some_and(|f| text.contains(&format!("# HELP {f} "))
                        && text.contains(&format!("# TYPE {f} counter\n"))),
                    "unexpected finding {line:?}\n{report}"
                );
            }
        }
        _ => panic!("{report}"),
    }

    // The OpenMetrics structure promtool does not check: every sample
    // belongs to the family declared before it, and `# EOF` ends the text.
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut family = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(kind, "counter", "{line}");
            family = name;
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(name, format!("{family}_total"), "{line}");
        }
    }
}

#[test]
fn observe_allocates_nothing_for_existing_series() {
    let m = metrics(
        "flow:sourceContext=pod|ip;destinationContext=pod-short;labelsContext=source_ip,source_app,destination_pod,traffic_direction \
         drop:sourceContext=identity;destinationContext=reserved-identity tcp:sourceContext=app port-distribution \
         icmp:destinationContext=ip policy:sourceContext=namespace flows-to-world:port;any-drop;destinationContext=ip",
    );
    let mut to_world = flow();
    to_world.destination = world([192, 0, 2, 1], 443);
    let flows = [
        flow(),
        drop_flow(133),
        policy_flow(2, 2, 1),
        icmp_flow(false, 3, 3),
        icmp_flow(true, 1, 4),
        to_world,
    ];
    observe_all(&m, &flows); // creates the series and fills the caches
    let before = allocations();
    for _ in 0..100 {
        observe_all(&m, &flows);
    }
    assert_eq!(
        allocations() - before,
        0,
        "observe allocated for existing series"
    );
    assert!(m.series_count(names::FLOWS_PROCESSED).unwrap() > 0);
}

/// Random flows over every field a handler reads, with pods and
/// identities shared the way the collector shares them.
fn random_flows(n: usize, seed: u64) -> Vec<Flow> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pods: Vec<Arc<PodMeta>> = (0..6)
        .map(|i| pod(["x", "y", "z"][i % 3], &format!("app{i}-7d4b9c8f6-x2x9{i}"), &[&format!("k8s:app=a{i}")]))
        .collect();
    let world_labels = labels(&["reserved:world", "cidr:192.0.2.0/24"]);
    let host_labels = labels(&["reserved:host"]);
    let pick = |r: u64, of: &[u8]| of[(r % of.len() as u64) as usize];
    (0..n)
        .map(|_| {
            let r = next();
            let r2 = next();
            let mut f = flow();
            f.event_type = pick(r, &[1, 4, 4, 4, 5, 9]);
            f.event_sub_type = pick(r >> 4, &[0, 3, 4, 5, 133]);
            f.verdict = pick(r >> 8, &[0, 1, 1, 2, 4, 5]);
            f.drop_reason = [0, 130, 133, 181][(r >> 12) as usize % 4];
            f.protocol = pick(r >> 16, &[6, 6, 17, 1, 58, 132, 0]);
            f.tcp_flags = (r >> 20) as u8;
            f.icmp_type = pick(r >> 28, &[0, 3, 8, 128, 200]);
            f.icmp_code = pick(r >> 32, &[0, 1, 3]);
            f.is_reply = [None, Some(false), Some(true)][(r >> 36) as usize % 3];
            f.traffic_direction = pick(r >> 38, &[0, 1, 2]);
            f.policy_match_type = pick(r >> 40, &[0, 1, 2, 3, 4, 7]);
            f.ip_version = pick(r >> 44, &[4, 4, 6]);
            f.destination.port = [80, 443, 8080, 40000 + (r2 % 3000) as u16][(r >> 46) as usize % 4];
            f.source.port = 30000 + (r2 >> 16) as u16 % 100;
            for (side, bits) in [(&mut f.source, r2 >> 32), (&mut f.destination, r2 >> 40)] {
                side.ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, (bits >> 4) as u8 % 8));
                match bits % 4 {
                    0 => {
                        side.pod = None;
                        side.identity = abi::IDENTITY_WORLD;
                        side.identity_labels = Some(Arc::clone(&world_labels));
                    }
                    1 => {
                        side.pod = None;
                        side.identity = 1;
                        side.identity_labels = Some(Arc::clone(&host_labels));
                    }
                    _ => {
                        side.pod = Some(Arc::clone(&pods[(bits >> 2) as usize % pods.len()]));
                        side.identity = 1000 + (bits >> 2) as u32 % 6;
                        side.identity_labels = None;
                    }
                }
            }
            f
        })
        .collect()
}

/// Flows that differ from one of a few dozen random flows in one field
/// each: kinds repeat, and a field a signature forgets shows up as counts
/// in the wrong series.
fn near_flows(n: usize, seed: u64) -> Vec<Flow> {
    let base = random_flows(40, seed);
    let donors = random_flows(n, seed.rotate_left(17));
    donors
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let mut f = base[i % base.len()].clone();
            match (i / base.len()) % 21 {
                0 => f.event_type = d.event_type,
                1 => f.event_sub_type = d.event_sub_type,
                2 => f.verdict = d.verdict,
                3 => f.drop_reason = d.drop_reason,
                4 => f.protocol = d.protocol,
                5 => f.tcp_flags = d.tcp_flags,
                6 => f.icmp_type = d.icmp_type,
                7 => f.icmp_code = d.icmp_code,
                8 => f.is_reply = d.is_reply,
                9 => f.traffic_direction = d.traffic_direction,
                10 => f.policy_match_type = d.policy_match_type,
                11 => f.ip_version = d.ip_version,
                12 => f.destination.port = d.destination.port,
                13 => f.source.port = d.source.port,
                14 => f.source = d.source,
                15 => f.destination = d.destination,
                16 => f.source.ip = d.source.ip,
                17 => f.destination.ip = d.destination.ip,
                18 => f.source.identity = d.source.identity,
                19 => f.destination.identity = d.destination.identity,
                _ => f.destination.identity_labels = d.destination.identity_labels,
            }
            f
        })
        .collect()
}

#[test]
fn the_recorder_counts_exactly_what_the_handlers_count_flow_by_flow() {
    for list in [
        "",
        "flow:sourceContext=pod|ip;destinationContext=pod-short;labelsContext=source_ip,source_app,destination_pod,traffic_direction \
         drop:sourceContext=identity;destinationContext=reserved-identity tcp:sourceContext=app port-distribution \
         icmp:destinationContext=ip policy:sourceContext=namespace flows-to-world:port;any-drop;destinationContext=ip",
        "policy",
        "flows-to-world:syn-only policy port-distribution:destinationContext=namespace;labelsContext=source_namespace",
        "drop:labelsContext=destination_namespace,destination_app tcp:destinationContext=workload|app",
    ] {
        let flows = near_flows(20_000, 0x5eed_1234_abcd_0001 ^ list.len() as u64);
        let (cached, reference) = (metrics(list), metrics(list));
        let mut recorder = cached.recorder();
        for (i, f) in flows.iter().enumerate() {
            recorder.record(f);
            if i % 1000 == 999 {
                recorder.flush();
            }
            reference.observe_uncached(f);
        }
        drop(recorder); // flushes
        // Sorted: the refusal counters' order varies between registries.
        let sorted = |m: &Metrics| {
            let mut lines: Vec<String> = m.encode().lines().map(str::to_owned).collect();
            lines.sort();
            lines.join("\n")
        };
        let (got, want) = (sorted(&cached), sorted(&reference));
        let differ: Vec<_> = got
            .lines()
            .zip(want.lines())
            .filter(|(a, b)| a != b)
            .take(5)
            .collect();
        assert!(
            differ.is_empty() && got.len() == want.len(),
            "{list:?}: recorded vs uncached: {differ:#?}"
        );
        assert!(reference.encode().lines().count() > 20, "{list:?}: the flows count");
    }
}

#[test]
fn the_recorder_counts_only_on_flush_and_recreates_deleted_series() {
    let m = metrics("flow:sourceContext=pod");
    let f = flow();
    let mut recorder = m.recorder();
    recorder.record(&f);
    recorder.record(&f);
    let sample = r#"hubble_flows_processed_total{protocol="TCP",type="Trace",subtype="to-endpoint",verdict="FORWARDED",source="x/client-7d4b9c8f6-x2x9z"}"#;
    assert_eq!(samples(&m, "hubble_flows_processed_total"), [format!("{sample} 0")]);
    recorder.flush();
    assert_eq!(samples(&m, "hubble_flows_processed_total"), [format!("{sample} 2")]);
    assert_eq!(m.delete_pod("x", "client-7d4b9c8f6-x2x9z"), 1);
    recorder.record(&f);
    recorder.flush();
    assert_eq!(samples(&m, "hubble_flows_processed_total"), [format!("{sample} 1")]);
}

// ---------------------------------------------------------------------------
// Server and delayed deletion.

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    get_with(addr, path, "")
}

fn get_with(addr: std::net::SocketAddr, path: &str, extra_headers: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra_headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serves_metrics_and_health() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let m = Arc::new(metrics("drop"));
    m.observe(&drop_flow(133));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = {
        let ready = Arc::clone(&ready);
        Health::new(
            || true,
            move || ready.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = runtime
        .block_on(bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = runtime.spawn(serve(listener, Arc::clone(&m), health, async move {
        let _ = stopped.await;
    }));
    let thread = std::thread::spawn(move || {
        let scrape = get_with(addr, "/metrics", "Accept: application/openmetrics-text; version=1.0.0\r\n");
        let plain = get(addr, "/metrics");
        assert!(plain.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{plain}");
        assert!(plain.contains("# TYPE hubble_drop_total counter"), "{plain}");
        assert!(!plain.contains("# EOF"), "{plain}");
        let healthz = get(addr, "/healthz");
        let not_ready = get(addr, "/readyz");
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        let readyz = get(addr, "/readyz");
        let missing = get(addr, "/nope");
        (scrape, healthz, not_ready, readyz, missing)
    });
    let (scrape, healthz, not_ready, readyz, missing) = runtime.block_on(async {
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap()
    });
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert!(
        scrape
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{scrape}"
    );
    assert!(
        scrape.contains(r#"hubble_drop_total{reason="POLICY_DENIED",protocol="TCP"} 1"#),
        "{scrape}"
    );
    assert!(scrape.ends_with("# EOF\n"), "{scrape}");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let _ = stop.send(());
    runtime.block_on(server).unwrap().unwrap();
}

#[test]
fn bind_reports_the_address() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let taken = runtime
        .block_on(bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let addr = taken.local_addr().unwrap();
    let err = runtime.block_on(bind(addr)).unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn pod_deletions_wait_for_the_grace_period_and_can_be_cancelled() {
    assert!(matches!(
        PodDeletions::new(Arc::new(metrics("drop")), Duration::ZERO),
        Err(MetricsError::NoRuntime)
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let m = Arc::new(metrics("drop:sourceContext=pod;destinationContext=pod"));
    m.observe(&drop_flow(133));
    let mut back = drop_flow(133);
    back.source = flow().destination;
    back.destination = flow().source;
    m.observe(&back);
    assert_eq!(m.series_count(names::DROP), Some(2));

    let grace = Duration::from_millis(200);
    let deletions = runtime
        .block_on(async { PodDeletions::new(Arc::clone(&m), grace) })
        .unwrap();
    deletions.pod_deleted("x", "client-7d4b9c8f6-x2x9z");
    deletions.pod_deleted("y", "server-0");
    assert_eq!(deletions.pending(), 2);
    // The server comes back before the grace period ends.
    assert!(deletions.pod_added("y", "server-0"));
    assert!(!deletions.pod_added("y", "server-0"));
    std::thread::sleep(grace / 4);
    assert_eq!(
        m.series_count(names::DROP),
        Some(2),
        "deleted before the grace period"
    );
    std::thread::sleep(grace * 4);
    // Both series name the client, which is gone.
    assert_eq!(m.series_count(names::DROP), Some(0));
    assert_eq!(deletions.pending(), 0);

    // A repeated deletion restarts the period; dropping the scheduler
    // cancels what is pending.
    m.observe(&drop_flow(133));
    deletions.pod_deleted("x", "client-7d4b9c8f6-x2x9z");
    deletions.pod_deleted("x", "client-7d4b9c8f6-x2x9z");
    assert_eq!(deletions.pending(), 1);
    drop(deletions);
    std::thread::sleep(grace * 2);
    assert_eq!(m.series_count(names::DROP), Some(1));
}
