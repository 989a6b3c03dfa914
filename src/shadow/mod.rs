//! Shadow traffic: a share of the requests the live colour answers is also sent to the other
//! colour, and the two answers are compared, before that colour takes any real traffic.
//!
//! The client never waits for a copy. The proxy decides per request whether to copy it (one
//! `ArcSwapOption::load()` and, for a candidate, one atomic step of the session's counter: the
//! same low-discrepancy sequence as keyless canary routing, so the share is exact), keeps the
//! request and the live answer in the request context (bodies up to `shadow.max_body`), and once
//! the live response is finished hands the copy to a bounded queue with `try_send`. When the
//! queue is full the copy is dropped and counted; nothing ever waits on it. A background worker
//! ([`worker::ShadowService`]) sends at most `shadow.concurrency` copies at a time, each bounded
//! by `shadow.timeout`, with `x-switchyard-shadow: 1` so the application can skip side effects,
//! and adds each outcome to the session's [`diff::Report`].
//!
//! Only GET and HEAD are copied unless `shadow.methods` says otherwise: a copied POST may
//! charge a card twice.

pub mod diff;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use tokio::sync::mpsc;

use crate::config::{CompareBody, ShadowConfig};
use crate::metrics::{Metrics, ShadowResult};
use crate::routing::{sequence_bucket, PoolId, BUCKETS};
use diff::{Comparison, Report};

/// The header every copy carries, so an application can tell a copy and skip side effects. A
/// request that already carries it is never copied again.
pub const SHADOW_HEADER: &str = "x-switchyard-shadow";

/// What a session copies and how it compares: taken from `[shadow]` when the session starts, so
/// a reload applies to the next session.
#[derive(Debug, Clone)]
pub struct Settings {
    pub methods: Vec<http::Method>,
    pub max_body: usize,
    pub timeout: Duration,
    pub comparison: Comparison,
    pub routes: Vec<String>,
}

impl Settings {
    pub fn from_config(c: &ShadowConfig) -> Settings {
        Settings {
            methods: c.methods.clone(),
            max_body: c.max_body,
            timeout: c.timeout,
            comparison: Comparison {
                body: c.compare_body,
                ignore_fields: c.ignore_fields.clone(),
            },
            routes: c.routes.clone(),
        }
    }
}

/// One shadow session: copy `bp` of the live pool's requests to `target`, until `until`.
#[derive(Debug)]
pub struct Session {
    /// The colour receiving copies, and the live colour they are copied from.
    pub target: PoolId,
    pub live: PoolId,
    pub bp: u32,
    pub until: Instant,
    pub until_wall: SystemTime,
    pub since: String,
    pub actor: String,
    pub reason: Option<String>,
    pub settings: Settings,
    /// Off once stopped or expired; the report stays readable until the next session.
    active: AtomicBool,
    /// When it ended (RFC 3339), and why (`stopped`, `expired`, `flipped`).
    ended: std::sync::Mutex<Option<(String, String)>>,
    /// Live requests that were candidates: the position in the sequence.
    seen: AtomicU64,
    /// Copies dropped (queue full, no healthy shadow backend) and not made (body too large).
    dropped: AtomicU64,
    too_large: AtomicU64,
    pub report: Report,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: PoolId,
        live: PoolId,
        bp: u32,
        duration: Duration,
        actor: &str,
        reason: Option<String>,
        settings: Settings,
    ) -> Session {
        Session {
            target,
            live,
            bp: bp.min(BUCKETS),
            until: Instant::now() + duration,
            until_wall: SystemTime::now() + duration,
            since: crate::state::now_rfc3339(),
            actor: actor.to_string(),
            reason,
            settings,
            active: AtomicBool::new(true),
            ended: std::sync::Mutex::new(None),
            seen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
            report: Report::default(),
        }
    }

    /// Copying now: not stopped and not past its time.
    pub fn is_active(&self, now: Instant) -> bool {
        self.active.load(Ordering::Relaxed) && now < self.until
    }

    /// Whether it was running until this call (so its end is recorded once).
    pub fn end(&self, why: &str) -> bool {
        let was = self.active.swap(false, Ordering::Relaxed);
        if was {
            *self.ended.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((crate::state::now_rfc3339(), why.to_string()));
        }
        was
    }

    /// Marked active but past its time: the admin's tick ends it.
    pub fn expired(&self, now: Instant) -> bool {
        self.active.load(Ordering::Relaxed) && now >= self.until
    }

    /// When and why it ended.
    pub fn ended(&self) -> Option<(String, String)> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn too_large(&self) -> u64 {
        self.too_large.load(Ordering::Relaxed)
    }

    /// Whether the next candidate request is copied.
    #[inline]
    fn take(&self) -> bool {
        sequence_bucket(self.seen.fetch_add(1, Ordering::Relaxed)) < self.bp
    }
}

