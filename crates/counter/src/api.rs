//! HTTP routes. Handlers decode, call the pure ticket logic and the store, and turn
//! failures into `application/problem+json`.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use turnpike_wire::{counter_paths, ConsumeResponse, Problem, RefundResponse, UsageResponse};

use crate::clock::Clock;
use crate::keys::TenantKeys;
use crate::metrics::{Endpoint, Metrics};
use crate::request::{self, RequestError};
use crate::state::AppState;
use crate::store::{ConsumeCall, Consumed, RecordState, Refunded, Settled, StoreError};
use crate::ticket::Ticket;

const PROBLEM_BASE: &str = "https://turnpike.dev/problems/";
/// Request bodies are a few hundred bytes; refuse anything far larger early.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// A consume or settle batch carries up to 256 items of a few hundred bytes.
const MAX_BATCH_BODY_BYTES: usize = 256 * 1024;
/// A lease report carries up to 10,000 (consume id, time) records of ~70 bytes.
const MAX_REPORT_BODY_BYTES: usize = 1024 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(counter_paths::CONSUME, post(consume))
        .route(
            counter_paths::CONSUME_BATCH,
            post(crate::batch_api::consume_batch)
                .layer(DefaultBodyLimit::max(MAX_BATCH_BODY_BYTES)),
        )
        .route(counter_paths::REFUND, post(refund))
        .route(counter_paths::SETTLE, post(settle))
        .route(
            counter_paths::SETTLE_BATCH,
            post(crate::batch_api::settle_batch).layer(DefaultBodyLimit::max(MAX_BATCH_BODY_BYTES)),
        )
        .route(counter_paths::LEASE, post(crate::lease_api::lease))
        .route(
            counter_paths::LEASE_REPORT,
            post(crate::lease_api::report).layer(DefaultBodyLimit::max(MAX_REPORT_BODY_BYTES)),
        )
        .route("/v1/tenants/{tenant}/usage", get(usage))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] RequestError),
    #[error(transparent)]
    Unavailable(#[from] StoreError),
    #[error("re-seeding windows: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("no such resource")]
    NotFound,
}

impl ApiError {
    /// The problem this error is answered with: status, type and title.
    pub(crate) fn problem(&self) -> Problem {
        let (status, kind, title) = self.kind();
        Problem {
            kind: format!("{PROBLEM_BASE}{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: Some(self.to_string()),
        }
    }

    fn kind(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Invalid(RequestError::Syntax(_)) => (
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Malformed request body",
            ),
            ApiError::Invalid(RequestError::Field { .. }) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-request",
                "Invalid request field",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Quota store unavailable",
            ),
            ApiError::Ledger(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ledger-unavailable",
                "Cannot re-seed quota windows from the ledger",
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title) = self.kind();
        problem(status, kind, title, Some(self.to_string()))
    }
}

fn problem(status: StatusCode, kind: &str, title: &str, detail: Option<String>) -> Response {
    let body = Problem {
        kind: format!("{PROBLEM_BASE}{kind}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail,
    };
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    response
}

async fn consume(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if !state.service_tokens.allow(&headers) {
        return unauthorized("the service token");
    }
    let started = Instant::now();
    let compact = wants_compact(&headers);
    // The decision runs as its own task and is counted there: a caller that hangs up
    // (or a budget that runs out) must not cancel it halfway, after Redis has decided
    // but before the decision is counted.
    let task = tokio::spawn({
        let state = state.clone();
        async move {
            let req = request::decode::<turnpike_wire::ConsumeRequest>(&body)?;
            decide_counted(&state, &req).await
        }
    });
    let outcome = match tokio::time::timeout(state.budget, task).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Err(ApiError::Unavailable(StoreError::Reply(format!(
            "the consume task failed: {e}"
        )))),
        Err(_) => Err(ApiError::Unavailable(StoreError::Timeout(state.budget))),
    };
    let response = match outcome {
        Ok(answer) => {
            if compact {
                (
                    [(header::CONTENT_TYPE, turnpike_wire::COMPACT_ANSWER)],
                    answer.to_compact(),
                )
                    .into_response()
            } else {
                Json(answer).into_response()
            }
        }
        Err(err) => {
            state.note_consume_error(&err);
            err.into_response()
        }
    };
    state.metrics.observe(Endpoint::Consume, started.elapsed());
    response
}

