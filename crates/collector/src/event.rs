//! Decoding and validation of incoming usage events: pure logic, no I/O.
//!
//! A request body becomes a list of [`LedgerEvent`]s or one [`IngestError`] that names
//! the event index and the field, so the client can fix the exact thing that is wrong.

use std::collections::HashSet;

use serde::de::DeserializeOwned;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use turnpike_plans::ids;
use turnpike_wire::{Decision, UsageEvent, USAGE_EVENT_TYPE};

/// Longest accepted `id`, `source`, `route` (bytes). These are keys and labels, not payloads.
const MAX_TEXT_LEN: usize = 256;
/// Most meters one event may carry.
const MAX_METERS_PER_EVENT: usize = 64;

/// How the body is framed, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `application/cloudevents-batch+json`: a JSON array of events.
    Batch,
    /// `application/cloudevents+json`: one event.
    Single,
}

impl Framing {
    /// The framing for a Content-Type header value, ignoring parameters and case;
    /// `None` for any other media type.
    pub fn from_content_type(value: &str) -> Option<Framing> {
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/cloudevents-batch+json") {
            Some(Framing::Batch)
        } else if essence.eq_ignore_ascii_case("application/cloudevents+json") {
            Some(Framing::Single)
        } else {
            None
        }
    }
}

/// Why a body was refused. Each maps to one HTTP status and problem type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    /// Not JSON at all (syntax error, truncated).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// More events than the configured maximum.
    #[error("batch has {len} events; at most {max} are accepted per request")]
    BatchTooLong { len: usize, max: usize },
    /// JSON, but an event does not have the expected shape or values.
    #[error("{field}: {reason}")]
    InvalidEvent { field: String, reason: String },
}

/// One validated event, ready for the ledger. Integers are already range-checked to
/// fit the signed 64-bit columns of both SQLite and PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEvent {
    pub source: String,
    pub id: String,
    pub tenant: String,
    pub time_ms: i64,
    pub plan: Option<String>,
    pub method: String,
    pub route: String,
    pub status: i32,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub duration_ms: i64,
    pub decision: Decision,
    pub billable: bool,
    /// (meter, quantity), in event order, names unique.
    pub meters: Vec<(String, i64)>,
}

impl LedgerEvent {
    /// The ledger's primary key.
    pub fn key(&self) -> (&str, &str) {
        (&self.source, &self.id)
    }

    /// The meters as stored in the ledger's `meters` JSON column (for listings).
    pub fn meters_json(&self) -> String {
        let list: Vec<serde_json::Value> = self
            .meters
            .iter()
            .map(|(meter, quantity)| serde_json::json!({ "meter": meter, "quantity": quantity }))
            .collect();
        serde_json::Value::Array(list).to_string()
    }
}

/// The ledger's name for a decision.
pub fn decision_str(decision: Decision) -> &'static str {
    match decision {
        Decision::Allowed => "allowed",
        Decision::Denied => "denied",
        Decision::Unverified => "unverified",
    }
}

/// Decode a body framed as `framing` and validate every event. All or nothing: one bad
/// event refuses the whole body.
pub fn decode_body(
    body: &[u8],
    framing: Framing,
    max_events: usize,
) -> Result<Vec<LedgerEvent>, IngestError> {
    let (events, prefix) = match framing {
        Framing::Batch => (decode::<Vec<UsageEvent>>(body, "events")?, "events"),
        Framing::Single => {
            // serde would also read a struct from an array; say what was meant instead.
            if body.trim_ascii_start().first() == Some(&b'[') {
                return Err(IngestError::InvalidEvent {
                    field: "event".to_owned(),
                    reason:
                        "must be one JSON object; send arrays as application/cloudevents-batch+json"
                            .to_owned(),
                });
            }
            (vec![decode::<UsageEvent>(body, "event")?], "event")
        }
    };
    if events.len() > max_events {
        return Err(IngestError::BatchTooLong {
            len: events.len(),
            max: max_events,
        });
    }
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            let at = match framing {
                Framing::Batch => format!("{prefix}[{index}]"),
                Framing::Single => prefix.to_owned(),
            };
            validate(event).map_err(|(field, reason)| IngestError::InvalidEvent {
                field: format!("{at}.{field}"),
                reason,
            })
        })
        .collect()
}

