//! Online anomaly detection over bucketed usage, per tenant and meter.
//!
//! A [`Detector`] holds one series. The caller feeds it closed buckets in order
//! ([`Bucket`]: start, value, and optionally request outcomes and a plan limit) and gets
//! a [`Judgement`] back for each: expected and observed value, a robust z score, a
//! [`Verdict`], and the alerts ([`Anomaly`]) of episodes that open at that bucket. The
//! detector is a pure, deterministic function of the buckets it has seen: no clock, no
//! I/O, no randomness, and its state serialises with serde so that the collector, a
//! replay and the tests run the same code. See `docs/anomaly-detection.md`.
//!
//! ```
//! use turnpike_anomaly::{Bucket, Config, Detector, Kind};
//!
//! let mut detector = Detector::new(Config::default());
//! let mut alerts = Vec::new();
//! for i in 0..600i64 {
//!     let value = if i == 500 { 900.0 } else { 100.0 + (i % 7) as f64 };
//!     let judgement = detector.observe(&Bucket::new(i * 300, value));
//!     alerts.extend(judgement.alerts.iter().copied());
//! }
//! assert_eq!(alerts.len(), 1);
//! assert_eq!(alerts[0].kind, Kind::Spike);
//! assert_eq!(alerts[0].bucket, 500 * 300);
//! ```

mod changepoint;
mod config;
mod denial;
mod detector;
mod episode;
mod input;
mod kinds;
mod plan;
pub mod robust;
mod seasonal;

pub mod dataset;
pub mod evaluate;
pub mod synth;

pub use config::{Config, Period, DAY_SECS, WEEK_SECS};
pub use detector::Detector;
pub use input::{Bucket, Quota, Requests};
pub use kinds::{Alerts, Anomaly, Judgement, Kind, Verdict};
