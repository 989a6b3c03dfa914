//! End-to-end flip latency, fsync included: 1 000 flips through the admin API (a new connection
//! each, as `ctl` does), then 1 000 runs of the real `switchyard ctl flip` process.
//!
//! Run: `cargo bench --bench flip_latency` (build the release binary first, for the `ctl` half:
//! `cargo build --release`). Prints median and p99 for each.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use switchyard::config::Config;
use switchyard::server::{RunMode, ShutdownTrigger, Switchyard};

const API_FLIPS: usize = 1_000;
const CTL_FLIPS: usize = 1_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("ephemeral port")
}

async fn flip(socket: &Path, to: &str) -> u64 {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("admin socket");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let body = format!("{{\"to\": \"{to}\", \"force\": true}}");
    let req = hyper::Request::post("/v1/flip")
        .header("host", "localhost")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.expect("flip");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["applied_us"].as_u64().unwrap_or(0)
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "{name:<40} n={:<5} median {:>8.1} µs   p99 {:>8.1} µs   max {:>8.1} µs",
        samples.len(),
        pct(0.5).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        samples.last().unwrap().as_secs_f64() * 1e6,
    );
}

fn main() {
    // `cargo test --benches` runs bench binaries with --test (or similar) in test mode; do nothing.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let blue: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:{port}\"]\n[admin]\nsocket = \"{d}/admin.sock\"\n\
         [state]\ndir = \"{d}/state\"\n[pools.blue]\nbackends = [\"{blue}\"]\n\
         [pools.green]\nbackends = [\"127.0.0.1:2\"]\n",
        d = dir.path().display()
    );
    let config = Config::parse(&toml, "bench").expect("config");
    let socket = config.admin.socket.clone();
    let app = Switchyard::build(config, None, RunMode::embedded()).expect("build");
    let stop = ShutdownTrigger::new();
    let trigger = stop.clone();
    let server = std::thread::spawn(move || app.run(trigger.run_args()));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            assert!(Instant::now() < deadline, "admin socket did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut round_trips = Vec::with_capacity(API_FLIPS);
        let mut applied = Vec::with_capacity(API_FLIPS);
        for i in 0..API_FLIPS {
            let to = if i % 2 == 0 { "green" } else { "blue" };
            let t = Instant::now();
            let us = flip(&socket, to).await;
            round_trips.push(t.elapsed());
            applied.push(Duration::from_micros(us));
        }
        println!("state dir on: {}", dir.path().display());
        summary("admin API flip, round trip (fsync incl.)", round_trips);
        summary("admin API flip, applied_us (to the swap)", applied);
    });

    // The release binary, from CARGO_TARGET_DIR when set (as `cargo bench` sees it).
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let bin = target.join("release/switchyard");
    if bin.exists() {
        let mut runs = Vec::with_capacity(CTL_FLIPS);
        for i in 0..CTL_FLIPS {
            let to = if i % 2 == 0 { "green" } else { "blue" };
            let t = Instant::now();
            let out = std::process::Command::new(&bin)
                .args(["ctl", "--socket"])
                .arg(&socket)
                .args(["flip", to, "--force"])
                .output()
                .expect("run ctl");
            runs.push(t.elapsed());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        summary("`switchyard ctl flip` process, end to end", runs);
    } else {
        println!("(skipping the ctl process runs: build target/release/switchyard first)");
    }
    stop.trigger();
    let _ = server.join();
}
