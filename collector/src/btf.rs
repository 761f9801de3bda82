//! Kernel structure layouts, read from BTF at start-up.
//!
//! The `skb:kfree_skb` program reads the dropped packet's device, network
//! namespace and headers with `bpf_probe_read_kernel`, so it needs the byte
//! offsets of a few members of `struct sk_buff`, `struct net_device` and
//! `struct net` on the running kernel, and the offsets of the tracepoint's own
//! fields. This module finds them:
//!
//! * [`Btf`] is a small parser for the BTF binary format (as exposed in
//!   `/sys/kernel/btf/vmlinux`), enough to look up members of named structs
//!   and the values of named enums;
//! * [`tracepoint_fields`] parses a tracefs event `format` file;
//! * [`KernelLayout`] puts the two together into the
//!   [`KernelOffsets`] the collector writes into the probe's map, plus the
//!   names of the kernel's drop reasons (`enum skb_drop_reason`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use sightline_abi::KernelOffsets;

/// Where the running kernel exposes its own BTF.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Where tracefs is usually mounted, in order of preference.
const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// The tracepoint whose fields [`KernelLayout`] needs.
const KFREE_SKB: &str = "skb:kfree_skb";
/// Prefix stripped from the drop reason names.
const DROP_REASON_PREFIX: &str = "SKB_DROP_REASON_";

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_VERSION: u8 = 1;
/// Size of the header fields this parser knows (`hdr_len` may be larger).
const HEADER_LEN: usize = 24;
/// Bound on typedef chains and nested anonymous members, so that cyclic
/// (malformed) data ends in an error rather than a hang or a stack overflow.
const MAX_DEPTH: usize = 64;

// BTF kinds (`BTF_KIND_*` in include/uapi/linux/btf.h).
const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Why a layout could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// A file could not be read.
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kfree_skb format file was in none of the usual tracefs places.
    #[error(
        "reading the {KFREE_SKB} tracepoint format (tried {}; is tracefs mounted?)",
        join_paths(.tried)
    )]
    NoTracefs {
        tried: Vec<PathBuf>,
        #[source]
        source: io::Error,
    },
    /// The BTF data is not valid BTF (or uses a feature this parser lacks).
    #[error("malformed BTF: {what}")]
    Malformed { what: String },
    /// A tracefs event format file could not be parsed.
    #[error("malformed tracefs event format: {what}")]
    BadFormat { what: String },
    /// No type of the wanted kind has this name.
    #[error("BTF has no {kind} named `{name}`")]
    NoSuchType { kind: &'static str, name: String },
    /// The struct exists but has no such member (also not inside its
    /// anonymous struct/union members).
    #[error("`{struct_name}` has no member `{member}`")]
    NoSuchMember { struct_name: String, member: String },
    /// A member path tried to continue through something that is not a
    /// struct or union (pointers are not followed).
    #[error(
        "cannot look up `{member}` in `{struct_name}`: its type is not a struct or union \
         (pointers are not followed)"
    )]
    NotComposite { struct_name: String, member: String },
    /// The tracepoint format lacks a field.
    #[error("tracepoint {tracepoint} has no field `{field}`")]
    NoSuchField { tracepoint: String, field: String },
    /// A tracepoint field does not have the size the probe reads.
    #[error(
        "field `{field}` of tracepoint {tracepoint} is {size} bytes, the probe expects {expected}"
    )]
    FieldSize {
        tracepoint: String,
        field: String,
        size: u16,
        expected: u16,
    },
    /// An offset does not fit the probe's 16-bit offsets.
    #[error("offset of {what} is {offset}, too large for the probe's 16-bit offsets")]
    OffsetTooLarge { what: String, offset: u32 },
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn malformed(what: impl Into<String>) -> BtfError {
    BtfError::Malformed { what: what.into() }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_INT => "INT",
        KIND_PTR => "PTR",
        KIND_ARRAY => "ARRAY",
        KIND_STRUCT => "STRUCT",
        KIND_UNION => "UNION",
        KIND_ENUM => "ENUM",
        KIND_FWD => "FWD",
        KIND_TYPEDEF => "TYPEDEF",
        KIND_VOLATILE => "VOLATILE",
        KIND_CONST => "CONST",
        KIND_RESTRICT => "RESTRICT",
        KIND_FUNC => "FUNC",
        KIND_FUNC_PROTO => "FUNC_PROTO",
        KIND_VAR => "VAR",
        KIND_DATASEC => "DATASEC",
        KIND_FLOAT => "FLOAT",
        KIND_DECL_TAG => "DECL_TAG",
        KIND_TYPE_TAG => "TYPE_TAG",
        KIND_ENUM64 => "ENUM64",
        _ => "unknown kind",
    }
}

fn is_composite(kind: u8) -> bool {
    kind == KIND_STRUCT || kind == KIND_UNION
}

fn is_enum(kind: u8) -> bool {
    kind == KIND_ENUM || kind == KIND_ENUM64
}

/// A type's trailing data, kept only for the kinds this module looks into.
#[derive(Clone, Debug)]
enum Extra {
    None,
    Members(Vec<Member>),
    Enumerators(Vec<Enumerator>),
}

#[derive(Clone, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset from the start of the containing struct, in bits.
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Enumerator {
    name_off: u32,
    value: u64,
}

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u8,
    /// `size` for INT/STRUCT/UNION/ENUM/..., `type` for PTR/TYPEDEF/CONST/...
    size_or_type: u32,
    extra: Extra,
}

/// Reads little-endian values from the type section, front to back.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        let bytes = self.take(4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Bytes `start .. start + len` of `data`, where `start` is relative to `base`.
fn section<'a>(
    data: &'a [u8],
    base: usize,
    off: u32,
    len: u32,
    what: &str,
) -> Result<&'a [u8], BtfError> {
    let range = base
        .checked_add(off as usize)
        .and_then(|start| Some(start..start.checked_add(len as usize)?));
    range.and_then(|r| data.get(r)).ok_or_else(|| {
        malformed(format!(
            "{what} section (offset {off}, length {len} after a {base}-byte header) \
                 extends past the end of the {}-byte data",
            data.len()
        ))
    })
}

/// Parsed BTF type information: every type, its members and enumerators,
/// and an index of named structs, unions, enums and typedefs.
pub struct Btf {
    strings: Vec<u8>,
    /// `types[i]` has type id `i + 1`; id 0 is `void`.
    types: Vec<Type>,
    by_name: HashMap<String, Vec<u32>>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.types.len())
            .field("named", &self.by_name.len())
            .field("string_bytes", &self.strings.len())
            .finish()
    }
}

