//! TLS and HTTP/2 at the edge: certificates chosen by SNI from a throwaway CA made here, ALPN,
//! reload of renewed certificates, certificate errors at `check` and start, redirects, expiry
//! metrics, h2c, and the pingora#935 workaround. curl (Debian's, with nghttp2) is the client
//! where a real one matters.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A certificate authority that lives for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes the CA's certificate to `dir/<file>`.
    fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let p = dir.join(file);
        std::fs::write(&p, self.cert.pem()).unwrap();
        p
    }

    /// A leaf for `names` valid for `days` more days, written as `dir/<stem>.pem` (the leaf, then
    /// this CA) and `dir/<stem>.key`.
    fn issue(&self, dir: &Path, stem: &str, names: &[&str], days: i64) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, format!("{}{}", cert.pem(), self.cert.pem())).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// `[[tls.certificate]]` for each `(cert, key)`.
fn certificates(pairs: &[(PathBuf, PathBuf)]) -> String {
    pairs
        .iter()
        .map(|(c, k)| {
            format!(
                "[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n",
                c.display(),
                k.display()
            )
        })
        .collect()
}

/// The outcome of one curl run.
#[derive(Debug)]
struct Curl {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs curl with `args` (asynchronously: the upstreams run on this test's runtime).
async fn curl(args: &[&str]) -> Curl {
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect(
            "curl is needed for the TLS tests (`./dev test` installs it: apt-get install curl)",
        );
    Curl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// curl to `https://<host>:<port>/<path>` at 127.0.0.1, trusting `ca`, printing the body, then
/// a line with the HTTP version.
async fn curl_https(host: &str, port: u16, ca: &Path, path: &str, extra: &[&str]) -> Curl {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let ca = ca.display().to_string();
    let mut args = vec![
        "--resolve",
        &resolve,
        "--cacert",
        &ca,
        "--write-out",
        "\n%{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args).await
}

/// A proxy with an https listener serving `pairs`, both pools healthy; its https port.
async fn https_proxy(
    blue: &Upstream,
    green: &Upstream,
    pairs: &[(PathBuf, PathBuf)],
    listen_extra: &str,
) -> (Proxy, u16) {
    let port = free_port();
    let toml = format!(
        "[listen]\nhttps = [\"127.0.0.1:{port}\"]\n{listen_extra}\n{}{}",
        certificates(pairs),
        pools_toml(&[blue.addr], &[green.addr])
    );
    let proxy = Proxy::start(&toml).await;
    let https: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for("the https listener", READY_DEADLINE, || async move {
        tokio::net::TcpStream::connect(https).await.ok().map(|_| ())
    })
    .await;
    (proxy, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_each_names_certificate_and_alpn_negotiates_h2_or_http11() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("switchyard test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let shop = ca.issue(dir.path(), "shop", &["shop.test"], 90);
    let api = ca.issue(dir.path(), "api", &["*.api.test"], 90);
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let (_proxy, port) = https_proxy(&blue, &green, &[shop, api], "").await;

    // curl verifies the served certificate against the name it asked for: each name succeeding
    // means each got its own certificate (shop.test is not in the wildcard's, nor the reverse).
    let r = curl_https("shop.test", port, &ca_file, "/", &["--http2"]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, "blue\n2", "h2 by ALPN: {r:?}");
    let r = curl_https("v1.api.test", port, &ca_file, "/", &["--http1.1"]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        r.stdout, "blue\n1.1",
        "http/1.1 when the client offers only that: {r:?}"
    );

    // A name no entry has gets the default (the first, shop.test), which curl refuses for it.
    let r = curl_https("other.test", port, &ca_file, "/", &[]).await;
    assert_eq!(r.code, Some(60), "certificate mismatch expected: {r:?}");
    assert!(r.stderr.contains("other.test"), "{r:?}");

    // The backend is told the request came in over https.
    let seen = blue.seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for s in seen.iter() {
        assert_eq!(s.headers.get("x-forwarded-proto").unwrap(), "https");
    }
}

/// An HTTP/2-over-TLS client connection kept open by the test.
async fn h2_over_tls(
    port: u16,
    host: &str,
    ca: &Path,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>>,
    url: &str,
) -> (u16, String) {
    let req = hyper::Request::get(url)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_renewed_certificate_to_new_handshakes_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let old_ca_file = old_ca.write(dir.path(), "old-ca.pem");
    let new_ca_file = new_ca.write(dir.path(), "new-ca.pem");
    let (cert, key) = old_ca.issue(dir.path(), "shop", &["shop.test"], 90);
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let (proxy, port) = https_proxy(&blue, &green, &[(cert.clone(), key.clone())], "").await;

    let mut open = h2_over_tls(port, "shop.test", &old_ca_file).await;
    let url = format!("https://shop.test:{port}/");
    assert_eq!(h2_get(&mut open, &url).await, (200, "blue".into()));
    let r = curl_https("shop.test", port, &new_ca_file, "/", &[]).await;
    assert_eq!(r.code, Some(60), "not renewed yet: {r:?}");

    // Renew in place (same file names, a new key from another CA), then reload.
    let renewed_dir = tempfile::tempdir().unwrap();
    let (c2, k2) = new_ca.issue(renewed_dir.path(), "shop", &["shop.test"], 90);
    std::fs::copy(&c2, &cert).unwrap();
    std::fs::copy(&k2, &key).unwrap();
    let (code, reply) = admin(&proxy.socket(), "POST", "/v1/reload", None).await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["changed"], true, "{reply}");
    assert!(
        reply["summary"]
            .as_str()
            .unwrap()
            .contains("tls.certificate"),
        "{reply}"
    );

    let r = curl_https("shop.test", port, &new_ca_file, "/", &[]).await;
    assert_eq!(
        r.code,
        Some(0),
        "a new handshake gets the renewed certificate: {r:?}"
    );
    let r = curl_https("shop.test", port, &old_ca_file, "/", &[]).await;
    assert_eq!(r.code, Some(60), "and no longer the old one: {r:?}");
    // The h2 connection opened before the reload goes on working.
    for _ in 0..3 {
        assert_eq!(h2_get(&mut open, &url).await, (200, "blue".into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_at_reload_is_refused_and_the_old_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let shop = ca.issue(dir.path(), "shop", &["shop.test"], 90);
    let other = ca.issue(dir.path(), "other", &["other.test"], 90);
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let (proxy, port) = https_proxy(&blue, &green, std::slice::from_ref(&shop), "").await;
    // The key of another certificate.
    std::fs::copy(&other.1, &shop.1).unwrap();
    let (code, reply) = admin(&proxy.socket(), "POST", "/v1/reload", None).await;
    assert_eq!(code, 422, "{reply}");
    assert_eq!(reply["code"], "invalid_config", "{reply}");
    let errors = reply["errors"].to_string();
    assert!(
        errors.contains("does not belong to the certificate"),
        "{reply}"
    );
    assert!(errors.contains("switchyard.toml:"), "located: {reply}");
    let r = curl_https("shop.test", port, &ca_file, "/", &[]).await;
    assert_eq!(
        r.code,
        Some(0),
        "the certificate in force is still served: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_are_redirected_to_https_with_308() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let shop = ca.issue(dir.path(), "shop", &["shop.test"], 90);
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let (proxy, port) = https_proxy(&blue, &green, &[shop], "redirect_to_https = true\n").await;
    let mut c = Client::connect(proxy.addr).await;
    let req = hyper::Request::get("/cart?id=7")
        .header("host", "shop.test:8080")
        .body(http_body_util::Either::Left(http_body_util::Full::new(
            Bytes::new(),
        )))
        .unwrap();
    let r = c.send(req).await.unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers.get("location").unwrap(),
        &format!("https://shop.test:{port}/cart?id=7")
    );
    assert_eq!(blue.hits() + green.hits(), 0, "nothing was proxied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_and_failed_handshakes_are_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let shop = ca.issue(dir.path(), "shop", &["shop.test"], 30);
    let api = ca.issue(dir.path(), "api", &["*.api.test", "api.test"], 5);
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let (proxy, port) = https_proxy(&blue, &green, &[shop, api], "").await;
    // Two failed handshakes: plain HTTP on the https port, and a client that does not trust
    // the certificate.
    let r = curl(&[&format!("http://127.0.0.1:{port}/")]).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    let other_ca = Ca::new("another CA").write(dir.path(), "other-ca.pem");
    let r = curl_https("shop.test", port, &other_ca, "/", &[]).await;
    assert_eq!(r.code, Some(60), "{r:?}");
    let failures = |scrape: &prometheus_parse::Scrape, reason: &str| {
        sample(
            scrape,
            "switchyard_tls_handshake_failures_total",
            &[("reason", reason)],
        )
    };
    // The server counts a failure once rustls gives up, which may be just after curl has
    // seen the alert: poll.
    let scrape = wait_for("both failures to be counted", READY_DEADLINE, || {
        let proxy = &proxy;
        async move {
            let s = scrape(proxy).await;
            let counted = failures(&s, "not_tls") == Some(1.0)
                && failures(&s, "certificate_rejected") == Some(1.0);
            counted.then_some(s)
        }
    })
    .await;
    assert_eq!(failures(&scrape, "other"), Some(0.0));
    let expiry = |name: &str| {
        sample(
            &scrape,
            "switchyard_tls_cert_expiry_seconds",
            &[("name", name)],
        )
        .unwrap_or_else(|| panic!("no expiry for {name}"))
    };
    let day = 86_400.0;
    let shop = expiry("shop.test");
    assert!((29.0 * day..=30.0 * day).contains(&shop), "{shop}");
    let api = expiry("*.api.test");
    assert!((4.0 * day..=5.0 * day).contains(&api), "{api}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_on_the_plain_listener_and_http11_beside_it() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let proxy = Proxy::start(&format!(
        "[listen]\nh2c = true\n\n{}",
        pools_toml(&[blue.addr], &[green.addr])
    ))
    .await;
    let url = proxy.url("/");
    let r = curl(&[
        "--http2-prior-knowledge",
        "--write-out",
        "\n%{http_version}",
        &url,
    ])
    .await;
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "blue\n2"), "{r:?}");
    let r = curl(&["--http1.1", "--write-out", "\n%{http_version}", &url]).await;
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "blue\n1.1"), "{r:?}");
    let seen = blue.seen.lock().unwrap();
    assert_eq!(seen[0].headers.get("x-forwarded-proto").unwrap(), "http");
}

/// An HTTP/1.1 backend that records every byte each connection receives: it answers `/healthz`
/// and echoes anything else's body.
async fn start_tapped_backend() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Tap>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let taps: std::sync::Arc<std::sync::Mutex<Vec<Tap>>> = Default::default();
    let all = taps.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tap = Tap::default();
            all.lock().unwrap().push(tap.clone());
            let io = Tapped { inner: tcp, tap };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                    .await;
            });
        }
    });
    (addr, taps)
}

