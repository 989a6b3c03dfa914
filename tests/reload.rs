//! Configuration reload: members change in place under load, nothing is dropped, a removed
//! backend gets no new request, a new one none before it is healthy, a reload that would leave the
//! live pool short is refused, and a bad file changes nothing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Pools `blue` and `green` with the given members, plus `extra`.
fn pools(blue: &[SocketAddr], green: &[SocketAddr], extra: &str) -> String {
    format!(
        "[pools.blue]\nbackends = [{}]\n\n[pools.green]\nbackends = [{}]\n\n{extra}",
        list(blue),
        list(green)
    )
}

async fn reload(proxy: &Proxy) -> (u16, serde_json::Value) {
    admin(&proxy.socket(), "POST", "/v1/reload", Some(json!({}))).await
}

async fn status(proxy: &Proxy) -> serde_json::Value {
    admin(&proxy.socket(), "GET", "/v1/status", None).await.1
}

fn green_members(st: &serde_json::Value) -> Vec<String> {
    st["pools"]["green"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["addr"].as_str().unwrap().to_string())
        .collect()
}

/// One reload as the test saw it: sent at, acknowledged at, and green's members after it.
struct Reloaded {
    sent: Instant,
    acked: Instant,
    green: Vec<String>,
}

/// One proxied request as a client saw it.
struct Answer {
    started: Instant,
    finished: Instant,
    status: u16,
    body: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_every_200ms_under_load_drop_nothing_and_respect_health() {
    let blue = Upstream::start("b1").await;
    let g1 = Upstream::start("g1").await;
    let g2 = Upstream::start("g2").await;
    let g3 = Upstream::start("g3").await;
    let list_a = [g1.addr, g2.addr];
    let list_b = [g2.addr, g3.addr];
    let proxy = Proxy::start(&pools(&[blue.addr], &list_a, "")).await;
    proxy.flip("green").await;

    let names = Arc::new(
        [(g1.addr, "g1"), (g2.addr, "g2"), (g3.addr, "g3")]
            .into_iter()
            .map(|(a, n)| (a.to_string(), n.to_string()))
            .collect::<std::collections::HashMap<_, _>>(),
    );
    let run_for = Duration::from_secs(10);
    let start = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let addr = proxy.addr;
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut seen = Vec::new();
            while start.elapsed() < run_for {
                let started = Instant::now();
                let (status, body) = match c.get("/").await {
                    Ok(r) => (r.status, r.text()),
                    Err(e) => (0, e.to_string()),
                };
                seen.push(Answer {
                    started,
                    finished: Instant::now(),
                    status,
                    body,
                });
            }
            seen
        }));
    }
    let mut reloads = Vec::new();
    let mut use_b = true;
    while start.elapsed() < run_for - Duration::from_millis(300) {
        let green = if use_b { &list_b } else { &list_a };
        proxy.write_config(&pools(&[blue.addr], green, ""));
        let sent = Instant::now();
        let (code, body) = reload(&proxy).await;
        let acked = Instant::now();
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["changed"], true, "{body}");
        reloads.push(Reloaded {
            sent,
            acked,
            green: green
                .iter()
                .map(|a| names[&a.to_string()].clone())
                .collect(),
        });
        use_b = !use_b;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }

    let failed: Vec<_> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {} {}",
        failed.len(),
        answers.len(),
        failed[0].status,
        failed[0].body
    );
    assert!(reloads.len() >= 25, "only {} reloads", reloads.len());
    // A request that started after a reload was acknowledged and was answered before the next
    // one was sent went to a member of the list that reload put in force, never to a removed
    // backend.
    let mut checked = 0;
    for (i, r) in reloads.iter().enumerate() {
        let next_sent = reloads.get(i + 1).map_or(start + run_for * 2, |n| n.sent);
        for a in answers
            .iter()
            .filter(|a| a.started > r.acked && a.finished < next_sent)
        {
            checked += 1;
            assert!(
                r.green.contains(&a.body),
                "reload {i} put {:?} in force, but a request started {:?} after its \
                 acknowledgement went to {}",
                r.green,
                a.started - r.acked,
                a.body
            );
        }
    }
    assert!(
        checked > 1000,
        "only {checked} requests fell between reloads"
    );
    // g3 came back (as a new, unchecked backend) with every other reload: each time, it got no
    // request before a health check of its had passed since it was added.
    let g3_checks = g3.checks_passed();
    let g3_arrivals = g3.arrivals();
    let mut windows_with_traffic = 0;
    for (i, r) in reloads
        .iter()
        .enumerate()
        .filter(|(_, r)| r.green[1] == "g3")
    {
        let until = reloads.get(i + 1).map_or(start + run_for * 2, |n| n.acked);
        let first_check = g3_checks.iter().find(|t| **t >= r.sent);
        let served: Vec<&Instant> = g3_arrivals
            .iter()
            .filter(|t| **t >= r.sent && **t < until)
            .collect();
        if let Some(first) = served.first() {
            windows_with_traffic += 1;
            let check = first_check.expect("g3 served before any health check");
            assert!(
                *first > check,
                "g3 served a request {:?} before its first health check after reload {i}",
                *check - **first
            );
        }
    }
    assert!(
        windows_with_traffic >= 5,
        "g3 took traffic in only {windows_with_traffic} of its windows"
    );
    assert!(g1.hits() > 0 && g2.hits() > 0 && g3.hits() > 0);
    assert_eq!(blue.hits(), 0, "blue is not live");

    // History has one line per reload, with the diff.
    let (_, history) = admin(&proxy.socket(), "GET", "/v1/history?limit=1000", None).await;
    let reload_lines: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "reload")
        .collect();
    assert_eq!(reload_lines.len(), reloads.len());
    let summary = reload_lines[reload_lines.len() - 1]["detail"]["summary"]
        .as_str()
        .unwrap();
    assert_eq!(summary, format!("green: +{} −{}", g3.addr, g1.addr));
    let scrape = scrape(&proxy).await;
    assert_eq!(
        sample(
            &scrape,
            "switchyard_config_reloads_total",
            &[("result", "ok")]
        ),
        Some(reloads.len() as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_never_leaves_the_live_pool_without_healthy_backends() {
    let blue = Upstream::start("b1").await;
    let g1 = Upstream::start("g1").await;
    let g4 = Upstream::start("g4").await;
    g4.set_healthy(false);
    let proxy = Proxy::start(&pools(&[blue.addr], &[g1.addr], "")).await;
    proxy.flip("green").await;

    // Traffic all along: the live pool must never answer 503.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, stop2) = (proxy.addr, stop.clone());
    let load = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        let mut codes = std::collections::BTreeMap::<u16, usize>::new();
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            let code = c.get("/").await.map_or(0, |r| r.status);
            *codes.entry(code).or_default() += 1;
        }
        codes
    });

    // Replacing g1 with g4, which fails its checks: refused after the bound, nothing changed.
    proxy.write_config(&pools(&[blue.addr], &[g4.addr], ""));
    let before = status(&proxy).await;
    let (code, body) = reload(&proxy).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["code"], "target_not_ready");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("green") && msg.contains(&g4.addr.to_string()),
        "{msg}"
    );
    let after = status(&proxy).await;
    assert_eq!(green_members(&after), [g1.addr.to_string()]);
    assert_eq!(after["generation"], before["generation"]);

    // Once g4 passes its checks, the same reload waits for them and then swaps.
    g4.set_healthy(true);
    let g1_before = g1.hits();
    let (code, body) = reload(&proxy).await;
    let acked = Instant::now();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["checked_first"], json!([g4.addr.to_string()]));
    assert_eq!(green_members(&status(&proxy).await), [g4.addr.to_string()]);
    // Let traffic run on the new member for a while.
    let served = g4.hits();
    wait_for("g4 to serve", READY_DEADLINE, || {
        let n = g4.hits();
        async move { (n > served + 50).then_some(()) }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let codes = load.await.unwrap();
    assert_eq!(
        codes.keys().copied().collect::<Vec<_>>(),
        [200],
        "the live pool answered something else than 200: {codes:?}"
    );
    // g1 was removed: at most the request that was in flight at the swap reached it after.
    let late = g1.arrivals().into_iter().filter(|t| *t > acked).count();
    assert_eq!(
        late, 0,
        "g1 got {late} request(s) after its removal was acknowledged"
    );
    assert!(g1.hits() >= g1_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_changes_nothing_and_says_why() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let spare = Upstream::start("spare").await;
    let good = pools(&[blue.addr], &[green.addr], "");
    let proxy = Proxy::start(&good).await;
    let (_, _) = admin(
        &proxy.socket(),
        "POST",
        "/v1/canary",
        Some(json!({"pool": "green", "percent": 5})),
    )
    .await;
    let before = status(&proxy).await;
    let state_before = std::fs::read(proxy.dir.path().join("state/state.json")).unwrap();

    let green_addr = green.addr.to_string();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "syntax",
            format!("{good}\n[guard\n"),
            "invalid_config",
            "switchyard.toml:",
        ),
        (
            "unknown key",
            format!("{good}\n[guard]\nmax_error_rate = 0.1\n"),
            "invalid_config",
            "max_error_rate",
        ),
        (
            "bad address",
            pools(&[blue.addr], &[green.addr], "")
                .replace(&green.addr.to_string(), "10.0.0.300:80"),
            "invalid_config",
            "10.0.0.300:80",
        ),
        (
            "duplicate backend",
            pools(&[blue.addr], &[green.addr, green.addr], ""),
            "invalid_config",
            &green_addr,
        ),
        (
            "listener change",
            String::new(),
            "restart_required",
            "listen.http",
        ),
    ];
    for (what, text, code, mentions) in &cases {
        if text.is_empty() {
            // The listener is the harness's: move it in the file as written, and add a backend
            // (which alone could change in place) to show that nothing is applied.
            proxy.write_config(&pools(&[blue.addr], &[green.addr, spare.addr], ""));
            let file = std::fs::read_to_string(&proxy.config_file).unwrap();
            let moved = file.replace(
                &proxy.addr.to_string(),
                &format!("127.0.0.1:{}", free_port()),
            );
            std::fs::write(&proxy.config_file, moved).unwrap();
        } else {
            proxy.write_config(text);
        }
        let (status_code, body) = reload(&proxy).await;
        assert_eq!(status_code, 422, "{what}: {body}");
        assert_eq!(body["code"], *code, "{what}: {body}");
        let errors = body["errors"].as_array().unwrap();
        assert!(!errors.is_empty(), "{what}: {body}");
        assert!(
            errors
                .iter()
                .any(|e| e.as_str().unwrap().contains(mentions)),
            "{what}: no error mentions {mentions}: {body}"
        );
        if *code == "invalid_config" {
            // Located as `check` prints it: file:line:col.
            let located = errors[0].as_str().unwrap();
            let path = proxy.config_file.display().to_string();
            assert!(
                located.starts_with(&format!("{path}:")),
                "{what}: {located}"
            );
        }
        let now = status(&proxy).await;
        assert_eq!(now["generation"], before["generation"], "{what}");
        assert_eq!(now["canary_bp"], before["canary_bp"], "{what}");
        assert_eq!(
            now["pools"],
            before["pools"].clone().tap_counts(&now),
            "{what}"
        );
    }
    assert_eq!(
        std::fs::read(proxy.dir.path().join("state/state.json")).unwrap(),
        state_before
    );
    let scrape = scrape(&proxy).await;
    assert_eq!(
        sample(
            &scrape,
            "switchyard_config_reloads_total",
            &[("result", "error")]
        ),
        Some(cases.len() as f64)
    );
    let (_, history) = admin(&proxy.socket(), "GET", "/v1/history?limit=20", None).await;
    let refused: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "reload")
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        refused,
        [
            "restart_required",
            "invalid_config",
            "invalid_config",
            "invalid_config",
            "invalid_config"
        ]
    );
}

