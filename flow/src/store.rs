//! The flow store: a fixed-capacity ring of the most recent flows, like
//! Hubble's `container/ring`.
//!
//! One writer (the consumer) [`Store::push`]es flows; any number of readers
//! ([`Reader`], one per API request) walk the ring at their own pace. Every
//! flow pushed gets a *position* (0, 1, 2, … — the count of flows pushed
//! before it); the ring keeps the last `capacity` positions. A reader that
//! falls so far behind that the writer overwrites what it wanted next is told
//! exactly how many flows it missed ([`Entry::Lost`]) and carries on from the
//! oldest flow still present; the API turns that into
//! `LostEvent{source: HUBBLE_RING_BUFFER}`.
//!
//! Layout: `capacity + 1` slots (a power of two), each a tiny mutex around
//! the position it holds and an `Arc<Flow>`. The position stored with the
//! flow is what makes overwrite detection exact and simple: a reader wanting
//! position `p` finds `p` in slot `p & mask`, or a later position (`p` was
//! overwritten), or an earlier one (`p` is not written yet). Readers hold a
//! slot's lock only to clone an `Arc`, the writer only to swap one in (the
//! flow it replaces is dropped after the lock is released), so neither side
//! ever waits for more than a pointer copy. No `unsafe`.
//!
//! Follow mode waits on a [`tokio::sync::Notify`]; the writer only touches it
//! when some reader is actually asleep, so a store nobody follows costs one
//! atomic load per push for it.
//!
//! The store must not filter, convert or time flows: it keeps them and hands
//! them out in order.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::record::Flow;

/// Hubble's default ring capacity (`hubble-event-buffer-capacity`).
pub const DEFAULT_CAPACITY: usize = 4095;
/// Largest capacity accepted (2^16 − 1).
pub const MAX_CAPACITY: usize = 65535;

/// Why a store could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(
        "invalid flow store capacity {got}: it must be 2^n-1 for n in 1..=16 \
         (1, 3, 7, 15, 31, 63, 127, 255, 511, 1023, 2047, 4095, 8191, 16383, 32767 or 65535)"
    )]
    Capacity { got: usize },
}

/// What a reader gets at its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The next flow.
    Flow(Arc<Flow>),
    /// This many flows were overwritten before the reader got to them; the
    /// reader now stands at the oldest flow still present.
    Lost(u64),
}

/// Where a [`Reader`] starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At the oldest flow still present (for "first N").
    Oldest,
    /// At the last `n` flows (or the oldest, when fewer are present).
    Last(u64),
    /// After everything present: only flows pushed from now on.
    Now,
    /// At a position (a position that is gone reads as [`Entry::Lost`]
    /// first; one not yet written waits for it).
    Position(u64),
}

/// One slot of the ring: the position it holds and the flow.
type Slot = Mutex<Option<(u64, Arc<Flow>)>>;

/// The ring of flows. Share it in an `Arc`: the consumer pushes, API requests
/// read through [`Store::reader`].
#[derive(Debug)]
pub struct Store {
    slots: Box<[Slot]>,
    /// `slots.len() - 1`.
    mask: u64,
    capacity: u64,
    /// Serialises writers and holds the position of the next push. There is
    /// meant to be one writer, so this is never contended; it only makes a
    /// second writer harmless.
    writer: Mutex<u64>,
    /// Count of flows pushed and visible to readers (the next position).
    written: AtomicU64,
    /// Flows readers found overwritten, in total.
    overwritten: AtomicU64,
    /// Readers asleep (or about to sleep) in [`Store::wait_for`].
    sleepers: AtomicUsize,
    notify: Notify,
}

impl Default for Store {
    /// A store of [`DEFAULT_CAPACITY`].
    fn default() -> Self {
        Self::with_valid_capacity(DEFAULT_CAPACITY)
    }
}

impl Store {
    /// A store that keeps the last `capacity` flows; `capacity` must be
    /// 2^n − 1 with n in 1..=16 (1, 3, 7, …, 4095, …, 65535).
    pub fn new(capacity: usize) -> Result<Self, StoreError> {
        let valid = (1..=MAX_CAPACITY).contains(&capacity) && (capacity + 1).is_power_of_two();
        if !valid {
            return Err(StoreError::Capacity { got: capacity });
        }
        Ok(Self::with_valid_capacity(capacity))
    }

    fn with_valid_capacity(capacity: usize) -> Self {
        let slots: Box<[Slot]> = (0..=capacity).map(|_| Mutex::new(None)).collect();
        let capacity = capacity as u64;
        Self {
            slots,
            mask: capacity,
            capacity,
            writer: Mutex::new(0),
            written: AtomicU64::new(0),
            overwritten: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            notify: Notify::new(),
        }
    }

