//! `sightline`: the lab, the demo, the collector process, and benchmarks.
//!
//! This binary is a thin shell: argument parsing and output. The lab's logic
//! lives in the `sightline-lab` crate, the node agent in the `sightline-collector` crate.

mod bench;
mod bench_kvstore;
mod bench_restart;
mod demo;
mod flood;
mod interrupt;
mod observe;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sightline_collector::agent::{self, AgentOptions, Aggregation, CtTimeouts};

use sightline_lab::cluster::{self, DEFAULT_NAME, LabState};
use sightline_lab::types::Protocol;

#[derive(Parser)]
#[command(name = "sightline", version, about = "eBPF datapath and flow telemetry for pod networks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A local cluster made of network namespaces, running the real datapath.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Brings up a lab with a sample application, makes traffic, and prints
    /// decoded datapath events live until Ctrl-C or --duration.
    Demo(DemoArgs),
    /// Runs the node agent (started by `lab up`; not usually run by hand).
    Collector(CollectorArgs),
    /// Runs the relay: one flow API for every node's collector, flows merged
    /// in time order (started by `lab up`).
    Relay(RelayArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Prints flows from the flow API, like `hubble observe`.
    Observe(observe::ObserveArgs),
    /// The flow server's status: flows stored and seen, rate, uptime, nodes.
    Status(observe::StatusArgs),
    /// Lists what the flow server knows.
    List {
        #[command(subcommand)]
        what: observe::ListCommand,
    },
}

#[derive(Args)]
struct NameArg {
    /// The lab's name; prefixes every namespace it creates.
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum RestartTarget {
    Relay,
    Collector,
    /// The lab's etcd (`lab up --kvstore`), same URLs and data.
    Kvstore,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Creates the lab, starts its collectors, applies the files.
    Up {
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        nodes: u32,
        #[command(flatten)]
        name: NameArg,
        /// Monitor aggregation in the datapath: none or medium.
        #[arg(long, default_value = "medium")]
        aggregation: String,
        /// Collectors print every decoded event to their log.
        #[arg(long)]
        debug_events: bool,
        /// Do not run collectors or attach programs: the kernel routes pods
        /// on its own (a baseline for comparisons).
        #[arg(long)]
        no_datapath: bool,
        /// Connection lifetimes, e.g. `syn=60s,established=6h,closing=10s,other=60s`.
        #[arg(long, default_value = "")]
        ct_timeouts: String,
        /// How often collectors delete expired connections.
        #[arg(long, default_value = "5s")]
        ct_gc_interval: String,
        /// Report what NetworkPolicy would deny (verdict AUDIT) without
        /// dropping anything.
        #[arg(long)]
        policy_audit: bool,
        /// Flows each collector keeps for clients (2^n − 1).
        #[arg(long, default_value_t = 4095)]
        flow_capacity: usize,
        /// Hubble metrics handlers for the collectors, Hubble's syntax, e.g.
        /// `flow:sourceContext=pod;destinationContext=pod,drop,policy`.
        #[arg(long = "metrics")]
        metrics: Vec<String>,
        /// Also run Debian's Prometheus on loopback, scraping the collectors
        /// and the relay.
        #[arg(long)]
        prometheus: bool,
        /// The relay exports flows as this file says (YAML; docs/EXPORT.md);
        /// edits are applied while the lab runs.
        #[arg(long, value_name = "FILE")]
        export_config: Option<PathBuf>,
        /// Each collector also exports its own node's flows as this file
        /// says (node-local export, as Hubble's exporter on each agent).
        #[arg(long, value_name = "FILE")]
        node_export_config: Option<PathBuf>,
        /// Serve every gRPC API in plaintext. By default the lab makes its
        /// own CA and runs mutual TLS between every component and for
        /// clients (docs/SECURITY.md).
        #[arg(long)]
        no_tls: bool,
        /// Run no supervisor: a collector or relay that exits stays down.
        #[arg(long)]
        no_supervisor: bool,
        #[command(flatten)]
        network: sightline_lab::network::NetworkArgs,
        /// Also run an etcd (Debian's etcd-server, loopback only) in which
        /// every collector publishes its endpoints as endpoint slices and
        /// reads the other nodes' (docs/LAB.md, *The kvstore*).
        #[arg(long)]
        kvstore: bool,
        /// How other nodes' pods reach each node: `both` (the lab sends them
        /// to every collector, and the slices add to that) or `kvstore`
        /// (through the slices alone; needs --kvstore).
        #[arg(long, value_enum, default_value = "both")]
        endpoint_propagation: cluster::Propagation,
    },
    /// Lists the endpoint slices in the lab's kvstore, like `kubectl get
    /// ciliumendpointslices -A`.
    Endpointslices {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        name: NameArg,
    },
    /// Creates or updates objects; returns when the datapath enforces them.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        name: NameArg,
    },
    /// Removes the objects named in the files.
    Delete {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        name: NameArg,
    },
    /// Nodes, pods, services, policies and the collectors' addresses.
    Status {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        name: NameArg,
    },
    /// Runs a command inside a pod's network namespace.
    Exec {
        /// The pod, as namespace/name.
        pod: String,
        #[command(flatten)]
        name: NameArg,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// One connection attempt; prints `connected` or `blocked`.
    Probe {
        /// Source pod, as namespace/name.
        from: String,
        /// Destination: namespace/name, svc/namespace/name, or an IP.
        to: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "TCP")]
        protocol: Protocol,
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_MS))]
        timeout_ms: u64,
        #[command(flatten)]
        name: NameArg,
    },
    /// Probes every ordered pair of pods.
    Matrix {
        #[arg(long, default_value_t = 80)]
        port: u16,
        #[arg(long, default_value = "TCP")]
        protocol: Protocol,
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_MS))]
        timeout_ms: u64,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        name: NameArg,
    },
    /// Streams the decoded datapath events of a node's collector.
    Events {
        #[arg(long, default_value = "node-1")]
        node: String,
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Output>,
        /// Stop after this long (e.g. 10s); default: until Ctrl-C.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        #[command(flatten)]
        name: NameArg,
    },
    /// Restarts one of the lab's processes, as a deliberate restart of a
    /// pod would: `relay` (same addresses, same export configuration), or
    /// `collector NODE` (same addresses and options; it adopts the datapath
    /// left in force and gets the lab's current desired state).
    Restart {
        #[arg(value_enum)]
        what: RestartTarget,
        /// The node whose collector restarts (`collector` only).
        node: Option<String>,
        /// `collector`: replace the datapath in place instead of adopting
        /// it: `programs` (maps kept) or `all` (maps recreated too).
        #[arg(long, default_value = "none")]
        reload: sightline_collector::pins::Reload,
        #[command(flatten)]
        name: NameArg,
    },
    /// The lab's supervisor (started by `lab up`): restarts a collector or
    /// the relay that exits, with back-off.
    #[command(hide = true)]
    Supervise {
        #[command(flatten)]
        name: NameArg,
    },
    /// Stops the lab and removes everything it made.
    Down {
        #[command(flatten)]
        name: NameArg,
    },
    /// The built-in responder that runs inside a pod (started by the lab).
    #[command(hide = true)]
    Responder {
        #[arg(long)]
        text: String,
        /// `port/PROTOCOL`, repeated.
        #[arg(long = "port")]
        ports: Vec<String>,
    },
}

