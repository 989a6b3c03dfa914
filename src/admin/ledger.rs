//! The change ledger and durability: the bookkeeping every change updates (what `rollback`
//! returns to, the guard's watch, a running rollout), and [`Admin::apply`], the one path by which
//! a change is checked against the ledger, swapped into the switchboard, made durable in the
//! state store and recorded in history. What a command changes is decided in `super`; here it
//! is made to stick.

use std::time::Instant;

use super::watch::{Judgement, Watch};
use super::{rollout_running, Admin, AdminError, Change, ChangeOpts, Reply};
use crate::notify::Event;
use crate::rollout::Rollout;
use crate::routing::RouteState;
use crate::state::{self, HistoryEntry, StateFile, StoreError};

/// The mutable bookkeeping behind changes; guarded by the change mutex.
#[derive(Debug)]
pub(super) struct Ledger {
    /// What `rollback` returns to.
    pub(super) previous: Option<RouteState>,
    pub(super) since: String,
    pub(super) watch: Option<Watch>,
    pub(super) rollout: Option<Rollout>,
    pub(super) judgement: Option<Judgement>,
}

/// The action names recorded in history and counted in metrics.
pub mod action {
    pub const FLIP: &str = "flip";
    pub const CANARY: &str = "canary";
    pub const PROMOTE: &str = "promote";
    pub const ROLLBACK: &str = "rollback";
    pub const ROLLOUT: &str = "rollout";
}

/// Who made a change the process made itself.
pub(super) const ACTOR_GUARD: &str = "guard";
pub(super) const ACTOR_ROLLOUT: &str = "rollout";

/// How one change is recorded and gated.
pub(super) struct Spec<'a> {
    /// The history `action`, and the notification event kind.
    pub(super) action: &'a str,
    pub(super) event: &'a str,
    pub(super) actor: &'a str,
    pub(super) opts: ChangeOpts,
    pub(super) trigger: Option<&'a str>,
    pub(super) detail: Option<serde_json::Value>,
    /// Part of a rollout (its steps, its end) or the guard: allowed while a rollout runs.
    pub(super) automatic: bool,
    /// Skip the health gate without calling it forced (the guard's rollbacks).
    pub(super) skip_gate: bool,
    /// Record even when the weights do not move (a rollout starting at the current weight).
    pub(super) always: bool,
}

impl<'a> Spec<'a> {
    pub(super) fn manual(action: &'a str, actor: &'a str, opts: ChangeOpts) -> Spec<'a> {
        Spec {
            action,
            event: action,
            actor,
            opts,
            trigger: (action == action::ROLLBACK).then_some("manual"),
            detail: None,
            automatic: false,
            skip_gate: false,
            always: false,
        }
    }

    pub(super) fn rollout(
        action: &'a str,
        actor: &'a str,
        opts: ChangeOpts,
        step: String,
    ) -> Spec<'a> {
        Spec {
            action,
            event: action::ROLLOUT,
            actor,
            opts,
            trigger: None,
            detail: Some(serde_json::json!({ "step": step })),
            automatic: true,
            skip_gate: false,
            always: true,
        }
    }
}

impl Admin {
    pub(super) fn lock_ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave the ledger half-written in a way that
        // matters (it is rewritten whole on every change), so carry on with the data.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Saves `route` and the ledger's rollout; `base` is the generation the change was made
    /// from (a fleet store refuses the change if the fleet has moved on since).
    pub(super) fn save(
        &self,
        ledger: &Ledger,
        route: RouteState,
        since: &str,
        base: u64,
    ) -> Result<(), StoreError> {
        let file = StateFile {
            version: state::STATE_VERSION,
            route: state::stored(&route, &self.names),
            since: since.to_string(),
            previous: ledger.previous.map(|p| state::stored(&p, &self.names)),
            salt: Some(self.switchboard.load().salt),
            rollout: ledger.rollout.as_ref().map(|r| r.to_file(&self.names)),
            watch: ledger.watch.map(|w| w.to_file(&self.names)),
        };
        self.store.save(&file, base)
    }

    /// Appends `entry` to history and notifies; returns a warning if history could not be
    /// written (the change itself stands).
    pub(super) fn record(&self, entry: HistoryEntry, event: &str) -> Option<String> {
        let warning = match self.store.append_history(&entry) {
            Ok(()) => None,
            Err(e) => {
                tracing::error!("change applied and saved, but not recorded in history: {e}");
                Some(format!(
                    "the change is applied and saved, but history could not be written: {e}"
                ))
            }
        };
        self.notifier.send(Event::new(event, entry));
        self.refresh_report_metrics();
        warning
    }

