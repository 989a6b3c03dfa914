//! The real binary's life: durable state across kill -9, corrupt state files, SIGTERM draining,
//! start-up failures, and `ctl` exit codes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

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

/// Writes a config for `blue`/`green` under `dir` and returns its path and proxy port.
fn write_config(dir: &Path, blue: &Upstream, green: &Upstream, port: u16, extra: &str) -> PathBuf {
    let health = if extra.contains("[health]") {
        ""
    } else {
        FAST_HEALTH
    };
    let text = format!(
        "{health}[listen]\nhttp = [\"127.0.0.1:{port}\"]\n[admin]\nsocket = \"{d}/run/admin.sock\"\n\
         [metrics]\nlisten = \"127.0.0.1:{m}\"\n[state]\ndir = \"{d}/state\"\n{pools}\n{extra}",
        d = dir.display(),
        m = free_port(),
        pools = pools_toml(&[blue.addr], &[green.addr]),
    );
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Two upstreams and a config for them in a temp dir.
struct Fixture {
    _blue: Upstream,
    _green: Upstream,
    dir: tempfile::TempDir,
    port: u16,
    config: PathBuf,
}

impl Fixture {
    async fn new(extra: &str) -> Fixture {
        let blue = Upstream::start("blue").await;
        let green = Upstream::start("green").await;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = write_config(dir.path(), &blue, &green, port, extra);
        Fixture {
            _blue: blue,
            _green: green,
            dir,
            port,
            config,
        }
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
    let dir = config.parent().unwrap();
    let s = Serve {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        socket: dir.join("run/admin.sock"),
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
            let ready =
                st["pools"]["blue"]["ready"] == true && st["pools"]["green"]["ready"] == true;
            ready.then_some(())
        }
    })
    .await;
    s
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Waits for the child to exit, up to `deadline`.
async fn exit_within(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < deadline,
            "did not exit within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
async fn a_flip_survives_kill_9() {
    let f = Fixture::new("").await;
    let (port, config) = (f.port, f.config.clone());

    let mut first = serve(&config, port).await;
    let out = ctl(&first.socket, &["flip", "green", "--reason", "release 42"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("green is live (was blue)"));
    assert_eq!(get(first.addr, "/").await.text(), "green");
    signal(&first.child, "KILL");
    exit_within(&mut first.child, Duration::from_secs(5)).await;
    drop(first);

    let second = serve(&config, port).await;
    assert_eq!(get(second.addr, "/").await.text(), "green");
    let (_, status) = admin(&second.socket, "GET", "/v1/status", None).await;
    assert_eq!(status["primary"], "green");
    assert_eq!(status["generation"], 1);
    // And rollback still knows where to go.
    let out = ctl(&second.socket, &["rollback"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(get(second.addr, "/").await.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_moved_aside_and_the_config_used() {
    let f = Fixture::new("[routing]\ninitial_primary = \"blue\"\n").await;
    let (dir, port, config) = (&f.dir, f.port, f.config.clone());
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(
        dir.path().join("state/state.json"),
        "{\"version\": 1, \"primary\": \"gre",
    )
    .unwrap();

    let s = serve(&config, port).await;
    assert_eq!(get(s.addr, "/").await.text(), "blue");
    let moved: Vec<String> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "the corrupt file is kept for inspection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let f = Fixture::new("[shutdown]\ngrace_period = \"10s\"\n").await;
    let (port, config) = (f.port, f.config.clone());
    let mut s = serve(&config, port).await;

    let addr = s.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow/1500").await });
    let socket = s.socket.clone();
    wait_for("the slow request to be in flight", READY_DEADLINE, || {
        let socket = socket.clone();
        async move {
            let (_, st) = admin(&socket, "GET", "/v1/status", None).await;
            (st["pools"]["blue"]["inflight"] == 1).then_some(())
        }
    })
    .await;
    let sent = Instant::now();
    signal(&s.child, "TERM");
    let r = slow.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "blue"));
    let status = exit_within(&mut s.child, Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0));
    // Exits once drained, not after the whole 10 s grace period.
    assert!(
        sent.elapsed() < Duration::from_secs(6),
        "took {:?}",
        sent.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_when_idle_exits_at_once() {
    let f = Fixture::new("[shutdown]\ngrace_period = \"30s\"\n").await;
    let (port, config) = (f.port, f.config.clone());
    let mut s = serve(&config, port).await;
    signal(&s.child, "TERM");
    let status = exit_within(&mut s.child, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_ends_the_process_with_a_clear_message() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let config = write_config(dir.path(), &blue, &green, port, "");
    let mut child = Command::new(BIN)
        .args(["serve", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_within(&mut child, Duration::from_secs(5)).await;
    assert_ne!(status.code(), Some(0));
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_does_not_steal_the_admin_socket() {
    let f = Fixture::new("").await;
    let (dir, port, config) = (&f.dir, f.port, f.config.clone());
    let _first = serve(&config, port).await;
    // Same admin socket, another proxy port.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{}", free_port()),
    );
    let second_config = dir.path().join("second.toml");
    std::fs::write(&second_config, text).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "-c"])
        .arg(&second_config)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is switchyard already running?"), "{err}");
    let (s, _) = admin(&_first.socket, "GET", "/v1/health", None).await;
    assert_eq!(s, 200, "the first instance keeps its socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_exit_codes_and_json() {
    let f = Fixture::new("").await;
    let (dir, port, config) = (&f.dir, f.port, f.config.clone());
    let s = serve(&config, port).await;

    let out = ctl(&s.socket, &["--json", "canary", "green", "0.25"]);
    assert_eq!(out.status.code(), Some(0));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (answer["canary_bp"].clone(), answer["changed"].clone()),
        (json!(25), json!(true))
    );

    let out = ctl(&s.socket, &["flip", "purple"]);
    assert_eq!(out.status.code(), Some(1), "refused by the proxy");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown pool `purple`"));

    let out = ctl(&s.socket, &["canary", "green", "lots"]);
    assert_eq!(out.status.code(), Some(2), "usage error");

    let out = ctl(&dir.path().join("nope.sock"), &["status"]);
    assert_eq!(out.status.code(), Some(3), "unreachable");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is switchyard running?"));

    let out = ctl(&s.socket, &["history", "-n", "5"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("canary    blue -> blue + green 0.25%"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_watch_shows_both_colours() {
    let f = Fixture::new("").await;
    let s = serve(&f.config, f.port).await;
    for _ in 0..5 {
        get(s.addr, "/").await;
    }
    let out = ctl(&s.socket, &["watch", "--count", "2", "--interval", "100ms"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("switchyard — blue is live").count(),
        2,
        "{text}"
    );
    for row in [
        "weight",
        "healthy",
        "rate",
        "errors",
        "p50",
        "p99",
        "in flight",
    ] {
        assert!(text.contains(row), "missing {row}: {text}");
    }
    assert!(
        text.contains("blue (live)") && text.contains("green"),
        "{text}"
    );
    assert!(text.contains("100%") && text.contains("1/1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_wait_drained_waits_for_the_old_colour() {
    let f = Fixture::new("").await;
    let s = serve(&f.config, f.port).await;
    // The live pool is never drained: refused at once.
    let out = ctl(&s.socket, &["wait-drained", "blue", "--timeout", "5s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("still gets 100%"));

    // A slow request on green, then flip away from green.
    assert_eq!(ctl(&s.socket, &["flip", "green"]).status.code(), Some(0));
    let addr = s.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow/2500").await });
    let socket = s.socket.clone();
    wait_for("the slow request on green", READY_DEADLINE, || {
        let socket = socket.clone();
        async move {
            let (_, st) = admin(&socket, "GET", "/v1/status", None).await;
            (st["pools"]["green"]["inflight"] == 1).then_some(())
        }
    })
    .await;
    assert_eq!(ctl(&s.socket, &["flip", "blue"]).status.code(), Some(0));

    let out = ctl(&s.socket, &["wait-drained", "green", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1), "still in flight: times out");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 request(s) still in flight"));

    let socket = s.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        ctl(&socket, &["wait-drained", "green", "--timeout", "20s"])
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        slow.is_finished(),
        "drained only after the slow request finished"
    );
    assert_eq!(slow.await.unwrap().text(), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_a_restart() {
    let f = Fixture::new("").await;
    let mut first = serve(&f.config, f.port).await;
    let out = ctl(
        &first.socket,
        &[
            "rollout",
            "green",
            "--steps",
            "5,50,100",
            "--interval",
            "10m",
            "--reason",
            "r1",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rollout to green: step 1 of 3 (5%)"),
        "{text}"
    );
    assert_eq!(ctl(&first.socket, &["pause"]).status.code(), Some(0));
    signal(&first.child, "KILL");
    exit_within(&mut first.child, Duration::from_secs(5)).await;
    drop(first);

    let second = serve(&f.config, f.port).await;
    let (_, st) = admin(&second.socket, "GET", "/v1/status", None).await;
    assert_eq!(st["canary_bp"], 500);
    assert_eq!(st["rollout"]["step"], 1);
    assert_eq!(
        st["rollout"]["paused"], true,
        "a paused rollout stays paused: {st}"
    );
    let out = ctl(&second.socket, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rollout to green: step 1 of 3 (5%)") && text.contains("PAUSED"),
        "{text}"
    );
    assert!(text.contains("guard: watching green (canary)"), "{text}");
    let out = ctl(&second.socket, &["flip", "green"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rollout_running"));
    assert_eq!(ctl(&second.socket, &["abort"]).status.code(), Some(0));
    let (_, st) = admin(&second.socket, "GET", "/v1/status", None).await;
    assert_eq!(
        (st["canary_bp"].as_u64(), st["rollout"].is_null()),
        (Some(0), true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_ctl_reload_apply_the_file() {
    let f = Fixture::new("").await;
    let s = serve(&f.config, f.port).await;
    let extra = Upstream::start("green-2").await;
    let green = f._green.addr.to_string();
    let text = std::fs::read_to_string(&f.config).unwrap();
    let grown = text.replace(
        &format!("\"{green}\"]"),
        &format!("\"{green}\", \"{}\"]", extra.addr),
    );
    assert_ne!(grown, text);
    std::fs::write(&f.config, &grown).unwrap();
    signal(&s.child, "HUP");
    wait_for(
        "SIGHUP to add green's second backend",
        READY_DEADLINE,
        || {
            let socket = s.socket.clone();
            async move {
                let (_, st) = admin(&socket, "GET", "/v1/status", None).await;
                let n = st["pools"]["green"]["backends"]
                    .as_array()
                    .map_or(0, Vec::len);
                (n == 2).then_some(())
            }
        },
    )
    .await;
    assert_eq!(get(s.addr, "/").await.text(), "blue", "still serving");
    let (_, history) = admin(&s.socket, "GET", "/v1/history", None).await;
    assert_eq!(history[0]["action"], "reload");
    assert_eq!(history[0]["actor"], "signal:SIGHUP");

    // The same file again, through ctl: nothing to do, exit 0.
    let out = ctl(&s.socket, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no change"), "{stdout}");

    // A broken file: exit 1, every error located, nothing changed.
    std::fs::write(&f.config, grown.replace("rise = 1", "rise = \"one\"")).unwrap();
    let out = ctl(&s.socket, &["reload", "--reason", "try a typo"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid_config"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:", f.config.display())),
        "errors are located: {stderr}"
    );
    let (_, st) = admin(&s.socket, "GET", "/v1/status", None).await;
    assert_eq!(
        st["pools"]["green"]["backends"].as_array().unwrap().len(),
        2
    );
}
