//! The state of one lease as every worker of an Envoy shares it (proxy-wasm shared
//! data, updated with compare-and-swap): which lease, how many requests are left, until
//! when, whether a renewal is on its way, and the recent rate that sizes the next one.
//! A worker does not spend from it request by request: it takes a [`Hold`] of a few
//! milliseconds of traffic in one compare-and-swap and spends that with no hostcall.
//! Pure: encoding and the decisions; the glue is `wasm::lease`.

/// After an empty grant or a failed renewal, no renewal is asked for this long.
const RENEWAL_PAUSE_MS: u64 = 250;

/// Encoded size of a [`LeaseState`].
pub const ENCODED_LEN: usize = 88;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// The counter's lease id; 0: none.
    pub id: u64,
    /// When the lease ends, unix ms on this proxy's clock.
    pub expires_ms: u64,
    /// Requests left to admit.
    pub balance: u64,
    /// A renewal is on its way until then (unix ms): other workers do not ask again.
    pub renewing_until_ms: u64,
    /// The second (unix s) `count` counts requests in, and the second before's count.
    pub rate_second: u64,
    pub count: u32,
    pub prev_count: u32,
    /// When a request last spent from the lease (unix ms): a quiet tenant's lease goes back.
    pub last_spend_ms: u64,
    /// Size of the last grant: the low-water mark is a share of it.
    pub last_grant: u64,
    /// The lease's end as the counter last answered it (unix ms, the counter's clock).
    pub counter_end_ms: u64,
    /// When the counter last granted units of it (unix ms, the counter's clock). All
    /// of a lease's grants are taken from the same windows (the counter starts a new
    /// lease when they roll on), so any time from here to `counter_end_ms` lies in
    /// every window its units came from: what a request spent from it is billed there.
    pub counter_granted_ms: u64,
    /// A renewal of this lease left its end where it was: the end is a window's end
    /// (a per-second limit's second), which no renewal can move. Asking again before
    /// it would only add units that go back unspent: ask when the lease ends instead.
    pub end_fixed: bool,
    /// A renewal was asked for and has not been answered (until `renewing_until_ms`):
    /// a request that finds the lease spent can wait for it instead of being decided
    /// exactly. Encoded with `end_fixed` in one word.
    pub renewal_out: bool,
}

/// How a lease is spent and renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTuning {
    /// A grant covers about this much of the tenant's recent traffic on this proxy.
    pub target_ms: u64,
    /// Most requests asked for at once.
    pub max_request: u64,
    /// A renewal that has not come back after this long may be asked again.
    pub renew_timeout_ms: u64,
    /// Stop spending this long before the lease ends (its local end is computed from
    /// when the renewal was sent, so it is early already; this covers rounding).
    pub expiry_margin_ms: u64,
    /// A worker's hold covers about this much of the tenant's recent traffic (0: one
    /// request per take).
    pub hold_span_ms: u64,
    /// A hold is spent for at most this long after it was taken. Shorter than the idle
    /// return, so a lease that goes back for being quiet has no live hold left.
    pub hold_valid_ms: u64,
    /// A lease whose end no renewal can move asks for its successor this long before
    /// it ends; the counter holds an ask that arrives in a window's last milliseconds
    /// until the window turns, so the successor is granted as the second turns.
    pub turn_lead_ms: u64,
    /// The most a request that found the lease spent waits for a renewal on its way
    /// (the successor of a lease that ended with its second, usually) before it is
    /// decided exactly.
    pub renewal_wait_ms: u64,
}

/// Units one worker took from the shared lease, spent locally: no hostcall per request.
/// It goes back (unspent units into the lease it came from) on the worker's next take
/// and on every lease tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hold {
    /// The lease the units came from; 0: none.
    pub lease: u64,
    pub units: u64,
    /// Spendable before this (unix ms, this proxy's clock).
    pub until_ms: u64,
    /// Requests admitted from it since the take: they count toward the tenant's rate
    /// when it goes back.
    pub spent: u64,
    pub last_spend_ms: u64,
    /// What the shared lease held right after the take (for `RateLimit`'s `r`).
    pub shared_after: u64,
    /// The lease's last grant and its end on the counter's clock, as at the take:
    /// the span a request spent from the hold is billed in.
    pub counter_granted_ms: u64,
    pub counter_end_ms: u64,
}

