//! The Grafana dashboards in `dashboards/`: every query of every panel,
//! evaluated by a real Prometheus scraping a lab's collector, returns data.
//!
//! Grafana is not needed: the test reads the dashboard JSON, substitutes
//! Grafana's variables (`$__rate_interval` → `1m`, `$instance` → `.*`) and
//! asks Prometheus (`/usr/bin/prometheus`, loopback only) for each
//! expression. Skipped, with a message, without root or without Prometheus.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sightline_e2e::{Lab, require_root, sightline, write_temp, xyz_manifests};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// The handlers the flows dashboard needs (dashboards/README.md lists them).
const SPEC: &str = "flow:sourceContext=pod;destinationContext=pod,drop:sourceContext=pod;destinationContext=pod,tcp,policy,port-distribution,icmp,flows-to-world";

const DASHBOARDS: [&str; 3] = ["sightline-flows.json", "sightline-datapath.json", "sightline-export.json"];

/// `GET path` on a loopback address with HTTP/1.0 (no chunked encoding);
/// (status code, body).
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Grafana's variables, as the dashboards use them, replaced by what a
/// one-minute Prometheus query needs.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1m")
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
        .replace("${exporter}", ".*")
        .replace("$exporter", ".*")
}

/// (dashboard file, panel title, expression) for every target of every
/// panel, rows' nested panels included; panics on malformed dashboards.
fn dashboard_queries() -> Vec<(String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut queries = Vec::new();
    for file in DASHBOARDS {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let d: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
        assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{file}: schemaVersion");
        assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "{file}: uid");
        assert!(
            d["__inputs"].as_array().is_some_and(|i| i.iter().any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus")),
            "{file}: __inputs declares DS_PROMETHEUS"
        );
        let vars = d["templating"]["list"].as_array().unwrap_or_else(|| panic!("{file}: templating.list"));
        assert!(
            vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
            "{file}: a Prometheus `datasource` variable"
        );
        let mut panels: Vec<Value> = d["panels"].as_array().unwrap_or_else(|| panic!("{file}: panels")).clone();
        let mut ids = std::collections::BTreeSet::new();
        let mut i = 0;
        while i < panels.len() {
            let p = panels[i].clone();
            i += 1;
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            assert!(ids.insert(p["id"].as_u64().unwrap_or_else(|| panic!("{file}: panel {title} has no id"))), "{file}: duplicate panel id in {title}");
            if p["type"] == "row" {
                panels.extend(p["panels"].as_array().cloned().unwrap_or_default());
                continue;
            }
            assert!(["timeseries", "stat", "table"].contains(&p["type"].as_str().unwrap_or("")), "{file}: panel {title} type {}", p["type"]);
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: panel {title} uses the datasource variable");
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{file}: panel {title} has no targets"));
            assert!(!targets.is_empty(), "{file}: panel {title} has no targets");
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{file}: panel {title}: a target without expr"));
                queries.push((file.to_owned(), title.clone(), expr.to_owned()));
            }
        }
        // Query variables: `label_values(METRIC, LABEL)` needs METRIC to exist.
        for v in vars.iter().filter(|v| v["type"] == "query") {
            let q = v["query"]["query"].as_str().or_else(|| v["query"].as_str()).unwrap_or_default();
            let metric = q.strip_prefix("label_values(").and_then(|r| r.split(',').next()).unwrap_or_else(|| panic!("{file}: variable query {q}"));
            queries.push((file.to_owned(), format!("variable {}", v["name"]), metric.trim().to_owned()));
        }
    }
    queries
}

/// Prometheus as a child process and its scratch directory; killed and
/// removed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: String,
}

