//! Replacing the running binary without refusing or resetting a connection (`ctl upgrade`).
//!
//! The old process orchestrates, as nginx's and HAProxy's masters do, because only it knows when
//! it is safe to let go (next-steps §1.3):
//!
//! 1. run `<binary> check -c <config>`; stop on failure, with its output;
//! 2. freeze: every change answers 409 `upgrade_in_progress`, the guard and rollouts hold, so
//!    state.json is final ([`Admin::freeze`]);
//! 3. spawn `<binary> serve -c <config> --upgrade`; the new process checks its backends until
//!    the pools with traffic have `min_healthy` healthy ([`warm_up`]), then waits on pingora's
//!    upgrade socket for the listening sockets;
//! 4. once that socket exists (seen with `stat`, never by connecting: the new process accepts
//!    exactly one connection) and the child is alive, the signal watch returns pingora's
//!    `GracefulUpgrade`: pingora sends every fd in its table (the proxy's listeners, and the
//!    admin and metrics sockets, [`crate::httpd::HandOver`]), keeps accepting for 5 s, then
//!    stops; in-flight requests finish and the process exits 0 (the drain watcher).
//!
//! Any failure before step 4 (bad binary, failed check, the child exits or is not waiting in
//! time) kills the child and unfreezes: the old process serves on, untouched. After step 4 there
//! is no way back, so everything that can fail in the new process happens before it asks for the
//! sockets.
//!
//! The new process logs to a pipe the old one reads (so a failed start's error reaches `ctl
//! upgrade`), and to the old process's stderr (the journal) once it has taken over
//! ([`crate::logging::to_stdout`]); it then tells systemd it is the main process
//! ([`crate::sd_notify`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use serde::Serialize;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::HealthConfig;
use crate::health::{probe, Probe, Tracker};
use crate::routing::Switchboard;

/// Set in the new process's environment: the old process's pid.
pub const ENV_FROM: &str = "SWITCHYARD_UPGRADE_FROM";
/// Set in the new process's environment: how long it has to warm up, in milliseconds.
pub const ENV_DEADLINE_MS: &str = "SWITCHYARD_UPGRADE_DEADLINE_MS";

/// How long `ctl upgrade` gives the whole hand-over by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the new process warms up when nobody said (started by hand with `--upgrade`).
const DEFAULT_WARM_UP: Duration = Duration::from_secs(30);
/// Lines of the new process's output kept to explain a failed start.
const STDERR_LINES: usize = 40;
/// pingora's limits on the fd table it sends (transfer_fd/mod.rs): 32 fds, keys joined by
/// spaces into 2 048 bytes, silently truncated beyond (and then the receiver panics).
const MAX_FDS: usize = 32;
const MAX_KEYS_LEN: usize = 2048;

/// When this process started (RFC 3339), for `status`.
pub fn started() -> &'static str {
    static STARTED: OnceLock<String> = OnceLock::new();
    STARTED.get_or_init(crate::state::now_rfc3339)
}

/// Where the running binary was installed: the default for `ctl upgrade --binary`.
///
/// `argv[0]` made absolute at start-up (searched on `$PATH` when it is a bare name), not
/// `/proc/self/exe`: once `install` has put a new binary in place, that link names the old,
/// deleted inode ("… (deleted)"), and the point of an upgrade is to run the new one.
pub fn install_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let argv0 = std::env::args_os().next().map(PathBuf::from);
        let found = argv0.and_then(|a| {
            if a.components().count() > 1 {
                std::env::current_dir().ok().map(|cwd| cwd.join(&a))
            } else {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(&a))
                        .find(|p| p.is_file())
                })
            }
        });
        found.unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap_or_default();
            let text = exe.to_string_lossy();
            PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text))
        })
    })
}

/// Asks the process's signal watch to return pingora's `GracefulUpgrade`; made by
/// [`crate::server::ProcessSignals::hand_over_trigger`].
#[derive(Clone)]
pub struct HandOverTrigger(Arc<dyn Fn() -> bool + Send + Sync>);

impl HandOverTrigger {
    pub fn new(f: impl Fn() -> bool + Send + Sync + 'static) -> HandOverTrigger {
        HandOverTrigger(Arc::new(f))
    }

    fn fire(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for HandOverTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandOverTrigger")
    }
}

