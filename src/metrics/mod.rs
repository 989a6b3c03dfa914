//! Metrics: per-pool Prometheus series, and the sliding-window figures that `status`, `watch`
//! and the guard read.
//!
//! Every series of SPEC §5 lives in our own [`Registry`] (never pingora's or the crate's global
//! one). Handles are resolved once at start-up and indexed by pool, so the request path does no
//! label hashing and takes no lock: a request costs a few atomic adds and one histogram
//! observation. Gauges that describe state (health, weights, in-flight) are not updated on the
//! request path at all; they are sampled from the live state when `/metrics` is scraped.

mod window;

pub use window::{Window, WindowStats};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};

use crate::config::{Config, POOL_COUNT};
use crate::guard::Verdict;
use crate::httpd::{self, HandOver};
use crate::routing::{other, PoolId, RouteState, RoutingTable, Switchboard};
use crate::upgrade::HandedOver;

/// Metric names, in one place (SPEC §5).
pub mod names {
    pub const REQUESTS: &str = "switchyard_requests_total";
    pub const DURATION: &str = "switchyard_request_duration_seconds";
    pub const UPSTREAM_ERRORS: &str = "switchyard_upstream_errors_total";
    pub const INFLIGHT: &str = "switchyard_inflight_requests";
    pub const BACKEND_HEALTHY: &str = "switchyard_backend_healthy";
    pub const WEIGHT_BP: &str = "switchyard_pool_weight_bp";
    pub const PRIMARY: &str = "switchyard_primary";
    pub const GENERATION: &str = "switchyard_generation";
    pub const CHANGES: &str = "switchyard_changes_total";
    pub const ROLLBACKS: &str = "switchyard_rollbacks_total";
    pub const FAILOVERS: &str = "switchyard_failovers_total";
    pub const PREVIEW_REJECTED: &str = "switchyard_preview_rejected_total";
    pub const CONFIG_RELOADS: &str = "switchyard_config_reloads_total";
    pub const NOTIFY_FAILURES: &str = "switchyard_notify_failures_total";
    pub const DNS_FAILURES: &str = "switchyard_dns_failures_total";
    pub const DNS_CHANGES: &str = "switchyard_dns_changes_total";
    pub const BUILD_INFO: &str = "switchyard_build_info";
    pub const POOL_INFO: &str = "switchyard_pool_info";
    pub const TRAFFIC_SHARE: &str = "switchyard_pool_traffic_share";
    pub const FAILOVER_ACTIVE: &str = "switchyard_failover_active";
    pub const GUARD_WATCHING: &str = "switchyard_guard_watching";
    pub const GUARD_VERDICT: &str = "switchyard_guard_verdict";
    pub const GUARD_ERROR_RATIO: &str = "switchyard_guard_error_ratio";
    pub const GUARD_P99: &str = "switchyard_guard_p99_seconds";
    pub const ROLLOUT_STEP: &str = "switchyard_rollout_step";
    pub const ROLLOUT_STEPS: &str = "switchyard_rollout_steps";
    pub const INJECTED_FAULTS: &str = "switchyard_injected_faults_total";
    pub const SHADOW_REQUESTS: &str = "switchyard_shadow_requests_total";
}

/// Every `result` of `switchyard_shadow_requests_total`: a copy answered by the shadow colour
/// (`mirrored`), one that failed or timed out (`failed`), one dropped because the queue was full
/// or the shadow colour had no healthy backend (`dropped`), and a request not copied because its
/// body was over `shadow.max_body` (`too_large`).
pub const SHADOW_RESULTS: [&str; 4] = ["mirrored", "failed", "dropped", "too_large"];

/// A `result` of `switchyard_shadow_requests_total`, by index into [`SHADOW_RESULTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowResult {
    Mirrored = 0,
    Failed = 1,
    Dropped = 2,
    TooLarge = 3,
}

/// Every `action` of `switchyard_changes_total` (the admin handler's `action` names and
/// `reload`), exported from start.
pub const CHANGE_ACTIONS: [&str; 6] =
    ["flip", "canary", "promote", "rollback", "rollout", "reload"];

/// Every `verdict` of `switchyard_guard_verdict`: `none` while nothing is judged.
pub const VERDICTS: [&str; 4] = ["none", "waiting", "healthy", "breach"];

