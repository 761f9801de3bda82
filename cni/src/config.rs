//! The network configuration a runtime writes on stdin, and the invocation's
//! environment (`CNI_*`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::error::CniError;
use crate::result::CniResult;

/// The CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
/// The `type` of this plugin (the binary's name).
pub const PLUGIN_TYPE: &str = "sightline-cni";
/// The default MTU of both ends of the veth.
pub const DEFAULT_MTU: u32 = 1500;
/// The longest interface name Linux accepts.
pub const MAX_IFNAME: usize = 15;

/// The plugin's network configuration: the spec's keys, the plugin's own
/// (`gateway`, `mtu`, `controlSocket`) and its IPAM (`ipam`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetConf {
    /// The CNI version of this configuration.
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// Must be `sightline-cni`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The pods' gateway: the node's address, routed to on-link from the pod.
    pub gateway: Ipv4Addr,
    /// The MTU of both ends of the veth (default 1500).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The node's collector control socket; endpoints are registered there
    /// when it is set.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// The built-in address management.
    pub ipam: IpamConf,
    /// DNS settings, returned in results as they are.
    #[serde(default)]
    pub dns: Option<serde_json::Value>,
    /// Capabilities this plugin was configured with (accepted, unused but for `ips`).
    #[serde(default)]
    pub capabilities: Option<BTreeMap<String, bool>>,
    /// Runtime-provided values (`ips`).
    #[serde(default)]
    pub runtime_config: Option<RuntimeConfig>,
    /// The result of the previous ADD (CHECK, DEL).
    #[serde(default)]
    pub prev_result: Option<CniResult>,
    /// Conventional `args` (accepted, unused).
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    /// GC: the attachments that are still valid.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// GC (1.1): the attachments that are still valid (alternative key).
    #[serde(default, rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
}

/// One attachment a runtime still uses (GC).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// `runtimeConfig`: what the runtime passes for capabilities.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Requested addresses (`ips` capability), `A.B.C.D` or `A.B.C.D/N`.
    #[serde(default)]
    pub ips: Vec<String>,
}

/// `ipam`: the node's pod ranges, the addresses to leave out and where
/// allocations are kept.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpamConf {
    /// `sightline-cni` (built in) when given.
    #[serde(default, rename = "type")]
    pub ipam_type: Option<String>,
    /// The node's pod ranges, in order of allocation.
    pub ranges: Vec<Ipv4Net>,
    /// Addresses (`A.B.C.D`) or blocks (`A.B.C.D/N`) never handed out; the
    /// gateway is always left out.
    #[serde(default)]
    pub exclude: Vec<Ipv4Net>,
    /// Where allocations are kept (one folder per network name inside).
    pub data_dir: PathBuf,
}

impl NetConf {
    /// Parses and checks a configuration.
    ///
    /// # Errors
    ///
    /// [`CniError::Decode`] for bytes that are not this configuration's JSON,
    /// [`CniError::IncompatibleVersion`] for a version not supported,
    /// [`CniError::InvalidConfig`] for wrong values.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        // The version first, so an old configuration is refused for its
        // version rather than for a field.
        let version: serde_json::Value = serde_json::from_slice(bytes).map_err(CniError::Decode)?;
        match version.get("cniVersion") {
            Some(serde_json::Value::String(v)) => check_version(v)?,
            Some(_) => return Err(invalid("cniVersion", "must be a string")),
            None => return Err(invalid("cniVersion", "missing")),
        }
        let conf: NetConf = serde_json::from_value(version).map_err(|e| {
            let text = e.to_string();
            if text.starts_with("unknown field") {
                CniError::UnsupportedField { field: text.clone(), reason: "not a key of this plugin's configuration".into() }
            } else {
                CniError::InvalidConfig { field: "configuration".into(), reason: text }
            }
        })?;
        conf.validate()?;
        Ok(conf)
    }

    fn validate(&self) -> Result<(), CniError> {
        if self.plugin_type != PLUGIN_TYPE {
            return Err(invalid("type", &format!("{:?} is not {PLUGIN_TYPE:?}", self.plugin_type)));
        }
        if self.name.is_empty() || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) || self.name.starts_with('.') {
            return Err(invalid("name", &format!("{:?} must be letters, digits, '-', '_' or '.', not starting with '.'", self.name)));
        }
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu) {
                return Err(invalid("mtu", &format!("{mtu} is outside 68..65535")));
            }
        if let Some(t) = &self.ipam.ipam_type
            && t != PLUGIN_TYPE {
                return Err(invalid("ipam.type", &format!("{t:?}: only the built-in {PLUGIN_TYPE:?} is supported")));
            }
        if self.ipam.ranges.is_empty() {
            return Err(invalid("ipam.ranges", "at least one range is needed"));
        }
        for (i, r) in self.ipam.ranges.iter().enumerate() {
            if r.addr() != r.network() {
                return Err(invalid(&format!("ipam.ranges[{i}]"), &format!("{r} has host bits set (did you mean {}?)", r.trunc())));
            }
            for (j, other) in self.ipam.ranges.iter().enumerate().skip(i + 1) {
                if r.contains(other) || other.contains(r) {
                    return Err(invalid(&format!("ipam.ranges[{j}]"), &format!("{other} overlaps ipam.ranges[{i}] {r}")));
                }
            }
        }
        if !self.ipam.data_dir.is_absolute() {
            return Err(invalid("ipam.dataDir", &format!("{} is not an absolute path", self.ipam.data_dir.display())));
        }
        if let Some(s) = &self.control_socket
            && !s.is_absolute() {
                return Err(invalid("controlSocket", &format!("{} is not an absolute path", s.display())));
            }
        Ok(())
    }

    /// The MTU of the veth.
    #[must_use]
    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(DEFAULT_MTU)
    }

    /// Whether `ip` may be handed out: in a range, not excluded, not the
    /// gateway.
    ///
    /// # Errors
    ///
    /// Why it may not.
    pub fn assignable(&self, ip: Ipv4Addr) -> Result<(), String> {
        if !self.ipam.ranges.iter().any(|r| r.contains(&ip)) {
            let ranges: Vec<String> = self.ipam.ranges.iter().map(ToString::to_string).collect();
            return Err(format!("not in the node's ranges ({})", ranges.join(", ")));
        }
        if ip == self.gateway {
            return Err("it is the gateway".into());
        }
        if let Some(e) = self.ipam.exclude.iter().find(|e| e.contains(&ip)) {
            return Err(format!("excluded by ipam.exclude {e}"));
        }
        Ok(())
    }
}

