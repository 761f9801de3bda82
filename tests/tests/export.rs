//! Export through a lab's relay, under faults: every flow a GetFlows
//! client saw on the relay reaches each sink at least once — a file, a
//! local Azure Monitor Logs Ingestion stand-in (HTTPS with a test CA,
//! Entra ID client-secret tokens) and an OTLP receiver — while Azure
//! answers a 429 storm and 503s, the OTLP receiver is down for twenty
//! seconds, and the relay is killed (`kill -9`) and restarted in the middle.
//! Duplicates are counted and reported (delivery is at least once).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sightline_e2e::{Lab, require_root, sightline_ok, two_pods};
use sightline_export::encode::azure::COLUMNS;
use sightline_proto::observer::observer_client::ObserverClient;
use sightline_proto::observer::{GetFlowsRequest, get_flows_response::ResponseTypes};
use sightline_standins::azure::{AzureStandin, ColumnKind, StandinOptions};
use sightline_standins::otlp::OtlpReceiver;
use sightline_standins::tls::TestCa;

const LAB: &str = "e2e-export";

/// Polls `cond` every 200 ms until it holds or `within` passes.
fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Follows the relay's flows, reconnecting (with `since` the last flow's
/// time) when the relay goes away; collects the UUIDs it saw.
fn follow_relay(
    access: sightline_e2e::GrpcAccess,
    relay: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let mut since: Option<prost_types::Timestamp> = None;
            while !stop.load(Ordering::Relaxed) {
                let Ok(channel) = access.try_channel(&relay).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut client = ObserverClient::new(channel);
                let req = GetFlowsRequest { follow: true, since, ..GetFlowsRequest::default() };
                let Ok(resp) = client.get_flows(req).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut stream = resp.into_inner();
                loop {
                    let next = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match next {
                        Err(_) => {}
                        Ok(Ok(Some(r))) => {
                            if let Some(ResponseTypes::Flow(f)) = r.response_types {
                                since = f.time.or(since);
                                seen.lock().expect("seen").insert(f.uuid);
                            }
                        }
                        Ok(_) => break,
                    }
                }
            }
        });
    })
}

/// UUIDs in a flow log and its rotated backups (`<name>-<time>.log`).
fn file_uuids(path: &std::path::Path) -> Vec<String> {
    let dir = path.parent().expect("folder");
    let stem = path.file_stem().and_then(|s| s.to_str()).expect("file name");
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).expect("folder").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(stem) && name.ends_with(".log") {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["flow"]["uuid"].as_str().map(str::to_owned))
        .collect()
}

fn azure_uuids(azure: &AzureStandin) -> Vec<String> {
    azure.rows().iter().filter_map(|r| r["UUID"].as_str().map(str::to_owned)).collect()
}

fn otlp_uuids(otlp: &OtlpReceiver) -> Vec<String> {
    otlp.records()
        .iter()
        .filter_map(|r| {
            r.record.attributes.iter().find(|kv| kv.key == "sightline.flow.uuid").and_then(|kv| {
                match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                }
            })
        })
        .collect()
}

