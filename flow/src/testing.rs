//! A plain flow for tests to change what they need of
//! (`Flow { verdict: 2, ..flow() }`).

use std::net::{IpAddr, Ipv4Addr};

use crate::record::{Flow, Side};

/// A side with an address and nothing else.
pub fn side(ip: [u8; 4], port: u16) -> Side {
    Side {
        ip: IpAddr::V4(Ipv4Addr::from(ip)),
        port,
        identity: 0,
        pod: None,
        identity_labels: None,
    }
}

/// A forwarded IPv4 TCP trace from 10.0.0.1:40000 to 10.0.0.2:80, with no
/// metadata.
pub fn flow() -> Flow {
    Flow {
        time_ns: 0,
        seq: 0,
        source: side([10, 0, 0, 1], 40000),
        destination: side([10, 0, 0, 2], 80),
        verdict: 1,
        drop_reason: 0,
        kernel_drop_reason: 0,
        kernel_drop_reason_name: None,
        event_type: 4,
        event_sub_type: 0,
        trace_observation_point: 0,
        trace_reason: 0,
        is_reply: None,
        traffic_direction: 0,
        policy_match_type: 0,
        protocol: 6,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        ip_version: 4,
        ifindex: 0,
        interface: None,
        allowed_by: None,
        denied_by: None,
        counters: [0; 4],
        source_service: None,
        destination_service: None,
        source_xlated: None,
    }
}
