//! Anomaly detection per tenant and meter over the ledger (`turnpike-anomaly`'s
//! detector): online in the server ([`online`]), and as a replay over history
//! ([`replay`]), both through [`series::judge_series`]. Found anomalies are stored,
//! listed by `GET /v1/anomalies` ([`http`]), counted in the metrics and posted to an
//! optional webhook as CloudEvents through a durable outbox ([`webhook`]). See
//! `docs/anomaly-detection.md`.

pub mod http;
pub mod metrics;
pub mod online;
pub mod replay;
pub mod series;
pub mod store;
pub mod webhook;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::event::format_time_ms;
use series::Detected;

/// Default bucket width, seconds.
pub const DEFAULT_BUCKET_SECS: i64 = 300;
/// Default wait after a bucket closes before it is judged, for late events.
pub const DEFAULT_GRACE_SECS: i64 = 120;

/// The server's anomaly flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AnomalyArgs {
    /// Width of the buckets usage is judged in, seconds.
    #[arg(long, env = "TURNPIKE_ANOMALY_BUCKET_SECS", default_value_t = DEFAULT_BUCKET_SECS,
          value_parser = clap::value_parser!(i64).range(10..=86_400))]
    pub anomaly_bucket_secs: i64,

    /// A bucket is judged this many seconds after it closes, so late events count.
    #[arg(long, env = "TURNPIKE_ANOMALY_GRACE_SECS", default_value_t = DEFAULT_GRACE_SECS,
          value_parser = clap::value_parser!(i64).range(0..=86_400))]
    pub anomaly_grace_secs: i64,

    /// POST each anomaly to this URL as a CloudEvent (`dev.turnpike.anomaly.v1`),
    /// at least once, from a durable outbox.
    #[arg(long, env = "TURNPIKE_ANOMALY_WEBHOOK")]
    pub anomaly_webhook: Option<String>,

    /// File with the secret sent to the webhook as `Authorization: Bearer`. Or
    /// TURNPIKE_ANOMALY_WEBHOOK_SECRET.
    #[arg(long, env = "TURNPIKE_ANOMALY_WEBHOOK_SECRET_FILE")]
    pub anomaly_webhook_secret_file: Option<PathBuf>,

    /// Do not judge usage in this replica (the API still lists stored anomalies).
    #[arg(long, env = "TURNPIKE_NO_ANOMALY_DETECTION")]
    pub no_anomaly_detection: bool,
}

/// What the judge tells the API and the webhook sender.
pub struct Status {
    pub enabled: bool,
    pub bucket_secs: i64,
    pub grace_secs: i64,
    /// This replica's name in the lease.
    pub holder: String,
    pub webhook: bool,
    holding: AtomicBool,
    outbox: tokio::sync::Notify,
}

impl Status {
    pub fn new(args: &AnomalyArgs, holder: String) -> Status {
        Status {
            enabled: !args.no_anomaly_detection,
            bucket_secs: args.anomaly_bucket_secs,
            grace_secs: args.anomaly_grace_secs,
            holder,
            webhook: args.anomaly_webhook.is_some(),
            holding: AtomicBool::new(false),
            outbox: tokio::sync::Notify::new(),
        }
    }

    /// Whether this replica holds the judging lease.
    pub fn holding(&self) -> bool {
        self.holding.load(Ordering::Relaxed)
    }

    fn set_holding(&self, holding: bool) {
        self.holding.store(holding, Ordering::Relaxed);
    }

    fn notify_outbox(&self) {
        self.outbox.notify_one();
    }

    async fn outbox_notified(&self) {
        self.outbox.notified().await;
    }
}

/// An anomaly as the API lists it, the replay prints it and the webhook sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyView {
    pub id: String,
    pub tenant: String,
    /// The meter, or `*` for the tenant's request series (all rows; denial storms).
    pub meter: String,
    /// spike, drop, denial_storm or plan_burn.
    pub kind: String,
    /// Start and end of the bucket the alert was raised in.
    pub bucket: String,
    pub bucket_end: String,
    pub bucket_secs: i64,
    /// Where the evidence starts (a sustained shift starts before its alert).
    pub episode_start: String,
    /// Robust z (spike, drop, denial storm) or projected usage over the limit (plan burn).
    pub score: f64,
    /// Usage expected, normal denied share, or the plan limit.
    pub expected: f64,
    /// Usage seen, denied share seen, or usage projected to the period's end.
    pub observed: f64,
    /// When this collector stored it (absent in a replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<String>,
}

impl AnomalyView {
    pub fn from_detected(d: &Detected, detected_at_ms: Option<i64>) -> AnomalyView {
        AnomalyView {
            id: d.id.clone(),
            tenant: d.tenant.clone(),
            meter: d.meter.clone(),
            kind: d.kind.as_str().to_owned(),
            bucket: format_time_ms(d.bucket.saturating_mul(1000)),
            bucket_end: format_time_ms((d.bucket + d.bucket_secs).saturating_mul(1000)),
            bucket_secs: d.bucket_secs,
            episode_start: format_time_ms(d.episode_start.saturating_mul(1000)),
            score: d.score,
            expected: d.expected,
            observed: d.observed,
            detected_at: detected_at_ms.map(format_time_ms),
        }
    }
}
