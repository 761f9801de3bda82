//! What the collector's user-space pipeline costs per event, on one core:
//!
//! - `pipeline/raw_drain`: copying 112-byte event records out of a byte
//!   buffer — the baseline, what draining the ring buffer costs without any
//!   processing;
//! - `pipeline/decode_build_store`: raw bytes → `decode` → `FlowBuilder::build`
//!   → `Store::push` (a full store of the default capacity, so every push
//!   also frees the flow it replaces), with the metadata of a node in a
//!   cluster of a few hundred pods;
//! - `pipeline/decode_build_metrics_store`: the same with the metrics hooks
//!   of the default metric set and the policy accounting, as the agent runs
//!   them; `…_hubble_metrics_store` with the Hubble handlers only, and
//!   `…_flush_per_flow` through `Metrics::observe`;
//! - `pipeline/to_proto`: a stored flow → Hubble's `flow.Flow` protobuf, and
//!   `pipeline/to_proto_masked` with the field mask `hubble observe` asks
//!   for by default.
//!
//! - `ringbuf/*` (needs root; skipped with a message otherwise): the same
//!   pipeline fed by the real ring buffer. The loaded `from_container`
//!   program is the producer, run with `BPF_PROG_TEST_RUN` (aya's
//!   `TestRun`, through `sightline_collector::testrun`) on packets between
//!   the node's pods, at aggregation `none` (two trace events per run), so
//!   the kernel writes real events into the real `EVENTS` ring buffer;
//!   `ringbuf/produce` times that, `ringbuf/drain` (the baseline) times
//!   taking them out with `RingBuf::next` and copying each record, and
//!   `ringbuf/drain_decode_build_store` times the agent's drain: `next` →
//!   `decode` → `FlowBuilder::build` → `Store::push`. The producer runs
//!   outside the drains' timing.
//!
//! Events are generated deterministically (no randomness crate): mostly
//! traces between pods, some policy verdicts, drops and traffic to the world.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sightline_abi as abi;
use sightline_abi::Event;
use sightline_collector::decoder::decode;
use sightline_collector::metadata::{Metadata, PodMeta};
use sightline_collector::flow::{FieldMask, Flow, FlowBuilder, Store, to_proto};

/// Events per iteration (a ring-buffer drain of ~450 KiB).
const BATCH: usize = 4096;
const PODS: u32 = 300;
const NAMESPACES: u32 = 10;
/// Pods on the node the collector runs on (the rest are on other nodes).
const LOCAL_PODS: u32 = 30;
const EVENT_SIZE: usize = size_of::<Event>();

/// The field mask `hubble observe` requests with its default output.
const HUBBLE_DEFAULT_MASK: &[&str] = sightline_collector::flow::PRINTED_FIELDS;

fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (i / 200) as u8 + 1, (i % 200) as u8 + 2)
}

fn metadata() -> Metadata {
    let mut meta = Metadata {
        node_name: "node-1".into(),
        mono_to_unix_ns: 1_700_000_000_000_000_000,
        ..Metadata::default()
    };
    for i in 0..PODS {
        let namespace = format!("ns{}", i % NAMESPACES);
        let app = format!("app{}", i % 37);
        let identity = 256 + i % 120;
        let labels: Arc<[String]> = Arc::from([
            format!("k8s:app={app}"),
            format!("k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={namespace}"),
            format!("k8s:io.kubernetes.pod.namespace={namespace}"),
        ]);
        meta.identities.entry(identity).or_insert_with(|| Arc::clone(&labels));
        let local = i < LOCAL_PODS;
        meta.pods.insert(
            pod_ip(i),
            Arc::new(PodMeta {
                namespace,
                name: format!("{app}-{i:05x}-abcde"),
                endpoint_id: if local { i as u16 + 1 } else { 0 },
                identity,
                labels,
                node: if local { "node-1".into() } else { format!("node-{}", 2 + i % 3) },
            }),
        );
        if local {
            meta.interfaces.insert(100 + i, Arc::from(format!("lxc{:05}", i + 1)));
        }
    }
    for reason in 0..80 {
        meta.kernel_reasons.insert(reason, Arc::from(format!("SKB_DROP_REASON_{reason}")));
    }
    for set in 1..=40 {
        meta.policy_sets.insert(set, Arc::from(vec![format!("ns{}/allow-{set}", set % NAMESPACES), "ns0/allow-dns".into()]));
    }
    for ep in 1..=LOCAL_PODS as u16 {
        for dir in [abi::DIR_INGRESS, abi::DIR_EGRESS] {
            meta.selected_by.insert((ep, dir), Arc::from(vec![format!("ns{}/deny-{ep}", ep as u32 % NAMESPACES)]));
        }
    }
    meta
}

