//! The admin API's commands and their handler.
//!
//! Every request is parsed into an [`AdminCommand`] (in [`http`]), handled by the pure
//! [`Admin::handle`], and the [`Reply`] or [`AdminError`] rendered back; the HTTP layer only moves
//! bytes, so the handler is unit-tested without a socket (sozu's command types, axum's testing
//! example).
//!
//! A change is: check → build the new [`RouteState`] → one atomic store into the
//! [`Switchboard`] → write `state.json` durably → append to history → acknowledge. If the state
//! file cannot be written the store is undone and the call fails, so an acknowledged change is
//! always a durable one and a failed call leaves the state exactly as it was. Changes serialise on
//! one mutex; the request path never touches it.
//!
//! Where things are: this file decides and makes a change durable ([`Admin::handle`],
//! `apply`); `command` holds the vocabulary (commands, replies, errors); `view` builds the
//! status every client shows; `watch` is the guard and rollout loop; `reload` applies a new
//! configuration or new DNS members; `handover` freezes changes during a binary upgrade; [`http`]
//! is the wire.

mod command;
mod faults;
mod handover;
pub mod http;
mod reload;
mod shadow;
mod view;
mod watch;

pub use command::{
    AdminCommand, AdminError, Change, ChangeOpts, PreviewCookie, Reply, DEFAULT_HISTORY_LIMIT,
    MAX_HISTORY_LIMIT,
};
pub use faults::FaultsStatus;
pub use reload::Reloaded;
pub use shadow::{ShadowReport, ShadowStatus};
pub use view::{
    BackendStatus, GuardJudgement, GuardStatus, GuardWatch, PoolStatus, RolloutStatus, Status,
};
pub use watch::{GuardService, WatchKind};
use watch::{Judgement, Watch};

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{Config, MAX_BP};
use crate::dns::Names;
use crate::health::HealthControl;
use crate::metrics::Metrics;
use crate::notify::{Event, Notifier};
use crate::pools::Pool;
use crate::preview::{PreviewKey, PREVIEW_COOKIE};
use crate::rollout::{steps_to_bp, Rollout};
use crate::routing::{other, PoolId, RouteState, Switchboard};
use crate::settings::ProxySettings;
use crate::state::{self, HistoryEntry, Loaded, StateFile, StateStore, StoreError};

/// The mutable bookkeeping behind changes; guarded by the change mutex.
#[derive(Debug)]
struct Ledger {
    /// What `rollback` returns to.
    previous: Option<RouteState>,
    since: String,
    watch: Option<Watch>,
    rollout: Option<Rollout>,
    judgement: Option<Judgement>,
}

/// The admin handler: owns the switchboard's writes, the state file, the history, the guard's
/// verdicts and the rollout's progress.
pub struct Admin {
    switchboard: Arc<Switchboard>,
    metrics: Arc<Metrics>,
    notifier: Notifier,
    /// The configuration in force: replaced whole by a reload, under the change lock, so a
    /// guard tick or a change reads one version throughout.
    config: ArcSwap<Config>,
    /// The file a reload re-reads (`None` for a built-in config: the demo).
    config_path: Option<PathBuf>,
    /// The health checker's settings and wake-up, for a reload.
    health: Arc<HealthControl>,
    /// Backend names and what they resolve to.
    dns: Arc<Names>,
    store: StateStore,
    names: Vec<String>,
    /// Serialises changes: check, swap and persist happen as one step per change.
    ledger: Mutex<Ledger>,
    /// Serialises reloads (which check new backends without holding the change lock).
    reloads: Mutex<()>,
    /// A membership change from DNS that the health gate holds back (logged once).
    dns_held: Mutex<Option<String>>,
    /// Set while a binary upgrade hands over (upgrade.rs): every change and reload is refused
    /// and the guard and rollouts hold, so state.json is final when the new process reads it.
    frozen: AtomicBool,
    /// The fault set in force and the shadow session (rehearsals: `faults`, `shadow`).
    faults: Arc<crate::faults::Faults>,
    shadow: Arc<crate::shadow::Shadow>,
}

