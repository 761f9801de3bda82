//! The lab's persistent state and its operations (`up`, `apply`, `delete`,
//! `down`): the lab is the state source that turns Kubernetes objects into
//! pods plugged into namespaces and into each node's desired datapath state.
//!
//! Every operation validates everything first, then changes the world, and
//! undoes what it did if a later step fails: nothing is half-applied.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};
use sightline_abi as abi;
use sightline_collector::control;
use sightline_collector::netns::netns_path;
use sightline_collector::state::{self, Endpoint, Identity, IpcacheEntry, NodeState};

use super::manifest::{self, Document, Named as _, ObjectStore, Pod};
use super::network::{Model, Network, NetworkOptions};
use super::pki::{self, LabTls};
use super::cni;
use super::topology;

/// Where labs keep their state.
pub const LABS_DIR: &str = "/run/sightline/labs";
/// Where collectors pin their maps.
pub const PIN_ROOT: &str = "/sys/fs/bpf/sightline";
/// Default lab name.
pub const DEFAULT_NAME: &str = "sightline";

/// A lab node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub pod_cidr: String,
    pub node_ip: Ipv4Addr,
    pub collector_pid: u32,
    pub control_socket: PathBuf,
    /// The collector's gRPC address (Observer, Peer, health), on loopback.
    #[serde(default)]
    pub grpc: Option<String>,
    /// The collector's metrics address (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default)]
    pub metrics: Option<String>,
    /// The arguments the collector was started with, to start it again
    /// the same way (`lab restart collector`).
    #[serde(default)]
    pub collector_args: Vec<String>,
    /// How many times the collector was started again (by the supervisor
    /// or `lab restart collector`).
    #[serde(default)]
    pub collector_restarts: u32,
}

/// A Prometheus server the lab runs, scraping its collectors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Prometheus {
    pub pid: u32,
    /// `127.0.0.1:PORT`.
    pub address: String,
}

/// The lab's relay: one flow API for every collector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    pub pid: u32,
    /// `127.0.0.1:PORT`.
    pub grpc: String,
    /// `127.0.0.1:PORT` of its `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub metrics: Option<String>,
    /// The export configuration it follows (re-read when it changes).
    #[serde(default)]
    pub export_config: Option<PathBuf>,
    /// How many times it was started again (by the supervisor or `lab
    /// restart relay`).
    #[serde(default)]
    pub restarts: u32,
}

/// The lab's etcd (`lab up --kvstore`): the collectors' endpoint slices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kvstore {
    pub pid: u32,
    /// `http://127.0.0.1:PORT`: what collectors connect to.
    pub client_url: String,
    /// `http://127.0.0.1:PORT`: etcd's peer URL (a cluster of one).
    pub peer_url: String,
    pub data_dir: PathBuf,
    /// How many times `lab restart kvstore` started it again.
    #[serde(default)]
    pub restarts: u32,
}

/// How other nodes' pods reach a node's ipcache (`lab up
/// --endpoint-propagation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Propagation {
    /// The lab sends every node every pod (the per-endpoint path), and the
    /// slices of the kvstore (if any) add to it.
    #[default]
    Both,
    /// Other nodes' pods only through the kvstore's slices (tests prove the
    /// slices carry them); needs `--kvstore`.
    Kvstore,
}

impl Propagation {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Both => "both",
            Self::Kvstore => "kvstore",
        }
    }
}

/// The lab's supervisor (`lab supervise`): restarts collectors and the
/// relay when they exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervisor {
    pub pid: u32,
}


/// A pod as the lab plugged it in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRuntime {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub endpoint_id: u16,
    /// The node side of its veth, as the CNI plugin named it.
    #[serde(default)]
    pub host_ifname: String,
    pub identity: u32,
    pub responder_pid: u32,
    /// The ports the responder serves, as `port/PROTO`.
    pub ports: Vec<String>,
}

/// Everything a lab remembers between commands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub aggregation: String,
    /// Whether collectors run and programs are attached.
    pub datapath: bool,
    /// Policy audit mode: report what would be denied, drop nothing.
    #[serde(default)]
    pub policy_audit: bool,
    /// The lab's Prometheus, when started with `--prometheus`.
    #[serde(default)]
    pub prometheus: Option<Prometheus>,
    /// The lab's etcd, when started with `--kvstore`.
    #[serde(default)]
    pub kvstore: Option<Kvstore>,
    /// How other nodes' pods reach each node.
    #[serde(default)]
    pub endpoint_propagation: Propagation,
    /// The relay (with the datapath).
    #[serde(default)]
    pub relay: Option<Relay>,
    /// The lab's CA and certificates (TLS between every component and for
    /// clients); `None` with `--no-tls` or without the datapath.
    #[serde(default)]
    pub tls: Option<LabTls>,
    /// The supervisor restarting collectors and the relay, if it runs.
    #[serde(default)]
    pub supervisor: Option<Supervisor>,
    /// The network model and its ranges, with the blocks handed out.
    #[serde(default)]
    pub network: Network,
    pub nodes: Vec<Node>,
    pub objects: ObjectStore,
    /// `ns/name` → runtime.
    pub pods: BTreeMap<String, PodRuntime>,
    /// Identity label set (joined) → number. Stable for the lab's lifetime.
    pub identities: BTreeMap<String, u32>,
    /// `ns/name` → cluster IP.
    pub service_ips: BTreeMap<String, Ipv4Addr>,
}

/// Validates a lab name: it prefixes namespaces and paths.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    // An RFC 1123 label short enough for the namespace and link names it prefixes.
    if name.len() <= 20 && sightline_flow::k8s_names::is_dns_label(name) {
        Ok(())
    } else {
        bail!("invalid lab name {name:?}: use 1-20 lowercase letters, digits and '-', not starting or ending with '-'")
    }
}

pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LABS_DIR).join(name)
}

/// The private folder (mode 0700) of the collectors' control sockets.
pub fn control_dir(name: &str) -> PathBuf {
    lab_dir(name).join("control")
}

fn state_path(name: &str) -> PathBuf {
    lab_dir(name).join("state.json")
}

/// Holds the lab's lock file for the duration of one command.
pub struct LabLock {
    _file: fs::File,
}

/// Serialises lab commands on one lab.
pub fn lock(name: &str) -> anyhow::Result<LabLock> {
    fs::create_dir_all(LABS_DIR).with_context(|| format!("creating {LABS_DIR}"))?;
    let path = Path::new(LABS_DIR).join(format!("{name}.lock"));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a valid descriptor.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("locking the lab");
    }
    Ok(LabLock { _file: file })
}