/// Everything one connection received.
#[derive(Clone, Default)]
struct Tap(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

struct Tapped {
    inner: tokio::net::TcpStream,
    tap: Tap,
}

impl tokio::io::AsyncRead for Tapped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled()[before..].to_vec();
        self.tap.0.lock().unwrap().extend_from_slice(&got);
        r
    }
}

impl tokio::io::AsyncWrite for Tapped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// pingora#935: an h2 upload that ends with an empty DATA frame (END_STREAM) made pingora write
/// the chunked terminator `0\r\n\r\n` twice to the HTTP/1.1 backend; the second is read as the
/// start of another request, which puts the pooled connection out of step (the backend answers
/// it 400 and closes, or a later request gets that 400). With the workaround each upload ends
/// with exactly one terminator, on the wire the backend reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_uploads_ending_with_an_empty_data_frame_leave_the_upstream_connection_usable() {
    let (blue, taps) = start_tapped_backend().await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&format!(
        "[listen]\nh2c = true\n\n[upstream]\nidle_timeout = \"30s\"\n\n{}",
        pools_toml(&[blue], &[green.addr])
    ))
    .await;
    let url = proxy.url("/echo");
    const UPLOADS: usize = 5;
    for i in 0..UPLOADS {
        // curl -T - sends the body as it reads stdin, then an empty DATA frame at EOF.
        let mut child = tokio::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--max-time",
                "10",
                "--http2-prior-knowledge",
                "-T",
                "-",
                "-X",
                "POST",
                &url,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("curl");
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(format!("upload {i}").as_bytes())
                .await
                .unwrap();
        }
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("upload {i}"));
        // An ordinary request right after, likely on the same pooled upstream connection.
        let r = curl(&["--http2-prior-knowledge", &proxy.url("/after")]).await;
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (Some(0), ""),
            "after upload {i}: {r:?}"
        );
    }
    // The uploads went chunked (no length was known); count their terminators: a line that is
    // just `0`, then the blank line. No header line is just `0`, so nothing else matches.
    let count = |bytes: &[u8], pat: &[u8]| bytes.windows(pat.len()).filter(|w| *w == pat).count();
    let taps = taps.lock().unwrap();
    let received: Vec<Vec<u8>> = taps.iter().map(|t| t.0.lock().unwrap().clone()).collect();
    let terminators: usize = received.iter().map(|b| count(b, b"\r\n0\r\n\r\n")).sum();
    assert_eq!(
        terminators,
        UPLOADS,
        "one chunked terminator per upload; received: {:?}",
        received
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A config file for the binary with an https listener and `pairs` as certificates.
fn binary_config(dir: &Path, pairs: &[(PathBuf, PathBuf)]) -> PathBuf {
    let path = dir.join("switchyard.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\nhttp = [\"127.0.0.1:{}\"]\nhttps = [\"127.0.0.1:{}\"]\n\n\
             [admin]\nsocket = \"{d}/admin.sock\"\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n\n\
             [state]\ndir = \"{d}/state\"\n\n{}\
             [pools.blue]\nbackends = [\"127.0.0.1:1\"]\n[pools.green]\nbackends = [\"127.0.0.1:2\"]\n",
            free_port(),
            free_port(),
            free_port(),
            certificates(pairs),
            d = dir.display(),
        ),
    )
    .unwrap();
    path
}

