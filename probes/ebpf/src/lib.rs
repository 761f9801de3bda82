//! Sightline's eBPF programs are the `sightline-probes` binary of this crate,
//! built for `bpfel-unknown-none` by the collector's build script. This empty
//! library exists so that cargo can track the crate as a build dependency.
#![no_std]
