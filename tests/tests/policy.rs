//! NetworkPolicy in the datapath: verdicts, policy names, audit mode, and
//! policy changes under traffic — checked on the flows of the Observer API
//! (`observe -o jsonpb`), what users get; the changes-under-traffic test
//! reads the collector's event stream instead, which hands a subscriber
//! every event or reports the loss, where the flow store may overwrite.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sightline_collector::decoder::Record;
use serde_json::Value;
use sightline_e2e::{Lab, require_root, sightline, write_temp, xyz_manifests};

/// Long enough for any event of a finished exchange to reach a subscriber.
const EVENTS_WITHIN: Duration = Duration::from_secs(10);

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

/// The flow of an `observe -o jsonpb` line.
fn flow(line: &Value) -> &Value {
    &line["flow"]
}

/// The policies a flow names in `field` (`ingress_denied_by`, …) as
/// `namespace/name`.
fn policies(line: &Value, field: &str) -> Vec<String> {
    flow(line)[field]
        .as_array()
        .map(|a| a.iter().map(|p| format!("{}/{}", p["namespace"].as_str().unwrap_or(""), p["name"].as_str().unwrap_or(""))).collect())
        .unwrap_or_default()
}

fn ingress(line: &Value) -> bool {
    flow(line)["traffic_direction"] == "INGRESS"
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn verdicts_name_their_policies_and_denials_are_drops() {
    if !require_root() {
        return;
    }
    // What users get: the flows of the Observer API (`observe -o jsonpb`).
    let lab = Lab::up("e2e-pol-ev", &xyz_manifests(), &["--aggregation", "none"]);
    apply(&lab, "pol.yaml", &policy_b("allow-b", &[80], &[81]));
    assert!(lab.probe("x/a", "x/b", 80, "TCP"));
    assert!(!lab.probe("x/a", "x/b", 81, "TCP"));
    assert!(lab.probe("x/c", "x/b", 81, "TCP"));
    let a_to_b = |port: &'static str, kind: &'static str| ["--from-pod", "x/a", "--to-pod", "x/b", "--to-port", port, "-t", kind];
    // The probes ran one after the other: once c's verdict is stored, a's are.
    let from_c = lab.wait_flows("c→b:81's ingress verdict", &["--from-pod", "x/c", "--to-pod", "x/b", "--to-port", "81", "-t", "policy-verdict"], |f| {
        f.iter().any(ingress)
    });
    assert!(from_c.iter().filter(|l| ingress(l)).all(|l| flow(l)["verdict"] == "FORWARDED"), "{from_c:?}");

    let verdicts_80 = lab.observed(&a_to_b("80", "policy-verdict"));
    let allowed = verdicts_80.iter().find(|l| ingress(l)).unwrap_or_else(|| panic!("ingress verdict for a→b:80: {verdicts_80:?}"));
    assert_eq!(flow(allowed)["verdict"], "FORWARDED");
    assert_eq!(flow(allowed)["policy_match_type"], 2, "L3_L4: the rule has a peer and ports");
    assert_eq!(policies(allowed, "ingress_allowed_by"), ["x/allow-b"]);
    // Egress of x/a is not enforced: its verdict is forwarded with no policy.
    let egress = verdicts_80.iter().find(|l| flow(l)["traffic_direction"] == "EGRESS").unwrap_or_else(|| panic!("egress verdict: {verdicts_80:?}"));
    assert_eq!(flow(egress)["verdict"], "FORWARDED");
    assert!(flow(egress)["policy_match_type"].as_u64().unwrap_or(0) == 0, "{egress}");
    assert!(policies(egress, "egress_allowed_by").is_empty());

    let verdicts_81 = lab.observed(&a_to_b("81", "policy-verdict"));
    let denied = verdicts_81.iter().find(|l| ingress(l)).unwrap_or_else(|| panic!("ingress verdict for a→b:81: {verdicts_81:?}"));
    assert_eq!(flow(denied)["verdict"], "DROPPED");
    assert_eq!(policies(denied, "ingress_denied_by"), ["x/allow-b"]);
    let drops = lab.observed(&a_to_b("81", "drop"));
    assert!(!drops.is_empty(), "denied packets are drop flows");
    for d in &drops {
        // Every one is the datapath's policy drop: the kernel's own record
        // of it (reason TC_INGRESS) is not reported a second time.
        assert_eq!(flow(d)["verdict"], "DROPPED", "{d}");
        assert_eq!(flow(d)["drop_reason_desc"], "POLICY_DENIED", "{d}");
        assert_eq!(policies(d, "ingress_denied_by"), ["x/allow-b"], "{d}");
        assert!(ingress(d), "{d}");
    }
    // Every retransmitted SYN is dropped and reported, none reaches b.
    let delivered = lab.observed(&a_to_b("81", "trace"));
    assert!(!delivered.iter().any(|l| flow(l)["trace_observation_point"] == "TO_ENDPOINT"), "{delivered:?}");
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
    assert!(lab.probe("x/a", "x/b", 81, "TCP"), "audit mode drops nothing");
    let between = ["--from-pod", "x/a", "--to-pod", "x/b", "--to-port", "81"];
    let verdicts = lab.wait_flows("a→b:81's ingress verdict", &[&between[..], &["-t", "policy-verdict"]].concat(), |f| f.iter().any(ingress));
    let v = verdicts.iter().find(|l| ingress(l)).expect("the ingress verdict");
    assert_eq!(flow(v)["verdict"], "AUDIT", "{v}");
    assert_eq!(policies(v, "ingress_denied_by"), ["x/allow-b"]);
    assert!(lab.observed(&[&between[..], &["--verdict", "DROPPED"]].concat()).is_empty(), "audit mode dropped a→b:81");
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
    let between = ["--from-pod", "x/c", "--to-pod", "x/b", "--to-port", "5201", "--verdict", "DROPPED"];
    let cut = lab.wait_flows("the cut connection's drops", &between, |f| !f.is_empty());
    for d in &cut {
        assert_eq!(flow(d)["drop_reason_desc"], "POLICY_DENIED", "{d}");
        assert_eq!(policies(d, "ingress_denied_by"), ["x/cut"], "{d}");
    }
    // Its data stopped: the last intervals moved (almost) nothing.
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if let Some(intervals) = report["intervals"].as_array() {
        let last = intervals.last().unwrap();
        assert!(last["sum"]["bytes"].as_u64().unwrap_or(0) < 1_000_000, "data still flows after the cut: {last}");
    }
    assert!(changed_at.elapsed() < Duration::from_secs(10));
}
