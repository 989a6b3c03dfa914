//! Start-up: the routing state restored from the state store (or the configuration), and the
//! [`Admin`] built around it.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::watch::{Watch, WatchKind};
use super::{reload, Admin, AdminParts, Ledger};
use crate::config::Config;
use crate::pools::Pool;
use crate::rollout::Rollout;
use crate::routing::{RouteState, Switchboard};
use crate::settings::ProxySettings;
use crate::state::{self, HistoryEntry, Loaded, StateFile, StoreError};
use crate::store;

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
            tls,
            faults,
            shadow,
        } = parts;
        let store = store::open(&config.state).map_err(StoreError::Unavailable)?;
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
                    store.state_location(),
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
                    store.state_location(),
                    names[initial.primary]
                );
                (initial, None, state::now_rfc3339())
            }
            Loaded::Mismatch { file_pools } => {
                tracing::warn!(
                    "state file {} names pool `{file_pools}`, which the config does not have; \
                     ignoring it and starting with {} as primary",
                    store.state_location(),
                    names[initial.primary]
                );
                (initial, None, state::now_rfc3339())
            }
            Loaded::Corrupt { error, moved_to } => {
                tracing::error!(
                    "STATE FILE UNREADABLE: {} ({error}); moved it to {} and started from the \
                     config with {} as primary — check that this is the colour you want live",
                    store.state_location(),
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
                impact: None,
            };
            if let Err(e) = store.append_history(&entry) {
                tracing::error!("cannot record the recovered state in history: {e}");
            }
        }
        let fresh_salt = salt.is_none();
        let salt = salt.unwrap_or_else(rand::random);
        if fresh_salt {
            let saved = store.save(
                &StateFile {
                    version: state::STATE_VERSION,
                    route: state::stored(&state, &names),
                    since: since.clone(),
                    previous: previous.map(|p| state::stored(&p, &names)),
                    salt: Some(salt),
                    rollout: None,
                    watch: None,
                },
                state.generation,
            );
            match saved {
                Ok(()) => {}
                // A fleet: another instance wrote the fleet's first state, or etcd is down; this
                // instance serves its own until the fleet's arrives (admin::fleet).
                Err(e @ (StoreError::Conflict { .. } | StoreError::Unavailable(_))) => {
                    tracing::warn!("starting on the configured state for now: {e}")
                }
                Err(e) => return Err(e),
            }
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
            impact: super::impact::ImpactTracker::new(metrics.clone(), &config.state.dir),
            metrics,
            notifier,
            config: ArcSwap::from_pointee(config.clone()),
            config_path,
            health,
            dns,
            tls,
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
        super::faults::restore(&admin);
        Ok((switchboard, admin))
    }
}
