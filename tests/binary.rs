//! Black-box tests of the real binary: exit codes, the demo, start-up failures and signals.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Kills the child when dropped, so a failing test leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.toml",
        "[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n[pools.green]\nbackends = [\"127.0.0.1:2\"]\n",
    );
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok: listen 127.0.0.1:8080; pools blue (1 backends) and green"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "the summary is one line: {stdout}"
    );

    let bad = write(
        dir.path(),
        "bad.toml",
        "[pools.blue]\nbackends = [\"nowhere\"]\n[pools.green]\nbackends = [\"127.0.0.1:2\"]\n\
         [health]\ninterval = \"often\"\n[routing]\ninitial_primary = \"red\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let located: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{}:", bad.display())) && l.matches(':').count() >= 3)
        .collect();
    assert_eq!(located.len(), 3, "three located errors expected:\n{stderr}");
    assert!(stderr.contains("3 error(s)"), "{stderr}");

    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
}

#[test]
fn the_shipped_example_passes_check() {
    let out = Command::new(BIN)
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/switchyard.toml"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_answers_blue_and_stops_on_ctrl_c() {
    let port = free_port();
    let metrics = free_port();
    let child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics",
            &format!("127.0.0.1:{metrics}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The demo prints its banner once its pools are healthy: read stdout until it appears.
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut out = String::new();
    let deadline = Instant::now() + READY_DEADLINE;
    while !out.contains("Ctrl-C stops everything") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => out.push_str(&(line + "\n")),
            Err(_) => panic!("the demo did not print its banner; got:\n{out}"),
        }
    }
    assert!(
        out.contains("switchyard ctl --socket"),
        "the demo prints what to try: {out}"
    );
    let r = get(addr, "/").await;
    assert_eq!((r.status, r.text().trim()), (200, "blue"));

    // Ctrl-C: SIGINT stops everything, promptly and cleanly.
    let pid = child.0.id() as i32;
    assert_eq!(send_signal(pid, "INT"), 0);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "demo did not stop on SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "demo exited with {status:?}");
}

/// Sends a signal with the `kill` command (the crate forbids unsafe code, so no libc::kill).
pub fn send_signal(pid: i32, sig: &str) -> i32 {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .map(|s| s.code().unwrap_or(-1))
        .unwrap_or(-1)
}
