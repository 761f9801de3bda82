//! What exporting a flow costs the relay, per flow, on one core:
//!
//! - `encode/getflows_protobuf`: prost-encoding a `GetFlowsResponse` that
//!   carries the flow — what serving it over GetFlows costs; the baseline
//!   every other figure is compared with;
//! - `encode/azure_rows`: the Azure Monitor row of each flow, then the rows
//!   joined in JSON arrays of at most one request each and gzipped with
//!   flate2's default level, as the Logs Ingestion sink sends them;
//!   `encode/azure_rows_gzip_fast` the same with `Compression::fast()`, and
//!   `encode/azure_rows_encode_only` without the arrays and gzip;
//! - `encode/otlp_log_records`: the OpenTelemetry `LogRecord` of each flow
//!   as protobuf (what the OTLP exporter spools), and
//!   `encode/otlp_log_records_via_prost` the same bytes through a built
//!   `LogRecord` and prost;
//! - `encode/file_json_lines`: Hubble's export JSON line of each flow;
//! - `pipeline/*`: `Pipeline::push` of a batch of merged responses (the
//!   relay's exporter front half: filters, field mask, aggregation, the
//!   Azure encoder, one spool append per batch) into an in-memory spool
//!   (`push_*`), and into an on-disk one (`push_disk_spool`).
//!
//! The flows are what the collector makes: compact records of a cluster of
//! 300 pods (labels, workloads through pod names, policies, connection
//! counters, interfaces) turned into `flow.Flow` by `sightline_flow::to_proto`,
//! with varied addresses, ports, protocols, verdicts and directions,
//! generated deterministically.
//!
//! The spools are bounded (64 MiB, the size of an exporter's in-memory queue)
//! and stay full once warm: each append drops (frees, or for the disk spool
//! deletes) the oldest segment, which stands in for the acknowledgement that
//! frees records in the relay.
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not
//! wall time: on a machine shared with other work, time spent descheduled
//! does not count (caches and a busy sibling hyperthread still do).
//!
//! After criterion has run, a summary table gives each figure in flows per
//! second and as a ratio to `encode/getflows_protobuf` of the same run (read
//! back from criterion's `estimates.json`).

use std::hint::black_box;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput};
use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message as _;
use sightline_export::encode::Encoder;
use sightline_export::encode::azure::AzureEncoder;
use sightline_export::encode::file::FileEncoder;
use sightline_export::encode::otlp::OtlpEncoder;
use sightline_export::pipeline::{Pipeline, PipelineParts};
use sightline_export::record::{Counts, FlowRecord, Item};
use sightline_export::sink::azure::MAX_REQUEST_BYTES;
use sightline_export::spool::{Spool, SpoolOptions};
use sightline_export::ExportMetrics;
use sightline_flow::{FieldMask, Flow, FlowFilters, PodMeta, Side, to_proto};
use sightline_proto::flow as pb;
use sightline_proto::observer::GetFlowsResponse;
use sightline_proto::observer::get_flows_response::ResponseTypes;

/// Flows per iteration (about a relay feed batch, twice over).
const FLOWS: usize = 1024;
const PODS: u32 = 300;
const NAMESPACES: u32 = 10;
const NODES: u32 = 3;
/// The in-memory queue of an exporter without a spool (`MEMORY_SPOOL_MB`).
const SPOOL_BYTES: u64 = sightline_export::config::MEMORY_SPOOL_MB << 20;
/// 2026-11-26T10:00:00Z: every flow falls in one 30 s aggregation window.
const BASE_NS: i64 = 1_795_600_800_000_000_000;

/// The baseline of the summary.
const BASELINE: (&str, &str) = ("encode", "getflows_protobuf");

/// The benchmark thread's CPU time, in nanoseconds.
struct ThreadCpu;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into a valid location.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }

    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Nanoseconds of CPU time, and elements (flows) per CPU second.
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match typical {
            t if t < 1e3 => (1.0, "ns (CPU)"),
            t if t < 1e6 => (1e-3, "µs (CPU)"),
            t if t < 1e9 => (1e-6, "ms (CPU)"),
            _ => (1e-9, "s (CPU)"),
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(&self, typical: f64, throughput: &Throughput, values: &mut [f64]) -> &'static str {
        let per_iteration = match throughput {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n as f64,
            Throughput::Bits(n) => *n as f64,
            Throughput::ElementsAndBytes { elements, .. } => *elements as f64,
        };
        let rate = per_iteration * 1e9 / typical;
        let (denominator, unit) = match rate {
            r if r < 1e3 => (1.0, "elem/s (CPU)"),
            r if r < 1e6 => (1e3, "Kelem/s (CPU)"),
            _ => (1e6, "Melem/s (CPU)"),
        };
        values.iter_mut().for_each(|v| *v = per_iteration * 1e9 / *v / denominator);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (i / 200) as u8 + 1, (i % 200) as u8 + 2)
}

