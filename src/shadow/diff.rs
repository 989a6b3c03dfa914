//! Comparing a live answer with its shadow copy's, and the report that adds the comparisons up.
//!
//! The comparison is pure ([`compare`]): status class always, the body when configured (byte
//! for byte, or as JSON without the ignored fields). The [`Report`] groups pairs by route (a
//! configured pattern, or the method and first path segment), counts mismatches, keeps latency
//! histograms for p50/p99 live vs. shadow and a few sample mismatches. Its size is bounded
//! whatever the traffic: at most [`MAX_ROUTES`] routes, [`MAX_SAMPLES`] samples each, fixed
//! histograms; the rest is counted under [`OTHER_ROUTE`].
//!
//! Only the shadow worker writes to a report (after the client has its answer); the request
//! path never touches it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::config::CompareBody;
use crate::metrics::DURATION_BUCKETS;

/// Most routes a report keeps apart; pairs on further routes are added up under [`OTHER_ROUTE`].
pub const MAX_ROUTES: usize = 100;
/// The route that takes pairs beyond [`MAX_ROUTES`].
pub const OTHER_ROUTE: &str = "(other routes)";
/// Sample mismatches kept per route: the first ones, which are the ones to read.
pub const MAX_SAMPLES: usize = 5;
/// Bytes of each body kept in a sample.
const SAMPLE_BODY: usize = 512;
/// Characters of the path kept in a sample.
const SAMPLE_PATH: usize = 200;

/// What a comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Match,
    /// Different status classes (200 vs. 500; 200 vs. 204 is the same class).
    Status,
    /// Same class, different body; the first difference found, when known (a JSON path).
    Body(Option<String>),
}

/// How bodies are compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub body: CompareBody,
    pub ignore_fields: Vec<String>,
}

/// One live answer and its shadow's. A body is `None` when it was over `max_body` (not compared).
#[derive(Debug)]
pub struct Pair<'a> {
    pub live_status: u16,
    pub shadow_status: u16,
    pub live_body: Option<&'a [u8]>,
    pub shadow_body: Option<&'a [u8]>,
}

/// Compares a pair: status class first, then the body if configured and both were kept.
pub fn compare(how: &Comparison, pair: &Pair<'_>) -> Verdict {
    if pair.live_status / 100 != pair.shadow_status / 100 {
        return Verdict::Status;
    }
    let (Some(live), Some(shadow)) = (pair.live_body, pair.shadow_body) else {
        return Verdict::Match;
    };
    match how.body {
        CompareBody::None => Verdict::Match,
        CompareBody::Exact => {
            if live == shadow {
                Verdict::Match
            } else {
                Verdict::Body(None)
            }
        }
        CompareBody::Json => {
            match (
                serde_json::from_slice::<Value>(live),
                serde_json::from_slice::<Value>(shadow),
            ) {
                (Ok(a), Ok(b)) => match first_difference(&a, &b, &how.ignore_fields, "") {
                    None => Verdict::Match,
                    Some(at) => Verdict::Body(Some(at)),
                },
                // Not JSON (an error page, say): compared as bytes.
                _ if live == shadow => Verdict::Match,
                _ => Verdict::Body(None),
            }
        }
    }
}

/// Where two JSON values first differ (`$.user.name`, `$.items[2]`), ignoring object fields
/// named in `ignore` at any depth; `None` when they are equal.
pub fn first_difference(a: &Value, b: &Value, ignore: &[String], at: &str) -> Option<String> {
    let here = || {
        if at.is_empty() {
            "$".to_string()
        } else {
            format!("${at}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                if ignore.iter().any(|i| i == k) {
                    continue;
                }
                let path = format!("{at}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => {
                        if let Some(d) = first_difference(v, w, ignore, &path) {
                            return Some(d);
                        }
                    }
                    _ => return Some(format!("${path}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                if let Some(d) = first_difference(v, w, ignore, &format!("{at}[{i}]")) {
                    return Some(d);
                }
            }
            (x.len() != y.len()).then(here)
        }
        _ => (a != b).then(here),
    }
}

