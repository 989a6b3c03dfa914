//! The pingora [`ProxyHttp`] implementation: where a request meets the routing table.
//!
//! Data flows one way: `request_filter` loads the table once and picks the pool, which is kept in
//! the request context ([`RequestCtx`]) for the life of the request; `upstream_peer` picks a backend
//! of that pool; `logging` records the outcome against the same pool. A flip that lands
//! mid-request therefore never splits one request's story across two colours.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{HeaderCase, Sticky, MAX_BP};
use crate::faults::{FaultKind, Faults};
use crate::forwarding;
use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::preview::{self, PREVIEW_COOKIE};
use crate::routing::{other, PoolId, RoutingTable, Switchboard};
use crate::shadow::{Capture, Shadow};

/// Response header naming the pool that served the request; request header for preview routing.
pub const POOL_HEADER: &str = "x-switchyard-pool";

/// Request header carrying the preview token.
pub const PREVIEW_TOKEN_HEADER: &str = "x-switchyard-preview-token";

/// The cookie that keeps a browser on one colour during a canary.
pub const STICKY_COOKIE: &str = "sy_uid";
/// `Set-Cookie` attributes of [`STICKY_COOKIE`]: sent back on every path, hidden from scripts,
/// kept for a year so a user stays put through a long rollout.
const STICKY_COOKIE_ATTRS: &str = "; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax";

/// A sticky cookie value we accept as is: what we set (32 hex digits), or anything similar.
fn valid_uid(v: &[u8]) -> bool {
    (8..=64).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// The proxy: stateless apart from the shared, lock-free [`Switchboard`], whose table also holds
/// the settings a request reads ([`crate::settings`]), so a reload changes them atomically.
pub struct Proxy {
    switchboard: Arc<Switchboard>,
    metrics: Arc<Metrics>,
    /// Rehearsals: the fault set in force and the shadow session, each one lock-free load per
    /// request (`crate::faults`, `crate::shadow`).
    faults: Arc<Faults>,
    shadow: Arc<Shadow>,
    /// `x-switchyard-pool` values, built once rather than per response (pool names never change
    /// without a restart).
    pool_header_values: [HeaderValue; 2],
    /// `[server] header_case`: whether backends' HTTP/1 response headers keep their names' case
    /// (the request side is the listeners' `h1_discard_header_case`, set in `server.rs`).
    preserve_header_case: bool,
}

impl Proxy {
    pub fn new(
        switchboard: Arc<Switchboard>,
        metrics: Arc<Metrics>,
        faults: Arc<Faults>,
        shadow: Arc<Shadow>,
        header_case: HeaderCase,
    ) -> Proxy {
        let names = switchboard.pool_names();
        let value = |n: &str| HeaderValue::from_str(n).expect("pool names are valid header values");
        Proxy {
            pool_header_values: [value(&names[0]), value(&names[1])],
            switchboard,
            metrics,
            faults,
            shadow,
            preserve_header_case: header_case.preserve(),
        }
    }
}

impl Proxy {
    /// The pool a valid preview (token header or signed cookie) asks for. A pool header without
    /// a valid token is ignored and counted.
    fn preview_pool(&self, session: &Session, table: &RoutingTable) -> Option<PoolId> {
        let headers = &session.req_header().headers;
        let asked = headers.get(POOL_HEADER);
        if let Some(key) = &table.settings.preview {
            if let Some(name) = asked {
                let token = headers
                    .get(PREVIEW_TOKEN_HEADER)
                    .map_or(&b""[..], |t| t.as_bytes());
                if key.check_token(token) {
                    if let Some(id) = pool_by_name(table, name.as_bytes()) {
                        return Some(id);
                    }
                }
            }
            for h in headers.get_all("cookie") {
                let Some(v) = preview::cookie(h.as_bytes(), PREVIEW_COOKIE) else {
                    continue;
                };
                let pool = std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| key.check_cookie(v));
                if let Some(id) = pool.and_then(|p| pool_by_name(table, p.as_bytes())) {
                    return Some(id);
                }
            }
        }
        if asked.is_some() {
            self.metrics.preview_rejected.inc();
        }
        None
    }

    /// The pool by weight, keyed by the request's sticky key.
    fn weighted_pool(
        &self,
        session: &Session,
        table: &RoutingTable,
        ctx: &mut RequestCtx,
    ) -> PoolId {
        let bp = table.state.canary_bp;
        if bp == 0 || bp == MAX_BP {
            // No split: no key to find, no cookie to set.
            return table.pool_for_key(None);
        }
        let headers = &session.req_header().headers;
        match &table.settings.sticky {
            Sticky::None => table.pool_for_key(None),
            Sticky::Header(name) => table.pool_for_key(headers.get(name).map(|v| v.as_bytes())),
            Sticky::Ip => match client_ip(session) {
                Some(std::net::IpAddr::V4(ip)) => table.pool_for_key(Some(&ip.octets())),
                Some(std::net::IpAddr::V6(ip)) => table.pool_for_key(Some(&ip.octets())),
                None => table.pool_for_key(None),
            },
            Sticky::Cookie => {
                let existing = headers
                    .get_all("cookie")
                    .iter()
                    .find_map(|h| preview::cookie(h.as_bytes(), STICKY_COOKIE))
                    .filter(|v| valid_uid(v));
                match existing {
                    Some(uid) => table.pool_for_key(Some(uid)),
                    None => {
                        // A new visitor: give them an id now and route by it, so this first
                        // request already goes where all their later ones will.
                        let uid = format!("{:032x}", rand::random::<u128>());
                        let pool = table.pool_for_key(Some(uid.as_bytes()));
                        ctx.set_cookie = Some(uid);
                        pool
                    }
                }
            }
        }
    }
}