impl Btf {
    /// Reads and parses a BTF file, e.g. `/sys/kernel/btf/vmlinux`.
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Btf::from_bytes(&data)
    }

    /// Parses raw BTF data (header, type section, string section), as found
    /// in `/sys/kernel/btf/vmlinux`. Only little-endian data is accepted, and
    /// only standalone BTF (not split BTF that refers to a base).
    pub fn from_bytes(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < HEADER_LEN {
            return Err(malformed(format!(
                "{} bytes is too short for the {HEADER_LEN}-byte header",
                data.len()
            )));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic == BTF_MAGIC.swap_bytes() {
            return Err(malformed(
                "the data is big-endian; only little-endian BTF is supported",
            ));
        }
        if magic != BTF_MAGIC {
            return Err(malformed(format!(
                "bad magic {magic:#06x}, expected {BTF_MAGIC:#06x}"
            )));
        }
        let version = data[2];
        if version != BTF_VERSION {
            return Err(malformed(format!("unsupported version {version}")));
        }
        let header = |at| u32_at(data, at).ok_or_else(|| malformed("truncated header"));
        let hdr_len = header(4)?;
        let (type_off, type_len) = (header(8)?, header(12)?);
        let (str_off, str_len) = (header(16)?, header(20)?);
        if (hdr_len as usize) < HEADER_LEN || hdr_len as usize > data.len() {
            return Err(malformed(format!(
                "header length {hdr_len} is not between {HEADER_LEN} and the data length {}",
                data.len()
            )));
        }
        let base = hdr_len as usize;
        let type_section = section(data, base, type_off, type_len, "type")?;
        let strings = section(data, base, str_off, str_len, "string")?.to_vec();

        let types = parse_types(type_section)?;
        let mut btf = Btf {
            strings,
            types,
            by_name: HashMap::new(),
        };
        btf.index_names()?;
        Ok(btf)
    }

    fn index_names(&mut self) -> Result<(), BtfError> {
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (index, ty) in self.types.iter().enumerate() {
            let indexed = matches!(
                ty.kind,
                KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_TYPEDEF
            );
            if !indexed || ty.name_off == 0 {
                continue;
            }
            let name = self.string(ty.name_off)?;
            // Ids fit in u32: each type takes at least 12 of at most u32::MAX bytes.
            let id = (index + 1) as u32;
            by_name.entry(name.to_owned()).or_default().push(id);
        }
        self.by_name = by_name;
        Ok(())
    }

    /// The NUL-terminated string at `off` in the string section.
    fn string(&self, off: u32) -> Result<&str, BtfError> {
        if off == 0 && self.strings.is_empty() {
            return Ok("");
        }
        let rest = self
            .strings
            .get(off as usize..)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                malformed(format!(
                    "string offset {off} is outside the {}-byte string section",
                    self.strings.len()
                ))
            })?;
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(format!("string at offset {off} is not NUL-terminated")))?;
        std::str::from_utf8(&rest[..len])
            .map_err(|_| malformed(format!("string at offset {off} is not UTF-8")))
    }

    fn ty(&self, id: u32) -> Result<&Type, BtfError> {
        if id == 0 {
            return Err(malformed(
                "type id 0 (void) used where a real type is needed",
            ));
        }
        self.types.get(id as usize - 1).ok_or_else(|| {
            malformed(format!(
                "reference to type id {id}, but there are only {} types",
                self.types.len()
            ))
        })
    }

    /// Follows typedefs and qualifiers (const, volatile, restrict, type tags)
    /// to the underlying type. Pointers are not followed.
    fn resolve(&self, id: u32) -> Result<(u32, &Type), BtfError> {
        let mut current = id;
        for _ in 0..MAX_DEPTH {
            let ty = self.ty(current)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_CONST | KIND_VOLATILE | KIND_RESTRICT | KIND_TYPE_TAG => {
                    current = ty.size_or_type;
                }
                _ => return Ok((current, ty)),
            }
        }
        Err(malformed(format!(
            "the typedef/qualifier chain from type {id} is longer than {MAX_DEPTH} (cyclic?)"
        )))
    }

    /// Ids of the structs and unions called `name`, directly or through a
    /// typedef of that name.
    fn composites_named(&self, name: &str) -> Result<Vec<u32>, BtfError> {
        let mut found = Vec::new();
        for &id in self
            .by_name
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            // A typedef of this name may lead to void or to a broken chain;
            // it is then simply not a struct.
            let Ok((resolved, ty)) = self.resolve(id) else {
                continue;
            };
            if is_composite(ty.kind) && !found.contains(&resolved) {
                found.push(resolved);
            }
        }
        if found.is_empty() {
            return Err(BtfError::NoSuchType {
                kind: "struct or union",
                name: name.to_owned(),
            });
        }
        Ok(found)
    }

    /// Finds `member` in the struct/union `id`, looking into anonymous
    /// struct/union members. Returns its bit offset from the start of `id`
    /// and its type id.
    fn find_member(
        &self,
        id: u32,
        member: &str,
        depth: usize,
    ) -> Result<Option<(u64, u32)>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!(
                "anonymous members nested deeper than {MAX_DEPTH} (cyclic?)"
            )));
        }
        let Extra::Members(members) = &self.ty(id)?.extra else {
            return Ok(None);
        };
        for m in members {
            if self.string(m.name_off)? == member {
                return Ok(Some((u64::from(m.bit_offset), m.type_id)));
            }
        }
        for m in members {
            if !self.string(m.name_off)?.is_empty() {
                continue;
            }
            let (inner_id, inner) = self.resolve(m.type_id)?;
            if !is_composite(inner.kind) {
                continue;
            }
            if let Some((offset, type_id)) = self.find_member(inner_id, member, depth + 1)? {
                return Ok(Some((u64::from(m.bit_offset) + offset, type_id)));
            }
        }
        Ok(None)
    }

    /// Bit offset of `path` inside the struct/union `id`.
    fn path_bits(&self, id: u32, struct_name: &str, path: &[&str]) -> Result<u64, BtfError> {
        let mut current = id;
        let mut total = 0u64;
        let mut location = struct_name.to_owned();
        for (i, &member) in path.iter().enumerate() {
            let no_member = || BtfError::NoSuchMember {
                struct_name: location.clone(),
                member: member.to_owned(),
            };
            if member.is_empty() {
                return Err(no_member());
            }
            let (bits, type_id) = self
                .find_member(current, member, 0)?
                .ok_or_else(no_member)?;
            total += bits;
            location.push('.');
            location.push_str(member);
            if let Some(&next) = path.get(i + 1) {
                let (resolved, ty) = self.resolve(type_id)?;
                if !is_composite(ty.kind) {
                    return Err(BtfError::NotComposite {
                        struct_name: location,
                        member: next.to_owned(),
                    });
                }
                current = resolved;
            }
        }
        Ok(total)
    }

    /// Byte offset of a member of a named struct, looking through anonymous
    /// struct/union members (summing their offsets) and through typedefs.
    /// E.g. `member_offset("sk_buff", "dev")`.
    ///
    /// `struct_name` may name a struct, a union or a typedef of one. For a
    /// bitfield member this is the byte holding its first bit.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        self.member_path_offset(struct_name, &[member])
    }

    /// Byte offset of a path of members, following each member's type
    /// (through typedefs/const/volatile, NOT through pointers), e.g.
    /// `member_path_offset("net", &["ns", "inum"])`. Each step also looks
    /// through anonymous struct/union members, as [`Btf::member_offset`] does.
    ///
    /// If several structs share the name, the first one that has the whole
    /// path wins.
    pub fn member_path_offset(&self, struct_name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut first_error = None;
        for id in self.composites_named(struct_name)? {
            match self.path_bits(id, struct_name, path) {
                Ok(bits) => {
                    return u32::try_from(bits / 8).map_err(|_| {
                        malformed(format!(
                            "offset of {struct_name}.{} does not fit in 32 bits",
                            path.join(".")
                        ))
                    });
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| BtfError::NoSuchType {
            kind: "struct or union",
            name: struct_name.to_owned(),
        }))
    }

    /// Values and names of a named enum (ENUM or ENUM64), e.g.
    /// `enum_values("skb_drop_reason")`, in declaration order.
    ///
    /// Values of signed 32-bit enums are sign-extended (-1 becomes
    /// `u64::MAX`). If several enums share the name, the first non-empty one
    /// is used.
    pub fn enum_values(&self, enum_name: &str) -> Result<Vec<(u64, String)>, BtfError> {
        let mut chosen: Option<&Type> = None;
        for &id in self
            .by_name
            .get(enum_name)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let Ok((_, ty)) = self.resolve(id) else {
                continue;
            };
            if !is_enum(ty.kind) {
                continue;
            }
            let non_empty = matches!(&ty.extra, Extra::Enumerators(e) if !e.is_empty());
            if chosen.is_none() || non_empty {
                chosen = Some(ty);
            }
            if non_empty {
                break;
            }
        }
        let ty = chosen.ok_or_else(|| BtfError::NoSuchType {
            kind: "enum",
            name: enum_name.to_owned(),
        })?;
        let Extra::Enumerators(enumerators) = &ty.extra else {
            return Ok(Vec::new());
        };
        enumerators
            .iter()
            .map(|e| Ok((e.value, self.string(e.name_off)?.to_owned())))
            .collect()
    }
}

