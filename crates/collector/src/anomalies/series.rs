//! From ledger buckets to judgements: the one function the online judge and the
//! replay command both run ([`judge_series`]). Pure: no clock, no I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use turnpike_anomaly::{Anomaly, Bucket, Config, Detector, Kind, Quota};
use turnpike_plans::{window_bounds, ResolvedPlan, Window};

/// The meter name of a tenant's request series: every ledger row counts, whatever its
/// decision, and the denied share feeds `denial_storm`. Never a real meter name
/// (meters are `[a-z0-9_]`).
pub const REQUESTS: &str = "*";

/// One series: a tenant and a meter (or [`REQUESTS`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub tenant: String,
    pub meter: String,
}

impl SeriesKey {
    pub fn new(tenant: impl Into<String>, meter: impl Into<String>) -> Self {
        SeriesKey {
            tenant: tenant.into(),
            meter: meter.into(),
        }
    }

    pub fn is_requests(&self) -> bool {
        self.meter == REQUESTS
    }
}

/// One bucket as the ledger aggregates it. Only buckets with rows come from the
/// ledger; [`judge_series`] fills the silent ones with zeros.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LedgerBucket {
    /// Start, unix seconds, a multiple of the bucket width.
    pub start: i64,
    /// Billable quantity of the meter, or the number of rows for [`REQUESTS`].
    pub value: f64,
    /// Rows, and rows with decision `denied` ([`REQUESTS`] only).
    pub total: f64,
    pub denied: f64,
}

/// What the judge keeps per series between buckets: the detector and the running
/// usage of the current billing period (plan burn needs usage so far).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesState {
    pub detector: Detector,
    /// Start (unix seconds) of the billing period `period_used` belongs to.
    pub period_start: i64,
    pub period_used: f64,
}

impl SeriesState {
    pub fn new(bucket_secs: i64) -> Self {
        SeriesState {
            detector: Detector::new(Config::with_interval(bucket_secs)),
            period_start: i64::MIN,
            period_used: 0.0,
        }
    }

    pub fn bucket_secs(&self) -> i64 {
        self.detector.config().interval_secs
    }
}

/// The plan limit a meter's usage counts against: the smallest monthly `max` of the
/// tenant's plan on that meter, over the tenant's billing month.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanLimit {
    pub limit: f64,
    pub anchor_day: u8,
}

impl PlanLimit {
    pub fn of(plan: &ResolvedPlan<'_>, meter: &str) -> Option<PlanLimit> {
        plan.limits
            .iter()
            .filter(|l| l.window == Window::Month && l.meter == meter)
            .map(|l| l.max)
            .min()
            .map(|max| PlanLimit {
                limit: max as f64,
                anchor_day: plan.anchor_day,
            })
    }
}

/// An anomaly of one series, as stored and sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detected {
    /// Deterministic: the same series, kind, bucket and width always give the same id.
    pub id: String,
    pub tenant: String,
    pub meter: String,
    pub kind: Kind,
    /// Bucket start, unix seconds.
    pub bucket: i64,
    pub bucket_secs: i64,
    pub episode_start: i64,
    pub score: f64,
    pub expected: f64,
    pub observed: f64,
}

