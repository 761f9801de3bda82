//! Every name and value that must match Hubble's metrics, in one place:
//! metric names, help texts, label names, and the strings label values are
//! made of (protocols, verdicts, trace points, ICMP type codes, …).
//!
//! Dashboards depend on these strings byte for byte, so they are constants
//! here and nowhere else; the tests compare the enum-derived ones with the
//! generated protobuf names. This module must not compute anything beyond
//! table look-ups.

use sightline_proto::flow as pb;

/// `hubble_flows_processed_total` (handler `flow`).
pub const FLOWS_PROCESSED: &str = "hubble_flows_processed_total";
/// `hubble_drop_total` (handler `drop`).
pub const DROP: &str = "hubble_drop_total";
/// `hubble_tcp_flags_total` (handler `tcp`).
pub const TCP_FLAGS: &str = "hubble_tcp_flags_total";
/// `hubble_port_distribution_total` (handler `port-distribution`).
pub const PORT_DISTRIBUTION: &str = "hubble_port_distribution_total";
/// `hubble_icmp_total` (handler `icmp`).
pub const ICMP: &str = "hubble_icmp_total";
/// `hubble_policy_verdicts_total` (handler `policy`).
pub const POLICY_VERDICTS: &str = "hubble_policy_verdicts_total";
/// `hubble_flows_to_world_total` (handler `flows-to-world`).
pub const FLOWS_TO_WORLD: &str = "hubble_flows_to_world_total";
/// `hubble_lost_events_total{source}`, always registered.
pub const LOST_EVENTS: &str = "hubble_lost_events_total";
/// `sightline_metrics_series_refused_total{metric}`: observations that
/// would have created a series beyond the per-metric cap.
pub const SERIES_REFUSED: &str = "sightline_metrics_series_refused_total";

/// Help texts, as Hubble words them.
pub const FLOWS_PROCESSED_HELP: &str = "Total number of flows processed";
pub const DROP_HELP: &str = "Number of drops";
pub const TCP_FLAGS_HELP: &str = "TCP flag occurrences";
pub const PORT_DISTRIBUTION_HELP: &str = "Numbers of packets distributed by destination port";
pub const ICMP_HELP: &str = "Number of ICMP messages";
pub const POLICY_VERDICTS_HELP: &str = "Total number of Cilium network policy verdicts";
pub const FLOWS_TO_WORLD_HELP: &str = "Total number of flows to reserved:world";
pub const LOST_EVENTS_HELP: &str = "Number of lost events";
pub const SERIES_REFUSED_HELP: &str =
    "Observations refused because their metric already had the maximum number of series";

