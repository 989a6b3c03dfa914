//! `GET /v1/status`: the snapshot every client renders (ctl, watch, the status page), built from
//! the switchboard, the metrics window, the guard's bookkeeping and the DNS names.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::watch::{StepVerdict, WatchKind};
use super::{Admin, Ledger};
use crate::config::MAX_BP;
use crate::dns::NameStatus;
use crate::guard::Verdict;
use crate::metrics::STATUS_WINDOW;
use crate::store::FleetStatus;

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    /// The process answering, so `ctl upgrade` can tell the new process from the old.
    pub pid: u32,
    pub version: String,
    /// When this process started (RFC 3339).
    pub started: String,
    /// A binary upgrade is under way: changes are refused until it ends (upgrade.rs).
    pub upgrading: bool,
    pub primary: String,
    pub canary_pool: String,
    pub canary_bp: u32,
    pub generation: u64,
    /// When the current state was set (RFC 3339).
    pub since: String,
    pub pools: BTreeMap<String, PoolStatus>,
    /// Pools whose traffic another pool serves now (no healthy backend of their own).
    pub failover: Vec<FailoverStatus>,
    /// The progressive rollout in progress, if any.
    pub rollout: Option<RolloutStatus>,
    /// What the guard watches and its latest judgement.
    pub guard: GuardStatus,
    /// With a shared state store: whether it answers, and every live instance of the fleet with
    /// the generation it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
    /// The fault set in force, if any (`ctl faults`).
    pub faults: Option<super::FaultsStatus>,
    /// The latest shadow session, if any (`ctl shadow`).
    pub shadow: Option<super::ShadowStatus>,
}

/// `from` has no healthy backend: `to` serves its share of the traffic.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailoverStatus {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RolloutStatus {
    pub to: String,
    /// The steps, in percent.
    pub steps: Vec<f64>,
    /// The current step, 1-based, of `of`.
    pub step: usize,
    pub of: usize,
    pub percent: f64,
    pub interval_s: f64,
    /// Seconds until the next step (or the promotion); frozen while paused.
    pub next_step_in_s: f64,
    pub paused: bool,
    pub started: String,
    /// Why the rollout has not moved on although the step's time is up (not enough traffic for
    /// the guard to judge it yet).
    pub holding: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GuardStatus {
    pub enabled: bool,
    /// The colour being judged, if any.
    pub watching: Option<GuardWatch>,
    pub judgement: Option<GuardJudgement>,
    pub max_error_ratio: f64,
    pub max_p99_ms: Option<f64>,
    pub min_requests: u64,
    pub window_s: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GuardWatch {
    pub pool: String,
    pub kind: WatchKind,
    /// Seconds since the change.
    pub for_s: f64,
    /// Seconds until a flip stops being watched (none for a canary: watched while it runs).
    pub ends_in_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GuardJudgement {
    pub pool: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub requests: u64,
    pub error_ratio: f64,
    pub p99_ms: Option<f64>,
    pub window_s: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolStatus {
    /// At least `health.min_healthy` backends are healthy: flips to this pool are allowed.
    pub ready: bool,
    pub healthy: usize,
    pub backends: Vec<BackendStatus>,
    pub inflight: usize,
    /// Requests this pool has answered since start (all status classes).
    pub served: u64,
    /// Share of new traffic this pool gets, in basis points.
    pub weight_bp: u32,
    /// Requests finished over the last `window_s` completed seconds, and figures over them.
    pub requests: u64,
    pub window_s: u64,
    pub rps: f64,
    /// (5xx + upstream errors) / requests.
    pub error_ratio: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Backend names of this pool: what each resolved to, when, and when it is looked up next.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<NameStatus>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendStatus {
    pub addr: String,
    pub healthy: bool,
}

impl Admin {
    /// The current status.
    pub(super) fn status(&self, ledger: &Ledger) -> Status {
        let now = Instant::now();
        let table = self.switchboard.load();
        let st = table.state;
        let config = self.config();
        let (guard, min_healthy) = (&config.guard, config.health.min_healthy);
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        let dns = self.dns.status();
        let pools = table
            .pools
            .iter()
            .enumerate()
            .map(|(id, p)| {
                let healthy = p.healthy_count();
                let w = self.metrics.window(id).completed(STATUS_WINDOW);
                (
                    p.name.clone(),
                    PoolStatus {
                        ready: healthy >= min_healthy,
                        healthy,
                        backends: p
                            .backends
                            .iter()
                            .map(|b| BackendStatus {
                                addr: b.addr.to_string(),
                                healthy: b.is_healthy(),
                            })
                            .collect(),
                        inflight: p.inflight(),
                        served: self.metrics.served(id),
                        weight_bp: if id == st.primary {
                            MAX_BP - st.canary_bp
                        } else {
                            st.canary_bp
                        },
                        requests: w.requests,
                        window_s: w.seconds,
                        rps: w.rps(),
                        error_ratio: w.error_ratio(),
                        p50_ms: ms(w.p50),
                        p99_ms: ms(w.p99),
                        dns: dns
                            .iter()
                            .filter(|n| {
                                config.pools[id]
                                    .names
                                    .iter()
                                    .any(|m| m.to_string() == n.name)
                            })
                            .cloned()
                            .collect(),
                    },
                )
            })
            .collect();
        let rollout = ledger.rollout.as_ref().map(|r| RolloutStatus {
            to: self.names[r.to].clone(),
            steps: r.steps.iter().map(|&bp| f64::from(bp) / 100.0).collect(),
            step: r.step + 1,
            of: r.steps.len(),
            percent: f64::from(r.weight()) / 100.0,
            interval_s: r.interval.as_secs_f64(),
            next_step_in_s: r.time_left(now).as_secs_f64(),
            paused: r.paused_left.is_some(),
            started: r.started.clone(),
            holding: match (r.due(now), self.step_verdict(r, now)) {
                (Some(_), StepVerdict::Waiting(why)) => Some(why),
                _ => None,
            },
        });
        let guard = GuardStatus {
            enabled: guard.enabled,
            watching: ledger.watch.map(|w| GuardWatch {
                pool: self.names[w.pool].clone(),
                kind: w.kind,
                for_s: now.saturating_duration_since(w.since).as_secs_f64(),
                ends_in_s: w
                    .until
                    .map(|u| u.saturating_duration_since(now).as_secs_f64()),
            }),
            judgement: ledger.judgement.as_ref().map(|j| GuardJudgement {
                pool: self.names[j.pool].clone(),
                verdict: j.verdict.clone(),
                requests: j.stats.requests,
                error_ratio: j.stats.error_ratio(),
                p99_ms: ms(j.stats.p99),
                window_s: j.stats.seconds,
            }),
            max_error_ratio: guard.max_error_ratio,
            max_p99_ms: ms(guard.max_p99),
            min_requests: guard.min_requests,
            window_s: guard.window.as_secs(),
        };
        Status {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started: crate::upgrade::started().to_string(),
            upgrading: self.is_frozen(),
            primary: self.names[st.primary].clone(),
            canary_pool: self.names[st.canary_pool()].clone(),
            canary_bp: st.canary_bp,
            generation: st.generation,
            since: ledger.since.clone(),
            pools,
            failover: crate::metrics::failing_over(&table)
                .into_iter()
                .enumerate()
                .filter(|&(_, f)| f)
                .map(|(id, _)| FailoverStatus {
                    from: self.names[id].clone(),
                    to: self.names[crate::routing::other(id)].clone(),
                })
                .collect(),
            rollout,
            guard,
            fleet: self.store.fleet(),
            faults: self.faults_status(now),
            shadow: self.shadow_status(now),
        }
    }
}