/// Turns true once pingora has sent the sockets (or tried to): from then on the admin API and
/// the metrics endpoint of the old process stop accepting, so every new connection is the new
/// process's (the sockets stay open: the new process holds them; nothing is refused).
#[derive(Clone)]
pub struct HandedOver(watch::Receiver<bool>);

impl HandedOver {
    /// A watch that never turns (an embedded server).
    pub fn never() -> HandedOver {
        HandedOver(watch::channel(false).1)
    }

    /// True once the service should stop accepting: at pingora's shutdown, or once the sockets
    /// have been handed over. Must be called inside a tokio runtime.
    pub fn stop_accepting(&self, mut shutdown: ShutdownWatch) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        let mut handed = self.0.clone();
        tokio::spawn(async move {
            loop {
                if *shutdown.borrow() || *handed.borrow() {
                    let _ = tx.send(true);
                    return;
                }
                tokio::select! {
                    r = shutdown.changed() => if r.is_err() { return },
                    r = handed.changed() => if r.is_err() { return },
                }
            }
        });
        rx
    }
}

/// Whether this process has handed its listening sockets to a new one. Process-wide, as the
/// fact is: the proxy reads it per request (proxy.rs) to stop keeping connections alive.
static HANDED_OVER: AtomicBool = AtomicBool::new(false);

/// See [`HANDED_OVER`].
pub fn handed_over() -> bool {
    HANDED_OVER.load(Ordering::Relaxed)
}

/// Watches pingora's execution phase for the hand-over.
pub struct PhaseWatch {
    phases: Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
    tx: watch::Sender<bool>,
}

impl PhaseWatch {
    pub fn new(
        phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    ) -> (PhaseWatch, HandedOver) {
        let (tx, rx) = watch::channel(false);
        (
            PhaseWatch {
                phases: Mutex::new(Some(phases)),
                tx,
            },
            HandedOver(rx),
        )
    }
}

#[async_trait]
impl BackgroundService for PhaseWatch {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        loop {
            match phases.recv().await {
                Ok(ExecutionPhase::GracefulUpgradeCloseTimeout) => {
                    tracing::info!(
                        "listening sockets handed over; the admin API and metrics are the new \
                         process's from now on; proxy connections are accepted here for 5 s more"
                    );
                    HANDED_OVER.store(true, Ordering::Relaxed);
                    let _ = self.tx.send(true);
                    return;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// `POST /v1/upgrade`.
#[derive(Debug, Clone, Default)]
pub struct UpgradeRequest {
    /// The new binary; default: [`install_path`].
    pub binary: Option<PathBuf>,
    /// Bound on the whole hand-over; default [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// The answer to a hand-over that was started: the new process has the sockets coming.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    pub old_pid: u32,
    pub new_pid: u32,
    pub binary: String,
    /// `<binary> --version` of the new binary.
    pub version: String,
    /// The routing generation frozen for the hand-over; the new process starts from it.
    pub generation: u64,
    /// Milliseconds from the request to the hand-over (check, spawn, warm-up).
    pub took_ms: u64,
}

/// Why an upgrade did not happen. The old process serves on, unchanged, after every one.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "an upgrade is already in progress; wait for it (`switchyard ctl status` shows the pid)"
    )]
    InProgress,
    #[error(
        "upgrade is only available in a process started with `switchyard serve -c FILE` \
         (it restarts itself from that file)"
    )]
    Unavailable,
    #[error("cannot upgrade to {path}: {reason}")]
    Binary { path: PathBuf, reason: String },
    #[error("the new binary failed its pre-flight check; nothing was changed:\n{output}")]
    Check { output: String },
    #[error("cannot hand the sockets over: {0}")]
    Keys(String),
    #[error("cannot start {binary}: {reason}")]
    Spawn { binary: PathBuf, reason: String },
    #[error(
        "the new process exited ({status}) before taking over; the old one serves on \
         unchanged. Its output:\n{output}"
    )]
    ChildExited { status: String, output: String },
    #[error(
        "the new process was not ready to take over within {timeout:?} (its backends' health \
         checks, or a slow start); it was stopped and the old one serves on unchanged. Its \
         output:\n{output}"
    )]
    NotReady { timeout: Duration, output: String },
}