impl LabState {
    /// Loads a running lab's state.
    pub fn load(name: &str) -> anyhow::Result<Self> {
        let path = state_path(name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("no lab named {name:?} is running (start one with `sightline lab up --name {name}`)")
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
    }

    /// Writes the state atomically.
    pub fn save(&self) -> anyhow::Result<()> {
        let dir = lab_dir(&self.name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join("state.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, state_path(&self.name)).context("replacing the lab state")?;
        Ok(())
    }

    fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The netns path of a pod given as `ns/name`.
    pub fn pod_netns(&self, key: &str) -> anyhow::Result<PathBuf> {
        let pod = self.pods.get(key).ok_or_else(|| anyhow!("no pod {key} in lab {} (pods are named namespace/name)", self.name))?;
        Ok(netns_path(&topology::pod_netns(&self.name, &pod.namespace, &pod.name)))
    }
}

/// The Cilium-style identity labels of a pod: decided by the collector's
/// translation, which the Kubernetes source uses too.
pub fn identity_labels(store: &ObjectStore, pod: &Pod) -> Vec<String> {
    sightline_collector::kubernetes::translate::identity_labels(
        pod.namespace(),
        pod.labels(),
        store.namespaces.get(pod.namespace()).map(manifest::namespace_labels).as_ref(),
    )
}

pub(crate) fn allocate_identity(state: &mut LabState, labels: &[String]) -> u32 {
    let key = labels.join(",");
    if let Some(id) = state.identities.get(&key) {
        return *id;
    }
    let next = state.identities.values().copied().max().map_or(abi::IDENTITY_USER_MIN, |m| m + 1);
    state.identities.insert(key, next);
    next
}

fn pod_ports(pod: &Pod) -> Vec<String> {
    let mut ports: Vec<String> = manifest::container_ports(pod).iter().map(|p| format!("{}/{}", p.port, p.protocol)).collect();
    ports.sort();
    ports.dedup();
    ports
}

/// Builds a node's desired datapath state from the lab state.
pub fn node_state(state: &LabState, node: &Node) -> NodeState {
    let mut endpoints = Vec::new();
    let mut ipcache = Vec::new();
    // With a tunnel, pods of other nodes are reached through it, to the
    // node they live on.
    let tunnel_to = |owner: &str| {
        (state.network.tunnel.is_some() && owner != node.name).then(|| state.network.fabric_ip(node_index(owner)))
    };
    for rt in state.pods.values() {
        // Other nodes' pods: the per-endpoint path, unless the lab leaves
        // them to the kvstore's slices.
        if rt.node == node.name || state.endpoint_propagation == Propagation::Both {
            ipcache.push(IpcacheEntry { cidr: format!("{}/32", rt.ip), identity: rt.identity, tunnel_endpoint: tunnel_to(&rt.node) });
        }
        if rt.node != node.name {
            continue;
        }
        let labels = state
            .objects
            .pods
            .get(&(rt.namespace.clone(), rt.name.clone()))
            .map(|p| p.labels().clone())
            .unwrap_or_default();
        endpoints.push(Endpoint {
            id: rt.endpoint_id,
            namespace: rt.namespace.clone(),
            name: rt.name.clone(),
            ip: rt.ip,
            mac: sightline_cni::pod_mac(rt.ip),
            host_ifname: rt.host_ifname.clone(),
            host_mac: sightline_cni::host_mac(rt.ip),
            netns: netns_path(&topology::pod_netns(&state.name, &rt.namespace, &rt.name)),
            identity: rt.identity,
            labels,
        });
    }
    // This node is `host`; the others are `remote-node`, by their node
    // address and their fabric address, as Cilium numbers them.
    for (i, other) in state.nodes.iter().enumerate() {
        let identity = if other.name == node.name { abi::IDENTITY_HOST } else { abi::IDENTITY_REMOTE_NODE };
        ipcache.push(IpcacheEntry { cidr: format!("{}/32", other.node_ip), identity, tunnel_endpoint: None });
        if state.nodes.len() > 1 {
            ipcache.push(IpcacheEntry {
                cidr: format!("{}/32", state.network.fabric_ip(i as u32 + 1)),
                identity,
                tunnel_endpoint: None,
            });
        }
    }
    // Other nodes' pod blocks, for their pods this node does not know (yet):
    // world, but through the tunnel to the right node.
    if state.network.tunnel.is_some() {
        for (block, owner) in pod_blocks(&state.network, &state.nodes) {
            if owner != node.name {
                ipcache.push(IpcacheEntry { cidr: block, identity: abi::IDENTITY_WORLD, tunnel_endpoint: tunnel_to(&owner) });
            }
        }
    }
    let identities = state
        .identities
        .iter()
        .map(|(labels, id)| Identity { id: *id, labels: labels.split(',').map(str::to_owned).collect() })
        .collect();
    let pods: Vec<state::Pod> = state
        .pods
        .values()
        .map(|rt| {
            let spec = state.objects.pods.get(&(rt.namespace.clone(), rt.name.clone()));
            state::Pod {
                namespace: rt.namespace.clone(),
                name: rt.name.clone(),
                ip: rt.ip,
                node: rt.node.clone(),
                identity: rt.identity,
                labels: spec.map(|p| p.labels().clone()).unwrap_or_default(),
                ports: spec.map(manifest::container_ports).unwrap_or_default(),
            }
        })
        .collect();
    // The lab is the EndpointSlice controller: each service's endpoints
    // are the pods its selector picks.
    let services: Vec<state::Service> = state
        .objects
        .services
        .values()
        .filter_map(|svc| {
            let cluster_ip = *state.service_ips.get(&pod_key(svc.namespace(), svc.name()))?;
            let mut service = manifest::service_state(svc, cluster_ip);
            service.endpoints = Some(state::selected_endpoints(&service, &pods));
            Some(service)
        })
        .collect();
    NodeState {
        node_name: node.name.clone(),
        pod_cidr: node.pod_cidr.clone(),
        node_ip: node.node_ip,
        endpoints,
        identities,
        ipcache,
        namespaces: state.objects.namespaces.iter().map(|(n, ns)| (n.clone(), manifest::namespace_labels(ns))).collect(),
        pods,
        policies: state
            .objects
            .policies
            .values()
            .filter_map(|p| {
                manifest::policy_model(p)
                    .inspect_err(|e| log::error!("left out of node {}'s state: {e}", node.name))
                    .ok()
            })
            .collect(),
        services,
        policy_audit: state.policy_audit,
        tunnel: state.network.tunnel.map(|t| topology::tunnel_device(t.as_str())),
    }
}

/// Reads and parses manifest files; the first error names the file.
pub fn read_manifests(files: &[PathBuf]) -> anyhow::Result<Vec<Document>> {
    let mut objects = Vec::new();
    for file in files {
        let text = if file.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading manifests from stdin")?;
            s
        } else {
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        };
        objects.extend(manifest::parse_manifests(&file.display().to_string(), &text)?);
    }
    Ok(objects)
}

fn pod_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Starts a detached process that survives this command, logging to `log`.
/// With `ready_pipe`, its stdout is a pipe for [`wait_ready`]; otherwise it
/// goes to the log too.
pub(super) fn spawn_detached(cmd: &mut Command, log: &Path, ready_pipe: bool) -> anyhow::Result<std::process::Child> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let stdout = if ready_pipe { Stdio::piped() } else { Stdio::from(out.try_clone()?) };
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(out);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our
    // session so that Ctrl-C on this command does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {cmd:?}"))
}

/// Waits for a child to print `ready` on stdout, then lets its stdout go to
/// the log. Fails with the log's tail if it exits or takes too long.
pub(super) fn wait_ready(mut child: std::process::Child, log: &Path, what: &str, timeout: Duration) -> anyhow::Result<u32> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let log_path = log.to_path_buf();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let ready = loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break false,
                Ok(_) if line.trim() == "ready" => break true,
                Ok(_) => {
                    let _ = append(&log_path, &line);
                }
            }
        };
        let _ = tx.send(ready);
        if ready {
            // Keep draining so the child never blocks or dies on a write.
            let mut rest = String::new();
            while matches!(reader.read_line(&mut rest), Ok(n) if n > 0) {
                let _ = append(&log_path, &rest);
                rest.clear();
            }
        }
    });
    let pid = child.id();
    match rx.recv_timeout(timeout) {
        Ok(true) => {
            // The child lives on after this command; do not reap it here.
            std::mem::forget(child);
            Ok(pid)
        }
        Ok(false) | Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{what} did not start (log {}):\n{}", log.display(), tail.join("\n"))
        }
    }
}

