//! Settlement, the pure part: what a consume reserved (its record's meters and slots)
//! and what the exchange really used become the record's final meters and slots and
//! the change of each window.

use crate::ticket::parse_record_slots;

/// A settlement to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Final quantities of every meter, `m=q,m=q` (unsettled meters as reserved).
    pub meters: String,
    /// Final cost per slot, `suffix=cost;...`.
    pub slots: String,
    /// Change of each of the record's slots, in its order: final - reserved.
    pub deltas: Vec<i64>,
}

/// Settle the record's `meters`/`slots` (as stored) to `used` (meter, quantity).
/// `None` when the record cannot be read.
pub fn plan(meters: &str, slots: &str, used: &[(String, u64)]) -> Option<Plan> {
    let mut final_meters: Vec<(String, u64)> = Vec::new();
    for pair in meters.split(',').filter(|p| !p.is_empty()) {
        let (meter, quantity) = pair.split_once('=')?;
        let reserved: u64 = quantity.parse().ok()?;
        let settled = used
            .iter()
            .find(|(m, _)| m == meter)
            .map_or(reserved, |(_, q)| *q);
        final_meters.push((meter.to_owned(), settled));
    }
    // A settled meter the consume did not reserve (a usage figure for a meter the
    // route does not price up front) is billed too.
    for (meter, quantity) in used {
        if !final_meters.iter().any(|(m, _)| m == meter) {
            final_meters.push((meter.clone(), *quantity));
        }
    }
    let mut deltas = Vec::new();
    let mut final_slots = Vec::new();
    for (suffix, reserved) in parse_record_slots(slots)? {
        let meter = suffix.split(':').next()?;
        let cost = used
            .iter()
            .find(|(m, _)| m == meter)
            .map_or(reserved, |(_, q)| *q);
        deltas.push(i64::try_from(cost).ok()? - i64::try_from(reserved).ok()?);
        final_slots.push(format!("{suffix}={cost}"));
    }
    Some(Plan {
        meters: final_meters
            .iter()
            .map(|(m, q)| format!("{m}={q}"))
            .collect::<Vec<_>>()
            .join(","),
        slots: final_slots.join(";"),
        deltas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_meters_replace_reservations_and_every_window_of_theirs_moves_by_the_difference() {
        let p = plan(
            "requests=1,tokens=1000",
            "requests:minute:60=1;tokens:minute:60=1000;tokens:day:0=1000",
            &[("tokens".into(), 850)],
        )
        .unwrap();
        assert_eq!(p.meters, "requests=1,tokens=850");
        assert_eq!(
            p.slots,
            "requests:minute:60=1;tokens:minute:60=850;tokens:day:0=850"
        );
        assert_eq!(p.deltas, [0, -150, -150]);
    }

    #[test]
    fn using_more_than_reserved_takes_more_and_unreserved_meters_are_added() {
        let p = plan(
            "tokens=100",
            "tokens:day:0=100",
            &[("tokens".into(), 250), ("prompt_tokens".into(), 40)],
        )
        .unwrap();
        assert_eq!(p.meters, "tokens=250,prompt_tokens=40");
        assert_eq!(p.deltas, [150]);
    }

    #[test]
    fn an_unreadable_record_is_refused() {
        assert!(plan("tokens", "", &[]).is_none());
        assert!(plan("tokens=1", "tokens:day:0=x", &[]).is_none());
    }
}
