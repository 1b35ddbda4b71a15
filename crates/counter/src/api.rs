//! HTTP routes. Handlers decode, call the pure ticket logic and the store, and turn
//! failures into `application/problem+json`.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use turnpike_wire::{counter_paths, ConsumeResponse, Problem, RefundResponse, UsageResponse};

use crate::clock::unix_now;
use crate::metrics::{Endpoint, Metrics};
use crate::request::{self, RequestError};
use crate::state::AppState;
use crate::store::StoreError;
use crate::ticket::Ticket;

const PROBLEM_BASE: &str = "https://turnpike.dev/problems/";
/// Request bodies are a few hundred bytes; refuse anything far larger early.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(counter_paths::CONSUME, post(consume))
        .route(counter_paths::REFUND, post(refund))
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
    #[error("no such resource")]
    NotFound,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title) = match &self {
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
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
        };
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

async fn consume(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let response = match consume_inner(&state, &body).await {
        Ok(answer) => {
            let counter = if answer.allowed {
                &state.metrics.consumes_allowed
            } else {
                &state.metrics.consumes_denied
            };
            Metrics::inc(counter);
            if answer.replayed {
                Metrics::inc(&state.metrics.consumes_replayed);
            }
            Json(answer).into_response()
        }
        Err(err) => {
            if matches!(err, ApiError::Unavailable(_)) {
                Metrics::inc(&state.metrics.consumes_error);
            }
            state.note_error(&err);
            err.into_response()
        }
    };
    state.metrics.observe(Endpoint::Consume, started.elapsed());
    response
}

async fn consume_inner(state: &AppState, body: &[u8]) -> Result<ConsumeResponse, ApiError> {
    let req: turnpike_wire::ConsumeRequest = request::decode(body)?;
    request::check_consume(&req)?;
    let now = unix_now();
    let ticket = {
        let plans = state.plans.load();
        Ticket::for_request(
            plans.resolve(&req.tenant, req.plan.as_deref()),
            &req.meters,
            now,
        )
    };
    let consumed = state.store.consume(&req.tenant, &req.id, &ticket).await?;
    let answer = match &consumed.replayed_ticket {
        Some(stored) => stored.answer(consumed.allowed, &consumed.used, true, now),
        None => ticket.answer(consumed.allowed, &consumed.used, false, now),
    };
    tracing::debug!(
        tenant = %req.tenant,
        id = %req.id,
        plan = %answer.plan,
        allowed = answer.allowed,
        replayed = answer.replayed,
        "consume"
    );
    Ok(answer)
}

async fn refund(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let response = match refund_inner(&state, &body).await {
        Ok(refunded) => {
            let counter = if refunded {
                &state.metrics.refunds_refunded
            } else {
                &state.metrics.refunds_noop
            };
            Metrics::inc(counter);
            Json(RefundResponse { refunded }).into_response()
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

async fn refund_inner(state: &AppState, body: &[u8]) -> Result<bool, ApiError> {
    let req: turnpike_wire::RefundRequest = request::decode(body)?;
    request::check_refund(&req)?;
    // Read first so the script can declare every key it touches (Redis Cluster);
    // the script re-checks the record, so a concurrent refund still counts once.
    let Some(record) = state.store.record(&req.tenant, &req.id).await? else {
        return Ok(false);
    };
    if !record.allowed || record.refunded {
        return Ok(false);
    }
    let refunded = state
        .store
        .refund(&req.tenant, &req.id, &record.ticket)
        .await?;
    tracing::debug!(tenant = %req.tenant, id = %req.id, refunded, "refund");
    Ok(refunded)
}

#[derive(Debug, Deserialize)]
struct UsageQuery {
    plan: Option<String>,
}

async fn usage(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Response {
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
    let now = unix_now();
    let ticket = {
        let plans = state.plans.load();
        Ticket::for_plan(plans.resolve(&tenant, query.plan.as_deref()), now)
    };
    let used = state.store.read(&ticket.keys(&tenant)).await?;
    Ok(UsageResponse {
        limits: ticket.statuses(&used, now),
        plan: ticket.plan,
        tenant,
    })
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(serde_json::json!({ "status": "ok" })).into_response(),
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
    fn note_error(&self, err: &ApiError) {
        match err {
            ApiError::Unavailable(e) => {
                Metrics::inc(&self.metrics.redis_errors);
                if self.error_log.allow(unix_now()) {
                    tracing::warn!(error = %e, "redis call failed");
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
