//! What each change did: for the colour that gained traffic and the one that lost it, the error
//! ratio, p50, p99 and request count over the guard window before the change and over the same
//! span after it.
//!
//! The "before" figures are taken from the metrics window at the moment of the change; the
//! "after" ones once the span has passed (the guard tick settles them), and are then written to
//! `impact.jsonl` next to `history.jsonl` (which stays append-only: a history line is never
//! rewritten) and announced to the webhooks as an `impact` event. Reading history joins the two
//! by generation; a change whose span has not passed yet shows its "before" figures and
//! `pending: true`.
//!
//! This module holds the figures and how they read; `admin::impact` takes and settles them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One colour's figures over a span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    pub error_ratio: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Figures {
    /// `0.1% errors, p50 3 ms, p99 120 ms, 5000 requests`.
    pub fn summary(&self) -> String {
        if self.requests == 0 {
            return "no requests".into();
        }
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        format!(
            "{} errors, p50 {}, p99 {}, {} requests",
            percent(self.error_ratio),
            ms(self.p50_ms),
            ms(self.p99_ms),
            self.requests
        )
    }
}

/// `0.1%`, `12.5%`, `0%`.
fn percent(ratio: f64) -> String {
    let p = (ratio * 1000.0).round() / 10.0;
    format!("{p}%")
}

/// A colour's figures before the change and after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolImpact {
    pub pool: String,
    pub before: Figures,
    /// `None` until the span after the change has passed.
    pub after: Option<Figures>,
}

/// What a change did, attached to its history entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Impact {
    /// The span compared on each side of the change (the guard window).
    pub window_s: u64,
    /// The colour that gained traffic, and the one that lost it.
    pub gained: PoolImpact,
    pub lost: PoolImpact,
    /// The span after the change has not passed yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

impl Impact {
    /// One line: `green after 30s: 0.1% errors, p99 120 ms (blue before: 0.1%, p99 118 ms)`.
    pub fn summary(&self) -> String {
        let short = |f: &Figures| {
            if f.requests == 0 {
                "no requests".to_string()
            } else {
                format!(
                    "{} errors, p99 {}",
                    percent(f.error_ratio),
                    f.p99_ms.map_or("-".into(), |v| format!("{v} ms"))
                )
            }
        };
        let span = humantime::format_duration(Duration::from_secs(self.window_s));
        match &self.gained.after {
            Some(after) => format!(
                "{} after {span}: {} over {} requests ({} before: {})",
                self.gained.pool,
                short(after),
                after.requests,
                self.lost.pool,
                short(&self.lost.before)
            ),
            None => format!(
                "{} before: {}; {} before: {}; figures after in {span}",
                self.lost.pool,
                short(&self.lost.before),
                self.gained.pool,
                short(&self.gained.before),
            ),
        }
    }
}
