//! `ABI_VERSION` must change whenever a layout or a constant changes.
//!
//! The test reads the crate's source and reduces it to what the kernel and
//! the collector must agree on: every struct (its name and its fields' types,
//! in order, with the `repr`) and every constant (name, type and value).
//! Comments, attributes other than `repr` and function bodies do not count.
//! The fingerprint of that text is recorded below for each version; a change
//! to the layout without a new version (and a new row here and in
//! `docs/ABI.md`) fails.

use std::fmt::Write as _;

/// (version, fingerprint of the layout it names). Append a row for each new
/// version; never edit an old one.
const RECORDED: &[(u8, u64)] = &[(1, 0x2635_1fa8_699e_640c), (2, 0xa7a3_62e6_af73_d6ac), (3, 0x41c1_9ff2_098e_e686), (4, 0x4577_a4ed_9548_d818)];

const SOURCE: &str = include_str!("../src/lib.rs");

/// The ABI as canonical text: one line per constant and per struct.
fn canonical(source: &str) -> String {
    let mut out = String::new();
    let mut in_struct: Option<String> = None;
    let mut repr = String::new();
    let mut fields: Vec<String> = Vec::new();
    for raw in source.lines() {
        let line = raw.split("//").next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = &in_struct {
            if line == "}" {
                writeln!(out, "struct {name} {repr} {{{}}}", fields.join(", ")).expect("write to a String");
                in_struct = None;
                fields.clear();
            } else if let Some(field) = line.strip_prefix("pub ") {
                let (_, ty) = field.split_once(':').unwrap_or_else(|| panic!("field without a type: {raw:?}"));
                fields.push(ty.trim().trim_end_matches(',').to_owned());
            } else {
                panic!("unexpected line in struct {name}: {raw:?}");
            }
            continue;
        }
        if line.starts_with("#[repr(") {
            line.clone_into(&mut repr);
        } else if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest.trim_end_matches('{').trim();
            assert!(rest.ends_with('{'), "struct {name} is not written with braces");
            in_struct = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("pub const ") {
            // The version itself is not part of what it names.
            if rest.starts_with("fn ") || rest.starts_with("ABI_VERSION:") {
                continue;
            }
            let compact: String = rest.split_whitespace().collect::<Vec<_>>().join(" ");
            writeln!(out, "const {compact}").expect("write to a String");
        }
    }
    assert!(in_struct.is_none(), "unterminated struct in the ABI source");
    out
}

/// FNV-1a, 64 bits: stable across Rust versions, unlike `DefaultHasher`.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[test]
fn the_abi_version_names_the_layout_in_force() {
    let text = canonical(SOURCE);
    let fingerprint = fnv1a(&text);
    let version = sightline_abi::ABI_VERSION;
    let last = RECORDED.last().expect("at least one recorded version");
    match RECORDED.iter().find(|(v, _)| *v == version) {
        Some((_, recorded)) if *recorded == fingerprint => {
            assert_eq!(last.0, version, "ABI_VERSION {version} is not the newest recorded version ({})", last.0);
        }
        Some(_) => panic!(
            "the ABI changed but ABI_VERSION is still {version}: set it to {next}, append ({next}, {fingerprint:#018x}) \
             to RECORDED in this file and a row for version {next} to docs/ABI.md.\nThe layout now reads:\n{text}",
            next = last.0 + 1
        ),
        None => panic!(
            "ABI_VERSION {version} has no recorded fingerprint: append ({version}, {fingerprint:#018x}) to RECORDED \
             in this file.\nThe layout reads:\n{text}"
        ),
    }
}

#[test]
fn the_canonical_text_covers_every_struct_and_constant() {
    let text = canonical(SOURCE);
    let lines = || SOURCE.lines().map(str::trim_start);
    let structs = lines().filter(|l| l.starts_with("pub struct ")).count();
    let consts = lines().filter(|l| l.starts_with("pub const ") && !l.starts_with("pub const fn ")).count() - 1;
    assert_eq!(text.lines().filter(|l| l.starts_with("struct ")).count(), structs, "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("const ")).count(), consts, "{text}");
    assert!(structs >= 10 && consts >= 50, "the ABI source was not read: {structs} structs, {consts} constants");
    // Each struct carries its repr: a change from C layout is a change.
    assert!(text.lines().filter(|l| l.starts_with("struct ")).all(|l| l.contains("#[repr(C)]")), "{text}");
}

#[test]
fn a_changed_field_or_constant_changes_the_fingerprint() {
    let base = fnv1a(&canonical(SOURCE));
    let widened = SOURCE.replacen("pub pkt_len: u32,", "pub pkt_len: u64,", 1);
    assert_ne!(widened, SOURCE, "the test's edit did not apply");
    assert_ne!(fnv1a(&canonical(&widened)), base);
    let renumbered = SOURCE.replacen("pub const DROP_POLICY_DENIED: u8 = 133;", "pub const DROP_POLICY_DENIED: u8 = 134;", 1);
    assert_ne!(renumbered, SOURCE, "the test's edit did not apply");
    assert_ne!(fnv1a(&canonical(&renumbered)), base);
    let recommented = SOURCE.replacen("/// Version of every layout", "/// The version of every layout", 1);
    assert_eq!(fnv1a(&canonical(&recommented)), base, "a comment is not a layout change");
}

#[test]
fn docs_list_every_recorded_version() {
    let doc = include_str!("../../../docs/ABI.md");
    let version = sightline_abi::ABI_VERSION;
    assert!(doc.contains(&format!("**ABI version: {version}**")), "docs/ABI.md does not name ABI version {version}");
    for (v, _) in RECORDED {
        assert!(doc.contains(&format!("\n| {v} |")), "docs/ABI.md has no row for ABI version {v}");
    }
}
