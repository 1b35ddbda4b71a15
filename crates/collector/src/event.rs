//! Decoding and validation of incoming usage events: pure logic, no I/O.
//!
//! A request body becomes a list of events, each validated on its own: ready for the
//! ledger, or quarantined with the index and field that is wrong. Only a body that is
//! not JSON at all, or too long, is refused whole.

use std::collections::HashSet;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use turnpike_plans::ids;
use turnpike_wire::{Decision as WireDecision, UsageEvent, USAGE_EVENT_TYPE};

use crate::merge::{Decision, Reported};

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

/// Why a whole body was refused. Problems with single events never refuse the body:
/// those events are quarantined (see [`Decoded`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    /// Not JSON at all (syntax error, truncated), or not the framing's shape.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// More events than the configured maximum.
    #[error("batch has {len} events; at most {max} are accepted per request")]
    BatchTooLong { len: usize, max: usize },
}

/// An event that cannot go into the ledger: where, why, and its raw JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// `events[3].data.status`
    pub field: String,
    pub reason: String,
    pub raw: String,
    /// The event's id, when it has a readable one.
    pub id: Option<String>,
}

/// One event of a body: ready for the ledger, or kept aside.
pub type Decoded = Result<Reported, Quarantined>;

/// Decode a body framed as `framing` and validate each event on its own: a bad event is
/// quarantined and its neighbours go on.
pub fn decode_body(
    body: &[u8],
    framing: Framing,
    max_events: usize,
) -> Result<Vec<Decoded>, IngestError> {
    let values: Vec<serde_json::Value> = match framing {
        Framing::Batch => {
            serde_json::from_slice(body).map_err(|e| IngestError::MalformedJson(e.to_string()))?
        }
        Framing::Single => {
            let value: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| IngestError::MalformedJson(e.to_string()))?;
            if value.is_array() {
                return Err(IngestError::MalformedJson(
                    "application/cloudevents+json takes one JSON object; send arrays as \
                     application/cloudevents-batch+json"
                        .to_owned(),
                ));
            }
            vec![value]
        }
    };
    if values.len() > max_events {
        return Err(IngestError::BatchTooLong {
            len: values.len(),
            max: max_events,
        });
    }
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            let at = match framing {
                Framing::Batch => format!("events[{index}]"),
                Framing::Single => "event".to_owned(),
            };
            decode_one(value, &at)
        })
        .collect())
}

fn decode_one(value: serde_json::Value, at: &str) -> Decoded {
    let raw = value.to_string();
    let id = value
        .get("id")
        .and_then(|v| v.as_str())
        .filter(|id| id.len() <= MAX_TEXT_LEN)
        .map(str::to_owned);
    let quarantine = |field: String, reason: String| Quarantined {
        field,
        reason,
        raw: raw.clone(),
        id: id.clone(),
    };
    let event: UsageEvent = serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = match path.as_str() {
            "." => at.to_owned(),
            p => format!("{at}.{p}"),
        };
        quarantine(field, strip_position(&err.into_inner().to_string()))
    })?;
    validate(event).map_err(|(field, reason)| quarantine(format!("{at}.{field}"), reason))
}

/// serde_json appends " at line L column C" to data errors; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

