//! Takes each change's "before" figures and settles the "after" ones (see [`crate::impact`]).
//!
//! Exactness: the window counts per second, so the second of the change is split by a snapshot
//! of that second's counts taken at the change: "after" is seconds `s0..=s0+span` minus that
//! snapshot. A request is counted on the side of the change it finished on.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::POOL_COUNT;
use crate::impact::{Figures, Impact, PoolImpact};
use crate::metrics::{weights, Metrics, Tally, WindowStats};
use crate::routing::{PoolId, RouteState};
use crate::state::HistoryEntry;

const IMPACT_FILE: &str = "impact.jsonl";

/// A colour's figures from the window's.
fn figures(s: &WindowStats) -> Figures {
    let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 10_000.0).round() / 10.0);
    Figures {
        requests: s.requests,
        errors: s.errors,
        error_ratio: s.error_ratio(),
        p50_ms: ms(s.p50),
        p99_ms: ms(s.p99),
    }
}

/// A line of `impact.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    generation: u64,
    impact: Impact,
}

/// A change whose "after" span has not passed yet.
#[derive(Debug, Clone)]
struct Pending {
    generation: u64,
    ids: [PoolId; 2],
    /// The second of the change, and its counts at the moment of the change, per pool.
    second: u64,
    at_change: [Tally; 2],
    span: u64,
    impact: Impact,
    /// The history entry, for the follow-up notification.
    entry: HistoryEntry,
}

/// Takes the "before" figures at each change and settles the "after" ones.
pub struct ImpactTracker {
    metrics: Arc<Metrics>,
    path: PathBuf,
    pending: Mutex<Vec<Pending>>,
}

impl ImpactTracker {
    /// Impact lines go to `impact.jsonl` in `state_dir`.
    pub fn new(metrics: Arc<Metrics>, state_dir: &std::path::Path) -> ImpactTracker {
        ImpactTracker {
            metrics,
            path: state_dir.join(IMPACT_FILE),
            pending: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a change from `cur` to `new` (recorded as `entry`): takes the "before" figures over
    /// the last `span`. A change that moves no traffic (a rollout paused) has no impact.
    pub fn begin(
        &self,
        entry: &HistoryEntry,
        cur: &RouteState,
        new: &RouteState,
        names: &[String],
        span: Duration,
    ) {
        let (was, now) = (weights(cur), weights(new));
        let Some(gained) = (0..POOL_COUNT).find(|&id| now[id] > was[id]) else {
            return;
        };
        let lost = crate::routing::other(gained);
        let span = span.as_secs().max(1);
        let (w_gained, w_lost) = (self.metrics.window(gained), self.metrics.window(lost));
        let second = w_gained.second();
        // The span before includes the change's own second up to now.
        let first = (second + 1).saturating_sub(span);
        let before = |w: &crate::metrics::Window| figures(&w.tally(first, second).stats());
        let impact = Impact {
            window_s: span,
            gained: PoolImpact {
                pool: names[gained].clone(),
                before: before(w_gained),
                after: None,
            },
            lost: PoolImpact {
                pool: names[lost].clone(),
                before: before(w_lost),
                after: None,
            },
            pending: true,
        };
        self.lock().push(Pending {
            generation: entry.generation,
            ids: [gained, lost],
            second,
            at_change: [w_gained.tally(second, second), w_lost.tally(second, second)],
            span,
            impact,
            entry: entry.clone(),
        });
    }

    /// Settles every change whose span after has passed: fills in the "after" figures, writes
    /// them to `impact.jsonl` and returns the history entries with their impact (for the
    /// follow-up notification).
    pub fn settle(&self) -> Vec<HistoryEntry> {
        let mut done = Vec::new();
        let mut pending = self.lock();
        let now = self.metrics.window(0).second();
        pending.retain(|p| {
            if now <= p.second + p.span {
                return true;
            }
            let mut impact = p.impact.clone();
            for (i, side) in [&mut impact.gained, &mut impact.lost]
                .into_iter()
                .enumerate()
            {
                let w = self.metrics.window(p.ids[i]);
                let mut t = w.tally(p.second, p.second + p.span).minus(&p.at_change[i]);
                t.seconds = p.span;
                side.after = Some(figures(&t.stats()));
            }
            impact.pending = false;
            if let Err(e) = self.append(p.generation, &impact) {
                tracing::error!(
                    "cannot record the impact of generation {} in {}: {e}",
                    p.generation,
                    self.path.display()
                );
            }
            let mut entry = p.entry.clone();
            entry.impact = Some(impact);
            done.push(entry);
            false
        });
        done
    }

    fn append(&self, generation: u64, impact: &Impact) -> io::Result<()> {
        let mut line = serde_json::to_vec(&Line {
            generation,
            impact: impact.clone(),
        })
        .expect("impact serialises");
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&line)?;
        f.sync_data()
    }

    /// Attaches to each entry its impact: settled (from `impact.jsonl`) or pending (in memory).
    pub fn annotate(&self, entries: &mut [HistoryEntry]) {
        if entries.is_empty() {
            return;
        }
        let mut known: BTreeMap<u64, Impact> = match fs::read(&self.path) {
            Ok(bytes) => bytes
                .split(|&b| b == b'\n')
                .filter_map(|l| serde_json::from_slice::<Line>(l).ok())
                .map(|l| (l.generation, l.impact))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        for p in self.lock().iter() {
            known
                .entry(p.generation)
                .or_insert_with(|| p.impact.clone());
        }
        for e in entries.iter_mut() {
            // Only the entry that made the change (a rollout's pause shares its generation).
            if e.impact.is_none() && e.from != e.to {
                e.impact = known.get(&e.generation).cloned();
            }
        }
    }
}
