//! Usage events: CloudEvents encoding (a fixed shape, written without building a
//! `UsageEvent`), RFC 3339 time, the bounded per-worker buffer of events waiting for the
//! collector, and retry backoff with jitter.

use std::collections::VecDeque;
use std::io::Write as _;

use turnpike_wire::{Decision, USAGE_EVENT_TYPE};

/// Stand-in status for an exchange that ended without a response (client gone, stream
/// reset): nginx's "client closed request", so the event stays a valid 1xx..5xx status.
pub const NO_RESPONSE_STATUS: u16 = 499;

/// What one completed exchange used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord<'a> {
    pub id: &'a str,
    pub tenant: &'a str,
    /// Unix milliseconds when the exchange completed.
    pub time_ms: u64,
    /// Settled quantities; empty when everything was refunded.
    pub meters: &'a [(String, u64)],
    pub plan: Option<&'a str>,
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: u64,
    pub decision: Decision,
    /// `meters` are what the exchange used (settled), not what was reserved.
    pub settled: bool,
    /// Leased mode: the lease it was admitted from.
    pub lease: Option<u64>,
    /// Leased mode: given back into its lease (an upstream 5xx); only with `lease`.
    pub refunded: bool,
}

/// The event as a CloudEvents 1.0 structured-mode JSON object (a `turnpike_wire::UsageEvent`).
/// `source_json` is the source already encoded as a JSON string (quotes included).
pub fn encode_event(source_json: &str, r: &UsageRecord<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(384);
    out.extend_from_slice(br#"{"specversion":"1.0","id":"#);
    push_json_str(&mut out, r.id);
    out.extend_from_slice(br#","source":"#);
    out.extend_from_slice(source_json.as_bytes());
    out.extend_from_slice(br#","type":"#);
    push_json_str(&mut out, USAGE_EVENT_TYPE);
    out.extend_from_slice(br#","subject":"#);
    push_json_str(&mut out, r.tenant);
    out.extend_from_slice(br#","time":""#);
    out.extend_from_slice(rfc3339_ms(r.time_ms).as_bytes());
    out.extend_from_slice(br#"","datacontenttype":"application/json","data":{"meters":["#);
    for (i, (meter, cost)) in r.meters.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"meter":"#);
        push_json_str(&mut out, meter);
        // Writing into a Vec cannot fail.
        let _ = write!(out, r#","cost":{cost}}}"#);
    }
    out.push(b']');
    if let Some(plan) = r.plan {
        out.extend_from_slice(br#","plan":"#);
        push_json_str(&mut out, plan);
    }
    out.extend_from_slice(br#","method":"#);
    push_json_str(&mut out, r.method);
    out.extend_from_slice(br#","route":"#);
    push_json_str(&mut out, r.route);
    let decision = match r.decision {
        Decision::Allowed => "allowed",
        Decision::Denied => "denied",
        Decision::Unverified => "unverified",
        Decision::Cancelled => "cancelled",
    };
    let settled = if r.settled { r#","settled":true"# } else { "" };
    let _ = write!(
        out,
        r#","status":{},"request_bytes":{},"response_bytes":{},"duration_ms":{},"decision":"{decision}"{settled}"#,
        r.status, r.request_bytes, r.response_bytes, r.duration_ms
    );
    if let Some(lease) = r.lease {
        // A string: lease ids use all 64 bits, past what a JSON number keeps exactly.
        let _ = write!(out, r#","lease":"{lease}""#);
        if r.refunded {
            out.extend_from_slice(br#","refunded":true"#);
        }
    }
    out.extend_from_slice(b"}}");
    out
}

/// A JSON string literal, escaped by serde_json (no allocation for the common case).
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for Unix milliseconds (UTC).
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day): Howard Hinnant's
/// `civil_from_days`, restricted to dates on or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Methods reported by name; anything else is reported as `OTHER` (a client's odd
/// method must never make an event the collector cannot take).
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The method as usage events report it.
pub fn report_method(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or("OTHER")
}

/// Events waiting for the collector, bounded. Two kinds: *essential* events are the
/// only record of billable usage (a request let through by `fail_open`); the others
/// add detail to what the counter's usage stream already recorded, or describe
/// unbilled requests. When full, an essential event pushes out the oldest other one;
/// essential events go out first.
#[derive(Debug)]
pub struct EventBuffer {
    essential: VecDeque<Vec<u8>>,
    other: VecDeque<Vec<u8>>,
    /// Events taken in batches not yet acknowledged: they count against the capacity,
    /// which bounds the VM's memory for events, whatever the collector does.
    in_flight: usize,
    capacity: usize,
    /// Dropped since the last [`EventBuffer::take_overflow`]: (other, essential).
    overflow: (usize, usize),
}

/// What [`EventBuffer::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the oldest non-essential event was dropped to make room.
    QueuedEvicting,
    /// Full of essential events: this one was dropped.
    Dropped,
}

/// Events taken out of the buffer for one request to the collector. Handed back with
/// [`EventBuffer::requeue`] if the collector does not take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The JSON array body.
    pub body: Vec<u8>,
    events: Vec<(Vec<u8>, bool)>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// How many of its events were essential.
    pub fn essential(&self) -> usize {
        self.events.iter().filter(|(_, e)| *e).count()
    }
}

impl EventBuffer {
    pub fn new(capacity: usize) -> Self {
        Self {
            essential: VecDeque::new(),
            other: VecDeque::new(),
            in_flight: 0,
            capacity,
            overflow: (0, 0),
        }
    }

    /// A new bound applies to later pushes; nothing already buffered is dropped.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    /// How many (non-essential, essential) events were dropped since the last call.
    pub fn take_overflow(&mut self) -> (usize, usize) {
        std::mem::take(&mut self.overflow)
    }

    pub fn push(&mut self, event: Vec<u8>, essential: bool) -> Pushed {
        if self.len() + self.in_flight < self.capacity {
            self.queue(essential).push_back(event);
            return Pushed::Queued;
        }
        if !essential {
            self.overflow.0 += 1;
            return Pushed::Dropped;
        }
        if self.other.pop_front().is_some() {
            self.overflow.0 += 1;
            self.essential.push_back(event);
            return Pushed::QueuedEvicting;
        }
        self.overflow.1 += 1;
        Pushed::Dropped
    }

    fn queue(&mut self, essential: bool) -> &mut VecDeque<Vec<u8>> {
        if essential {
            &mut self.essential
        } else {
            &mut self.other
        }
    }

    /// Events waiting (not in flight).
    pub fn len(&self) -> usize {
        self.essential.len() + self.other.len()
    }

    /// Events in batches not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next batch: essential events first, at most `max_events` and, past the
    /// first, at most `max_bytes` of body. `None` when empty.
    pub fn take_batch(&mut self, max_events: usize, max_bytes: usize) -> Option<Batch> {
        if self.is_empty() {
            return None;
        }
        let mut body = Vec::with_capacity(max_bytes.min(64 * 1024));
        body.push(b'[');
        let mut events = Vec::new();
        while events.len() < max_events.max(1) {
            let essential = !self.essential.is_empty();
            let Some(next) = self.queue(essential).front() else {
                break;
            };
            if !events.is_empty() && body.len() + next.len() + 2 > max_bytes {
                break;
            }
            let Some(event) = self.queue(essential).pop_front() else {
                break;
            };
            if !events.is_empty() {
                body.push(b',');
            }
            body.extend_from_slice(&event);
            events.push((event, essential));
        }
        body.push(b']');
        self.in_flight += events.len();
        Some(Batch { body, events })
    }

    /// The collector took `batch` (or refused it for good): its events are gone.
    pub fn ack(&mut self, batch: Batch) {
        self.in_flight = self.in_flight.saturating_sub(batch.len());
    }

    /// The collector did not take `batch`: its events go back to the front, ahead of
    /// newer ones.
    pub fn requeue(&mut self, batch: Batch) {
        self.in_flight = self.in_flight.saturating_sub(batch.len());
        for (event, essential) in batch.events.into_iter().rev() {
            self.queue(essential).push_front(event);
        }
    }
}

/// Exponential backoff with "equal jitter": the delay is half the exponential step plus
/// a random part of the other half, so retries from many workers spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    failures: u32,
}

impl Backoff {
    pub fn new(base_ms: u64, max_ms: u64) -> Self {
        Self {
            base_ms: base_ms.max(1),
            max_ms: max_ms.max(base_ms),
            failures: 0,
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Record a failure; the delay before the next attempt. `random` is any u64.
    pub fn next_delay_ms(&mut self, random: u64) -> u64 {
        let step = self
            .base_ms
            .saturating_mul(1u64 << self.failures.min(20))
            .min(self.max_ms);
        self.failures = self.failures.saturating_add(1);
        let half = step / 2;
        half + random % (step - half + 1)
    }
}

/// xorshift64*: cheap randomness for jitter (not for ids or secrets).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnpike_wire::UsageEvent;

    fn record(meters: &[(String, u64)]) -> UsageRecord<'_> {
        UsageRecord {
            id: "abc123",
            tenant: "acme",
            time_ms: 1_795_000_020_123,
            meters,
            plan: Some("pro"),
            method: "GET",
            route: "search",
            status: 200,
            request_bytes: 10,
            response_bytes: 1234,
            duration_ms: 7,
            decision: Decision::Allowed,
            settled: false,
            lease: None,
            refunded: false,
        }
    }

    #[test]
    fn encoded_event_is_a_wire_usage_event() {
        let meters = vec![("requests".to_owned(), 1), ("search_units".to_owned(), 5)];
        let json = encode_event(r#""//turnpike/envoy/node-1""#, &record(&meters));
        let ev: UsageEvent = serde_json::from_slice(&json).unwrap();
        assert_eq!(ev.specversion, "1.0");
        assert_eq!(ev.id, "abc123");
        assert_eq!(ev.source, "//turnpike/envoy/node-1");
        assert_eq!(ev.kind, USAGE_EVENT_TYPE);
        assert_eq!(ev.subject, "acme");
        assert_eq!(ev.time, "2026-11-18T11:07:00.123Z");
        assert_eq!(ev.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(ev.data.meters.len(), 2);
        assert_eq!(ev.data.meters[1].cost, 5);
        assert_eq!(ev.data.plan.as_deref(), Some("pro"));
        assert_eq!(
            (ev.data.status, ev.data.response_bytes, ev.data.duration_ms),
            (200, 1234, 7)
        );
        assert_eq!(ev.data.decision, Decision::Allowed);
        assert!(!ev.data.settled);
        let mut settled = record(&meters);
        settled.settled = true;
        let ev: UsageEvent = serde_json::from_slice(&encode_event("\"s\"", &settled)).unwrap();
        assert!(ev.data.settled);
        assert_eq!((ev.data.lease, ev.data.refunded), (None, false));
    }

    #[test]
    fn a_leased_request_names_its_lease_and_whether_it_went_back_into_it() {
        let mut r = record(&[]);
        r.lease = Some(u64::MAX);
        r.refunded = true;
        let ev: UsageEvent = serde_json::from_slice(&encode_event(r#""s""#, &r)).unwrap();
        assert_eq!(ev.data.lease.as_deref(), Some("18446744073709551615"));
        assert!(ev.data.refunded);
        // Without a lease there is nothing to give back to: an exact consume's refund is
        // the counter's to record.
        r.lease = None;
        let ev: UsageEvent = serde_json::from_slice(&encode_event(r#""s""#, &r)).unwrap();
        assert_eq!((ev.data.lease, ev.data.refunded), (None, false));
    }

    #[test]
    fn hostile_method_is_escaped_and_absent_plan_omitted() {
        let mut r = record(&[]);
        r.method = "GE\"T\n";
        r.plan = None;
        r.decision = Decision::Unverified;
        let ev: UsageEvent = serde_json::from_slice(&encode_event(r#""s""#, &r)).unwrap();
        assert_eq!(ev.data.method, "GE\"T\n");
        assert_eq!(ev.data.plan, None);
        assert!(ev.data.meters.is_empty());
        assert_eq!(ev.data.decision, Decision::Unverified);
    }

    #[test]
    fn rfc3339_handles_epoch_leap_days_and_month_ends() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_ms(1_798_761_599_000), "2026-12-31T23:59:59.000Z");
        assert_eq!(rfc3339_ms(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn a_full_buffer_drops_detail_first_and_essential_events_last() {
        let mut b = EventBuffer::new(2);
        assert_eq!(b.push(b"o1".to_vec(), false), Pushed::Queued);
        assert_eq!(b.push(b"o2".to_vec(), false), Pushed::Queued);
        assert_eq!(b.push(b"o3".to_vec(), false), Pushed::Dropped);
        assert_eq!(b.push(b"e1".to_vec(), true), Pushed::QueuedEvicting);
        assert_eq!(b.push(b"e2".to_vec(), true), Pushed::QueuedEvicting);
        assert_eq!(b.push(b"e3".to_vec(), true), Pushed::Dropped);
        assert_eq!(b.take_overflow(), (3, 1));
        assert_eq!(b.take_overflow(), (0, 0));
        assert_eq!(b.take_batch(10, 1 << 20).unwrap().body, b"[e1,e2]");
    }

    #[test]
    fn a_failed_batch_goes_back_ahead_of_newer_events() {
        let mut b = EventBuffer::new(10);
        for i in 0..3 {
            b.push(format!(r#"{{"n":{i}}}"#).into_bytes(), false);
        }
        let first = b.take_batch(2, 1 << 20).unwrap();
        assert_eq!(first.body, br#"[{"n":0},{"n":1}]"#);
        assert_eq!(first.len(), 2);
        // A second batch may go out while the first is in flight.
        let second = b.take_batch(2, 1 << 20).unwrap();
        assert_eq!(second.body, br#"[{"n":2}]"#);
        assert_eq!(b.in_flight(), 3);
        b.push(br#"{"n":3}"#.to_vec(), false);
        b.ack(second);
        b.requeue(first);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(
            b.take_batch(10, 1 << 20).unwrap().body,
            br#"[{"n":0},{"n":1},{"n":3}]"#
        );
        assert!(b.is_empty());
        assert_eq!(b.take_batch(2, 1 << 20), None);
    }

    #[test]
    fn events_in_flight_count_against_the_capacity() {
        let mut b = EventBuffer::new(2);
        b.push(b"1".to_vec(), false);
        b.push(b"2".to_vec(), false);
        let batch = b.take_batch(10, 1 << 20).unwrap();
        assert_eq!(b.push(b"3".to_vec(), false), Pushed::Dropped);
        b.ack(batch);
        assert_eq!(b.push(b"3".to_vec(), false), Pushed::Queued);
    }

    #[test]
    fn essential_events_go_out_first() {
        let mut b = EventBuffer::new(10);
        b.push(b"o".to_vec(), false);
        b.push(b"e".to_vec(), true);
        let batch = b.take_batch(1, 1 << 20).unwrap();
        assert_eq!((batch.body.as_slice(), batch.essential()), (&b"[e]"[..], 1));
    }

    #[test]
    fn batch_respects_the_byte_cap_but_always_takes_one() {
        let mut b = EventBuffer::new(10);
        b.push(vec![b'1'; 100], false);
        b.push(vec![b'2'; 100], false);
        let batch = b.take_batch(10, 150).unwrap();
        assert_eq!((batch.body.len(), batch.len()), (102, 1));
    }

    #[test]
    fn only_known_methods_are_reported_by_name() {
        assert_eq!(report_method("GET"), "GET");
        assert_eq!(report_method("PATCH"), "PATCH");
        assert_eq!(report_method("X-FOO"), "OTHER");
        assert_eq!(report_method("get"), "OTHER");
        assert_eq!(report_method(""), "OTHER");
    }

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_caps() {
        let mut b = Backoff::new(100, 1000);
        let delays: Vec<u64> = (0..6).map(|_| b.next_delay_ms(u64::MAX / 3)).collect();
        for (d, step) in delays.iter().zip([100, 200, 400, 800, 1000, 1000]) {
            assert!(
                (step / 2..=step).contains(d),
                "{d} not in [{}, {step}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay_ms(0) <= 100);
    }

    #[test]
    fn jitter_varies() {
        let mut j = Jitter::new(42);
        let a = j.next_u64();
        assert_ne!(a, j.next_u64());
    }
}