pub(super) fn append(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(line.as_bytes())
}

pub(super) fn self_exe() -> anyhow::Result<PathBuf> {
    crate::programs::sightline()
}

/// Starts a node's collector; returns its pid and its arguments.
fn start_collector(
    lab: &str,
    node: &Node,
    opts: &UpOptions,
    tls: Option<&LabTls>,
    kvstore: Option<&Kvstore>,
) -> anyhow::Result<(u32, Vec<String>)> {
    let mut cmd = Command::new(self_exe()?);
    cmd.arg("collector")
        .arg("--lab")
        .arg(lab)
        .arg("--node")
        .arg(&node.name)
        .arg("--netns")
        .arg(netns_path(&topology::node_netns(lab, &node.name)))
        .arg("--control-socket")
        .arg(&node.control_socket)
        .arg("--pin-dir")
        .arg(Path::new(PIN_ROOT).join(lab).join(&node.name))
        .arg("--aggregation")
        .arg(&opts.aggregation)
        .arg("--ct-timeouts")
        .arg(&opts.ct_timeouts)
        .arg("--ct-gc-interval")
        .arg(&opts.ct_gc_interval)
        .arg("--notify-ready");
    if let Some(grpc) = &node.grpc {
        cmd.arg("--grpc").arg(grpc);
        // Mutual TLS: the relay and the CLI present certificates of the lab's CA.
        match tls.and_then(|t| t.collectors.get(&node.name).map(|c| (t, c))) {
            Some((t, (cert, key))) => {
                cmd.arg("--hubble-tls-cert-file").arg(cert).arg("--hubble-tls-key-file").arg(key);
                cmd.arg("--hubble-tls-client-ca-files").arg(&t.ca);
            }
            None => {
                cmd.arg("--hubble-disable-tls");
            }
        }
    }
    cmd.arg("--flow-capacity").arg(opts.flow_capacity.to_string());
    if let Some(metrics) = &node.metrics {
        cmd.arg("--metrics-address").arg(metrics);
    }
    for m in &opts.metrics {
        cmd.arg("--metrics").arg(m);
    }
    if let Some(config) = &opts.node_export_config {
        cmd.arg("--export-config").arg(config).arg("--spool-dir").arg(spool_dir(lab).join(&node.name));
    }
    if opts.debug_events {
        cmd.arg("--debug-events");
    }
    if let Some(k) = kvstore {
        cmd.arg("--kvstore-endpoints").arg(&k.client_url);
    }
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    Ok((spawn_collector(lab, &node.name, &args)?, args))
}

/// Starts `sightline ARGS…` as the collector of `node` (detached, logging
/// to the lab's `collector-<node>.log`) and waits until it is ready.
fn spawn_collector(lab: &str, node: &str, args: &[String]) -> anyhow::Result<u32> {
    let log = lab_dir(lab).join(format!("collector-{node}.log"));
    let mut cmd = Command::new(self_exe()?);
    cmd.args(args);
    let child = spawn_detached(&mut cmd, &log, true)?;
    wait_ready(child, &log, &format!("the collector of {node}"), Duration::from_secs(60))
}

/// Whether the collector recorded for `node` runs (its pid is alive, not a
/// zombie, and is a collector).
pub fn collector_running(node: &Node) -> bool {
    let pid = node.collector_pid;
    if pid == 0 || is_zombie(pid) {
        return false;
    }
    // SAFETY: signal 0 only checks existence.
    if unsafe { libc::kill(pid as i32, 0) } != 0 {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|a| a == b"collector") && c.windows(node.name.len()).any(|w| w == node.name.as_bytes()))
        .unwrap_or(false)
}

/// The folder under which the lab's relay keeps its exporters' spools.
pub fn spool_dir(name: &str) -> PathBuf {
    lab_dir(name).join("spool")
}

/// Starts the relay on a free loopback port, with every collector as a
/// peer, its metrics endpoint on another, exporting as `export_config` says.
fn start_relay(state: &LabState, export_config: Option<&Path>) -> anyhow::Result<Relay> {
    let grpc = free_loopback_port()?;
    let metrics = free_loopback_port()?;
    spawn_relay(state, export_config, grpc, metrics)
}

/// Starts the relay on the given addresses.
fn spawn_relay(state: &LabState, export_config: Option<&Path>, grpc: String, metrics: String) -> anyhow::Result<Relay> {
    let log = lab_dir(&state.name).join("relay.log");
    let mut cmd = Command::new(self_exe()?);
    cmd.arg("relay").arg("--listen").arg(&grpc).arg("--lab").arg(&state.name).arg("--notify-ready");
    cmd.arg("--metrics-address").arg(&metrics).arg("--spool-dir").arg(spool_dir(&state.name));
    if let Some(path) = export_config {
        cmd.arg("--export-config").arg(path);
    }
    for node in &state.nodes {
        if let Some(addr) = &node.grpc {
            cmd.arg("--peer").arg(format!("{}={addr}", node.name));
        }
    }
    match &state.tls {
        Some(t) => {
            cmd.arg("--tls-relay-server-cert-file").arg(&t.relay_cert).arg("--tls-relay-server-key-file").arg(&t.relay_key);
            cmd.arg("--tls-relay-client-ca-files").arg(&t.ca);
            cmd.arg("--tls-hubble-client-cert-file").arg(&t.relay_client_cert);
            cmd.arg("--tls-hubble-client-key-file").arg(&t.relay_client_key);
            cmd.arg("--tls-hubble-server-ca-files").arg(&t.ca);
        }
        None => {
            cmd.arg("--disable-server-tls").arg("--disable-client-tls");
        }
    }
    let child = spawn_detached(&mut cmd, &log, true)?;
    let pid = wait_ready(child, &log, "the relay", Duration::from_secs(30))?;
    Ok(Relay { pid, grpc, metrics: Some(metrics), export_config: export_config.map(Path::to_path_buf), restarts: 0 })
}

fn start_responder(lab: &str, rt: &PodRuntime) -> anyhow::Result<u32> {
    let log = lab_dir(lab).join(format!("pod-{}.{}.log", rt.namespace, rt.name));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &topology::pod_netns(lab, &rt.namespace, &rt.name)])
        .arg(self_exe()?)
        .args(["lab", "responder", "--text", &pod_key(&rt.namespace, &rt.name)]);
    for p in &rt.ports {
        cmd.args(["--port", p]);
    }
    let child = spawn_detached(&mut cmd, &log, true)?;
    wait_ready(child, &log, &format!("the responder of pod {}/{}", rt.namespace, rt.name), Duration::from_secs(20))
}

