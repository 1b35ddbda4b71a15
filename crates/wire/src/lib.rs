//! Wire types shared by the Turnpike filter (wasm32-wasip1), the counter service and
//! the collector. Only `serde` here: this crate is compiled into the filter, where
//! every byte and every dependency costs on each request.
//!
//! Field names are the JSON contract; change them only together with every user.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// HTTP paths of the counter service's API.
pub mod counter_paths {
    /// `POST` a [`super::ConsumeRequest`], answered by a [`super::ConsumeResponse`].
    pub const CONSUME: &str = "/v1/consume";
    /// `POST` a JSON array of [`super::ConsumeRequest`] (at most
    /// [`super::MAX_CONSUME_BATCH`]), answered by an array of
    /// [`super::ConsumeBatchItem`] in the same order, or by the compact batch form
    /// ([`super::compact_batch`]). Each item is decided exactly as a single consume,
    /// all of them concurrently: in no particular order among themselves.
    pub const CONSUME_BATCH: &str = "/v1/consume/batch";
    /// `POST` a [`super::RefundRequest`], answered by a [`super::RefundResponse`].
    pub const REFUND: &str = "/v1/refund";
    /// `GET /v1/tenants/{tenant}/usage`, answered by a [`super::UsageResponse`].
    pub const USAGE_PREFIX: &str = "/v1/tenants/";
    /// `POST` a [`super::SettleRequest`], answered by a [`super::SettleResponse`].
    pub const SETTLE: &str = "/v1/settle";
    /// `POST` a JSON array of [`super::SettleRequest`] (at most
    /// [`super::MAX_CONSUME_BATCH`]), answered by an array of
    /// [`super::SettleBatchItem`] in the same order; each applied as `/v1/settle`
    /// applies one.
    pub const SETTLE_BATCH: &str = "/v1/settle/batch";
    /// `POST` a [`super::LeaseRequest`], answered by a [`super::LeaseResponse`].
    pub const LEASE: &str = "/v1/lease";
    /// `POST` a [`super::LeaseReport`], answered by a [`super::LeaseReportResponse`].
    pub const LEASE_REPORT: &str = "/v1/lease/report";
}

/// HTTP paths of the collector's API.
pub mod collector_paths {
    /// `POST /v1/tenants/{tenant}/totals` a [`super::TotalsRequest`], answered by a
    /// [`super::TotalsResponse`] (read credential): how the counter re-seeds windows.
    pub const TOTALS_SUFFIX: &str = "/totals";
    /// `POST` a batch (`application/cloudevents-batch+json`, a JSON array of
    /// [`super::UsageEvent`]) or one event (`application/cloudevents+json`).
    pub const EVENTS: &str = "/v1/events";
}

/// Check and consume `cost` units of each meter for `tenant`, against every limit of
/// the tenant's plan that counts one of these meters: all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumeRequest {
    /// Consume id, minted by the proxy for this request. The same id sent again
    /// (a retried callout) is counted once and answered the same.
    pub id: String,
    /// Tenant id, from a verified JWT claim.
    pub tenant: String,
    /// Plan from a verified claim, if the deployment uses one. A tenant override in
    /// the plans file takes precedence; an unknown plan falls back to the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// What this request costs, per meter. Never empty.
    pub meters: Vec<MeterCost>,
}

/// A quantity of one meter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterCost {
    pub meter: String,
    pub cost: u64,
}

/// The counter's answer to a [`ConsumeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumeResponse {
    /// True when every limit had room and all were incremented; false when nothing
    /// was consumed.
    pub allowed: bool,
    /// The plan the tenant was checked against.
    pub plan: String,
    /// One entry per limit of the plan whose meter is in the request, in plan order.
    pub limits: Vec<LimitStatus>,
    /// Name of the first limit that had no room, when denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
    /// When denied: seconds until every denying window has reset (never earlier
    /// than the window's end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// True when this answer was replayed from an earlier consume with the same id.
    #[serde(default)]
    pub replayed: bool,
    /// When the counter decided, unix milliseconds by the counter's clock (Redis's):
    /// the time the usage is billed at and the windows were chosen by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
    /// When denied because a limit's maximum is below this request's cost: that
    /// limit's name. Such a request can never be allowed; there is no `retry_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exceeds_limit: Option<String>,
}

/// Media type of the compact consume answer, for proxies that ask for it with
/// `Accept`: a few lines of space-separated fields, cheaper to read on every request
/// than JSON. See [`ConsumeResponse::to_compact`]. The JSON form stays for everyone else.
pub const COMPACT_ANSWER: &str = "application/vnd.turnpike.consume";

