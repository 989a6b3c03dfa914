//! `POST /v1/shadow`, `/v1/shadow/stop` and `GET /v1/shadow`: starting and stopping a shadow
//! session, its report, and the flip gate on its mismatch ratio. The mechanics are in
//! [`crate::shadow`].
//!
//! A session is recorded in history (action `shadow`) and announced (event `shadow`) when it
//! starts and ends. It is not kept across a restart: it copies traffic and changes nothing, so a
//! restart simply ends it (and its report) and the operator starts another.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::faults::round_secs;
use super::{Admin, AdminError, ChangeOpts, Reply};
use crate::config::{CompareBody, MAX_BP};
use crate::routing::{other, RouteState};
use crate::shadow::diff::{RouteReport, Totals};
use crate::shadow::{Session, Settings};
use crate::state::format_percent;

/// The history action and notification event of shadow sessions.
pub const SHADOW: &str = "shadow";

/// How long a session lasts when no duration is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(30 * 60);

/// `GET /v1/shadow`: the latest session and what it found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShadowReport {
    /// Copying now.
    pub active: bool,
    /// The colour receiving the copies, and the live colour they come from.
    pub pool: Option<String>,
    pub live: Option<String>,
    pub percent: f64,
    pub since: Option<String>,
    pub ends_in_s: Option<f64>,
    /// When and why it ended (`stopped`, `expired`, `live colour changed`, `replaced`).
    pub ended: Option<String>,
    pub ended_because: Option<String>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub methods: Vec<String>,
    /// `none`, `exact` or `json`.
    pub compare_body: &'static str,
    /// Copies answered by the shadow colour, and compared.
    pub mirrored: u64,
    /// Copies that failed or timed out.
    pub failed: u64,
    /// Copies dropped because the queue was full or the shadow colour had no healthy backend.
    pub dropped: u64,
    /// Requests not copied because their body was over `shadow.max_body`.
    pub too_large: u64,
    pub status_mismatches: u64,
    pub body_mismatches: u64,
    /// (mismatches + failed) / (mirrored + failed).
    pub mismatch_ratio: f64,
    /// The flip gate: `shadow.max_mismatch_ratio` and the pairs it needs first.
    pub max_mismatch_ratio: Option<f64>,
    pub min_compared: u64,
    pub routes: Vec<RouteReport>,
}

/// The shadow session as `status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShadowStatus {
    pub active: bool,
    pub pool: String,
    pub live: String,
    pub percent: f64,
    pub ends_in_s: Option<f64>,
    pub mirrored: u64,
    pub failed: u64,
    pub dropped: u64,
    pub mismatch_ratio: f64,
}

fn compare_name(c: CompareBody) -> &'static str {
    match c {
        CompareBody::None => "none",
        CompareBody::Exact => "exact",
        CompareBody::Json => "json",
    }
}

impl Admin {
    /// `POST /v1/shadow`.
    pub(super) fn start_shadow(
        &self,
        actor: &str,
        pool: &str,
        bp: u32,
        duration: Option<Duration>,
        change: ChangeOpts,
    ) -> Result<Reply, AdminError> {
        let target = self.pool(pool)?;
        if bp == 0 || bp > MAX_BP {
            return Err(AdminError::BadRequest(format!(
                "shadow share {} must be above 0% and at most 100%",
                format_percent(bp)
            )));
        }
        let config = self.config();
        let max = config.shadow.max_duration;
        let duration = duration.unwrap_or(DEFAULT_DURATION.min(max));
        if duration.is_zero() || duration > max {
            return Err(AdminError::BadRequest(format!(
                "a shadow session lasting {} is outside 1s..={} (shadow.max_duration); ask for \
                 less, or raise the limit in the config",
                humantime::format_duration(duration),
                humantime::format_duration(max)
            )));
        }
        let _ledger = self.lock_ledger();
        self.refuse_while_upgrading()?;
        let cur = self.switchboard.state();
        self.check_generation(&cur, &change)?;
        if target == cur.primary {
            return Err(AdminError::Conflict {
                code: "pool_is_live",
                message: format!(
                    "{} is the live pool; shadow traffic copies the live colour's requests to the \
                     other one: name {}",
                    self.names[target],
                    self.names[other(target)]
                ),
            });
        }
        let settings = Settings::from_config(&config.shadow);
        let methods: Vec<String> = settings.methods.iter().map(ToString::to_string).collect();
        let summary = format!(
            "copying {} of {}'s {} requests to {} for {}, comparing {}",
            format_percent(bp),
            self.names[cur.primary],
            methods.join("/"),
            self.names[target],
            humantime::format_duration(round_secs(duration)),
            match settings.comparison.body {
                CompareBody::None => "status and latency",
                CompareBody::Exact => "status, body and latency",
                CompareBody::Json => "status, JSON body and latency",
            }
        );
        let session = Session::new(
            target,
            cur.primary,
            bp,
            duration,
            actor,
            change.reason.clone(),
            settings,
        );
        self.shadow.start(session);
        tracing::info!(actor, "shadow traffic: {summary}");
        let detail = serde_json::json!({
            "summary": summary,
            "pool": self.names[target],
            "bp": bp,
        });
        self.record_rehearsal(&cur, SHADOW, actor, &change, false, detail);
        Ok(Reply::Shadow(self.shadow_report()))
    }

