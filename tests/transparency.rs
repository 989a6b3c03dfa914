//! Deploy impact in history and the delivery report, end to end: real upstreams, real requests,
//! the admin API, `ctl`, a webhook receiver and `/metrics`.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn ctl(socket: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run ctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn history(proxy: &Proxy) -> Vec<Value> {
    let (code, h) = admin(&proxy.socket(), "GET", "/v1/history?limit=100", None).await;
    assert_eq!(code, 200, "{h}");
    h.as_array().unwrap().clone()
}

async fn send(proxy: &Proxy, n: usize, expect: &str) {
    let mut c = Client::connect(proxy.addr).await;
    for _ in 0..n {
        let r = c.get("/").await.expect("request");
        assert_eq!(r.pool(), Some(expect), "status {}", r.status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flip_records_its_impact_exactly_and_announces_it() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let hook = Hook::start(HookMode::Ok).await;
    // The guard judges nothing here (min_requests is out of reach): only the figures matter.
    let toml = format!(
        "{}\n[routing]\nsticky = \"none\"\n\
         [guard]\nwindow = \"5s\"\nmin_requests = 100000\n\
         [[notify.webhook]]\nurl = \"{}\"\nformat = \"slack\"\nevents = [\"impact\"]\n",
        pools_toml(&[blue.addr], &[green.addr]),
        hook.url()
    );
    let proxy = Proxy::start(&toml).await;

    // Before the flip: 40 requests to blue, every 4th answered 500 → 10 errors.
    blue.fail_every(4);
    send(&proxy, 40, "blue").await;
    let (code, reply) = admin(
        &proxy.socket(),
        "POST",
        "/v1/flip",
        Some(json!({"to": "green", "reason": "release 42"})),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    // After it: 20 requests to green, 100 ms each, every 5th answered 500 → 4 errors.
    green.delay(100);
    green.fail_every(5);
    send(&proxy, 20, "green").await;

    // Right away the entry carries the figures before, the ones after are pending.
    let h = history(&proxy).await;
    let i = &h[0]["impact"];
    assert_eq!(i["pending"], true, "{i}");
    assert_eq!(i["lost"]["before"]["requests"], 40, "{i}");
    assert_eq!(i["gained"]["after"], Value::Null, "{i}");

    // Once the 5 s after the flip have passed, the guard tick settles them.
    let socket = proxy.socket();
    let settled = wait_for("the impact to be settled", Duration::from_secs(15), || {
        let socket = socket.clone();
        async move {
            let (_, h) = admin(&socket, "GET", "/v1/history?limit=1", None).await;
            let i = h[0]["impact"].clone();
            (i["pending"] != true && !i.is_null()).then_some(i)
        }
    })
    .await;
    assert_eq!(settled["window_s"], 5);
    let side = |which: &str, when: &str| {
        let f = &settled[which][when];
        (
            f["requests"].as_u64().unwrap(),
            f["errors"].as_u64().unwrap(),
        )
    };
    assert_eq!(settled["gained"]["pool"], "green");
    assert_eq!(settled["lost"]["pool"], "blue");
    assert_eq!(side("lost", "before"), (40, 10), "{settled}");
    assert_eq!(side("lost", "after"), (0, 0), "{settled}");
    assert_eq!(side("gained", "before"), (0, 0), "{settled}");
    assert_eq!(side("gained", "after"), (20, 4), "{settled}");
    assert_eq!(settled["lost"]["before"]["error_ratio"], 0.25);
    assert_eq!(settled["gained"]["after"]["error_ratio"], 0.2);
    // Green took 100 ms or more per request, blue answered at once: the percentiles say so.
    let p50_green = settled["gained"]["after"]["p50_ms"].as_f64().unwrap();
    let p50_blue = settled["lost"]["before"]["p50_ms"].as_f64().unwrap();
    assert!(p50_green >= 100.0, "green p50 {p50_green} ms");
    assert!(
        p50_blue < p50_green,
        "blue p50 {p50_blue} ms, green {p50_green} ms"
    );
    assert_eq!(settled["lost"]["after"]["p99_ms"], Value::Null);

    // The follow-up message to the chat hook.
    let text = wait_for("the impact message", Duration::from_secs(10), || {
        let bodies = hook.bodies();
        async move {
            bodies
                .first()
                .map(|b| b["text"].as_str().unwrap().to_string())
        }
    })
    .await;
    assert!(
        text.contains("flip blue → green ('release 42'): green after 5s: 20% errors"),
        "{text}"
    );
    assert!(
        text.contains("over 20 requests (blue before: 25% errors"),
        "{text}"
    );
    assert_eq!(hook.bodies().len(), 1, "one impact message per change");

    // `ctl history`: one line for the change, with its impact.
    let (ok, out) = ctl(&proxy.socket(), &["history", "-n", "1"]);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].contains("flip      blue -> green"), "{out}");
    assert!(
        lines[0].contains("| impact: green after 5s: 20% errors"),
        "{out}"
    );
    // And from a restarted process the settled figures are still there (impact.jsonl).
    let lines = std::fs::read_to_string(proxy.dir.path().join("state/impact.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 1);
}

fn entry(ts: SystemTime, gen: u64, action: &str, from: &str, to: &str, actor: &str) -> Value {
    let mut e = json!({
        "ts": humantime::format_rfc3339_millis(ts).to_string(),
        "generation": gen,
        "action": action,
        "from": from,
        "to": to,
        "actor": actor,
        "reason": null,
        "result": "ok",
    });
    if action == "rollback" {
        e["trigger"] = json!(if actor == "guard" { "guard" } else { "manual" });
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_deploys_failures_and_restores_from_history() {
    let (_blue, _green, proxy) = two_pools().await;
    // A known month: 4 deploys in the last 30 days, 2 of them rolled back within the hour
    // (one by the guard after 6 minutes, one by hand after 30), deploys 12 h apart.
    let now = SystemTime::now();
    let h = |hours: f64| now - Duration::from_secs_f64(hours * 3600.0);
    let lines = [
        entry(h(24.0 * 45.0), 1, "flip", "blue", "green", "uid:1000"), // before the period
        entry(h(48.0), 2, "flip", "green", "blue", "uid:1000"),
        entry(h(47.9), 3, "rollback", "blue", "green", "guard"),
        entry(h(36.0), 4, "flip", "green", "blue", "uid:1000"),
        entry(h(24.0), 5, "canary", "blue", "blue + green 5%", "uid:1000"),
        entry(
            h(23.5),
            6,
            "rollback",
            "blue + green 5%",
            "blue",
            "uid:1000",
        ),
        entry(h(12.0), 7, "rollout", "blue", "blue + green 1%", "uid:1000"),
        entry(
            h(11.0),
            8,
            "rollout",
            "blue + green 1%",
            "blue + green 50%",
            "rollout",
        ),
        entry(
            h(10.0),
            9,
            "promote",
            "blue + green 50%",
            "green",
            "rollout",
        ),
        entry(h(9.0), 10, "flip", "green", "blue", "uid:1000"),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(proxy.dir.path().join("state/history.jsonl"), text).unwrap();

    let (code, r) = admin(&proxy.socket(), "GET", "/v1/report?since=30d", None).await;
    assert_eq!(code, 200, "{r}");
    // Deploys: gens 2, 4, 5, 7 and 10 (a flip back to blue is a deploy of blue).
    assert_eq!(r["deploys"], 5, "{r}");
    assert_eq!(r["failed_deploys"], 2, "{r}");
    assert_eq!(r["change_failure_rate"], 0.4, "{r}");
    assert_eq!(r["rollbacks"], json!({"manual": 1, "guard": 1}), "{r}");
    let ttr = &r["time_to_restore_s"];
    assert_eq!(ttr["count"], 2);
    assert!(
        (ttr["max"].as_f64().unwrap() - 1800.0).abs() < 0.01,
        "{ttr}"
    );
    assert!(
        (ttr["median"].as_f64().unwrap() - 1080.0).abs() < 0.01,
        "{ttr}"
    );
    let lead = &r["lead_time_s"];
    // 48→36, 36→24, 24→12, 12→9 hours.
    assert_eq!(lead["count"], 4);
    assert!(
        (lead["max"].as_f64().unwrap() - 12.0 * 3600.0).abs() < 0.01,
        "{lead}"
    );
    assert!(
        (lead["median"].as_f64().unwrap() - 12.0 * 3600.0).abs() < 0.01,
        "{lead}"
    );
    assert!((r["deploys_per_day"].as_f64().unwrap() - 5.0 / 30.0).abs() < 1e-6);

    // A shorter period: only what happened in the last day (gens 6..10: deploys 7 and 10).
    let (_, r1) = admin(&proxy.socket(), "GET", "/v1/report?since=1d", None).await;
    assert_eq!(
        (r1["deploys"].as_u64(), r1["failed_deploys"].as_u64()),
        (Some(2), Some(0))
    );

    // Bad input is refused with what to write instead.
    let (code, e) = admin(&proxy.socket(), "GET", "/v1/report?since=soon", None).await;
    assert_eq!(code, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("since=30d"), "{e}");

    // ctl report prints the same figures.
    let (ok, out) = ctl(&proxy.socket(), &["report", "--since", "30d"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("deploys:              5 (0.17 per day)"),
        "{out}"
    );
    assert!(
        out.contains("change failure rate:  40.0% (2 of 5 deploys rolled back within 1h)"),
        "{out}"
    );
    assert!(
        out.contains("rollbacks:            1 by hand, 1 by the guard"),
        "{out}"
    );
    assert!(
        out.contains("time to restore:      median 18m, mean 18m, max 30m (over 2)"),
        "{out}"
    );
    let (ok, out) = ctl(&proxy.socket(), &["report", "--since", "whenever"]);
    assert!(
        !ok && out.contains("--since `whenever` is not a duration"),
        "{out}"
    );

    // A change refreshes the gauges on /metrics: now 6 deploys (this flip is one).
    proxy.flip("green").await;
    let m = scrape(&proxy).await;
    let deploys_per_day = sample(&m, "switchyard_report_deploys_per_day", &[]).unwrap();
    assert!(
        (deploys_per_day - 6.0 / 30.0).abs() < 1e-6,
        "{deploys_per_day}"
    );
    assert_eq!(
        sample(&m, "switchyard_report_change_failure_ratio", &[]),
        Some(2.0 / 6.0)
    );
    assert_eq!(
        sample(&m, "switchyard_report_time_to_restore_seconds", &[]).map(|v| v.round()),
        Some(1080.0)
    );
}
