//! The delivery report: the DORA figures a team tracks, computed from history.
//!
//! Definitions (history only knows what switchyard did, so these are its view of them):
//! - A **deploy** is a change that gives traffic to a colour that had none: a flip, or the start
//!   of a canary or a rollout. Raising a canary's weight, promoting it and rolling back are not
//!   deploys (they continue or undo one).
//! - A deploy **failed** when a rollback (by hand or by the guard) undid it before the next
//!   deploy and within the failure window (default one hour). The **change failure rate** is
//!   failed deploys over deploys.
//! - **Time to restore** runs from a failed deploy (when users started getting the bad colour)
//!   to the rollback that took them off it (the guard's breach, or the hand rollback).
//! - **Lead time between flips** is the time between consecutive deploys.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::state::HistoryEntry;

/// How long after a deploy a rollback still counts as its failure.
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(3600);

/// The period a report covers when none is asked for.
pub const DEFAULT_SINCE: Duration = Duration::from_secs(30 * 86_400);

/// `GET /v1/report`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// The period covered, RFC 3339, and its length in days.
    pub since: String,
    pub until: String,
    pub days: f64,
    pub deploys: u64,
    pub deploys_per_day: f64,
    pub failed_deploys: u64,
    /// Failed deploys over deploys (none without deploys).
    pub change_failure_rate: Option<f64>,
    pub rollbacks: Rollbacks,
    pub time_to_restore_s: Option<Spread>,
    pub lead_time_s: Option<Spread>,
    pub failure_window_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rollbacks {
    pub manual: u64,
    pub guard: u64,
}

/// Median, mean and maximum of a set of durations, in seconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub count: usize,
    pub median: f64,
    pub mean: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Option<Spread> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            count: n,
            median,
            mean: v.iter().sum::<f64>() / n as f64,
            max: v[n - 1],
        })
    }
}

/// The colours with traffic in a history description: `blue`, `blue + green 5%`.
fn with_traffic(route: &str) -> Vec<&str> {
    match route.split_once(" + ") {
        Some((primary, canary)) => {
            let pool = canary.rsplit_once(' ').map_or(canary, |(p, _)| p);
            vec![primary, pool]
        }
        None => vec![route],
    }
}

/// Whether `e` is a deploy (see the module doc).
pub fn is_deploy(e: &HistoryEntry) -> bool {
    if e.result != "ok" || e.action == "rollback" || e.action == "recovered" || e.from == "?" {
        return false;
    }
    let before = with_traffic(&e.from);
    with_traffic(&e.to).iter().any(|p| !before.contains(p))
}