impl ConsumeResponse {
    /// The compact form: a first line `ALLOWED TIME_MS PLAN RETRY_AFTER DENIED_BY
    /// EXCEEDS` (`-` for none), then one line per limit `NAME WINDOW_SECS MAX USED
    /// REMAINING RESET SOFT SOFT_CROSSED`. Names and plans hold no spaces (they are
    /// validated identifiers).
    pub fn to_compact(&self) -> String {
        use std::fmt::Write as _;
        let dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
        let mut out = String::with_capacity(48 + self.limits.len() * 48);
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{} {} {} {} {} {}",
            u8::from(self.allowed),
            self.time_ms.unwrap_or(0),
            self.plan,
            self.retry_after
                .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            dash(self.denied_by.as_deref()),
            dash(self.exceeds_limit.as_deref()),
        );
        for l in &self.limits {
            let _ = write!(
                out,
                "\n{} {} {} {} {} {} {} {}",
                l.name,
                l.window_secs,
                l.max,
                l.used,
                l.remaining,
                l.reset,
                l.soft.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                u8::from(l.soft_crossed)
            );
        }
        out
    }
}

/// The most consumes one batch may carry.
pub const MAX_CONSUME_BATCH: usize = 256;

/// One answer in a batch: the consume's status, as a single consume would have
/// answered it, with its answer (200) or its problem (anything else).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumeBatchItem {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<ConsumeResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// Separates the items of a compact batch answer: a compact answer never holds an
/// empty line.
pub const COMPACT_BATCH_SEPARATOR: &str = "\n\n";

/// The compact form of a batch answer ([`COMPACT_ANSWER`] media type): each item's
/// compact answer, or `!STATUS` for an item that failed, in request order, separated
/// by [`COMPACT_BATCH_SEPARATOR`].
pub fn compact_batch(items: &[ConsumeBatchItem]) -> String {
    let mut out = String::with_capacity(items.len() * 96);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(COMPACT_BATCH_SEPARATOR);
        }
        match &item.answer {
            Some(answer) if item.status == 200 => out.push_str(&answer.to_compact()),
            _ => {
                out.push('!');
                out.push_str(&item.status.to_string());
            }
        }
    }
    out
}

/// The state of one limit after a consume (or a usage read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitStatus {
    /// Limit name, unique within its plan (used as the RateLimit policy name).
    pub name: String,
    pub meter: String,
    /// `second`, `minute`, `hour`, `day` or `month`.
    pub window: String,
    /// Length of the current window in seconds (a calendar month varies).
    pub window_secs: u64,
    /// Hard maximum per window.
    pub max: u64,
    /// Units used in the current window, after this consume.
    pub used: u64,
    /// `max - used`, saturating.
    pub remaining: u64,
    /// Seconds until the current window ends (at least 1).
    pub reset: u64,
    /// Soft threshold, if the limit has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft: Option<u64>,
    /// True when `used` has reached the soft threshold.
    #[serde(default)]
    pub soft_crossed: bool,
}

/// Give back what a consume took (e.g. when the upstream answered 5xx).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    /// The consume id to refund.
    pub id: String,
    pub tenant: String,
}

/// The counter's answer to a [`RefundRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundResponse {
    /// True when this call gave units back; false when the id was denied or already
    /// refunded (refunds are idempotent too).
    pub refunded: bool,
    /// True when the consume had not arrived yet: it is now cancelled, and refused
    /// (nothing consumed, nothing billed) if it arrives later.
    #[serde(default)]
    pub cancelled: bool,
}

/// What an exchange really used of some meters, replacing what its consume reserved
/// (e.g. tokens an LLM reported). Applied once per consume id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleRequest {
    pub id: String,
    pub tenant: String,
    /// Final quantity per settled meter (`cost` holds the quantity).
    pub meters: Vec<MeterCost>,
}

/// The counter's answer to a [`SettleRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleResponse {
    /// False when there was nothing to settle: the consume is unknown (its record
    /// expired), refunded, cancelled or settled before.
    pub settled: bool,
}