type FieldError = (&'static str, String);

/// Methods reported by name; anything else is reported as `OTHER`, so an unusual
/// method costs nothing more than a label.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn validate(event: UsageEvent) -> Result<Reported, FieldError> {
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
    let method = KNOWN_METHODS
        .iter()
        .find(|known| data.method.eq_ignore_ascii_case(known))
        .map_or("OTHER", |known| known)
        .to_owned();
    check_text("data.route", &data.route, MAX_TEXT_LEN)?;
    if !(100..=599).contains(&data.status) {
        return Err((
            "data.status",
            format!("must be an HTTP status 100..=599, got {}", data.status),
        ));
    }
    // Leased mode: the counter's lease id (a u64), in its canonical decimal form so it
    // equals the one the counter's lease report gives the same row.
    let lease = match &data.lease {
        Some(lease) => Some(
            lease
                .parse::<u64>()
                .map_err(|_| {
                    (
                        "data.lease",
                        format!("must be a lease id (a whole number below 2^64), got {lease:?}"),
                    )
                })?
                .to_string(),
        ),
        None => None,
    };
    if data.refunded && lease.is_none() {
        return Err((
            "data.refunded",
            "only a leased request is given back by its proxy (with data.lease); the counter records an exact consume's refund".to_owned(),
        ));
    }
    Ok(Reported {
        source: event.source,
        id: event.id,
        tenant: event.subject,
        time_ms,
        plan: data.plan,
        method,
        route: data.route,
        status: i32::from(data.status),
        request_bytes: to_i64("data.request_bytes", data.request_bytes)?,
        response_bytes: to_i64("data.response_bytes", data.response_bytes)?,
        duration_ms: to_i64("data.duration_ms", data.duration_ms)?,
        decision: match data.decision {
            WireDecision::Allowed => Decision::Allowed,
            WireDecision::Denied => Decision::Denied,
            WireDecision::Unverified => Decision::Unverified,
            WireDecision::Cancelled => Decision::Cancelled,
        },
        meters,
        settled: data.settled,
        lease,
        refunded: data.refunded,
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

    fn only(result: Result<Vec<Decoded>, IngestError>) -> Decoded {
        let mut all = result.unwrap();
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    fn invalid_field(result: Result<Vec<Decoded>, IngestError>) -> String {
        match only(result) {
            Err(q) => q.field,
            Ok(e) => panic!("expected a quarantined event, got {e:?}"),
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
        let e = only(decode_body(&batch(&[event("e1")]), Framing::Batch, 10)).unwrap();
        // 01:00 at +02:00 is 23:00 UTC the day before.
        assert_eq!(format_time_ms(e.time_ms), "2026-02-27T23:00:00Z");
        assert_eq!(
            e.meters,
            vec![("requests".into(), 1), ("search_units".into(), 5)]
        );
        assert_eq!(e.decision, Decision::Allowed);
    }

    #[test]
    fn single_event_framing_takes_one_object() {
        let body = serde_json::to_vec(&event("e1")).unwrap();
        assert!(only(decode_body(&body, Framing::Single, 10)).is_ok());
        // An array is not one event.
        assert!(matches!(
            decode_body(&batch(&[event("e1")]), Framing::Single, 10),
            Err(IngestError::MalformedJson(_))
        ));
    }

    #[test]
    fn truncated_json_is_malformed() {
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
    fn a_bad_event_is_quarantined_with_index_path_and_raw_and_neighbours_pass() {
        let mut bad = event("e2");
        bad["data"].as_object_mut().unwrap().remove("route");
        let all =
            decode_body(&batch(&[event("e1"), bad, event("e3")]), Framing::Batch, 10).unwrap();
        assert!(all[0].is_ok() && all[2].is_ok());
        let q = all[1].clone().unwrap_err();
        assert_eq!(q.field, "events[1].data");
        assert_eq!(q.reason, "missing field `route`");
        assert_eq!(q.id.as_deref(), Some("e2"));
        assert!(q.raw.contains("\"e2\""), "{}", q.raw);
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
    fn unusual_methods_are_stored_as_other_not_refused() {
        for (sent, stored) in [
            ("X-FOO", "OTHER"),
            ("get", "GET"),
            ("PROPFIND", "OTHER"),
            ("PATCH", "PATCH"),
        ] {
            let mut e = event("e1");
            e["data"]["method"] = json!(sent);
            let e = only(decode_body(&batch(&[e]), Framing::Batch, 10)).unwrap();
            assert_eq!(e.method, stored, "{sent}");
        }
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
            ("route", json!(""), "events[0].data.route"),
            ("plan", json!("p{x}"), "events[0].data.plan"),
            ("decision", json!("maybe"), "events[0].data.decision"),
            ("lease", json!("-1"), "events[0].data.lease"),
            (
                "lease",
                json!("18446744073709551616"),
                "events[0].data.lease",
            ),
            ("lease", json!(7), "events[0].data.lease"),
            ("refunded", json!(true), "events[0].data.refunded"),
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
    fn a_leased_request_carries_its_lease_and_may_be_given_back_into_it() {
        let mut leased = event("e1");
        leased["data"]["lease"] = json!("0042");
        leased["data"]["refunded"] = json!(true);
        let r = only(decode_body(&batch(&[leased]), Framing::Batch, 10)).unwrap();
        assert_eq!((r.lease.as_deref(), r.refunded), (Some("42"), true));
        let r = only(decode_body(&batch(&[event("e2")]), Framing::Batch, 10)).unwrap();
        assert_eq!((r.lease, r.refunded), (None, false));
    }

    #[test]
    fn batch_longer_than_maximum_is_refused() {
        let body = batch(&[event("a"), event("b"), event("c")]);
        assert_eq!(
            decode_body(&body, Framing::Batch, 2).unwrap_err(),
            IngestError::BatchTooLong { len: 3, max: 2 }
        );
    }
}
