//! Built-in address management: the node's ranges from the configuration,
//! allocations in a file store.
//!
//! The store is `<dataDir>/<network name>/`: one file per allocated address,
//! named after it (`10.244.1.7`) and created with `O_EXCL`, holding the
//! owner as JSON (container id, interface, netns, pod); and a `lock` file,
//! held with `flock` for the whole of an invocation's work on the store, so
//! concurrent invocations see each other's allocations.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::NetConf;
use crate::error::CniError;

/// Who holds an address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub container_id: String,
    pub ifname: String,
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub host_ifname: String,
}

/// The store of one network, locked while it exists.
pub struct Store {
    dir: PathBuf,
    // Holds the flock until dropped.
    _lock: File,
}

impl Store {
    /// Opens (creating) the store of network `network` under `data_dir` and
    /// takes its lock, waiting for other invocations to finish.
    ///
    /// # Errors
    ///
    /// [`CniError::Io`] naming the path.
    pub fn lock(data_dir: &Path, network: &str) -> Result<Store, CniError> {
        let dir = data_dir.join(network);
        std::fs::create_dir_all(&dir).map_err(|source| CniError::Io { action: format!("creating the IPAM store {}", dir.display()), source })?;
        let path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| CniError::Io { action: format!("opening {}", path.display()), source })?;
        loop {
            // SAFETY: flock(2) on a descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(CniError::Io { action: format!("locking {}", path.display()), source: e });
            }
        }
        Ok(Store { dir, _lock: lock })
    }

    /// Every allocation, by address.
    ///
    /// # Errors
    ///
    /// [`CniError::Io`] when the folder or a file cannot be read.
    pub fn all(&self) -> Result<BTreeMap<Ipv4Addr, Allocation>, CniError> {
        let mut out = BTreeMap::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|source| CniError::Io { action: format!("reading {}", self.dir.display()), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| CniError::Io { action: format!("reading {}", self.dir.display()), source })?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else { continue };
            let path = entry.path();
            let text = std::fs::read(&path).map_err(|source| CniError::Io { action: format!("reading {}", path.display()), source })?;
            // A file being written by a crashed invocation may be empty; it
            // still holds its address.
            let alloc = serde_json::from_slice(&text).unwrap_or_default();
            out.insert(ip, alloc);
        }
        Ok(out)
    }

    /// The address held by `container_id`/`ifname`, if any.
    ///
    /// # Errors
    ///
    /// As [`Store::all`].
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<(Ipv4Addr, Allocation)>, CniError> {
        Ok(self.all()?.into_iter().find(|(_, a)| a.container_id == container_id && a.ifname == ifname))
    }

    /// Reserves an address for `alloc`: the one held by the same container
    /// and interface (a repeated ADD), else `requested` if it is assignable
    /// and free, else the first free one of the ranges.
    ///
    /// # Errors
    ///
    /// [`CniError::AddressUnavailable`] for a requested address out of range
    /// or taken, [`CniError::RangeExhausted`] when nothing is free,
    /// [`CniError::Io`].
    pub fn allocate(&self, conf: &NetConf, requested: Option<Ipv4Addr>, alloc: &Allocation) -> Result<Ipv4Addr, CniError> {
        let all = self.all()?;
        if let Some((ip, _)) = all.iter().find(|(_, a)| a.container_id == alloc.container_id && a.ifname == alloc.ifname) {
            if requested.is_none_or(|r| r == *ip) {
                self.write(*ip, alloc, false)?;
                return Ok(*ip);
            }
            return Err(CniError::AddressUnavailable {
                address: requested.map(|r| r.to_string()).unwrap_or_default(),
                reason: format!("container {} already holds {ip} on {}", alloc.container_id, alloc.ifname),
            });
        }
        if let Some(ip) = requested {
            conf.assignable(ip).map_err(|reason| CniError::AddressUnavailable { address: ip.to_string(), reason })?;
            if let Some(owner) = all.get(&ip) {
                return Err(CniError::AddressUnavailable {
                    address: ip.to_string(),
                    reason: format!("already allocated to container {} ({})", owner.container_id, owner.ifname),
                });
            }
            self.write(ip, alloc, true)?;
            return Ok(ip);
        }
        for range in &conf.ipam.ranges {
            let first = u32::from(range.network());
            let last = u32::from(range.broadcast());
            for n in first..=last {
                let ip = Ipv4Addr::from(n);
                if all.contains_key(&ip) || conf.assignable(ip).is_err() {
                    continue;
                }
                self.write(ip, alloc, true)?;
                return Ok(ip);
            }
        }
        let ranges: Vec<String> = conf.ipam.ranges.iter().map(ToString::to_string).collect();
        Err(CniError::RangeExhausted { ranges: ranges.join(", ") })
    }

    fn write(&self, ip: Ipv4Addr, alloc: &Allocation, exclusive: bool) -> Result<(), CniError> {
        let path = self.dir.join(ip.to_string());
        let mut options = OpenOptions::new();
        options.write(true).mode(0o600);
        if exclusive {
            options.create_new(true);
        } else {
            options.truncate(true);
        }
        let io = |source| CniError::Io { action: format!("recording the allocation {}", path.display()), source };
        let mut f = options.open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CniError::AddressUnavailable { address: ip.to_string(), reason: "already allocated".into() }
            } else {
                io(e)
            }
        })?;
        let text = serde_json::to_vec(alloc).expect("an allocation always encodes");
        f.write_all(&text).and_then(|()| f.sync_all()).map_err(io)
    }

    /// Releases whatever `container_id`/`ifname` holds; returns the
    /// addresses released (none is not an error).
    ///
    /// # Errors
    ///
    /// [`CniError::Io`].
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, CniError> {
        let mut released = Vec::new();
        for (ip, a) in self.all()? {
            if a.container_id == container_id && a.ifname == ifname {
                self.remove(ip)?;
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// Removes the allocation of `ip`.
    ///
    /// # Errors
    ///
    /// [`CniError::Io`], except for a file already gone.
    pub fn remove(&self, ip: Ipv4Addr) -> Result<(), CniError> {
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Io { action: format!("releasing {}", path.display()), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(dir: &Path, ranges: &str, exclude: &str) -> NetConf {
        NetConf::parse(
            format!(
                r#"{{"cniVersion":"1.1.0","name":"t","type":"sightline-cni","gateway":"10.241.0.1",
                   "ipam":{{"ranges":{ranges},"exclude":{exclude},"dataDir":"{}"}}}}"#,
                dir.display()
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sightline-cni-ipam-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn owner(c: &str) -> Allocation {
        Allocation { container_id: c.into(), ifname: "eth0".into(), ..Allocation::default() }
    }

    #[test]
    fn addresses_come_from_the_ranges_in_order_skipping_exclusions_and_the_gateway() {
        let dir = temp("order");
        // Two blocks of 16 (pod-subnet), the first one's network address and
        // the gateway excluded.
        let c = conf(&dir, r#"["10.241.0.0/28","10.241.0.32/28"]"#, r#"["10.241.0.0/32","10.241.0.14/31"]"#);
        let store = Store::lock(&c.ipam.data_dir, &c.name).unwrap();
        let mut got = Vec::new();
        for i in 0..14 {
            got.push(store.allocate(&c, None, &owner(&format!("c{i}"))).unwrap().to_string());
        }
        assert_eq!(got[..3], ["10.241.0.2", "10.241.0.3", "10.241.0.4"]);
        assert_eq!(got[11..], ["10.241.0.13", "10.241.0.32", "10.241.0.33"]);
        // Repeated ADD: the same address.
        assert_eq!(store.allocate(&c, None, &owner("c0")).unwrap().to_string(), "10.241.0.2");
        // Requested: honoured when free, refused when taken or out of range.
        assert_eq!(store.allocate(&c, Some("10.241.0.40".parse().unwrap()), &owner("r")).unwrap().to_string(), "10.241.0.40");
        let taken = store.allocate(&c, Some("10.241.0.40".parse().unwrap()), &owner("s")).unwrap_err();
        assert!(taken.to_string().contains("already allocated to container r"), "{taken}");
        let out = store.allocate(&c, Some("10.241.0.20".parse().unwrap()), &owner("s")).unwrap_err();
        assert!(out.to_string().contains("not in the node's ranges"), "{out}");
        assert_eq!(out.code(), 100);
        // Release and reuse.
        assert_eq!(store.release("c1", "eth0").unwrap(), ["10.241.0.3".parse::<Ipv4Addr>().unwrap()]);
        assert!(store.release("c1", "eth0").unwrap().is_empty());
        assert_eq!(store.allocate(&c, None, &owner("n")).unwrap().to_string(), "10.241.0.3");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_exhausted_range_says_so() {
        let dir = temp("full");
        let c = conf(&dir, r#"["10.241.0.0/30"]"#, "[]");
        let store = Store::lock(&c.ipam.data_dir, &c.name).unwrap();
        for i in 0..3 {
            store.allocate(&c, None, &owner(&format!("c{i}"))).unwrap();
        }
        let e = store.allocate(&c, None, &owner("x")).unwrap_err();
        assert_eq!(e.code(), 101, "{e}");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let dir = temp("race");
        let c = conf(&dir, r#"["10.241.0.0/24"]"#, "[]");
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let store = Store::lock(&c.ipam.data_dir, &c.name).unwrap();
                    store.allocate(&c, None, &owner(&format!("c{i}"))).unwrap()
                })
            })
            .collect();
        let mut ips: Vec<Ipv4Addr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 16);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