/// Whether the caller asks for the compact consume answer (the proxy does).
pub(crate) fn wants_compact(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(turnpike_wire::COMPACT_ANSWER))
}

/// Check and decide one consume, and count its result: what `/v1/consume` runs, and
/// each item of `/v1/consume/batch` that shares its windows with no other item.
pub(crate) async fn decide_counted(
    state: &AppState,
    req: &turnpike_wire::ConsumeRequest,
) -> Result<ConsumeResponse, ApiError> {
    let outcome = consume_inner(state, req).await;
    count_consume(state, &outcome);
    outcome
}

/// Count a consume's result in the metrics.
pub(crate) fn count_consume(state: &AppState, outcome: &Result<ConsumeResponse, ApiError>) {
    if let Ok(answer) = outcome {
        let counter = if answer.allowed {
            &state.metrics.consumes_allowed
        } else {
            &state.metrics.consumes_denied
        };
        Metrics::inc(counter);
        if answer.replayed {
            Metrics::inc(&state.metrics.consumes_replayed);
        }
    }
}

/// A consume goes round at most this often: a stale window (the counter's idea of
/// Redis's time was off at a boundary) and a re-seed each cost one more.
const MAX_CONSUME_ROUNDS: usize = 4;

async fn consume_inner(
    state: &AppState,
    req: &turnpike_wire::ConsumeRequest,
) -> Result<ConsumeResponse, ApiError> {
    request::check_consume(req)?;
    let plans = state.plans.load_full();
    let plan = plans.resolve(&req.tenant, req.plan.as_deref());
    let meters = request::meters_text(&req.meters);
    let call = ConsumeCall {
        tenant: &req.tenant,
        id: &req.id,
        meters: &meters,
        require_seed: state.ledger.is_some(),
    };
    for _ in 0..MAX_CONSUME_ROUNDS {
        let now = state.clock.now_secs();
        let ticket = Ticket::for_request(plan, &req.meters, now);
        if ticket.never_fits().is_some() {
            // Refused without touching Redis: no wait would make it fit.
            let used = state
                .store
                .read(&ticket.keys(&TenantKeys::new(&req.tenant)))
                .await?;
            return Ok(ticket.answer(false, &used, false, now));
        }
        match state.store.consume(&call, &ticket).await? {
            Consumed::Stale { now_ms } => {
                state.clock.learn(now_ms);
                Metrics::inc(&state.metrics.stale_tickets);
            }
            Consumed::NeedsSeed { now_ms, required } => {
                state.clock.learn(now_ms);
                seed_from_ledger(state, &req.tenant, plan, ms_to_secs(now_ms), required).await?;
            }
            decided => {
                if let Some(answer) = decided_answer(state, req, &ticket, &decided) {
                    return Ok(answer);
                }
            }
        }
    }
    Err(ApiError::Unavailable(StoreError::Reply(format!(
        "no decision after {MAX_CONSUME_ROUNDS} rounds (clock or seeding trouble)"
    ))))
}

/// The answer to consume `req`, which the script decided on `ticket`: allowed, denied,
/// replayed or cancelled. `None` for a stale window or a missing seed marker, which
/// need another round.
pub(crate) fn decided_answer(
    state: &AppState,
    req: &turnpike_wire::ConsumeRequest,
    ticket: &Ticket,
    consumed: &Consumed,
) -> Option<ConsumeResponse> {
    let answer = match consumed {
        Consumed::Decided {
            allowed,
            now_ms,
            used,
        } => {
            state.clock.learn(*now_ms);
            let mut answer = ticket.answer(*allowed, used, false, ms_to_secs(*now_ms));
            answer.time_ms = Some(*now_ms);
            answer
        }
        Consumed::Replayed {
            record,
            now_ms,
            used,
        } => {
            state.clock.learn(*now_ms);
            let allowed = matches!(record.state, RecordState::Allowed | RecordState::Settled);
            let mut answer = ticket.answer(allowed, used, true, ms_to_secs(*now_ms));
            answer.time_ms = Some(record.time_ms);
            answer
        }
        Consumed::Cancelled { now_ms } => {
            state.clock.learn(*now_ms);
            let mut answer = ticket.answer(false, &[], true, ms_to_secs(*now_ms));
            answer.limits.clear();
            answer.retry_after = None;
            answer.time_ms = Some(*now_ms);
            answer
        }
        Consumed::Stale { .. } | Consumed::NeedsSeed { .. } => return None,
    };
    tracing::debug!(
        tenant = %req.tenant,
        id = %req.id,
        plan = %answer.plan,
        allowed = answer.allowed,
        replayed = answer.replayed,
        "consume"
    );
    Some(answer)
}

