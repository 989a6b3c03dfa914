//! What the transparency features read from the admin handler: each change's impact settled and
//! announced, the delivery report (and its gauges), pool names for the status page.

use std::time::{Duration, SystemTime};

use super::{Admin, AdminError};
use crate::metrics::ReportFigures;
use crate::notify::Event;
use crate::report::{self, Report};
use crate::routing::PoolId;

/// The period the report gauges on `/metrics` cover.
const GAUGE_PERIOD: Duration = report::DEFAULT_SINCE;

impl Admin {
    /// The id of the pool called `name`.
    pub fn pool_id(&self, name: &str) -> Option<PoolId> {
        self.names.iter().position(|n| n == name)
    }

    /// Fills in the "after" figures of changes whose span has passed, and sends each to the
    /// webhooks as an `impact` event.
    pub(super) fn settle_impact(&self) {
        for entry in self.impact.settle() {
            self.notifier.send(Event::new("impact", entry));
        }
    }

    /// The delivery report over the last `since`.
    pub(super) fn report(&self, since: Duration) -> Result<Report, AdminError> {
        let history = self.store.read_history(usize::MAX).map_err(|e| {
            AdminError::Internal(format!(
                "cannot read {}: {e}",
                self.store.history_location()
            ))
        })?;
        let now = SystemTime::now();
        let from = now.checked_sub(since).unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(report::compute(
            &history,
            from,
            now,
            report::DEFAULT_FAILURE_WINDOW,
        ))
    }

    /// Recomputes the report gauges (after each change, and at start).
    pub fn refresh_report_metrics(&self) {
        match self.report(GAUGE_PERIOD) {
            Ok(r) => self.metrics.set_report(ReportFigures {
                deploys_per_day: r.deploys_per_day,
                change_failure_ratio: r.change_failure_rate.unwrap_or(0.0),
                time_to_restore_s: r.time_to_restore_s.as_ref().map_or(0.0, |s| s.median),
                lead_time_s: r.lead_time_s.as_ref().map_or(0.0, |s| s.median),
            }),
            Err(e) => tracing::warn!("report gauges not updated: {e}"),
        }
    }
}
