//! The sliding window behind `status`, `watch` and the guard: per-second slots of request and
//! error counts and a latency histogram, lock-free to record into.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::DURATION_BUCKETS;

/// Latency bucket upper bounds of the window histogram, in microseconds: the Prometheus
/// histogram's [`DURATION_BUCKETS`], then +Inf, so `status`, the guard and
/// `histogram_quantile` read percentiles from the same buckets.
fn window_bounds() -> &'static [u64] {
    static BOUNDS: OnceLock<Vec<u64>> = OnceLock::new();
    BOUNDS.get_or_init(|| {
        let mut v: Vec<u64> = DURATION_BUCKETS
            .iter()
            .map(|s| (s * 1_000_000.0).round() as u64)
            .collect();
        v.push(u64::MAX);
        v
    })
}

/// The monotonic second counter the window is keyed by.
fn now_secs() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

/// A slot's `second` while one recorder clears it.
const CLAIMING: u64 = u64::MAX - 1;

/// One second's figures.
struct Slot {
    /// Which second (of [`now_secs`]) this slot holds; a slot from an older lap is stale.
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Vec<AtomicU64>,
}

/// A lock-free sliding window of per-second slots: request count, error count and a latency
/// histogram per second, for the last `len` seconds.
///
/// Recording is a handful of relaxed atomic adds. When a request lands in a slot left over from
/// an earlier lap, the first recorder to notice claims it (compare-and-swap on `second`), clears
/// it and publishes the new second; a request recorded during that instant is dropped, a rounding
/// error for the rates and ratios this serves, and why exact counts come from Prometheus instead.
pub struct Window {
    slots: Vec<Slot>,
}

