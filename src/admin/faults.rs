//! `POST /v1/faults` and `/v1/faults/clear`: putting a fault set in force, clearing it, ending it
//! when its time is up, and what `status` shows of it. The mechanics are in [`crate::faults`].
//!
//! A fault set is durable before it is acknowledged (`faults.json`), recorded in history with its
//! actor and reason (action `faults`, the routing unchanged), and announced to the webhooks
//! (event `faults`). It is refused on the live pool unless forced: faults there hit every user.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{save_failed, Admin, AdminError, ChangeOpts, Reply};
use crate::faults::{self, FaultKind, FaultRequest, FaultSet};
use crate::routing::RouteState;
use crate::state::{self, HistoryEntry};

/// The history action and notification event of fault changes.
pub const FAULTS: &str = "faults";

/// Who ends a fault set whose time is up.
const ACTOR_SWITCHYARD: &str = "switchyard";

/// The fault set in force, as `status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultsStatus {
    pub pool: String,
    /// `green: abort 20% with 503, delay 200ms on 10%`.
    pub summary: String,
    pub abort_percent: f64,
    pub status: u16,
    pub delay_ms: f64,
    pub delay_percent: f64,
    pub since: String,
    pub until: String,
    pub ends_in_s: f64,
    pub actor: String,
    pub reason: Option<String>,
    pub forced: bool,
    /// Requests this set has aborted and delayed so far (in this process).
    pub aborted: u64,
    pub delayed: u64,
}

impl FaultsStatus {
    pub(super) fn of(set: &FaultSet, names: &[String], now: Instant) -> FaultsStatus {
        FaultsStatus {
            pool: names[set.pool].clone(),
            summary: set.summary(names),
            abort_percent: f64::from(set.abort_bp) / 100.0,
            status: set.status,
            delay_ms: set.delay.as_secs_f64() * 1000.0,
            delay_percent: f64::from(set.delay_bp) / 100.0,
            since: set.since.clone(),
            until: humantime::format_rfc3339_millis(set.until_wall).to_string(),
            ends_in_s: set.until.saturating_duration_since(now).as_secs_f64(),
            actor: set.actor.clone(),
            reason: set.reason.clone(),
            forced: set.forced,
            aborted: set.injected(FaultKind::Abort),
            delayed: set.injected(FaultKind::Delay),
        }
    }
}

impl Admin {
    /// `POST /v1/faults`.
    pub(super) fn set_faults(
        &self,
        actor: &str,
        pool: &str,
        request: FaultRequest,
        change: ChangeOpts,
    ) -> Result<Reply, AdminError> {
        let pool = self.pool(pool)?;
        let max = self.config().faults.max_duration;
        let (abort_bp, status, delay_bp, delay, duration) = request
            .check(max)
            .map_err(|e| AdminError::BadRequest(e.to_string()))?;
        let ledger = self.lock_ledger();
        self.refuse_while_upgrading()?;
        let cur = self.switchboard.state();
        self.check_generation(&cur, &change)?;
        let live = pool == cur.primary;
        if live && !change.force {
            return Err(AdminError::Conflict {
                code: "pool_is_live",
                message: format!(
                    "{} is the live pool: faults there hit every user. Inject them on the canary \
                     or idle colour ({}), or pass force (--force) to do it anyway",
                    self.names[pool],
                    self.names[crate::routing::other(pool)]
                ),
            });
        }
        let set = FaultSet::new(
            pool,
            abort_bp,
            status,
            delay_bp,
            delay,
            duration,
            actor,
            change.reason.clone(),
            live,
        );
        self.save_faults(Some(&set))?;
        let summary = format!(
            "injecting {} for {}",
            set.summary(&self.names),
            humantime::format_duration(round_secs(duration))
        );
        let detail = serde_json::json!({
            "summary": summary,
            "pool": self.names[pool],
            "abort_bp": abort_bp,
            "status": status,
            "delay_ms": delay.as_millis() as u64,
            "delay_bp": delay_bp,
            "until": humantime::format_rfc3339_millis(set.until_wall).to_string(),
        });
        self.faults.store(Some(Arc::new(set)));
        tracing::warn!(actor, "FAULT INJECTION: {summary}");
        self.record_rehearsal(&cur, FAULTS, actor, &change, live, detail);
        Ok(Reply::Status(self.status(&ledger)))
    }

    /// `POST /v1/faults/clear`. Clearing when nothing is in force changes (and records) nothing.
    pub(super) fn clear_faults(
        &self,
        actor: &str,
        change: ChangeOpts,
    ) -> Result<Reply, AdminError> {
        let ledger = self.lock_ledger();
        self.refuse_while_upgrading()?;
        if let Some(set) = self.faults.current() {
            self.save_faults(None)?;
            self.faults.store(None);
            let cur = self.switchboard.state();
            let summary = format!(
                "cleared {} ({} aborted, {} delayed)",
                set.summary(&self.names),
                set.injected(FaultKind::Abort),
                set.injected(FaultKind::Delay)
            );
            tracing::info!(actor, "fault injection {summary}");
            let detail = serde_json::json!({ "summary": summary, "pool": self.names[set.pool] });
            self.record_rehearsal(&cur, FAULTS, actor, &change, false, detail);
        }
        Ok(Reply::Status(self.status(&ledger)))
    }

