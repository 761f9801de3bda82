//! `sightline bench datapath`: pod→pod TCP throughput (iperf3) and TCP
//! request/response rate, through the Sightline datapath and through the
//! same topology with no programs attached, measured in the same run.
//!
//! Figures are printed and, with `--write`, recorded in a marked section of
//! docs/PERFORMANCE.md. Absolute numbers depend on the machine; the ratio
//! between the two runs is what to read.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;

use sightline_lab::cluster::{self, LabState};

pub mod export;

#[derive(Args)]
pub struct DatapathArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Record the figures in this Markdown file (between bench markers).
    #[arg(long)]
    write: Option<PathBuf>,
}

#[derive(Args)]
pub struct RrArgs {
    /// Serve request/response on this port (1 byte in, 1 byte out).
    #[arg(long, conflicts_with = "connect")]
    listen: Option<u16>,
    /// Connect to ADDR:PORT and run transactions.
    #[arg(long)]
    connect: Option<String>,
    /// A new connection per transaction (connect, 1 byte each way, close).
    #[arg(long)]
    crr: bool,
    #[arg(long, default_value_t = 5)]
    seconds: u32,
}

#[derive(Args)]
pub struct ObserveArgs {
    /// Flows in the store and streamed per run (at most 65535).
    #[arg(long, default_value_t = 65_535)]
    flows: usize,
    #[arg(long, default_value_t = 5)]
    repeat: u32,
    /// Record the figures in this Markdown file (between bench markers).
    #[arg(long)]
    write: Option<PathBuf>,
}

/// `bench observe`: GetFlows streaming rate to one client over loopback,
/// in plaintext, over TLS and over mutual TLS (certificates of a throw-away
/// CA made as the lab makes its own), the transports taking turns.
pub fn observe(args: &ObserveArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use sightline_collector::bench::Transport;

    // Other work on the machine shows in the figures: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned());
    let dir = std::env::temp_dir().join(format!("sightline-bench-tls-{}", std::process::id()));
    let pki = sightline_lab::pki::create("bench", &dir, &["node-1".to_owned()]).context("making the benchmark's certificates")?;
    let transports = (|| -> anyhow::Result<Vec<Transport>> {
        let (cert, key) = pki.collectors.get("node-1").cloned().context("the node's certificate")?;
        let name = sightline_lab::pki::collector_server_name("node-1");
        let server = |client_ca: Vec<PathBuf>| {
            sightline_tls::ServerTls::new("bench server", sightline_tls::ServerTlsFiles { cert: cert.clone(), key: key.clone(), client_ca })
                .map(Arc::new)
        };
        let client = |own: bool| {
            let files = sightline_tls::ClientTlsFiles {
                ca: vec![pki.ca.clone()],
                cert: own.then(|| pki.client_cert.clone()),
                key: own.then(|| pki.client_key.clone()),
            };
            sightline_tls::ClientTls::new("bench client", files).map(Arc::new)
        };
        Ok(vec![
            Transport { name: "plaintext".into(), server: None, client: None },
            Transport { name: "TLS".into(), server: Some(server(Vec::new())?), client: Some((client(false)?, name.clone())) },
            Transport {
                name: "mutual TLS".into(),
                server: Some(server(vec![pki.ca.clone()])?),
                client: Some((client(true)?, name.clone())),
            },
        ])
    })();
    let figures = transports.and_then(|t| {
        let rt = crate::runtime()?;
        Ok(rt.block_on(sightline_collector::bench::stream_rate(args.flows, args.repeat, &t))?)
    });
    let _ = std::fs::remove_dir_all(&dir);
    let figures = figures?;
    let plain = figures.first().context("no figures")?;
    let mut report = format!(
        "| what | per second | vs raw copy |\n|---|---|---|\n\
         | raw 112-byte event records copied (no processing) | {:.0} | 1× |\n\
         | GetFlows, full flows, one client over loopback | {:.0} | {:.4}× |\n\
         | GetFlows with `hubble observe`'s field mask | {:.0} | {:.4}× |\n",
        plain.raw_copy_per_sec,
        plain.full_per_sec,
        plain.full_per_sec / plain.raw_copy_per_sec,
        plain.masked_per_sec,
        plain.masked_per_sec / plain.raw_copy_per_sec,
    );
    report.push_str(
        "\nThe same streams in plaintext, over TLS 1.3 (server certificate checked) and over mutual TLS (client certificate too), ECDSA P-256 keys, ring:\n\n\
         | transport | full flows per second | vs plaintext | with the field mask | vs plaintext |\n|---|---|---|---|---|\n",
    );
    for f in &figures {
        report.push_str(&format!(
            "| {} | {:.0} | {:.3}× | {:.0} | {:.3}× |\n",
            f.transport,
            f.full_per_sec,
            f.full_per_sec / plain.full_per_sec,
            f.masked_per_sec,
            f.masked_per_sec / plain.masked_per_sec
        ));
    }
    print!("{report}");
    if let Some(path) = &args.write {
        let section = format!(
            "<!-- bench:observe:start -->\nMeasured by `sightline bench observe --flows {} --repeat {}` (medians, same run; the client and the server share the machine's 2 cores; load average {load} when it started).\n\n{report}<!-- bench:observe:end -->",
            plain.flows, args.repeat
        );
        write_section(path, "observe", &section)?;
    }
    Ok(())
}

