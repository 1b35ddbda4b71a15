//! HTTP for leases: grant/extend/close (`POST /v1/lease`), report the requests a lease
//! admitted (`POST /v1/lease/report`), and the sweeper that closes the leases of
//! proxies that went away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use turnpike_wire::{LeaseReport, LeaseReportResponse, LeaseRequest, LeaseResponse};

use crate::api::{ms_to_secs, seed_from_ledger, unauthorized, ApiError};
use crate::keys::TenantKeys;
use crate::lease::{
    parse_index_member, return_delay_secs, wait_for_turn, DEFAULT_REPORT_MS, MAX_REPORT_MS,
};
use crate::metrics::{Endpoint, Metrics};
use crate::request::{self, RequestError};
use crate::state::AppState;
use crate::store::{ConsumeCall, Leased, Reported, StoreError};
use crate::ticket::Ticket;

/// Rounds of one lease call: a stale ticket and a re-seed each cost one.
const MAX_ROUNDS: usize = 4;

pub async fn lease(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.service_tokens.allow(&headers) {
        return unauthorized("the service token");
    }
    let started = Instant::now();
    let outcome = match tokio::time::timeout(state.budget, lease_inner(&state, &body)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ApiError::Unavailable(StoreError::Timeout(state.budget))),
    };
    let response = match outcome {
        Ok(answer) => {
            if answer.granted > 0 {
                Metrics::inc(&state.metrics.leases_granted);
                Metrics::add(&state.metrics.leased_requests, answer.granted);
            }
            Json(answer).into_response()
        }
        Err(err) => {
            state.note_error(&err);
            err.into_response()
        }
    };
    state.metrics.observe(Endpoint::Lease, started.elapsed());
    response
}

async fn lease_inner(state: &AppState, body: &[u8]) -> Result<LeaseResponse, ApiError> {
    let req: LeaseRequest = request::decode(body)?;
    request::check_tenant(&req.tenant)?;
    request::check_meters(&req.meters)?;
    let policy = state.lease_policy;
    if req.want > policy.max_want {
        return Err(RequestError::field("want", format!("must be <= {}", policy.max_want)).into());
    }
    let delay = report_delay(req.report_ms)?;
    let plans = state.plans.load_full();
    let plan = plans.resolve(&req.tenant, req.plan.as_deref());
    let meters = request::meters_text(&req.meters);
    let call = ConsumeCall {
        tenant: &req.tenant,
        id: "",
        meters: &meters,
        require_seed: state.ledger.is_some(),
    };
    // The lease the proxy holds: extended while its windows are the current ones;
    // given up when asked or when they rolled on (its unspent requests go back to its
    // windows once its reports are in: `lease_retire.lua`).
    let mut id = None;
    let mut held_ms = 0;
    if let Some(held) = req.lease {
        if let Some(record) = state.store.lease_record(&req.tenant, held).await? {
            let mut current = Ticket::for_request(plan, &req.meters, state.clock.now_secs());
            if !req.close && record.slots == current.record_slots() {
                let end = current.lease_end_secs();
                if let Some(wait) = wait_for_turn(&record, end, state.clock.now_ms()) {
                    let slept = Instant::now();
                    tokio::time::sleep(wait).await;
                    // What the proxy may count its lease from: never more than it was
                    // held (a monotonic clock; the decision comes after).
                    held_ms = u64::try_from(slept.elapsed().as_millis()).unwrap_or(0);
                    current = Ticket::for_request(plan, &req.meters, state.clock.now_secs());
                }
            }
            if req.close || record.slots != current.record_slots() {
                let untaken = req.close.then_some((req.unspent.unwrap_or(0), &record));
                let retired = state
                    .store
                    .retire_lease(&req.tenant, held, delay, untaken)
                    .await?;
                if retired.now {
                    Metrics::inc(&state.metrics.leases_closed);
                }
                Metrics::add(&state.metrics.lease_returned_requests, retired.returned);
            } else if !record.retired {
                id = Some(held);
            }
        }
    }
    let now = state.clock.now_secs();
    let mut ticket = Ticket::for_request(plan, &req.meters, now);
    if req.close || req.want == 0 {
        let used = state
            .store
            .read(&ticket.keys(&TenantKeys::new(&req.tenant)))
            .await?;
        return Ok(LeaseResponse {
            lease: None,
            granted: 0,
            expires_ms: 0,
            time_ms: u64::try_from(state.clock.now_ms()).unwrap_or(0),
            held_ms,
            limits: ticket.statuses(&used, now),
            plan: ticket.plan,
        });
    }
    let mut id = id.unwrap_or_else(|| fastrand::u64(1..u64::MAX >> 11));
    for _ in 0..MAX_ROUNDS {
        match state
            .store
            .lease(&call, &ticket, id, req.want, &policy, delay)
            .await?
        {
            Leased::Granted {
                granted,
                expires,
                now_ms,
                used,
            } => {
                state.clock.learn(now_ms);
                let now = ms_to_secs(now_ms);
                return Ok(LeaseResponse {
                    lease: (granted > 0 || req.lease == Some(id)).then_some(id),
                    granted,
                    expires_ms: u64::try_from(expires.saturating_mul(1000)).unwrap_or(0),
                    time_ms: now_ms,
                    held_ms,
                    limits: ticket.statuses(&used, now),
                    plan: ticket.plan,
                });
            }
            Leased::Stale { now_ms } => {
                state.clock.learn(now_ms);
                Metrics::inc(&state.metrics.stale_tickets);
            }
            Leased::NeedsSeed { now_ms, required } => {
                state.clock.learn(now_ms);
                seed_from_ledger(state, &req.tenant, plan, ms_to_secs(now_ms), required).await?;
            }
            // The windows rolled over between the check above and the script (or the
            // lease was given up): the held lease's unspent units belong to windows
            // that ended. Give it up and lease anew, or its old units would be spent
            // (and given back) in the new windows.
            Leased::HeldStale { now_ms } => {
                state.clock.learn(now_ms);
                if state
                    .store
                    .retire_lease(&req.tenant, id, delay, None)
                    .await?
                    .now
                {
                    Metrics::inc(&state.metrics.leases_closed);
                }
                id = fastrand::u64(1..u64::MAX >> 11);
            }
        }
        ticket = Ticket::for_request(plan, &req.meters, state.clock.now_secs());
    }
    Err(ApiError::Unavailable(StoreError::Reply(format!(
        "no lease decision after {MAX_ROUNDS} rounds"
    ))))
}