pub fn kill(pid: u32) {
    if pid == 0 {
        return;
    }
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        // SAFETY: signal 0 only checks existence.
        if unsafe { libc::kill(pid as i32, 0) } != 0 || is_zombie(pid) {
            return;
        }
        // Reap it if it is our child (it is not, normally).
        // SAFETY: non-blocking waitpid.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// Whether `pid` has exited and only waits to be reaped (by init: lab
/// processes are detached, so they are not our children).
pub(crate) fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Options of `lab up`.
pub struct UpOptions {
    pub name: String,
    pub nodes: u32,
    pub files: Vec<PathBuf>,
    pub aggregation: String,
    pub debug_events: bool,
    /// Run collectors and attach the programs. Without, pods are routed by
    /// the node's kernel alone (the baseline of the benchmarks).
    pub datapath: bool,
    /// Collector `--ct-timeouts` (empty: defaults).
    pub ct_timeouts: String,
    /// Collector `--ct-gc-interval`.
    pub ct_gc_interval: String,
    /// Policy audit mode on every node.
    pub policy_audit: bool,
    /// Flows each collector keeps.
    pub flow_capacity: usize,
    /// Hubble metrics handlers (`--metrics`), empty for the defaults.
    pub metrics: Vec<String>,
    /// Start Debian's Prometheus scraping the collectors.
    pub prometheus: bool,
    /// The relay exports flows as this file says.
    pub export_config: Option<PathBuf>,
    /// Each collector exports its own node's flows as this file says
    /// (Hubble's node-local exporter).
    pub node_export_config: Option<PathBuf>,
    /// TLS between every component and for clients, with the lab's own CA
    /// (`lab up --no-tls`: plaintext).
    pub tls: bool,
    /// Run a supervisor that restarts collectors and the relay when they
    /// exit (with the datapath).
    pub supervise: bool,
    /// The network model (`--network-model`) and its ranges.
    pub network: NetworkOptions,
    /// Run an etcd for the collectors' endpoint slices.
    pub kvstore: bool,
    /// How other nodes' pods reach each node.
    pub endpoint_propagation: Propagation,
}

/// Nodes a lab may have.
pub const MAX_NODES: u32 = 16;

/// `lab up`.
pub fn up(opts: &UpOptions) -> anyhow::Result<LabState> {
    validate_name(&opts.name)?;
    if opts.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if opts.nodes > MAX_NODES {
        bail!("--nodes {}: a lab has at most {MAX_NODES} nodes", opts.nodes);
    }
    opts.aggregation
        .parse::<sightline_collector::agent::Aggregation>()
        .map_err(|e| anyhow!("--aggregation: {e}"))?;
    opts.ct_timeouts
        .parse::<sightline_collector::agent::CtTimeouts>()
        .map_err(|e| anyhow!("--ct-timeouts: {e}"))?;
    sightline_collector::agent::parse_gc_interval(&opts.ct_gc_interval).map_err(|e| anyhow!("--ct-gc-interval: {e}"))?;
    sightline_collector::flow::Store::new(opts.flow_capacity).map_err(|e| anyhow!("--flow-capacity: {e}"))?;
    sightline_collector::metrics::MetricsConfig::from_entries(&opts.metrics).map_err(|e| anyhow!("--metrics: {e}"))?;
    let mut network = Network::plan(&opts.network, opts.nodes)?;
    if let Some(tunnel) = network.tunnel {
        topology::check_tunnel_driver(tunnel.as_str())?;
    }
    if opts.prometheus && !opts.datapath {
        bail!("--prometheus needs the datapath: without collectors there is nothing to scrape");
    }
    if opts.kvstore && !opts.datapath {
        bail!("--kvstore needs the datapath: without collectors nothing publishes or reads endpoint slices");
    }
    if opts.endpoint_propagation == Propagation::Kvstore && !opts.kvstore {
        bail!("--endpoint-propagation kvstore needs --kvstore: without it other nodes' pods would reach no node");
    }
    if opts.kvstore && !Path::new(ETCD_BIN).exists() {
        bail!("--kvstore needs Debian's etcd at {ETCD_BIN} (package etcd-server; scripts/setup.sh installs it)");
    }
    if opts.prometheus && !Path::new(PROMETHEUS_BIN).exists() {
        bail!("--prometheus needs Debian's prometheus at {PROMETHEUS_BIN} (scripts/setup.sh installs it)");
    }
    // The export configuration is checked before anything is created, and
    // followed by its absolute path (the relay re-reads it when it changes).
    let export_config = match &opts.export_config {
        Some(path) => {
            if !opts.datapath {
                bail!("--export-config needs the datapath: without collectors there are no flows to export");
            }
            let path = fs::canonicalize(path).with_context(|| format!("--export-config {}", path.display()))?;
            let ctx = sightline_export::Context::from_env(spool_dir(&opts.name));
            sightline_export::config::load(&path, &ctx).map_err(|e| anyhow!("--export-config {e}"))?;
            Some(path)
        }
        None => None,
    };
    if let Some(path) = &opts.node_export_config {
        if !opts.datapath {
            bail!("--node-export-config needs the datapath: without collectors there are no flows to export");
        }
        let ctx = sightline_export::Context::from_env(spool_dir(&opts.name).join("node-1"));
        sightline_export::config::load(path, &ctx).map_err(|e| anyhow!("--node-export-config {e}"))?;
    }
    // Bad input fails before anything is created.
    let objects = read_manifests(&opts.files)?;
    let _lock = lock(&opts.name)?;
    if state_path(&opts.name).exists() || !topology::list_lab_netns(&opts.name)?.is_empty() {
        bail!("a lab named {:?} already exists; remove it with `sightline lab down --name {}`", opts.name, opts.name);
    }
    let mut store = ObjectStore::new();
    store.apply(objects.clone())?;
    check_nodes(&store, opts.nodes)?;

    let dir = lab_dir(&opts.name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = (|| -> anyhow::Result<LabState> {
        let tls = if opts.datapath && opts.tls {
            let names: Vec<String> = (1..=opts.nodes).map(|i| format!("node-{i}")).collect();
            Some(pki::create(&opts.name, &dir.join("tls"), &names).context("making the lab's certificates")?)
        } else {
            None
        };
        let mut nodes = Vec::new();
        if opts.nodes > 1 {
            topology::create_fabric(&opts.name)?;
        }
        for i in 1..=opts.nodes {
            let name = format!("node-{i}");
            // The node's gateway address for its pods: the first of its
            // /24 (overlay) or of its first block (the other models).
            let (pod_cidr, node_ip) = if network.model.dynamic() {
                let block = network
                    .allocate_block(&name, opts.nodes)
                    .ok_or_else(|| anyhow!("{} has no block left for node {name}", network.pod_range))?;
                let ip = network.addresses(block, opts.nodes).next().expect("a block has a usable address");
                (network.pod_range.to_string(), ip)
            } else {
                let block = network.node_block(i).expect("checked by Network::plan");
                (block.to_string(), Ipv4Addr::from(u32::from(block.network()) + 1))
            };
            topology::create_node(&opts.name, &name, node_ip)?;
            if opts.nodes > 1 {
                topology::connect_node(&opts.name, &name, i as u8, network.fabric_ip(i), network.node_subnet.prefix_len())?;
                if network.model == Model::NodeSubnet {
                    topology::answer_arp_for_pods(&opts.name, &name)?;
                }
                if let Some(tunnel) = network.tunnel {
                    topology::create_tunnel(&opts.name, &name, tunnel.as_str(), network.pod_mtu())?;
                }
            }
            nodes.push(Node {
                pod_cidr,
                node_ip,
                collector_pid: 0,
                control_socket: control_dir(&opts.name).join(format!("collector-{name}.sock")),
                grpc: None,
                metrics: None,
                collector_args: Vec::new(),
                collector_restarts: 0,
                name,
            });
        }
        // Every other node's pods (and gateway address) through its fabric
        // address: pod traffic between nodes is routed, not encapsulated.
        // In node-subnet there are no such routes: nodes answer ARP.
        if opts.nodes > 1 {
            for node in &nodes {
                for (block, owner) in routed_blocks(&network, &nodes) {
                    if owner != node.name {
                        let via = network.fabric_ip(node_index(&owner));
                        topology::route_via_fabric(&opts.name, &node.name, &block, via)?;
                    }
                }
            }
        }
        // etcd first: collectors connect to it as they start.
        // (A failure before the state is saved finds it by its data
        // directory: `stray_collectors`.)
        let kvstore = if opts.kvstore { Some(start_etcd(&opts.name)?) } else { None };
        if opts.datapath {
            for node in &mut nodes {
                node.grpc = Some(free_loopback_port()?);
                node.metrics = Some(free_loopback_port()?);
                (node.collector_pid, node.collector_args) = start_collector(&opts.name, node, opts, tls.as_ref(), kvstore.as_ref())?;
            }
        }
        let mut state = LabState {
            name: opts.name.clone(),
            aggregation: opts.aggregation.clone(),
            datapath: opts.datapath,
            policy_audit: opts.policy_audit,
            prometheus: None,
            kvstore,
            endpoint_propagation: opts.endpoint_propagation,
            relay: None,
            tls,
            supervisor: None,
            network,
            nodes,
            objects: ObjectStore::new(),
            pods: BTreeMap::new(),
            identities: BTreeMap::new(),
            service_ips: BTreeMap::new(),
        };
        state.save()?;
        if opts.datapath {
            state.relay = Some(start_relay(&state, export_config.as_deref())?);
            state.save()?;
        }
        if opts.prometheus {
            state.prometheus = Some(start_prometheus(&state)?);
            state.save()?;
        }
        converge(&mut state, store.clone())?;
        if opts.datapath && opts.supervise {
            state.supervisor = Some(super::supervisor::start(&state.name)?);
            state.save()?;
        }
        Ok(state)
    })();
    match result {
        Ok(state) => Ok(state),
        Err(err) => {
            let _ = teardown(&opts.name);
            Err(err.context(format!("lab {:?} was not created; nothing was left behind", opts.name)))
        }
    }
}

fn check_nodes(store: &ObjectStore, nodes: u32) -> anyhow::Result<()> {
    for pod in store.pods.values() {
        if let Some(n) = manifest::node_name(pod) {
            let ok = n.strip_prefix("node-").and_then(|i| i.parse::<u32>().ok()).is_some_and(|i| (1..=nodes).contains(&i));
            if !ok {
                bail!("pod {}/{}: spec.nodeName {n:?} is not a node of this lab (it has node-1..node-{nodes})", pod.namespace(), pod.name());
            }
        }
    }
    Ok(())
}

/// The 1-based index of `node-N`.
fn node_index(node: &str) -> u32 {
    node.strip_prefix("node-").and_then(|i| i.parse().ok()).expect("lab nodes are named node-N")
}

/// The blocks the fabric routes, with the node each goes to: each node's
/// /24 (overlay), each block handed out (pod-subnet), none (node-subnet:
/// nodes answer ARP for their pods instead; with a tunnel: the fabric
/// sees node addresses only).
fn routed_blocks(network: &Network, nodes: &[Node]) -> Vec<(String, String)> {
    if network.tunnel.is_some() || network.model == Model::NodeSubnet {
        return Vec::new();
    }
    pod_blocks(network, nodes)
}

/// Every node's pod blocks, with the node: each node's /24 (overlay), each
/// block handed out (the other models).
fn pod_blocks(network: &Network, nodes: &[Node]) -> Vec<(String, String)> {
    match network.model {
        Model::Overlay => nodes.iter().map(|n| (n.pod_cidr.clone(), n.name.clone())).collect(),
        Model::PodSubnet | Model::NodeSubnet => network.blocks.iter().map(|b| (b.cidr.to_string(), b.node.clone())).collect(),
    }
}

/// A free address for a new pod on `node`: from its /24 (overlay), or from
/// its blocks, handing it a new block when they are full (the other
/// models).
pub(crate) fn allocate_ip(network: &mut Network, node: &Node, nodes: u32, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let free = |ip: &Ipv4Addr| *ip != node.node_ip && !used.contains(ip);
    if !network.model.dynamic() {
        let block: ipnet::Ipv4Net = node.pod_cidr.parse().ok()?;
        return block.hosts().find(free);
    }
    let blocks: Vec<ipnet::Ipv4Net> = network.blocks_of(&node.name).collect();
    if let Some(ip) = blocks.iter().find_map(|b| network.addresses(*b, nodes).find(free)) {
        return Some(ip);
    }
    let block = network.allocate_block(&node.name, nodes)?;
    network.addresses(block, nodes).find(free)
}

/// Node `node`'s CNI configuration: its pod ranges (its /24 in `overlay`,
/// the blocks handed to it in the other models; `None` before it has
/// one), the addresses of those ranges no pod may get, the node's address
/// as the gateway, the pods' MTU and (with the datapath) its collector's
/// control socket.
pub(crate) fn cni_conf(state: &LabState, network: &Network, node: &Node) -> Option<cni::NodeConf> {
    let ranges: Vec<ipnet::Ipv4Net> = if network.model.dynamic() {
        network.blocks_of(&node.name).collect()
    } else {
        node.pod_cidr.parse().ok().into_iter().collect()
    };
    if ranges.is_empty() {
        return None;
    }
    let nodes = state.nodes.len() as u32;
    let exclude = ranges
        .iter()
        .flat_map(|r| (u32::from(r.network())..=u32::from(r.broadcast())).map(Ipv4Addr::from))
        .filter(|ip| {
            let reserved = if network.model.dynamic() { !network.usable(*ip, nodes) } else { ranges.iter().any(|r| *ip == r.network() || *ip == r.broadcast()) };
            reserved || state.nodes.iter().any(|n| n.node_ip == *ip && n.name != node.name)
        })
        .map(|ip| ipnet::Ipv4Net::new(ip, 32).expect("a /32"))
        .collect();
    Some(cni::NodeConf {
        gateway: node.node_ip,
        mtu: network.pod_mtu(),
        control_socket: state.datapath.then(|| node.control_socket.clone()),
        ranges,
        exclude,
        data_dir: cni::store_dir(&state.name, &node.name),
    })
}

/// What `converge` could not do yet because a node's collector is down.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Converged {
    /// Nodes whose collector is not running: their datapath keeps enforcing
    /// what it last had; they get the current desired state when their
    /// collector is back (`lab restart collector`).
    pub behind: Vec<String>,
    /// New pods (`ns/name`) on those nodes: not plugged in until their
    /// node's collector can program them (a pod without programs would be
    /// outside policy).
    pub pending: Vec<String>,
}

/// Brings the world in line with `store`: plugs in new pods, unplugs
/// removed ones, restarts responders whose ports changed, recomputes
/// identities, and programs every collector. Undoes its own changes to pods
/// when a later step fails. A node whose collector is down is left behind
/// (reported, not an error): the store is updated and saved all the same.
fn converge(state: &mut LabState, store: ObjectStore) -> anyhow::Result<Converged> {
    check_nodes(&store, state.nodes.len() as u32)?;
    let mut behind: BTreeSet<String> =
        state.nodes.iter().filter(|n| state.datapath && !collector_running(n)).map(|n| n.name.clone()).collect();
    let mut pending = Vec::new();
    let old_state = state.clone();
    let old_keys: BTreeSet<String> = state.pods.keys().cloned().collect();
    let new_keys: BTreeSet<String> = store.pods.values().map(|p| pod_key(p.namespace(), p.name())).collect();

    // Allocate addresses and endpoint ids for new pods.
    let mut created: Vec<String> = Vec::new();
    let mut next_pods = BTreeMap::new();
    let mut used_ips: BTreeSet<Ipv4Addr> = state.pods.values().filter(|p| new_keys.contains(&pod_key(&p.namespace, &p.name))).map(|p| p.ip).collect();
    let mut used_ids: BTreeSet<(String, u16)> = state.pods.values().filter(|p| new_keys.contains(&pod_key(&p.namespace, &p.name))).map(|p| (p.node.clone(), p.endpoint_id)).collect();
    let mut identities = state.identities.clone();
    let mut network = state.network.clone();
    let mut tmp = state.clone();
    tmp.identities = identities.clone();
    for pod in store.pods.values() {
        let key = pod_key(pod.namespace(), pod.name());
        let labels = identity_labels(&store, pod);
        let identity = allocate_identity(&mut tmp, &labels);
        let ports = pod_ports(pod);
        if let Some(rt) = state.pods.get(&key) {
            // Containers are immutable (the store refuses port changes);
            // labels may change, and with them the identity.
            let mut rt = rt.clone();
            rt.identity = identity;
            next_pods.insert(key, rt);
            continue;
        }
        let node = manifest::node_name(pod).map_or_else(|| state.nodes[0].name.clone(), str::to_owned);
        let n = state.node(&node).ok_or_else(|| anyhow!("pod {key}: node {node} does not exist"))?;
        if behind.contains(&node) {
            pending.push(key);
            continue;
        }
        let ip = allocate_ip(&mut network, n, state.nodes.len() as u32, &used_ips)
            .ok_or_else(|| anyhow!("node {node} has no free address left in {} for pod {key}", n.pod_cidr))?;
        used_ips.insert(ip);
        let endpoint_id = (1..=u16::MAX)
            .find(|id| !used_ids.contains(&(node.clone(), *id)))
            .ok_or_else(|| anyhow!("node {node} has no free endpoint id"))?;
        used_ids.insert((node.clone(), endpoint_id));
        next_pods.insert(
            key.clone(),
            PodRuntime { namespace: pod.namespace().to_owned(), name: pod.name().to_owned(), node, ip, endpoint_id, host_ifname: String::new(), identity, responder_pid: 0, ports },
        );
        created.push(key);
    }
    identities = tmp.identities;
    let removed: Vec<String> = old_keys.difference(&new_keys).cloned().collect();

    // Service cluster IPs (allocated now; load balancing comes later).
    let mut service_ips = BTreeMap::new();
    let mut used_svc: BTreeSet<Ipv4Addr> = store.services.values().filter_map(manifest::requested_cluster_ip).collect();
    for svc in store.services.values() {
        let key = pod_key(svc.namespace(), svc.name());
        let ip = match manifest::requested_cluster_ip(svc).or_else(|| state.service_ips.get(&key).copied()) {
            Some(ip) => ip,
            None => {
                let ip = (10..65_000u32)
                    .map(|h| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + h))
                    .find(|ip| !used_svc.contains(ip))
                    .ok_or_else(|| anyhow!("no free cluster IP for service {key}"))?;
                ip
            }
        };
        used_svc.insert(ip);
        service_ips.insert(key, ip);
    }

    // Change the world: create new pods.
    let undo = |state: &LabState, created: &[String], next_pods: &BTreeMap<String, PodRuntime>| {
        for key in created {
            if let Some(rt) = next_pods.get(key) {
                kill(rt.responder_pid);
                let _ = cni::unplug_pod(&state.name, &rt.node, &rt.namespace, &rt.name);
            }
        }
    };
    // Blocks handed out now are routed by every other node (pod-subnet).
    if state.nodes.len() > 1 && network.model == Model::PodSubnet && network.tunnel.is_none() {
        for block in network.blocks.iter().filter(|b| !state.network.blocks.contains(b)) {
            let via = network.fabric_ip(node_index(&block.node));
            for other in state.nodes.iter().filter(|n| n.name != block.node) {
                topology::route_via_fabric(&state.name, &other.name, &block.cidr.to_string(), via)?;
            }
        }
    }
    // Every node's conflist, with the ranges it has now.
    for node in &state.nodes {
        if let Some(conf) = cni_conf(state, &network, node) {
            cni::write_conflist(&state.name, &node.name, &conf)?;
        }
    }
    for key in &created {
        let rt = next_pods.get_mut(key).expect("created pods are planned");
        let res = cni::plug_pod(&state.name, &rt.node, &rt.namespace, &rt.name, rt.ip).and_then(|host| {
            rt.host_ifname = host;
            start_responder(&state.name, rt)
        });
        match res {
            Ok(pid) => rt.responder_pid = pid,
            Err(err) => {
                let rt_name = key.clone();
                // Remove the half-made pod and everything made before it.
                let _ = cni::unplug_pod(&state.name, &rt.node, &rt.namespace, &rt.name);
                undo(state, &created, &next_pods);
                return Err(err.context(format!("plugging in pod {rt_name}")));
            }
        }
    }

    state.pods = next_pods.clone();
    state.identities = identities;
    state.network = network;
    state.objects = store;
    state.service_ips = service_ips;
    // Program every collector; pods being removed leave the datapath first.
    let running: Vec<&Node> = state.nodes.iter().filter(|n| state.datapath && !behind.contains(&n.name)).collect();
    for node in running {
        let desired = node_state(state, node);
        match control::apply(&node.control_socket, &desired) {
            Ok(()) => {}
            // It stopped meanwhile: behind like the others.
            Err(control::ClientError::Connect { .. } | control::ClientError::Closed) if !collector_running(node) => {
                behind.insert(node.name.clone());
            }
            Err(err) => {
                let failed = anyhow!("programming the datapath of {}: {err}", node.name);
                // Restore the previous datapath state and remove the new pods.
                for n in old_state.nodes.iter().filter(|n| old_state.datapath && !behind.contains(&n.name)) {
                    let _ = control::apply(&n.control_socket, &node_state(&old_state, n));
                }
                undo(&old_state, &created, &next_pods);
                *state = old_state;
                return Err(failed);
            }
        }
    }
    // New pods of a node whose collector stopped meanwhile have no programs:
    // unplugged, they wait like the others.
    for key in &created {
        if state.pods.get(key).is_some_and(|rt| behind.contains(&rt.node))
            && let Some(rt) = state.pods.remove(key)
        {
            kill(rt.responder_pid);
            let _ = cni::unplug_pod(&state.name, &rt.node, &rt.namespace, &rt.name);
            pending.push(key.clone());
        }
    }
    // Pods that are gone.
    for key in &removed {
        if let Some(rt) = old_state.pods.get(key) {
            kill(rt.responder_pid);
            cni::unplug_pod(&state.name, &rt.node, &rt.namespace, &rt.name)?;
        }
    }
    state.save()?;
    Ok(Converged { behind: behind.into_iter().collect(), pending })
}

