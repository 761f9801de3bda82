//! Reloading the export configuration (`Exporters::apply`, and
//! `load_and_apply` as the relay calls it on a change or SIGHUP): all or
//! nothing, unchanged exporters left alone, changed ones restarted without
//! losing what they were given, bad configurations refused with the
//! exporter, line or field named while the running exporters keep going.
//! Stand-ins on 127.0.0.1 only.

mod support;

use std::time::Duration;

use sightline_export::config::ExportConfig;
use sightline_export::manager::load_and_apply;
use support::*;

fn yaml(exporters: &[String]) -> String {
    format!("exporters:\n{}", exporters.concat())
}

/// 7. An unchanged exporter is not restarted (its sink, token and spool
/// go on: what waited in it during the reload arrives once); a changed one
/// is; a configuration with an exporter that cannot be built is refused,
/// naming it, and the running exporters keep delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_restarts_only_what_changed_and_refuses_what_cannot_run() {
    let dir = TempDir::new("reload");
    let azure = Azure::start(dir.path()).await;
    let spool_dir = dir.join("spool");
    let (one, two) = (dir.join("one.log"), dir.join("two.log"));
    let keep = exporter("keep", &azure.sink(), "");
    let cfg1 = config(&yaml(&[keep.clone(), exporter("change", &file_sink(&one), "")]), &spool_dir);
    let cfg2 = config(&yaml(&[keep.clone(), exporter("change", &file_sink(&two), "")]), &spool_dir);
    let metrics = Metrics::new();
    let exporters = exporters(&metrics);

    let report = exporters.apply(&cfg1).await.expect("apply");
    assert_eq!(report.started, ["keep", "change"]);
    let a = uuids(7, 0, 200);
    push_all(&exporters, &a, 50);
    assert!(
        wait_until(Duration::from_secs(20), || has_all(&azure.uuids(), &a) && has_all(&file_uuids(&one), &a)).await,
        "first flows missing"
    );
    assert_eq!(azure.standin.tokens_issued(), 1);

    // Flows wait in keep's spool (its sink is down) while the
    // configuration changes.
    azure.standin.set_down(true).expect("Azure down");
    let b = uuids(7, 200, 200);
    push_all(&exporters, &b, 50);
    assert!(
        wait_until(Duration::from_secs(20), || metrics.spool_records("keep") == 200 && has_all(&file_uuids(&one), &b))
            .await,
        "{}",
        metrics.scrape()
    );
    let report = exporters.apply(&cfg2).await.expect("apply");
    assert_eq!(report.unchanged, ["keep"]);
    assert_eq!(report.restarted, ["change"]);
    assert!(report.started.is_empty() && report.stopped.is_empty(), "{report:?}");
    let c = uuids(7, 400, 200);
    push_all(&exporters, &c, 50);
    azure.standin.set_down(false).expect("Azure up");
    let abc: Vec<String> = [a.clone(), b.clone(), c.clone()].concat();
    assert!(
        wait_until(Duration::from_secs(30), || {
            has_all(&azure.uuids(), &abc) && has_all(&file_uuids(&two), &c) && metrics.records("keep", "sent") >= 600
        })
        .await,
        "after the reload: keep misses {:?}, change misses {:?}",
        missing(&azure.uuids(), &abc),
        missing(&file_uuids(&two), &c)
    );
    // The changed exporter writes its new file from the reload on.
    assert!(missing(&file_uuids(&one), &c).len() == c.len().min(5), "the old file got flows after the reload");
    assert!(missing(&file_uuids(&two), &[a.clone(), b.clone()].concat()).len() == 5);
    // The unchanged exporter was left alone: the same sink (no new token)
    // and the same spool, nothing sent twice, its counters go on.
    assert_eq!(azure.standin.tokens_issued(), 1, "keep's sink was rebuilt");
    assert_eq!(duplicates(&azure.uuids(), &abc), 0);
    assert_eq!(metrics.records("keep", "sent"), 600);

    // An exporter that parses but cannot be built: a CA file that is not
    // PEM. Refused, naming it; nothing changes.
    let garbage = dir.join("garbage-ca.pem");
    std::fs::write(&garbage, "this is not a certificate\n").expect("write");
    let bad_otlp = exporter(
        "bad-otlp",
        &format!("{{otlp: {{endpoint: \"https://127.0.0.1:4317\", caFile: {}}}}}", q(garbage.display().to_string())),
        "",
    );
    let cfg3 = config(&yaml(&[keep.clone(), exporter("change", &file_sink(&two), ""), bad_otlp]), &spool_dir);
    let e = exporters.apply(&cfg3).await.expect_err("a CA file that is not PEM");
    assert_eq!(e.name, "bad-otlp", "{e}");
    assert!(e.to_string().contains("bad-otlp"), "{e}");
    println!("refused: {e}");
    // The same for a changed exporter: keep with a garbage CA file is
    // refused and the running keep is not touched.
    let bad_keep = exporter("keep", &azure.sink_with_ca(&garbage), "");
    let cfg4 = config(&yaml(&[bad_keep, exporter("change", &file_sink(&dir.join("three.log")), "")]), &spool_dir);
    let e = exporters.apply(&cfg4).await.expect_err("a CA file that is not PEM");
    assert_eq!(e.name, "keep", "{e}");
    println!("refused: {e}");
    let mut names = exporters.names();
    names.sort();
    assert_eq!(names, ["change", "keep"]);

    // The running exporters keep delivering.
    let d = uuids(7, 600, 200);
    push_all(&exporters, &d, 50);
    assert!(
        wait_until(Duration::from_secs(20), || has_all(&azure.uuids(), &d) && has_all(&file_uuids(&two), &d)).await,
        "after the refusals: keep misses {:?}, change misses {:?}",
        missing(&azure.uuids(), &d),
        missing(&file_uuids(&two), &d)
    );
    assert!(file_lines(&dir.join("three.log")).is_empty());
    assert_eq!(azure.standin.tokens_issued(), 1, "keep's sink was rebuilt by a refused configuration");
    exporters.shutdown().await;
}