/// One answer in a settle batch: the settlement's status, as `/v1/settle` would have
/// answered it, with `settled` (200) or its problem (anything else).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleBatchItem {
    pub status: u16,
    #[serde(default)]
    pub settled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// Ask for (more) requests of one route to admit locally, or give a lease back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// What one request of the route costs, per meter.
    pub meters: Vec<MeterCost>,
    /// Requests wanted; 0 with `close` only gives the lease back.
    pub want: u64,
    /// The lease the proxy holds for this tenant and route: extended when its windows
    /// are still the current ones, else closed and replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// Give `lease` back: `unspent` of its requests at once, the rest of what was
    /// granted and not reported once the requests it admitted have been reported (see
    /// `report_ms`).
    #[serde(default)]
    pub close: bool,
    /// With `close`: requests of the lease no worker of the proxy took, and none ever
    /// will (the proxy dropped the lease before counting them). They go back to the
    /// windows at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unspent: Option<u64>,
    /// How often the proxy reports the requests it admits from leases, ms: a lease
    /// given back or ended keeps its unspent units out for two of these and 3 s more,
    /// so a request still on its way in a report is never also given back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_ms: Option<u64>,
}

/// The counter's answer to a [`LeaseRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    /// The lease the proxy now holds (`None`: nothing granted and nothing open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// Requests added to the lease by this call (0: too little room left to lease;
    /// decide each request with a consume).
    pub granted: u64,
    /// When the lease ends (unix ms, the counter's clock): never after a window it
    /// took from ends.
    pub expires_ms: u64,
    /// The counter's clock when it answered, unix ms.
    pub time_ms: u64,
    /// How long the counter held the ask before deciding it (it waits for a window to
    /// turn rather than extend a lease by its last milliseconds), ms, at most: the
    /// proxy's lease starts no earlier than it sent the ask plus this.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_ms: u64,
    pub plan: String,
    /// The limits the route's meters count, after this grant.
    pub limits: Vec<LimitStatus>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Most records of a lease report, or of the consumes of one tenant decided together in
/// a batch, that the counter writes into one usage-stream entry (`k=A`). An entry per
/// request would cost Redis, and the collector reading it, most of what leasing (and
/// batching) saves; the collector reads that many fewer entries at a time from a
/// stream that has them.
pub const LEASE_RECORDS_PER_STREAM_ENTRY: usize = 100;

/// The records field (`r`) of each usage-stream entry of a lease report, in order: up
/// to [`LEASE_RECORDS_PER_STREAM_ENTRY`] records each, as `id:ms,id:ms,...` (consume ids
/// are `[A-Za-z0-9_-]`, so `:` and `,` cannot clash). The counter joins them, not its
/// Redis script: per record, Lua's string work cost Redis more than the entry itself.
pub fn lease_stream_records(records: &[(String, u64)]) -> impl Iterator<Item = String> + '_ {
    records.chunks(LEASE_RECORDS_PER_STREAM_ENTRY).map(|chunk| {
        let mut text = String::with_capacity(chunk.iter().map(|(id, _)| id.len() + 15).sum());
        for (i, (id, at_ms)) in chunk.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            // Writing into a String cannot fail.
            let _ = write!(text, "{sep}{id}:{at_ms}");
        }
        text
    })
}

/// Requests a proxy admitted from a lease, for the usage stream (and the ledger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReport {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// What one request of the route costs, per meter.
    pub meters: Vec<MeterCost>,
    pub lease: u64,
    /// Minted by the proxy for this report: the same report sent again (its answer
    /// was lost) counts once.
    pub batch: String,
    /// (consume id, decision time in unix ms on the counter's clock) per request.
    pub records: Vec<(String, u64)>,
    /// Requests admitted from `lease` still running on the proxy (they are reported
    /// when they complete): a lease that ended keeps its units out for another report
    /// delay, so none of them is given back before they are reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u64>,
    /// The proxy's report interval, ms (as in [`LeaseRequest`]): sizes that delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_ms: Option<u64>,
}

/// The counter's answer to a [`LeaseReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReportResponse {
    pub recorded: u64,
}

/// Billable units per meter in time ranges of one tenant, from the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotalsRequest {
    pub ranges: Vec<TimeRange>,
}

/// `[start_ms, end_ms)`, unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// The ledger's answer to a [`TotalsRequest`]: one entry per range, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotalsResponse {
    pub ranges: Vec<RangeTotals>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeTotals {
    pub start_ms: i64,
    pub end_ms: i64,
    /// Billable quantity per meter (meters with none are omitted).
    pub meters: Vec<MeterQuantity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterQuantity {
    pub meter: String,
    pub quantity: i64,
}

/// A tenant's current usage against its plan, without consuming anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageResponse {
    pub tenant: String,
    pub plan: String,
    pub limits: Vec<LimitStatus>,
}