#[derive(Args)]
pub struct PolicyArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Policy sizes to measure (extra rules on the server, each a distinct
    /// /32 and port).
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000")]
    entries: Vec<usize>,
    /// `BPF_PROG_TEST_RUN` runs per packet kind and policy size (one packet
    /// per run, the ring buffer drained after each).
    #[arg(long, default_value_t = 200_000)]
    packet_runs: u64,
    /// Distinct sources per packet kind (each its own pod, address and
    /// port; denied ones each their own identity), at most 2047.
    #[arg(long, default_value_t = 2000)]
    keys: usize,
    /// Only the per-packet cost (no lab, no iperf3, no iptables); writes
    /// only the `policy-packet` section.
    #[arg(long)]
    packets_only: bool,
    /// Record the figures in this Markdown file (between bench markers).
    #[arg(long)]
    write: Option<PathBuf>,
}

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

const RR_PORT: u16 = 5301;
const LAB: &str = "slbench";

/// The request/response helper (runs inside a pod).
pub fn rr(args: &RrArgs) -> anyhow::Result<()> {
    if let Some(port) = args.listen {
        let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding port {port}"))?;
        println!("ready");
        std::io::stdout().flush()?;
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let mut b = [0u8; 1];
                while conn.read_exact(&mut b).is_ok() {
                    if conn.write_all(&b).is_err() {
                        break;
                    }
                }
            });
        }
        return Ok(());
    }
    let addr = args.connect.as_deref().ok_or_else(|| anyhow!("give --listen PORT or --connect ADDR:PORT"))?;
    if args.crr {
        let deadline = Instant::now() + Duration::from_secs(u64::from(args.seconds));
        let start = Instant::now();
        let mut n = 0u64;
        let mut b = [1u8; 1];
        while Instant::now() < deadline {
            let mut conn = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
            conn.set_nodelay(true)?;
            conn.write_all(&b)?;
            conn.read_exact(&mut b)?;
            abortive_close(&conn);
            n += 1;
        }
        println!("{:.0}", n as f64 / start.elapsed().as_secs_f64());
        return Ok(());
    }
    let mut conn = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    conn.set_nodelay(true)?;
    let deadline = Instant::now() + Duration::from_secs(u64::from(args.seconds));
    let start = Instant::now();
    let mut n = 0u64;
    let mut b = [1u8; 1];
    while Instant::now() < deadline {
        for _ in 0..100 {
            conn.write_all(&b)?;
            conn.read_exact(&mut b)?;
        }
        n += 100;
    }
    println!("{:.0}", n as f64 / start.elapsed().as_secs_f64());
    Ok(())
}

/// Closes with RST instead of FIN (SO_LINGER 0), so that a connection-rate
/// run does not exhaust ephemeral ports in TIME_WAIT.
fn abortive_close(conn: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on an open socket with a correctly sized value.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn netns_exec(state: &LabState, pod: &str) -> anyhow::Result<Command> {
    let ns = state.pod_netns(pod)?;
    let name = ns.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("bad netns"))?.to_owned();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &name]);
    Ok(cmd)
}

