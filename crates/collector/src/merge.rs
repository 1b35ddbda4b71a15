//! How the facts about one consume become one ledger row: pure, deterministic, and
//! independent of the order the facts arrive in (two collectors may take a consume's
//! admission and its refund from the counter's stream and commit them in either
//! order, and the proxy's event may come before or after both).
//!
//! Who knows what:
//! - the counter's usage stream: the consume was admitted (its time on Redis's
//!   clock, its plan and meters), and later refunded or cancelled;
//! - the proxy's usage event: route, method, status, bytes, duration, and the
//!   requests the counter never decided (denied, let through by `fail_open`).
//!
//! A row is billable when the counter admitted it or the proxy let it through, and
//! nothing took it back (a refund, a cancellation, a client that went away).

/// What the proxy decided, as the ledger stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied,
    Unverified,
    /// The client went away before the answer; the proxy asked for a refund.
    Cancelled,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Unverified => "unverified",
            Decision::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Decision> {
        Some(match text {
            "allowed" => Decision::Allowed,
            "denied" => Decision::Denied,
            "unverified" => Decision::Unverified,
            "cancelled" => Decision::Cancelled,
            _ => return None,
        })
    }
}

/// `source` of rows only the counter has told us about so far.
pub const COUNTER_SOURCE: &str = "//turnpike/counter";

/// A proxy's usage event, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub id: String,
    pub source: String,
    pub tenant: String,
    pub time_ms: i64,
    pub plan: Option<String>,
    pub method: String,
    pub route: String,
    pub status: i32,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub duration_ms: i64,
    pub decision: Decision,
    /// (meter, quantity), names unique.
    pub meters: Vec<(String, i64)>,
    /// The quantities were settled by the proxy (what the exchange used, not what was
    /// reserved).
    pub settled: bool,
    /// The lease it was admitted from (leased mode).
    pub lease: Option<String>,
    /// Given back into its lease by the proxy: the counter never counts it.
    pub refunded: bool,
}

/// Who settled a row's quantities; a later source never overrides an earlier one.
pub const SETTLED_NONE: i16 = 0;
pub const SETTLED_BY_PROXY: i16 = 1;
pub const SETTLED_BY_COUNTER: i16 = 2;

/// One fact about a consume id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    Reported(Reported),
    /// The counter admitted it (from its usage stream).
    Counted {
        id: String,
        tenant: String,
        time_ms: i64,
        plan: String,
        meters: Vec<(String, i64)>,
        /// The lease a proxy admitted it from (`None`: an exact consume).
        lease: Option<String>,
    },
    /// The counter gave its units back.
    Refunded {
        id: String,
        tenant: String,
        time_ms: i64,
    },
    /// A refund reached the counter before the consume: it was never counted.
    Cancelled {
        id: String,
        tenant: String,
        time_ms: i64,
    },
    /// The counter settled the consume: final quantities of every meter.
    Settled {
        id: String,
        tenant: String,
        time_ms: i64,
        meters: Vec<(String, i64)>,
    },
}

impl Fact {
    pub fn id(&self) -> &str {
        match self {
            Fact::Reported(r) => &r.id,
            Fact::Counted { id, .. }
            | Fact::Refunded { id, .. }
            | Fact::Cancelled { id, .. }
            | Fact::Settled { id, .. } => id,
        }
    }
}

/// A ledger row (`usage_events`, and its `usage_meters`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: String,
    pub source: String,
    pub tenant: String,
    pub time_ms: i64,
    pub plan: Option<String>,
    pub method: String,
    pub route: String,
    pub status: i32,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub duration_ms: i64,
    pub decision: Decision,
    pub meters: Vec<(String, i64)>,
    pub received_at_ms: i64,
    pub counted: bool,
    pub reported: bool,
    pub refunded: bool,
    pub lease: Option<String>,
    /// Who settled `meters` ([`SETTLED_NONE`], [`SETTLED_BY_PROXY`], [`SETTLED_BY_COUNTER`]).
    pub settled: i16,
}

impl Row {
    pub fn billable(&self) -> bool {
        !self.refunded
            && !matches!(self.decision, Decision::Denied | Decision::Cancelled)
            && (self.counted || matches!(self.decision, Decision::Allowed | Decision::Unverified))
    }

    /// The meters as stored in the `meters` JSON column (for listings).
    pub fn meters_json(&self) -> String {
        let list: Vec<serde_json::Value> = self
            .meters
            .iter()
            .map(|(meter, quantity)| serde_json::json!({ "meter": meter, "quantity": quantity }))
            .collect();
        serde_json::Value::Array(list).to_string()
    }