/// Deserialize with the path of the offending field in the error.
fn decode<T: DeserializeOwned>(body: &[u8], root: &str) -> Result<T, IngestError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return IngestError::MalformedJson(inner.to_string());
        }
        // serde_path_to_error renders the root as "." and array items as "[3]".
        let field = match path.as_str() {
            "." => root.to_owned(),
            p if p.starts_with('[') => format!("{root}{p}"),
            p => format!("{root}.{p}"),
        };
        IngestError::InvalidEvent {
            field,
            reason: strip_position(&inner.to_string()),
        }
    })?;
    // Trailing bytes after the JSON value make the body malformed, not a valid batch.
    de.end()
        .map_err(|e| IngestError::MalformedJson(e.to_string()))?;
    Ok(value)
}

/// serde_json appends " at line L column C" to data errors; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

type FieldError = (&'static str, String);

fn validate(event: UsageEvent) -> Result<LedgerEvent, FieldError> {
    if event.specversion != "1.0" {
        return Err((
            "specversion",
            format!("must be \"1.0\", got {:?}", event.specversion),
        ));
    }
    if event.kind != USAGE_EVENT_TYPE {
        return Err((
            "type",
            format!("must be {USAGE_EVENT_TYPE:?}, got {:?}", event.kind),
        ));
    }
    check_text("id", &event.id, MAX_TEXT_LEN)?;
    check_text("source", &event.source, MAX_TEXT_LEN)?;
    if !ids::is_valid_tenant(&event.subject) {
        return Err((
            "subject",
            "must be a tenant id: 1..=64 of [A-Za-z0-9._-]".to_owned(),
        ));
    }
    let time_ms = parse_time_ms(&event.time).ok_or_else(|| {
        (
            "time",
            format!("must be an RFC 3339 timestamp, got {:?}", event.time),
        )
    })?;
    if let Some(ct) = &event.datacontenttype {
        if ct != "application/json" {
            return Err((
                "datacontenttype",
                format!("must be \"application/json\", got {ct:?}"),
            ));
        }
    }
    let data = event.data;
    if let Some(plan) = &data.plan {
        if !ids::is_valid_plan_name(plan) {
            return Err(("data.plan", "must be 1..=64 of [A-Za-z0-9._-]".to_owned()));
        }
    }
    if data.meters.len() > MAX_METERS_PER_EVENT {
        return Err((
            "data.meters",
            format!("at most {MAX_METERS_PER_EVENT} meters per event"),
        ));
    }
    let mut seen = HashSet::new();
    let mut meters = Vec::with_capacity(data.meters.len());
    for m in data.meters {
        if !ids::is_valid_meter(&m.meter) {
            return Err((
                "data.meters.meter",
                format!("must be 1..=32 of [a-z0-9_], got {:?}", m.meter),
            ));
        }
        if !seen.insert(m.meter.clone()) {
            return Err((
                "data.meters.meter",
                format!("meter {:?} appears twice", m.meter),
            ));
        }
        meters.push((m.meter, to_i64("data.meters.cost", m.cost)?));
    }
    if data.method.is_empty()
        || data.method.len() > 32
        || !data.method.bytes().all(|b| b.is_ascii_alphabetic())
    {
        return Err(("data.method", "must be an HTTP method name".to_owned()));
    }
    check_text("data.route", &data.route, MAX_TEXT_LEN)?;
    if !(100..=599).contains(&data.status) {
        return Err((
            "data.status",
            format!("must be an HTTP status 100..=599, got {}", data.status),
        ));
    }
    Ok(LedgerEvent {
        source: event.source,
        id: event.id,
        tenant: event.subject,
        time_ms,
        plan: data.plan,
        method: data.method,
        route: data.route,
        status: i32::from(data.status),
        request_bytes: to_i64("data.request_bytes", data.request_bytes)?,
        response_bytes: to_i64("data.response_bytes", data.response_bytes)?,
        duration_ms: to_i64("data.duration_ms", data.duration_ms)?,
        billable: data.decision.billable(),
        decision: data.decision,
        meters,
    })
}

/// Non-empty, bounded, printable ASCII without spaces: these are keys and labels.
fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err((field, "must not be empty".to_owned()));
    }
    if value.len() > max {
        return Err((field, format!("longer than {max} bytes")));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err((field, "must be printable ASCII without spaces".to_owned()));
    }
    Ok(())
}

