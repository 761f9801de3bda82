//! The datapath outlives its collector: a collector killed with SIGKILL (or
//! stopped) leaves forwarding and NetworkPolicy in force, a restarted one
//! adopts what it finds (maps, links, the ring buffer and its backlog,
//! conntrack), a policy applied meanwhile is in force once it is back, an
//! in-place replacement of the programs never leaves a packet without one,
//! and only `lab down` (or `collector --uninstall`) removes the pins.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sightline_e2e::{Lab, require_root, sightline, sightline_bin, sightline_ok, write_temp, xyz_manifests};
use sightline_proto::flow::{self as pb, FlowFilter};
use sightline_proto::observer::observer_client::ObserverClient;
use sightline_proto::observer::{GetFlowsRequest, get_flows_response::ResponseTypes};
use tokio_stream::StreamExt as _;

/// x/a may send to x/c only: x/a → x/b is denied (in `from_container`, on
/// x/a's own veth, so a moment without that program would let it through),
/// x/a → x/c is allowed.
/// These tests stop collectors and look at the node while none runs: no
/// supervisor may start one behind their back (tests/supervision.rs covers it).
const NO_SUPERVISOR: &[&str] = &["--no-supervisor"];

const A_TO_C_ONLY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-to-c-only, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {pod: c}}}]\n";

/// Nothing may reach x/c.
const C_DENY_ALL: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: c-deny-all, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: c}}\n  policyTypes: [Ingress]\n";

/// A new pod on node-1.
const POD_D: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: x, labels: {pod: d}}\nspec:\n  containers: [{name: c, ports: [{containerPort: 80}]}]\n";

fn with_policy(policy: &str) -> String {
    format!("{}---\n{policy}", xyz_manifests())
}

fn apply(lab: &Lab, file: &str, manifest: &str) -> String {
    let path = write_temp(file, manifest);
    sightline_ok(&["lab", "apply", "--name", &lab.name, "-f", path.to_str().expect("utf-8 path")])
}

fn delete(lab: &Lab, file: &str, manifest: &str) -> String {
    let path = write_temp(file, manifest);
    sightline_ok(&["lab", "delete", "--name", &lab.name, "-f", path.to_str().expect("utf-8 path")])
}

