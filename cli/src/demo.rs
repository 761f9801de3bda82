//! `sightline demo`: a lab with a small application, continuous traffic, and
//! the datapath's decoded events printed live. It always cleans up after
//! itself, on Ctrl-C, SIGTERM, --duration, or error.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use sightline_lab::cluster::{self, LabState};
use sightline_lab::types::Protocol;
use crate::observe::{PrintOptions, Printer};


/// The demo's traffic: (from, to, port, protocol); `svc/…` goes through a
/// service, load-balanced by the datapath. The cart going straight to the
/// database is denied by `payments/db-only-from-api` (a `POLICY_DENIED`
/// drop naming it). The last one has no listener: the kernel drops it, and
/// the datapath reports why.
const TRAFFIC: &[(&str, &str, u16, Protocol)] = &[
    ("shop/frontend", "shop/cart", 8080, Protocol::Tcp),
    ("shop/cart", "payments/api", 8443, Protocol::Tcp),
    ("payments/api", "payments/db", 5432, Protocol::Tcp),
    ("shop/cart", "payments/db", 5432, Protocol::Tcp),
    ("shop/frontend", "infra/dns", 53, Protocol::Udp),
    ("shop/cart", "svc/infra/dns", 53, Protocol::Udp),
    ("shop/frontend", "shop/cart", 9999, Protocol::Tcp),
];

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Never panic here (stderr may be a closed pipe): cleaning up is
        // what matters.
        let mut err = std::io::stderr();
        let _ = writeln!(err, "demo: removing lab {} …", self.0);
        match cluster::down(&self.0) {
            Ok(()) => {
                let _ = writeln!(err, "demo: lab {} removed", self.0);
            }
            Err(e) => {
                let _ = writeln!(err, "demo: cleaning up lab {} failed: {e:#}", self.0);
            }
        }
    }
}

/// Where the demo's flow log goes unless `--flow-log` or `--export-config`
/// says otherwise: outside the lab, so that it outlives it.
pub const DEFAULT_FLOW_LOG: &str = "/var/log/sightline/demo-flows.log";

/// How the demo exports flows.
#[derive(Clone, Debug)]
pub enum Export {
    /// A file exporter writing Hubble's JSON lines here.
    FlowLog(PathBuf),
    /// The user's export configuration.
    Config(PathBuf),
}

/// The export configuration of the demo's flow log.
fn flow_log_config(path: &std::path::Path) -> String {
    format!(
        "# Written by `sightline demo`: every flow, as Hubble's exporter writes them.\nexporters:\n  - name: flow-log\n    sink:\n      file:\n        path: {}\n        maxSizeMB: 10\n        maxBackups: 3\n",
        serde_json::to_string(&path.display().to_string()).unwrap_or_default()
    )
}

