//! What the console shows, as functions shared with the JSON API: every number on a
//! page comes from one of these, and each has an endpoint serving the same result
//! (`GET /v1/tenants`, `/v1/tenants/{t}/series`, `/v1/tenants/{t}/recent`,
//! `/v1/pipeline`, and `/v1/anomalies` from [`crate::anomalies::http`]).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use turnpike_plans::{window_bounds, Window};

use crate::anomalies::http::{judge_status, JudgeStatus, ListParams};
use crate::anomalies::series::{bucket_of, SeriesKey};
use crate::anomalies::store::{buckets_between, Filter};
use crate::anomalies::AnomalyView;
use crate::api::{check_tenant, now_ms, query_error, require_read, AppState, EventView};
use crate::event::{format_time_ms, parse_time_ms};
use crate::ledger::{with_pool, Ledger, LedgerError};
use crate::problem::ApiError;

const DEFAULT_TENANTS: u32 = 50;
const MAX_TENANTS: u32 = 500;

fn unavailable(err: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %err, "console query failed");
    ApiError::ledger_unavailable("the ledger could not be queried; retry")
}

fn parse_at(name: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => parse_time_ms(t).map(Some).ok_or_else(|| {
            ApiError::bad_query(format!("{name}: must be an RFC 3339 timestamp, got {t:?}"))
        }),
    }
}

// --- tenants -----------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct TenantsParams {
    /// Part of the tenant name, any case.
    pub q: Option<String>,
    /// The `next_after` of the previous page.
    pub after: Option<String>,
    pub limit: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantsPage {
    pub tenants: Vec<TenantUsage>,
    /// Pass as `after` for the next page.
    pub next_after: Option<String>,
    pub more: bool,
}

/// A tenant's plan, billing period and usage against each limit the ledger can tell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantUsage {
    pub tenant: String,
    /// `None` without a plans file.
    pub plan: Option<String>,
    pub anchor_day: u8,
    pub period_start: String,
    pub period_end: String,
    /// Billable usage per meter in the billing period.
    pub usage: Vec<MeterUsage>,
    /// The plan's hour, day and month limits with usage in their current window
    /// (second and minute windows are the counter's alone).
    pub limits: Vec<LimitUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeterUsage {
    pub meter: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LimitUsage {
    pub name: String,
    pub meter: String,
    pub window: String,
    pub window_start: String,
    pub window_end: String,
    pub used: i64,
    pub soft: Option<u64>,
    pub max: u64,
    /// `ok`, `soft` (at or past the soft limit) or `hard` (at or past `max`).
    pub state: String,
}

pub fn limit_state(used: i64, soft: Option<u64>, max: u64) -> &'static str {
    let used = used.max(0) as u64;
    if used >= max {
        "hard"
    } else if soft.is_some_and(|s| used >= s) {
        "soft"
    } else {
        "ok"
    }
}

