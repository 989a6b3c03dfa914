//! The real binary's logs: `[log] format = "json"` (every line one JSON object), no timestamps
//! for journald, the access log's fields, and the start-up line naming every listen address.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A `switchyard serve` child logging to a file, killed when dropped.
struct Serve {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

fn start(dir: &Path, config: &Path) -> Serve {
    let log = dir.join("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "-c"])
        .arg(config)
        // As the systemd unit sets it: pingora's per-service lines must still stay out.
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap();
    Serve { child, log }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_without_timestamps_carry_the_access_fields_and_every_address() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("admin.token"), "ci:t0ken\n").unwrap();
    let (port, admin_port, metrics_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "{FAST_HEALTH}[listen]\nhttp = [\"127.0.0.1:{port}\"]\n\
             [admin]\nsocket = \"{d}/admin.sock\"\nlisten = \"127.0.0.1:{admin_port}\"\n\
             token_file = \"{d}/admin.token\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [state]\ndir = \"{d}/state\"\n[log]\nformat = \"json\"\ntimestamps = false\n\
             access = true\n{}",
            pools_toml(&[blue.addr], &[green.addr]),
        ),
    )
    .unwrap();
    let serve = start(dir.path(), &config);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let socket = dir.path().join("admin.sock");
    wait_for("serve to be ready", READY_DEADLINE, || {
        let socket = socket.clone();
        async move {
            tokio::net::TcpStream::connect(addr).await.ok()?;
            tokio::net::UnixStream::connect(&socket).await.ok()?;
            let (_, st) = admin(&socket, "GET", "/v1/status", None).await;
            (st["pools"]["blue"]["ready"] == true).then_some(())
        }
    })
    .await;

    let mut c = Client::connect(addr).await;
    let r = c
        .send(request("POST", "/slow/50", "hello world"))
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (200, "blue".to_string()));
    let r = c.get("/bytes/1000").await.unwrap();
    assert_eq!(r.body.len(), 1000);

    let access: Vec<Value> = wait_for("two access log lines", READY_DEADLINE, || {
        let lines = serve.lines();
        async move {
            let access: Vec<Value> = lines
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["target"] == "access")
                .collect();
            (access.len() == 2).then_some(access)
        }
    })
    .await;

    // Every line is one JSON object, without a timestamp; no field is logged empty.
    let lines = serve.lines();
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        assert!(
            o.contains_key("level") && o.contains_key("target"),
            "{line}"
        );
        assert!(!o.contains_key("timestamp"), "{line}");
        assert!(o.values().all(|v| v != ""), "an empty field: {line}");
    }

    let post = &access[0];
    assert_eq!(post["method"], "POST");
    assert_eq!(post["path"], "/slow/50");
    assert_eq!(post["pool"], "blue");
    assert_eq!(post["backend"], blue.addr.to_string());
    assert_eq!(post["status"], 200);
    assert_eq!(post["bytes_received"], 11);
    assert_eq!(post["bytes_sent"], 4);
    let upstream = post["upstream_ms"].as_f64().unwrap();
    let total = post["duration_ms"].as_f64().unwrap();
    assert!(upstream >= 50.0 && upstream <= total, "{post}");
    assert!(post.get("error").is_none(), "{post}");
    assert!(post["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let get = &access[1];
    assert_eq!(
        (&get["method"], &get["bytes_sent"]),
        (&"GET".into(), &1000.into())
    );
    assert_eq!(get["bytes_received"], 0);

    // One start-up line names every address; pingora's per-service lines are not at INFO.
    let started: Vec<&Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["proxy"].is_string())
        .collect::<Vec<_>>()
        .leak()
        .iter()
        .collect();
    assert_eq!(started.len(), 1, "{lines:#?}");
    let s = started[0];
    assert_eq!(s["proxy"], format!("127.0.0.1:{port}"));
    assert_eq!(s["admin_listen"], format!("127.0.0.1:{admin_port}"));
    assert_eq!(s["metrics_listen"], format!("127.0.0.1:{metrics_port}"));
    assert_eq!(s["admin_socket"], socket.display().to_string());
    assert!(
        !lines.iter().any(|l| l.contains("Starting service")),
        "{lines:#?}"
    );
}

#[test]
fn check_refuses_an_unknown_log_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.toml");
    std::fs::write(
        &path,
        "[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n\n[pools.green]\nbackends = [\"127.0.0.1:2\"]\n\n\
         [log]\nformat = \"xml\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("l.toml:8:10: [log] format `xml` is not one of \"text\", \"json\""),
        "{stderr}"
    );
}
