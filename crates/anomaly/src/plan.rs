//! Plan burn: usage on track to exceed a plan limit by `burn_factor` before the period
//! ends, i.e. the limit would be gone when at most `1/burn_factor` of the period has
//! passed. The projection is linear: `used + pace × buckets left`, the pace being the
//! usage so far over the time elapsed in the period. It is the billing view (a spike
//! counts as much as it consumed), stable for sparse tenants, and needs no history
//! beyond the period, so it works on a new tenant's first day.

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
    pub episode: Episode,
}

impl PlanChannel {
    pub fn observe(
        &mut self,
        start: i64,
        value: f64,
        quota: Quota,
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
        if quota.limit.is_nan() || quota.limit <= 0.0 || cfg.interval_secs <= 0 {
            return None;
        }
        // The period's own pace: usage so far over the time elapsed in the period (or
        // since the series began, for a tenant that signed up mid-period and whose
        // ledger usage the caller did not pass).
        let since_period = (start + cfg.interval_secs - quota.period_start).max(cfg.interval_secs);
        let elapsed = if quota.used.is_some() {
            since_period as f64 / cfg.interval_secs as f64
        } else {
            self.buckets as f64
        };
        let rate = (self.used / elapsed).max(0.0);
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
