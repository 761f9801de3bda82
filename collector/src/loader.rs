//! Loads the embedded probes with aya, pins their maps, and attaches the
//! programs: tcx on the host side of pod veths (inside the node's network
//! namespace) and the `skb:kfree_skb` tracepoint.
//!
//! This module knows how to put programs into the kernel; it does not decide
//! what goes into the maps (that is `datapath`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType, TracePoint, tc::SchedClassifierLinkId};
use aya::{Ebpf, EbpfLoader};

use crate::netns::in_netns;
use sightline_abi as abi;
use sightline_abi::{
    Config, CtEntry, CtKey, EndpointInfo, EndpointKey, IpcacheKey, IpcacheValue, KernelOffsets, PolicyCidrKey,
    PolicyCidrValue, PolicyKey, PolicyValue, ServiceKey, ServiceValue, TrafficCount, TrafficKey,
};


/// Entries per batch system call on the conntrack map.
const BATCH_CHUNK: u32 = 4096;

/// The probe object, built by `build.rs`.
static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sightline-probes"));

/// Errors while loading or attaching the probes.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("this binary was built without its eBPF probes (AYA_BUILD_SKIP was set); rebuild it without AYA_BUILD_SKIP")]
    NoProbes,
    #[error("mounting {fs} at {path}: {source}")]
    Mount { fs: &'static str, path: &'static str, #[source] source: std::io::Error },
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("loading program {name}: {source}")]
    LoadProgram { name: &'static str, #[source] source: aya::programs::ProgramError },
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("map {name} has an unexpected type: {source}")]
    MapType { name: &'static str, #[source] source: aya::maps::MapError },
    #[error("pinning map {name} at {path}: {source}")]
    Pin { name: &'static str, path: PathBuf, #[source] source: aya::pin::PinError },
    #[error("creating the pin directory {path}: {source}")]
    PinDir { path: PathBuf, #[source] source: std::io::Error },
    #[error("writing map {name}: {source}")]
    MapWrite { name: &'static str, #[source] source: aya::maps::MapError },
    #[error("attaching {program} to {interface}: {source}")]
    Attach { program: &'static str, interface: String, #[source] source: aya::programs::ProgramError },
    #[error("attaching the skb:kfree_skb tracepoint: {0}")]
    AttachTracepoint(#[source] aya::programs::ProgramError),
    #[error("entering network namespace {path}: {source}")]
    Netns { path: PathBuf, #[source] source: std::io::Error },
}

/// What the collector asks of the probes.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Where to pin the maps (created; replaced if it exists).
    pub pin_dir: PathBuf,
    pub config: Config,
    /// Offsets for the kfree_skb program; `None` leaves it inert.
    pub kernel_offsets: Option<KernelOffsets>,
}

/// Default datapath configuration: no aggregation threshold surprises.
#[must_use]
pub fn default_config(aggregation: u32) -> Config {
    const SEC: u64 = 1_000_000_000;
    Config {
        aggregation,
        wakeup_bytes: 16 * 1024,
        report_interval_ns: 5 * SEC,
        ct_tcp_syn_timeout_ns: 60 * SEC,
        ct_tcp_established_timeout_ns: 6 * 3600 * SEC,
        ct_tcp_closing_timeout_ns: 10 * SEC,
        ct_other_timeout_ns: 60 * SEC,
        policy_revision: 1,
        _pad: 0,
    }
}

/// The loaded probes and typed handles on their maps.
fn sum_per_cpu<K: aya::Pod>(map: &PerCpuHashMap<MapData, K, TrafficCount>) -> Vec<(K, TrafficCount)> {
    map.iter()
        .filter_map(Result::ok)
        .map(|(key, per_cpu)| {
            let sum = per_cpu.iter().fold(TrafficCount::default(), |a, v| TrafficCount {
                packets: a.packets.wrapping_add(v.packets),
                bytes: a.bytes.wrapping_add(v.bytes),
            });
            (key, sum)
        })
        .collect()
}

/// How full one map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u32,
}

pub struct Probes {
    ebpf: Ebpf,
    pub events: Option<RingBuf<MapData>>,
    pub endpoints: HashMap<MapData, EndpointKey, EndpointInfo>,
    pub ipcache: LpmTrie<MapData, IpcacheKey, IpcacheValue>,
    pub ct: HashMap<MapData, CtKey, CtEntry>,
    pub counters: PerCpuArray<MapData, u64>,
    pub lab_netns: HashMap<MapData, u32, u32>,
    pub policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    pub policy_cidr: LpmTrie<MapData, PolicyCidrKey, PolicyCidrValue>,
    traffic: PerCpuHashMap<MapData, TrafficKey, TrafficCount>,
    kernel_drops: PerCpuHashMap<MapData, u32, TrafficCount>,
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    svc_ct: HashMap<MapData, CtKey, ServiceValue>,
    rev_nat: HashMap<MapData, CtKey, ServiceValue>,
    config: Array<MapData, Config>,
    /// What `config` holds.
    current_config: Config,
    /// Attached tc links per interface: (ingress, egress).
    attached: BTreeMap<String, (SchedClassifierLinkId, SchedClassifierLinkId)>,
    pin_dir: PathBuf,
}

fn ensure_mounted(fs: &'static str, path: &'static str, probe: &str) -> Result<(), LoaderError> {
    if Path::new(probe).exists() {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", fs, fs, path])
        .status()
        .map_err(|source| LoaderError::Mount { fs, path, source })?;
    if status.success() {
        Ok(())
    } else {
        Err(LoaderError::Mount { fs, path, source: std::io::Error::other(format!("mount exited with {status}")) })
    }
}

/// Makes sure bpffs and tracefs are mounted where the collector expects them.
pub fn ensure_filesystems() -> Result<(), LoaderError> {
    // bpffs: the root of a mounted bpffs accepts pins; test by a marker dir.
    let mounted = fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf ")))
        .unwrap_or(false);
    if !mounted {
        ensure_mounted("bpf", "/sys/fs/bpf", "/nonexistent-force-mount")?;
    }
    ensure_mounted("tracefs", "/sys/kernel/tracing", "/sys/kernel/tracing/events")
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoaderError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoaderError::MissingMap { name })?;
    T::try_from(map).map_err(|source| LoaderError::MapType { name, source })
}

const ALL_MAPS: [&str; 15] = [
    abi::maps::EVENTS,
    abi::maps::CONFIG,
    abi::maps::COUNTERS,
    abi::maps::ENDPOINTS,
    abi::maps::IPCACHE,
    abi::maps::CT,
    abi::maps::KERNEL_OFFSETS,
    abi::maps::LAB_NETNS,
    abi::maps::POLICY,
    abi::maps::POLICY_CIDR,
    abi::maps::TRAFFIC,
    abi::maps::KERNEL_DROPS,
    abi::maps::SERVICES,
    abi::maps::SVC_CT,
    abi::maps::REV_NAT,
];

impl Probes {
    /// Loads the probes, pins the maps, writes the configuration, and
    /// attaches the kfree_skb tracepoint.
    pub fn load(opts: &ProbeOptions) -> Result<Self, LoaderError> {
        if PROBES.is_empty() {
            return Err(LoaderError::NoProbes);
        }
        ensure_filesystems()?;
        let mut ebpf = EbpfLoader::new().load(PROBES).map_err(LoaderError::Load)?;

        if opts.pin_dir.exists() {
            let _ = fs::remove_dir_all(&opts.pin_dir);
        }
        fs::create_dir_all(&opts.pin_dir)
            .map_err(|source| LoaderError::PinDir { path: opts.pin_dir.clone(), source })?;
        for name in ALL_MAPS {
            let map = ebpf.map(name).ok_or(LoaderError::MissingMap { name })?;
            let path = opts.pin_dir.join(name);
            map.pin(&path).map_err(|source| LoaderError::Pin { name, path, source })?;
        }

        for name in [abi::programs::FROM_CONTAINER, abi::programs::TO_CONTAINER] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(LoaderError::MissingProgram { name })?
                .try_into()
                .map_err(|source| LoaderError::LoadProgram { name, source })?;
            prog.load().map_err(|source| LoaderError::LoadProgram { name, source })?;
        }

        let mut config: Array<MapData, Config> = take(&mut ebpf, abi::maps::CONFIG)?;
        config
            .set(0, opts.config, 0)
            .map_err(|source| LoaderError::MapWrite { name: abi::maps::CONFIG, source })?;
        let mut offsets: Array<MapData, KernelOffsets> = take(&mut ebpf, abi::maps::KERNEL_OFFSETS)?;
        if let Some(o) = opts.kernel_offsets {
            offsets
                .set(0, o, 0)
                .map_err(|source| LoaderError::MapWrite { name: abi::maps::KERNEL_OFFSETS, source })?;
            let name = abi::programs::KFREE_SKB;
            let tp: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or(LoaderError::MissingProgram { name })?
                .try_into()
                .map_err(|source| LoaderError::LoadProgram { name, source })?;
            tp.load().map_err(|source| LoaderError::LoadProgram { name, source })?;
            tp.attach("skb", "kfree_skb").map_err(LoaderError::AttachTracepoint)?;
        }

        Ok(Self {
            events: Some(take(&mut ebpf, abi::maps::EVENTS)?),
            endpoints: take(&mut ebpf, abi::maps::ENDPOINTS)?,
            ipcache: take(&mut ebpf, abi::maps::IPCACHE)?,
            ct: take(&mut ebpf, abi::maps::CT)?,
            counters: take(&mut ebpf, abi::maps::COUNTERS)?,
            lab_netns: take(&mut ebpf, abi::maps::LAB_NETNS)?,
            policy: take(&mut ebpf, abi::maps::POLICY)?,
            policy_cidr: take(&mut ebpf, abi::maps::POLICY_CIDR)?,
            traffic: take(&mut ebpf, abi::maps::TRAFFIC)?,
            kernel_drops: take(&mut ebpf, abi::maps::KERNEL_DROPS)?,
            services: take(&mut ebpf, abi::maps::SERVICES)?,
            svc_ct: take(&mut ebpf, abi::maps::SVC_CT)?,
            rev_nat: take(&mut ebpf, abi::maps::REV_NAT)?,
            config,
            current_config: opts.config,
            ebpf,
            attached: BTreeMap::new(),
            pin_dir: opts.pin_dir.clone(),
        })
    }

    /// Replaces the datapath configuration at run time.
    pub fn set_config(&mut self, config: Config) -> Result<(), LoaderError> {
        self.config
            .set(0, config, 0)
            .map_err(|source| LoaderError::MapWrite { name: abi::maps::CONFIG, source })?;
        self.current_config = config;
        Ok(())
    }

    /// The current policy revision.
    pub fn policy_revision(&self) -> u32 {
        self.current_config.policy_revision
    }

    /// Tells the datapath that policy changed: established connections are
    /// decided again at their next packet.
    pub fn bump_policy_revision(&mut self) -> Result<u32, LoaderError> {
        let mut config = self.current_config;
        config.policy_revision = config.policy_revision.wrapping_add(1);
        self.set_config(config)?;
        Ok(config.policy_revision)
    }

    /// One of the loaded tc programs (for test runs).
    pub fn program_mut(&mut self, name: &str) -> Option<&mut SchedClassifier> {
        self.ebpf.program_mut(name).and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
    }

    /// Interfaces the tc programs are attached to.
    pub fn attached_interfaces(&self) -> impl Iterator<Item = &str> {
        self.attached.keys().map(String::as_str)
    }

    /// Attaches `from_container` (ingress) and `to_container` (egress) to
    /// `ifname` inside the network namespace at `netns`. Idempotent.
    pub fn attach(&mut self, netns: &Path, ifname: &str) -> Result<(), LoaderError> {
        if self.attached.contains_key(ifname) {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(2);
        for (name, kind) in [
            (abi::programs::FROM_CONTAINER, TcAttachType::Ingress),
            (abi::programs::TO_CONTAINER, TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or(LoaderError::MissingProgram { name })?
                .try_into()
                .map_err(|source| LoaderError::LoadProgram { name, source })?;
            // tcx resolves the interface name in the calling thread's
            // namespace: attach from a thread inside the node's namespace.
            let attached = in_netns(netns, || prog.attach(ifname, kind))
                .map_err(|source| LoaderError::Netns { path: netns.to_path_buf(), source })?;
            match attached {
                Ok(id) => ids.push(id),
                Err(source) => {
                    // Undo the half that did attach.
                    if let Some(id) = ids.pop() {
                        self.detach_one(abi::programs::FROM_CONTAINER, id);
                    }
                    return Err(LoaderError::Attach { program: name, interface: ifname.to_owned(), source });
                }
            }
        }
        let egress = ids.pop().expect("two links");
        let ingress = ids.pop().expect("two links");
        self.attached.insert(ifname.to_owned(), (ingress, egress));
        Ok(())
    }

    fn detach_one(&mut self, name: &'static str, id: SchedClassifierLinkId) {
        if let Some(Ok(prog)) = self.ebpf.program_mut(name).map(<&mut SchedClassifier>::try_from) {
            // The interface may be gone already (its namespace deleted),
            // which detaches the link in the kernel; nothing to report.
            let _ = prog.detach(id);
        }
    }

    /// Detaches the programs from `ifname` (no-op if not attached).
    pub fn detach(&mut self, ifname: &str) {
        if let Some((ingress, egress)) = self.attached.remove(ifname) {
            self.detach_one(abi::programs::FROM_CONTAINER, ingress);
            self.detach_one(abi::programs::TO_CONTAINER, egress);
        }
    }

    /// Connections in the conntrack map (expired ones included until the
    /// collector's garbage collection deletes them): read in batches, or
    /// key by key where the kernel has no batch operations.
    pub fn ct_entries(&self) -> u64 {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        match crate::batch::dump(self.ct.map().fd().as_fd(), size_of::<CtKey>(), size_of::<CtEntry>(), BATCH_CHUNK) {
            Ok((keys, _)) => (keys.len() / size_of::<CtKey>()) as u64,
            Err(_) => self.ct.keys().filter(Result::is_ok).count() as u64,
        }
    }

    /// Deletes the conntrack entries that expired before `now_ns`
    /// (monotonic): (entries left, entries deleted). Reads and deletes in
    /// batches of thousands of entries per system call where the kernel
    /// can, key by key otherwise.
    pub fn ct_collect(&mut self, now_ns: u64) -> (u64, usize) {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        const KEY: usize = size_of::<CtKey>();
        const VALUE: usize = size_of::<CtEntry>();
        let fd = self.ct.map().fd().as_fd();
        if let Ok((keys, values)) = crate::batch::dump(fd, KEY, VALUE, BATCH_CHUNK) {
            let total = keys.len() / KEY;
            let mut expired = Vec::new();
            for i in 0..total {
                let raw = &values[i * VALUE..(i + 1) * VALUE];
                // SAFETY: `raw` is exactly one CtEntry as the kernel wrote it;
                // read_unaligned copes with the Vec's alignment.
                let entry: CtEntry = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
                if entry.expires_ns <= now_ns {
                    expired.extend_from_slice(&keys[i * KEY..(i + 1) * KEY]);
                }
            }
            if let Ok(deleted) = crate::batch::delete(fd, &expired, KEY, BATCH_CHUNK) {
                return ((total - deleted) as u64, deleted);
            }
        }
        let expired: Vec<_> =
            self.ct.iter().filter_map(Result::ok).filter(|(_, e)| e.expires_ns <= now_ns).map(|(k, _)| k).collect();
        for k in &expired {
            let _ = self.ct.remove(k);
        }
        (self.ct.keys().filter(Result::is_ok).count() as u64, expired.len())
    }

    /// Entries and capacity of every map that can fill up (the hash and
    /// LPM maps), by map name. Walks every key: O(entries) system calls.
    pub fn map_fill(&self) -> Vec<MapFill> {
        fn count<K>(keys: impl Iterator<Item = Result<K, aya::maps::MapError>>) -> u64 {
            keys.filter(Result::is_ok).count() as u64
        }
        vec![
            MapFill { map: abi::maps::CT, entries: self.ct_entries(), capacity: abi::CT_MAP_SIZE },
            MapFill { map: abi::maps::ENDPOINTS, entries: count(self.endpoints.keys()), capacity: abi::ENDPOINTS_MAP_SIZE },
            MapFill { map: abi::maps::IPCACHE, entries: count(self.ipcache.keys()), capacity: abi::IPCACHE_MAP_SIZE },
            MapFill { map: abi::maps::POLICY, entries: count(self.policy.keys()), capacity: abi::POLICY_MAP_SIZE },
            MapFill { map: abi::maps::POLICY_CIDR, entries: count(self.policy_cidr.keys()), capacity: abi::POLICY_CIDR_MAP_SIZE },
            MapFill { map: abi::maps::LAB_NETNS, entries: count(self.lab_netns.keys()), capacity: abi::LAB_NETNS_MAP_SIZE },
            MapFill { map: abi::maps::TRAFFIC, entries: count(self.traffic.keys()), capacity: abi::TRAFFIC_MAP_SIZE },
            MapFill { map: abi::maps::KERNEL_DROPS, entries: count(self.kernel_drops.keys()), capacity: abi::KERNEL_DROPS_MAP_SIZE },
            MapFill { map: abi::maps::SERVICES, entries: count(self.services.keys()), capacity: abi::SERVICES_MAP_SIZE },
            MapFill { map: abi::maps::SVC_CT, entries: count(self.svc_ct.keys()), capacity: abi::SVC_CT_MAP_SIZE },
            MapFill { map: abi::maps::REV_NAT, entries: count(self.rev_nat.keys()), capacity: abi::SVC_CT_MAP_SIZE },
        ]
    }

    /// Packets and bytes forwarded and dropped, per (reason, direction),
    /// summed over CPUs.
    pub fn traffic(&self) -> Vec<(TrafficKey, TrafficCount)> {
        sum_per_cpu(&self.traffic)
    }

    /// Packets and bytes the kernel dropped in the lab's namespaces (seen
    /// by the kfree_skb tracepoint), per kernel drop reason.
    pub fn kernel_drops(&self) -> Vec<(u32, TrafficCount)> {
        sum_per_cpu(&self.kernel_drops)
    }

    /// Sum over CPUs of one per-CPU counter.
    pub fn counter(&self, index: u32) -> u64 {
        self.counters.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Per-CPU values of one counter.
    pub fn counter_per_cpu(&self, index: u32) -> Vec<u64> {
        self.counters.get(&index, 0).map(|v| v.iter().copied().collect()).unwrap_or_default()
    }

    /// The events map's file descriptor is polled by the consumer; this takes
    /// the ring buffer out (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        // Pins keep maps alive after the process; a stopped collector leaves
        // nothing behind.
        let _ = fs::remove_dir_all(&self.pin_dir);
        if let Some(parent) = self.pin_dir.parent() {
            // Remove empty parents up to /sys/fs/bpf/sightline.
            let _ = fs::remove_dir(parent);
            if let Some(grand) = parent.parent() {
                if grand.ends_with("sightline") {
                    let _ = fs::remove_dir(grand);
                }
            }
        }
    }
}

/// Index of interface `ifname` inside the network namespace at `netns`.
pub fn ifindex_in(netns: &Path, ifname: &str) -> std::io::Result<u32> {
    let name = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
    in_netns(netns, move || {
        // SAFETY: `name` is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 { Err(std::io::Error::last_os_error()) } else { Ok(index) }
    })?
}