/// Serialises an event field by field, in the layout of docs/ABI.md.
fn event_bytes(ev: &Event) -> [u8; EVENT_SIZE] {
    let mut out = Vec::with_capacity(EVENT_SIZE);
    for v in [ev.ts_ns, ev.fwd_packets, ev.fwd_bytes, ev.rev_packets, ev.rev_bytes] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&ev.src_addr);
    out.extend_from_slice(&ev.dst_addr);
    for v in [ev.src_identity, ev.dst_identity, ev.ifindex, ev.pkt_len, ev.reason] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [ev.endpoint_id, ev.src_port, ev.dst_port] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&[
        ev.kind,
        ev.sub_type,
        ev.ip_version,
        ev.protocol,
        ev.tcp_flags,
        ev.ct_state,
        ev.direction,
        ev.verdict,
        ev.match_type,
        ev.icmp_type,
        ev.icmp_code,
        ev.version,
        0,
        0,
    ]);
    let mut bytes = [0u8; EVENT_SIZE];
    bytes.copy_from_slice(&out);
    bytes
}

/// A deterministic mix of events, as the ring buffer would hold them.
fn ring_bytes(n: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut buf = Vec::with_capacity(n * EVENT_SIZE);
    for i in 0..n {
        let r = next();
        let local = (r % u64::from(LOCAL_PODS)) as u32;
        let peer = ((r >> 8) % u64::from(PODS)) as u32;
        let to_world = (r >> 20) % 20 == 0;
        let mut ev = Event {
            ts_ns: 1_000_000 + i as u64 * 1_000,
            fwd_packets: r % 1000,
            fwd_bytes: r % 1_000_000,
            rev_packets: (r >> 10) % 1000,
            rev_bytes: (r >> 10) % 1_000_000,
            src_identity: 256 + local % 120,
            dst_identity: if to_world { abi::IDENTITY_WORLD } else { 256 + peer % 120 },
            ifindex: 100 + local,
            pkt_len: 64 + (r % 1400) as u32,
            endpoint_id: local as u16 + 1,
            src_port: 30000 + (r % 30000) as u16,
            dst_port: [80, 443, 53, 8080, 5432][(r >> 30) as usize % 5],
            ip_version: 4,
            protocol: if (r >> 33) % 10 == 0 { abi::IPPROTO_UDP } else { abi::IPPROTO_TCP },
            tcp_flags: abi::TCP_ACK | if (r >> 36) % 8 == 0 { abi::TCP_SYN } else { abi::TCP_PSH },
            ct_state: [abi::CT_NEW, abi::CT_ESTABLISHED, abi::CT_ESTABLISHED, abi::CT_REPLY][(r >> 40) as usize % 4],
            version: abi::ABI_VERSION,
            ..Event::default()
        };
        ev.src_addr[..4].copy_from_slice(&pod_ip(local).octets());
        let dst = if to_world { Ipv4Addr::new(203, 0, 113, (r >> 44) as u8) } else { pod_ip(peer) };
        ev.dst_addr[..4].copy_from_slice(&dst.octets());
        match (r >> 48) % 20 {
            0 | 1 => {
                ev.kind = abi::EVENT_POLICY_VERDICT;
                ev.sub_type = abi::TRACE_NONE;
                ev.direction = abi::DIR_EGRESS;
                ev.verdict = if (r >> 52) % 4 == 0 { abi::VERDICT_DROPPED } else { abi::VERDICT_FORWARDED };
                ev.match_type = abi::MATCH_L3_L4;
                ev.reason = 1 + ((r >> 54) % 40) as u32;
            }
            2 => {
                ev.kind = abi::EVENT_DROP;
                ev.sub_type = abi::DROP_POLICY_DENIED;
                ev.direction = abi::DIR_EGRESS;
            }
            3 => {
                ev.kind = abi::EVENT_KERNEL_DROP;
                ev.reason = ((r >> 52) % 80) as u32;
            }
            p => {
                ev.kind = abi::EVENT_TRACE;
                ev.sub_type = [abi::TRACE_FROM_LXC, abi::TRACE_TO_LXC, abi::TRACE_TO_STACK][p as usize % 3];
            }
        }
        buf.extend_from_slice(&event_bytes(&ev));
    }
    buf
}

