//! What to do about one hour of one tenant's meter, decided from its sync state
//! alone: pure, so every case unit-tests without Stripe or a database.
//!
//! Stripe should hold `ledger + credited` for the hour: the ledger's billable units,
//! plus units a refund took back after Stripe could no longer cancel them (those are
//! owed back as credits). `unsent = ledger - (held - credited)` is what is missing
//! (positive) or too much (negative).

/// One hour, in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;
/// Stripe takes meter events with timestamps up to 35 days back.
pub const STRIPE_PAST_WINDOW_MS: i64 = 35 * 24 * HOUR_MS;
/// Kept clear of the 35-day edge: our clock and Stripe's differ, and a send takes time.
pub const HORIZON_MARGIN_MS: i64 = HOUR_MS;
/// Stripe cancels an event only within 24 hours of receiving it. Age is measured
/// from the intent (written before the send, so never later than Stripe's receipt)
/// and an hour is kept in hand for clock skew.
pub const CANCEL_WINDOW_MS: i64 = 23 * HOUR_MS;

/// Where one meter event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventStatus {
    /// Written, not yet confirmed by Stripe: it may or may not have landed.
    Intent,
    /// Stripe holds it.
    Delivered,
    /// Stripe holds it and refused to cancel it (past its 24 hours).
    Final,
    /// Stripe holds it; a cancel is decided and not yet confirmed.
    CancelIntent,
    /// Cancelled at Stripe: no longer counts.
    Cancelled,
    /// Stripe refused it: it never landed.
    Rejected,
    /// Decided but never sent (the cancel it waited for failed), so it never landed.
    Abandoned,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Intent => "intent",
            EventStatus::Delivered => "delivered",
            EventStatus::Final => "final",
            EventStatus::CancelIntent => "cancel_intent",
            EventStatus::Cancelled => "cancelled",
            EventStatus::Rejected => "rejected",
            EventStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(text: &str) -> Option<EventStatus> {
        Some(match text {
            "intent" => EventStatus::Intent,
            "delivered" => EventStatus::Delivered,
            "final" => EventStatus::Final,
            "cancel_intent" => EventStatus::CancelIntent,
            "cancelled" => EventStatus::Cancelled,
            "rejected" => EventStatus::Rejected,
            "abandoned" => EventStatus::Abandoned,
            _ => return None,
        })
    }

    /// Stripe counts it (as far as Turnpike knows).
    pub fn held(self) -> bool {
        matches!(
            self,
            EventStatus::Delivered | EventStatus::Final | EventStatus::CancelIntent
        )
    }

    /// A decided step not yet confirmed: finish it before deciding anything new.
    pub fn pending(self) -> bool {
        matches!(self, EventStatus::Intent | EventStatus::CancelIntent)
    }
}

/// An hour's sync status, as stored and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HourStatus {
    /// Not closed yet: sent after its end plus the grace period.
    Open,
    /// Closed, with something to send, cancel or credit.
    Pending,
    /// Stripe holds what it should.
    Synced,
    /// The tenant has no Stripe customer in the plans file.
    Unmapped,
    /// No active Stripe meter has the meter's event name.
    NoMeter,
    /// Older than Stripe's 35-day window and never (fully) sent.
    Expired,
    /// Stripe refused a request for this hour; retried later.
    Error,
}