/// The cluster: pods with their labels, spread over the nodes.
fn pods() -> Vec<Arc<PodMeta>> {
    (0..PODS)
        .map(|i| {
            let namespace = format!("ns{}", i % NAMESPACES);
            let app = format!("app{}", i % 37);
            Arc::new(PodMeta {
                name: format!("{app}-7d9f8b{:04x}-x{:04x}", i % 97, i),
                endpoint_id: (i % 100) as u16 + 1,
                identity: 256 + i % 120,
                labels: Arc::from(vec![
                    format!("k8s:app={app}"),
                    format!("k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={namespace}"),
                    "k8s:io.cilium.k8s.policy.cluster=default".to_owned(),
                    format!("k8s:io.cilium.k8s.policy.serviceaccount={app}"),
                    format!("k8s:io.kubernetes.pod.namespace={namespace}"),
                ]),
                node: format!("node-{}", 1 + i % NODES),
                namespace,
            })
        })
        .collect()
}

/// xorshift64*: deterministic, no randomness crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `n` flows as the collectors serve them, `flow.Flow` with every field
/// Sightline fills.
fn flows(n: usize) -> Vec<(pb::Flow, String)> {
    let pods = pods();
    let world: Arc<[String]> = Arc::from(vec!["reserved:world".to_owned()]);
    let allow: Vec<Arc<[String]>> =
        (0..40).map(|i| Arc::from(vec![format!("ns{}/allow-{i}", i % NAMESPACES), "ns0/allow-dns".to_owned()])).collect();
    let deny: Vec<Arc<[String]>> = (0..NAMESPACES).map(|i| Arc::from(vec![format!("ns{i}/default-deny")])).collect();
    let interfaces: Vec<Arc<str>> = (0..100).map(|i| Arc::from(format!("lxc{i:05}").as_str())).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            let r = rng.next();
            let src = &pods[(r % u64::from(PODS)) as usize];
            let dst = &pods[((r >> 9) % u64::from(PODS)) as usize];
            let to_world = (r >> 18).is_multiple_of(20);
            let protocol = match (r >> 23) % 20 {
                0 => 1,
                1..=3 => 17,
                _ => 6,
            };
            let node = src.node.clone();
            let source = Side {
                ip: IpAddr::V4(pod_ip((r % u64::from(PODS)) as u32)),
                port: if protocol == 1 { 0 } else { 30_000 + (r >> 28) as u16 % 30_000 },
                identity: src.identity,
                pod: Some(Arc::clone(src)),
                identity_labels: None,
            };
            let destination = if to_world {
                Side {
                    ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, (r >> 30) as u8)),
                    port: 443,
                    identity: 2,
                    pod: None,
                    identity_labels: Some(Arc::clone(&world)),
                }
            } else {
                Side {
                    ip: IpAddr::V4(pod_ip(((r >> 9) % u64::from(PODS)) as u32)),
                    port: [80, 443, 53, 8080, 5432][(r >> 33) as usize % 5],
                    identity: dst.identity,
                    pod: Some(Arc::clone(dst)),
                    identity_labels: None,
                }
            };
            let kind = (r >> 36) % 20;
            let dropped = kind < 2;
            let flow = Flow {
                time_ns: BASE_NS + i as i64 * 1_000_000,
                seq: i as u64 + 1,
                source,
                destination,
                verdict: if dropped { 2 } else { 1 },
                drop_reason: if dropped { 133 } else { 0 },
                kernel_drop_reason: 0,
                kernel_drop_reason_name: None,
                event_type: if dropped { 1 } else if kind < 5 { 5 } else { 4 },
                event_sub_type: if dropped { 133 } else { [0, 3, 5][(r >> 41) as usize % 3] },
                trace_observation_point: if dropped { 0 } else { [101, 4, 3][(r >> 43) as usize % 3] },
                trace_reason: [1, 2, 2, 3][(r >> 45) as usize % 4],
                is_reply: if dropped { None } else { Some((r >> 47).is_multiple_of(4)) },
                traffic_direction: [1, 2][(r >> 49) as usize % 2],
                policy_match_type: if kind < 5 { 2 } else { 0 },
                protocol,
                tcp_flags: if protocol == 6 { 0x10 | if (r >> 50).is_multiple_of(8) { 0x02 } else { 0x08 } } else { 0 },
                icmp_type: if protocol == 1 { 8 } else { 0 },
                icmp_code: 0,
                ip_version: 4,
                ifindex: 100 + (r >> 52) as u32 % 100,
                interface: Some(Arc::clone(&interfaces[(r >> 52) as usize % 100])),
                allowed_by: (!dropped && kind < 8).then(|| Arc::clone(&allow[(r >> 55) as usize % 40])),
                denied_by: dropped.then(|| Arc::clone(&deny[(r >> 55) as usize % NAMESPACES as usize])),
                counters: [r % 1000, r % 1_000_000, (r >> 10) % 1000, (r >> 10) % 1_000_000],
                source_service: None,
                destination_service: None,
                source_xlated: None,
            };
            (to_proto(&flow, &node, None), node)
        })
        .collect()
}