/// 7b. `load_and_apply` (the relay's reload) refuses a file that does not
/// parse, naming the line and the field, counts the failure, and leaves
/// the running exporters alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_file_is_refused_and_changes_nothing() {
    let dir = TempDir::new("badfile");
    let spool_dir = dir.join("spool");
    let log = dir.join("flows.log");
    let good = yaml(&[exporter("files", &file_sink(&log), "")]);
    let metrics = Metrics::new();
    let exporters = exporters(&metrics);
    let path = dir.join("export.yaml");
    std::fs::write(&path, &good).expect("write");
    let ctx = context(&spool_dir);
    load_and_apply(&exporters, &path, &ctx).await.expect("a good file");

    let secret = dir.join("no-such-secret");
    let cases = [
        // An unknown sink.
        (
            "exporters:\n  - name: files\n    sink:\n      kafka: {brokers: [x]}\n".to_owned(),
            "line 4: exporters[0].sink.kafka",
        ),
        // A filter that does not compile.
        (
            format!(
                "exporters:\n  - name: files\n    include:\n      - source_ip: [\"10.0.0.0/33\"]\n    sink: {}\n",
                file_sink(&log)
            ),
            "line 4: exporters[0].include[0].source_ip",
        ),
        // A field-mask path that does not exist.
        (
            format!("exporters:\n  - name: files\n    fieldMask: [time, source.nope]\n    sink: {}\n", file_sink(&log)),
            "line 3: exporters[0].fieldMask[1]",
        ),
        // A secret file that does not exist.
        (
            format!(
                "exporters:\n  - name: files\n    sink:\n      azureMonitor:\n        endpoint: https://127.0.0.1:1\n        dcrImmutableId: dcr-1\n        stream: Custom-X\n        auth:\n          clientSecret: {{tenantId: t, clientId: c, secretFile: {}}}\n",
                q(secret.display().to_string())
            ),
            "line 9: exporters[0].sink.azureMonitor.auth.clientSecret.secretFile",
        ),
        // A CA file that does not exist.
        (
            format!(
                "exporters:\n  - name: files\n    sink:\n      otlp:\n        endpoint: https://127.0.0.1:4317\n        caFile: {}\n",
                q(dir.join("no-such-ca.pem").display().to_string())
            ),
            "line 6: exporters[0].sink.otlp.caFile",
        ),
    ];
    for (text, want) in &cases {
        std::fs::write(&path, text).expect("write");
        let e = load_and_apply(&exporters, &path, &ctx).await.expect_err("refused");
        assert!(e.contains(want), "{e:?} does not name {want:?}");
        assert_eq!(exporters.names(), ["files"]);
    }
    let failures = metrics.get("sightline_export_config_reloads_total", &[("result", "failure")]);
    assert!((failures - cases.len() as f64).abs() < 0.5, "{}", metrics.scrape());
    assert!(metrics.get("sightline_export_config_last_reload_successful", &[]).abs() < 0.5);

    let ids = uuids(17, 0, 100);
    push_all(&exporters, &ids, 50);
    assert!(wait_until(Duration::from_secs(20), || has_all(&file_uuids(&log), &ids)).await);
    exporters.shutdown().await;
}