/// What an [`Admin`] is built from, besides the configuration.
pub struct AdminParts {
    pub metrics: Arc<Metrics>,
    /// The loaded preview token, when `routing.preview_token_file` is set.
    pub preview: Option<PreviewKey>,
    pub notifier: Notifier,
    pub health: Arc<HealthControl>,
    /// Backend names and what they resolved to (at start: whatever resolved in time).
    pub dns: Arc<Names>,
    /// The configuration file, for reloads.
    pub config_path: Option<PathBuf>,
    /// Shared with the proxy: the fault set and the shadow session it reads per request.
    pub faults: Arc<crate::faults::Faults>,
    pub shadow: Arc<crate::shadow::Shadow>,
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
const ACTOR_GUARD: &str = "guard";
const ACTOR_ROLLOUT: &str = "rollout";

/// How one change is recorded and gated.
struct Spec<'a> {
    /// The history `action`, and the notification event kind.
    action: &'a str,
    event: &'a str,
    actor: &'a str,
    opts: ChangeOpts,
    trigger: Option<&'a str>,
    detail: Option<serde_json::Value>,
    /// Part of a rollout (its steps, its end) or the guard: allowed while a rollout runs.
    automatic: bool,
    /// Skip the health gate without calling it forced (the guard's rollbacks).
    skip_gate: bool,
    /// Record even when the weights do not move (a rollout starting at the current weight).
    always: bool,
}

impl<'a> Spec<'a> {
    fn manual(action: &'a str, actor: &'a str, opts: ChangeOpts) -> Spec<'a> {
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

