//! A round of the usage streams' entries, and which of them the ledger takes now.
//!
//! An entry is committed [`HOLD`] after it was read, together with every entry read
//! meanwhile that shares a consume id with it. A request's later facts (its settlement
//! from the LLM's answer, its refund after a 5xx) come tens of milliseconds after its
//! consume under load: held, the consume and what follows it are merged into one ledger
//! row, written once instead of inserted and then rewritten with all its index entries.
//! The cost is [`HOLD`] more before a request shows in the ledger. A held entry is read
//! but not acknowledged: a collector that dies with it reads it again on restart (or
//! another claims it), as any entry read and not yet committed. Pure: no Redis, no
//! ledger here.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use redis::streams::StreamId;
use redis::Value;

use crate::event::Quarantined;
use crate::merge::Fact;
use crate::stream_entry;

/// How long an entry waits after it was read for the facts that follow it.
pub const HOLD: Duration = Duration::from_millis(500);

/// One entry read from a stream: its facts, or why it is quarantined.
#[derive(Debug)]
pub struct Entry {
    pub key: String,
    pub id: String,
    pub facts: Vec<Fact>,
    pub bad: Option<Quarantined>,
    pub read_at: Instant,
}

/// Entries read (or claimed), in the order read.
#[derive(Debug, Default)]
pub struct Round {
    pub entries: Vec<Entry>,
    /// Some stream gave all the entries asked for: more are waiting.
    pub full: bool,
}

