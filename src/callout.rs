//! The counter callout: request bodies in a small fixed shape, written without a
//! serializer, and the answer parsed into borrowed, typed structs.
//!
//! The JSON contract is `turnpike_wire::{ConsumeRequest, ConsumeResponse, RefundRequest}`;
//! the tests below hold these encoders and decoders to it.

use std::borrow::Cow;

use serde::Deserialize;

/// Why a counter answer could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterError {
    /// `dispatch_http_call` itself failed (unknown cluster, bad arguments).
    Dispatch,
    /// The call ended without a response: timeout or reset.
    NoResponse,
    /// The counter answered, but not 200.
    Status(u16),
    /// A 200 whose body is not a consume response.
    BadBody,
}

impl CounterError {
    /// A short label for log lines.
    pub fn describe(self) -> String {
        match self {
            CounterError::Dispatch => "dispatch failed".to_owned(),
            CounterError::NoResponse => "no response (timeout or reset)".to_owned(),
            CounterError::Status(s) => format!("status {s}"),
            CounterError::BadBody => "unparsable body".to_owned(),
        }
    }
}

/// The parts of a `ConsumeResponse` the filter uses. Strings borrow from the body
/// unless they hold escapes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConsumeAnswer<'a> {
    pub allowed: bool,
    #[serde(borrow)]
    pub plan: Cow<'a, str>,
    #[serde(borrow)]
    pub limits: Vec<LimitAnswer<'a>>,
    #[serde(default, borrow)]
    pub denied_by: Option<Cow<'a, str>>,
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// When the counter decided, unix ms on its clock: the time the usage is billed at.
    #[serde(default)]
    pub time_ms: Option<u64>,
    /// Set when a limit's maximum is below the request's cost: it can never fit.
    #[serde(default, borrow)]
    pub exceeds_limit: Option<Cow<'a, str>>,
}

/// The parts of a `LimitStatus` the filter uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LimitAnswer<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    pub window_secs: u64,
    pub max: u64,
    pub used: u64,
    pub remaining: u64,
    pub reset: u64,
    #[serde(default)]
    pub soft: Option<u64>,
    #[serde(default)]
    pub soft_crossed: bool,
}

