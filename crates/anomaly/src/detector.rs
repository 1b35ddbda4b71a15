//! The detector of one series: seeds a robust baseline, keeps competing seasonal
//! models, judges each closed bucket against what came before it, and turns the
//! judgements into episodes with one alert each.

use serde::{Deserialize, Serialize};

use crate::changepoint::{Cusum, Direction};
use crate::config::Config;
use crate::denial::DenialChannel;
use crate::episode::{Episode, Step};
use crate::input::Bucket;
use crate::kinds::{Alerts, Anomaly, Judgement, Kind, Verdict};
use crate::plan::PlanChannel;
use crate::robust::{median_and_scale, neg_log10_normal_cdf};
use crate::seasonal::{Forecast, Rates, SeasonalModel};

/// The flat model plus at most this many seasonal periods.
const MAX_MODELS: usize = 4;
/// A model whose forecast error is within this factor of the chosen model's may veto
/// an alarm: a bucket is anomalous only if every competitive model says so (this is what
/// keeps the first weekend after the weekly model has learned one from alarming).
const VETO_MARGIN: f64 = 1.25;
/// A bucket within this many of the previous baseline's scales of it is a return to
/// that baseline (the usual 3σ band).
const RETURN_Z: f64 = 3.0;
/// A seasonal model's level smoothing is at most this many per period.
const LEVEL_CYCLES: f64 = 4.0;
/// Hysteresis of the model choice.
const SWITCH_MARGIN: f64 = 0.95;

/// Online anomaly detector for one series (one tenant and meter). Feed it the series'
/// closed buckets in order with [`Detector::observe`]; the whole state is serialisable,
/// and a detector restored from it continues exactly as if it had never stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    config: Config,
    state: State,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    /// Buckets observed (judged or seeding).
    count: u64,
    last_start: Option<i64>,
    last_value: f64,
    /// Smallest non-zero change seen between consecutive buckets: the data's own
    /// resolution (1 for counts), a floor for the scale.
    quantum: f64,
    /// Every value so far was exactly zero.
    all_zero: bool,
    /// Every value so far was a non-negative integer: a count.
    integral: bool,
    /// Values kept to seed the baseline; emptied once seeded.
    seed: Vec<f64>,
    seeded: bool,
    multiplicative: bool,
    models: Vec<SeasonalModel>,
    rates: Vec<Rates>,
    cusums: Vec<Cusum>,
    selected: usize,
    /// Evidence (decimal digits) of the current run of exact zeros: a silence.
    silence: f64,
    silence_start: i64,
    episode: Episode,
    /// When the baseline was last re-anchored to a persisting episode. Until it has
    /// lasted the longest candidate period, the established baseline before it is
    /// remembered (in the models), and a bucket back at that baseline is a recovery,
    /// not a new alarm.
    provisional_since: Option<u64>,
    denial: DenialChannel,
    plan: PlanChannel,
}

