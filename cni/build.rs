//! Sets the cfgs of `build-support/test_cfg.rs` (root) for the conformance
//! suite, which runs the plugin on network namespaces it creates.

include!("../build-support/test_cfg.rs");

fn main() {
    let manifest_dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    emit_test_cfgs(&manifest_dir);
}
