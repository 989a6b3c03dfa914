//! The routing table and the pool choice.
//!
//! A [`RoutingTable`] is immutable: a change (flip, canary, promote, rollback) builds a new one and
//! stores it in the [`Switchboard`]'s `ArcSwap` in one atomic step, so a request sees either the old
//! table or the new one, never a mix. The request path does one `load()` per request and takes no
//! lock; writers serialise among themselves (see `admin`).
//!
//! The choice itself ([`RoutingTable::pool_for_bucket`]) is a pure function of the table and the
//! request's bucket, so it is tested exhaustively without a network.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, MAX_BP, POOL_COUNT};
use crate::pools::Pool;

/// Index of a pool in the configuration (`0` or `1`; pools are sorted by name).
pub type PoolId = usize;

/// The number of canary buckets: one per basis point, so 1 bp = 0.01 % is exact.
pub const BUCKETS: u32 = MAX_BP;

/// The routing state: which pool is primary and how much traffic the other one gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteState {
    pub primary: PoolId,
    /// Share of new traffic, in basis points (0..=10000), sent to the other pool.
    pub canary_bp: u32,
    /// Bumped by every change; lets a deploy script detect a concurrent change (`if_generation`).
    pub generation: u64,
}

impl RouteState {
    /// The pool that is not primary: where canary traffic goes.
    pub fn canary_pool(&self) -> PoolId {
        other(self.primary)
    }
}

/// The other pool of the two.
pub fn other(pool: PoolId) -> PoolId {
    (pool + 1) % POOL_COUNT
}

/// One immutable version of everything the request path needs to route a request.
#[derive(Debug)]
pub struct RoutingTable {
    pub state: RouteState,
    /// The two pools. Shared between table versions: a flip does not rebuild them, so backend
    /// health and round-robin positions carry over.
    pub pools: Arc<[Pool; POOL_COUNT]>,
}

impl RoutingTable {
    /// The pool a request in `bucket` (0..10000) goes to: the canary pool iff `bucket < canary_bp`.
    ///
    /// Raising `canary_bp` only ever moves buckets from the primary to the canary, never back, so a
    /// sticky user who saw the canary keeps seeing it as the rollout proceeds.
    #[inline]
    pub fn pool_for_bucket(&self, bucket: u32) -> PoolId {
        if bucket < self.state.canary_bp {
            self.state.canary_pool()
        } else {
            self.state.primary
        }
    }

    /// The pool by index.
    pub fn pool(&self, id: PoolId) -> &Pool {
        &self.pools[id]
    }
}

/// The shared routing state: what the proxy reads on every request and the admin API replaces.
#[derive(Debug)]
pub struct Switchboard {
    table: ArcSwap<RoutingTable>,
}

impl Switchboard {
    /// Builds the pools from `config` and starts in `state`.
    pub fn new(config: &Config, state: RouteState) -> Switchboard {
        let pools = Arc::new(Pool::from_config(config));
        Switchboard {
            table: ArcSwap::from_pointee(RoutingTable { state, pools }),
        }
    }

    /// The current table. Cheap (no lock); do not hold it across an `.await`.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    /// The current table as an owned `Arc`, for holding across `.await` points.
    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// The current routing state.
    pub fn state(&self) -> RouteState {
        self.table.load().state
    }

    /// Replaces the routing state in one atomic store, keeping the pools. Returns the old state.
    ///
    /// Callers serialise writes (the admin handler holds its own mutex); this never blocks readers.
    pub fn store_state(&self, state: RouteState) -> RouteState {
        let current = self.table.load_full();
        let old = current.state;
        self.table.store(Arc::new(RoutingTable {
            state,
            pools: current.pools.clone(),
        }));
        old
    }

    /// The names of the two pools.
    pub fn pool_names(&self) -> [String; POOL_COUNT] {
        let t = self.table.load();
        [t.pools[0].name.clone(), t.pools[1].name.clone()]
    }

    /// The index of the pool called `name`.
    pub fn pool_id(&self, name: &str) -> Option<PoolId> {
        self.table.load().pools.iter().position(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pools::Pool;

    fn table(primary: PoolId, canary_bp: u32) -> RoutingTable {
        let pools = Arc::new([
            Pool::new("blue", &["127.0.0.1:1".parse().unwrap()]),
            Pool::new("green", &["127.0.0.1:2".parse().unwrap()]),
        ]);
        RoutingTable {
            state: RouteState {
                primary,
                canary_bp,
                generation: 1,
            },
            pools,
        }
    }

    #[test]
    fn zero_weight_sends_everything_to_primary() {
        let t = table(0, 0);
        assert!((0..BUCKETS).all(|b| t.pool_for_bucket(b) == 0));
        let t = table(1, 0);
        assert!((0..BUCKETS).all(|b| t.pool_for_bucket(b) == 1));
    }

    #[test]
    fn full_weight_sends_everything_to_canary() {
        let t = table(0, MAX_BP);
        assert!((0..BUCKETS).all(|b| t.pool_for_bucket(b) == 1));
    }

    #[test]
    fn one_basis_point_is_exactly_one_bucket() {
        let t = table(0, 1);
        let canary = (0..BUCKETS).filter(|&b| t.pool_for_bucket(b) == 1).count();
        assert_eq!(canary, 1);
    }

    #[test]
    fn raising_the_weight_never_moves_a_bucket_back() {
        for w in (0..MAX_BP).step_by(37) {
            let lo = table(0, w);
            let hi = table(0, w + 1);
            for b in 0..BUCKETS {
                if lo.pool_for_bucket(b) == 1 {
                    assert_eq!(
                        hi.pool_for_bucket(b),
                        1,
                        "bucket {b} left the canary at {w}"
                    );
                }
            }
        }
    }
}
