//! The pure core of check-and-consume: which limits a request touches, their windows
//! and Redis keys, and how the script's `used` values become an answer.
//!
//! A [`Ticket`] is computed for one request at one instant (Redis's clock, as the
//! counter last learned it); the consume script re-checks that every window still
//! contains Redis's own time and asks for a new ticket when not.

use turnpike_plans::{window_bounds, Limit, ResolvedPlan, Window};
use turnpike_wire::{ConsumeResponse, LimitStatus, MeterCost};

use crate::keys::{window_suffix, TenantKeys};

/// How long a window counter outlives its window: a consume computed just before
/// the window ended may still read it.
pub const EXPIRE_GRACE_SECS: i64 = 10;

/// One limit a consume is checked against, in its current window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub meter: String,
    pub window: Window,
    pub max: u64,
    pub soft: Option<u64>,
    /// Window start, unix seconds (part of the Redis key).
    pub start: i64,
    /// Window end (exclusive), unix seconds.
    pub end: i64,
    pub cost: u64,
}

/// The limits one request is checked against, with the plan and its billing month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub plan: String,
    /// The tenant's billing month `[start, end)` at the ticket's instant.
    pub month: (i64, i64),
    pub slots: Vec<Slot>,
}

impl Ticket {
    /// The limits of `plan` that count a meter of the request, in plan order, each
    /// with that meter's cost. Meters no limit counts are not checked here.
    pub fn for_request(plan: ResolvedPlan<'_>, meters: &[MeterCost], now: i64) -> Ticket {
        let slots = plan
            .limits
            .iter()
            .filter_map(|limit| {
                let cost = meters.iter().find(|m| m.meter == limit.meter)?.cost;
                Some(Slot::new(limit, plan.anchor_day, now, cost))
            })
            .collect();
        Ticket::new(plan, now, slots)
    }

    /// Every limit of `plan` at cost 0: what a usage read reports.
    pub fn for_plan(plan: ResolvedPlan<'_>, now: i64) -> Ticket {
        let slots = plan
            .limits
            .iter()
            .map(|limit| Slot::new(limit, plan.anchor_day, now, 0))
            .collect();
        Ticket::new(plan, now, slots)
    }

    fn new(plan: ResolvedPlan<'_>, now: i64, slots: Vec<Slot>) -> Ticket {
        Ticket {
            plan: plan.name.to_owned(),
            month: window_bounds(Window::Month, plan.anchor_day, now),
            slots,
        }
    }

    /// The window counter keys, one per slot, in slot order.
    pub fn keys(&self, keys: &TenantKeys) -> Vec<String> {
        self.slots
            .iter()
            .map(|s| keys.window(&s.meter, s.window, s.start))
            .collect()
    }

    /// Whether any slot's window is long enough to be re-seeded from the ledger
    /// after Redis loses it (hours and longer; shorter windows simply restart).
    pub fn has_long_windows(&self) -> bool {
        self.slots.iter().any(|s| s.window.is_long())
    }

    /// When a lease taken on this ticket must end at the latest: its earliest window
    /// end (unix seconds), as the lease script computes it.
    pub fn lease_end_secs(&self) -> Option<i64> {
        self.slots.iter().map(|s| s.end).min()
    }

    /// The slots as an idempotency record stores them: `suffix=cost;...`, so a refund
    /// knows which counters to give back to, even after the plans changed.
    pub fn record_slots(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.slots.iter().filter(|s| s.cost > 0).enumerate() {
            if i > 0 {
                out.push(';');
            }
            out.push_str(&window_suffix(&s.meter, s.window, s.start));
            out.push('=');
            out.push_str(&s.cost.to_string());
        }
        out
    }

    /// The first limit whose maximum is below this request's cost: such a request can
    /// never be allowed, however long the client waits.
    pub fn never_fits(&self) -> Option<&Slot> {
        self.slots.iter().find(|s| s.cost > s.max)
    }

