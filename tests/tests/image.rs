//! The container image (`Containerfile`, `scripts/image.sh`): built with
//! buildah from the static binaries `scripts/image.sh binaries` made
//! (`scripts/test.sh` makes them first), then checked from the outside
//! (configuration, files, every binary static) and from the inside
//! (`buildah run`: the binaries start, as the image's user, and resolve
//! names without a libc beside them). The image and its containers are
//! removed afterwards, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repository")
}

/// Where `scripts/image.sh binaries` leaves the static binaries.
fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    let target = if target.is_relative() { repo().join(target) } else { target };
    target.join("x86_64-unknown-linux-gnu/image")
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The image and the containers made from it, removed when dropped.
struct Built {
    image: String,
    containers: Vec<String>,
}

impl Built {
    fn container(&mut self) -> String {
        let name = ok("buildah", &["from", "--pull-never", &self.image]).trim().to_owned();
        self.containers.push(name.clone());
        name
    }
}

impl Drop for Built {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = run("buildah", &["umount", c]);
            let _ = run("buildah", &["rm", c]);
        }
        let _ = run("buildah", &["rmi", "--force", &self.image]);
    }
}

/// The ELF file at `path` has no program interpreter (PT_INTERP): the
/// kernel runs it without a dynamic loader, so it needs no library.
fn is_static_elf(path: &Path) -> bool {
    let b = std::fs::read(path).expect("reading a binary");
    assert!(b.len() > 64 && &b[..4] == b"\x7fELF" && b[4] == 2, "{} is not a 64-bit ELF file", path.display());
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let phoff = usize::try_from(u64::from_le_bytes(b[0x20..0x28].try_into().expect("8 bytes"))).expect("offset");
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")) != 3
    })
}

#[test]
#[cfg_attr(not(sightline_buildah), ignore = "buildah is not installed (scripts/setup.sh)")]
fn the_image_builds_from_the_repository_and_its_binaries_run_inside() {
    let bins = bin_dir();
    for b in ["sightline", "sightline-cni"] {
        let path = bins.join(b);
        assert!(path.exists(), "{} is missing: run `scripts/image.sh binaries` first (scripts/test.sh does)", path.display());
        assert!(is_static_elf(&path), "{} is not statically linked", path.display());
    }

    let mut built = Built { image: format!("localhost/sightline-test:{}", std::process::id()), containers: Vec::new() };
    let out = Command::new(repo().join("scripts/image.sh"))
        .arg("image")
        .env("SIGHTLINE_IMAGE", &built.image)
        .env("CARGO_TARGET_DIR", bins.parent().and_then(Path::parent).expect("target dir"))
        .output()
        .expect("running scripts/image.sh");
    assert!(out.status.success(), "scripts/image.sh image failed:\n{}", String::from_utf8_lossy(&out.stderr));

    // The configuration: entrypoint, a non-root default user.
    let inspect: Value =
        serde_json::from_str(&ok("buildah", &["inspect", "--type", "image", &built.image])).expect("inspect JSON");
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["Entrypoint"], serde_json::json!(["/usr/bin/sightline"]));
    assert_eq!(config["User"], "65532:65532");

    // The files: exactly these, the binaries those built, all static.
    let c = built.container();
    let root = PathBuf::from(ok("buildah", &["mount", &c]).trim());
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading the image") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path.strip_prefix(&root).expect("inside").to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    assert_eq!(
        files,
        [
            "bin/busybox",
            "etc/ssl/certs/ca-certificates.crt",
            "usr/bin/sightline",
            "usr/libexec/sightline/sightline-cni",
        ]
    );
    for (inside, built_from) in [("usr/bin/sightline", "sightline"), ("usr/libexec/sightline/sightline-cni", "sightline-cni")] {
        let a = std::fs::read(root.join(inside)).expect("binary in the image");
        assert!(a == std::fs::read(bins.join(built_from)).expect("built binary"), "{inside} differs from {built_from}");
    }
    for f in ["usr/bin/sightline", "usr/libexec/sightline/sightline-cni", "bin/busybox"] {
        assert!(is_static_elf(&root.join(f)), "{f} is not static");
    }
    ok("buildah", &["umount", &c]);

    // Inside. The chroot isolation needs no OCI runtime (crun refuses this
    // machine's hybrid cgroups); what runs is the image's files as its user.
    let inside = |args: &[&str]| {
        let mut all = vec!["run", "--isolation", "chroot", &c, "--"];
        all.extend_from_slice(args);
        run("buildah", &all)
    };
    let version = inside(&["/usr/bin/sightline", "--version"]);
    assert!(version.status.success(), "{}", String::from_utf8_lossy(&version.stderr));
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("sightline {}", env!("CARGO_PKG_VERSION")));
    let relay_help = inside(&["/usr/bin/sightline", "relay", "--help"]);
    assert!(String::from_utf8_lossy(&relay_help.stdout).contains("--listen"), "relay --help");
    let id = inside(&["/bin/busybox", "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), "65532");
    // A static glibc binary still resolves names (from /etc/hosts): the
    // connection to localhost's closed port 1 is refused, not unresolved.
    let status = inside(&["/usr/bin/sightline", "status", "--server", "localhost:1"]);
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(err.contains("Connection refused") && !err.contains("dns error"), "{err}");
}
