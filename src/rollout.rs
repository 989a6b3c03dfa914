//! Progressive rollouts: the canary weight walked up a list of steps, one `interval` at each,
//! judged by the guard all the way, ending in a promotion.
//!
//! This module is the rollout's bookkeeping only (which step, how long until the next, paused or
//! not), as plain data with no clock of its own: the admin handler owns the changes and asks
//! [`Rollout::due`] on every guard tick. A rollout is part of `state.json`, so it survives a
//! restart; after one, the current step's wait starts over, so a restart never shortens the time
//! a step is watched.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::MAX_BP;
use crate::routing::PoolId;

/// A rollout in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The pool being rolled out (the canary pool).
    pub to: PoolId,
    /// Canary weights in basis points, strictly increasing, the last at most 10 000.
    pub steps: Vec<u32>,
    pub interval: Duration,
    /// Index into `steps` of the weight now live.
    pub step: usize,
    /// When the current step's wait began (moved forward by a pause).
    pub step_started: Instant,
    /// Set while paused: how much of the current step's wait was left.
    pub paused_left: Option<Duration>,
    /// RFC 3339 start time, for status and history.
    pub started: String,
}

/// What a rollout asks for when its step's time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Set the canary to this weight (bp) and wait again.
    Step(u32),
    /// The last step held: make the canary pool primary.
    Promote,
}

/// Why a rollout request is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepsError {
    #[error("a rollout needs at least one step, e.g. [1, 5, 25, 50, 100]")]
    Empty,
    #[error("step {0} is not a percentage between 0.01 and 100 with at most two decimals")]
    OutOfRange(f64),
    #[error("steps must increase: {0} comes after {1}")]
    NotIncreasing(f64, f64),
}

/// Percent steps (e.g. `[1, 5, 25, 50, 100]`) as basis points, checked.
pub fn steps_to_bp(steps: &[f64]) -> Result<Vec<u32>, StepsError> {
    if steps.is_empty() {
        return Err(StepsError::Empty);
    }
    let mut out: Vec<u32> = Vec::with_capacity(steps.len());
    for (i, &p) in steps.iter().enumerate() {
        let bp = p * 100.0;
        if !p.is_finite()
            || bp < 0.5
            || bp > f64::from(MAX_BP) + 1e-6
            || (bp - bp.round()).abs() > 1e-6
        {
            return Err(StepsError::OutOfRange(p));
        }
        let bp = bp.round() as u32;
        if let Some(&prev) = out.last() {
            if bp <= prev {
                return Err(StepsError::NotIncreasing(p, steps[i - 1]));
            }
        }
        out.push(bp);
    }
    Ok(out)
}

impl Rollout {
    pub fn new(
        to: PoolId,
        steps: Vec<u32>,
        interval: Duration,
        now: Instant,
        started: String,
    ) -> Self {
        Rollout {
            to,
            steps,
            interval,
            step: 0,
            step_started: now,
            paused_left: None,
            started,
        }
    }

    /// The weight of the current step.
    pub fn weight(&self) -> u32 {
        self.steps[self.step]
    }

    /// Time left at the current step (frozen while paused).
    pub fn time_left(&self, now: Instant) -> Duration {
        match self.paused_left {
            Some(left) => left,
            None => self
                .interval
                .saturating_sub(now.saturating_duration_since(self.step_started)),
        }
    }

    /// What to do now, if the current step's time is up.
    pub fn due(&self, now: Instant) -> Option<Next> {
        if self.paused_left.is_some() || !self.time_left(now).is_zero() {
            return None;
        }
        Some(match self.steps.get(self.step + 1) {
            Some(&bp) => Next::Step(bp),
            None => Next::Promote,
        })
    }

    /// Moves to the next step, starting its wait at `now`.
    pub fn advance(&mut self, now: Instant) {
        self.step += 1;
        self.step_started = now;
    }

    /// Freezes the clock; returns false if already paused.
    pub fn pause(&mut self, now: Instant) -> bool {
        if self.paused_left.is_some() {
            return false;
        }
        self.paused_left = Some(self.time_left(now));
        true
    }

    /// Restarts the clock with the time that was left; returns false if not paused.
    pub fn resume(&mut self, now: Instant) -> bool {
        let Some(left) = self.paused_left.take() else {
            return false;
        };
        // Started as long ago as makes `left` remain.
        self.step_started = now
            .checked_sub(self.interval.saturating_sub(left))
            .unwrap_or(now);
        true
    }

