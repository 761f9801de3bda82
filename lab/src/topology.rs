//! The lab's plumbing: network namespaces for nodes and pods, the veth pairs
//! between them, their addresses, routes and sysctls, and the teardown.
//!
//! For a lab `L`, node `N` and pod `NS/POD`:
//!
//! * the node lives in the namespace `L.N`: `lo` up and carrying the node's
//!   address (`/32`), IPv4 forwarding on, reverse-path filtering off;
//! * the pod lives in the namespace `L.NS.POD`, which the lab creates as a
//!   container runtime does; the CNI plugin (`sightline-cni`, run by
//!   [`super::cni`]) plugs it in: `eth0` with the pod's address (`/32`), a
//!   link route to the node's address and a default route via it, and the
//!   node side `lxc…` routed to it.
//!
//! Namespaces are created with `ip netns add`, so they live in
//! `/run/netns/NAME`; everything else is done with iproute2's `ip` too, except
//! sysctls, which are written to `/proc/sys` from a thread inside the
//! namespace. Node and namespace names may not contain dots (pod names may),
//! so a node's namespace can never be mistaken for a pod's.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use sightline_collector::netns::{in_netns, netns_inode, netns_path};

/// Where the collectors pin their maps and programs, one directory per lab.
const BPFFS_ROOT: &str = "/sys/fs/bpf/sightline";
/// The pod side of every veth pair.
const POD_IFNAME: &str = "eth0";
/// How long processes get to exit after SIGTERM before they get SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for processes to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How often to look whether signalled processes are gone.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// Rounds of "find the processes, stop them", for processes that fork while
/// being stopped.
const STOP_ROUNDS: usize = 3;
/// Longest lab name (as the lab contract says).
const MAX_LAB_NAME: usize = 20;
/// Longest namespace name: it is a file name in `/run/netns`.
const MAX_NETNS_NAME: usize = 255;

/// What can go wrong while building or tearing down a lab's topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A name or address the topology cannot use.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The namespace to create is already there.
    #[error("network namespace {0} already exists")]
    AlreadyExists(String),
    /// The namespace to use or remove is not there.
    #[error("network namespace {0} does not exist")]
    NotFound(String),
    /// A command could not be started at all.
    #[error("{action}: could not run `{command}`: {source}")]
    Spawn {
        action: String,
        command: String,
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("{action}: `{command}` failed ({status}): {stderr}")]
    Command {
        action: String,
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// Writing a sysctl inside a namespace failed.
    #[error("setting {key}={value} in network namespace {netns}: {source}")]
    Sysctl {
        netns: String,
        key: String,
        value: String,
        #[source]
        source: io::Error,
    },
    /// Some other system call failed.
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    /// Processes that would not die, even from SIGKILL.
    #[error("processes {pids:?} in the namespaces of {what} survived SIGKILL")]
    Survivors { what: String, pids: Vec<u32> },
    /// Several steps of a teardown failed; every one of them is listed.
    #[error("{action}: {}", ErrorList(.errors))]
    Several {
        action: String,
        errors: Vec<TopologyError>,
    },
}

/// Displays errors as `1) …; 2) …`.
struct ErrorList<'a>(&'a [TopologyError]);

impl fmt::Display for ErrorList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}) {e}", i + 1)?;
        }
        Ok(())
    }
}

/// The namespace of node `node` of lab `lab`: `L.N`.
pub fn node_netns(lab: &str, node: &str) -> String {
    format!("{lab}.{node}")
}

/// The namespace of pod `ns/pod` of lab `lab`: `L.NS.POD`.
pub fn pod_netns(lab: &str, ns: &str, pod: &str) -> String {
    format!("{lab}.{ns}.{pod}")
}

/// Creates node `node`'s namespace with its address and sysctls. Fails with
/// [`TopologyError::AlreadyExists`] if the namespace exists; on any other
/// failure removes what it created.
pub fn create_node(lab: &str, node: &str, node_ip: Ipv4Addr) -> Result<(), TopologyError> {
    validate_lab(lab)?;
    validate_component("node name", node, false)?;
    validate_unicast("node address", node_ip)?;
    let name = node_netns(lab, node);
    validate_netns_name(&name)?;
    ensure_absent(&name)?;

    run_ip(
        &format!("creating the namespace of node {node}"),
        &["netns", "add", &name],
    )?;
    if let Err(e) = configure_node(&name, node_ip) {
        discard_netns(&name);
        return Err(e);
    }
    Ok(())
}

