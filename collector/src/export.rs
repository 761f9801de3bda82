//! Node-local export (as Hubble's exporter runs on each agent): this
//! node's flows, read from the flow store as a follower reads them, handed
//! to the exporters of `--export-config` in batches.
//!
//! The reader never slows the pipeline: it reads the store behind it, and
//! [`Exporters::push`] never waits. Flows the store overwrote before the
//! reader got to them reach file exporters as a lost-events record
//! (HUBBLE_RING_BUFFER), as GetFlows followers see them.

use std::sync::Arc;

use sightline_export::Exporters;
use sightline_proto::flow::LostEventSource;
use sightline_proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};
use tokio::sync::watch;

use crate::flow::convert::{lost_event, timestamp, to_proto};
use crate::flow::store::{Entry, Start, Store};

/// Items per batch handed to the exporters.
const BATCH: usize = 512;

/// Follows `store` until `stop` turns true.
pub async fn run(store: Arc<Store>, node: String, exporters: Arc<Exporters>, mut stop: watch::Receiver<bool>) {
    let mut reader = store.reader(Start::Now);
    loop {
        tokio::select! {
            () = reader.wait() => {}
            _ = stop.changed() => return,
        }
        let mut batch: Vec<Arc<GetFlowsResponse>> = Vec::with_capacity(BATCH);
        while let Some(entry) = reader.next() {
            let response = match entry {
                Entry::Flow(f) => GetFlowsResponse {
                    node_name: node.clone(),
                    time: Some(timestamp(f.time_ns)),
                    response_types: Some(ResponseTypes::Flow(to_proto(&f, &node, None))),
                },
                Entry::Lost(n) => GetFlowsResponse {
                    node_name: node.clone(),
                    time: Some(timestamp(crate::observer::events::now_ns())),
                    response_types: Some(ResponseTypes::LostEvents(lost_event(LostEventSource::HubbleRingBuffer, n, 0, 0))),
                },
            };
            batch.push(Arc::new(response));
            if batch.len() == BATCH {
                exporters.push(&std::mem::replace(&mut batch, Vec::with_capacity(BATCH)).into());
            }
        }
        if !batch.is_empty() {
            exporters.push(&batch.into());
        }
    }
}
