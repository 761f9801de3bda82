//! The delivery rules of the export contract (`export.md`, "Delivery"),
//! end to end inside one process: flows pushed into
//! [`sightline_export::Exporters`] built from YAML, delivered to the file
//! sink, the Azure Monitor stand-in and the OTLP receiver (127.0.0.1 only)
//! while those misbehave, and checked by UUID on arrival and in the
//! exporters' metrics.
//!
//! Outages here last a few seconds and `Retry-After` is 1 s, to keep the
//! file within the CI budget; the delivery loop has no notion of how long
//! an outage lasts (it retries with back-off capped at 30 s), so a 20 s
//! outage behaves the same and is exercised by the end-to-end test.
//!
//! Nothing here sleeps to synchronise: conditions are polled with a
//! deadline (`wait_until`). The few sleeps pace pushes or hold an outage
//! for its length.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sightline_export::{Exporters, Items};
use sightline_proto::observer::get_flows_response::ResponseTypes;
use sightline_standins::otlp::OtlpReceiver;
use support::*;

const PACE: Duration = Duration::from_millis(100);

fn yaml(exporters: &[String]) -> String {
    format!("exporters:\n{}", exporters.concat())
}

/// 1. Every flow arrives at every sink at least once, through a 429 storm
/// (Retry-After 1 s, never retried sooner), 503s, failed OTLP exports, and
/// both remote sinks down for a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_arrives_at_every_sink_through_faults() {
    let dir = TempDir::new("faults");
    let azure = Azure::start(dir.path()).await;
    let otlp = OtlpReceiver::start(None).await.expect("OTLP receiver");
    let flows_log = dir.join("flows.log");
    let cfg = config(
        &yaml(&[
            exporter("file", &file_sink(&flows_log), ""),
            exporter("azure", &azure.sink(), "    spool: {maxSizeMB: 64}\n"),
            exporter("otel", &otlp_sink(&otlp.grpc_endpoint()), "    spool: {maxSizeMB: 64}\n"),
        ]),
        &dir.join("spool"),
    );
    let metrics = Metrics::new();
    let exporters = exporters(&metrics);
    exporters.apply(&cfg).await.expect("apply");

    let all = uuids(1, 0, 3000);
    let mut batches = all.chunks(100);
    let started = Instant::now();

    // Throttled, then unavailable; the OTLP receiver fails its next exports.
    azure.standin.respond_next(4, 429, Some(Duration::from_secs(1)));
    azure.standin.respond_next(2, 503, None);
    otlp.fail_next(3);
    for chunk in batches.by_ref().take(10) {
        exporters.push(&batch(chunk));
        tokio::time::sleep(PACE).await;
    }
    assert!(
        wait_until(Duration::from_secs(30), || azure.answered(429) >= 4 && azure.answered(503) >= 2).await,
        "the injected 429s and 503s were not all answered: {:?}",
        azure.standin.requests().iter().map(|r| r.status).collect::<Vec<_>>()
    );

    // Both remote sinks down for 3 s while flows keep coming.
    let outage = Duration::from_secs(3);
    azure.standin.set_down(true).expect("Azure down");
    otlp.set_down(true).await.expect("OTLP down");
    let down_at = Instant::now();
    for chunk in batches.by_ref().take(10) {
        exporters.push(&batch(chunk));
        tokio::time::sleep(PACE).await;
    }
    // Holding the outage for its length (not a synchronisation).
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    azure.standin.set_down(false).expect("Azure up");
    otlp.set_down(false).await.expect("OTLP up");

    // Back, with one more 503 that says when to come back.
    azure.standin.respond_next(1, 503, Some(Duration::from_secs(1)));
    for chunk in batches {
        exporters.push(&batch(chunk));
        tokio::time::sleep(PACE).await;
    }

    // A sink stores the rows before it answers: the counters follow.
    let n = all.len() as u64;
    let arrived = wait_until(Duration::from_secs(45), || {
        has_all(&file_uuids(&flows_log), &all)
            && has_all(&azure.uuids(), &all)
            && has_all(&otlp_uuids(&otlp), &all)
            && ["file", "azure", "otel"].iter().all(|name| metrics.records(name, "sent") >= n)
    })
    .await;
    let (file, az, ot) = (file_uuids(&flows_log), azure.uuids(), otlp_uuids(&otlp));
    assert!(
        arrived,
        "not every flow arrived: file misses {:?}, azure misses {:?}, otlp misses {:?}; {}",
        missing(&file, &all),
        missing(&az, &all),
        missing(&ot, &all),
        metrics.scrape()
    );
    println!(
        "{} flows in {:?}; duplicates: file {}, azure {}, otlp {}; azure answers: {} x 429, {} x 503",
        all.len(),
        started.elapsed(),
        duplicates(&file, &all),
        duplicates(&az, &all),
        duplicates(&ot, &all),
        azure.answered(429),
        azure.answered(503),
    );
    assert_eq!(azure.standin.early_retries(), 0, "a request came before the announced Retry-After");

    for name in ["file", "azure", "otel"] {
        assert!(metrics.records(name, "sent") >= n, "{name}: sent {} < {n}", metrics.records(name, "sent"));
        assert_eq!(metrics.records(name, "dropped"), 0, "{name}");
        assert_eq!(metrics.records(name, "rejected"), 0, "{name}");
    }
    assert!(metrics.retries("azure") > 0);
    assert!(metrics.retries("otel") > 0);
    assert!(metrics.requests("azure", "429") >= 4, "{}", metrics.scrape());
    assert!(metrics.requests("azure", "503") >= 3, "{}", metrics.scrape());
    assert!(metrics.requests("otel", "UNAVAILABLE") + metrics.requests("otel", "error") > 0, "{}", metrics.scrape());
    exporters.shutdown().await;
}

