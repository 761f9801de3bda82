//! Merging node streams in time order (Hubble Relay's sort buffer): a
//! min-heap on `GetFlowsResponse.time`, bounded to `capacity` items; when it
//! is full the oldest item leaves before a new one enters, and items older
//! than `window` leave on every tick. That window is how far out of order
//! two nodes' items may arrive and still leave in order.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use prost_types::Timestamp;
use sightline_proto::observer::GetFlowsResponse;

/// Hubble Relay's `sort-buffer-len-max`.
pub const DEFAULT_CAPACITY: usize = 100;

/// A response ordered by time, oldest first out of the heap; equal times
/// leave in arrival order.
struct Item {
    time: (i64, i32),
    seq: u64,
    response: GetFlowsResponse,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    /// Reversed: `BinaryHeap` is a max-heap, the oldest must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

fn key(ts: Option<&Timestamp>) -> (i64, i32) {
    ts.map_or((0, 0), |t| (t.seconds, t.nanos))
}

/// The sort buffer.
pub struct SortBuffer {
    heap: BinaryHeap<Item>,
    capacity: usize,
    seq: u64,
}

impl SortBuffer {
    /// `capacity` is Hubble's rule: the maximum, or `number × nodes` when a
    /// request asks for fewer flows than that.
    #[must_use]
    pub fn new(max: usize, number: u64, nodes: usize) -> Self {
        let wanted = usize::try_from(number).unwrap_or(usize::MAX).saturating_mul(nodes.max(1));
        let capacity = if number > 0 && wanted < max { wanted } else { max }.max(1);
        Self { heap: BinaryHeap::with_capacity(capacity), capacity, seq: 0 }
    }

    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds a response; returns the oldest one when the buffer was full.
    pub fn push(&mut self, response: GetFlowsResponse) -> Option<GetFlowsResponse> {
        let out = if self.heap.len() >= self.capacity { self.heap.pop().map(|i| i.response) } else { None };
        self.seq += 1;
        self.heap.push(Item { time: key(response.time.as_ref()), seq: self.seq, response });
        out
    }

    /// Everything older than `before`, oldest first.
    pub fn older_than(&mut self, before: &Timestamp) -> Vec<GetFlowsResponse> {
        let limit = key(Some(before));
        let mut out = Vec::new();
        while self.heap.peek().is_some_and(|i| i.time < limit) {
            if let Some(i) = self.heap.pop() {
                out.push(i.response);
            }
        }
        out
    }

    /// Everything, oldest first.
    pub fn drain(&mut self) -> Vec<GetFlowsResponse> {
        let mut out = Vec::with_capacity(self.heap.len());
        while let Some(i) = self.heap.pop() {
            out.push(i.response);
        }
        out
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, node: &str) -> GetFlowsResponse {
        GetFlowsResponse { time: Some(Timestamp { seconds, nanos: 0 }), node_name: node.into(), ..Default::default() }
    }

    fn times(v: &[GetFlowsResponse]) -> Vec<i64> {
        v.iter().map(|r| r.time.as_ref().map_or(0, |t| t.seconds)).collect()
    }

    #[test]
    fn capacity_follows_hubbles_rule() {
        assert_eq!(SortBuffer::new(100, 0, 3).capacity(), 100);
        assert_eq!(SortBuffer::new(100, 20, 3).capacity(), 60);
        assert_eq!(SortBuffer::new(100, 50, 3).capacity(), 100);
        assert_eq!(SortBuffer::new(100, u64::MAX, 3).capacity(), 100);
    }

    #[test]
    fn interleaved_streams_leave_in_time_order() {
        let mut b = SortBuffer::new(4, 0, 2);
        let mut out = Vec::new();
        for r in [at(1, "a"), at(5, "a"), at(2, "b"), at(3, "b"), at(6, "a"), at(4, "b"), at(7, "b")] {
            out.extend(b.push(r));
        }
        out.extend(b.drain());
        assert_eq!(times(&out), [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_full_buffer_lets_the_oldest_out_and_ticks_drain_old_items() {
        let mut b = SortBuffer::new(2, 0, 2);
        assert!(b.push(at(10, "a")).is_none());
        assert!(b.push(at(30, "b")).is_none());
        assert_eq!(b.push(at(20, "a")).map(|r| r.node_name), Some("a".to_owned()));
        assert_eq!(times(&b.older_than(&Timestamp { seconds: 25, nanos: 0 })), [20]);
        assert_eq!(b.len(), 1);
        // Equal times keep their arrival order.
        let mut b = SortBuffer::new(10, 0, 2);
        b.push(at(1, "first"));
        b.push(at(1, "second"));
        let names: Vec<String> = b.drain().into_iter().map(|r| r.node_name).collect();
        assert_eq!(names, ["first", "second"]);
    }
}