impl Hold {
    /// Admit one request from the hold, if it has a unit and is still in time.
    pub fn spend(&mut self, now_ms: u64) -> bool {
        if self.lease == 0 || self.units == 0 || now_ms >= self.until_ms {
            return false;
        }
        self.units -= 1;
        self.spent += 1;
        self.last_spend_ms = now_ms;
        true
    }

    /// Requests the proxy can still admit from the lease, as this worker last saw it.
    pub fn remaining(&self) -> u64 {
        self.units.saturating_add(self.shared_after)
    }

    /// When to bill a request spent from the hold, given this worker's estimate of the
    /// counter's time: never before the lease's last grant nor at or after its end.
    /// A worker's estimate comes from its own last renewal answer and can lag by tens
    /// of ms on a loaded proxy, while the lease may have been renewed by another
    /// worker: unclamped, a request spent just after a second turned would be billed
    /// in the second before, whose own lease was already spent in full there.
    pub fn billed_at(&self, estimate_ms: u64) -> u64 {
        let at = estimate_ms.max(self.counter_granted_ms);
        if self.counter_end_ms > self.counter_granted_ms {
            at.min(self.counter_end_ms - 1)
        } else {
            at
        }
    }

    /// A refunded request's unit back into the hold, if it came from this lease.
    pub fn refund(&mut self, lease: u64) -> bool {
        if lease == 0 || lease != self.lease {
            return false;
        }
        self.units = self.units.saturating_add(1);
        true
    }
}

/// What one request did to the shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    /// Admitted from the lease (else: decide it with an exact consume).
    pub admitted: bool,
    /// Ask the counter for more: this worker won the right to (the state now says a
    /// renewal is on its way). The number is how many requests to ask for.
    pub renew: Option<u64>,
    /// Not admitted, but a renewal of a lease that had units is on its way: the
    /// request may wait for it (until `renewal_wait_ms` from now) rather than cost an
    /// exact consume. A tenant's first lease, and one after an empty grant (near the
    /// limit), are not waited for.
    pub wait: bool,
}

impl LeaseState {
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        let fields = [
            self.id,
            self.expires_ms,
            self.balance,
            self.renewing_until_ms,
            self.rate_second,
            u64::from(self.count) | (u64::from(self.prev_count) << 32),
            self.last_spend_ms,
            self.last_grant,
            self.counter_end_ms,
            u64::from(self.end_fixed) | (u64::from(self.renewal_out) << 1),
            self.counter_granted_ms,
        ];
        for (chunk, value) in out.chunks_exact_mut(8).zip(fields) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// `None` for anything but a state this module encoded.
    pub fn decode(bytes: &[u8]) -> Option<LeaseState> {
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        let mut fields = bytes
            .chunks_exact(8)
            .map(|c| <[u8; 8]>::try_from(c).map(u64::from_le_bytes));
        let mut next = || fields.next().and_then(Result::ok);
        let (id, expires_ms, balance, renewing_until_ms, rate_second) =
            (next()?, next()?, next()?, next()?, next()?);
        let counts = next()?;
        let (last_spend_ms, last_grant, counter_end_ms, flags) =
            (next()?, next()?, next()?, next()?);
        Some(LeaseState {
            id,
            expires_ms,
            balance,
            renewing_until_ms,
            rate_second,
            count: u32::try_from(counts & 0xffff_ffff).unwrap_or(u32::MAX),
            prev_count: u32::try_from(counts >> 32).unwrap_or(u32::MAX),
            last_spend_ms,
            last_grant,
            counter_end_ms,
            end_fixed: flags & 1 != 0,
            renewal_out: flags & 2 != 0,
            counter_granted_ms: next()?,
        })
    }

