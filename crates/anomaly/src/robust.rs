//! Robust statistics: the Huber ψ that cleans an observation before it updates a
//! baseline, the biweight-ρ scale recursion of Gelper, Fried & Croux (2010), and the
//! median/MAD used once, to seed a series from its first buckets.

use serde::{Deserialize, Serialize};

/// Consistency factor of the MAD for a normal distribution (1 / Φ⁻¹(3/4)).
pub const MAD_TO_SIGMA: f64 = 1.4826;

/// Huber's ψ: the standardised residual `u`, clipped to `[-k, k]`. An outlier moves a
/// baseline by at most `k` scales, so one wild bucket cannot drag the expectation.
#[inline]
pub fn huber(u: f64, k: f64) -> f64 {
    u.clamp(-k, k)
}

/// Tukey's biweight ρ with tuning constant `k = 2`, scaled by `c = 2.52` so that its
/// expectation under a standard normal is 1 (the constants of Gelper, Fried & Croux 2010,
/// "Robust forecasting with exponential and Holt-Winters smoothing", J. Forecasting
/// 29(3)). Bounded by `c`: an outlier inflates the scale by a bounded factor.
#[inline]
pub fn biweight_rho(u: f64) -> f64 {
    const K: f64 = 2.0;
    const C: f64 = 2.52;
    let v = u / K;
    if v.abs() >= 1.0 {
        C
    } else {
        let w = 1.0 - v * v;
        C * (1.0 - w * w * w)
    }
}

/// A robust scale estimate updated one residual at a time:
/// `σ²ₜ = λ·ρ(rₜ/σₜ₋₁)·σ²ₜ₋₁ + (1−λ)·σ²ₜ₋₁` (Gelper, Fried & Croux 2010, eq. 9).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RobustScale {
    pub sigma: f64,
}

impl RobustScale {
    pub fn new(sigma: f64) -> Self {
        RobustScale { sigma }
    }

    /// Updates with residual `r` at rate `lambda`; `floor` keeps the scale above the
    /// data's resolution so a run of identical values cannot collapse it to zero.
    #[inline]
    pub fn update(&mut self, r: f64, lambda: f64, floor: f64) {
        let s = self.sigma.max(floor);
        let rho = biweight_rho(r / s);
        let var = s * s * (1.0 - lambda + lambda * rho);
        self.sigma = var.sqrt().max(floor);
    }
}

/// `-log10 Φ(z)`: the evidence, in decimal digits, of a value `z` scales or more below
/// its expectation under a normal model. Uses the Chebyshev fit of `erfc` from Press et
/// al., Numerical Recipes (fractional error below 1.2e-7 everywhere), so tail
/// probabilities keep their relative precision.
pub fn neg_log10_normal_cdf(z: f64) -> f64 {
    // Φ(z) = erfc(−z/√2)/2; ln erfc(x) = −x² + ln(t) + poly(t) for x ≥ 0.
    let x = -z / std::f64::consts::SQRT_2;
    let ln_p = if x >= 0.0 {
        let t = 1.0 / (1.0 + 0.5 * x);
        let poly = -1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
        -x * x + t.ln() + poly - std::f64::consts::LN_2
    } else {
        // z > 0: Φ(z) ≥ 1/2, the evidence is below 0.3 digits.
        let t = 1.0 / (1.0 - 0.5 * x);
        let poly = -1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
        let erfc_neg = 2.0 - t * (-x * x + poly).exp();
        (erfc_neg / 2.0).ln()
    };
    -ln_p / std::f64::consts::LN_10
}

/// Median of a small slice, sorting it in place (used only while seeding a series).
pub fn median_in_place(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    let hi = values[n / 2];
    if n % 2 == 1 {
        hi
    } else {
        (values[n / 2 - 1] + hi) / 2.0
    }
}

/// Median and MAD-based scale (normal-consistent) of `values`; `scratch` is reused.
pub fn median_and_scale(values: &[f64], scratch: &mut Vec<f64>) -> (f64, f64) {
    scratch.clear();
    scratch.extend_from_slice(values);
    let med = median_in_place(scratch);
    for v in scratch.iter_mut() {
        *v = (*v - med).abs();
    }
    let mad = median_in_place(scratch);
    if mad > 0.0 {
        return (med, MAD_TO_SIGMA * mad);
    }
    // More than half the values are equal (zeros of a sparse series): fall back to the
    // mean absolute deviation, times √(π/2) to be normal-consistent.
    let mean_abs = scratch.iter().sum::<f64>() / scratch.len().max(1) as f64;
    (med, 1.2533 * mean_abs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn biweight_is_bounded_and_zero_at_zero() {
        assert_eq!(biweight_rho(0.0), 0.0);
        assert_eq!(biweight_rho(5.0), 2.52);
        assert_eq!(biweight_rho(-100.0), 2.52);
        assert!(biweight_rho(1.0) > 0.0 && biweight_rho(1.0) < 2.52);
    }

    #[test]
    fn scale_recursion_is_consistent_for_normal_noise() {
        // Deterministic stand-in for N(0, 3²): quantiles of the normal at evenly spaced
        // probabilities, visited in a scrambled order.
        let mut s = RobustScale::new(1.0);
        let quantiles: Vec<f64> = (1..200)
            .map(|i| {
                let p = i as f64 / 200.0;
                // Acklam-free approximation good enough here: logit-based.
                3.0 * 0.5513 * (p / (1.0 - p)).ln()
            })
            .collect();
        for round in 0..20 {
            for j in 0..quantiles.len() {
                let idx = (j * 73 + round * 11) % quantiles.len();
                s.update(quantiles[idx], 0.02, 1e-9);
            }
        }
        assert!((s.sigma - 3.0).abs() < 0.6, "sigma {}", s.sigma);
    }

    #[test]
    fn normal_tail_evidence() {
        // Φ(−5) = 2.8665e−7, Φ(−2) = 0.02275, Φ(0) = 0.5.
        assert!((neg_log10_normal_cdf(-5.0) - 6.5426).abs() < 1e-3);
        assert!((neg_log10_normal_cdf(-2.0) - 1.6430).abs() < 1e-3);
        assert!((neg_log10_normal_cdf(0.0) - std::f64::consts::LOG10_2).abs() < 1e-4);
        assert!(neg_log10_normal_cdf(3.0) < 0.001);
    }

    #[test]
    fn median_and_mad() {
        let mut scratch = Vec::new();
        let (m, s) = median_and_scale(&[1.0, 2.0, 3.0, 4.0, 100.0], &mut scratch);
        assert_eq!(m, 3.0);
        assert!((s - MAD_TO_SIGMA).abs() < 1e-12);
        let (m, s) = median_and_scale(&[0.0, 0.0, 0.0, 2.0], &mut scratch);
        assert_eq!(m, 0.0);
        assert!(s > 0.0);
    }
}