/// Tenant names after `after` containing `q`, in name order: a loose index scan (one
/// index seek per tenant), so a page is as fast with 10,000 tenants as with ten.
async fn tenant_names(
    ledger: &Ledger,
    q: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<String>, LedgerError> {
    let escaped: String = q
        .to_lowercase()
        .chars()
        .flat_map(|c| match c {
            '%' | '_' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    let pattern = format!("%{escaped}%");
    let sql = "WITH RECURSIVE t(tenant) AS ( \
                 SELECT MIN(tenant) FROM usage_events WHERE tenant > $1 \
                 UNION ALL \
                 SELECT (SELECT MIN(u.tenant) FROM usage_events u WHERE u.tenant > t.tenant) \
                 FROM t WHERE t.tenant IS NOT NULL) \
               SELECT tenant FROM t WHERE tenant IS NOT NULL \
               AND LOWER(tenant) LIKE $2 ESCAPE '\\' LIMIT $3";
    with_pool!(ledger, pool => {
        let rows = sqlx::query(sql)
            .bind(after)
            .bind(&pattern)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>(0)?)).collect()
    })
}

/// One tenant's usage against its plan at `at_ms`.
pub async fn tenant_usage(
    state: &AppState,
    tenant: &str,
    at_ms: i64,
) -> Result<TenantUsage, LedgerError> {
    let ledger = &state.ledger;
    let plans = state.plans.as_ref().map(|p| p.load_full());
    let claim = match &plans {
        Some(_) => ledger.latest_plan(tenant).await?,
        None => None,
    };
    let resolved = plans
        .as_deref()
        .map(|p| p.resolve(tenant, claim.as_deref()));
    let anchor_day = resolved.map_or(1, |r| r.anchor_day);
    let at = at_ms.div_euclid(1000);
    let (period_start, period_end) = window_bounds(Window::Month, anchor_day, at);
    let usage = ledger
        .billable_totals(tenant, period_start * 1000, period_end * 1000)
        .await?;
    let mut limits = Vec::new();
    let mut by_window: Vec<(Window, Vec<(String, i64)>)> = vec![(Window::Month, usage.clone())];
    if let Some(plan) = &resolved {
        for limit in plan.limits.iter().filter(|l| l.window.is_long()) {
            let (start, end) = window_bounds(limit.window, anchor_day, at);
            let totals = match by_window.iter().find(|(w, _)| *w == limit.window) {
                Some((_, t)) => t.clone(),
                None => {
                    let t = ledger
                        .billable_totals(tenant, start * 1000, end * 1000)
                        .await?;
                    by_window.push((limit.window, t.clone()));
                    t
                }
            };
            let used = totals
                .iter()
                .find(|(m, _)| *m == limit.meter)
                .map_or(0, |(_, q)| *q);
            limits.push(LimitUsage {
                name: limit.name.clone(),
                meter: limit.meter.clone(),
                window: limit.window.as_str().to_owned(),
                window_start: format_time_ms(start * 1000),
                window_end: format_time_ms(end * 1000),
                used,
                soft: limit.soft,
                max: limit.max,
                state: limit_state(used, limit.soft, limit.max).to_owned(),
            });
        }
    }
    Ok(TenantUsage {
        tenant: tenant.to_owned(),
        plan: resolved.map(|r| r.name.to_owned()),
        anchor_day,
        period_start: format_time_ms(period_start * 1000),
        period_end: format_time_ms(period_end * 1000),
        usage: usage
            .into_iter()
            .map(|(meter, quantity)| MeterUsage { meter, quantity })
            .collect(),
        limits,
    })
}

/// A page of the tenant directory: what `GET /v1/tenants` answers.
pub async fn tenants_page(state: &AppState, p: &TenantsParams) -> Result<TenantsPage, ApiError> {
    let q = p.q.as_deref().unwrap_or("").trim();
    if q.len() > 64
        || !q
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(ApiError::bad_query("q: up to 64 of [A-Za-z0-9._-]"));
    }
    let after = p.after.as_deref().unwrap_or("");
    let limit = match p.limit.as_deref().filter(|l| !l.is_empty()) {
        None => DEFAULT_TENANTS,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_TENANTS).contains(n))
            .ok_or_else(|| {
                ApiError::bad_query(format!("limit: must be 1..={MAX_TENANTS}, got {text:?}"))
            })?,
    };
    let mut names = tenant_names(&state.ledger, q, after, limit + 1)
        .await
        .map_err(unavailable)?;
    let more = names.len() > limit as usize;
    names.truncate(limit as usize);
    let now = now_ms();
    let mut tenants = Vec::with_capacity(names.len());
    for name in &names {
        tenants.push(tenant_usage(state, name, now).await.map_err(unavailable)?);
    }
    Ok(TenantsPage {
        next_after: if more { names.last().cloned() } else { None },
        tenants,
        more,
    })
}

pub async fn tenants_json(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<TenantsParams>, QueryRejection>,
) -> Result<Json<TenantsPage>, ApiError> {
    require_read(&state, &headers)?;
    let Query(p) = query.map_err(query_error)?;
    Ok(Json(tenants_page(&state, &p).await?))
}

// --- one tenant's series -------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SeriesParams {
    /// Default: three days before `until`.
    pub since: Option<String>,
    /// Default: now.
    pub until: Option<String>,
}