/// Parses the whole type section.
fn parse_types(section: &[u8]) -> Result<Vec<Type>, BtfError> {
    let mut cursor = Cursor {
        data: section,
        pos: 0,
    };
    let mut types = Vec::new();
    while cursor.remaining() > 0 {
        let id = types.len() + 1;
        let start = cursor.pos;
        let truncated = |kind: u8| {
            malformed(format!(
                "type section ends inside type {id} ({}, at byte {start})",
                kind_name(kind)
            ))
        };
        let (Some(name_off), Some(info), Some(size_or_type)) =
            (cursor.u32(), cursor.u32(), cursor.u32())
        else {
            return Err(truncated(0));
        };
        let vlen = (info & 0xffff) as usize;
        let kind = ((info >> 24) & 0x1f) as u8;
        let kind_flag = info >> 31 == 1;

        // Size of the data following `struct btf_type`.
        let trailing = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
            _ => {
                return Err(malformed(format!(
                    "type {id} (at byte {start} of the type section) has unknown kind {kind}"
                )));
            }
        };
        let body = cursor.take(trailing).ok_or_else(|| truncated(kind))?;
        let mut body = Cursor { data: body, pos: 0 };
        // The body has exactly the size read below, so these cannot fail.
        let mut next = || body.u32().unwrap_or(0);

        let extra = match kind {
            KIND_STRUCT | KIND_UNION => Extra::Members(
                (0..vlen)
                    .map(|_| {
                        let (name_off, type_id, offset) = (next(), next(), next());
                        // With kind_flag, the top 8 bits hold the bitfield size.
                        let bit_offset = if kind_flag {
                            offset & 0x00ff_ffff
                        } else {
                            offset
                        };
                        Member {
                            name_off,
                            type_id,
                            bit_offset,
                        }
                    })
                    .collect(),
            ),
            KIND_ENUM => Extra::Enumerators(
                (0..vlen)
                    .map(|_| {
                        let (name_off, raw) = (next(), next());
                        // kind_flag marks a signed enum.
                        let value = if kind_flag {
                            raw as i32 as i64 as u64
                        } else {
                            u64::from(raw)
                        };
                        Enumerator { name_off, value }
                    })
                    .collect(),
            ),
            KIND_ENUM64 => Extra::Enumerators(
                (0..vlen)
                    .map(|_| {
                        let (name_off, lo, hi) = (next(), next(), next());
                        Enumerator {
                            name_off,
                            value: (u64::from(hi) << 32) | u64::from(lo),
                        }
                    })
                    .collect(),
            ),
            _ => Extra::None,
        };
        types.push(Type {
            name_off,
            kind,
            size_or_type,
            extra,
        });
    }
    Ok(types)
}

/// Offsets of fields in a tracefs event format file (lines like
/// `\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;`). Returns
/// name -> (offset, size).
///
/// Array fields (`u8 saddr[4]`) are keyed by their bare name (`saddr`).
pub fn tracepoint_fields(format_text: &str) -> Result<BTreeMap<String, (u16, u16)>, BtfError> {
    let mut fields = BTreeMap::new();
    for (index, line) in format_text.lines().enumerate() {
        let line_no = index + 1;
        let bad = |what: &str| BtfError::BadFormat {
            what: format!("line {line_no} ({:?}): {what}", line.trim()),
        };
        let line = line.trim();
        if !line.starts_with("field:") {
            continue;
        }
        let (mut decl, mut offset, mut size) = (None, None, None);
        for part in line.split(';').map(str::trim) {
            let number = |text: &str, what: &str| {
                text.trim()
                    .parse::<u16>()
                    .map_err(|_| bad(&format!("{what} `{text}` is not a 16-bit number")))
            };
            if let Some(rest) = part.strip_prefix("field:") {
                decl = Some(rest);
            } else if let Some(rest) = part.strip_prefix("offset:") {
                offset = Some(number(rest, "offset")?);
            } else if let Some(rest) = part.strip_prefix("size:") {
                size = Some(number(rest, "size")?);
            }
        }
        let decl = decl.ok_or_else(|| bad("no field declaration"))?;
        let (Some(offset), Some(size)) = (offset, size) else {
            return Err(bad("missing offset or size"));
        };
        // The name is the last word of the declaration, without pointer
        // stars or an array suffix.
        let name = decl
            .split_whitespace()
            .next_back()
            .unwrap_or_default()
            .trim_start_matches('*');
        let name = name.split('[').next().unwrap_or_default();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad("cannot find the field name"));
        }
        fields.insert(name.to_owned(), (offset, size));
    }
    if fields.is_empty() {
        return Err(BtfError::BadFormat {
            what: "no `field:` lines".to_owned(),
        });
    }
    Ok(fields)
}