struct Figures {
    gbps: f64,
    rr: f64,
    crr: f64,
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(state: &LabState, seconds: u32, repeat: u32) -> anyhow::Result<Figures> {
    let server_ip = state.pods.get("bench/server").ok_or_else(|| anyhow!("bench/server missing"))?.ip;
    let exe = std::env::current_exe()?;
    let mut iperf = netns_exec(state, "bench/server")?
        .args(["iperf3", "-s", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting iperf3 (install it with scripts/setup.sh)")?;
    let mut rr_server = netns_exec(state, "bench/server")?
        .arg(&exe)
        .args(["bench", "rr", "--listen", &RR_PORT.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the request/response server")?;
    std::thread::sleep(Duration::from_millis(500));
    let result = (|| -> anyhow::Result<Figures> {
        let mut gbps = Vec::new();
        let mut rr = Vec::new();
        let mut crr = Vec::new();
        for _ in 0..repeat {
            let out = netns_exec(state, "bench/client")?
                .args(["iperf3", "-c", &server_ip.to_string(), "-p", "5201", "-J", "-t", &seconds.to_string()])
                .output()
                .context("running iperf3")?;
            if !out.status.success() {
                bail!("iperf3 failed: {}", String::from_utf8_lossy(&out.stdout).lines().rev().take(5).collect::<Vec<_>>().join(" "));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 output")?;
            let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().ok_or_else(|| anyhow!("iperf3 gave no throughput"))?;
            gbps.push(bps / 1e9);
            for (crr_mode, into) in [(false, &mut rr), (true, &mut crr)] {
                let mut cmd = netns_exec(state, "bench/client")?;
                cmd.arg(&exe).args(["bench", "rr", "--connect", &format!("{server_ip}:{RR_PORT}"), "--seconds", &seconds.to_string()]);
                if crr_mode {
                    cmd.arg("--crr");
                }
                let out = cmd.output().context("running the request/response client")?;
                if !out.status.success() {
                    bail!("request/response client failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                into.push(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().context("request/response output")?);
            }
        }
        Ok(Figures { gbps: median(gbps), rr: median(rr), crr: median(crr) })
    })();
    let _ = iperf.kill();
    let _ = iperf.wait();
    let _ = rr_server.kill();
    let _ = rr_server.wait();
    result
}

/// How a case programs the lab before measuring.
enum Setup {
    /// Kernel routing only.
    Baseline,
    /// The Sightline datapath with this policy (YAML), if any.
    Sightline(Option<String>),
    /// Kernel routing with these iptables rules (iptables-restore input)
    /// in the node's namespace.
    Iptables(String),
}

fn run_case(setup: &Setup, seconds: u32, repeat: u32) -> anyhow::Result<Figures> {
    if LabState::load(LAB).is_ok() {
        cluster::down(LAB)?;
    }
    let file = std::env::temp_dir().join(format!("sightline-bench-{}.yaml", std::process::id()));
    std::fs::write(&file, MANIFEST)?;
    let up = cluster::up(&cluster::UpOptions {
        name: LAB.into(),
        nodes: 1,
        files: vec![file.clone()],
        aggregation: "medium".into(),
        debug_events: false,
        datapath: matches!(setup, Setup::Sightline(_)),
        ct_timeouts: String::new(),
        ct_gc_interval: "5s".into(),
        policy_audit: false,
        flow_capacity: 4095,
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
    let figures = (|| {
        match setup {
            Setup::Baseline | Setup::Sightline(None) => {}
            Setup::Sightline(Some(policy)) => {
                let file = std::env::temp_dir().join(format!("sightline-bench-policy-{}.yaml", std::process::id()));
                std::fs::write(&file, policy)?;
                let applied = cluster::apply(LAB, &[file.clone()]);
                let _ = std::fs::remove_file(&file);
                applied?;
            }
            Setup::Iptables(rules) => {
                let node = sightline_lab::topology::node_netns(LAB, "node-1");
                let mut child = Command::new("ip")
                    .args(["netns", "exec", &node, "iptables-restore"])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .context("running iptables-restore (install iptables with scripts/setup.sh)")?;
                child.stdin.take().expect("piped").write_all(rules.as_bytes())?;
                if !child.wait()?.success() {
                    bail!("iptables-restore refused the rules");
                }
            }
        }
        measure(&state, seconds, repeat)
    })();
    let down = cluster::down(LAB);
    let figures = figures?;
    down?;
    Ok(figures)
}

/// Ctrl-C or SIGTERM removes the bench's lab (and the per-packet bench's
/// pins) instead of leaving them behind.
fn remove_lab_on_interrupt() -> anyhow::Result<()> {
    crate::interrupt::on_interrupt(|| {
        if LabState::load(LAB).is_ok() {
            if let Err(e) = cluster::down(LAB) {
                eprintln!("bench: removing lab {LAB}: {e:#}");
            }
        }
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/sightline/bench-{}", std::process::id()));
    })
    .context("installing the SIGINT/SIGTERM handler")
}

/// Runs both cases and reports.
pub fn datapath(args: &DatapathArgs) -> anyhow::Result<()> {
    crate::check_root()?;
    if args.repeat == 0 || args.seconds == 0 {
        bail!("--repeat and --seconds must be at least 1");
    }
    remove_lab_on_interrupt()?;
    eprintln!("bench: baseline (same topology, no programs) …");
    let base = run_case(&Setup::Baseline, args.seconds, args.repeat)?;
    eprintln!("bench: through the Sightline datapath (aggregation medium) …");
    let dp = run_case(&Setup::Sightline(None), args.seconds, args.repeat)?;
    let report = format!(
        "| case | TCP throughput (Gbit/s) | TCP request/response (transactions/s) |\n\
         |---|---|---|\n\
         | no programs (kernel routing) | {:.2} | {:.0} |\n\
         | Sightline datapath | {:.2} ({:+.1}%) | {:.0} ({:+.1}%) |\n",
        base.gbps,
        base.rr,
        dp.gbps,
        (dp.gbps / base.gbps - 1.0) * 100.0,
        dp.rr,
        (dp.rr / base.rr - 1.0) * 100.0,
    );
    print!("{report}");
    if let Some(path) = &args.write {
        let section = format!(
            "<!-- bench:datapath:start -->\nMeasured by `sightline bench datapath --seconds {} --repeat {}` (median of {} runs each, same machine, same run), one node, two pods.\n\n{report}<!-- bench:datapath:end -->",
            args.seconds, args.repeat, args.repeat
        );
        write_section(path, "datapath", &section)?;
    }
    Ok(())
}

/// Replaces the `<!-- bench:NAME:start/end -->` section of a Markdown file
/// (appending it when absent).
pub(crate) fn write_section(path: &std::path::Path, name: &str, section: &str) -> anyhow::Result<()> {
    let (start, end) = (format!("<!-- bench:{name}:start -->"), format!("<!-- bench:{name}:end -->"));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &text[..a], section, &text[b + end.len()..]),
        _ => format!("{text}\n{section}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: figures written to {}", path.display());
    Ok(())
}

/// The bench server's policy as a manifest: the client on 5201 and 5301
/// plus `fillers` rules, each a distinct /32 and port.
fn policy_manifest(fillers: usize) -> String {
    let mut y = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: bench}\nspec:\n  podSelector: {matchLabels: {role: server}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: client}}}]\n    ports: [{port: 5201}, {port: 5301}]\n",
    );
    for i in 0..fillers {
        let addr = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 200, 0, 0)) + i as u32);
        y.push_str(&format!("  - from: [{{ipBlock: {{cidr: {addr}/32}}}}]\n    ports: [{{port: {}}}]\n", 10_000 + i % 50_000));
    }
    y
}

/// The same policy as iptables rules in the node's FORWARD chain, the
/// client's rule after the fillers, as a rule set grows.
fn iptables_rules(fillers: usize, client: std::net::Ipv4Addr, server: std::net::Ipv4Addr) -> String {
    let mut r = String::from("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    for i in 0..fillers {
        let addr = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 200, 0, 0)) + i as u32);
        r.push_str(&format!("-A FORWARD -s {addr}/32 -d {server}/32 -p tcp --dport {} -j ACCEPT\n", 10_000 + i % 50_000));
    }
    r.push_str(&format!("-A FORWARD -s {client}/32 -d {server}/32 -p tcp -m multiport --dports 5201,5301 -j ACCEPT\n"));
    r.push_str(&format!("-A FORWARD -d {server}/32 -j DROP\nCOMMIT\n"));
    r
}

