//! Logs: `tracing` to stderr, one line per event, level from `RUST_LOG` (default `info`, with
//! pingora's own start-up chatter — a line per service started and stopped — shown only at
//! `debug`: switchyard logs one start-up line with every listen address instead).
//!
//! `[log] format = "json"` writes one JSON object per line (`level`, `target`, `fields`..., for a
//! log shipper); `timestamps = false` drops the timestamp where journald adds its own. Both are
//! read once, when `serve` starts: a change takes a restart or an upgrade.
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

use crate::config::{LogConfig, LogFormat};

static TO_STDOUT: AtomicBool = AtomicBool::new(false);

/// The filter when `RUST_LOG` is not set: `info`, but pingora's server module (which logs
/// "Starting service: …", "service … exited", "Waiting for runtimes…" at INFO) only from WARN;
/// `RUST_LOG=debug` shows everything.
pub const DEFAULT_FILTER: &str = "info,pingora_core::server=warn";

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// Installs the global subscriber with the default text format (`demo`, and `serve` before its
/// configuration is read). Safe to call more than once (later calls do nothing).
pub fn init() {
    init_with(&LogConfig::default());
}

/// Installs the global subscriber as `[log]` says. Only the first call in a process has an
/// effect (tracing has one global subscriber).
pub fn init_with(log: &LogConfig) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(writer)
        .with_target(true);
    // The four combinations are four types; each is installed where it is built.
    let _ = match (log.format, log.timestamps) {
        (LogFormat::Json, true) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        (LogFormat::Json, false) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .without_time()
            .try_init(),
        (LogFormat::Text, true) => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        (LogFormat::Text, false) => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .without_time()
            .try_init(),
    };
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