/// A node's collector restarted by [`restart_collector`].
#[derive(Clone, Debug)]
pub struct CollectorRestart {
    pub node: String,
    /// The pid it had (0 if none was recorded).
    pub old_pid: u32,
    /// Whether that process still ran (and was stopped).
    pub was_running: bool,
    pub pid: u32,
    /// From starting the process to its `ready` (datapath installed,
    /// adopted or replaced; control socket open).
    pub ready_after: Duration,
    /// From `ready` to the lab's desired state in force on it.
    pub programmed_after: Duration,
    /// What the lab could not bring in line (other nodes still down).
    pub converged: Converged,
}

/// `lab restart collector NODE`: stops the node's collector if it still
/// runs, starts it again with the arguments it had (same addresses, pin
/// directory and options; `reload` adds `--reload`), and sends it the lab's
/// current desired state, plugging in pods that waited for it. The datapath
/// stays in force throughout: the new collector adopts it.
pub fn restart_collector(name: &str, node: &str, reload: sightline_collector::pins::Reload) -> anyhow::Result<CollectorRestart> {
    let _lock = lock(name)?;
    let mut state = LabState::load(name)?;
    restart_collector_locked(&mut state, node, reload)
}

/// [`restart_collector`] for a caller that holds the lab's lock and its
/// loaded state (a supervisor); saves the state.
pub fn restart_collector_locked(
    state: &mut LabState,
    node: &str,
    reload: sightline_collector::pins::Reload,
) -> anyhow::Result<CollectorRestart> {
    if !state.datapath {
        bail!("lab {} runs without a datapath: it has no collectors", state.name);
    }
    let Some(index) = state.nodes.iter().position(|n| n.name == node) else {
        let names: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!("lab {} has no node {node} (it has {})", state.name, names.join(", "));
    };
    let old = state.nodes[index].clone();
    if old.collector_args.is_empty() {
        bail!("lab {} did not record how its collectors were started (made by an older sightline); recreate it", state.name);
    }
    let was_running = collector_running(&old);
    if was_running {
        kill(old.collector_pid);
    }
    let mut args = old.collector_args.clone();
    if reload != sightline_collector::pins::Reload::None {
        args.extend(["--reload".to_owned(), reload.to_string()]);
    }
    let started = Instant::now();
    let pid = spawn_collector(&state.name, node, &args)?;
    let ready_after = started.elapsed();
    state.nodes[index].collector_pid = pid;
    state.nodes[index].collector_restarts = old.collector_restarts.saturating_add(1);
    state.save()?;
    let programmed = Instant::now();
    let store = state.objects.clone();
    let converged = converge(state, store)?;
    Ok(CollectorRestart {
        node: node.to_owned(),
        old_pid: old.collector_pid,
        was_running,
        pid,
        ready_after,
        programmed_after: programmed.elapsed(),
        converged,
    })
}