/// 2. A restart resumes from the spool: what was not acknowledged arrives
/// after the restart, what was acknowledged is not sent again; and a stop
/// in the middle of a stream loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_spool() {
    let dir = TempDir::new("restart");
    let azure = Azure::start(dir.path()).await;
    let otlp = OtlpReceiver::start(None).await.expect("OTLP receiver");
    let spool_dir = dir.join("spool");
    let cfg = config(
        &yaml(&[
            exporter("azure", &azure.sink(), "    spool: {maxSizeMB: 16}\n"),
            exporter("otel", &otlp_http_sink(&otlp.http_endpoint()), "    spool: {maxSizeMB: 16}\n"),
        ]),
        &spool_dir,
    );
    let names = ["azure", "otel"];

    // Run 1: some flows acknowledged, then the sinks die and more flows
    // wait in the spools.
    let m1 = Metrics::new();
    let run1 = exporters(&m1);
    run1.apply(&cfg).await.expect("apply");
    let acked = uuids(2, 0, 500);
    push_all(&run1, &acked, 50);
    assert!(
        wait_until(Duration::from_secs(30), || {
            has_all(&azure.uuids(), &acked)
                && has_all(&otlp_uuids(&otlp), &acked)
                && names.iter().all(|n| m1.records(n, "sent") == 500 && m1.spool_records(n) == 0)
        })
        .await,
        "the first flows were not acknowledged: {}",
        m1.scrape()
    );
    azure.standin.set_down(true).expect("Azure down");
    otlp.set_down(true).await.expect("OTLP down");
    let spooled = uuids(2, 500, 500);
    let spooled_items: Vec<Items> = spooled.chunks(50).map(batch).collect();
    for b in &spooled_items {
        run1.push(b);
    }
    let spooled_items: Vec<_> = spooled_items.iter().flat_map(|b| b.iter().cloned()).collect();
    assert!(
        wait_until(Duration::from_secs(20), || names.iter().all(|n| m1.spool_records(n) == 500)).await,
        "the spools do not hold the flows pushed while the sinks were down: {}",
        m1.scrape()
    );
    run1.shutdown().await;
    drop(run1);
    // Where a restarted relay asks the collectors to resume from: the
    // newest flow the exporters took care of.
    let resume = Exporters::resume_points(&cfg);
    let newest = match &spooled_items.last().and_then(|i| i.response_types.clone()) {
        Some(ResponseTypes::Flow(f)) => f.time.as_ref().map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos)),
        _ => 0,
    };
    assert_eq!(resume.get(NODE), Some(&newest), "{resume:?}");

    // Run 2 (a new relay process on the same spools); the sinks come back.
    let m2 = Metrics::new();
    let run2 = exporters(&m2);
    let report = run2.apply(&cfg).await.expect("apply");
    assert_eq!(report.started, ["azure", "otel"]);
    azure.standin.set_down(false).expect("Azure up");
    otlp.set_down(false).await.expect("OTLP up");
    assert!(
        wait_until(Duration::from_secs(30), || has_all(&azure.uuids(), &spooled)
            && has_all(&otlp_uuids(&otlp), &spooled))
        .await,
        "flows spooled before the restart were lost: azure misses {:?}, otlp misses {:?}",
        missing(&azure.uuids(), &spooled),
        missing(&otlp_uuids(&otlp), &spooled)
    );
    for (sink, received) in [("azure", azure.uuids()), ("otel", otlp_uuids(&otlp))] {
        println!(
            "restart: {sink}: {} duplicates of acknowledged flows, {} of spooled ones",
            duplicates(&received, &acked),
            duplicates(&received, &spooled)
        );
        assert_eq!(duplicates(&received, &acked), 0, "{sink}: acknowledged flows were sent again");
        // They were never accepted before the restart (the sink was down).
        assert_eq!(duplicates(&received, &spooled), 0, "{sink}");
    }

    // A stop in the middle of a stream: whatever was queued or in flight
    // arrives after the next start; at most the batch that was being sent
    // at the stop may come twice.
    let streamed = uuids(2, 1000, 3000);
    push_all(&run2, &streamed, 100);
    run2.shutdown().await;
    drop(run2);
    let before = (tally(&azure.uuids()).len(), tally(&otlp_uuids(&otlp)).len());
    let m3 = Metrics::new();
    let run3 = exporters(&m3);
    run3.apply(&cfg).await.expect("apply");
    assert!(
        wait_until(Duration::from_secs(30), || has_all(&azure.uuids(), &streamed)
            && has_all(&otlp_uuids(&otlp), &streamed))
        .await,
        "flows queued at the stop were lost: azure misses {:?}, otlp misses {:?}",
        missing(&azure.uuids(), &streamed),
        missing(&otlp_uuids(&otlp), &streamed)
    );
    let after = (tally(&azure.uuids()).len(), tally(&otlp_uuids(&otlp)).len());
    println!(
        "stop mid-stream: delivered after the restart: azure {} of {n}, otlp {} of {n}",
        after.0 - before.0,
        after.1 - before.1,
        n = streamed.len()
    );
    // The most records one delivery carries: Azure 5000, OTLP 1000.
    for (sink, received, batch_limit) in [("azure", azure.uuids(), 5000), ("otel", otlp_uuids(&otlp), 1000)] {
        let dups = duplicates(&received, &streamed);
        println!("stop mid-stream: {sink}: {dups} duplicates");
        assert!(dups <= batch_limit, "{sink}: {dups} duplicates, more than one delivery");
        assert_eq!(duplicates(&received, &acked), 0, "{sink}");
        assert_eq!(duplicates(&received, &spooled), 0, "{sink}");
    }
    run3.shutdown().await;
}

