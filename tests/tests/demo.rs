//! `sightline demo`: the sample application comes up, traffic flows, the live stream shows
//! it, including NetworkPolicy at work (a `POLICY_DENIED` drop naming the policy), and the
//! lab is gone afterwards.

use sightline_e2e::{require_root, sightline};

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn the_demo_shows_flows_and_a_policy_denial_by_name_then_cleans_up() {
    if !require_root() {
        return;
    }
    let log = std::env::temp_dir().join(format!("sightline-demo-test-{}.log", std::process::id()));
    let out = sightline(&["demo", "--duration", "12s", "--name", "e2e-demo", "--flow-log", log.to_str().expect("utf-8")]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "demo failed:\n{stderr}");
    assert!(stdout.contains("shop/frontend") && stdout.contains("shop/cart"), "no flows of the sample app:\n{stdout}");
    let denied: Vec<&str> = stdout.lines().filter(|l| l.contains("Policy denied DROPPED")).collect();
    assert!(!denied.is_empty(), "no policy drop in the live stream:\n{stdout}");
    assert!(
        denied.iter().all(|l| l.contains("shop/cart") && l.contains("payments/db") && l.contains("payments/db-only-from-api")),
        "policy drops without the cart, the database or the policy's name: {denied:#?}"
    );
    // Allowed traffic to the same database is not dropped.
    assert!(stdout.lines().any(|l| l.contains("payments/api") && l.contains("-> payments/db:5432") && l.contains("FORWARDED")), "{stdout}");
    let written = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(written.lines().any(|l| l.contains("POLICY_DENIED")), "the flow log has no policy drop");
    assert!(stderr.contains("lab e2e-demo removed"), "{stderr}");
    assert!(!std::path::Path::new("/run/sightline/labs/e2e-demo").exists(), "the demo left its lab behind");
    let _ = std::fs::remove_file(&log);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn the_demo_stops_cleanly_on_sigterm() {
    if !require_root() {
        return;
    }
    use std::io::BufRead as _;
    let log = std::env::temp_dir().join(format!("sightline-demo-term-{}.log", std::process::id()));
    let mut demo = std::process::Command::new(sightline_e2e::sightline_bin())
        .args(["demo", "--name", "e2e-demo-term", "--flow-log", log.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the demo");
    // Once the live stream shows a flow, the demo is running.
    let mut stdout = std::io::BufReader::new(demo.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut seen = false;
    while stdout.read_line(&mut line).unwrap_or(0) > 0 {
        if line.contains("shop/") {
            seen = true;
            break;
        }
        line.clear();
    }
    assert!(seen, "the demo printed no flow before it ended");
    // SAFETY: plain kill(2) of the child this test started.
    unsafe { libc::kill(demo.id() as i32, libc::SIGTERM) };
    // Drain stdout so the demo is never blocked writing it.
    let drain = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let status = sightline_e2e::wait_until("the demo to exit after SIGTERM", std::time::Duration::from_secs(60), || demo.try_wait().expect("wait"));
    let _ = drain.join();
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut demo.stderr.take().expect("stderr"), &mut stderr);
    assert!(status.success(), "the demo failed on SIGTERM ({status}):\n{stderr}");
    assert!(stderr.contains("lab e2e-demo-term removed"), "{stderr}");
    assert!(!std::path::Path::new("/run/sightline/labs/e2e-demo-term").exists(), "the demo left its lab behind");
    let _ = std::fs::remove_file(&log);
}