/// `bench policy`: cost of NetworkPolicy as it grows, against iptables.
pub fn policy(args: &PolicyArgs) -> anyhow::Result<()> {
    crate::check_root()?;
    if args.repeat == 0 || args.seconds == 0 || args.entries.is_empty() || args.packet_runs == 0 || args.keys == 0 {
        bail!("--repeat, --seconds, --packet-runs, --keys and --entries must not be zero or empty");
    }
    if args.keys > sightline_collector::bench::MAX_KEYS {
        bail!("--keys: at most {}", sightline_collector::bench::MAX_KEYS);
    }
    let entries = args.entries.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let started = machine();
    let mut costs = Vec::new();
    for &n in &args.entries {
        eprintln!("bench: {n} extra rules: per-packet cost (BPF_PROG_TEST_RUN, {} runs per case) …", args.packet_runs);
        costs.push((n, sightline_collector::bench::packet_cost(n, args.keys, args.packet_runs)?));
    }
    let packet_report = packet_table(&costs, args.keys, args.packet_runs);
    print!("{packet_report}");
    if let Some(path) = &args.write {
        let section = format!(
            "<!-- bench:policy-packet:start -->\nMeasured by `sightline bench policy{} --entries {entries} --packet-runs {} --keys {}` (same run; {}).\n\n{packet_report}<!-- bench:policy-packet:end -->",
            if args.packets_only { " --packets-only" } else { "" },
            args.packet_runs,
            args.keys,
            started,
        );
        write_section(path, "policy-packet", &section)?;
    }
    if args.packets_only {
        return Ok(());
    }

    // Pod addresses are allocated in name order: client .2, server .3.
    let (client, server) = (std::net::Ipv4Addr::new(10, 244, 1, 2), std::net::Ipv4Addr::new(10, 244, 1, 3));
    remove_lab_on_interrupt()?;
    eprintln!("bench: baseline (same topology, no programs, no rules) …");
    let base = run_case(&Setup::Baseline, args.seconds, args.repeat)?;
    let mut rows = Vec::new();
    for (n, cost) in &costs {
        eprintln!("bench: {n} extra rules: Sightline …");
        let sl = run_case(&Setup::Sightline(Some(policy_manifest(*n))), args.seconds, args.repeat)?;
        eprintln!("bench: {n} extra rules: iptables …");
        let ipt = run_case(&Setup::Iptables(iptables_rules(*n, client, server)), args.seconds, args.repeat)?;
        rows.push((*n, cost.policy_entries, sl, ipt));
    }
    let pct = |v: f64, b: f64| (v / b - 1.0) * 100.0;
    let mut report = format!(
        "Baseline (no programs, no rules): {:.2} Gbit/s, {:.0} connections/s.\n\n\
         | extra rules | map entries | Sightline Gbit/s | iptables Gbit/s | Sightline conn/s | iptables conn/s |\n\
         |---|---|---|---|---|---|\n",
        base.gbps, base.crr
    );
    for (n, entries, sl, ipt) in &rows {
        report.push_str(&format!(
            "| {n} | {entries} | {:.2} ({:+.1}%) | {:.2} ({:+.1}%) | {:.0} ({:+.1}%) | {:.0} ({:+.1}%) |\n",
            sl.gbps,
            pct(sl.gbps, base.gbps),
            ipt.gbps,
            pct(ipt.gbps, base.gbps),
            sl.crr,
            pct(sl.crr, base.crr),
            ipt.crr,
            pct(ipt.crr, base.crr),
        ));
    }
    print!("{report}");
    if let Some(path) = &args.write {
        let section = format!(
            "<!-- bench:policy:start -->\nMeasured by `sightline bench policy --seconds {} --repeat {} --entries {entries}` (medians; same machine, same run; {}).\n\n{report}<!-- bench:policy:end -->",
            args.seconds,
            args.repeat,
            started,
        );
        write_section(path, "policy", &section)?;
    }
    Ok(())
}

