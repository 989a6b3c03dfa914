//! Monitoring a team can trust (issue 12): status figures that agree with Prometheus, metrics to
//! join on and alert on, failover episodes, the guard's bookkeeping, and the shipped Prometheus
//! rules checked by `promtool`. Real proxies, real upstreams, real scrapes parsed by a parser.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

async fn status(proxy: &Proxy) -> Value {
    admin(&proxy.socket(), "GET", "/v1/status", None).await.1
}

async fn post(proxy: &Proxy, path: &str, body: Value) -> (u16, Value) {
    admin(&proxy.socket(), "POST", path, Some(body)).await
}

/// The raw text of `/metrics`.
async fn metrics_text(proxy: &Proxy) -> String {
    let r = get(proxy.config.metrics.listen.unwrap(), "/metrics").await;
    assert_eq!(r.status, 200);
    r.text()
}

/// Every log line the proxies of this test binary write (one global subscriber).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || LogWriter(b.clone()))
            .try_init()
            .expect("the only subscriber");
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines(logs: &Mutex<Vec<u8>>, needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&logs.lock().unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// `promtool`, or a failure saying how to get it.
fn promtool() -> &'static str {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "promtool is not installed: run `./dev test` (it installs it), or \
         `apt-get install prometheus` (Debian/Ubuntu), or put promtool from \
         https://prometheus.io/download/ on PATH"
    );
    "promtool"
}

fn run_promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = std::process::Command::new(promtool());
    cmd.args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config/prometheus"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run promtool");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("promtool finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_closed_label_set_is_exported_from_start_with_the_metrics_to_join_on() {
    let (_blue, _green, proxy) = two_pools().await;
    let m = scrape(&proxy).await;
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(sample(&m, name, labels), Some(0.0), "{name}{labels:?}");
    };
    for a in ["flip", "canary", "promote", "rollback", "rollout", "reload"] {
        zero("switchyard_changes_total", &[("action", a)]);
    }
    for t in ["manual", "guard"] {
        zero("switchyard_rollbacks_total", &[("trigger", t)]);
    }
    for r in ["ok", "error"] {
        zero("switchyard_config_reloads_total", &[("result", r)]);
    }
    zero(
        "switchyard_failovers_total",
        &[("from", "blue"), ("to", "green")],
    );
    zero(
        "switchyard_failovers_total",
        &[("from", "green"), ("to", "blue")],
    );
    for pool in ["blue", "green"] {
        for k in ["connect", "timeout", "reset", "other"] {
            zero(
                "switchyard_upstream_errors_total",
                &[("pool", pool), ("kind", k)],
            );
        }
        for c in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            zero("switchyard_requests_total", &[("pool", pool), ("code", c)]);
        }
        zero("switchyard_guard_watching", &[("pool", pool)]);
        zero("switchyard_failover_active", &[("pool", pool)]);
    }
    zero("switchyard_notify_failures_total", &[]);
    zero("switchyard_preview_rejected_total", &[]);
    zero("switchyard_rollout_step", &[]);
    zero("switchyard_rollout_steps", &[]);
    assert_eq!(
        sample(
            &m,
            "switchyard_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let one = |name: &str, labels: &[(&str, &str)], v: f64| {
        assert_eq!(sample(&m, name, labels), Some(v), "{name}{labels:?}");
    };
    one(
        "switchyard_pool_info",
        &[("pool", "blue"), ("role", "live")],
        1.0,
    );
    one(
        "switchyard_pool_info",
        &[("pool", "green"), ("role", "idle")],
        1.0,
    );
    one(
        "switchyard_pool_info",
        &[("pool", "green"), ("role", "canary")],
        0.0,
    );
    one("switchyard_pool_traffic_share", &[("pool", "blue")], 1.0);
    one("switchyard_pool_traffic_share", &[("pool", "green")], 0.0);
    one("switchyard_guard_verdict", &[("verdict", "none")], 1.0);
    for v in ["waiting", "healthy", "breach"] {
        one("switchyard_guard_verdict", &[("verdict", v)], 0.0);
    }
    assert!(
        sample(&m, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0),
        "process metrics are exported"
    );
    // Dense buckets from 0.5 ms to 1 s (at most 50 % apart), and a few beyond.
    let les: Vec<f64> = m
        .samples
        .iter()
        .find(|s| s.metric == "switchyard_request_duration_seconds")
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.less_than).collect(),
            _ => panic!("a histogram"),
        })
        .expect("the duration histogram");
    assert_eq!(les[0], 0.0005);
    let to_1s: Vec<f64> = les.iter().copied().filter(|&l| l <= 1.0).collect();
    assert_eq!(*to_1s.last().unwrap(), 1.0);
    assert!(to_1s.len() >= 25, "{les:?}");
    for w in to_1s.windows(2) {
        assert!(
            w[1] / w[0] <= 1.5 + 1e-9,
            "buckets {} and {} are too far apart",
            w[0],
            w[1]
        );
    }
    assert!(les.iter().filter(|&&l| l > 1.0 && l.is_finite()).count() >= 3);

    // A canary at 25 %: the roles, the shares and the guard's watch follow.
    let (s, _) = post(
        &proxy,
        "/v1/canary",
        json!({"pool": "green", "percent": 25}),
    )
    .await;
    assert_eq!(s, 200);
    let m = wait_for("the guard to watch green", READY_DEADLINE, || {
        let p = &proxy;
        async move {
            let m = scrape(p).await;
            (sample(&m, "switchyard_guard_watching", &[("pool", "green")]) == Some(1.0))
                .then_some(m)
        }
    })
    .await;
    let one = |name: &str, labels: &[(&str, &str)], v: f64| {
        assert_eq!(sample(&m, name, labels), Some(v), "{name}{labels:?}");
    };
    one(
        "switchyard_pool_info",
        &[("pool", "green"), ("role", "canary")],
        1.0,
    );
    one(
        "switchyard_pool_info",
        &[("pool", "blue"), ("role", "live")],
        1.0,
    );
    one("switchyard_pool_traffic_share", &[("pool", "blue")], 0.75);
    one("switchyard_pool_traffic_share", &[("pool", "green")], 0.25);
    one("switchyard_guard_watching", &[("pool", "blue")], 0.0);
    one("switchyard_guard_verdict", &[("verdict", "waiting")], 1.0);
    one("switchyard_changes_total", &[("action", "canary")], 1.0);

    // A real scrape passes promtool's lint.
    let text = metrics_text(&proxy).await;
    run_promtool(&["check", "metrics"], Some(&text));
}

