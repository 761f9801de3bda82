//! The network configuration list (`.conflist`) that makes a runtime call
//! this plugin for a node: rendered from the node's pod ranges by whoever
//! knows them (the lab for its nodes, the agent from its Node object) and
//! written atomically, so a runtime never reads half of one.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::config::PLUGIN_TYPE;

/// The network's name in every conflist Sightline writes.
pub const NETWORK_NAME: &str = "sightline";
/// The CNI version of those conflists.
pub const CONFLIST_VERSION: &str = "1.1.0";

/// What a node's conflist says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConf {
    /// The pods' gateway: the node's address.
    pub gateway: Ipv4Addr,
    /// The MTU of the pods' veths.
    pub mtu: u32,
    /// The node's collector control socket (endpoints are registered there).
    pub control_socket: Option<PathBuf>,
    /// The node's pod ranges, in order of allocation (at least one).
    pub ranges: Vec<Ipv4Net>,
    /// Addresses of those ranges no pod may get.
    pub exclude: Vec<Ipv4Net>,
    /// The address store's folder.
    pub data_dir: PathBuf,
}

/// The conflist of `conf`; `None` when it has no range (a node without a
/// pod range cannot host pods yet).
#[must_use]
pub fn render(conf: &NodeConf) -> Option<Value> {
    if conf.ranges.is_empty() {
        return None;
    }
    let mut plugin = json!({
        "type": PLUGIN_TYPE,
        "gateway": conf.gateway.to_string(),
        "mtu": conf.mtu,
        "ipam": {
            "type": PLUGIN_TYPE,
            "ranges": conf.ranges.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "exclude": conf.exclude.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "dataDir": conf.data_dir,
        },
    });
    if let Some(socket) = &conf.control_socket {
        plugin["controlSocket"] = json!(socket);
    }
    Some(json!({"cniVersion": CONFLIST_VERSION, "name": NETWORK_NAME, "plugins": [plugin]}))
}

/// The configuration a runtime gives a list's first plugin: its entry with
/// the list's `cniVersion` and `name`.
#[must_use]
pub fn first_plugin(list: &Value) -> Option<Value> {
    let mut conf = list.get("plugins")?.get(0).cloned()?;
    conf["cniVersion"] = list.get("cniVersion")?.clone();
    conf["name"] = list.get("name")?.clone();
    Some(conf)
}

/// Writes `list` to `path` through a temporary file and a rename; whether
/// the file changed (an unchanged one is not rewritten).
///
/// # Errors
///
/// The I/O error, with nothing half-written at `path`.
pub fn write(path: &Path, list: &Value) -> io::Result<bool> {
    let text = serde_json::to_string_pretty(list).expect("a conflist serialises") + "\n";
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetConf;

    fn conf() -> NodeConf {
        NodeConf {
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            mtu: 1450,
            control_socket: Some(PathBuf::from("/run/x/collector-node-1.sock")),
            ranges: vec!["10.244.1.0/24".parse().unwrap()],
            exclude: vec!["10.244.1.0/32".parse().unwrap(), "10.244.1.255/32".parse().unwrap()],
            data_dir: PathBuf::from("/var/lib/sightline/cni"),
        }
    }

    #[test]
    fn rendered_lists_are_what_the_plugin_accepts() {
        let c = conf();
        let plugin = first_plugin(&render(&c).unwrap()).unwrap();
        let parsed = NetConf::parse(&serde_json::to_vec(&plugin).unwrap()).unwrap();
        assert_eq!((parsed.cni_version.as_str(), parsed.name.as_str()), (CONFLIST_VERSION, NETWORK_NAME));
        assert_eq!(parsed.mtu(), 1450);
        assert_eq!(parsed.gateway, c.gateway);
        assert_eq!(parsed.control_socket, c.control_socket);
        assert_eq!(parsed.ipam.data_dir, c.data_dir);
        assert!(parsed.assignable(Ipv4Addr::new(10, 244, 1, 7)).is_ok());
        assert!(parsed.assignable(Ipv4Addr::new(10, 244, 1, 255)).is_err());
        assert!(parsed.assignable(Ipv4Addr::new(10, 244, 1, 1)).is_err(), "the gateway");
        assert!(parsed.assignable(Ipv4Addr::new(10, 244, 2, 7)).is_err(), "another node's range");
        // Without a collector: no control socket.
        let bare = render(&NodeConf { control_socket: None, ..c.clone() }).unwrap();
        assert!(first_plugin(&bare).unwrap().get("controlSocket").is_none());
        // No range: nothing to write.
        assert!(render(&NodeConf { ranges: vec![], ..c }).is_none());
        assert!(first_plugin(&json!({"plugins": []})).is_none());
    }

    #[test]
    fn writes_are_whole_and_skip_what_did_not_change() {
        let dir = std::env::temp_dir().join(format!("sightline-conflist-{}", std::process::id()));
        let path = dir.join("net.d").join("05-sightline.conflist");
        let list = render(&conf()).unwrap();
        assert!(write(&path, &list).unwrap(), "first write");
        assert!(!write(&path, &list).unwrap(), "unchanged");
        let other = render(&NodeConf { mtu: 1500, ..conf() }).unwrap();
        assert!(write(&path, &other).unwrap(), "changed");
        let back: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, other);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
        fs::remove_dir_all(dir).unwrap();
    }
}
