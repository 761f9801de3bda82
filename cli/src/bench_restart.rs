//! `sightline bench restart`: what a collector restart costs in a one-node
//! lab, now that the datapath outlives the collector.
//!
//! * Restart time, from starting the process to the lab's desired state in
//!   force on it: adopting the pinned datapath (the normal case), replacing
//!   its programs in place (`--reload programs`, an upgrade), and a cold
//!   start (pins removed first: what every restart cost before, with the
//!   pods unprotected meanwhile).
//! * Events across a restart: a UDP sender in a pod at a fixed rate, the
//!   lab at aggregation `none` (every packet is events), a GetFlows
//!   follower that resumes `since` its last flow when the collector comes
//!   back, and the collector killed with SIGKILL and restarted mid-stream.
//!   Written by the probes (pinned counter), received by the follower,
//!   counted lost by the probes (ring buffer full), and the rest.
//!
//! With `--write`, the figures replace a marked section of
//! docs/PERFORMANCE.md.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use sightline_collector::control;
use sightline_collector::pins::Reload;

use crate::bench::{median, write_section};
use sightline_lab::cluster::{self, LabState};

const LAB: &str = "slrestart";
const UDP_PORT: u16 = 9000;

const MANIFEST: &str = r"apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {role: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench, labels: {role: server}}
spec: {containers: [{name: s}]}
";

#[derive(Args)]
pub struct RestartArgs {
    /// Restarts of each kind, and runs of the events measurement (medians).
    #[arg(long, default_value_t = 5)]
    repeat: u32,
    /// Datapath events per second during the events measurement.
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    /// Seconds of traffic per events run (the restart happens after a third).
    #[arg(long, default_value_t = 9)]
    seconds: u32,
    /// Record the figures in this Markdown file (between bench markers).
    #[arg(long)]
    write: Option<PathBuf>,
}

#[derive(Args)]
pub struct UdpArgs {
    /// Receive and discard datagrams on this port.
    #[arg(long, conflicts_with = "connect")]
    listen: Option<u16>,
    /// Send 64-byte datagrams to ADDR:PORT.
    #[arg(long)]
    connect: Option<String>,
    /// Datagrams per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    #[arg(long, default_value_t = 5)]
    seconds: u32,
}