/// The flows as the relay's feed hands them to its exporters.
fn responses(flows: &[(pb::Flow, String)]) -> Vec<Arc<GetFlowsResponse>> {
    flows
        .iter()
        .map(|(f, node)| {
            Arc::new(GetFlowsResponse {
                response_types: Some(ResponseTypes::Flow(f.clone())),
                node_name: node.clone(),
                time: f.time,
            })
        })
        .collect()
}

fn record<'a>(flow: &'a pb::Flow, node: &'a str) -> FlowRecord<'a> {
    FlowRecord {
        flow,
        node_name: node,
        time: flow.time.unwrap_or_default(),
        counts: Counts::one(flow.traffic_direction),
        aggregated: false,
    }
}

/// Encodes every flow into `buf`, remembering where each record is (as the
/// pipeline does before its spool append).
fn encode_all(encoder: &mut dyn Encoder, flows: &[(pb::Flow, String)], buf: &mut Vec<u8>, spans: &mut Vec<(usize, usize)>) {
    buf.clear();
    spans.clear();
    for (f, node) in flows {
        let start = buf.len();
        if encoder.encode(&Item::Flow(record(f, node)), buf) {
            spans.push((start, buf.len()));
        }
    }
}

/// The rows as the Azure sink sends them: JSON arrays of at most one
/// request's worth (the delivery loop's batch limit), each gzipped.
/// Returns the compressed bytes.
fn azure_requests(rows: &[u8], spans: &[(usize, usize)], level: Compression, body: &mut Vec<u8>) -> usize {
    // What the delivery loop reads at most per batch for this sink.
    let max_batch = MAX_REQUEST_BYTES - 2 - sightline_export::sink::azure::MAX_BATCH_RECORDS;
    let mut compressed = 0;
    let mut i = 0;
    while i < spans.len() {
        body.clear();
        body.push(b'[');
        let mut payload = 0;
        let mut n = 0;
        while let Some(&(s, e)) = spans.get(i) {
            if n > 0 && payload + (e - s) > max_batch {
                break;
            }
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&rows[s..e]);
            payload += e - s;
            n += 1;
            i += 1;
        }
        body.push(b']');
        let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), level);
        gz.write_all(body).expect("gzip into memory");
        compressed += gz.finish().expect("gzip into memory").len();
    }
    compressed
}

fn encoders(c: &mut Criterion<ThreadCpu>) {
    let flows = flows(FLOWS);
    let items = responses(&flows);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(FLOWS as u64));
    let mut buf = Vec::with_capacity(4 << 20);
    let mut spans = Vec::with_capacity(FLOWS);
    let mut body = Vec::with_capacity(2 << 20);

    group.bench_function("getflows_protobuf", |b| {
        b.iter(|| {
            for item in &items {
                buf.clear();
                black_box(item).encode(&mut buf).expect("into a Vec");
                black_box(&buf);
            }
        });
    });
    for (name, level) in [("azure_rows", Compression::default()), ("azure_rows_gzip_fast", Compression::fast())] {
        group.bench_function(name, |b| {
            b.iter(|| {
                encode_all(&mut AzureEncoder, black_box(&flows), &mut buf, &mut spans);
                black_box(azure_requests(&buf, &spans, level, &mut body));
            });
        });
    }
    group.bench_function("azure_rows_encode_only", |b| {
        b.iter(|| {
            encode_all(&mut AzureEncoder, black_box(&flows), &mut buf, &mut spans);
            black_box(&buf);
        });
    });
    let mut otlp = OtlpEncoder::default();
    group.bench_function("otlp_log_records", |b| {
        b.iter(|| {
            encode_all(&mut otlp, black_box(&flows), &mut buf, &mut spans);
            black_box(&buf);
        });
    });
    // The same bytes through a `LogRecord` built and prost-encoded (how
    // the encoder worked before it wrote them directly).
    group.bench_function("otlp_log_records_via_prost", |b| {
        b.iter(|| {
            buf.clear();
            for (f, node) in black_box(&flows) {
                otlp.log_record(&record(f, node)).encode(&mut buf).expect("into a Vec");
            }
            black_box(&buf);
        });
    });
    group.bench_function("file_json_lines", |b| {
        b.iter(|| {
            encode_all(&mut FileEncoder, black_box(&flows), &mut buf, &mut spans);
            black_box(&buf);
        });
    });
    group.finish();
}

