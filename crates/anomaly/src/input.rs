//! What the caller feeds the detector: one closed bucket of one series at a time.

use serde::{Deserialize, Serialize};

/// One closed bucket of one series (a tenant and meter). The detector never reads a
/// clock: `start` is the bucket's start in unix seconds, and buckets must arrive in
/// increasing order. For usage, the caller closes empty buckets with `value = 0`; a
/// bucket that is simply not passed counts as missing, not as zero.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Start of the bucket, unix seconds.
    pub start: i64,
    /// Metered usage in the bucket (any real number: units, requests, bytes, °C).
    pub value: f64,
    /// Request outcomes in the bucket, when the meter has them: feeds `denial_storm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Requests>,
    /// The plan limit this usage counts against, when there is one: feeds `plan_burn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

/// Requests seen in a bucket and how many of them were denied (HTTP 429).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Requests {
    pub total: f64,
    pub denied: f64,
}

/// A plan limit over a billing period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    /// Usage allowed over the period, in the meter's unit.
    pub limit: f64,
    /// `[period_start, period_end)`, unix seconds.
    pub period_start: i64,
    pub period_end: i64,
    /// Usage in the period up to and including this bucket, if the caller knows it (the
    /// ledger does). When absent the detector sums the buckets it saw in the period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<f64>,
}

impl Bucket {
    pub fn new(start: i64, value: f64) -> Self {
        Bucket {
            start,
            value,
            requests: None,
            quota: None,
        }
    }

    pub fn with_requests(mut self, total: f64, denied: f64) -> Self {
        self.requests = Some(Requests { total, denied });
        self
    }

    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }
}