/// What the proxy keeps of a request being copied, in its context.
#[derive(Debug)]
pub struct Capture {
    pub session: Arc<Session>,
    /// The request as sent to the live colour (after the forwarding headers).
    pub request: Option<RequestHeader>,
    pub request_body: BytesMut,
    pub live_status: u16,
    pub live_body: BytesMut,
    /// The live body went over `max_body`: compare the status only.
    pub live_body_over: bool,
    /// Whether the live body is kept at all (`compare_body` is not `none`).
    keep_live_body: bool,
}

impl Capture {
    /// Adds a chunk of the request body; `false` (and counted) once it goes over `max_body`:
    /// the request is then not copied.
    pub fn request_chunk(&mut self, chunk: &[u8], metrics: &Metrics) -> bool {
        if self.request_body.len() + chunk.len() > self.session.settings.max_body {
            self.session.too_large.fetch_add(1, Ordering::Relaxed);
            metrics.record_shadow(ShadowResult::TooLarge);
            return false;
        }
        self.request_body.extend_from_slice(chunk);
        true
    }

    /// Adds a chunk of the live response body, up to `max_body`.
    pub fn response_chunk(&mut self, chunk: &[u8]) {
        if !self.keep_live_body || self.live_body_over {
            return;
        }
        if self.live_body.len() + chunk.len() > self.session.settings.max_body {
            self.live_body_over = true;
            self.live_body = BytesMut::new();
            return;
        }
        self.live_body.extend_from_slice(chunk);
    }
}

/// One copy waiting for the worker.
#[derive(Debug)]
pub struct Copy {
    pub session: Arc<Session>,
    pub request: RequestHeader,
    pub request_body: Bytes,
    pub live_status: u16,
    pub live_latency: Duration,
    /// `None` when over `max_body` or not kept.
    pub live_body: Option<Bytes>,
}

/// The shadow session in force and the queue to the worker. Shared by the proxy (reads, and
/// `try_send`), the admin handler (starts and stops sessions) and the worker.
pub struct Shadow {
    session: ArcSwapOption<Session>,
    queue: mpsc::Sender<Copy>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow")
            .field("session", &self.session.load().is_some())
            .finish()
    }
}

impl Shadow {
    /// The shared state and the receiving end for [`worker::ShadowService`].
    pub fn new(
        config: &ShadowConfig,
        metrics: Arc<Metrics>,
    ) -> (Arc<Shadow>, mpsc::Receiver<Copy>) {
        let (tx, rx) = mpsc::channel(config.queue);
        (
            Arc::new(Shadow {
                session: ArcSwapOption::empty(),
                queue: tx,
                metrics,
            }),
            rx,
        )
    }

    /// Whether to copy a request that `live` answers, and if so what to keep of it. `primary`
    /// is the routing table's: a session copies only while its live colour is still live.
    #[inline]
    pub fn pick(
        &self,
        pool: PoolId,
        primary: PoolId,
        method: &http::Method,
        headers: &http::HeaderMap,
    ) -> Option<Box<Capture>> {
        let current = self.session.load();
        let s = current.as_ref()?;
        if pool != s.live
            || primary != s.live
            || !s.settings.methods.contains(method)
            || headers.contains_key(SHADOW_HEADER)
            || !s.is_active(Instant::now())
            || !s.take()
        {
            return None;
        }
        Some(Box::new(Capture {
            session: s.clone(),
            request: None,
            request_body: BytesMut::new(),
            live_status: 0,
            live_body: BytesMut::new(),
            live_body_over: false,
            keep_live_body: s.settings.comparison.body != CompareBody::None,
        }))
    }

    /// Hands a finished request's copy to the worker, or drops it (counted) when the queue is
    /// full. Never waits.
    pub fn submit(&self, c: Box<Capture>, live_latency: Duration) {
        let Capture {
            session,
            request,
            request_body,
            live_status,
            live_body,
            live_body_over,
            keep_live_body,
        } = *c;
        let Some(request) = request else {
            return;
        };
        let copy = Copy {
            session,
            request,
            request_body: request_body.freeze(),
            live_status,
            live_latency,
            live_body: (keep_live_body && !live_body_over).then(|| live_body.freeze()),
        };
        if let Err(e) = self.queue.try_send(copy) {
            let copy = match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            };
            self.dropped(&copy.session);
        }
    }

    /// Counts a copy that was not sent.
    pub fn dropped(&self, session: &Session) {
        session.dropped.fetch_add(1, Ordering::Relaxed);
        self.metrics.record_shadow(ShadowResult::Dropped);
    }

    /// The latest session (running or ended).
    pub fn current(&self) -> Option<Arc<Session>> {
        self.session.load_full()
    }

    /// Starts `session`, replacing (and ending) the one before.
    pub fn start(&self, session: Session) -> Option<Arc<Session>> {
        let old = self.session.swap(Some(Arc::new(session)));
        if let Some(o) = &old {
            o.end("replaced");
        }
        old
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
