//! What the rehearsals (fault injection, shadow traffic) add to every request: the proxy asks
//! `Faults::decide` and `Shadow::pick` once per request. Nearly always nothing is in force, which
//! must cost next to nothing (one lock-free load each); while a fault set or a session is on, a
//! request it applies to takes one atomic step more.
//!
//! Run: `cargo bench --bench rehearse` (results: benches/RESULTS.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use switchyard::config::Config;
use switchyard::faults::{FaultSet, Faults};
use switchyard::metrics::Metrics;
use switchyard::shadow::{Session, Settings, Shadow};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config() -> Config {
    Config::parse(
        "[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n[pools.green]\nbackends = [\"127.0.0.1:2\"]\n",
        "bench",
    )
    .expect("valid")
}

fn fault_set(pool: usize) -> Arc<FaultSet> {
    Arc::new(FaultSet::new(
        pool,
        2_000,
        503,
        0,
        Duration::ZERO,
        Duration::from_secs(3600),
        "bench",
        None,
        false,
    ))
}

fn bench(c: &mut Criterion) {
    let config = config();
    let mut g = c.benchmark_group("rehearse");
    g.measurement_time(Duration::from_secs(3));

    let faults = Faults::default();
    g.bench_function("faults.decide, none in force", |b| {
        b.iter(|| black_box(faults.decide(black_box(0))))
    });
    faults.store(Some(fault_set(1)));
    g.bench_function("faults.decide, a set on the other pool", |b| {
        b.iter(|| black_box(faults.decide(black_box(0))))
    });
    faults.store(Some(fault_set(0)));
    g.bench_function("faults.decide, a 20 % abort on this pool", |b| {
        b.iter(|| black_box(faults.decide(black_box(0))))
    });

    let metrics = Arc::new(Metrics::new(&config));
    let (shadow, _queue) = Shadow::new(&config.shadow, metrics);
    let (get, headers) = (http::Method::GET, http::HeaderMap::new());
    g.bench_function("shadow.pick, no session", |b| {
        b.iter(|| black_box(shadow.pick(black_box(0), 0, &get, &headers)))
    });
    shadow.start(Session::new(
        1,
        0,
        1,
        Duration::from_secs(3600),
        "bench",
        None,
        Settings::from_config(&config.shadow),
    ));
    g.bench_function("shadow.pick, a 0.01 % session (not copied)", |b| {
        b.iter(|| {
            let c = shadow.pick(black_box(0), 0, &get, &headers);
            black_box(c.is_some())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
