//! HTTP routes and handlers. Handlers only translate between HTTP and the pure
//! modules ([`crate::event`], [`crate::window`]) and the [`Ledger`].

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use turnpike_auth::Tokens;
use turnpike_plans::{ids, Plans};
use turnpike_wire::{collector_paths, MeterQuantity, RangeTotals, TotalsRequest, TotalsResponse};

use crate::cursor;
use crate::event::{decode_body, format_time_ms, parse_time_ms, Framing, IngestError};
use crate::ledger::{Ledger, StoredEvent};
use crate::merge::Fact;
use crate::metrics::{Metrics, RejectReason};
use crate::problem::ApiError;
use crate::window::UsageWindow;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Ranges one totals request may ask for (a plan has a handful of long windows).
const MAX_TOTALS_RANGES: usize = 32;

/// Everything the handlers share.
pub struct AppState {
    pub ledger: Ledger,
    /// Billing anchors; `None` means anchor day 1 for every tenant. Swapped whole
    /// when the plans file changes.
    pub plans: Option<ArcSwap<Plans>>,
    /// Who may post usage events (the proxies).
    pub ingest_tokens: Tokens,
    /// Who may read the ledger (operators, the counter re-seeding windows).
    pub read_tokens: Tokens,
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub metrics: Arc<Metrics>,
    /// The counter's Redis, when configured: reconciliation compares its windows.
    pub redis: Option<turnpike_redis::RedisConn>,
    /// Anomaly judging in this replica (see [`crate::anomalies`]).
    pub anomalies: Arc<crate::anomalies::Status>,
    /// The billing sync, when a Stripe key is configured.
    pub billing: Option<Arc<crate::billing::sync::Syncer>>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(collector_paths::EVENTS, post(ingest))
        .route("/v1/tenants/{tenant}/usage", get(usage))
        .route("/v1/tenants/{tenant}/events", get(events))
        .route("/v1/tenants/{tenant}/totals", post(totals))
        .route("/v1/ledger/changes", get(changes))
        .route("/v1/quarantine", get(quarantine))
        .route("/v1/reconcile", get(reconcile))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(crate::anomalies::http::routes())
        .merge(crate::console::routes())
        .merge(crate::billing::http::routes())
        .with_state(state)
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngestResponse {
    /// Events that told the ledger something new (a new row, or details for a row
    /// the counter's usage stream made).
    pub accepted: u64,
    /// Events the ledger already had.
    pub duplicates: u64,
    /// Events kept aside as malformed (listed by `GET /v1/quarantine`).
    #[serde(default)]
    pub quarantined: u64,
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
                quarantined = stored.quarantined,
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
    if !state.ingest_tokens.allow(headers) {
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
    let decoded = decode_body(&bytes, framing, state.max_batch_events).map_err(|err| {
        let reason = match err {
            IngestError::MalformedJson(_) => RejectReason::MalformedJson,
            IngestError::BatchTooLong { .. } => RejectReason::BatchTooLong,
        };
        reject(reason, err.to_string())
    })?;
    let mut facts = Vec::with_capacity(decoded.len());
    let mut bad = Vec::new();
    for event in decoded {
        match event {
            Ok(reported) => facts.push(Fact::Reported(reported)),
            Err(quarantined) => bad.push(quarantined),
        }
    }
    let unavailable = |err: crate::ledger::LedgerError| {
        tracing::error!(error = %err, "storing batch failed");
        reject(
            RejectReason::StorageUnavailable,
            "the ledger could not store the batch; retry".to_owned(),
        )
    };
    let now = now_ms();
    // Quarantine first: once the batch is acknowledged, nothing of it may be missing.
    if !bad.is_empty() {
        for q in &bad {
            tracing::warn!(field = %q.field, reason = %q.reason, id = ?q.id, "event quarantined");
        }
        state
            .ledger
            .quarantine("proxy-events", &bad, now)
            .await
            .map_err(unavailable)?;
        state.metrics.quarantined("events", bad.len() as u64);
    }
    let applied = state.ledger.apply(&facts, now).await.map_err(unavailable)?;
    Ok(IngestResponse {
        accepted: applied.inserted + applied.updated,
        duplicates: applied.unchanged,
        quarantined: bad.len() as u64,
    })
}

/// Answer 401 unless the request carries a read token.
pub(crate) fn require_read(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.read_tokens.allow(headers) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or wrong read token",
            "send `Authorization: Bearer <read token>`",
        ))
    }
}

pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn check_tenant(tenant: &str) -> Result<(), ApiError> {
    if ids::is_valid_tenant(tenant) {
        Ok(())
    } else {
        Err(ApiError::bad_query(
            "tenant: must be 1..=64 of [A-Za-z0-9._-]",
        ))
    }
}

pub(crate) fn query_error(rejection: QueryRejection) -> ApiError {
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
    headers: HeaderMap,
    Path(tenant): Path<String>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    require_read(&state, &headers)?;
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
            let plans = plans.load();
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

pub(crate) fn unavailable(err: crate::ledger::LedgerError) -> ApiError {
    tracing::error!(error = %err, "ledger query failed");
    ApiError::ledger_unavailable("the ledger could not be queried; retry")
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    limit: Option<String>,
    after: Option<String>,
}

impl PageQuery {
    fn limit(&self) -> Result<u32, ApiError> {
        match &self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_query(format!("limit: must be 1..={MAX_PAGE}, got {text:?}"))
                }),
        }
    }

    /// The change sequence to list after (0: from the start).
    fn after(&self) -> Result<i64, ApiError> {
        match &self.after {
            None => Ok(0),
            Some(text) => cursor::decode(text)
                .ok_or_else(|| ApiError::bad_query("after: not a cursor from this API")),
        }
    }
}

/// A page of the ledger in change order. `next_cursor` is always there: pass it as
/// `after` to continue, now or later; rows that change (a refund, a late event) come
/// again after it, so a reader that follows the cursor misses nothing.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct EventsPage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub events: Vec<EventView>,
    pub next_cursor: String,
    /// Whether more rows were already there when this page was read.
    pub more: bool,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct EventView {
    pub id: String,
    pub source: String,
    pub tenant: String,
    pub time: String,
    pub plan: Option<String>,
    pub method: String,
    pub route: String,
    /// 0 while only the counter has reported the consume.
    pub status: i32,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub duration_ms: i64,
    pub decision: String,
    pub billable: bool,
    pub meters: serde_json::Value,
    /// The counter's usage stream holds this consume.
    pub counted: bool,
    /// A proxy's usage event for it arrived.
    pub reported: bool,
    pub refunded: bool,
    /// The lease a proxy admitted it from (leased mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    pub received_at: String,
    pub seq: i64,
}

impl From<StoredEvent> for EventView {
    fn from(e: StoredEvent) -> EventView {
        let r = e.row;
        EventView {
            time: format_time_ms(r.time_ms),
            received_at: format_time_ms(r.received_at_ms),
            meters: serde_json::from_str(&r.meters_json()).unwrap_or(serde_json::Value::Null),
            id: r.id,
            source: r.source,
            tenant: r.tenant,
            plan: r.plan,
            method: r.method,
            route: r.route,
            status: r.status,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            duration_ms: r.duration_ms,
            decision: r.decision.as_str().to_owned(),
            billable: e.billable,
            counted: r.counted,
            reported: r.reported,
            refunded: r.refunded,
            lease: r.lease,
            seq: e.seq,
        }
    }
}

async fn page_of_changes(
    state: &AppState,
    tenant: Option<String>,
    query: &PageQuery,
) -> Result<EventsPage, ApiError> {
    let limit = query.limit()?;
    let after = query.after()?;
    // One row more than asked tells whether another page is already there.
    let mut rows = state
        .ledger
        .changes_after(tenant.as_deref(), after, limit + 1)
        .await
        .map_err(unavailable)?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let last = rows.last().map_or(after, |r| r.seq);
    Ok(EventsPage {
        tenant,
        events: rows.into_iter().map(EventView::from).collect(),
        next_cursor: cursor::encode(last),
        more,
    })
}

async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    require_read(&state, &headers)?;
    let Query(query) = query.map_err(query_error)?;
    check_tenant(&tenant)?;
    Ok(Json(page_of_changes(&state, Some(tenant), &query).await?))
}

/// Every tenant's rows in change order: how billing sync and exports tail the ledger.
async fn changes(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    require_read(&state, &headers)?;
    let Query(query) = query.map_err(query_error)?;
    Ok(Json(page_of_changes(&state, None, &query).await?))
}