#[derive(Args)]
pub struct DemoArgs {
    /// Stop after this long (e.g. 30s, 2m); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Monitor aggregation: none or medium.
    #[arg(long, default_value = "medium")]
    aggregation: String,
    #[arg(long, default_value = "sightline-demo")]
    name: String,
    /// Where the flow log goes (Hubble's JSON lines).
    #[arg(long, value_name = "FILE", default_value = demo::DEFAULT_FLOW_LOG, conflicts_with = "export_config")]
    flow_log: PathBuf,
    /// Export as this file says instead of the flow log (YAML; docs/EXPORT.md).
    #[arg(long, value_name = "FILE")]
    export_config: Option<PathBuf>,
}

#[derive(Args)]
struct RelayArgs {
    /// Serve the relay's gRPC API (Hubble's Observer, health, reflection) here.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// A node's collector: NAME=HOST:PORT (repeatable). For a fixed set of
    /// nodes (the lab); in a cluster, --peer-service.
    #[arg(long = "peer", value_name = "NAME=HOST:PORT", required_unless_present = "peer_service", conflicts_with = "peer_service")]
    peers: Vec<String>,
    /// Learn the collectors from the Peer service at HOST:PORT
    /// (`peer.Peer/Notify`, as Hubble Relay does; in a cluster the
    /// sightline-peer Service in front of every agent), as nodes join and
    /// leave.
    #[arg(long, value_name = "HOST:PORT")]
    peer_service: Option<String>,
    /// The name the Peer service's certificate must carry, with TLS to the
    /// collectors (default: peer.<cluster>.hubble-grpc.cilium.io, which the
    /// agents' *.<cluster>.hubble-grpc.cilium.io certificate covers).
    #[arg(long, value_name = "NAME", requires = "peer_service")]
    peer_service_server_name: Option<String>,
    /// The longest wait between two calls of an unreachable Peer service
    /// (from 1s, doubling).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, requires = "peer_service")]
    retry_timeout: Duration,
    /// The lab the relay belongs to (so that `lab down` finds it).
    #[arg(long)]
    lab: Option<String>,
    /// Export flows as this file says (YAML; see docs/EXPORT.md). Re-read
    /// when it changes and on SIGHUP; a bad file is refused and the running
    /// exporters keep going.
    #[arg(long, value_name = "FILE")]
    export_config: Option<PathBuf>,
    /// Where exporters keep their spools unless their configuration says
    /// otherwise (`<dir>/<exporter>`).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/sightline/spool")]
    spool_dir: PathBuf,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, value_name = "ADDR")]
    metrics_address: Option<std::net::SocketAddr>,
    /// The cluster's name (`k8s.cluster.name` of exported OTLP records).
    #[arg(long, default_value = "default")]
    cluster_name: String,
    /// Print `ready` on stdout once the listener is bound.
    #[arg(long, hide = true)]
    notify_ready: bool,
    #[command(flatten)]
    tls: RelayTlsArgs,
    #[command(flatten)]
    auth: AuthArgs,
}

