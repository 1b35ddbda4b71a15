//! Reconciliation: what the counter admitted against what the ledger bills.
//!
//! By consume id, from the ledger alone: every row knows whether the counter's usage
//! stream reported it (`counted`) and whether a proxy did (`reported`). By window,
//! with Redis: each of a tenant's long windows (hour, day, month) in Redis against the
//! ledger's counted, unrefunded units in the same window.
//!
//! `turnpike-collector reconcile` prints the report; `GET /v1/reconcile` serves it;
//! the server refreshes the drift gauges every few minutes.

use std::collections::BTreeMap;

use serde::Serialize;
use turnpike_plans::keys::TenantKeys;
use turnpike_plans::{window_bounds, Plans};

use crate::config::StoreArgs;
use crate::event::{format_time_ms, parse_time_ms};
use crate::ledger::{Ledger, LedgerError, StoredEvent};
use crate::merge::Decision;

/// Rows younger than this are not judged: their other half may still be on its way.
pub const DEFAULT_GRACE_SECS: i64 = 300;
/// Most differences listed by id (all are counted).
const MAX_LISTED: usize = 1000;
/// Most tenants whose windows are compared in one report.
const MAX_TENANTS: usize = 1000;

#[derive(Debug, Clone, clap::Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// From this time (RFC 3339); default: 24 hours before --until.
    #[arg(long)]
    pub since: Option<String>,
    /// Up to this time (RFC 3339); default: now minus --grace-secs.
    #[arg(long)]
    pub until: Option<String>,
    /// Rows younger than this many seconds are left out.
    #[arg(long, default_value_t = DEFAULT_GRACE_SECS)]
    pub grace_secs: i64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A consume on which the counter and the ledger's other sources disagree, or that
/// was settled by the counter's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A proxy says the counter admitted it; the counter's stream has no record.
    /// Billed on the proxy's word.
    ReportedNotCounted,
    /// Let through by `fail_open`; the counter did count it after all. Billed once.
    UnverifiedSettled,
    /// Let through by `fail_open`; the counter never counted it. Billed.
    UnverifiedUncounted,
    /// The client went away and the proxy asked for a refund, but the counter kept
    /// the units. Not billed.
    CancelledNotRefunded,
    /// The counter admitted it and no proxy event arrived (a proxy lost it or died).
    /// Billed from the counter's record.
    CountedNotReported,
}

impl Kind {
    fn of(e: &StoredEvent) -> Option<Kind> {
        let r = &e.row;
        match (r.decision, r.counted, r.reported, r.refunded) {
            (Decision::Allowed, false, true, false) => Some(Kind::ReportedNotCounted),
            (Decision::Unverified, true, _, _) => Some(Kind::UnverifiedSettled),
            (Decision::Unverified, false, _, _) => Some(Kind::UnverifiedUncounted),
            (Decision::Cancelled, true, _, false) => Some(Kind::CancelledNotRefunded),
            (_, true, false, _) => Some(Kind::CountedNotReported),
            _ => None,
        }
    }

