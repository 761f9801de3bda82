//! The pods' gateway address given to a node's loopback device over
//! rtnetlink, in a network namespace made for the test (root).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use sightline_collector::gateway;

/// A network namespace that is deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let ok = Command::new("ip").args(["netns", "add", name]).status().expect("running ip").success();
        assert!(ok, "ip netns add {name}");
        Self(name.to_owned())
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }

    fn lo_addresses(&self) -> String {
        let out = Command::new("ip").args(["-n", &self.0, "-4", "-o", "addr", "show", "dev", "lo"]).output().expect("ip addr");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: makes a network namespace")]
fn the_gateway_is_given_once_moved_and_taken_back() {
    let ns = Netns::new("sl-test-gateway");
    let first = Ipv4Addr::new(10, 244, 7, 1);
    assert!(gateway::ensure(&ns.path(), first).expect("adding the gateway"), "it was not there");
    assert!(ns.lo_addresses().contains("10.244.7.1/32"), "{}", ns.lo_addresses());
    // Already there: left as it is, no error.
    assert!(!gateway::ensure(&ns.path(), first).expect("adding it again"));
    assert_eq!(ns.lo_addresses().matches("10.244.7.1/32").count(), 1);

    // The range moved: the new one given, the old one taken off.
    let second = Ipv4Addr::new(10, 244, 8, 1);
    assert!(gateway::ensure(&ns.path(), second).expect("the new gateway"));
    assert!(gateway::remove(&ns.path(), first).expect("taking the old one off"));
    let now = ns.lo_addresses();
    assert!(now.contains("10.244.8.1/32") && !now.contains("10.244.7.1/"), "{now}");
    assert!(!gateway::remove(&ns.path(), first).expect("taking it off again"), "it was still there");

    // A namespace that does not exist is named in the error.
    let err = gateway::ensure(std::path::Path::new("/run/netns/sl-test-no-such"), first).unwrap_err().to_string();
    assert!(err.contains("/run/netns/sl-test-no-such"), "{err}");
}
