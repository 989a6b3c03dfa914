//! Test harness: real upstream servers on ephemeral ports, a real switchyard started in-process
//! from a TOML string with its own temporary directory, and a small HTTP client.
//!
//! Readiness is always polled with a deadline, never slept for.

#![allow(dead_code)]

pub mod dns;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use switchyard::config::Config;
use switchyard::httpd::{self, Listener};
use switchyard::routing::Switchboard;
use switchyard::server::{RunMode, ShutdownTrigger, Switchyard};

/// How long anything in a test may take to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(15);

/// Polls `f` until it returns `Some`, or panics after `deadline` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port that was free a moment ago. Only for the proxy's own listener, which pingora binds by
/// address (it cannot report the port it got for port 0, pingora#988); upstreams bind port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A response body sent as separate chunks, so hyper frames it with `Transfer-Encoding: chunked`.
pub struct Chunks(VecDeque<Bytes>);

impl Chunks {
    pub fn new(chunks: Vec<Bytes>) -> Chunks {
        Chunks(chunks.into())
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::default()
    }
}

/// Behaviour a test can change while an upstream runs.
pub struct Knobs {
    pub healthy: std::sync::atomic::AtomicBool,
    pub fail_every: AtomicUsize,
    /// Milliseconds to wait before answering a request (not health checks).
    pub delay_ms: AtomicUsize,
    /// When each passing health check arrived, in order.
    pub checks_passed: Mutex<Vec<Instant>>,
}

impl Upstream {
    /// Makes `/healthz` pass or fail from now on.
    pub fn set_healthy(&self, healthy: bool) {
        self.knobs.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Waits `ms` before answering each request from now on.
    pub fn delay(&self, ms: usize) {
        self.knobs.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Answers 500 to every `n`th request from now on (0: never).
    pub fn fail_every(&self, n: usize) {
        self.knobs.fail_every.store(n, Ordering::SeqCst);
    }
}

/// Either body a test upstream answers with.
pub type AnyBody = http_body_util::Either<Full<Bytes>, Chunks>;

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When the request arrived.
    pub at: Instant,
    /// The proxy's end of the connection it came on (the same for a reused pooled connection).
    pub peer: Option<SocketAddr>,
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body_len: usize,
}

/// A real HTTP/1.1 upstream on an ephemeral loopback port, answering with its name.
///
/// Paths: `/` (and anything else) answers the name; `/echo` answers the request body;
/// `/bytes/N` answers N bytes; `/chunked/N` answers N bytes in 16 KiB chunks without a length;
/// `/status/N` answers status N; `/slow/MS` answers after MS milliseconds; `/healthz` answers ok.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Knobs: whether `/healthz` passes, and "answer 500 to every Nth request" (0 = never).
    pub knobs: Arc<Knobs>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Upstream {
    /// Starts an upstream on the current tokio runtime.
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts an upstream at `addr` (e.g. another loopback address with a port already chosen,
    /// for several backends behind one DNS name and port).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Upstream {
        let listener = Listener::bind_tcp(addr).expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let knobs = Arc::new(Knobs {
            healthy: std::sync::atomic::AtomicBool::new(true),
            fail_every: AtomicUsize::new(0),
            delay_ms: AtomicUsize::new(0),
            checks_passed: Mutex::new(Vec::new()),
        });
        let (n, h, s, k) = (name.to_string(), hits.clone(), seen.clone(), knobs.clone());
        tokio::spawn(httpd::serve(
            listener,
            move |req, peer: httpd::Peer| {
                upstream_handler(n.clone(), h.clone(), s.clone(), k.clone(), peer.addr, req)
            },
            rx,
        ));
        Upstream {
            name: name.to_string(),
            addr,
            hits,
            seen,
            knobs,
            shutdown: tx,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// When each passing health check arrived.
    pub fn checks_passed(&self) -> Vec<Instant> {
        self.knobs.checks_passed.lock().unwrap().clone()
    }

    /// When each proxied request arrived.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.seen.lock().unwrap().iter().map(|s| s.at).collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn full(status: u16, body: impl Into<Bytes>) -> Response<AnyBody> {
    Response::builder()
        .status(status)
        .body(http_body_util::Either::Left(Full::new(body.into())))
        .unwrap()
}

async fn upstream_handler(
    name: String,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    knobs: Arc<Knobs>,
    peer: Option<SocketAddr>,
    mut req: Request<Incoming>,
) -> Response<AnyBody> {
    let at = Instant::now();
    let path = req.uri().path().to_string();
    if path == "/upgrade" {
        // Switch protocols and echo whatever arrives afterwards.
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        hits.fetch_add(1, Ordering::SeqCst);
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(http_body_util::Either::Left(Full::new(Bytes::new())))
            .unwrap();
    }
    let method = req.method().to_string();
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return full(400, "bad body"),
    };
    if path == "/healthz" {
        return if knobs.healthy.load(Ordering::SeqCst) {
            knobs.checks_passed.lock().unwrap().push(at);
            full(200, "ok")
        } else {
            full(503, "unhealthy")
        };
    }
    let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
    seen.lock().unwrap().push(Seen {
        at,
        peer,
        method,
        path: path.clone(),
        headers,
        body_len: body.len(),
    });
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (verb, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let num = arg.parse::<usize>().unwrap_or(0);
    let delay = knobs.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let every = knobs.fail_every.load(Ordering::SeqCst);
    if every > 0 && n.is_multiple_of(every) {
        return full(500, format!("{name} failed"));
    }
    match verb {
        "echo" => full(200, body),
        "bytes" => full(200, pattern(num)),
        "chunked" => {
            let data = pattern(num);
            let chunks = data.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
            Response::builder()
                .status(200)
                .body(http_body_util::Either::Right(Chunks::new(chunks)))
                .unwrap()
        }
        "status" => full(num as u16, name),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(num as u64)).await;
            full(200, name)
        }
        _ => full(200, name),
    }
}

/// `n` bytes of a recognisable, non-repeating-at-small-scale pattern.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i % 251) as u8 ^ (i / 251 % 256) as u8)
        .collect()
}

