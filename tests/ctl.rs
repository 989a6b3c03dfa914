//! `switchyard ctl` for scripts, on the real binary against a real proxy: exit codes, one JSON
//! document on stdout with `--json` whatever happened, and the SWITCHYARD_* environment.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Runs `ctl ARGS` with only `env` from the SWITCHYARD_* family set (the test's own environment
/// must not leak in).
fn ctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.arg("ctl").args(args);
    for v in ["SWITCHYARD_SOCKET", "SWITCHYARD_URL", "SWITCHYARD_TOKEN"] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--socket", socket.to_str().unwrap()];
    all.extend_from_slice(args);
    ctl_env(&all, &[])
}

/// stdout as one JSON document (panics, showing both streams, if it is not).
fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_json_on_every_outcome() {
    let (_blue, _green, proxy) = two_pools().await;
    let sock = proxy.socket();

    // 0: done, the answer on stdout.
    let out = ctl(&sock, &["--json", "canary", "green", "0.25"]);
    assert_eq!(out.status.code(), Some(0));
    let a = json_of(&out);
    assert_eq!((&a["canary_bp"], &a["changed"]), (&json!(25), &json!(true)));

    // 1: refused by the proxy; the answer, with its HTTP status, on stdout.
    let out = ctl(&sock, &["--json", "flip", "purple"]);
    assert_eq!(out.status.code(), Some(1));
    let a = json_of(&out);
    assert_eq!(
        (&a["code"], &a["http_status"]),
        (&json!("unknown_pool"), &json!(404))
    );
    assert!(a["error"]
        .as_str()
        .unwrap()
        .contains("unknown pool `purple`"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown pool `purple`"));
    let out = ctl(&sock, &["--json", "abort"]);
    assert_eq!(out.status.code(), Some(1), "a 409 is a refusal");
    let a = json_of(&out);
    assert_eq!(
        (&a["code"], &a["http_status"]),
        (&json!("no_rollout"), &json!(409))
    );

    // 2: usage, still JSON.
    let out = ctl(&sock, &["--json", "canary", "green", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    let a = json_of(&out);
    assert_eq!(a["code"], "usage");
    assert!(a["error"]
        .as_str()
        .unwrap()
        .starts_with("canary percent `lots`"));

    // 3: unreachable.
    let nope = proxy.dir.path().join("nope.sock");
    let out = ctl(&nope, &["--json", "status"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json_of(&out)["code"], "unreachable");
    let out = ctl(&nope, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is switchyard running?"));

    assert_eq!(
        proxy.switchboard.state().generation,
        1,
        "only the canary changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_json_has_structured_routes_and_floats_are_rounded() {
    let (_blue, _green, proxy) = two_pools().await;
    let sock = proxy.socket();
    assert_eq!(
        ctl(&sock, &["canary", "green", "0.25"]).status.code(),
        Some(0)
    );
    assert_eq!(ctl(&sock, &["flip", "green"]).status.code(), Some(0));
    let out = ctl(&sock, &["--json", "history", "-n", "5"]);
    assert_eq!(out.status.code(), Some(0));
    let h = json_of(&out);
    assert_eq!(h.as_array().unwrap().len(), 2);
    assert_eq!(h[0]["action"], "flip");
    assert_eq!(
        h[0]["from"],
        json!({"primary": "blue", "canary_pool": "green", "canary_bp": 25})
    );
    assert_eq!(
        h[0]["to"],
        json!({"primary": "green", "canary_pool": null, "canary_bp": 0})
    );
    assert_eq!(h[0]["from_text"], "blue + green 0.25%");
    assert_eq!(
        h[1]["from"],
        json!({"primary": "blue", "canary_pool": null, "canary_bp": 0})
    );

    // Some traffic so that status has rates and latencies, then no number in the document may
    // carry more than 6 decimals.
    for _ in 0..20 {
        assert_eq!(get(proxy.addr, "/").await.text(), "green");
    }
    // Status counts completed seconds only: wait for the second that saw them to end.
    let text = wait_for(
        "status to show the requests' latency",
        READY_DEADLINE,
        || {
            let out = ctl(&sock, &["--json", "status"]);
            async move {
                assert_eq!(out.status.code(), Some(0));
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let a: Value = serde_json::from_str(&text).unwrap();
                a["pools"]["green"]["p99_ms"].is_number().then_some(text)
            }
        },
    )
    .await;
    for token in text.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-')) {
        if let Some((_, frac)) = token.split_once('.') {
            assert!(frac.len() <= 6, "`{token}` is not rounded in\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_print_json_on_success_and_on_timeout() {
    let (blue, _green, proxy) = two_pools().await;
    let sock = proxy.socket();

    let out = ctl(&sock, &["--json", "wait-ready", "--timeout", "5s"]);
    assert_eq!(out.status.code(), Some(0));
    let a = json_of(&out);
    assert_eq!(a["ready"], json!(["blue"]));
    assert!(a["waited_ms"].is_u64());

    let out = ctl(
        &sock,
        &["--json", "wait-drained", "green", "--timeout", "10s"],
    );
    assert_eq!(out.status.code(), Some(0));
    let a = json_of(&out);
    assert_eq!((&a["pool"], &a["drained"]), (&json!("green"), &json!(true)));

    let out = ctl(
        &sock,
        &["--json", "wait-drained", "blue", "--timeout", "1s"],
    );
    assert_eq!(out.status.code(), Some(1));
    let a = json_of(&out);
    assert_eq!(
        (&a["code"], &a["weight_bp"]),
        (&json!("still_serving"), &json!(10000))
    );

    blue.set_healthy(false);
    let sb = proxy.switchboard.clone();
    wait_for("blue to be seen unhealthy", READY_DEADLINE, || {
        let down = sb.load().pools[0].healthy_count() == 0;
        async move { down.then_some(()) }
    })
    .await;
    let out = ctl(
        &sock,
        &["--json", "wait-ready", "blue", "--timeout", "200ms"],
    );
    assert_eq!(out.status.code(), Some(1));
    let a = json_of(&out);
    assert_eq!(a["code"], "not_ready");
    assert_eq!(
        a["pools"]["blue"],
        json!({"ready": false, "healthy": 0, "backends": 1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_names_the_proxy_and_the_token() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let tokdir = tempfile::tempdir().unwrap();
    let tokfile = tokdir.path().join("admin.token");
    std::fs::write(&tokfile, "ci:t0ken-for-ci\nviewer:read:v13w\n").unwrap();
    let port = free_port();
    let toml = format!(
        "{}\n[admin]\nsocket = \"{}/admin.sock\"\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
        pools_toml(&[blue.addr], &[green.addr]),
        tokdir.path().display(),
        tokfile.display()
    );
    let proxy = Proxy::start_raw(&toml).await;
    let sock = proxy.socket();
    let sock = sock.to_str().unwrap();
    let url = format!("http://127.0.0.1:{port}");

    let out = ctl_env(&["--json", "status"], &[("SWITCHYARD_SOCKET", sock)]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json_of(&out)["primary"], "blue");

    let env = [
        ("SWITCHYARD_URL", url.as_str()),
        ("SWITCHYARD_TOKEN", "t0ken-for-ci"),
    ];
    let out = ctl_env(&["--json", "flip", "green"], &env);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json_of(&out)["primary"], "green");
    let out = ctl_env(&["--json", "history", "-n", "1"], &env);
    assert_eq!(
        json_of(&out)[0]["actor"]
            .as_str()
            .unwrap()
            .split(' ')
            .next(),
        Some("token:ci")
    );

    // A flag wins over the environment.
    let out = ctl_env(&["--socket", sock, "status"], &env);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // 3: the proxy does not accept the token.
    let out = ctl_env(
        &["--json", "status"],
        &[
            ("SWITCHYARD_URL", url.as_str()),
            ("SWITCHYARD_TOKEN", "wrong"),
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let a = json_of(&out);
    assert_eq!(
        (&a["code"], &a["http_status"]),
        (&json!("unauthorized"), &json!(401))
    );

    // 1: a read token is understood, and refused a change.
    let out = ctl_env(
        &["--json", "flip", "blue"],
        &[
            ("SWITCHYARD_URL", url.as_str()),
            ("SWITCHYARD_TOKEN", "v13w"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_of(&out)["code"], "forbidden");

    // 2: a URL without a token, or both targets in the environment.
    let out = ctl_env(&["--json", "status"], &[("SWITCHYARD_URL", url.as_str())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(json_of(&out)["error"]
        .as_str()
        .unwrap()
        .contains("SWITCHYARD_TOKEN"));
    let out = ctl_env(
        &["status"],
        &[
            ("SWITCHYARD_URL", url.as_str()),
            ("SWITCHYARD_SOCKET", sock),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unset one"));

    assert_eq!(proxy.switchboard.state().generation, 1);
}