/// The per-packet table: each case against the same run's baseline.
fn packet_table(costs: &[(usize, sightline_collector::bench::PacketCost)], keys: usize, runs: u64) -> String {
    use std::fmt::Write as _;
    let mut t = format!(
        "{runs} runs per case, one packet per run from {keys} sources in turn, the ring buffer drained after every run. \
         Baseline: an established packet before any policy was written (same sources, same run). \
         *One key*: the old way, for comparison: one packet run 50 times per call (warm caches; its events stay under the wake-up threshold), ring buffer drained between calls.\n\n\
         | extra rules | map entries | baseline ns/packet | denied SYN ns/packet | vs baseline | runs with an event | events lost | established ns/packet | vs baseline | runs with an event | one key: denied SYN / established ns |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for (n, c) in costs {
        let _ = writeln!(
            t,
            "| {n} | {} | {:.0} | {:.0} | {:.2}× | {:.1}% | {} | {:.0} | {:.2}× | {:.2}% | {:.0} / {:.0} |",
            c.policy_entries,
            c.no_policy.mean_ns,
            c.denied_syn.mean_ns,
            c.denied_syn.mean_ns / c.no_policy.mean_ns,
            c.denied_syn.event_fraction() * 100.0,
            c.denied_syn.lost + c.established.lost + c.no_policy.lost,
            c.established.mean_ns,
            c.established.mean_ns / c.no_policy.mean_ns,
            c.established.event_fraction() * 100.0,
            c.denied_syn_one_key_ns,
            c.established_one_key_ns,
        );
    }
    t
}

/// The machine, for the record: CPUs, kernel, load average.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cpus} CPUs, Linux {}, load average {} when it started", kernel.trim(), load.join(" "))
}
