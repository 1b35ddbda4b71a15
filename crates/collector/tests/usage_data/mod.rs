//! Generated usage for the anomaly and console tests: three days of 5-minute buckets
//! ending a quarter of an hour ago, with planted anomalies the detector must find.
//! (Close to now, so the silence after the history's end is a few buckets long and
//! stays one episode however long a test runs.)

#![allow(dead_code)] // each test binary uses a different part

use serde_json::Value;

use crate::support::event;

pub const BUCKET: i64 = 300;
/// Buckets of history.
pub const BUCKETS: i64 = 864;
/// acme: its `requests` usage jumps twentyfold in this bucket.
pub const SPIKE_AT: i64 = 700;
/// acme: 40 requests denied in this bucket (normally at most one).
pub const STORM_AT: i64 = 760;
/// quietco stops sending at this bucket.
pub const QUIET_FROM: i64 = 800;
/// newco signs up this many buckets before the end and burns through its plan.
pub const NEWCO_BUCKETS: i64 = 48;

pub const PLANS: &str = r#"
default_plan = "free"

[plans.free]
limits = [
  { name = "per-minute", meter = "requests", window = "minute", max = 100 },
  { name = "monthly",    meter = "requests", window = "month",  max = 1000, soft = 800 },
]

[plans.pro]
limits = [
  { name = "daily",   meter = "requests", window = "day",   max = 1000000 },
  { name = "monthly", meter = "requests", window = "month", max = 100000000, soft = 80000000 },
]

[tenants.acme]
plan = "pro"

[tenants.quietco]
plan = "pro"
"#;

/// Where the generated history sits.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// Start of bucket 0, unix seconds.
    pub start: i64,
}

impl Span {
    pub fn now() -> Span {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let end = (now - 900).div_euclid(BUCKET) * BUCKET;
        Span {
            start: end - BUCKETS * BUCKET,
        }
    }

    pub fn bucket(&self, i: i64) -> i64 {
        self.start + i * BUCKET
    }

    pub fn end(&self) -> i64 {
        self.bucket(BUCKETS)
    }
}

/// How many calendar months (the free plan's billing months) newco's history touches:
/// 2 when its last hours straddle the start of a month.
pub fn newco_months(span: Span) -> usize {
    let month = |unix: i64| {
        let t = time::OffsetDateTime::from_unix_timestamp(unix).expect("time");
        (t.year(), t.month())
    };
    let first = month(span.bucket(BUCKETS - NEWCO_BUCKETS));
    let last = month(span.bucket(BUCKETS) - 1);
    if first == last {
        1
    } else {
        2
    }
}

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// Every event of the history, in time order.
pub fn history(span: Span) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..BUCKETS {
        let t0 = span.bucket(i);
        let at = |j: i64| rfc3339(t0 + 5 + j * 7);
        // acme: 4..6 requests of 20..24 units, one denied in ten buckets.
        for j in 0..4 + i % 3 {
            let cost = 20 + ((i * 7 + j) % 5) as u64;
            out.push(event(
                &format!("acme-{i}-{j}"),
                "acme",
                &at(j),
                "allowed",
                &[("requests", cost)],
            ));
        }
        if i % 10 == 0 {
            out.push(event(
                &format!("acme-{i}-d"),
                "acme",
                &at(9),
                "denied",
                &[("requests", 1)],
            ));
        }
        if i == SPIKE_AT {
            out.push(event(
                &format!("acme-{i}-spike"),
                "acme",
                &at(10),
                "allowed",
                &[("requests", 2000)],
            ));
        }
        if i == STORM_AT {
            for j in 0..40 {
                out.push(event(
                    &format!("acme-{i}-storm-{j}"),
                    "acme",
                    &rfc3339(t0 + 100 + j),
                    "denied",
                    &[("requests", 1)],
                ));
            }
        }
        // quietco: 3 requests of 10 units, until it stops.
        if i < QUIET_FROM {
            for j in 0..3 {
                out.push(event(
                    &format!("quietco-{i}-{j}"),
                    "quietco",
                    &at(j),
                    "allowed",
                    &[("requests", 10)],
                ));
            }
        }
        // newco: on the free plan (1000 a month), 300 units a bucket from its first day.
        if i >= BUCKETS - NEWCO_BUCKETS {
            for j in 0..3 {
                out.push(event(
                    &format!("newco-{i}-{j}"),
                    "newco",
                    &at(j),
                    "allowed",
                    &[("requests", 100)],
                ));
            }
        }
    }
    out
}