    /// Appends a flow, overwriting the oldest when the store is full, and
    /// wakes followers. Returns the flow's position. Meant for one writer;
    /// concurrent calls are safe but serialised.
    pub fn push(&self, flow: impl Into<Arc<Flow>>) -> u64 {
        let flow = flow.into();
        let (position, replaced) = {
            let mut next = lock(&self.writer);
            let position = *next;
            let replaced = lock(self.slot(position)).replace((position, flow));
            *next = position.wrapping_add(1);
            // SeqCst pairs with `wait_for`: either a sleeper sees this
            // position, or this sees the sleeper and wakes it.
            self.written.store(*next, Ordering::SeqCst);
            (position, replaced)
        };
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
        // The replaced flow (and the metadata it shares) is freed here,
        // outside every lock.
        drop(replaced);
        position
    }

    /// The number of flows present (at most the capacity).
    #[must_use]
    pub fn len(&self) -> usize {
        // Bounded by the capacity, which fits a usize.
        self.seen().min(self.capacity) as usize
    }

    /// Whether no flow was ever pushed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.seen() == 0
    }

    /// The number of flows the store keeps.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Flows pushed since the store was made (Hubble's `seen_flows`); also
    /// the position the next flow will get.
    #[must_use]
    pub fn seen(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Flows pushed out of the store by newer ones (`seen − len`).
    #[must_use]
    pub fn evicted(&self) -> u64 {
        self.seen().saturating_sub(self.capacity)
    }

    /// Flows that readers wanted but found overwritten, summed over every
    /// reader (each [`Entry::Lost`] adds its count): the value of
    /// `hubble_lost_events_total{source="hubble_ring_buffer"}`.
    #[must_use]
    pub fn overwritten(&self) -> u64 {
        self.overwritten.load(Ordering::Relaxed)
    }

    /// Position of the oldest flow present.
    #[must_use]
    pub fn oldest(&self) -> u64 {
        self.seen().saturating_sub(self.capacity)
    }

    /// The position a reader starting at `start` begins at.
    #[must_use]
    pub fn position_of(&self, start: Start) -> u64 {
        let seen = self.seen();
        let oldest = seen.saturating_sub(self.capacity);
        match start {
            Start::Oldest => oldest,
            Start::Last(n) => seen.saturating_sub(n).max(oldest),
            Start::Now => seen,
            Start::Position(p) => p,
        }
    }

    /// A reader starting at `start`.
    #[must_use]
    pub fn reader(self: &Arc<Self>, start: Start) -> Reader {
        Reader { store: Arc::clone(self), position: self.position_of(start) }
    }

    /// What is at `*position`, advancing it: the flow (position + 1), the
    /// number lost (position moved to the oldest flow present), or `None`
    /// when nothing is there yet.
    pub fn read_at(&self, position: &mut u64) -> Option<Entry> {
        let p = *position;
        let seen = self.seen();
        if p >= seen {
            return None;
        }
        let oldest = seen.saturating_sub(self.capacity);
        if p < oldest {
            return Some(self.lost(position, oldest));
        }
        let stored = lock(self.slot(p)).as_ref().map(|(at, flow)| (*at, Arc::clone(flow)));
        match stored {
            Some((at, flow)) if at == p => {
                *position = p.wrapping_add(1);
                Some(Entry::Flow(flow))
            }
            // Overwritten between the check above and the lock: the slot
            // holds position `at` > p, so everything before `at + 1 −
            // capacity` is gone.
            Some((at, _)) if at > p => {
                let oldest = self.seen().max(at.saturating_add(1)).saturating_sub(self.capacity);
                Some(self.lost(position, oldest.max(p.saturating_add(1))))
            }
            // Not possible with positions below `seen`; read as "not yet".
            _ => None,
        }
    }

    fn lost(&self, position: &mut u64, oldest: u64) -> Entry {
        let count = oldest.saturating_sub(*position);
        *position = oldest.max(*position);
        self.overwritten.fetch_add(count, Ordering::Relaxed);
        Entry::Lost(count)
    }

    /// The last `n` flows present, oldest first (a snapshot; flows
    /// overwritten while it is taken are skipped).
    #[must_use]
    pub fn last(&self, n: usize) -> Vec<Arc<Flow>> {
        let n = n as u64;
        let start = self.position_of(Start::Last(n));
        self.collect(start, n)
    }

    /// The first `n` flows still present, oldest first (a snapshot, like
    /// [`Store::last`]).
    #[must_use]
    pub fn first(&self, n: usize) -> Vec<Arc<Flow>> {
        self.collect(self.position_of(Start::Oldest), n as u64)
    }

    fn collect(&self, mut position: u64, n: u64) -> Vec<Arc<Flow>> {
        let end = self.seen().min(position.saturating_add(n));
        let mut out = Vec::with_capacity(usize::try_from(end.saturating_sub(position)).unwrap_or(0));
        while position < end {
            match self.read_at(&mut position) {
                Some(Entry::Flow(flow)) => out.push(flow),
                Some(Entry::Lost(_)) => {}
                None => break,
            }
        }
        out
    }

    /// Waits until the flow at `position` is written (returns at once when
    /// it is, or when it was already overwritten). Cancel-safe.
    pub async fn wait_for(&self, position: u64) {
        while self.seen() <= position {
            let _asleep = Sleeper::new(&self.sleepers);
            // A `Notified` receives every `notify_waiters` issued after its
            // creation, so creating it before the check cannot miss a push.
            let notified = self.notify.notified();
            if self.written.load(Ordering::SeqCst) > position {
                return;
            }
            notified.await;
        }
    }

    fn slot(&self, position: u64) -> &Slot {
        // The mask keeps the index below `slots.len()`, which is a usize.
        &self.slots[(position & self.mask) as usize]
    }
}

