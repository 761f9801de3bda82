//! The veth between the node (the namespace the plugin runs in) and the
//! pod: made by ADD, checked by CHECK, removed by DEL.
//!
//! What a plugged pod looks like: `IFNAME` in the pod with the pod's `/32`,
//! MAC `02:00:` + the address's octets, a link-scope route to the gateway and
//! a default route through it; the host side `lxc…` (named after the
//! container id) with MAC `06:00:` + the address's octets, up, with a `/32`
//! route to the pod; IPv6 disabled on both ends; the configured MTU on both.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::error::CniError;
use crate::netns::{in_netns, ip, link_exists, write_sysctls};

/// The host side's name: `lxc` and 12 hex digits of a 64-bit FNV-1a hash of
/// `container_id/ifname` (15 characters, the most Linux allows): stable and
/// the same for every invocation about one attachment.
#[must_use]
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain(std::iter::once(b'/')).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("lxc{:012x}", h >> 16)
}

/// The MAC of the pod's interface: `02:00:` and the address's octets.
#[must_use]
pub fn pod_mac(ip: Ipv4Addr) -> String {
    mac(0x02, ip)
}

/// The MAC of the host side: `06:00:` and the address's octets.
#[must_use]
pub fn host_mac(ip: Ipv4Addr) -> String {
    mac(0x06, ip)
}