fn built_flows(meta: &Metadata, bytes: &[u8]) -> Vec<Flow> {
    let mut builder = FlowBuilder::new();
    bytes
        .chunks_exact(EVENT_SIZE)
        .filter_map(|chunk| decode(chunk).ok())
        .map(|ev| builder.build(&ev, meta))
        .collect()
}

/// When this run started (the first group), so that the summary reads
/// only this run's estimates.
static STARTED: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();

fn raw_drain(c: &mut Criterion) {
    STARTED.get_or_init(std::time::SystemTime::now);
    let bytes = ring_bytes(BATCH);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("raw_drain", |b| {
        b.iter(|| {
            for chunk in black_box(&bytes[..]).chunks_exact(EVENT_SIZE) {
                let mut record = [0u8; EVENT_SIZE];
                record.copy_from_slice(chunk);
                black_box(&record);
            }
        });
    });
    group.finish();
}

fn decode_build_store(c: &mut Criterion) {
    let meta = metadata();
    let bytes = ring_bytes(BATCH);
    // Every event decodes (the generator writes valid events).
    assert_eq!(bytes.chunks_exact(EVENT_SIZE).filter(|c| decode(c).is_ok()).count(), BATCH);
    let store = Store::default();
    let mut builder = FlowBuilder::new();
    // Start full, as in steady state: each push frees the flow it replaces.
    for flow in built_flows(&meta, &bytes) {
        store.push(flow);
    }
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("decode_build_store", |b| {
        b.iter(|| {
            for chunk in black_box(&bytes[..]).chunks_exact(EVENT_SIZE) {
                if let Ok(ev) = decode(chunk) {
                    store.push(builder.build(&ev, &meta));
                }
            }
        });
    });
    group.finish();
}

