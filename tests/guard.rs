//! The guard, progressive rollouts and notifications, against real upstreams and a real local
//! webhook receiver.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A guard quick enough for tests: 3 s window, judged from 50 requests, 5 % errors.
const GUARD: &str = "[guard]\nwindow = \"3s\"\nmin_requests = 50\nmax_error_ratio = 0.05\n\
                     watch_after_flip = \"30s\"\nmin_duration = \"0s\"\n";

/// Two pools, a per-request split (`sticky = "none"`) and the test guard judging from
/// `min_requests`, plus `extra` TOML for `[guard]`.
async fn guarded(min_requests: u64, extra: &str) -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let toml = format!(
        "{}\n[routing]\nsticky = \"none\"\n{}{extra}",
        pools_toml(&[blue.addr], &[green.addr]),
        GUARD.replace(
            "min_requests = 50",
            &format!("min_requests = {min_requests}")
        )
    );
    let proxy = Proxy::start(&toml).await;
    (blue, green, proxy)
}

/// Keeps requests flowing through the proxy until dropped; counts them.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            while !s.load(Ordering::SeqCst) {
                let r = client.get("/").await.expect("no request fails");
                assert!(r.status == 200 || r.status == 500, "{}", r.status);
                n.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Load {
            stop,
            sent,
            task: Some(task),
        }
    }

    async fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.take().unwrap().await.expect("load task");
        self.sent.load(Ordering::SeqCst)
    }
}

async fn status(proxy: &Proxy) -> Value {
    admin(&proxy.socket(), "GET", "/v1/status", None).await.1
}

async fn post(proxy: &Proxy, path: &str, body: Value) -> (u16, Value) {
    admin(&proxy.socket(), "POST", path, Some(body)).await
}