fn pipeline(filters: FlowFilters, mask: Option<FieldMask>, aggregate: Option<Duration>, spool: Spool) -> Pipeline {
    Pipeline::new(PipelineParts {
        filters,
        mask,
        aggregate,
        encoder: Box::new(AzureEncoder),
        spool,
        metrics: ExportMetrics::unregistered().exporter("bench"),
        end: None,
        resume: Default::default(),
    })
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sightline-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temporary folder");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pipelines(c: &mut Criterion<ThreadCpu>) {
    let flows = flows(FLOWS);
    let items = responses(&flows);
    let none = || FlowFilters::new(&[], &[]).expect("no filters");
    // What an exporter of policy decisions would keep: drops, and
    // forwarded flows to the usual service ports (about half the flows).
    let include = vec![
        pb::FlowFilter { verdict: vec![pb::Verdict::Dropped as i32], ..pb::FlowFilter::default() },
        pb::FlowFilter {
            verdict: vec![pb::Verdict::Forwarded as i32],
            destination_port: vec!["80".into(), "443".into()],
            ..pb::FlowFilter::default()
        },
    ];
    let exclude = vec![pb::FlowFilter { source_pod: vec!["ns0/".into()], ..pb::FlowFilter::default() }];
    let filtered = FlowFilters::new(&include, &exclude).expect("valid filters");
    let kept = items
        .iter()
        .filter(|i| matches!(&i.response_types, Some(ResponseTypes::Flow(f)) if filtered.matches_proto(f)))
        .count();
    let mask = FieldMask::new(sightline_flow::PRINTED_FIELDS).expect("hubble's printed fields are a valid mask");
    let disk = TempDir::new("export-spool");

    let cases: Vec<(&str, Pipeline)> = vec![
        ("push", pipeline(none(), None, None, Spool::memory(SPOOL_BYTES))),
        ("push_filtered", pipeline(filtered, None, None, Spool::memory(SPOOL_BYTES))),
        ("push_masked", pipeline(none(), Some(mask), None, Spool::memory(SPOOL_BYTES))),
        ("push_aggregated", pipeline(none(), None, Some(Duration::from_secs(30)), Spool::memory(SPOOL_BYTES))),
        (
            "push_disk_spool",
            pipeline(
                none(),
                None,
                None,
                Spool::open(SpoolOptions::new(&disk.0, SPOOL_BYTES)).expect("opening a spool in a temporary folder"),
            ),
        ),
    ];
    eprintln!("pipeline/push_filtered keeps {kept} of {FLOWS} flows");
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(FLOWS as u64));
    for (name, mut p) in cases {
        let mut warm = false;
        group.bench_function(name, |b| {
            // Warm (once, and only if this bench runs): the spool full, its
            // oldest segment dropped at every append, as in steady state;
            // aggregation spools nothing on push.
            for _ in 0..200 {
                if warm || p.spool().stats().dropped_total > 0 {
                    break;
                }
                p.push(&items, BASE_NS).expect("spool append");
            }
            warm = true;
            b.iter(|| black_box(p.push(black_box(&items), BASE_NS).expect("spool append")));
        });
    }
    group.finish();
}

/// Where criterion writes its results: `$CRITERION_HOME`, or `criterion/`
/// in the target folder this bench was built in.
fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    // target/<profile>/deps/export-<hash>
    std::env::current_exe().ok()?.ancestors().nth(3).map(|t| t.join("criterion"))
}