/// Body of `POST /v1/consume`. `id` and `tenant` are of `[A-Za-z0-9._-]` and `plan`
/// too when present (checked by the caller: nothing to escape); `meters_json` is the
/// route's precomputed meters array.
pub fn consume_body(id: &str, tenant: &str, plan: Option<&str>, meters_json: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(48 + id.len() + tenant.len() + meters_json.len() + 32);
    body.extend_from_slice(br#"{"id":""#);
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(br#"","tenant":""#);
    body.extend_from_slice(tenant.as_bytes());
    if let Some(plan) = plan {
        body.extend_from_slice(br#"","plan":""#);
        body.extend_from_slice(plan.as_bytes());
    }
    body.extend_from_slice(br#"","meters":"#);
    body.extend_from_slice(meters_json.as_bytes());
    body.push(b'}');
    body
}

/// Body of `POST /v1/refund`; same alphabet rules as [`consume_body`].
pub fn refund_body(id: &str, tenant: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(24 + id.len() + tenant.len());
    body.extend_from_slice(br#"{"id":""#);
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(br#"","tenant":""#);
    body.extend_from_slice(tenant.as_bytes());
    body.extend_from_slice(br#""}"#);
    body
}

/// Body of `POST /v1/settle`: `meters_json` is a JSON array of `{"meter","cost"}` with
/// the final quantities. Same alphabet rules as [`consume_body`].
pub fn settle_body(id: &str, tenant: &str, meters_json: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(40 + id.len() + tenant.len() + meters_json.len());
    body.extend_from_slice(br#"{"id":""#);
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(br#"","tenant":""#);
    body.extend_from_slice(tenant.as_bytes());
    body.extend_from_slice(br#"","meters":"#);
    body.extend_from_slice(meters_json.as_bytes());
    body.push(b'}');
    body
}

/// A meters array `[{"meter":"m","cost":n},...]` (meter names are `[a-z0-9_]`).
pub fn meters_json(meters: &[(String, u64)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("[");
    for (i, (meter, cost)) in meters.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, r#"{{"meter":"{meter}","cost":{cost}}}"#);
    }
    out.push(']');
    out
}

/// Body of `POST /v1/lease`: `want` more requests of a route on `lease` (or a new
/// one), or with `close` give `lease` back, `Some(n)` of its requests never taken by
/// any worker (they go back at once). Same alphabet rules as [`consume_body`].
pub fn lease_body(
    tenant: &str,
    plan: Option<&str>,
    meters_json: &str,
    want: u64,
    lease: Option<u64>,
    close: Option<u64>,
    report_ms: u64,
) -> Vec<u8> {
    use std::io::Write as _;
    let mut body = Vec::with_capacity(96 + tenant.len() + meters_json.len());
    body.extend_from_slice(br#"{"tenant":""#);
    body.extend_from_slice(tenant.as_bytes());
    if let Some(plan) = plan {
        body.extend_from_slice(br#"","plan":""#);
        body.extend_from_slice(plan.as_bytes());
    }
    body.extend_from_slice(br#"","meters":"#);
    body.extend_from_slice(meters_json.as_bytes());
    // Writing into a Vec cannot fail.
    let _ = write!(body, r#","want":{want},"report_ms":{report_ms}"#);
    if let Some(unspent) = close {
        let _ = write!(body, r#","close":true,"unspent":{unspent}"#);
    }
    if let Some(id) = lease {
        let _ = write!(body, r#","lease":{id}"#);
    }
    body.push(b'}');
    body
}

/// Body of `POST /v1/lease/report` with no records: `running` requests admitted from
/// `lease` (which ended) still run, so its units must stay out (a pin).
pub fn pin_body(
    tenant: &str,
    plan: Option<&str>,
    meters_json: &str,
    lease: u64,
    running: u64,
    report_ms: u64,
) -> Vec<u8> {
    let mut body = report_body(tenant, plan, meters_json, lease, "pin", &[]);
    body.pop(); // the closing brace
    use std::io::Write as _;
    let _ = write!(body, r#","running":{running},"report_ms":{report_ms}}}"#);
    body
}

/// Body of `POST /v1/lease/report`: requests admitted from `lease`, as (consume id,
/// decision time in unix ms on the counter's clock).
pub fn report_body(
    tenant: &str,
    plan: Option<&str>,
    meters_json: &str,
    lease: u64,
    batch: &str,
    records: &[(String, u64)],
) -> Vec<u8> {
    use std::io::Write as _;
    let mut body = Vec::with_capacity(96 + tenant.len() + meters_json.len() + records.len() * 64);
    body.extend_from_slice(br#"{"tenant":""#);
    body.extend_from_slice(tenant.as_bytes());
    if let Some(plan) = plan {
        body.extend_from_slice(br#"","plan":""#);
        body.extend_from_slice(plan.as_bytes());
    }
    body.extend_from_slice(br#"","meters":"#);
    body.extend_from_slice(meters_json.as_bytes());
    let _ = write!(body, r#","lease":{lease},"batch":"{batch}","records":["#);
    // Thousands of records every report interval, on the worker's thread while its
    // requests wait: bytes appended directly, not through `write!` per record
    // (4,000 records natively: 59 µs instead of 103).
    for (i, (id, at_ms)) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"[\"");
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(b"\",");
        crate::decimal::push_bytes(&mut body, *at_ms);
        body.push(b']');
    }
    body.extend_from_slice(b"]}");
    body
}

/// The parts of a `LeaseResponse` the filter uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LeaseAnswer<'a> {
    #[serde(default)]
    pub lease: Option<u64>,
    pub granted: u64,
    pub expires_ms: u64,
    pub time_ms: u64,
    #[serde(default)]
    pub held_ms: u64,
    #[serde(borrow)]
    pub plan: Cow<'a, str>,
    #[serde(borrow)]
    pub limits: Vec<LimitAnswer<'a>>,
}

/// Interpret a lease callout's outcome.
pub fn parse_lease_answer<'a>(
    status: Option<&str>,
    body: Option<&'a [u8]>,
) -> Result<LeaseAnswer<'a>, CounterError> {
    check_status(status)?;
    let body = body.ok_or(CounterError::BadBody)?;
    serde_json::from_slice(body).map_err(|_| CounterError::BadBody)
}

/// Whether a callout that only needs a 200 (a report) succeeded.
pub fn parse_ok(status: Option<&str>) -> Result<(), CounterError> {
    check_status(status)
}

/// The compact answer (`turnpike_wire::COMPACT_ANSWER`): what the filter asks the
/// counter for, since it is cheaper to read than JSON on every request.
pub fn parse_compact_answer<'a>(
    status: Option<&str>,
    body: Option<&'a [u8]>,
) -> Result<ConsumeAnswer<'a>, CounterError> {
    check_status(status)?;
    let text = body
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or(CounterError::BadBody)?;
    let bad = || CounterError::BadBody;
    let mut lines = text.split('\n');
    let mut head = lines.next().ok_or_else(bad)?.split(' ');
    let mut next = || head.next().ok_or_else(bad);
    let allowed = match next()? {
        "1" => true,
        "0" => false,
        _ => return Err(bad()),
    };
    let time_ms = next()?.parse::<u64>().map_err(|_| bad())?;
    let plan = Cow::Borrowed(next()?);
    let dash = |v: &'a str| (v != "-").then_some(v);
    let retry_after = dash(next()?)
        .map(|r| r.parse::<u64>().map_err(|_| bad()))
        .transpose()?;
    let denied_by = dash(next()?).map(Cow::Borrowed);
    let exceeds_limit = dash(next()?).map(Cow::Borrowed);
    let mut limits = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let mut f = line.split(' ');
        let mut field = || f.next().ok_or_else(bad);
        let name = Cow::Borrowed(field()?);
        let mut num = || field().and_then(|v| v.parse::<u64>().map_err(|_| bad()));
        let (window_secs, max, used, remaining, reset) = (num()?, num()?, num()?, num()?, num()?);
        let soft = dash(field()?)
            .map(|s| s.parse::<u64>().map_err(|_| bad()))
            .transpose()?;
        let soft_crossed = field()? == "1";
        limits.push(LimitAnswer {
            name,
            window_secs,
            max,
            used,
            remaining,
            reset,
            soft,
            soft_crossed,
        });
    }
    Ok(ConsumeAnswer {
        allowed,
        plan,
        limits,
        denied_by,
        retry_after,
        time_ms: Some(time_ms).filter(|t| *t > 0),
        exceeds_limit,
    })
}

/// Interpret the callout's outcome. `status` is the `:status` pseudo-header (absent when
/// the call timed out or was reset), `body` the response body.
pub fn parse_consume_answer<'a>(
    status: Option<&str>,
    body: Option<&'a [u8]>,
) -> Result<ConsumeAnswer<'a>, CounterError> {
    check_status(status)?;
    let body = body.ok_or(CounterError::BadBody)?;
    serde_json::from_slice(body).map_err(|_| CounterError::BadBody)
}

/// Whether a refund callout succeeded (200 with `"refunded"`, true or false: false means
/// already refunded or unknown, which is also settled).
pub fn parse_refund_answer(
    status: Option<&str>,
    body: Option<&[u8]>,
) -> Result<bool, CounterError> {
    #[derive(Deserialize)]
    struct Answer {
        refunded: bool,
    }
    check_status(status)?;
    let body = body.ok_or(CounterError::BadBody)?;
    serde_json::from_slice::<Answer>(body)
        .map(|a| a.refunded)
        .map_err(|_| CounterError::BadBody)
}

/// Body of `POST /v1/consume/batch`: consume bodies (from [`consume_body`]) as one
/// JSON array.
pub fn batch_body<'a>(bodies: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + bodies.len() * 160);
    out.push(b'[');
    for (i, body) in bodies.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(body);
    }
    out.push(b']');
    out
}

/// The outcome of each consume of a batch, in the order they were sent, from the
/// compact batch answer (`turnpike_wire::compact_batch`). A failed call fails them all;
/// an item the answer lacks is a bad body.
pub fn parse_batch_answer<'a>(
    status: Option<&str>,
    body: Option<&'a [u8]>,
    members: usize,
) -> Vec<Result<ConsumeAnswer<'a>, CounterError>> {
    let items = check_status(status).and_then(|()| {
        body.and_then(|b| std::str::from_utf8(b).ok())
            .ok_or(CounterError::BadBody)
    });
    let text = match items {
        Ok(text) => text,
        Err(e) => return vec![Err(e); members],
    };
    let mut items = text.split(turnpike_wire::COMPACT_BATCH_SEPARATOR);
    (0..members)
        .map(|_| match items.next() {
            None => Err(CounterError::BadBody),
            Some(item) => match item.strip_prefix('!') {
                Some(code) => Err(CounterError::Status(code.parse().unwrap_or(0))),
                None => parse_compact_answer(Some("200"), Some(item.as_bytes())),
            },
        })
        .collect()
}

/// The outcome of each settlement of a `/v1/settle/batch` call, in the order they
/// were sent: `Ok(settled)`, or the item's (or the call's) error.
pub fn parse_settle_batch_answer(
    status: Option<&str>,
    body: Option<&[u8]>,
    members: usize,
) -> Vec<Result<bool, CounterError>> {
    #[derive(Deserialize)]
    struct Item {
        status: u16,
        #[serde(default)]
        settled: bool,
    }
    let items = check_status(status).and_then(|()| {
        let body = body.ok_or(CounterError::BadBody)?;
        serde_json::from_slice::<Vec<Item>>(body).map_err(|_| CounterError::BadBody)
    });
    let items = match items {
        Ok(items) => items,
        Err(e) => return vec![Err(e); members],
    };
    let mut items = items.into_iter();
    (0..members)
        .map(|_| match items.next() {
            None => Err(CounterError::BadBody),
            Some(Item {
                status: 200,
                settled,
            }) => Ok(settled),
            Some(Item { status, .. }) => Err(CounterError::Status(status)),
        })
        .collect()
}

fn check_status(status: Option<&str>) -> Result<(), CounterError> {
    match status.map(|s| s.parse::<u16>()) {
        None => Err(CounterError::NoResponse),
        Some(Ok(200)) => Ok(()),
        Some(Ok(code)) => Err(CounterError::Status(code)),
        Some(Err(_)) => Err(CounterError::Status(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnpike_wire::{ConsumeRequest, ConsumeResponse, LimitStatus, MeterCost, RefundRequest};

    const METERS: &str = r#"[{"meter":"requests","cost":1},{"meter":"search_units","cost":5}]"#;

    #[test]
    fn consume_body_is_a_wire_consume_request() {
        let body = consume_body("00ff", "acme", Some("pro"), METERS);
        let req: ConsumeRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            req,
            ConsumeRequest {
                id: "00ff".into(),
                tenant: "acme".into(),
                plan: Some("pro".into()),
                meters: vec![
                    MeterCost {
                        meter: "requests".into(),
                        cost: 1
                    },
                    MeterCost {
                        meter: "search_units".into(),
                        cost: 5
                    },
                ],
            }
        );
    }

    #[test]
    fn consume_body_without_plan_matches_serde_output() {
        let body = consume_body("abc", "acme", None, r#"[{"meter":"requests","cost":1}]"#);
        let expected = ConsumeRequest {
            id: "abc".into(),
            tenant: "acme".into(),
            plan: None,
            meters: vec![MeterCost {
                meter: "requests".into(),
                cost: 1,
            }],
        };
        assert_eq!(body, serde_json::to_vec(&expected).unwrap());
    }

    #[test]
    fn refund_body_is_a_wire_refund_request() {
        let req: RefundRequest = serde_json::from_slice(&refund_body("id1", "acme")).unwrap();
        assert_eq!(
            req,
            RefundRequest {
                id: "id1".into(),
                tenant: "acme".into()
            }
        );
    }

    fn wire_response(allowed: bool) -> ConsumeResponse {
        ConsumeResponse {
            allowed,
            plan: "free".into(),
            limits: vec![LimitStatus {
                name: "monthly".into(),
                meter: "requests".into(),
                window: "month".into(),
                window_secs: 2_592_000,
                max: 10_000,
                used: 8_001,
                remaining: 1_999,
                reset: 123_456,
                soft: Some(8_000),
                soft_crossed: true,
            }],
            denied_by: (!allowed).then(|| "monthly".into()),
            retry_after: (!allowed).then_some(123_456),
            replayed: false,
            time_ms: Some(1_795_737_600_123),
            exceeds_limit: None,
        }
    }

    #[test]
    fn wire_consume_response_parses_into_borrowed_answer() {
        let json = serde_json::to_vec(&wire_response(false)).unwrap();
        let a = parse_consume_answer(Some("200"), Some(&json)).unwrap();
        assert!(!a.allowed);
        assert!(matches!(a.plan, Cow::Borrowed("free")));
        assert_eq!(a.denied_by.as_deref(), Some("monthly"));
        assert_eq!(a.retry_after, Some(123_456));
        assert_eq!(a.time_ms, Some(1_795_737_600_123));
        let l = &a.limits[0];
        assert_eq!(
            (l.max, l.used, l.remaining, l.reset, l.soft),
            (10_000, 8_001, 1_999, 123_456, Some(8_000))
        );
        assert!(l.soft_crossed);
    }

    #[test]
    fn settle_bodies_are_wire_requests() {
        let meters = meters_json(&[("tokens".into(), 850), ("prompt_tokens".into(), 40)]);
        let req: turnpike_wire::SettleRequest =
            serde_json::from_slice(&settle_body("c1", "acme", &meters)).unwrap();
        assert_eq!(
            (req.id.as_str(), req.meters.len(), req.meters[0].cost),
            ("c1", 2, 850)
        );
    }

    #[test]
    fn lease_and_report_bodies_are_wire_requests() {
        let body = lease_body("acme", Some("pro"), METERS, 40, Some(7), None, 100);
        let req: turnpike_wire::LeaseRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (req.want, req.lease, req.close, req.plan.as_deref()),
            (40, Some(7), false, Some("pro"))
        );
        assert_eq!(req.report_ms, Some(100));
        assert_eq!(req.meters.len(), 2);
        assert_eq!(req.unspent, None);
        let body = lease_body("acme", None, METERS, 0, Some(7), Some(12), 100);
        let req: turnpike_wire::LeaseRequest = serde_json::from_slice(&body).unwrap();
        assert!(req.close && req.plan.is_none());
        assert_eq!(req.unspent, Some(12));
        let body = pin_body("acme", Some("pro"), METERS, 7, 3, 100);
        let pin: turnpike_wire::LeaseReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (pin.lease, pin.records.len(), pin.running, pin.report_ms),
            (7, 0, Some(3), Some(100))
        );
        let records = vec![
            ("a1".to_owned(), 0),
            ("a2".to_owned(), 6),
            ("a3".to_owned(), 1_796_059_692_913),
            ("a4".to_owned(), u64::MAX),
        ];
        let body = report_body("acme", None, METERS, 7, "b1", &records);
        let rep: turnpike_wire::LeaseReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (rep.lease, rep.batch.as_str(), rep.records),
            (7, "b1", records)
        );
    }

    #[test]
    fn a_lease_answer_parses() {
        let answer = turnpike_wire::LeaseResponse {
            lease: Some(9),
            granted: 30,
            expires_ms: 2_000,
            time_ms: 1_000,
            held_ms: 4,
            plan: "pro".into(),
            limits: wire_response(true).limits,
        };
        let json = serde_json::to_vec(&answer).unwrap();
        let a = parse_lease_answer(Some("200"), Some(&json)).unwrap();
        assert_eq!(
            (a.lease, a.granted, a.expires_ms, a.time_ms, a.held_ms),
            (Some(9), 30, 2_000, 1_000, 4)
        );
        assert_eq!(a.limits.len(), 1);
        assert_eq!(
            parse_lease_answer(Some("503"), Some(&json)),
            Err(CounterError::Status(503))
        );
    }

    #[test]
    fn the_compact_answer_reads_as_the_json_one() {
        for allowed in [true, false] {
            let wire = wire_response(allowed);
            let json = serde_json::to_vec(&wire).unwrap();
            let compact = wire.to_compact();
            let from_json = parse_consume_answer(Some("200"), Some(&json)).unwrap();
            let from_compact = parse_compact_answer(Some("200"), Some(compact.as_bytes())).unwrap();
            assert_eq!(from_compact, from_json, "{compact}");
        }
        for bad in [
            "",
            "2 1 p - - -",
            "1 x p - - -",
            "1 1 p - - -\nname 60 5",
            "1 1 p 4x - -",
        ] {
            assert_eq!(
                parse_compact_answer(Some("200"), Some(bad.as_bytes())),
                Err(CounterError::BadBody),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_compact_answer(Some("503"), None),
            Err(CounterError::Status(503))
        );
    }

    #[test]
    fn missing_status_is_no_response() {
        assert_eq!(
            parse_consume_answer(None, None),
            Err(CounterError::NoResponse)
        );
    }

    #[test]
    fn non_200_is_a_status_error_even_with_a_valid_body() {
        let json = serde_json::to_vec(&wire_response(true)).unwrap();
        assert_eq!(
            parse_consume_answer(Some("503"), Some(&json)),
            Err(CounterError::Status(503))
        );
        assert_eq!(
            parse_consume_answer(Some("abc"), Some(&json)),
            Err(CounterError::Status(0))
        );
    }

    #[test]
    fn garbage_or_empty_body_is_bad_body() {
        assert_eq!(
            parse_consume_answer(Some("200"), None),
            Err(CounterError::BadBody)
        );
        assert_eq!(
            parse_consume_answer(Some("200"), Some(b"<html>")),
            Err(CounterError::BadBody)
        );
        assert_eq!(
            parse_consume_answer(
                Some("200"),
                Some(br#"{"allowed":"yes","plan":"x","limits":[]}"#)
            ),
            Err(CounterError::BadBody)
        );
    }

    #[test]
    fn refund_answer_accepts_both_outcomes_and_refuses_errors() {
        assert_eq!(
            parse_refund_answer(Some("200"), Some(br#"{"refunded":true}"#)),
            Ok(true)
        );
        assert_eq!(
            parse_refund_answer(Some("200"), Some(br#"{"refunded":false}"#)),
            Ok(false)
        );
        assert_eq!(
            parse_refund_answer(Some("500"), None),
            Err(CounterError::Status(500))
        );
        assert_eq!(
            parse_refund_answer(None, None),
            Err(CounterError::NoResponse)
        );
    }

    #[test]
    fn a_batch_body_is_the_consume_bodies_as_one_array_the_counter_reads() {
        let a = consume_body("a1", "acme", None, METERS);
        let b = consume_body("b2", "beta", Some("pro"), METERS);
        let body = batch_body([a.as_slice(), b.as_slice()].into_iter());
        let parsed: Vec<ConsumeRequest> = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            (parsed[0].id.as_str(), parsed[1].tenant.as_str()),
            ("a1", "beta")
        );
        assert_eq!(parsed[1].plan.as_deref(), Some("pro"));
    }

    #[test]
    fn a_compact_batch_answer_gives_each_member_its_own_outcome() {
        let limit = LimitStatus {
            name: "daily".into(),
            meter: "requests".into(),
            window: "day".into(),
            window_secs: 86_400,
            max: 5,
            used: 5,
            remaining: 0,
            reset: 60,
            soft: None,
            soft_crossed: false,
        };
        let answer = |allowed: bool| ConsumeResponse {
            allowed,
            plan: "free".into(),
            limits: vec![limit.clone()],
            denied_by: (!allowed).then(|| "daily".into()),
            retry_after: (!allowed).then_some(60),
            replayed: false,
            time_ms: Some(1_700_000_000_123),
            exceeds_limit: None,
        };
        let items = [
            turnpike_wire::ConsumeBatchItem {
                status: 200,
                answer: Some(answer(true)),
                problem: None,
            },
            turnpike_wire::ConsumeBatchItem {
                status: 503,
                answer: None,
                problem: None,
            },
            turnpike_wire::ConsumeBatchItem {
                status: 200,
                answer: Some(answer(false)),
                problem: None,
            },
        ];
        let text = turnpike_wire::compact_batch(&items);
        let out = parse_batch_answer(Some("200"), Some(text.as_bytes()), 4);
        assert_eq!(out.len(), 4);
        let first = out[0].as_ref().unwrap();
        assert!(first.allowed);
        assert_eq!(first.limits[0].used, 5);
        assert_eq!(first.time_ms, Some(1_700_000_000_123));
        assert_eq!(out[1], Err(CounterError::Status(503)));
        let third = out[2].as_ref().unwrap();
        assert!(!third.allowed);
        assert_eq!(third.retry_after, Some(60));
        assert_eq!(
            out[3],
            Err(CounterError::BadBody),
            "the answer had three items"
        );
        // A failed call fails every member.
        assert_eq!(
            parse_batch_answer(Some("503"), None, 2),
            vec![Err(CounterError::Status(503)); 2]
        );
        assert_eq!(
            parse_batch_answer(None, None, 1),
            vec![Err(CounterError::NoResponse)]
        );
    }

    #[test]
    fn a_settle_batch_answer_gives_each_settlement_its_outcome() {
        let items = [
            turnpike_wire::SettleBatchItem {
                status: 200,
                settled: true,
                problem: None,
            },
            turnpike_wire::SettleBatchItem {
                status: 503,
                settled: false,
                problem: None,
            },
            turnpike_wire::SettleBatchItem {
                status: 200,
                settled: false,
                problem: None,
            },
        ];
        let body = serde_json::to_vec(&items).unwrap();
        assert_eq!(
            parse_settle_batch_answer(Some("200"), Some(&body), 4),
            vec![
                Ok(true),
                Err(CounterError::Status(503)),
                Ok(false),
                Err(CounterError::BadBody)
            ]
        );
        assert_eq!(
            parse_settle_batch_answer(None, None, 2),
            vec![Err(CounterError::NoResponse); 2]
        );
    }
}