fn collector_pid(lab: &Lab) -> u32 {
    lab.status()["nodes"][0]["collector"]["pid"].as_u64().expect("collector pid") as u32
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Gone, or a zombie waiting for init to reap it.
    !stat.is_empty() && !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// Polls `f` until it holds or `limit` passes.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` to the lab's collector and waits until it is gone.
fn stop_collector(lab: &Lab, signal: i32) -> u32 {
    let pid = collector_pid(lab);
    assert!(alive(pid), "the collector {pid} runs");
    // SAFETY: plain kill(2) of a process of this test's lab.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
    wait_for("the collector to exit", Duration::from_secs(15), || !alive(pid));
    pid
}

fn restart_collector(lab: &Lab, extra: &[&str]) -> String {
    let mut args = vec!["lab", "restart", "collector", "node-1", "--name", &lab.name];
    args.extend_from_slice(extra);
    sightline_ok(&args)
}

fn collector_log(lab: &Lab) -> String {
    std::fs::read_to_string(format!("/run/sightline/labs/{}/collector-node-1.log", lab.name)).unwrap_or_default()
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn pins(lab: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/sightline/{lab}"))
}

/// Every file under `dir` (bpffs pins), relative to it, sorted.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Starts a one-shot iperf3 server in `pod` on `port` and waits until it
/// listens.
fn iperf_server(lab: &Lab, pod: &str, port: u16) {
    let out = lab.exec(pod, &["iperf3", "-s", "-1", "-D", "-p", &port.to_string()]);
    assert!(out.status.success(), "iperf3 server: {}", String::from_utf8_lossy(&out.stderr));
    let filter = format!("sport = :{port}");
    wait_for("the iperf3 server to listen", Duration::from_secs(10), || {
        !lab.exec(pod, &["ss", "-Hltn", &filter]).stdout.is_empty()
    });
}

/// `lab exec POD -- ARGS…` in the background, in its own process group (so
/// that `interrupt` reaches the command itself).
fn spawn_exec(lab: &Lab, pod: &str, args: &[&str]) -> Child {
    use std::os::unix::process::CommandExt as _;
    Command::new(sightline_bin())
        .args(["lab", "exec", pod, "--name", &lab.name, "--"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("lab exec")
}

/// SIGINT to a `spawn_exec` child's process group; its output.
fn interrupt(child: Child) -> Output {
    // SAFETY: kill(2) of the group this test created.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    child.wait_with_output().expect("wait")
}

/// Checks an iperf3 `-J` report: finished, and no 1-second interval
/// without data.
fn assert_no_stall(out: &Output, min_intervals: usize) {
    assert!(out.status.success(), "iperf3 failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    assert!(report.get("error").is_none(), "iperf3: {}", report["error"]);
    let intervals = report["intervals"].as_array().expect("intervals");
    assert!(intervals.len() >= min_intervals, "{} intervals", intervals.len());
    for i in intervals {
        let bps = i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0);
        assert!(bps > 0.0, "an interval at zero bits/s: {i}");
    }
}

/// Ping statistics: (transmitted, received).
fn ping_counts(out: &Output) -> (u64, u64) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no ping summary in {text}"));
    let num = |key: &str| -> u64 {
        line.split(',')
            .find(|p| p.contains(key))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num("transmitted"), num("received"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// GetFlows (no follow) since `since_ns` with `filter`: the flows, and the
/// kernel ring-buffer losses reported.
fn flows_since(lab: &Lab, since_ns: i64, filter: FlowFilter) -> (Vec<pb::Flow>, u64) {
    let addr = lab.status()["nodes"][0]["collector"]["grpc"].as_str().expect("gRPC address").to_owned();
    let grpc = lab.grpc();
    rt().block_on(async {
        let mut c = ObserverClient::new(grpc.channel(&addr).await);
        let since = prost_types::Timestamp { seconds: since_ns / 1_000_000_000, nanos: (since_ns % 1_000_000_000) as i32 };
        let whitelist = if filter == FlowFilter::default() { Vec::new() } else { vec![filter] };
        let req = GetFlowsRequest { since: Some(since), whitelist, ..GetFlowsRequest::default() };
        let mut stream = c.get_flows(req).await.expect("GetFlows").into_inner();
        let (mut flows, mut lost) = (Vec::new(), 0);
        while let Some(r) = stream.next().await {
            match r.expect("response").response_types {
                Some(ResponseTypes::Flow(f)) => flows.push(f),
                Some(ResponseTypes::LostEvents(l)) if l.source == pb::LostEventSource::PerfEventRingBuffer as i32 => {
                    lost += l.num_events_lost;
                }
                _ => {}
            }
        }
        (flows, lost)
    })
}

fn flow_ns(f: &pb::Flow) -> i64 {
    f.time.as_ref().map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
}

/// The sum of node-1's samples of `metric` whose line contains `label`.
fn metric(lab: &Lab, metric: &str, label: &str) -> u64 {
    let addr = lab.status()["nodes"][0]["collector"]["metrics"].as_str().expect("metrics address").to_owned();
    let (_, body) = sightline_e2e::http_get(&addr, "/metrics", None);
    body.lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

/// `hubble_lost_events_total{source="perf_event_ring_buffer"}` of node-1.
fn lost_metric(lab: &Lab) -> u64 {
    metric(lab, "hubble_lost_events_total", "perf_event_ring_buffer")
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn a_killed_collector_leaves_the_datapath_in_force_and_its_successor_adopts_it() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-rs-kill", &with_policy(A_TO_C_ONLY), NO_SUPERVISOR);
    let ip_c = lab.pod_ip("x/c");
    assert!(!lab.probe("x/a", "x/b", 80, "TCP"), "the policy denies x/a → x/b");
    assert!(lab.probe("x/a", "x/c", 80, "TCP"), "the policy allows x/a → x/c");

    // A long transfer across the kill and the restart.
    iperf_server(&lab, "x/c", 5201);
    let iperf = {
        let name = lab.name.clone();
        std::thread::spawn(move || sightline(&["lab", "exec", "x/a", "--name", &name, "--", "iperf3", "-c", &ip_c, "-p", "5201", "-t", "12", "-i", "1", "-J"]))
    };
    wait_for("the transfer to be established", Duration::from_secs(10), || {
        !lab.exec("x/a", &["ss", "-Htn", "state", "established", "dport = :5201"]).stdout.is_empty()
    });
    let ct_before = lab.collector_status().ct_entries;
    assert!(ct_before > 0);

    let old_pid = stop_collector(&lab, libc::SIGKILL);
    let killed_at = now_ns();
    assert_eq!(lab.status()["nodes"][0]["collector"]["running"], false);
    // Pins and links stay; forwarding and enforcement go on.
    let pinned = walk(&pins(&lab.name));
    let lxc = lab.host_ifname("x/a");
    assert!(pinned.iter().any(|p| p.ends_with(&format!("links/{lxc}-ingress"))), "{pinned:?}");
    for round in 0..3 {
        assert!(!lab.probe("x/a", "x/b", 80, "TCP"), "round {round}: x/a → x/b connected while the collector was down");
        assert!(lab.probe("x/a", "x/c", 80, "TCP"), "round {round}: x/a → x/c blocked while the collector was down");
    }
    // Traffic on a port nothing else uses: its events wait in the pinned
    // ring buffer.
    assert!(lab.probe("x/a", "x/c", 81, "TCP"));
    let down_until = now_ns();

    let out = restart_collector(&lab, &[]);
    assert!(out.contains("restarted"), "{out}");
    assert!(!iperf.is_finished(), "the restart happened while the transfer ran");
    let new_pid = collector_pid(&lab);
    assert_ne!(new_pid, old_pid);
    assert!(alive(new_pid));
    assert_eq!(lab.status()["nodes"][0]["collector"]["running"], true);
    assert!(collector_log(&lab).contains("datapath adopted"), "{}", collector_log(&lab));
    let status = lab.collector_status();
    assert!(status.datapath.starts_with("adopted"), "{}", status.datapath);
    assert!(status.ct_entries > 0, "conntrack was kept ({ct_before} entries before)");
    assert!(status.programmed);

    // The connection that ran through it all was never reset or stalled.
    assert_no_stall(&iperf.join().expect("iperf thread"), 10);
    // Enforcement as before.
    assert!(!lab.probe("x/a", "x/b", 80, "TCP"));
    assert!(lab.probe("x/a", "x/c", 80, "TCP"));

    // What the datapath wrote while no collector ran became flows.
    let filter = FlowFilter { source_pod: vec!["x/a".into()], destination_port: vec!["81".into()], ..FlowFilter::default() };
    let mut during = Vec::new();
    let mut lost = 0;
    wait_for("the outage's flows", Duration::from_secs(10), || {
        let (flows, l) = flows_since(&lab, killed_at, filter.clone());
        lost = l;
        during = flows.into_iter().filter(|f| (killed_at..down_until).contains(&flow_ns(f))).collect();
        !during.is_empty() || lost > 0
    });
    assert!(!during.is_empty(), "no flow of the outage, {lost} events lost");
    assert!(during.iter().all(|f| f.node_name == "node-1"));
    assert!(during.iter().any(|f| f.source.as_ref().is_some_and(|s| s.pod_name == "a")), "enriched with pod names");
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn a_policy_applied_while_the_collector_is_down_is_in_force_once_it_is_back() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-rs-apply", &xyz_manifests(), NO_SUPERVISOR);
    assert!(lab.probe("x/a", "x/c", 80, "TCP"));
    stop_collector(&lab, libc::SIGKILL);

    // The store takes it; the node is behind and says so.
    let out = apply(&lab, "deny-c.yaml", &format!("{C_DENY_ALL}---\n{POD_D}"));
    assert!(out.contains("networkpolicy/x/c-deny-all created"), "{out}");
    assert!(out.contains("node-1's collector is not running; it will program this when it is back"), "{out}");
    assert!(out.contains("pod x/d is pending"), "{out}");
    let status = lab.status();
    assert!(status["policies"].as_array().unwrap().iter().any(|p| p["name"] == "c-deny-all"));
    assert_eq!(status["pending_pods"], serde_json::json!(["x/d"]));
    // Meanwhile the datapath enforces what it had.
    assert!(lab.probe("x/a", "x/c", 80, "TCP"));

    let out = restart_collector(&lab, &[]);
    assert!(!out.contains("not running"), "{out}");
    assert!(!lab.probe("x/a", "x/c", 80, "TCP"), "the policy applied during the outage is in force");
    assert!(lab.probe("x/a", "x/b", 80, "TCP"));
    // The pod that waited is plugged in and programmed.
    assert_eq!(lab.status()["pending_pods"], serde_json::json!([]));
    assert!(lab.pod_ip("x/d").starts_with("10.244.1."));
    assert!(lab.probe("x/a", "x/d", 80, "TCP"));
    assert!(lab.probe("x/d", "x/b", 80, "TCP"));

    // A deletion while down, likewise.
    stop_collector(&lab, libc::SIGKILL);
    let out = delete(&lab, "deny-c.yaml", C_DENY_ALL);
    assert!(out.contains("deleted") && out.contains("not running"), "{out}");
    assert!(!lab.probe("x/a", "x/c", 80, "TCP"));
    restart_collector(&lab, &[]);
    assert!(lab.probe("x/a", "x/c", 80, "TCP"), "the deletion is in force");
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn only_lab_down_removes_the_pins_and_links() {
    if !require_root() {
        return;
    }
    let name = "e2e-rs-down";
    let lab = Lab::up(name, &with_policy(A_TO_C_ONLY), NO_SUPERVISOR);
    let pinned = walk(&pins(name));
    let lxc = lab.host_ifname("x/a");
    for wanted in ["node-1/meta", "node-1/maps/CT", "node-1/maps/EVENTS", "node-1/progs/from_container"]
        .map(String::from)
        .into_iter()
        .chain([format!("node-1/links/{lxc}-ingress"), format!("node-1/links/{lxc}-egress")])
    {
        assert!(pinned.iter().any(|p| *p == wanted), "{wanted} is not pinned: {pinned:?}");
    }
    // A collector that exits normally detaches nothing.
    stop_collector(&lab, libc::SIGTERM);
    assert_eq!(walk(&pins(name)), pinned, "a stopping collector left its pins as they were");
    assert!(!lab.probe("x/a", "x/b", 80, "TCP"), "still enforced after a normal exit");

    drop(lab);
    assert!(!pins(name).exists(), "{:?} left after lab down", walk(&pins(name)));
    // The namespaces, with their interfaces and tcx attachments, are gone.
    assert!(!sightline_e2e::netns_names().iter().any(|n| n.starts_with(&format!("{name}."))));
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn collector_uninstall_detaches_and_removes_the_pins() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-rs-uninst", &with_policy(A_TO_C_ONLY), NO_SUPERVISOR);
    stop_collector(&lab, libc::SIGKILL);
    assert!(!lab.probe("x/a", "x/b", 80, "TCP"));
    let dir = pins(&lab.name).join("node-1");
    let netns = format!("/run/netns/{}.node-1", lab.name);
    let out = sightline_ok(&["collector", "--uninstall", "--pin-dir", dir.to_str().unwrap(), "--netns", &netns]);
    // Two tcx links per pod (nine pods) and the tracepoint's.
    assert!(out.contains("detached 19 link(s)"), "{out}");
    assert!(!dir.exists());
    // Explicitly removed, the datapath no longer enforces (nor forwards
    // through its programs): the kernel routes the pods on its own.
    assert!(lab.probe("x/a", "x/b", 80, "TCP"));
    // Idempotent.
    let out = sightline_ok(&["collector", "--uninstall", "--pin-dir", dir.to_str().unwrap()]);
    assert!(out.contains("nothing pinned"), "{out}");
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn replacing_the_programs_in_place_leaves_no_moment_without_them() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-rs-repl", &with_policy(A_TO_C_ONLY), NO_SUPERVISOR);
    let (ip_b, ip_c) = (lab.pod_ip("x/b"), lab.pod_ip("x/c"));
    iperf_server(&lab, "x/c", 5201);
    let iperf = {
        let name = lab.name.clone();
        let ip_c = ip_c.clone();
        std::thread::spawn(move || sightline(&["lab", "exec", "x/a", "--name", &name, "--", "iperf3", "-c", &ip_c, "-p", "5201", "-t", "20", "-i", "1", "-J"]))
    };
    // Allowed and denied floods, 500 packets a second each: a single packet
    // past a missing program would come back as an echo reply from x/b.
    let allowed = spawn_exec(&lab, "x/a", &["ping", "-n", "-i", "0.002", "-W", "1", &ip_c]);
    let denied = spawn_exec(&lab, "x/a", &["ping", "-n", "-i", "0.002", "-W", "1", &ip_b]);
    wait_for("the transfer to be established", Duration::from_secs(10), || {
        !lab.exec("x/a", &["ss", "-Htn", "state", "established", "dport = :5201"]).stdout.is_empty()
    });

    // New programs into the same links, maps kept.
    let ct_before = lab.collector_status().ct_entries;
    restart_collector(&lab, &["--reload", "programs"]);
    let status = lab.collector_status();
    assert!(status.datapath.starts_with("replaced (--reload programs"), "{}", status.datapath);
    assert!(status.ct_entries > 0, "conntrack kept ({ct_before} before)");
    // New programs and new maps, as for an ABI upgrade: the swap waits for
    // the maps to be filled.
    restart_collector(&lab, &["--reload", "all"]);
    let log = collector_log(&lab);
    assert!(log.contains("replaced (--reload all; new maps:"), "{log}");
    assert!(log.contains("datapath replaced in place (--reload all)"), "{log}");
    assert!(!lab.collector_status().datapath.contains("waiting"));
    assert!(!iperf.is_finished(), "the replacements happened while the transfer ran");

    let allowed = interrupt(allowed);
    let denied = interrupt(denied);
    let (sent, received) = ping_counts(&allowed);
    assert!(sent >= 200, "only {sent} pings sent");
    assert_eq!(sent, received, "allowed pings lost across the replacements:\n{}", String::from_utf8_lossy(&allowed.stdout));
    let (sent, received) = ping_counts(&denied);
    assert!(sent >= 200, "only {sent} pings sent");
    assert_eq!(received, 0, "denied pings answered: a moment without the programs");
    assert_no_stall(&iperf.join().expect("iperf thread"), 18);
    // And the new programs enforce as the old ones did.
    assert!(!lab.probe("x/a", "x/b", 80, "TCP"));
    assert!(lab.probe("x/a", "x/c", 80, "TCP"));
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn events_that_overflowed_while_no_collector_ran_are_reported_lost_once() {
    if !require_root() {
        return;
    }
    // Every packet is an event: a short UDP flood overflows the 4 MiB ring
    // buffer (about 37,000 events) while nothing drains it.
    let lab = Lab::up("e2e-rs-lost", &xyz_manifests(), &["--aggregation", "none", "--no-supervisor"]);
    let ip_c = lab.pod_ip("x/c");
    iperf_server(&lab, "x/c", 5201);
    stop_collector(&lab, libc::SIGKILL);
    let killed_at = now_ns();
    let out = lab.exec("x/a", &["iperf3", "-u", "-c", &ip_c, "-p", "5201", "-b", "40M", "-l", "64", "-t", "2", "-J"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    restart_collector(&lab, &[]);
    let restarted_at = now_ns();

    // Reported to clients (a follower resuming since the kill included)
    // and to Prometheus.
    let mut lost = 0;
    wait_for("the losses of the outage", Duration::from_secs(10), || {
        lost = flows_since(&lab, killed_at, FlowFilter::default()).1;
        lost > 0
    });
    assert_eq!(lost_metric(&lab), lost, "hubble_lost_events_total counts what clients were told");
    let status = lab.collector_status();
    let counted: u64 = status.events_lost_per_cpu.iter().sum();
    assert_eq!(counted, lost, "every loss the probes counted was reported, once");

    // A second restart reports none of them again: once its loss monitor
    // has read the counters (its own metric mirrors them), nothing new.
    restart_collector(&lab, &[]);
    wait_for("the loss monitor to read the counters", Duration::from_secs(10), || {
        metric(&lab, "sightline_ringbuf_events_lost", "cpu") == counted
    });
    assert_eq!(flows_since(&lab, restarted_at, FlowFilter::default()).1, 0, "losses reported twice");
    assert_eq!(lost_metric(&lab), 0);
}
