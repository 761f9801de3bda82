//! The pipeline: a thread of its own drains the ring buffer (on wake-up
//! and on a short timer), decodes, builds flows, runs the hooks (namespaces
//! seen, metrics, policy accounting, debug records for control subscribers)
//! and stores.
//!
//! The thread sleeps in `epoll_wait` on the ring buffer alone (edge
//! triggered, as the probes wake it only past a threshold): no async
//! runtime between a wake-up and the drain, so a wake-up costs one context
//! switch and one system call.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::atomic::AtomicBool;

use super::*;

/// Drains the ring buffer on the pipeline thread until `stop` is set (seen
/// within the longest drain period).
pub(super) async fn consume(shared: Arc<Shared>, ring: RingBuf<MapData>, stop: Arc<AtomicBool>) -> Result<(), AgentError> {
    // Events the datapath wrote while no collector ran wait in the pinned
    // ring buffer: decode them with the desired state's names, unless it
    // takes too long to come (the ring buffer holds about 37,000 events).
    let mut programmed = shared.programmed.subscribe();
    if tokio::time::timeout(FIRST_APPLY_WAIT, programmed.wait_for(|p| *p)).await.is_err() {
        log::warn!("no desired state within {} s: draining the ring buffer without it", FIRST_APPLY_WAIT.as_secs());
    }
    let waiter = Waiter::new(&ring).map_err(AgentError::RingBuf)?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sl-pipeline".into())
        .spawn(move || {
            run(&shared, ring, &waiter, &stop);
            let _ = done_tx.send(());
        })
        .map_err(AgentError::RingBuf)?;
    let _ = done_rx.await;
    Ok(())
}

/// An epoll instance watching the ring buffer's descriptor, edge triggered.
struct Waiter {
    epoll: OwnedFd,
}

impl Waiter {
    fn new(ring: &RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: plain system call; the descriptor it returns is ours.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut interest = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: 0 };
        // SAFETY: both descriptors are open; `interest` is a valid event.
        if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, ring.as_raw_fd(), &raw mut interest) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { epoll })
    }

    /// Sleeps until the probes wake the consumer or `timeout` passes.
    fn wait(&self, timeout: Duration) {
        let mut ready = [libc::epoll_event { events: 0, u64: 0 }];
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `ready` has room for the one event asked for. An error
        // (EINTR) is a spurious wake-up: the caller drains and waits again.
        unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), ready.as_mut_ptr(), 1, ms) };
    }
}

/// The pipeline thread's loop.
fn run(shared: &Shared, mut ring: RingBuf<MapData>, waiter: &Waiter, stop: &AtomicBool) {
    let mut period = DRAIN_PERIOD.0;
    let mut empty = 0u32;
    let mut pipeline = Pipeline {
        flushed: Instant::now(),
        builder: FlowBuilder::new(),
        namespaces: Vec::new(),
        metrics: shared.metrics.recorder(),
        policy: shared.own_metrics.policy_recorder(),
    };
    while !stop.load(Ordering::Relaxed) {
        // What came before the first wait (the pinned backlog) is drained
        // at once: an edge-triggered wait would not report it.
        let events = drain(shared, &mut pipeline, &mut ring);
        // Every 10 ms while events come; once nothing has come for 100 ms,
        // the timer backs off to 100 ms (an idle agent wakes 10 times a
        // second, not 100). A burst past the wake-up threshold still
        // wakes the pipeline at once, and the first event resets the timer.
        if events > 0 {
            (empty, period) = (0, DRAIN_PERIOD.0);
        } else {
            empty = empty.saturating_add(1);
            if empty >= DRAIN_BACKOFF_AFTER {
                period = (period * 2).min(DRAIN_PERIOD.1);
            }
        }
        waiter.wait(period);
    }
}

/// The drain timer's period: while events come, and at most when idle.
pub(crate) const DRAIN_PERIOD: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(100));
/// Empty drains in a row before the timer backs off.
const DRAIN_BACKOFF_AFTER: u32 = 10;

/// How long the consumer waits for the first desired state.
const FIRST_APPLY_WAIT: Duration = Duration::from_secs(10);