fn configure_node(name: &str, node_ip: Ipv4Addr) -> Result<(), TopologyError> {
    write_sysctls(
        name,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            // Interfaces created later (the lxc veths) start without IPv6.
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ],
    )?;
    run_ip(
        &format!("bringing up lo in {name}"),
        &["-n", name, "link", "set", "lo", "up"],
    )?;
    run_ip(
        &format!("adding the node address {node_ip} to lo in {name}"),
        &[
            "-n",
            name,
            "addr",
            "add",
            &format!("{node_ip}/32"),
            "dev",
            "lo",
        ],
    )?;
    Ok(())
}

/// The namespace joining a multi-node lab's nodes: `L.fabric`, holding one
/// bridge that every node's `fab0` veth is plugged into.
pub fn fabric_netns(lab: &str) -> String {
    format!("{lab}.fabric")
}

/// The nodes' side of the fabric.
pub const FABRIC_IFNAME: &str = "fab0";
const FABRIC_BRIDGE: &str = "br0";

/// Creates the fabric namespace and its bridge. On failure removes what it
/// created.
pub fn create_fabric(lab: &str) -> Result<(), TopologyError> {
    validate_lab(lab)?;
    let name = fabric_netns(lab);
    validate_netns_name(&name)?;
    ensure_absent(&name)?;
    run_ip("creating the fabric namespace", &["netns", "add", &name])?;
    let configured = (|| {
        run_ip(&format!("bringing up lo in {name}"), &["-n", &name, "link", "set", "lo", "up"])?;
        run_ip(
            &format!("creating bridge {FABRIC_BRIDGE} in {name}"),
            &["-n", &name, "link", "add", FABRIC_BRIDGE, "type", "bridge"],
        )?;
        run_ip(&format!("bringing up {FABRIC_BRIDGE} in {name}"), &["-n", &name, "link", "set", FABRIC_BRIDGE, "up"])
    })();
    if let Err(e) = configured {
        discard_netns(&name);
        return Err(e);
    }
    Ok(())
}

/// Plugs node `node` (number `index`) into the fabric: `fab0` in the node's
/// namespace with address `addr/prefix`, the peer `nINDEX` on the bridge.
pub fn connect_node(lab: &str, node: &str, index: u8, addr: Ipv4Addr, prefix: u8) -> Result<(), TopologyError> {
    validate_unicast("fabric address", addr)?;
    let (node_ns, fabric) = (node_netns(lab, node), fabric_netns(lab));
    let peer = format!("n{index}");
    run_ip(
        &format!("plugging node {node} into the fabric"),
        &["link", "add", FABRIC_IFNAME, "netns", &node_ns, "type", "veth", "peer", "name", &peer, "netns", &fabric],
    )?;
    run_ip(&format!("enslaving {peer} to {FABRIC_BRIDGE}"), &["-n", &fabric, "link", "set", &peer, "master", FABRIC_BRIDGE])?;
    run_ip(&format!("bringing up {peer}"), &["-n", &fabric, "link", "set", &peer, "up"])?;
    write_sysctls(&node_ns, &[(&format!("net.ipv6.conf.{FABRIC_IFNAME}.disable_ipv6"), "1")])?;
    run_ip(
        &format!("addressing {FABRIC_IFNAME} of node {node}"),
        &["-n", &node_ns, "addr", "add", &format!("{addr}/{prefix}"), "dev", FABRIC_IFNAME],
    )?;
    run_ip(&format!("bringing up {FABRIC_IFNAME} of node {node}"), &["-n", &node_ns, "link", "set", FABRIC_IFNAME, "up"])
        .map(|_| ())
}

/// Makes node `node` answer ARP on the fabric for the addresses it routes
/// elsewhere, its pods (proxy ARP): the node-subnet model, where other
/// nodes reach a pod on the shared segment without a route for it.
pub fn answer_arp_for_pods(lab: &str, node: &str) -> Result<(), TopologyError> {
    write_sysctls(
        &node_netns(lab, node),
        &[
            (&format!("net.ipv4.conf.{FABRIC_IFNAME}.proxy_arp"), "1"),
            // Answer at once: by default proxy replies to broadcast requests
            // wait up to 0.8 s, which a new connection would feel.
            (&format!("net.ipv4.neigh.{FABRIC_IFNAME}.proxy_delay"), "0"),
        ],
    )
}

