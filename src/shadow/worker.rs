//! The shadow worker: takes copies off the queue, at most `shadow.concurrency` at a time, sends
//! each to a healthy backend of the shadow colour within `shadow.timeout`, and adds the outcome
//! to its session's report.
//!
//! A copy is taken off the queue only when a slot is free, so a shadow colour that hangs holds
//! `concurrency` copies in flight and `queue` waiting, and every further copy is dropped at the
//! proxy (counted) without ever being held: memory stays bounded and the client never waits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{mpsc, Semaphore};

use super::diff::Outcome;
use super::{diff, Copy, Shadow, SHADOW_HEADER};
use crate::metrics::ShadowResult;
use crate::routing::Switchboard;

/// Sends the copies; a pingora background service.
pub struct ShadowService {
    shadow: Arc<Shadow>,
    switchboard: Arc<Switchboard>,
    queue: Mutex<Option<mpsc::Receiver<Copy>>>,
    concurrency: usize,
    connect_timeout: Duration,
}

impl ShadowService {
    pub fn new(
        shadow: Arc<Shadow>,
        switchboard: Arc<Switchboard>,
        queue: mpsc::Receiver<Copy>,
        concurrency: usize,
        connect_timeout: Duration,
    ) -> ShadowService {
        ShadowService {
            shadow,
            switchboard,
            queue: Mutex::new(Some(queue)),
            concurrency: concurrency.max(1),
            connect_timeout,
        }
    }
}

#[async_trait]
impl BackgroundService for ShadowService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut queue) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let client = client(self.connect_timeout, self.concurrency);
        loop {
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => s,
                _ = shutdown.changed() => return,
            };
            let Ok(slot) = slot else { return };
            let copy = tokio::select! {
                c = queue.recv() => c,
                _ = shutdown.changed() => return,
            };
            let Some(copy) = copy else { return };
            let (shadow, switchboard) = (self.shadow.clone(), self.switchboard.clone());
            let client = client.clone();
            tokio::spawn(async move {
                send(&client, &shadow, &switchboard, copy).await;
                drop(slot);
            });
        }
    }
}

/// Sends one copy and records what came of it.
async fn send(client: &CopyClient, shadow: &Shadow, switchboard: &Switchboard, copy: Copy) {
    let session = copy.session.clone();
    let settings = &session.settings;
    let addr = {
        let table = switchboard.load();
        let pool = table.pool(session.target);
        pool.select(None).map(|i| pool.backends[i].addr)
    };
    let Some(addr) = addr else {
        shadow.dropped(&session);
        return;
    };
    let method = copy.request.method.to_string();
    let path = copy.request.uri.path().to_string();
    let started = Instant::now();
    let answer = tokio::time::timeout(
        settings.timeout,
        exchange(client, addr, &copy, settings.max_body),
    )
    .await;
    let latency = started.elapsed();
    let shadow_answer = match answer {
        Ok(Ok((status, body))) => Some((status, latency, body)),
        Ok(Err(e)) => {
            tracing::debug!("shadow copy of {method} {path} to {addr} failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!("shadow copy of {method} {path} to {addr} timed out");
            None
        }
    };
    shadow.metrics().record_shadow(if shadow_answer.is_some() {
        ShadowResult::Mirrored
    } else {
        ShadowResult::Failed
    });
    session.report.record(
        &settings.comparison,
        Outcome {
            route: diff::route_of(&settings.routes, &method, &path),
            method: &method,
            path: &path,
            live_status: copy.live_status,
            live_latency: copy.live_latency,
            live_body: copy.live_body.as_deref(),
            shadow: shadow_answer
                .as_ref()
                .map(|(s, l, b)| (*s, *l, b.as_deref())),
        },
    );
}

/// The client copies go out on: HTTP/1.1, connections kept per backend (up to the worker's
/// concurrency), so a steady shadow does not open a connection per copy.
pub type CopyClient = Client<HttpConnector, Full<Bytes>>;

/// Idle connections to the shadow colour live this long: shorter than common app servers' own
/// keep-alive (like `upstream.idle_timeout`), so a reuse never races the backend's close.
const IDLE: Duration = Duration::from_secs(1);

fn client(connect_timeout: Duration, concurrency: usize) -> CopyClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE)
        .pool_max_idle_per_host(concurrency)
        .build(connector)
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error("{0}")]
    Client(#[from] hyper_util::client::legacy::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
}

/// One HTTP/1.1 exchange with `addr`: the status and the body (`None` when it is over
/// `max_body`, which is then not read further).
async fn exchange(
    client: &CopyClient,
    addr: std::net::SocketAddr,
    copy: &Copy,
    max_body: usize,
) -> Result<(u16, Option<Bytes>), CopyError> {
    let target = copy
        .request
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str());
    let mut req = hyper::Request::builder()
        .method(copy.request.method.clone())
        .uri(format!("http://{addr}{target}"));
    for (name, value) in copy.request.headers.iter() {
        // Framing is the client's to set for the body it sends; hop-by-hop headers are not ours.
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "keep-alive" | "upgrade"
        ) {
            continue;
        }
        req = req.header(name, value);
    }
    req = req.header(SHADOW_HEADER, "1");
    let req = req.body(Full::new(copy.request_body.clone()))?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut kept = Vec::new();
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame?.into_data() {
            if kept.len() + data.len() > max_body {
                // Not read further: the connection is closed rather than reused.
                return Ok((status, None));
            }
            kept.extend_from_slice(&data);
        }
    }
    Ok((status, Some(Bytes::from(kept))))
}
