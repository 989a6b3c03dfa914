//! Fault injection: making one colour misbehave on purpose, to prove that the guard rolls back.
//!
//! A [`FaultSet`] names one pool and what to do to the requests routed to it: answer a share with
//! a status without contacting a backend (an *abort*), and/or hold a share for a fixed time
//! before proxying it (a *delay*). A set always expires (`until`); the request path stops
//! injecting at that instant, and the admin's tick removes it, records it and says so.
//!
//! The request path reads the set with one `ArcSwapOption::load()` (no lock) and, only for a
//! request to the faulted pool, takes one atomic step of the set's own counter. Which requests are
//! hit comes from the same low-discrepancy sequence as keyless canary routing
//! ([`crate::routing::sequence_bucket`]): any 10 000 consecutive requests to the pool visit every
//! bucket exactly once, so a 20 % abort aborts exactly 2 000 of them. Aborts take the low buckets
//! and delays the high ones, so the two shares overlap only when they add up to more than 100 %.
//!
//! A set is kept in `faults.json` next to `state.json` (written durably before it is
//! acknowledged), so a restart keeps injecting until the set expires.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};

use crate::routing::{sequence_bucket, PoolId, BUCKETS};
use crate::state::{format_percent, StoreError};
use crate::store::file::{remove_durably, write_durably};

/// The file a fault set is kept in, in the state directory.
pub const FAULTS_FILE: &str = "faults.json";

/// Status answered by an abort when none is given: what an overloaded backend answers.
pub const DEFAULT_ABORT_STATUS: u16 = 503;

/// How long a fault set lasts when no duration is given: a game day's step, not a day.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(600);

/// Longest delay a fault may add: beyond this a client times out and the test says nothing new.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// The two kinds of fault, the `kind` label of `switchyard_injected_faults_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Abort = 0,
    Delay = 1,
}

pub const FAULT_KINDS: [&str; 2] = ["abort", "delay"];

/// One fault set: what is done to which pool's requests, until when, and on whose word.
#[derive(Debug)]
pub struct FaultSet {
    pub pool: PoolId,
    /// Share of the pool's requests answered `status` at once, in basis points.
    pub abort_bp: u32,
    pub status: u16,
    /// Share of the pool's requests held for `delay` first, in basis points.
    pub delay_bp: u32,
    pub delay: Duration,
    /// When injection stops (the request path's clock) and the same instant on the wall clock.
    pub until: Instant,
    pub until_wall: SystemTime,
    /// RFC 3339 time it was set.
    pub since: String,
    pub actor: String,
    pub reason: Option<String>,
    /// Set on the live pool past the refusal.
    pub forced: bool,
    /// Requests to the pool seen while the set is on: the position in the sequence.
    seen: AtomicU64,
    injected: [AtomicU64; 2],
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    /// Answer this status without contacting a backend.
    pub abort: Option<u16>,
    /// Wait this long first.
    pub delay: Option<Duration>,
}

/// The fault set as kept in `faults.json`: pools by name, wall-clock times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultsFile {
    pub pool: String,
    pub abort_bp: u32,
    pub status: u16,
    pub delay_bp: u32,
    pub delay_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub until_ms: u64,
    pub since: String,
    pub actor: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub forced: bool,
}

/// What a caller asks for; checked by [`FaultRequest::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRequest {
    pub abort_bp: u32,
    pub status: Option<u16>,
    pub delay_bp: u32,
    pub delay: Option<Duration>,
    pub duration: Option<Duration>,
}