/// The tunnel device a node gets for `kind` (`vxlan`, `geneve`), as the
/// collector knows it (`sightline_collector::state::TUNNEL_DEVICES`).
#[must_use]
pub fn tunnel_device(kind: &str) -> String {
    format!("sl_{kind}")
}

/// Checks that the kernel has the `kind` (vxlan, geneve) driver, loading
/// its module if need be, so that `lab up --tunnel` fails before it makes
/// anything.
pub fn check_tunnel_driver(kind: &str) -> Result<(), TopologyError> {
    let loaded = || Path::new("/sys/module").join(kind).exists();
    if !loaded() {
        let _ = std::process::Command::new("modprobe").arg("-q").arg(kind).status();
    }
    if loaded() {
        Ok(())
    } else {
        Err(TopologyError::Invalid {
            what: "tunnel",
            value: kind.to_owned(),
            reason: "this kernel has no driver for it (module not found and not built in)",
        })
    }
}

/// Creates node `node`'s collect-metadata tunnel device (`kind` vxlan on
/// UDP 8472 or geneve on UDP 6081, Cilium's ports), with `mtu`, up. The
/// datapath sets each packet's remote end and identity.
pub fn create_tunnel(lab: &str, node: &str, kind: &str, mtu: u32) -> Result<(), TopologyError> {
    let node_ns = node_netns(lab, node);
    let dev = tunnel_device(kind);
    let mtu = mtu.to_string();
    let mut args = vec!["-n", node_ns.as_str(), "link", "add", dev.as_str(), "mtu", mtu.as_str(), "type", kind, "external"];
    match kind {
        "vxlan" => args.extend(["dstport", "8472"]),
        "geneve" => args.extend(["dstport", "6081"]),
        _ => {
            return Err(TopologyError::Invalid { what: "tunnel", value: kind.to_owned(), reason: "use vxlan or geneve" });
        }
    }
    run_ip(&format!("creating the {kind} tunnel device {dev} of node {node}"), &args)?;
    write_sysctls(&node_ns, &[(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "1")])?;
    run_ip(&format!("bringing up {dev} of node {node}"), &["-n", &node_ns, "link", "set", &dev, "up"]).map(|_| ())
}

/// Routes `cidr` (pods of another node) from node `node` through that
/// node's fabric address, replacing a route the lab made for it before.
pub fn route_via_fabric(lab: &str, node: &str, cidr: &str, via: Ipv4Addr) -> Result<(), TopologyError> {
    run_ip(
        &format!("routing {cidr} from node {node} via {via}"),
        &["-n", &node_netns(lab, node), "route", "replace", cidr, "via", &via.to_string(), "dev", FABRIC_IFNAME],
    )
    .map(|_| ())
}

/// Creates pod `ns/pod`'s network namespace, to be plugged into node
/// `node` (whose namespace must exist) by the CNI plugin: what a container
/// runtime does before it calls the plugin. `lo` stays down (the plugin
/// brings it up); new interfaces start without IPv6.
pub fn create_pod_netns(lab: &str, node: &str, ns: &str, pod: &str) -> Result<String, TopologyError> {
    validate_lab(lab)?;
    validate_component("node name", node, false)?;
    validate_component("namespace name", ns, false)?;
    validate_component("pod name", pod, true)?;
    let node_ns = node_netns(lab, node);
    let pod_ns = pod_netns(lab, ns, pod);
    validate_netns_name(&pod_ns)?;
    if !netns_path(&node_ns).exists() {
        return Err(TopologyError::NotFound(node_ns));
    }
    ensure_absent(&pod_ns)?;
    run_ip(&format!("creating the namespace of pod {ns}/{pod}"), &["netns", "add", &pod_ns])?;
    // Before the plugin makes eth0, so that it never gets an IPv6 address.
    if let Err(e) = write_sysctls(&pod_ns, &[("net.ipv6.conf.default.disable_ipv6", "1")]) {
        discard_netns(&pod_ns);
        return Err(e);
    }
    Ok(pod_ns)
}