/// The UDP helper (runs inside a pod): a sink, or a paced sender.
pub fn udp(args: &UdpArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    if let Some(port) = args.listen {
        let sock = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("binding UDP port {port}"))?;
        println!("ready");
        std::io::stdout().flush()?;
        let mut buf = [0u8; 2048];
        loop {
            sock.recv_from(&mut buf).context("receiving")?;
        }
    }
    let addr = args.connect.as_deref().ok_or_else(|| anyhow!("give --listen PORT or --connect ADDR:PORT"))?;
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    sock.connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let payload = [0x5au8; 64];
    let start = Instant::now();
    let end = start + Duration::from_secs(u64::from(args.seconds));
    let mut sent = 0u64;
    while Instant::now() < end {
        // As many as are due by now, then a millisecond's rest.
        let due = (start.elapsed().as_secs_f64() * f64::from(args.rate)) as u64;
        while sent < due {
            // A full socket buffer is the kernel's to count, not ours.
            let _ = sock.send(&payload);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("{sent}");
    Ok(())
}

/// One restart's timings.
#[derive(Clone, Copy)]
struct Timing {
    /// Process start → `ready` (datapath in force, control socket open).
    ready_ms: f64,
    /// Of which: installing, adopting or replacing the datapath (the
    /// collector's own measure, from its log).
    datapath_ms: f64,
    /// `ready` → the lab's desired state applied.
    programmed_ms: f64,
}

impl Timing {
    fn total(&self) -> f64 {
        self.ready_ms + self.programmed_ms
    }
}

fn log_path() -> PathBuf {
    cluster::lab_dir(LAB).join("collector-node-1.log")
}

/// The collector's last "datapath … in N ms" line: N.
fn last_datapath_ms() -> f64 {
    let log = std::fs::read_to_string(log_path()).unwrap_or_default();
    log.lines()
        .rev()
        .find(|l| l.contains("sightline_collector::agent: datapath ") && l.contains(" ms: "))
        .and_then(|l| l.split(" in ").last())
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn node(state: &LabState) -> anyhow::Result<&cluster::Node> {
    state.nodes.first().ok_or_else(|| anyhow!("the bench lab has no node"))
}

fn kill9(pid: u32) {
    if pid == 0 {
        return;
    }
    // SAFETY: plain kill(2) of the bench lab's collector.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && std::path::Path::new(&format!("/proc/{pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One restart of the kind `reload`; `cold` removes the pins first.
fn restart_once(reload: Reload, cold: bool) -> anyhow::Result<Timing> {
    if cold {
        let state = LabState::load(LAB)?;
        kill9(node(&state)?.collector_pid);
        let pins = std::path::Path::new(cluster::PIN_ROOT).join(LAB).join("node-1");
        sightline_collector::loader::uninstall(&pins).context("removing the pins")?;
    }
    let r = cluster::restart_collector(LAB, "node-1", reload)?;
    if !r.converged.behind.is_empty() {
        bail!("the restarted collector did not take the desired state");
    }
    Ok(Timing {
        ready_ms: r.ready_after.as_secs_f64() * 1e3,
        datapath_ms: last_datapath_ms(),
        programmed_ms: r.programmed_after.as_secs_f64() * 1e3,
    })
}

fn median_timing(runs: &[Timing]) -> Timing {
    Timing {
        ready_ms: median(runs.iter().map(|t| t.ready_ms).collect()),
        datapath_ms: median(runs.iter().map(|t| t.datapath_ms).collect()),
        programmed_ms: median(runs.iter().map(|t| t.programmed_ms).collect()),
    }
}

/// What one events run saw.
#[derive(Clone, Copy, Default)]
struct EventsRun {
    seconds: f64,
    written: u64,
    received: u64,
    lost: u64,
    lost_reported: u64,
    /// Stop (or SIGKILL) → the new collector ready.
    down_ms: f64,
}

impl EventsRun {
    fn rate(&self) -> f64 {
        self.written as f64 / self.seconds
    }
    fn unaccounted(&self) -> i64 {
        self.written as i64 - self.received as i64 - self.lost as i64
    }
}

fn counters(state: &LabState) -> anyhow::Result<(u64, u64)> {
    let s = control::status(&node(state)?.control_socket).context("the collector's status")?;
    Ok((s.events_written, s.events_lost_per_cpu.iter().sum()))
}

/// Follows node-1's flows from `since_ns`, resuming (`since` again, flows
/// already counted skipped by UUID) whenever the stream breaks (the
/// collector restarting), until `stop`.
async fn follow(grpc: String, since_ns: i64, received: Arc<AtomicU64>, lost: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    use sightline_proto::flow::LostEventSource;
    use sightline_proto::observer::observer_client::ObserverClient;
    use sightline_proto::observer::{GetFlowsRequest, get_flows_response::ResponseTypes};
    use tokio_stream::StreamExt as _;

    let mut seen = std::collections::HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut client) = ObserverClient::connect(format!("http://{grpc}")).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let since = prost_types::Timestamp { seconds: since_ns / 1_000_000_000, nanos: (since_ns % 1_000_000_000) as i32 };
        let req = GetFlowsRequest { follow: true, since: Some(since), ..GetFlowsRequest::default() };
        let Ok(stream) = client.get_flows(req).await else { continue };
        let mut stream = stream.into_inner();
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
                Ok(Some(Ok(resp))) => match resp.response_types {
                    // A stream resumed on the same process would send flows
                    // again; a restarted collector has only new ones.
                    Some(ResponseTypes::Flow(f)) if seen.insert(f.uuid.clone()) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(ResponseTypes::LostEvents(l)) if l.source == LostEventSource::PerfEventRingBuffer as i32 => {
                        lost.fetch_add(l.num_events_lost, Ordering::Relaxed);
                    }
                    _ => {}
                },
                Ok(Some(Err(_)) | None) => break,
                Err(_) => {}
            }
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn pod_command(state: &LabState, pod: &str) -> anyhow::Result<std::process::Command> {
    let ns = state.pod_netns(pod)?;
    let name = ns.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("bad netns path"))?.to_owned();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &name]);
    Ok(cmd)
}