fn to_i64(field: &'static str, value: u64) -> Result<i64, FieldError> {
    i64::try_from(value).map_err(|_| (field, format!("{value} is larger than {}", i64::MAX)))
}

/// RFC 3339 (any offset) to unix milliseconds, UTC.
pub fn parse_time_ms(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Unix milliseconds to RFC 3339 UTC (`2026-02-28T00:00:00Z`, fractions when present).
pub fn format_time_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Drop repeated keys inside one batch (first occurrence wins) and sort by key, so
/// that concurrent transactions lock ledger rows in one global order and cannot
/// deadlock each other. Returns the unique events and how many were dropped.
pub fn dedup_sorted(mut events: Vec<LedgerEvent>) -> (Vec<LedgerEvent>, u64) {
    let before = events.len();
    // Stable sort keeps the first occurrence first among equal keys.
    events.sort_by(|a, b| a.key().cmp(&b.key()));
    events.dedup_by(|later, earlier| later.key() == earlier.key());
    let dropped = (before - events.len()) as u64;
    (events, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(id: &str) -> serde_json::Value {
        json!({
            "specversion": "1.0", "id": id, "source": "//turnpike/envoy/a",
            "type": "dev.turnpike.usage.v1", "subject": "acme",
            "time": "2026-02-28T01:00:00+02:00", "datacontenttype": "application/json",
            "data": { "meters": [{"meter": "requests", "cost": 1}, {"meter": "search_units", "cost": 5}],
                      "plan": "pro", "method": "GET", "route": "search", "status": 200,
                      "request_bytes": 10, "response_bytes": 20, "duration_ms": 3,
                      "decision": "allowed" }
        })
    }

    fn batch(events: &[serde_json::Value]) -> Vec<u8> {
        serde_json::to_vec(events).unwrap()
    }

    fn invalid_field(result: Result<Vec<LedgerEvent>, IngestError>) -> String {
        match result {
            Err(IngestError::InvalidEvent { field, .. }) => field,
            other => panic!("expected InvalidEvent, got {other:?}"),
        }
    }

    #[test]
    fn content_type_ignores_parameters_and_case() {
        assert_eq!(
            Framing::from_content_type("Application/CloudEvents-Batch+JSON; charset=utf-8"),
            Some(Framing::Batch)
        );
        assert_eq!(
            Framing::from_content_type("application/cloudevents+json"),
            Some(Framing::Single)
        );
        assert_eq!(Framing::from_content_type("application/json"), None);
    }

    #[test]
    fn valid_event_is_normalised_to_utc_millis() {
        let events = decode_body(&batch(&[event("e1")]), Framing::Batch, 10).unwrap();
        let e = &events[0];
        // 01:00 at +02:00 is 23:00 UTC the day before.
        assert_eq!(format_time_ms(e.time_ms), "2026-02-27T23:00:00Z");
        assert_eq!(
            e.meters,
            vec![("requests".into(), 1), ("search_units".into(), 5)]
        );
        assert!(e.billable);
        assert_eq!(
            e.meters_json(),
            r#"[{"meter":"requests","quantity":1},{"meter":"search_units","quantity":5}]"#
        );
    }

    #[test]
    fn single_event_framing_takes_one_object() {
        let body = serde_json::to_vec(&event("e1")).unwrap();
        assert_eq!(decode_body(&body, Framing::Single, 10).unwrap().len(), 1);
        // An array is not one event.
        assert_eq!(
            invalid_field(decode_body(&batch(&[event("e1")]), Framing::Single, 10)),
            "event"
        );
    }

    #[test]
    fn truncated_json_is_malformed_not_invalid() {
        let result = decode_body(b"[{\"specversion\":", Framing::Batch, 10);
        assert!(
            matches!(result, Err(IngestError::MalformedJson(_))),
            "{result:?}"
        );
        let trailing = decode_body(b"[] x", Framing::Batch, 10);
        assert!(
            matches!(trailing, Err(IngestError::MalformedJson(_))),
            "{trailing:?}"
        );
    }

    #[test]
    fn missing_nested_field_names_index_and_path() {
        let mut bad = event("e2");
        bad["data"].as_object_mut().unwrap().remove("route");
        let err = decode_body(&batch(&[event("e1"), bad]), Framing::Batch, 10).unwrap_err();
        assert_eq!(
            err,
            IngestError::InvalidEvent {
                field: "events[1].data".into(),
                reason: "missing field `route`".into()
            }
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let mut bad = event("e1");
        bad["data"]["status"] = json!("ok");
        assert_eq!(
            invalid_field(decode_body(&batch(&[bad]), Framing::Batch, 10)),
            "events[0].data.status"
        );
    }

    #[test]
    fn each_semantic_rule_names_its_field() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("specversion", json!("0.3"), "events[0].specversion"),
            ("type", json!("com.example.other"), "events[0].type"),
            ("id", json!(""), "events[0].id"),
            ("source", json!(""), "events[0].source"),
            ("subject", json!("acme corp"), "events[0].subject"),
            ("time", json!("yesterday"), "events[0].time"),
            ("time", json!("2026-02-28 01:00:00"), "events[0].time"),
            (
                "datacontenttype",
                json!("text/plain"),
                "events[0].datacontenttype",
            ),
        ];
        for (key, value, field) in cases {
            let mut bad = event("e1");
            bad[key] = value.clone();
            assert_eq!(
                invalid_field(decode_body(&batch(&[bad]), Framing::Batch, 10)),
                field,
                "{key}={value}"
            );
        }
        let data_cases: Vec<(&str, serde_json::Value, &str)> = vec![
            (
                "meters",
                json!([{"meter": "", "cost": 1}]),
                "events[0].data.meters.meter",
            ),
            (
                "meters",
                json!([{"meter": "Req", "cost": 1}]),
                "events[0].data.meters.meter",
            ),
            (
                "meters",
                json!([{"meter": "a", "cost": 1}, {"meter": "a", "cost": 2}]),
                "events[0].data.meters.meter",
            ),
            (
                "meters",
                json!([{"meter": "a", "cost": u64::MAX}]),
                "events[0].data.meters.cost",
            ),
            ("status", json!(42), "events[0].data.status"),
            ("method", json!(""), "events[0].data.method"),
            ("route", json!(""), "events[0].data.route"),
            ("plan", json!("p{x}"), "events[0].data.plan"),
            ("decision", json!("maybe"), "events[0].data.decision"),
        ];
        for (key, value, field) in data_cases {
            let mut bad = event("e1");
            bad["data"][key] = value.clone();
            assert_eq!(
                invalid_field(decode_body(&batch(&[bad]), Framing::Batch, 10)),
                field,
                "{key}={value}"
            );
        }
    }

    #[test]
    fn denied_events_are_valid_but_not_billable() {
        let mut denied = event("e1");
        denied["data"]["decision"] = json!("denied");
        denied["data"]["meters"] = json!([]);
        let events = decode_body(&batch(&[denied]), Framing::Batch, 10).unwrap();
        assert!(!events[0].billable);
        assert_eq!(decision_str(events[0].decision), "denied");
    }

    #[test]
    fn batch_longer_than_maximum_is_refused() {
        let body = batch(&[event("a"), event("b"), event("c")]);
        assert_eq!(
            decode_body(&body, Framing::Batch, 2).unwrap_err(),
            IngestError::BatchTooLong { len: 3, max: 2 }
        );
    }

    #[test]
    fn dedup_keeps_first_occurrence_and_sorts_by_key() {
        let mut first = event("b");
        first["data"]["route"] = json!("first");
        let mut second = event("b");
        second["data"]["route"] = json!("second");
        let body = batch(&[first, event("c"), second, event("a")]);
        let (events, dropped) = dedup_sorted(decode_body(&body, Framing::Batch, 10).unwrap());
        assert_eq!(dropped, 1);
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(events[1].route, "first");
    }
}
