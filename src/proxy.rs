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
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Config, Sticky, UpstreamConfig, MAX_BP};
use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::preview::{self, PreviewKey, PREVIEW_COOKIE};
use crate::routing::{other, PoolId, RoutingTable, Switchboard};

/// Response header naming the pool that served the request; request header for preview routing.
pub const POOL_HEADER: &str = "x-switchyard-pool";
/// Request header carrying the preview token.
pub const PREVIEW_TOKEN_HEADER: &str = "x-switchyard-preview-token";

/// What the proxy needs from the configuration, fixed at start-up.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub response_header: bool,
    pub access_log: bool,
    pub upstream: UpstreamConfig,
    pub sticky: Sticky,
    /// The preview secret, when `routing.preview_token_file` is set.
    pub preview: Option<PreviewKey>,
}

impl ProxySettings {
    /// Settings from `config`; `preview` is the loaded preview token, if configured.
    pub fn from_config(config: &Config, preview: Option<PreviewKey>) -> ProxySettings {
        ProxySettings {
            response_header: config.routing.response_header,
            access_log: config.log.access,
            upstream: config.upstream.clone(),
            sticky: config.routing.sticky.clone(),
            preview,
        }
    }
}

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

/// The proxy: stateless apart from the shared, lock-free [`Switchboard`].
pub struct Proxy {
    switchboard: Arc<Switchboard>,
    metrics: Arc<Metrics>,
    settings: ProxySettings,
    /// `x-switchyard-pool` values, built once rather than per response.
    pool_header_values: [HeaderValue; 2],
}

impl Proxy {
    pub fn new(
        switchboard: Arc<Switchboard>,
        metrics: Arc<Metrics>,
        settings: ProxySettings,
    ) -> Proxy {
        let names = switchboard.pool_names();
        let value = |n: &str| HeaderValue::from_str(n).expect("pool names are valid header values");
        Proxy {
            pool_header_values: [value(&names[0]), value(&names[1])],
            switchboard,
            metrics,
            settings,
        }
    }
}

impl Proxy {
    /// The pool a valid preview (token header or signed cookie) asks for. A pool header without
    /// a valid token is ignored and counted.
    fn preview_pool(&self, session: &Session, table: &RoutingTable) -> Option<PoolId> {
        let headers = &session.req_header().headers;
        let asked = headers.get(POOL_HEADER);
        if let Some(key) = &self.settings.preview {
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
        match &self.settings.sticky {
            Sticky::None => table.pool_for_key(None),
            Sticky::Header(name) => table.pool_for_key(headers.get(name).map(|v| v.as_bytes())),
            Sticky::Ip => match session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
            {
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

/// The index of the pool whose name is `name`.
fn pool_by_name(table: &RoutingTable, name: &[u8]) -> Option<PoolId> {
    table.pools.iter().position(|p| p.name.as_bytes() == name)
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
    /// The request chose its pool with a valid preview token or cookie.
    preview: bool,
    backend: Option<usize>,
    /// The backend that refused a connection, to be avoided on the one retry.
    failed_backend: Option<usize>,
    connect_retries: u8,
    start: Instant,
}

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
            preview: false,
            backend: None,
            failed_backend: None,
            connect_retries: 0,
            start: Instant::now(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let table = self.switchboard.load_full();
        let (chosen, preview) = match self.preview_pool(session, &table) {
            Some(pool) => (pool, true),
            None => (self.weighted_pool(session, &table, ctx), false),
        };
        ctx.preview = preview;
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
        ctx.route = Some(Route::new(table, pool));
        Ok(false)
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
        let mut peer = HttpPeer::new(pool.backends[idx].addr, false, String::new());
        let up = &self.settings.upstream;
        let opts = &mut peer.options;
        opts.connection_timeout = Some(up.connect_timeout);
        opts.total_connection_timeout = Some(up.connect_timeout);
        opts.read_timeout = Some(up.read_timeout);
        opts.write_timeout = Some(up.write_timeout);
        opts.idle_timeout = Some(up.idle_timeout);
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
        let others = ctx
            .route
            .as_ref()
            .is_some_and(|r| r.table.pool(r.pool).backends.len() > 1);
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
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Routing headers are ours, never the application's: strip them so a preview token cannot
        // leak to a backend (or its logs).
        upstream_request.remove_header(POOL_HEADER);
        upstream_request.remove_header(PREVIEW_TOKEN_HEADER);
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let xff = match upstream_request.headers.get("x-forwarded-for") {
                Some(prev) => {
                    let mut v = prev.as_bytes().to_vec();
                    v.extend_from_slice(b", ");
                    v.extend_from_slice(ip.to_string().as_bytes());
                    HeaderValue::from_bytes(&v).ok()
                }
                None => HeaderValue::from_str(&ip.to_string()).ok(),
            };
            if let Some(xff) = xff {
                upstream_request.insert_header("x-forwarded-for", xff)?;
            }
        }
        upstream_request.insert_header("x-forwarded-proto", HeaderValue::from_static("http"))?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if self.settings.response_header {
            if let Some(route) = &ctx.route {
                upstream_response
                    .insert_header(POOL_HEADER, self.pool_header_values[route.pool].clone())?;
            }
        }
        if let Some(uid) = ctx.set_cookie.take() {
            let cookie = format!("{STICKY_COOKIE}={uid}{STICKY_COOKIE_ATTRS}");
            upstream_response.append_header("set-cookie", cookie)?;
        }
        Ok(())
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
        }
        if !self.settings.access_log {
            return;
        }
        let (pool, backend) = match &ctx.route {
            Some(r) => {
                let pool = r.table.pool(r.pool);
                let backend = ctx.backend.map(|b| pool.backends[b].addr.to_string());
                (pool.name.as_str(), backend.unwrap_or_else(|| "-".into()))
            }
            None => ("-", "-".into()),
        };
        let req = session.req_header();
        tracing::info!(
            target: "access",
            client = %session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
            method = %req.method,
            path = %req.uri.path(),
            pool,
            backend = %backend,
            status,
            duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0,
            error = e.map(|e| e.etype().as_str()).unwrap_or(""),
        );
    }
}
