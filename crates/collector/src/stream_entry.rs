//! Entries of the counter's usage stream (`tp:{NNN}:log`, written by its consume and
//! refund scripts) as ledger facts. Pure: no Redis here.
//!
//! ```text
//! k=a i=<consume id> t=<tenant> p=<plan> m=requests=1,search_units=5 ts=<unix ms>
//!                                      admitted, decided at ts
//! k=r i=<consume id> t=<tenant>                                          refunded
//! k=c i=<consume id> t=<tenant>                                          cancelled
//! k=s i=<consume id> t=<tenant> m=requests=1,tokens=850                  settled
//! k=a ... l=<lease> ts=<unix ms>     admitted by a proxy from a lease, at ts
//! k=A t=<tenant> p=<plan> m=... l=<lease> r=<id>:<ms>,<id>:<ms>,...
//!                                      up to 100 of those in one entry (a report)
//! k=A t=<tenant> p=<plan> m=... r=<id>:<ms>,...
//!                                      up to 100 consumes of a batch, decided together
//!                                      (admitted as k=a is: no lease)
//! k=g l=<lease> t=<tenant> n=<requests> m=...                            lease granted
//! k=x l=<lease> t=<tenant> g=.. s=.. r=..                                lease closed
//! ```
//! The entry's stream id is `<unix ms>-<seq>` on Redis's clock, taken when the script
//! appends it, which can be later than when it decided (Redis paused in between): an
//! admission's time is its `ts`, the decision time on the same clock, and the id only
//! for entries written without one (by counters before `ts`).

use turnpike_plans::ids;

use crate::merge::Fact;

/// Parse one entry into its facts for the ledger: one, or one per record of a lease
/// report or of consumes decided together (`k=A`), or none for the lease lifecycle entries (grants and closes: the
/// counter's own bookkeeping, listed in its metrics). The error says what is wrong
/// with it (the whole entry is quarantined).
pub fn parse_all(entry_id: &str, fields: &[(String, String)]) -> Result<Vec<Fact>, String> {
    let field = |name: &str| field_of(fields, name);
    if field("k") != Some("A") {
        return Ok(parse(entry_id, fields)?.into_iter().collect());
    }
    let tenant = checked_tenant(field("t"))?;
    let plan = field("p").ok_or("no plan (field p)")?;
    let meters = parse_meters(field("m").ok_or("no meters (field m)")?)?;
    // Consumes of a batch carry no lease.
    let lease = field("l");
    let records = field("r").ok_or("no records (field r)")?;
    records
        .split(',')
        .map(|record| {
            let (id, ts) = record
                .split_once(':')
                .ok_or_else(|| format!("record {record:?} is not <consume id>:<unix ms>"))?;
            let id = checked_consume_id(id)?;
            let time_ms = ts
                .parse::<i64>()
                .map_err(|_| format!("decision time {ts:?} of {id} is not unix ms"))?;
            Ok(Fact::Counted {
                id: id.to_owned(),
                tenant: tenant.to_owned(),
                time_ms,
                plan: plan.to_owned(),
                meters: meters.clone(),
                lease: lease.map(str::to_owned),
            })
        })
        .collect()
}

/// Parse one entry of a single fact: a fact for the ledger, or `None` for the lease
/// lifecycle entries. The error says what is wrong with it (it is quarantined).
fn parse(entry_id: &str, fields: &[(String, String)]) -> Result<Option<Fact>, String> {
    let field = |name: &str| field_of(fields, name);
    let time_ms = entry_id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<i64>().ok())
        .ok_or_else(|| format!("stream id {entry_id:?} is not <ms>-<seq>"))?;
    if matches!(field("k"), Some("g" | "x")) {
        return Ok(None);
    }
    let id = checked_consume_id(field("i").ok_or("no consume id (field i)")?)?;
    let tenant = checked_tenant(field("t"))?;
    let (id, tenant) = (id.to_owned(), tenant.to_owned());
    match field("k") {
        Some("a") => {
            let plan = field("p").ok_or("no plan (field p)")?.to_owned();
            let meters = parse_meters(field("m").ok_or("no meters (field m)")?)?;
            let time_ms = match field("ts") {
                Some(ts) => ts
                    .parse::<i64>()
                    .map_err(|_| format!("decision time {ts:?} is not unix ms"))?,
                None => time_ms,
            };
            let lease = field("l").map(str::to_owned);
            Ok(Some(Fact::Counted {
                id,
                tenant,
                time_ms,
                plan,
                meters,
                lease,
            }))
        }
        Some("r") => Ok(Some(Fact::Refunded {
            id,
            tenant,
            time_ms,
        })),
        Some("c") => Ok(Some(Fact::Cancelled {
            id,
            tenant,
            time_ms,
        })),
        Some("s") => Ok(Some(Fact::Settled {
            id,
            tenant,
            time_ms,
            meters: parse_meters(field("m").ok_or("no meters (field m)")?)?,
        })),
        other => Err(format!("unknown entry kind {other:?}")),
    }
}