/// TLS of the relay, with Hubble Relay's flag names.
#[derive(Args)]
struct RelayTlsArgs {
    /// The relay's server certificate (PEM, leaf first).
    #[arg(long, alias = "tls-cert-file", value_name = "FILE", help_heading = "TLS")]
    tls_relay_server_cert_file: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long, alias = "tls-key-file", value_name = "FILE", help_heading = "TLS")]
    tls_relay_server_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that clients' certificates must chain to: with
    /// them, clients must present one (mutual TLS). Comma-separated or
    /// repeated.
    #[arg(long, alias = "tls-client-ca-files", value_name = "FILE", value_delimiter = ',', help_heading = "TLS")]
    tls_relay_client_ca_files: Vec<PathBuf>,
    /// Serve clients in plaintext.
    #[arg(long, conflicts_with_all = ["tls_relay_server_cert_file", "tls_relay_server_key_file", "tls_relay_client_ca_files"], help_heading = "TLS")]
    disable_server_tls: bool,
    /// The relay's client certificate (PEM) for the collectors (mutual TLS).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    tls_hubble_client_cert_file: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    tls_hubble_client_key_file: Option<PathBuf>,
    /// CA certificates (PEM) the collectors' certificates must chain to
    /// (default: the system's). Each collector's certificate must carry
    /// `<node>.<cluster>.hubble-grpc.cilium.io`.
    #[arg(long, value_name = "FILE", value_delimiter = ',', help_heading = "TLS")]
    tls_hubble_server_ca_files: Vec<PathBuf>,
    /// Reach the collectors in plaintext.
    #[arg(long, conflicts_with_all = ["tls_hubble_client_cert_file", "tls_hubble_client_key_file", "tls_hubble_server_ca_files"], help_heading = "TLS")]
    disable_client_tls: bool,
}

/// Bearer-token authentication of the relay's API (docs/SECURITY.md).
#[derive(Args)]
struct AuthArgs {
    /// Require a bearer token from this issuer on every Observer call
    /// (Entra ID: https://login.microsoftonline.com/<tenant>/v2.0).
    #[arg(long, value_name = "URL", requires = "auth_audience", help_heading = "Authentication")]
    auth_issuer: Option<String>,
    /// The audience tokens must be for (repeatable; e.g. api://<app id>).
    #[arg(long, value_name = "AUD", requires = "auth_issuer", help_heading = "Authentication")]
    auth_audience: Vec<String>,
    /// The issuer's key set (default: the jwks_uri of
    /// <issuer>/.well-known/openid-configuration).
    #[arg(long, value_name = "URL", requires = "auth_issuer", help_heading = "Authentication")]
    auth_jwks_url: Option<String>,
    /// A CA file to trust for the issuer's HTTPS, besides the system's.
    #[arg(long, value_name = "FILE", requires = "auth_issuer", help_heading = "Authentication")]
    auth_ca_file: Option<PathBuf>,
    /// Which namespaces a token may read, by its roles and groups claims
    /// (YAML; docs/SECURITY.md). Without it every valid token reads all.
    #[arg(long, value_name = "FILE", requires = "auth_issuer", help_heading = "Authentication")]
    auth_namespaces_file: Option<PathBuf>,
}

/// TLS of a collector's gRPC API, with the Cilium agent's flag names.
#[derive(Args)]
struct CollectorTlsArgs {
    /// The gRPC server's certificate (PEM, leaf first); re-read when it
    /// changes.
    #[arg(long, alias = "tls-cert-file", value_name = "FILE", help_heading = "TLS")]
    hubble_tls_cert_file: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long, alias = "tls-key-file", value_name = "FILE", help_heading = "TLS")]
    hubble_tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that clients' certificates must chain to: with
    /// them, clients (the relay) must present one. Comma-separated or
    /// repeated.
    #[arg(long, alias = "tls-client-ca-files", value_name = "FILE", value_delimiter = ',', help_heading = "TLS")]
    hubble_tls_client_ca_files: Vec<PathBuf>,
    /// Serve the gRPC API in plaintext.
    #[arg(long, alias = "disable-server-tls", conflicts_with_all = ["hubble_tls_cert_file", "hubble_tls_key_file", "hubble_tls_client_ca_files"], help_heading = "TLS")]
    hubble_disable_tls: bool,
}

/// A server's TLS from its flags: `None` when disabled; an error naming the
/// flags when neither a certificate nor the switch is given.
fn server_tls(
    label: &str,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    client_ca: &[PathBuf],
    disabled: bool,
    names: [&str; 3],
) -> anyhow::Result<Option<std::sync::Arc<sightline_tls::ServerTls>>> {
    if disabled {
        return Ok(None);
    }
    let [cert_flag, key_flag, disable_flag] = names;
    let (Some(cert), Some(key)) = (cert, key) else {
        bail!("{label} is served over TLS: give {cert_flag} and {key_flag}, or {disable_flag} to serve plaintext");
    };
    let files = sightline_tls::ServerTlsFiles { cert: cert.clone(), key: key.clone(), client_ca: client_ca.to_vec() };
    Ok(Some(std::sync::Arc::new(sightline_tls::ServerTls::new(label, files)?)))
}

