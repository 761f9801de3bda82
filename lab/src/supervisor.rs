//! `lab supervise`: the lab's supervisor, restarting a collector or the
//! relay that exits, as the kubelet restarts a DaemonSet's pod.
//!
//! `lab up` starts it detached (`sightline lab supervise --name NAME`) and
//! records its pid in the lab's state; `lab down` stops it before anything
//! else. It checks the lab's processes four times a second. One that has
//! exited is started again after a back-off — 1 s, doubling with each
//! restart up to 30 s, back to 1 s once the process has run for 60 s — with
//! the same arguments and addresses ([`cluster::restart_collector_locked`]: and
//! then the node's desired state; [`cluster::restart_relay_in`]: the same
//! export configuration). Each exit and restart is a line of
//! `/run/sightline/labs/<name>/supervisor.log`.
//!
//! It takes the lab's lock whenever it reads or writes the state and for
//! the whole of a restart, so it never races a lab command: a process that a
//! command restarted meanwhile (a new pid in the state) is left alone.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::cluster::{self, LabState, Supervisor};

/// The first back-off.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A process that ran this long starts its back-off again from the start.
pub const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// How often the processes are checked.
const POLL: Duration = Duration::from_millis(250);

/// One supervised process's back-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    delay: Duration,
    started: Instant,
}

impl Backoff {
    /// For a process started at `started`.
    #[must_use]
    pub fn new(started: Instant) -> Self {
        Self { delay: BACKOFF_START, started }
    }

    /// The process exited at `now`: how long to wait before starting it
    /// again.
    pub fn exited(&mut self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.started) >= BACKOFF_RESET {
            self.delay = BACKOFF_START;
        }
        self.delay
    }

    /// It was started again at `now`; the next wait is twice as long.
    pub fn restarted(&mut self, now: Instant) {
        self.started = now;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
    }

    /// Starting it failed: the wait before the next try, twice as long.
    pub fn failed(&mut self) -> Duration {
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        self.delay
    }

    /// A lab command started it again at `now` (the back-off stays).
    pub fn replaced(&mut self, now: Instant) {
        self.started = now;
    }
}

/// A process of the lab.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Collector(String),
    Relay,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Collector(node) => write!(f, "the collector of {node}"),
            Self::Relay => f.write_str("the relay"),
        }
    }
}

/// The processes a lab's state says should run, with their pids.
fn targets(state: &LabState) -> Vec<(Target, u32)> {
    let mut out = Vec::new();
    if state.datapath {
        out.extend(state.nodes.iter().map(|n| (Target::Collector(n.name.clone()), n.collector_pid)));
    }
    if let Some(r) = &state.relay {
        out.push((Target::Relay, r.pid));
    }
    out
}

fn pid_of(state: &LabState, target: &Target) -> Option<u32> {
    match target {
        Target::Collector(node) => state.nodes.iter().find(|n| &n.name == node).map(|n| n.collector_pid),
        Target::Relay => state.relay.as_ref().map(|r| r.pid),
    }
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists.
    raw > 0 && unsafe { libc::kill(raw, 0) } == 0 && !cluster::is_zombie(pid)
}