/// The value of an entry's field `name`.
fn field_of<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The tenant (field `t`), if it is a tenant id.
fn checked_tenant(tenant: Option<&str>) -> Result<&str, String> {
    let tenant = tenant.ok_or("no tenant (field t)")?;
    if !ids::is_valid_tenant(tenant) {
        return Err(format!("tenant {tenant:?} is not a tenant id"));
    }
    Ok(tenant)
}

/// `id`, if it is a consume id.
fn checked_consume_id(id: &str) -> Result<&str, String> {
    if !ids::is_valid_consume_id(id) {
        return Err(format!("consume id {id:?} is not 1..=64 of [A-Za-z0-9_-]"));
    }
    Ok(id)
}

/// `meter=q,meter=q` into pairs.
fn parse_meters(text: &str) -> Result<Vec<(String, i64)>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|pair| {
            let (meter, quantity) = pair
                .split_once('=')
                .ok_or_else(|| format!("meter {pair:?} is not name=quantity"))?;
            if !ids::is_valid_meter(meter) {
                return Err(format!("meter name {meter:?} is invalid"));
            }
            let quantity = quantity
                .parse::<i64>()
                .ok()
                .filter(|q| *q >= 0)
                .ok_or_else(|| format!("quantity {quantity:?} of {meter} is not a count"))?;
            Ok((meter.to_owned(), quantity))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn an_admission_carries_redis_time_plan_and_meters() {
        let fact = parse(
            "1795737600123-4",
            &fields(&[
                ("k", "a"),
                ("i", "c1"),
                ("t", "acme"),
                ("p", "pro"),
                ("m", "requests=1,search_units=5"),
            ]),
        )
        .unwrap();
        assert_eq!(
            fact,
            Some(Fact::Counted {
                id: "c1".into(),
                tenant: "acme".into(),
                time_ms: 1_795_737_600_123,
                plan: "pro".into(),
                meters: vec![("requests".into(), 1), ("search_units".into(), 5)],
                lease: None,
            })
        );
    }

    #[test]
    fn an_admission_is_billed_at_its_decision_time_not_its_entry_id() {
        // Decided at 23:59:59.990 on the last day of a month, appended after Redis was
        // paused for 150 ms: the id is in the next month, the decision is not.
        let admission = |ts| {
            fields(&[
                ("k", "a"),
                ("i", "c1"),
                ("t", "acme"),
                ("p", "pro"),
                ("m", "requests=1"),
                ("ts", ts),
            ])
        };
        let Ok(Some(Fact::Counted { time_ms, lease, .. })) =
            parse("1798761600140-0", &admission("1798761599990"))
        else {
            panic!("not counted");
        };
        assert_eq!((time_ms, lease), (1_798_761_599_990, None));
        assert_eq!(
            parse("1-0", &admission("soon")),
            Err("decision time \"soon\" is not unix ms".to_owned())
        );
    }

    #[test]
    fn refunds_and_cancellations_parse() {
        let f = fields(&[("k", "r"), ("i", "c1"), ("t", "acme")]);
        assert!(matches!(
            parse("5-0", &f),
            Ok(Some(Fact::Refunded { time_ms: 5, .. }))
        ));
        let f = fields(&[("k", "c"), ("i", "c1"), ("t", "acme")]);
        assert!(matches!(parse("5-0", &f), Ok(Some(Fact::Cancelled { .. }))));
    }

    #[test]
    fn a_leased_request_carries_its_lease_and_decision_time_and_lease_bookkeeping_is_skipped() {
        let f = fields(&[
            ("k", "a"),
            ("i", "c9"),
            ("t", "acme"),
            ("p", "pro"),
            ("m", "requests=1"),
            ("l", "77"),
            ("ts", "1234"),
        ]);
        let Ok(Some(Fact::Counted { time_ms, lease, .. })) = parse("9999-0", &f) else {
            panic!("not counted");
        };
        assert_eq!((time_ms, lease.as_deref()), (1234, Some("77")));
        let g = fields(&[("k", "g"), ("l", "77"), ("t", "acme"), ("n", "5")]);
        assert_eq!(parse("1-0", &g), Ok(None));
        let x = fields(&[
            ("k", "x"),
            ("l", "77"),
            ("t", "acme"),
            ("g", "5"),
            ("s", "3"),
        ]);
        assert_eq!(parse("1-0", &x), Ok(None));
    }

    #[test]
    fn a_lease_report_entry_is_one_fact_per_record() {
        let f = fields(&[
            ("k", "A"),
            ("t", "acme"),
            ("p", "pro"),
            ("m", "requests=1,search_units=5"),
            ("l", "77"),
            ("r", "c1:1000,c2:1001,c-3_x:1002"),
        ]);
        let facts = parse_all("9999-0", &f).unwrap();
        let got: Vec<(String, i64)> = facts
            .iter()
            .map(|fact| match fact {
                Fact::Counted {
                    id,
                    time_ms,
                    lease,
                    tenant,
                    plan,
                    meters,
                } => {
                    assert_eq!((tenant.as_str(), plan.as_str()), ("acme", "pro"));
                    assert_eq!(lease.as_deref(), Some("77"));
                    assert_eq!(meters.len(), 2);
                    (id.clone(), *time_ms)
                }
                other => panic!("not counted: {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                ("c1".to_owned(), 1000),
                ("c2".to_owned(), 1001),
                ("c-3_x".to_owned(), 1002)
            ]
        );
        // The single-fact kinds parse as before.
        let a = fields(&[
            ("k", "a"),
            ("i", "c1"),
            ("t", "acme"),
            ("p", "pro"),
            ("m", ""),
        ]);
        assert_eq!(parse_all("5-0", &a).unwrap().len(), 1);
        let g = fields(&[("k", "g"), ("l", "77"), ("t", "acme"), ("n", "5")]);
        assert_eq!(parse_all("5-0", &g), Ok(Vec::new()));
    }

    #[test]
    fn consumes_decided_together_are_one_entry_of_records_without_a_lease() {
        let f = fields(&[
            ("k", "A"),
            ("t", "acme"),
            ("p", "pro"),
            ("m", "requests=1"),
            ("r", "c1:1000,c2:1000"),
        ]);
        let facts = parse_all("1000-0", &f).unwrap();
        // The same facts as two k=a entries of that millisecond.
        let one = |id: &str| {
            let a = fields(&[
                ("k", "a"),
                ("i", id),
                ("t", "acme"),
                ("p", "pro"),
                ("m", "requests=1"),
            ]);
            parse_all("1000-0", &a).unwrap().remove(0)
        };
        assert_eq!(facts, [one("c1"), one("c2")]);
    }

    #[test]
    fn a_broken_record_fails_its_lease_report_entry_and_names_the_record() {
        let base = [
            ("k", "A"),
            ("t", "acme"),
            ("p", "pro"),
            ("m", "requests=1"),
            ("l", "77"),
        ];
        for (records, says) in [
            ("c1:1000,c2", "\"c2\""),
            ("c1:1000,c 2:5", "\"c 2\""),
            ("c1:soon", "\"soon\""),
            ("", "\"\""),
        ] {
            let mut f = base.to_vec();
            f.push(("r", records));
            let err = parse_all("1-0", &fields(&f)).unwrap_err();
            assert!(err.contains(says), "{records:?}: {err}");
        }
        let no_records: Vec<_> = base.to_vec();
        assert!(parse_all("1-0", &fields(&no_records))
            .unwrap_err()
            .contains("records"));
    }

    #[test]
    fn broken_entries_say_what_is_wrong() {
        let ok = [
            ("k", "a"),
            ("i", "c1"),
            ("t", "acme"),
            ("p", "pro"),
            ("m", "requests=1"),
        ];
        assert!(parse("1-0", &fields(&ok)).is_ok());
        for (bad_id, list) in [
            ("x", ok.to_vec()),
            ("1-0", vec![("k", "z"), ("i", "c1"), ("t", "acme")]),
            (
                "1-0",
                vec![
                    ("k", "a"),
                    ("i", "c 1"),
                    ("t", "acme"),
                    ("p", "x"),
                    ("m", ""),
                ],
            ),
            (
                "1-0",
                vec![
                    ("k", "a"),
                    ("i", "c1"),
                    ("t", "ac:me"),
                    ("p", "x"),
                    ("m", ""),
                ],
            ),
            (
                "1-0",
                vec![
                    ("k", "a"),
                    ("i", "c1"),
                    ("t", "acme"),
                    ("p", "x"),
                    ("m", "requests=-1"),
                ],
            ),
            (
                "1-0",
                vec![
                    ("k", "a"),
                    ("i", "c1"),
                    ("t", "acme"),
                    ("p", "x"),
                    ("m", "Req=1"),
                ],
            ),
            (
                "1-0",
                vec![("k", "a"), ("i", "c1"), ("t", "acme"), ("m", "requests=1")],
            ),
        ] {
            assert!(parse(bad_id, &fields(&list)).is_err(), "{bad_id} {list:?}");
        }
    }
}