/// Usage over time per meter, as the anomaly judge buckets it, with the tenant's
/// anomalies in the range.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantSeries {
    pub tenant: String,
    pub bucket_secs: i64,
    pub since: String,
    pub until: String,
    pub series: Vec<MeterSeries>,
    pub anomalies: Vec<AnomalyView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeterSeries {
    /// A meter, or `*`: every row (requests of any decision).
    pub meter: String,
    /// Bucket starts, unix seconds, every bucket of the range.
    pub starts: Vec<i64>,
    /// Billable quantity per bucket (rows for `*`).
    pub values: Vec<f64>,
    /// Denied rows per bucket (`*` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<Vec<f64>>,
    pub total: f64,
}

const MAX_SERIES_BUCKETS: i64 = 5000;

pub async fn tenant_series(
    state: &AppState,
    tenant: &str,
    p: &SeriesParams,
) -> Result<TenantSeries, ApiError> {
    check_tenant(tenant)?;
    let width = state.anomalies.bucket_secs;
    let until_ms = parse_at("until", p.until.as_deref())?.unwrap_or_else(now_ms);
    let until = bucket_of(until_ms.div_euclid(1000), width) + width;
    let since = match parse_at("since", p.since.as_deref())? {
        Some(ms) => bucket_of(ms.div_euclid(1000), width),
        None => until - 3 * 86_400,
    };
    if since >= until || (until - since) / width > MAX_SERIES_BUCKETS {
        return Err(ApiError::bad_query(format!(
            "since..until: at most {MAX_SERIES_BUCKETS} buckets of {width} s"
        )));
    }
    let filter = Filter {
        tenant: Some(tenant.to_owned()),
        meter: None,
    };
    let sparse = buckets_between(&state.ledger, &filter, since * 1000, until * 1000, width)
        .await
        .map_err(unavailable)?;
    let mut keys: Vec<&SeriesKey> = sparse.keys().collect();
    keys.sort();
    let starts: Vec<i64> = (since..until).step_by(width as usize).collect();
    let series = keys
        .into_iter()
        .map(|key| {
            let mut values = vec![0.0; starts.len()];
            let mut denied = vec![0.0; starts.len()];
            for b in &sparse[key] {
                let i = ((b.start - since) / width) as usize;
                if let Some(v) = values.get_mut(i) {
                    *v = b.value;
                }
                if let Some(d) = denied.get_mut(i) {
                    *d = b.denied;
                }
            }
            MeterSeries {
                meter: key.meter.clone(),
                total: values.iter().sum(),
                starts: starts.clone(),
                values,
                denied: key.is_requests().then_some(denied),
            }
        })
        .collect();
    let anomalies = crate::anomalies::http::page(
        state,
        &ListParams {
            tenant: Some(tenant.to_owned()),
            since: Some(format_time_ms(since * 1000)),
            until: Some(format_time_ms(until * 1000)),
            limit: Some("1000".into()),
            ..ListParams::default()
        },
    )
    .await?
    .anomalies;
    Ok(TenantSeries {
        tenant: tenant.to_owned(),
        bucket_secs: width,
        since: format_time_ms(since * 1000),
        until: format_time_ms(until * 1000),
        series,
        anomalies,
    })
}

pub async fn series_json(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    query: Result<Query<SeriesParams>, QueryRejection>,
) -> Result<Json<TenantSeries>, ApiError> {
    require_read(&state, &headers)?;
    let Query(p) = query.map_err(query_error)?;
    Ok(Json(tenant_series(&state, &tenant, &p).await?))
}

// --- recent events -------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RecentParams {
    pub limit: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct RecentEvents {
    pub tenant: String,
    /// Newest first, by billing time.
    pub events: Vec<EventView>,
}

pub async fn recent_events(
    state: &AppState,
    tenant: &str,
    p: &RecentParams,
) -> Result<RecentEvents, ApiError> {
    check_tenant(tenant)?;
    let limit = match p.limit.as_deref().filter(|l| !l.is_empty()) {
        None => 20,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| ApiError::bad_query(format!("limit: must be 1..=200, got {text:?}")))?,
    };
    let rows = state
        .ledger
        .recent_events(tenant, limit)
        .await
        .map_err(unavailable)?;
    Ok(RecentEvents {
        tenant: tenant.to_owned(),
        events: rows.into_iter().map(EventView::from).collect(),
    })
}