/// Billable units per meter in time ranges: how the counter re-seeds a tenant's
/// windows after Redis lost them.
async fn totals(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Json<TotalsResponse>, ApiError> {
    require_read(&state, &headers)?;
    check_tenant(&tenant)?;
    let request: TotalsRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_query(format!("body: {e}")))?;
    if request.ranges.is_empty() || request.ranges.len() > MAX_TOTALS_RANGES {
        return Err(ApiError::bad_query(format!(
            "ranges: give 1..={MAX_TOTALS_RANGES} ranges"
        )));
    }
    let mut ranges = Vec::with_capacity(request.ranges.len());
    for (i, range) in request.ranges.iter().enumerate() {
        if range.start_ms >= range.end_ms {
            return Err(ApiError::bad_query(format!(
                "ranges[{i}]: start_ms must be below end_ms"
            )));
        }
        let meters = state
            .ledger
            .billable_totals(&tenant, range.start_ms, range.end_ms)
            .await
            .map_err(unavailable)?;
        ranges.push(RangeTotals {
            start_ms: range.start_ms,
            end_ms: range.end_ms,
            meters: meters
                .into_iter()
                .map(|(meter, quantity)| MeterQuantity { meter, quantity })
                .collect(),
        });
    }
    Ok(Json(TotalsResponse { ranges }))
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct QuarantinePage {
    pub events: Vec<QuarantineView>,
    pub next_cursor: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct QuarantineView {
    pub received_at: String,
    pub origin: String,
    pub field: String,
    pub reason: String,
    /// The event as it arrived (JSON text).
    pub raw: String,
}

async fn quarantine(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<QuarantinePage>, ApiError> {
    require_read(&state, &headers)?;
    let Query(query) = query.map_err(query_error)?;
    let after = query.after()?;
    let rows = state
        .ledger
        .quarantined_after(after, query.limit()?)
        .await
        .map_err(unavailable)?;
    let last = rows.last().map_or(after, |r| r.qid);
    Ok(Json(QuarantinePage {
        events: rows
            .into_iter()
            .map(|q| QuarantineView {
                received_at: format_time_ms(q.received_at_ms),
                origin: q.origin,
                field: q.field,
                reason: q.reason,
                raw: q.raw,
            })
            .collect(),
        next_cursor: cursor::encode(last),
    }))
}

#[derive(Debug, Deserialize)]
struct ReconcileQuery {
    tenant: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// What the counter admitted against what the ledger bills (see [`crate::reconcile`]).
async fn reconcile(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<ReconcileQuery>, QueryRejection>,
) -> Result<Json<crate::reconcile::Report>, ApiError> {
    require_read(&state, &headers)?;
    let Query(query) = query.map_err(query_error)?;
    if let Some(tenant) = &query.tenant {
        check_tenant(tenant)?;
    }
    let (since, until) = crate::reconcile::range(
        query.since.as_deref(),
        query.until.as_deref(),
        crate::reconcile::DEFAULT_GRACE_SECS,
        now_ms(),
    )
    .map_err(|e| ApiError::bad_query(e.to_string()))?;
    let report = run_reconcile(&state, query.tenant.as_deref(), since, until)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "reconciliation failed");
            ApiError::ledger_unavailable("reconciliation could not read the ledger or Redis; retry")
        })?;
    Ok(Json(report))
}

/// Reconcile with this server's ledger, Redis and plans, and set the drift gauges.
pub async fn run_reconcile(
    state: &AppState,
    tenant: Option<&str>,
    since: i64,
    until: i64,
) -> Result<crate::reconcile::Report, crate::reconcile::ReconcileError> {
    let plans = state.plans.as_ref().map(|p| p.load_full());
    let mut redis = state.redis.clone();
    let report = crate::reconcile::reconcile(
        &state.ledger,
        redis.as_mut(),
        plans.as_deref(),
        tenant,
        since,
        until,
    )
    .await?;
    if tenant.is_none() {
        state.metrics.reconcile_last_run.set(now_ms() / 1000);
        state
            .metrics
            .reconcile_drift_units
            .set(i64::try_from(report.drift_units).unwrap_or(i64::MAX));
        state
            .metrics
            .reconcile_differences
            .set(i64::try_from(report.drift_ids).unwrap_or(i64::MAX));
    }
    Ok(report)
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
