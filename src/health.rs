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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::HealthConfig;
use crate::routing::Switchboard;

/// The checker for every backend of both pools.
pub struct HealthChecker {
    switchboard: Arc<Switchboard>,
    config: HealthConfig,
}

impl HealthChecker {
    pub fn new(switchboard: Arc<Switchboard>, config: HealthConfig) -> HealthChecker {
        HealthChecker {
            switchboard,
            config,
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

/// Runs one check against `addr`.
pub async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Probe {
    let check = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", addr.to_string())
            .header(
                "user-agent",
                concat!("switchyard-health/", env!("CARGO_PKG_VERSION")),
            )
            .header("connection", "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        // Drain the (small) body so the exchange completes cleanly.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(())) => Probe::Pass,
        Ok(Err(e)) => Probe::Fail(e),
        Err(_) => Probe::Fail(format!("no answer within {timeout:?}")),
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, shutdown: ShutdownWatch) {
        let table = self.switchboard.load_full();
        let mut tasks = Vec::new();
        for (pool_id, pool) in table.pools.iter().enumerate() {
            for idx in 0..pool.backends.len() {
                let table = table.clone();
                let cfg = self.config.clone();
                let mut shutdown = shutdown.clone();
                tasks.push(tokio::spawn(async move {
                    let pool = table.pool(pool_id);
                    let backend = &pool.backends[idx];
                    let mut tracker = Tracker {
                        healthy: backend.is_healthy(),
                        ..Tracker::default()
                    };
                    // Spread the first checks over the interval so a large pool does not probe
                    // every backend in the same millisecond.
                    let offset = cfg
                        .interval
                        .mul_f64(idx as f64 / pool.backends.len() as f64);
                    let mut tick = tokio::time::interval_at(
                        tokio::time::Instant::now() + offset.min(Duration::from_millis(250)),
                        cfg.interval,
                    );
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = shutdown.changed() => return,
                            _ = tick.tick() => {}
                        }
                        let result = probe(backend.addr, &cfg.path, cfg.timeout).await;
                        let passed = result == Probe::Pass;
                        if let Some(now) = tracker.observe(passed, cfg.rise, cfg.fall) {
                            backend.set_healthy(now);
                            if now {
                                tracing::info!(
                                    pool = %pool.name,
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
                                    pool = %pool.name,
                                    backend = %backend.addr,
                                    "backend is unhealthy ({} failed checks in a row; last: {why})",
                                    cfg.fall
                                );
                            }
                        }
                    }
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }
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
