//! The objects the fake holds and their Stripe JSON form (`billing.meter`,
//! `billing.meter_event`, `billing.meter_event_adjustment`,
//! `billing.meter_event_summary`), plus the aggregation a meter applies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `default_aggregation.formula`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Formula {
    Count,
    Last,
    Sum,
}

impl Formula {
    pub const NAMES: &'static [&'static str] = &["count", "last", "sum"];

    pub fn parse(text: &str) -> Option<Formula> {
        match text {
            "count" => Some(Formula::Count),
            "last" => Some(Formula::Last),
            "sum" => Some(Formula::Sum),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Formula::Count => "count",
            Formula::Last => "last",
            Formula::Sum => "sum",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meter {
    pub id: String,
    pub created: i64,
    pub updated: i64,
    pub display_name: String,
    pub event_name: String,
    pub event_time_window: Option<String>,
    pub customer_payload_key: String,
    pub value_payload_key: String,
    pub formula: Formula,
    pub active: bool,
    pub deactivated_at: Option<i64>,
}

impl Meter {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "billing.meter",
            "created": self.created,
            "customer_mapping": {
                "event_payload_key": self.customer_payload_key,
                "type": "by_id",
            },
            "default_aggregation": { "formula": self.formula.as_str() },
            "display_name": self.display_name,
            "event_name": self.event_name,
            "event_time_window": self.event_time_window,
            "livemode": false,
            "status": if self.active { "active" } else { "inactive" },
            "status_transitions": { "deactivated_at": self.deactivated_at },
            "updated": self.updated,
            "value_settings": { "event_payload_key": self.value_payload_key },
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterEvent {
    pub identifier: String,
    pub event_name: String,
    pub payload: BTreeMap<String, String>,
    /// The event's time, as sent (or the receive time when left out).
    pub timestamp: i64,
    /// When the fake received it: the cancel window and identifier uniqueness
    /// run from here.
    pub created: i64,
    /// The meter it was recorded against at receipt, if one existed. Stripe v1
    /// accepts events for names without a meter and reports them asynchronously.
    pub meter: Option<String>,
    pub cancelled_at: Option<i64>,
}

impl MeterEvent {
    pub fn to_json(&self) -> Value {
        json!({
            "object": "billing.meter_event",
            "created": self.created,
            "event_name": self.event_name,
            "identifier": self.identifier,
            "livemode": false,
            "payload": self.payload,
            "timestamp": self.timestamp,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub event_name: String,
    pub identifier: String,
    pub created: i64,
}

impl Adjustment {
    pub fn to_json(&self) -> Value {
        json!({
            "object": "billing.meter_event_adjustment",
            "cancel": { "identifier": self.identifier },
            "event_name": self.event_name,
            "livemode": false,
            // Stripe may answer `pending` and apply the cancel later; the fake
            // applies it at once, so it is complete when answered.
            "status": "complete",
            "type": "cancel",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub id: String,
    pub meter: String,
    pub start_time: i64,
    pub end_time: i64,
    pub aggregated_value: i64,
}

impl Summary {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "billing.meter_event_summary",
            "aggregated_value": self.aggregated_value,
            "end_time": self.end_time,
            "livemode": false,
            "meter": self.meter,
            "start_time": self.start_time,
        })
    }
}

/// `value_grouping_window` of event summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    Hour,
    Day,
}

impl Grouping {
    pub const NAMES: &'static [&'static str] = &["day", "hour"];

    pub fn parse(text: &str) -> Option<Grouping> {
        match text {
            "hour" => Some(Grouping::Hour),
            "day" => Some(Grouping::Day),
            _ => None,
        }
    }

    pub fn secs(self) -> i64 {
        match self {
            Grouping::Hour => 3600,
            Grouping::Day => 86_400,
        }
    }
}

/// The `[start, end)` windows a summary request covers: one for the whole range
/// without grouping, else one per hour or UTC day.
pub fn windows(start: i64, end: i64, grouping: Option<Grouping>) -> Vec<(i64, i64)> {
    match grouping {
        None => vec![(start, end)],
        Some(g) => {
            let step = g.secs();
            (0..)
                .map(|i| start + i * step)
                .take_while(|s| *s < end)
                .map(|s| (s, (s + step).min(end)))
                .collect()
        }
    }
}

/// One event as an aggregation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub timestamp: i64,
    /// Receipt order, to pick the last of events with the same timestamp.
    pub created: i64,
    pub seq: usize,
    pub value: i64,
}

/// Aggregates the samples with the meter's formula; an empty window is 0.
pub fn aggregate(formula: Formula, samples: &[Sample]) -> i64 {
    match formula {
        Formula::Sum => samples.iter().map(|s| s.value).sum(),
        Formula::Count => samples.len() as i64,
        Formula::Last => samples
            .iter()
            .max_by_key(|s| (s.timestamp, s.created, s.seq))
            .map_or(0, |s| s.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(timestamp: i64, seq: usize, value: i64) -> Sample {
        Sample {
            timestamp,
            created: 0,
            seq,
            value,
        }
    }

    #[test]
    fn sum_count_and_last_aggregate_as_named() {
        let samples = [sample(10, 0, 5), sample(30, 1, 7), sample(20, 2, 100)];
        assert_eq!(aggregate(Formula::Sum, &samples), 112);
        assert_eq!(aggregate(Formula::Count, &samples), 3);
        // `last` is by event time, not by arrival.
        assert_eq!(aggregate(Formula::Last, &samples), 7);
        assert_eq!(aggregate(Formula::Sum, &[]), 0);
        assert_eq!(aggregate(Formula::Last, &[]), 0);
    }

    #[test]
    fn last_breaks_timestamp_ties_by_arrival() {
        let samples = [sample(10, 0, 1), sample(10, 1, 2)];
        assert_eq!(aggregate(Formula::Last, &samples), 2);
    }

    #[test]
    fn windows_split_by_hour_or_day_or_not_at_all() {
        assert_eq!(windows(0, 7200, None), vec![(0, 7200)]);
        assert_eq!(
            windows(0, 7200, Some(Grouping::Hour)),
            vec![(0, 3600), (3600, 7200)]
        );
        assert_eq!(
            windows(0, 2 * 86_400, Some(Grouping::Day)),
            vec![(0, 86_400), (86_400, 172_800)]
        );
        assert!(windows(3600, 3600, Some(Grouping::Hour)).is_empty());
    }

    #[test]
    fn meter_json_uses_stripe_field_names_and_nulls() {
        let meter = Meter {
            id: "mtr_1".into(),
            created: 1,
            updated: 2,
            display_name: "d".into(),
            event_name: "e".into(),
            event_time_window: None,
            customer_payload_key: "stripe_customer_id".into(),
            value_payload_key: "value".into(),
            formula: Formula::Sum,
            active: false,
            deactivated_at: Some(3),
        };
        let v = meter.to_json();
        assert_eq!(v["status"], "inactive");
        assert_eq!(v["status_transitions"]["deactivated_at"], 3);
        assert!(v["event_time_window"].is_null());
        assert_eq!(v["default_aggregation"]["formula"], "sum");
    }
}
