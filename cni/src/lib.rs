//! `sightline-cni`: the CNI plugin (specification 1.0 and 1.1) a container
//! runtime executes to plug a pod into its node.
//!
//! ADD makes the pod's veth (the pod's `/32`, its routes, the host side
//! `lxc…` routed to it), takes the address from the node's ranges (built-in
//! IPAM, a file store) and registers the endpoint with the node's collector;
//! DEL undoes whatever of that exists; CHECK compares the container with
//! its previous result; STATUS, VERSION and GC as the specification says.
//! It must not touch anything but the attachment it is asked about, and it
//! never leaves half of an ADD behind. `docs/CNI.md` is its manual.

#![forbid(unsafe_op_in_unsafe_fn)]

mod config;
pub mod conflist;
mod error;
mod ipam;
mod netns;
mod plumbing;
mod register;
mod result;

use std::net::Ipv4Addr;

pub use config::{Command, Invocation, NetConf, PLUGIN_TYPE, SUPPORTED_VERSIONS, check_version, command, invocation};
pub use error::{CniError, code};
pub use ipam::{Allocation, Store};
pub use plumbing::{Plug, host_ifname, host_mac, pod_mac};
pub use result::{CniResult, Interface, IpConfig, Route};

/// The version errors are reported in when the configuration has none.
pub const DEFAULT_VERSION: &str = "1.1.0";

/// Runs one invocation: `get` reads the environment, `stdin` is the network
/// configuration. Returns what to print on stdout on success (nothing for
/// DEL, CHECK, STATUS and GC).
///
/// # Errors
///
/// The [`CniError`] to print; its code is the specification's.
pub fn run(get: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<String>, CniError> {
    match command(get)? {
        Command::Version => Ok(Some(version(stdin))),
        Command::Add => add(get, &NetConf::parse(stdin)?).map(Some),
        Command::Del => del(get, &NetConf::parse(stdin)?).map(|()| None),
        Command::Check => check(get, &NetConf::parse(stdin)?).map(|()| None),
        Command::Status => status(&NetConf::parse(stdin)?).map(|()| None),
        Command::Gc => gc(&NetConf::parse(stdin)?).map(|()| None),
    }
}

/// The version an error should be reported in: the configuration's, when
/// it can be read.
#[must_use]
pub fn error_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| DEFAULT_VERSION.to_owned())
}

fn version(stdin: &[u8]) -> String {
    serde_json::json!({ "cniVersion": error_version(stdin), "supportedVersions": SUPPORTED_VERSIONS }).to_string()
}

/// The address the runtime asks for: `IP=` in `CNI_ARGS` or
/// `runtimeConfig.ips`; both must agree.
fn requested(conf: &NetConf, inv: &Invocation) -> Result<Option<Ipv4Addr>, CniError> {
    let from_runtime = match conf.runtime_config.as_ref().and_then(|r| r.ips.first()) {
        Some(s) => {
            let a = s.split_once('/').map_or(s.as_str(), |(a, _)| a);
            Some(a.parse::<Ipv4Addr>().map_err(|_| CniError::InvalidConfig {
                field: "runtimeConfig.ips[0]".into(),
                reason: format!("{s:?} is not an IPv4 address"),
            })?)
        }
        None => None,
    };
    match (from_runtime, inv.requested_ip) {
        (Some(a), Some(b)) if a != b => Err(CniError::InvalidConfig {
            field: "runtimeConfig.ips".into(),
            reason: format!("{a} disagrees with IP={b} in CNI_ARGS"),
        }),
        (a, b) => Ok(a.or(b)),
    }
}

fn add(get: &dyn Fn(&str) -> Option<String>, conf: &NetConf) -> Result<String, CniError> {
    let inv = invocation(get, true)?;
    let netns = inv.netns.clone().expect("ADD requires CNI_NETNS");
    if !netns::exists(&netns) {
        return Err(CniError::UnknownContainer {
            container_id: inv.container_id.clone(),
            reason: format!("network namespace {} does not exist", netns.display()),
        });
    }
    let wanted = requested(conf, &inv)?;
    let lxc = host_ifname(&inv.container_id, &inv.ifname);
    let alloc = Allocation {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        netns: netns.display().to_string(),
        namespace: inv.pod_namespace.clone(),
        name: inv.pod_name.clone(),
        host_ifname: lxc.clone(),
    };
    let store = Store::lock(&conf.ipam.data_dir, &conf.name)?;
    let held_before = store.find(&inv.container_id, &inv.ifname)?.is_some();
    let ip = store.allocate(conf, wanted, &alloc)?;
    let plug = Plug { netns: netns.clone(), ifname: inv.ifname.clone(), host_ifname: lxc.clone(), ip, gateway: conf.gateway, mtu: conf.mtu() };
    let undo = |store: &Store| {
        let _ = plug.remove();
        if !held_before {
            let _ = store.remove(ip);
        }
    };
    // A repeated ADD starts again from nothing.
    if (held_before || netns::link_exists(&lxc))
        && let Err(e) = plug.remove() {
            undo(&store);
            return Err(e);
        }
    if let Err(e) = plug.apply() {
        undo(&store);
        return Err(e);
    }
    if let Some(socket) = &conf.control_socket {
        let ep = register::Endpoint {
            container_id: inv.container_id.clone(),
            ifname: inv.ifname.clone(),
            namespace: inv.pod_namespace.clone(),
            name: inv.pod_name.clone(),
            ip: ip.to_string(),
            mac: pod_mac(ip),
            host_ifname: lxc.clone(),
            host_mac: host_mac(ip),
            netns: netns.display().to_string(),
        };
        match register::add(socket, &ep) {
            Ok(register::Outcome::Done) => {}
            Ok(register::Outcome::NoCollector) => {
                eprintln!("sightline-cni: no collector at {}; the endpoint stays in the store for it", socket.display());
            }
            Err(e) => {
                undo(&store);
                return Err(e);
            }
        }
    }
    let result = CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface { name: lxc, mac: host_mac(ip), mtu: Some(conf.mtu()), sandbox: String::new() },
            Interface { name: inv.ifname.clone(), mac: pod_mac(ip), mtu: Some(conf.mtu()), sandbox: netns.display().to_string() },
        ],
        ips: vec![IpConfig { address: format!("{ip}/32"), gateway: Some(conf.gateway.to_string()), interface: Some(1) }],
        routes: vec![Route { dst: "0.0.0.0/0".into(), gw: Some(conf.gateway.to_string()) }],
        dns: Some(conf.dns.clone().unwrap_or_else(|| serde_json::json!({}))),
    };
    Ok(serde_json::to_string(&result).expect("a result always encodes"))
}

