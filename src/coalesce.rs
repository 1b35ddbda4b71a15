//! Coalescing exact consumes: when a worker already has consume calls in flight, the
//! requests that arrive meanwhile wait together and go to the counter in one batched
//! call. Envoy pays per callout, so under load this is most of exact mode's cost.
//!
//! A request that finds nothing in flight and nobody waiting calls alone, at once, as
//! if there were no coalescing: a quiet proxy adds no latency. Only when calls are
//! already out does a request queue, and then it goes with the next batch as soon as
//! fewer than `calls_in_flight` calls are out. The counter decides every consume of a
//! batch exactly as a single one (its own id, its own all-or-nothing check).
//!
//! Pure bookkeeping: the glue sends the calls and wakes the root context.

use std::collections::VecDeque;

/// What a request that needs a consume does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Call the counter alone, now; report it with [`Coalescer::alone_sent`].
    Alone,
    /// Wait in the queue ([`Coalescer::enqueue`]).
    Queue,
}

/// The consume calls of one worker: how many are out, who waits, which batches are
/// out and for whom.
#[derive(Debug)]
pub struct Coalescer<M> {
    waiting: VecDeque<M>,
    /// Calls out: requests calling alone and batches.
    in_flight: usize,
    /// Batches out: token, members, and when it was sent (the caller's clock).
    batches: Vec<(u32, Vec<M>, u64)>,
    /// A wake-up of the root context is on its way: no need for another.
    wake_pending: bool,
    batch_max: usize,
    calls_in_flight: usize,
}

