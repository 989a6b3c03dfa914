//! The health gate: a change that sends traffic to a pool that is not ready is refused unless
//! forced.

use super::{Admin, AdminError, ChangeOpts};
use crate::routing::RouteState;

impl Admin {
    /// Refuses a change that would send traffic to a pool that is not ready, unless forced.
    pub(super) fn health_gate(
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
