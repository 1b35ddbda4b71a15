//! One candidate baseline: robust Holt-Winters smoothing (Gelper, Fried & Croux 2010)
//! with a level, a seasonal profile over one period and a robust scale that also varies
//! with the phase. The detector runs one per candidate period plus a flat one (no
//! season) and picks by forecast error, which is how it finds a rhythm, or none.
//!
//! A profile is a ring of bins over the period, read and updated with linear
//! interpolation between bin centres, so a 30-minute bin serves 5-minute buckets without
//! steps. A long period that a shorter candidate divides (the week, by the day) carries
//! the shorter profile inside it, as in Taylor's double seasonal Holt-Winters (Taylor
//! 2003, "Short-term electricity demand forecasting using double seasonal exponential
//! smoothing", J. Operational Research Society 54): the daily shape is learned every
//! day, the weekly profile only learns how each hour of the week differs from it.
//! Seasonality is multiplicative (`level × factor`) for series that were never negative
//! while seeding, so a tenant that doubles keeps its daily shape, and additive
//! (`level + offset`) otherwise.

use serde::{Deserialize, Serialize};

use crate::robust::{huber, RobustScale};

/// Where a bucket falls on a profile: the two bins around it and their weights.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Phase {
    b0: usize,
    b1: usize,
    w1: f64,
}

/// A ring of bins over one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Profile {
    period: i64,
    /// Factors (multiplicative, mean 1) or offsets (additive, mean 0).
    factor: Vec<f32>,
    /// Interpolation weight each bin has received (capped).
    seen: Vec<f32>,
    /// Index of the current cycle, to renormalise when the period wraps.
    cycle: i64,
}

impl Profile {
    fn new(period: i64, bins: usize, multiplicative: bool) -> Self {
        Profile {
            period,
            factor: vec![if multiplicative { 1.0 } else { 0.0 }; bins],
            seen: vec![0.0; bins],
            cycle: i64::MIN / 2,
        }
    }

    fn is_empty(&self) -> bool {
        self.factor.is_empty()
    }

    fn all_seen(&self) -> bool {
        self.seen.iter().all(|&s| s >= 0.5)
    }

    fn phase(&self, start: i64, interval: i64) -> Phase {
        let bins = self.factor.len();
        if bins == 0 || self.period <= 0 {
            return Phase::default();
        }
        // Phase of the bucket's centre, in bins, measured from the first bin's centre.
        let within = start.rem_euclid(self.period) as f64 + interval as f64 / 2.0;
        let pos = within / self.period as f64 * bins as f64 - 0.5;
        let lower = pos.floor();
        let b0 = (lower as i64).rem_euclid(bins as i64) as usize;
        Phase {
            b0,
            b1: (b0 + 1) % bins,
            w1: pos - lower,
        }
    }

    fn value(&self, p: Phase, neutral: f64) -> f64 {
        interp(&self.factor, p, neutral)
    }

    /// When the period wraps, renormalise (mean factor 1, mean offset 0) and return what
    /// the level must absorb: a factor to multiply it by, or an offset to add.
    fn roll(&mut self, start: i64, multiplicative: bool) -> Option<f64> {
        if self.factor.is_empty() || self.period <= 0 {
            return None;
        }
        let cycle = start.div_euclid(self.period);
        if cycle == self.cycle {
            return None;
        }
        let first = self.cycle == i64::MIN / 2;
        self.cycle = cycle;
        if first {
            return None;
        }
        let mean = self.factor.iter().map(|&f| f as f64).sum::<f64>() / self.factor.len() as f64;
        if multiplicative {
            if mean <= 1e-9 {
                return None;
            }
            for f in &mut self.factor {
                *f = (*f as f64 / mean) as f32;
            }
        } else {
            for f in &mut self.factor {
                *f = (*f as f64 - mean) as f32;
            }
        }
        Some(mean)
    }