/// The route a request is reported under: `METHOD pattern` for the first configured pattern
/// that matches its path, else `METHOD /first-segment` (`GET /` for the root).
pub fn route_of(patterns: &[String], method: &str, path: &str) -> String {
    for p in patterns {
        if matches(p, path) {
            return format!("{method} {p}");
        }
    }
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    format!("{method} /{first}")
}

/// Whether `path` matches `pattern`: segments equal, `*` any one segment, a trailing `**` any
/// rest (including none).
fn matches(pattern: &str, path: &str) -> bool {
    let mut want = pattern.trim_start_matches('/').split('/');
    let mut have = path.trim_start_matches('/').split('/');
    loop {
        match (want.next(), have.next()) {
            (Some("**"), _) => return true,
            (Some("*"), Some(_)) => {}
            (Some(w), Some(h)) if w == h => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// One sample mismatch, as the report shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    pub ts: String,
    pub method: String,
    pub path: String,
    /// `status` or `body`.
    pub kind: &'static str,
    pub live_status: u16,
    pub shadow_status: u16,
    /// Where the JSON bodies first differ, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_difference: Option<String>,
    /// The start of each body (lossy UTF-8), to see the difference without a second tool.
    pub live_body: String,
    pub shadow_body: String,
}

/// A latency histogram over [`DURATION_BUCKETS`] (plus one bucket for anything longer).
#[derive(Debug, Clone)]
struct Latencies([u64; DURATION_BUCKETS.len() + 1]);

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies([0; DURATION_BUCKETS.len() + 1])
    }
}

impl Latencies {
    fn record(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.0[i] += 1;
    }

    /// The upper bound of the bucket holding quantile `q`, in milliseconds (the last bound for
    /// the overflow bucket); `None` when empty.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.0.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let bound = DURATION_BUCKETS
                    .get(i)
                    .or(DURATION_BUCKETS.last())
                    .copied()
                    .unwrap_or(0.0);
                return Some(bound * 1000.0);
            }
        }
        None
    }
}

#[derive(Debug, Clone, Default)]
struct RouteStats {
    mirrored: u64,
    failed: u64,
    status_mismatches: u64,
    body_mismatches: u64,
    live: Latencies,
    shadow: Latencies,
    samples: VecDeque<Sample>,
}

/// One route of the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteReport {
    pub route: String,
    /// Copies the shadow colour answered (and were compared).
    pub mirrored: u64,
    /// Copies that failed or timed out at the shadow colour.
    pub failed: u64,
    pub status_mismatches: u64,
    pub body_mismatches: u64,
    /// (mismatches + failed) / (mirrored + failed).
    pub mismatch_ratio: f64,
    pub live_p50_ms: Option<f64>,
    pub live_p99_ms: Option<f64>,
    pub shadow_p50_ms: Option<f64>,
    pub shadow_p99_ms: Option<f64>,
    pub samples: Vec<Sample>,
}

/// The totals over every route.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct Totals {
    pub mirrored: u64,
    pub failed: u64,
    pub status_mismatches: u64,
    pub body_mismatches: u64,
    pub mismatch_ratio: f64,
}

fn ratio(bad: u64, all: u64) -> f64 {
    if all == 0 {
        0.0
    } else {
        bad as f64 / all as f64
    }
}

/// The figures of one shadow session, by route.
#[derive(Debug, Default)]
pub struct Report {
    routes: Mutex<BTreeMap<String, RouteStats>>,
}

/// What one copy came to, for [`Report::record`].
#[derive(Debug)]
pub struct Outcome<'a> {
    pub route: String,
    pub method: &'a str,
    pub path: &'a str,
    pub live_status: u16,
    pub live_latency: Duration,
    pub live_body: Option<&'a [u8]>,
    /// The shadow's status, latency and body; `None` when the copy failed.
    pub shadow: Option<(u16, Duration, Option<&'a [u8]>)>,
}

