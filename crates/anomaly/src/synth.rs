//! A synthetic, labelled usage benchmark: many tenants with daily and weekly rhythm in
//! their own time zone, count noise (Poisson, negative binomial) and real-valued
//! Gaussian noise with autocorrelation, trends, nightly batch jobs, natural bursts,
//! sparse tenants, new tenants, and injected anomalies with labelled windows.
//!
//! The generator knows nothing of the detector: magnitudes are set by what a person
//! would call an incident (a leaked key adds 2-10x the tenant's average traffic, an
//! outage silences it), and windows only where the anomaly is observable at all (a
//! drop is only injected where the tenant is normally active). Seeded: same seed, same
//! data, on every machine. The PRNG is SplitMix64 (Steele, Lea & Flood 2014), written
//! here because a benchmark generator needs nothing more and the crate stays
//! dependency-free.

use crate::input::{Bucket, Quota};
use crate::kinds::Kind;

/// Monday 2026-01-05 00:00 UTC.
pub const EPOCH: i64 = 1_767_571_200;

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    pub fn log_range(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.uniform()).exp()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Poisson: multiplication method for small means, normal approximation above 40.
    pub fn poisson(&mut self, mean: f64) -> f64 {
        if mean <= 0.0 {
            return 0.0;
        }
        if mean > 40.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0);
        }
        let limit = (-mean).exp();
        let mut k = 0.0;
        let mut p = self.uniform();
        while p > limit {
            k += 1.0;
            p *= self.uniform();
        }
        k
    }

    /// Gamma(shape, 1) (Marsaglia & Tsang 2000).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.uniform().max(1e-300);
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Negative binomial with the given mean and dispersion `r` (variance μ + μ²/r),
    /// as a gamma-Poisson mixture.
    pub fn neg_binomial(&mut self, mean: f64, r: f64) -> f64 {
        if mean <= 0.0 {
            return 0.0;
        }
        if !r.is_finite() {
            return self.poisson(mean);
        }
        let lambda = self.gamma(r) * mean / r;
        self.poisson(lambda)
    }
}

/// A labelled window `[start, end)` in bucket indices of its series.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub start: usize,
    pub end: usize,
    /// What was injected: spike, drop, silence, level_up, level_down, denial_storm,
    /// plan_burn (or `window` for labels read from a file).
    pub kind: &'static str,
    /// The detector kind that names it, when known.
    pub expect: Option<Kind>,
}

/// One tenant's series with its labels.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub archetype: &'static str,
    pub interval_secs: i64,
    pub buckets: Vec<Bucket>,
    pub labels: Vec<Label>,
}

#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub seed: u64,
    pub tenants: usize,
    pub weeks: usize,
    pub interval_secs: i64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 42,
            tenants: 200,
            weeks: 4,
            interval_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Archetype {
    /// Office hours on weekdays, quiet nights and weekends; some run a nightly batch.
    Business,
    /// Round the clock, mild daily wave.
    AlwaysOn,
    /// A few requests an hour: mostly zeros.
    Sparse,
    /// Real-valued meter (GB-hours, a gauge): Gaussian AR(1) noise, may go negative.
    Gauge,
    /// Always-on with natural short bursts.
    Bursty,
}

impl Archetype {
    fn name(self) -> &'static str {
        match self {
            Archetype::Business => "business",
            Archetype::AlwaysOn => "always_on",
            Archetype::Sparse => "sparse",
            Archetype::Gauge => "gauge",
            Archetype::Bursty => "bursty",
        }
    }
}

/// A tenant's normal behaviour.
struct Tenant {
    archetype: Archetype,
    /// Average rate (counts) or mean (gauge) per bucket.
    base: f64,
    /// Daily wave amplitude (always-on, gauge).
    amplitude: f64,
    tz_hours: f64,
    weekend: f64,
    growth_per_week: f64,
    /// Negative binomial dispersion; infinite means Poisson.
    dispersion: f64,
    /// Gauge noise: standard deviation and AR(1) coefficient.
    noise_sd: f64,
    ar: f64,
    batch: Option<(f64, f64)>,
    deny_share: f64,
}