impl UpgradeError {
    /// The HTTP status this is answered with.
    pub fn status(&self) -> u16 {
        match self {
            UpgradeError::InProgress => 409,
            UpgradeError::Unavailable => 501,
            UpgradeError::Binary { .. } => 400,
            UpgradeError::Check { .. } | UpgradeError::Keys(_) => 422,
            UpgradeError::Spawn { .. } | UpgradeError::ChildExited { .. } => 502,
            UpgradeError::NotReady { .. } => 504,
        }
    }

    /// The stable code scripts match on.
    pub fn code(&self) -> &'static str {
        match self {
            UpgradeError::InProgress => "upgrade_in_progress",
            UpgradeError::Unavailable => "upgrade_unavailable",
            UpgradeError::Binary { .. } => "bad_binary",
            UpgradeError::Check { .. } => "check_failed",
            UpgradeError::Keys(_) => "cannot_hand_over",
            UpgradeError::Spawn { .. } => "spawn_failed",
            UpgradeError::ChildExited { .. } => "new_process_failed",
            UpgradeError::NotReady { .. } => "new_process_not_ready",
        }
    }
}

/// Runs `ctl upgrade` in the old process.
pub struct Upgrader {
    admin: Arc<Admin>,
    config_path: PathBuf,
    upgrade_sock: PathBuf,
    /// The fd table keys this process hands over (checked against pingora's limits).
    keys: Vec<String>,
    trigger: HandOverTrigger,
    busy: AtomicBool,
}

impl Upgrader {
    pub fn new(
        admin: Arc<Admin>,
        config_path: PathBuf,
        upgrade_sock: PathBuf,
        keys: Vec<String>,
        trigger: HandOverTrigger,
    ) -> Upgrader {
        // Pin the start time and the install path now, before anything could replace the binary.
        let _ = (started(), install_path());
        Upgrader {
            admin,
            config_path,
            upgrade_sock,
            keys,
            trigger,
            busy: AtomicBool::new(false),
        }
    }

    /// Runs the hand-over up to the point of no return; see the module doc.
    pub async fn upgrade(&self, req: UpgradeRequest) -> Result<Started, UpgradeError> {
        if self.busy.swap(true, Ordering::SeqCst) {
            return Err(UpgradeError::InProgress);
        }
        let result = self.run(req).await;
        if result.is_err() {
            self.busy.store(false, Ordering::SeqCst);
        }
        // On success the process stays busy: it is leaving, and must not start a second one.
        result
    }

    async fn run(&self, req: UpgradeRequest) -> Result<Started, UpgradeError> {
        let begun = Instant::now();
        let timeout = req.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let deadline = begun + timeout;
        let binary = req
            .binary
            .clone()
            .unwrap_or_else(|| install_path().to_path_buf());
        check_executable(&binary)?;
        self.check_keys()?;

        let version = run_quietly(&binary, &["--version".as_ref()], deadline).await?;
        let version = version.lines().next().unwrap_or("").trim().to_string();
        let check = run_quietly(
            &binary,
            &[
                "check".as_ref(),
                "-c".as_ref(),
                self.config_path.as_os_str(),
            ],
            deadline,
        )
        .await?;
        tracing::info!(
            "upgrade to {} ({version}): {}",
            binary.display(),
            check.trim()
        );

        self.admin.freeze();
        let generation = self.admin.switchboard().state().generation;
        match self.spawn_and_wait(&binary, deadline, timeout).await {
            Ok(new_pid) => {
                tracing::info!(
                    "handing the listening sockets to pid {new_pid} ({version}); generation \
                     {generation}"
                );
                if !self.trigger.fire() {
                    // The signal watch is gone: the server is already stopping.
                    tracing::error!("cannot start the hand-over: the server is shutting down");
                }
                Ok(Started {
                    old_pid: std::process::id(),
                    new_pid,
                    binary: binary.display().to_string(),
                    version,
                    generation,
                    took_ms: begun.elapsed().as_millis() as u64,
                })
            }
            Err(e) => {
                self.admin.unfreeze();
                tracing::warn!("upgrade abandoned, serving on: {e}");
                Err(e)
            }
        }
    }

