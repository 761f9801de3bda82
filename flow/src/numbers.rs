//! Hubble's numbering of the enum-like fields of a flow (flow.proto and
//! Cilium's monitor types). The compact record holds these values, so that
//! spelling a flow in protobuf or filtering it needs no translation.

/// `CiliumEventType.type` values (pkg/monitor/api/types.go).
pub const MESSAGE_TYPE_UNSPEC: u8 = 0;
pub const MESSAGE_TYPE_DROP: u8 = 1;
pub const MESSAGE_TYPE_TRACE: u8 = 4;
pub const MESSAGE_TYPE_POLICY_VERDICT: u8 = 5;
/// `CiliumEventType.type` of L7 (access log) events.
pub const MESSAGE_TYPE_ACCESS_LOG: u8 = 129;

/// `flow.Verdict` values.
pub const VERDICT_UNKNOWN: u8 = 0;
pub const VERDICT_FORWARDED: u8 = 1;
pub const VERDICT_DROPPED: u8 = 2;
pub const VERDICT_AUDIT: u8 = 4;

/// `flow.TrafficDirection` values.
pub const TRAFFIC_DIRECTION_UNKNOWN: u8 = 0;
pub const TRAFFIC_DIRECTION_INGRESS: u8 = 1;
pub const TRAFFIC_DIRECTION_EGRESS: u8 = 2;

/// `flow.TraceReason` values.
pub const TRACE_REASON_UNKNOWN: u8 = 0;
pub const TRACE_REASON_NEW: u8 = 1;
pub const TRACE_REASON_ESTABLISHED: u8 = 2;
pub const TRACE_REASON_REPLY: u8 = 3;

/// `flow.TraceObservationPoint::TO_ENDPOINT`, the proto value of the
/// datapath's `TRACE_TO_LXC` (0).
pub const OBSERVATION_POINT_TO_ENDPOINT: u8 = 101;

/// The cluster of every endpoint and node Sightline reports (Cilium's
/// default cluster name).
pub const CLUSTER_NAME: &str = "default";