impl HourStatus {
    pub const ALL: [HourStatus; 7] = [
        HourStatus::Open,
        HourStatus::Pending,
        HourStatus::Synced,
        HourStatus::Unmapped,
        HourStatus::NoMeter,
        HourStatus::Expired,
        HourStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HourStatus::Open => "open",
            HourStatus::Pending => "pending",
            HourStatus::Synced => "synced",
            HourStatus::Unmapped => "unmapped",
            HourStatus::NoMeter => "no_meter",
            HourStatus::Expired => "expired",
            HourStatus::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<HourStatus> {
        HourStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One meter event of the hour, as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentEvent {
    pub identifier: String,
    pub quantity: i64,
    pub status: EventStatus,
    /// When the intent was written (our clock).
    pub created_ms: i64,
}

/// One hour's sync state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourState {
    pub hour_start_ms: i64,
    /// Billable units in the ledger.
    pub ledger_quantity: i64,
    /// Units recorded as credits to issue.
    pub credited_quantity: i64,
    /// Stripe refused the hour's timestamp as too old.
    pub too_old: bool,
    pub events: Vec<SentEvent>,
}

impl HourState {
    /// Units Stripe holds for this hour.
    pub fn held(&self) -> i64 {
        self.events
            .iter()
            .filter(|e| e.status.held())
            .map(|e| e.quantity)
            .sum()
    }

    /// Units Stripe lacks (positive) or holds too many of (negative).
    pub fn unsent(&self) -> i64 {
        self.ledger_quantity - (self.held() - self.credited_quantity)
    }

    pub fn has_pending(&self) -> bool {
        self.events.iter().any(|e| e.status.pending())
    }
}

/// What the planner needs to know beyond the hour itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    pub now_ms: i64,
    /// How long after its end an hour is left for late events before it is sent.
    pub grace_ms: i64,
    /// The tenant has a Stripe customer.
    pub mapped: bool,
    /// An active Stripe meter has this meter's event name.
    pub meter_exists: bool,
    /// The tenant's billing period holding this hour has ended: its invoice may be
    /// final, and Stripe does not correct a final invoice for cancelled events.
    pub period_closed: bool,
}

impl Situation {
    pub fn closed(&self, hour_start_ms: i64) -> bool {
        hour_start_ms + HOUR_MS + self.grace_ms <= self.now_ms
    }

    /// Stripe would refuse a timestamp this old (or nearly so).
    pub fn beyond_horizon(&self, hour_start_ms: i64) -> bool {
        hour_start_ms < self.now_ms - STRIPE_PAST_WINDOW_MS + HORIZON_MARGIN_MS
    }

    fn cancellable(&self, event: &SentEvent) -> bool {
        event.status == EventStatus::Delivered && self.now_ms - event.created_ms < CANCEL_WINDOW_MS
    }
}

/// The decision for one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Finish the steps already decided (intents, cancels) first.
    Resume,
    /// Not closed yet.
    Wait,
    /// Stripe holds what it should.
    Synced,
    Unmapped {
        unsent: i64,
    },
    NoMeter {
        unsent: i64,
    },
    /// Too old for Stripe: `unsent` units will never be billed through it.
    Expired {
        unsent: i64,
    },
    /// Send one more event for the missing units.
    Send {
        quantity: i64,
    },
    /// Stripe holds too much: cancel these events (still within Stripe's 24 hours),
    /// send `resend` in their place, and record `credit` for what cancelling cannot
    /// take back.
    Correct {
        cancel: Vec<String>,
        resend: i64,
        credit: i64,
    },
    /// Stripe holds too much and nothing can be cancelled any more.
    Credit {
        quantity: i64,
    },
}

impl Action {
    /// The status an hour has while this is its decision.
    pub fn status(&self) -> HourStatus {
        match self {
            Action::Wait => HourStatus::Open,
            Action::Synced => HourStatus::Synced,
            Action::Unmapped { .. } => HourStatus::Unmapped,
            Action::NoMeter { .. } => HourStatus::NoMeter,
            Action::Expired { .. } => HourStatus::Expired,
            Action::Resume
            | Action::Send { .. }
            | Action::Correct { .. }
            | Action::Credit { .. } => HourStatus::Pending,
        }
    }
}

