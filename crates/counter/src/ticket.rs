//! The pure core of check-and-consume: which limits a request touches, their Redis
//! keys and window bounds, and how the script's `used` values become an answer.
//!
//! A [`Ticket`] holds every fixed part of an answer. It is stored (as compact JSON)
//! in the idempotency record, so a replay gets the same answer even after the plans
//! changed, and a refund knows exactly which keys and costs to give back.

use serde::{Deserialize, Serialize};
use turnpike_plans::{window_bounds, Limit, ResolvedPlan, Window};
use turnpike_wire::{ConsumeResponse, LimitStatus, MeterCost};

/// How long a window counter outlives its window. Redis deletes a key at once when
/// EXPIREAT is in the past, so this also absorbs clock skew between replicas.
pub const EXPIRE_GRACE_SECS: i64 = 10;

/// One limit a consume is checked against, in its current window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "m")]
    pub meter: String,
    #[serde(rename = "w")]
    pub window: Window,
    #[serde(rename = "x")]
    pub max: u64,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub soft: Option<u64>,
    /// Window start, unix seconds (part of the Redis key).
    #[serde(rename = "b")]
    pub start: i64,
    /// Window end (exclusive), unix seconds.
    #[serde(rename = "e")]
    pub end: i64,
    #[serde(rename = "c")]
    pub cost: u64,
}

/// The fixed parts of one consume's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    #[serde(rename = "p")]
    pub plan: String,
    #[serde(rename = "l")]
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
        Ticket {
            plan: plan.name.to_owned(),
            slots,
        }
    }

    /// Every limit of `plan` at cost 0: what a usage read reports.
    pub fn for_plan(plan: ResolvedPlan<'_>, now: i64) -> Ticket {
        Ticket {
            plan: plan.name.to_owned(),
            slots: plan
                .limits
                .iter()
                .map(|limit| Slot::new(limit, plan.anchor_day, now, 0))
                .collect(),
        }
    }

    /// The window counter keys, one per slot, in slot order.
    pub fn keys(&self, tenant: &str) -> Vec<String> {
        self.slots.iter().map(|s| s.key(tenant)).collect()
    }

    /// The answer for the `used` values the script returned (after the increment
    /// when allowed; as found when denied).
    pub fn answer(&self, allowed: bool, used: &[u64], replayed: bool, now: i64) -> ConsumeResponse {
        let limits = self.statuses(used, now);
        let (denied_by, retry_after) = if allowed {
            (None, None)
        } else {
            let denying = || {
                self.slots
                    .iter()
                    .zip(used)
                    .filter(|(slot, &used)| used.saturating_add(slot.cost) > slot.max)
                    .map(|(slot, _)| slot)
            };
            // Wait for the latest-ending denying window: only then do all have room.
            let retry_after = denying().map(|s| secs_until(s.end, now)).max().unwrap_or(1);
            (denying().next().map(|s| s.name.clone()), Some(retry_after))
        };
        ConsumeResponse {
            allowed,
            plan: self.plan.clone(),
            limits,
            denied_by,
            retry_after,
            replayed,
        }
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

    /// `tp:{TENANT}:q:METER:WINDOW:START`, hash-tagged so one script can touch all
    /// of a tenant's keys on Redis Cluster.
    pub fn key(&self, tenant: &str) -> String {
        format!(
            "tp:{{{tenant}}}:q:{}:{}:{}",
            self.meter,
            self.window.as_str(),
            self.start
        )
    }

    /// When Redis may drop this slot's counter.
    pub fn expire_at(&self) -> i64 {
        self.end + EXPIRE_GRACE_SECS
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

/// `tp:{TENANT}:id:CONSUME_ID`: the idempotency record of one consume.
pub fn idempotency_key(tenant: &str, id: &str) -> String {
    format!("tp:{{{tenant}}}:id:{id}")
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
    fn keys_are_hash_tagged_by_tenant_with_window_start() {
        let plans = plans();
        let t = Ticket::for_request(
            plans.resolve("acme", None),
            &meters(&[("requests", 1)]),
            NOW,
        );
        let minute_start = NOW - 42;
        assert_eq!(
            t.keys("acme"),
            [
                format!("tp:{{acme}}:q:requests:minute:{minute_start}"),
                "tp:{acme}:q:requests:month:1793491200".to_owned(), // 2026-11-01
            ]
        );
        assert_eq!(idempotency_key("acme", "c1"), "tp:{acme}:id:c1");
        assert_eq!(
            t.slots[0].expire_at(),
            minute_start + 60 + EXPIRE_GRACE_SECS
        );
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
    fn ticket_survives_its_compact_json_form() {
        let plans = plans();
        let t = Ticket::for_request(
            plans.resolve("acme", None),
            &meters(&[("requests", 1), ("search_units", 5)]),
            NOW,
        );
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.len() < 120 * t.slots.len(), "{json}");
        assert_eq!(serde_json::from_str::<Ticket>(&json).unwrap(), t);
    }

    #[test]
    fn usage_ticket_covers_every_limit_at_zero_cost() {
        let plans = plans();
        let t = Ticket::for_plan(plans.resolve("acme", None), NOW);
        assert_eq!(t.slots.len(), 3);
        assert!(t.slots.iter().all(|s| s.cost == 0));
    }
}
