//! The request path's own pieces in isolation: what switchyard adds to a request on top of pingora.
//!
//! - the routing decision: `Switchboard::load()` + `RoutingTable::pool_for_bucket`, and the whole
//!   non-I/O part of `request_filter` as the proxy does it (an owned `load_full()`, the pool choice,
//!   the healthy-backend check and the in-flight count);
//! - the backend choice: `Pool::select` round-robin, with and without unhealthy backends;
//! - metric recording: `Metrics::record_request` (two counters, a histogram, the sliding window);
//! - the header edits (`forwarding`) and the framing check on a request from wrk and from a
//!   browser, and the pool header on nginx's response.
//!
//! The contended variants run one other thread doing the same thing, as a second proxy worker
//! would: they show what sharing a cache line costs (the `ArcSwap` reference count, the round-robin
//! cursor, the metric atomics). On a 2-core machine that other thread competes for the cores too.
//!
//! Run: `cargo bench --bench request_path` (results: benches/RESULTS.md).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use switchyard::config::Config;
use switchyard::forwarding;
use switchyard::metrics::Metrics;
use switchyard::pools::Pool;
use switchyard::proxy::framing_error;
use switchyard::routing::{other, RouteState, Switchboard, BUCKETS};
use switchyard::server::{RunMode, Switchyard};

/// The binary's allocator: the header edits allocate, and what an allocation costs is part of
/// what is measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Two pools of four backends each, health checks on (as in production); nothing listens.
const POOLS: &str = r#"
[pools.blue]
backends = ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003", "127.0.0.1:8004"]
[pools.green]
backends = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003", "127.0.0.1:9004"]
"#;

fn config() -> Config {
    Config::parse(POOLS, "bench").expect("valid bench config")
}

/// The switchboard exactly as `switchyard serve` builds it (state restored or created in a temp
/// dir, pools from the config), on blue with `canary_bp` to green, and every backend marked
/// healthy (the health checker's job; with checks on, backends start unhealthy).
///
/// Going through [`Switchyard::build`] rather than `Switchboard::new` keeps this bench on the
/// server's own construction path, whatever `Switchboard::new` takes. Nothing is run: the
/// listeners `build` checks or binds are released when the server is dropped.
fn switchboard(canary_bp: u32) -> Arc<Switchboard> {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:{port}\"]\n[admin]\nsocket = \"{d}/admin.sock\"\n\
         [metrics]\n[state]\ndir = \"{d}/state\"\n{POOLS}",
        d = dir.path().display()
    );
    let config = Config::parse(&toml, "bench").expect("valid bench config");
    let board = Switchyard::build(config, None, RunMode::embedded())
        .expect("build")
        .switchboard();
    let generation = board.state().generation + 1;
    board.store_state(RouteState {
        primary: 0,
        canary_bp,
        generation,
    });
    for pool in board.load().pools.iter() {
        for b in &pool.backends {
            b.set_healthy(true);
        }
    }
    board
}

fn addrs(n: u16) -> Vec<std::net::SocketAddr> {
    (1..=n)
        .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], 8000 + p)))
        .collect()
}

/// Runs `work` in a loop on another thread until the returned guard is dropped.
struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    fn run(work: impl Fn() + Send + 'static) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                work();
            }
        });
        Background {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bench_routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");

    let board = switchboard(0);
    g.bench_function("load + pool_for_bucket, no canary", |b| {
        b.iter(|| {
            let t = board.load();
            black_box(t.pool_for_bucket(black_box(BUCKETS)))
        })
    });

    // A 5 % canary: buckets spread over 0..10000 so both outcomes (and the branch) are exercised.
    let board = switchboard(500);
    let mut bucket = 0u32;
    g.bench_function("load + pool_for_bucket, 5% canary", |b| {
        b.iter(|| {
            bucket = (bucket + 6_151) % BUCKETS;
            let t = board.load();
            black_box(t.pool_for_bucket(black_box(bucket)))
        })
    });

    // What `Proxy::request_filter` does before any I/O: an owned table (kept for the request's
    // life), the choice, the failover check and the in-flight count in and out.
    let request_filter = |board: &Switchboard| {
        let t = board.load_full();
        let chosen = t.pool_for_bucket(BUCKETS);
        let pool = if t.pool(chosen).healthy_count() > 0 {
            chosen
        } else {
            other(chosen)
        };
        t.pool(pool).begin_request();
        t.pool(pool).end_request();
        black_box(pool)
    };
    let board = switchboard(0);
    g.bench_function(
        "request_filter's decision (load_full, healthy_count, inflight)",
        |b| b.iter(|| request_filter(&board)),
    );
    {
        let other_worker = board.clone();
        let _bg = Background::run(move || {
            request_filter(&other_worker);
        });
        g.bench_function(
            "request_filter's decision, another thread doing the same",
            |b| b.iter(|| request_filter(&board)),
        );
    }
    g.finish();
}

