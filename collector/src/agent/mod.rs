//! The collector process: loads the probes, serves the control socket,
//! drains the ring buffer, and collects expired connections.
//!
//! Modules: `pipeline` (the ring buffer to the store), `monitor` (losses,
//! conntrack GC, endpoint slices), `apply` (desired states, registrations,
//! status, the control socket's handler).
//!
//! Stages: `consumer` (its own thread: ring buffer → decoded events → flows,
//! never blocks the kernel side, counts what it cannot decode), subscribers (one
//! task per control-socket subscriber, each with a bounded queue: a slow one
//! loses events and is told how many), `gc` (conntrack expiry).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use sightline_abi as abi;
use tokio::net::UnixListener;
use tokio::sync::broadcast;

use crate::btf::KernelLayout;
use crate::control::Status;
use crate::datapath::{self, Plan};
use crate::decoder::{self, Record};
use crate::metadata::Metadata;
use crate::loader::{self, LoaderError, ProbeOptions, Probes};
use crate::netns::netns_inode;
use crate::agent_metrics::AgentMetrics;
use crate::flow::{Flow, FlowBuilder, Store};
use crate::metrics::{Metrics, PodDeletions};
use sightline_proto::flow::LostEventSource;
use crate::observer::{self, ObserverState};
use crate::state::NodeState;

mod apply;
mod monitor;
mod pipeline;

use apply::{apply, reapply};
use monitor::{follow_slices, gc, loss_monitor};
use pipeline::consume;

/// Monitor aggregation level (Cilium's names and numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    /// A trace for every packet at every observation point.
    None,
    /// Traces only for new connections, newly seen TCP flags, and once per
    /// report interval per connection; no `from-*` traces. Drops and policy
    /// verdicts always.
    Medium,
}

impl Aggregation {
    #[must_use]
    pub const fn level(self) -> u32 {
        match self {
            Self::None => abi::AGGREGATION_NONE,
            Self::Medium => abi::AGGREGATION_MEDIUM,
        }
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Medium => "medium",
        })
    }
}

impl FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "disabled" | "0" => Ok(Self::None),
            "medium" | "3" => Ok(Self::Medium),
            _ => Err(format!("unknown monitor aggregation {s:?}: valid values are none (0, disabled) and medium (3)")),
        }
    }
}

/// How the collector runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node_name: String,
    /// The node's network namespace (where the pod veths live).
    pub node_netns: PathBuf,
    pub control_socket: PathBuf,
    /// Besides root, the only uid that may use the control socket.
    pub control_uid: u32,
    /// The lab this node belongs to: pod namespaces an `apply` names must
    /// be `/run/netns/<lab>.…`.
    pub lab: String,
    pub pin_dir: PathBuf,
    pub aggregation: Aggregation,
    /// Print every decoded event on stdout.
    pub debug_events: bool,
    /// Connection lifetimes.
    pub ct_timeouts: CtTimeouts,
    /// How often expired connections are deleted.
    pub gc_interval: Duration,
    /// Where to serve the gRPC API (Observer, Peer, health, reflection);
    /// `None`: not served.
    pub grpc: Option<std::net::SocketAddr>,
    /// TLS of the gRPC API (Hubble's `--hubble-tls-*` flags); `None`:
    /// plaintext (`--hubble-disable-tls`).
    pub grpc_tls: Option<Arc<sightline_tls::ServerTls>>,
    /// Flows kept in the store (2^n − 1).
    pub flow_capacity: usize,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; `None`: not served.
    pub metrics: Option<std::net::SocketAddr>,
    /// Which Hubble metrics handlers run, with their options.
    pub metrics_config: crate::metrics::MetricsConfig,
    /// Node-local export: the checked `--export-config` file and its
    /// configuration (re-read when it changes), and where spools go.
    pub export: Option<ExportOptions>,
    /// Replace a pinned datapath that could be adopted (`--reload`).
    pub reload: crate::pins::Reload,
    /// etcd client URLs: publish this node's endpoints in slices and read
    /// the other nodes' (`--kvstore-endpoints`); `None`: no kvstore.
    pub kvstore: Option<Vec<String>>,
    /// The Kubernetes API as the state source (`--kubernetes`); `None`:
    /// the control socket's `apply` only.
    pub kubernetes: Option<crate::kubernetes::SourceConfig>,
    /// The cluster's name (`--cluster-name`): in the certificate names the
    /// Peer service announces and on exported records.
    pub cluster_name: String,
}