/// Removes pod `ns/pod`: stops the processes in its namespace, deletes
/// what is left of its veth (the CNI plugin's DEL removes it first) and
/// the namespace. The node-side veth is gone when this
/// returns, so its endpoint id can be reused at once.
pub fn remove_pod(lab: &str, ns: &str, pod: &str) -> Result<(), TopologyError> {
    validate_lab(lab)?;
    validate_component("namespace name", ns, false)?;
    validate_component("pod name", pod, true)?;
    let name = pod_netns(lab, ns, pod);
    validate_netns_name(&name)?;
    if !netns_path(&name).exists() {
        return Err(TopologyError::NotFound(name));
    }

    let mut errors = stop_processes(&format!("pod {ns}/{pod}"), std::slice::from_ref(&name));
    // The namespace itself may outlive its name (anything still holding it
    // keeps it alive); deleting the veth here frees the node side for sure.
    if let Err(e) = run_ip_quiet(&["-n", &name, "link", "del", POD_IFNAME]) {
        log::debug!("{e}");
    }
    if let Err(e) = run_ip(
        &format!("deleting the namespace of pod {ns}/{pod}"),
        &["netns", "del", &name],
    ) {
        errors.push(e);
    }
    collect(format!("removing pod {ns}/{pod} of lab {lab}"), errors)
}

/// The names of lab `lab`'s namespaces (`ip netns list` entries starting with
/// `L.`), sorted.
pub fn list_lab_netns(lab: &str) -> Result<Vec<String>, TopologyError> {
    validate_lab(lab)?;
    let listing = run_ip("listing network namespaces", &["netns", "list"])?;
    let prefix = format!("{lab}.");
    let names: BTreeSet<String> = listing
        .lines()
        // Lines look like `NAME` or `NAME (id: 3)`.
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    Ok(names.into_iter().collect())
}

/// Tears the whole lab down: kills every process inside any of its
/// namespaces (SIGTERM, then SIGKILL after a short grace), deletes every
/// `L.*` netns, and removes `/sys/fs/bpf/sightline/L` if present. Never fails
/// halfway silently: carries on past failures, collects the errors and
/// returns them all. A lab that does not exist is torn down successfully.
pub fn destroy_lab(lab: &str) -> Result<(), TopologyError> {
    validate_lab(lab)?;
    let mut errors = Vec::new();
    let names = match list_lab_netns(lab) {
        Ok(names) => names,
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
    };

    errors.extend(stop_processes(&format!("lab {lab}"), &names));
    for name in &names {
        if let Err(e) = run_ip(
            &format!("deleting network namespace {name}"),
            &["netns", "del", name],
        ) {
            errors.push(e);
        }
    }

    let pins = Path::new(BPFFS_ROOT).join(lab);
    let removed = match std::fs::symlink_metadata(&pins) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&pins),
        Ok(_) => std::fs::remove_file(&pins),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(source) = removed {
        errors.push(TopologyError::Io {
            action: format!("removing {}", pins.display()),
            source,
        });
    }

    collect(format!("tearing down lab {lab}"), errors)
}

/// `Ok` if there are no errors, otherwise all of them under `action`.
fn collect(action: String, mut errors: Vec<TopologyError>) -> Result<(), TopologyError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(TopologyError::Several { action, errors }),
    }
}

/// Stops every process whose network namespace is one of `names`: SIGTERM,
/// up to [`TERM_GRACE`] to exit, then SIGKILL. Repeats a few times for
/// processes that appeared meanwhile. Returns the errors met on the way.
fn stop_processes(what: &str, names: &[String]) -> Vec<TopologyError> {
    let mut errors = Vec::new();
    if names.is_empty() {
        return errors;
    }
    let mut inodes = BTreeSet::new();
    for name in names {
        match netns_inode(&netns_path(name)) {
            Ok(inode) => {
                inodes.insert(inode);
            }
            Err(source) => errors.push(TopologyError::Io {
                action: format!("looking up network namespace {name}"),
                source,
            }),
        }
    }

    let mut survivors = Vec::new();
    for round in 0..STOP_ROUNDS {
        let mut pids = BTreeSet::new();
        for name in names {
            match netns_pids(name) {
                Ok(found) => pids.extend(found),
                // Report a namespace that cannot be searched once.
                Err(e) if round == 0 => errors.push(e),
                Err(_) => {}
            }
        }
        if pids.is_empty() {
            survivors.clear();
            break;
        }
        survivors = terminate(&pids, &inodes);
    }
    if !survivors.is_empty() {
        errors.push(TopologyError::Survivors {
            what: what.to_owned(),
            pids: survivors,
        });
    }
    errors
}

