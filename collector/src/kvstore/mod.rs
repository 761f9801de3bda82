//! Endpoint slices shared through etcd (Cilium's kvstore mode with
//! CiliumEndpointSlices).
//!
//! Each collector publishes its own endpoints in slices (`slices.rs`: at
//! most 100 endpoints of one namespace and identity each) under
//! [`slices::PREFIX`], attached to a lease of its own so that a dead
//! collector's slices expire, and watches every slice to learn the other
//! nodes' endpoints. Changes are coalesced for [`COALESCE`] and only the
//! slices that changed are written, in transactions.
//!
//! The kvstore is never needed for connectivity: the state source's
//! per-endpoint path goes on, and the remote endpoints last read stay in
//! force while etcd is away. When it is back the session starts over: a new
//! lease, a full re-list of every slice, a full re-publish of this node's.

pub mod metrics;
pub mod slices;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio::time::Instant;

pub use metrics::KvstoreMetrics;
pub use slices::{EndpointSlice, LocalEndpoint, RemoteEndpoints, Slicer};

/// How long changes are gathered before slices are written, and the least
/// time between two writes of this node's slices.
pub const COALESCE: Duration = Duration::from_millis(100);

/// Transaction size (etcd refuses more than 128 operations by default).
const TXN_OPS: usize = 64;

/// How a collector uses the kvstore.
#[derive(Clone, Debug)]
pub struct KvstoreOptions {
    /// etcd client URLs (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// This node: the owner of the slices it publishes.
    pub node: String,
    /// The lease's time to live: a collector that stops keeping it alive
    /// loses its slices after this.
    pub lease_ttl: Duration,
    /// Coalescing window (default [`COALESCE`]).
    pub coalesce: Duration,
}

impl KvstoreOptions {
    #[must_use]
    pub fn new(endpoints: Vec<String>, node: &str) -> Self {
        Self { endpoints, node: node.to_owned(), lease_ttl: Duration::from_secs(10), coalesce: COALESCE }
    }
}

/// Checks `--kvstore-endpoints`: `http://HOST:PORT`, comma-separated or
/// repeated.
///
/// # Errors
///
/// An empty list, or an entry that is not an `http://host:port` URL.
pub fn parse_endpoints(values: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for v in values.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|v| !v.is_empty()) {
        let rest = v
            .strip_prefix("http://")
            .ok_or_else(|| format!("--kvstore-endpoints {v:?}: expected http://HOST:PORT (TLS to etcd is not supported)"))?;
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .ok_or_else(|| format!("--kvstore-endpoints {v:?}: no port (expected http://HOST:PORT)"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("--kvstore-endpoints {v:?}: expected http://HOST:PORT with a port from 1 to 65535"));
        }
        out.push(v.trim_end_matches('/').to_owned());
    }
    if out.is_empty() {
        return Err("--kvstore-endpoints: no endpoint given".to_owned());
    }
    Ok(out)
}

/// The collector's side of the kvstore: hand it the local endpoints, read
/// the remote ones.
pub struct Handle {
    local: watch::Sender<Option<Vec<LocalEndpoint>>>,
    /// Other nodes' endpoints as the slices say (kept while etcd is away).
    pub remote: watch::Receiver<Arc<RemoteEndpoints>>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// The endpoints this node publishes now (published after the
    /// coalescing window).
    pub fn publish(&self, endpoints: Vec<LocalEndpoint>) {
        self.local.send_if_modified(|old| {
            if old.as_ref() == Some(&endpoints) {
                false
            } else {
                *old = Some(endpoints);
                true
            }
        });
    }

    /// Stops the task (its lease expires; its slices with it).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts publishing and watching (on the current tokio runtime).
#[must_use]
pub fn start(opts: KvstoreOptions, metrics: KvstoreMetrics) -> Handle {
    let (local, local_rx) = watch::channel(None);
    let (remote_tx, remote) = watch::channel(Arc::new(RemoteEndpoints::new()));
    metrics.fallback.set(1);
    let task = tokio::spawn(run(opts, metrics, local_rx, remote_tx));
    Handle { local, remote, task }
}

/// What failed in a session, and under which operation it is counted.
#[derive(Debug)]
struct SessionError {
    operation: &'static str,
    message: String,
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.operation, self.message)
    }
}

