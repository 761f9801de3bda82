//! Pods are plugged in by `sightline-cni`, executed exactly as a container
//! runtime executes a CNI plugin: in the node's network namespace (the
//! runtime's), with the `CNI_*` variables, the plugin's network
//! configuration on stdin taken from the node's conflist (the list's
//! `cniVersion` and `name` added to the plugin's entry, the cached result
//! as `prevResult` on DEL), the result or the error object read from
//! stdout. Every lab pod, and so every end-to-end test, goes through the
//! plugin a real node runs.
//!
//! For lab `L` and node `N`, `<lab dir>/cni/N.conflist` is the node's
//! network configuration list (`lab status -o json` names it as
//! `nodes[].cni_conf`), rewritten whenever the node's pod ranges grow;
//! `<lab dir>/cni/ipam/N` the plugin's address store; `<lab dir>/cni/results`
//! the results of ADD by container, as runtimes cache them. The container
//! id of pod `NS/POD` is its namespace's name `L.NS.POD` (no lab, node or
//! namespace name holds a dot, so it names one pod only). The lab chooses
//! the address (`CNI_ARGS` `IP=`): the plugin checks it against the node's
//! ranges and its store.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use sightline_cni::CniResult;
use sightline_cni::conflist;
pub use sightline_cni::conflist::NodeConf;
use sightline_collector::netns::netns_path;

use super::cluster::lab_dir;
use super::topology::{self, node_netns, pod_netns};

/// The plugin's binary (and the `type` in the conflist).
pub const PLUGIN: &str = sightline_cni::PLUGIN_TYPE;
/// Overrides where the plugin is looked for.
pub const PLUGIN_ENV: &str = "SIGHTLINE_CNI";
/// The pod's interface.
pub const IFNAME: &str = "eth0";

/// Node `node`'s conflist.
pub fn conflist_path(lab: &str, node: &str) -> PathBuf {
    lab_dir(lab).join("cni").join(format!("{node}.conflist"))
}

/// Node `node`'s address store (the plugin's `ipam.dataDir`).
pub fn store_dir(lab: &str, node: &str) -> PathBuf {
    lab_dir(lab).join("cni").join("ipam").join(node)
}

fn results_dir(lab: &str) -> PathBuf {
    lab_dir(lab).join("cni").join("results")
}

/// Where ADD's result for container `id` is kept (for DEL's `prevResult`).
fn cached_result(lab: &str, id: &str) -> PathBuf {
    results_dir(lab).join(format!("{id}-{IFNAME}"))
}

/// The container id of pod `ns/pod` (its namespace's name).
pub fn container_id(lab: &str, ns: &str, pod: &str) -> String {
    pod_netns(lab, ns, pod)
}

/// Writes node `node`'s conflist for `conf` and returns its path.
pub fn write_conflist(lab: &str, node: &str, conf: &NodeConf) -> anyhow::Result<PathBuf> {
    let list = conflist::render(conf).ok_or_else(|| anyhow!("node {node} has no pod range to configure the CNI plugin with"))?;
    let path = conflist_path(lab, node);
    conflist::write(&path, &list).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Where the plugin is: `$SIGHTLINE_CNI`, else next to this program.
pub fn plugin_path() -> anyhow::Result<PathBuf> {
    crate::programs::find(PLUGIN, PLUGIN_ENV)
}

/// Plugs pod `ns/pod` (whose namespace exists) into node `node` with
/// address `ip`: CNI ADD. Returns the node side's interface name.
pub fn add(lab: &str, node: &str, ns: &str, pod: &str, ip: Ipv4Addr) -> anyhow::Result<String> {
    let id = container_id(lab, ns, pod);
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod};IP={ip}");
    let out = invoke(lab, node, "ADD", &id, &pod_netns(lab, ns, pod), &args, None)?;
    let result: CniResult =
        serde_json::from_value(out).with_context(|| format!("{PLUGIN} ADD for pod {ns}/{pod}: its result"))?;
    let want = format!("{ip}/32");
    if !result.ips.iter().any(|c| c.address == want) {
        bail!("{PLUGIN} ADD for pod {ns}/{pod} gave {:?}, not the address asked for ({want})", result.ips);
    }
    let host = result
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_empty())
        .ok_or_else(|| anyhow!("{PLUGIN} ADD for pod {ns}/{pod}: its result names no interface on the node"))?
        .name
        .clone();
    let dir = results_dir(lab);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cached = cached_result(lab, &id);
    fs::write(&cached, serde_json::to_vec(&result).expect("a result serialises"))
        .with_context(|| format!("writing {}", cached.display()))?;
    Ok(host)
}