/// Everything the kfree_skb probe needs from this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    pub offsets: sightline_abi::KernelOffsets,
    /// Kernel drop reason value -> name without the `SKB_DROP_REASON_`
    /// prefix (e.g. 2 -> "NOT_SPECIFIED"), from `enum skb_drop_reason`.
    /// Names without the prefix (`SKB_CONSUMED`) are kept as they are.
    pub drop_reasons: BTreeMap<u32, String>,
}

impl KernelLayout {
    /// Reads `/sys/kernel/btf/vmlinux` and the kfree_skb format at
    /// `<tracefs>/events/skb/kfree_skb/format` (tracefs is
    /// /sys/kernel/tracing, fall back to /sys/kernel/debug/tracing).
    pub fn from_system() -> Result<KernelLayout, BtfError> {
        let btf = Btf::from_file(Path::new(VMLINUX_BTF))?;
        let format = read_kfree_skb_format()?;
        KernelLayout::from_sources(&btf, &format)
    }

    /// Computes the layout from parsed kernel BTF and the text of the
    /// kfree_skb tracepoint's format file.
    ///
    /// `dev_nd_net` is the offset of `net_device.nd_net.net` (the
    /// `struct net *` inside `possible_net_t`), so kernels built without
    /// network namespaces, whose `possible_net_t` is empty, are rejected.
    pub fn from_sources(btf: &Btf, kfree_skb_format: &str) -> Result<KernelLayout, BtfError> {
        let fields = tracepoint_fields(kfree_skb_format)?;
        // The probe reads a pointer, an unsigned short and an enum.
        let field = |name: &str, expected: u16| -> Result<u16, BtfError> {
            let &(offset, size) = fields.get(name).ok_or_else(|| BtfError::NoSuchField {
                tracepoint: KFREE_SKB.to_owned(),
                field: name.to_owned(),
            })?;
            if size != expected {
                return Err(BtfError::FieldSize {
                    tracepoint: KFREE_SKB.to_owned(),
                    field: name.to_owned(),
                    size,
                    expected,
                });
            }
            Ok(offset)
        };
        let narrow = |what: &str, offset: u32| {
            u16::try_from(offset).map_err(|_| BtfError::OffsetTooLarge {
                what: what.to_owned(),
                offset,
            })
        };
        let member = |s: &str, path: &[&str]| {
            let what = format!("{s}.{}", path.join("."));
            narrow(&what, btf.member_path_offset(s, path)?)
        };

        let mut offsets = KernelOffsets {
            valid: 1,
            tp_skbaddr: field("skbaddr", 8)?,
            tp_protocol: field("protocol", 2)?,
            tp_reason: field("reason", 4)?,
            skb_dev: member("sk_buff", &["dev"])?,
            skb_head: member("sk_buff", &["head"])?,
            skb_network_header: member("sk_buff", &["network_header"])?,
            skb_len: member("sk_buff", &["len"])?,
            dev_ifindex: member("net_device", &["ifindex"])?,
            dev_nd_net: member("net_device", &["nd_net", "net"])?,
            net_ns_inum: member("net", &["ns", "inum"])?,
            ..KernelOffsets::default()
        };

        let mut drop_reasons = BTreeMap::new();
        for (value, name) in btf.enum_values("skb_drop_reason")? {
            let Ok(value) = u32::try_from(value) else {
                continue;
            };
            let name = name.strip_prefix(DROP_REASON_PREFIX).unwrap_or(&name);
            drop_reasons.entry(value).or_insert_with(|| name.to_owned());
        }
        // The datapath's own drops (tc programs) are reported by the
        // datapath; the kfree_skb probe skips these reasons.
        let reason_of = |wanted: &str| {
            drop_reasons.iter().find(|(_, n)| n.as_str() == wanted).and_then(|(v, _)| u16::try_from(*v).ok()).unwrap_or(0)
        };
        offsets.reason_tc_ingress = reason_of("TC_INGRESS");
        offsets.reason_tc_egress = reason_of("TC_EGRESS");
        Ok(KernelLayout {
            offsets,
            drop_reasons,
        })
    }

    /// Name for a reason value, or `UNKNOWN(<n>)`.
    pub fn drop_reason_name(&self, reason: u32) -> String {
        match self.drop_reasons.get(&reason) {
            Some(name) => name.clone(),
            None => format!("UNKNOWN({reason})"),
        }
    }
}