pub async fn recent_json(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    query: Result<Query<RecentParams>, QueryRejection>,
) -> Result<Json<RecentEvents>, ApiError> {
    require_read(&state, &headers)?;
    let Query(p) = query.map_err(query_error)?;
    Ok(Json(recent_events(&state, &tenant, &p).await?))
}

// --- pipeline health -----------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pipeline {
    pub at: String,
    /// Ledger rows by arrival (any replica): the ingest rate.
    pub rows_received_last_5m: i64,
    pub rows_received_last_hour: i64,
    /// The ledger's change sequence: rows written or changed, ever.
    pub ledger_changes: i64,
    pub quarantined_total: i64,
    pub quarantined_last_24h: i64,
    /// Whether this replica reads the counter's usage streams, and its backlog
    /// (entries pending or undelivered, as last measured).
    pub usage_stream: bool,
    pub usage_stream_backlog: i64,
    /// The last whole-ledger reconciliation by this replica (every 5 minutes).
    pub reconciled_at: Option<String>,
    pub reconcile_drift_units: i64,
    pub reconcile_differences: i64,
    pub anomalies: JudgeStatus,
}

pub async fn pipeline(state: &AppState) -> Result<Pipeline, ApiError> {
    let now = now_ms();
    let ledger = &state.ledger;
    let counts = async {
        let received =
            "SELECT CAST(COUNT(*) AS BIGINT) FROM usage_events WHERE received_at_ms >= $1";
        let quarantined = "SELECT CAST(COUNT(*) AS BIGINT), \
            CAST(COALESCE(SUM(CASE WHEN received_at_ms >= $1 THEN 1 ELSE 0 END), 0) AS BIGINT) \
            FROM quarantine";
        with_pool!(ledger, pool => {
            let last_5m: i64 = sqlx::query_scalar(received).bind(now - 300_000).fetch_one(pool).await?;
            let last_hour: i64 = sqlx::query_scalar(received).bind(now - 3_600_000).fetch_one(pool).await?;
            let q = sqlx::query(quarantined).bind(now - 86_400_000).fetch_one(pool).await?;
            Ok::<_, sqlx::Error>((last_5m, last_hour, q.try_get::<i64, _>(0)?, q.try_get::<i64, _>(1)?))
        })
    };
    let (last_5m, last_hour, quarantined_total, quarantined_day) =
        counts.await.map_err(unavailable)?;
    let ledger_changes = ledger.last_seq().await.map_err(unavailable)?;
    let m = &state.metrics;
    let reconciled = m.reconcile_last_run.get();
    Ok(Pipeline {
        at: format_time_ms(now),
        rows_received_last_5m: last_5m,
        rows_received_last_hour: last_hour,
        ledger_changes,
        quarantined_total,
        quarantined_last_24h: quarantined_day,
        usage_stream: state.redis.is_some(),
        usage_stream_backlog: m.stream_backlog(),
        reconciled_at: (reconciled > 0).then(|| format_time_ms(reconciled * 1000)),
        reconcile_drift_units: m.reconcile_drift_units.get(),
        reconcile_differences: m.reconcile_differences.get(),
        anomalies: judge_status(state).await?,
    })
}

pub async fn pipeline_json(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Pipeline>, ApiError> {
    require_read(&state, &headers)?;
    Ok(Json(pipeline(&state).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_ok_then_soft_then_hard() {
        assert_eq!(limit_state(0, Some(800), 1000), "ok");
        assert_eq!(limit_state(799, Some(800), 1000), "ok");
        assert_eq!(limit_state(800, Some(800), 1000), "soft");
        assert_eq!(limit_state(1000, Some(800), 1000), "hard");
        assert_eq!(limit_state(5000, None, 1000), "hard");
        assert_eq!(limit_state(999, None, 1000), "ok");
    }
}