/// A changed exporter hands its spool to its new instance while flows keep
/// coming: every flow pushed before, during and after the reload arrives,
/// none twice (the sink never failed, so nothing needed resending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_exporter_takes_over_its_spool_while_flows_keep_coming() {
    let dir = TempDir::new("handover");
    let azure = Azure::start(dir.path()).await;
    let spool_dir = dir.join("spool");
    // A change of the spool's bound (same folder), or of something else
    // (the same spool, taken over).
    let version = |mb: u32, end: &str| -> ExportConfig {
        let extra = format!("    spool: {{maxSizeMB: {mb}}}\n{end}");
        config(&yaml(&[exporter("azure", &azure.sink(), &extra)]), &spool_dir)
    };
    let metrics = Metrics::new();
    let exporters = std::sync::Arc::new(exporters(&metrics));
    exporters.apply(&version(8, "")).await.expect("apply");

    let all = uuids(27, 0, 6000);
    let pusher = {
        let exporters = std::sync::Arc::clone(&exporters);
        let all = all.clone();
        tokio::spawn(async move {
            for chunk in all.chunks(20) {
                exporters.push(&batch(chunk));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // Reload a few times while the flows come (pacing, not synchronising).
    let mut reloads = 0;
    for (mb, end) in
        [(9, ""), (9, "    end: 2099-01-01T00:00:00Z\n"), (10, ""), (10, "    end: 2098-01-01T00:00:00Z\n")]
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let report = exporters.apply(&version(mb, end)).await.expect("apply");
        assert_eq!(report.restarted, ["azure"]);
        reloads += 1;
    }
    pusher.await.expect("pusher");
    let arrived = wait_until(Duration::from_secs(30), || has_all(&azure.uuids(), &all)).await;
    let received = azure.uuids();
    println!(
        "spool handover: {reloads} reloads, {} of {} flows arrived, {} duplicates; dropped {}",
        tally(&received).len(),
        all.len(),
        duplicates(&received, &all),
        metrics.records("azure", "dropped")
    );
    assert!(arrived, "flows lost across the reloads: {:?}", missing(&received, &all));
    assert_eq!(metrics.records("azure", "dropped"), 0);
    assert_eq!(duplicates(&received, &all), 0, "flows sent twice across the reloads");
    exporters.shutdown().await;
}

/// A changed exporter without a spool (a file sink's in-memory queue)
/// hands what it holds to its new instance: here the open aggregation
/// windows it emits when it stops, which the new instance writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_exporter_without_a_spool_hands_over_its_queue() {
    let dir = TempDir::new("memory");
    let spool_dir = dir.join("spool");
    let (one, two) = (dir.join("one.log"), dir.join("two.log"));
    // Windows far longer than the test: nothing is emitted before the stop.
    let cfg =
        |path: &std::path::Path| config(&yaml(&[exporter("agg", &file_sink(path), "    aggregate: 1h\n")]), &spool_dir);
    let metrics = Metrics::new();
    let exporters = exporters(&metrics);
    exporters.apply(&cfg(&one)).await.expect("apply");
    let all = uuids(37, 0, 500);
    push_all(&exporters, &all, 100);
    let report = exporters.apply(&cfg(&two)).await.expect("apply");
    assert_eq!(report.restarted, ["agg"]);
    let counted = || -> u64 {
        [&one, &two]
            .iter()
            .flat_map(|p| file_lines(p))
            .map(|l| l.pointer("/flow_count/egress").and_then(serde_json::Value::as_u64).unwrap_or(0))
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(20), || counted() >= all.len() as u64).await,
        "the open windows of the restarted exporter were lost: {} of {} flows counted, {}",
        counted(),
        all.len(),
        metrics.scrape()
    );
    assert_eq!(counted(), all.len() as u64);
    assert_eq!(metrics.records("agg", "dropped"), 0);
    exporters.shutdown().await;
}
