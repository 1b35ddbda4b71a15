//! The items of a consume batch, decided together where they can be: the items of one
//! tenant go to Redis as one script (`consume_many.lua`), each decided exactly as
//! alone, in batch order, as if sent one after another. An item alone of its tenant,
//! one refused without Redis (it can never fit), one whose fields are bad, and the
//! items of a call that needs another round (a stale window, a re-seed) go the single
//! consume's way, after the groups.

use futures_util::future::join_all;
use turnpike_wire::{ConsumeRequest, ConsumeResponse};

use crate::api::{count_consume, decide_counted, decided_answer, ApiError};
use crate::batch_api::with_the_rest_alone;
use crate::metrics::Metrics;
use crate::request;
use crate::state::AppState;
use crate::store::{ConsumeCall, Consumed, ManyCall};
use crate::ticket::{Ticket, WindowUnion};

/// An item that may go with others: its ticket and its meters as the stream takes them.
struct Ready {
    ticket: Ticket,
    meters: String,
}

/// The items of one tenant consumed in one script.
struct Group {
    windows: WindowUnion,
    /// (item index, its slots' indexes in `windows`)
    items: Vec<(usize, Vec<usize>)>,
}

/// Decide every consume of a batch; outcomes in request order.
pub(crate) async fn decide_batch(
    state: &AppState,
    requests: &[ConsumeRequest],
) -> Vec<Result<ConsumeResponse, ApiError>> {
    let plans = state.plans.load_full();
    let now = state.clock.now_secs();
    let ready: Vec<Option<Ready>> = requests
        .iter()
        .map(|req| {
            request::check_consume(req).ok()?;
            let plan = plans.resolve(&req.tenant, req.plan.as_deref());
            let ticket = Ticket::for_request(plan, &req.meters, now);
            // Refused without Redis, on the single path.
            ticket.never_fits().is_none().then(|| Ready {
                ticket,
                meters: request::meters_text(&req.meters),
            })
        })
        .collect();
    let groups = group_by_tenant(requests, &ready);

    let mut outcomes: Vec<Option<Result<ConsumeResponse, ApiError>>> =
        requests.iter().map(|_| None).collect();
    let ready = &ready;
    let together = groups
        .iter()
        .filter(|g| g.items.len() > 1)
        .map(|group| async move {
            let calls: Vec<ManyCall<'_>> = group
                .items
                .iter()
                .filter_map(|(i, windows)| {
                    let r = ready[*i].as_ref()?;
                    Some(ManyCall {
                        call: ConsumeCall {
                            tenant: &requests[*i].tenant,
                            id: &requests[*i].id,
                            meters: &r.meters,
                            require_seed: state.ledger.is_some(),
                        },
                        ticket: &r.ticket,
                        windows,
                    })
                })
                .collect();
            (
                group,
                state.store.consume_many(&group.windows, &calls).await,
            )
        });
    for (group, result) in join_all(together).await {
        let items = group.items.iter().map(|(i, _)| *i);
        match result {
            Ok(consumed) => {
                for (i, consumed) in items.zip(&consumed) {
                    let Some(r) = &ready[i] else { continue };
                    if let Some(answer) = decided_answer(state, &requests[i], &r.ticket, consumed) {
                        let outcome = Ok(answer);
                        count_consume(state, &outcome);
                        Metrics::inc(&state.metrics.consumes_grouped);
                        outcomes[i] = Some(outcome);
                    } else if let Consumed::Stale { .. } = consumed {
                        Metrics::inc(&state.metrics.stale_tickets);
                    }
                }
            }
            Err(err) => {
                for i in items {
                    outcomes[i] = Some(Err(ApiError::Unavailable(err.for_another())));
                }
            }
        }
    }

    with_the_rest_alone(outcomes, |i| decide_counted(state, &requests[i])).await
}

/// The items that can be consumed together: one group per tenant (and plan and billing
/// month), its items in batch order. Items that cannot go with others are in none.
fn group_by_tenant(requests: &[ConsumeRequest], ready: &[Option<Ready>]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, item) in ready.iter().enumerate() {
        let Some(item) = item else { continue };
        let tenant = &requests[i].tenant;
        let joined = groups
            .iter_mut()
            .filter(|g| requests[g.items[0].0].tenant == *tenant)
            .find_map(|g| Some((g.windows.join(&item.ticket)?, g)));
        match joined {
            Some((windows, group)) => group.items.push((i, windows)),
            None => {
                let mut windows = WindowUnion::new(&item.ticket);
                if let Some(indexes) = windows.join(&item.ticket) {
                    let items = vec![(i, indexes)];
                    groups.push(Group { windows, items });
                }
            }
        }
    }
    groups
}