    fn stub(id: &str, tenant: &str, time_ms: i64, received_at_ms: i64) -> Row {
        Row {
            id: id.to_owned(),
            source: COUNTER_SOURCE.to_owned(),
            tenant: tenant.to_owned(),
            time_ms,
            plan: None,
            method: String::new(),
            route: String::new(),
            status: 0,
            request_bytes: 0,
            response_bytes: 0,
            duration_ms: 0,
            decision: Decision::Allowed,
            meters: Vec::new(),
            received_at_ms,
            counted: false,
            reported: false,
            refunded: false,
            lease: None,
            settled: SETTLED_NONE,
        }
    }
}

/// The row after `fact`, starting from `row` (none yet: a new row).
pub fn merge(row: Option<Row>, fact: &Fact, received_at_ms: i64) -> Row {
    match fact {
        Fact::Reported(r) => {
            let mut row =
                row.unwrap_or_else(|| Row::stub(&r.id, &r.tenant, r.time_ms, received_at_ms));
            row.source.clone_from(&r.source);
            row.method.clone_from(&r.method);
            row.route.clone_from(&r.route);
            row.status = r.status;
            row.request_bytes = r.request_bytes;
            row.response_bytes = r.response_bytes;
            row.duration_ms = r.duration_ms;
            row.decision = r.decision;
            row.reported = true;
            if r.lease.is_some() {
                row.lease.clone_from(&r.lease);
            }
            if r.refunded {
                row.refunded = true;
            }
            if !row.counted {
                // The counter's record, when it comes, is the billing truth for time
                // and plan.
                row.tenant.clone_from(&r.tenant);
                row.time_ms = r.time_ms;
                row.plan.clone_from(&r.plan);
            }
            // Quantities: the counter's settlement, else the proxy's, else what the
            // counter admitted, else what the proxy said.
            if r.settled && row.settled < SETTLED_BY_COUNTER {
                row.meters.clone_from(&r.meters);
                row.settled = SETTLED_BY_PROXY;
            } else if !row.counted && row.settled == SETTLED_NONE {
                row.meters.clone_from(&r.meters);
            }
            row
        }
        Fact::Counted {
            id,
            tenant,
            time_ms,
            plan,
            meters,
            lease,
        } => {
            let mut row = row.unwrap_or_else(|| Row::stub(id, tenant, *time_ms, received_at_ms));
            row.counted = true;
            if lease.is_some() {
                row.lease.clone_from(lease);
            }
            row.tenant.clone_from(tenant);
            row.time_ms = *time_ms;
            row.plan = Some(plan.clone());
            if row.settled == SETTLED_NONE {
                row.meters.clone_from(meters);
            }
            row
        }
        Fact::Settled {
            id,
            tenant,
            time_ms,
            meters,
        } => {
            let mut row = row.unwrap_or_else(|| Row::stub(id, tenant, *time_ms, received_at_ms));
            row.meters.clone_from(meters);
            row.settled = SETTLED_BY_COUNTER;
            row
        }
        Fact::Refunded {
            id,
            tenant,
            time_ms,
        }
        | Fact::Cancelled {
            id,
            tenant,
            time_ms,
        } => {
            let mut row = row.unwrap_or_else(|| Row::stub(id, tenant, *time_ms, received_at_ms));
            row.refunded = true;
            if matches!(fact, Fact::Cancelled { .. }) && !row.reported {
                row.decision = Decision::Cancelled;
            }
            row
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(decision: Decision) -> Fact {
        Fact::Reported(Reported {
            id: "c1".into(),
            source: "//turnpike/envoy/n1".into(),
            tenant: "acme".into(),
            time_ms: 2_000,
            plan: Some("claimed".into()),
            method: "GET".into(),
            route: "search".into(),
            status: 200,
            request_bytes: 1,
            response_bytes: 2,
            duration_ms: 3,
            decision,
            meters: vec![("requests".into(), 1)],
            settled: false,
            lease: None,
            refunded: false,
        })
    }

    fn counted() -> Fact {
        Fact::Counted {
            id: "c1".into(),
            tenant: "acme".into(),
            time_ms: 1_000,
            plan: "pro".into(),
            meters: vec![("requests".into(), 1), ("search_units".into(), 5)],
            lease: None,
        }
    }

    fn refunded() -> Fact {
        Fact::Refunded {
            id: "c1".into(),
            tenant: "acme".into(),
            time_ms: 3_000,
        }
    }

    fn fold(facts: &[&Fact]) -> Row {
        facts
            .iter()
            .fold(None, |row, fact| Some(merge(row, fact, 9)))
            .unwrap()
    }

    /// Every order of `facts` gives the same row.
    fn all_orders(facts: &[Fact]) -> Row {
        let mut orders: Vec<Vec<&Fact>> = vec![facts.iter().collect()];
        if facts.len() == 3 {
            let [a, b, c] = [&facts[0], &facts[1], &facts[2]];
            orders = vec![
                vec![a, b, c],
                vec![a, c, b],
                vec![b, a, c],
                vec![b, c, a],
                vec![c, a, b],
                vec![c, b, a],
            ];
        } else if facts.len() == 2 {
            orders.push(facts.iter().rev().collect());
        }
        let first = fold(&orders[0]);
        for order in &orders[1..] {
            let mut row = fold(order);
            row.received_at_ms = first.received_at_ms;
            assert_eq!(row, first, "order {order:?}");
        }
        first
    }

    #[test]
    fn counter_and_proxy_make_one_billable_row_with_the_counters_time_and_meters() {
        let row = all_orders(&[reported(Decision::Allowed), counted()]);
        assert!(row.billable() && row.counted && row.reported);
        assert_eq!((row.time_ms, row.plan.as_deref()), (1_000, Some("pro")));
        assert_eq!(row.meters.len(), 2);
        assert_eq!((row.route.as_str(), row.status), ("search", 200));
    }

    #[test]
    fn a_refund_in_any_order_makes_the_row_unbillable() {
        let row = all_orders(&[reported(Decision::Allowed), counted(), refunded()]);
        assert!(!row.billable() && row.refunded);
        let row = all_orders(&[counted(), refunded()]);
        assert!(!row.billable());
    }

    #[test]
    fn a_counted_consume_without_a_proxy_event_is_billed() {
        let row = fold(&[&counted()]);
        assert!(row.billable());
        assert_eq!((row.source.as_str(), row.status), (COUNTER_SOURCE, 0));
    }

    #[test]
    fn the_proxys_decisions_decide_rows_the_counter_never_counted() {
        assert!(fold(&[&reported(Decision::Allowed)]).billable());
        assert!(fold(&[&reported(Decision::Unverified)]).billable());
        assert!(!fold(&[&reported(Decision::Denied)]).billable());
        assert!(!fold(&[&reported(Decision::Cancelled)]).billable());
        // fail_open let it through and the counter did count it after all: billed once.
        let row = all_orders(&[reported(Decision::Unverified), counted()]);
        assert!(row.billable() && row.counted);
    }

    #[test]
    fn a_leased_request_its_proxy_gave_back_is_never_billed() {
        let mut given_back = reported(Decision::Allowed);
        if let Fact::Reported(r) = &mut given_back {
            r.lease = Some("7".into());
            r.refunded = true;
            r.meters.clear();
        }
        let row = fold(&[&given_back]);
        assert!(!row.billable() && row.refunded);
        assert_eq!(row.lease.as_deref(), Some("7"));
        // Spent from its lease: the counter's report and the event, in either order,
        // name the same lease; an exact consume's fact leaves the event's lease alone.
        let mut spent = reported(Decision::Allowed);
        if let Fact::Reported(r) = &mut spent {
            r.lease = Some("7".into());
        }
        let mut counted_leased = counted();
        if let Fact::Counted { lease, .. } = &mut counted_leased {
            *lease = Some("7".into());
        }
        let row = all_orders(&[spent.clone(), counted_leased]);
        assert!(row.billable() && row.lease.as_deref() == Some("7"));
        let row = all_orders(&[spent, counted()]);
        assert_eq!(row.lease.as_deref(), Some("7"));
    }

    #[test]
    fn a_cancelled_consume_is_never_billed() {
        let cancelled = Fact::Cancelled {
            id: "c1".into(),
            tenant: "acme".into(),
            time_ms: 5,
        };
        let row = all_orders(&[cancelled.clone(), reported(Decision::Cancelled)]);
        assert!(!row.billable());
        assert_eq!(fold(&[&cancelled]).decision, Decision::Cancelled);
    }

    #[test]
    fn settled_quantities_win_in_any_order_the_counters_over_the_proxys() {
        let settled = Fact::Settled {
            id: "c1".into(),
            tenant: "acme".into(),
            time_ms: 1_500,
            meters: vec![("requests".into(), 1), ("search_units".into(), 2)],
        };
        let mut by_proxy = reported(Decision::Allowed);
        if let Fact::Reported(r) = &mut by_proxy {
            r.settled = true;
            r.meters = vec![("requests".into(), 1), ("search_units".into(), 3)];
        }
        let row = all_orders(&[counted(), settled.clone(), by_proxy.clone()]);
        assert_eq!(row.meters[1], ("search_units".into(), 2));
        assert_eq!((row.settled, row.time_ms), (SETTLED_BY_COUNTER, 1_000));
        // Without the counter's settlement, the proxy's beats the reservation.
        let row = all_orders(&[counted(), by_proxy]);
        assert_eq!(row.meters[1], ("search_units".into(), 3));
        assert!(row.billable());
    }

    #[test]
    fn the_same_fact_twice_changes_nothing() {
        let once = fold(&[&counted(), &reported(Decision::Allowed)]);
        let twice = merge(Some(once.clone()), &reported(Decision::Allowed), 99);
        assert_eq!(once, twice);
        assert_eq!(merge(Some(once.clone()), &counted(), 99), once);
    }
}
