//! The Kubernetes state source against the API server stand-in: pods added,
//! changed and deleted reach the built state; a watch ended by `ERROR` 410
//! makes the source list again; a dropped connection resumes from the last
//! version without a list; bookmarks move that version. No root needed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sightline_collector::kubernetes::{self, Connection, Source, SourceConfig};
use sightline_collector::state::NodeState;
use sightline_standins::kubernetes::ApiServer;

const DEADLINE: Duration = Duration::from_secs(30);

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn node(name: &str, index: u8) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": format!("10.244.{index}.0/24"), "podCIDRs": [format!("10.244.{index}.0/24")]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": format!("10.244.{index}.1")},
            {"type": "Hostname", "address": name},
        ]},
    })
}

fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

fn policy(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": "http"}]}]},
    })
}

fn service(ns: &str, name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "selector": {"app": "db"}, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]},
    })
}

fn slice(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.10"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

/// A cluster of two nodes with two pods in `x`, a policy, a service and
/// its slice.
fn seed(api: &ApiServer) {
    api.put(namespace("x", json!({"team": "blue"}))).unwrap();
    api.put(node("node-1", 1)).unwrap();
    api.put(node("node-2", 2)).unwrap();
    api.put(pod("x", "db", "node-1", "10.244.1.10", json!({"app": "db"}))).unwrap();
    api.put(pod("x", "api", "node-2", "10.244.2.10", json!({"app": "api"}))).unwrap();
    api.put(policy("x", "db-from-api")).unwrap();
    api.put(service("x", "db", "10.96.0.10")).unwrap();
    api.put(slice("x", "db-abcde")).unwrap();
}

async fn start(api: &ApiServer) -> (Source, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let path = dir.path.join("kubeconfig");
    std::fs::write(&path, api.kubeconfig()).unwrap();
    let client = kubernetes::client(&Connection::Kubeconfig(path.clone())).await.unwrap();
    let mut config = SourceConfig::new("node-1", Connection::Kubeconfig(path));
    config.debounce = Duration::from_millis(20);
    config.max_delay = Duration::from_millis(200);
    (kubernetes::start(&client, config), dir)
}

mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new() -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("sightline-k8s-source-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Self { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Waits until the published state satisfies `ok`; panics with the last
/// state after the deadline.
async fn wait_state(source: &mut Source, what: &str, ok: impl Fn(&NodeState) -> bool) -> NodeState {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(state) = source.states.borrow_and_update().as_deref()
            && ok(state)
        {
            return state.clone();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, source.states.changed()).await.is_err() {
            panic!("{what}: not within {DEADLINE:?}; last state {:#?}\nstatus {:#?}", source.states.borrow(), source.status());
        }
    }
}

/// Polls `ok` until it holds.
async fn wait_for(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pod_names(state: &NodeState) -> Vec<String> {
    state.pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect()
}

#[tokio::test]
async fn pods_added_changed_and_deleted_reach_the_state() {
    let api = ApiServer::start().await.unwrap();
    seed(&api);
    let (mut source, _dir) = start(&api).await;
    let state = wait_state(&mut source, "the first state", |s| s.pods.len() == 2).await;
    assert_eq!(state.node_name, "node-1");
    assert_eq!(state.pod_cidr, "10.244.1.0/24");
    assert_eq!(state.node_ip.to_string(), "10.244.1.1");
    assert!(state.endpoints.is_empty(), "the API server does not know the veths");
    assert_eq!(state.policies.len(), 1);
    assert_eq!(state.services.len(), 1);
    assert_eq!(state.namespaces["x"]["kubernetes.io/metadata.name"], "x");
    let db = state.pods.iter().find(|p| p.name == "db").unwrap();
    let labels = &state.identities.iter().find(|i| i.id == db.identity).unwrap().labels;
    assert_eq!(
        labels,
        &["k8s:app=db", "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=x", "k8s:io.cilium.k8s.namespace.labels.team=blue", "k8s:io.kubernetes.pod.namespace=x"]
    );
    // Node addresses: host for this node, remote-node for the other.
    assert!(state.ipcache.iter().any(|e| e.cidr == "10.244.1.1/32" && e.identity == 1));
    assert!(state.ipcache.iter().any(|e| e.cidr == "10.244.2.1/32" && e.identity == 6));

    // Added.
    api.put(pod("x", "web", "node-1", "10.244.1.11", json!({"app": "web"}))).unwrap();
    let state = wait_state(&mut source, "pod x/web added", |s| pod_names(s).contains(&"x/web".to_owned())).await;
    assert!(state.ipcache.iter().any(|e| e.cidr == "10.244.1.11/32"));
    // Changed: new labels, new identity.
    let old = state.pods.iter().find(|p| p.name == "web").unwrap().identity;
    api.put(pod("x", "web", "node-1", "10.244.1.11", json!({"app": "web", "tier": "front"}))).unwrap();
    let state = wait_state(&mut source, "pod x/web relabelled", |s| {
        s.pods.iter().any(|p| p.name == "web" && p.labels.get("tier").is_some_and(|t| t == "front"))
    })
    .await;
    let new = state.pods.iter().find(|p| p.name == "web").unwrap().identity;
    assert_ne!(old, new, "new labels, new identity");
    assert!(state.ipcache.iter().any(|e| e.cidr == "10.244.1.11/32" && e.identity == new));
    // Deleted.
    api.delete("Pod", "x", "web").unwrap();
    let state = wait_state(&mut source, "pod x/web deleted", |s| !pod_names(s).contains(&"x/web".to_owned())).await;
    assert!(!state.ipcache.iter().any(|e| e.cidr == "10.244.1.11/32"));

    // This node's pods are watched by field selector, with bookmarks.
    let requests = api.requests();
    assert!(
        requests.iter().any(|r| r.path == "/api/v1/pods" && r.is_watch() && r.param("fieldSelector") == Some("spec.nodeName=node-1")),
        "no watch of this node's pods by field selector: {requests:#?}"
    );
    assert!(requests.iter().filter(|r| r.is_watch()).all(|r| r.param("allowWatchBookmarks") == Some("true")));
    assert!(requests.iter().all(|r| r.status == 200), "refused requests: {requests:#?}");
    let status = source.status();
    assert_eq!(status.kinds.len(), 7);
    assert!(status.kinds.values().all(|k| k.synced && k.relists == 0), "{status:#?}");
    assert_eq!(status.kinds["EndpointSlice"].objects, 1);
}

#[tokio::test]
async fn a_services_backends_are_its_ready_endpoint_slice_addresses() {
    let api = ApiServer::start().await.unwrap();
    seed(&api);
    let (mut source, _dir) = start(&api).await;
    let endpoints = |s: &NodeState| s.services.iter().find(|v| v.name == "db").and_then(|v| v.endpoints.clone());
    let state = wait_state(&mut source, "the slice's endpoint", |s| endpoints(s).is_some_and(|e| e.len() == 1)).await;
    let db = &endpoints(&state).unwrap()[0];
    assert_eq!(db.ip.to_string(), "10.244.1.10");
    assert_eq!(db.ports.len(), 1);
    assert_eq!((db.ports[0].name.as_deref(), db.ports[0].port), (Some("http"), 8080));
    assert_eq!(state.services[0].ports[0].name.as_deref(), Some("http"), "the service port's name, to match the slice's");

    // A second slice with a not-ready endpoint and a ready one: only the
    // ready one is a backend.
    api.put(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "x", "name": "db-fghij", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.2.20"], "conditions": {"ready": false}},
            {"addresses": ["10.244.2.21"], "conditions": {"ready": true}},
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap();
    let state = wait_state(&mut source, "the second slice", |s| endpoints(s).is_some_and(|e| e.len() == 2)).await;
    let ips: Vec<String> = endpoints(&state).unwrap().iter().map(|e| e.ip.to_string()).collect();
    assert_eq!(ips, ["10.244.1.10", "10.244.2.21"]);
    // The slice goes: its endpoints go with it.
    api.delete("EndpointSlice", "x", "db-fghij").unwrap();
    wait_state(&mut source, "the second slice deleted", |s| endpoints(s).is_some_and(|e| e.len() == 1)).await;
}

#[tokio::test]
async fn an_expired_watch_makes_the_source_list_again() {
    let api = ApiServer::start().await.unwrap();
    seed(&api);
    let (mut source, _dir) = start(&api).await;
    wait_state(&mut source, "the first state", |s| s.pods.len() == 2).await;
    let lists_before = api.requests().iter().filter(|r| !r.is_watch()).count();
    wait_for("every watch open", || api.open_watches() == 7).await;
    // Every watch ends with ERROR 410; a change meanwhile is only seen by
    // listing again.
    api.expire_watches();
    api.put(pod("x", "late", "node-2", "10.244.2.11", json!({"app": "late"}))).unwrap();
    wait_state(&mut source, "the pod made while the watches expired", |s| pod_names(s).contains(&"x/late".to_owned())).await;
    wait_for("every kind relisted", || source.status().kinds.values().all(|k| k.relists >= 1)).await;
    // A relist is counted when it starts: its list request reaches the
    // server a moment later.
    wait_for("a list request per kind", || api.requests().iter().filter(|r| !r.is_watch()).count() >= lists_before + 7).await;
}

#[tokio::test]
async fn a_dropped_connection_resumes_from_the_last_version() {
    let api = ApiServer::start().await.unwrap();
    seed(&api);
    let (mut source, _dir) = start(&api).await;
    wait_state(&mut source, "the first state", |s| s.pods.len() == 2).await;
    wait_for("every watch open", || api.open_watches() == 7).await;
    let lists_before = api.requests().iter().filter(|r| !r.is_watch()).count();
    // A bookmark moves every watcher's version to the newest.
    api.bookmark();
    let bookmarked = api.resource_version();
    // Give the bookmark a change to be read: a change after it on pods.
    api.drop_connections();
    api.put(pod("x", "after", "node-1", "10.244.1.12", json!({"app": "after"}))).unwrap();
    wait_state(&mut source, "the pod made while the connections were down", |s| pod_names(s).contains(&"x/after".to_owned())).await;
    wait_for("every watch open again", || api.open_watches() == 7).await;
    let requests = api.requests();
    let lists_after = requests.iter().filter(|r| !r.is_watch()).count();
    assert_eq!(lists_before, lists_after, "a dropped connection resumes, it does not list again: {requests:#?}");
    // The watches after the drop resumed from the bookmark's version (the
    // newest when they dropped): nothing was read twice or missed.
    let namespaces_watch = requests.iter().filter(|r| r.is_watch() && r.path == "/api/v1/namespaces").last().unwrap();
    assert_eq!(namespaces_watch.param("resourceVersion"), Some(bookmarked.to_string().as_str()), "{requests:#?}");
    assert!(source.status().kinds.values().all(|k| k.relists == 0));
}

#[tokio::test]
async fn the_agent_writes_the_cni_configuration_only_after_an_applied_state() {
    let api = ApiServer::start().await.unwrap();
    seed(&api);
    let dir = tempdir::Dir::new();
    let kubeconfig = dir.path.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let conflist = dir.path.join("net.d").join("05-sightline.conflist");
    // As root, the node's gateway address goes on a namespace of the test's.
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).stderr(std::process::Stdio::null()).status();
        }
    }
    let gateway_netns = cfg!(sightline_root).then(|| {
        let ns = Netns("sl-test-ksource-gw".to_owned());
        drop(Netns(ns.0.clone()));
        assert!(std::process::Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
        ns
    });
    let gateway_netns_name = gateway_netns.as_ref().map(|n| n.0.clone());
    let mut config = SourceConfig::new("node-1", Connection::Kubeconfig(kubeconfig));
    config.debounce = Duration::from_millis(20);
    config.max_delay = Duration::from_millis(200);
    config.cni = Some(kubernetes::cni::CniConfig {
        path: conflist.clone(),
        control_socket: "/var/run/sightline/control.sock".into(),
        data_dir: "/var/lib/sightline/cni".into(),
        mtu: 1500,
        gateway_netns: gateway_netns_name.as_ref().map(|n| std::path::PathBuf::from(format!("/run/netns/{n}"))),
    });
    // The first applies fail (the datapath refuses them): no configuration.
    let accept = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let applies = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (a, n) = (accept.clone(), applies.clone());
    let running = kubernetes::run_applying(config, move |_state| {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if a.load(std::sync::atomic::Ordering::SeqCst) { Ok(()) } else { Err("refused".into()) }
    })
    .await
    .unwrap();
    wait_for("a refused apply", || applies.load(std::sync::atomic::Ordering::SeqCst) > 0).await;
    assert!(!conflist.exists(), "written before the datapath had the state");

    // Once one applies, the node's range is in the file, as the plugin reads it.
    accept.store(true, std::sync::atomic::Ordering::SeqCst);
    api.put(pod("x", "web", "node-1", "10.244.1.11", json!({"app": "web"}))).unwrap();
    wait_for("the CNI configuration", || conflist.exists()).await;
    let list: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    let plugin = sightline_cni::conflist::first_plugin(&list).unwrap();
    let conf = sightline_cni::NetConf::parse(&serde_json::to_vec(&plugin).unwrap()).unwrap();
    assert_eq!(conf.ipam.ranges, vec!["10.244.1.0/24".parse().unwrap()]);
    assert_eq!(conf.gateway.to_string(), "10.244.1.1");
    assert_eq!(conf.control_socket.unwrap().to_str(), Some("/var/run/sightline/control.sock"));
    if let Some(ns) = &gateway_netns_name {
        let out = std::process::Command::new("ip").args(["-n", ns, "-4", "-o", "addr", "show", "dev", "lo"]).output().unwrap();
        let lo = String::from_utf8_lossy(&out.stdout);
        assert!(lo.contains("10.244.1.1/32"), "the pods' gateway was not given to the node: {lo}");
    }
    // The nodes the Peer service announces come with it.
    assert_eq!(running.nodes.borrow().keys().cloned().collect::<Vec<_>>(), vec!["node-1", "node-2"]);
    running.task.abort();
}

#[tokio::test]
async fn the_source_follows_the_clusters_nodes_for_the_peer_service() {
    let api = ApiServer::start().await.unwrap();
    seed(&api);
    let (mut source, _dir) = start(&api).await;
    let mut nodes = source.nodes.clone();
    wait_state(&mut source, "the first state", |s| s.pods.len() == 2).await;
    let names = |n: &std::collections::BTreeMap<String, std::net::IpAddr>| n.keys().cloned().collect::<Vec<_>>();
    let first = nodes.borrow_and_update().clone();
    assert_eq!(names(&first), vec!["node-1", "node-2"]);
    assert_eq!(first["node-2"].to_string(), "10.244.2.1");

    api.put(node("node-3", 3)).unwrap();
    tokio::time::timeout(Duration::from_secs(20), nodes.wait_for(|n| n.contains_key("node-3")))
        .await
        .expect("node-3 never reached the source's nodes")
        .unwrap();
    api.delete("Node", "", "node-2").unwrap();
    let now = tokio::time::timeout(Duration::from_secs(20), nodes.wait_for(|n| !n.contains_key("node-2")))
        .await
        .expect("node-2 never left the source's nodes")
        .unwrap()
        .clone();
    assert_eq!(names(&now), vec!["node-1", "node-3"]);
}
