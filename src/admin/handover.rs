//! The admin side of a binary upgrade (`crate::upgrade` orchestrates): freezing changes while
//! the sockets are handed over, and the new process adopting the state the old one saved.

use std::sync::atomic::Ordering;

use super::{Admin, AdminError};
use crate::state::{self, Loaded};

impl Admin {
    // --- binary upgrade (upgrade.rs): freeze, unfreeze, and the state read after a hand-over ---

    /// Stops every change (409 `upgrade_in_progress`) and the guard's and rollouts' ticks. Taken
    /// under the change lock, so a change already under way finishes (and is saved) first.
    pub fn freeze(&self) {
        let _ledger = self.lock_ledger();
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Lifts [`Admin::freeze`] after an upgrade that did not happen.
    pub fn unfreeze(&self) {
        let _ledger = self.lock_ledger();
        self.frozen.store(false, Ordering::SeqCst);
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    /// Refuses a change while the binary is being upgraded (the new process owns the state from
    /// the hand-over on). Changes and reloads call it under the change lock.
    pub(super) fn refuse_while_upgrading(&self) -> Result<(), AdminError> {
        if self.is_frozen() {
            return Err(AdminError::Conflict {
                code: "upgrade_in_progress",
                message: "a binary upgrade is handing over to a new process; changes are \
                          refused until it is done (retry in a few seconds: the new process \
                          takes them)"
                    .into(),
            });
        }
        Ok(())
    }

    /// After an upgrade hand-over: takes the routing state, rollback target, rollout and
    /// canary watch from state.json again. The old process froze before this process was
    /// started, so the file is final; reading it after the hand-over rather than only at build
    /// time makes sure of it. A file that cannot be read keeps what build read.
    pub fn adopt_saved_state(&self) {
        let mut ledger = self.lock_ledger();
        let Loaded::Valid {
            state,
            previous,
            since,
            rollout,
            watch,
            ..
        } = self.store.load(&self.names)
        else {
            tracing::warn!("after the hand-over, state.json could not be read again; keeping the state read at start");
            return;
        };
        if state != self.switchboard.state() {
            tracing::info!(
                "state changed during the hand-over: now {} (generation {})",
                state::describe(&state, &self.names),
                state.generation
            );
        }
        self.switchboard.store_state(state);
        self.adopt(&mut ledger, state, previous, since, rollout, watch);
    }
}
