//! The lab's supervisor, as the kubelet restarting a DaemonSet's pod: a
//! collector or the relay killed with `kill -9` is started again (new pid,
//! a restart counted in `lab status`), the node is programmed again, the
//! relay's follow clients carry on across a collector's restart, and
//! `sightline observe -f` carries on across the relay's.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sightline_e2e::{Lab, processes_mentioning, require_root, sightline, sightline_bin, sightline_ok};
use sightline_proto::flow::FlowFilter;
use sightline_proto::observer::observer_client::ObserverClient;
use sightline_proto::observer::{GetFlowsRequest, get_flows_response::ResponseTypes};
use sightline_proto::relay::NodeState;

const LAB: &str = "e2e-sup";

const APP: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec:
  nodeName: node-2
  containers: [{name: c, ports: [{containerPort: 80}]}]
";

/// Polls `f` until it gives something or `limit` passes.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill9(pid: u64) {
    // SAFETY: plain kill(2) of a process of this test's lab.
    assert_eq!(unsafe { libc::kill(i32::try_from(pid).expect("pid"), libc::SIGKILL) }, 0, "kill -9 {pid}");
}

fn collector(lab: &Lab, node: usize) -> (u64, u64) {
    let s = lab.status();
    let c = &s["nodes"][node]["collector"];
    (c["pid"].as_u64().expect("pid"), c["restarts"].as_u64().expect("restarts"))
}

fn relay(lab: &Lab) -> (u64, u64) {
    let s = lab.status();
    (s["relay"]["pid"].as_u64().expect("pid"), s["relay"]["restarts"].as_u64().expect("restarts"))
}

fn unix_ns(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i128
}

/// What a follow client of the relay saw.
#[derive(Default)]
struct Follower {
    /// (node, time in ns) of each flow.
    flows: Vec<(String, i128)>,
    /// (state, nodes) of each node status event.
    status: Vec<(i32, Vec<String>)>,
    /// Why the stream ended, if it did.
    ended: Option<String>,
}

/// Follows the relay's flows to `x/b` on a thread of its own.
fn follow_relay(access: sightline_e2e::GrpcAccess, relay: String) -> Arc<Mutex<Follower>> {
    let seen = Arc::new(Mutex::new(Follower::default()));
    let out = Arc::clone(&seen);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let mut c = ObserverClient::new(access.channel(&relay).await);
            let req = GetFlowsRequest {
                follow: true,
                whitelist: vec![FlowFilter { destination_pod: vec!["x/b".into()], ..FlowFilter::default() }],
                ..GetFlowsRequest::default()
            };
            let mut stream = c.get_flows(req).await.expect("GetFlows").into_inner();
            let why = loop {
                match stream.message().await {
                    Ok(Some(r)) => {
                        let mut f = out.lock().expect("lock");
                        match r.response_types {
                            Some(ResponseTypes::Flow(_)) => {
                                let t = r.time.expect("time");
                                f.flows.push((r.node_name, i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)));
                            }
                            Some(ResponseTypes::NodeStatus(s)) => f.status.push((s.state_change, s.node_names)),
                            _ => {}
                        }
                    }
                    Ok(None) => break "end of stream".to_owned(),
                    Err(e) => break e.to_string(),
                }
            };
            out.lock().expect("lock").ended = Some(why);
        });
    });
    seen
}

/// `sightline observe -f` as a child process, its lines collected.
struct Observer {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

impl Observer {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(sightline_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sightline observe -f");
        let collect = |r: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let into = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    into.lock().expect("lock").push(line);
                }
            });
            lines
        };
        let out = collect(Box::new(child.stdout.take().expect("stdout")));
        let err = collect(Box::new(child.stderr.take().expect("stderr")));
        Self { child, out, err }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The time (ns) of a JSON line of `observe -o json`.