    /// Starts the new process and waits until it is alive and waiting for the sockets. On any
    /// failure the child is killed and reaped.
    async fn spawn_and_wait(
        &self,
        binary: &Path,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<u32, UpgradeError> {
        // A socket left by an earlier attempt would look like the new process waiting.
        let _ = std::fs::remove_file(&self.upgrade_sock);
        let mut cmd = std::process::Command::new(binary);
        cmd.args(["serve", "--upgrade", "-c"])
            .arg(&self.config_path)
            .env(ENV_FROM, std::process::id().to_string())
            .env(
                ENV_DEADLINE_MS,
                deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .to_string(),
            )
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        // Its stdout is where we log (the journal under systemd): where it logs once it has
        // taken over, when the pipe below has no reader any more.
        match crate::logging::dup_fd() {
            Ok(fd) => {
                cmd.stdout(std::process::Stdio::from(fd));
            }
            Err(e) => tracing::warn!("the new process's log after the hand-over is lost: {e}"),
        }
        // Its own process group: a Ctrl-C meant for the old process in a terminal must not stop
        // the new one.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child =
            tokio::process::Command::from(cmd)
                .spawn()
                .map_err(|e| UpgradeError::Spawn {
                    binary: binary.to_path_buf(),
                    reason: e.to_string(),
                })?;
        let pid = child.id().unwrap_or(0);
        let output = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward(stderr, pid, output.clone()));
        }
        let tail = |output: &Arc<Mutex<VecDeque<String>>>| {
            let lines = output.lock().unwrap_or_else(|p| p.into_inner());
            lines.iter().cloned().collect::<Vec<_>>().join("\n")
        };
        let failed = |e: UpgradeError, child: &mut tokio::process::Child| {
            let _ = child.start_kill();
            e
        };
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Let the reader take the last lines the child wrote.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(UpgradeError::ChildExited {
                    status: status.to_string(),
                    output: tail(&output),
                });
            }
            if is_socket(&self.upgrade_sock) {
                // pingora binds, sets the mode, then listens: give it that moment, then check
                // the child is still there.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(UpgradeError::ChildExited {
                        status: status.to_string(),
                        output: tail(&output),
                    });
                }
                // The child outlives this function: tokio reaps it if it ever exits while we
                // still run.
                drop(child);
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                let e = UpgradeError::NotReady {
                    timeout,
                    output: tail(&output),
                };
                let e = failed(e, &mut child);
                let _ = child.wait().await;
                let _ = std::fs::remove_file(&self.upgrade_sock);
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_keys(&self) -> Result<(), UpgradeError> {
        if let Some(k) = self
            .keys
            .iter()
            .find(|k| k.chars().any(char::is_whitespace))
        {
            return Err(UpgradeError::Keys(format!(
                "`{k}` contains whitespace, which pingora's fd hand-over cannot carry; move the \
                 socket to a path without spaces and restart"
            )));
        }
        let len: usize = self.keys.iter().map(|k| k.len() + 1).sum();
        if self.keys.len() > MAX_FDS || len > MAX_KEYS_LEN {
            return Err(UpgradeError::Keys(format!(
                "{} listening sockets ({len} bytes of addresses) exceed pingora's hand-over \
                 limits ({MAX_FDS} sockets, {MAX_KEYS_LEN} bytes); restart instead",
                self.keys.len()
            )));
        }
        Ok(())
    }
}

/// Copies the new process's output to ours, line by line, keeping the last lines.
async fn forward(
    stderr: tokio::process::ChildStderr,
    pid: u32,
    keep: Arc<Mutex<VecDeque<String>>>,
) {
    use std::io::Write;
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let _ = writeln!(crate::logging::writer(), "[new process {pid}] {line}");
        let mut k = keep.lock().unwrap_or_else(|p| p.into_inner());
        if k.len() == STDERR_LINES {
            k.pop_front();
        }
        k.push_back(line);
    }
}

