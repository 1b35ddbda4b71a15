//! `POST /v1/consume/batch`: several consumes in one call, each decided exactly as
//! `/v1/consume` decides it (its own id, its own all-or-nothing check), answered in
//! order. A proxy that has many requests waiting on the counter at once sends them
//! together: one callout for Envoy to pay for instead of one each.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{extract::State, Json};
use turnpike_wire::{ConsumeBatchItem, ConsumeRequest, MAX_CONSUME_BATCH};

use crate::api::{decide_counted, unauthorized, ApiError};
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
    let compact = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(turnpike_wire::COMPACT_ANSWER));
    let requests = match decode(&body) {
        Ok(requests) => requests,
        Err(err) => {
            let err = ApiError::Invalid(err);
            state.note_error(&err);
            return err.into_response();
        }
    };
    Metrics::inc(&state.metrics.consume_batches);
    let requests_len = requests.len();
    Metrics::add(&state.metrics.consume_batch_items, requests_len as u64);
    // The batch runs as one task, as a single consume does: a caller that hangs up
    // cancels none of its consumes halfway. Inside it they run concurrently (their
    // Redis calls go out together, pipelined on the shared connection), without a
    // task each: a task per consume cost more scheduling than the consume itself.
    let task = tokio::spawn({
        let state = state.clone();
        async move {
            let decisions = requests.iter().map(|req| decide_counted(&state, req));
            futures_util::future::join_all(decisions).await
        }
    });
    let n = requests_len;
    let all_failed = |err: &dyn Fn() -> StoreError| {
        (0..n)
            .map(|_| Err(ApiError::Unavailable(err())))
            .collect::<Vec<_>>()
    };
    let outcomes = match tokio::time::timeout(state.budget, task).await {
        Ok(Ok(outcomes)) => outcomes,
        Ok(Err(e)) => all_failed(&|| StoreError::Reply(format!("the consume task failed: {e}"))),
        Err(_) => all_failed(&|| StoreError::Timeout(state.budget)),
    };
    let mut items = Vec::with_capacity(n);
    for outcome in outcomes {
        items.push(match outcome {
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
        });
    }
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

/// The batch: a JSON array of 1 to `MAX_CONSUME_BATCH` consume requests. Each item's
/// own fields are checked when it is decided, so one bad item fails alone.
fn decode(body: &[u8]) -> Result<Vec<ConsumeRequest>, RequestError> {
    let requests: Vec<ConsumeRequest> = request::decode(body)?;
    if requests.is_empty() || requests.len() > MAX_CONSUME_BATCH {
        return Err(RequestError::field(
            "body",
            format!(
                "a batch holds 1 to {MAX_CONSUME_BATCH} consumes, not {}",
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
        assert!(matches!(decode(b"[]"), Err(RequestError::Field { .. })));
        let one = r#"{"id":"a","tenant":"t","meters":[{"meter":"requests","cost":1}]}"#;
        let too_many = format!("[{}]", vec![one; MAX_CONSUME_BATCH + 1].join(","));
        assert!(matches!(
            decode(too_many.as_bytes()),
            Err(RequestError::Field { .. })
        ));
        assert_eq!(
            decode(format!("[{one},{one}]").as_bytes()).unwrap().len(),
            2
        );
        let bad = format!(r#"[{one},{{"id":"b","tenant":"t"}}]"#);
        match decode(bad.as_bytes()) {
            Err(RequestError::Field { field, .. }) => assert_eq!(field, "[1]"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(b"[{"), Err(RequestError::Syntax(_))));
    }
}