    /// Ends a fault set whose time is up: removed from `faults.json`, recorded and announced.
    /// (The request path stopped injecting at the instant itself.) Called by the guard's tick.
    pub(super) fn expire_faults(&self) {
        if self.is_frozen() {
            // Handing over to a new process: it read faults.json and ends the set itself.
            return;
        }
        let now = Instant::now();
        if !self.faults.current().is_some_and(|s| s.expired(now)) {
            return;
        }
        let _ledger = self.lock_ledger();
        let Some(set) = self.faults.current().filter(|s| s.expired(now)) else {
            return;
        };
        if let Err(e) = self.save_faults(None) {
            // Harmless: a restart ignores a set whose time is up.
            tracing::warn!("fault set expired, but {e:?}");
        }
        self.faults.store(None);
        let summary = format!(
            "expired: {} ({} aborted, {} delayed)",
            set.summary(&self.names),
            set.injected(FaultKind::Abort),
            set.injected(FaultKind::Delay)
        );
        tracing::info!("fault injection {summary}");
        let detail = serde_json::json!({ "summary": summary, "pool": self.names[set.pool] });
        let cur = self.switchboard.state();
        self.record_rehearsal(
            &cur,
            FAULTS,
            ACTOR_SWITCHYARD,
            &ChangeOpts::default(),
            false,
            detail,
        );
    }

    /// Refuses to make a pool with faults in force live, unless forced.
    pub(super) fn faults_gate(&self, new: &RouteState, cur: &RouteState) -> Result<(), AdminError> {
        let Some(set) = self.faults.current() else {
            return Ok(());
        };
        if set.expired(Instant::now()) || new.primary == cur.primary || new.primary != set.pool {
            return Ok(());
        }
        Err(AdminError::Conflict {
            code: "faults_active",
            message: format!(
                "{} has faults injected ({}); clear them first (`switchyard ctl faults clear`), or \
                 pass force to make it live anyway",
                self.names[set.pool],
                set.summary(&self.names)
            ),
        })
    }

    /// The fault set in force, for `status`.
    pub(super) fn faults_status(&self, now: Instant) -> Option<FaultsStatus> {
        self.faults
            .current()
            .filter(|s| !s.expired(now))
            .map(|s| FaultsStatus::of(&s, &self.names, now))
    }

    fn save_faults(&self, set: Option<&FaultSet>) -> Result<(), AdminError> {
        let file = set.map(|s| s.to_file(&self.names));
        match faults::save(&self.config().state.dir, file.as_ref()) {
            Ok(()) => Ok(()),
            Err(e) if e.committed() => {
                tracing::error!(
                    "faults.json written, but the state directory was not fsynced: {e}"
                );
                Ok(())
            }
            Err(e) => Err(save_failed(&e)),
        }
    }

    /// Refuses a command made against a generation that is no longer current.
    pub(super) fn check_generation(
        &self,
        cur: &RouteState,
        change: &ChangeOpts,
    ) -> Result<(), AdminError> {
        match change.if_generation {
            Some(want) if want != cur.generation => Err(AdminError::Conflict {
                code: "generation_mismatch",
                message: format!(
                    "the state is at generation {}, not {want}: someone else changed it; check \
                     `status` and retry with the current generation",
                    cur.generation
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Records a rehearsal change (faults, shadow) in history and notifies: the routing is
    /// unchanged, so `from` and `to` are the same and the generation does not move.
    pub(super) fn record_rehearsal(
        &self,
        cur: &RouteState,
        action: &str,
        actor: &str,
        change: &ChangeOpts,
        forced: bool,
        detail: serde_json::Value,
    ) {
        let route = state::describe(cur, &self.names);
        let entry = HistoryEntry {
            ts: state::now_rfc3339(),
            generation: cur.generation,
            action: action.to_string(),
            from: route.clone(),
            to: route,
            actor: actor.to_string(),
            reason: change.reason.clone(),
            result: "ok".into(),
            forced,
            trigger: None,
            detail: Some(detail),
            impact: None,
        };
        if let Some(w) = self.record(entry, action) {
            tracing::error!("{w}");
        }
    }
}

/// Restores a fault set from `faults.json` at start-up (before any request).
pub(super) fn restore(admin: &Admin) {
    if let Some(set) = faults::load(&admin.config().state.dir, &admin.names) {
        admin.faults.store(Some(Arc::new(set)));
    }
}

/// A duration to the second, for messages (`10m`, not `10m 12ms`).
pub(super) fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(u64::from(d.subsec_millis() > 0)))
}
