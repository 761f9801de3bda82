//! Cleaning up after SIGINT/SIGTERM in commands that build labs and wait on
//! child processes for minutes (`bench datapath`, `bench policy`, `bench
//! flood`, `bench restart`).
//!
//! `signal-hook` turns the signals into messages for a watcher thread,
//! which runs the cleanup in an ordinary thread and exits with 130. No
//! signal mask changes, so child processes (collectors, responders, iperf3)
//! keep the default dispositions.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Runs `cleanup` and exits with status 130 on the first SIGINT or SIGTERM.
/// Call once, before the work starts.
pub fn on_interrupt(cleanup: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("interrupt".into()).spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!("interrupted: cleaning up …");
            cleanup();
            std::process::exit(130);
        }
    })?;
    Ok(())
}