/// A reader's cursor into a [`Store`]: one per API request.
///
/// ```text
/// let mut reader = store.reader(Start::Last(20));
/// let end = store.seen();                       // the backlog ends here
/// while reader.position() < end {
///     match reader.next() { Some(entry) => send(entry), None => break }
/// }
/// loop { send(reader.next_wait().await) }       // follow mode
/// ```
///
/// A busy writer may push faster than a reader reads, so a backlog read
/// should stop at the `seen()` it started with (or after N flows) rather than
/// at the first `None`. [`Entry::Lost`] counts are exact and are also added
/// to [`Store::overwritten`].
#[derive(Debug, Clone)]
pub struct Reader {
    store: Arc<Store>,
    position: u64,
}

impl Reader {
    /// The position of the next flow this reader reads.
    #[must_use]
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Flows pushed that this reader has not read yet (including those it
    /// will find lost).
    #[must_use]
    pub fn behind(&self) -> u64 {
        self.store.seen().saturating_sub(self.position)
    }

    /// The next entry, or `None` when the reader has caught up.
    #[expect(clippy::should_implement_trait, reason = "a reader can resume after None, unlike an Iterator")]
    pub fn next(&mut self) -> Option<Entry> {
        self.store.read_at(&mut self.position)
    }

    /// The next entry, waiting for the writer when the reader has caught up
    /// (follow mode). Cancel-safe: nothing is consumed until it returns.
    pub async fn next_wait(&mut self) -> Entry {
        loop {
            if let Some(entry) = self.next() {
                return entry;
            }
            self.store.wait_for(self.position).await;
        }
    }

    /// Waits until an entry is available at the reader's position.
    /// Cancel-safe.
    pub async fn wait(&self) {
        self.store.wait_for(self.position).await;
    }
}

/// Counts a reader as asleep for as long as it lives (also when its future
/// is dropped mid-wait).
struct Sleeper<'a>(&'a AtomicUsize);

