//! The proxy core against real upstreams: routing to the primary, round-robin, bodies, dead pools,
//! forwarding headers and protocol upgrades.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_primary_pool() {
    let (blue, green, proxy) = two_pools().await;

    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..20 {
        let r = client.get("/").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "blue");
        assert_eq!(r.pool(), Some("blue"));
    }
    assert_eq!(blue.hits(), 20);
    assert_eq!(green.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_primary_chooses_the_pool() {
    let (_blue, _green, proxy) =
        two_pools_with("[routing]\ninitial_primary = \"green\"\nresponse_header = false\n").await;
    let r = get(proxy.addr, "/").await;
    assert_eq!(r.text(), "green");
    assert_eq!(
        r.pool(),
        None,
        "response_header = false must not add the header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_exactly() {
    let b1 = Upstream::start("blue").await;
    let b2 = Upstream::start("blue").await;
    let b3 = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&pools_toml(&[b1.addr, b2.addr, b3.addr], &[green.addr])).await;

    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..300 {
        assert_eq!(client.get("/").await.unwrap().status, 200);
    }
    assert_eq!([b1.hits(), b2.hits(), b3.hits()], [100, 100, 100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_pass_byte_exact() {
    let (blue, _green, proxy) = two_pools().await;
    let mut client = Client::connect(proxy.addr).await;

    // Request bodies: empty, 1 MiB with a length, 1 MiB chunked.
    let r = client
        .send(request("POST", "/echo", Bytes::new()))
        .await
        .unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));

    let mib = pattern(1 << 20);
    let r = client
        .send(request("POST", "/echo", mib.clone()))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == mib[..], "1 MiB request body changed on the way");

    let chunks: Vec<Bytes> = mib.chunks(7_919).map(Bytes::copy_from_slice).collect();
    let r = client
        .send(chunked_request("PUT", "/echo", chunks))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == mib[..], "chunked request body changed on the way");

    // Response bodies: empty, 1 MiB with a length, 1 MiB chunked.
    let r = client.get("/bytes/0").await.unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = client.get("/bytes/1048576").await.unwrap();
    assert!(r.body == mib[..], "1 MiB response body changed on the way");
    let r = client.get("/chunked/1048576").await.unwrap();
    assert!(
        r.headers.get("content-length").is_none(),
        "a chunked response must stay chunked"
    );
    assert!(
        r.body == mib[..],
        "chunked response body changed on the way"
    );

    let seen = blue.seen.lock().unwrap();
    assert_eq!(seen[1].body_len, 1 << 20);
    assert_eq!(seen[2].body_len, 1 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added_and_routing_headers_stripped() {
    let (blue, _green, proxy) = two_pools().await;
    let mut client = Client::connect(proxy.addr).await;

    let mut req = request("GET", "/", Bytes::new());
    req.headers_mut()
        .insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    req.headers_mut()
        .insert("x-switchyard-preview-token", "secret".parse().unwrap());
    req.headers_mut()
        .insert("x-switchyard-pool", "green".parse().unwrap());
    req.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    client.send(req).await.unwrap();

    let seen = blue.seen.lock().unwrap();
    let h = &seen[0].headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(
        h["x-forwarded-proto"], "http",
        "an untrusted client's scheme claim is replaced"
    );
    assert!(h.get("x-switchyard-preview-token").is_none());
    assert!(h.get("x-switchyard-pool").is_none());
}

/// Behind a TLS terminator listed in `[listen] trusted_proxies`, the scheme it reports reaches
/// the application; a request from it without the header is marked http.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_passes_its_scheme_on() {
    let (blue, _green, proxy) =
        two_pools_with("[listen]\ntrusted_proxies = [\"127.0.0.0/8\"]\n").await;
    let mut client = Client::connect(proxy.addr).await;
    let mut req = request("GET", "/", Bytes::new());
    req.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    assert_eq!(client.send(req).await.unwrap().status, 200);
    assert_eq!(client.get("/").await.unwrap().status, 200);

    let seen = blue.seen.lock().unwrap();
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
    assert_eq!(seen[1].headers["x-forwarded-proto"], "http");
    assert_eq!(seen[0].headers["x-forwarded-for"], "127.0.0.1");
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a connect to it hangs
/// until the connecting side gives up. The only way to exercise a connect timeout on loopback.
fn blackhole() -> (
    socket2::Socket,
    Vec<std::net::TcpStream>,
    std::net::SocketAddr,
) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue (backlog 0 still admits one or two connections on Linux).
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(c);
        }
    }
    (s, fillers, addr)
}

