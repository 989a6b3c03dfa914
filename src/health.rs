//! Active health checks: one probe loop per backend, in the background, off the request path.
//!
//! Every backend starts *unhealthy* and becomes healthy after `rise` consecutive passes; a healthy
//! one becomes unhealthy after `fall` consecutive failures (HAProxy's rise/fall). pingora's own
//! checker starts backends healthy (reliability-anchors B8), which would let a flip land on a
//! pool nobody has checked; that is the failure this module exists to prevent.
//!
//! A check is `GET <path>` on a fresh connection with `timeout` for the whole exchange; any 2xx
//! passes. A fresh connection each time means a backend that stopped accepting is noticed even
//! while old pooled connections still work. The verdict is a relaxed atomic store the request path
//! reads; the transition is logged.
//!
//! The checker is a supervisor: it keeps one probe task per pool member and, when a reload changes
//! the members or the settings ([`HealthControl::update`]), starts tasks for new members, stops
//! those of removed ones and leaves the rest running, so a kept backend keeps its verdict and its
//! rise/fall progress. [`warm_up`] checks new backends before a reload adds them, when a pool that
//! serves traffic needs them to stay at `min_healthy`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::task::JoinHandle;

use crate::config::{HealthConfig, UpstreamProtocol};
use crate::pools::Backend;
use crate::routing::{PoolId, Switchboard};
use crate::tls::upstream::Transport;

/// The health settings in force, and the wake-up for the checker when they or the pools'
/// membership change. Shared between the checker and whoever reloads the configuration.
#[derive(Debug)]
pub struct HealthControl {
    config: ArcSwap<HealthConfig>,
    /// A permit is kept when nobody waits, so a change made before the checker starts (or while
    /// it reconciles) is never missed.
    changed: tokio::sync::Notify,
}

