//! The client edge with raw sockets: pipelined requests, the request-head deadline, limits
//! applied while a head is still being read, and RFC 9112 conformance. Every case runs against
//! real upstreams that record what reached them, so "refused" also means "never forwarded".

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a raw exchange may take before the test gives up on it.
const IO_DEADLINE: Duration = Duration::from_secs(10);

/// One response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A raw client connection that reads responses one by one from what the proxy sends.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes; false at EOF (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(IO_DEADLINE, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no answer within {IO_DEADLINE:?}; have {:?}", self.text()),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The next response, or `None` if the connection closed first.
    async fn response(&mut self) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "truncated response: {:?}", self.text());
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        self.buf.drain(..head_end);
        let mut r = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = r.header("content-length") {
            let len: usize = len.parse().expect("numeric content-length");
            while self.buf.len() < len {
                assert!(self.fill().await, "closed inside a body");
            }
            r.body = self.buf.drain(..len).collect();
        } else if r
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "closed inside a chunk size");
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "closed inside a chunk");
                }
                r.body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        }
        Some(r)
    }

    /// True once the proxy has closed the connection (reads EOF with nothing more sent).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

/// The paths a backend saw, in order.
fn seen_paths(up: &Upstream) -> Vec<String> {
    up.seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect()
}

async fn one_pool() -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&pools_toml(&[blue.addr], &[green.addr])).await;
    (blue, green, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_each_forwarded_once() {
    let (blue, _green, proxy) = one_pool().await;

    // Two GETs in one write, as in the issue's `printf | nc`.
    let mut c = Raw::connect(proxy.addr).await;
    c.send(b"GET /bytes/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    for n in 1..=2 {
        let r = c.response().await.expect("a response per request");
        assert_eq!((r.status, r.body.len()), (200, n), "response {n} in order");
        assert!(!r.closes(), "keep-alive was kept: {r:?}");
    }
    assert_eq!(seen_paths(&blue), ["/bytes/1", "/bytes/2"]);

    // Ten in one write, GETs and POSTs with bodies (fixed length and chunked) mixed, the last
    // one closing: all ten answered in order, each forwarded once, then the close.
    let mut batch = Vec::new();
    let mut want = Vec::new();
    for i in 0..10 {
        let body = format!("body-{i}-{}", "x".repeat(i * 100));
        let close = if i == 9 { "Connection: close\r\n" } else { "" };
        match i % 3 {
            0 => {
                batch.extend(format!("GET /bytes/{i} HTTP/1.1\r\nHost: x\r\n{close}\r\n").bytes());
                want.push((format!("/bytes/{i}"), vec![0u8; 0], i));
            }
            1 => {
                batch.extend(
                    format!(
                        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{close}\r\n{body}",
                        body.len()
                    )
                    .bytes(),
                );
                want.push(("/echo".into(), body.into_bytes(), 0));
            }
            _ => {
                batch.extend(
                    format!(
                        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{close}\r\n\
                         {:x}\r\n{body}\r\n0\r\n\r\n",
                        body.len()
                    )
                    .bytes(),
                );
                want.push(("/echo".into(), body.into_bytes(), 0));
            }
        }
    }
    let mut c = Raw::connect(proxy.addr).await;
    c.send(&batch).await;
    for (i, (_, body, len)) in want.iter().enumerate() {
        let r = c.response().await.unwrap_or_else(|| panic!("response {i}"));
        assert_eq!(r.status, 200, "response {i}");
        if body.is_empty() {
            assert_eq!(
                r.body.len(),
                *len,
                "response {i} is the answer to request {i}"
            );
        } else {
            assert_eq!(&r.body, body, "response {i} is the answer to request {i}");
        }
    }
    assert!(
        c.closed().await,
        "closed after the request that asked for it"
    );
    let paths = seen_paths(&blue);
    let want_paths: Vec<&str> = want.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(paths[2..], want_paths[..], "each reached the backend once");
    let bodies: Vec<usize> = blue.seen.lock().unwrap()[2..]
        .iter()
        .map(|s| s.body_len)
        .collect();
    let want_bodies: Vec<usize> = want.iter().map(|(_, b, _)| b.len()).collect();
    assert_eq!(bodies, want_bodies);

    // A second request arriving while the first is still being answered (two segments).
    blue.delay(200);
    let mut c = Raw::connect(proxy.addr).await;
    c.send(b"GET /bytes/3 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let r = c.response().await.expect("first");
    assert_eq!(r.body.len(), 3);
    let r = c.response().await.expect("second");
    assert_eq!(r.body, b"hello");
    assert_eq!(blue.hits(), 14);
}

/// Reads the proxy's answer to a client that is still trickling or streaming its head: the
/// response, then EOF. Returns the status and when EOF came.
async fn answer_then_eof(c: &mut Raw) -> (u16, Instant) {
    let r = c.response().await.expect("an answer before the close");
    assert!(r.closes(), "the answer says the connection closes: {r:?}");
    assert!(c.closed().await, "closed after the answer");
    (r.status, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_not_complete_in_time_gets_408_and_the_connection_closes() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let toml = format!(
        "[listen]\nheader_timeout = \"1s\"\n\n{}",
        pools_toml(&[blue.addr], &[green.addr])
    );
    let proxy = Proxy::start(&toml).await;
    assert_eq!(proxy.config.header_timeout, Duration::from_secs(1));

    // One header byte every 100 ms: each read is prompt, the head never completes.
    let mut c = Raw::connect(proxy.addr).await;
    let started = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    let trickle = {
        let (mut rd, mut wr) = c.stream.into_split();
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if wr.write_all(b"a").await.is_err() {
                    break;
                }
            }
        });
        let mut out = Vec::new();
        let _ = tokio::time::timeout(IO_DEADLINE, rd.read_to_end(&mut out)).await;
        writer.abort();
        (
            String::from_utf8_lossy(&out).into_owned(),
            started.elapsed(),
        )
    };
    let (answer, took) = trickle;
    assert!(answer.starts_with("HTTP/1.1 408"), "got {answer:?}");
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_secs(2),
        "closed {took:?} after the head started (timeout 1 s)"
    );

    // The deadline runs from the head's first byte: an idle connection (before its first
    // request, and between requests) is the keep-alive timeout's business.
    let mut c = Raw::connect(proxy.addr).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.send(b"GET /bytes/1 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.expect("first").status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.send(b"GET /bytes/2 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.expect("second").status, 200);
    // A head sent in pieces within the deadline is fine.
    c.send(b"GET /bytes/3 HTTP/1.1\r\n").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send(b"Host: x\r\n\r\n").await;
    assert_eq!(c.response().await.expect("third").status, 200);
    assert_eq!(seen_paths(&blue), ["/bytes/1", "/bytes/2", "/bytes/3"]);
}

