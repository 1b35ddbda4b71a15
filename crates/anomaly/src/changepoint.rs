//! Two-sided CUSUM (Page 1954, "Continuous inspection schemes", Biometrika 41) on
//! standardised residuals, for shifts too small to alarm in one bucket but sustained:
//! a silence of a tenant whose night-time usage is low, a drop to half.
//!
//! `S⁺ₜ = max(0, S⁺ₜ₋₁ + zₜ − k)`, `S⁻ₜ = max(0, S⁻ₜ₋₁ − zₜ − k)`; alarm when either
//! reaches `h`. With `k = 1` the scheme is tuned to shifts of about 2σ; `h = 8` makes
//! the in-control run length of Gaussian residuals astronomically long, so the false
//! alarms that remain come from heavy tails and model error, not from the test. Inputs
//! are clipped to the one-bucket alarm level so a single outlier cannot also fire it.
//! Used alongside the one-bucket Shewhart limit, as in Lucas (1982), "Combined
//! Shewhart-CUSUM quality control schemes", J. Quality Technology 14.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Cusum {
    pub up: f64,
    pub down: f64,
    /// Bucket at which each side last left zero: where the shift began.
    pub up_start: i64,
    pub down_start: i64,
}

/// Direction of a detected change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Up,
    Down,
}

impl Cusum {
    #[inline]
    pub fn update(&mut self, z: f64, clip: f64, k: f64, start: i64) {
        let z = z.clamp(-clip, clip);
        if self.up == 0.0 {
            self.up_start = start;
        }
        if self.down == 0.0 {
            self.down_start = start;
        }
        self.up = (self.up + z - k).max(0.0);
        self.down = (self.down - z - k).max(0.0);
    }

    /// The side that has reached `h`, if any, with where its shift began.
    pub fn alarm(&self, h: f64) -> Option<(Direction, i64)> {
        match (self.up >= h, self.down >= h) {
            (true, true) if self.down > self.up => Some((Direction::Down, self.down_start)),
            (true, _) => Some((Direction::Up, self.up_start)),
            (false, true) => Some((Direction::Down, self.down_start)),
            (false, false) => None,
        }
    }

    pub fn reset(&mut self) {
        *self = Cusum::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustained_shift_alarms_with_its_onset() {
        let mut c = Cusum::default();
        for t in 0..10 {
            c.update(0.3, 5.0, 1.0, t);
        }
        assert_eq!(c.alarm(8.0), None);
        for t in 10..20 {
            c.update(-3.0, 5.0, 1.0, t);
        }
        assert_eq!(c.alarm(8.0), Some((Direction::Down, 10)));
    }

    #[test]
    fn one_outlier_is_clipped() {
        let mut c = Cusum::default();
        c.update(1e9, 5.0, 1.0, 0);
        assert_eq!(c.alarm(8.0), None);
    }
}