/// Health checks off: every backend is taken as healthy, so requests do reach a dead one.
const NO_HEALTH: &str = "[health]\nenabled = false\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pool_fails_fast() {
    // Refused: ports that were free and are now closed.
    let dead1: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dead2: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let green = Upstream::start("green").await;
    let toml = format!(
        "{}\n{NO_HEALTH}[upstream]\nconnect_timeout = \"300ms\"\n",
        pools_toml(&[dead1, dead2], &[green.addr])
    );
    let proxy = Proxy::start(&toml).await;
    let start = Instant::now();
    let r = get(proxy.addr, "/").await;
    assert_eq!(r.status, 502, "a refused connection is a bad gateway");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(
        green.hits(),
        0,
        "a dead primary must not silently serve green"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_backend_times_out_at_the_connect_timeout() {
    let (_hole, _fillers, addr) = blackhole();
    let green = Upstream::start("green").await;
    let toml = format!(
        "{}\n{NO_HEALTH}[upstream]\nconnect_timeout = \"300ms\"\n",
        pools_toml(&[addr], &[green.addr])
    );
    let proxy = Proxy::start(&toml).await;
    let start = Instant::now();
    let r = get(proxy.addr, "/").await;
    let took = start.elapsed();
    assert_eq!(
        r.status, 504,
        "a backend that never accepted is a gateway timeout"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "took {took:?}; the connect timeout is 300ms"
    );
}

/// A backend that accepts the request and then says nothing gets `read_timeout` and no more: 504,
/// counted as a timeout of its pool; the connection is not reused, and the next request, to a
/// backend that answers, is served. One worker thread, as `threads = 1` runs pingora without work
/// stealing; every other test runs with one worker per core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_backend_times_out_at_the_read_timeout() {
    let (_blue, _green, proxy) =
        two_pools_with("[upstream]\nread_timeout = \"1s\"\n[server]\nthreads = 1\n").await;
    let start = Instant::now();
    let r = get(proxy.addr, "/slow/5000").await;
    let took = start.elapsed();
    assert_eq!(r.status, 504, "answered {} after {took:?}", r.status);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "took {took:?}; the read timeout is 1s"
    );
    // Counted as the request is logged, just after the 504 is written.
    let m = wait_for("the timeout to be counted", READY_DEADLINE, || async {
        let m = scrape(&proxy).await;
        let timeouts = sample(
            &m,
            "switchyard_upstream_errors_total",
            &[("pool", "blue"), ("kind", "timeout")],
        );
        timeouts.is_some_and(|n| n > 0.0).then_some(m)
    })
    .await;
    let errors = |kind| {
        sample(
            &m,
            "switchyard_upstream_errors_total",
            &[("pool", "blue"), ("kind", kind)],
        )
    };
    assert_eq!(errors("timeout"), Some(1.0));
    assert_eq!(errors("reset").unwrap_or(0.0), 0.0);
    // A slow answer within the timeout is fine.
    let r = get(proxy.addr, "/slow/300").await;
    assert_eq!((r.status, r.text().as_str()), (200, "blue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_backend() {
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let live = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let toml = format!(
        "{}\n{NO_HEALTH}",
        pools_toml(&[dead, live.addr], &[green.addr])
    );
    let proxy = Proxy::start(&toml).await;
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..10 {
        let r = client.get("/").await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "blue"));
    }
    assert_eq!(live.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_upgrades_pass_through() {
    let (_blue, _green, proxy) = two_pools().await;

    // Many in a row: the tunnel used to close right after the 101 when pingora read the 101
    // before it had forwarded the end of the (empty) request body, about 1 upgrade in 20 on a
    // loaded machine (patches/README.md, patch 9).
    for round in 0..50 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                s.read(&mut byte).await.unwrap(),
                1,
                "round {round}: connection closed early"
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "round {round}: got {head}"
        );
        for msg in [&b"hello"[..], b"second message", &[0u8, 1, 2, 255]] {
            s.write_all(msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back)
                .await
                .unwrap_or_else(|e| panic!("round {round}: echo of {msg:?}: {e}"));
            assert_eq!(back, msg);
        }
    }
}