fn del(get: &dyn Fn(&str) -> Option<String>, conf: &NetConf) -> Result<(), CniError> {
    let inv = invocation(get, false)?;
    if let Some(socket) = &conf.control_socket {
        register::del(socket, &inv.container_id, &inv.ifname)?;
    }
    let store = Store::lock(&conf.ipam.data_dir, &conf.name)?;
    let recorded = store.find(&inv.container_id, &inv.ifname)?;
    let lxc = host_ifname(&inv.container_id, &inv.ifname);
    // The runtime's netns, else the one ADD recorded.
    let netns = inv.netns.clone().or_else(|| recorded.as_ref().map(|(_, a)| a.netns.clone().into()).filter(|p: &std::path::PathBuf| !p.as_os_str().is_empty()));
    plumbing::remove(netns.as_deref(), &inv.ifname, &lxc)?;
    store.release(&inv.container_id, &inv.ifname)?;
    Ok(())
}

fn check(get: &dyn Fn(&str) -> Option<String>, conf: &NetConf) -> Result<(), CniError> {
    let inv = invocation(get, true)?;
    let netns = inv.netns.clone().expect("CHECK requires CNI_NETNS");
    let prev = conf.prev_result.as_ref().ok_or_else(|| CniError::InvalidConfig { field: "prevResult".into(), reason: "CHECK needs the previous result".into() })?;
    let sandbox = netns.display().to_string();
    let index = prev
        .interfaces
        .iter()
        .position(|i| i.name == inv.ifname && i.sandbox == sandbox)
        .ok_or_else(|| CniError::CheckFailed(format!("prevResult has no interface {} in {sandbox}", inv.ifname)))?;
    let address = prev
        .ips
        .iter()
        .find(|c| c.interface == Some(index))
        .ok_or_else(|| CniError::CheckFailed(format!("prevResult has no address on {}", inv.ifname)))?;
    let ip: Ipv4Addr = address.address.split_once('/').map_or(address.address.as_str(), |(a, _)| a).parse().map_err(|_| CniError::InvalidConfig {
        field: "prevResult.ips".into(),
        reason: format!("{:?} is not an IPv4 address", address.address),
    })?;
    let store = Store::lock(&conf.ipam.data_dir, &conf.name)?;
    match store.find(&inv.container_id, &inv.ifname)? {
        Some((held, _)) if held == ip => {}
        Some((held, _)) => return Err(CniError::CheckFailed(format!("the store gives {held} to this container, not {ip}"))),
        None => return Err(CniError::CheckFailed(format!("no allocation recorded for container {} ({})", inv.container_id, inv.ifname))),
    }
    let lxc = host_ifname(&inv.container_id, &inv.ifname);
    let plug = Plug { netns, ifname: inv.ifname.clone(), host_ifname: lxc, ip, gateway: conf.gateway, mtu: conf.mtu() };
    plumbing::check(&plug).map_err(|e| match e {
        CniError::UnknownContainer { reason, .. } => CniError::UnknownContainer { container_id: inv.container_id.clone(), reason },
        e => e,
    })
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let store = Store::lock(&conf.ipam.data_dir, &conf.name).map_err(|e| CniError::NotAvailable(e.to_string()))?;
    let free = conf.ipam.ranges.iter().flat_map(|r| u32::from(r.network())..=u32::from(r.broadcast())).map(Ipv4Addr::from).find(|ip| conf.assignable(*ip).is_ok() && !store.all().map(|a| a.contains_key(ip)).unwrap_or(true));
    if free.is_none() {
        return Err(CniError::NotAvailable("no free address left in the node's ranges".into()));
    }
    Ok(())
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid: Vec<(String, String)> = conf
        .valid_attachments
        .iter()
        .chain(conf.attachments.iter())
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let store = Store::lock(&conf.ipam.data_dir, &conf.name)?;
    for (ip, a) in store.all()? {
        if valid.contains(&(a.container_id.clone(), a.ifname.clone())) {
            continue;
        }
        if let Some(socket) = &conf.control_socket {
            register::del(socket, &a.container_id, &a.ifname)?;
        }
        let netns = Some(std::path::PathBuf::from(&a.netns)).filter(|p| !p.as_os_str().is_empty());
        plumbing::remove(netns.as_deref(), &a.ifname, &host_ifname(&a.container_id, &a.ifname))?;
        store.remove(ip)?;
    }
    Ok(())
}