/// Refuses versions this plugin does not speak.
///
/// # Errors
///
/// [`CniError::IncompatibleVersion`].
pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::IncompatibleVersion { version: v.to_owned(), supported: SUPPORTED_VERSIONS.join(", ") })
    }
}

fn invalid(field: &str, reason: &str) -> CniError {
    CniError::InvalidConfig { field: field.to_owned(), reason: reason.to_owned() }
}

/// The command a runtime asks for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Version,
    Gc,
}

/// The invocation's environment.
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: String,
    /// `K8S_POD_NAME`.
    pub pod_name: String,
    /// `IP=` in `CNI_ARGS`.
    pub requested_ip: Option<Ipv4Addr>,
}

/// Reads `CNI_COMMAND`.
///
/// # Errors
///
/// [`CniError::InvalidEnvironment`] when missing or unknown.
pub fn command(get: &dyn Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    let c = get("CNI_COMMAND").ok_or(CniError::InvalidEnvironment { var: "CNI_COMMAND", reason: "missing".into() })?;
    Ok(match c.as_str() {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "STATUS" => Command::Status,
        "VERSION" => Command::Version,
        "GC" => Command::Gc,
        other => {
            return Err(CniError::InvalidEnvironment {
                var: "CNI_COMMAND",
                reason: format!("{other:?} is not ADD, DEL, CHECK, STATUS, VERSION or GC"),
            });
        }
    })
}

