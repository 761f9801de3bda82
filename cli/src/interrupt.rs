//! Cleaning up after SIGINT/SIGTERM in commands that build labs and wait on
//! child processes for minutes (`bench datapath`, `bench policy`).
//!
//! The signal handler only writes a byte to a pipe (async-signal-safe); a
//! watcher thread blocked on the pipe then runs the cleanup in an ordinary
//! thread and exits with 130. No signal mask changes, so child processes
//! (collectors, responders, iperf3) keep the default dispositions.

use std::sync::atomic::{AtomicI32, Ordering};

static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: i32) {
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is valid.
        let _ = unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    }
}

/// Runs `cleanup` and exits with status 130 on the first SIGINT or SIGTERM.
/// Call once, before the work starts.
pub fn on_interrupt(cleanup: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [read_fd, write_fd] = fds;
    WRITE_FD.store(write_fd, Ordering::Relaxed);
    std::thread::Builder::new().name("interrupt".into()).spawn(move || {
        let mut byte = 0u8;
        // SAFETY: reading one byte into a valid buffer; blocks until a signal.
        let n = unsafe { libc::read(read_fd, (&raw mut byte).cast(), 1) };
        if n == 1 {
            eprintln!("interrupted: cleaning up …");
            cleanup();
            std::process::exit(130);
        }
    })?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only loads an atomic and calls write(2).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    Ok(())
}