impl Detector {
    pub fn new(config: Config) -> Self {
        let seed = Vec::with_capacity(config.warmup_buckets.max(1) as usize);
        Detector {
            config,
            state: State {
                count: 0,
                last_start: None,
                last_value: 0.0,
                quantum: 0.0,
                all_zero: true,
                integral: true,
                seed,
                seeded: false,
                multiplicative: true,
                models: Vec::new(),
                rates: Vec::new(),
                cusums: Vec::new(),
                selected: 0,
                silence: 0.0,
                silence_start: 0,
                episode: Episode::default(),
                provisional_since: None,
                denial: DenialChannel::default(),
                plan: PlanChannel::default(),
            },
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The chosen baseline's period in seconds (0: no seasonality), once seeded.
    pub fn period(&self) -> Option<i64> {
        let s = &self.state;
        s.seeded
            .then(|| s.models.get(s.selected).map_or(0, |m| m.period))
    }

    /// Judges one closed bucket, then learns from it.
    pub fn observe(&mut self, bucket: &Bucket) -> Judgement {
        let x = bucket.value;
        let start = bucket.start;
        let mut judgement = Judgement {
            bucket: start,
            expected: x,
            observed: x,
            score: 0.0,
            verdict: Verdict::Skipped,
            alerts: Alerts::default(),
        };
        if !x.is_finite() || self.state.last_start.is_some_and(|last| start <= last) {
            return judgement;
        }
        let s = &mut self.state;
        let change = if s.count > 0 {
            (x - s.last_value).abs()
        } else {
            0.0
        };
        s.last_start = Some(start);
        s.last_value = x;
        s.count += 1;

        if let Some(requests) = bucket.requests {
            if let Some(a) = s.denial.observe(start, requests, &self.config) {
                judgement.alerts.push(a);
            }
        }

        let verdict = self.judge_value(start, x, &mut judgement);

        let s = &mut self.state;
        // The resolution is learned after judging: the bucket that first moves a
        // constant series is judged against the series as it was (a meter stuck at 5.0
        // that reads 6.0 is news), except that the first non-zero of an all-zero series
        // defines the resolution rather than alarming (see `judge_value`).
        if change > 0.0 && (s.quantum == 0.0 || change < s.quantum) {
            s.quantum = change;
        }
        s.all_zero &= x == 0.0;
        s.integral &= x >= 0.0 && x.fract() == 0.0;
        if let Some(quota) = bucket.quota {
            if let Some(a) = s.plan.observe(start, x, quota, &self.config) {
                judgement.alerts.push(a);
            }
        }
        judgement.verdict = match verdict {
            Verdict::Anomalous(_) | Verdict::Warmup => verdict,
            _ if s.denial.episode.is_open() => Verdict::Anomalous(Kind::DenialStorm),
            _ if s.plan.episode.is_open() => Verdict::Anomalous(Kind::PlanBurn),
            _ => verdict,
        };
        judgement
    }

    fn judge_value(&mut self, start: i64, x: f64, judgement: &mut Judgement) -> Verdict {
        let cfg = &self.config;
        let s = &mut self.state;
        if !s.seeded {
            s.seed.push(x);
            if s.seed.len() >= cfg.warmup_buckets.max(1) as usize {
                seed(cfg, s);
            }
            return Verdict::Warmup;
        }
        if s.multiplicative && x < 0.0 {
            s.multiplicative = false;
            for model in &mut s.models {
                model.make_additive();
            }
        }
        let mult = s.multiplicative;
        // An all-zero series has no scale to judge its first non-zero against: that
        // value sets the resolution instead.
        let first_nonzero = if s.all_zero { x.abs() } else { 0.0 };
        let floor = s
            .quantum
            .max(first_nonzero)
            .max(cfg.abs_scale_floor)
            .max(1e-12);
        let learning = s.count < cfg.learning_buckets as u64;
        let threshold = if learning {
            cfg.z_alarm * cfg.learning_z_factor
        } else {
            cfg.z_alarm
        };

        // Forecast with every model (fixed-size, no allocation).
        // (Lengths agree by construction; a hand-edited state must not index out.)
        let n = s
            .models
            .len()
            .min(s.cusums.len())
            .min(s.rates.len())
            .min(MAX_MODELS);
        let mut fcs: [Option<Forecast>; MAX_MODELS] = [None; MAX_MODELS];
        let mut zs = [0.0f64; MAX_MODELS];
        let mut triggers: [Option<(Direction, i64)>; MAX_MODELS] = [None; MAX_MODELS];
        for m in 0..n {
            let model = &mut s.models[m];
            model.roll(start, mult);
            let mut fc = model.forecast(start, cfg.interval_secs, mult, floor);
            let rel_floor = cfg.rel_scale_floor * fc.expected.abs();
            fc.sigma_up = fc.sigma_up.max(rel_floor);
            fc.sigma_down = fc.sigma_down.max(rel_floor);
            let z = (x - fc.expected) / fc.sigma(x - fc.expected);
            zs[m] = z;
            fcs[m] = Some(fc);
            let cusum = &mut s.cusums[m];
            if !learning && !s.episode.is_open() {
                // Autocorrelated residuals add up faster than independent ones: scale
                // the CUSUM's input by the long-run standard deviation of an AR(1)
                // process, √((1−φ)/(1+φ)), so its false-alarm rate does not depend on
                // how smooth the series is.
                let phi = model.autocorrelation();
                let long_run = ((1.0 - phi) / (1.0 + phi)).sqrt();
                cusum.update(z * long_run, threshold, cfg.cusum_k, start);
            }
            triggers[m] = if z >= threshold {
                Some((Direction::Up, start))
            } else if z <= -threshold {
                Some((Direction::Down, start))
            } else if learning {
                None
            } else {
                cusum.alarm(cfg.cusum_h)
            };
        }
        let sel = s.selected.min(n.saturating_sub(1));
        let Some(fc_sel) = fcs[sel] else {
            return Verdict::Normal;
        };
        // Silence: a run of exact zeros where usage was expected. Each zero adds its
        // evidence −log10 P(value = 0) under the baseline, and the run alarms as a drop
        // once its probability is that of one `z_alarm` bucket, even if no single zero
        // is that unlikely. For counts (every value so far a non-negative integer)
        // P(0) is that of a negative binomial with the baseline's mean and variance
        // (Poisson if not overdispersed), and only buckets expecting at least 2 count:
        // a normally active tenant. Otherwise a normal model, counting zeros at least 2
        // scales below expectation (below that it would overstate how rare a zero is).
        let evidence = if x != 0.0 || learning {
            None
        } else if s.integral {
            let mean = fc_sel.expected;
            let var = fc_sel.sigma_up * fc_sel.sigma_down;
            (mean >= 2.0).then(|| zero_count_evidence(mean, var))
        } else {
            (zs[sel] <= -2.0).then(|| neg_log10_normal_cdf(zs[sel]))
        };
        match evidence {
            Some(e) => {
                if s.silence == 0.0 {
                    s.silence_start = start;
                }
                s.silence += e;
            }
            None if x != 0.0 => s.silence = 0.0,
            None => {}
        }
        let silent = s.silence >= neg_log10_normal_cdf(-cfg.z_alarm) && triggers[sel].is_none();
        if silent {
            triggers[sel] = Some((Direction::Down, s.silence_start));
        }
        judgement.expected = fc_sel.expected;
        judgement.score = zs[sel];

        // While the chosen model's CUSUM is half-way to an alarm the bucket is suspect:
        // learning from it would let the baseline slide after a shift and hide it.
        let suspect = |c: &Cusum| c.up.max(c.down) >= cfg.cusum_h / 2.0;
        let mut learn_baseline = !suspect(&s.cusums[sel]);
        // A bucket that opens, ends or re-anchors an episode teaches no model.
        let mut event = false;
        let mut verdict = Verdict::Normal;
        if let Some(kind) = s.episode.kind {
            let signed = if kind == Kind::Spike {
                zs[sel]
            } else {
                -zs[sel]
            };
            let sign = if kind == Kind::Spike { 1.0 } else { -1.0 };
            for ((model, fc), z) in s.models.iter_mut().zip(&fcs).zip(&zs) {
                if let Some(fc) = fc {
                    model.accumulate(x, fc, sign * z);
                }
            }
            match s.episode.step(
                signed >= cfg.z_continue,
                cfg.cooldown_buckets,
                cfg.adapt_after_buckets,
            ) {
                Step::Ongoing => {
                    learn_baseline = false;
                    verdict = Verdict::Anomalous(kind);
                }
                Step::Closed => reset_cusums(s),
                Step::Persisted => {
                    let keep_prev = s.provisional_since.is_some();
                    for model in &mut s.models {
                        model.reanchor(mult, floor, keep_prev, cfg.z_continue);
                    }
                    s.provisional_since = Some(s.count);
                    reset_cusums(s);
                    event = true;
                }
            }
        } else if let Some((dir, onset)) = triggers[sel] {
            let sel_error = s.models[sel].error;
            let veto = (0..n)
                .filter(|&m| {
                    !silent
                        && m != sel
                        && s.models[m].eligible
                        && s.models[m].error <= sel_error * VETO_MARGIN
                        && triggers[m].map(|t| t.0) != Some(dir)
                })
                .min_by(|&a, &b| s.models[a].error.total_cmp(&s.models[b].error));
            let returned = s.provisional_since.is_some() && s.models[sel].reanchored && {
                let (e, sd) = s.models[sel].previous_forecast(&fc_sel, mult, floor);
                ((x - e) / sd).abs() <= RETURN_Z
            };
            if let Some(m) = veto {
                // Another model that forecasts about as well finds the bucket normal. If
                // it also forecasts better, it becomes the chosen one (the weekly model
                // on the first weekend after it has seen one).
                if s.models[m].error < sel_error {
                    s.selected = m;
                    reset_cusums(s);
                }
            } else if returned {
                // Back to the baseline before the last re-anchoring: a recovery.
                for model in &mut s.models {
                    model.revert();
                }
                s.provisional_since = None;
                reset_cusums(s);
                event = true;
            } else {
                let kind = match dir {
                    Direction::Up => Kind::Spike,
                    Direction::Down => Kind::Drop,
                };
                s.episode.open(kind);
                let sign = if kind == Kind::Spike { 1.0 } else { -1.0 };
                for ((model, fc), z) in s.models.iter_mut().zip(&fcs).zip(&zs) {
                    model.start_episode();
                    if let Some(fc) = fc {
                        model.accumulate(x, fc, sign * z);
                    }
                }
                reset_cusums(s);
                event = true;
                verdict = Verdict::Anomalous(kind);
                judgement.alerts.push(Anomaly {
                    kind,
                    bucket: start,
                    episode_start: onset,
                    score: zs[sel].abs(),
                    expected: fc_sel.expected,
                    observed: x,
                });
            }
        }

        // A re-anchored level is established once it has lasted the longest rhythm
        // (a week by default): a weekend level adopted on Saturday must not make Monday
        // a new alarm.
        let interval = cfg.interval_secs.max(1);
        let memory = s
            .models
            .iter()
            .map(|m| (m.period / interval) as u64)
            .max()
            .unwrap_or(0)
            .max(cfg.learning_buckets as u64);
        if s.provisional_since.is_some_and(|at| s.count - at > memory) && !s.episode.is_open() {
            s.provisional_since = None; // the new level is established
            for model in &mut s.models {
                model.reanchored = false;
            }
        }

        // Level and scale learn only from normal buckets (an alarm, an ongoing episode,
        // a suspect CUSUM, a re-anchoring or a recovery teach nothing); profiles always
        // learn, robustly.
        learn_baseline &= !event;
        let error_clip = 4.0 * fc_sel.sigma_up.max(fc_sel.sigma_down);
        for ((model, fc), rates) in s.models.iter_mut().zip(&fcs).zip(&s.rates) {
            if let Some(fc) = fc {
                model.learn(x, fc, rates, mult, learn_baseline, floor, error_clip);
            }
        }
        if learn_baseline {
            select(s, cfg);
        }
        verdict
    }
}

fn reset_cusums(s: &mut State) {
    for c in &mut s.cusums {
        c.reset();
    }
    s.silence = 0.0;
}

/// Picks the model with the lowest forecast error, each step up in complexity (none,
/// then each period in configuration order) needing `selection_margin` better, and a
/// switch needing a further 5 %: prequential model choice (Dawid 1984).
fn select(s: &mut State, cfg: &Config) {
    let penalised =
        |m: usize, model: &SeasonalModel| model.error * (1.0 + cfg.selection_margin).powi(m as i32);
    let mut best = s.selected;
    let mut best_score = s.models.get(best).map_or(f64::INFINITY, |model| {
        penalised(best, model) * SWITCH_MARGIN
    });
    for (m, model) in s.models.iter().enumerate() {
        if model.eligible && penalised(m, model) < best_score {
            best = m;
            best_score = penalised(m, model);
        }
    }
    s.selected = best;
}

/// Seeds every model from the first buckets: median level, MAD scale.
fn seed(cfg: &Config, s: &mut State) {
    let mut scratch = Vec::with_capacity(s.seed.len());
    let (median, sigma) = median_and_scale(&s.seed, &mut scratch);
    let mean = s.seed.iter().sum::<f64>() / s.seed.len().max(1) as f64;
    s.multiplicative = s.seed.iter().all(|&v| v >= 0.0);
    // A sparse series has median 0 but a positive rate: its mean is the better level.
    let level = if s.multiplicative && median <= 0.0 {
        mean
    } else {
        median
    };
    let floor = s
        .quantum
        .max(cfg.abs_scale_floor)
        .max(cfg.rel_scale_floor * level.abs())
        .max(1e-12);
    let sigma = sigma.max(floor);
    let interval = cfg.interval_secs.max(1);
    let error_rate = 1.0 / cfg.selection_buckets.max(1) as f64;
    let rates_for = |visits: f64, per_period: f64, inner_visits: f64| Rates {
        // A seasonal model's level must not follow its own season: its memory is at
        // least a quarter of the period (a level that drifts through the weekend would
        // leave the weekly profile nothing to learn).
        level: cfg.level_rate.min(LEVEL_CYCLES / per_period),
        scale: cfg.scale_rate,
        season_visit: per_visit(cfg.season_rate, visits),
        inner_visit: per_visit(cfg.season_rate, inner_visits),
        // A scale needs more samples than a mean: at least ~10 per bin of memory,
        // however few visits a cycle has (hourly buckets visit a daily bin once).
        phase_scale_visit: per_visit(cfg.phase_scale_rate, visits).min(0.1),
        cycle_weight: visits,
        error: error_rate,
        huber_k: cfg.huber_k,
    };
    s.models.clear();
    s.rates.clear();
    s.models
        .push(SeasonalModel::new(0, 0, s.multiplicative, None));
    s.rates.push(rates_for(1.0, 1.0, 1.0));
    // Candidate periods with enough buckets per cycle to see a rhythm in, and bins.
    let candidates: Vec<(i64, usize, f64)> = cfg
        .periods
        .iter()
        .take(MAX_MODELS - 1)
        .filter_map(|p| {
            let per_period = p.secs / interval;
            (per_period >= 4 && p.max_bins >= 2).then(|| {
                (
                    p.secs,
                    (per_period as usize).min(p.max_bins as usize),
                    per_period as f64,
                )
            })
        })
        .collect();
    for &(period, bins, per_period) in &candidates {
        // Carry the longest shorter candidate that divides this period (day in week).
        let inner = candidates
            .iter()
            .filter(|c| c.0 < period && period % c.0 == 0)
            .max_by_key(|c| c.0)
            .map(|c| (c.0, c.1, c.2 / c.1 as f64));
        s.models.push(SeasonalModel::new(
            period,
            bins,
            s.multiplicative,
            inner.map(|(p, b, _)| (p, b)),
        ));
        s.rates.push(rates_for(
            per_period / bins as f64,
            per_period,
            inner.map_or(1.0, |c| c.2),
        ));
    }
    for model in &mut s.models {
        model.seed(level, sigma);
    }
    s.cusums = vec![Cusum::default(); s.models.len()];
    s.selected = 0;
    s.seed = Vec::new();
    s.seeded = true;
}

/// The per-visit rate that gives a bin visited `visits` times a cycle the weight `rate`
/// per cycle.
fn per_visit(rate: f64, visits: f64) -> f64 {
    let rate = rate.clamp(0.0, 1.0);
    if visits <= 1.0 {
        return rate;
    }
    1.0 - (1.0 - rate).powf(1.0 / visits)
}

/// `−log10 P(X = 0)` for a count with this mean and variance: negative binomial by the
/// method of moments (`r = mean² / (variance − mean)`), Poisson when not overdispersed.
fn zero_count_evidence(mean: f64, variance: f64) -> f64 {
    let ln_p0 = if variance > mean * 1.000_001 {
        let r = mean * mean / (variance - mean);
        -r * (mean / r).ln_1p()
    } else {
        -mean
    };
    -ln_p0 / std::f64::consts::LN_10
}