pub(crate) fn ms_to_secs(ms: u64) -> i64 {
    i64::try_from(ms / 1000).unwrap_or(i64::MAX)
}

/// Bring back `tenant`'s hour, day and month windows from the ledger, once per billing
/// month and plan (the seed marker says whether it was done). Only usage the ledger
/// does not hold yet can be forgiven.
///
/// When Redis may have lost this month's usage (`required`), the ledger must answer,
/// or the consume fails (503, and the proxy's failure mode applies): no amnesty. When
/// Redis has held the tenant's bucket since before the month began (a new month, a
/// new tenant, a plan or anchor change), the ledger is asked but not waited for: a
/// collector outage must not stop every tenant at a month's first request.
pub(crate) async fn seed_from_ledger(
    state: &AppState,
    tenant: &str,
    plan: turnpike_plans::ResolvedPlan<'_>,
    now: i64,
    required: bool,
) -> Result<(), ApiError> {
    let Some(ledger) = &state.ledger else {
        return Ok(());
    };
    let _serialised = state.seed_lock(tenant).lock().await;
    let ticket = Ticket::for_plan(plan, now);
    if !required && state.ledger_recently_failed() {
        return mark_unseeded(state, tenant, &ticket).await;
    }
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for slot in ticket.slots.iter().filter(|s| s.window.is_long()) {
        if !ranges.contains(&(slot.start, slot.end)) {
            ranges.push((slot.start, slot.end));
        }
    }
    let totals = match ledger.totals(tenant, &ranges).await {
        Ok(totals) => totals,
        Err(e) => {
            Metrics::inc(&state.metrics.seed_errors);
            state.note_ledger_failure();
            if required {
                return Err(ApiError::Ledger(e));
            }
            if state.error_log.allow(Clock::default().now_secs()) {
                tracing::warn!(tenant, error = %e, "ledger unreachable for a best-effort seed; counting from zero");
            }
            return mark_unseeded(state, tenant, &ticket).await;
        }
    };
    let units: Vec<u64> = ticket
        .slots
        .iter()
        .map(|slot| {
            ranges
                .iter()
                .position(|r| *r == (slot.start, slot.end))
                .and_then(|i| totals.get(i))
                .and_then(|meters| meters.iter().find(|(m, _)| *m == slot.meter))
                .map_or(0, |(_, q)| *q)
        })
        .collect();
    if let Some(added) = state.store.seed(tenant, &ticket, &units).await? {
        Metrics::inc(&state.metrics.seeds);
        Metrics::add(&state.metrics.seeded_units, added);
        tracing::info!(tenant, plan = %ticket.plan, added, "windows re-seeded from the ledger");
    }
    Ok(())
}

/// Set the marker without seeding: Redis kept the tenant's usage, only carrying usage
/// across a plan or anchor change is skipped.
async fn mark_unseeded(state: &AppState, tenant: &str, ticket: &Ticket) -> Result<(), ApiError> {
    let marker_only = Ticket {
        slots: Vec::new(),
        ..ticket.clone()
    };
    state.store.seed(tenant, &marker_only, &[]).await?;
    Metrics::inc(&state.metrics.seeds_skipped);
    Ok(())
}

async fn refund(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if !state.service_tokens.allow(&headers) {
        return unauthorized("the service token");
    }
    let started = Instant::now();
    let outcome = match tokio::time::timeout(state.budget, refund_inner(&state, &body)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ApiError::Unavailable(StoreError::Timeout(state.budget))),
    };
    let response = match outcome {
        Ok(outcome) => {
            let counter = match outcome {
                Refunded::Refunded => &state.metrics.refunds_refunded,
                Refunded::Cancelled => &state.metrics.refunds_cancelled,
                Refunded::Nothing | Refunded::Changed => &state.metrics.refunds_noop,
            };
            Metrics::inc(counter);
            Json(RefundResponse {
                refunded: outcome == Refunded::Refunded,
                cancelled: outcome == Refunded::Cancelled,
            })
            .into_response()
        }
        Err(err) => {
            if matches!(err, ApiError::Unavailable(_)) {
                Metrics::inc(&state.metrics.refunds_error);
            }
            state.note_error(&err);
            err.into_response()
        }
    };
    state.metrics.observe(Endpoint::Refund, started.elapsed());
    response
}

