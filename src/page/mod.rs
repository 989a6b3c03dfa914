//! The status page: one read-only web page for the whole team, served on the metrics listener.
//!
//! `GET /` (or `/status`) is a self-contained HTML page (its CSS and JavaScript are compiled into
//! the binary, nothing is fetched from anywhere else); it polls `GET /status.json` every second
//! and redraws: which colour is live, the canary weight, a rollout and its step, the guard's
//! verdict, whether the pipeline is clear, per-pool figures with a 15-minute chart, and the recent
//! history with each change's impact.
//!
//! Nothing on it is secret: it shows what `ctl status` and `ctl history` show to a read token
//! (no token, no preview cookie, no signing secret ever reaches it), so it needs no token, like
//! `/metrics` next to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde::Serialize;

use crate::admin::{Admin, AdminCommand, Reply, Status};
use crate::httpd::{self, Pages};
use crate::metrics::{Metrics, CHART_SPAN};
use crate::state::HistoryEntry;

/// The page itself: HTML, CSS and JavaScript in one file, no framework.
const INDEX_HTML: &str = include_str!("index.html");

/// How many history entries the page lists.
const PAGE_HISTORY: usize = 15;

/// Width of one chart point: 60 points over the 15 minutes.
const CHART_STEP_S: u64 = 15;

/// What `/status.json` returns.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub status: Status,
    pub pipeline: Pipeline,
    pub chart: Chart,
    pub history: Vec<HistoryEntry>,
}

/// "Can I deploy now?": clear, or what is in progress.
#[derive(Debug, Serialize, PartialEq)]
pub struct Pipeline {
    pub clear: bool,
    pub in_progress: Vec<String>,
}

/// Per-pool figures over the last 15 minutes, oldest point first.
#[derive(Debug, Serialize)]
pub struct Chart {
    pub step_s: u64,
    pub pools: BTreeMap<String, Vec<Point>>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Point {
    pub rps: f64,
    pub error_ratio: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Serves the page and its snapshot.
pub struct StatusPage {
    admin: Arc<Admin>,
    metrics: Arc<Metrics>,
}

impl StatusPage {
    pub fn new(admin: Arc<Admin>, metrics: Arc<Metrics>) -> StatusPage {
        StatusPage { admin, metrics }
    }

    /// The snapshot the page renders. Blocking (reads history): call it off the executor.
    pub fn snapshot(&self) -> Result<Snapshot, String> {
        let status = match self.admin.handle(AdminCommand::Status, "status page") {
            Ok(Reply::Status(s)) => s,
            Ok(other) => return Err(format!("unexpected reply {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        let history = match self.admin.handle(
            AdminCommand::History {
                limit: PAGE_HISTORY,
            },
            "status page",
        ) {
            Ok(Reply::History(h)) => h,
            Ok(other) => return Err(format!("unexpected reply {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        let chart = Chart {
            step_s: CHART_STEP_S,
            pools: status
                .pools
                .keys()
                .filter_map(|name| {
                    let id = self.admin.pool_id(name)?;
                    Some((name.clone(), chart(self.metrics.window(id))))
                })
                .collect(),
        };
        Ok(Snapshot {
            pipeline: pipeline(&status),
            status,
            chart,
            history,
        })
    }
}

/// 60 points of 15 s over the last 15 completed minutes (the current, partial second left out).
fn chart(w: &crate::metrics::Window) -> Vec<Point> {
    let last = w.second().saturating_sub(1);
    let n = CHART_SPAN.as_secs() / CHART_STEP_S;
    let ms =
        |d: Option<std::time::Duration>| d.map(|d| (d.as_secs_f64() * 10_000.0).round() / 10.0);
    (0..n)
        .rev()
        .map(|i| {
            // A point from before the window's clock started is empty.
            let s = match last.checked_sub(i * CHART_STEP_S) {
                Some(end) => w.tally((end + 1).saturating_sub(CHART_STEP_S), end).stats(),
                None => crate::metrics::WindowStats::default(),
            };
            Point {
                rps: s.requests as f64 / CHART_STEP_S as f64,
                error_ratio: s.error_ratio(),
                p50_ms: ms(s.p50),
                p99_ms: ms(s.p99),
            }
        })
        .collect()
}

/// `blue`, or `blue + green 5%`.
pub fn route_line(s: &Status) -> String {
    if s.canary_bp == 0 {
        s.primary.clone()
    } else {
        format!(
            "{} + {} {}",
            s.primary,
            s.canary_pool,
            crate::state::format_percent(s.canary_bp)
        )
    }
}

/// Whether a deploy may start now: not during a rollout, a canary, a guard watch, an upgrade or
/// a rehearsal (faults, shadow).
pub fn pipeline(s: &Status) -> Pipeline {
    let mut busy = Vec::new();
    if s.upgrading {
        busy.push("a binary upgrade is handing over".to_string());
    }
    if let Some(r) = &s.rollout {
        busy.push(format!(
            "rollout to {}: step {} of {} ({}%){}",
            r.to,
            r.step,
            r.of,
            r.percent,
            if r.paused { ", paused" } else { "" }
        ));
    } else if s.canary_bp > 0 {
        busy.push(format!(
            "canary: {} takes {}",
            s.canary_pool,
            crate::state::format_percent(s.canary_bp)
        ));
    }
    if let Some(w) = &s.guard.watching {
        let kind = match w.kind {
            crate::admin::WatchKind::Flip => "flip",
            crate::admin::WatchKind::Canary => "canary",
        };
        busy.push(match w.ends_in_s {
            Some(left) => format!("guard watching {} after a {kind} ({left:.0}s left)", w.pool),
            None => format!("guard watching the {kind} on {}", w.pool),
        });
    }
    // A rehearsal is in progress too: a deploy now would be judged with faults injected, or
    // flip to a colour whose comparison is not finished.
    if let Some(f) = &s.faults {
        busy.push(format!(
            "fault injection on {} ({:.0}s left)",
            f.summary, f.ends_in_s
        ));
    }
    if let Some(sh) = s.shadow.as_ref().filter(|sh| sh.active) {
        busy.push(format!(
            "shadow: {}% of {}'s requests copied to {}{}",
            sh.percent,
            sh.live,
            sh.pool,
            sh.ends_in_s
                .map(|left| format!(" ({left:.0}s left)"))
                .unwrap_or_default()
        ));
    }
    Pipeline {
        clear: busy.is_empty(),
        in_progress: busy,
    }
}

impl Pages for StatusPage {
    fn get(&self, path: &str) -> Option<Response<Full<Bytes>>> {
        match path {
            "/" | "/status" => {
                let mut r = httpd::text(200, INDEX_HTML);
                r.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
                );
                // The page only talks to this origin and runs no code but its own.
                r.headers_mut().insert(
                    "content-security-policy",
                    hyper::header::HeaderValue::from_static(
                        "default-src 'none'; script-src 'unsafe-inline'; style-src \
                         'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
                    ),
                );
                Some(r)
            }
            "/status.json" => Some(match self.snapshot() {
                Ok(s) => {
                    let mut r = httpd::json(200, serde_json::to_vec(&s).expect("serialises"));
                    r.headers_mut().insert(
                        "cache-control",
                        hyper::header::HeaderValue::from_static("no-store"),
                    );
                    r
                }
                Err(e) => httpd::text(500, format!("cannot build the status: {e}\n")),
            }),
            _ => None,
        }
    }
}