impl Round {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Add one entry of stream `key`, read at `read_at`; how many facts it held (a
    /// malformed one counts one).
    pub fn add(&mut self, key: &str, entry: &StreamId, read_at: Instant) -> usize {
        let fields: Vec<(String, String)> = entry
            .map
            .iter()
            .filter_map(|(k, v)| match v {
                Value::BulkString(b) => Some((k.clone(), String::from_utf8_lossy(b).into_owned())),
                Value::SimpleString(s) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect();
        let (facts, bad) = match stream_entry::parse_all(&entry.id, &fields) {
            Ok(facts) => (facts, None),
            Err(reason) => (
                Vec::new(),
                Some(Quarantined {
                    field: format!("{key}/{}", entry.id),
                    reason,
                    raw: serde_json::to_string(&fields).unwrap_or_default(),
                    id: None,
                }),
            ),
        };
        let n = facts.len().max(usize::from(bad.is_some()));
        self.entries.push(Entry {
            key: key.to_owned(),
            id: entry.id.clone(),
            facts,
            bad,
            read_at,
        });
        n
    }

    /// Take out the entries nothing can follow, to be committed without waiting: those
    /// whose every fact is a leased request's report. A leased request is never
    /// refunded, settled or cancelled through the counter (a 5xx goes back into its
    /// lease on the proxy), so its report is its only fact in the streams; holding it
    /// would cost the index work and half a second, and merge nothing.
    pub fn take_final(&mut self) -> Round {
        let (last, rest): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| {
                e.bad.is_none()
                    && !e.facts.is_empty()
                    && e.facts
                        .iter()
                        .all(|f| matches!(f, Fact::Counted { lease: Some(_), .. }))
            });
        self.entries = rest;
        Round {
            entries: last,
            full: false,
        }
    }

    pub fn extend(&mut self, other: Round) {
        self.entries.extend(other.entries);
        self.full |= other.full;
    }

    pub fn facts(&self) -> Vec<Fact> {
        self.entries
            .iter()
            .flat_map(|e| e.facts.iter().cloned())
            .collect()
    }

    pub fn bad(&self) -> Vec<Quarantined> {
        self.entries.iter().filter_map(|e| e.bad.clone()).collect()
    }

    /// Entry ids to acknowledge, by stream.
    pub fn acks(&self) -> HashMap<&str, Vec<&str>> {
        let mut acks: HashMap<&str, Vec<&str>> = HashMap::new();
        for e in &self.entries {
            acks.entry(&e.key).or_default().push(&e.id);
        }
        acks
    }
}

/// Entries read and not committed yet, in the order read, with the consume ids of
/// their facts indexed: a round finds what is due, and what joins it, without going
/// through everything held.
#[derive(Debug, Default)]
pub struct Held {
    entries: BTreeMap<u64, Entry>,
    by_id: HashMap<String, Vec<u64>>,
    next: u64,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Hold a round's entries, after those held already.
    pub fn hold(&mut self, round: Round) {
        for entry in round.entries {
            let n = self.next;
            self.next += 1;
            for fact in &entry.facts {
                let at = self.by_id.entry(fact.id().to_owned()).or_default();
                if at.last() != Some(&n) {
                    at.push(n);
                }
            }
            self.entries.insert(n, entry);
        }
    }

    /// Everything: what a round that must not hold (a re-read of this consumer's
    /// pending entries) or a failed commit gives back.
    pub fn take_all(&mut self) -> Round {
        self.by_id.clear();
        Round {
            entries: std::mem::take(&mut self.entries).into_values().collect(),
            full: false,
        }
    }

    /// The entries read `hold` or longer before `now`, with every held entry that
    /// shares a consume id with one of them (and so on: a batch's entry brings the ids
    /// of all its consumes), in the order read.
    pub fn take_due(&mut self, now: Instant, hold: Duration) -> Round {
        let mut queue: Vec<u64> = self
            .entries
            .iter()
            .take_while(|(_, e)| now.saturating_duration_since(e.read_at) >= hold)
            .map(|(n, _)| *n)
            .collect();
        let mut taken = BTreeMap::new();
        while let Some(n) = queue.pop() {
            let Some(entry) = self.entries.remove(&n) else {
                continue;
            };
            for fact in &entry.facts {
                if let Some(joining) = self.by_id.remove(fact.id()) {
                    queue.extend(joining.into_iter().filter(|j| *j != n));
                }
            }
            taken.insert(n, entry);
        }
        Round {
            entries: taken.into_values().collect(),
            full: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(id: &str) -> Fact {
        Fact::Counted {
            id: id.to_owned(),
            tenant: "acme".to_owned(),
            time_ms: 1_796_045_029_994,
            plan: "llm".to_owned(),
            meters: vec![("tokens".to_owned(), 400)],
            lease: None,
        }
    }

    fn settled(id: &str) -> Fact {
        Fact::Settled {
            id: id.to_owned(),
            tenant: "acme".to_owned(),
            time_ms: 1_796_045_029_994,
            meters: vec![("tokens".to_owned(), 37)],
        }
    }

    /// An entry read `read_ms` after the tests' start.
    fn entry(id: &str, facts: Vec<Fact>, read_ms: u64) -> Entry {
        Entry {
            key: "tp:{007}:log".to_owned(),
            id: id.to_owned(),
            facts,
            bad: None,
            read_at: t(read_ms),
        }
    }

    fn t(ms: u64) -> Instant {
        thread_local!(static T0: Instant = Instant::now());
        T0.with(|t0| *t0 + Duration::from_millis(ms))
    }

    fn round(entries: Vec<Entry>) -> Round {
        Round {
            entries,
            full: false,
        }
    }

    fn ids(r: &Round) -> Vec<&str> {
        r.entries.iter().map(|e| e.id.as_str()).collect()
    }

    const HOLD_MS: u64 = 200;

    fn held(rounds: Vec<Round>) -> Held {
        let mut h = Held::default();
        for r in rounds {
            h.hold(r);
        }
        h
    }

    #[test]
    fn a_consume_waits_for_its_settlement_and_takes_it_along() {
        let hold = Duration::from_millis(HOLD_MS);
        // Read at 0 ms: two consumes of a batch in one entry, and a lone one.
        let mut h = held(vec![round(vec![
            entry("1-0", vec![counted("a"), counted("b")], 0),
            entry("1-1", vec![counted("c")], 0),
        ])]);
        assert!(h.take_due(t(0), hold).is_empty());
        // At 150 ms: a new consume and b's settlement. Nothing is due yet.
        h.hold(round(vec![
            entry("2-0", vec![counted("d")], 150),
            entry("2-1", vec![settled("b")], 150),
        ]));
        assert!(h.take_due(t(150), hold).is_empty());
        assert_eq!(h.len(), 4);
        // At 200 ms the first ones are due, and b's settlement goes with them.
        let now = h.take_due(t(200), hold);
        assert_eq!(ids(&now), ["1-0", "1-1", "2-1"]);
        let facts: Vec<String> = now.facts().iter().map(|f| f.id().to_owned()).collect();
        assert_eq!(facts, ["a", "b", "c", "b"]);
        assert_eq!(h.len(), 1);
        // d when its time comes.
        assert!(h.take_due(t(349), hold).is_empty());
        assert_eq!(ids(&h.take_due(t(350), hold)), ["2-0"]);
        assert!(h.is_empty());
    }

    #[test]
    fn what_joins_an_entry_taken_joins_too_in_the_order_read() {
        let bad = Entry {
            bad: Some(Quarantined {
                field: "tp:{007}:log/2-2".to_owned(),
                reason: "no consume id (field i)".to_owned(),
                raw: "[]".to_owned(),
                id: None,
            }),
            ..entry("2-2", Vec::new(), 100)
        };
        let mut h = held(vec![
            round(vec![entry("1-0", vec![counted("a")], 0)]),
            round(vec![
                // A settlement of a (goes), then a batch's entry with b and a replay of
                // a (goes), a malformed entry (waits its turn), b's settlement (goes
                // with the batch's entry), then an unrelated one.
                entry("2-0", vec![settled("a")], 100),
                entry("2-1", vec![counted("b"), counted("a")], 100),
                bad,
                entry("2-3", vec![settled("b")], 100),
                entry("2-4", vec![counted("z")], 100),
            ]),
        ]);
        let now = h.take_due(t(HOLD_MS), Duration::from_millis(HOLD_MS));
        assert_eq!(ids(&now), ["1-0", "2-0", "2-1", "2-3"]);
        let acks = now.acks();
        assert_eq!(acks["tp:{007}:log"], ["1-0", "2-0", "2-1", "2-3"]);
        // The malformed one and z, 100 ms later.
        let now = h.take_due(t(HOLD_MS + 100), Duration::from_millis(HOLD_MS));
        assert_eq!(ids(&now), ["2-2", "2-4"]);
        assert_eq!(now.bad().len(), 1);
        assert!(h.is_empty());
    }

    fn leased(id: &str) -> Fact {
        let mut fact = counted(id);
        if let Fact::Counted { lease, .. } = &mut fact {
            *lease = Some("7".to_owned());
        }
        fact
    }

    #[test]
    fn a_lease_report_is_taken_out_to_commit_at_once_and_the_rest_keeps_its_order() {
        let mut r = round(vec![
            entry("1-0", vec![counted("a")], 0),
            entry("1-1", vec![leased("l1"), leased("l2")], 0),
            entry("1-2", vec![settled("a")], 0),
            // A report with an exact consume's fact in it (none is written so) waits.
            entry("1-3", vec![leased("l3"), counted("b")], 0),
            entry("1-4", vec![leased("l4")], 0),
        ]);
        let now = r.take_final();
        assert_eq!(ids(&now), ["1-1", "1-4"]);
        assert!(!now.full);
        assert_eq!(ids(&r), ["1-0", "1-2", "1-3"]);
        assert!(round(Vec::new()).take_final().is_empty());
    }

    #[test]
    fn everything_held_can_be_taken_at_once() {
        let mut h = held(vec![round(vec![
            entry("1-0", vec![counted("a")], 0),
            entry("1-1", vec![settled("a")], 0),
        ])]);
        assert_eq!(ids(&h.take_all()), ["1-0", "1-1"]);
        assert!(h.is_empty());
        // Nothing of them is left in the index.
        h.hold(round(vec![entry("2-0", vec![counted("x")], 0)]));
        h.hold(round(vec![entry("3-0", vec![settled("a")], 500)]));
        assert_eq!(
            ids(&h.take_due(t(HOLD_MS), Duration::from_millis(HOLD_MS))),
            ["2-0"]
        );
    }
}
