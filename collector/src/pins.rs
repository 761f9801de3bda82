//! The pinned datapath: where a node's programs, maps and links live in the
//! BPF filesystem, the small `meta` record beside them, and what a starting
//! collector decides from what it finds there.
//!
//! The datapath belongs to the kernel, not to the collector: every map,
//! program and link is pinned, so a collector that exits (SIGTERM, SIGKILL,
//! panic) leaves forwarding and enforcement as they were. Only an explicit
//! uninstall (`lab down`, `sightline collector --uninstall`) removes pins.
//!
//! ```text
//! <pin dir>/                  /sys/fs/bpf/sightline/<lab>/<node> in a lab
//!   meta                      array map, one PinMeta (ABI version, object hash, …)
//!   lost_reported             array map, one u64 per CPU: ring-buffer losses
//!                             already reported to clients and metrics
//!   maps/<MAP>                every map of the probes (EVENTS, CT, POLICY, …)
//!   progs/<program>           from_container, to_container, kfree_skb
//!   links/<ifname>-ingress    tcx link of from_container on a pod's host-side veth
//!   links/<ifname>-egress     tcx link of to_container on the same veth
//!   links/kfree_skb           perf link of the skb:kfree_skb tracepoint
//!   next/maps/<MAP>           a replacement being staged: new maps and
//!   next/progs/<program>      programs, moved into place once they are in force
//! ```
//!
//! The decision ([`decide`]) is pure: it compares the pinned `meta` and map
//! layouts with the embedded object's, so it is unit-tested without a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sightline_abi as abi;

/// Paths of everything pinned for one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

/// The two tcx hooks of a pod's host-side veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcDirection {
    /// Packets leaving the pod: `from_container`.
    Ingress,
    /// Packets the node's stack delivers to the pod: `to_container`.
    Egress,
}

impl TcDirection {
    pub const BOTH: [Self; 2] = [Self::Ingress, Self::Egress];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }

    /// The program attached on this hook.
    #[must_use]
    pub const fn program(self) -> &'static str {
        match self {
            Self::Ingress => abi::programs::FROM_CONTAINER,
            Self::Egress => abi::programs::TO_CONTAINER,
        }
    }
}

/// The program on hook `direction` of `ifname`: the tunnel device's
/// ingress takes the overlay's receive path, every other device (a pod's)
/// `from_container` and `to_container`.
#[must_use]
pub fn program_for(ifname: &str, direction: TcDirection) -> &'static str {
    if direction == TcDirection::Ingress && crate::state::TUNNEL_DEVICES.contains(&ifname) {
        abi::programs::FROM_OVERLAY
    } else {
        direction.program()
    }
}

/// What a file under `links/` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkPin {
    Tc { ifname: String, direction: TcDirection },
    Tracepoint,
}

/// The file name under `links/` of the tracepoint's link.
pub const TRACEPOINT_LINK: &str = abi::programs::KFREE_SKB;

/// Parses a file name under `links/`; `None` for anything else.
#[must_use]
pub fn parse_link_name(name: &str) -> Option<LinkPin> {
    if name == TRACEPOINT_LINK {
        return Some(LinkPin::Tracepoint);
    }
    let (ifname, hook) = name.rsplit_once('-')?;
    let direction = match hook {
        "ingress" => TcDirection::Ingress,
        "egress" => TcDirection::Egress,
        _ => return None,
    };
    // Linux interface names: 1..=15 bytes, no '/' (and never empty).
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains('/') {
        return None;
    }
    Some(LinkPin::Tc { ifname: ifname.to_owned(), direction })
}

impl PinLayout {
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    #[must_use]
    pub fn meta(&self) -> PathBuf {
        self.root.join("meta")
    }

    #[must_use]
    pub fn lost_reported(&self) -> PathBuf {
        self.root.join("lost_reported")
    }

    #[must_use]
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    #[must_use]
    pub fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }

    #[must_use]
    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }

    #[must_use]
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    #[must_use]
    pub fn tc_link(&self, ifname: &str, direction: TcDirection) -> PathBuf {
        self.links_dir().join(format!("{ifname}-{}", direction.as_str()))
    }

    #[must_use]
    pub fn tracepoint_link(&self) -> PathBuf {
        self.links_dir().join(TRACEPOINT_LINK)
    }

    /// Where a replacement is staged until it is in force.
    #[must_use]
    pub fn next_dir(&self) -> PathBuf {
        self.root.join("next")
    }

    #[must_use]
    pub fn next_map(&self, name: &str) -> PathBuf {
        self.next_dir().join("maps").join(name)
    }

    #[must_use]
    pub fn next_prog(&self, name: &str) -> PathBuf {
        self.next_dir().join("progs").join(name)
    }
}

