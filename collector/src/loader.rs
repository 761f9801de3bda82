//! Puts the embedded probes into the kernel — or takes over the ones a
//! previous collector left there — and attaches the programs: tcx on the
//! host side of pod veths (inside the node's network namespace) and the
//! `skb:kfree_skb` tracepoint.
//!
//! Everything is pinned (`pins` has the layout): maps, programs and every
//! link, so the datapath outlives the collector and never fails open when it
//! exits. [`Probes::load`] looks at the pins first and, as
//! [`pins::decide`] says, installs, adopts (maps from their pins, links and
//! the ring buffer included, conntrack untouched), or replaces: this build's
//! programs are swapped into the existing links with `BPF_LINK_UPDATE`, so
//! there is never a moment without a program. Dropping [`Probes`] leaves all
//! of it in force; only [`uninstall`] removes it.
//!
//! This module knows how to put programs into the kernel; it does not decide
//! what goes into the maps (that is `datapath`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapInfo, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, TracePoint};
use aya::{Ebpf, EbpfLoader};

use crate::netns::in_netns;
use crate::pins::{self, Decision, Found, LinkPin, MapLayout, MetaState, PinLayout, PinMeta, Reload, TcDirection};
use sightline_abi as abi;
use sightline_abi::{
    Config, CtEntry, CtKey, EndpointInfo, EndpointKey, IpcacheKey, IpcacheValue, KernelOffsets, PolicyCidrKey,
    PolicyCidrValue, PolicyKey, PolicyValue, ServiceKey, ServiceValue, TrafficCount, TrafficKey,
};


/// Entries per batch system call on the conntrack map.
const BATCH_CHUNK: u32 = 4096;

/// The probe object, built by `build.rs`.
static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sightline-probes"));