    /// Moves the two bins of phase `p` towards explaining the bucket. During its first
    /// `first_weight` of weight a bin is the weighted mean of the `target` values it
    /// saw (what the bin would be if it alone explained the bucket), unclipped: the
    /// scale is not trusted yet. Afterwards, a robust gradient step with the cleaned
    /// residual `r_clean`; `unit` converts a residual into a factor change.
    #[allow(clippy::too_many_arguments)]
    fn learn(
        &mut self,
        p: Phase,
        rate: f64,
        first_weight: f64,
        target: f64,
        r_clean: f64,
        unit: f64,
        multiplicative: bool,
    ) {
        for (b, w) in [(p.b0, 1.0 - p.w1), (p.b1, p.w1)] {
            let (Some(f), Some(seen)) = (self.factor.get_mut(b), self.seen.get_mut(b)) else {
                continue;
            };
            if w <= 0.0 {
                continue;
            }
            let value = *f as f64;
            let next = if (*seen as f64) < first_weight {
                if target.is_finite() {
                    value + w / (*seen as f64 + w) * (target - value)
                } else {
                    value
                }
            } else if multiplicative {
                if unit > 1e-9 {
                    value + rate * w * r_clean / unit
                } else {
                    value
                }
            } else {
                value + rate * w * r_clean
            };
            *f = if multiplicative {
                next.clamp(0.0, 1e3) as f32
            } else {
                next as f32
            };
            *seen = (*seen + w as f32).min(1e6);
        }
    }

    fn make_additive(&mut self, level: f64) {
        for f in &mut self.factor {
            *f = (level * (*f as f64 - 1.0)) as f32;
        }
    }
}

#[inline]
fn interp(values: &[f32], p: Phase, neutral: f64) -> f64 {
    match (values.get(p.b0), values.get(p.b1)) {
        (Some(&a), Some(&b)) => a as f64 * (1.0 - p.w1) + b as f64 * p.w1,
        _ => neutral,
    }
}

/// A model's forecast of one bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forecast {
    pub expected: f64,
    /// Scales above and below the expectation at this phase, floored.
    pub sigma_up: f64,
    pub sigma_down: f64,
    /// Seasonal factor (or offset) at this phase, both profiles combined.
    pub season: f64,
    main: f64,
    inner: f64,
    /// Relative phase scale at this phase.
    pub phase_scale: f64,
    phase: Phase,
    inner_phase: Phase,
}

impl Forecast {
    /// The scale on the side of residual `r`.
    #[inline]
    pub fn sigma(&self, r: f64) -> f64 {
        if r >= 0.0 {
            self.sigma_up
        } else {
            self.sigma_down
        }
    }
}

/// Smoothing rates of one model, derived from the configuration once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Rates {
    pub level: f64,
    pub scale: f64,
    /// Per unit of bin weight, from the per-cycle rates.
    pub season_visit: f64,
    pub inner_visit: f64,
    pub phase_scale_visit: f64,
    /// Weight a main bin receives in one cycle (buckets per cycle / bins).
    pub cycle_weight: f64,
    pub error: f64,
    pub huber_k: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SeasonalModel {
    /// Period in seconds; 0 for the flat model.
    pub period: i64,
    main: Profile,
    /// The shorter period's profile inside this one (the day inside the week).
    inner: Option<Profile>,
    /// Relative scale per main bin (geometric mean kept at 1).
    phase_scale: Vec<f32>,
    pub level: f64,
    /// Scales of positive and negative residuals: usage noise is skewed (a burst can
    /// triple a bucket, nothing can make it negative), so each side gets its own.
    pub scale_up: RobustScale,
    pub scale_down: RobustScale,
    /// Lag-1 autocorrelation of the clipped standardised residuals (numerator and
    /// denominator of its exponential average, and the previous residual).
    ac_num: f64,
    ac_den: f64,
    prev_u: f64,
    /// Forecast error (EWMA of the clipped absolute residual) that ranks the models.
    pub error: f64,
    /// Whether every bin has been visited: only then does the model compete.
    pub eligible: bool,
    /// Sums over the open episode, to re-anchor the level if the episode becomes normal.
    acc_value: f64,
    acc_season: f64,
    acc_value2: f64,
    acc_cross: f64,
    acc_season2: f64,
    acc_n: f64,
    /// Sum of this model's z over the episode, signed in the episode's direction: only a
    /// model that found the episode abnormal too is re-anchored to it.
    acc_z: f64,
    /// This model was re-anchored and has a previous baseline to return to.
    pub reanchored: bool,
    /// Level and scale before the last re-anchoring, to recognise a return to them.
    pub prev_level: f64,
    pub prev_sigma: f64,
}