/// 3. A 413 makes the delivery loop send the batch again in halves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_batch() {
    let dir = TempDir::new("split");
    let azure = Azure::start(dir.path()).await;
    let cfg = config(&yaml(&[exporter("azure", &azure.sink(), "")]), &dir.join("spool"));
    let metrics = Metrics::new();
    let exporters = exporters(&metrics);
    exporters.apply(&cfg).await.expect("apply");

    azure.standin.respond_next(1, 413, None);
    let ids = uuids(3, 0, 400);
    // One push is one append to the spool: one batch of 400 rows.
    exporters.push(&batch(&ids));
    assert!(
        wait_until(Duration::from_secs(30), || has_all(&azure.uuids(), &ids)
            && metrics.records("azure", "sent") == 400)
        .await,
        "rows of the split batch are missing: {:?}",
        missing(&azure.uuids(), &ids)
    );
    let requests = azure.standin.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses.first(), Some(&413), "{statuses:?}");
    assert_eq!(azure.answered(413), 1, "{statuses:?}");
    let accepted: Vec<usize> = requests.iter().filter(|r| r.status == 204).map(|r| r.rows).collect();
    println!("413 split: accepted requests of {accepted:?} rows");
    assert!(accepted.len() >= 2, "not split: {accepted:?}");
    assert!(accepted.iter().all(|&n| n < ids.len()), "{accepted:?}");
    assert_eq!(accepted.iter().sum::<usize>(), ids.len(), "{accepted:?}");
    assert_eq!(duplicates(&azure.uuids(), &ids), 0);
    assert_eq!(metrics.records("azure", "sent"), 400);
    assert_eq!(metrics.records("azure", "rejected"), 0);
    assert_eq!(metrics.requests("azure", "413"), 1);
    exporters.shutdown().await;
}

