//! Counting flows on the pipeline thread by *signature*, without building
//! a single label string for a flow whose kind has been seen before.
//!
//! A signature is a small `Copy` key packed from the flow fields a set of
//! metrics reads (protocol, verdict, flags, the addresses of the shared pod
//! metadata, …). Two flows with the same signature produce the same label
//! values, so they count into the same series: the first flow of a
//! signature is resolved the slow way (label strings, series lookup) into a
//! list of [`Target`]s, and every later one costs one hash-map probe and an
//! increment of a plain, thread-local counter. [`Tally::flush`] adds the
//! pending counts to the shared atomics; the pipeline flushes after every
//! ring-buffer drain, so a scrape sees a flow's counts a few milliseconds
//! after it was stored.
//!
//! An entry keeps the `Arc`s whose addresses are in its signature alive, so
//! an address cannot be reused by other metadata while the entry exists.
//! The number of entries is capped; at the cap the tally flushes and starts
//! over.
//!
//! This module must not know what a signature means or which metrics exist.

use std::hash::{BuildHasher, Hash};

use crate::hashing::Seeded;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;

use crate::metadata::PodMeta;

/// Where the counts of a signature go.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A series of a `hubble_*` family.
    Series(Arc<AtomicU64>),
    /// A prometheus-client counter (the agent's own metrics, and refusals
    /// of series beyond a family's cap).
    Counter(Counter),
    /// Not counted (a handler bug caught in debug builds).
    Nowhere,
}

impl Target {
    pub(crate) fn add(&self, n: u64) {
        match self {
            Self::Series(value) => {
                value.fetch_add(n, Ordering::Relaxed);
            }
            Self::Counter(counter) => {
                counter.inc_by(n);
            }
            Self::Nowhere => {}
        }
    }
}

/// Shared metadata an entry's signature points at, kept alive with it
/// (held, never read).
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub(crate) enum Keep {
    Pod(Arc<PodMeta>),
    Strings(Arc<[String]>),
}

/// The address of shared metadata, as signatures hold it (0 for none).
pub(crate) fn address<T: ?Sized>(shared: Option<&Arc<T>>) -> usize {
    shared.map_or(0, |a| Arc::as_ptr(a).cast::<()>() as usize)
}

/// Counts per signature, flushed to shared counters. Entry `i`'s parts
/// live in parallel vectors so that the hot one, the pending counts, stays
/// small enough to remain in the L1 cache.
pub(crate) struct Tally<K> {
    index: Index<K>,
    pending: Vec<u64>,
    targets: Vec<Box<[Target]>>,
    keep: Vec<Box<[Keep]>>,
    /// Entries with pending counts.
    dirty: Vec<u32>,
    limit: usize,
}

/// The default cap on signatures kept.
pub(crate) const DEFAULT_LIMIT: usize = 1 << 16;

impl<K: Hash + Eq + Copy + Default> Tally<K> {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            index: Index::new(),
            pending: Vec::new(),
            targets: Vec::new(),
            keep: Vec::new(),
            dirty: Vec::new(),
            limit: limit.max(1),
        }
    }

    /// Counts one flow of a known signature; `false` when the signature is
    /// new and must be resolved and [`insert`](Self::insert)ed.
    #[inline]
    pub(crate) fn count(&mut self, key: &K) -> bool {
        let Some(i) = self.index.get(key) else {
            return false;
        };
        if let Some(pending) = self.pending.get_mut(i as usize) {
            if *pending == 0 {
                self.dirty.push(i);
            }
            *pending += 1;
        }
        true
    }

    /// Records a resolved signature and counts one flow of it.
    pub(crate) fn insert(&mut self, key: K, targets: Vec<Target>, keep: Vec<Keep>) {
        if self.pending.len() >= self.limit {
            self.clear();
        }
        let Ok(i) = u32::try_from(self.pending.len()) else {
            // Unreachable with any sane limit; count directly.
            for target in &targets {
                target.add(1);
            }
            return;
        };
        self.dirty.push(i);
        self.pending.push(1);
        self.targets.push(targets.into_boxed_slice());
        self.keep.push(keep.into_boxed_slice());
        self.index.insert(key, i);
    }

    /// Adds every pending count to its targets.
    pub(crate) fn flush(&mut self) {
        for i in self.dirty.drain(..) {
            let i = i as usize;
            if let (Some(pending), Some(targets)) = (self.pending.get_mut(i), self.targets.get(i)) {
                for target in targets {
                    target.add(*pending);
                }
                *pending = 0;
            }
        }
    }

    /// Flushes, then forgets every signature (their targets may be gone).
    pub(crate) fn clear(&mut self) {
        self.flush();
        self.index.clear();
        self.pending.clear();
        self.targets.clear();
        self.keep.clear();
    }

    /// Signatures known.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

/// Signature → entry number: open addressing with linear probing over
/// parallel arrays, at most half full. (A `HashMap` costs a few
/// nanoseconds more per probe, which on this path is a tenth of the
/// pipeline's per-event budget.)
struct Index<K> {
    keys: Vec<K>,
    /// Entry numbers, [`EMPTY`] for a free slot.
    values: Vec<u32>,
    mask: usize,
    len: usize,
    hasher: Seeded,
}