/// `PinMeta::magic`: "SLPINMET" little-endian.
pub const META_MAGIC: u64 = u64::from_le_bytes(*b"SLPINMET");
/// Layout of [`PinMeta`] itself. It never changes meaning; a new layout
/// gets a new number (and an older collector then replaces, never misreads).
pub const META_VERSION: u32 = 1;

/// The one entry of the pinned `meta` array map: what the pinned datapath
/// is, so that a starting collector knows whether it may adopt it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinMeta {
    /// [`META_MAGIC`].
    pub magic: u64,
    /// [`META_VERSION`].
    pub meta_version: u32,
    /// `sightline_abi::ABI_VERSION` of the programs and maps in force.
    pub abi_version: u32,
    /// FNV-1a 64 of the eBPF object the programs in force were loaded from.
    pub object_hash: u64,
    /// Id of the `COUNTERS` map that `lost_reported` refers to (a new
    /// `COUNTERS` starts from zero, and so does what was reported of it).
    pub counters_map_id: u32,
    pub _pad: u32,
    /// When the programs in force were installed (Unix seconds).
    pub installed_unix_s: u64,
    /// How many collectors adopted this datapath since it was installed.
    pub adoptions: u64,
}
const _: () = assert!(core::mem::size_of::<PinMeta>() == 48);

// SAFETY: `repr(C)`, `Copy`, integers only, explicit padding: any bit
// pattern is a valid value.
unsafe impl aya::Pod for PinMeta {}

impl PinMeta {
    /// A record for programs of this build.
    #[must_use]
    pub fn new(object_hash: u64, counters_map_id: u32, installed_unix_s: u64) -> Self {
        Self {
            magic: META_MAGIC,
            meta_version: META_VERSION,
            abi_version: u32::from(abi::ABI_VERSION),
            object_hash,
            counters_map_id,
            _pad: 0,
            installed_unix_s,
            adoptions: 0,
        }
    }

    /// Whether this is a record this collector can read.
    #[must_use]
    pub fn is_readable(&self) -> bool {
        self.magic == META_MAGIC && self.meta_version == META_VERSION
    }
}

/// FNV-1a, 64 bits: a cheap fingerprint of the embedded eBPF object (not a
/// security measure; it tells one build's programs from another's).
#[must_use]
pub fn object_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shape of a map as the kernel sees it: a pinned map is adopted only
/// when its shape is exactly what the programs being run expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl fmt::Display for MapLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {} key {} value {} entries {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// `--reload`: force a replacement even when the pinned datapath could be
/// adopted as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reload {
    /// Adopt what can be adopted.
    #[default]
    None,
    /// Load the programs again and swap them into the links atomically;
    /// maps (and conntrack) are kept.
    Programs,
    /// Also recreate every map, as an ABI upgrade does (conntrack starts
    /// empty; desired state is written again by the first apply).
    All,
}

impl fmt::Display for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Programs => "programs",
            Self::All => "all",
        })
    }
}

impl FromStr for Reload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "programs" => Ok(Self::Programs),
            "all" => Ok(Self::All),
            _ => Err(format!("unknown reload {s:?}: valid values are none, programs and all")),
        }
    }
}

/// What the `meta` pin held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaState {
    Missing,
    /// Present but not a record this collector understands.
    Unreadable(String),
    Present(PinMeta),
}

/// What a starting collector found under its pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub meta: MetaState,
    /// Pinned maps and their shapes (a pin that is not a readable map is left out).
    pub maps: BTreeMap<String, MapLayout>,
    /// Pinned programs, by name.
    pub programs: BTreeSet<String>,
    /// Pinned links (of any kind).
    pub links: usize,
}

/// How the collector brings the datapath into force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is attached: (re)create everything from the embedded object.
    Install,
    /// The pinned datapath is this build's: take it over as it is.
    Adopt,
    /// Load this build's programs and swap them into the existing links
    /// atomically (`BPF_LINK_UPDATE`). Maps named in `recreate` cannot be
    /// adopted (layout or ABI changed): new ones are created, filled by the
    /// first apply, and the swap waits until then; the others are shared.
    Replace { recreate: BTreeSet<String>, reason: String },
}