/// Every `role` of `switchyard_pool_info`.
pub const ROLES: [&str; 3] = ["live", "canary", "idle"];

/// Latency buckets for a proxy in front of app servers, in seconds: dense (steps of 25–50 %)
/// from 0.5 ms (a cached or local answer) to 1 s, where app latencies live and where a p99 must
/// be read to within a bucket, then a few beyond up to 30 s (timeouts). The sliding window that
/// `status` and the guard read uses the same bounds, so their percentiles and Prometheus'
/// `histogram_quantile` land in the same bucket.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.015,
    0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.5,
    5.0, 10.0, 30.0,
];

/// HTTP status classes, the `code` label.
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// What went wrong talking to a backend, the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
    Other = 3,
}

pub const ERROR_KINDS: [&str; 4] = ["connect", "timeout", "reset", "other"];

/// The status class index of `status` (100–599), or `None` for no response.
pub fn code_class(status: u16) -> Option<usize> {
    match status {
        100..=599 => Some(usize::from(status / 100 - 1)),
        _ => None,
    }
}

/// One pool's request-path series.
pub struct PoolMetrics {
    requests: [IntCounter; 5],
    duration: Histogram,
    upstream_errors: [IntCounter; 4],
    /// Sliding-window figures for `status` and the guard.
    pub window: Window,
}

/// All of switchyard's metrics.
pub struct Metrics {
    registry: Registry,
    pools: [PoolMetrics; POOL_COUNT],
    pool_names: [String; POOL_COUNT],
    inflight: IntGaugeVec,
    backend_healthy: IntGaugeVec,
    weight_bp: IntGaugeVec,
    primary: IntGaugeVec,
    generation: IntGauge,
    changes: IntCounterVec,
    rollbacks: IntCounterVec,
    /// `[from][to]`.
    failovers: [[Option<IntCounter>; POOL_COUNT]; POOL_COUNT],
    pub preview_rejected: IntCounter,
    config_reloads: IntCounterVec,
    pub notify_failures: IntCounter,
    /// Lookups of a backend name that failed or came back empty, by name.
    pub dns_failures: IntCounterVec,
    /// Lookups of a backend name that changed its set of addresses, by name.
    pub dns_changes: IntCounterVec,
    pool_info: IntGaugeVec,
    traffic_share: GaugeVec,
    failover_active: IntGaugeVec,
    guard_watching: IntGaugeVec,
    guard_verdict: IntGaugeVec,
    guard_error_ratio: Gauge,
    guard_p99: Gauge,
    rollout_step: IntGauge,
    rollout_steps: IntGauge,
    /// `[pool][kind]` (`crate::faults::FAULT_KINDS`).
    injected_faults: [[IntCounter; 2]; POOL_COUNT],
    /// By [`ShadowResult`].
    shadow_requests: [IntCounter; 4],
    /// A failover episode per pool: set by the first request that fails over, cleared by
    /// [`Metrics::end_failovers`], so the start and the end are logged once each.
    failing_over: [AtomicBool; POOL_COUNT],
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(v.clone()))
        .expect("unique metric");
    v
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(v.clone()))
        .expect("unique metric");
    v
}

