//! The routing table and the pool choice.
//!
//! A [`RoutingTable`] is immutable: a change (flip, canary, promote, rollback) builds a new one and
//! stores it in the [`Switchboard`]'s `ArcSwap` in one atomic step, so a request sees either the old
//! table or the new one, never a mix. The request path does one `load()` per request and takes no
//! lock; writers serialise among themselves (see `admin`).
//!
//! The choice itself ([`RoutingTable::pool_for_bucket`]) is a pure function of the table and the
//! request's bucket, so it is tested exhaustively without a network. A request's bucket comes from
//! its sticky key (cookie, header or client IP, per `routing.sticky`) hashed with a salt that is
//! part of the durable state, so a user keeps their bucket across restarts ([`bucket`]); a request
//! without a key takes the next step of a per-thread low-discrepancy sequence ([`next_bucket`]).

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, MAX_BP, POOL_COUNT};
use crate::pools::Pool;
use crate::settings::ProxySettings;

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
    /// Seed of the sticky-key hash; fixed for the life of the state file.
    pub salt: u64,
    /// The two pools. Shared between table versions: a flip does not rebuild them, so backend
    /// health and round-robin positions carry over. A reload builds new ones that share the
    /// backends they keep.
    pub pools: Arc<[Pool; POOL_COUNT]>,
    /// What the request path reads from the configuration, swapped with the pools by a reload.
    pub settings: Arc<ProxySettings>,
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

    /// The pool for a request with sticky `key` (`None`: no key, split per request).
    #[inline]
    pub fn pool_for_key(&self, key: Option<&[u8]>) -> PoolId {
        match self.state.canary_bp {
            0 => self.state.primary,
            MAX_BP => self.state.canary_pool(),
            _ => self.pool_for_bucket(match key {
                Some(k) => bucket(self.salt, k),
                None => next_bucket(),
            }),
        }
    }

    /// The pool by index.
    pub fn pool(&self, id: PoolId) -> &Pool {
        &self.pools[id]
    }
}

/// The bucket (0..10000) of a sticky key: a keyed xxh3 hash, reduced modulo 10 000.
///
/// xxh3 is fast (a few ns for a cookie-sized key) and its output is fixed by its specification,
/// so buckets do not move when the binary is rebuilt. The salt keeps buckets from being the same
/// across deployments and is kept in `state.json` so they survive restarts.
#[inline]
pub fn bucket(salt: u64, key: &[u8]) -> u32 {
    (xxhash_rust::xxh3::xxh3_64_with_seed(key, salt) % u64::from(BUCKETS)) as u32
}

/// The bucket for a request that has no sticky key.
///
/// Each thread walks the buckets in steps of 6151 (coprime with 10 000): every 10 000 consecutive
/// requests of a thread visit every bucket exactly once, and any shorter run is spread evenly, so
/// the split matches the weight closely at every scale, without an RNG call or a shared counter.
#[inline]
pub fn next_bucket() -> u32 {
    use std::cell::Cell;
    thread_local! {
        static NEXT: Cell<u32> = const { Cell::new(0) };
    }
    NEXT.with(|n| {
        let v = (n.get() + SEQUENCE_STEP) % BUCKETS;
        n.set(v);
        v
    })
}

/// The step of the low-discrepancy sequence: coprime with [`BUCKETS`], so any [`BUCKETS`]
/// consecutive steps visit every bucket exactly once; near `BUCKETS × (√5 − 1) / 2`, so shorter
/// runs spread evenly too.
pub const SEQUENCE_STEP: u32 = 6_151;

/// The `k`th bucket of the low-discrepancy sequence [`next_bucket`] walks, for a caller that
/// counts its own requests (fault injection and shadow traffic keep one shared counter per
/// setting, so their shares are exact over any 10 000 requests whatever thread serves them).
#[inline]
pub fn sequence_bucket(k: u64) -> u32 {
    // k mod BUCKETS first: the product stays below 2^32 and the sequence never skips at a wrap.
    (((k % u64::from(BUCKETS)) as u32 + 1) * SEQUENCE_STEP) % BUCKETS
}

/// The shared routing state: what the proxy reads on every request and the admin API replaces.
#[derive(Debug)]
pub struct Switchboard {
    table: ArcSwap<RoutingTable>,
}

impl Switchboard {
    /// Builds the pools from `config` and starts in `state`, hashing sticky keys with `salt`.
    pub fn new(
        config: &Config,
        state: RouteState,
        salt: u64,
        settings: ProxySettings,
    ) -> Switchboard {
        Switchboard::with_pools(Pool::from_config(config), state, salt, settings)
    }

