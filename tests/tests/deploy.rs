//! The Kubernetes base (`deploy/kubernetes`): rendered by kubectl's own
//! kustomize, every object valid against the Kubernetes 1.32 schemas in
//! strict mode, RBAC exactly what the collector's Kubernetes source watches,
//! the pods' shape (host access, probes, image, TLS), every command-line
//! flag known to the binary and the export files accepted by its parser.
//!
//! No API server runs here: nothing is applied.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sightline_collector::kubernetes::{VERBS, WATCHED};

const NAMESPACE: &str = "sightline";

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// `kubectl kustomize deploy/kubernetes`, as YAML text.
fn render_text() -> String {
    let out = Command::new("kubectl").arg("kustomize").arg(base()).output().expect("running kubectl");
    assert!(out.status.success(), "kubectl kustomize failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The rendered objects, as JSON values.
fn render() -> Vec<Value> {
    let text = render_text();
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = <Value as serde::Deserialize>::deserialize(doc).expect("rendered YAML");
        if !value.is_null() {
            objects.push(value);
        }
    }
    assert!(!objects.is_empty(), "nothing rendered");
    objects
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered base"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    let spec = &workload["spec"]["template"]["spec"];
    spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Runs kubernetes-validate on `file`; (success, output).
fn validate(file: &Path) -> (bool, String) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.32.0"])
        .arg(file)
        .output()
        .expect("running kubernetes-validate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
#[cfg_attr(not(sightline_kubectl), ignore = "kubectl is not installed (it comes with the machine image)")]
#[cfg_attr(not(sightline_kubernetes_validate), ignore = "kubernetes-validate is not installed (scripts/setup.sh)")]
fn every_object_validates_strictly_against_kubernetes_1_32() {
    let text = render_text();
    let objects = render();
    let dir = std::env::temp_dir().join(format!("sightline-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rendered = dir.join("rendered.yaml");
    std::fs::write(&rendered, &text).expect("writing the rendered base");
    let (ok, report) = validate(&rendered);
    assert!(ok, "kubernetes-validate refused the base:\n{report}");
    for o in &objects {
        let id = format!(
            "{}/{}",
            o["kind"].as_str().expect("kind").to_lowercase(),
            o["metadata"]["name"].as_str().expect("name")
        );
        assert!(report.contains(&format!("passed for resource {id} ")), "{id} not reported as passed:\n{report}");
    }
    // The check is strict: an unknown field in the pod spec is refused.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, text.replacen("hostNetwork: true", "hostNetwork: true\n      hostNetwrok: true", 1))
        .expect("writing the mutated base");
    let (ok, report) = validate(&bad);
    assert!(!ok && report.contains("hostNetwrok"), "an unknown field passed:\n{report}");
    std::fs::remove_dir_all(&dir).expect("removing the temp dir");
}

#[test]
#[cfg_attr(not(sightline_kubectl), ignore = "kubectl is not installed (it comes with the machine image)")]
fn rbac_is_exactly_what_the_kubernetes_source_watches() {
    let objects = render();
    let wanted: BTreeSet<(&str, &str)> = WATCHED.iter().map(|w| (w.group, w.resource)).collect();
    let verbs: BTreeSet<&str> = VERBS.into_iter().collect();

    let roles: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role").collect();
    assert_eq!(roles.len(), 1, "one role, the agent's");
    let role = roles[0];
    assert_eq!(role["kind"], "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let keys: BTreeSet<&str> = rule.as_object().expect("rule").keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["apiGroups", "resources", "verbs"]), "unexpected keys in {rule}");
        let rule_verbs: BTreeSet<&str> = strs(&rule["verbs"]).into_iter().collect();
        assert_eq!(rule_verbs, verbs, "verbs of {rule}");
        for group in strs(&rule["apiGroups"]) {
            for resource in strs(&rule["resources"]) {
                assert!(!group.contains('*') && !resource.contains('*'), "wildcard in {rule}");
                assert!(granted.insert((group, resource)), "{group}/{resource} granted twice");
            }
        }
    }
    assert_eq!(granted, wanted, "the ClusterRole's resources against WATCHED");

    // Bound to the agent's ServiceAccount, and to nothing else.
    let bindings: Vec<&Value> =
        objects.iter().filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding").collect();
    assert_eq!(bindings.len(), 1, "one binding");
    let binding = bindings[0];
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let subjects = binding["subjects"].as_array().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["namespace"], NAMESPACE);
    let agent = find(&objects, "DaemonSet", "sightline-agent");
    assert_eq!(subjects[0]["name"], agent["spec"]["template"]["spec"]["serviceAccountName"]);
    find(&objects, "ServiceAccount", subjects[0]["name"].as_str().expect("name"));

    // The relay reads no API at all: no token in its pods.
    let relay = find(&objects, "Deployment", "sightline-relay");
    let relay_spec = &relay["spec"]["template"]["spec"];
    assert_eq!(relay_spec["automountServiceAccountToken"], false);
    let relay_sa = find(&objects, "ServiceAccount", relay_spec["serviceAccountName"].as_str().expect("relay SA"));
    assert_eq!(relay_sa["automountServiceAccountToken"], false);

    // No wildcard anywhere in the rendered base.
    let text = render_text();
    assert!(!text.contains("'*'") && !text.contains("\"*\"") && !text.contains("- '*'"), "a wildcard in the base");
}

#[test]
#[cfg_attr(not(sightline_kubectl), ignore = "kubectl is not installed (it comes with the machine image)")]
fn the_agent_runs_on_every_node_with_host_access() {
    let objects = render();
    for o in &objects {
        if o["kind"] != "Namespace" && o["kind"] != "ClusterRole" && o["kind"] != "ClusterRoleBinding" {
            assert_eq!(o["metadata"]["namespace"], NAMESPACE, "{} {}", o["kind"], o["metadata"]["name"]);
        }
    }
    let ds = find(&objects, "DaemonSet", "sightline-agent");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["tolerations"], serde_json::json!([{"operator": "Exists"}]), "tolerates every taint");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");

    let host_paths: BTreeMap<&str, &str> = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["hostPath"]["path"].as_str()?)))
        .collect();
    for path in ["/sys/fs/bpf", "/opt/cni/bin", "/etc/cni/net.d", "/sys/kernel/tracing", "/var/run/sightline"] {
        assert!(host_paths.values().any(|p| *p == path), "no hostPath {path}: {host_paths:?}");
    }

    let agent = container(ds, "agent");
    let args = strs(&agent["args"]);
    assert_eq!(args[..3], ["collector", "--kubernetes", "--node-name=$(NODE_NAME)"]);
    // The agent writes the node's CNI configuration where the runtime reads it.
    assert!(args.contains(&"--cni-conf=/host/etc/cni/net.d/05-sightline.conflist"), "{args:?}");
    let env = agent["env"].as_array().expect("env");
    let node_name = env.iter().find(|e| e["name"] == "NODE_NAME").expect("NODE_NAME");
    assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let caps = strs(&agent["securityContext"]["capabilities"]["add"]);
    for cap in ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"] {
        assert!(caps.contains(&cap), "capability {cap} missing: {caps:?}");
    }
    assert_eq!(strs(&agent["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    assert!(agent["resources"]["requests"]["cpu"].is_string() && agent["resources"]["requests"]["memory"].is_string());

    // Probes on the port the agent serves /metrics, /healthz and /readyz on.
    let metrics_port: u64 = flag(&args, "--metrics-address").rsplit(':').next().expect("port").parse().expect("port");
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(agent["livenessProbe"]["httpGet"]["port"], metrics_port);
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(agent["readinessProbe"]["httpGet"]["port"], metrics_port);

    // The init container installs the CNI plugin into the hostPath.
    let install = container(ds, "install-cni");
    let script = strs(&install["command"]).join(" ");
    assert!(script.contains("/host/opt/cni/bin/sightline-cni"), "{script}");
    let mounts: Vec<&str> =
        install["volumeMounts"].as_array().expect("mounts").iter().filter_map(|m| m["mountPath"].as_str()).collect();
    assert_eq!(mounts, ["/host/opt/cni/bin"]);
}

#[test]
#[cfg_attr(not(sightline_kubectl), ignore = "kubectl is not installed (it comes with the machine image)")]
fn the_relay_runs_unprivileged_behind_port_4245() {
    let objects = render();
    let relay = find(&objects, "Deployment", "sightline-relay");
    let spec = &relay["spec"]["template"]["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_ne!(spec["securityContext"]["runAsUser"], 0);
    let c = container(relay, "relay");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(strs(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    let args = strs(&c["args"]);
    assert_eq!(args[0], "relay");
    assert!(flag(&args, "--listen").ends_with(":4245"));
    let metrics_port: u64 = flag(&args, "--metrics-address").rsplit(':').next().expect("port").parse().expect("port");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], metrics_port);
    let svc = find(&objects, "Service", "sightline-relay");
    assert_eq!(svc["spec"]["ports"][0]["port"], 4245);
    assert_eq!(svc["spec"]["selector"], relay["spec"]["selector"]["matchLabels"]);
}

#[test]
#[cfg_attr(not(sightline_kubectl), ignore = "kubectl is not installed (it comes with the machine image)")]
fn images_come_from_the_kustomization_and_secrets_match_the_tls_flags() {
    let objects = render();
    let kustomization: Value =
        serde_yaml::from_str(&std::fs::read_to_string(base().join("kustomization.yaml")).expect("kustomization"))
            .expect("kustomization YAML");
    let image = &kustomization["images"][0];
    assert_eq!(image["name"], "sightline");
    let expected = format!("{}:{}", image["newName"].as_str().expect("newName"), image["newTag"].as_str().expect("newTag"));
    let mut seen = 0;
    for o in objects.iter().filter(|o| o["kind"] == "DaemonSet" || o["kind"] == "Deployment") {
        let spec = &o["spec"]["template"]["spec"];
        for c in spec["containers"].as_array().into_iter().chain(spec["initContainers"].as_array()).flatten() {
            assert_eq!(c["image"], expected.as_str(), "{}", c["name"]);
            seen += 1;
        }
        // Every TLS flag names a file inside a mounted Secret with that key.
        let mounts: Vec<(&str, &str)> = spec["containers"][0]["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .map(|m| (m["name"].as_str().expect("name"), m["mountPath"].as_str().expect("path")))
            .collect();
        for arg in strs(&spec["containers"][0]["args"]) {
            let Some((name, path)) = arg.split_once('=') else { continue };
            if !name.contains("tls") {
                continue;
            }
            let (volume, dir) = mounts
                .iter()
                .find(|(_, dir)| path.starts_with(&format!("{dir}/")))
                .unwrap_or_else(|| panic!("{arg}: no volume mounted there"));
            let key = &path[dir.len() + 1..];
            assert!(["tls.crt", "tls.key", "ca.crt"].contains(&key), "{arg}: key {key}");
            let v = spec["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == *volume).expect("volume");
            assert!(v["secret"]["secretName"].is_string(), "{arg}: volume {volume} is not a Secret");
        }
    }
    assert_eq!(seen, 3, "agent, its init container, relay");
}

#[test]
#[cfg_attr(not(sightline_kubectl), ignore = "kubectl is not installed (it comes with the machine image)")]
fn export_files_are_accepted_by_the_exporters_parser() {
    let objects = render();
    let ctx = sightline_export::config::Context { spool_dir: "/var/lib/sightline/spool".into(), env: Default::default() };
    for name in ["sightline-agent-config", "sightline-relay-config"] {
        let cm = find(&objects, "ConfigMap", name);
        let text = cm["data"]["export.yaml"].as_str().expect("export.yaml");
        sightline_export::config::parse(text, &ctx).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let metrics = find(&objects, "ConfigMap", "sightline-agent-config")["data"]["metrics"].as_str().expect("metrics");
    assert!(metrics.split(',').all(|h| !h.is_empty()), "{metrics}");
}

/// Flags the Kubernetes source adds to `sightline collector`; checked like
/// the others once the binary has them.
const KUBERNETES_SOURCE_FLAGS: [&str; 2] = ["--kubernetes", "--node-name"];

#[test]
#[cfg_attr(not(sightline_kubectl), ignore = "kubectl is not installed (it comes with the machine image)")]
fn every_flag_in_the_manifests_is_one_the_binary_takes() {
    let objects = render();
    for (kind, name, container_name) in
        [("DaemonSet", "sightline-agent", "agent"), ("Deployment", "sightline-relay", "relay")]
    {
        let args = strs(&container(find(&objects, kind, name), container_name)["args"]);
        let help = sightline_e2e::sightline_ok(&[args[0], "--help"]);
        for arg in &args[1..] {
            let flag = arg.split_once('=').map_or(*arg, |(f, _)| f);
            if KUBERNETES_SOURCE_FLAGS.contains(&flag) && !help.contains(&format!("{flag} ")) {
                eprintln!("note: `sightline {}` has no {flag} yet (the Kubernetes source)", args[0]);
                continue;
            }
            assert!(help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")), "sightline {} has no {flag}", args[0]);
        }
    }
}

fn flag<'a>(args: &[&'a str], name: &str) -> &'a str {
    args.iter()
        .find_map(|a| a.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {name}= in {args:?}"))
}

/// A folder under the system's temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sightline-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[cfg_attr(not(sightline_kubectl), ignore = "kubectl is not installed (it comes with the machine image)")]
fn the_relay_learns_the_agents_from_their_peer_service() {
    let objects = render();
    let relay = find(&objects, "Deployment", "sightline-relay");
    let args = strs(&container(relay, "relay")["args"]);
    assert!(!args.iter().any(|a| a.starts_with("--peer=")), "a fixed peer list: {args:?}");
    let target = flag(&args, "--peer-service");
    let (host, port) = target.rsplit_once(':').expect("HOST:PORT");
    // The Service it names, in front of every agent's gRPC port.
    let svc = find(&objects, "Service", "sightline-peer");
    assert_eq!(host, format!("sightline-peer.{NAMESPACE}.svc.cluster.local."));
    assert_eq!(svc["spec"]["ports"][0]["port"].as_u64().map(|p| p.to_string()).as_deref(), Some(port));
    assert_eq!(svc["spec"]["internalTrafficPolicy"], "Local", "a node's relay asks its own agent");
    let agent = find(&objects, "DaemonSet", "sightline-agent");
    assert_eq!(svc["spec"]["selector"], agent["spec"]["selector"]["matchLabels"]);
    let c = container(agent, "agent");
    let target_port = svc["spec"]["ports"][0]["targetPort"].as_str().expect("a named port");
    let grpc = c["ports"].as_array().expect("ports").iter().find(|p| p["name"] == target_port).expect("the agent's port");
    let agent_args = strs(&c["args"]);
    assert!(flag(&agent_args, "--grpc").ends_with(&format!(":{}", grpc["containerPort"])), "{agent_args:?}");
}

fn write_lines(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a file");
    path
}

#[test]
#[cfg_attr(not(sightline_kubectl), ignore = "kubectl is not installed (it comes with the machine image)")]
#[cfg_attr(not(sightline_kubernetes_validate), ignore = "kubernetes-validate is not installed (scripts/setup.sh)")]
#[cfg_attr(not(sightline_openssl), ignore = "the openssl command is not installed")]
fn tls_secrets_script_makes_secrets_the_relay_accepts() {
    let dir = TempDir::new("tls-secrets");
    let ca = dir.0.join("ca");
    let out = Command::new(base().join("tls-secrets.sh")).arg(&ca).args(["default", NAMESPACE, "30"]).output().expect("running tls-secrets.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secrets = write_lines(&dir.0, "secrets.yaml", &String::from_utf8_lossy(&out.stdout));
    let (ok, report) = validate(&secrets);
    assert!(ok, "{report}");

    // The names the pods mount, each with the three keys the flags name.
    let objects = render();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for o in objects.iter().filter(|o| o["kind"] == "DaemonSet" || o["kind"] == "Deployment") {
        for v in o["spec"]["template"]["spec"]["volumes"].as_array().expect("volumes") {
            if let Some(name) = v["secret"]["secretName"].as_str() {
                wanted.insert(name.to_owned());
            }
        }
    }
    let mut made = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout)) {
        let s = <Value as serde::Deserialize>::deserialize(doc).expect("secret YAML");
        assert_eq!(s["type"], "kubernetes.io/tls");
        assert_eq!(s["metadata"]["namespace"], NAMESPACE);
        let keys: BTreeSet<&str> = s["data"].as_object().expect("data").keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["ca.crt", "tls.crt", "tls.key"]));
        made.insert(s["metadata"]["name"].as_str().expect("name").to_owned());
    }
    assert_eq!(made, wanted);

    // An agent's gRPC API (the collector's own server, in process) with the
    // agent certificate, requiring the relay's client certificate; its Peer
    // service announces it with its node's certificate name.
    let f = |name: &str| ca.join(name).to_string_lossy().into_owned();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let agent = rt.block_on(async {
        let files = sightline_tls::ServerTlsFiles {
            cert: f("agent.crt").into(),
            key: f("agent.key").into(),
            client_ca: vec![f("ca.crt").into()],
        };
        let tls = std::sync::Arc::new(sightline_tls::ServerTls::new("the agent", files).expect("agent TLS"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let store = std::sync::Arc::new(sightline_collector::flow::Store::new(63).expect("store"));
        let state = std::sync::Arc::new(sightline_collector::observer::ObserverState::new("node-0".into(), address, store));
        let me = sightline_collector::observer::peers::Announced {
            address: address.to_string(),
            tls_server_name: Some(sightline_collector::observer::peers::tls_server_name("node-0", "default")),
        };
        state.announce([("node-0".to_owned(), me)].into());
        tokio::spawn(sightline_collector::observer::serve(state, listener, Some(tls), std::future::pending()));
        address
    });

    // The relay serves with its server certificate and requires a client
    // certificate from the same CA: a client with one is answered, one
    // without is refused. It finds the agent through the agent's Peer
    // service, over mutual TLS (the agent certificate's wildcard covers
    // the Peer service's default name).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let listen = format!("127.0.0.1:{port}");
    let spool = dir.0.join("spool");
    let mut relay = Command::new(sightline_e2e::sightline_bin())
        .args(["relay", "--listen", &listen, "--peer-service", &agent.to_string(), "--notify-ready"])
        .args(["--tls-relay-server-cert-file", &f("relay-server.crt"), "--tls-relay-server-key-file", &f("relay-server.key")])
        .args(["--tls-relay-client-ca-files", &f("ca.crt")])
        .args(["--tls-hubble-client-cert-file", &f("relay-client.crt"), "--tls-hubble-client-key-file", &f("relay-client.key")])
        .args(["--tls-hubble-server-ca-files", &f("ca.crt")])
        .arg("--spool-dir")
        .arg(&spool)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.0.join("relay.log")).expect("relay log"))
        .spawn()
        .expect("starting the relay");
    let mut stdout = std::io::BufReader::new(relay.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("relay output");
    assert_eq!(line.trim(), "ready", "the relay did not start");
    let status = |client: bool| {
        let mut args = vec!["status", "--server", &listen, "--tls", "--tls-ca-cert-files"];
        let ca_file = f("ca.crt");
        let (cert, key) = (f("relay-client.crt"), f("relay-client.key"));
        args.push(&ca_file);
        args.extend(["--tls-server-name", "sightline-relay.sightline.svc"]);
        if client {
            args.extend(["--tls-client-cert-file", &cert, "--tls-client-key-file", &key]);
        }
        sightline_e2e::sightline(&args)
    };
    // Until the relay has found and reached the agent.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let with = loop {
        let with = status(true);
        if !with.status.success() || String::from_utf8_lossy(&with.stdout).contains("Connected Nodes: 1/1") {
            break with;
        }
        if std::time::Instant::now() > deadline {
            break with;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let without = status(false);
    let _ = relay.kill();
    let _ = relay.wait();
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
    let out = String::from_utf8_lossy(&with.stdout);
    assert!(out.contains("Healthcheck"), "{out}");
    let log = std::fs::read_to_string(dir.0.join("relay.log")).unwrap_or_default();
    assert!(out.contains("Connected Nodes: 1/1"), "the relay did not reach the agent it learnt from the Peer service: {out}\n{log}");
    assert!(!without.status.success(), "a client without a certificate was answered");
}