fn run(args: &[&str], path: &Path) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .arg("-c")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_key_of_another_certificate_is_a_located_check_error_and_serve_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let (cert, _) = ca.issue(dir.path(), "shop", &["shop.test"], 90);
    let (_, other_key) = ca.issue(dir.path(), "other", &["other.test"], 90);
    let path = binary_config(dir.path(), &[(cert.clone(), other_key.clone())]);
    let f = path.display();
    let message = format!(
        "[[tls.certificate]]: the key in {} does not belong to the certificate in {}; give the \
         key the certificate was issued for",
        other_key.display(),
        cert.display()
    );
    let (code, _, stderr) = run(&["check"], &path);
    assert_eq!(code, Some(1), "{stderr}");
    // Line 15: `cert = ...` of the entry (after the listen, admin, metrics and state sections
    // and the `[[tls.certificate]]` line).
    let located = format!("{f}:15:8: {message}");
    assert_eq!(stderr.lines().next(), Some(located.as_str()), "{stderr}");

    let (code, _, stderr) = run(&["serve"], &path);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().next(), Some(located.as_str()), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
}

#[test]
fn an_expired_certificate_is_an_error_and_one_near_expiry_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let expired = ca.issue(dir.path(), "old", &["old.test"], -1);
    let path = binary_config(dir.path(), std::slice::from_ref(&expired));
    let (code, _, stderr) = run(&["check"], &path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the certificate in {} expired on",
            expired.0.display()
        )),
        "{stderr}"
    );

    let soon = ca.issue(dir.path(), "soon", &["soon.test"], 10);
    let path = binary_config(dir.path(), std::slice::from_ref(&soon));
    let (code, stdout, stderr) = run(&["check"], &path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "warning: the certificate for soon.test in {} expires in 9 days",
            soon.0.display()
        )) || stderr.contains(&format!(
            "warning: the certificate for soon.test in {} expires in 10 days",
            soon.0.display()
        )),
        "{stderr}"
    );
}