#[tokio::test]
async fn the_shipped_rules_check_and_pass_their_unit_tests() {
    let out = run_promtool(&["check", "rules", "switchyard.rules.yml"], None);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_promtool(&["test", "rules", "switchyard.rules.test.yml"], None);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_episode_is_logged_once_each_way_and_shown_in_status_and_metrics() {
    let logs = logs();
    let (blue, _green, proxy) = two_pools().await;
    blue.set_healthy(false);
    let sb = proxy.switchboard.clone();
    wait_for("blue to be unhealthy", READY_DEADLINE, || {
        let n = sb.load().pool(0).healthy_count();
        async move { (n == 0).then_some(()) }
    })
    .await;
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..20 {
        let r = client.get("/").await.unwrap();
        assert_eq!((r.status, r.pool()), (200, Some("green")));
    }
    let st = status(&proxy).await;
    assert_eq!(
        st["failover"],
        json!([{"from": "blue", "to": "green"}]),
        "{st}"
    );
    let m = scrape(&proxy).await;
    assert_eq!(
        sample(&m, "switchyard_failover_active", &[("pool", "blue")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "switchyard_pool_traffic_share", &[("pool", "green")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "switchyard_pool_traffic_share", &[("pool", "blue")]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &m,
            "switchyard_failovers_total",
            &[("from", "blue"), ("to", "green")]
        ),
        Some(20.0)
    );
    // `ctl status` headlines it.
    let out = tokio::task::spawn_blocking({
        let socket = proxy.socket();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(["ctl", "--socket"])
                .arg(socket)
                .arg("status")
                .output()
                .expect("run ctl")
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.contains("green serving blue's traffic (failover)")),
        "{text}"
    );
    let warn = log_lines(&logs, "FAILOVER: blue has no healthy backend");
    assert_eq!(warn.len(), 1, "{warn:?}");
    assert!(warn[0].contains("WARN"), "{warn:?}");

    blue.set_healthy(true);
    let l = logs.clone();
    wait_for(
        "the end of the episode to be logged",
        READY_DEADLINE,
        || {
            let n = log_lines(&l, "failover over: blue").len();
            async move { (n > 0).then_some(()) }
        },
    )
    .await;
    let r = client.get("/").await.unwrap();
    assert_eq!(r.pool(), Some("blue"));
    let end = log_lines(&logs, "failover over: blue");
    assert_eq!(end.len(), 1, "{end:?}");
    assert!(end[0].contains("INFO"), "{end:?}");
    assert_eq!(
        log_lines(&logs, "FAILOVER: blue has no healthy backend").len(),
        1
    );
    let st = status(&proxy).await;
    assert_eq!(st["failover"], json!([]), "{st}");
}

/// Two pools, a per-request split and a guard judging from `min_requests` after `min_duration`.
async fn guarded(min_requests: u64, min_duration: &str) -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let toml = format!(
        "{}\n[routing]\nsticky = \"none\"\n[guard]\nwindow = \"3s\"\nmin_requests = \
         {min_requests}\nmax_error_ratio = 0.05\nwatch_after_flip = \"30s\"\n\
         min_duration = \"{min_duration}\"\n",
        pools_toml(&[blue.addr], &[green.addr]),
    );
    let proxy = Proxy::start(&toml).await;
    (blue, green, proxy)
}

/// Sends `n` requests through the proxy, one after the other.
async fn send(proxy: &Proxy, n: usize) {
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..n {
        client.get("/").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_watch_starts_without_the_previous_judgement() {
    let (_blue, green, proxy) = guarded(20, "0s").await;
    green.fail_every(1);
    let (s, _) = post(
        &proxy,
        "/v1/canary",
        json!({"pool": "green", "percent": 50}),
    )
    .await;
    assert_eq!(s, 200);
    let sb = proxy.switchboard.clone();
    let mut client = Client::connect(proxy.addr).await;
    let deadline = Instant::now() + READY_DEADLINE;
    while sb.state().canary_bp != 0 {
        assert!(Instant::now() < deadline, "the guard never rolled back");
        client.get("/").await.unwrap();
    }
    let st = status(&proxy).await;
    assert_eq!(st["guard"]["judgement"]["verdict"], "breach", "{st}");
    // The failing requests age out of the guard's 3 s window before green is flipped to.
    green.fail_every(0);
    tokio::time::sleep(Duration::from_secs(4)).await;

    let (s, _) = post(&proxy, "/v1/flip", json!({"to": "green"})).await;
    assert_eq!(s, 200);
    let st = status(&proxy).await;
    assert_eq!(st["guard"]["watching"]["pool"], "green", "{st}");
    let j = &st["guard"]["judgement"];
    assert!(
        j.is_null() || j["verdict"] == "waiting",
        "a new watch has no old verdict: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_guard_waits_for_min_duration_and_says_no_requests() {
    let (_blue, green, proxy) = guarded(5, "2s").await;
    green.fail_every(1);
    let flipped = Instant::now();
    let (s, _) = post(&proxy, "/v1/flip", json!({"to": "green"})).await;
    assert_eq!(s, 200);
    // Well past min_requests within the first second: still waiting for min_duration.
    send(&proxy, 20).await;
    let st = status(&proxy).await;
    if flipped.elapsed() < Duration::from_millis(1800) {
        assert_eq!(st["primary"], "green", "{st}");
        let j = &st["guard"]["judgement"];
        assert!(
            j.is_null() || j["verdict"] == "waiting",
            "judged before min_duration: {st}"
        );
    }
    let sb = proxy.switchboard.clone();
    let mut client = Client::connect(proxy.addr).await;
    let deadline = Instant::now() + READY_DEADLINE;
    while sb.state().primary != 0 {
        assert!(Instant::now() < deadline, "the guard never rolled back");
        client.get("/").await.unwrap();
    }
    let took = flipped.elapsed();
    assert!(took >= Duration::from_secs(2), "rolled back after {took:?}");
    // The state switches before the history line is written: wait for it.
    let socket = proxy.socket();
    let h = wait_for("the guard's history entry", READY_DEADLINE, || {
        let socket = socket.clone();
        async move {
            let (_, h) = admin(&socket, "GET", "/v1/history?limit=1", None).await;
            (h[0]["trigger"] == "guard").then_some(h)
        }
    })
    .await;
    let summary = h[0]["detail"]["summary"].as_str().unwrap().to_string();
    assert!(summary.ends_with("; blue had no requests"), "{summary}");
}

/// Requests `pool` answered, from a scrape.
fn served(m: &prometheus_parse::Scrape, pool: &str) -> f64 {
    m.samples
        .iter()
        .filter(|s| s.metric == "switchyard_requests_total")
        .filter(|s| s.labels.get("pool") == Some(pool))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_rps_agrees_with_prometheus_rate_at_a_steady_rate() {
    let (_blue, _green, proxy) = two_pools().await;
    let addr = proxy.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    // 100 requests per second, paced by a ticker.
    let load = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !s.load(std::sync::atomic::Ordering::SeqCst) {
            tick.tick().await;
            client.get("/").await.unwrap();
        }
    });
    // The counter as Prometheus sees it, scraped every 50 ms.
    let start = Instant::now();
    let mut counter: Vec<(Duration, f64)> = Vec::new();
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(15) {
        counter.push((start.elapsed(), served(&scrape(&proxy).await, "blue")));
        // Once the status window (10 s) has filled with the steady rate, sample status too.
        if start.elapsed() > Duration::from_secs(11) && counter.len().is_multiple_of(3) {
            let st = status(&proxy).await;
            seen.push((
                start.elapsed(),
                st["pools"]["blue"]["rps"].as_f64().unwrap(),
                st["pools"]["blue"]["requests"].as_u64().unwrap(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.await.unwrap();
    // rate() over the 10 s status covers: its completed seconds end up to a second before the
    // call, so the span ending half a second before it.
    let at = |t: Duration| {
        counter
            .iter()
            .min_by_key(|(c, _)| c.abs_diff(t))
            .map(|&(_, v)| v)
            .unwrap()
    };
    assert!(seen.len() >= 10, "{}", seen.len());
    for (t, rps, requests) in seen {
        let end = t - Duration::from_millis(500);
        let rate = (at(end) - at(end - Duration::from_secs(10))) / 10.0;
        assert!(rate > 50.0, "the load ran at {rate:.1}/s");
        assert!(
            (rps - rate).abs() / rate <= 0.02,
            "status said {rps:.1} req/s where rate() over its 10 s said {rate:.1}/s"
        );
        assert!((requests as f64 / 10.0 - rps).abs() < 1e-9);
    }
}

/// Prometheus' histogram_quantile over cumulative `(le, count)` buckets.
fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().unwrap().1;
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in buckets {
        if c >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            return prev.0 + (le - prev.0) * (rank - prev.1) / (c - prev.1);
        }
        prev = (le, c);
    }
    unreachable!()
}

/// The index of the bucket `v` falls in.
fn bucket_of(v: f64, buckets: &[(f64, f64)]) -> usize {
    buckets.iter().position(|&(le, _)| v <= le).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_percentiles_and_histogram_quantile_agree_within_a_bucket() {
    let (blue, _green, proxy) = two_pools().await;
    send(&proxy, 150).await;
    blue.delay(20);
    send(&proxy, 50).await;
    let socket = proxy.socket();
    let st = wait_for("status to count the 200 requests", READY_DEADLINE, || {
        let socket = socket.clone();
        async move {
            let (_, st) = admin(&socket, "GET", "/v1/status", None).await;
            (st["pools"]["blue"]["requests"] == 200).then_some(st)
        }
    })
    .await;
    let m = scrape(&proxy).await;
    let buckets: Vec<(f64, f64)> = m
        .samples
        .iter()
        .find(|s| {
            s.metric == "switchyard_request_duration_seconds"
                && s.labels.get("pool") == Some("blue")
        })
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => {
                h.iter().map(|b| (b.less_than, b.count)).collect()
            }
            _ => panic!("a histogram"),
        })
        .unwrap();
    assert_eq!(buckets.last().unwrap().1, 200.0);
    for (q, key) in [(0.5, "p50_ms"), (0.99, "p99_ms")] {
        let prom = histogram_quantile(q, &buckets);
        let ours = st["pools"]["blue"][key].as_f64().unwrap() / 1000.0;
        let (a, b) = (bucket_of(prom, &buckets), bucket_of(ours, &buckets));
        assert!(
            a.abs_diff(b) <= 1,
            "{key}: status {ours}s, histogram_quantile {prom}s"
        );
    }
    let p99 = st["pools"]["blue"]["p99_ms"].as_f64().unwrap();
    assert!(p99 >= 20.0, "{p99}");
}
