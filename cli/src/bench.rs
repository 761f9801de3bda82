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

use crate::lab::cluster::{self, LabState};

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
    #[arg(long, default_value_t = 5)]
    seconds: u32,
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
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(state: &LabState, args: &DatapathArgs) -> anyhow::Result<Figures> {
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
        for _ in 0..args.repeat {
            let out = netns_exec(state, "bench/client")?
                .args(["iperf3", "-c", &server_ip.to_string(), "-p", "5201", "-J", "-t", &args.seconds.to_string()])
                .output()
                .context("running iperf3")?;
            if !out.status.success() {
                bail!("iperf3 failed: {}", String::from_utf8_lossy(&out.stdout).lines().rev().take(5).collect::<Vec<_>>().join(" "));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 output")?;
            let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().ok_or_else(|| anyhow!("iperf3 gave no throughput"))?;
            gbps.push(bps / 1e9);
            let out = netns_exec(state, "bench/client")?
                .arg(&exe)
                .args(["bench", "rr", "--connect", &format!("{server_ip}:{RR_PORT}"), "--seconds", &args.seconds.to_string()])
                .output()
                .context("running the request/response client")?;
            if !out.status.success() {
                bail!("request/response client failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            rr.push(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().context("request/response output")?);
        }
        Ok(Figures { gbps: median(gbps), rr: median(rr) })
    })();
    let _ = iperf.kill();
    let _ = iperf.wait();
    let _ = rr_server.kill();
    let _ = rr_server.wait();
    result
}

fn run_case(datapath: bool, args: &DatapathArgs) -> anyhow::Result<Figures> {
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
        datapath,
        ct_timeouts: String::new(),
        ct_gc_interval: "5s".into(),
    });
    let _ = std::fs::remove_file(&file);
    let state = up?;
    let figures = measure(&state, args);
    let down = cluster::down(LAB);
    let figures = figures?;
    down?;
    Ok(figures)
}

/// Runs both cases and reports.
pub fn datapath(args: &DatapathArgs) -> anyhow::Result<()> {
    crate::check_root()?;
    if args.repeat == 0 || args.seconds == 0 {
        bail!("--repeat and --seconds must be at least 1");
    }
    eprintln!("bench: baseline (same topology, no programs) …");
    let base = run_case(false, args)?;
    eprintln!("bench: through the Sightline datapath (aggregation medium) …");
    let dp = run_case(true, args)?;
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
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let new = match (text.find("<!-- bench:datapath:start -->"), text.find("<!-- bench:datapath:end -->")) {
            (Some(a), Some(b)) if b > a => {
                format!("{}{}{}", &text[..a], section, &text[b + "<!-- bench:datapath:end -->".len()..])
            }
            _ => format!("{text}\n{section}\n"),
        };
        std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: figures written to {}", path.display());
    }
    Ok(())
}