/// `--export-config` of a collector.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub path: PathBuf,
    pub config: sightline_export::ExportConfig,
    pub context: sightline_export::Context,
}

/// Connection lifetimes after a connection's last packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP before the handshake completes.
    pub syn: Duration,
    /// Established TCP.
    pub established: Duration,
    /// TCP after FIN or RST.
    pub closing: Duration,
    /// UDP, ICMP and everything else.
    pub other: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            syn: Duration::from_secs(60),
            established: Duration::from_secs(6 * 3600),
            closing: Duration::from_secs(10),
            other: Duration::from_secs(60),
        }
    }
}

impl FromStr for CtTimeouts {
    type Err = String;
    /// `syn=60s,established=6h,closing=10s,other=60s`; keys may be omitted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut t = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected KEY=DURATION (keys: syn, established, closing, other)"))?;
            let d = parse_duration(value)?;
            if d.is_zero() {
                return Err(format!("{part:?}: a lifetime must be longer than zero"));
            }
            if d > MAX_CT_TIMEOUT {
                return Err(format!("{part:?}: a lifetime must be at most 8760h (a year)"));
            }
            match key.trim() {
                "syn" => t.syn = d,
                "established" => t.established = d,
                "closing" => t.closing = d,
                "other" => t.other = d,
                k => return Err(format!("unknown conntrack timeout {k:?} (keys: syn, established, closing, other)")),
            }
        }
        Ok(t)
    }
}

/// The longest connection lifetime: a year. (The datapath adds lifetimes
/// to its nanosecond clock; a year keeps that far from overflowing.)
pub const MAX_CT_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The shortest and longest `--ct-gc-interval`.
pub const GC_INTERVAL_BOUNDS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(24 * 3600));

/// Parses `--ct-gc-interval`: a duration between 100ms and 24h.
///
/// # Errors
///
/// Not a duration, or outside the bounds.
pub fn parse_gc_interval(s: &str) -> Result<Duration, String> {
    sightline_flow::duration::parse_within(s, GC_INTERVAL_BOUNDS.0, GC_INTERVAL_BOUNDS.1)
}

/// Parses a duration as Go spells it (`500ms`, `30s`, `2m`, `1h30m`), or
/// plain seconds; never panics, however long the input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    sightline_flow::duration::parse_or_seconds(s)
}