impl HealthControl {
    pub fn new(config: HealthConfig) -> Arc<HealthControl> {
        Arc::new(HealthControl {
            config: ArcSwap::from_pointee(config),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> Arc<HealthConfig> {
        self.config.load_full()
    }

    /// New settings and/or new pool members (already stored in the switchboard): the checker
    /// starts probing new backends, stops probing removed ones, and keeps the rest (and their
    /// rise/fall progress) as they are.
    pub fn update(&self, config: HealthConfig) {
        self.config.store(Arc::new(config));
        self.changed.notify_one();
    }
}

/// The checker for every backend of both pools: a supervisor that keeps one probe task per
/// member, following membership changes.
pub struct HealthChecker {
    switchboard: Arc<Switchboard>,
    control: Arc<HealthControl>,
}

impl HealthChecker {
    pub fn new(switchboard: Arc<Switchboard>, control: Arc<HealthControl>) -> HealthChecker {
        HealthChecker {
            switchboard,
            control,
        }
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Pass,
    Fail(String),
}

/// Consecutive-result bookkeeping for one backend.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tracker {
    pub healthy: bool,
    passes: u32,
    failures: u32,
}

impl Tracker {
    /// Feeds one probe result; returns `Some(new_state)` when the verdict changes.
    pub fn observe(&mut self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        if passed {
            self.passes += 1;
            self.failures = 0;
            if !self.healthy && self.passes >= rise {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.passes = 0;
            if self.healthy && self.failures >= fall {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

/// Runs one check against `addr`, spoken to as its pool's `transport` says (HTTP/1.1, h2c, or
/// either over TLS, verified as requests are), so a backend that answers plain HTTP/1.1 but
/// not the protocol its pool declares is not taken as healthy.
pub async fn probe(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    transport: &Transport,
) -> Probe {
    let check = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let h2 = transport.protocol != UpstreamProtocol::Http1;
        match transport.health_tls() {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(transport.server_name(addr))
                    .map_err(|e| format!("TLS server name: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                exchange(tls, h2, addr, path, true).await
            }
            None => exchange(stream, h2, addr, path, false).await,
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(())) => Probe::Pass,
        Ok(Err(e)) => Probe::Fail(e),
        Err(_) => Probe::Fail(format!("no answer within {timeout:?}")),
    }
}

/// `GET path` over `io`, in HTTP/1.1 or HTTP/2; any 2xx passes.
async fn exchange<S>(io: S, h2: bool, addr: SocketAddr, path: &str, tls: bool) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    let agent = concat!("switchyard-health/", env!("CARGO_PKG_VERSION"));
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        // HTTP/2 carries the scheme and authority as pseudo-headers, from an absolute URI.
        let scheme = if tls { "https" } else { "http" };
        let req = hyper::Request::get(format!("{scheme}://{addr}{path}"))
            .header("user-agent", agent)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", addr.to_string())
            .header("user-agent", agent)
            .header("connection", "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?
    };
    {
        let status = resp.status();
        // Drain the (small) body so the exchange completes cleanly.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

/// One probe task per member, keyed by pool and address; the `Backend` tells whether a member
/// that left and came back is a new one (a new `Arc`).
type Tasks = HashMap<(PoolId, SocketAddr), (Arc<Backend>, JoinHandle<()>)>;

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks = Tasks::new();
        loop {
            self.reconcile(&mut tasks, &shutdown);
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = self.control.changed.notified() => {}
            }
        }
        for (_, (_, task)) in tasks.drain() {
            task.abort();
        }
    }
}

impl HealthChecker {
    /// Makes the running probe tasks match the current members: starts the missing, stops the
    /// removed, leaves the others alone.
    fn reconcile(&self, tasks: &mut Tasks, shutdown: &ShutdownWatch) {
        let config = self.control.config();
        let table = self.switchboard.load_full();
        if !config.enabled {
            for (_, (_, task)) in tasks.drain() {
                task.abort();
            }
            for b in table.pools.iter().flat_map(|p| &p.backends) {
                b.set_healthy(true);
            }
            return;
        }
        let mut members = HashMap::new();
        for (pool_id, pool) in table.pools.iter().enumerate() {
            let n = pool.backends.len();
            for (idx, backend) in pool.backends.iter().enumerate() {
                let key = (pool_id, backend.addr);
                members.insert(key, ());
                if tasks
                    .get(&key)
                    .is_some_and(|(b, _)| Arc::ptr_eq(b, backend))
                {
                    continue;
                }
                // Spread the first checks over the interval so a large pool does not probe
                // every backend in the same millisecond.
                let offset = config
                    .interval
                    .mul_f64(idx as f64 / n as f64)
                    .min(Duration::from_millis(250));
                let task = tokio::spawn(check_loop(
                    pool.name.clone(),
                    (self.switchboard.clone(), pool_id),
                    backend.clone(),
                    self.control.clone(),
                    offset,
                    shutdown.clone(),
                ));
                if let Some((_, old)) = tasks.insert(key, (backend.clone(), task)) {
                    old.abort();
                }
            }
        }
        tasks.retain(|key, (_, task)| {
            let keep = members.contains_key(key);
            if !keep {
                task.abort();
            }
            keep
        });
    }
}

/// Probes one backend every `interval` until stopped, turning rise/fall runs into its health.
/// Reads the settings at every round, so a reload's new interval, path, rise or fall applies
/// without losing the progress made so far.
async fn check_loop(
    pool: String,
    (switchboard, pool_id): (Arc<Switchboard>, PoolId),
    backend: Arc<Backend>,
    control: Arc<HealthControl>,
    offset: Duration,
    mut shutdown: ShutdownWatch,
) {
    let mut tracker = Tracker {
        healthy: backend.is_healthy(),
        ..Tracker::default()
    };
    let mut interval = control.config().interval;
    let mut tick = ticker(offset, interval);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let cfg = control.config();
        if cfg.interval != interval {
            interval = cfg.interval;
            tick = ticker(interval, interval);
        }
        // The pool's transport as it is now: a reload may have changed it.
        let transport = switchboard.load().settings.transports[pool_id].clone();
        let result = probe(backend.addr, &cfg.path, cfg.timeout, &transport).await;
        let passed = result == Probe::Pass;
        if let Some(now) = tracker.observe(passed, cfg.rise, cfg.fall) {
            backend.set_healthy(now);
            if now {
                tracing::info!(
                    pool = %pool,
                    backend = %backend.addr,
                    "backend is healthy ({} passing checks in a row)",
                    cfg.rise
                );
            } else {
                let why = match &result {
                    Probe::Fail(e) => e.as_str(),
                    Probe::Pass => "",
                };
                tracing::warn!(
                    pool = %pool,
                    backend = %backend.addr,
                    "backend is unhealthy ({} failed checks in a row; last: {why})",
                    cfg.fall
                );
            }
        }
    }
}

fn ticker(first: Duration, every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// What [`warm_up`] found.
#[derive(Debug, Default)]
pub struct WarmUp {
    /// Backends that passed `rise` checks in a row (now marked healthy).
    pub passed: usize,
    /// Backends that had not passed when the check stopped, with their last error.
    pub failed: Vec<(SocketAddr, String)>,
}

/// Checks `backends` (new members, not yet in any pool) until `needed` of them have passed `rise`
/// checks in a row, or `within` has passed. Those that pass are marked healthy.
///
/// A reload runs this before it adds backends that a pool serving traffic needs to stay at
/// `min_healthy`, so the swap never leaves that pool short.
pub async fn warm_up(
    backends: &[Arc<Backend>],
    transport: &Transport,
    config: &HealthConfig,
    needed: usize,
    within: Duration,
) -> WarmUp {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    let mut checks = tokio::task::JoinSet::new();
    for b in backends {
        let (b, cfg, transport) = (b.clone(), config.clone(), transport.clone());
        checks.spawn(async move {
            let mut tracker = Tracker::default();
            let mut last = String::from("not checked yet");
            let mut tick = ticker(Duration::ZERO, cfg.interval);
            loop {
                tick.tick().await;
                let result = probe(b.addr, &cfg.path, cfg.timeout, &transport).await;
                if let Probe::Fail(e) = &result {
                    last = e.clone();
                }
                if tracker.observe(result == Probe::Pass, cfg.rise, cfg.fall) == Some(true) {
                    b.set_healthy(true);
                    return None;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Some((b.addr, last));
                }
            }
        });
    }
    let mut found = WarmUp::default();
    while found.passed < needed {
        match tokio::time::timeout_at(deadline + config.timeout, checks.join_next()).await {
            Ok(Some(Ok(None))) => found.passed += 1,
            Ok(Some(Ok(Some(failure)))) => found.failed.push(failure),
            Ok(Some(Err(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    checks.abort_all();
    for b in backends {
        if !b.is_healthy() && !found.failed.iter().any(|(a, _)| *a == b.addr) {
            found.failed.push((b.addr, "no verdict in time".into()));
        }
    }
    tracing::info!(
        "checked {} new backend(s) in {:?}: {} passed",
        backends.len(),
        started.elapsed(),
        found.passed
    );
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None, "a failure resets the passes");
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), Some(true));
        assert!(t.healthy);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), None, "a pass resets the failures");
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), Some(false));
        assert!(!t.healthy);
    }
}
