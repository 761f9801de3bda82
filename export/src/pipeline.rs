//! The front half of an exporter: flows in, encoded records into the
//! spool. Filters (the flow crate's FlowFilters, include then exclude),
//! field mask, optional aggregation, the sink's encoder, then one append
//! per batch.
//!
//! It also remembers, per node, the time of the last flow it has taken
//! care of (spooled, filtered, or counted into an open aggregation window
//! that is older), so that a restarted relay can ask the collectors for
//! what it has not seen ([`Pipeline::resume_points`]), and skips flows
//! older than where it resumed.
//!
//! This stage is synchronous and must stay cheap: it never waits for the
//! sink.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sightline_flow::{FieldMask, FlowFilters};
use sightline_proto::observer::GetFlowsResponse;
use sightline_proto::observer::get_flows_response::ResponseTypes;

use crate::aggregate::Aggregator;
use crate::encode::Encoder;
use crate::metrics::ExporterMetrics;
use crate::record::{Counts, FlowRecord, Item, unix_nanos};
use crate::spool::{Spool, SpoolError};

/// How long after its end an aggregation window waits for late flows.
pub const AGGREGATION_GRACE: Duration = Duration::from_secs(2);

/// One exporter's front half.
pub struct Pipeline {
    filters: FlowFilters,
    mask: Option<FieldMask>,
    aggregator: Option<Aggregator>,
    encoder: Box<dyn Encoder>,
    spool: Spool,
    metrics: ExporterMetrics,
    /// Unix ns after which nothing more is exported.
    end: Option<i64>,
    /// Encoded records of the batch being pushed: bytes, then (flow time,
    /// start, end) of each.
    buf: Vec<u8>,
    spans: Vec<(i64, usize, usize)>,
    /// Per node: the time of the newest flow taken care of.
    done: BTreeMap<String, i64>,
    /// Per node: flows older than this were taken care of before a restart.
    skip_before: BTreeMap<String, i64>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("metrics", &self.metrics).finish_non_exhaustive()
    }
}

/// What a pipeline is made of.
pub struct PipelineParts {
    pub filters: FlowFilters,
    pub mask: Option<FieldMask>,
    pub aggregate: Option<Duration>,
    pub encoder: Box<dyn Encoder>,
    pub spool: Spool,
    pub metrics: ExporterMetrics,
    pub end: Option<i64>,
    /// Where a previous run stopped, per node (from [`Pipeline::resume_points`]).
    pub resume: BTreeMap<String, i64>,
}

impl Pipeline {
    /// A pipeline of `parts`.
    #[must_use]
    pub fn new(parts: PipelineParts) -> Self {
        Self {
            filters: parts.filters,
            mask: parts.mask.filter(|m| !m.is_empty()),
            aggregator: parts.aggregate.map(|w| Aggregator::new(w, AGGREGATION_GRACE)),
            encoder: parts.encoder,
            spool: parts.spool,
            metrics: parts.metrics,
            end: parts.end,
            buf: Vec::with_capacity(1 << 16),
            spans: Vec::with_capacity(256),
            done: BTreeMap::new(),
            skip_before: parts.resume,
        }
    }

    /// Whether `end` has passed: the exporter has nothing more to do once
    /// its spool is empty.
    #[must_use]
    pub fn ended(&self, now_ns: i64) -> bool {
        self.end.is_some_and(|end| now_ns >= end)
    }

