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

use crate::config::{Config, UpstreamConfig};
use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::routing::{other, PoolId, RoutingTable, Switchboard, BUCKETS};

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
}

impl ProxySettings {
    pub fn from_config(config: &Config) -> ProxySettings {
        ProxySettings {
            response_header: config.routing.response_header,
            access_log: config.log.access,
            upstream: config.upstream.clone(),
        }
    }
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
            backend: None,
            failed_backend: None,
            connect_retries: 0,
            start: Instant::now(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let table = self.switchboard.load_full();
        let bucket = if table.state.canary_bp == 0 {
            BUCKETS
        } else {
            request_bucket()
        };
        let chosen = table.pool_for_bucket(bucket);
        // A pool with no healthy backend fails over to the other colour when that one can
        // serve; with neither, the request gets 503 now rather than a connect timeout later.
        let pool = if table.pool(chosen).healthy_count() > 0 {
            chosen
        } else if table.pool(other(chosen)).healthy_count() > 0 {
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

/// A per-request bucket for requests that have no sticky key.
fn request_bucket() -> u32 {
    use std::cell::Cell;
    thread_local! {
        static NEXT: Cell<u64> = const { Cell::new(0) };
    }
    // A per-thread Weyl sequence through the bucket space: an even spread over every window of
    // requests without an RNG call or shared counter.
    NEXT.with(|n| {
        let v = n.get().wrapping_add(6_151);
        n.set(v);
        (v % u64::from(BUCKETS)) as u32
    })
}