    /// Starts with `pools` (built by the caller, e.g. with resolved backend names) in `state`.
    pub fn with_pools(
        pools: [Pool; POOL_COUNT],
        state: RouteState,
        salt: u64,
        settings: ProxySettings,
    ) -> Switchboard {
        let pools = Arc::new(pools);
        Switchboard {
            table: ArcSwap::from_pointee(RoutingTable {
                state,
                salt,
                pools,
                settings: Arc::new(settings),
            }),
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
            salt: current.salt,
            pools: current.pools.clone(),
            settings: current.settings.clone(),
        }));
        old
    }

    /// Replaces the routing state and the sticky-hash salt in one atomic store: the fleet's state
    /// (whose salt every instance shares, so a user keeps their bucket on any of them).
    pub fn store_shared(&self, state: RouteState, salt: u64) {
        let current = self.table.load_full();
        self.table.store(Arc::new(RoutingTable {
            state,
            salt,
            pools: current.pools.clone(),
            settings: current.settings.clone(),
        }));
    }

    /// Replaces the pools and the request settings in one atomic store, keeping the routing
    /// state (a reload). Same rules as [`Switchboard::store_state`]: callers serialise writes.
    pub fn store_config(&self, pools: [Pool; POOL_COUNT], settings: ProxySettings) {
        let current = self.table.load_full();
        self.table.store(Arc::new(RoutingTable {
            state: current.state,
            salt: current.salt,
            pools: Arc::new(pools),
            settings: Arc::new(settings),
        }));
    }

    /// The names of the two pools.
    pub fn pool_names(&self) -> [String; POOL_COUNT] {
        let t = self.table.load();
        [t.pools[0].name.clone(), t.pools[1].name.clone()]
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
            salt: 42,
            pools,
            settings: Arc::new(ProxySettings::from_config(
                &Config::parse(
                    "[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n\
                     [pools.green]\nbackends = [\"127.0.0.1:2\"]\n",
                    "t",
                )
                .unwrap(),
                None,
            )),
        }
    }

    fn keys(n: u32) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("user-{i:08}").into_bytes())
            .collect()
    }

    fn canary_share(t: &RoutingTable, keys: &[Vec<u8>]) -> f64 {
        let n = keys.iter().filter(|k| t.pool_for_key(Some(k)) == 1).count();
        n as f64 / keys.len() as f64
    }

    #[test]
    fn keyed_choice_is_exact_at_0_and_10000() {
        let keys = keys(100_000);
        assert_eq!(canary_share(&table(0, 0), &keys), 0.0);
        assert_eq!(canary_share(&table(0, MAX_BP), &keys), 1.0);
        assert!((0..10_000).all(|_| table(0, 0).pool_for_key(None) == 0));
        assert!((0..10_000).all(|_| table(0, MAX_BP).pool_for_key(None) == 1));
    }

    #[test]
    fn one_basis_point_sends_only_bucket_0() {
        let keys = keys(100_000);
        let t = table(0, 1);
        let on: Vec<&Vec<u8>> = keys
            .iter()
            .filter(|k| t.pool_for_key(Some(k)) == 1)
            .collect();
        assert!(on.iter().all(|k| bucket(42, k) == 0));
        // 100 000 keys × 1/10 000 = 10 expected; a binomial this far out is a broken hash.
        assert!((1..=30).contains(&on.len()), "{} keys at 1 bp", on.len());
    }

    #[test]
    fn keys_only_ever_move_onto_the_canary_as_the_weight_grows() {
        let keys = keys(100_000);
        let weights = [1, 10, 100, 500, 1_000, 2_500, 5_000, 9_999, 10_000];
        let mut on: Vec<bool> = vec![false; keys.len()];
        for w in weights {
            let t = table(0, w);
            for (i, k) in keys.iter().enumerate() {
                let now = t.pool_for_key(Some(k)) == 1;
                assert!(
                    now || !on[i],
                    "key {i} left the canary when the weight rose to {w}"
                );
                on[i] = now;
            }
        }
    }

    #[test]
    fn the_share_matches_the_weight() {
        let keys = keys(100_000);
        let share = canary_share(&table(0, 500), &keys);
        assert!((share - 0.05).abs() <= 0.003, "5% weight gave {share}");
        let share = canary_share(&table(1, 2_500), &keys);
        assert!(
            (share - 0.75).abs() <= 0.005,
            "green primary, blue at 25%: green share {share}"
        );
    }

    #[test]
    fn the_salt_changes_buckets_but_a_key_keeps_its_bucket() {
        assert_eq!(bucket(1, b"alice"), bucket(1, b"alice"));
        let moved = (0..1000)
            .filter(|i| {
                bucket(1, format!("u{i}").as_bytes()) != bucket(2, format!("u{i}").as_bytes())
            })
            .count();
        assert!(moved > 900);
    }

    #[test]
    fn keyless_requests_split_within_half_a_point_over_any_10000() {
        // A fresh thread so the sequence starts where a worker's does.
        std::thread::spawn(|| {
            let t = table(0, 1_234);
            let picks: Vec<bool> = (0..30_000).map(|_| t.pool_for_key(None) == 1).collect();
            for start in (0..20_000).step_by(997) {
                let n = picks[start..start + 10_000].iter().filter(|&&c| c).count();
                let share = n as f64 / 10_000.0;
                assert!(
                    (share - 0.1234).abs() <= 0.005,
                    "window at {start}: {share}"
                );
            }
        })
        .join()
        .unwrap();
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
