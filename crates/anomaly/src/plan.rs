//! Plan burn: usage on track to exceed a plan limit by `burn_factor` before the period
//! ends, i.e. the limit would be gone when at most `1/burn_factor` of the period has
//! passed. The projection is `used + rate × buckets left`, where the rate is the
//! baseline's level (usage per bucket with the season averaged out; before the baseline
//! exists, the mean of the buckets seen in the period). A spike does not move the level,
//! so plan burn reports sustained consumption, not a burst.

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::episode::Episode;
use crate::input::Quota;
use crate::kinds::{Anomaly, Kind};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PlanChannel {
    period_start: i64,
    used: f64,
    buckets: u32,
    sum: f64,
    pub episode: Episode,
}

impl PlanChannel {
    pub fn observe(
        &mut self,
        start: i64,
        value: f64,
        quota: Quota,
        level: Option<f64>,
        cfg: &Config,
    ) -> Option<Anomaly> {
        if quota.period_start != self.period_start {
            *self = PlanChannel {
                period_start: quota.period_start,
                ..PlanChannel::default()
            };
        }
        let v = value.max(0.0);
        self.used = match quota.used {
            Some(u) if u.is_finite() => u,
            _ => self.used + v,
        };
        self.buckets = self.buckets.saturating_add(1);
        self.sum += v;
        if quota.limit.is_nan() || quota.limit <= 0.0 || cfg.interval_secs <= 0 {
            return None;
        }
        let rate = level.unwrap_or(self.sum / self.buckets as f64).max(0.0);
        let left = (quota.period_end - (start + cfg.interval_secs)).max(0) as f64
            / cfg.interval_secs as f64;
        let projected = self.used + rate * left;
        let score = projected / quota.limit;
        if self.episode.is_open() {
            // Over when the projection stays under the limit itself; no "new normal":
            // a plan being burnt stays a plan being burnt until the period ends.
            self.episode.step(score >= 1.0, cfg.cooldown_buckets, 0);
            return None;
        }
        if self.buckets >= cfg.plan_min_buckets && score >= cfg.burn_factor {
            self.episode.open(Kind::PlanBurn);
            return Some(Anomaly {
                kind: Kind::PlanBurn,
                bucket: start,
                episode_start: start,
                score,
                expected: quota.limit,
                observed: projected,
            });
        }
        None
    }
}
