//! What the billing sync has done and what is left: the answer of
//! `GET /v1/billing/status` and `turnpike-collector billing status`, read from the
//! database alone (the last reconciliation with Stripe is stored there too).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::plan::HourStatus;
use super::store::{BillingStore, CreditRow, DriftRow, HourRow, UnsentGroup};
use crate::event::format_time_ms;
use crate::ledger::LedgerError;

/// Most rows of each list in a status answer (the counts and sums cover all).
pub const MAX_LISTED: i64 = 100;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BillingStatus {
    /// Whether this collector syncs (a Stripe key is configured); absent from the
    /// command line, which reads the database only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    pub last_run: Option<String>,
    pub last_success: Option<String>,
    /// Why the last run failed (a wrong key, Stripe unavailable, ...).
    pub last_error: Option<String>,
    pub last_reconcile: Option<String>,
    /// Ledger changes up to this sequence are folded into the hours below.
    pub cursor_seq: i64,
    /// The ledger's latest change; `ledger_seq - cursor_seq` is the backlog.
    pub ledger_seq: i64,
    /// Hours per status (`synced`: of the last 35 days only).
    pub hours: BTreeMap<String, i64>,
    /// Units the ledger bills that Stripe does not hold yet (open, pending and error
    /// hours).
    pub pending_units: i64,
    /// Meter events and cancels decided and not yet confirmed by Stripe (finished by
    /// the next run).
    pub in_flight: i64,
    /// Closed hours with something to send, newest first.
    pub pending: Vec<HourView>,
    /// Hours Stripe refused a request for (retried later), newest first.
    pub errors: Vec<HourView>,
    /// Tenants with usage but no `stripe_customer`: not sent until mapped.
    pub unmapped: Vec<GroupView>,
    pub unmapped_units: i64,
    /// Meters whose Stripe event name has no active Stripe meter.
    pub no_meter: Vec<GroupView>,
    /// Usage older than Stripe's 35-day window that was never sent, per tenant.
    pub too_old: Vec<GroupView>,
    pub too_old_units: i64,
    /// Units Stripe billed that the ledger took back too late to cancel: issue them
    /// as credits, then mark them resolved.
    pub credits: Vec<CreditView>,
    pub open_credits: i64,
    pub open_credit_units: i64,
    /// The last reconciliation: per customer, event name and billing period.
    pub drift: Vec<DriftView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HourView {
    pub tenant: String,
    pub meter: String,
    pub hour: String,
    pub ledger: i64,
    pub sent: i64,
    pub credited: i64,
    pub unsent: i64,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<HourRow> for HourView {
    fn from(h: HourRow) -> HourView {
        HourView {
            unsent: h.unsent(),
            tenant: h.key.tenant,
            meter: h.key.meter,
            hour: format_time_ms(h.key.hour_start_ms),
            ledger: h.ledger_quantity,
            sent: h.sent_quantity,
            credited: h.credited_quantity,
            status: h.status.as_str().to_owned(),
            error: h.last_error,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupView {
    /// A tenant or a meter.
    pub name: String,
    pub hours: i64,
    pub units: i64,
}

impl From<UnsentGroup> for GroupView {
    fn from(g: UnsentGroup) -> GroupView {
        GroupView {
            name: g.name,
            hours: g.hours,
            units: g.units,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreditView {
    pub id: i64,
    pub tenant: String,
    pub customer: Option<String>,
    pub meter: String,
    pub event_name: String,
    pub hour: String,
    pub quantity: i64,
    pub reason: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl From<CreditRow> for CreditView {
    fn from(c: CreditRow) -> CreditView {
        CreditView {
            id: c.id,
            tenant: c.tenant,
            customer: c.customer,
            meter: c.meter,
            event_name: c.event_name,
            hour: format_time_ms(c.hour_start_ms),
            quantity: c.quantity,
            reason: c.reason,
            created_at: format_time_ms(c.created_ms),
            resolved_at: c.resolved_ms.map(format_time_ms),
            note: c.note,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DriftView {
    pub customer: String,
    pub event_name: String,
    pub period_start: String,
    pub period_end: String,
    /// The ledger's billable units in the period (so far).
    pub ledger: i64,
    /// What Turnpike has sent and Stripe should hold.
    pub sent: i64,
    pub credited: i64,
    /// What Stripe's event summaries hold; absent when Stripe has no such meter.
    pub stripe: Option<i64>,
    /// `stripe - ledger`: pending units (negative) and credits to issue (positive)
    /// explain it.
    pub drift: Option<i64>,
    /// `stripe - sent`: not explained by anything Turnpike knows; should be 0.
    pub unexplained: Option<i64>,
    pub checked_at: String,
}

impl From<DriftRow> for DriftView {
    fn from(d: DriftRow) -> DriftView {
        DriftView {
            drift: d.stripe_quantity.map(|s| s - d.ledger_quantity),
            unexplained: d.stripe_quantity.map(|s| s - d.sent_quantity),
            customer: d.customer,
            event_name: d.event_name,
            period_start: format_time_ms(d.period_start_ms),
            period_end: format_time_ms(d.period_end_ms),
            ledger: d.ledger_quantity,
            sent: d.sent_quantity,
            credited: d.credited_quantity,
            stripe: d.stripe_quantity,
            checked_at: format_time_ms(d.checked_ms),
        }
    }
}

impl BillingStatus {
    pub async fn load(store: &BillingStore) -> Result<BillingStatus, LedgerError> {
        let sync = store.sync_row().await?;
        let ledger_seq = store.ledger().last_seq().await?;
        let synced_since = crate::api::now_ms() - super::plan::STRIPE_PAST_WINDOW_MS;
        let counts = store.status_counts(synced_since).await?;
        let mut hours: BTreeMap<String, i64> = HourStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect();
        let mut units: BTreeMap<HourStatus, i64> = BTreeMap::new();
        for (status, n, unsent) in counts {
            hours.insert(status.as_str().to_owned(), n);
            units.insert(status, unsent);
        }
        let units_of = |s: HourStatus| units.get(&s).copied().unwrap_or(0);
        let mut pending: Vec<HourView> = store
            .hours_with_status(HourStatus::Pending, MAX_LISTED)
            .await?
            .into_iter()
            .map(HourView::from)
            .collect();
        pending.retain(|h| h.unsent != 0);
        let (open_credits, open_credit_units) = store.open_credit_totals().await?;
        let credits: Vec<CreditView> = store
            .credits(false, MAX_LISTED)
            .await?
            .into_iter()
            .map(CreditView::from)
            .collect();
        Ok(BillingStatus {
            enabled: None,
            last_run: sync.last_run_ms.map(format_time_ms),
            last_success: sync.last_success_ms.map(format_time_ms),
            last_error: sync.last_error,
            last_reconcile: sync.last_reconcile_ms.map(format_time_ms),
            cursor_seq: sync.cursor_seq,
            ledger_seq,
            hours,
            pending_units: units_of(HourStatus::Open)
                + units_of(HourStatus::Pending)
                + units_of(HourStatus::Error),
            pending,
            in_flight: store.in_flight().await?,
            errors: store
                .hours_with_status(HourStatus::Error, MAX_LISTED)
                .await?
                .into_iter()
                .map(HourView::from)
                .collect(),
            unmapped: groups(
                store
                    .unsent_by(HourStatus::Unmapped, false, MAX_LISTED)
                    .await?,
            ),
            unmapped_units: units_of(HourStatus::Unmapped),
            no_meter: groups(
                store
                    .unsent_by(HourStatus::NoMeter, true, MAX_LISTED)
                    .await?,
            ),
            too_old: groups(
                store
                    .unsent_by(HourStatus::Expired, false, MAX_LISTED)
                    .await?,
            ),
            too_old_units: units_of(HourStatus::Expired),
            open_credits,
            open_credit_units,
            credits,
            drift: store
                .drift()
                .await?
                .into_iter()
                .map(DriftView::from)
                .collect(),
        })
    }

    /// Sum of |unexplained| over the last reconciliation.
    pub fn unexplained_units(&self) -> i64 {
        self.drift
            .iter()
            .filter_map(|d| d.unexplained)
            .map(i64::abs)
            .sum()
    }

    /// A few lines for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let or_never = |t: &Option<String>| t.clone().unwrap_or_else(|| "never".to_owned());
        let _ = writeln!(
            out,
            "last sync: {} (last success: {})",
            or_never(&self.last_run),
            or_never(&self.last_success)
        );
        if let Some(error) = &self.last_error {
            let _ = writeln!(out, "last error: {error}");
        }
        let _ = writeln!(
            out,
            "ledger folded up to change {} of {}",
            self.cursor_seq, self.ledger_seq
        );
        let counts: Vec<String> = self
            .hours
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "hours: {}",
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "pending units: {} ({} Stripe requests in flight)",
            self.pending_units, self.in_flight
        );
        for h in &self.errors {
            let _ = writeln!(
                out,
                "  error {} {} {}: {} unsent: {}",
                h.tenant,
                h.meter,
                h.hour,
                h.unsent,
                h.error.as_deref().unwrap_or("")
            );
        }
        if !self.unmapped.is_empty() {
            let _ = writeln!(
                out,
                "unmapped tenants (no stripe_customer; not sent): {} units",
                self.unmapped_units
            );
            for g in &self.unmapped {
                let _ = writeln!(out, "  {}: {} units in {} hours", g.name, g.units, g.hours);
            }
        }
        for g in &self.no_meter {
            let _ = writeln!(
                out,
                "no active Stripe meter for meter {}: {} units in {} hours",
                g.name, g.units, g.hours
            );
        }
        if !self.too_old.is_empty() {
            let _ = writeln!(
                out,
                "too old for Stripe (over 35 days, never sent): {} units",
                self.too_old_units
            );
            for g in &self.too_old {
                let _ = writeln!(out, "  {}: {} units in {} hours", g.name, g.units, g.hours);
            }
        }
        if !self.credits.is_empty() {
            let _ = writeln!(
                out,
                "credits to issue: {} units in {} credits (`billing resolve-credit ID` once issued)",
                self.open_credit_units, self.open_credits
            );
            for c in &self.credits {
                let _ = writeln!(
                    out,
                    "  #{} {} ({}) {} {} x{}: {}",
                    c.id,
                    c.tenant,
                    c.customer.as_deref().unwrap_or("no customer"),
                    c.event_name,
                    c.hour,
                    c.quantity,
                    c.reason
                );
            }
        }
        if let Some(at) = &self.last_reconcile {
            let _ = writeln!(out, "reconciled with Stripe at {at}:");
            for d in &self.drift {
                let stripe = d
                    .stripe
                    .map_or_else(|| "no meter".to_owned(), |s| s.to_string());
                let _ = writeln!(
                    out,
                    "  {} {} {}..{}: ledger {} sent {} stripe {} unexplained {}",
                    d.customer,
                    d.event_name,
                    d.period_start,
                    d.period_end,
                    d.ledger,
                    d.sent,
                    stripe,
                    d.unexplained
                        .map_or_else(|| "-".to_owned(), |u| u.to_string())
                );
            }
        }
        out
    }
}

fn groups(rows: Vec<UnsentGroup>) -> Vec<GroupView> {
    rows.into_iter().map(GroupView::from).collect()
}
