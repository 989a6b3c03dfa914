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

/// Keeps pingora's server module (which logs "Starting service: …", "service … exited",
/// "Waiting for runtimes…" at INFO) to WARN.
const QUIET_PINGORA: &str = "pingora_core::server=warn";

/// The filter directives for `RUST_LOG` (`None`: unset): `info`, and pingora's start-up chatter
/// only when asked for — `RUST_LOG` at debug or trace, or naming pingora itself. (The systemd
/// unit sets `RUST_LOG=info`, which must not bring the chatter back.)
pub fn directives(rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim).filter(|l| !l.is_empty()) {
        None => format!("info,{QUIET_PINGORA}"),
        Some(l) if ["pingora", "debug", "trace"].iter().any(|w| l.contains(w)) => l.to_string(),
        Some(l) => format!("{l},{QUIET_PINGORA}"),
    }
}

fn filter() -> EnvFilter {
    let given = std::env::var("RUST_LOG").ok();
    EnvFilter::try_new(directives(given.as_deref())).unwrap_or_else(|e| {
        eprintln!(
            "warning: RUST_LOG `{}` is not a valid filter ({e}); logging at info",
            given.unwrap_or_default()
        );
        EnvFilter::new(directives(None))
    })
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

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn pingora_start_up_lines_need_debug_or_their_name() {
        assert_eq!(directives(None), "info,pingora_core::server=warn");
        assert_eq!(directives(Some("info")), "info,pingora_core::server=warn");
        assert_eq!(
            directives(Some("warn,switchyard=info")),
            "warn,switchyard=info,pingora_core::server=warn"
        );
        assert_eq!(directives(Some("debug")), "debug");
        assert_eq!(directives(Some("info,pingora=info")), "info,pingora=info");
    }
}
