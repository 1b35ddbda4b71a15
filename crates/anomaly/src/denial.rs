//! Denial storms: the share of denied (429) requests far above the series' own normal.
//!
//! The normal share p̂ is a Huber-cleaned exponential average; its spread is the
//! binomial variance of the bucket's request count plus a robust (biweight) scale τ of
//! the share's own bucket-to-bucket variation, so a tenant that always brushes its rate
//! limit is judged against its own noisy normal. A storm needs all of: robust z above
//! `z_alarm`, a share `min_share_rise` above normal (relevance: 2 % → 6 % is
//! significant on a big tenant but is not a storm) and `min_denied` denied requests.

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::episode::{Episode, Step};
use crate::input::Requests;
use crate::kinds::{Anomaly, Kind};
use crate::robust::{huber, RobustScale};

const SHARE_FLOOR: f64 = 1e-4;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct DenialChannel {
    /// Buckets with requests seen.
    n: u32,
    share: f64,
    spread: RobustScale,
    /// Seeding sums (share and share²), then the open episode's denied and total.
    acc_a: f64,
    acc_b: f64,
    pub episode: Episode,
}

impl DenialChannel {
    pub fn observe(&mut self, start: i64, req: Requests, cfg: &Config) -> Option<Anomaly> {
        if !req.denied.is_finite() || !req.total.is_finite() || req.total <= 0.0 {
            return None;
        }
        let q = (req.denied / req.total).clamp(0.0, 1.0);
        self.n = self.n.saturating_add(1);
        let warmup = cfg.warmup_buckets.max(2);
        if self.n <= warmup {
            self.acc_a += q;
            self.acc_b += q * q;
            if self.n == warmup {
                let n = warmup as f64;
                let mean = self.acc_a / n;
                let var = (self.acc_b / n - mean * mean).max(0.0);
                self.share = mean;
                self.spread = RobustScale::new(var.sqrt().max(SHARE_FLOOR));
                self.acc_a = 0.0;
                self.acc_b = 0.0;
            }
            return None;
        }
        let p = self.share;
        // Variance of the share: binomial at this bucket's count (p smoothed away from 0
        // and 1 so that a never-denied tenant is not infinitely certain) plus τ².
        let ps = (p * req.total + 0.5) / (req.total + 1.0);
        let sd = (ps * (1.0 - ps) / req.total + self.spread.sigma.powi(2)).sqrt();
        let z = (q - p) / sd;
        let rise = q - p;
        if self.episode.is_open() {
            let abnormal = z >= cfg.z_continue && rise >= cfg.min_share_rise / 2.0;
            self.acc_a += req.denied;
            self.acc_b += req.total;
            let step = self
                .episode
                .step(abnormal, cfg.cooldown_buckets, cfg.adapt_after_buckets);
            if step == Step::Persisted && self.acc_b > 0.0 {
                // A tenant now permanently at its limit: that is its normal share now.
                self.share = self.acc_a / self.acc_b;
            }
            return None;
        }
        if z >= cfg.z_alarm && rise >= cfg.min_share_rise && req.denied >= cfg.min_denied {
            self.episode.open(Kind::DenialStorm);
            self.acc_a = req.denied;
            self.acc_b = req.total;
            return Some(Anomaly {
                kind: Kind::DenialStorm,
                bucket: start,
                episode_start: start,
                score: z,
                expected: p,
                observed: q,
            });
        }
        self.share += cfg.share_rate * huber(z, cfg.huber_k) * sd;
        self.share = self.share.clamp(0.0, 1.0);
        self.spread.update(q - p, cfg.share_rate, SHARE_FLOOR);
        None
    }
}
