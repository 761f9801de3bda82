//! What flows through an exporter after its filters: one flow, or the
//! aggregate of several, ready for an encoder.

use prost_types::Timestamp;
use sightline_proto::flow as pb;
use sightline_proto::observer::GetFlowsResponse;

/// How many flows a record stands for, by traffic direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub ingress: u64,
    pub egress: u64,
    pub unknown: u64,
}

impl Counts {
    /// One flow of `direction` (`flow.TrafficDirection`).
    #[must_use]
    pub fn one(direction: i32) -> Self {
        let mut c = Self::default();
        c.add(direction, 1);
        c
    }

    /// Adds `n` flows of `direction`.
    pub fn add(&mut self, direction: i32, n: u64) {
        match pb::TrafficDirection::try_from(direction) {
            Ok(pb::TrafficDirection::Ingress) => self.ingress += n,
            Ok(pb::TrafficDirection::Egress) => self.egress += n,
            _ => self.unknown += n,
        }
    }

    /// Every flow counted.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.ingress + self.egress + self.unknown
    }
}

/// One flow record: the (masked) flow, where it was seen, its time, and
/// how many flows it stands for.
#[derive(Clone, Copy, Debug)]
pub struct FlowRecord<'a> {
    pub flow: &'a pb::Flow,
    pub node_name: &'a str,
    /// The flow's time, or the end of its aggregation window.
    pub time: Timestamp,
    pub counts: Counts,
    /// Whether the record is an aggregate (its flow holds only the fields
    /// aggregation groups by; no addresses, ports but the destination's,
    /// nor UUID).
    pub aggregated: bool,
}

/// What an encoder is given.
#[derive(Clone, Copy, Debug)]
pub enum Item<'a> {
    Flow(FlowRecord<'a>),
    /// A node-status or lost-events response: only file sinks write them.
    Other(&'a GetFlowsResponse),
}

/// Unix nanoseconds of a timestamp (saturating).
#[must_use]
pub fn unix_nanos(t: &Timestamp) -> i64 {
    t.seconds.saturating_mul(1_000_000_000).saturating_add(i64::from(t.nanos))
}
