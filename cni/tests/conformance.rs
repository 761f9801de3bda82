//! The plugin run as a container runtime runs it: the binary, `CNI_*` in
//! its environment, the configuration on stdin, inside the node's network
//! namespace. The node and pod namespaces are made by each test (names
//! unique to the test and the process) and removed whatever happens; traffic
//! stays between them.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PLUGIN: &str = env!("CARGO_BIN_EXE_sightline-cni");

/// A network namespace made by a test, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        ip(&["netns", "add", &name]);
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.0]).args(args).output().expect("running ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A node: its namespace (the gateway on lo, forwarding on), a store folder
/// and the configuration.
struct Node {
    ns: Netns,
    data_dir: PathBuf,
    conf: Value,
}

impl Node {
    fn new(test: &str, third_octet: u8) -> Node {
        let tag = format!("cnit{}-{test}", std::process::id());
        let ns = Netns::new(format!("{tag}-node"));
        let gw = format!("10.250.{third_octet}.1");
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ip(&["-n", &ns.0, "addr", "add", &format!("{gw}/32"), "dev", "lo"]);
        let out = ns.exec(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        assert!(out.status.success());
        let data_dir = std::env::temp_dir().join(format!("{tag}-ipam"));
        let _ = std::fs::remove_dir_all(&data_dir);
        let conf = json!({
            "cniVersion": "1.1.0", "name": "conformance", "type": "sightline-cni", "gateway": gw, "mtu": 1400,
            "ipam": {"ranges": [format!("10.250.{third_octet}.0/24")], "exclude": [format!("10.250.{third_octet}.0/32")], "dataDir": data_dir},
        });
        Node { ns, data_dir, conf }
    }

    fn pod(&self, name: &str) -> Netns {
        Netns::new(format!("{}-{name}", self.ns.0.trim_end_matches("-node")))
    }

    fn run(&self, command: &str, container: &str, pod: Option<&Netns>, args: &str, conf: &Value) -> (bool, Value) {
        let mut env = vec![("CNI_COMMAND", command.to_owned()), ("CNI_CONTAINERID", container.to_owned()), ("CNI_IFNAME", "eth0".to_owned())];
        if let Some(p) = pod {
            env.push(("CNI_NETNS", p.path()));
        }
        if !args.is_empty() {
            env.push(("CNI_ARGS", args.to_owned()));
        }
        run_plugin(Some(&self.ns.0), &env, &conf.to_string())
    }

    fn allocations(&self) -> usize {
        std::fs::read_dir(self.data_dir.join("conformance")).map_or(0, |d| d.filter(|e| e.as_ref().unwrap().file_name() != "lock").count())
    }

    fn link_exists(&self, name: &str) -> bool {
        Command::new("ip").args(["-n", &self.ns.0, "link", "show", "dev", name]).stderr(Stdio::null()).stdout(Stdio::null()).status().unwrap().success()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Runs the plugin (inside `netns` when given) with exactly `env` and
/// `stdin`; returns whether it succeeded and what it printed (JSON, or null
/// for nothing).
fn run_plugin(netns: Option<&str>, env: &[(&str, String)], stdin: &str) -> (bool, Value) {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, PLUGIN]);
            c
        }
        None => Command::new(PLUGIN),
    };
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("running the plugin");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let value = if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or_else(|e| panic!("plugin stdout is not JSON ({e}): {text}")) };
    (out.status.success(), value)
}