impl SeasonalModel {
    /// `bins == 0` makes the flat model; `inner` is a shorter period and its bins.
    pub fn new(
        period: i64,
        bins: usize,
        multiplicative: bool,
        inner: Option<(i64, usize)>,
    ) -> Self {
        SeasonalModel {
            period,
            main: Profile::new(period, bins, multiplicative),
            inner: inner.map(|(p, b)| Profile::new(p, b, multiplicative)),
            phase_scale: vec![1.0; bins],
            level: 0.0,
            scale_up: RobustScale::new(0.0),
            scale_down: RobustScale::new(0.0),
            ac_num: 0.0,
            ac_den: 0.0,
            prev_u: 0.0,
            error: 0.0,
            eligible: bins == 0,
            acc_value: 0.0,
            acc_season: 0.0,
            acc_value2: 0.0,
            acc_cross: 0.0,
            acc_season2: 0.0,
            acc_n: 0.0,
            acc_z: 0.0,
            reanchored: false,
            prev_level: 0.0,
            prev_sigma: 0.0,
        }
    }

    pub fn seed(&mut self, level: f64, sigma: f64) {
        self.level = level;
        self.scale_up = RobustScale::new(sigma);
        self.scale_down = RobustScale::new(sigma);
        // Mean absolute deviation of a normal is 0.8 σ.
        self.error = 0.8 * sigma;
    }

    /// Called before each bucket: when a period wraps, renormalise its profile into the
    /// level (and the phase scales into the scale), so that level and profiles cannot
    /// drift against each other.
    pub fn roll(&mut self, start: i64, multiplicative: bool) {
        if let Some(inner) = self.inner.as_mut() {
            if let Some(m) = inner.roll(start, multiplicative) {
                fold(&mut self.level, m, multiplicative);
            }
        }
        let Some(m) = self.main.roll(start, multiplicative) else {
            return;
        };
        fold(&mut self.level, m, multiplicative);
        let n = self.phase_scale.len().max(1) as f64;
        let gm = (self
            .phase_scale
            .iter()
            .map(|&s| (s as f64).ln())
            .sum::<f64>()
            / n)
            .exp();
        for s in &mut self.phase_scale {
            *s = (*s as f64 / gm) as f32;
        }
        self.scale_up.sigma *= gm;
        self.scale_down.sigma *= gm;
        self.eligible = self.main.all_seen() && self.inner.as_ref().is_none_or(Profile::all_seen);
    }

    pub fn forecast(
        &self,
        start: i64,
        interval: i64,
        multiplicative: bool,
        floor: f64,
    ) -> Forecast {
        let neutral = if multiplicative { 1.0 } else { 0.0 };
        let phase = self.main.phase(start, interval);
        let main = self.main.value(phase, neutral);
        let (inner, inner_phase) = match &self.inner {
            Some(p) => {
                let ph = p.phase(start, interval);
                (p.value(ph, neutral), ph)
            }
            None => (neutral, Phase::default()),
        };
        let (season, expected) = if multiplicative {
            (main * inner, self.level * main * inner)
        } else {
            (main + inner, self.level + main + inner)
        };
        let phase_scale = interp(&self.phase_scale, phase, 1.0);
        Forecast {
            expected,
            sigma_up: (self.scale_up.sigma * phase_scale).max(floor),
            sigma_down: (self.scale_down.sigma * phase_scale).max(floor),
            season,
            main,
            inner,
            phase_scale,
            phase,
            inner_phase,
        }
    }