/// A switchyard running in this process, on its own threads, with its own temp dir.
pub struct Proxy {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub switchboard: Arc<Switchboard>,
    pub config: Arc<Config>,
    pub admin: Arc<switchyard::admin::Admin>,
    /// The file the proxy was started from (a reload re-reads it).
    pub config_file: PathBuf,
    layout: Layout,
    stop: ShutdownTrigger,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where the harness puts a proxy's listener, admin socket, metrics and state.
struct Layout {
    port: u16,
    metrics_port: u16,
    admin_section: bool,
    dir: PathBuf,
}

impl Layout {
    /// The whole file for a test's `toml`.
    fn render(&self, toml: &str) -> String {
        let admin = if self.admin_section {
            format!(
                "[admin]\nsocket = \"{}/run/admin.sock\"\n\n",
                self.dir.display()
            )
        } else {
            String::new()
        };
        let health = if toml.contains("[health]") {
            ""
        } else {
            FAST_HEALTH
        };
        // The listen address is the harness's; a test's own `[listen]` (for its other keys)
        // gets it added.
        let http = format!("[listen]\nhttp = [\"127.0.0.1:{}\"]\n", self.port);
        let (listen, toml) = if toml.contains("[listen]\n") {
            (String::new(), toml.replacen("[listen]\n", &http, 1))
        } else {
            (http + "\n", toml.to_string())
        };
        // The state directory is the harness's too; a test's own `[state]` (a fleet's etcd)
        // gets it added.
        let dir = format!("[state]\ndir = \"{}/state\"\n", self.dir.display());
        let (state, toml) = if toml.contains("[state]\n") {
            (String::new(), toml.replacen("[state]\n", &dir, 1))
        } else {
            (dir + "\n", toml)
        };
        format!(
            "{health}{listen}{admin}\
             [metrics]\nlisten = \"127.0.0.1:{mport}\"\n\n{state}{toml}",
            mport = self.metrics_port,
        )
    }
}

/// Health checks fast enough for tests.
pub const FAST_HEALTH: &str =
    "[health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n\n";

/// The TOML for two pools, `blue` and `green`, plus `extra` sections.
///
/// `{dir}` in `extra` is replaced by the proxy's temp dir.
pub fn pools_toml(blue: &[SocketAddr], green: &[SocketAddr]) -> String {
    let list = |v: &[SocketAddr]| {
        v.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[pools.blue]\nbackends = [{}]\n\n[pools.green]\nbackends = [{}]\n",
        list(blue),
        list(green)
    )
}

impl Proxy {
    /// Starts a proxy from `toml` (pools and any sections besides `[admin]`, `[metrics]` and
    /// `[state]`, which the harness fills in, and `[listen] http`, which it adds) and waits until
    /// it accepts.
    ///
    /// Unless `toml` has its own `[health]`, checks run every 100 ms with rise = fall = 1, and
    /// this waits until every backend is healthy.
    pub async fn start(toml: &str) -> Proxy {
        let p = Proxy::start_with(toml, true).await;
        p.wait_ready().await;
        p
    }

