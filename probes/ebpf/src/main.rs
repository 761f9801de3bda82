//! Sightline's eBPF programs.
//!
//! * `from_container` — tc (tcx) ingress on the host side of a pod's veth:
//!   packets leaving the pod. Parses, checks the source address, tracks the
//!   connection, resolves identities, and either redirects the packet straight
//!   into a local destination pod (`bpf_redirect_peer`) or hands it to the
//!   node's stack.
//! * `to_container` — tc (tcx) egress on the same device: packets the node's
//!   stack delivers to the pod.
//! * `kfree_skb` — tracepoint `skb:kfree_skb`: packets the kernel drops inside
//!   the lab's network namespaces, with the kernel's drop reason.
//!
//! Every event goes to one ring buffer (`EVENTS`) in the layout of
//! `sightline_abi::Event`. Programs never block and never fail open on a
//! full ring buffer: they count the lost event and carry on.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

/// On the host this binary is empty: the programs exist only for BPF.
#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("sightline-probes is built for bpfel-unknown-none by the collector's build script");
}
