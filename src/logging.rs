//! Logs: `tracing` to stderr, one line per event, level from `RUST_LOG` (default `info`).
//!
//! stderr rather than a file because switchyard runs under systemd, where journald adds the
//! timestamp, unit and priority. pingora logs through the `log` crate; the subscriber's `log`
//! bridge brings those lines into the same stream.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