/// The same pipeline with the metrics hooks of the default metric set and
/// the collector's policy accounting on every flow, as the agent runs them
/// (the flow built into its `Arc` first, so that the hooks read it where
/// the store will keep it; per-thread recorders, flushed once per drain):
/// the hooks' cost is the
/// ratio to `decode_build_store`. `…_hubble_…` is without the policy
/// accounting, and `…_flush_per_flow` is `Metrics::observe` (the shared
/// recorder behind a lock, flushed after every flow), for comparison.
fn decode_build_metrics_store(c: &mut Criterion) {
    use sightline_collector::metrics::{DEFAULT_MAX_SERIES_PER_METRIC, Metrics, MetricsConfig};
    let meta = metadata();
    let bytes = ring_bytes(BATCH);
    let mut metrics = Metrics::new(&MetricsConfig::parse("").expect("the default set"), DEFAULT_MAX_SERIES_PER_METRIC)
        .expect("metrics");
    let own = sightline_collector::agent_metrics::AgentMetrics::register(metrics.registry_mut());
    let mut recorder = metrics.recorder();
    let mut policy = own.policy_recorder();
    let store = Store::default();
    let mut builder = FlowBuilder::new();
    // Warm: every series exists and the store is full, as in steady state.
    for flow in built_flows(&meta, &bytes) {
        recorder.record(&flow);
        policy.record(&flow);
        store.push(flow);
    }
    recorder.flush();
    policy.flush();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    // The agent flushes the recorders' pending counts at most every
    // `FLUSH_INTERVAL` (50 ms); at this rate that is several hundred
    // thousand events. Flushing every 8 batches (32 768 events) is pessimistic.
    const FLUSH_EVERY: u64 = 8;
    for (name, hubble, accounting, flush_every) in [
        ("decode_build_metrics_store", true, true, FLUSH_EVERY),
        ("decode_build_hubble_metrics_store", true, false, FLUSH_EVERY),
        ("decode_build_policy_store", false, true, FLUSH_EVERY),
        ("decode_build_metrics_store_flush_per_batch", true, true, 1),
    ] {
        let mut batches = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut previous: Option<Arc<Flow>> = None;
                let mut hooks = |flow: Arc<Flow>| {
                    if hubble {
                        recorder.record(&flow);
                    }
                    if accounting {
                        policy.record(&flow);
                    }
                    store.push(flow);
                };
                for chunk in black_box(&bytes[..]).chunks_exact(EVENT_SIZE) {
                    if let Ok(ev) = decode(chunk) {
                        let flow = Arc::new(builder.build(&ev, &meta));
                        if let Some(flow) = previous.replace(flow) {
                            hooks(flow);
                        }
                    }
                }
                if let Some(flow) = previous.take() {
                    hooks(flow);
                }
                batches += 1;
                if batches % flush_every == 0 {
                    recorder.flush();
                    policy.flush();
                }
            });
        });
    }
    group.bench_function("decode_build_metrics_store_flush_per_flow", |b| {
        b.iter(|| {
            for chunk in black_box(&bytes[..]).chunks_exact(EVENT_SIZE) {
                if let Ok(ev) = decode(chunk) {
                    let flow = builder.build(&ev, &meta);
                    metrics.observe(&flow);
                    store.push(flow);
                }
            }
        });
    });
    group.finish();
}

/// Flows per iteration of the `to_proto` benches.
const TO_PROTO_FLOWS: usize = 1024;

fn to_proto_bench(c: &mut Criterion) {
    const FLOWS: usize = TO_PROTO_FLOWS;
    let meta = metadata();
    let flows = built_flows(&meta, &ring_bytes(FLOWS));
    let mask = FieldMask::new(HUBBLE_DEFAULT_MASK).expect("hubble's default mask is valid");
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(FLOWS as u64));
    // Each protobuf is dropped inside the measurement, as a server drops it
    // once encoded.
    group.bench_function("to_proto", |b| {
        b.iter(|| {
            for flow in &flows {
                black_box(to_proto(black_box(flow), "node-1", None));
            }
        });
    });
    group.bench_function("to_proto_masked", |b| {
        b.iter(|| {
            for flow in &flows {
                black_box(to_proto(black_box(flow), "node-1", Some(&mask)));
            }
        });
    });
    group.finish();
}

/// Runs of the producer per packet and distinct packets per iteration:
/// 64 × 32 runs × 2 events = [`BATCH`] events.
const RING_PAIRS: usize = 64;
const RING_REPEAT: u32 = 32;