/// Latencies of `n` sequential GETs on one keep-alive connection, sorted.
async fn latencies(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut client = Client::connect(addr).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(client.get("/").await.unwrap().status, 200);
        out.push(t.elapsed());
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricklers_are_cut_and_do_not_slow_normal_clients() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let toml = format!(
        "[listen]\nheader_timeout = \"2s\"\n\n{}",
        pools_toml(&[blue.addr], &[green.addr])
    );
    let proxy = Proxy::start(&toml).await;
    let p99 = |l: &[Duration]| l[l.len() * 99 / 100];
    let baseline = latencies(proxy.addr, 200).await;

    // 300 clients each sending a header byte every 200 ms.
    let started = Instant::now();
    let mut tricklers = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        tricklers.push(tokio::spawn(async move {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
            let (mut rd, mut wr) = s.into_split();
            let writer = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if wr.write_all(b"a").await.is_err() {
                        break;
                    }
                }
            });
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
            writer.abort();
            (
                String::from_utf8_lossy(&out).into_owned(),
                started.elapsed(),
            )
        }));
    }
    let loaded = latencies(proxy.addr, 200).await;
    let mut cut = 0;
    for t in tricklers {
        let (answer, took) = t.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "got {answer:?}");
        assert!(took <= Duration::from_secs(4), "cut after {took:?}");
        cut += 1;
    }
    assert_eq!(cut, 300);
    eprintln!(
        "p99 of a normal client: {:?} alone, {:?} with 300 tricklers",
        p99(&baseline),
        p99(&loaded)
    );
    // A shared 2-core test machine is noisy: "unchanged" is within a few milliseconds.
    assert!(
        p99(&loaded) <= p99(&baseline) * 3 + Duration::from_millis(20),
        "p99 {:?} with tricklers vs {:?} without",
        p99(&loaded),
        p99(&baseline)
    );
    assert_eq!(blue.hits(), 400, "no trickler reached the backend");
}