    /// Like [`Proxy::start`], but does not wait for the pools to become ready.
    pub async fn start_unready(toml: &str) -> Proxy {
        Proxy::start_with(toml, true).await
    }

    /// Like [`Proxy::start`], but `toml` brings its own `[admin]` section.
    pub async fn start_raw(toml: &str) -> Proxy {
        let p = Proxy::start_with(toml, false).await;
        p.wait_ready().await;
        p
    }

    /// Waits until every backend of both pools is healthy.
    pub async fn wait_ready(&self) {
        let sb = self.switchboard.clone();
        wait_for("every backend to be healthy", READY_DEADLINE, || {
            let t = sb.load();
            let ready = t
                .pools
                .iter()
                .all(|p| p.healthy_count() == p.backends.len());
            async move { ready.then_some(()) }
        })
        .await;
    }

    async fn start_with(toml: &str, admin_section: bool) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let layout = Layout {
            port: free_port(),
            metrics_port: free_port(),
            admin_section,
            dir: dir.path().to_path_buf(),
        };
        let full = layout.render(toml);
        let config_file = dir.path().join("switchyard.toml");
        std::fs::write(&config_file, &full).expect("write the config file");
        let config = Config::load(&config_file).unwrap_or_else(|e| panic!("{e}\n{full}"));
        let app = Switchyard::build(config, Some(config_file.clone()), RunMode::embedded())
            .expect("build switchyard");
        let switchboard = app.switchboard();
        let config = app.config();
        let admin = app.admin();
        let stop = ShutdownTrigger::new();
        let trigger = stop.clone();
        let thread = std::thread::spawn(move || app.run(trigger.run_args()));
        let addr: SocketAddr = format!("127.0.0.1:{}", layout.port).parse().unwrap();
        wait_for(
            "the proxy to accept connections",
            READY_DEADLINE,
            || async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
        )
        .await;
        Proxy {
            addr,
            dir,
            switchboard,
            config,
            admin,
            config_file,
            layout,
            stop,
            thread: Some(thread),
        }
    }

    /// Rewrites the config file from `toml`, filled in the way [`Proxy::start`] filled the first
    /// one (same listener, admin socket, metrics port and state directory), for a reload.
    pub fn write_config(&self, toml: &str) {
        let full = self.layout.render(toml);
        let tmp = self.config_file.with_extension("tmp");
        std::fs::write(&tmp, full).expect("write the config file");
        std::fs::rename(&tmp, &self.config_file).expect("replace the config file");
    }

    /// Flips to `to` through the admin socket and checks that it was applied.
    pub async fn flip(&self, to: &str) {
        let body = serde_json::json!({ "to": to });
        let (code, reply) = admin(&self.socket(), "POST", "/v1/flip", Some(body)).await;
        assert_eq!(code, 200, "flip to {to}: {reply}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn socket(&self) -> PathBuf {
        self.config.admin.socket.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A response as a test sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn pool(&self) -> Option<&str> {
        self.headers
            .get("x-switchyard-pool")
            .and_then(|v| v.to_str().ok())
    }
}

/// A keep-alive HTTP/1.1 client to one address. Like a browser, it opens a new connection when
/// the server closed the last one (`Connection: close`, e.g. after the proxy's per-connection
/// request limit).
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<AnyBody>,
    addr: SocketAddr,
    closing: bool,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to proxy");
        stream.set_nodelay(true).unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("http handshake");
        tokio::spawn(conn);
        Client {
            sender,
            addr,
            closing: false,
        }
    }