/// Why the collector stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("node namespace {path}: {source}")]
    NodeNetns { path: PathBuf, #[source] source: std::io::Error },
    #[error("control socket {path}: {source}")]
    Control { path: PathBuf, #[source] source: std::io::Error },
    #[error("ring buffer: {0}")]
    RingBuf(#[source] std::io::Error),
    #[error("flow store: {0}")]
    Store(#[from] crate::flow::StoreError),
    #[error("--export-config {0}")]
    Export(String),
    #[error("gRPC address {address}: {source}")]
    Grpc { address: std::net::SocketAddr, #[source] source: std::io::Error },
    #[error("metrics: {0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("the Kubernetes state source: {0}")]
    Kubernetes(#[from] crate::kubernetes::SourceError),
}

struct Inner {
    probes: Probes,
    plan: Plan,
}

struct Shared {
    opts: AgentOptions,
    observer: Arc<ObserverState>,
    metrics: Arc<Metrics>,
    own_metrics: AgentMetrics,
    pod_deletions: PodDeletions,
    /// Monotonic time of the last pipeline run (liveness).
    last_drain_ns: AtomicU64,
    /// The desired state last applied (for agent events).
    applied: Mutex<Option<NodeState>>,
    /// Applies one at a time: from the control socket and from slices.
    apply_lock: Mutex<()>,
    /// What the state source sent last (the per-endpoint path); applied
    /// again, merged with the slices, when they change.
    source: Mutex<Option<NodeState>>,
    /// Endpoints the CNI plugin registered (merged into what the source
    /// sends: `registry::merge`).
    registry: Mutex<crate::registry::Registry>,
    /// Other nodes' endpoints from the kvstore's slices.
    remote: Mutex<Arc<crate::kvstore::RemoteEndpoints>>,
    kvstore: Option<crate::kvstore::Handle>,
    kvstore_metrics: crate::kvstore::KvstoreMetrics,
    inner: Mutex<Inner>,
    meta: RwLock<Arc<Metadata>>,
    events: broadcast::Sender<Arc<Record>>,
    decoded: AtomicU64,
    undecodable: AtomicU64,
    kernel_drops: bool,
    /// Whether a desired state has been applied (the consumer waits for
    /// it, for a while, so that a backlog left in the pinned ring buffer
    /// is enriched with pod names).
    programmed: tokio::sync::watch::Sender<bool>,
    /// The Kubernetes state source's sync state, once it runs.
    kubernetes: std::sync::OnceLock<crate::kubernetes::StatusHandle>,
}

fn datapath_config(opts: &AgentOptions) -> sightline_abi::Config {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    sightline_abi::Config {
        ct_tcp_syn_timeout_ns: ns(opts.ct_timeouts.syn),
        ct_tcp_established_timeout_ns: ns(opts.ct_timeouts.established),
        ct_tcp_closing_timeout_ns: ns(opts.ct_timeouts.closing),
        ct_other_timeout_ns: ns(opts.ct_timeouts.other),
        ..loader::default_config(opts.aggregation.level())
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of `bpf_ktime_get_ns`).
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn mono_to_unix_ns() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    unix - monotonic_ns() as i64
}

/// Runs the collector until SIGTERM or SIGINT. With `notify_ready`, prints
/// `ready` on stdout once the control socket accepts requests.
pub async fn run(opts: AgentOptions, notify_ready: bool) -> Result<(), AgentError> {
    let node_ino = netns_inode(&opts.node_netns)
        .map_err(|source| AgentError::NodeNetns { path: opts.node_netns.clone(), source })?;

    loader::ensure_filesystems()?;
    let layout = match KernelLayout::from_system() {
        Ok(l) => Some(l),
        Err(err) => {
            log::warn!("kernel drops will not be reported: {err}");
            None
        }
    };
    let started = Instant::now();
    let mut probes = Probes::load(&ProbeOptions {
        pin_dir: opts.pin_dir.clone(),
        config: datapath_config(&opts),
        kernel_offsets: layout.as_ref().map(|l| l.offsets),
        node_netns: Some(opts.node_netns.clone()),
        reload: opts.reload,
    })?;
    if probes.lab_netns.get(&(node_ino as u32), 0).is_err() {
        let _ = probes.lab_netns.insert(node_ino as u32, 1, 0);
    }
    let ring = probes.take_events().ok_or(AgentError::RingBuf(std::io::Error::other("the events map was taken already")))?;
    // What the maps hold is where the first apply starts from: after an
    // adoption it writes only what changed while no collector ran.
    let plan = datapath::current(&probes, node_ino as u32);
    log::info!(
        "datapath {} under {} in {} ms: {} endpoints, {} interfaces, {} conntrack entries",
        probes.start(),
        opts.pin_dir.display(),
        started.elapsed().as_millis(),
        plan.endpoints.len(),
        plan.interfaces.len(),
        probes.ct_entries(),
    );
    let lost_baseline = probes.lost_baseline().to_vec();

    let meta = Metadata {
        node_name: opts.node_name.clone(),
        kernel_reasons: layout.map(|l| l.drop_reasons.into_iter().map(|(v, name)| (v, Arc::from(name))).collect()).unwrap_or_default(),
        mono_to_unix_ns: mono_to_unix_ns(),
        ..Metadata::default()
    };
    let (events, _) = broadcast::channel(65_536);
    let store = Arc::new(Store::new(opts.flow_capacity)?);
    let grpc_listener = match opts.grpc {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address).await.map_err(|source| AgentError::Grpc { address, source })?,
        ),
        None => None,
    };
    let address = grpc_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let observer = Arc::new(ObserverState::new(opts.node_name.clone(), address, store));
    observer.seed_ring_losses(&lost_baseline);
    if opts.kubernetes.is_some() {
        // Notify waits for the cluster's nodes: a relay that reconnects
        // must not take this node alone for the whole cluster.
        observer.await_cluster();
    } else if opts.grpc_tls.is_some() {
        // Alone (no cluster view yet): this collector, with its certificate's name.
        let me = observer::peers::Announced {
            address: address.to_string(),
            tls_server_name: Some(observer::peers::tls_server_name(&opts.node_name, &opts.cluster_name)),
        };
        observer.announce([(opts.node_name.clone(), me)].into());
    }
    observer.agent_events.agent_started();
    let mut metrics = Metrics::new(&opts.metrics_config, crate::metrics::DEFAULT_MAX_SERIES_PER_METRIC)?;
    let own_metrics = AgentMetrics::register(metrics.registry_mut());
    let export_metrics = sightline_export::ExportMetrics::register(metrics.registry_mut());
    let (cap, _) = metrics.series_limit(crate::agent_metrics::POLICY_METRICS[0]);
    own_metrics.limit_policy_series(cap, |metric| metrics.series_limit(metric).1);
    metrics.on_pod_deletion(own_metrics.pod_deletion_hook());
    let kvstore_metrics = crate::kvstore::KvstoreMetrics::register(metrics.registry_mut());
    let kvstore = opts.kvstore.as_ref().map(|endpoints| {
        log::info!("kvstore {}: publishing this node's endpoint slices, watching every node's", endpoints.join(","));
        crate::kvstore::start(crate::kvstore::KvstoreOptions::new(endpoints.clone(), &opts.node_name), kvstore_metrics.clone())
    });
    let metrics = Arc::new(metrics);
    let metrics_listener = match opts.metrics {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let shared = Arc::new(Shared {
        pod_deletions: PodDeletions::new(Arc::clone(&metrics), PodDeletions::DEFAULT_GRACE)?,
        metrics,
        own_metrics,
        last_drain_ns: AtomicU64::new(monotonic_ns()),
        observer: Arc::clone(&observer),
        applied: Mutex::new(None),
        apply_lock: Mutex::new(()),
        source: Mutex::new(None),
        registry: Mutex::new(crate::registry::Registry::default()),
        remote: Mutex::new(Arc::new(crate::kvstore::RemoteEndpoints::new())),
        kvstore,
        kvstore_metrics,
        kernel_drops: !meta.kernel_reasons.is_empty(),
        opts: opts.clone(),
        inner: Mutex::new(Inner { probes, plan }),
        programmed: tokio::sync::watch::channel(false).0,
        kubernetes: std::sync::OnceLock::new(),
        meta: RwLock::new(Arc::new(meta)),
        events,
        decoded: AtomicU64::new(0),
        undecodable: AtomicU64::new(0),
    });

    let listener: UnixListener = crate::guard::bind_private(&opts.control_socket, opts.control_uid)
        .map_err(|source| AgentError::Control { path: opts.control_socket.clone(), source })?;
    log::info!(
        "collector for {} ready: control socket {}, maps pinned under {}, aggregation {}",
        opts.node_name,
        opts.control_socket.display(),
        opts.pin_dir.display(),
        opts.aggregation
    );

    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc = grpc_listener.map(|listener| {
        let tls = match &opts.grpc_tls {
            Some(t) if t.mutual() => "TLS, client certificates required",
            Some(_) => "TLS",
            None => "plaintext",
        };
        log::info!("gRPC (Observer, Peer, health, reflection) on {address}, {tls}");
        tokio::spawn(observer::serve(Arc::clone(&observer), listener, opts.grpc_tls.clone(), async {
            let _ = grpc_stopped.await;
        }))
    });
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = metrics_listener.map(|listener| {
        let live = Arc::clone(&shared);
        let ready = Arc::clone(&shared);
        let health = crate::metrics::Health::new(
            // Live: the pipeline ran within the last 5 s (it runs every 10 to 100 ms).
            move || monotonic_ns().saturating_sub(live.last_drain_ns.load(Ordering::Relaxed)) < 5_000_000_000,
            // Ready: the probes are loaded and a desired state is in force.
            move || ready.applied.lock().is_ok_and(|a| a.is_some()),
        );
        if let Ok(addr) = listener.local_addr() {
            log::info!("metrics on http://{addr}/metrics");
        }
        tokio::spawn(crate::metrics::serve(listener, Arc::clone(&shared.metrics), health, async {
            let _ = metrics_stopped.await;
        }))
    });
    if notify_ready {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    let (stop_export, export_stopped) = tokio::sync::watch::channel(false);
    let exporters = Arc::new(sightline_export::Exporters::new(
        sightline_export::Identity { service: "sightline-collector".to_owned(), cluster: opts.cluster_name.clone() },
        export_metrics.clone(),
    ));
    let mut export_tasks = Vec::new();
    if let Some(export) = &opts.export {
        exporters.apply(&export.config).await.map_err(|e| AgentError::Export(format!("{}: {e}", export.path.display())))?;
        export_metrics.reload(true);
        export_tasks.push(tokio::spawn(crate::export::run(
            Arc::clone(&observer.store),
            opts.node_name.clone(),
            Arc::clone(&exporters),
            export_stopped.clone(),
        )));
        export_tasks.push(tokio::spawn(sightline_export::manager::watch_config(
            Arc::clone(&exporters),
            export.path.clone(),
            export.context.clone(),
            Duration::from_secs(1),
            export_stopped.clone(),
        )));
    }
    let stop_consumer = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = tokio::spawn(consume(Arc::clone(&shared), ring, Arc::clone(&stop_consumer)));
    let gc = tokio::spawn(gc(Arc::clone(&shared)));
    let losses = tokio::spawn(loss_monitor(Arc::clone(&shared), lost_baseline.iter().sum()));
    let slices = shared.kvstore.as_ref().map(|k| tokio::spawn(follow_slices(Arc::clone(&shared), k.remote.clone())));
    // The Kubernetes source applies in process, as the control socket does.
    let kubernetes = match opts.kubernetes.clone() {
        Some(config) => {
            let applier = Arc::clone(&shared);
            let running = crate::kubernetes::run_applying(config, move |state| apply(&applier, state)).await?;
            let _ = shared.kubernetes.set(running.status);
            // The Peer service announces every node's collector, on this
            // collector's port (a DaemonSet's agents share it).
            let (port, tls, cluster) = (observer.address.port(), opts.grpc_tls.is_some(), opts.cluster_name.clone());
            let announcer = Arc::clone(&observer);
            let mut nodes = running.nodes;
            let announcing = tokio::spawn(async move {
                loop {
                    let current = nodes.borrow_and_update().clone();
                    if !current.is_empty() {
                        announcer.announce(observer::peers::from_nodes(&current, port, tls, &cluster));
                    }
                    if nodes.changed().await.is_err() {
                        return;
                    }
                }
            });
            Some((running.task, announcing))
        }
        None => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AgentError::RingBuf)?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(crate::control::serve(Arc::clone(&shared), stream)); }
                Err(err) => log::warn!("control socket accept: {err}"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    stop_consumer.store(true, Ordering::Relaxed);
    consumer.abort();
    gc.abort();
    if let Some((source, announcing)) = kubernetes {
        source.abort();
        announcing.abort();
    }
    if let Some(s) = slices {
        s.abort();
    }
    if let Some(k) = &shared.kvstore {
        k.stop();
    }
    losses.abort();
    let _ = stop_export.send(true);
    for t in export_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    exporters.shutdown().await;
    let _ = stop_grpc.send(());
    let _ = stop_metrics.send(());
    if let Some(m) = metrics_server {
        let _ = tokio::time::timeout(Duration::from_secs(2), m).await;
    }
    if let Some(grpc) = grpc {
        if let Ok(Ok(Err(err))) = tokio::time::timeout(Duration::from_secs(2), grpc).await {
            log::warn!("{err}");
        }
    }
    let _ = std::fs::remove_file(&opts.control_socket);
    log::info!("collector for {} stopped", opts.node_name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_aggregation_levels() {
        assert_eq!("none".parse::<Aggregation>().unwrap(), Aggregation::None);
        assert_eq!("MEDIUM".parse::<Aggregation>().unwrap(), Aggregation::Medium);
        assert_eq!("3".parse::<Aggregation>().unwrap(), Aggregation::Medium);
        let err = "max".parse::<Aggregation>().unwrap_err();
        assert!(err.contains("none") && err.contains("medium"), "{err}");
    }

    #[test]
    fn parses_ct_timeouts() {
        let t: CtTimeouts = "other=2s, closing=500ms".parse().unwrap();
        assert_eq!(t.other, Duration::from_secs(2));
        assert_eq!(t.closing, Duration::from_millis(500));
        assert_eq!(t.established, CtTimeouts::default().established);
        assert!("bogus=1s".parse::<CtTimeouts>().unwrap_err().contains("bogus"));
        assert!("other".parse::<CtTimeouts>().is_err());
        assert!("other=0s".parse::<CtTimeouts>().is_err());
        assert!("other=3x".parse::<CtTimeouts>().unwrap_err().contains("3x"));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        // Lifetimes the kernel's clock can take; huge ones refused, not wrapped.
        assert_eq!("other=8760h".parse::<CtTimeouts>().unwrap().other, MAX_CT_TIMEOUT);
        for huge in ["other=8761h", "syn=9999999999999h", "established=99999999999999999999h", "closing=18446744073709551615"] {
            let err = huge.parse::<CtTimeouts>().unwrap_err();
            assert!(err.contains("8760h") || err.contains("too long"), "{huge}: {err}");
        }
        let config = datapath_config(&AgentOptions {
            ct_timeouts: "syn=8760h,established=8760h,closing=8760h,other=8760h".parse().unwrap(),
            ..test_options()
        });
        assert_eq!(config.ct_other_timeout_ns, 8760 * 3600 * 1_000_000_000);
    }

    #[test]
    fn gc_intervals_are_bounded() {
        assert_eq!(parse_gc_interval("5s"), Ok(Duration::from_secs(5)));
        for bad in ["0", "0s", "1ms", "25h", "9999999999999h"] {
            assert!(parse_gc_interval(bad).is_err(), "{bad}");
        }
    }

    fn test_options() -> AgentOptions {
        AgentOptions {
            node_name: "node-1".into(),
            node_netns: "/run/netns/t.node-1".into(),
            control_socket: "/run/sightline/labs/t/control/c.sock".into(),
            control_uid: 0,
            lab: "t".into(),
            pin_dir: "/sys/fs/bpf/sightline/t/node-1".into(),
            aggregation: Aggregation::Medium,
            debug_events: false,
            ct_timeouts: CtTimeouts::default(),
            gc_interval: Duration::from_secs(5),
            grpc: None,
            grpc_tls: None,
            flow_capacity: 4095,
            metrics: None,
            metrics_config: crate::metrics::MetricsConfig::default(),
            export: None,
            reload: crate::pins::Reload::None,
            kvstore: None,
            kubernetes: None,
            cluster_name: "default".into(),
        }
    }
}
