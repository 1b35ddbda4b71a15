//! Leases: a proxy takes a block of one route's requests from every window at once
//! and admits them locally; it reports each admitted request (the usage stream gets
//! it, as from a consume) and gives back what it did not spend. Pure parts here; the
//! scripts are `lua/lease*.lua`, the I/O in [`crate::store`], the HTTP in
//! [`crate::api`].

/// A lease's record in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Requests granted so far.
    pub granted: u64,
    /// Requests reported spent so far.
    pub spent: u64,
    /// Unix seconds.
    pub expires: i64,
    /// The window slots it took from, `suffix=cost;...` per request (see
    /// [`crate::ticket::Ticket::record_slots`]).
    pub slots: String,
    /// Given up (by its proxy, or because its windows rolled over): never extended
    /// again, closed by the sweeper once the report delay has passed.
    pub retired: bool,
}

impl LeaseRecord {
    /// From `HGETALL` field/value pairs; `None` when absent or unreadable.
    pub fn from_fields(fields: &[(String, String)]) -> Option<LeaseRecord> {
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        Some(LeaseRecord {
            granted: get("g")?.parse().ok()?,
            spent: get("s").map_or(Some(0), |s| s.parse().ok())?,
            expires: get("e")?.parse().ok()?,
            slots: get("k")?.clone(),
            retired: get("x").is_some(),
        })
    }
}

/// A renewal this close to the end of a lease that cannot outlive its window could
/// only add units spendable until then: the counter waits for the window to turn and
/// leases anew instead (see [`wait_for_turn`]).
pub const TURN_WAIT_MS: i64 = 10;

/// How long to wait before answering a renewal of `record` at `now_ms` (the counter's
/// clock), when the lease ends with the tightest window it took from
/// (`window_end_secs`) within [`TURN_WAIT_MS`]: its successor can only come from the
/// next window, and a proxy asking now would otherwise get a worthless extension and
/// ask again a round trip later, deciding every request exactly in between.
pub fn wait_for_turn(
    record: &LeaseRecord,
    window_end_secs: Option<i64>,
    now_ms: i64,
) -> Option<std::time::Duration> {
    let end = window_end_secs.filter(|end| *end == record.expires)?;
    let left_ms = end.saturating_mul(1000).saturating_sub(now_ms);
    (left_ms > 0 && left_ms <= TURN_WAIT_MS)
        .then(|| std::time::Duration::from_millis(u64::try_from(left_ms).unwrap_or(0) + 1))
}

/// What a proxy that does not say how often it reports (`report_ms`) is taken to use.
pub const DEFAULT_REPORT_MS: u64 = 1_000;

/// The longest report interval a proxy may state.
pub const MAX_REPORT_MS: u64 = 60_000;

/// How long after a lease ends (or is given back) its unspent units stay out, seconds:
/// requests admitted from it until then may still be on their way in a report, and
/// a unit given back and then reported spent could be granted twice in between. Two
/// report intervals (a report tick missed, a retry) and 3 s for requests still running
/// at the lease's end; a request reported later still counts, charged to the windows
/// current when its report arrives.
pub fn return_delay_secs(report_ms: u64) -> i64 {
    let ms = report_ms.min(MAX_REPORT_MS).saturating_mul(2) + 3_000;
    i64::try_from(ms.div_ceil(1_000)).unwrap_or(i64::MAX)
}

/// How the counter sizes grants (the proxy asks for what it expects to spend soon).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeasePolicy {
    /// A grant takes at most this share of the requests that still fit in the
    /// tightest window, so near a limit grants shrink (to nothing: exact consumes)
    /// and several proxies share what is left.
    pub max_share: f64,
    /// Longest lease, seconds: units a dead proxy held come back by then.
    pub max_secs: i64,
    /// Most requests one call may ask for.
    pub max_want: u64,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            max_share: 0.5,
            max_secs: 10,
            max_want: 100_000,
        }
    }
}

/// The member of a bucket's lease index for a lease: `TENANT:ID`.
pub fn index_member(tenant: &str, id: u64) -> String {
    format!("{tenant}:{id}")
}

/// `TENANT:ID` back into its parts.
pub fn parse_index_member(member: &str) -> Option<(&str, u64)> {
    let (tenant, id) = member.rsplit_once(':')?;
    Some((tenant, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_from_hash_fields_and_index_members_round_trip() {
        let fields: Vec<(String, String)> = [
            ("g", "40"),
            ("s", "12"),
            ("e", "1700"),
            ("k", "requests:minute:60=1"),
            ("m", "requests=1"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let r = LeaseRecord::from_fields(&fields).unwrap();
        assert_eq!((r.granted, r.spent, r.expires), (40, 12, 1700));
        assert!(!r.retired);
        let mut given_up = fields.clone();
        given_up.push(("x".to_owned(), "1".to_owned()));
        assert!(LeaseRecord::from_fields(&given_up).unwrap().retired);
        assert!(LeaseRecord::from_fields(&[]).is_none());
        assert_eq!(
            parse_index_member(&index_member("acme.eu", 7)),
            Some(("acme.eu", 7))
        );
        assert_eq!(parse_index_member("nocolon"), None);
    }

    #[test]
    fn unspent_units_stay_out_for_two_report_intervals_and_3_s() {
        assert_eq!(return_delay_secs(50), 4);
        assert_eq!(return_delay_secs(100), 4);
        assert_eq!(return_delay_secs(DEFAULT_REPORT_MS), 5);
        assert_eq!(return_delay_secs(10_000), 23);
        assert_eq!(return_delay_secs(u64::MAX), 123);
    }

    #[test]
    fn a_renewal_in_the_last_ms_of_a_window_bound_lease_waits_for_the_turn() {
        let record = LeaseRecord {
            granted: 10,
            spent: 0,
            expires: 1_700,
            slots: String::new(),
            retired: false,
        };
        let ms = std::time::Duration::from_millis;
        // 4 ms before the window (and so the lease) ends: wait 5 ms.
        assert_eq!(wait_for_turn(&record, Some(1_700), 1_699_996), Some(ms(5)));
        assert_eq!(wait_for_turn(&record, Some(1_700), 1_699_990), Some(ms(11)));
        // Earlier, an extension is still worth having.
        assert_eq!(wait_for_turn(&record, Some(1_700), 1_699_989), None);
        // Already turned: nothing to wait for.
        assert_eq!(wait_for_turn(&record, Some(1_700), 1_700_000), None);
        // Not bound by the window (it ends before it, at the longest lease): extend.
        assert_eq!(wait_for_turn(&record, Some(1_760), 1_699_996), None);
        assert_eq!(wait_for_turn(&record, None, 1_699_996), None);
    }
}