/// Errors while loading, adopting, attaching or removing the probes.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("this binary was built without its eBPF probes (AYA_BUILD_SKIP was set); rebuild it without AYA_BUILD_SKIP")]
    NoProbes,
    #[error("mounting {fs} at {path}: {source}")]
    Mount { fs: &'static str, path: &'static str, #[source] source: std::io::Error },
    #[error("parsing the embedded eBPF object: {0}")]
    Object(#[source] aya_obj::ParseError),
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
    #[error("opening the pinned map {path}: {source}")]
    OpenMap { path: PathBuf, #[source] source: aya::maps::MapError },
    #[error("opening the pinned program {path}: {source}")]
    OpenProgram { path: PathBuf, #[source] source: aya::programs::ProgramError },
    #[error("opening the pinned link {path}: {source}")]
    OpenLink { path: PathBuf, #[source] source: aya::programs::links::LinkError },
    #[error("creating map {name}: {source}")]
    CreateMap { name: &'static str, #[source] source: aya::maps::MapError },
    #[error("pinning {what} at {path}: {source}")]
    Pin { what: String, path: PathBuf, #[source] source: aya::pin::PinError },
    #[error("creating the pin directory {path}: {source}")]
    PinDir { path: PathBuf, #[source] source: std::io::Error },
    #[error("moving the pin {from} to {to}: {source}")]
    MovePin { from: PathBuf, to: PathBuf, #[source] source: std::io::Error },
    #[error("removing the pin {path}: {source}")]
    Unpin { path: PathBuf, #[source] source: std::io::Error },
    #[error("writing map {name}: {source}")]
    MapWrite { name: &'static str, #[source] source: aya::maps::MapError },
    #[error("attaching {program} to {interface}: {source}")]
    Attach { program: &'static str, interface: String, #[source] source: Box<aya::programs::ProgramError> },
    #[error("taking the link of {program} on {interface}: {source}")]
    TakeLink { program: &'static str, interface: String, #[source] source: Box<aya::programs::ProgramError> },
    #[error("converting the link of {program} on {interface}: {source}")]
    LinkKind { program: &'static str, interface: String, #[source] source: aya::programs::links::LinkError },
    #[error("replacing the program of the link {path} with {program}: {source}")]
    UpdateLink { path: PathBuf, program: &'static str, #[source] source: Box<aya::programs::ProgramError> },
    #[error("attaching the skb:kfree_skb tracepoint: {0}")]
    AttachTracepoint(#[source] aya::programs::ProgramError),
    #[error("entering network namespace {path}: {source}")]
    Netns { path: PathBuf, #[source] source: std::io::Error },
}

/// What the collector asks of the probes.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Where everything is pinned (adopted if this build can; see `pins`).
    pub pin_dir: PathBuf,
    pub config: Config,
    /// Offsets for the kfree_skb program; `None` leaves it inert.
    pub kernel_offsets: Option<KernelOffsets>,
    /// The node's namespace, where adopted tcx links are checked to be
    /// attached still; `None`: taken as they are.
    pub node_netns: Option<PathBuf>,
    /// Replace what could be adopted.
    pub reload: Reload,
}

/// Default datapath configuration: no aggregation threshold surprises.
#[must_use]
pub fn default_config(aggregation: u32) -> Config {
    const SEC: u64 = 1_000_000_000;
    Config {
        aggregation,
        // About 550 events of the 4 MiB ring buffer per wake-up (the
        // 10 ms drain timer bounds the delay when fewer are pending): at
        // 40,000 events/s a quarter of the wake-ups of 16 KiB, measured
        // 0.3 → 0.25 µs of agent CPU per event (docs/PERFORMANCE.md).
        wakeup_bytes: 64 * 1024,
        report_interval_ns: 5 * SEC,
        ct_tcp_syn_timeout_ns: 60 * SEC,
        ct_tcp_established_timeout_ns: 6 * 3600 * SEC,
        ct_tcp_closing_timeout_ns: 10 * SEC,
        ct_other_timeout_ns: 60 * SEC,
        policy_revision: 1,
        tunnel_ifindex: 0,
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

/// How the probes in force came to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Nothing was pinned: loaded, pinned and attached afresh.
    Installed,
    /// A previous collector's datapath, taken over as it was.
    Adopted {
        /// Links adopted (tcx and tracepoint).
        links: usize,
        /// Pinned links whose interface was gone or had been replaced.
        defunct: Vec<String>,
        /// Collectors that adopted it before this one.
        previous_adoptions: u64,
    },
    /// This build's programs replace the pinned ones in the same links.
    Replaced {
        reason: String,
        /// Maps created anew (their pinned predecessors could not be kept).
        recreated: Vec<String>,
        /// Whether the swap waits for the first apply (new maps to fill).
        staged: bool,
    },
}

impl std::fmt::Display for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Installed => f.write_str("installed"),
            Self::Adopted { links, defunct, previous_adoptions } => {
                write!(f, "adopted ({links} links")?;
                if !defunct.is_empty() {
                    write!(f, ", defunct and removed: {}", defunct.join(", "))?;
                }
                write!(f, "; adopted {} time(s) before)", previous_adoptions)
            }
            Self::Replaced { reason, recreated, staged } => {
                write!(f, "replaced ({reason}")?;
                if !recreated.is_empty() {
                    write!(f, "; new maps: {}", recreated.join(", "))?;
                }
                if *staged {
                    f.write_str("; waiting for the first apply")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// The tc programs this collector attaches: from the object it loaded, or
/// from their pins when it adopted them.
enum Programs {
    Object(Box<Ebpf>),
    Pinned(Box<PinnedPrograms>),
}

/// Programs opened from their pins (an adopted datapath).
struct PinnedPrograms {
    from_container: SchedClassifier,
    to_container: SchedClassifier,
    from_overlay: SchedClassifier,
    kfree_skb: Option<TracePoint>,
    ct_gc: Option<SchedClassifier>,
}

impl Programs {
    fn tc(&mut self, name: &'static str) -> Result<&mut SchedClassifier, LoaderError> {
        match self {
            Self::Object(ebpf) => ebpf
                .program_mut(name)
                .ok_or(LoaderError::MissingProgram { name })?
                .try_into()
                .map_err(|source| LoaderError::LoadProgram { name, source }),
            Self::Pinned(p) => match name {
                abi::programs::FROM_CONTAINER => Ok(&mut p.from_container),
                abi::programs::TO_CONTAINER => Ok(&mut p.to_container),
                abi::programs::FROM_OVERLAY => Ok(&mut p.from_overlay),
                abi::programs::CT_GC => p.ct_gc.as_mut().ok_or(LoaderError::MissingProgram { name }),
                _ => Err(LoaderError::MissingProgram { name }),
            },
        }
    }

    fn tracepoint(&mut self) -> Option<&mut TracePoint> {
        match self {
            Self::Object(ebpf) => ebpf.program_mut(abi::programs::KFREE_SKB).and_then(|p| <&mut TracePoint>::try_from(p).ok()),
            Self::Pinned(p) => p.kfree_skb.as_mut(),
        }
    }
}

/// A pinned link this collector holds.
struct HeldLink {
    link: FdLink,
    path: PathBuf,
}

/// A replacement whose programs are loaded but not yet in the links.
struct Pending {
    reason: String,
    /// Maps staged under `next/maps` (filled by the first apply).
    recreate: BTreeSet<String>,
}

pub struct Probes {
    programs: Programs,
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
    /// Attached tcx links by (interface, hook).
    attached: BTreeMap<(String, TcDirection), HeldLink>,
    tracepoint: Option<HeldLink>,
    layout: PinLayout,
    object_hash: u64,
    meta: Array<MapData, PinMeta>,
    /// Per-CPU ring-buffer losses already reported (pinned).
    lost_reported: Array<MapData, u64>,
    /// What `lost_reported` held when this collector started.
    lost_baseline: Vec<u64>,
    pending: Option<Pending>,
    start: Start,
    /// Conntrack entries left by the last garbage collection, which reads
    /// the whole map anyway: the periodic map-fill figure uses it instead
    /// of reading the map a second time.
    ct_counted: Option<u64>,
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

const ALL_PROGRAMS: [&str; 5] = [
    abi::programs::FROM_CONTAINER,
    abi::programs::TO_CONTAINER,
    abi::programs::FROM_OVERLAY,
    abi::programs::KFREE_SKB,
    abi::programs::CT_GC,
];

const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// The layout of every map of the embedded object, as the kernel will
/// report it once created.
fn object_maps() -> Result<BTreeMap<String, MapLayout>, LoaderError> {
    let object = aya_obj::Object::parse(PROBES).map_err(LoaderError::Object)?;
    let mut out = BTreeMap::new();
    for name in ALL_MAPS {
        let map = object.maps.get(name).ok_or(LoaderError::MissingMap { name })?;
        let mut layout = MapLayout {
            map_type: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: map.max_entries(),
            flags: map.map_flags(),
        };
        if layout.map_type == BPF_MAP_TYPE_RINGBUF {
            // The loader creates ring buffers without key or value size.
            layout.key_size = 0;
            layout.value_size = 0;
        }
        out.insert(name.to_owned(), layout);
    }
    Ok(out)
}

/// The layout of a pinned map, or `None` if `path` is not one.
fn pinned_map_layout(path: &Path) -> Option<MapLayout> {
    let info = MapInfo::from_pin(path).ok()?;
    Some(MapLayout {
        map_type: info.map_type().ok()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

fn read_meta(layout: &PinLayout) -> MetaState {
    let path = layout.meta();
    if !path.exists() {
        return MetaState::Missing;
    }
    let read = || -> Result<PinMeta, String> {
        let data = MapData::from_pin(&path).map_err(|e| e.to_string())?;
        let map = Map::from_map_data(data).map_err(|e| e.to_string())?;
        let array = Array::<MapData, PinMeta>::try_from(map).map_err(|e| e.to_string())?;
        array.get(&0, 0).map_err(|e| e.to_string())
    };
    match read() {
        Ok(m) => MetaState::Present(m),
        Err(e) => MetaState::Unreadable(e),
    }
}

/// What is pinned under `layout` (maps only as far as `wanted` names them).
fn inspect(layout: &PinLayout, wanted: &BTreeMap<String, MapLayout>) -> Found {
    let maps = wanted
        .keys()
        .filter_map(|name| pinned_map_layout(&layout.map(name)).map(|l| (name.clone(), l)))
        .collect();
    let programs = ALL_PROGRAMS.iter().filter(|p| layout.prog(p).exists()).map(|p| (*p).to_owned()).collect();
    let links = fs::read_dir(layout.links_dir()).map(|d| d.flatten().count()).unwrap_or(0);
    Found { meta: read_meta(layout), maps, programs, links }
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn create_dir(path: &Path) -> Result<(), LoaderError> {
    fs::create_dir_all(path).map_err(|source| LoaderError::PinDir { path: path.to_path_buf(), source })
}

fn remove_pin(path: &Path) -> Result<(), LoaderError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LoaderError::Unpin { path: path.to_path_buf(), source }),
    }
}

fn remove_tree(path: &Path) -> Result<(), LoaderError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LoaderError::Unpin { path: path.to_path_buf(), source }),
    }
}

fn move_pin(from: &Path, to: &Path) -> Result<(), LoaderError> {
    remove_pin(to)?;
    fs::rename(from, to).map_err(|source| LoaderError::MovePin { from: from.to_path_buf(), to: to.to_path_buf(), source })
}

/// `bpf(BPF_OBJ_GET)`: a descriptor for the object pinned at `path`.
fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let name = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let attr = ObjAttr { pathname: name.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_OBJ_GET; the path
    // it points to outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr as *const ObjAttr, size_of::<ObjAttr>() as u32) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// `bpf(BPF_LINK_DETACH)`: detaches a link now, whoever else holds it.
fn link_detach(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    #[repr(C)]
    struct DetachAttr {
        link_fd: u32,
    }
    const BPF_LINK_DETACH: libc::c_long = 34;
    let attr = DetachAttr { link_fd: fd.as_raw_fd() as u32 };
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_LINK_DETACH.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, &attr as *const DetachAttr, size_of::<DetachAttr>() as u32) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Detaches the link pinned at `path` and removes the pin. Links that
/// cannot be detached explicitly (perf links) go with their last reference.
fn detach_pinned(path: &Path) -> Result<(), LoaderError> {
    if let Ok(fd) = obj_get(path)
        && let Err(e) = link_detach(fd.as_fd())
    {
        log::debug!("detaching {}: {e} (released when unpinned)", path.display());
    }
    remove_pin(path)
}

fn open_pinned_map<T>(path: &Path, name: &'static str) -> Result<T, LoaderError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(path).map_err(|source| LoaderError::OpenMap { path: path.to_path_buf(), source })?;
    let map = Map::from_map_data(data).map_err(|source| LoaderError::OpenMap { path: path.to_path_buf(), source })?;
    T::try_from(map).map_err(|source| LoaderError::MapType { name, source })
}

/// Where a map comes from: the object just loaded, or its pin.
enum MapSource<'a> {
    Object(&'a mut Ebpf),
    Pins(&'a PinLayout),
}

impl MapSource<'_> {
    fn take<T>(&mut self, name: &'static str) -> Result<T, LoaderError>
    where
        T: TryFrom<Map, Error = aya::maps::MapError>,
    {
        match self {
            Self::Object(ebpf) => {
                let map = ebpf.take_map(name).ok_or(LoaderError::MissingMap { name })?;
                T::try_from(map).map_err(|source| LoaderError::MapType { name, source })
            }
            Self::Pins(layout) => open_pinned_map(&layout.map(name), name),
        }
    }
}

/// Typed handles on every map the collector uses.
struct Maps {
    events: RingBuf<MapData>,
    endpoints: HashMap<MapData, EndpointKey, EndpointInfo>,
    ipcache: LpmTrie<MapData, IpcacheKey, IpcacheValue>,
    ct: HashMap<MapData, CtKey, CtEntry>,
    counters: PerCpuArray<MapData, u64>,
    lab_netns: HashMap<MapData, u32, u32>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    policy_cidr: LpmTrie<MapData, PolicyCidrKey, PolicyCidrValue>,
    traffic: PerCpuHashMap<MapData, TrafficKey, TrafficCount>,
    kernel_drops: PerCpuHashMap<MapData, u32, TrafficCount>,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    svc_ct: HashMap<MapData, CtKey, ServiceValue>,
    rev_nat: HashMap<MapData, CtKey, ServiceValue>,
    config: Array<MapData, Config>,
    offsets: Array<MapData, KernelOffsets>,
}

impl Maps {
    fn take(mut src: MapSource<'_>) -> Result<Self, LoaderError> {
        Ok(Self {
            events: src.take(abi::maps::EVENTS)?,
            endpoints: src.take(abi::maps::ENDPOINTS)?,
            ipcache: src.take(abi::maps::IPCACHE)?,
            ct: src.take(abi::maps::CT)?,
            counters: src.take(abi::maps::COUNTERS)?,
            lab_netns: src.take(abi::maps::LAB_NETNS)?,
            policy: src.take(abi::maps::POLICY)?,
            policy_cidr: src.take(abi::maps::POLICY_CIDR)?,
            traffic: src.take(abi::maps::TRAFFIC)?,
            kernel_drops: src.take(abi::maps::KERNEL_DROPS)?,
            services: src.take(abi::maps::SERVICES)?,
            svc_ct: src.take(abi::maps::SVC_CT)?,
            rev_nat: src.take(abi::maps::REV_NAT)?,
            config: src.take(abi::maps::CONFIG)?,
            offsets: src.take(abi::maps::KERNEL_OFFSETS)?,
        })
    }
}

/// Loads the embedded object, every map pinned at `map_path(name)` (an
/// existing pin is shared, a missing one created and pinned), and its
/// programs (the tracepoint only with kernel offsets to run on).
fn load_object(map_path: impl Fn(&'static str) -> PathBuf, tracepoint: bool) -> Result<Ebpf, LoaderError> {
    let mut loader = EbpfLoader::new();
    for name in ALL_MAPS {
        loader.map_pin_path(name, map_path(name));
    }
    let mut ebpf = loader.load(PROBES).map_err(LoaderError::Load)?;
    for name in [abi::programs::FROM_CONTAINER, abi::programs::TO_CONTAINER, abi::programs::FROM_OVERLAY] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(LoaderError::MissingProgram { name })?
            .try_into()
            .map_err(|source| LoaderError::LoadProgram { name, source })?;
        prog.load().map_err(|source| LoaderError::LoadProgram { name, source })?;
    }
    // Garbage collection in the kernel needs `bpf_for_each_map_elem`
    // (Linux 5.13): without it the collector reads the map out instead.
    let name = abi::programs::CT_GC;
    match ebpf.program_mut(name).map(<&mut SchedClassifier>::try_from) {
        Some(Ok(prog)) => {
            if let Err(err) = prog.load() {
                log::warn!("conntrack garbage collection stays in user space: loading {name}: {err}");
            }
        }
        Some(Err(err)) => log::warn!("conntrack garbage collection stays in user space: {name}: {err}"),
        None => log::warn!("conntrack garbage collection stays in user space: the object has no {name}"),
    }
    if tracepoint {
        let name = abi::programs::KFREE_SKB;
        let tp: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or(LoaderError::MissingProgram { name })?
            .try_into()
            .map_err(|source| LoaderError::LoadProgram { name, source })?;
        tp.load().map_err(|source| LoaderError::LoadProgram { name, source })?;
    }
    Ok(ebpf)
}

/// Pins the loaded programs at `path(name)`.
fn pin_programs(ebpf: &mut Ebpf, path: impl Fn(&'static str) -> PathBuf) -> Result<(), LoaderError> {
    for name in ALL_PROGRAMS {
        let Some(prog) = ebpf.program_mut(name) else { continue };
        if prog.fd().is_err() {
            // Not loaded (the tracepoint without kernel offsets).
            continue;
        }
        let path = path(name);
        remove_pin(&path)?;
        prog.pin(&path).map_err(|source| LoaderError::Pin { what: format!("program {name}"), path, source })?;
    }
    Ok(())
}

/// Attaches the tracepoint program and pins its link at `path`.
fn attach_tracepoint(tp: &mut TracePoint, path: &Path) -> Result<HeldLink, LoaderError> {
    let id = tp.attach("skb", "kfree_skb").map_err(LoaderError::AttachTracepoint)?;
    let link = tp.take_link(id).map_err(LoaderError::AttachTracepoint)?;
    let link = FdLink::try_from(link).map_err(|source| LoaderError::LinkKind {
        program: abi::programs::KFREE_SKB,
        interface: "skb:kfree_skb".to_owned(),
        source,
    })?;
    remove_pin(path)?;
    let pinned = link
        .pin(path)
        .map_err(|source| LoaderError::Pin { what: "the kfree_skb link".to_owned(), path: path.to_path_buf(), source })?;
    Ok(HeldLink { link: FdLink::from(pinned), path: path.to_path_buf() })
}

/// The pinned meta map, created (and pinned) if missing or unreadable.
fn meta_map(layout: &PinLayout) -> Result<Array<MapData, PinMeta>, LoaderError> {
    let path = layout.meta();
    if let Ok(map) = open_pinned_map::<Array<MapData, PinMeta>>(&path, "meta") {
        return Ok(map);
    }
    remove_pin(&path)?;
    let map = Array::<MapData, PinMeta>::create(1, 0).map_err(|source| LoaderError::CreateMap { name: "meta", source })?;
    map.pin(&path).map_err(|source| LoaderError::Pin { what: "the meta record".to_owned(), path: path.clone(), source })?;
    open_pinned_map(&path, "meta")
}

/// The pinned per-CPU record of reported losses, created zeroed if missing
/// or of the wrong size.
fn lost_reported_map(layout: &PinLayout) -> Result<(Array<MapData, u64>, bool), LoaderError> {
    let path = layout.lost_reported();
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| LoaderError::PinDir { path: path.clone(), source: e })? as u32;
    if let Ok(map) = open_pinned_map::<Array<MapData, u64>>(&path, "lost_reported")
        && map.len() == cpus
    {
        return Ok((map, true));
    }
    remove_pin(&path)?;
    let map = Array::<MapData, u64>::create(cpus, 0).map_err(|source| LoaderError::CreateMap { name: "lost_reported", source })?;
    map.pin(&path).map_err(|source| LoaderError::Pin { what: "the lost-event record".to_owned(), path: path.clone(), source })?;
    Ok((open_pinned_map(&path, "lost_reported")?, false))
}

fn map_id(path: &Path) -> u32 {
    MapInfo::from_pin(path).map(|i| i.id()).unwrap_or(0)
}

/// Adopted links: the tcx links by (interface, hook), the tracepoint's, and
/// the names of defunct pins that were removed.
type AdoptedLinks = (BTreeMap<(String, TcDirection), HeldLink>, Option<HeldLink>, Vec<String>);

/// Opens the links pinned under `links/`. A tcx link whose interface is
/// gone (or is another interface now, with the same name) is detached and
/// its pin removed: it enforces nothing, and `attach` makes a new one.
fn adopt_links(layout: &PinLayout, netns: Option<&Path>) -> Result<AdoptedLinks, LoaderError> {
    let mut attached = BTreeMap::new();
    let mut tracepoint = None;
    let mut defunct = Vec::new();
    let Ok(entries) = fs::read_dir(layout.links_dir()) else {
        return Ok((attached, tracepoint, defunct));
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(kind) = pins::parse_link_name(&name) else {
            log::warn!("leaving {} alone: not a link name this collector knows", path.display());
            continue;
        };
        let link = FdLink::from(PinnedLink::from_pin(&path).map_err(|source| LoaderError::OpenLink { path: path.clone(), source })?);
        match kind {
            LinkPin::Tracepoint => tracepoint = Some(HeldLink { link, path }),
            LinkPin::Tc { ifname, direction } => {
                let live = match netns {
                    None => true,
                    Some(ns) => tc_link_live(ns, &ifname, direction, &link),
                };
                if live {
                    attached.insert((ifname, direction), HeldLink { link, path });
                } else {
                    drop(link);
                    detach_pinned(&path)?;
                    defunct.push(name);
                }
            }
        }
    }
    Ok((attached, tracepoint, defunct))
}

fn attach_type(direction: TcDirection) -> TcAttachType {
    match direction {
        TcDirection::Ingress => TcAttachType::Ingress,
        TcDirection::Egress => TcAttachType::Egress,
    }
}

/// Whether `link`'s program is attached on `ifname`'s hook in `netns` now.
fn tc_link_live(netns: &Path, ifname: &str, direction: TcDirection, link: &FdLink) -> bool {
    let Ok(info) = link.info() else { return false };
    let program = info.program_id();
    let kind = attach_type(direction);
    match in_netns(netns, || SchedClassifier::query_tcx(ifname, kind)) {
        Ok(Ok((_, programs))) => programs.iter().any(|p| p.id() == program),
        _ => false,
    }
}

fn program_id(prog: &SchedClassifier) -> Option<u32> {
    prog.info().ok().map(|i| i.id())
}

impl Probes {
    /// Brings the probes into force under `opts.pin_dir`: installs them if
    /// nothing is pinned there, adopts a pinned datapath of this build, or
    /// replaces a pinned one of another build (see [`pins::decide`]).
    pub fn load(opts: &ProbeOptions) -> Result<Self, LoaderError> {
        if PROBES.is_empty() {
            return Err(LoaderError::NoProbes);
        }
        ensure_filesystems()?;
        let layout = PinLayout::new(&opts.pin_dir);
        let object_hash = pins::object_hash(PROBES);
        let wanted = object_maps()?;
        let found = inspect(&layout, &wanted);
        match pins::decide(&found, &wanted, object_hash, opts.reload) {
            Decision::Install => Self::install(opts, layout, object_hash),
            Decision::Adopt => {
                let MetaState::Present(meta) = found.meta else {
                    // `decide` adopts only with a readable record.
                    return Self::install(opts, layout, object_hash);
                };
                Self::adopt(opts, layout, object_hash, meta)
            }
            Decision::Replace { recreate, reason } => Self::replace(opts, layout, object_hash, recreate, reason),
        }
    }

    fn install(opts: &ProbeOptions, layout: PinLayout, object_hash: u64) -> Result<Self, LoaderError> {
        // Nothing attached runs from these pins (`decide` checked).
        remove_tree(layout.root())?;
        for dir in [layout.maps_dir(), layout.progs_dir(), layout.links_dir()] {
            create_dir(&dir)?;
        }
        let mut ebpf = load_object(|name| layout.map(name), opts.kernel_offsets.is_some())?;
        pin_programs(&mut ebpf, |name| layout.prog(name))?;
        let mut maps = Maps::take(MapSource::Object(&mut ebpf))?;
        maps.config.set(0, opts.config, 0).map_err(|source| LoaderError::MapWrite { name: abi::maps::CONFIG, source })?;
        if let Some(o) = opts.kernel_offsets {
            maps.offsets.set(0, o, 0).map_err(|source| LoaderError::MapWrite { name: abi::maps::KERNEL_OFFSETS, source })?;
        }
        let mut programs = Programs::Object(Box::new(ebpf));
        let tracepoint = match programs.tracepoint() {
            Some(tp) if opts.kernel_offsets.is_some() => Some(attach_tracepoint(tp, &layout.tracepoint_link())?),
            _ => None,
        };
        let (mut lost_reported, _) = lost_reported_map(&layout)?;
        for cpu in 0..lost_reported.len() {
            let _ = lost_reported.set(cpu, 0, 0);
        }
        let mut meta = meta_map(&layout)?;
        let record = PinMeta::new(object_hash, map_id(&layout.map(abi::maps::COUNTERS)), now_unix_s());
        meta.set(0, record, 0).map_err(|source| LoaderError::MapWrite { name: "meta", source })?;
        let cpus = lost_reported.len() as usize;
        Ok(Self::assemble(opts, layout, object_hash, programs, maps, BTreeMap::new(), tracepoint, meta, lost_reported, vec![0; cpus], Start::Installed))
    }

    fn adopt(opts: &ProbeOptions, layout: PinLayout, object_hash: u64, mut record: PinMeta) -> Result<Self, LoaderError> {
        let mut maps = Maps::take(MapSource::Pins(&layout))?;
        let open = |name: &'static str| {
            let path = layout.prog(name);
            SchedClassifier::from_pin(&path).map_err(|source| LoaderError::OpenProgram { path, source })
        };
        let from_container = open(abi::programs::FROM_CONTAINER)?;
        let to_container = open(abi::programs::TO_CONTAINER)?;
        let from_overlay = open(abi::programs::FROM_OVERLAY)?;
        let kfree_skb = TracePoint::from_pin(layout.prog(abi::programs::KFREE_SKB)).ok();
        // Pinned only where the kernel could load it.
        let ct_gc = open(abi::programs::CT_GC).ok();
        let mut programs =
            Programs::Pinned(Box::new(PinnedPrograms { from_container, to_container, from_overlay, kfree_skb, ct_gc }));

        // Conntrack entries carry the policy revision they were allowed
        // under: keep counting from the pinned one.
        let pinned = maps.config.get(&0, 0).unwrap_or(opts.config);
        // The tunnel device stays in force until the next desired state
        // says otherwise: traffic to other nodes keeps its path meanwhile.
        let config = Config { policy_revision: pinned.policy_revision, tunnel_ifindex: pinned.tunnel_ifindex, ..opts.config };
        if config != pinned {
            maps.config.set(0, config, 0).map_err(|source| LoaderError::MapWrite { name: abi::maps::CONFIG, source })?;
        }
        if let Some(o) = opts.kernel_offsets
            && maps.offsets.get(&0, 0).ok() != Some(o)
        {
            maps.offsets.set(0, o, 0).map_err(|source| LoaderError::MapWrite { name: abi::maps::KERNEL_OFFSETS, source })?;
        }
        let (attached, mut tracepoint, defunct) = adopt_links(&layout, opts.node_netns.as_deref())?;
        if tracepoint.is_none()
            && opts.kernel_offsets.is_some()
            && let Some(tp) = programs.tracepoint()
        {
            tracepoint = Some(attach_tracepoint(tp, &layout.tracepoint_link())?);
        }
        let (lost_reported, kept) = lost_reported_map(&layout)?;
        let counters_id = map_id(&layout.map(abi::maps::COUNTERS));
        // The record of reported losses is about this COUNTERS map only.
        let baseline = if kept && record.counters_map_id == counters_id {
            (0..lost_reported.len()).map(|cpu| lost_reported.get(&cpu, 0).unwrap_or(0)).collect()
        } else {
            vec![0; lost_reported.len() as usize]
        };
        let previous_adoptions = record.adoptions;
        record.adoptions += 1;
        record.counters_map_id = counters_id;
        let mut meta = meta_map(&layout)?;
        meta.set(0, record, 0).map_err(|source| LoaderError::MapWrite { name: "meta", source })?;
        let start = Start::Adopted { links: attached.len() + usize::from(tracepoint.is_some()), defunct, previous_adoptions };
        let mut probes =
            Self::assemble(opts, layout, object_hash, programs, maps, attached, tracepoint, meta, lost_reported, baseline, start);
        probes.current_config = config;
        Ok(probes)
    }

    fn replace(
        opts: &ProbeOptions,
        layout: PinLayout,
        object_hash: u64,
        recreate: BTreeSet<String>,
        reason: String,
    ) -> Result<Self, LoaderError> {
        remove_tree(&layout.next_dir())?;
        for dir in [
            layout.maps_dir(),
            layout.progs_dir(),
            layout.links_dir(),
            layout.next_dir().join("maps"),
            layout.next_dir().join("progs"),
        ] {
            create_dir(&dir)?;
        }
        // The revision the pinned connections were allowed under, if the
        // pinned configuration can be read.
        let pinned_config = open_pinned_map::<Array<MapData, Config>>(&layout.map(abi::maps::CONFIG), abi::maps::CONFIG)
            .ok()
            .and_then(|c| c.get(&0, 0).ok());
        let mut ebpf = load_object(
            |name| if recreate.contains(name) { layout.next_map(name) } else { layout.map(name) },
            opts.kernel_offsets.is_some(),
        )?;
        pin_programs(&mut ebpf, |name| layout.next_prog(name))?;
        let mut maps = Maps::take(MapSource::Object(&mut ebpf))?;
        let config = Config {
            policy_revision: pinned_config.map_or(opts.config.policy_revision, |c| c.policy_revision),
            tunnel_ifindex: pinned_config.map_or(0, |c| c.tunnel_ifindex),
            ..opts.config
        };
        maps.config.set(0, config, 0).map_err(|source| LoaderError::MapWrite { name: abi::maps::CONFIG, source })?;
        if let Some(o) = opts.kernel_offsets {
            maps.offsets.set(0, o, 0).map_err(|source| LoaderError::MapWrite { name: abi::maps::KERNEL_OFFSETS, source })?;
        }
        let (attached, tracepoint, defunct) = adopt_links(&layout, opts.node_netns.as_deref())?;
        if !defunct.is_empty() {
            log::info!("removed defunct links: {}", defunct.join(", "));
        }
        let (lost_reported, kept) = lost_reported_map(&layout)?;
        let record = match read_meta(&layout) {
            MetaState::Present(m) if m.is_readable() => Some(m),
            _ => None,
        };
        let counters_kept = !recreate.contains(abi::maps::COUNTERS);
        let counters_id = map_id(&layout.map(abi::maps::COUNTERS));
        let baseline = if kept && counters_kept && record.is_some_and(|m| m.counters_map_id == counters_id) {
            (0..lost_reported.len()).map(|cpu| lost_reported.get(&cpu, 0).unwrap_or(0)).collect()
        } else {
            vec![0; lost_reported.len() as usize]
        };
        let meta = meta_map(&layout)?;
        let staged = !recreate.is_empty();
        let start = Start::Replaced { reason: reason.clone(), recreated: recreate.iter().cloned().collect(), staged };
        let mut probes = Self::assemble(
            opts,
            layout,
            object_hash,
            Programs::Object(Box::new(ebpf)),
            maps,
            attached,
            tracepoint,
            meta,
            lost_reported,
            baseline,
            start,
        );
        probes.current_config = config;
        probes.pending = Some(Pending { reason, recreate });
        if !staged {
            // The maps in force are the programs' own: swap now.
            probes.commit()?;
        }
        Ok(probes)
    }

    #[allow(clippy::too_many_arguments, reason = "one constructor for three ways of starting")]
    fn assemble(
        opts: &ProbeOptions,
        layout: PinLayout,
        object_hash: u64,
        programs: Programs,
        maps: Maps,
        attached: BTreeMap<(String, TcDirection), HeldLink>,
        tracepoint: Option<HeldLink>,
        meta: Array<MapData, PinMeta>,
        lost_reported: Array<MapData, u64>,
        lost_baseline: Vec<u64>,
        start: Start,
    ) -> Self {
        Self {
            programs,
            events: Some(maps.events),
            endpoints: maps.endpoints,
            ipcache: maps.ipcache,
            ct: maps.ct,
            counters: maps.counters,
            lab_netns: maps.lab_netns,
            policy: maps.policy,
            policy_cidr: maps.policy_cidr,
            traffic: maps.traffic,
            kernel_drops: maps.kernel_drops,
            services: maps.services,
            svc_ct: maps.svc_ct,
            rev_nat: maps.rev_nat,
            config: maps.config,
            current_config: opts.config,
            attached,
            tracepoint,
            layout,
            object_hash,
            meta,
            lost_reported,
            lost_baseline,
            pending: None,
            start,
            ct_counted: None,
        }
    }

    /// How the probes in force came to be.
    pub fn start(&self) -> &Start {
        &self.start
    }

    /// Whether a replacement waits for the maps to be filled (`commit`).
    pub fn replacement_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Puts a pending replacement in force: every link switches to this
    /// build's program atomically (`BPF_LINK_UPDATE`, so a packet meets the
    /// old program or the new one, never none), the tracepoint's new link
    /// is attached before the old one goes, then the new maps and programs
    /// take the place of the old pins and `meta` records this build.
    /// Returns what was replaced, or `None` when nothing was pending.
    pub fn commit(&mut self) -> Result<Option<String>, LoaderError> {
        let Some(pending) = self.pending.take() else { return Ok(None) };
        let held = std::mem::take(&mut self.attached);
        let mut first_error = None;
        for ((ifname, direction), held_link) in held {
            match self.update_link(&ifname, direction, held_link) {
                Ok(link) => {
                    self.attached.insert((ifname, direction), link);
                }
                Err((err, old)) => {
                    if let Some(old) = old {
                        self.attached.insert((ifname, direction), old);
                    }
                    if first_error.is_some() {
                        log::error!("{err}");
                    } else {
                        first_error = Some(err);
                    }
                }
            }
        }
        if let Some(err) = first_error {
            // Links that did switch run the new programs; the pins still
            // describe the old build, so the next start replaces again.
            self.pending = Some(pending);
            return Err(err);
        }
        // The tracepoint only observes: attach the new link, then let the
        // old one go (for a moment both report a kernel drop).
        let path = self.layout.tracepoint_link();
        let old = self.tracepoint.take();
        if let Some(tp) = self.programs.tracepoint().filter(|tp| tp.fd().is_ok()) {
            let id = tp.attach("skb", "kfree_skb").map_err(LoaderError::AttachTracepoint)?;
            let link = tp.take_link(id).map_err(LoaderError::AttachTracepoint)?;
            let link = FdLink::try_from(link).map_err(|source| LoaderError::LinkKind {
                program: abi::programs::KFREE_SKB,
                interface: "skb:kfree_skb".to_owned(),
                source,
            })?;
            remove_pin(&path)?;
            let pinned = link
                .pin(&path)
                .map_err(|source| LoaderError::Pin { what: "the kfree_skb link".to_owned(), path: path.clone(), source })?;
            self.tracepoint = Some(HeldLink { link: FdLink::from(pinned), path: path.clone() });
            drop(old);
        } else if let Some(old) = old {
            drop(old.link);
            detach_pinned(&old.path)?;
        }
        for name in &pending.recreate {
            move_pin(&self.layout.next_dir().join("maps").join(name), &self.layout.map(name))?;
        }
        for name in ALL_PROGRAMS {
            let staged = self.layout.next_prog(name);
            if staged.exists() {
                move_pin(&staged, &self.layout.prog(name))?;
            } else {
                // Not loaded by this build (the tracepoint without kernel
                // offsets): the old one must not be adopted later.
                remove_pin(&self.layout.prog(name))?;
            }
        }
        remove_tree(&self.layout.next_dir())?;
        let counters_id = map_id(&self.layout.map(abi::maps::COUNTERS));
        if pending.recreate.contains(abi::maps::COUNTERS) {
            self.lost_baseline = vec![0; self.lost_reported.len() as usize];
            for cpu in 0..self.lost_reported.len() {
                let _ = self.lost_reported.set(cpu, 0, 0);
            }
        }
        let record = PinMeta::new(self.object_hash, counters_id, now_unix_s());
        self.meta.set(0, record, 0).map_err(|source| LoaderError::MapWrite { name: "meta", source })?;
        if let Start::Replaced { staged, .. } = &mut self.start {
            *staged = false;
        }
        Ok(Some(pending.reason))
    }

    /// Switches one pinned tcx link to this build's program. On failure
    /// the link is handed back (still attached to its old program).
    #[allow(clippy::result_large_err, reason = "the error hands the link back")]
    fn update_link(&mut self, ifname: &str, direction: TcDirection, held: HeldLink) -> Result<HeldLink, (LoaderError, Option<HeldLink>)> {
        let name = pins::program_for(ifname, direction);
        let prog = match self.programs.tc(name) {
            Ok(p) => p,
            Err(e) => return Err((e, Some(held))),
        };
        if held.link.info().ok().map(|i| i.program_id()) == program_id(prog) {
            return Ok(held);
        }
        let HeldLink { link, path } = held;
        let link = match SchedClassifierLink::try_from(link) {
            Ok(l) => l,
            Err(source) => {
                // The descriptor is gone with the conversion; the pin keeps the link.
                let err = LoaderError::OpenLink { path: path.clone(), source };
                let reopened = PinnedLink::from_pin(&path).ok().map(|l| HeldLink { link: FdLink::from(l), path: path.clone() });
                return Err((err, reopened));
            }
        };
        let reopen = |path: &Path| PinnedLink::from_pin(path).ok().map(|l| HeldLink { link: FdLink::from(l), path: path.to_path_buf() });
        let id = match prog.attach_to_link(link) {
            Ok(id) => id,
            Err(source) => {
                return Err((LoaderError::UpdateLink { path: path.clone(), program: name, source: Box::new(source) }, reopen(&path)));
            }
        };
        let link = prog.take_link(id).map_err(|source| {
            (LoaderError::TakeLink { program: name, interface: path.display().to_string(), source: Box::new(source) }, reopen(&path))
        })?;
        let link = FdLink::try_from(link).map_err(|source| {
            (LoaderError::LinkKind { program: name, interface: path.display().to_string(), source }, reopen(&path))
        })?;
        Ok(HeldLink { link, path })
    }

    /// Replaces the datapath configuration at run time.
    pub fn set_config(&mut self, config: Config) -> Result<(), LoaderError> {
        self.config
            .set(0, config, 0)
            .map_err(|source| LoaderError::MapWrite { name: abi::maps::CONFIG, source })?;
        self.current_config = config;
        Ok(())
    }

    /// Points the datapath at the tunnel device `ifindex` (0: none).
    pub fn set_tunnel_ifindex(&mut self, ifindex: u32) -> Result<(), LoaderError> {
        if self.current_config.tunnel_ifindex == ifindex {
            return Ok(());
        }
        self.set_config(Config { tunnel_ifindex: ifindex, ..self.current_config })
    }

    /// The tunnel device in force: its name (from its pinned link) and index.
    pub fn tunnel(&self) -> Option<(String, u32)> {
        let index = self.current_config.tunnel_ifindex;
        if index == 0 {
            return None;
        }
        let name = self
            .attached
            .keys()
            .find(|(i, d)| *d == TcDirection::Ingress && !self.attached.contains_key(&(i.clone(), TcDirection::Egress)))
            .map(|(i, _)| i.clone())?;
        Some((name, index))
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

    /// One of the tc programs (for test runs).
    pub fn program_mut(&mut self, name: &'static str) -> Option<&mut SchedClassifier> {
        self.programs.tc(name).ok()
    }

    /// Interfaces the tc programs are attached to (both hooks).
    pub fn attached_interfaces(&self) -> impl Iterator<Item = &str> {
        self.attached
            .keys()
            .filter(|(_, d)| *d == TcDirection::Ingress)
            .map(|(i, _)| i.as_str())
            .filter(|i| self.attached.contains_key(&((*i).to_owned(), TcDirection::Egress)))
    }

    /// Attaches `from_container` (ingress) and `to_container` (egress) to
    /// `ifname` inside the network namespace at `netns`, and pins the
    /// links. Idempotent: a hook that has its link keeps it.
    pub fn attach(&mut self, netns: &Path, ifname: &str) -> Result<(), LoaderError> {
        self.attach_hooks(netns, ifname, &TcDirection::BOTH)
    }

    /// Attaches `from_overlay` to the ingress of `ifname` only: the tunnel
    /// device (one of `state::TUNNEL_DEVICES`).
    pub fn attach_ingress(&mut self, netns: &Path, ifname: &str) -> Result<(), LoaderError> {
        self.attach_hooks(netns, ifname, &[TcDirection::Ingress])
    }

    fn attach_hooks(&mut self, netns: &Path, ifname: &str, directions: &[TcDirection]) -> Result<(), LoaderError> {
        for &direction in directions {
            if self.attached.contains_key(&(ifname.to_owned(), direction)) {
                continue;
            }
            let name = pins::program_for(ifname, direction);
            let path = self.layout.tc_link(ifname, direction);
            // A pin left by a link that is no more (checked at adoption).
            detach_pinned(&path)?;
            let prog = self.programs.tc(name)?;
            // tcx resolves the interface name in the calling thread's
            // namespace: attach from a thread inside the node's namespace.
            let kind = attach_type(direction);
            let attached = in_netns(netns, || {
                prog.attach_with_options(ifname, kind, TcAttachOptions::TcxOrder(LinkOrder::default()))
            })
            .map_err(|source| LoaderError::Netns { path: netns.to_path_buf(), source })?;
            let id = attached
                .map_err(|source| LoaderError::Attach { program: name, interface: ifname.to_owned(), source: Box::new(source) })?;
            let link = prog
                .take_link(id)
                .map_err(|source| LoaderError::TakeLink { program: name, interface: ifname.to_owned(), source: Box::new(source) })?;
            let link = FdLink::try_from(link)
                .map_err(|source| LoaderError::LinkKind { program: name, interface: ifname.to_owned(), source })?;
            // Unpinned, the link goes when this descriptor closes: on error
            // the half attached is undone by returning.
            let pinned = link
                .pin(&path)
                .map_err(|source| LoaderError::Pin { what: format!("the {name} link on {ifname}"), path: path.clone(), source })?;
            self.attached.insert((ifname.to_owned(), direction), HeldLink { link: FdLink::from(pinned), path });
        }
        Ok(())
    }

    /// Detaches the programs from `ifname` and removes their pins (no-op
    /// if not attached).
    pub fn detach(&mut self, ifname: &str) {
        for direction in TcDirection::BOTH {
            if let Some(held) = self.attached.remove(&(ifname.to_owned(), direction)) {
                drop(held.link);
                // The interface may be gone already (its namespace deleted),
                // which detached the link in the kernel; the pin goes anyway.
                if let Err(e) = detach_pinned(&held.path) {
                    log::warn!("{e}");
                }
            }
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
    /// (monotonic): (entries left, entries deleted). In the kernel, by one
    /// run of the `ct_gc` program (nothing is copied out), where it could
    /// be loaded; otherwise read and deleted in batches of thousands of
    /// entries per system call where the kernel can, key by key where not.
    pub fn ct_collect(&mut self, now_ns: u64) -> (u64, usize) {
        match self.ct_collect_in_kernel(now_ns) {
            Ok(Some(counts)) => counts,
            Ok(None) => self.ct_collect_in_user_space(now_ns),
            Err(err) => {
                log::warn!("conntrack garbage collection in the kernel failed ({err}); reading the map instead");
                self.ct_collect_in_user_space(now_ns)
            }
        }
    }

    /// Whether conntrack garbage collection runs in the kernel (the
    /// `ct_gc` program is loaded) rather than by reading the map out.
    pub fn gc_in_kernel(&mut self) -> bool {
        self.programs.tc(abi::programs::CT_GC).is_ok_and(|p| p.fd().is_ok())
    }

    /// One run of `ct_gc`: `None` when it is not loaded.
    fn ct_collect_in_kernel(&mut self, now_ns: u64) -> Result<Option<(u64, usize)>, String> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let Ok(prog) = self.programs.tc(abi::programs::CT_GC) else { return Ok(None) };
        if prog.fd().is_err() {
            return Ok(None);
        }
        let mut packet = [0u8; abi::GC_PACKET_LEN];
        packet[abi::GC_NOW_OFFSET..abi::GC_NOW_OFFSET + 8].copy_from_slice(&now_ns.to_ne_bytes());
        let mut out = [0u8; abi::GC_PACKET_LEN];
        let result = prog
            .test_run(TestRunOptions { data_in: Some(&packet), data_out: Some(&mut out), ..TestRunOptions::default() })
            .map_err(|e| e.to_string())?;
        let field = |at: usize| u64::from_ne_bytes(out[at..at + 8].try_into().expect("8 bytes"));
        // TC_ACT_OK: the time was read and the counts written.
        if result.return_value != 0 || (result.data_size_out as usize) < abi::GC_PACKET_LEN {
            return Err(format!("{} returned {} with {} bytes", abi::programs::CT_GC, result.return_value, result.data_size_out));
        }
        let (deleted, left) = (field(abi::GC_DELETED_OFFSET), field(abi::GC_LEFT_OFFSET));
        self.ct_counted = Some(left);
        Ok(Some((left, usize::try_from(deleted).unwrap_or(usize::MAX))))
    }

    fn ct_collect_in_user_space(&mut self, now_ns: u64) -> (u64, usize) {
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
                let left = (total - deleted) as u64;
                self.ct_counted = Some(left);
                return (left, deleted);
            }
        }
        let expired: Vec<_> =
            self.ct.iter().filter_map(Result::ok).filter(|(_, e)| e.expires_ns <= now_ns).map(|(k, _)| k).collect();
        for k in &expired {
            let _ = self.ct.remove(k);
        }
        let left = self.ct.keys().filter(Result::is_ok).count() as u64;
        self.ct_counted = Some(left);
        (left, expired.len())
    }

    /// Entries and capacity of every map that can fill up (the hash and
    /// LPM maps), by map name. Walks every key: O(entries) system calls;
    /// conntrack's count is the last garbage collection's (it read the
    /// whole map), read here only before the first collection.
    pub fn map_fill(&self) -> Vec<MapFill> {
        fn count<K>(keys: impl Iterator<Item = Result<K, aya::maps::MapError>>) -> u64 {
            keys.filter(Result::is_ok).count() as u64
        }
        vec![
            MapFill { map: abi::maps::CT, entries: self.ct_counted.unwrap_or_else(|| self.ct_entries()), capacity: abi::CT_MAP_SIZE },
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

    /// Per-CPU ring-buffer losses that earlier collectors (of this
    /// `COUNTERS` map) already reported: what this one reports is the
    /// counter minus this.
    pub fn lost_baseline(&self) -> &[u64] {
        &self.lost_baseline
    }

    /// Records that the losses up to `per_cpu` have been reported, so that
    /// the next collector reports only what comes after.
    pub fn record_lost_reported(&mut self, per_cpu: &[u64]) -> Result<(), LoaderError> {
        for (cpu, value) in per_cpu.iter().enumerate() {
            let cpu = cpu as u32;
            if cpu >= self.lost_reported.len() {
                break;
            }
            if self.lost_reported.get(&cpu, 0).ok() != Some(*value) {
                self.lost_reported
                    .set(cpu, *value, 0)
                    .map_err(|source| LoaderError::MapWrite { name: "lost_reported", source })?;
            }
        }
        Ok(())
    }

    /// The events map's file descriptor is polled by the consumer; this takes
    /// the ring buffer out (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    pub fn pin_dir(&self) -> &Path {
        self.layout.root()
    }

    /// Detaches everything and removes every pin (see [`uninstall`]).
    pub fn uninstall(self) -> Result<Uninstalled, LoaderError> {
        let dir = self.layout.root().to_path_buf();
        drop(self);
        uninstall(&dir)
    }
}

/// What [`uninstall`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uninstalled {
    /// Links detached (tcx and tracepoint).
    pub links: usize,
    /// Whether there was anything pinned at all.
    pub existed: bool,
}

/// Removes a pinned datapath: detaches every pinned link (tcx links at
/// once, with `BPF_LINK_DETACH`, even if some process still holds them),
/// then removes every pin, maps and programs included. The only way a
/// datapath stops (a collector exiting leaves it in force).
pub fn uninstall(pin_dir: &Path) -> Result<Uninstalled, LoaderError> {
    if !pin_dir.exists() {
        return Ok(Uninstalled::default());
    }
    let layout = PinLayout::new(pin_dir);
    let mut links = 0;
    if let Ok(entries) = fs::read_dir(layout.links_dir()) {
        for entry in entries.flatten() {
            detach_pinned(&entry.path())?;
            links += 1;
        }
    }
    remove_tree(pin_dir)?;
    Ok(Uninstalled { links, existed: true })
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

/// Sightline's tc programs attached in the network namespace at `netns`,
/// as `interface/hook/program` (for checking that an uninstall left none).
pub fn attached_in(netns: &Path) -> Result<Vec<String>, LoaderError> {
    let found = in_netns(netns, || {
        let mut found = Vec::new();
        for ifname in interface_names() {
            for direction in TcDirection::BOTH {
                let Ok((_, programs)) = SchedClassifier::query_tcx(&ifname, attach_type(direction)) else { continue };
                for p in programs {
                    let name = p.name_as_str().unwrap_or_default();
                    if ALL_PROGRAMS.contains(&name) {
                        found.push(format!("{ifname}/{}/{name}", direction.as_str()));
                    }
                }
            }
        }
        found
    })
    .map_err(|source| LoaderError::Netns { path: netns.to_path_buf(), source })?;
    Ok(found)
}

/// Names of the interfaces of the calling thread's network namespace.
fn interface_names() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry (or
    // null), freed below with if_freenameindex.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            names.push(std::ffi::CStr::from_ptr((*p).if_name).to_string_lossy().into_owned());
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pins::Reload;

    /// A network namespace of this test's own (loopback only), removed on drop.
    struct Netns(String);

    impl Netns {
        fn new(name: &str) -> Option<Self> {
            let ok = std::process::Command::new("ip").args(["netns", "add", name]).status().is_ok_and(|s| s.success());
            ok.then(|| Self(name.to_owned()))
        }
        fn path(&self) -> PathBuf {
            PathBuf::from(format!("/run/netns/{}", self.0))
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    fn opts(dir: &Path, netns: &Path, reload: Reload) -> ProbeOptions {
        ProbeOptions {
            pin_dir: dir.to_path_buf(),
            config: default_config(abi::AGGREGATION_MEDIUM),
            kernel_offsets: None,
            node_netns: Some(netns.to_path_buf()),
            reload,
        }
    }

    /// Install, adopt, replace the programs, replace everything, adopt
    /// again, uninstall: with a real kernel, a link on the loopback device
    /// of a namespace of the test's own.
    #[test]
    #[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
    fn installs_adopts_replaces_and_uninstalls() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
        assert!(!PROBES.is_empty(), "the probes were not built (AYA_BUILD_SKIP?)");
        let id = std::process::id();
        let ns = Netns::new(&format!("sl-unit-{id}")).expect("a network namespace of the test's own");
        let dir = PathBuf::from(format!("/sys/fs/bpf/sightline/unit-{id}/node"));
        let result = std::panic::catch_unwind(|| lifecycle(&dir, &ns.path()));
        let _ = uninstall(&dir);
        let _ = fs::remove_dir(dir.parent().unwrap());
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        assert!(!dir.exists());
    }

    fn lifecycle(dir: &Path, netns: &Path) {
        let layout = PinLayout::new(dir);
        let key = CtKey { src_addr: [10, 0, 0, 1], dst_addr: [10, 0, 0, 2], src_port: 1, dst_port: 2, protocol: 6, _pad: [0; 3] };
        let ep = EndpointKey { addr: [10, 0, 0, 1] };
        {
            let mut p = Probes::load(&opts(dir, netns, Reload::None)).unwrap();
            assert_eq!(p.start(), &Start::Installed);
            p.attach(netns, "lo").unwrap();
            p.endpoints.insert(ep, EndpointInfo { ifindex: 1, identity: 300, endpoint_id: 1, ..EndpointInfo::default() }, 0).unwrap();
            p.ct.insert(key, CtEntry { expires_ns: u64::MAX, ..CtEntry::default() }, 0).unwrap();
            p.set_config(Config { policy_revision: 5, ..p.current_config }).unwrap();
            p.record_lost_reported(&[7]).unwrap();
        }
        // The process "exited": everything is still pinned and attached.
        for path in [layout.meta(), layout.map(abi::maps::CT), layout.prog(abi::programs::FROM_CONTAINER), layout.tc_link("lo", TcDirection::Ingress), layout.tc_link("lo", TcDirection::Egress)] {
            assert!(path.exists(), "{} is gone", path.display());
        }
        assert_eq!(attached_in(netns).unwrap().len(), 2);
        {
            let mut p = Probes::load(&opts(dir, netns, Reload::None)).unwrap();
            assert!(matches!(p.start(), Start::Adopted { links: 2, defunct, previous_adoptions: 0 } if defunct.is_empty()), "{:?}", p.start());
            assert!(p.ct.get(&key, 0).is_ok(), "conntrack adopted");
            assert!(p.gc_in_kernel(), "the garbage collector adopted from its pin");
            assert_eq!(p.ct_collect(1_000), (1, 0), "a live connection is kept");
            assert_eq!(p.policy_revision(), 5, "the pinned revision goes on");
            assert_eq!(p.lost_baseline()[0], 7);
            let plan = crate::datapath::current(&p, 0);
            assert_eq!(plan.endpoints.len(), 1);
            assert!(plan.interfaces.contains("lo"));
        }
        let link_ids = || {
            in_netns(netns, || SchedClassifier::query_tcx("lo", TcAttachType::Ingress).map(|(_, p)| p.iter().map(|i| i.id()).collect::<Vec<_>>()))
                .unwrap()
                .unwrap()
        };
        let before = link_ids();
        {
            let p = Probes::load(&opts(dir, netns, Reload::Programs)).unwrap();
            assert!(matches!(p.start(), Start::Replaced { recreated, staged: false, .. } if recreated.is_empty()), "{:?}", p.start());
            assert!(p.ct.get(&key, 0).is_ok(), "maps kept");
            assert!(!p.replacement_pending());
        }
        let after = link_ids();
        assert_eq!(after.len(), 1, "one program on the hook, never two or none");
        assert_ne!(before, after, "a new program in the same link");
        assert!(!layout.next_dir().exists());
        {
            let mut p = Probes::load(&opts(dir, netns, Reload::All)).unwrap();
            assert!(matches!(p.start(), Start::Replaced { recreated, staged: true, .. } if recreated.len() == ALL_MAPS.len()), "{:?}", p.start());
            assert!(p.ct.get(&key, 0).is_err(), "a new, empty conntrack");
            // The old programs stay in force until the new maps are filled.
            assert_eq!(link_ids(), after);
            assert!(p.replacement_pending());
            assert!(p.commit().unwrap().is_some());
            assert_ne!(link_ids(), after);
            // The new garbage collector works on the new conntrack map.
            p.ct.insert(key, CtEntry { expires_ns: 10, ..CtEntry::default() }, 0).unwrap();
            assert_eq!(p.ct_collect(1_000), (0, 1));
            assert_eq!(p.lost_baseline()[0], 0, "a new COUNTERS map starts a new count");
            assert!(!layout.next_dir().exists());
        }
        {
            let mut p = Probes::load(&opts(dir, netns, Reload::None)).unwrap();
            assert!(matches!(p.start(), Start::Adopted { .. }), "{:?}", p.start());
            assert!(p.gc_in_kernel(), "the replacement's garbage collector was pinned in place");
            let MetaState::Present(meta) = read_meta(&layout) else { panic!("no meta") };
            assert_eq!(meta.abi_version, u32::from(abi::ABI_VERSION));
            assert_eq!(meta.adoptions, 1);
        }
        let removed = uninstall(dir).unwrap();
        assert_eq!(removed, Uninstalled { links: 2, existed: true });
        assert!(attached_in(netns).unwrap().is_empty(), "uninstall detached everything");
    }
}
