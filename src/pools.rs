//! Pools of backends and the choice of a backend within a pool.
//!
//! pingora-load-balancing has a round-robin selector, but its backends start *healthy* before any
//! check has run (reliability-anchors B8), which is exactly the flip-to-an-unchecked-pool failure
//! this product exists to prevent. A pool here is a fixed list of backends, each with an atomic
//! health flag, and an atomic round-robin cursor: selection is a few relaxed atomic operations and
//! takes no lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::config::{Config, POOL_COUNT};

/// One upstream server.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Written by the health checker, read on the request path.
    healthy: AtomicBool,
}

impl Backend {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

/// A named set of backends: one colour.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub backends: Vec<Backend>,
    /// Round-robin cursor; wraps harmlessly.
    next: AtomicUsize,
    /// Requests routed to this pool that have not finished yet.
    inflight: AtomicUsize,
}

impl Pool {
    /// A pool whose backends are all taken as healthy until a health checker says otherwise.
    pub fn new(name: &str, addrs: &[SocketAddr]) -> Pool {
        Pool {
            name: name.to_string(),
            backends: addrs
                .iter()
                .map(|&addr| Backend {
                    addr,
                    healthy: AtomicBool::new(true),
                })
                .collect(),
            next: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
        }
    }

    /// Both pools of a configuration, in configuration order. With health checks on, every
    /// backend starts unhealthy until it passes `rise` checks; with them off, all are healthy.
    pub fn from_config(config: &Config) -> [Pool; POOL_COUNT] {
        let pools = [
            Pool::new(&config.pools[0].name, &config.pools[0].backends),
            Pool::new(&config.pools[1].name, &config.pools[1].backends),
        ];
        if config.health.enabled {
            for b in pools.iter().flat_map(|p| &p.backends) {
                b.set_healthy(false);
            }
        }
        pools
    }

    /// Picks the next healthy backend in round-robin order, skipping `avoid` (a backend that just
    /// failed to connect) when another healthy one exists. `None` when no backend is healthy.
    pub fn select(&self, avoid: Option<usize>) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for i in 0..n {
            let idx = (start + i) % n;
            if !self.backends[idx].is_healthy() {
                continue;
            }
            if Some(idx) == avoid {
                fallback = Some(idx);
                continue;
            }
            return Some(idx);
        }
        fallback
    }

    /// Requests routed to this pool that have not finished.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request in; the matching [`Pool::end_request`] counts it out.
    pub fn begin_request(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end_request(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// How many backends are healthy now.
    pub fn healthy_count(&self) -> usize {
        self.backends.iter().filter(|b| b.is_healthy()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect()
    }

    #[test]
    fn round_robin_is_exact() {
        let pool = Pool::new("blue", &addrs(3));
        let mut hits = [0; 3];
        for _ in 0..300 {
            hits[pool.select(None).unwrap()] += 1;
        }
        assert_eq!(hits, [100, 100, 100]);
    }

    #[test]
    fn unhealthy_backends_are_skipped() {
        let pool = Pool::new("blue", &addrs(3));
        pool.backends[1].set_healthy(false);
        for _ in 0..100 {
            assert_ne!(pool.select(None), Some(1));
        }
        pool.backends[0].set_healthy(false);
        pool.backends[2].set_healthy(false);
        assert_eq!(pool.select(None), None);
        assert_eq!(pool.healthy_count(), 0);
    }

    #[test]
    fn avoid_picks_another_backend_when_there_is_one() {
        let pool = Pool::new("blue", &addrs(2));
        for _ in 0..10 {
            assert_eq!(pool.select(Some(0)), Some(1));
        }
        let single = Pool::new("green", &addrs(1));
        assert_eq!(single.select(Some(0)), Some(0));
    }
}