#[derive(Args)]
struct CollectorArgs {
    /// The node's name (with --kubernetes: its Node object's name); `--node`
    /// is the same flag.
    #[arg(long = "node-name", value_name = "NAME", visible_alias = "node", required_unless_present = "uninstall")]
    node: Option<String>,
    /// The node's network namespace (a path such as /run/netns/NAME). With
    /// --uninstall: checked afterwards for programs of ours still attached.
    #[arg(long, required_unless_present = "uninstall")]
    netns: Option<PathBuf>,
    #[arg(long, required_unless_present = "uninstall")]
    control_socket: Option<PathBuf>,
    /// Besides root, the only uid allowed on the control socket (created
    /// mode 0600 in a private, mode 0700, directory).
    #[arg(long, value_name = "UID", default_value_t = 0)]
    control_uid: u32,
    /// The lab this node belongs to (pod namespaces must be
    /// /run/netns/LAB.*); default: the --netns name without `.NODE`.
    #[arg(long)]
    lab: Option<String>,
    /// Where the datapath is pinned. A datapath found there is adopted
    /// (this build's) or replaced in place (another build's); it stays in
    /// force when the collector exits.
    #[arg(long)]
    pin_dir: PathBuf,
    /// Replace the pinned datapath even if it could be adopted: `programs`
    /// (swapped into the links atomically, maps kept) or `all` (maps
    /// recreated too, as for an ABI upgrade: conntrack starts empty).
    #[arg(long, default_value = "none")]
    reload: sightline_collector::pins::Reload,
    /// Do not run: detach every link pinned under --pin-dir and remove the
    /// pins (the datapath stops enforcing), then exit.
    #[arg(long)]
    uninstall: bool,
    #[arg(long, default_value = "medium")]
    aggregation: Aggregation,
    /// Print every decoded event on stdout.
    #[arg(long)]
    debug_events: bool,
    /// Connection lifetimes, e.g. `syn=60s,established=6h,closing=10s,other=60s`.
    #[arg(long, default_value = "")]
    ct_timeouts: CtTimeouts,
    /// How often expired connections are deleted (100ms to 24h).
    #[arg(long, default_value = "5s", value_parser = agent::parse_gc_interval)]
    ct_gc_interval: Duration,
    /// Serve the gRPC API (Hubble's Observer and Peer, health, reflection)
    /// on this address (loopback in a lab).
    #[arg(long)]
    grpc: Option<std::net::SocketAddr>,
    /// Flows kept for clients (2^n − 1).
    #[arg(long, default_value_t = 4095)]
    flow_capacity: usize,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long)]
    metrics_address: Option<std::net::SocketAddr>,
    /// Hubble metrics handlers and their options, Hubble's syntax, e.g.
    /// `flow:sourceContext=pod;destinationContext=pod,drop,policy`
    /// (repeatable; default: drop, tcp, flow, port-distribution, icmp).
    #[arg(long = "metrics")]
    metrics: Vec<String>,
    /// Node-local export: this node's flows, as this file says (YAML;
    /// docs/EXPORT.md). Re-read when it changes and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    export_config: Option<PathBuf>,
    /// Where exporters keep their spools unless configured otherwise.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/sightline/spool")]
    spool_dir: PathBuf,
    /// Print `ready` on stdout once the control socket accepts requests.
    #[arg(long, hide = true)]
    notify_ready: bool,
    /// etcd client URLs (`http://HOST:PORT`, comma-separated or repeated):
    /// publish this node's endpoints as endpoint slices and learn the other
    /// nodes' from theirs. The per-endpoint path (the control socket) goes
    /// on regardless: connectivity never depends on etcd.
    #[arg(long, value_name = "URL")]
    kvstore_endpoints: Vec<String>,
    /// Take the desired state from the Kubernetes API (watching pods,
    /// namespaces, services, endpoint slices, network policies and nodes)
    /// and apply it in process; the control socket still takes endpoint
    /// registrations. In-cluster configuration unless --kubeconfig.
    #[arg(long)]
    kubernetes: bool,
    /// With --kubernetes: the kubeconfig file to use (its current context)
    /// instead of the in-cluster configuration.
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// With --kubernetes: write the node's CNI configuration list here
    /// (e.g. /etc/cni/net.d/05-sightline.conflist) once the datapath has
    /// the node's state, and whenever its pod range changes.
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    cni_conf: Option<PathBuf>,
    /// With --cni-conf: the plugin's address store on the node.
    #[arg(long, value_name = "DIR", requires = "cni_conf", default_value = sightline_collector::kubernetes::cni::DEFAULT_DATA_DIR)]
    cni_data_dir: PathBuf,
    /// The cluster's name: in the certificate names the Peer service
    /// announces (`<node>.<cluster>.hubble-grpc.cilium.io`) and on exported
    /// records.
    #[arg(long, default_value = "default")]
    cluster_name: String,
    #[command(flatten)]
    tls: CollectorTlsArgs,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Pod→pod TCP throughput (iperf3) and request/response rate through the
    /// datapath, against the same topology with no programs attached.
    Datapath(bench::DatapathArgs),
    /// Cost of NetworkPolicy with 0, 1,000 and 10,000 extra rules on a pod:
    /// per-packet (in the kernel), TCP throughput and connection rate,
    /// against the same rules as iptables in the same topology.
    Policy(bench::PolicyArgs),
    /// GetFlows streaming rate to one client over loopback, against copying
    /// raw event records.
    Observe(bench::ObserveArgs),
    /// Flows exported through the relay (a child process) from in-process
    /// fake collectors to a local sink: delay, CPU, memory, a sink outage,
    /// and optionally the highest sustained rate.
    Export(bench::export::ExportArgs),
    /// (internal) request/response client and server used by `datapath`.
    #[command(hide = true)]
    Rr(bench::RrArgs),
    /// What a flood of new connections costs the node agent, end to end:
    /// agent CPU per event, events delivered vs generated, losses, RSS,
    /// pipeline delay, at fixed rates and flat out.
    Flood(flood::FloodArgs),
    /// (internal) the flood's sender, run inside a pod.
    #[command(hide = true)]
    FloodSend(flood::SendArgs),
    /// A collector restart in a one-node lab: time to the desired state in
    /// force when adopting the pinned datapath, replacing its programs, and
    /// starting cold; events written, received and lost across a SIGKILL
    /// and restart at a steady rate.
    Restart(bench_restart::RestartArgs),
    /// (internal) paced UDP sender and sink used by `restart`.
    #[command(hide = true)]
    Udp(bench_restart::UdpArgs),
    /// Endpoint propagation through a real etcd: endpoint slices against
    /// one key per endpoint (simulated nodes, in-process), same run.
    Endpointslices(bench_kvstore::EndpointSlicesArgs),
}