    /// Whether this kind means the two sides disagree on money.
    pub fn is_drift(self) -> bool {
        matches!(self, Kind::ReportedNotCounted | Kind::CancelledNotRefunded)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub id: String,
    pub tenant: String,
    pub time: String,
    pub kind: Kind,
    pub billable: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowDrift {
    pub tenant: String,
    pub limit: String,
    pub meter: String,
    pub window: String,
    pub start: String,
    pub end: String,
    /// Units in Redis.
    pub counter: i64,
    /// Counted, unrefunded units in the ledger.
    pub ledger: i64,
    /// `counter - ledger`: positive while the stream backlog is being ingested, or
    /// when stream entries were lost.
    pub drift: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub since: String,
    pub until: String,
    pub rows: u64,
    pub billable_rows: u64,
    pub counts: BTreeMap<Kind, u64>,
    /// Up to 1000 differences by consume id.
    pub differences: Vec<Difference>,
    /// Present when Redis and the plans were available.
    pub windows: Option<Vec<WindowDrift>>,
    /// Consumes on which the two sides disagree on money.
    pub drift_ids: u64,
    /// Sum of |drift| over the windows compared.
    pub drift_units: u64,
}

/// Reconcile `[since_ms, until_ms)`; with `redis` and `plans`, windows too.
pub async fn reconcile(
    ledger: &Ledger,
    redis: Option<&mut turnpike_redis::RedisConn>,
    plans: Option<&Plans>,
    tenant: Option<&str>,
    since_ms: i64,
    until_ms: i64,
) -> Result<Report, ReconcileError> {
    let rows = ledger.rows_between(tenant, since_ms, until_ms).await?;
    let mut counts: BTreeMap<Kind, u64> = BTreeMap::new();
    let mut differences = Vec::new();
    let mut tenants: Vec<String> = Vec::new();
    let mut billable_rows = 0;
    for e in &rows {
        billable_rows += u64::from(e.billable);
        if tenants.last() != Some(&e.row.tenant) && tenants.len() < MAX_TENANTS {
            tenants.push(e.row.tenant.clone());
        }
        let Some(kind) = Kind::of(e) else { continue };
        *counts.entry(kind).or_default() += 1;
        if differences.len() < MAX_LISTED {
            differences.push(Difference {
                id: e.row.id.clone(),
                tenant: e.row.tenant.clone(),
                time: format_time_ms(e.row.time_ms),
                kind,
                billable: e.billable,
            });
        }
    }
    tenants.dedup();
    let windows = match (redis, plans) {
        (Some(conn), Some(plans)) => {
            Some(window_drift(ledger, conn, plans, &tenants, until_ms).await?)
        }
        _ => None,
    };
    let drift_ids = counts
        .iter()
        .filter(|(k, _)| k.is_drift())
        .map(|(_, n)| n)
        .sum();
    let drift_units = windows
        .as_ref()
        .map_or(0, |w| w.iter().map(|d| d.drift.unsigned_abs()).sum());
    Ok(Report {
        since: format_time_ms(since_ms),
        until: format_time_ms(until_ms),
        rows: rows.len() as u64,
        billable_rows,
        counts,
        differences,
        windows,
        drift_ids,
        drift_units,
    })
}

/// Each tenant's long windows containing `at_ms`: Redis against the ledger.
async fn window_drift(
    ledger: &Ledger,
    conn: &mut turnpike_redis::RedisConn,
    plans: &Plans,
    tenants: &[String],
    at_ms: i64,
) -> Result<Vec<WindowDrift>, ReconcileError> {
    let at = at_ms.div_euclid(1000);
    let mut out = Vec::new();
    for tenant in tenants {
        let claimed = ledger.latest_plan(tenant).await?;
        let plan = plans.resolve(tenant, claimed.as_deref());
        let keys = TenantKeys::new(tenant);
        for limit in plan.limits.iter().filter(|l| l.window.is_long()) {
            let (start, end) = window_bounds(limit.window, plan.anchor_day, at);
            let key = keys.window(&limit.meter, limit.window, start);
            let counter: Option<i64> = redis::cmd("GET").arg(&key).query_async(conn).await?;
            let counted = ledger
                .counted_total(tenant, &limit.meter, start * 1000, end * 1000)
                .await?;
            let counter = counter.unwrap_or(0);
            out.push(WindowDrift {
                tenant: tenant.clone(),
                limit: limit.name.clone(),
                meter: limit.meter.clone(),
                window: limit.window.as_str().to_owned(),
                start: format_time_ms(start * 1000),
                end: format_time_ms(end * 1000),
                counter,
                ledger: counted,
                drift: counter - counted,
            });
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Usage(String),
}

/// The time range from the arguments: `until` defaults to now minus the grace,
/// `since` to 24 hours before `until`.
pub fn range(
    since: Option<&str>,
    until: Option<&str>,
    grace_secs: i64,
    now_ms: i64,
) -> Result<(i64, i64), ReconcileError> {
    let parse = |name: &str, text: &str| {
        parse_time_ms(text).ok_or_else(|| {
            ReconcileError::Usage(format!("--{name}: not an RFC 3339 time: {text:?}"))
        })
    };
    let until = match until {
        Some(t) => parse("until", t)?,
        None => now_ms - grace_secs * 1000,
    };
    let since = match since {
        Some(t) => parse("since", t)?,
        None => until - 86_400_000,
    };
    if since >= until {
        return Err(ReconcileError::Usage(
            "--since must be before --until".into(),
        ));
    }
    Ok((since, until))
}

/// `turnpike-collector reconcile`.
pub async fn main(args: ReconcileArgs) -> Result<(), ReconcileError> {
    let ledger = Ledger::open(&args.store.database, 2).await?;
    let plans = match &args.store.plans {
        Some(path) => Some(Plans::load(path).map_err(|e| ReconcileError::Usage(e.to_string()))?),
        None => None,
    };
    let mut redis = match crate::server::stream_config(&args.store, "reconcile".into())
        .map_err(|e| ReconcileError::Usage(e.to_string()))?
    {
        Some(config) => Some(
            crate::usage_stream::connect(&config)
                .map_err(|e| ReconcileError::Usage(e.to_string()))?,
        ),
        None => None,
    };
    let (since, until) = range(
        args.since.as_deref(),
        args.until.as_deref(),
        args.grace_secs,
        crate::api::now_ms(),
    )?;
    let report = reconcile(
        &ledger,
        redis.as_mut(),
        plans.as_ref(),
        args.tenant.as_deref(),
        since,
        until,
    )
    .await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", human(&report));
    }
    ledger.close().await;
    Ok(())
}

/// The report for a terminal.
pub fn human(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "reconciliation {} .. {}: {} rows, {} billable",
        r.since, r.until, r.rows, r.billable_rows
    );
    for (kind, n) in &r.counts {
        let _ = writeln!(
            out,
            "  {n:>8}  {}",
            serde_json::to_string(kind)
                .unwrap_or_default()
                .trim_matches('"')
        );
    }
    let _ = writeln!(out, "consumes the two sides disagree on: {}", r.drift_ids);
    if let Some(windows) = &r.windows {
        let _ = writeln!(
            out,
            "windows compared: {}, units of drift: {}",
            windows.len(),
            r.drift_units
        );
        for w in windows.iter().filter(|w| w.drift != 0) {
            let _ = writeln!(
                out,
                "  {} {} ({} {}): counter {} ledger {} drift {:+}",
                w.tenant, w.limit, w.window, w.start, w.counter, w.ledger, w.drift
            );
        }
    }
    for d in r.differences.iter().filter(|d| d.kind.is_drift()) {
        let _ = writeln!(out, "  {} {} {} {:?}", d.time, d.tenant, d.id, d.kind);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::Row;

    fn event(decision: Decision, counted: bool, reported: bool, refunded: bool) -> StoredEvent {
        StoredEvent {
            row: Row {
                id: "c".into(),
                source: "s".into(),
                tenant: "t".into(),
                time_ms: 0,
                plan: None,
                method: String::new(),
                route: String::new(),
                status: 0,
                request_bytes: 0,
                response_bytes: 0,
                duration_ms: 0,
                decision,
                meters: vec![],
                received_at_ms: 0,
                counted,
                reported,
                refunded,
                lease: None,
                settled: 0,
            },
            billable: true,
            seq: 1,
        }
    }

    #[test]
    fn every_kind_of_difference_is_recognised() {
        use Decision::*;
        assert_eq!(Kind::of(&event(Allowed, true, true, false)), None);
        assert_eq!(Kind::of(&event(Allowed, true, true, true)), None);
        assert_eq!(Kind::of(&event(Denied, false, true, false)), None);
        assert_eq!(
            Kind::of(&event(Allowed, false, true, false)),
            Some(Kind::ReportedNotCounted)
        );
        assert_eq!(
            Kind::of(&event(Unverified, true, true, false)),
            Some(Kind::UnverifiedSettled)
        );
        assert_eq!(
            Kind::of(&event(Unverified, false, true, false)),
            Some(Kind::UnverifiedUncounted)
        );
        assert_eq!(
            Kind::of(&event(Cancelled, true, true, false)),
            Some(Kind::CancelledNotRefunded)
        );
        assert_eq!(
            Kind::of(&event(Allowed, true, false, false)),
            Some(Kind::CountedNotReported)
        );
    }

    #[test]
    fn the_default_range_is_the_day_before_now_minus_grace() {
        let (since, until) = range(None, None, 300, 1_000_000_000).unwrap();
        assert_eq!(until, 1_000_000_000 - 300_000);
        assert_eq!(since, until - 86_400_000);
        assert!(range(
            Some("2026-01-02T00:00:00Z"),
            Some("2026-01-01T00:00:00Z"),
            0,
            0
        )
        .is_err());
        assert!(range(Some("yesterday"), None, 0, 0).is_err());
    }
}