    /// Takes a batch of responses from the merged stream: filters, masks,
    /// aggregates, encodes and appends the records to the spool in one
    /// write. Returns how many records the spool dropped to make room.
    ///
    /// # Errors
    ///
    /// [`SpoolError`] when the spool cannot be written; the batch's records
    /// are then counted as dropped.
    pub fn push(&mut self, items: &[Arc<GetFlowsResponse>], now_ns: i64) -> Result<u64, SpoolError> {
        self.buf.clear();
        self.spans.clear();
        let ended = self.ended(now_ns);
        for item in items {
            match &item.response_types {
                Some(ResponseTypes::Flow(flow)) => {
                    let time = flow.time.as_ref().map_or(0, unix_nanos);
                    let node = if flow.node_name.is_empty() { item.node_name.as_str() } else { flow.node_name.as_str() };
                    if self.skip_before.get(node).is_some_and(|&t| time < t) {
                        continue;
                    }
                    match self.done.get_mut(node) {
                        Some(t) => *t = (*t).max(time),
                        None => {
                            self.done.insert(node.to_owned(), time);
                        }
                    }
                    if ended || !self.filters.matches_proto(flow) {
                        self.metrics.filtered.inc();
                        continue;
                    }
                    let masked;
                    let flow = match &self.mask {
                        Some(mask) => {
                            let mut f = flow.clone();
                            mask.prune(&mut f);
                            masked = f;
                            &masked
                        }
                        None => flow,
                    };
                    match &mut self.aggregator {
                        Some(agg) => {
                            for a in agg.add(flow, node) {
                                let r = FlowRecord { flow: &a.flow, node_name: &a.node_name, time: a.time, counts: a.counts, aggregated: true };
                                encode(self.encoder.as_mut(), &mut self.buf, &mut self.spans, &Item::Flow(r), unix_nanos(&a.time));
                            }
                        }
                        None => {
                            let r = FlowRecord {
                                flow,
                                node_name: node,
                                time: flow.time.unwrap_or_default(),
                                counts: Counts::one(flow.traffic_direction),
                                aggregated: false,
                            };
                            encode(self.encoder.as_mut(), &mut self.buf, &mut self.spans, &Item::Flow(r), time);
                        }
                    }
                }
                Some(_) if !ended => {
                    let time = item.time.as_ref().map_or(now_ns, unix_nanos);
                    encode(self.encoder.as_mut(), &mut self.buf, &mut self.spans, &Item::Other(item), time);
                }
                _ => {}
            }
        }
        self.flush()
    }

    /// Emits the aggregation windows that are over.
    ///
    /// # Errors
    ///
    /// [`SpoolError`] when the spool cannot be written.
    pub fn tick(&mut self, now_ns: i64) -> Result<u64, SpoolError> {
        let Some(agg) = &mut self.aggregator else { return Ok(0) };
        let due = agg.due(now_ns);
        self.emit(due)
    }

    /// Emits every open aggregation window (before the exporter stops).
    ///
    /// # Errors
    ///
    /// [`SpoolError`] when the spool cannot be written.
    pub fn finish(&mut self) -> Result<u64, SpoolError> {
        let Some(agg) = &mut self.aggregator else { return Ok(0) };
        let all = agg.drain();
        self.emit(all)
    }

    fn emit(&mut self, aggregates: Vec<crate::aggregate::Aggregate>) -> Result<u64, SpoolError> {
        self.buf.clear();
        self.spans.clear();
        for a in &aggregates {
            let r = FlowRecord { flow: &a.flow, node_name: &a.node_name, time: a.time, counts: a.counts, aggregated: true };
            encode(self.encoder.as_mut(), &mut self.buf, &mut self.spans, &Item::Flow(r), unix_nanos(&a.time));
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<u64, SpoolError> {
        if self.spans.is_empty() {
            return Ok(0);
        }
        let records: Vec<(i64, &[u8])> = self.spans.iter().map(|&(t, s, e)| (t, &self.buf[s..e])).collect();
        match self.spool.append(&records) {
            Ok(dropped) => {
                self.metrics.dropped.inc_by(dropped);
                Ok(dropped)
            }
            Err(e) => {
                self.metrics.dropped.inc_by(records.len() as u64);
                Err(e)
            }
        }
    }

    /// Per node, the time from which a restarted exporter must see flows
    /// again: the newest flow taken care of, or the start of the oldest
    /// aggregation window still open (its flows are not in the spool yet).
    #[must_use]
    pub fn resume_points(&self) -> BTreeMap<String, i64> {
        let open = self.aggregator.as_ref().and_then(Aggregator::oldest_start);
        let mut out = self.skip_before.clone();
        for (node, &t) in &self.done {
            let t = open.map_or(t, |o| t.min(o));
            out.insert(node.clone(), t);
        }
        out
    }

    /// The spool this pipeline appends to.
    #[must_use]
    pub fn spool(&self) -> &Spool {
        &self.spool
    }
}

fn encode(encoder: &mut dyn Encoder, buf: &mut Vec<u8>, spans: &mut Vec<(i64, usize, usize)>, item: &Item<'_>, time: i64) {
    let start = buf.len();
    if encoder.encode(item, buf) {
        spans.push((time, start, buf.len()));
    } else {
        buf.truncate(start);
    }
}