fn json_time_ns(line: &str) -> Option<i128> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let t = v["time"].as_str()?;
    Some(t.parse::<jiff::Timestamp>().ok()?.as_nanosecond())
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn killed_collectors_and_relays_come_back_and_followers_carry_on() {
    if !require_root() {
        return;
    }
    let lab = Lab::up(LAB, APP, &["--nodes", "2"]);
    let status = lab.status();
    let supervisor = status["supervisor"]["pid"].as_u64().expect("lab status shows the supervisor");
    assert_eq!(status["supervisor"]["running"], true);
    let relay_addr = status["relay"]["grpc"].as_str().expect("relay").to_owned();
    assert_eq!(collector(&lab, 1).1, 0);
    assert_eq!(relay(&lab).1, 0);
    assert!(lab.probe("x/a", "x/b", 80, "TCP"));

    // A follower of the relay, connected before anything is killed.
    let follower = follow_relay(lab.grpc(), relay_addr.clone());
    wait_for("the follower to see x/a → x/b", Duration::from_secs(30), || {
        let _ = lab.probe("x/a", "x/b", 80, "TCP");
        (!follower.lock().expect("lock").flows.is_empty()).then_some(())
    });

    // kill -9 node-2's collector: the supervisor starts it again.
    let (old, _) = collector(&lab, 1);
    kill9(old);
    let killed_at = SystemTime::now();
    let (new, restarts) = wait_for("node-2's collector to be restarted", Duration::from_secs(60), || {
        let (pid, restarts) = collector(&lab, 1);
        (pid != old).then_some((pid, restarts))
    });
    assert_eq!(restarts, 1, "one restart counted");
    assert!(processes_mentioning(&format!("/{LAB}/node-2")).contains(&u32::try_from(new).expect("pid")));
    // Programmed again: its endpoint is attached and traffic passes.
    let stats = &lab.status()["nodes"][1]["collector"]["stats"];
    assert_eq!(stats["endpoints"], 1, "{stats}");
    assert_eq!(stats["attached_interfaces"].as_array().map(Vec::len), Some(1), "{stats}");
    assert!(lab.probe("x/a", "x/b", 80, "TCP"));
    // The follower heard node-2 go and come back, and gets its new flows
    // on the same stream.
    wait_for("node-2's flows after its restart on the same follow stream", Duration::from_secs(60), || {
        let _ = lab.probe("x/a", "x/b", 80, "TCP");
        let f = follower.lock().expect("lock");
        assert!(f.ended.is_none(), "the follow stream ended: {:?}", f.ended);
        f.flows.iter().any(|(n, t)| n == "node-2" && *t > unix_ns(killed_at)).then_some(())
    });
    {
        let f = follower.lock().expect("lock");
        let node2 = vec!["node-2".to_owned()];
        let gone = f.status.iter().position(|s| *s == (NodeState::NodeUnavailable as i32, node2.clone()));
        let back = f.status.iter().rposition(|s| *s == (NodeState::NodeConnected as i32, node2.clone()));
        assert!(matches!((gone, back), (Some(g), Some(b)) if g < b), "node status: {:?}", f.status);
    }

    // `sightline observe -f` on the relay, started before the relay dies.
    let observer = Observer::start(&["observe", "-f", "--lab", LAB, "--to-pod", "x/b", "-o", "json"]);
    wait_for("observe -f to print a flow", Duration::from_secs(30), || {
        let _ = lab.probe("x/a", "x/b", 80, "TCP");
        (!observer.out.lock().expect("lock").is_empty()).then_some(())
    });
    let (old_relay, _) = relay(&lab);
    kill9(old_relay);
    let relay_killed_at = unix_ns(SystemTime::now());
    let (new_relay, restarts) = wait_for("the relay to be restarted", Duration::from_secs(60), || {
        let (pid, restarts) = relay(&lab);
        (pid != old_relay).then_some((pid, restarts))
    });
    assert_ne!(new_relay, 0);
    assert_eq!(restarts, 1);
    assert_eq!(lab.status()["relay"]["grpc"].as_str(), Some(relay_addr.as_str()), "same address");
    // `sightline observe` works again.
    wait_for("sightline observe on the restarted relay", Duration::from_secs(30), || {
        let _ = lab.probe("x/a", "x/b", 80, "TCP");
        let out = sightline(&["observe", "--lab", LAB, "--to-pod", "x/b", "--last", "10"]);
        (out.status.success() && String::from_utf8_lossy(&out.stdout).contains("x/b")).then_some(())
    });
    // The follower reconnected and prints flows made after the restart.
    wait_for("observe -f to carry on after the relay's restart", Duration::from_secs(60), || {
        let _ = lab.probe("x/a", "x/b", 80, "TCP");
        let lines = observer.out.lock().expect("lock");
        lines.iter().filter_map(|l| json_time_ns(l)).any(|t| t > relay_killed_at).then_some(())
    });
    let errors = observer.err.lock().expect("lock").join("\n");
    assert!(errors.contains("lost the flow API") && errors.contains("reconnected"), "{errors}");
    drop(observer);

    // A deliberate restart counts too, and the supervisor leaves it alone.
    let (old1, _) = collector(&lab, 0);
    let out = sightline_ok(&["lab", "restart", "collector", "node-1", "--name", LAB]);
    assert!(out.contains("restarted"), "{out}");
    let (new1, restarts1) = collector(&lab, 0);
    assert!(new1 != old1 && restarts1 == 1, "{old1} → {new1}, {restarts1} restarts");
    assert!(lab.probe("x/a", "x/b", 80, "TCP"));

    let log = std::fs::read_to_string(format!("/run/sightline/labs/{LAB}/supervisor.log")).expect("supervisor.log");
    assert!(log.contains(&format!("the collector of node-2 (pid {old}) exited")), "{log}");
    assert!(log.contains(&format!("restarted the collector of node-2: pid {new} (restart 1)")), "{log}");
    assert!(log.contains(&format!("restarted the relay: pid {new_relay} (restart 1)")), "{log}");
    assert!(!log.contains("collector of node-1"), "the supervisor restarted what `lab restart` did:\n{log}");
    assert_eq!(collector(&lab, 0).1, 1);

    // `lab down` stops the supervisor with everything else.
    drop(lab);
    wait_for("every process of the lab to be gone", Duration::from_secs(10), || {
        // SAFETY: signal 0 only checks that the process exists.
        let supervisor_gone = unsafe { libc::kill(supervisor as i32, 0) } != 0
            || std::fs::read_to_string(format!("/proc/{supervisor}/stat")).is_ok_and(|s| s.contains(") Z"));
        (supervisor_gone && processes_mentioning(&format!("--name {LAB}")).is_empty()).then_some(())
    });
}
