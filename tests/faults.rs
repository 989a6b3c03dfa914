//! Fault injection against real upstreams: the guard rolls a faulted canary back, shares are
//! exact, the live pool is refused without force, and a fault set expires on time and survives a
//! restart of the real binary until then.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

async fn status(proxy: &Proxy) -> Value {
    admin(&proxy.socket(), "GET", "/v1/status", None).await.1
}

async fn history(socket: &Path) -> Vec<Value> {
    let (_, h) = admin(socket, "GET", "/v1/history?limit=100", None).await;
    h.as_array().unwrap().clone()
}

/// Keeps requests flowing through the proxy until stopped; counts answers by status.
struct Load {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            while !s.load(Ordering::SeqCst) {
                let r = client.get("/").await.expect("no request fails");
                assert!(r.status == 200 || r.status == 503, "{}", r.status);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Load {
            stop,
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.take().unwrap().await.expect("load task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_20_percent_abort_on_a_50_percent_canary_is_rolled_back_by_the_guard() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let hook = Hook::start(HookMode::Ok).await;
    let toml = format!(
        "{}\n[routing]\nsticky = \"none\"\n\
         [guard]\nwindow = \"3s\"\nmin_requests = 50\nmax_error_ratio = 0.05\n\
         min_duration = \"0s\"\n\
         [[notify.webhook]]\nurl = \"{}\"\nformat = \"json\"\n",
        pools_toml(&[blue.addr], &[green.addr]),
        hook.url()
    );
    let proxy = Proxy::start(&toml).await;
    let socket = proxy.socket();

    let (code, _) = admin(
        &socket,
        "POST",
        "/v1/canary",
        Some(json!({"pool": "green", "percent": 50})),
    )
    .await;
    assert_eq!(code, 200);
    let (code, st) = admin(
        &socket,
        "POST",
        "/v1/faults",
        Some(
            json!({"pool": "green", "abort_percent": 20, "status": 503, "for": "10m",
                    "reason": "game day: does the guard catch it?"}),
        ),
    )
    .await;
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["faults"]["pool"], "green", "{st}");
    assert_eq!(st["faults"]["abort_percent"], 20.0);

    let load = Load::start(proxy.addr);
    let st = wait_for("the guard to roll the canary back", READY_DEADLINE, || {
        let socket = socket.clone();
        async move {
            let (_, st) = admin(&socket, "GET", "/v1/status", None).await;
            (st["canary_bp"] == 0).then_some(st)
        }
    })
    .await;
    load.stop().await;
    assert_eq!(st["primary"], "blue");
    assert_eq!(st["guard"]["judgement"]["verdict"], "breach", "{st}");

    let h = history(&socket).await;
    let actions: Vec<(&str, Option<&str>)> = h
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["trigger"].as_str()))
        .collect();
    // Newest first: the guard's rollback, the fault set, the canary.
    assert_eq!(
        actions,
        [
            ("rollback", Some("guard")),
            ("faults", None),
            ("canary", None)
        ],
        "{h:?}"
    );
    let fault = &h[1];
    assert_eq!(fault["reason"], "game day: does the guard catch it?");
    assert!(
        fault["detail"]["summary"]
            .as_str()
            .unwrap()
            .contains("green: abort 20% with 503"),
        "{fault}"
    );
    assert!(fault["actor"].as_str().unwrap().starts_with("uid:"));