/// A response body of given frames (data and trailers), as a gRPC server sends them.
struct Frames(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// A gRPC-style echo backend speaking h2c: `/healthz` answers 200; anything else is answered
/// with the request's body, `x-served-by: <name>`, and the trailer `grpc-status: 0`. Counts
/// the streams it served.
async fn start_h2c_echo(
    name: &'static str,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let count = count.clone();
                        async move {
                            let health = req.uri().path() == "/healthz";
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mut frames = std::collections::VecDeque::new();
                            if health {
                                frames
                                    .push_back(hyper::body::Frame::data(Bytes::from_static(b"ok")));
                            } else {
                                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                frames.push_back(hyper::body::Frame::data(body));
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", "0".parse().unwrap());
                                trailers.insert("grpc-message", "OK".parse().unwrap());
                                frames.push_back(hyper::body::Frame::trailers(trailers));
                            }
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .header("x-served-by", name)
                                    .body(Frames(frames))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
            });
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_h2_with_trailers_flips_from_blue_to_green_under_load_without_a_failed_stream() {
    let (blue, blue_served) = start_h2c_echo("blue").await;
    let (green, green_served) = start_h2c_echo("green").await;
    let proxy = Proxy::start(&format!(
        "[listen]\nh2c = true\n\n\
         [pools.blue]\nbackends = [\"{blue}\"]\nprotocol = \"h2c\"\n\n\
         [pools.green]\nbackends = [\"{green}\"]\nprotocol = \"h2c\"\n"
    ))
    .await;

    // Clients on h2c connections of their own, each sending streams back to back.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let mut sender = sender.clone();
        let stop = stop.clone();
        let url = format!("http://{}/echo.Echo/Say", proxy.addr);
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut by) =
                (0usize, Vec::new(), std::collections::HashMap::new());
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let msg = Bytes::from(format!("client {c} message {i}"));
                let req = hyper::Request::post(&url)
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(http_body_util::Full::new(msg.clone()))
                    .unwrap();
                let outcome = async {
                    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                    let status = resp.status();
                    let served_by = resp
                        .headers()
                        .get("x-served-by")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    let collected = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?;
                    let grpc_status = collected
                        .trailers()
                        .and_then(|t| t.get("grpc-status"))
                        .map(|v| v.to_str().unwrap().to_string());
                    let body = collected.to_bytes();
                    if status != 200 || body != msg || grpc_status.as_deref() != Some("0") {
                        return Err(format!("{status} {body:?} grpc-status {grpc_status:?}"));
                    }
                    Ok(served_by)
                }
                .await;
                match outcome {
                    Ok(pool) => {
                        ok += 1;
                        *by.entry(pool).or_insert(0usize) += 1;
                    }
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed, by)
        }));
    }
    let served = |n: &std::sync::Arc<std::sync::atomic::AtomicUsize>| {
        n.load(std::sync::atomic::Ordering::SeqCst)
    };
    wait_for("streams to blue", READY_DEADLINE, || {
        let n = served(&blue_served);
        async move { (n >= 200).then_some(()) }
    })
    .await;
    assert_eq!(
        served(&green_served),
        0,
        "green serves nothing before the flip"
    );
    proxy.flip("green").await;
    let green_before = served(&green_served);
    wait_for("streams to green", READY_DEADLINE, || {
        let n = served(&green_served);
        async move { (n >= green_before + 200).then_some(()) }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed, mut by) = (0, Vec::new(), std::collections::HashMap::new());
    for c in clients {
        let (o, f, b) = c.await.unwrap();
        ok += o;
        failed.extend(f);
        for (k, v) in b {
            *by.entry(k).or_insert(0) += v;
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed stream(s): {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(ok, served(&blue_served) + served(&green_served), "{by:?}");
    assert!(by["blue"] >= 200 && by["green"] >= 200, "{by:?}");
}

/// A backend behind TLS with the certificate `(cert, key)`: HTTP/2 when the client offers `h2`
/// by ALPN, else HTTP/1.1; answers `<name> <protocol>`, `/healthz` included.
async fn start_tls_backend(name: &'static str, cert: &Path, key: &Path) -> SocketAddr {
    let chain: Vec<_> = rustls_pemfile::certs(&mut &std::fs::read(cert).unwrap()[..])
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut &std::fs::read(key).unwrap()[..])
        .unwrap()
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let proto = format!("{:?}", req.version());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from(format!("{name} {proto}"))),
                        ))
                    },
                );
                let io = hyper_util::rt::TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, service)
                    .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_behind_tls_are_verified_against_the_ca_file_over_http1_and_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("internal CA");
    let ca_file = ca.write(dir.path(), "internal-ca.pem");
    let (cert, key) = ca.issue(dir.path(), "app", &["app.internal"], 90);
    let blue = start_tls_backend("blue", &cert, &key).await;
    let green = start_tls_backend("green", &cert, &key).await;
    let pool = |name: &str, addr: SocketAddr, protocol: &str| {
        format!(
            "[pools.{name}]\nbackends = [\"{addr}\"]\nprotocol = \"{protocol}\"\ntls = true\n\
             sni = \"app.internal\"\nca_file = \"{}\"\n\n",
            ca_file.display()
        )
    };
    let toml = format!(
        "{}{}",
        pool("blue", blue, "http1"),
        pool("green", green, "h2")
    );
    // Health checks pass only over TLS verified against the CA (and h2 for green).
    let proxy = Proxy::start(&toml).await;
    assert_eq!(get(proxy.addr, "/").await.text(), "blue HTTP/1.1");
    proxy.flip("green").await;
    assert_eq!(get(proxy.addr, "/").await.text(), "green HTTP/2.0");

    // The same backends with a name their certificate does not have, health checks off (so the
    // backends count as healthy): the request is refused with 502, never sent unverified.
    let wrong = toml.replace("sni = \"app.internal\"", "sni = \"other.internal\"");
    let proxy = Proxy::start(&format!("[health]\nenabled = false\n\n{wrong}")).await;
    assert_eq!(get(proxy.addr, "/").await.status, 502);
}