/// The client's IP address (none for a Unix-socket client). A v4 client of a dual-stack
/// listener shows as `::ffff:a.b.c.d`; it is taken as `a.b.c.d`, so it keys, matches
/// `trusted_proxies` and reads in `X-Forwarded-For` the same as over a v4 listener.
fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

/// Whether the client connection is TLS (an `[listen] https` listener).
fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// Answers a plain-HTTP request with a 308 to the same URL over https on `port`
/// (`[listen] redirect_to_https`); 308 keeps the method and body, unlike 301.
async fn redirect_to_https(session: &mut Session, port: u16) -> Result<()> {
    let req = session.req_header();
    let host = req
        .uri
        .host()
        .map(str::to_string)
        .or_else(|| {
            let h = req.headers.get(http::header::HOST)?.to_str().ok()?;
            // host[:port], or [v6]:port
            let host = match h.rsplit_once(':') {
                Some((host, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty() => {
                    host
                }
                _ => h,
            };
            Some(host.to_string())
        })
        .filter(|h| !h.is_empty());
    let Some(host) = host else {
        session.set_keepalive(None);
        let body = bytes::Bytes::from_static(b"no Host to redirect to https with\n");
        return session.respond_error_with_body(400, body).await;
    };
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let mut resp = ResponseHeader::build(308, Some(2))?;
    resp.insert_header(http::header::LOCATION, location)?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    session.write_response_header(Box::new(resp), true).await
}

/// The index of the pool whose name is `name`.
fn pool_by_name(table: &RoutingTable, name: &[u8]) -> Option<PoolId> {
    table.pools.iter().position(|p| p.name.as_bytes() == name)
}

/// How long an idle client connection is kept open between requests, in seconds (pingora's
/// wait for a connection's first request; nginx's `keepalive_timeout` is 75 s).
pub const CLIENT_KEEPALIVE_SECS: u64 = 60;

/// Most request headers accepted (nginx and HAProxy allow about 100).
pub const MAX_HEADERS: usize = 100;
/// Most bytes of request headers accepted: 32 KiB, between nginx's 8 KiB lines and HAProxy's
/// 16 KiB buffer on one side and pingora's own 1 MiB on the other.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Why a request's framing or size is refused: `(status, reason)`.
///
/// Refused: a `Content-Length` that is not a plain number or is given twice with different values;
/// `Content-Length` together with `Transfer-Encoding`; any transfer coding but a single `chunked`;
/// `Transfer-Encoding` on HTTP/1.0; more than [`MAX_HEADERS`] headers or [`MAX_HEADER_BYTES`].
pub fn framing_error(req: &RequestHeader) -> Option<(u16, &'static str)> {
    let h = &req.headers;
    if h.len() > MAX_HEADERS {
        return Some((431, "too many request headers"));
    }
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if bytes > MAX_HEADER_BYTES {
        return Some((431, "request headers too large"));
    }
    let mut length: Option<&[u8]> = None;
    for v in h.get_all(http::header::CONTENT_LENGTH) {
        let v = v.as_bytes().trim_ascii();
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Some((400, "invalid Content-Length"));
        }
        if length.is_some_and(|l| l != v) {
            return Some((400, "conflicting Content-Length headers"));
        }
        length = Some(v);
    }
    let mut te = h.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(first) = te.next() {
        if length.is_some() {
            return Some((400, "both Content-Length and Transfer-Encoding"));
        }
        if req.version == http::Version::HTTP_10 {
            return Some((400, "Transfer-Encoding on HTTP/1.0"));
        }
        if te.next().is_some()
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return Some((400, "unsupported Transfer-Encoding"));
        }
    }
    None
}

