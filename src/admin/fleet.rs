//! The fleet side of the control plane: a change another instance made (it arrives from the
//! store's watch, `store::etcd`) is applied through the same swap as a local one, minus what the
//! instance that made it already did (the durable write, history, webhooks). Then the store
//! publishes the generation this instance serves.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::watch::{Watch, WatchKind};
use super::{Admin, Ledger};
use crate::rollout::Rollout;
use crate::state::{self, Loaded, StateFile};

impl Admin {
    /// Applies the fleet's state `file` if it is newer than what this instance serves (or the
    /// same generation with another salt or route: two instances that started the fleet at
    /// once), then reports what this instance serves.
    pub fn apply_remote(&self, file: &StateFile) {
        let mut ledger = self.lock_ledger();
        let text = serde_json::to_string(file).expect("state serialises");
        let loaded = match state::check(&text, &self.names) {
            Ok(l) => l,
            Err(why) => {
                tracing::error!("the fleet's state is unusable ({why}); keeping the current one");
                return;
            }
        };
        let Loaded::Valid {
            state: new,
            previous,
            since,
            salt,
            rollout,
            watch,
        } = loaded
        else {
            tracing::error!(
                "the fleet's state names pool `{}`, which this instance's config does not have; \
                 keeping the current state",
                file.route.primary
            );
            return;
        };
        let table = self.switchboard.load_full();
        let cur = table.state;
        let salt = salt.unwrap_or(table.salt);
        let same = new == cur && salt == table.salt;
        if new.generation < cur.generation || same {
            self.store.applied(file);
            return;
        }
        self.switchboard.store_shared(new, salt);
        self.adopt(&mut ledger, new, previous, since, rollout, watch);
        tracing::info!(
            "fleet change applied: {} -> {} (generation {})",
            state::describe(&cur, &self.names),
            state::describe(&new, &self.names),
            new.generation
        );
        self.store.applied(file);
    }

    /// Takes the bookkeeping that goes with a state saved elsewhere (another instance, or the
    /// process this one took over from): the rollback target, the rollout and the guard's watch.
    pub(super) fn adopt(
        &self,
        ledger: &mut Ledger,
        state: crate::routing::RouteState,
        previous: Option<crate::routing::RouteState>,
        since: String,
        rollout: Option<crate::rollout::RolloutFile>,
        watch: Option<crate::state::WatchFile>,
    ) {
        let now = Instant::now();
        ledger.previous = previous;
        ledger.since = since;
        ledger.rollout = rollout.and_then(|r| Rollout::from_file(&r, &self.names, now));
        if let Some(w) = watch.and_then(|w| Watch::from_file(&w, &self.names, now)) {
            ledger.watch = Some(w);
        } else if state.canary_bp == 0 {
            ledger.watch = None;
        } else if ledger.watch.is_none_or(|w| w.pool != state.canary_pool()) {
            ledger.watch = Some(Watch {
                pool: state.canary_pool(),
                kind: WatchKind::Canary,
                since: now,
                until: None,
            });
        }
    }

    /// Publishes whether the state store answers (`switchyard_state_backend_up`).
    pub fn note_backend(&self) {
        self.metrics
            .state_backend_up
            .set(i64::from(self.store.backend_up()));
    }
}

/// Applies the fleet's changes as they arrive from the store's watch (only with a shared
/// store).
pub struct FleetService {
    admin: Arc<Admin>,
    changes: tokio::sync::watch::Receiver<Option<StateFile>>,
}

impl FleetService {
    /// `None` for a store that is not shared.
    pub fn new(admin: Arc<Admin>) -> Option<FleetService> {
        let changes = admin.store.changes()?;
        Some(FleetService { admin, changes })
    }
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut changes = self.changes.clone();
        // The state read before this service started counts too.
        changes.mark_changed();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let Some(file) = changes.borrow_and_update().clone() else { continue };
                    let admin = self.admin.clone();
                    // Applying saves the local copy (fsync): off the async workers.
                    let _ = tokio::task::spawn_blocking(move || admin.apply_remote(&file)).await;
                }
                _ = tick.tick() => self.admin.note_backend(),
            }
        }
    }
}