/// Reads the environment of ADD, DEL and CHECK. `CNI_NETNS` may be absent
/// for DEL only (`netns_required` false).
///
/// # Errors
///
/// [`CniError::InvalidEnvironment`] naming the variable.
pub fn invocation(get: &dyn Fn(&str) -> Option<String>, netns_required: bool) -> Result<Invocation, CniError> {
    let bad = |var: &'static str, reason: String| CniError::InvalidEnvironment { var, reason };
    let container_id = get("CNI_CONTAINERID").filter(|s| !s.is_empty()).ok_or_else(|| bad("CNI_CONTAINERID", "missing".into()))?;
    if !container_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) || container_id.starts_with(['-', '.']) {
        return Err(bad("CNI_CONTAINERID", format!("{container_id:?} must be letters, digits, '-', '_' or '.'")));
    }
    let ifname = get("CNI_IFNAME").filter(|s| !s.is_empty()).ok_or_else(|| bad("CNI_IFNAME", "missing".into()))?;
    if ifname.len() > MAX_IFNAME || ifname == "." || ifname == ".." || ifname.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(bad("CNI_IFNAME", format!("{ifname:?} is not a valid interface name")));
    }
    let netns = match get("CNI_NETNS").filter(|s| !s.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.is_absolute() {
                return Err(bad("CNI_NETNS", format!("{} is not an absolute path", p.display())));
            }
            Some(p)
        }
        None if netns_required => return Err(bad("CNI_NETNS", "missing".into())),
        None => None,
    };
    let mut inv = Invocation { container_id, netns, ifname, ..Invocation::default() };
    if let Some(args) = get("CNI_ARGS").filter(|s| !s.is_empty()) {
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| bad("CNI_ARGS", format!("{pair:?} is not KEY=VALUE")))?;
            match k {
                "K8S_POD_NAMESPACE" => inv.pod_namespace = v.to_owned(),
                "K8S_POD_NAME" => inv.pod_name = v.to_owned(),
                "IP" => {
                    let ip = v.split_once('/').map_or(v, |(a, _)| a);
                    inv.requested_ip = Some(ip.parse().map_err(|_| bad("CNI_ARGS", format!("IP={v:?} is not an IPv4 address")))?);
                }
                // Runtimes pass more (K8S_POD_UID, IgnoreUnknown, …).
                _ => {}
            }
        }
    }
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"lab","type":"sightline-cni","gateway":"10.244.1.1",
               "ipam":{{"ranges":["10.244.1.0/24"],"exclude":["10.244.1.0/32"],"dataDir":"/run/x"}}{extra}}}"#
        )
    }

    #[test]
    fn a_configuration_parses_and_says_what_is_assignable() {
        let c = NetConf::parse(conf(r#","mtu":1450,"runtimeConfig":{"ips":["10.244.1.9/32"]}"#).as_bytes()).unwrap();
        assert_eq!(c.mtu(), 1450);
        assert!(c.assignable("10.244.1.2".parse().unwrap()).is_ok());
        assert!(c.assignable("10.244.1.1".parse().unwrap()).unwrap_err().contains("gateway"));
        assert!(c.assignable("10.244.1.0".parse().unwrap()).unwrap_err().contains("excluded"));
        assert!(c.assignable("10.244.2.5".parse().unwrap()).unwrap_err().contains("not in the node's ranges"));
        assert_eq!(c.runtime_config.unwrap().ips, ["10.244.1.9/32"]);
    }

    #[test]
    fn bad_configurations_are_refused_with_their_code_and_field() {
        let cases = [
            ("{", 6, "decoding"),
            (r#"{"cniVersion":"0.3.1","name":"x","type":"sightline-cni"}"#, 1, "0.3.1"),
            (r#"{"name":"x"}"#, 7, "cniVersion"),
            (&conf(r#","mtu":20"#), 7, "mtu"),
            (&conf(r#","bogus":1"#), 2, "bogus"),
            (&conf("").replace("sightline-cni", "bridge"), 7, "type"),
            (&conf("").replace("10.244.1.0/24", "10.244.1.7/24"), 7, "host bits"),
            (&conf("").replace("/run/x", "run/x"), 7, "dataDir"),
            (&conf("").replace(r#""10.244.1.0/24""#, ""), 7, "ipam.ranges"),
        ];
        for (text, code, needle) in cases {
            let e = NetConf::parse(text.as_bytes()).expect_err(text);
            assert_eq!(e.code(), code, "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn the_environment_is_read_and_checked() {
        let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned());
        let ok = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;IP=10.244.1.5"),
        ]);
        assert_eq!(command(&ok).unwrap(), Command::Add);
        let inv = invocation(&ok, true).unwrap();
        assert_eq!((inv.pod_namespace.as_str(), inv.pod_name.as_str()), ("x", "a"));
        assert_eq!(inv.requested_ip, Some(Ipv4Addr::new(10, 244, 1, 5)));

        let no_netns = env(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]);
        assert!(invocation(&no_netns, false).is_ok());
        let e = invocation(&no_netns, true).unwrap_err();
        assert_eq!((e.code(), e.to_string().contains("CNI_NETNS")), (4, true));
        for (pairs, var) in [
            (&[("CNI_IFNAME", "eth0")][..], "CNI_CONTAINERID"),
            (&[("CNI_CONTAINERID", "a/b"), ("CNI_IFNAME", "eth0")][..], "CNI_CONTAINERID"),
            (&[("CNI_CONTAINERID", "a")][..], "CNI_IFNAME"),
            (&[("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "averyveryverylongname")][..], "CNI_IFNAME"),
            (&[("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", "IP=banana")][..], "CNI_ARGS"),
            (&[("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", "junk")][..], "CNI_ARGS"),
        ] {
            let get = move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned());
            let e = invocation(&get, false).unwrap_err();
            assert_eq!(e.code(), 4, "{e}");
            assert!(e.to_string().contains(var), "{e}");
        }
        assert_eq!(command(&|_: &str| Some("FROB".to_owned())).unwrap_err().code(), 4);
        assert_eq!(command(&|_: &str| None).unwrap_err().code(), 4);
    }
}
