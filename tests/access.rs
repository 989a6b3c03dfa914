//! Admin access: token scopes on the TCP admin API, the health endpoints that need no token, and
//! the admin socket shared with a group.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A proxy with a TCP admin API whose token file holds a write token (`deployer`, old
/// `NAME:TOKEN` syntax) and a read token (`grafana`).
async fn proxy_with_tokens() -> (Upstream, Upstream, Proxy, SocketAddr, tempfile::TempDir) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let tokdir = tempfile::tempdir().unwrap();
    let tokfile = tokdir.path().join("admin.token");
    std::fs::write(&tokfile, "deployer:wr1te-token\ngrafana:read:re4d-token\n").unwrap();
    let port = free_port();
    let toml = format!(
        "{}\n[admin]\nsocket = \"{}/admin.sock\"\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
        pools_toml(&[blue.addr], &[green.addr]),
        tokdir.path().display(),
        tokfile.display()
    );
    let proxy = Proxy::start_raw(&toml).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    (blue, green, proxy, addr, tokdir)
}

async fn tcp(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    exchange(
        stream,
        method,
        path,
        body.map(|b| b.as_bytes().to_vec()),
        &headers,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_may_look_but_not_change() {
    let (_blue, _green, proxy, addr, _tokdir) = proxy_with_tokens().await;
    let flip = Some(r#"{"to": "green"}"#);

    let (s, a) = tcp(addr, "GET", "/v1/status", None, Some("re4d-token")).await;
    assert_eq!((s, a["primary"].as_str()), (200, Some("blue")), "{a}");
    let (s, a) = tcp(addr, "GET", "/v1/history", None, Some("re4d-token")).await;
    assert_eq!(s, 200, "{a}");

    for path in ["/v1/flip", "/v1/rollback", "/v1/reload", "/v1/upgrade"] {
        let (s, a) = tcp(addr, "POST", path, flip, Some("re4d-token")).await;
        assert_eq!(
            (s, a["code"].as_str()),
            (403, Some("forbidden")),
            "{path}: {a}"
        );
        assert!(a["error"].as_str().unwrap().contains("grafana"), "{a}");
    }
    assert_eq!(proxy.switchboard.state().generation, 0);
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");

    // A wrong token is still 401, not 403.
    let (s, _) = tcp(addr, "POST", "/v1/flip", flip, Some("re4d-tokeX")).await;
    assert_eq!(s, 401);

    let (s, a) = tcp(addr, "POST", "/v1/flip", flip, Some("wr1te-token")).await;
    assert_eq!((s, a["primary"].as_str()), (200, Some("green")), "{a}");
    let (_, h) = tcp(addr, "GET", "/v1/history", None, Some("re4d-token")).await;
    assert_eq!(h[0]["actor"], "token:deployer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_without_a_token_and_nothing_else_does() {
    let (_blue, _green, proxy, addr, _tokdir) = proxy_with_tokens().await;
    let (s, a) = tcp(addr, "GET", "/v1/health", None, None).await;
    assert_eq!((s, a), (200, serde_json::json!({"ok": true})));
    let (s, a) = tcp(addr, "GET", "/v1/status", None, None).await;
    assert_eq!((s, a["code"].as_str()), (401, Some("unauthorized")));
    let (s, _) = tcp(addr, "POST", "/v1/health", Some("{}"), None).await;
    assert_eq!(s, 401);

    // Liveness on the metrics listener, next to /metrics.
    let metrics = proxy.config.metrics.listen.unwrap();
    let r = get(metrics, "/healthz").await;
    assert_eq!((r.status, r.text()), (200, "ok\n".to_string()));
    let r = get(metrics, "/nope").await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_group_makes_the_socket_0660_for_that_group() {
    // `daemon` (gid 1) exists on Debian; these tests run as root, which may give a file away.
    assert!(std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("daemon:x:1:")));
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}\n[admin]\nsocket = \"{}/admin.sock\"\nsocket_group = \"daemon\"\n",
        pools_toml(&[blue.addr], &[green.addr]),
        dir.path().display(),
    );
    let proxy = Proxy::start_raw(&toml).await;
    let meta = std::fs::metadata(proxy.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 1);
    let (s, _) = admin(&proxy.socket(), "GET", "/v1/status", None).await;
    assert_eq!(s, 200);
}

#[test]
fn check_refuses_a_socket_group_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        "[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n\n[pools.green]\nbackends = [\"127.0.0.1:2\"]\n\n\
         [admin]\nsocket_group = \"no-such-group-xyz\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("s.toml:8:16: [admin] socket_group: no group `no-such-group-xyz`"),
        "{stderr}"
    );
}