    let scrape = scrape(&proxy).await;
    let aborted = sample(
        &scrape,
        "switchyard_injected_faults_total",
        &[("pool", "green"), ("kind", "abort")],
    )
    .unwrap();
    assert!(aborted > 0.0, "{aborted}");
    assert_eq!(
        sample(
            &scrape,
            "switchyard_injected_faults_total",
            &[("pool", "blue"), ("kind", "abort")]
        ),
        Some(0.0)
    );
    // The webhook heard of the fault and of the rollback.
    let events = wait_for("the webhook to get both events", READY_DEADLINE, || {
        let bodies = hook.bodies();
        async move {
            let events: Vec<String> = bodies
                .iter()
                .map(|b| b["event"].as_str().unwrap_or("").to_string())
                .collect();
            (events.contains(&"faults".to_string()) && events.contains(&"guard".to_string()))
                .then_some(events)
        }
    })
    .await;
    assert!(events.contains(&"canary".to_string()), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shares_are_exact_over_10000_requests_and_the_live_pool_needs_force() {
    let (blue, _green, proxy) = two_pools().await;
    let socket = proxy.socket();
    let state_dir = proxy.config.state.dir.clone();
    let before = status(&proxy).await;

    // The live pool is refused without force, and nothing changes.
    let (code, e) = admin(
        &socket,
        "POST",
        "/v1/faults",
        Some(json!({"pool": "blue", "abort_percent": 20})),
    )
    .await;
    assert_eq!(
        (code, e["code"].as_str()),
        (409, Some("pool_is_live")),
        "{e}"
    );
    assert!(e["error"]
        .as_str()
        .unwrap()
        .contains("blue is the live pool"));
    assert!(e["error"].as_str().unwrap().contains("force"));
    let after = status(&proxy).await;
    assert_eq!(after["faults"], Value::Null);
    assert_eq!(after["generation"], before["generation"]);
    assert!(!state_dir.join("faults.json").exists());
    assert!(history(&socket).await.is_empty());
    // Nonsense is refused too, saying what to write.
    for (body, says) in [
        (json!({"pool": "green"}), "abort share or a delay share"),
        (
            json!({"pool": "green", "delay_percent": 10}),
            "--delay 200ms@10%",
        ),
        (
            json!({"pool": "green", "abort_percent": 5, "for": "2h"}),
            "faults.max_duration",
        ),
        (
            json!({"pool": "purple", "abort_percent": 5}),
            "unknown pool",
        ),
    ] {
        let (code, e) = admin(&socket, "POST", "/v1/faults", Some(body)).await;
        assert!(code == 400 || code == 404, "{code} {e}");
        assert!(e["error"].as_str().unwrap().contains(says), "{e}");
    }
    assert!(history(&socket).await.is_empty());

    // Forced: 20 % aborted with 503 and 10 % delayed by 2 ms, exactly, over 10 000 requests on
    // four connections.
    let (code, st) = admin(
        &socket,
        "POST",
        "/v1/faults",
        Some(json!({"pool": "blue", "abort_percent": 20, "delay": "2ms",
                    "delay_percent": 10, "for": "10m", "force": true})),
    )
    .await;
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["faults"]["forced"], true);
    assert!(state_dir.join("faults.json").exists());
    // The status page says a rehearsal is running: the pipeline is not clear.
    let metrics = proxy.config.metrics.listen.unwrap();
    let page = Client::connect(metrics)
        .await
        .get("/status.json")
        .await
        .unwrap();
    let page: Value = serde_json::from_str(&page.text()).unwrap();
    assert_eq!(page["pipeline"]["clear"], false, "{page}");
    let busy = page["pipeline"]["in_progress"].to_string();
    assert!(
        busy.contains("fault injection on blue: abort 20%"),
        "{busy}"
    );
    let aborted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (addr, aborted) = (proxy.addr, aborted.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for _ in 0..2_500 {
                let r = c.get("/").await.unwrap();
                match r.status {
                    503 => {
                        assert!(r.text().contains("fault injected"), "{}", r.text());
                        aborted.fetch_add(1, Ordering::SeqCst);
                    }
                    200 => assert_eq!(r.text(), "blue"),
                    s => panic!("unexpected {s}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(aborted.load(Ordering::SeqCst), 2_000);
    assert_eq!(blue.hits(), 8_000, "an abort never reaches the backend");
    let scrape = scrape(&proxy).await;
    let count = |kind| {
        sample(
            &scrape,
            "switchyard_injected_faults_total",
            &[("pool", "blue"), ("kind", kind)],
        )
    };
    assert_eq!(count("abort"), Some(2_000.0));
    assert_eq!(count("delay"), Some(1_000.0));
    let st = status(&proxy).await;
    assert_eq!(
        (
            st["faults"]["aborted"].as_u64(),
            st["faults"]["delayed"].as_u64()
        ),
        (Some(2_000), Some(1_000))
    );

    // Cleared: recorded, the file gone, requests untouched.
    let (code, st) = admin(&socket, "POST", "/v1/faults/clear", Some(json!({}))).await;
    assert_eq!(code, 200);
    assert_eq!(st["faults"], Value::Null);
    assert!(!state_dir.join("faults.json").exists());
    assert_eq!(get(proxy.addr, "/").await.status, 200);
    let h = history(&socket).await;
    assert_eq!(h.len(), 2);
    assert!(h[0]["detail"]["summary"].as_str().unwrap().starts_with(
        "cleared blue: abort 20% with 503, delay 2ms on 10% (2000 aborted, 1000 delayed)"
    ));
    assert_eq!(h[1]["forced"], true);
}

/// A `switchyard serve` child process, killed when dropped.
struct Serve {
    child: Child,
    addr: std::net::SocketAddr,
    socket: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(config: &Path, port: u16) -> Serve {
    let child = Command::new(BIN)
        .args(["serve", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Serve {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        socket: config.parent().unwrap().join("run/admin.sock"),
    };
    let (addr, socket) = (s.addr, s.socket.clone());
    wait_for("switchyard serve to accept", READY_DEADLINE, || {
        let socket = socket.clone();
        async move {
            let proxy = tokio::net::TcpStream::connect(addr).await.is_ok();
            if !proxy || tokio::net::UnixStream::connect(&socket).await.is_err() {
                return None;
            }
            let (_, st) = admin(&socket, "GET", "/v1/status", None).await;
            (st["pools"]["green"]["ready"] == true).then_some(())
        }
    })
    .await;
    s
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["ctl", "--socket"])
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_set_survives_kill_9_and_expires_on_time() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "{FAST_HEALTH}[listen]\nhttp = [\"127.0.0.1:{port}\"]\n[admin]\n\
             socket = \"{d}/run/admin.sock\"\n[metrics]\nlisten = \"127.0.0.1:{m}\"\n\
             [state]\ndir = \"{d}/state\"\n[guard]\nenabled = false\n{pools}",
            d = dir.path().display(),
            m = free_port(),
            pools = pools_toml(&[blue.addr], &[green.addr]),
        ),
    )
    .unwrap();

    let mut first = serve(&config, port).await;
    // All traffic to green, which is not the live (primary) pool.
    let out = ctl(&first.socket, &["canary", "green", "100"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // On the live pool: refused, exit 1, saying why.
    let out = ctl(&first.socket, &["faults", "blue", "--abort", "5%"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("blue is the live pool"),
        "{out:?}"
    );
    // The proxy sets the expiry while ctl runs: somewhere between these two instants + 8 s.
    let before = Instant::now();
    let out = ctl(
        &first.socket,
        &[
            "faults", "green", "--abort", "100%", "--status", "418", "--for", "8s", "--reason",
            "drill",
        ],
    );
    let expires = Instant::now() + Duration::from_secs(8);
    let expires_earliest = before + Duration::from_secs(8);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("FAULTS: green: abort 100% with 418"),
        "{said}"
    );
    assert_eq!(get(first.addr, "/").await.status, 418);

    let out = Command::new("kill")
        .args(["-KILL", &first.child.id().to_string()])
        .status()
        .unwrap();
    assert!(out.success());
    let _ = first.child.wait();
    drop(first);

    let second = serve(&config, port).await;
    assert!(
        Instant::now() < expires - Duration::from_secs(1),
        "the restart took too long for this test to say anything"
    );
    assert_eq!(get(second.addr, "/").await.status, 418, "still injected");
    let (_, st) = admin(&second.socket, "GET", "/v1/status", None).await;
    assert_eq!(st["faults"]["reason"], "drill");
    let left = st["faults"]["ends_in_s"].as_f64().unwrap();
    assert!(left <= 8.0 && left > 0.0, "{left}");

    // Injected up to its time, and not after.
    let mut client = Client::connect(second.addr).await;
    let first_ok = loop {
        let r = client.get("/").await.unwrap();
        let now = Instant::now();
        if r.status == 200 {
            assert_eq!(r.text(), "green");
            break now;
        }
        assert_eq!(r.status, 418);
        assert!(
            now < expires + Duration::from_secs(2),
            "still injecting 2 s after the fault set's time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Wall clock across a restart: allow a few milliseconds of rounding.
    assert!(
        first_ok + Duration::from_millis(50) >= expires_earliest,
        "stopped {:?} early",
        expires_earliest - first_ok
    );
    let h = wait_for("the expiry in history", READY_DEADLINE, || {
        let socket = second.socket.clone();
        async move {
            let h = history(&socket).await;
            h.first()
                .filter(|e| {
                    e["detail"]["summary"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("expired: green"))
                })
                .map(|_| h.clone())
        }
    })
    .await;
    assert_eq!(h[0]["actor"], "switchyard");
    assert!(!dir.path().join("state/faults.json").exists());
    let (_, st) = admin(&second.socket, "GET", "/v1/status", None).await;
    assert_eq!(st["faults"], Value::Null);
}
