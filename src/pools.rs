//! Pools of backends and the choice of a backend within a pool.
//!
//! pingora-load-balancing has a round-robin selector, but its backends start *healthy* before any
//! check has run (reliability-anchors B8), which is exactly the flip-to-an-unchecked-pool failure
//! this product exists to prevent. A pool here is a fixed list of backends, each with an atomic
//! health flag, and an atomic round-robin cursor: selection is a few relaxed atomic operations and
//! takes no lock. Membership changes (a reload) build a new `Pool` that shares the backends it
//! keeps, so health survives them; the routing table swaps the new pools in atomically.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::{Config, POOL_COUNT};

/// One upstream server.
///
/// Shared by `Arc` between routing-table versions: a reload that keeps an address keeps the same
/// `Backend`, so its health (and the health checker's task, with its rise/fall progress) carries
/// over, and requests still running on an old table see the same flag.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Written by the health checker, read on the request path.
    healthy: AtomicBool,
}

impl Backend {
    pub fn new(addr: SocketAddr, healthy: bool) -> Backend {
        Backend {
            addr,
            healthy: AtomicBool::new(healthy),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

/// What a pool keeps across membership changes: its round-robin cursor and its in-flight count.
#[derive(Debug, Default)]
struct Counters {
    /// Round-robin cursor; wraps harmlessly.
    next: AtomicUsize,
    /// Requests routed to this pool that have not finished yet.
    inflight: AtomicUsize,
}

/// A named set of backends: one colour. Immutable once built; a membership change builds a new
/// `Pool` with [`Pool::with_members`] that shares the kept backends and the counters.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
    counters: Arc<Counters>,
}

impl Pool {
    /// A pool whose backends are all taken as healthy until a health checker says otherwise.
    pub fn new(name: &str, addrs: &[SocketAddr]) -> Pool {
        Pool {
            name: name.to_string(),
            backends: addrs
                .iter()
                .map(|&addr| Arc::new(Backend::new(addr, true)))
                .collect(),
            counters: Arc::default(),
        }
    }

    /// Both pools of a configuration, in configuration order, with the addresses it lists.
    /// With health checks on, every backend starts unhealthy until it passes `rise` checks; with
    /// them off, all are healthy.
    pub fn from_config(config: &Config) -> [Pool; POOL_COUNT] {
        let members = [
            config.pools[0].backends.clone(),
            config.pools[1].backends.clone(),
        ];
        Pool::with_config(config, &members)
    }

    /// Like [`Pool::from_config`], with `members` (the listed addresses plus what the backend
    /// names resolved to) as each pool's backends.
    pub fn with_config(
        config: &Config,
        members: &[Vec<SocketAddr>; POOL_COUNT],
    ) -> [Pool; POOL_COUNT] {
        let pools = [
            Pool::new(&config.pools[0].name, &members[0]),
            Pool::new(&config.pools[1].name, &members[1]),
        ];
        if config.health.enabled {
            for b in pools.iter().flat_map(|p| &p.backends) {
                b.set_healthy(false);
            }
        }
        pools
    }

    /// This pool with the backends `addrs`, in that order: an address it already has keeps its
    /// `Backend` (health and all); one in `ready` (checked before the change) takes that one;
    /// any other is new and starts healthy only when `new_healthy` (health checks off).
    pub fn with_members(
        &self,
        addrs: &[SocketAddr],
        ready: &HashMap<SocketAddr, Arc<Backend>>,
        new_healthy: bool,
    ) -> Pool {
        let backends = addrs
            .iter()
            .map(|addr| {
                self.backend(*addr)
                    .or_else(|| ready.get(addr))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Backend::new(*addr, new_healthy)))
            })
            .collect();
        Pool {
            name: self.name.clone(),
            backends,
            counters: self.counters.clone(),
        }
    }

    /// The backend at `addr`, if it is a member.
    pub fn backend(&self, addr: SocketAddr) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.addr == addr)
    }

    /// Picks the next healthy backend in round-robin order, skipping `avoid` (a backend that just
    /// failed to connect) when another healthy one exists. `None` when no backend is healthy.
    pub fn select(&self, avoid: Option<usize>) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.counters.next.fetch_add(1, Ordering::Relaxed);
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
        self.counters.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request in; the matching [`Pool::end_request`] counts it out.
    pub fn begin_request(&self) {
        self.counters.inflight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end_request(&self) {
        self.counters.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The members' addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(|b| b.addr).collect()
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

    #[test]
    fn new_members_keep_what_stays_and_start_what_is_new() {
        let pool = Pool::new("green", &addrs(3));
        pool.backends[0].set_healthy(false);
        pool.begin_request();
        let a = addrs(5);
        let checked = Arc::new(Backend::new(a[4], true));
        let ready = HashMap::from([(a[4], checked.clone())]);
        let next = pool.with_members(&[a[2], a[0], a[3], a[4]], &ready, false);
        assert!(Arc::ptr_eq(&next.backends[0], &pool.backends[2]));
        assert!(Arc::ptr_eq(&next.backends[1], &pool.backends[0]));
        assert!(
            !next.backends[1].is_healthy(),
            "a kept backend keeps its health"
        );
        assert!(
            !next.backends[2].is_healthy(),
            "a new backend starts unhealthy"
        );
        assert!(Arc::ptr_eq(&next.backends[3], &checked));
        assert!(next.backend(a[1]).is_none(), "a removed backend is gone");
        assert_eq!(next.inflight(), 1, "the in-flight count is shared");
        next.end_request();
        assert_eq!(pool.inflight(), 0);
    }
}
