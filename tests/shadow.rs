//! Shadow traffic and its diff against real upstreams: the client never waits for a copy (a
//! hanging shadow colour leaves the live p99 alone), copies beyond the queue are dropped and
//! counted, POST is not copied by default, mismatches are counted exactly per route with samples,
//! the flip gate refuses a colour that answers differently, and memory stays flat.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};
use switchyard::httpd::{self, Listener};

async fn report(proxy: &Proxy) -> Value {
    let (code, r) = admin(&proxy.socket(), "GET", "/v1/shadow", None).await;
    assert_eq!(code, 200, "{r}");
    r
}

async fn start_shadow(proxy: &Proxy, pool: &str, percent: f64) -> Value {
    let (code, r) = admin(
        &proxy.socket(),
        "POST",
        "/v1/shadow",
        Some(json!({"pool": pool, "percent": percent, "for": "10m", "reason": "pre-flip check"})),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    r
}

/// Waits until the report has seen `n` copies (answered or failed).
async fn wait_copies(proxy: &Proxy, n: u64) -> Value {
    let socket = proxy.socket();
    wait_for(&format!("{n} shadow copies"), READY_DEADLINE, || {
        let socket = socket.clone();
        async move {
            let (_, r) = admin(&socket, "GET", "/v1/shadow", None).await;
            let seen = r["mirrored"].as_u64().unwrap_or(0) + r["failed"].as_u64().unwrap_or(0);
            (seen >= n).then_some(r)
        }
    })
    .await
}

/// Latencies of `clients` × `each` sequential GETs.
async fn latencies(addr: SocketAddr, clients: usize, each: usize) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut lat = Vec::with_capacity(each);
            for _ in 0..each {
                let t = Instant::now();
                let r = c.get("/").await.unwrap();
                lat.push(t.elapsed());
                assert_eq!(r.text(), "blue");
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn p99(mut all: Vec<Duration>) -> Duration {
    all.sort();
    all[(all.len() * 99).div_ceil(100) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_shadow_costs_the_client_nothing_and_overflow_is_dropped_and_counted() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    // The live colour takes 100 ms, an ordinary API call; the shadow colour hangs for a minute.
    blue.delay(100);
    green.delay(60_000);
    let toml = format!(
        "{}\n[shadow]\nqueue = 8\nconcurrency = 4\ntimeout = \"60s\"\n",
        pools_toml(&[blue.addr], &[green.addr])
    );
    // Side by side, at the same time, so the shared machine's stalls hit both alike: one proxy
    // without shadow traffic, one copying every request to the hanging colour.
    let plain = Proxy::start(&toml).await;
    let proxy = Proxy::start(&toml).await;
    let r = start_shadow(&proxy, "green", 100.0).await;
    assert_eq!(
        (r["active"].as_bool(), r["pool"].as_str()),
        (Some(true), Some("green"))
    );
    let (clients, each) = (4, 100);
    let (without, with) = tokio::join!(
        latencies(plain.addr, clients, each),
        latencies(proxy.addr, clients, each)
    );
    let (without, with) = (p99(without), p99(with));
    println!("live p99 without shadow {without:?}, with a hanging shadow {with:?}");
    assert!(
        with.as_secs_f64() <= without.as_secs_f64() * 1.2,
        "live p99 {with:?} with a hanging shadow, {without:?} without"
    );

    // 4 copies in flight (hanging), 8 waiting, every other one dropped at once and counted.
    let sent = (clients * each) as u64;
    let g = green.hits.clone();
    wait_for("4 copies at the hanging colour", READY_DEADLINE, || {
        let n = g.load(Ordering::SeqCst);
        async move { (n == 4).then_some(()) }
    })
    .await;
    let r = report(&proxy).await;
    assert_eq!(r["dropped"], sent - 12, "{r}");
    assert_eq!(
        (r["mirrored"].as_u64(), r["failed"].as_u64()),
        (Some(0), Some(0))
    );
    let scrape = scrape(&proxy).await;
    let count = |result| {
        sample(
            &scrape,
            "switchyard_shadow_requests_total",
            &[("result", result)],
        )
    };
    assert_eq!(count("dropped"), Some((sent - 12) as f64));
    assert_eq!(count("mirrored"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_are_marked_and_post_is_not_copied_by_default() {
    let (_blue, green, proxy) = two_pools().await;
    start_shadow(&proxy, "green", 100.0).await;
    let mut c = Client::connect(proxy.addr).await;
    for i in 0..10 {
        let r = c
            .send(request("POST", "/echo", format!("order {i}")))
            .await
            .unwrap();
        assert_eq!(r.text(), format!("order {i}"));
        let r = c.get(&format!("/item/{i}?q=1")).await.unwrap();
        assert_eq!(r.text(), "blue");
    }
    let r = wait_copies(&proxy, 10).await;
    assert_eq!(r["mirrored"], 10, "{r}");
    let seen = green.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 10, "{seen:?}");
    for s in &seen {
        assert_eq!(s.method, "GET");
        assert!(s.path.starts_with("/item/"));
        assert_eq!(s.headers["x-switchyard-shadow"], "1");
        assert!(s.headers.contains_key("x-forwarded-for"));
    }
    // A copy of a copy is never made, and the live colour's requests stay unmarked.
    assert_eq!(r["routes"][0]["route"], "GET /item");
    assert_eq!(r["status_mismatches"], 0);

    // The live pool cannot be the shadow, and a bad share is refused; nothing changes.
    let (code, e) = admin(
        &proxy.socket(),
        "POST",
        "/v1/shadow",
        Some(json!({"pool": "blue", "percent": 10})),
    )
    .await;
    assert_eq!(
        (code, e["code"].as_str()),
        (409, Some("pool_is_live")),
        "{e}"
    );
    let (code, _) = admin(
        &proxy.socket(),
        "POST",
        "/v1/shadow",
        Some(json!({"pool": "green", "percent": 0})),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(report(&proxy).await["active"], true);

    // Stopped: no more copies, the report stays.
    let (code, r) = admin(&proxy.socket(), "POST", "/v1/shadow/stop", Some(json!({}))).await;
    assert_eq!(code, 200);
    assert_eq!(
        (r["active"].as_bool(), r["ended_because"].as_str()),
        (Some(false), Some("stopped"))
    );
    c.get("/after").await.unwrap();
    let r = report(&proxy).await;
    assert_eq!(r["mirrored"], 10);
    let (_, h) = admin(&proxy.socket(), "GET", "/v1/history", None).await;
    let actions: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["shadow", "shadow"]);
}

/// A JSON API standing in for one colour: `/api/users/N` names user N (green spells it
/// differently), `/api/orders/N` (green answers 500), `/api/ok` (the same on both but for
/// `ts`). Every answer carries a fresh `ts`.
async fn json_api(colour: &'static str) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = Listener::bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let hits = Arc::new(AtomicUsize::new(0));
    tokio::spawn(httpd::serve(
        listener,
        move |req: Request<Incoming>, _| {
            let hits = hits.clone();
            async move {
                let n = hits.fetch_add(1, Ordering::SeqCst);
                let path = req.uri().path().to_string();
                let _ = req.into_body().collect().await;
                let ts = format!("2026-12-02T12:00:{:02}.{n:03}Z", n % 60);
                let (status, body) = match path.split('/').collect::<Vec<_>>()[..] {
                    ["", "healthz"] => (200, json!({"ok": true})),
                    ["", "api", "users", id] => {
                        let name = if colour == "blue" { "user" } else { "User" };
                        (
                            200,
                            json!({"id": id, "name": format!("{name} {id}"), "ts": ts}),
                        )
                    }
                    ["", "api", "orders", id] if colour == "green" => {
                        (500, json!({"error": format!("order {id}: no such table")}))
                    }
                    ["", "api", "orders", id] => (200, json!({"order": id, "ts": ts})),
                    _ => (200, json!({"ok": true, "ts": ts})),
                };
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(Bytes::from(body.to_string())))
                    .unwrap()
            }
        },
        rx,
    ));
    (addr, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mismatches_are_counted_per_route_with_samples_and_gate_the_flip() {
    let (blue, _b) = json_api("blue").await;
    let (green, _g) = json_api("green").await;
    let toml = format!(
        "{}\n[shadow]\ncompare_body = \"json\"\nignore_fields = [\"ts\"]\n\
         routes = [\"/api/users/*\", \"/api/orders/*\"]\nmax_mismatch_ratio = 0.05\n\
         min_compared = 20\n",
        pools_toml(&[blue], &[green])
    );
    let proxy = Proxy::start(&toml).await;
    start_shadow(&proxy, "green", 100.0).await;
    let mut c = Client::connect(proxy.addr).await;
    for i in 0..20 {
        assert_eq!(c.get(&format!("/api/users/{i}")).await.unwrap().status, 200);
    }
    for i in 0..15 {
        assert_eq!(
            c.get(&format!("/api/orders/{i}")).await.unwrap().status,
            200
        );
    }
    for _ in 0..10 {
        assert_eq!(c.get("/api/ok").await.unwrap().status, 200);
    }
    let r = wait_copies(&proxy, 45).await;
    assert_eq!(
        (
            r["mirrored"].as_u64(),
            r["status_mismatches"].as_u64(),
            r["body_mismatches"].as_u64(),
            r["failed"].as_u64(),
            r["dropped"].as_u64()
        ),
        (Some(45), Some(15), Some(20), Some(0), Some(0)),
        "{r}"
    );
    let route = |name: &str| {
        r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["route"] == name)
            .unwrap_or_else(|| panic!("no route {name} in {r}"))
            .clone()
    };
    let users = route("GET /api/users/*");
    assert_eq!(
        (
            users["mirrored"].as_u64(),
            users["body_mismatches"].as_u64(),
            users["status_mismatches"].as_u64()
        ),
        (Some(20), Some(20), Some(0))
    );
    let sample = &users["samples"][0];
    assert_eq!(sample["kind"], "body");
    assert_eq!(sample["first_difference"], "$.name");
    // Copies are compared as they come back, several at a time, so the first sample may be any
    // request's: its two bodies must be the same user, named in each colour's way.
    let path = sample["path"].as_str().unwrap();
    let id = path.rsplit('/').next().unwrap();
    assert!(
        sample["live_body"]
            .as_str()
            .unwrap()
            .contains(&format!("\"user {id}\"")),
        "{sample}"
    );
    assert!(
        sample["shadow_body"]
            .as_str()
            .unwrap()
            .contains(&format!("\"User {id}\"")),
        "{sample}"
    );
    assert_eq!(users["samples"].as_array().unwrap().len(), 5);
    let orders = route("GET /api/orders/*");
    assert_eq!(
        (
            orders["mirrored"].as_u64(),
            orders["status_mismatches"].as_u64(),
            orders["body_mismatches"].as_u64()
        ),
        (Some(15), Some(15), Some(0))
    );
    assert_eq!(
        (
            orders["samples"][0]["live_status"].as_u64(),
            orders["samples"][0]["shadow_status"].as_u64()
        ),
        (Some(200), Some(500))
    );
    assert!(orders["samples"][0]["shadow_body"]
        .as_str()
        .unwrap()
        .contains("no such table"));
    // Same answers but for the ignored timestamp: no mismatch.
    let ok = route("GET /api");
    assert_eq!(
        (ok["mirrored"].as_u64(), ok["body_mismatches"].as_u64()),
        (Some(10), Some(0))
    );
    assert!(ok["live_p50_ms"].as_f64().is_some() && ok["shadow_p99_ms"].as_f64().is_some());

    // `ctl shadow report` says the same for people: a row per route, then the samples.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["ctl", "--socket"])
        .arg(proxy.socket())
        .args(["shadow", "report"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "45 mirrored, 0 failed, 0 dropped, 0 too large; 15 status and 20 body mismatches"
        ),
        "{text}"
    );
    let row = |route: &str| {
        text.lines()
            .find(|l| l.starts_with(route))
            .map(|l| l.split_whitespace().skip(2).take(4).collect::<Vec<_>>())
    };
    assert_eq!(
        row("GET /api/users/*"),
        Some(vec!["20", "0", "0", "20"]),
        "{text}"
    );
    assert_eq!(
        row("GET /api/orders/*"),
        Some(vec!["15", "0", "15", "0"]),
        "{text}"
    );
    assert!(text.contains("body mismatch on GET /api/users/0: live 200 vs. shadow 200, first difference at $.name"), "{text}");
    assert!(
        text.contains("status mismatch on GET /api/orders/0: live 200 vs. shadow 500"),
        "{text}"
    );

    // The gate: green answered differently on 35 of 45 (78 %): a flip or canary to it is
    // refused with the figures, and nothing changes, unless forced.
    let before = admin(&proxy.socket(), "GET", "/v1/status", None).await.1;
    for (path, body) in [
        ("/v1/flip", json!({"to": "green"})),
        ("/v1/canary", json!({"pool": "green", "percent": 5})),
    ] {
        let (code, e) = admin(&proxy.socket(), "POST", path, Some(body)).await;
        assert_eq!(
            (code, e["code"].as_str()),
            (409, Some("shadow_mismatch")),
            "{e}"
        );
        let msg = e["error"].as_str().unwrap();
        assert!(msg.contains("35 of 45"), "{msg}");
        assert!(
            msg.contains("GET /api/users/*: 0 status, 20 body mismatches"),
            "{msg}"
        );
    }
    let after = admin(&proxy.socket(), "GET", "/v1/status", None).await.1;
    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(after["primary"], "blue");
    let (code, st) = admin(
        &proxy.socket(),
        "POST",
        "/v1/flip",
        Some(json!({"to": "green", "force": true})),
    )
    .await;
    assert_eq!((code, st["primary"].as_str()), (200, Some("green")), "{st}");
}

/// Resident memory of this process (the proxy runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Sends GETs `/r{from}/x` … `/r{to-1}/x` on 8 connections: every request on its own route,
/// the worst case for the report.
async fn send_range(addr: SocketAddr, from: usize, to: usize) {
    let mut tasks = Vec::new();
    for k in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for i in (from + k..to).step_by(8) {
                let r = c.get(&format!("/r{i}/x")).await.unwrap();
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Sends batches until `mirrored` copies were answered, each batch drained (every copy
/// answered, failed or dropped) before the next; returns the report and the requests sent.
async fn mirror_until(proxy: &Proxy, mut sent: usize, mirrored: u64) -> (Value, usize) {
    loop {
        let r = report(proxy).await;
        if r["mirrored"].as_u64().unwrap() >= mirrored {
            return (r, sent);
        }
        send_range(proxy.addr, sent, sent + 10_000).await;
        sent += 10_000;
        let socket = proxy.socket();
        wait_for("the batch's copies to drain", READY_DEADLINE * 4, || {
            let socket = socket.clone();
            async move {
                let (_, r) = admin(&socket, "GET", "/v1/shadow", None).await;
                let n = ["mirrored", "failed", "dropped"]
                    .iter()
                    .map(|k| r[*k].as_u64().unwrap_or(0))
                    .sum::<u64>();
                (n == sent as u64).then_some(())
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_stays_flat_over_100000_mirrored_requests() {
    // Upstreams that keep nothing per request (the harness's `Upstream` records every request
    // it sees, which would be the test's own growth), answering the same JSON but for `ts`.
    let (blue, _b) = json_api("blue").await;
    let (green, _g) = json_api("blue").await;
    let toml = format!(
        "{}\n[shadow]\ncompare_body = \"json\"\nignore_fields = [\"ts\"]\n",
        pools_toml(&[blue], &[green])
    );
    let proxy = Proxy::start(&toml).await;
    start_shadow(&proxy, "green", 100.0).await;
    let (_, sent) = mirror_until(&proxy, 0, 20_000).await;
    let warm = rss_kib();
    let (r, sent) = mirror_until(&proxy, sent, 100_000).await;
    let end = rss_kib();
    assert_eq!(r["failed"], 0, "{}", r["failed"]);
    // The same JSON but for the ignored `ts`: every pair was compared and agreed.
    assert_eq!(r["body_mismatches"], 0);
    assert_eq!(r["status_mismatches"], 0);
    let routes = r["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 101, "100 routes and the rest under one");
    println!(
        "{sent} requests, {} mirrored, {} dropped; RSS after 20 000 mirrored: {warm} KiB, \
         after 100 000: {end} KiB",
        r["mirrored"], r["dropped"]
    );
    assert!(
        end < warm + 16 * 1024,
        "RSS grew from {warm} KiB to {end} KiB over 80 000 more mirrored requests"
    );
}