/// Runs the demo.
pub fn run(name: &str, aggregation: &str, duration: Option<Duration>, export: Export) -> anyhow::Result<()> {
    crate::check_root()?;
    cluster::validate_name(name)?;
    let stop = Arc::new(AtomicBool::new(false));
    // SIGINT/SIGTERM set the flag instead of killing the process, so the
    // demo can clean up.
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing the SIGINT/SIGTERM handler")?;
    }
    if LabState::load(name).is_ok() {
        eprintln!("demo: a lab named {name} is left over from an earlier run; removing it first");
        cluster::down(name)?;
    }
    let dir = tempdir()?;
    let _remove_dir = RemoveDir(dir.clone());
    let manifest = dir.join("sample-app.yaml");
    std::fs::write(&manifest, sightline_lab::sample::DEMO_APP).with_context(|| format!("writing {}", manifest.display()))?;
    let (export_config, flow_log) = match &export {
        Export::Config(path) => (path.clone(), None),
        Export::FlowLog(log) => {
            let config = dir.join("export.yaml");
            std::fs::write(&config, flow_log_config(log)).with_context(|| format!("writing {}", config.display()))?;
            (config, Some(log.clone()))
        }
    };
    eprintln!("demo: starting lab {name} (aggregation {aggregation}) with the sample application …");
    let _cleanup = Cleanup(name.to_owned());
    let state = cluster::up(&cluster::UpOptions {
        name: name.to_owned(),
        nodes: 1,
        files: vec![manifest],
        aggregation: aggregation.to_owned(),
        debug_events: false,
        datapath: true,
        ct_timeouts: String::new(),
        ct_gc_interval: "5s".into(),
        policy_audit: false,
        flow_capacity: 4095,
        metrics: Vec::new(),
        // Where Debian's Prometheus is installed, the demo shows its metrics too.
        prometheus: std::path::Path::new(cluster::PROMETHEUS_BIN).exists(),
        export_config: Some(export_config.clone()),
        node_export_config: None,
        tls: true,
        supervise: true,
        network: Default::default(),
        kvstore: false,
        endpoint_propagation: cluster::Propagation::Both,
    })?;
    for p in state.pods.values() {
        eprintln!("demo:   pod {}/{} at {} (identity {})", p.namespace, p.name, p.ip, p.identity);
    }
    let node = &state.nodes[0];
    eprintln!(
        "demo: flows: `sightline observe --lab {name} -f` (the relay, gRPC {}; the collector of {}: {}); metrics: http://{}/metrics",
        state.relay.as_ref().map_or("?", |r| r.grpc.as_str()),
        node.name,
        node.grpc.as_deref().unwrap_or("?"),
        node.metrics.as_deref().unwrap_or("?")
    );
    match &flow_log {
        Some(log) => eprintln!(
            "demo: flow log: {} (Hubble's JSON lines, one flow per line; `tail -f` it, or `--export-config FILE` for Azure Monitor or OTLP)",
            log.display()
        ),
        None => eprintln!("demo: exporting flows as {} says", export_config.display()),
    }
    if let Some(r) = state.relay.as_ref().and_then(|r| r.metrics.as_ref()) {
        eprintln!("demo: relay and export metrics: http://{r}/metrics");
    }
    if let Some(p) = &state.prometheus {
        eprintln!(
            "demo: Prometheus: http://{}/graph (try `rate(hubble_flows_processed_total[1m])`); Grafana dashboards to import: dashboards/*.json",
            p.address
        );
    }
    eprintln!(
        "demo: traffic: {}; events follow (Ctrl-C to stop{})",
        TRAFFIC.iter().map(|(f, t, p, pr)| format!("{f}→{t}:{p}/{pr}")).collect::<Vec<_>>().join(", "),
        duration.map(|d| format!(", or after {}s", d.as_secs())).unwrap_or_default()
    );

    let traffic = {
        let stop = Arc::clone(&stop);
        let state = state.clone();
        std::thread::spawn(move || generate_traffic(&state, &stop))
    };
    let result = print_events(&state, &stop, duration);
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    result
}

/// Prints flows until stopped, as `sightline observe --follow` would: the
/// demo is a client of the lab's Hubble-compatible gRPC API (its relay). A closed
/// stdout (e.g. `| head`) ends the demo normally, so that it still cleans up.
fn print_events(state: &LabState, stop: &AtomicBool, duration: Option<Duration>) -> anyhow::Result<()> {
    use sightline_proto::observer::GetFlowsRequest;
    use sightline_proto::observer::observer_client::ObserverClient;
    use tokio_stream::StreamExt as _;

    let grpc = match &state.relay {
        Some(r) => r.grpc.clone(),
        None => state.nodes[0].grpc.clone().context("the lab's collector serves no gRPC address")?,
    };
    eprintln!("demo: flows from {grpc} (the same as `sightline observe --lab {} --follow`):", state.name);
    let rt = crate::runtime()?;
    rt.block_on(async {
        let channel = crate::observe::lab_channel(state, &grpc).await.context("connecting to the flow API")?;
        let mut client = ObserverClient::new(channel);
        let mut stream = client
            .get_flows(GetFlowsRequest { follow: true, ..GetFlowsRequest::default() })
            .await
            .context("GetFlows")?
            .into_inner();
        let opts = PrintOptions { color: std::io::stdout().is_terminal(), policy_names: true, ..PrintOptions::default() };
        let mut printer = Printer::new(opts, std::io::stdout(), std::io::stderr());
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) && duration.is_none_or(|d| start.elapsed() < d) {
            match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
                Ok(Some(Ok(resp))) => {
                    if printer.write(&resp).is_err() {
                        break;
                    }
                }
                Ok(Some(Err(status))) => anyhow::bail!("the flow stream failed: {}", status.message()),
                Ok(None) => break,
                Err(_) => {}
            }
        }
        let _ = printer.finish();
        Ok(())
    })
}

fn generate_traffic(state: &LabState, stop: &AtomicBool) {
    let Ok(rt) = crate::runtime() else { return };
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (from, to, port, proto) = TRAFFIC[i % TRAFFIC.len()];
        i += 1;
        let dst = match to.strip_prefix("svc/") {
            Some(service) => state.service_ips.get(service).copied(),
            None => state.pods.get(to).map(|p| p.ip),
        };
        if let (Ok(netns), Some(dst)) = (state.pod_netns(from), dst) {
            let target = std::net::SocketAddrV4::new(dst, port);
            let _ = rt.block_on(sightline_lab::probe::probe(&netns, target, proto, Duration::from_millis(500)));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Removes the demo's scratch folder when the demo ends.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sightline-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