/// The name a counter is registered under: prometheus-client appends the
/// `_total` suffix itself when it encodes a counter.
#[must_use]
pub fn family_name(metric: &'static str) -> &'static str {
    metric.strip_suffix("_total").unwrap_or(metric)
}

/// `hubble_lost_events_total` `source` values (`LostEventSource` names,
/// lower-cased, as Hubble writes them).
pub const LOST_PERF_EVENT_RING_BUFFER: &str = "perf_event_ring_buffer";
pub const LOST_OBSERVER_EVENTS_QUEUE: &str = "observer_events_queue";
pub const LOST_HUBBLE_RING_BUFFER: &str = "hubble_ring_buffer";
pub const LOST_UNKNOWN: &str = "unknown_lost_event_source";

/// Label names of the handlers' own labels.
pub const LABEL_PROTOCOL: &str = "protocol";
pub const LABEL_TYPE: &str = "type";
pub const LABEL_SUBTYPE: &str = "subtype";
pub const LABEL_VERDICT: &str = "verdict";
pub const LABEL_REASON: &str = "reason";
pub const LABEL_FLAG: &str = "flag";
pub const LABEL_FAMILY: &str = "family";
pub const LABEL_PORT: &str = "port";
pub const LABEL_DIRECTION: &str = "direction";
pub const LABEL_MATCH: &str = "match";
pub const LABEL_ACTION: &str = "action";
pub const LABEL_SOURCE: &str = "source";
pub const LABEL_DESTINATION: &str = "destination";
pub const LABEL_METRIC: &str = "metric";

/// `flow` handler `type` values (by `CiliumEventType.type`).
pub const TYPE_L7: &str = "L7";
pub const TYPE_DROP: &str = "Drop";
pub const TYPE_CAPTURE: &str = "Capture";
pub const TYPE_TRACE: &str = "Trace";
pub const TYPE_POLICY_VERDICT: &str = "PolicyVerdict";
pub const TYPE_UNKNOWN: &str = "Unknown";

/// Monitor message types (pkg/monitor/api/types.go).
pub const MESSAGE_DROP: u8 = 1;
pub const MESSAGE_CAPTURE: u8 = 3;
pub const MESSAGE_TRACE: u8 = 4;
pub const MESSAGE_POLICY_VERDICT: u8 = 5;
pub const MESSAGE_ACCESS_LOG: u8 = 129;

/// Trace observation point names indexed by the *datapath* value carried in
/// `CiliumEventType.sub_type` (`TraceToLxc` = 0 … `TraceToCrypto` = 13),
/// Hubble's `monitorAPI.TraceObservationPoints`. Other values give `""`.
pub const TRACE_POINTS: [&str; 14] = [
    "to-endpoint",
    "to-proxy",
    "to-host",
    "to-stack",
    "to-overlay",
    "from-endpoint",
    "from-proxy",
    "from-host",
    "from-stack",
    "from-overlay",
    "from-network",
    "to-network",
    "from-crypto",
    "to-crypto",
];

/// `v1.FlowProtocol` values.
pub const PROTO_TCP: &str = "TCP";
pub const PROTO_UDP: &str = "UDP";
pub const PROTO_SCTP: &str = "SCTP";
pub const PROTO_ICMPV4: &str = "ICMPv4";
pub const PROTO_ICMPV6: &str = "ICMPv6";
pub const PROTO_UNKNOWN_L4: &str = "Unknown L4";
pub const PROTO_UNKNOWN_FLOW: &str = "Unknown flow";

/// `IPVersion` names (the `family` label).
pub const FAMILY_IPV4: &str = "IPv4";
pub const FAMILY_IPV6: &str = "IPv6";
pub const FAMILY_NONE: &str = "IP_NOT_USED";

/// `hubble_tcp_flags_total` `flag` values.
pub const FLAG_FIN: &str = "FIN";
pub const FLAG_SYN: &str = "SYN";
pub const FLAG_SYN_ACK: &str = "SYN-ACK";
pub const FLAG_RST: &str = "RST";

/// `Verdict` names indexed by value, and their lower-case forms (the
/// `policy` handler's `action`).
pub const VERDICTS: [&str; 8] = [
    "VERDICT_UNKNOWN",
    "FORWARDED",
    "DROPPED",
    "ERROR",
    "AUDIT",
    "REDIRECTED",
    "TRACED",
    "TRANSLATED",
];
pub const VERDICTS_LOWER: [&str; 8] = [
    "verdict_unknown",
    "forwarded",
    "dropped",
    "error",
    "audit",
    "redirected",
    "traced",
    "translated",
];
pub const VERDICT_FORWARDED: u8 = 1;
pub const VERDICT_DROPPED: u8 = 2;
pub const VERDICT_REDIRECTED: u8 = 5;

/// `TrafficDirection` names lower-cased (the `policy` handler's
/// `direction`), indexed by value.
pub const DIRECTIONS_LOWER: [&str; 3] = ["traffic_direction_unknown", "ingress", "egress"];
/// The `traffic_direction` context label: `unknown` instead of the enum name.
pub const TRAFFIC_DIRECTIONS: [&str; 3] = ["unknown", "ingress", "egress"];

/// `monitorAPI.PolicyMatchType` strings lower-cased, indexed by Cilium's
/// numbering (none, L3-Only, L3-L4, L4-Only, all); anything else `unknown`.
pub const POLICY_MATCHES: [&str; 5] = ["none", "l3-only", "l3-l4", "l4-only", "all"];
pub const POLICY_MATCH_UNKNOWN: &str = "unknown";

/// `DropReason.POLICY_DENIED` (the one drop `flows-to-world` always counts).
pub const DROP_POLICY_DENIED: u16 = 133;

/// Identity labels the contexts look for.
pub const LABEL_RESERVED_WORLD: &str = "reserved:world";
pub const LABEL_RESERVED_KUBE_APISERVER: &str = "reserved:kube-apiserver";
pub const RESERVED_PREFIX: &str = "reserved:";
/// Label prefixes of a pod's app, as Hubble lists them.
pub const APP_LABEL_PREFIXES: [&str; 3] =
    ["k8s:app.kubernetes.io/name=", "k8s:k8s-app=", "k8s:app="];

/// Reserved identities.
pub const IDENTITY_HOST: u32 = sightline_abi::IDENTITY_HOST;
pub const IDENTITY_WORLD: u32 = sightline_abi::IDENTITY_WORLD;

/// The `/metrics` content type.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `DropReason` enum name of `code`, or `None` when flow.proto has none
/// (Hubble then prints the number).
#[must_use]
pub fn drop_reason(code: u16) -> Option<&'static str> {
    pb::DropReason::try_from(i32::from(code))
        .ok()
        .map(|r| r.as_str_name())
}