/// Why a fault request makes no sense; each says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("a fault set needs an abort share or a delay share above 0; e.g. --abort 5% or --delay 200ms@10%")]
    Nothing,
    #[error("abort status {0} is not an HTTP status between 100 and 599")]
    Status(u16),
    #[error("a delay share needs a delay; write it as --delay 200ms@10% (JSON: \"delay\": \"200ms\", \"delay_percent\": 10)")]
    DelayWithoutTime,
    #[error("a delay of {0:?} is outside 1ms..=60s; a longer one only makes clients time out")]
    DelayRange(Duration),
    #[error("a fault set lasting {asked:?} is beyond faults.max_duration ({max:?}); ask for less, or raise the limit in the config")]
    TooLong { asked: Duration, max: Duration },
    #[error("a fault set must last longer than 0s")]
    Zero,
}

impl FaultRequest {
    /// The checked values: `(abort_bp, status, delay_bp, delay, duration)`.
    pub fn check(&self, max: Duration) -> Result<(u32, u16, u32, Duration, Duration), FaultError> {
        if self.abort_bp == 0 && self.delay_bp == 0 {
            return Err(FaultError::Nothing);
        }
        let status = self.status.unwrap_or(DEFAULT_ABORT_STATUS);
        if !(100..=599).contains(&status) {
            return Err(FaultError::Status(status));
        }
        let delay = match (self.delay_bp, self.delay) {
            (0, d) => d.unwrap_or(Duration::ZERO),
            (_, None) => return Err(FaultError::DelayWithoutTime),
            (_, Some(d)) if d < Duration::from_millis(1) || d > MAX_DELAY => {
                return Err(FaultError::DelayRange(d))
            }
            (_, Some(d)) => d,
        };
        let duration = self.duration.unwrap_or(DEFAULT_DURATION.min(max));
        if duration.is_zero() {
            return Err(FaultError::Zero);
        }
        if duration > max {
            return Err(FaultError::TooLong {
                asked: duration,
                max,
            });
        }
        Ok((self.abort_bp, status, self.delay_bp, delay, duration))
    }
}