/// 4. 400, 403 and 404 dead-letter the batch into `rejected/` (with
/// Azure's error code), counted exactly, and the exporter goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_are_dead_lettered_and_counted() {
    let dir = TempDir::new("rejected");
    let azure = Azure::start(dir.path()).await;
    let spool_dir = dir.join("spool");
    let cfg = config(&yaml(&[exporter("azure", &azure.sink(), "")]), &spool_dir);
    let metrics = Metrics::new();
    let exporters = exporters(&metrics);
    exporters.apply(&cfg).await.expect("apply");

    let cases = [(400, "BadRequest"), (403, "OperationFailed"), (404, "NotFound")];
    let mut refused: Vec<(String, &str)> = Vec::new();
    for (k, (status, code)) in cases.iter().enumerate() {
        azure.standin.respond_next(1, *status, None);
        let ids = uuids(4, k * 20, 20);
        exporters.push(&batch(&ids));
        let want = 20 * (k as u64 + 1);
        assert!(
            wait_until(Duration::from_secs(20), || metrics.records("azure", "rejected") == want).await,
            "HTTP {status}: rejected {} != {want}",
            metrics.records("azure", "rejected")
        );
        refused.extend(ids.into_iter().map(|u| (u, *code)));
    }
    let later = uuids(4, 100, 50);
    exporters.push(&batch(&later));
    assert!(
        wait_until(Duration::from_secs(20), || has_all(&azure.uuids(), &later)
            && metrics.records("azure", "sent") == 50)
        .await,
        "the exporter is stuck after dead-lettering: {:?}",
        missing(&azure.uuids(), &later)
    );

    let lines = rejected_lines(&spool_dir.join("azure"));
    let mut got: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            let uuid = l.pointer("/payload/UUID").and_then(Value::as_str).unwrap_or_else(|| panic!("no UUID: {l}"));
            let code = l.get("error_code").and_then(Value::as_str).unwrap_or_else(|| panic!("no error_code: {l}"));
            (uuid.to_owned(), code.to_owned())
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = refused.iter().map(|(u, c)| (u.clone(), (*c).to_owned())).collect();
    want.sort();
    assert_eq!(got, want, "the dead letters are not the refused rows with their error codes");
    assert_eq!(metrics.records("azure", "rejected"), 60);
    assert_eq!(metrics.records("azure", "sent"), 50);
    let received = azure.uuids();
    assert!(refused.iter().all(|(u, _)| !received.contains(u)), "a refused row was stored");
    for status in ["400", "403", "404"] {
        assert_eq!(metrics.requests("azure", status), 1, "{status}");
    }
    exporters.shutdown().await;
}

