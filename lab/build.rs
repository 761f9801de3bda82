//! Sets the cfgs of `build-support/test_cfg.rs` (root, tools), which mark
//! the tests that need them.

include!("../build-support/test_cfg.rs");

fn main() {
    emit_test_cfgs(&std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir")));
}