impl FaultSet {
    /// A new set on `pool` lasting `duration` from now.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: PoolId,
        abort_bp: u32,
        status: u16,
        delay_bp: u32,
        delay: Duration,
        duration: Duration,
        actor: &str,
        reason: Option<String>,
        forced: bool,
    ) -> FaultSet {
        FaultSet {
            pool,
            abort_bp: abort_bp.min(BUCKETS),
            status,
            delay_bp: delay_bp.min(BUCKETS),
            delay,
            until: Instant::now() + duration,
            until_wall: SystemTime::now() + duration,
            since: crate::state::now_rfc3339(),
            actor: actor.to_string(),
            reason,
            forced,
            seen: AtomicU64::new(0),
            injected: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// What to do to the next request to the faulted pool. Pure but for the set's counter.
    #[inline]
    pub fn next(&self) -> Injection {
        let bucket = sequence_bucket(self.seen.fetch_add(1, Ordering::Relaxed));
        let abort = (bucket < self.abort_bp).then_some(self.status);
        let delay = (bucket >= BUCKETS - self.delay_bp).then_some(self.delay);
        if abort.is_some() {
            self.injected[FaultKind::Abort as usize].fetch_add(1, Ordering::Relaxed);
        }
        if delay.is_some() {
            self.injected[FaultKind::Delay as usize].fetch_add(1, Ordering::Relaxed);
        }
        Injection { abort, delay }
    }

    /// Faults injected by this set so far, by kind.
    pub fn injected(&self, kind: FaultKind) -> u64 {
        self.injected[kind as usize].load(Ordering::Relaxed)
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.until
    }

    /// One line for history, chat and `ctl status`: `green: abort 20% with 503, delay 200ms on
    /// 10%`.
    pub fn summary(&self, names: &[String]) -> String {
        let mut parts = Vec::new();
        if self.abort_bp > 0 {
            parts.push(format!(
                "abort {} with {}",
                format_percent(self.abort_bp),
                self.status
            ));
        }
        if self.delay_bp > 0 {
            parts.push(format!(
                "delay {} on {}",
                humantime::format_duration(self.delay),
                format_percent(self.delay_bp)
            ));
        }
        format!("{}: {}", names[self.pool], parts.join(", "))
    }

    /// The set as kept in `faults.json`.
    pub fn to_file(&self, names: &[String]) -> FaultsFile {
        FaultsFile {
            pool: names[self.pool].clone(),
            abort_bp: self.abort_bp,
            status: self.status,
            delay_bp: self.delay_bp,
            delay_ms: self.delay.as_millis() as u64,
            until_ms: unix_ms(self.until_wall),
            since: self.since.clone(),
            actor: self.actor.clone(),
            reason: self.reason.clone(),
            forced: self.forced,
        }
    }

    /// A set read back from `faults.json`; `None` when it names an unknown pool or is over.
    pub fn from_file(f: &FaultsFile, names: &[String]) -> Option<FaultSet> {
        let pool = names.iter().position(|n| *n == f.pool)?;
        let wall_now = SystemTime::now();
        let until_wall = UNIX_EPOCH + Duration::from_millis(f.until_ms);
        let left = until_wall.duration_since(wall_now).ok()?;
        Some(FaultSet {
            pool,
            abort_bp: f.abort_bp.min(BUCKETS),
            status: f.status,
            delay_bp: f.delay_bp.min(BUCKETS),
            delay: Duration::from_millis(f.delay_ms).min(MAX_DELAY),
            until: Instant::now() + left,
            until_wall,
            since: f.since.clone(),
            actor: f.actor.clone(),
            reason: f.reason.clone(),
            forced: f.forced,
            seen: AtomicU64::new(0),
            injected: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The fault set in force, shared by the proxy (reads) and the admin handler (writes, under its
/// change lock).
#[derive(Debug, Default)]
pub struct Faults {
    current: ArcSwapOption<FaultSet>,
}

impl Faults {
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// What to do to a request routed to `pool`: `None` (nearly always) when no set applies.
    #[inline]
    pub fn decide(&self, pool: PoolId) -> Option<Injection> {
        let current = self.current.load();
        let set = current.as_ref()?;
        if set.pool != pool || set.expired(Instant::now()) {
            return None;
        }
        let i = set.next();
        (i.abort.is_some() || i.delay.is_some()).then_some(i)
    }

    /// The set in force (even if just expired and not yet removed).
    pub fn current(&self) -> Option<Arc<FaultSet>> {
        self.current.load_full()
    }

    /// Puts `set` in force (or none), returning the one it replaces.
    pub fn store(&self, set: Option<Arc<FaultSet>>) -> Option<Arc<FaultSet>> {
        self.current.swap(set)
    }
}

/// Reads `faults.json` from the state directory `dir`: the set still in force, if any. Fault
/// sets are this instance's own (not shared through a fleet's store).
pub fn load(dir: &Path, names: &[String]) -> Option<FaultSet> {
    let path = dir.join(FAULTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(
                "cannot read {}: {e}; no faults are injected",
                path.display()
            );
            return None;
        }
    };
    let file: FaultsFile = match serde_json::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(
                "{} is not a valid fault set ({e}); no faults are injected",
                path.display()
            );
            return None;
        }
    };
    let set = FaultSet::from_file(&file, names);
    match &set {
        Some(s) => tracing::warn!(
            "FAULT INJECTION resumed from {}: {} until {} (set by {})",
            path.display(),
            s.summary(names),
            humantime::format_rfc3339_seconds(s.until_wall),
            s.actor
        ),
        None => tracing::info!("the fault set in {} is over; ignoring it", path.display()),
    }
    set
}

/// Writes (or, for `None`, removes) `faults.json` in the state directory `dir` durably.
pub fn save(dir: &Path, file: Option<&FaultsFile>) -> Result<(), StoreError> {
    match file {
        Some(f) => {
            let mut json = serde_json::to_vec_pretty(f).expect("a fault set serialises");
            json.push(b'\n');
            write_durably(dir, FAULTS_FILE, &json)
        }
        None => remove_durably(dir, FAULTS_FILE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(abort_bp: u32, delay_bp: u32) -> FaultSet {
        FaultSet::new(
            1,
            abort_bp,
            503,
            delay_bp,
            Duration::from_millis(5),
            Duration::from_secs(60),
            "t",
            None,
            false,
        )
    }

    #[test]
    fn shares_are_exact_over_any_10000_requests() {
        let s = set(2_000, 1_000);
        let picks: Vec<Injection> = (0..30_000).map(|_| s.next()).collect();
        for start in (0..20_000).step_by(1_237) {
            let w = &picks[start..start + 10_000];
            assert_eq!(w.iter().filter(|i| i.abort.is_some()).count(), 2_000);
            assert_eq!(w.iter().filter(|i| i.delay.is_some()).count(), 1_000);
            // Disjoint while the shares add up to no more than 100 %.
            assert!(w.iter().all(|i| i.abort.is_none() || i.delay.is_none()));
        }
        assert_eq!(s.injected(FaultKind::Abort), 6_000);
        assert_eq!(s.injected(FaultKind::Delay), 3_000);
    }

    #[test]
    fn one_basis_point_and_everything() {
        let s = set(1, 0);
        let n = (0..10_000).filter(|_| s.next().abort.is_some()).count();
        assert_eq!(n, 1);
        let s = set(10_000, 10_000);
        assert!((0..10_000).all(|_| {
            let i = s.next();
            i.abort == Some(503) && i.delay == Some(Duration::from_millis(5))
        }));
    }

    #[test]
    fn only_the_faulted_pool_and_only_until_it_expires() {
        let f = Faults::default();
        assert_eq!(f.decide(1), None);
        f.store(Some(Arc::new(set(10_000, 0))));
        assert_eq!(f.decide(0), None);
        assert!(f.decide(1).is_some());
        let mut over = set(10_000, 0);
        over.until = Instant::now();
        f.store(Some(Arc::new(over)));
        assert_eq!(f.decide(1), None);
    }

    #[test]
    fn requests_are_checked() {
        let max = Duration::from_secs(3600);
        let req = |abort_bp, delay_bp, delay: Option<u64>, dur: Option<u64>| FaultRequest {
            abort_bp,
            status: None,
            delay_bp,
            delay: delay.map(Duration::from_millis),
            duration: dur.map(Duration::from_secs),
        };
        assert_eq!(req(0, 0, None, None).check(max), Err(FaultError::Nothing));
        assert_eq!(
            req(0, 100, None, None).check(max),
            Err(FaultError::DelayWithoutTime)
        );
        assert!(matches!(
            req(0, 100, Some(120_000), None).check(max),
            Err(FaultError::DelayRange(_))
        ));
        assert!(matches!(
            req(500, 0, None, Some(7200)).check(max),
            Err(FaultError::TooLong { .. })
        ));
        assert_eq!(
            req(500, 0, None, None).check(max).unwrap(),
            (500, 503, 0, Duration::ZERO, DEFAULT_DURATION)
        );
        let mut bad = req(500, 0, None, None);
        bad.status = Some(42);
        assert_eq!(bad.check(max), Err(FaultError::Status(42)));
    }

    #[test]
    fn a_set_survives_the_file_until_it_is_over() {
        let names = vec!["blue".to_string(), "green".to_string()];
        let s = set(2_000, 0);
        let back = FaultSet::from_file(&s.to_file(&names), &names).expect("still on");
        assert_eq!((back.pool, back.abort_bp, back.status), (1, 2_000, 503));
        let left = back.until.saturating_duration_since(Instant::now());
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(55));
        let mut over = s.to_file(&names);
        over.until_ms = unix_ms(SystemTime::now()) - 1;
        assert!(FaultSet::from_file(&over, &names).is_none());
        over.until_ms += 60_000;
        over.pool = "purple".into();
        assert!(FaultSet::from_file(&over, &names).is_none());
    }
}