    /// Learns from value `x`. The profiles always learn (robustly), so a weekly rhythm
    /// can be discovered even while its first weekend is an open episode; level, scale
    /// and error learn only when `learn_baseline` (no open episode, nothing suspect).
    #[allow(clippy::too_many_arguments)]
    pub fn learn(
        &mut self,
        x: f64,
        fc: &Forecast,
        rates: &Rates,
        multiplicative: bool,
        learn_baseline: bool,
        floor: f64,
        error_clip: f64,
    ) {
        let r = x - fc.expected;
        let sigma = fc.sigma(r);
        let u = r / sigma;
        let u_clean = huber(u, rates.huber_k);
        let r_clean = u_clean * sigma;
        // The forecast error learns from every bucket, episodes included: a model whose
        // misses all open episodes (and are then excused) must not look accurate.
        self.error += rates.error * (r.abs().min(error_clip) - self.error);
        if learn_baseline {
            self.level += rates.level * r_clean;
            let ps = fc.phase_scale.max(1e-6);
            // Each side sees about half the residuals: twice the rate keeps the memory.
            let side = if r >= 0.0 {
                &mut self.scale_up
            } else {
                &mut self.scale_down
            };
            side.update(r / ps, (2.0 * rates.scale).min(1.0), floor / ps);
            self.ac_num += rates.error * (u_clean * self.prev_u - self.ac_num);
            self.ac_den += rates.error * (u_clean * u_clean - self.ac_den);
            self.prev_u = u_clean;
        }
        if self.main.is_empty() {
            return;
        }
        let level = self.level;
        let unit = |other: f64| if multiplicative { level * other } else { 1.0 };
        // What a profile's bin would be if it alone explained x, the other profile and
        // the level being right.
        let target = |other: f64| {
            if multiplicative {
                if level * other > 1e-9 {
                    x / (level * other)
                } else {
                    f64::NAN
                }
            } else {
                x - level - other
            }
        };
        // The outer profile of a double-seasonal model waits for the inner one to have
        // seen a full cycle, then learns its whole first cycle as a plain mean: it only
        // has to capture a deviation from a shape that is already there.
        let main_first = match self.inner.as_mut() {
            Some(inner) => {
                inner.learn(
                    fc.inner_phase,
                    rates.inner_visit,
                    1.0,
                    target(fc.main),
                    r_clean,
                    unit(fc.main),
                    multiplicative,
                );
                if !inner.all_seen() {
                    return;
                }
                rates.cycle_weight
            }
            None => 1.0,
        };
        let p = fc.phase;
        let first = |b: usize| {
            self.main
                .seen
                .get(b)
                .is_none_or(|&s| (s as f64) < main_first)
        };
        let (first0, first1) = (first(p.b0), first(p.b1));
        self.main.learn(
            p,
            rates.season_visit,
            main_first,
            target(fc.inner),
            r_clean,
            unit(fc.inner),
            multiplicative,
        );
        if learn_baseline {
            for (b, w, fresh) in [(p.b0, 1.0 - p.w1, first0), (p.b1, p.w1, first1)] {
                let Some(ps) = self.phase_scale.get_mut(b) else {
                    continue;
                };
                if fresh || w <= 0.0 {
                    continue;
                }
                let g = rates.phase_scale_visit * w;
                // Squared residual capped at 3²: less bounded than the biweight, so a
                // phase that is noisy every day (a nightly batch) is learned in days.
                let var = (*ps as f64).powi(2) * (1.0 - g + g * (u * u).min(9.0));
                *ps = var.sqrt().clamp(0.05, 20.0) as f32;
            }
        }
    }

    /// Episode bookkeeping: remember what the episode looks like deseasonalised.
    pub fn start_episode(&mut self) {
        self.acc_value = 0.0;
        self.acc_season = 0.0;
        self.acc_value2 = 0.0;
        self.acc_cross = 0.0;
        self.acc_season2 = 0.0;
        self.acc_n = 0.0;
        self.acc_z = 0.0;
    }