/// (missing, duplicates) of `got` against `want`.
fn compare(want: &BTreeSet<String>, got: &[String]) -> (Vec<String>, usize) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for u in got {
        *counts.entry(u.as_str()).or_default() += 1;
    }
    let missing = want.iter().filter(|u| !counts.contains_key(u.as_str())).cloned().collect();
    let duplicates = counts.values().filter(|&&n| n > 1).map(|n| n - 1).sum();
    (missing, duplicates)
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn every_flow_reaches_every_sink_through_faults_and_a_relay_restart() {
    if !require_root() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("sightline-e2e-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _remove = RemoveDir(dir.clone());
    let ca = TestCa::new("sightline e2e CA").expect("CA");
    let ca_file = ca.write_ca(&dir).expect("CA file");
    let columns: Vec<(String, ColumnKind)> =
        COLUMNS.iter().map(|(n, t)| ((*n).to_owned(), ColumnKind::from_arm_name(t.arm_name()).expect("kind"))).collect();
    let opts = StandinOptions::new(columns);
    let secret_file = dir.join("client-secret");
    std::fs::write(&secret_file, &opts.client_secret).expect("secret file");
    let azure = rt.block_on(AzureStandin::start(&ca, opts.clone())).expect("Azure stand-in");
    let otlp = rt.block_on(OtlpReceiver::start(None)).expect("OTLP receiver");
    let flows_file = dir.join("flows.log");
    let config = format!(
        "exporters:\n\
         \x20 - name: file\n\
         \x20   spool: {{path: {spool_file}}}\n\
         \x20   sink:\n\
         \x20     file: {{path: {flows}}}\n\
         \x20 - name: azure\n\
         \x20   sink:\n\
         \x20     azureMonitor:\n\
         \x20       endpoint: {endpoint}\n\
         \x20       dcrImmutableId: {dcr}\n\
         \x20       stream: {stream}\n\
         \x20       caFile: {ca}\n\
         \x20       auth:\n\
         \x20         clientSecret: {{tenantId: {tenant}, clientId: {client}, secretFile: {secret}}}\n\
         \x20         authorityHost: {authority}\n\
         \x20 - name: otel\n\
         \x20   sink:\n\
         \x20     otlp: {{endpoint: {otlp}, protocol: grpc}}\n",
        spool_file = dir.join("spool-file").display(),
        flows = flows_file.display(),
        endpoint = azure.endpoint(),
        dcr = opts.dcr_immutable_id,
        stream = opts.stream,
        ca = ca_file.display(),
        tenant = opts.tenant_id,
        client = opts.client_id,
        secret = secret_file.display(),
        authority = azure.authority_host(),
        otlp = otlp.grpc_endpoint(),
    );
    let config_file = dir.join("export.yaml");
    std::fs::write(&config_file, config).expect("export config");

    let lab = Lab::up(LAB, &two_pods(), &["--export-config", config_file.to_str().expect("utf-8")]);
    let status = lab.status();
    let relay = status["relay"]["grpc"].as_str().expect("relay address").to_owned();
    assert!(status["relay"]["metrics"].as_str().is_some(), "lab status shows relay.metrics");

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let client = follow_relay(lab.grpc(), relay.clone(), Arc::clone(&stop), Arc::clone(&seen));
    // Traffic: a connection from t/a to t/b every few tens of milliseconds.
    let traffic = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = sightline_e2e::sightline(&["lab", "probe", "t/a", "t/b", "--port", "80", "--name", LAB]);
            }
        })
    };
    let started = Instant::now();
    let at = |secs: u64| {
        let when = started + Duration::from_secs(secs);
        if let Some(d) = when.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    };
    at(4);
    azure.respond_next(6, 429, Some(Duration::from_secs(1)));
    at(8);
    azure.respond_next(3, 503, Some(Duration::from_secs(1)));
    rt.block_on(otlp.set_down(true)).expect("OTLP down");
    at(12);
    // The relay dies without a chance to flush anything, and comes back.
    let pid = lab.status()["relay"]["pid"].as_u64().expect("relay pid");
    // SAFETY: plain kill(2) of the lab's relay.
    assert_eq!(unsafe { libc::kill(i32::try_from(pid).expect("pid"), libc::SIGKILL) }, 0);
    at(15);
    sightline_ok(&["lab", "restart", "relay", "--name", LAB]);
    at(32);
    rt.block_on(otlp.set_down(false)).expect("OTLP up");
    at(36);
    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic");
    client.join().expect("client");

    let want = seen.lock().expect("seen").clone();
    assert!(want.len() > 100, "the client saw only {} flows", want.len());
    let mut report = Vec::new();
    for (sink, get) in [
        ("file", Box::new(|| file_uuids(&flows_file)) as Box<dyn Fn() -> Vec<String>>),
        ("azure", Box::new(|| azure_uuids(&azure))),
        ("otlp", Box::new(|| otlp_uuids(&otlp))),
    ] {
        let arrived = wait_until(Duration::from_secs(60), || compare(&want, &get()).0.is_empty());
        let (missing, duplicates) = compare(&want, &get());
        assert!(arrived, "{sink}: {} of {} flows seen on the relay never arrived, e.g. {:?}", missing.len(), want.len(), missing.first());
        report.push(format!("{sink}: {} flows, {duplicates} duplicates", want.len()));
    }
    println!("export through faults and a relay restart: {}", report.join("; "));
    assert_eq!(azure.early_retries(), 0, "a retry came before the Retry-After the stand-in announced");
    let codes: Vec<u16> = azure.requests().iter().map(|r| r.status).collect();
    assert!(codes.contains(&429) && codes.contains(&503) && codes.contains(&204), "Azure answered {codes:?}");
    drop(lab);
}

/// Removes a folder when the test ends, passed or not.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Node-local export (`sightline collector --export-config`, as Hubble's
/// exporter runs on each agent): the collector writes its own flows,
/// filtered, to a file; they are exactly the flows GetFlows returns for the
/// same filter.
#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn a_collector_exports_its_own_flows() {
    if !require_root() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sightline-e2e-node-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _remove = RemoveDir(dir.clone());
    let log = dir.join("node-flows.log");
    let config = dir.join("node-export.yaml");
    std::fs::write(
        &config,
        format!(
            "exporters:\n  - name: to-b\n    include:\n      - destination_pod: [t/b]\n    sink:\n      file: {{path: {}}}\n",
            log.display()
        ),
    )
    .expect("config");
    let lab = Lab::up("e2e-node-export", &two_pods(), &["--node-export-config", config.to_str().expect("utf-8")]);
    for _ in 0..5 {
        sightline_ok(&["lab", "probe", "t/a", "t/b", "--port", "80", "--name", &lab.name]);
    }
    let grpc = lab.status()["nodes"][0]["collector"]["grpc"].as_str().expect("collector gRPC").to_owned();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let expected: BTreeSet<String> = rt.block_on(async {
        let mut c = ObserverClient::new(lab.grpc().channel(&grpc).await);
        let filter = sightline_proto::flow::FlowFilter { destination_pod: vec!["t/b".into()], ..Default::default() };
        let mut s = c
            .get_flows(GetFlowsRequest { whitelist: vec![filter], ..GetFlowsRequest::default() })
            .await
            .expect("GetFlows")
            .into_inner();
        let mut out = BTreeSet::new();
        while let Some(r) = s.message().await.expect("stream") {
            if let Some(ResponseTypes::Flow(f)) = r.response_types {
                out.insert(f.uuid);
            }
        }
        out
    });
    assert!(expected.len() >= 5, "GetFlows returned {} flows to t/b", expected.len());
    let arrived = wait_until(Duration::from_secs(20), || {
        let got: BTreeSet<String> = file_uuids(&log).into_iter().collect();
        expected.is_subset(&got)
    });
    let got: BTreeSet<String> = file_uuids(&log).into_iter().collect();
    assert!(arrived, "{} of {} flows to t/b missing from the node's flow log", expected.difference(&got).count(), expected.len());
    let text = std::fs::read_to_string(&log).expect("flow log");
    // The sink may be writing: a last line without its newline is not whole yet.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    for line in complete.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(v["flow"]["destination"]["pod_name"], "b", "the include filter let through {line}");
        assert_eq!(v["node_name"], "node-1");
    }
}
