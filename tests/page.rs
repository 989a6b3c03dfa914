//! The status page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `./dev test`) driven over the DevTools protocol. The page must load without a console error,
//! follow a flip made through the admin API within 3 s without a reload, show a guard rollback
//! (the breach and its history entry), and fit a phone's width.
//!
//! Screenshots go to the target directory (`status-page.png`, `status-page-phone.png`) as
//! artifacts of the run.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// The flags the issue asks for: no GPU, no sandbox (root in CI), nothing fetched from Google.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1200,1000",
];

/// Finds Chromium, or says how to get it.
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        if let Ok(out) = Command::new("which").arg(name).output() {
            if out.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            }
        }
    }
    panic!(
        "chromium is required by tests/page.rs and was not found; install it \
         (`apt-get install chromium`, which `./dev test` does as root)"
    );
}

/// A headless Chromium and one page in it, driven over the DevTools protocol.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    /// Console errors, uncaught exceptions and failed loads seen so far.
    errors: Vec<String>,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(chromium())
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // Chromium prints "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID".
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium did not print its DevTools address within 30 s");
        let hostport = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port")
            .to_string();
        let stream = TcpStream::connect(&hostport).expect("connect to DevTools");
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools handshake");
        // From here on a read returns within 200 ms, so waits can check their deadlines.
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = Browser {
            child,
            _profile: profile,
            ws,
            session: String::new(),
            next_id: 0,
            errors: Vec::new(),
        };
        let target = b.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().expect("sessionId").into();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            b.page(domain, json!({}));
        }
        b
    }

    /// Sends one command and waits for its answer, collecting error events meanwhile.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .expect("send to DevTools");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no answer to {method} in 30 s");
            let Some(v) = self.read() else { continue };
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// One message, if one arrives soon; error events are recorded.
    fn read(&mut self) -> Option<Value> {
        let msg = match self.ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(_) => return None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("DevTools connection failed: {e}"),
        };
        let v: Value = serde_json::from_str(msg.as_str()).expect("DevTools sends JSON");
        match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                self.errors
                    .push(format!("console.error: {}", v["params"]["args"]));
            }
            Some("Runtime.exceptionThrown") => {
                self.errors
                    .push(format!("exception: {}", v["params"]["exceptionDetails"]));
            }
            Some("Log.entryAdded") if v["params"]["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {}", v["params"]["entry"]));
            }
            _ => {}
        }
        Some(v)
    }

    /// Evaluates `expr` in the page and returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.page(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    fn text(&mut self, id: &str) -> String {
        let v = self.eval(&format!(
            "(function(){{var e=document.getElementById('{id}');return e?e.textContent:null}})()"
        ));
        v.as_str().unwrap_or("").to_string()
    }

    /// Polls `expr` until it is true, within `deadline`; returns how long it took.
    fn wait(&mut self, what: &str, expr: &str, deadline: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.eval(expr) == json!(true) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < deadline,
                "the page did not show {what} within {deadline:?}; body: {}",
                self.eval("document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self.page("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps requests flowing through the proxy until stopped.
fn load(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        while !stop.load(Ordering::SeqCst) {
            let _ = client.get("/").await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_follows_flips_and_shows_a_guard_rollback() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let toml = format!(
        "{}\n[routing]\nsticky = \"none\"\n\
         [guard]\nwindow = \"3s\"\nmin_requests = 30\nmax_error_ratio = 0.05\n\
         watch_after_flip = \"60s\"\nmin_duration = \"0s\"\n",
        pools_toml(&[blue.addr], &[green.addr]),
    );
    let proxy = Proxy::start(&toml).await;
    let page_url = format!(
        "http://{}/",
        proxy
            .config
            .metrics
            .listen
            .expect("the harness sets a metrics listener")
    );
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(proxy.addr, stop.clone());

    let mut b = tokio::task::block_in_place(|| {
        let mut b = Browser::start();
        b.page("Page.navigate", json!({"url": page_url}));
        b.wait(
            "blue live",
            "document.getElementById('live').textContent === 'blue'",
            Duration::from_secs(10),
        );
        b
    });
    assert_eq!(b.text("pipeline"), "Pipeline clear");
    assert_eq!(b.text("canary"), "none");
    // Both pools are listed with their backends.
    let healthy = b.eval(
        "Array.from(document.querySelectorAll('.pool .healthy')).map(e => e.textContent).join('|')",
    );
    assert_eq!(
        healthy,
        json!("healthy backends: 1 of 1|healthy backends: 1 of 1")
    );

    // A flip through the admin API: the page follows without a reload.
    tokio::task::block_in_place(|| {
        b.eval("window.__loaded_once = true");
    });
    proxy.flip("green").await;
    let took = tokio::task::block_in_place(|| {
        b.wait(
            "green live",
            "document.getElementById('live').textContent === 'green'",
            Duration::from_secs(3),
        )
    });
    tokio::task::block_in_place(|| {
        assert_eq!(
            b.eval("window.__loaded_once === true"),
            json!(true),
            "the page was reloaded"
        );
        assert!(
            b.text("pipeline-detail")
                .contains("guard watching green after a flip"),
            "{}",
            b.text("pipeline-detail")
        );
        b.wait(
            "the flip in the history",
            "(function(){var r=document.querySelector('#history tr');\
             return !!r && r.getAttribute('data-action')==='flip' && r.textContent.indexOf('blue → green')>=0})()",
            Duration::from_secs(3),
        );
    });
    println!("the page showed green live {took:?} after the flip");

    // Green fails every request: the guard rolls it back, and the page says so.
    green.fail_every(1);
    tokio::task::block_in_place(|| {
        b.wait(
            "blue live again after the guard's rollback",
            "document.getElementById('live').textContent === 'blue'",
            Duration::from_secs(15),
        );
        b.wait(
            "the breach and the guard's history entry",
            "(function(){var v=document.getElementById('guard-verdict');\
             var r=document.querySelector('#history tr');\
             return !!v && v.textContent==='breach' && !!r && r.getAttribute('data-action')==='rollback'})()",
            Duration::from_secs(3),
        );
    });
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    tokio::task::block_in_place(|| {
        let breach = b.text("guard-breach");
        assert!(breach.starts_with("green: error ratio"), "{breach}");
        let row = b.eval("document.querySelector('#history tr').textContent");
        let row = row.as_str().unwrap();
        assert!(row.contains("rollback: green → blue"), "{row}");
        assert!(row.contains("guard"), "{row}");
        assert!(row.contains("green: error ratio"), "{row}");
        // The chart has drawn the traffic: a non-flat line for the pools that served it.
        let drawn = b.eval(
            "Array.from(document.querySelectorAll('.pool svg path')).filter(p => \
             p.getAttribute('d').split(/[ML]/).filter(Boolean).some(s => \
             parseFloat(s.trim().split(' ')[1]) < 57)).length",
        );
        assert!(drawn.as_u64().unwrap() >= 2, "chart paths drawn: {drawn}");

        let shot = b.screenshot("status-page.png");
        println!("screenshot: {}", shot.display());

        // On a phone: nothing wider than the screen.
        b.page(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
        );
        b.wait(
            "the page to fit 390 px",
            "document.documentElement.scrollWidth <= 390",
            Duration::from_secs(3),
        );
        let shot = b.screenshot("status-page-phone.png");
        println!("screenshot: {}", shot.display());

        // Drain any events still queued, then: not one console error in the whole session.
        while b.read().is_some() {}
        assert!(b.errors.is_empty(), "console errors: {:#?}", b.errors);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_snapshot_hold_nothing_secret() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("preview.token");
    std::fs::write(&token, "preview-secret-0123456789abcdef\n").unwrap();
    let toml = format!(
        "{}\n[routing]\npreview_token_file = \"{}\"\n",
        pools_toml(&[blue.addr], &[green.addr]),
        token.display()
    );
    let proxy = Proxy::start(&toml).await;
    proxy.flip("green").await;
    let metrics = proxy.config.metrics.listen.unwrap();
    let page = get(metrics, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.text().starts_with("<!doctype html>"));
    // Self-contained: nothing fetched from elsewhere (the SVG namespace is a name, not a fetch).
    let text = page.text().replace("http://www.w3.org/2000/svg", "");
    for outside in ["http://", "https://", "//cdn", "src=\"", "@import"] {
        assert!(!text.contains(outside), "the page refers to {outside}");
    }
    let snap = get(metrics, "/status.json").await;
    assert_eq!(snap.status, 200);
    let v: Value = serde_json::from_str(&snap.text()).unwrap();
    assert_eq!(v["status"]["primary"], "green");
    assert_eq!(v["pipeline"]["clear"], false);
    assert_eq!(v["history"][0]["action"], "flip");
    assert_eq!(v["chart"]["step_s"], 15);
    assert_eq!(v["chart"]["pools"]["blue"].as_array().unwrap().len(), 60);
    assert!(!snap.text().contains("preview-secret"), "{}", snap.text());
    assert!(!snap.text().contains("sy_preview="), "{}", snap.text());
    // Read-only: a POST changes nothing and is not served.
    let r = Client::connect(metrics)
        .await
        .send(request("POST", "/status.json", ""))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
}