/// The processes in namespace `name` (`ip netns pids`), never this process
/// nor init.
fn netns_pids(name: &str) -> Result<Vec<u32>, TopologyError> {
    let out = run_ip(
        &format!("listing the processes in network namespace {name}"),
        &["netns", "pids", name],
    )?;
    let own = std::process::id();
    Ok(out
        .split_whitespace()
        .filter_map(|word| word.parse::<u32>().ok())
        .filter(|&pid| pid > 1 && pid != own && i32::try_from(pid).is_ok())
        .collect())
}

/// SIGTERM to `pids`, SIGKILL to those still there after the grace; returns
/// those that are still there after that.
fn terminate(pids: &BTreeSet<u32>, inodes: &BTreeSet<u64>) -> Vec<u32> {
    for &pid in pids {
        signal(pid, libc::SIGTERM);
    }
    let left = wait_gone(pids.iter().copied().collect(), inodes, TERM_GRACE);
    if left.is_empty() {
        return left;
    }
    log::warn!("processes {left:?} ignored SIGTERM; sending SIGKILL");
    for &pid in &left {
        signal(pid, libc::SIGKILL);
    }
    wait_gone(left, inodes, KILL_WAIT)
}

/// Waits up to `limit` for `pids` to leave the namespaces `inodes`; returns
/// those that have not.
fn wait_gone(mut pids: Vec<u32>, inodes: &BTreeSet<u64>, limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        pids.retain(|&pid| in_namespaces(pid, inodes));
        if pids.is_empty() || Instant::now() >= deadline {
            return pids;
        }
        thread::sleep(EXIT_POLL);
    }
}

/// Whether `pid` is a live process in one of the namespaces `inodes`. A
/// process that has exited (even a zombie) has no namespace any more; a
/// reused pid most likely has another one.
fn in_namespaces(pid: u32, inodes: &BTreeSet<u64>) -> bool {
    let path = format!("/proc/{pid}/ns/net");
    match netns_inode(Path::new(&path)) {
        Ok(inode) => inodes.is_empty() || inodes.contains(&inode),
        Err(_) => false,
    }
}

/// Sends `sig` to `pid`; a process that is already gone is fine.
fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes two integers and touches no memory of ours; pid is
    // a single positive process id, never a group or "everyone".
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            log::warn!("sending signal {sig} to process {pid}: {e}");
        }
    }
}

/// Writes sysctls (`net.ipv4.ip_forward`-style keys) from a thread inside the
/// namespace `netns`. IPv6 keys are skipped where the kernel has no IPv6.
fn write_sysctls(netns: &str, settings: &[(&str, &str)]) -> Result<(), TopologyError> {
    let owned: Vec<(String, String)> = settings
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let outcome = in_netns(&netns_path(netns), move || {
        let has_ipv6 = Path::new("/proc/sys/net/ipv6").exists();
        for (key, value) in owned {
            if key.starts_with("net.ipv6.") && !has_ipv6 {
                continue;
            }
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            if let Err(e) = std::fs::write(&path, &value) {
                return Err((key, value, e));
            }
        }
        Ok(())
    });
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err((key, value, source))) => Err(TopologyError::Sysctl {
            netns: netns.to_owned(),
            key,
            value,
            source,
        }),
        Err(source) => Err(TopologyError::Io {
            action: format!("entering network namespace {netns} to set sysctls"),
            source,
        }),
    }
}

/// Deletes a namespace this module just created, logging a failure (the
/// caller is already reporting the error that made it give up).
fn discard_netns(name: &str) {
    if let Err(e) = run_ip_quiet(&["netns", "del", name]) {
        log::warn!("cleaning up after a failure: {e}");
    }
}

fn ensure_absent(name: &str) -> Result<(), TopologyError> {
    if netns_path(name).exists() {
        Err(TopologyError::AlreadyExists(name.to_owned()))
    } else {
        Ok(())
    }
}

/// iproute2's `ip`, by absolute path where it is in a standard place.
fn ip_binary() -> &'static str {
    static IP: OnceLock<&'static str> = OnceLock::new();
    IP.get_or_init(|| {
        ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("ip")
    })
}