/// Computes the report over entries (any order) from `since` to `until`.
pub fn compute(
    entries: &[HistoryEntry],
    since: SystemTime,
    until: SystemTime,
    failure_window: Duration,
) -> Report {
    let mut timed: Vec<(SystemTime, &HistoryEntry)> = entries
        .iter()
        .filter_map(|e| Some((humantime::parse_rfc3339_weak(&e.ts).ok()?, e)))
        .filter(|(t, _)| *t >= since && *t <= until)
        .collect();
    timed.sort_by_key(|(t, e)| (*t, e.generation));
    let secs = |a: SystemTime, b: SystemTime| b.duration_since(a).unwrap_or_default().as_secs_f64();

    let mut deploys = Vec::new();
    let mut failed = 0u64;
    let mut restores = Vec::new();
    let mut rollbacks = Rollbacks {
        manual: 0,
        guard: 0,
    };
    // The latest deploy not yet undone or followed by another.
    let mut open: Option<SystemTime> = None;
    for (t, e) in &timed {
        if e.action == "rollback" && e.result == "ok" {
            if e.trigger.as_deref() == Some("guard") || e.actor == "guard" {
                rollbacks.guard += 1;
            } else {
                rollbacks.manual += 1;
            }
            if let Some(d) = open.take() {
                if t.duration_since(d).unwrap_or_default() <= failure_window {
                    failed += 1;
                    restores.push(secs(d, *t));
                }
            }
        } else if is_deploy(e) {
            deploys.push(*t);
            open = Some(*t);
        }
    }
    let days = (secs(since, until) / 86_400.0).max(f64::MIN_POSITIVE);
    let n = deploys.len() as u64;
    Report {
        since: humantime::format_rfc3339_seconds(since).to_string(),
        until: humantime::format_rfc3339_seconds(until).to_string(),
        days: (days * 1000.0).round() / 1000.0,
        deploys: n,
        deploys_per_day: n as f64 / days,
        failed_deploys: failed,
        change_failure_rate: (n > 0).then(|| failed as f64 / n as f64),
        rollbacks,
        time_to_restore_s: Spread::of(restores),
        lead_time_s: Spread::of(deploys.windows(2).map(|w| secs(w[0], w[1])).collect()),
        failure_window_s: failure_window.as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: SystemTime, gen: u64, action: &str, from: &str, to: &str) -> HistoryEntry {
        HistoryEntry {
            ts: humantime::format_rfc3339_millis(at).to_string(),
            generation: gen,
            action: action.into(),
            from: from.into(),
            to: to.into(),
            actor: "uid:1000".into(),
            reason: None,
            result: "ok".into(),
            forced: false,
            trigger: None,
            detail: None,
            impact: None,
        }
    }

    #[test]
    fn deploys_are_changes_that_give_a_colour_traffic() {
        let t = SystemTime::now();
        assert!(is_deploy(&entry(t, 1, "flip", "blue", "green")));
        assert!(is_deploy(&entry(t, 1, "canary", "blue", "blue + green 5%")));
        assert!(is_deploy(&entry(
            t,
            1,
            "rollout",
            "blue",
            "blue + green 1%"
        )));
        assert!(!is_deploy(&entry(
            t,
            1,
            "rollout",
            "blue + green 1%",
            "blue + green 5%"
        )));
        assert!(!is_deploy(&entry(
            t,
            1,
            "promote",
            "blue + green 5%",
            "green"
        )));
        assert!(!is_deploy(&entry(t, 1, "rollback", "green", "blue")));
        assert!(!is_deploy(&entry(t, 1, "reload", "blue", "blue")));
    }

    #[test]
    fn figures_from_a_known_history() {
        let now = SystemTime::now();
        let h = |hours: f64| now - Duration::from_secs_f64(hours * 3600.0);
        let mut guard_rb = entry(h(47.9), 3, "rollback", "green", "blue");
        guard_rb.actor = "guard".into();
        guard_rb.trigger = Some("guard".into());
        let mut manual_rb = entry(h(23.5), 6, "rollback", "blue + green 5%", "blue");
        manual_rb.trigger = Some("manual".into());
        let entries = vec![
            // Outside the period: ignored.
            entry(h(24.0 * 40.0), 1, "flip", "blue", "green"),
            entry(h(48.0), 2, "flip", "blue", "green"), // deploy, failed after 6 min
            guard_rb,
            entry(h(36.0), 4, "flip", "blue", "green"), // deploy, fine
            entry(h(24.0), 5, "canary", "green", "green + blue 5%"), // deploy, failed after 30 min
            manual_rb,
            entry(h(12.0), 7, "rollout", "blue", "blue + green 1%"), // deploy
            entry(h(11.0), 8, "rollout", "blue + green 1%", "blue + green 50%"),
            entry(h(10.0), 9, "promote", "blue + green 50%", "green"),
            // A rollback more than an hour after the deploy is not its failure.
            entry(h(8.0), 10, "rollback", "green", "blue"),
        ];
        let r = compute(&entries, h(24.0 * 30.0), now, DEFAULT_FAILURE_WINDOW);
        assert_eq!(r.deploys, 4);
        assert!(
            (r.deploys_per_day - 4.0 / 30.0).abs() < 1e-9,
            "{}",
            r.deploys_per_day
        );
        assert_eq!(r.failed_deploys, 2);
        assert_eq!(r.change_failure_rate, Some(0.5));
        assert_eq!(
            r.rollbacks,
            Rollbacks {
                manual: 2,
                guard: 1
            }
        );
        let ttr = r.time_to_restore_s.unwrap();
        assert_eq!(ttr.count, 2);
        assert!(
            (ttr.median - (6.0 * 60.0 + 30.0 * 60.0) / 2.0).abs() < 0.01,
            "{ttr:?}"
        );
        assert!((ttr.max - 30.0 * 60.0).abs() < 0.01, "{ttr:?}");
        let lead = r.lead_time_s.unwrap();
        // 48h→36h, 36h→24h, 24h→12h: 12 hours each.
        assert_eq!(lead.count, 3);
        assert!((lead.median - 12.0 * 3600.0).abs() < 0.01, "{lead:?}");
    }

    #[test]
    fn an_empty_history_has_no_rates() {
        let now = SystemTime::now();
        let r = compute(&[], now - DEFAULT_SINCE, now, DEFAULT_FAILURE_WINDOW);
        assert_eq!((r.deploys, r.change_failure_rate), (0, None));
        assert!(r.time_to_restore_s.is_none() && r.lead_time_s.is_none());
        assert!((r.days - 30.0).abs() < 1e-9);
    }
}