/// Unplugs pod `ns/pod` from node `node`: CNI DEL (with the cached ADD
/// result as `prevResult`). Safe to repeat, and for a pod half made.
pub fn del(lab: &str, node: &str, ns: &str, pod: &str) -> anyhow::Result<()> {
    let id = container_id(lab, ns, pod);
    let cached = cached_result(lab, &id);
    let prev = fs::read(&cached).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}");
    invoke(lab, node, "DEL", &id, &pod_netns(lab, ns, pod), &args, prev)?;
    let _ = fs::remove_file(&cached);
    Ok(())
}

/// Creates pod `ns/pod`'s namespace and has the plugin plug it into node
/// `node` with address `ip`; on failure nothing of the pod is left (DEL,
/// then the namespace). Returns the node side's interface name.
pub fn plug_pod(lab: &str, node: &str, ns: &str, pod: &str, ip: Ipv4Addr) -> anyhow::Result<String> {
    topology::create_pod_netns(lab, node, ns, pod)?;
    add(lab, node, ns, pod, ip).inspect_err(|_| {
        if let Err(e) = unplug_pod(lab, node, ns, pod) {
            log::warn!("removing the half-made pod {ns}/{pod}: {e:#}");
        }
    })
}

/// Has the plugin unplug pod `ns/pod` from node `node` (DEL), then stops
/// its processes and deletes its namespace. Both steps are tried; a pod
/// whose namespace is already gone is only unplugged.
pub fn unplug_pod(lab: &str, node: &str, ns: &str, pod: &str) -> anyhow::Result<()> {
    let unplugged = del(lab, node, ns, pod);
    let removed = match topology::remove_pod(lab, ns, pod) {
        Err(topology::TopologyError::NotFound(_)) | Ok(()) => Ok(()),
        Err(e) => Err(anyhow::Error::from(e)),
    };
    unplugged.and(removed)
}

/// Runs the plugin for `command` as a runtime does and returns what it
/// printed (`null` for an empty stdout), or its error object as an error.
fn invoke(lab: &str, node: &str, command: &str, id: &str, netns: &str, args: &str, prev: Option<Value>) -> anyhow::Result<Value> {
    let what = format!("{PLUGIN} {command} of container {id} on node {node}");
    let list_path = conflist_path(lab, node);
    let list: Value = serde_json::from_slice(&fs::read(&list_path).with_context(|| format!("{what}: reading {}", list_path.display()))?)
        .with_context(|| format!("{what}: {}", list_path.display()))?;
    let mut conf = conflist::first_plugin(&list).ok_or_else(|| anyhow!("{what}: {} lists no plugin", list_path.display()))?;
    if let Some(prev) = prev {
        conf["prevResult"] = prev;
    }
    let plugin_type = conf["type"].as_str().unwrap_or_default().to_owned();
    // Found by its `type` in CNI_PATH, as runtimes do.
    let plugin = plugin_path()?;
    if plugin.file_name().and_then(|n| n.to_str()) != Some(plugin_type.as_str()) && std::env::var_os(PLUGIN_ENV).is_none() {
        bail!("{what}: {} names plugin {plugin_type:?}, not {PLUGIN}", list_path.display());
    }
    let cni_path = plugin.parent().map(Path::to_path_buf).unwrap_or_default();

    // The runtime's namespace is the node's.
    let node_ns = fs::File::open(netns_path(&node_netns(lab, node)))
        .with_context(|| format!("{what}: opening node {node}'s network namespace"))?;
    let fd = node_ns.as_raw_fd();
    let mut cmd = Command::new(&plugin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns_path(netns))
        .env("CNI_IFNAME", IFNAME)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setns(2) on a descriptor the parent keeps open until the
    // child has exec'd; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("{what}: starting {}", plugin.display()))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(&serde_json::to_vec(&conf).expect("a configuration serialises"))
        .with_context(|| format!("{what}: writing its configuration"))?;
    let out = child.wait_with_output().with_context(|| format!("{what}: waiting for it"))?;
    drop(node_ns);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        log::debug!("{what}: {line}");
    }
    let printed: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).with_context(|| format!("{what}: its output {:?}", String::from_utf8_lossy(&out.stdout)))?
    };
    if out.status.success() {
        return Ok(printed);
    }
    match (printed.get("code"), printed.get("msg")) {
        (Some(code), Some(msg)) => {
            let details = printed.get("details").and_then(Value::as_str).unwrap_or_default();
            bail!("{what} failed: error {code}: {}{}{}", msg.as_str().unwrap_or_default(), if details.is_empty() { "" } else { ": " }, details)
        }
        _ => bail!("{what} failed ({}) without an error object: {}", out.status, stderr.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_name_one_pod() {
        assert_eq!(container_id("lab", "x", "a.b"), "lab.x.a.b");
        assert_ne!(container_id("lab", "a-b", "c"), container_id("lab", "a", "b-c"));
    }
}