/// The longest `--timeout-ms` of a probe: an hour.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Parses `500ms`, `30s`, `2m`, `1h`, or plain seconds (at most 876000h).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    agent::parse_duration(s)
}

fn main() -> ExitCode {
    env_logger_init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn env_logger_init() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::max_level()
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                eprintln!("{} {}: {}", r.level(), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let level = match std::env::var("SIGHTLINE_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        Ok("warn") => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Lab { command } => lab_command(command),
        Command::Demo(args) => {
            let export = match args.export_config {
                Some(path) => demo::Export::Config(path),
                None => demo::Export::FlowLog(args.flow_log),
            };
            demo::run(&args.name, &args.aggregation, args.duration, export).map(|()| ExitCode::SUCCESS)
        }
        Command::Collector(args) if args.uninstall => {
            let removed = sightline_collector::loader::uninstall(&args.pin_dir)?;
            if removed.existed {
                say(format_args!("detached {} link(s) and removed {}\n", removed.links, args.pin_dir.display()))?;
            } else {
                say(format_args!("nothing pinned at {}\n", args.pin_dir.display()))?;
            }
            if let Some(netns) = &args.netns {
                let left = sightline_collector::loader::attached_in(netns)?;
                if !left.is_empty() {
                    bail!("programs of ours are still attached in {}: {}", netns.display(), left.join(", "));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Collector(args) => {
            let (Some(node_name), Some(control_socket), Some(node_netns)) =
                (args.node.clone(), args.control_socket.clone(), args.netns.clone())
            else {
                bail!("--node-name, --netns and --control-socket are required unless --uninstall");
            };
            let export = match &args.export_config {
                Some(path) => {
                    let context = sightline_export::Context::from_env(args.spool_dir.clone());
                    let config = sightline_export::config::load(path, &context).map_err(|e| anyhow!("--export-config {e}"))?;
                    Some(agent::ExportOptions { path: path.clone(), config, context })
                }
                None => None,
            };
            let grpc_tls = match args.grpc {
                Some(_) => {
                    let t = &args.tls;
                    server_tls(
                        "the collector's gRPC API",
                        t.hubble_tls_cert_file.as_ref(),
                        t.hubble_tls_key_file.as_ref(),
                        &t.hubble_tls_client_ca_files,
                        t.hubble_disable_tls,
                        ["--hubble-tls-cert-file", "--hubble-tls-key-file", "--hubble-disable-tls"],
                    )?
                }
                None => None,
            };
            let lab = match &args.lab {
                Some(lab) => lab.clone(),
                None => collector_lab(&node_netns, &node_name)?,
            };
            let kvstore = if args.kvstore_endpoints.is_empty() {
                None
            } else {
                Some(sightline_collector::kvstore::parse_endpoints(&args.kvstore_endpoints).map_err(|e| anyhow!(e))?)
            };
            let kubernetes = args.kubernetes.then(|| {
                let connection = match &args.kubeconfig {
                    Some(path) => sightline_collector::kubernetes::Connection::Kubeconfig(path.clone()),
                    None => sightline_collector::kubernetes::Connection::InCluster,
                };
                let mut config = sightline_collector::kubernetes::SourceConfig::new(&node_name, connection);
                config.cni = args.cni_conf.clone().map(|path| sightline_collector::kubernetes::cni::CniConfig {
                    path,
                    control_socket: control_socket.clone(),
                    data_dir: args.cni_data_dir.clone(),
                    mtu: sightline_collector::kubernetes::cni::DEFAULT_MTU,
                    gateway_netns: Some(node_netns.clone()),
                });
                config
            });
            let opts = AgentOptions {
                node_name,
                node_netns,
                control_socket,
                control_uid: args.control_uid,
                lab,
                pin_dir: args.pin_dir,
                aggregation: args.aggregation,
                debug_events: args.debug_events,
                ct_timeouts: args.ct_timeouts,
                gc_interval: args.ct_gc_interval,
                grpc: args.grpc,
                grpc_tls,
                flow_capacity: args.flow_capacity,
                metrics: args.metrics_address,
                metrics_config: sightline_collector::metrics::MetricsConfig::from_entries(&args.metrics)?,
                export,
                reload: args.reload,
                kvstore,
                kubernetes,
                cluster_name: args.cluster_name.clone(),
            };
            let notify = args.notify_ready;
            runtime()?.block_on(agent::run(opts, notify))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Relay(args) => {
            run_relay(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command } => match command {
            BenchCommand::Datapath(args) => bench::datapath(&args).map(|()| ExitCode::SUCCESS),
            BenchCommand::Policy(args) => bench::policy(&args).map(|()| ExitCode::SUCCESS),
            BenchCommand::Observe(args) => bench::observe(&args).map(|()| ExitCode::SUCCESS),
            BenchCommand::Export(args) => bench::export::export(&args).map(|()| ExitCode::SUCCESS),
            BenchCommand::Rr(args) => bench::rr(&args).map(|()| ExitCode::SUCCESS),
            BenchCommand::Flood(args) => flood::flood(&args).map(|()| ExitCode::SUCCESS),
            BenchCommand::FloodSend(args) => flood::send(&args).map(|()| ExitCode::SUCCESS),
            BenchCommand::Restart(args) => bench_restart::restart(&args).map(|()| ExitCode::SUCCESS),
            BenchCommand::Udp(args) => bench_restart::udp(&args).map(|()| ExitCode::SUCCESS),
            BenchCommand::Endpointslices(args) => bench_kvstore::endpointslices(&args).map(|()| ExitCode::SUCCESS),
        },
        Command::Observe(args) => observe::observe(args).map(|()| ExitCode::SUCCESS),
        Command::Status(args) => observe::status(args).map(|()| ExitCode::SUCCESS),
        Command::List { what } => observe::list(what).map(|()| ExitCode::SUCCESS),
    }
}

/// The lab of a collector started without `--lab`: its node namespace is
/// `/run/netns/<lab>.<node>`.
fn collector_lab(netns: &std::path::Path, node: &str) -> anyhow::Result<String> {
    netns
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(&format!(".{node}")))
        .filter(|lab| !lab.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("--lab: cannot tell the lab from --netns {} (not <lab>.{node}); give --lab", netns.display()))
}

fn check_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (network namespaces, eBPF): run it with sudo");
    }
    Ok(())
}

/// Writes to stdout; a reader that went away (`| head`) is no error, and
/// never a panic as `println!` would make it.
fn say(text: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(text).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

fn lab_command(command: LabCommand) -> anyhow::Result<ExitCode> {
    if !matches!(command, LabCommand::Responder { .. }) {
        check_root()?;
    }
    match command {
        LabCommand::Up {
            files,
            nodes,
            name,
            aggregation,
            debug_events,
            no_datapath,
            ct_timeouts,
            ct_gc_interval,
            policy_audit,
            flow_capacity,
            metrics,
            prometheus,
            export_config,
            node_export_config,
            no_tls,
            no_supervisor,
            network,
            kvstore,
            endpoint_propagation,
        } => {
            let state = cluster::up(&cluster::UpOptions {
                name: name.name,
                nodes,
                files,
                aggregation,
                debug_events,
                datapath: !no_datapath,
                ct_timeouts,
                ct_gc_interval,
                policy_audit,
                flow_capacity,
                metrics,
                prometheus,
                export_config,
                node_export_config: node_export_config.map(|p| std::fs::canonicalize(&p).unwrap_or(p)),
                tls: !no_tls,
                supervise: !no_supervisor,
                network: network.options()?,
                kvstore,
                endpoint_propagation,
            })?;
            say(format_args!(
                "lab {} is up: {} node(s), {} pod(s); `sightline lab status --name {}` shows it\n",
                state.name,
                state.nodes.len(),
                state.pods.len(),
                state.name
            ))?;
        }
        LabCommand::Apply { files, name } => {
            let (report, converged) = cluster::apply(&name.name, &files)?;
            print_report(&report);
            print_behind(&name.name, &converged);
        }
        LabCommand::Delete { files, name } => {
            let (report, converged) = cluster::delete(&name.name, &files)?;
            print_report(&report);
            print_behind(&name.name, &converged);
        }
        LabCommand::Status { output, name } => {
            let state = LabState::load(&name.name)?;
            match output {
                Output::Json => say(format_args!("{}\n", serde_json::to_string_pretty(&sightline_lab::status::json(&state))?))?,
                Output::Table => say(format_args!("{}", sightline_lab::status::table(&state)))?,
            }
        }
        LabCommand::Exec { pod, name, command } => {
            let state = LabState::load(&name.name)?;
            let netns = state.pod_netns(&pod)?;
            let netns_name = netns.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("bad netns path"))?.to_owned();
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &netns_name])
                .args(&command)
                .status()
                .with_context(|| format!("running {command:?} in pod {pod}"))?;
            return Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8));
        }
        LabCommand::Probe { from, to, port, protocol, timeout_ms, name } => {
            return Ok(match probe(&name.name, &from, &to, port, protocol, timeout_ms) {
                Ok(true) => {
                    let _ = say(format_args!("connected\n"));
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    let _ = say(format_args!("blocked\n"));
                    ExitCode::from(1)
                }
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(2)
                }
            });
        }
        LabCommand::Matrix { port, protocol, timeout_ms, output, name } => {
            let state = LabState::load(&name.name)?;
            let pods: Vec<_> = state
                .pods
                .iter()
                .map(|(k, p)| Ok((k.clone(), state.pod_netns(k)?, p.ip)))
                .collect::<anyhow::Result<_>>()?;
            let entries = runtime()?.block_on(sightline_lab::probe::matrix(&pods, port, protocol, Duration::from_millis(timeout_ms)))?;
            match output {
                Output::Json => say(format_args!("{}\n", sightline_lab::probe::render_json(&entries, port, protocol)))?,
                Output::Table => say(format_args!("{}", sightline_lab::probe::render_table(&entries)))?,
            }
        }
        LabCommand::Events { node, output, duration, name } => {
            let state = LabState::load(&name.name)?;
            let n = state.nodes.iter().find(|n| n.name == node).ok_or_else(|| anyhow!("lab {} has no node {node}", name.name))?;
            sightline_lab::events::stream(&n.control_socket, matches!(output, Some(Output::Json)), duration)?;
        }
        LabCommand::Restart { what: RestartTarget::Relay, node: None, name, .. } => {
            let relay = cluster::restart_relay(&name.name)?;
            say(format_args!("relay of lab {} restarted: pid {}, gRPC {}\n", name.name, relay.pid, relay.grpc))?;
        }
        LabCommand::Restart { what: RestartTarget::Kvstore, node: None, name, .. } => {
            let k = cluster::restart_kvstore(&name.name)?;
            say(format_args!("kvstore of lab {} restarted: pid {}, {}\n", name.name, k.pid, k.client_url))?;
        }
        LabCommand::Restart { what: RestartTarget::Kvstore, node: Some(node), .. } => {
            bail!("`lab restart kvstore` takes no node (got {node:?})");
        }
        LabCommand::Endpointslices { output, name } => {
            let state = LabState::load(&name.name)?;
            let Some(k) = &state.kvstore else {
                bail!("lab {} has no kvstore (start it with `lab up --kvstore`)", name.name);
            };
            let mut slices = runtime()?
                .block_on(sightline_collector::kvstore::list(std::slice::from_ref(&k.client_url)))
                .map_err(|e| anyhow!("the kvstore of lab {}: {e}", name.name))?;
            slices.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            match output {
                Output::Json => say(format_args!("{}\n", serde_json::to_string_pretty(&serde_json::json!({"items": slices}))?))?,
                Output::Table => say(format_args!("{}", sightline_lab::status::endpointslices_table(&slices)))?,
            }
        }
        LabCommand::Restart { what: RestartTarget::Relay, node: Some(node), .. } => {
            bail!("`lab restart relay` takes no node (got {node:?})");
        }
        LabCommand::Restart { what: RestartTarget::Collector, node, reload, name } => {
            let node = node.ok_or_else(|| anyhow!("`lab restart collector` needs the node, e.g. `lab restart collector node-1`"))?;
            let r = cluster::restart_collector(&name.name, &node, reload)?;
            let was = if r.was_running { format!("stopped pid {}", r.old_pid) } else { "none was running".to_owned() };
            say(format_args!(
                "collector of {} in lab {} restarted: pid {} ({was}); ready in {} ms, desired state in force {} ms later\n",
                r.node,
                name.name,
                r.pid,
                r.ready_after.as_millis(),
                r.programmed_after.as_millis()
            ))?;
            print_behind(&name.name, &r.converged);
        }
        LabCommand::Supervise { name } => sightline_lab::supervisor::run(&name.name)?,
        LabCommand::Down { name } => {
            cluster::down(&name.name)?;
            say(format_args!("lab {} is down\n", name.name))?;
        }
        LabCommand::Responder { text, ports } => {
            let ports = ports.iter().map(|p| parse_port(p)).collect::<anyhow::Result<Vec<_>>>()?;
            let responder = sightline_lab::responder::bind(&sightline_lab::responder::ResponderConfig { text: text.clone(), ports })?;
            log::info!("answering {text:?} on {:?}", responder.ports());
            {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                writeln!(out, "ready")?;
                out.flush()?;
            }
            responder.serve()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_port(s: &str) -> anyhow::Result<(u16, Protocol)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port.parse().map_err(|_| anyhow!("--port {s:?}: expected PORT/PROTOCOL such as 80/TCP"))?;
    let proto: Protocol = proto.parse().map_err(|e: String| anyhow!("--port {s:?}: {e}"))?;
    Ok((port, proto))
}

