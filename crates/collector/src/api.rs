//! HTTP routes and handlers. Handlers only translate between HTTP and the pure
//! modules ([`crate::event`], [`crate::window`]) and the [`Ledger`].

use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use turnpike_plans::{ids, Plans};
use turnpike_wire::collector_paths;

use crate::cursor;
use crate::event::{
    decode_body, dedup_sorted, format_time_ms, parse_time_ms, Framing, IngestError,
};
use crate::ledger::{EventKey, Ledger};
use crate::metrics::{Metrics, RejectReason};
use crate::problem::ApiError;
use crate::window::UsageWindow;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// Everything the handlers share.
pub struct AppState {
    pub ledger: Ledger,
    /// Billing anchors; `None` means anchor day 1 for every tenant.
    pub plans: Option<RwLock<Plans>>,
    pub ingest_secret: Vec<u8>,
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub metrics: Metrics,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(collector_paths::EVENTS, post(ingest))
        .route("/v1/tenants/{tenant}/usage", get(usage))
        .route("/v1/tenants/{tenant}/events", get(events))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngestResponse {
    pub accepted: u64,
    pub duplicates: u64,
}

async fn ingest(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let started = Instant::now();
    let result = ingest_inner(&state, &headers, body).await;
    match &result {
        Ok(stored) => {
            let seconds = started.elapsed().as_secs_f64();
            state
                .metrics
                .batch_stored(stored.accepted, stored.duplicates, seconds);
            tracing::debug!(
                accepted = stored.accepted,
                duplicates = stored.duplicates,
                seconds,
                "batch stored"
            );
        }
        Err((reason, err)) => {
            state.metrics.rejected(*reason);
            tracing::warn!(reason = reason.as_str(), detail = %err.detail, "ingest refused");
        }
    }
    result.map(Json).map_err(|(_, err)| err)
}

async fn ingest_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<IngestResponse, (RejectReason, ApiError)> {
    let reject = |reason, detail: String| (reason, ApiError::rejected(reason, detail));
    if !authorized(headers, &state.ingest_secret) {
        return Err(reject(
            RejectReason::Unauthorized,
            "send `Authorization: Bearer <ingest secret>`".to_owned(),
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let framing = Framing::from_content_type(content_type).ok_or_else(|| {
        reject(
            RejectReason::UnsupportedMediaType,
            format!(
                "content-type {content_type:?}: send application/cloudevents-batch+json \
                 or application/cloudevents+json"
            ),
        )
    })?;
    let too_large = || {
        reject(
            RejectReason::BodyTooLarge,
            format!("body exceeds {} bytes", state.max_body_bytes),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_body_bytes as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, state.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(err) => {
            return Err(reject(
                RejectReason::MalformedJson,
                format!("reading body: {err}"),
            ))
        }
    };
    let events = decode_body(&bytes, framing, state.max_batch_events).map_err(|err| {
        let reason = match err {
            IngestError::MalformedJson(_) => RejectReason::MalformedJson,
            IngestError::BatchTooLong { .. } => RejectReason::BatchTooLong,
            IngestError::InvalidEvent { .. } => RejectReason::InvalidEvent,
        };
        reject(reason, err.to_string())
    })?;
    let (unique, repeated_in_batch) = dedup_sorted(events);
    let stored = state.ledger.store(&unique, now_ms()).await.map_err(|err| {
        tracing::error!(error = %err, "storing batch failed");
        reject(
            RejectReason::StorageUnavailable,
            "the ledger could not store the batch; retry".to_owned(),
        )
    })?;
    Ok(IngestResponse {
        accepted: stored.inserted,
        duplicates: stored.already_stored + repeated_in_batch,
    })
}

/// `Authorization: Bearer <secret>`, compared in constant time.
fn authorized(headers: &HeaderMap, secret: &[u8]) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    bool::from(token.ct_eq(secret))
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

fn check_tenant(tenant: &str) -> Result<(), ApiError> {
    if ids::is_valid_tenant(tenant) {
        Ok(())
    } else {
        Err(ApiError::bad_query(
            "tenant: must be 1..=64 of [A-Za-z0-9._-]",
        ))
    }
}

fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::bad_query(rejection.body_text())
}

#[derive(Debug, Deserialize)]
struct UsageQuery {
    window: Option<String>,
    at: Option<String>,
    plan: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageReport {
    pub tenant: String,
    pub window: String,
    pub start: String,
    pub end: String,
    /// The plan whose billing anchor was used; `None` without a plans file.
    pub plan: Option<String>,
    pub anchor_day: u8,
    /// Billable quantity per meter, by meter name.
    pub meters: Vec<MeterTotal>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeterTotal {
    pub meter: String,
    pub quantity: i64,
}

async fn usage(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    check_tenant(&tenant)?;
    let window_text = query.window.as_deref().unwrap_or("month");
    let window = UsageWindow::parse(window_text).ok_or_else(|| {
        ApiError::bad_query(format!(
            "window: must be hour, day or month, got {window_text:?}"
        ))
    })?;
    let at_ms = match &query.at {
        Some(at) => parse_time_ms(at).ok_or_else(|| {
            ApiError::bad_query(format!("at: must be an RFC 3339 timestamp, got {at:?}"))
        })?,
        None => now_ms(),
    };
    let (plan, anchor_day) = match &state.plans {
        None => (None, 1),
        Some(plans) => {
            // Without an explicit plan, the one on the tenant's latest event is the
            // plan its claims put it on; a tenant override in the file still wins.
            let claimed = match query.plan {
                Some(plan) => Some(plan),
                None => state
                    .ledger
                    .latest_plan(&tenant)
                    .await
                    .map_err(unavailable)?,
            };
            let plans = plans
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let resolved = plans.resolve(&tenant, claimed.as_deref());
            (Some(resolved.name.to_owned()), resolved.anchor_day)
        }
    };
    let (start_ms, end_ms) = window.bounds_ms(anchor_day, at_ms);
    let totals = state
        .ledger
        .billable_totals(&tenant, start_ms, end_ms)
        .await
        .map_err(unavailable)?;
    Ok(Json(UsageReport {
        tenant,
        window: window.as_str().to_owned(),
        start: format_time_ms(start_ms),
        end: format_time_ms(end_ms),
        plan,
        anchor_day,
        meters: totals
            .into_iter()
            .map(|(meter, quantity)| MeterTotal { meter, quantity })
            .collect(),
    }))
}

fn unavailable(err: crate::ledger::LedgerError) -> ApiError {
    tracing::error!(error = %err, "ledger query failed");
    ApiError::ledger_unavailable("the ledger could not be queried; retry")
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    limit: Option<String>,
    after: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct EventsPage {
    pub tenant: String,
    pub events: Vec<EventView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct EventView {
    pub source: String,
    pub id: String,
    pub time: String,
    pub plan: Option<String>,
    pub method: String,
    pub route: String,
    pub status: i32,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub duration_ms: i64,
    pub decision: String,
    pub billable: bool,
    pub meters: serde_json::Value,
    pub received_at: String,
}

async fn events(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    check_tenant(&tenant)?;
    let limit = match &query.limit {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_query(format!("limit: must be 1..={MAX_PAGE}, got {text:?}"))
            })?,
    };
    let after = match &query.after {
        None => None,
        Some(text) => Some(
            cursor::decode(text)
                .ok_or_else(|| ApiError::bad_query("after: not a cursor from this API"))?,
        ),
    };
    // One row more than asked tells whether another page exists.
    let mut rows = state
        .ledger
        .events_after(&tenant, after.as_ref(), limit + 1)
        .await
        .map_err(unavailable)?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = match rows.last() {
        Some(last) if more => Some(cursor::encode(&EventKey {
            time_ms: last.time_ms,
            source: last.source.clone(),
            id: last.id.clone(),
        })),
        _ => None,
    };
    let events = rows
        .into_iter()
        .map(|r| EventView {
            time: format_time_ms(r.time_ms),
            received_at: format_time_ms(r.received_at_ms),
            meters: serde_json::from_str(&r.meters_json).unwrap_or(serde_json::Value::Null),
            source: r.source,
            id: r.id,
            plan: r.plan,
            method: r.method,
            route: r.route,
            status: r.status,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            duration_ms: r.duration_ms,
            decision: r.decision,
            billable: r.billable,
        })
        .collect();
    Ok(Json(EventsPage {
        tenant,
        events,
        next_cursor,
    }))
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.ledger.ping().await {
        Ok(()) => Json(serde_json::json!({ "status": "ok" })).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "health check: ledger unreachable");
            ApiError::ledger_unavailable("the ledger database does not answer").into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut response = (StatusCode::OK, state.metrics.encode()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn only_the_exact_bearer_secret_is_authorized() {
        assert!(authorized(&headers("Bearer s3cret"), b"s3cret"));
        assert!(!authorized(&headers("Bearer s3cre"), b"s3cret"));
        assert!(!authorized(&headers("Bearer s3cretX"), b"s3cret"));
        assert!(!authorized(&headers("Basic s3cret"), b"s3cret"));
        assert!(!authorized(&HeaderMap::new(), b"s3cret"));
    }
}
