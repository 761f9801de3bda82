//! NetworkPolicy in the datapath: verdict events, policy names, audit mode,
//! and policy changes under traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sightline_collector::decoder::Record;
use sightline_e2e::{Lab, require_root, sightline, write_temp, xyz_manifests};

/// Long enough for any event of a finished exchange to reach a subscriber.
const EVENTS_WITHIN: Duration = Duration::from_secs(10);

/// A TCP segment that closes its connection.
fn closes(r: &Record) -> bool {
    r.tcp_flags.iter().any(|f| f == "FIN" || f == "RST")
}

fn apply(lab: &Lab, file: &str, manifest: &str) {
    let path = write_temp(file, manifest);
    let out = sightline(&["lab", "apply", "--name", &lab.name, "-f", path.to_str().unwrap()]);
    assert!(out.status.success(), "apply {file}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Ingress to x/b: from x/a on `a_ports`, from x/c on `c_ports` (no rule
/// at all for a pod whose list is empty: an empty `ports` would mean all).
fn policy_b(name: &str, a_ports: &[u16], c_ports: &[u16]) -> String {
    let rule = |pod: &str, ps: &[u16]| {
        if ps.is_empty() {
            return String::new();
        }
        let ports = ps.iter().map(|p| format!("{{port: {p}}}")).collect::<Vec<_>>().join(", ");
        format!("  - from: [{{podSelector: {{matchLabels: {{pod: {pod}}}}}}}]\n    ports: [{ports}]\n")
    };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: b}}}}\n  policyTypes: [Ingress]\n  ingress:\n{}{}",
        rule("a", a_ports),
        rule("c", c_ports)
    )
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn verdicts_name_their_policies_and_denials_are_drops() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-pol-ev", &xyz_manifests(), &["--aggregation", "none"]);
    apply(&lab, "pol.yaml", &policy_b("allow-b", &[80], &[81]));
    let (ip_a, ip_b, ip_c) = (lab.pod_ip("x/a"), lab.pod_ip("x/b"), lab.pod_ip("x/c"));
    let mut sub = lab.subscribe();
    assert!(lab.probe("x/a", "x/b", 80, "TCP"));
    assert!(!lab.probe("x/a", "x/b", 81, "TCP"));
    assert!(lab.probe("x/c", "x/b", 81, "TCP"));
    // The probes ran one after the other: once c's connection is closed,
    // the events of a's attempts are in.
    let events = sub
        .collect_until(EVENTS_WITHIN, |events| {
            events.iter().any(|r| r.kind == "trace" && r.destination.ip == ip_c && r.source.port == 81 && closes(r))
        })
        .unwrap();

    let allowed = events
        .iter()
        .find(|r| r.kind == "policy-verdict" && r.direction == "ingress" && r.source.ip == ip_a && r.destination.port == 80)
        .expect("ingress verdict for a→b:80");
    assert_eq!(allowed.verdict.as_deref(), Some("forwarded"));
    assert_eq!(allowed.match_type.as_deref(), Some("l3-l4"));
    assert_eq!(allowed.allowed_by, ["x/allow-b"]);
    assert_eq!(allowed.destination.ip, ip_b);

    let denied = events
        .iter()
        .find(|r| r.kind == "policy-verdict" && r.direction == "ingress" && r.source.ip == ip_a && r.destination.port == 81)
        .expect("ingress verdict for a→b:81");
    assert_eq!(denied.verdict.as_deref(), Some("dropped"));
    assert_eq!(denied.direction, "ingress");
    assert_eq!(denied.denied_by, ["x/allow-b"]);
    let drops: Vec<&Record> = events
        .iter()
        .filter(|r| r.kind == "drop" && r.source.ip == ip_a && r.destination.port == 81)
        .collect();
    assert!(!drops.is_empty(), "denied packets are drop events");
    for d in &drops {
        assert_eq!(d.drop_reason, Some(133));
        assert_eq!(d.drop_reason_name.as_deref(), Some("POLICY_DENIED"));
        assert_eq!(d.denied_by, ["x/allow-b"]);
        assert_eq!(d.direction, "ingress");
    }
    // Reported once, by the datapath: the kernel's own record of the drop
    // (reason TC_INGRESS) is not repeated as a kernel drop.
    assert!(!events.iter().any(|r| r.kind == "kernel-drop" && r.destination.port == 81), "policy drops are not reported twice");
    // Every retransmitted SYN is dropped and reported, none reaches b.
    assert!(!events.iter().any(|r| r.kind == "trace"
        && r.observation_point.as_deref() == Some("to-endpoint")
        && r.source.ip == ip_a
        && r.destination.port == 81));
    // Egress of x/a is not enforced: its verdict is forwarded with no policy.
    let egress = events
        .iter()
        .find(|r| r.kind == "policy-verdict" && r.direction == "egress" && r.source.ip == ip_a && r.destination.port == 80)
        .unwrap();
    assert_eq!(egress.verdict.as_deref(), Some("forwarded"));
    assert_eq!(egress.match_type.as_deref(), Some("none"));
    assert!(egress.allowed_by.is_empty());
    let from_c = events
        .iter()
        .find(|r| r.kind == "policy-verdict" && r.direction == "ingress" && r.source.ip == ip_c)
        .unwrap();
    assert_eq!(from_c.verdict.as_deref(), Some("forwarded"));
    // The collector counts what policy denied.
    assert!(lab.collector_status().packets_dropped >= drops.len() as u64);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn audit_mode_reports_without_dropping() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-pol-audit", &xyz_manifests(), &["--policy-audit"]);
    apply(&lab, "pol.yaml", &policy_b("allow-b", &[80], &[]));
    let ip_a = lab.pod_ip("x/a");
    let mut sub = lab.subscribe();
    assert!(lab.probe("x/a", "x/b", 81, "TCP"), "audit mode drops nothing");
    // Until the connection is closed (its SYN's verdict came before).
    let events = sub
        .collect_until(EVENTS_WITHIN, |events| events.iter().any(|r| r.kind == "trace" && r.source.port == 81 && closes(r)))
        .unwrap();
    let v = events
        .iter()
        .find(|r| r.kind == "policy-verdict" && r.direction == "ingress" && r.source.ip == ip_a)
        .expect("verdict");
    assert_eq!(v.verdict.as_deref(), Some("audit"));
    assert_eq!(v.denied_by, ["x/allow-b"]);
    assert!(!events.iter().any(|r| r.kind == "drop"));
}