impl Report {
    /// Adds one copy's outcome.
    pub fn record(&self, how: &Comparison, o: Outcome<'_>) -> Option<Verdict> {
        let verdict = o.shadow.map(|(status, _, body)| {
            compare(
                how,
                &Pair {
                    live_status: o.live_status,
                    shadow_status: status,
                    live_body: o.live_body,
                    shadow_body: body,
                },
            )
        });
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let key = if routes.contains_key(&o.route) || routes.len() < MAX_ROUTES {
            o.route
        } else {
            OTHER_ROUTE.to_string()
        };
        let r = routes.entry(key).or_default();
        r.live.record(o.live_latency);
        let Some((shadow_status, shadow_latency, shadow_body)) = o.shadow else {
            r.failed += 1;
            return None;
        };
        r.mirrored += 1;
        r.shadow.record(shadow_latency);
        let (kind, first_difference) = match &verdict {
            Some(Verdict::Status) => {
                r.status_mismatches += 1;
                ("status", None)
            }
            Some(Verdict::Body(at)) => {
                r.body_mismatches += 1;
                ("body", at.clone())
            }
            _ => return verdict,
        };
        if r.samples.len() < MAX_SAMPLES {
            let excerpt = |b: Option<&[u8]>| match b {
                Some(b) => String::from_utf8_lossy(&b[..b.len().min(SAMPLE_BODY)]).into_owned(),
                None => "(over shadow.max_body, not kept)".into(),
            };
            r.samples.push_back(Sample {
                ts: crate::state::now_rfc3339(),
                method: o.method.to_string(),
                path: o.path.chars().take(SAMPLE_PATH).collect(),
                kind,
                live_status: o.live_status,
                shadow_status,
                first_difference,
                live_body: excerpt(o.live_body),
                shadow_body: excerpt(shadow_body),
            });
        }
        verdict
    }

    /// Every route's figures, busiest first.
    pub fn routes(&self) -> Vec<RouteReport> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<RouteReport> = routes
            .iter()
            .map(|(route, r)| {
                let bad = r.status_mismatches + r.body_mismatches + r.failed;
                RouteReport {
                    route: route.clone(),
                    mirrored: r.mirrored,
                    failed: r.failed,
                    status_mismatches: r.status_mismatches,
                    body_mismatches: r.body_mismatches,
                    mismatch_ratio: ratio(bad, r.mirrored + r.failed),
                    live_p50_ms: r.live.quantile_ms(0.5),
                    live_p99_ms: r.live.quantile_ms(0.99),
                    shadow_p50_ms: r.shadow.quantile_ms(0.5),
                    shadow_p99_ms: r.shadow.quantile_ms(0.99),
                    samples: r.samples.iter().cloned().collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (b.mirrored + b.failed)
                .cmp(&(a.mirrored + a.failed))
                .then_with(|| a.route.cmp(&b.route))
        });
        out
    }