/// Sends raw bytes on a fresh connection and reads until the proxy closes it (or 5 s pass).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_and_huge_headers_never_reach_a_backend() {
    let (blue, _green, proxy) = two_pools().await;
    let smuggle = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
                    0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (smuggle.to_vec(), "HTTP/1.1 400"),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            "HTTP/1.1 400",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(40 * 1024)
            )
            .into_bytes(),
            "HTTP/1.1 431",
        ),
    ];
    for (req, want) in cases {
        let answer = raw(proxy.addr, &req).await;
        assert!(answer.starts_with(want), "wanted {want}, got {answer:?}");
    }
    assert_eq!(blue.hits(), 0, "no refused request reached a backend");
    // 8 KiB of headers is fine.
    let ok = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Fine: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    assert!(raw(proxy.addr, ok.as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
    assert_eq!(blue.hits(), 1);
}

/// A backend that keeps an idle connection exactly `keep_alive` after its last response, then
/// closes it, as gunicorn does (2 s). Answers every request `200 ok`; records, per request, the
/// number of the connection it came on.
async fn short_keepalive_backend(
    keep_alive: Duration,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for conn in 0.. {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: a head, then a Content-Length body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tokio::time::timeout(keep_alive, s.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return, // idle too long (close), or the peer went away
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    if head.starts_with("get /healthz") {
                        buf.drain(..head_end);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                        continue;
                    }
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    buf.drain(..head_end + len);
                    log.lock().unwrap().push(conn);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_are_dropped_before_a_2s_keepalive_backend_closes_them() {
    let (backend, seen) = short_keepalive_backend(Duration::from_secs(2)).await;
    let green = Upstream::start("green").await;
    // The default upstream.idle_timeout, with health checks rare enough not to keep the
    // pooled connection busy (they use their own connections anyway).
    let proxy = Proxy::start(&format!(
        "[health]\ninterval = \"60s\"\nrise = 1\nfall = 1\n\n{}",
        pools_toml(&[backend], &[green.addr])
    ))
    .await;
    assert_eq!(
        proxy.config.upstream.idle_timeout,
        Duration::from_secs(1),
        "the documented default"
    );

    // POSTs (never retried by the proxy) each sent just as the backend closes the pooled
    // connection from the one before: 2 s later, give or take a few milliseconds.
    let mut client = Client::connect(proxy.addr).await;
    let r = client.send(request("POST", "/", "first")).await.unwrap();
    assert_eq!(r.status, 200);
    let mut statuses = Vec::new();
    for gap_ms in [1_990, 1_995, 2_000, 2_002, 2_005, 2_010] {
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        let r = client.send(request("POST", "/", "again")).await.unwrap();
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200; 6], "no POST met the backend's close");
    // Each came on a new upstream connection: the pooled one was dropped by the proxy after
    // 1 s idle, before the backend's 2 s were up.
    let conns = seen.lock().unwrap().clone();
    assert_eq!(conns.len(), 7);
    let mut distinct = conns.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 7, "connections used: {conns:?}");
}

/// A keep-alive backend that answers every request `200 ok` with a mixed-case header of its own
/// (`X-Backend-Token: B`), and records, leaving out health checks (which come on their own
/// connections), each request head byte for byte and how many connections it saw opened and
/// closed.
struct RawBackend {
    addr: std::net::SocketAddr,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    opened: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RawBackend {
    async fn start() -> RawBackend {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = RawBackend {
            addr: listener.local_addr().unwrap(),
            heads: Default::default(),
            opened: Default::default(),
            closed: Default::default(),
        };
        let (heads, opened, closed) = (
            backend.heads.clone(),
            backend.opened.clone(),
            backend.closed.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut peek = [0u8; 16];
                let n = s.peek(&mut peek).await.unwrap_or(0);
                let health = peek[..n].starts_with(b"GET /healthz");
                if !health {
                    opened.fetch_add(1, Ordering::SeqCst);
                }
                let (heads, closed) = (heads.clone(), closed.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    'conn: loop {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => break,
                        }
                        // Requests without a body: a head is all there is.
                        while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..i + 4).collect();
                            if !health {
                                heads
                                    .lock()
                                    .unwrap()
                                    .push(String::from_utf8_lossy(&head).into_owned());
                            }
                            let answer =
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Backend-Token: B\r\n\r\nok";
                            if s.write_all(answer).await.is_err() {
                                break 'conn;
                            }
                        }
                    }
                    if !health {
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        backend
    }
}

/// `[server] header_case`: what goes on the wire, both ways, in each mode. `canonical` (the
/// default; pingora patch 12) passes names on in pingora's spelling whatever the sender wrote
/// (a few standard ones such as `Content-Type` title-cased, the rest lowercase), switchyard's own
/// too; `preserve` passes them on as the client and the backend wrote them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_name_case_on_the_wire_in_each_mode() {
    let request =
        b"GET /case HTTP/1.1\r\nHost: x\r\nX-Client-Token: A\r\ncontent-TYPE: text/plain\r\n\
                    Connection: close\r\n\r\n";
    let canonical = [
        "\r\nx-client-token: A\r\n",
        "\r\nContent-Type: text/plain\r\n",
        "\r\nx-forwarded-for: 127.0.0.1\r\n",
    ];
    for (setting, to_backend, to_client) in [
        ("", canonical, "\r\nx-backend-token: B\r\n"),
        (
            "[server]\nheader_case = \"canonical\"\n\n",
            canonical,
            "\r\nx-backend-token: B\r\n",
        ),
        (
            "[server]\nheader_case = \"preserve\"\n\n",
            [
                "\r\nX-Client-Token: A\r\n",
                "\r\ncontent-TYPE: text/plain\r\n",
                "\r\nX-Forwarded-For: 127.0.0.1\r\n",
            ],
            "\r\nX-Backend-Token: B\r\n",
        ),
    ] {
        let backend = RawBackend::start().await;
        let green = Upstream::start("green").await;
        let proxy = Proxy::start(&format!(
            "{setting}{}",
            pools_toml(&[backend.addr], &[green.addr])
        ))
        .await;
        let answer = raw(proxy.addr, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{setting:?}: got {answer:?}"
        );
        assert!(
            answer.contains(to_client),
            "{setting:?}: the client should get {to_client:?} in {answer:?}"
        );
        let heads = backend.heads.lock().unwrap().clone();
        assert_eq!(
            heads.len(),
            1,
            "{setting:?}: one request reached the backend: {heads:?}"
        );
        for line in to_backend {
            assert!(
                heads[0].contains(line),
                "{setting:?}: the backend should get {line:?} in {:?}",
                heads[0]
            );
        }
    }
}

/// `[upstream] idle_close`: with `on_timeout` a pooled connection is closed once it has been
/// idle for `idle_timeout`; with `on_reuse` (the default, pingora patch 13) it stays open until
/// the pool looks at it again, is then closed rather than reused, and the request goes on a new
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_close_on_timeout_or_on_reuse() {
    use std::sync::atomic::Ordering;
    for mode in ["on_timeout", "on_reuse"] {
        let backend = RawBackend::start().await;
        let (opened, closed) = (&backend.opened, &backend.closed);
        let green = Upstream::start("green").await;
        let proxy = Proxy::start(&format!(
            "[health]\ninterval = \"60s\"\nrise = 1\nfall = 1\n\n\
             [upstream]\nidle_timeout = \"300ms\"\nidle_close = \"{mode}\"\n\n{}",
            pools_toml(&[backend.addr], &[green.addr])
        ))
        .await;
        let mut client = Client::connect(proxy.addr).await;
        assert_eq!(client.get("/").await.unwrap().status, 200);
        assert_eq!(opened.load(Ordering::SeqCst), 1, "{mode}");
        if mode == "on_timeout" {
            wait_for(
                "the idle connection closed",
                Duration::from_secs(5),
                || async { (closed.load(Ordering::SeqCst) == 1).then_some(()) },
            )
            .await;
        } else {
            // Well past the idle timeout, nothing has closed it...
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            assert_eq!(closed.load(Ordering::SeqCst), 0, "{mode}: still open");
            // ...and the next request closes it instead of reusing it.
            assert_eq!(client.get("/").await.unwrap().status, 200);
            assert_eq!(opened.load(Ordering::SeqCst), 2, "{mode}: a new connection");
            wait_for(
                "the expired connection closed",
                Duration::from_secs(5),
                || async { (closed.load(Ordering::SeqCst) == 1).then_some(()) },
            )
            .await;
        }
    }
}