impl<M> Coalescer<M> {
    pub fn new(batch_max: usize, calls_in_flight: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            in_flight: 0,
            batches: Vec::new(),
            wake_pending: false,
            batch_max: batch_max.max(1),
            calls_in_flight: calls_in_flight.max(1),
        }
    }

    /// New limits (a reconfiguration); calls out and requests waiting stay.
    pub fn configure(&mut self, batch_max: usize, calls_in_flight: usize) {
        self.batch_max = batch_max.max(1);
        self.calls_in_flight = calls_in_flight.max(1);
    }

    pub fn arrive(&self) -> Arrival {
        if self.batch_max <= 1 || (self.waiting.is_empty() && self.in_flight == 0) {
            Arrival::Alone
        } else {
            Arrival::Queue
        }
    }

    pub fn alone_sent(&mut self) {
        self.in_flight += 1;
    }

    /// A request's own call was answered (or it went away with it): `true` when the
    /// root context must be woken to send what waits.
    pub fn alone_done(&mut self) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.wake_if_waiting()
    }

    /// Queue a request: `true` when the root context must be woken to send it.
    pub fn enqueue(&mut self, member: M) -> bool {
        self.waiting.push_back(member);
        self.wake_if_waiting()
    }

    fn wake_if_waiting(&mut self) -> bool {
        let wake =
            !self.wake_pending && !self.waiting.is_empty() && self.in_flight < self.calls_in_flight;
        self.wake_pending |= wake;
        wake
    }

    /// Put a member of a batch that must be sent again first in line.
    pub fn requeue(&mut self, member: M) {
        self.waiting.push_front(member);
    }

    /// The root context woke up.
    pub fn woken(&mut self) {
        self.wake_pending = false;
    }

    /// The next batch to send, if a call may go out and anyone waits. Report it with
    /// [`Self::batch_sent`] or [`Self::batch_not_sent`].
    pub fn next_batch(&mut self) -> Option<Vec<M>> {
        if self.waiting.is_empty() || self.in_flight >= self.calls_in_flight {
            return None;
        }
        let n = self.waiting.len().min(self.batch_max);
        self.in_flight += 1;
        Some(self.waiting.drain(..n).collect())
    }

    pub fn batch_sent(&mut self, token: u32, members: Vec<M>, sent_at: u64) {
        self.batches.push((token, members, sent_at));
    }

    /// The batch could not be sent: its members are the caller's to fail.
    pub fn batch_not_sent(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn owns(&self, token: u32) -> bool {
        self.batches.iter().any(|(t, ..)| *t == token)
    }

    /// The members of an answered batch, in the order they were sent, and when it was
    /// sent.
    pub fn batch_done(&mut self, token: u32) -> Option<(Vec<M>, u64)> {
        let at = self.batches.iter().position(|(t, ..)| *t == token)?;
        self.in_flight = self.in_flight.saturating_sub(1);
        let (_, members, sent_at) = self.batches.swap_remove(at);
        Some((members, sent_at))
    }

    /// Take a waiting request out of the queue (it went away before it was sent):
    /// `false` when it was not waiting (already sent, or never queued).
    pub fn withdraw(&mut self, is_it: impl Fn(&M) -> bool) -> bool {
        match self.waiting.iter().position(is_it) {
            Some(at) => {
                self.waiting.remove(at);
                true
            }
            None => false,
        }
    }

    /// Nothing waiting and no batch out.
    pub fn idle(&self) -> bool {
        self.waiting.is_empty() && self.batches.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_on_a_quiet_worker_calls_alone_and_later_ones_wait_for_a_batch() {
        let mut c = Coalescer::new(64, 2);
        assert_eq!(c.arrive(), Arrival::Alone);
        c.alone_sent();
        // One call out: the next request waits, and wakes the root once.
        assert_eq!(c.arrive(), Arrival::Queue);
        assert!(c.enqueue(1));
        assert!(!c.enqueue(2));
        c.woken();
        // A second call may go out: the two waiting go together.
        assert_eq!(c.next_batch(), Some(vec![1, 2]));
        c.batch_sent(7, vec![1, 2], 100);
        assert_eq!(c.next_batch(), None);
        // Two calls out, the limit: more wait without a wake-up.
        assert!(!c.enqueue(3));
        assert_eq!(c.next_batch(), None);
        // The lone call answers: the root is woken for the one waiting.
        assert!(c.alone_done());
        c.woken();
        assert_eq!(c.next_batch(), Some(vec![3]));
        c.batch_sent(8, vec![3], 105);
        assert!(c.owns(7) && c.owns(8) && !c.owns(9));
        assert_eq!(c.batch_done(7), Some((vec![1, 2], 100)));
        assert_eq!(c.batch_done(7), None);
        assert_eq!(c.batch_done(8), Some((vec![3], 105)));
        assert!(c.idle());
        assert_eq!(c.arrive(), Arrival::Alone);
    }

    #[test]
    fn a_batch_holds_at_most_batch_max_and_the_rest_go_next() {
        let mut c = Coalescer::new(3, 1);
        c.alone_sent();
        for i in 0..5 {
            c.enqueue(i);
        }
        assert_eq!(c.next_batch(), None, "one call out is the limit");
        c.alone_done();
        assert_eq!(c.next_batch(), Some(vec![0, 1, 2]));
        c.batch_sent(1, vec![0, 1, 2], 0);
        assert_eq!(c.next_batch(), None);
        c.batch_done(1);
        assert_eq!(c.next_batch(), Some(vec![3, 4]));
    }

    #[test]
    fn batch_max_of_one_means_every_request_calls_alone() {
        let mut c: Coalescer<u32> = Coalescer::new(1, 2);
        c.alone_sent();
        c.alone_sent();
        assert_eq!(c.arrive(), Arrival::Alone);
    }

    #[test]
    fn a_request_that_goes_away_while_waiting_is_withdrawn_and_a_failed_send_frees_its_slot() {
        let mut c = Coalescer::new(64, 1);
        c.alone_sent();
        c.enqueue(1);
        c.enqueue(2);
        assert!(c.withdraw(|m| *m == 1));
        assert!(!c.withdraw(|m| *m == 1));
        c.alone_done();
        let batch = c.next_batch().unwrap();
        assert_eq!(batch, vec![2]);
        assert!(!c.withdraw(|m| *m == 2), "already sent");
        c.batch_not_sent();
        c.enqueue(3);
        assert_eq!(c.next_batch(), Some(vec![3]));
    }

    #[test]
    fn a_wake_up_is_asked_for_only_when_a_call_may_go_out() {
        let mut c = Coalescer::new(64, 1);
        c.alone_sent();
        // The one call out is the limit: no wake-up, the answer sends the batch.
        assert!(!c.enqueue(1));
        assert!(c.alone_done());
        assert!(!c.alone_done(), "one wake-up on its way is enough");
    }
}