fn bench_select(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool select");

    let one = Pool::new("blue", &addrs(1));
    g.bench_function("round-robin, 1 backend", |b| {
        b.iter(|| black_box(one.select(None)))
    });

    let four = Arc::new(Pool::new("blue", &addrs(4)));
    g.bench_function("round-robin, 4 backends", |b| {
        b.iter(|| black_box(four.select(None)))
    });

    let half = Pool::new("blue", &addrs(4));
    half.backends[1].set_healthy(false);
    half.backends[2].set_healthy(false);
    g.bench_function("round-robin, 4 backends, 2 unhealthy", |b| {
        b.iter(|| black_box(half.select(None)))
    });

    g.bench_function("retry: 4 backends, avoiding the one that failed", |b| {
        b.iter(|| black_box(four.select(black_box(Some(0)))))
    });

    {
        let shared = four.clone();
        let _bg = Background::run(move || {
            black_box(shared.select(None));
        });
        g.bench_function("round-robin, 4 backends, another thread selecting", |b| {
            b.iter(|| black_box(four.select(None)))
        });
    }
    g.finish();
}

fn bench_metrics(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");
    let metrics = Arc::new(Metrics::new(&config()));

    g.bench_function("record_request 200", |b| {
        b.iter(|| {
            metrics.record_request(
                black_box(0),
                black_box(200),
                black_box(Duration::from_micros(350)),
                false,
            )
        })
    });
    g.bench_function("record_request 503, upstream failed", |b| {
        b.iter(|| {
            metrics.record_request(
                black_box(1),
                black_box(503),
                black_box(Duration::from_millis(12)),
                true,
            )
        })
    });
    {
        let shared = metrics.clone();
        let _bg = Background::run(move || {
            shared.record_request(0, 200, Duration::from_micros(350), false);
        });
        g.bench_function("record_request 200, another thread recording", |b| {
            b.iter(|| {
                metrics.record_request(
                    black_box(0),
                    black_box(200),
                    black_box(Duration::from_micros(350)),
                    false,
                )
            })
        });
    }
    g.finish();
}

/// A request as pingora hands it over: parsed from the wire (header case kept), here with the
/// one header wrk sends or the dozen a browser sends.
fn request(headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/small", Some(headers.len())).expect("request");
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).expect("header");
    }
    r
}

const WRK: &[(&str, &str)] = &[("Host", "127.0.0.1:8080")];
const BROWSER: &[(&str, &str)] = &[
    ("Host", "shop.example.com"),
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    ),
    (
        "Accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("Accept-Language", "en-GB,en;q=0.5"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Connection", "keep-alive"),
    (
        "Cookie",
        "sy_uid=0123456789abcdef0123456789abcdef; theme=dark",
    ),
    ("Upgrade-Insecure-Requests", "1"),
    ("Sec-Fetch-Dest", "document"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-Site", "none"),
    ("Priority", "u=0, i"),
];

/// nginx's answer to a static file.
fn response() -> ResponseHeader {
    let mut r = ResponseHeader::build(200, Some(8)).expect("response");
    for (k, v) in [
        ("Server", "nginx/1.22.1"),
        ("Date", "Fri, 27 Nov 2026 11:00:00 GMT"),
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", "128"),
        ("Last-Modified", "Fri, 27 Nov 2026 10:00:00 GMT"),
        ("Connection", "keep-alive"),
        ("ETag", "\"6566f2a0-80\""),
        ("Accept-Ranges", "bytes"),
    ] {
        r.append_header(k, v).expect("header");
    }
    r
}

/// The header edits on every request (see `switchyard::forwarding`), each on a fresh clone as
/// pingora makes one for the upstream request; "clone only" is that clone alone, so the edits'
/// own cost is the difference.
fn bench_forwarding(c: &mut Criterion) {
    let mut g = c.benchmark_group("forwarding");
    let client = Some(IpAddr::from([192, 0, 2, 17]));
    for (name, headers) in [("wrk", WRK), ("browser", BROWSER)] {
        let req = request(headers);
        g.bench_function(format!("request from {name}: clone only"), |b| {
            b.iter(|| black_box(req.clone()))
        });
        g.bench_function(format!("request from {name}: clone + edits"), |b| {
            b.iter(|| {
                let mut r = req.clone();
                forwarding::upstream_request(&mut r, black_box(client), false, false)
                    .expect("edits");
                r
            })
        });
        g.bench_function(format!("request from {name}: framing check"), |b| {
            b.iter(|| framing_error(black_box(&req)))
        });
    }
    let resp = response();
    let pool = HeaderValue::from_static("blue");
    g.bench_function("response: clone only", |b| {
        b.iter(|| black_box(resp.clone()))
    });
    g.bench_function("response: clone + pool header", |b| {
        b.iter(|| {
            let mut r = resp.clone();
            forwarding::mark_response(&mut r, black_box(&pool)).expect("edit");
            r
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Short runs: these are nanosecond figures, and the machine is a shared 2-core one.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_routing, bench_select, bench_metrics, bench_forwarding
}
criterion_main!(benches);
