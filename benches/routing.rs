//! The routing decision a request pays: load the table, hash the sticky key, pick the pool.
//! Measured next to the naive design (a `RwLock` around the table), alone and with two other
//! threads hammering the same structure, as proxy workers do.
//!
//! Run: `cargo bench --bench routing`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchyard::config::Config;
use switchyard::routing::{bucket, RouteState, Switchboard};

fn board() -> Switchboard {
    let config = Config::parse(
        "[pools.blue]\nbackends = [\"127.0.0.1:8001\"]\n[pools.green]\nbackends = [\"127.0.0.1:9001\"]\n",
        "bench",
    )
    .expect("valid bench config");
    let state = RouteState {
        primary: 0,
        canary_bp: 500,
        generation: 1,
    };
    let settings = switchyard::settings::ProxySettings::from_config(&config, None);
    Switchboard::new(&config, state, 0x5eed, settings)
}

/// A `sy_uid` cookie value as the proxy mints them.
const KEY: &[u8] = b"3f2a9c01d4e5b6a7980f1e2d3c4b5a69";

/// The naive alternative: the same decision behind a lock.
struct Naive {
    state: RouteState,
    salt: u64,
}

fn naive_choice(lock: &RwLock<Naive>, key: &[u8]) -> usize {
    let t = lock.read().expect("not poisoned");
    let b = bucket(t.salt, key);
    if b < t.state.canary_bp {
        1 - t.state.primary
    } else {
        t.state.primary
    }
}

/// Runs `f` on two background threads until dropped.
struct Contention {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Contention {
    fn start(f: impl Fn() + Send + Sync + 'static) -> Contention {
        let stop = Arc::new(AtomicBool::new(false));
        let f = Arc::new(f);
        let threads = (0..2)
            .map(|_| {
                let (stop, f) = (stop.clone(), f.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        f();
                    }
                })
            })
            .collect();
        Contention { stop, threads }
    }
}

impl Drop for Contention {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn bench_routing(c: &mut Criterion) {
    let sb = Arc::new(board());
    c.bench_function("routing: ArcSwap load + xxh3 key + bucket", |b| {
        b.iter(|| black_box(sb.load().pool_for_key(Some(black_box(KEY)))))
    });
    let naive = Arc::new(RwLock::new(Naive {
        state: sb.state(),
        salt: 0x5eed,
    }));
    c.bench_function("naive: RwLock read + xxh3 key + bucket", |b| {
        b.iter(|| black_box(naive_choice(&naive, black_box(KEY))))
    });

    {
        let other = sb.clone();
        let _load = Contention::start(move || {
            black_box(other.load().pool_for_key(Some(KEY)));
        });
        c.bench_function("routing, 2 threads contending", |b| {
            b.iter(|| black_box(sb.load().pool_for_key(Some(black_box(KEY)))))
        });
    }
    {
        let other = naive.clone();
        let _load = Contention::start(move || {
            black_box(naive_choice(&other, KEY));
        });
        c.bench_function("naive, 2 threads contending", |b| {
            b.iter(|| black_box(naive_choice(&naive, black_box(KEY))))
        });
    }
    {
        // Readers while a writer swaps the table as fast as it can (far beyond any deploy).
        let writer = sb.clone();
        let _swaps = Contention::start(move || {
            let mut s = writer.state();
            s.generation += 1;
            writer.store_state(s);
        });
        c.bench_function("routing, 2 threads swapping the table", |b| {
            b.iter(|| black_box(sb.load().pool_for_key(Some(black_box(KEY)))))
        });
    }
}

criterion_group!(benches, bench_routing);
criterion_main!(benches);