/// Reads the kfree_skb format from the first tracefs location that has it.
fn read_kfree_skb_format() -> Result<String, BtfError> {
    let mut tried = Vec::new();
    let mut first_error = None;
    for root in TRACEFS_ROOTS {
        let path = Path::new(root).join("events/skb/kfree_skb/format");
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok(text),
            Err(err) => {
                first_error.get_or_insert(err);
                tried.push(path);
            }
        }
    }
    Err(BtfError::NoTracefs {
        tried,
        source: first_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes BTF the way pahole does, one type at a time; ids are handed
    /// out in order starting at 1.
    struct Writer {
        strings: Vec<u8>,
        types: Vec<u8>,
        next_id: u32,
    }

    impl Writer {
        fn new() -> Writer {
            Writer {
                strings: vec![0],
                types: Vec::new(),
                next_id: 1,
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn words(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        fn head(
            &mut self,
            name: &str,
            kind: u8,
            kind_flag: bool,
            vlen: u16,
            size_or_type: u32,
        ) -> u32 {
            let name_off = self.string(name);
            let info = u32::from(kind_flag) << 31 | u32::from(kind) << 24 | u32::from(vlen);
            self.words(&[name_off, info, size_or_type]);
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, KIND_INT, false, 0, size);
            self.words(&[size * 8]);
            id
        }

        fn simple(&mut self, kind: u8, name: &str, target: u32) -> u32 {
            self.head(name, kind, false, 0, target)
        }

        fn ptr(&mut self, target: u32) -> u32 {
            self.simple(KIND_PTR, "", target)
        }

        fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.simple(KIND_TYPEDEF, name, target)
        }

        /// Members are (name, type, bit offset, bitfield size); a non-zero
        /// bitfield size needs `kind_flag`.
        fn composite(
            &mut self,
            kind: u8,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let id = self.head(name, kind, kind_flag, members.len() as u16, size);
            for &(member, ty, bit_offset, bitfield_size) in members {
                let name_off = self.string(member);
                let offset = if kind_flag {
                    bitfield_size << 24 | bit_offset
                } else {
                    bit_offset
                };
                self.words(&[name_off, ty, offset]);
            }
            id
        }

        fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let members: Vec<_> = members.iter().map(|&(n, t, o)| (n, t, o, 0)).collect();
            self.composite(KIND_STRUCT, name, size, false, &members)
        }

        fn union(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let members: Vec<_> = members.iter().map(|&(n, t, o)| (n, t, o, 0)).collect();
            self.composite(KIND_UNION, name, size, false, &members)
        }

        fn enum32(&mut self, name: &str, signed: bool, values: &[(&str, i32)]) -> u32 {
            let id = self.head(name, KIND_ENUM, signed, values.len() as u16, 4);
            for &(n, v) in values {
                let name_off = self.string(n);
                self.words(&[name_off, v as u32]);
            }
            id
        }

        fn enum64(&mut self, name: &str, values: &[(&str, u64)]) -> u32 {
            let id = self.head(name, KIND_ENUM64, false, values.len() as u16, 8);
            for &(n, v) in values {
                let name_off = self.string(n);
                self.words(&[name_off, v as u32, (v >> 32) as u32]);
            }
            id
        }

        /// One of every kind this module does not look into, so that their
        /// trailing data must be skipped correctly.
        fn other_kinds(&mut self, int: u32) {
            let index = self.int("__ARRAY_SIZE_TYPE__", 4);
            self.head("", KIND_ARRAY, false, 0, 0);
            self.words(&[int, index, 16]);
            let proto = self.head("", KIND_FUNC_PROTO, false, 2, int);
            self.words(&[self.strings.len() as u32, 0, 0, int]);
            self.string("a");
            let func = self.simple(KIND_FUNC, "do_thing", proto);
            let var = self.head("some_var", KIND_VAR, false, 0, int);
            self.words(&[1]);
            self.head(".data", KIND_DATASEC, false, 2, 16);
            self.words(&[var, 0, 4, var, 8, 4]);
            self.head("double", KIND_FLOAT, false, 0, 8);
            self.head("nonnull", KIND_DECL_TAG, false, 0, func);
            self.words(&[u32::MAX]);
            self.simple(KIND_TYPE_TAG, "user", int);
            self.simple(KIND_FWD, "opaque", 0);
            let p = self.ptr(int);
            self.simple(KIND_RESTRICT, "", p);
            self.simple(KIND_VOLATILE, "", int);
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.extend_from_slice(&[BTF_VERSION, 0]);
            let type_len = self.types.len() as u32;
            let str_len = self.strings.len() as u32;
            for w in [HEADER_LEN as u32, 0, type_len, type_len, str_len] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// Byte offsets used in the kernel-like BTF below.
    const DEV: u32 = 16;
    const LEN: u32 = 112;
    const NETWORK_HEADER: u32 = 180;
    const HEAD: u32 = 200;
    const IFINDEX: u32 = 224;
    const ND_NET: u32 = 272;
    const NS: u32 = 96;
    const INUM: u32 = 24;

    /// A miniature kernel: sk_buff with its dev inside anonymous unions and
    /// structs and bitfields, net_device with a possible_net_t, struct net
    /// whose ns reaches ns_common through a typedef chain, and the drop
    /// reason enum.
    fn kernel_like() -> Writer {
        let mut w = Writer::new();
        let uchar = w.int("unsigned char", 1);
        let ushort = w.int("short unsigned int", 2);
        let uint = w.int("unsigned int", 4);
        let int = w.int("int", 4);
        let ulong = w.int("long unsigned int", 8);
        w.other_kinds(int);
        let u16_t = w.typedef("__u16", ushort);
        let u32_inner = w.typedef("__u32", uint);
        let u32_t = w.typedef("u32", u32_inner);

        let dev_fwd = w.simple(KIND_FWD, "net_device", 0);
        let dev_ptr = w.ptr(dev_fwd);
        let skb_fwd = w.simple(KIND_FWD, "sk_buff", 0);
        let skb_ptr = w.ptr(skb_fwd);
        let net_fwd = w.simple(KIND_FWD, "net", 0);
        let net_ptr = w.ptr(net_fwd);
        let uchar_ptr = w.ptr(uchar);

        let rb_node = w.strukt("rb_node", 24, &[("rb_left", skb_ptr, 64)]);
        let dev_union = w.union("", 8, &[("dev", dev_ptr, 0), ("dev_scratch", ulong, 0)]);
        let list = w.strukt(
            "",
            24,
            &[
                ("next", skb_ptr, 0),
                ("prev", skb_ptr, 64),
                ("", dev_union, 128),
            ],
        );
        let outer = w.union("", 24, &[("", list, 0), ("rbnode", rb_node, 0)]);
        let headers = w.strukt(
            "",
            32,
            &[("mac_header", u16_t, 0), ("network_header", u16_t, 16)],
        );
        w.composite(
            KIND_STRUCT,
            "sk_buff",
            232,
            true,
            &[
                ("", outer, 0, 0),
                ("len", uint, LEN * 8, 0),
                ("cloned", uchar, 1008, 1),
                ("nohdr", uchar, 1009, 1),
                ("fclone", uchar, 1010, 2),
                ("pkt_type", uchar, 1020, 3),
                ("queue_mapping", ushort, 1024, 0),
                ("", headers, (NETWORK_HEADER - 2) * 8, 0),
                ("head", uchar_ptr, HEAD * 8, 0),
            ],
        );

        let anon_ns = w.strukt("", 8, &[("inum", uint, 0), ("pad", uint, 32)]);
        let ns_common = w.strukt(
            "ns_common",
            32,
            &[("stashed", ulong, 0), ("", anon_ns, INUM * 8)],
        );
        // ns: const ns_t, ns_t -> ns_common_t -> struct ns_common.
        let ns_td1 = w.typedef("ns_common_t", ns_common);
        let ns_td2 = w.typedef("ns_t", ns_td1);
        let ns_const = w.simple(KIND_CONST, "", ns_td2);
        w.strukt(
            "net",
            256,
            &[
                ("passive", u32_t, 0),
                ("ifindex", int, 32),
                ("ns", ns_const, NS * 8),
            ],
        );

        let possible = w.strukt("", 8, &[("net", net_ptr, 0)]);
        let possible_t = w.typedef("possible_net_t", possible);
        let name_array = w.head("", KIND_ARRAY, false, 0, 0);
        w.words(&[uchar, int, 16]);
        w.strukt(
            "net_device",
            512,
            &[
                ("name", name_array, 0),
                ("ifindex", int, IFINDEX * 8),
                ("nd_net", possible_t, ND_NET * 8),
            ],
        );

        w.enum32(
            "skb_drop_reason",
            false,
            &[
                ("SKB_NOT_DROPPED_YET", 0),
                ("SKB_CONSUMED", 1),
                ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
                ("SKB_DROP_REASON_NO_SOCKET", 3),
                ("SKB_DROP_REASON_MAX", 4),
            ],
        );
        w.enum32("signed_thing", true, &[("MINUS_ONE", -1), ("SEVEN", 7)]);
        w.enum64(
            "wide",
            &[("SMALL", 5), ("BIG", 1 << 40), ("HUGE", u64::MAX)],
        );
        // An empty forward enum with the same name must not hide the real one.
        w.enum32("wide", false, &[]);
        w
    }

    /// The kfree_skb format file of a 6.18 kernel (print fmt shortened).
    const KFREE_SKB_FORMAT: &str = "name: kfree_skb
ID: 2310
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;

print fmt: \"skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s\", REC->skbaddr, REC->rx_sk, REC->protocol, REC->location, __print_symbolic(REC->reason, { 2, \"NOT_SPECIFIED\" }, { 3, \"NO_SOCKET\" }, { 4, \"SOCKET_CLOSE\" }, { 128, \"MAX\" })
";

    fn parsed() -> Btf {
        Btf::from_bytes(&kernel_like().build()).expect("the test BTF parses")
    }

    #[test]
    fn member_inside_anonymous_unions_and_structs() {
        let btf = parsed();
        assert_eq!(btf.member_offset("sk_buff", "dev").unwrap(), DEV);
        assert_eq!(btf.member_offset("sk_buff", "dev_scratch").unwrap(), DEV);
        assert_eq!(btf.member_offset("sk_buff", "prev").unwrap(), 8);
        assert_eq!(btf.member_offset("sk_buff", "rbnode").unwrap(), 0);
        assert_eq!(
            btf.member_offset("sk_buff", "network_header").unwrap(),
            NETWORK_HEADER
        );
        assert_eq!(btf.member_offset("sk_buff", "head").unwrap(), HEAD);
        assert_eq!(btf.member_offset("sk_buff", "len").unwrap(), LEN);
        // Path steps look through anonymous members as well.
        assert_eq!(
            btf.member_path_offset("sk_buff", &["rbnode", "rb_left"])
                .unwrap(),
            8
        );
    }

    #[test]
    fn bitfield_members_with_kind_flag() {
        let btf = parsed();
        // Bits 1008..1010 are in byte 126; pkt_type starts at bit 1020 (byte 127).
        assert_eq!(btf.member_offset("sk_buff", "cloned").unwrap(), 126);
        assert_eq!(btf.member_offset("sk_buff", "fclone").unwrap(), 126);
        assert_eq!(btf.member_offset("sk_buff", "pkt_type").unwrap(), 127);
        // A plain member after the bitfields, still in a kind_flag struct.
        assert_eq!(btf.member_offset("sk_buff", "queue_mapping").unwrap(), 128);
    }

    #[test]
    fn typedef_chains() {
        let btf = parsed();
        // ns is `const ns_t`, ns_t -> ns_common_t -> struct ns_common, and
        // inum is in an anonymous struct of ns_common.
        assert_eq!(
            btf.member_path_offset("net", &["ns", "inum"]).unwrap(),
            NS + INUM
        );
        // A struct known only by its typedef name.
        assert_eq!(btf.member_offset("possible_net_t", "net").unwrap(), 0);
        assert_eq!(btf.member_offset("ns_t", "inum").unwrap(), INUM);
        assert_eq!(
            btf.member_path_offset("net_device", &["nd_net", "net"])
                .unwrap(),
            ND_NET
        );
        assert_eq!(
            btf.member_path_offset("net_device", &["nd_net"]).unwrap(),
            ND_NET
        );
        assert_eq!(btf.member_path_offset("net", &[]).unwrap(), 0);
    }

    #[test]
    fn paths_do_not_follow_pointers() {
        let btf = parsed();
        let err = btf
            .member_path_offset("sk_buff", &["dev", "ifindex"])
            .unwrap_err();
        match &err {
            BtfError::NotComposite {
                struct_name,
                member,
            } => {
                assert_eq!(struct_name, "sk_buff.dev");
                assert_eq!(member, "ifindex");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(
            err.to_string().contains("pointers are not followed"),
            "{err}"
        );
    }

    #[test]
    fn enums() {
        let btf = parsed();
        let reasons = btf.enum_values("skb_drop_reason").unwrap();
        assert_eq!(reasons.len(), 5);
        assert_eq!(reasons[3], (3, "SKB_DROP_REASON_NO_SOCKET".to_owned()));
        assert_eq!(
            btf.enum_values("signed_thing").unwrap(),
            vec![(u64::MAX, "MINUS_ONE".to_owned()), (7, "SEVEN".to_owned())]
        );
        assert_eq!(
            btf.enum_values("wide").unwrap(),
            vec![
                (5, "SMALL".to_owned()),
                (1 << 40, "BIG".to_owned()),
                (u64::MAX, "HUGE".to_owned())
            ]
        );
    }

    #[test]
    fn kernel_layout_from_sources() {
        let layout = KernelLayout::from_sources(&parsed(), KFREE_SKB_FORMAT).unwrap();
        let expected = KernelOffsets {
            valid: 1,
            tp_skbaddr: 8,
            tp_protocol: 32,
            tp_reason: 36,
            skb_dev: DEV as u16,
            skb_head: HEAD as u16,
            skb_network_header: NETWORK_HEADER as u16,
            skb_len: LEN as u16,
            dev_ifindex: IFINDEX as u16,
            dev_nd_net: ND_NET as u16,
            net_ns_inum: (NS + INUM) as u16,
            ..KernelOffsets::default()
        };
        assert_eq!(layout.offsets, expected);
        assert_eq!(layout.drop_reason_name(3), "NO_SOCKET");
        assert_eq!(layout.drop_reason_name(2), "NOT_SPECIFIED");
        assert_eq!(layout.drop_reason_name(1), "SKB_CONSUMED");
        assert_eq!(layout.drop_reason_name(999), "UNKNOWN(999)");
        assert_eq!(layout.drop_reasons.len(), 5);
    }

    #[test]
    fn unknown_struct_and_member() {
        let btf = parsed();
        match btf.member_offset("no_such_struct", "dev").unwrap_err() {
            BtfError::NoSuchType { name, .. } => assert_eq!(name, "no_such_struct"),
            other => panic!("unexpected error {other:?}"),
        }
        // An enum is not a struct, a struct is not an enum.
        assert!(matches!(
            btf.member_offset("skb_drop_reason", "x"),
            Err(BtfError::NoSuchType { .. })
        ));
        assert!(matches!(
            btf.enum_values("sk_buff"),
            Err(BtfError::NoSuchType { .. })
        ));
        assert!(matches!(
            btf.enum_values("nothing"),
            Err(BtfError::NoSuchType { .. })
        ));
        let err = btf.member_offset("sk_buff", "no_such_member").unwrap_err();
        match &err {
            BtfError::NoSuchMember {
                struct_name,
                member,
            } => {
                assert_eq!(struct_name, "sk_buff");
                assert_eq!(member, "no_such_member");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(err.to_string(), "`sk_buff` has no member `no_such_member`");
        // The empty name must not match anonymous members.
        assert!(matches!(
            btf.member_offset("sk_buff", ""),
            Err(BtfError::NoSuchMember { .. })
        ));
        match btf.member_path_offset("net", &["ns", "nope"]).unwrap_err() {
            BtfError::NoSuchMember {
                struct_name,
                member,
            } => {
                assert_eq!(struct_name, "net.ns");
                assert_eq!(member, "nope");
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn truncated_data_is_an_error_at_every_length() {
        let full = kernel_like().build();
        for len in 0..full.len() {
            match Btf::from_bytes(&full[..len]) {
                Err(BtfError::Malformed { .. }) => {}
                other => panic!("{len} of {} bytes: {other:?}", full.len()),
            }
        }
    }

    #[test]
    fn truncated_type_section_is_an_error() {
        // Sections consistent with the header, but the last type is cut short.
        let mut w = Writer::new();
        let int = w.int("int", 4);
        w.strukt("s", 8, &[("a", int, 0), ("b", int, 32)]);
        let full_types = w.types.clone();
        for cut in 1..=12 {
            w.types = full_types[..full_types.len() - cut].to_vec();
            let err = Btf::from_bytes(&w.build()).unwrap_err();
            assert!(err.to_string().contains("ends inside type 2"), "{err}");
        }
    }

    #[test]
    fn bad_header() {
        let good = kernel_like().build();
        let mut bad = good.clone();
        bad[0] = 0x12;
        let err = Btf::from_bytes(&bad).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");

        let mut swapped = good.clone();
        swapped.swap(0, 1);
        let err = Btf::from_bytes(&swapped).unwrap_err();
        assert!(err.to_string().contains("big-endian"), "{err}");

        let mut version = good.clone();
        version[2] = 2;
        assert!(Btf::from_bytes(&version).is_err());

        let mut hdr_len = good.clone();
        hdr_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::from_bytes(&hdr_len).is_err());

        let mut sections = good;
        sections[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::from_bytes(&sections).is_err());
    }

    #[test]
    fn bad_types_and_strings() {
        // Unknown kind.
        let mut w = Writer::new();
        w.head("x", 25, false, 0, 0);
        let err = Btf::from_bytes(&w.build()).unwrap_err();
        assert!(err.to_string().contains("unknown kind 25"), "{err}");

        // Name outside the string section.
        let mut w = Writer::new();
        w.words(&[1000, u32::from(KIND_STRUCT) << 24, 0]);
        assert!(Btf::from_bytes(&w.build()).is_err());

        // Unterminated string.
        let mut w = Writer::new();
        w.strukt("abc", 0, &[]);
        w.strings.pop();
        let err = Btf::from_bytes(&w.build()).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");

        // Dangling and void member types: errors at lookup, not panics.
        let mut w = Writer::new();
        w.strukt("s", 8, &[("", 77, 0), ("", 0, 0)]);
        let btf = Btf::from_bytes(&w.build()).unwrap();
        assert!(matches!(
            btf.member_offset("s", "x"),
            Err(BtfError::Malformed { .. })
        ));
    }

    #[test]
    fn cycles_are_errors() {
        // A struct that contains itself anonymously.
        let mut w = Writer::new();
        w.strukt("loop", 8, &[("", 1, 0)]);
        let btf = Btf::from_bytes(&w.build()).unwrap();
        assert!(matches!(
            btf.member_offset("loop", "x"),
            Err(BtfError::Malformed { .. })
        ));

        // Typedefs that refer to each other.
        let mut w = Writer::new();
        w.typedef("a", 2);
        w.typedef("b", 1);
        w.strukt("s", 8, &[("m", 1, 0)]);
        let btf = Btf::from_bytes(&w.build()).unwrap();
        assert!(matches!(
            btf.member_offset("a", "x"),
            Err(BtfError::NoSuchType { .. })
        ));
        assert!(matches!(
            btf.member_path_offset("s", &["m", "x"]),
            Err(BtfError::Malformed { .. })
        ));
    }

    #[test]
    fn duplicate_struct_names() {
        // A second, unrelated net_device after the real one: the first that
        // has the member wins, and members only the second has are found too.
        let mut w = kernel_like();
        let int = w.int("int", 4);
        w.strukt(
            "net_device",
            16,
            &[("ifindex", int, 0), ("only_here", int, 64)],
        );
        let btf = Btf::from_bytes(&w.build()).unwrap();
        assert_eq!(btf.member_offset("net_device", "ifindex").unwrap(), IFINDEX);
        assert_eq!(btf.member_offset("net_device", "only_here").unwrap(), 8);
    }

    #[test]
    fn offsets_too_large_for_the_probe() {
        let mut w = Writer::new();
        let int = w.int("int", 4);
        let ptr = w.ptr(int);
        w.strukt("sk_buff", 100_000, &[("dev", ptr, 70_000 * 8)]);
        let btf = Btf::from_bytes(&w.build()).unwrap();
        assert_eq!(btf.member_offset("sk_buff", "dev").unwrap(), 70_000);
        match KernelLayout::from_sources(&btf, KFREE_SKB_FORMAT).unwrap_err() {
            BtfError::OffsetTooLarge { what, offset } => {
                assert_eq!(what, "sk_buff.dev");
                assert_eq!(offset, 70_000);
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn tracepoint_fields_of_kfree_skb() {
        let fields = tracepoint_fields(KFREE_SKB_FORMAT).unwrap();
        assert_eq!(fields.len(), 9);
        assert_eq!(fields["common_type"], (0, 2));
        assert_eq!(fields["common_pid"], (4, 4));
        assert_eq!(fields["skbaddr"], (8, 8));
        assert_eq!(fields["location"], (16, 8));
        assert_eq!(fields["rx_sk"], (24, 8));
        assert_eq!(fields["protocol"], (32, 2));
        assert_eq!(fields["reason"], (36, 4));
    }

    #[test]
    fn tracepoint_fields_odd_declarations() {
        let text = "\tfield:__u8 saddr[4];\toffset:12;\tsize:4;\tsigned:0;\n\
                    \tfield:__data_loc char[] name;\toffset:16;\tsize:4;\tsigned:0;\n\
                    \tfield:struct sock *sk;\toffset:24;\tsize:8;\tsigned:0;\n";
        let fields = tracepoint_fields(text).unwrap();
        assert_eq!(fields["saddr"], (12, 4));
        assert_eq!(fields["name"], (16, 4));
        assert_eq!(fields["sk"], (24, 8));
    }

    #[test]
    fn tracepoint_format_errors() {
        assert!(matches!(
            tracepoint_fields(""),
            Err(BtfError::BadFormat { .. })
        ));
        assert!(matches!(
            tracepoint_fields("\tfield:int x;\tsize:4;\tsigned:1;"),
            Err(BtfError::BadFormat { .. })
        ));
        let err = tracepoint_fields("name: x\n\tfield:int x;\toffset:99999;\tsize:4;").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");

        let no_reason: String = KFREE_SKB_FORMAT
            .lines()
            .filter(|l| !l.contains(" reason;"))
            .map(|l| format!("{l}\n"))
            .collect();
        match KernelLayout::from_sources(&parsed(), &no_reason).unwrap_err() {
            BtfError::NoSuchField { tracepoint, field } => {
                assert_eq!(tracepoint, "skb:kfree_skb");
                assert_eq!(field, "reason");
            }
            other => panic!("unexpected error {other:?}"),
        }
        let wrong_size = KFREE_SKB_FORMAT.replace("offset:36;\tsize:4", "offset:36;\tsize:8");
        assert!(matches!(
            KernelLayout::from_sources(&parsed(), &wrong_size),
            Err(BtfError::FieldSize { .. })
        ));
    }

    // --- The running kernel -------------------------------------------------

    fn kernel_btf() -> Btf {
        let path = Path::new(VMLINUX_BTF);
        assert!(path.exists(), "{VMLINUX_BTF} does not exist (kernel without CONFIG_DEBUG_INFO_BTF?)");
        Btf::from_file(path).expect("the kernel's BTF parses")
    }

    #[test]
    #[cfg_attr(not(sightline_btf), ignore = "needs the kernel's BTF (/sys/kernel/btf/vmlinux)")]
    fn real_kernel_offsets() {
        let btf = kernel_btf();
        let skb = |m: &str| btf.member_offset("sk_buff", m).unwrap();
        let (dev, head, network_header, len) =
            (skb("dev"), skb("head"), skb("network_header"), skb("len"));
        let ifindex = btf.member_offset("net_device", "ifindex").unwrap();
        let nd_net = btf.member_offset("net_device", "nd_net").unwrap();
        let inum = btf.member_path_offset("net", &["ns", "inum"]).unwrap();
        eprintln!(
            "sk_buff: dev {dev} head {head} network_header {network_header} len {len}; \
             net_device: ifindex {ifindex} nd_net {nd_net}; net.ns.inum {inum}"
        );
        assert!(dev < 64, "sk_buff.dev at {dev}");
        assert!(len < 256 && head < 512 && network_header < 512);
        assert!(ifindex < 4096 && nd_net < 8192 && inum < 16384);
        assert_eq!(
            btf.member_path_offset("net_device", &["nd_net", "net"])
                .unwrap(),
            nd_net
        );
        // possible_net_t's only member is the pointer.
        assert_eq!(btf.member_offset("possible_net_t", "net").unwrap(), 0);
    }

    #[test]
    #[cfg_attr(not(sightline_btf), ignore = "needs the kernel's BTF (/sys/kernel/btf/vmlinux)")]
    fn real_kernel_drop_reasons() {
        let btf = kernel_btf();
        let reasons = btf.enum_values("skb_drop_reason").unwrap();
        let no_socket = reasons
            .iter()
            .find(|(_, name)| name == "SKB_DROP_REASON_NO_SOCKET")
            .expect("SKB_DROP_REASON_NO_SOCKET is a drop reason");
        eprintln!(
            "{} drop reasons, NO_SOCKET = {}",
            reasons.len(),
            no_socket.0
        );
    }

    #[test]
    #[cfg_attr(
        not(all(sightline_root, sightline_btf)),
        ignore = "needs root (to mount tracefs) and the kernel's BTF (/sys/kernel/btf/vmlinux)"
    )]
    fn real_kernel_layout() {
        assert!(Path::new(VMLINUX_BTF).exists(), "{VMLINUX_BTF} does not exist");
        let tracing = Path::new("/sys/kernel/tracing");
        if !tracing.join("events").exists() && tracing.exists() {
            let _ = std::process::Command::new("mount")
                .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
                .status();
        }
        let mounted = TRACEFS_ROOTS
            .iter()
            .any(|root| Path::new(root).join("events/skb/kfree_skb/format").exists());
        assert!(mounted, "tracefs is not mounted (and could not be mounted) or has no skb:kfree_skb");
        let layout = KernelLayout::from_system().unwrap();
        eprintln!("{:?}", layout.offsets);
        assert_eq!(layout.offsets.valid, 1);
        assert_eq!(
            layout.drop_reason_name(u32::MAX),
            format!("UNKNOWN({})", u32::MAX)
        );
        let no_socket = layout
            .drop_reasons
            .iter()
            .find(|(_, name)| *name == "NO_SOCKET")
            .map(|(value, _)| *value)
            .expect("NO_SOCKET is a drop reason");
        eprintln!(
            "NO_SOCKET = {no_socket}, {} reasons",
            layout.drop_reasons.len()
        );
        // The tracepoint's own symbol table agrees with BTF.
        let format = read_kfree_skb_format().unwrap();
        assert!(format.contains(&format!("{{ {no_socket}, \"NO_SOCKET\" }}")));
    }
}