/// Nanoseconds per iteration of a bench measured since `since`, from
/// criterion's estimates (the regression slope, or the mean).
fn estimate(dir: &Path, group: &str, name: &str, since: SystemTime) -> Option<f64> {
    let path = dir.join(group).join(name).join("new").join("estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    v["slope"]["point_estimate"].as_f64().or_else(|| v["mean"]["point_estimate"].as_f64())
}

/// Compressed size of the batch's rows at each gzip level, for the summary.
fn gzip_sizes() -> (usize, usize, usize) {
    let flows = flows(FLOWS);
    let (mut buf, mut spans, mut body) = (Vec::new(), Vec::new(), Vec::new());
    encode_all(&mut AzureEncoder, &flows, &mut buf, &mut spans);
    let default = azure_requests(&buf, &spans, Compression::default(), &mut body);
    let fast = azure_requests(&buf, &spans, Compression::fast(), &mut body);
    (buf.len(), default, fast)
}

fn summary(since: SystemTime) {
    let Some(dir) = criterion_dir() else { return };
    let rows = [
        ("encode", "getflows_protobuf", "GetFlowsResponse, prost-encoded (baseline)"),
        ("encode", "azure_rows", "Azure rows + JSON arrays + gzip (default level)"),
        ("encode", "azure_rows_gzip_fast", "the same with gzip level 1, as the sink sends"),
        ("encode", "azure_rows_encode_only", "Azure rows only"),
        ("encode", "otlp_log_records", "OTLP LogRecords, written as protobuf"),
        ("encode", "otlp_log_records_via_prost", "the same through `LogRecord` structs and prost"),
        ("encode", "file_json_lines", "Hubble export JSON lines"),
        ("pipeline", "push", "`Pipeline::push`, no filter (Azure rows, memory spool)"),
        ("pipeline", "push_filtered", "… with include/exclude filters"),
        ("pipeline", "push_masked", "… with `hubble observe`'s field mask"),
        ("pipeline", "push_aggregated", "… with 30 s aggregation"),
        ("pipeline", "push_disk_spool", "… into the on-disk spool"),
    ];
    use std::fmt::Write as _;
    let Some(base) = estimate(&dir, BASELINE.0, BASELINE.1, since) else { return };
    let per_flow = |ns: f64| ns / FLOWS as f64;
    let mut out = String::new();
    let _ = writeln!(out, "Summary ({FLOWS} flows per iteration; CPU time of one thread; ratios to {}/{} of this run):\n", BASELINE.0, BASELINE.1);
    let _ = writeln!(out, "| bench | what | CPU per flow | flows per CPU second | vs GetFlows encoding |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (group, name, what) in rows {
        let Some(ns) = estimate(&dir, group, name, since) else { continue };
        let _ = writeln!(
            out,
            "| `{group}/{name}` | {what} | {:.0} ns | {:.0} | {:.1}× |",
            per_flow(ns),
            1e9 / per_flow(ns),
            ns / base
        );
    }
    let (plain, default, fast) = gzip_sizes();
    let _ = writeln!(
        out,
        "\nAzure rows of the batch: {plain} bytes ({} per row); gzip default level {default} bytes ({:.1}:1), fast {fast} bytes ({:.1}:1).",
        plain / FLOWS,
        plain as f64 / default as f64,
        plain as f64 / fast as f64
    );
    println!("\n{out}");
    // `SIGHTLINE_BENCH_WRITE=docs/PERFORMANCE.md cargo bench -p sightline-export`
    // records the table there (paths relative to the workspace).
    if let Ok(file) = std::env::var("SIGHTLINE_BENCH_WRITE") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&file);
        let section = format!(
            "<!-- bench:export-encoders:start -->\nMeasured on {} by `SIGHTLINE_BENCH_WRITE={file} cargo bench -p sightline-export --bench export` ({}).\n\n{out}<!-- bench:export-encoders:end -->",
            today_utc(),
            machine()
        );
        match write_section(&path, "export-encoders", &section) {
            Ok(()) => println!("figures written to {}", path.display()),
            Err(e) => eprintln!("writing {}: {e}", path.display()),
        }
    }
}

/// Today's date (UTC), from the system clock: the date part of the RFC 3339
/// time the flow JSON writer makes.
fn today_utc() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut out = Vec::new();
    sightline_flow::json_fast::write_rfc3339(&mut out, i64::try_from(secs).unwrap_or(i64::MAX), 0);
    String::from_utf8_lossy(&out[..out.len().min(10)]).into_owned()
}

/// CPUs, model and kernel, for the record.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("?").trim().to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {}, one thread's CPU time", kernel.trim())
}

/// Replaces the `name` section of a Markdown file, or appends it.
fn write_section(path: &Path, name: &str, section: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let (start, end) = (format!("<!-- bench:{name}:start -->"), format!("<!-- bench:{name}:end -->"));
    let new = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &text[..a], &text[b + end.len()..]),
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    std::fs::write(path, new)
}


fn main() {
    let since = SystemTime::now();
    let mut c = Criterion::default().with_measurement(ThreadCpu).configure_from_args();
    encoders(&mut c);
    pipelines(&mut c);
    c.final_summary();
    summary(since);
}
