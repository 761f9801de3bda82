//! The programs the lab runs: `sightline` (collectors, the relay, the
//! supervisor, responders — started as subcommands) and the CNI plugin
//! `sightline-cni` (executed as a container runtime would).
//!
//! The lab is a library: the `sightline` command links it, and so do tests
//! and benchmarks whose own program is not `sightline`. Each program is
//! found, in order, from its environment variable, as this program itself
//! when the names match, or next to this program (or next to the folder of
//! a test binary in `target/*/deps`, where cargo puts the workspace's
//! binaries).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};

/// The `sightline` command.
pub const SIGHTLINE: &str = "sightline";
/// Names the `sightline` program to use.
pub const SIGHTLINE_ENV: &str = "SIGHTLINE_BIN";

/// The `sightline` program the lab starts its processes with.
pub fn sightline() -> anyhow::Result<PathBuf> {
    find(SIGHTLINE, SIGHTLINE_ENV)
}

/// Where program `name` is: `$env`, else this program when it is `name`,
/// else `name` beside this program.
pub fn find(name: &str, env: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(anyhow!("{env}={}: no such file", p.display())) };
    }
    let exe = std::env::current_exe().context("finding this program")?;
    if exe.file_name() == Some(OsStr::new(name)) {
        return Ok(exe);
    }
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        bail!("{name} is not next to {} (build it with `cargo build --workspace`, or name it in {env})", exe.display())
    }
}
