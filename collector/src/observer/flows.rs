//! `GetFlows`: validate the request, read the store from the right place,
//! filter, mask, send; in follow mode, keep reading as flows arrive.
//!
//! Each request reads the store on its own task through its own cursor and
//! sends through a bounded channel: a client that stops reading blocks only
//! its own task, never the pipeline or other clients. Flows it misses
//! because the store overwrote them are reported as `LostEvent`
//! (HUBBLE_RING_BUFFER); losses in the kernel ring buffer reach followers as
//! `LostEvent` (PERF_EVENT_RING_BUFFER). Lost events are never filtered.

use std::collections::VecDeque;
use std::sync::Arc;

use sightline_proto::flow::{self as pb, LostEventSource};
use sightline_proto::observer::{GetFlowsRequest, GetFlowsResponse, get_flows_response::ResponseTypes};
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use super::{BoxStream, ObserverState};
use crate::flow::convert::{FieldMask, lost_event, timestamp, to_proto};
use crate::flow::filter::FlowFilters;
use crate::flow::record::Flow;
use crate::flow::store::{Entry, Reader, Start};

/// How many responses may wait for a slow client before its reader pauses.
const CLIENT_QUEUE: usize = 1024;

fn ns_of(t: &prost_types::Timestamp) -> i64 {
    t.seconds.saturating_mul(1_000_000_000).saturating_add(i64::from(t.nanos))
}

/// A validated request.
struct Plan {
    number: u64,
    first: bool,
    follow: bool,
    since: Option<i64>,
    until: Option<i64>,
    filters: FlowFilters,
    mask: Option<FieldMask>,
}

fn validate(req: &GetFlowsRequest) -> Result<Plan, Status> {
    if req.first && req.follow {
        return Err(Status::invalid_argument("first cannot be combined with follow: first reads the oldest flows, follow waits for new ones"));
    }
    if req.number > 0 && (req.since.is_some() || req.until.is_some()) {
        return Err(Status::invalid_argument("number cannot be combined with since or until: give a count or a time range"));
    }
    let since = req.since.as_ref().map(ns_of);
    let until = req.until.as_ref().map(ns_of);
    if let (Some(s), Some(u)) = (since, until) {
        if u < s {
            return Err(Status::invalid_argument("until is before since"));
        }
    }
    let filters = FlowFilters::new(&req.whitelist, &req.blacklist).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mask = match &req.field_mask {
        Some(m) if !m.paths.is_empty() => {
            Some(FieldMask::from_proto(m).map_err(|e| Status::invalid_argument(format!("field_mask: {e}")))?)
        }
        _ => None,
    };
    Ok(Plan { number: req.number, first: req.first, follow: req.follow, since, until, filters, mask })
}

fn flow_response(flow: &Flow, node: &str, mask: Option<&FieldMask>) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: node.to_owned(),
        time: Some(timestamp(flow.time_ns)),
        response_types: Some(ResponseTypes::Flow(to_proto(flow, node, mask))),
    }
}

fn lost_response(lost: pb::LostEvent, node: &str) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: node.to_owned(),
        time: Some(timestamp(super::events::now_ns())),
        response_types: Some(ResponseTypes::LostEvents(lost)),
    }
}

/// What the backlog holds, in order.
enum Item {
    Flow(Arc<Flow>),
    Lost(u64),
    /// A kernel ring-buffer loss reported earlier.
    Kernel(pb::LostEvent),
}

/// Starts a GetFlows stream. The backlog (what the store holds now) is
/// selected at once and converted lazily as tonic polls the stream, on the
/// connection's own task; only follow mode needs a task of its own.
pub(super) fn get_flows(state: Arc<ObserverState>, req: GetFlowsRequest) -> Result<BoxStream<GetFlowsResponse>, Status> {
    let plan = validate(&req)?;
    // Subscribe before reading the backlog so no kernel loss is missed;
    // with `since`, kernel losses reported since then come first (those a
    // restarted collector counted while none ran, for a follower that
    // resumes where it was).
    let (replay, losses) = state.losses_since(plan.since, plan.until, plan.follow);
    let (mut backlog, reader) = backlog(&state, &plan);
    backlog.splice(0..0, replay.into_iter().map(Item::Kernel));
    let node = state.node_name.clone();
    let mask = plan.mask.clone();
    let head = tokio_stream::StreamExt::map(tokio_stream::iter(backlog), move |item| {
        Ok(match item {
            Item::Flow(f) => flow_response(&f, &node, mask.as_ref()),
            Item::Lost(n) => lost_response(lost_event(LostEventSource::HubbleRingBuffer, n, 0, 0), &node),
            Item::Kernel(l) => lost_response(l, &node),
        })
    });
    if !plan.follow {
        return Ok(Box::pin(head));
    }
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    tokio::spawn(async move {
        let _ = follow(&state, &plan, reader, &tx, losses).await;
    });
    Ok(Box::pin(tokio_stream::StreamExt::chain(head, tokio_stream::wrappers::ReceiverStream::new(rx))))
}

