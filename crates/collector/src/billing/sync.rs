//! The billing sync: make Stripe hold, per customer, meter and closed hour, what the
//! ledger bills. The I/O around [`plan`](super::plan): fold ledger changes into hour
//! totals, then per hour finish what was decided, decide, write the decision, act.
//!
//! Crash safety, step by step (a crash may come between any two lines):
//! - Folding: the hour totals and the cursor move in one transaction; totals are
//!   recomputed from the ledger, not added up, so folding twice is harmless.
//! - Sending: the intent (identifier, quantity) is committed before the request. On
//!   restart an intent is sent again with the same identifier and parameters; Stripe
//!   answers a repeat with its stored result (same `Idempotency-Key`) or refuses the
//!   identifier as a duplicate, and both mean delivered. Nothing new is decided for
//!   an hour while one of its intents is unconfirmed, so an hour never has two
//!   guesses in flight.
//! - Correcting: the cancels and the replacement event are decided together; the
//!   replacement is sent only once every cancel is confirmed, and is abandoned
//!   (never sent) if Stripe refuses a cancel, the refund then becoming a credit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use turnpike_plans::{window_bounds, Plans, Window};

use super::failpoint;
use super::identifier::identifier;
use super::plan::{
    plan, Action, EventStatus, HourState, HourStatus, SentEvent, Situation, HORIZON_MARGIN_MS,
    HOUR_MS, STRIPE_PAST_WINDOW_MS,
};
use super::status::BillingStatus;
use super::store::{BillingStore, DriftRow, EventRow, HourKey, NewCredit, NewEvent};
use super::stripe::{Formula, MeterStatus, StripeClient, StripeError};
use crate::api::now_ms;
use crate::event::format_time_ms;
use crate::ledger::{Ledger, LedgerError};
use crate::metrics::Metrics;

/// Ledger changes folded per transaction.
const FOLD_CHUNK: i64 = 20_000;
/// Decisions per hour per run (decide, act, settle; a refused cancel adds two).
const STEPS_PER_HOUR: usize = 6;

#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Hours are sent this long after their end, so late events make the first send.
    pub grace: Duration,
    /// Names this syncer in the lease (stable across restarts of one collector).
    pub owner: String,
    pub lease_ttl: Duration,
    /// Most hours looked at per run; the rest wait for the next.
    pub max_hours_per_run: i64,
    /// How long an hour waits after Stripe refused a request for it.
    pub error_backoff: Duration,
}

impl SyncSettings {
    pub fn new(owner: impl Into<String>, grace: Duration) -> SyncSettings {
        SyncSettings {
            grace,
            owner: owner.into(),
            lease_ttl: Duration::from_secs(300),
            max_hours_per_run: 20_000,
            error_backoff: Duration::from_secs(900),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("billing state: {0}")]
    Ledger(#[from] LedgerError),
    /// A wrong, revoked or under-privileged key: nothing can be synced until fixed.
    #[error("{0}")]
    Auth(StripeError),
    /// Stripe did not answer usefully after the client's retries; the next run
    /// continues where this one stopped.
    #[error("Stripe unavailable (the next run continues): {0}")]
    Unavailable(StripeError),
    #[error("Stripe: {0}")]
    Stripe(StripeError),
    #[error("another collector ({owner}) holds the billing sync lease")]
    Busy { owner: String },
}

impl SyncError {
    /// The `outcome` label of the run metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            SyncError::Auth(_) => "auth_failed",
            SyncError::Unavailable(_) => "stripe_unavailable",
            SyncError::Busy { .. } => "busy",
            SyncError::Ledger(_) | SyncError::Stripe(_) => "error",
        }
    }