    /// Requests per second recently (the last full second, or this one if busier).
    pub fn rate(&self, now_ms: u64) -> u64 {
        let second = now_ms / 1000;
        if second == self.rate_second {
            u64::from(self.prev_count.max(self.count))
        } else if second == self.rate_second + 1 {
            u64::from(self.count)
        } else {
            0
        }
    }

    fn note_requests(&mut self, now_ms: u64, n: u64) {
        let second = now_ms / 1000;
        if second != self.rate_second {
            self.prev_count = if second == self.rate_second + 1 {
                self.count
            } else {
                0
            };
            self.count = 0;
            self.rate_second = second;
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.count = self.count.saturating_add(n);
    }

    /// Whether a lease whose end cannot move is close enough to it to ask for its
    /// successor.
    fn ending(&self, now_ms: u64, tuning: &LeaseTuning) -> bool {
        now_ms.saturating_add(tuning.turn_lead_ms) >= self.expires_ms
    }

    /// Spending stops here (unix ms): the lease's end less the margin.
    fn spendable_until(&self, tuning: &LeaseTuning) -> u64 {
        self.expires_ms.saturating_sub(tuning.expiry_margin_ms)
    }

    /// Whether `now_ms` is early enough to spend from the lease.
    fn in_time(&self, now_ms: u64, tuning: &LeaseTuning) -> bool {
        now_ms < self.spendable_until(tuning)
    }

    /// Whether the lease can admit a request at `now_ms`.
    pub fn usable(&self, now_ms: u64, tuning: &LeaseTuning) -> bool {
        self.id != 0 && self.balance > 0 && self.in_time(now_ms, tuning)
    }

    /// One request arrives at `now_ms` at a worker whose hold is empty or stale: take
    /// `returning` back first, then a new hold (the request's unit and about
    /// `hold_span_ms` of traffic, never more than a quarter of what is left, so the
    /// other workers find units too), and decide whether this worker asks for more.
    pub fn take(&mut self, now_ms: u64, tuning: &LeaseTuning, returning: &Hold) -> (Spend, Hold) {
        self.give_back(returning, now_ms);
        self.note_requests(now_ms, 1);
        let admitted = self.usable(now_ms, tuning);
        let mut hold = Hold::default();
        if admitted {
            let by_rate = self.rate(now_ms).saturating_mul(tuning.hold_span_ms) / 1000;
            let size = by_rate.min(self.balance / 4).clamp(1, self.balance);
            self.balance -= size;
            self.last_spend_ms = now_ms;
            hold = Hold {
                lease: self.id,
                units: size - 1,
                until_ms: now_ms
                    .saturating_add(tuning.hold_valid_ms)
                    .min(self.spendable_until(tuning)),
                spent: 0,
                last_spend_ms: now_ms,
                shared_after: self.balance,
                counter_granted_ms: self.counter_granted_ms,
                counter_end_ms: self.counter_end_ms,
            };
        }
        // Ask before the lease runs dry: at half of the last grant, or when it ends
        // within a renewal's round trip. When no renewal can move its end, for more
        // units while it can still be spent, and for its successor `turn_lead_ms`
        // before it ends (the counter holds that ask until the window turns).
        let low = if self.end_fixed {
            self.ending(now_ms, tuning) || self.balance <= self.last_grant / 2
        } else {
            self.balance <= self.last_grant / 2
                || now_ms.saturating_add(tuning.renew_timeout_ms) >= self.expires_ms
        };
        let renew = (low && self.renewing_until_ms <= now_ms).then(|| {
            self.renewing_until_ms = now_ms.saturating_add(tuning.renew_timeout_ms);
            self.renewal_out = true;
            self.want(now_ms, tuning)
        });
        let wait = !admitted && self.last_grant > 0 && self.renewal_on_its_way(now_ms);
        (
            Spend {
                admitted,
                renew,
                wait,
            },
            hold,
        )
    }

    /// Whether a renewal was asked for and may still be answered.
    pub fn renewal_on_its_way(&self, now_ms: u64) -> bool {
        self.renewal_out && self.renewing_until_ms > now_ms
    }

    /// The renewal was not sent, or failed: let another go out after a short pause,
    /// and let nobody wait for this one.
    pub fn renewal_failed(&mut self, now_ms: u64) {
        self.renewing_until_ms = now_ms + RENEWAL_PAUSE_MS;
        self.renewal_out = false;
    }

    /// A worker's hold comes back: its unspent units into the lease if it is still
    /// the one they came from (a replaced lease's units went back to the counter with
    /// it), its spent requests into the rate.
    pub fn give_back(&mut self, hold: &Hold, now_ms: u64) {
        if hold.spent > 0 {
            self.note_requests(now_ms, hold.spent);
            self.last_spend_ms = self.last_spend_ms.max(hold.last_spend_ms);
        }
        if hold.lease != 0 && hold.lease == self.id {
            self.balance = self.balance.saturating_add(hold.units);
        }
    }

    /// How many requests to ask for: about `target_ms` of recent traffic, or what is
    /// left of a lease whose end cannot move, whichever is shorter.
    pub fn want(&self, now_ms: u64, tuning: &LeaseTuning) -> u64 {
        let mut span_ms = tuning.target_ms;
        if self.end_fixed && !self.ending(now_ms, tuning) {
            span_ms = span_ms.min(self.expires_ms.saturating_sub(now_ms));
        }
        let per_target = self.rate(now_ms).saturating_mul(span_ms) / 1000;
        per_target.clamp(1, tuning.max_request.max(1))
    }

    /// The counter answered a renewal: `lease` with `granted` more requests until
    /// `expires_ms` (local clock; `counter_end_ms` on the counter's), granted at
    /// `counter_now_ms` (the counter's clock). A new lease replaces the old one (whose
    /// units went back to the counter with its windows).
    pub fn granted(
        &mut self,
        lease: Option<u64>,
        granted: u64,
        expires_ms: u64,
        counter_end_ms: u64,
        counter_now_ms: u64,
        now_ms: u64,
    ) {
        match lease {
            Some(id) if id == self.id => {
                self.balance = self.balance.saturating_add(granted);
                self.end_fixed = granted > 0 && counter_end_ms <= self.counter_end_ms;
            }
            Some(id) => {
                self.id = id;
                self.balance = granted;
                self.end_fixed = false;
            }
            None => {
                self.id = 0;
                self.balance = 0;
                self.end_fixed = false;
            }
        }
        if lease.is_some() && granted > 0 {
            self.counter_end_ms = counter_end_ms;
            self.counter_granted_ms = counter_now_ms;
        }
        if lease.is_some() {
            self.expires_ms = expires_ms;
        }
        self.last_grant = granted;
        // Nothing granted (too little room: exact consumes decide): do not ask again
        // at once; a grant clears the way for the next renewal.
        self.renewing_until_ms = if granted == 0 {
            now_ms + RENEWAL_PAUSE_MS
        } else {
            0
        };
        self.renewal_out = false;
    }

    /// Whether this lease should go back: it ended, or the tenant went quiet.
    pub fn should_close(&self, now_ms: u64, idle_ms: u64) -> bool {
        self.id != 0
            && (now_ms >= self.expires_ms || now_ms.saturating_sub(self.last_spend_ms) >= idle_ms)
            && self.renewing_until_ms <= now_ms
    }

    /// Give the lease up (before telling the counter): nobody spends from it again.
    pub fn closed(&mut self) {
        self.id = 0;
        self.balance = 0;
        self.last_grant = 0;
        self.end_fixed = false;
    }
}

/// Requests one worker admitted from leases and that are still running, per lease.
/// They are reported when they complete; until then a lease that ended must not be
/// closed on the counter (its units given back), so the worker pins it. A few leases at
/// most (the current one and ones that just ended): a scan, not a hash, per request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Running(Vec<(u64, u32)>);

impl Running {
    /// One more request of `lease` is running.
    pub fn started(&mut self, lease: u64) {
        match self.0.iter_mut().find(|(l, _)| *l == lease) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => self.0.push((lease, 1)),
        }
    }