/// 5. A full spool never grows past its bound on disk, and drops its
/// oldest records counted exactly: pushed = received + dropped + rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_bound_holds_and_every_drop_is_counted() {
    let dir = TempDir::new("bound");
    let azure = Azure::start(dir.path()).await;
    let spool_dir = dir.join("spool");
    let spool = spool_dir.join("azure");
    let bound: u64 = 1 << 20;
    let cfg = config(&yaml(&[exporter("azure", &azure.sink(), "    spool: {maxSizeMB: 1}\n")]), &spool_dir);
    let metrics = Metrics::new();
    let exporters = exporters(&metrics);
    azure.standin.set_down(true).expect("Azure down");
    exporters.apply(&cfg).await.expect("apply");

    // Watch the segment files while the spool fills.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_guard = StopOnDrop(Arc::clone(&stop));
    let largest = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, largest, spool) = (Arc::clone(&stop), Arc::clone(&largest), spool.clone());
        tokio::task::spawn_blocking(move || {
            while !stop.load(Ordering::Relaxed) {
                largest.fetch_max(segment_bytes(&spool), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let all = uuids(5, 0, 5000);
    for chunk in all.chunks(100) {
        exporters.push(&batch(chunk));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n = all.len() as u64;
    // Every record is waiting in the spool or was dropped.
    assert!(
        wait_until(Duration::from_secs(30), || metrics.spool_records("azure") + metrics.records("azure", "dropped")
            == n)
        .await,
        "records unaccounted for: {}",
        metrics.scrape()
    );
    drop(stop_guard);
    watcher.await.expect("watcher");
    let largest = largest.load(Ordering::Relaxed).max(segment_bytes(&spool));
    let dropped = metrics.records("azure", "dropped");
    let (spool_bytes, spool_records) = (metrics.spool_bytes("azure"), metrics.spool_records("azure"));
    println!(
        "spool bound: {n} records of ~{} bytes pushed; at most {largest} bytes of segments on disk (bound {bound}); \
         {dropped} dropped, {spool_records} waiting",
        spool_bytes / spool_records.max(1)
    );
    assert!(largest <= bound, "the segments held {largest} bytes, more than the bound of {bound}");
    assert!(dropped > 0, "the spool never filled; push more");
    assert!(spool_bytes <= bound);

    azure.standin.set_down(false).expect("Azure up");
    let delivered = wait_until(Duration::from_secs(60), || {
        metrics.spool_records("azure") == 0
            && tally(&azure.uuids()).len() as u64
                + metrics.records("azure", "dropped")
                + metrics.records("azure", "rejected")
                >= n
    })
    .await;
    let received = azure.uuids();
    let unique = tally(&received).len() as u64;
    let (dropped, rejected) = (metrics.records("azure", "dropped"), metrics.records("azure", "rejected"));
    assert!(delivered, "the spool did not drain: {unique} received, {dropped} dropped, {}", metrics.scrape());
    println!(
        "spool bound: {unique} received after recovery ({} duplicates), {dropped} dropped",
        received.len() as u64 - unique
    );
    assert!(received.iter().all(|u| all.contains(u)), "a row that was never pushed");
    assert_eq!(dropped, n - unique - rejected, "records disappeared without being counted (or were counted twice)");
    // The newest records are the ones kept.
    let newest = &all[all.len() - 100..];
    assert!(has_all(&received, newest), "newest records were dropped: {:?}", missing(&received, newest));
    exporters.shutdown().await;
}

/// 6. A dead sink (connection refused) and a hanging one (accepts, never
/// answers) do not slow `push`, and a healthy exporter beside them gets
/// everything meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_hanging_sink_never_slows_the_caller() {
    let dir = TempDir::new("slow");
    let azure = Azure::start(dir.path()).await;
    let hole = BlackHole::start().await;
    let flows_log = dir.join("flows.log");
    let cfg = config(
        &yaml(&[
            exporter("azure", &azure.sink(), ""),
            exporter("hanging", &otlp_sink(&format!("http://{}", hole.addr)), "    spool: {maxSizeMB: 64}\n"),
            exporter("file", &file_sink(&flows_log), ""),
        ]),
        &dir.join("spool"),
    );
    let metrics = Metrics::new();
    let exporters = exporters(&metrics);
    azure.standin.set_down(true).expect("Azure down");
    exporters.apply(&cfg).await.expect("apply");

    let all = uuids(6, 0, 10_000);
    let batches: Vec<Items> = all.chunks(100).map(batch).collect();
    let started = Instant::now();
    for b in &batches {
        exporters.push(b);
    }
    let took = started.elapsed();
    println!("{} pushes of 100 flows took {took:?} with one sink down and one hanging", batches.len());
    assert!(took < Duration::from_secs(2), "pushing 10,000 flows took {took:?}");

    assert!(
        wait_until(Duration::from_secs(45), || has_all(&file_uuids(&flows_log), &all)).await,
        "the healthy file exporter fell behind: {:?}",
        missing(&file_uuids(&flows_log), &all)
    );
    assert_eq!(azure.row_count(), 0);
    for name in ["azure", "hanging", "file"] {
        assert_eq!(metrics.records(name, "dropped"), 0, "{name}: {}", metrics.scrape());
    }

    // The dead sink comes back and gets everything from its spool (after
    // its back-off, which grows towards 30 s during a long outage).
    azure.standin.set_down(false).expect("Azure up");
    assert!(
        wait_until(Duration::from_secs(60), || has_all(&azure.uuids(), &all)).await,
        "azure misses {:?}",
        missing(&azure.uuids(), &all)
    );
    let stopping = Instant::now();
    exporters.shutdown().await;
    println!("shutdown with a hanging sink took {:?}", stopping.elapsed());
}

/// 8. Aggregated records count every flow exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_count_every_flow() {
    let dir = TempDir::new("aggregate");
    let flows_log = dir.join("flows.log");
    let cfg = config(&yaml(&[exporter("agg", &file_sink(&flows_log), "    aggregate: 1s\n")]), &dir.join("spool"));
    let metrics = Metrics::new();
    let exporters = exporters(&metrics);
    exporters.apply(&cfg).await.expect("apply");

    // Spread over about three windows (pacing, not synchronising).
    let all = uuids(8, 0, 1000);
    for chunk in all.chunks(100) {
        exporters.push(&batch(chunk));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let total = |lines: &[Value]| -> u64 {
        lines
            .iter()
            .map(|l| {
                ["ingress", "egress", "unknown"]
                    .iter()
                    .map(|k| l.pointer(&format!("/flow_count/{k}")).and_then(Value::as_u64).unwrap_or(0))
                    .sum::<u64>()
            })
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(30), || total(&file_lines(&flows_log)) >= all.len() as u64).await,
        "aggregates count {} of {} flows",
        total(&file_lines(&flows_log)),
        all.len()
    );
    // Everything is emitted: the pipeline has no open window left once the
    // counts add up, so stopping adds nothing more.
    exporters.shutdown().await;
    let lines = file_lines(&flows_log);
    println!("aggregation: {} flows in {} records", all.len(), lines.len());
    assert_eq!(total(&lines), all.len() as u64);
    assert!(lines.len() < all.len() / 10, "flows with one key were not aggregated: {} records", lines.len());
    for l in &lines {
        assert!(l.get("flow_count").is_some(), "{l}");
        assert!(l.pointer("/flow/uuid").is_none_or(|u| u.as_str() == Some("")), "an aggregate keeps a UUID: {l}");
        assert_eq!(l.pointer("/flow_count/egress").and_then(Value::as_u64), total(std::slice::from_ref(l)).into());
    }
    assert_eq!(metrics.records("agg", "sent"), lines.len() as u64);
}

/// 9. An exporter whose `end` has passed exports nothing and counts the
/// flows as filtered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_exporter_exports_nothing() {
    let dir = TempDir::new("end");
    let ended_log = dir.join("ended.log");
    let live_log = dir.join("live.log");
    let cfg = config(
        &yaml(&[
            exporter("ended", &file_sink(&ended_log), "    end: 2020-01-01T00:00:00Z\n"),
            exporter("live", &file_sink(&live_log), ""),
        ]),
        &dir.join("spool"),
    );
    let metrics = Metrics::new();
    let exporters = exporters(&metrics);
    exporters.apply(&cfg).await.expect("apply");
    let all = uuids(9, 0, 300);
    push_all(&exporters, &all, 100);
    assert!(
        wait_until(Duration::from_secs(20), || metrics.records("ended", "filtered") == 300
            && has_all(&file_uuids(&live_log), &all))
        .await,
        "{}",
        metrics.scrape()
    );
    exporters.shutdown().await;
    assert_eq!(metrics.records("ended", "sent"), 0);
    assert_eq!(metrics.records("ended", "dropped"), 0);
    assert!(file_lines(&ended_log).is_empty(), "an ended exporter wrote {:?}", file_lines(&ended_log).len());
    assert_eq!(metrics.records("live", "filtered"), 0);
    assert_eq!(metrics.records("live", "sent"), 300);
}
