//! The guard and rollout loop: what the guard watches after each change, the tick that judges it
//! (rolling back on a breach) and walks a rollout's steps, and the background service that ticks.
//! The judgement itself is pure ([`crate::guard::judge`]); the step logic too
//! ([`crate::rollout`]).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use super::{action, Admin, ChangeOpts, Ledger, Spec, ACTOR_GUARD, ACTOR_ROLLOUT};
use crate::guard::{judge, Verdict, TICK};
use crate::metrics::{Tally, WindowStats};
use crate::rollout::{Next, Rollout};
use crate::routing::{other, PoolId, RouteState};
use crate::state::{self, WatchFile};
use crate::store::JudgedFigures;

/// The guard's view of a rollout step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StepVerdict {
    Passed,
    Waiting(String),
}

/// What the guard is watching: the colour that just gained traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Watch {
    pub(super) pool: PoolId,
    pub(super) kind: WatchKind,
    /// When the change happened: only requests since then are judged.
    pub(super) since: Instant,
    /// A flip is watched for `watch_after_flip`; a canary for as long as it runs.
    pub(super) until: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchKind {
    Canary,
    Flip,
}

/// The guard's last judgement, for `status`.
#[derive(Debug, Clone)]
pub(super) struct Judgement {
    pub(super) pool: PoolId,
    pub(super) verdict: Verdict,
    pub(super) stats: WindowStats,
}

impl Watch {
    /// The watch as kept in `state.json`.
    pub(super) fn to_file(self, names: &[String]) -> WatchFile {
        let (now, wall) = (Instant::now(), unix_ms(SystemTime::now()));
        let at = |t: Instant| {
            if t >= now {
                wall + t.duration_since(now).as_millis() as u64
            } else {
                wall.saturating_sub(now.duration_since(t).as_millis() as u64)
            }
        };
        WatchFile {
            pool: names[self.pool].clone(),
            kind: match self.kind {
                WatchKind::Flip => "flip".into(),
                WatchKind::Canary => "canary".into(),
            },
            since_ms: at(self.since),
            until_ms: self.until.map(at),
        }
    }

