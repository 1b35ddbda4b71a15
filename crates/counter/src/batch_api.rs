//! `POST /v1/consume/batch` and `/v1/settle/batch`: several consumes (settlements) in
//! one call, each run exactly as `/v1/consume` (`/v1/settle`) runs one: its own id,
//! its own all-or-nothing check. Answered in order. A busy proxy sends what waits
//! together: one callout for Envoy to pay for instead of one each.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{extract::State, Json};
use std::future::Future;

use serde::de::DeserializeOwned;
use turnpike_wire::{
    ConsumeBatchItem, ConsumeRequest, SettleBatchItem, SettleRequest, MAX_CONSUME_BATCH,
};

use crate::api::{unauthorized, wants_compact, ApiError};
use crate::metrics::{Endpoint, Metrics};
use crate::request::{self, RequestError};
use crate::state::AppState;
use crate::store::StoreError;

pub(crate) async fn consume_batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.service_tokens.allow(&headers) {
        return unauthorized("the service token");
    }
    let started = Instant::now();
    let compact = wants_compact(&headers);
    let requests: Vec<ConsumeRequest> = match decode(&body) {
        Ok(requests) => requests,
        Err(err) => return refuse(&state, err),
    };
    Metrics::inc(&state.metrics.consume_batches);
    Metrics::add(&state.metrics.consume_batch_items, requests.len() as u64);
    let n = requests.len();
    let outcomes = within_budget(&state, n, {
        let state = state.clone();
        async move { crate::batch_consume::decide_batch(&state, &requests).await }
    })
    .await;
    let items: Vec<ConsumeBatchItem> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Ok(answer) => ConsumeBatchItem {
                status: 200,
                answer: Some(answer),
                problem: None,
            },
            Err(err) => {
                state.note_consume_error(&err);
                let problem = err.problem();
                ConsumeBatchItem {
                    status: problem.status,
                    answer: None,
                    problem: Some(problem),
                }
            }
        })
        .collect();
    let response = if compact {
        (
            [(header::CONTENT_TYPE, turnpike_wire::COMPACT_ANSWER)],
            turnpike_wire::compact_batch(&items),
        )
            .into_response()
    } else {
        Json(items).into_response()
    };
    state
        .metrics
        .observe(Endpoint::ConsumeBatch, started.elapsed());
    response
}

/// `POST /v1/settle/batch`: the settlements of several finished exchanges in one call,
/// each applied as `/v1/settle` applies one.
pub(crate) async fn settle_batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.service_tokens.allow(&headers) {
        return unauthorized("the service token");
    }
    let started = Instant::now();
    let requests: Vec<SettleRequest> = match decode(&body) {
        Ok(requests) => requests,
        Err(err) => return refuse(&state, err),
    };
    Metrics::inc(&state.metrics.settle_batches);
    let n = requests.len();
    let outcomes = within_budget(&state, n, {
        let state = state.clone();
        async move { crate::batch_settle::settle_batch(&state, &requests).await }
    })
    .await;
    let items: Vec<SettleBatchItem> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Ok(settled) => SettleBatchItem {
                status: 200,
                settled,
                problem: None,
            },
            Err(err) => {
                state.note_error(&err);
                let problem = err.problem();
                SettleBatchItem {
                    status: problem.status,
                    settled: false,
                    problem: Some(problem),
                }
            }
        })
        .collect();
    state.metrics.observe(Endpoint::Refund, started.elapsed());
    Json(items).into_response()
}

fn refuse(state: &AppState, err: RequestError) -> Response {
    let err = ApiError::Invalid(err);
    state.note_error(&err);
    err.into_response()
}

/// The outcomes of a batch, in request order: those already decided (with others of
/// their tenant), and the rest each on the single path, `alone(i)`, concurrently.
pub(crate) async fn with_the_rest_alone<A, F, Fut>(
    mut outcomes: Vec<Option<Result<A, ApiError>>>,
    alone: F,
) -> Vec<Result<A, ApiError>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<A, ApiError>>,
{
    let rest = outcomes
        .iter()
        .enumerate()
        .filter(|(_, outcome)| outcome.is_none())
        .map(|(i, _)| {
            let one = alone(i);
            async move { (i, one.await) }
        })
        .collect::<Vec<_>>();
    for (i, outcome) in futures_util::future::join_all(rest).await {
        outcomes[i] = Some(outcome);
    }
    // Every item has its outcome by now; an answer per item whatever happens.
    outcomes
        .into_iter()
        .map(|outcome| {
            outcome.unwrap_or_else(|| {
                Err(ApiError::Unavailable(StoreError::Reply(
                    "a batch item was not answered".into(),
                )))
            })
        })
        .collect()
}

/// Decide the `n` items of a batch in one task of their own: a caller that hangs up
/// cancels none of them halfway (as with a single call), and there is no task per
/// item, which cost more scheduling than the item itself. Outcomes in request order;
/// past the budget, every item fails as unavailable.
async fn within_budget<A: Send + 'static>(
    state: &Arc<AppState>,
    n: usize,
    all: impl Future<Output = Vec<Result<A, ApiError>>> + Send + 'static,
) -> Vec<Result<A, ApiError>> {
    let task = tokio::spawn(all);
    let all_failed = |err: &dyn Fn() -> StoreError| {
        (0..n)
            .map(|_| Err(ApiError::Unavailable(err())))
            .collect::<Vec<_>>()
    };
    match tokio::time::timeout(state.budget, task).await {
        Ok(Ok(outcomes)) => outcomes,
        Ok(Err(e)) => all_failed(&|| StoreError::Reply(format!("the batch task failed: {e}"))),
        Err(_) => all_failed(&|| StoreError::Timeout(state.budget)),
    }
}

/// A batch: a JSON array of 1 to `MAX_CONSUME_BATCH` requests. Each item's own fields
/// are checked when it is run, so one bad item fails alone.
fn decode<R: DeserializeOwned>(body: &[u8]) -> Result<Vec<R>, RequestError> {
    let requests: Vec<R> = request::decode(body)?;
    if requests.is_empty() || requests.len() > MAX_CONSUME_BATCH {
        return Err(RequestError::field(
            "body",
            format!(
                "a batch holds 1 to {MAX_CONSUME_BATCH} items, not {}",
                requests.len()
            ),
        ));
    }
    Ok(requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_a_non_empty_bounded_array_and_a_bad_field_is_named_by_its_index() {
        assert!(matches!(
            decode::<ConsumeRequest>(b"[]"),
            Err(RequestError::Field { .. })
        ));
        let one = r#"{"id":"a","tenant":"t","meters":[{"meter":"requests","cost":1}]}"#;
        let too_many = format!("[{}]", vec![one; MAX_CONSUME_BATCH + 1].join(","));
        assert!(matches!(
            decode::<ConsumeRequest>(too_many.as_bytes()),
            Err(RequestError::Field { .. })
        ));
        assert_eq!(
            decode::<ConsumeRequest>(format!("[{one},{one}]").as_bytes())
                .unwrap()
                .len(),
            2
        );
        let bad = format!(r#"[{one},{{"id":"b","tenant":"t"}}]"#);
        match decode::<ConsumeRequest>(bad.as_bytes()) {
            Err(RequestError::Field { field, .. }) => assert_eq!(field, "[1]"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode::<ConsumeRequest>(b"[{"),
            Err(RequestError::Syntax(_))
        ));
    }
}