    /// A request of `lease` completed (reported or refunded).
    pub fn finished(&mut self, lease: u64) {
        if let Some((_, n)) = self.0.iter_mut().find(|(l, _)| *l == lease) {
            *n = n.saturating_sub(1);
        }
        self.0.retain(|(_, n)| *n > 0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Leases other than `current` with requests running, and how many: those to pin.
    pub fn to_pin(&self, current: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.0
            .iter()
            .copied()
            .filter(move |(lease, _)| *lease != current && *lease != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_requests_pin_only_leases_that_are_no_longer_current() {
        let mut running = Running::default();
        running.started(7);
        running.started(7);
        running.started(8);
        assert_eq!(running.to_pin(8).collect::<Vec<_>>(), [(7, 2)]);
        assert_eq!(running.to_pin(0).count(), 2);
        running.finished(7);
        running.finished(9); // never started here: nothing to undo
        assert_eq!(running.to_pin(8).collect::<Vec<_>>(), [(7, 1)]);
        running.finished(7);
        assert_eq!(running.to_pin(8).count(), 0);
        running.finished(8);
        assert!(running.is_empty());
        running.finished(8);
        assert!(running.is_empty());
    }

    const TUNING: LeaseTuning = LeaseTuning {
        target_ms: 100,
        max_request: 1000,
        renew_timeout_ms: 500,
        expiry_margin_ms: 5,
        hold_span_ms: 0,
        hold_valid_ms: 20,
        turn_lead_ms: 8,
        renewal_wait_ms: 30,
    };

    #[test]
    fn state_survives_encoding_and_garbage_is_refused() {
        let s = LeaseState {
            id: u64::MAX,
            expires_ms: 2,
            balance: 3,
            renewing_until_ms: 4,
            rate_second: 5,
            count: 6,
            prev_count: 7,
            last_spend_ms: 8,
            last_grant: 9,
            counter_end_ms: 10,
            end_fixed: true,
            renewal_out: true,
            counter_granted_ms: 11,
        };
        assert_eq!(LeaseState::decode(&s.encode()), Some(s));
        let only_out = LeaseState {
            end_fixed: false,
            ..s
        };
        assert_eq!(LeaseState::decode(&only_out.encode()), Some(only_out));
        assert_eq!(LeaseState::decode(&[0; ENCODED_LEN - 1]), None);
        assert_eq!(LeaseState::decode(b""), None);
    }

    #[test]
    fn without_a_lease_requests_are_not_admitted_and_one_worker_asks() {
        let mut s = LeaseState::default();
        let first = s.spend(10_000, &TUNING);
        assert!(!first.admitted);
        assert_eq!(first.renew, Some(1));
        // Another worker sees the renewal on its way.
        assert_eq!(s.spend(10_001, &TUNING).renew, None);
        // Long past the timeout, it may ask again.
        assert!(s.spend(10_600, &TUNING).renew.is_some());
    }

    #[test]
    fn a_grant_is_spent_then_renewed_at_half_before_it_runs_dry() {
        let mut s = LeaseState::default();
        s.granted(Some(7), 10, 60_000, 60_000, 10_000, 10_000);
        let mut renewals = Vec::new();
        for i in 0..10 {
            let spend = s.spend(10_000 + i, &TUNING);
            assert!(spend.admitted, "request {i}");
            if spend.renew.is_some() {
                renewals.push(i);
            }
        }
        assert_eq!(renewals, [4], "one renewal, when half the grant was left");
        assert!(!s.spend(10_020, &TUNING).admitted, "dry");
        s.granted(Some(7), 5, 60_000, 60_000, 10_030, 10_030);
        assert_eq!(s.balance, 5);
        assert!(s.spend(10_031, &TUNING).admitted);
    }

    #[test]
    fn a_request_waits_only_for_a_renewal_on_its_way_of_a_lease_that_had_units() {
        // A tenant's first lease: decided exactly, not waited for.
        let mut s = LeaseState::default();
        let first = s.spend(10_000, &TUNING);
        assert!(first.renew.is_some() && !first.wait);
        assert!(!s.spend(10_001, &TUNING).wait);
        // Spent dry with a renewal out: wait, until the renewal is answered...
        s.granted(Some(7), 2, 60_000, 60_000, 10_010, 10_010);
        assert!(s.spend(10_011, &TUNING).renew.is_some());
        assert!(s.spend(10_012, &TUNING).admitted);
        assert!(s.spend(10_013, &TUNING).wait);
        s.granted(Some(7), 0, 60_000, 60_000, 10_020, 10_020);
        // ...which granted nothing (near the limit): exact, no waiting, backing off.
        let near = s.spend(10_021, &TUNING);
        assert!(!near.admitted && !near.wait && near.renew.is_none());
        // A renewal that failed (or was never sent) is not waited for either.
        let mut t = LeaseState::default();
        t.granted(Some(8), 1, 60_000, 60_000, 10_000, 10_000);
        assert!(t.spend(10_001, &TUNING).renew.is_some());
        assert!(t.spend(10_002, &TUNING).wait);
        t.renewal_failed(10_003);
        assert!(!t.spend(10_004, &TUNING).wait);
        // Nor one past its timeout.
        let mut u = LeaseState::default();
        u.granted(Some(9), 1, 60_000, 60_000, 10_000, 10_000);
        assert!(u.spend(10_001, &TUNING).renew.is_some());
        assert!(u.renewal_on_its_way(10_400));
        assert!(!u.renewal_on_its_way(10_501));
    }

    #[test]
    fn a_lease_is_not_spent_at_or_near_its_end() {
        let mut s = LeaseState::default();
        s.granted(Some(1), 100, 20_000, 20_000, 10_000, 10_000);
        assert!(!s.spend(19_996, &TUNING).admitted);
        assert!(!s.spend(20_000, &TUNING).admitted);
    }

    #[test]
    fn the_ask_follows_the_recent_rate() {
        let mut s = LeaseState::default();
        s.granted(Some(1), 100_000, 99_000_000, 99_000_000, 0, 0);
        for i in 0..400 {
            s.spend(5_000 + i, &TUNING);
        }
        // 400 requests in the second: 100 ms of that is 40.
        assert_eq!(s.want(5_500, &TUNING), 40);
        assert_eq!(s.want(6_100, &TUNING), 40);
        assert_eq!(s.want(9_000, &TUNING), 1, "a quiet tenant asks for one");
    }

    #[test]
    fn nothing_granted_backs_off_and_a_new_lease_replaces_the_old() {
        let mut s = LeaseState::default();
        s.granted(None, 0, 0, 0, 1_000, 1_000);
        assert_eq!(s.spend(1_100, &TUNING).renew, None, "backing off");
        assert!(s.spend(1_300, &TUNING).renew.is_some());
        s.granted(Some(1), 10, 9_000, 9_000, 1_400, 1_400);
        s.granted(Some(2), 4, 9_500, 9_500, 1_500, 1_500);
        assert_eq!((s.id, s.balance, s.expires_ms), (2, 4, 9_500));
    }

    #[test]
    fn a_lease_that_cannot_outlive_its_window_is_renewed_when_it_ends_not_before() {
        let mut s = LeaseState::default();
        // Busy: 1000 requests in second 10.
        s.granted(Some(1), 100_000, 11_000, 11_000, 10_000, 10_000);
        for i in 0..1000 {
            s.spend(10_000 + i / 10, &TUNING);
        }
        // Near the end (within renew_timeout_ms): the usual early ask.
        let early = s.spend(10_600, &TUNING);
        assert!(early.renew.is_some());
        // The counter extended the lease but its end stayed (a window's end).
        s.granted(Some(1), 10, 11_000, 11_000, 10_610, 10_610);
        assert!(s.end_fixed);
        for t in [10_700, 10_900, 10_960, 10_991] {
            assert_eq!(
                s.spend(t, &TUNING).renew,
                None,
                "no ask at {t}: it would only extend"
            );
        }
        // `turn_lead_ms` before its end: ask for its successor (the counter holds the
        // ask until the window turns), as much as a fresh lease, while still spending.
        let ending = s.spend(10_992, &TUNING);
        assert!(ending.admitted);
        assert_eq!(ending.renew, Some(100), "1000 a second, 100 ms of it");
        // Once asked, not again while the ask is on its way.
        let ended = s.spend(10_995, &TUNING);
        assert!(!ended.admitted);
        assert_eq!(ended.renew, None);
        assert!(ended.wait, "the successor is on its way: wait for it");
        s.granted(Some(2), 50, 12_000, 12_000, 11_010, 11_010);
        assert!(s.spend(11_011, &TUNING).admitted);
        assert!(
            !s.end_fixed,
            "a new lease: its end is not known to be fixed"
        );
    }

    #[test]
    fn a_fixed_end_lease_asks_only_for_what_its_remaining_time_can_spend() {
        let mut s = LeaseState::default();
        s.granted(Some(1), 100_000, 20_000, 20_000, 10_000, 10_000);
        for i in 0..1000 {
            s.spend(19_000 + i, &TUNING);
        }
        s.granted(Some(1), 5, 20_000, 20_000, 19_950, 19_950);
        // 1000 requests a second, 30 ms left of a 100 ms target: 30.
        assert_eq!(s.want(19_970, &TUNING), 30);
        // Spent down to half of the last grant, still in time: more units.
        s.balance = 2;
        assert!(s.spend(19_970, &TUNING).renew.is_some());
    }

    #[test]
    fn quiet_or_ended_leases_go_back() {
        let mut s = LeaseState::default();
        s.granted(Some(3), 10, 50_000, 50_000, 1_000, 1_000);
        s.spend(1_000, &TUNING);
        assert!(!s.should_close(2_000, 2_000));
        assert!(s.should_close(3_000, 2_000), "quiet for 2 s");
        assert!(s.should_close(50_000, 1_000_000), "ended");
        s.closed();
        assert!(!s.should_close(60_000, 0));
        assert!(!s.usable(1_001, &TUNING));
    }

    impl LeaseState {
        /// One request with no hold to give back, taking one unit (`TUNING` has no
        /// hold span): the request-by-request view most tests want.
        fn spend(&mut self, now_ms: u64, tuning: &LeaseTuning) -> Spend {
            self.take(now_ms, tuning, &Hold::default()).0
        }
    }

    const HOLDING: LeaseTuning = LeaseTuning {
        hold_span_ms: 5,
        ..TUNING
    };

    #[test]
    fn a_worker_takes_a_few_milliseconds_of_traffic_and_spends_them_without_the_shared_state() {
        let mut s = LeaseState::default();
        s.granted(Some(9), 10_000, 60_000, 60_000, 10_000, 10_000);
        // 4000 requests a second so far: 5 ms of that is 20.
        s.give_back(
            &Hold {
                spent: 4000,
                ..Hold::default()
            },
            10_500,
        );
        let (spend, mut hold) = s.take(10_500, &HOLDING, &Hold::default());
        assert!(spend.admitted);
        assert_eq!(
            (hold.lease, hold.units),
            (9, 19),
            "one unit went to this request"
        );
        assert_eq!(s.balance, 10_000 - 20);
        assert_eq!(hold.remaining(), 19 + s.balance);
        for i in 0..19 {
            assert!(hold.spend(10_501), "unit {i}");
        }
        assert!(!hold.spend(10_501), "the hold ran out");
        // Gone back: spent requests count toward the rate, nothing is left to return.
        s.give_back(&hold, 10_502);
        assert_eq!(s.balance, 10_000 - 20);
        assert_eq!(s.count, 4000 + 1 + 19);
    }

    #[test]
    fn a_hold_is_never_more_than_a_quarter_of_the_lease_and_never_outlives_it() {
        let mut s = LeaseState::default();
        s.granted(Some(1), 8, 20_000, 20_000, 10_000, 10_000);
        s.give_back(
            &Hold {
                spent: 100_000,
                ..Hold::default()
            },
            19_000,
        );
        let (_, hold) = s.take(19_000, &HOLDING, &Hold::default());
        assert_eq!((hold.units + 1, s.balance), (2, 6), "a quarter of 8");
        // Valid for hold_valid_ms, and never past the lease's end less the margin.
        assert_eq!(hold.until_ms, 19_020);
        let (_, late) = s.take(19_990, &HOLDING, &hold);
        assert_eq!(late.until_ms, 20_000 - 5);
        let mut late = late;
        assert!(!late.spend(19_995), "at the lease's end less the margin");
        // One unit left: it goes to the request, and the hold is empty.
        let mut s = LeaseState::default();
        s.granted(Some(2), 1, 20_000, 20_000, 10_000, 10_000);
        let (spend, hold) = s.take(10_000, &HOLDING, &Hold::default());
        assert!(spend.admitted);
        assert_eq!((hold.units, s.balance), (0, 0));
    }

    #[test]
    fn unspent_units_go_back_only_to_the_lease_they_came_from() {
        let mut s = LeaseState::default();
        s.granted(Some(1), 100, 20_000, 20_000, 10_000, 10_000);
        let hold = Hold {
            lease: 1,
            units: 7,
            until_ms: 10_020,
            spent: 3,
            last_spend_ms: 10_010,
            shared_after: 0,
            ..Hold::default()
        };
        let mut stale = hold;
        s.give_back(&hold, 10_015);
        assert_eq!(s.balance, 107);
        assert_eq!(s.last_spend_ms, 10_010);
        // A new lease replaced it: the old one's units went back with it at the counter.
        s.granted(Some(2), 50, 21_000, 21_000, 10_020, 10_020);
        s.give_back(&stale, 10_030);
        assert_eq!(s.balance, 50);
        // A refund goes into the hold only from its own lease.
        assert!(stale.refund(1));
        assert!(!stale.refund(2));
        assert!(!stale.refund(0));
        assert_eq!(stale.units, 8);
    }

    #[test]
    fn a_request_is_billed_inside_the_span_its_lease_was_granted_for() {
        // The worker's clock runs 40 ms behind the counter's; the lease was renewed
        // (by another worker) at 12_003 on the counter's clock, for the second that
        // ends at 13_000.
        let mut s = LeaseState::default();
        s.granted(Some(4), 100, 12_960, 13_000, 12_003, 11_970);
        let (spend, hold) = s.take(11_975, &HOLDING, &Hold::default());
        assert!(spend.admitted);
        assert_eq!(
            (hold.counter_granted_ms, hold.counter_end_ms),
            (12_003, 13_000)
        );
        // A lagging estimate (in the second before) is billed at the grant.
        assert_eq!(hold.billed_at(11_990), 12_003);
        // An estimate inside the span is kept.
        assert_eq!(hold.billed_at(12_500), 12_500);
        // One at or past the lease's end is billed in its last millisecond.
        assert_eq!(hold.billed_at(13_000), 12_999);
        assert_eq!(hold.billed_at(13_250), 12_999);
        // A renewal of the same lease moves the grant time on; the hold taken after it
        // carries the new one.
        s.granted(Some(4), 50, 12_960, 13_000, 12_400, 12_370);
        let (_, later) = s.take(12_380, &HOLDING, &hold);
        assert_eq!(later.billed_at(12_390), 12_400);
        // No lease span known (never granted): the estimate as it is.
        assert_eq!(Hold::default().billed_at(12_345), 12_345);
    }
}
