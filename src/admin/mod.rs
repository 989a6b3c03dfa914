//! The admin API's commands and their handler.
//!
//! Every request is parsed into an [`AdminCommand`] (in [`http`]), handled by the pure
//! [`Admin::handle`], and the [`Reply`] or [`AdminError`] rendered back; the HTTP layer only moves
//! bytes, so the handler is unit-tested without a socket (sozu's command types, axum's testing
//! example).
//!
//! A change is: check → build the new [`RouteState`] → one atomic store into the
//! [`Switchboard`] → save it durably in the state store → append to history → acknowledge. If the
//! state cannot be saved the swap is undone and the call fails, so an acknowledged change is
//! always a durable one and a failed call leaves the state exactly as it was. Changes serialise on
//! one mutex; the request path never touches it.
//!
//! Where things are: this file decides what each command changes ([`Admin::handle`]);
//! `ledger` holds the bookkeeping and `apply`, the one path by which a change is swapped in,
//! made durable in the store ([`crate::store`]) and recorded; `gate` is the health gate; `start`
//! restores the state at start-up; `command` holds the vocabulary (commands, replies, errors);
//! `view` builds the status every client shows; `watch` is the guard and rollout loop; `reload`
//! applies a new configuration or new DNS members; `handover` freezes changes during a binary
//! upgrade; [`http`] is the wire.

mod command;
mod faults;
mod fleet;
mod gate;
mod handover;
pub mod http;
mod impact;
mod insight;
mod ledger;
mod reload;
mod shadow;
mod start;
mod view;
mod watch;

pub use command::{
    AdminCommand, AdminError, Change, ChangeOpts, PreviewCookie, Reply, DEFAULT_HISTORY_LIMIT,
    MAX_HISTORY_LIMIT,
};
pub use faults::FaultsStatus;
pub use fleet::FleetService;
pub use ledger::action;
use ledger::{save_failed, Ledger, Spec, ACTOR_GUARD, ACTOR_ROLLOUT};
pub use reload::Reloaded;
pub use shadow::{ShadowReport, ShadowStatus};
pub use view::{
    BackendStatus, GuardJudgement, GuardStatus, GuardWatch, PoolStatus, RolloutStatus, Status,
};
pub use watch::{GuardService, WatchKind};

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{Config, MAX_BP};
use crate::dns::Names;
use crate::health::HealthControl;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::preview::{PreviewKey, PREVIEW_COOKIE};
use crate::rollout::{steps_to_bp, Rollout};
use crate::routing::{other, PoolId, RouteState, Switchboard};
use crate::state::{self, HistoryEntry};
use crate::store::Store;

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
    /// The certificates the https listeners serve (admin/reload.rs swaps them).
    tls: Arc<crate::tls::CertStore>,
    /// Where the routing state and history are kept (crate::store).
    store: Box<dyn Store>,
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
    /// Each change's figures before and after (impact.rs).
    impact: impact::ImpactTracker,
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
    /// The certificates the https listeners serve, which a reload replaces.
    pub tls: Arc<crate::tls::CertStore>,
    /// Shared with the proxy: the fault set and the shadow session it reads per request.
    pub faults: Arc<crate::faults::Faults>,
    pub shadow: Arc<crate::shadow::Shadow>,
}

pub(super) fn rollout_running(r: &Rollout, names: &[String]) -> AdminError {
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
                | AdminCommand::Report { .. }
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
                .map(|mut h| {
                    self.impact.annotate(&mut h);
                    Reply::History(h)
                })
                .map_err(|e| {
                    AdminError::Internal(format!(
                        "cannot read {}: {e}",
                        self.store.history_location()
                    ))
                }),
            AdminCommand::Report { since } => self.report(since).map(Reply::Report),
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
        if let Err(e) = self.save(&ledger, cur, &since, cur.generation) {
            if !e.committed() {
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
            impact: None,
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

    fn pool(&self, name: &str) -> Result<PoolId, AdminError> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| AdminError::UnknownPool {
                name: name.to_string(),
                known: self.names.join(" and "),
            })
    }
}

/// Shortest rollout interval: a step must live long enough for its traffic to be judged.
pub const MIN_ROLLOUT_INTERVAL: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateFile;

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
            tls: Arc::default(),
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
