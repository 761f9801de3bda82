//! `sightline lab`: lifecycle, containment, status, connectivity, bad input.

use sightline_e2e::{Lab, host_links, netns_names, processes_mentioning, require_root, sightline, two_pods, write_temp, xyz_manifests};

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn up_and_down_leave_nothing_behind() {
    if !require_root() {
        return;
    }
    let name = "e2e-life";
    let links_before = host_links();
    {
        let lab = Lab::up(name, &two_pods(), &[]);
        let ns = netns_names();
        assert!(ns.contains("e2e-life.node-1"), "{ns:?}");
        assert!(ns.contains("e2e-life.t.a") && ns.contains("e2e-life.t.b"), "{ns:?}");
        assert!(std::path::Path::new("/sys/fs/bpf/sightline/e2e-life/node-1/maps/EVENTS").exists(), "maps are pinned");
        assert!(!processes_mentioning("/sys/fs/bpf/sightline/e2e-life/").is_empty(), "a collector runs");
        // Nothing of the lab appears in the host's own namespace.
        assert_eq!(host_links(), links_before);

        let status = lab.status();
        assert_eq!(status["name"], name);
        assert!(status["relay"]["grpc"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{status}");
        assert!(!processes_mentioning("relay --listen").is_empty(), "the relay runs");
        assert_eq!(status["nodes"][0]["name"], "node-1");
        assert_eq!(status["nodes"][0]["pod_cidr"], "10.244.1.0/24");
        assert!(status["nodes"][0]["collector"].get("grpc").is_some());
        assert!(status["nodes"][0]["collector"].get("metrics").is_some());
        let pods = status["pods"].as_array().unwrap();
        assert_eq!(pods.len(), 2);
        for p in pods {
            assert_eq!(p["node"], "node-1");
            assert!(p["ip"].as_str().unwrap().starts_with("10.244.1."));
            assert!(p["identity"].as_u64().unwrap() >= 256);
        }
        // Different labels: different identities.
        assert_ne!(pods[0]["identity"], pods[1]["identity"]);
        assert!(status["services"].is_array() && status["policies"].is_array());

        // A second lab with the same name is refused.
        let file = write_temp("dup-lab.yaml", &two_pods());
        let out = sightline(&["lab", "up", "--name", name, "-f", file.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    }
    // Dropped: `lab down` ran.
    let ns = netns_names();
    assert!(ns.iter().all(|n| !n.starts_with("e2e-life.")), "namespaces left: {ns:?}");
    assert!(!std::path::Path::new("/sys/fs/bpf/sightline/e2e-life").exists(), "pins left");
    assert!(processes_mentioning("e2e-life").is_empty(), "processes left");
    assert!(!std::path::Path::new("/run/sightline/labs/e2e-life").exists(), "state left");
    assert_eq!(host_links(), links_before);
    // Down on a lab that is gone is fine.
    assert!(sightline(&["lab", "down", "--name", name]).status.success());
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn identical_labels_share_an_identity() {
    if !require_root() {
        return;
    }
    let manifest = "apiVersion: v1\nkind: Namespace\nmetadata: {name: s}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: one, namespace: s, labels: {app: web}}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: two, namespace: s, labels: {app: web}}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: three, namespace: default, labels: {app: web}}\n";
    let lab = Lab::up("e2e-ident", manifest, &[]);
    let one = lab.pod_identity("s/one");
    assert_eq!(one, lab.pod_identity("s/two"));
    assert_ne!(one, lab.pod_identity("default/three"), "the namespace is part of the identity");
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn all_pairs_connect_over_tcp_and_udp() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-conn", &xyz_manifests(), &[]);
    for proto in ["TCP", "UDP"] {
        let out = sightline(&["lab", "matrix", "--port", "80", "--protocol", proto, "-o", "json", "--name", &lab.name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(m["port"], 80);
        assert_eq!(m["protocol"], proto);
        let results = m["results"].as_array().unwrap();
        assert_eq!(results.len(), 81);
        let blocked: Vec<_> = results.iter().filter(|r| r["connected"] != true).collect();
        assert!(blocked.is_empty(), "{proto}: blocked pairs {blocked:?}");
    }
    // Pod ↔ node: the node's address answers ping from a pod.
    let out = lab.exec("x/a", &["ping", "-c", "1", "-W", "2", "10.244.1.1"]);
    assert!(out.status.success(), "ping node: {}", String::from_utf8_lossy(&out.stdout));
    // A port nobody serves is blocked; the table renders.
    assert!(!lab.probe("x/a", "y/b", 9, "TCP"));
    let table = String::from_utf8_lossy(&sightline(&["lab", "matrix", "--name", &lab.name]).stdout).into_owned();
    assert!(table.contains("x/a") && table.contains('.'), "{table}");
}

/// Runs `lab apply` with `manifest`; returns (success, stderr).
fn apply(lab: &Lab, file: &str, manifest: &str) -> (bool, String) {
    let path = write_temp(file, manifest);
    let out = sightline(&["lab", "apply", "--name", &lab.name, "-f", path.to_str().unwrap()]);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn bad_manifests_are_refused_whole() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-bad", &two_pods(), &[]);
    let before = lab.status();
    // This lab's namespaces (the other tests' labs come and go meanwhile).
    let own = || netns_names().into_iter().filter(|n| n.starts_with("e2e-bad.")).collect::<Vec<_>>();
    let ns_before = own();
    assert!(!ns_before.is_empty());
    let new_pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: fresh, namespace: t}\n";

    // Malformed YAML: names the file and the document.
    let (ok, err) = apply(&lab, "malformed.yaml", &format!("{new_pod}---\nkind: Pod\nmetadata: {{name: [\n"));
    assert!(!ok);
    assert!(err.contains("malformed.yaml") && err.contains("document 2"), "{err}");

    // An unknown kind.
    let (ok, err) = apply(&lab, "kind.yaml", &format!("{new_pod}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\n"));
    assert!(!ok);
    assert!(err.contains("kind.yaml") && err.contains("document 2") && err.contains("Deployment"), "{err}");

    // A pod in a namespace that does not exist.
    let (ok, err) = apply(&lab, "nons.yaml", &format!("{new_pod}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: lost, namespace: nowhere}}\n"));
    assert!(!ok);
    assert!(err.contains("nons.yaml") && err.contains("nowhere"), "{err}");

    // Duplicate names in one apply.
    let (ok, err) = apply(&lab, "dup.yaml", &format!("{new_pod}---\n{new_pod}"));
    assert!(!ok);
    assert!(err.contains("dup.yaml") && err.contains("fresh"), "{err}");

    // Nothing was half-applied: same pods, same namespaces.
    let after = lab.status();
    assert_eq!(before["pods"], after["pods"]);
    assert_eq!(ns_before, own());

    // And a good apply still works afterwards.
    let (ok, err) = apply(&lab, "good.yaml", new_pod);
    assert!(ok, "{err}");
    assert_eq!(lab.status()["pods"].as_array().unwrap().len(), 3);
    assert!(lab.probe("t/a", "t/b", 80, "TCP"));

    // lab up with a bad file creates nothing at all.
    let bad = write_temp("bad-up.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n");
    let out = sightline(&["lab", "up", "--name", "e2e-badup", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Secret"));
    assert!(netns_names().iter().all(|n| !n.starts_with("e2e-badup.")));
    // Too many nodes, or a pod pinned to a node the lab does not have, are
    // refused with a reason before anything is made.
    let out = sightline(&["lab", "up", "--name", "e2e-badup", "--nodes", "17"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 16 nodes"));
    let pinned = write_temp("bad-node.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: node-3}\n");
    let out = sightline(&["lab", "up", "--name", "e2e-badup", "--nodes", "2", "-f", pinned.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("node-3"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(netns_names().iter().all(|n| !n.starts_with("e2e-badup.")));
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn delete_removes_pods_and_exec_runs_inside() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-del", &two_pods(), &[]);
    let ip = lab.pod_ip("t/a");
    let out = lab.exec("t/a", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&ip));
    let path = write_temp("del.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: t}\n");
    let out = sightline(&["lab", "delete", "--name", &lab.name, "-f", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!netns_names().contains("e2e-del.t.b"));
    assert_eq!(lab.status()["pods"].as_array().unwrap().len(), 1);
    // Deleting it again names what is missing.
    let out = sightline(&["lab", "delete", "--name", &lab.name, "-f", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains('b'));
}