/// The real ring buffer: see the crate comment. Skipped, saying so,
/// without root.
fn ringbuf(c: &mut Criterion) {
    use std::net::SocketAddrV4;
    let since = *STARTED.get_or_init(std::time::SystemTime::now);
    use std::time::{Duration, Instant};

    use sightline_collector::testrun::{self, Harness};

    // SAFETY: geteuid(2) has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("ringbuf/*: SKIPPED: needs root (loads the eBPF probes and runs them with BPF_PROG_TEST_RUN)");
        return;
    }
    let mut config = testrun::config(abi::AGGREGATION_NONE);
    // No consumer waits on the ring buffer here: submit without wake-ups
    // (their cost is the datapath's, not the pipeline's).
    config.wakeup_bytes = u32::MAX;
    let mut h = match Harness::load(config) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ringbuf/*: SKIPPED: loading the probes failed: {e}");
            return;
        }
    };
    for i in 0..LOCAL_PODS {
        let info = abi::EndpointInfo {
            ifindex: 1,
            identity: 256 + i % 120,
            mac: [2, 0, 0, 0, 0, i as u8],
            node_mac: [6; 6],
            endpoint_id: i as u16 + 1,
            flags: 0,
        };
        h.add_endpoint(pod_ip(i), info).expect("endpoint");
    }
    for i in LOCAL_PODS..PODS {
        h.add_ipcache(pod_ip(i), 32, 256 + i % 120).expect("ipcache");
    }
    // From a local pod to a local pod (TO_LXC) or one of another node
    // (TO_STACK), each pair its own established connection.
    let packets: Vec<Vec<u8>> = (0..RING_PAIRS as u32)
        .map(|k| {
            let src = SocketAddrV4::new(pod_ip(k % LOCAL_PODS), 30_000 + k as u16);
            let dst = SocketAddrV4::new(pod_ip((k * 7 + 3) % PODS), [80, 443, 5432][k as usize % 3]);
            testrun::tcp(src, dst, abi::TCP_ACK | abi::TCP_PSH, b"0123456789")
        })
        .collect();
    let produce = |h: &mut Harness| {
        for p in &packets {
            h.run_with(abi::programs::FROM_CONTAINER, p, None, RING_REPEAT).expect("BPF_PROG_TEST_RUN");
        }
    };
    // The first round opens the connections (and writes their policy
    // verdicts); the second checks what the kernel writes decodes, and
    // how many.
    produce(&mut h);
    h.drain_with(|_| {});
    produce(&mut h);
    let events = h.events();
    assert_eq!(events.len(), BATCH, "two traces per run at aggregation none");
    let meta = metadata();
    let store = Store::default();
    let mut builder = FlowBuilder::new();
    for ev in &events {
        store.push(builder.build(ev, &meta));
    }
    for _ in 0..(store.capacity() / BATCH + 1) {
        produce(&mut h);
        h.drain_with(|b| {
            if let Ok(ev) = decode(b) {
                store.push(builder.build(&ev, &meta));
            }
        });
    }

    let mut group = c.benchmark_group("ringbuf");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("produce", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                produce(&mut h);
                total += start.elapsed();
                assert_eq!(h.drain_with(|_| {}), BATCH);
            }
            total
        });
    });
    group.bench_function("drain", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                produce(&mut h);
                let start = Instant::now();
                let n = h.drain_with(|bytes| {
                    let mut record = [0u8; EVENT_SIZE];
                    record.copy_from_slice(&bytes[..EVENT_SIZE]);
                    black_box(&record);
                });
                total += start.elapsed();
                assert_eq!(n, BATCH);
            }
            total
        });
    });
    group.bench_function("drain_decode_build_store", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                produce(&mut h);
                let start = Instant::now();
                let n = h.drain_with(|bytes| {
                    if let Ok(ev) = decode(bytes) {
                        store.push(builder.build(&ev, &meta));
                    }
                });
                total += start.elapsed();
                assert_eq!(n, BATCH);
            }
            total
        });
    });
    group.finish();
    assert_eq!(h.counter(abi::COUNTER_EVENTS_LOST), 0, "the drains kept up: no event lost");
    ringbuf_summary(since);
}

/// Where criterion writes its results: `$CRITERION_HOME`, or `criterion/`
/// in the target folder.
fn criterion_dir() -> Option<std::path::PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(home.into());
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(std::path::PathBuf::from(target).join("criterion"));
    }
    // target/<profile>/deps/pipeline-<hash>
    std::env::current_exe().ok()?.ancestors().nth(3).map(|t| t.join("criterion"))
}

/// Nanoseconds per iteration of a bench measured since `since`, from
/// criterion's estimates (the regression slope, or the mean).
fn estimate(group: &str, name: &str, since: std::time::SystemTime) -> Option<f64> {
    let path = criterion_dir()?.join(group).join(name).join("new").join("estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    v["slope"]["point_estimate"].as_f64().or_else(|| v["mean"]["point_estimate"].as_f64())
}

/// A table of this run's estimates: (group, bench, what, events per
/// iteration) rows, each against the first row.
fn table(since: std::time::SystemTime, against: &str, rows: &[(&str, &str, &str, usize)]) -> Option<String> {
    use std::fmt::Write as _;
    let (g, n, _, per_iter) = rows.first()?;
    let base = estimate(g, n, since)? / *per_iter as f64;
    let mut out = String::new();
    let _ = writeln!(out, "| bench | what | per event | events/s | vs `{against}` |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (group, name, what, per_iter) in rows {
        let Some(ns) = estimate(group, name, since) else { continue };
        let per = ns / *per_iter as f64;
        let _ = writeln!(out, "| `{group}/{name}` | {what} | {per:.1} ns | {:.2} M/s | {:.2}× |", 1e3 / per, per / base);
    }
    Some(out)
}

/// Writes `table` between the `bench:{name}` markers of the file named by
/// `$SIGHTLINE_BENCH_WRITE`, when it is set.
fn write_section(name: &str, table: &str) {
    let Ok(file) = std::env::var("SIGHTLINE_BENCH_WRITE") else { return };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&file);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let (start, end) = (format!("<!-- bench:{name}:start -->"), format!("<!-- bench:{name}:end -->"));
    let section = format!(
        "{start}\nMeasured by `SIGHTLINE_BENCH_WRITE={file} cargo bench -p sightline-collector --bench pipeline` as root \
         ({cpus} CPUs, Linux {}, load average {} at the end; wall time; same run).\n\n{table}{end}",
        kernel.trim(),
        load.join(" "),
    );
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &text[..a], &text[b + end.len()..]),
        _ => format!("{}\n\n{section}\n", text.trim_end()),
    };
    match std::fs::write(&path, new) {
        Ok(()) => println!("figures written to {} ({name})", path.display()),
        Err(e) => eprintln!("writing {}: {e}", path.display()),
    }
}

/// The tables from this run's estimates, printed; with
/// `SIGHTLINE_BENCH_WRITE=docs/PERFORMANCE.md` also written there.
fn ringbuf_summary(since: std::time::SystemTime) {
    let ring = table(
        since,
        "ringbuf/drain",
        &[
            ("ringbuf", "drain", "real ring buffer: `RingBuf::next`, each 112-byte record copied (baseline)", BATCH),
            ("ringbuf", "drain_decode_build_store", "real ring buffer: `next` → decode → build the flow → store", BATCH),
            ("ringbuf", "produce", "the kernel writing them: `from_container` under `BPF_PROG_TEST_RUN`, 2 events per run", BATCH),
            ("pipeline", "raw_drain", "synthetic: copying records out of a byte buffer (the old baseline)", BATCH),
            ("pipeline", "decode_build_store", "synthetic: decode → build → store over 300 pods' mix", BATCH),
        ],
    );
    let hooks = table(
        since,
        "pipeline/decode_build_store",
        &[
            ("pipeline", "decode_build_store", "decode → build → store, no hooks (baseline)", BATCH),
            ("pipeline", "decode_build_metrics_store", "+ Hubble handlers and policy accounting: **the agent's pipeline**", BATCH),
            ("pipeline", "decode_build_hubble_metrics_store", "+ Hubble handlers only", BATCH),
            ("pipeline", "decode_build_policy_store", "+ policy accounting only", BATCH),
            ("pipeline", "decode_build_metrics_store_flush_per_batch", "both, counts flushed after every batch of 4096", BATCH),
            ("pipeline", "decode_build_metrics_store_flush_per_flow", "both through `Metrics::observe` (lock, flush per flow)", BATCH),
            ("pipeline", "to_proto", "flow → `flow.Flow` (only when a client reads)", TO_PROTO_FLOWS),
            ("pipeline", "to_proto_masked", "the same, for the fields `observe` prints", TO_PROTO_FLOWS),
        ],
    );
    for (name, out) in [("pipeline-ringbuf", ring), ("pipeline-hooks", hooks)] {
        let Some(out) = out else { continue };
        println!("\n{out}");
        write_section(name, &out);
    }
}

criterion_group!(benches, raw_drain, decode_build_store, decode_build_metrics_store, to_proto_bench, ringbuf);
criterion_main!(benches);
