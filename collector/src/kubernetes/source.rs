//! The watchers and the debounced builder of the Kubernetes source.
//!
//! One kube-runtime watcher per kind of [`super::WATCHED`] (pods twice:
//! this node's by field selector `spec.nodeName=<node>`, and every pod),
//! each feeding a reflector store, with the watcher's default back-off,
//! bookmarks, and a relist whenever a watch cannot resume (410 Gone). A
//! builder turns the stores into a [`NodeState`] through
//! [`super::translate::node_state`] once every kind has been listed, when
//! changes have been quiet for the debounce interval (or at most
//! [`SourceConfig::max_delay`] after the first), and again every resync
//! interval, and publishes it on a watch channel when it differs from the
//! last one (a resync publishes it even when it does not).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::translate::{self, Objects};
use crate::state::NodeState;

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("the in-cluster configuration (KUBERNETES_SERVICE_HOST, the service account's token and CA): {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("making the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// How to reach the API server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Connection {
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted
    /// token and CA).
    #[default]
    InCluster,
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
}

/// The source's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceConfig {
    /// This node's name (`spec.nodeName` of its pods, `metadata.name` of its
    /// Node).
    pub node_name: String,
    pub connection: Connection,
    /// Changes quiet this long make a new state.
    pub debounce: Duration,
    /// A burst of changes makes a state at most this long after its first.
    pub max_delay: Duration,
    /// The last state is published again this often (an apply that writes
    /// only differences: nothing, unless the maps drifted).
    pub resync: Duration,
    /// Write the node's CNI configuration after each applied state
    /// (`--cni-conf`); `None`: leave it to someone else.
    pub cni: Option<super::cni::CniConfig>,
}

impl SourceConfig {
    /// The defaults: debounce 100 ms, at most 1 s, resync every 5 min.
    #[must_use]
    pub fn new(node_name: &str, connection: Connection) -> Self {
        Self {
            node_name: node_name.to_owned(),
            connection,
            debounce: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            resync: Duration::from_secs(300),
            cni: None,
        }
    }
}

/// Makes the client `connection` says.
///
/// # Errors
///
/// The kubeconfig or the in-cluster configuration is missing or invalid.
pub async fn client(connection: &Connection) -> Result<Client, SourceError> {
    let config = match connection {
        Connection::InCluster => kube::Config::incluster().map_err(SourceError::InCluster)?,
        Connection::Kubeconfig(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| SourceError::Kubeconfig { path: path.clone(), source })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| SourceError::Kubeconfig { path: path.clone(), source })?
        }
    };
    Client::try_from(config).map_err(SourceError::Client)
}

/// The sync state of one watched kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindStatus {
    /// Objects in the reflector's store.
    pub objects: usize,
    /// Whether a list has completed (the store holds a whole view).
    pub synced: bool,
    /// Lists started (the first, then one per relist).
    pub lists: u64,
    /// Lists after the first: a watch that could not resume (410 Gone) or
    /// an error.
    pub relists: u64,
    /// Watch or list errors (each followed by a back-off).
    pub errors: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When the last list completed (Unix milliseconds).
    pub last_sync_unix_ms: Option<u64>,
}

/// The source's sync state, for the collector's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// By watcher: `Pod`, `Pod (this node)`, `Namespace`, …
    pub kinds: BTreeMap<String, KindStatus>,
    /// States published.
    pub states: u64,
    /// When the last state was published (Unix milliseconds).
    pub last_state_unix_ms: Option<u64>,
    /// Why the last build failed (the previous state stays in force).
    pub last_build_error: Option<String>,
    /// States handed to the datapath (`run_applying`).
    #[serde(default)]
    pub applies: u64,
    /// Why the last of them failed, if it did.
    #[serde(default)]
    pub last_apply_error: Option<String>,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct Shared {
    status: Mutex<SourceStatus>,
    changed: Notify,
}

impl Shared {
    fn kind(&self, name: &str, f: impl FnOnce(&mut KindStatus)) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        f(status.kinds.entry(name.to_owned()).or_default());
    }
}