/// Runs `f` in a loop on a thread until `stop`; counts failures.
fn spin(stop: &Arc<AtomicBool>, f: impl Fn() -> bool + Send + 'static) -> (std::thread::JoinHandle<u32>, Arc<AtomicU32>) {
    let runs = Arc::new(AtomicU32::new(0));
    let stop = Arc::clone(stop);
    let r = Arc::clone(&runs);
    let h = std::thread::spawn(move || {
        let mut bad = 0;
        while !stop.load(Ordering::Relaxed) {
            if !f() {
                bad += 1;
            }
            r.fetch_add(1, Ordering::Relaxed);
        }
        bad
    });
    (h, runs)
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn policy_changes_under_traffic_give_no_wrong_verdict() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-pol-upd", &xyz_manifests(), &[]);
    let name = lab.name.clone();
    let ip_b = lab.pod_ip("x/b");
    // Old: a→b on 80 and 5201, c→b on 81. New: a→b on 80 and 5201, c→b on 80.
    // Allowed by both: a→b:80 and the long a→b:5201 transfer.
    // Denied by both: a→b:81. Changing: c→b:81, c→b:80.
    let old = policy_b("upd", &[80, 5201], &[81]);
    let new = policy_b("upd", &[80, 5201], &[80]);
    apply(&lab, "old.yaml", &old);

    let server = lab.exec("x/b", &["iperf3", "-s", "-1", "-D", "-p", "5201"]);
    assert!(server.status.success());
    lab.wait_listening("x/b", 5201);
    let mut sub = lab.subscribe();

    let stop = Arc::new(AtomicBool::new(false));
    let probe = |from: &'static str, port: u16, name: String| {
        move || {
            let out = sightline(&["lab", "probe", from, "x/b", "--port", &port.to_string(), "--timeout-ms", "500", "--name", &name]);
            out.status.code() == Some(0)
        }
    };
    let both_allowed = spin(&stop, probe("x/a", 80, name.clone()));
    let both_denied = {
        let f = probe("x/a", 81, name.clone());
        spin(&stop, move || !f())
    };
    let iperf = {
        let name = name.clone();
        let ip_b = ip_b.clone();
        std::thread::spawn(move || {
            sightline(&["lab", "exec", "x/a", "--name", &name, "--", "iperf3", "-c", &ip_b, "-p", "5201", "-t", "6", "-J"])
        })
    };

    // Flip the policy back and forth while all that runs.
    let start = Instant::now();
    let mut flips = 0;
    while start.elapsed() < Duration::from_secs(5) {
        apply(&lab, "new.yaml", &new);
        apply(&lab, "old.yaml", &old);
        flips += 2;
    }
    apply(&lab, "new.yaml", &new);
    stop.store(true, Ordering::Relaxed);
    let (h, runs) = both_allowed;
    let allowed_failures = h.join().unwrap();
    let allowed_runs = runs.load(Ordering::Relaxed);
    let (h, runs) = both_denied;
    let denied_failures = h.join().unwrap();
    let denied_runs = runs.load(Ordering::Relaxed);
    let out = iperf.join().unwrap();
    assert!(flips >= 6, "only {flips} policy changes");
    assert!(allowed_runs >= 5 && denied_runs >= 5, "probes ran {allowed_runs}/{denied_runs} times");
    assert_eq!(allowed_failures, 0, "a→b:80 (allowed by both policies) was blocked {allowed_failures}/{allowed_runs} times");
    assert_eq!(denied_failures, 0, "a→b:81 (denied by both policies) connected {denied_failures}/{denied_runs} times");

    // The long transfer never stalled: every interval moved data.
    assert!(out.status.success(), "iperf3: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    let intervals = report["intervals"].as_array().expect("intervals");
    assert!(intervals.len() >= 5);
    for i in intervals {
        assert!(i["sum"]["bytes"].as_u64().unwrap() > 0, "a stalled interval: {i}");
    }
    // And no packet of traffic allowed by both was dropped by policy. A
    // marker sent after all of it (UDP to 9, denied: a drop event) comes
    // after every event of that traffic.
    assert!(!lab.probe("x/a", "x/b", 9, "UDP"));
    let events = sub
        .collect_until(EVENTS_WITHIN, |events| events.iter().any(|r| r.kind == "drop" && r.destination.port == 9))
        .unwrap();
    assert!(events.iter().any(|r| r.kind == "drop" && r.destination.port == 9), "the marker's drop never came");
    let wrong: Vec<String> = events
        .iter()
        .filter(|r| r.kind == "drop" && r.drop_reason == Some(133))
        .filter(|r| r.source.pod.as_deref() == Some("a") && matches!(r.destination.port, 80 | 5201))
        .map(Record::summary)
        .collect();
    assert!(wrong.is_empty(), "allowed-by-both packets dropped:\n{}", wrong.join("\n"));

    // The final state is the new policy.
    assert!(lab.probe("x/c", "x/b", 80, "TCP"));
    assert!(!lab.probe("x/c", "x/b", 81, "TCP"));
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn a_policy_change_cuts_connections_it_now_denies() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-pol-cut", &xyz_manifests(), &[]);
    let ip_b = lab.pod_ip("x/b");
    apply(&lab, "allow.yaml", &policy_b("cut", &[80], &[5201]));
    let server = lab.exec("x/b", &["iperf3", "-s", "-1", "-D", "-p", "5201"]);
    assert!(server.status.success());
    lab.wait_listening("x/b", 5201);
    let mut sub = lab.subscribe();
    let iperf = {
        let name = lab.name.clone();
        std::thread::spawn(move || {
            // Bounded: once cut, iperf3 cannot even say goodbye.
            sightline(&["lab", "exec", "x/c", "--name", &name, "--", "timeout", "8", "iperf3", "-c", &ip_b, "-p", "5201", "-t", "4", "-J"])
        })
    };
    lab.wait_connected("x/c", 5201);
    // c may no longer reach b on 5201: the running transfer is cut.
    let changed_at = Instant::now();
    apply(&lab, "deny.yaml", &policy_b("cut", &[80], &[]));
    let out = iperf.join().unwrap();
    let cut_drop = |r: &Record| r.kind == "drop" && r.drop_reason == Some(133) && r.source.pod.as_deref() == Some("c") && r.destination.port == 5201;
    let events = sub.collect_until(EVENTS_WITHIN, |events| events.iter().any(|r| cut_drop(r))).unwrap();
    let cut: Vec<&Record> = events
        .iter()
        .filter(|r| cut_drop(r))
        .collect();
    assert!(!cut.is_empty(), "the established connection's packets are dropped after the change");
    assert!(cut.iter().all(|r| r.denied_by == ["x/cut"]));
    // Its data stopped: the last intervals moved (almost) nothing.
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if let Some(intervals) = report["intervals"].as_array() {
        let last = intervals.last().unwrap();
        assert!(last["sum"]["bytes"].as_u64().unwrap_or(0) < 1_000_000, "data still flows after the cut: {last}");
    }
    assert!(changed_at.elapsed() < Duration::from_secs(10));
}