    /// The totals over every route.
    pub fn totals(&self) -> Totals {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut t = Totals::default();
        for r in routes.values() {
            t.mirrored += r.mirrored;
            t.failed += r.failed;
            t.status_mismatches += r.status_mismatches;
            t.body_mismatches += r.body_mismatches;
        }
        t.mismatch_ratio = ratio(
            t.status_mismatches + t.body_mismatches + t.failed,
            t.mirrored + t.failed,
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(ignore: &[&str]) -> Comparison {
        Comparison {
            body: CompareBody::Json,
            ignore_fields: ignore.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn pair<'a>(a: u16, b: u16, x: &'a [u8], y: &'a [u8]) -> Pair<'a> {
        Pair {
            live_status: a,
            shadow_status: b,
            live_body: Some(x),
            shadow_body: Some(y),
        }
    }

    #[test]
    fn status_classes_not_codes() {
        let how = json(&[]);
        assert_eq!(compare(&how, &pair(200, 204, b"", b"")), Verdict::Match);
        assert_eq!(compare(&how, &pair(200, 500, b"", b"")), Verdict::Status);
        assert_eq!(compare(&how, &pair(404, 410, b"", b"")), Verdict::Match);
    }

    #[test]
    fn json_ignores_fields_at_any_depth_and_names_the_difference() {
        let how = json(&["ts", "request_id"]);
        let a = br#"{"id":1,"name":"ann","ts":"2026-01-01","meta":{"request_id":"a"}}"#;
        let b = br#"{"name":"ann","id":1,"ts":"2027-01-01","meta":{"request_id":"b"}}"#;
        assert_eq!(compare(&how, &pair(200, 200, a, b)), Verdict::Match);
        let c = br#"{"name":"anne","id":1,"ts":"x","meta":{"request_id":"b"}}"#;
        assert_eq!(
            compare(&how, &pair(200, 200, a, c)),
            Verdict::Body(Some("$.name".into()))
        );
        let d = br#"{"items":[1,2,3]}"#;
        let e = br#"{"items":[1,2]}"#;
        assert_eq!(
            compare(&how, &pair(200, 200, d, e)),
            Verdict::Body(Some("$.items".into()))
        );
        assert_eq!(
            compare(&how, &pair(200, 200, b"oops", b"oops")),
            Verdict::Match
        );
        assert_eq!(
            compare(&how, &pair(200, 200, b"oops", b"oops!")),
            Verdict::Body(None)
        );
        let exact = Comparison {
            body: CompareBody::Exact,
            ignore_fields: vec![],
        };
        assert_eq!(compare(&exact, &pair(200, 200, a, b)), Verdict::Body(None));
        let none = Comparison {
            body: CompareBody::None,
            ignore_fields: vec![],
        };
        assert_eq!(compare(&none, &pair(200, 200, a, c)), Verdict::Match);
    }

    #[test]
    fn routes_by_pattern_or_first_segment() {
        let p = vec!["/api/users/*".to_string(), "/static/**".to_string()];
        assert_eq!(route_of(&p, "GET", "/api/users/7"), "GET /api/users/*");
        assert_eq!(route_of(&p, "GET", "/api/users/7/x"), "GET /api");
        assert_eq!(route_of(&p, "HEAD", "/static/a/b.css"), "HEAD /static/**");
        assert_eq!(route_of(&p, "GET", "/static"), "GET /static/**");
        assert_eq!(route_of(&p, "GET", "/"), "GET /");
        assert_eq!(route_of(&p, "GET", "/orders/1"), "GET /orders");
    }

    #[test]
    fn the_report_stays_bounded() {
        let r = Report::default();
        let how = json(&[]);
        for i in 0..10_000 {
            let path = format!("/r{i}/x");
            r.record(
                &how,
                Outcome {
                    route: route_of(&[], "GET", &path),
                    method: "GET",
                    path: &path,
                    live_status: 200,
                    live_latency: Duration::from_millis(2),
                    live_body: Some(b"a"),
                    shadow: Some((200, Duration::from_millis(3), Some(b"b"))),
                },
            );
        }
        let routes = r.routes();
        assert_eq!(routes.len(), MAX_ROUTES + 1);
        let other = routes.iter().find(|x| x.route == OTHER_ROUTE).unwrap();
        assert_eq!(other.mirrored, 10_000 - MAX_ROUTES as u64);
        assert!(routes.iter().all(|x| x.samples.len() <= MAX_SAMPLES));
        let t = r.totals();
        assert_eq!((t.mirrored, t.body_mismatches), (10_000, 10_000));
        assert_eq!(other.live_p50_ms, Some(2.0));
        assert_eq!(other.shadow_p99_ms, Some(3.0));
    }
}