    /// Applies one change under the (held) ledger lock: `next` computes the new state.
    pub(super) fn apply(
        &self,
        ledger: &mut Ledger,
        received: Instant,
        spec: Spec<'_>,
        next: impl FnOnce(RouteState, &Ledger) -> Result<RouteState, AdminError>,
    ) -> Result<Reply, AdminError> {
        self.refuse_while_upgrading()?;
        let cur = self.switchboard.state();
        if let Some(want) = spec.opts.if_generation {
            if want != cur.generation {
                return Err(AdminError::Conflict {
                    code: "generation_mismatch",
                    message: format!(
                        "the state is at generation {}, not {want}: someone else changed it; \
                         check `status` and retry with the current generation",
                        cur.generation
                    ),
                });
            }
        }
        if !spec.automatic {
            if let Some(r) = &ledger.rollout {
                return Err(rollout_running(r, &self.names));
            }
        }
        let mut new = next(cur, ledger)?;
        let previous = state::stored(&cur, &self.names);
        if !spec.always && new.primary == cur.primary && new.canary_bp == cur.canary_bp {
            return Ok(Reply::Change(Change {
                status: self.status(ledger),
                previous,
                applied_us: 0,
                changed: false,
                warning: None,
            }));
        }
        if !spec.skip_gate {
            self.health_gate(&new, &cur, &spec.opts)?;
        }
        new.generation = cur.generation + 1;

        self.switchboard.store_state(new);
        let applied_us = received.elapsed().as_micros() as u64;

        let since = state::now_rfc3339();
        let old_previous = ledger.previous.replace(cur);
        // The new watch is part of what is saved, so a restart or an upgrade keeps watching.
        let old_watch = ledger.watch;
        ledger.watch = self.next_watch(old_watch, &cur, &new, spec.action);
        let mut warnings = Vec::new();
        match self.save(ledger, new, &since, cur.generation) {
            Ok(()) => {}
            Err(e) if e.committed() => {
                // The new state.json is in place; undoing it in memory would make a restart
                // bring back a change the caller was told failed.
                tracing::error!(
                    "{} applied, but the state directory was not fsynced: {e}",
                    spec.action
                );
                warnings.push(format!(
                    "the change is applied and written, but the state directory could not be \
                     fsynced ({e}); it may not survive a power loss"
                ));
            }
            Err(e) => {
                self.switchboard.store_state(cur);
                ledger.previous = old_previous;
                ledger.watch = old_watch;
                tracing::error!("{} undone: {e}", spec.action);
                return Err(save_failed(&e));
            }
        }
        ledger.since = since.clone();
        if ledger.watch.is_some() && ledger.watch != old_watch {
            // A judgement belongs to the watch that made it: a new watch starts without the
            // previous one's verdict (which stays on show until then, e.g. after a rollback).
            ledger.judgement = None;
        }
        self.metrics.record_change(spec.action);
        if let Some(trigger) = spec.trigger.filter(|_| spec.action == action::ROLLBACK) {
            self.metrics.record_rollback(trigger);
        }

        let entry = HistoryEntry {
            ts: since,
            generation: new.generation,
            action: spec.action.to_string(),
            from: state::describe(&cur, &self.names),
            to: state::describe(&new, &self.names),
            actor: spec.actor.to_string(),
            reason: spec.opts.reason.clone(),
            result: "ok".into(),
            forced: spec.opts.force,
            trigger: spec.trigger.map(str::to_string),
            detail: spec.detail,
            impact: None,
        };
        tracing::info!(
            actor = spec.actor,
            reason = spec.opts.reason.as_deref().unwrap_or(""),
            "{}: {} -> {} (generation {}, applied in {applied_us} us)",
            spec.action,
            entry.from,
            entry.to,
            new.generation
        );
        let span = self.config().guard.window;
        self.impact.begin(&entry, &cur, &new, &self.names, span);
        warnings.extend(self.record(entry, spec.event));
        Ok(Reply::Change(Change {
            status: self.status(ledger),
            previous,
            applied_us,
            changed: true,
            warning: (!warnings.is_empty()).then(|| warnings.join("; ")),
        }))
    }
}

/// Why a change that could not be saved was refused: a lost race for the fleet's state is the
/// same 409 as a stale `if_generation`; an unreachable shared store is a 503 (retry later);
/// anything else is the state directory's fault.
pub(super) fn save_failed(e: &StoreError) -> AdminError {
    match e {
        StoreError::Conflict { current } => AdminError::Conflict {
            code: "generation_mismatch",
            message: format!(
                "the state is at generation {current}: another instance changed it first; \
                 check `status` and retry with the current generation"
            ),
        },
        StoreError::Unavailable(why) => AdminError::Unavailable {
            code: "state_backend_unavailable",
            message: format!(
                "the change was not applied: the shared state store cannot be reached ({why}); \
                 traffic keeps flowing on the last state; retry once it is back"
            ),
        },
        StoreError::File { .. } => AdminError::Internal(format!(
            "the change was not applied because the state could not be saved: {e}; fix the \
             state directory (permissions, disk space) and retry"
        )),
    }
}