fn mac(first: u8, ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{first:02x}:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// One attachment.
#[derive(Clone, Debug)]
pub struct Plug {
    pub netns: PathBuf,
    pub ifname: String,
    pub host_ifname: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

impl Plug {
    /// Makes the veth and configures both ends. On failure, removes the
    /// veth it made.
    ///
    /// # Errors
    ///
    /// [`CniError::Netlink`], [`CniError::Io`], [`CniError::UnknownContainer`].
    pub fn apply(&self) -> Result<(), CniError> {
        let result = self.try_apply();
        if result.is_err() {
            let _ = self.remove();
        }
        result
    }

    fn try_apply(&self) -> Result<(), CniError> {
        let Plug { netns, ifname, host_ifname: lxc, ip: pod_ip, gateway, mtu } = self.clone();
        let netns_s = netns.display().to_string();
        let mtu = mtu.to_string();
        // Before the interface exists, so that it never gets an IPv6 address.
        in_netns(&netns, || write_sysctls(&[("net.ipv6.conf.default.disable_ipv6", "1")]))?;
        ip(
            &format!("creating veth {lxc} with peer {ifname} in {netns_s}"),
            &[
                "link", "add", &lxc, "mtu", &mtu, "address", &host_mac(pod_ip), "type", "veth", "peer", "name", &ifname, "netns", &netns_s,
                "address", &pod_mac(pod_ip), "mtu", &mtu,
            ],
        )?;
        write_sysctls(&[(&format!("net.ipv6.conf.{lxc}.disable_ipv6"), "1")])?;
        ip(&format!("bringing up {lxc}"), &["link", "set", &lxc, "up"])?;
        ip(&format!("routing {pod_ip} to {lxc}"), &["route", "replace", &format!("{pod_ip}/32"), "dev", &lxc])?;
        let ifname2 = ifname.clone();
        in_netns(&netns, move || {
            let ifname = ifname2;
            write_sysctls(&[(&format!("net.ipv6.conf.{ifname}.disable_ipv6"), "1")])?;
            ip("bringing up lo in the pod", &["link", "set", "lo", "up"])?;
            ip(&format!("adding {pod_ip}/32 to {ifname}"), &["addr", "add", &format!("{pod_ip}/32"), "dev", &ifname])?;
            ip(&format!("bringing up {ifname}"), &["link", "set", &ifname, "up"])?;
            ip(
                &format!("routing the gateway {gateway} to {ifname}"),
                &["route", "add", &format!("{gateway}/32"), "dev", &ifname, "scope", "link"],
            )?;
            ip(&format!("adding the default route via {gateway}"), &["route", "add", "default", "via", &gateway.to_string(), "dev", &ifname])?;
            Ok(())
        })
    }

    /// Removes whatever exists of the attachment: the pod's interface (if
    /// its namespace is still there) and the host side. Nothing there is
    /// not an error.
    ///
    /// # Errors
    ///
    /// [`CniError::Netlink`] when something that exists cannot be removed.
    pub fn remove(&self) -> Result<(), CniError> {
        remove(Some(&self.netns), &self.ifname, &self.host_ifname)
    }
}

/// Removes the pod side `ifname` in `netns` (when the namespace exists) and
/// the host side `host_ifname` (when it exists).
///
/// # Errors
///
/// [`CniError::Netlink`] when something that exists cannot be removed.
pub fn remove(netns: Option<&Path>, ifname: &str, host_ifname: &str) -> Result<(), CniError> {
    if let Some(netns) = netns.filter(|n| crate::netns::exists(n)) {
        let ifname = ifname.to_owned();
        // A namespace that vanished meanwhile is as good as removed.
        let _ = in_netns(netns, move || {
            if link_exists(&ifname) {
                ip(&format!("deleting {ifname}"), &["link", "del", &ifname])?;
            }
            Ok(())
        });
    }
    if link_exists(host_ifname) {
        match ip(&format!("deleting {host_ifname}"), &["link", "del", host_ifname]) {
            Ok(_) => {}
            // Deleting the pod side took it away meanwhile.
            Err(_) if !link_exists(host_ifname) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Checks that the attachment is as ADD made it.
///
/// # Errors
///
/// [`CniError::UnknownContainer`] when the namespace is gone,
/// [`CniError::CheckFailed`] naming the difference.
pub fn check(p: &Plug) -> Result<(), CniError> {
    if !crate::netns::exists(&p.netns) {
        return Err(CniError::UnknownContainer { container_id: String::new(), reason: format!("network namespace {} does not exist", p.netns.display()) });
    }
    let show = ip("", &["-o", "link", "show", "dev", &p.host_ifname])
        .map_err(|_| CniError::CheckFailed(format!("the host side {} does not exist", p.host_ifname)))?;
    if !show.contains("UP") {
        return Err(CniError::CheckFailed(format!("the host side {} is not up", p.host_ifname)));
    }
    let routes = ip("", &["-o", "route", "show", &format!("{}/32", p.ip)]).unwrap_or_default();
    if !routes.contains(&format!("dev {}", p.host_ifname)) {
        return Err(CniError::CheckFailed(format!("no route to {} through {} on the host", p.ip, p.host_ifname)));
    }
    let (ifname, ip_addr, gateway) = (p.ifname.clone(), p.ip, p.gateway);
    in_netns(&p.netns, move || {
        let addrs = ip("", &["-o", "-4", "addr", "show", "dev", &ifname])
            .map_err(|_| CniError::CheckFailed(format!("interface {ifname} does not exist in the container")))?;
        if !addrs.contains(&format!("inet {ip_addr}/32")) {
            return Err(CniError::CheckFailed(format!("{ifname} does not have {ip_addr}/32")));
        }
        let default = ip("", &["-o", "route", "show", "default"]).unwrap_or_default();
        if !default.contains(&format!("via {gateway} dev {ifname}")) {
            return Err(CniError::CheckFailed(format!("no default route via {gateway} on {ifname}")));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_ifname("0123456789abcdef", "eth0");
        assert_eq!(a, host_ifname("0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("lxc") && a[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, host_ifname("0123456789abcdef", "net1"));
        assert_ne!(a, host_ifname("0123456789abcdee", "eth0"));
        assert_eq!(pod_mac(Ipv4Addr::new(10, 244, 1, 12)), "02:00:0a:f4:01:0c");
        assert_eq!(host_mac(Ipv4Addr::new(10, 244, 1, 12)), "06:00:0a:f4:01:0c");
    }
}
