//! ClusterIP Services: the datapath sends a pod's connection to a service
//! address to one of its backends (chosen per connection), answers from the
//! service address, applies NetworkPolicy to the backend, and follows
//! backend changes.

use std::collections::BTreeMap;
use std::time::Duration;

use sightline_e2e::{Lab, http_get, require_root, sightline, write_temp};

const APP: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: client}}
spec:
  containers: [{name: c, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web, pod: b}}
spec:
  containers: [{name: c, ports: [{containerPort: 8080, name: http}, {containerPort: 53, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: web, pod: c}}
spec:
  containers: [{name: c, ports: [{containerPort: 8080, name: http}, {containerPort: 53, protocol: UDP}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: x}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
";

fn cluster_ip(lab: &Lab, service: &str) -> String {
    let status = lab.status();
    let services = status["services"].as_array().expect("services");
    let svc = services.iter().find(|s| s["name"] == service).unwrap_or_else(|| panic!("no service {service}: {status}"));
    svc["cluster_ip"].as_str().expect("cluster_ip").to_owned()
}

/// Who answers `tries` connections to the service, counted.
fn answers(lab: &Lab, ip: &str, tries: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..tries {
        let who = lab.who_answers("x/a", ip, 80).unwrap_or_else(|| "blocked".to_owned());
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

/// Flows of x/a's connections to x/web, as users get them through the
/// Observer API (`sightline observe -o jsonpb`): the original direction
/// names the service as its destination (the addresses are the backend's),
/// and the replies name it as their source, the one delivered to x/a with
/// the service address as `IP.source_xlated`.
fn flows_name_the_service(lab: &Lab, web: &str) {
    let observe = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["observe", "--lab", lab.name.as_str(), "-o", "jsonpb"];
        all.extend_from_slice(args);
        let out = sightline(&all);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("jsonpb")["flow"].clone())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let to = observe(&["--all", "--to-service", "x/web", "--from-pod", "x/a"]);
        let from = observe(&["--all", "--from-service", "x/web", "--to-pod", "x/a"]);
        let xlated: Vec<&serde_json::Value> = from.iter().filter(|f| f["IP"]["source_xlated"] == web).collect();
        if !to.is_empty() && !xlated.is_empty() {
            for f in &to {
                assert_eq!(f["destination_service"]["name"], "web", "{f}");
                assert_eq!(f["destination_service"]["namespace"], "x", "{f}");
                assert_ne!(f["IP"]["destination"], web, "the destination is the backend: {f}");
                let backend = f["destination"]["pod_name"].as_str().unwrap_or_default();
                assert!(["b", "c"].contains(&backend), "{f}");
            }
            for f in &from {
                assert_eq!(f["source_service"]["name"], "web", "{f}");
                assert_eq!(f["is_reply"], true, "{f}");
            }
            for f in xlated {
                assert_eq!(f["trace_observation_point"], "TO_ENDPOINT", "{f}");
                assert_ne!(f["IP"]["source"], web, "the source is the backend: {f}");
            }
            // Flows that did not go through a service name none.
            for f in observe(&["--from-pod", "x/a", "--last", "50"]) {
                let to_web = f["destination_service"]["name"] == "web";
                let dst = f["destination"]["pod_name"].as_str().unwrap_or_default();
                assert!(!to_web || ["b", "c"].contains(&dst), "{f}");
            }
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no flows naming x/web: to {to:?}, from {from:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metrics_text(lab: &Lab) -> String {
    let addr = lab.status()["nodes"][0]["collector"]["metrics"].as_str().expect("metrics address").to_owned();
    http_get(&addr, "/metrics", None).1
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn services_balance_connections_over_their_backends() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-svc", APP, &[]);
    let web = cluster_ip(&lab, "web");

    // Both backends answer, at the named target port (http → 8080), as the
    // service address (the client's socket accepts nothing else).
    let seen = answers(&lab, &web, 24);
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["x/b", "x/c"], "{seen:?}");
    assert!(lab.probe("x/a", "svc/x/web", 80, "TCP"));
    flows_name_the_service(&lab, &web);
    // A backend calling its own service is sent to another backend (its
    // own replies would not come back through the datapath).
    for _ in 0..6 {
        assert_eq!(lab.who_answers("x/b", &web, 80).as_deref(), Some("x/c"));
    }
    // UDP: the reply comes back from the service address.
    assert!(lab.probe("x/a", "svc/x/web", 53, "UDP"));
    // A port the service does not have is not translated.
    assert!(!lab.probe("x/a", "svc/x/web", 81, "TCP"));

    // No backends: dropped by the datapath, with Hubble's reason.
    assert!(!lab.probe("x/a", "svc/x/empty", 80, "TCP"));
    sightline_e2e::wait_until("a SERVICE_BACKEND_NOT_FOUND drop counted", Duration::from_secs(20), || {
        metrics_text(&lab)
            .lines()
            .any(|l| l.starts_with("sightline_datapath_dropped_packets_total{") && l.contains("SERVICE_BACKEND_NOT_FOUND"))
            .then_some(())
    });

    // Policy applies to the backend: with x/b closed to ingress, only x/c
    // answers, and the connections that went to x/b are blocked.
    let deny_b = write_temp(
        "svc-deny-b.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n",
    );
    let out = sightline(&["lab", "apply", "--name", &lab.name, "-f", deny_b.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen = answers(&lab, &web, 16);
    assert!(!seen.contains_key("x/b"), "{seen:?}");
    assert!(seen.get("x/c").is_some_and(|n| *n > 0), "{seen:?}");
    let out = sightline(&["lab", "delete", "--name", &lab.name, "-f", deny_b.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Backends follow the pods: without x/c, x/b answers everything.
    let pod_c = write_temp("svc-pod-c.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: x}\n");
    let out = sightline(&["lab", "delete", "--name", &lab.name, "-f", pod_c.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen = answers(&lab, &web, 8);
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["x/b"], "{seen:?}");

    // A deleted service's address leads nowhere.
    let svc = write_temp(
        "svc-web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n",
    );
    let out = sightline(&["lab", "delete", "--name", &lab.name, "-f", svc.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lab.who_answers("x/a", &web, 80), None);
}