fn probe(name: &str, from: &str, to: &str, port: u16, protocol: Protocol, timeout_ms: u64) -> anyhow::Result<bool> {
    let state = LabState::load(name)?;
    let from_netns = state.pod_netns(from)?;
    let ip: std::net::Ipv4Addr = if let Some(svc) = to.strip_prefix("svc/") {
        *state.service_ips.get(svc).ok_or_else(|| anyhow!("no service {svc} in lab {name}"))?
    } else if let Ok(ip) = to.parse() {
        ip
    } else if let Some(pod) = state.pods.get(to) {
        pod.ip
    } else {
        bail!("{to:?} is neither a pod (namespace/name) of lab {name}, a service (svc/namespace/name), nor an IPv4 address")
    };
    let target = std::net::SocketAddrV4::new(ip, port);
    Ok(runtime()?.block_on(sightline_lab::probe::probe(&from_netns, target, protocol, Duration::from_millis(timeout_ms)))?)
}

/// What `apply`, `delete` and restarts could not program yet.
fn print_behind(lab: &str, converged: &cluster::Converged) {
    for node in &converged.behind {
        let _ = say(format_args!(
            "{node}'s collector is not running; it will program this when it is back (`sightline lab restart collector {node} --name {lab}`)\n"
        ));
    }
    for pod in &converged.pending {
        let _ = say(format_args!("pod {pod} is pending: its node's collector is not running\n"));
    }
}