    /// Sort a Stripe error for a whole run.
    pub(crate) fn from_stripe(err: StripeError) -> SyncError {
        match err {
            StripeError::Authentication { .. } => SyncError::Auth(err),
            err if err.is_transient() || matches!(err, StripeError::Decode { .. }) => {
                SyncError::Unavailable(err)
            }
            err => SyncError::Stripe(err),
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncReport {
    pub started_at: String,
    /// Ledger changes up to this sequence are folded in.
    pub cursor_seq: i64,
    pub hours_examined: u64,
    pub events_sent: u64,
    pub units_sent: i64,
    /// Events found already delivered on a retry.
    pub already_delivered: u64,
    pub cancels: u64,
    pub credits: u64,
    pub credit_units: i64,
    /// Hours Stripe refused a request for (see the status).
    pub hours_failed: u64,
}

/// What the run knows beyond one hour.
struct RunContext {
    /// Tenant -> Stripe customer.
    customers: HashMap<String, String>,
    /// Stripe event name -> active meter id.
    stripe_meters: HashMap<String, String>,
    plans: Option<Arc<Plans>>,
    /// Intents older than this were left by an earlier run (a crash, an outage).
    started_ms: i64,
    /// Billing month anchor days looked up so far.
    anchors: HashMap<String, u8>,
}

impl RunContext {
    fn event_name<'a>(&'a self, meter: &'a str) -> &'a str {
        match &self.plans {
            Some(plans) => plans.stripe_event_name(meter),
            None => meter,
        }
    }
}

/// How finishing an hour's decided steps went.
enum Step {
    Progress,
    /// Stripe refused: leave the hour in error until the backoff passes.
    Refused(String),
    /// Stripe refused the hour's timestamp as too old.
    TooOld(String),
}

pub struct Syncer {
    store: BillingStore,
    stripe: StripeClient,
    settings: SyncSettings,
    metrics: Option<Arc<Metrics>>,
    /// One run at a time in this process (the loop and a triggered run).
    running: tokio::sync::Mutex<()>,
}

impl Syncer {
    pub fn new(
        ledger: Ledger,
        stripe: StripeClient,
        settings: SyncSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Syncer {
        Syncer {
            store: BillingStore::new(ledger),
            stripe,
            settings,
            metrics,
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn store(&self) -> &BillingStore {
        &self.store
    }

    pub fn stripe(&self) -> &StripeClient {
        &self.stripe
    }

    /// One sync run: fold the ledger's changes, then bring every closed hour that
    /// needs it up to date with Stripe. The outcome is stored for the status.
    pub async fn run_once(&self, plans: Option<Arc<Plans>>) -> Result<SyncReport, SyncError> {
        let _one_at_a_time = self.running.lock().await;
        let started = now_ms();
        let ttl = duration_ms(self.settings.lease_ttl);
        if !self
            .store
            .acquire_lease(&self.settings.owner, started, ttl)
            .await?
        {
            let owner = self.store.sync_row().await?.lease_owner.unwrap_or_default();
            let err = SyncError::Busy { owner };
            self.count_run(Some(&err));
            return Err(err);
        }
        let mut report = SyncReport {
            started_at: format_time_ms(started),
            ..SyncReport::default()
        };
        let result = self.run_leased(plans, started, &mut report).await;
        let error = result.as_ref().err().map(ToString::to_string);
        match &result {
            Ok(()) => tracing::info!(
                cursor_seq = report.cursor_seq,
                hours = report.hours_examined,
                events_sent = report.events_sent,
                units_sent = report.units_sent,
                cancels = report.cancels,
                credits = report.credits,
                hours_failed = report.hours_failed,
                "billing sync run done"
            ),
            Err(SyncError::Auth(err)) => tracing::error!(
                error = %err,
                "billing sync: Stripe refused the API key; nothing is sent until the key is fixed"
            ),
            Err(err) => tracing::warn!(error = %err, "billing sync run stopped"),
        }
        let recorded = self.store.record_run(started, error.as_deref()).await;
        if let Err(err) = self.store.release_lease(&self.settings.owner).await {
            tracing::warn!(error = %err, "billing sync: could not release the lease; it expires");
        }
        self.count_run(result.as_ref().err());
        self.refresh_gauges().await;
        result?;
        recorded?;
        Ok(report)
    }

    async fn run_leased(
        &self,
        plans: Option<Arc<Plans>>,
        started: i64,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        report.cursor_seq = self.fold().await?;
        // Also the check of the key: a wrong one fails here, before anything is
        // decided or marked.
        let meters = self
            .stripe
            .list_meters(Some(MeterStatus::Active))
            .await
            .map_err(SyncError::from_stripe)?;
        let mut context = RunContext {
            customers: plans
                .as_deref()
                .map(|p| {
                    p.stripe_customers()
                        .map(|(t, c)| (t.to_owned(), c.to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            stripe_meters: usable_meters(meters),
            plans,
            started_ms: started,
            anchors: HashMap::new(),
        };
        let mapping: Vec<(String, String)> = context
            .customers
            .iter()
            .map(|(t, c)| (t.clone(), c.clone()))
            .collect();
        self.store.set_customers(&mapping).await?;
        let now = now_ms();
        let horizon = now - STRIPE_PAST_WINDOW_MS + HORIZON_MARGIN_MS;
        let expired = self.store.expire_waiting(horizon, now).await?;
        if expired > 0 {
            tracing::warn!(
                hours = expired,
                "billing: usage waiting for a customer mapping or a Stripe meter is now \
                 older than Stripe's 35 days and will not be sent (see billing status)"
            );
        }
        let resolvable: Vec<String> = self
            .store
            .meters_waiting_for_a_meter()
            .await?
            .into_iter()
            .filter(|m| context.stripe_meters.contains_key(context.event_name(m)))
            .collect();
        let grace = duration_ms(self.settings.grace);
        let candidates = self
            .store
            .candidates(
                now - HOUR_MS - grace,
                now,
                &resolvable,
                self.settings.max_hours_per_run,
            )
            .await?;
        let mut lease_renewed = started;
        let ttl = duration_ms(self.settings.lease_ttl);
        for key in candidates {
            let now = now_ms();
            if now - lease_renewed > ttl / 3 {
                if !self
                    .store
                    .acquire_lease(&self.settings.owner, now, ttl)
                    .await?
                {
                    let owner = self.store.sync_row().await?.lease_owner.unwrap_or_default();
                    return Err(SyncError::Busy { owner });
                }
                lease_renewed = now;
            }
            self.sync_hour(&key, &mut context, report).await?;
        }
        Ok(())
    }

    /// Fold ledger changes into hour totals, a chunk per transaction; returns the
    /// cursor reached.
    async fn fold(&self) -> Result<i64, SyncError> {
        let grace = duration_ms(self.settings.grace);
        loop {
            let cursor = self.store.sync_row().await?.cursor_seq;
            // Every change up to the ledger's last seq is committed (writers take seqs
            // in commit order), so nothing at or below `upto` can still appear.
            let last = self.store.ledger().last_seq().await?;
            if last <= cursor {
                return Ok(cursor);
            }
            let upto = last.min(cursor + FOLD_CHUNK);
            let changed = self.store.changed_hours(cursor, upto).await?;
            let totals = self.recompute(&changed).await?;
            let folded = self
                .store
                .fold_commit(cursor, upto, &totals, now_ms(), grace)
                .await?;
            if folded {
                tracing::debug!(
                    from = cursor,
                    to = upto,
                    hours = changed.len(),
                    "billing: ledger changes folded"
                );
            }
        }
    }

    /// The ledger's billable total of every meter in the given (tenant, hour)s,
    /// zero for meters that had units there before and have none now.
    async fn recompute(
        &self,
        changed: &[(String, i64)],
    ) -> Result<Vec<(HourKey, i64)>, LedgerError> {
        let mut by_hour: HashMap<i64, Vec<String>> = HashMap::new();
        for (tenant, hour) in changed {
            by_hour.entry(*hour).or_default().push(tenant.clone());
        }
        let mut totals = Vec::new();
        for (hour, tenants) in by_hour {
            let mut here: HashMap<(String, String), i64> = self
                .store
                .meters_in_hour(hour, &tenants)
                .await?
                .into_iter()
                .map(|(tenant, meter)| ((tenant, meter), 0))
                .collect();
            for (tenant, meter, quantity) in self
                .store
                .ledger()
                .tenant_meter_totals(&tenants, hour, hour + HOUR_MS)
                .await?
            {
                here.insert((tenant, meter), quantity);
            }
            totals.extend(here.into_iter().map(|((tenant, meter), quantity)| {
                (
                    HourKey {
                        tenant,
                        meter,
                        hour_start_ms: hour,
                    },
                    quantity,
                )
            }));
        }
        totals.sort();
        Ok(totals)
    }

    /// Bring one hour up to date: finish decided steps, decide, act, record.
    async fn sync_hour(
        &self,
        key: &HourKey,
        context: &mut RunContext,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        report.hours_examined += 1;
        let grace = duration_ms(self.settings.grace);
        for _ in 0..STEPS_PER_HOUR {
            let now = now_ms();
            let Some((row, events)) = self.store.load_hour(key).await? else {
                return Ok(());
            };
            let state = HourState {
                hour_start_ms: key.hour_start_ms,
                ledger_quantity: row.ledger_quantity,
                credited_quantity: row.credited_quantity,
                too_old: row.too_old,
                events: events.iter().map(sent_event).collect(),
            };
            // Only a correction asks whether the billing period has ended.
            let period_closed = state.unsent() < 0
                && self
                    .period_closed(context, &key.tenant, key.hour_start_ms, now)
                    .await?;
            let context = &*context;
            let customer = context.customers.get(&key.tenant);
            let event_name = context.event_name(&key.meter);
            let situation = Situation {
                now_ms: now,
                grace_ms: grace,
                mapped: customer.is_some(),
                meter_exists: context.stripe_meters.contains_key(event_name),
                period_closed,
            };
            let action = plan(&state, &situation);
            let next_event = |quantity: i64| NewEvent {
                identifier: identifier(
                    &key.tenant,
                    &key.meter,
                    key.hour_start_ms,
                    row.revision + 1,
                ),
                revision: row.revision + 1,
                event_name: event_name.to_owned(),
                customer: customer.cloned().unwrap_or_default(),
                quantity,
                // The hour's start: inside the hour, and in the same billing period
                // as every unit it carries.
                timestamp_s: key.hour_start_ms.div_euclid(1000),
                created_ms: now,
            };
            let credit = |quantity: i64, reason: &str| NewCredit {
                customer: customer.cloned(),
                event_name: event_name.to_owned(),
                quantity,
                reason: reason.to_owned(),
            };
            match action {
                Action::Resume => match self.resume(key, &events, context, report).await? {
                    Step::Progress => continue,
                    Step::TooOld(error) => {
                        self.store
                            .set_outcome(key, HourStatus::Pending, true, Some(&error), 0, now)
                            .await?;
                        continue;
                    }
                    Step::Refused(error) => {
                        report.hours_failed += 1;
                        let retry_at = now + duration_ms(self.settings.error_backoff);
                        self.store
                            .set_outcome(
                                key,
                                HourStatus::Error,
                                row.too_old,
                                Some(&error),
                                retry_at,
                                now,
                            )
                            .await?;
                        return Ok(());
                    }
                },
                Action::Send { quantity } => {
                    let event = next_event(quantity);
                    if !self
                        .store
                        .decide(key, row.version, Some(&event), &[], None, now)
                        .await?
                    {
                        // Changed meanwhile (another syncer, or a fold): next run.
                        return Ok(());
                    }
                    failpoint::hit("after_intent");
                }
                Action::Correct {
                    cancel,
                    resend,
                    credit: owed,
                } => {
                    let event = (resend > 0).then(|| next_event(resend));
                    let owed = (owed > 0)
                        .then(|| credit(owed, "refunded after Stripe's 24-hour cancel window"));
                    if !self
                        .store
                        .decide(
                            key,
                            row.version,
                            event.as_ref(),
                            &cancel,
                            owed.as_ref(),
                            now,
                        )
                        .await?
                    {
                        return Ok(());
                    }
                    tracing::info!(
                        tenant = %key.tenant,
                        meter = %key.meter,
                        hour = %format_time_ms(key.hour_start_ms),
                        cancel = cancel.len(),
                        resend,
                        "billing: correcting an hour Stripe holds too much of"
                    );
                    if let Some(owed) = &owed {
                        self.credit_recorded(key, owed, report);
                    }
                    failpoint::hit("after_intent");
                }
                Action::Credit { quantity } => {
                    let owed = credit(
                        quantity,
                        if situation.beyond_horizon(key.hour_start_ms) || row.too_old {
                            "refunded after the hour left Stripe's 35-day window"
                        } else if situation.period_closed {
                            "refunded after the hour's billing period ended"
                        } else {
                            "refunded after Stripe's 24-hour cancel window"
                        },
                    );
                    if !self
                        .store
                        .decide(key, row.version, None, &[], Some(&owed), now)
                        .await?
                    {
                        return Ok(());
                    }
                    self.credit_recorded(key, &owed, report);
                }
                settled => {
                    let status = settled.status();
                    if status != row.status {
                        note_status(key, &settled);
                    }
                    self.store
                        .set_outcome(key, status, row.too_old, None, 0, now)
                        .await?;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Whether the tenant's billing month holding the hour has ended.
    async fn period_closed(
        &self,
        context: &mut RunContext,
        tenant: &str,
        hour_start_ms: i64,
        now_ms: i64,
    ) -> Result<bool, LedgerError> {
        let anchor = match context.anchors.get(tenant) {
            Some(anchor) => *anchor,
            None => {
                let anchor = match &context.plans {
                    Some(plans) => {
                        let claimed = self.store.ledger().latest_plan(tenant).await?;
                        plans.resolve(tenant, claimed.as_deref()).anchor_day
                    }
                    None => 1,
                };
                context.anchors.insert(tenant.to_owned(), anchor);
                anchor
            }
        };
        let (_, end_s) = window_bounds(Window::Month, anchor, hour_start_ms.div_euclid(1000));
        Ok(end_s * 1000 <= now_ms)
    }

    /// Carry out the hour's decided steps: cancels first, then the events that wait
    /// for them.
    async fn resume(
        &self,
        key: &HourKey,
        events: &[EventRow],
        context: &RunContext,
        report: &mut SyncReport,
    ) -> Result<Step, SyncError> {
        for e in events
            .iter()
            .filter(|e| e.status == EventStatus::CancelIntent)
        {
            let result = self
                .stripe
                .cancel_meter_event(&e.event_name, &e.identifier)
                .await;
            let now = now_ms();
            match result {
                Ok(_) | Err(StripeError::AlreadyCancelled { .. }) => {
                    failpoint::hit("after_cancel");
                    self.store
                        .finish_event(
                            key,
                            &e.identifier,
                            EventStatus::CancelIntent,
                            EventStatus::Cancelled,
                            None,
                            now,
                        )
                        .await?;
                    report.cancels += 1;
                    self.with_metrics(|m| {
                        m.billing.cancels.inc();
                    });
                }
                // Stripe has no such event: it bills nothing for it either.
                Err(StripeError::InvalidRequest {
                    status: 404,
                    ref message,
                    ..
                }) => {
                    tracing::warn!(identifier = %e.identifier, %message, "billing: Stripe has no event to cancel; counting it as cancelled");
                    self.store
                        .finish_event(
                            key,
                            &e.identifier,
                            EventStatus::CancelIntent,
                            EventStatus::Cancelled,
                            Some(message),
                            now,
                        )
                        .await?;
                }
                Err(err @ StripeError::AdjustmentWindowPassed { .. }) => {
                    tracing::warn!(identifier = %e.identifier, error = %err, "billing: too late to cancel; the excess becomes a credit");
                    self.store
                        .cancel_refused(key, &e.identifier, &err.to_string(), now)
                        .await?;
                    return Ok(Step::Progress);
                }
                Err(err) => return refused(err),
            }
        }
        for e in events.iter().filter(|e| e.status == EventStatus::Intent) {
            if e.created_ms < context.started_ms && self.landed(e, context).await? == Some(true) {
                self.store
                    .finish_event(
                        key,
                        &e.identifier,
                        EventStatus::Intent,
                        EventStatus::Delivered,
                        None,
                        now_ms(),
                    )
                    .await?;
                report.already_delivered += 1;
                self.with_metrics(|m| {
                    m.billing.already_delivered.inc();
                });
                continue;
            }
            let result = self
                .stripe
                .send_meter_event(
                    &e.event_name,
                    &e.customer,
                    e.quantity,
                    e.timestamp_s,
                    &e.identifier,
                )
                .await;
            let now = now_ms();
            match result {
                Ok(_) => {
                    // Between Stripe's answer and the record of it.
                    failpoint::hit("after_send");
                    self.store
                        .finish_event(
                            key,
                            &e.identifier,
                            EventStatus::Intent,
                            EventStatus::Delivered,
                            None,
                            now,
                        )
                        .await?;
                    report.events_sent += 1;
                    report.units_sent += e.quantity;
                    self.with_metrics(|m| {
                        m.billing.events_sent.inc();
                        m.billing
                            .units_sent
                            .inc_by(u64::try_from(e.quantity).unwrap_or(0));
                    });
                }
                Err(err) if err.is_already_delivered() => {
                    self.store
                        .finish_event(
                            key,
                            &e.identifier,
                            EventStatus::Intent,
                            EventStatus::Delivered,
                            None,
                            now,
                        )
                        .await?;
                    report.already_delivered += 1;
                    self.with_metrics(|m| {
                        m.billing.already_delivered.inc();
                    });
                }
                Err(err @ StripeError::TimestampOutsideWindow { .. }) => {
                    tracing::warn!(
                        tenant = %key.tenant,
                        meter = %key.meter,
                        hour = %format_time_ms(key.hour_start_ms),
                        units = e.quantity,
                        error = %err,
                        "billing: Stripe refused the hour as outside its window; reported as too old"
                    );
                    let error = err.to_string();
                    self.store
                        .finish_event(
                            key,
                            &e.identifier,
                            EventStatus::Intent,
                            EventStatus::Rejected,
                            Some(&error),
                            now,
                        )
                        .await?;
                    return Ok(Step::TooOld(error));
                }
                // Built differently from the first request with this identifier: not
                // something to guess about. The intent stays for an operator.
                Err(err @ StripeError::Idempotency { .. }) => {
                    tracing::error!(identifier = %e.identifier, error = %err, "billing: idempotency conflict; left pending");
                    return Ok(Step::Refused(err.to_string()));
                }
                Err(err) => {
                    let step = refused(err)?;
                    if let Step::Refused(error) = &step {
                        // A refusal (4xx) means Stripe stored nothing: the next
                        // decision sends under a new identifier.
                        self.store
                            .finish_event(
                                key,
                                &e.identifier,
                                EventStatus::Intent,
                                EventStatus::Rejected,
                                Some(error),
                                now,
                            )
                            .await?;
                    }
                    return Ok(step);
                }
            }
        }
        Ok(Step::Progress)
    }

    /// Whether an intent left by an earlier run landed, from Stripe's summary of the
    /// customer's hour: `Some(true)` if it holds the intent on top of what Turnpike
    /// recorded, `Some(false)` if it holds just that, `None` if that cannot be told
    /// (other steps in flight for the customer's hour, or numbers that fit neither).
    ///
    /// Stripe refuses a repeated identifier for at least 24 hours, which covers a
    /// retry soon after a crash; this covers a collector that stayed down longer.
    /// Summaries lag behind at Stripe: a recent event may not show yet, and then the
    /// repeat is refused as a duplicate anyway.
    async fn landed(&self, e: &EventRow, context: &RunContext) -> Result<Option<bool>, SyncError> {
        let Some(meter_id) = context.stripe_meters.get(&e.event_name) else {
            return Ok(None);
        };
        let (held, others) = self
            .store
            .customer_hour(&e.customer, &e.event_name, e.timestamp_s, &e.identifier)
            .await?;
        if others > 0 {
            return Ok(None);
        }
        let start = e.timestamp_s - e.timestamp_s.rem_euclid(3600);
        let summaries = match self
            .stripe
            .event_summaries(meter_id, &e.customer, start, start + 3600, None)
            .await
        {
            Ok(summaries) => summaries,
            Err(err) => match SyncError::from_stripe(err) {
                SyncError::Stripe(err) => {
                    tracing::warn!(identifier = %e.identifier, error = %err, "billing: cannot read Stripe's summary to check an old intent");
                    return Ok(None);
                }
                run_level => return Err(run_level),
            },
        };
        let value = summaries
            .iter()
            .map(|s| s.aggregated_value)
            .sum::<f64>()
            .round() as i64;
        let landed = if value == held + e.quantity {
            Some(true)
        } else if value == held {
            Some(false)
        } else {
            tracing::warn!(
                identifier = %e.identifier,
                customer = %e.customer,
                recorded = held,
                intent = e.quantity,
                stripe = value,
                "billing: Stripe's summary fits neither outcome of an old intent; sending it again under its identifier"
            );
            None
        };
        tracing::info!(identifier = %e.identifier, ?landed, "billing: checked an intent left by an earlier run");
        Ok(landed)
    }

    /// Compare ledger, sync state and Stripe (see [`super::reconcile`]); stored for
    /// the status.
    pub async fn reconcile(&self, plans: Option<Arc<Plans>>) -> Result<Vec<DriftRow>, SyncError> {
        // Not while a run is sending: its events would show as drift.
        let _one_at_a_time = self.running.lock().await;
        let rows =
            super::reconcile::reconcile(&self.store, &self.stripe, plans.as_deref(), now_ms())
                .await;
        self.refresh_gauges().await;
        rows
    }

    fn credit_recorded(&self, key: &HourKey, credit: &NewCredit, report: &mut SyncReport) {
        tracing::warn!(
            tenant = %key.tenant,
            customer = credit.customer.as_deref(),
            meter = %key.meter,
            hour = %format_time_ms(key.hour_start_ms),
            units = credit.quantity,
            reason = %credit.reason,
            "billing: credit to issue recorded (see billing status)"
        );
        report.credits += 1;
        report.credit_units += credit.quantity;
        self.with_metrics(|m| {
            m.billing.credits_recorded.inc();
            m.billing
                .credit_units_recorded
                .inc_by(u64::try_from(credit.quantity).unwrap_or(0));
        });
    }

    fn with_metrics(&self, f: impl FnOnce(&Metrics)) {
        if let Some(metrics) = &self.metrics {
            f(metrics);
        }
    }

    fn count_run(&self, error: Option<&SyncError>) {
        self.with_metrics(|m| m.billing.run(error.map_or("ok", SyncError::outcome)));
    }

    /// Set the gauges from the stored state.
    pub async fn refresh_gauges(&self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        match BillingStatus::load(&self.store).await {
            Ok(status) => set_gauges(metrics, &status),
            Err(err) => {
                tracing::warn!(error = %err, "billing: cannot read the sync state for metrics")
            }
        }
    }
}

/// The server's billing task: a run every `interval` (backing off while Stripe
/// refuses or is away), a reconciliation every `reconcile_every`. Runs in its own
/// task and its own short transactions, so ingest never waits on Stripe.
pub async fn run_periodically(
    syncer: Arc<Syncer>,
    plans: impl Fn() -> Option<Arc<Plans>> + Send,
    interval: Duration,
    reconcile_every: Duration,
) {
    let mut failures: u32 = 0;
    let mut last_reconcile: Option<std::time::Instant> = None;
    // Soon after start: a restarted collector finishes what it left.
    let mut wait = interval.min(Duration::from_secs(5));
    loop {
        tokio::time::sleep(wait).await;
        match syncer.run_once(plans()).await {
            Ok(_) => failures = 0,
            Err(SyncError::Busy { .. }) => {}
            Err(_) => failures = failures.saturating_add(1),
        }
        let due = last_reconcile.is_none_or(|at| at.elapsed() >= reconcile_every);
        if failures == 0 && due {
            match syncer.reconcile(plans()).await {
                Ok(rows) => tracing::info!(groups = rows.len(), "billing reconciled with Stripe"),
                Err(err) => tracing::warn!(error = %err, "billing reconciliation failed"),
            }
            last_reconcile = Some(std::time::Instant::now());
        }
        wait = (interval * 2u32.pow(failures.min(4))).min(Duration::from_secs(900).max(interval));
    }
}

/// The gauges of the billing metrics, from a status.
pub fn set_gauges(metrics: &Metrics, status: &BillingStatus) {
    let b = &metrics.billing;
    let hours = |s: HourStatus| status.hours.get(s.as_str()).copied().unwrap_or(0);
    b.pending_hours.set(hours(HourStatus::Pending));
    b.error_hours.set(hours(HourStatus::Error));
    b.pending_units.set(status.pending_units);
    b.unmapped_tenants.set(status.unmapped.len() as i64);
    b.unmapped_units.set(status.unmapped_units);
    b.no_meter_units
        .set(status.no_meter.iter().map(|g| g.units).sum());
    b.too_old_units.set(status.too_old_units);
    b.open_credits.set(status.open_credits);
    b.open_credit_units.set(status.open_credit_units);
    b.drift_unexplained_units.set(status.unexplained_units());
    b.backlog_changes.set(status.ledger_seq - status.cursor_seq);
    if let Some(ms) = status
        .last_success
        .as_deref()
        .and_then(crate::event::parse_time_ms)
    {
        b.last_success_seconds.set(ms / 1000);
    }
}

/// Event name -> id of the active meters that can take Turnpike's events: hourly
/// sums plus corrections add up only with formula `sum` and raw ingestion (a `count`
/// meter would count revisions, `last` or a pre-aggregated window would keep only
/// the latest event of an hour).
pub fn usable_meters(meters: Vec<super::stripe::Meter>) -> HashMap<String, String> {
    let mut usable = HashMap::new();
    for m in meters {
        if m.default_aggregation.formula != Formula::Sum || m.event_time_window.is_some() {
            tracing::error!(
                meter = %m.id,
                event_name = %m.event_name,
                formula = m.default_aggregation.formula.as_str(),
                event_time_window = m.event_time_window.as_deref(),
                "billing: this Stripe meter cannot take Turnpike's hourly sums and corrections \
                 (it needs formula sum and raw event ingestion); nothing is sent to it"
            );
            continue;
        }
        usable.insert(m.event_name, m.id);
    }
    usable
}

/// A Stripe error for one hour: the run stops for a wrong key or an unavailable
/// Stripe; anything else is this hour's problem.
fn refused(err: StripeError) -> Result<Step, SyncError> {
    match SyncError::from_stripe(err) {
        SyncError::Stripe(err) => Ok(Step::Refused(err.to_string())),
        run_level => Err(run_level),
    }
}

fn sent_event(e: &EventRow) -> SentEvent {
    SentEvent {
        identifier: e.identifier.clone(),
        quantity: e.quantity,
        status: e.status,
        created_ms: e.created_ms,
    }
}

/// Log an hour settling into a status worth an operator's attention, once.
fn note_status(key: &HourKey, action: &Action) {
    let hour = format_time_ms(key.hour_start_ms);
    match action {
        Action::Unmapped { unsent } => tracing::info!(
            tenant = %key.tenant, meter = %key.meter, %hour, units = unsent,
            "billing: tenant has no stripe_customer; usage kept until it is mapped"
        ),
        Action::NoMeter { unsent } => tracing::warn!(
            tenant = %key.tenant, meter = %key.meter, %hour, units = unsent,
            "billing: no active Stripe meter for this meter's event name; usage kept until one exists"
        ),
        Action::Expired { unsent } => tracing::warn!(
            tenant = %key.tenant, meter = %key.meter, %hour, units = unsent,
            "billing: usage older than Stripe's 35 days was never sent; reported as too old"
        ),
        _ => {}
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