/// The pipeline thread's own state: flow building and the metrics hooks'
/// per-thread counts (flushed after every drain).
struct Pipeline {
    /// When the recorders were last flushed.
    flushed: Instant,
    /// Namespaces seen in this drain, with their newest flow time: handed
    /// to the observer once per drain (one lock), not once per flow.
    namespaces: Vec<(Arc<crate::metadata::PodMeta>, i64)>,
    builder: FlowBuilder,
    metrics: crate::metrics::Recorder,
    policy: crate::agent_metrics::PolicyRecorder,
}

/// The pipeline for everything pending: decode → build the flow → hooks
/// (namespaces seen, debug records for control subscribers) → store.
/// Returns how many events it decoded.
fn drain(shared: &Shared, pipeline: &mut Pipeline, ring: &mut RingBuf<MapData>) -> u64 {
    let listeners = shared.events.receiver_count() > 0 || shared.opts.debug_events;
    let meta = Arc::clone(&shared.meta.read().expect("metadata lock"));
    let started = Instant::now();
    shared.last_drain_ns.store(monotonic_ns(), Ordering::Relaxed);
    let (mut events, mut oldest_ns) = (0u64, u64::MAX);
    // Each flow goes through the hooks and into the store one event late:
    // by then the copy into its `Arc` has landed, and the hooks' reads of
    // it do not stall on the stores that built it (measured: a third of
    // the hooks' cost; docs/PERFORMANCE.md).
    let mut previous: Option<Arc<Flow>> = None;
    while let Some(item) = ring.next() {
        match decoder::decode(&item) {
            Ok(ev) => {
                events += 1;
                oldest_ns = oldest_ns.min(ev.ts_ns);
                let flow = Arc::new(pipeline.builder.build(&ev, &meta));
                if listeners {
                    let record = Arc::new(Record::new(&ev, &flow, &meta.node_name));
                    if shared.opts.debug_events {
                        println!("{}", record.summary());
                    }
                    let _ = shared.events.send(record);
                }
                if let Some(flow) = previous.replace(flow) {
                    pipeline.finish(shared, flow);
                }
            }
            Err(err) => {
                if shared.undecodable.fetch_add(1, Ordering::Relaxed) == 0 {
                    log::warn!("undecodable event: {err}");
                }
            }
        }
    }
    if let Some(flow) = previous.take() {
        pipeline.finish(shared, flow);
    }
    pipeline.flush_namespaces(shared);
    if pipeline.flushed.elapsed() >= FLUSH_INTERVAL {
        pipeline.metrics.flush();
        pipeline.policy.flush();
        pipeline.flushed = Instant::now();
    }
    if events > 0 {
        shared.decoded.fetch_add(events, Ordering::Relaxed);
        let delay = Duration::from_nanos(monotonic_ns().saturating_sub(oldest_ns));
        shared.own_metrics.observe_batch(events, started.elapsed(), delay);
    }
    events
}

/// How often the pipeline's metric counts reach `/metrics` at most: the
/// recorders' pending counts are flushed at the end of the first drain
/// after this (drains run at least every 10 ms while events come, every
/// 100 ms when idle).
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

impl Pipeline {
    /// Hands the namespaces seen so far to the observer.
    fn flush_namespaces(&mut self, shared: &Shared) {
        for (pod, time) in self.namespaces.drain(..) {
            shared.observer.saw_namespaces([pod.namespace.as_str()], time);
        }
    }

    /// The hooks, then the store.
    fn finish(&mut self, shared: &Shared, flow: Arc<Flow>) {
        for pod in [&flow.source.pod, &flow.destination.pod].into_iter().flatten() {
            // Pods share their metadata: comparing pointers finds a pod's
            // namespace without comparing strings.
            match self.namespaces.iter_mut().find(|(p, _)| Arc::ptr_eq(p, pod) || p.namespace == pod.namespace) {
                Some((_, t)) => *t = (*t).max(flow.time_ns),
                None => {
                    if self.namespaces.len() >= 64 {
                        self.flush_namespaces(shared);
                    }
                    self.namespaces.push((Arc::clone(pod), flow.time_ns));
                }
            }
        }
        self.metrics.record(&flow);
        self.policy.record(&flow);
        shared.observer.store.push(flow);
    }
}