    /// A watch read back from `state.json` by this (or a new) process; none when it names
    /// another pool, or a flip watch that is over.
    pub(super) fn from_file(f: &WatchFile, names: &[String], now: Instant) -> Option<Watch> {
        let pool = names.iter().position(|n| *n == f.pool)?;
        let wall = unix_ms(SystemTime::now());
        let back = |ms: u64| now.checked_sub(Duration::from_millis(wall.saturating_sub(ms)));
        let ahead = |ms: u64| now + Duration::from_millis(ms.saturating_sub(wall));
        let kind = match f.kind.as_str() {
            "flip" => WatchKind::Flip,
            "canary" => WatchKind::Canary,
            _ => return None,
        };
        let until = f.until_ms.map(ahead);
        if until.is_some_and(|u| u <= now) {
            return None;
        }
        Some(Watch {
            pool,
            kind,
            since: back(f.since_ms).unwrap_or(now),
            until,
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Admin {
    /// What the guard watches after a change from `cur` to `new`.
    pub(super) fn next_watch(
        &self,
        watch: Option<Watch>,
        cur: &RouteState,
        new: &RouteState,
        action: &str,
    ) -> Option<Watch> {
        let now = Instant::now();
        if new.canary_bp > 0 {
            // Keep the clock of a canary already being watched: raising its weight does not
            // forgive what it did before.
            return match watch {
                Some(w) if w.kind == WatchKind::Canary && w.pool == new.canary_pool() => Some(w),
                _ => Some(Watch {
                    pool: new.canary_pool(),
                    kind: WatchKind::Canary,
                    since: now,
                    until: None,
                }),
            };
        }
        if new.primary != cur.primary && action != action::ROLLBACK {
            return Some(Watch {
                pool: new.primary,
                kind: WatchKind::Flip,
                since: now,
                until: Some(now + self.config().guard.watch_after_flip),
            });
        }
        None
    }

    /// One guard tick: judge the watched colour (rolling back on a breach), then advance a
    /// rollout whose step is over.
    pub fn tick(&self) {
        self.expire_faults();
        self.expire_shadow();
        self.metrics.end_failovers(&self.switchboard.load());
        self.settle_impact();
        let mut ledger = self.lock_ledger();
        self.tick_locked(&mut ledger);
        // What the guard watches and judged, and the rollout's step, for /metrics.
        self.metrics.set_guard(
            ledger.watch.map(|w| w.pool),
            ledger.judgement.as_ref().map(|j| (&j.verdict, &j.stats)),
        );
        self.metrics
            .set_rollout(ledger.rollout.as_ref().map(|r| (r.step + 1, r.steps.len())));
    }

    fn tick_locked(&self, ledger: &mut Ledger) {
        let now = Instant::now();
        if self.is_frozen() {
            // An upgrade is handing over: the new process judges and advances from here on.
            return;
        }
        // In a fleet every instance publishes what it saw of the change; one instance, the
        // leader, judges the sum and walks rollouts for all (store::etcd).
        self.publish_figures(ledger, now);
        if !self.store.leads() {
            return;
        }
        let config = self.config();
        let guard = &config.guard;
        if ledger
            .watch
            .is_some_and(|w| w.until.is_some_and(|u| now >= u))
        {
            ledger.watch = None;
            ledger.judgement = None;
        }
        if let (true, Some(w)) = (guard.enabled, ledger.watch) {
            // Only requests since the change count, up to the configured window.
            let since_change = now.saturating_duration_since(w.since).as_secs() + 1;
            let span = Duration::from_secs(since_change.min(guard.window.as_secs().max(1)));
            let stats = self.judged(w.pool, span, |f| f.watched.as_ref());
            let verdict = judge(&stats, now.saturating_duration_since(w.since), guard);
            ledger.judgement = Some(Judgement {
                pool: w.pool,
                verdict: verdict.clone(),
                stats,
            });
            if let Verdict::Breach { reason } = verdict {
                self.guard_rollback(ledger, w, stats, span, &reason);
                return;
            }
        }
        let Some(r) = ledger.rollout.clone() else {
            return;
        };
        let due = r.due(now);
        if due.is_some() && self.step_verdict(&r, now) != StepVerdict::Passed {
            // The step's time is up but the guard has not seen enough of it to call it healthy:
            // hold, rather than move on without evidence (status says what it waits for).
            return;
        }
        match due {
            None => {}
            Some(Next::Step(bp)) => {
                let mut advanced = r.clone();
                advanced.advance(now);
                let step = format!(
                    "step {} of {} ({})",
                    advanced.step + 1,
                    advanced.steps.len(),
                    state::format_percent(bp)
                );
                ledger.rollout = Some(advanced);
                let spec =
                    Spec::rollout(action::ROLLOUT, ACTOR_ROLLOUT, ChangeOpts::default(), step);
                let result = self.apply(ledger, now, spec, |cur, _| {
                    Ok(RouteState {
                        canary_bp: bp,
                        ..cur
                    })
                });
                if let Err(e) = result {
                    // Most likely the health gate: hold the step and try again next tick.
                    ledger.rollout = Some(r);
                    tracing::warn!("rollout cannot move to the next step yet: {e}");
                }
            }
            Some(Next::Promote) => {
                ledger.rollout = None;
                let step = format!("completed: {} steps", r.steps.len());
                let spec =
                    Spec::rollout(action::PROMOTE, ACTOR_ROLLOUT, ChangeOpts::default(), step);
                let result = self.apply(ledger, now, spec, |cur, _| {
                    Ok(RouteState {
                        primary: r.to,
                        canary_bp: 0,
                        ..cur
                    })
                });
                if let Err(e) = result {
                    ledger.rollout = Some(r);
                    tracing::warn!("rollout cannot promote yet: {e}");
                }
            }
        }
    }

    /// Whether the guard has judged the rollout's current step healthy, over the requests since
    /// the step began (up to the window). With the guard off, time alone moves a rollout on.
    pub(super) fn step_verdict(&self, r: &Rollout, now: Instant) -> StepVerdict {
        let config = self.config();
        let guard = &config.guard;
        if !guard.enabled {
            return StepVerdict::Passed;
        }
        let since_step = now.saturating_duration_since(r.step_started).as_secs() + 1;
        let span = Duration::from_secs(since_step.min(guard.window.as_secs().max(1)));
        let observed = now.saturating_duration_since(r.step_started);
        let stats = self.judged(r.to, span, |f| f.step.as_ref());
        match judge(&stats, observed, guard) {
            Verdict::Healthy => StepVerdict::Passed,
            Verdict::Waiting {
                requests,
                min_requests,
                ..
            } if requests < min_requests.max(1) => StepVerdict::Waiting(format!(
                "waiting for the guard: {requests} of {min_requests} requests seen at this step"
            )),
            Verdict::Waiting {
                observed_s,
                min_duration_s,
                ..
            } => StepVerdict::Waiting(format!(
                "waiting for the guard: watched this step for {observed_s:.0}s of \
                 {min_duration_s:.0}s (guard.min_duration)"
            )),
            // The breach itself is acted on by the watch (which covers the canary).
            Verdict::Breach { reason } => StepVerdict::Waiting(reason),
        }
    }

    /// The span the guard judges a watch over: the requests since the change, up to the window.
    fn watch_span(&self, w: &Watch, now: Instant) -> Duration {
        let since_change = now.saturating_duration_since(w.since).as_secs() + 1;
        Duration::from_secs(since_change.min(self.config().guard.window.as_secs().max(1)))
    }

    /// The span a rollout step is judged over: the requests since the step began, up to the
    /// window.
    fn step_span(&self, r: &Rollout, now: Instant) -> Duration {
        let since_step = now.saturating_duration_since(r.step_started).as_secs() + 1;
        Duration::from_secs(since_step.min(self.config().guard.window.as_secs().max(1)))
    }

    /// Publishes this instance's figures for the change being judged (a no-op alone).
    fn publish_figures(&self, ledger: &Ledger, now: Instant) {
        if !self.config().guard.enabled || (ledger.watch.is_none() && ledger.rollout.is_none()) {
            return;
        }
        let watched = |pool: PoolId| {
            ledger
                .watch
                .map(|w| self.metrics.window(pool).figures(self.watch_span(&w, now)))
        };
        let figures = JudgedFigures {
            generation: self.switchboard.state().generation,
            at_ms: unix_ms(SystemTime::now()),
            watched: ledger.watch.and_then(|w| watched(w.pool)),
            other: ledger.watch.and_then(|w| watched(other(w.pool))),
            step: ledger
                .rollout
                .as_ref()
                .map(|r| self.metrics.window(r.to).figures(self.step_span(r, now))),
        };
        self.store.publish_figures(&figures);
    }

    /// What the guard judges for `pool` over `span`: this instance's figures plus, in a fleet,
    /// every other live instance's for the same change (`pick` chooses which of them).
    fn judged(
        &self,
        pool: PoolId,
        span: Duration,
        pick: impl Fn(&JudgedFigures) -> Option<&Tally>,
    ) -> WindowStats {
        let mut figures = self.metrics.window(pool).figures(span);
        let generation = self.switchboard.state().generation;
        for theirs in self.store.fleet_figures() {
            if theirs.generation == generation {
                if let Some(f) = pick(&theirs) {
                    figures.add(f);
                }
            }
        }
        figures.stats()
    }

    /// Rolls back the watched colour after a breach.
    pub(super) fn guard_rollback(
        &self,
        ledger: &mut Ledger,
        w: Watch,
        stats: WindowStats,
        span: Duration,
        reason: &str,
    ) {
        let old = self.names[other(w.pool)].clone();
        // When the old colour also took traffic (a canary), put its figures next to the new one's.
        let old_stats = self.judged(other(w.pool), span, |f| f.other.as_ref());
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0);
        let config = self.config();
        let guard = &config.guard;
        let mut detail = serde_json::json!({
            "summary": format!("{}: {reason} over {}s; {old} {}", self.names[w.pool], span.as_secs(), other_had(&old_stats)),
            "pool": self.names[w.pool],
            "window_s": span.as_secs(),
            "requests": stats.requests,
            "errors": stats.errors,
            "error_ratio": stats.error_ratio(),
            "p99_ms": ms(stats.p99),
            "thresholds": {
                "max_error_ratio": guard.max_error_ratio,
                "max_p99_ms": guard.max_p99.map(|d| d.as_secs_f64() * 1000.0),
                "min_requests": guard.min_requests,
                "window_s": guard.window.as_secs(),
            },
            "other": {
                "pool": old,
                "requests": old_stats.requests,
                "error_ratio": old_stats.error_ratio(),
                "p99_ms": ms(old_stats.p99),
            },
        });
        let aborted = ledger.rollout.take();
        if let Some(r) = &aborted {
            detail["rollout"] = serde_json::json!(format!(
                "rolled back at step {} of {}",
                r.step + 1,
                r.steps.len()
            ));
        }
        let spec = Spec {
            action: action::ROLLBACK,
            event: "guard",
            actor: ACTOR_GUARD,
            opts: ChangeOpts {
                reason: Some(reason.to_string()),
                ..ChangeOpts::default()
            },
            trigger: Some("guard"),
            detail: Some(detail),
            automatic: true,
            skip_gate: true,
            always: false,
        };
        let kind = w.kind;
        let result = self.apply(ledger, Instant::now(), spec, |cur, _| {
            Ok(match kind {
                WatchKind::Canary => RouteState {
                    canary_bp: 0,
                    ..cur
                },
                WatchKind::Flip => RouteState {
                    primary: other(w.pool),
                    canary_bp: 0,
                    ..cur
                },
            })
        });
        match result {
            Ok(_) => tracing::warn!(
                "GUARD ROLLBACK: {} breached ({reason}); traffic is back on {old}",
                self.names[w.pool]
            ),
            Err(e) => {
                ledger.rollout = aborted;
                tracing::error!("the guard could not roll back {}: {e}", self.names[w.pool]);
            }
        }
    }
}

/// What the other colour did over the judged span, for the rollback summary: a colour that
/// took no traffic (after a flip) had no requests, not "0.0% errors".
fn other_had(stats: &WindowStats) -> String {
    if stats.requests == 0 {
        "had no requests".to_string()
    } else {
        format!(
            "had {:.1}% errors over {} requests",
            stats.error_ratio() * 100.0,
            stats.requests
        )
    }
}

/// Ticks the admin handler: judge the watched colour, advance a rollout.
pub struct GuardService {
    admin: Arc<Admin>,
}

impl GuardService {
    pub fn new(admin: Arc<Admin>) -> GuardService {
        GuardService { admin }
    }
}

#[async_trait]
impl BackgroundService for GuardService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let admin = self.admin.clone();
            // A tick may write the state file (fsync): keep it off the async workers.
            if let Err(e) = tokio::task::spawn_blocking(move || admin.tick()).await {
                tracing::error!("guard tick failed: {e}");
            }
        }
    }
}