/// Figures over a span of the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowStats {
    pub requests: u64,
    pub errors: u64,
    /// The span the figures cover, in seconds.
    pub seconds: u64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl WindowStats {
    pub fn rps(&self) -> f64 {
        if self.seconds == 0 {
            0.0
        } else {
            self.requests as f64 / self.seconds as f64
        }
    }

    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

impl Window {
    /// A window able to answer for the last `secs` seconds.
    pub fn new(secs: usize) -> Window {
        let n = secs + 2;
        let buckets = window_bounds().len();
        Window {
            slots: (0..n)
                .map(|_| Slot {
                    second: AtomicU64::new(u64::MAX),
                    requests: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    latency: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
                })
                .collect(),
        }
    }

    /// Records one finished request (`latency`: `None` to count it without timing it).
    #[inline]
    pub fn record(&self, latency: Option<Duration>, error: bool) {
        let now = now_secs();
        let slot = &self.slots[(now % self.slots.len() as u64) as usize];
        loop {
            let seen = slot.second.load(Ordering::Acquire);
            if seen == now {
                break;
            }
            if seen == CLAIMING {
                // Another recorder is clearing this slot right now: drop this one sample
                // rather than wait.
                return;
            }
            // Claim the stale slot, clear it, then publish the new second, so a reader never
            // sees the old lap's counts under the new second.
            if slot
                .second
                .compare_exchange(seen, CLAIMING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.requests.store(0, Ordering::Relaxed);
                slot.errors.store(0, Ordering::Relaxed);
                for b in &slot.latency {
                    b.store(0, Ordering::Relaxed);
                }
                slot.second.store(now, Ordering::Release);
                break;
            }
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(latency) = latency {
            let us = latency.as_micros().min(u128::from(u64::MAX)) as u64;
            let idx = window_bounds().partition_point(|&b| b < us);
            slot.latency[idx].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Figures over the last `span` (whole seconds, including the current, partial one): what
    /// the guard judges, so a breach counts from its first second.
    pub fn stats(&self, span: Duration) -> WindowStats {
        self.span_stats(span, 0)
    }

    /// Figures over the last `span` completed seconds (the current, partial second left out):
    /// what `status` reports. Counting a partial second as a whole one made the figures
    /// sawtooth (up to 10 % low at a steady rate), where Prometheus' `rate()` does not.
    pub fn completed(&self, span: Duration) -> WindowStats {
        self.span_stats(span, 1)
    }

    /// Figures over `span` seconds, ending `skip` seconds ago.
    fn span_stats(&self, span: Duration, skip: u64) -> WindowStats {
        let now = now_secs();
        let secs = span.as_secs().clamp(1, self.slots.len() as u64 - 1 - skip);
        if now < skip {
            return WindowStats {
                seconds: secs,
                ..WindowStats::default()
            };
        }
        let last = now - skip;
        let first = (now + 1).saturating_sub(secs + skip);
        let mut s = self.tally(first, last).stats();
        s.seconds = secs;
        s
    }

    /// The raw counts over the last `span` (as [`Window::stats`] counts them), which add up
    /// across instances: a fleet's guard judges the sum (`store::etcd`).
    pub fn figures(&self, span: Duration) -> Tally {
        let now = now_secs();
        let secs = span.as_secs().clamp(1, self.slots.len() as u64 - 1);
        let mut t = self.tally((now + 1).saturating_sub(secs), now);
        t.seconds = secs;
        t
    }

    /// The second (of the window's own clock) now is in: what [`Window::tally`] takes.
    pub fn second(&self) -> u64 {
        now_secs()
    }

    /// The raw counts of seconds `first..=last` (of [`Window::second`]'s clock), for figures over
    /// a span that is not "the last N seconds": a deploy's impact, the status page's chart.
    /// Seconds the window no longer holds (older than its length) count as empty.
    pub fn tally(&self, first: u64, last: u64) -> Tally {
        let mut t = Tally {
            requests: 0,
            errors: 0,
            seconds: (last + 1).saturating_sub(first),
            hist: vec![0; window_bounds().len()],
        };
        let len = self.slots.len() as u64;
        for second in first.max((now_secs() + 1).saturating_sub(len - 1))..=last {
            let slot = &self.slots[(second % len) as usize];
            if slot.second.load(Ordering::Acquire) != second {
                continue;
            }
            t.requests += slot.requests.load(Ordering::Relaxed);
            t.errors += slot.errors.load(Ordering::Relaxed);
            for (h, b) in t.hist.iter_mut().zip(&slot.latency) {
                *h += b.load(Ordering::Relaxed);
            }
        }
        t
    }
}

/// Raw counts over a span of the window: addable and subtractable, unlike percentiles.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub requests: u64,
    pub errors: u64,
    pub seconds: u64,
    hist: Vec<u64>,
}

impl Tally {
    /// Adds another instance's counts for the same span.
    pub fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.errors += other.errors;
        if other.hist.len() == self.hist.len() {
            for (a, b) in self.hist.iter_mut().zip(&other.hist) {
                *a += b;
            }
        }
    }

    /// What is in `self` and not in `earlier` (a snapshot of part of the same span): the
    /// requests of a second after a given instant, from the second's total minus what it held
    /// at that instant.
    pub fn minus(&self, earlier: &Tally) -> Tally {
        Tally {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            seconds: self.seconds,
            hist: self
                .hist
                .iter()
                .zip(&earlier.hist)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    /// Rate, error ratio and percentiles of these counts.
    pub fn stats(&self) -> WindowStats {
        let bounds = window_bounds();
        let hist = &self.hist;
        let total: u64 = hist.iter().sum();
        // As Prometheus' histogram_quantile: find the bucket holding the rank, interpolate
        // linearly inside it; a rank in the +Inf bucket reads as the last finite bound.
        let pct = |q: f64| {
            if total == 0 {
                return None;
            }
            let rank = (total as f64) * q;
            let mut acc = 0u64;
            for (i, &n) in hist.iter().enumerate() {
                if n > 0 && (acc + n) as f64 >= rank {
                    if bounds[i] == u64::MAX {
                        return Some(Duration::from_micros(bounds[i - 1]));
                    }
                    let lower = if i == 0 { 0 } else { bounds[i - 1] } as f64;
                    let upper = bounds[i] as f64;
                    let us = lower + (upper - lower) * (rank - acc as f64) / n as f64;
                    return Some(Duration::from_secs_f64(us / 1_000_000.0));
                }
                acc += n;
            }
            None
        };
        WindowStats {
            requests: self.requests,
            errors: self.errors,
            seconds: self.seconds,
            p50: pct(0.50),
            p99: pct(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::code_class;

    #[test]
    fn status_classes() {
        assert_eq!(code_class(101), Some(0));
        assert_eq!(code_class(200), Some(1));
        assert_eq!(code_class(404), Some(3));
        assert_eq!(code_class(503), Some(4));
        assert_eq!(code_class(0), None);
    }

    #[test]
    fn the_window_counts_and_estimates_percentiles() {
        let w = Window::new(10);
        for _ in 0..98 {
            w.record(Some(Duration::from_millis(2)), false);
        }
        w.record(Some(Duration::from_millis(300)), true);
        w.record(Some(Duration::from_millis(300)), true);
        let s = w.stats(Duration::from_secs(10));
        assert_eq!((s.requests, s.errors), (100, 2));
        assert!((s.error_ratio() - 0.02).abs() < 1e-9);
        // As histogram_quantile: 2 ms is in the (1.5 ms, 2 ms] bucket, rank 50 of its 98;
        // 300 ms in (250 ms, 300 ms], rank 99 is the first of its 2.
        let p50 = s.p50.unwrap().as_secs_f64() * 1000.0;
        assert!((p50 - (1.5 + 0.5 * 50.0 / 98.0)).abs() < 1e-6, "{p50}");
        let p99 = s.p99.unwrap().as_secs_f64() * 1000.0;
        assert!((p99 - 275.0).abs() < 1e-6, "{p99}");
    }

    #[test]
    fn a_tally_minus_a_snapshot_is_what_came_after_it() {
        let w = Window::new(10);
        let now = w.second();
        for _ in 0..7 {
            w.record(Some(Duration::from_millis(2)), true);
        }
        let at_change = w.tally(now, now);
        for _ in 0..5 {
            w.record(Some(Duration::from_millis(300)), false);
        }
        // Unless the second turned between the two batches, the snapshot splits it exactly.
        if w.second() == now {
            let after = w.tally(now, now + 3).minus(&at_change);
            assert_eq!((after.requests, after.errors), (5, 0));
            let s = after.stats();
            assert!(s.p50.unwrap() > Duration::from_millis(250), "{s:?}");
            assert_eq!(w.tally(now, now).requests, 12);
        }
        // Seconds the window does not hold count as empty.
        assert_eq!(w.tally(now + 100, now + 200).requests, 0);
    }

    #[test]
    fn an_empty_window_has_no_percentiles() {
        let s = Window::new(5).stats(Duration::from_secs(5));
        assert_eq!((s.requests, s.p50, s.p99), (0, None, None));
        assert_eq!(s.error_ratio(), 0.0);
    }
}
