//! Stripe's objects as the client reads them: only the fields Turnpike uses, so a
//! field Stripe adds later does not break decoding.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `default_aggregation.formula`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Formula {
    Count,
    Last,
    Sum,
}

impl Formula {
    pub fn as_str(self) -> &'static str {
        match self {
            Formula::Count => "count",
            Formula::Last => "last",
            Formula::Sum => "sum",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterStatus {
    Active,
    Inactive,
}

impl MeterStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MeterStatus::Active => "active",
            MeterStatus::Inactive => "inactive",
        }
    }
}

/// `value_grouping_window` of event summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    Hour,
    Day,
}

impl Grouping {
    pub fn as_str(self) -> &'static str {
        match self {
            Grouping::Hour => "hour",
            Grouping::Day => "day",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PayloadKey {
    pub event_payload_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Aggregation {
    pub formula: Formula,
}

/// `billing.meter`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Meter {
    pub id: String,
    pub display_name: String,
    pub event_name: String,
    pub status: MeterStatus,
    pub default_aggregation: Aggregation,
    pub customer_mapping: PayloadKey,
    pub value_settings: PayloadKey,
    /// `hour` or `day` when the meter takes pre-aggregated events (the latest event
    /// of a window replaces the earlier ones); absent for raw events.
    #[serde(default)]
    pub event_time_window: Option<String>,
    pub created: i64,
}

/// `billing.meter_event`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MeterEvent {
    pub identifier: String,
    pub event_name: String,
    pub timestamp: i64,
    pub created: i64,
    pub payload: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CancelTarget {
    pub identifier: Option<String>,
}

/// `billing.meter_event_adjustment`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MeterEventAdjustment {
    pub event_name: String,
    /// `complete`, or `pending` while Stripe still applies it.
    pub status: String,
    pub cancel: Option<CancelTarget>,
}

/// `billing.meter_event_summary`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MeterEventSummary {
    pub id: String,
    pub meter: String,
    /// A number in Stripe's schema; whole for the whole-number values Turnpike sends.
    pub aggregated_value: f64,
    pub start_time: i64,
    pub end_time: i64,
}

/// A page of a Stripe list.
#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

/// What `create_meter` sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMeter {
    pub display_name: String,
    pub event_name: String,
    pub formula: Formula,
    /// Payload key of the customer id (Stripe's default `stripe_customer_id`).
    pub customer_payload_key: Option<String>,
    /// Payload key of the value (Stripe's default `value`).
    pub value_payload_key: Option<String>,
}