/// Events per datagram at aggregation none, measured.
fn events_per_datagram(state: &LabState, server: &str) -> anyhow::Result<f64> {
    let (before, _) = counters(state)?;
    let out = pod_command(state, "bench/client")?
        .arg(std::env::current_exe()?)
        .args(["bench", "udp", "--connect", server, "--rate", "1000", "--seconds", "1"])
        .output()
        .context("running the UDP sender")?;
    let sent: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("the UDP sender's count")?;
    let (after, _) = counters(state)?;
    if sent == 0 || after <= before {
        bail!("the calibration sent {sent} datagrams and saw {} events", after.saturating_sub(before));
    }
    Ok((after - before) as f64 / sent as f64)
}

/// One run: traffic for `seconds`, the collector restarted after a third
/// of them — stopped with SIGTERM by `lab restart collector`, or first
/// killed with SIGKILL (`crash`).
fn events_run(state: &LabState, server: &str, pps: u32, seconds: u32, crash: bool) -> anyhow::Result<EventsRun> {
    let grpc = node(state)?.grpc.clone().ok_or_else(|| anyhow!("the collector serves no gRPC"))?;
    let (written0, lost0) = counters(state)?;
    let since = now_ns();
    let (received, lost_reported, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let follower = {
        let (received, lost_reported, stop) = (Arc::clone(&received), Arc::clone(&lost_reported), Arc::clone(&stop));
        std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(follow(grpc, since, received, lost_reported, stop));
            Ok(())
        })
    };
    let started = Instant::now();
    let sender = pod_command(state, "bench/client")?
        .arg(std::env::current_exe()?)
        .args(["bench", "udp", "--connect", server, "--rate", &pps.to_string(), "--seconds", &seconds.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the UDP sender")?;
    std::thread::sleep(Duration::from_secs(u64::from(seconds) / 3));
    let killed = Instant::now();
    if crash {
        kill9(node(&LabState::load(LAB)?)?.collector_pid);
    }
    let r = cluster::restart_collector(LAB, "node-1", Reload::None)?;
    let down_ms = killed.elapsed().as_secs_f64() * 1e3 - r.programmed_after.as_secs_f64() * 1e3;
    let out = sender.wait_with_output().context("the UDP sender")?;
    let elapsed = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("the UDP sender failed");
    }
    let state = LabState::load(LAB)?;
    // Wait for the follower to catch up with what was written.
    let (written1, lost1) = counters(&state)?;
    let target = written1 - written0 - (lost1 - lost0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = (0, Instant::now());
    while Instant::now() < deadline {
        let n = received.load(Ordering::Relaxed);
        if n >= target {
            break;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    follower.join().map_err(|_| anyhow!("the follower panicked"))??;
    Ok(EventsRun {
        seconds: elapsed,
        written: written1 - written0,
        received: received.load(Ordering::Relaxed),
        lost: lost1 - lost0,
        lost_reported: lost_reported.load(Ordering::Relaxed),
        down_ms,
    })
}

/// `bench restart`.
pub fn restart(args: &RestartArgs) -> anyhow::Result<()> {
    crate::check_root()?;
    if args.repeat == 0 || args.rate == 0 || args.seconds < 3 {
        bail!("--repeat and --rate must be at least 1, --seconds at least 3");
    }
    crate::interrupt::on_interrupt(|| {
        if LabState::load(LAB).is_ok()
            && let Err(e) = cluster::down(LAB)
        {
            eprintln!("bench: removing lab {LAB}: {e:#}");
        }
    })
    .context("installing the SIGINT/SIGTERM handler")?;
    if LabState::load(LAB).is_ok() {
        cluster::down(LAB)?;
    }
    let file = std::env::temp_dir().join(format!("sightline-bench-restart-{}.yaml", std::process::id()));
    std::fs::write(&file, MANIFEST)?;
    let up = cluster::up(&cluster::UpOptions {
        name: LAB.into(),
        nodes: 1,
        files: vec![file.clone()],
        aggregation: "none".into(),
        debug_events: false,
        datapath: true,
        ct_timeouts: String::new(),
        ct_gc_interval: "5s".into(),
        policy_audit: false,
        // Room for the backlog a resuming follower asks for.
        flow_capacity: 65_535,
        metrics: Vec::new(),
        prometheus: false,
        export_config: None,
        node_export_config: None,
        tls: true,
        supervise: false,
        network: Default::default(),
        kvstore: false,
        endpoint_propagation: cluster::Propagation::Both,
    });
    let _ = std::fs::remove_file(&file);
    let state = up?;
    let result = measure(args, &state);
    let down = cluster::down(LAB);
    let report = result?;
    down?;
    print!("{report}");
    if let Some(path) = &args.write {
        let section = format!(
            "<!-- bench:restart:start -->\nMeasured by `sightline bench restart --repeat {} --rate {} --seconds {}` (medians of {} runs each, same machine, same run), one node, two pods.\n\n{report}<!-- bench:restart:end -->",
            args.repeat, args.rate, args.seconds, args.repeat
        );
        write_section(path, "restart", &section)?;
    }
    Ok(())
}

fn measure(args: &RestartArgs, state: &LabState) -> anyhow::Result<String> {
    let mut kinds = Vec::new();
    for (label, reload, cold) in [
        ("adopt (the pinned datapath of this build)", Reload::None, false),
        ("replace the programs in place (`--reload programs`)", Reload::Programs, false),
        ("cold start (pins removed first: the old behaviour)", Reload::None, true),
    ] {
        eprintln!("bench: {} restarts: {label} …", args.repeat);
        let runs = (0..args.repeat).map(|_| restart_once(reload, cold)).collect::<anyhow::Result<Vec<_>>>()?;
        kinds.push((label, median_timing(&runs)));
    }

    let state = LabState::load(LAB).unwrap_or_else(|_| state.clone());
    let server_ip = state.pods.get("bench/server").ok_or_else(|| anyhow!("bench/server missing"))?.ip;
    let server = format!("{server_ip}:{UDP_PORT}");
    let mut sink = pod_command(&state, "bench/server")?
        .arg(std::env::current_exe()?)
        .args(["bench", "udp", "--listen", &UDP_PORT.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the UDP sink")?;
    let events = (|| -> anyhow::Result<Vec<(&str, Vec<EventsRun>)>> {
        let per = events_per_datagram(&state, &server)?;
        let pps = ((f64::from(args.rate) / per).round() as u32).max(1);
        eprintln!("bench: {per:.2} events per datagram: {pps} datagrams/s for {} events/s", args.rate);
        let mut out = Vec::new();
        for (label, crash) in [("`lab restart collector` (SIGTERM, start, apply)", false), ("SIGKILL, then `lab restart collector`", true)] {
            let runs = (0..args.repeat)
                .map(|i| {
                    eprintln!("bench: events across a restart: {label}, run {} of {} …", i + 1, args.repeat);
                    events_run(&state, &server, pps, args.seconds, crash)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            out.push((label, runs));
        }
        Ok(out)
    })();
    let _ = sink.kill();
    let _ = sink.wait();
    let events = events?;

    let adopt = kinds[0].1.total();
    let mut report = String::from(
        "| restart | start → ready (ms) | of which the datapath (ms) | → desired state in force (ms) | total (ms) | vs adopt |\n|---|---|---|---|---|---|\n",
    );
    for (label, t) in &kinds {
        report.push_str(&format!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}× |\n",
            t.ready_ms,
            t.datapath_ms,
            t.programmed_ms,
            t.total(),
            t.total() / adopt
        ));
    }
    report.push_str(
        "\nEvents across a restart, traffic at a steady rate (per run: the run with the median number of events not received):\n\n\
         | restart | collector down (ms) | events/s written | written | received by a resuming GetFlows follower | lost: ring buffer full (reported as lost) | not received, not counted lost | worst run: not received, not lost |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (label, runs) in &events {
        let mut runs = runs.clone();
        runs.sort_by_key(EventsRun::unaccounted);
        let e = runs[runs.len() / 2];
        let worst = runs[runs.len() - 1];
        report.push_str(&format!(
            "| {label} | {:.0} | {:.0} | {} | {} ({:.3} %) | {} ({}) | {} ({:.3} %) | {} of {} |\n",
            e.down_ms,
            e.rate(),
            e.written,
            e.received,
            e.received as f64 / e.written.max(1) as f64 * 100.0,
            e.lost,
            e.lost_reported,
            e.unaccounted(),
            e.unaccounted() as f64 / e.written.max(1) as f64 * 100.0,
            worst.unaccounted(),
            worst.written,
        ));
    }
    Ok(report)
}
