//! Work the root context owes the counter after a request is gone: refunds for clients
//! that went away, for consumes whose answer never came under `fail_closed`, and for
//! refunds an exchange could not wait for. Bounded, retried with backoff until the
//! counter confirms; a job that keeps failing is given up (and counted) after
//! `max_attempts`, so a dead counter cannot grow the VM without bound.

use std::collections::VecDeque;

use crate::events::Backoff;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job<T> {
    pub item: T,
    pub attempts: u32,
    not_before_ns: u64,
}

/// What became of a job whose attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed<T> {
    /// Queued again; the next attempt after `delay_ms`.
    Retry { delay_ms: u64 },
    /// Too many attempts: dropped.
    GaveUp(T),
}

#[derive(Debug)]
pub struct RetryQueue<T> {
    waiting: VecDeque<Job<T>>,
    /// Calls out, each with the jobs it carries (a batch carries several).
    in_flight: Vec<(u32, Vec<Job<T>>)>,
    capacity: usize,
    max_in_flight: usize,
    max_attempts: u32,
    base_ms: u64,
    max_ms: u64,
}

impl<T> RetryQueue<T> {
    pub fn new(capacity: usize, max_in_flight: usize, max_attempts: u32) -> Self {
        Self {
            waiting: VecDeque::new(),
            in_flight: Vec::new(),
            capacity,
            max_in_flight,
            max_attempts,
            base_ms: 200,
            max_ms: 30_000,
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
            + self
                .in_flight
                .iter()
                .map(|(_, jobs)| jobs.len())
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether call `token` is one of this queue's.
    pub fn owns(&self, token: u32) -> bool {
        self.in_flight.iter().any(|(t, _)| *t == token)
    }

    /// No call is out: no answer will come to send what waits.
    pub fn nothing_in_flight(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// `false` when full: the item was not queued.
    pub fn push(&mut self, item: T) -> bool {
        if self.len() >= self.capacity {
            return false;
        }
        self.waiting.push_back(Job {
            item,
            attempts: 0,
            not_before_ns: 0,
        });
        true
    }

    /// The next job due at `now_ns`, if a slot for it is free.
    pub fn next_due(&mut self, now_ns: u64) -> Option<Job<T>> {
        // A batch is one call, whatever it carries.
        if self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        let i = self
            .waiting
            .iter()
            .position(|j| j.not_before_ns <= now_ns)?;
        self.waiting.remove(i)
    }

    /// The next job due, and when `batchable` holds for it, up to `max - 1` more due
    /// jobs for which it holds too: what one call can carry.
    pub fn next_due_batch(
        &mut self,
        now_ns: u64,
        max: usize,
        batchable: impl Fn(&T) -> bool,
    ) -> Vec<Job<T>> {
        let Some(first) = self.next_due(now_ns) else {
            return Vec::new();
        };
        let more = batchable(&first.item);
        let mut jobs = vec![first];
        while more && jobs.len() < max {
            let Some(i) = self
                .waiting
                .iter()
                .position(|j| j.not_before_ns <= now_ns && batchable(&j.item))
            else {
                break;
            };
            jobs.extend(self.waiting.remove(i));
        }
        jobs
    }

    /// `jobs` were dispatched together as call `token`.
    pub fn started(&mut self, token: u32, mut jobs: Vec<Job<T>>) {
        for job in &mut jobs {
            job.attempts = job.attempts.saturating_add(1);
        }
        self.in_flight.push((token, jobs));
    }

    /// `job` could not even be dispatched: back to the queue, not before `delay_ms`.
    pub fn not_started(&mut self, mut job: Job<T>, now_ns: u64, delay_ms: u64) {
        job.not_before_ns = now_ns.saturating_add(delay_ms.saturating_mul(1_000_000));
        self.waiting.push_back(job);
    }

    /// The jobs call `token` carried, in the order they were started (none: not one of
    /// this queue's calls). A failed one goes back with [`Self::retry`].
    pub fn answered(&mut self, token: u32) -> Vec<Job<T>> {
        match self.in_flight.iter().position(|(t, _)| *t == token) {
            Some(i) => self.in_flight.swap_remove(i).1,
            None => Vec::new(),
        }
    }

    /// A job of an answered call failed: queued again after a backoff, or given up.
    pub fn retry(&mut self, job: Job<T>, now_ns: u64, random: u64) -> Failed<T> {
        if job.attempts >= self.max_attempts {
            return Failed::GaveUp(job.item);
        }
        let mut backoff = Backoff::new(self.base_ms, self.max_ms);
        let mut delay_ms = 0;
        for _ in 0..job.attempts {
            delay_ms = backoff.next_delay_ms(random);
        }
        self.not_started(job, now_ns, delay_ms);
        Failed::Retry { delay_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<T> RetryQueue<T> {
        fn succeeded(&mut self, token: u32) -> Option<T> {
            self.answered(token).pop().map(|j| j.item)
        }

        fn failed(&mut self, token: u32, now_ns: u64, random: u64) -> Option<Failed<T>> {
            let job = self.answered(token).pop()?;
            Some(self.retry(job, now_ns, random))
        }
    }

    #[test]
    fn jobs_run_until_confirmed_with_growing_delays_then_are_given_up() {
        let mut q = RetryQueue::new(10, 2, 3);
        assert!(q.push("r1"));
        let job = q.next_due(0).unwrap();
        q.started(1, vec![job]);
        assert!(q.owns(1) && !q.owns(2));
        let Some(Failed::Retry { delay_ms: first }) = q.failed(1, 0, 7) else {
            panic!("should retry");
        };
        assert!(q.next_due(0).is_none(), "not before its delay");
        let job = q.next_due(first * 1_000_000).unwrap();
        q.started(2, vec![job]);
        let Some(Failed::Retry { delay_ms: second }) = q.failed(2, 0, 7) else {
            panic!("should retry");
        };
        assert!(second >= first);
        let job = q.next_due(u64::MAX).unwrap();
        q.started(3, vec![job]);
        assert_eq!(q.failed(3, 0, 7), Some(Failed::GaveUp("r1")));
        assert!(q.is_empty());
    }

    #[test]
    fn capacity_and_concurrency_are_bounded() {
        let mut q = RetryQueue::new(3, 1, 5);
        assert!(q.push(1) && q.push(2) && q.push(3));
        assert!(!q.push(4), "full");
        let job = q.next_due(0).unwrap();
        q.started(9, vec![job]);
        assert!(q.next_due(0).is_none(), "one in flight at most");
        assert_eq!(q.succeeded(9), Some(1));
        assert_eq!(q.len(), 2);
        assert!(q.next_due(0).is_some());
    }

    #[test]
    fn a_batch_is_one_call_and_each_of_its_jobs_succeeds_or_retries_alone() {
        let mut q = RetryQueue::new(10, 1, 5);
        for item in ["s1", "r1", "s2", "s3"] {
            q.push(item);
        }
        let settle = |i: &&str| i.starts_with('s');
        let batch = q.next_due_batch(0, 2, settle);
        assert_eq!(
            batch.iter().map(|j| j.item).collect::<Vec<_>>(),
            ["s1", "s2"]
        );
        q.started(7, batch);
        assert!(
            q.next_due(0).is_none(),
            "one call in flight, however many jobs"
        );
        let jobs = q.answered(7);
        assert_eq!(
            jobs.iter().map(|j| j.item).collect::<Vec<_>>(),
            ["s1", "s2"]
        );
        assert!(!q.owns(7));
        let mut jobs = jobs.into_iter();
        let _succeeded = jobs.next();
        let Failed::Retry { delay_ms } = q.retry(jobs.next().unwrap(), 0, 3) else {
            panic!("should retry");
        };
        // A job that cannot go with others goes alone.
        let next = q.next_due_batch(0, 8, settle);
        assert_eq!(next.iter().map(|j| j.item).collect::<Vec<_>>(), ["r1"]);
        q.started(8, next);
        assert_eq!(q.succeeded(8), Some("r1"));
        let later = q.next_due_batch(delay_ms * 1_000_000, 8, settle);
        assert_eq!(
            later.iter().map(|j| j.item).collect::<Vec<_>>(),
            ["s3", "s2"]
        );
    }
}
