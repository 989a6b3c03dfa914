//! Canary weighting end to end: sticky cookies, monotonic growth, the split without a key, and
//! the preview override.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use serde_json::json;

async fn canary(proxy: &Proxy, percent: f64) {
    let (s, a) = admin(
        &proxy.socket(),
        "POST",
        "/v1/canary",
        Some(json!({"pool": "green", "percent": percent})),
    )
    .await;
    assert_eq!(s, 200, "{a}");
}

/// A GET carrying `cookie` (if any).
async fn get_with(client: &mut Client, headers: &[(&str, &str)]) -> Reply {
    let mut req = request("GET", "/", Bytes::new());
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    client.send(req).await.expect("request through the proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cookie_clients_stay_on_one_colour_and_raising_the_weight_keeps_them() {
    let (_blue, _green, proxy) = two_pools().await;
    let proxy = Arc::new(proxy);
    canary(&proxy, 10.0).await;

    const CLIENTS: usize = 2_000;
    const WORKERS: usize = 40;
    // Phase 1, at 10 %: each client's first request gets a cookie, then 9 more with it.
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut seen = Vec::new();
            for _ in (w..CLIENTS).step_by(WORKERS) {
                let first = get_with(&mut client, &[]).await;
                let set = first.headers["set-cookie"].to_str().unwrap().to_string();
                for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="] {
                    assert!(set.contains(attr), "{set}");
                }
                let cookie = set.split(';').next().unwrap().to_string();
                assert!(cookie.starts_with("sy_uid="));
                let colour = first.text();
                for _ in 0..9 {
                    let r = get_with(&mut client, &[("cookie", &cookie)]).await;
                    assert_eq!(r.text(), colour, "a client must see one colour");
                    assert!(
                        r.headers.get("set-cookie").is_none(),
                        "the cookie is set once"
                    );
                }
                seen.push((cookie, colour));
            }
            seen
        }));
    }
    let mut clients: HashMap<String, String> = HashMap::new();
    for t in tasks {
        clients.extend(t.await.unwrap());
    }
    assert_eq!(clients.len(), CLIENTS, "every client got its own id");
    let on_canary = clients.values().filter(|c| *c == "green").count();
    let share = on_canary as f64 / CLIENTS as f64;
    assert!((share - 0.10).abs() <= 0.025, "share at 10%: {share}");

    // Phase 2, at 30 %: every canary client stays; the share grows to about 30 %.
    canary(&proxy, 30.0).await;
    let clients = Arc::new(clients.into_iter().collect::<Vec<_>>());
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (addr, clients) = (proxy.addr, clients.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut green = 0;
            for (cookie, before) in clients.iter().skip(w).step_by(WORKERS) {
                let now = get_with(&mut client, &[("cookie", cookie)]).await.text();
                if before == "green" {
                    assert_eq!(
                        now, "green",
                        "raising the weight moved a canary client back"
                    );
                }
                green += usize::from(now == "green");
            }
            green
        }));
    }
    let mut green_now = 0;
    for t in tasks {
        green_now += t.await.unwrap();
    }
    let share = green_now as f64 / CLIENTS as f64;
    assert!((share - 0.30).abs() <= 0.025, "share at 30%: {share}");

    let m = scrape(&proxy).await;
    assert_eq!(
        sample(&m, "switchyard_pool_weight_bp", &[("pool", "green")]),
        Some(3000.0)
    );
    assert_eq!(
        sample(&m, "switchyard_pool_weight_bp", &[("pool", "blue")]),
        Some(7000.0)
    );
    assert_eq!(
        sample(&m, "switchyard_primary", &[("pool", "blue")]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_keeps_each_user_on_one_colour() {
    let (_blue, _green, proxy) = two_pools_with("[routing]\nsticky = \"header:x-user-id\"\n").await;
    canary(&proxy, 20.0).await;
    let mut client = Client::connect(proxy.addr).await;
    let mut green_users = 0;
    for user in 0..500 {
        let id = format!("user-{user}");
        let first = get_with(&mut client, &[("x-user-id", &id)]).await;
        assert!(
            first.headers.get("set-cookie").is_none(),
            "no cookie in header mode"
        );
        for _ in 0..3 {
            assert_eq!(
                get_with(&mut client, &[("x-user-id", &id)]).await.text(),
                first.text()
            );
        }
        green_users += usize::from(first.text() == "green");
    }
    let share = green_users as f64 / 500.0;
    assert!((share - 0.20).abs() <= 0.06, "share at 20%: {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_split_tracks_the_weight_closely() {
    let (_blue, green, proxy) = two_pools_with("[routing]\nsticky = \"none\"\n").await;
    canary(&proxy, 12.34).await;
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..10_000 {
        let r = client.get("/").await.unwrap();
        assert!(r.headers.get("set-cookie").is_none());
    }
    let share = green.hits() as f64 / 10_000.0;
    assert!(
        (share - 0.1234).abs() <= 0.005,
        "share over 10 000 requests at 12.34%: {share}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_reaches_the_idle_pool_only_with_a_valid_token() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let tokdir = tempfile::tempdir().unwrap();
    let token = tokdir.path().join("preview.token");
    std::fs::write(&token, "let-me-see-green\n").unwrap();
    let toml = format!(
        "{}\n[routing]\npreview_token_file = \"{}\"\n",
        pools_toml(&[blue.addr], &[green.addr]),
        token.display()
    );
    let proxy = Proxy::start(&toml).await;
    let mut client = Client::connect(proxy.addr).await;

    // Green is idle (0 %), and the token takes a request there.
    let ok = [
        ("x-switchyard-pool", "green"),
        ("x-switchyard-preview-token", "let-me-see-green"),
    ];
    for _ in 0..3 {
        let r = get_with(&mut client, &ok).await;
        assert_eq!((r.text().as_str(), r.pool()), ("green", Some("green")));
    }
    // A wrong or missing token is ignored (and counted).
    let wrong = [
        ("x-switchyard-pool", "green"),
        ("x-switchyard-preview-token", "let-me-see-gree"),
    ];
    assert_eq!(get_with(&mut client, &wrong).await.text(), "blue");
    assert_eq!(
        get_with(&mut client, &[("x-switchyard-pool", "green")])
            .await
            .text(),
        "blue"
    );
    let m = scrape(&proxy).await;
    assert_eq!(
        sample(&m, "switchyard_preview_rejected_total", &[]),
        Some(2.0)
    );

    // Browsers: a signed cookie from the admin API.
    let (s, a) = admin(
        &proxy.socket(),
        "POST",
        "/v1/preview-cookie",
        Some(json!({"pool": "green"})),
    )
    .await;
    assert_eq!(s, 200, "{a}");
    let cookie = a["cookie"].as_str().unwrap().to_string();
    assert!(cookie.starts_with("sy_preview=green."));
    assert_eq!(
        get_with(&mut client, &[("cookie", &cookie)]).await.text(),
        "green"
    );
    // A signature is for one pool, and any change to it is refused.
    let (_, b) = admin(
        &proxy.socket(),
        "POST",
        "/v1/preview-cookie",
        Some(json!({"pool": "blue"})),
    )
    .await;
    let forged = b["cookie"]
        .as_str()
        .unwrap()
        .replace("sy_preview=blue.", "sy_preview=green.");
    assert_eq!(
        get_with(&mut client, &[("cookie", &forged)]).await.text(),
        "blue"
    );
    let last = if cookie.ends_with('0') { "1" } else { "0" };
    let tampered = format!("{}{last}", &cookie[..cookie.len() - 1]);
    assert_eq!(
        get_with(&mut client, &[("cookie", &tampered)]).await.text(),
        "blue"
    );

    // The upstreams never saw either header.
    for up in [&blue, &green] {
        for seen in up.seen.lock().unwrap().iter() {
            assert!(seen.headers.get("x-switchyard-pool").is_none());
            assert!(seen.headers.get("x-switchyard-preview-token").is_none());
        }
    }
    assert_eq!(green.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_cookies_need_preview_configured() {
    let (_blue, _green, proxy) = two_pools().await;
    let (s, a) = admin(
        &proxy.socket(),
        "POST",
        "/v1/preview-cookie",
        Some(json!({"pool": "green"})),
    )
    .await;
    assert_eq!((s, a["code"].as_str()), (409, Some("preview_off")));
    let r = get(proxy.addr, "/").await;
    assert_eq!(r.text(), "blue");
}