const EMPTY: u32 = u32::MAX;
const INITIAL_SLOTS: usize = 256;

impl<K: Hash + Eq + Copy + Default> Index<K> {
    fn new() -> Self {
        Self {
            keys: vec![K::default(); INITIAL_SLOTS],
            values: vec![EMPTY; INITIAL_SLOTS],
            mask: INITIAL_SLOTS - 1,
            len: 0,
            hasher: Seeded::new(),
        }
    }

    #[inline]
    fn slot(&self, key: &K) -> usize {
        self.hasher.hash_one(key) as usize & self.mask
    }

    #[inline]
    fn get(&self, key: &K) -> Option<u32> {
        let mut i = self.slot(key);
        loop {
            let value = *self.values.get(i)?;
            if value == EMPTY {
                return None;
            }
            if self.keys.get(i) == Some(key) {
                return Some(value);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Inserts a key that is not present.
    fn insert(&mut self, key: K, value: u32) {
        if (self.len + 1) * 2 > self.values.len() {
            self.grow();
        }
        let mut i = self.slot(&key);
        while self.values.get(i).is_some_and(|v| *v != EMPTY) {
            i = (i + 1) & self.mask;
        }
        if let (Some(k), Some(v)) = (self.keys.get_mut(i), self.values.get_mut(i)) {
            *k = key;
            *v = value;
            self.len += 1;
        }
    }

    fn grow(&mut self) {
        let slots = self.values.len() * 2;
        let keys = std::mem::replace(&mut self.keys, vec![K::default(); slots]);
        let values = std::mem::replace(&mut self.values, vec![EMPTY; slots]);
        self.mask = slots - 1;
        self.len = 0;
        for (key, value) in keys.into_iter().zip(values) {
            if value != EMPTY {
                self.insert(key, value);
            }
        }
    }

    fn clear(&mut self) {
        self.keys = vec![K::default(); INITIAL_SLOTS];
        self.values = vec![EMPTY; INITIAL_SLOTS];
        self.mask = INITIAL_SLOTS - 1;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_pending_until_flushed_and_kept_per_signature() {
        let a = Arc::new(AtomicU64::new(0));
        let b = Counter::default();
        let mut t: Tally<u64> = Tally::new(8);
        assert!(!t.count(&1));
        t.insert(1, vec![Target::Series(Arc::clone(&a)), Target::Counter(b.clone())], vec![]);
        assert!(t.count(&1));
        assert!(t.count(&1));
        assert_eq!(a.load(Ordering::Relaxed), 0);
        t.flush();
        assert_eq!(a.load(Ordering::Relaxed), 3);
        assert_eq!(b.get(), 3);
        t.flush();
        assert_eq!(a.load(Ordering::Relaxed), 3);
        // A signature without targets is remembered and counts nothing.
        t.insert(2, vec![], vec![]);
        assert!(t.count(&2));
        assert!(t.count(&1));
        t.flush();
        assert_eq!(a.load(Ordering::Relaxed), 4);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn at_the_limit_it_flushes_and_starts_over() {
        let a = Arc::new(AtomicU64::new(0));
        let mut t: Tally<u64> = Tally::new(4);
        for k in 0..4 {
            t.insert(k, vec![Target::Series(Arc::clone(&a))], vec![]);
        }
        assert_eq!(t.len(), 4);
        t.insert(9, vec![Target::Series(Arc::clone(&a))], vec![]);
        assert_eq!(t.len(), 1);
        assert_eq!(a.load(Ordering::Relaxed), 4, "flushed before forgetting");
        assert!(!t.count(&0));
        t.clear();
        assert_eq!(a.load(Ordering::Relaxed), 5);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn entries_keep_their_metadata_alive() {
        let pod = Arc::new(PodMeta::default());
        let mut t: Tally<usize> = Tally::new(4);
        t.insert(address(Some(&pod)), vec![], vec![Keep::Pod(Arc::clone(&pod))]);
        assert_eq!(Arc::strong_count(&pod), 2);
        t.clear();
        assert_eq!(Arc::strong_count(&pod), 1);
    }

    #[test]
    fn the_index_finds_what_it_holds_through_growth_and_clearing() {
        let mut index: Index<(u64, u64)> = Index::new();
        for k in 0..10_000u64 {
            assert_eq!(index.get(&(k, k * 7)), None);
            index.insert((k, k * 7), k as u32);
        }
        for k in 0..10_000u64 {
            assert_eq!(index.get(&(k, k * 7)), Some(k as u32));
            assert_eq!(index.get(&(k, k * 7 + 1)), None);
        }
        assert!(index.values.len() >= 20_000);
        index.clear();
        assert_eq!(index.get(&(1, 7)), None);
        // The default key is an ordinary key.
        index.insert((0, 0), 5);
        assert_eq!(index.get(&(0, 0)), Some(5));
    }
}
