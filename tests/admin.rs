//! The admin API against a real proxy: atomic flips under load, concurrent changes, every error
//! path, and the audit trail.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

fn colour(flips: u64) -> &'static str {
    if flips.is_multiple_of(2) {
        "blue"
    } else {
        "green"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flips_under_load_fail_nothing_and_apply_to_the_next_request() {
    let (_blue, _green, proxy) = two_pools().await;
    const WORKERS: usize = 6;
    const FLIPS: u64 = 50;
    // `started` = flips sent so far, `acked` = flips acknowledged; flip k makes colour(k) live.
    // Each worker reports in `seen[w]` the last flip after whose acknowledgement it completed a
    // request; the next flip is sent only once every worker has, so every flip is checked by
    // requests from every connection.
    let acked = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..WORKERS).map(|_| AtomicU64::new(0)).collect());
    let strict = Arc::new(AtomicUsize::new(0));

    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (acked, started, stop, seen, strict) = (
            acked.clone(),
            started.clone(),
            stop.clone(),
            seen.clone(),
            strict.clone(),
        );
        let addr = proxy.addr;
        workers.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            while !stop.load(Ordering::SeqCst) {
                let k = acked.load(Ordering::SeqCst);
                let r = client
                    .get("/")
                    .await
                    .expect("no request may fail during flips");
                assert_eq!(r.status, 200);
                let got = r.text();
                if started.load(Ordering::SeqCst) == k {
                    // Sent after flip k was acknowledged, answered before flip k+1 was sent:
                    // it must have been routed by flip k, exactly.
                    assert_eq!(
                        got,
                        colour(k),
                        "a request after flip {k}'s ack got the old colour"
                    );
                    seen[w].store(k, Ordering::SeqCst);
                    strict.fetch_add(1, Ordering::SeqCst);
                } else {
                    // Flip k+1 was in flight: either colour is right.
                    assert!(
                        got == colour(k) || got == colour(k + 1),
                        "got {got} around flip {k}"
                    );
                }
            }
        }));
    }
    for k in 1..=FLIPS {
        started.store(k, Ordering::SeqCst);
        let (status, answer) = admin(
            &proxy.socket(),
            "POST",
            "/v1/flip",
            Some(json!({"to": colour(k)})),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["primary"], colour(k));
        assert_eq!(answer["generation"], k);
        assert!(answer["applied_us"].as_u64().is_some());
        acked.store(k, Ordering::SeqCst);
        let seen = seen.clone();
        wait_for("every connection to see the flip", READY_DEADLINE, || {
            let all = seen.iter().all(|s| s.load(Ordering::SeqCst) >= k);
            async move { all.then_some(()) }
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("worker failed");
    }
    assert!(strict.load(Ordering::SeqCst) >= WORKERS * FLIPS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_serialise_and_the_last_acknowledged_wins() {
    let (_blue, _green, proxy) = two_pools().await;
    let socket = proxy.socket();
    let mut calls = Vec::new();
    for i in 0..100u32 {
        let socket = socket.clone();
        calls.push(tokio::spawn(async move {
            let (path, body) = match i % 3 {
                0 => (
                    "/v1/flip",
                    json!({"to": "green", "reason": format!("call {i}")}),
                ),
                1 => (
                    "/v1/flip",
                    json!({"to": "blue", "reason": format!("call {i}")}),
                ),
                _ => ("/v1/canary", json!({"pool": "green", "bp": i})),
            };
            admin(&socket, "POST", path, Some(body)).await
        }));
    }
    let mut acked: Vec<Value> = Vec::new();
    for c in calls {
        let (status, answer) = c.await.unwrap();
        match status {
            200 => acked.push(answer),
            // A canary call can find green primary at that moment: refused, never half-applied.
            409 => assert_eq!(answer["code"], "pool_is_primary"),
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    let changes: Vec<&Value> = acked.iter().filter(|a| a["changed"] == true).collect();
    let last = changes
        .iter()
        .max_by_key(|a| a["generation"].as_u64().unwrap())
        .expect("some change was applied");
    // Generations are dense: every applied change got its own.
    let mut gens: Vec<u64> = changes
        .iter()
        .map(|a| a["generation"].as_u64().unwrap())
        .collect();
    gens.sort();
    assert_eq!(gens, (1..=changes.len() as u64).collect::<Vec<_>>());

    let (_, status) = admin(&socket, "GET", "/v1/status", None).await;
    for field in ["primary", "canary_bp", "generation"] {
        assert_eq!(status[field], last[field], "{field}");
    }
    let file: Value =
        serde_json::from_slice(&std::fs::read(proxy.dir.path().join("state/state.json")).unwrap())
            .expect("state.json parses");
    for field in ["primary", "canary_bp", "generation"] {
        assert_eq!(file["route"][field], last[field], "state.json {field}");
    }
    let history = std::fs::read_to_string(proxy.dir.path().join("state/history.jsonl")).unwrap();
    assert_eq!(history.lines().count(), changes.len());
    for line in history.lines() {
        serde_json::from_str::<Value>(line).expect("every history line parses");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_path_answers_its_code_and_changes_nothing() {
    let (_blue, _green, proxy) = two_pools().await;
    let socket = proxy.socket();
    let (s, _) = admin(&socket, "POST", "/v1/flip", Some(json!({"to": "green"}))).await;
    assert_eq!(s, 200);
    let state_path = proxy.dir.path().join("state/state.json");
    let history_path = proxy.dir.path().join("state/history.jsonl");
    let before_file = std::fs::read(&state_path).unwrap();
    let before_history = std::fs::read(&history_path).unwrap();
    let before = proxy.switchboard.state();

    let big = vec![b' '; 64 * 1024 + 1];
    /// method, path, body, expected status, expected code
    type Case = (
        &'static str,
        &'static str,
        Option<Vec<u8>>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        ("GET", "/v1/flip", None, 405, "method_not_allowed"),
        ("POST", "/v1/status", None, 405, "method_not_allowed"),
        ("POST", "/v1/flip", Some(big), 413, "payload_too_large"),
        (
            "POST",
            "/v1/flip",
            Some(b"{\"to\": ".to_vec()),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/flip",
            Some(b"{\"too\": \"blue\"}".to_vec()),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/flip",
            Some(b"{\"to\": \"purple\"}".to_vec()),
            404,
            "unknown_pool",
        ),
        (
            "POST",
            "/v1/flip",
            Some(b"{\"to\": \"blue\", \"if_generation\": 0}".to_vec()),
            409,
            "generation_mismatch",
        ),
        (
            "POST",
            "/v1/canary",
            Some(b"{\"pool\": \"green\", \"bp\": 5}".to_vec()),
            409,
            "pool_is_primary",
        ),
        (
            "POST",
            "/v1/canary",
            Some(b"{\"pool\": \"blue\", \"percent\": 0.001}".to_vec()),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/canary",
            Some(b"{\"pool\": \"blue\", \"bp\": 20000}".to_vec()),
            400,
            "bad_request",
        ),
        ("POST", "/v1/promote", None, 409, "no_canary"),
        ("GET", "/v1/nope", None, 404, "not_found"),
        ("GET", "/v1/history?limit=abc", None, 400, "bad_request"),
    ];
    for (method, path, body, want_status, want_code) in cases {
        let (status, answer) = admin_raw(&socket, method, path, body, &[]).await;
        assert_eq!(
            (status, answer["code"].as_str().unwrap_or("")),
            (want_status, want_code),
            "{method} {path}: {answer}"
        );
        assert!(
            answer["error"].as_str().is_some_and(|e| e.len() > 10),
            "errors carry a sentence: {answer}"
        );
        assert_eq!(
            proxy.switchboard.state(),
            before,
            "{method} {path} changed the state"
        );
    }
    assert_eq!(std::fs::read(&state_path).unwrap(), before_file);
    assert_eq!(std::fs::read(&history_path).unwrap(), before_history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_who_and_why_newest_first() {
    let (_blue, _green, proxy) = two_pools().await;
    let socket = proxy.socket();
    let (s, _) = admin_raw(
        &socket,
        "POST",
        "/v1/flip",
        Some(br#"{"to": "green", "reason": "release 2026.11.27"}"#.to_vec()),
        &[("x-switchyard-actor", "alice")],
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = admin(
        &socket,
        "POST",
        "/v1/canary",
        Some(json!({"pool": "blue", "percent": 0.25})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = admin(
        &socket,
        "POST",
        "/v1/rollback",
        Some(json!({"reason": "oops"})),
    )
    .await;
    assert_eq!(s, 200);

    let (s, h) = admin(&socket, "GET", "/v1/history?limit=2", None).await;
    assert_eq!(s, 200);
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0]["action"], "rollback");
    assert_eq!(h[0]["reason"], "oops");
    assert_eq!(h[0]["from"], "green + blue 0.25%");
    assert_eq!(h[0]["to"], "green");
    assert_eq!(h[1]["action"], "canary");

    let (_, all) = admin(&socket, "GET", "/v1/history", None).await;
    let first = &all.as_array().unwrap()[2];
    let uid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    assert_eq!(first["actor"], format!("uid:{} (alice)", uid.unwrap()));
    assert_eq!(first["reason"], "release 2026.11.27");
    assert_eq!(first["generation"], 1);
    for key in [
        "ts",
        "generation",
        "action",
        "from",
        "to",
        "actor",
        "reason",
        "result",
    ] {
        assert!(first.get(key).is_some(), "history entries have {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_blue, _green, proxy) = two_pools().await;
    let mode = std::fs::metadata(proxy.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (s, h) = admin(&proxy.socket(), "GET", "/v1/health", None).await;
    assert_eq!((s, h), (200, json!({"ok": true})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_admin_needs_the_token() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let tokdir = tempfile::tempdir().unwrap();
    let tokfile = tokdir.path().join("admin.token");
    std::fs::write(&tokfile, "deployer:s3cret-token-value\n").unwrap();
    let port = free_port();
    let toml = format!(
        "{}\n[admin]\nsocket = \"{}/admin.sock\"\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
        pools_toml(&[blue.addr], &[green.addr]),
        tokdir.path().display(),
        tokfile.display()
    );
    // The harness's own [admin] section would clash; start without it.
    let proxy = Proxy::start_raw(&toml).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let call = |headers: Vec<(&'static str, &'static str)>| async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        exchange(
            stream,
            "POST",
            "/v1/flip",
            Some(br#"{"to": "green"}"#.to_vec()),
            &headers,
        )
        .await
    };
    let (s, a) = call(vec![]).await;
    assert_eq!((s, a["code"].as_str()), (401, Some("unauthorized")));
    let (s, _) = call(vec![("authorization", "Bearer wrong")]).await;
    assert_eq!(s, 401);
    let (s, _) = call(vec![("authorization", "Bearer s3cret-token-valu")]).await;
    assert_eq!(s, 401);
    assert_eq!(proxy.switchboard.state().generation, 0);
    let (s, a) = call(vec![("authorization", "Bearer s3cret-token-value")]).await;
    assert_eq!((s, a["primary"].as_str()), (200, Some("green")));
    let (_, h) = admin(&proxy.socket(), "GET", "/v1/history", None).await;
    assert_eq!(h[0]["actor"], "token:deployer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_saved_is_undone_and_answers_500() {
    let (_blue, _green, proxy) = two_pools().await;
    // A directory where the temp file must go makes the write fail.
    let blocker = proxy.dir.path().join("state/state.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let before = proxy.switchboard.state();
    let (s, a) = admin(
        &proxy.socket(),
        "POST",
        "/v1/flip",
        Some(json!({"to": "green"})),
    )
    .await;
    assert_eq!((s, a["code"].as_str()), (500, Some("internal")), "{a}");
    assert!(a["error"].as_str().unwrap().contains("not applied"));
    assert_eq!(proxy.switchboard.state(), before);
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
    std::fs::remove_dir(&blocker).unwrap();
    let (s, a) = admin(
        &proxy.socket(),
        "POST",
        "/v1/flip",
        Some(json!({"to": "green"})),
    )
    .await;
    assert_eq!(
        (s, a["generation"].as_u64()),
        (200, Some(before.generation + 1))
    );
}
