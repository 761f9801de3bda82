//! The collector's metrics endpoint: Hubble-compatible metrics whose policy
//! drop counts equal what the datapath itself counted, `promtool check
//! metrics`, health endpoints, and bad metric options.

use std::io::Write as _;
use std::time::Duration;

use sightline_e2e::{Lab, http_get, require_root, sightline, write_temp, xyz_manifests};

/// Sum of the samples of `metric` whose labels contain every `key="value"` in `with`.
fn sum(text: &str, metric: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn label_names(text: &str, metric: &str) -> Vec<String> {
    let line = text.lines().find(|l| l.starts_with(&format!("{metric}{{"))).unwrap_or_else(|| panic!("no {metric} sample"));
    let inner = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
    inner.split("\",").map(|kv| kv.split('=').next().unwrap().trim_matches(',').to_owned()).collect()
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn metrics_count_what_the_datapath_dropped() {
    if !require_root() {
        return;
    }
    let lab = Lab::up(
        "e2e-metrics",
        &xyz_manifests(),
        &["--metrics", "flow:sourceContext=pod;destinationContext=pod,drop:sourceContext=namespace;destinationContext=pod,tcp,policy,port-distribution,icmp,flows-to-world"],
    );
    let addr = lab.status()["nodes"][0]["collector"]["metrics"].as_str().expect("metrics address").to_owned();
    let policy = write_temp(
        "metrics-only-80.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-80, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - ports: [{port: 80}]\n",
    );
    assert!(sightline(&["lab", "apply", "--name", &lab.name, "-f", policy.to_str().unwrap()]).status.success());
    assert!(lab.probe("x/a", "x/b", 80, "TCP"));
    let (code, before) = http_get(&addr, "/metrics", None);
    assert_eq!(code, 200);

    const DENIED: usize = 5;
    for _ in 0..DENIED {
        assert!(!lab.probe("x/a", "x/b", 81, "TCP"));
    }
    // Nobody listens on 9999 in x/c: its kernel drops the SYN (NO_SOCKET).
    assert!(!lab.probe("x/a", "x/c", 9999, "TCP"));

    // Hubble's drop counter grows by exactly what the datapath counted.
    let hubble = |t: &str| sum(t, "hubble_drop_total", &["reason=\"POLICY_DENIED\""]);
    let kernel = |t: &str| sum(t, "sightline_datapath_policy_denied_packets_total", &[]);
    // Until every counter below has taken the probes in (the pipeline
    // counts as it drains the ring buffer); then the assertions say what
    // is wrong, if anything still is.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        let (_, after) = http_get(&addr, "/metrics", None);
        let kernel_delta = kernel(&after) - kernel(&before);
        let settled = kernel_delta >= DENIED as f64
            && hubble(&after) - hubble(&before) == kernel_delta
            && sum(&after, "hubble_policy_verdicts_total", &["action=\"dropped\""]) >= DENIED as f64
            && sum(&after, "sightline_endpoint_policy_verdicts_total", &["endpoint=\"x/b\"", "action=\"denied\""]) >= DENIED as f64
            && sum(&after, "sightline_datapath_kernel_drops_total", &["reason=\"NO_SOCKET\""])
                > sum(&before, "sightline_datapath_kernel_drops_total", &["reason=\"NO_SOCKET\""]);
        if settled || std::time::Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (hubble_delta, kernel_delta) = (hubble(&after) - hubble(&before), kernel(&after) - kernel(&before));
    assert!(kernel_delta >= DENIED as f64, "{DENIED} denied connections, the datapath counted {kernel_delta}");
    assert_eq!(hubble_delta, kernel_delta, "hubble_drop_total{{POLICY_DENIED}} grows by what the datapath dropped");
    // Per-policy accounting of our own: the denying policy's drop counter
    // grows by the same amount; its allowed and denied connections are
    // counted per policy and per endpoint.
    // … and so does the kernel's per-reason, per-direction breakdown, with
    // the bytes of those packets.
    let by_reason = |t: &str, metric: &str| sum(t, metric, &["reason=\"POLICY_DENIED\"", "direction=\"ingress\""]);
    assert_eq!(by_reason(&after, "sightline_datapath_dropped_packets_total") - by_reason(&before, "sightline_datapath_dropped_packets_total"), kernel_delta);
    let dropped_bytes = by_reason(&after, "sightline_datapath_dropped_bytes_total") - by_reason(&before, "sightline_datapath_dropped_bytes_total");
    assert!(dropped_bytes >= 40.0 * kernel_delta, "{kernel_delta} dropped packets of {dropped_bytes} bytes");
    assert!(sum(&after, "sightline_datapath_forwarded_packets_total", &["direction=\"egress\""]) > 0.0);
    assert!(sum(&after, "sightline_datapath_forwarded_bytes_total", &["direction=\"egress\""]) > 0.0);
    let per_policy = |t: &str| sum(t, "sightline_policy_dropped_packets_total", &["policy=\"only-80\"", "namespace=\"x\"", "direction=\"ingress\"", "endpoint=\"x/b\""]);
    assert_eq!(per_policy(&after) - per_policy(&before), kernel_delta);
    assert!(sum(&after, "sightline_policy_verdicts_total", &["policy=\"only-80\"", "action=\"allowed\"", "match=\"l4-only\""]) >= 1.0);
    assert!(sum(&after, "sightline_policy_verdicts_total", &["policy=\"only-80\"", "action=\"denied\""]) >= DENIED as f64);
    assert!(sum(&after, "sightline_endpoint_policy_verdicts_total", &["endpoint=\"x/b\"", "action=\"denied\""]) >= DENIED as f64);
    // … and the policy handler saw the denied verdicts.
    assert!(sum(&after, "hubble_policy_verdicts_total", &["action=\"dropped\""]) >= DENIED as f64);
    assert_eq!(label_names(&after, "hubble_policy_verdicts_total"), ["direction", "match", "action"]);
    // Hubble's names, label names and order.
    assert_eq!(label_names(&after, "hubble_flows_processed_total"), ["protocol", "type", "subtype", "verdict", "source", "destination"]);
    assert_eq!(label_names(&after, "hubble_drop_total"), ["source", "destination", "reason", "protocol"]);
    assert!(sum(&after, "hubble_flows_processed_total", &["source=\"x/a\"", "destination=\"x/b\"", "subtype=\"to-endpoint\""]) > 0.0);
    assert!(sum(&after, "hubble_drop_total", &["source=\"x\"", "destination=\"x/b\"", "protocol=\"TCP\""]) >= DENIED as f64);
    assert!(sum(&after, "hubble_tcp_flags_total", &["flag=\"SYN\"", "family=\"IPv4\""]) > 0.0);
    assert!(after.contains("hubble_lost_events_total{source=\"perf_event_ring_buffer\"}"));
    assert!(sum(&after, "sightline_endpoints", &[]) == 9.0);
    assert!(sum(&after, "sightline_identities", &[]) >= 3.0, "x, y, z pods have identities");
    // Kernel drops by the kernel's reason, with their bytes.
    let no_socket = |metric: &str| sum(&after, metric, &["reason=\"NO_SOCKET\""]) - sum(&before, metric, &["reason=\"NO_SOCKET\""]);
    assert!(no_socket("sightline_datapath_kernel_drops_total") >= 1.0, "the SYN to 9999");
    assert!(no_socket("sightline_datapath_kernel_dropped_bytes_total") >= 40.0);
    // Map fill (read every few seconds): 9 endpoints, and capacities.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut text = after.clone();
    while sum(&text, "sightline_bpf_map_entries", &["map=\"ENDPOINTS\""]) != 9.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        text = http_get(&addr, "/metrics", None).1;
    }
    assert_eq!(sum(&text, "sightline_bpf_map_entries", &["map=\"ENDPOINTS\""]), 9.0);
    assert!(sum(&text, "sightline_bpf_map_entries", &["map=\"IPCACHE\""]) >= 9.0);
    assert!(sum(&text, "sightline_bpf_map_entries", &["map=\"POLICY\""]) >= 1.0, "only-80 is programmed");
    assert_eq!(sum(&text, "sightline_bpf_map_capacity", &["map=\"CT\""]), 65536.0);
    // Conntrack garbage collection (every 5 s) is timed and counted.
    let collections = "sightline_conntrack_gc_duration_seconds_count";
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while sum(&text, collections, &[]) < 1.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        text = http_get(&addr, "/metrics", None).1;
    }
    assert!(sum(&text, collections, &[]) >= 1.0, "no garbage collection was timed");
    assert!(text.contains("\nsightline_conntrack_gc_deleted_total "), "no count of what garbage collection deleted");
    // Pipeline throughput and latency histograms saw the drains.
    for histogram in ["sightline_pipeline_delay_seconds", "sightline_pipeline_batch_duration_seconds", "sightline_pipeline_batch_events"] {
        assert!(sum(&after, &format!("{histogram}_count"), &[]) > 0.0, "{histogram} observed nothing");
        assert!(after.contains(&format!("{histogram}_bucket{{le=\"+Inf\"}}")), "{histogram} has no +Inf bucket");
    }

    // promtool accepts the output.
    if std::path::Path::new("/usr/bin/promtool").exists() {
        let mut child = std::process::Command::new("/usr/bin/promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(after.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "promtool is not installed, and CI=true");
        eprintln!("promtool not installed: `promtool check metrics` left out");
    }
    // OpenMetrics when asked for it.
    let (_, om) = http_get(&addr, "/metrics", Some("application/openmetrics-text; version=1.0.0"));
    assert!(om.trim_end().ends_with("# EOF"));
    // Health.
    assert_eq!(http_get(&addr, "/healthz", None).0, 200);
    assert_eq!(http_get(&addr, "/readyz", None).0, 200);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn unknown_metric_options_are_refused_with_the_valid_ones() {
    if !require_root() {
        return;
    }
    for (bad, needle) in [("nope", "flow"), ("flow:sourceContext=planet", "pod-short"), ("drop:labelsContext=shoe", "source_namespace")] {
        let file = write_temp("metrics-bad.yaml", &xyz_manifests());
        let out = sightline(&["lab", "up", "--name", "e2e-metrics-bad", "--metrics", bad, "-f", file.to_str().unwrap()]);
        assert!(!out.status.success(), "{bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{bad}: the error lists the valid values: {err}");
        assert!(sightline_e2e::netns_names().iter().all(|n| !n.starts_with("e2e-metrics-bad.")));
    }
}

#[test]
#[cfg_attr(
    not(all(sightline_root, sightline_prometheus)),
    ignore = "needs root (network namespaces, eBPF) and Debian's prometheus (scripts/setup.sh installs it)"
)]
fn lab_prometheus_scrapes_the_collectors() {
    if !require_root() {
        return;
    }
    assert!(
        std::path::Path::new("/usr/bin/prometheus").exists(),
        "Debian's prometheus is not installed (scripts/setup.sh installs it)"
    );
    let prometheus;
    {
        let lab = Lab::up("e2e-prom", &xyz_manifests(), &["--prometheus"]);
        prometheus = lab.status()["prometheus"].as_str().expect("the lab reports its Prometheus").to_owned();
        let metrics = lab.status()["nodes"][0]["collector"]["metrics"].as_str().unwrap().to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut up = String::new();
        while std::time::Instant::now() < deadline {
            up = http_get(&prometheus, "/api/v1/query?query=up%7Bjob%3D%22sightline%22%7D", None).1;
            if up.contains(&format!("\"instance\":\"{metrics}\"")) && up.contains("\"1\"]") {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(up.contains("\"1\"]"), "Prometheus scrapes the collector: {up}");
    }
    // `lab down` stopped it.
    assert!(std::net::TcpStream::connect(&prometheus).is_err(), "Prometheus still answers after lab down");
}