fn check_executable(path: &Path) -> Result<(), UpgradeError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |reason: String| UpgradeError::Binary {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_absolute() {
        return Err(bad(
            "give an absolute path (the proxy does not run in your directory)".into(),
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("not an executable file".into()));
    }
    Ok(())
}

/// Runs `binary args` to completion (bounded by `deadline`); its stdout on success, else a
/// [`UpgradeError::Check`] with everything it printed.
async fn run_quietly(
    binary: &Path,
    args: &[&std::ffi::OsStr],
    deadline: Instant,
) -> Result<String, UpgradeError> {
    let shown = format!(
        "{} {}",
        binary.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let run = tokio::process::Command::new(binary)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let left = deadline.saturating_duration_since(Instant::now());
    let out = match tokio::time::timeout(left, run).await {
        Err(_) => {
            return Err(UpgradeError::Check {
                output: format!("`{shown}` did not finish in time"),
            })
        }
        Ok(Err(e)) => {
            return Err(UpgradeError::Spawn {
                binary: binary.to_path_buf(),
                reason: e.to_string(),
            })
        }
        Ok(Ok(out)) => out,
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(UpgradeError::Check {
            output: format!(
                "`{shown}` exited with {}:\n{}{}",
                out.status,
                stdout,
                stderr.trim_end()
            ),
        });
    }
    Ok(stdout)
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// In the new process: how long it may warm up, from the old process's deadline.
pub fn warm_up_bound() -> Duration {
    std::env::var(ENV_DEADLINE_MS)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_WARM_UP)
}

/// Why the new process will not take over.
#[derive(Debug, thiserror::Error)]
#[error(
    "not taking over: within {bound:?}, {pool} had {healthy} of {total} backends healthy, {need} \
     needed (health.min_healthy){last}; the old process keeps serving"
)]
pub struct NotWarm {
    pub bound: Duration,
    pub pool: String,
    pub healthy: usize,
    pub total: usize,
    pub need: usize,
    pub last: String,
}

/// In the new process, before it asks for the sockets: checks the backends as the health checker
/// would (same probe, same rise), until every pool with traffic has `min_healthy` healthy, so
/// its first request is not a 503. Backends that pass are marked healthy; the health checker
/// carries on from there.
pub async fn warm_up(
    switchboard: &Switchboard,
    health: &HealthConfig,
    bound: Duration,
) -> Result<(), NotWarm> {
    let table = switchboard.load_full();
    let st = table.state;
    let mut live = vec![st.primary];
    if st.canary_bp > 0 {
        live.push(st.canary_pool());
    }
    let started = Instant::now();
    let deadline = started + bound;
    let last_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for (pool_id, pool) in table.pools.iter().enumerate() {
        for idx in 0..pool.backends.len() {
            let table = table.clone();
            let pool_name = pool.name.clone();
            let cfg = health.clone();
            let last_error = last_error.clone();
            tasks.push(tokio::spawn(async move {
                let b = &table.pool(pool_id).backends[idx];
                let mut t = Tracker::default();
                loop {
                    let transport = &table.settings.transports[pool_id];
                    let result = probe(b.addr, &cfg.path, cfg.timeout, transport).await;
                    if let Probe::Fail(e) = &result {
                        *last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(format!("{pool_name} {}: {e}", b.addr));
                    }
                    if t.observe(result == Probe::Pass, cfg.rise, cfg.fall) == Some(true) {
                        b.set_healthy(true);
                        return;
                    }
                    tokio::time::sleep(cfg.interval).await;
                }
            }));
        }
    }
    let short = || {
        live.iter().find_map(|&id| {
            let p = table.pool(id);
            let healthy = p.healthy_count();
            (healthy < health.min_healthy).then_some((p, healthy))
        })
    };
    let outcome = loop {
        match short() {
            None => break Ok(()),
            Some((p, healthy)) if Instant::now() >= deadline => {
                let last = last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .map(|e| format!("; last failure: {e}"))
                    .unwrap_or_default();
                break Err(NotWarm {
                    bound,
                    pool: p.name.clone(),
                    healthy,
                    total: p.backends.len(),
                    need: health.min_healthy,
                    last,
                });
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    for t in tasks {
        t.abort();
    }
    if outcome.is_ok() {
        tracing::info!(
            "backends warmed up in {:?}; asking the old process for the listening sockets",
            started.elapsed()
        );
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_path_is_absolute_and_not_a_deleted_link() {
        let p = install_path();
        assert!(p.is_absolute(), "{}", p.display());
        assert!(!p.to_string_lossy().ends_with("(deleted)"));
    }

    #[test]
    fn a_relative_or_missing_binary_is_refused() {
        assert!(matches!(
            check_executable(Path::new("switchyard")),
            Err(UpgradeError::Binary { .. })
        ));
        assert!(matches!(
            check_executable(Path::new("/nonexistent/switchyard")),
            Err(UpgradeError::Binary { .. })
        ));
        // A file that is not executable.
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(check_executable(f.path()).is_err());
    }
}