/// `lab restart relay`: stops the relay (if it still runs) and starts it
/// again on the same addresses with the same export configuration, so
/// clients reconnect where they were and exporters resume from their spools.
pub fn restart_relay(name: &str) -> anyhow::Result<Relay> {
    let _lock = lock(name)?;
    let mut state = LabState::load(name)?;
    let relay = restart_relay_in(&mut state)?;
    state.save()?;
    Ok(relay)
}

/// Restarts the relay of a lab whose lock the caller holds; the caller
/// saves the state.
pub fn restart_relay_in(state: &mut LabState) -> anyhow::Result<Relay> {
    let Some(old) = state.relay.clone() else {
        bail!("lab {} has no relay (it was started with --no-datapath)", state.name);
    };
    if old.pid != 0 && !is_zombie(old.pid) {
        kill(old.pid);
    }
    let metrics = match &old.metrics {
        Some(m) => m.clone(),
        None => free_loopback_port()?,
    };
    let mut relay = spawn_relay(state, old.export_config.as_deref(), old.grpc.clone(), metrics)?;
    relay.restarts = old.restarts.saturating_add(1);
    state.relay = Some(relay.clone());
    Ok(relay)
}

/// `lab apply`: the report of the object store, and the nodes left behind.
pub fn apply(name: &str, files: &[PathBuf]) -> anyhow::Result<(manifest::ApplyReport, Converged)> {
    let objects = read_manifests(files)?;
    let _lock = lock(name)?;
    let mut state = LabState::load(name)?;
    let mut store = state.objects.clone();
    let report = store.apply(objects)?;
    let converged = converge(&mut state, store)?;
    Ok((report, converged))
}