    fn rollout(action: &'a str, actor: &'a str, opts: ChangeOpts, step: String) -> Spec<'a> {
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

fn rollout_running(r: &Rollout, names: &[String]) -> AdminError {
    AdminError::Conflict {
        code: "rollout_running",
        message: format!(
            "a rollout to {} is in progress (step {} of {}, {}); let it finish or abort it \
             first (`switchyard ctl abort`)",
            names[r.to],
            r.step + 1,
            r.steps.len(),
            state::format_percent(r.weight())
        ),
    }
}

fn no_rollout() -> AdminError {
    AdminError::Conflict {
        code: "no_rollout",
        message: "no rollout is in progress; start one with `switchyard ctl rollout POOL`".into(),
    }
}

impl Admin {
    /// Restores the routing state from the state directory (a valid file wins over
    /// `initial_primary`), logs which won, and builds the switchboard. A saved rollout resumes
    /// at its step, whose wait starts over.
    ///
    /// When the state did not come whole from the file (first start, an unusable file, or a file
    /// from before sticky hashing), the state file is written now, so the sticky-hash salt is
    /// durable from the first request and an unwritable state directory is found at start-up
    /// rather than at the first flip.
    pub fn start(
        config: &Config,
        parts: AdminParts,
    ) -> Result<(Arc<Switchboard>, Admin), StoreError> {
        let AdminParts {
            metrics,
            preview,
            notifier,
            health,
            dns,
            config_path,
            faults,
            shadow,
        } = parts;
        let store = StateStore::new(&config.state.dir);
        let names: Vec<String> = config.pools.iter().map(|p| p.name.clone()).collect();
        // Generations keep counting from the history even when the state file is lost, so
        // `if_generation` and the audit trail never see a number twice.
        let last_recorded = store.last_generation();
        let initial = RouteState {
            primary: config.routing.initial_primary,
            canary_bp: 0,
            generation: last_recorded,
        };
        let now = Instant::now();
        let mut salt = None;
        let mut rollout = None;
        let mut saved_watch = None;
        let (state, previous, since) = match store.load(&names) {
            Loaded::Valid {
                state,
                previous,
                since,
                salt: saved,
                rollout: saved_rollout,
                watch,
            } => {
                salt = saved;
                saved_watch = watch.and_then(|w| Watch::from_file(&w, &names, now));
                rollout = saved_rollout.and_then(|r| Rollout::from_file(&r, &names, now));
                tracing::info!(
                    "state file {} wins over initial_primary: live is {} (generation {})",
                    store.state_path().display(),
                    state::describe(&state, &names),
                    state.generation
                );
                if let Some(r) = &rollout {
                    tracing::info!(
                        "resuming the rollout to {} at step {} of {} ({}); the step's wait starts over",
                        names[r.to],
                        r.step + 1,
                        r.steps.len(),
                        state::format_percent(r.weight())
                    );
                }
                (state, previous, since)
            }
            Loaded::Missing => {
                tracing::info!(
                    "no state file at {}; starting from the config: {} is primary",
                    store.state_path().display(),
                    names[initial.primary]
                );
                (initial, None, state::now_rfc3339())
            }
            Loaded::Mismatch { file_pools } => {
                tracing::warn!(
                    "state file {} names pool `{file_pools}`, which the config does not have; \
                     ignoring it and starting with {} as primary",
                    store.state_path().display(),
                    names[initial.primary]
                );
                (initial, None, state::now_rfc3339())
            }
            Loaded::Corrupt { error, moved_to } => {
                tracing::error!(
                    "STATE FILE UNREADABLE: {} ({error}); moved it to {} and started from the \
                     config with {} as primary — check that this is the colour you want live",
                    store.state_path().display(),
                    moved_to.display(),
                    names[initial.primary]
                );
                (initial, None, state::now_rfc3339())
            }
        };
        if state.generation > last_recorded {
            // The process died between writing state.json and appending to history: the change
            // is durable and live, so say so in the audit trail rather than leave a gap.
            let entry = HistoryEntry {
                ts: state::now_rfc3339(),
                generation: state.generation,
                action: "recovered".into(),
                from: "?".into(),
                to: state::describe(&state, &names),
                actor: "switchyard".into(),
                reason: Some(format!(
                    "state.json is at generation {} but history stops at {last_recorded}: the \
                     process stopped between the two writes; this is the state now live",
                    state.generation
                )),
                result: "ok".into(),
                forced: false,
                trigger: None,
                detail: None,
            };
            if let Err(e) = store.append_history(&entry) {
                tracing::error!("cannot record the recovered state in history: {e}");
            }
        }
        let fresh_salt = salt.is_none();
        let salt = salt.unwrap_or_else(rand::random);
        if fresh_salt {
            store.save(&StateFile {
                version: state::STATE_VERSION,
                route: state::stored(&state, &names),
                since: since.clone(),
                previous: previous.map(|p| state::stored(&p, &names)),
                salt: Some(salt),
                rollout: None,
                watch: None,
            })?;
        }
        // The saved watch goes on where it was; a canary saved without one (a file from before
        // watches were saved) is watched from now.
        let watch = saved_watch.or((state.canary_bp > 0).then_some(Watch {
            pool: state.canary_pool(),
            kind: WatchKind::Canary,
            since: now,
            until: None,
        }));
        let settings = ProxySettings::from_config(config, preview);
        let pools = Pool::with_config(config, &reload::members_with(config, &dns, &Vec::new()));
        let switchboard = Arc::new(Switchboard::with_pools(pools, state, salt, settings));
        let admin = Admin {
            switchboard: switchboard.clone(),
            metrics,
            notifier,
            config: ArcSwap::from_pointee(config.clone()),
            config_path,
            health,
            dns,
            store,
            names,
            ledger: Mutex::new(Ledger {
                previous,
                since,
                watch,
                rollout,
                judgement: None,
            }),
            reloads: Mutex::new(()),
            dns_held: Mutex::new(None),
            frozen: AtomicBool::new(false),
            faults,
            shadow,
        };
        faults::restore(&admin);
        Ok((switchboard, admin))
    }