/// Compares only the membership and health parts of a pools map (counters move with traffic).
trait TapCounts {
    fn tap_counts(self, now: &serde_json::Value) -> serde_json::Value;
}

impl TapCounts for serde_json::Value {
    fn tap_counts(mut self, now: &serde_json::Value) -> serde_json::Value {
        for pool in ["blue", "green"] {
            for k in [
                "inflight",
                "served",
                "requests",
                "rps",
                "error_ratio",
                "p50_ms",
                "p99_ms",
                "window_s",
            ] {
                self[pool][k] = now["pools"][pool][k].clone();
            }
        }
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_change_in_place_and_the_same_file_changes_nothing() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let hook = Hook::start(HookMode::Ok).await;
    let base = pools(&[blue.addr], &[green.addr], "");
    let proxy = Proxy::start(&base).await;
    let r = get(proxy.addr, "/").await;
    assert_eq!(r.pool(), Some("blue"));

    // The same file: nothing to do, nothing recorded.
    let (code, body) = reload(&proxy).await;
    assert_eq!(code, 200);
    assert_eq!(body["changed"], false, "{body}");
    let (_, history) = admin(&proxy.socket(), "GET", "/v1/history", None).await;
    assert!(history.as_array().unwrap().is_empty(), "{history}");

    // Response header off, a guard threshold and a webhook: all in place.
    let extra = format!(
        "[routing]\nresponse_header = false\n\n[guard]\nmax_error_ratio = 0.02\n\n\
         [[notify.webhook]]\nurl = \"{}\"\nformat = \"json\"\n",
        hook.url()
    );
    proxy.write_config(&pools(&[blue.addr], &[green.addr], &extra));
    let (code, body) = reload(&proxy).await;
    assert_eq!(code, 200, "{body}");
    let keys: Vec<&str> = body["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "guard.max_error_ratio",
            "routing.response_header",
            "notify.webhook"
        ]
    );
    let summary = body["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(
            "guard.max_error_ratio 0.05 → 0.02; routing.response_header true → false; \
             notify.webhook [] → ["
        ) && summary.contains(&hook.url()),
        "{summary}"
    );
    let r = get(proxy.addr, "/").await;
    assert_eq!(r.text(), "blue");
    assert_eq!(r.pool(), None, "the response header is off now");
    assert_eq!(status(&proxy).await["guard"]["max_error_ratio"], 0.02);
    // The new webhook hears about the reload that added it.
    wait_for("the reload event", READY_DEADLINE, || {
        let bodies = hook.bodies();
        async move {
            bodies
                .iter()
                .any(|b| b["event"] == "reload" && b["result"] == "ok")
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_backend_keeps_its_health_and_its_pooled_connection() {
    let b1 = Upstream::start("b1").await;
    let b2 = Upstream::start("b2").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&pools(&[b1.addr], &[green.addr], "")).await;
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..3 {
        assert_eq!(client.get("/").await.unwrap().text(), "b1");
    }
    let before: Vec<_> = b1.seen.lock().unwrap().iter().map(|s| s.peer).collect();
    assert!(before.windows(2).all(|w| w[0] == w[1]), "{before:?}");

    // A second backend for blue and a new read timeout, in place.
    let extra = "[upstream]\nread_timeout = \"7s\"\n";
    proxy.write_config(&pools(&[b1.addr, b2.addr], &[green.addr], extra));
    let (code, body) = reload(&proxy).await;
    assert_eq!(code, 200, "{body}");
    let st = status(&proxy).await;
    assert_eq!(st["pools"]["blue"]["backends"][0]["healthy"], true);
    wait_for("b2 to pass its check", READY_DEADLINE, || {
        let socket = proxy.socket();
        async move {
            let (_, st) = admin(&socket, "GET", "/v1/status", None).await;
            (st["pools"]["blue"]["backends"][1]["healthy"] == true).then_some(())
        }
    })
    .await;
    let mut by = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        *by.entry(client.get("/").await.unwrap().text()).or_default() += 1;
    }
    assert_eq!(by.get("b1"), Some(&10), "{by:?}");
    assert_eq!(by.get("b2"), Some(&10), "{by:?}");
    let after: Vec<_> = b1.seen.lock().unwrap().iter().map(|s| s.peer).collect();
    assert!(
        after.iter().all(|p| *p == before[0]),
        "b1's requests came on a new upstream connection after the reload: {after:?}"
    );
}