    /// The durable form.
    pub fn to_file(&self, names: &[String]) -> RolloutFile {
        RolloutFile {
            to: names[self.to].clone(),
            steps_bp: self.steps.clone(),
            interval_ms: self.interval.as_millis() as u64,
            step: self.step,
            paused: self.paused_left.is_some(),
            started: self.started.clone(),
        }
    }

    /// Restores a saved rollout; the current step's wait starts over at `now`.
    pub fn from_file(f: &RolloutFile, names: &[String], now: Instant) -> Option<Rollout> {
        let to = names.iter().position(|n| *n == f.to)?;
        let steps_ok = !f.steps_bp.is_empty()
            && f.steps_bp.iter().all(|&bp| (1..=MAX_BP).contains(&bp))
            && f.steps_bp.windows(2).all(|w| w[0] < w[1]);
        if !steps_ok || f.step >= f.steps_bp.len() || f.interval_ms == 0 {
            return None;
        }
        let interval = Duration::from_millis(f.interval_ms);
        Some(Rollout {
            to,
            steps: f.steps_bp.clone(),
            interval,
            step: f.step,
            step_started: now,
            paused_left: f.paused.then_some(interval),
            started: f.started.clone(),
        })
    }
}

/// A rollout as kept in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutFile {
    pub to: String,
    pub steps_bp: Vec<u32>,
    pub interval_ms: u64,
    pub step: usize,
    pub paused: bool,
    pub started: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_checked() {
        assert_eq!(
            steps_to_bp(&[1.0, 5.0, 25.0, 50.0, 100.0]).unwrap(),
            [100, 500, 2500, 5000, 10_000]
        );
        assert_eq!(steps_to_bp(&[0.01, 0.5]).unwrap(), [1, 50]);
        assert_eq!(steps_to_bp(&[]), Err(StepsError::Empty));
        assert_eq!(
            steps_to_bp(&[5.0, 5.0]),
            Err(StepsError::NotIncreasing(5.0, 5.0))
        );
        assert!(steps_to_bp(&[0.0]).is_err());
        assert!(steps_to_bp(&[101.0]).is_err());
        assert!(steps_to_bp(&[0.001]).is_err());
    }

    #[test]
    fn steps_advance_on_time_and_end_in_a_promotion() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut r = Rollout::new(1, vec![100, 5000], s, t0, "t".into());
        assert_eq!(r.weight(), 100);
        assert_eq!(r.due(t0 + s / 2), None);
        assert_eq!(r.due(t0 + s), Some(Next::Step(5000)));
        r.advance(t0 + s);
        assert_eq!(r.due(t0 + s + s / 2), None);
        assert_eq!(r.due(t0 + 2 * s), Some(Next::Promote));
    }

    #[test]
    fn a_pause_holds_the_step_and_keeps_the_time_left() {
        let t0 = Instant::now();
        let s = Duration::from_secs(10);
        let mut r = Rollout::new(1, vec![100, 5000], s, t0, "t".into());
        assert!(r.pause(t0 + Duration::from_secs(4)));
        assert!(!r.pause(t0 + Duration::from_secs(5)));
        assert_eq!(
            r.due(t0 + Duration::from_secs(60)),
            None,
            "paused: never due"
        );
        assert_eq!(
            r.time_left(t0 + Duration::from_secs(60)),
            Duration::from_secs(6)
        );
        let back = t0 + Duration::from_secs(100);
        assert!(r.resume(back));
        assert_eq!(r.time_left(back), Duration::from_secs(6));
        assert_eq!(r.due(back + Duration::from_secs(6)), Some(Next::Step(5000)));
    }

    #[test]
    fn the_durable_form_round_trips() {
        let names = vec!["blue".to_string(), "green".to_string()];
        let t0 = Instant::now();
        let mut r = Rollout::new(
            1,
            vec![100, 2500, 10_000],
            Duration::from_secs(60),
            t0,
            "t".into(),
        );
        r.advance(t0);
        let f = r.to_file(&names);
        let back = Rollout::from_file(&f, &names, t0).unwrap();
        assert_eq!((back.to, back.step, back.weight()), (1, 1, 2500));
        assert_eq!(
            Rollout::from_file(
                &RolloutFile {
                    to: "red".into(),
                    ..f
                },
                &names,
                t0
            ),
            None
        );
    }
}