/// Decides from `found` how to start, for an embedded object whose maps are
/// `wanted` and whose hash is `object_hash`.
#[must_use]
pub fn decide(found: &Found, wanted: &BTreeMap<String, MapLayout>, object_hash: u64, reload: Reload) -> Decision {
    let all = || wanted.keys().cloned().collect::<BTreeSet<_>>();
    let meta = match &found.meta {
        MetaState::Present(m) if m.is_readable() => *m,
        MetaState::Present(_) | MetaState::Unreadable(_) | MetaState::Missing => {
            if found.links == 0 {
                // Nothing runs from these pins (a collector that stopped
                // half-way through installing): start over.
                return Decision::Install;
            }
            let why = match &found.meta {
                MetaState::Missing => "no meta record".to_owned(),
                MetaState::Unreadable(e) => format!("unreadable meta record ({e})"),
                MetaState::Present(m) => format!("meta record of another format (version {})", m.meta_version),
            };
            return Decision::Replace { recreate: all(), reason: format!("{why} beside attached links") };
        }
    };
    let abi_changed = meta.abi_version != u32::from(abi::ABI_VERSION);
    if (abi_changed || reload == Reload::All) && found.links == 0 {
        // Nothing to keep in force while the new maps are filled.
        return Decision::Install;
    }
    if abi_changed {
        return Decision::Replace {
            recreate: all(),
            reason: format!("ABI version {} is pinned, this build has {}", meta.abi_version, abi::ABI_VERSION),
        };
    }
    if reload == Reload::All {
        return Decision::Replace { recreate: all(), reason: "--reload all".to_owned() };
    }
    let recreate: BTreeSet<String> =
        wanted.iter().filter(|(name, layout)| found.maps.get(*name) != Some(layout)).map(|(name, _)| name.clone()).collect();
    if !recreate.is_empty() {
        let names = recreate.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
        return Decision::Replace { recreate, reason: format!("map layout changed or missing: {names}") };
    }
    // The tracepoint's program is pinned only where it runs (kernel offsets).
    let programs_pinned =
        [abi::programs::FROM_CONTAINER, abi::programs::TO_CONTAINER, abi::programs::FROM_OVERLAY].iter().all(|p| found.programs.contains(*p));
    if meta.object_hash != object_hash {
        return Decision::Replace {
            recreate: BTreeSet::new(),
            reason: format!("programs changed (object {:016x} pinned, {object_hash:016x} built)", meta.object_hash),
        };
    }
    if !programs_pinned {
        return Decision::Replace { recreate: BTreeSet::new(), reason: "program pins are missing".to_owned() };
    }
    if reload == Reload::Programs {
        return Decision::Replace { recreate: BTreeSet::new(), reason: "--reload programs".to_owned() };
    }
    Decision::Adopt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(v: u32) -> MapLayout {
        MapLayout { map_type: 1, key_size: 4, value_size: v, max_entries: 16, flags: 0 }
    }

    fn wanted() -> BTreeMap<String, MapLayout> {
        BTreeMap::from([("CT".to_owned(), layout(80)), ("ENDPOINTS".to_owned(), layout(24))])
    }

    fn found(meta: MetaState, links: usize) -> Found {
        Found {
            meta,
            maps: wanted(),
            programs: [abi::programs::FROM_CONTAINER, abi::programs::TO_CONTAINER, abi::programs::FROM_OVERLAY, abi::programs::KFREE_SKB]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            links,
        }
    }

    fn meta(hash: u64) -> MetaState {
        MetaState::Present(PinMeta::new(hash, 7, 1))
    }

    #[test]
    fn lays_out_pins_under_the_node_dir() {
        let l = PinLayout::new("/sys/fs/bpf/sightline/lab/node-1");
        assert_eq!(l.map("CT"), Path::new("/sys/fs/bpf/sightline/lab/node-1/maps/CT"));
        assert_eq!(l.prog("from_container"), Path::new("/sys/fs/bpf/sightline/lab/node-1/progs/from_container"));
        assert_eq!(l.tc_link("lxc00001", TcDirection::Ingress), Path::new("/sys/fs/bpf/sightline/lab/node-1/links/lxc00001-ingress"));
        assert_eq!(l.tc_link("lxc00001", TcDirection::Egress), Path::new("/sys/fs/bpf/sightline/lab/node-1/links/lxc00001-egress"));
        assert_eq!(l.tracepoint_link(), Path::new("/sys/fs/bpf/sightline/lab/node-1/links/kfree_skb"));
        assert_eq!(l.meta(), Path::new("/sys/fs/bpf/sightline/lab/node-1/meta"));
        assert_eq!(l.next_map("CT"), Path::new("/sys/fs/bpf/sightline/lab/node-1/next/maps/CT"));
    }

    #[test]
    fn parses_link_pin_names() {
        assert_eq!(parse_link_name("lxc00001-ingress"), Some(LinkPin::Tc { ifname: "lxc00001".into(), direction: TcDirection::Ingress }));
        assert_eq!(parse_link_name("my-veth-egress"), Some(LinkPin::Tc { ifname: "my-veth".into(), direction: TcDirection::Egress }));
        assert_eq!(parse_link_name("kfree_skb"), Some(LinkPin::Tracepoint));
        assert_eq!(parse_link_name("-ingress"), None);
        assert_eq!(parse_link_name("lxc00001-sideways"), None);
        assert_eq!(parse_link_name("an-interface-name-too-long-ingress"), None);
        assert_eq!(parse_link_name("lxc00001"), None);
        // Every layout path parses back.
        let l = PinLayout::new("/p");
        for d in TcDirection::BOTH {
            let p = l.tc_link("lxc1", d);
            let name = p.file_name().unwrap().to_str().unwrap();
            assert_eq!(parse_link_name(name), Some(LinkPin::Tc { ifname: "lxc1".into(), direction: d }));
        }
    }

    #[test]
    fn meta_records_this_build() {
        let m = PinMeta::new(42, 9, 1_700_000_000);
        assert!(m.is_readable());
        assert_eq!(m.abi_version, u32::from(abi::ABI_VERSION));
        assert!(!PinMeta::default().is_readable());
        assert!(!PinMeta { meta_version: 2, ..m }.is_readable());
        assert_eq!(object_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(object_hash(b"a"), object_hash(b"b"));
        assert_eq!("programs".parse::<Reload>().unwrap(), Reload::Programs);
        assert!("everything".parse::<Reload>().unwrap_err().contains("programs"));
    }

    #[test]
    fn installs_when_nothing_is_attached() {
        assert_eq!(decide(&found(MetaState::Missing, 0), &wanted(), 1, Reload::None), Decision::Install);
        let empty = Found { meta: MetaState::Missing, maps: BTreeMap::new(), programs: BTreeSet::new(), links: 0 };
        assert_eq!(decide(&empty, &wanted(), 1, Reload::None), Decision::Install);
        assert_eq!(decide(&found(MetaState::Unreadable("short".into()), 0), &wanted(), 1, Reload::None), Decision::Install);
    }

    #[test]
    fn never_starts_over_under_attached_links() {
        // Links run from these pins: replace (atomically), never remove.
        for m in [MetaState::Missing, MetaState::Unreadable("bad".into()), MetaState::Present(PinMeta::default())] {
            match decide(&found(m, 3), &wanted(), 1, Reload::None) {
                Decision::Replace { recreate, .. } => assert_eq!(recreate.len(), 2),
                d => panic!("{d:?}"),
            }
        }
    }

    #[test]
    fn adopts_the_same_build() {
        assert_eq!(decide(&found(meta(5), 4), &wanted(), 5, Reload::None), Decision::Adopt);
        // With nothing attached yet too (a node without pods).
        assert_eq!(decide(&found(meta(5), 0), &wanted(), 5, Reload::None), Decision::Adopt);
    }

    #[test]
    fn replaces_programs_of_another_build_keeping_maps() {
        let d = decide(&found(meta(5), 4), &wanted(), 6, Reload::None);
        assert!(matches!(&d, Decision::Replace { recreate, reason } if recreate.is_empty() && reason.contains("programs changed")), "{d:?}");
        let d = decide(&found(meta(5), 4), &wanted(), 5, Reload::Programs);
        assert!(matches!(&d, Decision::Replace { recreate, .. } if recreate.is_empty()), "{d:?}");
        let mut f = found(meta(5), 4);
        f.programs.remove(abi::programs::TO_CONTAINER);
        assert!(matches!(decide(&f, &wanted(), 5, Reload::None), Decision::Replace { recreate, .. } if recreate.is_empty()));
    }

    #[test]
    fn recreates_maps_whose_layout_changed_only() {
        let mut f = found(meta(5), 4);
        f.maps.insert("CT".into(), layout(72));
        let d = decide(&f, &wanted(), 5, Reload::None);
        assert!(matches!(&d, Decision::Replace { recreate, reason } if recreate.iter().eq(["CT"]) && reason.contains("CT")), "{d:?}");
        f.maps.remove("ENDPOINTS");
        let d = decide(&f, &wanted(), 5, Reload::None);
        assert!(matches!(&d, Decision::Replace { recreate, .. } if recreate.len() == 2), "{d:?}");
    }

    #[test]
    fn recreates_every_map_across_abi_versions() {
        let mut m = PinMeta::new(5, 7, 1);
        m.abi_version += 1;
        let d = decide(&found(MetaState::Present(m), 4), &wanted(), 5, Reload::None);
        assert!(matches!(&d, Decision::Replace { recreate, reason } if recreate.len() == 2 && reason.contains("ABI")), "{d:?}");
        let d = decide(&found(meta(5), 4), &wanted(), 5, Reload::All);
        assert!(matches!(&d, Decision::Replace { recreate, .. } if recreate.len() == 2), "{d:?}");
        // Nothing attached: nothing to keep in force meanwhile.
        assert_eq!(decide(&found(MetaState::Present(m), 0), &wanted(), 5, Reload::None), Decision::Install);
    }
}