/// Why a request's `Host` is refused, if it is (RFC 9112 §3.2: "A server MUST respond with a 400
/// (Bad Request) status code to any HTTP/1.1 request message that lacks a Host header field and
/// to any request message that contains more than one Host header field line or a Host header
/// field with an invalid field value"). pingora already refuses a second `Host`, userinfo, and
/// a `Host` that differs from an absolute target; what is left is a missing one on HTTP/1.1 and
/// one that is not `host[:port]` (RFC 3986 §3.2.2: a bracketed IP literal or a reg-name of
/// unreserved, percent-encoded and sub-delims characters). An empty `Host` is valid.
pub fn host_error(req: &RequestHeader) -> Option<&'static str> {
    let Some(host) = req.headers.get(http::header::HOST) else {
        return (req.version == http::Version::HTTP_11).then_some("HTTP/1.1 request without Host");
    };
    (!valid_host(host.as_bytes())).then_some("invalid Host header")
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2).
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &v[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.vV".contains(b))
        {
            return false;
        }
        match &v[end + 1..] {
            [] => (&v[..0], None),
            [b':', port @ ..] => (&v[..0], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|b| *b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    let reg_name = host
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b));
    reg_name && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

/// Whether raw request headers include a `Content-Length` field (any case).
fn has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').any(|line| {
        line.len() > 15
            && line[..14].eq_ignore_ascii_case(b"content-length")
            && line[14..].trim_ascii_start().starts_with(b":")
    })
}

/// What a failed exchange with a backend counts as.
fn upstream_error_kind(e: &Error) -> UpstreamErrorKind {
    match e.etype() {
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
        | BindError | SocketError | TLSHandshakeFailure | TLSHandshakeTimedout => {
            UpstreamErrorKind::Connect
        }
        ReadTimedout | WriteTimedout => UpstreamErrorKind::Timeout,
        ConnectionClosed | ReadError | WriteError | H2Error | InvalidHTTPHeader => {
            UpstreamErrorKind::Reset
        }
        _ => UpstreamErrorKind::Other,
    }
}

/// The routing decision for one request: the table it was made with (held so a retry uses the same
/// pools) and the pool. Counts the request as in flight on that pool for as long as it lives.
pub struct Route {
    table: Arc<RoutingTable>,
    pool: PoolId,
}

impl Route {
    fn new(table: Arc<RoutingTable>, pool: PoolId) -> Route {
        table.pool(pool).begin_request();
        Route { table, pool }
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        self.table.pool(self.pool).end_request();
    }
}