/// Sends; `Err` when the client is gone.
async fn send(tx: &mpsc::Sender<Result<GetFlowsResponse, Status>>, r: GetFlowsResponse) -> Result<(), ()> {
    tx.send(Ok(r)).await.map_err(|_| ())
}

fn wanted(plan: &Plan, f: &Flow, node: &str) -> bool {
    plan.since.is_none_or(|s| f.time_ns >= s) && plan.until.is_none_or(|u| f.time_ns <= u) && plan.filters.matches(f, node)
}

/// The backlog a request asks for, read up to what is present now, and a
/// reader positioned after it (for follow mode).
fn backlog(state: &ObserverState, plan: &Plan) -> (Vec<Item>, Reader) {
    let node = state.node_name.as_str();
    let end = state.store.seen();
    let start = if plan.follow && plan.number == 0 && plan.since.is_none() { Start::Now } else { Start::Oldest };
    let mut reader = state.store.reader(start);
    let mut out = Vec::new();
    if plan.first {
        let mut sent = 0u64;
        while reader.position() < end && (plan.number == 0 || sent < plan.number) {
            match reader.next() {
                Some(Entry::Flow(f)) if wanted(plan, &f, node) => {
                    out.push(Item::Flow(f));
                    sent += 1;
                }
                Some(Entry::Flow(_)) => {}
                Some(Entry::Lost(n)) => out.push(Item::Lost(n)),
                None => break,
            }
        }
        return (out, reader);
    }
    // Last N matching (N = 0: all), oldest first.
    let keep = if plan.number == 0 { usize::MAX } else { usize::try_from(plan.number).unwrap_or(usize::MAX) };
    let mut flows: VecDeque<Arc<Flow>> = VecDeque::new();
    let mut lost = 0u64;
    while reader.position() < end {
        match reader.next() {
            Some(Entry::Flow(f)) if wanted(plan, &f, node) => {
                if flows.len() == keep {
                    flows.pop_front();
                }
                flows.push_back(f);
            }
            Some(Entry::Flow(_)) => {}
            Some(Entry::Lost(n)) => lost += n,
            None => break,
        }
    }
    if lost > 0 {
        out.push(Item::Lost(lost));
    }
    out.extend(flows.into_iter().map(Item::Flow));
    (out, reader)
}

/// Follow mode: new flows as they come, kernel losses as they are counted.
async fn follow(
    state: &ObserverState,
    plan: &Plan,
    mut reader: Reader,
    tx: &mpsc::Sender<Result<GetFlowsResponse, Status>>,
    mut losses: Option<broadcast::Receiver<pb::LostEvent>>,
) -> Result<(), ()> {
    let node = state.node_name.as_str();
    let mask = plan.mask.as_ref();
    loop {
        let entry = match losses.as_mut() {
            Some(rx) => tokio::select! {
                e = reader.next_wait() => e,
                lost = rx.recv() => {
                    match lost {
                        Ok(l) => send(tx, lost_response(l, node)).await?,
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => losses = None,
                    }
                    continue;
                }
                () = tx.closed() => return Err(()),
            },
            None => tokio::select! {
                e = reader.next_wait() => e,
                () = tx.closed() => return Err(()),
            },
        };
        match entry {
            Entry::Flow(f) => {
                if plan.until.is_some_and(|u| f.time_ns > u) {
                    return Ok(());
                }
                if wanted(plan, &f, node) {
                    send(tx, flow_response(&f, node, mask)).await?;
                }
            }
            Entry::Lost(n) => send(tx, lost_response(lost_event(LostEventSource::HubbleRingBuffer, n, 0, 0), node)).await?,
        }
    }
}