/// Reaps the supervisor's own children (the processes it restarted) and
/// returns how each ended.
fn reap() -> BTreeMap<u32, String> {
    let mut ended = BTreeMap::new();
    loop {
        let mut status = 0;
        // SAFETY: non-blocking waitpid on any child, with a valid pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        let Ok(pid) = u32::try_from(pid) else { break };
        if pid == 0 {
            break;
        }
        let how = if libc::WIFEXITED(status) {
            format!("exited with status {}", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("was killed by signal {}", libc::WTERMSIG(status))
        } else {
            "ended".to_owned()
        };
        ended.insert(pid, how);
    }
    ended
}

/// The supervisor's log.
pub fn log_path(name: &str) -> PathBuf {
    cluster::lab_dir(name).join("supervisor.log")
}

fn log_line(path: &Path, message: &str) {
    let line = format!("{} {message}\n", format_args!("{:.3}", jiff::Timestamp::now()));
    // Nowhere else to report a failed write.
    let _ = cluster::append(path, &line);
}

/// Starts the lab's supervisor, detached; returns once it runs.
pub fn start(name: &str) -> anyhow::Result<Supervisor> {
    let log = log_path(name);
    let mut cmd = Command::new(cluster::self_exe()?);
    cmd.args(["lab", "supervise", "--name", name]);
    let child = cluster::spawn_detached(&mut cmd, &log, true)?;
    let pid = cluster::wait_ready(child, &log, "the supervisor", Duration::from_secs(10))?;
    Ok(Supervisor { pid })
}

/// A supervised process.
struct Watched {
    pid: u32,
    backoff: Backoff,
    /// When it is to be started again, once it was seen gone.
    due: Option<Instant>,
}

/// `lab supervise`: runs until the lab is gone or another supervisor took
/// its place (or SIGTERM from `lab down`).
pub fn run(name: &str) -> anyhow::Result<()> {
    cluster::validate_name(name)?;
    let log = log_path(name);
    let me = std::process::id();
    {
        use std::io::Write as _;
        // `lab up` waits for this line; nothing else goes to stdout, which
        // closes when `lab up` exits.
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready").context("telling lab up that the supervisor runs")?;
        out.flush().context("telling lab up that the supervisor runs")?;
    }
    log_line(&log, &format!("supervisor {me} watching lab {name}"));
    let mut watched: BTreeMap<Target, Watched> = BTreeMap::new();
    let mut ended: BTreeMap<u32, String> = BTreeMap::new();
    loop {
        ended.extend(reap());
        // Held while the state is read and the processes checked, so that
        // a process a lab command is restarting is never seen as gone.
        let lock = cluster::lock(name)?;
        let state = match LabState::load(name) {
            Ok(state) => state,
            Err(_) => {
                log_line(&log, "the lab is gone; supervisor stops");
                return Ok(());
            }
        };
        if state.supervisor.as_ref().is_some_and(|s| s.pid != me) {
            log_line(&log, "another supervisor took over; this one stops");
            return Ok(());
        }
        let now = Instant::now();
        let current = targets(&state);
        watched.retain(|t, _| current.iter().any(|(c, _)| c == t));
        for (target, pid) in current {
            let w = watched.entry(target.clone()).or_insert_with(|| Watched { pid, backoff: Backoff::new(now), due: None });
            if w.pid != pid {
                // Started again meanwhile (by a lab command, or a restart
                // that failed after starting it).
                w.pid = pid;
                w.due = None;
                w.backoff.replaced(now);
            }
            if w.due.is_none() && !alive(pid) {
                let delay = w.backoff.exited(now);
                w.due = Some(now + delay);
                let how = ended.remove(&pid).unwrap_or_else(|| "exited".to_owned());
                log_line(&log, &format!("{target} (pid {pid}) {how}; restarting it in {}s", delay.as_secs()));
            }
        }
        drop(lock);
        let due: Vec<Target> =
            watched.iter().filter(|(_, w)| w.due.is_some_and(|d| d <= now)).map(|(t, _)| t.clone()).collect();
        for target in due {
            let Some(w) = watched.get_mut(&target) else { continue };
            match restart(name, &target, w.pid) {
                Ok(Restarted::Done { pid, restarts }) => {
                    log_line(&log, &format!("restarted {target}: pid {pid} (restart {restarts})"));
                    w.pid = pid;
                    w.due = None;
                    w.backoff.restarted(Instant::now());
                }
                Ok(Restarted::AlreadyRunning(pid)) => {
                    w.pid = pid;
                    w.due = None;
                }
                Ok(Restarted::Gone) => return Ok(()),
                Err(err) => {
                    let delay = w.backoff.failed();
                    w.due = Some(Instant::now() + delay);
                    log_line(&log, &format!("restarting {target} failed: {err:#}; trying again in {}s", delay.as_secs()));
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

enum Restarted {
    /// Started again: its pid and how many restarts it has had.
    Done { pid: u32, restarts: u32 },
    /// Something else started it meanwhile.
    AlreadyRunning(u32),
    /// The lab is gone.
    Gone,
}

/// Restarts `target` under the lab's lock, unless the state says it was
/// started again meanwhile.
fn restart(name: &str, target: &Target, seen_pid: u32) -> anyhow::Result<Restarted> {
    let _lock = cluster::lock(name)?;
    let Ok(mut state) = LabState::load(name) else { return Ok(Restarted::Gone) };
    let Some(pid) = pid_of(&state, target) else { return Ok(Restarted::Gone) };
    if pid != seen_pid || alive(pid) {
        return Ok(Restarted::AlreadyRunning(pid));
    }
    let result = match target {
        Target::Collector(node) => {
            cluster::restart_collector_locked(&mut state, node, sightline_collector::pins::Reload::None).map(|r| {
                let restarts = state.nodes.iter().find(|n| &n.name == node).map_or(0, |n| n.collector_restarts);
                (r.pid, restarts)
            })
        }
        Target::Relay => cluster::restart_relay_in(&mut state).map(|r| (r.pid, r.restarts)),
    };
    // Whatever was started is recorded, even when programming it failed.
    state.save()?;
    let (pid, restarts) = result?;
    Ok(Restarted::Done { pid, restarts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds_and_resets_after_a_minute_of_running() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            now += Duration::from_secs(2);
            let d = b.exited(now);
            delays.push(d.as_secs());
            now += d;
            b.restarted(now);
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        // Ran for a minute: back to 1 s.
        assert_eq!(b.exited(now + BACKOFF_RESET), BACKOFF_START);
        b.restarted(now + BACKOFF_RESET);
        assert_eq!(b.exited(now + BACKOFF_RESET + Duration::from_secs(1)), Duration::from_secs(2));
        // Failed starts back off too.
        let mut b = Backoff::new(t0);
        assert_eq!(b.failed(), Duration::from_secs(2));
        assert_eq!(b.failed(), Duration::from_secs(4));
        b.replaced(t0 + BACKOFF_RESET);
        assert_eq!(b.exited(t0 + BACKOFF_RESET), Duration::from_secs(4));
    }

    #[test]
    fn the_supervisor_is_found_by_its_command_line() {
        assert_eq!(Target::Collector("node-2".into()).to_string(), "the collector of node-2");
        assert_eq!(Target::Relay.to_string(), "the relay");
        assert!(!alive(0));
        assert!(alive(std::process::id()));
    }
}
