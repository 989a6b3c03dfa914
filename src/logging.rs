//! Logs: `tracing` to stderr, one line per event, level from `RUST_LOG` (default `info`).
//!
//! stderr rather than a file because switchyard runs under systemd, where journald adds the
//! timestamp, unit and priority. pingora logs through the `log` crate; the subscriber's `log`
//! bridge brings those lines into the same stream.
//!
//! A process started by `ctl upgrade` logs to stderr (a pipe the old process reads, so a failed
//! start's error reaches the operator) until it has taken over, then to stdout, which the old
//! process pointed at its own stderr (the journal): the pipe's reader exits with the old process.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

static TO_STDOUT: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// From now on, log to stdout (see the module doc).
pub fn to_stdout() {
    TO_STDOUT.store(true, Ordering::Relaxed);
}

/// Where log lines go now: stderr, or stdout after [`to_stdout`].
pub fn writer() -> Box<dyn std::io::Write> {
    if TO_STDOUT.load(Ordering::Relaxed) {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::io::stderr())
    }
}

/// A duplicate of the descriptor logs go to now: a process this one starts for an upgrade logs
/// there once it has taken over (its stdout).
pub fn dup_fd() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    if TO_STDOUT.load(Ordering::Relaxed) {
        std::io::stdout().as_fd().try_clone_to_owned()
    } else {
        std::io::stderr().as_fd().try_clone_to_owned()
    }
}
