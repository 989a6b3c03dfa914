//! Metrics: per-pool Prometheus series, and the sliding-window figures that `status`, `watch`
//! and the guard read.
//!
//! Every series of SPEC §5 lives in our own [`Registry`] (never pingora's or the crate's global
//! one). Handles are resolved once at start-up and indexed by pool, so the request path does no
//! label hashing and takes no lock: a request costs a few atomic adds and one histogram
//! observation. Gauges that describe state (health, weights, in-flight) are not updated on the
//! request path at all; they are sampled from the live state when `/metrics` is scraped.

mod window;

pub use window::{Tally, Window, WindowStats};

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
use crate::httpd::{self, HandOver, Pages};
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
    pub const STATE_BACKEND_UP: &str = "switchyard_state_backend_up";
    pub const TLS_CERT_EXPIRY: &str = "switchyard_tls_cert_expiry_seconds";
    pub const TLS_HANDSHAKE_FAILURES: &str = "switchyard_tls_handshake_failures_total";
    pub const REPORT_DEPLOYS_PER_DAY: &str = "switchyard_report_deploys_per_day";
    pub const REPORT_CHANGE_FAILURE_RATIO: &str = "switchyard_report_change_failure_ratio";
    pub const REPORT_TIME_TO_RESTORE: &str = "switchyard_report_time_to_restore_seconds";
    pub const REPORT_LEAD_TIME: &str = "switchyard_report_lead_time_seconds";
    pub const CHATOPS_COMMANDS: &str = "switchyard_chatops_commands_total";
    pub const CHATOPS_REFUSED: &str = "switchyard_chatops_refused_total";
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
    /// 1 while the state store answers (always, for the file store); 0 while a fleet's etcd is
    /// unreachable and changes are refused.
    pub state_backend_up: IntGauge,
    /// The delivery report over the last 30 days (report.rs), as of the last change.
    report: [Gauge; 4],
    chatops_commands: IntCounterVec,
    chatops_refused: IntCounterVec,
    /// `[pool][kind]` (`crate::faults::FAULT_KINDS`).
    injected_faults: [[IntCounter; 2]; POOL_COUNT],
    /// By [`ShadowResult`].
    shadow_requests: [IntCounter; 4],
    /// A failover episode per pool: set by the first request that fails over, cleared by
    /// [`Metrics::end_failovers`], so the start and the end are logged once each.
    failing_over: [AtomicBool; POOL_COUNT],
    /// Seconds until each served certificate expires, sampled from `certificates` at scrape.
    tls_cert_expiry: GaugeVec,
    certificates: std::sync::OnceLock<Arc<crate::tls::CertStore>>,
    /// Failed TLS handshakes on the https listeners, by reason ([`crate::tls::failure_reason`]).
    tls_handshake_failures: IntCounterVec,
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
        // Long enough for the status page's chart, and for a deploy's impact: the guard window
        // before a change and the same span after it, read once that span has passed.
        let window_secs = (config.guard.window.as_secs() * 2 + IMPACT_SLACK_SECS)
            .max(STATUS_WINDOW.as_secs())
            .max(CHART_SPAN.as_secs()) as usize;
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

        let tls_cert_expiry = GaugeVec::new(
            Opts::new(
                names::TLS_CERT_EXPIRY,
                "Seconds until each certificate served on the https listeners expires (0 once \
                 it has), by its first host name.",
            ),
            &["name"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(tls_cert_expiry.clone()))
            .expect("unique metric");

        let tls_handshake_failures = counter_vec(
            &registry,
            names::TLS_HANDSHAKE_FAILURES,
            "TLS handshakes on the https listeners that failed, by reason (not_tls, \
             incompatible, no_alpn, certificate_rejected, alert, closed, other).",
            &["reason"],
        );
        for reason in crate::tls::FAILURE_REASONS {
            tls_handshake_failures.with_label_values(&[reason]);
        }
        let m = Metrics {
            tls_handshake_failures,
            tls_cert_expiry,
            certificates: std::sync::OnceLock::new(),
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
            state_backend_up: {
                let g = int_gauge(
                    &registry,
                    names::STATE_BACKEND_UP,
                    "1 while the routing state's store answers; 0 while a fleet's etcd is \
                     unreachable (traffic flows on the last state, changes are refused).",
                );
                g.set(1);
                g
            },
            report: [
                gauge(
                    &registry,
                    names::REPORT_DEPLOYS_PER_DAY,
                    "Deploys per day over the last 30 days (from history, as of the last change).",
                ),
                gauge(
                    &registry,
                    names::REPORT_CHANGE_FAILURE_RATIO,
                    "Share of the last 30 days' deploys that were rolled back within an hour.",
                ),
                gauge(
                    &registry,
                    names::REPORT_TIME_TO_RESTORE,
                    "Median time from a failed deploy to its rollback, last 30 days (0: none).",
                ),
                gauge(
                    &registry,
                    names::REPORT_LEAD_TIME,
                    "Median time between consecutive deploys, last 30 days (0: fewer than two).",
                ),
            ],
            chatops_commands: {
                let v = counter_vec(
                    &registry,
                    names::CHATOPS_COMMANDS,
                    "Chat slash commands accepted, by command.",
                    &["command"],
                );
                for c in CHATOPS_COMMANDS {
                    v.with_label_values(&[c]);
                }
                v
            },
            chatops_refused: {
                let v = counter_vec(
                    &registry,
                    names::CHATOPS_REFUSED,
                    "Chat requests refused before any change, by reason.",
                    &["reason"],
                );
                for r in CHATOPS_REFUSALS {
                    v.with_label_values(&[r]);
                }
                v
            },
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

    /// Publishes the delivery report's figures (report.rs).
    pub fn set_report(&self, r: ReportFigures) {
        self.report[0].set(r.deploys_per_day);
        self.report[1].set(r.change_failure_ratio);
        self.report[2].set(r.time_to_restore_s);
        self.report[3].set(r.lead_time_s);
    }

    /// Counts an accepted chat command (one of [`CHATOPS_COMMANDS`]).
    pub fn record_chatops(&self, command: &str) {
        self.chatops_commands.with_label_values(&[command]).inc();
    }

    /// Counts a refused chat request (one of [`CHATOPS_REFUSALS`]).
    pub fn record_chatops_refusal(&self, reason: &str) {
        self.chatops_refused.with_label_values(&[reason]).inc();
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

    /// Counts a failed TLS handshake.
    pub fn record_tls_handshake_failure(&self, reason: &str) {
        self.tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// Samples the expiry of the certificates in `store` (whatever a reload puts there) at
    /// every scrape.
    pub fn watch_certificates(&self, store: Arc<crate::tls::CertStore>) {
        let _ = self.certificates.set(store);
    }

    /// The Prometheus text exposition, with state gauges sampled from `switchboard` now.
    pub fn render(&self, switchboard: &Switchboard) -> Vec<u8> {
        if let Some(store) = self.certificates.get() {
            // A certificate removed by a reload must disappear.
            self.tls_cert_expiry.reset();
            let now = std::time::SystemTime::now();
            for e in &store.load().entries {
                self.tls_cert_expiry
                    .with_label_values(&[e.name()])
                    .set(e.remaining(now).as_secs_f64().floor());
            }
        }
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
    /// Pages served next to `/metrics` (the status page).
    pages: Option<Arc<dyn Pages>>,
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
            pages: None,
        }
    }

    /// Also serve `pages` (the status page) on this listener.
    pub fn with_pages(mut self, pages: Arc<dyn Pages>) -> Self {
        self.pages = Some(pages);
        self
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
        let pages = self.pages.clone();
        httpd::serve(
            listener,
            move |req, _peer| {
                let path = req.uri().path().to_string();
                let get = req.method() == hyper::Method::GET || req.method() == hyper::Method::HEAD;
                let (metrics, switchboard, pages) =
                    (metrics.clone(), switchboard.clone(), pages.clone());
                async move {
                    if path == "/healthz" {
                        // Liveness: this process serves HTTP; readiness of the pools is in /metrics.
                        return httpd::text(200, "ok\n");
                    }
                    if path == "/metrics" {
                        if !get {
                            return httpd::text(405, "GET /metrics\n");
                        }
                        let mut r = httpd::text(200, metrics.render(&switchboard));
                        r.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        return r;
                    }
                    if let Some(pages) = pages.filter(|_| get) {
                        let served = tokio::task::spawn_blocking(move || pages.get(&path)).await;
                        match served {
                            Ok(Some(r)) => return r,
                            Ok(None) => {}
                            Err(e) => return httpd::text(500, format!("page failed: {e}\n")),
                        }
                    }
                    httpd::text(
                        404,
                        "not found; metrics are at /metrics, liveness at /healthz, the status \
                         page at /\n",
                    )
                }
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

/// How far back the status page's chart goes (per pool: rate, error ratio, p50, p99).
pub const CHART_SPAN: Duration = Duration::from_secs(15 * 60);

/// Seconds of window kept beyond twice the guard window, so a deploy's "after" span is still
/// there when the guard tick that settles it runs (a tick or two late).
const IMPACT_SLACK_SECS: u64 = 10;

/// The delivery report's gauges: 0 where the report has no figure.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReportFigures {
    pub deploys_per_day: f64,
    pub change_failure_ratio: f64,
    /// Medians.
    pub time_to_restore_s: f64,
    pub lead_time_s: f64,
}

/// The chat commands counted by `switchyard_chatops_commands_total`.
pub const CHATOPS_COMMANDS: [&str; 4] = ["status", "flip", "rollback", "canary"];

/// Why a chat request was refused (`switchyard_chatops_refused_total`): a missing or wrong
/// signature, a timestamp outside the window, a replayed request, a user not in the config, a
/// command switchyard refused (bad syntax or the admin handler said no).
pub const CHATOPS_REFUSALS: [&str; 6] = [
    "bad_signature",
    "stale_timestamp",
    "replayed",
    "unknown_user",
    "bad_command",
    "refused",
];

/// The window `status` and `watch` report over.
pub const STATUS_WINDOW: Duration = Duration::from_secs(10);