/// Runs `ip ARGS…`; returns its standard output, or an error saying what was
/// being done (`action`), the command line and its standard error.
fn run_ip(action: &str, args: &[&str]) -> Result<String, TopologyError> {
    let binary = ip_binary();
    let command = std::iter::once(binary)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TopologyError::Spawn {
            action: action.to_owned(),
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(TopologyError::Command {
            action: action.to_owned(),
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// [`run_ip`] for best-effort cleanup steps.
fn run_ip_quiet(args: &[&str]) -> Result<String, TopologyError> {
    run_ip("cleaning up", args)
}

/// Lab names as the lab contract has them: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`,
/// at most 20 characters. Checked here too because the name becomes a prefix
/// of namespaces to delete and part of a path to remove.
fn validate_lab(lab: &str) -> Result<(), TopologyError> {
    let invalid = |reason| TopologyError::Invalid {
        what: "lab name",
        value: lab.to_owned(),
        reason,
    };
    if lab.is_empty() || lab.len() > MAX_LAB_NAME {
        return Err(invalid("it must have 1 to 20 characters"));
    }
    if !lab
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid("only a-z, 0-9 and '-' are allowed"));
    }
    if lab.starts_with('-') || lab.ends_with('-') {
        return Err(invalid("it must start and end with a letter or digit"));
    }
    Ok(())
}

/// A node, namespace or pod name that becomes part of a namespace name:
/// letters, digits, `-`, `_` and (only if `dots`) `.`, starting with a letter
/// or digit.
fn validate_component(what: &'static str, value: &str, dots: bool) -> Result<(), TopologyError> {
    let invalid = |reason| TopologyError::Invalid {
        what,
        value: value.to_owned(),
        reason,
    };
    let Some(first) = value.bytes().next() else {
        return Err(invalid("it is empty"));
    };
    if !first.is_ascii_alphanumeric() {
        return Err(invalid("it must start with a letter or digit"));
    }
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (dots && b == b'.');
    if !value.bytes().all(allowed) {
        return Err(invalid(if dots {
            "only letters, digits, '-', '_' and '.' are allowed"
        } else {
            "only letters, digits, '-' and '_' are allowed"
        }));
    }
    Ok(())
}

fn validate_netns_name(name: &str) -> Result<(), TopologyError> {
    if name.len() > MAX_NETNS_NAME {
        return Err(TopologyError::Invalid {
            what: "network namespace name",
            value: name.to_owned(),
            reason: "it is longer than 255 characters",
        });
    }
    Ok(())
}

fn validate_unicast(what: &'static str, addr: Ipv4Addr) -> Result<(), TopologyError> {
    if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || addr.is_broadcast() {
        return Err(TopologyError::Invalid {
            what,
            value: addr.to_string(),
            reason: "it must be a unicast address outside 127.0.0.0/8",
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn is_root() -> bool {
        // SAFETY: geteuid(2) has no arguments and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// A lab name unique to this test process and test.
    pub(crate) fn lab_name(suffix: &str) -> String {
        format!("sltest{}{suffix}", std::process::id())
    }

    /// Destroys the lab when dropped, also when the test fails.
    pub(crate) struct LabGuard(pub(crate) String);

    impl Drop for LabGuard {
        fn drop(&mut self) {
            if let Err(e) = destroy_lab(&self.0) {
                eprintln!("cleaning up lab {}: {e}", self.0);
            }
            let _ = std::fs::remove_dir_all(crate::cluster::lab_dir(&self.0));
        }
    }

    /// Writes `node-1`'s conflist: 10.244.1.0/24, gateway 10.244.1.1, no
    /// collector.
    pub(crate) fn node_1_conflist(lab: &str) {
        let conf = crate::cni::NodeConf {
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            mtu: 1500,
            control_socket: None,
            ranges: vec!["10.244.1.0/24".parse().unwrap()],
            exclude: vec![],
            data_dir: crate::cni::store_dir(lab, "node-1"),
        };
        crate::cni::write_conflist(lab, "node-1", &conf).unwrap();
    }

    /// Builds `node-1` (10.244.1.1) with pods x/a, x/b and y/c, plugged in
    /// by the CNI plugin.
    pub(crate) fn three_pod_lab(lab: &str) -> Vec<(String, Ipv4Addr)> {
        create_node(lab, "node-1", Ipv4Addr::new(10, 244, 1, 1)).unwrap();
        node_1_conflist(lab);
        let pods = [
            ("x", "a", Ipv4Addr::new(10, 244, 1, 10)),
            ("x", "b", Ipv4Addr::new(10, 244, 1, 11)),
            ("y", "c", Ipv4Addr::new(10, 244, 1, 12)),
        ];
        pods.iter()
            .map(|&(ns, pod, ip)| {
                crate::cni::plug_pod(lab, "node-1", ns, pod, ip).unwrap();
                (pod_netns(lab, ns, pod), ip)
            })
            .collect()
    }

    pub(crate) fn ip_ok(args: &[&str]) -> String {
        run_ip("test", args).unwrap()
    }

    /// Names of the links in this (the root) namespace starting with `lxc`.
    pub(crate) fn root_lxc_links() -> Vec<String> {
        std::fs::read_dir("/sys/class/net")
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("lxc"))
            .collect()
    }

    pub(crate) fn assert_lab_gone(lab: &str) {
        let prefix = format!("{lab}.");
        let listing = ip_ok(&["netns", "list"]);
        assert!(
            !listing.lines().any(|l| l.starts_with(&prefix)),
            "namespaces of {lab} left behind:\n{listing}"
        );
        assert!(
            root_lxc_links().is_empty(),
            "lxc links in the root namespace"
        );
    }

    #[test]
    fn names_and_macs() {
        assert_eq!(node_netns("sightline", "node-1"), "sightline.node-1");
        assert_eq!(pod_netns("sightline", "x", "a"), "sightline.x.a");
    }

    #[test]
    fn bad_input_is_rejected_before_anything_runs() {
        let ip = Ipv4Addr::new(10, 244, 1, 1);
        for lab in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a/b",
            "..",
            "abcdefghijklmnopqrstu",
        ] {
            assert!(
                matches!(
                    create_node(lab, "node-1", ip),
                    Err(TopologyError::Invalid { .. })
                ),
                "{lab:?}"
            );
            assert!(
                matches!(destroy_lab(lab), Err(TopologyError::Invalid { .. })),
                "{lab:?}"
            );
        }
        for node in ["", "-n", "a.b", "a/b", "a b"] {
            assert!(matches!(
                create_node("ok", node, ip),
                Err(TopologyError::Invalid { .. })
            ));
        }
        let add = |ns, pod| create_pod_netns("ok", "node-1", ns, pod);
        assert!(matches!(add("x.y", "a"), Err(TopologyError::Invalid { .. })));
        assert!(matches!(add("x", "../a"), Err(TopologyError::Invalid { .. })));
        assert!(matches!(add("", "a"), Err(TopologyError::Invalid { .. })));
        let long = "p".repeat(300);
        assert!(matches!(add("x", &long), Err(TopologyError::Invalid { .. })));
    }

    #[test]
    fn error_messages_name_the_command() {
        let e = run_ip(
            "doing a thing",
            &["link", "show", "dev", "sightline-no-such-dev"],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("doing a thing: `"), "{text}");
        assert!(
            text.contains("link show dev sightline-no-such-dev"),
            "{text}"
        );
        let several = TopologyError::Several {
            action: "tearing down lab t".to_owned(),
            errors: vec![
                TopologyError::NotFound("t.a".to_owned()),
                TopologyError::NotFound("t.b".to_owned()),
            ],
        };
        assert_eq!(
            several.to_string(),
            "tearing down lab t: 1) network namespace t.a does not exist; \
             2) network namespace t.b does not exist"
        );
    }

    #[test]
    #[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
    fn lab_lifecycle() {
        assert!(is_root(), "this test needs root");
        let lab = lab_name("l");
        let guard = LabGuard(lab.clone());
        let node_ns = node_netns(&lab, "node-1");
        three_pod_lab(&lab);

        assert_eq!(
            list_lab_netns(&lab).unwrap(),
            vec![
                node_ns.clone(),
                pod_netns(&lab, "x", "a"),
                pod_netns(&lab, "x", "b"),
                pod_netns(&lab, "y", "c"),
            ]
        );
        // A second node with the same name is refused, and nothing changes.
        assert!(matches!(
            create_node(&lab, "node-1", Ipv4Addr::new(10, 244, 1, 1)),
            Err(TopologyError::AlreadyExists(_))
        ));
        assert_eq!(list_lab_netns(&lab).unwrap().len(), 4);

        // Node side: sysctls, address, veth with its MAC, route.
        let sysctl = |ns: &str, key: &str| {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            in_netns(&netns_path(ns), move || std::fs::read_to_string(path))
                .unwrap()
                .unwrap()
                .trim()
                .to_owned()
        };
        assert_eq!(sysctl(&node_ns, "net.ipv4.ip_forward"), "1");
        assert_eq!(sysctl(&node_ns, "net.ipv4.conf.all.rp_filter"), "0");
        assert_eq!(sysctl(&node_ns, "net.ipv4.conf.default.rp_filter"), "0");
        assert!(ip_ok(&["-n", &node_ns, "addr", "show", "dev", "lo"]).contains("10.244.1.1/32"));
        // The plugin's veth, as the CNI suite checks it in detail.
        let c_host = sightline_cni::host_ifname(&crate::cni::container_id(&lab, "y", "c"), "eth0");
        let lxc = ip_ok(&["-n", &node_ns, "link", "show", "dev", &c_host]);
        assert!(lxc.contains("06:00:0a:f4:01:0c") && lxc.contains(",UP"), "{lxc}");
        let routes = ip_ok(&["-n", &node_ns, "route", "show"]);
        assert!(routes.contains(&format!("10.244.1.12 dev {c_host}")), "{routes}");
        let pod_ns = pod_netns(&lab, "y", "c");
        let eth0 = ip_ok(&["-n", &pod_ns, "addr", "show", "dev", "eth0"]);
        assert!(eth0.contains("10.244.1.12/32") && !eth0.contains("inet6"), "{eth0}");
        if Path::new("/proc/sys/net/ipv6").exists() {
            assert_eq!(sysctl(&pod_ns, "net.ipv6.conf.default.disable_ipv6"), "1");
        }

        // A pod whose address is taken fails (the plugin's store refuses
        // it) and leaves nothing behind.
        let err = crate::cni::plug_pod(&lab, "node-1", "y", "d", Ipv4Addr::new(10, 244, 1, 12)).unwrap_err();
        assert!(format!("{err:#}").contains("error 100"), "{err:#}");
        assert!(!netns_path(&pod_netns(&lab, "y", "d")).exists());
        // The same pod twice is refused.
        assert!(matches!(create_pod_netns(&lab, "node-1", "y", "c"), Err(TopologyError::AlreadyExists(_))));
        // A pod on a node that does not exist is refused.
        assert!(matches!(create_pod_netns(&lab, "node-9", "y", "e"), Err(TopologyError::NotFound(_))));

        // Unplugging stops the pod's processes and frees its address.
        let mut sleeper = Command::new(ip_binary())
            .args(["netns", "exec", &pod_ns, "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while netns_pids(&pod_ns).unwrap().is_empty() && started.elapsed() < Duration::from_secs(5)
        {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !netns_pids(&pod_ns).unwrap().is_empty(),
            "sleep did not start"
        );
        crate::cni::unplug_pod(&lab, "node-1", "y", "c").unwrap();
        assert!(
            sleeper.wait().unwrap().code().is_none(),
            "killed by a signal"
        );
        assert!(!netns_path(&pod_ns).exists());
        assert!(run_ip("test", &["-n", &node_ns, "link", "show", "dev", &c_host]).is_err());
        assert!(matches!(
            remove_pod(&lab, "y", "c"),
            Err(TopologyError::NotFound(_))
        ));
        // Unplugging again is fine (DEL is idempotent); the address is
        // free again.
        crate::cni::unplug_pod(&lab, "node-1", "y", "c").unwrap();
        crate::cni::plug_pod(&lab, "node-1", "y", "c", Ipv4Addr::new(10, 244, 1, 12)).unwrap();

        // destroy_lab kills processes in every namespace and removes all.
        let mut sleepers: Vec<_> = [node_ns.clone(), pod_netns(&lab, "x", "a")]
            .iter()
            .map(|ns| {
                Command::new(ip_binary())
                    .args(["netns", "exec", ns, "sleep", "600"])
                    .stdin(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        destroy_lab(&lab).unwrap();
        assert!(
            started.elapsed() < TERM_GRACE,
            "sleep should die of SIGTERM"
        );
        for s in &mut sleepers {
            assert!(s.wait().unwrap().code().is_none(), "killed by a signal");
        }
        assert_lab_gone(&lab);
        assert!(list_lab_netns(&lab).unwrap().is_empty());
        // Destroying again is fine.
        destroy_lab(&lab).unwrap();
        drop(guard);
    }
}