    /// `POST /v1/shadow/stop`: ends the session, keeping its report.
    pub(super) fn stop_shadow(&self, actor: &str, change: ChangeOpts) -> Result<Reply, AdminError> {
        let _ledger = self.lock_ledger();
        let Some(session) = self.shadow.current() else {
            return Err(AdminError::Conflict {
                code: "no_shadow",
                message: "no shadow session has run; start one with `switchyard ctl shadow POOL \
                          PERCENT`"
                    .into(),
            });
        };
        if session.end("stopped") {
            self.record_shadow_end(&session, actor, &change, "stopped");
        }
        Ok(Reply::Shadow(self.shadow_report()))
    }

    /// Ends a session whose time is up, or whose live colour is no longer live. Called by the
    /// guard's tick.
    pub(super) fn expire_shadow(&self) {
        let Some(session) = self.shadow.current() else {
            return;
        };
        let now = Instant::now();
        let why = if session.expired(now) {
            "expired"
        } else if session.is_active(now) && self.switchboard.state().primary != session.live {
            "live colour changed"
        } else {
            return;
        };
        let _ledger = self.lock_ledger();
        if session.end(why) {
            self.record_shadow_end(&session, "switchyard", &ChangeOpts::default(), why);
        }
    }

    fn record_shadow_end(&self, session: &Session, actor: &str, change: &ChangeOpts, why: &str) {
        let t = session.report.totals();
        let summary = format!(
            "{why}: copies of {}'s traffic to {}: {} mirrored, {} failed, {} dropped, {} status \
             and {} body mismatches ({:.1}%)",
            self.names[session.live],
            self.names[session.target],
            t.mirrored,
            t.failed,
            session.dropped(),
            t.status_mismatches,
            t.body_mismatches,
            t.mismatch_ratio * 100.0
        );
        tracing::info!("shadow traffic {summary}");
        let detail = serde_json::json!({
            "summary": summary,
            "pool": self.names[session.target],
            "mirrored": t.mirrored,
            "failed": t.failed,
            "dropped": session.dropped(),
            "status_mismatches": t.status_mismatches,
            "body_mismatches": t.body_mismatches,
        });
        let cur = self.switchboard.state();
        self.record_rehearsal(&cur, SHADOW, actor, change, false, detail);
    }