/// The id of an anomaly: 32 hex digits of SHA-256 over what identifies it.
pub fn anomaly_id(key: &SeriesKey, kind: Kind, bucket: i64, bucket_secs: i64) -> String {
    let mut hash = Sha256::new();
    hash.update(
        format!(
            "{}\n{}\n{}\n{bucket}\n{bucket_secs}",
            key.tenant,
            key.meter,
            kind.as_str()
        )
        .as_bytes(),
    );
    let digest = hash.finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Judges every bucket of `key` with start in `[from, until)` (unix seconds, multiples
/// of the width) in order, feeding `state`'s detector. `buckets` are the ledger's
/// non-empty buckets in increasing order (others in the slice are ignored); a bucket
/// the ledger has nothing for is judged as 0, so a tenant that stops is seen. Returns
/// the anomalies that open in the range, in bucket order.
pub fn judge_series(
    state: &mut SeriesState,
    key: &SeriesKey,
    from: i64,
    until: i64,
    buckets: &[LedgerBucket],
    plan: Option<PlanLimit>,
) -> Vec<Detected> {
    let width = state.bucket_secs().max(1);
    let mut found = Vec::new();
    let mut ledger = buckets.iter().skip_while(|b| b.start < from).peekable();
    let mut start = from;
    while start < until {
        let mut seen = LedgerBucket {
            start,
            value: 0.0,
            total: 0.0,
            denied: 0.0,
        };
        while let Some(b) = ledger.next_if(|b| b.start <= start) {
            if b.start == start {
                seen = *b;
            }
        }
        let mut bucket = Bucket::new(start, seen.value);
        if key.is_requests() {
            bucket = bucket.with_requests(seen.total, seen.denied);
        } else if let Some(plan) = plan {
            let (period_start, period_end) = window_bounds(Window::Month, plan.anchor_day, start);
            if period_start != state.period_start {
                state.period_start = period_start;
                state.period_used = 0.0;
            }
            state.period_used += seen.value.max(0.0);
            bucket = bucket.with_quota(Quota {
                limit: plan.limit,
                period_start,
                period_end,
                used: Some(state.period_used),
            });
        }
        let judgement = state.detector.observe(&bucket);
        found.extend(judgement.alerts.iter().map(|a| detected(key, a, width)));
        start += width;
    }
    found
}

fn detected(key: &SeriesKey, a: &Anomaly, width: i64) -> Detected {
    Detected {
        id: anomaly_id(key, a.kind, a.bucket, width),
        tenant: key.tenant.clone(),
        meter: key.meter.clone(),
        kind: a.kind,
        bucket: a.bucket,
        bucket_secs: width,
        episode_start: a.episode_start,
        score: a.score,
        expected: a.expected,
        observed: a.observed,
    }
}

/// The start of the bucket holding `unix_secs`.
pub fn bucket_of(unix_secs: i64, width: i64) -> i64 {
    unix_secs.div_euclid(width.max(1)) * width.max(1)
}

/// The end (exclusive bucket start) of what may be judged at `now`: buckets that
/// closed at least `grace` seconds ago.
pub fn closed_until(now_secs: i64, grace_secs: i64, width: i64) -> i64 {
    bucket_of(now_secs - grace_secs.max(0), width)
}

/// How far one series may be judged at `now` (all unix seconds): to the closed buckets,
/// except while its rows are still arriving (one arrived less than `grace` ago) for
/// buckets before the newest row's: then only up to that row's bucket. A backfill sends
/// old rows in time order; judging past the newest would call the rest silence. Live
/// traffic is not held back: its newest row is in the open bucket.
pub fn series_until(
    now_secs: i64,
    grace_secs: i64,
    width: i64,
    newest_row_secs: i64,
    received_secs: i64,
) -> i64 {
    let closed = closed_until(now_secs, grace_secs, width);
    if received_secs > now_secs - grace_secs.max(0) {
        closed.min(bucket_of(newest_row_secs, width))
    } else {
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(n: i64, width: i64, spike_at: Option<i64>) -> Vec<LedgerBucket> {
        (0..n)
            .map(|i| LedgerBucket {
                start: i * width,
                value: if Some(i) == spike_at {
                    2000.0
                } else {
                    100.0 + (i % 5) as f64
                },
                total: 0.0,
                denied: 0.0,
            })
            .collect()
    }

    #[test]
    fn a_spike_is_found_once_with_a_stable_id() {
        let key = SeriesKey::new("acme", "requests");
        let buckets = steady(400, 300, Some(350));
        let mut state = SeriesState::new(300);
        let found = judge_series(&mut state, &key, 0, 400 * 300, &buckets, None);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, Kind::Spike);
        assert_eq!(found[0].bucket, 350 * 300);
        assert_eq!(found[0].id, anomaly_id(&key, Kind::Spike, 350 * 300, 300));
        assert_eq!(found[0].id.len(), 32);
        assert_ne!(
            found[0].id,
            anomaly_id(
                &SeriesKey::new("acme", "search"),
                Kind::Spike,
                350 * 300,
                300
            )
        );
    }

    #[test]
    fn judging_in_pieces_equals_judging_at_once() {
        let key = SeriesKey::new("acme", "requests");
        let buckets = steady(400, 300, Some(350));
        let mut whole = SeriesState::new(300);
        let all = judge_series(&mut whole, &key, 0, 400 * 300, &buckets, None);
        let mut pieces = SeriesState::new(300);
        let mut found = Vec::new();
        for (from, until) in [(0, 100), (100, 351), (351, 400)] {
            // A restart between pieces: the state goes through JSON.
            let text = serde_json::to_string(&pieces).unwrap();
            pieces = serde_json::from_str(&text).unwrap();
            found.extend(judge_series(
                &mut pieces,
                &key,
                from * 300,
                until * 300,
                &buckets,
                None,
            ));
        }
        assert_eq!(found, all);
        assert_eq!(pieces, whole);
    }

    #[test]
    fn missing_buckets_are_judged_as_silence() {
        let key = SeriesKey::new("acme", "requests");
        // 400 busy buckets, then the ledger has nothing more.
        let buckets = steady(400, 300, None);
        let mut state = SeriesState::new(300);
        let found = judge_series(&mut state, &key, 0, 440 * 300, &buckets, None);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, Kind::Drop);
        assert!(found[0].bucket >= 400 * 300);
    }

    #[test]
    fn a_new_tenant_burning_its_plan_is_found_on_day_one() {
        let key = SeriesKey::new("newco", "requests");
        let width = 300;
        // 2026-03-01T00:00:00Z; the month has 31 days. 1000 a bucket is 8.9 M a month.
        let t0 = 1_772_323_200;
        let buckets: Vec<LedgerBucket> = (0..24)
            .map(|i| LedgerBucket {
                start: t0 + i * width,
                value: 1000.0,
                total: 0.0,
                denied: 0.0,
            })
            .collect();
        let plan = PlanLimit {
            limit: 1_000_000.0,
            anchor_day: 1,
        };
        let mut state = SeriesState::new(width);
        let found = judge_series(&mut state, &key, t0, t0 + 24 * width, &buckets, Some(plan));
        assert!(found.iter().any(|d| d.kind == Kind::PlanBurn), "{found:?}");
        assert_eq!(state.period_start, t0);
        assert_eq!(state.period_used, 24_000.0);
    }

    #[test]
    fn a_denial_storm_is_found_on_the_request_series() {
        let key = SeriesKey::new("acme", REQUESTS);
        let buckets: Vec<LedgerBucket> = (0..100)
            .map(|i| LedgerBucket {
                start: i * 60,
                value: 100.0,
                total: 100.0,
                denied: if i >= 80 { 90.0 } else { (i % 3) as f64 },
            })
            .collect();
        let mut state = SeriesState::new(60);
        let found = judge_series(&mut state, &key, 0, 100 * 60, &buckets, None);
        assert!(
            found
                .iter()
                .any(|d| d.kind == Kind::DenialStorm && d.bucket == 80 * 60),
            "{found:?}"
        );
    }

    #[test]
    fn a_series_whose_history_is_still_arriving_waits_for_it() {
        // Rows up to t=3000 arrived 10 s ago: judge only before the newest row's bucket.
        assert_eq!(series_until(10_000, 120, 300, 3000, 9_990), 3000);
        // Nothing for longer than the grace: the rest is silence, judge it.
        assert_eq!(series_until(10_000, 120, 300, 3000, 9_800), 9_600);
        // Live traffic: the newest row is in the open bucket; nothing held back.
        assert_eq!(series_until(10_000, 120, 300, 9_990, 9_995), 9_600);
    }

    #[test]
    fn closed_buckets_wait_for_the_grace() {
        assert_eq!(closed_until(1000, 0, 300), 900);
        // 1000 - 120 = 880: the bucket [600, 900) has not been closed for 120 s yet.
        assert_eq!(closed_until(1000, 120, 300), 600);
        assert_eq!(bucket_of(-1, 300), -300);
    }
}