/// A running source: its states and its status. Dropping it stops it.
pub struct Source {
    /// The last state built (`None` until every kind is listed).
    pub states: watch::Receiver<Option<Arc<NodeState>>>,
    /// Every node's name and address (empty until Nodes are listed).
    pub nodes: watch::Receiver<BTreeMap<String, IpAddr>>,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Source {
    /// A copy of the sync state.
    #[must_use]
    pub fn status(&self) -> SourceStatus {
        self.shared.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A handle on the status that outlives borrows of the source.
    #[must_use]
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle(Arc::clone(&self.shared))
    }

    /// Stops every watcher.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Reads the source's status from elsewhere (the collector's status).
#[derive(Clone)]
pub struct StatusHandle(Arc<Shared>);

impl StatusHandle {
    #[must_use]
    pub fn get(&self) -> SourceStatus {
        self.0.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Starts the watchers and the builder on the current runtime.
#[must_use]
pub fn start(client: &Client, config: SourceConfig) -> Source {
    let shared = Arc::new(Shared { status: Mutex::new(SourceStatus::default()), changed: Notify::new() });
    let mut tasks = JoinSet::new();
    let local_pods = follow::<Pod>(
        &mut tasks,
        &shared,
        Api::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name)),
        "Pod (this node)",
    );
    let pods = follow::<Pod>(&mut tasks, &shared, Api::all(client.clone()), watcher::Config::default(), "Pod");
    let namespaces = follow::<Namespace>(&mut tasks, &shared, Api::all(client.clone()), watcher::Config::default(), "Namespace");
    let services = follow::<Service>(&mut tasks, &shared, Api::all(client.clone()), watcher::Config::default(), "Service");
    let nodes = follow::<Node>(&mut tasks, &shared, Api::all(client.clone()), watcher::Config::default(), "Node");
    let slices =
        follow::<EndpointSlice>(&mut tasks, &shared, Api::all(client.clone()), watcher::Config::default(), "EndpointSlice");
    let policies =
        follow::<NetworkPolicy>(&mut tasks, &shared, Api::all(client.clone()), watcher::Config::default(), "NetworkPolicy");
    let stores = Stores { local_pods, pods, namespaces, services, nodes, slices, policies };
    let (tx, rx) = watch::channel(None);
    let (nodes_tx, nodes_rx) = watch::channel(BTreeMap::new());
    tasks.spawn(build(Arc::clone(&shared), stores, config, tx, nodes_tx));
    Source { states: rx, nodes: nodes_rx, shared, tasks }
}

struct Stores {
    local_pods: Store<Pod>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    services: Store<Service>,
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
    policies: Store<NetworkPolicy>,
}

impl Stores {
    /// Every kind listed at least once.
    fn ready(&self, shared: &Shared) -> bool {
        let status = shared.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.kinds.len() == 7 && status.kinds.values().all(|k| k.synced)
    }

    fn objects(&self) -> Objects {
        // Every pod, with this node's own watch taking precedence (it may
        // be ahead of the cluster-wide one).
        let mut pods: BTreeMap<(Option<String>, Option<String>), Arc<Pod>> = BTreeMap::new();
        for p in self.pods.state().into_iter().chain(self.local_pods.state()) {
            pods.insert((p.metadata.namespace.clone(), p.metadata.name.clone()), p);
        }
        Objects {
            pods: pods.into_values().collect(),
            namespaces: self.namespaces.state(),
            services: self.services.state(),
            policies: self.policies.state(),
            nodes: self.nodes.state(),
            slices: self.slices.state(),
        }
    }
}

/// Runs a reflector for `K`; returns its store.
fn follow<K>(tasks: &mut JoinSet<()>, shared: &Arc<Shared>, api: Api<K>, config: watcher::Config, name: &'static str) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let (store, writer) = reflector::store::<K>();
    let shared = Arc::clone(shared);
    shared.kind(name, |_| {});
    let reader = store.clone();
    tasks.spawn(async move {
        let stream = watcher::watcher(api, config).default_backoff().reflect(writer);
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => shared.kind(name, |k| {
                    k.lists += 1;
                    k.relists = k.lists.saturating_sub(1);
                }),
                Ok(Event::InitApply(_)) => {}
                Ok(Event::InitDone) => {
                    let objects = reader.state().len();
                    shared.kind(name, |k| {
                        k.synced = true;
                        k.objects = objects;
                        k.last_sync_unix_ms = Some(unix_ms());
                    });
                    shared.changed.notify_one();
                }
                Ok(Event::Apply(_) | Event::Delete(_)) => {
                    let objects = reader.state().len();
                    shared.kind(name, |k| k.objects = objects);
                    shared.changed.notify_one();
                }
                Err(err) => {
                    log::warn!("kubernetes: watching {name}: {err}");
                    shared.kind(name, |k| {
                        k.errors += 1;
                        k.last_error = Some(err.to_string());
                    });
                }
            }
        }
    });
    store
}

