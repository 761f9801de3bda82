//! The export feed: one permanent follow stream to every node's collector,
//! independent of any client, handed in batches to the exporters.
//!
//! Each node's stream is followed on its own task. When it fails (the
//! collector restarts, the network breaks), the task reconnects with
//! back-off (0.5 s doubling to 10 s) and asks for the flows `since` the last
//! one it received, so what the node recorded meanwhile (and still holds in
//! its flow store) is not lost; at most the flows of that last instant come
//! twice. On the relay's first start the feed begins with new flows; after
//! a restart it resumes from where the exporters' spools say they were.
//!
//! The nodes followed are the relay's peers as they change (with
//! `--peer-service`, as the Peer service announces them): a node that joins
//! is followed from then on, one that leaves is dropped, one that
//! moves is followed at its new address from its last flow.
//!
//! Items are batched (up to 512, or what arrived within 10 ms) and not
//! sorted across nodes: exporters do not need a global order, and waiting
//! for one would only add delay. A slow exporter never slows the feed:
//! [`Exporters::push`] does not wait.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prost_types::Timestamp;
use sightline_export::Exporters;
use sightline_proto::observer::get_flows_response::ResponseTypes;
use sightline_proto::observer::observer_client::ObserverClient;
use sightline_proto::observer::{GetFlowsRequest, GetFlowsResponse};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::server::{Connected, PeerSet};

/// Items per batch handed to the exporters.
pub const BATCH: usize = 512;
/// How long a batch waits to fill up.
pub const LINGER: Duration = Duration::from_millis(10);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How many node streams are connected right now.
#[derive(Clone, Debug, Default)]
pub struct FeedStatus {
    connected: Arc<AtomicUsize>,
}

impl FeedStatus {
    /// Node streams connected.
    #[must_use]
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }
}

fn timestamp(ns: i64) -> Timestamp {
    Timestamp { seconds: ns.div_euclid(1_000_000_000), nanos: ns.rem_euclid(1_000_000_000) as i32 }
}

fn nanos(t: &Timestamp) -> i64 {
    t.seconds.saturating_mul(1_000_000_000).saturating_add(i64::from(t.nanos))
}

/// Counts a connected node stream while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(status: &FeedStatus) -> Self {
        status.connected.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(&status.connected))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per node, the time of the last flow handed on (or where to resume).
type Marks = Arc<Mutex<BTreeMap<String, i64>>>;

/// Follows every peer of `peers` — as they are and as they change — until
/// `stop` turns true. `resume` holds, per node, the time to start from
/// (absent: new flows only). A node that leaves is no longer followed; one
/// that moves to another address is followed there from its last flow.
pub async fn run(
    mut peers: watch::Receiver<PeerSet>,
    exporters: Arc<Exporters>,
    resume: BTreeMap<String, i64>,
    status: FeedStatus,
    mut stop: watch::Receiver<bool>,
) {
    let marks: Marks = Arc::new(Mutex::new(resume));
    let mut tasks = JoinSet::new();
    let mut followed: BTreeMap<String, (Arc<Connected>, tokio::task::AbortHandle)> = BTreeMap::new();
    loop {
        let now = Arc::clone(&peers.borrow_and_update());
        followed.retain(|name, (peer, task)| {
            let keep = now.iter().any(|p| Arc::ptr_eq(p, peer));
            if !keep {
                log::info!("export feed: no longer following {name} at {}", peer.peer.address);
                task.abort();
            }
            keep
        });
        for peer in now.iter() {
            if followed.contains_key(&peer.peer.name) {
                continue;
            }
            let since = marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&peer.peer.name).copied();
            let task = tasks.spawn(follow(
                peer.peer.name.clone(),
                peer.channel.clone(),
                Arc::clone(&exporters),
                since,
                Arc::clone(&marks),
                status.clone(),
                stop.clone(),
            ));
            followed.insert(peer.peer.name.clone(), (Arc::clone(peer), task));
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            changed = peers.changed() => if changed.is_err() {
                // No more changes: follow what there is until stopped.
                let _ = stop.wait_for(|s| *s).await;
                break;
            },
            _ = stop.changed() => break,
            // Reap the tasks that ended.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn follow(
    node: String,
    channel: Channel,
    exporters: Arc<Exporters>,
    mut since: Option<i64>,
    marks: Marks,
    status: FeedStatus,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_START;
    loop {
        if *stop.borrow() {
            return;
        }
        let request = GetFlowsRequest { follow: true, since: since.map(timestamp), ..GetFlowsRequest::default() };
        let mut client = ObserverClient::new(channel.clone());
        let opened = tokio::select! {
            r = client.get_flows(request) => r,
            _ = stop.changed() => return,
        };
        match opened {
            Ok(response) => {
                log::info!("export feed: following {node}{}", since.map_or(String::new(), |s| format!(" since {s} ns")));
                let _open = Open::new(&status);
                backoff = BACKOFF_START;
                let stream = response.into_inner().chunks_timeout(BATCH, LINGER);
                tokio::pin!(stream);
                loop {
                    let chunk = tokio::select! {
                        c = stream.next() => c,
                        _ = stop.changed() => None,
                    };
                    let Some(chunk) = chunk else { break };
                    let mut items: Vec<Arc<GetFlowsResponse>> = Vec::with_capacity(chunk.len());
                    let mut failed = None;
                    for item in chunk {
                        match item {
                            Ok(r) => {
                                if let Some(ResponseTypes::Flow(f)) = &r.response_types
                                    && let Some(t) = &f.time
                                {
                                    since = Some(since.map_or(nanos(t), |s| s.max(nanos(t))));
                                }
                                items.push(Arc::new(r));
                            }
                            Err(status) => failed = Some(status),
                        }
                    }
                    if !items.is_empty() {
                        exporters.push(&items.into());
                        if let Some(t) = since {
                            marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(node.clone(), t);
                        }
                    }
                    if let Some(status) = failed {
                        log::warn!("export feed: {node}: {status}");
                        break;
                    }
                }
                if *stop.borrow() {
                    return;
                }
            }
            Err(status) => log::debug!("export feed: {node} unavailable: {status}"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
