//! Reading and deleting hash-map entries in batches (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_DELETE_BATCH`, Linux ≥ 5.6): thousands of entries per system
//! call instead of two or three system calls per entry.
//!
//! Conntrack holds up to 65,536 connections; walking it entry by entry
//! (`get_next_key`, then `lookup`, then `delete`) made the collector's
//! garbage collection and entry counts the largest part of its CPU time
//! under a flood of new connections. Garbage collection now runs in the
//! kernel (the `ct_gc` program) where it can; this module serves the entry
//! count of `status` and the collection where `ct_gc` cannot load. aya 0.14
//! does not expose the batch commands, so this module issues them with
//! `bpf(2)` on the map's file descriptor; callers fall back to walking the
//! map when the kernel refuses them.
//!
//! This module must not know what the entries mean.

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for the batch commands,
    // its pointers point at buffers the caller sized for `count` entries
    // and at the 8-byte batch tokens, all alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<BatchAttr>() as libc::c_ulong) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Every entry of a hash map whose keys are `key_size` bytes and values
/// `value_size` bytes, read `chunk` at a time: (keys, values) as flat byte
/// vectors, entry `i` at `i * size`.
///
/// # Errors
///
/// The kernel's error, e.g. `EINVAL` when it does not support batch
/// operations on this map type (walk the map instead).
pub fn dump(fd: BorrowedFd<'_>, key_size: usize, value_size: usize, chunk: u32) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let chunk = chunk.max(1);
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut in_token = [0u8; 8];
    let mut out_token = [0u8; 8];
    let mut first = true;
    loop {
        let start = keys.len();
        let vstart = values.len();
        keys.resize(start + key_size * chunk as usize, 0);
        values.resize(vstart + value_size * chunk as usize, 0);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { in_token.as_ptr() as u64 },
            out_batch: out_token.as_mut_ptr() as u64,
            keys: keys[start..].as_mut_ptr() as u64,
            values: values[vstart..].as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = attr.count as usize;
        keys.truncate(start + key_size * got);
        values.truncate(vstart + value_size * got);
        match result {
            Ok(()) => {}
            // The end of the map: the last chunk (maybe empty) is in.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok((keys, values)),
            Err(e) => return Err(e),
        }
        in_token = out_token;
        first = false;
    }
}

/// Deletes `keys` (flat, `key_size` bytes each), a `chunk` per system call;
/// keys already gone (evicted meanwhile) are skipped. Returns how many were
/// deleted.
///
/// # Errors
///
/// The kernel's error other than a missing key.
pub fn delete(fd: BorrowedFd<'_>, keys: &[u8], key_size: usize, chunk: u32) -> io::Result<usize> {
    if key_size == 0 {
        return Ok(0);
    }
    let total = keys.len() / key_size;
    let mut done = 0;
    let mut deleted = 0;
    while done < total {
        let n = (total - done).min(chunk.max(1) as usize);
        let mut attr = BatchAttr {
            keys: keys[done * key_size..].as_ptr() as u64,
            count: u32::try_from(n).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let got = attr.count as usize;
        deleted += got;
        match result {
            Ok(()) => done += n,
            // The key after the `got` deleted ones is gone already: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => done += got + 1,
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    use super::*;

    /// `BPF_MAP_CREATE` of an LRU hash map with u64 keys and values.
    fn lru_map(max: u32) -> io::Result<OwnedFd> {
        #[repr(C)]
        #[derive(Default)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        let mut attr = CreateAttr { map_type: 9, key_size: 8, value_size: 8, max_entries: max, map_flags: 0 };
        // SAFETY: a valid BPF_MAP_CREATE attribute prefix.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, std::ptr::from_mut(&mut attr), size_of::<CreateAttr>() as libc::c_ulong) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    fn update(fd: BorrowedFd<'_>, key: u64, value: u64) {
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let mut attr = ElemAttr { map_fd: fd.as_raw_fd() as u32, _pad: 0, key: (&raw const key) as u64, value: (&raw const value) as u64, flags: 0 };
        // SAFETY: BPF_MAP_UPDATE_ELEM with pointers to live u64s.
        let r = unsafe { libc::syscall(libc::SYS_bpf, 2, std::ptr::from_mut(&mut attr), size_of::<ElemAttr>() as libc::c_ulong) };
        assert!(r == 0, "update: {}", io::Error::last_os_error());
    }

    #[test]
    #[cfg_attr(not(sightline_root), ignore = "needs root: creating a BPF map")]
    fn dumps_and_deletes_every_entry_in_batches() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "creating a BPF map needs root");
        let map = lru_map(20_000).expect("an LRU hash map");
        use std::os::fd::AsFd as _;
        let fd = map.as_fd();
        for k in 0..5000u64 {
            update(fd, k, k * 10);
        }
        // Small chunks: many system calls, the end of the map found by ENOENT.
        let (keys, values) = dump(fd, 8, 8, 512).expect("batch lookup");
        assert_eq!(keys.len() / 8, 5000);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..5000 {
            let k = u64::from_ne_bytes(keys[i * 8..i * 8 + 8].try_into().unwrap());
            let v = u64::from_ne_bytes(values[i * 8..i * 8 + 8].try_into().unwrap());
            assert_eq!(v, k * 10);
            seen.insert(k);
        }
        assert_eq!(seen.len(), 5000);
        // Delete the even keys, plus keys that are not there (skipped).
        let mut doomed: Vec<u8> = (0..5000u64).filter(|k| k % 2 == 0).flat_map(u64::to_ne_bytes).collect();
        doomed.extend((90_000..90_010u64).flat_map(u64::to_ne_bytes));
        let deleted = delete(fd, &doomed, 8, 700).expect("batch delete");
        assert_eq!(deleted, 2500);
        let (keys, _) = dump(fd, 8, 8, 4096).expect("batch lookup");
        assert_eq!(keys.len() / 8, 2500);
        assert!(keys.chunks(8).all(|k| u64::from_ne_bytes(k.try_into().unwrap()) % 2 == 1));
    }
}
