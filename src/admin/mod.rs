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

pub mod http;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::config::{Config, MAX_BP};
use crate::metrics::{Metrics, STATUS_WINDOW};
use crate::preview::{PreviewKey, PREVIEW_COOKIE};
use crate::routing::{other, PoolId, RouteState, Switchboard};
use crate::state::{self, HistoryEntry, Loaded, StateFile, StateStore, StoreError, StoredRoute};

/// Default and largest `GET /v1/history?limit=`.
pub const DEFAULT_HISTORY_LIMIT: usize = 20;
pub const MAX_HISTORY_LIMIT: usize = 10_000;

/// One admin request, parsed and typed.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminCommand {
    Status,
    Health,
    History {
        limit: usize,
    },
    Flip {
        to: String,
        change: ChangeOpts,
    },
    Canary {
        pool: String,
        bp: u32,
        change: ChangeOpts,
    },
    Promote {
        change: ChangeOpts,
    },
    Rollback {
        change: ChangeOpts,
    },
    Reload,
    /// A signed `sy_preview` cookie that lets a browser preview `pool`.
    PreviewCookie {
        pool: String,
    },
}

/// Options every change accepts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeOpts {
    /// Skip the health gate (recorded in history).
    pub force: bool,
    pub reason: Option<String>,
    /// Refuse unless the current generation is this one (optimistic concurrency for scripts).
    pub if_generation: Option<u64>,
}

/// Why an admin request was refused or failed. Rendered once, as `{"error", "code"}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "unauthorized: send `Authorization: Bearer <token>` with a token from the admin token file"
    )]
    Unauthorized,
    #[error("no such endpoint {0}; see GET /v1/status, POST /v1/flip, /v1/canary, /v1/promote, /v1/rollback, GET /v1/history")]
    NotFound(String),
    #[error("unknown pool `{name}`; the pools are {known}")]
    UnknownPool { name: String, known: String },
    #[error("{path} needs {allowed}, not {method}")]
    MethodNotAllowed {
        path: String,
        method: String,
        allowed: &'static str,
    },
    #[error("request body is over the {limit} byte limit")]
    PayloadTooLarge { limit: usize },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            AdminError::BadRequest(_) => 400,
            AdminError::Unauthorized => 401,
            AdminError::NotFound(_) | AdminError::UnknownPool { .. } => 404,
            AdminError::MethodNotAllowed { .. } => 405,
            AdminError::Conflict { .. } => 409,
            AdminError::PayloadTooLarge { .. } => 413,
            AdminError::Internal(_) => 500,
            AdminError::NotImplemented(_) => 501,
        }
    }

    /// The stable, machine-readable code scripts match on.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::BadRequest(_) => "bad_request",
            AdminError::Unauthorized => "unauthorized",
            AdminError::NotFound(_) => "not_found",
            AdminError::UnknownPool { .. } => "unknown_pool",
            AdminError::MethodNotAllowed { .. } => "method_not_allowed",
            AdminError::PayloadTooLarge { .. } => "payload_too_large",
            AdminError::Conflict { code, .. } => code,
            AdminError::NotImplemented(_) => "not_implemented",
            AdminError::Internal(_) => "internal",
        }
    }
}

/// A successful answer.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Preview(PreviewCookie),
    Status(Status),
    Change(Change),
    History(Vec<HistoryEntry>),
    Health { ok: bool },
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    pub primary: String,
    pub canary_pool: String,
    pub canary_bp: u32,
    pub generation: u64,
    /// When the current state was set (RFC 3339).
    pub since: String,
    pub pools: BTreeMap<String, PoolStatus>,
    /// The progressive rollout in progress, if any (none yet: rollouts are a later feature).
    pub rollout: Option<serde_json::Value>,
    /// The guard's current judgement, if any (none yet).
    pub guard: Option<serde_json::Value>,
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
    /// Requests finished over the last `window_s` seconds, and figures over them.
    pub requests: u64,
    pub window_s: u64,
    pub rps: f64,
    /// (5xx + upstream errors) / requests.
    pub error_ratio: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendStatus {
    pub addr: String,
    pub healthy: bool,
}

/// The answer to `POST /v1/preview-cookie`.
#[derive(Debug, Serialize)]
pub struct PreviewCookie {
    pub pool: String,
    /// `sy_preview=<pool>.<signature>`, ready for a `Cookie` header or `document.cookie`.
    pub cookie: String,
}