    /// The answer for the `used` values the script returned (after the increment
    /// when allowed; as found when denied).
    pub fn answer(&self, allowed: bool, used: &[u64], replayed: bool, now: i64) -> ConsumeResponse {
        let limits = self.statuses(used, now);
        let mut answer = ConsumeResponse {
            allowed,
            plan: self.plan.clone(),
            limits,
            denied_by: None,
            retry_after: None,
            replayed,
            time_ms: None,
            exceeds_limit: None,
        };
        if allowed {
            return answer;
        }
        if let Some(slot) = self.never_fits() {
            // No Retry-After: waiting cannot help.
            answer.denied_by = Some(slot.name.clone());
            answer.exceeds_limit = Some(slot.name.clone());
            return answer;
        }
        let denying = || {
            self.slots
                .iter()
                .zip(used)
                .filter(|(slot, &used)| used.saturating_add(slot.cost) > slot.max)
                .map(|(slot, _)| slot)
        };
        // Wait for the latest-ending denying window: only then do all have room.
        answer.retry_after = Some(denying().map(|s| secs_until(s.end, now)).max().unwrap_or(1));
        answer.denied_by = denying().next().map(|s| s.name.clone());
        answer
    }

    /// The per-limit status for `used` values in slot order.
    pub fn statuses(&self, used: &[u64], now: i64) -> Vec<LimitStatus> {
        self.slots
            .iter()
            .zip(used)
            .map(|(slot, &used)| slot.status(used, now))
            .collect()
    }
}

impl Slot {
    fn new(limit: &Limit, anchor_day: u8, now: i64, cost: u64) -> Slot {
        let (start, end) = window_bounds(limit.window, anchor_day, now);
        Slot {
            name: limit.name.clone(),
            meter: limit.meter.clone(),
            window: limit.window,
            max: limit.max,
            soft: limit.soft,
            start,
            end,
            cost,
        }
    }

    fn status(&self, used: u64, now: i64) -> LimitStatus {
        LimitStatus {
            name: self.name.clone(),
            meter: self.meter.clone(),
            window: self.window.as_str().to_owned(),
            window_secs: u64::try_from(self.end - self.start).unwrap_or(0),
            max: self.max,
            used,
            remaining: self.max.saturating_sub(used),
            reset: secs_until(self.end, now),
            soft: self.soft,
            soft_crossed: self.soft.is_some_and(|soft| used >= soft),
        }
    }
}

/// The windows of several tickets of one tenant, each once: what one
/// `consume_many.lua` call checks, with each ticket's slots as indexes into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowUnion {
    pub plan: String,
    pub month: (i64, i64),
    /// Costs are not used here: each ticket keeps its own.
    pub slots: Vec<Slot>,
}

impl WindowUnion {
    pub fn new(ticket: &Ticket) -> WindowUnion {
        WindowUnion {
            plan: ticket.plan.clone(),
            month: ticket.month,
            slots: Vec::new(),
        }
    }

    /// The indexes of `ticket`'s slots, in its slot order, adding the windows not yet
    /// here. `None`, and nothing added, when the ticket is of another plan or month, or
    /// takes from a window counter here under another maximum or end.
    pub fn join(&mut self, ticket: &Ticket) -> Option<Vec<usize>> {
        if ticket.plan != self.plan || ticket.month != self.month {
            return None;
        }
        let before = self.slots.len();
        let mut indexes = Vec::with_capacity(ticket.slots.len());
        for slot in &ticket.slots {
            let same_counter = |s: &Slot| {
                s.meter == slot.meter && s.window == slot.window && s.start == slot.start
            };
            match self.slots.iter().position(same_counter) {
                Some(i) if self.slots[i].max != slot.max || self.slots[i].end != slot.end => {
                    // Nothing added: the windows are as they were.
                    self.slots.truncate(before);
                    return None;
                }
                Some(i) => indexes.push(i),
                None => {
                    indexes.push(self.slots.len());
                    self.slots.push(slot.clone());
                }
            }
        }
        Some(indexes)
    }

    /// Whether any window is long enough to be re-seeded (see [`Ticket::has_long_windows`]).
    pub fn has_long_windows(&self) -> bool {
        self.slots.iter().any(|s| s.window.is_long())
    }

    /// The window counter keys, in slot order.
    pub fn keys(&self, keys: &TenantKeys) -> Vec<String> {
        self.slots
            .iter()
            .map(|s| keys.window(&s.meter, s.window, s.start))
            .collect()
    }
}