    /// Sends `req` (its URI is a path) and reads the whole response.
    pub async fn send(&mut self, req: Request<AnyBody>) -> Result<Reply, hyper::Error> {
        let (mut parts, body) = req.into_parts();
        parts
            .headers
            .entry("host")
            .or_insert_with(|| self.addr.to_string().parse().unwrap());
        if self.closing || self.sender.ready().await.is_err() {
            *self = Client::connect(self.addr).await;
        }
        self.sender.ready().await?;
        let resp = self
            .sender
            .send_request(Request::from_parts(parts, body))
            .await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        self.closing = headers
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply, hyper::Error> {
        self.send(request("GET", path, Bytes::new())).await
    }
}

/// A request with a fixed-length body.
pub fn request(method: &str, path: &str, body: impl Into<Bytes>) -> Request<AnyBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(http_body_util::Either::Left(Full::new(body.into())))
        .unwrap()
}

/// A request whose body is sent chunked.
pub fn chunked_request(method: &str, path: &str, chunks: Vec<Bytes>) -> Request<AnyBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(http_body_util::Either::Right(Chunks::new(chunks)))
        .unwrap()
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    Client::connect(addr)
        .await
        .get(path)
        .await
        .expect("GET through the proxy")
}

/// One admin API call over the unix socket: `(status, JSON answer)`.
pub async fn admin(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    admin_raw(
        socket,
        method,
        path,
        body.map(|b| b.to_string().into_bytes()),
        &[],
    )
    .await
}

/// An admin call with a raw body and extra headers.
pub async fn admin_raw(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect to the admin socket");
    exchange(stream, method, path, body, headers).await
}

/// An HTTP exchange on any stream: `(status, JSON answer)`.
pub async fn exchange<S>(
    stream: S,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = sender.send_request(req).await.expect("admin request");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "admin answered non-JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

/// The proxy's `/metrics`, parsed by a real Prometheus text parser.
pub async fn scrape(proxy: &Proxy) -> prometheus_parse::Scrape {
    let addr = proxy.config.metrics.listen.expect("metrics are on");
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    let lines = r
        .text()
        .lines()
        .map(|l| Ok(l.to_string()))
        .collect::<Vec<_>>();
    prometheus_parse::Scrape::parse(lines.into_iter()).expect("the scrape parses")
}

/// The value of the sample `name` whose labels include all of `labels`.
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
        .next()
}

/// How a test webhook receiver answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum HookMode {
    Ok,
    Fail500,
    Hang,
}

/// A real local HTTP server standing in for a chat webhook; keeps every JSON body it gets.
pub struct Hook {
    pub addr: SocketAddr,
    pub bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    pub attempts: Arc<AtomicUsize>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl Hook {
    pub async fn start(mode: HookMode) -> Hook {
        let listener = Listener::bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (b, a) = (bodies.clone(), attempts.clone());
        tokio::spawn(httpd::serve(
            listener,
            move |req: Request<Incoming>, _| {
                let (b, a) = (b.clone(), a.clone());
                async move {
                    a.fetch_add(1, Ordering::SeqCst);
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    match mode {
                        HookMode::Hang => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            httpd::text(200, "late")
                        }
                        HookMode::Fail500 => httpd::text(500, "nope"),
                        HookMode::Ok => {
                            if let Ok(v) = serde_json::from_slice(&body) {
                                b.lock().unwrap().push(v);
                            }
                            httpd::text(200, "ok")
                        }
                    }
                }
            },
            rx,
        ));
        Hook {
            addr,
            bodies,
            attempts,
            _shutdown: tx,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }
}

/// A `blue` and a `green` upstream, one backend each, and a proxy in front of them, ready.
pub async fn two_pools() -> (Upstream, Upstream, Proxy) {
    two_pools_with("").await
}

/// Like [`two_pools`], with `extra` configuration after the pools.
pub async fn two_pools_with(extra: &str) -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let toml = format!("{}\n{extra}", pools_toml(&[blue.addr], &[green.addr]));
    let proxy = Proxy::start(&toml).await;
    (blue, green, proxy)
}
