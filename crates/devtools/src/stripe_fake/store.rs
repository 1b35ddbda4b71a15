//! Everything the fake holds, and Stripe's rules for changing it. No I/O but
//! [`Store::load`] / [`Store::save`]; the time is always passed in.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::idempotency::Table;
use super::ids::stable_id;
use super::model::{
    aggregate, windows, Adjustment, Formula, Grouping, Meter, MeterEvent, Sample, Summary,
};

/// Identifier uniqueness holds for "a rolling period of at least 24 hours": the
/// fake enforces exactly the documented minimum, so a client cannot come to rely
/// on more.
pub const IDENTIFIER_UNIQUE_SECS: i64 = 24 * 3600;
/// "You can only cancel events within 24 hours of Stripe receiving them."
pub const CANCEL_WINDOW_SECS: i64 = 24 * 3600;
/// "Must be within the past 35 calendar days …"
pub const PAST_HORIZON_SECS: i64 = 35 * 86_400;
/// "… or up to 5 minutes in the future."
pub const FUTURE_TOLERANCE_SECS: i64 = 5 * 60;

pub const DEFAULT_CUSTOMER_KEY: &str = "stripe_customer_id";
pub const DEFAULT_VALUE_KEY: &str = "value";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Store {
    /// In creation order.
    pub meters: Vec<Meter>,
    /// In receipt order.
    pub events: Vec<MeterEvent>,
    pub adjustments: Vec<Adjustment>,
    pub idempotency: Table,
}

/// `POST /v1/billing/meters`, validated.
#[derive(Debug, Clone)]
pub struct NewMeter {
    pub display_name: String,
    pub event_name: String,
    pub formula: Formula,
    pub customer_key: Option<String>,
    pub value_key: Option<String>,
    pub event_time_window: Option<String>,
}

/// `POST /v1/billing/meter_events`, validated.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_name: String,
    pub identifier: Option<String>,
    pub payload: BTreeMap<String, String>,
    pub timestamp: Option<i64>,
}