impl Prometheus {
    fn start(scrape: &[&str]) -> Self {
        let targets = scrape.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        let dir = std::env::temp_dir().join(format!("sightline-e2e-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: sightline\n  static_configs:\n  - targets: [{targets}]\n"
            ),
        )
        .expect("prometheus.yml");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("port").port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-lifecycle")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        Self { child, dir, addr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Waits until the scrape target is healthy.
    fn wait_until_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            if let Ok((200, body)) = http_get(&self.addr, "/api/v1/targets") {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let targets = v["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
                if !targets.is_empty() && targets.iter().all(|t| t["health"] == "up") {
                    return;
                }
                last = body;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the collector's target is not up after 20 s: {last}\n{}", self.log());
    }

    /// `/api/v1/query`: Ok(the result vector's samples) or Err(why not).
    fn samples(&self, expr: &str) -> Result<Vec<Value>, String> {
        let (code, body) = http_get(&self.addr, &format!("/api/v1/query?query={}", url_encode(expr))).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {code}, not JSON: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {code}: {} {}", v["errorType"], v["error"]));
        }
        match v["data"]["resultType"].as_str() {
            Some("vector") => Ok(v["data"]["result"].as_array().cloned().unwrap_or_default()),
            other => Err(format!("result type {other:?}, not a vector")),
        }
    }

    /// Ok(number of series) or Err(why not).
    fn query(&self, expr: &str) -> Result<usize, String> {
        self.samples(expr).map(|s| s.len())
    }

    /// The value of a query that returns one sample.
    fn value(&self, expr: &str) -> f64 {
        let samples = self.samples(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert_eq!(samples.len(), 1, "{expr}: {samples:?}");
        samples[0]["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{expr}: {samples:?}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `lab probe` with a short timeout; true when connected.
fn probe(lab: &Lab, from: &str, to: &str, port: u16, protocol: &str) -> bool {
    let out = sightline(&["lab", "probe", from, to, "--port", &port.to_string(), "--protocol", protocol, "--timeout-ms", "300", "--name", &lab.name]);
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("probe {from} → {to}:{port}/{protocol} errored: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Allowed and denied traffic, a closed port and a world destination, so
/// that every handler and every dashboard series has something to count.
fn traffic(lab: &Lab) {
    for _ in 0..3 {
        assert!(probe(lab, "x/a", "x/b", 80, "TCP"), "x/a → x/b:80/TCP is allowed");
        assert!(probe(lab, "y/a", "z/c", 80, "UDP"), "y/a → z/c:80/UDP is allowed");
        assert!(!probe(lab, "x/a", "x/b", 81, "TCP"), "x/a → x/b:81/TCP is denied");
        assert!(!probe(lab, "y/a", "x/b", 80, "UDP"), "y/a → x/b:80/UDP is denied (the policy allows TCP only)");
        // Nothing listens on 82: the pod answers with a reset.
        assert!(!probe(lab, "x/a", "x/c", 82, "TCP"));
        // A "world" address (TEST-NET-1) that lives inside the lab: the test
        // puts it on the node namespace's loopback, outside every pod CIDR
        // and the ipcache, so traffic to it is to-world and never leaves the
        // lab's namespaces. Nothing listens on 80 there: the node resets it.
        let _ = probe(lab, "y/c", "192.0.2.10", 80, "TCP");
        // ICMP between pods (echo request and reply).
        let ip = lab.pod_ip("y/b");
        let _ = lab.exec("x/a", &["ping", "-c", "2", "-i", "0.2", "-W", "1", &ip]);
    }
}

#[test]
#[cfg_attr(
    not(all(sightline_root, sightline_prometheus)),
    ignore = "needs root (network namespaces, eBPF) and Debian's prometheus (scripts/setup.sh installs it)"
)]
fn every_dashboard_query_returns_data_from_prometheus() {
    if !require_root() {
        return;
    }
    assert!(Path::new(PROMETHEUS).exists(), "{PROMETHEUS} is not installed (scripts/setup.sh installs it)");
    let started = Instant::now();
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "the dashboards hold {} queries", queries.len());

    // The relay exports to a file, so that the export dashboard has data.
    let flow_log = std::env::temp_dir().join(format!("sightline-e2e-dash-flows-{}.log", std::process::id()));
    let export = write_temp(
        "dash-export.yaml",
        &format!("exporters:\n  - name: flow-log\n    sink:\n      file: {{path: {}, maxBackups: 0}}\n", flow_log.display()),
    );
    let lab = Lab::up("e2e-dash", &xyz_manifests(), &["--metrics", SPEC, "--export-config", export.to_str().expect("utf-8 path")]);
    let added = std::process::Command::new("ip")
        .args(["-n", "e2e-dash.node-1", "addr", "add", "192.0.2.10/32", "dev", "lo"])
        .status()
        .expect("ip addr add");
    assert!(added.success(), "a world address inside the lab's node namespace");
    let metrics = lab.status()["nodes"][0]["collector"]["metrics"].as_str().expect("metrics address").to_owned();
    let policy = write_temp(
        "dash-only-80.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-80, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - ports: [{port: 80}]\n",
    );
    let out = sightline(&["lab", "apply", "--name", &lab.name, "-f", policy.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "lab apply: {}", String::from_utf8_lossy(&out.stderr));
    traffic(&lab);

    let relay_metrics = lab.status()["relay"]["metrics"].as_str().expect("relay metrics address").to_owned();
    let mut prometheus = Prometheus::start(&[&metrics, &relay_metrics]);
    prometheus.wait_until_up();
    traffic(&lab);

    // Every panel's query has data once Prometheus has scraped the traffic
    // (rates need two scrapes after it): polled, then what still fails is
    // reported.
    let check = |prometheus: &Prometheus| {
        let mut failures = Vec::new();
        for (file, title, expr) in &queries {
            let q = substitute(expr);
            if q.contains('$') {
                failures.push(format!("{file} / {title}: unsubstituted variable in {q}"));
                continue;
            }
            match prometheus.query(&q) {
                Ok(0) => failures.push(format!("{file} / {title}: no data for {q}")),
                Ok(_) => {}
                Err(e) => failures.push(format!("{file} / {title}: {q}: {e}")),
            }
        }
        failures
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let failures = loop {
        let failures = check(&prometheus);
        if failures.is_empty() || Instant::now() > deadline {
            break failures;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(failures.is_empty(), "{} of {} dashboard queries failed:\n{}", failures.len(), queries.len(), failures.join("\n"));

    // Exact values, as Prometheus has them: every policy drop in this lab is
    // only-80's (x/b), so Hubble's drop counter, the per-policy counter and
    // the kernel's per-reason counter all equal what the datapath counted.
    // The counters are scraped from different sources (the pipeline's, the
    // kernel's read every few seconds): polled until one scrape has them all
    // in, then compared.
    let exprs = [
        r#"sum(hubble_drop_total{reason="POLICY_DENIED"})"#,
        r#"sum(sightline_policy_dropped_packets_total{policy="only-80",namespace="x",endpoint="x/b"})"#,
        r#"sum(sightline_datapath_dropped_packets_total{reason="POLICY_DENIED",direction="ingress"})"#,
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let kernel = loop {
        let kernel = prometheus.value("sum(sightline_datapath_policy_denied_packets_total)");
        if exprs.iter().all(|e| prometheus.value(e) == kernel) || Instant::now() > deadline {
            break kernel;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(kernel >= 6.0, "6 denied probes, the datapath counted {kernel} packets");
    for expr in exprs {
        assert_eq!(prometheus.value(expr), kernel, "{expr} equals what the datapath dropped");
    }
    // Every flow the relay saw was written to the flow log.
    let sent = prometheus.value(r#"sum(sightline_export_records_total{exporter="flow-log",outcome="sent"})"#);
    assert!(sent > 0.0, "the relay exported {sent} records");
    drop(lab);
    let _ = std::fs::remove_file(&flow_log);
    eprintln!("{} dashboard queries returned data ({:.1} s)", queries.len(), started.elapsed().as_secs_f64());
}
