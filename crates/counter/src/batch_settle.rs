//! The settlements of a settle batch, applied together where they can be: those of one
//! tenant read their records in one `MGET` and go to Redis as one script
//! (`settle_many.lua`), each applied exactly as alone, in batch order. A settlement
//! alone of its tenant, one with bad fields, and one whose record changed between the
//! read and the script go the single settlement's way, after the groups.

use futures_util::future::join_all;
use turnpike_wire::SettleRequest;

use crate::api::{count_settle, settle_counted, settle_plan, settle_used, ApiError};
use crate::batch_api::with_the_rest_alone;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::{ManySettle, Settled, StoreError};

/// Apply every settlement of a batch; outcomes (settled or not) in request order.
pub(crate) async fn settle_batch(
    state: &AppState,
    requests: &[SettleRequest],
) -> Vec<Result<bool, ApiError>> {
    let mut outcomes: Vec<Option<Result<bool, ApiError>>> = requests.iter().map(|_| None).collect();
    let groups = group_by_tenant(requests);
    let together = groups
        .iter()
        .filter(|g| g.len() > 1)
        .map(|group| async move { (group, settle_group(state, requests, group).await) });
    for (group, decided) in join_all(together).await {
        for (&i, outcome) in group.iter().zip(decided) {
            if let Some(outcome) = outcome {
                count_settle(state, &outcome);
                outcomes[i] = Some(outcome);
            }
        }
    }
    with_the_rest_alone(outcomes, |i| settle_counted(state, &requests[i])).await
}

/// The outcome of each settlement of one tenant's `group`; `None` for one left to the
/// single path (its record changed since it was read).
async fn settle_group(
    state: &AppState,
    requests: &[SettleRequest],
    group: &[usize],
) -> Vec<Option<Result<bool, ApiError>>> {
    let tenant = &requests[group[0]].tenant;
    let ids: Vec<&str> = group.iter().map(|&i| requests[i].id.as_str()).collect();
    let records = match state.store.records(tenant, &ids).await {
        Ok(records) => records,
        Err(err) => return failed(group, &err),
    };
    let mut outcomes: Vec<Option<Result<bool, ApiError>>> = group.iter().map(|_| None).collect();
    // (position in the group, its plan), for the settlements there is something to do.
    let mut planned = Vec::new();
    for (x, (&i, record)) in group.iter().zip(&records).enumerate() {
        let Some(record) = record else {
            outcomes[x] = Some(Ok(false));
            continue;
        };
        let plan =
            settle_used(&requests[i]).and_then(|used| settle_plan(&requests[i].id, record, &used));
        match plan {
            Ok(Some(plan)) => planned.push((x, record, plan)),
            Ok(None) => outcomes[x] = Some(Ok(false)),
            Err(err) => outcomes[x] = Some(Err(err)),
        }
    }
    if planned.is_empty() {
        return outcomes;
    }
    let settlements: Vec<ManySettle<'_>> = planned
        .iter()
        .map(|(x, record, plan)| ManySettle {
            id: &requests[group[*x]].id,
            record,
            meters: &plan.meters,
            slots: &plan.slots,
            deltas: &plan.deltas,
        })
        .collect();
    match state.store.settle_many(tenant, &settlements).await {
        Ok(settled) => {
            for ((x, _, plan), settled) in planned.iter().zip(settled) {
                if !matches!(settled, Settled::Changed) {
                    Metrics::inc(&state.metrics.settles_grouped);
                }
                outcomes[*x] = match settled {
                    Settled::Settled => {
                        tracing::debug!(tenant = %tenant, id = %requests[group[*x]].id, meters = %plan.meters, "settled");
                        Some(Ok(true))
                    }
                    Settled::Nothing => Some(Ok(false)),
                    // Read again, on the single path.
                    Settled::Changed => None,
                };
            }
            outcomes
        }
        Err(err) => {
            for (x, _, _) in &planned {
                outcomes[*x] = Some(Err(ApiError::Unavailable(err.for_another())));
            }
            outcomes
        }
    }
}

/// Every settlement of `group` failed with `err`.
fn failed(group: &[usize], err: &StoreError) -> Vec<Option<Result<bool, ApiError>>> {
    group
        .iter()
        .map(|_| Some(Err(ApiError::Unavailable(err.for_another()))))
        .collect()
}

/// The indexes of the settlements of each tenant whose fields are valid, in batch
/// order; tenants in first-seen order.
fn group_by_tenant(requests: &[SettleRequest]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, req) in requests.iter().enumerate() {
        if settle_used(req).is_err() {
            continue;
        }
        match groups
            .iter_mut()
            .find(|g| requests[g[0]].tenant == req.tenant)
        {
            Some(group) => group.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}