impl Store {
    pub fn load(path: &Path) -> std::io::Result<Store> {
        let text = std::fs::read(path)?;
        serde_json::from_slice(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Writes atomically (temp file, rename) so a crash leaves the old state.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    fn active_meter_named(&self, event_name: &str) -> Option<&Meter> {
        self.meters
            .iter()
            .find(|m| m.active && m.event_name == event_name)
    }

    fn name_taken(event_name: &str) -> ApiError {
        ApiError::business(format!(
            "An active meter with event_name `{event_name}` already exists."
        ))
        .with_code("resource_already_exists")
        .with_param("event_name")
    }

    pub fn create_meter(
        &mut self,
        new: NewMeter,
        id: String,
        now: i64,
    ) -> Result<&Meter, ApiError> {
        if self.active_meter_named(&new.event_name).is_some() {
            return Err(Store::name_taken(&new.event_name));
        }
        self.meters.push(Meter {
            id,
            created: now,
            updated: now,
            display_name: new.display_name,
            event_name: new.event_name,
            event_time_window: new.event_time_window,
            customer_payload_key: new
                .customer_key
                .unwrap_or_else(|| DEFAULT_CUSTOMER_KEY.to_owned()),
            value_payload_key: new
                .value_key
                .unwrap_or_else(|| DEFAULT_VALUE_KEY.to_owned()),
            formula: new.formula,
            active: true,
            deactivated_at: None,
        });
        Ok(self.meters.last().expect("just pushed"))
    }

    pub fn meter(&self, id: &str) -> Result<&Meter, ApiError> {
        self.meters
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| ApiError::no_such("billing.meter", id, "id"))
    }

    fn meter_mut(&mut self, id: &str) -> Result<&mut Meter, ApiError> {
        self.meters
            .iter_mut()
            .find(|m| m.id == id)
            .ok_or_else(|| ApiError::no_such("billing.meter", id, "id"))
    }

    /// Newest first, as Stripe lists.
    pub fn list_meters(&self, active: Option<bool>) -> Vec<Meter> {
        self.meters
            .iter()
            .rev()
            .filter(|m| active.is_none_or(|a| m.active == a))
            .cloned()
            .collect()
    }

    pub fn update_meter(
        &mut self,
        id: &str,
        display_name: Option<String>,
        now: i64,
    ) -> Result<&Meter, ApiError> {
        let meter = self.meter_mut(id)?;
        if let Some(name) = display_name {
            meter.display_name = name;
            meter.updated = now;
        }
        Ok(meter)
    }

    pub fn deactivate(&mut self, id: &str, now: i64) -> Result<&Meter, ApiError> {
        let meter = self.meter_mut(id)?;
        if !meter.active {
            return Err(ApiError::business(format!(
                "Meter {id} is already inactive and cannot be deactivated."
            ))
            .with_code("status_transition_invalid"));
        }
        meter.active = false;
        meter.deactivated_at = Some(now);
        meter.updated = now;
        Ok(meter)
    }

    pub fn reactivate(&mut self, id: &str, now: i64) -> Result<&Meter, ApiError> {
        let event_name = self.meter(id)?.event_name.clone();
        let meter = self.meter(id)?;
        if meter.active {
            return Err(ApiError::business(format!(
                "Meter {id} is already active and cannot be reactivated."
            ))
            .with_code("status_transition_invalid"));
        }
        if self.active_meter_named(&event_name).is_some() {
            return Err(Store::name_taken(&event_name));
        }
        let meter = self.meter_mut(id)?;
        meter.active = true;
        meter.deactivated_at = None;
        meter.updated = now;
        Ok(meter)
    }

    /// Records a meter event. `generated` is the identifier to use when none was
    /// given.
    pub fn record_event(
        &mut self,
        new: NewEvent,
        generated: String,
        now: i64,
    ) -> Result<&MeterEvent, ApiError> {
        let timestamp = new.timestamp.unwrap_or(now);
        if timestamp < now - PAST_HORIZON_SECS {
            return Err(ApiError::invalid_value(
                "timestamp",
                format!(
                    "Timestamp {timestamp} is too far in the past: meter events must be within \
                     the past 35 calendar days."
                ),
            ));
        }
        if timestamp > now + FUTURE_TOLERANCE_SECS {
            return Err(ApiError::invalid_value(
                "timestamp",
                format!(
                    "Timestamp {timestamp} is too far in the future: meter events can be at \
                     most 5 minutes in the future."
                ),
            ));
        }
        let identifier = new.identifier.unwrap_or(generated);
        let duplicate = self
            .events
            .iter()
            .any(|e| e.identifier == identifier && now - e.created < IDENTIFIER_UNIQUE_SECS);
        if duplicate {
            return Err(ApiError::business(format!(
                "An event already exists with identifier {identifier}."
            ))
            .with_param("identifier")
            .retry_advice(false));
        }
        // Stripe v1 accepts events for a name no meter uses and reports them later
        // (meter error reports); a name whose only meter is inactive is refused.
        let meter = match self.active_meter_named(&new.event_name) {
            Some(meter) => Some(meter),
            None => {
                if let Some(inactive) = self
                    .meters
                    .iter()
                    .rev()
                    .find(|m| m.event_name == new.event_name)
                {
                    return Err(ApiError::business(format!(
                        "The meter {} for event_name `{}` is inactive: the meter must be \
                         active to submit events.",
                        inactive.id, new.event_name
                    ))
                    .with_param("event_name"));
                }
                None
            }
        };
        if let Some(meter) = meter {
            check_payload(meter, &new.payload)?;
        }
        let meter = meter.map(|m| m.id.clone());
        self.events.push(MeterEvent {
            identifier,
            event_name: new.event_name,
            payload: new.payload,
            timestamp,
            created: now,
            meter,
            cancelled_at: None,
        });
        Ok(self.events.last().expect("just pushed"))
    }

    /// Cancels the event with `identifier` (the latest one, if an identifier was
    /// reused after its uniqueness period).
    pub fn cancel_event(
        &mut self,
        event_name: &str,
        identifier: &str,
        now: i64,
    ) -> Result<Adjustment, ApiError> {
        let Some(event) = self
            .events
            .iter_mut()
            .rev()
            .find(|e| e.identifier == identifier && e.event_name == event_name)
        else {
            return Err(ApiError::no_such(
                "meter event",
                identifier,
                "cancel[identifier]",
            ));
        };
        if event.cancelled_at.is_some() {
            return Err(ApiError::business(format!(
                "The meter event with identifier {identifier} has already been cancelled."
            ))
            .with_param("cancel[identifier]"));
        }
        if now - event.created >= CANCEL_WINDOW_SECS {
            return Err(ApiError::business(format!(
                "You can only cancel events within 24 hours of Stripe receiving them. The event \
                 with identifier {identifier} was received more than 24 hours ago."
            ))
            .with_param("cancel[identifier]"));
        }
        event.cancelled_at = Some(now);
        let adjustment = Adjustment {
            event_name: event_name.to_owned(),
            identifier: identifier.to_owned(),
            created: now,
        };
        self.adjustments.push(adjustment.clone());
        Ok(adjustment)
    }

    /// Summaries of `customer`'s events on a meter over `[start, end)`, in
    /// chronological order. Cancelled events do not count.
    pub fn summaries(
        &self,
        meter_id: &str,
        customer: &str,
        start: i64,
        end: i64,
        grouping: Option<Grouping>,
    ) -> Result<Vec<Summary>, ApiError> {
        let meter = self.meter(meter_id)?;
        check_alignment("start_time", start, grouping)?;
        check_alignment("end_time", end, grouping)?;
        if end <= start {
            return Err(ApiError::invalid_value(
                "end_time",
                "end_time must be after start_time.",
            ));
        }
        let samples: Vec<Sample> = self
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.meter.as_deref() == Some(meter_id) && e.cancelled_at.is_none())
            .filter(|(_, e)| {
                e.payload
                    .get(&meter.customer_payload_key)
                    .map(String::as_str)
                    == Some(customer)
            })
            .map(|(seq, e)| Sample {
                timestamp: e.timestamp,
                created: e.created,
                seq,
                value: e
                    .payload
                    .get(&meter.value_payload_key)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            })
            .collect();
        Ok(windows(start, end, grouping)
            .into_iter()
            .map(|(ws, we)| {
                let inside: Vec<Sample> = samples
                    .iter()
                    .filter(|s| s.timestamp >= ws && s.timestamp < we)
                    .copied()
                    .collect();
                Summary {
                    id: stable_id(
                        "mtrusg_test_",
                        &[meter_id, customer, &ws.to_string(), &we.to_string()],
                        24,
                    ),
                    meter: meter_id.to_owned(),
                    start_time: ws,
                    end_time: we,
                    aggregated_value: aggregate(meter.formula, &inside),
                }
            })
            .collect())
    }
}

