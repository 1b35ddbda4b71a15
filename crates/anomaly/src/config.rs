//! Detector parameters. Rates are per bucket or per seasonal cycle, thresholds are in
//! robust standard deviations, so nothing here assumes a 5-minute bucket or a daily
//! rhythm except the two defaults that say so (`interval_secs`, the candidate periods).

use serde::{Deserialize, Serialize};

/// Parameters of a [`crate::Detector`]. `Config::default()` is what the evaluator's
/// figures were measured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Bucket width in seconds. Default 300.
    pub interval_secs: i64,

    /// Buckets used to seed the baseline (median and MAD); no usage alarm before.
    /// Default 12.
    pub warmup_buckets: u32,
    /// Until a series has this many buckets its rhythm is unknown: usage alarms need
    /// `learning_z_factor` times the usual evidence and the CUSUM is off. Default 288.
    pub learning_buckets: u32,
    /// Default 3.
    pub learning_z_factor: f64,

    /// Candidate seasonal periods, tried against having none. Each is a period in
    /// seconds and a maximum number of profile bins; a period shorter than 4 buckets is
    /// dropped. Default: a day in 48 bins (30 min) and a week in 168 bins (1 h).
    pub periods: Vec<Period>,

    /// Level smoothing per bucket (α of exponential smoothing) of the flat model; a
    /// seasonal model's level moves at most 4 times per period. Default 0.05.
    pub level_rate: f64,
    /// Seasonal profile smoothing, as the weight one whole cycle gets. Default 0.3.
    pub season_rate: f64,
    /// Scale smoothing per bucket (λ of the biweight recursion; each side of the
    /// expectation has its own scale and twice this rate). Default 0.01.
    pub scale_rate: f64,
    /// Per-phase scale smoothing, as the weight of one cycle (at most 0.1 per visit of a
    /// bin). Default 0.5.
    pub phase_scale_rate: f64,
    /// Memory, in buckets, of the forecast error that picks the seasonal model.
    /// Default 288.
    pub selection_buckets: u32,
    /// A more complex model must forecast this much better (relative error) to be
    /// chosen. Default 0.1.
    pub selection_margin: f64,

    /// Huber constant: a residual moves the baseline by at most this many scales.
    /// Default 2.
    pub huber_k: f64,
    /// |z| at which one bucket alone raises a spike or drop (Shewhart limit); also the
    /// denial-storm limit and the silence evidence (that of one such bucket). Default 5.5.
    pub z_alarm: f64,
    /// CUSUM reference value k, in scales: drifts smaller than this are ignored.
    /// Default 1.
    pub cusum_k: f64,
    /// CUSUM decision interval h, in scales. Default 8.
    pub cusum_h: f64,
    /// |z| that keeps an open episode going. Default 2.
    pub z_continue: f64,
    /// Consecutive normal buckets that close an episode. Default 6.
    pub cooldown_buckets: u32,
    /// An episode still going after this many buckets is a new normal: the baseline
    /// jumps to it and the episode closes without a further alert. Default 36.
    pub adapt_after_buckets: u32,
    /// Lower bound on the scale relative to the expectation: changes smaller than
    /// `z_alarm × rel_scale_floor` of the level never alarm. Default 0.01.
    pub rel_scale_floor: f64,
    /// Absolute lower bound on the scale (on top of the data's own resolution, which
    /// the detector measures). Default 0.
    pub abs_scale_floor: f64,

    /// Denial storms need at least this many denied requests in the bucket. Default 5.
    pub min_denied: f64,
    /// and a denied share at least this far above the normal share. Default 0.1.
    pub min_share_rise: f64,
    /// Denied-share smoothing per bucket. Default 0.02.
    pub share_rate: f64,

    /// Plan burn: projected usage at period end over the limit that alarms. Default 2
    /// (the limit would be gone by mid-period).
    pub burn_factor: f64,
    /// Buckets seen in the period before a projection is trusted. Default 12.
    pub plan_min_buckets: u32,
}

/// A candidate seasonal period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Period {
    pub secs: i64,
    pub max_bins: u32,
}

pub const DAY_SECS: i64 = 86_400;
pub const WEEK_SECS: i64 = 7 * DAY_SECS;

impl Default for Config {
    fn default() -> Self {
        Config {
            interval_secs: 300,
            warmup_buckets: 12,
            learning_buckets: 288,
            learning_z_factor: 3.0,
            periods: vec![
                Period {
                    secs: DAY_SECS,
                    max_bins: 48,
                },
                Period {
                    secs: WEEK_SECS,
                    max_bins: 168,
                },
            ],
            level_rate: 0.05,
            season_rate: 0.3,
            scale_rate: 0.01,
            phase_scale_rate: 0.5,
            selection_buckets: 288,
            selection_margin: 0.1,
            huber_k: 2.0,
            z_alarm: 5.5,
            cusum_k: 1.0,
            cusum_h: 8.0,
            z_continue: 2.0,
            cooldown_buckets: 6,
            adapt_after_buckets: 36,
            rel_scale_floor: 0.01,
            abs_scale_floor: 0.0,
            min_denied: 5.0,
            min_share_rise: 0.1,
            share_rate: 0.02,
            burn_factor: 2.0,
            plan_min_buckets: 12,
        }
    }
}

impl Config {
    /// The default configuration for buckets of `interval_secs`.
    pub fn with_interval(interval_secs: i64) -> Self {
        Config {
            interval_secs,
            ..Config::default()
        }
    }
}