/// Decide what to do about `state`.
pub fn plan(state: &HourState, situation: &Situation) -> Action {
    if state.has_pending() {
        return Action::Resume;
    }
    let unsent = state.unsent();
    if unsent == 0 {
        return Action::Synced;
    }
    if !situation.closed(state.hour_start_ms) {
        return Action::Wait;
    }
    let too_old = state.too_old || situation.beyond_horizon(state.hour_start_ms);
    if unsent > 0 {
        return if too_old {
            Action::Expired { unsent }
        } else if !situation.mapped {
            Action::Unmapped { unsent }
        } else if !situation.meter_exists {
            Action::NoMeter { unsent }
        } else {
            Action::Send { quantity: unsent }
        };
    }
    // Stripe holds too much (a refund, or a row that moved away, after a send).
    let excess = -unsent;
    if too_old || situation.period_closed {
        // Too old: whatever is cancelled could not be sent again. Period closed: a
        // cancel would not reach an invoice already final, so it could vanish.
        return Action::Credit { quantity: excess };
    }
    if !situation.mapped {
        return Action::Unmapped { unsent };
    }
    if !situation.meter_exists {
        return Action::NoMeter { unsent };
    }
    // Cancel the fewest events that cover the excess, largest first; send back what
    // they held beyond it. Whatever cancelling cannot cover is a credit.
    let mut candidates: Vec<&SentEvent> = state
        .events
        .iter()
        .filter(|e| situation.cancellable(e))
        .collect();
    candidates.sort_by(|a, b| {
        b.quantity
            .cmp(&a.quantity)
            .then_with(|| a.identifier.cmp(&b.identifier))
    });
    let mut cancel = Vec::new();
    let mut cancelled = 0;
    for event in candidates {
        if cancelled >= excess {
            break;
        }
        cancelled += event.quantity;
        cancel.push(event.identifier.clone());
    }
    if cancel.is_empty() {
        return Action::Credit { quantity: excess };
    }
    let back = cancelled - excess;
    Action::Correct {
        cancel,
        resend: back.max(0),
        credit: (-back).max(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 1_000 * HOUR_MS;
    const GRACE: i64 = 5 * 60_000;

    fn at(now_ms: i64) -> Situation {
        Situation {
            now_ms,
            grace_ms: GRACE,
            mapped: true,
            meter_exists: true,
            period_closed: false,
        }
    }

    /// Right after the hour closed.
    fn closed() -> Situation {
        at(H + HOUR_MS + GRACE)
    }

    fn event(id: &str, quantity: i64, status: EventStatus, created_ms: i64) -> SentEvent {
        SentEvent {
            identifier: id.into(),
            quantity,
            status,
            created_ms,
        }
    }

    fn hour(ledger: i64, events: Vec<SentEvent>) -> HourState {
        HourState {
            hour_start_ms: H,
            ledger_quantity: ledger,
            credited_quantity: 0,
            too_old: false,
            events,
        }
    }

    fn delivered(id: &str, quantity: i64) -> SentEvent {
        event(id, quantity, EventStatus::Delivered, H + HOUR_MS + GRACE)
    }

    #[test]
    fn an_hour_is_sent_only_after_its_end_plus_the_grace() {
        let state = hour(42, vec![]);
        assert_eq!(plan(&state, &at(H + HOUR_MS + GRACE - 1)), Action::Wait);
        assert_eq!(plan(&state, &closed()), Action::Send { quantity: 42 });
    }

    #[test]
    fn pending_steps_are_finished_before_anything_new_is_decided() {
        for status in [EventStatus::Intent, EventStatus::CancelIntent] {
            let state = hour(99, vec![event("a", 5, status, H)]);
            assert_eq!(plan(&state, &at(H)), Action::Resume, "{status:?}");
        }
    }

    #[test]
    fn an_hour_stripe_holds_exactly_is_synced_whatever_the_history() {
        let state = hour(
            7,
            vec![
                event("a", 5, EventStatus::Cancelled, H),
                event("b", 9, EventStatus::Rejected, H),
                event("c", 3, EventStatus::Abandoned, H),
                delivered("d", 4),
                event("e", 3, EventStatus::Final, H),
            ],
        );
        assert_eq!(state.held(), 7);
        assert_eq!(plan(&state, &closed()), Action::Synced);
        // Nothing billable and nothing sent is synced too, open or not.
        assert_eq!(plan(&hour(0, vec![]), &at(H)), Action::Synced);
    }

    #[test]
    fn late_units_after_a_send_go_out_as_a_further_event_for_the_difference() {
        let state = hour(15, vec![delivered("r1", 10)]);
        assert_eq!(plan(&state, &closed()), Action::Send { quantity: 5 });
    }

    #[test]
    fn unmapped_tenants_and_missing_meters_wait_without_sending() {
        let state = hour(15, vec![]);
        let unmapped = Situation {
            mapped: false,
            ..closed()
        };
        assert_eq!(plan(&state, &unmapped), Action::Unmapped { unsent: 15 });
        let no_meter = Situation {
            meter_exists: false,
            ..closed()
        };
        assert_eq!(plan(&state, &no_meter), Action::NoMeter { unsent: 15 });
    }

    #[test]
    fn usage_beyond_stripes_35_days_is_expired_not_sent() {
        let old = Situation {
            now_ms: H + STRIPE_PAST_WINDOW_MS,
            ..closed()
        };
        assert_eq!(plan(&hour(8, vec![]), &old), Action::Expired { unsent: 8 });
        // Stripe's own refusal counts even when our clock disagrees.
        let mut refused = hour(8, vec![]);
        refused.too_old = true;
        assert_eq!(plan(&refused, &closed()), Action::Expired { unsent: 8 });
        // Unmapped usage that old is expired as well: it can no longer be sent.
        let unmapped_old = Situation {
            mapped: false,
            ..old
        };
        assert_eq!(
            plan(&hour(8, vec![]), &unmapped_old),
            Action::Expired { unsent: 8 }
        );
    }

    #[test]
    fn a_refund_within_24_hours_cancels_and_resends_the_corrected_total() {
        let state = hour(7, vec![delivered("r1", 10)]);
        assert_eq!(
            plan(&state, &closed()),
            Action::Correct {
                cancel: vec!["r1".into()],
                resend: 7,
                credit: 0
            }
        );
        // Everything refunded: cancel, send nothing back.
        let all = hour(0, vec![delivered("r1", 10)]);
        assert_eq!(
            plan(&all, &closed()),
            Action::Correct {
                cancel: vec!["r1".into()],
                resend: 0,
                credit: 0
            }
        );
    }

    #[test]
    fn a_refund_cancels_the_fewest_events_that_cover_it() {
        let state = hour(
            17,
            vec![delivered("r1", 10), delivered("r2", 2), delivered("r3", 8)],
        );
        // 3 too many: cancelling r1 (10) alone covers it; 7 go back.
        assert_eq!(
            plan(&state, &closed()),
            Action::Correct {
                cancel: vec!["r1".into()],
                resend: 7,
                credit: 0
            }
        );
    }

    #[test]
    fn a_refund_after_stripes_24_hours_becomes_a_credit() {
        let day_later = at(H + HOUR_MS + GRACE + CANCEL_WINDOW_MS);
        let state = hour(7, vec![delivered("r1", 10)]);
        assert_eq!(plan(&state, &day_later), Action::Credit { quantity: 3 });
        // Stripe said no to the cancel: final, never tried again.
        let refused = hour(
            7,
            vec![event("r1", 10, EventStatus::Final, day_later.now_ms)],
        );
        assert_eq!(plan(&refused, &closed()), Action::Credit { quantity: 3 });
    }

    #[test]
    fn what_cancelling_cannot_cover_is_credited() {
        let day_later = H + HOUR_MS + GRACE + CANCEL_WINDOW_MS;
        let state = hour(
            2,
            vec![
                event("old", 10, EventStatus::Delivered, H + HOUR_MS + GRACE),
                event("new", 4, EventStatus::Delivered, day_later - 1000),
            ],
        );
        // 12 too many; only "new" (4) can still be cancelled: 8 are owed as credit.
        assert_eq!(
            plan(&state, &at(day_later)),
            Action::Correct {
                cancel: vec!["new".into()],
                resend: 0,
                credit: 8
            }
        );
    }

    #[test]
    fn a_recorded_credit_settles_the_hour() {
        let mut state = hour(7, vec![event("r1", 10, EventStatus::Final, H)]);
        state.credited_quantity = 3;
        assert_eq!(plan(&state, &closed()), Action::Synced);
        // Units billable again later are sent on top.
        state.ledger_quantity = 9;
        assert_eq!(plan(&state, &closed()), Action::Send { quantity: 2 });
    }

    #[test]
    fn a_refund_of_an_expired_hour_is_credited_since_nothing_could_be_resent() {
        let old = Situation {
            now_ms: H + STRIPE_PAST_WINDOW_MS,
            ..closed()
        };
        let state = hour(
            7,
            vec![event("r1", 10, EventStatus::Delivered, old.now_ms - 1)],
        );
        assert_eq!(plan(&state, &old), Action::Credit { quantity: 3 });
    }

    #[test]
    fn a_refund_in_a_billing_period_that_has_ended_is_credited_not_cancelled() {
        let ended = Situation {
            period_closed: true,
            ..closed()
        };
        let state = hour(7, vec![delivered("r1", 10)]);
        assert_eq!(plan(&state, &ended), Action::Credit { quantity: 3 });
        // Late units are still sent: Stripe bills them on the next invoice.
        assert_eq!(
            plan(&hour(12, vec![delivered("r1", 10)]), &ended),
            Action::Send { quantity: 2 }
        );
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in HourStatus::ALL {
            assert_eq!(HourStatus::parse(status.as_str()), Some(status));
        }
        for status in [
            EventStatus::Intent,
            EventStatus::Delivered,
            EventStatus::Final,
            EventStatus::CancelIntent,
            EventStatus::Cancelled,
            EventStatus::Rejected,
            EventStatus::Abandoned,
        ] {
            assert_eq!(EventStatus::parse(status.as_str()), Some(status));
        }
    }
}
