//! The cost of a routing change on the proxy side: building a new immutable table and storing it
//! in the `ArcSwap`, and what a request pays to load it. Next to it, the naive alternative (a
//! `RwLock` around the state), with readers on another thread to show what contention does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchyard::config::Config;
use switchyard::routing::{RouteState, Switchboard};
use switchyard::settings::ProxySettings;

fn config() -> Config {
    Config::parse(
        "[pools.blue]\nbackends = [\"127.0.0.1:8001\", \"127.0.0.1:8002\"]\n\
         [pools.green]\nbackends = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n",
        "bench",
    )
    .expect("valid bench config")
}

fn new_board() -> Switchboard {
    let config = config();
    let settings = ProxySettings::from_config(&config, None);
    Switchboard::new(&config, state(0), 7, settings)
}

fn state(generation: u64) -> RouteState {
    RouteState {
        primary: (generation % 2) as usize,
        canary_bp: 0,
        generation,
    }
}

fn bench_swap(c: &mut Criterion) {
    let board = new_board();
    let mut g = 0u64;
    c.bench_function("swap: build + store a new table", |b| {
        b.iter(|| {
            g += 1;
            black_box(board.store_state(state(g)));
        })
    });

    // The same with two reader threads hammering load() (what the proxy workers do).
    let board = Arc::new(board);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (board, stop) = (board.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    black_box(board.load().state.primary);
                }
            })
        })
        .collect();
    c.bench_function("swap: build + store, 2 readers loading", |b| {
        b.iter(|| {
            g += 1;
            black_box(board.store_state(state(g)));
        })
    });
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }

    let lock = RwLock::new(state(0));
    c.bench_function("naive: RwLock write", |b| {
        b.iter(|| {
            g += 1;
            *lock.write().unwrap() = state(g);
        })
    });

    let board = new_board();
    c.bench_function("request side: load the table", |b| {
        b.iter(|| black_box(board.load().state.canary_bp))
    });
}

criterion_group!(benches, bench_swap);
criterion_main!(benches);