/// This process's resident memory, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm has a resident field");
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_past_the_limits_get_431_while_still_being_read() {
    let (blue, _green, proxy) = one_pool().await;

    // More than 100 header fields (below and above pingora's own 256): 431, not 400.
    for n in [101, 150, 300] {
        let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..n {
            head.push_str(&format!("X-H{i}: v\r\n"));
        }
        head.push_str("\r\n");
        let mut c = Raw::connect(proxy.addr).await;
        c.send(head.as_bytes()).await;
        let (status, _) = answer_then_eof(&mut c).await;
        assert_eq!(status, 431, "{n} header fields");
    }
    // 100 are fine (Host, 98 more, Connection): the proxy forwards them. The backend's HTTP
    // library (hyper) allows 100 fields itself and answers 431 once X-Forwarded-For and
    // X-Forwarded-Proto are added: that answer carries the pool header, so it came from the
    // backend. Two fields fewer reach the backend's handler.
    for (extra, want) in [(98, 431), (96, 200)] {
        let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..extra {
            head.push_str(&format!("X-H{i}: v\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut c = Raw::connect(proxy.addr).await;
        c.send(head.as_bytes()).await;
        let r = c.response().await.expect("answer");
        assert_eq!(r.status, want, "{r:?}");
        assert_eq!(r.header("x-switchyard-pool"), Some("blue"), "{r:?}");
    }
    assert_eq!(blue.hits(), 1);

    // 100 clients each streaming an unterminated 1000 KiB header line: each is answered 431
    // once it passes 32 KiB, and memory barely moves.
    let line = std::sync::Arc::new(
        [
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ".to_vec(),
            vec![b'a'; 1000 * 1024],
        ]
        .concat(),
    );
    let before = rss();
    let mut clients = Vec::new();
    for _ in 0..100 {
        let s = TcpStream::connect(proxy.addr).await.unwrap();
        let line = line.clone();
        clients.push(tokio::spawn(async move {
            let (mut rd, mut wr) = s.into_split();
            // The write may fail once the proxy has answered and closed: that is the point.
            let writer = tokio::spawn(async move { wr.write_all(&line).await.is_ok() });
            let mut out = Vec::new();
            let _ = tokio::time::timeout(IO_DEADLINE, rd.read_to_end(&mut out)).await;
            let _ = writer.await;
            String::from_utf8_lossy(&out).into_owned()
        }));
    }
    let mut answers = Vec::new();
    for c in clients {
        answers.push(c.await.unwrap());
    }
    let grew = rss().saturating_sub(before);
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 431"), "got {a:?}");
    }
    eprintln!(
        "RSS grew {:.1} MB with 100 unterminated 1000 KiB heads",
        grew as f64 / 1e6
    );
    assert!(grew < 10_000_000, "RSS grew {grew} bytes");
    assert_eq!(blue.hits(), 1, "none reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_9112_conformance_cases() {
    let (blue, _green, proxy) = one_pool().await;

    // Refused with 400, the connection closed, nothing forwarded.
    let refused: [(&str, &[u8]); 5] = [
        ("HTTP/1.1 without Host", b"GET /a HTTP/1.1\r\n\r\n"),
        ("Host with a space", b"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ("Host with a slash", b"GET /a HTTP/1.1\r\nHost: a/b\r\n\r\n"),
        (
            "space in the target",
            b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "space in the target, HTTP/1.0",
            b"GET /a b HTTP/1.0\r\nHost: x\r\n\r\n",
        ),
    ];
    for (what, req) in refused {
        let mut c = Raw::connect(proxy.addr).await;
        c.send(req).await;
        let (status, _) = answer_then_eof(&mut c).await;
        assert_eq!(status, 400, "{what}");
    }
    assert_eq!(blue.hits(), 0, "no refused request reached the backend");

    // Accepted, and forwarded once each.
    let mut c = Raw::connect(proxy.addr).await;
    // Two identical Content-Length lines: forwarded as one.
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let r = c.response().await.expect("identical lengths");
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    // HTTP/1.2 is read as HTTP/1.1.
    c.send(b"GET /bytes/7 HTTP/1.2\r\nHost: x\r\n\r\n").await;
    let r = c.response().await.expect("HTTP/1.2");
    assert_eq!((r.status, r.body.len()), (200, 7));
    // A chunk size with 20 leading zeros.
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          000000000000000000005\r\nhello\r\n00000000000000000000000\r\n\r\n",
    )
    .await;
    let r = c.response().await.expect("leading zeros");
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    // HTTP/1.0 needs no Host.
    c.send(b"GET /bytes/3 HTTP/1.0\r\n\r\n").await;
    let r = c.response().await.expect("HTTP/1.0");
    assert_eq!((r.status, r.body.len()), (200, 3));
    assert!(c.closed().await, "HTTP/1.0 without keep-alive closes");

    let seen = blue.seen.lock().unwrap();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/echo", "/bytes/7", "/echo", "/bytes/3"]);
    assert_eq!(
        seen[0].headers.get_all("content-length").iter().count(),
        1,
        "one Content-Length line forwarded"
    );
    assert_eq!(seen[0].body_len, 5);
    assert_eq!(seen[2].body_len, 5);
}

/// Sends a request as most clients do (the head, then the whole body, then read the answer; a
/// failed write ends the exchange) and returns the answer. The body goes out a moment after the
/// head, by which time the server has refused the request on its head alone: a server that then
/// closes outright makes the body's write fail (broken pipe, reset) and the answer is lost.
async fn answer_to_oversized<S>(stream: S, head: &str, body: &[u8]) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    wr.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("writing the head: {e}"))?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    wr.write_all(body)
        .await
        .map_err(|e| format!("writing the body: {e}"))?;
    let mut out = Vec::new();
    tokio::time::timeout(IO_DEADLINE, rd.read_to_end(&mut out))
        .await
        .map_err(|_| "no EOF".to_string())?
        .map_err(|e| format!("reading the answer: {e} (read {out:?})"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_oversized_bodies_reach_the_client_on_every_listener() {
    let (_blue, _green, proxy) = one_pool().await;
    let body = vec![b'x'; 70_000];
    for i in 0..5 {
        let s = tokio::net::UnixStream::connect(proxy.socket())
            .await
            .unwrap();
        let head = format!(
            "POST /v1/flip HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        let answer = answer_to_oversized(s, &head, &body).await;
        assert!(
            answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 413")),
            "admin socket, try {i}: {answer:?}"
        );
    }
    // The proxy's own refusals: ambiguous framing, a folded header line, no Host (all 400).
    for (i, head) in [
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\nContent-Length: 7\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\nX-Bad: a\r\n b\r\n\r\n",
        "POST /echo HTTP/1.1\r\nContent-Length: 70000\r\n\r\n",
    ]
    .iter()
    .enumerate()
    {
        let s = TcpStream::connect(proxy.addr).await.unwrap();
        let answer = answer_to_oversized(s, head, &body).await;
        assert!(
            answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 400")),
            "proxy listener, case {i}: {answer:?}"
        );
    }
    let metrics = proxy.config.metrics.listen.expect("metrics on");
    for i in 0..5 {
        let s = TcpStream::connect(metrics).await.unwrap();
        let head = format!(
            "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let answer = answer_to_oversized(s, &head, &body).await;
        assert!(
            answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 405")),
            "metrics listener, try {i}: {answer:?}"
        );
    }
}