fn print_report(report: &sightline_lab::manifest::ApplyReport) {
    for (verb, items) in [
        ("created", &report.created),
        ("configured", &report.updated),
        ("unchanged", &report.unchanged),
        ("deleted", &report.deleted),
    ] {
        for item in items {
            let _ = say(format_args!("{item} {verb}\n"));
        }
    }
}

/// The channel to the Peer service (`--peer-service`): with TLS to the
/// collectors, checked for `--peer-service-server-name`.
fn peer_service_channel(
    target: &str,
    args: &RelayArgs,
    tls: Option<&std::sync::Arc<sightline_tls::ClientTls>>,
) -> anyhow::Result<tonic::transport::Channel> {
    let address = sightline_relay::discovery::peer_address(target)
        .ok_or_else(|| anyhow!("--peer-service {target:?}: expected HOST:PORT"))?;
    let name = args
        .peer_service_server_name
        .clone()
        .unwrap_or_else(|| sightline_tls::hubble_server_name("peer", &args.cluster_name));
    sightline_relay::server::dial(&address, tls, &name, Duration::from_secs(5))
        .map_err(|e| anyhow!("--peer-service {target:?} (server name {name:?}): {e}"))
}

/// `sightline relay`: serves until SIGTERM or Ctrl-C.
fn run_relay(args: &RelayArgs) -> anyhow::Result<()> {
    let mut peers = Vec::new();
    for p in &args.peers {
        let (name, address) = p
            .split_once('=')
            .filter(|(n, a)| !n.is_empty() && !a.is_empty())
            .ok_or_else(|| anyhow!("--peer {p:?}: expected NAME=HOST:PORT"))?;
        peers.push(sightline_relay::Peer { name: name.to_owned(), address: address.to_owned() });
    }
    let export_ctx = sightline_export::Context::from_env(args.spool_dir.clone());
    // A bad configuration stops the start, with the line and the field.
    let export_config = match &args.export_config {
        Some(path) => Some(sightline_export::config::load(path, &export_ctx).map_err(|e| anyhow!("--export-config {e}"))?),
        None => None,
    };
    let t = &args.tls;
    let server_tls = server_tls(
        "the relay's gRPC API",
        t.tls_relay_server_cert_file.as_ref(),
        t.tls_relay_server_key_file.as_ref(),
        &t.tls_relay_client_ca_files,
        t.disable_server_tls,
        ["--tls-relay-server-cert-file", "--tls-relay-server-key-file", "--disable-server-tls"],
    )?;
    let client_tls = if t.disable_client_tls {
        None
    } else {
        let files = sightline_tls::ClientTlsFiles {
            ca: t.tls_hubble_server_ca_files.clone(),
            cert: t.tls_hubble_client_cert_file.clone(),
            key: t.tls_hubble_client_key_file.clone(),
        };
        let tls = sightline_tls::ClientTls::new("the relay's client TLS (to the collectors)", files)
            .map_err(|e| anyhow!("--tls-hubble-*: {e}"))?;
        Some(std::sync::Arc::new(tls))
    };
    let auth = match &args.auth.auth_issuer {
        Some(issuer) => Some(std::sync::Arc::new(sightline_relay::auth::Authenticator::new(
            &sightline_relay::auth::AuthOptions {
                issuer: issuer.clone(),
                audiences: args.auth.auth_audience.clone(),
                jwks_url: args.auth.auth_jwks_url.clone(),
                ca_file: args.auth.auth_ca_file.clone(),
                namespaces_file: args.auth.auth_namespaces_file.clone(),
            },
        )?)),
        None => None,
    };
    runtime()?.block_on(async {
        if let Some(auth) = &auth {
            // A wrong issuer or URL shows at start; requests fetch again.
            match auth.warm_up().await {
                Ok(n) => log::info!("authentication: bearer tokens of {:?}, {n} signing key(s)", args.auth.auth_issuer),
                Err(e) => log::warn!("authentication: {e}; tokens are refused until the keys can be fetched"),
            }
        }
        let mut config = sightline_relay::Config::new("relay", peers);
        config.tls = client_tls.clone();
        config.cluster = args.cluster_name.clone();
        // Inside the runtime: the peers' channels start their workers on it.
        let relay = sightline_relay::Relay::with_auth(config, auth)?;
        let discovery = sightline_relay::discovery::DiscoveryStatus::default();
        let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        let mut registry = prometheus_client::registry::Registry::default();
        let export_metrics = sightline_export::ExportMetrics::register(&mut registry);
        let exporters = std::sync::Arc::new(sightline_export::Exporters::new(
            sightline_export::Identity { service: "sightline-relay".to_owned(), cluster: args.cluster_name.clone() },
            export_metrics.clone(),
        ));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let feed_status = sightline_relay::feed::FeedStatus::default();
        let mut background = tokio::task::JoinSet::new();
        if let Some(target) = &args.peer_service {
            let channel = peer_service_channel(target, args, client_tls.as_ref())?;
            log::info!("discovery: collectors from the Peer service at {target}");
            background.spawn(sightline_relay::discovery::run(
                relay.clone(),
                channel,
                args.retry_timeout,
                discovery.clone(),
                stop_rx.clone(),
            ));
        }
        if let (Some(path), Some(config)) = (&args.export_config, &export_config) {
            let report = exporters.apply(config).await.map_err(|e| anyhow!("--export-config {}: {e}", path.display()))?;
            export_metrics.reload(true);
            log::info!("export: {} exporter(s) started from {}", report.started.len(), path.display());
            let resume = sightline_export::Exporters::resume_points(config);
            background.spawn(sightline_relay::feed::run(
                relay.watch_peers(),
                std::sync::Arc::clone(&exporters),
                resume,
                feed_status.clone(),
                stop_rx.clone(),
            ));
            background.spawn(sightline_export::manager::watch_config(
                std::sync::Arc::clone(&exporters),
                path.clone(),
                export_ctx.clone(),
                Duration::from_secs(1),
                stop_rx.clone(),
            ));
        }
        if let Some(addr) = args.metrics_address {
            let http = sightline_relay::http::bind(addr).await.with_context(|| format!("binding the metrics address {addr}"))?;
            let exporting = args.export_config.is_some();
            let status = feed_status.clone();
            let ready: sightline_relay::http::Ready = std::sync::Arc::new(move || !exporting || status.connected() > 0);
            let mut stop = stop_rx.clone();
            let registry = std::sync::Arc::new(registry);
            background.spawn(async move {
                let shutdown = async move {
                    let _ = stop.changed().await;
                };
                if let Err(e) = sightline_relay::http::serve(http, registry, ready, shutdown).await {
                    log::error!("metrics endpoint: {e}");
                }
            });
        }
        if args.notify_ready {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "ready");
            let _ = out.flush();
        }
        let stop = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending::<()>().await,
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let served = sightline_relay::serve(relay, listener, server_tls, stop).await;
        // Stop the feed first, then let the exporters spool what they hold.
        let _ = stop_tx.send(true);
        while background.join_next().await.is_some() {}
        exporters.shutdown().await;
        served?;
        anyhow::Ok(())
    })
}
