//! The guard: watches the new colour after a change and rolls back when it misbehaves.
//!
//! While a canary runs, and for `watch_after_flip` after a flip or promotion, the new colour's
//! figures over a sliding `window` (the same lock-free window `status` reads, so the guard adds
//! nothing to the request path) are judged once it has `min_requests`: an error ratio (5xx and
//! upstream errors) above `max_error_ratio`, or a p99 above `max_p99`, is a breach, and a breach
//! rolls back at once. The judgement itself, [`judge`], is a pure function; the admin handler's
//! guard loop (`admin::watch`) ticks it and makes the rollback.

use std::time::Duration;

use serde::Serialize;

use crate::config::GuardConfig;
use crate::metrics::WindowStats;

/// How often the guard judges and rollouts advance: often enough that a breach is acted on well
/// within a second, rarely enough to cost nothing.
pub const TICK: Duration = Duration::from_millis(100);

/// The guard's view of a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Fewer than `min_requests` so far: no judgement yet.
    Waiting {
        requests: u64,
        min_requests: u64,
    },
    Healthy,
    Breach {
        reason: String,
    },
}

/// Judges `stats` against the thresholds in `cfg`.
pub fn judge(stats: &WindowStats, cfg: &GuardConfig) -> Verdict {
    if stats.requests < cfg.min_requests.max(1) {
        return Verdict::Waiting {
            requests: stats.requests,
            min_requests: cfg.min_requests,
        };
    }
    let ratio = stats.error_ratio();
    if ratio > cfg.max_error_ratio {
        return Verdict::Breach {
            reason: format!(
                "error ratio {:.1}% > {:.1}% ({} of {} requests)",
                ratio * 100.0,
                cfg.max_error_ratio * 100.0,
                stats.errors,
                stats.requests
            ),
        };
    }
    if let (Some(max), Some(p99)) = (cfg.max_p99, stats.p99) {
        if p99 > max {
            return Verdict::Breach {
                reason: format!(
                    "p99 {:.0} ms > {:.0} ms over {} requests",
                    p99.as_secs_f64() * 1000.0,
                    max.as_secs_f64() * 1000.0,
                    stats.requests
                ),
            };
        }
    }
    Verdict::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GuardConfig {
        GuardConfig {
            enabled: true,
            window: Duration::from_secs(30),
            min_requests: 50,
            max_error_ratio: 0.05,
            max_p99: Some(Duration::from_millis(500)),
            watch_after_flip: Duration::from_secs(300),
        }
    }

    fn stats(requests: u64, errors: u64, p99_ms: u64) -> WindowStats {
        WindowStats {
            requests,
            errors,
            seconds: 10,
            p50: Some(Duration::from_millis(1)),
            p99: Some(Duration::from_millis(p99_ms)),
        }
    }

    #[test]
    fn no_judgement_before_min_requests() {
        assert!(matches!(
            judge(&stats(49, 49, 9000), &cfg()),
            Verdict::Waiting { .. }
        ));
    }

    #[test]
    fn the_error_ratio_is_judged_strictly_above_the_threshold() {
        assert_eq!(judge(&stats(100, 5, 10), &cfg()), Verdict::Healthy);
        let Verdict::Breach { reason } = judge(&stats(100, 6, 10), &cfg()) else {
            panic!("6% must breach 5%");
        };
        assert_eq!(reason, "error ratio 6.0% > 5.0% (6 of 100 requests)");
    }

    #[test]
    fn p99_is_judged_when_configured() {
        assert!(matches!(
            judge(&stats(100, 0, 600), &cfg()),
            Verdict::Breach { .. }
        ));
        let mut c = cfg();
        c.max_p99 = None;
        assert_eq!(judge(&stats(100, 0, 600), &c), Verdict::Healthy);
    }
}