/// The payload must name the customer and, unless the meter counts events, carry a
/// whole-number value. Stripe v2 refuses these synchronously
/// (`payload_no_customer_defined`, `payload_no_value_defined`,
/// `payload_invalid_value`); v1 may report them later instead, the fake refuses them
/// at once so a client bug shows up in tests.
fn check_payload(meter: &Meter, payload: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let customer_param = format!("payload[{}]", meter.customer_payload_key);
    if !payload.contains_key(&meter.customer_payload_key) {
        return Err(ApiError::invalid_value(
            &customer_param,
            format!(
                "The payload must have a reference to the customer in `{}`.",
                meter.customer_payload_key
            ),
        ));
    }
    if meter.formula == Formula::Count {
        return Ok(());
    }
    let value_param = format!("payload[{}]", meter.value_payload_key);
    match payload.get(&meter.value_payload_key) {
        None => Err(ApiError::invalid_value(
            &value_param,
            format!(
                "The payload must have a value in `{}`.",
                meter.value_payload_key
            ),
        )),
        Some(v) if v.parse::<i64>().is_err() => Err(ApiError::invalid_value(
            &value_param,
            format!("The value must be a whole number, got `{v}`."),
        )),
        Some(_) => Ok(()),
    }
}

fn check_alignment(param: &str, at: i64, grouping: Option<Grouping>) -> Result<(), ApiError> {
    let (step, what) = match grouping {
        None => (60, "minute"),
        Some(Grouping::Hour) => (3600, "hour"),
        Some(Grouping::Day) => (86_400, "UTC day"),
    };
    if at.rem_euclid(step) != 0 {
        return Err(ApiError::invalid_value(
            param,
            format!("{param} must be aligned with {what} boundaries."),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000 - 1_700_000_000 % 86_400;

    fn meter(event_name: &str, formula: Formula) -> NewMeter {
        NewMeter {
            display_name: "d".into(),
            event_name: event_name.into(),
            formula,
            customer_key: None,
            value_key: None,
            event_time_window: None,
        }
    }

    fn event(id: &str, customer: &str, value: &str, timestamp: i64) -> NewEvent {
        let mut payload = BTreeMap::new();
        payload.insert("stripe_customer_id".to_owned(), customer.to_owned());
        payload.insert("value".to_owned(), value.to_owned());
        NewEvent {
            event_name: "api".into(),
            identifier: Some(id.into()),
            payload,
            timestamp: Some(timestamp),
        }
    }

    fn store_with_meter(formula: Formula) -> Store {
        let mut store = Store::default();
        store
            .create_meter(meter("api", formula), "mtr_1".into(), NOW)
            .unwrap();
        store
    }

    #[test]
    fn event_name_is_unique_among_active_meters_only() {
        let mut store = store_with_meter(Formula::Sum);
        let err = store
            .create_meter(meter("api", Formula::Sum), "mtr_2".into(), NOW)
            .unwrap_err();
        assert_eq!(err.code, Some("resource_already_exists"));
        store.deactivate("mtr_1", NOW).unwrap();
        store
            .create_meter(meter("api", Formula::Sum), "mtr_2".into(), NOW)
            .unwrap();
        // The old meter cannot come back while the new one holds the name.
        assert_eq!(
            store.reactivate("mtr_1", NOW).unwrap_err().code,
            Some("resource_already_exists")
        );
    }

    #[test]
    fn status_transitions_must_change_the_status() {
        let mut store = store_with_meter(Formula::Sum);
        assert_eq!(
            store.reactivate("mtr_1", NOW).unwrap_err().code,
            Some("status_transition_invalid")
        );
        let m = store.deactivate("mtr_1", NOW + 5).unwrap();
        assert_eq!((m.active, m.deactivated_at), (false, Some(NOW + 5)));
        assert_eq!(
            store.deactivate("mtr_1", NOW).unwrap_err().code,
            Some("status_transition_invalid")
        );
        let m = store.reactivate("mtr_1", NOW + 9).unwrap();
        assert_eq!(
            (m.active, m.deactivated_at, m.updated),
            (true, None, NOW + 9)
        );
    }

    #[test]
    fn a_repeated_identifier_is_refused_for_24_hours_then_accepted_again() {
        let mut store = store_with_meter(Formula::Sum);
        store
            .record_event(event("a", "cus_1", "1", NOW), "g".into(), NOW)
            .unwrap();
        let later = NOW + IDENTIFIER_UNIQUE_SECS - 1;
        let err = store
            .record_event(event("a", "cus_1", "1", later), "g".into(), later)
            .unwrap_err();
        assert_eq!(err.message, "An event already exists with identifier a.");
        assert_eq!(
            (err.status, err.should_retry, err.storable),
            (400, Some(false), true)
        );
        let after = NOW + IDENTIFIER_UNIQUE_SECS;
        store
            .record_event(event("a", "cus_1", "1", after), "g".into(), after)
            .unwrap();
    }

    #[test]
    fn timestamps_must_lie_within_35_days_back_and_5_minutes_ahead() {
        let mut store = store_with_meter(Formula::Sum);
        let oldest = NOW - PAST_HORIZON_SECS;
        store
            .record_event(event("a", "c", "1", oldest), "g".into(), NOW)
            .unwrap();
        let err = store
            .record_event(event("b", "c", "1", oldest - 1), "g".into(), NOW)
            .unwrap_err();
        assert_eq!(
            (err.param.as_deref(), err.storable),
            (Some("timestamp"), false)
        );
        store
            .record_event(event("c", "c", "1", NOW + 300), "g".into(), NOW)
            .unwrap();
        let err = store
            .record_event(event("d", "c", "1", NOW + 301), "g".into(), NOW)
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("timestamp"));
    }

    #[test]
    fn inactive_meters_refuse_events_and_unmetered_names_are_accepted() {
        let mut store = store_with_meter(Formula::Sum);
        store.deactivate("mtr_1", NOW).unwrap();
        let err = store
            .record_event(event("a", "c", "1", NOW), "g".into(), NOW)
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("event_name"));
        let mut orphan = event("b", "c", "1", NOW);
        orphan.event_name = "nobody".into();
        assert_eq!(
            store.record_event(orphan, "g".into(), NOW).unwrap().meter,
            None
        );
    }

    #[test]
    fn payload_needs_customer_and_whole_number_value_unless_counting() {
        let mut store = store_with_meter(Formula::Sum);
        let mut e = event("a", "c", "1.5", NOW);
        assert_eq!(
            store
                .record_event(e.clone(), "g".into(), NOW)
                .unwrap_err()
                .param
                .as_deref(),
            Some("payload[value]")
        );
        e.payload.remove("stripe_customer_id");
        assert_eq!(
            store
                .record_event(e, "g".into(), NOW)
                .unwrap_err()
                .param
                .as_deref(),
            Some("payload[stripe_customer_id]")
        );
        let mut counting = Store::default();
        counting
            .create_meter(meter("api", Formula::Count), "mtr_c".into(), NOW)
            .unwrap();
        let mut e = event("a", "c", "1", NOW);
        e.payload.remove("value");
        counting.record_event(e, "g".into(), NOW).unwrap();
    }

    #[test]
    fn cancel_works_within_24_hours_of_receipt_and_only_once() {
        let mut store = store_with_meter(Formula::Sum);
        store
            .record_event(event("a", "c", "1", NOW - 3600), "g".into(), NOW)
            .unwrap();
        store
            .record_event(event("b", "c", "1", NOW), "g".into(), NOW)
            .unwrap();
        store
            .cancel_event("api", "a", NOW + CANCEL_WINDOW_SECS - 1)
            .unwrap();
        let again = store.cancel_event("api", "a", NOW + 10).unwrap_err();
        assert_eq!(again.param.as_deref(), Some("cancel[identifier]"));
        let late = store
            .cancel_event("api", "b", NOW + CANCEL_WINDOW_SECS)
            .unwrap_err();
        assert!(late.message.contains("within 24 hours"), "{}", late.message);
        let missing = store.cancel_event("api", "zzz", NOW).unwrap_err();
        assert_eq!(
            (missing.status, missing.code),
            (404, Some("resource_missing"))
        );
        let other_name = store.cancel_event("other", "b", NOW).unwrap_err();
        assert_eq!(other_name.status, 404);
    }

    #[test]
    fn summaries_aggregate_per_window_per_customer_without_cancelled_events() {
        let mut store = store_with_meter(Formula::Sum);
        let h0 = NOW - 2 * 86_400;
        for (id, customer, value, at) in [
            ("1", "cus_a", "5", h0),
            ("2", "cus_a", "7", h0 + 3599),
            ("3", "cus_a", "11", h0 + 3600),
            ("4", "cus_b", "100", h0 + 10),
            ("5", "cus_a", "1000", h0 + 20),
        ] {
            store
                .record_event(event(id, customer, value, at), "g".into(), NOW)
                .unwrap();
        }
        store.cancel_event("api", "5", NOW).unwrap();
        let hourly = store
            .summaries("mtr_1", "cus_a", h0, h0 + 3 * 3600, Some(Grouping::Hour))
            .unwrap();
        let values: Vec<(i64, i64)> = hourly
            .iter()
            .map(|s| (s.start_time, s.aggregated_value))
            .collect();
        assert_eq!(values, vec![(h0, 12), (h0 + 3600, 11), (h0 + 7200, 0)]);
        let daily = store
            .summaries("mtr_1", "cus_a", h0, h0 + 86_400, Some(Grouping::Day))
            .unwrap();
        assert_eq!(daily[0].aggregated_value, 23);
        let whole = store
            .summaries("mtr_1", "cus_b", h0, h0 + 60, None)
            .unwrap();
        assert_eq!((whole.len(), whole[0].aggregated_value), (1, 100));
    }

    #[test]
    fn summary_bounds_must_align_with_the_grouping() {
        let store = store_with_meter(Formula::Sum);
        let err = store
            .summaries("mtr_1", "c", NOW + 30, NOW + 120, None)
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("start_time"));
        let err = store
            .summaries("mtr_1", "c", NOW, NOW + 60, Some(Grouping::Hour))
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("end_time"));
        let err = store
            .summaries("mtr_1", "c", NOW + 3600, NOW, None)
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("end_time"));
        let err = store
            .summaries("mtr_x", "c", NOW, NOW + 60, None)
            .unwrap_err();
        assert_eq!(err.status, 404);
    }

    #[test]
    fn state_survives_a_save_and_load() {
        let mut store = store_with_meter(Formula::Last);
        store
            .record_event(event("a", "c", "3", NOW), "g".into(), NOW)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("stripe-fake-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        store.save(&path).unwrap();
        let loaded = Store::load(&path).unwrap();
        assert_eq!(loaded.meters, store.meters);
        assert_eq!(loaded.events, store.events);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
