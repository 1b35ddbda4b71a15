//! Reconciliation with Stripe: per customer, Stripe event name and billing period
//! (the tenant's billing month, from its anchor day), the ledger's billable units,
//! what Turnpike sent, and what Stripe's event summaries hold.
//!
//! `stripe - sent` should be zero: anything else is unexplained (an event sent by
//! someone else, a cancel made by hand, a lost state). `stripe - ledger` is
//! explained by the units not yet sent (pending, unmapped, too old) and the credits
//! to issue.

use std::collections::{BTreeMap, HashMap};

use turnpike_plans::{window_bounds, Plans, Window};

use super::plan::HOUR_MS;
use super::store::{BillingStore, DriftRow};
use super::stripe::StripeClient;
use super::sync::SyncError;

/// Most mapped tenants compared per reconciliation.
pub const MAX_TENANTS: usize = 1000;

/// The periods compared for a tenant with billing month anchor `anchor_day`: the
/// previous one (its invoice may still be open) and the current one, in unix ms,
/// each with the end the comparison stops at (the end of the current hour at most:
/// nothing is sent for later).
pub fn periods(anchor_day: u8, now_ms: i64) -> [(i64, i64, i64); 2] {
    let now_s = now_ms.div_euclid(1000);
    let (start, end) = window_bounds(Window::Month, anchor_day, now_s);
    let (prev_start, prev_end) = window_bounds(Window::Month, anchor_day, start - 1);
    let horizon = (now_ms.div_euclid(HOUR_MS) + 1) * HOUR_MS;
    [
        (
            prev_start * 1000,
            prev_end * 1000,
            (prev_end * 1000).min(horizon),
        ),
        (start * 1000, end * 1000, (end * 1000).min(horizon)),
    ]
}

#[derive(Default)]
struct Totals {
    ledger: i64,
    sent: i64,
    credited: i64,
}

/// Compare ledger, sync state and Stripe for every mapped tenant; store and return
/// the result.
pub async fn reconcile(
    store: &BillingStore,
    stripe: &StripeClient,
    plans: Option<&Plans>,
    now_ms: i64,
) -> Result<Vec<DriftRow>, SyncError> {
    let Some(plans) = plans else {
        store.record_reconcile(&[], now_ms).await?;
        return Ok(Vec::new());
    };
    let meters: HashMap<String, String> = super::sync::usable_meters(
        stripe
            .list_meters(Some(super::stripe::MeterStatus::Active))
            .await
            .map_err(SyncError::from_stripe)?,
    );
    let mut tenants: Vec<(&str, &str)> = plans.stripe_customers().collect();
    tenants.sort_unstable();
    if tenants.len() > MAX_TENANTS {
        tracing::warn!(
            tenants = tenants.len(),
            compared = MAX_TENANTS,
            "billing reconciliation: too many mapped tenants; comparing the first ones"
        );
        tenants.truncate(MAX_TENANTS);
    }
    // (customer, event name, period start, period end, compared until) -> totals.
    let mut groups: BTreeMap<(String, String, i64, i64, i64), Totals> = BTreeMap::new();
    for (tenant, customer) in tenants {
        let claimed = store.ledger().latest_plan(tenant).await?;
        let anchor = plans.resolve(tenant, claimed.as_deref()).anchor_day;
        for (start, end, until) in periods(anchor, now_ms) {
            let key = |meter: &str| {
                let event_name = plans.stripe_event_name(meter).to_owned();
                (customer.to_owned(), event_name, start, end, until)
            };
            for (meter, quantity) in store.ledger().billable_totals(tenant, start, until).await? {
                groups.entry(key(&meter)).or_default().ledger += quantity;
            }
            for (meter, _, sent, credited) in store.period_sums(tenant, start, until).await? {
                let totals = groups.entry(key(&meter)).or_default();
                totals.sent += sent;
                totals.credited += credited;
            }
        }
    }
    let mut rows = Vec::with_capacity(groups.len());
    for ((customer, event_name, start, end, until), totals) in groups {
        let stripe_quantity = match meters.get(&event_name) {
            Some(meter_id) => {
                let summaries = stripe
                    .event_summaries(meter_id, &customer, start / 1000, until / 1000, None)
                    .await
                    .map_err(SyncError::from_stripe)?;
                // Whole units are all Turnpike sends.
                Some(
                    summaries
                        .iter()
                        .map(|s| s.aggregated_value)
                        .sum::<f64>()
                        .round() as i64,
                )
            }
            None => None,
        };
        rows.push(DriftRow {
            customer,
            event_name,
            period_start_ms: start,
            period_end_ms: end,
            ledger_quantity: totals.ledger,
            sent_quantity: totals.sent,
            credited_quantity: totals.credited,
            stripe_quantity,
            checked_ms: now_ms,
        });
    }
    store.record_reconcile(&rows, now_ms).await?;
    for row in &rows {
        match row.stripe_quantity {
            Some(stripe) if stripe != row.sent_quantity => tracing::warn!(
                customer = %row.customer,
                event_name = %row.event_name,
                period_start = row.period_start_ms,
                sent = row.sent_quantity,
                stripe,
                "billing reconciliation: Stripe holds other than what Turnpike sent"
            ),
            _ => {}
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_the_previous_and_current_billing_months_cut_at_the_next_hour() {
        // 2026-03-20T10:30Z, anchor day 15.
        let now = 1_774_002_600_000;
        let [prev, cur] = periods(15, now);
        let day = 86_400_000;
        // 2026-02-15 .. 2026-03-15 .. 2026-04-15.
        assert_eq!(
            prev,
            (1_771_113_600_000, 1_773_532_800_000, 1_773_532_800_000)
        );
        assert_eq!(
            (cur.0, cur.1),
            (1_773_532_800_000, 1_773_532_800_000 + 31 * day)
        );
        assert_eq!(cur.2, 1_774_004_400_000, "the end of the current hour");
    }
}