/// Parse a record's `suffix=cost;...` slots (see [`Ticket::record_slots`]).
pub fn parse_record_slots(text: &str) -> Option<Vec<(String, u64)>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(';')
        .map(|slot| {
            let (suffix, cost) = slot.rsplit_once('=')?;
            Some((suffix.to_owned(), cost.parse().ok()?))
        })
        .collect()
}

/// Whole seconds from `now` to `end`, at least 1. `now` is truncated to the second,
/// so this never undershoots the real time left.
fn secs_until(end: i64, now: i64) -> u64 {
    u64::try_from(end - now).unwrap_or(0).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnpike_plans::Plans;

    const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [
  { name = "per-minute", meter = "requests", window = "minute", max = 60 },
  { name = "search-daily", meter = "search_units", window = "day", max = 100 },
  { name = "monthly", meter = "requests", window = "month", max = 10000, soft = 8000 },
]
"#;
    /// 2026-11-27 10:17:42 UTC.
    const NOW: i64 = 1_795_737_600 + 10 * 3600 + 17 * 60 + 42;

    fn plans() -> Plans {
        Plans::parse(PLANS).unwrap()
    }

    fn meters(list: &[(&str, u64)]) -> Vec<MeterCost> {
        list.iter()
            .map(|&(meter, cost)| MeterCost {
                meter: meter.into(),
                cost,
            })
            .collect()
    }

    #[test]
    fn only_limits_counting_a_requested_meter_are_selected_in_plan_order() {
        let plans = plans();
        let t = Ticket::for_request(
            plans.resolve("acme", None),
            &meters(&[("requests", 2)]),
            NOW,
        );
        let names: Vec<_> = t.slots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["per-minute", "monthly"]);
        assert!(t.slots.iter().all(|s| s.cost == 2));
    }

    #[test]
    fn tickets_of_one_plan_and_month_join_a_union_of_their_windows() {
        let plans = plans();
        let at = |list: &[(&str, u64)], now| {
            Ticket::for_request(plans.resolve("acme", None), &meters(list), now)
        };
        let requests = at(&[("requests", 1)], NOW);
        let mut union = WindowUnion::new(&requests);
        assert_eq!(union.join(&requests), Some(vec![0, 1]));
        // Another cost, a second later: the same counters.
        assert_eq!(
            union.join(&at(&[("requests", 7)], NOW + 1)),
            Some(vec![0, 1])
        );
        // Another meter adds its window, in the ticket's slot order.
        let search = at(&[("requests", 1), ("search_units", 5)], NOW);
        assert_eq!(union.join(&search), Some(vec![0, 2, 1]));
        assert_eq!(union.slots.len(), 3);
        assert!(union.has_long_windows());
        // The next minute is a new counter.
        assert_eq!(
            union.join(&at(&[("requests", 1)], NOW + 60)),
            Some(vec![3, 1])
        );
        // A counter here under another maximum, another plan or month: not joined,
        // and nothing added.
        let mut other_max = at(&[("requests", 1), ("search_units", 1)], NOW + 120);
        other_max.slots[1].max += 1;
        assert_eq!(union.join(&other_max), None);
        assert_eq!(union.slots.len(), 4);
        let mut other_plan = requests.clone();
        other_plan.plan = "pro".into();
        assert_eq!(union.join(&other_plan), None);
        let next_month = at(&[("requests", 1)], NOW + 40 * 86_400);
        assert_eq!(union.join(&next_month), None);
        let keys = union.keys(&TenantKeys::new("acme"));
        assert_eq!(keys[0], requests.keys(&TenantKeys::new("acme"))[0]);
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn keys_carry_the_window_start_and_the_record_lists_what_a_refund_gives_back() {
        let plans = plans();
        let t = Ticket::for_request(
            plans.resolve("acme", None),
            &meters(&[("requests", 1)]),
            NOW,
        );
        let minute_start = NOW - 42;
        let keys = TenantKeys::new("acme");
        let prefix = format!("tp:{{{:03}}}:acme", crate::keys::bucket("acme"));
        assert_eq!(
            t.keys(&keys),
            [
                format!("{prefix}:q:requests:minute:{minute_start}"),
                format!("{prefix}:q:requests:month:1793491200"), // 2026-11-01
            ]
        );
        assert_eq!(
            t.record_slots(),
            format!("requests:minute:{minute_start}=1;requests:month:1793491200=1")
        );
        assert_eq!(
            parse_record_slots(&t.record_slots()).unwrap(),
            [
                (format!("requests:minute:{minute_start}"), 1),
                ("requests:month:1793491200".to_owned(), 1)
            ]
        );
        assert_eq!(t.month, (1_793_491_200, 1_796_083_200));
        assert!(t.has_long_windows());
    }

    #[test]
    fn a_cost_above_a_maximum_never_fits_and_gets_no_retry_after() {
        let plans = plans();
        let t = Ticket::for_request(
            plans.resolve("acme", None),
            &meters(&[("requests", 61)]),
            NOW,
        );
        assert_eq!(t.never_fits().map(|s| s.name.as_str()), Some("per-minute"));
        let r = t.answer(false, &[0, 0], false, NOW);
        assert_eq!(r.exceeds_limit.as_deref(), Some("per-minute"));
        assert_eq!(r.retry_after, None);
    }

    #[test]
    fn allowed_answer_reports_remaining_reset_and_soft_crossing() {
        let plans = plans();
        let t = Ticket::for_request(
            plans.resolve("acme", None),
            &meters(&[("requests", 1)]),
            NOW,
        );
        let r = t.answer(true, &[59, 8000], false, NOW);
        assert!(r.allowed && !r.replayed);
        assert_eq!((r.denied_by, r.retry_after), (None, None));
        let minute = &r.limits[0];
        assert_eq!(
            (
                minute.used,
                minute.remaining,
                minute.reset,
                minute.window_secs
            ),
            (59, 1, 18, 60)
        );
        assert!(!minute.soft_crossed);
        let month = &r.limits[1];
        assert_eq!(
            (month.remaining, month.soft, month.soft_crossed),
            (2000, Some(8000), true)
        );
        assert_eq!(month.window_secs, 30 * 86_400);
    }

    #[test]
    fn denied_answer_names_the_first_full_limit_and_waits_for_the_latest_window() {
        let plans = plans();
        let t = Ticket::for_request(
            plans.resolve("acme", None),
            &meters(&[("requests", 1)]),
            NOW,
        );
        let only_minute = t.answer(false, &[60, 10], false, NOW);
        assert_eq!(only_minute.denied_by.as_deref(), Some("per-minute"));
        assert_eq!(only_minute.retry_after, Some(18));

        let both = t.answer(false, &[60, 10_000], false, NOW);
        assert_eq!(both.denied_by.as_deref(), Some("per-minute"));
        let month_end = 1_796_083_200; // 2026-12-01
        assert_eq!(both.retry_after, Some((month_end - NOW) as u64));
    }

    #[test]
    fn a_cost_larger_than_the_room_left_denies_even_below_max() {
        let plans = plans();
        let t = Ticket::for_request(
            plans.resolve("acme", None),
            &meters(&[("requests", 5)]),
            NOW,
        );
        let r = t.answer(false, &[56, 0], false, NOW);
        assert_eq!(r.denied_by.as_deref(), Some("per-minute"));
        assert_eq!(r.limits[0].remaining, 4);
    }

    #[test]
    fn reset_and_retry_after_are_at_least_one_second() {
        let plans = plans();
        let end_of_minute = NOW - 42 + 59;
        let t = Ticket::for_request(
            plans.resolve("acme", None),
            &meters(&[("requests", 1)]),
            end_of_minute,
        );
        let r = t.answer(false, &[60, 0], false, end_of_minute);
        assert_eq!(r.limits[0].reset, 1);
        assert_eq!(r.retry_after, Some(1));
        // A replay after the window ended still says at least 1.
        let later = t.answer(false, &[60, 0], true, end_of_minute + 30);
        assert_eq!((later.limits[0].reset, later.retry_after), (1, Some(1)));
    }

    #[test]
    fn usage_ticket_covers_every_limit_at_zero_cost() {
        let plans = plans();
        let t = Ticket::for_plan(plans.resolve("acme", None), NOW);
        assert_eq!(t.slots.len(), 3);
        assert!(t.slots.iter().all(|s| s.cost == 0));
    }
}