/// RFC 9457 problem details: the body of every error answer
/// (`application/problem+json`), from the filter and from the services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// CloudEvents 1.0 `type` of a usage event.
pub const USAGE_EVENT_TYPE: &str = "dev.turnpike.usage.v1";

/// One usage event: a CloudEvents 1.0 event in structured JSON mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Always `"1.0"`.
    pub specversion: String,
    /// The proxy-minted consume id: the same id the counter consumed under.
    pub id: String,
    /// Who metered it, e.g. `//turnpike/envoy/<node>`; the ledger is keyed on
    /// `source` + `id`.
    pub source: String,
    /// [`USAGE_EVENT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The tenant.
    pub subject: String,
    /// RFC 3339 UTC time the exchange completed.
    pub time: String,
    /// Always `"application/json"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    pub data: UsageData,
}

/// The `data` of a [`UsageEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageData {
    /// Quantities per meter (after settlement; zero-cost meters omitted).
    pub meters: Vec<MeterCost>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    pub method: String,
    /// Configured route name (not the raw path, unless configured so).
    pub route: String,
    /// HTTP status sent to the client.
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: u64,
    pub decision: Decision,
    /// `meters` hold what the exchange used (settled from the upstream's report), not
    /// what was reserved before it ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub settled: bool,
    /// The lease the proxy admitted it from (leased mode), as the counter numbered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// Leased mode: the proxy gave the request back into its lease (an upstream 5xx
    /// under `refund_on_5xx`). The counter never learns of it, so this is what keeps
    /// it unbilled. Only with `lease`: an exact consume's refund is the counter's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refunded: bool,
}

/// What the filter decided for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The counter admitted it: billable.
    Allowed,
    /// The counter refused it (429): not billable.
    Denied,
    /// Let through by `fail_open` without the counter's answer: to reconcile.
    Unverified,
    /// The client went away before the counter answered (or while a refund was
    /// pending): the proxy asked the counter to refund it. Not billable.
    Cancelled,
}

impl Decision {
    /// Whether usage with this decision is billed.
    pub fn billable(self) -> bool {
        !matches!(self, Decision::Denied | Decision::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_request_omits_absent_plan() {
        let req = ConsumeRequest {
            id: "abc".into(),
            tenant: "acme".into(),
            plan: None,
            meters: vec![MeterCost {
                meter: "requests".into(),
                cost: 1,
            }],
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(
            json,
            r#"{"id":"abc","tenant":"acme","meters":[{"meter":"requests","cost":1}]}"#
        );
    }

    #[test]
    fn usage_event_round_trips_with_cloudevents_names() {
        let json = r#"{"specversion":"1.0","id":"1","source":"//turnpike/envoy/a","type":"dev.turnpike.usage.v1","subject":"acme","time":"2026-11-27T10:00:00Z","datacontenttype":"application/json","data":{"meters":[{"meter":"requests","cost":1}],"plan":"pro","method":"GET","route":"search","status":200,"request_bytes":0,"response_bytes":12,"duration_ms":3,"decision":"allowed"}}"#;
        let ev: UsageEvent = serde_json::from_str(json).unwrap();
        assert_eq!(ev.kind, USAGE_EVENT_TYPE);
        assert_eq!(ev.data.decision, Decision::Allowed);
        assert_eq!(serde_json::to_string(&ev).unwrap(), json);
    }

    #[test]
    fn lease_records_are_joined_into_entries_of_at_most_the_constant() {
        let records: Vec<(String, u64)> = (0..2 * LEASE_RECORDS_PER_STREAM_ENTRY + 1)
            .map(|i| (format!("id-{i}"), u64::MAX - i as u64))
            .collect();
        let entries: Vec<String> = lease_stream_records(&records).collect();
        let sizes: Vec<usize> = entries.iter().map(|e| e.split(',').count()).collect();
        assert_eq!(
            sizes,
            [
                LEASE_RECORDS_PER_STREAM_ENTRY,
                LEASE_RECORDS_PER_STREAM_ENTRY,
                1
            ]
        );
        assert!(entries[0].starts_with(&format!("id-0:{},id-1:", u64::MAX)));
        let last = 2 * LEASE_RECORDS_PER_STREAM_ENTRY;
        assert_eq!(entries[2], format!("id-{last}:{}", u64::MAX - last as u64));
        assert_eq!(lease_stream_records(&[]).count(), 0);
    }

    #[test]
    fn only_denied_is_not_billable() {
        assert!(Decision::Allowed.billable());
        assert!(Decision::Unverified.billable());
        assert!(!Decision::Denied.billable());
        assert!(!Decision::Cancelled.billable());
    }
}
