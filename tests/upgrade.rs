//! `switchyard ctl upgrade` with the real binary: the listening sockets pass to a new process
//! under load with nothing refused, reset or failed, the routing state carries over, the old
//! process exits 0; and a new binary that cannot start leaves the old one serving, unchanged.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Processes started by an upgrade are children of the process they replace, which exits: to
/// reap them and read their exit status, this test process adopts orphans (a subreaper, as
/// systemd is for a service).
fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integers only and changes a process flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
}

/// The exit status of process `pid` (a child or an adopted orphan) once it has exited, within
/// `deadline`: `Some(code)` for a normal exit, `None` if killed by a signal.
async fn exit_code(pid: u32, deadline: Duration) -> Option<i32> {
    let end = Instant::now() + deadline;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on a pid we own (child or adopted); writes one int.
        let rc = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        if rc == pid as i32 {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        assert!(rc == 0, "waitpid({pid}) = {rc}");
        assert!(
            Instant::now() < end,
            "process {pid} did not exit within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Two upstreams, a config for them, and the first `serve` process.
struct Fixture {
    blue: Upstream,
    green: Upstream,
    dir: tempfile::TempDir,
    config: PathBuf,
    addr: SocketAddr,
    metrics: SocketAddr,
    socket: PathBuf,
    first_pid: u32,
    /// The process serving now (the last one started), stopped at the end.
    current: u32,
    /// Stands in for systemd's `$NOTIFY_SOCKET`: what the processes tell systemd.
    notify: tokio::net::UnixDatagram,
}

impl Fixture {
    async fn start() -> Fixture {
        become_subreaper();
        let blue = Upstream::start("blue").await;
        let green = Upstream::start("green").await;
        let dir = tempfile::tempdir().unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
        let (port, mport) = (free_port(), free_port());
        let text = format!(
            "{FAST_HEALTH}[listen]\nhttp = [\"127.0.0.1:{port}\"]\n[admin]\nsocket = \
             \"{d}/run/admin.sock\"\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n[state]\ndir = \
             \"{d}/state\"\n[shutdown]\ngrace_period = \"15s\"\n{pools}",
            d = dir.path().display(),
            pools = pools_toml(&[blue.addr], &[green.addr]),
        );
        let config = dir.path().join("switchyard.toml");
        std::fs::write(&config, text).unwrap();
        // Every process's log, the new ones' included (they log to the old one's stderr).
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        // Reaped by pid (`exit_code`, `Drop`), like the processes the upgrades start.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new(BIN)
            .args(["serve", "-c"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let f = Fixture {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            metrics: format!("127.0.0.1:{mport}").parse().unwrap(),
            socket: dir.path().join("run/admin.sock"),
            first_pid: child.id(),
            current: child.id(),
            blue,
            green,
            dir,
            config,
            notify,
        };
        let socket = f.socket.clone();
        wait_for("switchyard serve to be ready", READY_DEADLINE, || {
            let socket = socket.clone();
            async move {
                let st = status(&socket).await.ok()?;
                let ready =
                    st["pools"]["blue"]["ready"] == true && st["pools"]["green"]["ready"] == true;
                ready.then_some(())
            }
        })
        .await;
        f
    }

    /// The next message sent to the notify socket.
    async fn notified(&self) -> String {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(READY_DEADLINE, self.notify.recv(&mut buf))
            .await
            .expect("a message on NOTIFY_SOCKET")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    async fn ctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = tokio::process::Command::new(BIN)
            .args(["ctl", "--socket"])
            .arg(&self.socket)
            .args(args)
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid this test started (or adopted) and a plain signal number.
        unsafe {
            libc::kill(self.current as i32, libc::SIGKILL);
            libc::waitpid(self.current as i32, std::ptr::null_mut(), 0);
        }
    }
}

/// `GET /v1/status` on a fresh connection; an error instead of a panic, so a poller can count.
async fn status(socket: &Path) -> Result<serde_json::Value, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/v1/status")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tx
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("json: {e}"))
}

/// A keep-alive HTTP/1.1 client that reports every failure (connect refused, reset, a request
/// cut short) instead of panicking, and opens a new connection only when the server closed the
/// last one the proper way (`Connection: close`, or an idle close noticed before sending).
struct LoadClient {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
}

impl LoadClient {
    fn new(addr: SocketAddr) -> LoadClient {
        LoadClient { addr, sender: None }
    }

    async fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        let usable = match &mut self.sender {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            stream.set_nodelay(true).unwrap();
            let (s, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            self.sender = Some(s);
        }
        let sender = self.sender.as_mut().expect("set above");
        let req = hyper::Request::get(path)
            .header("host", self.addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let close = resp
            .headers()
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if close {
            self.sender = None;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Counts of a background loop: successes, and every failure with its reason.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, r: Result<(), String>) {
        match r {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => self.failures.lock().unwrap().push(e),
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_upgrades_under_load_refuse_reset_and_fail_nothing() {
    let mut f = Fixture::start().await;
    assert_eq!(
        f.notified().await,
        "READY=1\n",
        "systemd hears READY once ready"
    );
    // A running canary, to carry over.
    let (code, _, err) = f.ctl(&["canary", "green", "10"]).await;
    assert_eq!(code, Some(0), "{err}");

    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Tally::default());
    let admin_polls = Arc::new(Tally::default());
    let scrapes = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (stop, load, addr) = (stop.clone(), load.clone(), f.addr);
        tasks.push(tokio::spawn(async move {
            let mut c = LoadClient::new(addr);
            while !stop.load(Ordering::SeqCst) {
                let r = c.get("/").await.and_then(|(s, body)| {
                    (s == 200 && (body == "blue" || body == "green"))
                        .then_some(())
                        .ok_or(format!("answered {s} {body}"))
                });
                load.record(r);
            }
        }));
    }
    {
        let (stop, polls, socket) = (stop.clone(), admin_polls.clone(), f.socket.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                polls.record(status(&socket).await.map(|_| ()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    {
        let (stop, scrapes, addr) = (stop.clone(), scrapes.clone(), f.metrics);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = LoadClient::new(addr)
                    .get("/metrics")
                    .await
                    .and_then(|(s, body)| {
                        (s == 200 && body.contains("switchyard_"))
                            .then_some(())
                            .ok_or(format!("metrics answered {s}"))
                    });
                scrapes.record(r);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    let mut old = f.first_pid;
    let mut timings = Vec::new();
    for round in 1..=3 {
        // A 5 s request in flight in the old process during the hand-over.
        let addr = f.addr;
        let slow = tokio::spawn(async move { LoadClient::new(addr).get("/slow/5000").await });
        let (blue, green) = (f.blue.seen.clone(), f.green.seen.clone());
        wait_for(
            "the slow request to reach a backend",
            READY_DEADLINE,
            || {
                let n = [&blue, &green]
                    .iter()
                    .map(|s| {
                        s.lock()
                            .unwrap()
                            .iter()
                            .filter(|r| r.path == "/slow/5000")
                            .count()
                    })
                    .sum::<usize>();
                async move { (n == round).then_some(()) }
            },
        )
        .await;

        let served_before = load.ok();
        let begun = Instant::now();
        let (code, out, err) = f.ctl(&["upgrade", "--json", "--timeout", "30s"]).await;
        assert_eq!(
            code,
            Some(0),
            "round {round}: {out}{err}\nLOG:\n{}",
            f.log()
        );
        timings.push(begun.elapsed());
        let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
        let new = answer["new_pid"].as_u64().unwrap() as u32;
        assert_eq!(answer["old_pid"].as_u64(), Some(old as u64));
        assert_ne!(new, old);
        f.current = new;
        // systemd follows the new process.
        assert_eq!(f.notified().await, format!("MAINPID={new}\nREADY=1\n"));

        // The routing state carried over: generation, the canary, the guard watching it.
        let st = status(&f.socket).await.unwrap();
        assert_eq!(st["pid"].as_u64(), Some(new as u64));
        assert_eq!(st["generation"], 1, "{st}");
        assert_eq!(
            (st["canary_pool"].as_str(), st["canary_bp"].as_u64()),
            (Some("green"), Some(1000))
        );
        assert_eq!(st["guard"]["watching"]["pool"], "green", "{st}");
        assert_eq!(st["upgrading"], false);

        let r = slow.await.unwrap();
        assert!(
            matches!(&r, Ok((200, _))),
            "round {round}: the slow request: {r:?}\n{}",
            f.log()
        );
        assert_eq!(
            exit_code(old, Duration::from_secs(20)).await,
            Some(0),
            "round {round}: the old process {old} must exit 0\n{}",
            f.log()
        );
        assert!(!alive(old));
        assert!(
            load.ok() > served_before,
            "round {round}: requests were served during the upgrade"
        );
        old = new;
    }

    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        load.failures(),
        Vec::<String>::new(),
        "failed proxied requests"
    );
    assert_eq!(
        admin_polls.failures(),
        Vec::<String>::new(),
        "failed `status` calls"
    );
    assert_eq!(scrapes.failures(), Vec::<String>::new(), "failed scrapes");
    assert!(load.ok() > 300, "only {} requests served", load.ok());
    assert!(admin_polls.ok() > 30 && scrapes.ok() > 30);
    eprintln!(
        "3 upgrades: {} requests, {} status calls, {} scrapes, 0 failures; ctl upgrade took {:?}",
        load.ok(),
        admin_polls.ok(),
        scrapes.ok(),
        timings
    );
}

/// A stand-in for a new binary: behaves as the real one for `--version` and `check`, and does
/// `serve` its own way.
fn fake_binary(dir: &Path, name: &str, serve: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  serve) {serve} ;;\n  *) exec {BIN} \"$@\" ;;\nesac\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_cannot_start_leaves_the_old_process_serving() {
    let f = Fixture::start().await;
    let (code, _, err) = f.ctl(&["flip", "green"]).await;
    assert_eq!(code, Some(0), "{err}");
    let before = status(&f.socket).await.unwrap();
    let state_file = f.dir.path().join("state/state.json");
    let saved = std::fs::read(&state_file).unwrap();
    let unchanged = |what: &str, st: &serde_json::Value| {
        assert_eq!(st["pid"].as_u64(), Some(f.first_pid as u64), "{what}");
        assert_eq!(st["generation"], before["generation"], "{what}");
        assert_eq!(st["primary"], "green", "{what}");
        assert_eq!(st["upgrading"], false, "{what}");
        assert_eq!(
            std::fs::read(&state_file).unwrap(),
            saved,
            "{what}: state.json"
        );
    };

    // 1. The new process exits at start-up: its error comes back, the old one serves on.
    let crash = fake_binary(
        f.dir.path(),
        "crashes",
        "echo 'error: cannot listen on 127.0.0.1:1: permission denied' >&2; exit 3",
    );
    let (code, _, err) = f
        .ctl(&["upgrade", "--binary", crash.to_str().unwrap()])
        .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("new_process_failed"), "{err}");
    assert!(
        err.contains("cannot listen on 127.0.0.1:1: permission denied"),
        "{err}"
    );
    assert!(err.contains("exit status: 3"), "{err}");
    assert_eq!(get(f.addr, "/").await.text(), "green");
    unchanged("after a crashing binary", &status(&f.socket).await.unwrap());

    // 2. A new process that never gets ready is stopped at the timeout; meanwhile changes and a
    //    second upgrade are refused, and afterwards accepted again.
    let hangs = fake_binary(
        f.dir.path(),
        "hangs",
        "echo 'warming up forever' >&2; exec sleep 61.25",
    );
    let socket = f.socket.clone();
    let hanging = {
        let hangs = hangs.clone();
        tokio::spawn(async move {
            tokio::process::Command::new(BIN)
                .args(["ctl", "--socket"])
                .arg(&socket)
                .args(["upgrade", "--timeout", "3s", "--binary"])
                .arg(&hangs)
                .output()
                .await
                .unwrap()
        })
    };
    let socket = f.socket.clone();
    wait_for("the upgrade to freeze changes", READY_DEADLINE, || {
        let socket = socket.clone();
        async move { (status(&socket).await.ok()?["upgrading"] == true).then_some(()) }
    })
    .await;
    let (code, _, err) = f.ctl(&["flip", "blue"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("409 upgrade_in_progress"), "{err}");
    let (code, _, err) = f.ctl(&["upgrade"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("409 upgrade_in_progress"), "{err}");
    assert_eq!(
        get(f.addr, "/").await.text(),
        "green",
        "still serving while frozen"
    );
    let out = hanging.await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("new_process_not_ready"), "{err}");
    assert!(err.contains("warming up forever"), "{err}");
    unchanged(
        "after a binary that never got ready",
        &status(&f.socket).await.unwrap(),
    );
    // The child was killed: no `sleep 60` left behind by the fake binary.
    let leftover = std::process::Command::new("pgrep")
        .args(["-f", "sleep 61.25"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    assert!(leftover.is_empty(), "the new process was not stopped");

    // 3. A config the new binary refuses: the located error, nothing changed.
    let good = std::fs::read_to_string(&f.config).unwrap();
    std::fs::write(
        &f.config,
        format!("{good}\n[guard]\nmax_error_ratio = \"lots\"\n"),
    )
    .unwrap();
    let (code, _, err) = f.ctl(&["upgrade"]).await;
    std::fs::write(&f.config, good).unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("check_failed"), "{err}");
    assert!(
        err.contains("switchyard.toml:"),
        "the error is located: {err}"
    );
    assert!(
        err.contains("switchyard.toml:24:19:"),
        "at the line and column: {err}"
    );
    assert!(err.contains("max_error_ratio"), "{err}");
    unchanged("after a refused config", &status(&f.socket).await.unwrap());
    assert_eq!(get(f.addr, "/").await.text(), "green");

    // Unfrozen: a change goes through.
    let (code, _, err) = f.ctl(&["flip", "blue"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(get(f.addr, "/").await.text(), "blue");
    assert!(alive(f.first_pid));
}