/// An ICMP type's name and, for types that use the code, the code names.
pub type IcmpType = (&'static str, Option<&'static [(u8, &'static str)]>);

/// gopacket's `ICMPv4TypeCode.String()` parts (github.com/gopacket/gopacket).
#[must_use]
pub fn icmpv4_type(t: u8) -> Option<IcmpType> {
    const UNREACHABLE: &[(u8, &str)] = &[
        (0, "Net"),
        (1, "Host"),
        (2, "Protocol"),
        (3, "Port"),
        (4, "FragmentationNeeded"),
        (5, "SourceRoutingFailed"),
        (6, "NetUnknown"),
        (7, "HostUnknown"),
        (8, "SourceIsolated"),
        (9, "NetAdminProhibited"),
        (10, "HostAdminProhibited"),
        (11, "NetTOS"),
        (12, "HostTOS"),
        (13, "CommAdminProhibited"),
        (14, "HostPrecedence"),
        (15, "PrecedenceCutoff"),
    ];
    const TIME_EXCEEDED: &[(u8, &str)] =
        &[(0, "TTLExceeded"), (1, "FragmentReassemblyTimeExceeded")];
    const PARAMETER: &[(u8, &str)] = &[
        (0, "PointerIndicatesError"),
        (1, "MissingOption"),
        (2, "BadLength"),
    ];
    const REDIRECT: &[(u8, &str)] = &[(0, "Net"), (1, "Host"), (2, "TOS+Net"), (3, "TOS+Host")];
    Some(match t {
        0 => ("EchoReply", None),
        3 => ("DestinationUnreachable", Some(UNREACHABLE)),
        4 => ("SourceQuench", None),
        5 => ("Redirect", Some(REDIRECT)),
        8 => ("EchoRequest", None),
        9 => ("RouterAdvertisement", None),
        10 => ("RouterSolicitation", None),
        11 => ("TimeExceeded", Some(TIME_EXCEEDED)),
        12 => ("ParameterProblem", Some(PARAMETER)),
        13 => ("TimestampRequest", None),
        14 => ("TimestampReply", None),
        15 => ("InfoRequest", None),
        16 => ("InfoReply", None),
        17 => ("AddressMaskRequest", None),
        18 => ("AddressMaskReply", None),
        _ => return None,
    })
}

/// gopacket's `ICMPv6TypeCode.String()` parts (github.com/gopacket/gopacket).
#[must_use]
pub fn icmpv6_type(t: u8) -> Option<IcmpType> {
    const UNREACHABLE: &[(u8, &str)] = &[
        (0, "NoRouteToDst"),
        (1, "AdminProhibited"),
        (2, "BeyondScopeOfSrc"),
        (3, "AddressUnreachable"),
        (4, "PortUnreachable"),
        (5, "SrcAddressFailedPolicy"),
        (6, "RejectRouteToDst"),
    ];
    const TIME_EXCEEDED: &[(u8, &str)] = &[
        (0, "HopLimitExceeded"),
        (1, "FragmentReassemblyTimeExceeded"),
    ];
    const PARAMETER: &[(u8, &str)] = &[
        (0, "ErroneousHeaderField"),
        (1, "UnrecognizedNextHeader"),
        (2, "UnrecognizedIPv6Option"),
    ];
    Some(match t {
        1 => ("DestinationUnreachable", Some(UNREACHABLE)),
        2 => ("PacketTooBig", None),
        3 => ("TimeExceeded", Some(TIME_EXCEEDED)),
        4 => ("ParameterProblem", Some(PARAMETER)),
        128 => ("EchoRequest", None),
        129 => ("EchoReply", None),
        133 => ("RouterSolicitation", None),
        134 => ("RouterAdvertisement", None),
        135 => ("NeighborSolicitation", None),
        136 => ("NeighborAdvertisement", None),
        137 => ("Redirect", None),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_tables_match_the_proto_names() {
        for (value, (name, lower)) in VERDICTS.iter().zip(VERDICTS_LOWER).enumerate() {
            let proto = pb::Verdict::try_from(i32::try_from(value).unwrap())
                .unwrap()
                .as_str_name();
            assert_eq!(*name, proto);
            assert_eq!(lower, proto.to_ascii_lowercase());
        }
        assert!(
            pb::Verdict::try_from(8).is_err(),
            "a new Verdict value needs a table entry"
        );
        for (value, lower) in DIRECTIONS_LOWER.iter().enumerate() {
            let proto = pb::TrafficDirection::try_from(i32::try_from(value).unwrap()).unwrap();
            assert_eq!(*lower, proto.as_str_name().to_ascii_lowercase());
        }
        assert_eq!(drop_reason(133), Some("POLICY_DENIED"));
        assert_eq!(drop_reason(0), Some("DROP_REASON_UNKNOWN"));
        assert_eq!(drop_reason(1), None);
        assert_eq!(family_name(FLOWS_PROCESSED), "hubble_flows_processed");
        assert_eq!(family_name("x"), "x");
    }

    #[test]
    fn trace_points_follow_the_datapath_numbering() {
        assert_eq!(
            TRACE_POINTS[usize::from(sightline_abi::TRACE_TO_LXC)],
            "to-endpoint"
        );
        assert_eq!(
            TRACE_POINTS[usize::from(sightline_abi::TRACE_FROM_LXC)],
            "from-endpoint"
        );
        assert_eq!(
            TRACE_POINTS[usize::from(sightline_abi::TRACE_TO_STACK)],
            "to-stack"
        );
        assert_eq!(
            TRACE_POINTS[usize::from(sightline_abi::TRACE_FROM_STACK)],
            "from-stack"
        );
        // Same names as the proto enum (which numbers to-endpoint 101).
        for (point, name) in TRACE_POINTS.iter().enumerate().skip(1) {
            let proto = pb::TraceObservationPoint::try_from(i32::try_from(point).unwrap()).unwrap();
            assert_eq!(
                name.replace('-', "_").to_ascii_uppercase(),
                proto.as_str_name()
            );
        }
    }
}
