//! Health checks, the health gate, failover and the Prometheus metrics, against real upstreams.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Waits until pool `id` has no healthy backend.
async fn wait_pool_down(proxy: &Proxy, id: usize) {
    let sb = proxy.switchboard.clone();
    wait_for("the pool to be unhealthy", READY_DEADLINE, || {
        let n = sb.load().pools[id].healthy_count();
        async move { (n == 0).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_dropped_within_fall_intervals_and_returns_after_rise() {
    let b1 = Upstream::start("blue").await;
    let b2 = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let health = "[health]\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 3\n";
    let toml = format!(
        "{}\n{health}",
        pools_toml(&[b1.addr, b2.addr], &[green.addr])
    );
    let proxy = Proxy::start(&toml).await;
    let pool = proxy.switchboard.load_full();
    let b2_state = || pool.pools[0].backends[1].is_healthy();

    b2.set_healthy(false);
    let failed_at = Instant::now();
    wait_for("b2 to be marked unhealthy", READY_DEADLINE, || {
        let h = b2_state();
        async move { (!h).then_some(()) }
    })
    .await;
    let took = failed_at.elapsed();
    // fall × interval, plus one interval for the phase of the first failing check, plus slack.
    assert!(
        took <= Duration::from_millis(3 * 200 + 200 + 300),
        "took {took:?}"
    );

    let before = b2.hits();
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..20 {
        assert_eq!(client.get("/").await.unwrap().status, 200);
    }
    assert_eq!(b2.hits(), before, "an unhealthy backend gets no traffic");

    b2.set_healthy(true);
    let back_at = Instant::now();
    wait_for("b2 to be healthy again", READY_DEADLINE, || {
        let h = b2_state();
        async move { h.then_some(()) }
    })
    .await;
    assert!(back_at.elapsed() <= Duration::from_millis(2 * 200 + 200 + 300));
    for _ in 0..20 {
        client.get("/").await.unwrap();
    }
    assert_eq!(b2.hits(), before + 10, "round-robin includes it again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_pool_takes_no_traffic_before_its_checks_pass() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let health = "[health]\ninterval = \"300ms\"\ntimeout = \"500ms\"\nrise = 3\nfall = 1\n";
    let toml = format!("{}\n{health}", pools_toml(&[blue.addr], &[green.addr]));
    let proxy = Proxy::start_unready(&toml).await;
    // Nothing has passed three checks yet: 503 at once, no backend touched.
    let start = Instant::now();
    let r = get(proxy.addr, "/").await;
    assert_eq!(r.status, 503);
    assert!(start.elapsed() < Duration::from_millis(500));
    assert_eq!(blue.hits() + green.hits(), 0);
    let (_, st) = admin(&proxy.socket(), "GET", "/v1/status", None).await;
    assert_eq!(st["pools"]["blue"]["ready"], false);

    proxy.wait_ready().await;
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_gate_refuses_a_pool_with_no_healthy_backend_unless_forced() {
    let (_blue, green, proxy) = two_pools().await;
    green.set_healthy(false);
    wait_pool_down(&proxy, 1).await;
    let before = proxy.switchboard.state();
    for (path, body) in [
        ("/v1/flip", json!({"to": "green"})),
        ("/v1/canary", json!({"pool": "green", "percent": 5})),
    ] {
        let (s, a) = admin(&proxy.socket(), "POST", path, Some(body)).await;
        assert_eq!(
            (s, a["code"].as_str()),
            (409, Some("target_not_ready")),
            "{a}"
        );
        assert!(a["error"]
            .as_str()
            .unwrap()
            .contains("0 of 1 backends healthy"));
    }
    assert_eq!(proxy.switchboard.state(), before);

    let (s, a) = admin(
        &proxy.socket(),
        "POST",
        "/v1/flip",
        Some(json!({"to": "green", "force": true, "reason": "green checks are wrong"})),
    )
    .await;
    assert_eq!((s, a["primary"].as_str()), (200, Some("green")));
    let (_, h) = admin(&proxy.socket(), "GET", "/v1/history?limit=1", None).await;
    assert_eq!(h[0]["forced"], true);
    // Forced onto a pool with nothing healthy: traffic fails over back to blue, counted.
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_canary_pool_fails_over_to_the_primary_and_is_counted() {
    let (_blue, green, proxy) = two_pools_with("[routing]\nsticky = \"none\"\n").await;
    let (s, _) = admin(
        &proxy.socket(),
        "POST",
        "/v1/canary",
        Some(json!({"pool": "green", "percent": 100})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(get(proxy.addr, "/").await.text(), "green");

    green.set_healthy(false);
    wait_pool_down(&proxy, 1).await;
    let green_hits = green.hits();
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..12 {
        let r = client.get("/").await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "blue"));
        assert_eq!(
            r.pool(),
            Some("blue"),
            "the header names the pool that served"
        );
    }
    assert_eq!(green.hits(), green_hits);
    let m = scrape(&proxy).await;
    let from_to = [("from", "green"), ("to", "blue")];
    assert_eq!(
        sample(&m, "switchyard_failovers_total", &from_to),
        Some(12.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_mix_exactly() {
    let (blue, _green, proxy) = two_pools().await;
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..30 {
        assert_eq!(client.get("/").await.unwrap().status, 200);
    }
    for _ in 0..7 {
        assert_eq!(client.get("/status/500").await.unwrap().status, 500);
    }
    let (s, _) = admin(
        &proxy.socket(),
        "POST",
        "/v1/flip",
        Some(json!({"to": "green"})),
    )
    .await;
    assert_eq!(s, 200);
    for _ in 0..5 {
        assert_eq!(client.get("/").await.unwrap().text(), "green");
    }

    // A request is counted when it is logged, just after its response is written: wait for the
    // last one, then every count must be exact.
    let m = wait_for("the last request to be counted", READY_DEADLINE, || async {
        let m = scrape(&proxy).await;
        let green = sample(
            &m,
            "switchyard_requests_total",
            &[("pool", "green"), ("code", "2xx")],
        );
        (green == Some(5.0)).then_some(m)
    })
    .await;
    let req = |pool, code| {
        sample(
            &m,
            "switchyard_requests_total",
            &[("pool", pool), ("code", code)],
        )
    };
    assert_eq!(req("blue", "2xx"), Some(30.0));
    assert_eq!(req("blue", "5xx"), Some(7.0));
    assert_eq!(req("green", "2xx"), Some(5.0));
    assert_eq!(req("green", "5xx"), Some(0.0));
    let hist = |pool: &str| {
        m.samples
            .iter()
            .find(|s| {
                s.metric == "switchyard_request_duration_seconds"
                    && s.labels.get("pool") == Some(pool)
            })
            .and_then(|s| match &s.value {
                prometheus_parse::Value::Histogram(h) => h.last().map(|b| b.count),
                _ => None,
            })
    };
    assert_eq!(hist("blue"), Some(37.0), "+Inf bucket counts every request");
    assert_eq!(hist("green"), Some(5.0));
    assert_eq!(
        sample(&m, "switchyard_primary", &[("pool", "green")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "switchyard_primary", &[("pool", "blue")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "switchyard_pool_weight_bp", &[("pool", "green")]),
        Some(10000.0)
    );
    assert_eq!(sample(&m, "switchyard_generation", &[]), Some(1.0));
    assert_eq!(
        sample(&m, "switchyard_changes_total", &[("action", "flip")]),
        Some(1.0)
    );
    let backend = blue.addr.to_string();
    assert_eq!(
        sample(
            &m,
            "switchyard_backend_healthy",
            &[("pool", "blue"), ("backend", &backend)]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "switchyard_inflight_requests", &[("pool", "blue")]),
        Some(0.0)
    );
    for name in [
        "switchyard_upstream_errors_total",
        "switchyard_rollbacks_total",
        "switchyard_preview_rejected_total",
        "switchyard_config_reloads_total",
        "switchyard_notify_failures_total",
    ] {
        assert!(m.docs.contains_key(name), "{name} is exported");
    }

    // The windowed figures in status agree.
    // (status counts completed seconds: the requests show once their second is over).
    let socket = proxy.socket();
    let st = wait_for("status to count the 37 requests", READY_DEADLINE, || {
        let socket = socket.clone();
        async move {
            let (_, st) = admin(&socket, "GET", "/v1/status", None).await;
            (st["pools"]["blue"]["requests"] == 37).then_some(st)
        }
    })
    .await;
    let ratio = st["pools"]["blue"]["error_ratio"].as_f64().unwrap();
    assert!((ratio - 7.0 / 37.0).abs() < 1e-9, "{ratio}");
    assert!(st["pools"]["blue"]["p99_ms"].as_f64().unwrap() > 0.0);
}

/// A raw upstream that promises 1000 bytes, sends 10, and closes; `/healthz` answers normally.
async fn truncating_upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if got.starts_with(b"GET /healthz") {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                    .await;
                // Dropping the socket here cuts the response short.
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_mid_response_is_counted_for_its_pool() {
    let cut = truncating_upstream().await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&pools_toml(&[cut], &[green.addr])).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/")
        .header("host", "x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "the headers got through");
    use http_body_util::BodyExt;
    assert!(
        resp.into_body().collect().await.is_err(),
        "the client sees the body cut short"
    );

    let m = scrape(&proxy).await;
    let blue_errors: f64 = ["connect", "timeout", "reset", "other"]
        .iter()
        .map(|k| {
            sample(
                &m,
                "switchyard_upstream_errors_total",
                &[("pool", "blue"), ("kind", k)],
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(blue_errors, 1.0);
    assert_eq!(
        sample(
            &m,
            "switchyard_upstream_errors_total",
            &[("pool", "blue"), ("kind", "reset")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "switchyard_upstream_errors_total",
            &[("pool", "green"), ("kind", "reset")]
        ),
        Some(0.0)
    );
}