    /// The latest session's report (an empty one when none has run).
    pub(super) fn shadow_report(&self) -> ShadowReport {
        let config = self.config();
        let gate = (config.shadow.max_mismatch_ratio, config.shadow.min_compared);
        let Some(s) = self.shadow.current() else {
            return ShadowReport {
                active: false,
                pool: None,
                live: None,
                percent: 0.0,
                since: None,
                ends_in_s: None,
                ended: None,
                ended_because: None,
                actor: None,
                reason: None,
                methods: Vec::new(),
                compare_body: compare_name(config.shadow.compare_body),
                mirrored: 0,
                failed: 0,
                dropped: 0,
                too_large: 0,
                status_mismatches: 0,
                body_mismatches: 0,
                mismatch_ratio: 0.0,
                max_mismatch_ratio: gate.0,
                min_compared: gate.1,
                routes: Vec::new(),
            };
        };
        let now = Instant::now();
        let active = s.is_active(now);
        let t: Totals = s.report.totals();
        let ended = s.ended();
        ShadowReport {
            active,
            pool: Some(self.names[s.target].clone()),
            live: Some(self.names[s.live].clone()),
            percent: f64::from(s.bp) / 100.0,
            since: Some(s.since.clone()),
            ends_in_s: active.then(|| s.until.saturating_duration_since(now).as_secs_f64()),
            ended: ended.as_ref().map(|e| e.0.clone()),
            ended_because: ended.map(|e| e.1),
            actor: Some(s.actor.clone()),
            reason: s.reason.clone(),
            methods: s.settings.methods.iter().map(ToString::to_string).collect(),
            compare_body: compare_name(s.settings.comparison.body),
            mirrored: t.mirrored,
            failed: t.failed,
            dropped: s.dropped(),
            too_large: s.too_large(),
            status_mismatches: t.status_mismatches,
            body_mismatches: t.body_mismatches,
            mismatch_ratio: t.mismatch_ratio,
            max_mismatch_ratio: gate.0,
            min_compared: gate.1,
            routes: s.report.routes(),
        }
    }

    /// The session for `status`.
    pub(super) fn shadow_status(&self, now: Instant) -> Option<ShadowStatus> {
        let s = self.shadow.current()?;
        let t = s.report.totals();
        let active = s.is_active(now);
        Some(ShadowStatus {
            active,
            pool: self.names[s.target].clone(),
            live: self.names[s.live].clone(),
            percent: f64::from(s.bp) / 100.0,
            ends_in_s: active.then(|| s.until.saturating_duration_since(now).as_secs_f64()),
            mirrored: t.mirrored,
            failed: t.failed,
            dropped: s.dropped(),
            mismatch_ratio: t.mismatch_ratio,
        })
    }

    /// Refuses a change that gives traffic to the colour the latest shadow session judged,
    /// while its mismatch ratio is above `shadow.max_mismatch_ratio` (once `min_compared` pairs
    /// are in), unless forced. The answer carries the figures.
    pub(super) fn shadow_gate(&self, new: &RouteState, cur: &RouteState) -> Result<(), AdminError> {
        let config = self.config();
        let Some(max) = config.shadow.max_mismatch_ratio else {
            return Ok(());
        };
        let Some(s) = self.shadow.current() else {
            return Ok(());
        };
        let gains = (new.primary == s.target && cur.primary != s.target)
            || (new.canary_pool() == s.target
                && new.canary_bp > 0
                && (new.canary_bp > cur.canary_bp || new.primary != cur.primary));
        if !gains {
            return Ok(());
        }
        let t = s.report.totals();
        if t.mirrored + t.failed < config.shadow.min_compared || t.mismatch_ratio <= max {
            return Ok(());
        }
        let worst: Vec<String> = s
            .report
            .routes()
            .into_iter()
            .filter(|r| r.status_mismatches + r.body_mismatches + r.failed > 0)
            .take(3)
            .map(|r| {
                format!(
                    "{}: {} status, {} body mismatches, {} failed of {}",
                    r.route,
                    r.status_mismatches,
                    r.body_mismatches,
                    r.failed,
                    r.mirrored + r.failed
                )
            })
            .collect();
        Err(AdminError::Conflict {
            code: "shadow_mismatch",
            message: format!(
                "{} answered differently from {} on {} of {} shadowed requests ({:.2}%, above \
                 shadow.max_mismatch_ratio {:.2}%): {}; see `switchyard ctl shadow report`, fix \
                 and shadow again, or pass force",
                self.names[s.target],
                self.names[s.live],
                t.status_mismatches + t.body_mismatches + t.failed,
                t.mirrored + t.failed,
                t.mismatch_ratio * 100.0,
                max * 100.0,
                worst.join("; ")
            ),
        })
    }
}
