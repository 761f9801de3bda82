// Included (`include!`) by the build scripts of crates whose tests need
// something a machine may lack. Each need found becomes a cfg, and such a
// test carries `#[cfg_attr(not(sightline_root), ignore = "why")]`: without
// the need, `cargo test` reports it as ignored with the reason, never as
// `ok`. Under `CI=true`, scripts/test.sh runs ignored tests too
// (`--include-ignored`): a test that cannot run then fails, loudly.
//
// - `sightline_root`: built as root (network namespaces, eBPF);
// - `sightline_shared`: `../shared/reference/hubble-api` (the upstream
//   Hubble protos) is beside the repository;
// - `sightline_prometheus`, `sightline_promtool`: Debian's prometheus;
// - `sightline_etcd`: Debian's etcd-server (`/usr/bin/etcd`);
// - `sightline_openssl`: the openssl command;
// - `sightline_btf`: the kernel's BTF (`/sys/kernel/btf/vmlinux`);
// - `sightline_kubectl`: kubectl (renders the kustomize base);
// - `sightline_kubernetes_validate`: kubernetes-validate (scripts/setup.sh);
// - `sightline_buildah`: Debian's buildah (builds the container image).

#[allow(dead_code, reason = "not every build script uses every need")]
fn emit_test_cfgs(manifest_dir: &std::path::Path) {
    let shared = manifest_dir.join("../../shared/reference/hubble-api");
    let tool = |name: &str| {
        ["/usr/bin", "/usr/local/bin", "/bin"].iter().any(|d| std::path::Path::new(d).join(name).exists())
    };
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    let root = unsafe { geteuid() } == 0;
    for (name, present) in [
        ("sightline_root", root),
        ("sightline_shared", shared.is_dir()),
        ("sightline_prometheus", tool("prometheus")),
        ("sightline_promtool", tool("promtool")),
        ("sightline_openssl", tool("openssl")),
        ("sightline_etcd", tool("etcd")),
        ("sightline_btf", std::path::Path::new("/sys/kernel/btf/vmlinux").exists()),
        ("sightline_kubectl", tool("kubectl")),
        ("sightline_kubernetes_validate", tool("kubernetes-validate")),
        ("sightline_buildah", tool("buildah")),
    ] {
        println!("cargo::rustc-check-cfg=cfg({name})");
        if present {
            println!("cargo:rustc-cfg={name}");
        }
    }
}

unsafe extern "C" {
    fn geteuid() -> u32;
}