impl Tenant {
    fn random(rng: &mut Rng) -> Tenant {
        let roll = rng.uniform();
        let archetype = if roll < 0.40 {
            Archetype::Business
        } else if roll < 0.62 {
            Archetype::AlwaysOn
        } else if roll < 0.77 {
            Archetype::Sparse
        } else if roll < 0.92 {
            Archetype::Gauge
        } else {
            Archetype::Bursty
        };
        let base = match archetype {
            Archetype::Business => rng.log_range(3.0, 2000.0),
            Archetype::AlwaysOn | Archetype::Bursty => rng.log_range(2.0, 5000.0),
            Archetype::Sparse => rng.log_range(0.02, 1.0),
            Archetype::Gauge => rng.range(-20.0, 300.0),
        };
        let deny_roll = rng.uniform();
        let deny_share = if deny_roll < 0.6 {
            0.001
        } else if deny_roll < 0.9 {
            rng.range(0.005, 0.05)
        } else {
            rng.range(0.1, 0.3)
        };
        Tenant {
            archetype,
            base,
            amplitude: rng.range(0.0, 0.5),
            tz_hours: rng.below(24) as f64,
            weekend: match archetype {
                Archetype::Business | Archetype::Sparse => rng.range(0.15, 0.5),
                _ => rng.range(0.75, 1.0),
            },
            growth_per_week: rng.range(-0.03, 0.12),
            dispersion: if rng.chance(0.3) {
                f64::INFINITY
            } else {
                rng.range(8.0, 100.0)
            },
            noise_sd: rng.range(1.0, 8.0),
            ar: rng.range(0.0, 0.8),
            batch: (archetype == Archetype::Business && rng.chance(0.3))
                .then(|| (rng.range(0.0, 6.0), rng.range(1.0, 3.0))),
            deny_share,
        }
    }

    fn counts(&self) -> bool {
        self.archetype != Archetype::Gauge
    }

    /// Expected value at bucket start `t` (no noise, no anomaly).
    fn mean(&self, t: i64, since_start_weeks: f64) -> f64 {
        let local = t as f64 + self.tz_hours * 3600.0;
        let hour = (local / 3600.0).rem_euclid(24.0);
        let weekday = ((local / 86_400.0).floor() as i64).rem_euclid(7); // 0 = Monday
        let weekend = weekday >= 5;
        let growth = (1.0 + self.growth_per_week).powf(since_start_weeks);
        let wave =
            |phase_hour: f64| (2.0 * std::f64::consts::PI * (hour - phase_hour) / 24.0).cos();
        match self.archetype {
            Archetype::Business | Archetype::Sparse => {
                let office = if (7.0..19.0).contains(&hour) {
                    (std::f64::consts::PI * (hour - 7.0) / 12.0).sin().powf(1.5)
                } else {
                    0.0
                };
                // Average of the shape over a day is about 0.35: scale to `base`.
                let mut m = self.base * (0.08 + 0.92 * office) / 0.35;
                if weekend {
                    m *= self.weekend;
                }
                if let Some((at, size)) = self.batch {
                    if hour >= at && hour < at + 0.25 {
                        m += size * self.base;
                    }
                }
                m * growth
            }
            Archetype::AlwaysOn | Archetype::Bursty => {
                let w = if weekend { self.weekend } else { 1.0 };
                self.base * (1.0 + self.amplitude * wave(15.0)) * w * growth
            }
            Archetype::Gauge => {
                let scale = self.base.abs().max(10.0);
                self.base + self.amplitude * scale * wave(14.0) + 0.02 * scale * since_start_weeks
            }
        }
    }
}

/// Injected anomaly effects over a span of buckets.
#[derive(Debug, Clone, Copy)]
enum Effect {
    /// Adds `extra` to the mean.
    Add(f64),
    /// Multiplies the mean.
    Scale(f64),
    /// Denied share and request inflation.
    Deny(f64, f64),
}