impl<'a> Sleeper<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Locks a slot or the writer. Nothing panics while holding these locks, so
/// poisoning cannot happen; if it did, the data is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn flow(seq: u64) -> Flow {
        Flow { seq, ..crate::testing::flow() }
    }

    fn seqs(flows: &[Arc<Flow>]) -> Vec<u64> {
        flows.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn capacity_must_be_a_power_of_two_minus_one() {
        for n in 1..=16 {
            let cap = (1usize << n) - 1;
            let store = Store::new(cap).expect("valid capacity");
            assert_eq!(store.capacity(), cap);
        }
        for bad in [0, 2, 4, 100, 4096, 65536, 131_071, usize::MAX] {
            let err = Store::new(bad).expect_err("invalid capacity");
            assert_eq!(err, StoreError::Capacity { got: bad });
            let msg = err.to_string();
            assert!(msg.contains(&bad.to_string()) && msg.contains("4095") && msg.contains("65535"), "{msg}");
        }
        assert_eq!(Store::default().capacity(), DEFAULT_CAPACITY);
    }

    #[test]
    fn wraps_around_keeping_the_last_capacity_flows() {
        let store = Store::new(7).expect("store");
        assert!(store.is_empty());
        assert_eq!(store.last(3), Vec::<Arc<Flow>>::new());
        for i in 0..5 {
            assert_eq!(store.push(flow(i)), i);
        }
        assert_eq!((store.len(), store.seen(), store.evicted()), (5, 5, 0));
        assert_eq!(seqs(&store.last(3)), [2, 3, 4]);
        assert_eq!(seqs(&store.first(2)), [0, 1]);
        for i in 5..20 {
            store.push(flow(i));
        }
        assert_eq!((store.len(), store.seen(), store.evicted()), (7, 20, 13));
        assert_eq!(store.oldest(), 13);
        assert_eq!(seqs(&store.last(100)), (13..20).collect::<Vec<_>>());
        assert_eq!(seqs(&store.first(3)), [13, 14, 15]);
        assert_eq!(seqs(&store.last(1)), [19]);
        assert_eq!(store.overwritten(), 0, "snapshots start inside the window");

        let store = Store::new(1).expect("store");
        store.push(flow(1));
        store.push(flow(2));
        assert_eq!(seqs(&store.last(5)), [2]);
    }

    #[test]
    fn reader_that_falls_behind_learns_exactly_how_many_it_lost() {
        let store = Arc::new(Store::new(15).expect("store"));
        let mut reader = store.reader(Start::Now);
        assert_eq!(reader.next(), None);
        for i in 0..3 {
            store.push(flow(i));
        }
        assert!(matches!(reader.next(), Some(Entry::Flow(f)) if f.seq == 0));
        // Position 1 is next; push 40 more: positions 1..=27 are gone.
        for i in 3..43 {
            store.push(flow(i));
        }
        assert_eq!(store.oldest(), 28);
        assert_eq!(reader.behind(), 42);
        assert_eq!(reader.next(), Some(Entry::Lost(27)));
        assert_eq!(reader.position(), 28);
        let rest: Vec<u64> = std::iter::from_fn(|| reader.next())
            .map(|e| match e {
                Entry::Flow(f) => f.seq,
                Entry::Lost(n) => panic!("lost {n} again"),
            })
            .collect();
        assert_eq!(rest, (28..43).collect::<Vec<_>>());
        assert_eq!(store.overwritten(), 27);

        // A position long gone, and one in the future.
        let mut old = store.reader(Start::Position(0));
        assert_eq!(old.next(), Some(Entry::Lost(28)));
        let mut future = store.reader(Start::Position(1000));
        assert_eq!(future.next(), None);
        assert_eq!(store.reader(Start::Last(4)).position(), 39);
        assert_eq!(store.reader(Start::Last(400)).position(), 28);
    }

    #[test]
    fn concurrent_writer_and_readers_see_every_flow_in_order_or_a_loss() {
        const FLOWS: u64 = 200_000;
        let store = Arc::new(Store::new(255).expect("store"));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let mut reader = store.reader(Start::Position(0));
                std::thread::spawn(move || {
                    let (mut got, mut lost) = (0u64, 0u64);
                    let mut expected = 0u64;
                    while expected < FLOWS {
                        match reader.next() {
                            Some(Entry::Flow(f)) => {
                                assert_eq!(f.seq, expected, "flows arrive in order");
                                expected += 1;
                                got += 1;
                            }
                            Some(Entry::Lost(n)) => {
                                assert!(n > 0);
                                expected += n;
                                lost += n;
                            }
                            None => std::thread::yield_now(),
                        }
                    }
                    (got, lost)
                })
            })
            .collect();
        let writer = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..FLOWS {
                    store.push(flow(i));
                }
            })
        };
        writer.join().expect("writer");
        let mut total_lost = 0;
        for r in readers {
            let (got, lost) = r.join().expect("reader");
            assert_eq!(got + lost, FLOWS, "every flow is either read or counted lost");
            total_lost += lost;
        }
        assert_eq!(store.overwritten(), total_lost);
        assert_eq!(store.seen(), FLOWS);
    }

    #[test]
    fn followers_wake_up_on_push() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().expect("runtime");
        rt.block_on(async {
            let store = Arc::new(Store::new(63).expect("store"));
            let followers: Vec<_> = (0..4)
                .map(|_| {
                    let mut reader = store.reader(Start::Now);
                    tokio::spawn(async move {
                        let mut seqs = Vec::new();
                        while seqs.len() < 100 {
                            match reader.next_wait().await {
                                Entry::Flow(f) => seqs.push(f.seq),
                                Entry::Lost(n) => panic!("lost {n}"),
                            }
                        }
                        seqs
                    })
                })
                .collect();
            // Let the followers fall asleep, then push slowly enough that
            // each push finds sleepers.
            tokio::time::sleep(Duration::from_millis(50)).await;
            for i in 0..100 {
                store.push(flow(i));
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            for f in followers {
                let seqs = tokio::time::timeout(Duration::from_secs(10), f).await.expect("woken").expect("task");
                assert_eq!(seqs, (0..100).collect::<Vec<_>>());
            }
            assert_eq!(store.sleepers.load(Ordering::SeqCst), 0);

            // A wait abandoned midway leaves no sleeper behind.
            let reader = store.reader(Start::Now);
            let waited = tokio::time::timeout(Duration::from_millis(20), reader.wait()).await;
            assert!(waited.is_err());
            assert_eq!(store.sleepers.load(Ordering::SeqCst), 0);
        });
    }
}