/// `lab delete`.
pub fn delete(name: &str, files: &[PathBuf]) -> anyhow::Result<(manifest::ApplyReport, Converged)> {
    let objects = read_manifests(files)?;
    let _lock = lock(name)?;
    let mut state = LabState::load(name)?;
    let mut store = state.objects.clone();
    let report = store.delete(&objects)?;
    let converged = converge(&mut state, store)?;
    Ok((report, converged))
}

/// Stops every process and removes every namespace, link, pin and file of
/// the lab, whether or not its state file survived.
pub fn teardown(name: &str) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    if let Ok(state) = LabState::load(name) {
        // First the supervisor, or it would start what is being stopped.
        if let Some(s) = &state.supervisor {
            kill(s.pid);
        }
        if let Some(p) = &state.prometheus {
            kill(p.pid);
        }
        if let Some(k) = &state.kvstore {
            kill(k.pid);
        }
        if let Some(r) = &state.relay {
            kill(r.pid);
        }
        for node in &state.nodes {
            kill(node.collector_pid);
        }
        for pod in state.pods.values() {
            kill(pod.responder_pid);
        }
    }
    // Collectors run in the host namespace: find strays by their arguments
    // (a stray supervisor first).
    let mut strays = stray_collectors(name);
    strays.sort_by_key(|pid| !is_supervisor_of(*pid, name));
    for pid in strays {
        kill(pid);
    }
    // The datapath outlives collectors: detach every pinned link and
    // remove the pins of every node, explicitly.
    let pins = Path::new(PIN_ROOT).join(name);
    if let Ok(nodes) = fs::read_dir(&pins) {
        for node in nodes.flatten() {
            if let Err(e) = sightline_collector::loader::uninstall(&node.path()) {
                errors.push(format!("removing the datapath pinned at {}: {e}", node.path().display()));
            }
        }
    }
    if let Err(e) = topology::destroy_lab(name) {
        errors.push(e.to_string());
    }
    if pins.exists() {
        if let Err(e) = fs::remove_dir_all(&pins) {
            errors.push(format!("removing {}: {e}", pins.display()));
        }
    }
    let _ = fs::remove_dir(PIN_ROOT);
    let dir = lab_dir(name);
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(&dir) {
            errors.push(format!("removing {}: {e}", dir.display()));
        }
    }
    let _ = fs::remove_file(Path::new(LABS_DIR).join(format!("{name}.lock")));
    if errors.is_empty() { Ok(()) } else { bail!("lab {name} was not removed completely:\n{}", errors.join("\n")) }
}

/// PIDs of collector and Prometheus processes started for lab `name`.
fn stray_collectors(name: &str) -> Vec<u32> {
    let marker = Path::new(PIN_ROOT).join(name);
    let marker = marker.to_string_lossy().into_owned();
    let prometheus_config = format!("--config.file={}", lab_dir(name).join("prometheus.yml").display());
    let etcd_data = format!("--data-dir={}", etcd_dir(name).display());
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else { return pids };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let collector = args.iter().any(|a| a == "collector") && args.iter().any(|a| a.starts_with(&format!("{marker}/")));
        let prometheus = args.iter().any(|a| *a == prometheus_config || *a == etcd_data);
        let relay = args.get(1).is_some_and(|a| a == "relay") && args.windows(2).any(|w| w[0] == "--lab" && w[1] == name);
        if collector || prometheus || relay || supervisor_args(&args, name) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether a command line is `sightline lab supervise --name NAME`.
fn supervisor_args(args: &[String], name: &str) -> bool {
    args.get(1).is_some_and(|a| a == "lab")
        && args.get(2).is_some_and(|a| a == "supervise")
        && args.windows(2).any(|w| w[0] == "--name" && w[1] == name)
}

fn is_supervisor_of(pid: u32, name: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let args: Vec<String> = c.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        supervisor_args(&args, name)
    })
}

