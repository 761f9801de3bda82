//! Builds the eBPF probes with aya-build (nightly, rust-src, bpf-linker) and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! With `AYA_BUILD_SKIP=1` (check-only runs), an empty object is written
//! instead and the collector refuses to load it at run time.

use std::{env, fs, path::PathBuf};

include!("../build-support/test_cfg.rs");

fn main() {
    emit_test_cfgs(&PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir")));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let object = out_dir.join("sightline-probes");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        if !object.exists() {
            fs::write(&object, []).expect("write the empty probe object");
        }
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return;
    }
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"))
        .join("../probes/ebpf");
    let root = root.to_str().expect("the probes path is UTF-8");
    let package = aya_build::Package {
        name: "sightline-probes",
        root_dir: root,
        ..Default::default()
    };
    if let Err(err) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        panic!(
            "building the eBPF probes failed: {err:#}\n\
             (needs the nightly toolchain with rust-src and bpf-linker: run scripts/setup.sh)"
        );
    }
}