fn assert_error(outcome: (bool, Value), code: u64, needle: &str) {
    let (ok, v) = outcome;
    assert!(!ok, "expected error {code}, got success: {v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["msg"].is_string() && v["cniVersion"].is_string(), "{v}");
    assert!(v["details"].as_str().unwrap().contains(needle), "{needle:?} not in {v}");
}

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

#[test]
fn version_lists_1_0_0_and_1_1_0() {
    let (ok, v) = run_plugin(None, &[("CNI_COMMAND", "VERSION".into())], r#"{"cniVersion":"1.0.0"}"#);
    assert!(ok, "{v}");
    let versions: Vec<&str> = v["supportedVersions"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(versions.contains(&"1.0.0") && versions.contains(&"1.1.0"), "{v}");
    assert_eq!(v["cniVersion"], "1.0.0");
}

#[test]
fn bad_environment_configuration_and_versions_get_the_spec_codes() {
    let conf = json!({"cniVersion": "1.1.0", "name": "n", "type": "sightline-cni", "gateway": "10.250.9.1",
                      "ipam": {"ranges": ["10.250.9.0/24"], "dataDir": "/nonexistent-sightline-cni"}});
    let env = |c: &str| vec![("CNI_COMMAND", c.to_owned()), ("CNI_CONTAINERID", "c1".to_owned()), ("CNI_IFNAME", "eth0".to_owned()), ("CNI_NETNS", "/run/netns/sightline-cni-no-such-netns".to_owned())];
    assert_error(run_plugin(None, &[], &conf.to_string()), 4, "CNI_COMMAND");
    assert_error(run_plugin(None, &[("CNI_COMMAND", "FROB".into())], &conf.to_string()), 4, "FROB");
    assert_error(run_plugin(None, &env("ADD")[..1], &conf.to_string()), 4, "CNI_CONTAINERID");
    assert_error(run_plugin(None, &env("ADD")[..3], &conf.to_string()), 4, "CNI_NETNS");
    assert_error(run_plugin(None, &env("ADD"), "{not json"), 6, "decoding");
    let mut old = conf.clone();
    old["cniVersion"] = "0.3.1".into();
    assert_error(run_plugin(None, &env("ADD"), &old.to_string()), 1, "0.3.1");
    let mut bad = conf.clone();
    bad["mtu"] = 10.into();
    assert_error(run_plugin(None, &env("ADD"), &bad.to_string()), 7, "mtu");
    let mut unknown = conf.clone();
    unknown["frobnicate"] = true.into();
    assert_error(run_plugin(None, &env("ADD"), &unknown.to_string()), 2, "frobnicate");
    assert_error(run_plugin(None, &env("ADD"), &conf.to_string()), 3, "does not exist");
    assert_error(run_plugin(None, &env("CHECK"), &conf.to_string()), 7, "prevResult");
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root (network namespaces)")]
fn add_check_del_and_del_again() {
    let node = Node::new("acd", 11);
    let pod = node.pod("a");
    let (ok, res) = node.run("ADD", "ctr-acd-a", Some(&pod), "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;IP=10.250.11.7", &node.conf);
    assert!(ok, "{res}");
    assert_eq!(res["cniVersion"], "1.1.0");
    assert_eq!(res["ips"][0]["address"], "10.250.11.7/32");
    assert_eq!(res["ips"][0]["gateway"], "10.250.11.1");
    assert_eq!(res["ips"][0]["interface"], 1);
    assert_eq!(res["interfaces"][1]["sandbox"], pod.path());
    assert_eq!(res["interfaces"][1]["mac"], "02:00:0a:fa:0b:07");
    assert_eq!(res["routes"][0]["dst"], "0.0.0.0/0");
    let lxc = res["interfaces"][0]["name"].as_str().unwrap().to_owned();
    assert!(lxc.starts_with("lxc") && lxc.len() == 15, "{lxc}");
    assert!(node.link_exists(&lxc));
    // The pod side as the lab made it.
    let link = ip(&["-n", &pod.0, "-o", "link", "show", "dev", "eth0"]);
    assert!(link.contains("mtu 1400") && link.contains("02:00:0a:fa:0b:07"), "{link}");
    let routes = ip(&["-n", &pod.0, "route"]);
    assert!(routes.contains("default via 10.250.11.1 dev eth0"), "{routes}");
    assert!(routes.contains("10.250.11.1 dev eth0 scope link"), "{routes}");
    let v6 = pod.exec(&["cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"]);
    if v6.status.success() {
        assert_eq!(String::from_utf8_lossy(&v6.stdout).trim(), "1");
    }
    assert!(ip(&["-n", &node.ns.0, "route"]).contains(&format!("10.250.11.7 dev {lxc}")));

    let (ok, out) = node.run("CHECK", "ctr-acd-a", Some(&pod), "", &with_prev(&node.conf, &res));
    assert!(ok, "{out}");
    // A repeated ADD is idempotent: same address, same result.
    let (ok, again) = node.run("ADD", "ctr-acd-a", Some(&pod), "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a", &node.conf);
    assert!(ok, "{again}");
    assert_eq!(again, res);
    // Another container may not take the address.
    let other = node.pod("b");
    assert_error(node.run("ADD", "ctr-acd-b", Some(&other), "IP=10.250.11.7", &node.conf), 100, "already allocated");
    assert_error(node.run("ADD", "ctr-acd-b", Some(&other), "IP=10.250.12.7", &node.conf), 100, "not in the node's ranges");
    assert!(!node.link_exists(&lxc_of(&node, "ctr-acd-b")));
    // CHECK notices a missing interface.
    ip(&["-n", &pod.0, "addr", "del", "10.250.11.7/32", "dev", "eth0"]);
    assert_error(node.run("CHECK", "ctr-acd-a", Some(&pod), "", &with_prev(&node.conf, &res)), 102, "does not have 10.250.11.7/32");

    for _ in 0..2 {
        let (ok, out) = node.run("DEL", "ctr-acd-a", Some(&pod), "", &with_prev(&node.conf, &res));
        assert!(ok, "{out}");
        assert_eq!(out, Value::Null);
    }
    assert!(!node.link_exists(&lxc));
    assert_eq!(node.allocations(), 0);
    assert!(!ip(&["-n", &pod.0, "link"]).contains("eth0"));
    assert_error(node.run("CHECK", "ctr-acd-a", Some(&pod), "", &with_prev(&node.conf, &res)), 102, "no allocation");
}

fn lxc_of(_node: &Node, container: &str) -> String {
    sightline_cni::host_ifname(container, "eth0")
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root (network namespaces)")]
fn del_cleans_half_made_pods_and_unknown_containers() {
    let node = Node::new("half", 12);
    // Unknown container, with and without a netns.
    let (ok, out) = node.run("DEL", "ctr-never-added", None, "", &node.conf);
    assert!(ok, "{out}");
    // The pod's namespace is gone: the host side and the address still go.
    let pod = node.pod("gone");
    let (ok, res) = node.run("ADD", "ctr-half-gone", Some(&pod), "", &node.conf);
    assert!(ok, "{res}");
    assert_eq!(res["ips"][0]["address"], "10.250.12.2/32");
    let lxc = lxc_of(&node, "ctr-half-gone");
    let path = pod.path();
    drop(pod);
    let (ok, out) = run_plugin(
        Some(&node.ns.0),
        &[("CNI_COMMAND", "DEL".into()), ("CNI_CONTAINERID", "ctr-half-gone".into()), ("CNI_IFNAME", "eth0".into()), ("CNI_NETNS", path)],
        &node.conf.to_string(),
    );
    assert!(ok, "{out}");
    assert!(!node.link_exists(&lxc));
    assert_eq!(node.allocations(), 0);
    // An address reserved but no veth (an ADD that died after allocating).
    std::fs::write(node.data_dir.join("conformance/10.250.12.9"), r#"{"container_id":"ctr-half-addr","ifname":"eth0"}"#).unwrap();
    let (ok, out) = node.run("DEL", "ctr-half-addr", None, "", &node.conf);
    assert!(ok, "{out}");
    assert_eq!(node.allocations(), 0);
    // A host side with no pod side and no allocation.
    let lxc = lxc_of(&node, "ctr-half-veth");
    ip(&["-n", &node.ns.0, "link", "add", &lxc, "type", "veth", "peer", "name", "orphan0"]);
    let (ok, out) = node.run("DEL", "ctr-half-veth", None, "", &node.conf);
    assert!(ok, "{out}");
    assert!(!node.link_exists(&lxc));
    assert!(!node.link_exists("orphan0"));
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root (network namespaces)")]
fn sixteen_concurrent_adds_get_distinct_addresses() {
    let node = Arc::new(Node::new("conc", 13));
    let pods: Vec<Arc<Netns>> = (0..16).map(|i| Arc::new(node.pod(&format!("p{i}")))).collect();
    let handles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let (node, pod) = (Arc::clone(&node), Arc::clone(pod));
            std::thread::spawn(move || node.run("ADD", &format!("ctr-conc-{i}"), Some(&pod), "", &node.conf))
        })
        .collect();
    let mut addrs = BTreeSet::new();
    for h in handles {
        let (ok, res) = h.join().unwrap();
        assert!(ok, "{res}");
        addrs.insert(res["ips"][0]["address"].as_str().unwrap().to_owned());
    }
    assert_eq!(addrs.len(), 16, "{addrs:?}");
    assert_eq!(node.allocations(), 16);
    for (i, pod) in pods.iter().enumerate() {
        let (ok, out) = node.run("DEL", &format!("ctr-conc-{i}"), Some(pod), "", &node.conf);
        assert!(ok, "{out}");
    }
    assert_eq!(node.allocations(), 0);
}

fn ping(from: &Netns, to: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = from.exec(&["ping", "-c", "1", "-W", "1", to]);
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "{} cannot ping {to}: {}", from.0, String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root (network namespaces)")]
fn plugged_pods_reach_each_other_and_the_node() {
    let node = Node::new("ping", 14);
    let (a, b) = (node.pod("a"), node.pod("b"));
    let (ok, ra) = node.run("ADD", "ctr-ping-a", Some(&a), "", &node.conf);
    assert!(ok, "{ra}");
    let (ok, rb) = node.run("ADD", "ctr-ping-b", Some(&b), "", &node.conf);
    assert!(ok, "{rb}");
    let addr = |r: &Value| r["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32").to_owned();
    ping(&a, &addr(&rb));
    ping(&b, &addr(&ra));
    ping(&a, "10.250.14.1");
    for (c, p) in [("ctr-ping-a", &a), ("ctr-ping-b", &b)] {
        assert!(node.run("DEL", c, Some(p), "", &node.conf).0);
    }
}

/// A stand-in collector: answers every request line with `answer` and
/// keeps the requests.
fn fake_collector(path: &Path, answer: &'static str) -> Arc<Mutex<Vec<Value>>> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_ok() && !line.is_empty() {
                keep.lock().unwrap().push(serde_json::from_str(&line).unwrap());
                let _ = conn.write_all(answer.as_bytes());
            }
        }
    });
    seen
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root (network namespaces)")]
fn endpoints_are_registered_and_a_refusal_undoes_the_add() {
    let node = Node::new("reg", 15);
    let pod = node.pod("a");
    let ok_sock = node.data_dir.with_extension("ok.sock");
    let no_sock = node.data_dir.with_extension("no.sock");
    std::fs::create_dir_all(&node.data_dir).unwrap();
    let seen = fake_collector(&ok_sock, "{\"ok\":true}\n");
    let _refused = fake_collector(&no_sock, "{\"ok\":false,\"error\":\"endpoint_add.netns: not a lab namespace\"}\n");

    let mut conf = node.conf.clone();
    conf["controlSocket"] = ok_sock.display().to_string().into();
    let (ok, res) = node.run("ADD", "ctr-reg-a", Some(&pod), "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a", &conf);
    assert!(ok, "{res}");
    let (ok, _) = node.run("DEL", "ctr-reg-a", Some(&pod), "", &conf);
    assert!(ok);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        let add = &seen[0];
        assert_eq!(add["op"], "endpoint_add");
        assert_eq!((add["namespace"].as_str(), add["name"].as_str()), (Some("x"), Some("a")));
        assert_eq!(add["ip"], "10.250.15.2");
        assert_eq!(add["host_ifname"], res["interfaces"][0]["name"]);
        assert_eq!(add["mac"], "02:00:0a:fa:0f:02");
        assert_eq!(add["netns"], pod.path());
        assert_eq!(seen[1], json!({"op": "endpoint_del", "container_id": "ctr-reg-a", "ifname": "eth0"}));
    }

    conf["controlSocket"] = no_sock.display().to_string().into();
    assert_error(node.run("ADD", "ctr-reg-b", Some(&pod), "", &conf), 104, "not a lab namespace");
    assert!(!node.link_exists(&lxc_of(&node, "ctr-reg-b")));
    assert_eq!(node.allocations(), 0);
    let _ = std::fs::remove_file(&ok_sock);
    let _ = std::fs::remove_file(&no_sock);
}