async fn refund_inner(state: &AppState, body: &[u8]) -> Result<Refunded, ApiError> {
    let req: turnpike_wire::RefundRequest = request::decode(body)?;
    request::check_refund(&req)?;
    // Read first so the script can declare every key it touches (Redis Cluster); the
    // script re-checks the record and says so if it changed in between.
    for _ in 0..3 {
        let record = state.store.record(&req.tenant, &req.id).await?;
        let outcome = state
            .store
            .refund(&req.tenant, &req.id, record.as_ref())
            .await?;
        if outcome != Refunded::Changed {
            tracing::debug!(tenant = %req.tenant, id = %req.id, ?outcome, "refund");
            return Ok(outcome);
        }
    }
    Ok(Refunded::Changed)
}

async fn settle(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if !state.service_tokens.allow(&headers) {
        return unauthorized("the service token");
    }
    let started = Instant::now();
    let settle = async {
        let req: turnpike_wire::SettleRequest = request::decode(&body)?;
        settle_counted(&state, &req).await
    };
    let outcome = match tokio::time::timeout(state.budget, settle).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ApiError::Unavailable(StoreError::Timeout(state.budget))),
    };
    let response = match outcome {
        Ok(settled) => Json(turnpike_wire::SettleResponse { settled }).into_response(),
        Err(err) => {
            state.note_error(&err);
            err.into_response()
        }
    };
    state.metrics.observe(Endpoint::Refund, started.elapsed());
    response
}

/// Apply one settlement and count its result: what `/v1/settle` and each item of
/// `/v1/settle/batch` run.
pub(crate) async fn settle_counted(
    state: &AppState,
    req: &turnpike_wire::SettleRequest,
) -> Result<bool, ApiError> {
    let settled = settle_inner(state, req).await;
    count_settle(state, &settled);
    settled
}

/// Count a settlement's result in the metrics.
pub(crate) fn count_settle(state: &AppState, settled: &Result<bool, ApiError>) {
    if let Ok(settled) = settled {
        Metrics::inc(if *settled {
            &state.metrics.settles_applied
        } else {
            &state.metrics.settles_noop
        });
    }
}

async fn settle_inner(
    state: &AppState,
    req: &turnpike_wire::SettleRequest,
) -> Result<bool, ApiError> {
    let used = settle_used(req)?;
    for _ in 0..3 {
        let Some(record) = state.store.record(&req.tenant, &req.id).await? else {
            return Ok(false);
        };
        let Some(plan) = settle_plan(&req.id, &record, &used)? else {
            return Ok(false);
        };
        match state
            .store
            .settle(
                &req.tenant,
                &req.id,
                &record,
                &plan.meters,
                &plan.slots,
                &plan.deltas,
            )
            .await?
        {
            Settled::Settled => {
                tracing::debug!(tenant = %req.tenant, id = %req.id, meters = %plan.meters, "settled");
                return Ok(true);
            }
            Settled::Nothing => return Ok(false),
            Settled::Changed => continue,
        }
    }
    Ok(false)
}

/// A settlement's fields checked, and what it says was used: (meter, quantity).
pub(crate) fn settle_used(
    req: &turnpike_wire::SettleRequest,
) -> Result<Vec<(String, u64)>, ApiError> {
    request::check_id_at("id", &req.id)?;
    request::check_tenant(&req.tenant)?;
    request::check_meters(&req.meters)?;
    Ok(req
        .meters
        .iter()
        .map(|m| (m.meter.clone(), m.cost))
        .collect())
}

/// What settling consume `id` from its `record` to `used` changes; `None` when there
/// is nothing to settle (refunded, cancelled, or settled before).
pub(crate) fn settle_plan(
    id: &str,
    record: &crate::store::Record,
    used: &[(String, u64)],
) -> Result<Option<crate::settle::Plan>, ApiError> {
    if record.state != RecordState::Allowed {
        return Ok(None);
    }
    let raw_slots = record.raw.splitn(4, '|').nth(3).unwrap_or_default();
    match crate::settle::plan(&record.meters, raw_slots, used) {
        Some(plan) => Ok(Some(plan)),
        None => Err(ApiError::Unavailable(StoreError::Reply(format!(
            "unreadable record of {id}"
        )))),
    }
}