/// The answer to a change: the new status, what it replaced, and how fast it was applied.
#[derive(Debug, Serialize)]
pub struct Change {
    #[serde(flatten)]
    pub status: Status,
    pub previous: StoredRoute,
    /// Microseconds from receiving the command to the atomic swap.
    pub applied_us: u64,
    /// False when the command asked for the state that was already live (nothing was written).
    pub changed: bool,
    /// Set when the change is durable but its history line could not be written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The mutable bookkeeping behind changes; guarded by the change mutex.
#[derive(Debug)]
struct Ledger {
    /// What `rollback` returns to.
    previous: Option<RouteState>,
    since: String,
}

/// The admin handler: owns the switchboard's writes, the state file and the history.
pub struct Admin {
    switchboard: Arc<Switchboard>,
    metrics: Arc<Metrics>,
    preview: Option<PreviewKey>,
    store: StateStore,
    names: Vec<String>,
    min_healthy: usize,
    /// Serialises changes: check, swap and persist happen as one step per change.
    ledger: Mutex<Ledger>,
}

/// The action names recorded in history and counted in metrics.
pub mod action {
    pub const FLIP: &str = "flip";
    pub const CANARY: &str = "canary";
    pub const PROMOTE: &str = "promote";
    pub const ROLLBACK: &str = "rollback";
}

impl Admin {
    /// Restores the routing state from the state directory (a valid file wins over
    /// `initial_primary`), logs which won, and builds the switchboard.
    ///
    /// When the state did not come whole from the file (first start, an unusable file, or a file
    /// from before sticky hashing), the state file is written now, so the sticky-hash salt is
    /// durable from the first request and an unwritable state directory is found at start-up
    /// rather than at the first flip.
    pub fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        preview: Option<PreviewKey>,
    ) -> Result<(Arc<Switchboard>, Admin), StoreError> {
        let store = StateStore::new(&config.state.dir);
        let names: Vec<String> = config.pools.iter().map(|p| p.name.clone()).collect();
        let initial = RouteState {
            primary: config.routing.initial_primary,
            canary_bp: 0,
            generation: 0,
        };
        let mut salt = None;
        let (state, previous, since) = match store.load(&names) {
            Loaded::Valid {
                state,
                previous,
                since,
                salt: saved,
            } => {
                salt = saved;
                tracing::info!(
                    "state file {} wins over initial_primary: live is {} (generation {})",
                    store.state_path().display(),
                    state::describe(&state, &names),
                    state.generation
                );
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
        let fresh_salt = salt.is_none();
        let salt = salt.unwrap_or_else(rand::random);
        if fresh_salt {
            store.save(&StateFile {
                version: state::STATE_VERSION,
                route: state::stored(&state, &names),
                since: since.clone(),
                previous: previous.map(|p| state::stored(&p, &names)),
                salt: Some(salt),
            })?;
        }
        let switchboard = Arc::new(Switchboard::new(config, state, salt));
        let admin = Admin {
            switchboard: switchboard.clone(),
            metrics,
            preview,
            store,
            names,
            min_healthy: config.health.min_healthy,
            ledger: Mutex::new(Ledger { previous, since }),
        };
        Ok((switchboard, admin))
    }

    pub fn switchboard(&self) -> &Arc<Switchboard> {
        &self.switchboard
    }

    /// Handles one command on behalf of `actor`. Blocking (changes fsync): call it off the
    /// async executor.
    pub fn handle(&self, cmd: AdminCommand, actor: &str) -> Result<Reply, AdminError> {
        let received = Instant::now();
        match cmd {
            AdminCommand::Health => Ok(Reply::Health { ok: true }),
            AdminCommand::Status => Ok(Reply::Status(self.status(&self.lock_ledger().since))),
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
            AdminCommand::Reload => Err(AdminError::NotImplemented(
                "configuration reload is not available yet; restart switchyard to apply a new \
                 config (the routing state survives a restart)"
                    .into(),
            )),
            AdminCommand::PreviewCookie { pool } => {
                self.pool(&pool)?;
                let key = self.preview.as_ref().ok_or_else(|| AdminError::Conflict {
                    code: "preview_off",
                    message: "preview is not configured; set routing.preview_token_file and \
                              restart"
                        .into(),
                })?;
                Ok(Reply::Preview(PreviewCookie {
                    cookie: format!("{PREVIEW_COOKIE}={}", key.cookie_value(&pool)),
                    pool,
                }))
            }
            AdminCommand::Flip { to, change } => {
                let to = self.pool(&to)?;
                self.change(received, actor, action::FLIP, &change, |cur, _| {
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
                self.change(received, actor, action::CANARY, &change, |cur, _| {
                    if pool_id == cur.primary {
                        return Err(AdminError::Conflict {
                            code: "pool_is_primary",
                            message: format!(
                                "{pool} is the primary pool; a canary goes to the other pool ({})",
                                self.names[other(pool_id)]
                            ),
                        });
                    }
                    Ok(RouteState {
                        canary_bp: bp,
                        ..cur
                    })
                })
            }
            AdminCommand::Promote { change } => {
                self.change(received, actor, action::PROMOTE, &change, |cur, _| {
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
            AdminCommand::Rollback { change } => self.change(
                received,
                actor,
                action::ROLLBACK,
                &change,
                |cur, ledger| match ledger.previous {
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
                },
            ),
        }
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

    /// Applies one change: `next` computes the new state from the current one.
    fn change(
        &self,
        received: Instant,
        actor: &str,
        action: &str,
        opts: &ChangeOpts,
        next: impl FnOnce(RouteState, &Ledger) -> Result<RouteState, AdminError>,
    ) -> Result<Reply, AdminError> {
        let mut ledger = self.lock_ledger();
        let cur = self.switchboard.state();
        if let Some(want) = opts.if_generation {
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
        let mut new = next(cur, &ledger)?;
        let previous = state::stored(&cur, &self.names);
        if new.primary == cur.primary && new.canary_bp == cur.canary_bp {
            return Ok(Reply::Change(Change {
                status: self.status(&ledger.since),
                previous,
                applied_us: 0,
                changed: false,
                warning: None,
            }));
        }
        self.health_gate(&new, &cur, opts)?;
        new.generation = cur.generation + 1;

        self.switchboard.store_state(new);
        let applied_us = received.elapsed().as_micros() as u64;

        let since = state::now_rfc3339();
        let file = StateFile {
            version: state::STATE_VERSION,
            route: state::stored(&new, &self.names),
            since: since.clone(),
            previous: Some(previous.clone()),
            salt: Some(self.switchboard.load().salt),
        };
        if let Err(e) = self.store.save(&file) {
            self.switchboard.store_state(cur);
            tracing::error!("{action} undone: {e}");
            return Err(AdminError::Internal(format!(
                "the change was not applied because the state could not be saved: {e}; fix the \
                 state directory (permissions, disk space) and retry"
            )));
        }
        ledger.previous = Some(cur);
        ledger.since = since.clone();
        self.metrics.record_change(action);
        if action == action::ROLLBACK {
            self.metrics.record_rollback("manual");
        }

        let entry = HistoryEntry {
            ts: since,
            generation: new.generation,
            action: action.to_string(),
            from: state::describe(&cur, &self.names),
            to: state::describe(&new, &self.names),
            actor: actor.to_string(),
            reason: opts.reason.clone(),
            result: "ok".into(),
            forced: opts.force,
            trigger: (action == action::ROLLBACK).then(|| "manual".to_string()),
            detail: None,
        };
        let warning = match self.store.append_history(&entry) {
            Ok(()) => None,
            Err(e) => {
                tracing::error!("change applied and saved, but not recorded in history: {e}");
                Some(format!(
                    "the change is applied and saved, but history could not be written: {e}"
                ))
            }
        };
        tracing::info!(
            actor,
            reason = opts.reason.as_deref().unwrap_or(""),
            "{action}: {} -> {} (generation {}, applied in {applied_us} us)",
            entry.from,
            entry.to,
            new.generation
        );
        Ok(Reply::Change(Change {
            status: self.status(&ledger.since),
            previous,
            applied_us,
            changed: true,
            warning,
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
        let table = self.switchboard.load();
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
            if healthy < self.min_healthy {
                return Err(AdminError::Conflict {
                    code: "target_not_ready",
                    message: format!(
                        "{} is not ready: {healthy} of {} backends healthy, {} needed; fix the \
                         pool, or pass force to switch anyway",
                        pool.name,
                        pool.backends.len(),
                        self.min_healthy
                    ),
                });
            }
        }
        Ok(())
    }

    /// The current status.
    fn status(&self, since: &str) -> Status {
        let table = self.switchboard.load();
        let st = table.state;
        let pools = table
            .pools
            .iter()
            .enumerate()
            .map(|(id, p)| {
                let healthy = p.healthy_count();
                let w = self.metrics.window(id).stats(STATUS_WINDOW);
                let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
                (
                    p.name.clone(),
                    PoolStatus {
                        ready: healthy >= self.min_healthy,
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
                    },
                )
            })
            .collect();
        Status {
            primary: self.names[st.primary].clone(),
            canary_pool: self.names[st.canary_pool()].clone(),
            canary_bp: st.canary_bp,
            generation: st.generation,
            since: since.to_string(),
            pools,
            rollout: None,
            guard: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> (tempfile::TempDir, Admin) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[health]\nenabled = false\n[state]\ndir = \"{}\"\n[pools.blue]\nbackends = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n\
             [pools.green]\nbackends = [\"127.0.0.1:3\"]\n",
            dir.path().display()
        );
        let config = Config::parse(&text, "t").unwrap();
        let (_sb, admin) = Admin::start(&config, Arc::new(Metrics::new(&config)), None).unwrap();
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
        let (sb, again) = Admin::start(&config, Arc::new(Metrics::new(&config)), None).unwrap();
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
}