/// Where Debian's etcd-server package puts the server.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// The lab's etcd data directory.
pub fn etcd_dir(name: &str) -> PathBuf {
    lab_dir(name).join("etcd")
}

/// Starts etcd on two free loopback ports (client, peer) with its data in
/// the lab's directory, and waits until it is healthy.
fn start_etcd(lab: &str) -> anyhow::Result<Kvstore> {
    let client_url = format!("http://{}", free_loopback_port()?);
    let peer_url = format!("http://{}", free_loopback_port()?);
    spawn_etcd(lab, client_url, peer_url)
}

/// Starts etcd with the given URLs and the lab's data directory (kept
/// across restarts); polls `/health` until it answers, for up to 30 s.
fn spawn_etcd(lab: &str, client_url: String, peer_url: String) -> anyhow::Result<Kvstore> {
    let data_dir = etcd_dir(lab);
    fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let log = lab_dir(lab).join("etcd.log");
    let member = format!("sightline-{lab}");
    let mut cmd = Command::new(ETCD_BIN);
    cmd.arg(format!("--name={member}"))
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster={member}={peer_url}"))
        .arg(format!("--initial-cluster-token={member}"))
        .env_remove("ETCD_LISTEN_CLIENT_URLS")
        .env_remove("ETCD_LISTEN_PEER_URLS");
    let child = spawn_detached(&mut cmd, &log, false)?;
    let pid = child.id();
    std::mem::forget(child);
    let address = client_url.trim_start_matches("http://").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http_ok(&address, "/health") {
            return Ok(Kvstore { pid, client_url, peer_url, data_dir, restarts: 0 });
        }
        if !kvstore_running(&Kvstore { pid, client_url: String::new(), peer_url: String::new(), data_dir: PathBuf::new(), restarts: 0 }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(pid);
    let tail = fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(10).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    bail!("etcd did not become healthy on {client_url} (log {}):\n{}", log.display(), tail.join("\n"))
}

/// Whether the lab's etcd process runs.
#[must_use]
pub fn kvstore_running(k: &Kvstore) -> bool {
    // SAFETY: signal 0 only checks existence.
    k.pid != 0 && !is_zombie(k.pid) && unsafe { libc::kill(k.pid as i32, 0) } == 0
}

/// `lab restart kvstore`: stops the lab's etcd if it runs and starts it
/// again on the same URLs with the same data; collectors reconnect and
/// re-sync their slices.
pub fn restart_kvstore(name: &str) -> anyhow::Result<Kvstore> {
    let _lock = lock(name)?;
    let mut state = LabState::load(name)?;
    let Some(old) = state.kvstore.clone() else {
        bail!("lab {name} has no kvstore (start it with `lab up --kvstore`)");
    };
    if kvstore_running(&old) {
        kill(old.pid);
    }
    let mut k = spawn_etcd(name, old.client_url.clone(), old.peer_url.clone())?;
    k.restarts = old.restarts.saturating_add(1);
    state.kvstore = Some(k.clone());
    state.save()?;
    Ok(k)
}

/// Where Debian's prometheus package puts the server.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// Starts Prometheus on loopback, scraping every collector's `/metrics`
/// every 5 s, with its data in the lab's directory; waits until it is ready.
fn start_prometheus(state: &LabState) -> anyhow::Result<Prometheus> {
    let dir = lab_dir(&state.name);
    let targets: Vec<String> = state.nodes.iter().filter_map(|n| n.metrics.clone()).map(|m| format!("'{m}'")).collect();
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\nscrape_configs:\n  - job_name: sightline\n    static_configs:\n      - targets: [{}]\n        labels: {{lab: '{}'}}\n{}",
            targets.join(", "),
            state.name,
            // The relay's own and export metrics.
            state.relay.as_ref().and_then(|r| r.metrics.as_ref()).map_or(String::new(), |m| format!(
                "  - job_name: sightline-relay\n    static_configs:\n      - targets: ['{m}']\n        labels: {{lab: '{}'}}\n",
                state.name
            ))
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let address = free_loopback_port()?;
    let log = dir.join("prometheus.log");
    let mut cmd = Command::new(PROMETHEUS_BIN);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()))
        .arg(format!("--web.listen-address={address}"));
    let child = spawn_detached(&mut cmd, &log, false)?;
    let pid = child.id();
    std::mem::forget(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http_ok(&address, "/-/ready") {
            return Ok(Prometheus { pid, address });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    kill(pid);
    bail!("prometheus did not become ready on {address} (log {})", log.display())
}

/// Whether `GET path` on a loopback address answers 200.
pub fn http_ok(address: &str, path: &str) -> bool {
    use std::io::Write as _;
    let Ok(mut s) = std::net::TcpStream::connect(address) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// A loopback address with a port that is free now (the collector binds it
/// right after; the default 4244 is kept for a real node agent, and labs side
/// by side need their own).
pub fn free_loopback_port() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.to_string())
}

/// The flow API of a running lab, if any, and what it is: its relay, or the
/// first collector (`collector of node-1`) in a lab without one.
pub fn default_server_named(lab_name: &str) -> Option<(String, String)> {
    let state = LabState::load(lab_name).ok()?;
    match &state.relay {
        Some(r) => Some((r.grpc.clone(), "relay".to_owned())),
        None => {
            let node = state.nodes.first()?;
            Some((node.grpc.clone()?, format!("collector of {}", node.name)))
        }
    }
}

/// How a client reaches one of a lab's gRPC servers over TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name on the server's certificate.
    pub server_name: String,
}

impl LabState {
    /// The TLS files for a client of the server at `address` (the relay or
    /// a collector of this lab), when the lab runs with TLS.
    #[must_use]
    pub fn client_tls_for(&self, address: &str) -> Option<ClientTlsFiles> {
        let tls = self.tls.as_ref()?;
        let server_name = if self.relay.as_ref().is_some_and(|r| r.grpc == address) {
            tls.server_name.clone()
        } else {
            let node = self.nodes.iter().find(|n| n.grpc.as_deref() == Some(address))?;
            pki::collector_server_name(&node.name)
        };
        Some(ClientTlsFiles { ca: tls.ca.clone(), cert: tls.client_cert.clone(), key: tls.client_key.clone(), server_name })
    }
}

/// The TLS files for a client of `address`: from lab `preferred` if it
/// serves there, else from any running lab that does.
#[must_use]
pub fn client_tls_for(preferred: &str, address: &str) -> Option<ClientTlsFiles> {
    if let Some(files) = LabState::load(preferred).ok().and_then(|s| s.client_tls_for(address)) {
        return Some(files);
    }
    let entries = fs::read_dir(LABS_DIR).ok()?;
    entries
        .flatten()
        .filter(|e| e.path().join("state.json").exists())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter_map(|name| LabState::load(&name).ok())
        .find_map(|state| state.client_tls_for(address))
}

/// `lab down`.
pub fn down(name: &str) -> anyhow::Result<()> {
    validate_name(name)?;
    let _lock = lock(name)?;
    teardown(name)
}