#[derive(Debug, Deserialize)]
struct UsageQuery {
    plan: Option<String>,
}

async fn usage(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Response {
    if !state.read_tokens.allow(&headers) {
        return unauthorized("a read token");
    }
    let started = Instant::now();
    let response = match usage_inner(&state, tenant, query).await {
        Ok(usage) => Json(usage).into_response(),
        Err(err) => {
            state.note_error(&err);
            err.into_response()
        }
    };
    state.metrics.observe(Endpoint::Usage, started.elapsed());
    response
}

async fn usage_inner(
    state: &AppState,
    tenant: String,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<UsageResponse, ApiError> {
    let Query(query) = query.map_err(|e| RequestError::field("query", e.body_text()))?;
    request::check_tenant(&tenant)?;
    let now = state.clock.now_secs();
    let ticket = {
        let plans = state.plans.load();
        Ticket::for_plan(plans.resolve(&tenant, query.plan.as_deref()), now)
    };
    let used = state
        .store
        .read(&ticket.keys(&TenantKeys::new(&tenant)))
        .await?;
    Ok(UsageResponse {
        limits: ticket.statuses(&used, now),
        plan: ticket.plan,
        tenant,
    })
}

pub(crate) fn unauthorized(what: &str) -> Response {
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Missing or wrong credential",
        Some(format!("send `Authorization: Bearer <token>` with {what}")),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// 200 when Redis can be used: one server answers, or a cluster serves every slot.
/// The body says which (`redis.mode`, and a cluster's own `CLUSTER INFO` figures).
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.health().await {
        Ok(health) => {
            let mut redis = serde_json::json!({ "mode": health.mode.as_str() });
            if let Some(info) = &health.cluster {
                redis["cluster_state"] = info.state.clone().into();
                redis["cluster_size"] = info.size.into();
                redis["known_nodes"] = info.known_nodes.into();
                redis["slots_ok"] = info.slots_ok.into();
            }
            Json(serde_json::json!({ "status": "ok", "redis": redis })).into_response()
        }
        Err(err) => {
            let err = ApiError::Unavailable(err);
            state.note_error(&err);
            err.into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    ApiError::NotFound.into_response()
}

/// Lets one line through per second, so a dead Redis at 20k requests/s does not
/// flood the log; the metrics count every error.
#[derive(Default)]
pub struct LogThrottle {
    last_second: AtomicI64,
}

impl LogThrottle {
    pub fn allow(&self, now: i64) -> bool {
        let last = self.last_second.load(Relaxed);
        now != last
            && self
                .last_second
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
    }
}

impl AppState {
    /// Count and log a consume that could not be decided.
    pub(crate) fn note_consume_error(&self, err: &ApiError) {
        if matches!(err, ApiError::Unavailable(_) | ApiError::Ledger(_)) {
            Metrics::inc(&self.metrics.consumes_error);
        }
        self.note_error(err);
    }

    pub(crate) fn note_error(&self, err: &ApiError) {
        match err {
            ApiError::Unavailable(e) => {
                Metrics::inc(&self.metrics.redis_errors);
                if self.error_log.allow(Clock::default().now_secs()) {
                    let text = e.to_string();
                    let hint = if text.contains("NOAUTH")
                        || text.contains("unauthenticated")
                        || text.contains("WRONGPASS")
                    {
                        "; Redis wants a password: set TURNPIKE_REDIS_PASSWORD or --redis-password-file"
                    } else if text.contains("MOVED") {
                        "; this Redis is a cluster node: set --redis-mode cluster (TURNPIKE_REDIS_MODE)"
                    } else if text.contains("cluster support disabled") {
                        "; this Redis is not a cluster node: set --redis-mode single"
                    } else {
                        ""
                    };
                    tracing::warn!(error = %e, "redis call failed{hint}");
                }
            }
            ApiError::Ledger(e) => {
                if self.error_log.allow(Clock::default().now_secs()) {
                    tracing::warn!(error = %e, "re-seeding from the ledger failed; answering 503");
                }
            }
            ApiError::Invalid(e) => {
                Metrics::inc(&self.metrics.invalid_requests);
                tracing::debug!(error = %e, "invalid request");
            }
            ApiError::NotFound => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_throttle_lets_one_line_per_second() {
        let t = LogThrottle::default();
        assert!(t.allow(100));
        assert!(!t.allow(100));
        assert!(t.allow(101));
        assert!(!t.allow(101));
    }
}