impl Metrics {
    /// Registers every series and resolves the per-pool handles.
    pub fn new(config: &Config) -> Metrics {
        let registry = Registry::new();
        let pool_names = [config.pools[0].name.clone(), config.pools[1].name.clone()];
        let requests = counter_vec(
            &registry,
            names::REQUESTS,
            "Requests answered, by pool and status class.",
            &["pool", "code"],
        );
        let faults = counter_vec(
            &registry,
            names::INJECTED_FAULTS,
            "Faults injected on purpose (ctl faults), by pool and kind (abort, delay).",
            &["pool", "kind"],
        );
        let injected_faults = [0, 1].map(|p| {
            crate::faults::FAULT_KINDS.map(|k| faults.with_label_values(&[&pool_names[p], k]))
        });
        let shadow = counter_vec(
            &registry,
            names::SHADOW_REQUESTS,
            "Shadow copies of live requests (ctl shadow), by result: mirrored, failed, dropped \
             (queue full or no healthy shadow backend), too_large (body over shadow.max_body).",
            &["result"],
        );
        let shadow_requests = SHADOW_RESULTS.map(|r| shadow.with_label_values(&[r]));
        let duration = prometheus::HistogramVec::new(
            HistogramOpts::new(
                names::DURATION,
                "Time from the request's arrival to the end of its response, by pool.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["pool"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(duration.clone()))
            .expect("unique metric");
        let upstream_errors = counter_vec(
            &registry,
            names::UPSTREAM_ERRORS,
            "Failures talking to a backend, by pool and kind (connect, timeout, reset, other).",
            &["pool", "kind"],
        );
        let window_secs = config.guard.window.as_secs().max(STATUS_WINDOW.as_secs()) as usize;
        let pool = |name: &str| PoolMetrics {
            requests: CODE_CLASSES.map(|c| requests.with_label_values(&[name, c])),
            duration: duration.with_label_values(&[name]),
            upstream_errors: ERROR_KINDS.map(|k| upstream_errors.with_label_values(&[name, k])),
            window: Window::new(window_secs),
        };
        let pools = [pool(&pool_names[0]), pool(&pool_names[1])];

        let failovers = counter_vec(
            &registry,
            names::FAILOVERS,
            "Requests sent to the other pool because theirs had no healthy backend.",
            &["from", "to"],
        );
        let fo = |from: PoolId, to: PoolId| {
            (from != to).then(|| failovers.with_label_values(&[&pool_names[from], &pool_names[to]]))
        };
        let failovers = [[fo(0, 0), fo(0, 1)], [fo(1, 0), fo(1, 1)]];

        let preview_rejected = IntCounter::new(
            names::PREVIEW_REJECTED,
            "Requests that asked for a pool without a valid preview token (the header was ignored).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(preview_rejected.clone()))
            .expect("unique metric");
        let notify_failures = IntCounter::new(
            names::NOTIFY_FAILURES,
            "Notifications that could not be delivered after every retry.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(notify_failures.clone()))
            .expect("unique metric");
        let generation = int_gauge(
            &registry,
            names::GENERATION,
            "Generation of the routing state; bumped by every change.",
        );
        let build_info = gauge_vec(
            &registry,
            names::BUILD_INFO,
            "Always 1; the version of the running binary.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let traffic_share = GaugeVec::new(
            Opts::new(
                names::TRAFFIC_SHARE,
                "Share of new traffic each pool actually serves (0 to 1): the weights, with a \
                 pool that fails over counted on the pool serving its traffic.",
            ),
            &["pool"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(traffic_share.clone()))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");

        let m = Metrics {
            inflight: gauge_vec(
                &registry,
                names::INFLIGHT,
                "Requests in flight, by pool.",
                &["pool"],
            ),
            backend_healthy: gauge_vec(
                &registry,
                names::BACKEND_HEALTHY,
                "1 if the backend passes its health checks.",
                &["pool", "backend"],
            ),
            weight_bp: gauge_vec(
                &registry,
                names::WEIGHT_BP,
                "Share of new traffic each pool gets, in basis points (10000 = 100%).",
                &["pool"],
            ),
            primary: gauge_vec(
                &registry,
                names::PRIMARY,
                "1 for the primary pool.",
                &["pool"],
            ),
            changes: counter_vec(
                &registry,
                names::CHANGES,
                "Routing changes applied, by action.",
                &["action"],
            ),
            rollbacks: counter_vec(
                &registry,
                names::ROLLBACKS,
                "Rollbacks, by trigger (manual or guard).",
                &["trigger"],
            ),
            config_reloads: counter_vec(
                &registry,
                names::CONFIG_RELOADS,
                "Configuration reloads, by result.",
                &["result"],
            ),
            dns_failures: counter_vec(
                &registry,
                names::DNS_FAILURES,
                "Lookups of a backend name that failed or returned no address (the last good \
                 set is kept), by name.",
                &["name"],
            ),
            dns_changes: counter_vec(
                &registry,
                names::DNS_CHANGES,
                "Lookups of a backend name whose set of addresses changed, by name.",
                &["name"],
            ),
            pool_info: gauge_vec(
                &registry,
                names::POOL_INFO,
                "Always 1; each pool's role: live (the primary), canary (gets a share of new \
                 traffic) or idle.",
                &["pool", "role"],
            ),
            traffic_share,
            failover_active: gauge_vec(
                &registry,
                names::FAILOVER_ACTIVE,
                "1 while the pool has no healthy backend and its traffic goes to the other pool.",
                &["pool"],
            ),
            guard_watching: gauge_vec(
                &registry,
                names::GUARD_WATCHING,
                "1 for the pool the guard is watching (after a flip, or while a canary runs).",
                &["pool"],
            ),
            guard_verdict: gauge_vec(
                &registry,
                names::GUARD_VERDICT,
                "1 for the guard's latest verdict on the watched pool (none, waiting, healthy, \
                 breach).",
                &["verdict"],
            ),
            guard_error_ratio: gauge(
                &registry,
                names::GUARD_ERROR_RATIO,
                "The error ratio the guard last judged (0 while nothing is judged).",
            ),
            guard_p99: gauge(
                &registry,
                names::GUARD_P99,
                "The p99 latency the guard last judged, in seconds (0 while nothing is judged).",
            ),
            rollout_step: int_gauge(
                &registry,
                names::ROLLOUT_STEP,
                "The current step of the rollout in progress, 1-based (0: no rollout).",
            ),
            rollout_steps: int_gauge(
                &registry,
                names::ROLLOUT_STEPS,
                "The number of steps of the rollout in progress (0: no rollout).",
            ),
            failing_over: [AtomicBool::new(false), AtomicBool::new(false)],
            injected_faults,
            shadow_requests,
            registry,
            pools,
            pool_names,
            generation,
            failovers,
            preview_rejected,
            notify_failures,
        };
        // Series that should read 0 rather than be absent before the first event.
        for t in ["manual", "guard"] {
            m.rollbacks.with_label_values(&[t]);
        }
        for r in ["ok", "error"] {
            m.config_reloads.with_label_values(&[r]);
        }
        for a in CHANGE_ACTIONS {
            m.changes.with_label_values(&[a]);
        }
        for name in &m.pool_names {
            m.guard_watching.with_label_values(&[name]);
        }
        m.set_guard(None, None);
        for name in config.pools.iter().flat_map(|p| &p.names) {
            m.dns_names(&name.to_string());
        }
        m
    }

    /// Makes a backend name's DNS series read 0 from now on (at start, and for a name a reload
    /// adds).
    pub fn dns_names(&self, name: &str) {
        self.dns_failures.with_label_values(&[name]);
        self.dns_changes.with_label_values(&[name]);
    }

    /// Records a finished request on `pool`. `status` 0 means no response was sent.
    #[inline]
    pub fn record_request(&self, pool: PoolId, status: u16, elapsed: Duration, failed: bool) {
        let p = &self.pools[pool];
        if let Some(c) = code_class(status) {
            p.requests[c].inc();
        }
        // A protocol upgrade (WebSocket) lasts as long as the session, not as long as a request
        // takes to answer: its duration would read as a latency outlier and could make the guard
        // roll back a healthy colour. It is counted, not timed.
        let latency = (status != 101).then_some(elapsed);
        if let Some(l) = latency {
            p.duration.observe(l.as_secs_f64());
        }
        p.window.record(latency, failed || status >= 500);
    }

    /// Counts a fault injected into a request to `pool`.
    #[inline]
    pub fn record_fault(&self, pool: PoolId, kind: crate::faults::FaultKind) {
        self.injected_faults[pool][kind as usize].inc();
    }

    /// Counts a shadow copy's fate.
    #[inline]
    pub fn record_shadow(&self, result: ShadowResult) {
        self.shadow_requests[result as usize].inc();
    }

    /// Shadow copies so far with `result` (for the report).
    pub fn shadow_count(&self, result: ShadowResult) -> u64 {
        self.shadow_requests[result as usize].get()
    }

    #[inline]
    pub fn record_upstream_error(&self, pool: PoolId, kind: UpstreamErrorKind) {
        self.pools[pool].upstream_errors[kind as usize].inc();
    }

    /// Counts a request of `from` served by `to`; the first of an episode logs a warning.
    #[inline]
    pub fn record_failover(&self, from: PoolId, to: PoolId) {
        if let Some(c) = &self.failovers[from][to] {
            c.inc();
        }
        let flag = &self.failing_over[from];
        // A load first: during an episode every request would otherwise write the line.
        if !flag.load(Ordering::Relaxed) && !flag.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "FAILOVER: {} has no healthy backend; {} is serving its traffic",
                self.pool_names[from],
                self.pool_names[to]
            );
        }
    }

    /// Ends the failover episodes that are over (the pool has a healthy backend again, or
    /// neither pool has one), logging each end once. Called by the guard's tick.
    pub fn end_failovers(&self, table: &RoutingTable) {
        for (id, flag) in self.failing_over.iter().enumerate() {
            if !flag.load(Ordering::Acquire) {
                continue;
            }
            let over =
                table.pool(id).healthy_count() > 0 || table.pool(other(id)).healthy_count() == 0;
            if over && flag.swap(false, Ordering::AcqRel) {
                let failed_over = self.failovers[id][other(id)]
                    .as_ref()
                    .map_or(0, IntCounter::get);
                tracing::info!(
                    "failover over: {} serves its own traffic again ({} has served {failed_over} \
                     of its requests since start)",
                    self.pool_names[id],
                    self.pool_names[other(id)]
                );
            }
        }
    }

    /// Publishes the guard's state: the watched pool and its latest judgement.
    pub fn set_guard(&self, watching: Option<PoolId>, judged: Option<(&Verdict, &WindowStats)>) {
        for (id, name) in self.pool_names.iter().enumerate() {
            self.guard_watching
                .with_label_values(&[name])
                .set(i64::from(watching == Some(id)));
        }
        let verdict = match judged {
            None => "none",
            Some((Verdict::Waiting { .. }, _)) => "waiting",
            Some((Verdict::Healthy, _)) => "healthy",
            Some((Verdict::Breach { .. }, _)) => "breach",
        };
        for v in VERDICTS {
            self.guard_verdict
                .with_label_values(&[v])
                .set(i64::from(v == verdict));
        }
        let stats = judged.map(|(_, s)| *s).unwrap_or_default();
        self.guard_error_ratio.set(stats.error_ratio());
        self.guard_p99
            .set(stats.p99.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// Publishes the rollout's progress: `(step, of)`, 1-based, or none.
    pub fn set_rollout(&self, progress: Option<(usize, usize)>) {
        let (step, of) = progress.unwrap_or((0, 0));
        self.rollout_step.set(step as i64);
        self.rollout_steps.set(of as i64);
    }

    pub fn record_change(&self, action: &str) {
        self.changes.with_label_values(&[action]).inc();
    }

    /// Counts a configuration reload by result (`ok`: applied or nothing to apply; `error`: a
    /// bad file, or a change refused).
    pub fn record_reload(&self, result: &str) {
        self.config_reloads.with_label_values(&[result]).inc();
    }

    pub fn record_rollback(&self, trigger: &str) {
        self.rollbacks.with_label_values(&[trigger]).inc();
    }

    /// Requests `pool` has answered since start.
    pub fn served(&self, pool: PoolId) -> u64 {
        self.pools[pool].requests.iter().map(|c| c.get()).sum()
    }

    /// The sliding window of `pool`.
    pub fn window(&self, pool: PoolId) -> &Window {
        &self.pools[pool].window
    }

    /// The Prometheus text exposition, with state gauges sampled from `switchboard` now.
    pub fn render(&self, switchboard: &Switchboard) -> Vec<u8> {
        let table = switchboard.load();
        let st = table.state;
        // Members come and go with reloads: a removed backend's series must disappear.
        self.backend_healthy.reset();
        let share = traffic_share(&table);
        let failing = failing_over(&table);
        for id in 0..POOL_COUNT {
            let name = &self.pool_names[id];
            let role = if id == st.primary {
                "live"
            } else if st.canary_bp > 0 {
                "canary"
            } else {
                "idle"
            };
            for r in ROLES {
                self.pool_info
                    .with_label_values(&[name, r])
                    .set(i64::from(r == role));
            }
            self.traffic_share.with_label_values(&[name]).set(share[id]);
            self.failover_active
                .with_label_values(&[name])
                .set(i64::from(failing[id]));
        }
        for (id, pool) in table.pools.iter().enumerate() {
            let name = &self.pool_names[id];
            self.inflight
                .with_label_values(&[name])
                .set(pool.inflight() as i64);
            for b in &pool.backends {
                self.backend_healthy
                    .with_label_values(&[name, &b.addr.to_string()])
                    .set(i64::from(b.is_healthy()));
            }
            let weight = if id == st.primary {
                crate::config::MAX_BP - st.canary_bp
            } else {
                st.canary_bp
            };
            self.weight_bp
                .with_label_values(&[name])
                .set(i64::from(weight));
            self.primary
                .with_label_values(&[name])
                .set(i64::from(id == st.primary));
        }
        self.generation.set(st.generation as i64);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        out
    }
}

/// The weight of each pool in basis points.
pub fn weights(st: &RouteState) -> [u32; POOL_COUNT] {
    let mut w = [0; POOL_COUNT];
    w[st.primary] = crate::config::MAX_BP - st.canary_bp;
    w[other(st.primary)] = st.canary_bp;
    w
}

/// Which pools fail over now: a pool with a share of traffic and no healthy backend, while the
/// other pool has one (the proxy's rule: its requests go to the other pool).
pub fn failing_over(table: &RoutingTable) -> [bool; POOL_COUNT] {
    let w = weights(&table.state);
    let mut f = [false; POOL_COUNT];
    for (id, fo) in f.iter_mut().enumerate() {
        *fo = w[id] > 0
            && table.pool(id).healthy_count() == 0
            && table.pool(other(id)).healthy_count() > 0;
    }
    f
}

/// The share of new traffic each pool serves (0 to 1), failovers included.
pub fn traffic_share(table: &RoutingTable) -> [f64; POOL_COUNT] {
    let w = weights(&table.state).map(|bp| f64::from(bp) / f64::from(crate::config::MAX_BP));
    let mut share = w;
    for (id, fo) in failing_over(table).into_iter().enumerate() {
        if fo {
            share[other(id)] += share[id];
            share[id] = 0.0;
        }
    }
    share
}

/// Serves `GET /metrics` on the metrics listener.
///
/// A pingora `Service` so that its socket is handed to the new process on `ctl upgrade`
/// (upgrade.rs): scrapes never meet "connection refused" during an upgrade.
pub struct MetricsService {
    metrics: Arc<Metrics>,
    switchboard: Arc<Switchboard>,
    endpoint: HandOver,
    handed_over: HandedOver,
}

impl MetricsService {
    pub fn new(
        metrics: Arc<Metrics>,
        switchboard: Arc<Switchboard>,
        endpoint: HandOver,
        handed_over: HandedOver,
    ) -> Self {
        MetricsService {
            metrics,
            switchboard,
            endpoint,
            handed_over,
        }
    }
}

#[async_trait]
impl pingora::services::Service for MetricsService {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let stop = self.handed_over.stop_accepting(shutdown.clone());
        let listener = match self.endpoint.open(fds.as_ref()) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("METRICS UNAVAILABLE: {e}; restart switchyard to get them back");
                return;
            }
        };
        let (metrics, switchboard) = (self.metrics.clone(), self.switchboard.clone());
        httpd::serve(
            listener,
            move |req, _peer| {
                let resp = if req.uri().path() == "/healthz" {
                    // Liveness: this process serves HTTP; readiness of the pools is in /metrics.
                    httpd::text(200, "ok\n")
                } else if req.uri().path() != "/metrics" {
                    httpd::text(
                        404,
                        "not found; metrics are at /metrics, liveness at /healthz\n",
                    )
                } else if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD
                {
                    httpd::text(405, "GET /metrics\n")
                } else {
                    let mut r = httpd::text(200, metrics.render(&switchboard));
                    r.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static(
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                    );
                    r
                };
                async move { resp }
            },
            stop,
        )
        .await;
        httpd::hold_until_shutdown(&mut shutdown).await;
    }

    fn name(&self) -> &str {
        "metrics"
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.endpoint.key().to_string()])
    }
}

/// The window `status` and `watch` report over.
pub const STATUS_WINDOW: Duration = Duration::from_secs(10);
