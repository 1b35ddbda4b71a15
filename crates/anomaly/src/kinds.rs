//! What the detector says about a bucket: the kinds of anomaly, an alert, a judgement.

use serde::{Deserialize, Serialize};

/// The kinds of anomaly the detector reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Usage far above the series' own expectation (leaked key, retry loop).
    Spike,
    /// Usage far below it, including silence of a normally active series.
    Drop,
    /// Share of denied requests far above the series' normal share.
    DenialStorm,
    /// On track to use `burn_factor` times the plan limit by the end of the period.
    PlanBurn,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Spike, Kind::Drop, Kind::DenialStorm, Kind::PlanBurn];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Spike => "spike",
            Kind::Drop => "drop",
            Kind::DenialStorm => "denial_storm",
            Kind::PlanBurn => "plan_burn",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An alert: the first bucket of an episode of one kind. An episode raises exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: Kind,
    /// The bucket (start, unix seconds) at which the alert was raised.
    pub bucket: i64,
    /// Where the evidence starts: for a sustained shift, the bucket at which the CUSUM
    /// left zero; otherwise `bucket`.
    pub episode_start: i64,
    /// Strength of the evidence: robust z (spike, drop, denial storm, the sign dropped)
    /// or projected usage over the limit (plan burn).
    pub score: f64,
    /// Baseline expectation: usage (spike, drop), denied share (denial storm), or the
    /// plan limit (plan burn).
    pub expected: f64,
    /// What was seen: usage, denied share, or usage projected to the period's end.
    pub observed: f64,
}

/// The state of the bucket's series after judging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Too little history to judge usage yet.
    Warmup,
    /// Nothing unusual.
    Normal,
    /// Inside an episode of this kind (the first bucket of an episode also has an alert).
    Anomalous(Kind),
    /// Not judged: the bucket was not after the previous one, or its value not finite.
    Skipped,
}

/// Up to one alert per kind family (usage, denials, plan) in a bucket, without
/// allocating.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Alerts {
    slots: [Option<Anomaly>; 3],
}

impl Alerts {
    pub(crate) fn push(&mut self, anomaly: Anomaly) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.is_none()) {
            *slot = Some(anomaly);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Anomaly> {
        self.slots.iter().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

/// The detector's judgement of one bucket, on its usage value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub bucket: i64,
    /// The usage the baseline expected for this bucket (before seeing it).
    pub expected: f64,
    pub observed: f64,
    /// Signed robust z of `observed` against `expected`; 0 during warm-up.
    pub score: f64,
    pub verdict: Verdict,
    /// Episodes that open at this bucket: the alerts to send.
    pub alerts: Alerts,
}