async fn history(proxy: &Proxy) -> Vec<Value> {
    let (_, h) = admin(&proxy.socket(), "GET", "/v1/history?limit=100", None).await;
    h.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_is_rolled_back_and_a_healthy_one_is_not() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let json_hook = Hook::start(HookMode::Ok).await;
    let slack_hook = Hook::start(HookMode::Ok).await;
    let toml = format!(
        "{}\n[routing]\nsticky = \"none\"\n{GUARD}\n\
         [[notify.webhook]]\nurl = \"{}\"\nformat = \"json\"\n\
         [[notify.webhook]]\nurl = \"{}\"\nformat = \"slack\"\nevents = [\"guard\"]\n",
        pools_toml(&[blue.addr], &[green.addr]),
        json_hook.url(),
        slack_hook.url()
    );
    let proxy = Proxy::start(&toml).await;

    // A healthy canary at 50 %: well past min_requests, no rollback.
    let (s, _) = post(
        &proxy,
        "/v1/canary",
        json!({"pool": "green", "percent": 50, "reason": "try 2026.11.27"}),
    )
    .await;
    assert_eq!(s, 200);
    let load = Load::start(proxy.addr);
    let g = green.hits.clone();
    wait_for("150 healthy canary requests", READY_DEADLINE, || {
        let n = g.load(Ordering::SeqCst);
        async move { (n >= 150).then_some(()) }
    })
    .await;
    let st = status(&proxy).await;
    assert_eq!(
        st["canary_bp"], 5000,
        "a healthy canary is left alone: {st}"
    );
    assert_eq!(st["guard"]["judgement"]["verdict"], "healthy", "{st}");

    // Now green fails 20 % of its requests: rolled back within one window once it has enough.
    green.fail_every(5);
    let failing_from = Instant::now();
    let sb = proxy.switchboard.clone();
    wait_for("the guard to roll the canary back", READY_DEADLINE, || {
        let bp = sb.state().canary_bp;
        async move { (bp == 0).then_some(()) }
    })
    .await;
    let took = failing_from.elapsed();
    load.stop().await;
    // The window is 3 s; the old healthy requests dilute the ratio, so allow the window plus
    // the time to gather enough failures.
    assert!(took < Duration::from_secs(5), "rollback took {took:?}");
    let st = status(&proxy).await;
    assert_eq!(
        (st["primary"].as_str(), st["canary_bp"].as_u64()),
        (Some("blue"), Some(0))
    );

    let h = history(&proxy).await;
    let rb = &h[0];
    assert_eq!(rb["action"], "rollback");
    assert_eq!(rb["trigger"], "guard");
    assert_eq!(rb["actor"], "guard");
    assert_eq!(
        (rb["from"].as_str(), rb["to"].as_str()),
        (Some("blue + green 50%"), Some("blue"))
    );
    let d = &rb["detail"];
    assert_eq!(d["pool"], "green");
    assert!(d["error_ratio"].as_f64().unwrap() > 0.05, "{d}");
    assert!(d["requests"].as_u64().unwrap() >= 50);
    assert_eq!(d["thresholds"]["max_error_ratio"], 0.05);
    assert_eq!(d["other"]["pool"], "blue");
    assert_eq!(
        d["other"]["error_ratio"], 0.0,
        "the old colour's figures are shown too"
    );
    assert_eq!(
        h.iter().filter(|e| e["trigger"] == "guard").count(),
        1,
        "one rollback only"
    );

    let m = scrape(&proxy).await;
    assert_eq!(
        sample(&m, "switchyard_rollbacks_total", &[("trigger", "guard")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "switchyard_rollbacks_total", &[("trigger", "manual")]),
        Some(0.0)
    );

    // Both hooks heard about it: the JSON one gets every event, the Slack one only the guard's.
    let jb = json_hook.bodies.clone();
    wait_for("the json webhook", READY_DEADLINE, || {
        let n = jb.lock().unwrap().len();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let events = json_hook.bodies();
    assert_eq!(events[0]["event"], "canary");
    assert_eq!(events[0]["reason"], "try 2026.11.27");
    assert_eq!(events[1]["event"], "guard");
    assert_eq!(events[1]["detail"]["pool"], "green");
    let sb2 = slack_hook.bodies.clone();
    wait_for("the slack webhook", READY_DEADLINE, || {
        let n = sb2.lock().unwrap().len();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let text = slack_hook.bodies()[0]["text"].as_str().unwrap().to_string();
    assert!(
        text.contains("guard rolled back") && text.contains("blue"),
        "{text}"
    );
    assert_eq!(
        slack_hook.bodies().len(),
        1,
        "the slack hook asked only for guard events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_walks_its_steps_and_promotes() {
    let (_blue, _green, proxy) = guarded(5, "").await;
    let load = Load::start(proxy.addr);
    let (s, a) = post(
        &proxy,
        "/v1/rollout",
        json!({"to": "green", "steps": [10, 50, 100], "interval": "300ms", "reason": "release 42"}),
    )
    .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["canary_bp"], 1000);
    assert_eq!(a["rollout"]["step"], 1);

    // Manual changes are refused while it runs.
    let (s, e) = post(&proxy, "/v1/flip", json!({"to": "green"})).await;
    assert_eq!((s, e["code"].as_str()), (409, Some("rollout_running")));
    let (s, e) = post(
        &proxy,
        "/v1/rollout",
        json!({"to": "green", "steps": [1], "interval": "1s"}),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("rollout_running")));

    let sb = proxy.switchboard.clone();
    wait_for("the rollout to promote green", READY_DEADLINE, || {
        let st = sb.state();
        async move { (st.primary == 1 && st.canary_bp == 0).then_some(()) }
    })
    .await;
    load.stop().await;
    let st = status(&proxy).await;
    assert!(st["rollout"].is_null());
    let h = history(&proxy).await;
    let steps: Vec<(String, String)> = h
        .iter()
        .rev()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("rollout".to_string(), "blue + green 10%".to_string()),
            ("rollout".into(), "blue + green 50%".into()),
            ("rollout".into(), "blue + green 100%".into()),
            ("promote".into(), "green".into()),
        ]
    );
    assert_eq!(h[0]["actor"], "rollout");
    assert_eq!(get(proxy.addr, "/").await.text(), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_breach_at_step_3_rolls_back_and_stops_the_rollout() {
    let (_blue, green, proxy) = guarded(20, "").await;
    let (s, _) = post(
        &proxy,
        "/v1/rollout",
        json!({"to": "green", "steps": [10, 25, 50, 100], "interval": "700ms"}),
    )
    .await;
    assert_eq!(s, 200);
    let load = Load::start(proxy.addr);
    let socket = proxy.socket();
    wait_for("step 3", READY_DEADLINE, || {
        let socket = socket.clone();
        async move {
            let (_, st) = admin(&socket, "GET", "/v1/status", None).await;
            (st["rollout"]["step"] == 3).then_some(())
        }
    })
    .await;
    green.fail_every(2);
    let sb = proxy.switchboard.clone();
    wait_for("the guard to stop the rollout", READY_DEADLINE, || {
        let bp = sb.state().canary_bp;
        async move { (bp == 0).then_some(()) }
    })
    .await;
    load.stop().await;
    let st = status(&proxy).await;
    assert!(st["rollout"].is_null(), "the rollout stopped: {st}");
    assert_eq!(st["primary"], "blue");
    let h = history(&proxy).await;
    assert_eq!(h[0]["trigger"], "guard");
    assert_eq!(h[0]["from"], "blue + green 50%");
    assert_eq!(h[0]["detail"]["rollout"], "rolled back at step 3 of 4");
    // And it does not come back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(proxy.switchboard.state().canary_bp, 0);
    assert_eq!(proxy.switchboard.state().primary, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_step_and_abort_returns_to_zero() {
    let (_blue, _green, proxy) = guarded(5, "").await;
    let (s, _) = post(
        &proxy,
        "/v1/rollout",
        json!({"to": "green", "steps": [5, 50], "interval": "600ms"}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, a) = post(
        &proxy,
        "/v1/rollout/pause",
        json!({"reason": "looking at a graph"}),
    )
    .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["rollout"]["paused"], true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = status(&proxy).await;
    assert_eq!(
        (st["rollout"]["step"].as_u64(), st["canary_bp"].as_u64()),
        (Some(1), Some(500)),
        "paused: {st}"
    );

    let (s, _) = post(&proxy, "/v1/rollout/resume", json!({})).await;
    assert_eq!(s, 200);
    // A step moves on only once the guard has seen it healthy: give it traffic.
    let load = Load::start(proxy.addr);
    let socket = proxy.socket();
    wait_for("step 2 after resuming", READY_DEADLINE, || {
        let socket = socket.clone();
        async move {
            let (_, st) = admin(&socket, "GET", "/v1/status", None).await;
            (st["rollout"]["step"] == 2).then_some(())
        }
    })
    .await;
    load.stop().await;
    let (s, a) = post(&proxy, "/v1/rollout/abort", json!({"reason": "not today"})).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(
        (a["canary_bp"].as_u64(), a["primary"].as_str()),
        (Some(0), Some("blue"))
    );
    assert!(a["rollout"].is_null());
    let (s, e) = post(&proxy, "/v1/rollout/abort", json!({})).await;
    assert_eq!((s, e["code"].as_str()), (409, Some("no_rollout")));
    let h = history(&proxy).await;
    assert_eq!(h[0]["detail"]["step"], "aborted at step 2 of 2");
    assert_eq!(h[0]["reason"], "not today");
    assert!(h
        .iter()
        .any(|e| e["detail"]["step"] == "paused at step 1 of 2"));
    // Manual changes work again.
    let (s, _) = post(&proxy, "/v1/flip", json!({"to": "green"})).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_webhook_never_delays_a_change_and_is_counted() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let hang = Hook::start(HookMode::Hang).await;
    let fail = Hook::start(HookMode::Fail500).await;
    let toml = format!(
        "{}\n[[notify.webhook]]\nurl = \"{}\"\ntimeout = \"300ms\"\n\
         [[notify.webhook]]\nurl = \"{}\"\nformat = \"json\"\n",
        pools_toml(&[blue.addr], &[green.addr]),
        hang.url(),
        fail.url()
    );
    let proxy = Proxy::start(&toml).await;
    for to in ["green", "blue", "green"] {
        let start = Instant::now();
        let (s, a) = post(&proxy, "/v1/flip", json!({"to": to})).await;
        assert_eq!(s, 200);
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "flip took {:?}",
            start.elapsed()
        );
        assert!(a["applied_us"].as_u64().unwrap() < 100_000);
    }
    // 3 events × 2 hooks, each tried 3 times then counted: 6 failures.
    let addr = proxy.config.metrics.listen.unwrap();
    wait_for(
        "6 notification failures",
        Duration::from_secs(30),
        || async move {
            let text = get(addr, "/metrics").await.text();
            text.lines()
                .any(|l| l == "switchyard_notify_failures_total 6")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        fail.attempts.load(Ordering::SeqCst),
        9,
        "3 attempts per event"
    );
    assert_eq!(hang.attempts.load(Ordering::SeqCst), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_without_traffic_holds_its_step() {
    let (_blue, _green, proxy) = guarded(10, "").await;
    let (s, _) = post(
        &proxy,
        "/v1/rollout",
        json!({"to": "green", "steps": [20, 100], "interval": "200ms"}),
    )
    .await;
    assert_eq!(s, 200);
    // Well past the interval, with no traffic: no evidence, no next step.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let st = status(&proxy).await;
    assert_eq!(
        (st["rollout"]["step"].as_u64(), st["canary_bp"].as_u64()),
        (Some(1), Some(2000)),
        "{st}"
    );
    let why = st["rollout"]["holding"].as_str().unwrap_or("").to_string();
    assert!(why.contains("0 of 10 requests"), "{st}");
    // Traffic arrives: the guard judges the step healthy and the rollout moves on.
    let load = Load::start(proxy.addr);
    let sb = proxy.switchboard.clone();
    wait_for(
        "the rollout to finish once traffic flows",
        READY_DEADLINE,
        || {
            let st = sb.state();
            async move { (st.primary == 1).then_some(()) }
        },
    )
    .await;
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_canary_breaches_max_p99() {
    let (_blue, green, proxy) = two_pools_with(&format!(
        "[routing]\nsticky = \"none\"\n{}max_p99 = \"100ms\"\n",
        GUARD.replace("min_requests = 50", "min_requests = 10")
    ))
    .await;
    green.delay(150);
    let (s, _) = post(
        &proxy,
        "/v1/canary",
        json!({"pool": "green", "percent": 50}),
    )
    .await;
    assert_eq!(s, 200);
    let load = Load::start(proxy.addr);
    let sb = proxy.switchboard.clone();
    wait_for(
        "the guard to roll back the slow canary",
        READY_DEADLINE,
        || {
            let bp = sb.state().canary_bp;
            async move { (bp == 0).then_some(()) }
        },
    )
    .await;
    load.stop().await;
    // The switchboard shows the rollback before its history line is written (the change lock is
    // still held); status takes that lock, so after it the line is there.
    let _ = status(&proxy).await;
    let h = history(&proxy).await;
    assert_eq!(h[0]["trigger"], "guard");
    let reason = h[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("p99 ") && reason.contains("> 100 ms"),
        "{reason}"
    );
    assert!(h[0]["detail"]["p99_ms"].as_f64().unwrap() >= 150.0);
}