/// Per-request state: the routing decision, made once and kept.
pub struct RequestCtx {
    route: Option<Route>,
    /// A fresh `sy_uid` to set on the response.
    set_cookie: Option<String>,
    backend: Option<usize>,
    /// The backend that refused a connection, to be avoided on the one retry.
    failed_backend: Option<usize>,
    connect_retries: u8,
    start: Instant,
    /// When the last upstream attempt began (the peer was chosen), for the access log.
    upstream_start: Option<Instant>,
    /// From `upstream_start` to the upstream's response header, for the access log.
    upstream_time: Option<std::time::Duration>,
    /// This request is being copied to the shadow colour: what is kept of it until it is done.
    shadow: Option<Box<Capture>>,
}

/// The body of an injected abort: says what it is, so nobody debugs the application for it.
static INJECTED_FAULT: bytes::Bytes =
    bytes::Bytes::from_static(b"fault injected by switchyard (ctl faults clear stops it)\n");

/// The body of the 503 answered when neither pool has a healthy backend.
static NO_HEALTHY_BACKEND: bytes::Bytes =
    bytes::Bytes::from_static(b"no healthy backend in either pool\n");

/// A connect failure is retried once on another backend of the same pool (nothing was sent yet,
/// so this is always safe); more would multiply latency when a whole pool is down.
const MAX_CONNECT_RETRIES: u8 = 1;

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            route: None,
            set_cookie: None,
            backend: None,
            failed_backend: None,
            connect_retries: 0,
            start: Instant::now(),
            upstream_start: None,
            upstream_time: None,
            shadow: None,
        }
    }

    /// Turns on pingora's HTTP/1.1 pipelining for the client connection (off by default). Without
    /// it, a request that arrives in the same read as the one before it is dropped: the first
    /// response says `keep-alive`, then the connection closes and the second request is lost
    /// (pingora#377). With it, requests written back to back are answered one after the other,
    /// in order (RFC 9112 §9.3.2), each forwarded once. pingora carries the setting across the
    /// connection's requests; setting it again on each is one store.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        session.set_pipelining_enabled(true);
        // pingora waits for a client's next request forever once it has answered one with
        // keep-alive; bound the wait (only where keep-alive is on: never turn it on for a
        // client that did not ask for it).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(CLIENT_KEEPALIVE_SECS));
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let error = framing_error(session.req_header())
            .or_else(|| host_error(session.req_header()).map(|why| (400, why)))
            .or_else(|| {
                // pingora drops Content-Length when Transfer-Encoding is also present (and closes the
                // connection after); refuse such a request outright, as the raw header shows it.
                let te = session
                    .req_header()
                    .headers
                    .contains_key(http::header::TRANSFER_ENCODING);
                let raw = te.then(|| {
                    session
                        .as_downstream()
                        .as_http1()
                        .map(|s| s.get_headers_raw_bytes())
                });
                raw.flatten()
                    .filter(|raw| has_content_length(raw))
                    .map(|_| (400, "both Content-Length and Transfer-Encoding"))
            });
        if let Some((status, why)) = error {
            // Ambiguous framing is how requests get smuggled past a proxy: refuse it, and close
            // the connection, since where this request ends is exactly what is in doubt.
            session.set_keepalive(None);
            let body = bytes::Bytes::from(format!("{why}\n"));
            session.respond_error_with_body(status, body).await?;
            return Ok(true);
        }
        let tls = is_tls(session);
        if !tls {
            let port = self.switchboard.load().settings.redirect_https_port;
            if let Some(port) = port {
                redirect_to_https(session, port).await?;
                return Ok(true);
            }
        }
        if crate::upgrade::handed_over() {
            // ctl upgrade: this process has handed its sockets to a new one and stops in a few
            // seconds. Close each connection after its response, so the client's next request
            // goes out on a connection the new process accepts instead of racing the shutdown
            // (which drops idle keep-alive connections). One relaxed load per request.
            session.set_keepalive(None);
        }
        let table = self.switchboard.load_full();
        let (chosen, preview) = match self.preview_pool(session, &table) {
            Some(pool) => (pool, true),
            None => (self.weighted_pool(session, &table, ctx), false),
        };
        // A pool with no healthy backend fails over to the other colour when that one can
        // serve; with neither, the request gets 503 now rather than a connect timeout later.
        // A preview never fails over: it asked for one pool and must see that pool.
        let pool = if table.pool(chosen).healthy_count() > 0 {
            chosen
        } else if !preview && table.pool(other(chosen)).healthy_count() > 0 {
            self.metrics.record_failover(chosen, other(chosen));
            other(chosen)
        } else {
            ctx.route = Some(Route::new(table, chosen));
            session
                .respond_error_with_body(503, NO_HEALTHY_BACKEND.clone())
                .await?;
            return Ok(true);
        };
        let primary = table.state.primary;
        ctx.route = Some(Route::new(table, pool));
        if let Some(injection) = self.faults.decide(pool) {
            if let Some(delay) = injection.delay {
                self.metrics.record_fault(pool, FaultKind::Delay);
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = injection.abort {
                self.metrics.record_fault(pool, FaultKind::Abort);
                session
                    .respond_error_with_body(status, INJECTED_FAULT.clone())
                    .await?;
                return Ok(true);
            }
        }
        if !preview {
            let req = session.req_header();
            ctx.shadow = self.shadow.pick(pool, primary, &req.method, &req.headers);
        }
        Ok(false)
    }

    /// Works around pingora#935 (open in 0.9.1): an HTTP/2 client that ends its request body
    /// with an empty DATA frame carrying END_STREAM (curl -T -, most streaming clients) makes
    /// pingora write the HTTP/1.1 chunked terminator twice to an HTTP/1.1 backend, which then
    /// reads the second `0\r\n\r\n` as the start of the next request on that pooled
    /// connection and answers an unrelated later request with 400. Dropping the empty last
    /// chunk leaves the terminator to pingora's `finish`, which writes it once.
    ///
    /// Also keeps the body of a request being copied to the shadow colour (up to
    /// `shadow.max_body`; a larger one is not copied).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(capture), Some(chunk)) = (ctx.shadow.as_mut(), body.as_ref()) {
            if !capture.request_chunk(chunk, &self.metrics) {
                ctx.shadow = None;
            }
        }
        if end_of_stream && body.as_ref().is_some_and(|b| b.is_empty()) {
            *body = None;
        }
        Ok(())
    }

    /// Keeps the live answer's body for the shadow diff (up to `shadow.max_body`).
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let (Some(capture), Some(chunk)) = (ctx.shadow.as_mut(), body.as_ref()) {
            capture.response_chunk(chunk);
        }
        Ok(None)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = &ctx.route else {
            return Err(Error::explain(
                InternalError,
                "no routing decision for request",
            ));
        };
        let pool = route.table.pool(route.pool);
        let Some(idx) = pool.select(ctx.failed_backend) else {
            return Err(Error::explain(
                HTTPStatus(503),
                format!("pool {} has no healthy backend", pool.name),
            ));
        };
        ctx.backend = Some(idx);
        if route.table.settings.access_log {
            // Only the access log reads it: no clock read per request otherwise.
            ctx.upstream_start = Some(Instant::now());
        }
        let mut peer = route.table.settings.transports[route.pool].peer(pool.backends[idx].addr);
        let up = &route.table.settings.upstream;
        let opts = &mut peer.options;
        opts.connection_timeout = Some(up.connect_timeout);
        opts.total_connection_timeout = Some(up.connect_timeout);
        opts.read_timeout = Some(up.read_timeout);
        opts.write_timeout = Some(up.write_timeout);
        opts.idle_timeout = Some(up.idle_timeout);
        opts.discard_h1_header_case = !self.preserve_header_case;
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(r) = &ctx.route {
            self.metrics
                .record_upstream_error(r.pool, UpstreamErrorKind::Connect);
        }
        // Retry only when another healthy backend exists: retrying the one that just refused
        // would only double the wait.
        let others = ctx.route.as_ref().is_some_and(|r| {
            let pool = r.table.pool(r.pool);
            pool.backends
                .iter()
                .enumerate()
                .any(|(i, b)| Some(i) != ctx.backend && b.is_healthy())
        });
        if ctx.connect_retries < MAX_CONNECT_RETRIES && others {
            ctx.connect_retries += 1;
            ctx.failed_backend = ctx.backend;
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client = client_ip(session);
        let trusted = client.is_some_and(|ip| {
            ctx.route.as_ref().is_some_and(|r| {
                r.table
                    .settings
                    .trusted_proxies
                    .iter()
                    .any(|net| net.contains(&ip))
            })
        });
        forwarding::upstream_request(upstream_request, client, trusted, is_tls(session))?;
        if let Some(capture) = ctx.shadow.as_mut() {
            // The copy goes out as the live request did, forwarding headers and all.
            capture.request = Some(upstream_request.clone());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(t) = ctx.upstream_start {
            ctx.upstream_time = Some(t.elapsed());
        }
        if let Some(route) = &ctx.route {
            if route.table.settings.response_header {
                forwarding::mark_response(upstream_response, &self.pool_header_values[route.pool])?;
            }
        }
        if let Some(capture) = ctx.shadow.as_mut() {
            capture.live_status = upstream_response.status.as_u16();
        }
        if let Some(uid) = ctx.set_cookie.take() {
            let cookie = format!("{STICKY_COOKIE}={uid}{STICKY_COOKIE_ATTRS}");
            upstream_response.append_header("set-cookie", cookie)?;
        }
        Ok(())
    }

    /// pingora's answer to a failed request, except that a backend which did not answer in time
    /// gets 504 Gateway Timeout (as from nginx) rather than 502: the two say different things to
    /// whoever reads the logs.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match (e.etype(), e.esource()) {
            (HTTPStatus(code), _) => *code,
            (ConnectTimedout | ReadTimedout | WriteTimedout, ErrorSource::Upstream) => 504,
            (_, ErrorSource::Upstream) => 502,
            // The client is gone: nobody to answer.
            (WriteError | ReadError | ConnectionClosed, ErrorSource::Downstream) => 0,
            (_, ErrorSource::Downstream) => 400,
            (_, ErrorSource::Internal | ErrorSource::Unset) => 500,
        };
        if code > 0 {
            if let Err(e) = session.respond_error(code).await {
                tracing::debug!("could not send the error response: {e}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let upstream_error = e.filter(|e| *e.esource() == ErrorSource::Upstream);
        if let Some(r) = &ctx.route {
            if let Some(e) = upstream_error {
                let kind = upstream_error_kind(e);
                // Connect failures were counted as they happened, retried or not.
                if kind != UpstreamErrorKind::Connect {
                    self.metrics.record_upstream_error(r.pool, kind);
                }
            }
            let elapsed = ctx.start.elapsed();
            let failed = upstream_error.is_some();
            self.metrics.record_request(r.pool, status, elapsed, failed);
            // The client has its whole answer: now (and only if it went through) the copy goes.
            if let Some(capture) = ctx.shadow.take() {
                if e.is_none() && status != 0 && status != 101 {
                    self.shadow.submit(capture, elapsed);
                }
            }
        }
        let access_log = match &ctx.route {
            Some(r) => r.table.settings.access_log,
            None => self.switchboard.load().settings.access_log,
        };
        if !access_log {
            return;
        }
        // A field with nothing to say is left out (a `None` records nothing), never logged empty.
        let (pool, backend) = match &ctx.route {
            Some(r) => {
                let pool = r.table.pool(r.pool);
                let backend = ctx.backend.map(|b| pool.backends[b].addr);
                (Some(pool.name.as_str()), backend)
            }
            None => (None, None),
        };
        let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let req = session.req_header();
        tracing::info!(
            target: "access",
            client = session.client_addr().map(tracing::field::display),
            method = %req.method,
            path = %req.uri.path(),
            pool,
            backend = backend.map(tracing::field::display),
            // 0: no response was written (the client left first).
            status = (status != 0).then_some(status),
            bytes_sent = session.body_bytes_sent() as u64,
            bytes_received = session.body_bytes_read() as u64,
            duration_ms = ms(ctx.start.elapsed()),
            upstream_ms = ctx.upstream_time.map(ms),
            error = e.map(|e| e.etype().as_str()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn plain_framing_passes() {
        assert_eq!(framing_error(&req(&[("content-length", "5")])), None);
        assert_eq!(
            framing_error(&req(&[("content-length", "5"), ("content-length", "5")])),
            None
        );
        assert_eq!(
            framing_error(&req(&[("transfer-encoding", "chunked")])),
            None
        );
        assert_eq!(
            framing_error(&req(&[("transfer-encoding", " Chunked ")])),
            None
        );
        assert_eq!(framing_error(&req(&[])), None);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let bad = |h: &[(&str, &str)]| framing_error(&req(h)).map(|(s, _)| s);
        assert_eq!(
            bad(&[("content-length", "5"), ("transfer-encoding", "chunked")]),
            Some(400)
        );
        assert_eq!(
            bad(&[("content-length", "5"), ("content-length", "6")]),
            Some(400)
        );
        assert_eq!(bad(&[("content-length", "+5")]), Some(400));
        assert_eq!(bad(&[("content-length", "5, 5")]), Some(400));
        assert_eq!(bad(&[("transfer-encoding", "chunked, chunked")]), Some(400));
        assert_eq!(bad(&[("transfer-encoding", "gzip")]), Some(400));
        assert_eq!(bad(&[("transfer-encoding", "gzip, chunked")]), Some(400));
        assert_eq!(
            bad(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]),
            Some(400)
        );
        let mut old = req(&[("transfer-encoding", "chunked")]);
        old.set_version(http::Version::HTTP_10);
        assert_eq!(framing_error(&old).map(|(s, _)| s), Some(400));
    }

    #[test]
    fn host_is_required_on_http11_and_must_be_host_port() {
        let with_host = |v: Option<&str>, version| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.set_version(version);
            if let Some(v) = v {
                r.append_header("host", v).unwrap();
            }
            host_error(&r)
        };
        use http::Version;
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "[2001:db8::1]",
            "xn--bcher-kva.example",
            "a_b.local",
            "",
            "h:",
        ] {
            assert_eq!(with_host(Some(ok), Version::HTTP_11), None, "{ok:?}");
        }
        for bad in [
            "a b", "a/b", "a?b", "a#b", "a:b", "[::1", "[::1]x", "[zz]", "a\\b", "a\"b",
        ] {
            assert!(with_host(Some(bad), Version::HTTP_11).is_some(), "{bad:?}");
        }
        assert!(with_host(None, Version::HTTP_11).is_some());
        assert_eq!(with_host(None, Version::HTTP_10), None);
    }

    #[test]
    fn raw_content_length_is_found_in_any_case() {
        assert!(has_content_length(
            b"POST / HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: 4\r\n\r\n"
        ));
        assert!(has_content_length(
            b"POST / HTTP/1.1\r\nContent-Length : 4\r\n\r\n"
        ));
        assert!(!has_content_length(
            b"POST / HTTP/1.1\r\nX-Content-Length: 4\r\n\r\n"
        ));
        assert!(!has_content_length(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }

    #[test]
    fn oversized_headers_get_431() {
        let many: Vec<(String, String)> =
            (0..101).map(|i| (format!("x-h{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(framing_error(&req(&many)).map(|(s, _)| s), Some(431));
        let big = "x".repeat(MAX_HEADER_BYTES);
        assert_eq!(
            framing_error(&req(&[("x-big", &big)])).map(|(s, _)| s),
            Some(431)
        );
        let fine = "x".repeat(8 * 1024);
        assert_eq!(framing_error(&req(&[("x-fine", &fine)])), None);
    }
}