pub async fn report(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.service_tokens.allow(&headers) {
        return unauthorized("the service token");
    }
    let started = Instant::now();
    let outcome = match tokio::time::timeout(state.budget, report_inner(&state, &body)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ApiError::Unavailable(StoreError::Timeout(state.budget))),
    };
    let response = match outcome {
        Ok(answer) => Json(answer).into_response(),
        Err(err) => {
            state.note_error(&err);
            err.into_response()
        }
    };
    state.metrics.observe(Endpoint::Lease, started.elapsed());
    response
}

/// Most records in one report.
const MAX_RECORDS: usize = 10_000;

async fn report_inner(state: &AppState, body: &[u8]) -> Result<LeaseReportResponse, ApiError> {
    let req: LeaseReport = request::decode(body)?;
    request::check_tenant(&req.tenant)?;
    request::check_meters(&req.meters)?;
    if req.records.len() > MAX_RECORDS {
        return Err(RequestError::field("records", format!("at most {MAX_RECORDS}")).into());
    }
    // Thousands of records a report: a field name is formatted only for an error.
    if let Some(i) = req
        .records
        .iter()
        .position(|(id, _)| !turnpike_plans::ids::is_valid_consume_id(id))
    {
        request::check_id_at(&format!("records[{i}]"), &req.records[i].0)?;
    }
    request::check_id_at("batch", &req.batch)?;
    let delay = report_delay(req.report_ms)?;
    if req.running.is_some_and(|n| n > 0)
        && state.store.pin_lease(&req.tenant, req.lease, delay).await?
    {
        Metrics::inc(&state.metrics.lease_pins);
    }
    if req.records.is_empty() {
        return Ok(LeaseReportResponse { recorded: 0 });
    }
    let plans = state.plans.load_full();
    let plan = plans.resolve(&req.tenant, req.plan.as_deref());
    let ticket = Ticket::for_request(plan, &req.meters, state.clock.now_secs());
    let outcome = state
        .store
        .lease_report(
            &req.tenant,
            &ticket.plan,
            &request::meters_text(&req.meters),
            req.lease,
            &req.batch,
            &req.records,
            &ticket,
        )
        .await?;
    let n = req.records.len() as u64;
    match outcome {
        Reported::Spent => Metrics::add(&state.metrics.lease_reported_requests, n),
        Reported::Late(charged) => {
            Metrics::add(&state.metrics.lease_reported_requests, n);
            Metrics::add(&state.metrics.lease_late_requests, charged);
        }
        Reported::Again => Metrics::inc(&state.metrics.lease_repeated_reports),
    }
    Ok(LeaseReportResponse {
        recorded: req.records.len() as u64,
    })
}

/// The report delay of a proxy that reports every `report_ms` (checked; the default
/// when it does not say), seconds.
fn report_delay(report_ms: Option<u64>) -> Result<i64, RequestError> {
    let report_ms = report_ms.unwrap_or(DEFAULT_REPORT_MS);
    if report_ms > MAX_REPORT_MS {
        return Err(RequestError::field(
            "report_ms",
            format!("must be <= {MAX_REPORT_MS}"),
        ));
    }
    Ok(return_delay_secs(report_ms))
}

/// Close leases whose report delay has passed since they ended or were given up: what
/// their proxies did not report spent goes back to the windows. A lease never given up
/// had a proxy that died or lost its network. Every counter replica runs this; closing
/// is idempotent.
pub async fn sweep_expired_leases(state: Arc<AppState>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let now = state.clock.now_secs();
        let members = match state.store.expired_leases(now, 100).await {
            Ok(members) => members,
            Err(err) => {
                tracing::debug!(error = %err, "lease sweep: cannot list expired leases");
                continue;
            }
        };
        for member in members {
            let Some((tenant, id)) = parse_index_member(&member) else {
                continue;
            };
            let closed = match state.store.lease_record(tenant, id).await {
                Ok(Some(record)) => state
                    .store
                    .close_lease(tenant, id, &record)
                    .await
                    .map(|closed| closed.map(|c| (c, record.retired))),
                Ok(None) => state
                    .store
                    .close_lease_gone(tenant, id)
                    .await
                    .map(|()| None),
                Err(err) => Err(err),
            };
            match closed {
                Ok(Some((closed, given_up))) => {
                    Metrics::add(&state.metrics.lease_returned_requests, closed.returned);
                    if given_up {
                        continue;
                    }
                    Metrics::inc(&state.metrics.leases_expired);
                    tracing::info!(
                        tenant,
                        lease = id,
                        granted = closed.granted,
                        spent = closed.spent,
                        returned = closed.returned,
                        "expired lease closed: its proxy never gave it back"
                    );
                }
                Ok(None) => {}
                Err(err) => tracing::debug!(tenant, lease = id, error = %err, "lease sweep failed"),
            }
        }
    }
}
