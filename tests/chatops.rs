//! Deploys from chat: signed slash commands on `[chatops] listen`, against a real proxy.
//! Every refusal must leave the state, the state file and history exactly as they were.

mod common;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;
use switchyard::chatops::SigningSecret;

const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";

struct Chat {
    addr: SocketAddr,
    secret: SigningSecret,
}

impl Chat {
    fn form(user: &str, text: &str) -> String {
        serde_urlencoded::to_string([
            ("token", "deprecated-verification-token"),
            ("team_id", "T1"),
            ("user_id", user),
            ("user_name", "someone"),
            ("command", "/deploy"),
            ("text", text),
            ("response_url", "https://hooks.example/commands/1"),
        ])
        .unwrap()
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// POSTs `body` with the given timestamp and signature: `(status, body)`.
    async fn raw(&self, body: &str, ts: &str, sig: &str) -> (u16, String) {
        let mut req = request("POST", "/slack/commands", body.to_string());
        let h = req.headers_mut();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        h.insert("x-slack-request-timestamp", ts.parse().unwrap());
        h.insert("x-slack-signature", sig.parse().unwrap());
        let r = Client::connect(self.addr).await.send(req).await.unwrap();
        (r.status, r.text())
    }

    /// A correctly signed command from `user`.
    async fn say(&self, user: &str, text: &str) -> (u16, String) {
        let body = Chat::form(user, text);
        let ts = Chat::now().to_string();
        let sig = self.secret.sign(&ts, body.as_bytes());
        self.raw(&body, &ts, &sig).await
    }
}

fn answer(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (
        v["response_type"].as_str().unwrap().to_string(),
        v["text"].as_str().unwrap().to_string(),
    )
}

/// Everything a refusal must leave alone.
fn snapshot(proxy: &Proxy) -> (switchyard::routing::RouteState, Vec<u8>, Vec<u8>) {
    let state = proxy.dir.path().join("state");
    (
        proxy.switchboard.state(),
        std::fs::read(state.join("state.json")).unwrap(),
        std::fs::read(state.join("history.jsonl")).unwrap_or_default(),
    )
}

async fn refused(proxy: &Proxy, reason: &str) -> f64 {
    let m = scrape(proxy).await;
    sample(
        &m,
        "switchyard_chatops_refused_total",
        &[("reason", reason)],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_commands_from_listed_users_deploy_and_everything_else_is_refused() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("signing-secret");
    std::fs::write(&secret_file, [SECRET, b"\n"].concat()).unwrap();
    let port = free_port();
    let toml = format!(
        "{}\n[chatops]\nlisten = \"127.0.0.1:{port}\"\nsigning_secret_file = \"{}\"\n\
         [chatops.users]\nU024BE7LH = \"alice\"\n",
        pools_toml(&[blue.addr], &[green.addr]),
        secret_file.display()
    );
    let proxy = Proxy::start(&toml).await;
    let chat = Chat {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        secret: SigningSecret::from_bytes(SECRET),
    };

    // status: answered in the channel.
    let (code, body) = chat.say("U024BE7LH", "status").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        answer(&body),
        (
            "in_channel".into(),
            "blue is live (generation 0); pipeline clear".into()
        )
    );

    // A signed flip from alice: applied, recorded as chat:alice with the reason.
    let body = Chat::form("U024BE7LH", "flip green because release 42");
    let ts = Chat::now().to_string();
    let sig = chat.secret.sign(&ts, body.as_bytes());
    let (code, reply) = chat.raw(&body, &ts, &sig).await;
    assert_eq!(code, 200, "{reply}");
    let (kind, text) = answer(&reply);
    assert_eq!(kind, "in_channel");
    assert!(
        text.starts_with("green is live (was blue) — by chat:alice: 'release 42' — gen 1 on "),
        "{text}"
    );
    assert_eq!(proxy.switchboard.state().primary, 1);
    let (_, h) = admin(&proxy.socket(), "GET", "/v1/history?limit=1", None).await;
    assert_eq!(h[0]["actor"], "chat:alice");
    assert_eq!(h[0]["reason"], "release 42");

    let before = snapshot(&proxy);

    // The same request again (a replay, within the time window): refused.
    let (code, _) = chat.raw(&body, &ts, &sig).await;
    assert_eq!(code, 401);
    assert_eq!(refused(&proxy, "replayed").await, 1.0);

    // Signed with another secret: refused.
    let rollback = Chat::form("U024BE7LH", "rollback");
    let ts = Chat::now().to_string();
    let forged = SigningSecret::from_bytes(b"not the secret").sign(&ts, rollback.as_bytes());
    let (code, _) = chat.raw(&rollback, &ts, &forged).await;
    assert_eq!(code, 401);
    // A signature for another body: refused.
    let other = chat
        .secret
        .sign(&ts, Chat::form("U024BE7LH", "status").as_bytes());
    let (code, _) = chat.raw(&rollback, &ts, &other).await;
    assert_eq!(code, 401);
    assert_eq!(refused(&proxy, "bad_signature").await, 2.0);

    // Correctly signed, but six minutes old: refused.
    let old = (Chat::now() - 360).to_string();
    let sig = chat.secret.sign(&old, rollback.as_bytes());
    let (code, _) = chat.raw(&rollback, &old, &sig).await;
    assert_eq!(code, 401);
    assert_eq!(refused(&proxy, "stale_timestamp").await, 1.0);

    // Correctly signed, from a user not in [chatops.users]: refused, told why.
    let (code, reply) = chat.say("UMALLORY", "rollback").await;
    assert_eq!(code, 200);
    let (kind, text) = answer(&reply);
    assert_eq!(kind, "ephemeral");
    assert!(
        text.contains("UMALLORY") && text.contains("[chatops.users]"),
        "{text}"
    );
    assert_eq!(refused(&proxy, "unknown_user").await, 1.0);

    // Nonsense, and a change the admin handler refuses: told why, nothing changed.
    let (_, reply) = chat.say("U024BE7LH", "deploy everything").await;
    let (kind, text) = answer(&reply);
    assert_eq!(kind, "ephemeral");
    assert!(text.contains("usage: /deploy status"), "{text}");
    let (_, reply) = chat.say("U024BE7LH", "canary green 5").await;
    let (kind, text) = answer(&reply);
    assert_eq!(kind, "ephemeral");
    assert!(
        text.contains("refused, nothing changed: green is the primary pool"),
        "{text}"
    );
    assert_eq!(refused(&proxy, "bad_command").await, 1.0);
    assert_eq!(refused(&proxy, "refused").await, 1.0);

    assert_eq!(snapshot(&proxy), before, "a refusal changed the state");

    // canary and rollback from chat.
    let (_, reply) = chat
        .say("U024BE7LH", "canary blue 5 because check the old build")
        .await;
    let (kind, text) = answer(&reply);
    assert_eq!(kind, "in_channel", "{text}");
    assert!(
        text.starts_with("green is live, blue gets 5% (was green)"),
        "{text}"
    );
    assert_eq!(proxy.switchboard.state().canary_bp, 500);
    let (_, reply) = chat.say("U024BE7LH", "rollback").await;
    let (_, text) = answer(&reply);
    assert!(
        text.starts_with("rolled back: green (was green + blue 5%)"),
        "{text}"
    );
    assert_eq!(proxy.switchboard.state().canary_bp, 0);

    let m = scrape(&proxy).await;
    for (c, n) in [
        ("status", 1.0),
        ("flip", 1.0),
        ("canary", 1.0),
        ("rollback", 1.0),
    ] {
        assert_eq!(
            sample(&m, "switchyard_chatops_commands_total", &[("command", c)]),
            Some(n),
            "{c}"
        );
    }
}

#[test]
fn a_missing_secret_file_is_a_located_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let text = "[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n[pools.green]\nbackends = \
                [\"127.0.0.1:2\"]\n[chatops]\nlisten = \"127.0.0.1:9999\"\n\
                signing_secret_file = \"/nonexistent/secret\"\n[chatops.users]\nU1 = 7\n";
    std::fs::write(&path, text).unwrap();
    let all = switchyard::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(all.contains("switchyard.toml:7:"), "{all}");
    assert!(
        all.contains("[chatops] signing_secret_file: cannot read /nonexistent/secret"),
        "{all}"
    );
    assert!(all.contains("switchyard.toml:9:"), "{all}");
    assert!(all.contains("U1"), "{all}");
}