/// Generates the benchmark.
pub fn generate(cfg: &SynthConfig) -> Vec<Series> {
    let mut rng = Rng::new(cfg.seed);
    let per_week = (7 * 86_400 / cfg.interval_secs.max(1)) as usize;
    let per_day = per_week / 7;
    let total = per_week * cfg.weeks;
    let mut out = Vec::with_capacity(cfg.tenants);
    for id in 0..cfg.tenants {
        let tenant = Tenant::random(&mut rng);
        // 15 % of tenants sign up during the run.
        let is_new = rng.chance(0.15) && total > 10 * per_day;
        let first = if is_new {
            (per_day * 7 + rng.below((total - 9 * per_day) as u64) as usize) / per_day * per_day
                + rng.below(per_day as u64) as usize
        } else {
            0
        };
        let len = total - first;
        let start_t = EPOCH + first as i64 * cfg.interval_secs;
        let mut means: Vec<f64> = (0..len)
            .map(|i| {
                let t = start_t + i as i64 * cfg.interval_secs;
                tenant.mean(t, i as f64 / per_week as f64)
            })
            .collect();
        let average = means.iter().map(|m| m.abs()).sum::<f64>() / len.max(1) as f64;
        let mut effects: Vec<Option<Effect>> = vec![None; len];
        let mut labels = Vec::new();

        // Anomalies, after a week of history, spaced 1.5-5 days apart.
        let mut at = 7 * per_day + (rng.uniform() * 2.0 * per_day as f64) as usize;
        let mut shifted = false;
        while !is_new && at + 2 * per_day < len {
            inject(
                &mut rng,
                &tenant,
                &mut means,
                &mut effects,
                &mut labels,
                at,
                average,
                &mut shifted,
            );
            at += (rng.range(1.5, 5.0) * per_day as f64) as usize;
        }

        // Plans: a 30-day period from sign-up. Half the new tenants burn through it.
        let expected_30d = average * 30.0 * per_day as f64;
        let burner = is_new && tenant.counts() && average >= 1.0 && rng.chance(0.5);
        let limit = if burner {
            labels.push(Label {
                start: 0,
                end: per_day.min(len),
                kind: "plan_burn",
                expect: Some(Kind::PlanBurn),
            });
            expected_30d * rng.range(0.15, 0.4)
        } else {
            expected_30d * rng.range(2.0, 5.0)
        };
        let period_end = start_t + 30 * 86_400;

        let mut buckets = Vec::with_capacity(len);
        let mut ar_state = 0.0;
        let mut burst_left = 0u32;
        let mut burst_size = 1.0;
        let mut used = 0.0;
        for (i, &mean) in means.iter().enumerate() {
            let t = start_t + i as i64 * cfg.interval_secs;
            let mut m = mean;
            if tenant.archetype == Archetype::Bursty {
                if burst_left == 0 && rng.chance(1.0 / per_day as f64) {
                    burst_left = 1 + rng.below(3) as u32;
                    burst_size = rng.range(1.5, 2.5);
                }
                if burst_left > 0 {
                    m *= burst_size;
                    burst_left -= 1;
                }
            }
            let mut deny = (tenant.deny_share, 1.0);
            match effects[i] {
                Some(Effect::Add(extra)) => m += extra,
                Some(Effect::Scale(f)) => m *= f,
                Some(Effect::Deny(share, inflate)) => deny = (share, inflate),
                None => {}
            }
            let value = if tenant.counts() {
                rng.neg_binomial(m.max(0.0), tenant.dispersion)
            } else {
                ar_state = tenant.ar * ar_state
                    + tenant.noise_sd * (1.0 - tenant.ar * tenant.ar).sqrt() * rng.normal();
                // Real-valued: keep three decimals, like a meter exporting GB-hours.
                ((m + ar_state) * 1000.0).round() / 1000.0
            };
            used += value.max(0.0);
            let mut bucket = Bucket::new(t, value).with_quota(Quota {
                limit,
                period_start: start_t,
                period_end,
                used: Some(used),
            });
            if tenant.counts() {
                let total = (value * deny.1).round().max(value);
                let denied = rng.poisson(total * deny.0).min(total);
                bucket = bucket.with_requests(total, denied);
            }
            buckets.push(bucket);
        }
        labels.sort_by_key(|l| l.start);
        out.push(Series {
            name: format!("tenant-{id:03}"),
            archetype: tenant.archetype.name(),
            interval_secs: cfg.interval_secs,
            buckets,
            labels,
        });
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn inject(
    rng: &mut Rng,
    tenant: &Tenant,
    means: &mut [f64],
    effects: &mut [Option<Effect>],
    labels: &mut Vec<Label>,
    at: usize,
    average: f64,
    shifted: &mut bool,
) {
    let len = means.len();
    let gauge = !tenant.counts();
    let noise = if gauge { tenant.noise_sd } else { 0.0 };
    let roll = rng.uniform();
    // Where the tenant is "normally active": mean over the next hour.
    let active = |from: usize, means: &[f64]| {
        let to = (from + 12).min(means.len());
        means[from..to].iter().sum::<f64>() / (to - from).max(1) as f64
    };
    if roll < 0.33 {
        // Spike: a leaked key or a retry loop adds traffic on top of the normal.
        let dur = 1 + (rng.uniform().powi(2) * 36.0) as usize;
        let extra = if gauge {
            rng.range(6.0, 15.0) * noise
        } else {
            rng.log_range(2.0, 10.0) * average.max(2.0)
        };
        for e in effects.iter_mut().skip(at).take(dur) {
            *e = Some(Effect::Add(extra));
        }
        labels.push(Label {
            start: at,
            end: (at + dur.max(6)).min(len),
            kind: "spike",
            expect: Some(Kind::Spike),
        });
    } else if roll < 0.58 {
        // Drop or silence, where the tenant is normally active.
        let Some(start) = (0..24)
            .map(|k| at + k * 6)
            .find(|&s| s + 12 < len && (gauge || active(s, means) >= 5.0))
        else {
            return;
        };
        let dur = 12 + rng.below(133) as usize;
        let silence = !gauge && rng.chance(0.4);
        let effect = if gauge {
            Effect::Add(-rng.range(6.0, 15.0) * noise)
        } else if silence {
            Effect::Scale(0.0)
        } else {
            Effect::Scale(rng.range(0.05, 0.4))
        };
        for e in effects.iter_mut().skip(start).take(dur) {
            *e = Some(effect);
        }
        labels.push(Label {
            start,
            end: (start + 12).min(len),
            kind: if silence { "silence" } else { "drop" },
            expect: Some(Kind::Drop),
        });
    } else if roll < 0.80 && !gauge {
        // Denial storm, where there is traffic to deny.
        let Some(start) = (0..24)
            .map(|k| at + k * 6)
            .find(|&s| s + 12 < len && active(s, means) >= 5.0)
        else {
            return;
        };
        let dur = 3 + rng.below(34) as usize;
        let share = rng.range((tenant.deny_share + 0.25).max(0.3), 0.95);
        let inflate = rng.range(1.0, 2.5);
        for e in effects.iter_mut().skip(start).take(dur) {
            *e = Some(Effect::Deny(share, inflate));
        }
        labels.push(Label {
            start,
            end: (start + dur.max(6)).min(len),
            kind: "denial_storm",
            expect: Some(Kind::DenialStorm),
        });
    } else if !*shifted && (gauge || average >= 3.0) {
        // Persistent level shift: a customer that grew or shrank. Only its onset is an
        // anomaly; the new level is the new normal.
        *shifted = true;
        let up = rng.chance(0.5);
        if gauge {
            let delta = rng.range(5.0, 10.0) * noise * if up { 1.0 } else { -1.0 };
            for m in means.iter_mut().skip(at) {
                *m += delta;
            }
        } else {
            let f = if up {
                rng.range(1.7, 3.0)
            } else {
                rng.range(0.35, 0.6)
            };
            for m in means.iter_mut().skip(at) {
                *m *= f;
            }
        }
        labels.push(Label {
            start: at,
            end: (at + 12).min(len),
            kind: if up { "level_up" } else { "level_down" },
            expect: Some(if up { Kind::Spike } else { Kind::Drop }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data() {
        let cfg = SynthConfig {
            tenants: 5,
            weeks: 2,
            ..SynthConfig::default()
        };
        let a = generate(&cfg);
        let b = generate(&cfg);
        assert_eq!(a.len(), 5);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.buckets, y.buckets);
            assert_eq!(x.labels, y.labels);
        }
    }

    #[test]
    fn poisson_and_neg_binomial_have_their_mean() {
        let mut rng = Rng::new(7);
        let n = 20_000;
        let p = (0..n).map(|_| rng.poisson(3.5)).sum::<f64>() / n as f64;
        assert!((p - 3.5).abs() < 0.1, "{p}");
        let nb = (0..n).map(|_| rng.neg_binomial(50.0, 10.0)).sum::<f64>() / n as f64;
        assert!((nb - 50.0).abs() < 1.5, "{nb}");
    }
}