    /// `z_signed`: this model's z at the bucket, positive in the episode's direction.
    pub fn accumulate(&mut self, x: f64, fc: &Forecast, z_signed: f64) {
        self.acc_z += z_signed;
        self.acc_value += x;
        self.acc_season += fc.season;
        self.acc_value2 += x * x;
        self.acc_cross += x * fc.season;
        self.acc_season2 += fc.season * fc.season;
        self.acc_n += 1.0;
    }

    /// Lag-1 autocorrelation of the residuals, in [0, 0.95].
    pub fn autocorrelation(&self) -> f64 {
        if self.ac_den > 0.0 {
            (self.ac_num / self.ac_den).clamp(0.0, 0.95)
        } else {
            0.0
        }
    }

    /// The episode lasted: its deseasonalised level becomes the baseline, and the
    /// spread of the episode around it the scale (least squares over the episode: it
    /// has `adapt_after` buckets, and a scale that is too wide errs on the quiet side).
    /// `keep_prev`: the level being replaced was itself a re-anchoring: remember the
    /// one before it, the last established normal.
    pub fn reanchor(&mut self, multiplicative: bool, floor: f64, keep_prev: bool, z_continue: f64) {
        let n = self.acc_n;
        if n < 2.0 || self.acc_z / n < z_continue || !self.eligible {
            // This model forecast the episode well enough, or is still learning its
            // first cycle (its forecast proves nothing yet): nothing to adopt.
            return;
        }
        let (new_level, rss) = if multiplicative && self.acc_season > 1e-9 {
            let l = self.acc_value / self.acc_season;
            let rss = self.acc_value2 - 2.0 * l * self.acc_cross + l * l * self.acc_season2;
            (l, rss)
        } else if multiplicative {
            let l = self.acc_value / n;
            (l, self.acc_value2 - n * l * l)
        } else {
            // Offsets: d = x − s, Σd² = Σx² − 2Σxs + Σs².
            let sum_d = self.acc_value - self.acc_season;
            let sum_d2 = self.acc_value2 - 2.0 * self.acc_cross + self.acc_season2;
            let l = sum_d / n;
            (l, sum_d2 - n * l * l)
        };
        let sigma = (rss.max(0.0) / (n - 1.0)).sqrt().max(floor);
        if !(keep_prev && self.reanchored) {
            self.prev_level = self.level;
            self.prev_sigma = self.sigma();
        }
        self.reanchored = true;
        self.level = new_level;
        self.scale_up = RobustScale::new(sigma);
        self.scale_down = RobustScale::new(sigma);
    }

    /// Typical scale (geometric mean of the two sides).
    pub fn sigma(&self) -> f64 {
        (self.scale_up.sigma * self.scale_down.sigma).sqrt()
    }

    /// A series seeded as never negative went negative: it is not a count, so its
    /// season becomes additive (`level × (factor − 1)` as offsets), once.
    pub fn make_additive(&mut self) {
        self.main.make_additive(self.level);
        if let Some(inner) = self.inner.as_mut() {
            inner.make_additive(self.level);
        }
        self.acc_season = 0.0;
        self.acc_cross = 0.0;
        self.acc_season2 = 0.0;
    }

    /// Goes back to the level and scale before the last re-anchoring.
    pub fn revert(&mut self) {
        if !self.reanchored {
            return;
        }
        self.reanchored = false;
        self.level = self.prev_level;
        self.scale_up = RobustScale::new(self.prev_sigma);
        self.scale_down = RobustScale::new(self.prev_sigma);
    }

    pub fn previous_forecast(&self, fc: &Forecast, multiplicative: bool, floor: f64) -> (f64, f64) {
        let expected = if multiplicative {
            self.prev_level * fc.season
        } else {
            self.prev_level + fc.season
        };
        (expected, (self.prev_sigma * fc.phase_scale).max(floor))
    }
}

fn fold(level: &mut f64, m: f64, multiplicative: bool) {
    if multiplicative {
        *level *= m;
    } else {
        *level += m;
    }
}