fn fail(operation: &'static str) -> impl Fn(etcd_client::Error) -> SessionError {
    move |e| SessionError { operation, message: e.to_string() }
}

/// An operation with a deadline (a gRPC call to a dead server may hang).
async fn deadline<T>(
    operation: &'static str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(Duration::from_secs(5), f).await {
        Ok(r) => r.map_err(fail(operation)),
        Err(_) => Err(SessionError { operation, message: "timed out after 5 s".to_owned() }),
    }
}

/// What a node keeps across sessions.
struct Node {
    opts: KvstoreOptions,
    metrics: KvstoreMetrics,
    slicer: Slicer,
    /// Whether the slicer was seeded from the kvstore (first session).
    seeded: bool,
    /// Remote entries already observed: (node, namespace, name) → created.
    seen: BTreeMap<(String, String, String), i64>,
}

async fn run(
    opts: KvstoreOptions,
    metrics: KvstoreMetrics,
    mut local: watch::Receiver<Option<Vec<LocalEndpoint>>>,
    remote: watch::Sender<Arc<RemoteEndpoints>>,
) {
    let mut node = Node { slicer: Slicer::new(&opts.node), opts, metrics, seeded: false, seen: BTreeMap::new() };
    let mut backoff = Duration::from_millis(250);
    let mut failures = 0u64;
    loop {
        let started = Instant::now();
        let err = session(&mut node, &mut local, &remote).await;
        node.metrics.fallback.set(1);
        node.metrics.error(err.operation);
        if failures == 0 || failures.is_power_of_two() {
            log::warn!(
                "kvstore {}: {err}; remote endpoints come from the per-endpoint path (and the slices last read) until it is back",
                node.opts.endpoints.join(",")
            );
        }
        failures += 1;
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(250);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn now_unix_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// One connection: lease, list, full publish, then watch and publish
/// changes until something fails.
async fn session(
    node: &mut Node,
    local: &mut watch::Receiver<Option<Vec<LocalEndpoint>>>,
    remote: &watch::Sender<Arc<RemoteEndpoints>>,
) -> SessionError {
    match session_inner(node, local, remote).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn session_inner(
    node: &mut Node,
    local: &mut watch::Receiver<Option<Vec<LocalEndpoint>>>,
    remote: &watch::Sender<Arc<RemoteEndpoints>>,
) -> Result<std::convert::Infallible, SessionError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    let mut client = deadline("connect", Client::connect(&node.opts.endpoints, Some(options))).await?;
    let ttl = node.opts.lease_ttl.as_secs().max(2) as i64;
    let lease = deadline("lease", client.lease_grant(ttl, None)).await?.id();
    let (mut keeper, mut keepalives) = deadline("lease", client.lease_keep_alive(lease)).await?;

    // Every slice, and the revision to watch from.
    let listed = deadline("list", client.get(slices::PREFIX, Some(GetOptions::new().with_prefix()))).await?;
    let revision = listed.header().map_or(0, etcd_client::ResponseHeader::revision);
    let mut all: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    for kv in listed.kvs() {
        if let Some(slice) = parse_slice(kv.key(), kv.value()) {
            all.insert(slice.name.clone(), slice);
        }
    }
    let now = now_unix_ns();
    node.seen.retain(|(n, ns, name), _| {
        all.values().any(|s| &s.node == n && &s.namespace == ns && s.endpoints.iter().any(|e| &e.name == name))
    });
    for slice in all.values() {
        received(node, slice, now);
    }
    publish_remote(node, &all, remote);

    // This node's slices: seeded from the kvstore once (a restarted
    // collector keeps its slices' names and stamps), then all re-written
    // under the new lease and the stale ones deleted.
    let own: BTreeMap<String, EndpointSlice> = all.values().filter(|s| s.node == node.opts.node).map(|s| (s.name.clone(), s.clone())).collect();
    if !node.seeded {
        node.slicer.seed(own.values().cloned());
        node.seeded = true;
    }
    let mut written = own;
    let current = local.borrow_and_update().clone();
    if let Some(endpoints) = current {
        node.slicer.update(&endpoints, now_unix_ns());
        let changes = slices::Changes {
            puts: node.slicer.slices().values().cloned().collect(),
            deletes: written.keys().filter(|n| !node.slicer.slices().contains_key(*n)).cloned().collect(),
        };
        write(&mut client, node, lease, &changes).await?;
        written = node.slicer.slices().clone();
    } else {
        // Nothing to publish yet: keep what is there alive under the new
        // lease until the first local state says otherwise.
        let changes = slices::Changes { puts: written.values().cloned().collect(), deletes: Vec::new() };
        write(&mut client, node, lease, &changes).await?;
    }
    node.metrics.fallback.set(0);
    log::info!(
        "kvstore {}: in sync at revision {revision}: {} slices, {} of them this node's",
        node.opts.endpoints.join(","),
        all.len(),
        written.len()
    );

    let mut watch = deadline(
        "watch",
        client.watch(slices::PREFIX, Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1))),
    )
    .await?;
    let mut keepalive = tokio::time::interval(Duration::from_secs((ttl as u64 / 3).max(1)));
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty: Option<Instant> = None;
    let mut last_flush = Instant::now();
    loop {
        let flush_at = dirty.map(|since| (since + node.opts.coalesce).max(last_flush + node.opts.coalesce));
        tokio::select! {
            changed = local.changed() => {
                if changed.is_err() {
                    // The collector is going away.
                    std::future::pending::<()>().await;
                }
                dirty.get_or_insert_with(Instant::now);
            }
            () = sleep_until(flush_at) => {
                dirty = None;
                last_flush = Instant::now();
                let current = local.borrow_and_update().clone();
                let Some(endpoints) = current else { continue };
                node.slicer.update(&endpoints, now_unix_ns());
                let changes = slices::diff(&written, node.slicer.slices());
                if !changes.is_empty() {
                    write(&mut client, node, lease, &changes).await?;
                    written = node.slicer.slices().clone();
                }
            }
            msg = watch.message() => {
                let resp = msg.map_err(fail("watch"))?.ok_or_else(|| SessionError { operation: "watch", message: "the watch stream ended".to_owned() })?;
                if resp.compact_revision() > 0 {
                    return Err(SessionError { operation: "watch", message: format!("watch compacted at revision {}: re-listing", resp.compact_revision()) });
                }
                if resp.canceled() {
                    return Err(SessionError { operation: "watch", message: format!("watch canceled: {}", resp.cancel_reason()) });
                }
                let now = now_unix_ns();
                let mut changed = false;
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    match event.event_type() {
                        EventType::Put => {
                            if let Some(slice) = parse_slice(kv.key(), kv.value()) {
                                received(node, &slice, now);
                                all.insert(slice.name.clone(), slice);
                                changed = true;
                            }
                        }
                        EventType::Delete => {
                            let name = String::from_utf8_lossy(kv.key()).trim_start_matches(slices::PREFIX).to_owned();
                            if let Some(old) = all.remove(&name) {
                                for e in &old.endpoints {
                                    node.seen.remove(&(old.node.clone(), old.namespace.clone(), e.name.clone()));
                                }
                                changed = true;
                                // Ours, deleted by someone else (or expired): write it again.
                                if old.node == node.opts.node && written.remove(&name).is_some() {
                                    dirty.get_or_insert_with(Instant::now);
                                }
                            }
                        }
                    }
                }
                if changed {
                    publish_remote(node, &all, remote);
                }
            }
            _ = keepalive.tick() => {
                keeper.keep_alive().await.map_err(fail("lease"))?;
            }
            ka = keepalives.message() => {
                let ka = ka.map_err(fail("lease"))?.ok_or_else(|| SessionError { operation: "lease", message: "the lease keep-alive stream ended".to_owned() })?;
                if ka.ttl() <= 0 {
                    return Err(SessionError { operation: "lease", message: format!("lease {lease:x} expired") });
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Counts and times a slice of another node as it arrives.
fn received(node: &mut Node, slice: &EndpointSlice, now: i64) {
    if slice.node == node.opts.node {
        return;
    }
    node.metrics.slices_received.inc();
    for e in &slice.endpoints {
        let key = (slice.node.clone(), slice.namespace.clone(), e.name.clone());
        if node.seen.get(&key) == Some(&e.created_unix_ns) {
            continue;
        }
        node.seen.insert(key, e.created_unix_ns);
        node.metrics.endpoints_received.inc();
        node.metrics.sync_latency.observe((now - e.created_unix_ns).max(0) as f64 / 1e9);
    }
}

fn publish_remote(node: &Node, all: &BTreeMap<String, EndpointSlice>, remote: &watch::Sender<Arc<RemoteEndpoints>>) {
    node.metrics.slices.set(all.len() as i64);
    let view = slices::remote_endpoints(all.values(), &node.opts.node);
    remote.send_if_modified(|old| {
        if **old == view {
            false
        } else {
            *old = Arc::new(view);
            true
        }
    });
}

fn parse_slice(key: &[u8], value: &[u8]) -> Option<EndpointSlice> {
    let key = String::from_utf8_lossy(key);
    match serde_json::from_slice::<EndpointSlice>(value) {
        Ok(slice) if slices::key(&slice.name) == key => Some(slice),
        Ok(slice) => {
            log::warn!("kvstore: {key} holds slice {:?}: ignored", slice.name);
            None
        }
        Err(err) => {
            log::warn!("kvstore: {key} is not an endpoint slice: {err}");
            None
        }
    }
}

/// Writes `changes` in transactions of at most [`TXN_OPS`] operations,
/// every slice attached to `lease`.
async fn write(client: &mut Client, node: &Node, lease: i64, changes: &slices::Changes) -> Result<(), SessionError> {
    for chunk in changes.puts.chunks(TXN_OPS) {
        let values: Vec<Vec<u8>> = chunk.iter().map(|s| serde_json::to_vec(s).expect("slices serialize")).collect();
        let bytes: usize = values.iter().map(Vec::len).sum();
        let ops: Vec<TxnOp> = chunk
            .iter()
            .zip(values)
            .map(|(s, v)| TxnOp::put(s.key(), v, Some(PutOptions::new().with_lease(lease))))
            .collect();
        deadline("put", client.txn(Txn::new().and_then(ops))).await?;
        node.metrics.slices_published.inc_by(chunk.len() as u64);
        node.metrics.bytes_published.inc_by(bytes as u64);
        node.metrics.endpoints_published.inc_by(chunk.iter().map(|s| s.endpoints.len() as u64).sum());
    }
    for chunk in changes.deletes.chunks(TXN_OPS) {
        let ops: Vec<TxnOp> = chunk.iter().map(|n| TxnOp::delete(slices::key(n), None)).collect();
        deadline("delete", client.txn(Txn::new().and_then(ops))).await?;
        node.metrics.slices_deleted.inc_by(chunk.len() as u64);
    }
    Ok(())
}

/// Every slice in the kvstore (for `lab endpointslices`).
///
/// # Errors
///
/// etcd cannot be reached or answers with an error.
pub async fn list(endpoints: &[String]) -> Result<Vec<EndpointSlice>, String> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(5));
    let mut client = Client::connect(endpoints, Some(options)).await.map_err(|e| format!("connecting to {}: {e}", endpoints.join(",")))?;
    let resp = client
        .get(slices::PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("listing {}: {e}", slices::PREFIX))?;
    Ok(resp.kvs().iter().filter_map(|kv| parse_slice(kv.key(), kv.value())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        assert_eq!(parse_endpoints(&["http://127.0.0.1:2379".into()]).unwrap(), ["http://127.0.0.1:2379"]);
        assert_eq!(
            parse_endpoints(&["http://127.0.0.1:1,http://127.0.0.1:2/".into()]).unwrap(),
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        for bad in ["", "127.0.0.1:2379", "https://127.0.0.1:2379", "http://127.0.0.1", "http://127.0.0.1:0", "http://:80", "http://h:99999"] {
            let err = parse_endpoints(&[bad.into()]).unwrap_err();
            assert!(err.contains("--kvstore-endpoints"), "{bad}: {err}");
        }
    }
}