    pub fn switchboard(&self) -> &Arc<Switchboard> {
        &self.switchboard
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Handles one command on behalf of `actor`. Blocking (changes fsync): call it off the
    /// async executor.
    pub fn handle(&self, cmd: AdminCommand, actor: &str) -> Result<Reply, AdminError> {
        let received = Instant::now();
        let reads = matches!(
            cmd,
            AdminCommand::Health
                | AdminCommand::Status
                | AdminCommand::History { .. }
                | AdminCommand::PreviewCookie { .. }
                | AdminCommand::ShadowReport
        );
        if !reads {
            // Checked again under the change lock (apply, pause_rollout); this is the early no.
            self.refuse_while_upgrading()?;
        }
        match cmd {
            AdminCommand::Health => Ok(Reply::Health { ok: true }),
            AdminCommand::Status => Ok(Reply::Status(self.status(&self.lock_ledger()))),
            AdminCommand::History { limit } => self
                .store
                .read_history(limit.min(MAX_HISTORY_LIMIT))
                .map(Reply::History)
                .map_err(|e| {
                    AdminError::Internal(format!(
                        "cannot read {}: {e}",
                        self.store.history_path().display()
                    ))
                }),
            AdminCommand::Reload { reason } => self.reload(actor, reason),
            AdminCommand::PreviewCookie { pool } => {
                self.pool(&pool)?;
                let settings = self.switchboard.load().settings.clone();
                let key = settings
                    .preview
                    .as_ref()
                    .ok_or_else(|| AdminError::Conflict {
                        code: "preview_off",
                        message: "preview is not configured; set routing.preview_token_file and \
                              reload"
                            .into(),
                    })?;
                Ok(Reply::Preview(PreviewCookie {
                    cookie: format!("{PREVIEW_COOKIE}={}", key.cookie_value(&pool)),
                    pool,
                }))
            }
            AdminCommand::Flip { to, change } => {
                let to = self.pool(&to)?;
                let mut ledger = self.lock_ledger();
                let spec = Spec::manual(action::FLIP, actor, change);
                self.apply(&mut ledger, received, spec, |cur, _| {
                    Ok(RouteState {
                        primary: to,
                        canary_bp: 0,
                        ..cur
                    })
                })
            }
            AdminCommand::Canary { pool, bp, change } => {
                let pool_id = self.pool(&pool)?;
                if bp > MAX_BP {
                    return Err(AdminError::BadRequest(format!(
                        "canary weight {bp} bp is above 10000 bp (100%)"
                    )));
                }
                let mut ledger = self.lock_ledger();
                let spec = Spec::manual(action::CANARY, actor, change);
                self.apply(&mut ledger, received, spec, |cur, _| {
                    self.check_canary_pool(pool_id, &cur)?;
                    Ok(RouteState {
                        canary_bp: bp,
                        ..cur
                    })
                })
            }
            AdminCommand::Promote { change } => {
                let mut ledger = self.lock_ledger();
                let spec = Spec::manual(action::PROMOTE, actor, change);
                self.apply(&mut ledger, received, spec, |cur, _| {
                    if cur.canary_bp == 0 {
                        return Err(AdminError::Conflict {
                            code: "no_canary",
                            message: format!(
                                "there is no canary to promote ({} takes all traffic); use flip \
                                 to switch pools",
                                self.names[cur.primary]
                            ),
                        });
                    }
                    Ok(RouteState {
                        primary: cur.canary_pool(),
                        canary_bp: 0,
                        ..cur
                    })
                })
            }
            AdminCommand::Rollback { change } => {
                let mut ledger = self.lock_ledger();
                let spec = Spec::manual(action::ROLLBACK, actor, change);
                self.apply(&mut ledger, received, spec, |cur, ledger| {
                    match ledger.previous {
                        Some(prev) => Ok(RouteState {
                            primary: prev.primary,
                            canary_bp: prev.canary_bp,
                            ..cur
                        }),
                        None => Err(AdminError::Conflict {
                            code: "nothing_to_roll_back",
                            message: "there is no earlier state to roll back to (no change has \
                                      been made since the state file was created)"
                                .into(),
                        }),
                    }
                })
            }
            AdminCommand::Rollout {
                to,
                steps,
                interval,
                change,
            } => self.start_rollout(received, actor, &to, &steps, interval, change),
            AdminCommand::Faults {
                pool,
                faults,
                change,
            } => self.set_faults(actor, &pool, faults, change),
            AdminCommand::FaultsClear { change } => self.clear_faults(actor, change),
            AdminCommand::Shadow {
                pool,
                bp,
                duration,
                change,
            } => self.start_shadow(actor, &pool, bp, duration, change),
            AdminCommand::ShadowStop { change } => self.stop_shadow(actor, change),
            AdminCommand::ShadowReport => Ok(Reply::Shadow(self.shadow_report())),
            AdminCommand::RolloutPause { change } => self.pause_rollout(actor, change, true),
            AdminCommand::RolloutResume { change } => self.pause_rollout(actor, change, false),
            AdminCommand::RolloutAbort { change } => {
                let mut ledger = self.lock_ledger();
                let r = ledger.rollout.clone().ok_or_else(no_rollout)?;
                let step = format!("aborted at step {} of {}", r.step + 1, r.steps.len());
                ledger.rollout = None;
                let spec = Spec::rollout(action::ROLLOUT, actor, change, step);
                let result = self.apply(&mut ledger, received, spec, |cur, _| {
                    Ok(RouteState {
                        canary_bp: 0,
                        ..cur
                    })
                });
                if result.is_err() {
                    ledger.rollout = Some(r);
                }
                result
            }
        }
    }

    fn check_canary_pool(&self, pool: PoolId, cur: &RouteState) -> Result<(), AdminError> {
        if pool == cur.primary {
            return Err(AdminError::Conflict {
                code: "pool_is_primary",
                message: format!(
                    "{} is the primary pool; a canary goes to the other pool ({})",
                    self.names[pool],
                    self.names[other(pool)]
                ),
            });
        }
        Ok(())
    }

    fn start_rollout(
        &self,
        received: Instant,
        actor: &str,
        to: &str,
        steps: &[f64],
        interval: Duration,
        change: ChangeOpts,
    ) -> Result<Reply, AdminError> {
        let to = self.pool(to)?;
        let steps = steps_to_bp(steps).map_err(|e| AdminError::BadRequest(e.to_string()))?;
        if interval < MIN_ROLLOUT_INTERVAL {
            return Err(AdminError::BadRequest(format!(
                "rollout interval {interval:?} is below {MIN_ROLLOUT_INTERVAL:?}; each step must \
                 be watched long enough to judge it"
            )));
        }
        let mut ledger = self.lock_ledger();
        if let Some(r) = &ledger.rollout {
            return Err(rollout_running(r, &self.names));
        }
        self.check_canary_pool(to, &self.switchboard.state())?;
        let r = Rollout::new(to, steps, interval, Instant::now(), state::now_rfc3339());
        let first = r.weight();
        let step = format!(
            "step 1 of {} ({})",
            r.steps.len(),
            state::format_percent(first)
        );
        ledger.rollout = Some(r);
        let spec = Spec::rollout(action::ROLLOUT, actor, change, step);
        let result = self.apply(&mut ledger, received, spec, |cur, _| {
            Ok(RouteState {
                canary_bp: first,
                ..cur
            })
        });
        if result.is_err() {
            ledger.rollout = None;
        }
        result
    }

    fn pause_rollout(
        &self,
        actor: &str,
        change: ChangeOpts,
        pause: bool,
    ) -> Result<Reply, AdminError> {
        let mut ledger = self.lock_ledger();
        self.refuse_while_upgrading()?;
        let now = Instant::now();
        let before = ledger.rollout.clone().ok_or_else(no_rollout)?;
        let r = ledger.rollout.as_mut().expect("checked above");
        let changed = if pause { r.pause(now) } else { r.resume(now) };
        let cur = self.switchboard.state();
        let previous = state::stored(&cur, &self.names);
        if !changed {
            return Ok(Reply::Change(Change {
                status: self.status(&ledger),
                previous,
                applied_us: 0,
                changed: false,
                warning: None,
            }));
        }
        let since = ledger.since.clone();
        if let Err(e) = self.save(&ledger, cur, &since) {
            if !e.committed {
                ledger.rollout = Some(before);
                return Err(save_failed(&e));
            }
            tracing::error!(
                "rollout {} saved, but the state directory was not fsynced: {e}",
                if pause { "pause" } else { "resume" }
            );
        }
        let what = if pause { "paused" } else { "resumed" };
        let r = ledger.rollout.as_ref().expect("still there");
        let entry = HistoryEntry {
            ts: state::now_rfc3339(),
            generation: cur.generation,
            action: action::ROLLOUT.into(),
            from: state::describe(&cur, &self.names),
            to: state::describe(&cur, &self.names),
            actor: actor.to_string(),
            reason: change.reason.clone(),
            result: "ok".into(),
            forced: false,
            trigger: None,
            detail: Some(serde_json::json!({
                "step": format!("{what} at step {} of {}", r.step + 1, r.steps.len())
            })),
        };
        let warning = self.record(entry, action::ROLLOUT);
        Ok(Reply::Change(Change {
            status: self.status(&ledger),
            previous,
            applied_us: 0,
            changed: true,
            warning,
        }))
    }

    fn lock_ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave the ledger half-written in a way that
        // matters (it is rewritten whole on every change), so carry on with the data.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pool(&self, name: &str) -> Result<PoolId, AdminError> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| AdminError::UnknownPool {
                name: name.to_string(),
                known: self.names.join(" and "),
            })
    }

    /// Writes `state.json` for `route` and the ledger's rollout.
    fn save(&self, ledger: &Ledger, route: RouteState, since: &str) -> Result<(), StoreError> {
        self.store.save(&StateFile {
            version: state::STATE_VERSION,
            route: state::stored(&route, &self.names),
            since: since.to_string(),
            previous: ledger.previous.map(|p| state::stored(&p, &self.names)),
            salt: Some(self.switchboard.load().salt),
            rollout: ledger.rollout.as_ref().map(|r| r.to_file(&self.names)),
            watch: ledger.watch.map(|w| w.to_file(&self.names)),
        })
    }

    /// Appends `entry` to history and notifies; returns a warning if history could not be
    /// written (the change itself stands).
    fn record(&self, entry: HistoryEntry, event: &str) -> Option<String> {
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
        warning
    }

    /// Applies one change under the (held) ledger lock: `next` computes the new state.
    fn apply(
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
        match self.save(ledger, new, &since) {
            Ok(()) => {}
            Err(e) if e.committed => {
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
        warnings.extend(self.record(entry, spec.event));
        Ok(Reply::Change(Change {
            status: self.status(ledger),
            previous,
            applied_us,
            changed: true,
            warning: (!warnings.is_empty()).then(|| warnings.join("; ")),
        }))
    }

    /// Refuses a change that would send traffic to a pool that is not ready, unless forced.
    fn health_gate(
        &self,
        new: &RouteState,
        cur: &RouteState,
        opts: &ChangeOpts,
    ) -> Result<(), AdminError> {
        if opts.force {
            return Ok(());
        }
        self.faults_gate(new, cur)?;
        self.shadow_gate(new, cur)?;
        let table = self.switchboard.load();
        let min_healthy = self.config().health.min_healthy;
        // Only pools that gain traffic are gated; moving traffic away is always allowed.
        let mut targets = Vec::new();
        if new.primary != cur.primary {
            targets.push(new.primary);
        }
        if new.canary_bp > 0 && (new.canary_bp > cur.canary_bp || new.primary != cur.primary) {
            targets.push(new.canary_pool());
        }
        for id in targets {
            let pool = table.pool(id);
            let healthy = pool.healthy_count();
            if healthy < min_healthy {
                return Err(AdminError::Conflict {
                    code: "target_not_ready",
                    message: format!(
                        "{} is not ready: {healthy} of {} backends healthy, {} needed; fix the \
                         pool, or pass force to switch anyway",
                        pool.name,
                        pool.backends.len(),
                        min_healthy
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Shortest rollout interval: a step must live long enough for its traffic to be judged.
pub const MIN_ROLLOUT_INTERVAL: Duration = Duration::from_millis(200);

fn save_failed(e: &StoreError) -> AdminError {
    AdminError::Internal(format!(
        "the change was not applied because the state could not be saved: {e}; fix the state \
         directory (permissions, disk space) and retry"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(config: &Config) -> Arc<Metrics> {
        Arc::new(Metrics::new(config))
    }

    fn notifier(config: &Config) -> Notifier {
        Notifier::new(Vec::new(), metrics(config)).0
    }

    fn parts(config: &Config) -> AdminParts {
        AdminParts {
            metrics: metrics(config),
            preview: None,
            notifier: notifier(config),
            health: HealthControl::new(config.health.clone()),
            dns: Names::new(config, metrics(config)),
            config_path: None,
            faults: crate::faults::Faults::new(),
            shadow: crate::shadow::Shadow::new(&config.shadow, metrics(config)).0,
        }
    }

    fn admin() -> (tempfile::TempDir, Admin) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[health]\nenabled = false\n[state]\ndir = \"{}\"\n[pools.blue]\nbackends = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n\
             [pools.green]\nbackends = [\"127.0.0.1:3\"]\n",
            dir.path().display()
        );
        let config = Config::parse(&text, "t").unwrap();
        let (_sb, admin) = Admin::start(&config, parts(&config)).unwrap();
        (dir, admin)
    }

    fn flip(to: &str) -> AdminCommand {
        AdminCommand::Flip {
            to: to.into(),
            change: ChangeOpts::default(),
        }
    }

    fn change(r: Result<Reply, AdminError>) -> Change {
        match r {
            Ok(Reply::Change(c)) => c,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn flip_swaps_persists_and_records() {
        let (dir, admin) = admin();
        let c = change(admin.handle(flip("green"), "uid:1000"));
        assert!(c.changed);
        assert_eq!(c.status.primary, "green");
        assert_eq!(c.status.generation, 1);
        assert_eq!(c.previous.primary, "blue");
        assert_eq!(admin.switchboard().state().primary, 1);

        let file: StateFile =
            serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
        assert_eq!(file.route.primary, "green");
        assert_eq!(file.previous.unwrap().primary, "blue");
        let h = admin.store.read_history(10).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].from.as_str(), h[0].to.as_str()), ("blue", "green"));
        assert_eq!(h[0].actor, "uid:1000");
    }

    #[test]
    fn flipping_to_the_live_pool_changes_nothing() {
        let (_dir, admin) = admin();
        let c = change(admin.handle(flip("blue"), "t"));
        assert!(!c.changed);
        assert_eq!(c.status.generation, 0);
        assert!(admin.store.read_history(10).unwrap().is_empty());
    }

    #[test]
    fn rollback_returns_to_the_previous_state_and_toggles() {
        let (_dir, admin) = admin();
        let rb = || AdminCommand::Rollback {
            change: ChangeOpts::default(),
        };
        assert_eq!(
            admin.handle(rb(), "t").unwrap_err().code(),
            "nothing_to_roll_back"
        );
        change(admin.handle(flip("green"), "t"));
        let c = change(admin.handle(rb(), "t"));
        assert_eq!(
            (c.status.primary.as_str(), c.status.generation),
            ("blue", 2)
        );
        let c = change(admin.handle(rb(), "t"));
        assert_eq!(
            (c.status.primary.as_str(), c.status.generation),
            ("green", 3)
        );
    }

    #[test]
    fn canary_then_promote() {
        let (_dir, admin) = admin();
        let canary = |pool: &str, bp| AdminCommand::Canary {
            pool: pool.into(),
            bp,
            change: ChangeOpts::default(),
        };
        let promote = AdminCommand::Promote {
            change: ChangeOpts::default(),
        };
        assert_eq!(
            admin.handle(promote.clone(), "t").unwrap_err().code(),
            "no_canary"
        );
        assert_eq!(
            admin.handle(canary("blue", 500), "t").unwrap_err().code(),
            "pool_is_primary"
        );
        assert_eq!(
            admin
                .handle(canary("green", 10_001), "t")
                .unwrap_err()
                .status(),
            400
        );
        let c = change(admin.handle(canary("green", 500), "t"));
        assert_eq!(
            (c.status.canary_pool.as_str(), c.status.canary_bp),
            ("green", 500)
        );
        let c = change(admin.handle(promote, "t"));
        assert_eq!(
            (c.status.primary.as_str(), c.status.canary_bp),
            ("green", 0)
        );
    }

    #[test]
    fn refusals_leave_the_state_unchanged() {
        let (dir, admin) = admin();
        change(admin.handle(flip("green"), "t"));
        let before = admin.switchboard().state();
        let state_before = std::fs::read(dir.path().join("state.json")).unwrap();
        let stale = AdminCommand::Flip {
            to: "blue".into(),
            change: ChangeOpts {
                if_generation: Some(0),
                ..ChangeOpts::default()
            },
        };
        let e = admin.handle(stale, "t").unwrap_err();
        assert_eq!((e.status(), e.code()), (409, "generation_mismatch"));
        let e = admin.handle(flip("purple"), "t").unwrap_err();
        assert_eq!((e.status(), e.code()), (404, "unknown_pool"));
        assert_eq!(admin.switchboard().state(), before);
        assert_eq!(
            std::fs::read(dir.path().join("state.json")).unwrap(),
            state_before
        );
        assert_eq!(admin.store.read_history(10).unwrap().len(), 1);
    }

    #[test]
    fn the_health_gate_refuses_a_pool_that_is_not_ready_unless_forced() {
        let (_dir, admin) = admin();
        for b in &admin.switchboard().load().pools[1].backends {
            b.set_healthy(false);
        }
        let e = admin.handle(flip("green"), "t").unwrap_err();
        assert_eq!((e.status(), e.code()), (409, "target_not_ready"));
        assert!(e.to_string().contains("0 of 1 backends healthy"), "{e}");
        assert_eq!(admin.switchboard().state().primary, 0);
        let forced = AdminCommand::Flip {
            to: "green".into(),
            change: ChangeOpts {
                force: true,
                ..ChangeOpts::default()
            },
        };
        change(admin.handle(forced, "t"));
        assert!(admin.store.read_history(1).unwrap()[0].forced);
    }

    #[test]
    fn a_failed_save_undoes_the_change() {
        let (dir, admin) = admin();
        // Make the state file's temp path a directory so the write fails.
        std::fs::create_dir(dir.path().join("state.json.tmp")).unwrap();
        let e = admin.handle(flip("green"), "t").unwrap_err();
        assert_eq!(e.status(), 500);
        assert!(e.to_string().contains("not applied"), "{e}");
        assert_eq!(admin.switchboard().state().primary, 0);
        assert_eq!(admin.switchboard().state().generation, 0);
        assert!(admin.store.read_history(10).unwrap().is_empty());
    }

    #[test]
    fn restart_restores_the_saved_state() {
        let (dir, admin) = admin();
        change(admin.handle(flip("green"), "t"));
        let text = format!(
            "[health]\nenabled = false\n[state]\ndir = \"{}\"\n[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n\
             [pools.green]\nbackends = [\"127.0.0.1:3\"]\n",
            dir.path().display()
        );
        let config = Config::parse(&text, "t").unwrap();
        let (sb, again) = Admin::start(&config, parts(&config)).unwrap();
        assert_eq!(sb.state().primary, 1);
        assert_eq!(sb.state().generation, 1);
        // The previous state survives too: rollback works right after a restart.
        let c = change(again.handle(
            AdminCommand::Rollback {
                change: ChangeOpts::default(),
            },
            "t",
        ));
        assert_eq!(c.status.primary, "blue");
    }

    #[test]
    fn the_guard_keeps_watching_a_flip_across_a_restart() {
        let (dir, admin) = admin();
        let c = change(admin.handle(flip("green"), "t"));
        let watching = c.status.guard.watching.expect("a flip is watched");
        assert_eq!(
            (watching.pool.as_str(), watching.kind),
            ("green", WatchKind::Flip)
        );
        let text = format!(
            "[health]\nenabled = false\n[state]\ndir = \"{}\"\n[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n\
             [pools.green]\nbackends = [\"127.0.0.1:3\"]\n",
            dir.path().display()
        );
        let config = Config::parse(&text, "t").unwrap();
        let (_, again) = Admin::start(&config, parts(&config)).unwrap();
        let Reply::Status(st) = again.handle(AdminCommand::Status, "t").unwrap() else {
            panic!("not a status")
        };
        let w = st.guard.watching.expect("still watched after the restart");
        assert_eq!((w.pool.as_str(), w.kind), ("green", WatchKind::Flip));
        let ends = w.ends_in_s.expect("a flip watch ends");
        let full = config.guard.watch_after_flip.as_secs_f64();
        assert!(ends <= full && ends > full - 5.0, "{ends} of {full}");
    }
}
