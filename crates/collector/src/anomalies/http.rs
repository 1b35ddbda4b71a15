//! `GET /v1/anomalies` and `GET /v1/anomalies/status` (read token). The console
//! renders the same functions' results.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use turnpike_anomaly::Kind;
use turnpike_plans::ids;

use super::store::{self, AnomalyQuery};
use super::AnomalyView;
use crate::api::{now_ms, require_read, AppState};
use crate::cursor;
use crate::event::{format_time_ms, parse_time_ms};
use crate::problem::ApiError;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/anomalies", get(list))
        .route("/v1/anomalies/status", get(status))
}

/// The query string of `GET /v1/anomalies`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ListParams {
    pub tenant: Option<String>,
    pub meter: Option<String>,
    pub kind: Option<String>,
    /// Bucket start at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Bucket start before this time (RFC 3339).
    pub until: Option<String>,
    pub limit: Option<String>,
    /// A `next_cursor` from a previous page.
    pub after: Option<String>,
    /// `asc` (default: detection order, for tailing) or `desc` (newest first).
    pub order: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnomalyPage {
    pub anomalies: Vec<AnomalyView>,
    /// Pass as `after` (with the same filters and order) for the next page. In
    /// ascending order it is always there: anomalies found later come after it.
    pub next_cursor: String,
    /// Whether more were already there when this page was read.
    pub more: bool,
}

fn empty_as_none(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl ListParams {
    pub fn to_query(&self) -> Result<AnomalyQuery, ApiError> {
        let tenant = empty_as_none(&self.tenant);
        if let Some(t) = tenant {
            crate::api::check_tenant(t)?;
        }
        let meter = empty_as_none(&self.meter);
        if let Some(m) = meter {
            if m != super::series::REQUESTS && !ids::is_valid_meter(m) {
                return Err(ApiError::bad_query(
                    "meter: must be 1..=32 of [a-z0-9_], or * for the request series",
                ));
            }
        }
        let kind = match empty_as_none(&self.kind) {
            None => None,
            Some(k) => Some(Kind::parse(k).ok_or_else(|| {
                ApiError::bad_query(format!(
                    "kind: one of spike, drop, denial_storm, plan_burn; got {k:?}"
                ))
            })?),
        };
        let time = |name: &str, v: Option<&str>, default: i64| -> Result<i64, ApiError> {
            match v {
                None => Ok(default),
                Some(t) => parse_time_ms(t)
                    .map(|ms| ms.div_euclid(1000))
                    .ok_or_else(|| {
                        ApiError::bad_query(format!(
                            "{name}: must be an RFC 3339 timestamp, got {t:?}"
                        ))
                    }),
            }
        };
        let limit = match empty_as_none(&self.limit) {
            None => DEFAULT_PAGE,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_query(format!("limit: must be 1..={MAX_PAGE}, got {text:?}"))
                })?,
        };
        let descending = match empty_as_none(&self.order) {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(o) => {
                return Err(ApiError::bad_query(format!(
                    "order: asc or desc, got {o:?}"
                )))
            }
        };
        let after = match empty_as_none(&self.after) {
            None => 0,
            Some(text) => cursor::decode(text)
                .ok_or_else(|| ApiError::bad_query("after: not a cursor from this API"))?,
        };
        Ok(AnomalyQuery {
            tenant: tenant.map(str::to_owned),
            meter: meter.map(str::to_owned),
            kind,
            since: time("since", empty_as_none(&self.since), i64::MIN)?,
            until: time("until", empty_as_none(&self.until), i64::MAX)?,
            after,
            descending,
            limit,
        })
    }
}

/// A page of stored anomalies: what `GET /v1/anomalies` answers and the console shows.
pub async fn page(state: &AppState, params: &ListParams) -> Result<AnomalyPage, ApiError> {
    let mut q = params.to_query()?;
    let limit = q.limit;
    q.limit = limit + 1;
    let mut rows = store::list_anomalies(&state.ledger, &q)
        .await
        .map_err(unavailable)?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = rows.last().map_or(q.after, |r| r.aid);
    Ok(AnomalyPage {
        anomalies: rows
            .iter()
            .map(|r| AnomalyView::from_detected(&r.detected, Some(r.detected_at_ms)))
            .collect(),
        next_cursor: cursor::encode(next),
        more,
    })
}

fn unavailable(err: store::StoreError) -> ApiError {
    tracing::error!(error = %err, "anomaly query failed");
    ApiError::ledger_unavailable("the ledger could not be queried; retry")
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<AnomalyPage>, ApiError> {
    require_read(&state, &headers)?;
    let Query(params) = query.map_err(|r| ApiError::bad_query(r.body_text()))?;
    Ok(Json(page(&state, &params).await?))
}

/// Where judging stands, read from the database (the same from any replica).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JudgeStatus {
    /// Whether this replica takes part in judging.
    pub enabled: bool,
    pub bucket_secs: i64,
    pub grace_secs: i64,
    /// The replica holding the judging lease, while it holds it.
    pub judge: Option<String>,
    /// Whether this replica is the judge.
    pub this_replica: bool,
    pub series: i64,
    /// End of the oldest series' last judged bucket: every series is judged up to here.
    pub judged_until: Option<String>,
    /// Seconds from `judged_until` to now.
    pub lag_seconds: Option<i64>,
    pub webhook: bool,
    /// CloudEvents not yet delivered, and since when the oldest waits.
    pub outbox_pending: i64,
    pub outbox_oldest: Option<String>,
}

pub async fn judge_status(state: &AppState) -> Result<JudgeStatus, ApiError> {
    let s = &state.anomalies;
    let (series, oldest_last) = store::series_summary(&state.ledger, s.bucket_secs)
        .await
        .map_err(unavailable)?;
    let (holder, until_ms, _) = store::lease(&state.ledger).await.map_err(unavailable)?;
    let (pending, oldest_pending) = store::outbox_pending(&state.ledger)
        .await
        .map_err(unavailable)?;
    let now = now_ms();
    let judged_until = oldest_last.map(|last| last + s.bucket_secs);
    Ok(JudgeStatus {
        enabled: s.enabled,
        bucket_secs: s.bucket_secs,
        grace_secs: s.grace_secs,
        judge: (until_ms >= now && !holder.is_empty()).then_some(holder),
        this_replica: s.holding(),
        series,
        judged_until: judged_until.map(|u| format_time_ms(u.saturating_mul(1000))),
        lag_seconds: judged_until.map(|u| (now.div_euclid(1000) - u).max(0)),
        webhook: s.webhook,
        outbox_pending: pending,
        outbox_oldest: oldest_pending.map(format_time_ms),
    })
}

async fn status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<JudgeStatus>, ApiError> {
    require_read(&state, &headers)?;
    Ok(Json(judge_status(&state).await?))
}