/// The builder: debounces changes, builds, publishes.
async fn build(
    shared: Arc<Shared>,
    stores: Stores,
    config: SourceConfig,
    tx: watch::Sender<Option<Arc<NodeState>>>,
    nodes_tx: watch::Sender<BTreeMap<String, IpAddr>>,
) {
    let mut resync = tokio::time::interval(config.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    loop {
        let forced = tokio::select! {
            () = shared.changed.notified() => false,
            _ = resync.tick() => true,
        };
        if !forced {
            // Wait for quiet, at most max_delay.
            let deadline = tokio::time::Instant::now() + config.max_delay;
            loop {
                let quiet = tokio::time::sleep(config.debounce);
                tokio::select! {
                    () = shared.changed.notified() => {
                        if tokio::time::Instant::now() >= deadline { break; }
                    }
                    () = quiet => break,
                }
            }
        }
        if !stores.ready(&shared) {
            continue;
        }
        let nodes = translate::cluster_nodes(&stores.nodes.state());
        nodes_tx.send_if_modified(|current| {
            let changed = *current != nodes;
            *current = nodes;
            changed
        });
        match translate::node_state(&config.node_name, &stores.objects()) {
            Ok(state) => {
                let changed = tx.borrow().as_deref() != Some(&state);
                if changed || forced {
                    tx.send_replace(Some(Arc::new(state)));
                    let mut status = shared.status.lock().unwrap_or_else(PoisonError::into_inner);
                    status.states += 1;
                    status.last_state_unix_ms = Some(unix_ms());
                    status.last_build_error = None;
                }
            }
            Err(err) => {
                log::warn!("kubernetes: the desired state of {} cannot be built (the last one stays): {err}", config.node_name);
                shared.status.lock().unwrap_or_else(PoisonError::into_inner).last_build_error = Some(err.to_string());
            }
        }
    }
}

/// A source run by [`run_applying`].
pub struct Applying {
    pub status: StatusHandle,
    /// Every node's name and address, as the source last read them.
    pub nodes: watch::Receiver<BTreeMap<String, IpAddr>>,
    /// Owns the source: aborting it stops the watchers.
    pub task: tokio::task::JoinHandle<()>,
}

/// Connects as `config` says, starts the source and applies every state it
/// publishes with `apply` (on a blocking thread, one at a time, in order).
/// A failed apply is logged and counted in the status; the next state (at
/// the latest the resync) tries again.
///
/// # Errors
///
/// The client cannot be made (kubeconfig, in-cluster configuration).
pub async fn run_applying<F>(config: SourceConfig, apply: F) -> Result<Applying, SourceError>
where
    F: Fn(&NodeState) -> Result<(), String> + Send + Sync + 'static,
{
    let client = client(&config.connection).await?;
    let node = config.node_name.clone();
    let cni = config.cni.clone();
    let mut source = start(&client, config);
    let status = source.status_handle();
    let nodes = source.nodes.clone();
    let apply = Arc::new(apply);
    // The gateway address given to the node, to take off when it moves.
    let gateway: Arc<Mutex<Option<std::net::Ipv4Addr>>> = Arc::new(Mutex::new(None));
    let task = tokio::spawn(async move {
        while source.states.changed().await.is_ok() {
            let Some(state) = source.states.borrow_and_update().clone() else { continue };
            let apply = Arc::clone(&apply);
            let cni = cni.clone();
            // The CNI configuration only once the datapath has the state:
            // no pod is plugged in before its node enforces policy.
            let gateway = Arc::clone(&gateway);
            let applied = tokio::task::spawn_blocking(move || {
                apply(&state)?;
                if let Some(cni) = &cni {
                    // The pods' gateway before the configuration that
                    // names it: a pod's first packet finds a neighbour.
                    let mut owned = gateway.lock().unwrap_or_else(PoisonError::into_inner);
                    *owned = super::cni::give_gateway(&state, cni, *owned)?;
                    drop(owned);
                    if super::cni::write(&state, cni)? {
                        log::info!("kubernetes: wrote the CNI configuration {}", cni.path.display());
                    }
                }
                Ok(())
            })
            .await;
            let failure = match applied {
                Ok(Ok(())) => None,
                Ok(Err(err)) => Some(err),
                Err(err) => Some(err.to_string()),
            };
            if let Some(err) = &failure {
                log::warn!("kubernetes: applying the desired state of {node}: {err}");
            }
            let mut status = source.shared.status.lock().unwrap_or_else(PoisonError::into_inner);
            status.applies += 1;
            status.last_apply_error = failure;
        }
    });
    Ok(Applying { status, nodes, task })
}
